//! A second seeded world, about what happens to links *after* the
//! handshake, over hours of virtual time: the real pool (driver, SOCKS
//! dialing, JoinMarket handshake and link task) on [`SimRuntime`], against
//! 1–3 simulated directories that behave like the real implementations
//! ([`DirectoryFate::Modelled`], with the real heartbeat timings and rate
//! limits of [`directory_model`](crate::directory_model)), each given one
//! [`Plan`] by the seed: healthy, a path that goes silent, a flood the
//! user never reads, a DISCONNECT (801). On top: a proxy that hangs for a
//! while (accepts TCP, never answers the SOCKS greeting), hooks that never
//! return, and user commands at random instants: the core's own
//! [`Command`]s, drawn by the fuzz alphabet's chooser
//! ([`command_from`]), alone or right after a `close_all` in the same
//! instant.
//!
//! Checked from the outside after every step (every timer instant):
//!
//! * **healthy links stay up**: no modelled directory ever closes a link on
//!   its own (no eviction, no rate-limit close: our probes stay within the
//!   profile's limits, its PINGs are answered), and no link is lost except
//!   as its plan says;
//! * **invariant 11** (silent path): `Lost(KeepaliveTimeout)` within
//!   `idle + probe_timeout` (+ [`SCHEDULING_SLACK`]) of the last byte the
//!   directory sent; with maintenance on, every lost link is redialed;
//! * **invariant 12** (memory): each link's held bytes
//!   ([`LinkStats`](dirpool::joinmarket::LinkStats)) stay within
//!   `inbound_bytes + max_line + 2 + outbound_bytes` plus the queue's slot
//!   slack; a user who reads after a flood first sees `Lagged(n)`, `n` the
//!   messages dropped;
//! * **DISCONNECT**: reported as `Lost(DisconnectedByPeer)`, redialed;
//! * **hung proxy**: `ProxyUnreachable` within `proxy_timeout`, no `GaveUp`,
//!   no server's `consecutive_failures` grows during the hang;
//! * **invariant 13** (hung hooks): every hook that hangs is reported
//!   (`HookTimedOut`), and after `close_all` and quiescence the pool holds
//!   no socket and runs no task beyond its own two (driver, hook runner);
//! * **last word**: after the final `close_all` + `connect_all_parallel`
//!   every directory is connected; after a `close_all` nothing connects
//!   until something asks.
//!
//! `DIRPOOL_LIVENESS_SEED=N` replays one seed (see `tests/simulation.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use dirpool::joinmarket::{
    DirectoryConnection, Envelope, JmConfig, JoinMarketHandshake, MESSAGE_OVERHEAD, Network,
    RecvError,
};
use dirpool::{Config, DirectoryPool, PoolEvent, PoolHooks, Runtime};
use dirpool_core::{
    Backoff, Command, DisconnectReason, Entropy, IsolationScope, IsolationToken, KeepalivePolicy,
    LinkLoss, MIN_PROBE_INTERVAL, OperationReport, RetryPolicy, ServerAddr,
};
use dirpool_core_kit::command_from;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::Kind;
use super::peers::{
    DIRECTORY_NICK, DirectoryFate, PeerEvent, ProxyFate, SimWorld, Twist, serve_proxy_connection,
};
use super::runtime::SimRuntime;
pub use super::{Failure, Trace};
use crate::directory_model::{DirectoryConfig, DirectoryProfile};

const PROXY: &str = "127.0.0.1:9050";

/// What the pool may take beyond a bound for its own scheduling: timers
/// of the driver, signals queued behind other work (virtual time; the
/// simulated network has no latency after the dial).
pub const SCHEDULING_SLACK: Duration = Duration::from_secs(1);

/// What one directory does on its first connection (later ones are the
/// plain healthy model of the same profile and timings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A real directory, all the way.
    Healthy(DirectoryProfile),
    /// A real directory whose path goes silent `after` the handshake.
    Silent {
        /// ng or rs (the reference has no probe the pool could use).
        profile: DirectoryProfile,
        /// When the silence starts.
        after: Duration,
    },
    /// A real directory that says DISCONNECT (801) `after` the handshake.
    Disconnect {
        /// The profile.
        profile: DirectoryProfile,
        /// When it says it.
        after: Duration,
    },
    /// joinmarket-ng (heartbeat scaled down tenfold, so that it PINGs
    /// during the flood) flooding public messages: `lines_per_tick` lines
    /// of `line_len` bytes every `tick` for `until`.
    Flood {
        /// Bytes per line, `\r\n` included.
        line_len: usize,
        /// Lines per tick.
        lines_per_tick: usize,
        /// Between ticks.
        tick: Duration,
        /// How long.
        until: Duration,
    },
}

impl Plan {
    fn config(&self) -> DirectoryConfig {
        match self {
            Self::Healthy(profile)
            | Self::Silent { profile, .. }
            | Self::Disconnect { profile, .. } => DirectoryConfig::new(*profile, DIRECTORY_NICK),
            Self::Flood { .. } => {
                DirectoryConfig::new(DirectoryProfile::JoinmarketNg, DIRECTORY_NICK).with_timings(
                    crate::directory_model::HeartbeatTimings::default().scaled_down(10),
                )
            }
        }
    }

    fn twist(&self) -> Option<Twist> {
        match *self {
            Self::Healthy(_) => None,
            Self::Silent { after, .. } => Some(Twist::SilentAfter(after)),
            Self::Disconnect { after, .. } => Some(Twist::DisconnectAfter(after)),
            Self::Flood {
                line_len,
                lines_per_tick,
                tick,
                until,
            } => Some(Twist::Flood {
                line_len,
                lines_per_tick,
                tick,
                until,
            }),
        }
    }
}

/// What the user does at one instant: the pool's own [`Command`]s (drawn
/// by the core kit's [`command_from`], the fuzz alphabet's chooser), so a
/// command added to the core is exercised here without being written
/// here again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UserStep {
    /// The command.
    Command(Command),
    /// `close_all`, and in the same instant the command.
    CloseThen(Command),
    /// One `recv` on every client that has dropped messages.
    Recv,
}

/// Everything one run is made of. [`scenario`] draws one from a seed; the
/// figures example builds its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// One plan per directory.
    pub plans: Vec<Plan>,
    /// Virtual time the world runs before its final commands.
    pub duration: Duration,
    /// The pool's keepalive.
    pub keepalive: KeepalivePolicy,
    /// The pool's hook timeout.
    pub hook_timeout: Duration,
    /// Percent of hook calls that never return.
    pub hook_hang_percent: u8,
    /// The proxy hangs (accepts TCP, never answers) from `.0` for `.1`.
    pub proxy_hang: Option<(Duration, Duration)>,
    /// User steps and when.
    pub commands: Vec<(Duration, UserStep)>,
    /// The links' `max_line`.
    pub max_line: usize,
    /// The links' `inbound_bytes`.
    pub inbound_bytes: usize,
    /// The links' `outbound_bytes`.
    pub outbound_bytes: usize,
    /// Maintenance backoff maximum.
    pub backoff_max: Duration,
    /// The pool's connection timeout.
    pub connection_timeout: Duration,
}

/// What a run measured, for the figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The trace.
    pub trace: Trace,
    /// For each silent path declared lost: from the directory's last byte
    /// to the `Disconnected` event.
    pub silent_losses: Vec<Duration>,
    /// The same, from the instant the path went silent.
    pub silence_to_loss: Vec<Duration>,
    /// Probes the pool had its clients send (PING 798).
    pub probes_sent: usize,
    /// `ProbeAnswered` events.
    pub probes_answered: usize,
    /// PINGs the modelled directories sent.
    pub directory_pings: usize,
    /// Links a modelled directory closed on its own (evictions and
    /// reactions).
    pub directory_closes: usize,
    /// The most bytes one link held at any step.
    pub peak_held: usize,
    /// The bound it was checked against.
    pub held_bound: usize,
    /// `Lagged(n)` the user saw.
    pub lagged_seen: Vec<u64>,
    /// Hooks that hung / `HookTimedOut` events.
    pub hooks_hung: usize,
    /// `HookTimedOut` events.
    pub hook_timeouts: usize,
}

/// The scenario of `seed`.
pub fn scenario(seed: u64) -> Scenario {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x11fe);
    let profiles = DirectoryProfile::ALL;
    let pingable = [
        DirectoryProfile::JoinmarketNg,
        DirectoryProfile::JoinmarketRs,
    ];
    let duration = Duration::from_secs(rng.u64(2 * 3600..=8 * 3600));
    let max_line = [4 * 1024, 16 * 1024, 64 * 1024][rng.usize(..3)];
    let inbound_bytes = max_line + MESSAGE_OVERHEAD + rng.usize(0..=4) * max_line;
    let outbound_bytes = dirpool::joinmarket::wire::MAX_SEND_LINE + rng.usize(0..=2) * 16 * 1024;
    let count = rng.usize(1..=3);
    let plans = (0..count)
        .map(|_| match rng.u8(..100) {
            0..=39 => Plan::Healthy(profiles[rng.usize(..3)]),
            40..=59 => Plan::Silent {
                profile: pingable[rng.usize(..2)],
                after: Duration::from_millis(rng.u64(1_000..3_600_000)),
            },
            60..=74 => Plan::Disconnect {
                profile: profiles[rng.usize(..3)],
                after: Duration::from_millis(rng.u64(1_000..3_600_000)),
            },
            _ => {
                let line_len = rng.usize(100..=max_line);
                let tick = Duration::from_millis(100);
                // Past 66 s the (scaled) directory PINGs during the flood.
                let until = Duration::from_secs(rng.u64(20..=120));
                let ticks = until.as_millis() / tick.as_millis();
                let target = (inbound_bytes * rng.usize(2..=6)) as u128;
                let per_tick = target.div_ceil(ticks * line_len as u128).max(1);
                Plan::Flood {
                    line_len,
                    lines_per_tick: usize::try_from(per_tick).unwrap_or(1),
                    tick,
                    until,
                }
            }
        })
        .collect();
    let keepalive = match rng.u8(..10) {
        0..=5 => KeepalivePolicy::default(),
        // The floor: on a path without latency (as here) probes exactly
        // that far apart must stay within joinmarket-rs's PING limit (see
        // `min_probe_interval_scenario`).
        6 => KeepalivePolicy::new(MIN_PROBE_INTERVAL, Duration::from_secs(10)),
        7 => KeepalivePolicy::new(Duration::from_secs(15), Duration::from_secs(20)),
        8 => KeepalivePolicy::new(Duration::from_secs(120), Duration::from_secs(30)),
        _ => KeepalivePolicy::new(Duration::from_secs(900), Duration::from_secs(60)),
    };
    let proxy_hang = (rng.u8(..3) == 0).then(|| {
        let start = Duration::from_millis(rng.u64(0..millis(duration)));
        (start, Duration::from_secs(rng.u64(5..=300)))
    });
    let mut commands: Vec<(Duration, UserStep)> = (0..rng.usize(0..=12))
        .map(|_| {
            let at = Duration::from_millis(rng.u64(0..millis(duration)));
            let retry = Duration::from_secs(rng.u64(1..=60));
            let command = command_from(rng.u8(..100), retry);
            let step = match rng.u8(..100) {
                0..=57 => UserStep::Command(command),
                58..=87 => UserStep::CloseThen(command),
                _ => UserStep::Recv,
            };
            (at, step)
        })
        .collect();
    // Someone asks for connections while the proxy hangs.
    if let Some((start, length)) = proxy_hang {
        let at = start + Duration::from_millis(rng.u64(0..millis(length)));
        let command = if rng.bool() {
            Command::ConnectAllParallel
        } else {
            let timeout = Duration::from_secs(rng.u64(1..=60));
            Command::ConnectAllWithRetry(RetryPolicy::new(timeout))
        };
        commands.push((at, UserStep::CloseThen(command)));
    }
    Scenario {
        plans,
        duration,
        keepalive,
        hook_timeout: Duration::from_millis(rng.u64(500..=10_000)),
        hook_hang_percent: [0, 10, 30][rng.usize(..3)],
        proxy_hang,
        commands,
        max_line,
        inbound_bytes,
        outbound_bytes,
        backoff_max: Duration::from_secs(rng.u64(2..=30)),
        // Short ones too: a hung proxy must be the pool's fault whatever
        // the connection timeout (see `short_connection_timeout_scenario`).
        connection_timeout: Duration::from_secs(rng.u64(5..=60)),
    }
}

/// One healthy directory (or `servers` of them), a short connection
/// timeout, and a proxy that hangs for five minutes while the user asks
/// for connections: the hang must be the pool's fault (`ProxyUnreachable`),
/// never a server's, whatever the connection timeout. (It was a server's
/// when the connection timeout was at or below `proxy_timeout`, or below
/// `servers × proxy_timeout` with dials queued behind the isolation probe.)
pub fn short_connection_timeout_scenario(servers: usize, connection_timeout: Duration) -> Scenario {
    let plans = vec![Plan::Healthy(DirectoryProfile::JoinmarketNg); servers];
    Scenario {
        proxy_hang: Some((Duration::from_secs(60), Duration::from_secs(300))),
        commands: vec![
            (
                Duration::from_secs(61),
                UserStep::CloseThen(Command::ConnectAllParallel),
            ),
            (
                Duration::from_secs(120),
                UserStep::Command(Command::ConnectAllParallel),
            ),
        ],
        connection_timeout,
        ..base_scenario(plans, Duration::from_secs(900))
    }
}

/// One healthy directory (`profile`) idle for `duration`, every default,
/// nothing else happening.
pub fn base_scenario(plans: Vec<Plan>, duration: Duration) -> Scenario {
    Scenario {
        plans,
        duration,
        keepalive: KeepalivePolicy::default(),
        hook_timeout: Duration::from_secs(10),
        hook_hang_percent: 0,
        proxy_hang: None,
        commands: Vec::new(),
        max_line: 64 * 1024,
        inbound_bytes: 1024 * 1024,
        outbound_bytes: 256 * 1024,
        backoff_max: Duration::from_secs(10),
        connection_timeout: Duration::from_secs(30),
    }
}

/// A healthy joinmarket-rs directory probed at the floor
/// ([`dirpool_core::MIN_PROBE_INTERVAL`]) for ten minutes on a path
/// without latency, nothing else happening: the probes must stay within
/// rs's PING limit (with a 10 s floor the seventh PING arrived exactly 60 s
/// after the first, while rs's one-minute window still held the first).
pub fn min_probe_interval_scenario() -> Scenario {
    Scenario {
        keepalive: KeepalivePolicy::new(MIN_PROBE_INTERVAL, Duration::from_secs(30)),
        connection_timeout: Duration::from_secs(10),
        ..base_scenario(
            vec![Plan::Healthy(DirectoryProfile::JoinmarketRs)],
            Duration::from_secs(600),
        )
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs the world of `seed` ([`scenario`]) and checks it.
///
/// # Errors
/// The first broken invariant, with the trace.
pub fn run(seed: u64) -> Result<Report, Failure> {
    run_scenario(seed, &scenario(seed))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The world's mutable state, shared with the peers, hooks and event task.
struct State {
    rng: fastrand::Rng,
    t0: Instant,
    now: Instant,
    trace: Vec<String>,
    violations: Vec<String>,
    /// Directory host → its plan.
    plans: BTreeMap<String, Plan>,
    /// Directory host → tunnels forwarded to it so far.
    tunnels: BTreeMap<String, u64>,
    /// node_id → registered, by the events.
    registered: BTreeMap<String, bool>,
    /// The pool's keepalive loss bound.
    loss_bound: Duration,
    /// node_id → the instant its silent directory last sent a byte.
    silent_due: BTreeMap<String, Instant>,
    /// node_id → the instant its path went silent.
    silent_since: BTreeMap<String, Instant>,
    /// node_ids whose directory said DISCONNECT.
    disconnect_due: BTreeMap<String, Instant>,
    /// node_id → by when a lost link must be back (maintenance on).
    redial_due: BTreeMap<String, Instant>,
    redial_bound: Duration,
    maintenance: bool,
    /// `close_all` was the last word.
    quiet_after_close: bool,
    proxy_hung: bool,
    /// The last instant the proxy was hung (it delays redials).
    hung_until: Option<Instant>,
    proxy_timeout: Duration,
    proxy_reported_down: bool,
    /// Hung proxy connections (conn → accepted) a report is owed for.
    hung_accepts: BTreeMap<u64, Instant>,
    /// node_id → flood bytes, for the `Lagged` check after a flood.
    flood_ended: Vec<(String, u64)>,
    hook_hang_percent: u8,
    /// The links' `inbound_bytes`.
    inbound_bytes: usize,
    /// Print the trace as it is written (`DIRPOOL_LIVENESS_ECHO`).
    echo: bool,
    report: Report,
}

impl State {
    fn secs(&self) -> f64 {
        self.now.duration_since(self.t0).as_secs_f64()
    }

    fn log(&mut self, line: impl AsRef<str>) {
        let line = format!("{:11.3} {}", self.secs(), line.as_ref());
        if self.echo {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{line}");
            }
        }
        self.trace.push(line);
    }

    fn violation(&mut self, message: String) {
        self.log(format!("VIOLATION {message}"));
        self.violations.push(message);
    }

    /// The next instant a check would fail if nothing happened before it
    /// (just past it), so that the run steps there.
    fn next_deadline(&self) -> Option<Instant> {
        let tick = Duration::from_millis(1);
        let silent = self
            .silent_due
            .values()
            .map(|at| *at + self.loss_bound + SCHEDULING_SLACK + tick);
        let said = self
            .disconnect_due
            .values()
            .map(|at| *at + SCHEDULING_SLACK + tick);
        let hung = self
            .hung_accepts
            .values()
            .map(|at| *at + self.proxy_timeout + SCHEDULING_SLACK + tick);
        let redial = self.redial_due.values().map(|at| *at + tick);
        silent.chain(said).chain(hung).chain(redial).min()
    }

    fn asked(&mut self, line: impl AsRef<str>) {
        self.quiet_after_close = false;
        self.log(line);
    }
}

fn short(host: &str) -> &str {
    host.get(..8).unwrap_or(host)
}

fn node_of(host: &str) -> String {
    format!("{host}:5222")
}

struct World {
    state: Arc<Mutex<State>>,
}

impl SimWorld for World {
    fn proxy_fate(&self, _host: &str, _port: u16, _username: Option<&str>) -> ProxyFate {
        let mut s = lock(&self.state);
        ProxyFate::Forward {
            latency: Duration::from_millis(s.rng.u64(50..400)),
        }
    }

    fn directory_fate(&self, host: &str) -> DirectoryFate {
        let mut s = lock(&self.state);
        let Some(plan) = s.plans.get(host).cloned() else {
            return DirectoryFate::CloseWithoutReply;
        };
        let tunnels = s.tunnels.entry(host.to_owned()).or_insert(0);
        *tunnels += 1;
        let first = *tunnels == 1;
        let config = plan.config();
        match plan.twist().filter(|_| first) {
            Some(twist) => DirectoryFate::ModelledWith { config, twist },
            None => {
                let reply_delay = Duration::from_millis(s.rng.u64(0..300));
                DirectoryFate::Modelled {
                    config,
                    reply_delay,
                }
            }
        }
    }

    fn proxy_accepts_user_pass(&self) -> bool {
        true
    }

    fn record(&self, event: PeerEvent) {
        let mut s = lock(&self.state);
        match &event {
            PeerEvent::DirectoryModelClose { host, close, .. } => {
                s.report.directory_closes += 1;
                s.violation(format!(
                    "healthy link: directory {} closed our link on its own: {}",
                    short(host),
                    close.reason
                ));
            }
            PeerEvent::DirectoryPing { host, .. } => {
                s.report.directory_pings += 1;
                s.log(format!("directory {} PING", short(host)));
            }
            PeerEvent::PathSilent {
                host,
                conn,
                last_sent,
            } => {
                let node = node_of(host);
                let last = last_sent.duration_since(s.t0).as_secs_f64();
                s.log(format!(
                    "directory {} conn {conn}: path silent (last byte at {last:.3})",
                    short(host)
                ));
                if s.registered.get(&node) == Some(&true) {
                    let now = s.now;
                    s.silent_since.insert(node.clone(), now);
                    s.silent_due.insert(node, *last_sent);
                }
            }
            PeerEvent::DirectoryDisconnect { host, conn } => {
                let node = node_of(host);
                s.log(format!("directory {} conn {conn}: DISCONNECT", short(host)));
                if s.registered.get(&node) == Some(&true) {
                    let now = s.now;
                    s.disconnect_due.insert(node, now);
                }
            }
            PeerEvent::FloodEnded { host, conn, bytes } => {
                s.log(format!(
                    "directory {} conn {conn}: flood over ({bytes} bytes)",
                    short(host)
                ));
                s.flood_ended.push((node_of(host), *bytes));
            }
            PeerEvent::DirectoryOpen { host, conn } => {
                s.log(format!("directory {} accepted conn {conn}", short(host)));
            }
            PeerEvent::DirectoryClosed { host, conn } => {
                s.log(format!("directory {} closed conn {conn}", short(host)));
            }
            PeerEvent::Pong { .. } | PeerEvent::DirectoryHandshake { .. } => {}
            other => s.log(format!("{other:?}")),
        }
    }
}

/// The JoinMarket handshake, its client wrapped so the world can reach the
/// connection (stats, recv).
struct LiveHandshake {
    inner: JoinMarketHandshake,
    probes: Arc<AtomicUsize>,
}

/// A registered client: the real connection, counting the probes sent.
#[derive(Debug)]
pub struct LiveClient {
    inner: DirectoryConnection,
    probes: Arc<AtomicUsize>,
}

impl dirpool::Handshake for LiveHandshake {
    type Client = LiveClient;

    async fn handshake(
        &self,
        context: &dirpool::HandshakeContext,
        server: &ServerAddr,
        stream: dirpool::BoxedStream,
    ) -> Result<LiveClient, dirpool::HandshakeError> {
        let inner = self.inner.handshake(context, server, stream).await?;
        Ok(LiveClient {
            inner,
            probes: Arc::clone(&self.probes),
        })
    }
}

impl dirpool::Client for LiveClient {
    fn closed(&self) -> impl std::future::Future<Output = LinkLoss> + Send {
        self.inner.closed()
    }

    fn close(&self) -> impl std::future::Future<Output = Result<(), dirpool::CloseError>> + Send {
        self.inner.close()
    }

    fn probe(&self) -> dirpool::ProbeStatus {
        let status = self.inner.probe();
        if status == dirpool::ProbeStatus::Sent {
            self.probes.fetch_add(1, Ordering::SeqCst);
        }
        status
    }
}

/// Hooks that, at random, never return (holding the client).
struct LiveHooks {
    state: Arc<Mutex<State>>,
}

impl LiveHooks {
    fn hangs(&self, what: &str, node_id: &str) -> bool {
        let mut s = lock(&self.state);
        let percent = s.hook_hang_percent;
        let hang = s.rng.u8(..100) < percent;
        if hang {
            s.report.hooks_hung += 1;
            s.log(format!("hook {what} {} hangs", short(node_id)));
        }
        hang
    }
}

impl PoolHooks<LiveClient> for LiveHooks {
    fn on_connected(
        &self,
        node_id: &str,
        client: &Arc<LiveClient>,
    ) -> impl std::future::Future<Output = ()> + Send {
        let hang = self.hangs("connected", node_id);
        let client = Arc::clone(client);
        async move {
            if hang {
                let _held = client;
                std::future::pending::<()>().await;
            }
        }
    }

    fn on_disconnected(
        &self,
        node_id: &str,
        _reason: DisconnectReason,
    ) -> impl std::future::Future<Output = ()> + Send {
        let hang = self.hangs("disconnected", node_id);
        async move {
            if hang {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Counts the world's own live tasks, so the pool's can be told apart.
#[derive(Clone)]
struct Tasks {
    rt: Arc<dyn Runtime>,
    live: Arc<AtomicUsize>,
}

struct TaskGuard(Arc<AtomicUsize>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Tasks {
    fn spawn(&self, future: impl std::future::Future<Output = ()> + Send + 'static) {
        self.live.fetch_add(1, Ordering::SeqCst);
        let guard = TaskGuard(Arc::clone(&self.live));
        let task: BoxFuture<'static, ()> = Box::pin(async move {
            let _guard = guard;
            future.await;
        });
        self.rt.spawn(task);
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

/// Holds a hung proxy connection: reads and discards until the client
/// closes, never writes.
async fn hold_hung(
    mut stream: tokio::io::DuplexStream,
    state: Arc<Mutex<State>>,
    conn: u64,
    accepted: Instant,
) {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 512];
    while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
    let mut s = lock(&state);
    let now = s.now;
    // Dropped by the client before its proxy timeout: no report owed.
    if now < accepted + s.proxy_timeout {
        s.hung_accepts.remove(&conn);
    }
    s.log(format!("proxy: hung conn {conn} closed by the client"));
}

/// Runs `scenario` with `seed` and checks every invariant.
///
/// # Errors
/// The first broken invariant, with the trace.
#[allow(clippy::too_many_lines)]
pub fn run_scenario(seed: u64, scenario: &Scenario) -> Result<Report, Failure> {
    let t0 = Instant::now();
    let sim = SimRuntime::new(t0);
    let rt: Arc<dyn Runtime> = Arc::new(sim.clone());
    let tasks = Tasks {
        rt: Arc::clone(&rt),
        live: Arc::new(AtomicUsize::new(0)),
    };
    let hosts: Vec<ServerAddr> = (0..scenario.plans.len())
        .map(|i| {
            let mut key = [0u8; 32];
            key[0] = u8::try_from(i).unwrap_or(0);
            key[1..9].copy_from_slice(&seed.to_le_bytes());
            key[9] = 0x11;
            ServerAddr::from_onion_key(&key, 5222)
        })
        .collect();
    let mut config = Config::new(hosts.iter().map(|a| a.node_id().to_owned()));
    config.proxy = PROXY.parse().expect("proxy address");
    config.pool.isolation = IsolationScope::PerCategory;
    config.pool.connection_timeout = scenario.connection_timeout;
    config.pool.keepalive = scenario.keepalive;
    config.pool.maintenance.backoff =
        Backoff::new(Duration::from_millis(500), scenario.backoff_max, 2.0).with_jitter(0.2);
    config.pool.maintenance.max_retries = 3;
    config.hook_timeout = scenario.hook_timeout;
    let proxy_timeout = config.proxy_timeout;
    // A redial: the backoff (jitter up to 20 %), the dial (proxy latency,
    // handshake reply delay), within the connection timeout.
    let redial_bound =
        scenario.backoff_max.mul_f64(1.2) + scenario.connection_timeout + SCHEDULING_SLACK;
    let held_bound = scenario.inbound_bytes
        + 64 * std::mem::size_of::<Envelope>()
        + scenario.max_line
        + 2
        + scenario.outbound_bytes;

    let state = Arc::new(Mutex::new(State {
        rng: fastrand::Rng::with_seed(seed ^ 0x0b5e55ed),
        t0,
        now: t0,
        trace: Vec::new(),
        violations: Vec::new(),
        plans: hosts
            .iter()
            .zip(&scenario.plans)
            .map(|(a, p)| (a.host().to_owned(), p.clone()))
            .collect(),
        tunnels: BTreeMap::new(),
        registered: BTreeMap::new(),
        loss_bound: scenario.keepalive.loss_bound(),
        silent_due: BTreeMap::new(),
        silent_since: BTreeMap::new(),
        disconnect_due: BTreeMap::new(),
        redial_due: BTreeMap::new(),
        redial_bound,
        maintenance: false,
        quiet_after_close: false,
        proxy_hung: false,
        hung_until: None,
        proxy_timeout,
        proxy_reported_down: false,
        hung_accepts: BTreeMap::new(),
        flood_ended: Vec::new(),
        hook_hang_percent: scenario.hook_hang_percent,
        inbound_bytes: scenario.inbound_bytes,
        echo: std::env::var_os("DIRPOOL_LIVENESS_ECHO").is_some(),
        report: Report {
            held_bound,
            ..Report::default()
        },
    }));
    {
        let mut s = lock(&state);
        let plans: Vec<String> = hosts
            .iter()
            .zip(&scenario.plans)
            .map(|(a, p)| format!("{} {p:?}", short(a.host())))
            .collect();
        s.log(format!(
            "world: {} for {:?}, keepalive {:?}, hooks hang {}% (timeout {:?}), proxy hang {:?}, max_line {} inbound {} outbound {}, connection timeout {:?}, backoff max {:?}",
            plans.join("; "),
            scenario.duration,
            scenario.keepalive,
            scenario.hook_hang_percent,
            scenario.hook_timeout,
            scenario.proxy_hang,
            scenario.max_line,
            scenario.inbound_bytes,
            scenario.outbound_bytes,
            scenario.connection_timeout,
            scenario.backoff_max
        ));
    }
    let world: Arc<dyn SimWorld> = Arc::new(World {
        state: Arc::clone(&state),
    });

    let mut jm = JmConfig::new(crate::client_identity(), Network::Regtest);
    jm.max_line = scenario.max_line;
    jm.inbound_bytes = scenario.inbound_bytes;
    jm.outbound_bytes = scenario.outbound_bytes;
    let probes = Arc::new(AtomicUsize::new(0));
    let handshake = LiveHandshake {
        inner: JoinMarketHandshake::new(jm).map_err(|e| Failure {
            kind: Kind::Liveness,
            seed,
            message: format!("bad JmConfig: {e}"),
            trace: Trace::default(),
        })?,
        probes: Arc::clone(&probes),
    };
    let entropy = Entropy {
        isolation_token: IsolationToken::from_bytes([9; 16]),
        jitter_seed: seed,
    };
    let pool = DirectoryPool::builder(config, handshake)
        .entropy(entropy)
        .hooks(LiveHooks {
            state: Arc::clone(&state),
        })
        .spawn(Arc::clone(&rt))
        .map_err(|e| Failure {
            kind: Kind::Liveness,
            seed,
            message: format!("pool did not start: {e}"),
            trace: Trace::default(),
        })?;
    sim.run_until_idle();
    let pool_tasks = sim.pending_tasks();
    lock(&state).log(format!("pool: {pool_tasks} tasks of its own"));

    // Tor: hung connections are held silently, the others served.
    let listener = Arc::new(sim.bind(PROXY.parse::<SocketAddr>().expect("proxy address")));
    {
        let listener = Arc::clone(&listener);
        let state = Arc::clone(&state);
        let tasks2 = tasks.clone();
        let rt2 = Arc::clone(&rt);
        tasks.spawn(async move {
            let mut conn = 0u64;
            while let Some((stream, _)) = listener.accept().await {
                conn += 1;
                let hung = {
                    let mut s = lock(&state);
                    if s.proxy_hung {
                        let now = s.now;
                        if !s.proxy_reported_down {
                            s.hung_accepts.insert(conn, now);
                        }
                        s.log(format!("proxy: conn {conn} accepted, hung"));
                    }
                    s.proxy_hung.then_some(s.now)
                };
                match hung {
                    Some(at) => tasks2.spawn(hold_hung(stream, Arc::clone(&state), conn, at)),
                    None => tasks2.spawn(serve_proxy_connection(
                        stream,
                        Arc::clone(&world),
                        Arc::clone(&rt2),
                        conn,
                    )),
                }
            }
        });
    }

    // Every pool event through the checks.
    {
        let mut events = pool.events();
        let state = Arc::clone(&state);
        tasks.spawn(async move {
            while let Some(event) = events.next().await {
                on_event(&mut lock(&state), &event);
            }
        });
    }

    // Start: connect, maintenance on.
    user(
        &tasks,
        &pool,
        &state,
        UserStep::Command(Command::ConnectAllParallel),
    );
    user(
        &tasks,
        &pool,
        &state,
        UserStep::Command(Command::StartMaintenance),
    );

    // The run: step from timer to timer, with the commands and the hang
    // at their instants.
    let mut schedule: Vec<(Duration, Step)> = scenario
        .commands
        .iter()
        .map(|&(at, c)| (at, Step::User(c)))
        .collect();
    if let Some((start, length)) = scenario.proxy_hang {
        schedule.push((start, Step::Hang(true)));
        schedule.push((start + length, Step::Hang(false)));
    }
    schedule.sort_by_key(|(at, _)| *at);
    let mut schedule = schedule.into_iter().peekable();
    let end = t0 + scenario.duration;
    let mut hang_status: Option<Vec<u32>> = None;
    loop {
        sim.run_until_idle();
        check(&state, &pool).map_err(|m| failure(seed, &state, m))?;
        let due = schedule.peek().map(|(at, _)| t0 + *at);
        let stop = (sim.now() < end).then_some(end);
        let deadline = lock(&state).next_deadline().filter(|d| *d > sim.now());
        let next = [sim.next_timer(), due, stop, deadline]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end)
            .max(sim.now());
        lock(&state).now = next;
        sim.advance_to(next);
        while let Some((_, step)) = schedule.next_if(|(at, _)| t0 + *at <= sim.now()) {
            match step {
                Step::User(command) => user(&tasks, &pool, &state, command),
                Step::Hang(on) => {
                    let statuses = failures(&sim, &pool);
                    let mut s = lock(&state);
                    s.proxy_hung = on;
                    let now = s.now;
                    s.hung_until = Some(now);
                    s.log(format!(
                        "proxy: {} (consecutive failures {statuses:?})",
                        if on { "hangs" } else { "answers again" }
                    ));
                    if on {
                        hang_status = Some(statuses);
                    } else if let Some(before) = hang_status.take() {
                        for (i, (b, a)) in before.iter().zip(&statuses).enumerate() {
                            if a > b {
                                s.violation(format!(
                                    "hung proxy: server {i}'s consecutive failures grew from {b} to {a} during the hang"
                                ));
                            }
                        }
                    }
                }
            }
        }
        if sim.now() >= end && schedule.peek().is_none() {
            break;
        }
    }

    // The last word, part one: close_all and connect_all_parallel in the
    // same instant; once both are done every directory is connected.
    {
        let mut s = lock(&state);
        s.proxy_hung = false;
        s.log("final: close_all + connect_all_parallel");
    }
    let settle = redial_bound * 2 + scenario.hook_timeout;
    user(
        &tasks,
        &pool,
        &state,
        UserStep::CloseThen(Command::ConnectAllParallel),
    );
    let until = sim.now() + settle;
    advance_checked(&sim, &state, &pool, until).map_err(|m| failure(seed, &state, m))?;
    let connected = pool.connected_count();
    if connected != hosts.len() {
        return Err(failure(
            seed,
            &state,
            format!(
                "last word: {connected} of {} connected {settle:?} after close_all + connect_all_parallel",
                hosts.len()
            ),
        ));
    }

    // Part two: close_all; nothing connects, and once the hooks have run
    // out no socket or task of the pool is left.
    let open = sim.open_client_streams();
    lock(&state).log(format!(
        "final: close_all ({open} sockets open, {} tasks of the pool)",
        sim.pending_tasks().saturating_sub(tasks.live())
    ));
    user(&tasks, &pool, &state, UserStep::Command(Command::CloseAll));
    let mut waited = 0;
    loop {
        let until = sim.now() + scenario.hook_timeout + Duration::from_secs(5);
        advance_checked(&sim, &state, &pool, until).map_err(|m| failure(seed, &state, m))?;
        waited += 1;
        let s = lock(&state);
        if s.report.hook_timeouts >= s.report.hooks_hung || waited > 1000 {
            break;
        }
    }
    let s = lock(&state);
    let pool_now = sim.pending_tasks().saturating_sub(tasks.live());
    let mut problems = Vec::new();
    if !pool.clients().is_empty() {
        problems.push(format!("{} clients after close_all", pool.clients().len()));
    }
    if s.report.hook_timeouts != s.report.hooks_hung {
        problems.push(format!(
            "inv 13: {} hooks hung, {} HookTimedOut",
            s.report.hooks_hung, s.report.hook_timeouts
        ));
    }
    if sim.open_client_streams() != 0 {
        problems.push(format!(
            "inv 13: {} sockets still open after close_all and quiescence",
            sim.open_client_streams()
        ));
    }
    if pool_now != pool_tasks {
        problems.push(format!(
            "inv 13: the pool runs {pool_now} tasks after close_all and quiescence (its own: {pool_tasks})"
        ));
    }
    drop(s);
    if let Some(message) = problems.first() {
        return Err(failure(seed, &state, message.clone()));
    }
    let mut s = lock(&state);
    s.report.probes_sent = probes.load(Ordering::SeqCst);
    s.report.trace = Trace(std::mem::take(&mut s.trace));
    let report = s.report.clone();
    drop(s);
    drop(pool);
    sim.shutdown();
    Ok(report)
}

enum Step {
    User(UserStep),
    Hang(bool),
}

/// Each server's consecutive failures, now.
fn failures<H: dirpool::Handshake>(sim: &SimRuntime, pool: &DirectoryPool<H>) -> Vec<u32> {
    let pool = pool.clone();
    sim.block_on(async move { pool.status().await })
        .map(|v| v.iter().map(|s| s.consecutive_failures).collect())
        .unwrap_or_default()
}

/// Advances to `until` timer by timer, checking after each.
fn advance_checked(
    sim: &SimRuntime,
    state: &Arc<Mutex<State>>,
    pool: &DirectoryPool<LiveHandshake>,
    until: Instant,
) -> Result<(), String> {
    loop {
        sim.run_until_idle();
        check(state, pool)?;
        if sim.now() >= until {
            return Ok(());
        }
        let deadline = lock(state).next_deadline().filter(|d| *d > sim.now());
        let next = [sim.next_timer(), deadline]
            .into_iter()
            .flatten()
            .min()
            .filter(|t| *t <= until)
            .unwrap_or(until);
        lock(state).now = next;
        sim.advance_to(next);
    }
}

/// Issues one user step. Every command runs as a task, in the order
/// issued (the executor is FIFO), so that a `close_all` reaches the driver
/// before the command issued in the same instant after it.
fn user(
    tasks: &Tasks,
    pool: &DirectoryPool<LiveHandshake>,
    state: &Arc<Mutex<State>>,
    step: UserStep,
) {
    match step {
        UserStep::Command(command) => user_command(tasks, pool, state, command),
        UserStep::CloseThen(command) => {
            user_command(tasks, pool, state, Command::CloseAll);
            user_command(tasks, pool, state, command);
        }
        UserStep::Recv => {
            lock(state).log("user: recv on every link that dropped messages");
            for (node, client) in pool.clients() {
                read_lagged(state, &node, &client, None);
            }
        }
    }
}

/// Issues one command: the commands the checks know get their own arm
/// (what they promise, through the named shorthands of
/// [`DirectoryPool::command`]); any other goes through `command` itself
/// with the checks every command owes (a report within bounds; the
/// invariants are checked after every step anyway).
fn user_command(
    tasks: &Tasks,
    pool: &DirectoryPool<LiveHandshake>,
    state: &Arc<Mutex<State>>,
    command: Command,
) {
    let pool2 = pool.clone();
    let state2 = Arc::clone(state);
    let servers = pool.servers().len();
    match command {
        Command::CloseAll => {
            let mut s = lock(state);
            s.quiet_after_close = true;
            s.maintenance = false;
            s.redial_due.clear();
            s.log("user: close_all");
            drop(s);
            tasks.spawn(async move {
                let r = pool2.close_all().await;
                let mut s = lock(&state2);
                s.log(format!(
                    "user: close_all -> {:?}",
                    r.as_ref().map(|r| r.connected)
                ));
                check_outcome(&mut s, "close_all", r.map(Some), servers);
            });
        }
        Command::ConnectAllParallel => {
            lock(state).asked("user: connect_all_parallel");
            tasks.spawn(async move {
                let n = pool2.connect_all_parallel().await;
                let mut s = lock(&state2);
                s.log(format!("user: connect_all_parallel -> {n:?}"));
                check_count(&mut s, "connect_all_parallel", n, servers);
            });
        }
        Command::ConnectAllWithRetry(policy) => {
            lock(state).asked(format!(
                "user: connect_all_with_retry({:?})",
                policy.timeout
            ));
            tasks.spawn(async move {
                let n = pool2.connect_all_with_retry(policy).await;
                let mut s = lock(&state2);
                s.log(format!("user: connect_all_with_retry -> {n:?}"));
                check_count(&mut s, "connect_all_with_retry", n, servers);
            });
        }
        Command::ReconnectDisconnected => {
            lock(state).asked("user: reconnect_disconnected");
            tasks.spawn(async move {
                let n = pool2.reconnect_disconnected().await.map(|v| v.len());
                let mut s = lock(&state2);
                s.log(format!("user: reconnect_disconnected -> {n:?}"));
                check_count(&mut s, "reconnect_disconnected", n, servers);
            });
        }
        Command::StartMaintenance => {
            let mut s = lock(state);
            s.maintenance = true;
            s.asked("user: start_maintenance");
            // Everything not connected is due back.
            let deadline = s.now + s.redial_bound;
            let nodes: Vec<String> = pool
                .servers()
                .iter()
                .map(|a| a.node_id().to_owned())
                .collect();
            for node in nodes {
                if s.registered.get(&node) != Some(&true) {
                    s.redial_due.entry(node).or_insert(deadline);
                }
            }
            drop(s);
            tasks.spawn(async move {
                let r = pool2.command(command).await;
                no_operation(&mut lock(&state2), "start_maintenance", r);
            });
        }
        Command::StopMaintenance => {
            let mut s = lock(state);
            s.maintenance = false;
            s.redial_due.clear();
            s.log("user: stop_maintenance");
            drop(s);
            tasks.spawn(async move {
                let r = pool2.command(command).await;
                no_operation(&mut lock(&state2), "stop_maintenance", r);
            });
        }
        // A command these checks do not know yet: it may connect, so it
        // ends the quiet after a close_all.
        other => {
            let what = format!("{other:?}");
            lock(state).asked(format!("user: command {what}"));
            tasks.spawn(async move {
                let r = pool2.command(other).await;
                let mut s = lock(&state2);
                s.log(format!(
                    "user: command {what} -> {:?}",
                    r.as_ref().map(|r| r.as_ref().map(|r| r.connected))
                ));
                check_outcome(&mut s, &what, r, servers);
            });
        }
    }
}

/// What every command owes: no error (the simulation's commands are all
/// valid), and a report within the pool's bounds.
fn check_outcome(
    s: &mut State,
    what: &str,
    outcome: Result<Option<OperationReport>, dirpool::PoolError>,
    servers: usize,
) {
    match outcome {
        Ok(Some(report)) => {
            let mut newly = report.newly_connected.clone();
            newly.sort_unstable();
            newly.dedup();
            if report.connected > servers
                || newly.len() != report.newly_connected.len()
                || newly.iter().any(|id| id.index() >= servers)
            {
                s.violation(format!(
                    "{what}: report out of bounds for {servers} servers: {report:?}"
                ));
            }
        }
        Ok(None) => {}
        Err(e) => s.violation(format!("{what} failed: {e}")),
    }
}

/// [`check_outcome`] for a shorthand that returns a count of servers.
fn check_count(
    s: &mut State,
    what: &str,
    count: Result<usize, dirpool::PoolError>,
    servers: usize,
) {
    match count {
        Ok(n) if n > servers => s.violation(format!("{what}: {n} of {servers} servers")),
        Ok(_) => {}
        Err(e) => s.violation(format!("{what} failed: {e}")),
    }
}

/// A maintenance switch starts no operation: `command` answers `None`.
fn no_operation(
    s: &mut State,
    what: &str,
    outcome: Result<Option<OperationReport>, dirpool::PoolError>,
) {
    match outcome {
        Ok(None) => {}
        other => s.violation(format!("{what}: expected no operation, got {other:?}")),
    }
}

/// One `recv` on a link that dropped messages: it must say `Lagged(n)`,
/// `n` the count dropped. With `flooded`, the flood's bytes: more than the
/// inbound queue holds must have dropped something.
fn read_lagged(
    state: &Arc<Mutex<State>>,
    node: &str,
    client: &LiveClient,
    flooded: Option<(u64, usize)>,
) {
    let lagged = client.inner.stats().lagged;
    let mut s = lock(state);
    if let Some((bytes, inbound)) = flooded {
        if bytes > inbound as u64 && lagged == 0 {
            s.violation(format!(
                "inv 12: {node} was flooded with {bytes} bytes (inbound queue {inbound}) by a user who never reads, and dropped nothing"
            ));
        }
    }
    if lagged == 0 {
        return;
    }
    drop(s);
    let got = client.inner.recv().now_or_never();
    let mut s = lock(state);
    s.log(format!("user: recv on {} -> {got:?}", short(node)));
    match got {
        Some(Err(RecvError::Lagged(n))) if n == lagged => s.report.lagged_seen.push(n),
        other => s.violation(format!(
            "inv 12: {node} dropped {lagged} messages but recv gave {other:?}"
        )),
    }
}

/// One pool event.
fn on_event(s: &mut State, event: &PoolEvent) {
    match event {
        PoolEvent::Connected { node_id } => {
            s.log(format!("event connected {}", short(node_id)));
            if s.quiet_after_close {
                s.violation(format!(
                    "last word: {node_id} connected after close_all with nothing asking for it"
                ));
            }
            if s.registered.insert(node_id.clone(), true) == Some(true) {
                s.violation(format!("{node_id} connected twice"));
            }
            s.redial_due.remove(node_id);
        }
        PoolEvent::Disconnected { node_id, reason } => {
            s.log(format!("event disconnected {} ({reason})", short(node_id)));
            if s.registered.insert(node_id.clone(), false) != Some(true) {
                s.violation(format!("{node_id} disconnected while not connected"));
            }
            let silent = s.silent_due.remove(node_id);
            let since = s.silent_since.remove(node_id);
            let said = s.disconnect_due.remove(node_id);
            let DisconnectReason::Lost(loss) = reason else {
                return;
            };
            match (loss, silent, said) {
                (LinkLoss::KeepaliveTimeout, Some(last_sent), _) => {
                    let took = s.now.saturating_duration_since(last_sent);
                    s.report.silent_losses.push(took);
                    if let Some(since) = since {
                        let after = s.now.saturating_duration_since(since);
                        s.report.silence_to_loss.push(after);
                    }
                    if took > s.loss_bound + SCHEDULING_SLACK {
                        s.violation(format!(
                            "inv 11: silent path to {node_id} declared lost {took:?} after its last byte (bound {:?} + {SCHEDULING_SLACK:?})",
                            s.loss_bound
                        ));
                    }
                }
                (LinkLoss::DisconnectedByPeer, _, Some(_)) => {}
                _ => s.violation(format!(
                    "{node_id} lost ({loss}) though its directory neither went silent nor said DISCONNECT (silent: {}, DISCONNECT: {})",
                    silent.is_some(),
                    said.is_some()
                )),
            }
            if s.maintenance {
                let deadline = s.now + s.redial_bound;
                s.redial_due.insert(node_id.clone(), deadline);
            }
        }
        PoolEvent::ProbeAnswered { .. } => s.report.probes_answered += 1,
        PoolEvent::HookTimedOut { node_id, hook } => {
            s.report.hook_timeouts += 1;
            s.log(format!("event hook {hook} {} timed out", short(node_id)));
        }
        PoolEvent::ProxyUnreachable => {
            s.proxy_reported_down = true;
            s.hung_accepts.clear();
            s.log("event proxy unreachable");
        }
        PoolEvent::ProxyRecovered => {
            s.proxy_reported_down = false;
            s.log("event proxy recovered");
        }
        PoolEvent::GaveUp { node_id, failures } => s.violation(format!(
            "{node_id} gave up after {failures} failures (no directory here ever fails a dial)"
        )),
        PoolEvent::Panicked { task, message } => {
            s.violation(format!("task {task} panicked: {message}"));
        }
        PoolEvent::DialFailed { node_id, error, .. } => {
            let line = format!("event dial failed {}: {}", short(node_id), error.failure());
            s.log(line);
        }
        other => s.log(format!("event {other:?}")),
    }
}

/// The invariants checked after every step.
fn check(state: &Arc<Mutex<State>>, pool: &DirectoryPool<LiveHandshake>) -> Result<(), String> {
    let clients = pool.clients();
    // The floods that ended: the user reads once, and must hear of the loss.
    let ended = std::mem::take(&mut lock(state).flood_ended);
    for (node, bytes) in ended {
        if let Some((_, client)) = clients.iter().find(|(n, _)| *n == node) {
            let inbound = lock(state).inbound_bytes;
            read_lagged(state, &node, client, Some((bytes, inbound)));
        }
    }
    let mut s = lock(state);
    let now = s.now;
    for (node, client) in &clients {
        let stats = client.inner.stats();
        let held = stats.inbound_bytes + stats.reader_bytes + stats.outbound_bytes;
        s.report.peak_held = s.report.peak_held.max(held);
        if held > s.report.held_bound {
            let bound = s.report.held_bound;
            s.violation(format!(
                "inv 12: {node} holds {held} bytes ({stats:?}), over the bound {bound}"
            ));
        }
        if s.registered.get(node) != Some(&true) {
            return Err(format!("{node} registered without a connected event"));
        }
    }
    if let Some(v) = s.violations.first() {
        return Err(v.clone());
    }
    for (node, last_sent) in &s.silent_due {
        if now > *last_sent + s.loss_bound + SCHEDULING_SLACK {
            return Err(format!(
                "inv 11: the path to {node} has been silent since {:?} ago and the link is not declared lost (bound {:?})",
                now.duration_since(*last_sent),
                s.loss_bound
            ));
        }
    }
    for (node, at) in &s.disconnect_due {
        if now > *at + SCHEDULING_SLACK {
            return Err(format!(
                "{node} said DISCONNECT {:?} ago and is not reported lost",
                now.duration_since(*at)
            ));
        }
    }
    if s.maintenance {
        let hung_until = s.hung_until;
        for (node, deadline) in &s.redial_due {
            let deadline = match hung_until {
                Some(h) if s.proxy_hung || h + s.redial_bound > *deadline => {
                    if s.proxy_hung {
                        continue;
                    }
                    h + s.redial_bound + s.proxy_timeout
                }
                _ => *deadline,
            };
            if now > deadline {
                return Err(format!(
                    "{node} lost and not redialed by maintenance within {:?}",
                    s.redial_bound
                ));
            }
        }
    }
    if !s.proxy_reported_down {
        if let Some((conn, at)) = s.hung_accepts.iter().next() {
            if now > *at + s.proxy_timeout + SCHEDULING_SLACK {
                return Err(format!(
                    "hung proxy: conn {conn} hung since {:?} ago and no ProxyUnreachable (proxy_timeout {:?})",
                    now.duration_since(*at),
                    s.proxy_timeout
                ));
            }
        }
    }
    Ok(())
}

fn failure(seed: u64, state: &Arc<Mutex<State>>, message: String) -> Failure {
    let trace = Trace(lock(state).trace.clone());
    Failure {
        kind: Kind::Liveness,
        seed,
        message,
        trace,
    }
}
