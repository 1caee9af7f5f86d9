//! The model checker behind the `pool_model` fuzz target and the seeded core
//! simulation (`tests/core-kit/tests/random_ops.rs`).
//!
//! A run builds a configuration (valid, duplicate and malformed entries,
//! random timeouts, maintenance policy and isolation scope), then plays a
//! driver through a sequence of [`Step`]s: commands, dial results (on time,
//! late, after an abort), connection losses, close results (or none, to
//! exercise the close timeout), time steps (including jumps to
//! `poll_timeout`, and in some runs a clock that moves before
//! `handle_timeout` is called), and deliberately wrong inputs. After every
//! step the outputs are checked against a model of what the driver holds
//! and the invariants of `ARCHITECTURE.md` are checked against the pool's
//! queries. Some runs end with a liveness phase (every server reachable
//! from `T`); every run ends with `close_all` and quiescence.
//!
//! Every decision comes from one [`Choices`], so a run is a function of its
//! bytes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use super::{Choices, Step};
use dirpool_core::{
    AttemptId, Backoff, CloseFailure, Command, ConfigError, DialDetail, DialFailure,
    DisconnectReason, Entropy, FailureScope, Input as PoolInput, InputError, IsolationScope,
    IsolationToken, KeepalivePolicy, LinkLoss, Notification, OperationEnd, OperationId,
    OperationKind, OperationReport, Output, PoolConfig, PoolState, ProxyReport, ProxyState,
    RetryPolicy, ServerAddr, ServerId, ServerState, ServerStatus, SocksReply,
};

const TRACE_TAIL: usize = 30;
const MAX_OUTPUTS_PER_DRAIN: usize = 100_000;
const ONION: &str = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion";
const ONION_UPPER: &str = "DUCKDUCKGOGG42XJOC72X3SJASOWOARFBGCMVFIMAFTT6TWAGSWZCZAD.onion:5222";

/// Entries that parse (several name the same server).
const VALID_ENTRIES: &[&str] = &[
    "127.0.0.1:5222",
    "127.0.0.1",
    "127.0.0.2",
    "127.0.0.2:5222",
    "127.0.0.3:5223",
    "dir.example",
    "DIR.Example:5222",
    "[::1]:5222",
    "[0:0::1]",
    ONION,
    ONION_UPPER,
    "10.1.2.3:9999",
];

/// Entries that do not parse.
const MALFORMED_ENTRIES: &[&str] = &[
    "a:b:c",
    "host:",
    "x.onion",
    "bad host",
    "h:0",
    "[::1",
    "",
    "1.2.3.4.5",
];

fn as_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn random_backoff(choices: &mut Choices) -> Backoff {
    if choices.chance(8) {
        // Extremes: tiny or constant delays, huge factors.
        let initial = Duration::from_nanos(1 + choices.below(2_000_000));
        let max = if choices.chance(50) {
            initial
        } else {
            initial + choices.millis(0, 20_000)
        };
        let factor = *choices.pick(&[1.0, 1.000_001, 10.0, 1000.0, 1e300]);
        let jitter = *choices.pick(&[0.0, 0.5, 1.0]);
        return Backoff::new(initial, max, factor).with_jitter(jitter);
    }
    let initial = choices.millis(100, 10_000);
    let max = (initial + choices.millis(0, 60_000)).min(Duration::from_secs(120));
    let factor = if choices.chance(15) {
        1.0
    } else {
        1.0 + 2.0 * choices.unit()
    };
    let jitter = match choices.below(5) {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => choices.unit(),
    };
    Backoff::new(initial, max, factor).with_jitter(jitter)
}

pub(super) fn random_retry_policy(choices: &mut Choices) -> RetryPolicy {
    let timeout = if choices.chance(10) {
        Duration::ZERO
    } else {
        choices.millis(1_000, 300_000)
    };
    let mut policy = RetryPolicy::new(timeout);
    if choices.chance(75) {
        policy.backoff = random_backoff(choices);
    }
    policy
}

pub(super) fn random_failure(choices: &mut Choices, proxy_pct: u64) -> DialFailure {
    if choices.chance(proxy_pct) {
        return *choices.pick(&[
            DialFailure::ProxyUnreachable,
            DialFailure::ProxyUnreachable,
            DialFailure::ProxyUnreachable,
            DialFailure::ProxyProtocol,
            DialFailure::ProxyTimedOut,
            DialFailure::ProxyAuthRejected,
            DialFailure::IsolationUnsupported,
        ]);
    }
    match choices.below(9) {
        0 | 1 => {
            let code = *choices.pick(&[
                0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0xF0, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5,
                0xF6, 0xF7, 0x00, 0x42, 0xFF,
            ]);
            DialFailure::Socks(SocksReply::from_code(code))
        }
        2 => DialFailure::TimedOut,
        3 => DialFailure::HandshakeRejected,
        4 => DialFailure::HandshakeProtocol,
        5 => DialFailure::Io(random_io_kind(choices)),
        6 => DialFailure::Aborted,
        7 => DialFailure::NickInUse,
        _ => DialFailure::Socks(SocksReply::from_code(
            u8::try_from(choices.below(256)).unwrap_or(1),
        )),
    }
}

/// A report of the route's own state: ready half the time.
pub(super) fn random_report(choices: &mut Choices) -> ProxyReport {
    *choices.pick(&[
        ProxyReport::Ready,
        ProxyReport::Ready,
        ProxyReport::Bootstrapping,
        ProxyReport::Blocked,
    ])
}

fn random_io_kind(choices: &mut Choices) -> std::io::ErrorKind {
    *choices.pick(&[
        std::io::ErrorKind::ConnectionReset,
        std::io::ErrorKind::BrokenPipe,
        std::io::ErrorKind::UnexpectedEof,
        std::io::ErrorKind::TimedOut,
    ])
}

pub(super) fn random_loss(choices: &mut Choices) -> LinkLoss {
    match choices.below(7) {
        0 => LinkLoss::ClosedByPeer,
        1 => LinkLoss::Io(random_io_kind(choices)),
        2 => LinkLoss::Protocol,
        3 => LinkLoss::WriteTimedOut,
        4 => LinkLoss::DisconnectedByPeer,
        5 => LinkLoss::Panicked,
        _ => LinkLoss::KeepaliveTimeout,
    }
}

// ---- trace and statistics ----------------------------------------------------

/// The last steps of a run (and, on request, all of them).
#[derive(Debug, Default)]
pub(super) struct Trace {
    /// Off for the first try of a run: formatting every step costs more
    /// than the checks, and a failing run is replayed with it on.
    on: bool,
    pub(super) tail: VecDeque<String>,
    pub(super) full: Option<String>,
}

impl Trace {
    fn new(on: bool, full: bool) -> Self {
        Self {
            on: on || full,
            tail: VecDeque::with_capacity(TRACE_TAIL),
            full: full.then(String::new),
        }
    }

    fn push(&mut self, line: String) {
        if !self.on {
            return;
        }
        if let Some(full) = &mut self.full {
            full.push_str(&line);
            full.push('\n');
        }
        if self.tail.len() == TRACE_TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    fn tail(&self) -> String {
        self.tail.iter().map(|l| format!("  {l}\n")).collect()
    }
}

/// How often interesting things happened, to show the runs exercise them.
#[derive(Debug, Default, Clone)]
pub(super) struct Stats(pub(super) BTreeMap<&'static str, u64>);

impl Stats {
    fn bump(&mut self, what: &'static str) {
        *self.0.entry(what).or_insert(0) += 1;
    }
}

// ---- the driver's model --------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct DialM {
    server: usize,
    aborted: bool,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy)]
struct CloseM {
    server: usize,
    stray: bool,
    due: Instant,
    /// The machine stopped waiting for it (its close timeout fired).
    timed_out: bool,
}

#[derive(Debug)]
enum OpM {
    Pass {
        kind: OperationKind,
        waiting: BTreeSet<AttemptId>,
        newly: Vec<ServerId>,
    },
    Retry {
        deadline: Instant,
        backoff: Backoff,
        started_connected: bool,
        newly: Vec<ServerId>,
        created_step: usize,
    },
    CloseAll {
        waiting: BTreeSet<AttemptId>,
    },
}

/// What the driver knows of a registered link's keepalive.
#[derive(Debug, Clone, Copy)]
struct WatchM {
    last_active: Instant,
    /// A probe is out: when it was asked for and its deadline.
    probe: Option<(Instant, Instant)>,
    passive: bool,
}

/// A notification that must come right after the one just seen.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    GaveUp { server: usize, failures: u32 },
    AllDown,
    Recovered,
    ProxyUnreachable,
}

/// What the driver holds and what it has been told.
#[derive(Debug, Default)]
struct Model {
    /// Dials without a result yet (aborted ones included).
    dials: BTreeMap<AttemptId, DialM>,
    /// Registered connections not being closed.
    open: BTreeMap<AttemptId, usize>,
    /// When each registered connection was made.
    since: BTreeMap<AttemptId, Instant>,
    /// Keepalive state of each registered connection.
    watch: BTreeMap<AttemptId, WatchM>,
    /// Servers a connect command asked for while their link was closing
    /// (and that close): the machine dials them when the close ends.
    redial: BTreeMap<usize, AttemptId>,
    /// Close requests without a result yet.
    closes: BTreeMap<AttemptId, CloseM>,
    /// Per server: the attempt of a `Connected` not yet followed by `Disconnected`.
    live: Vec<Option<AttemptId>>,
    connected_notes: Vec<u64>,
    disconnected_notes: Vec<u64>,
    dials_issued: Vec<u64>,
    failures: Vec<u32>,
    gave_up: Vec<bool>,
    /// Attempts fully finished: their ids are stale.
    retired: Vec<AttemptId>,
    ops: BTreeMap<OperationId, OpM>,
    returned_ops: BTreeSet<OperationId>,
    finished_ops: BTreeSet<OperationId>,
    maintenance: bool,
    proxy_down: bool,
    /// The route's latest report of its own state, if it sent one.
    reported: Option<ProxyReport>,
    all_down: bool,
    /// Aborted by a timeout in this step; their `DialFailed` must follow.
    timeout_aborts: BTreeSet<AttemptId>,
    expect: Option<Expect>,
}

impl Model {
    /// The latest report says Tor is not ready: only a user's command may
    /// dial (invariant 14).
    fn held(&self) -> bool {
        self.reported.is_some_and(ProxyReport::holds_dials)
    }

    fn has_retry_op(&self) -> bool {
        self.ops.values().any(|op| matches!(op, OpM::Retry { .. }))
    }

    fn newest_retry_backoff(&self) -> Option<Backoff> {
        self.ops.values().rev().find_map(|op| match op {
            OpM::Retry { backoff, .. } => Some(*backoff),
            _ => None,
        })
    }

    fn active_dials(&self) -> BTreeSet<AttemptId> {
        self.dials
            .iter()
            .filter(|(_, d)| !d.aborted)
            .map(|(a, _)| *a)
            .collect()
    }

    fn retire(&mut self, attempt: AttemptId) {
        self.retired.push(attempt);
    }

    fn resolve(&mut self, attempt: AttemptId, connected: Option<ServerId>) {
        for op in self.ops.values_mut() {
            match op {
                OpM::Pass { waiting, newly, .. } => {
                    if waiting.remove(&attempt) {
                        newly.extend(connected);
                    }
                }
                OpM::Retry { newly, .. } => newly.extend(connected),
                OpM::CloseAll { .. } => {}
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Input {
    Command(Command),
    Succeed(AttemptId),
    Fail(AttemptId, DialFailure),
    Lost(AttemptId, LinkLoss),
    CloseDone(AttemptId, Result<(), CloseFailure>),
    /// A sign of life on a link.
    Active(AttemptId),
    /// The answer to a link's probe.
    Answer(AttemptId),
    /// The link cannot be probed.
    Unsupported(AttemptId),
    /// Move the clock, then `handle_timeout`.
    Advance(Duration),
    /// Move the clock without telling the machine (the next input carries it).
    Drift(Duration),
    /// The route reports its own state.
    Report(ProxyReport),
}

/// Everything a wrong input must leave unchanged.
#[derive(Debug, PartialEq)]
struct Snapshot {
    connected: usize,
    pending: usize,
    live: usize,
    ops: usize,
    proxy: bool,
    maintenance: bool,
    statuses: Vec<ServerStatus>,
    links: Vec<(ServerId, AttemptId)>,
    timeout: Option<Instant>,
}

/// A scheduled result of the healthy world in the liveness phase.
#[derive(Debug, Clone, Copy)]
enum WorldEvent {
    Succeed(AttemptId),
    Answer(AttemptId),
    Aborted(AttemptId),
    CloseDone(AttemptId),
}

struct Setup {
    config: PoolConfig,
    entropy: Entropy,
    token_hex: String,
    /// Per entry: `Err` if malformed, else the node id.
    parsed: Vec<Result<String, dirpool_core::AddrError>>,
}

fn random_setup(choices: &mut Choices) -> Setup {
    let count = 1 + choices.index(8);
    let all_bad = choices.chance(2);
    let entries: Vec<String> = (0..count)
        .map(|_| {
            if all_bad || choices.chance(25) {
                (*choices.pick(MALFORMED_ENTRIES)).to_owned()
            } else {
                (*choices.pick(VALID_ENTRIES)).to_owned()
            }
        })
        .collect();
    let parsed = entries
        .iter()
        .map(|e| ServerAddr::parse(e).map(|a| a.node_id().to_owned()))
        .collect();
    let mut config = PoolConfig::new(entries);
    config.connection_timeout = if choices.chance(5) {
        Duration::from_nanos(1 + choices.below(5_000_000))
    } else {
        choices.millis(1_000, 120_000)
    };
    config.close_timeout = if choices.chance(5) {
        Duration::from_nanos(1 + choices.below(5_000_000))
    } else {
        choices.millis(500, 30_000)
    };
    config.isolation = *choices.pick(&[
        IsolationScope::Off,
        IsolationScope::PerCategory,
        IsolationScope::PerServer,
    ]);
    config.maintenance.backoff = random_backoff(choices);
    config.maintenance.max_retries = u32::try_from(choices.below(4)).unwrap_or(0);
    config.maintenance.stable_after = choices.millis(0, 120_000);
    config.keepalive = KeepalivePolicy::new(
        choices.millis(15_000, 120_000),
        choices.millis(1_000, 60_000),
    );
    let mut token = [0u8; 16];
    for byte in &mut token {
        *byte = u8::try_from(choices.below(256)).unwrap_or(0);
    }
    let token_hex = token.iter().map(|b| format!("{b:02x}")).collect();
    Setup {
        config,
        entropy: Entropy {
            isolation_token: IsolationToken::from_bytes(token),
            jitter_seed: choices.next_u64(),
        },
        token_hex,
        parsed,
    }
}

// ---- the simulation -------------------------------------------------------------

struct Sim<'t> {
    pool: PoolState,
    choices: &'t mut Choices,
    trace: &'t mut Trace,
    stats: Stats,
    t0: Instant,
    now: Instant,
    /// The latest instant `handle_timeout` was called with.
    fired_until: Instant,
    step: usize,
    node_ids: Vec<String>,
    ids: Vec<ServerId>,
    scope: IsolationScope,
    token_hex: String,
    passwords: Vec<Option<String>>,
    conn_timeout: Duration,
    close_timeout: Duration,
    maintenance_max: Duration,
    maintenance_backoff: Backoff,
    stable_after: Duration,
    keepalive: KeepalivePolicy,
    max_retries: u32,
    /// The largest backoff maximum of any policy used so far.
    max_backoff: Duration,
    success_pct: u64,
    proxy_pct: u64,
    race: bool,
    /// The route reports its own state (an in-process Tor), else it
    /// reports nothing (a SOCKS proxy).
    reports: bool,
    m: Model,
}

impl Sim<'_> {
    fn off(&self, t: Instant) -> String {
        let d = t.saturating_duration_since(self.t0);
        format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
    }

    fn describe_input(&self, input: &Input) -> String {
        match input {
            Input::Command(Command::ConnectAllParallel) => "connect_all_parallel".to_owned(),
            Input::Command(Command::ReconnectDisconnected) => "reconnect_disconnected".to_owned(),
            Input::Command(Command::ConnectAllWithRetry(p)) => format!(
                "connect_all_with_retry timeout={:?} backoff={:?}/{:?}x{}~{}",
                p.timeout, p.backoff.initial, p.backoff.max, p.backoff.factor, p.backoff.jitter
            ),
            Input::Command(Command::CloseAll) => "close_all".to_owned(),
            Input::Command(Command::StartMaintenance) => "start_maintenance".to_owned(),
            Input::Command(Command::StopMaintenance) => "stop_maintenance".to_owned(),
            Input::Command(other) => format!("{other:?}"),
            Input::Succeed(a) => format!("dial_succeeded {a}"),
            Input::Fail(a, f) => format!("dial_failed {a} {f:?}"),
            Input::Lost(a, l) => format!("connection_lost {a} {l:?}"),
            Input::CloseDone(a, r) => format!("close_finished {a} {r:?}"),
            Input::Active(a) => format!("link_active {a}"),
            Input::Answer(a) => format!("probe_answered {a}"),
            Input::Unsupported(a) => format!("probe_unsupported {a}"),
            Input::Advance(d) => format!("handle_timeout (+{d:?})"),
            Input::Drift(d) => format!("clock +{d:?} (no handle_timeout)"),
            Input::Report(r) => format!("proxy_reported {r:?}"),
        }
    }

    fn describe_output(&self, o: &Output) -> String {
        match o {
            Output::Dial(d) => format!(
                "Dial {} {} {} creds={}",
                d.server,
                d.attempt,
                d.addr.node_id(),
                d.credentials.is_some()
            ),
            Output::Abort(a) => format!("Abort {a}"),
            Output::Probe(p) => format!("Probe {} {}", p.server, p.attempt),
            Output::Close(c) => format!(
                "Close {} {}{}",
                c.server,
                c.attempt,
                if c.stray { " stray" } else { "" }
            ),
            Output::Notify(n) => match n {
                Notification::DialFailed {
                    server,
                    attempt,
                    failure,
                    retry_at,
                    ..
                } => format!(
                    "DialFailed {server} {attempt} {failure:?} retry_at={}",
                    retry_at.map_or_else(|| "-".to_owned(), |t| self.off(t))
                ),
                Notification::OperationFinished(r) => format!(
                    "Finished {} {:?} {:?} connected={} newly={:?}",
                    r.id,
                    r.kind,
                    r.end,
                    r.connected,
                    r.newly_connected
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                ),
                Notification::Connected { server, attempt } => {
                    format!("Connected {server} {attempt}")
                }
                Notification::Disconnected {
                    server,
                    attempt,
                    reason,
                } => format!("Disconnected {server} {attempt} {reason:?}"),
                Notification::GaveUp { server, failures } => {
                    format!("GaveUp {server} after {failures}")
                }
                other => format!("{other:?}"),
            },
            other => format!("{other:?}"),
        }
    }

    fn drain(&mut self) -> Result<Vec<Output>, String> {
        let mut outputs = Vec::new();
        while let Some(o) = self.pool.poll_output() {
            outputs.push(o);
            ensure!(
                outputs.len() <= MAX_OUTPUTS_PER_DRAIN,
                "more than {MAX_OUTPUTS_PER_DRAIN} outputs from one input (livelock?)"
            );
        }
        Ok(outputs)
    }

    fn log(&mut self, what: &str, outputs: &[Output]) {
        if !self.trace.on {
            return;
        }
        let mut line = format!("#{} t={} {what}", self.step, self.off(self.now));
        if !outputs.is_empty() {
            line.push_str(" =>");
            for o in outputs {
                line.push_str(" | ");
                line.push_str(&self.describe_output(o));
            }
        }
        self.trace.push(line);
    }

    fn snapshot(&mut self) -> Snapshot {
        Snapshot {
            connected: self.pool.connected_count(),
            pending: self.pool.pending_attempts(),
            live: self.pool.live_clients(),
            ops: self.pool.operations_in_progress(),
            proxy: self.pool.proxy_reachable(),
            maintenance: self.pool.maintenance_running(),
            statuses: self.pool.statuses().collect(),
            links: self.pool.connected().collect(),
            timeout: self.pool.poll_timeout(),
        }
    }

    // ---- applying one input ---------------------------------------------------

    fn apply(&mut self, input: Input) -> Result<Vec<Output>, String> {
        self.step += 1;
        let pre_dial = match input {
            Input::Succeed(a) | Input::Fail(a, _) => self.m.dials.get(&a).copied(),
            _ => None,
        };
        let pre_open = match input {
            Input::Lost(a, _) => self.m.open.get(&a).copied(),
            _ => None,
        };
        let pre_close = match input {
            Input::CloseDone(a, _) | Input::Lost(a, _) => self.m.closes.get(&a).copied(),
            _ => None,
        };
        let active_before = self.m.active_dials();
        // Links being closed (not timed out): a connect command waits for
        // them and has them redialed when their close ends.
        let closing_before: Vec<(AttemptId, usize)> = self
            .m
            .closes
            .iter()
            .filter(|(_, c)| !c.stray && !c.timed_out)
            .map(|(a, c)| (*a, c.server))
            .collect();
        let started_connected = !self.m.open.is_empty();

        let mut new_op = None;
        let result = match input {
            Input::Command(command) => match self.pool.handle_command(self.now, command) {
                Ok(op) => {
                    new_op = op;
                    Ok(())
                }
                Err(e) => return Err(format!("a valid command was refused: {e}")),
            },
            Input::Succeed(a) => self.pool.handle_input(
                self.now,
                PoolInput::DialFinished {
                    attempt: a,
                    result: Ok(()),
                    detail: None,
                },
            ),
            // The attempt as the detail: its DialFailed must hand it back.
            Input::Fail(a, f) => self.pool.handle_input(
                self.now,
                PoolInput::DialFinished {
                    attempt: a,
                    result: Err(f),
                    detail: Some(DialDetail::new(a)),
                },
            ),
            Input::Lost(a, l) => self.pool.handle_input(
                self.now,
                PoolInput::LinkLost {
                    attempt: a,
                    loss: l,
                },
            ),
            Input::CloseDone(a, r) => self.pool.handle_input(
                self.now,
                PoolInput::CloseFinished {
                    attempt: a,
                    result: r,
                },
            ),
            Input::Active(a) => self.pool.handle_input(self.now, PoolInput::LinkActive(a)),
            Input::Answer(a) => self
                .pool
                .handle_input(self.now, PoolInput::ProbeAnswered(a)),
            Input::Unsupported(a) => self
                .pool
                .handle_input(self.now, PoolInput::ProbeUnsupported(a)),
            Input::Advance(d) => {
                self.now += d;
                self.pool.handle_timeout(self.now);
                self.fired_until = self.now;
                Ok(())
            }
            Input::Drift(d) => {
                self.now += d;
                self.stats.bump("clock drifts before handle_timeout");
                Ok(())
            }
            Input::Report(r) => self
                .pool
                .handle_input(self.now, PoolInput::ProxyReported(r)),
        };
        let outputs = self.drain()?;
        if self.trace.on {
            let what = self.describe_input(&input);
            self.log(&what, &outputs);
        }
        if let Err(e) = result {
            return Err(format!("the machine refused a valid input: {e}"));
        }

        match input {
            Input::Command(Command::StartMaintenance) => {
                self.m.maintenance = true;
                self.m.gave_up.iter_mut().for_each(|g| *g = false);
            }
            Input::Command(Command::StopMaintenance) => {
                self.m.maintenance = false;
            }
            Input::Command(Command::CloseAll) => {
                self.m.maintenance = false;
                self.m.all_down = false;
                self.m.redial.clear();
            }
            Input::Command(Command::ConnectAllParallel)
            | Input::Command(Command::ReconnectDisconnected)
            | Input::Command(Command::ConnectAllWithRetry(_)) => {
                self.m
                    .redial
                    .extend(closing_before.iter().map(|(a, s)| (*s, *a)));
                if let Input::Command(Command::ConnectAllWithRetry(p)) = input {
                    self.max_backoff = self.max_backoff.max(p.backoff.max);
                }
            }

            _ => {}
        }
        if let Input::Report(report) = input {
            self.stats
                .bump(match (report.holds_dials(), self.m.held()) {
                    (false, _) => "ready reports",
                    (true, false) => "not-ready reports",
                    (true, true) => "not-ready reports while held",
                });
            self.m.reported = Some(report);
            // Not ready while up brings the proxy down, ready while down
            // brings it up; any other report is no news.
            let down = self.m.proxy_down;
            if report.holds_dials() && !down {
                self.m.expect = Some(Expect::ProxyUnreachable);
            }
            ensure!(
                report.holds_dials() != down || outputs.is_empty(),
                "{report:?} while the proxy was {} gave {outputs:?}",
                if down { "down" } else { "up" }
            );
        }
        if let Some(id) = new_op {
            ensure!(
                self.m.returned_ops.insert(id),
                "operation id {id} returned twice"
            );
            let op = match input {
                Input::Command(Command::ConnectAllParallel)
                | Input::Command(Command::ReconnectDisconnected) => {
                    let mut waiting = active_before;
                    waiting.extend(closing_before.iter().map(|(a, _)| *a));
                    waiting.extend(outputs.iter().filter_map(|o| match o {
                        Output::Dial(d) => Some(d.attempt),
                        _ => None,
                    }));
                    OpM::Pass {
                        kind: if matches!(input, Input::Command(Command::ConnectAllParallel)) {
                            OperationKind::ConnectAllParallel
                        } else {
                            OperationKind::ReconnectDisconnected
                        },
                        waiting,
                        newly: Vec::new(),
                    }
                }
                Input::Command(Command::ConnectAllWithRetry(p)) => OpM::Retry {
                    deadline: self.now + p.timeout,
                    backoff: p.backoff,
                    started_connected,
                    newly: Vec::new(),
                    created_step: self.step,
                },
                _ => {
                    let mut waiting: BTreeSet<AttemptId> = self
                        .m
                        .closes
                        .iter()
                        .filter(|(_, c)| !c.stray && !c.timed_out)
                        .map(|(a, _)| *a)
                        .collect();
                    waiting.extend(outputs.iter().filter_map(|o| match o {
                        Output::Close(c) if !c.stray => Some(c.attempt),
                        _ => None,
                    }));
                    OpM::CloseAll { waiting }
                }
            };
            self.m.ops.insert(id, op);
        }

        for output in &outputs {
            self.on_output(input, pre_dial, new_op, output)?;
        }
        match input {
            Input::Active(a) | Input::Answer(a) => {
                if let Some(w) = self.m.watch.get_mut(&a) {
                    w.last_active = self.now;
                    w.probe = None;
                }
            }
            Input::Unsupported(a) => {
                if let Some(w) = self.m.watch.get_mut(&a) {
                    w.passive = true;
                    w.probe = None;
                }
            }
            _ => {}
        }
        if let Some(e) = self.m.expect.take() {
            return Err(format!("expected {e:?} after the last output, got nothing"));
        }
        ensure!(
            self.m.timeout_aborts.is_empty(),
            "timed-out dials {:?} were aborted without a DialFailed(TimedOut)",
            self.m.timeout_aborts
        );
        self.after_input(input, pre_dial, pre_open, pre_close, &outputs)?;
        self.check_ops_finished(input)?;
        self.check_global(matches!(input, Input::Advance(_)))?;
        Ok(outputs)
    }

    fn on_output(
        &mut self,
        input: Input,
        pre_dial: Option<DialM>,
        new_op: Option<OperationId>,
        output: &Output,
    ) -> Result<(), String> {
        if let Some(expect) = self.m.expect.take() {
            let ok = match (expect, output) {
                (
                    Expect::GaveUp { server, failures },
                    Output::Notify(Notification::GaveUp {
                        server: s,
                        failures: f,
                    }),
                ) => s.index() == server && *f == failures,
                (Expect::AllDown, Output::Notify(Notification::AllDown))
                | (Expect::Recovered, Output::Notify(Notification::Recovered)) => true,
                (Expect::ProxyUnreachable, Output::Notify(Notification::ProxyUnreachable)) => {
                    self.m.proxy_down = true;
                    self.stats.bump("proxy marked down");
                    true
                }
                _ => false,
            };
            ensure!(ok, "expected {expect:?} next, got {output:?}");
            match expect {
                Expect::GaveUp { .. } => self.stats.bump("maintenance gave up"),
                Expect::AllDown => self.stats.bump("all down"),
                Expect::Recovered => self.stats.bump("recovered"),
                Expect::ProxyUnreachable => {}
            }
            return Ok(());
        }
        match output {
            Output::Probe(p) => {
                let a = p.attempt;
                ensure!(
                    matches!(input, Input::Advance(_)),
                    "Probe of {a} outside handle_timeout"
                );
                let w = self
                    .m
                    .watch
                    .get_mut(&a)
                    .ok_or_else(|| format!("Probe of {a}, which is not registered"))?;
                ensure!(!w.passive, "Probe of {a}, which cannot be probed");
                ensure!(w.probe.is_none(), "a second Probe of {a} while one is out");
                ensure!(
                    w.last_active + self.keepalive.idle <= self.now,
                    "Probe of {a} before it was quiet for {:?}",
                    self.keepalive.idle
                );
                ensure!(
                    self.m.open.get(&a) == Some(&p.server.index()),
                    "Probe names the wrong server"
                );
                // The machine loses the link at this deadline (invariant 11).
                w.probe = Some((self.now, self.now + self.keepalive.probe_timeout));
                self.stats.bump("probes");
            }
            Output::Dial(d) => {
                let s = d.server.index();
                ensure!(s < self.ids.len(), "dial for unknown server {}", d.server);
                // Invariant 8: only valid, configured servers are dialed.
                ensure!(
                    d.addr.node_id() == self.node_ids[s],
                    "inv 8: dial of {} for server {} ({})",
                    d.addr.node_id(),
                    d.server,
                    self.node_ids[s]
                );
                // Invariants 1 and 2.
                ensure!(
                    self.m.live[s].is_none(),
                    "inv 2: dial {} for server {} which is connected ({:?})",
                    d.attempt,
                    d.server,
                    self.m.live[s]
                );
                ensure!(
                    !self.m.dials.values().any(|x| x.server == s && !x.aborted),
                    "inv 2: dial {} for server {} which is already being dialed",
                    d.attempt,
                    d.server
                );
                ensure!(
                    !self.m.dials.contains_key(&d.attempt)
                        && !self.m.open.contains_key(&d.attempt)
                        && !self.m.closes.contains_key(&d.attempt),
                    "attempt id {} reused while still in use",
                    d.attempt
                );
                ensure!(
                    d.deadline == self.now + self.conn_timeout,
                    "dial {} has deadline {}, want {}",
                    d.attempt,
                    self.off(d.deadline),
                    self.off(self.now + self.conn_timeout)
                );
                let closed = match input {
                    Input::CloseDone(..) | Input::Advance(_) => self.m.redial.remove(&s),
                    _ => None,
                };
                let redial = closed.is_some();
                if let Some(closed) = closed {
                    // The close this pass waited for ended: it waits for the
                    // dial now.
                    for op in self.m.ops.values_mut() {
                        if let OpM::Pass { waiting, .. } = op {
                            if waiting.remove(&closed) {
                                waiting.insert(d.attempt);
                            }
                        }
                    }
                    self.stats.bump("redials after a close");
                }
                // A connect command's dial, or the redial it left behind a
                // close.
                let commanded = redial
                    || matches!(
                        input,
                        Input::Command(Command::ConnectAllParallel)
                            | Input::Command(Command::ReconnectDisconnected)
                            | Input::Command(Command::ConnectAllWithRetry(_))
                    );
                let wanted = commanded
                    || matches!(input, Input::Command(Command::StartMaintenance))
                    || self.m.maintenance
                    || self.m.has_retry_op();
                ensure!(
                    wanted,
                    "dial {} of {} while nothing wants a dial (no command, no maintenance, no retry operation)",
                    d.attempt,
                    d.server
                );
                // Invariant 14: while Tor reports it is not ready, only a
                // connect command dials; no redial, no probe.
                ensure!(
                    !self.m.held() || commanded,
                    "inv 14: dial {} of {} while Tor reports {:?}",
                    d.attempt,
                    d.server,
                    self.m.reported
                );
                if self.m.held() {
                    self.stats.bump("commanded dials while Tor says wait");
                }
                self.check_credentials(s, d.credentials.as_ref())?;
                self.m.dials.insert(
                    d.attempt,
                    DialM {
                        server: s,
                        aborted: false,
                        deadline: d.deadline,
                    },
                );
                self.m.dials_issued[s] += 1;
                self.stats.bump("dials");
            }
            Output::Abort(a) => {
                let now = self.now;
                let Some(dial) = self.m.dials.get_mut(a) else {
                    return Err(format!("Abort of {a}, which is not an outstanding dial"));
                };
                ensure!(!dial.aborted, "Abort of {a} twice");
                match input {
                    Input::Command(Command::CloseAll) => dial.aborted = true,
                    Input::Advance(_) => {
                        ensure!(dial.deadline <= now, "dial {a} aborted before its deadline");
                        dial.aborted = true;
                        self.m.timeout_aborts.insert(*a);
                        self.stats.bump("dial timeouts");
                    }
                    _ => return Err(format!("Abort of {a} outside close_all and timeouts")),
                }
            }
            Output::Close(c) => {
                let a = c.attempt;
                ensure!(!self.m.closes.contains_key(&a), "Close of {a} twice");
                if c.stray {
                    ensure!(
                        matches!(input, Input::Succeed(x) if x == a)
                            && pre_dial.is_some_and(|d| d.aborted),
                        "stray Close of {a} without a late success for it"
                    );
                    let dial = self.m.dials.remove(&a).ok_or("stray close of no dial")?;
                    ensure!(
                        dial.server == c.server.index(),
                        "stray Close names the wrong server"
                    );
                    self.m.closes.insert(
                        a,
                        CloseM {
                            server: dial.server,
                            stray: true,
                            due: self.now + self.close_timeout,
                            timed_out: false,
                        },
                    );
                    self.stats.bump("stray closes");
                } else {
                    ensure!(
                        matches!(input, Input::Command(Command::CloseAll)),
                        "Close of registered {a} outside close_all"
                    );
                    let server = self
                        .m
                        .open
                        .remove(&a)
                        .ok_or_else(|| format!("Close of {a}, which is not registered"))?;
                    ensure!(server == c.server.index(), "Close names the wrong server");
                    self.m.since.remove(&a);
                    self.m.watch.remove(&a);
                    self.m.closes.insert(
                        a,
                        CloseM {
                            server,
                            stray: false,
                            due: self.now + self.close_timeout,
                            timed_out: false,
                        },
                    );
                }
            }
            Output::Notify(n) => self.on_notification(input, pre_dial, new_op, n)?,
            other => bail!("an output the checker does not know: {other:?}"),
        }
        Ok(())
    }

    fn check_credentials(
        &mut self,
        s: usize,
        credentials: Option<&dirpool_core::SocksCredentials>,
    ) -> Result<(), String> {
        // Invariant 9.
        match (self.scope, credentials) {
            (IsolationScope::Off, None) => Ok(()),
            (IsolationScope::Off, Some(_)) => {
                Err("inv 9: a dial carries credentials with isolation off".to_owned())
            }
            (_, None) => Err("inv 9: a dial without credentials with isolation on".to_owned()),
            (scope, Some(c)) => {
                ensure!(
                    c.username() == "jm-directory",
                    "inv 9: directory dial with username {:?}",
                    c.username()
                );
                let password = c.password().expose().to_owned();
                if scope == IsolationScope::PerCategory {
                    ensure!(
                        password == self.token_hex,
                        "inv 9: per-category password is not the token"
                    );
                } else {
                    ensure!(
                        password != self.token_hex,
                        "inv 9: per-server password is the bare token"
                    );
                    for (other, p) in self.passwords.iter().enumerate() {
                        ensure!(
                            other == s || p.as_deref() != Some(password.as_str()),
                            "inv 9: servers {s} and {other} share a per-server password"
                        );
                    }
                }
                match &self.passwords[s] {
                    Some(p) => ensure!(*p == password, "server {s}'s password changed"),
                    None => self.passwords[s] = Some(password),
                }
                Ok(())
            }
        }
    }

    fn on_notification(
        &mut self,
        input: Input,
        pre_dial: Option<DialM>,
        new_op: Option<OperationId>,
        n: &Notification,
    ) -> Result<(), String> {
        match n {
            Notification::AddressRejected { .. } | Notification::DuplicateAddress { .. } => {
                return Err(format!("inv 8: {n:?} after construction"));
            }
            Notification::Connected { server, attempt } => {
                let s = server.index();
                ensure!(
                    matches!(input, Input::Succeed(x) if x == *attempt)
                        && pre_dial.is_some_and(|d| !d.aborted),
                    "inv 3: Connected {attempt} without a success of that live dial"
                );
                let dial = self.m.dials.remove(attempt).ok_or("connected no dial")?;
                ensure!(dial.server == s, "Connected names the wrong server");
                ensure!(
                    self.m.live[s].is_none(),
                    "inv 1/4: Connected {attempt} for {server}, which is still connected by {:?}",
                    self.m.live[s]
                );
                self.m.live[s] = Some(*attempt);
                self.m.connected_notes[s] += 1;
                self.m.open.insert(*attempt, s);
                self.m.since.insert(*attempt, self.now);
                self.m.watch.insert(
                    *attempt,
                    WatchM {
                        last_active: self.now,
                        probe: None,
                        passive: false,
                    },
                );
                self.m.failures[s] = 0;
                self.m.gave_up[s] = false;
                self.m.resolve(*attempt, Some(*server));
                if self.m.all_down {
                    self.m.all_down = false;
                    self.m.expect = Some(Expect::Recovered);
                }
                self.stats.bump("connections");
            }
            Notification::DialFailed {
                server,
                attempt,
                failure,
                retry_at,
                detail,
            } => {
                let s = server.index();
                let reported = matches!(input, Input::Fail(x, f) if x == *attempt && f == *failure)
                    && pre_dial.is_some_and(|d| !d.aborted);
                // The driver's detail comes back with its own failure only.
                let handed_back = detail
                    .as_ref()
                    .map(|d| d.downcast::<AttemptId>().map(|a| *a));
                ensure!(
                    handed_back == reported.then_some(Some(*attempt)),
                    "DialFailed {attempt} carries detail {handed_back:?} (reported: {reported})"
                );
                if reported {
                    let dial = self.m.dials.remove(attempt).ok_or("failed no dial")?;
                    ensure!(dial.server == s, "DialFailed names the wrong server");
                    self.m.retire(*attempt);
                } else if matches!(input, Input::Advance(_))
                    && self.m.timeout_aborts.remove(attempt)
                {
                    ensure!(
                        *failure == DialFailure::TimedOut,
                        "a timed-out dial failed with {failure:?}"
                    );
                    ensure!(
                        self.m.dials.get(attempt).is_some_and(|d| d.server == s),
                        "DialFailed names the wrong server"
                    );
                } else {
                    return Err(format!(
                        "DialFailed {attempt} ({failure:?}) neither reported nor timed out"
                    ));
                }
                self.m.resolve(*attempt, None);
                let scope = failure.scope();
                if scope == FailureScope::Server && !failure.counts_towards_give_up() {
                    self.stats
                        .bump("failures that do not count towards giving up");
                } else if scope == FailureScope::Server {
                    self.m.failures[s] = self.m.failures[s].saturating_add(1);
                    let failures = self.m.failures[s];
                    if self.m.maintenance
                        && self.max_retries > 0
                        && !self.m.gave_up[s]
                        && failures >= self.max_retries
                    {
                        self.m.gave_up[s] = true;
                        self.m.expect = Some(Expect::GaveUp {
                            server: s,
                            failures,
                        });
                    }
                } else if !self.m.proxy_down {
                    self.m.expect = Some(Expect::ProxyUnreachable);
                }
                self.check_retry_at(s, scope, *retry_at)?;
            }
            Notification::Disconnected {
                server,
                attempt,
                reason,
            } => {
                let s = server.index();
                match reason {
                    DisconnectReason::Lost(loss) => {
                        let keepalive = *loss == LinkLoss::KeepaliveTimeout
                            && matches!(input, Input::Advance(_));
                        if keepalive {
                            // Invariant 11: lost for silence only once its
                            // probe went unanswered past its deadline.
                            let w = self
                                .m
                                .watch
                                .get(attempt)
                                .ok_or("keepalive loss, no watch")?;
                            ensure!(
                                w.probe.is_some_and(|(_, deadline)| deadline <= self.now),
                                "inv 11: {attempt} lost for silence without an overdue probe ({w:?})"
                            );
                            self.stats.bump("silent links lost");
                        } else {
                            ensure!(
                                matches!(input, Input::Lost(x, l) if x == *attempt && l == *loss),
                                "Disconnected {attempt} (lost) without a loss reported"
                            );
                        }
                        self.m.watch.remove(attempt);
                        let was = self.m.open.remove(attempt).ok_or("lost but not open")?;
                        ensure!(was == s, "Disconnected names the wrong server");
                        self.m.retire(*attempt);
                        if self.m.open.is_empty() {
                            self.m.all_down = true;
                            self.m.expect = Some(Expect::AllDown);
                        }
                    }
                    DisconnectReason::Closed | DisconnectReason::CloseFailed(_) => {
                        let want = match reason {
                            DisconnectReason::Closed => Ok(()),
                            DisconnectReason::CloseFailed(e) => Err(*e),
                            _ => Ok(()),
                        };
                        ensure!(
                            matches!(input, Input::CloseDone(x, r) if x == *attempt && r == want),
                            "Disconnected {attempt} ({reason:?}) without that close result"
                        );
                        let close = self.m.closes.remove(attempt).ok_or("closed, no close")?;
                        ensure!(
                            !close.stray && !close.timed_out && close.server == s,
                            "Disconnected for a stray or timed-out close {close:?}"
                        );
                        self.m.retire(*attempt);
                    }
                    DisconnectReason::CloseTimedOut => {
                        let now = self.now;
                        ensure!(
                            matches!(input, Input::Advance(_)),
                            "CloseTimedOut outside handle_timeout"
                        );
                        let close = self
                            .m
                            .closes
                            .get_mut(attempt)
                            .ok_or("close timed out, no close")?;
                        ensure!(
                            !close.stray && !close.timed_out && close.server == s,
                            "CloseTimedOut for {close:?}"
                        );
                        ensure!(close.due <= now, "close {attempt} timed out early");
                        close.timed_out = true;
                        self.stats.bump("close timeouts");
                    }
                    other => bail!("a disconnect reason the checker does not know: {other:?}"),
                }
                ensure!(
                    self.m.live[s] == Some(*attempt),
                    "inv 4: Disconnected {attempt} for {server}, whose live connection is {:?}",
                    self.m.live[s]
                );
                self.m.live[s] = None;
                self.m.disconnected_notes[s] += 1;
                for op in self.m.ops.values_mut() {
                    if let OpM::CloseAll { waiting } = op {
                        waiting.remove(attempt);
                    }
                }
            }
            Notification::ProbeAnswered {
                server,
                attempt,
                rtt,
            } => {
                ensure!(
                    matches!(input, Input::Answer(x) if x == *attempt),
                    "ProbeAnswered {attempt} without its answer"
                );
                let w = self.m.watch.get(attempt).ok_or("answer, no watch")?;
                let (sent, _) = w.probe.ok_or("ProbeAnswered with no probe out")?;
                ensure!(
                    *rtt == self.now.saturating_duration_since(sent),
                    "ProbeAnswered rtt {rtt:?}, want {:?}",
                    self.now.saturating_duration_since(sent)
                );
                ensure!(
                    self.m.open.get(attempt) == Some(&server.index()),
                    "ProbeAnswered names the wrong server"
                );
                self.stats.bump("probes answered");
            }
            Notification::ProxyRecovered => {
                ensure!(self.m.proxy_down, "ProxyRecovered while the proxy was up");
                ensure!(
                    matches!(input, Input::Report(ProxyReport::Ready))
                        || (!self.m.held()
                            && (matches!(input, Input::Succeed(_))
                                || matches!(input, Input::Fail(_, f) if f.proves_proxy_up()))),
                    "ProxyRecovered without a ready report or a dial getting through (reported {:?})",
                    self.m.reported
                );
                self.m.proxy_down = false;
                self.stats.bump("proxy recovered");
            }
            Notification::GaveUp { .. }
            | Notification::AllDown
            | Notification::Recovered
            | Notification::ProxyUnreachable => {
                return Err(format!("unexpected {n:?}"));
            }
            Notification::OperationFinished(r) => self.on_finished(input, new_op, r)?,
            other => bail!("a notification the checker does not know: {other:?}"),
        }
        Ok(())
    }

    fn check_retry_at(
        &mut self,
        s: usize,
        scope: FailureScope,
        retry_at: Option<Instant>,
    ) -> Result<(), String> {
        let retry_op = self.m.newest_retry_backoff().map(|b| b.max);
        let wanted = retry_op.is_some() || self.m.maintenance;
        if let Some(at) = retry_at {
            ensure!(
                wanted,
                "DialFailed has retry_at {} while nothing wants a redial",
                self.off(at)
            );
            // Invariant 6.
            ensure!(
                at >= self.now,
                "inv 6: retry_at {} is in the past (now {})",
                self.off(at),
                self.off(self.now)
            );
            ensure!(
                at <= self.now + self.max_backoff,
                "inv 6: retry_at {} is beyond now + max backoff {:?}",
                self.off(at),
                self.max_backoff
            );
        }
        if scope == FailureScope::Server && !self.m.proxy_down {
            // Its own backoff: the newest retry operation's, else maintenance's.
            let applicable = match retry_op {
                Some(max) => Some(max),
                None => (self.m.maintenance && !self.m.gave_up[s]).then_some(self.maintenance_max),
            };
            match (applicable, retry_at) {
                (Some(max), Some(at)) => ensure!(
                    at <= self.now + max,
                    "inv 6: retry_at {} is beyond now + the applicable max {max:?}",
                    self.off(at)
                ),
                (None, None) => {}
                (want, got) => {
                    return Err(format!(
                        "DialFailed retry_at {:?} but the applicable backoff is {want:?}",
                        got.map(|t| self.off(t))
                    ));
                }
            }
        }
        Ok(())
    }

    fn on_finished(
        &mut self,
        input: Input,
        new_op: Option<OperationId>,
        r: &OperationReport,
    ) -> Result<(), String> {
        let Some(op) = self.m.ops.remove(&r.id) else {
            return Err(if self.m.finished_ops.contains(&r.id) {
                format!("operation {} finished twice", r.id)
            } else {
                format!("OperationFinished for unknown operation {}", r.id)
            });
        };
        self.m.finished_ops.insert(r.id);
        ensure!(
            r.connected == self.m.open.len(),
            "report of {} says {} connected, the driver holds {}",
            r.id,
            r.connected,
            self.m.open.len()
        );
        if r.end == OperationEnd::Cancelled {
            ensure!(
                matches!(input, Input::Command(Command::CloseAll))
                    && new_op != Some(r.id)
                    && !matches!(op, OpM::CloseAll { .. }),
                "{} cancelled outside close_all",
                r.id
            );
            self.stats.bump("operations cancelled");
        }
        match op {
            OpM::Pass {
                kind,
                waiting,
                newly,
            } => {
                ensure!(r.kind == kind, "{} reported as {:?}", r.id, r.kind);
                match r.end {
                    OperationEnd::Completed => ensure!(
                        waiting.is_empty(),
                        "{} completed while its dials {waiting:?} had no result",
                        r.id
                    ),
                    OperationEnd::Cancelled => {}
                    other => return Err(format!("pass {} ended {other:?}", r.id)),
                }
                ensure!(
                    r.newly_connected == newly,
                    "{} newly_connected {:?}, want {newly:?}",
                    r.id,
                    r.newly_connected
                );
            }
            OpM::Retry {
                deadline,
                started_connected,
                newly,
                ..
            } => {
                ensure!(
                    r.kind == OperationKind::ConnectAllWithRetry,
                    "{} reported as {:?}",
                    r.id,
                    r.kind
                );
                match r.end {
                    OperationEnd::Connected => {
                        ensure!(
                            started_connected || !newly.is_empty(),
                            "{} ended Connected with nothing connected",
                            r.id
                        );
                        ensure!(
                            r.newly_connected == newly,
                            "{} newly_connected {:?}, want {newly:?}",
                            r.id,
                            r.newly_connected
                        );
                        self.stats.bump("retry connected");
                    }
                    OperationEnd::DeadlineReached => {
                        // Invariant 5.
                        ensure!(
                            self.now >= deadline,
                            "inv 5: {} reached its deadline {} early",
                            r.id,
                            self.off(deadline)
                        );
                        ensure!(
                            matches!(input, Input::Advance(_)) || new_op == Some(r.id),
                            "{} reached its deadline outside handle_timeout",
                            r.id
                        );
                        ensure!(
                            r.connected == 0 && newly.is_empty() && !started_connected,
                            "inv 5: {} ended DeadlineReached with {} connected",
                            r.id,
                            r.connected
                        );
                        self.stats.bump("retry deadline reached");
                    }
                    OperationEnd::Cancelled => {}
                    other => return Err(format!("retry {} ended {other:?}", r.id)),
                }
            }
            OpM::CloseAll { waiting } => {
                ensure!(
                    r.kind == OperationKind::CloseAll && r.end == OperationEnd::Completed,
                    "close_all {} ended {:?} {:?}",
                    r.id,
                    r.kind,
                    r.end
                );
                ensure!(
                    waiting.is_empty(),
                    "close_all {} finished while closes {waiting:?} are pending",
                    r.id
                );
                ensure!(
                    r.newly_connected.is_empty(),
                    "close_all with newly_connected"
                );
            }
        }
        Ok(())
    }

    fn after_input(
        &mut self,
        input: Input,
        pre_dial: Option<DialM>,
        pre_open: Option<usize>,
        pre_close: Option<CloseM>,
        outputs: &[Output],
    ) -> Result<(), String> {
        match input {
            Input::Succeed(a) => {
                let dial = pre_dial.ok_or("test bug: success of no dial")?;
                // Invariant 3: registered or closed, never both, never neither.
                if dial.aborted {
                    ensure!(
                        self.m.closes.get(&a).is_some_and(|c| c.stray)
                            && !self.m.open.contains_key(&a),
                        "inv 3: late success of aborted {a} was not closed as stray"
                    );
                } else {
                    ensure!(
                        self.m.open.contains_key(&a) && !self.m.closes.contains_key(&a),
                        "inv 3: success of {a} was not registered"
                    );
                }
            }
            Input::Fail(a, _) => {
                let dial = pre_dial.ok_or("test bug: failure of no dial")?;
                if dial.aborted {
                    ensure!(
                        outputs.is_empty(),
                        "the result of aborted {a} produced outputs"
                    );
                    self.m.dials.remove(&a);
                    self.m.retire(a);
                }
                ensure!(
                    !self.m.dials.contains_key(&a),
                    "failure of {a} not reported"
                );
            }
            Input::Lost(a, _) => {
                if let Some(s) = pre_open {
                    ensure!(!self.m.open.contains_key(&a), "loss of {a} not reported");
                    self.check_stable_loss(a, s)?;
                } else {
                    ensure!(outputs.is_empty(), "a loss during a close produced outputs");
                    self.stats.bump("ignored losses during close");
                }
            }
            Input::CloseDone(a, _) => {
                let close = pre_close.ok_or("test bug: close result of no close")?;
                if close.stray || close.timed_out {
                    ensure!(
                        outputs.is_empty(),
                        "a stray or timed-out close result produced outputs"
                    );
                    self.m.closes.remove(&a);
                    self.m.retire(a);
                }
                ensure!(!self.m.closes.contains_key(&a), "close of {a} not handled");
            }
            Input::Command(Command::CloseAll) => {
                ensure!(
                    self.m.dials.values().all(|d| d.aborted),
                    "close_all left dials in flight: {:?}",
                    self.m.active_dials()
                );
            }
            Input::Advance(_) => {
                let now = self.now;
                for (a, d) in &self.m.dials {
                    ensure!(
                        d.aborted || d.deadline > now,
                        "dial {a} is past its deadline {} but was not timed out",
                        self.off(d.deadline)
                    );
                }
                for (a, c) in &mut self.m.closes {
                    if c.stray && !c.timed_out && c.due <= now {
                        c.timed_out = true;
                    }
                    ensure!(
                        c.timed_out || c.due > now,
                        "close of {a} is past its timeout but was not timed out"
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A link that stayed up for `stable_after` earns a fresh backoff: its
    /// redial comes within the first step's bounds.
    fn check_stable_loss(&mut self, attempt: AttemptId, s: usize) -> Result<(), String> {
        let since = self.m.since.remove(&attempt).ok_or("test bug: no since")?;
        if self.now.saturating_duration_since(since) < self.stable_after {
            return Ok(());
        }
        let st = self.pool.status(self.ids[s]).ok_or("test bug: no status")?;
        if st.state != ServerState::WaitingRetry {
            return Ok(());
        }
        let backoff = self
            .m
            .newest_retry_backoff()
            .unwrap_or(self.maintenance_backoff);
        let (_, high) = backoff.bounds(0);
        let at = st
            .next_retry_at
            .ok_or("WaitingRetry without next_retry_at")?;
        ensure!(
            at <= self.now + high + Duration::from_micros(1),
            "a link up since {} (stable after {:?}) was lost, but its redial waits until {}, beyond the first step's {high:?}",
            self.off(since),
            self.stable_after,
            self.off(at)
        );
        self.stats.bump("stable links lost");
        Ok(())
    }

    /// Operations that must have finished by now have (invariant 5 included).
    fn check_ops_finished(&self, input: Input) -> Result<(), String> {
        for (id, op) in &self.m.ops {
            match op {
                OpM::Pass { waiting, .. } => ensure!(
                    !waiting.is_empty(),
                    "{id}: every attempt it waited for has a result, but it has not finished"
                ),
                OpM::Retry {
                    deadline,
                    started_connected,
                    newly,
                    created_step,
                    ..
                } => {
                    ensure!(
                        !*started_connected && newly.is_empty(),
                        "{id}: a server connected, but it has not finished"
                    );
                    let horizon = if *created_step == self.step {
                        self.now
                    } else {
                        self.fired_until
                    };
                    ensure!(
                        *deadline > horizon,
                        "inv 5: {id} not finished although its deadline {} has passed",
                        self.off(*deadline)
                    );
                }
                OpM::CloseAll { waiting } => ensure!(
                    !waiting.is_empty(),
                    "{id}: every close finished, but close_all has not"
                ),
            }
            if matches!(input, Input::Command(Command::CloseAll)) {
                ensure!(
                    matches!(op, OpM::CloseAll { .. }),
                    "{id} survived close_all"
                );
            }
        }
        Ok(())
    }

    fn check_global(&mut self, after_timeout: bool) -> Result<(), String> {
        // Invariant 11: a link quiet for `idle` has been probed, and one
        // whose probe is overdue has been declared lost, by the last
        // handle_timeout.
        for (a, w) in &self.m.watch {
            if w.passive {
                continue;
            }
            match w.probe {
                None => ensure!(
                    w.last_active + self.keepalive.idle > self.fired_until,
                    "inv 11: {a} quiet since {} but not probed by {}",
                    self.off(w.last_active),
                    self.off(self.fired_until)
                ),
                Some((_, deadline)) => ensure!(
                    deadline > self.fired_until,
                    "inv 11: {a}'s probe is overdue since {} but it is not lost",
                    self.off(deadline)
                ),
            }
        }
        let m = &self.m;
        ensure!(
            self.pool.connected_count() == m.open.len(),
            "connected_count {} but the driver holds {} registered connections",
            self.pool.connected_count(),
            m.open.len()
        );
        let pending = m.dials.len() + m.open.len() + m.closes.len();
        ensure!(
            self.pool.pending_attempts() == pending,
            "pending_attempts {} but the driver owes {pending} results",
            self.pool.pending_attempts()
        );
        let live = m.open.len() + m.closes.values().filter(|c| !c.timed_out).count();
        ensure!(
            self.pool.live_clients() == live,
            "live_clients {} but the driver holds {live}",
            self.pool.live_clients()
        );
        ensure!(
            self.pool.operations_in_progress() == m.ops.len(),
            "operations_in_progress {} but {} are unfinished",
            self.pool.operations_in_progress(),
            m.ops.len()
        );
        ensure!(
            self.pool.proxy_reachable() != m.proxy_down,
            "proxy_reachable {} disagrees with the notifications",
            self.pool.proxy_reachable()
        );
        let want = match (m.proxy_down, m.reported) {
            (false, _) => ProxyState::Reachable,
            (true, Some(ProxyReport::Bootstrapping)) => ProxyState::Bootstrapping,
            (true, Some(ProxyReport::Blocked)) => ProxyState::Blocked,
            (true, _) => ProxyState::Unreachable,
        };
        let shown = self.pool.health(self.now).proxy;
        ensure!(
            shown == want,
            "health shows the proxy {shown:?}, want {want:?}"
        );
        ensure!(
            !m.held() || m.proxy_down,
            "Tor reports {:?} but the proxy counts as up",
            m.reported
        );
        ensure!(
            self.pool.maintenance_running() == m.maintenance,
            "maintenance_running {}",
            self.pool.maintenance_running()
        );
        let n = self.ids.len();
        ensure!(
            self.pool.list_disconnected().count() == n - m.open.len(),
            "list_disconnected has {} entries",
            self.pool.list_disconnected().count()
        );
        let mut want: Vec<(ServerId, AttemptId)> =
            m.open.iter().map(|(a, s)| (self.ids[*s], *a)).collect();
        want.sort();
        let got: Vec<(ServerId, AttemptId)> = self.pool.connected().collect();
        ensure!(got == want, "connected() {got:?}, want {want:?}");

        for s in 0..n {
            let st = self
                .pool
                .status(self.ids[s])
                .ok_or_else(|| format!("no status for server {s}"))?;
            let open = m.open.values().any(|x| *x == s);
            let dialing = m.dials.values().any(|d| d.server == s && !d.aborted);
            let closing = m
                .closes
                .values()
                .any(|c| c.server == s && !c.stray && !c.timed_out);
            let expected = if open {
                Some(ServerState::Connected)
            } else if dialing {
                Some(ServerState::Dialing)
            } else if closing {
                Some(ServerState::Closing)
            } else {
                None
            };
            match expected {
                Some(state) => ensure!(
                    st.state == state,
                    "server {s} is {:?}, want {state:?}",
                    st.state
                ),
                None => ensure!(
                    matches!(
                        st.state,
                        ServerState::Idle
                            | ServerState::WaitingRetry
                            | ServerState::WaitingForProxy
                            | ServerState::GaveUp
                    ),
                    "server {s} is {:?} with nothing in flight",
                    st.state
                ),
            }
            ensure!(
                st.connected_since.is_some() == open,
                "server {s}: connected_since {:?}",
                st.connected_since
            );
            ensure!(
                st.attempts == m.dials_issued[s],
                "server {s}: attempts {} but {} dials were issued",
                st.attempts,
                m.dials_issued[s]
            );
            ensure!(
                st.consecutive_failures == m.failures[s],
                "server {s}: consecutive_failures {} but {} failures since it connected",
                st.consecutive_failures,
                m.failures[s]
            );
            if st.state == ServerState::WaitingForProxy {
                ensure!(m.proxy_down, "server {s} waits for a proxy that is up");
            }
            if matches!(
                st.state,
                ServerState::WaitingRetry | ServerState::WaitingForProxy
            ) && !(m.maintenance || m.has_retry_op())
            {
                bail!(
                    "server {s} is {:?} (next_retry_at {:?}) while nothing wants a redial",
                    st.state,
                    st.next_retry_at.map(|t| self.off(t))
                );
            }
            if st.state == ServerState::WaitingRetry {
                ensure!(
                    st.next_retry_at.is_some_and(|t| t >= self.fired_until),
                    "server {s} waits for an overdue retry {:?}",
                    st.next_retry_at.map(|t| self.off(t))
                );
            }
            if st.state == ServerState::GaveUp {
                ensure!(m.gave_up[s], "server {s} shown as GaveUp");
            }
        }

        let timeout = self.pool.poll_timeout();
        if let Some(t) = timeout {
            if after_timeout {
                ensure!(
                    t > self.now,
                    "poll_timeout {} is not after the handle_timeout just done at {}",
                    self.off(t),
                    self.off(self.now)
                );
            }
            ensure!(
                t >= self.fired_until,
                "poll_timeout {} is before the last handle_timeout",
                self.off(t)
            );
        }
        let m = &self.m;
        let mut must: Option<Instant> = None;
        let mut consider = |t: Instant| must = Some(must.map_or(t, |x: Instant| x.min(t)));
        m.dials
            .values()
            .filter(|d| !d.aborted)
            .for_each(|d| consider(d.deadline));
        m.closes
            .values()
            .filter(|c| !c.timed_out)
            .for_each(|c| consider(c.due));
        for op in m.ops.values() {
            if let OpM::Retry { deadline, .. } = op {
                consider(*deadline);
            }
        }
        for w in m.watch.values().filter(|w| !w.passive) {
            consider(match w.probe {
                Some((_, deadline)) => deadline,
                None => w.last_active + self.keepalive.idle,
            });
        }
        if let Some(must) = must {
            ensure!(
                timeout.is_some_and(|t| t <= must),
                "poll_timeout {:?} misses a pending deadline at {}",
                timeout.map(|t| self.off(t)),
                self.off(must)
            );
        }
        Ok(())
    }

    // ---- random steps -----------------------------------------------------------

    fn pick_dial(&mut self) -> Option<(AttemptId, DialM)> {
        let i = self.choices.index(self.m.dials.len());
        self.m.dials.iter().nth(i).map(|(a, d)| (*a, *d))
    }

    fn pick_close(&mut self) -> Option<(AttemptId, CloseM)> {
        let i = self.choices.index(self.m.closes.len());
        self.m.closes.iter().nth(i).map(|(a, c)| (*a, *c))
    }

    fn random_dial_result(&mut self) -> Result<(), String> {
        let Some((a, dial)) = self.pick_dial() else {
            return Ok(());
        };
        let input = if dial.aborted {
            match self.choices.below(10) {
                0..=4 => Input::Fail(a, DialFailure::Aborted),
                5..=7 => Input::Succeed(a),
                _ => Input::Fail(a, random_failure(self.choices, self.proxy_pct)),
            }
        } else if self.choices.chance(self.success_pct) {
            Input::Succeed(a)
        } else {
            Input::Fail(a, random_failure(self.choices, self.proxy_pct))
        };
        self.apply(input).map(drop)
    }

    fn random_close_done(&mut self) -> Result<(), String> {
        let Some((a, _)) = self.pick_close() else {
            return Ok(());
        };
        let result = match self.choices.below(20) {
            0..=13 => Ok(()),
            14..=18 => Err(CloseFailure::Io(random_io_kind(self.choices))),
            _ => Err(CloseFailure::Client),
        };
        self.apply(Input::CloseDone(a, result)).map(drop)
    }

    fn random_loss(&mut self) -> Result<(), String> {
        let loss = random_loss(self.choices);
        let target =
            if !self.m.open.is_empty() && (self.m.closes.is_empty() || self.choices.chance(85)) {
                let i = self.choices.index(self.m.open.len());
                self.m.open.keys().nth(i).copied()
            } else {
                self.pick_close().map(|(a, _)| a)
            };
        match target {
            Some(a) => self.apply(Input::Lost(a, loss)).map(drop),
            None => Ok(()),
        }
    }

    /// A sign of life, a probe's answer, or "cannot be probed", on a
    /// registered link (or, rarely, on a link being closed: a late signal).
    fn random_signal(&mut self) -> Result<(), String> {
        let target = if !self.m.closes.is_empty() && self.choices.chance(10) {
            self.pick_close().map(|(a, _)| a)
        } else {
            let i = self.choices.index(self.m.watch.len());
            self.m.watch.keys().nth(i).copied()
        };
        let Some(a) = target else { return Ok(()) };
        let probing = self.m.watch.get(&a).is_some_and(|w| w.probe.is_some());
        let input = match self.choices.below(20) {
            0 => Input::Unsupported(a),
            1..=9 if probing => Input::Answer(a),
            _ => Input::Active(a),
        };
        self.apply(input).map(drop)
    }

    fn command(&mut self, command: Command) -> Result<(), String> {
        // The alphabet's retry policy is a placeholder: the policy is drawn
        // here, from the run's choices.
        let command = match command {
            Command::ConnectAllWithRetry(_) => {
                Command::ConnectAllWithRetry(random_retry_policy(self.choices))
            }
            other => other,
        };
        self.apply(Input::Command(command)).map(drop)
    }

    fn random_time_step(&mut self) -> Result<(), String> {
        let input = match self.choices.below(100) {
            0..=9 => Input::Advance(Duration::ZERO),
            10..=39 => Input::Advance(self.choices.millis(1, 500)),
            40..=59 => Input::Advance(self.choices.millis(500, 10_000)),
            60..=69 => Input::Advance(self.choices.millis(10_000, 200_000)),
            70..=87 => match self.pool.poll_timeout() {
                Some(t) if t > self.now => Input::Advance(t - self.now),
                _ => Input::Advance(self.choices.millis(1, 1_000)),
            },
            88..=93 => return self.early_timeout(),
            _ if self.race => Input::Drift(self.choices.millis(1, 20_000)),
            _ => Input::Advance(self.choices.millis(1, 2_000)),
        };
        self.apply(input).map(drop)
    }

    /// `handle_timeout` a hair before the next timer, or with an instant in
    /// the past: nothing may happen.
    fn early_timeout(&mut self) -> Result<(), String> {
        if self.fired_until != self.now {
            return self.apply(Input::Advance(Duration::ZERO)).map(drop);
        }
        match self.pool.poll_timeout() {
            Some(t) if t > self.now + Duration::from_nanos(1) && self.choices.chance(70) => {
                let d = t - Duration::from_nanos(1) - self.now;
                let outputs = self.apply(Input::Advance(d))?;
                ensure!(
                    outputs.is_empty(),
                    "handle_timeout a nanosecond before poll_timeout produced outputs"
                );
                Ok(())
            }
            _ => {
                self.step += 1;
                let back = self
                    .choices
                    .millis(0, 50_000)
                    .min(self.now.saturating_duration_since(self.t0));
                let before = self.snapshot();
                self.pool.handle_timeout(self.now - back);
                let outputs = self.drain()?;
                self.log(&format!("handle_timeout (-{back:?}, backwards)"), &outputs);
                ensure!(
                    outputs.is_empty(),
                    "handle_timeout with an earlier instant produced outputs"
                );
                let after = self.snapshot();
                ensure!(
                    before == after,
                    "handle_timeout with an earlier instant changed the pool"
                );
                self.stats.bump("backwards timeouts");
                Ok(())
            }
        }
    }

    /// Feeds a wrong input: it must be an error that changes nothing.
    fn wrong_input(&mut self) -> Result<(), String> {
        self.step += 1;
        // (attempt, stale?, wrong calls: 0 success, 1 failure, 2 loss, 3 close result)
        let mut candidates: Vec<(AttemptId, bool, &'static [u8])> = Vec::new();
        if !self.m.retired.is_empty() {
            let i = self.choices.index(self.m.retired.len());
            candidates.push((self.m.retired[i], true, &[0, 1, 2, 3]));
        }
        if let Some((a, _)) = self.pick_dial() {
            candidates.push((a, false, &[2, 3]));
        }
        if !self.m.open.is_empty() {
            let i = self.choices.index(self.m.open.len());
            if let Some(a) = self.m.open.keys().nth(i) {
                candidates.push((*a, false, &[0, 1, 3]));
            }
        }
        if let Some((a, _)) = self.pick_close() {
            candidates.push((a, false, &[0, 1]));
        }
        let policy_wrong = candidates.is_empty() || self.choices.chance(10);
        let before = self.snapshot();
        let (what, verdict) = if policy_wrong {
            let mut policy = random_retry_policy(self.choices);
            match self.choices.below(3) {
                0 => policy.backoff.factor = 0.5,
                1 => policy.backoff.jitter = 1.5,
                _ => policy.backoff.initial = Duration::ZERO,
            }
            let result = self
                .pool
                .handle_command(self.now, Command::ConnectAllWithRetry(policy))
                .map(|op| op.expect("an operation"));
            let verdict = match result {
                Err(ConfigError::InvalidFactor { .. })
                | Err(ConfigError::InvalidJitter { .. })
                | Err(ConfigError::ZeroDuration { .. }) => Ok(()),
                other => Err(format!("an invalid retry policy gave {other:?}")),
            };
            (format!("WRONG connect_all_with_retry {policy:?}"), verdict)
        } else {
            let (a, stale, calls) = *self.choices.pick(&candidates);
            let call = *self.choices.pick(calls);
            let now = self.now;
            let (what, result) = match call {
                0 => (
                    "dial_succeeded",
                    self.pool.handle_input(
                        now,
                        PoolInput::DialFinished {
                            attempt: a,
                            result: Ok(()),
                            detail: None,
                        },
                    ),
                ),
                1 => (
                    "dial_failed",
                    self.pool.handle_input(
                        now,
                        PoolInput::DialFinished {
                            attempt: a,
                            result: Err(DialFailure::TimedOut),
                            detail: None,
                        },
                    ),
                ),
                2 => (
                    "connection_lost",
                    self.pool.handle_input(
                        now,
                        PoolInput::LinkLost {
                            attempt: a,
                            loss: LinkLoss::ClosedByPeer,
                        },
                    ),
                ),
                _ => (
                    "close_finished",
                    self.pool.handle_input(
                        now,
                        PoolInput::CloseFinished {
                            attempt: a,
                            result: Ok(()),
                        },
                    ),
                ),
            };
            let verdict = match result {
                Err(InputError::UnknownAttempt(x)) if stale && x == a => Ok(()),
                Err(InputError::UnexpectedInput { attempt, .. }) if !stale && attempt == a => {
                    Ok(())
                }
                other => Err(format!(
                    "wrong input {what} {a} (stale: {stale}) gave {other:?}"
                )),
            };
            (format!("WRONG {what} {a} (stale: {stale})"), verdict)
        };
        let outputs = self.drain()?;
        self.log(&what, &outputs);
        verdict?;
        ensure!(outputs.is_empty(), "a wrong input produced outputs");
        let after = self.snapshot();
        ensure!(
            before == after,
            "a wrong input changed the pool:\n before {before:?}\n after  {after:?}"
        );
        self.stats.bump("wrong inputs");
        Ok(())
    }

    /// Applies one step of the alphabet. A result or a loss with nothing
    /// to report falls to the next kind that has something, and finally to
    /// a time step.
    fn step_with(&mut self, step: Step) -> Result<(), String> {
        match step {
            Step::DialResult if !self.m.dials.is_empty() => self.random_dial_result(),
            Step::DialResult | Step::CloseResult if !self.m.closes.is_empty() => {
                self.random_close_done()
            }
            Step::LinkSignal if !self.m.watch.is_empty() => self.random_signal(),
            Step::DialResult | Step::CloseResult | Step::LoseLink | Step::LinkSignal
                if !(self.m.open.is_empty() && self.m.closes.is_empty()) =>
            {
                self.random_loss()
            }
            Step::DialResult
            | Step::CloseResult
            | Step::LoseLink
            | Step::LinkSignal
            | Step::Time => self.random_time_step(),
            Step::Command(command) => self.command(command),
            Step::ProxyReport if self.reports => {
                let report = random_report(self.choices);
                self.apply(Input::Report(report)).map(drop)
            }
            Step::ProxyReport => self.random_time_step(),
            Step::WrongInput => self.wrong_input(),
        }
    }

    // ---- liveness -----------------------------------------------------------------

    /// Invariant 10: from `T` on every dial succeeds quickly; with
    /// maintenance running, every server is connected by the bound.
    fn liveness(&mut self) -> Result<(), String> {
        if self.fired_until != self.now {
            self.apply(Input::Advance(Duration::ZERO))?;
        }
        self.stats.bump("liveness runs");
        if self.m.held() {
            // The world is healthy from now on: Tor reports it is ready.
            self.apply(Input::Report(ProxyReport::Ready))?;
            self.stats.bump("liveness after Tor said wait");
        }
        let t = self.now;
        let latency = Duration::from_millis(500).min(self.conn_timeout / 4);
        let proxy_down = self.m.proxy_down;
        let mut events: BTreeMap<(Instant, u64), WorldEvent> = BTreeMap::new();
        let mut seq = 0u64;
        let mut hanging: BTreeSet<AttemptId> = BTreeSet::new();
        let dials: Vec<(AttemptId, DialM)> = self.m.dials.iter().map(|(a, d)| (*a, *d)).collect();
        for (a, d) in dials {
            let lat = self.choices.millis(0, as_millis(latency));
            seq += 1;
            if d.aborted {
                let ev = if self.choices.chance(50) {
                    WorldEvent::Aborted(a)
                } else {
                    WorldEvent::Succeed(a)
                };
                events.insert((t + lat, seq), ev);
            } else if self.max_retries == 0 && self.choices.chance(30) {
                // Stuck on a dead circuit until the machine times it out.
                hanging.insert(a);
            } else {
                let lat = lat.min(d.deadline.saturating_duration_since(t) / 2);
                events.insert((t + lat, seq), WorldEvent::Succeed(a));
            }
        }
        // Probes already out are answered too: the world is healthy from T.
        let probing: Vec<(AttemptId, Instant)> = self
            .m
            .watch
            .iter()
            .filter_map(|(a, w)| w.probe.map(|(_, deadline)| (*a, deadline)))
            .collect();
        for (a, deadline) in probing {
            seq += 1;
            let lat = self.choices.millis(0, as_millis(latency));
            let lat = lat.min(deadline.saturating_duration_since(t) / 2);
            events.insert((t + lat, seq), WorldEvent::Answer(a));
        }
        let closes: Vec<AttemptId> = self.m.closes.keys().copied().collect();
        let mut hanging_close = false;
        for a in closes {
            if self.choices.chance(70) {
                seq += 1;
                let lat = self.choices.millis(0, as_millis(latency));
                events.insert((t + lat, seq), WorldEvent::CloseDone(a));
            } else {
                hanging_close |= self
                    .m
                    .closes
                    .get(&a)
                    .is_some_and(|c| !c.stray && !c.timed_out);
            }
        }
        // A dial stuck at T ends at its deadline, a stuck close at its timeout;
        // then the server waits at most one backoff (a second one if it must
        // wait for the proxy probe), and each dial takes one latency.
        let stuck = if hanging.is_empty() {
            Duration::ZERO
        } else {
            self.conn_timeout
        };
        let stuck = if hanging_close {
            stuck.max(self.close_timeout)
        } else {
            stuck
        };
        let backoffs = if proxy_down { 2 } else { 1 };
        let bound =
            t + stuck + self.max_backoff * backoffs + latency * 4 + Duration::from_millis(1);
        if proxy_down {
            self.stats.bump("liveness with the proxy down");
        }
        if !hanging.is_empty() || hanging_close {
            self.stats.bump("liveness with stuck dials or closes");
        }
        self.trace.push(format!(
            "-- liveness from t={} (proxy down: {proxy_down}), every server connected by t={}",
            self.off(t),
            self.off(bound)
        ));

        let mut pending: Vec<Output> = self.apply(Input::Command(Command::StartMaintenance))?;
        for _ in 0..100_000 {
            for o in std::mem::take(&mut pending) {
                let lat = self.choices.millis(0, as_millis(latency));
                seq += 1;
                match o {
                    Output::Dial(d) => {
                        events.insert((self.now + lat, seq), WorldEvent::Succeed(d.attempt));
                    }
                    Output::Abort(a) if hanging.remove(&a) => {
                        events.insert((self.now + lat, seq), WorldEvent::Aborted(a));
                    }
                    Output::Close(c) if c.stray => {
                        events.insert((self.now + lat, seq), WorldEvent::CloseDone(c.attempt));
                    }
                    Output::Probe(p) => {
                        // A healthy directory answers within half the probe timeout.
                        let lat = lat.min(self.keepalive.probe_timeout / 2);
                        events.insert((self.now + lat, seq), WorldEvent::Answer(p.attempt));
                    }
                    _ => {}
                }
            }
            if self.now >= bound {
                break;
            }
            if self.choices.chance(3) {
                let input = match self.choices.below(4) {
                    0 => Input::Command(Command::ConnectAllParallel),
                    1 => Input::Command(Command::ReconnectDisconnected),
                    2 => {
                        let mut p = random_retry_policy(self.choices);
                        if p.backoff.max > self.max_backoff {
                            p.backoff.max = self.max_backoff;
                            p.backoff.initial = p.backoff.initial.min(self.max_backoff);
                        }
                        Input::Command(Command::ConnectAllWithRetry(p))
                    }
                    _ => Input::Command(Command::StartMaintenance),
                };
                pending = self.apply(input)?;
                continue;
            }
            if let Some((&(at, key), &ev)) = events.iter().next() {
                if at <= self.now {
                    events.remove(&(at, key));
                    let input = match ev {
                        WorldEvent::Succeed(a) => Input::Succeed(a),
                        WorldEvent::Aborted(a) => Input::Fail(a, DialFailure::Aborted),
                        WorldEvent::CloseDone(a) => Input::CloseDone(a, Ok(())),
                        WorldEvent::Answer(a) => Input::Answer(a),
                    };
                    let known = match ev {
                        WorldEvent::Succeed(a) | WorldEvent::Aborted(a) => {
                            self.m.dials.contains_key(&a)
                        }
                        WorldEvent::CloseDone(a) => self.m.closes.contains_key(&a),
                        WorldEvent::Answer(a) => self.m.watch.contains_key(&a),
                    };
                    ensure!(
                        known,
                        "test bug: world event {ev:?} for nothing outstanding"
                    );
                    pending = self.apply(input)?;
                    continue;
                }
            }
            let mut next = bound;
            if let Some(&(at, _)) = events.keys().next() {
                next = next.min(at);
            }
            if let Some(at) = self.pool.poll_timeout() {
                next = next.min(at);
            }
            let next = next.max(self.now);
            pending = self.apply(Input::Advance(next - self.now))?;
        }
        ensure!(self.now >= bound, "liveness phase did not reach its bound");
        if self.pool.connected_count() != self.ids.len() {
            let statuses: Vec<String> = self
                .pool
                .statuses()
                .map(|s| {
                    format!(
                        "{} {:?} failures={} next_retry_at={:?}",
                        s.server,
                        s.state,
                        s.consecutive_failures,
                        s.next_retry_at.map(|t| self.off(t))
                    )
                })
                .collect();
            return Err(format!(
                "inv 10: reachable from t={} with maintenance on, but only {} of {} servers are connected at t={}: {statuses:?}",
                self.off(t),
                self.pool.connected_count(),
                self.ids.len(),
                self.off(self.now)
            ));
        }
        Ok(())
    }

    // ---- shutdown -----------------------------------------------------------------

    /// Invariants 3 and 7: `close_all`, then every result reported and every
    /// timer run: nothing leaks.
    fn quiesce(&mut self) -> Result<(), String> {
        if self.fired_until != self.now {
            self.apply(Input::Advance(Duration::ZERO))?;
        }
        self.trace.push("-- close_all and quiescence".to_owned());
        self.apply(Input::Command(Command::CloseAll))?;
        for _ in 0..100_000 {
            if self.m.dials.is_empty() && self.m.closes.is_empty() {
                break;
            }
            let roll = self.choices.below(10);
            if roll < 5 && !self.m.dials.is_empty() {
                self.random_dial_result()?;
            } else if roll < 9 && !self.m.closes.is_empty() {
                self.random_close_done()?;
            } else {
                let d = self.choices.millis(0, 2 * as_millis(self.close_timeout));
                self.apply(Input::Advance(d))?;
            }
        }
        ensure!(
            self.m.dials.is_empty() && self.m.closes.is_empty(),
            "results still owed after quiescence"
        );
        for _ in 0..10_000 {
            match self.pool.poll_timeout() {
                Some(t) => {
                    let d = t.saturating_duration_since(self.now);
                    self.apply(Input::Advance(d))?;
                }
                None => break,
            }
        }
        ensure!(
            self.pool.poll_timeout().is_none(),
            "timers keep coming after close_all and quiescence"
        );
        let m = &self.m;
        ensure!(m.open.is_empty(), "inv 7: registered connections remain");
        ensure!(
            m.live.iter().all(Option::is_none),
            "inv 7: a Connected without Disconnected remains"
        );
        ensure!(
            m.connected_notes == m.disconnected_notes,
            "inv 7: Connected {:?} vs Disconnected {:?}",
            m.connected_notes,
            m.disconnected_notes
        );
        ensure!(
            self.pool.live_clients() == 0
                && self.pool.connected_count() == 0
                && self.pool.pending_attempts() == 0
                && self.pool.operations_in_progress() == 0,
            "inv 7: after quiescence live {} connected {} pending {} operations {}",
            self.pool.live_clients(),
            self.pool.connected_count(),
            self.pool.pending_attempts(),
            self.pool.operations_in_progress()
        );
        ensure!(
            m.ops.is_empty() && m.returned_ops == m.finished_ops,
            "operations never finished: {:?}",
            m.returned_ops
                .difference(&m.finished_ops)
                .collect::<Vec<_>>()
        );
        Ok(())
    }
}

// ---- one run ------------------------------------------------------------------------

fn run(choices: &mut Choices, trace: &mut Trace) -> Result<Stats, String> {
    let setup = random_setup(choices);
    let mut stats = Stats::default();
    trace.push(format!(
        "servers {:?} connection_timeout {:?} close_timeout {:?} isolation {:?} maintenance {:?}",
        setup.config.servers,
        setup.config.connection_timeout,
        setup.config.close_timeout,
        setup.config.isolation,
        setup.config.maintenance
    ));

    // Expected servers and rejections, from the public parser.
    let mut node_ids: Vec<String> = Vec::new();
    let mut rejections: Vec<(usize, Result<usize, dirpool_core::AddrError>)> = Vec::new();
    for (index, parsed) in setup.parsed.iter().enumerate() {
        match parsed {
            Err(e) => rejections.push((index, Err(e.clone()))),
            Ok(id) => match node_ids.iter().position(|x| x == id) {
                Some(keeper) => rejections.push((index, Ok(keeper))),
                None => node_ids.push(id.clone()),
            },
        }
    }
    let result = PoolState::new(setup.config.clone(), setup.entropy);
    if node_ids.is_empty() {
        ensure!(
            matches!(&result, Err(ConfigError::NoValidServers { rejected }) if rejected.len() == setup.parsed.len()),
            "a pool of only malformed entries gave {:?}",
            result.map(|_| ())
        );
        stats.bump("configs without a valid server");
        return Ok(stats);
    }
    let mut pool = result.map_err(|e| format!("valid configuration refused: {e}"))?;
    let ids: Vec<ServerId> = pool.servers().map(|(id, _)| id).collect();
    let listed: Vec<String> = pool
        .servers()
        .map(|(_, a)| a.node_id().to_owned())
        .collect();
    ensure!(listed == node_ids, "servers {listed:?}, want {node_ids:?}");
    for (i, id) in ids.iter().enumerate() {
        ensure!(id.index() == i, "server ids out of order");
    }
    for (entry, parsed) in setup.config.servers.iter().zip(&setup.parsed) {
        let found = pool.find_server(entry);
        let want = parsed
            .as_ref()
            .ok()
            .and_then(|id| node_ids.iter().position(|x| x == id))
            .map(|i| ids[i]);
        ensure!(
            found == want,
            "find_server({entry:?}) is {found:?}, want {want:?}"
        );
    }
    // Invariant 8: each rejected entry reported exactly once, at construction.
    let want: Vec<Notification> = rejections
        .iter()
        .map(|(index, r)| match r {
            Err(error) => Notification::AddressRejected {
                index: *index,
                error: error.clone(),
            },
            Ok(keeper) => Notification::DuplicateAddress {
                index: *index,
                server: ids[*keeper],
            },
        })
        .collect();
    let mut got = Vec::new();
    while let Some(o) = pool.poll_output() {
        match o {
            Output::Notify(n) => got.push(n),
            other => return Err(format!("construction output {other:?}")),
        }
    }
    ensure!(
        got == want,
        "inv 8: construction notifications {got:?}, want {want:?}"
    );
    ensure!(
        pool.rejected_entries().len() == rejections.len(),
        "rejected_entries has {} entries",
        pool.rejected_entries().len()
    );
    for (_, r) in &rejections {
        stats.bump(if r.is_ok() {
            "duplicate entries"
        } else {
            "malformed entries"
        });
    }

    let n = ids.len();
    let t0 = Instant::now();
    let success_pct = 10 + choices.below(81);
    let proxy_pct = *choices.pick(&[0, 5, 15, 40]);
    let race = choices.chance(25);
    let reports = choices.chance(50);
    let steps = 200 + choices.below(201);
    let liveness = choices.chance(35);
    let conn_timeout = setup.config.connection_timeout;
    let close_timeout = setup.config.close_timeout;
    let maintenance = setup.config.maintenance;
    trace.push(format!(
        "  success {success_pct}% proxy failures {proxy_pct}% race {race} reports {reports} steps {steps} liveness {liveness}"
    ));
    let mut sim = Sim {
        pool,
        choices,
        trace,
        stats,
        t0,
        now: t0,
        fired_until: t0,
        step: 0,
        node_ids,
        ids,
        scope: setup.config.isolation,
        token_hex: setup.token_hex,
        passwords: vec![None; n],
        conn_timeout,
        close_timeout,
        maintenance_max: maintenance.backoff.max,
        maintenance_backoff: maintenance.backoff,
        stable_after: maintenance.stable_after,
        keepalive: setup.config.keepalive,
        max_retries: maintenance.max_retries,
        max_backoff: maintenance.backoff.max,
        success_pct,
        proxy_pct,
        race,
        reports,
        m: Model {
            live: vec![None; n],
            connected_notes: vec![0; n],
            disconnected_notes: vec![0; n],
            dials_issued: vec![0; n],
            failures: vec![0; n],
            gave_up: vec![false; n],
            ..Model::default()
        },
    };
    sim.check_global(false)?;
    for _ in 0..steps {
        if sim.choices.is_exhausted() {
            break;
        }
        let step = sim.choices.arbitrary().unwrap_or(Step::Time);
        sim.step_with(step)?;
    }
    if liveness {
        sim.liveness()?;
    }
    sim.quiesce()?;
    sim.stats.bump("runs");
    Ok(sim.stats)
}

/// Runs one checked run; on failure, the error shows the last steps.
pub(super) fn check(choices: &mut Choices, full_trace: bool) -> Result<(Stats, Trace), String> {
    let start = choices.clone();
    let error = match run_traced(choices, full_trace, full_trace) {
        Ok(done) => return Ok(done),
        Err(error) if full_trace => error,
        // The run is a function of its bytes: replay it with the trace on.
        Err(_) => match run_traced(&mut start.clone(), true, false) {
            Ok(_) => "the run failed untraced but passed traced (the checker depends on its trace)"
                .to_owned(),
            Err(error) => error,
        },
    };
    Err(error)
}

/// One run; on failure, the error shows the last steps (when traced).
fn run_traced(choices: &mut Choices, on: bool, full: bool) -> Result<(Stats, Trace), String> {
    let mut trace = Trace::new(on, full);
    let outcome = catch_unwind(AssertUnwindSafe(|| run(choices, &mut trace)));
    let error = match outcome {
        Ok(Ok(stats)) => return Ok((stats, trace)),
        Ok(Err(message)) => message,
        Err(payload) => format!("panic: {}", crate::corpus::panic_text(&*payload)),
    };
    Err(format!(
        "{error}\nlast {} steps:\n{}",
        trace.tail.len(),
        trace.tail()
    ))
}
