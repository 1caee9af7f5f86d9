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
//! min-heap. Most dials end long before their deadline, so most deadline
//! entries go stale; [`Timers::compact`] drops the stale ones whenever a
//! queue has doubled since the last time, which bounds the memory at about
//! twice the live deadlines for O(1) amortized work per push.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

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
}

#[derive(Debug, Clone, Copy)]
struct Entry {
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

/// Entries below which a deadline queue is never compacted.
const MIN_COMPACT: usize = 1024;

/// A queue of entries pushed in time order.
#[derive(Debug)]
struct Fifo {
    entries: VecDeque<Entry>,
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
    /// Takes `entry` if it keeps the queue in order.
    fn try_push(&mut self, entry: Entry) -> Result<(), Entry> {
        match self.entries.back() {
            Some(last) if last.at > entry.at => Err(entry),
            _ => {
                self.entries.push_back(entry);
                Ok(())
            }
        }
    }

    fn compact(&mut self, live: &mut impl FnMut(Timer) -> bool) {
        if self.entries.len() < self.limit {
            return;
        }
        self.entries.retain(|e| live(e.timer));
        self.limit = (self.entries.len() * 2).max(MIN_COMPACT);
    }
}

#[derive(Debug, Default)]
pub(crate) struct Timers {
    /// Timers with varying delays, and any deadline that came out of order.
    heap: BinaryHeap<Entry>,
    dial: Fifo,
    close: Fifo,
    seq: u64,
}

/// Where the earliest entry is.
#[derive(Clone, Copy)]
enum Source {
    Heap,
    Dial,
    Close,
}

impl Timers {
    pub(crate) fn push(&mut self, at: Instant, timer: Timer) {
        self.seq += 1;
        let entry = Entry {
            at,
            seq: self.seq,
            timer,
        };
        let queued = match timer {
            Timer::DialDeadline(_) => self.dial.try_push(entry),
            Timer::CloseDeadline(_) => self.close.try_push(entry),
            _ => Err(entry),
        };
        if let Err(entry) = queued {
            self.heap.push(entry);
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

    /// The earliest entry and where it is: the heap's top or a queue's front.
    #[inline]
    fn earliest(&self) -> Option<(Source, Entry)> {
        let mut best = self.heap.peek().map(|e| (Source::Heap, *e));
        for (source, front) in [
            (Source::Dial, self.dial.entries.front()),
            (Source::Close, self.close.entries.front()),
        ] {
            if let Some(entry) = front {
                match best {
                    Some((_, b)) if b.key() <= entry.key() => {}
                    _ => best = Some((source, *entry)),
                }
            }
        }
        best
    }

    pub(crate) fn peek(&self) -> Option<(Instant, Timer)> {
        self.earliest().map(|(_, e)| (e.at, e.timer))
    }

    /// Removes and returns the earliest entry if `keep` refuses it.
    pub(crate) fn pop_unless(
        &mut self,
        keep: impl FnOnce(Instant, Timer) -> bool,
    ) -> Option<(Instant, Timer)> {
        let (source, entry) = self.earliest()?;
        if keep(entry.at, entry.timer) {
            return None;
        }
        match source {
            Source::Heap => self.heap.pop(),
            Source::Dial => self.dial.entries.pop_front(),
            Source::Close => self.close.entries.pop_front(),
        };
        Some((entry.at, entry.timer))
    }

    pub(crate) fn pop(&mut self) -> Option<(Instant, Timer)> {
        self.pop_unless(|_, _| false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
