//! The machine's time: nanoseconds since the first `now` it was given.
//!
//! Inside the machine every instant is a [`Tick`], a `u64`: half the size
//! of an `Instant`, compared and added without the carries of a
//! seconds-and-nanoseconds pair, and convertible back exactly (an `Instant`
//! has nanosecond resolution on every platform Rust supports). Instants
//! cross the boundary only where the machine takes `now` and where it hands
//! a deadline or a time of day out.

use std::ops::Add;
use std::time::{Duration, Instant};

/// An instant, as nanoseconds since the machine's epoch (about 584 years of
/// range; later saturates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Tick(u64);

impl Tick {
    /// The epoch.
    pub(crate) const ZERO: Tick = Tick(0);

    /// `at` as a tick of a clock started at `epoch` (zero before it).
    fn since(epoch: Instant, at: Instant) -> Tick {
        Tick(u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX))
    }
    /// How long after `earlier` this is (zero if it is not after).
    pub(crate) fn saturating_since(self, earlier: Tick) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Tick {
    type Output = Tick;

    fn add(self, duration: Duration) -> Tick {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Tick(self.0.saturating_add(nanos))
    }
}

/// The epoch and the latest `now`: time only moves forward.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    /// The first `now`, and the latest (as given and as a tick).
    epoch_latest: Option<(Instant, Instant)>,
    now: Tick,
}

impl Clock {
    /// Takes `now` from the caller: the epoch on the first call; an earlier
    /// `now` than the latest counts as the latest.
    pub(crate) fn advance(&mut self, now: Instant) -> Tick {
        match &mut self.epoch_latest {
            // Most inputs come at the instant of the one before: one
            // comparison, no conversion.
            Some((_, latest)) if now <= *latest => {}
            Some((epoch, latest)) => {
                *latest = now;
                self.now = Tick::since(*epoch, now);
            }
            None => self.epoch_latest = Some((now, now)),
        }
        self.now
    }

    /// `tick` as an instant.
    ///
    /// # Panics
    /// Before the first `now`, which cannot happen: every tick the machine
    /// holds, and so every deadline, status time or notification it hands
    /// out, comes from an input given a `now` (the fuzz targets drive every
    /// query on a fresh machine too).
    pub(crate) fn instant(&self, tick: Tick) -> Instant {
        let (epoch, _) = self
            .epoch_latest
            .expect("no tick exists before the first now");
        epoch + Duration::from_nanos(tick.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_convert_back_exactly_and_never_go_back() {
        let t0 = Instant::now();
        let mut clock = Clock::default();
        assert_eq!(clock.advance(t0), Tick(0));
        let later = t0 + Duration::from_nanos(1_234_567_891);
        let tick = clock.advance(later);
        assert_eq!(tick, Tick(1_234_567_891));
        assert_eq!(clock.instant(tick), later);
        assert_eq!(
            clock.advance(t0),
            tick,
            "an earlier now counts as the latest"
        );
        assert_eq!(Tick::since(t0, t0 - Duration::from_secs(1)), Tick(0));
        assert_eq!(
            tick.saturating_since(Tick(0)),
            Duration::from_nanos(1_234_567_891)
        );
        assert_eq!(Tick(0).saturating_since(tick), Duration::ZERO);
        assert_eq!(Tick(u64::MAX - 1) + Duration::from_secs(1), Tick(u64::MAX));
    }
}
