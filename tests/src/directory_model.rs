//! A pure, sans-IO model of one client link as a real JoinMarket directory
//! server sees it, per implementation ([`DirectoryProfile`]): heartbeat
//! (PING, orderbook probe, pong timeout, hard idle eviction), per-link rate
//! limits, answers (PONG, peer lists) and the reactions that close the link.
//! The loopback [`JmDirectory`](crate::JmDirectory) and the simulated
//! directories of [`sim::peers`](crate::sim::peers) both drive it.
//!
//! No clock and no I/O inside: the caller frames lines (see [`LineLimit`]),
//! hands each to [`DirectoryLink::handle_line`] with the instant it arrived,
//! calls [`DirectoryLink::handle_timeout`] when [`DirectoryLink::poll_timeout`]
//! is due, and carries out what [`DirectoryLink::poll_output`] returns (lines
//! to send, then at most one close). What the link did is kept in a
//! [`LinkRecord`] ([`DirectoryLink::record`]).
//!
//! # Sources (read at their current `HEAD`)
//!
//! * joinmarket-ng: `directory_server/src/directory_server/heartbeat.py`
//!   (sweep loop: `sleep(sweep)` then sweep, and a sweep that pinged sleeps
//!   `pong_wait` more before the next `sleep(sweep)`, so ng's sweeps drift;
//!   idle and hard thresholds compared strictly: `last_seen < now - t`,
//!   `peer_registry.py::get_peers_idle_since`), `server.py` (`last_seen`
//!   updated on every received line; a malformed line ends the link; the
//!   generic token-bucket rate limiter drops excess messages and, with the
//!   default `rate_limit_disconnect_threshold = 0`, never disconnects),
//!   `message_router.py` (PING → PONG, PONG clears `pong_pending`,
//!   GETPEERLIST → peer list; every other type, 801 included, is only
//!   logged), `jmcore/src/jmcore/settings.py::DirectoryServerSettings`
//!   (`message_rate_limit = 500`/s, `message_burst_limit = 1000`,
//!   `max_line_length = 65536` bytes, checked after `rstrip(b"\r\n")`).
//! * joinmarket-rs: `crates/joinmarket-dn/src/heartbeat.rs` (a fixed-phase
//!   `tokio::time::interval_at(start + 60 s, 60 s)`; thresholds compared with
//!   `>=`, `router.rs`), `crates/joinmarket-dn/src/peer.rs` (`MAX_LINE_LEN`
//!   40,000 *including* the `\n` terminator, `read_line_bounded`; sliding
//!   one-minute windows: 6 PINGs, 3 GETPEERLISTs, 30 PUBMSGs, 3
//!   `!orderbook`s, one more disconnects; pubmsg/privmsg `from_nick` must be
//!   the link's nick; DISCONNECT ends the link; malformed envelopes are
//!   ignored).
//! * joinmarket-clientserver: `src/jmdaemon/onionmc.py` (no heartbeat;
//!   `MAX_LENGTH = 40000` of Twisted's `LineReceiver`, which does not count
//!   the `\r\n` delimiter; 797 is the local control type `connect-in`, 798 is
//!   not a known type and ignored, 799 and 801 reach `assert False` in
//!   `process_control_message` and the connection is lost; GETPEERLIST is
//!   logged "not supported"; a repeated handshake is ignored; a 795 from a
//!   client hits `assert not self.self_as_peer.directory`).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use dirpool::joinmarket::{DirectoryId, NickAuthMode};
use serde_json::Value;

use crate::jm_server::jm_message;

/// PING: `jmcore/src/jmcore/protocol.py` (`PING = 798`, moved from 797 by
/// JMP-0004) and `joinmarket-core/src/message.rs` (`PING: u32 = 798`).
pub const MODEL_PING: u32 = 798;
/// PONG (799), same files.
pub const MODEL_PONG: u32 = 799;
/// DISCONNECT (801), same files.
pub const MODEL_DISCONNECT: u32 = 801;
/// The reference's local control type `connect-in` (`onionmc.py`,
/// `LOCAL_CONTROL_MESSAGE_TYPES`).
pub const MODEL_CONNECT_IN: u32 = 797;
/// Private message (685).
pub const MODEL_PRIVMSG: u32 = 685;
/// Public message (687).
pub const MODEL_PUBMSG: u32 = 687;
/// Peer list (789).
pub const MODEL_PEERLIST: u32 = 789;
/// Peer list request (791).
pub const MODEL_GETPEERLIST: u32 = 791;
/// Client handshake (793).
pub const MODEL_HANDSHAKE: u32 = 793;
/// Directory handshake (795).
pub const MODEL_DN_HANDSHAKE: u32 = 795;

/// Which real directory implementation is modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DirectoryProfile {
    /// joinmarket-ng's `directory_server` (Python, asyncio).
    JoinmarketNg,
    /// joinmarket-rs's `joinmarket-dn` (Rust, tokio).
    JoinmarketRs,
    /// joinmarket-clientserver's `onionmc.py` directory mode (Twisted).
    Reference,
}

/// What a directory does with a handshake whose nick already has a live
/// link there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicateNick {
    /// joinmarket-ng (`peer_registry.py::register` raises
    /// `PeerOwnershipConflictError`, `server.py` answers a 795 with
    /// `accepted: false` and motd `Rejected: Peer nick already registered:
    /// <nick>`, then closes).
    RejectWithMotd,
    /// joinmarket-rs (`admission.rs`: `DuplicateNick`, `peer.rs` returns
    /// without a reply).
    CloseWithoutReply,
    /// The reference (no such check found in `onionmc.py`): accepted.
    Accept,
}

/// What a directory does with a client handshake for another network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrongNetwork {
    /// joinmarket-ng (`handshake_handler.py`: `HandshakeError("Network
    /// mismatch")`, which `server.py` answers by closing, no reply).
    CloseWithoutReply,
    /// joinmarket-rs (`peer.rs`: `NetworkMismatch` → `send_dn_handshake(..,
    /// false)`) and the reference (`onionmc.py`, `process_handshake`:
    /// `accepted = False`): a 795 with `accepted: false` naming the
    /// directory's own network, then the link ends.
    RejectNamingOwn,
}

impl DirectoryProfile {
    /// What it does with a client of another network.
    #[must_use]
    pub fn wrong_network(self) -> WrongNetwork {
        match self {
            Self::JoinmarketNg => WrongNetwork::CloseWithoutReply,
            Self::JoinmarketRs | Self::Reference => WrongNetwork::RejectNamingOwn,
        }
    }

    /// Every profile.
    pub const ALL: [Self; 3] = [Self::JoinmarketNg, Self::JoinmarketRs, Self::Reference];

    /// The feature names its handshake reply sets to `true`: ng
    /// (`handshake_handler.py`: "always include peerlist_features and ping")
    /// and rs (`DN_SUPPORTED_FEATURE_NAMES`) `peerlist_features` and `ping`;
    /// the reference `{}`.
    #[must_use]
    pub fn features(self) -> &'static [&'static str] {
        match self {
            Self::JoinmarketNg | Self::JoinmarketRs => &["peerlist_features", "ping"],
            Self::Reference => &[],
        }
    }

    /// Its line length limit.
    #[must_use]
    pub fn line_limit(self) -> LineLimit {
        match self {
            Self::JoinmarketNg => LineLimit {
                max: 65_536,
                terminator_counts: false,
            },
            Self::JoinmarketRs => LineLimit {
                max: 40_000,
                terminator_counts: true,
            },
            Self::Reference => LineLimit {
                max: 40_000,
                terminator_counts: false,
            },
        }
    }

    /// Whether it runs the heartbeat (ng and rs).
    #[must_use]
    pub fn has_heartbeat(self) -> bool {
        !matches!(self, Self::Reference)
    }

    /// What it does with a second link of a nick that is still connected.
    #[must_use]
    pub fn duplicate_nick(self) -> DuplicateNick {
        match self {
            Self::JoinmarketNg => DuplicateNick::RejectWithMotd,
            Self::JoinmarketRs => DuplicateNick::CloseWithoutReply,
            Self::Reference => DuplicateNick::Accept,
        }
    }

    /// Whether it knows JMP-0005 nick authentication: joinmarket-ng only
    /// (`directory_server/src/directory_server/server.py`,
    /// `_perform_nick_auth`); joinmarket-rs (`crates/`) and the reference
    /// (`src/jmdaemon/`) have no trace of types 803–807 or the feature
    /// `nick_auth`, so they never advertise it and ignore it in a client's
    /// handshake.
    #[must_use]
    pub fn knows_nick_auth(self) -> bool {
        self == Self::JoinmarketNg
    }

    /// The motd of ng's refusal of a client without `nick_auth` in
    /// `require_verified` (`handshake_handler.py`, `process_handshake`).
    pub const NICK_AUTH_REQUIRED_MOTD: &'static str =
        "Rejected: verified nick authentication required";

    /// The motd of ng's duplicate-nick rejection.
    #[must_use]
    pub fn duplicate_nick_motd(nick: &str) -> String {
        format!("Rejected: Peer nick already registered: {nick}")
    }
}

/// The longest line a directory takes; a longer one closes the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineLimit {
    /// The maximum, in bytes.
    pub max: usize,
    /// Whether the terminator (`\n` or `\r\n`) counts towards `max`.
    pub terminator_counts: bool,
}

impl LineLimit {
    /// Whether a line of `content` bytes (terminator excluded) ended by a
    /// terminator of `terminator` bytes (1 or 2) is taken.
    #[must_use]
    pub fn allows(self, content: usize, terminator: usize) -> bool {
        let counted = if self.terminator_counts {
            content + terminator
        } else {
            content
        };
        counted <= self.max
    }

    /// How many bytes without a newline a reader may hold before it knows
    /// the line is too long (the longest content, plus a `\r` that may still
    /// be followed by `\n`).
    #[must_use]
    pub fn max_pending(self) -> usize {
        if self.terminator_counts {
            self.max.saturating_sub(1)
        } else {
            self.max + 1
        }
    }
}

/// The heartbeat timings (defaults: the real 60/600/30/1500 s of both
/// `heartbeat.py` and `heartbeat.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatTimings {
    /// Between two sweeps (the first one `sweep` after the server started).
    pub sweep: Duration,
    /// A link silent this long is probed (PING, or orderbook for a maker
    /// without `ping`).
    pub idle: Duration,
    /// How long a sweep that pinged waits for the PONGs.
    pub pong_wait: Duration,
    /// A link silent this long is evicted without a probe.
    pub hard_evict: Duration,
}

impl Default for HeartbeatTimings {
    fn default() -> Self {
        Self {
            sweep: Duration::from_secs(60),
            idle: Duration::from_secs(600),
            pong_wait: Duration::from_secs(30),
            hard_evict: Duration::from_secs(1500),
        }
    }
}

impl HeartbeatTimings {
    /// Every timing divided by `divisor` (e.g. 1000: the whole heartbeat in
    /// virtual milliseconds; 300: an eviction after 2.2 real seconds).
    #[must_use]
    pub fn scaled_down(self, divisor: u32) -> Self {
        let divisor = divisor.max(1);
        Self {
            sweep: self.sweep / divisor,
            idle: self.idle / divisor,
            pong_wait: self.pong_wait / divisor,
            hard_evict: self.hard_evict / divisor,
        }
    }
}

/// joinmarket-rs's per-link sliding-window limits (`peer.rs`); one message
/// over a limit within `window` disconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimits {
    /// The window (60 s).
    pub window: Duration,
    /// `MAX_PING_PER_MINUTE` (6).
    pub ping: usize,
    /// `MAX_GETPEERLIST_PER_MINUTE` (3).
    pub getpeerlist: usize,
    /// `MAX_PUBMSG_PER_MINUTE` (30), pubmsgs other than `!orderbook`.
    pub pubmsg: usize,
    /// `MAX_ORDERBOOK_PER_MINUTE` (3).
    pub orderbook: usize,
}

impl Default for WindowLimits {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            ping: 6,
            getpeerlist: 3,
            pubmsg: 30,
            orderbook: 3,
        }
    }
}

/// joinmarket-ng's generic token bucket (`jmcore/rate_limiter.py`, keyed by
/// connection, checked for every message after the handshake). A message
/// without a token is dropped (not routed); the link is closed only after
/// `disconnect_after` violations, if set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucketLimits {
    /// Tokens per second (`message_rate_limit`, 500 for the directory).
    pub rate: u32,
    /// Capacity (`message_burst_limit`, 1000 for the directory).
    pub burst: u32,
    /// `rate_limit_disconnect_threshold` (default 0: `None`, never).
    pub disconnect_after: Option<u32>,
}

impl Default for TokenBucketLimits {
    fn default() -> Self {
        Self {
            rate: 500,
            burst: 1000,
            disconnect_after: None,
        }
    }
}

/// Everything a [`DirectoryLink`] needs to know about its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryConfig {
    /// The implementation modelled.
    pub profile: DirectoryProfile,
    /// Heartbeat timings (ignored by the reference, which has none).
    pub timings: HeartbeatTimings,
    /// rs's sliding windows (`Some` for rs by default).
    pub windows: Option<WindowLimits>,
    /// ng's token bucket (`Some` for ng by default).
    pub bucket: Option<TokenBucketLimits>,
    /// The line limit (the profile's by default).
    pub line_limit: LineLimit,
    /// The directory's nick (the sender of its orderbook probes).
    pub nick: String,
    /// The `line` of the peer list it answers GETPEERLIST with (ng and rs);
    /// empty by default.
    pub peerlist: String,
    /// ng's nick authentication, if configured (ignored by the other
    /// profiles, which do not know it). `None` by default, as ng without
    /// `nick_auth_directory_id`: not advertised.
    pub nick_auth: Option<NickAuthServer>,
}

/// joinmarket-ng's server-side nick authentication settings
/// (`jmcore/src/jmcore/settings.py`, `DirectoryServerSettings`:
/// `nick_auth_mode` (default `prefer_verified`), `nick_auth_directory_id`
/// (without it nothing is advertised), `nick_auth_timeout` (30 s, at most
/// 30)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NickAuthServer {
    /// Its mode: disabled advertises nothing; prefer challenges clients
    /// that advertise the feature; require also refuses the others.
    pub mode: NickAuthMode,
    /// Its `directory-id`.
    pub directory_id: DirectoryId,
    /// How long it waits for the proof (then answers `expired`).
    pub timeout: Duration,
}

impl NickAuthServer {
    /// `mode` as `directory_id`, with ng's 30 s timeout.
    #[must_use]
    pub fn new(mode: NickAuthMode, directory_id: DirectoryId) -> Self {
        Self {
            mode,
            directory_id,
            timeout: Duration::from_secs(30),
        }
    }
}

impl DirectoryConfig {
    /// The profile's real defaults, with nick `nick`.
    #[must_use]
    pub fn new(profile: DirectoryProfile, nick: impl Into<String>) -> Self {
        Self {
            profile,
            timings: HeartbeatTimings::default(),
            windows: (profile == DirectoryProfile::JoinmarketRs).then(WindowLimits::default),
            bucket: (profile == DirectoryProfile::JoinmarketNg).then(TokenBucketLimits::default),
            line_limit: profile.line_limit(),
            nick: nick.into(),
            peerlist: String::new(),
            nick_auth: None,
        }
    }

    /// With ng's nick authentication in `mode` as `directory_id`.
    #[must_use]
    pub fn with_nick_auth(mut self, mode: NickAuthMode, directory_id: DirectoryId) -> Self {
        self.nick_auth = Some(NickAuthServer::new(mode, directory_id));
        self
    }

    /// The nick authentication this directory runs: `Some` only for the ng
    /// profile with a mode other than disabled (ng's
    /// `advertises_nick_auth`).
    #[must_use]
    pub fn nick_auth_server(&self) -> Option<&NickAuthServer> {
        self.nick_auth
            .as_ref()
            .filter(|auth| self.profile.knows_nick_auth() && auth.mode != NickAuthMode::Disabled)
    }

    /// With these heartbeat timings.
    #[must_use]
    pub fn with_timings(mut self, timings: HeartbeatTimings) -> Self {
        self.timings = timings;
        self
    }
}

/// What the directory knows of the client from its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPeer {
    /// The client's nick.
    pub nick: String,
    /// It advertised the `ping` feature.
    pub supports_ping: bool,
    /// It serves an onion (`location-string` is not `NOT-SERVING-ONION`):
    /// a maker, which gets an orderbook probe instead of a PING if it has no
    /// `ping`.
    pub is_maker: bool,
}

impl LinkPeer {
    /// From a client handshake (the JSON object in the 793's `line`);
    /// missing fields read as empty / false.
    #[must_use]
    pub fn from_handshake(handshake: &Value) -> Self {
        let location = handshake["location-string"].as_str().unwrap_or_default();
        Self {
            nick: handshake["nick"].as_str().unwrap_or_default().to_owned(),
            supports_ping: handshake["features"]["ping"].as_bool() == Some(true),
            is_maker: !location.is_empty() && location != "NOT-SERVING-ONION",
        }
    }
}

/// Which limit a rate-limited link broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateLimited {
    /// rs: PINGs.
    Ping,
    /// rs: GETPEERLISTs.
    GetPeerlist,
    /// rs: pubmsgs (not `!orderbook`).
    Pubmsg,
    /// rs: `!orderbook`s.
    Orderbook,
    /// ng: the generic token bucket (only with a disconnect threshold).
    Messages,
}

/// Why the directory closes a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Eviction: pinged by a sweep, no PONG within `pong_wait` (ng "pong
    /// timeout", rs "missed !pong").
    PongTimeout,
    /// Eviction: silent for `hard_evict` (ng "idle timeout", rs "idle > 25
    /// min").
    HardIdle,
    /// Eviction: a rate limit.
    RateLimit(RateLimited),
    /// rs: a pubmsg or privmsg whose `from_nick` is not the link's nick.
    SpoofedNick,
    /// rs: the client sent DISCONNECT (801).
    Disconnect,
    /// The reference: a message type that reaches an `assert` (799, 801,
    /// 795).
    Asserted(u32),
    /// ng and the reference: a line that is not a message envelope.
    Malformed,
    /// A line over the [`LineLimit`] (reported by the framing,
    /// [`DirectoryLink::handle_line_too_long`]).
    LineTooLong,
}

impl CloseReason {
    /// `true` for the heartbeat's and rate limiters' evictions.
    #[must_use]
    pub fn is_eviction(self) -> bool {
        matches!(
            self,
            Self::PongTimeout | Self::HardIdle | Self::RateLimit(_)
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PongTimeout => f.write_str("evicted: pong timeout"),
            Self::HardIdle => f.write_str("evicted: idle timeout"),
            Self::RateLimit(which) => write!(f, "evicted: {which:?} rate limit exceeded"),
            Self::SpoofedNick => f.write_str("from_nick is not the link's nick"),
            Self::Disconnect => f.write_str("peer requested disconnect"),
            Self::Asserted(msg_type) => write!(f, "assert on message type {msg_type}"),
            Self::Malformed => f.write_str("malformed message"),
            Self::LineTooLong => f.write_str("line too long"),
        }
    }
}

/// A close, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkClose {
    /// When the directory decided it (a sweep's or pong wait's scheduled
    /// instant for evictions, the arrival for reactions).
    pub at: Instant,
    /// Why.
    pub reason: CloseReason,
}

/// What a link did, for tests to assert on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRecord {
    /// The client's nick.
    pub nick: String,
    /// When the link opened (the accepting reply).
    pub opened: Instant,
    /// When each heartbeat PING was sent.
    pub pings_sent: Vec<Instant>,
    /// When each PONG arrived.
    pub pongs_received: Vec<Instant>,
    /// When each orderbook probe was sent.
    pub orderbook_probes: Vec<Instant>,
    /// PONGs sent in answer to the client's PINGs.
    pub pongs_sent: usize,
    /// Peer lists sent in answer to GETPEERLIST.
    pub peerlists_sent: usize,
    /// Messages ng's token bucket dropped.
    pub dropped: usize,
    /// What the directory passed on from this client, as it sends it on:
    /// public messages to every other peer, private messages to their
    /// target (when that peer is connected). See [`DirectoryLink::handle_line`].
    pub relayed: Vec<(u32, String)>,
    /// Lines received (every framed line, valid or not).
    pub lines: usize,
    /// The close, once decided.
    pub close: Option<LinkClose>,
}

impl LinkRecord {
    /// The close if it is an eviction.
    #[must_use]
    pub fn eviction(&self) -> Option<LinkClose> {
        self.close.filter(|close| close.reason.is_eviction())
    }
}

/// What the link wants done, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutput {
    /// Send this message (a whole line, `\r\n` included).
    Send(String),
    /// Close the link; nothing follows.
    Close(CloseReason),
}

/// One client link of a modelled directory (after an accepting reply).
#[derive(Debug, Clone)]
pub struct DirectoryLink {
    config: DirectoryConfig,
    peer: LinkPeer,
    last_seen: Instant,
    next_sweep: Instant,
    pong_wait_end: Option<Instant>,
    pong_pending: bool,
    windows: [VecDeque<Instant>; 4],
    tokens: f64,
    refilled: Instant,
    violations: u32,
    outputs: VecDeque<LinkOutput>,
    record: LinkRecord,
}

impl DirectoryLink {
    /// A link opened at `now` (its accepting reply sent) on a directory
    /// started at `server_started` (the phase of its sweeps: the first at
    /// `server_started + sweep`, then every `sweep`; this model only sees
    /// its own link, so ng's drift is counted for the sweeps that pinged
    /// this link).
    #[must_use]
    pub fn new(
        config: DirectoryConfig,
        peer: LinkPeer,
        server_started: Instant,
        now: Instant,
    ) -> Self {
        let sweep = config.timings.sweep.max(Duration::from_nanos(1));
        let first = server_started + sweep;
        let next_sweep = if now <= first {
            first
        } else {
            let since = (now - server_started).as_nanos();
            let period = sweep.as_nanos();
            let ticks = since.div_ceil(period);
            let offset = u64::try_from(ticks * period).unwrap_or(u64::MAX);
            server_started + Duration::from_nanos(offset)
        };
        let tokens = config.bucket.map_or(0.0, |bucket| f64::from(bucket.burst));
        Self {
            record: LinkRecord {
                nick: peer.nick.clone(),
                opened: now,
                pings_sent: Vec::new(),
                pongs_received: Vec::new(),
                orderbook_probes: Vec::new(),
                pongs_sent: 0,
                peerlists_sent: 0,
                dropped: 0,
                relayed: Vec::new(),
                lines: 0,
                close: None,
            },
            config,
            peer,
            last_seen: now,
            next_sweep,
            pong_wait_end: None,
            pong_pending: false,
            windows: Default::default(),
            tokens,
            refilled: now,
            violations: 0,
            outputs: VecDeque::new(),
        }
    }

    /// Its configuration.
    #[must_use]
    pub fn config(&self) -> &DirectoryConfig {
        &self.config
    }

    /// What it did so far.
    #[must_use]
    pub fn record(&self) -> &LinkRecord {
        &self.record
    }

    /// `true` once a close is decided (it takes no more input).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.record.close.is_some()
    }

    /// The next instant it wants [`handle_timeout`](Self::handle_timeout)
    /// called (`None`: never; the reference, or closed).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed() || !self.config.profile.has_heartbeat() {
            return None;
        }
        Some(self.pong_wait_end.unwrap_or(self.next_sweep))
    }

    /// The next thing to do, in order; `None` when there is nothing now.
    pub fn poll_output(&mut self) -> Option<LinkOutput> {
        self.outputs.pop_front()
    }

    /// Time has passed up to `now`: runs the sweeps and pong waits due, at
    /// their scheduled instants.
    pub fn handle_timeout(&mut self, now: Instant) {
        while !self.is_closed() && self.config.profile.has_heartbeat() {
            if let Some(end) = self.pong_wait_end {
                if end > now {
                    return;
                }
                self.pong_wait_end = None;
                if self.pong_pending {
                    self.pong_pending = false;
                    self.close(end, CloseReason::PongTimeout);
                    return;
                }
                if self.config.profile == DirectoryProfile::JoinmarketNg {
                    // `_loop`: the sweep that waited returns, then sleeps.
                    self.next_sweep = end + self.config.timings.sweep;
                }
                continue;
            }
            if self.next_sweep > now {
                return;
            }
            let at = self.next_sweep;
            self.sweep(at);
        }
    }

    /// One heartbeat sweep at `at`.
    fn sweep(&mut self, at: Instant) {
        let timings = self.config.timings;
        self.next_sweep = at + timings.sweep;
        let idle = at.saturating_duration_since(self.last_seen);
        if self.idle_beyond(idle, timings.hard_evict) {
            self.close(at, CloseReason::HardIdle);
            return;
        }
        if !self.idle_beyond(idle, timings.idle) {
            return;
        }
        if self.peer.supports_ping {
            self.send(jm_message(MODEL_PING, ""));
            self.record.pings_sent.push(at);
            self.pong_pending = true;
            self.pong_wait_end = Some(at + timings.pong_wait);
        } else if self.peer.is_maker {
            let probe = format!("{}!PUBLIC!orderbook", self.config.nick);
            self.send(jm_message(MODEL_PUBMSG, &probe));
            self.record.orderbook_probes.push(at);
        }
    }

    /// ng: `last_seen < now - threshold`; rs: `elapsed >= threshold`.
    fn idle_beyond(&self, idle: Duration, threshold: Duration) -> bool {
        match self.config.profile {
            DirectoryProfile::JoinmarketNg => idle > threshold,
            _ => idle >= threshold,
        }
    }

    /// The framing saw a line over the limit at `now`.
    pub fn handle_line_too_long(&mut self, now: Instant) {
        self.handle_timeout(now);
        if !self.is_closed() {
            self.close(now, CloseReason::LineTooLong);
        }
    }

    /// A line (terminator removed) arrived from the client at `now`.
    pub fn handle_line(&mut self, now: Instant, line: &[u8]) {
        self.handle_timeout(now);
        if self.is_closed() {
            return;
        }
        self.record.lines += 1;
        if self.config.profile.has_heartbeat() {
            // ng `server.py` and rs `peer.rs`: before parsing anything.
            self.last_seen = now;
        }
        let Some((msg_type, text)) = parse_envelope(line) else {
            match self.config.profile {
                // rs: "Ignoring invalid envelope" (empty lines too).
                DirectoryProfile::JoinmarketRs => {}
                _ => self.close(now, CloseReason::Malformed),
            }
            return;
        };
        match self.config.profile {
            DirectoryProfile::JoinmarketNg => self.ng_message(now, msg_type, &text),
            DirectoryProfile::JoinmarketRs => self.rs_message(now, msg_type, &text),
            DirectoryProfile::Reference => self.reference_message(now, msg_type, &text),
        }
    }

    fn ng_message(&mut self, now: Instant, msg_type: u32, text: &str) {
        if let Some(bucket) = self.config.bucket {
            let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
            self.refilled = now;
            self.tokens =
                (self.tokens + elapsed * f64::from(bucket.rate)).min(f64::from(bucket.burst));
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
            } else {
                self.violations += 1;
                if bucket
                    .disconnect_after
                    .is_some_and(|n| self.violations >= n)
                {
                    self.close(now, CloseReason::RateLimit(RateLimited::Messages));
                } else {
                    self.record.dropped += 1;
                }
                return;
            }
        }
        match msg_type {
            MODEL_PING => self.pong(),
            MODEL_PONG => self.got_pong(now),
            MODEL_GETPEERLIST => self.peerlist(),
            // `message_router.py`: `parse_jm_message` wants three `!`-parts;
            // a public one must be to `PUBLIC`, and either kind from the
            // link's own nick, or it is dropped (logged, link kept). What
            // passes is sent on byte for byte.
            MODEL_PUBMSG | MODEL_PRIVMSG => {
                let mut parts = text.splitn(3, '!');
                let (Some(from), Some(to), Some(_)) = (parts.next(), parts.next(), parts.next())
                else {
                    return;
                };
                if from == self.peer.nick && (msg_type == MODEL_PRIVMSG || to == "PUBLIC") {
                    self.record.relayed.push((msg_type, text.to_owned()));
                }
            }
            // Everything else (801 included) is only logged.
            _ => {}
        }
    }

    fn rs_message(&mut self, now: Instant, msg_type: u32, text: &str) {
        let limits = self.config.windows;
        match msg_type {
            MODEL_PUBMSG => {
                let Some((from, body)) = text
                    .split_once('!')
                    .and_then(|(from, rest)| Some((from, rest.strip_prefix("PUBLIC")?)))
                else {
                    return; // "Ignoring malformed pubmsg line"
                };
                if from != self.peer.nick {
                    self.close(now, CloseReason::SpoofedNick);
                    return;
                }
                let orderbook = body
                    .strip_prefix("!orderbook")
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '));
                if let Some(limits) = limits {
                    let (which, max) = if orderbook {
                        (RateLimited::Orderbook, limits.orderbook)
                    } else {
                        (RateLimited::Pubmsg, limits.pubmsg)
                    };
                    self.window(now, which, max, limits.window);
                }
                // `peer.rs`: only a body `JmMessage::parse` reads (a known
                // command first, `message.rs`) is broadcast, rebuilt as
                // `<nick>!PUBLIC<body>`.
                if !self.is_closed() && rs_known_command(body) {
                    let line = format!("{}!PUBLIC{body}", self.peer.nick);
                    self.record.relayed.push((MODEL_PUBMSG, line));
                }
            }
            MODEL_PRIVMSG => {
                // `parse_privmsg_line`: two `!`; then `dispatch_privmsg`
                // forwards the line as it came.
                let Some((from, rest)) = text.split_once('!') else {
                    return;
                };
                if !rest.contains('!') {
                    return;
                }
                if from == self.peer.nick {
                    self.record.relayed.push((MODEL_PRIVMSG, text.to_owned()));
                } else {
                    self.close(now, CloseReason::SpoofedNick);
                }
            }
            MODEL_GETPEERLIST => {
                if let Some(limits) = limits {
                    self.window(
                        now,
                        RateLimited::GetPeerlist,
                        limits.getpeerlist,
                        limits.window,
                    );
                }
                if !self.is_closed() {
                    self.peerlist();
                }
            }
            MODEL_PING => {
                if let Some(limits) = limits {
                    self.window(now, RateLimited::Ping, limits.ping, limits.window);
                }
                if !self.is_closed() {
                    self.pong();
                }
            }
            MODEL_PONG => self.got_pong(now),
            MODEL_DISCONNECT => self.close(now, CloseReason::Disconnect),
            _ => {}
        }
    }

    fn reference_message(&mut self, now: Instant, msg_type: u32, text: &str) {
        match msg_type {
            // `receive_msg`: split on every `!`, the first two parts are the
            // nicks (no check against the link's nick), the message is `!`
            // and the rest. To `PUBLIC`: relayed to every other peer as
            // `<from>!PUBLIC<message>` (`get_pubmsg`); otherwise forwarded
            // to `<to>` (`forward_privmsg_to_peer`), rebuilt as
            // `<from>!<to>!<cmd> <args>` (`get_privmsg`): the same text,
            // but a message without arguments gains a trailing space.
            MODEL_PUBMSG | MODEL_PRIVMSG => {
                let mut parts = text.splitn(3, '!');
                let (Some(from), Some(to)) = (parts.next(), parts.next()) else {
                    return;
                };
                let rest = parts.next().unwrap_or_default();
                let relayed = if to == "PUBLIC" {
                    (MODEL_PUBMSG, format!("{from}!PUBLIC!{rest}"))
                } else {
                    let (cmd, args) = rest.split_once(' ').unwrap_or((rest, ""));
                    (MODEL_PRIVMSG, format!("{from}!{to}!{cmd} {args}"))
                };
                self.record.relayed.push(relayed);
            }
            // `assert False` (799, 801) and `assert not
            // self.self_as_peer.directory` (795): the connection is lost.
            MODEL_PONG | MODEL_DISCONNECT | MODEL_DN_HANDSHAKE => {
                self.close(now, CloseReason::Asserted(msg_type));
            }
            // 797 (`connect-in`: `add_peer` of the line fails, logged), 798
            // (unknown, ignored), 791 ("not supported"), 793 (a repeated
            // handshake is ignored), 789 from a non-directory, 685/687
            // (relayed): nothing back on this link.
            _ => {}
        }
    }

    /// rs's sliding window: drops instants older than `window`, closes if
    /// `max` are left, else counts `now`.
    fn window(&mut self, now: Instant, which: RateLimited, max: usize, window: Duration) {
        let slot = match which {
            RateLimited::Ping => 0,
            RateLimited::GetPeerlist => 1,
            RateLimited::Pubmsg => 2,
            RateLimited::Orderbook | RateLimited::Messages => 3,
        };
        let stamps = &mut self.windows[slot];
        if let Some(cutoff) = now.checked_sub(window) {
            while stamps.front().is_some_and(|&at| at < cutoff) {
                stamps.pop_front();
            }
        }
        if stamps.len() >= max {
            self.close(now, CloseReason::RateLimit(which));
        } else {
            stamps.push_back(now);
        }
    }

    fn pong(&mut self) {
        self.send(jm_message(MODEL_PONG, ""));
        self.record.pongs_sent += 1;
    }

    fn got_pong(&mut self, now: Instant) {
        self.pong_pending = false;
        self.record.pongs_received.push(now);
    }

    fn peerlist(&mut self) {
        let line = jm_message(MODEL_PEERLIST, &self.config.peerlist);
        self.send(line);
        self.record.peerlists_sent += 1;
    }

    fn send(&mut self, message: String) {
        self.outputs.push_back(LinkOutput::Send(message));
    }

    fn close(&mut self, at: Instant, reason: CloseReason) {
        self.record.close = Some(LinkClose { at, reason });
        self.outputs.push_back(LinkOutput::Close(reason));
    }
}

/// joinmarket-rs's `JmMessage::parse` (`message.rs`): `!` then a command
/// of `MessageCommand::from_str`, lower-cased, up to the first space.
fn rs_known_command(body: &str) -> bool {
    const KNOWN: [&str; 18] = [
        "absoffer",
        "reloffer",
        "swabsoffer",
        "swreloffer",
        "sw0absoffer",
        "sw0reloffer",
        "orderbook",
        "cancel",
        "hp2",
        "tbond",
        "fill",
        "ioauth",
        "auth",
        "pubkey",
        "tx",
        "sig",
        "push",
        "error",
    ];
    let Some(content) = body.strip_prefix('!') else {
        return false;
    };
    let command = content.split(' ').next().unwrap_or_default().to_lowercase();
    KNOWN.contains(&command.as_str())
}

/// `{"type": int, "line": str}`, or `None`.
fn parse_envelope(line: &[u8]) -> Option<(u32, String)> {
    let value: Value = serde_json::from_slice(line).ok()?;
    let msg_type = u32::try_from(value.get("type")?.as_u64()?).ok()?;
    let text = value.get("line")?.as_str()?.to_owned();
    Some((msg_type, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NICK: &str = "J52N8GdNkKtMA6TW";

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn peer(ping: bool, maker: bool) -> LinkPeer {
        LinkPeer {
            nick: NICK.into(),
            supports_ping: ping,
            is_maker: maker,
        }
    }

    fn link(profile: DirectoryProfile, peer: LinkPeer, t0: Instant) -> DirectoryLink {
        DirectoryLink::new(
            DirectoryConfig::new(profile, "J5TestDxServerOO"),
            peer,
            t0,
            t0,
        )
    }

    fn outputs(link: &mut DirectoryLink) -> Vec<LinkOutput> {
        std::iter::from_fn(|| link.poll_output()).collect()
    }

    fn line(msg_type: u32, text: &str) -> Vec<u8> {
        jm_message(msg_type, text).trim_end().as_bytes().to_vec()
    }

    /// What each implementation passes on of one client line: (relayed
    /// lines, closed).
    fn relayed(profile: DirectoryProfile, msg_type: u32, text: &str) -> (Vec<(u32, String)>, bool) {
        let t0 = Instant::now();
        let mut link = link(profile, peer(true, false), t0);
        link.handle_line(t0, &line(msg_type, text));
        (link.record().relayed.clone(), link.is_closed())
    }

    #[test]
    fn public_and_private_messages_are_relayed_by_each_implementations_rules() {
        use DirectoryProfile::{JoinmarketNg as Ng, JoinmarketRs as Rs, Reference as Ref};
        let orderbook = format!("{NICK}!PUBLIC!orderbook");
        for profile in [Ng, Rs, Ref] {
            assert_eq!(
                relayed(profile, MODEL_PUBMSG, &orderbook),
                (vec![(MODEL_PUBMSG, orderbook.clone())], false),
                "{profile:?}"
            );
        }
        // A bare command (no nicks) is relayed as a public message by none.
        for profile in [Ng, Rs, Ref] {
            let (lines, _) = relayed(profile, MODEL_PUBMSG, "!orderbook");
            assert!(
                lines.iter().all(|(kind, _)| *kind != MODEL_PUBMSG),
                "{profile:?}"
            );
        }
        // rs relays only known commands.
        let hello = format!("{NICK}!PUBLIC!hello");
        assert_eq!(relayed(Ng, MODEL_PUBMSG, &hello).0.len(), 1);
        assert_eq!(relayed(Rs, MODEL_PUBMSG, &hello), (vec![], false));
        assert_eq!(relayed(Ref, MODEL_PUBMSG, &hello).0.len(), 1);
        // Another nick as sender: ng drops it, rs closes, the reference relays.
        let spoof = "J5otherNickXXXXX!PUBLIC!orderbook";
        assert_eq!(relayed(Ng, MODEL_PUBMSG, spoof), (vec![], false));
        assert_eq!(relayed(Rs, MODEL_PUBMSG, spoof), (vec![], true));
        assert_eq!(relayed(Ref, MODEL_PUBMSG, spoof).0.len(), 1);
        // Private: forwarded as it came; the reference adds a space after a
        // command without arguments.
        let fill = format!("{NICK}!J5otherNickXXXXX!fill 0 100000 abc");
        for profile in [Ng, Rs, Ref] {
            assert_eq!(
                relayed(profile, MODEL_PRIVMSG, &fill).0,
                vec![(MODEL_PRIVMSG, fill.clone())]
            );
        }
        let bare = format!("{NICK}!J5otherNickXXXXX!orderbook");
        assert_eq!(
            relayed(Ref, MODEL_PRIVMSG, &bare).0,
            vec![(MODEL_PRIVMSG, format!("{bare} "))]
        );
    }

    /// Runs the link by its own timeouts until `end`, answering each PING
    /// with a PONG `answer_after` later if given.
    fn run(link: &mut DirectoryLink, end: Instant, answer_after: Option<Duration>) {
        let mut pong_at: Option<Instant> = None;
        loop {
            let next = [link.poll_timeout(), pong_at].into_iter().flatten().min();
            let Some(at) = next.filter(|&at| at <= end) else {
                return;
            };
            if pong_at == Some(at) {
                pong_at = None;
                link.handle_line(at, &line(MODEL_PONG, ""));
            } else {
                link.handle_timeout(at);
            }
            for output in outputs(link) {
                if output == LinkOutput::Send(jm_message(MODEL_PING, "")) {
                    pong_at = answer_after.map(|delay| at + delay);
                }
            }
        }
    }

    #[test]
    fn limits_and_features_per_profile() {
        use DirectoryProfile::*;
        assert_eq!(JoinmarketNg.features(), ["peerlist_features", "ping"]);
        assert_eq!(JoinmarketRs.features(), ["peerlist_features", "ping"]);
        assert!(Reference.features().is_empty());
        // rs counts the `\n` (and a `\r` before it) towards 40,000.
        assert!(JoinmarketRs.line_limit().allows(39_998, 2));
        assert!(!JoinmarketRs.line_limit().allows(39_999, 2));
        assert!(JoinmarketRs.line_limit().allows(39_999, 1));
        // Twisted does not count its `\r\n` delimiter.
        assert!(Reference.line_limit().allows(40_000, 2));
        assert!(!Reference.line_limit().allows(40_001, 2));
        assert!(JoinmarketNg.line_limit().allows(65_536, 2));
        assert!(!JoinmarketNg.line_limit().allows(65_537, 1));
        assert_eq!(
            DirectoryProfile::duplicate_nick_motd(NICK),
            format!("Rejected: Peer nick already registered: {NICK}")
        );
    }

    #[test]
    fn ng_evicts_an_idle_ping_client_that_never_pongs_at_690_s() {
        // Sweeps at 60, 120, ...; at 600 the link is idle exactly 600 s,
        // not more (ng compares strictly): pinged at 660, evicted at 690.
        let t0 = Instant::now();
        let mut link = link(DirectoryProfile::JoinmarketNg, peer(true, false), t0);
        assert_eq!(link.poll_timeout(), Some(t0 + secs(60)));
        link.handle_timeout(t0 + secs(659));
        assert!(outputs(&mut link).is_empty());
        assert_eq!(link.poll_timeout(), Some(t0 + secs(660)));
        link.handle_timeout(t0 + secs(660));
        assert_eq!(outputs(&mut link), [LinkOutput::Send(jm_message(798, ""))]);
        assert_eq!(link.poll_timeout(), Some(t0 + secs(690)));
        link.handle_timeout(t0 + secs(689));
        assert!(!link.is_closed());
        link.handle_timeout(t0 + secs(690));
        assert_eq!(
            outputs(&mut link),
            [LinkOutput::Close(CloseReason::PongTimeout)]
        );
        let record = link.record();
        assert_eq!(record.pings_sent, [t0 + secs(660)]);
        assert_eq!(
            record.eviction(),
            Some(LinkClose {
                at: t0 + secs(690),
                reason: CloseReason::PongTimeout
            })
        );
        assert_eq!(link.poll_timeout(), None);
    }

    #[test]
    fn rs_pings_at_600_when_opened_on_a_sweep_phase_and_at_660_otherwise() {
        // rs compares with `>=`.
        let t0 = Instant::now();
        let mut on_phase = link(DirectoryProfile::JoinmarketRs, peer(true, false), t0);
        on_phase.handle_timeout(t0 + secs(630));
        assert_eq!(on_phase.record().pings_sent, [t0 + secs(600)]);
        assert_eq!(on_phase.record().eviction().unwrap().at, t0 + secs(630));

        let config = DirectoryConfig::new(DirectoryProfile::JoinmarketRs, "J5TestDxServerOO");
        let opened = t0 + Duration::from_millis(1);
        let mut late = DirectoryLink::new(config, peer(true, false), t0, opened);
        late.handle_timeout(t0 + secs(3600));
        assert_eq!(late.record().pings_sent, [t0 + secs(660)]);
        assert_eq!(late.record().eviction().unwrap().at, t0 + secs(690));
    }

    #[test]
    fn a_client_that_pongs_is_never_evicted_in_24_hours() {
        for profile in [
            DirectoryProfile::JoinmarketNg,
            DirectoryProfile::JoinmarketRs,
        ] {
            let t0 = Instant::now();
            let mut link = link(profile, peer(true, false), t0);
            run(&mut link, t0 + secs(86_400), Some(secs(1)));
            let record = link.record();
            assert_eq!(record.close, None, "{profile:?}");
            // The last PING may be answered after the end.
            assert!(record.pings_sent.len() - record.pongs_received.len() <= 1);
            // One PING every ~11 minutes (the PONG refreshes `last_seen`).
            assert!((120..=140).contains(&record.pings_sent.len()), "{record:?}");
        }
    }

    #[test]
    fn ng_sweeps_drift_by_the_pong_wait() {
        let t0 = Instant::now();
        let mut link = link(DirectoryProfile::JoinmarketNg, peer(true, false), t0);
        run(&mut link, t0 + secs(2000), Some(secs(1)));
        // Pinged at 660 (PONG at 661); the sweep ends at 690, then sweeps
        // at 750, ..., 1290 (idle 629 s > 600): pinged again.
        let pings = &link.record().pings_sent;
        assert_eq!(pings[..2], [t0 + secs(660), t0 + secs(1290)]);
    }

    #[test]
    fn a_silent_client_without_ping_is_hard_evicted() {
        let t0 = Instant::now();
        // ng: idle > 1500 first true at the sweep at 1560.
        let mut taker = link(DirectoryProfile::JoinmarketNg, peer(false, false), t0);
        taker.handle_timeout(t0 + secs(10_000));
        assert!(taker.record().pings_sent.is_empty());
        assert!(taker.record().orderbook_probes.is_empty());
        let close = taker.record().eviction().unwrap();
        assert_eq!(
            (close.at, close.reason),
            (t0 + secs(1560), CloseReason::HardIdle)
        );
        // rs: >= 1500, at 1500. A maker is sent orderbook probes meanwhile.
        let mut maker = link(DirectoryProfile::JoinmarketRs, peer(false, true), t0);
        maker.handle_timeout(t0 + secs(10_000));
        assert_eq!(maker.record().orderbook_probes.len(), 15); // 600..=1440
        let probe = jm_message(687, "J5TestDxServerOO!PUBLIC!orderbook");
        assert_eq!(outputs(&mut maker)[0], LinkOutput::Send(probe));
        let close = maker.record().eviction().unwrap();
        assert_eq!(
            (close.at, close.reason),
            (t0 + secs(1500), CloseReason::HardIdle)
        );
    }

    #[test]
    fn scaled_timings_run_the_heartbeat_in_milliseconds() {
        let t0 = Instant::now();
        let timings = HeartbeatTimings::default().scaled_down(1000);
        assert_eq!(timings.sweep, Duration::from_millis(60));
        let config = DirectoryConfig::new(DirectoryProfile::JoinmarketNg, "J5TestDxServerOO")
            .with_timings(timings);
        let mut link = DirectoryLink::new(config, peer(true, false), t0, t0);
        link.handle_timeout(t0 + secs(1));
        assert_eq!(
            link.record().eviction().unwrap().at,
            t0 + Duration::from_millis(690)
        );
    }

    #[test]
    fn rs_disconnects_the_seventh_ping_within_a_minute() {
        let t0 = Instant::now();
        let mut link = link(DirectoryProfile::JoinmarketRs, peer(true, false), t0);
        for i in 0..6 {
            link.handle_line(t0 + secs(i), &line(MODEL_PING, ""));
        }
        assert_eq!(outputs(&mut link).len(), 6);
        assert_eq!(link.record().pongs_sent, 6);
        link.handle_line(t0 + secs(59), &line(MODEL_PING, ""));
        assert_eq!(
            outputs(&mut link),
            [LinkOutput::Close(CloseReason::RateLimit(RateLimited::Ping))]
        );
        // Spaced out, any number is fine.
        let mut link = self::link(DirectoryProfile::JoinmarketRs, peer(true, false), t0);
        for i in 0..20 {
            link.handle_line(t0 + secs(11 * i), &line(MODEL_PING, ""));
        }
        assert!(!link.is_closed());
    }

    #[test]
    fn rs_other_windows_spoofing_and_disconnect() {
        let t0 = Instant::now();
        let rs = |t0| link(DirectoryProfile::JoinmarketRs, peer(true, false), t0);
        let mut getpeerlist = rs(t0);
        for _ in 0..3 {
            getpeerlist.handle_line(t0, &line(MODEL_GETPEERLIST, ""));
        }
        assert_eq!(getpeerlist.record().peerlists_sent, 3);
        getpeerlist.handle_line(t0, &line(MODEL_GETPEERLIST, ""));
        let reason = getpeerlist.record().close.unwrap().reason;
        assert_eq!(reason, CloseReason::RateLimit(RateLimited::GetPeerlist));

        let mut orderbook = rs(t0);
        let ask = format!("{NICK}!PUBLIC!orderbook");
        for _ in 0..3 {
            orderbook.handle_line(t0, &line(MODEL_PUBMSG, &ask));
        }
        for _ in 0..29 {
            orderbook.handle_line(t0, &line(MODEL_PUBMSG, &format!("{NICK}!PUBLIC!hello")));
        }
        assert!(!orderbook.is_closed());
        orderbook.handle_line(t0, &line(MODEL_PUBMSG, &ask));
        let reason = orderbook.record().close.unwrap().reason;
        assert_eq!(reason, CloseReason::RateLimit(RateLimited::Orderbook));

        let mut spoof = rs(t0);
        spoof.handle_line(t0, &line(MODEL_PRIVMSG, "J5other!J5x!hi"));
        assert_eq!(
            spoof.record().close.unwrap().reason,
            CloseReason::SpoofedNick
        );

        let mut bye = rs(t0);
        bye.handle_line(t0, b"not json");
        assert!(!bye.is_closed(), "rs ignores invalid envelopes");
        bye.handle_line(t0, &line(MODEL_DISCONNECT, ""));
        assert_eq!(bye.record().close.unwrap().reason, CloseReason::Disconnect);
    }

    #[test]
    fn ng_answers_ping_and_getpeerlist_ignores_disconnect_and_drops_floods() {
        let t0 = Instant::now();
        let mut ng = link(DirectoryProfile::JoinmarketNg, peer(true, false), t0);
        ng.handle_line(t0, &line(MODEL_PING, ""));
        ng.handle_line(t0, &line(MODEL_GETPEERLIST, ""));
        ng.handle_line(t0, &line(MODEL_DISCONNECT, ""));
        assert_eq!(
            outputs(&mut ng),
            [
                LinkOutput::Send(jm_message(799, "")),
                LinkOutput::Send(jm_message(789, "")),
            ]
        );
        assert!(!ng.is_closed());
        // 1000 tokens at once, the rest dropped; never disconnected.
        for _ in 0..1100 {
            ng.handle_line(t0, &line(MODEL_PING, ""));
        }
        assert!(!ng.is_closed());
        assert_eq!(ng.record().pongs_sent, 1 + 997);
        assert_eq!(ng.record().dropped, 103);
        ng.handle_line(t0, b"junk");
        assert_eq!(ng.record().close.unwrap().reason, CloseReason::Malformed);
    }

    #[test]
    fn the_reference_never_pings_and_closes_on_799_and_801() {
        let t0 = Instant::now();
        let mut reference = link(DirectoryProfile::Reference, peer(true, false), t0);
        assert_eq!(reference.poll_timeout(), None);
        reference.handle_timeout(t0 + secs(86_400));
        for msg_type in [
            MODEL_CONNECT_IN,
            MODEL_PING,
            MODEL_GETPEERLIST,
            MODEL_HANDSHAKE,
        ] {
            reference.handle_line(t0 + secs(86_400), &line(msg_type, ""));
        }
        assert!(outputs(&mut reference).is_empty());
        assert!(!reference.is_closed());
        reference.handle_line(t0 + secs(86_401), &line(MODEL_PONG, ""));
        assert_eq!(
            outputs(&mut reference),
            [LinkOutput::Close(CloseReason::Asserted(799))]
        );
        let mut reference = link(DirectoryProfile::Reference, peer(true, false), t0);
        reference.handle_line(t0, &line(MODEL_DISCONNECT, ""));
        assert_eq!(
            reference.record().close.unwrap().reason,
            CloseReason::Asserted(801)
        );
    }

    #[test]
    fn from_handshake_reads_ping_and_maker() {
        let handshake = crate::jm_client_handshake(NICK, "regtest");
        assert_eq!(LinkPeer::from_handshake(&handshake), peer(true, false));
        let mut maker = handshake;
        maker["location-string"] = "abc.onion:5222".into();
        maker["features"] = serde_json::json!({});
        assert_eq!(LinkPeer::from_handshake(&maker), peer(false, true));
    }
}
