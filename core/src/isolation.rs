//! SOCKS5 stream isolation: which username/password to send to Tor.
//!
//! Tor's `IsolateSOCKSAuth` (on by default on a `SocksPort`) puts streams
//! that authenticate with different SOCKS5 username/password pairs on
//! different circuits (Tor proposal 171). Following joinmarket-ng, each kind
//! of traffic ([`IsolationCategory`]) has its own username, and one secret
//! per-process password ([`IsolationToken`], hex-encoded) is shared by every
//! category. [`IsolationScope::PerServer`] goes further and gives every
//! directory server its own password.
//!
//! The core never makes randomness: the caller creates the
//! [`IsolationToken`] from 16 bytes of OS randomness at start-up.
//! Secrets ([`IsolationToken`], [`Password`]) never show up in `Debug`
//! output.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use sha3::{Digest, Sha3_256};

use crate::addr::ServerAddr;

/// Domain-separation prefix for per-server passwords.
const PER_SERVER_DOMAIN: &[u8] = b"dirpool per-server isolation\0";

/// What a Tor stream is used for; each category has its own SOCKS5
/// username, so streams of different categories never share a circuit.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IsolationCategory {
    /// Connections to JoinMarket directory servers (`jm-directory`).
    Directory,
    /// Direct connections to other JoinMarket peers (`jm-peer`).
    Peer,
    /// Requests to a mempool / block-explorer API (`jm-mempool`).
    Mempool,
    /// Outgoing notifications, e.g. to a push service (`jm-notification`).
    Notification,
    /// Checks for new software releases (`jm-update-check`).
    UpdateCheck,
    /// Health checks of the Tor connection or of services (`jm-health-check`).
    HealthCheck,
}

impl IsolationCategory {
    /// Every category, in declaration order.
    pub const ALL: [IsolationCategory; 6] = [
        IsolationCategory::Directory,
        IsolationCategory::Peer,
        IsolationCategory::Mempool,
        IsolationCategory::Notification,
        IsolationCategory::UpdateCheck,
        IsolationCategory::HealthCheck,
    ];

    /// The SOCKS5 username for this category (as in joinmarket-ng).
    pub fn username(self) -> &'static str {
        match self {
            IsolationCategory::Directory => "jm-directory",
            IsolationCategory::Peer => "jm-peer",
            IsolationCategory::Mempool => "jm-mempool",
            IsolationCategory::Notification => "jm-notification",
            IsolationCategory::UpdateCheck => "jm-update-check",
            IsolationCategory::HealthCheck => "jm-health-check",
        }
    }
}

/// The per-process isolation secret: 16 random bytes.
///
/// Create it once per process from the OS random-number generator (the core
/// has no randomness of its own). It is the password material sent to the
/// local Tor, so it is never displayed: `Debug` prints
/// `IsolationToken(<redacted>)` and there is no `Display`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IsolationToken([u8; 16]);

impl IsolationToken {
    /// Wraps 16 bytes, which should come from a cryptographic RNG.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        IsolationToken(bytes)
    }
}

impl fmt::Debug for IsolationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IsolationToken(<redacted>)")
    }
}

/// How much stream isolation to ask Tor for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IsolationScope {
    /// No SOCKS5 authentication: Tor may put streams of any kind, to any
    /// server, on the same circuit (subject to its other isolation flags).
    #[default]
    Off,
    /// One username per [`IsolationCategory`] and one password shared by all
    /// categories (what joinmarket-ng does): directory traffic, peer traffic,
    /// API requests and so on use separate circuits, but all directory
    /// connections may share circuits with each other.
    PerCategory,
    /// Like [`PerCategory`](IsolationScope::PerCategory), and in addition
    /// every directory server gets its own password, hence its own circuits.
    ///
    /// A directory server (or an observer correlating circuits, such as a
    /// relay on them) then cannot link our connections to different
    /// directories through a shared circuit. The cost is more circuits for
    /// Tor to build: a slower first connection to each server and more load
    /// on Tor, mostly for non-onion hosts. For onion services Tor builds a
    /// separate rendezvous circuit per service anyway, so the extra cost there
    /// is mostly in descriptor-fetch and introduction circuits.
    PerServer,
}

/// A SOCKS5 password. Secret: `Debug` prints `Password(<redacted>)` and
/// there is no `Display`; [`Password::expose`] is the only way to read it.
///
/// Cloning is cheap (reference-counted, no allocation).
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Arc<str>);

impl Password {
    /// Wraps `text` (crate-internal: a user's password comes in through
    /// [`SocksCredentials::new`]).
    fn new(text: String) -> Self {
        Password(Arc::from(text))
    }

    /// The password text, to put in the SOCKS5 username/password
    /// authentication message. This is the only way to read the secret;
    /// do not log what it returns.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A SOCKS5 username/password pair (RFC 1929): one selecting a Tor isolation
/// group, or the fixed pair a password-protected proxy requires
/// ([`SocksCredentials::new`]). `Debug` shows the username but not the password; cloning does not
/// allocate.
#[derive(Clone, PartialEq, Eq)]
pub struct SocksCredentials {
    /// One of the fixed category usernames, or the user's own.
    username: Cow<'static, str>,
    /// The (secret) password.
    password: Password,
}

impl SocksCredentials {
    /// A fixed username/password pair chosen by the user, for a SOCKS5
    /// proxy that requires one (the adapters' `Config::proxy_auth`). The
    /// password is kept as a [`Password`]: never shown by `Debug`.
    pub fn new(username: impl Into<Cow<'static, str>>, password: impl Into<String>) -> Self {
        SocksCredentials {
            username: username.into(),
            password: Password::new(password.into()),
        }
    }

    /// The SOCKS5 username (not secret, e.g. `jm-directory`).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The SOCKS5 password (secret; see [`Password::expose`]).
    pub fn password(&self) -> &Password {
        &self.password
    }
}

impl fmt::Debug for SocksCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocksCredentials")
            .field("username", &self.username)
            .field("password", &format_args!("<redacted>"))
            .finish()
    }
}

/// Chooses SOCKS5 credentials for each stream according to an
/// [`IsolationScope`] and the process's [`IsolationToken`].
///
/// `Debug` shows only the scope. Cloning does not allocate.
#[derive(Clone)]
pub struct StreamIsolation {
    /// The configured scope.
    scope: IsolationScope,
    /// The per-process secret, for per-server passwords.
    token: IsolationToken,
    /// Hex of `token`, the password shared by all categories.
    shared: Password,
}

impl StreamIsolation {
    /// Creates the isolation policy; `token` should be made once per process
    /// from OS randomness.
    pub fn new(scope: IsolationScope, token: IsolationToken) -> Self {
        StreamIsolation {
            scope,
            token,
            shared: Password::new(hex_lower(&token.0)),
        }
    }

    /// The configured scope.
    pub fn scope(&self) -> IsolationScope {
        self.scope
    }

    /// Credentials for a stream of `category`: `None` when isolation is
    /// [`Off`](IsolationScope::Off), otherwise the category's username with
    /// the shared password (the token in lower-case hex, 32 characters, the
    /// same for every category, as in joinmarket-ng).
    ///
    /// For directory connections use
    /// [`directory_credentials`](Self::directory_credentials), which honours
    /// [`PerServer`](IsolationScope::PerServer).
    pub fn credentials(&self, category: IsolationCategory) -> Option<SocksCredentials> {
        match self.scope {
            IsolationScope::Off => None,
            IsolationScope::PerCategory | IsolationScope::PerServer => Some(SocksCredentials {
                username: Cow::Borrowed(category.username()),
                password: self.shared.clone(),
            }),
        }
    }

    /// Credentials for a connection to the directory server `server`.
    ///
    /// - [`Off`](IsolationScope::Off): `None`.
    /// - [`PerCategory`](IsolationScope::PerCategory): the same as
    ///   `credentials(IsolationCategory::Directory)`.
    /// - [`PerServer`](IsolationScope::PerServer): username `jm-directory`
    ///   and a password derived from the token and the server's
    ///   [`node_id`](ServerAddr::node_id): the first 16 bytes of
    ///   `SHA3-256("dirpool per-server isolation\0" || token || node_id)`
    ///   in lower-case hex (32 characters). Each server thus gets its own
    ///   circuits, the mapping is stable for the life of the process, and
    ///   the password does not reveal the token.
    pub fn directory_credentials(&self, server: &ServerAddr) -> Option<SocksCredentials> {
        match self.scope {
            IsolationScope::Off => None,
            IsolationScope::PerCategory => self.credentials(IsolationCategory::Directory),
            IsolationScope::PerServer => {
                let mut hasher = Sha3_256::new();
                hasher.update(PER_SERVER_DOMAIN);
                hasher.update(self.token.0);
                hasher.update(server.node_id().as_bytes());
                let digest = hasher.finalize();
                Some(SocksCredentials {
                    username: Cow::Borrowed(IsolationCategory::Directory.username()),
                    password: Password::new(hex_lower(&digest[..16])),
                })
            }
        }
    }

    /// Credentials for a direct connection to a JoinMarket peer:
    /// `credentials(IsolationCategory::Peer)` (`None` when isolation is off).
    pub fn peer_credentials(&self) -> Option<SocksCredentials> {
        self.credentials(IsolationCategory::Peer)
    }
}

impl fmt::Debug for StreamIsolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamIsolation")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Lower-case hexadecimal of `bytes`.
fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN_BYTES: [u8; 16] = [
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ];
    const TOKEN_HEX: &str = "00112233445566778899aabbccddeeff";
    const DDG: &str = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion";
    const TORPROJECT: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";

    fn iso(scope: IsolationScope) -> StreamIsolation {
        StreamIsolation::new(scope, IsolationToken::from_bytes(TOKEN_BYTES))
    }

    fn server(s: &str) -> ServerAddr {
        ServerAddr::parse(s).unwrap()
    }

    fn is_lower_hex_32(s: &str) -> bool {
        s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    #[test]
    fn usernames() {
        let names: Vec<&str> = IsolationCategory::ALL
            .iter()
            .map(|c| c.username())
            .collect();
        assert_eq!(
            names,
            [
                "jm-directory",
                "jm-peer",
                "jm-mempool",
                "jm-notification",
                "jm-update-check",
                "jm-health-check",
            ]
        );
    }

    #[test]
    fn off_gives_no_credentials() {
        let iso = iso(IsolationScope::Off);
        assert_eq!(IsolationScope::default(), IsolationScope::Off);
        assert_eq!(iso.scope(), IsolationScope::Off);
        for category in IsolationCategory::ALL {
            assert_eq!(iso.credentials(category), None);
        }
        assert_eq!(iso.directory_credentials(&server(DDG)), None);
        assert_eq!(iso.peer_credentials(), None);
    }

    #[test]
    fn per_category_shares_one_password() {
        let iso = iso(IsolationScope::PerCategory);
        assert_eq!(iso.scope(), IsolationScope::PerCategory);
        let all: Vec<SocksCredentials> = IsolationCategory::ALL
            .iter()
            .map(|&c| iso.credentials(c).unwrap())
            .collect();
        for (creds, category) in all.iter().zip(IsolationCategory::ALL) {
            assert_eq!(creds.username(), category.username());
            assert_eq!(creds.password().expose(), TOKEN_HEX);
            assert!(is_lower_hex_32(creds.password().expose()));
            assert_eq!(creds.password(), all[0].password());
        }
        let mut usernames: Vec<&str> = all.iter().map(SocksCredentials::username).collect();
        usernames.sort_unstable();
        usernames.dedup();
        assert_eq!(usernames.len(), IsolationCategory::ALL.len());

        let dir = iso.directory_credentials(&server(DDG)).unwrap();
        assert_eq!(dir, iso.credentials(IsolationCategory::Directory).unwrap());
        assert_eq!(iso.directory_credentials(&server(TORPROJECT)).unwrap(), dir);
        assert_eq!(
            iso.peer_credentials(),
            iso.credentials(IsolationCategory::Peer)
        );
    }

    #[test]
    fn per_server_passwords() {
        let iso = iso(IsolationScope::PerServer);
        let a = iso.directory_credentials(&server(DDG)).unwrap();
        let a2 = iso.directory_credentials(&server(DDG)).unwrap();
        let a_upper = iso
            .directory_credentials(&server(&DDG.to_ascii_uppercase()))
            .unwrap();
        let b = iso.directory_credentials(&server(TORPROJECT)).unwrap();
        let a_other_port = iso
            .directory_credentials(&server(&format!("{DDG}:5223")))
            .unwrap();
        assert_eq!(a.username(), "jm-directory");
        assert_eq!(b.username(), "jm-directory");
        assert!(is_lower_hex_32(a.password().expose()));
        assert!(is_lower_hex_32(b.password().expose()));
        assert_eq!(a, a2);
        assert_eq!(a, a_upper);
        assert_ne!(a.password(), b.password());
        assert_ne!(a.password(), a_other_port.password());
        assert_ne!(a.password().expose(), TOKEN_HEX);
        assert_ne!(b.password().expose(), TOKEN_HEX);
        // Other categories keep the shared password.
        let peer = iso.peer_credentials().unwrap();
        assert_eq!(peer.username(), "jm-peer");
        assert_eq!(peer.password().expose(), TOKEN_HEX);
        assert_eq!(
            iso.credentials(IsolationCategory::Directory)
                .unwrap()
                .password()
                .expose(),
            TOKEN_HEX
        );
    }

    #[test]
    fn per_server_password_is_sha3_of_domain_token_node_id() {
        let iso = iso(IsolationScope::PerServer);
        let addr = server("example.com:80");
        let mut input = PER_SERVER_DOMAIN.to_vec();
        input.extend_from_slice(&TOKEN_BYTES);
        input.extend_from_slice(b"example.com:80");
        let digest = Sha3_256::digest(&input);
        let expected = hex_lower(&digest[..16]);
        assert_eq!(
            iso.directory_credentials(&addr)
                .unwrap()
                .password()
                .expose(),
            expected
        );
    }

    #[test]
    fn different_tokens_give_different_passwords() {
        let mut other_bytes = TOKEN_BYTES;
        other_bytes[15] ^= 1;
        let other = IsolationToken::from_bytes(other_bytes);
        assert_ne!(other, IsolationToken::from_bytes(TOKEN_BYTES));
        for scope in [IsolationScope::PerCategory, IsolationScope::PerServer] {
            let a = iso(scope);
            let b = StreamIsolation::new(scope, other);
            for category in IsolationCategory::ALL {
                assert_ne!(a.credentials(category), b.credentials(category));
            }
            let s = server(DDG);
            assert_ne!(a.directory_credentials(&s), b.directory_credentials(&s));
            assert_ne!(a.peer_credentials(), b.peer_credentials());
        }
    }

    #[test]
    fn hex_encoding() {
        assert_eq!(hex_lower(&TOKEN_BYTES), TOKEN_HEX);
        assert_eq!(hex_lower(&[]), "");
        assert_eq!(hex_lower(&[0x0a, 0xf0]), "0af0");
    }

    #[test]
    fn debug_output_reveals_no_secret() {
        let token = IsolationToken::from_bytes(TOKEN_BYTES);
        assert_eq!(format!("{token:?}"), "IsolationToken(<redacted>)");
        let mut outputs = vec![format!("{token:?}"), format!("{token:#?}")];
        let mut secrets = vec![TOKEN_HEX.to_owned()];
        for scope in [
            IsolationScope::Off,
            IsolationScope::PerCategory,
            IsolationScope::PerServer,
        ] {
            let iso = StreamIsolation::new(scope, token);
            outputs.push(format!("{iso:?}"));
            outputs.push(format!("{iso:#?}"));
            let creds = IsolationCategory::ALL
                .iter()
                .filter_map(|&c| iso.credentials(c))
                .chain(iso.directory_credentials(&server(DDG)))
                .chain(iso.directory_credentials(&server(TORPROJECT)));
            for c in creds {
                secrets.push(c.password().expose().to_owned());
                outputs.push(format!("{c:?}"));
                outputs.push(format!("{c:#?}"));
                outputs.push(format!("{:?}", c.password()));
                assert!(format!("{c:?}").contains(c.username()));
                assert!(format!("{c:?}").contains("<redacted>"));
                assert_eq!(format!("{:?}", c.password()), "Password(<redacted>)");
            }
        }
        // Per-server passwords were collected too, not only the shared one.
        assert!(secrets.len() > 3);
        for out in &outputs {
            for secret in &secrets {
                assert!(!out.contains(secret.as_str()), "{out} leaks {secret}");
            }
            // Not even a prefix of the token shows up, in any case.
            assert!(!out.to_ascii_lowercase().contains(&TOKEN_HEX[..8]), "{out}");
        }
        assert_eq!(
            format!("{:?}", iso(IsolationScope::PerServer)),
            "StreamIsolation { scope: PerServer, .. }"
        );
    }

    #[test]
    fn fixed_credentials_keep_the_password_secret() {
        let fixed = SocksCredentials::new(String::from("alice"), "hunter2-fixed");
        assert_eq!(fixed.username(), "alice");
        assert_eq!(fixed.password().expose(), "hunter2-fixed");
        assert_eq!(fixed, SocksCredentials::new("alice", "hunter2-fixed"));
        assert_ne!(fixed, SocksCredentials::new("alice", "other"));
        for out in [format!("{fixed:?}"), format!("{fixed:#?}")] {
            assert!(out.contains("alice"), "{out}");
            assert!(!out.contains("hunter2"), "{out}");
        }
    }

    #[test]
    fn clones_share_the_password_allocation() {
        let iso = iso(IsolationScope::PerCategory);
        let a = iso.credentials(IsolationCategory::Directory).unwrap();
        let b = a.clone();
        assert!(std::ptr::eq(
            a.password().expose().as_ptr(),
            b.password().expose().as_ptr()
        ));
        let c = iso.credentials(IsolationCategory::Peer).unwrap();
        assert!(std::ptr::eq(
            a.password().expose().as_ptr(),
            c.password().expose().as_ptr()
        ));
    }
}
