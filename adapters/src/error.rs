//! The adapters' errors: rich, with sources, for the user; each dial error
//! also says which [`DialFailure`] kind the core should act on.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use dirpool_core::{AddrError, DialFailure, SocksReply};

/// A boxed error source.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Every way a user can print `error`: its Display and Debug, then each
/// cause's Display (what the no-secrets checks look through).
#[cfg(any(test, feature = "test-kit"))]
pub(crate) fn every_text(error: &(dyn StdError + 'static)) -> Vec<String> {
    let mut texts = vec![error.to_string(), format!("{error:?}")];
    texts.extend(std::iter::successors(error.source(), |&e| e.source()).map(ToString::to_string));
    texts
}

/// Why a dial (proxy, SOCKS CONNECT, handshake) failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The TCP connection to the SOCKS proxy failed: Tor is not running or
    /// not listening yet.
    #[error("SOCKS proxy {proxy} unreachable (is Tor running?)")]
    ProxyUnreachable {
        /// The proxy.
        proxy: SocketAddr,
        /// The connect error.
        #[source]
        source: io::Error,
    },
    /// The proxy broke the SOCKS5 protocol or closed during the exchange.
    #[error("SOCKS proxy {proxy} protocol error")]
    ProxyProtocol {
        /// The proxy.
        proxy: SocketAddr,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// The proxy accepted the TCP connection but sent nothing back to the
    /// SOCKS greeting within its deadline (a hung proxy): a pool-wide fault,
    /// not the directory's.
    #[error("SOCKS proxy {proxy} accepted the connection but did not answer within {waited:?}")]
    ProxyTimedOut {
        /// The proxy.
        proxy: SocketAddr,
        /// How long it was given.
        waited: Duration,
    },
    /// The proxy rejected the username/password: the isolation credentials,
    /// or the fixed ones of [`Config::proxy_auth`](crate::Config::proxy_auth).
    #[error("SOCKS proxy {proxy} rejected the credentials for user {username:?}")]
    ProxyAuthRejected {
        /// The proxy.
        proxy: SocketAddr,
        /// The username offered (the password is never shown).
        username: String,
    },
    /// Isolation is on (or proxy credentials are configured) but the proxy
    /// does not offer username/password authentication: it would silently
    /// drop isolation, so nothing is dialed through it.
    #[error(
        "SOCKS proxy {proxy} does not support username/password authentication, \
         so stream isolation cannot be used (use Tor's SocksPort, or turn isolation off)"
    )]
    IsolationUnsupported {
        /// The proxy.
        proxy: SocketAddr,
    },
    /// The proxy answered CONNECT with an error reply.
    #[error("SOCKS CONNECT to {target} failed: {reply}")]
    Socks {
        /// The target, `host:port`.
        target: String,
        /// The reply code.
        reply: SocksReply,
    },
    /// The dial did not finish within its timeout.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The directory handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// An I/O error after the proxy accepted the connection, or on a direct
    /// connection.
    #[error("I/O error talking to {target}")]
    Io {
        /// The target, `host:port`.
        target: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The address given to `connect_to_directory` is malformed.
    #[error("invalid directory address")]
    InvalidAddress(#[from] AddrError),
    /// The pool dropped the dial (timeout or `close_all`).
    #[error("dial aborted")]
    Aborted,
    /// The in-process Tor client (feature `arti`) was not ready for traffic
    /// and did not finish bootstrapping within `proxy_timeout`: a
    /// pool-wide fault, as a tor daemon that is not listening
    /// ([`DialFailure::ProxyUnreachable`]), never the directory's.
    #[cfg(feature = "arti")]
    #[error("Tor (arti) not ready for traffic after {waited:?}: {readiness}")]
    TorNotReady {
        /// How long the dial waited for the bootstrap.
        waited: Duration,
        /// arti's readiness when the dial gave up.
        readiness: String,
    },
    /// The in-process Tor client (feature `arti`) has stopped: the tokio
    /// runtime it runs on shut down, so nothing of arti runs any more and
    /// no dial through it can succeed until the application gives the pool
    /// a live client. The proxy's fault
    /// ([`DialFailure::ProxyUnreachable`]), never the directory's; a dial
    /// fails with it at once instead of waiting for its deadline.
    #[cfg(feature = "arti")]
    #[error("Tor (arti) has stopped: the tokio runtime it runs on has shut down")]
    TorStopped,
    /// The in-process Tor client (feature `arti`) failed to connect to
    /// `target`; [`failure`](Self::failure) classifies it from `kind`
    /// ([`arti::failure_of`](crate::arti::failure_of)).
    #[cfg(feature = "arti")]
    #[error("Tor (arti) could not connect to {target}: {kind}")]
    Tor {
        /// The target, `host:port`.
        target: String,
        /// arti's classification of the error.
        kind: arti_client::ErrorKind,
        /// arti's error.
        #[source]
        source: arti_client::Error,
    },
}

impl DialError {
    /// The kind of failure, as the core classifies it.
    pub fn failure(&self) -> DialFailure {
        match self {
            Self::ProxyUnreachable { .. } => DialFailure::ProxyUnreachable,
            Self::ProxyProtocol { .. } => DialFailure::ProxyProtocol,
            Self::ProxyTimedOut { .. } => DialFailure::ProxyTimedOut,
            Self::ProxyAuthRejected { .. } => DialFailure::ProxyAuthRejected,
            Self::IsolationUnsupported { .. } => DialFailure::IsolationUnsupported,
            Self::Socks { reply, .. } => DialFailure::Socks(*reply),
            Self::TimedOut(_) => DialFailure::TimedOut,
            Self::Handshake(e) => match e.kind() {
                HandshakeErrorKind::Rejected => DialFailure::HandshakeRejected,
                HandshakeErrorKind::NickInUse => DialFailure::NickInUse,
                HandshakeErrorKind::Protocol => DialFailure::HandshakeProtocol,
                HandshakeErrorKind::Io(kind) => DialFailure::Io(kind),
                HandshakeErrorKind::TimedOut => DialFailure::TimedOut,
            },
            Self::Io { source, .. } => DialFailure::Io(source.kind()),
            Self::InvalidAddress(_) | Self::Aborted => DialFailure::Aborted,
            #[cfg(feature = "arti")]
            Self::TorNotReady { .. } | Self::TorStopped => DialFailure::ProxyUnreachable,
            #[cfg(feature = "arti")]
            Self::Tor { kind, .. } => crate::arti::failure_of(*kind),
        }
    }
}

/// What kind of handshake failure happened.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeErrorKind {
    /// The directory refused us (e.g. `accepted: false`, wrong network,
    /// incompatible protocol version).
    Rejected,
    /// The directory still holds our previous link under the same nick
    /// ("Peer nick already registered"): transient, retried after backoff.
    NickInUse,
    /// The directory's bytes broke the protocol, or it closed the connection
    /// without a reply.
    Protocol,
    /// Reading or writing failed.
    Io(io::ErrorKind),
    /// The handshake's own timeout passed.
    TimedOut,
}

impl fmt::Display for HandshakeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected => f.write_str("directory rejected the handshake"),
            Self::NickInUse => f.write_str("directory still holds our nick (previous link)"),
            Self::Protocol => f.write_str("directory handshake protocol error"),
            Self::Io(kind) => write!(f, "I/O error during the handshake ({kind:?})"),
            Self::TimedOut => f.write_str("handshake timed out"),
        }
    }
}

/// A failed handshake: its kind and its cause.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct HandshakeError {
    kind: HandshakeErrorKind,
    #[source]
    source: BoxError,
}

impl HandshakeError {
    /// A handshake error of `kind` caused by `source`.
    pub fn new(kind: HandshakeErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: source.into(),
        }
    }

    /// The kind.
    pub fn kind(&self) -> HandshakeErrorKind {
        self.kind
    }
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        Self::new(HandshakeErrorKind::Io(e.kind()), e)
    }
}

/// Why a close failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    /// Shutting the stream down failed.
    #[error("closing failed")]
    Io(#[from] io::Error),
}

/// A configuration the pool cannot run with.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting of the core (servers, timeouts, policies).
    #[error(transparent)]
    Pool(#[from] dirpool_core::ConfigError),
    /// A timeout of the adapters (`proxy_timeout`, `hook_timeout`) that is
    /// zero or longer than a year.
    #[error("{field} is {value:?}: it must be more than zero and at most {max:?}")]
    Timeout {
        /// The field.
        field: &'static str,
        /// The value given.
        value: Duration,
        /// The longest allowed.
        max: Duration,
    },
    /// SOCKS credentials that a proxy cannot take.
    #[error("invalid SOCKS credentials: {0}")]
    Credentials(#[from] CredentialsError),
    /// `proxy_auth` (a fixed username and password the proxy checks) with
    /// stream isolation on: a proxy that checks credentials accepts one
    /// pair only, so isolation by credentials cannot pass through it (see
    /// [`Config::proxy_auth`](crate::Config::proxy_auth)).
    #[error(
        "proxy credentials cannot be combined with stream isolation ({scope:?}): a proxy \
         that checks its username and password accepts only that pair; set isolation \
         to Off and isolate in the Tor behind the proxy (e.g. IsolateDestAddr)"
    )]
    ProxyAuthWithIsolation {
        /// The isolation asked for.
        scope: dirpool_core::IsolationScope,
    },
    /// The OS gave no randomness for the isolation token.
    #[error("no OS randomness for the isolation token: {0}")]
    Randomness(String),
}

/// SOCKS5 username/password that cannot be used.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// Empty username or password (RFC 1929 needs 1–255 bytes).
    #[error("the SOCKS {0} is empty (RFC 1929 needs 1 to 255 bytes)")]
    Empty(&'static str),
    /// Longer than 255 bytes.
    #[error("the SOCKS {field} is {len} bytes long (at most 255)")]
    TooLong {
        /// "username" or "password".
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A username starting with `<torS0X>`, which Tor and arti parse as
    /// extended SOCKS parameters.
    #[error(
        "the SOCKS username starts with \"<torS0X>\", which Tor reserves for extended parameters"
    )]
    ReservedPrefix,
}

/// A command the pool could not run.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The pool's driver has stopped (every handle was dropped, or it panicked).
    #[error("the pool's driver is not running")]
    DriverGone,
    /// A task of the pool panicked; the pool closed every link and stopped.
    #[error("the pool stopped after a panic in its {task} task: {message}")]
    Panicked {
        /// Which task ("driver", "dial", "close", "link", "hook").
        task: &'static str,
        /// The panic's message.
        message: String,
    },
    /// A retry policy out of range.
    #[error(transparent)]
    Config(#[from] dirpool_core::ConfigError),
}
