//! JMP-0005 nick authentication against modelled directories: each client
//! mode against each implementation profile through the pool (joinmarket-ng
//! in its three server modes; joinmarket-rs and the reference, which do not
//! know it), and ng's server-side verdicts for clients that sign wrongly,
//! seen on the wire.
//!
//! What is expected comes from joinmarket-ng's code:
//! `jmcore/src/jmcore/directory_client.py` (`_handshake`,
//! `_authenticate_nick`) for the client, `directory_server/src/
//! directory_server/{server.py,handshake_handler.py}` for the directory.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::{entropy, first_failure, jm_error, next_matching, run_on_smol};
use dirpool::joinmarket::nick_auth::{NickAuthChallenge, NickAuthProof, NickAuthResult};
use dirpool::joinmarket::{
    DirectoryId, Envelope, JmConfig, JmError, JoinMarketHandshake, Network, NickAuthCode,
    NickAuthError, NickAuthMode, NickAuthStatus, NickIdentity, wire,
};
use dirpool::{Config, DirectoryPool, PoolEvent, Runtime};
use dirpool_core::{Backoff, DialFailure, IsolationScope, ServerAddr};
use dirpool_tests::directory_model::{DirectoryConfig, DirectoryProfile};
use dirpool_tests::{
    AuthMode, JM_DIRECTORY_NICK, JM_HANDSHAKE, JmBehaviour, JmDirectory, JmModelled, Reply,
    SocksConfig, SocksServer, jm_client_handshake, jm_message,
};

const SHORT: Duration = Duration::from_secs(5);

/// A directory as the pool reaches it: a fake onion the proxy forwards to
/// a loopback directory. Its JMP-0005 id is what ng derives from the onion.
struct Onion {
    addr: ServerAddr,
    directory: JmDirectory,
    proxy: SocksServer,
}

/// The directories of the matrix: ng with nick auth disabled, preferred or
/// required (its id that of the onion), ng without an id (so nothing
/// advertised, its default), joinmarket-rs and the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Ng(NickAuthMode),
    NgWithoutId,
    Rs,
    Reference,
}

impl Server {
    const ALL: [Self; 6] = [
        Self::Ng(NickAuthMode::Disabled),
        Self::Ng(NickAuthMode::PreferVerified),
        Self::Ng(NickAuthMode::RequireVerified),
        Self::NgWithoutId,
        Self::Rs,
        Self::Reference,
    ];

    /// Whether it advertises `nick_auth` (ng's `advertises_nick_auth`).
    fn advertises(self) -> bool {
        matches!(
            self,
            Self::Ng(NickAuthMode::PreferVerified | NickAuthMode::RequireVerified)
        )
    }
}

fn start(server: Server, n: u8) -> Onion {
    let addr = ServerAddr::from_onion_key(&[n; 32], 5222);
    let profile = match server {
        Server::Ng(_) | Server::NgWithoutId => DirectoryProfile::JoinmarketNg,
        Server::Rs => DirectoryProfile::JoinmarketRs,
        Server::Reference => DirectoryProfile::Reference,
    };
    let mut config = DirectoryConfig::new(profile, JM_DIRECTORY_NICK);
    if let Server::Ng(mode) = server {
        config = config.with_nick_auth(mode, DirectoryId::for_endpoint(&addr).unwrap());
    }
    let directory = JmDirectory::start(JmBehaviour::Modelled(JmModelled::with_config(config)))
        .expect("directory");
    let socks = SocksConfig::new()
        .with_auth(AuthMode::user_pass_any())
        .with_reply(addr.host(), Reply::Forward(directory.addr()));
    let proxy = SocksServer::start(socks).expect("proxy");
    Onion {
        addr,
        directory,
        proxy,
    }
}

fn pool(
    onion: &Onion,
    mode: NickAuthMode,
    rt: &Arc<dyn Runtime>,
) -> DirectoryPool<JoinMarketHandshake> {
    let mut config = Config::new([onion.addr.node_id().to_owned()]);
    config.proxy = onion.proxy.addr();
    config.pool.isolation = IsolationScope::PerCategory;
    config.pool.connection_timeout = SHORT;
    config.pool.maintenance.backoff =
        Backoff::new(Duration::from_millis(100), Duration::from_millis(400), 2.0);
    let mut jm = JmConfig::new(dirpool_tests::client_identity(), Network::Regtest);
    jm.nick_auth = mode;
    DirectoryPool::builder(config, JoinMarketHandshake::new(jm).unwrap())
        .entropy(entropy())
        .spawn(Arc::clone(rt))
        .unwrap()
}

/// What ng's client gets from `server` in `mode`: the status of the link,
/// or the error that fails it.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Connected(NickAuthStatus),
    /// `accepted: false` with ng's motd (its require refusing a client
    /// that does not offer the feature).
    RefusedByDirectory,
    /// Our require mode and a directory without the feature.
    NotOffered,
}

fn expected(mode: NickAuthMode, server: Server) -> Expected {
    match (mode, server) {
        (NickAuthMode::Disabled, Server::Ng(NickAuthMode::RequireVerified)) => {
            Expected::RefusedByDirectory
        }
        (NickAuthMode::Disabled, _) => Expected::Connected(NickAuthStatus::Disabled),
        (_, server) if server.advertises() => Expected::Connected(NickAuthStatus::Verified),
        (NickAuthMode::RequireVerified, _) => Expected::NotOffered,
        _ => Expected::Connected(NickAuthStatus::NotOffered),
    }
}

#[test]
fn every_client_mode_against_every_directory_profile() {
    run_on_smol(|rt| async move {
        let mut n = 1;
        for mode in [
            NickAuthMode::Disabled,
            NickAuthMode::PreferVerified,
            NickAuthMode::RequireVerified,
        ] {
            for server in Server::ALL {
                n += 1;
                let onion = start(server, n);
                let pool = pool(&onion, mode, &rt);
                let mut events = pool.events();
                let connected = pool.connect_all_parallel().await.unwrap();
                let case = format!("client {mode} against {server:?}");
                let outcome = if connected == 1 {
                    let client = pool.client(onion.addr.node_id()).unwrap();
                    Expected::Connected(client.info().nick_auth)
                } else {
                    let error = next_matching(&rt, &mut events, SHORT, |e| match e {
                        PoolEvent::DialFailed { error, .. } => Some(Arc::clone(error)),
                        _ => None,
                    })
                    .await
                    .unwrap_or_else(|| panic!("{case}: no dial failure"));
                    // A directory that refuses us, for nick auth or not, is
                    // a server-side rejection (not the proxy's fault).
                    assert_eq!(error.failure(), DialFailure::HandshakeRejected, "{case}");
                    match jm_error(&error) {
                        JmError::Rejected { motd: Some(motd) }
                            if motd == DirectoryProfile::NICK_AUTH_REQUIRED_MOTD =>
                        {
                            Expected::RefusedByDirectory
                        }
                        JmError::NickAuth(NickAuthError::NotOffered) => Expected::NotOffered,
                        other => panic!("{case}: {other:?}"),
                    }
                };
                assert_eq!(outcome, expected(mode, server), "{case}");

                // On the wire: what we advertised, and the 803..807 exchanged.
                let ours = &onion.directory.handshakes()[0];
                assert_eq!(
                    ours.has_feature("nick_auth"),
                    mode != NickAuthMode::Disabled,
                    "{case}: onion endpoints derive an id, so only disabled does not offer"
                );
                let sent = onion.directory.nick_auth_sent();
                let proofs = onion
                    .directory
                    .received()
                    .into_iter()
                    .filter(|(kind, _)| *kind == wire::NICK_AUTH_PROOF)
                    .count();
                if outcome == Expected::Connected(NickAuthStatus::Verified) {
                    let kinds: Vec<u32> = sent.iter().map(|(kind, _)| *kind).collect();
                    assert_eq!(kinds, [wire::NICK_AUTH_CHALLENGE, wire::NICK_AUTH_RESULT]);
                    assert_eq!(
                        NickAuthResult::parse(&sent[1].1).unwrap().code(),
                        NickAuthCode::Ok
                    );
                    assert_eq!(proofs, 1, "{case}");
                } else {
                    assert!(sent.is_empty(), "{case}: {sent:?}");
                    assert_eq!(proofs, 0, "{case}");
                }
                pool.close_all().await.unwrap();
            }
        }
    });
}

/// A raw client: sends a handshake for `nick` (offering `nick_auth`) and
/// returns the stream with the directory's reply read.
fn raw_client(directory: &JmDirectory, nick: &str) -> (TcpStream, BufReader<TcpStream>, String) {
    let mut stream = TcpStream::connect(directory.addr()).unwrap();
    let mut handshake = jm_client_handshake(nick, "regtest");
    handshake["features"]["nick_auth"] = true.into();
    let line = handshake.to_string();
    stream
        .write_all(jm_message(JM_HANDSHAKE, &line).as_bytes())
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let reply = read_message(&mut reader).expect("a reply");
    assert_eq!(reply.kind, wire::DIRECTORY_HANDSHAKE);
    (stream, reader, line)
}

/// The next message, or `None` when the directory closed.
fn read_message(reader: &mut BufReader<TcpStream>) -> Option<Envelope> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(Envelope::parse(line.trim_end()).unwrap()),
    }
}

/// ng's directory (`server.py`, `_perform_nick_auth`) challenged by a raw
/// client that answers with `proof_of`: the result it sends, and whether
/// it then closed the link.
fn challenge_answered_by(
    mode: NickAuthMode,
    claimed: &NickIdentity,
    answer: impl FnOnce(&NickAuthChallenge, &str) -> String,
) -> (NickAuthCode, bool) {
    let onion = start(Server::Ng(mode), 90);
    let (mut stream, mut reader, line) = raw_client(&onion.directory, claimed.nick().as_str());
    let challenge = read_message(&mut reader).expect("a challenge");
    assert_eq!(challenge.kind, wire::NICK_AUTH_CHALLENGE);
    let challenge = NickAuthChallenge::parse(&challenge.line).unwrap();
    assert_eq!(
        Some(challenge.directory_id().clone()),
        DirectoryId::for_endpoint(&onion.addr)
    );
    stream
        .write_all(jm_message(wire::NICK_AUTH_PROOF, &answer(&challenge, &line)).as_bytes())
        .unwrap();
    let result = read_message(&mut reader).expect("a result");
    assert_eq!(result.kind, wire::NICK_AUTH_RESULT);
    let code = NickAuthResult::parse(&result.line).unwrap().code();
    let closed = read_message(&mut reader).is_none();
    (code, closed)
}

#[test]
fn ng_accepts_the_right_key_and_refuses_another_in_both_modes() {
    let ours = dirpool_tests::client_identity();
    let other = NickIdentity::from_secret_bytes(&[0x42; 32]).unwrap();
    for mode in [NickAuthMode::PreferVerified, NickAuthMode::RequireVerified] {
        // The right key: verified, the link stays (no close after the 807;
        // the reader would block, so the raw client closes first).
        let onion = start(Server::Ng(mode), 91);
        let (mut stream, mut reader, line) = raw_client(&onion.directory, ours.nick().as_str());
        let challenge = read_message(&mut reader).unwrap();
        let challenge = NickAuthChallenge::parse(&challenge.line).unwrap();
        let proof = NickAuthProof::create(&ours, &challenge, &line).unwrap();
        stream
            .write_all(jm_message(wire::NICK_AUTH_PROOF, &proof.to_line()).as_bytes())
            .unwrap();
        let result = read_message(&mut reader).unwrap();
        assert_eq!(
            NickAuthResult::parse(&result.line).unwrap().code(),
            NickAuthCode::Ok
        );

        // Our nick, signed by another key (its nick is not ours): invalid,
        // and ng closes whatever its mode.
        let (code, closed) = challenge_answered_by(mode, &ours, |challenge, line| {
            NickAuthProof::create(&other, challenge, line)
                .unwrap()
                .to_line()
        });
        assert_eq!((code, closed), (NickAuthCode::Invalid, true), "{mode}");
        // The right key over another handshake line (a replayed proof).
        let (code, closed) = challenge_answered_by(mode, &ours, |challenge, line| {
            NickAuthProof::create(&ours, challenge, &format!("{line} "))
                .unwrap()
                .to_line()
        });
        assert_eq!((code, closed), (NickAuthCode::Invalid, true), "{mode}");
        // Not a proof at all.
        let (code, closed) = challenge_answered_by(mode, &ours, |_, _| "{}".to_owned());
        assert_eq!((code, closed), (NickAuthCode::Malformed, true), "{mode}");
    }
}

#[test]
fn a_dirpool_client_pinned_to_another_id_refuses_the_challenge() {
    run_on_smol(|rt| async move {
        let onion = start(Server::Ng(NickAuthMode::PreferVerified), 95);
        let mut config = Config::new([onion.addr.node_id().to_owned()]);
        config.proxy = onion.proxy.addr();
        config.pool.isolation = IsolationScope::PerCategory;
        config.pool.connection_timeout = SHORT;
        let mut jm = JmConfig::new(dirpool_tests::client_identity(), Network::Regtest);
        jm.directory_ids.insert(
            onion.addr.clone(),
            DirectoryId::parse("test:directory-elsewhere").unwrap(),
        );
        let pool = DirectoryPool::builder(config, JoinMarketHandshake::new(jm).unwrap())
            .entropy(entropy())
            .spawn(Arc::clone(&rt))
            .unwrap();
        let mut events = pool.events();
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 0);
        let error = first_failure(&rt, &mut events, SHORT).await;
        assert!(
            matches!(
                jm_error(&error),
                JmError::NickAuth(NickAuthError::DirectoryIdMismatch { expected, got })
                    if expected.as_str() == "test:directory-elsewhere"
                        && *got == onion.addr.node_id()
            ),
            "{error:?}"
        );
        assert_eq!(error.failure(), DialFailure::HandshakeRejected);
        // No proof was sent for another directory's challenge.
        assert!(
            onion
                .directory
                .received()
                .iter()
                .all(|(kind, _)| *kind != wire::NICK_AUTH_PROOF)
        );
        pool.close_all().await.unwrap();
    });
}

#[test]
fn ng_answers_expired_to_a_silent_client() {
    let addr = ServerAddr::from_onion_key(&[99; 32], 5222);
    let mut config = DirectoryConfig::new(DirectoryProfile::JoinmarketNg, JM_DIRECTORY_NICK)
        .with_nick_auth(
            NickAuthMode::RequireVerified,
            DirectoryId::for_endpoint(&addr).unwrap(),
        );
    config.nick_auth.as_mut().unwrap().timeout = Duration::from_millis(200);
    let directory =
        JmDirectory::start(JmBehaviour::Modelled(JmModelled::with_config(config))).unwrap();
    let ours = dirpool_tests::client_identity();
    let (_stream, mut reader, _) = raw_client(&directory, ours.nick().as_str());
    assert_eq!(
        read_message(&mut reader).unwrap().kind,
        wire::NICK_AUTH_CHALLENGE
    );
    let result = read_message(&mut reader).unwrap();
    assert_eq!(
        NickAuthResult::parse(&result.line).unwrap().code(),
        NickAuthCode::Expired
    );
    assert!(read_message(&mut reader).is_none(), "closed");
}

#[test]
fn the_loopback_directory_verifies_a_pooled_client_reached_by_its_onion() {
    use dirpool::loopback::{DirectorySettings, LoopbackDirectory, LoopbackProxy};
    run_on_smol(|rt| async move {
        for (server, client, verified) in [
            (
                NickAuthMode::PreferVerified,
                NickAuthMode::PreferVerified,
                true,
            ),
            (
                NickAuthMode::RequireVerified,
                NickAuthMode::RequireVerified,
                true,
            ),
            (NickAuthMode::Disabled, NickAuthMode::PreferVerified, false),
        ] {
            let mut settings = DirectorySettings::new(Network::Regtest);
            settings.nick_auth = server;
            let directory = LoopbackDirectory::with_settings(settings).unwrap();
            let proxy = LoopbackProxy::start().unwrap();
            let onion = proxy.route_directory(&directory).unwrap();
            let mut config = Config::new([onion.node_id().to_owned()]);
            config.proxy = proxy.addr();
            config.pool.isolation = IsolationScope::PerCategory;
            config.pool.connection_timeout = SHORT;
            let mut jm = JmConfig::new(dirpool_tests::client_identity(), Network::Regtest);
            jm.nick_auth = client;
            let pool = DirectoryPool::builder(config, JoinMarketHandshake::new(jm).unwrap())
                .entropy(entropy())
                .spawn(Arc::clone(&rt))
                .unwrap();
            assert_eq!(pool.connect_all_parallel().await.unwrap(), 1);
            let status = pool.client(onion.node_id()).unwrap().info().nick_auth;
            let expected = if verified {
                NickAuthStatus::Verified
            } else {
                NickAuthStatus::NotOffered
            };
            assert_eq!(status, expected, "directory {server}, client {client}");
            pool.close_all().await.unwrap();
        }
    });
}
