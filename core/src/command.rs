//! The machine's vocabulary: what a user asks ([`Command`]) and what the
//! driver reports ([`Input`]), each handed to
//! [`PoolState::handle_command`](crate::PoolState::handle_command) or
//! [`PoolState::handle_input`](crate::PoolState::handle_input) with the
//! current time. Answers come out as [`Output`](crate::Output)s.

use crate::config::RetryPolicy;
use crate::failure::{CloseFailure, DialDetail, DialFailure, LinkLoss};
use crate::output::AttemptId;

/// Something the user asks of the pool.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command {
    /// Dial every server that is neither connected nor being dialed, all at
    /// once; the operation finishes when every attempt it started or joined
    /// has a result. Its report's `connected` is the original's return
    /// value.
    ConnectAllParallel,
    /// Like [`ConnectAllParallel`](Self::ConnectAllParallel); its report's
    /// `newly_connected` is the original's return value.
    ReconnectDisconnected,
    /// Dial every disconnected server at once and redial each failed one on
    /// the policy's backoff, until one server is connected (finishes at
    /// once) or the deadline (`now + policy.timeout`) passes (finishes with
    /// 0 exactly then). Dials still in flight go on and may connect later.
    /// A policy out of range is refused with a
    /// [`ConfigError`](crate::ConfigError) and nothing starts.
    ConnectAllWithRetry(RetryPolicy),
    /// Close every connection, abort every dial in flight (a success that
    /// arrives later is closed, never registered), stop maintenance and end
    /// the other operations. Finishes when every close has finished or
    /// timed out; each connected server gets one
    /// [`Notification::Disconnected`](crate::Notification::Disconnected),
    /// whether its close succeeded or not.
    CloseAll,
    /// Start (or restart) background maintenance: every server that is lost
    /// or not connected is redialed on its own backoff. A restart forgets
    /// earlier give-ups. Servers with nothing scheduled are dialed now if
    /// their last dial did not fail, else after their backoff (so a server
    /// that failed a moment ago is not hit again at once). Starts no
    /// operation.
    StartMaintenance,
    /// Stop background maintenance. Dials in flight go on; nothing new is
    /// scheduled unless a `ConnectAllWithRetry` is running. Starts no
    /// operation.
    StopMaintenance,
}

/// A result the driver reports about an attempt or its connection.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The dial `attempt` ended: connected and handshaken, or failed with
    /// its failure class.
    DialFinished {
        /// The attempt, as the [`DialRequest`](crate::DialRequest) named it.
        attempt: AttemptId,
        /// `Ok` once connected and handshaken.
        result: Result<(), DialFailure>,
        /// The driver's own error for a failure, handed back untouched in
        /// the [`Notification::DialFailed`](crate::Notification::DialFailed)
        /// it causes (`None`: nothing to hand back; ignored on success and
        /// for a dial the machine already gave up on).
        detail: Option<DialDetail>,
    },
    /// The connection made by `attempt` is gone. A loss reported while the
    /// connection is being closed is ignored (the close's result follows).
    LinkLost {
        /// The attempt whose connection ended.
        attempt: AttemptId,
        /// Why.
        loss: LinkLoss,
    },
    /// The connection showed a sign of life (a line arrived). Cheap: report
    /// it as often as the driver likes. It also settles a probe that is out.
    /// Ignored for a link being closed.
    LinkActive(AttemptId),
    /// The answer to the probe on this connection arrived: a sign of life,
    /// and [`Notification::ProbeAnswered`](crate::Notification::ProbeAnswered)
    /// with the round trip if a probe was out.
    ProbeAnswered(AttemptId),
    /// This connection cannot be probed (its peer answers no probe): from
    /// now on it is watched only for its end, never declared lost for
    /// silence.
    ProbeUnsupported(AttemptId),
    /// The close of this connection finished, well or not.
    CloseFinished {
        /// The attempt whose connection was closed.
        attempt: AttemptId,
        /// How the close went.
        result: Result<(), CloseFailure>,
    },
    /// The route to Tor reports its own state (an in-process Tor client's
    /// bootstrap events); a SOCKS proxy, which reports nothing, never
    /// sends it. Pool-wide, about no attempt. Report each change; a
    /// repeat changes nothing.
    ProxyReported(ProxyReport),
}

impl Input {
    /// The attempt the input is about, if it is about one
    /// ([`Input::ProxyReported`] is pool-wide).
    pub fn attempt(&self) -> Option<AttemptId> {
        match *self {
            Input::DialFinished { attempt, .. }
            | Input::LinkLost { attempt, .. }
            | Input::LinkActive(attempt)
            | Input::ProbeAnswered(attempt)
            | Input::ProbeUnsupported(attempt)
            | Input::CloseFinished { attempt, .. } => Some(attempt),
            Input::ProxyReported(_) => None,
        }
    }
}

/// What a route to Tor that knows its own state says of it: one
/// pool-wide fact, never a directory's.
///
/// A report wins over what dial results suggest. While the latest report
/// is [`Bootstrapping`](Self::Bootstrapping) or [`Blocked`](Self::Blocked)
/// the proxy counts as down (one
/// [`Notification::ProxyUnreachable`](crate::Notification::ProxyUnreachable)):
/// redials wait for it and no probe dial goes out, whatever dials in flight
/// bring back; only a user's command still dials (the route bounds how
/// long such a dial waits for Tor). [`Ready`](Self::Ready) brings it back
/// at once: the servers that waited are dialed. Without reports (a SOCKS
/// proxy) the pool infers the proxy's state from dial results, and after a
/// `Ready` it still does: a dial that fails at the proxy marks it down.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyReport {
    /// Still bootstrapping: not ready for traffic.
    Bootstrapping,
    /// Ready for traffic: a new stream can start at once.
    Ready,
    /// Stuck (offline, clock skew, no usable directory), by its own
    /// account.
    Blocked,
}

impl ProxyReport {
    /// Not ready for traffic.
    pub fn holds_dials(self) -> bool {
        self != ProxyReport::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::LinkLoss;

    #[test]
    fn an_input_names_its_attempt_and_a_report_none() {
        let attempt = AttemptId(41);
        let about_it = [
            Input::DialFinished {
                attempt,
                result: Ok(()),
                detail: None,
            },
            Input::LinkLost {
                attempt,
                loss: LinkLoss::ClosedByPeer,
            },
            Input::LinkActive(attempt),
            Input::ProbeAnswered(attempt),
            Input::ProbeUnsupported(attempt),
            Input::CloseFinished {
                attempt,
                result: Ok(()),
            },
        ];
        for input in about_it {
            assert_eq!(input.attempt(), Some(attempt), "{input:?}");
        }
        for report in [
            ProxyReport::Bootstrapping,
            ProxyReport::Ready,
            ProxyReport::Blocked,
        ] {
            assert_eq!(Input::ProxyReported(report).attempt(), None);
            assert_eq!(report.holds_dials(), report != ProxyReport::Ready);
        }
    }
}
