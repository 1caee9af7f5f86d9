//! The queue of outputs waiting for [`PoolState::poll_output`]: a
//! `VecDeque` that gives back the room a burst left behind.
//!
//! Starting maintenance on 100,000 servers queues 100,000 dials at once;
//! kept, that room would cost 80 bytes per server for the life of the pool.
//! Shrinking at every emptying would reallocate on every burst instead, so
//! the queue looks back over a window of emptyings: when the largest burst
//! in it used under a sixteenth of the room, it keeps four times that burst.
//! The window is sixteen emptyings per server (at least 1,024): every server
//! produces at least one output per cycle of its own (dial, probe, close),
//! so a window spans the pool's recurring bursts (100,000 links probed
//! together every keepalive interval) and their room is kept. A steady pool
//! thus settles at a size its bursts fit and allocates nothing, and a
//! pathological one reallocates at most once per window.

use std::collections::VecDeque;

use crate::output::Output;

/// Emptyings per look-back window, per server.
const WINDOW_PER_SERVER: usize = 16;
/// The shortest look-back window.
const WINDOW: usize = 1024;
/// Room always kept.
const FLOOR: usize = 64;

#[derive(Debug)]
pub(crate) struct OutputQueue {
    queue: VecDeque<Output>,
    /// Outputs taken since the queue was last empty: at least the largest
    /// length it reached since then (all that was added has been taken).
    taken: usize,
    /// The largest burst of this window.
    peak: usize,
    emptyings: usize,
    /// Emptyings per window.
    window: usize,
}

impl OutputQueue {
    /// A queue for a pool of `servers` servers.
    pub(crate) fn for_servers(servers: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            taken: 0,
            peak: 0,
            emptyings: 0,
            window: servers.saturating_mul(WINDOW_PER_SERVER).max(WINDOW),
        }
    }

    pub(crate) fn push(&mut self, output: Output) {
        self.queue.push_back(output);
    }

    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Output> {
        let output = self.queue.pop_front();
        if output.is_some() {
            self.taken += 1;
            if self.queue.is_empty() {
                self.peak = self.peak.max(self.taken);
                self.taken = 0;
                self.emptyings += 1;
                if self.emptyings >= self.window {
                    self.end_window();
                }
            }
        }
        output
    }

    #[cold]
    #[inline(never)]
    fn end_window(&mut self) {
        let keep = 4 * self.peak.max(FLOOR);
        if self.queue.capacity() > 4 * keep {
            self.queue.shrink_to(keep);
        }
        self.peak = 0;
        self.emptyings = 0;
    }

    /// The room the queue holds, in outputs.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.queue.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::AttemptId;

    fn burst(queue: &mut OutputQueue, n: usize) {
        for i in 0..n {
            queue.push(Output::Abort(AttemptId(i as u64)));
        }
        for i in 0..n {
            let Some(Output::Abort(id)) = queue.pop() else {
                panic!("output {i} of {n} missing");
            };
            assert_eq!(id, AttemptId(i as u64), "first in, first out");
        }
        assert!(queue.pop().is_none());
    }

    #[test]
    fn a_big_burst_gives_its_room_back_after_a_window() {
        let mut queue = OutputQueue::for_servers(10);
        burst(&mut queue, 100_000);
        assert!(queue.capacity() >= 100_000);
        // The window holding the burst keeps its room; the next gives it back.
        for _ in 0..WINDOW {
            burst(&mut queue, 3);
        }
        assert!(queue.capacity() >= 100_000);
        for _ in 0..WINDOW {
            burst(&mut queue, 3);
        }
        assert!(queue.capacity() >= 4 * FLOOR, "keeps its floor");
        assert!(queue.capacity() < 8 * FLOOR, "{}", queue.capacity());
    }

    /// Room beyond sixteen times the window's largest burst (at least the
    /// floor) is given back, down to four times that burst; room up to it
    /// is kept.
    #[test]
    fn the_room_kept_is_four_bursts_and_more_than_sixteen_is_given_back() {
        let keep = 4 * FLOOR;
        for (room, kept) in [(4 * keep, 4 * keep), (4 * keep + 1, keep)] {
            let mut queue = OutputQueue::for_servers(10);
            queue.queue = VecDeque::with_capacity(room);
            assert_eq!(queue.capacity(), room, "the test needs the exact room");
            for _ in 0..WINDOW {
                burst(&mut queue, 3);
            }
            assert_eq!(queue.capacity(), kept, "room {room}");
        }
    }

    #[test]
    fn a_window_is_sixteen_emptyings_per_server() {
        assert_eq!(OutputQueue::for_servers(10).window, WINDOW);
        assert_eq!(OutputQueue::for_servers(100_000).window, 1_600_000);
    }

    #[test]
    fn steady_bursts_keep_their_room() {
        let mut queue = OutputQueue::for_servers(10);
        burst(&mut queue, 500);
        let room = queue.capacity();
        for _ in 0..3 * WINDOW {
            burst(&mut queue, 500);
            burst(&mut queue, 1);
        }
        assert_eq!(queue.capacity(), room, "a burst that recurs keeps its room");
    }
}
