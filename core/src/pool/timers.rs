//! The machine's timers: entries invalidated lazily.
//!
//! Cancelling a timer would mean finding it; instead every entry names what
//! it is for, and the machine checks on firing (and in `poll_timeout`)
//! whether that is still current. Equal instants fire in the order they were
//! set, so runs are deterministic.
//!
//! Dial and close deadlines are `now + a constant timeout` with a clock that
//! never goes back, so they come in time order: each kind lives in a FIFO
//! queue (O(1) to push and pop) instead of the heap, and only the timers
//! whose delays vary (redials, proxy probes, operation deadlines) pay for a
//! min-heap. Every entry is 24 bytes (its instant as nanoseconds from the
//! first instant pushed, its sequence number and kind, a payload) and the
//! heap is 4-ary, so a pop at 100,000 timers touches about half as many
//! cache lines as a binary heap of 40-byte entries. Most dials end long
//! before their deadline, so most deadline entries go stale; [`Timers::compact`] drops the stale ones whenever a
//! queue has doubled since the last time, which bounds the memory at about
//! twice the live deadlines for O(1) amortized work per push.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use crate::output::{AttemptId, OperationId, ServerId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The attempt's connection timeout.
    DialDeadline(AttemptId),
    /// The close's timeout.
    CloseDeadline(AttemptId),
    /// A server's scheduled redial; `generation` must match the server's.
    Retry { server: ServerId, generation: u32 },
    /// The next proxy probe; `generation` must match the proxy's.
    ProxyProbe { generation: u32 },
    /// A `connect_all_with_retry` deadline.
    OperationDeadline(OperationId),
    /// A connected link's keepalive: probe it, or declare it lost. One entry
    /// per open link; firing re-arms it at the link's next due instant.
    Keepalive(AttemptId),
}

/// Entries below which a deadline queue is never compacted.
const MIN_COMPACT: usize = 1024;

/// Keys are nanoseconds from [`Timers::base`] plus this bias; instants 2^63
/// ns (about 292 years) or more away from the base go to [`Timers::far`]
/// instead, so every key is exact. Keys 0, 1 and `u64::MAX` are never used.
const BIAS: u64 = 1 << 63;

/// A timer in 24 bytes: its instant as a key, the insertion sequence number
/// with the timer's kind in the low 3 bits (sequence numbers are unique, so
/// the kind never decides an order), and the timer's payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    at: u64,
    seq_kind: u64,
    payload: u64,
}

impl Slot {
    fn new(at: u64, seq: u64, timer: Timer) -> Self {
        let (kind, payload) = match timer {
            Timer::DialDeadline(a) => (0, a.0),
            Timer::CloseDeadline(a) => (1, a.0),
            Timer::Retry { server, generation } => {
                (2, u64::from(server.0) << 32 | u64::from(generation))
            }
            Timer::ProxyProbe { generation } => (3, u64::from(generation)),
            Timer::OperationDeadline(id) => (4, id.0),
            Timer::Keepalive(a) => (5, a.0),
        };
        Self {
            at,
            seq_kind: seq << 3 | kind,
            payload,
        }
    }

    /// Earlier instant, then earlier insertion.
    #[inline]
    fn before(&self, other: &Self) -> bool {
        (self.at, self.seq_kind) < (other.at, other.seq_kind)
    }

    #[inline]
    #[allow(clippy::cast_possible_truncation)]
    fn timer(&self) -> Timer {
        match self.seq_kind & 7 {
            0 => Timer::DialDeadline(AttemptId(self.payload)),
            1 => Timer::CloseDeadline(AttemptId(self.payload)),
            2 => Timer::Retry {
                server: ServerId((self.payload >> 32) as u32),
                generation: self.payload as u32,
            },
            3 => Timer::ProxyProbe {
                generation: self.payload as u32,
            },
            4 => Timer::OperationDeadline(OperationId(self.payload)),
            _ => Timer::Keepalive(AttemptId(self.payload)),
        }
    }
}

/// A queue of entries pushed in time order.
#[derive(Debug)]
struct Fifo {
    entries: VecDeque<Slot>,
    /// Compact when `entries` reaches this length.
    limit: usize,
}

impl Default for Fifo {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            limit: MIN_COMPACT,
        }
    }
}

impl Fifo {
    /// Takes `slot` if it keeps the queue in order.
    fn try_push(&mut self, slot: Slot) -> Result<(), Slot> {
        match self.entries.back() {
            Some(last) if last.at > slot.at => Err(slot),
            _ => {
                self.entries.push_back(slot);
                Ok(())
            }
        }
    }

    fn compact(&mut self, live: &mut impl FnMut(Timer) -> bool) {
        if self.entries.len() < self.limit {
            return;
        }
        self.entries.retain(|e| live(e.timer()));
        self.limit = (self.entries.len() * 2).max(MIN_COMPACT);
    }
}

/// Children per heap node: a 4-ary heap is half as deep as a binary one,
/// and a node's children span at most three cache lines.
const ARITY: usize = 4;

/// A 4-ary min-heap of slots, earliest first.
#[derive(Debug, Default)]
struct Heap {
    slots: Vec<Slot>,
}

impl Heap {
    fn push(&mut self, slot: Slot) {
        let mut i = self.slots.len();
        self.slots.push(slot);
        while i > 0 {
            let parent = (i - 1) / ARITY;
            if !slot.before(&self.slots[parent]) {
                break;
            }
            self.slots[i] = self.slots[parent];
            i = parent;
        }
        self.slots[i] = slot;
    }

    /// Removes the earliest slot: the hole at the root goes down along the
    /// earliest children to a leaf, then the last slot rises from there (it
    /// usually belongs near the bottom).
    fn pop(&mut self) {
        let Some(last) = self.slots.pop() else {
            return;
        };
        let len = self.slots.len();
        if len == 0 {
            return;
        }
        let slots = &mut self.slots[..];
        let mut hole = 0;
        loop {
            let first = hole * ARITY + 1;
            if first >= len {
                break;
            }
            let end = (first + ARITY).min(len);
            let mut best = first;
            for child in first + 1..end {
                if slots[child].before(&slots[best]) {
                    best = child;
                }
            }
            slots[hole] = slots[best];
            hole = best;
        }
        while hole > 0 {
            let parent = (hole - 1) / ARITY;
            if !last.before(&slots[parent]) {
                break;
            }
            slots[hole] = slots[parent];
            hole = parent;
        }
        slots[hole] = last;
    }
}

/// An entry too far from the base for a key, kept with its instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    at: Instant,
    seq: u64,
    timer: Timer,
}

impl Entry {
    fn key(&self) -> (Instant, u64) {
        (self.at, self.seq)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap and we want the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key().cmp(&self.key())
    }
}

#[derive(Debug, Default)]
pub(crate) struct Timers {
    /// The instant that key `BIAS` stands for: the first one pushed.
    base: Option<Instant>,
    /// Timers with varying delays, and any deadline that came out of order.
    heap: Heap,
    dial: Fifo,
    close: Fifo,
    /// Timers too far from `base` for a key (none in practice): all of them
    /// are before or after every keyed one.
    far: BinaryHeap<Entry>,
    seq: u64,
}

/// Where the earliest entry is.
#[derive(Clone, Copy)]
pub(crate) enum Source {
    Heap,
    Dial,
    Close,
}

/// An instant to compare entries with, as an instant and as a key.
pub(crate) struct Due {
    now: Instant,
    key: u64,
}

/// Where the earliest entry is.
#[derive(Clone, Copy)]
pub(crate) enum First {
    Keyed(Source, Slot),
    Far(Entry),
}

impl Timers {
    /// `at` as a key, if it is less than 2^63 ns away from the base.
    #[inline]
    fn encode(base: Instant, at: Instant) -> Option<u64> {
        let (offset, after) = match at.checked_duration_since(base) {
            Some(offset) => (offset, true),
            None => (base.duration_since(at), false),
        };
        let nanos = offset
            .as_secs()
            .checked_mul(1_000_000_000)?
            .checked_add(u64::from(offset.subsec_nanos()))?;
        if nanos >= BIAS - 1 {
            return None;
        }
        Some(if after { BIAS + nanos } else { BIAS - nanos })
    }

    fn decode(&self, key: u64) -> Instant {
        let base = self.base.expect("keys exist only once a base is set");
        if key >= BIAS {
            base + Duration::from_nanos(key - BIAS)
        } else {
            base - Duration::from_nanos(BIAS - key)
        }
    }

    pub(crate) fn push(&mut self, at: Instant, timer: Timer) {
        self.seq += 1;
        let base = *self.base.get_or_insert(at);
        let Some(key) = Self::encode(base, at) else {
            self.far.push(Entry {
                at,
                seq: self.seq,
                timer,
            });
            return;
        };
        let slot = Slot::new(key, self.seq, timer);
        let queued = match timer {
            Timer::DialDeadline(_) => self.dial.try_push(slot),
            Timer::CloseDeadline(_) => self.close.try_push(slot),
            _ => Err(slot),
        };
        if let Err(slot) = queued {
            self.heap.push(slot);
        }
    }

    /// Drops stale deadline entries once a queue has doubled since the last
    /// compaction. `live` says whether a timer is still current.
    pub(crate) fn compact(&mut self, mut live: impl FnMut(Timer) -> bool) {
        self.dial.compact(&mut live);
        self.close.compact(&mut live);
    }

    /// Whether [`compact`](Self::compact) would do anything.
    pub(crate) fn compaction_due(&self) -> bool {
        self.dial.entries.len() >= self.dial.limit || self.close.entries.len() >= self.close.limit
    }

    /// The earliest keyed entry: the heap's top or a queue's front.
    #[inline]
    fn earliest_keyed(&self) -> Option<(Source, Slot)> {
        let mut best = self.heap.slots.first().map(|s| (Source::Heap, *s));
        for (source, front) in [
            (Source::Dial, self.dial.entries.front()),
            (Source::Close, self.close.entries.front()),
        ] {
            if let Some(slot) = front {
                match best {
                    Some((_, b)) if !slot.before(&b) => {}
                    _ => best = Some((source, *slot)),
                }
            }
        }
        best
    }

    #[inline]
    fn earliest(&self) -> Option<First> {
        let keyed = self.earliest_keyed();
        let Some(far) = self.far.peek() else {
            return keyed.map(|(source, slot)| First::Keyed(source, slot));
        };
        // A far entry is before every keyed one if it is before the base.
        match keyed {
            Some((source, slot)) if self.base.is_some_and(|base| far.at >= base) => {
                Some(First::Keyed(source, slot))
            }
            _ => Some(First::Far(*far)),
        }
    }

    /// When the entry [`peek`](Self::peek) found is due.
    pub(crate) fn instant(&self, first: First) -> Instant {
        match first {
            First::Keyed(_, slot) => self.decode(slot.at),
            First::Far(entry) => entry.at,
        }
    }

    /// Removes the entry [`peek`](Self::peek) found; nothing may have been
    /// pushed or removed since.
    pub(crate) fn remove(&mut self, first: First) -> Timer {
        match first {
            First::Keyed(source, slot) => {
                match source {
                    Source::Heap => self.heap.pop(),
                    Source::Dial => drop(self.dial.entries.pop_front()),
                    Source::Close => drop(self.close.entries.pop_front()),
                }
                slot.timer()
            }
            First::Far(entry) => {
                self.far.pop();
                entry.timer
            }
        }
    }

    /// The earliest timer, and where it is for [`instant`](Self::instant)
    /// and [`remove`](Self::remove).
    #[inline]
    pub(crate) fn peek(&self) -> Option<(Timer, First)> {
        self.earliest().map(|first| {
            let timer = match first {
                First::Keyed(_, slot) => slot.timer(),
                First::Far(entry) => entry.timer,
            };
            (timer, first)
        })
    }

    /// `now` for [`pop_due`](Self::pop_due), converted once.
    pub(crate) fn due_at(&self, now: Instant) -> Due {
        // Before or after every possible key if out of range.
        let key = self.base.map_or(0, |base| {
            Self::encode(base, now).unwrap_or(if now < base { 0 } else { u64::MAX })
        });
        Due { now, key }
    }

    /// Removes and returns the earliest timer if it is due.
    #[inline]
    pub(crate) fn pop_due(&mut self, due: &Due) -> Option<Timer> {
        let first = self.earliest()?;
        let is_due = match first {
            First::Keyed(_, slot) => slot.at <= due.key,
            First::Far(entry) => entry.at <= due.now,
        };
        is_due.then(|| self.remove(first))
    }

    /// Removes and returns the earliest timer and its instant.
    #[cfg(test)]
    fn pop(&mut self) -> Option<(Instant, Timer)> {
        let first = self.earliest()?;
        let at = self.instant(first);
        Some((at, self.remove(first)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_then_insertion_order() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.push(
            t0 + Duration::from_secs(2),
            Timer::ProxyProbe { generation: 1 },
        );
        timers.push(
            t0 + Duration::from_secs(1),
            Timer::ProxyProbe { generation: 2 },
        );
        timers.push(
            t0 + Duration::from_secs(1),
            Timer::ProxyProbe { generation: 3 },
        );
        let order: Vec<_> = std::iter::from_fn(|| timers.pop())
            .map(|(_, t)| t)
            .collect();
        assert_eq!(
            order,
            [
                Timer::ProxyProbe { generation: 2 },
                Timer::ProxyProbe { generation: 3 },
                Timer::ProxyProbe { generation: 1 }
            ]
        );
    }

    #[test]
    fn deadlines_and_heap_timers_merge_in_order() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut timers = Timers::default();
        timers.push(at(5), Timer::DialDeadline(AttemptId(1)));
        timers.push(at(3), Timer::ProxyProbe { generation: 1 });
        timers.push(at(5), Timer::CloseDeadline(AttemptId(2)));
        // Out of order for its queue: goes to the heap, still fires in time.
        timers.push(at(4), Timer::DialDeadline(AttemptId(3)));
        timers.push(at(5), Timer::ProxyProbe { generation: 2 });
        let order: Vec<_> = std::iter::from_fn(|| timers.pop()).collect();
        assert_eq!(
            order,
            [
                (at(3), Timer::ProxyProbe { generation: 1 }),
                (at(4), Timer::DialDeadline(AttemptId(3))),
                (at(5), Timer::DialDeadline(AttemptId(1))),
                (at(5), Timer::CloseDeadline(AttemptId(2))),
                (at(5), Timer::ProxyProbe { generation: 2 }),
            ]
        );
    }

    #[test]
    fn compaction_keeps_live_deadlines_in_order() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let n = MIN_COMPACT as u64 * 3;
        for i in 0..n {
            timers.push(
                t0 + Duration::from_millis(i),
                Timer::DialDeadline(AttemptId(i)),
            );
            if timers.compaction_due() {
                // Every tenth attempt is still dialing.
                timers.compact(|t| matches!(t, Timer::DialDeadline(a) if a.0 % 10 == 0));
            }
        }
        assert!(
            timers.dial.entries.len() < MIN_COMPACT + 10,
            "stale entries were dropped"
        );
        let left: Vec<_> = std::iter::from_fn(|| timers.pop()).collect();
        assert!(left.windows(2).all(|w| w[0].0 <= w[1].0));
        let live: Vec<u64> = (0..n).filter(|i| i % 10 == 0).collect();
        let kept: Vec<u64> = left
            .iter()
            .filter_map(|(_, t)| match t {
                Timer::DialDeadline(a) if a.0 % 10 == 0 => Some(a.0),
                _ => None,
            })
            .collect();
        assert_eq!(kept, live, "no live deadline is lost");
    }

    /// Pops interleaved with pushes come out in (instant, insertion) order,
    /// whatever the kind, including instants before the first one pushed
    /// and instants too far away for the compact heap.
    #[test]
    fn heap_matches_reference_order() {
        let t0 = Instant::now() + Duration::from_secs(1_000);
        let mut state = 0x1234_5678_u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 33
        };
        let far = Duration::from_secs(300 * 365 * 24 * 3600);
        let mut timers = Timers::default();
        let mut reference: Vec<(Instant, u64, Timer)> = Vec::new();
        let mut seq = 0;
        for round in 0..20_000_u64 {
            if next() % 3 == 0 {
                // Earliest (instant, seq) first.
                let expected = reference
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, (at, seq, _))| (*at, *seq))
                    .map(|(i, _)| i);
                let got = timers.pop();
                match expected {
                    Some(i) => {
                        let (at, _, timer) = reference.swap_remove(i);
                        assert_eq!(got, Some((at, timer)), "round {round}");
                    }
                    None => assert_eq!(got, None),
                }
                continue;
            }
            let at = match next() % 50 {
                0 => t0 + far,
                1 => t0
                    .checked_sub(Duration::from_millis(next() % 500))
                    .unwrap_or(t0),
                // Few distinct instants: many ties.
                n => t0 + Duration::from_millis(n * 7 % 13 + next() % 3),
            };
            let payload = next();
            let timer = match next() % 5 {
                0 => Timer::DialDeadline(AttemptId(payload)),
                1 => Timer::CloseDeadline(AttemptId(payload << 20)),
                #[allow(clippy::cast_possible_truncation)]
                2 => Timer::Retry {
                    server: ServerId(payload as u32),
                    generation: u32::MAX - payload as u32,
                },
                #[allow(clippy::cast_possible_truncation)]
                3 => Timer::ProxyProbe {
                    generation: payload as u32,
                },
                _ => Timer::OperationDeadline(OperationId(u64::MAX - payload)),
            };
            seq += 1;
            timers.push(at, timer);
            reference.push((at, seq, timer));
        }
        assert!(!timers.far.is_empty(), "the far heap was exercised");
        reference.sort_by_key(|(at, seq, _)| (*at, *seq));
        let rest: Vec<_> = std::iter::from_fn(|| timers.pop()).collect();
        let expected: Vec<_> = reference.iter().map(|(at, _, t)| (*at, *t)).collect();
        assert_eq!(rest, expected);
    }
}
