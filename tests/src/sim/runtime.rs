//! [`SimRuntime`]: a deterministic implementation of [`dirpool::Runtime`].
//!
//! * **Virtual clock.** [`now`](SimRuntime::now) starts at the `base` given
//!   to [`SimRuntime::new`] and moves only inside
//!   [`advance_to`](SimRuntime::advance_to), [`run_for`](SimRuntime::run_for)
//!   and [`block_on`](SimRuntime::block_on). Timers live in a `BTreeMap`
//!   keyed by `(deadline, creation sequence number)`, so they fire in
//!   deadline order and equal deadlines in creation order.
//! * **Single-threaded executor.** [`spawn`](SimRuntime::spawn) only
//!   enqueues; tasks are polled on the calling thread inside the `run*` and
//!   [`block_on`](SimRuntime::block_on) calls, in FIFO order of being woken
//!   (a task woken twice before it runs is queued once). Wakers are
//!   `Arc<TaskWaker>`s through [`std::task::Wake`].
//! * **In-memory network.** [`bind`](SimRuntime::bind) puts a
//!   [`SimListener`] at an exact [`SocketAddr`];
//!   [`connect_tcp`](dirpool::Runtime::connect_tcp) makes a
//!   [`tokio::io::duplex`] pair (no tokio runtime is needed for it), hands
//!   one end to the listener and returns the other — after an optional
//!   per-address latency ([`set_connect_latency`](SimRuntime::set_connect_latency))
//!   in virtual time — or fails with [`io::ErrorKind::ConnectionRefused`].
//!
//! Nothing iterates a hash map, reads the real clock or starts a thread:
//! the same sequence of calls gives the same polls in the same order.
//!
//! Locking discipline: every lock is held only for a few bookkeeping lines;
//! no lock is held while a future is polled or dropped, or while a waker is
//! woken, so a task (or a `Drop`) may call back into the runtime freely.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use dirpool::{BoxedStream, Runtime};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::io::DuplexStream;

/// The most polls one [`run_until_idle`](SimRuntime::run_until_idle) call
/// (or one virtual instant of [`block_on`](SimRuntime::block_on)) may make
/// before it is declared a livelock.
pub const MAX_POLLS_PER_RUN: usize = 1_000_000;

/// The most steps (polls and clock jumps) one
/// [`block_on`](SimRuntime::block_on) may take.
pub const MAX_BLOCK_ON_STEPS: usize = 10_000_000;

/// The buffer size of each direction of a simulated TCP connection.
pub const DUPLEX_CAPACITY: usize = 64 * 1024;

type TaskId = u64;

/// Locks `mutex`, ignoring poisoning (a panicking test must not turn every
/// later `Drop` into a second panic).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The ids of woken tasks, in wake order, each at most once.
#[derive(Default)]
struct ReadyQueue {
    queue: VecDeque<TaskId>,
    queued: BTreeSet<TaskId>,
}

/// Wakes one task (or a `block_on` future) by queueing its id.
struct TaskWaker {
    id: TaskId,
    ready: Arc<Mutex<ReadyQueue>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut ready = lock(&self.ready);
        if ready.queued.insert(self.id) {
            ready.queue.push_back(self.id);
        }
    }
}

/// A spawned task. `future` is `None` while the task is being polled (or
/// after it panicked).
struct Task {
    future: Option<BoxFuture<'static, ()>>,
    waker: Waker,
}

#[derive(Default)]
struct Tasks {
    map: BTreeMap<TaskId, Task>,
    next_id: TaskId,
}

/// The virtual clock and its timers.
struct Clock {
    now: Instant,
    /// `(deadline, sequence)` → the waker of the last poll, if any.
    timers: BTreeMap<(Instant, u64), Option<Waker>>,
    next_seq: u64,
}

/// One bound listener.
struct Slot {
    /// Tells this binding from a later one at the same address.
    id: u64,
    up: bool,
    backlog: VecDeque<(DuplexStream, SocketAddr)>,
    acceptors: Vec<Waker>,
}

#[derive(Default)]
struct Net {
    listeners: BTreeMap<SocketAddr, Slot>,
    latency: BTreeMap<SocketAddr, Duration>,
    next_listener: u64,
    next_peer: u64,
}

struct Inner {
    base: Instant,
    clock: Mutex<Clock>,
    tasks: Mutex<Tasks>,
    ready: Arc<Mutex<ReadyQueue>>,
    net: Mutex<Net>,
    /// Set while a `run*`/`block_on`/`advance*` call drives the executor.
    driving: AtomicBool,
    /// Client ends of connections made by `connect_tcp` not dropped yet.
    open_client_ends: Arc<AtomicUsize>,
}

/// A deterministic, single-threaded [`Runtime`] with a virtual clock and an
/// in-memory network. A cheap-to-clone handle: every clone drives the same
/// simulation.
///
/// ```
/// use std::time::{Duration, Instant};
/// use dirpool::Runtime;
/// use dirpool_tests::sim::runtime::SimRuntime;
///
/// let base = Instant::now();
/// let sim = SimRuntime::new(base);
/// let hour = sim.sleep_until(base + Duration::from_secs(3600));
/// sim.block_on(hour); // returns at once: the clock jumps to the timer
/// assert_eq!(sim.now(), base + Duration::from_secs(3600));
/// ```
#[derive(Clone)]
pub struct SimRuntime(Arc<Inner>);

impl fmt::Debug for SimRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (elapsed, timers) = {
            let clock = lock(&self.0.clock);
            (
                clock.now.saturating_duration_since(self.0.base),
                clock.timers.len(),
            )
        };
        f.debug_struct("SimRuntime")
            .field("elapsed", &elapsed)
            .field("pending_tasks", &self.pending_tasks())
            .field("timers", &timers)
            .field("listeners", &lock(&self.0.net).listeners.len())
            .finish()
    }
}

/// Clears the `driving` flag when a driving call ends (or unwinds).
struct Driving<'a>(&'a AtomicBool);

impl Drop for Driving<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl SimRuntime {
    /// A simulation whose virtual clock starts at `base`, with no task, no
    /// timer and no listener.
    pub fn new(base: Instant) -> Self {
        Self(Arc::new(Inner {
            base,
            clock: Mutex::new(Clock {
                now: base,
                timers: BTreeMap::new(),
                next_seq: 0,
            }),
            tasks: Mutex::new(Tasks::default()),
            ready: Arc::new(Mutex::new(ReadyQueue::default())),
            net: Mutex::new(Net::default()),
            driving: AtomicBool::new(false),
            open_client_ends: Arc::new(AtomicUsize::new(0)),
        }))
    }

    /// The virtual now (the same as [`Runtime::now`]).
    pub fn now(&self) -> Instant {
        lock(&self.0.clock).now
    }

    /// The `base` the clock started at.
    pub fn base(&self) -> Instant {
        self.0.base
    }

    /// Virtual time since `base`.
    pub fn elapsed(&self) -> Duration {
        self.now().saturating_duration_since(self.0.base)
    }

    // ----- timers ---------------------------------------------------------

    /// A timer completing when the virtual clock reaches `deadline` (at
    /// once if it has). [`Runtime::sleep_until`] is this, boxed.
    pub fn delay_until(&self, deadline: Instant) -> Sleep {
        let mut clock = lock(&self.0.clock);
        let key = (deadline > clock.now).then(|| {
            let seq = clock.next_seq;
            clock.next_seq += 1;
            clock.timers.insert((deadline, seq), None);
            (deadline, seq)
        });
        Sleep {
            rt: Arc::downgrade(&self.0),
            deadline,
            key,
        }
    }

    /// A timer completing `duration` after the virtual now.
    pub fn sleep(&self, duration: Duration) -> Sleep {
        self.delay_until(self.now() + duration)
    }

    /// The earliest pending timer's deadline.
    pub fn next_timer(&self) -> Option<Instant> {
        lock(&self.0.clock)
            .timers
            .first_key_value()
            .map(|(&(deadline, _), _)| deadline)
    }

    /// Fires the timers of the earliest deadline, if it is at or before
    /// `limit` (any, without one): moves the clock to that deadline (never
    /// backwards) and wakes them in creation order. Runs nothing.
    fn fire_next(&self, limit: Option<Instant>) -> bool {
        let wakers = {
            let mut clock = lock(&self.0.clock);
            let Some((&(deadline, _), _)) = clock.timers.first_key_value() else {
                return false;
            };
            if limit.is_some_and(|limit| deadline > limit) {
                return false;
            }
            if deadline > clock.now {
                clock.now = deadline;
            }
            let mut wakers = Vec::new();
            while let Some(entry) = clock.timers.first_entry() {
                if entry.key().0 != deadline {
                    break;
                }
                wakers.extend(entry.remove());
            }
            wakers
        };
        for waker in wakers {
            waker.wake();
        }
        true
    }

    // ----- executor -------------------------------------------------------

    /// Enqueues `future` as a task; it runs only inside the `run*`,
    /// `advance_to` and `block_on` calls. (The same as [`Runtime::spawn`],
    /// without boxing first.)
    pub fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let future = future.boxed();
        let waker = {
            let mut tasks = lock(&self.0.tasks);
            let id = tasks.next_id;
            tasks.next_id += 1;
            let waker = Waker::from(Arc::new(TaskWaker {
                id,
                ready: Arc::clone(&self.0.ready),
            }));
            tasks.map.insert(
                id,
                Task {
                    future: Some(future),
                    waker: waker.clone(),
                },
            );
            waker
        };
        waker.wake();
    }

    /// Spawned tasks not finished yet.
    pub fn pending_tasks(&self) -> usize {
        lock(&self.0.tasks).map.len()
    }

    /// Client ends of in-memory connections (what
    /// [`connect_tcp`](Runtime::connect_tcp) returned) not dropped yet: the
    /// sockets the code under test still holds.
    pub fn open_client_streams(&self) -> usize {
        self.0.open_client_ends.load(Ordering::SeqCst)
    }

    /// A fresh id from the task counter (for `block_on`'s own future).
    fn fresh_id(&self) -> TaskId {
        let mut tasks = lock(&self.0.tasks);
        let id = tasks.next_id;
        tasks.next_id += 1;
        id
    }

    fn pop_ready(&self) -> Option<TaskId> {
        let mut ready = lock(&self.0.ready);
        let id = ready.queue.pop_front()?;
        ready.queued.remove(&id);
        Some(id)
    }

    /// Polls task `id` once if it exists; whether it did.
    fn poll_task(&self, id: TaskId) -> bool {
        let (mut future, waker) = {
            let mut tasks = lock(&self.0.tasks);
            let Some(task) = tasks.map.get_mut(&id) else {
                return false;
            };
            let Some(future) = task.future.take() else {
                return false;
            };
            (future, task.waker.clone())
        };
        let mut cx = Context::from_waker(&waker);
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(()) => {
                let task = lock(&self.0.tasks).map.remove(&id);
                drop(task);
                drop(future);
            }
            Poll::Pending => {
                if let Some(task) = lock(&self.0.tasks).map.get_mut(&id) {
                    task.future = Some(future);
                }
            }
        }
        true
    }

    fn enter(&self, what: &str) -> Driving<'_> {
        assert!(
            !self.0.driving.swap(true, Ordering::SeqCst),
            "SimRuntime::{what} called while the simulation is already being driven \
             (from inside a simulated task or a block_on future?)"
        );
        Driving(&self.0.driving)
    }

    fn run_ready(&self) -> usize {
        let mut polls = 0;
        while let Some(id) = self.pop_ready() {
            if self.poll_task(id) {
                polls += 1;
                assert!(
                    polls <= MAX_POLLS_PER_RUN,
                    "SimRuntime livelock: more than {MAX_POLLS_PER_RUN} polls without \
                     becoming idle at virtual time +{:?} ({} tasks pending)",
                    self.elapsed(),
                    self.pending_tasks()
                );
            }
        }
        polls
    }

    /// Polls ready tasks until none is ready, without moving the clock;
    /// the number of polls made.
    ///
    /// # Panics
    /// After [`MAX_POLLS_PER_RUN`] polls (a livelock: tasks that keep
    /// waking each other), or if called from inside a simulated task.
    pub fn run_until_idle(&self) -> usize {
        let _driving = self.enter("run_until_idle");
        self.run_ready()
    }

    /// Runs ready tasks, then moves the clock to `t` one timer deadline at
    /// a time: for each distinct deadline at or before `t`, in order, the
    /// clock is set to it, its timers are woken in creation order and the
    /// tasks run until idle; finally the clock is set to `t`. The clock
    /// never goes backwards: a `t` in the past only runs the ready tasks.
    ///
    /// # Panics
    /// As [`run_until_idle`](Self::run_until_idle).
    pub fn advance_to(&self, t: Instant) {
        let _driving = self.enter("advance_to");
        self.run_ready();
        while self.fire_next(Some(t)) {
            self.run_ready();
        }
        let mut clock = lock(&self.0.clock);
        if t > clock.now {
            clock.now = t;
        }
    }

    /// [`advance_to`](Self::advance_to)`(now + d)`.
    ///
    /// # Panics
    /// As [`run_until_idle`](Self::run_until_idle).
    pub fn run_for(&self, d: Duration) {
        self.advance_to(self.now() + d);
    }

    /// Drives `f` to completion on the calling thread, together with the
    /// spawned tasks (`f` is polled in wake order like a task). Whenever
    /// nothing is ready and `f` is not done, the clock jumps to the next
    /// timer.
    ///
    /// # Panics
    /// If `f` is not done while no task is ready and no timer is pending (a
    /// deadlock); after [`MAX_POLLS_PER_RUN`] polls at one virtual instant
    /// (a livelock) or [`MAX_BLOCK_ON_STEPS`] steps in all; if called from
    /// inside a simulated task.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        let _driving = self.enter("block_on");
        let main = self.fresh_id();
        let waker = Waker::from(Arc::new(TaskWaker {
            id: main,
            ready: Arc::clone(&self.0.ready),
        }));
        let mut cx = Context::from_waker(&waker);
        let mut f = pin!(f);
        waker.wake_by_ref();
        let mut steps = 0usize;
        let mut polls_here = 0usize;
        loop {
            steps += 1;
            assert!(
                steps <= MAX_BLOCK_ON_STEPS,
                "SimRuntime::block_on: not done after {MAX_BLOCK_ON_STEPS} steps \
                 (virtual time +{:?}, {} tasks pending)",
                self.elapsed(),
                self.pending_tasks()
            );
            match self.pop_ready() {
                Some(id) if id == main => {
                    polls_here += 1;
                    if let Poll::Ready(output) = f.as_mut().poll(&mut cx) {
                        return output;
                    }
                }
                Some(id) => {
                    if self.poll_task(id) {
                        polls_here += 1;
                    }
                }
                None => {
                    assert!(
                        self.fire_next(None),
                        "SimRuntime::block_on: deadlock: the future is not done, no task \
                         is ready and no timer is pending (virtual time +{:?}, {} tasks \
                         pending)",
                        self.elapsed(),
                        self.pending_tasks()
                    );
                    polls_here = 0;
                }
            }
            assert!(
                polls_here <= MAX_POLLS_PER_RUN,
                "SimRuntime::block_on: livelock: more than {MAX_POLLS_PER_RUN} polls \
                 without becoming idle at virtual time +{:?} ({} tasks pending)",
                self.elapsed(),
                self.pending_tasks()
            );
        }
    }

    /// Drops every task, timer and listener (and forgets latencies), e.g.
    /// at the end of a simulation: tasks hold handles to the runtime, so
    /// without this a simulation with pending tasks is never freed. The
    /// clock stays where it is; the runtime can be used again.
    ///
    /// # Panics
    /// If called from inside a simulated task.
    pub fn shutdown(&self) {
        let _driving = self.enter("shutdown");
        // Dropping a task may drop (or even spawn) others: repeat.
        for _ in 0..1000 {
            let tasks = std::mem::take(&mut lock(&self.0.tasks).map);
            if tasks.is_empty() {
                break;
            }
            drop(tasks);
        }
        let timers = std::mem::take(&mut lock(&self.0.clock).timers);
        drop(timers);
        let (listeners, latency) = {
            let mut net = lock(&self.0.net);
            (
                std::mem::take(&mut net.listeners),
                std::mem::take(&mut net.latency),
            )
        };
        let wakers: Vec<Waker> = listeners
            .into_values()
            .flat_map(|slot| slot.acceptors)
            .collect();
        drop(latency);
        for waker in wakers {
            waker.wake();
        }
        let mut ready = lock(&self.0.ready);
        ready.queue.clear();
        ready.queued.clear();
    }

    // ----- network --------------------------------------------------------

    /// Binds a listener at `addr` (up).
    ///
    /// # Errors
    /// [`io::ErrorKind::AddrInUse`] if a listener is bound there already.
    pub fn try_bind(&self, addr: SocketAddr) -> io::Result<SimListener> {
        let mut net = lock(&self.0.net);
        if net.listeners.contains_key(&addr) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("simulated address {addr} is already bound"),
            ));
        }
        let id = net.next_listener;
        net.next_listener += 1;
        net.listeners.insert(
            addr,
            Slot {
                id,
                up: true,
                backlog: VecDeque::new(),
                acceptors: Vec::new(),
            },
        );
        Ok(SimListener {
            rt: Arc::downgrade(&self.0),
            addr,
            id,
        })
    }

    /// Binds a listener at `addr` (up).
    ///
    /// # Panics
    /// If a listener is bound there already (see [`try_bind`](Self::try_bind)).
    pub fn bind(&self, addr: SocketAddr) -> SimListener {
        self.try_bind(addr)
            .unwrap_or_else(|e| panic!("SimRuntime::bind: {e}"))
    }

    /// Whether a listener is bound at `addr` (up or down).
    pub fn is_bound(&self, addr: SocketAddr) -> bool {
        lock(&self.0.net).listeners.contains_key(&addr)
    }

    /// Makes every later [`connect_tcp`](Runtime::connect_tcp) to `addr`
    /// take `latency` of virtual time before it connects or is refused
    /// (zero, the default, resolves at the first poll).
    pub fn set_connect_latency(&self, addr: SocketAddr, latency: Duration) {
        let mut net = lock(&self.0.net);
        if latency.is_zero() {
            net.latency.remove(&addr);
        } else {
            net.latency.insert(addr, latency);
        }
    }

    /// The connect latency of `addr`.
    pub fn connect_latency(&self, addr: SocketAddr) -> Duration {
        lock(&self.0.net)
            .latency
            .get(&addr)
            .copied()
            .unwrap_or_default()
    }

    /// Connects to the listener at `addr`, now: the client's end, or
    /// `ConnectionRefused`.
    fn deliver(&self, addr: SocketAddr) -> io::Result<BoxedStream> {
        let (client, server) = tokio::io::duplex(DUPLEX_CAPACITY);
        let acceptors = {
            let mut net = lock(&self.0.net);
            let peer = fake_peer(net.next_peer);
            match net.listeners.get_mut(&addr) {
                Some(slot) if slot.up => {
                    slot.backlog.push_back((server, peer));
                    let acceptors = std::mem::take(&mut slot.acceptors);
                    net.next_peer += 1;
                    acceptors
                }
                _ => {
                    drop(net);
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("connection refused: nothing listens on {addr} (simulated)"),
                    ));
                }
            }
        };
        for waker in acceptors {
            waker.wake();
        }
        self.0.open_client_ends.fetch_add(1, Ordering::SeqCst);
        Ok(Box::pin(CountedStream {
            inner: client,
            open: Arc::clone(&self.0.open_client_ends),
        }))
    }
}

/// A client end, counted in [`SimRuntime::open_client_streams`] until it
/// is dropped.
struct CountedStream {
    inner: DuplexStream,
    open: Arc<AtomicUsize>,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl tokio::io::AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The `n`th fake client address: 10.0.0.1:49152 onwards.
fn fake_peer(n: u64) -> SocketAddr {
    let port = u16::try_from(49_152 + n % 16_384).unwrap_or(u16::MAX);
    let host = u32::try_from(n / 16_384).unwrap_or(0);
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(0x0a00_0001_u32.wrapping_add(host)),
        port,
    ))
}

impl Runtime for SimRuntime {
    fn now(&self) -> Instant {
        SimRuntime::now(self)
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        self.delay_until(deadline).boxed()
    }

    /// Connects in memory after the address's connect latency; the
    /// listener is looked up when the latency has passed.
    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxedStream>> {
        let latency = self.delay_until(self.now() + self.connect_latency(addr));
        let rt = Arc::downgrade(&self.0);
        async move {
            latency.await;
            match rt.upgrade() {
                Some(inner) => SimRuntime(inner).deliver(addr),
                None => Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "the simulation is gone",
                )),
            }
        }
        .boxed()
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) {
        SimRuntime::spawn(self, future);
    }
}

/// A virtual-clock timer, from [`SimRuntime::delay_until`] or
/// [`SimRuntime::sleep`]. Dropping it removes its timer. If its simulation
/// is gone it never completes.
#[derive(Debug)]
#[must_use = "a timer does nothing unless awaited"]
pub struct Sleep {
    rt: Weak<Inner>,
    deadline: Instant,
    /// Its entry in the timer map, while it may be there.
    key: Option<(Instant, u64)>,
}

impl Sleep {
    /// When it completes.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(key) = self.key else {
            return Poll::Ready(());
        };
        let Some(inner) = self.rt.upgrade() else {
            return Poll::Pending;
        };
        let mut clock = lock(&inner.clock);
        if clock.now >= self.deadline {
            let entry = clock.timers.remove(&key);
            drop(clock);
            drop(entry);
            self.key = None;
            return Poll::Ready(());
        }
        let slot = clock.timers.entry(key).or_insert(None);
        match slot {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let (Some(key), Some(inner)) = (self.key.take(), self.rt.upgrade()) {
            let entry = lock(&inner.clock).timers.remove(&key);
            drop(entry);
        }
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}

/// A listener of the in-memory network, from [`SimRuntime::bind`]. Closing
/// ([`close`](Self::close)) or dropping it unbinds its address.
#[derive(Debug)]
pub struct SimListener {
    rt: Weak<Inner>,
    addr: SocketAddr,
    id: u64,
}

impl SimListener {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next connection and its (fake) peer address; `None` once the
    /// listener is closed. The future does not borrow the listener.
    pub fn accept(&self) -> Accept {
        Accept {
            rt: self.rt.clone(),
            addr: self.addr,
            id: self.id,
        }
    }

    /// Brings it up or down. While down, connects are refused; going down
    /// drops the connections not accepted yet (their clients see EOF).
    pub fn set_up(&self, up: bool) {
        let Some(inner) = self.rt.upgrade() else {
            return;
        };
        let dropped = {
            let mut net = lock(&inner.net);
            match net.listeners.get_mut(&self.addr) {
                Some(slot) if slot.id == self.id => {
                    slot.up = up;
                    if up {
                        VecDeque::new()
                    } else {
                        std::mem::take(&mut slot.backlog)
                    }
                }
                _ => VecDeque::new(),
            }
        };
        drop(dropped);
    }

    /// Whether it accepts connections.
    pub fn is_up(&self) -> bool {
        self.rt.upgrade().is_some_and(|inner| {
            lock(&inner.net)
                .listeners
                .get(&self.addr)
                .is_some_and(|slot| slot.id == self.id && slot.up)
        })
    }

    /// Unbinds it: pending connections are dropped, pending
    /// [`accept`](Self::accept)s return `None`, connects are refused.
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for SimListener {
    fn drop(&mut self) {
        let Some(inner) = self.rt.upgrade() else {
            return;
        };
        let slot = {
            let mut net = lock(&inner.net);
            match net.listeners.get(&self.addr) {
                Some(slot) if slot.id == self.id => net.listeners.remove(&self.addr),
                _ => None,
            }
        };
        if let Some(slot) = slot {
            drop(slot.backlog);
            for waker in slot.acceptors {
                waker.wake();
            }
        }
    }
}

/// The future of [`SimListener::accept`].
#[derive(Debug)]
#[must_use = "accepting does nothing unless awaited"]
pub struct Accept {
    rt: Weak<Inner>,
    addr: SocketAddr,
    id: u64,
}

impl Future for Accept {
    type Output = Option<(DuplexStream, SocketAddr)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.rt.upgrade() else {
            return Poll::Ready(None);
        };
        let mut net = lock(&inner.net);
        let Some(slot) = net
            .listeners
            .get_mut(&self.addr)
            .filter(|slot| slot.id == self.id)
        else {
            return Poll::Ready(None);
        };
        if let Some(connection) = slot.backlog.pop_front() {
            return Poll::Ready(Some(connection));
        }
        if !slot.acceptors.iter().any(|w| w.will_wake(cx.waker())) {
            slot.acceptors.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use dirpool::{Config, DirectoryPool, PoolEvent, RawStream};
    use dirpool_core::{Entropy, IsolationToken};
    use futures::StreamExt;
    use futures::channel::{mpsc, oneshot};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Log = Arc<Mutex<Vec<String>>>;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn timers_fire_in_deadline_order_and_equal_deadlines_in_creation_order() {
        let base = Instant::now();
        let sim = SimRuntime::new(base);
        let log: Log = Arc::default();
        // Created in this order; spawned in reverse.
        let timers = vec![
            ("c", sim.delay_until(base + secs(3))),
            ("tie-first", sim.delay_until(base + secs(2))),
            ("a", sim.delay_until(base + secs(1))),
            ("tie-second", sim.delay_until(base + secs(2))),
        ];
        for (name, timer) in timers.into_iter().rev() {
            let log = Arc::clone(&log);
            let rt = sim.clone();
            sim.spawn(async move {
                timer.await;
                log.lock()
                    .unwrap()
                    .push(format!("{name}@{:?}", rt.elapsed()));
            });
        }
        assert_eq!(sim.run_until_idle(), 4);
        assert_eq!(sim.next_timer(), Some(base + secs(1)));
        sim.advance_to(base + secs(10));
        assert_eq!(
            *log.lock().unwrap(),
            ["a@1s", "tie-first@2s", "tie-second@2s", "c@3s"]
        );
        assert_eq!(sim.next_timer(), None);
        assert_eq!(sim.pending_tasks(), 0);
        assert_eq!(sim.now(), base + secs(10));
    }

    #[test]
    fn the_clock_moves_only_when_driven_and_jumps_to_the_next_timer() {
        let base = Instant::now();
        let sim = SimRuntime::new(base);
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        let rt = sim.clone();
        sim.spawn(async move {
            rt.sleep(secs(5)).await;
            flag.store(true, Ordering::SeqCst);
        });
        sim.run_until_idle();
        assert_eq!(sim.now(), base, "running tasks does not move the clock");
        sim.run_for(Duration::from_millis(4999));
        assert!(!done.load(Ordering::SeqCst));
        sim.run_for(Duration::from_millis(1));
        assert!(done.load(Ordering::SeqCst));
        assert_eq!(sim.elapsed(), secs(5));
        // The past is a no-op.
        sim.advance_to(base);
        assert_eq!(sim.elapsed(), secs(5));
        // A one-hour sleep takes no real time.
        let real = Instant::now();
        let rt: Arc<dyn Runtime> = Arc::new(sim.clone());
        sim.block_on(rt.sleep_until(rt.now() + secs(3600)));
        assert_eq!(sim.elapsed(), secs(3605));
        assert!(real.elapsed() < Duration::from_secs(1));
        // A dropped timer does not hold the clock.
        let dropped = sim.sleep(secs(1));
        assert_eq!(sim.next_timer(), Some(sim.now() + secs(1)));
        drop(dropped);
        assert_eq!(sim.next_timer(), None);
    }

    #[test]
    fn a_task_woken_twice_before_it_runs_is_polled_once() {
        let sim = SimRuntime::new(Instant::now());
        let (tx, mut rx) = mpsc::unbounded::<u32>();
        let got: Log = Arc::default();
        let seen = Arc::clone(&got);
        sim.spawn(async move {
            while let Some(n) = rx.next().await {
                seen.lock().unwrap().push(n.to_string());
            }
        });
        assert_eq!(sim.run_until_idle(), 1);
        tx.unbounded_send(1).unwrap();
        tx.unbounded_send(2).unwrap();
        assert_eq!(sim.run_until_idle(), 1, "two wakes, one poll");
        drop(tx);
        assert_eq!(sim.run_until_idle(), 1);
        assert_eq!(*got.lock().unwrap(), ["1", "2"]);
        assert_eq!(sim.pending_tasks(), 0);
    }

    #[test]
    fn spawned_tasks_talk_through_channels() {
        let sim = SimRuntime::new(Instant::now());
        let (tx, mut rx) = mpsc::unbounded::<u32>();
        let (done_tx, done_rx) = oneshot::channel::<u32>();
        let rt = sim.clone();
        sim.spawn(async move {
            for n in 1..=3 {
                rt.sleep(Duration::from_millis(10)).await;
                tx.unbounded_send(n).unwrap();
            }
        });
        sim.spawn(async move {
            let mut sum = 0;
            while let Some(n) = rx.next().await {
                sum += n;
            }
            done_tx.send(sum).unwrap();
        });
        assert_eq!(sim.block_on(done_rx).unwrap(), 6);
        assert_eq!(sim.elapsed(), Duration::from_millis(30));
        assert_eq!(sim.pending_tasks(), 0);
    }

    #[test]
    fn a_connection_to_a_listener_is_a_duplex_pipe_both_ways() {
        let sim = SimRuntime::new(Instant::now());
        let listener = sim.bind(addr("10.1.1.1:9050"));
        let (peer_tx, peer_rx) = oneshot::channel();
        sim.spawn(async move {
            let (mut stream, peer) = listener.accept().await.unwrap();
            peer_tx.send(peer).unwrap();
            let mut buf = [0u8; 4];
            stream.read_exact(&mut buf).await.unwrap();
            stream.write_all(&buf.to_ascii_uppercase()).await.unwrap();
            stream.shutdown().await.unwrap();
        });
        let rt = sim.clone();
        let (reply, peer) = sim.block_on(async move {
            let mut stream = Runtime::connect_tcp(&rt, addr("10.1.1.1:9050"))
                .await
                .unwrap();
            stream.write_all(b"ping").await.unwrap();
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).await.unwrap();
            (reply, peer_rx.await.unwrap())
        });
        assert_eq!(reply, b"PING");
        assert_eq!(peer, addr("10.0.0.1:49152"));
        assert_eq!(sim.elapsed(), Duration::ZERO);
        assert_eq!(sim.pending_tasks(), 0);
    }

    fn refused(sim: &SimRuntime, to: SocketAddr) -> bool {
        let rt = sim.clone();
        match sim.block_on(async move { Runtime::connect_tcp(&rt, to).await }) {
            Ok(_) => false,
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
                true
            }
        }
    }

    #[test]
    fn unbound_down_and_closed_addresses_refuse() {
        let sim = SimRuntime::new(Instant::now());
        let at = addr("10.1.1.1:5222");
        assert!(refused(&sim, at), "nothing bound");
        let listener = sim.bind(at);
        assert!(sim.try_bind(at).is_err(), "already bound");
        assert!(!refused(&sim, at));
        // Going down refuses new connects and drops the unaccepted one.
        let rt = sim.clone();
        let mut pending = sim.block_on(async move { rt.connect_tcp(at).await.unwrap() });
        listener.set_up(false);
        assert!(!listener.is_up());
        assert!(refused(&sim, at), "down");
        let mut buf = [0u8; 1];
        assert_eq!(sim.block_on(pending.read(&mut buf)).unwrap(), 0, "EOF");
        listener.set_up(true);
        assert!(!refused(&sim, at), "up again");
        // Closing ends pending accepts and unbinds.
        let accept = listener.accept();
        sim.block_on(accept).expect("the connection made while up");
        let accept = listener.accept();
        listener.close();
        assert!(sim.block_on(accept).is_none());
        assert!(!sim.is_bound(at));
        assert!(refused(&sim, at), "closed");
        let _again = sim.bind(at);
    }

    #[test]
    fn connect_latency_passes_in_virtual_time() {
        let base = Instant::now();
        let sim = SimRuntime::new(base);
        let up = addr("10.1.1.1:1");
        let nothing = addr("10.1.1.2:1");
        let _listener = sim.bind(up);
        sim.set_connect_latency(up, Duration::from_millis(250));
        sim.set_connect_latency(nothing, Duration::from_millis(700));
        let rt = sim.clone();
        sim.block_on(async move { rt.connect_tcp(up).await.unwrap() });
        assert_eq!(sim.elapsed(), Duration::from_millis(250));
        assert!(refused(&sim, nothing));
        assert_eq!(sim.elapsed(), Duration::from_millis(950));
        sim.set_connect_latency(up, Duration::ZERO);
        let rt = sim.clone();
        sim.block_on(async move { rt.connect_tcp(up).await.unwrap() });
        assert_eq!(sim.elapsed(), Duration::from_millis(950));
    }

    /// Servers, clients, timers and channels, logging every step.
    fn scenario() -> Vec<String> {
        let base = Instant::now();
        let sim = SimRuntime::new(base);
        let log: Log = Arc::default();
        let say = {
            let log = Arc::clone(&log);
            let sim = sim.clone();
            move |line: String| {
                log.lock()
                    .unwrap()
                    .push(format!("{:?} {line}", sim.elapsed()))
            }
        };
        for s in 0..3u16 {
            let listener = sim.bind(SocketAddr::from(([10, 2, 0, 1], 1000 + s)));
            sim.set_connect_latency(listener.addr(), Duration::from_millis(u64::from(s) * 7));
            let say = say.clone();
            let rt = sim.clone();
            sim.spawn(async move {
                while let Some((mut stream, peer)) = listener.accept().await {
                    say(format!("server {s} accepts {peer}"));
                    let say = say.clone();
                    let delay = rt.sleep(Duration::from_millis(3 * u64::from(s)));
                    rt.spawn(async move {
                        let mut buf = [0u8; 1];
                        while stream.read(&mut buf).await.unwrap() == 1 {
                            delay_then(&say, format!("server {s} got {}", buf[0])).await;
                        }
                        delay.await;
                        say(format!("server {s} sees EOF"));
                    });
                }
            });
        }
        let (tx, mut rx) = mpsc::unbounded::<String>();
        for c in 0..5u8 {
            let rt = sim.clone();
            let tx = tx.clone();
            let say = say.clone();
            sim.spawn(async move {
                rt.sleep(Duration::from_millis(u64::from(c % 3) * 5)).await;
                let to = SocketAddr::from(([10, 2, 0, 1], 1000 + u16::from(c % 4)));
                match Runtime::connect_tcp(&rt, to).await {
                    Ok(mut stream) => {
                        say(format!("client {c} connected to {to}"));
                        stream.write_all(&[c, c + 10]).await.unwrap();
                        rt.sleep(Duration::from_millis(2)).await;
                        drop(stream);
                        tx.unbounded_send(format!("client {c} done")).unwrap();
                    }
                    Err(e) => {
                        tx.unbounded_send(format!("client {c}: {:?}", e.kind()))
                            .unwrap();
                    }
                }
            });
        }
        drop(tx);
        let say2 = say.clone();
        sim.block_on(async move {
            while let Some(line) = rx.next().await {
                say2(line);
            }
        });
        sim.run_for(secs(1));
        say(format!("pending {}", sim.pending_tasks()));
        sim.shutdown();
        log.lock().unwrap().clone()
    }

    async fn delay_then(say: &impl Fn(String), line: String) {
        futures::future::ready(()).await;
        say(line);
    }

    #[test]
    fn the_same_scenario_gives_the_same_event_log() {
        let first = scenario();
        let second = scenario();
        assert!(first.len() > 20, "{first:#?}");
        assert_eq!(first, second);
        assert!(
            first.iter().any(|l| l.contains("ConnectionRefused")),
            "{first:#?}"
        );
    }

    #[test]
    #[should_panic(expected = "deadlock")]
    fn block_on_detects_a_deadlock() {
        let sim = SimRuntime::new(Instant::now());
        let (_tx, rx) = oneshot::channel::<()>();
        let _ = sim.block_on(rx);
    }

    #[test]
    #[should_panic(expected = "livelock")]
    fn run_until_idle_detects_a_livelock() {
        let sim = SimRuntime::new(Instant::now());
        sim.spawn(futures::future::poll_fn(|cx| {
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        }));
        sim.run_until_idle();
    }

    #[test]
    #[should_panic(expected = "already being driven")]
    fn driving_from_inside_a_task_is_refused() {
        let sim = SimRuntime::new(Instant::now());
        let rt = sim.clone();
        sim.block_on(async move {
            rt.run_until_idle();
        });
    }

    #[test]
    fn the_real_pool_runs_on_the_simulated_runtime() {
        let base = Instant::now();
        let sim = SimRuntime::new(base);
        let mut config = Config::new(["dir.example:5222"]);
        config.proxy = addr("127.0.0.1:9050"); // nothing bound
        let pool = DirectoryPool::builder(config, RawStream)
            .entropy(Entropy {
                isolation_token: IsolationToken::from_bytes(*b"dirpool-simtoken"),
                jitter_seed: 1,
            })
            .spawn(sim.clone())
            .expect("valid config");
        let real = Instant::now();
        let connected = sim.block_on(async {
            let mut events = pool.events();
            let connected = pool.connect_all_parallel().await.unwrap();
            while let Some(event) = events.next().await {
                if matches!(event, PoolEvent::ProxyUnreachable) {
                    return connected;
                }
            }
            panic!("the event stream ended without ProxyUnreachable");
        });
        assert_eq!(connected, 0);
        assert!(real.elapsed() < Duration::from_secs(5));
        assert!(
            sim.elapsed() < secs(1),
            "refused at once: {:?}",
            sim.elapsed()
        );
        // Dropping the last handle stops the driver and its tasks.
        drop(pool);
        sim.run_for(secs(60));
        assert_eq!(sim.pending_tasks(), 0);
    }
}
