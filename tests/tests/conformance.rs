//! What the current directory implementations do, pinned: a dirpool link
//! against the loopback directory running each implementation's model
//! (`dirpool_tests::directory_model`), one test per difference of issue 16.
//! Each test names the implementation files its expectations come from.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::eventually;
use dirpool::joinmarket::{
    DirectoryConnection, Envelope, JmConfig, JmError, Network, get_peerlist, parse_peerlist, wire,
};
use dirpool::{Client, HandshakeContext, Runtime, TokioRuntime};
use dirpool_core::{LinkLoss, ServerAddr};
use dirpool_tests::directory_model::{DirectoryConfig, DirectoryProfile, LinkRecord};
use dirpool_tests::{JM_DIRECTORY_NICK, JmBehaviour, JmDirectory, JmModelled};

const NICK: &str = dirpool_tests::CLIENT_NICK;

fn config(network: Network) -> JmConfig {
    JmConfig::new(dirpool_tests::client_identity(), network)
}

/// A loopback directory modelling `profile`, serving `network`.
fn directory(profile: DirectoryProfile, network: &str) -> JmDirectory {
    let directory = JmDirectory::start(JmBehaviour::Modelled(JmModelled::new(profile))).unwrap();
    directory.set_network(network);
    directory
}

/// Opens a link to `directory` over plain TCP (no proxy: the handshake is
/// what is tested).
async fn open(directory: &JmDirectory, config: JmConfig) -> Result<DirectoryConnection, JmError> {
    let stream = tokio::net::TcpStream::connect(directory.addr())
        .await
        .unwrap();
    let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime::current());
    let context = HandshakeContext::new(runtime, Instant::now() + Duration::from_secs(30));
    let server = ServerAddr::parse(&directory.addr().to_string()).unwrap();
    DirectoryConnection::open(&context, &server, Box::pin(stream), config).await
}

/// Item 3. A client of another network: joinmarket-ng closes without a
/// reply (`directory_server/src/directory_server/handshake_handler.py`,
/// "Network mismatch", and `server.py`, which returns on `HandshakeError`);
/// joinmarket-rs (`crates/joinmarket-dn/src/peer.rs`, `NetworkMismatch`)
/// and the reference (`src/jmdaemon/onionmc.py`, `process_handshake`)
/// reply `accepted: false` naming their own network, which we report as
/// [`JmError::WrongNetwork`], not as a plain rejection.
#[tokio::test]
async fn a_directory_of_another_network_is_wrong_network_where_it_says_so() {
    for profile in DirectoryProfile::ALL {
        let directory = directory(profile, "signet");
        let error = open(&directory, config(Network::Regtest))
            .await
            .expect_err("refused");
        match profile {
            DirectoryProfile::JoinmarketNg => {
                assert!(matches!(error, JmError::ClosedWithoutReply), "{error:?}");
            }
            _ => assert!(
                matches!(
                    &error,
                    JmError::WrongNetwork { ours: Network::Regtest, theirs } if theirs == "signet"
                ),
                "{profile:?}: {error:?}"
            ),
        }
        assert_eq!(
            directory.rejections(),
            ["network `regtest` is not `signet`"],
            "{profile:?}"
        );
        // The same client on the directory's network is accepted.
        let link = open(&directory, config(Network::Signet)).await;
        assert!(link.is_ok(), "{profile:?}: {link:?}");
    }
}

/// Spawns the link task of `link`; its result is the link's end.
fn run(link: &Arc<DirectoryConnection>) -> tokio::task::JoinHandle<LinkLoss> {
    let link = Arc::clone(link);
    tokio::spawn(async move { link.closed().await })
}

/// The record of the directory's only link, once `done` holds for it.
async fn record_when(directory: &JmDirectory, done: impl Fn(&LinkRecord) -> bool) -> LinkRecord {
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime::current());
    let seen = eventually(&rt, Duration::from_secs(10), || {
        directory.link_records().first().is_some_and(&done)
    })
    .await;
    assert!(seen, "{:?}", directory.link_records());
    directory.link_records().remove(0)
}

/// Item 7. joinmarket-rs ends the link of a client whose PUBMSG or PRIVMSG
/// names another sender (`crates/joinmarket-dn/src/peer.rs`,
/// `handle_message`: "from_nick mismatch — disconnecting"); joinmarket-ng
/// drops it (`directory_server/.../message_router.py`). We refuse to send
/// it, with a typed error and nothing written, so the link survives.
#[tokio::test]
async fn a_message_from_another_nick_is_never_sent_to_joinmarket_rs() {
    let directory = directory(DirectoryProfile::JoinmarketRs, "regtest");
    let link = Arc::new(open(&directory, config(Network::Regtest)).await.unwrap());
    let task = run(&link);
    for envelope in [
        Envelope::new(wire::PUBMSG, "J52bCDEFGHJKLMNO!PUBLIC!orderbook"),
        Envelope::new(wire::PRIVMSG, format!("J52bCDEFGHJKLMNO!{NICK}!fill 0")),
    ] {
        let error = link.send(&envelope).await.unwrap_err();
        assert!(matches!(error, JmError::NotOurNick { .. }), "{error:?}");
    }
    let ours = format!("{NICK}!PUBLIC!orderbook");
    link.send(&Envelope::new(wire::PUBMSG, ours.as_str()))
        .await
        .unwrap();
    let record = record_when(&directory, |r| !r.relayed.is_empty()).await;
    assert_eq!(record.relayed, [(wire::PUBMSG, ours)]);
    assert_eq!(record.lines, 1, "only our own message arrived");
    assert_eq!(record.close, None);
    link.close().await.unwrap();
    assert_eq!(task.await.unwrap(), LinkLoss::ClosedByPeer);
}

/// Item 10, what we send. Unknown types are ignored by all three
/// directories (joinmarket-ng `message_router.py` only logs them;
/// joinmarket-rs `peer.rs`, "Ignoring unhandled message type"; the
/// reference `onionmc.py`, `receive_msg`, "Invalid message type,
/// ignoring"), so a user may send them. DISCONNECT (801) is not: rs and
/// the reference close on it (`peer.rs`; `process_control_message`,
/// `assert False`) and ng's client never sends it
/// (`jmcore/src/jmcore/directory_client.py`, `close`); PING, PONG and the
/// handshakes are the link's own. Those are refused before anything is
/// written.
#[tokio::test]
async fn unknown_types_reach_every_directory_and_control_types_are_refused() {
    for profile in DirectoryProfile::ALL {
        let directory = directory(profile, "regtest");
        let link = Arc::new(open(&directory, config(Network::Regtest)).await.unwrap());
        let task = run(&link);
        for kind in [wire::DISCONNECT, wire::PONG, wire::PING, 793, 795] {
            let error = link.send(&Envelope::new(kind, "")).await.unwrap_err();
            assert!(
                matches!(error, JmError::ControlType(k) if k == kind),
                "{error:?}"
            );
        }
        link.send(&Envelope::new(900, "future")).await.unwrap();
        link.send(&Envelope::new(
            wire::PUBMSG,
            format!("{NICK}!PUBLIC!orderbook"),
        ))
        .await
        .unwrap();
        let record = record_when(&directory, |r| r.lines == 2).await;
        assert_eq!(record.close, None, "{profile:?} kept the link");
        link.close().await.unwrap();
        assert_eq!(task.await.unwrap(), LinkLoss::ClosedByPeer);
    }
}

/// Item 10, what we receive. No directory sends DISCONNECT or an unknown
/// type today (none of `message_router.py`, `peer.rs`, `onionmc.py`
/// writes one to a client); their clients answer neither: joinmarket-ng's
/// (`directory_client.py`, `listen_continuously`) ignores both, the
/// reference's ignores unknown types and ends the link on 801
/// (`process_control_message`, `assert False`). We answer neither too: an
/// unknown type goes to the user, a DISCONNECT ends the link
/// ([`LinkLoss::DisconnectedByPeer`]), as the reference's client.
#[tokio::test]
async fn an_unknown_type_goes_to_the_user_and_disconnect_ends_the_link_unanswered() {
    for profile in DirectoryProfile::ALL {
        let directory = directory(profile, "regtest");
        let link = Arc::new(open(&directory, config(Network::Regtest)).await.unwrap());
        let task = run(&link);
        // The directory registers the link just after its reply.
        record_when(&directory, |_| true).await;
        assert_eq!(directory.broadcast(900, "future"), 1);
        assert_eq!(link.recv().await, Ok(Envelope::new(900, "future")));
        assert_eq!(directory.broadcast(wire::DISCONNECT, ""), 1);
        assert_eq!(task.await.unwrap(), LinkLoss::DisconnectedByPeer);
        let record = directory.link_records().remove(0);
        assert_eq!(record.lines, 0, "{profile:?}: nothing answered");
    }
}

/// Item 2. joinmarket-rs answers GETPEERLIST with every maker in one
/// PEERLIST (`crates/joinmarket-dn/src/peer.rs`, `GETPEERLIST` arm; up to
/// 20,000 before sampling, `router.rs`, `MAX_MAKERS_BEFORE_SAMPLE`), its
/// own entry first, with features for a client that announced
/// `peerlist_features`. With 20,000 makers announcing `peerlist_features`
/// and `ping` that is the 2.2 MB line seen live, over the 2 MiB our links
/// used to stop at: it is read whole, with the default configuration.
#[tokio::test]
async fn the_peerlist_of_a_full_joinmarket_rs_directory_is_read() {
    let makers = 20_000u32;
    let entry = |nick: &str, onion: &ServerAddr| {
        format!("{nick};{};F:peerlist_features+ping", onion.node_id())
    };
    let mut entries = vec![entry(
        JM_DIRECTORY_NICK,
        &ServerAddr::from_onion_key(&[1; 32], 5222),
    )];
    entries.extend((0..makers).map(|i| {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        entry(NICK, &ServerAddr::from_onion_key(&key, 5222))
    }));
    let mut model = DirectoryConfig::new(DirectoryProfile::JoinmarketRs, JM_DIRECTORY_NICK);
    model.peerlist = entries.join(",");
    assert!(
        model.peerlist.len() > 2 * 1024 * 1024,
        "{}",
        model.peerlist.len()
    );
    let directory =
        JmDirectory::start(JmBehaviour::Modelled(JmModelled::with_config(model))).unwrap();
    directory.set_network("regtest");
    let link = Arc::new(open(&directory, config(Network::Regtest)).await.unwrap());
    let task = run(&link);
    link.send(&get_peerlist()).await.unwrap();
    let answer = link.recv().await.unwrap();
    assert_eq!(answer.kind, wire::PEERLIST);
    let peers = parse_peerlist(&answer.line).unwrap();
    assert_eq!(peers.len(), 20_001);
    assert_eq!(peers[0].nick.as_str(), JM_DIRECTORY_NICK);
    assert_eq!(peers[1].features, ["peerlist_features", "ping"]);
    assert!(!task.is_finished(), "the link is up");
    drop(answer);
    // The buffer of the long line is given back.
    assert!(
        link.stats().reader_bytes < 1024 * 1024,
        "{:?}",
        link.stats()
    );
    link.close().await.unwrap();
    assert_eq!(task.await.unwrap(), LinkLoss::ClosedByPeer);
}
