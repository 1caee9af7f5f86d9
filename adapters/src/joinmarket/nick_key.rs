//! Nick keys and signed private messages.
//!
//! A JoinMarket nick is backed by a secp256k1 key: the nick is derived from
//! the compressed public key ([`Nick::from_public_key`], as joinmarket-ng's
//! `nick_from_pubkey_hex` in `jmcore/src/jmcore/crypto.py` does), and every
//! private message carries the sender's public key and a signature, so a
//! receiver can tell that the sender holds the key its nick names.
//!
//! # What is signed
//!
//! As joinmarket-ng (`crypto.py`, `NickIdentity.sign_message` and
//! `verify_signed_privmsg`; `jmcore/src/jmcore/directory_client.py`,
//! `send_private_message`) and the reference (`src/jmdaemon/message_channel.py`,
//! `prepare_privmsg` and the check in `on_privmsg`) do:
//! - the signed text is the body without its leading `!` and without its
//!   first space-separated field (the command name), followed by the host
//!   id [`ONION_HOSTID`] (`onion-network`, fixed for every onion directory:
//!   reference `src/jmdaemon/onionmc.py`, joinmarket-ng `network.py`). For
//!   `!fill 0 1000000 abc` that is `0 1000000 abconion-network`; for a body
//!   of several commands everything after the first space, the later
//!   commands included;
//! - the hash is Bitcoin's message hash: double SHA-256 of
//!   `"\x18Bitcoin Signed Message:\n"`, the text's UTF-8 length as a Bitcoin
//!   varint and the text;
//! - the signature is ECDSA over that hash with RFC 6979 nonces, low S, DER
//!   encoded, then base64 (coincurve's `sign(hash, hasher=None)` in
//!   joinmarket-ng; `CKey.sign` over libsecp256k1 in the reference). The
//!   same key and text therefore give the same signature here as there.
//!
//! Verifying ([`PrivateMessage::verify`]) checks both things joinmarket-ng's
//! `verify_signed_privmsg` checks: the public key's nick is the sender, and
//! the signature verifies. As libsecp256k1 does, a high-S signature and a
//! signature that is not strict DER are refused. A body with no arguments
//! (`!orderbook`) signs the host id alone: joinmarket-ng accepts that, the
//! reference ignores such a message (`on_privmsg`, "zero message after cmd
//! not allowed").
//!
//! # Crate choice
//!
//! The curve arithmetic is RustCrypto's `k256` (pure Rust, audited by NCC
//! Group), not the `secp256k1` bindings to the C libsecp256k1 that
//! joinmarket-ng and the reference use. Both are well kept and both give
//! the same bytes for the same key and hash (RFC 6979, low S, DER), which
//! the tests check against joinmarket-ng's vectors. `k256` was chosen
//! because its secret key type wipes itself: its `SigningKey` zeroizes the
//! scalar on drop (it implements `ZeroizeOnDrop`), where `secp256k1`'s
//! `SecretKey` is a plain copyable array that only offers a best-effort
//! `non_secure_erase`; and it needs no C compiler to build.
//!
//! This module is private: [`NickIdentity`] carries the public summary of
//! what is said here.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use k256::ecdsa::{Signature, SigningKey, VerifyingKey};
use k256::elliptic_curve::zeroize::Zeroizing;
use sha2::{Digest, Sha256};

use super::identity::Nick;
use super::lines::{LineError, PrivateMessage, PrivmsgSignature};

/// The host id every onion message channel appends to the text it signs
/// (reference `src/jmdaemon/onionmc.py`; joinmarket-ng
/// `jmcore/src/jmcore/network.py`, `ONION_HOSTID`).
pub const ONION_HOSTID: &str = "onion-network";

/// The length of a secp256k1 secret key.
pub const SECRET_KEY_LEN: usize = 32;

/// How many 32-byte draws [`NickIdentity::random`] makes before giving up;
/// a draw is out of range with probability below 2^-127.
const RANDOM_DRAWS: usize = 4;

/// Why a [`NickIdentity`] could not be made or could not sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NickKeyError {
    /// The secret bytes are zero or not below the curve order.
    #[error("the secret is not a valid secp256k1 key (zero or not below the curve order)")]
    InvalidSecretKey,
    /// The OS gave no randomness.
    #[error("the OS gave no randomness for a nick key")]
    Randomness(#[source] getrandom::Error),
    /// ECDSA signing failed (it does not for a valid key and a 32-byte hash).
    #[error("ECDSA signing failed")]
    Signing,
    /// The body is not a private message that can be sent.
    #[error("the signed private message cannot be built")]
    Message(#[from] LineError),
}

/// Why a private message's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The message carries no signature.
    #[error("the private message is not signed")]
    Unsigned,
    /// The signing key's nick is not the sender's.
    #[error("signed by the key of {signer}, not of the sender {from}")]
    NickMismatch {
        /// The sender the message names.
        from: Nick,
        /// The nick of the key that signed.
        signer: Nick,
    },
    /// The public key is not a point on secp256k1.
    #[error("the public key is not a secp256k1 point")]
    InvalidPublicKey,
    /// The signature is not base64 of a strict DER ECDSA signature in range.
    #[error("the signature is not a strict DER ECDSA signature")]
    MalformedSignature,
    /// The signature has a high S value, which libsecp256k1 (and so every
    /// other implementation) refuses.
    #[error("the signature is not in low-S form")]
    HighS,
    /// The signature does not verify for this key and text.
    #[error("the signature does not verify")]
    BadSignature,
}

/// A secp256k1 key pair and the nick derived from it, as joinmarket-ng
/// derives it (`nick_from_pubkey_hex`, `jmcore/src/jmcore/crypto.py`; here
/// [`Nick::from_public_key`]).
///
/// [`NickIdentity::sign_private`] signs private messages exactly as
/// joinmarket-ng and the reference do: the body after its command name,
/// followed by [`ONION_HOSTID`], hashed as a Bitcoin signed message
/// (double SHA-256 with the `"\x18Bitcoin Signed Message:\n"` prefix and a
/// varint length), signed with ECDSA (RFC 6979 nonces, low S), DER, base64.
/// [`PrivateMessage::verify`] checks such a signature and that the key's
/// nick is the sender.
///
/// The secret is never shown: `Debug` prints the nick and public key only,
/// and there is no `Display`. It is held in RustCrypto `k256`'s
/// `SigningKey`, which zeroizes it on drop (`ZeroizeOnDrop`); `k256` was
/// chosen over the `secp256k1` C bindings for that (their `SecretKey` is a
/// plain copyable array) and for needing no C compiler. Both give the same
/// signatures; the tests check ours against joinmarket-ng's.
///
/// ```
/// use dirpool::joinmarket::{NickIdentity, PrivateMessage};
///
/// let maker = NickIdentity::random()?;
/// let taker = NickIdentity::random()?;
/// let message = taker.sign_private(maker.nick().clone(), "!fill 0 1000000 abc")?;
/// let received = PrivateMessage::parse(&message.to_line())?;
/// let verified = received.verify()?;
/// assert_eq!(verified.sender(), taker.nick());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct NickIdentity {
    signing_key: SigningKey,
    public_key: [u8; 33],
    nick: Nick,
}

impl NickIdentity {
    /// A fresh key from OS randomness.
    ///
    /// # Errors
    /// [`NickKeyError::Randomness`] when the OS gives no randomness;
    /// [`NickKeyError::InvalidSecretKey`] if every draw was out of range
    /// (probability below 2^-500).
    pub fn random() -> Result<Self, NickKeyError> {
        let mut secret = Zeroizing::new([0u8; SECRET_KEY_LEN]);
        for _ in 0..RANDOM_DRAWS {
            getrandom::fill(secret.as_mut()).map_err(NickKeyError::Randomness)?;
            match Self::from_secret_bytes(&secret) {
                Err(NickKeyError::InvalidSecretKey) => continue,
                result => return result,
            }
        }
        Err(NickKeyError::InvalidSecretKey)
    }

    /// The key with these secret bytes (big-endian scalar), as joinmarket-ng
    /// takes `private_key_bytes`. The caller's buffer is not wiped.
    ///
    /// # Errors
    /// [`NickKeyError::InvalidSecretKey`] for zero or a value not below the
    /// curve order.
    pub fn from_secret_bytes(secret: &[u8; SECRET_KEY_LEN]) -> Result<Self, NickKeyError> {
        let signing_key =
            SigningKey::from_slice(secret).map_err(|_| NickKeyError::InvalidSecretKey)?;
        let point = signing_key.verifying_key().to_encoded_point(true);
        let public_key: [u8; 33] = point
            .as_bytes()
            .try_into()
            .map_err(|_| NickKeyError::InvalidSecretKey)?;
        let nick =
            Nick::from_public_key(&public_key).map_err(|_| NickKeyError::InvalidSecretKey)?;
        Ok(Self {
            signing_key,
            public_key,
            nick,
        })
    }

    /// The nick this key backs.
    pub fn nick(&self) -> &Nick {
        &self.nick
    }

    /// The compressed public key.
    pub fn public_key(&self) -> &[u8; 33] {
        &self.public_key
    }

    /// A private message from this identity's nick to `to`, signed as
    /// joinmarket-ng and the reference sign (see [`NickIdentity`]).
    ///
    /// # Errors
    /// [`NickKeyError::Message`] when [`PrivateMessage::signed`] refuses the
    /// body (not commands, or too long to send); [`NickKeyError::Signing`]
    /// if ECDSA fails.
    pub fn sign_private(
        &self,
        to: Nick,
        body: impl Into<String>,
    ) -> Result<PrivateMessage, NickKeyError> {
        let body = body.into();
        let signature = self.sign_text(privmsg_signed_text(&body).as_bytes())?;
        let signature = PrivmsgSignature::new(self.public_key, &signature)?;
        Ok(PrivateMessage::signed(
            self.nick.clone(),
            to,
            body,
            signature,
        )?)
    }

    /// Base64 of the DER signature over the Bitcoin message hash of
    /// `message` (joinmarket-ng `NickIdentity.sign_bytes`).
    pub(super) fn sign_text(&self, message: &[u8]) -> Result<String, NickKeyError> {
        let signature: Signature = self
            .signing_key
            .sign_prehash(&bitcoin_message_hash(message))
            .map_err(|_| NickKeyError::Signing)?;
        Ok(BASE64.encode(signature.to_der().as_bytes()))
    }
}

/// Two identities are equal when their public keys are (and so their
/// secrets and nicks).
impl PartialEq for NickIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.public_key == other.public_key
    }
}

impl Eq for NickIdentity {}

/// The nick and public key; never the secret.
impl fmt::Debug for NickIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NickIdentity")
            .field("nick", &self.nick)
            .field("public_key", &HexKey(&self.public_key))
            .finish_non_exhaustive()
    }
}

struct HexKey<'a>(&'a [u8; 33]);

impl fmt::Debug for HexKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

/// A private message whose signature verified and whose signing key's nick
/// is its sender; made only by [`PrivateMessage::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPrivateMessage {
    message: PrivateMessage,
}

impl VerifiedPrivateMessage {
    /// The sender, proven to hold the key its nick derives from.
    pub fn sender(&self) -> &Nick {
        self.message.from()
    }

    /// The message.
    pub fn message(&self) -> &PrivateMessage {
        &self.message
    }

    /// The message, giving up the proof.
    pub fn into_message(self) -> PrivateMessage {
        self.message
    }
}

impl PrivateMessage {
    /// Checks the appended signature as joinmarket-ng's
    /// `verify_signed_privmsg` does: the key's nick must be the sender and
    /// the signature must verify over the signed text (see
    /// [`NickIdentity`]). A high-S or non-strict-DER signature is refused,
    /// as libsecp256k1 refuses it.
    ///
    /// # Errors
    /// [`SignatureError::Unsigned`] without a signature;
    /// [`SignatureError::NickMismatch`] when the key's nick is not
    /// [`Self::from`]; otherwise as the signature check fails.
    pub fn verify(&self) -> Result<VerifiedPrivateMessage, SignatureError> {
        let signature = self.signature().ok_or(SignatureError::Unsigned)?;
        let signer = signature.nick();
        if &signer != self.from() {
            return Err(SignatureError::NickMismatch {
                from: self.from().clone(),
                signer,
            });
        }
        verify_text(
            signature.public_key(),
            privmsg_signed_text(self.body()).as_bytes(),
            signature.signature_base64(),
        )?;
        Ok(VerifiedPrivateMessage {
            message: self.clone(),
        })
    }
}

/// The text a private message's signature covers: the body after its
/// command name and the space that follows it, then [`ONION_HOSTID`]
/// (joinmarket-ng `verify_signed_privmsg`: `" ".join(tokens[1:-2])`).
fn privmsg_signed_text(body: &str) -> String {
    let commands = body.strip_prefix('!').unwrap_or(body);
    let data = commands.split_once(' ').map_or("", |(_, data)| data);
    format!("{data}{ONION_HOSTID}")
}

/// Bitcoin's message hash: `sha256d("\x18Bitcoin Signed Message:\n" ||
/// varint(len) || message)` (joinmarket-ng `bitcoin_message_hash_bytes`).
fn bitcoin_message_hash(message: &[u8]) -> [u8; 32] {
    const PREFIX: &[u8] = b"\x18Bitcoin Signed Message:\n";
    let mut hasher = Sha256::new();
    hasher.update(PREFIX);
    let len = message.len();
    if len < 0xfd {
        hasher.update([len.to_le_bytes()[0]]);
    } else if let Ok(len) = u16::try_from(len) {
        hasher.update([0xfd]);
        hasher.update(len.to_le_bytes());
    } else if let Ok(len) = u32::try_from(len) {
        hasher.update([0xfe]);
        hasher.update(len.to_le_bytes());
    } else {
        hasher.update([0xff]);
        hasher.update((len as u64).to_le_bytes());
    }
    hasher.update(message);
    Sha256::digest(hasher.finalize()).into()
}

/// Verifies base64 `signature` (strict DER, low S) by `public_key` over the
/// Bitcoin message hash of `message`.
fn verify_text(
    public_key: &[u8; 33],
    message: &[u8],
    signature: &str,
) -> Result<(), SignatureError> {
    let der = BASE64
        .decode(signature)
        .map_err(|_| SignatureError::MalformedSignature)?;
    verify_der(public_key, message, &der)
}

/// Verifies the DER signature `der` (low S) by `public_key` over the
/// Bitcoin message hash of `message`.
pub(super) fn verify_der(
    public_key: &[u8; 33],
    message: &[u8],
    der: &[u8],
) -> Result<(), SignatureError> {
    let key =
        VerifyingKey::from_sec1_bytes(public_key).map_err(|_| SignatureError::InvalidPublicKey)?;
    let signature = Signature::from_der(der).map_err(|_| SignatureError::MalformedSignature)?;
    // libsecp256k1's verify refuses high S; k256's may not, so say it here.
    if signature.normalize_s().is_some() {
        return Err(SignatureError::HighS);
    }
    key.verify_prehash(&bitcoin_message_hash(message), &signature)
        .map_err(|_| SignatureError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// joinmarket-ng `jmcore/tests/test_nick_auth.py`: `PRIVATE_KEY` and
    /// the public key `test_create_and_verify_deterministic_proof` expects.
    const NG_SECRET: [u8; 32] = [0x11; 32];
    const NG_PUBKEY: &str = "034f355bdcb7cc0af728ef3cceb9615d90684bb5b2ca5f859ab0f0b704075871aa";

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn to_hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn key(text: &str) -> [u8; 33] {
        hex(text).try_into().unwrap()
    }

    fn ng_identity() -> NickIdentity {
        NickIdentity::from_secret_bytes(&NG_SECRET).unwrap()
    }

    #[test]
    fn ng_secret_gives_ng_public_key_and_its_nick() {
        let identity = ng_identity();
        assert_eq!(to_hex(identity.public_key()), NG_PUBKEY);
        assert_eq!(
            identity.nick(),
            &Nick::from_public_key(&key(NG_PUBKEY)).unwrap()
        );
    }

    #[test]
    fn signs_byte_for_byte_as_ng() {
        // joinmarket-ng jmcore/tests/test_nick_auth.py,
        // test_create_and_verify_deterministic_proof: the JMP-0005
        // transcript (jmcore/src/jmcore/nick_auth.py,
        // build_nick_auth_signed_message) signed with sign_bytes, the same
        // hash and encoding as private messages. The transcript is over 253
        // bytes, so the three-byte varint is covered too.
        let identity = ng_identity();
        let handshake = r#"{"nick":"J5example","features":{"nick_auth":true}}"#;
        let handshake_sha256 = to_hex(&Sha256::digest(handshake.as_bytes()));
        let transcript = format!(
            "nick-auth|{}|{}|{handshake_sha256}|{}|{NG_PUBKEY}nick-auth-v1",
            "22".repeat(32),
            "nakamotourflxwjnjpnrk7yc2nhkf6r62ed4gdfxmmn5f4saw5q5qoyd.onion:5222",
            identity.nick(),
        );
        assert!(transcript.len() >= 0xfd);
        let expected = "MEQCIDTAF2VwsN1hK3n+Hc2iGt2xkhURfTfCiJnM4myGM6T2\
                        AiAbXU8Kl5f16SwddktRYcl+gLHt5zS1nY7eLSi61e1g6w==";
        let signature = identity.sign_text(transcript.as_bytes()).unwrap();
        assert_eq!(signature, expected);
        assert_eq!(
            verify_text(identity.public_key(), transcript.as_bytes(), expected),
            Ok(())
        );
        let mut other = transcript.into_bytes();
        other.pop();
        assert_eq!(
            verify_text(identity.public_key(), &other, expected),
            Err(SignatureError::BadSignature)
        );
    }

    /// The three fidelity-bond proofs of joinmarket-ng
    /// `jmcore/tests/test_crypto.py` (`test_verify_fidelity_bond_proof_reference_vectors`,
    /// `_vector_2`, `_vector_3`, taken there from the reference's
    /// `test/jmdaemon/test_orderbookwatch.py`): signatures made by the
    /// reference's libsecp256k1 over Bitcoin message hashes.
    /// (nick signature, certificate signature, certificate key, utxo key, maker)
    const REFERENCE_BONDS: [(&str, &str, &str, &str, &str); 3] = [
        (
            "3045022100db621596a087b81de035dd56a11b6e8f7190268c4740892232b2819bc030a5b6022003146cd74252ba8c3a88288e336cacf5605487faf5a91f19c0b6e9bbdcc77999",
            "3045022100eb512af938113badb4d7b29e0c22061c51dadb113a9395e9ed81a46103391213022029170de414964f07228c4f0d404b1386272bae337f0133f1329d948a252fa2a0",
            "0258efb077960d6848f001904857f062fa453de26c1ad8736f55497254f56e8a74",
            "02f54f027377e84171296453828aa863c23fc4489453025f49bd3addfb3a359b3d",
            "J5A4k9ecQzRRDfBx",
        ),
        (
            "304502210080c6240ca1155953ac4842b333fa7e9fb960b3feed30ad4871c17e032e42bb23022023797e5dd9bb5832c01be537f40f1fd62401f9155ac958a518be831a263459d4",
            "304402205669ea394f7381e9abf0b3c013fac2b79d24c02feb86ff153cff83c658d7cf7402200b295ace655687f80738f3733c1dc5f1e2b8f351c017a05b8bd31983dd4d723f",
            "031d1c006a6310dbdf57341efc19c3a43c402379d7ccd2480416cadc7579f973f7",
            "02616c56412eb738a9eacfb0550b43a5a2e77e5d5205ea9e2ca8dfac34e50c9754",
            "J54LS6YyJPoseqFS",
        ),
        (
            "304402204b29e917640bc08228d1a22a6cd80e4ac7014e56bfcb024f5dc01101014222ed02206f62a1f83e805529c896861b200e002ef8867dcdf88254a2b58a34db34bef37b",
            "3045022100d3beb5660bef33d095f92a3023bbbab15ece48ab2f211fa935b62fe8b764c8c002204892deffb4c9aa0d734aa3f55cc8e2baae4a03fc5a9e571b4f671493f1254df9",
            "03a2d1d15290d6d21204d1153c062970b4ff757a675e47a451fd0ba5c084127807",
            "03b9c12c9c31286772349b986653d07232327b284bd0787ad5829a04ac68f59b89",
            "J59PRzM6ZsdA5uyJ",
        ),
    ];
    const REFERENCE_TAKER: &str = "J55VZ6U6ZyFDNeuv";

    #[test]
    fn verifies_signatures_made_by_the_reference() {
        for (nick_sig, cert_sig, cert_pub, utxo_pub, maker) in REFERENCE_BONDS {
            let nick_sig = BASE64.encode(hex(nick_sig));
            let cert_sig = BASE64.encode(hex(cert_sig));
            let signed_nicks = format!("{REFERENCE_TAKER}|{maker}");
            assert_eq!(
                verify_text(&key(cert_pub), signed_nicks.as_bytes(), &nick_sig),
                Ok(())
            );
            let swapped = format!("{maker}|{REFERENCE_TAKER}");
            assert_eq!(
                verify_text(&key(cert_pub), swapped.as_bytes(), &nick_sig),
                Err(SignatureError::BadSignature)
            );
            // The certificate message in its binary form (crypto.py,
            // get_cert_msg): the raw key, expiry 1.
            let mut cert_msg = b"fidelity-bond-cert|".to_vec();
            cert_msg.extend(hex(cert_pub));
            cert_msg.extend(b"|1");
            assert_eq!(verify_text(&key(utxo_pub), &cert_msg, &cert_sig), Ok(()));
            assert_eq!(
                verify_text(&key(cert_pub), &cert_msg, &cert_sig),
                Err(SignatureError::BadSignature)
            );
        }
    }

    fn peer() -> Nick {
        NickIdentity::random().unwrap().nick().clone()
    }

    #[test]
    fn a_signed_private_message_round_trips_and_verifies() {
        let identity = NickIdentity::random().unwrap();
        let to = peer();
        let body =
            "!fill 0 1000000 5fb2ab76ed9bda034b192c48c7069359252fccda168d925acc0ae7d316c0b53e";
        let message = identity.sign_private(to.clone(), body).unwrap();
        assert_eq!(message.from(), identity.nick());
        assert_eq!(message.to(), &to);
        assert_eq!(message.body(), body);
        let signature = message.signature().unwrap();
        assert_eq!(signature.public_key(), identity.public_key());
        let parsed = PrivateMessage::parse(&message.to_line()).unwrap();
        assert_eq!(parsed, message);
        let verified = parsed.verify().unwrap();
        assert_eq!(verified.sender(), identity.nick());
        assert_eq!(verified.message(), &message);
        assert_eq!(verified.into_message(), message);
    }

    #[test]
    fn the_signature_covers_the_arguments_and_the_host_id() {
        // A maker's private offer reply: several commands in one body; the
        // signature covers everything after the first command's name.
        let identity = ng_identity();
        let body = "!sw0reloffer 0 27300 9000000 0 0.00002!sw0absoffer 1 27300 9000000 0 250";
        let message = identity.sign_private(peer(), body).unwrap();
        let signature = message.signature().unwrap().signature_base64();
        let text = "0 27300 9000000 0 0.00002!sw0absoffer 1 27300 9000000 0 250onion-network";
        assert_eq!(
            verify_text(identity.public_key(), text.as_bytes(), signature),
            Ok(())
        );
        // Deterministic (RFC 6979), as coincurve's signatures are.
        assert_eq!(identity.sign_text(text.as_bytes()).unwrap(), signature);
        // Without the host id it is another text.
        let bare = text.strip_suffix(ONION_HOSTID).unwrap();
        assert_eq!(
            verify_text(identity.public_key(), bare.as_bytes(), signature),
            Err(SignatureError::BadSignature)
        );
        // A body without arguments signs the host id alone.
        let message = identity.sign_private(peer(), "!orderbook").unwrap();
        let signature = message.signature().unwrap().signature_base64();
        assert_eq!(
            verify_text(identity.public_key(), ONION_HOSTID.as_bytes(), signature),
            Ok(())
        );
        assert!(message.verify().is_ok());
    }

    #[test]
    fn a_tampered_body_does_not_verify() {
        let identity = NickIdentity::random().unwrap();
        let message = identity
            .sign_private(peer(), "!fill 0 1000000 abc")
            .unwrap();
        let line = message.to_line().replacen("1000000", "1000001", 1);
        assert_eq!(
            PrivateMessage::parse(&line).unwrap().verify(),
            Err(SignatureError::BadSignature)
        );
        // The command name is not signed (as in joinmarket-ng and the
        // reference): renaming it keeps the signature valid.
        let line = message.to_line().replacen("!fill ", "!auth ", 1);
        assert!(PrivateMessage::parse(&line).unwrap().verify().is_ok());
    }

    #[test]
    fn a_signature_by_another_key_does_not_verify() {
        let sender = NickIdentity::random().unwrap();
        let other = NickIdentity::random().unwrap();
        let to = peer();
        let body = "!fill 0 1000000 abc";
        let forged = other.sign_private(to.clone(), body).unwrap();
        let other_signature = forged.signature().unwrap().signature_base64();
        // The sender's key with the other key's signature.
        let claimed = PrivmsgSignature::new(*sender.public_key(), other_signature).unwrap();
        let message = PrivateMessage::signed(sender.nick().clone(), to.clone(), body, claimed);
        assert_eq!(message.unwrap().verify(), Err(SignatureError::BadSignature));
        // The other key and its valid signature, under the sender's nick.
        let signature = forged.signature().unwrap().clone();
        let message = PrivateMessage::signed(sender.nick().clone(), to, body, signature).unwrap();
        assert_eq!(
            message.verify(),
            Err(SignatureError::NickMismatch {
                from: sender.nick().clone(),
                signer: other.nick().clone(),
            })
        );
    }

    #[test]
    fn unsigned_malformed_and_high_s_signatures_are_refused() {
        let identity = ng_identity();
        let to = peer();
        let unsigned = PrivateMessage::new(identity.nick().clone(), to.clone(), "!fill 0 1 abc");
        assert_eq!(unsigned.unwrap().verify(), Err(SignatureError::Unsigned));

        let message = identity.sign_private(to.clone(), "!fill 0 1 abc").unwrap();
        let der = BASE64
            .decode(message.signature().unwrap().signature_base64())
            .unwrap();
        let signature = Signature::from_der(&der).unwrap();
        let resign = |text: &str| {
            let signature = PrivmsgSignature::new(*identity.public_key(), text).unwrap();
            PrivateMessage::signed(
                identity.nick().clone(),
                to.clone(),
                "!fill 0 1 abc",
                signature,
            )
            .unwrap()
            .verify()
        };
        // The same (r, n - s): valid ECDSA, but refused as libsecp256k1 does.
        let high = Signature::from_scalars(signature.r(), -*signature.s()).unwrap();
        assert_eq!(
            resign(&BASE64.encode(high.to_der().as_bytes())),
            Err(SignatureError::HighS)
        );
        // DER with a trailing byte; the raw 64-byte form; 8 bytes of junk.
        let mut trailing = der.clone();
        trailing.push(0);
        for bytes in [trailing, signature.to_bytes().to_vec(), vec![0x30; 8]] {
            assert_eq!(
                resign(&BASE64.encode(bytes)),
                Err(SignatureError::MalformedSignature)
            );
        }
    }

    /// The message length is a Bitcoin varint: one byte up to 252, then
    /// 0xfd and two bytes (hashes computed with Python's hashlib).
    #[test]
    fn the_message_hash_switches_to_a_three_byte_length_at_253() {
        for (len, hash) in [
            (
                252,
                "b7b164ef991d52735c6bb888642ad7eb6b6939dc984a7fceff4376be041d142f",
            ),
            (
                253,
                "df167ad249ff5837e6acada677118b2ecc6757ab4cdade39caead99ef0220230",
            ),
        ] {
            assert_eq!(
                to_hex(&bitcoin_message_hash(&vec![b'a'; len])),
                hash,
                "{len}"
            );
        }
    }

    #[test]
    fn a_key_off_the_curve_is_refused() {
        // Some x has no y on the curve; find one rather than trust a constant.
        let off_curve = (0u8..=255)
            .map(|x| {
                let mut key = [0u8; 33];
                key[0] = 0x02;
                key[32] = x;
                key
            })
            .find(|key| VerifyingKey::from_sec1_bytes(key).is_err())
            .unwrap();
        assert_eq!(
            verify_text(&off_curve, b"text", "MAYCAQECAQE="),
            Err(SignatureError::InvalidPublicKey)
        );
    }

    #[test]
    fn secrets_out_of_range_are_refused() {
        // The curve order n, n + 1, all ones, zero.
        let order = hex("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141");
        let mut above = order.clone();
        above[31] += 1;
        for secret in [order, above, vec![0xff; 32], vec![0; 32]] {
            let secret: [u8; 32] = secret.try_into().unwrap();
            assert!(matches!(
                NickIdentity::from_secret_bytes(&secret),
                Err(NickKeyError::InvalidSecretKey)
            ));
        }
        let mut below = hex("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364140");
        below.truncate(32);
        assert!(NickIdentity::from_secret_bytes(&below.try_into().unwrap()).is_ok());
    }

    #[test]
    fn random_identities_differ_and_hide_their_secret() {
        let first = NickIdentity::random().unwrap();
        let second = NickIdentity::random().unwrap();
        assert_ne!(first.nick(), second.nick());
        assert_ne!(first.public_key(), second.public_key());
        let identity = ng_identity();
        let debug = format!("{identity:?}");
        assert!(debug.contains(identity.nick().as_str()));
        assert!(debug.contains(NG_PUBKEY));
        assert!(!debug.contains(&"11".repeat(8)));
    }

    #[test]
    fn the_secret_is_wiped_on_drop() {
        fn zeroized_on_drop<T: k256::elliptic_curve::zeroize::ZeroizeOnDrop>() {}
        zeroized_on_drop::<SigningKey>();
    }
}
