//! The JoinMarket directory handshake and connection.
//!
//! [`JoinMarketHandshake`] sends the client handshake (type 793), reads the
//! directory's reply (795; 793 is accepted too, as the original does),
//! checks it and hands back a [`DirectoryConnection`]: typed envelopes in
//! and out, `\r\n` framing, PING (798) answered with PONG (799) by its
//! link task, PINGs sent as keepalive probes, and the messages after the
//! reply kept for the user in a queue bounded in bytes (overflow is
//! reported as [`RecvError::Lagged`], never lost silently).
//!
//! ```
//! use dirpool::joinmarket::{JmConfig, JoinMarketHandshake, Network, NickIdentity};
//!
//! let config = JmConfig::new(NickIdentity::random()?, Network::Signet);
//! let handshake = JoinMarketHandshake::new(config)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod identity;
pub mod lines;
pub mod messaging;
pub mod nick_auth;
mod nick_key;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;

use dirpool_core::{LinkLoss, ServerAddr};
use futures::future::{Either, select};
use futures::lock::Mutex;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};

pub use identity::{Location, LocationError, Network, Nick, NickError, UnknownNetwork};
pub use lines::{
    Command, LineError, PeerlistEntry, PrivateMessage, PrivmsgSignature, PublicMessage,
    commands_body, get_peerlist, parse_commands, parse_peerlist, peerlist_payload,
};
pub use messaging::{
    DirectoryOutcome, ITEM_OVERHEAD, Incoming, MAX_TABLE_ENTRIES, MIN_INBOUND_BYTES, Message,
    MessageError, Messaging, MessagingConfig, MessagingStats, Route, RouteFallback, RouteSource,
    SendFailure, SendToError,
};
pub use nick_auth::{
    DirectoryId, NickAuthCode, NickAuthError, NickAuthMessage, NickAuthMode, NickAuthStatus,
};
pub use nick_key::{
    NickIdentity, NickKeyError, ONION_HOSTID, SECRET_KEY_LEN, SignatureError,
    VerifiedPrivateMessage,
};
pub use wire::Envelope;
use wire::LineReader;

use crate::error::{CloseError, HandshakeError, HandshakeErrorKind};
use crate::handshake::{Client, Handshake, HandshakeContext, LinkSignals, LossSignal, ProbeStatus};
use crate::runtime::{BoxedStream, Runtime, before};

/// The protocol version we speak.
pub const PROTOCOL_VERSION: u32 = 5;
/// The largest line we accept by default: 8 MiB. joinmarket-rs sends all
/// its makers in one PEERLIST (up to 20,000 and itself,
/// `crates/joinmarket-dn/src/router.rs`); lists of about 2.2 MB have been
/// seen, and 8 MiB holds 20,001 entries of about 400 bytes (a maker with a
/// dozen features). The largest list its caps allow
/// ([`MAX_PEERLIST_PAYLOAD`](lines::MAX_PEERLIST_PAYLOAD), about 41.4 MiB)
/// needs a larger [`JmConfig::max_line`] (up to [`MAX_MAX_LINE`]): a
/// default sized for it would let each directory hold 50 MiB.
/// joinmarket-ng's client stops at 2 MiB (`jmcore/src/jmcore/network.py`,
/// `max_message_size`). Memory follows what arrives: the line buffer grows
/// only as a line does, and shrinks back after it.
pub const DEFAULT_MAX_LINE: usize = 8 * 1024 * 1024;
/// The default [`JmConfig::inbound_bytes`]: one line of
/// [`DEFAULT_MAX_LINE`] and its overhead, plus 4 MiB.
pub const DEFAULT_INBOUND_BYTES: usize = DEFAULT_MAX_LINE + MESSAGE_OVERHEAD + 4 * 1024 * 1024;
/// The smallest `max_line` allowed (a handshake reply must fit).
pub const MIN_MAX_LINE: usize = 1024;
/// The largest `max_line` allowed.
pub const MAX_MAX_LINE: usize = 64 * 1024 * 1024;
/// The largest `inbound_bytes` or `outbound_bytes` allowed.
pub const MAX_QUEUE_BYTES: usize = 1024 * 1024 * 1024;
/// The longest `handshake_timeout` or `write_timeout` allowed (a year).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// What each message kept for the user counts against `inbound_bytes` on
/// top of its line's bytes: its slot in the queue, which never holds more
/// than four slots per message kept (plus 64 slots when nearly empty).
pub const MESSAGE_OVERHEAD: usize = 4 * std::mem::size_of::<Envelope>();

/// How we present ourselves to one directory, and the bounds of the link.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JmConfig {
    /// Our key; our nick ([`JmConfig::nick`]) is derived from it, so what
    /// we sign verifies under the nick we present. Compared by public key;
    /// `Debug` shows the nick and public key, never the secret.
    pub identity: Arc<NickIdentity>,
    /// Our own onion, or not serving.
    pub location: Location,
    /// JMP-0005 nick authentication (see [`nick_auth`]): by default
    /// [`NickAuthMode::PreferVerified`], as joinmarket-ng's client.
    pub nick_auth: NickAuthMode,
    /// Directory identities pinned per endpoint (joinmarket-ng's
    /// `nick_auth_directory_id`): a pinned id wins over the one derived
    /// from a v3 onion ([`DirectoryId::for_endpoint`]); an endpoint that is
    /// not an onion (a test directory on 127.0.0.1) has one only if pinned.
    pub directory_ids: HashMap<ServerAddr, DirectoryId>,
    /// The Bitcoin network; the directory must serve the same.
    pub network: Network,
    /// Features we advertise (name → true). Default: `peerlist_features`
    /// and `ping`, as joinmarket-ng. With `ping`, PINGs are answered.
    pub features: Vec<String>,
    /// Protocol version we announce (5).
    pub protocol_version: u32,
    /// Longest line we read, in [[`MIN_MAX_LINE`], [`MAX_MAX_LINE`]]; a
    /// longer one ends the link without more than this being buffered.
    pub max_line: usize,
    /// Bound on the handshake itself (the pool's connection timeout bounds
    /// the whole dial as well; the earlier wins). Non-zero, at most
    /// [`MAX_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// Bound on writing one line once the link task starts it: a directory
    /// that stops reading for this long ends the link with
    /// [`LinkLoss::WriteTimedOut`]. Non-zero, at most [`MAX_TIMEOUT`].
    pub write_timeout: Duration,
    /// Bytes of messages kept for the user (each counts its line plus
    /// [`MESSAGE_OVERHEAD`]). A message that does not fit is dropped and
    /// counted, and [`DirectoryConnection::recv`] reports the loss as
    /// [`RecvError::Lagged`]; the reader never waits for the user. At
    /// least `max_line + MESSAGE_OVERHEAD`, at most [`MAX_QUEUE_BYTES`].
    pub inbound_bytes: usize,
    /// Bytes of encoded lines waiting to be written;
    /// [`DirectoryConnection::send`] waits for room. At least
    /// [`MAX_SEND_LINE`](wire::MAX_SEND_LINE) (one maximal line), at most
    /// [`MAX_QUEUE_BYTES`].
    pub outbound_bytes: usize,
}

impl JmConfig {
    /// A configuration with every default: not serving, features
    /// `peerlist_features` and `ping`, version 5, lines up to
    /// [`DEFAULT_MAX_LINE`] (48 MiB), 60 s handshake timeout, 30 s write
    /// timeout, [`DEFAULT_INBOUND_BYTES`] kept for the user and 256 KiB
    /// waiting to be sent. The bounds are limits, not allocations.
    pub fn new(identity: impl Into<Arc<NickIdentity>>, network: Network) -> Self {
        Self {
            identity: identity.into(),
            location: Location::NotServing,
            nick_auth: NickAuthMode::default(),
            directory_ids: HashMap::new(),
            network,
            features: vec!["peerlist_features".to_owned(), "ping".to_owned()],
            protocol_version: PROTOCOL_VERSION,
            max_line: DEFAULT_MAX_LINE,
            handshake_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            inbound_bytes: DEFAULT_INBOUND_BYTES,
            outbound_bytes: 256 * 1024,
        }
    }

    /// Our nick, the one [`JmConfig::identity`] backs.
    pub fn nick(&self) -> &Nick {
        self.identity.nick()
    }

    /// The identity we expect `server` to present in a nick-auth
    /// challenge: the pinned one, else the one derived from its onion.
    pub fn expected_directory_id(&self, server: &ServerAddr) -> Option<DirectoryId> {
        self.directory_ids
            .get(server)
            .cloned()
            .or_else(|| DirectoryId::for_endpoint(server))
    }

    /// Checks the features and every limit.
    ///
    /// # Errors
    /// [`JmConfigError`] naming the first field that is wrong and its
    /// allowed range.
    pub fn validate(&self) -> Result<(), JmConfigError> {
        if !self.location.is_valid() {
            return Err(JmConfigError::Location(self.location.to_string()));
        }
        for feature in &self.features {
            let known_shape = !feature.is_empty()
                && feature
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            // The link advertises `nick_auth` itself, as `nick_auth` says.
            if !known_shape || feature == nick_auth::FEATURE_NICK_AUTH {
                return Err(JmConfigError::Feature(feature.clone()));
            }
        }
        check_size("max_line", self.max_line, MIN_MAX_LINE, MAX_MAX_LINE)?;
        check_timeout("handshake_timeout", self.handshake_timeout)?;
        check_timeout("write_timeout", self.write_timeout)?;
        check_size(
            "inbound_bytes",
            self.inbound_bytes,
            self.max_line.saturating_add(MESSAGE_OVERHEAD),
            MAX_QUEUE_BYTES,
        )?;
        check_size(
            "outbound_bytes",
            self.outbound_bytes,
            wire::MAX_SEND_LINE,
            MAX_QUEUE_BYTES,
        )?;
        Ok(())
    }
}

/// `Ok` if `value` is in `min..=max`, else [`JmConfigError::Size`] naming
/// `field` (one check for every size or count in a configuration).
pub(crate) fn check_size(
    field: &'static str,
    value: usize,
    min: usize,
    max: usize,
) -> Result<(), JmConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(JmConfigError::Size {
            field,
            value,
            min,
            max,
        })
    }
}

/// `Ok` if `value` is non-zero and at most [`MAX_TIMEOUT`], else
/// [`JmConfigError::Timeout`] naming `field`.
pub(crate) fn check_timeout(field: &'static str, value: Duration) -> Result<(), JmConfigError> {
    if value.is_zero() || value > MAX_TIMEOUT {
        Err(JmConfigError::Timeout {
            field,
            value,
            max: MAX_TIMEOUT,
        })
    } else {
        Ok(())
    }
}

/// A [`JmConfig`] the handshake cannot use.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JmConfigError {
    /// A serving location that is not a v3 onion service: every current
    /// directory refuses the handshake (see [`Location`]).
    #[error("location {0:?} is not a v3 onion service")]
    Location(String),
    /// Feature names are lower-case letters, digits and `_`; `nick_auth`
    /// is not among them (the link advertises it as
    /// [`JmConfig::nick_auth`] says).
    #[error("feature name {0:?} is not lower-case letters, digits and '_', or is nick_auth")]
    Feature(String),
    /// A size outside its range.
    #[error("{field} is {value}; it must be in {min}..={max}")]
    Size {
        /// The field.
        field: &'static str,
        /// Its value.
        value: usize,
        /// The least allowed.
        min: usize,
        /// The most allowed.
        max: usize,
    },
    /// A zero timeout, or one over [`MAX_TIMEOUT`].
    #[error("{field} is {value:?}; it must be non-zero and at most {max:?}")]
    Timeout {
        /// The field.
        field: &'static str,
        /// Its value.
        value: Duration,
        /// The most allowed.
        max: Duration,
    },
}

/// Why [`DirectoryConnection::recv`] returned no message.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// This many messages arrived while the inbound queue was full
    /// (`inbound_bytes`) and were dropped. The link is still up: call
    /// `recv` again for the messages after them.
    #[error("{0} messages from the directory were dropped: the inbound queue was full")]
    Lagged(u64),
    /// The link is gone and every message kept has been received.
    #[error("the link to the directory is closed")]
    Closed,
}

/// Everything that can go wrong speaking to a directory.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum JmError {
    /// The directory closed without replying.
    #[error(
        "directory closed the connection without replying to our handshake \
         (directories do this when they dislike it: check nick, network and features)"
    )]
    ClosedWithoutReply,
    /// A line is not JSON.
    #[error("directory sent a line that is not JSON")]
    NotJson(#[source] serde_json::Error),
    /// The same key twice in one JSON object: joinmarket-ng refuses it
    /// (`parse_strict_json_object`), serde_json would keep the last.
    #[error("directory sent JSON with the key {0:?} twice in one object")]
    DuplicateKey(String),
    /// JSON, but not an object.
    #[error("directory sent JSON that is not an object")]
    NotObject,
    /// A required field is missing.
    #[error("directory message has no {0:?} field")]
    MissingField(&'static str),
    /// A field of the wrong JSON type.
    #[error("directory message field {0:?} has the wrong type")]
    WrongFieldType(&'static str),
    /// The reply is another message type.
    #[error("expected a handshake reply (795), got message type {0}")]
    WrongType(u32),
    /// `accepted: false` because the directory still holds our nick (its
    /// previous link not yet noticed dead): joinmarket-ng's "Peer nick
    /// already registered" / "Verified nick already registered". Transient:
    /// the pool retries after its backoff.
    #[error("directory still holds our nick from an earlier link: {motd}")]
    NickInUse {
        /// The directory's message, cleaned for display.
        motd: String,
    },
    /// `accepted: false`.
    #[error("directory rejected our handshake{}", motd_suffix(.motd))]
    Rejected {
        /// The directory's message, cleaned for display.
        motd: Option<String>,
    },
    /// Our version is outside the directory's range.
    #[error("directory speaks protocol {min}..={max}, we speak {ours}")]
    IncompatibleVersion {
        /// Ours.
        ours: u32,
        /// Its lowest.
        min: u64,
        /// Its highest.
        max: u64,
    },
    /// The directory serves another network.
    #[error("directory serves {theirs:?}, we are on {ours}")]
    WrongNetwork {
        /// Ours.
        ours: Network,
        /// Theirs, cleaned for display.
        theirs: String,
    },
    /// A line longer than the limit.
    #[error("directory sent a line over {limit} bytes")]
    LineTooLong {
        /// The limit.
        limit: usize,
    },
    /// We tried to send a public or private message whose from-nick (the
    /// text before its first `!`) is not the nick this link presented:
    /// joinmarket-rs disconnects the link (`crates/joinmarket-dn/src/peer.rs`,
    /// "from_nick mismatch — disconnecting") and joinmarket-ng drops it
    /// (`directory_server/.../message_router.py`, "Dropping public message
    /// claiming ..."). Nothing was sent.
    #[error("the message is from {from:?}, but this link's nick is {ours}")]
    NotOurNick {
        /// The message's from-nick, cleaned for display.
        from: String,
        /// The link's nick.
        ours: Nick,
    },
    /// We tried to send a message type the link keeps to itself: PING and
    /// PONG (its keepalive; the reference directory closes on a PONG,
    /// `onionmc.py`, `assert False`), DISCONNECT (joinmarket-rs and the
    /// reference close the link on it, joinmarket-ng ignores it, and ng's
    /// own client never sends it; end a link with `close`), and the
    /// handshakes 793 and 795, and nick authentication's 803, 805 and 807
    /// (part of the handshake). Nothing was sent.
    #[error("message type {0} is sent by the link itself, never by its user")]
    ControlType(u32),
    /// We tried to send a line over the directories' limit.
    #[error("message of {len} bytes exceeds the {limit}-byte line limit of directories")]
    SendTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The connection closed in the middle of a line.
    #[error("connection closed in the middle of a line")]
    ClosedMidLine,
    /// Bytes that are not UTF-8.
    #[error("directory sent a line that is not UTF-8")]
    InvalidUtf8,
    /// The handshake took longer than its timeout (e.g. a directory that
    /// trickles bytes).
    #[error("handshake timed out after {0:?}")]
    TimedOut(Duration),
    /// The connection is closed (or the link ended).
    #[error("connection closed")]
    Closed,
    /// The [`JmConfig`] is invalid.
    #[error("invalid configuration")]
    Config(#[source] JmConfigError),
    /// JMP-0005 nick authentication failed (see [`nick_auth`]). The pool
    /// counts a refused proof, a missing feature we require and a
    /// directory that names itself otherwise as the directory rejecting
    /// us; a broken exchange as a protocol error; a slow one as a timeout.
    #[error("nick authentication failed")]
    NickAuth(#[source] NickAuthError),
    /// Reading or writing failed.
    #[error("I/O error")]
    Io(#[source] io::Error),
}

fn motd_suffix(motd: &Option<String>) -> String {
    motd.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
}

impl JmError {
    /// How the pool classifies it.
    pub fn kind(&self) -> HandshakeErrorKind {
        match self {
            Self::Rejected { .. }
            | Self::IncompatibleVersion { .. }
            | Self::WrongNetwork { .. } => HandshakeErrorKind::Rejected,
            Self::NickInUse { .. } => HandshakeErrorKind::NickInUse,
            Self::Io(e) => HandshakeErrorKind::Io(e.kind()),
            Self::TimedOut(_) => HandshakeErrorKind::TimedOut,
            Self::NickAuth(e) => match e {
                NickAuthError::TimedOut(_) => HandshakeErrorKind::TimedOut,
                NickAuthError::UnexpectedType { .. }
                | NickAuthError::Closed
                | NickAuthError::Malformed { .. } => HandshakeErrorKind::Protocol,
                _ => HandshakeErrorKind::Rejected,
            },
            _ => HandshakeErrorKind::Protocol,
        }
    }
}

impl From<JmError> for HandshakeError {
    fn from(e: JmError) -> Self {
        HandshakeError::new(e.kind(), e)
    }
}

/// Directory text for display: control characters removed, at most 512
/// characters.
fn clean(text: &str) -> String {
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(512).collect();
    if text.chars().count() > 512 {
        out.push('…');
    }
    out
}

/// Whether a rejection's motd is joinmarket-ng's "nick already
/// registered" (`directory_server/peer_registry.py`, sent as
/// `"Rejected: Peer nick already registered: <nick>"` or `"Rejected:
/// Verified nick already registered: <nick>"`).
fn nick_in_use(motd: &str) -> bool {
    motd.to_ascii_lowercase()
        .contains("nick already registered")
}

/// Refuses a PUBMSG or PRIVMSG whose from-nick (the text before the first
/// `!`, as joinmarket-rs's `parse_pubmsg_line` and `parse_privmsg_line`
/// take it) is not `ours`; other kinds, and lines without `!` (which no
/// directory relays), pass.
///
/// # Errors
/// [`JmError::NotOurNick`].
pub fn check_sender(envelope: &Envelope, ours: &Nick) -> Result<(), JmError> {
    if !matches!(envelope.kind, wire::PUBMSG | wire::PRIVMSG) {
        return Ok(());
    }
    match envelope.line.split_once('!') {
        Some((from, _)) if from != ours.as_str() => Err(JmError::NotOurNick {
            from: clean(from.get(..64).unwrap_or(from)),
            ours: ours.clone(),
        }),
        _ => Ok(()),
    }
}

/// The message types only the link sends (see [`JmError::ControlType`]).
const LINK_TYPES: [u32; 8] = [
    wire::PING,
    wire::PONG,
    wire::DISCONNECT,
    wire::HANDSHAKE,
    wire::DIRECTORY_HANDSHAKE,
    wire::NICK_AUTH_CHALLENGE,
    wire::NICK_AUTH_PROOF,
    wire::NICK_AUTH_RESULT,
];

/// What the directory told us about itself.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryInfo {
    /// Its nick.
    pub nick: String,
    /// Its message of the day, cleaned for display.
    pub motd: Option<String>,
    /// Features it advertises.
    pub features: Vec<String>,
    /// Lowest protocol version it speaks.
    pub protocol_min: u64,
    /// Highest protocol version it speaks.
    pub protocol_max: u64,
    /// Whether it says it is a directory.
    pub directory: bool,
    /// Its location string, if sent.
    pub location: Option<String>,
    /// The network it serves, if sent.
    pub network: Option<String>,
    /// Whether it verified our nick (JMP-0005), and if not why not.
    pub nick_auth: NickAuthStatus,
}

impl DirectoryInfo {
    /// Parses and checks a reply's `line` for a client of `config`.
    ///
    /// Strict as joinmarket-ng's JMP-0005 parsing (`jmcore/src/jmcore/
    /// nick_auth.py`: `parse_strict_json_object`, pydantic `strict=True`):
    /// no key twice ([`wire::parse_strict_json`]), no coercion: strings are
    /// strings (not `null`), numbers integers, flags booleans, and the
    /// `features` values booleans (ng's `FeatureSet.to_dict` and rs's
    /// `dn_supported_features` send only `true`; the reference sends
    /// `{}`). Fields we do not know are allowed (every implementation sends
    /// some of its own: `app-name`, `location-string`).
    fn from_reply(line: &str, config: &JmConfig) -> Result<Self, JmError> {
        let Value::Object(map) = wire::parse_strict_json(line)? else {
            return Err(JmError::NotObject);
        };
        let string = |field: &'static str| -> Result<Option<String>, JmError> {
            match map.get(field) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(JmError::WrongFieldType(field)),
            }
        };
        string("app-name")?;
        let number = |field: &'static str| -> Result<Option<u64>, JmError> {
            match map.get(field) {
                None => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or(JmError::WrongFieldType(field)),
            }
        };
        let motd = string("motd")?.map(|m| clean(&m));
        let accepted = match map.get("accepted") {
            None => return Err(JmError::MissingField("accepted")),
            Some(Value::Bool(accepted)) => *accepted,
            Some(_) => return Err(JmError::WrongFieldType("accepted")),
        };
        // A refusal names the directory's own network: joinmarket-rs
        // (`peer.rs`, `NetworkMismatch` → `send_dn_handshake(.., false)`) and
        // the reference (`onionmc.py`, `process_handshake`: `accepted =
        // False`, `handshake_as_directory` sets its `btc_network`) refuse a
        // client of another network that way; joinmarket-ng closes without
        // a reply (`handshake_handler.py`, "Network mismatch").
        let network = string("network")?;
        if let Some(theirs) = &network {
            if theirs != config.network.as_str() {
                return Err(JmError::WrongNetwork {
                    ours: config.network,
                    theirs: clean(theirs),
                });
            }
        }
        if !accepted {
            return Err(match motd {
                Some(motd) if nick_in_use(&motd) => JmError::NickInUse { motd },
                motd => JmError::Rejected { motd },
            });
        }
        let (protocol_min, protocol_max) = match number("proto-ver")? {
            Some(v) => (v, v),
            None => (
                number("proto-ver-min")?.ok_or(JmError::MissingField("proto-ver"))?,
                number("proto-ver-max")?.ok_or(JmError::MissingField("proto-ver-max"))?,
            ),
        };
        let ours = u64::from(config.protocol_version);
        if !(protocol_min..=protocol_max).contains(&ours) {
            return Err(JmError::IncompatibleVersion {
                ours: config.protocol_version,
                min: protocol_min,
                max: protocol_max,
            });
        }
        let nick = string("nick")?.ok_or(JmError::MissingField("nick"))?;
        let features = match map.get("features") {
            None => Vec::new(),
            Some(Value::Object(f)) => {
                let mut on = Vec::new();
                for (name, value) in f {
                    match value {
                        Value::Bool(true) => on.push(clean(name)),
                        Value::Bool(false) => {}
                        _ => return Err(JmError::WrongFieldType("features")),
                    }
                }
                on
            }
            Some(_) => return Err(JmError::WrongFieldType("features")),
        };
        let directory = match map.get("directory") {
            None => true,
            Some(v) => v.as_bool().ok_or(JmError::WrongFieldType("directory"))?,
        };
        Ok(Self {
            nick: clean(&nick),
            motd,
            features,
            protocol_min,
            protocol_max,
            directory,
            location: string("location-string")?.map(|l| clean(&l)),
            network,
            nick_auth: NickAuthStatus::NotOffered,
        })
    }
}

/// The JoinMarket directory handshake, as a [`Handshake`] for the pool.
#[derive(Clone)]
pub struct JoinMarketHandshake {
    configure: Arc<dyn Fn(&ServerAddr) -> JmConfig + Send + Sync>,
}

impl fmt::Debug for JoinMarketHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinMarketHandshake")
            .finish_non_exhaustive()
    }
}

impl JoinMarketHandshake {
    /// The same configuration for every directory.
    ///
    /// # Errors
    /// [`JmConfigError`] if `config` is invalid.
    pub fn new(config: JmConfig) -> Result<Self, JmConfigError> {
        config.validate()?;
        Ok(Self {
            configure: Arc::new(move |_| config.clone()),
        })
    }

    /// A configuration per directory (the original's
    /// `_build_client_kwargs`). An invalid one fails that dial.
    pub fn per_server(configure: impl Fn(&ServerAddr) -> JmConfig + Send + Sync + 'static) -> Self {
        Self {
            configure: Arc::new(configure),
        }
    }
}

impl Handshake for JoinMarketHandshake {
    type Client = DirectoryConnection;

    async fn handshake(
        &self,
        context: &HandshakeContext,
        server: &ServerAddr,
        stream: BoxedStream,
    ) -> Result<DirectoryConnection, HandshakeError> {
        let config = (self.configure)(server);
        config
            .validate()
            .map_err(|e| HandshakeError::new(HandshakeErrorKind::Protocol, JmError::Config(e)))?;
        let runtime = context.runtime();
        let timeout = config.handshake_timeout;
        let own_deadline = runtime.now().checked_add(timeout);
        let exchange = DirectoryConnection::open(context, server, stream, config);
        match own_deadline {
            Some(own_deadline) if own_deadline < context.deadline() => {
                match before(runtime.sleep_until(own_deadline), exchange).await {
                    Some(result) => Ok(result?),
                    None => Err(JmError::TimedOut(timeout).into()),
                }
            }
            // The dial's deadline comes first; whoever set it enforces it
            // (and reports its own timeout, not ours).
            _ => Ok(exchange.await?),
        }
    }
}

/// A connection to a directory after a successful handshake.
///
/// Its link task is [`Client::closed`]: while that future is polled it
/// reads every line (answering PINGs, reporting signs of life and probe
/// answers, keeping messages for [`recv`](Self::recv)) and writes what
/// [`send`](Self::send) and [`probe`](Client::probe) queued. The pool polls
/// it for registered connections; for one you opened yourself, spawn
/// `closed()`, or nothing is read or written.
///
/// Memory per link is bounded: `inbound_bytes` of kept messages, one line
/// being read (`max_line` + 2 bytes) and `outbound_bytes` waiting to be
/// written.
pub struct DirectoryConnection {
    info: DirectoryInfo,
    /// The nick presented in the handshake: the only sender allowed.
    nick: Nick,
    answers_ping: bool,
    probe_supported: bool,
    inbound_bytes: usize,
    outbound_bytes: usize,
    write_timeout: Duration,
    runtime: Arc<dyn Runtime>,
    signals: LinkSignals,
    link: StdMutex<Link>,
    reader: Mutex<LineReader<ReadHalf<BoxedStream>>>,
    writer: Mutex<WriteHalf<BoxedStream>>,
    loss: LossSignal,
}

impl fmt::Debug for DirectoryConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectoryConnection")
            .field("info", &self.info)
            .field("closed", &self.loss.is_fired())
            .finish_non_exhaustive()
    }
}

/// A snapshot of one link's buffers, from [`DirectoryConnection::stats`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStats {
    /// Messages kept for the user.
    pub inbound_messages: usize,
    /// Heap bytes those messages occupy (lines and queue slots).
    pub inbound_bytes: usize,
    /// What they count against `JmConfig::inbound_bytes` (line lengths plus
    /// the per-message overhead).
    pub inbound_charged: usize,
    /// Bytes of the line being read.
    pub reader_bytes: usize,
    /// Bytes queued or being written.
    pub outbound_bytes: usize,
    /// Messages dropped since the user last heard of it.
    pub lagged: u64,
    /// Whether the directory verified our nick (as in
    /// [`DirectoryInfo::nick_auth`]).
    pub nick_auth: NickAuthStatus,
}

/// The queues between the user and the link task.
#[derive(Debug, Default)]
struct Link {
    inbound: VecDeque<Envelope>,
    /// What `inbound` counts against `inbound_bytes`.
    inbound_held: usize,
    /// Messages dropped since the user last heard of it.
    lagged: u64,
    outbound: VecDeque<Vec<u8>>,
    /// Bytes queued or being written.
    outbound_held: usize,
    /// PINGs received and not answered yet.
    pongs_owed: u64,
    /// A probe asked for and not written yet.
    ping_owed: bool,
    ended: bool,
    /// What the line reader held after its last line.
    reader_held: usize,
    receivers: Wakers,
    senders: Wakers,
    writer: Option<Waker>,
}

/// Tasks waiting for a change.
#[derive(Debug, Default)]
struct Wakers(Vec<Waker>);

impl Wakers {
    fn register(&mut self, waker: &Waker) {
        if !self.0.iter().any(|w| w.will_wake(waker)) {
            self.0.push(waker.clone());
        }
    }

    fn wake_all(&mut self) {
        for waker in self.0.drain(..) {
            waker.wake();
        }
    }
}

/// What a kept message counts against `inbound_bytes`.
fn cost(envelope: &Envelope) -> usize {
    envelope.line.capacity().saturating_add(MESSAGE_OVERHEAD)
}

/// A line the writer took from the queues.
enum Outgoing {
    /// A PONG or PING (not counted against `outbound_bytes`).
    Control(Vec<u8>),
    /// A line from `send`.
    User(Vec<u8>),
}

/// The encoded bytes of an empty message of `kind`.
fn control_line(kind: u32) -> Vec<u8> {
    format!("{{\"type\":{kind},\"line\":\"\"}}\r\n").into_bytes()
}

impl DirectoryConnection {
    /// Runs the handshake with `server` on `stream` (not bounded in time:
    /// the caller is; [`JoinMarketHandshake`] bounds it by
    /// `handshake_timeout`), then nick authentication as
    /// [`JmConfig::nick_auth`] says (see [`nick_auth`]; each of its steps
    /// bounded by `min(handshake_timeout, 30 s)`). The connection uses
    /// `context`'s runtime for write deadlines and reports through its
    /// signals.
    ///
    /// Not cancel-safe: dropping it drops the stream.
    ///
    /// # Errors
    /// [`JmError`] saying what went wrong ([`JmError::Config`] for an
    /// invalid `config`, [`JmError::NickAuth`] when nick authentication
    /// fails).
    pub async fn open(
        context: &HandshakeContext,
        server: &ServerAddr,
        stream: BoxedStream,
        config: JmConfig,
    ) -> Result<Self, JmError> {
        config.validate().map_err(JmError::Config)?;
        let directory_id = match config.nick_auth {
            NickAuthMode::Disabled => None,
            _ => config.expected_directory_id(server),
        };
        if config.nick_auth == NickAuthMode::RequireVerified && directory_id.is_none() {
            return Err(JmError::NickAuth(NickAuthError::NoDirectoryId(
                server.to_string(),
            )));
        }
        let (read, mut write) = tokio::io::split(stream);
        let mut features: Map<String, Value> = config
            .features
            .iter()
            .map(|f| (f.clone(), Value::Bool(true)))
            .collect();
        if directory_id.is_some() {
            features.insert(nick_auth::FEATURE_NICK_AUTH.to_owned(), Value::Bool(true));
        }
        let hello = json!({
            "app-name": "joinmarket",
            "directory": false,
            "location-string": config.location.to_string(),
            "proto-ver": config.protocol_version,
            "features": features,
            "nick": config.nick().as_str(),
            "network": config.network.as_str(),
        })
        .to_string();
        let bytes = Envelope::new(wire::HANDSHAKE, hello.as_str()).encode()?;
        write.write_all(&bytes).await.map_err(JmError::Io)?;
        write.flush().await.map_err(JmError::Io)?;

        let mut reader = LineReader::new(read, config.max_line);
        let line = reader
            .next_line()
            .await?
            .ok_or(JmError::ClosedWithoutReply)?;
        let reply = Envelope::parse(&line)?;
        if reply.kind != wire::DIRECTORY_HANDSHAKE && reply.kind != wire::HANDSHAKE {
            return Err(JmError::WrongType(reply.kind));
        }
        let mut info = DirectoryInfo::from_reply(&reply.line, &config)?;
        let offered = info
            .features
            .iter()
            .any(|f| f == nick_auth::FEATURE_NICK_AUTH);
        info.nick_auth = match (config.nick_auth, directory_id) {
            (NickAuthMode::RequireVerified, _) if !offered => {
                return Err(JmError::NickAuth(NickAuthError::NotOffered));
            }
            (NickAuthMode::Disabled, _) => NickAuthStatus::Disabled,
            (_, None) => NickAuthStatus::NoDirectoryId,
            (_, Some(_)) if !offered => NickAuthStatus::NotOffered,
            (_, Some(expected)) => {
                let exchange = nick_auth::Exchange {
                    runtime: context.runtime().as_ref(),
                    step_timeout: config.handshake_timeout.min(nick_auth::MAX_STEP_TIMEOUT),
                    identity: &config.identity,
                    expected,
                    handshake_line: &hello,
                };
                exchange.run(&mut reader, &mut write).await?;
                NickAuthStatus::Verified
            }
        };
        tracing::debug!(
            directory = %server,
            nick = %config.nick(),
            nick_auth = ?info.nick_auth,
            "handshake done"
        );
        Ok(Self {
            nick: config.nick().clone(),
            answers_ping: config.features.iter().any(|f| f == "ping"),
            probe_supported: info.features.iter().any(|f| f == "ping"),
            info,
            inbound_bytes: config.inbound_bytes,
            outbound_bytes: config.outbound_bytes,
            write_timeout: config.write_timeout,
            runtime: Arc::clone(context.runtime()),
            signals: context.signals().clone(),
            link: StdMutex::new(Link::default()),
            reader: Mutex::new(reader),
            writer: Mutex::new(write),
            loss: LossSignal::new(),
        })
    }

    /// What the directory said about itself.
    pub fn info(&self) -> &DirectoryInfo {
        &self.info
    }

    fn link(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a message for the link task to write, waiting while the
    /// outbound queue (`outbound_bytes`) has no room for it.
    ///
    /// Cancel-safe: the line is queued whole or not at all, so a dropped
    /// `send` either sent the message or left no trace. It never waits for
    /// ever: once the link ends (a write past `write_timeout` ends it) it
    /// returns [`JmError::Closed`]. Lines still queued when the link ends
    /// are not written.
    ///
    /// # Errors
    /// [`JmError::NotOurNick`] for a public or private message from
    /// another nick than the link's ([`check_sender`]);
    /// [`JmError::ControlType`] for PING, PONG, DISCONNECT or a handshake
    /// type, which the link alone sends (other types, unknown ones
    /// included, are sent: every current directory ignores a type it does
    /// not know); [`JmError::SendTooLong`] when the encoded line with its
    /// `\r\n` is over [`MAX_SEND_LINE`](wire::MAX_SEND_LINE); all never
    /// sent. [`JmError::Closed`] once the link has ended.
    pub async fn send(&self, envelope: &Envelope) -> Result<(), JmError> {
        if LINK_TYPES.contains(&envelope.kind) {
            return Err(JmError::ControlType(envelope.kind));
        }
        check_sender(envelope, &self.nick)?;
        let bytes = envelope.encode()?;
        let len = bytes.len();
        let mut bytes = Some(bytes);
        poll_fn(|cx| {
            let mut link = self.link();
            if link.ended {
                return Poll::Ready(Err(JmError::Closed));
            }
            if link.outbound_held.saturating_add(len) > self.outbound_bytes {
                link.senders.register(cx.waker());
                return Poll::Pending;
            }
            if let Some(bytes) = bytes.take() {
                link.outbound_held = link.outbound_held.saturating_add(len);
                link.outbound.push_back(bytes);
                if let Some(writer) = link.writer.take() {
                    writer.wake();
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// The next message from the directory (PINGs answered by the link,
    /// PONGs and DISCONNECT excluded).
    ///
    /// Cancel-safe: a message is taken only when it is returned. Works
    /// while [`Client::closed`] runs on another task (it must run for
    /// messages to arrive).
    ///
    /// # Errors
    /// [`RecvError::Lagged`] first if messages were dropped because the
    /// inbound queue was full (the next call goes on with the messages
    /// kept); [`RecvError::Closed`] once the link is gone and every message
    /// kept has been received.
    pub async fn recv(&self) -> Result<Envelope, RecvError> {
        poll_fn(|cx| {
            let mut link = self.link();
            if link.lagged > 0 {
                let lagged = std::mem::take(&mut link.lagged);
                return Poll::Ready(Err(RecvError::Lagged(lagged)));
            }
            if let Some(envelope) = link.inbound.pop_front() {
                link.inbound_held = link.inbound_held.saturating_sub(cost(&envelope));
                // Keep the slots within MESSAGE_OVERHEAD per message.
                let (len, capacity) = (link.inbound.len(), link.inbound.capacity());
                if capacity > 64 && len < capacity / 4 {
                    link.inbound.shrink_to(len.saturating_mul(2).max(64));
                }
                return Poll::Ready(Ok(envelope));
            }
            if link.ended {
                return Poll::Ready(Err(RecvError::Closed));
            }
            link.receivers.register(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Ends the link (the first loss counts) and wakes every waiter.
    fn end(&self, loss: LinkLoss) {
        self.loss.fire(loss);
        let mut link = self.link();
        link.ended = true;
        link.receivers.wake_all();
        link.senders.wake_all();
        if let Some(writer) = link.writer.take() {
            writer.wake();
        }
    }

    /// Reads and writes until the link ends.
    async fn run(&self) -> LinkLoss {
        let mut reader = self.reader.lock().await;
        let reading = std::pin::pin!(self.read_loop(&mut reader));
        let writing = std::pin::pin!(self.write_loop());
        match select(reading, writing).await {
            Either::Left((loss, _)) | Either::Right((loss, _)) => loss,
        }
    }

    /// Reads every line: answers PINGs, reports signs of life and probe
    /// answers, keeps the rest for the user (or counts them as dropped).
    async fn read_loop(&self, reader: &mut LineReader<ReadHalf<BoxedStream>>) -> LinkLoss {
        loop {
            let line = match reader.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) => return LinkLoss::ClosedByPeer,
                Err(JmError::Io(e)) => return LinkLoss::Io(e.kind()),
                Err(e) => {
                    tracing::warn!(error = %e, "directory broke the protocol");
                    return LinkLoss::Protocol;
                }
            };
            let envelope = match Envelope::parse(&line) {
                Ok(envelope) => envelope,
                Err(e) => {
                    tracing::warn!(error = %e, "directory broke the protocol");
                    return LinkLoss::Protocol;
                }
            };
            drop(line);
            // Nick authentication belongs to the handshake; joinmarket-ng's
            // client closes on one later (`directory_client.py`,
            // `_reject_out_of_order_nick_auth`).
            if matches!(
                envelope.kind,
                wire::NICK_AUTH_CHALLENGE | wire::NICK_AUTH_PROOF | wire::NICK_AUTH_RESULT
            ) {
                tracing::warn!(
                    kind = envelope.kind,
                    "nick authentication after the handshake"
                );
                return LinkLoss::Protocol;
            }
            // A PONG is reported as the probe's answer (which is a sign of
            // life too); reporting it as plain life first would settle the
            // probe without its round trip.
            if envelope.kind != wire::PONG {
                self.signals.alive();
            }
            if self.deliver(envelope, reader) {
                return LinkLoss::DisconnectedByPeer;
            }
        }
    }

    /// Acts on one message from the directory; true for a DISCONNECT.
    fn deliver(&self, envelope: Envelope, reader: &LineReader<ReadHalf<BoxedStream>>) -> bool {
        let mut link = self.link();
        link.reader_held = reader.held_capacity();
        match envelope.kind {
            wire::PING if self.answers_ping => {
                tracing::trace!("PING received");
                link.pongs_owed = link.pongs_owed.saturating_add(1);
                if let Some(writer) = link.writer.take() {
                    writer.wake();
                }
            }
            wire::PONG => {
                drop(link);
                self.signals.probe_answered();
            }
            wire::DISCONNECT => return true,
            _ => {
                let cost = cost(&envelope);
                let held = link.inbound_held.saturating_add(cost);
                if held > self.inbound_bytes {
                    link.lagged = link.lagged.saturating_add(1);
                    if link.lagged == 1 {
                        tracing::debug!("inbound queue full: dropping messages");
                    }
                } else {
                    link.inbound_held = held;
                    link.inbound.push_back(envelope);
                }
                link.receivers.wake_all();
            }
        }
        false
    }

    /// Writes queued lines, PONGs and PINGs first, each within
    /// `write_timeout`.
    async fn write_loop(&self) -> LinkLoss {
        loop {
            let next = poll_fn(|cx| {
                let mut link = self.link();
                if link.pongs_owed > 0 {
                    link.pongs_owed -= 1;
                    return Poll::Ready(Outgoing::Control(control_line(wire::PONG)));
                }
                if std::mem::take(&mut link.ping_owed) {
                    return Poll::Ready(Outgoing::Control(control_line(wire::PING)));
                }
                if let Some(line) = link.outbound.pop_front() {
                    return Poll::Ready(Outgoing::User(line));
                }
                link.writer = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            let bytes = match &next {
                Outgoing::Control(bytes) | Outgoing::User(bytes) => bytes,
            };
            let write = async {
                let mut writer = self.writer.lock().await;
                writer.write_all(bytes).await?;
                writer.flush().await
            };
            match self.within_write_timeout(write).await {
                None => {
                    tracing::warn!(timeout = ?self.write_timeout, "directory stopped reading");
                    return LinkLoss::WriteTimedOut;
                }
                Some(Err(e)) => return LinkLoss::Io(e.kind()),
                Some(Ok(())) => {}
            }
            if let Outgoing::User(bytes) = next {
                let mut link = self.link();
                link.outbound_held = link.outbound_held.saturating_sub(bytes.len());
                link.senders.wake_all();
            }
        }
    }

    /// `io`'s output, or `None` once `write_timeout` has passed (`io` is
    /// dropped then).
    async fn within_write_timeout<T>(&self, io: impl Future<Output = T>) -> Option<T> {
        match self.runtime.now().checked_add(self.write_timeout) {
            Some(deadline) => before(self.runtime.sleep_until(deadline), io).await,
            None => Some(io.await),
        }
    }

    /// Bytes held for this link: kept messages (lines and queue slots),
    /// the line reader's buffer, and lines waiting to be written.
    fn held_bytes(&self) -> (usize, usize, usize) {
        let link = self.link();
        let lines: usize = link.inbound.iter().map(|e| e.line.capacity()).sum();
        let slots = link.inbound.capacity() * std::mem::size_of::<Envelope>();
        (lines + slots, link.reader_held, link.outbound_held)
    }

    /// What the link holds and has dropped right now: for metrics, and for
    /// checking that memory stays within the configured bounds.
    pub fn stats(&self) -> LinkStats {
        let (inbound_bytes, reader_bytes, outbound_bytes) = self.held_bytes();
        let link = self.link();
        LinkStats {
            inbound_messages: link.inbound.len(),
            inbound_bytes,
            inbound_charged: link.inbound_held,
            reader_bytes,
            outbound_bytes,
            lagged: link.lagged,
            nick_auth: self.info.nick_auth,
        }
    }
}

impl Client for DirectoryConnection {
    /// The link task: reads and writes until the link ends, then says why.
    /// Polling it from several tasks is allowed (one runs the link, the
    /// others wait for its end). Cancel-safe: dropping it pauses the link
    /// (nothing queued is lost; a line being written may be cut short, so
    /// do not resume after dropping it mid-write).
    async fn closed(&self) -> LinkLoss {
        let run = std::pin::pin!(self.run());
        match select(self.loss.wait(), run).await {
            Either::Left((loss, _)) | Either::Right((loss, _)) => self.end(loss),
        }
        self.loss.wait().await
    }

    /// Ends the link ([`LinkLoss::ClosedByPeer`]; queued lines are not
    /// written, kept messages stay readable) and shuts the stream down
    /// within `write_timeout`: a shutdown flushes, and on a Tor stream
    /// whose circuit died unannounced a flush can wait for ever (its send
    /// window is never refilled). Past it, [`CloseError::Io`] of kind
    /// `TimedOut`; dropping the connection then drops the stream.
    async fn close(&self) -> Result<(), CloseError> {
        self.end(LinkLoss::ClosedByPeer);
        let shutdown = async { self.writer.lock().await.shutdown().await };
        match self.within_write_timeout(shutdown).await {
            Some(result) => Ok(result?),
            None => Err(CloseError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "stream shutdown timed out",
            ))),
        }
    }

    /// Queues one PING (798) if the directory advertised `ping` in its
    /// handshake reply (joinmarket-ng and joinmarket-rs do, and answer with
    /// PONG 799, reported through the signals; the reference does not);
    /// PINGs asked for before the link task writes one are sent once.
    fn probe(&self) -> ProbeStatus {
        let mut link = self.link();
        if link.ended {
            ProbeStatus::Closed
        } else if !self.probe_supported {
            ProbeStatus::Unsupported
        } else {
            link.ping_owed = true;
            if let Some(writer) = link.writer.take() {
                writer.wake();
            }
            ProbeStatus::Sent
        }
    }
}

#[cfg(all(test, feature = "tokio"))]
mod tests {
    use std::pin::Pin;
    use std::task::Context;
    use std::time::Instant;

    use super::*;
    use crate::runtime::TokioRuntime;
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, DuplexStream};

    const REFERENCE_REPLY: &str = r#"{"app-name": "joinmarket", "directory": true, "location-string": "x.onion:5222", "proto-ver": 5, "features": {}, "accepted": true, "nick": "J5dirNickQRSOOOO", "network": "regtest"}"#;
    const RANGE_REPLY: &str = r#"{"accepted":true,"nick":"J5rangeDirOOOOOO","network":"regtest","proto-ver-min":5,"proto-ver-max":6,"features":{"peerlist_features":true,"ping":true,"off":false},"motd":"welcome\u0007 to the test directory","directory":true}"#;

    fn config() -> JmConfig {
        // joinmarket-ng's test key (`jmcore/tests/test_nick_auth.py`); its
        // nick is `J52N8GdNkKtMA6TW`.
        JmConfig::new(
            NickIdentity::from_secret_bytes(&[0x11; 32]).unwrap(),
            Network::Regtest,
        )
    }

    #[test]
    fn a_config_compares_by_key_and_never_shows_the_secret() {
        let ours = config();
        assert_eq!(ours.nick().as_str(), "J52N8GdNkKtMA6TW");
        assert_eq!(ours, config(), "same key, equal");
        let other = JmConfig::new(
            NickIdentity::from_secret_bytes(&[0x12; 32]).unwrap(),
            Network::Regtest,
        );
        assert_ne!(ours, other);
        let debug = format!("{ours:?}");
        assert!(debug.contains("J52N8GdNkKtMA6TW"), "{debug}");
        assert!(!debug.contains("1111111111"), "{debug}");
    }

    /// A directory on 127.0.0.1: no identity derived, so by default no
    /// nick authentication.
    fn local() -> ServerAddr {
        ServerAddr::parse("127.0.0.1:5222").unwrap()
    }

    fn context() -> HandshakeContext {
        let runtime: Arc<dyn crate::Runtime> = Arc::new(TokioRuntime::current());
        HandshakeContext::new(runtime, Instant::now() + Duration::from_secs(3600))
    }

    fn envelope_line(kind: u32, line: &str) -> Vec<u8> {
        let mut bytes = json!({"type": kind, "line": line}).to_string().into_bytes();
        bytes.extend_from_slice(b"\r\n");
        bytes
    }

    /// The directory side: reads our handshake line, writes `chunks`, then
    /// keeps its end open (returned) or closes it.
    async fn directory(
        mut side: DuplexStream,
        chunks: Vec<Vec<u8>>,
        pause: Duration,
        keep_open: bool,
    ) -> (String, Option<DuplexStream>) {
        let mut received = Vec::new();
        let mut byte = [0u8; 1];
        while side.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
            received.push(byte[0]);
        }
        for chunk in chunks {
            side.write_all(&chunk).await.unwrap();
            side.flush().await.unwrap();
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        (
            String::from_utf8(received).unwrap(),
            keep_open.then_some(side),
        )
    }

    async fn exchange(
        chunks: Vec<Vec<u8>>,
        config: JmConfig,
        keep_open: bool,
    ) -> (
        Result<DirectoryConnection, JmError>,
        String,
        Option<DuplexStream>,
    ) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(directory(theirs, chunks, Duration::ZERO, keep_open));
        let result = DirectoryConnection::open(&context(), &local(), Box::pin(ours), config).await;
        let (sent, side) = server.await.unwrap();
        (result, sent, side)
    }

    /// Opens against a directory that stays connected after its `chunks`.
    async fn open_with(
        chunks: Vec<Vec<u8>>,
        config: JmConfig,
    ) -> (Result<DirectoryConnection, JmError>, String, DuplexStream) {
        let (result, sent, side) = exchange(chunks, config, true).await;
        (result, sent, side.expect("kept open"))
    }

    /// The error from a directory that sends `chunks` and closes.
    async fn open_err(chunks: Vec<Vec<u8>>) -> JmError {
        match exchange(chunks, config(), false).await.0 {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e,
        }
    }

    #[tokio::test]
    async fn our_handshake_has_every_field() {
        let (result, sent, _side) =
            open_with(vec![envelope_line(795, REFERENCE_REPLY)], config()).await;
        result.unwrap();
        let envelope = Envelope::parse(sent.trim_end()).unwrap();
        assert_eq!(envelope.kind, 793);
        let hello: Value = serde_json::from_str(&envelope.line).unwrap();
        assert_eq!(hello["app-name"], "joinmarket");
        assert_eq!(hello["directory"], false);
        assert_eq!(hello["location-string"], "NOT-SERVING-ONION");
        assert_eq!(hello["proto-ver"], 5);
        assert_eq!(hello["nick"], "J52N8GdNkKtMA6TW");
        assert_eq!(hello["network"], "regtest");
        assert_eq!(
            hello["features"],
            json!({"peerlist_features": true, "ping": true})
        );
        assert!(sent.ends_with('\r'), "\\r\\n framing");
    }

    #[tokio::test]
    async fn reference_style_reply() {
        let (result, _, _side) =
            open_with(vec![envelope_line(795, REFERENCE_REPLY)], config()).await;
        let info = result.unwrap().info().clone();
        assert_eq!(info.nick, "J5dirNickQRSOOOO");
        assert_eq!((info.protocol_min, info.protocol_max), (5, 5));
        assert_eq!(info.location.as_deref(), Some("x.onion:5222"));
        assert!(info.directory && info.features.is_empty() && info.motd.is_none());
    }

    #[tokio::test]
    async fn range_style_reply_with_features_and_motd_and_type_793() {
        let (result, _, _side) = open_with(vec![envelope_line(793, RANGE_REPLY)], config()).await;
        let info = result.unwrap().info().clone();
        assert_eq!((info.protocol_min, info.protocol_max), (5, 6));
        assert_eq!(info.features, ["peerlist_features", "ping"]);
        assert_eq!(
            info.motd.as_deref(),
            Some("welcome to the test directory"),
            "control characters removed"
        );
        assert_eq!(info.location, None);
    }

    #[tokio::test]
    async fn every_bad_reply_is_its_typed_error() {
        let reply = |fields: Value| envelope_line(795, &fields.to_string());
        let ok = || json!({"accepted": true, "nick": "J5dirNickQRSOOOO", "network": "regtest", "proto-ver": 5});
        let with = |key: &str, value: Value| {
            let mut v = ok();
            v[key] = value;
            reply(v)
        };
        let without = |key: &str| {
            let mut v = ok();
            v.as_object_mut().unwrap().remove(key);
            reply(v)
        };
        type Expect = fn(&JmError) -> bool;
        let cases: Vec<(Vec<u8>, Expect)> = vec![
            (vec![], |e| matches!(e, JmError::ClosedWithoutReply)),
            (b"not json\r\n".to_vec(), |e| {
                matches!(e, JmError::NotJson(_))
            }),
            (b"[1, 2]\r\n".to_vec(), |e| matches!(e, JmError::NotObject)),
            (b"{\"type\": 795, \"line\": 5}\r\n".to_vec(), |e| {
                matches!(e, JmError::WrongFieldType("line"))
            }),
            (b"{\"type\": \"x\", \"line\": \"\"}\r\n".to_vec(), |e| {
                matches!(e, JmError::WrongFieldType("type"))
            }),
            (b"{\"line\": \"\"}\r\n".to_vec(), |e| {
                matches!(e, JmError::MissingField("type"))
            }),
            (envelope_line(687, "hello"), |e| {
                matches!(e, JmError::WrongType(687))
            }),
            (envelope_line(795, "not json either"), |e| {
                matches!(e, JmError::NotJson(_))
            }),
            (envelope_line(795, "\"a string\""), |e| {
                matches!(e, JmError::NotObject)
            }),
            (with("accepted", json!(false)), |e| {
                matches!(e, JmError::Rejected { motd: None })
            }),
            (without("accepted"), |e| {
                matches!(e, JmError::MissingField("accepted"))
            }),
            (with("accepted", json!("yes")), |e| {
                matches!(e, JmError::WrongFieldType("accepted"))
            }),
            (with("proto-ver", json!(4)), |e| {
                matches!(
                    e,
                    JmError::IncompatibleVersion {
                        ours: 5,
                        min: 4,
                        max: 4
                    }
                )
            }),
            (without("proto-ver"), |e| {
                matches!(e, JmError::MissingField("proto-ver"))
            }),
            (with("network", json!("mainnet")), |e| {
                matches!(e, JmError::WrongNetwork { .. })
            }),
            (without("nick"), |e| {
                matches!(e, JmError::MissingField("nick"))
            }),
            (with("features", json!([1])), |e| {
                matches!(e, JmError::WrongFieldType("features"))
            }),
            (b"{\"type\": 795, \"li".to_vec(), |e| {
                matches!(e, JmError::ClosedMidLine)
            }),
            (b"\xff\xfe\r\n".to_vec(), |e| {
                matches!(e, JmError::InvalidUtf8)
            }),
        ];
        for (bytes, expected) in cases {
            let shown = String::from_utf8_lossy(&bytes).into_owned();
            let chunks = if bytes.is_empty() {
                vec![]
            } else {
                vec![bytes]
            };
            let error = open_err(chunks).await;
            assert!(expected(&error), "{shown:?} gave {error:?}");
        }
        let mut rejected = ok();
        rejected["accepted"] = json!(false);
        rejected["motd"] = json!("nick banned\u{1b}[31m");
        let error = open_err(vec![reply(rejected)]).await;
        assert_eq!(
            error.to_string(),
            "directory rejected our handshake: nick banned[31m"
        );
        assert_eq!(error.kind(), HandshakeErrorKind::Rejected);
    }

    /// joinmarket-ng `jmcore/src/jmcore/nick_auth.py`
    /// (`parse_strict_json_object`: duplicate keys, `NaN`/`Infinity`;
    /// `_NickAuthPayload`, pydantic `strict=True`: no coercion of types).
    #[tokio::test]
    async fn the_reply_is_checked_as_strictly_as_joinmarket_ng_checks_json() {
        let ok =
            r#""accepted": true, "nick": "J5dirNickQRSOOOO", "network": "regtest", "proto-ver": 5"#;
        type Expect = fn(&JmError) -> bool;
        let cases: [(String, Expect); 11] = [
            (format!(r#"{{{ok}, "accepted": false}}"#), |e| {
                matches!(e, JmError::DuplicateKey(k) if k == "accepted")
            }),
            (format!(r#"{{{ok}, "features": {{"ping": true, "ping": false}}}}"#), |e| {
                matches!(e, JmError::DuplicateKey(k) if k == "ping")
            }),
            (format!(r#"{{{ok}, "motd": NaN}}"#), |e| matches!(e, JmError::NotJson(_))),
            (format!(r#"{{{ok}, "motd": Infinity}}"#), |e| matches!(e, JmError::NotJson(_))),
            (format!(r#"{{{ok}, "directory": 1e999}}"#), |e| matches!(e, JmError::NotJson(_))),
            (format!(r#"{{{ok}, "motd": null}}"#), |e| {
                matches!(e, JmError::WrongFieldType("motd"))
            }),
            (format!(r#"{{{ok}, "features": {{"ping": "true"}}}}"#), |e| {
                matches!(e, JmError::WrongFieldType("features"))
            }),
            (format!(r#"{{{ok}, "features": null}}"#), |e| {
                matches!(e, JmError::WrongFieldType("features"))
            }),
            (format!(r#"{{{ok}, "app-name": 7}}"#), |e| {
                matches!(e, JmError::WrongFieldType("app-name"))
            }),
            (r#"{"accepted": true, "nick": "J5dirNickQRSOOOO", "network": "regtest", "proto-ver": 5.0}"#.to_owned(), |e| {
                matches!(e, JmError::WrongFieldType("proto-ver"))
            }),
            (r#"{"accepted": 1, "nick": "J5dirNickQRSOOOO", "network": "regtest", "proto-ver": 5}"#.to_owned(), |e| {
                matches!(e, JmError::WrongFieldType("accepted"))
            }),
        ];
        for (reply, expected) in cases {
            let error = open_err(vec![envelope_line(795, &reply)]).await;
            assert!(expected(&error), "{reply} gave {error:?}");
            assert_eq!(error.kind(), HandshakeErrorKind::Protocol, "{reply}");
        }
        // The envelope itself too.
        let line = format!(
            "{{\"type\": 795, \"type\": 795, \"line\": {}}}\r\n",
            json!(REFERENCE_REPLY)
        );
        let error = open_err(vec![line.into_bytes()]).await;
        assert!(
            matches!(&error, JmError::DuplicateKey(k) if k == "type"),
            "{error:?}"
        );
        // A well-formed reply with a feature off still passes.
        let reply =
            format!(r#"{{{ok}, "features": {{"ping": true, "off": false}}, "motd": "hi"}}"#);
        let (result, _, _side) = open_with(vec![envelope_line(795, &reply)], config()).await;
        assert_eq!(result.unwrap().info().features, ["ping"]);
    }

    #[tokio::test]
    async fn an_oversize_line_is_refused_without_buffering_it() {
        let mut config = config();
        config.max_line = 1024;
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let _ = theirs.read(&mut buf).await;
            // A line that never ends: the client must give up after ~1 KiB.
            let _ = theirs.write_all(&[b'x'; 60_000]).await;
            theirs
        });
        let error = DirectoryConnection::open(&context(), &local(), Box::pin(ours), config)
            .await
            .unwrap_err();
        assert!(
            matches!(error, JmError::LineTooLong { limit: 1024 }),
            "{error:?}"
        );
        drop(server);
    }

    #[tokio::test]
    async fn a_reply_one_byte_at_a_time_and_messages_in_the_same_chunk() {
        let bytes = envelope_line(795, REFERENCE_REPLY);
        let chunks = bytes.iter().map(|b| vec![*b]).collect();
        let (result, _, _side) = open_with(chunks, config()).await;
        assert_eq!(result.unwrap().info().nick, "J5dirNickQRSOOOO");

        let mut chunk = envelope_line(795, REFERENCE_REPLY);
        chunk.extend(envelope_line(789, "J5peerNickOOOOOO;x.onion:5222"));
        chunk.extend(b"{\"type\": 687, \"line\": \"!orderbook\"}\n"); // bare \n accepted
        let (result, _, side) = open_with(vec![chunk], config()).await;
        let connection = result.unwrap();
        drop(side); // the directory closes after sending
        assert_eq!(connection.closed().await, LinkLoss::ClosedByPeer);
        assert_eq!(
            connection.recv().await,
            Ok(Envelope::new(789, "J5peerNickOOOOOO;x.onion:5222"))
        );
        assert_eq!(
            connection.recv().await,
            Ok(Envelope::new(687, "!orderbook"))
        );
        assert_eq!(
            connection.recv().await,
            Err(RecvError::Closed),
            "ends after the kept messages"
        );
    }

    #[tokio::test]
    async fn pings_are_answered_and_sends_are_bounded() {
        let (result, _, mut side) =
            open_with(vec![envelope_line(795, REFERENCE_REPLY)], config()).await;
        let connection = Arc::new(result.unwrap());
        let reader = tokio::spawn({
            let c = Arc::clone(&connection);
            async move { c.closed().await }
        });
        side.write_all(&envelope_line(wire::PING, ""))
            .await
            .unwrap();
        let mut got = vec![0u8; 64];
        let n = side.read(&mut got).await.unwrap();
        assert_eq!(
            Envelope::parse(std::str::from_utf8(&got[..n]).unwrap().trim_end()).unwrap(),
            Envelope::new(wire::PONG, "")
        );

        connection.send(&Envelope::new(687, "hello")).await.unwrap();
        let n = side.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], envelope_line(687, "hello").as_slice());
        let huge = Envelope::new(687, "y".repeat(40_000));
        assert!(matches!(
            connection.send(&huge).await,
            Err(JmError::SendTooLong { .. })
        ));

        connection.close().await.unwrap();
        assert_eq!(reader.await.unwrap(), LinkLoss::ClosedByPeer);
        assert!(matches!(
            connection.send(&Envelope::new(687, "x")).await,
            Err(JmError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_trickling_directory_is_bounded_by_the_handshake_timeout() {
        let mut config = config();
        config.handshake_timeout = Duration::from_millis(300);
        let handshake = JoinMarketHandshake::new(config).unwrap();
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let bytes = envelope_line(795, REFERENCE_REPLY);
        let chunks: Vec<Vec<u8>> = bytes.iter().map(|b| vec![*b]).collect();
        let server = tokio::spawn(directory(theirs, chunks, Duration::from_millis(50), true));
        let runtime: Arc<dyn crate::Runtime> = Arc::new(TokioRuntime::current());
        let context = HandshakeContext::new(runtime, Instant::now() + Duration::from_secs(120));
        let server_addr = ServerAddr::parse("127.0.0.1").unwrap();
        let error = handshake
            .handshake(&context, &server_addr, Box::pin(ours))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), HandshakeErrorKind::TimedOut);
        server.abort();
    }

    #[test]
    fn invalid_configs_are_refused() {
        let mut c = config();
        c.features.push("Ping!".into());
        assert!(matches!(
            JoinMarketHandshake::new(c),
            Err(JmConfigError::Feature(_))
        ));
        let mut c = config();
        c.max_line = 10;
        assert!(matches!(
            c.validate(),
            Err(JmConfigError::Size {
                field: "max_line",
                value: 10,
                ..
            })
        ));
    }

    /// Signals that arrive on a channel the test reads, and a real attempt
    /// id to stamp them with.
    fn watched_signals() -> (
        LinkSignals,
        futures::channel::mpsc::UnboundedReceiver<crate::handshake::LinkSignal>,
    ) {
        use dirpool_core::{
            Command, Entropy, IsolationToken, Output, PoolConfig, PoolState as Pool,
        };
        let config = PoolConfig::new(["127.0.0.1"]);
        let entropy = Entropy {
            isolation_token: IsolationToken::from_bytes([7; 16]),
            jitter_seed: 1,
        };
        let mut pool = Pool::new(config, entropy).unwrap();
        pool.handle_command(Instant::now(), Command::ConnectAllParallel)
            .unwrap();
        let attempt = std::iter::from_fn(|| pool.poll_output())
            .find_map(|o| match o {
                Output::Dial(d) => Some(d.attempt),
                _ => None,
            })
            .unwrap();
        let (tx, rx) = futures::channel::mpsc::unbounded();
        (LinkSignals::new(attempt, tx), rx)
    }

    /// A connection over a duplex of `buffer` bytes to a directory that
    /// replied `reply`, with `signals`; the directory's end is returned.
    async fn link(
        reply: &str,
        config: JmConfig,
        buffer: usize,
        signals: LinkSignals,
    ) -> (Arc<DirectoryConnection>, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(buffer);
        let server = tokio::spawn(directory(
            theirs,
            vec![envelope_line(795, reply)],
            Duration::ZERO,
            true,
        ));
        let context = context().with_signals(signals);
        let connection = DirectoryConnection::open(&context, &local(), Box::pin(ours), config)
            .await
            .unwrap();
        let (_, side) = server.await.unwrap();
        (Arc::new(connection), side.unwrap())
    }

    fn spawn_link(connection: &Arc<DirectoryConnection>) -> tokio::task::JoinHandle<LinkLoss> {
        let c = Arc::clone(connection);
        tokio::spawn(async move { c.closed().await })
    }

    /// Reads one `\n`-terminated line from the directory's end.
    async fn read_line(side: &mut DuplexStream) -> Envelope {
        read_line_or_end(side).await.expect("a line")
    }

    /// The next line, or `None` at the end of the stream.
    async fn read_line_or_end(side: &mut DuplexStream) -> Option<Envelope> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while side.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        if line.is_empty() {
            return None;
        }
        assert_eq!(line.pop(), Some(b'\r'), "\\r\\n framing");
        Some(Envelope::parse(std::str::from_utf8(&line).unwrap()).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn the_link_answers_ping_798_reports_life_and_probe_answers_and_ends_on_disconnect() {
        let (signals, mut seen) = watched_signals();
        let (connection, mut side) = link(RANGE_REPLY, config(), 1 << 16, signals).await;
        let task = spawn_link(&connection);
        side.write_all(&envelope_line(wire::PING, ""))
            .await
            .unwrap();
        assert_eq!(read_line(&mut side).await, Envelope::new(wire::PONG, ""));
        assert_eq!(seen.next().await.map(|s| s.take().1), Some(false), "alive");
        // 797 is not a PING (the reference's local connect-in): the user's.
        side.write_all(&envelope_line(797, "")).await.unwrap();
        assert_eq!(connection.recv().await, Ok(Envelope::new(797, "")));

        assert_eq!(connection.probe(), ProbeStatus::Sent);
        assert_eq!(read_line(&mut side).await, Envelope::new(wire::PING, ""));
        side.write_all(&envelope_line(wire::PONG, ""))
            .await
            .unwrap();
        side.write_all(&envelope_line(wire::PUBMSG, "after"))
            .await
            .unwrap();
        assert_eq!(
            connection.recv().await,
            Ok(Envelope::new(wire::PUBMSG, "after")),
            "the PONG is not the user's"
        );
        let mut answered = false;
        while let Ok(signal) = seen.try_recv() {
            answered |= signal.take().1;
        }
        assert!(answered, "the PONG was reported as the probe's answer");

        side.write_all(&envelope_line(wire::DISCONNECT, ""))
            .await
            .unwrap();
        assert_eq!(task.await.unwrap(), LinkLoss::DisconnectedByPeer);
        assert_eq!(connection.probe(), ProbeStatus::Closed);
        assert_eq!(connection.recv().await, Err(RecvError::Closed));
        assert!(matches!(
            connection.send(&Envelope::new(wire::PUBMSG, "late")).await,
            Err(JmError::Closed)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_directory_without_ping_is_not_probed() {
        let (connection, _side) =
            link(REFERENCE_REPLY, config(), 1 << 16, LinkSignals::detached()).await;
        assert_eq!(connection.probe(), ProbeStatus::Unsupported);
        connection.close().await.unwrap();
        assert_eq!(connection.probe(), ProbeStatus::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn pongs_go_ahead_of_queued_user_lines() {
        let (connection, mut side) =
            link(RANGE_REPLY, config(), 1024, LinkSignals::detached()).await;
        let task = spawn_link(&connection);
        // Each line is longer than the pipe: the first is being written
        // (blocked) when the PING comes; the others wait in the queue.
        let payload = |i: usize| format!("{i}{}", "z".repeat(2000));
        for i in 0..3 {
            connection
                .send(&Envelope::new(wire::PUBMSG, payload(i)))
                .await
                .unwrap();
        }
        tokio::task::yield_now().await;
        side.write_all(&envelope_line(wire::PING, ""))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(read_line(&mut side).await);
        }
        let order: Vec<(u32, Option<char>)> = got
            .iter()
            .map(|e| (e.kind, e.line.chars().next()))
            .collect();
        assert_eq!(
            order,
            [
                (wire::PUBMSG, Some('0')),
                (wire::PONG, None),
                (wire::PUBMSG, Some('1')),
                (wire::PUBMSG, Some('2'))
            ]
        );
        assert_eq!(got[2], Envelope::new(wire::PUBMSG, payload(1)));
        connection.close().await.unwrap();
        assert_eq!(task.await.unwrap(), LinkLoss::ClosedByPeer);
    }

    #[tokio::test(start_paused = true)]
    async fn a_directory_that_stops_reading_ends_the_link_at_the_write_deadline() {
        let (connection, _side) = link(RANGE_REPLY, config(), 1024, LinkSignals::detached()).await;
        let started = tokio::time::Instant::now();
        let task = spawn_link(&connection);
        let sender = tokio::spawn({
            let c = Arc::clone(&connection);
            async move {
                let line = Envelope::new(wire::PUBMSG, "w".repeat(10_000));
                loop {
                    if let Err(e) = c.send(&line).await {
                        return e;
                    }
                }
            }
        });
        assert_eq!(task.await.unwrap(), LinkLoss::WriteTimedOut);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
            "{waited:?}"
        );
        assert!(matches!(sender.await.unwrap(), JmError::Closed));
        let (_, _, outbound) = connection.held_bytes();
        assert!(outbound <= config().outbound_bytes);
    }

    /// A stream whose writes, flushes and shutdown never complete once
    /// `stalled` is set (reads go on): a Tor stream on a circuit that died
    /// unannounced, whose send window ran out, nothing failing, nothing
    /// completing.
    struct StallingWrites {
        inner: DuplexStream,
        stalled: Arc<std::sync::atomic::AtomicBool>,
    }

    impl StallingWrites {
        fn stalled(&self) -> bool {
            self.stalled.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl tokio::io::AsyncRead for StallingWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for StallingWrites {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.stalled() {
                return Poll::Pending;
            }
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            if self.stalled() {
                return Poll::Pending;
            }
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.stalled() {
                return Poll::Pending;
            }
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_during_a_write_that_never_completes_ends_at_the_write_deadline() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(directory(
            theirs,
            vec![envelope_line(795, RANGE_REPLY)],
            Duration::ZERO,
            true,
        ));
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stream = StallingWrites {
            inner: ours,
            stalled: Arc::clone(&stalled),
        };
        let connection =
            DirectoryConnection::open(&context(), &local(), Box::pin(stream), config())
                .await
                .unwrap();
        let connection = Arc::new(connection);
        let _side = server.await.unwrap().1.unwrap();
        stalled.store(true, std::sync::atomic::Ordering::SeqCst);
        let task = spawn_link(&connection);
        // The probe's PING is being written (and never will be) when the
        // pool closes the link.
        assert_eq!(connection.probe(), ProbeStatus::Sent);
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(3600), connection.close()).await;
        let waited = started.elapsed();
        assert!(
            matches!(&closed, Ok(Err(CloseError::Io(e))) if e.kind() == std::io::ErrorKind::TimedOut),
            "{closed:?}"
        );
        assert_eq!(waited, config().write_timeout);
        assert_eq!(task.await.unwrap(), LinkLoss::ClosedByPeer);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_send_queues_all_or_nothing_and_a_dropped_recv_loses_nothing() {
        use futures::FutureExt;
        let mut config = config();
        config.outbound_bytes = wire::MAX_SEND_LINE;
        let (connection, mut side) =
            link(RANGE_REPLY, config, 1 << 17, LinkSignals::detached()).await;
        let big = |c: char| Envelope::new(wire::PUBMSG, c.to_string().repeat(30_000));
        // No link task yet: the first line fills the queue, the second waits.
        connection.send(&big('a')).await.unwrap();
        assert!(connection.send(&big('b')).now_or_never().is_none());
        assert!(connection.recv().now_or_never().is_none());
        let task = spawn_link(&connection);
        connection.send(&big('c')).await.unwrap();
        assert_eq!(read_line(&mut side).await, big('a'));
        assert_eq!(
            read_line(&mut side).await,
            big('c'),
            "nothing of b was sent"
        );
        side.write_all(&envelope_line(wire::PUBMSG, "kept"))
            .await
            .unwrap();
        assert_eq!(
            connection.recv().await,
            Ok(Envelope::new(wire::PUBMSG, "kept"))
        );
        connection.close().await.unwrap();
        assert_eq!(task.await.unwrap(), LinkLoss::ClosedByPeer);
    }

    /// A directory floods lines near `max_line` while the user never
    /// receives: the link holds at most the inbound bound, one line buffer
    /// and the outbound bound; PINGs are answered throughout; the user then
    /// hears of the exact number dropped.
    #[tokio::test(start_paused = true)]
    async fn a_flood_stays_within_the_memory_bound_and_is_reported_as_lag() {
        let mut config = config();
        config.max_line = 16 * 1024;
        config.inbound_bytes = 64 * 1024;
        let (inbound, outbound, max_line) =
            (config.inbound_bytes, config.outbound_bytes, config.max_line);
        let (connection, mut side) =
            link(RANGE_REPLY, config, 1 << 16, LinkSignals::detached()).await;
        let task = spawn_link(&connection);
        let payload_len = max_line - 64;
        const LINES: usize = 300;
        let mut pings = 0;
        let mut most = (0, 0, 0);
        for i in 0..LINES {
            let payload = format!("{i:05}{}", "f".repeat(payload_len - 5));
            side.write_all(&envelope_line(wire::PUBMSG, &payload))
                .await
                .unwrap();
            if i % 25 == 0 {
                side.write_all(&envelope_line(wire::PING, ""))
                    .await
                    .unwrap();
                pings += 1;
            }
            let held = connection.held_bytes();
            most = (most.0.max(held.0), most.1.max(held.1), most.2.max(held.2));
        }
        // PINGs answered during the flood, in order; the last proves every
        // line before it was read.
        for _ in 0..pings {
            assert_eq!(read_line(&mut side).await, Envelope::new(wire::PONG, ""));
        }
        let held = connection.held_bytes();
        most = (most.0.max(held.0), most.1.max(held.1), most.2.max(held.2));
        let slack = 64 * std::mem::size_of::<Envelope>();
        assert!(most.0 <= inbound + slack, "inbound {most:?}");
        assert!(most.1 <= max_line + 2, "line buffer {most:?}");
        assert!(most.2 <= outbound, "outbound {most:?}");
        assert!(most.0 > inbound / 2, "the queue did fill: {most:?}");

        let kept = inbound / (payload_len + MESSAGE_OVERHEAD);
        let dropped = u64::try_from(LINES - kept).unwrap();
        assert_eq!(connection.recv().await, Err(RecvError::Lagged(dropped)));
        for i in 0..kept {
            let envelope = connection.recv().await.unwrap();
            assert!(envelope.line.starts_with(&format!("{i:05}")), "in order");
        }
        assert!(
            futures::FutureExt::now_or_never(connection.recv()).is_none(),
            "nothing more, and the link is up"
        );
        assert!(!task.is_finished());
        side.write_all(&envelope_line(wire::PUBMSG, "after"))
            .await
            .unwrap();
        assert_eq!(
            connection.recv().await,
            Ok(Envelope::new(wire::PUBMSG, "after"))
        );
        drop(side);
        assert_eq!(task.await.unwrap(), LinkLoss::ClosedByPeer);
    }

    /// joinmarket-rs `crates/joinmarket-dn/src/peer.rs` (`NetworkMismatch`:
    /// a 795 with `accepted: false`, its own network and motd) and the
    /// reference `src/jmdaemon/onionmc.py` (`process_handshake`: `accepted
    /// = False`, `network` its own, its default motd) refuse a client of
    /// another network with a reply naming theirs.
    #[tokio::test]
    async fn a_refusal_naming_another_network_is_wrong_network() {
        let rs = json!({"app-name": "joinmarket", "directory": true,
            "location-string": "x.onion:5222", "proto-ver-min": 5, "proto-ver-max": 5,
            "features": {"peerlist_features": true, "ping": true}, "accepted": false,
            "nick": "J5dirNickQRSOOOO", "network": "signet", "motd": "welcome"});
        let reference = json!({"app-name": "joinmarket", "directory": true,
            "proto-ver-min": 5, "proto-ver-max": 5, "features": {}, "accepted": false,
            "nick": "J5dirNickQRSOOOO", "network": "testnet",
            "motd": "Default MOTD, replace with information for the directory."});
        for (reply, theirs) in [(rs, "signet"), (reference, "testnet")] {
            let error = open_err(vec![envelope_line(795, &reply.to_string())]).await;
            assert!(
                matches!(&error, JmError::WrongNetwork { ours: Network::Regtest, theirs: t } if t == theirs),
                "{error:?}"
            );
            assert_eq!(error.kind(), HandshakeErrorKind::Rejected);
        }
    }

    /// joinmarket-rs `crates/joinmarket-dn/src/peer.rs` (`handle_message`:
    /// a PUBMSG or PRIVMSG whose `from_nick` is not the link's nick ends the
    /// link, "spoofing attempt").
    #[tokio::test]
    async fn a_message_from_another_nick_is_refused_before_it_is_written() {
        let (connection, mut side) =
            link(RANGE_REPLY, config(), 1 << 16, LinkSignals::detached()).await;
        let task = spawn_link(&connection);
        for (kind, line) in [
            (wire::PUBMSG, "J52bCDEFGHJKLMNO!PUBLIC!orderbook"),
            (wire::PRIVMSG, "J52bCDEFGHJKLMNO!J52N8GdNkKtMA6TW!fill 0"),
            (wire::PUBMSG, "!PUBLIC!orderbook"),
        ] {
            let error = connection
                .send(&Envelope::new(kind, line))
                .await
                .unwrap_err();
            assert!(
                matches!(&error, JmError::NotOurNick { ours, .. } if ours.as_str() == "J52N8GdNkKtMA6TW"),
                "{error:?}"
            );
        }
        assert_eq!(connection.stats().outbound_bytes, 0, "nothing queued");
        let ours = Envelope::new(wire::PUBMSG, "J52N8GdNkKtMA6TW!PUBLIC!orderbook");
        connection.send(&ours).await.unwrap();
        assert_eq!(
            read_line(&mut side).await,
            ours,
            "the first line written is ours"
        );
        connection.close().await.unwrap();
        assert_eq!(task.await.unwrap(), LinkLoss::ClosedByPeer);
    }

    #[tokio::test]
    async fn a_nick_still_registered_is_nick_in_use() {
        for motd in [
            "Rejected: Peer nick already registered: J52N8GdNkKtMA6TW",
            "Rejected: Verified nick already registered: J52N8GdNkKtMA6TW",
        ] {
            let reply = json!({"accepted": false, "nick": "J5dirNickQRSOOOO", "network": "regtest", "proto-ver": 5, "motd": motd});
            let error = open_err(vec![envelope_line(795, &reply.to_string())]).await;
            assert!(
                matches!(&error, JmError::NickInUse { motd: m } if m == motd),
                "{error:?}"
            );
            assert_eq!(error.kind(), HandshakeErrorKind::NickInUse);
            assert_eq!(
                HandshakeError::from(error).kind(),
                HandshakeErrorKind::NickInUse
            );
        }
    }

    #[tokio::test]
    async fn extreme_config_values_are_typed_errors_never_panics() {
        type Edit = fn(&mut JmConfig);
        let cases: [(Edit, &str); 12] = [
            (|c| c.max_line = usize::MAX, "max_line"),
            (|c| c.max_line = 0, "max_line"),
            (|c| c.handshake_timeout = Duration::MAX, "handshake_timeout"),
            (
                |c| c.handshake_timeout = Duration::ZERO,
                "handshake_timeout",
            ),
            (|c| c.write_timeout = Duration::MAX, "write_timeout"),
            (|c| c.write_timeout = Duration::ZERO, "write_timeout"),
            (|c| c.inbound_bytes = usize::MAX, "inbound_bytes"),
            (|c| c.inbound_bytes = c.max_line, "inbound_bytes"),
            (|c| c.outbound_bytes = usize::MAX, "outbound_bytes"),
            (
                |c| c.outbound_bytes = wire::MAX_SEND_LINE - 1,
                "outbound_bytes",
            ),
            (
                |c| {
                    c.max_line = MAX_MAX_LINE;
                    c.inbound_bytes = MAX_MAX_LINE;
                },
                "inbound_bytes",
            ),
            (|c| c.outbound_bytes = 0, "outbound_bytes"),
        ];
        for (edit, field) in cases {
            let mut c = config();
            edit(&mut c);
            let error = c.validate().unwrap_err();
            let named = match &error {
                JmConfigError::Size { field, .. } | JmConfigError::Timeout { field, .. } => *field,
                JmConfigError::Feature(_) => "feature",
                JmConfigError::Location(_) => "location",
            };
            assert_eq!(named, field, "{error}");
            assert!(JoinMarketHandshake::new(c.clone()).is_err());
            // Per server, the dial fails with a typed error, at once.
            let handshake = JoinMarketHandshake::per_server(move |_| c.clone());
            let (ours, _theirs) = tokio::io::duplex(1024);
            let server_addr = ServerAddr::parse("127.0.0.1").unwrap();
            let error = handshake
                .handshake(&context(), &server_addr, Box::pin(ours))
                .await
                .unwrap_err();
            assert_eq!(error.kind(), HandshakeErrorKind::Protocol);
        }
        let mut c = config();
        c.max_line = MAX_MAX_LINE;
        c.inbound_bytes = MAX_QUEUE_BYTES;
        c.outbound_bytes = MAX_QUEUE_BYTES;
        c.handshake_timeout = MAX_TIMEOUT;
        c.write_timeout = MAX_TIMEOUT;
        assert_eq!(c.validate(), Ok(()), "the limits themselves are allowed");
    }

    /// What a JMP-0005 test directory does after its accepted reply.
    #[derive(Clone, Copy)]
    enum Verdict {
        /// Checks the proof and answers as joinmarket-ng's server does.
        Check,
        /// Answers this code whatever the proof.
        Answer(NickAuthCode),
        /// Sends no challenge at all.
        Silent,
    }

    /// A directory that advertises `nick_auth`, challenges as `directory_id`
    /// and judges the proof as `verdict` says. Returns our handshake line and
    /// the proof line it received, and its end of the stream.
    async fn nick_auth_directory(
        mut side: DuplexStream,
        directory_id: &str,
        verdict: Verdict,
    ) -> (Envelope, Option<Envelope>, DuplexStream) {
        let hello = read_line(&mut side).await;
        let reply = json!({"accepted": true, "nick": "J5dirNickQRSOOOO", "network": "regtest",
            "proto-ver-min": 5, "proto-ver-max": 5, "features": {"ping": true, "nick_auth": true}});
        side.write_all(&envelope_line(795, &reply.to_string()))
            .await
            .unwrap();
        if matches!(verdict, Verdict::Silent) {
            return (hello, None, side);
        }
        let challenge =
            nick_auth::NickAuthChallenge::new(&[7; 32], DirectoryId::parse(directory_id).unwrap());
        side.write_all(&envelope_line(803, &challenge.to_line()))
            .await
            .unwrap();
        // Nothing when the client gave up on the challenge (and closed).
        let Some(proof) = read_line_or_end(&mut side).await else {
            return (hello, None, side);
        };
        let code = match verdict {
            Verdict::Answer(code) => code,
            _ => match nick_auth::NickAuthProof::parse(&proof.line) {
                Err(_) => NickAuthCode::Malformed,
                Ok(parsed) => {
                    let handshake: Value = serde_json::from_str(&hello.line).unwrap();
                    let nick = Nick::parse(handshake["nick"].as_str().unwrap()).unwrap();
                    match parsed.verify(&challenge, &hello.line, &nick) {
                        Ok(()) => NickAuthCode::Ok,
                        Err(_) => NickAuthCode::Invalid,
                    }
                }
            },
        };
        let result = nick_auth::NickAuthResult::new(code);
        side.write_all(&envelope_line(807, &result.to_line()))
            .await
            .unwrap();
        (hello, Some(proof), side)
    }

    fn pinned(mode: NickAuthMode) -> JmConfig {
        let mut config = config();
        config.nick_auth = mode;
        config
            .directory_ids
            .insert(local(), DirectoryId::parse("test:directory-a").unwrap());
        config
    }

    async fn authenticate(
        config: JmConfig,
        directory_id: &'static str,
        verdict: Verdict,
    ) -> (
        Result<DirectoryConnection, JmError>,
        Envelope,
        Option<Envelope>,
        DuplexStream,
    ) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(nick_auth_directory(theirs, directory_id, verdict));
        let result = DirectoryConnection::open(&context(), &local(), Box::pin(ours), config).await;
        let (hello, proof, side) = server.await.unwrap();
        (result, hello, proof, side)
    }

    #[tokio::test]
    async fn a_pinned_directory_verifies_our_nick() {
        for mode in [NickAuthMode::PreferVerified, NickAuthMode::RequireVerified] {
            let (result, hello, proof, _side) =
                authenticate(pinned(mode), "test:directory-a", Verdict::Check).await;
            let connection = result.unwrap();
            assert_eq!(connection.info().nick_auth, NickAuthStatus::Verified);
            assert_eq!(connection.stats().nick_auth, NickAuthStatus::Verified);
            assert!(connection.info().nick_auth.is_verified());
            let sent: Value = serde_json::from_str(&hello.line).unwrap();
            assert_eq!(sent["features"]["nick_auth"], true);
            assert_eq!(proof.unwrap().kind, wire::NICK_AUTH_PROOF);
        }
    }

    #[tokio::test]
    async fn a_failed_authentication_fails_the_link_in_every_mode_that_tries() {
        // joinmarket-ng's client raises in `_authenticate_nick` whatever its
        // mode: "prefer" does not fall back once both sides negotiated.
        for mode in [NickAuthMode::PreferVerified, NickAuthMode::RequireVerified] {
            let (result, ..) = authenticate(pinned(mode), "test:directory-b", Verdict::Check).await;
            let error = result.unwrap_err();
            assert!(
                matches!(&error, JmError::NickAuth(NickAuthError::DirectoryIdMismatch { expected, got })
                    if expected.as_str() == "test:directory-a" && got == "test:directory-b"),
                "{error:?}"
            );
            assert_eq!(error.kind(), HandshakeErrorKind::Rejected);
            for code in [
                NickAuthCode::Invalid,
                NickAuthCode::Policy,
                NickAuthCode::Malformed,
                NickAuthCode::Expired,
            ] {
                let (result, ..) =
                    authenticate(pinned(mode), "test:directory-a", Verdict::Answer(code)).await;
                let error = result.unwrap_err();
                assert!(
                    matches!(&error, JmError::NickAuth(NickAuthError::Rejected(c)) if *c == code),
                    "{error:?}"
                );
                assert_eq!(error.kind(), HandshakeErrorKind::Rejected);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_directory_that_never_challenges_times_out_within_30_seconds() {
        let mut config = pinned(NickAuthMode::PreferVerified);
        config.handshake_timeout = Duration::from_secs(600);
        let started = tokio::time::Instant::now();
        let (result, ..) = authenticate(config, "test:directory-a", Verdict::Silent).await;
        let error = result.unwrap_err();
        assert!(
            matches!(&error, JmError::NickAuth(NickAuthError::TimedOut(t)) if *t == nick_auth::MAX_STEP_TIMEOUT),
            "{error:?}"
        );
        assert_eq!(error.kind(), HandshakeErrorKind::TimedOut);
        assert_eq!(started.elapsed(), nick_auth::MAX_STEP_TIMEOUT);
    }

    #[tokio::test]
    async fn require_needs_an_identity_and_the_feature() {
        // Not an onion and nothing pinned: refused before a byte is sent.
        let mut config = config();
        config.nick_auth = NickAuthMode::RequireVerified;
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let error = DirectoryConnection::open(&context(), &local(), Box::pin(ours), config)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, JmError::NickAuth(NickAuthError::NoDirectoryId(s)) if s == "127.0.0.1:5222"),
            "{error:?}"
        );
        let mut rest = Vec::new();
        theirs.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing sent");
        // A directory without the feature (the reference's reply).
        let (result, _, _) = exchange(
            vec![envelope_line(795, REFERENCE_REPLY)],
            pinned(NickAuthMode::RequireVerified),
            true,
        )
        .await;
        let error = result.unwrap_err();
        assert!(
            matches!(error, JmError::NickAuth(NickAuthError::NotOffered)),
            "{error:?}"
        );
        assert_eq!(error.kind(), HandshakeErrorKind::Rejected);
    }

    /// The handshake we sent, as JSON (`sent` holds only its line).
    fn sent_hello(sent: &str) -> Value {
        serde_json::from_str(&Envelope::parse(sent.trim_end()).unwrap().line).unwrap()
    }

    #[tokio::test]
    async fn prefer_uses_a_directory_without_the_feature_or_identity_unverified() {
        let (result, sent, _side) = exchange(
            vec![envelope_line(795, REFERENCE_REPLY)],
            pinned(NickAuthMode::PreferVerified),
            true,
        )
        .await;
        assert_eq!(result.unwrap().info().nick_auth, NickAuthStatus::NotOffered);
        let hello = sent_hello(&sent);
        assert_eq!(hello["features"]["nick_auth"], true, "advertised");
        // No identity for 127.0.0.1: not advertised, not attempted.
        let (result, sent, _side) =
            exchange(vec![envelope_line(795, REFERENCE_REPLY)], config(), true).await;
        assert_eq!(
            result.unwrap().info().nick_auth,
            NickAuthStatus::NoDirectoryId
        );
        let hello = sent_hello(&sent);
        assert!(hello["features"].get("nick_auth").is_none());
    }

    #[tokio::test]
    async fn disabled_never_advertises_and_a_late_challenge_ends_the_link() {
        let (result, sent, _side) = exchange(
            vec![envelope_line(795, RANGE_REPLY)],
            pinned(NickAuthMode::Disabled),
            true,
        )
        .await;
        let connection = result.unwrap();
        assert_eq!(connection.info().nick_auth, NickAuthStatus::Disabled);
        let hello = sent_hello(&sent);
        assert!(hello["features"].get("nick_auth").is_none(), "{hello}");
        // The user may not send nick-auth types either.
        for kind in [803, 805, 807] {
            assert!(matches!(
                connection.send(&Envelope::new(kind, "{}")).await,
                Err(JmError::ControlType(k)) if k == kind
            ));
        }
        // joinmarket-ng's client closes on an 803..807 after the handshake.
        let (result, _, side) = exchange(
            vec![
                envelope_line(795, RANGE_REPLY),
                envelope_line(803, r#"{"challenge":"00","directory-id":"x"}"#),
            ],
            pinned(NickAuthMode::Disabled),
            true,
        )
        .await;
        let connection = Arc::new(result.unwrap());
        assert_eq!(spawn_link(&connection).await.unwrap(), LinkLoss::Protocol);
        drop(side);
    }

    #[test]
    fn nick_auth_is_the_links_own_feature() {
        let mut config = config();
        config.features.push("nick_auth".to_owned());
        assert_eq!(
            config.validate(),
            Err(JmConfigError::Feature("nick_auth".to_owned()))
        );
    }
}
