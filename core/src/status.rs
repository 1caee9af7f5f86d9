//! A per-server snapshot for status displays and health checks.

use std::sync::Arc;
use std::time::Instant;

use crate::addr::ServerAddr;
use crate::failure::DialFailure;
use crate::output::ServerId;

/// Where a server stands.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerState {
    /// Not connected and nothing scheduled (never dialed, or no retry wanted).
    Idle,
    /// A dial is in flight.
    Dialing,
    /// Connected and registered.
    Connected,
    /// A close is in flight.
    Closing,
    /// A retry is scheduled at `next_retry_at`.
    WaitingRetry,
    /// Waiting for the proxy to come back.
    WaitingForProxy,
    /// Maintenance gave up after `max_retries` failures.
    GaveUp,
}

/// A snapshot of one server.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct ServerStatus {
    /// The server.
    pub server: ServerId,
    /// Its address.
    pub addr: Arc<ServerAddr>,
    /// Where it stands.
    pub state: ServerState,
    /// Dials started so far.
    pub attempts: u64,
    /// Failed dials since it was last connected.
    pub consecutive_failures: u32,
    /// Why the last dial failed, if one did.
    pub last_failure: Option<DialFailure>,
    /// When the current connection was made.
    pub connected_since: Option<Instant>,
    /// When the next dial is due.
    pub next_retry_at: Option<Instant>,
}
