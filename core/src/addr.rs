//! Directory-server addresses: parsing, validation and canonical form.
//!
//! A [`ServerAddr`] is parsed from `host` or `host:port` (port defaults to
//! [`DEFAULT_PORT`]). The host is a Tor v3 onion address, a DNS name, an IPv4
//! address, or a bracketed IPv6 address (`[::1]:5222`). Parsing is strict,
//! linear in the input length and never panics; every rejection has its own
//! [`AddrError`] variant. Accepted addresses are stored in a canonical form
//! (lower-case names, compressed IPv6, port without leading zeros) so that
//! equal servers compare equal and deduplicate in sets and maps.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::onion;
pub use crate::onion::OnionError;

/// Port used when an address has none: the JoinMarket directory-node port.
pub const DEFAULT_PORT: u16 = 5222;

/// Longest host accepted, in bytes: the SOCKS5 domain-name length limit
/// (the length is sent in one byte).
const MAX_HOST_LEN: usize = 255;

/// Longest DNS label, in bytes (RFC 1035 section 2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Offending text quoted in an error message is cut to this many characters.
const EXCERPT_CHARS: usize = 64;

/// What kind of host a [`ServerAddr`] names.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostKind {
    /// A Tor v3 onion service (`<56 base32 chars>.onion`), checksum verified.
    /// Reachable only through Tor; the name is resolved by Tor itself.
    Onion,
    /// A DNS host name (not `.onion`), lower-cased. Resolved by the Tor exit
    /// (never locally), so using it leaks nothing to the local resolver.
    DnsName,
    /// An IPv4 address literal.
    Ipv4,
    /// An IPv6 address literal (written in brackets, stored compressed).
    Ipv6,
}

/// Why a string is not a valid server address.
///
/// Quoted input in messages is cut to 64 characters (marked with `…`), so a
/// huge input cannot produce a huge message.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// The input is the empty string.
    #[error("server address is empty")]
    Empty,
    /// A whitespace or control character somewhere in the input.
    #[error("server address contains whitespace or control character {ch:?} at byte {pos}")]
    WhitespaceOrControl {
        /// The offending character.
        ch: char,
        /// Its byte offset in the input.
        pos: usize,
    },
    /// The input looks like a URL (`scheme://...`).
    #[error("{text:?} looks like a URL; write host:port, not a URL")]
    LooksLikeUrl {
        /// The input (possibly cut).
        text: String,
    },
    /// `/`, `@` or `\`: URL paths, user info and the like are not addresses.
    #[error("character {ch:?} at byte {pos} is not allowed in a server address; write host:port")]
    ForbiddenChar {
        /// The offending character.
        ch: char,
        /// Its byte offset in the input.
        pos: usize,
    },
    /// `[` or `]` other than around an IPv6 address at the start.
    #[error(
        "unexpected {ch:?} at byte {pos}; brackets are only allowed around an IPv6 address at the start, as in [::1]:5222"
    )]
    UnexpectedBracket {
        /// The offending character.
        ch: char,
        /// Its byte offset in the input.
        pos: usize,
    },
    /// More than one `:` outside brackets (e.g. a bare IPv6 address).
    #[error(
        "{text:?} contains more than one ':'; write IPv6 addresses in brackets, as in [::1]:5222"
    )]
    UnbracketedIpv6 {
        /// The input (possibly cut).
        text: String,
    },
    /// `[` at the start without a closing `]`.
    #[error("IPv6 address is missing its closing ']'")]
    UnclosedBracket,
    /// An IPv6 zone id (`%eth0`), which is meaningless through Tor.
    #[error("IPv6 zone ids are not supported: {text:?}")]
    Ipv6ZoneId {
        /// The bracket content (possibly cut).
        text: String,
    },
    /// The text in brackets is not an IPv6 address.
    #[error("{text:?} in brackets is not a valid IPv6 address")]
    InvalidIpv6 {
        /// The bracket content (possibly cut).
        text: String,
    },
    /// Something other than `:port` after the closing `]`.
    #[error("unexpected {text:?} after ']'; only :port may follow an IPv6 address")]
    TrailingAfterBracket {
        /// The text after `]` (possibly cut).
        text: String,
    },
    /// No host before the `:` (e.g. `:5222`), or `[]`.
    #[error("server address has no host")]
    EmptyHost,
    /// A `:` with nothing after it (e.g. `host:`).
    #[error("port is empty after ':'; give a port or leave out the ':' to use 5222")]
    EmptyPort,
    /// The port is not made of ASCII digits only.
    #[error("port {text:?} is not a decimal number")]
    InvalidPort {
        /// The port text (possibly cut).
        text: String,
    },
    /// The port is 0 or above 65535.
    #[error("port {text} is out of range; it must be 1 to 65535")]
    PortOutOfRange {
        /// The port text as written (possibly cut).
        text: String,
    },
    /// The host is longer than the 255 bytes SOCKS5 can carry.
    #[error("host is {len} bytes long; at most 255 bytes are allowed")]
    HostTooLong {
        /// Length of the host in bytes.
        len: usize,
    },
    /// A host made only of digits and dots that is not an IPv4 address.
    #[error("{text:?} is not a valid IPv4 address")]
    InvalidIpv4 {
        /// The host (possibly cut).
        text: String,
    },
    /// A host name with an empty label: leading, trailing or doubled `.`.
    #[error("host name {text:?} has an empty label (leading, trailing or doubled '.')")]
    EmptyLabel {
        /// The host (possibly cut).
        text: String,
    },
    /// A host-name label longer than 63 bytes (RFC 1035).
    #[error("host name label of {len} bytes is too long; labels have at most 63")]
    LabelTooLong {
        /// Length of the label in bytes.
        len: usize,
    },
    /// A character not allowed in a host name.
    #[error(
        "invalid character {ch:?} at byte {pos} in host name; only ASCII letters, digits, '-', '_' and '.' are allowed (write internationalized names in punycode)"
    )]
    InvalidHostChar {
        /// The offending character.
        ch: char,
        /// Its byte offset in the input.
        pos: usize,
    },
    /// A `.onion` host that is not a valid v3 onion address.
    #[error(transparent)]
    InvalidOnion(#[from] OnionError),
}

/// The address of a directory server: a validated host and a port.
///
/// Stored canonically (see [`ServerAddr::node_id`]) in a single heap
/// allocation, so two `ServerAddr`s are equal exactly when they name the same
/// host and port, however they were written (`X.onion` and `x.onion:5222`
/// are equal).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    /// Canonical `host:port` (`[v6]:port` for IPv6).
    node_id: Box<str>,
    /// The port, also found at the end of `node_id`.
    port: u16,
    /// Byte length of the host inside `node_id` (it starts at byte 0, or at
    /// byte 1 after `[` for IPv6).
    host_len: u8,
    /// What the host is.
    kind: HostKind,
}

impl ServerAddr {
    /// Parses and validates `host` or `host:port`.
    ///
    /// The port defaults to [`DEFAULT_PORT`]; IPv6 addresses must be in
    /// brackets (`[::1]`, `[::1]:5222`). Names are lower-cased and `.onion`
    /// hosts must be valid v3 onion addresses (checksum included).
    ///
    /// # Errors
    ///
    /// Returns an [`AddrError`] naming the first problem found. See the
    /// variants for the rules.
    pub fn parse(s: &str) -> Result<ServerAddr, AddrError> {
        if s.is_empty() {
            return Err(AddrError::Empty);
        }
        if let Some((pos, ch)) = s
            .char_indices()
            .find(|&(_, ch)| ch.is_whitespace() || ch.is_control())
        {
            return Err(AddrError::WhitespaceOrControl { ch, pos });
        }
        if s.contains("://") {
            return Err(AddrError::LooksLikeUrl { text: excerpt(s) });
        }
        if let Some((pos, ch)) = s
            .char_indices()
            .find(|&(_, ch)| matches!(ch, '/' | '@' | '\\'))
        {
            return Err(AddrError::ForbiddenChar { ch, pos });
        }
        match s.strip_prefix('[') {
            Some(rest) => parse_bracketed(rest),
            None => parse_plain(s),
        }
    }

    /// The host, without IPv6 brackets, in canonical form: onion and DNS
    /// names in ASCII lower case, IPv6 compressed as std prints it.
    pub fn host(&self) -> &str {
        let start = usize::from(self.kind == HostKind::Ipv6);
        &self.node_id[start..start + usize::from(self.host_len)]
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What kind of host this is.
    pub fn kind(&self) -> HostKind {
        self.kind
    }

    /// The canonical `host:port` string (`[::1]:5222` for IPv6), which
    /// identifies the server; also what [`Display`](fmt::Display) prints and
    /// what [`ServerAddr::parse`] maps back to an equal value.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The IP address, if the host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.kind {
            HostKind::Ipv4 => self.host().parse::<Ipv4Addr>().ok().map(IpAddr::V4),
            HostKind::Ipv6 => self.host().parse::<Ipv6Addr>().ok().map(IpAddr::V6),
            HostKind::Onion | HostKind::DnsName => None,
        }
    }

    /// Whether the host is a Tor onion service.
    pub fn is_onion(&self) -> bool {
        self.kind == HostKind::Onion
    }

    /// The v3 onion address of the service with this ed25519 public key
    /// (rend-spec-v3: key, checksum, version 3, base32), on `port` (0, which
    /// cannot be dialed, means [`DEFAULT_PORT`]).
    ///
    /// ```
    /// use dirpool_core::ServerAddr;
    /// let addr = ServerAddr::from_onion_key(&[7; 32], 5222);
    /// assert!(addr.is_onion());
    /// assert_eq!(ServerAddr::parse(addr.node_id()), Ok(addr));
    /// ```
    pub fn from_onion_key(public_key: &[u8; 32], port: u16) -> ServerAddr {
        let host = crate::onion::encode_v3(public_key, 3);
        // A freshly encoded v3 address is valid; port 0 is the one thing
        // that cannot be, so it falls back to the default port.
        let port = if port == 0 { DEFAULT_PORT } else { port };
        Self::build(&host, port, HostKind::Onion)
            .unwrap_or_else(|_| unreachable!("encoded v3 address is valid"))
    }

    /// Builds the canonical value from an already validated `host` (in its
    /// final form except for case) and port.
    fn build(host: &str, port: u16, kind: HostKind) -> Result<ServerAddr, AddrError> {
        let host_len =
            u8::try_from(host.len()).map_err(|_| AddrError::HostTooLong { len: host.len() })?;
        let brackets = if kind == HostKind::Ipv6 { 2 } else { 0 };
        // Exact capacity, so `into_boxed_str` does not reallocate.
        let mut id = String::with_capacity(host.len() + brackets + 1 + decimal_len(port));
        if kind == HostKind::Ipv6 {
            id.push('[');
            id.push_str(host);
            id.push(']');
        } else {
            id.push_str(host);
            id.make_ascii_lowercase();
        }
        id.push(':');
        push_decimal(&mut id, port);
        Ok(ServerAddr {
            node_id: id.into_boxed_str(),
            port,
            host_len,
            kind,
        })
    }
}

impl FromStr for ServerAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServerAddr::parse(s)
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.node_id)
    }
}

impl fmt::Debug for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ServerAddr").field(&&*self.node_id).finish()
    }
}

/// Parses what follows a leading `[`: `v6]` or `v6]:port`.
fn parse_bracketed(rest: &str) -> Result<ServerAddr, AddrError> {
    let Some((inner, after)) = rest.split_once(']') else {
        return Err(AddrError::UnclosedBracket);
    };
    if inner.is_empty() {
        return Err(AddrError::EmptyHost);
    }
    if inner.contains('%') {
        return Err(AddrError::Ipv6ZoneId {
            text: excerpt(inner),
        });
    }
    let ip: Ipv6Addr = inner.parse().map_err(|_| AddrError::InvalidIpv6 {
        text: excerpt(inner),
    })?;
    let port = if after.is_empty() {
        DEFAULT_PORT
    } else if let Some(port) = after.strip_prefix(':') {
        parse_port(port)?
    } else {
        return Err(AddrError::TrailingAfterBracket {
            text: excerpt(after),
        });
    };
    ServerAddr::build(&ip.to_string(), port, HostKind::Ipv6)
}

/// Parses `host` or `host:port` where the host is not bracketed.
fn parse_plain(s: &str) -> Result<ServerAddr, AddrError> {
    if let Some((pos, ch)) = s.char_indices().find(|&(_, ch)| matches!(ch, '[' | ']')) {
        return Err(AddrError::UnexpectedBracket { ch, pos });
    }
    let (host, port) = match s.split_once(':') {
        None => (s, None),
        Some((_, port)) if port.contains(':') => {
            return Err(AddrError::UnbracketedIpv6 { text: excerpt(s) });
        }
        Some((host, port)) => (host, Some(port)),
    };
    if host.is_empty() {
        return Err(AddrError::EmptyHost);
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => parse_port(port)?,
    };
    if host.len() > MAX_HOST_LEN {
        return Err(AddrError::HostTooLong { len: host.len() });
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let ip: Ipv4Addr = host.parse().map_err(|_| AddrError::InvalidIpv4 {
            text: excerpt(host),
        })?;
        return ServerAddr::build(&ip.to_string(), port, HostKind::Ipv4);
    }
    check_dns_name(host)?;
    match strip_onion_suffix(host) {
        Some(label) => {
            onion::parse_v3_label(label)?;
            ServerAddr::build(host, port, HostKind::Onion)
        }
        None => ServerAddr::build(host, port, HostKind::DnsName),
    }
}

/// Checks the syntax of a host name (`host` starts at byte 0 of the input,
/// so offsets are input offsets): non-empty labels of at most 63 bytes made
/// of ASCII letters, digits, `-` and `_`.
fn check_dns_name(host: &str) -> Result<(), AddrError> {
    let mut label_len = 0usize;
    for (pos, ch) in host.char_indices() {
        if ch == '.' {
            if label_len == 0 {
                return Err(AddrError::EmptyLabel {
                    text: excerpt(host),
                });
            }
            label_len = 0;
        } else if ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' {
            label_len += 1;
            if label_len > MAX_LABEL_LEN {
                let len = host[pos + 1 - label_len..]
                    .bytes()
                    .take_while(|&b| b != b'.')
                    .count();
                return Err(AddrError::LabelTooLong { len });
            }
        } else {
            return Err(AddrError::InvalidHostChar { ch, pos });
        }
    }
    if label_len == 0 {
        return Err(AddrError::EmptyLabel {
            text: excerpt(host),
        });
    }
    Ok(())
}

/// The part of `host` before a case-insensitive `.onion` suffix, if any.
fn strip_onion_suffix(host: &str) -> Option<&str> {
    const SUFFIX: &str = ".onion";
    let cut = host.len().checked_sub(SUFFIX.len())?;
    let tail = host.get(cut..)?;
    if tail.eq_ignore_ascii_case(SUFFIX) {
        host.get(..cut)
    } else {
        None
    }
}

/// Parses a port: ASCII digits only, leading zeros allowed, 1 to 65535.
fn parse_port(text: &str) -> Result<u16, AddrError> {
    if text.is_empty() {
        return Err(AddrError::EmptyPort);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddrError::InvalidPort {
            text: excerpt(text),
        });
    }
    let significant = text.trim_start_matches('0');
    // At most 5 significant digits fit; more is out of range, not overflow.
    let value = if significant.len() > 5 {
        None
    } else {
        significant
            .bytes()
            .try_fold(0u32, |acc, b| Some(acc * 10 + u32::from(b - b'0')))
    };
    match value.and_then(|v| u16::try_from(v).ok()) {
        Some(port) if port != 0 => Ok(port),
        _ => Err(AddrError::PortOutOfRange {
            text: excerpt(text),
        }),
    }
}

/// Number of decimal digits of `n`.
fn decimal_len(n: u16) -> usize {
    match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    }
}

/// Appends `n` in decimal without allocating.
fn push_decimal(out: &mut String, n: u16) {
    let mut digits = [0u8; 5];
    let mut rest = n;
    let len = decimal_len(n);
    for slot in digits[..len].iter_mut().rev() {
        // `rest % 10` is below 10, so the digit is ASCII.
        *slot = b'0' + (rest % 10).to_le_bytes()[0];
        rest /= 10;
    }
    for &d in &digits[..len] {
        out.push(char::from(d));
    }
}

/// `text` cut to [`EXCERPT_CHARS`] characters, with `…` if it was cut.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => {
            let mut out = String::with_capacity(cut + '…'.len_utf8());
            out.push_str(&text[..cut]);
            out.push('…');
            out
        }
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    use super::*;

    const DDG: &str = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad";
    const TORPROJECT: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid";

    fn s(text: &str) -> String {
        text.to_owned()
    }

    /// Accepted inputs: (input, node_id, host, port, kind).
    fn good_cases() -> Vec<(String, String, String, u16, HostKind)> {
        let ddg = format!("{DDG}.onion");
        let tp = format!("{TORPROJECT}.onion");
        let mut cases = vec![
            (
                ddg.clone(),
                format!("{ddg}:5222"),
                ddg.clone(),
                5222,
                HostKind::Onion,
            ),
            (
                format!("{ddg}:5222"),
                format!("{ddg}:5222"),
                ddg.clone(),
                5222,
                HostKind::Onion,
            ),
            (
                format!("{tp}:80"),
                format!("{tp}:80"),
                tp.clone(),
                80,
                HostKind::Onion,
            ),
            (
                ddg.to_ascii_uppercase(),
                format!("{ddg}:5222"),
                ddg.clone(),
                5222,
                HostKind::Onion,
            ),
            (
                format!("{DDG}.OnIoN:00443"),
                format!("{ddg}:443"),
                ddg.clone(),
                443,
                HostKind::Onion,
            ),
            (
                format!("{ddg}:65535"),
                format!("{ddg}:65535"),
                ddg.clone(),
                65535,
                HostKind::Onion,
            ),
            (
                format!("{ddg}:1"),
                format!("{ddg}:1"),
                ddg.clone(),
                1,
                HostKind::Onion,
            ),
        ];
        let simple: &[(&str, &str, &str, u16, HostKind)] = &[
            (
                "example.com",
                "example.com:5222",
                "example.com",
                5222,
                HostKind::DnsName,
            ),
            (
                "Example.COM:8080",
                "example.com:8080",
                "example.com",
                8080,
                HostKind::DnsName,
            ),
            (
                "localhost",
                "localhost:5222",
                "localhost",
                5222,
                HostKind::DnsName,
            ),
            (
                "my_host-1.example:0000000000000000000000000000000000080",
                "my_host-1.example:80",
                "my_host-1.example",
                80,
                HostKind::DnsName,
            ),
            (
                "1.2.3.4a",
                "1.2.3.4a:5222",
                "1.2.3.4a",
                5222,
                HostKind::DnsName,
            ),
            ("onion", "onion:5222", "onion", 5222, HostKind::DnsName),
            ("1.2.3.4", "1.2.3.4:5222", "1.2.3.4", 5222, HostKind::Ipv4),
            ("127.0.0.1:9", "127.0.0.1:9", "127.0.0.1", 9, HostKind::Ipv4),
            (
                "255.255.255.255:65535",
                "255.255.255.255:65535",
                "255.255.255.255",
                65535,
                HostKind::Ipv4,
            ),
            ("[::1]", "[::1]:5222", "::1", 5222, HostKind::Ipv6),
            ("[::1]:5222", "[::1]:5222", "::1", 5222, HostKind::Ipv6),
            (
                "[2001:DB8:0:0:0:0:0:1]:443",
                "[2001:db8::1]:443",
                "2001:db8::1",
                443,
                HostKind::Ipv6,
            ),
            (
                "[::ffff:1.2.3.4]:7",
                "[::ffff:1.2.3.4]:7",
                "::ffff:1.2.3.4",
                7,
                HostKind::Ipv6,
            ),
        ];
        cases.extend(
            simple
                .iter()
                .map(|&(i, n, h, p, k)| (s(i), s(n), s(h), p, k)),
        );
        // A host of exactly 255 bytes (four labels of 63 bytes plus dots).
        let long = ["a".repeat(63).as_str(); 4].join(".");
        assert_eq!(long.len(), 255);
        cases.push((
            long.clone(),
            format!("{long}:5222"),
            long,
            5222,
            HostKind::DnsName,
        ));
        cases
    }

    fn bad_cases() -> Vec<(String, AddrError)> {
        use AddrError as E;
        use OnionError as O;
        let ddg = format!("{DDG}.onion");
        let mut flipped = DDG.to_owned();
        // Change the last character (part of checksum/version bits).
        flipped.replace_range(55.., "a");
        let mut checksum_flip = DDG.to_owned();
        // Character 52 holds checksum bits only.
        let c = if &checksum_flip[52..53] == "a" {
            "b"
        } else {
            "a"
        };
        checksum_flip.replace_range(52..53, c);
        let v4 = crate::onion::encode_v3(&[42u8; 32], 4);
        let t = |x: &str| x.to_owned();
        let mut cases: Vec<(String, AddrError)> = vec![
            (t(""), E::Empty),
            (t(" x.onion"), E::WhitespaceOrControl { ch: ' ', pos: 0 }),
            (
                t("example.com\n"),
                E::WhitespaceOrControl { ch: '\n', pos: 11 },
            ),
            (t("a\tb"), E::WhitespaceOrControl { ch: '\t', pos: 1 }),
            (t("a\u{0}b"), E::WhitespaceOrControl { ch: '\0', pos: 1 }),
            (
                t("é\u{a0}"),
                E::WhitespaceOrControl {
                    ch: '\u{a0}',
                    pos: 2,
                },
            ),
            (
                t("example.com: 80"),
                E::WhitespaceOrControl { ch: ' ', pos: 12 },
            ),
            (
                t("http://example.com"),
                E::LooksLikeUrl {
                    text: t("http://example.com"),
                },
            ),
            (
                format!("tcp://{ddg}:5222"),
                E::LooksLikeUrl {
                    text: excerpt(&format!("tcp://{ddg}:5222")),
                },
            ),
            (t("example.com/x"), E::ForbiddenChar { ch: '/', pos: 11 }),
            (t("user@example.com"), E::ForbiddenChar { ch: '@', pos: 4 }),
            (t("a\\b"), E::ForbiddenChar { ch: '\\', pos: 1 }),
            (t("a[b]"), E::UnexpectedBracket { ch: '[', pos: 1 }),
            (t("::1]:5222"), E::UnexpectedBracket { ch: ']', pos: 3 }),
            (t("::1"), E::UnbracketedIpv6 { text: t("::1") }),
            (
                t("2001:db8::1"),
                E::UnbracketedIpv6 {
                    text: t("2001:db8::1"),
                },
            ),
            (t("a:b:c"), E::UnbracketedIpv6 { text: t("a:b:c") }),
            (t("[::1"), E::UnclosedBracket),
            (t("["), E::UnclosedBracket),
            (t("[]"), E::EmptyHost),
            (t("[]:5222"), E::EmptyHost),
            (
                t("[fe80::1%eth0]"),
                E::Ipv6ZoneId {
                    text: t("fe80::1%eth0"),
                },
            ),
            (
                t("[fe80::1%25eth0]:5222"),
                E::Ipv6ZoneId {
                    text: t("fe80::1%25eth0"),
                },
            ),
            (t("[1.2.3.4]"), E::InvalidIpv6 { text: t("1.2.3.4") }),
            (
                t("[example.com]:80"),
                E::InvalidIpv6 {
                    text: t("example.com"),
                },
            ),
            (t("[::1]x"), E::TrailingAfterBracket { text: t("x") }),
            (t("[::1]]"), E::TrailingAfterBracket { text: t("]") }),
            (t("[::1]5222"), E::TrailingAfterBracket { text: t("5222") }),
            (t("[::1]:"), E::EmptyPort),
            (t("[::1]:x"), E::InvalidPort { text: t("x") }),
            (t(":5222"), E::EmptyHost),
            (t(":"), E::EmptyHost),
            (t("host:"), E::EmptyPort),
            (t("host:+80"), E::InvalidPort { text: t("+80") }),
            (t("host:-1"), E::InvalidPort { text: t("-1") }),
            (t("host:8o"), E::InvalidPort { text: t("8o") }),
            (t("host:٣"), E::InvalidPort { text: t("٣") }),
            (t("host:0"), E::PortOutOfRange { text: t("0") }),
            (t("host:000"), E::PortOutOfRange { text: t("000") }),
            (t("host:65536"), E::PortOutOfRange { text: t("65536") }),
            (t("host:99999"), E::PortOutOfRange { text: t("99999") }),
            (
                t("host:18446744073709551617"),
                E::PortOutOfRange {
                    text: t("18446744073709551617"),
                },
            ),
            (
                t("256.1.1.1"),
                E::InvalidIpv4 {
                    text: t("256.1.1.1"),
                },
            ),
            (t("1.2.3"), E::InvalidIpv4 { text: t("1.2.3") }),
            (
                t("01.2.3.4"),
                E::InvalidIpv4 {
                    text: t("01.2.3.4"),
                },
            ),
            (
                t("1.2.3.4."),
                E::InvalidIpv4 {
                    text: t("1.2.3.4."),
                },
            ),
            (t("1234"), E::InvalidIpv4 { text: t("1234") }),
            (
                t(".example.com"),
                E::EmptyLabel {
                    text: t(".example.com"),
                },
            ),
            (
                t("example.com."),
                E::EmptyLabel {
                    text: t("example.com."),
                },
            ),
            (
                t("example..com"),
                E::EmptyLabel {
                    text: t("example..com"),
                },
            ),
            (t("."), E::InvalidIpv4 { text: t(".") }),
            (t(".onion"), E::EmptyLabel { text: t(".onion") }),
            (
                format!("{ddg}."),
                E::EmptyLabel {
                    text: format!("{ddg}."),
                },
            ),
            (
                format!("{}.com", "a".repeat(64)),
                E::LabelTooLong { len: 64 },
            ),
            (
                format!("x.{}", "b".repeat(100)),
                E::LabelTooLong { len: 100 },
            ),
            (t("bücher.de"), E::InvalidHostChar { ch: 'ü', pos: 1 }),
            (t("exa%mple.com"), E::InvalidHostChar { ch: '%', pos: 3 }),
            (t("a*b:80"), E::InvalidHostChar { ch: '*', pos: 1 }),
            (
                t("ex\u{200b}ample"),
                E::InvalidHostChar {
                    ch: '\u{200b}',
                    pos: 2,
                },
            ),
            (t("x.onion"), E::InvalidOnion(O::WrongLength { len: 1 })),
            (
                format!("{}.onion", &DDG[1..]),
                E::InvalidOnion(O::WrongLength { len: 55 }),
            ),
            (
                format!("{DDG}a.onion"),
                E::InvalidOnion(O::WrongLength { len: 57 }),
            ),
            (
                t("expyuzz4wqqyqhjn.onion"),
                E::InvalidOnion(O::V2NotSupported),
            ),
            (
                t("EXPYUZZ4WQQYQHJN.ONION:80"),
                E::InvalidOnion(O::V2NotSupported),
            ),
            (
                format!("{}1.onion", &DDG[1..]),
                E::InvalidOnion(O::InvalidBase32 { ch: '1' }),
            ),
            (
                format!("{}8.onion", &DDG[1..]),
                E::InvalidOnion(O::InvalidBase32 { ch: '8' }),
            ),
            (
                format!("{checksum_flip}.onion"),
                E::InvalidOnion(O::BadChecksum),
            ),
            (v4, E::InvalidOnion(O::UnsupportedVersion { version: 4 })),
            (format!("www.{ddg}"), E::InvalidOnion(O::Subdomain)),
            (format!("{ddg}:0"), E::PortOutOfRange { text: t("0") }),
            ("a".repeat(256), E::HostTooLong { len: 256 }),
        ];
        // The last base32 character carries the low version bits; changing it
        // gives some error (version or checksum), never success.
        let last = ServerAddr::parse(&format!("{flipped}.onion")).unwrap_err();
        assert!(
            matches!(
                last,
                E::InvalidOnion(O::UnsupportedVersion { .. } | O::BadChecksum)
            ),
            "{last:?}"
        );
        cases.push((
            format!("{}:{}", "9".repeat(300), "1".repeat(2)),
            E::HostTooLong { len: 300 },
        ));
        cases
    }

    #[test]
    fn table_of_good_inputs() {
        let cases = good_cases();
        assert!(cases.len() >= 20);
        for (input, node_id, host, port, kind) in cases {
            let addr = ServerAddr::parse(&input)
                .unwrap_or_else(|e| panic!("{input:?} should parse, got {e}"));
            assert_eq!(addr.node_id(), node_id, "{input:?}");
            assert_eq!(addr.host(), host, "{input:?}");
            assert_eq!(addr.port(), port, "{input:?}");
            assert_eq!(addr.kind(), kind, "{input:?}");
            assert_eq!(addr.is_onion(), kind == HostKind::Onion, "{input:?}");
            assert_eq!(addr.to_string(), node_id, "{input:?}");
            assert_eq!(input.parse::<ServerAddr>().as_ref(), Ok(&addr));
            // Round trip through the canonical form.
            assert_eq!(ServerAddr::parse(&addr.to_string()), Ok(addr.clone()));
            match kind {
                HostKind::Ipv4 | HostKind::Ipv6 => {
                    let ip = addr.ip().expect("IP literal");
                    assert_eq!(ip, host.parse::<IpAddr>().unwrap());
                    assert_eq!(kind == HostKind::Ipv6, ip.is_ipv6());
                }
                HostKind::Onion | HostKind::DnsName => assert_eq!(addr.ip(), None),
            }
        }
    }

    #[test]
    fn table_of_bad_inputs() {
        let cases = bad_cases();
        assert!(cases.len() >= 40);
        for (input, expected) in cases {
            let got = ServerAddr::parse(&input);
            assert_eq!(got, Err(expected), "input {input:?}");
            let msg = got.unwrap_err().to_string();
            assert!(!msg.is_empty());
            assert!(msg.chars().count() < 250, "message too long: {msg}");
        }
    }

    #[test]
    fn messages_say_what_is_wrong() {
        let msg = |s: &str| ServerAddr::parse(s).unwrap_err().to_string();
        assert_eq!(msg(""), "server address is empty");
        assert!(msg("a b").contains("' ' at byte 1"));
        assert!(msg("https://x.onion").contains("write host:port, not a URL"));
        assert!(msg("::1").contains("[::1]:5222"));
        assert!(msg("256.1.1.1").contains("\"256.1.1.1\" is not a valid IPv4 address"));
        assert!(msg("host:70000").contains("port 70000 is out of range"));
        assert!(
            msg("expyuzz4wqqyqhjn.onion")
                .contains("v2 onion addresses are no longer supported by Tor")
        );
        assert!(msg("bücher.de").contains("'ü' at byte 1"));
        assert!(msg("bücher.de").contains("punycode"));
        assert!(msg(&format!("www.{DDG}.onion")).contains("subdomains"));
        assert!(msg("x.onion").contains("has 1 characters before \".onion\""));
    }

    #[test]
    fn error_text_is_truncated() {
        let long = format!("{}:{}", "a".repeat(10), "x".repeat(1000));
        let err = ServerAddr::parse(&long).unwrap_err();
        let AddrError::InvalidPort { text } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(text.chars().count(), EXCERPT_CHARS + 1);
        assert!(text.ends_with('…'));
        assert!(err.to_string().len() < 120);
        // Cutting never splits a multi-byte character.
        let wide = format!("h:{}", "ü".repeat(100));
        let err = ServerAddr::parse(&wide).unwrap_err();
        assert_eq!(
            err,
            AddrError::InvalidPort {
                text: format!("{}…", "ü".repeat(EXCERPT_CHARS))
            }
        );
    }

    #[test]
    fn upper_case_onion_is_lower_cased_and_equal() {
        let lower = ServerAddr::parse(&format!("{DDG}.onion")).unwrap();
        let upper = ServerAddr::parse(&format!("{}.ONION:5222", DDG.to_ascii_uppercase())).unwrap();
        assert_eq!(upper.host(), format!("{DDG}.onion"));
        assert_eq!(lower, upper);
        let set: HashSet<ServerAddr> = [lower, upper].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn short_and_long_forms_are_equal() {
        // "x.onion" vs "X.onion:5222", with a real x.
        let a = ServerAddr::parse(&format!("{TORPROJECT}.onion")).unwrap();
        let mut upper_first = TORPROJECT.to_owned();
        upper_first.make_ascii_uppercase();
        let b = ServerAddr::parse(&format!("{upper_first}.onion:5222")).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            ServerAddr::parse("Example.com").unwrap(),
            ServerAddr::parse("example.COM:05222").unwrap()
        );
        assert_eq!(
            ServerAddr::parse("[0:0::1]").unwrap(),
            ServerAddr::parse("[::1]:5222").unwrap()
        );
        assert_ne!(
            ServerAddr::parse("example.com:1").unwrap(),
            ServerAddr::parse("example.com:2").unwrap()
        );
    }

    #[test]
    fn node_id_for_every_kind() {
        let id = |s: &str| ServerAddr::parse(s).unwrap().node_id().to_owned();
        assert_eq!(id(&format!("{DDG}.onion")), format!("{DDG}.onion:5222"));
        assert_eq!(id("Dir.Example.org:80"), "dir.example.org:80");
        assert_eq!(id("10.0.0.1"), "10.0.0.1:5222");
        assert_eq!(id("[::1]"), "[::1]:5222");
        assert_eq!(id("[2001:db8:0::0:1]:06"), "[2001:db8::1]:6");
    }

    #[test]
    fn debug_and_display() {
        let a = ServerAddr::parse("x.example:1").unwrap();
        assert_eq!(format!("{a:?}"), "ServerAddr(\"x.example:1\")");
        assert_eq!(format!("{a}"), "x.example:1");
    }

    #[test]
    fn flipped_checksum_character_is_bad_checksum() {
        // Flip one character in the checksum bits of a real address.
        let mut chars: Vec<char> = TORPROJECT.chars().collect();
        chars[53] = if chars[53] == 'q' { 'r' } else { 'q' };
        let bad: String = chars.into_iter().collect();
        assert_eq!(
            ServerAddr::parse(&format!("{bad}.onion")),
            Err(AddrError::InvalidOnion(OnionError::BadChecksum))
        );
        // Any single change to the key part is caught too.
        let mut chars: Vec<char> = DDG.chars().collect();
        chars[0] = 'e';
        let bad: String = chars.into_iter().collect();
        assert_eq!(
            ServerAddr::parse(&format!("{bad}.onion")),
            Err(AddrError::InvalidOnion(OnionError::BadChecksum))
        );
    }

    #[test]
    fn generated_addresses_parse() {
        for seed in 0u8..32 {
            let key = [seed.wrapping_mul(37); 32];
            let addr = onion::encode_v3(&key, 3);
            let parsed = ServerAddr::parse(&addr).unwrap();
            assert!(parsed.is_onion());
            assert_eq!(parsed.host(), addr);
            let v4 = onion::encode_v3(&key, 4);
            assert_eq!(
                ServerAddr::parse(&v4),
                Err(AddrError::InvalidOnion(OnionError::UnsupportedVersion {
                    version: 4
                }))
            );
        }
    }

    #[test]
    fn huge_inputs_fail_fast() {
        let mb = 1 << 20;
        let inputs = [
            "a".repeat(mb),
            format!("a:{}", "9".repeat(mb)),
            format!("a:{}", "0".repeat(mb)),
            ":".repeat(mb),
            "[".repeat(mb),
            format!("[{}]", "1".repeat(mb)),
            format!("[::1]:{}", "5".repeat(mb)),
            ".".repeat(mb),
            "1.".repeat(mb / 2),
            "é".repeat(mb / 2),
            format!("{}.onion", "a".repeat(mb)),
            format!("{}://", "a".repeat(mb)),
        ];
        let start = Instant::now();
        for input in &inputs {
            let err = ServerAddr::parse(input).unwrap_err();
            assert!(err.to_string().len() < 300, "{err}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "took {:?}",
            start.elapsed()
        );
        // Leading zeros are allowed, however many.
        let port = format!("h:{}80", "0".repeat(mb));
        assert_eq!(ServerAddr::parse(&port).unwrap().node_id(), "h:80");
    }

    #[test]
    fn multibyte_utf8_never_panics() {
        let pieces = [
            "é", "ü", "€", "𝄞", "\u{200b}", "\u{202e}", "٣", "日本", "\u{301}",
        ];
        let templates = [
            "{}", "{}.onion", "a{}:80", "a:{}", "[{}]", "[::1]{}", "[::1]:{}", "{}[::1]", "a.{}.b",
            "1.2.3.{}",
        ];
        let onion = format!("{DDG}.onion");
        for piece in pieces {
            for template in templates {
                let input = template.replace("{}", piece);
                assert!(ServerAddr::parse(&input).is_err(), "{input:?}");
            }
            // Insert at every char boundary of a valid address.
            for (i, _) in onion.char_indices().chain([(onion.len(), ' ')]) {
                let mut input = onion.clone();
                input.insert_str(i, piece);
                let _ = ServerAddr::parse(&input);
            }
            let long = piece.repeat(300);
            let _ = ServerAddr::parse(&long);
            let _ = ServerAddr::parse(&format!("{long}.onion"));
            let _ = ServerAddr::parse(&format!("x:{long}"));
        }
        // A 56-character label with a multi-byte character (57+ bytes).
        let label = format!("{}é", &DDG[..55]);
        assert_eq!(
            ServerAddr::parse(&format!("{label}.onion")),
            Err(AddrError::InvalidHostChar { ch: 'é', pos: 55 })
        );
    }

    #[test]
    fn every_accepted_input_round_trips() {
        let mut inputs: Vec<String> = good_cases().into_iter().map(|c| c.0).collect();
        inputs.extend(bad_cases().into_iter().map(|c| c.0));
        // Mutations of good inputs: whatever is accepted must round-trip.
        let extra: Vec<String> = inputs
            .iter()
            .flat_map(|s| {
                [
                    s.to_ascii_uppercase(),
                    format!("{s}:7"),
                    format!("{s}:007"),
                    format!("[{s}]"),
                ]
            })
            .collect();
        inputs.extend(extra);
        let mut accepted = 0;
        for input in &inputs {
            if let Ok(a) = ServerAddr::parse(input) {
                accepted += 1;
                assert_eq!(
                    ServerAddr::parse(&a.to_string()),
                    Ok(a.clone()),
                    "{input:?}"
                );
                assert_eq!(a.node_id(), a.to_string());
            }
        }
        assert!(accepted >= 40, "only {accepted} accepted");
    }

    #[test]
    fn compact_representation() {
        assert!(std::mem::size_of::<ServerAddr>() <= 24);
        assert_eq!(
            std::mem::size_of::<Option<ServerAddr>>(),
            std::mem::size_of::<ServerAddr>()
        );
        let a = ServerAddr::parse(&format!("{DDG}.onion")).unwrap();
        // Heap part: 56 + ".onion" + ":5222".
        assert_eq!(a.node_id().len(), 67);
    }

    #[test]
    fn port_parsing_edges() {
        assert_eq!(parse_port("1"), Ok(1));
        assert_eq!(parse_port("65535"), Ok(65535));
        assert_eq!(parse_port("0065535"), Ok(65535));
        assert!(parse_port("65536").is_err());
        assert!(parse_port("100000").is_err());
        assert!(parse_port(&"9".repeat(40)).is_err());
        for n in [0u16, 1, 9, 10, 99, 100, 999, 1000, 9999, 10000, 65535] {
            let mut out = String::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string());
            assert_eq!(decimal_len(n), out.len());
        }
    }
}
