//! The machine's timers: one min-heap, entries invalidated lazily.
//!
//! Cancelling a timer would mean finding it in the heap; instead every entry
//! names what it is for, and the machine checks on firing (and in
//! `poll_timeout`) whether that is still current. Equal instants fire in the
//! order they were set, so runs are deterministic.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
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

#[derive(Debug)]
struct Entry {
    at: Instant,
    seq: u64,
    timer: Timer,
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
        other.at.cmp(&self.at).then(other.seq.cmp(&self.seq))
    }
}

#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Entry>,
    seq: u64,
}

impl Timers {
    pub(crate) fn push(&mut self, at: Instant, timer: Timer) {
        self.seq += 1;
        self.heap.push(Entry {
            at,
            seq: self.seq,
            timer,
        });
    }

    pub(crate) fn peek(&self) -> Option<(Instant, Timer)> {
        self.heap.peek().map(|e| (e.at, e.timer))
    }

    pub(crate) fn pop(&mut self) -> Option<(Instant, Timer)> {
        self.heap.pop().map(|e| (e.at, e.timer))
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
}
