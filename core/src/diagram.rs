//! The state diagram of one server: every change of
//! [`ServerState`] the pool can make, with what causes it.
//!
//! ARCHITECTURE.md draws the same table; a test holds the two together, and
//! the model checker (in dirpool's test kit, through feature `test-kit`) checks every change of state it
//! sees against [`EDGES`]. The pool's internal states map one to one onto
//! [`ServerState`] (`WaitingRetry` is "backing off until T").

use crate::status::ServerState;

/// One edge of the diagram: `from` becomes `to` when `on` happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// The state left.
    pub from: ServerState,
    /// The state entered.
    pub to: ServerState,
    /// What causes it.
    pub on: &'static str,
}

const fn edge(from: ServerState, to: ServerState, on: &'static str) -> Edge {
    Edge { from, to, on }
}

use ServerState::{Closing, Connected, Dialing, GaveUp, Idle, WaitingForProxy, WaitingRetry};

/// Every change of state a server can make. A redial passes through
/// `Idle` (the retry or proxy wait ends, then the dial starts); a failed
/// dial or a lost link comes to rest in `Idle` or `GaveUp` before a redial
/// is scheduled.
pub const EDGES: &[Edge] = &[
    edge(Idle, Dialing, "a command or maintenance dials"),
    edge(Idle, WaitingRetry, "a redial is scheduled on the backoff"),
    edge(Idle, WaitingForProxy, "a redial waits for the proxy"),
    edge(GaveUp, Dialing, "a command dials"),
    edge(GaveUp, Idle, "maintenance restarts"),
    edge(GaveUp, WaitingRetry, "a retry command schedules a redial"),
    edge(
        GaveUp,
        WaitingForProxy,
        "a retry command's redial waits for the proxy",
    ),
    edge(WaitingRetry, Dialing, "a command dials"),
    edge(
        WaitingRetry,
        Idle,
        "the backoff ends, or nothing wants the redial any more",
    ),
    edge(
        WaitingRetry,
        GaveUp,
        "nothing wants the redial any more, budget spent",
    ),
    edge(WaitingForProxy, Dialing, "a command dials"),
    edge(
        WaitingForProxy,
        Idle,
        "the proxy's turn comes, or nothing wants the redial",
    ),
    edge(
        WaitingForProxy,
        GaveUp,
        "nothing wants the redial any more, budget spent",
    ),
    edge(Dialing, Connected, "the dial succeeded"),
    edge(Dialing, Idle, "the dial failed, timed out or was aborted"),
    edge(
        Dialing,
        GaveUp,
        "the dial failed and maintenance's budget is spent",
    ),
    edge(
        Connected,
        Idle,
        "the link was lost (silent, closed by the peer, ...)",
    ),
    edge(Connected, Closing, "close_all"),
    edge(Closing, Idle, "the close finished or timed out"),
];

/// Whether `from` → `to` is an edge of the diagram.
pub fn is_edge(from: ServerState, to: ServerState) -> bool {
    EDGES.iter().any(|e| e.from == from && e.to == to)
}
