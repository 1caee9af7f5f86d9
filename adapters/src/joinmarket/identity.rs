//! Who we say we are to a directory: nick, network, own location.

use std::fmt;
use std::str::FromStr;

use dirpool_core::{AddrError, ServerAddr};
use sha2::{Digest, Sha256};

const BASE58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
/// Characters after `J5`; the encoding is right-padded with `O`, which is
/// not a base58 letter.
const NICK_BODY_LEN: usize = 14;

/// A JoinMarket nick: `J5` and 14 characters, the base58 encoding of the
/// first 10 bytes of SHA-256 over the hex of the participant's compressed
/// public key, right-padded with `O`. Strict directories close the
/// connection on any other shape.
#[derive(Clone, PartialEq, Eq, Hash)]
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

    /// A nick of the right shape from fresh OS randomness, for watchers and
    /// probes that have no identity.
    ///
    /// # Errors
    /// The OS gave no randomness.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 10];
        getrandom::fill(&mut bytes)?;
        Ok(Self::from_hash_prefix(&bytes))
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

/// The Bitcoin network the directory serves.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    /// mainnet
    Mainnet,
    /// testnet (testnet3)
    Testnet,
    /// testnet4
    Testnet4,
    /// signet
    Signet,
    /// regtest
    Regtest,
}

impl Network {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mainnet => "mainnet",
            Self::Testnet => "testnet",
            Self::Testnet4 => "testnet4",
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
#[error("unknown network {0:?} (mainnet, testnet, testnet4, signet, regtest)")]
pub struct UnknownNetwork(pub String);

impl FromStr for Network {
    type Err = UnknownNetwork;
    fn from_str(s: &str) -> Result<Self, UnknownNetwork> {
        Ok(match s {
            "mainnet" => Self::Mainnet,
            "testnet" => Self::Testnet,
            "testnet4" => Self::Testnet4,
            "signet" => Self::Signet,
            "regtest" => Self::Regtest,
            other => return Err(UnknownNetwork(other.chars().take(32).collect())),
        })
    }
}

/// Where this participant can be reached, as told to directories.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Location {
    /// `NOT-SERVING-ONION`: takers, watchers, probes.
    #[default]
    NotServing,
    /// A maker's own onion service, `onion:port`.
    Serving(ServerAddr),
}

impl Location {
    /// `"NOT-SERVING-ONION"` or an address (`host:port`).
    ///
    /// # Errors
    /// [`AddrError`] for a malformed address.
    pub fn parse(text: &str) -> Result<Self, AddrError> {
        if text == "NOT-SERVING-ONION" {
            Ok(Self::NotServing)
        } else {
            ServerAddr::parse(text).map(Self::Serving)
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
        let random = Nick::random().unwrap();
        assert!(Nick::parse(random.as_str()).is_ok());
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

    #[test]
    fn networks_and_locations() {
        for n in [
            Network::Mainnet,
            Network::Testnet,
            Network::Testnet4,
            Network::Signet,
            Network::Regtest,
        ] {
            assert_eq!(n.as_str().parse::<Network>(), Ok(n));
        }
        assert!("bitcoin".parse::<Network>().is_err());
        assert_eq!(
            Location::parse("NOT-SERVING-ONION").unwrap().to_string(),
            "NOT-SERVING-ONION"
        );
        let onion = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion:5222";
        assert_eq!(Location::parse(onion).unwrap().to_string(), onion);
        assert!(Location::parse("not a place").is_err());
    }
}
