//! Through a real Tor: a private Tor network on loopback
//! (`tests/tor/private-network`, Debian's `tor`), with JoinMarket-speaking
//! directories published as v3 onion services, on tokio and on smol.
//!
//! The network starts once for this test binary (see
//! `dirpool_tests::tor`). Tests that use the first client tor take turns
//! ([`first_client`]) so that what its control port shows belongs to one
//! test; the test that restarts a tor client uses the second one.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use common::onion::{
    LIMIT, ONION, a_restarted_service_is_reconnected, a_silent_path_is_lost_to_the_keepalive,
    blocking, both_onions_connect_and_the_unpublished_one_fails, connect_all, fresh_entropy,
    onion_config,
};
use common::{
    assert_links_held, drain, eventually, next_matching_seen, on_both_runtimes_within,
    run_on_smol_within, until_event,
};
use dirpool::joinmarket::{JmConfig, JoinMarketHandshake, Network, NickIdentity};
use dirpool::{Config, DialError, DirectoryPool, PoolEvent, Runtime};
use dirpool_core::{
    DialFailure, Entropy, IsolationCategory, IsolationScope, KeepalivePolicy, ServerAddr,
    SocksReply,
};
use dirpool_tests::tor::{Control, TorClient, TorNetwork, socks5_connect};
use futures::FutureExt as _;

/// Serialises the tests that use the first client tor.
fn first_client() -> MutexGuard<'static, ()> {
    static CLIENT: Mutex<()> = Mutex::new(());
    CLIENT.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serialises the tests that use the second client tor (one of them kills
/// and restarts it).
fn second_client() -> MutexGuard<'static, ()> {
    static CLIENT: Mutex<()> = Mutex::new(());
    CLIENT.lock().unwrap_or_else(PoisonError::into_inner)
}

fn jm_pool(
    servers: &[&ServerAddr],
    proxy: std::net::SocketAddr,
    isolation: bool,
    entropy: Entropy,
    rt: &Arc<dyn Runtime>,
) -> DirectoryPool<JoinMarketHandshake> {
    let config = jm_config(servers, proxy, isolation);
    let handshake = JoinMarketHandshake::new(JmConfig::new(
        dirpool_tests::client_identity(),
        Network::Regtest,
    ))
    .unwrap();
    DirectoryPool::builder(config, handshake)
        .entropy(entropy)
        .spawn(Arc::clone(rt))
        .unwrap()
}

/// A pool as [`jm_pool`] (isolation on), with `keepalive` and a random
/// nick: a modelled joinmarket-ng directory refuses a nick it still holds
/// from an earlier run's link.
fn keepalive_pool(
    servers: &[&ServerAddr],
    proxy: std::net::SocketAddr,
    keepalive: KeepalivePolicy,
    rt: &Arc<dyn Runtime>,
) -> DirectoryPool<JoinMarketHandshake> {
    let mut config = jm_config(servers, proxy, true);
    config.pool.keepalive = keepalive;
    let handshake = JoinMarketHandshake::new(JmConfig::new(
        NickIdentity::random().unwrap(),
        Network::Regtest,
    ))
    .unwrap();
    DirectoryPool::builder(config, handshake)
        .entropy(fresh_entropy().0)
        .spawn(Arc::clone(rt))
        .unwrap()
}

/// The shared onion configuration through `proxy`, with per-category
/// isolation or none.
fn jm_config(servers: &[&ServerAddr], proxy: std::net::SocketAddr, isolation: bool) -> Config {
    let scope = if isolation {
        IsolationScope::PerCategory
    } else {
        IsolationScope::Off
    };
    let mut config = onion_config(servers, scope);
    config.proxy = proxy;
    config
}

/// The time a test took, for the README's numbers (`--nocapture`).
#[allow(clippy::print_stdout)]
fn timed(name: &str, test: impl FnOnce()) {
    let network = TorNetwork::shared();
    let started = Instant::now();
    test();
    println!(
        "tor timing: {name}: {:.1?} (network started in {:.1?})",
        started.elapsed(),
        network.startup()
    );
}

#[test]
fn connect_all_with_retry_reaches_both_onions_and_types_the_unpublished_one() {
    let net = TorNetwork::shared();
    let _turn = first_client();
    timed("connect_all_with_retry", || {
        on_both_runtimes_within(LIMIT, |rt| async move {
            let (alpha, beta, nobody) = (net.onion("alpha"), net.onion("beta"), net.unpublished());
            let pool = jm_pool(
                &[&alpha, &beta, &nobody],
                net.socks(TorClient::First),
                true,
                fresh_entropy().0,
                &rt,
            );
            let error = both_onions_connect_and_the_unpublished_one_fails(net, &rt, pool).await;
            // Tor's extended SOCKS reply 0xF0, as the tor daemon sends it.
            assert!(
                matches!(
                    &*error,
                    DialError::Socks {
                        reply: SocksReply::OnionDescriptorNotFound,
                        ..
                    }
                ),
                "{error:?}"
            );
            assert!(
                error.to_string().contains("descriptor not found"),
                "{error}"
            );
        });
    });
}

/// SOCKS username and password.
type Credentials = (String, String);

/// The streams Tor has to `onions`: target, circuit id, and the SOCKS
/// credentials of that circuit.
fn streams_to(
    control: &mut Control,
    onions: &[&ServerAddr],
) -> Vec<(String, String, Option<Credentials>)> {
    let circuits = control.circuits().unwrap();
    control
        .streams()
        .unwrap()
        .into_iter()
        .filter(|s| onions.iter().any(|o| s.target == o.node_id()))
        .map(|s| {
            let credentials = circuits
                .iter()
                .find(|c| c.id == s.circuit)
                .and_then(|c| Some((c.socks_username.clone()?, c.socks_password.clone()?)));
            (s.target, s.circuit, credentials)
        })
        .collect()
}

#[test]
fn isolation_is_what_tor_sees() {
    let net = TorNetwork::shared();
    let _turn = first_client();
    timed("isolation", || {
        on_both_runtimes_within(LIMIT, |rt| async move {
            let (alpha, beta) = (net.onion("alpha"), net.onion("beta"));
            let socks = net.socks(TorClient::First);

            // Isolation on: directory streams carry the directory
            // credentials, a peer stream the peer ones, on other circuits.
            let (entropy, password) = fresh_entropy();
            let pool = jm_pool(&[&alpha, &beta], socks, true, entropy, &rt);
            connect_all(&pool).await;
            let peer = pool.peer_credentials().expect("isolation on");
            assert_eq!(peer.username(), IsolationCategory::Peer.username());
            let peer_password = peer.password().expose().to_owned();
            assert_eq!(peer_password, password);
            let host = alpha.host().to_owned();
            let peer_stream = blocking(move || {
                socks5_connect(socks, &host, 5222, Some(("jm-peer", &peer_password)), ONION)
            })
            .await
            .expect("SOCKS exchange")
            .expect("the peer stream connects");
            let (a, b) = (alpha.clone(), beta.clone());
            let seen = blocking(move || {
                let mut control = net.control(TorClient::First).unwrap();
                streams_to(&mut control, &[&a, &b])
            })
            .await;
            let directory = (
                IsolationCategory::Directory.username().to_owned(),
                password.clone(),
            );
            let peer = (
                IsolationCategory::Peer.username().to_owned(),
                password.clone(),
            );
            let circuits_with = |target: &ServerAddr, who: &Credentials| {
                seen.iter()
                    .filter(|(t, _, c)| t == target.node_id() && c.as_ref() == Some(who))
                    .map(|(_, circuit, _)| circuit.clone())
                    .collect::<Vec<_>>()
            };
            let alpha_directory = circuits_with(&alpha, &directory);
            let alpha_peer = circuits_with(&alpha, &peer);
            assert_eq!(alpha_directory.len(), 1, "{seen:?}");
            assert_eq!(circuits_with(&beta, &directory).len(), 1, "{seen:?}");
            assert_eq!(alpha_peer.len(), 1, "{seen:?}");
            assert_ne!(
                alpha_directory, alpha_peer,
                "same onion, other credentials: another circuit"
            );
            drop(peer_stream);
            pool.close_all().await.unwrap();

            // Wait until Tor has closed those streams.
            let (a, b) = (alpha.clone(), beta.clone());
            let gone = blocking(move || {
                let mut control = net.control(TorClient::First).unwrap();
                // Tor's streams: another process's state, with no event.
                dirpool_tests::poll_until(
                    Duration::from_secs(10),
                    Duration::from_millis(20),
                    || streams_to(&mut control, &[&a, &b]).is_empty(),
                )
            })
            .await;
            assert!(gone, "Tor still lists streams to the directories");

            // Isolation off: the streams carry no credentials at all.
            let pool = jm_pool(&[&alpha, &beta], socks, false, fresh_entropy().0, &rt);
            assert!(pool.peer_credentials().is_none());
            connect_all(&pool).await;
            let (a, b) = (alpha.clone(), beta.clone());
            let seen = blocking(move || {
                let mut control = net.control(TorClient::First).unwrap();
                let circuits = control.circuits().unwrap();
                let streams = control.streams().unwrap();
                streams
                    .into_iter()
                    .filter(|s| s.target == a.node_id() || s.target == b.node_id())
                    .map(|s| {
                        let circuit = circuits.iter().find(|c| c.id == s.circuit).cloned();
                        (s, circuit)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            assert_eq!(seen.len(), 2, "{seen:?}");
            for (stream, circuit) in &seen {
                let circuit = circuit.as_ref().expect("the stream's circuit");
                assert_eq!(
                    (&circuit.socks_username, &circuit.socks_password),
                    (&None, &None),
                    "{stream:?}"
                );
            }
            pool.close_all().await.unwrap();
        });
    });
}

#[test]
fn a_stopped_and_restarted_onion_service_is_reconnected() {
    let net = TorNetwork::shared();
    let _turn = first_client();
    timed("onion service restarted", || {
        // A service never restarted before: stopping a restarted service's
        // tor again, the client's rendezvous circuit got no DESTROY here
        // and the link looked alive (see the README). On smol only, as
        // arti.rs's twin: the slowest scenarios run once, for CI's time
        // budget (the driver's loss and reconnect paths run on both
        // runtimes in the Tor-client restart below).
        let name = "gamma";
        // A loss heard only by the keepalive (no DESTROY came) costs its
        // whole bound on top of the scenario's usual time.
        let limit = LIMIT + KeepalivePolicy::default().loss_bound();
        run_on_smol_within(limit, |rt| async move {
            let pool = jm_pool(
                &[&net.onion(name)],
                net.socks(TorClient::First),
                true,
                fresh_entropy().0,
                &rt,
            );
            // Tor's own state: a client that tried the service while it
            // was down can stay unable to reach its new instance for
            // minutes (intro points NACK, then it stalls on the new ones).
            // NEWNYM clears its onion-service client state, as a Tor
            // controller would; the pool is not told and reconnects by
            // maintenance.
            let newnym = || {
                blocking(move || {
                    net.control(TorClient::First)?
                        .command("SIGNAL NEWNYM")
                        .map(drop)
                })
                .map(Result::unwrap)
            };
            // A dial begun before NEWNYM may run to its timeout; the next
            // connects.
            let reconnect = 2 * ONION;
            a_restarted_service_is_reconnected(net, &rt, pool, name, newnym, reconnect).await;
        });
    });
}

#[test]
fn a_restarted_tor_client_is_proxy_unreachable_then_recovers() {
    let net = TorNetwork::shared();
    let _turn = second_client();
    timed("tor client restarted", || {
        on_both_runtimes_within(LIMIT, |rt| async move {
            let (alpha, beta) = (net.onion("alpha"), net.onion("beta"));
            let pool = jm_pool(
                &[&alpha, &beta],
                net.socks(TorClient::Second),
                true,
                fresh_entropy().0,
                &rt,
            );
            let mut events = pool.events();
            pool.start_maintenance().unwrap();
            assert!(
                until_event(&rt, &mut events, ONION, || pool.connected_count() == 2).await,
                "both connect: {:?}",
                pool.status().await.unwrap()
            );

            blocking(move || net.kill_client(TorClient::Second))
                .await
                .unwrap();
            let mut down = Vec::new();
            let unreachable = next_matching_seen(&rt, &mut events, ONION, &mut down, |e| {
                matches!(e, PoolEvent::ProxyUnreachable).then_some(())
            })
            .await;
            assert!(unreachable.is_some(), "ProxyUnreachable; events: {down:#?}");
            // Maintenance probes the dead proxy: two more failed probes
            // (each a DialFailed event), then no directory may be blamed.
            let mut probes = 0;
            let probed = next_matching_seen(&rt, &mut events, ONION, &mut down, |e| {
                probes += usize::from(matches!(e, PoolEvent::DialFailed { .. }));
                (probes == 2).then_some(())
            })
            .await;
            assert!(
                probed.is_some(),
                "maintenance probes the proxy; events: {down:#?}"
            );
            for status in pool.status().await.unwrap() {
                assert_eq!(status.consecutive_failures, 0, "{status:?}");
                assert_eq!(
                    status.last_failure,
                    Some(DialFailure::ProxyUnreachable),
                    "{status:?}"
                );
            }

            blocking(move || net.restart_client(TorClient::Second))
                .await
                .unwrap();
            let mut up = Vec::new();
            let mut connected = 0;
            let recovered =
                next_matching_seen(&rt, &mut events, Duration::from_secs(120), &mut up, |e| {
                    if matches!(e, PoolEvent::Connected { .. }) {
                        connected += 1;
                    }
                    (connected == 2).then_some(())
                })
                .await;
            assert!(recovered.is_some(), "both reconnect; events: {up:#?}");
            let all: Vec<_> = down.iter().chain(&up).collect();
            assert_eq!(
                all.iter()
                    .filter(|e| matches!(e, PoolEvent::Disconnected { .. }))
                    .count(),
                2,
                "{all:#?}"
            );
            assert!(
                up.iter().any(|e| matches!(e, PoolEvent::ProxyRecovered)),
                "{up:#?}"
            );
            // While Tor was down, every failure was the proxy's.
            for event in &all {
                if let PoolEvent::DialFailed { error, .. } = event {
                    assert_eq!(error.failure(), DialFailure::ProxyUnreachable, "{error:?}");
                }
            }
            pool.close_all().await.unwrap();
        });
    });
}

#[test]
fn the_probe_reaches_the_onion_directories() {
    let net = TorNetwork::shared();
    let _turn = first_client();
    timed("probe", || {
        let (alpha, beta) = (net.onion("alpha"), net.onion("beta"));
        let output = Command::new(env!("CARGO_BIN_EXE_probe"))
            .args(["--socks", &net.socks(TorClient::First).to_string()])
            .args(["--isolate", "--network", "regtest", "--timeout", "60"])
            .args([alpha.node_id(), beta.host()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("reached 2 of 2 directories"), "{stdout}");
        assert!(stdout.contains("stream isolation on"), "{stdout}");
        assert_eq!(stdout.matches("outcome:    OK").count(), 2, "{stdout}");
        assert_eq!(stdout.matches("network:    regtest").count(), 2, "{stdout}");
    });
}

#[test]
fn the_unpublished_onion_is_0xf0_through_the_socks_port() {
    // What the pool's typed error rests on: Tor's own answer, by hand.
    let net = TorNetwork::shared();
    let _turn = first_client();
    let nobody = net.unpublished();
    let reply = socks5_connect(
        net.socks(TorClient::First),
        nobody.host(),
        5222,
        None,
        ONION,
    )
    .unwrap();
    assert_eq!(reply.err(), Some(0xF0));
}

#[test]
#[allow(clippy::print_stdout)]
fn a_modelled_directory_heartbeats_through_tor_and_keeps_the_link() {
    let net = TorNetwork::shared();
    let _turn = second_client();
    timed("modelled heartbeat", || {
        on_both_runtimes_within(LIMIT, |rt| async move {
            let onion = net.onion("epsilon");
            let directory = net.directory("epsilon");
            let (pings, pongs) = (directory.pings_sent(), directory.pongs_received());
            let links = directory.link_records().len();
            let pool = keepalive_pool(
                &[&onion],
                net.socks(TorClient::Second),
                KeepalivePolicy::default(),
                &rt,
            );
            let mut events = pool.events();
            connect_all(&pool).await;
            let started = Instant::now();
            // PINGed after 6 s idle, each PONG due within 2 s: three cycles.
            let cycles = eventually(&rt, Duration::from_secs(90), || {
                directory.pongs_received() >= pongs + 3
            })
            .await;
            let elapsed = started.elapsed();
            let seen = drain(&mut events);
            let records = directory.link_records();
            assert!(cycles, "{records:#?}\nevents: {seen:#?}");
            assert_eq!(directory.evictions(), Vec::new(), "{records:#?}");
            assert_links_held(&seen);
            assert_eq!(pool.connected_count(), 1);
            assert_eq!(records.len(), links + 1, "one link, never redialed");
            println!(
                "tor heartbeat: {} PINGs / {} PONGs in {elapsed:.1?}",
                directory.pings_sent() - pings,
                directory.pongs_received() - pongs
            );
            pool.close_all().await.unwrap();
        });
    });
}

#[test]
#[allow(clippy::print_stdout)]
fn a_path_cut_by_stopping_the_client_tor_is_lost_to_the_keepalive() {
    let net = TorNetwork::shared();
    // Nobody else uses the first client while it is stopped.
    let _turn = first_client();
    timed("client tor stopped", || {
        on_both_runtimes_within(LIMIT, |rt| async move {
            let onion = net.onion("zeta");
            let keepalive = KeepalivePolicy::new(Duration::from_secs(15), Duration::from_secs(2));
            let pool = keepalive_pool(&[&onion], net.socks(TorClient::First), keepalive, &rt);
            // The second runtime's pass meets a tor just resumed from the
            // first pass's SIGSTOP: its first stream may fail (SOCKS general
            // failure, seen in CI) while it rebuilds circuits, as a user's
            // would; so the connect retries, within the onion timeout.
            let client = move || net.client_pid(TorClient::First);
            a_silent_path_is_lost_to_the_keepalive(
                &rt,
                pool,
                keepalive,
                client,
                "tor client SIGSTOP",
            )
            .await;
            // The resumed tor answers its control port before the next test.
            blocking(move || net.client_pid(TorClient::First))
                .await
                .unwrap();
        });
    });
}
