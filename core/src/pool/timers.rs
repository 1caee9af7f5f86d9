//! The machine's timers: a keyed table, at most one deadline per key.
//!
//! Every deadline the machine keeps names what it is for ([`TimerKey`]);
//! setting a key again moves its deadline, cancelling it removes it, so the
//! table never holds an entry that no longer counts (no generations, no lazy
//! deletion, no compaction). The earliest deadline is the root of an
//! indexed 4-ary min-heap: each key knows its position, so moving or
//! removing one is O(log n) and finding the earliest is O(1). Equal
//! instants fire in the order they were set, so runs are deterministic.
//!
//! Per-server keys (the hot path) find their position in a flat vector
//! indexed by server; the rare pool-wide ones (proxy probe, operation
//! deadlines, closes of connections that were never registered) in a small
//! ordered map. Once warm, setting and cancelling allocate nothing.

use std::collections::BTreeMap;
use std::time::Instant;

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

/// Children per heap node: half the depth of a binary heap.
const ARITY: usize = 4;
/// No position.
const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Entry {
    at: Instant,
    seq: u64,
    key: TimerKey,
}

impl Entry {
    /// Earlier instant, then set earlier.
    #[inline]
    fn before(&self, other: &Self) -> bool {
        (self.at, self.seq) < (other.at, other.seq)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: Vec<Entry>,
    /// Heap position of each server's key, or [`NONE`].
    server_pos: Vec<u32>,
    /// Heap position of every other key that is set.
    other_pos: BTreeMap<TimerKey, u32>,
    seq: u64,
}

impl Timers {
    /// A table for `servers` servers.
    pub(crate) fn with_servers(servers: usize) -> Self {
        Self {
            heap: Vec::with_capacity(servers),
            server_pos: vec![NONE; servers],
            ..Self::default()
        }
    }

    fn pos(&self, key: TimerKey) -> Option<usize> {
        let pos = match key {
            TimerKey::Server(id) => *self.server_pos.get(id.index())?,
            other => *self.other_pos.get(&other)?,
        };
        (pos != NONE).then_some(pos as usize)
    }

    /// Records that `key` sits at `pos` (`None`: no longer in the heap).
    #[inline]
    fn place(&mut self, key: TimerKey, pos: Option<usize>) {
        let pos = pos.map_or(NONE, |p| u32::try_from(p).expect("fewer than 2^32 timers"));
        match key {
            TimerKey::Server(id) => {
                let i = id.index();
                if i >= self.server_pos.len() {
                    self.server_pos.resize(i + 1, NONE);
                }
                self.server_pos[i] = pos;
            }
            other if pos == NONE => drop(self.other_pos.remove(&other)),
            other => drop(self.other_pos.insert(other, pos)),
        }
    }

    /// Sets `key`'s deadline to `at`, replacing the one it had.
    pub(crate) fn set(&mut self, key: TimerKey, at: Instant) {
        self.seq += 1;
        let entry = Entry {
            at,
            seq: self.seq,
            key,
        };
        match self.pos(key) {
            Some(pos) => {
                // The new entry is always set later: a tie with an old
                // instant now goes after it, so it may need to go down.
                self.heap[pos] = entry;
                let pos = self.sift_up(pos);
                self.sift_down(pos);
            }
            None => {
                self.heap.push(entry);
                self.sift_up(self.heap.len() - 1);
            }
        }
    }

    /// Removes `key`'s deadline, if it has one.
    pub(crate) fn cancel(&mut self, key: TimerKey) {
        if let Some(pos) = self.pos(key) {
            self.remove_at(pos);
        }
    }

    /// `key`'s deadline, if it has one.
    #[cfg(test)]
    fn get(&self, key: TimerKey) -> Option<Instant> {
        self.pos(key).map(|pos| self.heap[pos].at)
    }

    /// The earliest deadline.
    #[inline]
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.first().map(|e| e.at)
    }

    /// Removes and returns the earliest key if its deadline is at or before
    /// `now`.
    #[inline]
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<TimerKey> {
        let first = self.heap.first()?;
        if first.at > now {
            return None;
        }
        let key = first.key;
        self.remove_at(0);
        Some(key)
    }

    /// How many deadlines are set.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }

    fn remove_at(&mut self, pos: usize) {
        let removed = self.heap.swap_remove(pos);
        self.place(removed.key, None);
        if pos < self.heap.len() {
            let pos = self.sift_up(pos);
            self.sift_down(pos);
        }
    }

    /// Moves the entry at `pos` up to its place; returns where it ends.
    fn sift_up(&mut self, mut pos: usize) -> usize {
        let entry = self.heap[pos];
        while pos > 0 {
            let parent = (pos - 1) / ARITY;
            if !entry.before(&self.heap[parent]) {
                break;
            }
            self.heap[pos] = self.heap[parent];
            self.place(self.heap[pos].key, Some(pos));
            pos = parent;
        }
        self.heap[pos] = entry;
        self.place(entry.key, Some(pos));
        pos
    }

    /// Moves the entry at `pos` down to its place.
    fn sift_down(&mut self, mut pos: usize) {
        let entry = self.heap[pos];
        let len = self.heap.len();
        loop {
            let first = pos * ARITY + 1;
            if first >= len {
                break;
            }
            let mut best = first;
            for child in first + 1..(first + ARITY).min(len) {
                if self.heap[child].before(&self.heap[best]) {
                    best = child;
                }
            }
            if !self.heap[best].before(&entry) {
                break;
            }
            self.heap[pos] = self.heap[best];
            self.place(self.heap[pos].key, Some(pos));
            pos = best;
        }
        self.heap[pos] = entry;
        self.place(entry.key, Some(pos));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn drain(timers: &mut Timers) -> Vec<TimerKey> {
        std::iter::from_fn(|| timers.pop_due(Instant::now() + Duration::from_secs(1 << 40)))
            .collect()
    }

    #[test]
    fn earliest_first_then_order_set() {
        let t0 = Instant::now();
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
        let t0 = Instant::now();
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
        let t0 = Instant::now();
        let mut state = 0x1234_5678_u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 33
        };
        let mut timers = Timers::default();
        let mut reference: BTreeMap<TimerKey, (Instant, u64)> = BTreeMap::new();
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
                    // Few distinct instants: many ties.
                    let at = t0 + Duration::from_millis(next() % 6);
                    seq += 1;
                    timers.set(key, at);
                    reference.insert(key, (at, seq));
                }
            }
            assert_eq!(timers.len(), reference.len());
            // A key without a deadline keeps no entry: the position map
            // would otherwise grow with every stray close and operation.
            let others = reference
                .keys()
                .filter(|k| !matches!(k, TimerKey::Server(_)))
                .count();
            assert_eq!(timers.other_pos.len(), others, "round {round}");
        }
    }
}
