//! JMP-0005 nick authentication: proving to a directory that we hold the
//! key our nick is derived from.
//!
//! As joinmarket-ng does it (the only implementation that knows it;
//! joinmarket-rs and the reference joinmarket-clientserver have no trace
//! of message types 803–807 or the `nick_auth` feature):
//! - both sides advertise the feature [`FEATURE_NICK_AUTH`] in their
//!   handshakes (`jmcore/src/jmcore/protocol.py`); the client only when its
//!   mode is not [`NickAuthMode::Disabled`] and it knows the directory's
//!   identity ([`DirectoryId`]);
//! - after an accepted handshake the directory sends a challenge (803,
//!   [`NickAuthChallenge`]: 32 random bytes in lower-case hex and its
//!   directory id), the client answers with a proof (805,
//!   [`NickAuthProof`]: its compressed public key and a signature) and the
//!   directory answers with a result (807, [`NickAuthResult`]);
//! - the signature covers the transcript ([`transcript`])
//!   `nick-auth|<challenge>|<directory-id>|<sha256 hex of our handshake
//!   line>|<nick>|<pubkey hex>` followed by the domain `nick-auth-v1`,
//!   hashed as a Bitcoin signed message like private messages are
//!   (`jmcore/src/jmcore/nick_auth.py`, `build_nick_auth_signed_message`);
//! - every payload is strict JSON (no duplicate key, no `NaN`), exactly the
//!   fields named, of the right JSON type, no coercion (pydantic
//!   `strict=True`, `extra="forbid"`); the signature is canonical base64
//!   of strict DER (`_decode_canonical_der_signature`).
//!
//! The client side (`jmcore/src/jmcore/directory_client.py`, `_handshake`
//! and `_authenticate_nick`), which
//! [`DirectoryConnection::open`](super::DirectoryConnection::open) follows:
//! - in [`NickAuthMode::RequireVerified`] without a directory id, fail
//!   before the handshake; when the directory does not advertise the
//!   feature, fail after its reply;
//! - when both advertise it, authenticate, each step (reading the
//!   challenge, writing the proof, reading the result) bounded by
//!   `min(timeout, 30 s)`; any failure fails the connection, in
//!   [`NickAuthMode::PreferVerified`] too: "prefer" only means a directory
//!   without the feature (or without a known id) is used unverified;
//! - a challenge whose directory id is not the expected one fails;
//! - an 803, 805 or 807 later on the link closes it.
//!
//! The directory side (`directory_server/src/directory_server/server.py`,
//! `_perform_nick_auth`; `handshake_handler.py`): it advertises the
//! feature unless disabled; a client that advertises it too is
//! challenged (any mode but disabled), a bad proof answered with 807
//! `malformed` or `invalid` and the connection closed; in
//! `require_verified` a client without the feature gets `accepted: false`
//! with the motd "Rejected: verified nick authentication required"; a
//! silent client gets `expired` after the timeout. [`NickAuthProof::verify`]
//! is its check.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use dirpool_core::ServerAddr;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::identity::Nick;
use super::nick_key::{NickIdentity, NickKeyError, SignatureError, verify_der};
use super::wire::{self, Envelope, LineReader};
use super::{JmError, clean};
use crate::runtime::{Runtime, before};

/// The handshake feature both sides advertise to negotiate nick
/// authentication (joinmarket-ng `protocol.py`, `FEATURE_NICK_AUTH`).
pub const FEATURE_NICK_AUTH: &str = "nick_auth";

/// The domain appended to the transcript (`nick_auth.py`,
/// `_NICK_AUTH_DOMAIN`), so a proof can never pass as a private message's
/// signature (which appends `onion-network`) and the reverse.
pub const NICK_AUTH_DOMAIN: &str = "nick-auth-v1";

/// The longest one step of the exchange may take, whatever the handshake
/// timeout (`directory_client.py`: `min(self.timeout, 30.0)`).
pub const MAX_STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// secp256k1's group order, big-endian: `r` and `s` must be below it.
const ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
];

/// How a client treats nick authentication (joinmarket-ng `NickAuthMode`,
/// the same names on the wire of its configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NickAuthMode {
    /// Never advertise the feature, never answer a challenge.
    Disabled,
    /// Authenticate where the directory offers it and its identity is
    /// known; use other directories unverified. A failed authentication
    /// still fails the connection, as in joinmarket-ng.
    #[default]
    PreferVerified,
    /// Use only directories that verify our nick: no known identity, no
    /// feature or a failed authentication fail the connection.
    RequireVerified,
}

impl NickAuthMode {
    /// joinmarket-ng's name: `disabled`, `prefer_verified`,
    /// `require_verified`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::PreferVerified => "prefer_verified",
            Self::RequireVerified => "require_verified",
        }
    }
}

impl fmt::Display for NickAuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NickAuthMode {
    type Err = NickAuthError;
    fn from_str(text: &str) -> Result<Self, NickAuthError> {
        [Self::Disabled, Self::PreferVerified, Self::RequireVerified]
            .into_iter()
            .find(|mode| mode.as_str() == text)
            .ok_or(NickAuthError::UnknownMode)
    }
}

/// What came of nick authentication on one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NickAuthStatus {
    /// The directory verified that we hold our nick's key.
    Verified,
    /// The directory does not offer nick authentication (joinmarket-rs,
    /// the reference, or joinmarket-ng with it disabled).
    NotOffered,
    /// No directory identity is known for this endpoint (not an onion
    /// and none pinned), so the feature was not advertised.
    NoDirectoryId,
    /// Our mode is [`NickAuthMode::Disabled`].
    Disabled,
}

impl NickAuthStatus {
    /// Whether the directory verified our nick.
    pub fn is_verified(self) -> bool {
        self == Self::Verified
    }
}

/// A directory's JMP-0005 identity: what it puts in its challenge and we
/// put in what we sign, so a proof made for one directory is worth nothing
/// at another. `[a-z0-9][a-z0-9.:_-]*` (`nick_auth.py`,
/// `validate_directory_id`); for a v3 onion endpoint `<host>.onion:<port>`
/// ([`DirectoryId::for_endpoint`]), for any other one it must be pinned.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DirectoryId(String);

impl DirectoryId {
    /// Checks `text` is a directory id.
    ///
    /// # Errors
    /// [`NickAuthError::InvalidDirectoryId`].
    pub fn parse(text: &str) -> Result<Self, NickAuthError> {
        let bytes = text.as_bytes();
        let valid = bytes
            .first()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && bytes.iter().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'.' | b':' | b'_' | b'-')
            });
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(NickAuthError::InvalidDirectoryId)
        }
    }

    /// The identity joinmarket-ng derives for a v3 onion endpoint
    /// (`directory_id_for_endpoint`): its lower-case `host:port`. `None`
    /// for any other host: those need an id pinned by configuration.
    pub fn for_endpoint(server: &ServerAddr) -> Option<Self> {
        // `ServerAddr` holds onions lower-case and checksum-checked, a
        // narrower set than ng's `[a-z2-7]{56}\.onion`.
        server
            .is_onion()
            .then(|| Self(format!("{}:{}", server.host(), server.port())))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DirectoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DirectoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DirectoryId({})", self.0)
    }
}

/// Which JMP-0005 message a [`NickAuthError::Malformed`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NickAuthMessage {
    /// 803.
    Challenge,
    /// 805.
    Proof,
    /// 807.
    Result,
}

impl NickAuthMessage {
    /// Its message type.
    pub fn kind(self) -> u32 {
        match self {
            Self::Challenge => wire::NICK_AUTH_CHALLENGE,
            Self::Proof => wire::NICK_AUTH_PROOF,
            Self::Result => wire::NICK_AUTH_RESULT,
        }
    }
}

impl fmt::Display for NickAuthMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Challenge => "challenge (803)",
            Self::Proof => "proof (805)",
            Self::Result => "result (807)",
        })
    }
}

/// A directory's verdict (`NickAuthResult.code` in joinmarket-ng).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NickAuthCode {
    /// Verified.
    Ok,
    /// The proof was not a well-formed 805.
    Malformed,
    /// No proof within the directory's timeout.
    Expired,
    /// The proof did not verify.
    Invalid,
    /// Verified, but refused by policy (ng: another connection holds the
    /// nick verified under another key).
    Policy,
}

impl NickAuthCode {
    const ALL: [Self; 5] = [
        Self::Ok,
        Self::Malformed,
        Self::Expired,
        Self::Invalid,
        Self::Policy,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::Invalid => "invalid",
            Self::Policy => "policy",
        }
    }
}

impl fmt::Display for NickAuthCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why nick authentication failed, or a JMP-0005 value is not valid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NickAuthError {
    /// [`NickAuthMode::RequireVerified`] for an endpoint with no known
    /// identity: not an onion and none pinned (ng refuses before the
    /// handshake, "No expected nick authentication directory identity").
    #[error("no directory identity known for {0} (not an onion and none pinned)")]
    NoDirectoryId(String),
    /// [`NickAuthMode::RequireVerified`] and the directory does not
    /// advertise the feature.
    #[error("the directory does not offer nick authentication, which we require")]
    NotOffered,
    /// Another message type where the exchange expects `expected`.
    #[error("expected the nick-auth {expected}, got message type {got}")]
    UnexpectedType {
        /// The message expected.
        expected: NickAuthMessage,
        /// The type received.
        got: u32,
    },
    /// The directory closed the connection during the exchange.
    #[error("the directory closed the connection during nick authentication")]
    Closed,
    /// A payload that is not what JMP-0005 allows.
    #[error("malformed nick-auth {message}: {reason}")]
    Malformed {
        /// Which message.
        message: NickAuthMessage,
        /// What is wrong.
        reason: &'static str,
    },
    /// The challenge names another directory than the one we expect: a
    /// proof for it would be worth nothing here, or we reached another
    /// directory than we meant to.
    #[error("the directory identifies as {got:?}, expected {expected}")]
    DirectoryIdMismatch {
        /// The identity we expect.
        expected: DirectoryId,
        /// The one in the challenge, cleaned for display.
        got: String,
    },
    /// The directory did not accept our proof.
    #[error("the directory refused our nick proof: {0}")]
    Rejected(NickAuthCode),
    /// One step took longer than its timeout.
    #[error("nick authentication timed out after {0:?}")]
    TimedOut(Duration),
    /// Not a directory id (see [`DirectoryId`]).
    #[error("a directory id is [a-z0-9] then [a-z0-9.:_-]*")]
    InvalidDirectoryId,
    /// Not a mode's name.
    #[error("nick-auth modes are disabled, prefer_verified and require_verified")]
    UnknownMode,
    /// Signing the proof failed.
    #[error("signing the nick proof failed")]
    Signing(#[source] NickKeyError),
}

/// A directory's challenge (803): 32 bytes of lower-case hex and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NickAuthChallenge {
    challenge: String,
    directory_id: DirectoryId,
}

impl NickAuthChallenge {
    /// The challenge `nonce` from `directory_id`.
    pub fn new(nonce: &[u8; 32], directory_id: DirectoryId) -> Self {
        Self {
            challenge: hex(nonce),
            directory_id,
        }
    }

    /// Parses an 803's `line` as joinmarket-ng does: strict JSON, exactly
    /// `challenge` (64 lower-case hex) and `directory-id`.
    ///
    /// # Errors
    /// [`NickAuthError::Malformed`].
    pub fn parse(line: &str) -> Result<Self, NickAuthError> {
        let malformed = |reason| NickAuthError::Malformed {
            message: NickAuthMessage::Challenge,
            reason,
        };
        let map = strict_object(
            line,
            &["challenge", "directory-id"],
            NickAuthMessage::Challenge,
        )?;
        let challenge = string_field(&map, "challenge", NickAuthMessage::Challenge)?;
        if !is_lower_hex_64(challenge) {
            return Err(malformed("challenge is not 64 lower-case hex digits"));
        }
        let directory_id = string_field(&map, "directory-id", NickAuthMessage::Challenge)?;
        let directory_id =
            DirectoryId::parse(directory_id).map_err(|_| malformed("invalid directory-id"))?;
        Ok(Self {
            challenge: challenge.to_owned(),
            directory_id,
        })
    }

    /// The 803 `line`: compact JSON, as joinmarket-ng's `to_json`.
    pub fn to_line(&self) -> String {
        json!({"challenge": self.challenge, "directory-id": self.directory_id.as_str()}).to_string()
    }

    /// The challenge, 64 lower-case hex digits.
    pub fn challenge(&self) -> &str {
        &self.challenge
    }

    /// The directory's id.
    pub fn directory_id(&self) -> &DirectoryId {
        &self.directory_id
    }
}

/// A client's proof (805): its compressed public key and a signature over
/// the [`transcript`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NickAuthProof {
    public_key: [u8; 33],
    signature: String,
}

impl NickAuthProof {
    /// Signs the transcript of `challenge` for the handshake line we sent
    /// (the `line` of our 793, exactly as sent) with `identity`
    /// (joinmarket-ng `create_nick_auth_proof`).
    ///
    /// # Errors
    /// [`NickAuthError::Signing`] if ECDSA fails.
    pub fn create(
        identity: &NickIdentity,
        challenge: &NickAuthChallenge,
        handshake_line: &str,
    ) -> Result<Self, NickAuthError> {
        let message = transcript(
            challenge,
            handshake_line,
            identity.nick(),
            identity.public_key(),
        );
        let signature = identity
            .sign_text(&message)
            .map_err(NickAuthError::Signing)?;
        Ok(Self {
            public_key: *identity.public_key(),
            signature,
        })
    }

    /// Parses an 805's `line` as joinmarket-ng does: strict JSON, exactly
    /// `pubkey` (lower-case hex of a compressed point on the curve) and
    /// `signature` (canonical base64 of strict DER, `r` and `s` in range).
    ///
    /// # Errors
    /// [`NickAuthError::Malformed`].
    pub fn parse(line: &str) -> Result<Self, NickAuthError> {
        let malformed = |reason| NickAuthError::Malformed {
            message: NickAuthMessage::Proof,
            reason,
        };
        let map = strict_object(line, &["pubkey", "signature"], NickAuthMessage::Proof)?;
        let pubkey = string_field(&map, "pubkey", NickAuthMessage::Proof)?;
        let public_key = parse_public_key(pubkey)
            .ok_or_else(|| malformed("pubkey is not a lower-case compressed secp256k1 key"))?;
        let signature = string_field(&map, "signature", NickAuthMessage::Proof)?;
        decode_signature(signature)
            .ok_or_else(|| malformed("signature is not canonical base64 of strict DER"))?;
        Ok(Self {
            public_key,
            signature: signature.to_owned(),
        })
    }

    /// The 805 `line`.
    pub fn to_line(&self) -> String {
        json!({"pubkey": hex(&self.public_key), "signature": self.signature}).to_string()
    }

    /// The public key.
    pub fn public_key(&self) -> &[u8; 33] {
        &self.public_key
    }

    /// The signature, base64 of DER.
    pub fn signature_base64(&self) -> &str {
        &self.signature
    }

    /// The directory's check (joinmarket-ng `verify_nick_auth_proof`): the
    /// key's nick is `nick` (the one of the client's handshake), and the
    /// signature verifies over the transcript of `challenge` and
    /// `handshake_line` (the client's 793 `line` as received). As
    /// libsecp256k1, a high-S signature is refused.
    ///
    /// # Errors
    /// [`SignatureError::NickMismatch`] when the key is not `nick`'s;
    /// otherwise as the signature check fails.
    pub fn verify(
        &self,
        challenge: &NickAuthChallenge,
        handshake_line: &str,
        nick: &Nick,
    ) -> Result<(), SignatureError> {
        let signer = Nick::from_public_key(&self.public_key)
            .map_err(|_| SignatureError::InvalidPublicKey)?;
        if &signer != nick {
            return Err(SignatureError::NickMismatch {
                from: nick.clone(),
                signer,
            });
        }
        let der = decode_signature(&self.signature).ok_or(SignatureError::MalformedSignature)?;
        let message = transcript(challenge, handshake_line, nick, &self.public_key);
        verify_der(&self.public_key, &message, &der)
    }
}

/// A directory's verdict (807).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NickAuthResult {
    code: NickAuthCode,
}

impl NickAuthResult {
    /// The result `code` (`verified` is true exactly for [`NickAuthCode::Ok`]).
    pub fn new(code: NickAuthCode) -> Self {
        Self { code }
    }

    /// Parses an 807's `line` as joinmarket-ng does: strict JSON, exactly
    /// `code` (one of the five) and `verified` (a boolean, true exactly
    /// for `ok`).
    ///
    /// # Errors
    /// [`NickAuthError::Malformed`].
    pub fn parse(line: &str) -> Result<Self, NickAuthError> {
        let malformed = |reason| NickAuthError::Malformed {
            message: NickAuthMessage::Result,
            reason,
        };
        let map = strict_object(line, &["code", "verified"], NickAuthMessage::Result)?;
        let code = string_field(&map, "code", NickAuthMessage::Result)?;
        let code = NickAuthCode::ALL
            .into_iter()
            .find(|known| known.as_str() == code)
            .ok_or_else(|| malformed("unknown code"))?;
        let Some(Value::Bool(verified)) = map.get("verified") else {
            return Err(malformed("verified is not a boolean"));
        };
        if *verified != (code == NickAuthCode::Ok) {
            return Err(malformed("verified disagrees with the code"));
        }
        Ok(Self { code })
    }

    /// The 807 `line`.
    pub fn to_line(&self) -> String {
        json!({"code": self.code.as_str(), "verified": self.code == NickAuthCode::Ok}).to_string()
    }

    /// The code.
    pub fn code(&self) -> NickAuthCode {
        self.code
    }
}

/// A directory's verdict on the line a client answered `challenge` with
/// (joinmarket-ng `server.py`, `_perform_nick_auth`): `malformed` unless
/// `answer` is a strict 805 envelope whose proof parses; `invalid` unless
/// the proof verifies ([`NickAuthProof::verify`]) for `nick` and
/// `handshake_line`, the client's 793 `line` as received; else `ok`.
pub fn judge_answer(
    challenge: &NickAuthChallenge,
    handshake_line: &str,
    nick: &str,
    answer: &str,
) -> NickAuthCode {
    let proof = match Envelope::parse(answer) {
        Ok(envelope) if envelope.kind == wire::NICK_AUTH_PROOF => {
            NickAuthProof::parse(&envelope.line)
        }
        _ => return NickAuthCode::Malformed,
    };
    let Ok(proof) = proof else {
        return NickAuthCode::Malformed;
    };
    match Nick::parse(nick) {
        Ok(nick) if proof.verify(challenge, handshake_line, &nick).is_ok() => NickAuthCode::Ok,
        _ => NickAuthCode::Invalid,
    }
}

/// The bytes a proof signs (joinmarket-ng `build_nick_auth_signed_message`):
/// `nick-auth|<challenge>|<directory-id>|<sha256 hex of handshake_line's
/// UTF-8>|<nick>|<pubkey hex>` then [`NICK_AUTH_DOMAIN`], no separator
/// before the domain.
pub fn transcript(
    challenge: &NickAuthChallenge,
    handshake_line: &str,
    nick: &Nick,
    public_key: &[u8; 33],
) -> Vec<u8> {
    format!(
        "nick-auth|{}|{}|{}|{nick}|{}{NICK_AUTH_DOMAIN}",
        challenge.challenge,
        challenge.directory_id,
        hex(&Sha256::digest(handshake_line.as_bytes())),
        hex(public_key),
    )
    .into_bytes()
}

/// The client's side of one exchange, after an accepted handshake in which
/// both sides advertised [`FEATURE_NICK_AUTH`] (joinmarket-ng
/// `directory_client.py`, `_authenticate_nick`).
pub(super) struct Exchange<'a> {
    pub(super) runtime: &'a dyn Runtime,
    /// Bound on each step: reading the challenge, writing the proof,
    /// reading the result.
    pub(super) step_timeout: Duration,
    pub(super) identity: &'a NickIdentity,
    pub(super) expected: DirectoryId,
    /// The `line` of the 793 we sent, exactly.
    pub(super) handshake_line: &'a str,
}

impl Exchange<'_> {
    /// Reads the challenge, answers it, reads the verdict.
    ///
    /// # Errors
    /// [`JmError::NickAuth`] for a failed exchange; the reader's and
    /// writer's own errors (a line too long, I/O) as they are.
    pub(super) async fn run<R, W>(
        &self,
        reader: &mut LineReader<R>,
        writer: &mut W,
    ) -> Result<(), JmError>
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let auth = JmError::NickAuth;
        let envelope = self.step(reader.next_line()).await??;
        let challenge = expect(envelope, NickAuthMessage::Challenge)?;
        let challenge = NickAuthChallenge::parse(&challenge).map_err(auth)?;
        if challenge.directory_id != self.expected {
            return Err(auth(NickAuthError::DirectoryIdMismatch {
                expected: self.expected.clone(),
                got: clean(challenge.directory_id.as_str()),
            }));
        }
        let proof =
            NickAuthProof::create(self.identity, &challenge, self.handshake_line).map_err(auth)?;
        let bytes = Envelope::new(wire::NICK_AUTH_PROOF, proof.to_line()).encode()?;
        self.step(async {
            use tokio::io::AsyncWriteExt;
            writer.write_all(&bytes).await?;
            writer.flush().await
        })
        .await?
        .map_err(JmError::Io)?;
        let envelope = self.step(reader.next_line()).await??;
        let result = expect(envelope, NickAuthMessage::Result)?;
        match NickAuthResult::parse(&result).map_err(auth)?.code {
            NickAuthCode::Ok => Ok(()),
            code => Err(auth(NickAuthError::Rejected(code))),
        }
    }

    /// `future` within one step's timeout.
    async fn step<T>(&self, future: impl Future<Output = T>) -> Result<T, JmError> {
        let timed_out = || JmError::NickAuth(NickAuthError::TimedOut(self.step_timeout));
        let deadline = self
            .runtime
            .now()
            .checked_add(self.step_timeout)
            .ok_or_else(timed_out)?;
        before(self.runtime.sleep_until(deadline), future)
            .await
            .ok_or_else(timed_out)
    }
}

/// The `line` of the next message, which must be `message`.
fn expect(line: Option<String>, message: NickAuthMessage) -> Result<String, JmError> {
    let line = line.ok_or(JmError::NickAuth(NickAuthError::Closed))?;
    let envelope = Envelope::parse(&line).map_err(|_| {
        JmError::NickAuth(NickAuthError::Malformed {
            message,
            reason: "not a JSON message envelope",
        })
    })?;
    if envelope.kind != message.kind() {
        return Err(JmError::NickAuth(NickAuthError::UnexpectedType {
            expected: message,
            got: envelope.kind,
        }));
    }
    Ok(envelope.line)
}

/// Parses `line` as a strict JSON object with exactly the fields `fields`.
fn strict_object(
    line: &str,
    fields: &[&str],
    message: NickAuthMessage,
) -> Result<Map<String, Value>, NickAuthError> {
    let malformed = |reason| NickAuthError::Malformed { message, reason };
    let Value::Object(map) =
        wire::parse_strict_json(line).map_err(|_| malformed("not strict JSON"))?
    else {
        return Err(malformed("not a JSON object"));
    };
    if map.len() != fields.len() || !fields.iter().all(|field| map.contains_key(*field)) {
        return Err(malformed("not exactly the fields JMP-0005 names"));
    }
    Ok(map)
}

/// A field that must be a JSON string.
fn string_field<'a>(
    map: &'a Map<String, Value>,
    field: &'static str,
    message: NickAuthMessage,
) -> Result<&'a str, NickAuthError> {
    match map.get(field) {
        Some(Value::String(text)) => Ok(text),
        _ => Err(NickAuthError::Malformed {
            message,
            reason: "a field is not a string",
        }),
    }
}

fn is_lower_hex_64(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lower-case hex of a compressed key that is on the curve.
fn parse_public_key(text: &str) -> Option<[u8; 33]> {
    if text.len() != 66 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut key = [0u8; 33];
    for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    let on_curve =
        matches!(key[0], 0x02 | 0x03) && k256::ecdsa::VerifyingKey::from_sec1_bytes(&key).is_ok();
    on_curve.then_some(key)
}

/// The DER bytes of a canonical base64, strict DER signature with `r` and
/// `s` in `1..n` (`nick_auth.py`, `_decode_canonical_der_signature` and
/// `_is_strict_der_signature`).
fn decode_signature(text: &str) -> Option<Vec<u8>> {
    let der = BASE64.decode(text).ok()?;
    (BASE64.encode(&der) == text && is_strict_der(&der)).then_some(der)
}

/// BIP 66's strict DER for an ECDSA signature, plus `r` and `s` in `1..n`.
fn is_strict_der(signature: &[u8]) -> bool {
    let len = signature.len();
    if !(8..=72).contains(&len) || signature[0] != 0x30 || usize::from(signature[1]) != len - 2 {
        return false;
    }
    let Some((r, rest)) = der_integer(&signature[2..]) else {
        return false;
    };
    // ng: `5 + r_length >= len` fails, so `s` has at least one byte.
    if rest.len() < 3 {
        return false;
    }
    let Some((s, rest)) = der_integer(rest) else {
        return false;
    };
    rest.is_empty() && in_range(r) && in_range(s)
}

/// One minimally encoded, non-negative DER INTEGER and what follows it.
fn der_integer(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&len, rest) = rest.split_first()?;
    let len = usize::from(len);
    if tag != 0x02 || len == 0 || rest.len() < len {
        return None;
    }
    let (value, rest) = rest.split_at(len);
    let negative = value[0] & 0x80 != 0;
    let padded = len > 1 && value[0] == 0 && value[1] & 0x80 == 0;
    (!negative && !padded).then_some((value, rest))
}

/// Whether a big-endian integer is in `1..n`.
fn in_range(value: &[u8]) -> bool {
    let digits = match value.iter().position(|&b| b != 0) {
        Some(first) => &value[first..],
        None => return false,
    };
    digits.len() < 32 || (digits.len() == 32 && digits < &ORDER[..])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// joinmarket-ng `jmcore/tests/test_nick_auth.py`.
    const CHALLENGE: [u8; 32] = [0x22; 32];
    const DIRECTORY_HOST: &str = "nakamotourflxwjnjpnrk7yc2nhkf6r62ed4gdfxmmn5f4saw5q5qoyd.onion";
    const HANDSHAKE_LINE: &str = r#"{"nick":"J5example","features":{"nick_auth":true}}"#;
    const NG_PUBKEY: &str = "034f355bdcb7cc0af728ef3cceb9615d90684bb5b2ca5f859ab0f0b704075871aa";
    const NG_SIGNATURE: &str = "MEQCIDTAF2VwsN1hK3n+Hc2iGt2xkhURfTfCiJnM4myGM6T2AiAbXU8Kl5f16SwddktRYcl+gLHt5zS1nY7eLSi61e1g6w==";

    fn identity() -> NickIdentity {
        NickIdentity::from_secret_bytes(&[0x11; 32]).unwrap()
    }

    fn directory_id() -> DirectoryId {
        DirectoryId::parse(&format!("{DIRECTORY_HOST}:5222")).unwrap()
    }

    fn challenge() -> NickAuthChallenge {
        NickAuthChallenge::new(&CHALLENGE, directory_id())
    }

    #[test]
    fn the_transcript_is_ngs_exact_ascii() {
        // test_signed_message_is_exact_ascii_transcript.
        let identity = identity();
        let sha = hex(&Sha256::digest(HANDSHAKE_LINE.as_bytes()));
        let expected = format!(
            "nick-auth|{}|{DIRECTORY_HOST}:5222|{sha}|{}|{NG_PUBKEY}nick-auth-v1",
            "22".repeat(32),
            identity.nick()
        );
        let ours = transcript(
            &challenge(),
            HANDSHAKE_LINE,
            identity.nick(),
            identity.public_key(),
        );
        assert_eq!(ours, expected.into_bytes());
        // The hash is over the line's bytes, not its JSON encoding, nor
        // with a terminator (test_handshake_hashes_exact_decoded_line_utf8_bytes).
        let other = transcript(
            &challenge(),
            &format!("{HANDSHAKE_LINE}\r\n"),
            identity.nick(),
            identity.public_key(),
        );
        assert_ne!(ours, other);
    }

    #[test]
    fn our_proof_is_ngs_deterministic_proof_and_verifies() {
        // test_create_and_verify_deterministic_proof.
        let identity = identity();
        let proof = NickAuthProof::create(&identity, &challenge(), HANDSHAKE_LINE).unwrap();
        assert_eq!(hex(proof.public_key()), NG_PUBKEY);
        assert_eq!(proof.signature_base64(), NG_SIGNATURE);
        let line = proof.to_line();
        assert_eq!(NickAuthProof::parse(&line).unwrap(), proof);
        assert_eq!(
            proof.verify(&challenge(), HANDSHAKE_LINE, identity.nick()),
            Ok(())
        );
        // ng's proof, as ng puts it on the wire, verifies here.
        let ng_line = format!(r#"{{"pubkey":"{NG_PUBKEY}","signature":"{NG_SIGNATURE}"}}"#);
        let ng_proof = NickAuthProof::parse(&ng_line).unwrap();
        assert_eq!(ng_proof.to_line(), ng_line);
        assert!(
            ng_proof
                .verify(&challenge(), HANDSHAKE_LINE, identity.nick())
                .is_ok()
        );
    }

    #[test]
    fn a_proof_is_bound_to_challenge_directory_line_and_nick() {
        // test_verification_rejects_replay_binding_mismatches.
        let identity = identity();
        let proof = NickAuthProof::create(&identity, &challenge(), HANDSHAKE_LINE).unwrap();
        let other_challenge = NickAuthChallenge::new(&[0x33; 32], directory_id());
        let other_directory = NickAuthChallenge::new(
            &CHALLENGE,
            DirectoryId::parse("test:other-directory").unwrap(),
        );
        for (challenge, line) in [
            (&other_challenge, HANDSHAKE_LINE),
            (&other_directory, HANDSHAKE_LINE),
            (&challenge(), &format!("{HANDSHAKE_LINE} ")[..]),
        ] {
            assert_eq!(
                proof.verify(challenge, line, identity.nick()),
                Err(SignatureError::BadSignature)
            );
        }
        let stranger = NickIdentity::from_secret_bytes(&[0x12; 32]).unwrap();
        assert!(matches!(
            proof.verify(&challenge(), HANDSHAKE_LINE, stranger.nick()),
            Err(SignatureError::NickMismatch { .. })
        ));
    }

    #[test]
    fn a_proof_is_not_a_private_message_signature() {
        // test_proof_does_not_verify_in_message_signature_domain.
        let identity = identity();
        let proof = NickAuthProof::create(&identity, &challenge(), HANDSHAKE_LINE).unwrap();
        let mut message = transcript(
            &challenge(),
            HANDSHAKE_LINE,
            identity.nick(),
            identity.public_key(),
        );
        message.truncate(message.len() - NICK_AUTH_DOMAIN.len());
        message.extend_from_slice(super::super::nick_key::ONION_HOSTID.as_bytes());
        let der = decode_signature(proof.signature_base64()).unwrap();
        assert_eq!(
            verify_der(identity.public_key(), &message, &der),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn a_tampered_signature_does_not_verify() {
        // test_verification_rejects_tampered_signature.
        let identity = identity();
        let proof = NickAuthProof::create(&identity, &challenge(), HANDSHAKE_LINE).unwrap();
        let mut der = decode_signature(proof.signature_base64()).unwrap();
        *der.last_mut().unwrap() ^= 1;
        let tampered = NickAuthProof {
            signature: BASE64.encode(&der),
            ..proof
        };
        assert_eq!(
            tampered.verify(&challenge(), HANDSHAKE_LINE, identity.nick()),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn payloads_round_trip_with_their_wire_names() {
        // test_payload_models_roundtrip_wire_aliases.
        let challenge = challenge();
        assert_eq!(
            challenge.to_line(),
            format!(
                r#"{{"challenge":"{}","directory-id":"{DIRECTORY_HOST}:5222"}}"#,
                "22".repeat(32)
            )
        );
        assert_eq!(
            NickAuthChallenge::parse(&challenge.to_line()).unwrap(),
            challenge
        );
        for code in NickAuthCode::ALL {
            let result = NickAuthResult::new(code);
            assert_eq!(NickAuthResult::parse(&result.to_line()).unwrap(), result);
        }
        assert_eq!(
            NickAuthResult::new(NickAuthCode::Ok).to_line(),
            r#"{"code":"ok","verified":true}"#
        );
    }

    #[test]
    fn strict_json_extra_fields_and_coercion_are_refused() {
        // test_strict_json_rejects_duplicates_non_finite_and_non_objects,
        // test_payload_models_reject_extra_fields_and_type_coercion.
        let c = "22".repeat(32);
        for line in [
            format!(r#"{{"challenge":"{c}","challenge":"{c}","directory-id":"test:directory-a"}}"#),
            format!(r#"{{"challenge":"{c}","directory-id":"test:directory-a","value":NaN}}"#),
            format!(r#"{{"challenge":"{c}","directory-id":"test:directory-a","value":Infinity}}"#),
            "[]".to_owned(),
            format!(r#"{{"challenge":"{c}","directory-id":"test:directory-a","extra":"x"}}"#),
            format!(r#"{{"challenge":"{c}","directory_id":"test:directory-a"}}"#),
            format!(
                r#"{{"challenge":"{}","directory-id":"test:directory-a"}}"#,
                "AA".repeat(32)
            ),
            format!(r#"{{"challenge":"{c}","directory-id":"UPPER"}}"#),
            format!(r#"{{"challenge":"{c}","directory-id":7}}"#),
        ] {
            assert!(
                matches!(
                    NickAuthChallenge::parse(&line),
                    Err(NickAuthError::Malformed {
                        message: NickAuthMessage::Challenge,
                        ..
                    })
                ),
                "{line}"
            );
        }
        for line in [
            r#"{"code":"ok","verified":1}"#,
            r#"{"code":"invalid","verified":true}"#,
            r#"{"code":"ok","verified":false}"#,
            r#"{"code":"unknown","verified":false}"#,
            r#"{"code":"ok"}"#,
        ] {
            assert!(NickAuthResult::parse(line).is_err(), "{line}");
        }
    }

    #[test]
    fn proofs_with_non_canonical_encodings_are_refused() {
        // test_proof_rejects_noncanonical_encodings.
        let good = NickAuthProof::create(&identity(), &challenge(), HANDSHAKE_LINE).unwrap();
        let signature = good.signature_base64();
        let der = decode_signature(signature).unwrap();
        let mut trailing = der.clone();
        trailing.push(0);
        trailing[1] += 1;
        let mut padded_r = der.clone();
        // r with a needless leading zero: length + 1, a 0x00 inserted.
        padded_r.insert(4, 0);
        padded_r[3] += 1;
        padded_r[1] += 1;
        let unpadded = signature.trim_end_matches('=');
        for (pubkey, signature) in [
            (format!("02{}", "AA".repeat(32)), signature.to_owned()),
            (format!("04{}", "11".repeat(32)), signature.to_owned()),
            (NG_PUBKEY.to_uppercase(), signature.to_owned()),
            (NG_PUBKEY.to_owned(), "not base64".to_owned()),
            (NG_PUBKEY.to_owned(), BASE64.encode([0x30, 0x00])),
            (NG_PUBKEY.to_owned(), unpadded.to_owned()),
            (NG_PUBKEY.to_owned(), BASE64.encode(&trailing)),
            (NG_PUBKEY.to_owned(), BASE64.encode(&padded_r)),
        ] {
            let line = json!({"pubkey": pubkey, "signature": signature}).to_string();
            assert!(
                matches!(
                    NickAuthProof::parse(&line),
                    Err(NickAuthError::Malformed {
                        message: NickAuthMessage::Proof,
                        ..
                    })
                ),
                "{line}"
            );
        }
    }

    #[test]
    fn strict_der_bounds_r_and_s_by_the_order() {
        let mut order_as_r = vec![0x02, 33, 0];
        order_as_r.extend(ORDER);
        let s = [0x02, 1, 1];
        let mut der = vec![0x30, u8::try_from(order_as_r.len() + s.len()).unwrap()];
        der.extend(&order_as_r);
        der.extend(s);
        assert!(!is_strict_der(&der));
        // n - 1 is in range.
        let last = der.len() - 4;
        der[last] -= 1;
        assert!(is_strict_der(&der));
        assert!(!is_strict_der(&[0x30, 6, 0x02, 1, 0, 0x02, 1, 1]), "r = 0");
    }

    #[test]
    fn strict_der_refuses_each_broken_field() {
        // r = s = 1: the shortest strict signature.
        let good = [0x30, 6, 0x02, 1, 1, 0x02, 1, 1];
        assert!(is_strict_der(&good));
        for (index, value, what) in [
            (0, 0x31, "not a SEQUENCE"),
            (1, 7, "a SEQUENCE length that is not the rest"),
            (2, 0x03, "r not an INTEGER"),
            (5, 0x03, "s not an INTEGER"),
        ] {
            let mut broken = good;
            broken[index] = value;
            assert!(!is_strict_der(&broken), "{what}");
        }
        // An empty r, the SEQUENCE's length still right.
        assert!(!is_strict_der(&[0x30, 6, 0x02, 0, 0x02, 1, 1, 0]));
    }

    #[test]
    fn a_compressed_prefix_off_the_curve_is_no_public_key() {
        // Some x has no y on the curve; find one rather than trust a constant.
        let off_curve = (0u8..=255)
            .map(|x| format!("02{}{x:02x}", "00".repeat(31)))
            .find(|text| {
                let bytes: Vec<u8> = (0..33)
                    .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
                    .collect();
                k256::ecdsa::VerifyingKey::from_sec1_bytes(&bytes).is_err()
            })
            .unwrap();
        assert_eq!(parse_public_key(&off_curve), None);
        assert_eq!(
            parse_public_key(NG_PUBKEY).map(|key| hex(&key)),
            Some(NG_PUBKEY.to_owned())
        );
    }

    #[test]
    fn directory_ids_follow_ngs_grammar_and_endpoints() {
        // test_directory_ids_accept_spec_grammar and _reject_values_outside_spec_grammar.
        for good in [
            &format!("{DIRECTORY_HOST}:5222")[..],
            "test:directory-a",
            "directory.example:5222",
            "vpn_directory-1",
        ] {
            assert_eq!(DirectoryId::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "UPPERCASE",
            ".directory",
            ":directory",
            "_directory",
            "-directory",
            "bad|id",
            "bad id",
            "non-ascii-\u{e9}",
        ] {
            assert!(DirectoryId::parse(bad).is_err(), "{bad:?}");
        }
        // test_directory_endpoint_ids_are_canonical and _reject_malformed_or_public_values.
        let onion = ServerAddr::parse(&DIRECTORY_HOST.to_uppercase()).unwrap();
        assert_eq!(DirectoryId::for_endpoint(&onion), Some(directory_id()));
        for host in ["localhost:1234", "127.0.0.1:1234", "example.com", "8.8.8.8"] {
            assert_eq!(
                DirectoryId::for_endpoint(&ServerAddr::parse(host).unwrap()),
                None
            );
        }
    }

    /// The line a client answers with, as the directory reads it (no
    /// terminator).
    fn answer(kind: u32, line: &str) -> String {
        let bytes = Envelope::new(kind, line).encode().unwrap();
        String::from_utf8(bytes).unwrap().trim_end().to_owned()
    }

    #[test]
    fn a_directory_judges_the_answer_as_ng_does() {
        // ng `server.py`, `_perform_nick_auth`: malformed unless a strict 805
        // whose proof parses, invalid unless it verifies, else ok.
        let identity = identity();
        let nick = identity.nick().as_str();
        let proof = NickAuthProof::create(&identity, &challenge(), HANDSHAKE_LINE).unwrap();
        let good = answer(wire::NICK_AUTH_PROOF, &proof.to_line());
        assert_eq!(
            judge_answer(&challenge(), HANDSHAKE_LINE, nick, &good),
            NickAuthCode::Ok
        );
        for malformed in [
            answer(wire::NICK_AUTH_CHALLENGE, &proof.to_line()),
            answer(wire::NICK_AUTH_PROOF, r#"{"pubkey":"02","signature":""}"#),
            proof.to_line(),
            "not json".to_owned(),
        ] {
            assert_eq!(
                judge_answer(&challenge(), HANDSHAKE_LINE, nick, &malformed),
                NickAuthCode::Malformed,
                "{malformed}"
            );
        }
        let stranger = NickIdentity::from_secret_bytes(&[0x12; 32]).unwrap();
        let other_challenge = NickAuthChallenge::new(&[0x33; 32], directory_id());
        for (challenge, line, nick) in [
            (challenge(), HANDSHAKE_LINE, stranger.nick().as_str()),
            (challenge(), HANDSHAKE_LINE, "not a nick"),
            (other_challenge, HANDSHAKE_LINE, nick),
            (challenge(), "{}", nick),
        ] {
            assert_eq!(
                judge_answer(&challenge, line, nick, &good),
                NickAuthCode::Invalid,
                "{nick} {line}"
            );
        }
    }

    #[test]
    fn only_verified_is_verified() {
        assert!(NickAuthStatus::Verified.is_verified());
        for status in [
            NickAuthStatus::NotOffered,
            NickAuthStatus::NoDirectoryId,
            NickAuthStatus::Disabled,
        ] {
            assert!(!status.is_verified(), "{status:?}");
        }
    }

    #[test]
    fn messages_codes_and_ids_print_their_wire_names() {
        for (message, kind, text) in [
            (NickAuthMessage::Challenge, 803, "challenge (803)"),
            (NickAuthMessage::Proof, 805, "proof (805)"),
            (NickAuthMessage::Result, 807, "result (807)"),
        ] {
            assert_eq!(message.kind(), kind);
            assert_eq!(message.to_string(), text);
        }
        let codes: Vec<String> = NickAuthCode::ALL.iter().map(|c| c.to_string()).collect();
        assert_eq!(codes, ["ok", "malformed", "expired", "invalid", "policy"]);
        let id = DirectoryId::parse("test:directory-a").unwrap();
        assert_eq!(id.to_string(), "test:directory-a");
        assert_eq!(format!("{id:?}"), "DirectoryId(test:directory-a)");
        let challenge = challenge();
        assert_eq!(challenge.challenge(), "22".repeat(32));
        assert_eq!(challenge.directory_id(), &directory_id());
    }

    #[test]
    fn modes_have_ngs_names() {
        for mode in [
            NickAuthMode::Disabled,
            NickAuthMode::PreferVerified,
            NickAuthMode::RequireVerified,
        ] {
            assert_eq!(mode.as_str().parse::<NickAuthMode>().unwrap(), mode);
            assert_eq!(mode.to_string(), mode.as_str());
        }
        assert_eq!(
            NickAuthMode::RequireVerified.to_string(),
            "require_verified"
        );
        assert_eq!(NickAuthMode::default(), NickAuthMode::PreferVerified);
        assert!("prefer".parse::<NickAuthMode>().is_err());
    }
}
