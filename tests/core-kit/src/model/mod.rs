//! The pool's model checker: a driver played against a `PoolState`, every
//! decision drawn from [`Choices`], the invariants of `ARCHITECTURE.md`
//! checked after every step ([`check_pool`], deep; [`check_steps`], a short
//! run with the cheap invariants only).

use std::collections::{BTreeMap, BTreeSet};

use dirpool_core::ServerState;
use dirpool_core::test_kit::TransitionWatch;

/// Fails the current run with a message (the callers add where it broke).
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

/// Fails the current run unconditionally.
macro_rules! bail {
    ($($arg:tt)+) => {
        return Err(format!($($arg)+))
    };
}

mod alphabet;
mod checker;
mod choices;
mod quick;

pub use alphabet::{Step, command_from};
pub use choices::Choices;
pub use quick::{MAX_STEPS, QuickCounts, check_steps};

/// What a checked run of the pool that kept every invariant saw.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How often each interesting thing happened ("connections",
    /// "stray closes", …), to show the runs reach them.
    pub counts: BTreeMap<&'static str, u64>,
    /// Every step, when asked for.
    pub trace: Option<String>,
    /// Every distinct change of server state the run made (each one an
    /// edge of [`dirpool_core::diagram::EDGES`], or the run fails).
    pub transitions: BTreeSet<(ServerState, ServerState)>,
}

/// A checked run that broke an invariant, or panicked.
#[derive(Debug, Clone)]
pub struct RunFailure {
    /// What broke, then the last steps of the run.
    pub message: String,
}

impl std::fmt::Display for RunFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RunFailure {}

/// Plays one run of the pool's model checker, drawing every decision from
/// `choices` (see [`Step`] for the alphabet), and checks the invariants of
/// `ARCHITECTURE.md` after every step. Afterwards `choices.consumed()` is the
/// fuzz input that replays the run.
///
/// # Errors
/// [`RunFailure`] naming the broken invariant, with the last steps.
pub fn check_pool(choices: &mut Choices, full_trace: bool) -> Result<RunReport, RunFailure> {
    let watch = TransitionWatch::start();
    let (stats, trace) =
        checker::check(choices, full_trace).map_err(|message| RunFailure { message })?;
    let transitions = watch.seen();
    if let Some((from, to)) = transitions
        .iter()
        .find(|(from, to)| !dirpool_core::diagram::is_edge(*from, *to))
    {
        return Err(RunFailure {
            message: format!(
                "a server went from {from:?} to {to:?}, which is not an edge of the state diagram"
            ),
        });
    }
    Ok(RunReport {
        counts: stats.0,
        trace: trace.full,
        transitions,
    })
}
