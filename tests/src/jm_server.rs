//! [`JmDirectory`]: a scriptable, recording loopback server speaking the
//! JoinMarket onion message channel protocol as a directory node.
//!
//! # The protocol
//!
//! Every message is a JSON object `{"type": <int>, "line": <str>}` on one
//! line, terminated by `\r\n` (a bare `\n` is accepted too). A client first
//! sends a handshake ([`JM_HANDSHAKE`]) whose `line` is itself a JSON object
//! (see [`jm_client_handshake`]); the directory answers with its own
//! ([`JM_DN_HANDSHAKE`]), after which messages may flow both ways at any
//! time: peer lists ([`JM_PEERLIST`]), public and private messages
//! ([`JM_PUBMSG`], [`JM_PRIVMSG`]), pings ([`JM_PING`]) that a client must
//! answer with a pong ([`JM_PONG`]).
//!
//! ```
//! use dirpool_tests::{JmBehaviour, JmDirectory, jm_client_handshake, jm_message};
//! use std::io::{BufRead, BufReader, Write};
//! use std::net::TcpStream;
//!
//! let directory = JmDirectory::start(JmBehaviour::default())?;
//! let mut client = TcpStream::connect(directory.addr())?;
//! let handshake = jm_client_handshake("J52N8GdNkKtMA6TW", "regtest");
//! client.write_all(jm_message(793, &handshake.to_string()).as_bytes())?;
//! let mut reply = String::new();
//! BufReader::new(&client).read_line(&mut reply)?;
//! let envelope: serde_json::Value = serde_json::from_str(&reply)?;
//! assert_eq!(envelope["type"], 795);
//! let line: serde_json::Value = serde_json::from_str(envelope["line"].as_str().unwrap())?;
//! assert_eq!(line["accepted"], true);
//! assert_eq!(directory.handshakes()[0].nick, "J52N8GdNkKtMA6TW");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::common::{Ctx, Handler, POLL, ReadEvent, Server, changed, is_timeout, lock, send};
use crate::directory_model::{
    DirectoryConfig, DirectoryLink, DirectoryProfile, DuplicateNick, LineLimit, LinkClose,
    LinkOutput, LinkPeer, LinkRecord, NickAuthServer, WrongNetwork,
};
use dirpool::joinmarket::nick_auth::{
    FEATURE_NICK_AUTH, NickAuthChallenge, NickAuthResult, judge_answer,
};
use dirpool::joinmarket::{NickAuthCode, NickAuthMode, wire};

/// Message type of a private message.
pub const JM_PRIVMSG: u32 = 685;
/// Message type of a public message.
pub const JM_PUBMSG: u32 = 687;
/// Message type of a peer list (`nick;host:port` entries, comma separated;
/// a third field `D` marks a peer that left).
pub const JM_PEERLIST: u32 = 789;
/// Message type of a peer list request.
pub const JM_GETPEERLIST: u32 = 791;
/// Message type of a client's handshake.
pub const JM_HANDSHAKE: u32 = 793;
/// Message type of a directory's handshake reply.
pub const JM_DN_HANDSHAKE: u32 = 795;
/// Message type of a ping (its `line` is empty): 798 in joinmarket-ng
/// (`jmcore/src/jmcore/protocol.py`, moved from 797 by JMP-0004) and
/// joinmarket-rs (`crates/joinmarket-core/src/message.rs`).
pub const JM_PING: u32 = 798;
/// Message type of a pong, the answer to a ping (its `line` is empty).
pub const JM_PONG: u32 = 799;
/// The protocol version a client must announce (`proto-ver`).
pub const JM_PROTO_VER: u64 = 5;
/// The longest line a directory accepts, without its terminator (as the
/// reference directories); a longer one closes the connection.
pub const JM_MAX_LINE: usize = 40_000;
/// The directory's own nick in its replies (by default): `J5`, 12 base58
/// characters, `OO` padding.
pub const JM_DIRECTORY_NICK: &str = "J5TestDxServerOO";
/// The network a [`JmDirectory`] serves unless told otherwise.
pub const JM_DEFAULT_NETWORK: &str = "regtest";
/// The message of the day of an accepting reply unless told otherwise.
pub const JM_DEFAULT_MOTD: &str = "dirpool test directory";

/// The location string of a peer that serves no onion.
const NOT_SERVING_ONION: &str = "NOT-SERVING-ONION";

/// The base58 alphabet (no `0`, `O`, `I`, `l`).
const BASE58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// `true` if `nick` has the shape of a JoinMarket nick: `J5` followed by 14
/// characters, base58 (at least one) right-padded with `O`, the base58
/// decoding to at most 10 bytes, each leading `1` a zero byte (as
/// joinmarket-rs's `Nick::from_str`, `crates/joinmarket-core/src/nick.rs`).
#[must_use]
pub fn is_valid_jm_nick(nick: &str) -> bool {
    let Some(rest) = nick.strip_prefix("J5") else {
        return false;
    };
    let body = rest.trim_end_matches('O');
    if rest.len() != 14 || body.is_empty() || !body.bytes().all(|byte| BASE58.contains(&byte)) {
        return false;
    }
    let zeros = body.bytes().take_while(|&byte| byte == b'1').count();
    let mut value: u128 = 0;
    for byte in body.bytes().skip(zeros) {
        let digit = BASE58.iter().position(|&c| c == byte).unwrap_or(0);
        // 14 digits stay below 58^14 < 2^83: no overflow.
        value = value * 58 + digit as u128;
    }
    let bytes = (128 - value.leading_zeros() as usize).div_ceil(8);
    zeros + bytes <= 10
}

/// One message on the wire: `{"type": <msg_type>, "line": <line>}` followed
/// by `\r\n` (`line` JSON-escaped).
#[must_use]
pub fn jm_message(msg_type: u32, line: &str) -> String {
    format!(
        "{{\"type\": {msg_type}, \"line\": {}}}\r\n",
        Value::String(line.to_owned())
    )
}

/// A valid client handshake (the JSON object sent, as a string, in the
/// `line` of a [`JM_HANDSHAKE`] message) for `nick` on `network`: app-name
/// `joinmarket`, not a directory, location `NOT-SERVING-ONION`, proto-ver 5,
/// features `peerlist_features` and `ping`. Tests can change or remove
/// fields before sending it.
#[must_use]
pub fn jm_client_handshake(nick: &str, network: &str) -> Value {
    serde_json::json!({
        "app-name": "joinmarket",
        "directory": false,
        "location-string": NOT_SERVING_ONION,
        "proto-ver": JM_PROTO_VER,
        "features": {"peerlist_features": true, "ping": true},
        "nick": nick,
        "network": network,
    })
}

/// How an accepting reply announces the protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JmReplyStyle {
    /// One field `proto-ver`.
    Single {
        /// The value of `proto-ver`.
        proto_ver: u32,
    },
    /// Two fields `proto-ver-min` and `proto-ver-max` (what the
    /// `joinmarket-clientserver` directory sends, and its client requires).
    Range {
        /// The value of `proto-ver-min`.
        min: u32,
        /// The value of `proto-ver-max`.
        max: u32,
    },
}

impl Default for JmReplyStyle {
    /// `Range { min: 5, max: 5 }`.
    fn default() -> Self {
        Self::Range { min: 5, max: 5 }
    }
}

/// How the first write after the handshake (the reply and
/// [`then_send`](JmAccept::then_send)) goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SplitReply {
    /// In one write.
    #[default]
    OneWrite,
    /// One byte per write, with `delay` between two bytes.
    ByteByByte {
        /// The pause between two bytes.
        delay: Duration,
    },
}

/// How an accepting directory ([`JmBehaviour::Accept`]) answers and then
/// behaves. Start from [`JmAccept::default`] and change what matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JmAccept {
    /// How the protocol versions are announced (default `Range { 5, 5 }`).
    pub style: JmReplyStyle,
    /// The names in the reply's `features` object, each set to `true`
    /// (default none: `{}`, as the reference directory).
    pub features: Vec<String>,
    /// The reply's `motd`; `None` leaves the field out (default
    /// [`JM_DEFAULT_MOTD`]).
    pub motd: Option<String>,
    /// The reply's `nick` (default [`JM_DIRECTORY_NICK`]).
    pub nick: String,
    /// The reply's `network`; `None` (the default) gives the directory's
    /// configured network (see [`JmDirectory::set_network`]). Set it to
    /// another one for wrong-network tests.
    pub network: Option<String>,
    /// The reply's `location-string`; `None` (the default) leaves the field
    /// out, as the reference directory does.
    pub location: Option<String>,
    /// The message type of the reply (default [`JM_DN_HANDSHAKE`]).
    pub reply_type: u32,
    /// Messages (type, line) sent right after the reply, in the same write.
    pub then_send: Vec<(u32, String)>,
    /// Sends a ping this long after the reply, and again this long after
    /// each pong that answers a ping, up to [`pings`](Self::pings) pings in
    /// all. `None` (the default): no ping.
    pub ping_after: Option<Duration>,
    /// How many pings at most (default 1).
    pub pings: usize,
    /// The message type of a ping (default [`JM_PING`]).
    pub ping_type: u32,
    /// Pings only a client whose handshake advertised the `ping` feature
    /// (default `true`).
    pub ping_only_if_advertised: bool,
    /// Closes the connection (and records a rejection) if a ping is not
    /// answered by a pong within this long. `None` (the default): waits
    /// forever.
    pub pong_timeout: Option<Duration>,
    /// Closes the connection this long after the reply. `None` (the
    /// default): keeps it until the client closes.
    pub drop_after: Option<Duration>,
    /// How the reply is written (default in one write).
    pub split_reply: SplitReply,
}

impl Default for JmAccept {
    fn default() -> Self {
        Self {
            style: JmReplyStyle::default(),
            features: Vec::new(),
            motd: Some(JM_DEFAULT_MOTD.to_owned()),
            nick: JM_DIRECTORY_NICK.to_owned(),
            network: None,
            location: None,
            reply_type: JM_DN_HANDSHAKE,
            then_send: Vec::new(),
            ping_after: None,
            pings: 1,
            ping_type: JM_PING,
            ping_only_if_advertised: true,
            pong_timeout: None,
            drop_after: None,
            split_reply: SplitReply::OneWrite,
        }
    }
}

/// What a [`JmDirectory`] does with a connection once the client's first
/// line has arrived and (in strict mode, see [`JmDirectory::set_strict`])
/// passed validation; an invalid first line is closed without a reply
/// whatever the behaviour. Read when the connection is accepted: changing it
/// affects the following connections only.
///
/// Every behaviour that "holds" reads and discards whatever the client
/// sends (recording nothing) until the client closes, the server drops its
/// connections, or it stops.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "set a few times per test; `Accept(JmAccept { .. })` reads better unboxed"
)]
pub enum JmBehaviour {
    /// Accepts: replies with `accepted: true`, then records every message
    /// (see [`JmAccept`] for pings, drops and other details).
    Accept(JmAccept),
    /// Replies `accepted: false` with this `motd` (otherwise as a default
    /// [`JmAccept`] reply), then closes.
    Reject {
        /// Why the directory refuses.
        motd: String,
    },
    /// Closes without replying.
    CloseWithoutReply,
    /// Never replies; holds.
    Silent,
    /// Sends this text followed by `\r\n` as the reply (e.g. `not json`,
    /// `{"type": 795}`, `[1,2]`), then holds.
    Garbage(String),
    /// Sends a well-formed message of this type whose line is the default
    /// accepting reply (e.g. 687: a reply of the wrong type), then holds.
    WrongType(u32),
    /// Sends this many bytes without a newline (the start of a reply, then
    /// `x`s), then holds.
    Oversize(usize),
    /// Sends exactly these bytes (e.g. invalid UTF-8), then holds.
    Raw(Vec<u8>),
    /// Behaves like a real directory implementation (see [`JmModelled`]).
    Modelled(JmModelled),
}

/// A directory that behaves like a real implementation
/// ([`JmBehaviour::Modelled`]): each accepted connection runs a
/// [`DirectoryLink`] of [`config`](Self::config) (heartbeat, rate limits,
/// answers, reactions), on the real clock.
///
/// Before the link: the reply advertises the profile's features (ng and rs
/// `peerlist_features` and `ping`, the reference none), lines are limited as
/// the profile does ([`DirectoryConfig::line_limit`]), and a handshake whose
/// nick has another modelled connection open here gets the profile's
/// [`DuplicateNick`] treatment (ng: `accepted: false` with motd `Rejected:
/// Peer nick already registered: <nick>`, then close; rs: close without a
/// reply; both recorded in [`JmDirectory::rejections`]; the reference:
/// accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JmModelled {
    /// The model's configuration (profile, timings, limits, peer list).
    pub config: DirectoryConfig,
    /// The path goes silent this long after the accepting reply: from then
    /// on the directory neither reads nor writes (the model stops too), and
    /// keeps the socket open until the client closes it, the server drops
    /// its connections, or it stops. See also
    /// [`JmDirectory::silence_links`].
    pub silent_after: Option<Duration>,
    /// After the reply, sends public messages of this many bytes each
    /// (`\r\n` included; at least 27) as fast as the socket takes them,
    /// reading nothing, until the client closes, the server drops its
    /// connections, or it stops (see [`JmDirectory::flood_lines`]).
    pub flood: Option<usize>,
}

impl JmModelled {
    /// `profile` with its real defaults, nick [`JM_DIRECTORY_NICK`].
    #[must_use]
    pub fn new(profile: DirectoryProfile) -> Self {
        Self::with_config(DirectoryConfig::new(profile, JM_DIRECTORY_NICK))
    }

    /// This configuration, neither silent nor flooding.
    #[must_use]
    pub fn with_config(config: DirectoryConfig) -> Self {
        Self {
            config,
            silent_after: None,
            flood: None,
        }
    }
}

impl Default for JmBehaviour {
    /// `Accept(JmAccept::default())`.
    fn default() -> Self {
        Self::Accept(JmAccept::default())
    }
}

/// A client handshake as received (recorded whenever the first message is
/// of type [`JM_HANDSHAKE`] and its line a JSON object, valid or not).
///
/// The typed fields are read leniently: a missing field or one of the wrong
/// type gives an empty string (`None` for `proto_ver`, no names for
/// `features`); `problem` says whether the handshake is valid.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientHandshake {
    /// The handshake line as parsed JSON.
    pub raw: Value,
    /// `nick`.
    pub nick: String,
    /// `network`.
    pub network: String,
    /// `location-string`.
    pub location: String,
    /// `proto-ver`, if it is a non-negative integer.
    pub proto_ver: Option<u64>,
    /// The names in `features` whose value is `true`, sorted.
    pub features: Vec<String>,
    /// Why a strict directory refuses it (`None` if valid); the same text
    /// as in [`JmDirectory::rejections`].
    pub problem: Option<String>,
}

impl ClientHandshake {
    fn from_raw(raw: Value, problem: Option<String>) -> Self {
        let text = |name: &str| raw[name].as_str().unwrap_or_default().to_owned();
        let features = raw["features"]
            .as_object()
            .map(|features| {
                features
                    .iter()
                    .filter(|(_, value)| value.as_bool() == Some(true))
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default();
        Self {
            nick: text("nick"),
            network: text("network"),
            location: text("location-string"),
            proto_ver: raw["proto-ver"].as_u64(),
            features,
            problem,
            raw,
        }
    }

    /// `true` if the client advertised `feature`.
    #[must_use]
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|name| name == feature)
    }
}

/// State shared with the connection threads.
#[derive(Debug)]
struct State {
    behaviour: Mutex<JmBehaviour>,
    strict: AtomicBool,
    network: Mutex<String>,
    handshakes: Mutex<Vec<ClientHandshake>>,
    received: Mutex<Vec<(u32, String)>>,
    rejections: Mutex<Vec<String>>,
    pongs: AtomicUsize,
    /// Writers of the connections that got an accepting reply.
    sessions: Mutex<HashMap<u64, Arc<Mutex<TcpStream>>>>,
    next_session: AtomicU64,
    /// The phase of the modelled heartbeat sweeps.
    started: Instant,
    /// What every modelled link did, in the order they opened.
    links: Mutex<Vec<LinkRecord>>,
    /// Open modelled connections per nick.
    nicks: Mutex<HashMap<String, usize>>,
    /// Incremented by [`JmDirectory::silence_links`].
    silence: AtomicU64,
    /// Modelled connections that went silent so far.
    silenced: AtomicU64,
    /// Whole lines sent by flooding connections.
    flood_lines: AtomicU64,
    /// Nick-auth messages (803, 807) sent by modelled links.
    nick_auth_sent: Mutex<Vec<(u32, String)>>,
}

impl State {
    fn new(behaviour: JmBehaviour) -> Self {
        Self {
            behaviour: Mutex::new(behaviour),
            strict: AtomicBool::new(true),
            network: Mutex::new(JM_DEFAULT_NETWORK.to_owned()),
            handshakes: Mutex::new(Vec::new()),
            received: Mutex::new(Vec::new()),
            rejections: Mutex::new(Vec::new()),
            pongs: AtomicUsize::new(0),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(0),
            started: Instant::now(),
            links: Mutex::new(Vec::new()),
            nicks: Mutex::new(HashMap::new()),
            silence: AtomicU64::new(0),
            silenced: AtomicU64::new(0),
            flood_lines: AtomicU64::new(0),
            nick_auth_sent: Mutex::new(Vec::new()),
        }
    }

    fn reject(&self, why: String) {
        lock(&self.rejections).push(why);
    }

    fn register_session(&self, writer: &Arc<Mutex<TcpStream>>) -> SessionGuard<'_> {
        let id = self.next_session.fetch_add(1, Ordering::SeqCst);
        lock(&self.sessions).insert(id, Arc::clone(writer));
        SessionGuard { state: self, id }
    }
}

/// Keeps an accepted connection reachable by [`JmDirectory::broadcast`];
/// removes it on drop.
struct SessionGuard<'a> {
    state: &'a State,
    id: u64,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        let removed = lock(&self.state.sessions).remove(&self.id);
        drop(removed);
    }
}

/// A scriptable, recording JoinMarket directory node on a free `127.0.0.1`
/// port (see the [crate documentation](crate#ports)).
///
/// It validates the client's handshake like a strict reference directory
/// (see [`set_strict`](Self::set_strict)), then follows its
/// [`JmBehaviour`]. It records every handshake, every message received
/// after an accepting reply, every pong, and why it closed a connection on
/// its own. It runs on plain std threads (blocking I/O, no async runtime),
/// can be stopped and restarted on the same port, started late, and told to
/// drop its connections, as [`LineServer`](crate::LineServer). Dropping it
/// closes the listener and every connection and joins every thread.
pub struct JmDirectory {
    server: Server,
    state: Arc<State>,
}

impl fmt::Debug for JmDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JmDirectory")
            .field("server", &self.server)
            .field("behaviour", &self.behaviour())
            .field("strict", &self.strict())
            .field("network", &self.network())
            .finish_non_exhaustive()
    }
}

impl JmDirectory {
    /// Binds a free loopback port and starts serving, strict, on
    /// [`JM_DEFAULT_NETWORK`].
    ///
    /// # Errors
    ///
    /// If the listener cannot be bound or its thread not spawned.
    pub fn start(behaviour: JmBehaviour) -> io::Result<Self> {
        let state = Arc::new(State::new(behaviour));
        let server = Server::start(handler(&state))?;
        Ok(Self { server, state })
    }

    /// Plans a free loopback address now and starts listening on it only
    /// after `delay`, in the background (see
    /// [`LineServer::start_after`](crate::LineServer::start_after)).
    ///
    /// # Errors
    ///
    /// If no port can be reserved or the background thread not spawned.
    pub fn start_after(behaviour: JmBehaviour, delay: Duration) -> io::Result<Self> {
        let state = Arc::new(State::new(behaviour));
        let server = Server::start_after(handler(&state), delay)?;
        Ok(Self { server, state })
    }

    /// The number of connections open now that got an accepting reply (the
    /// ones [`broadcast`](Self::broadcast) reaches).
    #[must_use]
    pub fn handshaked_connections(&self) -> usize {
        lock(&self.state.sessions).len()
    }

    /// The behaviour for new connections.
    #[must_use]
    pub fn behaviour(&self) -> JmBehaviour {
        lock(&self.state.behaviour).clone()
    }

    /// Sets the behaviour for the connections accepted from now on.
    pub fn set_behaviour(&self, behaviour: JmBehaviour) {
        *lock(&self.state.behaviour) = behaviour;
    }

    /// `true` (the default) if invalid handshakes and malformed messages
    /// close the connection.
    #[must_use]
    pub fn strict(&self) -> bool {
        self.state.strict.load(Ordering::SeqCst)
    }

    /// Strict (the default): the first message must be a valid handshake
    /// (type [`JM_HANDSHAKE`]; its line a JSON object with `app-name`
    /// `"joinmarket"`, `directory` `false`, `location-string`
    /// `NOT-SERVING-ONION` or `host:port`, `proto-ver` 5, `features` an
    /// object, `nick` of the right shape (see [`is_valid_jm_nick`]),
    /// `network` the directory's), else the connection is closed without a
    /// reply and the reason recorded (see [`rejections`](Self::rejections));
    /// later, a message that is not a `{"type": int, "line": str}` object
    /// closes the connection too. Not strict: any first line is taken as the
    /// handshake, and malformed messages are ignored. Lines over
    /// [`JM_MAX_LINE`] bytes close the connection either way. Applies to the
    /// connections accepted from now on.
    pub fn set_strict(&self, strict: bool) {
        self.state.strict.store(strict, Ordering::SeqCst);
    }

    /// The network this directory serves.
    #[must_use]
    pub fn network(&self) -> String {
        lock(&self.state.network).clone()
    }

    /// Sets the network served (a client's handshake must name it, and the
    /// replies carry it), for the connections accepted from now on.
    pub fn set_network(&self, network: impl Into<String>) {
        *lock(&self.state.network) = network.into();
    }

    /// Every client handshake received so far, in order (see
    /// [`ClientHandshake`]).
    #[must_use]
    pub fn handshakes(&self) -> Vec<ClientHandshake> {
        lock(&self.state.handshakes).clone()
    }

    /// Every message (type, line) received after an accepting reply, from
    /// every connection, in order of arrival (pongs included).
    #[must_use]
    pub fn received(&self) -> Vec<(u32, String)> {
        lock(&self.state.received).clone()
    }

    /// The nick-auth messages (type, line) modelled links sent: challenges
    /// (803) and results (807), in order. The proofs received (805) are in
    /// [`received`](Self::received).
    #[must_use]
    pub fn nick_auth_sent(&self) -> Vec<(u32, String)> {
        lock(&self.state.nick_auth_sent).clone()
    }

    /// The number of pongs received (answering a ping or not).
    #[must_use]
    pub fn pongs(&self) -> usize {
        self.state.pongs.load(Ordering::SeqCst)
    }

    /// Why the directory closed connections on its own, in order: invalid
    /// handshakes (e.g. ``bad nick `J5x` ``, ``missing field `network` ``,
    /// ``network `mainnet` is not `regtest` ``, `first message has type 687,
    /// not 793`), lines over the limit (`line over 40000 bytes`), malformed
    /// messages, unanswered pings (`no PONG within ...`). Recorded before
    /// the connection is closed. Closes asked for by the behaviour
    /// (`drop_after`, `Reject`, `CloseWithoutReply`) are not rejections.
    #[must_use]
    pub fn rejections(&self) -> Vec<String> {
        lock(&self.state.rejections).clone()
    }

    /// Forgets the recorded handshakes, messages, pongs and rejections.
    pub fn clear_records(&self) {
        lock(&self.state.handshakes).clear();
        lock(&self.state.received).clear();
        lock(&self.state.rejections).clear();
        self.state.pongs.store(0, Ordering::SeqCst);
        changed();
    }

    /// What every [`JmBehaviour::Modelled`] link did (open or closed), in
    /// the order they opened: pings sent, pongs received, its close.
    #[must_use]
    pub fn link_records(&self) -> Vec<LinkRecord> {
        lock(&self.state.links).clone()
    }

    /// The evictions (pong timeout, hard idle, rate limit) of the modelled
    /// links so far: the client's nick and the close.
    #[must_use]
    pub fn evictions(&self) -> Vec<(String, LinkClose)> {
        lock(&self.state.links)
            .iter()
            .filter_map(|record| Some((record.nick.clone(), record.eviction()?)))
            .collect()
    }

    /// Heartbeat PINGs sent by the modelled links so far.
    #[must_use]
    pub fn pings_sent(&self) -> usize {
        lock(&self.state.links)
            .iter()
            .map(|record| record.pings_sent.len())
            .sum()
    }

    /// PONGs received by the modelled links so far.
    #[must_use]
    pub fn pongs_received(&self) -> usize {
        lock(&self.state.links)
            .iter()
            .map(|record| record.pongs_received.len())
            .sum()
    }

    /// Makes every modelled connection open now go silent (see
    /// [`JmModelled::silent_after`]); later connections are not affected.
    pub fn silence_links(&self) {
        self.state.silence.fetch_add(1, Ordering::SeqCst);
        changed();
    }

    /// Modelled connections that have gone silent so far (by
    /// [`JmModelled::silent_after`] or [`silence_links`](Self::silence_links)),
    /// for a test to wait on instead of a time window.
    #[must_use]
    pub fn silenced_links(&self) -> u64 {
        self.state.silenced.load(Ordering::SeqCst)
    }

    /// Whole lines sent so far by flooding connections
    /// ([`JmModelled::flood`]).
    #[must_use]
    pub fn flood_lines(&self) -> u64 {
        self.state.flood_lines.load(Ordering::SeqCst)
    }

    /// Sends one message to every connection that got an accepting reply
    /// and is still open (e.g. a peer list update, [`JM_PEERLIST`] with
    /// line `nick;host:port`); returns how many it was written to.
    pub fn broadcast(&self, msg_type: u32, line: &str) -> usize {
        let writers: Vec<_> = lock(&self.state.sessions).values().cloned().collect();
        let message = jm_message(msg_type, line);
        writers
            .iter()
            .filter(|writer| send(&mut lock(writer), message.as_bytes()).is_ok())
            .count()
    }
}

/// What a connection is served with: the settings when it was accepted.
struct Snapshot {
    behaviour: JmBehaviour,
    strict: bool,
    network: String,
}

fn handler(state: &Arc<State>) -> Handler {
    let state = Arc::clone(state);
    Arc::new(move |stream, ctx| {
        let snapshot = Snapshot {
            behaviour: lock(&state.behaviour).clone(),
            strict: state.strict.load(Ordering::SeqCst),
            network: lock(&state.network).clone(),
        };
        serve(&state, &snapshot, stream, ctx);
    })
}

/// What reading a line gave.
enum LineEvent {
    /// A line, without its `\n` nor a `\r` before it.
    Line(Vec<u8>),
    /// Over [`JM_MAX_LINE`] bytes.
    TooLong,
    /// The peer closed, or the server is stopping.
    Closed,
    /// The deadline passed.
    Deadline,
}

/// Splits the received bytes into lines.
struct LineReader {
    pending: Vec<u8>,
    chunk: Vec<u8>,
    limit: LineLimit,
}

impl LineReader {
    fn new(limit: LineLimit) -> Self {
        Self {
            pending: Vec::new(),
            chunk: vec![0; 8192],
            limit,
        }
    }

    fn next(&mut self, stream: &mut TcpStream, ctx: &Ctx, deadline: Option<Instant>) -> LineEvent {
        if deadline.is_none() {
            // A read with a deadline may have left a shorter timeout.
            let _ = stream.set_read_timeout(Some(POLL));
        }
        loop {
            if let Some(end) = self.pending.iter().position(|&byte| byte == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                let mut terminator = 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                    terminator = 2;
                }
                if !self.limit.allows(line.len(), terminator) {
                    return LineEvent::TooLong;
                }
                return LineEvent::Line(line);
            }
            if self.pending.len() > self.limit.max_pending() {
                return LineEvent::TooLong;
            }
            match ctx.read_event(stream, &mut self.chunk, deadline) {
                ReadEvent::Data(n) => self.pending.extend_from_slice(&self.chunk[..n]),
                ReadEvent::Closed => return LineEvent::Closed,
                ReadEvent::Deadline => return LineEvent::Deadline,
            }
        }
    }
}

/// Parses a message `{"type": int, "line": str}`.
fn parse_message(line: &[u8]) -> Result<(u32, String), String> {
    let value: Value =
        serde_json::from_slice(line).map_err(|_| "malformed message: not JSON".to_owned())?;
    let Some(object) = value.as_object() else {
        return Err("malformed message: not a JSON object".to_owned());
    };
    let msg_type = object
        .get("type")
        .and_then(Value::as_u64)
        .and_then(|msg_type| u32::try_from(msg_type).ok())
        .ok_or_else(|| "malformed message: no integer `type`".to_owned())?;
    let text = object
        .get("line")
        .and_then(Value::as_str)
        .ok_or_else(|| "malformed message: no string `line`".to_owned())?;
    Ok((msg_type, text.to_owned()))
}

/// Reads the first line as a handshake: the parsed handshake (if the
/// message is a handshake whose line is a JSON object) and the verdict.
fn read_handshake(line: &[u8], network: &str) -> (Option<Value>, Result<(), String>) {
    let (msg_type, text) = match parse_message(line) {
        Ok(message) => message,
        Err(why) => return (None, Err(why)),
    };
    if msg_type != JM_HANDSHAKE {
        return (
            None,
            Err(format!(
                "first message has type {msg_type}, not {JM_HANDSHAKE}"
            )),
        );
    }
    let raw = match serde_json::from_str::<Value>(&text) {
        Ok(raw) if raw.is_object() => raw,
        _ => return (None, Err("handshake line is not a JSON object".to_owned())),
    };
    let verdict = validate(&raw, network);
    (Some(raw), verdict)
}

/// Checks a client handshake as a strict directory.
fn validate(raw: &Value, network: &str) -> Result<(), String> {
    let field = |name: &str| {
        raw.get(name)
            .ok_or_else(|| format!("missing field `{name}`"))
    };
    let string = |name: &str| {
        field(name)?
            .as_str()
            .ok_or_else(|| format!("field `{name}` is not a string"))
    };
    let app_name = string("app-name")?;
    let directory = field("directory")?
        .as_bool()
        .ok_or_else(|| "field `directory` is not a boolean".to_owned())?;
    let location = string("location-string")?;
    let proto_ver = field("proto-ver")?;
    if !proto_ver.is_u64() && !proto_ver.is_i64() {
        return Err("field `proto-ver` is not an integer".to_owned());
    }
    if !field("features")?.is_object() {
        return Err("field `features` is not an object".to_owned());
    }
    let nick = string("nick")?;
    let client_network = string("network")?;

    if app_name != "joinmarket" {
        return Err(format!("app-name `{app_name}` is not `joinmarket`"));
    }
    if directory {
        return Err("client claims to be a directory".to_owned());
    }
    if proto_ver.as_u64() != Some(JM_PROTO_VER) {
        return Err(format!("proto-ver {proto_ver} is not {JM_PROTO_VER}"));
    }
    if !is_valid_location(location) {
        return Err(format!("bad location-string `{location}`"));
    }
    if !is_valid_jm_nick(nick) {
        return Err(format!("bad nick `{nick}`"));
    }
    if client_network != network {
        return Err(format!("network `{client_network}` is not `{network}`"));
    }
    Ok(())
}

/// `NOT-SERVING-ONION` or `host:port` (non-empty host, port 1–65535).
fn is_valid_location(location: &str) -> bool {
    location == NOT_SERVING_ONION
        || location.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port != 0)
        })
}

/// The directory's handshake line (a JSON object, as a string).
fn reply_line(accept: &JmAccept, network: &str, accepted: bool) -> String {
    let mut reply = Map::new();
    reply.insert("app-name".into(), "joinmarket".into());
    reply.insert("directory".into(), true.into());
    if let Some(location) = &accept.location {
        reply.insert("location-string".into(), location.as_str().into());
    }
    match accept.style {
        JmReplyStyle::Single { proto_ver } => {
            reply.insert("proto-ver".into(), proto_ver.into());
        }
        JmReplyStyle::Range { min, max } => {
            reply.insert("proto-ver-min".into(), min.into());
            reply.insert("proto-ver-max".into(), max.into());
        }
    }
    let features: Map<String, Value> = accept
        .features
        .iter()
        .map(|name| (name.clone(), Value::Bool(true)))
        .collect();
    reply.insert("features".into(), features.into());
    reply.insert("accepted".into(), accepted.into());
    reply.insert("nick".into(), accept.nick.as_str().into());
    let network = accept.network.as_deref().unwrap_or(network);
    reply.insert("network".into(), network.into());
    if let Some(motd) = &accept.motd {
        reply.insert("motd".into(), motd.as_str().into());
    }
    Value::Object(reply).to_string()
}

/// The limit of the default behaviours: [`JM_MAX_LINE`], terminator not
/// counted.
const DEFAULT_LIMIT: LineLimit = LineLimit {
    max: JM_MAX_LINE,
    terminator_counts: false,
};

fn serve(state: &State, snapshot: &Snapshot, mut stream: TcpStream, ctx: &Ctx) {
    let limit = match &snapshot.behaviour {
        JmBehaviour::Modelled(modelled) => modelled.config.line_limit,
        _ => DEFAULT_LIMIT,
    };
    let mut reader = LineReader::new(limit);
    let first = match reader.next(&mut stream, ctx, None) {
        LineEvent::Line(line) => line,
        LineEvent::TooLong => {
            state.reject(format!("line over {} bytes", limit.max));
            ctx.close_gracefully(stream);
            return;
        }
        LineEvent::Closed | LineEvent::Deadline => return,
    };
    let (raw, verdict) = read_handshake(&first, &snapshot.network);
    let mut pingable = false;
    let mut peer = LinkPeer {
        nick: String::new(),
        supports_ping: false,
        is_maker: false,
    };
    let mut client_network = None;
    let mut client = NickAuthClient {
        line: parse_message(&first)
            .map(|(_, text)| text)
            .unwrap_or_default(),
        offers: false,
    };
    if let Some(raw) = raw {
        client_network = raw
            .get("network")
            .and_then(Value::as_str)
            .map(str::to_owned);
        peer = LinkPeer::from_handshake(&raw);
        let handshake = ClientHandshake::from_raw(raw, verdict.clone().err());
        pingable = handshake.has_feature("ping");
        client.offers = handshake.has_feature(FEATURE_NICK_AUTH);
        lock(&state.handshakes).push(handshake);
    }
    if let (JmBehaviour::Modelled(modelled), Some(theirs)) = (&snapshot.behaviour, &client_network)
    {
        let profile = modelled.config.profile;
        if *theirs != snapshot.network && profile.wrong_network() == WrongNetwork::RejectNamingOwn {
            state.reject(format!("network `{theirs}` is not `{}`", snapshot.network));
            let accept = JmAccept {
                nick: modelled.config.nick.clone(),
                ..JmAccept::default()
            };
            let reply = jm_message(
                JM_DN_HANDSHAKE,
                &reply_line(&accept, &snapshot.network, false),
            );
            if send(&mut stream, reply.as_bytes()).is_ok() {
                ctx.close_gracefully(stream);
            }
            return;
        }
    }
    if let Err(why) = verdict {
        if snapshot.strict {
            state.reject(why);
            ctx.close_gracefully(stream);
            return;
        }
    }
    let network = snapshot.network.as_str();
    let held = match &snapshot.behaviour {
        JmBehaviour::Accept(accept) => {
            let session = Session {
                state,
                ctx,
                accept,
                strict: snapshot.strict,
            };
            session.run(stream, reader, network, pingable);
            return;
        }
        JmBehaviour::Modelled(modelled) => {
            serve_modelled(state, ctx, modelled, stream, reader, network, peer, &client);
            return;
        }
        JmBehaviour::Reject { motd } => {
            let accept = JmAccept {
                motd: Some(motd.clone()),
                ..JmAccept::default()
            };
            let reply = jm_message(JM_DN_HANDSHAKE, &reply_line(&accept, network, false));
            if send(&mut stream, reply.as_bytes()).is_ok() {
                ctx.close_gracefully(stream);
            }
            return;
        }
        JmBehaviour::CloseWithoutReply => {
            ctx.close_gracefully(stream);
            return;
        }
        JmBehaviour::Silent => Vec::new(),
        JmBehaviour::Garbage(text) => format!("{text}\r\n").into_bytes(),
        JmBehaviour::WrongType(msg_type) => {
            jm_message(*msg_type, &reply_line(&JmAccept::default(), network, true)).into_bytes()
        }
        JmBehaviour::Oversize(len) => oversize(*len),
        JmBehaviour::Raw(bytes) => bytes.clone(),
    };
    if held.is_empty() || send(&mut stream, &held).is_ok() {
        ctx.hold(&mut stream);
    }
}

/// `len` bytes: the start of a reply, then `x`s, no newline.
fn oversize(len: usize) -> Vec<u8> {
    let mut bytes = b"{\"type\": 795, \"line\": \"".to_vec();
    bytes.resize(len, b'x');
    bytes
}

/// Waits `duration`; `false` if the connection closed (or was shut down)
/// or the server is stopping meanwhile. Does not consume received bytes.
fn pause(stream: &TcpStream, ctx: &Ctx, duration: Duration) -> bool {
    let end = Instant::now() + duration;
    let mut byte = [0u8; 1];
    let open = loop {
        if ctx.stopping() {
            break false;
        }
        let now = Instant::now();
        if now >= end {
            break true;
        }
        let wait = (end - now).clamp(Duration::from_millis(1), POLL);
        if stream.set_read_timeout(Some(wait)).is_err() {
            break false;
        }
        match stream.peek(&mut byte) {
            Ok(0) => break false,
            // Bytes wait to be read later, and a close behind them raises
            // nothing a peek can see: look again after `wait` (up to `end`).
            Ok(_) => thread::sleep(wait),
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break false,
        }
    };
    open && stream.set_read_timeout(Some(POLL)).is_ok()
}

/// An accepted connection.
struct Session<'a> {
    state: &'a State,
    ctx: &'a Ctx,
    accept: &'a JmAccept,
    strict: bool,
}

impl Session<'_> {
    /// Replies, then reads and records messages, pinging and dropping as
    /// told, until the client closes or something closes the connection.
    fn run(&self, mut stream: TcpStream, mut reader: LineReader, network: &str, pingable: bool) {
        let accept = self.accept;
        let mut first_write =
            jm_message(accept.reply_type, &reply_line(accept, network, true)).into_bytes();
        for (msg_type, line) in &accept.then_send {
            first_write.extend_from_slice(jm_message(*msg_type, line).as_bytes());
        }
        let Ok(clone) = stream.try_clone() else {
            return;
        };
        let writer = Arc::new(Mutex::new(clone));
        let written = match accept.split_reply {
            SplitReply::OneWrite => send(&mut lock(&writer), &first_write).is_ok(),
            SplitReply::ByteByByte { delay } => {
                let mut writer = lock(&writer);
                first_write.iter().enumerate().all(|(i, byte)| {
                    (i == 0 || pause(&stream, self.ctx, delay))
                        && send(&mut writer, &[*byte]).is_ok()
                })
            }
        };
        if !written {
            return;
        }
        let session = self.state.register_session(&writer);
        let replied = Instant::now();
        let drop_at = accept.drop_after.map(|delay| replied + delay);
        let pinging = accept.pings > 0 && (pingable || !accept.ping_only_if_advertised);
        let mut next_ping = accept
            .ping_after
            .filter(|_| pinging)
            .map(|delay| replied + delay);
        let mut pings_sent = 0;
        let mut pong_deadline: Option<Instant> = None;
        let mut awaiting_pong = false;
        loop {
            let deadline = [drop_at, next_ping, pong_deadline]
                .into_iter()
                .flatten()
                .min();
            match reader.next(&mut stream, self.ctx, deadline) {
                LineEvent::Line(line) => match parse_message(&line) {
                    Ok((msg_type, text)) => {
                        lock(&self.state.received).push((msg_type, text));
                        if msg_type == JM_PONG {
                            self.state.pongs.fetch_add(1, Ordering::SeqCst);
                            changed();
                            if awaiting_pong {
                                awaiting_pong = false;
                                pong_deadline = None;
                                if pings_sent < accept.pings {
                                    next_ping =
                                        accept.ping_after.map(|delay| Instant::now() + delay);
                                }
                            }
                        }
                    }
                    Err(why) if self.strict => {
                        self.state.reject(why);
                        break;
                    }
                    Err(_) => {}
                },
                LineEvent::TooLong => {
                    self.state.reject(format!("line over {JM_MAX_LINE} bytes"));
                    break;
                }
                LineEvent::Closed => return,
                LineEvent::Deadline => {
                    let now = Instant::now();
                    if drop_at.is_some_and(|at| now >= at) {
                        break;
                    }
                    if pong_deadline.is_some_and(|at| now >= at) {
                        let timeout = accept.pong_timeout.unwrap_or_default();
                        self.state.reject(format!("no PONG within {timeout:?}"));
                        break;
                    }
                    if next_ping.is_some_and(|at| now >= at) {
                        next_ping = None;
                        let ping = jm_message(accept.ping_type, "");
                        if send(&mut lock(&writer), ping.as_bytes()).is_err() {
                            return;
                        }
                        pings_sent += 1;
                        awaiting_pong = true;
                        pong_deadline = accept.pong_timeout.map(|timeout| now + timeout);
                    }
                }
            }
        }
        drop(session);
        drop(writer);
        self.ctx.close_gracefully(stream);
    }
}

/// Removes one open modelled connection of a nick on drop.
struct NickGuard<'a> {
    state: &'a State,
    nick: String,
}

impl Drop for NickGuard<'_> {
    fn drop(&mut self) {
        let mut nicks = lock(&self.state.nicks);
        if let Some(count) = nicks.get_mut(&self.nick) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                nicks.remove(&self.nick);
            }
        }
    }
}

/// What nick authentication needs of the client's handshake.
struct NickAuthClient {
    /// Its 793 `line`, exactly as received (what the proof signs).
    line: String,
    /// It advertised `nick_auth`.
    offers: bool,
}

/// A [`JmBehaviour::Modelled`] connection after a valid handshake.
#[allow(clippy::too_many_arguments)]
fn serve_modelled(
    state: &State,
    ctx: &Ctx,
    modelled: &JmModelled,
    mut stream: TcpStream,
    mut reader: LineReader,
    network: &str,
    peer: LinkPeer,
    client: &NickAuthClient,
) {
    let generation = ctx.drop_generation();
    let silence = state.silence.load(Ordering::SeqCst);
    let profile = modelled.config.profile;
    let nick_auth = modelled.config.nick_auth_server();
    let mut accept = JmAccept {
        features: profile
            .features()
            .iter()
            .map(|&name| name.to_owned())
            .collect(),
        nick: modelled.config.nick.clone(),
        ..JmAccept::default()
    };
    if nick_auth.is_some() {
        accept.features.push(FEATURE_NICK_AUTH.to_owned());
    }
    // ng's `process_handshake`: require refuses a client that does not
    // negotiate, with an `accepted: false` reply.
    if nick_auth.is_some_and(|auth| auth.mode == NickAuthMode::RequireVerified) && !client.offers {
        let motd = DirectoryProfile::NICK_AUTH_REQUIRED_MOTD.to_owned();
        state.reject(motd.clone());
        let accept = JmAccept {
            motd: Some(motd),
            ..accept
        };
        let reply = jm_message(JM_DN_HANDSHAKE, &reply_line(&accept, network, false));
        if send(&mut stream, reply.as_bytes()).is_ok() {
            ctx.close_gracefully(stream);
        }
        return;
    }
    let duplicate = {
        let mut nicks = lock(&state.nicks);
        let open = nicks.entry(peer.nick.clone()).or_default();
        let duplicate = *open > 0 && profile.duplicate_nick() != DuplicateNick::Accept;
        if !duplicate {
            *open += 1;
        }
        duplicate
    };
    if duplicate {
        if profile.duplicate_nick() == DuplicateNick::RejectWithMotd {
            let motd = DirectoryProfile::duplicate_nick_motd(&peer.nick);
            state.reject(motd.clone());
            let accept = JmAccept {
                motd: Some(motd),
                ..accept
            };
            let reply = jm_message(JM_DN_HANDSHAKE, &reply_line(&accept, network, false));
            if send(&mut stream, reply.as_bytes()).is_err() {
                return;
            }
        } else {
            state.reject(format!("nick already connected: {}", peer.nick));
        }
        ctx.close_gracefully(stream);
        return;
    }
    let nick = NickGuard {
        state,
        nick: peer.nick.clone(),
    };
    let reply = jm_message(JM_DN_HANDSHAKE, &reply_line(&accept, network, true));
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let writer = Arc::new(Mutex::new(clone));
    if send(&mut lock(&writer), reply.as_bytes()).is_err() {
        return;
    }
    if let Some(auth) = nick_auth.filter(|_| client.offers) {
        if !authenticate(
            state,
            ctx,
            auth,
            &writer,
            &mut stream,
            &mut reader,
            &peer,
            client,
        ) {
            drop(writer);
            ctx.close_gracefully(stream);
            return;
        }
    }
    // The nick is freed before the session goes (a tuple drops its fields
    // in order): a link `handshaked_connections` no longer counts never
    // still holds its nick, so a test that waits for the count can
    // handshake the same nick again at once.
    let session = (nick, state.register_session(&writer));
    let replied = Instant::now();
    let mut link = DirectoryLink::new(modelled.config.clone(), peer, state.started, replied);
    let index = {
        let mut links = lock(&state.links);
        links.push(link.record().clone());
        links.len() - 1
    };
    let dropped = || ctx.stopping() || ctx.drop_generation() != generation;
    if let Some(len) = modelled.flood {
        flood(state, &writer, len, &dropped);
        drop(session);
        return;
    }
    let silent_at = modelled.silent_after.map(|after| replied + after);
    let mut close = false;
    loop {
        let now = Instant::now();
        if silent_at.is_some_and(|at| now >= at) || state.silence.load(Ordering::SeqCst) != silence
        {
            state.silenced.fetch_add(1, Ordering::SeqCst);
            changed();
            hold_silently(&stream, &dropped);
            drop(session);
            return;
        }
        // Wakes at least every POLL to notice `silence_links`.
        let deadline = [link.poll_timeout(), silent_at, Some(now + POLL)]
            .into_iter()
            .flatten()
            .min();
        match reader.next(&mut stream, ctx, deadline) {
            LineEvent::Line(line) => {
                if let Ok((msg_type, text)) = parse_message(&line) {
                    if msg_type == JM_PONG {
                        state.pongs.fetch_add(1, Ordering::SeqCst);
                        changed();
                    }
                    lock(&state.received).push((msg_type, text));
                }
                link.handle_line(Instant::now(), &line);
            }
            LineEvent::TooLong => link.handle_line_too_long(Instant::now()),
            LineEvent::Closed => break,
            LineEvent::Deadline => link.handle_timeout(Instant::now()),
        }
        while let Some(output) = link.poll_output() {
            match output {
                LinkOutput::Send(message) => {
                    if send(&mut lock(&writer), message.as_bytes()).is_err() {
                        close = true;
                    }
                }
                LinkOutput::Close(reason) => {
                    state.reject(reason.to_string());
                    close = true;
                }
            }
        }
        lock(&state.links)[index] = link.record().clone();
        if close {
            break;
        }
    }
    lock(&state.links)[index] = link.record().clone();
    drop(session);
    drop(writer);
    if close {
        ctx.close_gracefully(stream);
    }
}

/// ng's `_perform_nick_auth` after the accepting reply: a challenge, the
/// proof within the timeout, a result. `true` when verified (the link goes
/// on); otherwise the result (`expired`, `malformed`, `invalid`) has been
/// sent and the caller closes.
#[allow(clippy::too_many_arguments)]
fn authenticate(
    state: &State,
    ctx: &Ctx,
    auth: &NickAuthServer,
    writer: &Mutex<TcpStream>,
    stream: &mut TcpStream,
    reader: &mut LineReader,
    peer: &LinkPeer,
    client: &NickAuthClient,
) -> bool {
    let challenge = NickAuthChallenge::new(&nonce(), auth.directory_id.clone());
    let sent = |kind: u32, line: String| {
        let message = jm_message(kind, &line);
        lock(&state.nick_auth_sent).push((kind, line));
        send(&mut lock(writer), message.as_bytes()).is_ok()
    };
    if !sent(wire::NICK_AUTH_CHALLENGE, challenge.to_line()) {
        return false;
    }
    let code = match reader.next(stream, ctx, Some(Instant::now() + auth.timeout)) {
        LineEvent::Line(line) => {
            if let Ok(message) = parse_message(&line) {
                lock(&state.received).push(message);
            }
            let answer = String::from_utf8_lossy(&line);
            judge_answer(&challenge, &client.line, &peer.nick, &answer)
        }
        LineEvent::Deadline => NickAuthCode::Expired,
        LineEvent::TooLong => NickAuthCode::Malformed,
        LineEvent::Closed => return false,
    };
    if code != NickAuthCode::Ok {
        state.reject(format!("nick authentication: {code}"));
    }
    sent(wire::NICK_AUTH_RESULT, NickAuthResult::new(code).to_line()) && code == NickAuthCode::Ok
}

/// 32 bytes no one can guess in advance (std's per-process random hash
/// keys, one fresh hasher per word).
fn nonce() -> [u8; 32] {
    use std::hash::{BuildHasher, Hasher};
    let mut nonce = [0u8; 32];
    for chunk in nonce.chunks_exact_mut(8) {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0);
        chunk.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    nonce
}

/// Neither reads nor writes, keeping the socket open until the client
/// closes it (seen by peeking, when nothing unread is pending), or
/// `dropped()`.
fn hold_silently(stream: &TcpStream, dropped: &dyn Fn() -> bool) {
    let mut byte = [0u8; 1];
    while !dropped() {
        if stream.set_read_timeout(Some(POLL)).is_err() {
            return;
        }
        match stream.peek(&mut byte) {
            Ok(0) => return,
            // Unread bytes: the client may have closed after them, which
            // no peek can see; only `dropped` (checked every POLL) ends it.
            Ok(_) => thread::sleep(POLL),
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Writes whole public messages of `len` bytes as fast as the socket takes
/// them, until a write fails or `dropped()`.
fn flood(state: &State, writer: &Mutex<TcpStream>, len: usize, dropped: &dyn Fn() -> bool) {
    let overhead = jm_message(JM_PUBMSG, "").len();
    let line = jm_message(JM_PUBMSG, &"f".repeat(len.saturating_sub(overhead)));
    let bytes = line.as_bytes();
    while !dropped() {
        let mut writer = lock(writer);
        let mut offset = 0;
        while offset < bytes.len() {
            if dropped() {
                return;
            }
            match io::Write::write(&mut *writer, &bytes[offset..]) {
                Ok(0) => return,
                Ok(n) => offset += n,
                // The client does not read: wait (the write timeout).
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
        state.flood_lines.fetch_add(1, Ordering::SeqCst);
        changed();
    }
}

impl std::ops::Deref for JmDirectory {
    type Target = Server;

    /// Its address, counters and lifecycle (stop, restart, drop links).
    fn deref(&self) -> &Server {
        &self.server
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream;

    use serde_json::json;

    use super::*;
    use crate::test_client::{closed, connect, held, read_line};
    use crate::wait_until;
    use std::net::SocketAddr;

    const WAIT: Duration = Duration::from_secs(2);
    const NICK: &str = "J52N8GdNkKtMA6TW";

    fn refused(addr: SocketAddr) -> bool {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused)
    }

    fn send_handshake(client: &mut TcpStream, handshake: &Value) {
        client
            .write_all(jm_message(JM_HANDSHAKE, &handshake.to_string()).as_bytes())
            .unwrap();
    }

    /// Connects and sends a valid handshake (with the `ping` feature).
    fn handshaked(directory: &JmDirectory) -> TcpStream {
        let mut client = connect(directory.addr()).unwrap();
        send_handshake(&mut client, &jm_client_handshake(NICK, "regtest"));
        client
    }

    fn parse(line: &str) -> (u32, String) {
        assert!(line.ends_with("\r\n"), "{line:?}");
        let (msg_type, text) = parse_message(line.trim_end().as_bytes()).unwrap();
        (msg_type, text)
    }

    fn read_message(client: &mut TcpStream) -> (u32, String) {
        parse(&read_line(client).unwrap())
    }

    /// Reads the directory's reply: its type and its line as JSON.
    fn read_reply(client: &mut TcpStream) -> (u32, Value) {
        let (msg_type, text) = read_message(client);
        (msg_type, serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn nick_shape() {
        assert!(is_valid_jm_nick(JM_DIRECTORY_NICK));
        assert!(is_valid_jm_nick(NICK));
        assert!(is_valid_jm_nick("J5abcdefghijkmnO"));
        assert!(is_valid_jm_nick("J51OOOOOOOOOOOOO"));
        assert!(is_valid_jm_nick("J5FPBt6CHo3fovdL")); // 2^80 - 1
        // More than 10 bytes: joinmarket-rs refuses them.
        assert!(!is_valid_jm_nick("J5abcdefghijkmnp"));
        assert!(!is_valid_jm_nick("J5FPBt6CHo3fovdM")); // 2^80
        assert!(!is_valid_jm_nick("J511111111111OOO"));
        for bad in [
            "",
            "J5",
            "J4xhGSWE7VrxM7sO",
            "J5xhGSWE7VrxM7s",   // too short
            "J52N8GdNkKtMA6TWO", // too long
            "J5xhGSWE7VrxM7l1",  // `l`
            "J5xhGSWE0VrxM7s1",  // `0`
            "J5xhGSWEOVrxM7s1",  // `O` inside
            "J5OOOOOOOOOOOOOO",  // padding only
            "J5xhGSWE7VrxM7é",
        ] {
            assert!(!is_valid_jm_nick(bad), "{bad}");
        }
    }

    #[test]
    fn accepts_a_valid_handshake_with_a_range_reply() {
        let directory = JmDirectory::start(JmBehaviour::default()).unwrap();
        assert!(directory.addr().ip().is_loopback());
        let mut client = handshaked(&directory);
        let (msg_type, reply) = read_reply(&mut client);
        assert_eq!(msg_type, JM_DN_HANDSHAKE);
        assert_eq!(
            reply,
            json!({
                "app-name": "joinmarket",
                "directory": true,
                "proto-ver-min": 5,
                "proto-ver-max": 5,
                "features": {},
                "accepted": true,
                "nick": JM_DIRECTORY_NICK,
                "network": "regtest",
                "motd": JM_DEFAULT_MOTD,
            })
        );
        let handshakes = directory.handshakes();
        assert_eq!(handshakes.len(), 1);
        let handshake = &handshakes[0];
        assert_eq!(handshake.raw, jm_client_handshake(NICK, "regtest"));
        assert_eq!(handshake.nick, NICK);
        assert_eq!(handshake.network, "regtest");
        assert_eq!(handshake.location, "NOT-SERVING-ONION");
        assert_eq!(handshake.proto_ver, Some(5));
        assert_eq!(handshake.features, ["peerlist_features", "ping"]);
        assert!(handshake.has_feature("ping"));
        assert_eq!(handshake.problem, None);
        assert!(directory.rejections().is_empty());
        assert!(wait_until(WAIT, || directory.handshaked_connections() == 1));
        assert!(held(&mut client, Duration::from_millis(50)));
        drop(client);
        assert!(wait_until(WAIT, || directory.open_connections() == 0));
        assert_eq!(directory.handshaked_connections(), 0);
    }

    #[test]
    fn single_style_reply_with_overrides() {
        let directory = JmDirectory::start(JmBehaviour::Accept(JmAccept {
            style: JmReplyStyle::Single { proto_ver: 5 },
            features: vec!["ping".into(), "peerlist_features".into()],
            motd: None,
            nick: "J5zzzzzzzzzzzzzz".into(),
            network: Some("signet".into()),
            location: Some("abcdef.onion:5222".into()),
            reply_type: JM_HANDSHAKE,
            ..JmAccept::default()
        }))
        .unwrap();
        let mut client = handshaked(&directory);
        let (msg_type, reply) = read_reply(&mut client);
        assert_eq!(msg_type, JM_HANDSHAKE);
        assert_eq!(
            reply,
            json!({
                "app-name": "joinmarket",
                "directory": true,
                "location-string": "abcdef.onion:5222",
                "proto-ver": 5,
                "features": {"ping": true, "peerlist_features": true},
                "accepted": true,
                "nick": "J5zzzzzzzzzzzzzz",
                "network": "signet",
            })
        );
    }

    #[test]
    fn then_send_arrives_with_the_reply_in_one_read() {
        let directory = JmDirectory::start(JmBehaviour::Accept(JmAccept {
            then_send: vec![
                (JM_PEERLIST, "J5abcdefghijkmnp;xyz.onion:5222".into()),
                (JM_PUBMSG, format!("{NICK}!PUBLIC!orderbook")),
                (JM_PEERLIST, "J5abcdefghijkmnp;xyz.onion:5222;D".into()),
            ],
            ..JmAccept::default()
        }))
        .unwrap();
        let mut client = handshaked(&directory);
        // The four lines are one write, already on its way over loopback:
        // peek (which blocks for the first byte, then returns what has
        // arrived) until all four are in, then read them in one go.
        let deadline = std::time::Instant::now() + WAIT;
        let mut buf = vec![0u8; 65536];
        loop {
            let peeked = client.peek(&mut buf).unwrap();
            if buf[..peeked].windows(2).filter(|w| w == b"\r\n").count() >= 4 {
                break;
            }
            assert!(peeked > 0, "closed early");
            assert!(
                std::time::Instant::now() < deadline,
                "incomplete: {peeked} bytes"
            );
        }
        let n = client.read(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        let lines: Vec<_> = text.split_inclusive("\r\n").map(parse).collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0].0, JM_DN_HANDSHAKE);
        assert_eq!(
            lines[1..],
            [
                (JM_PEERLIST, "J5abcdefghijkmnp;xyz.onion:5222".into()),
                (JM_PUBMSG, format!("{NICK}!PUBLIC!orderbook")),
                (JM_PEERLIST, "J5abcdefghijkmnp;xyz.onion:5222;D".into()),
            ]
        );
    }

    #[test]
    fn pings_and_records_pongs() {
        let directory = JmDirectory::start(JmBehaviour::Accept(JmAccept {
            ping_after: Some(Duration::from_millis(30)),
            pings: 2,
            ..JmAccept::default()
        }))
        .unwrap();
        let mut client = handshaked(&directory);
        let started = Instant::now();
        assert_eq!(read_reply(&mut client).0, JM_DN_HANDSHAKE);
        client
            .write_all(jm_message(JM_PUBMSG, "hello").as_bytes())
            .unwrap();
        for pongs in 1..=2 {
            assert_eq!(read_message(&mut client), (JM_PING, String::new()));
            client
                .write_all(jm_message(JM_PONG, "").as_bytes())
                .unwrap();
            assert!(wait_until(WAIT, || directory.pongs() == pongs));
        }
        assert!(started.elapsed() >= Duration::from_millis(60));
        // Two pings at most.
        assert!(held(&mut client, Duration::from_millis(100)));
        assert_eq!(
            directory.received(),
            [
                (JM_PUBMSG, "hello".to_owned()),
                (JM_PONG, String::new()),
                (JM_PONG, String::new())
            ]
        );
    }

    #[test]
    fn no_ping_without_the_feature_and_unanswered_pings_close() {
        let directory = JmDirectory::start(JmBehaviour::Accept(JmAccept {
            ping_after: Some(Duration::from_millis(10)),
            pong_timeout: Some(Duration::from_millis(50)),
            ..JmAccept::default()
        }))
        .unwrap();
        let mut quiet = connect(directory.addr()).unwrap();
        let mut handshake = jm_client_handshake(NICK, "regtest");
        handshake["features"] = json!({"peerlist_features": true, "ping": false});
        send_handshake(&mut quiet, &handshake);
        assert_eq!(read_reply(&mut quiet).0, JM_DN_HANDSHAKE);
        assert!(held(&mut quiet, Duration::from_millis(100)));

        let mut deaf = handshaked(&directory);
        assert_eq!(read_reply(&mut deaf).0, JM_DN_HANDSHAKE);
        assert_eq!(read_message(&mut deaf), (JM_PING, String::new()));
        assert!(closed(&mut deaf));
        assert_eq!(directory.rejections().len(), 1);
        assert!(directory.rejections()[0].starts_with("no PONG within"));
        assert_eq!(directory.pongs(), 0);
    }

    #[test]
    fn drop_after_closes() {
        let delay = Duration::from_millis(80);
        let directory = JmDirectory::start(JmBehaviour::Accept(JmAccept {
            drop_after: Some(delay),
            ..JmAccept::default()
        }))
        .unwrap();
        let started = Instant::now();
        let mut client = handshaked(&directory);
        assert_eq!(read_reply(&mut client).0, JM_DN_HANDSHAKE);
        client
            .write_all(jm_message(JM_PUBMSG, "x").as_bytes())
            .unwrap();
        assert!(closed(&mut client));
        assert!(started.elapsed() >= delay);
        assert_eq!(directory.received(), [(JM_PUBMSG, "x".to_owned())]);
        assert!(directory.rejections().is_empty());
        assert!(wait_until(WAIT, || directory.open_connections() == 0));
    }

    #[test]
    fn strict_closes_invalid_handshakes_without_reply() {
        let directory = JmDirectory::start(JmBehaviour::default()).unwrap();
        let valid = jm_client_handshake(NICK, "regtest");
        let with = |name: &str, value: Value| {
            let mut handshake = valid.clone();
            handshake[name] = value;
            jm_message(JM_HANDSHAKE, &handshake.to_string())
        };
        let without = |name: &str| {
            let mut handshake = valid.clone();
            handshake.as_object_mut().unwrap().remove(name);
            jm_message(JM_HANDSHAKE, &handshake.to_string())
        };
        let mut cases = vec![
            (with("nick", json!("J5short")), "bad nick `J5short`"),
            (with("nick", json!("J5xhGSWE7VrxM7l1")), "bad nick"),
            (with("nick", json!("J5xhGSWEOVrxM7s1")), "bad nick"),
            (with("nick", json!(5)), "field `nick` is not a string"),
            (
                with("network", json!("mainnet")),
                "network `mainnet` is not `regtest`",
            ),
            (with("proto-ver", json!(4)), "proto-ver 4 is not 5"),
            (
                with("proto-ver", json!("5")),
                "`proto-ver` is not an integer",
            ),
            (with("directory", json!(true)), "claims to be a directory"),
            (with("directory", json!(0)), "`directory` is not a boolean"),
            (with("app-name", json!("bitcoin")), "app-name `bitcoin`"),
            (
                with("features", json!(["ping"])),
                "`features` is not an object",
            ),
            (with("location-string", json!("nowhere")), "bad location"),
            (
                jm_message(JM_PUBMSG, &valid.to_string()),
                "first message has type 687, not 793",
            ),
            (jm_message(JM_HANDSHAKE, "not json"), "not a JSON object"),
            (jm_message(JM_HANDSHAKE, "[1, 2]"), "not a JSON object"),
            ("not json\r\n".to_owned(), "malformed message: not JSON"),
            ("{\"type\": 793}\r\n".to_owned(), "no string `line`"),
            ("{\"type\": \"x\", \"line\": 5}\n".to_owned(), "no integer"),
            (
                format!("{}\r\n", "a".repeat(JM_MAX_LINE + 1)),
                "line over 40000 bytes",
            ),
        ];
        for field in [
            "app-name",
            "directory",
            "location-string",
            "proto-ver",
            "features",
            "nick",
            "network",
        ] {
            cases.push((without(field), "missing field"));
        }
        for (i, (message, why)) in cases.iter().enumerate() {
            let mut client = connect(directory.addr()).unwrap();
            // The directory may close before all of an oversize line is in.
            let _ = client.write_all(message.as_bytes());
            assert!(closed(&mut client), "{message}");
            let rejections = directory.rejections();
            assert_eq!(rejections.len(), i + 1, "{message}");
            assert!(rejections[i].contains(why), "{} vs {why}", rejections[i]);
        }
        // Handshakes whose line was an object are recorded, with the problem.
        let handshakes = directory.handshakes();
        assert_eq!(handshakes.len(), 12 + 7);
        assert_eq!(handshakes[0].nick, "J5short");
        assert_eq!(handshakes[0].problem.as_deref(), Some("bad nick `J5short`"));
        assert_eq!(handshakes[4].network, "mainnet");
        assert!(directory.received().is_empty());
    }

    #[test]
    fn network_setting_and_lenient_mode() {
        let directory = JmDirectory::start(JmBehaviour::default()).unwrap();
        directory.set_network("signet");
        assert_eq!(directory.network(), "signet");
        let mut client = connect(directory.addr()).unwrap();
        send_handshake(&mut client, &jm_client_handshake(NICK, "signet"));
        assert_eq!(read_reply(&mut client).1["network"], "signet");
        let mut regtest = handshaked(&directory);
        assert!(closed(&mut regtest));

        directory.set_strict(false);
        assert!(!directory.strict());
        let mut client = connect(directory.addr()).unwrap();
        let mut bad = jm_client_handshake("nonsense", "mainnet");
        bad.as_object_mut().unwrap().remove("features");
        send_handshake(&mut client, &bad);
        assert_eq!(read_reply(&mut client).1["accepted"], true);
        // Malformed messages are ignored, well-formed ones recorded.
        client
            .write_all(b"junk\r\n{\"type\": 687, \"line\": \"ok\"}\n")
            .unwrap();
        assert!(wait_until(WAIT, || directory.received().len() == 1));
        assert_eq!(directory.received(), [(JM_PUBMSG, "ok".to_owned())]);
        let last = directory.handshakes().pop().unwrap();
        assert_eq!(last.nick, "nonsense");
        assert!(last.features.is_empty());
        assert!(last.problem.is_some());
        let mut garbage = connect(directory.addr()).unwrap();
        garbage.write_all(b"hello\n").unwrap();
        assert_eq!(read_message(&mut garbage).0, JM_DN_HANDSHAKE);
        assert_eq!(directory.rejections().len(), 1); // the regtest client
    }

    #[test]
    fn strict_closes_on_malformed_and_oversize_messages() {
        let directory = JmDirectory::start(JmBehaviour::default()).unwrap();
        let mut client = handshaked(&directory);
        read_reply(&mut client);
        client
            .write_all(b"{\"type\": 791, \"line\": \"\"}\n{\"type\": 687}\r\n")
            .unwrap();
        assert!(closed(&mut client));
        assert_eq!(directory.received(), [(JM_GETPEERLIST, String::new())]);
        assert_eq!(
            directory.rejections(),
            ["malformed message: no string `line`"]
        );

        let mut client = handshaked(&directory);
        read_reply(&mut client);
        // Exactly the maximum is fine.
        let line = jm_message(JM_PUBMSG, &"m".repeat(JM_MAX_LINE - 25));
        assert_eq!(line.len(), JM_MAX_LINE + 2);
        client.write_all(line.as_bytes()).unwrap();
        assert!(wait_until(WAIT, || directory.received().len() == 2));
        let _ = client.write_all(&vec![b'a'; JM_MAX_LINE + 2]);
        assert!(closed(&mut client));
        assert_eq!(directory.rejections()[1], "line over 40000 bytes");
    }

    #[test]
    fn reject_replies_accepted_false_then_closes() {
        let directory = JmDirectory::start(JmBehaviour::Reject {
            motd: "go away: full".into(),
        })
        .unwrap();
        let mut client = handshaked(&directory);
        let (msg_type, reply) = read_reply(&mut client);
        assert_eq!(msg_type, JM_DN_HANDSHAKE);
        assert_eq!(reply["accepted"], false);
        assert_eq!(reply["motd"], "go away: full");
        assert_eq!(reply["nick"], JM_DIRECTORY_NICK);
        assert!(closed(&mut client));
        assert_eq!(directory.handshakes().len(), 1);
        assert!(directory.rejections().is_empty());
    }

    #[test]
    fn other_behaviours_do_what_they_say() {
        let directory = JmDirectory::start(JmBehaviour::CloseWithoutReply).unwrap();
        let mut client = handshaked(&directory);
        assert!(closed(&mut client));
        assert_eq!(directory.handshakes().len(), 1);

        directory.set_behaviour(JmBehaviour::Silent);
        assert_eq!(directory.behaviour(), JmBehaviour::Silent);
        let mut silent = handshaked(&directory);
        // Recorded once the connection's behaviour is chosen.
        assert!(wait_until(WAIT, || directory.handshakes().len() == 2));
        assert!(held(&mut silent, Duration::from_millis(50)));

        for garbage in ["not json", "{\"type\": 795}", "[1,2]"] {
            directory.set_behaviour(JmBehaviour::Garbage(garbage.into()));
            let mut client = handshaked(&directory);
            assert_eq!(read_line(&mut client).unwrap(), format!("{garbage}\r\n"));
            assert!(held(&mut client, Duration::from_millis(30)));
        }

        directory.set_behaviour(JmBehaviour::WrongType(JM_PUBMSG));
        let mut client = handshaked(&directory);
        let (msg_type, reply) = read_reply(&mut client);
        assert_eq!(msg_type, JM_PUBMSG);
        assert_eq!(reply["accepted"], true);
        assert!(held(&mut client, Duration::from_millis(30)));

        directory.set_behaviour(JmBehaviour::Oversize(50_000));
        let mut client = handshaked(&directory);
        let mut received = Vec::new();
        let mut buf = [0u8; 8192];
        while received.len() < 50_000 {
            let n = client.read(&mut buf).unwrap();
            assert_ne!(n, 0);
            received.extend_from_slice(&buf[..n]);
        }
        assert_eq!(received.len(), 50_000);
        assert!(received.starts_with(b"{\"type\": 795, \"line\": \"xx"));
        assert!(!received.contains(&b'\n'));
        assert!(held(&mut client, Duration::from_millis(30)));

        directory.set_behaviour(JmBehaviour::Raw(vec![0xff, 0xfe, b'{', b'\n']));
        let mut client = handshaked(&directory);
        let mut raw = [0u8; 4];
        client.read_exact(&mut raw).unwrap();
        assert_eq!(raw, [0xff, 0xfe, b'{', b'\n']);
        assert!(held(&mut client, Duration::from_millis(30)));

        assert_eq!(directory.handshakes().len(), 8);
        assert!(directory.rejections().is_empty());
        assert!(directory.received().is_empty());
        assert_eq!(directory.handshaked_connections(), 0);
    }

    #[test]
    fn byte_by_byte_reply_trickles() {
        let directory = JmDirectory::start(JmBehaviour::Accept(JmAccept {
            split_reply: SplitReply::ByteByByte {
                delay: Duration::from_millis(1),
            },
            motd: None,
            then_send: vec![(JM_PEERLIST, "p".into())],
            ..JmAccept::default()
        }))
        .unwrap();
        let mut client = handshaked(&directory);
        let mut reply = Vec::new();
        let mut reads = 0;
        let mut buf = [0u8; 64];
        let mut started = None;
        while reply.last() != Some(&b'\n') {
            let n = client.read(&mut buf).unwrap();
            assert_ne!(n, 0);
            started.get_or_insert_with(Instant::now);
            reads += 1;
            reply.extend_from_slice(&buf[..n]);
        }
        // About 190 bytes, 1 ms apart.
        assert!(reply.len() > 150);
        assert!(reads > 10, "{reads} reads");
        assert!(started.unwrap().elapsed() >= Duration::from_millis(100));
        assert_eq!(
            parse(std::str::from_utf8(&reply).unwrap()).0,
            JM_DN_HANDSHAKE
        );
        assert_eq!(read_message(&mut client), (JM_PEERLIST, "p".to_owned()));
    }

    #[test]
    fn broadcast_reaches_handshaked_clients() {
        let directory = JmDirectory::start(JmBehaviour::default()).unwrap();
        let mut clients: Vec<_> = (0..3).map(|_| handshaked(&directory)).collect();
        for client in &mut clients {
            read_reply(client);
        }
        let mut unhandshaked = connect(directory.addr()).unwrap();
        assert!(wait_until(WAIT, || directory.handshaked_connections() == 3));
        let entry = "J5abcdefghijkmnp;xyz.onion:5222";
        assert_eq!(directory.broadcast(JM_PEERLIST, entry), 3);
        for client in &mut clients {
            assert_eq!(read_message(client), (JM_PEERLIST, entry.to_owned()));
        }
        assert!(held(&mut unhandshaked, Duration::from_millis(30)));
    }

    #[test]
    fn stop_and_restart_on_the_same_port() {
        let directory = JmDirectory::start(JmBehaviour::default()).unwrap();
        let addr = directory.addr();
        for _ in 0..2 {
            let mut open = handshaked(&directory);
            read_reply(&mut open);
            directory.stop();
            assert!(!directory.is_listening());
            assert!(refused(addr));
            assert!(closed(&mut open));
            assert_eq!(directory.open_connections(), 0);
            directory.stop(); // idempotent
            directory.restart().unwrap();
            assert_eq!(directory.addr(), addr);
            let mut client = handshaked(&directory);
            assert_eq!(read_reply(&mut client).1["accepted"], true);
        }
        let mut open = handshaked(&directory);
        read_reply(&mut open);
        directory.drop_all();
        assert!(closed(&mut open));
        assert_eq!(directory.open_connections(), 0);

        let started = Instant::now();
        directory.restart_after(Duration::from_millis(200)).unwrap();
        assert!(refused(addr));
        assert!(wait_until(WAIT, || directory.is_listening()));
        assert!(started.elapsed() >= Duration::from_millis(200));
        let mut client = handshaked(&directory);
        assert_eq!(read_reply(&mut client).0, JM_DN_HANDSHAKE);
        assert_eq!(directory.accepted(), 6);
        assert_eq!(directory.port(), addr.port());
    }

    #[test]
    fn start_after_listens_only_after_the_delay() {
        let started = Instant::now();
        let directory =
            JmDirectory::start_after(JmBehaviour::default(), Duration::from_millis(200)).unwrap();
        assert!(!directory.is_listening());
        assert!(refused(directory.addr()));
        assert!(wait_until(WAIT, || directory.is_listening()));
        assert!(started.elapsed() >= Duration::from_millis(200));
        let mut client = handshaked(&directory);
        assert_eq!(read_reply(&mut client).0, JM_DN_HANDSHAKE);
    }

    #[test]
    fn drop_joins_with_open_connections() {
        let directory = JmDirectory::start(JmBehaviour::Accept(JmAccept {
            split_reply: SplitReply::ByteByByte {
                delay: Duration::from_secs(10),
            },
            ..JmAccept::default()
        }))
        .unwrap();
        let addr = directory.addr();
        let mut trickled = handshaked(&directory);
        let mut byte = [0u8; 1];
        assert_eq!(trickled.read(&mut byte).unwrap(), 1);
        directory.set_behaviour(JmBehaviour::default());
        let mut accepted = handshaked(&directory);
        read_reply(&mut accepted);
        directory.set_behaviour(JmBehaviour::Silent);
        let mut silent = handshaked(&directory);
        let mut waiting = connect(addr).unwrap();
        assert!(wait_until(WAIT, || directory.open_connections() == 4));
        let probe = directory.server.leak_probe();
        let started = Instant::now();
        drop(directory);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(probe.released());
        for client in [&mut trickled, &mut accepted, &mut silent, &mut waiting] {
            assert!(closed(client));
        }
        assert!(refused(addr));
    }

    mod modelled {
        use super::*;
        use crate::directory_model::{CloseReason, HeartbeatTimings, RateLimited};

        /// `profile` with the heartbeat 1000 times faster (sweep 60 ms,
        /// idle 600 ms, pong wait 30 ms, hard eviction 1.5 s).
        fn fast(profile: DirectoryProfile) -> JmModelled {
            let timings = HeartbeatTimings::default().scaled_down(1000);
            JmModelled::with_config(
                DirectoryConfig::new(profile, JM_DIRECTORY_NICK).with_timings(timings),
            )
        }

        fn start(modelled: JmModelled) -> JmDirectory {
            JmDirectory::start(JmBehaviour::Modelled(modelled)).unwrap()
        }

        fn accepted(directory: &JmDirectory) -> TcpStream {
            let mut client = handshaked(directory);
            let (msg_type, reply) = read_reply(&mut client);
            assert_eq!(
                (msg_type, &reply["accepted"]),
                (JM_DN_HANDSHAKE, &json!(true))
            );
            client
        }

        #[test]
        fn ng_pings_an_idle_client_and_evicts_it_without_pong() {
            let directory = start(fast(DirectoryProfile::JoinmarketNg));
            let mut client = handshaked(&directory);
            let (_, reply) = read_reply(&mut client);
            assert_eq!(
                reply["features"],
                json!({"peerlist_features": true, "ping": true})
            );
            assert_eq!(read_message(&mut client), (798, String::new()));
            assert!(closed(&mut client));
            assert!(wait_until(WAIT, || directory.evictions().len() == 1));
            let (nick, close) = directory.evictions().remove(0);
            assert_eq!(
                (nick.as_str(), close.reason),
                (NICK, CloseReason::PongTimeout)
            );
            let record = &directory.link_records()[0];
            // Pinged at the first sweep after 600 ms of silence, evicted
            // 30 ms later.
            let pinged = record.pings_sent[0] - record.opened;
            assert!(pinged > Duration::from_millis(600), "{pinged:?}");
            assert_eq!(close.at - record.pings_sent[0], Duration::from_millis(30));
            assert_eq!(directory.pings_sent(), 1);
            assert_eq!(directory.rejections(), ["evicted: pong timeout"]);
        }

        #[test]
        fn a_client_that_answers_pongs_stays() {
            let directory = start(fast(DirectoryProfile::JoinmarketRs));
            let mut client = accepted(&directory);
            for _ in 0..2 {
                assert_eq!(read_message(&mut client), (798, String::new()));
                client.write_all(jm_message(799, "").as_bytes()).unwrap();
            }
            assert!(wait_until(WAIT, || directory.pongs_received() == 2));
            assert!(directory.evictions().is_empty());
            assert_eq!(directory.pings_sent(), 2);
            assert_eq!(directory.pongs(), 2);
            // Still open: a PING is answered.
            client.write_all(jm_message(798, "").as_bytes()).unwrap();
            assert_eq!(read_message(&mut client), (799, String::new()));
        }

        #[test]
        fn rs_disconnects_the_seventh_ping_and_the_reference_a_pong() {
            let directory = start(JmModelled::new(DirectoryProfile::JoinmarketRs));
            let mut client = accepted(&directory);
            for _ in 0..7 {
                client.write_all(jm_message(798, "").as_bytes()).unwrap();
            }
            for _ in 0..6 {
                assert_eq!(read_message(&mut client), (799, String::new()));
            }
            assert!(closed(&mut client));
            assert!(wait_until(WAIT, || directory.evictions().len() == 1));
            let reason = directory.evictions()[0].1.reason;
            assert_eq!(reason, CloseReason::RateLimit(RateLimited::Ping));

            directory.set_behaviour(JmBehaviour::Modelled(JmModelled::new(
                DirectoryProfile::Reference,
            )));
            let mut client = handshaked(&directory);
            assert_eq!(read_reply(&mut client).1["features"], json!({}));
            client
                .write_all(format!("{}{}", jm_message(798, ""), jm_message(791, "")).as_bytes())
                .unwrap();
            assert!(held(&mut client, Duration::from_millis(30)));
            client.write_all(jm_message(799, "").as_bytes()).unwrap();
            assert!(closed(&mut client));
            let records = directory.link_records();
            assert_eq!(records[1].close.unwrap().reason, CloseReason::Asserted(799));
            assert!(records[1].pings_sent.is_empty());
        }

        #[test]
        fn duplicate_nicks_per_profile() {
            let directory = start(JmModelled::new(DirectoryProfile::JoinmarketNg));
            let mut first = accepted(&directory);
            let mut second = handshaked(&directory);
            let (msg_type, reply) = read_reply(&mut second);
            assert_eq!(msg_type, JM_DN_HANDSHAKE);
            assert_eq!(reply["accepted"], false);
            let motd = format!("Rejected: Peer nick already registered: {NICK}");
            assert_eq!(reply["motd"], motd.as_str());
            assert!(closed(&mut second));
            // The first link is untouched; once it is gone the nick is free.
            first.write_all(jm_message(798, "").as_bytes()).unwrap();
            assert_eq!(read_message(&mut first), (799, String::new()));
            drop(first);
            assert!(wait_until(WAIT, || directory.handshaked_connections() == 0));
            let _third = accepted(&directory);

            directory.set_behaviour(JmBehaviour::Modelled(JmModelled::new(
                DirectoryProfile::JoinmarketRs,
            )));
            let mut rs = handshaked(&directory);
            assert!(closed(&mut rs), "rs closes without a reply");
            assert_eq!(directory.rejections()[0], motd);
            assert_eq!(
                directory.rejections()[1],
                format!("nick already connected: {NICK}")
            );
        }

        #[test]
        fn silent_paths_neither_read_nor_write() {
            let mut modelled = JmModelled::new(DirectoryProfile::JoinmarketNg);
            modelled.silent_after = Some(Duration::ZERO);
            let directory = start(modelled);
            let mut client = accepted(&directory);
            client.write_all(jm_message(798, "").as_bytes()).unwrap();
            assert!(held(&mut client, Duration::from_millis(100)));
            assert!(directory.received().is_empty());
            assert_eq!(directory.open_connections(), 1);
            drop(client);
            directory.drop_all();
            assert_eq!(directory.open_connections(), 0);

            // On command.
            directory.set_behaviour(JmBehaviour::Modelled(JmModelled::new(
                DirectoryProfile::JoinmarketNg,
            )));
            let mut client = accepted(&directory);
            client.write_all(jm_message(798, "").as_bytes()).unwrap();
            assert_eq!(read_message(&mut client), (799, String::new()));
            let silenced = directory.silenced_links();
            directory.silence_links();
            // Once the link has gone silent, a PING's bytes stay unread.
            assert!(wait_until(WAIT, || directory.silenced_links() == silenced + 1));
            client.write_all(jm_message(798, "").as_bytes()).unwrap();
            assert!(held(&mut client, Duration::from_millis(100)));
            assert_eq!(directory.received().len(), 1);
            // Its close is not seen (the PING is unread): drop it.
            drop(client);
            directory.drop_all();
            // A client close with nothing unread is seen.
            let mut quiet = accepted(&directory);
            directory.silence_links();
            assert!(held(&mut quiet, POLL * 3));
            drop(quiet);
            assert!(wait_until(WAIT, || directory.open_connections() == 0));
        }

        #[test]
        fn flood_sends_lines_of_the_given_size() {
            let mut modelled = JmModelled::new(DirectoryProfile::Reference);
            modelled.flood = Some(1000);
            let directory = start(modelled);
            let mut client = accepted(&directory);
            for _ in 0..50 {
                let line = read_line(&mut client).unwrap();
                assert_eq!(line.len(), 1000);
                assert_eq!(parse(&line).0, JM_PUBMSG);
            }
            assert!(directory.flood_lines() >= 50);
            drop(client);
            assert!(wait_until(WAIT, || directory.open_connections() == 0));
        }

        #[test]
        fn rs_counts_the_terminator_in_its_line_limit() {
            let directory = start(JmModelled::new(DirectoryProfile::JoinmarketRs));
            let mut client = accepted(&directory);
            // 40,000 bytes with `\r\n`: taken.
            let line = jm_message(JM_PUBMSG, &"m".repeat(40_000 - 27));
            assert_eq!(line.len(), 40_000);
            client.write_all(line.as_bytes()).unwrap();
            assert!(wait_until(WAIT, || directory.received().len() == 1));
            let line = jm_message(JM_PUBMSG, &"m".repeat(40_001 - 27));
            let _ = client.write_all(line.as_bytes());
            assert!(closed(&mut client));
            let records = directory.link_records();
            assert_eq!(records[0].close.unwrap().reason, CloseReason::LineTooLong);
        }
    }
}
