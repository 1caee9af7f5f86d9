//! What happens on a tunnel once SOCKS has connected it: the user's
//! handshake turns the stream into a client, and the client tells the pool
//! when its link is gone.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dirpool_core::{AttemptId, LinkLoss, ServerAddr};
use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::Shared;
use tokio::io::AsyncWriteExt;

use crate::error::{CloseError, HandshakeError};
use crate::runtime::{BoxedStream, Runtime};

/// What a handshake may use: the pool's runtime (for timers and spawning),
/// the instant the whole dial must be done by, and the [`LinkSignals`] its
/// client reports signs of life with.
#[derive(Debug, Clone)]
pub struct HandshakeContext {
    runtime: Arc<dyn Runtime>,
    deadline: Instant,
    signals: LinkSignals,
}

impl HandshakeContext {
    /// A context on `runtime` with the dial's `deadline`, whose signals go
    /// nowhere (a connection the pool does not watch).
    pub fn new(runtime: Arc<dyn Runtime>, deadline: Instant) -> Self {
        Self {
            runtime,
            deadline,
            signals: LinkSignals::detached(),
        }
    }

    /// The same context, reporting through `signals`.
    pub fn with_signals(mut self, signals: LinkSignals) -> Self {
        self.signals = signals;
        self
    }

    /// Where the client reports signs of life and probe answers.
    pub fn signals(&self) -> &LinkSignals {
        &self.signals
    }

    /// The pool's runtime.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// When the pool gives up on this dial (handshake included).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// A connected directory client, as the pool holds it.
pub trait Client: Send + Sync + 'static {
    /// Completes when the link is gone, saying why. The pool waits on it to
    /// learn of losses, so it must complete when the peer closes or a read
    /// fails (and when [`close`](Self::close) ran).
    fn closed(&self) -> impl Future<Output = LinkLoss> + Send;

    /// Closes the connection.
    fn close(&self) -> impl Future<Output = Result<(), CloseError>> + Send;

    /// Sends one liveness probe (JoinMarket: PING 798), without waiting:
    /// the answer is reported through the [`LinkSignals`] the handshake got.
    /// The default says the link cannot be probed; the pool then watches it
    /// only through [`closed`](Self::closed).
    fn probe(&self) -> ProbeStatus {
        ProbeStatus::Unsupported
    }
}

/// What became of a [`Client::probe`] request.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeStatus {
    /// The probe is on its way; its answer comes through [`LinkSignals`].
    Sent,
    /// This link has no probe the other side answers (e.g. a directory
    /// that does not advertise `ping`).
    Unsupported,
    /// The link is closed.
    Closed,
}

/// What a link tells the pool about itself: signs of life and probe
/// answers. Cheap to clone and to call from a read loop: a burst of
/// [`alive`](Self::alive) calls reaches the pool as one signal.
#[derive(Debug, Clone, Default)]
pub struct LinkSignals {
    inner: Option<Arc<SignalsInner>>,
}

#[derive(Debug)]
struct SignalsInner {
    attempt: AttemptId,
    /// An `Alive` is queued and not taken yet: further calls add nothing.
    alive_queued: Arc<AtomicBool>,
    tx: futures::channel::mpsc::UnboundedSender<LinkSignal>,
}

/// One signal, as the driver receives it.
#[derive(Debug)]
pub(crate) enum LinkSignal {
    /// Bytes arrived; the flag is cleared by the driver when it takes this.
    Alive(AttemptId, Arc<AtomicBool>),
    /// The answer to a probe arrived.
    ProbeAnswered(AttemptId),
}

impl LinkSignal {
    /// The attempt it is about; marks an `Alive` as taken.
    pub(crate) fn take(self) -> (AttemptId, bool) {
        match self {
            Self::Alive(attempt, queued) => {
                queued.store(false, Ordering::Release);
                (attempt, false)
            }
            Self::ProbeAnswered(attempt) => (attempt, true),
        }
    }
}

impl LinkSignals {
    /// Signals that go nowhere.
    pub fn detached() -> Self {
        Self { inner: None }
    }

    pub(crate) fn new(
        attempt: AttemptId,
        tx: futures::channel::mpsc::UnboundedSender<LinkSignal>,
    ) -> Self {
        Self {
            inner: Some(Arc::new(SignalsInner {
                attempt,
                alive_queued: Arc::new(AtomicBool::new(false)),
                tx,
            })),
        }
    }

    /// The link showed a sign of life (a line arrived).
    pub fn alive(&self) {
        if let Some(inner) = &self.inner {
            if !inner.alive_queued.swap(true, Ordering::AcqRel) {
                let _ = inner.tx.unbounded_send(LinkSignal::Alive(
                    inner.attempt,
                    Arc::clone(&inner.alive_queued),
                ));
            }
        }
    }

    /// The answer to the last [`Client::probe`] arrived.
    pub fn probe_answered(&self) {
        if let Some(inner) = &self.inner {
            let _ = inner
                .tx
                .unbounded_send(LinkSignal::ProbeAnswered(inner.attempt));
        }
    }
}

/// Turns a tunnel to a server into a client: the original's
/// `_build_client_kwargs` (per-server construction) and `connect()`.
///
/// The pool bounds the whole dial, handshake included, by its connection
/// timeout, and drops the future when that passes.
pub trait Handshake: Send + Sync + 'static {
    /// The connected client.
    type Client: Client;

    /// Builds the client for `server` over `stream`.
    fn handshake(
        &self,
        context: &HandshakeContext,
        server: &ServerAddr,
        stream: BoxedStream,
    ) -> impl Future<Output = Result<Self::Client, HandshakeError>> + Send;
}

/// The handshake for users who only want the tunnel: no bytes are
/// exchanged; the client hands out the stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawStream;

impl Handshake for RawStream {
    type Client = RawConnection;

    async fn handshake(
        &self,
        _context: &HandshakeContext,
        _server: &ServerAddr,
        stream: BoxedStream,
    ) -> Result<RawConnection, HandshakeError> {
        Ok(RawConnection::new(stream))
    }
}

/// A raw tunnel held by the pool.
///
/// The pool cannot read the stream without stealing the user's bytes, so it
/// learns of a loss only from the user: call
/// [`report_lost`](Self::report_lost) when a read returns EOF or an error.
pub struct RawConnection {
    stream: Mutex<Option<BoxedStream>>,
    loss: LossSignal,
}

impl std::fmt::Debug for RawConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConnection")
            .field(
                "stream_taken",
                &self.stream.lock().map(|s| s.is_none()).unwrap_or(true),
            )
            .finish()
    }
}

impl RawConnection {
    /// Wraps a connected stream.
    pub fn new(stream: BoxedStream) -> Self {
        Self {
            stream: Mutex::new(Some(stream)),
            loss: LossSignal::new(),
        }
    }

    /// Takes the stream (once).
    pub fn take_stream(&self) -> Option<BoxedStream> {
        self.stream.lock().ok()?.take()
    }

    /// Tells the pool the link is gone.
    pub fn report_lost(&self, loss: LinkLoss) {
        self.loss.fire(loss);
    }
}

impl Client for RawConnection {
    fn closed(&self) -> impl Future<Output = LinkLoss> + Send {
        self.loss.wait()
    }

    async fn close(&self) -> Result<(), CloseError> {
        let stream = self.stream.lock().ok().and_then(|mut s| s.take());
        self.loss.fire(LinkLoss::ClosedByPeer);
        if let Some(mut stream) = stream {
            stream.shutdown().await?;
        }
        Ok(())
    }
}

/// A one-shot "the link is gone" signal that any number of tasks can await.
#[derive(Debug, Clone)]
pub struct LossSignal {
    sender: Arc<Mutex<Option<oneshot::Sender<LinkLoss>>>>,
    receiver: Shared<oneshot::Receiver<LinkLoss>>,
}

impl Default for LossSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl LossSignal {
    /// A signal not fired yet.
    pub fn new() -> Self {
        let (tx, rx) = oneshot::channel();
        Self {
            sender: Arc::new(Mutex::new(Some(tx))),
            receiver: rx.shared(),
        }
    }

    /// Fires the signal; only the first call counts.
    pub fn fire(&self, loss: LinkLoss) {
        if let Some(tx) = self.sender.lock().ok().and_then(|mut s| s.take()) {
            let _ = tx.send(loss);
        }
    }

    /// Whether it has fired.
    pub fn is_fired(&self) -> bool {
        self.sender.lock().map(|s| s.is_none()).unwrap_or(true)
    }

    /// Completes when the signal fires.
    pub fn wait(&self) -> impl Future<Output = LinkLoss> + Send + 'static {
        // A dropped sender (signal owner gone) counts as a closed link.
        self.receiver
            .clone()
            .map(|r| r.unwrap_or(LinkLoss::ClosedByPeer))
    }
}
