//! What the pool tells its users, by node_id.

use std::sync::Arc;
use std::time::Instant;

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
