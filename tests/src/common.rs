//! Shared machinery of the loopback servers: a listener that can be stopped
//! and rebound on the same port, one thread per connection, a registry of
//! every open socket so that they can all be closed at once, and reads that
//! ride out short timeouts so that threads notice shutdown.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a blocked read waits before its thread checks for shutdown.
pub(crate) const POLL: Duration = Duration::from_millis(25);

/// Write timeout on every socket: a peer that stops reading cannot hang a
/// server thread for longer than this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long `start_listening` keeps retrying to bind the same port.
pub(crate) const REBIND_FOR: Duration = Duration::from_secs(2);

/// How long a graceful close waits for the peer's FIN.
const LINGER: Duration = Duration::from_millis(500);

/// How long `drop_all` waits for the dropped connections' threads to close
/// their sockets.
const DROP_ALL_WAIT: Duration = Duration::from_secs(2);

/// Locks a mutex, ignoring poisoning (a panicking test thread must not turn
/// every later call into a second panic). A guard written through signals
/// [`changed`] when it is released: the servers' state lives behind these
/// locks, so waiting for a condition on it is waiting for that signal.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> Locked<'_, T> {
    Locked {
        guard: mutex.lock().unwrap_or_else(PoisonError::into_inner),
        written: false,
    }
}

/// A locked mutex (see [`lock`]).
pub(crate) struct Locked<'a, T> {
    guard: MutexGuard<'a, T>,
    written: bool,
}

impl<T> std::ops::Deref for Locked<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for Locked<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.written = true;
        &mut self.guard
    }
}

impl<T> Drop for Locked<'_, T> {
    fn drop(&mut self) {
        if self.written {
            changed();
        }
    }
}

/// The process-wide "some test server's state changed" signal: a counter
/// bumped by every change, with the threads and tasks waiting for it.
struct Changes {
    generation: Mutex<u64>,
    bumped: Condvar,
    tasks: Mutex<Vec<Waker>>,
}

static CHANGES: Changes = Changes {
    generation: Mutex::new(0),
    bumped: Condvar::new(),
    tasks: Mutex::new(Vec::new()),
};

/// Signals that a server's observable state changed (a connection opened
/// or closed, a line received, the listener bound...). State behind
/// [`lock`] signals by itself; counters kept in atomics call this.
pub(crate) fn changed() {
    *CHANGES
        .generation
        .lock()
        .unwrap_or_else(PoisonError::into_inner) += 1;
    CHANGES.bumped.notify_all();
    let tasks = std::mem::take(&mut *CHANGES.tasks.lock().unwrap_or_else(PoisonError::into_inner));
    for task in tasks {
        task.wake();
    }
}

/// The number of changes so far: read it before checking a condition, then
/// wait for a change after it ([`wait_until`](crate::wait_until) blocks,
/// [`ChangeAfter`] is the async wait).
pub fn change_generation() -> u64 {
    *CHANGES
        .generation
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Blocks until a change after `seen` (`true`) or `deadline` (`false`).
pub(crate) fn wait_for_change(seen: u64, deadline: Instant) -> bool {
    let mut generation = CHANGES
        .generation
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    while *generation == seen {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        generation = CHANGES
            .bumped
            .wait_timeout(generation, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    true
}

/// A future that is ready once there was a change after `seen`.
#[derive(Debug)]
pub struct ChangeAfter(pub u64);

impl std::future::Future for ChangeAfter {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the check: a change between the two wakes it.
        let mut tasks = CHANGES.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        if !tasks.iter().any(|task| task.will_wake(cx.waker())) {
            tasks.push(cx.waker().clone());
        }
        drop(tasks);
        if change_generation() == self.0 {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// The loopback address with `port`.
fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Ports claimed by this process: held by a live server (listening or
/// down), or handed out by [`free_loopback_port`]. Never chosen again while
/// claimed.
static CLAIMED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// The lowest port chosen (below it live many well-known services).
const LOWEST_PORT: u16 = 10_000;

/// The range `[start, end)` to choose ports from: below the OS's ephemeral
/// range (or above it if there is no room below), so that neither `bind`
/// to port 0 nor the source port of an outgoing connection (anywhere on the
/// machine) can take the port of a server that is down for a while. `None`
/// if there is no room either side.
fn port_range() -> Option<(u16, u16)> {
    // Linux's default; BSDs and macOS use 49152–65535, also above 32767.
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut fields = text.split_whitespace().map(str::parse::<u16>);
            Some((fields.next()?.ok()?, fields.next()?.ok()?))
        })
        .unwrap_or((32_768, 60_999));
    const ROOM: u16 = 1_000;
    if low >= LOWEST_PORT.saturating_add(ROOM) {
        Some((LOWEST_PORT, low))
    } else if high <= u16::MAX - ROOM {
        Some((high + 1, u16::MAX))
    } else {
        None
    }
}

/// A fresh random number (std's randomly keyed hasher over a counter).
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// Binds a loopback listener on an unclaimed port outside the OS's ephemeral
/// range (see [`port_range`]) and claims the port; falls back to an
/// ephemeral port (port 0) if there is no such range or no free port in
/// 500 tries.
fn bind_claimed() -> io::Result<TcpListener> {
    if let Some((start, end)) = port_range() {
        let span = u64::from(end - start);
        for _ in 0..500 {
            let offset = u16::try_from(random() % span).unwrap_or(0);
            let port = start + offset;
            let mut claimed = lock(&CLAIMED);
            if claimed.contains(&port) {
                continue;
            }
            if let Ok(listener) = listen(loopback(port)) {
                claimed.insert(port);
                return Ok(listener);
            }
        }
    }
    let listener = listen(loopback(0))?;
    lock(&CLAIMED).insert(listener.local_addr()?.port());
    Ok(listener)
}

/// Gives a port claimed by [`bind_claimed`] back.
fn release(port: u16) {
    lock(&CLAIMED).remove(&port);
}

/// A loopback port on which nothing listens, for "nothing listens here"
/// tests (connecting to it is refused).
///
/// The port is free when returned, outside the OS's ephemeral port range
/// (so the OS never hands it out to a `bind` to port 0 nor uses it as the
/// source port of a connection), and never chosen by this crate's servers:
/// it stays refused unless something binds it explicitly. (If the OS has no
/// room outside its ephemeral range, it is an ephemeral port that was free.)
///
/// # Panics
///
/// If no loopback port can be bound at all (no network stack).
#[must_use]
pub fn free_loopback_port() -> u16 {
    // Claimed forever (a few bytes per call).
    bind_claimed()
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("cannot bind any loopback port")
}

/// `true` for the errors a read or write with a timeout returns on timeout.
pub(crate) fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// What a patient read saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadEvent {
    /// This many bytes (at least one) were read.
    Data(usize),
    /// The peer closed, the socket failed or was shut down, or the server is
    /// stopping.
    Closed,
    /// The deadline passed before any byte arrived.
    Deadline,
}

/// Per-connection context given to a handler.
#[derive(Clone)]
pub(crate) struct Ctx {
    shared: Arc<Shared>,
}

impl Ctx {
    /// `true` once the server is being dropped.
    pub(crate) fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    /// How many times the server dropped all its connections so far: a
    /// handler that does not read (and so cannot see its socket shut down)
    /// compares it with the value it started with.
    pub(crate) fn drop_generation(&self) -> u64 {
        self.shared.drops.load(Ordering::SeqCst)
    }

    /// Registers an extra socket (e.g. the upstream side of a tunnel) so that
    /// `drop_all` and drop shut it down too. It is unregistered (and the
    /// registry's handle closed) when the returned guard drops. It does not
    /// count as an open client connection.
    pub(crate) fn register(&self, stream: &TcpStream) -> Option<Registration> {
        self.shared.register(stream)
    }

    /// Reads some bytes, riding out the short read timeouts until data, EOF,
    /// an error, the server stopping, or `deadline`.
    pub(crate) fn read_event(
        &self,
        stream: &mut TcpStream,
        buf: &mut [u8],
        deadline: Option<Instant>,
    ) -> ReadEvent {
        loop {
            if self.stopping() {
                return ReadEvent::Closed;
            }
            if let Some(deadline) = deadline {
                let now = Instant::now();
                if now >= deadline {
                    return ReadEvent::Deadline;
                }
                let wait = (deadline - now).clamp(Duration::from_millis(1), POLL);
                if stream.set_read_timeout(Some(wait)).is_err() {
                    return ReadEvent::Closed;
                }
            }
            match stream.read(buf) {
                Ok(0) => return ReadEvent::Closed,
                Ok(n) => return ReadEvent::Data(n),
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadEvent::Closed,
            }
        }
    }

    /// Reads exactly `buf.len()` bytes; `Err` on EOF, error, or stopping.
    pub(crate) fn read_exact(&self, stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read_event(stream, &mut buf[filled..], None) {
                ReadEvent::Data(n) => filled += n,
                ReadEvent::Closed | ReadEvent::Deadline => {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
        Ok(())
    }

    /// Reads and discards everything until the peer closes or the server
    /// stops (a connection that is held open but never answered).
    pub(crate) fn hold(&self, stream: &mut TcpStream) {
        let mut sink = [0u8; 1024];
        while let ReadEvent::Data(_) = self.read_event(stream, &mut sink, None) {}
    }

    /// Closes after a final answer without risking a reset that could
    /// destroy it in flight: sends FIN, then discards whatever the peer still
    /// sends until it closes too (for at most [`LINGER`]).
    pub(crate) fn close_gracefully(&self, mut stream: TcpStream) {
        if stream.shutdown(Shutdown::Write).is_err() {
            return;
        }
        let deadline = Some(Instant::now() + LINGER);
        let mut sink = [0u8; 1024];
        while let ReadEvent::Data(_) = self.read_event(&mut stream, &mut sink, deadline) {}
    }
}

/// Sets the socket options every server-side socket gets.
pub(crate) fn prepare(stream: &TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    stream.set_nodelay(true)
}

/// Writes all of `bytes`, then flushes.
pub(crate) fn send(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes)?;
    stream.flush()
}

/// What a connection's handler does; it owns (and closes, by dropping) the
/// stream.
pub(crate) type Handler = Arc<dyn Fn(TcpStream, &Ctx) + Send + Sync>;

/// State shared by the accept threads, the connection threads, and the
/// owner.
struct Shared {
    stopping: AtomicBool,
    /// Incremented by every `drop_all` (see [`Ctx::drop_generation`]).
    drops: AtomicU64,
    accepted: AtomicUsize,
    open: AtomicUsize,
    next_id: AtomicU64,
    /// A clone of every open socket (client connections and registered
    /// extras), to shut them down from outside their threads.
    sockets: Mutex<HashMap<u64, TcpStream>>,
    /// Connection threads (finished ones are pruned now and then).
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn register(self: &Arc<Self>, stream: &TcpStream) -> Option<Registration> {
        let clone = stream.try_clone().ok()?;
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        lock(&self.sockets).insert(id, clone);
        Some(Registration {
            shared: Arc::clone(self),
            id,
        })
    }

    /// Shuts down every registered socket and waits (bounded) until their
    /// threads have closed them.
    fn drop_all(&self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
        let ids: Vec<u64> = {
            let sockets = lock(&self.sockets);
            for stream in sockets.values() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            sockets.keys().copied().collect()
        };
        // Each thread's unregistering (under `lock`) signals a change.
        let deadline = Instant::now() + DROP_ALL_WAIT;
        loop {
            let seen = change_generation();
            if !ids.iter().any(|id| lock(&self.sockets).contains_key(id))
                || !wait_for_change(seen, deadline)
            {
                break;
            }
        }
    }

    /// Starts a thread handling one accepted connection.
    fn spawn_connection(self: &Arc<Self>, stream: TcpStream, handler: &Handler) {
        self.accepted.fetch_add(1, Ordering::SeqCst);
        changed();
        if prepare(&stream).is_err() {
            return; // dropped: closed
        }
        let Ok(clone) = stream.try_clone() else {
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        {
            let mut sockets = lock(&self.sockets);
            sockets.insert(id, clone);
            self.open.fetch_add(1, Ordering::SeqCst);
        }
        let guard = OpenGuard {
            shared: Arc::clone(self),
            id,
        };
        let ctx = Ctx {
            shared: Arc::clone(self),
        };
        let handler = Arc::clone(handler);
        let spawned = thread::Builder::new()
            .name("loopback-conn".into())
            .spawn(move || {
                // Declared first, dropped last: after the handler has closed
                // its stream.
                let _guard = guard;
                handler(stream, &ctx);
            });
        if let Ok(handle) = spawned {
            let mut workers = lock(&self.workers);
            workers.retain(|worker| !worker.is_finished());
            workers.push(handle);
        }
        // On spawn failure the closure (stream and guard) was dropped:
        // the connection is closed and uncounted again.
    }
}

/// Keeps a socket in the registry; unregisters (closing the registry's
/// handle) on drop.
pub(crate) struct Registration {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let removed = lock(&self.shared.sockets).remove(&self.id);
        drop(removed);
    }
}

/// Counts an open client connection; on drop, closes the registry's handle
/// and uncounts it.
struct OpenGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        // Under the registry lock, so that `drop_all` (which waits for the
        // ids to disappear) never sees a closed connection still counted,
        // and the count never drops while a handle is still open.
        let mut sockets = lock(&self.shared.sockets);
        drop(sockets.remove(&self.id));
        self.shared.open.fetch_sub(1, Ordering::SeqCst);
        // (The guard's release signals the change, after the count.)
    }
}

/// See [`Server::leak_probe`].
#[cfg(test)]
pub(crate) struct LeakProbe(std::sync::Weak<Shared>);

#[cfg(test)]
impl LeakProbe {
    /// `true` once no thread (nor the server) holds the shared state, hence
    /// no socket either.
    pub(crate) fn released(&self) -> bool {
        self.0.upgrade().is_none()
    }
}

/// One listening period: the thread that (maybe after a delay) binds the
/// port and accepts on it.
struct Incarnation {
    cancel: Arc<AtomicBool>,
    bound: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A loopback server on a fixed address whose listener can be closed and
/// reopened, with one thread per connection running its handler: the
/// lifecycle that [`LineServer`](crate::LineServer) and
/// [`JmDirectory`](crate::JmDirectory) share (they deref to it).
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    handler: Handler,
    listener: Mutex<Option<Incarnation>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("listening", &self.is_listening())
            .field("accepted", &self.accepted())
            .field("open", &self.open_connections())
            .finish_non_exhaustive()
    }
}

impl Server {
    fn with_addr(addr: SocketAddr, handler: Handler) -> Self {
        Self {
            addr,
            shared: Arc::new(Shared {
                stopping: AtomicBool::new(false),
                drops: AtomicU64::new(0),
                accepted: AtomicUsize::new(0),
                open: AtomicUsize::new(0),
                next_id: AtomicU64::new(0),
                sockets: Mutex::new(HashMap::new()),
                workers: Mutex::new(Vec::new()),
            }),
            handler,
            listener: Mutex::new(None),
        }
    }

    /// Binds a claimed loopback port (see [`bind_claimed`]) now and starts
    /// accepting.
    pub(crate) fn start(handler: Handler) -> io::Result<Self> {
        let listener = bind_claimed()?;
        let server = Self::with_addr(listener.local_addr()?, handler);
        let incarnation = server.spawn_incarnation(Some(listener), Duration::ZERO)?;
        *lock(&server.listener) = Some(incarnation);
        Ok(server)
    }

    /// Reserves a free loopback port now (bind, read, close) and starts
    /// listening on it only after `delay`, from a background thread.
    pub(crate) fn start_after(handler: Handler, delay: Duration) -> io::Result<Self> {
        let reserved = bind_claimed()?;
        let addr = reserved.local_addr()?;
        drop(reserved);
        let server = Self::with_addr(addr, handler);
        let incarnation = server.spawn_incarnation(None, delay)?;
        *lock(&server.listener) = Some(incarnation);
        Ok(server)
    }

    /// Its address (fixed for its whole life, across stops and restarts).
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The number of connections accepted so far.
    #[must_use]
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// The number of connections open now (uncounted only after the server
    /// closed its socket).
    #[must_use]
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Stops: closes the listener (connecting is refused when this returns;
    /// also cancels a pending late start) and every open connection.
    /// Idempotent.
    pub fn stop(&self) {
        self.stop_listening();
        self.drop_all();
    }

    /// Restarts on the same port: stops (see [`stop`](Self::stop)), then
    /// listens again, retrying the bind for up to 2 s. When it returns
    /// `Ok`, connections are accepted.
    ///
    /// # Errors
    ///
    /// If the port could not be bound again within 2 s.
    pub fn restart(&self) -> io::Result<()> {
        self.stop();
        self.start_listening()
    }

    /// Stops now (see [`stop`](Self::stop)) and listens again on the same
    /// port after `delay`, from a background thread. Returns at once.
    ///
    /// # Errors
    ///
    /// If the background thread cannot be spawned.
    pub fn restart_after(&self, delay: Duration) -> io::Result<()> {
        self.stop();
        self.start_listening_after(delay)
    }

    /// `true` while the listening socket is bound (not before a delayed
    /// start, not while stopped).
    #[must_use]
    pub fn is_listening(&self) -> bool {
        lock(&self.listener).as_ref().is_some_and(|incarnation| {
            incarnation.bound.load(Ordering::SeqCst) && !incarnation.thread.is_finished()
        })
    }

    /// Closes the listening socket (or cancels a pending delayed start) and
    /// waits for the accept thread to exit. Open connections stay open.
    /// When this returns, connecting to the address is refused.
    pub(crate) fn stop_listening(&self) {
        let taken = lock(&self.listener).take();
        if let Some(incarnation) = taken {
            self.end(incarnation);
        }
    }

    /// Ends a listening period: sets its cancel flag, wakes its blocking
    /// accept (if it is bound), and joins its thread.
    fn end(&self, incarnation: Incarnation) {
        incarnation.cancel.store(true, Ordering::SeqCst);
        changed();
        // Refused (harmlessly) if not bound.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
        let _ = incarnation.thread.join();
    }

    /// Listens again on the same port now (retrying the bind for up to
    /// [`REBIND_FOR`]); a pending delayed start is cancelled. Does nothing if
    /// already listening.
    pub(crate) fn start_listening(&self) -> io::Result<()> {
        let mut slot = lock(&self.listener);
        if let Some(incarnation) = slot.take() {
            let listening =
                incarnation.bound.load(Ordering::SeqCst) && !incarnation.thread.is_finished();
            if listening {
                *slot = Some(incarnation);
                return Ok(());
            }
            self.end(incarnation);
        }
        let listener = bind_with_retry(self.addr, None)?;
        *slot = Some(self.spawn_incarnation(Some(listener), Duration::ZERO)?);
        Ok(())
    }

    /// Stops listening now and listens again on the same port after `delay`
    /// (from a background thread, retrying the bind for up to
    /// [`REBIND_FOR`]; if that fails the server simply stays down).
    pub(crate) fn start_listening_after(&self, delay: Duration) -> io::Result<()> {
        self.stop_listening();
        let incarnation = self.spawn_incarnation(None, delay)?;
        *lock(&self.listener) = Some(incarnation);
        Ok(())
    }

    /// Closes every open connection (and registered extra socket) now, and
    /// waits (up to 2 s) until their threads have closed them. The listener
    /// is unaffected.
    pub fn drop_all(&self) {
        self.shared.drop_all();
    }

    /// Lets a test check, after dropping the server, that no thread of it
    /// is left (each holds the shared state).
    #[cfg(test)]
    pub(crate) fn leak_probe(&self) -> LeakProbe {
        LeakProbe(Arc::downgrade(&self.shared))
    }

    fn spawn_incarnation(
        &self,
        listener: Option<TcpListener>,
        delay: Duration,
    ) -> io::Result<Incarnation> {
        let cancel = Arc::new(AtomicBool::new(false));
        let bound = Arc::new(AtomicBool::new(listener.is_some()));
        let thread = {
            let cancel = Arc::clone(&cancel);
            let bound = Arc::clone(&bound);
            let shared = Arc::clone(&self.shared);
            let handler = Arc::clone(&self.handler);
            let addr = self.addr;
            thread::Builder::new()
                .name("loopback-accept".into())
                .spawn(move || {
                    let listener = match listener {
                        Some(listener) => listener,
                        None => {
                            // Until the start, or a cancel (which signals).
                            let start = Instant::now() + delay;
                            loop {
                                let seen = change_generation();
                                if cancel.load(Ordering::SeqCst) {
                                    return;
                                }
                                if !wait_for_change(seen, start) {
                                    break;
                                }
                            }
                            match bind_with_retry(addr, Some(&cancel)) {
                                Ok(listener) => listener,
                                Err(_) => return,
                            }
                        }
                    };
                    bound.store(true, Ordering::SeqCst);
                    changed();
                    accept_loop(&listener, &cancel, &shared, &handler);
                    bound.store(false, Ordering::SeqCst);
                    changed();
                })?
        };
        Ok(Incarnation {
            cancel,
            bound,
            thread,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.stop_listening();
        self.shared.drop_all();
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for worker in workers {
            let _ = worker.join();
        }
        release(self.addr.port());
    }
}

/// Listen backlog of every loopback server. std's `TcpListener::bind` asks
/// for 128, which a pool dialing 1,000 directories at once through one
/// proxy overflows: the kernel drops the extra SYNs and the clients resend
/// them only after 1 s, then 3 s.
const BACKLOG: i32 = 4096;

/// `TcpListener::bind` with a deeper backlog ([`BACKLOG`]).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // As std does on Unix, so a restart can rebind while old connections
    // are in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Binds `addr`, retrying for up to [`REBIND_FOR`] while the port is still
/// in use (unless `cancel` is set).
fn bind_with_retry(addr: SocketAddr, cancel: Option<&AtomicBool>) -> io::Result<TcpListener> {
    let deadline = Instant::now() + REBIND_FOR;
    loop {
        match listen(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => {
                let cancelled = cancel.is_some_and(|c| c.load(Ordering::SeqCst));
                if cancelled || Instant::now() >= deadline {
                    return Err(e);
                }
                // The kernel frees the port with no event to wait for:
                // retry now and then, up to the deadline above.
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    cancel: &AtomicBool,
    shared: &Arc<Shared>,
    handler: &Handler,
) {
    // Checked after the bind (see `stop_listening`: the cancel flag is set
    // before the wake-up connect, so either that connect reaches this
    // listener or this check sees the flag).
    while !cancel.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if cancel.load(Ordering::SeqCst) || shared.stopping.load(Ordering::SeqCst) {
                    break; // the wake-up connection (or a client racing it)
                }
                shared.spawn_connection(stream, handler);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // E.g. too many open files: no event says when a descriptor
            // is free again, so back off a little (until cancelled).
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait_until;

    #[test]
    fn wait_until_wakes_on_each_change_until_true_or_timeout() {
        // Another thread changes the state three times, signalling each.
        let state = Arc::new(Mutex::new(0u32));
        let writer = {
            let state = Arc::clone(&state);
            thread::spawn(move || {
                for _ in 0..3 {
                    *lock(&state) += 1;
                }
            })
        };
        assert!(wait_until(Duration::from_secs(10), || *lock(&state) == 3));
        writer.join().unwrap();
        // Nothing changes: false once the timeout has passed, not before.
        let started = Instant::now();
        assert!(!wait_until(Duration::from_millis(30), || false));
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn drop_leaves_no_thread_behind() {
        let echo: Handler = Arc::new(|mut stream, ctx| {
            let mut buf = [0u8; 64];
            while let ReadEvent::Data(n) = ctx.read_event(&mut stream, &mut buf, None) {
                let _ = send(&mut stream, &buf[..n]);
            }
        });
        let server = Server::start(echo).unwrap();
        let clients: Vec<_> = (0..5)
            .map(|_| TcpStream::connect(server.addr()).unwrap())
            .collect();
        assert!(wait_until(Duration::from_secs(2), || server
            .open_connections()
            == 5));
        let probe = server.leak_probe();
        drop(server);
        assert!(probe.released());
        drop(clients);
    }
}
