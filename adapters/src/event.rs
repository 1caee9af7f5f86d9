//! What the pool tells its users, by node_id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dirpool_core::{AddrError, DisconnectReason};

use crate::error::DialError;

/// Something that happened to the pool, from
/// [`DirectoryPool::events`](crate::DirectoryPool::events).
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum PoolEvent {
    /// A server connected and its client is registered.
    Connected {
        /// The server.
        node_id: String,
    },
    /// A registered server's connection ended.
    Disconnected {
        /// The server.
        node_id: String,
        /// Why.
        reason: DisconnectReason,
    },
    /// A dial failed.
    DialFailed {
        /// The server.
        node_id: String,
        /// Why, with its source chain.
        error: Arc<DialError>,
        /// When it will be dialed again, if anything wants it.
        retry_at: Option<Instant>,
    },
    /// A keepalive probe was answered: the link is alive.
    ProbeAnswered {
        /// The server.
        node_id: String,
        /// From the probe's request to its answer.
        rtt: Duration,
    },
    /// A connected or disconnected hook ran past the hook timeout; it was
    /// dropped (with whatever it held) and the next hook ran.
    HookTimedOut {
        /// The server the hook was about.
        node_id: String,
        /// `"connected"` or `"disconnected"`.
        hook: &'static str,
    },
    /// A task of the pool panicked. The pool closes every link and stops;
    /// commands then fail with [`PoolError::Panicked`](crate::PoolError::Panicked).
    /// A panicking hook is reported here too, but does not stop the pool.
    Panicked {
        /// Which task ("driver", "dial", "close", "link", "hook").
        task: &'static str,
        /// The panic's message.
        message: String,
    },
    /// Maintenance gave up on a server after its `max_retries`.
    GaveUp {
        /// The server.
        node_id: String,
        /// Consecutive failed dials.
        failures: u32,
    },
    /// The last connected server was lost.
    AllDown,
    /// A server connected after [`PoolEvent::AllDown`].
    Recovered,
    /// The SOCKS proxy cannot be reached (Tor down or restarting); servers
    /// wait for it instead of failing one by one.
    ProxyUnreachable,
    /// The proxy answers again.
    ProxyRecovered,
    /// This stream was not read fast enough: `missed` events were dropped
    /// for it (and only for it) while its buffer was full.
    Lagged {
        /// How many.
        missed: u64,
    },
    /// A configured entry is malformed and is never dialed.
    AddressRejected {
        /// Its position in the configuration.
        index: usize,
        /// The error.
        error: AddrError,
    },
}
