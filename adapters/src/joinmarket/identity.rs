//! Who we say we are to a directory: nick, network, own location.

use std::fmt;
use std::str::FromStr;

use dirpool_core::{AddrError, ServerAddr};
use sha2::{Digest, Sha256};

const BASE58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
/// Characters after `J5`; the encoding is right-padded with `O`, which is
/// not a base58 letter.
const NICK_BODY_LEN: usize = 14;
/// Bytes the base58 part of a nick encodes at most (joinmarket-rs's
/// `NICK_HASH_LEN`).
const NICK_HASH_LEN: usize = 10;

/// A JoinMarket nick: `J5` and 14 characters, the base58 encoding of the
/// first 10 bytes of SHA-256 over the hex of the participant's compressed
/// public key, right-padded with `O`. Strict directories close the
/// connection on any other shape.
///
/// [`Nick::parse`] accepts exactly the nicks every current implementation
/// accepts:
///
/// | implementation | rule | file |
/// |---|---|---|
/// | joinmarket-ng | `J[0-9][1-9A-HJ-NP-Za-km-zO]{14}` (`O` anywhere, any version digit) | `jmcore/src/jmcore/nick_auth.py`, `_NICK_RE` |
/// | joinmarket-rs | 16 bytes, `J`, version `5`, the rest without its trailing `O`s base58 decoding to at most 10 bytes (leading `1`s are zero bytes) | `crates/joinmarket-core/src/nick.rs`, `Nick::from_str` |
/// | reference | no check of the shape on the onion channel | `src/jmdaemon/onionmc.py` |
///
/// so: `J5`, then base58 followed only by `O` padding, the base58 part
/// decoding to at most 10 bytes (as rs; ng's rule is wider).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nick(String);

/// Why a nick is not of the JoinMarket shape.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NickError {
    /// Not 16 characters.
    #[error("a nick has 16 characters, this one {0}")]
    WrongLength(usize),
    /// Does not start with `J5`.
    #[error("a nick starts with \"J5\"")]
    WrongPrefix,
    /// A character that is neither base58 nor trailing `O` padding.
    #[error("character {0:?} is not base58 (padding 'O' may only follow the encoding)")]
    InvalidCharacter(char),
    /// The base58 part encodes more than 10 bytes: joinmarket-rs refuses it
    /// (`crates/joinmarket-core/src/nick.rs`, `InvalidBase58`).
    #[error("the base58 part of a nick encodes at most 10 bytes")]
    HashTooLong,
    /// Not a 33-byte compressed public key.
    #[error("a compressed public key has 33 bytes starting with 0x02 or 0x03")]
    InvalidPublicKey,
}

impl Nick {
    /// Checks `text` has the JoinMarket shape.
    ///
    /// # Errors
    /// [`NickError`] saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, NickError> {
        let len = text.chars().count();
        if len != 2 + NICK_BODY_LEN {
            return Err(NickError::WrongLength(len));
        }
        let body = text.strip_prefix("J5").ok_or(NickError::WrongPrefix)?;
        let encoded = body.trim_end_matches('O');
        if let Some(bad) = encoded
            .chars()
            .find(|c| !c.is_ascii() || !BASE58.contains(&(*c as u8)))
        {
            return Err(NickError::InvalidCharacter(bad));
        }
        if base58_decoded_len(encoded) > NICK_HASH_LEN {
            return Err(NickError::HashTooLong);
        }
        Ok(Self(text.to_owned()))
    }

    /// The nick of the participant with this compressed public key.
    ///
    /// # Errors
    /// [`NickError::InvalidPublicKey`] unless `pubkey` is 33 bytes starting
    /// with 0x02 or 0x03.
    pub fn from_public_key(pubkey: &[u8]) -> Result<Self, NickError> {
        if pubkey.len() != 33 || !matches!(pubkey[0], 0x02 | 0x03) {
            return Err(NickError::InvalidPublicKey);
        }
        let hex: String = pubkey.iter().map(|b| format!("{b:02x}")).collect();
        let digest = Sha256::digest(hex.as_bytes());
        Ok(Self::from_hash_prefix(&digest[..10]))
    }

    fn from_hash_prefix(bytes: &[u8]) -> Self {
        let mut body = base58(bytes);
        while body.len() < NICK_BODY_LEN {
            body.push('O');
        }
        Self(format!("J5{body}"))
    }

    /// The nick as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Nick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Nick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nick({})", self.0)
    }
}

impl FromStr for Nick {
    type Err = NickError;
    fn from_str(s: &str) -> Result<Self, NickError> {
        Self::parse(s)
    }
}

/// Base58 (Bitcoin alphabet) of `bytes`: leading zero bytes become `1`.
fn base58(bytes: &[u8]) -> String {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    // Little-endian base-58 digits of the big-endian number.
    let mut digits: Vec<u8> = Vec::with_capacity(bytes.len() * 2);
    for &byte in &bytes[zeros..] {
        let mut carry = u32::from(byte);
        for digit in &mut digits {
            carry += u32::from(*digit) << 8;
            *digit = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let mut out = String::with_capacity(zeros + digits.len());
    out.extend(std::iter::repeat_n('1', zeros));
    out.extend(digits.iter().rev().map(|&d| BASE58[usize::from(d)] as char));
    out
}

/// How many bytes the base58 text `digits` (Bitcoin alphabet, checked by
/// the caller) decodes to: one per leading `1`, then the bytes of the
/// number the rest spells. Bounded by the caller to 14 characters.
fn base58_decoded_len(digits: &str) -> usize {
    let zeros = digits.bytes().take_while(|&b| b == b'1').count();
    // Big-endian bytes of the number, little-endian in `bytes`.
    let mut bytes: Vec<u8> = Vec::with_capacity(digits.len());
    for digit in digits.bytes().skip(zeros) {
        let mut carry = BASE58
            .iter()
            .position(|&c| c == digit)
            .and_then(|d| u32::try_from(d).ok())
            .unwrap_or(0);
        for byte in &mut bytes {
            carry += u32::from(*byte) * 58;
            *byte = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            bytes.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    zeros + bytes.len()
}

/// The JoinMarket network a directory serves, as named in the handshake.
///
/// Each implementation compares the client's `network` with its own and
/// refuses a mismatch (see [`JmError::WrongNetwork`](super::JmError::WrongNetwork)):
///
/// | implementation | names it accepts | comparison | file |
/// |---|---|---|---|
/// | joinmarket-ng | `mainnet`, `testnet`, `signet`, `regtest` (no `testnet4`) | lower-cased, then equal | `jmcore/src/jmcore/models.py` (`NetworkType`), `directory_server/.../handshake_handler.py` (`_parse_network`) |
/// | joinmarket-rs | whatever its config says (documented: `mainnet`, `testnet`, `signet`; default `mainnet`) | byte-equal | `crates/joinmarket-core/src/config.rs`, `crates/joinmarket-core/src/handshake.rs` (`validate`) |
/// | reference | its `[BLOCKCHAIN] network` (documented: `mainnet`, `testnet`, `signet`; "for regtest, use network = testnet") | byte-equal | `src/jmclient/configure.py`, `src/jmdaemon/onionmc.py` (`process_handshake`) |
///
/// No implementation names testnet4: a testnet4 participant announces
/// `testnet`, so [`Network`] has no testnet4 and `"testnet4"` does not
/// parse. A reference directory run on regtest usually announces
/// `testnet`, as its configuration advises; ng's says `regtest`.
///
/// Ports do not depend on the network: directories listen on 5222 in all
/// three (ng `jmcore/src/jmcore/protocol.py`, `ONION_VIRTUAL_PORT`; rs
/// `crates/joinmarket-dn/src/lib.rs`, `VIRTUAL_PORT`; the reference's
/// `directory_nodes` in `configure.py`), which is also the default port of
/// a configured directory address
/// ([`DEFAULT_PORT`](dirpool_core::DEFAULT_PORT)).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    /// mainnet
    Mainnet,
    /// testnet (testnet3, and testnet4 too: no implementation names it)
    Testnet,
    /// signet
    Signet,
    /// regtest (a reference directory on regtest usually says `testnet`)
    Regtest,
}

impl Network {
    /// Every network.
    pub const ALL: [Self; 4] = [Self::Mainnet, Self::Testnet, Self::Signet, Self::Regtest];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mainnet => "mainnet",
            Self::Testnet => "testnet",
            Self::Signet => "signet",
            Self::Regtest => "regtest",
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A network name that is not one of JoinMarket's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown network {0:?} (mainnet, testnet, signet, regtest; no JoinMarket implementation \
     names testnet4: its participants say testnet)"
)]
pub struct UnknownNetwork(pub String);

impl FromStr for Network {
    type Err = UnknownNetwork;
    fn from_str(s: &str) -> Result<Self, UnknownNetwork> {
        Ok(match s {
            "mainnet" => Self::Mainnet,
            "testnet" => Self::Testnet,
            "signet" => Self::Signet,
            "regtest" => Self::Regtest,
            other => return Err(UnknownNetwork(other.chars().take(32).collect())),
        })
    }
}

/// Where this participant can be reached, as told to directories.
///
/// A serving location is a Tor v3 onion service and its port, written
/// `<56 base32 characters>.onion:<port>`. Every current implementation
/// refuses anything else where it reads a peer's location:
///
/// | implementation | rule | file |
/// |---|---|---|
/// | joinmarket-ng | host `[a-z2-7]{56}\.onion` (or `NOT-SERVING-ONION`), port 1–65535; its directory closes a handshake that breaks it | `jmcore/src/jmcore/models.py`, `PeerInfo.onion_address`; `directory_server/.../handshake_handler.py`, `_parse_location` |
/// | joinmarket-rs | 62 characters, v3 version byte and checksum verified (after lower-casing), port 1–65535; otherwise a silent disconnect | `crates/joinmarket-core/src/onion.rs`, `OnionServiceAddr::parse`; `crates/joinmarket-dn/src/peer.rs` (`InvalidOnionAddress`) |
/// | reference | `host:port` split at `:` | `src/jmdaemon/onionmc.py`, `OnionPeer.set_location` |
///
/// [`Location::parse`] takes the strictest of these, which all accept: the
/// canonical text of a v3 onion (lower case, checksum and version checked)
/// with an explicit port. The directories a user configures are
/// [`ServerAddr`]s and are not restricted this way.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Location {
    /// `NOT-SERVING-ONION`: takers, watchers, probes.
    #[default]
    NotServing,
    /// A maker's own onion service, `onion:port` (see [`Location::serving`]).
    Serving(ServerAddr),
}

/// Why a text or address is not a peer location.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    /// Not an address at all.
    #[error("invalid address")]
    Addr(#[source] AddrError),
    /// An address, but not a v3 onion service written as
    /// `<56 base32 characters>.onion:<port>` in lower case with its port.
    #[error("a peer location is a v3 onion service, <56 base32 characters>.onion:<port>")]
    NotOnion,
}

impl Location {
    /// `"NOT-SERVING-ONION"` or `<v3 onion>:<port>`, exactly.
    ///
    /// # Errors
    /// [`LocationError::Addr`] for a malformed address,
    /// [`LocationError::NotOnion`] for one that is not a v3 onion written
    /// canonically with its port.
    pub fn parse(text: &str) -> Result<Self, LocationError> {
        if text == "NOT-SERVING-ONION" {
            return Ok(Self::NotServing);
        }
        let addr = ServerAddr::parse(text).map_err(LocationError::Addr)?;
        // Canonical text only: lower case and an explicit port, as ng's
        // pattern demands (`ServerAddr` would lower-case and add 5222).
        if addr.node_id() != text {
            return Err(LocationError::NotOnion);
        }
        Self::serving(addr)
    }

    /// A serving location at `addr`.
    ///
    /// # Errors
    /// [`LocationError::NotOnion`] unless `addr` is a v3 onion service.
    pub fn serving(addr: ServerAddr) -> Result<Self, LocationError> {
        if addr.is_onion() {
            Ok(Self::Serving(addr))
        } else {
            Err(LocationError::NotOnion)
        }
    }

    /// Whether current directories accept it: not serving, or a v3 onion.
    pub fn is_valid(&self) -> bool {
        match self {
            Self::NotServing => true,
            Self::Serving(addr) => addr.is_onion(),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotServing => f.write_str("NOT-SERVING-ONION"),
            Self::Serving(addr) => f.write_str(addr.node_id()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base58_matches_known_vectors() {
        assert_eq!(base58(b""), "");
        assert_eq!(base58(&[0]), "1");
        assert_eq!(base58(&[0, 0, 1]), "112");
        assert_eq!(base58(b"hello world"), "StV1DL6CwTryKyV");
        assert_eq!(base58(&[0xff; 10]), "FPBt6CHo3fovdL"); // computed independently in Python
    }

    #[test]
    fn nicks_from_keys_have_the_joinmarket_shape() {
        let mut key = [0x11u8; 33];
        key[0] = 0x02;
        let nick = Nick::from_public_key(&key).unwrap();
        assert_eq!(nick.as_str().len(), 16);
        assert_eq!(Nick::parse(nick.as_str()), Ok(nick.clone()));
        // Same key, same nick; another key, another nick.
        assert_eq!(Nick::from_public_key(&key).unwrap(), nick);
        key[32] = 0x12;
        assert_ne!(Nick::from_public_key(&key).unwrap(), nick);
        assert_eq!(
            Nick::from_public_key(&[0x04; 33]),
            Err(NickError::InvalidPublicKey)
        );
        assert_eq!(
            Nick::from_public_key(&[0x02; 32]),
            Err(NickError::InvalidPublicKey)
        );
    }

    #[test]
    fn nick_shapes() {
        assert!(Nick::parse("J5xhGSWE7VrxM7sO").is_ok());
        assert!(Nick::parse("J52bCDEFGHJKLMNO").is_ok());
        assert_eq!(Nick::parse("J5short"), Err(NickError::WrongLength(7)));
        assert_eq!(Nick::parse("K5xhGSWE7VrxM7sO"), Err(NickError::WrongPrefix));
        assert_eq!(
            Nick::parse("J5xhGSWE0VrxM7sO"),
            Err(NickError::InvalidCharacter('0'))
        );
        assert_eq!(
            Nick::parse("J5OOOOxhGSWE7Vrx"),
            Err(NickError::InvalidCharacter('O'))
        );
        assert_eq!(
            Nick::parse("J5xhGSWE7VrxM7sé"),
            Err(NickError::InvalidCharacter('é'))
        );
    }

    /// joinmarket-ng `jmcore/src/jmcore/models.py` (`NetworkType`: mainnet,
    /// testnet, signet, regtest, no testnet4), joinmarket-rs
    /// `crates/joinmarket-core/src/config.rs` and the reference
    /// `src/jmclient/configure.py` (both document "signet, testnet,
    /// mainnet"): the names we send are ng's, and testnet4 is none.
    #[test]
    fn network_names_are_those_of_joinmarket_ng() {
        let names: Vec<&str> = Network::ALL.iter().map(|n| n.as_str()).collect();
        assert_eq!(names, ["mainnet", "testnet", "signet", "regtest"]);
        let error = "testnet4".parse::<Network>().unwrap_err();
        assert_eq!(error, UnknownNetwork("testnet4".to_owned()));
        assert!(error.to_string().contains("say testnet"), "{error}");
        // ng lower-cases what a client sends; rs and the reference compare
        // bytes: we parse (and send) the lower-case name only.
        assert!("Mainnet".parse::<Network>().is_err());
        assert_eq!(dirpool_core::DEFAULT_PORT, 5222);
    }

    /// joinmarket-rs `crates/joinmarket-core/src/nick.rs`
    /// (`test_python_compatibility_nick_hash`: the key of scalar 1 has nick
    /// `J5Ckon1LuuapPSBM`; `Nick::from_str` decodes the part before the `O`
    /// padding and refuses more than 10 bytes, `InvalidBase58`) and
    /// joinmarket-ng `jmcore/src/jmcore/nick_auth.py` (`_NICK_RE`, which
    /// also takes `O` inside and any version digit, so it accepts all the
    /// nicks accepted here).
    #[test]
    fn nicks_are_those_joinmarket_rs_and_ng_both_accept() {
        let generator = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
        let key: Vec<u8> = (0..33)
            .map(|i| u8::from_str_radix(&generator[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert_eq!(
            Nick::from_public_key(&key).unwrap().as_str(),
            "J5Ckon1LuuapPSBM"
        );
        // Accepted by both: at most 10 bytes, padding only at the end.
        for nick in [
            "J5Ckon1LuuapPSBM",
            "J51111111111OOOO",
            "J5OOOOOOOOOOOOOO",
            "J5FPBt6CHo3fovdL",
        ] {
            assert!(Nick::parse(nick).is_ok(), "{nick}");
        }
        // 14 base58 digits can spell 11 bytes (58^14 > 2^80), and each
        // leading '1' is a zero byte: rs refuses both.
        for nick in ["J5zzzzzzzzzzzzzz", "J511111111111OOO", "J5FPBt6CHo3fovdM"] {
            assert_eq!(Nick::parse(nick), Err(NickError::HashTooLong), "{nick}");
        }
        // ng's wider shapes that rs refuses: 'O' inside, another version.
        assert_eq!(
            Nick::parse("J5OOOOxhGSWE7Vrx"),
            Err(NickError::InvalidCharacter('O'))
        );
        assert_eq!(Nick::parse("J6xhGSWE7VrxM7sO"), Err(NickError::WrongPrefix));
        for bytes in [[0u8; 10], [0xff; 10], [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]] {
            let nick = Nick::from_hash_prefix(&bytes);
            assert_eq!(Nick::parse(nick.as_str()), Ok(nick.clone()));
        }
    }

    #[test]
    fn networks_and_locations() {
        for n in Network::ALL {
            assert_eq!(n.as_str().parse::<Network>(), Ok(n));
            assert_eq!(n.to_string(), n.as_str());
        }
        assert_eq!(Network::Signet.to_string(), "signet");
        assert!("bitcoin".parse::<Network>().is_err());
        assert_eq!(
            Location::parse("NOT-SERVING-ONION").unwrap().to_string(),
            "NOT-SERVING-ONION"
        );
        let onion = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion:5222";
        assert_eq!(Location::parse(onion).unwrap().to_string(), onion);
        assert!(Location::parse("not a place").is_err());
    }

    /// joinmarket-ng `jmcore/src/jmcore/models.py` (`PeerInfo`:
    /// `^[a-z2-7]{56}\.onion$`, port checked in
    /// `handshake_handler.py::_parse_location`) and joinmarket-rs
    /// `crates/joinmarket-core/src/onion.rs` (`OnionServiceAddr::parse`:
    /// 62 characters, checksum, version 3, port 1–65535).
    #[test]
    fn peer_locations_are_v3_onions_with_a_port() {
        let onion = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion";
        assert!(Location::parse(&format!("{onion}:1")).is_ok());
        assert!(Location::parse(&format!("{onion}:65535")).is_ok());
        for text in [
            "127.0.0.1:5222",
            "dir.example:5222",
            "[::1]:5222",
            onion,                                     // no port
            &format!("{}:5222", onion.to_uppercase()), // ng: lower case only
            &format!("{onion}:05222"),                 // not canonical
        ] {
            assert_eq!(
                Location::parse(text),
                Err(LocationError::NotOnion),
                "{text}"
            );
        }
        // rs verifies the checksum; so do we.
        let typo = format!("{}b.onion:5222", &onion[..55]);
        assert!(matches!(
            Location::parse(&typo),
            Err(LocationError::Addr(AddrError::InvalidOnion(_)))
        ));
        assert!(matches!(
            Location::parse(&format!("{onion}:0")),
            Err(LocationError::Addr(_))
        ));
        assert_eq!(
            Location::serving(ServerAddr::parse("127.0.0.1:5222").unwrap()),
            Err(LocationError::NotOnion)
        );
        assert!(!Location::Serving(ServerAddr::parse("127.0.0.1").unwrap()).is_valid());
        assert!(Location::NotServing.is_valid());
    }
}
