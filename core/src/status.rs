//! Per-server snapshots and the pool's health, for status displays, health
//! checks and metrics.
//!
//! Everything here is plain data. The machine keeps instants (when a dial
//! failed, when a link last showed life); [`PoolState::health`](crate::PoolState::health)
//! turns them into ages against the `now` it is given, so no clock is read
//! here either.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addr::ServerAddr;
use crate::failure::{DialFailure, LinkLoss};
use crate::output::ServerId;

/// Where a server stands.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

/// The class of a server's latest error: a dial that failed or a link that
/// was lost, as the core classifies them.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerError {
    /// A dial failed.
    Dial(DialFailure),
    /// An established link was lost without the pool asking.
    Link(LinkLoss),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dial(failure) => write!(f, "dial failed: {failure}"),
            Self::Link(loss) => write!(f, "link lost: {loss}"),
        }
    }
}

/// A server's latest error and when it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LastError {
    /// What it was.
    pub error: ServerError,
    /// When the machine was told (the `now` of that input).
    pub at: Instant,
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
    /// The latest failed dial or lost link, whichever came last, and when.
    pub last_error: Option<LastError>,
    /// When the current connection was made.
    pub connected_since: Option<Instant>,
    /// The current connection's last sign of life (a line read, a probe
    /// answered; at first, the moment it connected).
    pub last_active: Option<Instant>,
    /// The round trip of the current connection's last answered probe.
    /// Cleared on each new connection: a new link is a new Tor circuit.
    pub last_probe_rtt: Option<Duration>,
    /// When the next dial is due.
    pub next_retry_at: Option<Instant>,
}

/// The proxy as the pool knows it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyState {
    /// No proxy failure since the last dial that got through (or none yet).
    Reachable,
    /// The last dial failed on the proxy itself (refused, silent, broken,
    /// no username/password); servers wait for it and one probe dial at a
    /// time finds it back.
    Unreachable,
    /// Tor reports it is still bootstrapping
    /// ([`ProxyReport::Bootstrapping`](crate::ProxyReport::Bootstrapping)):
    /// servers wait for it to report ready; no probe dial goes out.
    Bootstrapping,
    /// Tor reports it is stuck
    /// ([`ProxyReport::Blocked`](crate::ProxyReport::Blocked)): servers
    /// wait for it to report ready; no probe dial goes out.
    Blocked,
}

/// How many servers stand where. Every valid server is in exactly one
/// count, so the counts add up to the number of servers.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LinkCounts {
    /// Connected ([`ServerState::Connected`]).
    pub up: usize,
    /// A dial in flight ([`ServerState::Dialing`]).
    pub connecting: usize,
    /// Waiting to be redialed: on its backoff
    /// ([`ServerState::WaitingRetry`]) or for the proxy
    /// ([`ServerState::WaitingForProxy`]).
    pub backing_off: usize,
    /// Maintenance gave up on it ([`ServerState::GaveUp`]).
    pub given_up: usize,
    /// Not connected and nothing wants it dialed ([`ServerState::Idle`]).
    pub idle: usize,
    /// Its link is being closed ([`ServerState::Closing`]).
    pub closing: usize,
}

impl LinkCounts {
    /// Counts one more server in `state`.
    pub fn add(&mut self, state: ServerState) {
        *self.slot(state) += 1;
    }

    /// Counts one server fewer in `state` (never below zero).
    pub fn remove(&mut self, state: ServerState) {
        let slot = self.slot(state);
        *slot = slot.saturating_sub(1);
    }

    fn slot(&mut self, state: ServerState) -> &mut usize {
        match state {
            ServerState::Connected => &mut self.up,
            ServerState::Dialing => &mut self.connecting,
            ServerState::WaitingRetry | ServerState::WaitingForProxy => &mut self.backing_off,
            ServerState::GaveUp => &mut self.given_up,
            ServerState::Idle => &mut self.idle,
            ServerState::Closing => &mut self.closing,
        }
    }

    /// Every server counted.
    pub fn total(&self) -> usize {
        self.up + self.connecting + self.backing_off + self.given_up + self.idle + self.closing
    }
}

impl<'a> FromIterator<&'a ServerStatus> for LinkCounts {
    fn from_iter<I: IntoIterator<Item = &'a ServerStatus>>(statuses: I) -> Self {
        let mut counts = Self::default();
        for status in statuses {
            counts.add(status.state);
        }
        counts
    }
}

/// An error and how long ago it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecentError {
    /// What it was.
    pub error: ServerError,
    /// How long before the snapshot.
    pub ago: Duration,
}

/// One server's health, with ages instead of instants.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct ServerHealth {
    /// The server.
    pub server: ServerId,
    /// Its address (an onion or host name and port; no credentials).
    pub addr: Arc<ServerAddr>,
    /// Where it stands.
    pub state: ServerState,
    /// Its latest failed dial or lost link, and how long ago.
    pub last_error: Option<RecentError>,
    /// How long the current connection has been up.
    pub connected_for: Option<Duration>,
    /// How long since the current connection last showed life. A link
    /// quiet for `keepalive.idle` is probed; one quiet for
    /// `idle + probe_timeout` is lost.
    pub quiet_for: Option<Duration>,
    /// The round trip of the current connection's last answered probe.
    pub last_probe_rtt: Option<Duration>,
    /// Failed dials since it was last connected.
    pub consecutive_failures: u32,
    /// How long until its next dial, if one is scheduled.
    pub next_retry_in: Option<Duration>,
}

impl ServerHealth {
    /// `status` seen at `now`.
    pub fn new(status: &ServerStatus, now: Instant) -> Self {
        let ago = |at: Instant| now.saturating_duration_since(at);
        Self {
            server: status.server,
            addr: Arc::clone(&status.addr),
            state: status.state,
            last_error: status.last_error.map(|e| RecentError {
                error: e.error,
                ago: ago(e.at),
            }),
            connected_for: status.connected_since.map(ago),
            quiet_for: status.last_active.map(ago),
            last_probe_rtt: status.last_probe_rtt,
            consecutive_failures: status.consecutive_failures,
            next_retry_in: status
                .next_retry_at
                .map(|at| at.saturating_duration_since(now)),
        }
    }
}

/// The pool's health at one instant: counts, the proxy, every server.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct PoolHealth {
    /// How many servers stand where.
    pub counts: LinkCounts,
    /// The proxy as the pool knows it.
    pub proxy: ProxyState,
    /// Whether background maintenance is running.
    pub maintenance: bool,
    /// Every valid server, in configured order.
    pub servers: Vec<ServerHealth>,
}
