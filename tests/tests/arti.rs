//! Through an in-process Tor client (arti, dirpool's feature `arti`) on the
//! private Tor network of `tests/tor/private-network`: the same scenarios
//! as tests/tests/tor.rs (one piece of code each, in `common::onion`) with
//! no tor daemon on the client side.
//!
//! The network starts once for this test binary; one arti client, on a
//! tokio runtime of its own, serves the tests (each pool runs on tokio and
//! on smol, but for the two slowest scenarios: smol only); the tests take
//! turns ([`turn`]) so that what the onion service's tor shows belongs to
//! one test. `DIRPOOL_TEST_LOG=dirpool=debug,tor_hsclient=debug,arti::common=info,warn`
//! (tracing's target syntax) logs the run to stderr.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use common::onion::{
    LIMIT, ONION, OnionPool, a_restarted_service_is_reconnected,
    a_silent_path_is_lost_to_the_keepalive, blocking,
    both_onions_connect_and_the_unpublished_one_fails, connect_all_with_retry, fresh_entropy,
    onion_config,
};
use common::{next_matching_seen, on_both_runtimes_within, run_on_smol_within};
use dirpool::arti::{ArtiClient, ArtiError, ErrorKind, TorReadiness};
use dirpool::joinmarket::{JmConfig, JoinMarketHandshake, Network, NickIdentity};
use dirpool::{Config, DialError, DirectoryPool, PoolEvent, Runtime};
use dirpool_core::{DialFailure, FailureScope, IsolationScope, KeepalivePolicy};
use dirpool_tests::tor::{TorClient, TorNetwork};

/// One test at a time.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// arti's tokio runtime and the client bootstrapped on it, once per test
/// binary.
struct Arti {
    runtime: tokio::runtime::Runtime,
    client: ArtiClient,
    bootstrap: Duration,
}

fn arti_config(net: &TorNetwork, dir: &Path) -> dirpool::arti::TorClientConfig {
    ArtiClient::config_from_toml(&net.arti_toml(dir)).expect("the network's arti config")
}

/// Logs to stderr what `DIRPOOL_TEST_LOG` selects (tracing's target
/// syntax, e.g. `dirpool=debug,tor_proto=debug,info`), for a run that must
/// be understood afterwards; nothing without it.
fn log_if_asked() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let Ok(selection) = std::env::var("DIRPOOL_TEST_LOG") else {
        return;
    };
    let targets: tracing_subscriber::filter::Targets = selection
        .parse()
        .expect("DIRPOOL_TEST_LOG: tracing targets");
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_thread_names(true)
                .with_writer(std::io::stderr),
        )
        .with(targets);
    // Another test of this binary may have set it first.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

fn arti() -> &'static Arti {
    static ARTI: OnceLock<Arti> = OnceLock::new();
    ARTI.get_or_init(|| {
        log_if_asked();
        let net = TorNetwork::shared();
        let config = arti_config(net, &net.arti_dir("shared"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let started = Instant::now();
        let client = runtime
            .block_on(ArtiClient::bootstrap(config, ONION))
            .expect("arti bootstraps on the private network");
        Arti {
            runtime,
            client,
            bootstrap: started.elapsed(),
        }
    })
}

/// A JoinMarket pool (random nick) through `tor` on `rt`.
fn arti_pool(config: Config, tor: &ArtiClient, rt: &Arc<dyn Runtime>) -> OnionPool {
    let handshake = JoinMarketHandshake::new(JmConfig::new(
        NickIdentity::random().unwrap(),
        Network::Regtest,
    ))
    .unwrap();
    DirectoryPool::builder(config, handshake)
        .entropy(fresh_entropy().0)
        .arti(tor.clone())
        .spawn(Arc::clone(rt))
        .unwrap()
}

#[test]
fn arti_reaches_both_onions_and_types_the_unpublished_one() {
    let net = TorNetwork::shared();
    let tor = &arti().client;
    let _turn = turn();
    assert_eq!(tor.readiness(), TorReadiness::Ready);
    on_both_runtimes_within(LIMIT, |rt| async move {
        let (alpha, beta, nobody) = (net.onion("alpha"), net.onion("beta"), net.unpublished());
        let config = onion_config(&[&alpha, &beta, &nobody], IsolationScope::PerCategory);
        let pool = arti_pool(config, tor, &rt);
        let error = both_onions_connect_and_the_unpublished_one_fails(net, &rt, pool).await;
        // arti's error kind, classified as Tor's extended SOCKS reply 0xF0.
        assert!(
            matches!(
                &*error,
                DialError::Tor {
                    kind: ErrorKind::OnionServiceNotFound,
                    ..
                }
            ),
            "{error:?}"
        );
    });
}

/// The rendezvous circuits the onion-service tor holds (`GETINFO
/// circuit-status`, purpose `HS_SERVICE_REND`): one per client circuit
/// that reached one of its services.
fn rendezvous_circuits(net: &TorNetwork) -> Vec<String> {
    let mut control = net.service_control().unwrap();
    control
        .circuits()
        .unwrap()
        .into_iter()
        .filter(|c| c.purpose.as_deref() == Some("HS_SERVICE_REND"))
        .map(|c| c.id)
        .collect()
}

#[test]
fn each_isolation_scope_is_a_circuit_of_its_own_at_the_service() {
    let net = TorNetwork::shared();
    let tor = &arti().client;
    let _turn = turn();
    on_both_runtimes_within(LIMIT, |rt| async move {
        let beta = net.onion("beta");
        let circuits = || blocking(move || rendezvous_circuits(net));

        // Each connect retries as maintenance would: on a loaded machine
        // one try through arti can end in one of arti's own timeouts (e.g.
        // its stream connect timeout, 10 s, where a tor daemon gives an
        // onion stream its SocksTimeout, 2 min; seen in CI as 0 of 1
        // connected, TtlExpired, which only arti's timeout kinds give).
        // A failed try renews the scope's token, so it may leave one more
        // rendezvous circuit at the service: each failure allows one more.

        // Isolation on: each pool's credentials carry its own random
        // token, so each is a scope of its own: a second rendezvous.
        let first = arti_pool(onion_config(&[&beta], IsolationScope::PerServer), tor, &rt);
        connect_all_with_retry(&first).await;
        let before = circuits().await;
        let second = arti_pool(onion_config(&[&beta], IsolationScope::PerServer), tor, &rt);
        let failed = connect_all_with_retry(&second).await;
        let after = circuits().await;
        let new: Vec<_> = after.iter().filter(|c| !before.contains(c)).collect();
        assert!(
            (1..=1 + failed.len()).contains(&new.len()),
            "another scope, another circuit: {before:?} -> {after:?}; failed tries: {failed:#?}"
        );

        // Isolation off: no token, both pools' streams share one circuit.
        let third = arti_pool(onion_config(&[&beta], IsolationScope::Off), tor, &rt);
        connect_all_with_retry(&third).await;
        let before = circuits().await;
        let fourth = arti_pool(onion_config(&[&beta], IsolationScope::Off), tor, &rt);
        let failed = connect_all_with_retry(&fourth).await;
        let after = circuits().await;
        let new: Vec<_> = after.iter().filter(|c| !before.contains(c)).collect();
        assert!(
            new.len() <= failed.len(),
            "no isolation: the same circuit: {before:?} -> {after:?}; failed tries: {failed:#?}"
        );
        for pool in [first, second, third, fourth] {
            pool.close_all().await.unwrap();
        }
    });
}

#[test]
fn a_stopped_and_restarted_onion_service_is_reconnected_through_arti() {
    let net = TorNetwork::shared();
    let tor = &arti().client;
    let _turn = turn();
    // On smol only (the pool on smol, arti on its tokio runtime): the
    // slowest scenarios run once, for CI's time budget. When arti never
    // hears of the kill, only the keepalive finds it: its loss bound more.
    let limit = LIMIT + KeepalivePolicy::default().loss_bound();
    run_on_smol_within(limit, |rt| async move {
        let onion = net.onion("gamma");
        let pool = arti_pool(
            onion_config(&[&onion], IsolationScope::PerCategory),
            tor,
            &rt,
        );
        // No NEWNYM for arti: the dials that failed while the service was
        // down renewed the scope's isolation token, and with it arti's
        // state for the onion.
        let nothing = || async {};
        // A dial begun while the service was down can wait for its
        // rendezvous until the connection timeout (seen: 60 s); the next,
        // on a renewed token, connects: two timeouts and the backoff.
        let reconnect = 2 * ONION + Duration::from_secs(30);
        a_restarted_service_is_reconnected(net, &rt, pool, "gamma", nothing, reconnect).await;
    });
}

#[test]
fn a_path_cut_by_stopping_the_service_tor_is_lost_to_the_keepalive() {
    let net = TorNetwork::shared();
    let tor = &arti().client;
    let _turn = turn();
    // On smol only, as the restart above.
    run_on_smol_within(LIMIT, |rt| async move {
        // zeta: a modelled joinmarket-ng directory that answers PINGs
        // (and never PINGs itself within a test).
        let onion = net.onion("zeta");
        let keepalive = KeepalivePolicy::new(Duration::from_secs(15), Duration::from_secs(2));
        let mut config = onion_config(&[&onion], IsolationScope::PerCategory);
        config.pool.keepalive = keepalive;
        let pool = arti_pool(config, tor, &rt);
        let service = move || {
            net.service_control()?
                .getinfo("process/pid")?
                .first()
                .and_then(|p| p.parse::<u32>().ok())
                .ok_or_else(|| std::io::Error::other("no pid"))
        };
        let what = "service tor SIGSTOP (arti)";
        a_silent_path_is_lost_to_the_keepalive(&rt, pool, keepalive, service, what).await;
        // The resumed tor answers its control port before the next test.
        blocking(move || net.service_control().map(drop))
            .await
            .unwrap();
    });
}

#[test]
fn tor_that_cannot_bootstrap_is_the_proxys_fault_never_a_directorys() {
    let net = TorNetwork::shared();
    let arti = arti();
    let _turn = turn();
    // A client whose only directory cache accepts TCP and never answers
    // (a filtered network): it never bootstraps.
    let dir = net.arti_dir("unbootstrapped");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = silent.local_addr().unwrap().port();
    let text = net
        .arti_toml(&dir)
        .lines()
        .map(|line| match line.find("orports = [\"127.0.0.1:") {
            Some(at) => format!("{}orports = [\"127.0.0.1:{closed}\"] }},", &line[..at]),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let config = ArtiClient::config_from_toml(&text).unwrap();
    // Bootstrapping it ends at its deadline, typed.
    let within = Duration::from_secs(2);
    let timed_out = arti
        .runtime
        .block_on(ArtiClient::bootstrap(config.clone(), within));
    assert!(
        matches!(timed_out, Err(ArtiError::BootstrapTimedOut { within: w }) if w == within),
        "{:?}",
        timed_out.err()
    );
    let stuck = {
        let _enter = arti.runtime.enter();
        let client = dirpool::arti::arti_client::TorClient::builder()
            .config(config)
            .create_unbootstrapped()
            .unwrap();
        ArtiClient::new(client)
    };
    assert_ne!(stuck.readiness(), TorReadiness::Ready);
    on_both_runtimes_within(LIMIT, |rt| {
        let stuck = stuck.clone();
        async move {
            let alpha = net.onion("alpha");
            let mut config = onion_config(&[&alpha], IsolationScope::PerCategory);
            config.proxy_timeout = Duration::from_secs(1);
            let pool = arti_pool(config, &stuck, &rt);
            let mut events = pool.events();
            pool.start_maintenance().unwrap();
            let mut seen = Vec::new();
            let unreachable = next_matching_seen(&rt, &mut events, ONION, &mut seen, |e| {
                matches!(e, PoolEvent::ProxyUnreachable).then_some(())
            })
            .await;
            assert!(unreachable.is_some(), "one pool-wide event: {seen:#?}");
            // Maintenance waits for Tor to report ready; a command still
            // dials, and waits `proxy_timeout` for the bootstrap.
            assert_eq!(pool.connect_all_parallel().await.unwrap(), 0);
            seen.extend(std::iter::from_fn(|| events.try_next().ok()));
            let mut failures = 0;
            for event in &seen {
                if let PoolEvent::DialFailed { error, .. } = event {
                    failures += 1;
                    assert_eq!(error.failure().scope(), FailureScope::Proxy, "{error:?}");
                    assert!(
                        matches!(
                            **error,
                            DialError::TorNotReady { .. } | DialError::Tor { .. }
                        ),
                        "{error:?}"
                    );
                }
            }
            assert!(failures >= 1, "{seen:#?}");
            let status = pool.status().await.unwrap();
            assert_eq!(status[0].consecutive_failures, 0, "{status:?}");
            assert_eq!(
                status[0].last_failure,
                Some(DialFailure::ProxyUnreachable),
                "{status:?}"
            );
            pool.close_all().await.unwrap();
        }
    });
    drop(silent);
}

/// `key: value` of the probe's output.
fn field<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(str::trim)
}

/// kB in `VmRSS:`/`VmHWM:`'s "123 kB" form.
fn kilobytes(text: &str) -> u64 {
    text.trim_end_matches("kB").trim().parse().expect("kB")
}

/// The README's figures: the probe through arti (bootstrapped from empty
/// state) against the probe through the network's client tor, both
/// reaching `alpha`: bootstrap, time to the first directory, memory.
#[test]
#[allow(clippy::print_stdout)]
fn the_probe_reaches_the_onions_through_arti_and_the_figures_compare() {
    let net = TorNetwork::shared();
    let _turn = turn();
    let dir = net.arti_dir("probe");
    let config = dir.join("arti.toml");
    std::fs::write(&config, net.arti_toml(&dir)).unwrap();
    let alpha = net.onion("alpha").node_id().to_owned();
    let beta = net.onion("beta").node_id().to_owned();
    let probe = |route: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_probe"))
            .args(route)
            .args(["--rss", "--network", "regtest", "--timeout", "60"])
            .args([&alpha, &beta])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(text.contains("reached 2 of 2 directories"), "{text}");
        text
    };
    let first = |text: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("handshake:"))
            .map(|ms| {
                ms.trim()
                    .trim_end_matches("ms")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
            })
            .min()
            .expect("a handshake time")
    };

    let with_arti = probe(&["--arti-config", config.to_str().unwrap()]);
    let bootstrap = field(&with_arti, "tor (arti): bootstrapped in").expect("bootstrap time");
    let arti_rss = kilobytes(field(&with_arti, "peak RSS:").expect("RSS"));

    let socks = net.socks(TorClient::First).to_string();
    let with_tor = probe(&["--socks", &socks]);
    let probe_rss = kilobytes(field(&with_tor, "peak RSS:").expect("RSS"));
    let pid = net.client_pid(TorClient::First).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let tor_rss = kilobytes(field(&status, "VmRSS:").expect("tor's RSS"));

    println!(
        "arti figures: arti bootstrap from empty state {bootstrap} (in-process client of \
         this test binary: {:.0?}); first directory: arti {} ms, tor daemon {} ms; \
         RSS: dirpool+arti {} MB (peak), dirpool {} MB (peak) + tor daemon {} MB = {} MB; \
         network up in {:.1?}",
        arti().bootstrap,
        first(&with_arti),
        first(&with_tor),
        arti_rss / 1024,
        probe_rss / 1024,
        tor_rss / 1024,
        (probe_rss + tor_rss) / 1024,
        net.startup(),
    );
}

/// Tor's own state drives the pool's (issue 19): a pool on an arti client
/// that has not bootstrapped starts with the proxy down (Tor says it is
/// bootstrapping, so its redials wait), bootstraps the client itself, as a
/// first connect would (nobody else does here), and connects its directory
/// with no command once Tor reports ready.
#[test]
fn a_pool_on_an_unbootstrapped_arti_bootstraps_it_and_connects() {
    let net = TorNetwork::shared();
    let arti = arti();
    let _turn = turn();
    let config = arti_config(net, &net.arti_dir("late"));
    // Made inside arti's runtime: each connect runs there.
    let (late, tor) = {
        let _enter = arti.runtime.enter();
        let late = dirpool::arti::arti_client::TorClient::builder()
            .config(config)
            .create_unbootstrapped()
            .unwrap();
        let tor = ArtiClient::new(Arc::clone(&late));
        (late, tor)
    };
    assert_ne!(tor.readiness(), TorReadiness::Ready);
    // On smol only (the pool on smol, arti on its tokio runtime).
    run_on_smol_within(LIMIT, |rt| {
        let tor = tor.clone();
        async move {
            let alpha = net.onion("alpha");
            let handshakes = || net.directory("alpha").handshakes().len();
            let before = handshakes();
            let pool = arti_pool(
                onion_config(&[&alpha], IsolationScope::PerCategory),
                &tor,
                &rt,
            );
            let mut events = pool.events();
            pool.start_maintenance().unwrap();
            let mut seen = Vec::new();
            let connected = next_matching_seen(&rt, &mut events, ONION, &mut seen, |e| {
                matches!(e, PoolEvent::Connected { .. }).then_some(())
            })
            .await;
            assert!(connected.is_some(), "{seen:#?}");
            let count = |what: fn(&PoolEvent) -> bool| seen.iter().filter(|e| what(e)).count();
            assert_eq!(
                count(|e| matches!(e, PoolEvent::ProxyUnreachable)),
                1,
                "{seen:#?}"
            );
            assert_eq!(
                count(|e| matches!(e, PoolEvent::ProxyRecovered)),
                1,
                "{seen:#?}"
            );
            assert_eq!(handshakes(), before + 1);
            assert_eq!(tor.readiness(), TorReadiness::Ready);
            pool.close_all().await.unwrap();
        }
    });
    drop(late);
}
