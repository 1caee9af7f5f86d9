//! A small JoinMarket world on 127.0.0.1, for examples and tests that must
//! run without Tor (feature `loopback`, off by default).
//!
//! - [`LoopbackDirectory`]: an in-process JoinMarket directory that behaves
//!   like joinmarket-ng's directory server (handshake, relays, peer lists,
//!   PING).
//! - [`LoopbackProxy`]: a minimal SOCKS5 server that maps fake onion names
//!   ([`fake_onion`]) to loopback directories, standing in for Tor.
//!
//! Both run on their own std threads with blocking sockets (nothing for the
//! user to drive), bound every read and write by a deadline and every
//! buffer in bytes, cap their connections, and stop and join all their
//! threads when dropped.
//!
//! ```
//! use dirpool::joinmarket::Network;
//! use dirpool::loopback::{LoopbackDirectory, LoopbackProxy};
//!
//! let directory = LoopbackDirectory::start(Network::Regtest)?;
//! let proxy = LoopbackProxy::start()?;
//! // What a pool dials through `proxy.addr()`, e.g. `Config::new([onion.to_string()])`.
//! let onion = proxy.route_directory(&directory)?;
//! assert!(onion.is_onion());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod directory;
mod proxy;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use dirpool_core::ServerAddr;
use sha2::{Digest, Sha256};

pub use directory::{DirectorySettings, LoopbackDirectory};
pub use proxy::{LoopbackProxy, ProxySettings};

/// The port JoinMarket onion services listen on (joinmarket-ng
/// `jmcore/src/jmcore/protocol.py`, `ONION_VIRTUAL_PORT`).
pub const ONION_PORT: u16 = 5222;

/// Why a loopback server could not do what it was asked.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    /// Binding, accepting or starting a thread failed.
    #[error("loopback server I/O")]
    Io(#[from] io::Error),
    /// A route must lead to 127.0.0.0/8: the proxy never leaves the machine.
    #[error("{0} is not a 127.0.0.0/8 address")]
    NotLoopback(SocketAddr),
    /// The proxy already holds its maximum of routes.
    #[error("the proxy already holds {0} routes")]
    TooManyRoutes(usize),
}

/// A deterministic fake v3 onion address (checksum valid) for `label`, on
/// port [`ONION_PORT`]: the same label always gives the same address.
pub fn fake_onion(label: &str) -> ServerAddr {
    let key: [u8; 32] = Sha256::new()
        .chain_update(b"dirpool loopback onion\0")
        .chain_update(label.as_bytes())
        .finalize()
        .into();
    ServerAddr::from_onion_key(&key, ONION_PORT)
}

/// `within` from now (at most a year: never overflows).
fn deadline(within: Duration) -> Instant {
    Instant::now() + within.min(crate::joinmarket::MAX_TIMEOUT)
}

/// Writes all of `bytes` within `within` from now, however the peer reads
/// (each write may block for what is left, no longer).
fn write_all_within(mut socket: &TcpStream, mut bytes: &[u8], within: Duration) -> io::Result<()> {
    let deadline = deadline(within);
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        socket.set_write_timeout(Some(left))?;
        match socket.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::ErrorKind::TimedOut.into());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every thread and socket of one loopback server, so that dropping the
/// server can wake every blocked read (by shutting its socket down) and
/// join every thread.
#[derive(Debug, Default)]
struct Hub {
    stopping: AtomicBool,
    next_socket: AtomicU64,
    sockets: Mutex<HashMap<u64, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Hub {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Runs `work` on a new thread that [`stop_and_join`](Self::stop_and_join)
    /// joins. Refused once stopping, so joining ends.
    fn spawn(&self, name: &str, work: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let mut threads = lock(&self.threads);
        if self.stopping() {
            return Err(io::Error::other("the loopback server is stopping"));
        }
        threads.retain(|t| !t.is_finished());
        threads.push(thread::Builder::new().name(name.to_owned()).spawn(work)?);
        Ok(())
    }

    /// Registers a clone of `stream` to be shut down when the server stops
    /// (at once if it is stopping already) until the guard is dropped.
    fn hold(self: &Arc<Self>, stream: &TcpStream) -> io::Result<HeldSocket> {
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        let clone = stream.try_clone()?;
        let mut sockets = lock(&self.sockets);
        if self.stopping() {
            let _ = clone.shutdown(Shutdown::Both);
        }
        sockets.insert(id, clone);
        Ok(HeldSocket {
            hub: Arc::clone(self),
            id,
        })
    }

    /// Shuts every held socket down (waking its readers and writers) and
    /// joins every thread, including those started meanwhile.
    fn stop_and_join(&self) {
        {
            let sockets = lock(&self.sockets);
            self.stopping.store(true, Ordering::Release);
            for socket in sockets.values() {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
        loop {
            let threads = std::mem::take(&mut *lock(&self.threads));
            if threads.is_empty() {
                break;
            }
            for thread in threads {
                if thread.join().is_err() {
                    tracing::warn!("a loopback server thread panicked");
                }
            }
        }
    }
}

/// A socket registered with a [`Hub`]; unregistered on drop.
#[derive(Debug)]
struct HeldSocket {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for HeldSocket {
    fn drop(&mut self) {
        lock(&self.hub.sockets).remove(&self.id);
    }
}

/// A listener on 127.0.0.1 whose accept thread hands each connection to
/// `serve` on a thread of its own, at most `max_connections` at a time
/// (more are closed at once); dropping it stops and joins everything.
#[derive(Debug)]
struct Listener {
    hub: Arc<Hub>,
    addr: SocketAddr,
}

/// The pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long the drop of a server waits to reach its own listener (to wake
/// its accept thread).
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);

impl Listener {
    fn start<F>(name: &'static str, max_connections: usize, serve: F) -> io::Result<Self>
    where
        F: Fn(&Arc<Hub>, TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let hub = Arc::new(Hub::default());
        let serve = Arc::new(serve);
        let active = Arc::new(AtomicUsize::new(0));
        let accept_hub = Arc::clone(&hub);
        hub.spawn(name, move || {
            for stream in listener.incoming() {
                if accept_hub.stopping() {
                    break;
                }
                let Ok(stream) = stream else {
                    // E.g. out of file descriptors: do not spin.
                    thread::sleep(ACCEPT_BACKOFF);
                    continue;
                };
                if active.fetch_add(1, Ordering::AcqRel) >= max_connections {
                    active.fetch_sub(1, Ordering::AcqRel);
                    tracing::debug!(%addr, "loopback server full: connection closed");
                    continue;
                }
                let (hub, serve, active) = (
                    Arc::clone(&accept_hub),
                    Arc::clone(&serve),
                    Arc::clone(&active),
                );
                let connection_hub = Arc::clone(&hub);
                let spawned = hub.spawn(name, move || {
                    serve(&connection_hub, stream);
                    active.fetch_sub(1, Ordering::AcqRel);
                });
                if spawned.is_err() {
                    break;
                }
            }
        })?;
        Ok(Self { hub, addr })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.hub.stopping.store(true, Ordering::Release);
        // The accept thread sees the flag on its next connection: make one.
        let _ = TcpStream::connect_timeout(&self.addr, WAKE_TIMEOUT);
        self.hub.stop_and_join();
    }
}

/// A blocking socket as an `AsyncRead` whose every read ends by `deadline`
/// (`TimedOut` after it), so the crate's async line reader
/// ([`LineReader`](crate::joinmarket::wire::LineReader)) serves the
/// blocking loopback servers too (driven by `futures::executor::block_on`:
/// its reads never return `Pending`).
#[derive(Debug)]
struct DeadlineReader {
    stream: TcpStream,
    deadline: Instant,
}

impl DeadlineReader {
    fn new(stream: TcpStream, within: Duration) -> Self {
        Self {
            stream,
            deadline: deadline(within),
        }
    }

    fn extend(&mut self, within: Duration) {
        self.deadline = deadline(within);
    }
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        match self.stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::ErrorKind::TimedOut.into()),
            other => other,
        }
    }
}

impl tokio::io::AsyncRead for DeadlineReader {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.get_mut().read(buf.initialize_unfilled())?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_onions_are_valid_deterministic_and_distinct() {
        let a = fake_onion("a");
        assert!(a.is_onion());
        assert_eq!(a.port(), ONION_PORT);
        assert_eq!(ServerAddr::parse(a.node_id()).unwrap(), a);
        assert_eq!(fake_onion("a"), a);
        assert_ne!(fake_onion("b"), a);
    }

    #[test]
    fn a_dropped_listener_joins_its_threads_with_a_client_still_connected() {
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let listener = Listener::start("test", 4, move |hub, stream| {
            let _held = hub.hold(&stream).unwrap();
            entered_tx.send(()).unwrap();
            // Blocks until the listener's drop shuts the socket down.
            let _ = (&stream).read(&mut [0; 1]);
        })
        .unwrap();
        let _client = TcpStream::connect(listener.addr).unwrap();
        entered_rx.recv().unwrap();
        let hub = Arc::clone(&listener.hub);
        drop(listener);
        assert!(lock(&hub.threads).is_empty());
        assert!(lock(&hub.sockets).is_empty());
    }
}
