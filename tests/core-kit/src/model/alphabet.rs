//! The operation alphabet shared by the seeded core simulation
//! (`tests/core-kit/tests/random_ops.rs`) and the `pool_ops` and `pool_model` fuzz targets: what a
//! driver can do next to a [`PoolState`](dirpool_core::PoolState). Its
//! commands come from [`command_from`], which the adapters' simulations
//! (`dirpool-tests`) draw theirs with too.
//!
//! Each step is one of these; its details (which attempt, which failure,
//! how far the clock moves) are drawn from the same [`Choices`](super::Choices)
//! when it is applied, from what is outstanding at that moment, so that a
//! step always names an attempt the run has seen (a current or a stale one).

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};

use dirpool_core::{Command, RetryPolicy};

/// The one chooser of a [`Command`], shared by the fuzz alphabet (here)
/// and the adapters' seeded simulation (`tests/src/sim/liveness.rs`), so
/// that a command added to the core is drawn by both once it is added
/// here. `selector` picks the command (taken modulo 100, weighted so that
/// runs spend their time connected and reconnecting rather than closing);
/// a `ConnectAllWithRetry` gets the default policy with `retry_timeout`.
pub fn command_from(selector: u8, retry_timeout: Duration) -> Command {
    match selector % 100 {
        0..=19 => Command::ConnectAllParallel,
        20..=34 => Command::ReconnectDisconnected,
        35..=54 => Command::ConnectAllWithRetry(RetryPolicy::new(retry_timeout)),
        55..=63 => Command::CloseAll,
        64..=84 => Command::StartMaintenance,
        _ => Command::StopMaintenance,
    }
}

/// The pool's own [`Command`] from one byte, by [`command_from`]; a
/// `ConnectAllWithRetry` carries a placeholder policy (the default with a
/// 60 s timeout) that the model checker replaces with one drawn from the
/// run's [`Choices`](super::Choices) when it applies the step.
fn arbitrary_command(u: &mut Unstructured<'_>) -> arbitrary::Result<Command> {
    Ok(command_from(
        u.int_in_range(0..=99u8)?,
        Duration::from_secs(60),
    ))
}

/// One step of a driver: an input to the machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// The result of an outstanding dial (an aborted one included): success
    /// or a failure.
    DialResult,
    /// The result of an outstanding close: done, failed, or (by never
    /// coming) a close timeout.
    CloseResult,
    /// A registered link, or one being closed, is lost.
    LoseLink,
    /// A registered link shows life, answers its probe, or turns out to
    /// have no probe.
    LinkSignal,
    /// Time passes: a small or large step, a jump to `poll_timeout`, a
    /// `handle_timeout` too early or in the past, or a clock that moves
    /// before the machine is told.
    Time,
    /// A command.
    Command(Command),
    /// The route to Tor reports its own state (ready, bootstrapping or
    /// blocked), as an in-process Tor client does; in a run whose route
    /// reports nothing (a SOCKS proxy), a time step instead.
    ProxyReport,
    /// An input the machine must refuse without changing anything: a stale
    /// attempt id, a result that does not fit the attempt's state, or an
    /// invalid retry policy.
    WrongInput,
}

impl<'a> Arbitrary<'a> for Step {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0..=99u8)? {
            0..=29 => Self::DialResult,
            30..=39 => Self::CloseResult,
            40..=44 => Self::LoseLink,
            45..=51 => Self::LinkSignal,
            52..=69 | 95..=96 => Self::Time,
            70..=89 => Self::Command(arbitrary_command(u)?),
            97..=99 => Self::ProxyReport,
            _ => Self::WrongInput,
        })
    }

    fn size_hint(_depth: usize) -> (usize, Option<usize>) {
        (1, Some(2))
    }
}
