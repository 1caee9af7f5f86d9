//! `PoolState`: the pool as a pure state machine.
//!
//! Commands and results go in with the current time; actions and
//! notifications come out of [`PoolState::poll_output`]; the next deadline
//! comes out of [`PoolState::poll_timeout`]. Nothing here reads a clock,
//! draws randomness or touches the network.

mod clock;
mod commands;
mod dials;
mod links;
mod liveness;
mod maintenance;
mod operations;
mod queries;
mod queue;
mod timers;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addr::ServerAddr;
use crate::backoff::{Backoff, JitterRng};
use crate::command::{Command, Input, ProxyReport};
use crate::config::{
    ConfigError, Entropy, KeepalivePolicy, MaintenancePolicy, PoolConfig, RetryPolicy,
};
pub use crate::errors::{RejectedEntry, Rejection};
use crate::failure::{CloseFailure, DialDetail, DialFailure, FailureScope, LinkLoss};
use crate::isolation::{IsolationCategory, IsolationScope, SocksCredentials, StreamIsolation};
use crate::output::{
    AttemptId, CloseRequest, DialRequest, DisconnectReason, Notification, OperationEnd,
    OperationId, OperationKind, OperationReport, Output, ProbeRequest, ServerId,
};
use crate::status::{
    LastError, LinkCounts, PoolHealth, ProxyState, ServerError, ServerHealth, ServerState,
    ServerStatus,
};
use clock::{Clock, Tick};
use links::{Link, LinkState, Links};
use queue::OutputQueue;
use timers::{Lane, TimerKey, Timers};

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
    BackingOff { until: Tick },
    /// Queued for the proxy: dialed once a probe dial gets through.
    WaitingForProxy,
    /// Dial `attempt` in flight; abandoned at `until`.
    Dialing { attempt: AttemptId, until: Tick },
    /// Connected through `attempt`'s link since `since`.
    Connected {
        attempt: AttemptId,
        since: Tick,
        /// The last sign of life: a line read, a probe answered.
        last_active: Tick,
        watch: Watch,
    },
    /// Close of `attempt`'s link requested; given up on at `until`.
    Closing {
        attempt: AttemptId,
        until: Tick,
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
    fn keepalive(&mut self) -> Option<(&mut Tick, &mut Watch)> {
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
    /// A probe is out since `sent`; without a sign of life by `sent +
    /// keepalive.probe_timeout` the link is lost.
    Probing { sent: Tick },
    /// The link has no probe its peer answers: watched only for its end.
    Passive,
}

/// A probe's round trip in nanoseconds, or none: 8 bytes where an
/// `Option<Duration>` takes 16, in every server's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RoundTrip(u64);

impl RoundTrip {
    const NONE: RoundTrip = RoundTrip(u64::MAX);

    /// `rtt`, saturating a little short of 584 years.
    fn of(rtt: Duration) -> Self {
        RoundTrip(u64::try_from(rtt.as_nanos()).map_or(u64::MAX - 1, |n| n.min(u64::MAX - 1)))
    }

    fn get(self) -> Option<Duration> {
        (self != Self::NONE).then(|| Duration::from_nanos(self.0))
    }
}

#[derive(Debug)]
struct Server {
    addr: Arc<ServerAddr>,
    state: State,
    /// Exponent of the next backoff delay.
    backoff_step: u32,
    consecutive_failures: u32,
    /// Dials started (saturates; at one a second, after 136 years).
    attempts: u32,
    last_failure: Option<DialFailure>,
    /// The latest failed dial or lost link (for health reports), and when.
    last_error: Option<(ServerError, Tick)>,
    /// The current link's last probe round trip; cleared on connecting.
    last_probe_rtt: RoundTrip,
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

    /// Moves to `next`: every change of state goes through here, so the
    /// model checker can hold each one against [`crate::diagram::EDGES`].
    fn enter(&mut self, next: State) {
        #[cfg(feature = "test-kit")]
        crate::test_kit::record(self.state.public(), next.public());
        self.state = next;
    }

    /// Comes to rest: idle, or given up on.
    fn rest(&mut self) {
        self.enter(self.at_rest());
    }
}

/// The SOCKS credentials of directory dials: one pair shared by every
/// server (kept once, not per server), or with per-server isolation each
/// server's own, made once when the pool is built.
#[derive(Debug)]
enum DialCredentials {
    Shared(Option<SocksCredentials>),
    PerServer(Vec<Option<SocksCredentials>>),
}

impl DialCredentials {
    fn of(&self, id: ServerId) -> Option<SocksCredentials> {
        match self {
            Self::Shared(credentials) => credentials.clone(),
            Self::PerServer(each) => each[id.index()].clone(),
        }
    }
}

/// Pool-wide proxy state: while the proxy is down, one probe dial at a time
/// finds out when it is back, instead of every server failing on its own.
#[derive(Debug, Default)]
struct ProxyHealth {
    down: bool,
    /// The route's latest report of its own state while that report says
    /// it is not ready (`None` once it reports ready, or if it never
    /// reports): the proxy stays down until it does.
    hold: Option<ProxyReport>,
    /// Backoff step of the probes.
    step: u32,
    probe: Option<AttemptId>,
    probe_at: Option<Tick>,
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
/// let connected = Input::DialFinished { attempt: dial.attempt, result: Ok(()), detail: None };
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
    credentials: DialCredentials,
    servers: Vec<Server>,
    /// Server ids sorted by node_id, for lookups by name.
    by_node_id: Vec<ServerId>,
    rejected: Vec<RejectedEntry>,
    links: Links,
    timers: Timers,
    operations: Vec<Operation>,
    next_operation: u64,
    outputs: OutputQueue,
    rng: JitterRng,
    time: Clock,
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
        let mut per_server_credentials = Vec::new();
        let mut duplicates = Vec::new();
        for (i, (index, addr)) in parsed.into_iter().enumerate() {
            if keeper_of[i] != usize::MAX {
                duplicates.push((index, keeper_of[i]));
                continue;
            }
            let id = ServerId(u32::try_from(servers.len()).expect("more than 2^32 servers"));
            server_of[i] = id;
            if isolation.scope() == IsolationScope::PerServer {
                per_server_credentials.push(isolation.directory_credentials(&addr));
            }
            servers.push(Server {
                addr: Arc::new(addr),
                state: State::Idle,
                backoff_step: 0,
                consecutive_failures: 0,
                attempts: 0,
                last_failure: None,
                last_error: None,
                last_probe_rtt: RoundTrip::NONE,
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

        let mut outputs = OutputQueue::for_servers(config.servers.len());
        for r in &rejected {
            // Reported as a notification; the driver logs it for the user.
            outputs.push(Output::Notify(match &r.reason {
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
        let credentials = if per_server_credentials.is_empty() {
            DialCredentials::Shared(isolation.credentials(IsolationCategory::Directory))
        } else {
            DialCredentials::PerServer(per_server_credentials)
        };
        Ok(Self {
            connection_timeout: config.connection_timeout,
            keepalive: config.keepalive,
            close_timeout: config.close_timeout,
            maintenance_policy: config.maintenance,
            isolation,
            credentials,
            servers,
            by_node_id,
            rejected,
            links: Links::default(),
            timers,
            operations: Vec::new(),
            next_operation: 0,
            outputs,
            rng: JitterRng::new(entropy.jitter_seed),
            time: Clock::default(),
            maintenance: false,
            connected: 0,
            all_down: false,
            proxy: ProxyHealth::default(),
        })
    }

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
                ..
            } => self.dial_succeeded(now, attempt),
            Input::DialFinished {
                attempt,
                result: Err(failure),
                detail,
            } => self.dial_failed(now, attempt, failure, detail),
            Input::LinkLost { attempt, loss } => self.connection_lost(now, attempt, loss),
            Input::LinkActive(attempt) => self.heard(now, attempt, false),
            Input::ProbeAnswered(attempt) => self.heard(now, attempt, true),
            Input::ProbeUnsupported(attempt) => self.probe_unsupported(now, attempt),
            Input::CloseFinished { attempt, result } => self.close_finished(now, attempt, result),
            Input::ProxyReported(report) => {
                self.proxy_reported(now, report);
                Ok(())
            }
        }
    }

    /// Fires every timer due at `now`. Safe to call early or twice.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock(now);
        while let Some(key) = self.timers.pop_due(now) {
            self.fire(now, key);
        }
    }

    /// The next action or notification, in the order they arose.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next().map(|at| self.time.instant(at))
    }

    /// Time only moves forward: an earlier `now` counts as the latest seen.
    /// Drops `id`'s deadline if its state keeps none. A dial that failed or
    /// a link that was lost leaves its deadline in the table until the
    /// redial is scheduled, so the entry is moved rather than removed and
    /// added again; this removes it when nothing was scheduled.
    fn drop_unused_deadline(&mut self, id: ServerId) {
        if let State::Idle | State::GaveUp | State::WaitingForProxy = self.servers[id.index()].state
        {
            self.timers.cancel(TimerKey::Server(id));
        }
    }

    fn clock(&mut self, now: Instant) -> Tick {
        self.time.advance(now)
    }

    fn notify(&mut self, notification: Notification) {
        self.outputs.push(Output::Notify(notification));
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

    /// Acts on a deadline that has come.
    fn fire(&mut self, now: Tick, key: TimerKey) {
        match key {
            TimerKey::Server(id) => match self.servers[id.index()].state {
                State::Dialing { attempt, .. } => {
                    self.set_link_state(attempt, LinkState::Abandoned);
                    self.outputs.push(Output::Abort(attempt));
                    self.fail_attempt(now, attempt, id, DialFailure::TimedOut, None);
                }
                State::Closing { attempt, .. } => {
                    self.set_link_state(attempt, LinkState::CloseAbandoned);
                    self.closed(now, attempt, id, DisconnectReason::CloseTimedOut);
                }
                State::Connected { attempt, .. } => self.keepalive_due(now, attempt, id),
                State::BackingOff { .. } => {
                    let server = &mut self.servers[id.index()];
                    server.rest();
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
                // The first waiter its backoff lets dial is the probe.
                while let Some(id) = self.next_proxy_waiter() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_keeps_its_nanoseconds_and_never_reads_as_none() {
        let rtt = Duration::from_millis(1_234) + Duration::from_nanos(5);
        assert_eq!(RoundTrip::of(rtt).get(), Some(rtt));
        assert_eq!(RoundTrip::of(Duration::ZERO).get(), Some(Duration::ZERO));
        assert_eq!(RoundTrip::NONE.get(), None);
        // Too long for the 8 bytes: the longest one kept, still a round trip.
        let longest = Some(Duration::from_nanos(u64::MAX - 1));
        assert_eq!(RoundTrip::of(Duration::from_nanos(u64::MAX)).get(), longest);
        assert_eq!(RoundTrip::of(Duration::MAX).get(), longest);
    }
}
