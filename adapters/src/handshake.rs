//! What happens on a tunnel once SOCKS has connected it: the user's
//! handshake turns the stream into a client, and the client tells the pool
//! when its link is gone.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dirpool_core::{LinkLoss, ServerAddr};
use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::Shared;
use tokio::io::AsyncWriteExt;

use crate::error::{CloseError, HandshakeError};
use crate::runtime::{BoxedStream, Runtime};

/// What a handshake may use: the pool's runtime (for timers and spawning)
/// and the instant the whole dial must be done by.
#[derive(Debug, Clone)]
pub struct HandshakeContext {
    runtime: Arc<dyn Runtime>,
    deadline: Instant,
}

impl HandshakeContext {
    /// A context on `runtime` with the dial's `deadline`.
    pub fn new(runtime: Arc<dyn Runtime>, deadline: Instant) -> Self {
        Self { runtime, deadline }
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
