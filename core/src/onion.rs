//! Tor v3 onion-service addresses (rend-spec-v3, "Encoding onion addresses").
//!
//! An address is `base32(PUBKEY || CHECKSUM || VERSION) + ".onion"`, where
//! `PUBKEY` is the 32-byte ed25519 identity key, `VERSION` is `0x03` and
//! `CHECKSUM` is the first two bytes of
//! `SHA3-256(".onion checksum" || PUBKEY || VERSION)`. The base32 alphabet is
//! RFC 4648's (`a-z2-7`, case-insensitive here), without padding, so the 35
//! decoded bytes are exactly 56 characters.

use sha3::{Digest, Sha3_256};

/// Why a string is not a valid v3 onion address.
///
/// Wrapped by [`AddrError::InvalidOnion`](crate::AddrError::InvalidOnion), whose message is this error's.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnionError {
    /// The part before `.onion` does not have the 56 characters of a v3
    /// address (`len` counts characters).
    #[error(
        "onion address has {len} characters before \".onion\"; a v3 onion address has exactly 56"
    )]
    WrongLength {
        /// Number of characters before `.onion`.
        len: usize,
    },
    /// A 16-character (version 2) onion address.
    #[error(
        "v2 onion addresses are no longer supported by Tor; use the server's 56-character v3 address"
    )]
    V2NotSupported,
    /// A character outside the base32 alphabet (`a-z`, `2-7`).
    #[error(
        "onion address contains {ch:?}, which is not a base32 character (only a-z and 2-7 are)"
    )]
    InvalidBase32 {
        /// The first offending character.
        ch: char,
    },
    /// The address decodes, but its version byte is not 3.
    #[error("onion address has version {version}; only version 3 onion addresses are supported")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
    /// The embedded checksum does not match the key: most likely a typo.
    #[error("onion address checksum does not match (is there a typo in the address?)")]
    BadChecksum,
    /// A name below an onion address, like `www.<56 chars>.onion`.
    #[error("onion addresses cannot have subdomains; use the bare <56 characters>.onion address")]
    Subdomain,
}

/// Number of base32 characters before `.onion` in a v3 address.
pub(crate) const V3_LABEL_LEN: usize = 56;

/// Number of base32 characters before `.onion` in a (dead) v2 address.
const V2_LABEL_LEN: usize = 16;

/// Length of the decoded address: pubkey (32) + checksum (2) + version (1).
const DECODED_LEN: usize = 35;

/// The only onion-address version this crate accepts.
const VERSION_3: u8 = 3;

/// Prefix of the checksummed data (rend-spec-v3).
const CHECKSUM_PREFIX: &[u8] = b".onion checksum";

/// Value of one base32 character (RFC 4648 alphabet, either case).
fn base32_value(byte: u8) -> Option<u8> {
    match byte {
        b'a'..=b'z' => Some(byte - b'a'),
        b'A'..=b'Z' => Some(byte - b'A'),
        b'2'..=b'7' => Some(byte - b'2' + 26),
        _ => None,
    }
}

/// Decodes unpadded base32 whose length is a multiple of 8 characters into
/// `out` (5 bytes per 8 characters). Returns `None` if a character is not in
/// the alphabet or the lengths do not match.
fn decode_base32(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() % 8 != 0 || text.len() / 8 * 5 != out.len() {
        return None;
    }
    for (chunk, dst) in text.chunks_exact(8).zip(out.chunks_exact_mut(5)) {
        let mut acc: u64 = 0;
        for &byte in chunk {
            acc = (acc << 5) | u64::from(base32_value(byte)?);
        }
        // 8 characters carry 40 bits: the low 5 bytes of `acc`.
        dst.copy_from_slice(&acc.to_be_bytes()[3..]);
    }
    Some(())
}

/// The two checksum bytes of a v3 address with this key and version.
fn checksum(pubkey: &[u8], version: u8) -> [u8; 2] {
    let mut hasher = Sha3_256::new();
    hasher.update(CHECKSUM_PREFIX);
    hasher.update(pubkey);
    hasher.update([version]);
    let digest = hasher.finalize();
    [digest[0], digest[1]]
}

/// Validates the part of a host before `.onion` (`label`, any case) as a v3
/// onion address and returns its ed25519 public key.
///
/// Checks, in the order Tor does: no subdomain, length (with a dedicated
/// error for 16-character v2 addresses), alphabet, version byte, checksum.
/// Linear in `label.len()`; never panics.
pub(crate) fn parse_v3_label(label: &str) -> Result<[u8; 32], OnionError> {
    if label.contains('.') {
        return Err(OnionError::Subdomain);
    }
    let len = label.chars().count();
    if len == V2_LABEL_LEN {
        return Err(OnionError::V2NotSupported);
    }
    if len != V3_LABEL_LEN {
        return Err(OnionError::WrongLength { len });
    }
    if let Some(ch) = label
        .chars()
        .find(|&ch| !u8::try_from(ch).is_ok_and(|b| base32_value(b).is_some()))
    {
        return Err(OnionError::InvalidBase32 { ch });
    }
    // Every character is ASCII now, so there are exactly 56 bytes.
    let mut decoded = [0u8; DECODED_LEN];
    if decode_base32(label.as_bytes(), &mut decoded).is_none() {
        // Unreachable given the checks above; kept as an error, not a panic.
        return Err(OnionError::WrongLength { len });
    }
    let (pubkey, rest) = decoded.split_at(32);
    let (sum, version) = rest.split_at(2);
    let version = version[0];
    if version != VERSION_3 {
        return Err(OnionError::UnsupportedVersion { version });
    }
    if sum != checksum(pubkey, version) {
        return Err(OnionError::BadChecksum);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(pubkey);
    Ok(key)
}

/// Encodes `bytes` as unpadded lower-case base32 (whole 5-byte groups only;
/// the one caller passes 35 bytes).
fn encode_base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    debug_assert_eq!(bytes.len() % 5, 0, "whole 5-byte groups");
    let mut out = String::with_capacity(bytes.len() / 5 * 8);
    for group in bytes.chunks_exact(5) {
        let acc = group.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        for shift in (0..8).rev() {
            let index = usize::try_from((acc >> (shift * 5)) & 31).expect("5 bits fit in usize");
            out.push(char::from(ALPHABET[index]));
        }
    }
    out
}

/// Builds the `<56 chars>.onion` address for `pubkey`, with a correct
/// checksum for the given `version` (use 3 for a valid address).
pub(crate) fn encode_v3(pubkey: &[u8; 32], version: u8) -> String {
    let mut raw = [0u8; DECODED_LEN];
    raw[..32].copy_from_slice(pubkey);
    raw[32..34].copy_from_slice(&checksum(pubkey, version));
    raw[34] = version;
    let mut addr = encode_base32(&raw);
    addr.push_str(".onion");
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    const DDG: &str = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad";
    const TORPROJECT: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn real_addresses_decode_to_known_keys() {
        // Keys computed independently with Python's base64/hashlib.
        let key = parse_v3_label(DDG).unwrap();
        assert_eq!(
            hex(&key),
            "1d04a1d04a338c6e6ae970bfabee49049d6702250984ca950c01673f4ec034ad"
        );
        let key = parse_v3_label(TORPROJECT).unwrap();
        assert_eq!(
            hex(&key),
            "d1b38b83a83b3ed918c5bb69dd444ad56bc8d5835a914de73447474e5f02591b"
        );
        let upper = DDG.to_ascii_uppercase();
        assert!(parse_v3_label(&upper).is_ok());
    }

    #[test]
    fn encoder_round_trips() {
        for key in [[0u8; 32], [0xff; 32], *b"0123456789abcdef0123456789abcdef"] {
            let addr = encode_v3(&key, 3);
            let label = addr.strip_suffix(".onion").unwrap();
            assert_eq!(label.len(), V3_LABEL_LEN);
            assert_eq!(parse_v3_label(label), Ok(key));
        }
        let key = parse_v3_label(DDG).unwrap();
        assert_eq!(encode_v3(&key, 3), format!("{DDG}.onion"));
    }

    #[test]
    fn rejections() {
        assert_eq!(parse_v3_label(""), Err(OnionError::WrongLength { len: 0 }));
        assert_eq!(
            parse_v3_label("expyuzz4wqqyqhjn"),
            Err(OnionError::V2NotSupported)
        );
        assert_eq!(
            parse_v3_label(&DDG[1..]),
            Err(OnionError::WrongLength { len: 55 })
        );
        let bad = DDG.replacen('d', "1", 1);
        assert_eq!(
            parse_v3_label(&bad),
            Err(OnionError::InvalidBase32 { ch: '1' })
        );
        // 55 ASCII + one 2-byte char: 56 chars, 57 bytes.
        let multibyte = format!("{}é", &DDG[1..]);
        assert_eq!(
            parse_v3_label(&multibyte),
            Err(OnionError::InvalidBase32 { ch: 'é' })
        );
        let key = [7u8; 32];
        let v4 = encode_v3(&key, 4);
        assert_eq!(
            parse_v3_label(v4.strip_suffix(".onion").unwrap()),
            Err(OnionError::UnsupportedVersion { version: 4 })
        );
        assert_eq!(
            parse_v3_label(&format!("www.{DDG}")),
            Err(OnionError::Subdomain)
        );
    }

    #[test]
    fn base32_decoder_basics() {
        let mut out = [0u8; 5];
        assert_eq!(decode_base32(b"aaaaaaaa", &mut out), Some(()));
        assert_eq!(out, [0; 5]);
        assert_eq!(decode_base32(b"77777777", &mut out), Some(()));
        assert_eq!(out, [0xff; 5]);
        // RFC 4648 test vector: BASE32("fooba") = "MZXW6YTB".
        assert_eq!(decode_base32(b"MZXW6YTB", &mut out), Some(()));
        assert_eq!(&out, b"fooba");
        assert_eq!(decode_base32(b"mzxw6ytb", &mut out), Some(()));
        assert_eq!(&out, b"fooba");
        assert_eq!(decode_base32(b"mzxw6yt", &mut out), None);
        assert_eq!(decode_base32(b"mzxw6yt1", &mut out), None);
    }
}
