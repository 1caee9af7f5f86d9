//! Deliberate bugs, compiled only with `--cfg dirpool_planted_bugs`, so
//! the simulation can show it catches realistic mistakes. A normal build
//! (any features) contains none of this.

use std::sync::atomic::{AtomicU8, Ordering};

/// A realistic mistake the machine could make.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// A dial that succeeds after `close_all` (or after its timeout) is
    /// registered instead of closed. (The driver's `Abortable` keeps such
    /// successes from reaching the core on a single-threaded executor, so
    /// only the core's own tests can catch this one.)
    RegisterLateSuccess,
    /// A pass dials servers that are already being dialed.
    DialInFlightAgain,
    /// `close_all` forgets to abort the dials in flight.
    ForgetToAbortDials,
    /// A lost link is not subtracted from the connected count.
    MiscountLostLink,
}

static PLANTED: AtomicU8 = AtomicU8::new(0);

/// Plants `bug` (or none) for the whole process.
pub fn plant(bug: Option<Bug>) {
    let code = match bug {
        None => 0,
        Some(Bug::RegisterLateSuccess) => 1,
        Some(Bug::ForgetToAbortDials) => 2,
        Some(Bug::MiscountLostLink) => 3,
        Some(Bug::DialInFlightAgain) => 4,
    };
    PLANTED.store(code, Ordering::SeqCst);
}

pub(crate) fn active(bug: Bug) -> bool {
    let code = PLANTED.load(Ordering::SeqCst);
    matches!(
        (code, bug),
        (1, Bug::RegisterLateSuccess)
            | (2, Bug::ForgetToAbortDials)
            | (3, Bug::MiscountLostLink)
            | (4, Bug::DialInFlightAgain)
    )
}
