//! The one source of every decision a checked run makes.
//!
//! A run is a function of a byte string: each decision (which input comes
//! next, which attempt it names, how far the clock moves) takes a few bytes
//! through [`arbitrary::Unstructured`]. A *seed* is only a short name for a
//! long byte string: [`Choices::from_seed`] produces the bytes with the
//! core's SplitMix64 as they are needed. So a seeded run and a fuzzer's input
//! are the same kind of thing, and [`Choices::consumed`] turns any seeded run
//! into the fuzz input that replays it exactly.

use arbitrary::{Arbitrary, Unstructured};

use dirpool_core::JitterRng;

/// Mixed into a seed so that seed `n` here and jitter seed `n` in a pool
/// draw different streams.
const SEED_SALT: u64 = 0x5DEE_CE66_D1CE_4E5B;

/// The most bytes one decision takes (a `u64`).
const WIDEST: usize = 8;

/// Decisions drawn from bytes: a fuzzer's input, or a seed's endless stream.
#[derive(Debug, Clone)]
pub struct Choices {
    bytes: Vec<u8>,
    pos: usize,
    /// Produces more bytes on demand; `None` for a fixed input.
    more: Option<JitterRng>,
}

impl Choices {
    /// The endless stream named by `seed`.
    pub fn from_seed(seed: u64) -> Self {
        Self {
            bytes: Vec::new(),
            pos: 0,
            more: Some(JitterRng::new(seed ^ SEED_SALT)),
        }
    }

    /// A fixed input; once it is used up every decision takes its first
    /// option (zero), as `arbitrary` does.
    pub fn from_bytes(data: &[u8]) -> Self {
        Self {
            bytes: data.to_vec(),
            pos: 0,
            more: None,
        }
    }

    /// The bytes decided on so far: as a fixed input they replay this run.
    pub fn consumed(&self) -> &[u8] {
        &self.bytes[..self.pos]
    }

    /// A fixed input with nothing left (never true for a seed).
    pub fn is_exhausted(&self) -> bool {
        self.more.is_none() && self.pos >= self.bytes.len()
    }

    /// Runs one `arbitrary` decision on the remaining bytes.
    pub fn decide<T>(&mut self, decide: impl FnOnce(&mut Unstructured<'_>) -> T) -> T {
        if let Some(rng) = &mut self.more {
            while self.bytes.len() < self.pos + WIDEST {
                self.bytes.extend_from_slice(&rng.next_u64().to_le_bytes());
            }
        }
        let rest = &self.bytes[self.pos..];
        let mut u = Unstructured::new(rest);
        let value = decide(&mut u);
        self.pos += rest.len() - u.len();
        value
    }

    /// A value of `T` decoded by its [`Arbitrary`] implementation.
    ///
    /// # Errors
    /// `T`'s decoding error (not for the alphabet's types, which take
    /// their first option when the bytes run out).
    #[allow(
        clippy::redundant_closure,
        reason = "the closure is generic over the lifetime of the bytes; the path is not"
    )]
    pub fn arbitrary<T: for<'a> Arbitrary<'a>>(&mut self) -> arbitrary::Result<T> {
        self.decide(|u| T::arbitrary(u))
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n <= 1 {
            return 0;
        }
        self.decide(|u| u.int_in_range(0..=n - 1).unwrap_or(0))
    }

    /// Any `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.decide(|u| u.arbitrary::<u64>().unwrap_or(0))
    }

    /// An index into a collection of `len` items (0 when empty).
    pub fn index(&mut self, len: usize) -> usize {
        let n = u64::try_from(len).unwrap_or(u64::MAX);
        usize::try_from(self.below(n)).unwrap_or(0)
    }

    /// True with the given probability in percent; false once a fixed
    /// input is used up, so that a short input ends in a quiet run (no
    /// more commands, no rare branches) rather than in a loop of them.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) >= 100u64.saturating_sub(percent)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whole milliseconds in `lo..=hi`.
    pub fn millis(&mut self, lo: u64, hi: u64) -> std::time::Duration {
        std::time::Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }

    /// One of `items` (which must not be empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_run_replays_from_the_bytes_it_consumed() {
        let mut seeded = Choices::from_seed(42);
        let drawn: Vec<u64> = (0..200).map(|i| seeded.below(1 + i * 37)).collect();
        let mut fixed = Choices::from_bytes(seeded.consumed());
        let replayed: Vec<u64> = (0..200).map(|i| fixed.below(1 + i * 37)).collect();
        assert_eq!(drawn, replayed);
        assert!(fixed.is_exhausted());
        assert!(!seeded.is_exhausted());
    }

    #[test]
    fn an_exhausted_input_takes_the_first_option() {
        let mut c = Choices::from_bytes(&[]);
        assert_eq!(c.below(10), 0);
        assert_eq!(c.next_u64(), 0);
        assert!(!c.chance(0));
        assert!(!c.chance(99));
        assert!(c.chance(100));
    }

    #[test]
    fn small_ranges_take_one_byte() {
        let mut c = Choices::from_bytes(&[7, 9]);
        assert_eq!(c.below(100), 7);
        assert_eq!(c.consumed(), &[7]);
    }
}
