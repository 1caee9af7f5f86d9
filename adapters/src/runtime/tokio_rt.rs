//! The tokio runtime: tokio's clock (so paused-time tests work), timers,
//! sockets and the runtime the pool was created in.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::runtime::Handle;

use super::{BoxedStream, Runtime};

/// Runs the pool on a tokio runtime.
#[derive(Debug, Clone)]
pub struct TokioRuntime {
    handle: Handle,
}

impl TokioRuntime {
    /// Uses the runtime of the calling task.
    ///
    /// # Panics
    /// Outside a tokio runtime (use [`TokioRuntime::with_handle`] there).
    pub fn current() -> Self {
        Self {
            handle: Handle::current(),
        }
    }

    /// Uses the runtime behind `handle`.
    pub fn with_handle(handle: Handle) -> Self {
        Self { handle }
    }
}

impl Runtime for TokioRuntime {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).boxed()
    }

    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxedStream>> {
        async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::pin(stream) as BoxedStream)
        }
        .boxed()
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) {
        drop(self.handle.spawn(future));
    }
}
