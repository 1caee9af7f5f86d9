//! The smol runtime: smol's timers, sockets and global executor. No tokio
//! runtime is started; streams are bridged to tokio's I/O traits with
//! `tokio_util::compat`.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::{BoxedStream, Runtime};

/// Runs the pool on smol's global executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmolRuntime;

impl Runtime for SmolRuntime {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        smol::Timer::at(deadline).map(drop).boxed()
    }

    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxedStream>> {
        async move {
            let stream = smol::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::pin(stream.compat()) as BoxedStream)
        }
        .boxed()
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) {
        smol::spawn(future).detach();
    }
}
