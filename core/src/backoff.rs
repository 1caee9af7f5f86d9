//! Exponential backoff with seeded jitter.
//!
//! About thirty lines, written here because the crates that do this either
//! let jitter overshoot the maximum, cannot take a seed, or are unmaintained.
//! The order matters: cap the exponent, saturate, apply jitter, then clamp to
//! the maximum, so no delay ever exceeds `max`.

use std::time::Duration;

use crate::errors::ConfigError;

/// The longest duration any policy may use (one year). Keeps `Instant`
/// arithmetic far from overflow.
pub const MAX_POLICY_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// An exponential backoff policy: `initial × factor^step`, at most `max`,
/// optionally spread by ± `jitter` (a fraction of the delay).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Largest delay, jitter included.
    pub max: Duration,
    /// Growth per step; at least 1.0.
    pub factor: f64,
    /// Spread as a fraction of the delay, in `0.0..=1.0`: a delay `d` becomes
    /// uniform in `[d × (1 − jitter), d × (1 + jitter))`, then clamped to `max`.
    pub jitter: f64,
}

impl Backoff {
    /// A policy without jitter.
    pub const fn new(initial: Duration, max: Duration, factor: f64) -> Self {
        Self {
            initial,
            max,
            factor,
            jitter: 0.0,
        }
    }

    /// The same policy with `jitter` (a fraction in `0.0..=1.0`).
    #[must_use]
    pub const fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Checks the policy; `field` names it in the error.
    ///
    /// # Errors
    /// [`ConfigError`] when a delay is zero or too long, `max < initial`, the
    /// factor is below 1 or not finite, or jitter is outside `0.0..=1.0`.
    pub fn validate(&self, field: &'static str) -> Result<(), ConfigError> {
        if self.initial.is_zero() {
            return Err(ConfigError::ZeroDuration { field });
        }
        if self.max > MAX_POLICY_DURATION {
            return Err(ConfigError::DurationTooLong { field });
        }
        if self.max < self.initial {
            return Err(ConfigError::MaxBelowInitial { field });
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(ConfigError::InvalidFactor {
                field,
                factor: self.factor,
            });
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(ConfigError::InvalidJitter {
                field,
                jitter: self.jitter,
            });
        }
        Ok(())
    }

    /// The delay before step `step` (0 = the first retry), without jitter.
    pub fn base_delay(&self, step: u32) -> Duration {
        let exponent = i32::try_from(step).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.factor.powi(exponent);
        // `secs < max` is false for infinity and NaN too: saturate to max.
        if secs < self.max.as_secs_f64() {
            Duration::from_secs_f64(secs)
        } else {
            self.max
        }
    }

    /// The delay before step `step`, with jitter drawn from `rng`.
    pub fn delay(&self, step: u32, rng: &mut JitterRng) -> Duration {
        let base = self.base_delay(step);
        if self.jitter == 0.0 {
            return base;
        }
        let spread = self.jitter * (2.0 * rng.next_unit() - 1.0);
        let secs = base.as_secs_f64() * (1.0 + spread);
        if secs < self.max.as_secs_f64() {
            Duration::from_secs_f64(secs.max(0.0))
        } else {
            self.max
        }
    }

    /// The smallest and largest delay [`delay`](Self::delay) can return for
    /// `step`.
    pub fn bounds(&self, step: u32) -> (Duration, Duration) {
        let base = self.base_delay(step).as_secs_f64();
        let low = Duration::from_secs_f64(base * (1.0 - self.jitter));
        let high = Duration::from_secs_f64(base * (1.0 + self.jitter)).min(self.max);
        (low, high)
    }
}

/// The jitter source: SplitMix64, seeded by the caller so that a run of the
/// machine is a pure function of its inputs.
#[derive(Debug, Clone)]
pub struct JitterRng(u64);

impl JitterRng {
    /// A generator seeded with `seed`.
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_unit(&mut self) -> f64 {
        // 53 random bits: every value exactly representable.
        #[allow(clippy::cast_precision_loss)]
        let bits = (self.next_u64() >> 11) as f64;
        bits / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn exact_sequence_without_jitter() {
        let b = Backoff::new(secs(5), secs(30), 1.5);
        let got: Vec<f64> = (0..7).map(|s| b.base_delay(s).as_secs_f64()).collect();
        assert_eq!(got, [5.0, 7.5, 11.25, 16.875, 25.3125, 30.0, 30.0]);
        let mut rng = JitterRng::new(1);
        assert_eq!(b.delay(3, &mut rng), b.base_delay(3));
    }

    #[test]
    fn huge_steps_saturate() {
        let b = Backoff::new(Duration::from_nanos(1), secs(30), 10.0);
        assert_eq!(b.base_delay(u32::MAX), secs(30));
        let slow = Backoff::new(secs(1), secs(3600), 1.000_001);
        assert!(slow.base_delay(1_000) < secs(2));
    }

    #[test]
    fn jitter_stays_within_bounds_and_max() {
        let b = Backoff::new(secs(5), secs(30), 1.5).with_jitter(0.5);
        let mut rng = JitterRng::new(42);
        for step in 0..12 {
            let (low, high) = b.bounds(step);
            assert!(high <= secs(30));
            for _ in 0..1_000 {
                let d = b.delay(step, &mut rng);
                assert!(
                    d >= low && d <= high,
                    "step {step}: {d:?} not in {low:?}..={high:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_is_seeded() {
        let b = Backoff::new(secs(5), secs(30), 1.5).with_jitter(0.3);
        let run = |seed| {
            let mut rng = JitterRng::new(seed);
            (0..20).map(|s| b.delay(s, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn validation() {
        let ok = Backoff::new(secs(5), secs(30), 1.5);
        assert!(ok.validate("x").is_ok());
        let cases = [
            Backoff::new(secs(0), secs(30), 1.5),
            Backoff::new(secs(5), secs(4), 1.5),
            Backoff::new(secs(5), secs(30), 0.9),
            Backoff::new(secs(5), secs(30), f64::NAN),
            Backoff::new(secs(5), secs(30), f64::INFINITY),
            Backoff::new(secs(5), secs(30), 1.5).with_jitter(1.5),
            Backoff::new(secs(5), secs(30), 1.5).with_jitter(-0.1),
            Backoff::new(secs(5), MAX_POLICY_DURATION + secs(1), 1.5),
        ];
        for bad in cases {
            assert!(bad.validate("x").is_err(), "{bad:?} accepted");
        }
    }
}
