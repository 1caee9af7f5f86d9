//! The seeded core simulation: the model checker of
//! `dirpool_core_kit::model` (a driver playing random commands, results,
//! losses, close results, time steps and wrong inputs against `PoolState`,
//! every invariant of `ARCHITECTURE.md` checked after every step), run from
//! seeds.
//!
//! A seed names a byte string, and the `pool_model` fuzz target runs the same
//! checker on a fuzzer's bytes with the same alphabet
//! (`dirpool_core_kit::Step`), so each finding moves to the other side:
//! `DIRPOOL_CORE_SEED=N DIRPOOL_CORE_SAVE=FILE` (an absolute path) writes seed N as a fuzz
//! input (put it in `fuzz/regressions/pool_model/` and the corpus replay
//! keeps it), and `DIRPOOL_CORE_INPUT=FILE` replays a fuzzer's file here with
//! its whole trace.
//!
//! `DIRPOOL_CORE_SEEDS=N` sets the number of seeds (default 2,000);
//! `DIRPOOL_CORE_SEED=N` replays exactly one seed. A failure names its seed
//! and shows the last steps of the trace.
//!
//! The bugs these runs found are fixed; each keeps a deterministic
//! regression test at the end of this file.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dirpool_core::{
    AttemptId, Backoff, Command, DialFailure, Entropy, Input, IsolationToken, Notification,
    OperationEnd, Output, PoolConfig, PoolState, RetryPolicy, ServerId, ServerState, SocksReply,
};
use dirpool_core_kit::{Choices, RunReport, check_pool};

const DEFAULT_SEEDS: u64 = 2_000;

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    match text.trim().parse() {
        Ok(v) => Some(v),
        Err(e) => panic!("{name}={text:?}: {e}"),
    }
}

/// Runs one seed; on failure, panics naming the seed and how to replay it.
fn run_seed(seed: u64, full_trace: bool) -> RunReport {
    let mut choices = Choices::from_seed(seed);
    let outcome = check_pool(&mut choices, full_trace);
    if let Some(path) = std::env::var_os("DIRPOOL_CORE_SAVE") {
        std::fs::write(&path, choices.consumed())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.to_string_lossy()));
    }
    outcome.unwrap_or_else(|failure| {
        panic!(
            "seed {seed} failed: {failure}\nreplay: DIRPOOL_CORE_SEED={seed} cargo test -p dirpool-core-kit --test random_ops\n\
             as a fuzz input: DIRPOOL_CORE_SEED={seed} DIRPOOL_CORE_SAVE=$PWD/fuzz/regressions/pool_model/seed-{seed} cargo test -p dirpool-core-kit --test random_ops"
        )
    })
}

#[test]
#[allow(clippy::print_stderr, reason = "DIRPOOL_CORE_INPUT asks for the trace")]
fn random_operations_keep_every_invariant() {
    if let Some(path) = std::env::var_os("DIRPOOL_CORE_INPUT") {
        let data = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.to_string_lossy()));
        match check_pool(&mut Choices::from_bytes(&data), true) {
            Ok(report) => {
                eprintln!("{}", report.trace.unwrap_or_default());
                return;
            }
            Err(failure) => panic!("{} failed: {failure}", path.to_string_lossy()),
        }
    }
    let seeds: Vec<u64> = match env_u64("DIRPOOL_CORE_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("DIRPOOL_CORE_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    let mut total: BTreeMap<&'static str, u64> = BTreeMap::new();
    for &seed in &seeds {
        for (what, n) in run_seed(seed, false).counts {
            *total.entry(what).or_insert(0) += n;
        }
    }
    if seeds.len() >= 500 {
        // The runs must actually reach the interesting corners.
        for what in [
            "runs",
            "connections",
            "dial timeouts",
            "stray closes",
            "close timeouts",
            "proxy marked down",
            "proxy recovered",
            "not-ready reports",
            "not-ready reports while held",
            "ready reports",
            "commanded dials while Tor says wait",
            "liveness after Tor said wait",
            "maintenance gave up",
            "all down",
            "recovered",
            "retry connected",
            "retry deadline reached",
            "operations cancelled",
            "wrong inputs",
            "backwards timeouts",
            "ignored losses during close",
            "liveness runs",
            "liveness with the proxy down",
            "liveness with stuck dials or closes",
            "stable links lost",
            "clock drifts before handle_timeout",
            "duplicate entries",
            "malformed entries",
            "configs without a valid server",
        ] {
            assert!(
                total.get(what).copied().unwrap_or(0) > 0,
                "no run saw {what:?}: {total:?}"
            );
        }
    }
}

#[test]
fn a_seed_replays_exactly() {
    let mut traces = Vec::new();
    for seed in [1, 7, 1_000] {
        let first = run_seed(seed, true).trace.unwrap_or_default();
        let second = run_seed(seed, true).trace.unwrap_or_default();
        assert!(first.lines().count() > 100, "trace too short: {first}");
        assert_eq!(first, second, "seed {seed} did not replay identically");
        traces.push(first);
    }
    assert_ne!(traces[0], traces[1], "different seeds, different runs");
}

#[test]
fn a_seed_and_the_bytes_it_consumed_are_the_same_run() {
    for seed in [5, 77] {
        let mut seeded = Choices::from_seed(seed);
        let by_seed = check_pool(&mut seeded, true).expect("seed passes");
        let mut replay = Choices::from_bytes(seeded.consumed());
        let by_bytes = check_pool(&mut replay, true).expect("its bytes pass");
        assert_eq!(by_seed.trace, by_bytes.trace, "seed {seed}");
        assert!(replay.is_exhausted(), "the replay used every byte");
    }
}

// ---- reproductions of the bugs the random runs found ------------------------------

fn repro_pool(servers: &[&str], configure: impl FnOnce(&mut PoolConfig)) -> PoolState {
    let mut config = PoolConfig::new(servers.iter().copied());
    configure(&mut config);
    let entropy = Entropy {
        isolation_token: IsolationToken::from_bytes([7; 16]),
        jitter_seed: 1,
    };
    PoolState::new(config, entropy).expect("valid config")
}

fn drain_all(pool: &mut PoolState) -> Vec<Output> {
    std::iter::from_fn(|| pool.poll_output()).collect()
}

fn dial_of(outputs: &[Output], server: ServerId) -> AttemptId {
    outputs
        .iter()
        .find_map(|o| match o {
            Output::Dial(d) if d.server == server => Some(d.attempt),
            _ => None,
        })
        .expect("a dial of the server")
}

/// Regression (invariant 6), found by the random runs at seed 222, step 146:
/// dials timed out inside a `handle_timeout` that also passed the probe
/// instant, and reported `retry_at` one second before `now`.
///
/// While the proxy is marked down, a dial that times out inside
/// `handle_timeout(now)` reports `retry_at = proxy.probe_at`; if the probe
/// timer is itself due at or before `now` but has not been popped yet (the
/// driver woke late), that instant is in the past. The probe then fires in the
/// same call, at `now`, so the reported time is simply wrong.
#[test]
fn a_timed_out_dial_never_reports_a_retry_at_in_the_past() {
    let mut pool = repro_pool(&["127.0.0.1:5222", "127.0.0.2:5222"], |c| {
        c.connection_timeout = Duration::from_secs(2);
        c.maintenance.backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(5), 2.0);
    });
    let (a, b) = (
        pool.find_server("127.0.0.1").expect("a"),
        pool.find_server("127.0.0.2").expect("b"),
    );
    let t0 = Instant::now();
    pool.handle_command(t0, Command::StartMaintenance)
        .expect("a valid command");
    let out = drain_all(&mut pool);
    let (dial_a, _dial_b) = (dial_of(&out, a), dial_of(&out, b));
    // A meets a dead proxy: the pool waits for a probe at t0 + 5 s.
    pool.handle_input(
        t0,
        Input::DialFinished {
            attempt: dial_a,
            result: Err(DialFailure::ProxyUnreachable),
            detail: None,
        },
    )
    .expect("accepted");
    drain_all(&mut pool);
    assert_eq!(pool.poll_timeout(), Some(t0 + Duration::from_secs(2)));
    // The driver wakes late, at t0 + 10 s: B's dial timed out at 2 s, the probe
    // was due at 5 s.
    let now = t0 + Duration::from_secs(10);
    pool.handle_timeout(now);
    let retry_at = drain_all(&mut pool)
        .into_iter()
        .find_map(|o| match o {
            Output::Notify(Notification::DialFailed {
                server, retry_at, ..
            }) if server == b => Some(retry_at),
            _ => None,
        })
        .expect("B timed out");
    // Today: Some(t0 + 5 s), five seconds before `now`.
    if let Some(at) = retry_at {
        assert!(
            at >= now,
            "retry_at is {:?} before now",
            now.duration_since(at)
        );
    }
}

/// Regression, found by the random runs once the checker asked that a
/// server shown as waiting has something that will redial it: seed 2
/// (`WaitingRetry`, step 195: the retry operation ended `Connected` after
/// `stop_maintenance`) and seed 18 (`WaitingForProxy`, step 250: it ended
/// `DeadlineReached`).
///
/// `connect_all_with_retry` schedules redials on its own backoff. When it
/// ends (a server connected, or the deadline) while maintenance is off,
/// those redials are dead (the timer finds no backoff and does nothing), but
/// `status()` still shows the servers as `WaitingRetry` with `next_retry_at`
/// (or `WaitingForProxy`). A status display promises a retry that never
/// comes. `stop_maintenance` and `close_all` do clear them. The stale
/// `retry_at` also makes a later `start_maintenance` skip the server (it has
/// "something scheduled"), so the server is redialed only when that old timer
/// fires, up to the retry policy's `max` later, instead of at once.
#[test]
fn status_never_shows_a_retry_that_will_not_happen() {
    let mut pool = repro_pool(&["127.0.0.1:5222", "127.0.0.2:5222"], |_| {});
    let (a, b) = (
        pool.find_server("127.0.0.1").expect("a"),
        pool.find_server("127.0.0.2").expect("b"),
    );
    let t0 = Instant::now();
    pool.handle_command(
        t0,
        Command::ConnectAllWithRetry(RetryPolicy::new(Duration::from_secs(60))),
    )
    .map(|op| op.expect("an operation"))
    .expect("valid");
    let out = drain_all(&mut pool);
    let (dial_a, dial_b) = (dial_of(&out, a), dial_of(&out, b));
    pool.handle_input(
        t0,
        Input::DialFinished {
            attempt: dial_a,
            result: Err(DialFailure::Socks(SocksReply::HostUnreachable)),
            detail: None,
        },
    )
    .expect("accepted");
    drain_all(&mut pool);
    // B connects: the operation is over, and maintenance is off.
    pool.handle_input(
        t0,
        Input::DialFinished {
            attempt: dial_b,
            result: Ok(()),
            detail: None,
        },
    )
    .expect("accepted");
    let out = drain_all(&mut pool);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Notify(Notification::OperationFinished(r)) if r.end == OperationEnd::Connected
    )));
    let status = pool.status(a).expect("status");
    if status.state == ServerState::WaitingRetry {
        // Then the retry must happen when promised.
        let at = status.next_retry_at.expect("a retry time");
        pool.handle_timeout(at);
        let dialed = drain_all(&mut pool)
            .iter()
            .any(|o| matches!(o, Output::Dial(d) if d.server == a));
        assert!(
            dialed,
            "status said WaitingRetry at +{:?}, but nothing was dialed then",
            at.duration_since(t0)
        );
    }
}
