//! Through an in-process Tor client (arti, dirpool's feature `arti`) on the
//! private Tor network of `tests/tor/private-network`: the same scenarios
//! as tests/tests/tor.rs with no tor daemon on the client side.
//!
//! The network starts once for this test binary; one arti client, on a
//! tokio runtime of its own, serves the tests (each pool runs on tokio and
//! on smol, but for the two slowest scenarios: smol only); the tests take turns ([`turn`]) so that what the onion
//! service's tor shows belongs to one test.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use common::{
    expect_keepalive_loss, next_matching, on_both_runtimes_within, run_on_smol_within, until_event,
    wait_for,
};
use dirpool::arti::{ArtiClient, ErrorKind, TorReadiness};
use dirpool::joinmarket::{JmConfig, JoinMarketHandshake, Network, NickIdentity};
use dirpool::{Config, DialError, DirectoryPool, PoolEvent, Runtime};
use dirpool_core::{
    Backoff, DialFailure, Entropy, FailureScope, IsolationScope, IsolationToken, KeepalivePolicy,
    RetryPolicy, ServerAddr, ServerState, SocksReply,
};
use dirpool_tests::tor::{Stopped, TorClient, TorNetwork};

/// Bound of each scenario, per runtime.
const LIMIT: Duration = Duration::from_secs(180);
/// How long an onion connection may take (descriptor, introduction, rendezvous).
const ONION: Duration = Duration::from_secs(60);

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

fn arti() -> &'static Arti {
    static ARTI: OnceLock<Arti> = OnceLock::new();
    ARTI.get_or_init(|| {
        let net = TorNetwork::shared();
        let config = arti_config(net, &net.arti_dir("shared"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let started = Instant::now();
        let client = runtime
            .block_on(ArtiClient::bootstrap(config))
            .expect("arti bootstraps on the private network");
        Arti {
            runtime,
            client,
            bootstrap: started.elapsed(),
        }
    })
}

fn fresh_entropy() -> Entropy {
    Entropy {
        isolation_token: IsolationToken::from_bytes(std::array::from_fn(|_| fastrand::u8(..))),
        jitter_seed: fastrand::u64(..),
    }
}

fn jm_config(servers: &[&ServerAddr], isolation: IsolationScope) -> Config {
    let mut config = Config::new(servers.iter().map(|a| a.node_id().to_owned()));
    config.pool.isolation = isolation;
    config.pool.connection_timeout = ONION;
    config.pool.maintenance.backoff =
        Backoff::new(Duration::from_millis(250), Duration::from_secs(2), 2.0);
    config
}

/// A JoinMarket pool (random nick) through `tor` on `rt`.
fn arti_pool(
    config: Config,
    tor: &ArtiClient,
    rt: &Arc<dyn Runtime>,
) -> DirectoryPool<JoinMarketHandshake> {
    let handshake = JoinMarketHandshake::new(JmConfig::new(
        NickIdentity::random().unwrap(),
        Network::Regtest,
    ))
    .unwrap();
    DirectoryPool::builder(config, handshake)
        .entropy(fresh_entropy())
        .arti(tor.clone())
        .spawn(Arc::clone(rt))
        .unwrap()
}

/// Runs blocking `f` (a control-port exchange, a process) off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    smol::unblock(f).await
}

#[test]
#[ignore = "quarantined (issue 19): on the private Tor network these failed in clean-clone CI runs under load \
            (a restart not seen, an isolated connect not made) while passing alone; \
            run them with `-- --ignored` until the cause is found"]
fn arti_reaches_both_onions_and_types_the_unpublished_one() {
    let net = TorNetwork::shared();
    let tor = &arti().client;
    let _turn = turn();
    assert_eq!(tor.readiness(), TorReadiness::Ready);
    on_both_runtimes_within(LIMIT, |rt| async move {
        let (alpha, beta, nobody) = (net.onion("alpha"), net.onion("beta"), net.unpublished());
        let before = net.directory("alpha").handshakes().len();
        let config = jm_config(&[&alpha, &beta, &nobody], IsolationScope::PerCategory);
        let pool = arti_pool(config, tor, &rt);
        let mut events = pool.events();
        let mut policy = RetryPolicy::new(ONION);
        policy.backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(2), 2.0);
        assert!(pool.connect_all_with_retry(policy).await.unwrap() >= 1);
        assert!(
            until_event(&rt, &mut events, ONION, || pool.connected_count() == 2).await,
            "both live onion directories connect: {:?}",
            pool.status().await.unwrap()
        );
        assert!(pool.client(alpha.node_id()).is_some());
        assert!(pool.client(beta.node_id()).is_some());
        assert_eq!(net.directory("alpha").handshakes().len(), before + 1);

        let error = next_matching(&rt, &mut events, ONION, |e| match e {
            PoolEvent::DialFailed { node_id, error, .. } if node_id == nobody.node_id() => {
                Some(Arc::clone(error))
            }
            _ => None,
        })
        .await
        .expect("the unpublished onion fails");
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
        let failure = DialFailure::Socks(SocksReply::OnionDescriptorNotFound);
        assert_eq!(error.failure(), failure);
        let status = pool.status().await.unwrap();
        let unpublished = status
            .iter()
            .find(|s| s.addr.node_id() == nobody.node_id())
            .unwrap();
        assert!(!matches!(unpublished.state, ServerState::Connected));
        assert_eq!(unpublished.last_failure, Some(failure));
        pool.close_all().await.unwrap();
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
#[ignore = "quarantined (issue 19): on the private Tor network these failed in clean-clone CI runs under load \
            (a restart not seen, an isolated connect not made) while passing alone; \
            run them with `-- --ignored` until the cause is found"]
fn each_isolation_scope_is_a_circuit_of_its_own_at_the_service() {
    let net = TorNetwork::shared();
    let tor = &arti().client;
    let _turn = turn();
    on_both_runtimes_within(LIMIT, |rt| async move {
        let beta = net.onion("beta");
        let circuits = || blocking(move || rendezvous_circuits(net));
        let connected = |pool: &DirectoryPool<JoinMarketHandshake>| {
            let pool = pool.clone();
            async move {
                let reached = pool.connect_all_parallel().await.unwrap();
                assert_eq!(reached, 1, "{:#?}", pool.status().await.unwrap());
            }
        };

        // Isolation on: each pool's credentials carry its own random
        // token, so each is a scope of its own: a second rendezvous.
        let first = arti_pool(jm_config(&[&beta], IsolationScope::PerServer), tor, &rt);
        connected(&first).await;
        let before = circuits().await;
        let second = arti_pool(jm_config(&[&beta], IsolationScope::PerServer), tor, &rt);
        connected(&second).await;
        let after = circuits().await;
        let new: Vec<_> = after.iter().filter(|c| !before.contains(c)).collect();
        assert_eq!(
            new.len(),
            1,
            "another scope, another circuit: {before:?} -> {after:?}"
        );

        // Isolation off: no token, both pools' streams share one circuit.
        let third = arti_pool(jm_config(&[&beta], IsolationScope::Off), tor, &rt);
        connected(&third).await;
        let before = circuits().await;
        let fourth = arti_pool(jm_config(&[&beta], IsolationScope::Off), tor, &rt);
        connected(&fourth).await;
        let after = circuits().await;
        assert_eq!(before, after, "no isolation: the same circuit");
        for pool in [first, second, third, fourth] {
            pool.close_all().await.unwrap();
        }
    });
}

#[test]
#[ignore = "quarantined (issue 19): on the private Tor network these failed in clean-clone CI runs under load \
            (a restart not seen, an isolated connect not made) while passing alone; \
            run them with `-- --ignored` until the cause is found"]
fn a_stopped_and_restarted_onion_service_is_reconnected_through_arti() {
    let net = TorNetwork::shared();
    let tor = &arti().client;
    let _turn = turn();
    // On smol only (the pool on smol, arti on its tokio runtime): the
    // slowest scenarios run once, for CI's time budget.
    run_on_smol_within(LIMIT, |rt| {
        let name = "gamma";
        async move {
            let onion = net.onion(name);
            let directory = net.directory(name);
            let pool = arti_pool(jm_config(&[&onion], IsolationScope::PerCategory), tor, &rt);
            let mut events = pool.events();
            pool.start_maintenance().unwrap();
            let connected = |e: &PoolEvent| matches!(e, PoolEvent::Connected { .. });
            assert!(
                wait_for(&rt, &mut events, ONION, connected).await,
                "connected"
            );
            let handshakes = directory.handshakes().len();

            blocking(move || net.kill_service(name)).await.unwrap();
            let within = KeepalivePolicy::default().loss_bound() + Duration::from_secs(30);
            let mut seen = Vec::new();
            let gone = next_matching(&rt, &mut events, within, |e| {
                seen.push(e.clone());
                matches!(e, PoolEvent::Disconnected { .. }).then_some(())
            })
            .await;
            assert!(
                gone.is_some(),
                "the pool hears the service is gone: {seen:#?}"
            );
            assert_eq!(pool.connected_count(), 0);
            blocking(move || net.restart_service(name)).await.unwrap();
            let mut seen = Vec::new();
            let back = next_matching(&rt, &mut events, Duration::from_secs(150), |e| {
                seen.push(e.clone());
                connected(e).then_some(())
            })
            .await;
            assert!(back.is_some(), "maintenance reconnects; events: {seen:#?}");
            assert_eq!(directory.handshakes().len(), handshakes + 1);
            pool.close_all().await.unwrap();
        }
    });
}

#[test]
#[ignore = "quarantined (issue 19): on the private Tor network these failed in clean-clone CI runs under load \
            (a restart not seen, an isolated connect not made) while passing alone; \
            run them with `-- --ignored` until the cause is found"]
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
        let mut config = jm_config(&[&onion], IsolationScope::PerCategory);
        config.pool.keepalive = keepalive;
        let pool = arti_pool(config, tor, &rt);
        let mut events = pool.events();
        let connected = pool
            .connect_all_with_retry(RetryPolicy::new(ONION))
            .await
            .unwrap();
        assert_eq!(connected, 1, "{:#?}", pool.status().await.unwrap());

        let pid = blocking(move || {
            net.service_control()?
                .getinfo("process/pid")?
                .first()
                .and_then(|p| p.parse::<u32>().ok())
                .ok_or_else(|| std::io::Error::other("no pid"))
        })
        .await
        .unwrap();
        let stopped = Stopped::stop(pid);
        let cut = Instant::now();
        expect_keepalive_loss(
            &rt,
            &mut events,
            keepalive,
            cut,
            "service tor SIGSTOP (arti)",
        )
        .await;
        drop(stopped);
        pool.close_all().await.unwrap();
        // The resumed tor answers its control port before the next test.
        blocking(move || net.service_control().map(drop))
            .await
            .unwrap();
    });
}

#[test]
#[ignore = "quarantined (issue 19): on the private Tor network these failed in clean-clone CI runs under load \
            (a restart not seen, an isolated connect not made) while passing alone; \
            run them with `-- --ignored` until the cause is found"]
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
            let mut config = jm_config(&[&alpha], IsolationScope::PerCategory);
            config.proxy_timeout = Duration::from_secs(1);
            let pool = arti_pool(config, &stuck, &rt);
            let mut events = pool.events();
            pool.start_maintenance().unwrap();
            let mut seen = Vec::new();
            let unreachable = next_matching(&rt, &mut events, ONION, |e| {
                seen.push(e.clone());
                matches!(e, PoolEvent::ProxyUnreachable).then_some(())
            })
            .await;
            assert!(unreachable.is_some(), "one pool-wide event: {seen:#?}");
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
