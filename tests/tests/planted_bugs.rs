//! The simulation has teeth: each bug planted in the core (compiled in only
//! with `--cfg dirpool_planted_bugs`, which `scripts/test` sets for this test
//! alone) is caught within 1,000 seeds.
#![cfg(dirpool_planted_bugs)]

use dirpool_core::planted::{Bug, plant};
use dirpool_core_kit::{Choices, check_pool};
use dirpool_tests::sim::{liveness, world};

/// The planted bug is process-wide: the tests of this binary take turns.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn every_planted_bug_is_caught_within_1000_seeds() {
    let _turn = one_at_a_time();
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

#[test]
fn the_core_model_checker_catches_the_core_bugs_within_1000_seeds() {
    let _turn = one_at_a_time();
    // The core's own model checker (core/tests/random_ops.rs) on the bugs
    // planted in PoolState, old behaviours of issue 14 included.
    for bug in [
        Bug::RegisterLateSuccess,
        Bug::DialInFlightAgain,
        Bug::ForgetToAbortDials,
        Bug::MiscountLostLink,
        Bug::NoKeepalive,
        Bug::NoRedialAfterClose,
    ] {
        plant(Some(bug));
        let caught = (0..1_000u64).find_map(|seed| {
            check_pool(&mut Choices::from_seed(seed), false)
                .err()
                .map(|failure| (seed, failure))
        });
        plant(None);
        let (seed, failure) = caught.unwrap_or_else(|| panic!("{bug:?} survived 1,000 seeds"));
        let first_line = failure
            .message
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        #[allow(clippy::print_stderr)]
        {
            eprintln!("{bug:?}: caught by core seed {seed}: {first_line}");
        }
    }
}

#[test]
fn the_liveness_simulation_catches_the_old_link_within_1000_seeds() {
    let _turn = one_at_a_time();
    // Issue 14's defects, each planted back as it was: the long-lived-link
    // world (tests/src/sim/liveness.rs) must catch every one.
    for bug in [
        Bug::OldPingNumber,
        Bug::NoKeepalive,
        Bug::ReaderParksWhenFull,
        Bug::UnboundedInbound,
        Bug::HooksWithoutDeadline,
        Bug::NoProxyTimeout,
        Bug::NoRedialAfterClose,
    ] {
        plant(Some(bug));
        let caught = (0..1_000).find_map(|seed| liveness::run(seed).err());
        plant(None);
        let failure = caught.unwrap_or_else(|| panic!("{bug:?} survived 1,000 liveness seeds"));
        let first_line = failure
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        #[allow(clippy::print_stderr)]
        {
            eprintln!("{bug:?}: {first_line}");
        }
    }
}
