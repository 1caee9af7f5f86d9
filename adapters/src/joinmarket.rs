//! The JoinMarket directory handshake and connection.
//!
//! [`JoinMarketHandshake`] sends the client handshake (type 793), reads the
//! directory's reply (795; 793 is accepted too, as the original does),
//! checks it and hands back a [`DirectoryConnection`]: typed envelopes in
//! and out, `\r\n` framing, PING answered with PONG by itself, and every
//! message after the reply kept for the user.
//!
//! ```
//! use dirpool::joinmarket::{JmConfig, JoinMarketHandshake, Network, Nick};
//!
//! let config = JmConfig::new(Nick::random()?, Network::Signet);
//! let handshake = JoinMarketHandshake::new(config)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod identity;
pub mod wire;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use dirpool_core::{LinkLoss, ServerAddr};
use futures::channel::mpsc;
use futures::future::{Either, select};
use futures::lock::Mutex;
use futures::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};

pub use identity::{Location, Network, Nick, NickError, UnknownNetwork};
pub use wire::Envelope;
use wire::LineReader;

use crate::error::{CloseError, HandshakeError, HandshakeErrorKind};
use crate::handshake::{Client, Handshake, HandshakeContext, LossSignal};
use crate::runtime::{BoxedStream, before};

/// The protocol version we speak.
pub const PROTOCOL_VERSION: u32 = 5;
/// The largest line we accept by default (what joinmarket-ng's client takes).
pub const DEFAULT_MAX_LINE: usize = 2 * 1024 * 1024;

/// How we present ourselves to one directory.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JmConfig {
    /// Our nick.
    pub nick: Nick,
    /// Our own onion, or not serving.
    pub location: Location,
    /// The Bitcoin network; the directory must serve the same.
    pub network: Network,
    /// Features we advertise (name → true). Default: `peerlist_features`
    /// and `ping`, as joinmarket-ng. With `ping`, PINGs are answered.
    pub features: Vec<String>,
    /// Protocol version we announce (5).
    pub protocol_version: u32,
    /// Longest line we read; longer ones are rejected without buffering
    /// more than this.
    pub max_line: usize,
    /// Bound on the handshake itself (the pool's connection timeout bounds
    /// the whole dial as well; the earlier wins).
    pub handshake_timeout: Duration,
    /// Messages kept for the user before the reader waits for them to be
    /// taken (so memory stays bounded; nothing is dropped).
    pub queue: usize,
}

impl JmConfig {
    /// A configuration with every default: not serving, features
    /// `peerlist_features` and `ping`, version 5, 2 MiB lines, 60 s
    /// handshake timeout.
    pub fn new(nick: Nick, network: Network) -> Self {
        Self {
            nick,
            location: Location::NotServing,
            network,
            features: vec!["peerlist_features".to_owned(), "ping".to_owned()],
            protocol_version: PROTOCOL_VERSION,
            max_line: DEFAULT_MAX_LINE,
            handshake_timeout: Duration::from_secs(60),
            queue: 1024,
        }
    }

    /// Checks the features and limits.
    ///
    /// # Errors
    /// [`JmConfigError`] naming what is wrong.
    pub fn validate(&self) -> Result<(), JmConfigError> {
        for feature in &self.features {
            let known_shape = !feature.is_empty()
                && feature
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !known_shape {
                return Err(JmConfigError::Feature(feature.clone()));
            }
        }
        if self.max_line < 1024 {
            return Err(JmConfigError::MaxLineTooSmall(self.max_line));
        }
        if self.queue == 0 || self.handshake_timeout.is_zero() {
            return Err(JmConfigError::Zero);
        }
        Ok(())
    }
}

/// A [`JmConfig`] the handshake cannot use.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JmConfigError {
    /// Feature names are lower-case letters, digits and `_`.
    #[error("feature name {0:?} is not lower-case letters, digits and '_'")]
    Feature(String),
    /// `max_line` below 1 KiB.
    #[error("max_line {0} is too small to hold a handshake reply")]
    MaxLineTooSmall(usize),
    /// A zero queue or handshake timeout.
    #[error("queue and handshake_timeout must be non-zero")]
    Zero,
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
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
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
            Self::Io(e) => HandshakeErrorKind::Io(e.kind()),
            Self::TimedOut(_) => HandshakeErrorKind::TimedOut,
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
}

impl DirectoryInfo {
    /// Parses and checks a reply's `line` for a client of `config`.
    fn from_reply(line: &str, config: &JmConfig) -> Result<Self, JmError> {
        let value: Value = serde_json::from_str(line).map_err(JmError::NotJson)?;
        let Value::Object(map) = value else {
            return Err(JmError::NotObject);
        };
        let string = |field: &'static str| -> Result<Option<String>, JmError> {
            match map.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(JmError::WrongFieldType(field)),
            }
        };
        let number = |field: &'static str| -> Result<Option<u64>, JmError> {
            match map.get(field) {
                None => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or(JmError::WrongFieldType(field)),
            }
        };
        let motd = string("motd")?.map(|m| clean(&m));
        match map.get("accepted") {
            None => return Err(JmError::MissingField("accepted")),
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => return Err(JmError::Rejected { motd }),
            Some(_) => return Err(JmError::WrongFieldType("accepted")),
        }
        let network = string("network")?;
        if let Some(theirs) = &network {
            if theirs != config.network.as_str() {
                return Err(JmError::WrongNetwork {
                    ours: config.network,
                    theirs: clean(theirs),
                });
            }
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
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(f)) => f
                .iter()
                .filter(|(_, on)| on.as_bool() == Some(true))
                .map(|(name, _)| clean(name))
                .collect(),
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
            .map_err(|e| HandshakeError::new(HandshakeErrorKind::Protocol, e))?;
        let runtime = context.runtime();
        let timeout = config.handshake_timeout;
        let own_deadline = runtime.now() + timeout;
        let exchange = DirectoryConnection::open(stream, config);
        if own_deadline >= context.deadline() {
            // The dial's deadline comes first; whoever set it enforces it
            // (and reports its own timeout, not ours).
            return Ok(exchange.await?);
        }
        match before(runtime.sleep_until(own_deadline), exchange).await {
            Some(result) => Ok(result?),
            None => Err(JmError::TimedOut(timeout).into()),
        }
    }
}

/// A connection to a directory after a successful handshake.
///
/// Its reader runs while [`Client::closed`] is awaited: the pool does that
/// for registered connections; for one from `connect_to_directory`, spawn
/// `closed()` yourself, or PINGs go unanswered and nothing is received.
pub struct DirectoryConnection {
    info: DirectoryInfo,
    answers_ping: bool,
    reader: Mutex<LineReader<ReadHalf<BoxedStream>>>,
    writer: Mutex<WriteHalf<BoxedStream>>,
    incoming_tx: mpsc::Sender<Envelope>,
    incoming_rx: Mutex<mpsc::Receiver<Envelope>>,
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

impl DirectoryConnection {
    /// Runs the handshake on `stream` (not bounded in time: the caller is).
    ///
    /// # Errors
    /// [`JmError`] saying what went wrong.
    pub async fn open(stream: BoxedStream, config: JmConfig) -> Result<Self, JmError> {
        let (read, mut write) = tokio::io::split(stream);
        let features: Map<String, Value> = config
            .features
            .iter()
            .map(|f| (f.clone(), Value::Bool(true)))
            .collect();
        let hello = json!({
            "app-name": "joinmarket",
            "directory": false,
            "location-string": config.location.to_string(),
            "proto-ver": config.protocol_version,
            "features": features,
            "nick": config.nick.as_str(),
            "network": config.network.as_str(),
        });
        let bytes = Envelope::new(wire::HANDSHAKE, hello.to_string()).encode()?;
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
        let info = DirectoryInfo::from_reply(&reply.line, &config)?;
        let (incoming_tx, incoming_rx) = mpsc::channel(config.queue);
        Ok(Self {
            info,
            answers_ping: config.features.iter().any(|f| f == "ping"),
            reader: Mutex::new(reader),
            writer: Mutex::new(write),
            incoming_tx,
            incoming_rx: Mutex::new(incoming_rx),
            loss: LossSignal::new(),
        })
    }

    /// What the directory said about itself.
    pub fn info(&self) -> &DirectoryInfo {
        &self.info
    }

    /// Sends a message.
    ///
    /// # Errors
    /// [`JmError::SendTooLong`] over 40,000 bytes (never sent),
    /// [`JmError::Closed`] after a close, or an I/O error.
    pub async fn send(&self, envelope: &Envelope) -> Result<(), JmError> {
        let bytes = envelope.encode()?;
        if self.loss.is_fired() {
            return Err(JmError::Closed);
        }
        let mut writer = self.writer.lock().await;
        writer.write_all(&bytes).await.map_err(JmError::Io)?;
        writer.flush().await.map_err(JmError::Io)
    }

    /// The next message from the directory (PINGs excluded when answered
    /// automatically); `None` once the link is gone and every message kept
    /// has been taken.
    pub async fn recv(&self) -> Option<Envelope> {
        self.incoming_rx.lock().await.next().await
    }

    /// Reads until the link ends: answers PINGs, queues the rest.
    async fn read_loop(&self) -> LinkLoss {
        let mut reader = self.reader.lock().await;
        let mut queue = self.incoming_tx.clone();
        let loss = loop {
            let envelope = match reader.next_line().await {
                Ok(Some(line)) => match Envelope::parse(&line) {
                    Ok(envelope) => envelope,
                    Err(e) => {
                        tracing::warn!(error = %e, "directory broke the protocol");
                        break LinkLoss::Protocol;
                    }
                },
                Ok(None) => break LinkLoss::ClosedByPeer,
                Err(JmError::Io(e)) => break LinkLoss::Io(e.kind()),
                Err(e) => {
                    tracing::warn!(error = %e, "directory broke the protocol");
                    break LinkLoss::Protocol;
                }
            };
            if envelope.kind == wire::PING && self.answers_ping {
                tracing::trace!("PING answered");
                if self.send(&Envelope::new(wire::PONG, "")).await.is_err() {
                    break LinkLoss::ClosedByPeer;
                }
            } else if queue.send(envelope).await.is_err() {
                // The connection is being dropped; stop reading.
                break LinkLoss::ClosedByPeer;
            }
        };
        // Whatever is queued stays readable; recv() ends after it.
        self.incoming_tx.clone().close_channel();
        self.loss.fire(loss);
        loss
    }
}

impl Client for DirectoryConnection {
    async fn closed(&self) -> LinkLoss {
        let read = std::pin::pin!(self.read_loop());
        match select(self.loss.wait(), read).await {
            Either::Left((loss, _)) | Either::Right((loss, _)) => loss,
        }
    }

    async fn close(&self) -> Result<(), CloseError> {
        self.loss.fire(LinkLoss::ClosedByPeer);
        self.incoming_tx.clone().close_channel();
        self.writer.lock().await.shutdown().await?;
        Ok(())
    }
}

#[cfg(all(test, feature = "tokio"))]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::runtime::TokioRuntime;
    use tokio::io::{AsyncReadExt, DuplexStream};

    const REFERENCE_REPLY: &str = r#"{"app-name": "joinmarket", "directory": true, "location-string": "x.onion:5222", "proto-ver": 5, "features": {}, "accepted": true, "nick": "J5dirNickQRSOOOO", "network": "regtest"}"#;
    const RANGE_REPLY: &str = r#"{"accepted":true,"nick":"J5rangeDirOOOOOO","network":"regtest","proto-ver-min":5,"proto-ver-max":6,"features":{"peerlist_features":true,"ping":true,"off":false},"motd":"welcome\u0007 to the test directory","directory":true}"#;

    fn config() -> JmConfig {
        JmConfig::new(Nick::parse("J5xhGSWE7VrxM7sO").unwrap(), Network::Regtest)
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
        let result = DirectoryConnection::open(Box::pin(ours), config).await;
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
        assert_eq!(hello["nick"], "J5xhGSWE7VrxM7sO");
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
        let error = DirectoryConnection::open(Box::pin(ours), config)
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
            Some(Envelope::new(789, "J5peerNickOOOOOO;x.onion:5222"))
        );
        assert_eq!(
            connection.recv().await,
            Some(Envelope::new(687, "!orderbook"))
        );
        assert_eq!(
            connection.recv().await,
            None,
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
            Err(JmConfigError::MaxLineTooSmall(10))
        ));
    }
}
