//! The driver: the one task that owns the `PoolState`, executes its actions
//! on a [`Runtime`], and feeds results back.
//!
//! The drain contract: after every input, take outputs until there are none;
//! then wait for the earliest of a dial or close finishing, a link being
//! lost, a user command, or the machine's `poll_timeout()`. Dials, closes,
//! loss watchers and hooks run on their own tasks, so nothing slow ever runs
//! inside this loop.

use std::collections::{BTreeMap, HashMap};
use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dirpool_core::{
    AttemptId, CloseFailure, CloseRequest, Command, DialDetail, DialFailure, DialRequest,
    DisconnectReason, Input, LinkLoss, Notification, OperationId, OperationReport, Output,
    PoolHealth, PoolState, ProxyReport, ServerAddr, ServerId, ServerStatus,
};
use futures::channel::{mpsc, oneshot};
use futures::future::{AbortHandle, Abortable, BoxFuture};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tracing::{Instrument, Span};

use crate::dialer::Dialer;
use crate::error::{CloseError, DialError};
use crate::event::PoolEvent;
use crate::handshake::{Client, Handshake, LinkSignal, LinkSignals, ProbeStatus};
use crate::hooks::PoolHooks;
use crate::runtime::{Runtime, before};

/// Where a command's outcome goes: the operation's, once it finishes, or
/// `None` at once for a command that starts no operation.
pub(crate) type OpReply<C> =
    oneshot::Sender<Result<Option<OpOutcome<C>>, dirpool_core::ConfigError>>;

/// A user request, from a `DirectoryPool` handle.
pub(crate) enum Request<C> {
    /// A pool command; the reply gets the outcome of the operation it
    /// starts, or `None` at once if it starts none.
    Command(Command, Option<OpReply<C>>),
    Statuses(oneshot::Sender<Vec<ServerStatus>>),
    Health(oneshot::Sender<PoolHealth>),
}

/// A finished operation, with the clients it connected.
pub(crate) struct OpOutcome<C> {
    pub(crate) report: OperationReport,
    pub(crate) newly_connected: Vec<(ServerId, Arc<C>)>,
}

/// How the pool reaches Tor, as its logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// A SOCKS proxy (a tor daemon's port); its state is inferred from
    /// dial results.
    Socks,
    /// An in-process Tor client (feature `arti`), which reports its state.
    #[cfg(feature = "arti")]
    Arti,
}

impl Route {
    /// What the proxy events' log lines call the route.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Route::Socks => "SOCKS proxy",
            #[cfg(feature = "arti")]
            Route::Arti => "Tor (arti)",
        }
    }
}

/// One state a route that knows it reports (the arti route): what the
/// core takes, and the route's own words for the log (arti's reason for a
/// blockage, its bootstrap progress).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RouteReport {
    pub(crate) report: ProxyReport,
    pub(crate) detail: String,
}

/// A route's reports: its state now first, then its changes, coalesced
/// (a latest-value stream: it holds no backlog).
pub(crate) type RouteReports = BoxStream<'static, RouteReport>;

/// What the handles read without asking the driver.
pub(crate) struct Shared<C> {
    /// Registered clients, by server.
    pub(crate) clients: Mutex<BTreeMap<ServerId, Arc<C>>>,
    pub(crate) audience: Mutex<Audience>,
    /// The first panic in a task of the pool, which stopped it.
    pub(crate) panic: Mutex<Option<(&'static str, String)>>,
    /// How the pool reaches Tor, for its log lines.
    route: Route,
}

/// The `events()` streams, and what a new one is told first.
#[derive(Default)]
pub(crate) struct Audience {
    pub(crate) subscribers: Vec<Subscriber>,
    /// The latest proxy event was [`PoolEvent::ProxyUnreachable`]: a
    /// stream made now starts with it (a pool on a Tor that is still
    /// bootstrapping is down from its start, before anyone can subscribe).
    pub(crate) proxy_down: bool,
}

impl<C> Shared<C> {
    pub(crate) fn new(route: Route) -> Self {
        Self {
            clients: Mutex::new(BTreeMap::new()),
            audience: Mutex::new(Audience::default()),
            panic: Mutex::new(None),
            route,
        }
    }

    /// The one way an event leaves the pool: logged once, in `span` (its
    /// server's, or the pool's), then told to every `events()` stream.
    /// `now` is the runtime's.
    pub(crate) fn publish(&self, span: &Span, now: Instant, event: PoolEvent) {
        span.in_scope(|| event.log(now, self.route));
        if let Ok(mut audience) = self.audience.lock() {
            match event {
                PoolEvent::ProxyUnreachable => audience.proxy_down = true,
                PoolEvent::ProxyRecovered => audience.proxy_down = false,
                _ => {}
            }
            audience
                .subscribers
                .retain_mut(|subscriber| subscriber.deliver(&event));
        }
    }

    /// Records the panic that stops the pool (the first one wins) and
    /// publishes it.
    pub(crate) fn panicked(&self, span: &Span, now: Instant, task: &'static str, message: String) {
        if let Ok(mut panic) = self.panic.lock() {
            panic.get_or_insert_with(|| (task, message.clone()));
        }
        self.publish(span, now, PoolEvent::Panicked { task, message });
    }
}

/// A panic's message, if it has one.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Events a subscriber may have waiting before further ones are counted
/// as missed instead of buffered.
pub(crate) const EVENT_BUFFER: usize = 1024;

/// One `events()` stream: a bounded buffer, and how many events it missed
/// while full (told to it as [`PoolEvent::Lagged`] once there is room).
pub(crate) struct Subscriber {
    pub(crate) tx: mpsc::Sender<PoolEvent>,
    pub(crate) missed: u64,
}

impl Subscriber {
    /// Delivers `event`; false once the stream is dropped.
    fn deliver(&mut self, event: &PoolEvent) -> bool {
        if self.missed > 0 {
            match self.tx.try_send(PoolEvent::Lagged {
                missed: self.missed,
            }) {
                Ok(()) => self.missed = 0,
                Err(e) if e.is_disconnected() => return false,
                Err(_) => {
                    self.missed += 1;
                    crate::metrics::event_dropped();
                    return true;
                }
            }
        }
        match self.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(e) if e.is_disconnected() => false,
            Err(_) => {
                self.missed += 1;
                crate::metrics::event_dropped();
                true
            }
        }
    }
}

/// What the driver's tasks report.
enum Event<C> {
    Dialed {
        attempt: AttemptId,
        server: ServerId,
        result: Result<C, DialError>,
    },
    Lost(AttemptId, LinkLoss),
    Closed(AttemptId, Result<(), CloseError>),
    /// A task panicked (its own result, if any, was reported as well).
    Panicked(&'static str, String),
}

/// A hook to run. The queue holds no client: a connected hook whose link is
/// gone by its turn is skipped (with its disconnected hook), so a slow or
/// hung hook never keeps a closed link's socket open.
enum HookCall<C> {
    Connected(AttemptId, ServerId, std::sync::Weak<C>, Span),
    Disconnected(AttemptId, ServerId, DisconnectReason, Span),
}

/// A client the driver holds: awaiting registration, registered, or stray.
struct Held<C> {
    client: Arc<C>,
    server: ServerId,
    watcher: Option<AbortHandle>,
}

enum Wake<C> {
    Event(Event<C>),
    Route(RouteReport),
    Signal(LinkSignal),
    Command(Option<Request<C>>),
    Timer,
}

pub(crate) struct Driver<H: Handshake> {
    state: PoolState,
    runtime: Arc<dyn Runtime>,
    dialer: Arc<Dialer<H>>,
    shared: Arc<Shared<H::Client>>,
    commands: mpsc::UnboundedReceiver<Request<H::Client>>,
    commands_open: bool,
    events_tx: mpsc::UnboundedSender<Event<H::Client>>,
    events_rx: mpsc::UnboundedReceiver<Event<H::Client>>,
    /// Signs of life and probe answers from the links (coalesced per link).
    signals_tx: mpsc::UnboundedSender<LinkSignal>,
    signals_rx: mpsc::UnboundedReceiver<LinkSignal>,
    hooks_tx: mpsc::UnboundedSender<HookCall<H::Client>>,
    dials: HashMap<AttemptId, AbortHandle>,
    held: HashMap<AttemptId, Held<H::Client>>,
    waiters: HashMap<OperationId, OpReply<H::Client>>,
    /// The configured servers, by `ServerId` (events and hooks name them
    /// by node id).
    servers: Arc<[Arc<ServerAddr>]>,
    timer: Option<(Instant, BoxFuture<'static, ()>)>,
    /// The pool's span, and one per server (by `ServerId`) under it: every
    /// log line about a server, from the driver or its tasks, is in its span.
    span: Span,
    server_spans: Vec<Span>,
    gauges: crate::metrics::Gauges,
    /// The route's reports of its own state, while it sends them (`None`
    /// for a SOCKS proxy, which reports nothing).
    reports: Option<RouteReports>,
    /// The route's latest report, as the core took it and the log said it.
    reported: Option<RouteReport>,
}

impl<H: Handshake> Driver<H> {
    /// Spawns the driver and the hook runner on `runtime`. `reports`: the
    /// route's reports of its own state, if it makes them.
    pub(crate) fn spawn<K: PoolHooks<H::Client>>(
        state: PoolState,
        runtime: Arc<dyn Runtime>,
        dialer: Arc<Dialer<H>>,
        shared: Arc<Shared<H::Client>>,
        hooks: K,
        hook_timeout: Duration,
        reports: Option<RouteReports>,
    ) -> mpsc::UnboundedSender<Request<H::Client>> {
        let (commands_tx, commands) = mpsc::unbounded();
        let (events_tx, events_rx) = mpsc::unbounded();
        let (signals_tx, signals_rx) = mpsc::unbounded();
        let (hooks_tx, hook_calls) = mpsc::unbounded();
        let span = match shared.route {
            Route::Socks => tracing::info_span!("dirpool", proxy = %dialer.proxy),
            #[cfg(feature = "arti")]
            Route::Arti => tracing::info_span!("dirpool", proxy = "arti"),
        };
        let server_spans = state
            .servers()
            .map(|(_, addr)| tracing::info_span!(parent: &span, "directory", server = %addr))
            .collect();
        crate::metrics::describe();
        let gauges = crate::metrics::Gauges::new(state.servers().len());
        let servers: Arc<[Arc<ServerAddr>]> = state.servers().map(|(_, a)| Arc::clone(a)).collect();
        runtime.spawn(
            run_hooks(
                hooks,
                hook_calls,
                Arc::clone(&servers),
                Arc::clone(&runtime),
                hook_timeout,
                Arc::clone(&shared),
            )
            .instrument(span.clone())
            .boxed(),
        );
        let driver = Self {
            state,
            runtime: Arc::clone(&runtime),
            dialer,
            shared,
            commands,
            commands_open: true,
            events_tx,
            events_rx,
            signals_tx,
            signals_rx,
            hooks_tx,
            dials: HashMap::new(),
            held: HashMap::new(),
            waiters: HashMap::new(),
            servers,
            timer: None,
            span: span.clone(),
            server_spans,
            gauges,
            reports,
            reported: None,
        };
        let shared = Arc::clone(&driver.shared);
        let run = AssertUnwindSafe(driver.run()).catch_unwind();
        let clock = Arc::clone(&runtime);
        let pool_span = span.clone();
        runtime.spawn(
            async move {
                // The driver's state is gone with its panic; dropping it
                // dropped every client, so every socket is closed.
                if let Err(payload) = run.await {
                    let message = panic_message(&*payload);
                    shared.panicked(&pool_span, clock.now(), "driver", message);
                }
            }
            .instrument(span)
            .boxed(),
        );
        commands_tx
    }

    /// Spawns `task`; if it panics, `on_panic` gives the event that stands
    /// for its result, and the panic is reported to the driver.
    fn spawn_guarded(
        &self,
        task: &'static str,
        future: impl std::future::Future<Output = ()> + Send + 'static,
        on_panic: impl FnOnce() -> Option<Event<H::Client>> + Send + 'static,
    ) {
        let events = self.events_tx.clone();
        let guarded = AssertUnwindSafe(future).catch_unwind();
        self.runtime.spawn(
            async move {
                if let Err(payload) = guarded.await {
                    if let Some(event) = on_panic() {
                        let _ = events.unbounded_send(event);
                    }
                    let _ = events.unbounded_send(Event::Panicked(task, panic_message(&*payload)));
                }
            }
            .boxed(),
        );
    }

    async fn run(mut self) {
        // The route's state now, before any command can dial: a pool on a
        // Tor that is still bootstrapping starts held.
        if let Some(reports) = &mut self.reports {
            match reports.next().now_or_never() {
                Some(Some(report)) => self.on_route_report(self.runtime.now(), report),
                Some(None) => self.reports = None,
                None => {}
            }
        }
        loop {
            self.drain();
            if !self.commands_open
                && self.state.operations_in_progress() == 0
                && self.dials.is_empty()
            {
                // Every handle is gone and close_all is done.
                tracing::debug!("driver stopped");
                return;
            }
            let deadline = self.state.poll_timeout();
            if self.timer.as_ref().map(|(at, _)| *at) != deadline {
                self.timer = deadline.map(|at| (at, self.runtime.sleep_until(at)));
            }
            let wake = poll_fn(|cx| self.poll_wake(cx)).await;
            let now = self.runtime.now();
            match wake {
                Wake::Event(Event::Panicked(task, message)) => {
                    self.shared.panicked(&self.span, now, task, message);
                    if self.commands_open {
                        // Stop as if every handle were dropped: close every
                        // link, then end; waiting callers get the panic.
                        self.commands_open = false;
                        self.state
                            .handle_command(now, Command::CloseAll)
                            .expect("a valid command");
                    }
                }
                Wake::Event(event) => self.on_event(now, event),
                Wake::Route(report) => self.on_route_report(now, report),
                Wake::Signal(signal) => {
                    let (attempt, answer) = signal.take();
                    let taken = if answer {
                        self.state.handle_input(now, Input::ProbeAnswered(attempt))
                    } else {
                        self.state.handle_input(now, Input::LinkActive(attempt))
                    };
                    if let Err(e) = taken {
                        tracing::trace!(error = %e, "link signal not taken");
                    }
                }
                Wake::Command(Some(command)) => self.on_command(now, command),
                Wake::Command(None) => {
                    tracing::debug!("every pool handle dropped: closing all");
                    self.commands_open = false;
                    self.state
                        .handle_command(now, Command::CloseAll)
                        .expect("a valid command");
                }
                Wake::Timer => {
                    self.timer = None;
                    self.state.handle_timeout(now);
                }
            }
        }
    }

    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake<H::Client>> {
        // Never None: the driver holds a sender.
        if let Poll::Ready(Some(event)) = self.events_rx.poll_next_unpin(cx) {
            return Poll::Ready(Wake::Event(event));
        }
        // Before commands: a state the route already reported holds (or
        // frees) the dials a command would start.
        if let Some(reports) = &mut self.reports {
            match reports.poll_next_unpin(cx) {
                Poll::Ready(Some(report)) => return Poll::Ready(Wake::Route(report)),
                // The route is gone (its client dropped): its last report stands.
                Poll::Ready(None) => self.reports = None,
                Poll::Pending => {}
            }
        }
        if let Poll::Ready(Some(signal)) = self.signals_rx.poll_next_unpin(cx) {
            return Poll::Ready(Wake::Signal(signal));
        }
        if self.commands_open {
            if let Poll::Ready(command) = self.commands.poll_next_unpin(cx) {
                return Poll::Ready(Wake::Command(command));
            }
        }
        if let Some((_, timer)) = &mut self.timer {
            if timer.poll_unpin(cx).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
        }
        Poll::Pending
    }

    fn on_command(&mut self, now: Instant, command: Request<H::Client>) {
        match command {
            Request::Command(command, reply) => match self.state.handle_command(now, command) {
                // Registered before draining: the report may come out at once.
                Ok(Some(id)) => {
                    if let Some(reply) = reply {
                        self.waiters.insert(id, reply);
                    }
                }
                Ok(None) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(None));
                    }
                }
                Err(e) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(e));
                    }
                }
            },
            Request::Statuses(reply) => {
                let _ = reply.send(self.state.statuses().collect());
            }
            Request::Health(reply) => {
                let _ = reply.send(self.state.health(now));
            }
        }
        // A command may move servers that no output names.
        self.gauges.touch_all();
    }

    /// The route reports its state: each change goes to the core once and
    /// is logged once, in the pool's span (a blockage whose reason changed
    /// is logged again; bootstrap progress only at debug level).
    fn on_route_report(&mut self, now: Instant, new: RouteReport) {
        let previous = self.reported.replace(new.clone());
        if previous.as_ref() == Some(&new) {
            return;
        }
        let changed = previous.map(|p| p.report) != Some(new.report);
        let detail = &new.detail;
        match new.report {
            ProxyReport::Blocked => tracing::warn!("Tor {detail}"),
            _ if changed => tracing::info!("Tor {detail}"),
            _ => tracing::debug!("Tor {detail}"),
        }
        if changed {
            if let Err(e) = self
                .state
                .handle_input(now, Input::ProxyReported(new.report))
            {
                tracing::debug!(error = %e, "route report not taken");
            }
        }
        // Tor not ready holds every redial, so the pool is Tor's user: it
        // asks for the bootstrap a first connect would (one at a time, each
        // within proxy_timeout; again on Tor's next change while not ready).
        #[cfg(feature = "arti")]
        if new.report.holds_dials() {
            let dialer = Arc::clone(&self.dialer);
            self.spawn_guarded(
                "bootstrap",
                async move { dialer.bootstrap_route().await }.instrument(self.span.clone()),
                || None,
            );
        }
    }

    fn on_event(&mut self, now: Instant, event: Event<H::Client>) {
        let outcome = match event {
            Event::Dialed {
                attempt,
                server,
                result,
            } => {
                self.dials.remove(&attempt);
                match result {
                    Ok(client) => {
                        self.held.insert(
                            attempt,
                            Held {
                                client: Arc::new(client),
                                server,
                                watcher: None,
                            },
                        );
                        self.state.handle_input(
                            now,
                            Input::DialFinished {
                                attempt,
                                result: Ok(()),
                                detail: None,
                            },
                        )
                    }
                    // The error rides through the machine and comes back in
                    // its DialFailed notification.
                    Err(error) => self.state.handle_input(
                        now,
                        Input::DialFinished {
                            attempt,
                            result: Err(error.failure()),
                            detail: Some(DialDetail::new(error)),
                        },
                    ),
                }
            }
            Event::Lost(attempt, loss) => self
                .state
                .handle_input(now, Input::LinkLost { attempt, loss }),
            Event::Closed(attempt, result) => {
                let result = result.map_err(|CloseError::Io(e)| CloseFailure::Io(e.kind()));
                self.state
                    .handle_input(now, Input::CloseFinished { attempt, result })
            }
            Event::Panicked(..) => Ok(()),
        };
        if let Err(e) = outcome {
            // E.g. a loss reported after the close finished: harmless.
            tracing::trace!(error = %e, "result not taken");
        }
    }

    fn drain(&mut self) {
        while let Some(output) = self.state.poll_output() {
            match output {
                Output::Dial(request) => {
                    self.gauges.touch(request.server);
                    self.start_dial(request);
                }
                Output::Abort(attempt) => {
                    if let Some(handle) = self.dials.get(&attempt) {
                        handle.abort();
                    }
                }
                Output::Close(request) => {
                    self.gauges.touch(request.server);
                    self.start_close(request);
                }
                Output::Probe(request) => self.probe(request.attempt, request.server),
                Output::Notify(notification) => {
                    match notification_server(&notification) {
                        Some(server) => self.gauges.touch(server),
                        // Pool-wide: may move servers no output names.
                        None => self.gauges.touch_all(),
                    }
                    self.on_notification(notification);
                }
                other => tracing::warn!(?other, "unknown output ignored"),
            }
        }
        self.gauges.update(&self.state);
    }

    /// The span of `server`'s log lines (the pool's if it is unknown).
    fn server_span(&self, server: ServerId) -> &Span {
        self.server_spans.get(server.index()).unwrap_or(&self.span)
    }

    fn start_dial(&mut self, request: DialRequest) {
        let (handle, registration) = AbortHandle::new_pair();
        self.dials.insert(request.attempt, handle);
        let dialer = Arc::clone(&self.dialer);
        let events = self.events_tx.clone();
        let signals = LinkSignals::new(request.attempt, self.signals_tx.clone());
        let span = tracing::info_span!(parent: self.server_span(request.server), "dial", attempt = %request.attempt);
        crate::metrics::dial_started();
        let (attempt, server) = (request.attempt, request.server);
        let task = async move {
            tracing::debug!("dialing");
            let dial = dialer.dial(
                &request.addr,
                request.credentials.as_ref(),
                request.deadline,
                signals,
            );
            let result = Abortable::new(dial, registration)
                .await
                .unwrap_or(Err(DialError::Aborted));
            let _ = events.unbounded_send(Event::Dialed {
                attempt,
                server,
                result,
            });
        };
        // A panicking dial still owes the machine its result.
        self.spawn_guarded("dial", task.instrument(span), move || {
            Some(Event::Dialed {
                attempt,
                server,
                result: Err(DialError::Aborted),
            })
        });
    }

    /// Asks `attempt`'s client for a keepalive probe.
    fn probe(&mut self, attempt: AttemptId, server: ServerId) {
        let Some(held) = self.held.get(&attempt) else {
            return;
        };
        let span = self.server_span(server).clone();
        let _entered = span.enter();
        match held.client.probe() {
            ProbeStatus::Sent => {
                crate::metrics::probe_sent();
                tracing::trace!("probe sent");
            }
            ProbeStatus::Unsupported => {
                tracing::debug!("link has no probe: watched for its end only");
                let now = self.runtime.now();
                let _ = self
                    .state
                    .handle_input(now, Input::ProbeUnsupported(attempt));
            }
            // The link task is ending; its loss is on its way.
            _ => {}
        }
    }

    fn start_close(&mut self, request: CloseRequest) {
        let Some(held) = self.held.remove(&request.attempt) else {
            // Cannot happen: every Close names a client this driver holds.
            tracing::error!(attempt = %request.attempt, "close for an unknown client");
            let now = self.runtime.now();
            let _ = self.state.handle_input(
                now,
                Input::CloseFinished {
                    attempt: request.attempt,
                    result: Ok(()),
                },
            );
            return;
        };
        if let Some(watcher) = held.watcher {
            watcher.abort();
        }
        if !request.stray {
            self.unregister(held.server);
        }
        let events = self.events_tx.clone();
        let attempt = request.attempt;
        let span = tracing::info_span!(parent: self.server_span(request.server), "close", %attempt);
        let client = held.client;
        let deadline = self.runtime.sleep_until(request.deadline);
        let task = async move {
            // A close that hangs past its deadline is dropped, and with it
            // the pool's reference to the client, so the socket can go.
            let result = before(deadline, client.close()).await.unwrap_or_else(|| {
                Err(CloseError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "close timed out",
                )))
            });
            drop(client);
            // Logged once, as the `Disconnected` event it becomes.
            let _ = events.unbounded_send(Event::Closed(attempt, result));
        };
        self.spawn_guarded("close", task.instrument(span), move || {
            Some(Event::Closed(
                attempt,
                Err(CloseError::Io(std::io::Error::other("close panicked"))),
            ))
        });
    }

    /// `server`'s node id, as events and hooks name it.
    fn node_id(&self, server: ServerId) -> &str {
        node_id(&self.servers, server)
    }

    fn unregister(&self, server: ServerId) {
        if let Ok(mut clients) = self.shared.clients.lock() {
            clients.remove(&server);
        }
    }

    fn on_notification(&mut self, notification: Notification) {
        let now = self.runtime.now();
        match notification {
            Notification::Connected {
                server, attempt, ..
            } => self.register(server, attempt),
            Notification::Disconnected {
                server,
                attempt,
                reason,
            } => {
                if let DisconnectReason::Lost(loss) = reason {
                    crate::metrics::link_lost(loss);
                }
                if let Some(held) = self.held.remove(&attempt) {
                    // A lost link: the pool never asked to close it, so stop
                    // its task (for a keepalive loss it is still reading)
                    // and release the client within the close timeout.
                    if let Some(watcher) = held.watcher {
                        watcher.abort();
                    }
                    self.unregister(held.server);
                    let client = held.client;
                    let deadline = self.runtime.sleep_until(now + self.state.close_timeout());
                    self.spawn_guarded(
                        "close",
                        async move {
                            let _ = before(deadline, client.close()).await;
                        },
                        || None,
                    );
                }
                let span = self.server_span(server).clone();
                let _ = self
                    .hooks_tx
                    .unbounded_send(HookCall::Disconnected(attempt, server, reason, span));
                let node_id = self.node_id(server).to_owned();
                self.publish(Some(server), PoolEvent::Disconnected { node_id, reason });
            }
            Notification::DialFailed {
                server,
                failure,
                retry_at,
                detail,
                ..
            } => {
                crate::metrics::dial_failed(failure);
                let error = detail
                    .and_then(|detail| detail.downcast::<DialError>())
                    // The machine's own timeout: no driver error behind it.
                    .unwrap_or_else(|| {
                        Arc::new(match failure {
                            DialFailure::TimedOut => {
                                DialError::TimedOut(self.state.connection_timeout())
                            }
                            _ => DialError::Aborted,
                        })
                    });
                let node_id = self.node_id(server).to_owned();
                self.publish(
                    Some(server),
                    PoolEvent::DialFailed {
                        node_id,
                        error,
                        retry_at,
                    },
                );
            }
            Notification::ProbeAnswered { server, rtt, .. } => {
                crate::metrics::probe_answered(rtt);
                let node_id = self.node_id(server).to_owned();
                self.publish(Some(server), PoolEvent::ProbeAnswered { node_id, rtt });
            }
            Notification::GaveUp { server, failures } => {
                let node_id = self.node_id(server).to_owned();
                self.publish(Some(server), PoolEvent::GaveUp { node_id, failures });
            }
            Notification::AllDown => self.publish(None, PoolEvent::AllDown),
            Notification::Recovered => self.publish(None, PoolEvent::Recovered),
            Notification::ProxyUnreachable => {
                self.dialer.forget_isolation_check();
                self.publish(None, PoolEvent::ProxyUnreachable);
            }
            Notification::ProxyRecovered => self.publish(None, PoolEvent::ProxyRecovered),
            Notification::AddressRejected { index, error } => {
                // Logged here, once; subscribers get it from `events()`,
                // which replays the configuration's rejections (none can
                // have subscribed yet).
                self.span.in_scope(|| {
                    PoolEvent::AddressRejected { index, error }.log(now, self.shared.route)
                });
            }
            Notification::DuplicateAddress { index, server } => {
                self.server_span(server)
                    .in_scope(|| tracing::warn!(index, "duplicate directory address ignored"));
            }
            Notification::OperationFinished(report) => self.finish(report),
            other => tracing::debug!(?other, "notification"),
        }
    }

    /// The machine registered `attempt`'s client: publish it, watch its
    /// link, run the hook.
    fn register(&mut self, server: ServerId, attempt: AttemptId) {
        let span = self.server_span(server).clone();
        let Some(held) = self.held.get_mut(&attempt) else {
            span.in_scope(|| tracing::error!(%attempt, "connected without a client"));
            return;
        };
        crate::metrics::dial_succeeded();
        if let Ok(mut clients) = self.shared.clients.lock() {
            clients.insert(server, Arc::clone(&held.client));
        }
        let (watcher, registration) = AbortHandle::new_pair();
        held.watcher = Some(watcher);
        let client = Arc::clone(&held.client);
        let events = self.events_tx.clone();
        let watch = async move {
            let closed = async move { client.closed().await };
            if let Ok(loss) = Abortable::new(closed, registration).await {
                let _ = events.unbounded_send(Event::Lost(attempt, loss));
            }
        };
        let hook_client = Arc::downgrade(&held.client);
        let link_span = tracing::info_span!(parent: &span, "link", %attempt);
        self.spawn_guarded("link", watch.instrument(link_span), move || {
            Some(Event::Lost(attempt, LinkLoss::Panicked))
        });
        let _ =
            self.hooks_tx
                .unbounded_send(HookCall::Connected(attempt, server, hook_client, span));
        let node_id = self.node_id(server).to_owned();
        self.publish(Some(server), PoolEvent::Connected { node_id });
    }

    fn finish(&mut self, report: OperationReport) {
        let Some(reply) = self.waiters.remove(&report.id) else {
            return;
        };
        let clients = self.shared.clients.lock().ok();
        let newly_connected = report
            .newly_connected
            .iter()
            .filter_map(|&server| {
                let client = clients.as_ref()?.get(&server)?;
                Some((server, Arc::clone(client)))
            })
            .collect();
        drop(clients);
        let _ = reply.send(Ok(Some(OpOutcome {
            report,
            newly_connected,
        })));
    }

    /// Logs `event` once, in `server`'s span (the pool's for pool-wide
    /// events), and tells the subscribers.
    fn publish(&self, server: Option<ServerId>, event: PoolEvent) {
        let span = server.map_or(&self.span, |server| self.server_span(server));
        self.shared.publish(span, self.runtime.now(), event);
    }
}

/// `server`'s node id in `servers` (empty for an id the pool never gave).
fn node_id(servers: &[Arc<ServerAddr>], server: ServerId) -> &str {
    servers
        .get(server.index())
        .map_or("", |addr| addr.node_id())
}

/// The server a notification is about, if it is about one.
fn notification_server(notification: &Notification) -> Option<ServerId> {
    match notification {
        Notification::Connected { server, .. }
        | Notification::Disconnected { server, .. }
        | Notification::DialFailed { server, .. }
        | Notification::ProbeAnswered { server, .. }
        | Notification::GaveUp { server, .. }
        | Notification::DuplicateAddress { server, .. } => Some(*server),
        _ => None,
    }
}

/// Runs hooks one after another, in event order, each bounded by
/// `timeout`: a hook that overruns is dropped (with whatever it holds, the
/// client included) and reported, and the next one runs. A panicking hook is
/// reported and does not stop the others.
async fn run_hooks<C: Client, K: PoolHooks<C>>(
    hooks: K,
    mut calls: mpsc::UnboundedReceiver<HookCall<C>>,
    servers: Arc<[Arc<ServerAddr>]>,
    runtime: Arc<dyn Runtime>,
    timeout: Duration,
    shared: Arc<Shared<C>>,
) {
    // Links whose connected hook was skipped: their disconnected hook is too.
    let mut skipped = std::collections::HashSet::new();
    while let Some(call) = calls.next().await {
        let deadline = runtime.sleep_until(runtime.now() + timeout);
        let (node_id, hook, span, result) = match call {
            HookCall::Connected(attempt, server, client, span) => {
                let node_id = node_id(&servers, server);
                let Some(client) = client.upgrade() else {
                    span.in_scope(|| {
                        tracing::debug!(
                            "link gone before its connected hook ran: both hooks skipped"
                        )
                    });
                    skipped.insert(attempt);
                    continue;
                };
                let run = AssertUnwindSafe(hooks.on_connected(node_id, &client)).catch_unwind();
                let result = before(deadline, run.instrument(span.clone())).await;
                (node_id, "connected", span, result)
            }
            HookCall::Disconnected(attempt, server, reason, span) => {
                if skipped.remove(&attempt) {
                    continue;
                }
                let node_id = node_id(&servers, server);
                let run = AssertUnwindSafe(hooks.on_disconnected(node_id, reason)).catch_unwind();
                let result = before(deadline, run.instrument(span.clone())).await;
                (node_id, "disconnected", span, result)
            }
        };
        let now = runtime.now();
        match result {
            Some(Ok(())) => {}
            Some(Err(payload)) => {
                let message = panic_message(&*payload);
                let event = PoolEvent::Panicked {
                    task: "hook",
                    message,
                };
                shared.publish(&span, now, event);
            }
            None => {
                let node_id = node_id.to_owned();
                shared.publish(&span, now, PoolEvent::HookTimedOut { node_id, hook });
            }
        }
    }
}
