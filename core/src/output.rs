//! What the machine asks of its driver, and what it tells its user.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addr::{AddrError, ServerAddr};
use crate::failure::{CloseFailure, DialDetail, DialFailure, LinkLoss};
use crate::isolation::SocksCredentials;

/// A configured, valid server: an index into the pool's server table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerId(pub(crate) u32);

impl ServerId {
    /// The position of this server among the pool's valid servers.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// One dial attempt and, if it succeeds, the connection it made.
///
/// Results, losses and closes name the attempt, so a late result for an
/// attempt the machine has given up on is recognised as stray.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttemptId(pub(crate) u64);

impl AttemptId {
    /// The raw value, for logs and maps; unique within one pool for as long
    /// as any result for it can still arrive.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a{}.{}", self.0 & u64::from(u32::MAX), self.0 >> 32)
    }
}

/// One user command (`connect_all_parallel`, `close_all`, …) in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OperationId(pub(crate) u64);

impl OperationId {
    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op{}", self.0)
    }
}

/// The next thing the driver must do or pass on, from
/// [`PoolState::poll_output`](crate::PoolState::poll_output).
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum Output {
    /// Open a connection: proxy, SOCKS CONNECT, handshake.
    Dial(DialRequest),
    /// Drop an attempt still in flight. Its result must still be reported
    /// (as [`DialFailure::Aborted`] if it was dropped); a success that wins
    /// the race is closed, never registered.
    Abort(AttemptId),
    /// Close a connection and report when done.
    Close(CloseRequest),
    /// Send a liveness probe on a connected link (JoinMarket: PING 798).
    /// Report its answer with
    /// [`Input::ProbeAnswered`](crate::Input::ProbeAnswered), or
    /// [`Input::ProbeUnsupported`](crate::Input::ProbeUnsupported) if the
    /// link cannot be probed.
    Probe(ProbeRequest),
    /// Something the user (hooks, notification stream, logs) should hear.
    Notify(Notification),
}

/// A dial the driver must run and report on exactly once.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct DialRequest {
    /// Name the result with this.
    pub attempt: AttemptId,
    /// The server to reach.
    pub server: ServerId,
    /// Its address (cheap to clone).
    pub addr: Arc<ServerAddr>,
    /// SOCKS username/password, present exactly when isolation is on.
    pub credentials: Option<SocksCredentials>,
    /// The whole dial's bound: the request's `now` plus the connection
    /// timeout. The machine fails the attempt with
    /// [`DialFailure::TimedOut`] and asks for an abort then, so the
    /// driver's own timer is only a safety net.
    pub deadline: Instant,
}

/// A probe to send on a connected link.
#[non_exhaustive]
#[derive(Debug, Clone, Copy)]
pub struct ProbeRequest {
    /// The attempt whose connection to probe.
    pub attempt: AttemptId,
    /// Its server. (The machine keeps the probe's deadline itself and
    /// declares the link lost when nothing is heard by then.)
    pub server: ServerId,
}

/// A connection to close.
#[non_exhaustive]
#[derive(Debug, Clone, Copy)]
pub struct CloseRequest {
    /// The attempt that made the connection.
    pub attempt: AttemptId,
    /// Its server.
    pub server: ServerId,
    /// True for a connection that was never registered (its dial succeeded
    /// after the machine gave up on it): close it without any hook.
    pub stray: bool,
    /// When the machine stops waiting for this close; a driver should drop
    /// a close still running then, so a hung close cannot keep the
    /// connection alive.
    pub deadline: Instant,
}

/// Something that happened to the pool.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    /// A configured entry is malformed; it is never dialed nor listed.
    AddressRejected {
        /// Position in the configured list.
        index: usize,
        /// The error, saying what is wrong.
        error: AddrError,
    },
    /// A configured entry names a server already listed (e.g. `x.onion` and
    /// `X.onion:5222`); it is ignored.
    DuplicateAddress {
        /// Position of the duplicate in the configured list.
        index: usize,
        /// The server it duplicates.
        server: ServerId,
    },
    /// A server is connected and registered (the connected hook).
    Connected {
        /// The server.
        server: ServerId,
        /// The attempt whose connection is now registered.
        attempt: AttemptId,
    },
    /// A dial failed.
    DialFailed {
        /// The server.
        server: ServerId,
        /// The attempt.
        attempt: AttemptId,
        /// Why.
        failure: DialFailure,
        /// When it will be dialed again, if anything wants it. For a server
        /// waiting for the proxy, when the proxy is next probed (one waiter
        /// is dialed then; the others as soon as the probe gets through).
        retry_at: Option<Instant>,
        /// The driver's detail from the failed
        /// [`Input::DialFinished`](crate::Input::DialFinished), handed back;
        /// `None` when the machine itself ended the dial (its timeout).
        detail: Option<DialDetail>,
    },
    /// A registered connection is gone (the disconnected hook).
    Disconnected {
        /// The server.
        server: ServerId,
        /// The attempt that made the connection.
        attempt: AttemptId,
        /// Why.
        reason: DisconnectReason,
    },
    /// A probe was answered: the link is alive.
    ProbeAnswered {
        /// The server.
        server: ServerId,
        /// The attempt that made the connection.
        attempt: AttemptId,
        /// Time from the probe's request to its answer.
        rtt: Duration,
    },
    /// Maintenance stopped redialing a server after `max_retries` failures.
    GaveUp {
        /// The server.
        server: ServerId,
        /// Consecutive failed dials.
        failures: u32,
    },
    /// The last connected server was lost.
    AllDown,
    /// A server connected after [`Notification::AllDown`].
    Recovered,
    /// Dials fail at the proxy: Tor is down, restarting or misconfigured.
    /// Servers wait for the proxy instead of burning their retries.
    ProxyUnreachable,
    /// The proxy answers again.
    ProxyRecovered,
    /// A command finished.
    OperationFinished(OperationReport),
}

/// Why a registered connection ended.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The link broke.
    Lost(LinkLoss),
    /// We closed it.
    Closed,
    /// We closed it and the close reported an error (still closed for us).
    CloseFailed(CloseFailure),
    /// We asked to close it and gave up waiting.
    CloseTimedOut,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lost(loss) => write!(f, "lost: {loss}"),
            Self::Closed => f.write_str("closed"),
            Self::CloseFailed(e) => write!(f, "closed with error: {e}"),
            Self::CloseTimedOut => f.write_str("close timed out"),
        }
    }
}

/// Which command an operation runs.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationKind {
    /// One pass over every server at once.
    ConnectAllParallel,
    /// Passes with backoff until one server is connected or the deadline.
    ConnectAllWithRetry,
    /// One pass over the disconnected servers.
    ReconnectDisconnected,
    /// Close everything.
    CloseAll,
}

/// How an operation ended.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationEnd {
    /// Every attempt (or close) it waited for has finished.
    Completed,
    /// `connect_all_with_retry`: a server is connected.
    Connected,
    /// `connect_all_with_retry`: the deadline passed with nothing connected.
    DeadlineReached,
    /// `close_all` ended it early.
    Cancelled,
}

/// The result of a command.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationReport {
    /// Which operation.
    pub id: OperationId,
    /// Which command.
    pub kind: OperationKind,
    /// How it ended.
    pub end: OperationEnd,
    /// Servers connected in the pool when it ended (the original's count).
    pub connected: usize,
    /// Servers whose connection this operation waited for and saw succeed.
    pub newly_connected: Vec<ServerId>,
}
