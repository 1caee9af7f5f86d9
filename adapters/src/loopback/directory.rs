//! [`LoopbackDirectory`]: an in-process JoinMarket directory on 127.0.0.1.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use dirpool_core::ServerAddr;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{DeadlineReader, Hub, LoopbackError, fake_onion, lock, write_all_within};
use crate::joinmarket::lines::{PeerlistEntry, PrivateMessage, PublicMessage, peerlist_payload};
use crate::joinmarket::nick_auth::{
    FEATURE_NICK_AUTH, NickAuthChallenge, NickAuthProof, NickAuthResult, judge_answer,
};
use crate::joinmarket::wire::{self, Envelope, LineReader};
use crate::joinmarket::{
    DirectoryId, Location, Network, Nick, NickAuthCode, NickAuthMode, PROTOCOL_VERSION,
};

/// joinmarket-ng's `max_line_length`: the longest line, terminator excluded.
const NG_MAX_LINE: usize = 65_536;
/// Entries per PEERLIST line (`message_router.py` `send_peerlist`).
const PEERLIST_CHUNK: usize = 20;
/// The features the directory advertises (`handshake_handler.py`).
const DIRECTORY_FEATURES: [&str; 2] = ["peerlist_features", "ping"];

/// The settings of a [`LoopbackDirectory`]: what it says and its bounds.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectorySettings {
    /// The network it serves; handshakes for another are closed.
    pub network: Network,
    /// Its nick; `None` gives a different one per directory started in this
    /// process, the same sequence every run.
    pub nick: Option<Nick>,
    /// Its message of the day.
    pub motd: String,
    /// Handshaked peers at most; one more connection may be handshaking
    /// (joinmarket-ng's `max_peers + 1`), further ones are closed on arrival.
    pub max_peers: usize,
    /// Longest line read, terminator excluded; a longer one ends the link.
    pub max_line: usize,
    /// Bytes queued for one peer; a peer that would need more is dropped.
    pub outbound_bytes: usize,
    /// Bound on receiving the handshake.
    pub handshake_timeout: Duration,
    /// A peer that sends nothing for this long is evicted.
    pub idle_timeout: Duration,
    /// Bound on each write to a peer; a slower one is dropped.
    pub write_timeout: Duration,
    /// JMP-0005 nick authentication, as joinmarket-ng's server does it:
    /// [`NickAuthMode::PreferVerified`] by default (ng's
    /// `nick_auth_mode`).
    pub nick_auth: NickAuthMode,
    /// Its JMP-0005 identity; `None`: the one derived from its
    /// [`onion`](LoopbackDirectory::onion), what a client that dials it
    /// by that onion expects.
    pub directory_id: Option<DirectoryId>,
    /// How long it waits for a proof, then answers `expired` and closes
    /// (ng's `nick_auth_timeout`, 30 s).
    pub nick_auth_timeout: Duration,
}

impl DirectorySettings {
    /// joinmarket-ng's values for `network` (lines of 64 KiB, 30 s for the
    /// handshake and for each write, eviction after 1,500 s of silence),
    /// with at most 64 peers and 1 MiB queued per peer.
    pub fn new(network: Network) -> Self {
        Self {
            network,
            nick: None,
            motd: "dirpool loopback directory".to_owned(),
            max_peers: 64,
            max_line: NG_MAX_LINE,
            outbound_bytes: 1024 * 1024,
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(1500),
            write_timeout: Duration::from_secs(30),
            nick_auth: NickAuthMode::PreferVerified,
            directory_id: None,
            nick_auth_timeout: Duration::from_secs(30),
        }
    }
}

/// An in-process JoinMarket directory on 127.0.0.1 that behaves like
/// joinmarket-ng's directory server. Each connection has a reader and a
/// writer thread; dropping the directory closes every connection and
/// joins them.
///
/// What it does, from joinmarket-ng's code (`directory_server/src/directory_server/`):
/// - `server.py` `_perform_handshake`: the first line must be a handshake
///   (793) within 30 s; a handshake that fails the checks of
///   `handshake_handler.py` `process_handshake` (app name `joinmarket`, not
///   a directory, `proto-ver` 5, the directory's network, a location that is
///   `NOT-SERVING-ONION` or a v3 onion with its port) closes the connection
///   without a reply; a nick another live link holds, or a full registry,
///   gets `accepted: false` with `motd` `"Rejected: Peer nick already
///   registered: <nick>"` or `"Rejected: Maximum peers reached: <n>"`
///   (`peer_registry.py` `register`), then the close; otherwise the reply
///   of `jmcore/protocol.py` `create_handshake_response` (795, versions 5..5,
///   features `peerlist_features` and `ping`).
/// - `message_router.py`: a PUBMSG whose from-nick is the link's own goes
///   to every other handshaked peer, others are dropped; a PRIVMSG goes to
///   the peer holding its to-nick (dropped if none, or if the from-nick is
///   not the link's), followed by a PEERLIST entry with the sender's
///   location when the sender serves an onion (`_send_peer_location`);
///   GETPEERLIST (791) is answered with every handshaked peer, the asker
///   included, 20 entries per PEERLIST (789) line, with `F:` features when
///   the asker advertised `peerlist_features`, and one empty PEERLIST when
///   there is none; PING (798) is answered with PONG (799); other types are
///   ignored. A peer that leaves is announced to the others as a
///   disconnected entry (`nick;location;D`).
/// - `jmcore` settings: a line over 65,536 bytes (`max_line_length`) or one
///   that is not a JSON envelope ends the link; a peer silent for 1,500 s
///   is evicted (`heartbeat_hard_evict`); a write that fails or takes
///   over 30 s (`_DIRECTORY_SEND_TIMEOUT_SEC`) drops the peer
///   (`_handle_send_failed`).
///
/// Where it differs: a nick must have the JoinMarket
/// shape ([`Nick`]; joinmarket-ng takes any 1–64 characters); peers are
/// capped at [`DirectorySettings::max_peers`] (64 by default, not 10,000);
/// a peer whose outbound queue would pass
/// [`DirectorySettings::outbound_bytes`] is dropped at once (joinmarket-ng
/// waits up to 30 s for its socket); a relayed line is re-encoded with
/// [`Envelope::encode`], so one longer than
/// [`MAX_SEND_LINE`](wire::MAX_SEND_LINE) is dropped; no PINGs of its own
/// (the idle eviction stands in for the heartbeat), no rate limit.
///
/// Nick authentication (JMP-0005) as `server.py` `_perform_nick_auth` and
/// `handshake_handler.py` do it, in [`DirectorySettings::nick_auth`]'s
/// mode: unless disabled it advertises `nick_auth`; a client that
/// advertises it too gets a challenge (803) after the accepting reply, and
/// a result (807) once its proof (805) is judged
/// ([`judge_answer`](crate::joinmarket::nick_auth::judge_answer)):
/// `malformed`, `invalid` or `expired` (none within
/// [`DirectorySettings::nick_auth_timeout`]) close the link whatever the
/// mode; in `require_verified` a client that does not advertise it gets
/// `accepted: false` with the motd "Rejected: verified nick
/// authentication required". A verified client takes its nick from a link
/// that holds it unverified (`peer_registry.py` `register`: that link is
/// closed and announced as gone); a nick verified under another key is
/// answered `policy`.
///
/// ```
/// use dirpool::joinmarket::Network;
/// use dirpool::loopback::LoopbackDirectory;
///
/// let directory = LoopbackDirectory::start(Network::Signet)?;
/// assert!(directory.addr().ip().is_loopback());
/// assert!(directory.peers().is_empty());
/// # Ok::<(), dirpool::loopback::LoopbackError>(())
/// ```
pub struct LoopbackDirectory {
    listener: super::Listener,
    directory: Arc<Directory>,
}

impl fmt::Debug for LoopbackDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopbackDirectory")
            .field("addr", &self.listener.addr)
            .field("nick", &self.directory.nick)
            .field("network", &self.directory.settings.network)
            .finish_non_exhaustive()
    }
}

impl LoopbackDirectory {
    /// Starts a directory for `network` with [`DirectorySettings::new`].
    ///
    /// # Errors
    /// Binding the listener or starting its thread failed.
    pub fn start(network: Network) -> Result<Self, LoopbackError> {
        Self::with_settings(DirectorySettings::new(network))
    }

    /// Starts a directory with these settings.
    ///
    /// # Errors
    /// Binding the listener or starting its thread failed.
    pub fn with_settings(settings: DirectorySettings) -> Result<Self, LoopbackError> {
        let nick = settings.nick.clone().unwrap_or_else(next_nick);
        let directory_id = settings
            .directory_id
            .clone()
            .or_else(|| DirectoryId::for_endpoint(&fake_onion(nick.as_str())));
        let directory = Arc::new(Directory {
            nick,
            directory_id,
            settings,
            registry: Mutex::new(Registry::default()),
        });
        let served = Arc::clone(&directory);
        let connections = directory.settings.max_peers.saturating_add(1);
        let listener =
            super::Listener::start("loopback-directory", connections, move |hub, stream| {
                if let Err(why) = served.serve(hub, stream) {
                    tracing::debug!(%why, "loopback directory: link ended");
                }
            })?;
        Ok(Self {
            listener,
            directory,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.listener.addr
    }

    /// Its nick (in its handshake replies).
    pub fn nick(&self) -> &Nick {
        &self.directory.nick
    }

    /// The network it serves.
    pub fn network(&self) -> Network {
        self.directory.settings.network
    }

    /// Its fake onion address, [`fake_onion`] of its nick: what
    /// [`LoopbackProxy::route_directory`](super::LoopbackProxy::route_directory)
    /// routes to it.
    pub fn onion(&self) -> ServerAddr {
        fake_onion(self.directory.nick.as_str())
    }

    /// The nicks of the handshaked peers, in the order they arrived.
    pub fn peers(&self) -> Vec<Nick> {
        self.directory
            .peers()
            .into_iter()
            .map(|p| p.nick.clone())
            .collect()
    }
}

/// The `n`th default nick of this process: a nick of the JoinMarket shape
/// from a fixed key, so runs are alike.
fn next_nick() -> Nick {
    static STARTED: AtomicU64 = AtomicU64::new(0);
    let n = STARTED.fetch_add(1, Ordering::Relaxed);
    let mut key = [0x02; 33];
    let digest = Sha256::new()
        .chain_update(b"dirpool loopback directory\0")
        .chain_update(n.to_be_bytes())
        .finalize();
    key[1..].copy_from_slice(&digest);
    Nick::from_public_key(&key).unwrap_or_else(|_| unreachable!("0x02 and 32 bytes"))
}

/// Why a link ended (for the log).
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("bad line: {0}")]
    Line(#[from] crate::joinmarket::JmError),
    #[error("closed")]
    Closed,
    #[error("handshake refused: {0}")]
    Refused(String),
    #[error("dropped: its outbound queue is full or a write failed")]
    Dropped,
}

struct Directory {
    nick: Nick,
    /// Its JMP-0005 identity (always known: derived from its onion).
    directory_id: Option<DirectoryId>,
    settings: DirectorySettings,
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    peers: HashMap<Nick, Arc<Peer>>,
    arrivals: u64,
}

/// A handshaked peer.
struct Peer {
    nick: Nick,
    location: Location,
    /// Features it advertised `true`, sorted.
    features: Vec<String>,
    /// The key it proved to hold (JMP-0005), if it did.
    verified: Option<[u8; 33]>,
    /// Registration order (peer lists keep it).
    arrival: u64,
    outbox: Outbox,
}

impl Peer {
    fn entry(&self, features: bool, disconnected: bool) -> PeerlistEntry {
        PeerlistEntry {
            nick: self.nick.clone(),
            location: self.location.clone(),
            disconnected,
            features: if features {
                self.features.clone()
            } else {
                Vec::new()
            },
        }
    }

    fn send(&self, envelope: &Envelope) {
        match envelope.encode() {
            Ok(bytes) => self.outbox.push(bytes),
            Err(e) => tracing::debug!(error = %e, "loopback directory: line not relayed"),
        }
    }
}

/// One peer's lines waiting for its writer thread, bounded in bytes.
struct Outbox {
    socket: TcpStream,
    limit: usize,
    state: Mutex<OutboxState>,
    changed: Condvar,
}

#[derive(Default)]
struct OutboxState {
    lines: VecDeque<Vec<u8>>,
    /// Bytes queued or being written.
    held: usize,
    closed: bool,
}

impl Outbox {
    /// Queues a line; a peer whose queue would pass the limit is dropped.
    fn push(&self, bytes: Vec<u8>) {
        let mut state = lock(&self.state);
        if state.closed {
            return;
        }
        if state.held.saturating_add(bytes.len()) > self.limit {
            drop(state);
            tracing::debug!("loopback directory: a slow peer is dropped");
            self.close();
            return;
        }
        state.held += bytes.len();
        state.lines.push_back(bytes);
        self.changed.notify_all();
    }

    /// Ends the link: its writer stops and its reader wakes.
    fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// The writer thread: writes queued lines in order, each within
    /// `write_timeout`, until closed.
    fn write_all(&self, write_timeout: Duration) {
        loop {
            let line = {
                let mut state = lock(&self.state);
                loop {
                    if state.closed {
                        return;
                    }
                    if let Some(line) = state.lines.pop_front() {
                        break line;
                    }
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            };
            let written = write_all_within(&self.socket, &line, write_timeout);
            lock(&self.state).held -= line.len();
            if written.is_err() {
                self.close();
                return;
            }
        }
    }
}

/// What a valid client handshake says.
struct Hello {
    nick: Nick,
    location: Location,
    features: Vec<String>,
}

impl Hello {
    /// The checks of joinmarket-ng's `process_handshake`.
    fn check(line: &str, network: Network) -> Result<Self, String> {
        let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(hello) = value else {
            return Err("not a JSON object".to_owned());
        };
        let text = |field: &str| hello.get(field).and_then(Value::as_str).unwrap_or("");
        let (app, nick, their_network) = (text("app-name"), text("nick"), text("network"));
        let version = hello.get("proto-ver").and_then(Value::as_u64);
        if app.is_empty() || nick.is_empty() || their_network.is_empty() || version.is_none() {
            return Err("missing required handshake fields".to_owned());
        }
        if !app.eq_ignore_ascii_case("joinmarket") {
            return Err(format!("invalid app name {app:?}"));
        }
        if hello.get("directory").and_then(Value::as_bool) == Some(true) {
            return Err("directory nodes are not accepted as clients".to_owned());
        }
        if version != Some(u64::from(PROTOCOL_VERSION)) {
            return Err(format!("protocol version {version:?} is not 5"));
        }
        if !their_network.eq_ignore_ascii_case(network.as_str()) {
            return Err(format!("network {their_network:?} is not {network}"));
        }
        let nick = Nick::parse(nick).map_err(|e| format!("nick: {e}"))?;
        let location = location(hello.get("location-string").and_then(Value::as_str))?;
        let features = match hello.get("features") {
            None => Vec::new(),
            Some(Value::Object(features)) => {
                let mut on: Vec<String> = features
                    .iter()
                    .filter(|(_, v)| v.as_bool() == Some(true))
                    .map(|(name, _)| name.clone())
                    .collect();
                on.sort();
                on
            }
            Some(_) => return Err("features is not an object".to_owned()),
        };
        Ok(Self {
            nick,
            location,
            features,
        })
    }
}

/// joinmarket-ng's reading of `location-string`: a missing or port-less one
/// counts as not serving, and so does one whose port is not a number in
/// 1..=65535; `host:port` with a host that is not a v3 onion is refused.
fn location(text: Option<&str>) -> Result<Location, String> {
    let Some((host, port)) = text.and_then(|t| t.split_once(':')) else {
        return Ok(Location::NotServing);
    };
    if port.contains(':') || !port.parse::<u16>().is_ok_and(|p| p > 0) {
        return Ok(Location::NotServing);
    }
    match Location::parse(&format!("{host}:{port}")) {
        Ok(Location::Serving(addr)) if addr.is_onion() => Ok(Location::Serving(addr)),
        _ => Err(format!("location host {host:?} is not a v3 onion")),
    }
}

/// The handshake reply (`create_handshake_response`); `nick_auth` among
/// the features when it is advertised.
fn reply(nick: &Nick, network: Network, accepted: bool, motd: &str, nick_auth: bool) -> Envelope {
    let features: Map<String, Value> = if accepted {
        DIRECTORY_FEATURES
            .iter()
            .copied()
            .chain(nick_auth.then_some(FEATURE_NICK_AUTH))
            .map(|f| (f.to_owned(), Value::Bool(true)))
            .collect()
    } else {
        Map::new()
    };
    let line = json!({
        "app-name": "joinmarket",
        "directory": true,
        "proto-ver-min": PROTOCOL_VERSION,
        "proto-ver-max": PROTOCOL_VERSION,
        "features": features,
        "accepted": accepted,
        "nick": nick.as_str(),
        "network": network.as_str(),
        "motd": motd,
    });
    Envelope::new(wire::DIRECTORY_HANDSHAKE, line.to_string())
}

/// The next line, as an envelope (`Closed` at the end of the stream).
fn next_envelope(lines: &mut LineReader<DeadlineReader>) -> Result<Envelope, Ended> {
    let line = futures::executor::block_on(lines.next_line())?.ok_or(Ended::Closed)?;
    Ok(Envelope::parse(&line)?)
}

/// Unregisters a peer when its link ends and tells the others.
struct Registered<'a> {
    directory: &'a Directory,
    peer: Arc<Peer>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.peer.outbox.close();
        let ours = {
            let mut registry = lock(&self.directory.registry);
            let ours = registry
                .peers
                .get(&self.peer.nick)
                .is_some_and(|p| Arc::ptr_eq(p, &self.peer));
            if ours {
                registry.peers.remove(&self.peer.nick);
            }
            ours
        };
        if ours {
            let gone = peerlist_payload(&[self.peer.entry(false, true)]);
            let envelope = Envelope::new(wire::PEERLIST, gone);
            for peer in self.directory.peers() {
                peer.send(&envelope);
            }
        }
    }
}

impl Directory {
    fn peers(&self) -> Vec<Arc<Peer>> {
        let mut peers: Vec<Arc<Peer>> = lock(&self.registry).peers.values().cloned().collect();
        peers.sort_by_key(|p| p.arrival);
        peers
    }

    fn serve(&self, hub: &Arc<Hub>, stream: TcpStream) -> Result<(), Ended> {
        let settings = &self.settings;
        let _held = hub.hold(&stream)?;
        stream.set_nodelay(true)?;
        let reader = DeadlineReader::new(stream.try_clone()?, settings.handshake_timeout);
        let mut lines = LineReader::new(reader, settings.max_line);
        let first = next_envelope(&mut lines)?;
        if first.kind != wire::HANDSHAKE {
            return Err(Ended::Refused(format!(
                "first message of type {}",
                first.kind
            )));
        }
        let hello = Hello::check(&first.line, settings.network).map_err(Ended::Refused)?;
        let offers = hello.features.iter().any(|f| f == FEATURE_NICK_AUTH);
        let challenged = match self.advertised_id() {
            Some(_) if offers => true,
            _ if settings.nick_auth == NickAuthMode::RequireVerified => {
                let motd = "Rejected: verified nick authentication required";
                let rejection = reply(&self.nick, settings.network, false, motd, true);
                write_all_within(&stream, &rejection.encode()?, settings.write_timeout)?;
                return Err(Ended::Refused(motd.to_owned()));
            }
            _ => false,
        };
        let mut verified = None;
        if challenged {
            let accepted = self.accepting_reply();
            write_all_within(&stream, &accepted.encode()?, settings.write_timeout)?;
            match self.authenticate(&stream, &mut lines, &first.line, &hello.nick)? {
                Ok(key) => verified = Some(key),
                Err(code) => {
                    self.send_result(&stream, code)?;
                    return Err(Ended::Refused(format!("nick authentication: {code}")));
                }
            }
        }
        let peer = Peer {
            nick: hello.nick,
            location: hello.location,
            features: hello.features,
            verified,
            arrival: 0,
            outbox: Outbox {
                socket: stream.try_clone()?,
                limit: settings.outbound_bytes,
                state: Mutex::default(),
                changed: Condvar::new(),
            },
        };
        // After a challenge the reply is out and the result follows.
        let first_line = if challenged {
            Envelope::new(
                wire::NICK_AUTH_RESULT,
                NickAuthResult::new(NickAuthCode::Ok).to_line(),
            )
        } else {
            self.accepting_reply()
        };
        let peer = match self.register(peer, &first_line) {
            Ok(peer) => peer,
            // ng answers a verified nick it cannot register with `policy`.
            Err(why) if challenged => {
                self.send_result(&stream, NickAuthCode::Policy)?;
                return Err(Ended::Refused(why));
            }
            Err(why) => {
                let motd = format!("Rejected: {why}");
                let rejection = reply(&self.nick, settings.network, false, &motd, false);
                write_all_within(&stream, &rejection.encode()?, settings.write_timeout)?;
                return Err(Ended::Refused(why));
            }
        };
        let registered = Registered {
            directory: self,
            peer,
        };
        let writer = Arc::clone(&registered.peer);
        let write_timeout = settings.write_timeout;
        hub.spawn("loopback-directory-writer", move || {
            writer.outbox.write_all(write_timeout);
        })?;

        loop {
            lines.get_mut().extend(settings.idle_timeout);
            let envelope = match next_envelope(&mut lines) {
                Err(_) if registered.peer.outbox.is_closed() => return Err(Ended::Dropped),
                other => other?,
            };
            let from = &registered.peer;
            match envelope.kind {
                wire::PUBMSG => self.relay_public(from, &envelope),
                wire::PRIVMSG => self.route_private(from, &envelope),
                wire::GET_PEERLIST => self.send_peerlist(from),
                wire::PING => from.send(&Envelope::new(wire::PONG, "")),
                _ => {}
            }
        }
    }

    /// Its id when it advertises nick authentication.
    fn advertised_id(&self) -> Option<&DirectoryId> {
        self.directory_id
            .as_ref()
            .filter(|_| self.settings.nick_auth != NickAuthMode::Disabled)
    }

    fn accepting_reply(&self) -> Envelope {
        let nick_auth = self.advertised_id().is_some();
        reply(
            &self.nick,
            self.settings.network,
            true,
            &self.settings.motd,
            nick_auth,
        )
    }

    /// Challenges the client and judges its answer: the key it proved to
    /// hold, or the code to answer.
    fn authenticate(
        &self,
        stream: &TcpStream,
        lines: &mut LineReader<DeadlineReader>,
        handshake_line: &str,
        nick: &Nick,
    ) -> Result<Result<[u8; 33], NickAuthCode>, Ended> {
        let id = self.advertised_id().cloned().ok_or(Ended::Closed)?;
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| Ended::Io(io::Error::other(e)))?;
        let challenge = NickAuthChallenge::new(&nonce, id);
        let message = Envelope::new(wire::NICK_AUTH_CHALLENGE, challenge.to_line());
        write_all_within(stream, &message.encode()?, self.settings.write_timeout)?;
        lines.get_mut().extend(self.settings.nick_auth_timeout);
        let answer = match futures::executor::block_on(lines.next_line()) {
            Ok(Some(answer)) => answer,
            Ok(None) => return Err(Ended::Closed),
            Err(crate::joinmarket::JmError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
                return Ok(Err(NickAuthCode::Expired));
            }
            Err(_) => return Ok(Err(NickAuthCode::Malformed)),
        };
        Ok(
            match judge_answer(&challenge, handshake_line, nick.as_str(), &answer) {
                // `ok` means the answer is an 805 whose proof parses.
                NickAuthCode::Ok => Envelope::parse(&answer)
                    .and_then(|envelope| {
                        NickAuthProof::parse(&envelope.line)
                            .map_err(crate::joinmarket::JmError::NickAuth)
                    })
                    .map(|proof| *proof.public_key())
                    .map_err(|_| NickAuthCode::Malformed),
                code => Err(code),
            },
        )
    }

    fn send_result(&self, stream: &TcpStream, code: NickAuthCode) -> Result<(), Ended> {
        let result = Envelope::new(wire::NICK_AUTH_RESULT, NickAuthResult::new(code).to_line());
        write_all_within(stream, &result.encode()?, self.settings.write_timeout)?;
        Ok(())
    }

    /// Registers `peer` and queues `first` (the accepting reply, or the
    /// nick-auth result) ahead of anything relayed to it, or says why not.
    ///
    /// As joinmarket-ng's `peer_registry.py` `register`: an unverified
    /// peer cannot take a nick a live link holds; a verified one displaces
    /// the holder unless the holder proved another key ("Verified nick
    /// already registered"). A displaced link is closed and announced to
    /// the others as disconnected.
    fn register(&self, mut peer: Peer, first: &Envelope) -> Result<Arc<Peer>, String> {
        let mut registry = lock(&self.registry);
        let displaced = match (registry.peers.get(&peer.nick), peer.verified) {
            (None, _) => None,
            (Some(_), None) => return Err(format!("Peer nick already registered: {}", peer.nick)),
            (Some(holder), Some(key)) if holder.verified.is_some_and(|theirs| theirs != key) => {
                return Err(format!("Verified nick already registered: {}", peer.nick));
            }
            (Some(holder), Some(_)) => Some(Arc::clone(holder)),
        };
        if registry.peers.len() - usize::from(displaced.is_some()) >= self.settings.max_peers {
            return Err(format!(
                "Maximum peers reached: {}",
                self.settings.max_peers
            ));
        }
        registry.arrivals += 1;
        peer.arrival = registry.arrivals;
        peer.send(first);
        let peer = Arc::new(peer);
        registry.peers.insert(peer.nick.clone(), Arc::clone(&peer));
        drop(registry);
        if let Some(old) = displaced {
            old.outbox.close();
            let gone = Envelope::new(wire::PEERLIST, peerlist_payload(&[old.entry(false, true)]));
            for other in self.peers() {
                if !Arc::ptr_eq(&other, &peer) {
                    other.send(&gone);
                }
            }
        }
        Ok(peer)
    }

    fn relay_public(&self, from: &Peer, envelope: &Envelope) {
        match PublicMessage::parse(&envelope.line) {
            Ok(message) if message.from() == &from.nick => {
                for peer in self.peers() {
                    if peer.nick != from.nick {
                        peer.send(envelope);
                    }
                }
            }
            Ok(message) => tracing::debug!(
                claimed = %message.from(),
                link = %from.nick,
                "loopback directory: spoofed public message dropped"
            ),
            Err(e) => tracing::debug!(error = %e, "loopback directory: bad public message dropped"),
        }
    }

    fn route_private(&self, from: &Peer, envelope: &Envelope) {
        let message = match PrivateMessage::parse(&envelope.line) {
            Ok(message) if message.from() == &from.nick => message,
            Ok(_) => return tracing::debug!("loopback directory: spoofed private message dropped"),
            Err(e) => {
                return tracing::debug!(error = %e, "loopback directory: bad private message dropped");
            }
        };
        let Some(to) = lock(&self.registry).peers.get(message.to()).cloned() else {
            return tracing::debug!(to = %message.to(), "loopback directory: no such peer");
        };
        to.send(envelope);
        if matches!(from.location, Location::Serving(_)) {
            let entry = peerlist_payload(&[from.entry(true, false)]);
            to.send(&Envelope::new(wire::PEERLIST, entry));
        }
    }

    fn send_peerlist(&self, to: &Peer) {
        let features = to.features.iter().any(|f| f == "peerlist_features");
        let entries: Vec<PeerlistEntry> = self
            .peers()
            .iter()
            .map(|p| p.entry(features, false))
            .collect();
        if entries.is_empty() {
            return to.send(&Envelope::new(wire::PEERLIST, ""));
        }
        for chunk in entries.chunks(PEERLIST_CHUNK) {
            to.send(&Envelope::new(wire::PEERLIST, peerlist_payload(chunk)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpStream;

    use super::*;
    use crate::joinmarket::lines::{get_peerlist, parse_peerlist};

    /// Bound on every read of a test client.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn nick(n: u8) -> Nick {
        let mut key = [n; 33];
        key[0] = 0x02;
        Nick::from_public_key(&key).unwrap()
    }

    fn hello(nick: &Nick, network: &str, location: &str, features: &[&str]) -> Envelope {
        let features: Map<String, Value> = features
            .iter()
            .map(|f| ((*f).to_owned(), Value::Bool(true)))
            .collect();
        let line = json!({
            "app-name": "joinmarket",
            "directory": false,
            "location-string": location,
            "proto-ver": 5,
            "features": features,
            "nick": nick.as_str(),
            "network": network,
        });
        Envelope::new(wire::HANDSHAKE, line.to_string())
    }

    /// A raw peer of a directory.
    struct Client {
        stream: TcpStream,
        lines: LineReader<DeadlineReader>,
    }

    impl Client {
        fn connect(directory: &LoopbackDirectory) -> Self {
            let stream = TcpStream::connect(directory.addr()).unwrap();
            stream.set_nodelay(true).unwrap();
            let reader = DeadlineReader::new(stream.try_clone().unwrap(), PATIENCE);
            Self {
                stream,
                lines: LineReader::new(reader, 1 << 20),
            }
        }

        /// Connects and handshakes as `nick` with `features`, serving
        /// `location`; returns the client and the reply's JSON.
        fn join_as(
            directory: &LoopbackDirectory,
            nick: &Nick,
            location: &str,
            features: &[&str],
        ) -> (Self, Value) {
            let mut client = Self::connect(directory);
            client.send(&hello(nick, "regtest", location, features));
            let reply = client.recv().unwrap();
            assert_eq!(reply.kind, wire::DIRECTORY_HANDSHAKE);
            (client, serde_json::from_str(&reply.line).unwrap())
        }

        fn join(directory: &LoopbackDirectory, nick: &Nick) -> Self {
            let (client, reply) = Self::join_as(
                directory,
                nick,
                "NOT-SERVING-ONION",
                &["peerlist_features", "ping"],
            );
            assert_eq!(reply["accepted"], true, "{reply}");
            client
        }

        fn send(&mut self, envelope: &Envelope) {
            (&self.stream)
                .write_all(&envelope.encode().unwrap())
                .unwrap();
        }

        fn send_raw(&mut self, bytes: &[u8]) {
            (&self.stream).write_all(bytes).unwrap();
        }

        /// The next envelope, or `None` when the directory closed.
        fn recv(&mut self) -> Option<Envelope> {
            self.lines.get_mut().extend(PATIENCE);
            let line = futures::executor::block_on(self.lines.next_line());
            match line {
                Ok(Some(line)) => Some(Envelope::parse(&line).unwrap()),
                Ok(None) => None,
                Err(crate::joinmarket::JmError::Io(e))
                    if e.kind() == io::ErrorKind::ConnectionReset =>
                {
                    None
                }
                Err(e) => panic!("{e}"),
            }
        }

        /// Sends a PING and expects its PONG next: everything the directory
        /// queued for us before it answered has been read before.
        fn expect_nothing_queued(&mut self) {
            self.send(&Envelope::new(wire::PING, ""));
            assert_eq!(self.recv(), Some(Envelope::new(wire::PONG, "")));
        }
    }

    fn public(from: &Nick, body: &str) -> Envelope {
        PublicMessage::new(from.clone(), body)
            .unwrap()
            .to_envelope()
    }

    fn private(from: &Nick, to: &Nick, body: &str) -> Envelope {
        PrivateMessage::new(from.clone(), to.clone(), body)
            .unwrap()
            .to_envelope()
    }

    fn regtest() -> LoopbackDirectory {
        LoopbackDirectory::start(Network::Regtest).unwrap()
    }

    #[test]
    fn the_handshake_reply_is_ngs_and_bad_handshakes_are_closed_without_one() {
        let directory = regtest();
        let (_client, reply) =
            Client::join_as(&directory, &nick(1), "NOT-SERVING-ONION", &["ping"]);
        assert_eq!(
            reply,
            json!({
                "app-name": "joinmarket",
                "directory": true,
                "proto-ver-min": 5,
                "proto-ver-max": 5,
                "features": {"peerlist_features": true, "ping": true, "nick_auth": true},
                "accepted": true,
                "nick": directory.nick().as_str(),
                "network": "regtest",
                "motd": "dirpool loopback directory",
            })
        );
        assert_eq!(directory.peers(), [nick(1)]);

        let onion = fake_onion("x").to_string();
        let bad = [
            hello(&nick(2), "signet", "NOT-SERVING-ONION", &[]),
            hello(&nick(2), "regtest", "127.0.0.1:5222", &[]),
            Envelope::new(wire::PUBMSG, "not a handshake"),
            Envelope::new(wire::HANDSHAKE, "{\"nick\": 1}"),
        ];
        for envelope in bad {
            let mut client = Client::connect(&directory);
            client.send(&envelope);
            assert_eq!(client.recv(), None, "{envelope:?}");
        }
        // A location without a port counts as not serving, as in ng.
        let (_served, reply) = Client::join_as(&directory, &nick(3), &onion, &[]);
        assert_eq!(reply["accepted"], true);
        let (_bare, reply) = Client::join_as(&directory, &nick(4), "somewhere", &[]);
        assert_eq!(reply["accepted"], true);
        assert_eq!(directory.peers(), [nick(1), nick(3), nick(4)]);
    }

    fn with_nick_auth(mode: NickAuthMode) -> LoopbackDirectory {
        let mut settings = DirectorySettings::new(Network::Regtest);
        settings.nick_auth = mode;
        LoopbackDirectory::with_settings(settings).unwrap()
    }

    /// Joins offering `nick_auth` as `identity`'s nick and answers the
    /// challenge with a proof by `signer`; returns the client and the
    /// result's code.
    fn authenticate(
        directory: &LoopbackDirectory,
        identity: &crate::joinmarket::NickIdentity,
        signer: &crate::joinmarket::NickIdentity,
    ) -> (Client, NickAuthCode) {
        use crate::joinmarket::nick_auth::NickAuthProof;
        let handshake = hello(
            identity.nick(),
            "regtest",
            "NOT-SERVING-ONION",
            &["ping", "nick_auth"],
        );
        let mut client = Client::connect(directory);
        client.send(&handshake);
        let reply: Value = serde_json::from_str(&client.recv().unwrap().line).unwrap();
        assert_eq!(reply["accepted"], true);
        assert_eq!(reply["features"]["nick_auth"], true);
        let challenge = client.recv().unwrap();
        assert_eq!(challenge.kind, wire::NICK_AUTH_CHALLENGE);
        let challenge = NickAuthChallenge::parse(&challenge.line).unwrap();
        // The id a client dialing its onion derives.
        assert_eq!(
            Some(challenge.directory_id().clone()),
            DirectoryId::for_endpoint(&directory.onion())
        );
        let proof = NickAuthProof::create(signer, &challenge, &handshake.line).unwrap();
        client.send(&Envelope::new(wire::NICK_AUTH_PROOF, proof.to_line()));
        let result = client.recv().unwrap();
        assert_eq!(result.kind, wire::NICK_AUTH_RESULT);
        let code = NickAuthResult::parse(&result.line).unwrap().code();
        (client, code)
    }

    #[test]
    fn nick_auth_verifies_the_key_and_refuses_another_in_both_modes() {
        let ours = crate::joinmarket::NickIdentity::from_secret_bytes(&[0x11; 32]).unwrap();
        let other = crate::joinmarket::NickIdentity::from_secret_bytes(&[0x12; 32]).unwrap();
        for mode in [NickAuthMode::PreferVerified, NickAuthMode::RequireVerified] {
            let directory = with_nick_auth(mode);
            let (mut client, code) = authenticate(&directory, &ours, &ours);
            assert_eq!(code, NickAuthCode::Ok);
            assert_eq!(directory.peers(), [ours.nick().clone()]);
            client.expect_nothing_queued();
            // Another key for our nick: invalid, closed, never registered.
            let (mut forger, code) = authenticate(&directory, &other, &ours);
            assert_eq!(code, NickAuthCode::Invalid, "{mode}");
            assert_eq!(forger.recv(), None);
            assert_eq!(directory.peers(), [ours.nick().clone()]);
        }
    }

    #[test]
    fn a_verified_client_displaces_an_unverified_holder_of_its_nick() {
        // peer_registry.py: "A verified registration may replace legacy
        // owners"; the displaced link is closed and announced as gone.
        let ours = crate::joinmarket::NickIdentity::from_secret_bytes(&[0x11; 32]).unwrap();
        let directory = regtest();
        let mut watcher = Client::join(&directory, &nick(9));
        let mut squatter = Client::join(&directory, ours.nick());
        // Unverified, the nick stays taken.
        let (mut refused, reply) =
            Client::join_as(&directory, ours.nick(), "NOT-SERVING-ONION", &["ping"]);
        assert_eq!(reply["accepted"], false);
        assert_eq!(refused.recv(), None);
        let (mut client, code) = authenticate(&directory, &ours, &ours);
        assert_eq!(code, NickAuthCode::Ok);
        assert_eq!(squatter.recv(), None, "the holder's link is closed");
        assert_eq!(directory.peers(), [nick(9), ours.nick().clone()]);
        let gone = watcher.recv().unwrap();
        assert_eq!(gone.kind, wire::PEERLIST);
        assert_eq!(gone.line, format!("{};NOT-SERVING-ONION;D", ours.nick()));
        client.expect_nothing_queued();
        watcher.expect_nothing_queued();
    }

    #[test]
    fn require_refuses_a_client_without_the_feature_and_disabled_never_challenges() {
        let directory = with_nick_auth(NickAuthMode::RequireVerified);
        let (mut client, reply) =
            Client::join_as(&directory, &nick(1), "NOT-SERVING-ONION", &["ping"]);
        assert_eq!(reply["accepted"], false);
        assert_eq!(
            reply["motd"],
            "Rejected: verified nick authentication required"
        );
        assert_eq!(client.recv(), None);
        assert!(directory.peers().is_empty());

        let directory = with_nick_auth(NickAuthMode::Disabled);
        let (mut client, reply) =
            Client::join_as(&directory, &nick(2), "NOT-SERVING-ONION", &["nick_auth"]);
        assert_eq!(reply["accepted"], true);
        assert!(reply["features"].get("nick_auth").is_none(), "{reply}");
        // The PONG comes next: no 803 was sent before it.
        client.expect_nothing_queued();
    }

    #[test]
    fn a_silent_client_gets_expired() {
        let mut settings = DirectorySettings::new(Network::Regtest);
        settings.nick_auth_timeout = Duration::from_millis(100);
        let directory = LoopbackDirectory::with_settings(settings).unwrap();
        let (mut client, _) =
            Client::join_as(&directory, &nick(1), "NOT-SERVING-ONION", &["nick_auth"]);
        assert_eq!(client.recv().unwrap().kind, wire::NICK_AUTH_CHALLENGE);
        let result = client.recv().unwrap();
        assert_eq!(
            NickAuthResult::parse(&result.line).unwrap().code(),
            NickAuthCode::Expired
        );
        assert_eq!(client.recv(), None);
    }

    #[test]
    fn a_nick_held_by_a_live_link_is_rejected_and_free_again_once_it_leaves() {
        let directory = regtest();
        let first = Client::join(&directory, &nick(1));
        let (mut second, reply) = Client::join_as(&directory, &nick(1), "NOT-SERVING-ONION", &[]);
        assert_eq!(reply["accepted"], false);
        assert_eq!(
            reply["motd"],
            format!("Rejected: Peer nick already registered: {}", nick(1))
        );
        assert_eq!(second.recv(), None, "closed after the rejection");
        let mut watcher = Client::join(&directory, &nick(2));
        drop(first);
        // The others hear that it left.
        let gone = watcher.recv().unwrap();
        assert_eq!(gone.kind, wire::PEERLIST);
        let entries = parse_peerlist(&gone.line).unwrap();
        assert!(entries.len() == 1 && entries[0].nick == nick(1) && entries[0].disconnected);
        let _again = Client::join(&directory, &nick(1));
    }

    #[test]
    fn a_full_directory_rejects_the_next_peer() {
        let mut settings = DirectorySettings::new(Network::Regtest);
        settings.max_peers = 1;
        let directory = LoopbackDirectory::with_settings(settings).unwrap();
        let _only = Client::join(&directory, &nick(1));
        let (mut next, reply) = Client::join_as(&directory, &nick(2), "NOT-SERVING-ONION", &[]);
        assert_eq!(reply["accepted"], false);
        assert_eq!(reply["motd"], "Rejected: Maximum peers reached: 1");
        assert_eq!(next.recv(), None);
        assert_eq!(directory.peers(), [nick(1)]);
    }

    #[test]
    fn a_public_message_reaches_every_other_peer_and_a_spoofed_one_nobody() {
        let directory = regtest();
        let (a, b, c) = (nick(1), nick(2), nick(3));
        let mut alice = Client::join(&directory, &a);
        let mut bob = Client::join(&directory, &b);
        let mut carol = Client::join(&directory, &c);

        alice.send(&public(&b, "!orderbook"));
        let offer = public(&a, "!sw0reloffer 0 100000 5000000 0 0.00002");
        alice.send(&offer);
        assert_eq!(
            bob.recv(),
            Some(offer.clone()),
            "the spoofed one was dropped"
        );
        assert_eq!(carol.recv(), Some(offer));
        alice.expect_nothing_queued();
        bob.expect_nothing_queued();
        carol.expect_nothing_queued();
    }

    #[test]
    fn a_private_message_goes_to_its_nick_only_with_the_senders_location() {
        let directory = regtest();
        let (a, b, c) = (nick(1), nick(2), nick(3));
        let onion = fake_onion("maker");
        let (mut maker, _) = Client::join_as(
            &directory,
            &a,
            &onion.to_string(),
            &["peerlist_features", "ping"],
        );
        let mut bob = Client::join(&directory, &b);
        let mut carol = Client::join(&directory, &c);

        let fill = private(&a, &b, "!sw0reloffer 0 100000 5000000 0 0.00002");
        maker.send(&private(&a, &nick(9), "!orderbook")); // nobody: dropped
        maker.send(&private(&c, &b, "!orderbook")); // spoofed: dropped
        maker.send(&fill);
        let marker = public(&a, "!orderbook");
        maker.send(&marker);

        assert_eq!(bob.recv(), Some(fill));
        let location = bob.recv().unwrap();
        assert_eq!(location.kind, wire::PEERLIST);
        let entry = &parse_peerlist(&location.line).unwrap()[0];
        assert_eq!(
            (&entry.nick, &entry.location),
            (&a, &Location::Serving(onion))
        );
        assert!(!entry.disconnected);
        assert_eq!(entry.features, ["peerlist_features", "ping"]);
        assert_eq!(bob.recv(), Some(marker.clone()));
        assert_eq!(carol.recv(), Some(marker), "nothing private reached carol");
        maker.expect_nothing_queued();
    }

    #[test]
    fn peer_lists_come_in_chunks_of_20_with_features_for_those_who_ask() {
        let directory = regtest();
        let mut asker = Client::join(&directory, &nick(100));
        let (mut plain, _) =
            Client::join_as(&directory, &nick(101), "NOT-SERVING-ONION", &["ping"]);
        let _others: Vec<Client> = (0..23)
            .map(|n| Client::join(&directory, &nick(n)))
            .collect();
        let everyone = directory.peers();
        assert_eq!(everyone.len(), 25);

        for (client, with_features) in [(&mut asker, true), (&mut plain, false)] {
            client.send(&get_peerlist());
            let mut chunks = Vec::new();
            while chunks.iter().map(Vec::len).sum::<usize>() < everyone.len() {
                let envelope = client.recv().unwrap();
                assert_eq!(envelope.kind, wire::PEERLIST);
                chunks.push(parse_peerlist(&envelope.line).unwrap());
            }
            assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [20, 5]);
            let listed: Vec<Nick> = chunks.concat().into_iter().map(|e| e.nick).collect();
            assert_eq!(listed, everyone, "every peer, the asker included, in order");
            for entry in chunks.concat() {
                let expected: &[&str] = match (with_features, entry.nick == nick(101)) {
                    (false, _) => &[],
                    (true, true) => &["ping"],
                    (true, false) => &["peerlist_features", "ping"],
                };
                assert_eq!(entry.features, expected, "{:?}", entry.nick);
            }
            client.expect_nothing_queued();
        }
    }

    #[test]
    fn an_overlong_line_ends_the_link_and_a_peer_that_does_not_read_is_dropped() {
        let mut settings = DirectorySettings::new(Network::Regtest);
        settings.max_line = 1024;
        settings.outbound_bytes = 64 * 1024;
        let directory = LoopbackDirectory::with_settings(settings).unwrap();
        let mut long = Client::join(&directory, &nick(1));
        long.send_raw(&[b'x'; 2048]);
        assert_eq!(long.recv(), None);

        let (a, b) = (nick(2), nick(3));
        let mut sender = Client::join(&directory, &a);
        let _sleeper = Client::join(&directory, &b); // never reads
        let flood = public(&a, &format!("!x {}", "y".repeat(900)));
        let mut burst: Vec<u8> = std::iter::repeat_n(flood.encode().unwrap(), 64)
            .flatten()
            .collect();
        burst.extend(Envelope::new(wire::PING, "").encode().unwrap());
        // Until the directory gives up on the sleeper: its queue fills once
        // the socket buffers are full.
        let dropped = loop {
            sender.send_raw(&burst);
            let answer = sender.recv().unwrap();
            if answer.kind == wire::PEERLIST {
                break parse_peerlist(&answer.line).unwrap();
            }
            assert_eq!(answer.kind, wire::PONG);
        };
        assert_eq!(dropped[0].nick, b);
        assert!(dropped[0].disconnected);
        assert_eq!(directory.peers(), [a]);
    }

    #[test]
    fn a_dropped_directory_closes_every_link() {
        let directory = regtest();
        let mut alice = Client::join(&directory, &nick(1));
        let mut bob = Client::connect(&directory); // not handshaked yet
        drop(directory);
        assert_eq!(alice.recv(), None);
        assert_eq!(bob.recv(), None);
    }
}
