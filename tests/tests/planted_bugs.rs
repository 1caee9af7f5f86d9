//! The simulation has teeth: each bug planted in the core (compiled in only
//! with `--cfg dirpool_planted_bugs`, which `scripts/test` sets for this test
//! alone) is caught within 1,000 seeds.
#![cfg(dirpool_planted_bugs)]

use dirpool_core::planted::{Bug, plant};
use dirpool_tests::sim::world;

#[test]
fn every_planted_bug_is_caught_within_1000_seeds() {
    // One test, one bug at a time: the planted bug is process-wide.
    // (RegisterLateSuccess is not in the list: the driver never lets a late
    // success reach the core on the simulation's single-threaded executor;
    // core/tests/random_ops.rs covers that path.)
    for bug in [
        Bug::DialInFlightAgain,
        Bug::ForgetToAbortDials,
        Bug::MiscountLostLink,
    ] {
        plant(Some(bug));
        let caught = (0..1_000).find_map(|seed| world::run(seed).err());
        plant(None);
        let failure = caught.unwrap_or_else(|| panic!("{bug:?} survived 1,000 seeds"));
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "{bug:?}: caught by seed {}: {}",
                failure.seed, failure.message
            );
        }
    }
}
