//! One seeded simulated world: the real pool (driver, SOCKS dialing,
//! JoinMarket handshake) on [`SimRuntime`], talking to simulated Tor and
//! directories ([`peers`](super::peers)) whose every choice comes from one
//! seeded PRNG, while random user commands arrive at random moments.
//! The invariants of ARCHITECTURE.md are checked from the outside — the pool's
//! events, its registered clients, and what the proxy and directories saw —
//! after every step.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dirpool::joinmarket::{JmConfig, JoinMarketHandshake, Network};
use dirpool::{Config, DirectoryPool, PoolEvent, Runtime};
use dirpool_core::{
    Backoff, Command, Entropy, IsolationScope, IsolationToken, RetryPolicy, ServerAddr,
};
use dirpool_core_kit::command_from;

use super::peers::{DirectoryFate, PeerEvent, ProxyFate, SimWorld, serve_proxy_connection};
use super::runtime::SimRuntime;

use super::Kind;
pub use super::{Failure, Trace};

const PROXY: &str = "127.0.0.1:9050";
const MAX_STEPS: usize = 300;

/// Asks the pool whether a node_id is registered.
type IsRegistered = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The world's mutable state, shared with the simulated peers.
struct State {
    rng: fastrand::Rng,
    t0: Instant,
    now: Instant,
    trace: Vec<String>,
    /// Directory host → (up from, up until) in seconds since start.
    up: BTreeMap<String, Vec<(f64, f64)>>,
    /// Hosts that answer as blackholed (stall) when down.
    blackholed: BTreeMap<String, bool>,
    reachable_from: Option<f64>,
    proxy_user_pass: bool,
    valid_hosts: Vec<String>,
    isolation: bool,
    violations: Vec<String>,
    /// Registered clients per node_id as seen through events.
    registered: BTreeMap<String, bool>,
    connected_events: usize,
    disconnected_events: usize,
    /// A loss just took the registered count to zero: AllDown must follow.
    all_down_due: bool,
    /// When each node last disconnected (seconds since start).
    last_disconnect: BTreeMap<String, f64>,
    /// `close_all` was the last word: nothing may connect until a command
    /// or maintenance asks again.
    quiet_after_close: bool,
    /// Directory-side connections open after a handshake.
    directory_open: BTreeMap<u64, String>,
    pool_clients: Option<IsRegistered>,
}

impl State {
    fn secs(&self) -> f64 {
        self.now.duration_since(self.t0).as_secs_f64()
    }

    fn log(&mut self, line: impl AsRef<str>) {
        let line = format!("{:9.3} {}", self.secs(), line.as_ref());
        self.trace.push(line);
    }

    /// The user asked for connections: anything may connect again.
    fn asked(&mut self, line: impl AsRef<str>) {
        self.quiet_after_close = false;
        self.log(line);
    }

    fn violation(&mut self, message: String) {
        self.log(format!("VIOLATION {message}"));
        self.violations.push(message);
    }

    fn is_up(&self, host: &str) -> bool {
        let t = self.secs();
        if self.reachable_from.is_some_and(|from| t >= from) {
            return true;
        }
        self.up
            .get(host)
            .is_some_and(|windows| windows.iter().any(|(a, b)| t >= *a && t < *b))
    }
}

/// The [`SimWorld`] the peers consult: every choice from the one PRNG.
struct World {
    state: Arc<Mutex<State>>,
}

impl SimWorld for World {
    fn proxy_fate(&self, host: &str, _port: u16, _username: Option<&str>) -> ProxyFate {
        let mut s = self.state.lock().expect("world state");
        let latency = Duration::from_millis(s.rng.u64(1..400));
        if s.reachable_from.is_some_and(|from| s.secs() >= from) {
            return ProxyFate::Forward { latency };
        }
        if !s.is_up(host) {
            return if s.blackholed.get(host).copied().unwrap_or(false) {
                ProxyFate::Stall
            } else {
                let codes = [0x01, 0x04, 0x05, 0x06, 0xF0, 0xF2, 0xF3, 0xF7];
                ProxyFate::Reply {
                    code: codes[s.rng.usize(..codes.len())],
                    latency,
                }
            };
        }
        match s.rng.u8(..100) {
            0..=79 => ProxyFate::Forward { latency },
            80..=84 => ProxyFate::CloseEarly,
            85..=89 => ProxyFate::CloseMidHandshake {
                after: Duration::from_millis(s.rng.u64(0..50)),
            },
            90..=94 => ProxyFate::Stall,
            _ => ProxyFate::Reply {
                code: 0x01,
                latency,
            },
        }
    }

    fn directory_fate(&self, _host: &str) -> DirectoryFate {
        let mut s = self.state.lock().expect("world state");
        let reply_delay = Duration::from_millis(s.rng.u64(0..300));
        if s.reachable_from.is_some_and(|from| s.secs() >= from) {
            return DirectoryFate::Accept {
                reply_delay,
                drop_after: None,
                send_ping_after: None,
            };
        }
        match s.rng.u8(..100) {
            0..=69 => {
                let drop_after =
                    (s.rng.u8(..3) == 0).then(|| Duration::from_millis(s.rng.u64(10..20_000)));
                let send_ping_after =
                    (s.rng.u8(..4) == 0).then(|| Duration::from_millis(s.rng.u64(10..5_000)));
                DirectoryFate::Accept {
                    reply_delay,
                    drop_after,
                    send_ping_after,
                }
            }
            70..=76 => DirectoryFate::Reject {
                motd: "go away".into(),
            },
            77..=83 => DirectoryFate::CloseWithoutReply,
            84..=89 => DirectoryFate::Silent,
            90..=94 => DirectoryFate::Garbage,
            _ => DirectoryFate::CloseMidReply,
        }
    }

    fn proxy_accepts_user_pass(&self) -> bool {
        self.state.lock().expect("world state").proxy_user_pass
    }

    fn record(&self, event: PeerEvent) {
        let mut s = self.state.lock().expect("world state");
        match &event {
            PeerEvent::ProxyConnect {
                host,
                port,
                username,
                ..
            } => {
                // Invariant 8: malformed addresses are never dialed.
                if !s.valid_hosts.iter().any(|h| h == host) {
                    s.violation(format!(
                        "inv 8: dial to {host}, which is not a valid configured server"
                    ));
                }
                // Invariant 9: credentials exactly when isolation is on.
                let has = username.as_deref() == Some("jm-directory");
                let isolation = s.isolation;
                if has != isolation || (username.is_some() && !has) {
                    s.violation(format!(
                        "inv 9: isolation {isolation} but username {username:?}"
                    ));
                }
                // Invariant 2: no dial for a server that is registered.
                let node = format!("{host}:{port}");
                let registered = s.pool_clients.as_ref().is_some_and(|f| f(&node));
                if registered {
                    s.violation(format!("inv 2: dial to {node} while it is connected"));
                }
                s.log(format!("proxy CONNECT {}", short(host)));
            }
            PeerEvent::DirectoryOpen { host, conn } => {
                s.directory_open.insert(*conn, host.clone());
                s.log(format!("directory {} accepted conn {conn}", short(host)));
            }
            PeerEvent::DirectoryClosed { host, conn } => {
                s.directory_open.remove(conn);
                s.log(format!("directory {} closed conn {conn}", short(host)));
            }
            other => s.log(format!("{other:?}")),
        }
    }
}

fn short(host: &str) -> &str {
    host.get(..8).unwrap_or(host)
}

/// Runs the world of `seed` to the end and checks it.
///
/// # Errors
/// The first broken invariant, with the trace.
pub fn run(seed: u64) -> Result<Trace, Failure> {
    let t0 = Instant::now();
    let sim = SimRuntime::new(t0);
    let mut rng = fastrand::Rng::with_seed(seed);

    // The configuration: 1–5 directories, maybe a duplicate and a malformed entry.
    let count = rng.usize(1..=5);
    let hosts: Vec<ServerAddr> = (0..count)
        .map(|i| {
            let mut key = [0u8; 32];
            key[0] = u8::try_from(i).unwrap_or(0);
            key[1..9].copy_from_slice(&seed.to_le_bytes());
            ServerAddr::from_onion_key(&key, 5222)
        })
        .collect();
    let mut entries: Vec<String> = hosts.iter().map(|a| a.node_id().to_owned()).collect();
    if rng.bool() {
        entries.push(hosts[0].host().to_uppercase().replace(".ONION", ".onion"));
    }
    if rng.bool() {
        entries.push("not-an-onion.onion".into());
    }
    let isolation = rng.u8(..4) != 0;
    let mut config = Config::new(entries.clone());
    config.proxy = PROXY.parse().expect("proxy address");
    config.pool.isolation = if isolation {
        IsolationScope::PerCategory
    } else {
        IsolationScope::Off
    };
    config.pool.connection_timeout = Duration::from_millis(rng.u64(500..5_000));
    config.pool.close_timeout = Duration::from_millis(rng.u64(200..2_000));
    let maintenance_max = Duration::from_millis(rng.u64(500..4_000));
    config.pool.maintenance.backoff = Backoff::new(
        Duration::from_millis(rng.u64(50..500)),
        maintenance_max,
        2.0,
    )
    .with_jitter(0.2);
    config.pool.maintenance.stable_after = Duration::from_secs(rng.u64(1..10));

    let mut up = BTreeMap::new();
    let mut blackholed = BTreeMap::new();
    for addr in &hosts {
        let mut windows = Vec::new();
        let mut t = 0.0;
        while t < 900.0 {
            let down = rng.f64() * 8.0;
            let live = rng.f64() * 15.0;
            windows.push((t + down, t + down + live));
            t += down + live;
        }
        up.insert(addr.host().to_owned(), windows);
        blackholed.insert(addr.host().to_owned(), rng.u8(..3) == 0);
    }
    let state = Arc::new(Mutex::new(State {
        rng: fastrand::Rng::with_seed(seed ^ 0x5eed),
        t0,
        now: t0,
        trace: Vec::new(),
        up,
        blackholed,
        reachable_from: None,
        proxy_user_pass: true,
        valid_hosts: hosts.iter().map(|a| a.host().to_owned()).collect(),
        isolation,
        violations: Vec::new(),
        registered: BTreeMap::new(),
        connected_events: 0,
        disconnected_events: 0,
        all_down_due: false,
        last_disconnect: BTreeMap::new(),
        quiet_after_close: false,
        directory_open: BTreeMap::new(),
        pool_clients: None,
    }));
    let world: Arc<dyn SimWorld> = Arc::new(World {
        state: Arc::clone(&state),
    });
    let rt: Arc<dyn Runtime> = Arc::new(sim.clone());

    // Tor: one listener; every accepted connection served by the simulated proxy.
    let proxy_addr: SocketAddr = PROXY.parse().expect("proxy address");
    let listener = Arc::new(sim.bind(proxy_addr));
    {
        let listener = Arc::clone(&listener);
        let world = Arc::clone(&world);
        let rt2 = Arc::clone(&rt);
        rt.spawn(Box::pin(async move {
            let mut conn = 0u64;
            while let Some((stream, _)) = listener.accept().await {
                conn += 1;
                let task =
                    serve_proxy_connection(stream, Arc::clone(&world), Arc::clone(&rt2), conn);
                rt2.spawn(Box::pin(task));
            }
        }));
    }

    let handshake = SimHandshake {
        inner: JoinMarketHandshake::new(JmConfig::new(crate::client_identity(), Network::Regtest))
            .expect("handshake config"),
        state: Arc::clone(&state),
    };
    let entropy = Entropy {
        isolation_token: IsolationToken::from_bytes([7; 16]),
        jitter_seed: seed,
    };
    let pool = DirectoryPool::builder(config, handshake)
        .entropy(entropy)
        .spawn(Arc::clone(&rt))
        .map_err(|e| Failure {
            kind: Kind::Simulation,
            seed,
            message: format!("pool did not start: {e}"),
            trace: Trace::default(),
        })?;
    {
        let clients_view = pool.clone();
        state.lock().expect("world state").pool_clients = Some(Arc::new(move |node: &str| {
            clients_view.client(node).is_some()
        }));
    }

    // Every pool event goes through the checks of invariants 4 and 6.
    let max_backoff = maintenance_max.max(Duration::from_secs(2));
    {
        let mut events = pool.events();
        let state = Arc::clone(&state);
        rt.spawn(Box::pin(async move {
            while let Some(event) = events.next().await {
                let mut s = state.lock().expect("world state");
                if std::mem::take(&mut s.all_down_due) && !matches!(event, PoolEvent::AllDown) {
                    s.violation("AllDown did not follow the loss of the last connection".into());
                }
                match &event {
                    PoolEvent::Connected { node_id } => {
                        s.connected_events += 1;
                        if s.quiet_after_close {
                            s.violation(format!(
                                "inv 3: {node_id} connected after close_all with nothing asking for it"
                            ));
                        }
                        if s.registered.insert(node_id.clone(), true) == Some(true) {
                            s.violation(format!(
                                "inv 1/4: {node_id} connected twice without a disconnect"
                            ));
                        }
                    }
                    PoolEvent::Disconnected { node_id, reason } => {
                        s.disconnected_events += 1;
                        let t = s.secs();
                        s.last_disconnect.insert(node_id.clone(), t);
                        if s.registered.insert(node_id.clone(), false) != Some(true) {
                            s.violation(format!(
                                "inv 4: {node_id} disconnected while not connected"
                            ));
                        }
                        let lost = matches!(reason, dirpool_core::DisconnectReason::Lost(_));
                        if lost && !s.registered.values().any(|v| *v) {
                            s.all_down_due = true;
                        }
                    }
                    PoolEvent::DialFailed {
                        retry_at: Some(at), ..
                    } if *at < s.now
                        || at.duration_since(s.now) > max_backoff + Duration::from_millis(1) =>
                    {
                        let delay = at.saturating_duration_since(s.now);
                        s.violation(format!(
                            "inv 6: retry in {delay:?} outside 0..={max_backoff:?}"
                        ));
                    }
                    _ => {}
                }
                let line = match &event {
                    PoolEvent::Connected { node_id } => {
                        format!("event connected {}", short(node_id))
                    }
                    PoolEvent::Disconnected { node_id, reason } => {
                        format!("event disconnected {} ({reason})", short(node_id))
                    }
                    PoolEvent::DialFailed { node_id, error, .. } => {
                        format!("event dial failed {}: {}", short(node_id), error.failure())
                    }
                    other => format!("event {other:?}"),
                };
                s.log(line);
            }
        }));
    }

    // The user: random commands at random moments.
    let mut tor_up = true;
    for step in 0..MAX_STEPS {
        let action = rng.u8(..100);
        let pool2 = pool.clone();
        let state2 = Arc::clone(&state);
        match action {
            // A command, drawn by the fuzz alphabet's chooser.
            0..=33 => match command_from(rng.u8(..100), Duration::ZERO) {
                Command::ConnectAllParallel => {
                    state
                        .lock()
                        .expect("world state")
                        .asked("user: connect_all_parallel");
                    rt.spawn(Box::pin(async move {
                        let n = pool2.connect_all_parallel().await;
                        state2
                            .lock()
                            .expect("world state")
                            .log(format!("user: connect_all_parallel -> {n:?}"));
                    }));
                }
                Command::ConnectAllWithRetry(_) => {
                    let mut policy = RetryPolicy::new(Duration::from_millis(rng.u64(0..20_000)));
                    policy.backoff = Backoff::new(
                        Duration::from_millis(rng.u64(50..1_000)),
                        Duration::from_secs(2),
                        1.5,
                    )
                    .with_jitter(rng.f64() * 0.5);
                    let started = sim.now();
                    let deadline = started + policy.timeout;
                    state.lock().expect("world state").asked(format!(
                        "user: connect_all_with_retry({:?})",
                        policy.timeout
                    ));
                    let rt3 = Arc::clone(&rt);
                    rt.spawn(Box::pin(async move {
                        let n = pool2.connect_all_with_retry(policy).await;
                        let finished = rt3.now();
                        let mut s = state2.lock().expect("world state");
                        s.log(format!("user: connect_all_with_retry -> {n:?}"));
                        // Invariant 5: a retry operation ends no later than its deadline.
                        if finished > deadline {
                            let late = finished.duration_since(deadline);
                            s.violation(format!("inv 5: retry ended {late:?} after its deadline"));
                        }
                    }));
                }
                Command::ReconnectDisconnected => {
                    state
                        .lock()
                        .expect("world state")
                        .asked("user: reconnect_disconnected");
                    rt.spawn(Box::pin(async move {
                        let new = pool2.reconnect_disconnected().await.map(|v| v.len());
                        state2
                            .lock()
                            .expect("world state")
                            .log(format!("user: reconnect_disconnected -> {new:?}"));
                    }));
                }
                Command::CloseAll => {
                    {
                        let mut s = state.lock().expect("world state");
                        s.quiet_after_close = true;
                        s.log("user: close_all");
                    }
                    rt.spawn(Box::pin(async move {
                        let r = pool2.close_all().await.map(|r| r.connected);
                        state2
                            .lock()
                            .expect("world state")
                            .log(format!("user: close_all -> {r:?}"));
                    }));
                }
                Command::StartMaintenance => {
                    state
                        .lock()
                        .expect("world state")
                        .asked("user: start_maintenance");
                    let _ = pool.start_maintenance();
                }
                Command::StopMaintenance => {
                    state
                        .lock()
                        .expect("world state")
                        .log("user: stop_maintenance");
                    let _ = pool.stop_maintenance();
                }
                // A command this world does not know yet: through
                // `DirectoryPool::command`, and it may connect.
                other => {
                    let what = format!("{other:?}");
                    state
                        .lock()
                        .expect("world state")
                        .asked(format!("user: command {what}"));
                    rt.spawn(Box::pin(async move {
                        let r = pool2.command(other).await;
                        let mut s = state2.lock().expect("world state");
                        s.log(format!(
                            "user: command {what} -> {:?}",
                            r.as_ref().map(|r| r.as_ref().map(|r| r.connected))
                        ));
                        if let Err(e) = r {
                            s.violation(format!("{what} failed: {e}"));
                        }
                    }));
                }
            },
            34..=36 => {
                tor_up = !tor_up;
                listener.set_up(tor_up);
                state.lock().expect("world state").log(if tor_up {
                    "tor: up"
                } else {
                    "tor: down"
                });
            }
            37..=39 => {
                // Not registered; another port so it never looks like a
                // second dial of a registered server.
                let host = if rng.u8(..5) == 0 {
                    "bad host".to_owned()
                } else {
                    format!("{}:5223", hosts[rng.usize(..hosts.len())].host())
                };
                state
                    .lock()
                    .expect("world state")
                    .log(format!("user: connect_to_directory({})", short(&host)));
                let rt3 = Arc::clone(&rt);
                rt.spawn(Box::pin(async move {
                    let result = pool2.connect_to_directory(&host).await;
                    let line = match &result {
                        Ok((node, _)) => format!("user: connect_to_directory -> {}", short(node)),
                        Err(e) => format!("user: connect_to_directory -> {e}"),
                    };
                    state2.lock().expect("world state").log(line);
                    if let Ok((node, client)) = result {
                        if pool2.client(&node).is_some() {
                            state2.lock().expect("world state").violation(format!(
                                "{node} from connect_to_directory was registered"
                            ));
                        }
                        // Its close may hang (the world decides): give up after 1 s; dropping it closes the stream.
                        let close = std::pin::pin!(dirpool::Client::close(&client));
                        let _ = futures::future::select(
                            close,
                            rt3.sleep_until(rt3.now() + Duration::from_secs(1)),
                        )
                        .await;
                    }
                }));
            }
            40..=41 => {
                // list_disconnected and clients partition the valid servers.
                let disconnected: Vec<String> = pool
                    .list_disconnected()
                    .iter()
                    .map(|a| a.node_id().to_owned())
                    .collect();
                let connected: Vec<String> = pool.clients().into_iter().map(|(n, _)| n).collect();
                let mut all: Vec<String> = disconnected.iter().chain(&connected).cloned().collect();
                all.sort();
                let mut want: Vec<String> = hosts.iter().map(|a| a.node_id().to_owned()).collect();
                want.sort();
                let mut s = state.lock().expect("world state");
                if all != want {
                    s.violation(format!("list_disconnected {disconnected:?} and clients {connected:?} do not partition the servers"));
                }
                s.log(format!("user: list_disconnected -> {}", disconnected.len()));
            }
            42..=43 => {
                rt.spawn(Box::pin(async move {
                    let statuses = pool2.status().await;
                    let line = match statuses {
                        Ok(statuses) => {
                            let states: Vec<String> =
                                statuses.iter().map(|s| format!("{:?}", s.state)).collect();
                            format!("user: status -> {}", states.join(","))
                        }
                        Err(e) => format!("user: status -> {e}"),
                    };
                    state2.lock().expect("world state").log(line);
                }));
            }
            _ => {}
        }
        // Time passes: nothing, a little, a lot, or to the next timer.
        let advance = match rng.u8(..10) {
            0..=2 => Duration::ZERO,
            3..=6 => Duration::from_millis(rng.u64(1..500)),
            7..=8 => Duration::from_millis(rng.u64(500..10_000)),
            _ => sim
                .next_timer()
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(sim.now())),
        };
        sim.run_until_idle();
        advance_world(&sim, &state, sim.now() + advance);
        check(&state, &pool)
            .map_err(|message| failure(seed, &state, format!("step {step}: {message}")))?;
    }

    // Liveness (invariant 10): everything reachable from T, maintenance on.
    let t = state.lock().expect("world state").secs();
    {
        let mut s = state.lock().expect("world state");
        s.reachable_from = Some(t);
        s.log("world: every directory reachable from now on, Tor up");
    }
    listener.set_up(true);
    state
        .lock()
        .expect("world state")
        .asked("user: start_maintenance");
    let _ = pool.start_maintenance();
    // A link opened before T may still carry a drop decided before T (at
    // most 20 s later): each loss after T starts its own bound.
    let bound = max_backoff * 2 + Duration::from_secs(5) + Duration::from_secs(1);
    let end = sim.now() + Duration::from_secs(21) + bound;
    while sim.now() < end {
        let step = (sim.now() + Duration::from_millis(250)).min(end);
        advance_world(&sim, &state, step);
        check(&state, &pool).map_err(|m| failure(seed, &state, m))?;
        let s = state.lock().expect("world state");
        let now = s.secs();
        for addr in &hosts {
            let node = addr.node_id();
            if pool.client(node).is_some() {
                continue;
            }
            let since = s.last_disconnect.get(node).copied().unwrap_or(t).max(t);
            if now - since > bound.as_secs_f64() {
                let message = format!(
                    "inv 10: {node} still not connected {:.3} s after it became reachable (bound {bound:?})",
                    now - since
                );
                drop(s);
                return Err(failure(seed, &state, message));
            }
        }
    }

    // Shutdown (invariants 3 and 7): close_all, then quiescence.
    state.lock().expect("world state").quiet_after_close = true;
    let report = {
        let pool2 = pool.clone();
        sim.block_on(async move { pool2.close_all().await })
    };
    advance_world(&sim, &state, sim.now() + Duration::from_secs(30));
    {
        let mut s = state.lock().expect("world state");
        s.log(format!(
            "user: final close_all -> {:?}",
            report.map(|r| r.connected)
        ));
    }
    check(&state, &pool).map_err(|m| failure(seed, &state, m))?;
    let s = state.lock().expect("world state");
    if !pool.clients().is_empty() {
        drop(s);
        return Err(failure(
            seed,
            &state,
            "inv 7: clients left after close_all".into(),
        ));
    }
    if !s.directory_open.is_empty() || s.connected_events != s.disconnected_events {
        let message = format!(
            "inv 3/7: after close_all {} directory connections open, {} connected vs {} disconnected events",
            s.directory_open.len(),
            s.connected_events,
            s.disconnected_events
        );
        drop(s);
        return Err(failure(seed, &state, message));
    }
    Ok(Trace(s.trace.clone()))
}

/// Advances the simulation to `until`, keeping the world's clock in step.
fn advance_world(sim: &SimRuntime, state: &Arc<Mutex<State>>, until: Instant) {
    loop {
        let next = sim.next_timer().filter(|t| *t <= until).unwrap_or(until);
        state.lock().expect("world state").now = next;
        sim.advance_to(next);
        if next >= until {
            break;
        }
    }
}

/// Invariants checked after every step.
fn check<H: dirpool::Handshake>(
    state: &Arc<Mutex<State>>,
    pool: &DirectoryPool<H>,
) -> Result<(), String> {
    let s = state.lock().expect("world state");
    if let Some(v) = s.violations.first() {
        return Err(v.clone());
    }
    if s.all_down_due {
        return Err("AllDown did not follow the loss of the last connection".into());
    }
    // Registered clients agree with the events (invariant 1).
    for (node, _) in pool.clients() {
        if s.registered.get(&node) != Some(&true) {
            return Err(format!(
                "inv 1: {node} registered without a connected event"
            ));
        }
    }
    // A client leaves the registry when its close starts and is reported
    // disconnected when the close ends: in between, events count more.
    let by_events = s.registered.values().filter(|v| **v).count();
    if by_events < pool.connected_count() {
        return Err(format!(
            "inv 1: {} connected by events, {} registered",
            by_events,
            pool.connected_count()
        ));
    }
    Ok(())
}

fn failure(seed: u64, state: &Arc<Mutex<State>>, message: String) -> Failure {
    let trace = Trace(state.lock().expect("world state").trace.clone());
    Failure {
        kind: Kind::Simulation,
        seed,
        message,
        trace,
    }
}

/// The JoinMarket handshake, with the world deciding how each client's
/// close will go: clean, failing, or hanging forever.
struct SimHandshake {
    inner: JoinMarketHandshake,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Clone, Copy)]
enum CloseFate {
    Clean,
    Fail,
    Hang,
}

struct SimClient {
    inner: dirpool::joinmarket::DirectoryConnection,
    close_fate: CloseFate,
}

impl dirpool::Handshake for SimHandshake {
    type Client = SimClient;

    async fn handshake(
        &self,
        context: &dirpool::HandshakeContext,
        server: &ServerAddr,
        stream: dirpool::BoxedStream,
    ) -> Result<SimClient, dirpool::HandshakeError> {
        let inner = self.inner.handshake(context, server, stream).await?;
        let close = match self.state.lock().expect("world state").rng.u8(..20) {
            0 => CloseFate::Hang,
            1 => CloseFate::Fail,
            _ => CloseFate::Clean,
        };
        Ok(SimClient {
            inner,
            close_fate: close,
        })
    }
}

impl dirpool::Client for SimClient {
    fn closed(&self) -> impl std::future::Future<Output = dirpool_core::LinkLoss> + Send {
        self.inner.closed()
    }

    async fn close(&self) -> Result<(), dirpool::CloseError> {
        match self.close_fate {
            CloseFate::Clean => self.inner.close().await,
            CloseFate::Fail => {
                let _ = self.inner.close().await;
                Err(dirpool::CloseError::Io(std::io::Error::other(
                    "simulated close failure",
                )))
            }
            CloseFate::Hang => futures::future::pending().await,
        }
    }

    fn probe(&self) -> dirpool::ProbeStatus {
        self.inner.probe()
    }
}
