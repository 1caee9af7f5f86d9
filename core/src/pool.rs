//! `PoolState`: the pool as a pure state machine.
//!
//! Commands and results go in with the current time; actions and
//! notifications come out of [`PoolState::poll_output`]; the next deadline
//! comes out of [`PoolState::poll_timeout`]. Nothing here reads a clock,
//! draws randomness or touches the network.

mod links;
mod timers;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addr::{AddrError, ServerAddr};
use crate::backoff::{Backoff, JitterRng};
use crate::command::{Command, Input};
use crate::config::{
    ConfigError, Entropy, KeepalivePolicy, MaintenancePolicy, PoolConfig, RetryPolicy,
};
use crate::failure::{CloseFailure, DialFailure, FailureScope, LinkLoss};
use crate::isolation::{SocksCredentials, StreamIsolation};
use crate::output::{
    AttemptId, CloseRequest, DialRequest, DisconnectReason, Notification, OperationEnd,
    OperationId, OperationKind, OperationReport, Output, ProbeRequest, ServerId,
};
use crate::status::{
    LastError, LinkCounts, PoolHealth, ProxyState, ServerError, ServerHealth, ServerState,
    ServerStatus,
};
use links::{Link, LinkState, Links};
use timers::{TimerKey, Timers};

/// A result or loss the machine cannot accept: the driver named an attempt
/// it never got, or reported something impossible for it. The machine's
/// state is unchanged.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// No such attempt is pending (never issued, or already finished).
    #[error("unknown attempt {0} (never issued, or its result was already reported)")]
    UnknownAttempt(AttemptId),
    /// The attempt exists but cannot take this input in its current state.
    #[error("attempt {attempt} cannot take this input while {state}")]
    UnexpectedInput {
        /// The attempt.
        attempt: AttemptId,
        /// What it is doing.
        state: &'static str,
    },
}

/// A configured entry that is not dialed.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedEntry {
    /// Position in the configured list.
    pub index: usize,
    /// The entry as configured.
    pub entry: String,
    /// Why.
    pub reason: Rejection,
}

/// Why a configured entry is not dialed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// The address is malformed.
    Malformed(AddrError),
    /// It names a server listed earlier.
    Duplicate(ServerId),
}

/// Where a server stands: one variant per state, each carrying what that
/// state needs, deadline included (the server's one timer, keyed
/// [`TimerKey::Server`], is set to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing scheduled: dialed only when a command asks.
    Idle,
    /// Maintenance spent its retry budget on this server: dialed only when
    /// a command asks or maintenance restarts.
    GaveUp,
    /// Waits `until` before it is redialed.
    BackingOff { until: Instant },
    /// Queued for the proxy: dialed once a probe dial gets through.
    WaitingForProxy,
    /// Dial `attempt` in flight; abandoned at `until`.
    Dialing { attempt: AttemptId, until: Instant },
    /// Connected through `attempt`'s link since `since`.
    Connected {
        attempt: AttemptId,
        since: Instant,
        /// The last sign of life: a line read, a probe answered.
        last_active: Instant,
        watch: Watch,
    },
    /// Close of `attempt`'s link requested; given up on at `until`.
    Closing {
        attempt: AttemptId,
        until: Instant,
        /// A connect command arrived while closing: dial as soon as the
        /// close ends (the command waits for that dial).
        redial: bool,
    },
}

impl State {
    /// Not dialing, connected or closing: free to be dialed.
    fn is_down(self) -> bool {
        matches!(
            self,
            State::Idle | State::GaveUp | State::BackingOff { .. } | State::WaitingForProxy
        )
    }

    /// A connected server's keepalive state: its last sign of life and its
    /// watch.
    fn keepalive(&mut self) -> Option<(&mut Instant, &mut Watch)> {
        match self {
            State::Connected {
                last_active, watch, ..
            } => Some((last_active, watch)),
            _ => None,
        }
    }

    /// What [`status`](PoolState::status) shows for it.
    fn public(self) -> ServerState {
        match self {
            State::Idle => ServerState::Idle,
            State::GaveUp => ServerState::GaveUp,
            State::BackingOff { .. } => ServerState::WaitingRetry,
            State::WaitingForProxy => ServerState::WaitingForProxy,
            State::Dialing { .. } => ServerState::Dialing,
            State::Connected { .. } => ServerState::Connected,
            State::Closing { .. } => ServerState::Closing,
        }
    }
}

/// How a connected link is being watched for a silent path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// Nothing outstanding: probed once quiet for `keepalive.idle`.
    Quiet,
    /// A probe is out since `sent`; without a sign of life by `deadline`
    /// the link is lost.
    Probing { sent: Instant, deadline: Instant },
    /// The link has no probe its peer answers: watched only for its end.
    Passive,
}

#[derive(Debug)]
struct Server {
    addr: Arc<ServerAddr>,
    credentials: Option<SocksCredentials>,
    state: State,
    /// Exponent of the next backoff delay.
    backoff_step: u32,
    consecutive_failures: u32,
    attempts: u64,
    last_failure: Option<DialFailure>,
    /// The latest failed dial or lost link (for health reports).
    last_error: Option<LastError>,
    /// The current link's last probe round trip; cleared on connecting.
    last_probe_rtt: Option<Duration>,
    /// Maintenance's retry budget for this server is spent (until a
    /// success or a maintenance restart): it rests in [`State::GaveUp`]
    /// rather than [`State::Idle`], and only a retry command redials it.
    gave_up: bool,
}

impl Server {
    /// The state it rests in when nothing is scheduled.
    fn at_rest(&self) -> State {
        if self.gave_up {
            State::GaveUp
        } else {
            State::Idle
        }
    }
}

/// Pool-wide proxy state: while the proxy is down, one probe dial at a time
/// finds out when it is back, instead of every server failing on its own.
#[derive(Debug, Default)]
struct ProxyHealth {
    down: bool,
    /// Backoff step of the probes.
    step: u32,
    probe: Option<AttemptId>,
    probe_at: Option<Instant>,
    waiters: VecDeque<ServerId>,
}

#[derive(Debug)]
struct Operation {
    id: OperationId,
    kind: OperationKind,
    /// Attempts (passes) or closes (close_all) it waits for.
    waiting: BTreeSet<AttemptId>,
    newly_connected: Vec<ServerId>,
    /// `connect_all_with_retry` only.
    retry: Option<RetrySpec>,
}

#[derive(Debug, Clone, Copy)]
struct RetrySpec {
    backoff: Backoff,
}

/// The pool of directory connections as a sans-IO state machine.
///
/// Drive it like this: after every input (a command, a result, or
/// [`handle_timeout`](Self::handle_timeout)), take every [`Output`] from
/// [`poll_output`](Self::poll_output) until it returns `None`, carry out the
/// actions and pass on the notifications; then wait for the next input or
/// the instant [`poll_timeout`](Self::poll_timeout) names.
///
/// ```
/// use std::time::{Duration, Instant};
/// use dirpool_core::{Command, Entropy, Input, IsolationToken, Output, PoolConfig, PoolState};
///
/// let entropy = Entropy { isolation_token: IsolationToken::from_bytes([7; 16]), jitter_seed: 1 };
/// let mut pool = PoolState::new(PoolConfig::new(["127.0.0.1:5222"]), entropy)?;
/// let t0 = Instant::now();
/// pool.handle_command(t0, Command::ConnectAllParallel)?;
/// let Some(Output::Dial(dial)) = pool.poll_output() else { panic!("expected a dial") };
/// assert_eq!(dial.addr.node_id(), "127.0.0.1:5222");
/// let connected = Input::DialFinished { attempt: dial.attempt, result: Ok(()) };
/// pool.handle_input(t0 + Duration::from_millis(30), connected)?;
/// assert_eq!(pool.connected_count(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct PoolState {
    connection_timeout: Duration,
    keepalive: KeepalivePolicy,
    close_timeout: Duration,
    maintenance_policy: MaintenancePolicy,
    isolation: StreamIsolation,
    servers: Vec<Server>,
    /// Server ids sorted by node_id, for lookups by name.
    by_node_id: Vec<ServerId>,
    rejected: Vec<RejectedEntry>,
    links: Links,
    timers: Timers,
    operations: Vec<Operation>,
    next_operation: u64,
    outputs: VecDeque<Output>,
    rng: JitterRng,
    now: Option<Instant>,
    maintenance: bool,
    connected: usize,
    all_down: bool,
    proxy: ProxyHealth,
}

impl PoolState {
    /// Builds the pool. Malformed and duplicate entries are kept out of the
    /// pool and reported once, as the first outputs.
    ///
    /// # Errors
    /// [`ConfigError`] when a setting is out of range, no server is
    /// configured, or none of the configured servers is valid.
    pub fn new(config: PoolConfig, entropy: Entropy) -> Result<Self, ConfigError> {
        config.validate()?;
        let isolation = StreamIsolation::new(config.isolation, entropy.isolation_token);

        let mut parsed: Vec<(usize, ServerAddr)> = Vec::with_capacity(config.servers.len());
        let mut rejected = Vec::new();
        for (index, entry) in config.servers.iter().enumerate() {
            match ServerAddr::parse(entry) {
                Ok(addr) => parsed.push((index, addr)),
                Err(error) => rejected.push(RejectedEntry {
                    index,
                    entry: entry.clone(),
                    reason: Rejection::Malformed(error),
                }),
            }
        }

        // Duplicates: sort by (node_id, position); the first of each run wins.
        let mut order: Vec<usize> = (0..parsed.len()).collect();
        order.sort_by(|&a, &b| {
            parsed[a]
                .1
                .node_id()
                .cmp(parsed[b].1.node_id())
                .then(a.cmp(&b))
        });
        let mut keeper_of = vec![usize::MAX; parsed.len()];
        for pair in order.windows(2) {
            let (first, next) = (pair[0], pair[1]);
            if parsed[first].1 == parsed[next].1 {
                keeper_of[next] = if keeper_of[first] == usize::MAX {
                    first
                } else {
                    keeper_of[first]
                };
            }
        }
        let mut server_of = vec![ServerId(u32::MAX); parsed.len()];
        let mut servers = Vec::with_capacity(parsed.len());
        let mut duplicates = Vec::new();
        for (i, (index, addr)) in parsed.into_iter().enumerate() {
            if keeper_of[i] != usize::MAX {
                duplicates.push((index, keeper_of[i]));
                continue;
            }
            let id = ServerId(u32::try_from(servers.len()).expect("more than 2^32 servers"));
            server_of[i] = id;
            let credentials = isolation.directory_credentials(&addr);
            servers.push(Server {
                addr: Arc::new(addr),
                credentials,
                state: State::Idle,
                backoff_step: 0,
                consecutive_failures: 0,
                attempts: 0,
                last_failure: None,
                last_error: None,
                last_probe_rtt: None,
                gave_up: false,
            });
        }
        for (index, keeper) in duplicates {
            rejected.push(RejectedEntry {
                index,
                entry: config.servers[index].clone(),
                reason: Rejection::Duplicate(server_of[keeper]),
            });
        }
        rejected.sort_by_key(|r| r.index);
        if servers.is_empty() {
            return Err(ConfigError::NoValidServers { rejected });
        }

        let mut by_node_id: Vec<ServerId> = (0..servers.len())
            .map(|i| ServerId(u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        by_node_id.sort_by(|a, b| {
            servers[a.index()]
                .addr
                .node_id()
                .cmp(servers[b.index()].addr.node_id())
        });

        let mut outputs = VecDeque::new();
        for r in &rejected {
            // Reported as a notification; the driver logs it for the user.
            outputs.push_back(Output::Notify(match &r.reason {
                Rejection::Malformed(error) => Notification::AddressRejected {
                    index: r.index,
                    error: error.clone(),
                },
                Rejection::Duplicate(server) => Notification::DuplicateAddress {
                    index: r.index,
                    server: *server,
                },
            }));
        }

        let timers = Timers::with_servers(servers.len());
        Ok(Self {
            connection_timeout: config.connection_timeout,
            keepalive: config.keepalive,
            close_timeout: config.close_timeout,
            maintenance_policy: config.maintenance,
            isolation,
            servers,
            by_node_id,
            rejected,
            links: Links::default(),
            timers,
            operations: Vec::new(),
            next_operation: 0,
            outputs,
            rng: JitterRng::new(entropy.jitter_seed),
            now: None,
            maintenance: false,
            connected: 0,
            all_down: false,
            proxy: ProxyHealth::default(),
        })
    }

    // ---- commands ---------------------------------------------------------

    /// Carries out `command`. Commands that start an operation return its
    /// id; its [`Notification::OperationFinished`] comes when it ends.
    ///
    /// # Errors
    /// [`ConfigError`] for a [`Command::ConnectAllWithRetry`] whose policy
    /// is out of range; nothing is started then.
    pub fn handle_command(
        &mut self,
        now: Instant,
        command: Command,
    ) -> Result<Option<OperationId>, ConfigError> {
        Ok(match command {
            Command::ConnectAllParallel => Some(self.connect_all_parallel(now)),
            Command::ReconnectDisconnected => Some(self.reconnect_disconnected(now)),
            Command::ConnectAllWithRetry(policy) => Some(self.connect_all_with_retry(now, policy)?),
            Command::CloseAll => Some(self.close_all(now)),
            Command::StartMaintenance => {
                self.start_maintenance(now);
                None
            }
            Command::StopMaintenance => {
                self.stop_maintenance(now);
                None
            }
        })
    }

    /// Dials every server that is neither connected nor being dialed, all at
    /// once, and finishes when every attempt it started or joined has a
    /// result. Its report's `connected` is the original's return value.
    fn connect_all_parallel(&mut self, now: Instant) -> OperationId {
        self.start_pass(now, OperationKind::ConnectAllParallel)
    }

    /// Like [`connect_all_parallel`](Self::connect_all_parallel); its report's
    /// `newly_connected` is the original's return value.
    fn reconnect_disconnected(&mut self, now: Instant) -> OperationId {
        self.start_pass(now, OperationKind::ReconnectDisconnected)
    }

    /// Dials every disconnected server at once and redials each failed one on
    /// the policy's backoff, until one server is connected (finishes at
    /// once) or the deadline (`now + policy.timeout`) passes (finishes with
    /// 0 exactly then). Dials still in flight go on and may connect later.
    ///
    /// # Errors
    /// [`ConfigError`] for a policy out of range; nothing is started then.
    fn connect_all_with_retry(
        &mut self,
        now: Instant,
        policy: RetryPolicy,
    ) -> Result<OperationId, ConfigError> {
        policy.validate()?;
        let now = self.clock(now);
        let id = self.new_operation_id();
        let deadline = now + policy.timeout;
        self.operations.push(Operation {
            id,
            kind: OperationKind::ConnectAllWithRetry,
            waiting: BTreeSet::new(),
            newly_connected: Vec::new(),
            retry: Some(RetrySpec {
                backoff: policy.backoff,
            }),
        });
        for index in 0..self.servers.len() {
            let server = &mut self.servers[index];
            // An explicit command starts every server's backoff afresh.
            if !matches!(server.state, State::Connected { .. }) {
                server.backoff_step = 0;
            }
            match &mut server.state {
                state if state.is_down() => {
                    self.dial(now, server_id(index));
                }
                #[cfg(dirpool_planted_bugs)]
                State::Closing { .. }
                    if crate::planted::active(crate::planted::Bug::NoRedialAfterClose) => {}
                State::Closing { redial, .. } => *redial = true,
                _ => {}
            }
        }
        if self.connected > 0 {
            self.finish_operation(id, OperationEnd::Connected);
        } else if deadline <= now {
            self.finish_operation(id, OperationEnd::DeadlineReached);
        } else {
            self.timers.set(TimerKey::Operation(id), deadline);
        }
        Ok(id)
    }

    /// Closes every connection, aborts every dial in flight (a success that
    /// arrives later is closed, never registered), stops maintenance and
    /// ends the other operations. Finishes when every close has finished or
    /// timed out; each connected server gets one
    /// [`Notification::Disconnected`], whether its close succeeded or not.
    fn close_all(&mut self, now: Instant) -> OperationId {
        let now = self.clock(now);
        let id = self.new_operation_id();
        self.maintenance = false;
        self.all_down = false;
        let others: Vec<OperationId> = self
            .operations
            .iter()
            .filter(|op| op.kind != OperationKind::CloseAll)
            .map(|op| op.id)
            .collect();
        for other in others {
            self.finish_operation(other, OperationEnd::Cancelled);
        }
        self.proxy.probe = None;
        self.cancel_proxy_probe();
        self.proxy.waiters.clear();

        let mut waiting = BTreeSet::new();
        for index in 0..self.servers.len() {
            let id = server_id(index);
            self.cancel_retry(id);
            let server = &mut self.servers[index];
            match server.state {
                #[cfg(dirpool_planted_bugs)]
                State::Dialing { .. }
                    if crate::planted::active(crate::planted::Bug::ForgetToAbortDials) => {}
                State::Dialing { attempt, .. } => {
                    server.state = server.at_rest();
                    self.timers.cancel(TimerKey::Server(id));
                    self.set_link_state(attempt, LinkState::Abandoned);
                    self.outputs.push_back(Output::Abort(attempt));
                }
                State::Connected { attempt, .. } => {
                    self.connected -= 1;
                    self.set_link_state(attempt, LinkState::Closing);
                    self.request_close(now, attempt, id);
                    waiting.insert(attempt);
                }
                State::Closing {
                    attempt,
                    ref mut redial,
                    ..
                } => {
                    // close_all is the last word: no redial after this close.
                    *redial = false;
                    waiting.insert(attempt);
                }
                _ => {}
            }
        }
        let done = waiting.is_empty();
        self.operations.push(Operation {
            id,
            kind: OperationKind::CloseAll,
            waiting,
            newly_connected: Vec::new(),
            retry: None,
        });
        if done {
            self.finish_operation(id, OperationEnd::Completed);
        }
        id
    }

    /// Starts (or restarts) background maintenance: every server that is
    /// lost or not connected is redialed on its own backoff. A restart
    /// forgets earlier give-ups. Servers with nothing scheduled are dialed
    /// now if their last dial did not fail, else after their backoff (so a
    /// server that failed a moment ago is not hit again at once).
    fn start_maintenance(&mut self, now: Instant) {
        let now = self.clock(now);
        self.maintenance = true;
        for index in 0..self.servers.len() {
            let server = &mut self.servers[index];
            server.gave_up = false;
            if server.state == State::GaveUp {
                server.state = State::Idle;
            }
            if server.state == State::Idle {
                if server.consecutive_failures == 0 {
                    self.redial(now, server_id(index));
                } else {
                    self.schedule_retry(now, server_id(index));
                }
            }
        }
        self.keep_probing(now);
    }

    /// Stops background maintenance. Dials in flight go on; nothing new is
    /// scheduled unless a `connect_all_with_retry` is running.
    fn stop_maintenance(&mut self, now: Instant) {
        self.clock(now);
        self.maintenance = false;
        self.forget_unwanted_retries();
    }

    // ---- results ----------------------------------------------------------

    /// Takes a result the driver reports.
    ///
    /// # Errors
    /// [`InputError`] if the attempt is unknown, already has this result, or
    /// cannot take it in its current state; the machine is unchanged then.
    pub fn handle_input(&mut self, now: Instant, input: Input) -> Result<(), InputError> {
        match input {
            Input::DialFinished {
                attempt,
                result: Ok(()),
            } => self.dial_succeeded(now, attempt),
            Input::DialFinished {
                attempt,
                result: Err(failure),
            } => self.dial_failed(now, attempt, failure),
            Input::LinkLost { attempt, loss } => self.connection_lost(now, attempt, loss),
            Input::LinkActive(attempt) => self.heard(now, attempt, false),
            Input::ProbeAnswered(attempt) => self.heard(now, attempt, true),
            Input::ProbeUnsupported(attempt) => self.probe_unsupported(now, attempt),
            Input::CloseFinished { attempt, result } => self.close_finished(now, attempt, result),
        }
    }

    /// The dial `attempt` connected and finished its handshake.
    ///
    /// # Errors
    /// [`InputError`] if `attempt` is unknown or already has a result.
    fn dial_succeeded(&mut self, now: Instant, attempt: AttemptId) -> Result<(), InputError> {
        let link = self.link(attempt)?;
        let now = self.clock(now);
        match link.state {
            LinkState::Dialing => {
                self.set_link_state(attempt, LinkState::Open);
                let id = link.server;
                if self.proxy.probe == Some(attempt) {
                    self.proxy.probe = None;
                }
                let server = &mut self.servers[id.index()];
                server.state = State::Connected {
                    attempt,
                    since: now,
                    last_active: now,
                    watch: Watch::Quiet,
                };
                server.consecutive_failures = 0;
                server.gave_up = false;
                server.last_probe_rtt = None;
                self.connected += 1;
                self.timers
                    .set(TimerKey::Server(id), now + self.keepalive.idle);
                self.notify(Notification::Connected {
                    server: id,
                    attempt,
                });
                if self.all_down {
                    self.all_down = false;
                    self.notify(Notification::Recovered);
                }
                self.attempt_resolved(attempt, Some(id));
                self.proxy_up(now);
                Ok(())
            }
            #[cfg(dirpool_planted_bugs)]
            LinkState::Abandoned
                if crate::planted::active(crate::planted::Bug::RegisterLateSuccess)
                    && self.servers[link.server.index()].state.is_down() =>
            {
                self.set_link_state(attempt, LinkState::Dialing);
                self.servers[link.server.index()].state = State::Dialing {
                    attempt,
                    until: now,
                };
                self.dial_succeeded(now, attempt)
            }
            LinkState::Abandoned => {
                self.set_link_state(attempt, LinkState::StrayClosing);
                tracing::debug!(%attempt, "late success of an abandoned dial: closing it");
                self.request_stray_close(now, attempt, link.server);
                self.proxy_up(now);
                Ok(())
            }
            state => Err(unexpected(attempt, state)),
        }
    }

    /// The dial `attempt` failed.
    ///
    /// # Errors
    /// [`InputError`] if `attempt` is unknown or already has a result.
    fn dial_failed(
        &mut self,
        now: Instant,
        attempt: AttemptId,
        failure: DialFailure,
    ) -> Result<(), InputError> {
        let link = self.link(attempt)?;
        let now = self.clock(now);
        match link.state {
            LinkState::Dialing => {
                self.links.remove(attempt);
                self.timers.cancel(TimerKey::Server(link.server));
                self.fail_attempt(now, attempt, link.server, failure);
                Ok(())
            }
            LinkState::Abandoned => {
                self.links.remove(attempt);
                Ok(())
            }
            state => Err(unexpected(attempt, state)),
        }
    }

    /// The connection made by `attempt` is gone. A loss reported while the
    /// connection is being closed is ignored (the close's result follows).
    ///
    /// # Errors
    /// [`InputError`] if `attempt` is unknown or never connected.
    fn connection_lost(
        &mut self,
        now: Instant,
        attempt: AttemptId,
        loss: LinkLoss,
    ) -> Result<(), InputError> {
        let link = self.link(attempt)?;
        let now = self.clock(now);
        match link.state {
            LinkState::Open => {
                self.lose(now, attempt, link.server, loss);
                Ok(())
            }
            LinkState::Closing | LinkState::StrayClosing | LinkState::CloseAbandoned => Ok(()),
            state => Err(unexpected(attempt, state)),
        }
    }

    /// `attempt`'s connection cannot be probed (its peer answers no probe):
    /// from now on it is watched only for its end, never declared lost for
    /// silence.
    ///
    /// # Errors
    /// [`InputError`] if `attempt` is unknown or never connected.
    fn probe_unsupported(&mut self, now: Instant, attempt: AttemptId) -> Result<(), InputError> {
        let link = self.link(attempt)?;
        self.clock(now);
        match link.state {
            LinkState::Open => {
                if let State::Connected { watch, .. } = &mut self.servers[link.server.index()].state
                {
                    *watch = Watch::Passive;
                    self.timers.cancel(TimerKey::Server(link.server));
                }
                Ok(())
            }
            LinkState::Closing | LinkState::StrayClosing | LinkState::CloseAbandoned => Ok(()),
            state => Err(unexpected(attempt, state)),
        }
    }

    /// The close of `attempt`'s connection finished, well or not.
    ///
    /// # Errors
    /// [`InputError`] if `attempt` is unknown or was not being closed.
    fn close_finished(
        &mut self,
        now: Instant,
        attempt: AttemptId,
        result: Result<(), CloseFailure>,
    ) -> Result<(), InputError> {
        let link = self.link(attempt)?;
        let now = self.clock(now);
        match link.state {
            LinkState::Closing => {
                self.links.remove(attempt);
                self.timers.cancel(TimerKey::Server(link.server));
                let reason = match result {
                    Ok(()) => DisconnectReason::Closed,
                    Err(e) => DisconnectReason::CloseFailed(e),
                };
                self.closed(now, attempt, link.server, reason);
                Ok(())
            }
            LinkState::StrayClosing | LinkState::CloseAbandoned => {
                self.links.remove(attempt);
                self.timers.cancel(TimerKey::StrayClose(attempt));
                Ok(())
            }
            state => Err(unexpected(attempt, state)),
        }
    }

    /// Fires every timer due at `now`. Safe to call early or twice.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock(now);
        while let Some(key) = self.timers.pop_due(now) {
            self.fire(now, key);
        }
    }

    // ---- outputs ----------------------------------------------------------

    /// The next action or notification, in the order they arose.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    // ---- queries ----------------------------------------------------------

    /// The valid, distinct configured servers, in configured order.
    pub fn servers(&self) -> impl ExactSizeIterator<Item = (ServerId, &Arc<ServerAddr>)> {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| (server_id(i), &s.addr))
    }

    /// The address of `server`.
    pub fn server_addr(&self, server: ServerId) -> Option<&Arc<ServerAddr>> {
        self.servers.get(server.index()).map(|s| &s.addr)
    }

    /// The server named by `text` (`"host"` or `"host:port"`, any case), if
    /// it is in the pool.
    pub fn find_server(&self, text: &str) -> Option<ServerId> {
        let addr = ServerAddr::parse(text).ok()?;
        let at = self
            .by_node_id
            .binary_search_by(|id| self.servers[id.index()].addr.node_id().cmp(addr.node_id()))
            .ok()?;
        Some(self.by_node_id[at])
    }

    /// Connected servers and the attempts whose connections they use.
    pub fn connected(&self) -> impl Iterator<Item = (ServerId, AttemptId)> + '_ {
        self.servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.state {
                State::Connected { attempt, .. } => Some((server_id(i), attempt)),
                _ => None,
            })
    }

    /// How many servers are connected.
    pub fn connected_count(&self) -> usize {
        self.connected
    }

    /// Configured, valid servers that are not connected (malformed entries
    /// are never listed).
    pub fn list_disconnected(&self) -> impl Iterator<Item = (ServerId, &Arc<ServerAddr>)> {
        self.servers()
            .filter(|(id, _)| !matches!(self.servers[id.index()].state, State::Connected { .. }))
    }

    /// A snapshot of `server`.
    pub fn status(&self, server: ServerId) -> Option<ServerStatus> {
        let s = self.servers.get(server.index())?;
        Some(ServerStatus {
            server,
            addr: Arc::clone(&s.addr),
            state: s.state.public(),
            attempts: s.attempts,
            consecutive_failures: s.consecutive_failures,
            last_failure: s.last_failure,
            last_error: s.last_error,
            connected_since: match s.state {
                State::Connected { since, .. } => Some(since),
                _ => None,
            },
            last_active: match s.state {
                State::Connected { last_active, .. } => Some(last_active),
                _ => None,
            },
            last_probe_rtt: s.last_probe_rtt,
            next_retry_at: match s.state {
                State::BackingOff { until } => Some(until),
                _ => None,
            },
        })
    }

    /// The pool's health at `now`: how many servers stand where, the proxy
    /// as the machine knows it, and each server's state, latest error, and
    /// the ages of its connection and of its last sign of life. O(servers).
    pub fn health(&self, now: Instant) -> PoolHealth {
        let statuses: Vec<ServerStatus> = self.statuses().collect();
        PoolHealth {
            counts: statuses.iter().collect::<LinkCounts>(),
            proxy: if self.proxy.down {
                ProxyState::Unreachable
            } else {
                ProxyState::Reachable
            },
            maintenance: self.maintenance,
            servers: statuses
                .iter()
                .map(|status| ServerHealth::new(status, now))
                .collect(),
        }
    }

    /// Snapshots of every server.
    pub fn statuses(&self) -> impl Iterator<Item = ServerStatus> + '_ {
        (0..self.servers.len()).filter_map(|i| self.status(server_id(i)))
    }

    /// Configured entries that are not in the pool, and why.
    pub fn rejected_entries(&self) -> &[RejectedEntry] {
        &self.rejected
    }

    /// The isolation settings; ask it for the peer credentials.
    pub fn isolation(&self) -> &StreamIsolation {
        &self.isolation
    }

    /// Whether maintenance is running.
    pub fn maintenance_running(&self) -> bool {
        self.maintenance
    }

    /// False from the first proxy failure until a dial gets through again.
    pub fn proxy_reachable(&self) -> bool {
        !self.proxy.down
    }

    /// Attempts still owed a result or a close result by the driver.
    pub fn pending_attempts(&self) -> usize {
        self.links.len()
    }

    /// Attempts the driver holds a live client for (registered, or stray and
    /// being closed).
    pub fn live_clients(&self) -> usize {
        self.links
            .iter()
            .filter(|(_, l)| {
                matches!(
                    l.state,
                    LinkState::Open | LinkState::Closing | LinkState::StrayClosing
                )
            })
            .count()
    }

    /// Operations not finished yet.
    pub fn operations_in_progress(&self) -> usize {
        self.operations.len()
    }

    /// The connection timeout every dial gets.
    pub fn connection_timeout(&self) -> Duration {
        self.connection_timeout
    }

    /// How long a close may take; the driver bounds its own closes by it.
    pub fn close_timeout(&self) -> Duration {
        self.close_timeout
    }

    /// The maintenance policy.
    pub fn maintenance_policy(&self) -> &MaintenancePolicy {
        &self.maintenance_policy
    }

    // ---- internals --------------------------------------------------------

    /// Time only moves forward: an earlier `now` counts as the latest seen.
    fn clock(&mut self, now: Instant) -> Instant {
        let now = match self.now {
            Some(latest) if latest > now => latest,
            _ => now,
        };
        self.now = Some(now);
        now
    }

    /// A registered link is gone without our asking.
    fn lose(&mut self, now: Instant, attempt: AttemptId, id: ServerId, loss: LinkLoss) {
        self.links.remove(attempt);
        let stable_after = self.maintenance_policy.stable_after;
        let server = &mut self.servers[id.index()];
        if let State::Connected { since, .. } = server.state {
            // A link that stayed up long enough earns a fresh backoff; one
            // that died young keeps climbing, so a flapping directory is not
            // hammered.
            if now.saturating_duration_since(since) >= stable_after {
                server.backoff_step = 0;
            }
        }
        server.state = server.at_rest();
        server.last_error = Some(LastError {
            error: ServerError::Link(loss),
            at: now,
        });
        self.timers.cancel(TimerKey::Server(id));
        #[cfg(dirpool_planted_bugs)]
        let miscount = crate::planted::active(crate::planted::Bug::MiscountLostLink);
        #[cfg(not(dirpool_planted_bugs))]
        let miscount = false;
        if !miscount {
            self.connected -= 1;
        }
        self.notify(Notification::Disconnected {
            server: id,
            attempt,
            reason: DisconnectReason::Lost(loss),
        });
        if self.connected == 0 {
            self.all_down = true;
            self.notify(Notification::AllDown);
        }
        self.schedule_retry(now, id);
    }

    /// A sign of life on `attempt`'s link; `answer` when it answers a probe.
    fn heard(&mut self, now: Instant, attempt: AttemptId, answer: bool) -> Result<(), InputError> {
        let link = self.link(attempt)?;
        let now = self.clock(now);
        match link.state {
            LinkState::Open => {
                let id = link.server;
                let idle = self.keepalive.idle;
                let server = &mut self.servers[id.index()];
                let Some((last_active, watch)) = server.state.keepalive() else {
                    return Ok(());
                };
                *last_active = now;
                if let Watch::Probing { sent, .. } = *watch {
                    // Any sign of life settles the probe; the next one is
                    // due once the link has been quiet for `idle`. While
                    // quiet, a sign of life only moves `last_active`: the
                    // timer re-arms from it when it fires.
                    *watch = Watch::Quiet;
                    self.timers.set(TimerKey::Server(id), now + idle);
                    if answer {
                        let rtt = now.saturating_duration_since(sent);
                        server.last_probe_rtt = Some(rtt);
                        self.notify(Notification::ProbeAnswered {
                            server: id,
                            attempt,
                            rtt,
                        });
                    }
                }
                Ok(())
            }
            LinkState::Closing | LinkState::StrayClosing | LinkState::CloseAbandoned => Ok(()),
            state => Err(unexpected(attempt, state)),
        }
    }

    /// The keepalive timer of an open link fired: probe it if it has been
    /// quiet for `idle`, declare it lost if its probe went unanswered, else
    /// re-arm at the link's next due instant.
    fn keepalive_due(&mut self, now: Instant, attempt: AttemptId, id: ServerId) {
        let keepalive = self.keepalive;
        let Some((last_active, watch)) = self.servers[id.index()].state.keepalive() else {
            return;
        };
        #[cfg(dirpool_planted_bugs)]
        if crate::planted::active(crate::planted::Bug::NoKeepalive) {
            return;
        }
        match *watch {
            Watch::Passive => {}
            Watch::Quiet => {
                let due = *last_active + keepalive.idle;
                if now < due {
                    self.timers.set(TimerKey::Server(id), due);
                    return;
                }
                let deadline = now + keepalive.probe_timeout;
                *watch = Watch::Probing {
                    sent: now,
                    deadline,
                };
                self.timers.set(TimerKey::Server(id), deadline);
                self.outputs.push_back(Output::Probe(ProbeRequest {
                    attempt,
                    server: id,
                    deadline,
                }));
            }
            Watch::Probing { deadline, .. } => {
                if now < deadline {
                    self.timers.set(TimerKey::Server(id), deadline);
                    return;
                }
                self.lose(now, attempt, id, LinkLoss::KeepaliveTimeout);
            }
        }
    }

    fn new_operation_id(&mut self) -> OperationId {
        self.next_operation += 1;
        OperationId(self.next_operation)
    }

    fn notify(&mut self, notification: Notification) {
        self.outputs.push_back(Output::Notify(notification));
    }

    fn link(&self, attempt: AttemptId) -> Result<Link, InputError> {
        self.links
            .get(attempt)
            .copied()
            .ok_or(InputError::UnknownAttempt(attempt))
    }

    fn set_link_state(&mut self, attempt: AttemptId, state: LinkState) {
        if let Some(link) = self.links.get_mut(attempt) {
            link.state = state;
        }
    }

    fn start_pass(&mut self, now: Instant, kind: OperationKind) -> OperationId {
        let now = self.clock(now);
        let id = self.new_operation_id();
        let mut waiting = BTreeSet::new();
        for index in 0..self.servers.len() {
            match &mut self.servers[index].state {
                state if state.is_down() => {
                    waiting.insert(self.dial(now, server_id(index)));
                }
                #[cfg(dirpool_planted_bugs)]
                State::Dialing { .. }
                    if crate::planted::active(crate::planted::Bug::DialInFlightAgain) =>
                {
                    self.servers[index].state = State::Idle;
                    waiting.insert(self.dial(now, server_id(index)));
                }
                State::Dialing { attempt, .. } => {
                    waiting.insert(*attempt);
                }
                #[cfg(dirpool_planted_bugs)]
                State::Closing { .. }
                    if crate::planted::active(crate::planted::Bug::NoRedialAfterClose) => {}
                State::Closing {
                    attempt, redial, ..
                } => {
                    // Asked for after a close_all that is still closing this
                    // link: dial when the close ends; wait for that dial.
                    *redial = true;
                    waiting.insert(*attempt);
                }
                _ => {}
            }
        }
        let done = waiting.is_empty();
        self.operations.push(Operation {
            id,
            kind,
            waiting,
            newly_connected: Vec::new(),
            retry: None,
        });
        if done {
            self.finish_operation(id, OperationEnd::Completed);
        }
        id
    }

    fn dial(&mut self, now: Instant, id: ServerId) -> AttemptId {
        let deadline = now + self.connection_timeout;
        let attempt = self.links.insert(Link {
            server: id,
            state: LinkState::Dialing,
        });
        let server = &mut self.servers[id.index()];
        debug_assert!(server.state.is_down());
        server.state = State::Dialing {
            attempt,
            until: deadline,
        };
        server.attempts += 1;
        // Replaces a pending redial, if any. A server waiting for the proxy
        // stays in its queue; the queue skips it when its turn comes.
        self.timers.set(TimerKey::Server(id), deadline);
        self.outputs.push_back(Output::Dial(DialRequest {
            attempt,
            server: id,
            addr: Arc::clone(&server.addr),
            credentials: server.credentials.clone(),
            timeout: self.connection_timeout,
            deadline,
        }));
        attempt
    }

    /// The newest running `connect_all_with_retry`, if any.
    fn retry_operation(&self) -> Option<&RetrySpec> {
        self.operations
            .iter()
            .rev()
            .find_map(|op| op.retry.as_ref())
    }

    /// The backoff that applies to a server now, or `None` if nothing wants
    /// it redialed.
    fn backoff_for(&self, id: ServerId) -> Option<Backoff> {
        if let Some(retry) = self.retry_operation() {
            return Some(retry.backoff);
        }
        (self.maintenance && !self.servers[id.index()].gave_up)
            .then_some(self.maintenance_policy.backoff)
    }

    /// Drops scheduled redials and proxy waits that nothing wants any more
    /// (maintenance stopped, a retry operation ended), so the status never
    /// promises a retry that will not happen.
    fn forget_unwanted_retries(&mut self) {
        for index in 0..self.servers.len() {
            let id = server_id(index);
            let scheduled = matches!(
                self.servers[index].state,
                State::BackingOff { .. } | State::WaitingForProxy
            );
            if scheduled && self.backoff_for(id).is_none() {
                self.cancel_retry(id);
            }
        }
        let servers = &self.servers;
        self.proxy
            .waiters
            .retain(|id| servers[id.index()].state == State::WaitingForProxy);
        if self.proxy.waiters.is_empty() {
            self.cancel_proxy_probe();
        }
    }

    /// Dial now if the proxy is up, else queue for the proxy.
    fn redial(&mut self, now: Instant, id: ServerId) {
        if self.proxy.down {
            self.wait_for_proxy(now, id);
        } else {
            self.dial(now, id);
        }
    }

    /// Schedules the server's next dial on its backoff, if anything wants it.
    fn schedule_retry(&mut self, now: Instant, id: ServerId) -> Option<Instant> {
        let backoff = self.backoff_for(id)?;
        if self.proxy.down {
            return self.wait_for_proxy(now, id);
        }
        let server = &mut self.servers[id.index()];
        let at = now + backoff.delay(server.backoff_step, &mut self.rng);
        server.backoff_step = server.backoff_step.saturating_add(1);
        server.state = State::BackingOff { until: at };
        self.timers.set(TimerKey::Server(id), at);
        Some(at)
    }

    fn wait_for_proxy(&mut self, now: Instant, id: ServerId) -> Option<Instant> {
        let server = &mut self.servers[id.index()];
        if let State::BackingOff { .. } = server.state {
            self.timers.cancel(TimerKey::Server(id));
        }
        if server.state != State::WaitingForProxy {
            server.state = State::WaitingForProxy;
            self.proxy.waiters.push_back(id);
        }
        self.keep_probing(now);
        // A probe already due fires in this same `handle_timeout` call.
        self.proxy.probe_at.map(|at| at.max(now))
    }

    /// While the proxy is down and servers wait for it, keep exactly one
    /// probe scheduled or in flight.
    fn keep_probing(&mut self, now: Instant) {
        if !self.proxy.down
            || self.proxy.probe.is_some()
            || self.proxy.probe_at.is_some()
            || self.proxy.waiters.is_empty()
        {
            return;
        }
        let Some(backoff) = self
            .retry_operation()
            .map(|r| r.backoff)
            .or(self.maintenance.then_some(self.maintenance_policy.backoff))
        else {
            return;
        };
        let at = now + backoff.delay(self.proxy.step, &mut self.rng);
        self.proxy.probe_at = Some(at);
        self.timers.set(TimerKey::ProxyProbe, at);
    }

    /// A dial got through the proxy: it is up. Servers that waited for it
    /// are dialed now.
    fn proxy_up(&mut self, now: Instant) {
        if !self.proxy.down {
            return;
        }
        self.cancel_proxy_probe();
        self.proxy = ProxyHealth {
            waiters: std::mem::take(&mut self.proxy.waiters),
            ..ProxyHealth::default()
        };
        self.notify(Notification::ProxyRecovered);
        while let Some(id) = self.proxy.waiters.pop_front() {
            let server = &mut self.servers[id.index()];
            if server.state != State::WaitingForProxy {
                continue;
            }
            server.state = server.at_rest();
            if self.backoff_for(id).is_some() {
                self.dial(now, id);
            }
        }
    }

    fn fail_attempt(
        &mut self,
        now: Instant,
        attempt: AttemptId,
        id: ServerId,
        failure: DialFailure,
    ) {
        let was_probe = self.proxy.probe == Some(attempt);
        if was_probe {
            self.proxy.probe = None;
        }
        let server = &mut self.servers[id.index()];
        server.last_failure = Some(failure);
        server.last_error = Some(LastError {
            error: ServerError::Dial(failure),
            at: now,
        });

        match failure.scope() {
            FailureScope::Proxy => {
                // Pool-wide: the server's own budget and backoff are untouched.
                self.servers[id.index()].state = self.servers[id.index()].at_rest();
                let newly_down = !self.proxy.down;
                if newly_down {
                    self.proxy.down = true;
                    self.proxy.step = 0;
                } else if was_probe {
                    self.proxy.step = self.proxy.step.saturating_add(1);
                }
                let retry_at = if self.backoff_for(id).is_some() {
                    self.wait_for_proxy(now, id)
                } else {
                    None
                };
                self.notify(Notification::DialFailed {
                    server: id,
                    attempt,
                    failure,
                    retry_at,
                });
                if newly_down {
                    self.notify(Notification::ProxyUnreachable);
                }
            }
            FailureScope::Server => {
                if failure.proves_proxy_up() {
                    self.proxy_up(now);
                } else if was_probe && self.proxy.down {
                    self.proxy.step = self.proxy.step.saturating_add(1);
                }
                let max = self.maintenance_policy.max_retries;
                let server = &mut self.servers[id.index()];
                let counts = failure.counts_towards_give_up();
                if counts {
                    server.consecutive_failures = server.consecutive_failures.saturating_add(1);
                }
                let failures = server.consecutive_failures;
                let gives_up =
                    counts && self.maintenance && max > 0 && !server.gave_up && failures >= max;
                if gives_up {
                    server.gave_up = true;
                }
                server.state = server.at_rest();
                let retry_at = self.schedule_retry(now, id);
                self.notify(Notification::DialFailed {
                    server: id,
                    attempt,
                    failure,
                    retry_at,
                });
                if gives_up {
                    self.notify(Notification::GaveUp {
                        server: id,
                        failures,
                    });
                }
            }
        }
        self.attempt_resolved(attempt, None);
        self.keep_probing(now);
    }

    /// Closes `server`'s registered connection (made by `attempt`).
    fn request_close(&mut self, now: Instant, attempt: AttemptId, server: ServerId) {
        let until = now + self.close_timeout;
        self.servers[server.index()].state = State::Closing {
            attempt,
            until,
            redial: false,
        };
        self.close_output(attempt, TimerKey::Server(server), server, until, false);
    }

    /// Closes the connection a late success of an abandoned dial made.
    fn request_stray_close(&mut self, now: Instant, attempt: AttemptId, server: ServerId) {
        let until = now + self.close_timeout;
        self.close_output(attempt, TimerKey::StrayClose(attempt), server, until, true);
    }

    fn close_output(
        &mut self,
        attempt: AttemptId,
        key: TimerKey,
        server: ServerId,
        deadline: Instant,
        stray: bool,
    ) {
        self.timers.set(key, deadline);
        self.outputs.push_back(Output::Close(CloseRequest {
            attempt,
            server,
            stray,
            deadline,
        }));
    }

    /// A registered connection's close ended (done, failed or timed out).
    fn closed(&mut self, now: Instant, attempt: AttemptId, id: ServerId, reason: DisconnectReason) {
        let server = &mut self.servers[id.index()];
        let redial = matches!(server.state, State::Closing { redial: true, .. });
        server.state = server.at_rest();
        self.notify(Notification::Disconnected {
            server: id,
            attempt,
            reason,
        });
        if redial {
            // A connect command came while this link was closing: its dial
            // starts now, and the passes that waited for the close wait for
            // the dial instead.
            let dial = self.dial(now, id);
            for op in &mut self.operations {
                if op.kind != OperationKind::CloseAll && op.waiting.remove(&attempt) {
                    op.waiting.insert(dial);
                }
            }
            self.attempt_resolved(attempt, None);
        } else {
            self.attempt_resolved(attempt, None);
            // Only if a command started since close_all wants the server back.
            self.schedule_retry(now, id);
        }
    }

    /// An attempt (or close) some operations may be waiting for has ended.
    fn attempt_resolved(&mut self, attempt: AttemptId, connected: Option<ServerId>) {
        let mut finished = Vec::new();
        for op in &mut self.operations {
            if op.retry.is_some() {
                if let Some(server) = connected {
                    op.newly_connected.push(server);
                    finished.push((op.id, OperationEnd::Connected));
                }
            } else if op.waiting.remove(&attempt) {
                if let Some(server) = connected {
                    op.newly_connected.push(server);
                }
                if op.waiting.is_empty() {
                    finished.push((op.id, OperationEnd::Completed));
                }
            }
        }
        for (id, end) in finished {
            self.finish_operation(id, end);
        }
    }

    fn finish_operation(&mut self, id: OperationId, end: OperationEnd) {
        let Some(position) = self.operations.iter().position(|op| op.id == id) else {
            return;
        };
        let op = self.operations.remove(position);
        self.timers.cancel(TimerKey::Operation(id));
        if op.retry.is_some() {
            self.forget_unwanted_retries();
        }
        tracing::debug!(operation = %id, kind = ?op.kind, ?end, connected = self.connected, "operation finished");
        self.notify(Notification::OperationFinished(OperationReport {
            id,
            kind: op.kind,
            end,
            connected: self.connected,
            newly_connected: op.newly_connected,
        }));
    }

    /// Drops `id`'s scheduled redial or proxy wait, if it has one (a server
    /// left in the proxy's queue is skipped when its turn comes).
    fn cancel_retry(&mut self, id: ServerId) {
        let server = &mut self.servers[id.index()];
        match server.state {
            State::BackingOff { .. } => self.timers.cancel(TimerKey::Server(id)),
            State::WaitingForProxy => {}
            _ => return,
        }
        server.state = server.at_rest();
    }

    /// Drops the scheduled proxy probe, if any.
    fn cancel_proxy_probe(&mut self) {
        if self.proxy.probe_at.take().is_some() {
            self.timers.cancel(TimerKey::ProxyProbe);
        }
    }

    /// Acts on a deadline that has come.
    fn fire(&mut self, now: Instant, key: TimerKey) {
        match key {
            TimerKey::Server(id) => match self.servers[id.index()].state {
                State::Dialing { attempt, .. } => {
                    self.set_link_state(attempt, LinkState::Abandoned);
                    self.outputs.push_back(Output::Abort(attempt));
                    self.fail_attempt(now, attempt, id, DialFailure::TimedOut);
                }
                State::Closing { attempt, .. } => {
                    self.set_link_state(attempt, LinkState::CloseAbandoned);
                    self.closed(now, attempt, id, DisconnectReason::CloseTimedOut);
                }
                State::Connected { attempt, .. } => self.keepalive_due(now, attempt, id),
                State::BackingOff { .. } => {
                    let server = &mut self.servers[id.index()];
                    server.state = server.at_rest();
                    if self.backoff_for(id).is_some() {
                        self.redial(now, id);
                    }
                }
                state => debug_assert!(false, "a timer fired for a server {state:?}"),
            },
            TimerKey::StrayClose(attempt) => {
                self.set_link_state(attempt, LinkState::CloseAbandoned);
            }
            TimerKey::ProxyProbe => {
                self.proxy.probe_at = None;
                while let Some(id) = self.proxy.waiters.pop_front() {
                    let server = &mut self.servers[id.index()];
                    if server.state != State::WaitingForProxy {
                        continue;
                    }
                    server.state = server.at_rest();
                    if self.backoff_for(id).is_some() {
                        let attempt = self.dial(now, id);
                        self.proxy.probe = Some(attempt);
                        break;
                    }
                }
            }
            TimerKey::Operation(id) => {
                self.finish_operation(id, OperationEnd::DeadlineReached);
            }
        }
    }
}

fn unexpected(attempt: AttemptId, state: LinkState) -> InputError {
    InputError::UnexpectedInput {
        attempt,
        state: state.name(),
    }
}

fn server_id(index: usize) -> ServerId {
    ServerId(u32::try_from(index).unwrap_or(u32::MAX))
}
