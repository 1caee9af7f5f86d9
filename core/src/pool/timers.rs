//! The machine's timers: a keyed table, at most one deadline per key.
//!
//! Every deadline the machine keeps names what it is for ([`TimerKey`]);
//! setting a key again moves its deadline, cancelling it removes it, so the
//! table never holds an entry that no longer counts (no generations, no lazy
//! deletion, no compaction).
//!
//! The table is a hierarchical timer wheel: setting, moving, cancelling
//! and finding the earliest cost O(1) whatever the number of keys, so the
//! cost per input stays flat from 10 to 100,000 servers. Deadlines are
//! bucketed by tick (2^16 ns, about 65 µs) in [`LEVELS`] wheels of 64 slots,
//! each slot 64 times wider than one a level below; a slot is a list. A
//! deadline keeps its exact `Instant`: buckets only group them.
//!
//! The wheel stands at a tick no deadline in it lies before. A deadline
//! sits at the level of the highest 6-bit digit in which its tick differs
//! from the wheel's. When level 0 runs empty the wheel moves on to the first
//! occupied slot of the lowest occupied level and spreads that slot over
//! the levels below, until level 0 holds deadlines again; each deadline
//! moves down at most [`LEVELS`] times in its life. Level-0 lists are kept
//! in order of instant (equal instants in the order set; a new deadline
//! rarely walks, as deadlines mostly come in order), so the earliest is the
//! head of the first occupied level-0 slot. A deadline set before the
//! wheel's tick (the wheel moved on to a later one) goes in the overdue
//! list, also in order, which comes before the wheel. Deadlines therefore
//! fire at exactly their instants, equal instants in the order they were
//! set, so runs are deterministic.
//!
//! Per-server keys (the hot path) use node `i` for server `i`; the rare
//! pool-wide ones (proxy probe, operation deadlines, closes of connections
//! that were never registered) get nodes after them through a small ordered
//! map. Once warm, setting and cancelling allocate nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::output::{AttemptId, OperationId, ServerId};

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKey {
    /// A server's one deadline: the end of its dial, of its close, of its
    /// backoff, or its keepalive check, whichever its state has.
    Server(ServerId),
    /// The close of a connection that was never registered.
    StrayClose(AttemptId),
    /// The next proxy probe.
    ProxyProbe,
    /// A `connect_all_with_retry` deadline.
    Operation(OperationId),
}

/// A tick is 2^16 ns.
const TICK_SHIFT: u32 = 16;
/// Bits of the tick each level takes: 64 slots.
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// Levels: 8 × 6 bits cover every tick (48 bits, 584 years).
const LEVELS: u32 = 8;
/// The last tick; later deadlines share it (and keep their order).
const MAX_TICK: u64 = (1 << (SLOT_BITS * LEVELS)) - 1;
/// The overdue list's index, after the wheel's.
const OVERDUE: usize = LEVELS as usize * SLOTS;
/// No node.
const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    /// The deadline; `None` while the key has none.
    at: Option<Instant>,
    /// Its tick, worked out once.
    tick: u64,
    /// Neighbours in its slot's list, which is in the order set.
    prev: u32,
    next: u32,
}

#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

const EMPTY: List = List {
    head: NONE,
    tail: NONE,
};

#[derive(Debug)]
pub(crate) struct Timers {
    /// Node `i < servers` is server `i`'s; the others belong to the keys in
    /// `other_keys`.
    nodes: Vec<Node>,
    servers: usize,
    /// The key of node `servers + i`, if it is in use.
    other_keys: Vec<Option<TimerKey>>,
    other_nodes: BTreeMap<TimerKey, u32>,
    free: Vec<u32>,
    /// `LEVELS` × `SLOTS` lists, then the overdue list; per level, which
    /// slots are not empty.
    lists: Box<[List]>,
    occupied: [u64; LEVELS as usize],
    /// The tick the wheel stands at.
    elapsed: u64,
    /// Instant of tick 0: the first `now` the machine was given.
    origin: Option<Instant>,
    len: usize,
}

impl Timers {
    /// A table for `servers` servers.
    pub(crate) fn with_servers(servers: usize) -> Self {
        let unset = Node {
            at: None,
            tick: 0,
            prev: NONE,
            next: NONE,
        };
        Self {
            nodes: vec![unset; servers],
            servers,
            other_keys: Vec::new(),
            other_nodes: BTreeMap::new(),
            free: Vec::new(),
            lists: vec![EMPTY; OVERDUE + 1].into_boxed_slice(),
            occupied: [0; LEVELS as usize],
            elapsed: 0,
            origin: None,
            len: 0,
        }
    }

    /// Puts tick 0 at `now` if no time was seen yet. Deadlines before it
    /// share tick 0 (still in order); the machine calls this with its
    /// first `now`, before it sets any.
    #[inline]
    pub(crate) fn start(&mut self, now: Instant) {
        self.origin.get_or_insert(now);
    }

    /// Sets `key`'s deadline to `at`, replacing the one it had.
    pub(crate) fn set(&mut self, key: TimerKey, at: Instant) {
        self.start(at);
        let node = match self.node_of(key) {
            Some(node) => node,
            None => self.new_node(key),
        };
        if self.nodes[node as usize].at.is_some() {
            self.unlink(node);
        } else {
            self.len += 1;
        }
        let tick = self.tick(at);
        self.link(node, at, tick);
        self.settle();
    }

    /// Removes `key`'s deadline, if it has one.
    pub(crate) fn cancel(&mut self, key: TimerKey) {
        let Some(node) = self.node_of(key) else {
            return;
        };
        if self.nodes[node as usize].at.is_none() {
            return;
        }
        self.unlink(node);
        self.release(node);
        self.settle();
    }

    /// `key`'s deadline, if it has one.
    #[cfg(test)]
    fn get(&self, key: TimerKey) -> Option<Instant> {
        self.nodes[self.node_of(key)? as usize].at
    }

    /// The earliest deadline.
    #[inline]
    pub(crate) fn next(&self) -> Option<Instant> {
        self.nodes[self.earliest()? as usize].at
    }

    /// Removes and returns the earliest key if its deadline is at or before
    /// `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<TimerKey> {
        let node = self.earliest()?;
        self.nodes[node as usize].at.filter(|&at| at <= now)?;
        self.unlink(node);
        let key = self.release(node);
        self.settle();
        Some(key)
    }

    /// How many deadlines are set.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    fn node_of(&self, key: TimerKey) -> Option<u32> {
        match key {
            TimerKey::Server(id) => {
                debug_assert!(id.index() < self.servers, "no such server");
                Some(id.0)
            }
            other => self.other_nodes.get(&other).copied(),
        }
    }

    fn new_node(&mut self, key: TimerKey) -> u32 {
        let node = self.free.pop().unwrap_or_else(|| {
            self.nodes.push(Node {
                at: None,
                tick: 0,
                prev: NONE,
                next: NONE,
            });
            self.other_keys.push(None);
            u32::try_from(self.nodes.len() - 1).expect("fewer than 2^32 timers")
        });
        self.other_keys[node as usize - self.servers] = Some(key);
        self.other_nodes.insert(key, node);
        node
    }

    /// `node`'s key, now that it has no deadline; a pool-wide key's node is
    /// freed for reuse.
    fn release(&mut self, node: u32) -> TimerKey {
        self.len -= 1;
        let Some(other) = (node as usize).checked_sub(self.servers) else {
            return TimerKey::Server(ServerId(node));
        };
        let key = self.other_keys[other]
            .take()
            .expect("a pool-wide node has its key");
        self.other_nodes.remove(&key);
        self.free.push(node);
        key
    }

    fn tick(&self, at: Instant) -> u64 {
        let since = self.origin.map_or(Duration::ZERO, |origin| {
            at.saturating_duration_since(origin)
        });
        u64::try_from(since.as_nanos() >> TICK_SHIFT).map_or(MAX_TICK, |t| t.min(MAX_TICK))
    }

    /// The list a deadline at `tick` belongs in: overdue before the wheel's
    /// tick, else the slot of the highest 6-bit digit in which it differs
    /// from the wheel's tick.
    fn list_of(&self, tick: u64) -> usize {
        if tick < self.elapsed {
            return OVERDUE;
        }
        let level = level(tick, self.elapsed);
        level as usize * SLOTS + digit(tick, level)
    }

    /// Puts `node` in the list of its deadline `at` (tick `tick`): at the
    /// end, or in a kept-in-order list after the last deadline not later
    /// than `at`.
    fn link(&mut self, node: u32, at: Instant, tick: u64) {
        let index = self.list_of(tick);
        let list = &mut self.lists[index];
        let mut prev = list.tail;
        if index < SLOTS || index == OVERDUE {
            while prev != NONE && self.nodes[prev as usize].at > Some(at) {
                prev = self.nodes[prev as usize].prev;
            }
        }
        let next = match prev {
            NONE => std::mem::replace(&mut list.head, node),
            prev => std::mem::replace(&mut self.nodes[prev as usize].next, node),
        };
        match next {
            NONE => list.tail = node,
            next => self.nodes[next as usize].prev = node,
        }
        if index < OVERDUE {
            self.occupied[index / SLOTS] |= 1 << (index % SLOTS);
        }
        self.nodes[node as usize] = Node {
            at: Some(at),
            tick,
            prev,
            next,
        };
    }

    /// Takes `node` out of its list.
    fn unlink(&mut self, node: u32) {
        let Node {
            tick, prev, next, ..
        } = self.nodes[node as usize];
        let index = self.list_of(tick);
        let list = &mut self.lists[index];
        match prev {
            NONE => list.head = next,
            prev => self.nodes[prev as usize].next = next,
        }
        match next {
            NONE => list.tail = prev,
            next => self.nodes[next as usize].prev = prev,
        }
        if list.head == NONE && index < OVERDUE {
            self.occupied[index / SLOTS] &= !(1 << (index % SLOTS));
        }
        self.nodes[node as usize].at = None;
    }

    /// While level 0 is empty, moves the wheel on to the start of the first
    /// occupied slot of the lowest occupied level and spreads that slot
    /// over the levels below (no deadline lies before that slot).
    fn settle(&mut self) {
        while self.occupied[0] == 0 {
            let Some(level) = (1..LEVELS).find(|&l| self.occupied[l as usize] != 0) else {
                return;
            };
            let shift = level * SLOT_BITS;
            let level = level as usize;
            let slot = self.occupied[level].trailing_zeros();
            let above = self.elapsed >> (shift + SLOT_BITS) << (shift + SLOT_BITS);
            self.elapsed = above | u64::from(slot) << shift;
            self.occupied[level] &= !(1 << slot);
            let index = level * SLOTS + slot as usize;
            let mut node = std::mem::replace(&mut self.lists[index], EMPTY).head;
            while node != NONE {
                let Node { at, tick, next, .. } = self.nodes[node as usize];
                self.link(node, at.expect("a listed node has a deadline"), tick);
                node = next;
            }
        }
    }

    /// The earliest deadline's node: the first overdue one, else the head
    /// of the first occupied level-0 slot.
    #[inline]
    fn earliest(&self) -> Option<u32> {
        let overdue = self.lists[OVERDUE].head;
        if overdue != NONE {
            return Some(overdue);
        }
        let slots = self.occupied[0];
        (slots != 0).then(|| self.lists[slots.trailing_zeros() as usize].head)
    }
}

/// The level of the highest 6-bit digit in which ticks `a` and `b` differ
/// (0 if they are equal).
#[inline]
fn level(a: u64, b: u64) -> u32 {
    (63 - ((a ^ b) | (SLOTS as u64 - 1)).leading_zeros()) / SLOT_BITS
}

/// `tick`'s slot at `level`: its 6-bit digit there.
#[inline]
fn digit(tick: u64, level: u32) -> usize {
    #[allow(clippy::cast_possible_truncation, reason = "masked to 6 bits")]
    let digit = ((tick >> (level * SLOT_BITS)) & (SLOTS as u64 - 1)) as usize;
    digit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(timers: &mut Timers) -> Vec<TimerKey> {
        std::iter::from_fn(|| timers.pop_due(Instant::now() + Duration::from_secs(1 << 40)))
            .collect()
    }

    fn lcg(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 33
        }
    }

    #[test]
    fn earliest_first_then_order_set() {
        let t0 = Instant::now();
        let mut timers = Timers::with_servers(2);
        let s = |i| TimerKey::Server(ServerId(i));
        timers.set(s(0), t0 + Duration::from_secs(2));
        timers.set(s(1), t0 + Duration::from_secs(1));
        timers.set(TimerKey::ProxyProbe, t0 + Duration::from_secs(1));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(t0), None, "nothing due yet");
        assert_eq!(drain(&mut timers), [s(1), TimerKey::ProxyProbe, s(0)]);
    }

    #[test]
    fn one_deadline_per_key() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut timers = Timers::with_servers(4);
        let key = TimerKey::Server(ServerId(3));
        timers.set(key, at(5));
        timers.set(key, at(1));
        timers.set(TimerKey::Operation(OperationId(9)), at(2));
        assert_eq!(timers.len(), 2, "setting a key again moves it");
        assert_eq!(timers.get(key), Some(at(1)));
        timers.cancel(key);
        timers.cancel(key);
        assert_eq!(timers.get(key), None);
        assert_eq!(drain(&mut timers), [TimerKey::Operation(OperationId(9))]);
    }

    /// Random sets, cancels and pops match a plain map searched in full:
    /// `spread` draws a deadline after `now`, `step` how far `now` moves
    /// before each pop.
    fn check_against_reference(
        seed: u64,
        rounds: u32,
        mut spread: impl FnMut(&mut dyn FnMut() -> u64) -> Duration,
    ) {
        let t0 = Instant::now();
        let mut next = lcg(seed);
        let mut timers = Timers::with_servers(40);
        timers.start(t0);
        let mut reference: BTreeMap<TimerKey, (Instant, u64)> = BTreeMap::new();
        let mut seq = 0;
        let mut now = t0;
        for round in 0..rounds {
            let key = match next() % 8 {
                0 => TimerKey::ProxyProbe,
                1 => TimerKey::Operation(OperationId(next() % 5)),
                2 => TimerKey::StrayClose(AttemptId(next() % 7)),
                #[allow(clippy::cast_possible_truncation)]
                _ => TimerKey::Server(ServerId((next() % 40) as u32)),
            };
            match next() % 4 {
                0 => {
                    timers.cancel(key);
                    reference.remove(&key);
                }
                1 => {
                    let expected = reference
                        .iter()
                        .min_by_key(|(_, v)| **v)
                        .map(|(k, v)| (*k, v.0));
                    assert_eq!(timers.next(), expected.map(|e| e.1), "round {round}");
                    if let Some((k, at)) = expected {
                        now = now.max(at);
                        assert_eq!(timers.pop_due(now), Some(k), "round {round}");
                        reference.remove(&k);
                    }
                }
                _ => {
                    let at = now + spread(&mut next);
                    seq += 1;
                    timers.set(key, at);
                    reference.insert(key, (at, seq));
                }
            }
            assert_eq!(timers.len(), reference.len());
        }
        let order: Vec<TimerKey> = {
            let mut left: Vec<_> = reference.into_iter().collect();
            left.sort_by_key(|(_, v)| *v);
            left.into_iter().map(|(k, _)| k).collect()
        };
        assert_eq!(drain(&mut timers), order);
    }

    #[test]
    fn matches_reference_with_many_ties() {
        // A few distinct instants, some behind the last one fired.
        check_against_reference(0x1234_5678, 30_000, |next| {
            Duration::from_millis(next() % 6)
        });
    }

    #[test]
    fn matches_reference_across_every_level() {
        // From nanoseconds to years ahead: every level of the wheel, and
        // deadlines that share a slot but not an instant.
        check_against_reference(0x9abc_def0, 60_000, |next| {
            let bits = next() % 62;
            Duration::from_nanos(next() & ((1 << bits) - 1))
        });
    }

    #[test]
    fn deadlines_before_the_first_now_keep_their_order() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut timers = Timers::with_servers(3);
        let s = |i| TimerKey::Server(ServerId(i));
        timers.start(t0);
        timers.set(s(0), t0 - Duration::from_secs(2));
        timers.set(s(1), t0 - Duration::from_secs(5));
        timers.set(s(2), t0 + Duration::from_secs(1));
        assert_eq!(timers.next(), Some(t0 - Duration::from_secs(5)));
        assert_eq!(drain(&mut timers), [s(1), s(0), s(2)]);
    }
}
