//! What dirpool's own test kit (the unpublished `dirpool-adapters-kit`
//! crate under `tests/`: the adapters' fuzz target bodies) needs from
//! inside this crate (feature `test-kit`).
//!
//! **Not covered by semver**: everything here exists for dirpool's fuzz
//! targets and tests, and may change or go in any release. The kit lives
//! outside this crate so that the published package carries no fuzz code;
//! it can only call what is public, and this feature is that surface, kept
//! apart so that a user never builds against it by accident.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dirpool_core::{ServerAddr, SocksCredentials};
use futures::future::BoxFuture;

use crate::dialer::Dialer;
use crate::error::DialError;
use crate::handshake::{RawConnection, RawStream};
use crate::runtime::Runtime;

/// Every way a user can print `error`: its Display and Debug, then each
/// cause's Display (what the no-secrets checks look through).
pub fn every_text(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    crate::error::every_text(error)
}

/// `future`'s output, or `None` if `deadline` (a sleep from
/// [`Runtime::sleep_until`]) completes first.
pub async fn before<F: std::future::Future>(
    deadline: BoxFuture<'static, ()>,
    future: F,
) -> Option<F::Output> {
    crate::runtime::before(deadline, future).await
}

/// One dial of `target` exactly as the pool makes it (the isolation check
/// when `credentials` are given, the SOCKS5 greeting, authentication and
/// CONNECT through `proxy`, each proxy step bounded by `proxy_timeout`),
/// with the [`RawStream`] handshake; `Err(DialError::TimedOut(timeout))`
/// at `deadline`. Cancel-safe: dropping it drops the connection.
///
/// # Errors
/// The [`DialError`] the pool would report.
pub async fn dial_raw(
    runtime: Arc<dyn Runtime>,
    proxy: SocketAddr,
    proxy_timeout: Duration,
    target: &ServerAddr,
    credentials: Option<&SocksCredentials>,
    deadline: Instant,
    timeout: Duration,
) -> Result<RawConnection, DialError> {
    Dialer::new(runtime, proxy, proxy_timeout, false, RawStream)
        .dial_until(target, credentials, deadline, timeout)
        .await
}

/// The JoinMarket link's line reader: reads `\n`-terminated lines (a
/// preceding `\r` dropped), never holding more than `limit` bytes of an
/// unfinished line plus one read's worth.
#[cfg(feature = "joinmarket")]
#[derive(Debug)]
pub struct LineReader<R>(crate::joinmarket::wire::LineReader<R>);

#[cfg(feature = "joinmarket")]
impl<R: tokio::io::AsyncRead + Unpin> LineReader<R> {
    /// A reader of `inner` taking lines of at most `limit` bytes.
    pub fn new(inner: R, limit: usize) -> Self {
        Self(crate::joinmarket::wire::LineReader::new(inner, limit))
    }

    /// Bytes of memory the reader holds for unfinished lines.
    pub fn held_capacity(&self) -> usize {
        self.0.held_capacity()
    }

    /// The next line, or `None` at a clean end of stream. Cancel-safe.
    ///
    /// # Errors
    /// A line over the limit, bad UTF-8 or an I/O error, as the link
    /// reports them.
    pub async fn next_line(&mut self) -> Result<Option<String>, crate::joinmarket::JmError> {
        self.0.next_line().await
    }
}
