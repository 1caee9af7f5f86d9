//! What the pool tells its users, by node_id.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dirpool_core::{AddrError, DisconnectReason};
use futures::Stream;
use futures::channel::mpsc;

use crate::driver::Route;
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
    /// Tor cannot carry the pool's traffic: the SOCKS proxy cannot be
    /// reached (Tor down or restarting), or the in-process Tor client
    /// (feature `arti`) reports it is still bootstrapping or blocked, or
    /// fails a dial for want of a bootstrap. Servers wait for it instead of
    /// failing one by one. A new [`EventStream`] made while this holds
    /// starts with it.
    ProxyUnreachable,
    /// Tor carries traffic again: the proxy answers, or the in-process
    /// Tor client reports it is ready.
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

impl PoolEvent {
    /// Logs the event: called once, where the pool publishes it, inside
    /// the span of its server when it has one. `now` is the runtime's;
    /// `route` names the proxy in the proxy events' lines.
    pub(crate) fn log(&self, now: Instant, route: Route) {
        match self {
            Self::Connected { .. } => tracing::info!("connected"),
            Self::Disconnected { reason, .. } => tracing::info!(%reason, "disconnected"),
            Self::DialFailed {
                error, retry_at, ..
            } => match retry_at {
                Some(at) => {
                    let retry_in = at.saturating_duration_since(now);
                    tracing::info!(%error, ?retry_in, "dial failed");
                }
                None => tracing::info!(%error, "dial failed; no retry"),
            },
            Self::ProbeAnswered { rtt, .. } => tracing::debug!(?rtt, "probe answered"),
            Self::HookTimedOut { hook, .. } => {
                tracing::warn!(hook, "a pool hook overran its timeout and was dropped");
            }
            Self::Panicked { task, message } => {
                tracing::error!(task, %message, "a task of the pool panicked");
            }
            Self::GaveUp { failures, .. } => {
                tracing::warn!(failures, "maintenance gave up on the server");
            }
            Self::AllDown => tracing::warn!("all directory servers are down"),
            Self::Recovered => tracing::info!("a directory server is back"),
            Self::ProxyUnreachable => {
                let route = route.name();
                tracing::warn!("{route} cannot carry traffic; servers wait for it")
            }
            Self::ProxyRecovered => {
                let route = route.name();
                tracing::info!("{route} carries traffic again")
            }
            // Per subscriber; the pool counts them (metric
            // `dirpool_events_dropped_total`) instead of logging each.
            Self::Lagged { .. } => {}
            Self::AddressRejected { index, error } => {
                tracing::warn!(index, %error, "directory address rejected");
            }
        }
    }
}

/// The pool's events, from [`DirectoryPool::events`](crate::DirectoryPool::events).
///
/// Read it with [`next`](Self::next) (no extension trait needed), or use it
/// as a [`Stream`] with any stream combinators. It holds at most its
/// buffer of events (1,024 plus the configuration's rejections); when the
/// reader falls behind, later events are counted and one
/// [`PoolEvent::Lagged`] says how many were missed. It ends (`None`) when
/// the pool's driver has stopped.
#[derive(Debug)]
#[must_use = "an event stream that is not read only fills its buffer"]
pub struct EventStream {
    pub(crate) rx: mpsc::Receiver<PoolEvent>,
}

impl EventStream {
    /// The next event, or `None` once the pool has stopped.
    ///
    /// Cancel-safe: if the future is dropped before it completes, no event
    /// is lost; the next call returns it.
    #[allow(
        clippy::should_implement_trait,
        reason = "the async `next` of StreamExt, without the import; not an Iterator"
    )]
    pub fn next(&mut self) -> impl Future<Output = Option<PoolEvent>> + Unpin + Send + '_ {
        std::future::poll_fn(|cx| Pin::new(&mut self.rx).poll_next(cx))
    }

    /// The next event if one is waiting, without waiting.
    ///
    /// # Errors
    /// [`TryNextError::Empty`] when no event is waiting yet,
    /// [`TryNextError::Closed`] once the pool has stopped and every event
    /// was read.
    pub fn try_next(&mut self) -> Result<PoolEvent, TryNextError> {
        self.rx.try_recv().map_err(|e| match e {
            mpsc::TryRecvError::Empty => TryNextError::Empty,
            mpsc::TryRecvError::Closed => TryNextError::Closed,
        })
    }
}

/// Why [`EventStream::try_next`] returned no event.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryNextError {
    /// No event is waiting yet.
    #[error("no event is waiting")]
    Empty,
    /// The pool has stopped and every event was read.
    #[error("the pool has stopped")]
    Closed,
}

impl Stream for EventStream {
    type Item = PoolEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PoolEvent>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.rx.size_hint()
    }
}
