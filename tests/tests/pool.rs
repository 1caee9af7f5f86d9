//! The pool on real loopback sockets, through a scriptable SOCKS5 server,
//! on tokio and on smol: every scenario runs on both.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    LineClient, LineHandshake, TOKEN_HEX, config, dns, entropy, eventually, first_failure,
    healthy_behind_proxy, line_pool, next_matching, on_both_runtimes, until_event, wait_for,
};
use dirpool::{Command, DialError, DirectoryPool, PoolError, PoolEvent, PoolHooks};
use dirpool_core::{
    DisconnectReason, IsolationScope, OperationKind, RetryPolicy, ServerState, SocksReply,
};
use dirpool_tests::{AuthMode, LineBehaviour, LineServer, Reply, SocksConfig, SocksServer};

const SHORT: Duration = Duration::from_secs(5);

fn retry(timeout: Duration) -> RetryPolicy {
    let mut policy = RetryPolicy::new(timeout);
    policy.backoff.initial = Duration::from_millis(100);
    policy.backoff.max = Duration::from_millis(300);
    policy
}

#[test]
fn connect_all_parallel_with_live_and_dead_directories() {
    on_both_runtimes(|rt| async move {
        let live = LineServer::start(LineBehaviour::Healthy).unwrap();
        let tor = SocksServer::start(
            SocksConfig::new()
                .with_reply("live.example", Reply::Forward(live.addr()))
                .with_reply("unreachable.example", Reply::Code(0x04))
                .with_reply(
                    "nolistener.example",
                    Reply::Forward(std::net::SocketAddr::from((
                        [127, 0, 0, 1],
                        dirpool_tests::free_loopback_port(),
                    ))),
                ),
        )
        .unwrap();
        let servers = [dns("live"), dns("unreachable"), dns("nolistener")];
        let pool = line_pool(config(&servers, tor.addr()), &rt);
        let mut events = pool.events();
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 1);
        let client = pool.client("live.example").expect("registered");
        assert_eq!(client.greeting, format!("HELLO {}", live.port()));
        let disconnected: Vec<_> = pool
            .list_disconnected()
            .iter()
            .map(|a| a.node_id().to_owned())
            .collect();
        assert_eq!(disconnected, [dns("unreachable"), dns("nolistener")]);
        let mut failures = Vec::new();
        while failures.len() < 2 {
            let failure = next_matching(&rt, &mut events, SHORT, |e| match e {
                PoolEvent::DialFailed { node_id, error, .. } => {
                    Some((node_id.clone(), error.to_string()))
                }
                _ => None,
            })
            .await
            .expect("two failures");
            failures.push(failure);
        }
        failures.sort();
        assert!(
            failures[0].0.starts_with("nolistener")
                && failures[0].1.contains("general failure (0x01)"),
            "{failures:?}"
        );
        assert!(
            failures[1].0.starts_with("unreachable")
                && failures[1].1.contains("host unreachable (0x04)"),
            "{failures:?}"
        );
        pool.close_all().await.unwrap();
    });
}

#[test]
fn connect_all_with_retry_reaches_a_late_directory_before_the_deadline() {
    on_both_runtimes(|rt| async move {
        let late =
            LineServer::start_after(LineBehaviour::Healthy, Duration::from_millis(800)).unwrap();
        let tor = SocksServer::start(
            SocksConfig::new().with_reply("late.example", Reply::Forward(late.addr())),
        )
        .unwrap();
        let pool = line_pool(config(&[dns("late")], tor.addr()), &rt);
        let started = Instant::now();
        assert_eq!(
            pool.connect_all_with_retry(retry(Duration::from_secs(20)))
                .await
                .unwrap(),
            1
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(tor.connect_requests().len() >= 2, "it retried");
        pool.close_all().await.unwrap();
    });
}

#[test]
fn connect_all_with_retry_returns_zero_at_the_deadline_while_dials_hang() {
    on_both_runtimes(|rt| async move {
        let tor = SocksServer::start(
            SocksConfig::new()
                .with_reply("stalled.example", Reply::Stall)
                .with_reply("gone.example", Reply::Code(0xF0)),
        )
        .unwrap();
        let mut cfg = config(&[dns("stalled"), dns("gone")], tor.addr());
        cfg.pool.connection_timeout = Duration::from_secs(30);
        let pool = line_pool(cfg, &rt);
        let started = Instant::now();
        assert_eq!(
            pool.connect_all_with_retry(retry(Duration::from_millis(1500)))
                .await
                .unwrap(),
            0
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_millis(2500),
            "returned after {took:?}"
        );
        // The stalled dial is still in flight; close_all aborts it and its socket.
        pool.close_all().await.unwrap();
        assert!(
            eventually(&rt, SHORT, || tor.open_connections() == 0).await,
            "sockets left open"
        );
    });
}

#[test]
fn command_is_the_path_of_the_named_methods() {
    on_both_runtimes(|rt| async move {
        let live = LineServer::start(LineBehaviour::Healthy).unwrap();
        let tor = SocksServer::start(
            SocksConfig::new().with_reply("live.example", Reply::Forward(live.addr())),
        )
        .unwrap();
        let pool = line_pool(config(&[dns("live")], tor.addr()), &rt);
        // A policy out of range: the same typed error either way, and
        // nothing dialed.
        let bad = RetryPolicy::new(Duration::from_secs(2 * 365 * 24 * 3600));
        let named = pool.connect_all_with_retry(bad).await.unwrap_err();
        let direct = pool
            .command(Command::ConnectAllWithRetry(bad))
            .await
            .unwrap_err();
        let (PoolError::Config(named), PoolError::Config(direct)) = (named, direct) else {
            panic!("a policy out of range is a PoolError::Config");
        };
        assert_eq!(named, direct);
        assert!(tor.connect_requests().is_empty(), "nothing was dialed");
        // A switch starts no operation; an operation comes back with its
        // report.
        assert!(
            pool.command(Command::StopMaintenance)
                .await
                .unwrap()
                .is_none()
        );
        let report = pool
            .command(Command::ConnectAllParallel)
            .await
            .unwrap()
            .expect("an operation");
        assert_eq!(report.kind, OperationKind::ConnectAllParallel);
        assert_eq!(report.connected, 1);
        assert_eq!(report.newly_connected.len(), 1);
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 1);
        let closed = pool
            .command(Command::CloseAll)
            .await
            .unwrap()
            .expect("an operation");
        assert_eq!(closed.kind, OperationKind::CloseAll);
        assert_eq!(pool.connected_count(), 0);
    });
}

#[test]
fn reconnect_disconnected_after_a_directory_restarts() {
    on_both_runtimes(|rt| async move {
        let dir = LineServer::start(LineBehaviour::Healthy).unwrap();
        let tor = SocksServer::start(
            SocksConfig::new().with_reply("dir.example", Reply::Forward(dir.addr())),
        )
        .unwrap();
        let pool = line_pool(config(&[dns("dir")], tor.addr()), &rt);
        let mut events = pool.events();
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 1);
        dir.stop();
        let reason = next_matching(&rt, &mut events, SHORT, |e| match e {
            PoolEvent::Disconnected { reason, .. } => Some(*reason),
            _ => None,
        })
        .await
        .expect("the pool hears the link is gone");
        assert!(matches!(reason, DisconnectReason::Lost(_)));
        assert_eq!(pool.connected_count(), 0);
        assert!(
            pool.reconnect_disconnected().await.unwrap().is_empty(),
            "still down"
        );
        dir.restart().unwrap();
        let back = pool.reconnect_disconnected().await.unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, dns("dir"));
        pool.close_all().await.unwrap();
    });
}

#[test]
fn maintenance_redials_a_dropped_directory() {
    on_both_runtimes(|rt| async move {
        let dir = LineServer::start(LineBehaviour::Healthy).unwrap();
        let tor = SocksServer::start(
            SocksConfig::new().with_reply("dir.example", Reply::Forward(dir.addr())),
        )
        .unwrap();
        let pool = line_pool(config(&[dns("dir")], tor.addr()), &rt);
        let mut events = pool.events();
        pool.start_maintenance().unwrap();
        let connected = |e: &PoolEvent| matches!(e, PoolEvent::Connected { .. });
        assert!(
            wait_for(&rt, &mut events, SHORT, connected).await,
            "connected by maintenance"
        );
        dir.drop_all();
        assert!(
            wait_for(&rt, &mut events, SHORT, |e| matches!(
                e,
                PoolEvent::Disconnected { .. }
            ))
            .await,
            "loss noticed"
        );
        assert!(
            wait_for(&rt, &mut events, SHORT, connected).await,
            "redialed"
        );
        assert_eq!(dir.accepted(), 2);
        pool.close_all().await.unwrap();
    });
}

#[test]
fn close_all_during_dials_leaves_no_socket_open() {
    on_both_runtimes(|rt| async move {
        let dir = LineServer::start(LineBehaviour::Healthy).unwrap();
        let tor = SocksServer::start(
            SocksConfig::new()
                .with_reply("dir.example", Reply::Forward(dir.addr()))
                .with_default_reply(Reply::Stall),
        )
        .unwrap();
        let servers = [dns("dir"), dns("stall1"), dns("stall2")];
        let mut cfg = config(&servers, tor.addr());
        cfg.pool.connection_timeout = Duration::from_secs(30);
        let pool = line_pool(cfg, &rt);
        let mut events = pool.events();
        let background = pool.clone();
        rt.spawn(Box::pin(async move {
            let _ = background.connect_all_parallel().await;
        }));
        assert!(
            wait_for(&rt, &mut events, SHORT, |e| matches!(
                e,
                PoolEvent::Connected { .. }
            ))
            .await,
            "one connected"
        );
        assert!(eventually(&rt, SHORT, || tor.open_connections() == 3).await);
        let report = pool.close_all().await.unwrap();
        assert_eq!(report.connected, 0);
        assert!(
            eventually(&rt, SHORT, || tor.open_connections() == 0).await,
            "proxy still has {} open",
            tor.open_connections()
        );
        assert!(eventually(&rt, SHORT, || dir.open_connections() == 0).await);
        assert!(pool.clients().is_empty());
    });
}

#[test]
fn isolation_credentials_on_every_directory_dial_and_none_when_off() {
    on_both_runtimes(|rt| async move {
        let dir = LineServer::start(LineBehaviour::Healthy).unwrap();
        for scope in [IsolationScope::Off, IsolationScope::PerCategory] {
            let tor = SocksServer::start(
                SocksConfig::new()
                    .with_auth(AuthMode::user_pass_any())
                    .with_default_reply(Reply::Forward(dir.addr())),
            )
            .unwrap();
            if scope == IsolationScope::Off {
                tor.set_auth(AuthMode::NoAuth);
            }
            let mut cfg = config(&[dns("a"), dns("b")], tor.addr());
            cfg.pool.isolation = scope;
            let pool = line_pool(cfg, &rt);
            assert_eq!(pool.connect_all_parallel().await.unwrap(), 2);
            let connects = tor.connect_requests();
            assert_eq!(connects.len(), 2);
            for request in connects {
                match scope {
                    IsolationScope::Off => {
                        assert_eq!(request.username, None);
                        assert_eq!(request.offered_methods, [0x00]);
                    }
                    _ => {
                        assert_eq!(request.username.as_deref(), Some("jm-directory"));
                        assert_eq!(request.password.as_deref(), Some(TOKEN_HEX));
                    }
                }
            }
            if scope != IsolationScope::Off {
                let peer = pool.peer_credentials().expect("peer credentials");
                assert_eq!(peer.username(), "jm-peer");
                assert!(
                    !format!("{pool:?} {peer:?}").contains(TOKEN_HEX),
                    "secret in Debug output"
                );
            }
            pool.close_all().await.unwrap();
        }
    });
}

#[test]
fn a_proxy_that_drops_isolation_is_refused_before_any_dial() {
    on_both_runtimes(|rt| async move {
        let dir = LineServer::start(LineBehaviour::Healthy).unwrap();
        let tor = SocksServer::start(
            SocksConfig::new()
                .with_auth(AuthMode::PreferNoAuth)
                .with_default_reply(Reply::Forward(dir.addr())),
        )
        .unwrap();
        let mut cfg = config(&[dns("a")], tor.addr());
        cfg.pool.isolation = IsolationScope::PerCategory;
        let pool = line_pool(cfg, &rt);
        let mut events = pool.events();
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 0);
        let error = first_failure(&rt, &mut events, SHORT).await;
        assert!(
            matches!(*error, DialError::IsolationUnsupported { .. }),
            "{error:?}"
        );
        assert!(
            tor.connect_requests().is_empty(),
            "nothing was dialed without isolation"
        );
        assert_eq!(dir.accepted(), 0);
    });
}

#[test]
fn every_socks_reply_code_is_its_typed_error() {
    on_both_runtimes(|rt| async move {
        let codes: Vec<u8> = (0x01..=0x08).chain(0xF0..=0xF7).collect();
        let mut socks = SocksConfig::new();
        let mut servers = Vec::new();
        for code in &codes {
            socks = socks.with_reply(format!("code{code:02x}.example"), Reply::Code(*code));
            servers.push(dns(&format!("code{code:02x}")));
        }
        let tor = SocksServer::start(socks).unwrap();
        let pool = line_pool(config(&servers, tor.addr()), &rt);
        let mut events = pool.events();
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 0);
        let mut seen = std::collections::BTreeMap::new();
        while seen.len() < codes.len() {
            let (node, error) = next_matching(&rt, &mut events, SHORT, |e| match e {
                PoolEvent::DialFailed { node_id, error, .. } => {
                    Some((node_id.clone(), Arc::clone(error)))
                }
                _ => None,
            })
            .await
            .expect("one failure per code");
            let DialError::Socks { reply, .. } = *error else {
                panic!("{node}: {error:?}")
            };
            seen.insert(node, reply);
        }
        for code in codes {
            assert_eq!(
                seen[&dns(&format!("code{code:02x}"))],
                SocksReply::from_code(code)
            );
        }
        assert!(
            pool.status()
                .await
                .unwrap()
                .iter()
                .all(|s| s.consecutive_failures == 1)
        );
    });
}

#[test]
fn proxy_down_is_reported_as_such_and_recovers_by_itself() {
    on_both_runtimes(|rt| async move {
        let (_dir, tor) = healthy_behind_proxy();
        tor.set_down(true).unwrap();
        let pool = line_pool(config(&[dns("a"), dns("b")], tor.addr()), &rt);
        let mut events = pool.events();
        pool.start_maintenance().unwrap();
        assert!(
            wait_for(&rt, &mut events, SHORT, |e| matches!(
                e,
                PoolEvent::ProxyUnreachable
            ))
            .await,
            "proxy unreachable reported"
        );
        // Maintenance probes the dead proxy: two more failed probes (each a
        // DialFailed event) and still no directory may be blamed.
        let mut probes = 0;
        let probed = next_matching(&rt, &mut events, SHORT, |e| {
            probes += usize::from(matches!(e, PoolEvent::DialFailed { .. }));
            (probes == 2).then_some(())
        })
        .await;
        assert!(probed.is_some(), "maintenance probes the proxy");
        for status in pool.status().await.unwrap() {
            assert_eq!(status.consecutive_failures, 0, "no directory is blamed");
            assert!(matches!(
                status.state,
                ServerState::WaitingForProxy | ServerState::Dialing
            ));
        }
        tor.set_down(false).unwrap();
        assert!(
            wait_for(&rt, &mut events, SHORT, |e| matches!(
                e,
                PoolEvent::ProxyRecovered
            ))
            .await,
            "recovered"
        );
        assert!(until_event(&rt, &mut events, SHORT, || pool.connected_count() == 2).await);
        pool.close_all().await.unwrap();
    });
}

#[test]
fn connect_to_directory_is_not_registered() {
    on_both_runtimes(|rt| async move {
        let (_dir, tor) = healthy_behind_proxy();
        let pool = line_pool(config(&[dns("a")], tor.addr()), &rt);
        let (node_id, client) = pool.connect_to_directory("Other.Example").await.unwrap();
        assert_eq!(node_id, "other.example:5222");
        assert!(client.greeting.starts_with("HELLO"));
        assert_eq!(pool.connected_count(), 0);
        assert!(matches!(
            pool.connect_to_directory("a:b:c").await,
            Err(DialError::InvalidAddress(_))
        ));
        tor.set_default_reply(Reply::Stall);
        let mut cfg = config(&[dns("a")], tor.addr());
        cfg.pool.connection_timeout = Duration::from_millis(300);
        let quick = line_pool(cfg, &rt);
        assert!(matches!(
            quick.connect_to_directory("slow.example").await,
            Err(DialError::TimedOut(_))
        ));
    });
}

/// A hook that, on one server, says it started and then waits until the
/// test opens the gate.
struct SlowHook {
    started: futures::channel::mpsc::UnboundedSender<()>,
    gate: Arc<futures::lock::Mutex<()>>,
    slow_done: Arc<AtomicBool>,
}

impl PoolHooks<LineClient> for SlowHook {
    async fn on_connected(&self, node_id: &str, _client: &Arc<LineClient>) {
        if node_id.starts_with("slow") {
            let _ = self.started.unbounded_send(());
            let _open = self.gate.lock().await;
            self.slow_done.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn a_slow_hook_does_not_delay_other_dials() {
    on_both_runtimes(|rt| async move {
        let dir = LineServer::start(LineBehaviour::Healthy).unwrap();
        let late =
            LineServer::start_after(LineBehaviour::Healthy, Duration::from_millis(300)).unwrap();
        let tor = SocksServer::start(
            SocksConfig::new()
                .with_reply("slow.example", Reply::Forward(dir.addr()))
                .with_reply("other.example", Reply::Forward(late.addr())),
        )
        .unwrap();
        let slow_done = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(futures::lock::Mutex::new(()));
        let closed_gate = gate.lock().await;
        let (started, mut hook_started) = futures::channel::mpsc::unbounded();
        let pool = DirectoryPool::builder(
            config(&[dns("slow"), dns("other")], tor.addr()),
            LineHandshake,
        )
        .entropy(entropy())
        .hooks(SlowHook {
            started,
            gate: Arc::clone(&gate),
            slow_done: Arc::clone(&slow_done),
        })
        .spawn(Arc::clone(&rt))
        .unwrap();
        let mut events = pool.events();
        pool.start_maintenance().unwrap();
        // "other" fails first (not listening yet), is redialed and connects
        // while the slow hook of "slow" waits at the closed gate.
        assert!(
            futures::StreamExt::next(&mut hook_started).await.is_some(),
            "the slow hook ran"
        );
        next_matching(&rt, &mut events, SHORT, |e| match e {
            PoolEvent::Connected { node_id } if node_id.starts_with("other") => Some(()),
            _ => None,
        })
        .await
        .expect("other connected");
        assert!(
            !slow_done.load(Ordering::SeqCst),
            "the slow hook had already finished"
        );
        drop(closed_gate);
        pool.close_all().await.unwrap();
    });
}

#[test]
fn the_raw_stream_handshake_hands_out_the_tunnel() {
    on_both_runtimes(|rt| async move {
        use tokio::io::AsyncReadExt;
        let (dir, tor) = healthy_behind_proxy();
        let pool = DirectoryPool::builder(config(&[dns("raw")], tor.addr()), dirpool::RawStream)
            .entropy(entropy())
            .spawn(Arc::clone(&rt))
            .unwrap();
        let mut events = pool.events();
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 1);
        let connection = pool.client("raw.example").expect("registered");
        let mut stream = connection.take_stream().expect("the tunnel");
        assert!(connection.take_stream().is_none(), "taken once");
        let mut hello = vec![0u8; 64];
        let n = stream.read(&mut hello).await.unwrap();
        assert_eq!(&hello[..n], format!("HELLO {}\r\n", dir.port()).as_bytes());
        // The user saw EOF: it tells the pool, which reports the loss.
        dir.drop_all();
        assert_eq!(stream.read(&mut hello).await.unwrap(), 0);
        connection.report_lost(dirpool_core::LinkLoss::ClosedByPeer);
        assert!(
            wait_for(&rt, &mut events, SHORT, |e| matches!(
                e,
                PoolEvent::Disconnected { .. }
            ))
            .await,
            "loss reported"
        );
        assert_eq!(pool.connected_count(), 0);
    });
}

/// A handshake that panics: a bug in user code inside a task the pool
/// spawned.
struct PanickingHandshake;

impl dirpool::Handshake for PanickingHandshake {
    type Client = LineClient;

    async fn handshake(
        &self,
        _context: &dirpool::HandshakeContext,
        _server: &dirpool_core::ServerAddr,
        _stream: dirpool::BoxedStream,
    ) -> Result<LineClient, dirpool::HandshakeError> {
        panic!("handshake bug")
    }
}

#[test]
fn a_panic_in_a_pool_task_is_reported_and_stops_the_pool_cleanly() {
    on_both_runtimes(|rt| async move {
        let (_dir, tor) = healthy_behind_proxy();
        let pool =
            DirectoryPool::builder(config(&[dns("healthy")], tor.addr()), PanickingHandshake)
                .entropy(entropy())
                .spawn(Arc::clone(&rt))
                .unwrap();
        let mut events = pool.events();
        // The dial's owed result still arrives: the command ends.
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 0);
        let (task, message) = next_matching(&rt, &mut events, SHORT, |e| match e {
            PoolEvent::Panicked { task, message } => Some((*task, message.clone())),
            _ => None,
        })
        .await
        .expect("the panic is reported");
        assert_eq!((task, message.as_str()), ("dial", "handshake bug"));
        // The pool stops instead of hanging: every later command says why.
        let error = pool.connect_all_parallel().await.unwrap_err();
        assert!(
            matches!(&error, dirpool::PoolError::Panicked { task: "dial", message } if message == "handshake bug"),
            "{error:?}"
        );
        assert!(matches!(
            pool.start_maintenance(),
            Err(dirpool::PoolError::Panicked { .. })
        ));
    });
}

/// A hook that panics: reported, and the pool goes on.
struct PanickingHook;

impl PoolHooks<LineClient> for PanickingHook {
    async fn on_connected(&self, _node_id: &str, _client: &Arc<LineClient>) {
        panic!("hook bug")
    }
}

#[test]
fn a_panicking_hook_is_reported_and_the_pool_goes_on() {
    on_both_runtimes(|rt| async move {
        let (_dir, tor) = healthy_behind_proxy();
        let pool = DirectoryPool::builder(config(&[dns("healthy")], tor.addr()), LineHandshake)
            .entropy(entropy())
            .hooks(PanickingHook)
            .spawn(Arc::clone(&rt))
            .unwrap();
        let mut events = pool.events();
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 1);
        let task = next_matching(&rt, &mut events, SHORT, |e| match e {
            PoolEvent::Panicked { task, .. } => Some(*task),
            _ => None,
        })
        .await;
        assert_eq!(task, Some("hook"));
        assert_eq!(pool.connected_count(), 1);
        assert_eq!(pool.close_all().await.unwrap().connected, 0);
    });
}
