//! Messages across several directories (`dirpool::joinmarket::Messaging`):
//! the pool connects through the loopback SOCKS5 server to loopback
//! JoinMarket directories, which relay what the tests make them send; on
//! tokio and on smol.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use common::{entropy, eventually, on_both_runtimes, poll_until, wait_for};
use dirpool::joinmarket::{
    DirectoryOutcome, Envelope, Incoming, JmConfig, JoinMarketHandshake, Message, Messaging,
    MessagingConfig, Network, Nick, NickIdentity, PublicMessage, RecvError, Route, RouteFallback,
    RouteSource, SendFailure, SendToError, SignatureError,
};
use dirpool::{Config, DirectoryPool, PoolEvent, Runtime};
use dirpool_core::{Backoff, ServerAddr};
use dirpool_tests::directory_model::DirectoryProfile;
use dirpool_tests::{
    JM_GETPEERLIST, JM_PEERLIST, JM_PRIVMSG, JM_PUBMSG, JmBehaviour, JmDirectory, JmModelled,
    Reply, SocksConfig, SocksServer,
};
use futures::FutureExt;
use futures::future::{Either, select};

const SHORT: Duration = Duration::from_secs(10);
/// A maker's nick, as directories relay it.
const PEER: &str = "J52bCDEFGHJKLMNO";

fn onion(n: u8) -> ServerAddr {
    ServerAddr::from_onion_key(&[n; 32], 5222)
}

fn nick(text: &str) -> Nick {
    Nick::parse(text).unwrap()
}

/// Our identity (the test kit's fixed key: signatures are deterministic,
/// RFC 6979, so the tests know every signed line byte for byte).
fn us() -> Arc<NickIdentity> {
    Arc::new(dirpool_tests::client_identity())
}

/// Our nick.
fn ours() -> Nick {
    us().nick().clone()
}

/// The line of the private message `body` from us to `to`, signed.
fn signed_line(to: &Nick, body: &str) -> String {
    us().sign_private(to.clone(), body).unwrap().to_line()
}

/// Directories of `behaviours`, each behind its own onion name, a proxy
/// forwarding each name to its directory, and a pool of them all.
struct World {
    addrs: Vec<ServerAddr>,
    dirs: Vec<JmDirectory>,
    _proxy: SocksServer,
    pool: DirectoryPool<JoinMarketHandshake>,
}

impl World {
    fn start(rt: &Arc<dyn Runtime>, behaviours: Vec<JmBehaviour>) -> Self {
        let dirs: Vec<JmDirectory> = behaviours
            .into_iter()
            .map(|b| JmDirectory::start(b).unwrap())
            .collect();
        let addrs: Vec<ServerAddr> = (1..=u8::try_from(dirs.len()).unwrap()).map(onion).collect();
        let mut socks = SocksConfig::new();
        for (addr, dir) in addrs.iter().zip(&dirs) {
            socks = socks.with_reply(addr.host(), Reply::Forward(dir.addr()));
        }
        let proxy = SocksServer::start(socks).unwrap();
        let mut config = Config::new(addrs.iter().map(|a| a.node_id().to_owned()));
        config.proxy = proxy.addr();
        config.pool.connection_timeout = Duration::from_secs(3);
        config.pool.maintenance.backoff =
            Backoff::new(Duration::from_millis(100), Duration::from_millis(400), 2.0);
        let handshake = JoinMarketHandshake::new(JmConfig::new(us(), Network::Regtest)).unwrap();
        let pool = DirectoryPool::builder(config, handshake)
            .entropy(entropy())
            .spawn(Arc::clone(rt))
            .unwrap();
        Self {
            addrs,
            dirs,
            _proxy: proxy,
            pool,
        }
    }

    /// Connects every directory and starts `Messaging` with `edit`ed
    /// defaults, once its task reads every link.
    async fn messaging(
        &self,
        rt: &Arc<dyn Runtime>,
        edit: impl FnOnce(&mut MessagingConfig),
    ) -> Messaging {
        let mut config = MessagingConfig::new(us());
        edit(&mut config);
        let messaging = Messaging::new(&self.pool, config).unwrap();
        let all = self.dirs.len();
        assert_eq!(self.pool.connect_all_parallel().await.unwrap(), all);
        assert!(
            poll_until(rt, SHORT, || messaging.stats().links_read == all).await,
            "{:?}",
            messaging.stats()
        );
        // A directory registers a link for its broadcasts just after
        // writing its reply, so maybe after the pool saw the reply.
        assert!(
            eventually(rt, SHORT, || self
                .dirs
                .iter()
                .all(|d| d.handshaked_connections() == 1))
            .await
        );
        messaging
    }

    fn directory(&self, i: usize) -> Arc<ServerAddr> {
        Arc::new(self.addrs[i].clone())
    }
}

/// `future`'s output, or `None` after `limit`.
async fn within<T>(
    rt: &Arc<dyn Runtime>,
    limit: Duration,
    future: impl Future<Output = T>,
) -> Option<T> {
    let deadline = rt.sleep_until(rt.now() + limit);
    match select(std::pin::pin!(future), deadline).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}

/// The next message of the merged queue, within `SHORT`.
async fn next(rt: &Arc<dyn Runtime>, messaging: &Messaging) -> Incoming {
    within(rt, SHORT, messaging.recv())
        .await
        .expect("a message in time")
        .expect("a message, not an error")
}

/// The next peer list of the merged queue (after which its routes are
/// learned), skipping nothing else: the tests send nothing else meanwhile.
async fn next_peerlist(rt: &Arc<dyn Runtime>, messaging: &Messaging) -> (Arc<ServerAddr>, String) {
    let incoming = next(rt, messaging).await;
    match incoming.message {
        Message::Peerlist(entries) => (
            incoming.directory,
            entries
                .iter()
                .map(|e| e.to_entry())
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => panic!("not a peer list: {other:?}"),
    }
}

fn public_body(incoming: &Incoming) -> Option<&str> {
    match &incoming.message {
        Message::Public(public) => Some(public.body()),
        _ => None,
    }
}

fn directories(routes: &[Route]) -> Vec<Arc<ServerAddr>> {
    routes.iter().map(|r| Arc::clone(&r.directory)).collect()
}

#[test]
fn a_public_message_relayed_by_three_directories_arrives_once() {
    on_both_runtimes(|rt| async move {
        let world = World::start(&rt, vec![JmBehaviour::default(); 3]);
        let messaging = world.messaging(&rt, |_| {}).await;
        let hello = format!("{PEER}!PUBLIC!hello");
        let again = format!("{PEER}!PUBLIC!orderbook");
        for dir in &world.dirs {
            assert_eq!(dir.broadcast(JM_PUBMSG, &hello), 1);
        }
        // The author asks twice: each directory relays both.
        for _ in 0..2 {
            for dir in &world.dirs {
                assert_eq!(dir.broadcast(JM_PUBMSG, &again), 1);
            }
        }
        // A last, distinct message per directory: once all three are in,
        // every copy sent before them was taken (each link is in order).
        for (i, dir) in world.dirs.iter().enumerate() {
            assert_eq!(
                dir.broadcast(JM_PUBMSG, &format!("{PEER}!PUBLIC!last{i}")),
                1
            );
        }
        let mut bodies = Vec::new();
        let mut lasts = 0;
        while lasts < 3 {
            let incoming = next(&rt, &messaging).await;
            let Message::Public(public) = &incoming.message else {
                panic!("not public: {incoming:?}");
            };
            assert_eq!(public.from().as_str(), PEER);
            assert!(world.addrs.contains(&incoming.directory));
            lasts += usize::from(public.body().starts_with("!last"));
            bodies.push(public.body().to_owned());
        }
        let count = |body: &str| bodies.iter().filter(|b| *b == body).count();
        assert_eq!(count("!hello"), 1, "{bodies:?}");
        assert_eq!(
            count("!orderbook"),
            2,
            "sent twice, delivered twice: {bodies:?}"
        );
        assert_eq!(bodies.len(), 6, "{bodies:?}");
        let stats = messaging.stats();
        assert_eq!((stats.received, stats.duplicates), (12, 6), "{stats:?}");
        assert!(messaging.recv().now_or_never().is_none(), "nothing more");
        // Every relaying directory is a route to the author.
        let mut via = directories(&messaging.routes(&nick(PEER)));
        via.sort_by(|a, b| a.node_id().cmp(b.node_id()));
        let mut all: Vec<_> = (0..3).map(|i| world.directory(i)).collect();
        all.sort_by(|a, b| a.node_id().cmp(b.node_id()));
        assert_eq!(via, all);
        world.pool.close_all().await.unwrap();
    });
}

#[test]
fn send_to_goes_through_the_only_directory_whose_peerlist_has_the_nick() {
    on_both_runtimes(|rt| async move {
        let world = World::start(&rt, vec![JmBehaviour::default(); 3]);
        let messaging = world.messaging(&rt, |_| {}).await;
        let peer = nick(PEER);
        let entry = format!("{PEER};{}", onion(9).node_id());
        assert_eq!(world.dirs[1].broadcast(JM_PEERLIST, &entry), 1);
        let (from, entries) = next_peerlist(&rt, &messaging).await;
        assert_eq!((from, entries), (world.directory(1), entry));
        let routes = messaging.routes(&peer);
        assert_eq!(directories(&routes), [world.directory(1)]);
        assert_eq!(routes[0].source, RouteSource::Peerlist);

        let via = messaging
            .send_to(&peer, "!fill 0 100000 abc")
            .await
            .unwrap();
        assert_eq!(via, world.directory(1));
        let line = signed_line(&peer, "!fill 0 100000 abc");
        let arrived = |dir: &JmDirectory| {
            dir.received()
                .iter()
                .any(|(kind, text)| *kind == JM_PRIVMSG && *text == line)
        };
        assert!(eventually(&rt, SHORT, || arrived(&world.dirs[1])).await);
        for other in [&world.dirs[0], &world.dirs[2]] {
            assert!(
                !other.received().iter().any(|(kind, _)| *kind == JM_PRIVMSG),
                "{:?}",
                other.received()
            );
        }
        world.pool.close_all().await.unwrap();
    });
}

/// Fills `link`'s path to a directory that reads nothing with copies of
/// `line`, until one cannot be queued within half a second.
async fn stall(
    rt: &Arc<dyn Runtime>,
    pool: &DirectoryPool<JoinMarketHandshake>,
    node: &str,
    line: &Envelope,
) {
    let link = pool.client(node).expect("connected");
    for _ in 0..100_000 {
        match within(rt, Duration::from_millis(500), link.send(line)).await {
            Some(Ok(())) => {}
            Some(Err(e)) => panic!("the link ended: {e}"),
            None => return,
        }
    }
    panic!("the silent directory's path never filled");
}

#[test]
fn broadcast_reports_a_stuck_directory_and_reaches_the_others() {
    on_both_runtimes(|rt| async move {
        let mut silent = JmModelled::new(DirectoryProfile::JoinmarketNg);
        silent.silent_after = Some(Duration::ZERO);
        let world = World::start(
            &rt,
            vec![
                JmBehaviour::default(),
                JmBehaviour::Modelled(silent),
                JmBehaviour::default(),
            ],
        );
        let timeout = Duration::from_millis(300);
        let messaging = world.messaging(&rt, |c| c.send_timeout = timeout).await;
        let body = format!("!hello {}", "x".repeat(20_000));
        let line = PublicMessage::new(ours(), body.as_str())
            .unwrap()
            .to_envelope();
        let stuck = world.directory(1);
        // Rounds until the stuck path holds for a whole send timeout (a
        // loaded machine may still be moving bytes after the first fill).
        let mut outcomes: Vec<DirectoryOutcome> = Vec::new();
        for _ in 0..20 {
            stall(&rt, &world.pool, stuck.node_id(), &line).await;
            outcomes = messaging.broadcast(&body).await.unwrap();
            let order: Vec<_> = outcomes.iter().map(|o| Arc::clone(&o.directory)).collect();
            assert_eq!(
                order,
                (0..3).map(|i| world.directory(i)).collect::<Vec<_>>()
            );
            for ok in [&outcomes[0], &outcomes[2]] {
                assert!(ok.result.is_ok(), "{outcomes:?}");
            }
            if outcomes[1].result.is_err() {
                break;
            }
        }
        assert!(
            matches!(outcomes[1].result, Err(SendFailure::TimedOut(t)) if t == timeout),
            "{outcomes:?}"
        );
        let sent = (JM_PUBMSG, format!("{}!PUBLIC!{}", ours(), &body[1..]));
        for dir in [&world.dirs[0], &world.dirs[2]] {
            assert!(eventually(&rt, SHORT, || dir.received().contains(&sent)).await);
        }
        world.pool.close_all().await.unwrap();
    });
}

#[test]
fn a_flood_nobody_reads_is_dropped_counted_and_bounded_while_routes_are_learned() {
    on_both_runtimes(|rt| async move {
        let world = World::start(&rt, vec![JmBehaviour::default()]);
        let messaging = world
            .messaging(&rt, |c| {
                c.inbound_bytes = dirpool::joinmarket::MIN_INBOUND_BYTES;
                c.dedup_entries = 128;
            })
            .await;
        let bound = messaging.config().inbound_bytes;
        const FLOOD: u64 = 600;
        let pad = "f".repeat(1000);
        let mut most = 0;
        for i in 0..FLOOD {
            let line = format!("{PEER}!PUBLIC!flood {i:05} {pad}");
            assert_eq!(world.dirs[0].broadcast(JM_PUBMSG, &line), 1);
            most = most.max(messaging.stats().queued_charged);
        }
        // Routes are learned with nobody reading: a peer list after the
        // flood (kept or dropped, as the full queue allows).
        let other = nick("J53bCDEFGHJKLMNO");
        let entry = format!("{other};{}", onion(9).node_id());
        assert_eq!(world.dirs[0].broadcast(JM_PEERLIST, &entry), 1);
        let sent = FLOOD + 1;
        assert!(
            poll_until(&rt, SHORT, || {
                let stats = messaging.stats();
                most = most.max(stats.queued_charged);
                stats.received + stats.dropped_by_links == sent
            })
            .await,
            "{:?}",
            messaging.stats()
        );
        assert_eq!(directories(&messaging.routes(&other)), [world.directory(0)]);
        let stats = messaging.stats();
        assert!(most <= bound, "{most} > {bound}");
        assert!(stats.dedup_entries <= 128, "{stats:?}");
        assert_eq!(stats.dedup_evicted_early, FLOOD - 128, "{stats:?}");
        let lost = stats.dropped_full + stats.dropped_by_links;
        assert!(lost > sent / 2, "the flood was mostly dropped: {stats:?}");
        assert_eq!(stats.lagged, lost);
        #[allow(clippy::print_stdout, reason = "the figure, for --nocapture")]
        {
            println!(
                "flood of {sent}: {} kept in {} charged bytes (bound {bound}), {lost} dropped",
                stats.queued, stats.queued_charged
            );
        }

        // The loss is reported first, then the messages kept, in order.
        assert_eq!(messaging.recv().await.unwrap_err(), RecvError::Lagged(lost));
        let kept = sent - lost;
        let mut previous = None;
        for _ in 0..kept {
            let incoming = next(&rt, &messaging).await;
            if let Message::Peerlist(entries) = &incoming.message {
                // Small enough to fit where the last flood message did not.
                assert_eq!(entries[0].nick, other);
                continue;
            }
            let body = public_body(&incoming).expect("a flood message").to_owned();
            let index: u64 = body["!flood ".len()..][..5].parse().unwrap();
            assert!(previous.is_none_or(|p| p < index), "in order");
            previous = Some(index);
        }
        assert!(messaging.recv().now_or_never().is_none(), "nothing more");
        assert_eq!(messaging.stats().queued_charged, 0);
        world.pool.close_all().await.unwrap();
    });
}

#[test]
fn routes_follow_the_disconnected_flag_and_unknown_nicks_are_typed_errors() {
    on_both_runtimes(|rt| async move {
        let world = World::start(&rt, vec![JmBehaviour::default(); 2]);
        let messaging = world.messaging(&rt, |_| {}).await;
        let peer = nick(PEER);
        let location = onion(9).node_id().to_owned();
        let (a, b) = (world.directory(0), world.directory(1));

        let unknown = messaging
            .send_to(&nick("J53bCDEFGHJKLMNO"), "!fill 0")
            .await;
        assert!(
            matches!(&unknown, Err(SendToError::NoRoute { nick }) if nick.as_str() == "J53bCDEFGHJKLMNO"),
            "{unknown:?}"
        );

        world.dirs[0].broadcast(JM_PEERLIST, &format!("{PEER};{location}"));
        assert_eq!(next_peerlist(&rt, &messaging).await.0, a);
        world.dirs[1].broadcast(JM_PEERLIST, &format!("{PEER};{location}"));
        assert_eq!(next_peerlist(&rt, &messaging).await.0, b);
        let routes = messaging.routes(&peer);
        assert_eq!(
            directories(&routes),
            [Arc::clone(&b), Arc::clone(&a)],
            "most recent first"
        );
        assert!(routes[0].learned_at >= routes[1].learned_at);
        assert_eq!(messaging.send_to(&peer, "!fill 0").await.unwrap(), b);

        // b says the peer left: only a is left.
        world.dirs[1].broadcast(JM_PEERLIST, &format!("{PEER};{location};D"));
        assert_eq!(next_peerlist(&rt, &messaging).await.0, b);
        assert_eq!(directories(&messaging.routes(&peer)), [Arc::clone(&a)]);
        assert_eq!(messaging.send_to(&peer, "!fill 0").await.unwrap(), a);

        // a says so too: no route at all.
        world.dirs[0].broadcast(JM_PEERLIST, &format!("{PEER};{location};D"));
        assert_eq!(next_peerlist(&rt, &messaging).await.0, a);
        assert!(messaging.routes(&peer).is_empty());
        let error = messaging.send_to(&peer, "!fill 0").await.unwrap_err();
        assert!(
            matches!(&error, SendToError::NoRoute { nick } if *nick == peer),
            "{error:?}"
        );

        // Back on a, then a goes away: the route stays known and fails as
        // not connected, named in the error.
        world.dirs[0].broadcast(JM_PEERLIST, &format!("{PEER};{location}"));
        assert_eq!(next_peerlist(&rt, &messaging).await.0, a);
        let mut events = world.pool.events();
        world.dirs[0].stop();
        assert!(
            wait_for(&rt, &mut events, SHORT, |e| matches!(
                e,
                PoolEvent::Disconnected { node_id, .. } if node_id == a.node_id()
            ))
            .await
        );
        let error = messaging.send_to(&peer, "!fill 0").await.unwrap_err();
        let SendToError::Unreachable { nick: to, tried } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(to, &peer);
        assert_eq!(tried.len(), 1, "{error}");
        assert_eq!(tried[0].0, a);
        assert!(matches!(tried[0].1, SendFailure::NotConnected), "{error}");
        assert!(error.to_string().contains(a.node_id()), "{error}");
        world.pool.close_all().await.unwrap();
    });
}

#[test]
fn request_peerlists_asks_every_directory_and_learns_from_the_answers() {
    on_both_runtimes(|rt| async move {
        let other = nick("J53bCDEFGHJKLMNO");
        let entry = format!("{other};{}", onion(9).node_id());
        let mut ng = JmModelled::new(DirectoryProfile::JoinmarketNg);
        ng.config.peerlist = entry.clone();
        // An ng directory answers GETPEERLIST; the default one records it
        // and says nothing (as the reference).
        let world = World::start(&rt, vec![JmBehaviour::default(), JmBehaviour::Modelled(ng)]);
        let messaging = world.messaging(&rt, |_| {}).await;
        let outcomes = messaging.request_peerlists().await;
        let asked: Vec<_> = outcomes.iter().map(|o| Arc::clone(&o.directory)).collect();
        assert_eq!(asked, [world.directory(0), world.directory(1)]);
        assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
        assert_eq!(
            next_peerlist(&rt, &messaging).await,
            (world.directory(1), entry)
        );
        assert_eq!(directories(&messaging.routes(&other)), [world.directory(1)]);
        let asked = (JM_GETPEERLIST, String::new());
        assert!(eventually(&rt, SHORT, || world.dirs[0].received().contains(&asked)).await);
        world.pool.close_all().await.unwrap();
    });
}

#[test]
fn without_a_route_the_fallback_goes_through_the_first_connected_directory() {
    on_both_runtimes(|rt| async move {
        let world = World::start(&rt, vec![JmBehaviour::default(); 2]);
        let messaging = world
            .messaging(&rt, |c| c.fallback = RouteFallback::AnyDirectory)
            .await;
        let stranger = nick("J53bCDEFGHJKLMNO");
        assert!(messaging.routes(&stranger).is_empty());
        let via = messaging.send_to(&stranger, "!hello").await.unwrap();
        assert_eq!(via, world.directory(0), "the pool's server order");
        let line = (JM_PRIVMSG, signed_line(&stranger, "!hello"));
        assert!(eventually(&rt, SHORT, || world.dirs[0].received().contains(&line)).await);
        assert!(
            !world.dirs[1]
                .received()
                .iter()
                .any(|(kind, _)| *kind == JM_PRIVMSG)
        );
        world.pool.close_all().await.unwrap();
    });
}

/// What the README's messaging example sends (`broadcast("!orderbook")`)
/// is what every current implementation relays: ng, rs and the reference,
/// modelled (`directory_model`), each record the line they pass on.
#[test]
fn the_readme_broadcast_is_relayed_by_every_implementation() {
    on_both_runtimes(|rt| async move {
        let profiles = [
            DirectoryProfile::JoinmarketNg,
            DirectoryProfile::JoinmarketRs,
            DirectoryProfile::Reference,
        ];
        let behaviours = profiles
            .iter()
            .map(|p| JmBehaviour::Modelled(JmModelled::new(*p)))
            .collect();
        let world = World::start(&rt, behaviours);
        let messaging = world.messaging(&rt, |_| {}).await;
        let outcomes = messaging.broadcast("!orderbook").await.unwrap();
        assert_eq!(outcomes.len(), 3);
        assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
        let expected = (JM_PUBMSG, format!("{}!PUBLIC!orderbook", ours()));
        let relayed_by_all = eventually(&rt, SHORT, || {
            world.dirs.iter().all(|dir| {
                dir.link_records()
                    .iter()
                    .any(|record| record.relayed.contains(&expected))
            })
        })
        .await;
        let records: Vec<_> = world.dirs.iter().map(JmDirectory::link_records).collect();
        assert!(relayed_by_all, "{profiles:?}: {records:#?}");
        world.pool.close_all().await.unwrap();
    });
}

/// joinmarket-rs sends all its makers in one PEERLIST (`router.rs`,
/// `MAX_MAKERS_BEFORE_SAMPLE` 20,000, plus itself): about 2.2 MB with
/// features. With the default configuration it reaches the user whole
/// through the merged queue, and the newest routes are kept within the
/// route table's bound.
#[test]
fn a_full_joinmarket_rs_peerlist_passes_through_messaging_with_the_defaults() {
    on_both_runtimes(|rt| async move {
        // Nicks of distinct (unchecked) public keys: deriving 20,000 real
        // keys costs more than the test, and the nicks are all that travels.
        let makers: Vec<Nick> = (0..20_000u32)
            .map(|i| {
                let mut key = [0x02; 33];
                key[1..5].copy_from_slice(&i.to_be_bytes());
                Nick::from_public_key(&key).unwrap()
            })
            .collect();
        let entries: Vec<String> = makers
            .iter()
            .enumerate()
            .map(|(i, maker)| {
                let mut key = [0u8; 32];
                key[..4].copy_from_slice(&u32::try_from(i).unwrap().to_be_bytes());
                let onion = ServerAddr::from_onion_key(&key, 5222);
                format!("{maker};{};F:peerlist_features+ping", onion.node_id())
            })
            .collect();
        let mut rs = JmModelled::new(DirectoryProfile::JoinmarketRs);
        rs.config.peerlist = entries.join(",");
        assert!(rs.config.peerlist.len() > 2 * 1024 * 1024);
        let world = World::start(&rt, vec![JmBehaviour::Modelled(rs)]);
        let messaging = world.messaging(&rt, |_| {}).await;
        let outcomes = messaging.request_peerlists().await;
        assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
        let incoming = next(&rt, &messaging).await;
        let Message::Peerlist(list) = &incoming.message else {
            panic!("not a peer list: {incoming:?}");
        };
        assert_eq!(list.len(), 20_000);
        assert_eq!(messaging.stats().lagged, 0, "{:?}", messaging.stats());
        let last = makers.last().unwrap();
        assert_eq!(directories(&messaging.routes(last)), [world.directory(0)]);
        world.pool.close_all().await.unwrap();
    });
}

/// A private message reaches the user verified only when signed by the key
/// its sender's nick derives from (joinmarket-ng `jmcore/crypto.py`
/// `verify_signed_privmsg`, which its maker and taker apply to every
/// private message): a signed one is `Private` with its proven sender and
/// teaches a route, an unsigned or forged one is `Unverified` and teaches
/// none, and one to another nick is dropped and counted.
#[test]
fn private_messages_through_a_directory_are_verified_before_delivery() {
    on_both_runtimes(|rt| async move {
        let world = World::start(&rt, vec![JmBehaviour::default(); 2]);
        let messaging = world.messaging(&rt, |_| {}).await;
        let maker = NickIdentity::from_secret_bytes(&[0x22; 32]).unwrap();
        let stranger = NickIdentity::from_secret_bytes(&[0x33; 32]).unwrap();

        let unsigned = format!("{}!{}!fill 0 100000", maker.nick(), ours());
        assert_eq!(world.dirs[0].broadcast(JM_PRIVMSG, &unsigned), 1);
        let forged = stranger
            .sign_private(ours(), "!ioauth x")
            .unwrap()
            .to_line()
            .replacen(stranger.nick().as_str(), maker.nick().as_str(), 1);
        assert_eq!(world.dirs[0].broadcast(JM_PRIVMSG, &forged), 1);
        let misaddressed = maker
            .sign_private(stranger.nick().clone(), "!ioauth x")
            .unwrap()
            .to_line();
        assert_eq!(world.dirs[0].broadcast(JM_PRIVMSG, &misaddressed), 1);
        let signed = maker
            .sign_private(ours(), "!ioauth a b c")
            .unwrap()
            .to_line();
        assert_eq!(world.dirs[1].broadcast(JM_PRIVMSG, &signed), 1);

        // One directory's lines arrive in order; the other's interleave.
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let incoming = next(&rt, &messaging).await;
            match incoming.message {
                Message::Private(verified) => {
                    assert_eq!(verified.sender(), maker.nick());
                    assert_eq!(verified.message().body(), "!ioauth a b c");
                    assert_eq!(incoming.directory, world.directory(1));
                    seen.push("verified");
                }
                Message::Unverified { message, error } => {
                    assert_eq!(incoming.directory, world.directory(0));
                    assert_eq!(message.from(), maker.nick());
                    seen.push(match error {
                        SignatureError::Unsigned => "unsigned",
                        SignatureError::NickMismatch { .. } => "forged",
                        other => panic!("unexpected {other:?}"),
                    });
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, ["forged", "unsigned", "verified"]);
        assert!(poll_until(&rt, SHORT, || messaging.stats().misaddressed == 1).await);
        let stats = messaging.stats();
        assert_eq!((stats.unverified, stats.received), (2, 4));
        assert_eq!(
            directories(&messaging.routes(maker.nick())),
            [world.directory(1)]
        );
        world.pool.close_all().await.unwrap();
    });
}

/// joinmarket-ng's maker sends each offer and answer to a taker through
/// every directory: the taker gets it once, and a message its author
/// really sent twice, twice.
#[test]
fn a_private_message_relayed_by_every_directory_arrives_once() {
    on_both_runtimes(|rt| async move {
        let world = World::start(&rt, vec![JmBehaviour::default(); 3]);
        let messaging = world.messaging(&rt, |_| {}).await;
        let maker = NickIdentity::from_secret_bytes(&[0x22; 32]).unwrap();
        let offer = maker
            .sign_private(ours(), "!sw0reloffer 0 27300 9000000 0 0.00002")
            .unwrap()
            .to_line();
        let pubkey = maker.sign_private(ours(), "!pubkey abc").unwrap().to_line();
        for dir in &world.dirs {
            assert_eq!(dir.broadcast(JM_PRIVMSG, &offer), 1);
        }
        // The same answer twice, each time through every directory.
        for _ in 0..2 {
            for dir in &world.dirs {
                assert_eq!(dir.broadcast(JM_PRIVMSG, &pubkey), 1);
            }
        }
        for (i, dir) in world.dirs.iter().enumerate() {
            let last = maker
                .sign_private(ours(), format!("!last{i}"))
                .unwrap()
                .to_line();
            assert_eq!(dir.broadcast(JM_PRIVMSG, &last), 1);
        }
        let mut bodies = Vec::new();
        while bodies
            .iter()
            .filter(|b: &&String| b.starts_with("!last"))
            .count()
            < 3
        {
            let incoming = next(&rt, &messaging).await;
            let Message::Private(verified) = &incoming.message else {
                panic!("not a verified private message: {incoming:?}");
            };
            assert_eq!(verified.sender(), maker.nick());
            bodies.push(verified.message().body().to_owned());
        }
        let count = |body: &str| bodies.iter().filter(|b| *b == body).count();
        assert_eq!(
            count("!sw0reloffer 0 27300 9000000 0 0.00002"),
            1,
            "{bodies:?}"
        );
        assert_eq!(
            count("!pubkey abc"),
            2,
            "sent twice, delivered twice: {bodies:?}"
        );
        assert_eq!(bodies.len(), 6, "{bodies:?}");
        let stats = messaging.stats();
        assert_eq!((stats.received, stats.duplicates), (12, 6), "{stats:?}");
        assert!(messaging.recv().now_or_never().is_none(), "nothing more");
        world.pool.close_all().await.unwrap();
    });
}
