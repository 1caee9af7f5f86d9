//! The machine's timers: a keyed table, at most one deadline per key.
//!
//! Every deadline the machine keeps names what it is for ([`TimerKey`]);
//! setting a key again moves its deadline, cancelling it removes it, so the
//! table never holds an entry that no longer counts (no generations, no lazy
//! deletion, no compaction). Equal instants fire in the order they were
//! set, so runs are deterministic.
//!
//! Most of a server's deadlines are a fixed duration after the moment they
//! are set (a dial's timeout, a close's, the keepalive's quiet interval,
//! a probe's answer time): set in time order, each is no earlier than the
//! last one of its kind, so a FIFO list per kind ([`Lane`]) keeps them
//! sorted for free, and setting, moving and cancelling one is O(1). The
//! rest (jittered backoffs, pool-wide deadlines, and any lane deadline
//! that would come before its lane's last) go to an indexed 4-ary min-heap,
//! O(log n). The earliest deadline is the least of the heap's root and the
//! lanes' heads: a 100,000-server pool pays for its heap only for the
//! servers backing off.
//!
//! A heap entry is 24 bytes: the deadline as a [`Tick`], the order it was
//! set in, and a 32-bit slot. Small entries keep a 100,000-server heap
//! in cache, and the slot finds the key's position without a branch on its
//! kind: per-server keys (the hot path) use their index, the rare pool-wide
//! ones (proxy probe, operation deadlines, closes of connections that were
//! never registered) a slot of a small slab. Once warm, setting and
//! cancelling allocate nothing.

use super::clock::Tick;
use std::collections::BTreeMap;

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

/// A kind of per-server deadline that is always the same duration after
/// the instant it is set: its deadlines come in time order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// A dial's connection timeout.
    Dial,
    /// A registered link's close timeout.
    Close,
    /// A quiet link's next keepalive check.
    Idle,
    /// The time a probe's answer may take.
    Probe,
}

const LANES: usize = 4;

impl Lane {
    fn index(self) -> usize {
        self as usize
    }
}

/// Where a server's deadline is, and its place in its lane while it is in
/// one: 24 bytes per server.
#[derive(Debug, Clone, Copy)]
struct LaneNode {
    at: Tick,
    seq: u32,
    prev: u32,
    next: u32,
    /// Its heap position, `IN_LANE | lane`, or [`NONE`].
    loc: u32,
}

const FREE_NODE: LaneNode = LaneNode {
    at: Tick::ZERO,
    seq: 0,
    prev: NONE,
    next: NONE,
    loc: NONE,
};

/// First and last server of a lane, or [`NONE`].
#[derive(Debug, Clone, Copy)]
struct LaneEnds {
    head: u32,
    tail: u32,
}

/// Children per heap node: half the depth of a binary heap.
const ARITY: usize = 4;
/// No position.
const NONE: u32 = u32::MAX;
/// Marks a slot of the pool-wide keys' slab; other slots are server indices.
const OTHER: u32 = 1 << 31;
/// Marks a server's location as a lane (the low bits say which); other
/// locations are heap positions.
const IN_LANE: u32 = 1 << 31;

/// 16 bytes: a 100,000-entry heap fits in 1.6 MB.
#[derive(Debug, Clone, Copy)]
struct Entry {
    at: Tick,
    seq: u32,
    slot: u32,
}

impl Entry {
    /// Earlier instant, then set earlier.
    #[inline]
    fn before(&self, other: &Self) -> bool {
        (self.at, self.seq) < (other.at, other.seq)
    }
}

/// Slots of the pool-wide keys, reused once their deadline is gone.
#[derive(Debug, Default)]
struct OtherKeys {
    /// Each slot's key and heap position; `None` while free.
    slots: Vec<Option<(TimerKey, u32)>>,
    free: Vec<u32>,
    by_key: BTreeMap<TimerKey, u32>,
}

#[derive(Debug)]
pub(crate) struct Timers {
    heap: Vec<Entry>,
    /// Each server's deadline's location and lane place.
    nodes: Vec<LaneNode>,
    lanes: [LaneEnds; LANES],
    /// Bit `i` set: lane `i` is not empty (most are, most of the time).
    busy_lanes: u8,
    others: OtherKeys,
    /// The order of the last deadline set. A `u32`, renumbered when it
    /// runs out (once per 4 billion deadlines set; see
    /// [`renumber`](Self::renumber)).
    seq: u32,
    /// The last order number handed out before renumbering (lower in
    /// tests).
    seq_limit: u32,
}

impl Default for Timers {
    fn default() -> Self {
        Self::with_servers(0)
    }
}

impl Timers {
    /// A table for `servers` servers.
    pub(crate) fn with_servers(servers: usize) -> Self {
        Self {
            // Room for every server backing off at once: reserved up front,
            // so that no steady input ever grows it.
            heap: Vec::with_capacity(servers),
            nodes: vec![FREE_NODE; servers],
            lanes: [LaneEnds {
                head: NONE,
                tail: NONE,
            }; LANES],
            busy_lanes: 0,
            others: OtherKeys::default(),
            seq: 0,
            seq_limit: u32::MAX,
        }
    }

    /// The slot `key` has, if it has a deadline.
    fn slot_of(&self, key: TimerKey) -> Option<u32> {
        match key {
            TimerKey::Server(id) => Some(id.0),
            other => self.others.by_key.get(&other).map(|&index| index | OTHER),
        }
    }

    fn key_of(&self, slot: u32) -> TimerKey {
        if slot & OTHER == 0 {
            TimerKey::Server(ServerId(slot))
        } else {
            // A slot in the heap is always taken.
            self.others.slots[(slot & !OTHER) as usize].map_or(TimerKey::ProxyProbe, |(key, _)| key)
        }
    }

    /// `slot`'s heap position, if its deadline is in the heap ([`NONE`]
    /// has the lane bit too).
    fn pos(&self, slot: u32) -> Option<usize> {
        let pos = if slot & OTHER == 0 {
            self.nodes.get(slot as usize)?.loc
        } else {
            self.others.slots.get((slot & !OTHER) as usize)?.as_ref()?.1
        };
        (pos & IN_LANE == 0).then_some(pos as usize)
    }

    /// The lane server `index`'s deadline is in, if it is in one.
    fn lane_of(&self, index: usize) -> Option<usize> {
        let loc = self.nodes.get(index)?.loc;
        (loc != NONE && loc & IN_LANE != 0).then_some((loc & !IN_LANE) as usize)
    }

    /// Sets server `id`'s deadline to `at`, one of `lane`'s: at the lane's
    /// end if no earlier than its last, else in the heap.
    pub(crate) fn set_in(&mut self, lane: Lane, id: ServerId, at: Tick) {
        let index = id.index();
        if index >= self.nodes.len() {
            self.nodes.resize(index + 1, FREE_NODE);
        }
        let location = IN_LANE | lane as u32;
        let lane = lane.index();
        self.detach(index);
        let tail = self.lanes[lane].tail;
        if tail != NONE && self.nodes[tail as usize].at > at {
            // Out of order (a re-arm from an older sign of life).
            let seq = self.next_seq();
            self.push_heap(Entry {
                at,
                seq,
                slot: id.0,
            });
            return;
        }
        let seq = self.next_seq();
        self.nodes[index] = LaneNode {
            at,
            seq,
            prev: tail,
            next: NONE,
            loc: location,
        };
        if tail == NONE {
            self.lanes[lane].head = id.0;
            self.busy_lanes |= 1 << lane;
        } else {
            self.nodes[tail as usize].next = id.0;
        }
        self.lanes[lane].tail = id.0;
    }

    /// Takes server `index`'s deadline out of its lane or the heap.
    fn detach(&mut self, index: usize) {
        if let Some(lane) = self.lane_of(index) {
            self.unlink(lane, index);
        } else if let Some(pos) = self.pos(u32::try_from(index).unwrap_or(NONE)) {
            self.remove_at(pos);
        }
    }

    fn unlink(&mut self, lane: usize, index: usize) {
        let LaneNode { prev, next, .. } = self.nodes[index];
        if prev == NONE {
            self.lanes[lane].head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NONE {
            self.lanes[lane].tail = prev;
            if prev == NONE {
                self.busy_lanes &= !(1 << lane);
            }
        } else {
            self.nodes[next as usize].prev = prev;
        }
        self.nodes[index].loc = NONE;
    }

    /// The lane whose head is the earliest of the lanes', with its
    /// `(at, seq)`.
    fn earliest_lane(&self) -> Option<(usize, (Tick, u32))> {
        let mut best: Option<(usize, (Tick, u32))> = None;
        let mut busy = self.busy_lanes;
        while busy != 0 {
            let lane = busy.trailing_zeros() as usize;
            busy &= busy - 1;
            let node = &self.nodes[self.lanes[lane].head as usize];
            let order = (node.at, node.seq);
            if best.is_none_or(|(_, b)| order < b) {
                best = Some((lane, order));
            }
        }
        best
    }

    /// Where the earliest deadline is: the heap's root (`None`) or a lane's
    /// head, with its tick.
    #[inline]
    fn earliest(&self) -> Option<(Option<usize>, Tick)> {
        let heap = self.heap.first().map(|e| (e.at, e.seq));
        match (heap, self.earliest_lane()) {
            (None, None) => None,
            (Some((at, _)), None) => Some((None, at)),
            (Some(h), Some((_, l))) if h < l => Some((None, h.0)),
            (_, Some((lane, (at, _)))) => Some((Some(lane), at)),
        }
    }

    /// Records that `slot`'s entry sits at heap position `pos`.
    #[inline]
    fn place(&mut self, slot: u32, pos: usize) {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "fewer than 2^31 timers: the heap holds at most one per key"
        )]
        let pos = pos as u32;
        if slot & OTHER == 0 {
            self.nodes[slot as usize].loc = pos;
        } else if let Some(Some((_, at))) = self.others.slots.get_mut((slot & !OTHER) as usize) {
            *at = pos;
        }
    }

    /// A slot for `key`, taken if it had none.
    fn take_slot(&mut self, key: TimerKey) -> u32 {
        if let Some(slot) = self.slot_of(key) {
            if slot & OTHER == 0 && slot as usize >= self.nodes.len() {
                self.nodes.resize(slot as usize + 1, FREE_NODE);
            }
            return slot;
        }
        let index = match self.others.free.pop() {
            Some(index) => {
                self.others.slots[index as usize] = Some((key, NONE));
                index
            }
            None => {
                let index = u32::try_from(self.others.slots.len()).unwrap_or(u32::MAX);
                self.others.slots.push(Some((key, NONE)));
                index
            }
        };
        self.others.by_key.insert(key, index);
        index | OTHER
    }

    /// Forgets `slot`'s heap position; a pool-wide key's slot goes back to the slab.
    fn release(&mut self, slot: u32) {
        if slot & OTHER == 0 {
            self.nodes[slot as usize].loc = NONE;
        } else {
            let index = slot & !OTHER;
            if let Some((key, _)) = self.others.slots[index as usize].take() {
                self.others.by_key.remove(&key);
                self.others.free.push(index);
            }
        }
    }

    /// Sets `key`'s deadline to `at`, replacing the one it had.
    pub(crate) fn set(&mut self, key: TimerKey, at: Tick) {
        let seq = self.next_seq();
        let slot = self.take_slot(key);
        if let Some(lane) = (slot & OTHER == 0)
            .then(|| self.lane_of(slot as usize))
            .flatten()
        {
            self.unlink(lane, slot as usize);
        }
        let entry = Entry { at, seq, slot };
        self.push_heap(entry);
    }

    /// The order number of a deadline being set now.
    #[inline]
    fn next_seq(&mut self) -> u32 {
        if self.seq >= self.seq_limit {
            self.renumber();
        }
        self.seq += 1;
        self.seq
    }

    /// Gives the deadlines set so far the order numbers 1, 2, 3, … in the
    /// order they were set, so that order numbers stay in a `u32` (half the
    /// size of a heap entry's `u64`). Only their order is ever compared, so
    /// nothing else changes; the heap stays a heap. O(n log n), once per
    /// 4 billion deadlines set.
    #[cold]
    #[inline(never)]
    fn renumber(&mut self) {
        // (old order, where: heap position or IN_LANE | server index)
        let mut live: Vec<(u32, u32)> = Vec::with_capacity(self.heap.len() + self.nodes.len());
        for (pos, entry) in self.heap.iter().enumerate() {
            live.push((entry.seq, u32::try_from(pos).unwrap_or(NONE)));
        }
        for (index, node) in self.nodes.iter().enumerate() {
            if node.loc != NONE && node.loc & IN_LANE != 0 {
                live.push((node.seq, IN_LANE | u32::try_from(index).unwrap_or(NONE)));
            }
        }
        live.sort_unstable();
        for (new, &(_, at)) in (1..).zip(&live) {
            if at & IN_LANE == 0 {
                self.heap[at as usize].seq = new;
            } else {
                self.nodes[(at & !IN_LANE) as usize].seq = new;
            }
        }
        self.seq = u32::try_from(live.len()).unwrap_or(u32::MAX);
    }

    /// Puts `entry` in the heap, moving its slot's entry if it has one.
    fn push_heap(&mut self, entry: Entry) {
        match self.pos(entry.slot) {
            Some(pos) => {
                // The new entry is always set later: a tie with an old
                // instant now goes after it, so it may need to go down.
                let pos = self.sift_up(pos, entry);
                self.sift_down(pos, entry);
            }
            None => {
                self.heap.push(entry);
                self.sift_up(self.heap.len() - 1, entry);
            }
        }
    }

    /// Removes `key`'s deadline, if it has one.
    pub(crate) fn cancel(&mut self, key: TimerKey) {
        match key {
            TimerKey::Server(id) => self.detach(id.index()),
            other => {
                if let Some(pos) = self.slot_of(other).and_then(|slot| self.pos(slot)) {
                    self.remove_at(pos);
                }
            }
        }
    }

    /// `key`'s deadline, if it has one.
    #[cfg(test)]
    fn get(&self, key: TimerKey) -> Option<Tick> {
        if let TimerKey::Server(id) = key {
            if self.lane_of(id.index()).is_some() {
                return Some(self.nodes[id.index()].at);
            }
        }
        let pos = self.pos(self.slot_of(key)?)?;
        Some(self.heap[pos].at)
    }

    /// The earliest deadline.
    #[inline]
    pub(crate) fn next(&self) -> Option<Tick> {
        self.earliest().map(|(_, at)| at)
    }

    /// Removes and returns the earliest key if its deadline is at or before
    /// `now`.
    #[inline]
    pub(crate) fn pop_due(&mut self, now: Tick) -> Option<TimerKey> {
        let (lane, at) = self.earliest()?;
        if at > now {
            return None;
        }
        Some(match lane {
            Some(lane) => {
                let head = self.lanes[lane].head;
                self.unlink(lane, head as usize);
                TimerKey::Server(ServerId(head))
            }
            None => {
                let key = self.key_of(self.heap[0].slot);
                self.remove_at(0);
                key
            }
        })
    }

    /// How many deadlines are set.
    #[cfg(test)]
    fn len(&self) -> usize {
        let in_lanes = self
            .nodes
            .iter()
            .filter(|node| node.loc != NONE && node.loc & IN_LANE != 0)
            .count();
        self.heap.len() + in_lanes
    }

    fn remove_at(&mut self, pos: usize) {
        let removed = self.heap[pos];
        self.release(removed.slot);
        let last = self.heap.pop().unwrap_or(removed);
        if pos < self.heap.len() {
            let pos = self.sift_up(pos, last);
            self.sift_down(pos, last);
        }
    }

    /// Moves `entry`, whose hole is at `pos`, up to its place; returns where
    /// it ends (written there).
    fn sift_up(&mut self, mut pos: usize, entry: Entry) -> usize {
        while pos > 0 {
            let parent = (pos - 1) / ARITY;
            let above = self.heap[parent];
            if !entry.before(&above) {
                break;
            }
            self.heap[pos] = above;
            self.place(above.slot, pos);
            pos = parent;
        }
        self.heap[pos] = entry;
        self.place(entry.slot, pos);
        pos
    }

    /// Moves `entry`, whose hole is at `pos`, down to its place.
    fn sift_down(&mut self, mut pos: usize, entry: Entry) {
        let len = self.heap.len();
        loop {
            let first = pos * ARITY + 1;
            if first >= len {
                break;
            }
            let mut best = first;
            let mut best_entry = self.heap[first];
            // From the first child on, which does not beat itself: one
            // comparison more, and no bound to get wrong.
            for child in first..(first + ARITY).min(len) {
                let candidate = self.heap[child];
                if candidate.before(&best_entry) {
                    best = child;
                    best_entry = candidate;
                }
            }
            if !best_entry.before(&entry) {
                break;
            }
            self.heap[pos] = best_entry;
            self.place(best_entry.slot, pos);
            pos = best;
        }
        self.heap[pos] = entry;
        self.place(entry.slot, pos);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Every structure agrees: the heap is a heap and each entry's slot
    /// knows its position; each lane runs head to tail in (at, order)
    /// order with consistent links and locations; the busy mask names the
    /// lanes that hold something.
    fn assert_consistent(timers: &Timers) {
        for i in 1..timers.heap.len() {
            let parent = (i - 1) / ARITY;
            assert!(
                !timers.heap[i].before(&timers.heap[parent]),
                "heap order at {i}"
            );
        }
        for (i, entry) in timers.heap.iter().enumerate() {
            assert_eq!(timers.pos(entry.slot), Some(i), "position of entry {i}");
        }
        for (lane, ends) in timers.lanes.iter().enumerate() {
            assert_eq!(
                ends.head == NONE,
                timers.busy_lanes & (1 << lane) == 0,
                "busy bit {lane}"
            );
            let (mut prev, mut at) = (NONE, None);
            let mut node = ends.head;
            while node != NONE {
                let n = timers.nodes[node as usize];
                assert_eq!(n.prev, prev, "lane {lane} links");
                assert_eq!(
                    timers.lane_of(node as usize),
                    Some(lane),
                    "lane {lane} location"
                );
                assert!(at.is_none_or(|a| a <= (n.at, n.seq)), "lane {lane} order");
                at = Some((n.at, n.seq));
                prev = node;
                node = n.next;
            }
            assert_eq!(ends.tail, prev, "lane {lane} tail");
        }
    }

    fn drain(timers: &mut Timers) -> Vec<TimerKey> {
        std::iter::from_fn(|| timers.pop_due(Tick::ZERO + Duration::from_secs(1 << 40))).collect()
    }

    #[test]
    fn earliest_first_then_order_set() {
        let t0 = Tick::ZERO;
        let mut timers = Timers::default();
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
        let t0 = Tick::ZERO;
        let at = |s| t0 + Duration::from_secs(s);
        let mut timers = Timers::default();
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

    /// Random sets, cancels and pops match a plain map searched in full.
    #[test]
    fn matches_reference() {
        check_against_reference(u32::MAX);
    }

    /// Renumbering gives the live deadlines 1, 2, 3, … in the order they
    /// were set, wherever they are, and counts on from there.
    #[test]
    fn renumbering_numbers_the_live_deadlines_from_one_in_order() {
        let t0 = Tick::ZERO;
        let at = |ms| t0 + std::time::Duration::from_millis(ms);
        let mut timers = Timers::with_servers(6);
        for server in 0..6 {
            timers.set_in(Lane::Dial, ServerId(server), at(100));
        }
        timers.set(TimerKey::ProxyProbe, at(50));
        timers.set(TimerKey::Server(ServerId(1)), at(70)); // to the heap
        timers.cancel(TimerKey::Server(ServerId(3)));
        timers.set_in(Lane::Idle, ServerId(4), at(300)); // to another lane
        let order = |timers: &Timers| -> Vec<(TimerKey, u32)> {
            let mut seqs: Vec<_> = timers
                .heap
                .iter()
                .map(|e| (timers.key_of(e.slot), e.seq))
                .chain((0..6_u32).filter_map(|i| {
                    let index = i as usize;
                    timers
                        .lane_of(index)
                        .map(|_| (TimerKey::Server(ServerId(i)), timers.nodes[index].seq))
                }))
                .collect();
            seqs.sort_by_key(|&(_, seq)| seq);
            seqs
        };
        let before = order(&timers);
        assert_eq!(before.len(), 6, "five servers and the probe");
        assert_eq!(timers.seq, 9, "nine deadlines set");
        timers.renumber();
        let after = order(&timers);
        assert_eq!(
            after.iter().map(|&(key, _)| key).collect::<Vec<_>>(),
            before.iter().map(|&(key, _)| key).collect::<Vec<_>>(),
            "the same order"
        );
        assert_eq!(
            after.iter().map(|&(_, seq)| seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
        assert_eq!(timers.seq, 6, "counts on from the last");
        timers.set(TimerKey::ProxyProbe, at(10));
        assert_eq!(timers.seq, 7);
    }

    /// Order numbers count up one per deadline set, renumbered only once
    /// they reach the limit.
    #[test]
    fn order_numbers_are_renumbered_only_at_the_limit() {
        let t0 = Tick::ZERO;
        let mut timers = Timers {
            seq_limit: 4,
            ..Timers::with_servers(4)
        };
        for server in 0..3 {
            timers.set(TimerKey::Server(ServerId(server)), t0);
        }
        timers.cancel(TimerKey::Server(ServerId(0)));
        timers.set(TimerKey::Server(ServerId(3)), t0);
        assert_eq!(timers.seq, 4, "no renumbering below the limit");
        timers.set(TimerKey::Server(ServerId(0)), t0);
        assert_eq!(
            timers.seq, 4,
            "three live renumbered 1..=3, then the fourth"
        );
    }

    /// A heap several levels deep, with deadlines removed from anywhere in
    /// it (a cancel refills a hole deep down, which must sift both ways)
    /// and spread so that few tie: it stays a heap and pops in order.
    #[test]
    fn a_deep_heap_stays_ordered_through_removals_anywhere() {
        let t0 = Tick::ZERO;
        let mut next = draws(0x9e37_79b9);
        let mut timers = Timers::with_servers(400);
        #[allow(clippy::cast_possible_truncation)]
        for _ in 0..20_000 {
            let id = ServerId((next() % 400) as u32);
            if next() % 3 == 0 {
                timers.cancel(TimerKey::Server(id));
            } else {
                timers.set(
                    TimerKey::Server(id),
                    t0 + Duration::from_micros(next() % 1_000_000),
                );
            }
            assert_consistent(&timers);
        }
        assert!(timers.heap.len() > 100, "several levels deep");
        assert_consistent(&timers);
        let mut last = None;
        while let Some(at) = timers.next() {
            assert!(last.is_none_or(|last| last <= at), "pops in order");
            last = Some(at);
            assert!(timers.pop_due(at).is_some());
        }
    }

    /// The same with order numbers renumbered every few dozen sets.
    #[test]
    fn renumbering_keeps_the_order() {
        check_against_reference(64);
    }

    /// A small deterministic generator (a 64-bit LCG's high bits) from
    /// `seed`, for the randomised tests.
    fn draws(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 33
        }
    }

    fn check_against_reference(seq_limit: u32) {
        let t0 = Tick::ZERO;
        let mut next = draws(0x1234_5678);
        let mut timers = Timers {
            seq_limit,
            ..Timers::default()
        };
        let mut reference: BTreeMap<TimerKey, (Tick, u64)> = BTreeMap::new();
        let mut seq = 0;
        for round in 0..30_000 {
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
                    let at = timers.next();
                    assert_eq!(at, expected.map(|e| e.1), "round {round}");
                    if let Some((k, at)) = expected {
                        assert_eq!(timers.pop_due(at), Some(k), "round {round}");
                        reference.remove(&k);
                    }
                }
                _ => {
                    // Few distinct instants around a slowly rising base:
                    // many ties, lanes mostly in order, sometimes not.
                    let at = t0 + Duration::from_millis(round / 64 + next() % 6);
                    seq += 1;
                    match (key, next() % 5) {
                        (TimerKey::Server(id), lane @ 0..4) => {
                            let lane = [Lane::Dial, Lane::Close, Lane::Idle, Lane::Probe]
                                [usize::try_from(lane).unwrap_or(0)];
                            timers.set_in(lane, id, at);
                        }
                        _ => timers.set(key, at),
                    }
                    reference.insert(key, (at, seq));
                }
            }
            assert_eq!(timers.len(), reference.len());
            assert_consistent(&timers);
            // A key without a deadline keeps no entry: the position map
            // would otherwise grow with every stray close and operation.
            let others = reference
                .keys()
                .filter(|k| !matches!(k, TimerKey::Server(_)))
                .count();
            assert_eq!(timers.others.by_key.len(), others, "round {round}");
            assert_eq!(
                timers.others.slots.iter().flatten().count(),
                others,
                "round {round}"
            );
        }
    }
}
