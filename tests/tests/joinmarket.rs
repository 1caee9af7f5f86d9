//! The JoinMarket client in the pool, through the loopback SOCKS5 proxy,
//! against JoinMarket-speaking directories, on tokio and on smol.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{entropy, eventually, first_failure, jm_error, on_both_runtimes, wait_for};
use dirpool::joinmarket::{
    DirectoryConnection, Envelope, JmConfig, JmError, JoinMarketHandshake, Network, wire,
};
use dirpool::{Config, DialError, DirectoryPool, PoolEvent, Runtime};
use dirpool_core::{Backoff, DialFailure, IsolationScope, ServerAddr};
use dirpool_tests::{
    AuthMode, JM_DIRECTORY_NICK, JmAccept, JmBehaviour, JmDirectory, JmReplyStyle, Reply,
    SocksConfig, SocksServer,
};

const SHORT: Duration = Duration::from_secs(5);
const NICK: &str = dirpool_tests::CLIENT_NICK;

fn onion(n: u8) -> ServerAddr {
    ServerAddr::from_onion_key(&[n; 32], 5222)
}

/// A proxy forwarding each onion to its directory, with isolation on.
fn proxy_for(directories: &[(&ServerAddr, &JmDirectory)]) -> SocksServer {
    let mut socks = SocksConfig::new().with_auth(AuthMode::user_pass_any());
    for (addr, dir) in directories {
        socks = socks.with_reply(addr.host(), Reply::Forward(dir.addr()));
    }
    SocksServer::start(socks).unwrap()
}

fn jm_pool(
    servers: &[&ServerAddr],
    proxy: &SocksServer,
    rt: &Arc<dyn Runtime>,
) -> DirectoryPool<JoinMarketHandshake> {
    let mut config = Config::new(servers.iter().map(|a| a.node_id().to_owned()));
    config.proxy = proxy.addr();
    config.pool.isolation = IsolationScope::PerCategory;
    config.pool.connection_timeout = Duration::from_secs(3);
    config.pool.maintenance.backoff =
        Backoff::new(Duration::from_millis(100), Duration::from_millis(400), 2.0);
    let handshake = JoinMarketHandshake::new(JmConfig::new(
        dirpool_tests::client_identity(),
        Network::Regtest,
    ))
    .unwrap();
    DirectoryPool::builder(config, handshake)
        .entropy(entropy())
        .spawn(Arc::clone(rt))
        .unwrap()
}

fn accept(f: impl FnOnce(&mut JmAccept)) -> JmBehaviour {
    let mut accept = JmAccept::default();
    f(&mut accept);
    JmBehaviour::Accept(accept)
}

#[test]
fn both_reply_styles_connect_and_record_the_directory() {
    on_both_runtimes(|rt| async move {
        let range = JmDirectory::start(accept(|a| a.motd = Some("range style".into()))).unwrap();
        let single =
            JmDirectory::start(accept(|a| a.style = JmReplyStyle::Single { proto_ver: 5 }))
                .unwrap();
        let (a, b) = (onion(1), onion(2));
        let tor = proxy_for(&[(&a, &range), (&b, &single)]);
        let pool = jm_pool(&[&a, &b], &tor, &rt);
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 2);
        let info = pool.client(a.node_id()).unwrap().info().clone();
        assert_eq!(info.nick, JM_DIRECTORY_NICK);
        assert_eq!(info.motd.as_deref(), Some("range style"));
        assert_eq!((info.protocol_min, info.protocol_max), (5, 5));
        assert_eq!(
            pool.client(b.node_id()).unwrap().info().nick,
            JM_DIRECTORY_NICK
        );
        // What the directory saw of us.
        let ours = &range.handshakes()[0];
        assert_eq!(
            (ours.nick.as_str(), ours.network.as_str()),
            (NICK, "regtest")
        );
        assert!(ours.has_feature("ping") && ours.has_feature("peerlist_features"));
        assert_eq!(ours.problem, None);
        // And the proxy saw the isolation credentials, by onion name.
        let requests = tor.connect_requests();
        assert!(
            requests
                .iter()
                .all(|r| r.username.as_deref() == Some("jm-directory")
                    && r.target_host.ends_with(".onion"))
        );
        pool.close_all().await.unwrap();
    });
}

#[test]
fn messages_are_kept_pings_answered_and_sends_arrive() {
    on_both_runtimes(|rt| async move {
        let dir = JmDirectory::start(accept(|a| {
            a.then_send = vec![
                (wire::PEERLIST, "J5peerNickXXXOOOO;x.onion:5222".into()),
                (wire::PUBMSG, "!orderbook".into()),
            ];
            a.ping_after = Some(Duration::from_millis(100));
            a.pings = 3;
        }))
        .unwrap();
        let addr = onion(3);
        let tor = proxy_for(&[(&addr, &dir)]);
        let pool = jm_pool(&[&addr], &tor, &rt);
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 1);
        let client: Arc<DirectoryConnection> = pool.client(addr.node_id()).unwrap();
        assert_eq!(
            client.recv().await,
            Ok(Envelope::new(
                wire::PEERLIST,
                "J5peerNickXXXOOOO;x.onion:5222"
            ))
        );
        assert_eq!(
            client.recv().await,
            Ok(Envelope::new(wire::PUBMSG, "!orderbook"))
        );
        // The pool's reader answers every PING by itself.
        assert!(
            eventually(&rt, SHORT, || dir.pongs() == 3).await,
            "pongs: {}",
            dir.pongs()
        );
        client
            .send(&Envelope::new(wire::PUBMSG, "hello directory"))
            .await
            .unwrap();
        assert!(
            eventually(&rt, SHORT, || dir
                .received()
                .contains(&(wire::PUBMSG, "hello directory".into())))
            .await
        );
        assert_eq!(pool.connected_count(), 1);
        pool.close_all().await.unwrap();
    });
}

#[test]
fn a_directory_closing_is_a_loss_the_pool_repairs() {
    on_both_runtimes(|rt| async move {
        let dir = JmDirectory::start(accept(|_| {})).unwrap();
        let addr = onion(4);
        let tor = proxy_for(&[(&addr, &dir)]);
        let pool = jm_pool(&[&addr], &tor, &rt);
        let mut events = pool.events();
        pool.start_maintenance().unwrap();
        let connected = |e: &PoolEvent| matches!(e, PoolEvent::Connected { .. });
        assert!(
            wait_for(&rt, &mut events, SHORT, connected).await,
            "connected"
        );
        dir.drop_all();
        assert!(
            wait_for(&rt, &mut events, SHORT, |e| matches!(
                e,
                PoolEvent::Disconnected { .. }
            ))
            .await,
            "the pool hears the directory closed"
        );
        assert!(
            wait_for(&rt, &mut events, SHORT, connected).await,
            "reconnected"
        );
        assert_eq!(dir.handshakes().len(), 2);
        pool.close_all().await.unwrap();
    });
}

#[test]
fn refusals_are_typed_and_say_why() {
    on_both_runtimes(|rt| async move {
        type Expect = fn(&JmError) -> bool;
        let cases: Vec<(JmBehaviour, Expect, DialFailure)> = vec![
            (
                JmBehaviour::Reject {
                    motd: "nick banned".into(),
                },
                |e| matches!(e, JmError::Rejected { motd: Some(m) } if m == "nick banned"),
                DialFailure::HandshakeRejected,
            ),
            (
                JmBehaviour::CloseWithoutReply,
                |e| matches!(e, JmError::ClosedWithoutReply),
                DialFailure::HandshakeProtocol,
            ),
            (
                accept(|a| a.network = Some("mainnet".into())),
                |e| matches!(e, JmError::WrongNetwork { ours: Network::Regtest, theirs } if theirs == "mainnet"),
                DialFailure::HandshakeRejected,
            ),
            (
                accept(|a| a.style = JmReplyStyle::Range { min: 6, max: 7 }),
                |e| {
                    matches!(
                        e,
                        JmError::IncompatibleVersion {
                            ours: 5,
                            min: 6,
                            max: 7
                        }
                    )
                },
                DialFailure::HandshakeRejected,
            ),
            (
                JmBehaviour::WrongType(wire::PUBMSG),
                |e| matches!(e, JmError::WrongType(687)),
                DialFailure::HandshakeProtocol,
            ),
            (
                JmBehaviour::Garbage("not json".into()),
                |e| matches!(e, JmError::NotJson(_)),
                DialFailure::HandshakeProtocol,
            ),
        ];
        for (behaviour, expected, failure) in cases {
            let shown = format!("{behaviour:?}");
            let dir = JmDirectory::start(behaviour).unwrap();
            let addr = onion(5);
            let tor = proxy_for(&[(&addr, &dir)]);
            let pool = jm_pool(&[&addr], &tor, &rt);
            let mut events = pool.events();
            assert_eq!(pool.connect_all_parallel().await.unwrap(), 0);
            let error = first_failure(&rt, &mut events, SHORT).await;
            assert!(expected(jm_error(&error)), "{shown}: {error:?}");
            assert_eq!(error.failure(), failure, "{shown}");
        }
    });
}

#[test]
fn a_silent_directory_is_bounded_by_the_connection_timeout() {
    on_both_runtimes(|rt| async move {
        let dir = JmDirectory::start(JmBehaviour::Silent).unwrap();
        let addr = onion(6);
        let tor = proxy_for(&[(&addr, &dir)]);
        let pool = jm_pool(&[&addr], &tor, &rt);
        let mut events = pool.events();
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 0);
        let error = first_failure(&rt, &mut events, SHORT).await;
        assert!(matches!(*error, DialError::TimedOut(_)), "{error:?}");
        assert!(
            eventually(&rt, SHORT, || dir.open_connections() == 0).await,
            "the abandoned dial's socket was closed"
        );
    });
}
