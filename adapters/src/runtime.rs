//! What the driver needs from an async runtime, and nothing more.
//!
//! In the spirit of quinn's `Runtime`: the current time, a timer, a TCP
//! connection, and spawning. tokio and smol each implement it in a few dozen
//! lines; the deterministic simulation implements it with a virtual clock
//! and in-memory streams, so it drives the very same driver code.

use std::fmt::Debug;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Instant;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};

#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio_rt;

#[cfg(feature = "smol")]
pub use self::smol::SmolRuntime;
#[cfg(feature = "tokio")]
pub use self::tokio_rt::TokioRuntime;

/// A byte stream: a TCP connection, a SOCKS tunnel, or an in-memory pipe.
///
/// It uses tokio's I/O traits (what async-socks5 speaks); under smol the
/// stream is bridged with `tokio_util::compat`, and no tokio runtime runs.
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncStream for T {}

/// An owned, type-erased [`AsyncStream`].
pub type BoxedStream = Pin<Box<dyn AsyncStream>>;

/// The services the pool's driver takes from an async runtime.
pub trait Runtime: Send + Sync + Debug + 'static {
    /// The current time, from the runtime's clock (tokio's, so that paused
    /// time in tests works; a virtual one in the simulation).
    fn now(&self) -> Instant;

    /// A future that completes at `deadline` (at once if it has passed).
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()>;

    /// Opens a TCP connection to `addr`, with `TCP_NODELAY` set.
    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxedStream>>;

    /// Runs `future` to completion in the background.
    fn spawn(&self, future: BoxFuture<'static, ()>);
}

/// `future`'s output, or `None` if `deadline` (a sleep from
/// [`Runtime::sleep_until`]) completes first; the future is dropped then.
pub(crate) async fn before<F: std::future::Future>(
    deadline: BoxFuture<'static, ()>,
    future: F,
) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    match futures::future::select(future, deadline).await {
        futures::future::Either::Left((output, _)) => Some(output),
        futures::future::Either::Right(((), _)) => None,
    }
}

/// A shared runtime is a runtime (so `Arc<dyn Runtime>` can be handed to the
/// pool builder).
impl<R: Runtime + ?Sized> Runtime for std::sync::Arc<R> {
    fn now(&self) -> Instant {
        (**self).now()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        (**self).sleep_until(deadline)
    }

    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxedStream>> {
        (**self).connect_tcp(addr)
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) {
        (**self).spawn(future);
    }
}
