//! Why a dial, a link or a close failed, as the driver reports it.
//!
//! The driver keeps its rich error (with its source chain) for the user; the
//! core only needs to know *what kind* of failure happened, because the kind
//! decides what happens next: a proxy that is down is a pool-wide state and
//! must not burn every server's retry budget, while a refused handshake is
//! that server's own business.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// Why a dial attempt failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DialFailure {
    /// The TCP connection to the SOCKS proxy failed: Tor is not running, not
    /// listening yet, or restarting.
    #[error("SOCKS proxy unreachable (is Tor running?)")]
    ProxyUnreachable,
    /// The proxy answered, but not as a SOCKS5 server should.
    #[error("SOCKS proxy protocol error")]
    ProxyProtocol,
    /// The proxy accepted the TCP connection but sent nothing back to our
    /// SOCKS greeting within its deadline: a hung or overloaded proxy, which
    /// every server would meet the same way.
    #[error("SOCKS proxy accepted the connection but did not answer")]
    ProxyTimedOut,
    /// The proxy rejected our username/password.
    #[error("SOCKS proxy rejected the isolation credentials")]
    ProxyAuthRejected,
    /// The proxy offers no username/password authentication, so stream
    /// isolation cannot be had through it.
    #[error("SOCKS proxy does not support username/password (stream isolation)")]
    IsolationUnsupported,
    /// The proxy answered the CONNECT request with an error reply.
    #[error("SOCKS CONNECT failed: {0}")]
    Socks(SocksReply),
    /// The connection timeout passed before the dial and handshake finished.
    #[error("timed out")]
    TimedOut,
    /// The directory refused our handshake (`accepted: false`, wrong network,
    /// incompatible protocol version).
    #[error("directory rejected the handshake")]
    HandshakeRejected,
    /// The directory still holds a link of ours under the same nick (it has
    /// not noticed yet that our previous link died: joinmarket-ng answers
    /// "Peer nick already registered"). Transient: retried on the backoff,
    /// and it does not count towards `max_retries`.
    #[error("directory still holds our previous link (nick already registered)")]
    NickInUse,
    /// The directory's reply broke the protocol, or it closed the connection
    /// without replying.
    #[error("directory handshake failed")]
    HandshakeProtocol,
    /// An I/O error after the proxy accepted the connection.
    #[error("I/O error: {0:?}")]
    Io(std::io::ErrorKind),
    /// The driver dropped the attempt because the core asked it to
    /// ([`Output::Abort`](crate::Output::Abort)).
    #[error("aborted")]
    Aborted,
}

/// Who a failure is about.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureScope {
    /// The proxy itself: every server would fail the same way right now.
    Proxy,
    /// This one server (or the path to it).
    Server,
}

impl DialFailure {
    /// Whether the failure is about the proxy (pool-wide) or about one server.
    pub fn scope(self) -> FailureScope {
        match self {
            Self::ProxyUnreachable
            | Self::ProxyTimedOut
            | Self::ProxyProtocol
            | Self::ProxyAuthRejected
            | Self::IsolationUnsupported => FailureScope::Proxy,
            _ => FailureScope::Server,
        }
    }

    /// Whether the proxy must have been up and speaking SOCKS for this
    /// failure to happen (it relayed a reply or the directory's bytes).
    pub fn proves_proxy_up(self) -> bool {
        matches!(
            self,
            Self::Socks(_) | Self::HandshakeRejected | Self::HandshakeProtocol | Self::NickInUse
        )
    }

    /// Whether the failure counts towards a server's `max_retries`: a nick
    /// the directory has not released yet is its lag, not the server
    /// failing.
    pub fn counts_towards_give_up(self) -> bool {
        !matches!(self, Self::NickInUse)
    }
}

/// A SOCKS5 reply code (RFC 1928 §6), including Tor's onion-service codes
/// (0xF0–0xF7), which Tor sends on a SocksPort with the `ExtendedErrors` flag.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocksReply {
    /// 0x01: general SOCKS server failure (Tor: also "onion port not listening").
    GeneralFailure,
    /// 0x02: connection not allowed by ruleset.
    NotAllowed,
    /// 0x03: network unreachable.
    NetworkUnreachable,
    /// 0x04: host unreachable.
    HostUnreachable,
    /// 0x05: connection refused (Tor: onion service does not expose that port).
    ConnectionRefused,
    /// 0x06: TTL expired (Tor: also used for timeouts).
    TtlExpired,
    /// 0x07: command not supported.
    CommandNotSupported,
    /// 0x08: address type not supported.
    AddressTypeNotSupported,
    /// 0xF0: onion service descriptor cannot be found (not published, or gone).
    OnionDescriptorNotFound,
    /// 0xF1: onion service descriptor is invalid.
    OnionDescriptorInvalid,
    /// 0xF2: onion service introduction failed.
    OnionIntroFailed,
    /// 0xF3: onion service rendezvous failed.
    OnionRendezvousFailed,
    /// 0xF4: onion service needs client authorization we lack.
    OnionMissingClientAuth,
    /// 0xF5: onion service client authorization is wrong.
    OnionWrongClientAuth,
    /// 0xF6: the onion address is invalid.
    OnionBadAddress,
    /// 0xF7: onion service introduction timed out.
    OnionIntroTimedOut,
    /// Any other non-zero code.
    Other(u8),
}

impl SocksReply {
    /// The reply for a code from the wire. Code 0 (success) is not an error
    /// and maps to `Other(0)`.
    pub fn from_code(code: u8) -> Self {
        match code {
            0x01 => Self::GeneralFailure,
            0x02 => Self::NotAllowed,
            0x03 => Self::NetworkUnreachable,
            0x04 => Self::HostUnreachable,
            0x05 => Self::ConnectionRefused,
            0x06 => Self::TtlExpired,
            0x07 => Self::CommandNotSupported,
            0x08 => Self::AddressTypeNotSupported,
            0xF0 => Self::OnionDescriptorNotFound,
            0xF1 => Self::OnionDescriptorInvalid,
            0xF2 => Self::OnionIntroFailed,
            0xF3 => Self::OnionRendezvousFailed,
            0xF4 => Self::OnionMissingClientAuth,
            0xF5 => Self::OnionWrongClientAuth,
            0xF6 => Self::OnionBadAddress,
            0xF7 => Self::OnionIntroTimedOut,
            other => Self::Other(other),
        }
    }

    /// The code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Self::GeneralFailure => 0x01,
            Self::NotAllowed => 0x02,
            Self::NetworkUnreachable => 0x03,
            Self::HostUnreachable => 0x04,
            Self::ConnectionRefused => 0x05,
            Self::TtlExpired => 0x06,
            Self::CommandNotSupported => 0x07,
            Self::AddressTypeNotSupported => 0x08,
            Self::OnionDescriptorNotFound => 0xF0,
            Self::OnionDescriptorInvalid => 0xF1,
            Self::OnionIntroFailed => 0xF2,
            Self::OnionRendezvousFailed => 0xF3,
            Self::OnionMissingClientAuth => 0xF4,
            Self::OnionWrongClientAuth => 0xF5,
            Self::OnionBadAddress => 0xF6,
            Self::OnionIntroTimedOut => 0xF7,
            Self::Other(code) => code,
        }
    }

    /// Whether this is one of Tor's onion-service codes (0xF0–0xF7).
    pub fn is_onion_error(self) -> bool {
        (0xF0..=0xF7).contains(&self.code())
    }
}

impl fmt::Display for SocksReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::GeneralFailure => "general failure",
            Self::NotAllowed => "connection not allowed by ruleset",
            Self::NetworkUnreachable => "network unreachable",
            Self::HostUnreachable => "host unreachable",
            Self::ConnectionRefused => "connection refused",
            Self::TtlExpired => "TTL expired",
            Self::CommandNotSupported => "command not supported",
            Self::AddressTypeNotSupported => "address type not supported",
            Self::OnionDescriptorNotFound => "onion service descriptor not found",
            Self::OnionDescriptorInvalid => "onion service descriptor invalid",
            Self::OnionIntroFailed => "onion service introduction failed",
            Self::OnionRendezvousFailed => "onion service rendezvous failed",
            Self::OnionMissingClientAuth => "onion service needs client authorization",
            Self::OnionWrongClientAuth => "onion service client authorization wrong",
            Self::OnionBadAddress => "invalid onion address",
            Self::OnionIntroTimedOut => "onion service introduction timed out",
            Self::Other(_) => "unknown reply",
        };
        write!(f, "{text} (0x{:02x})", self.code())
    }
}

/// Why an established link went down.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkLoss {
    /// The directory (or Tor) closed the connection.
    ClosedByPeer,
    /// A read or write failed.
    Io(std::io::ErrorKind),
    /// The directory broke the protocol after the handshake.
    Protocol,
    /// The link stopped answering keepalives: a silent path (the
    /// directory or the Tor circuit to it stopped answering while the
    /// socket stayed open).
    KeepaliveTimeout,
    /// A write did not finish within its deadline: the peer stopped reading.
    WriteTimedOut,
    /// The directory said goodbye on purpose (JoinMarket DISCONNECT, 801).
    DisconnectedByPeer,
    /// The link's own task panicked; the link was dropped.
    Panicked,
}

impl LinkLoss {
    /// Whether the other side ended the link on purpose (it said so),
    /// as opposed to a failure of the link or the path.
    pub fn is_deliberate(self) -> bool {
        matches!(self, Self::DisconnectedByPeer)
    }
}

impl fmt::Display for LinkLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClosedByPeer => f.write_str("closed by peer"),
            Self::Io(kind) => write!(f, "I/O error: {kind:?}"),
            Self::Protocol => f.write_str("protocol error"),
            Self::KeepaliveTimeout => f.write_str("keepalive timed out (silent path)"),
            Self::WriteTimedOut => f.write_str("write timed out (peer stopped reading)"),
            Self::DisconnectedByPeer => f.write_str("disconnected by peer (DISCONNECT)"),
            Self::Panicked => f.write_str("link task panicked"),
        }
    }
}

/// Why closing a link failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum CloseFailure {
    /// The close (or the client's own shutdown) returned an I/O error.
    #[error("I/O error while closing: {0:?}")]
    Io(std::io::ErrorKind),
    /// The client's close hook reported an error of its own.
    #[error("client close failed")]
    Client,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socks_codes_round_trip() {
        for code in 0..=u8::MAX {
            assert_eq!(SocksReply::from_code(code).code(), code);
        }
        assert!(SocksReply::from_code(0xF0).is_onion_error());
        assert!(!SocksReply::from_code(0x05).is_onion_error());
        assert_eq!(
            SocksReply::OnionDescriptorNotFound.to_string(),
            "onion service descriptor not found (0xf0)"
        );
    }

    #[test]
    fn proxy_failures_are_pool_wide() {
        assert_eq!(DialFailure::ProxyUnreachable.scope(), FailureScope::Proxy);
        assert_eq!(DialFailure::TimedOut.scope(), FailureScope::Server);
        assert!(DialFailure::Socks(SocksReply::GeneralFailure).proves_proxy_up());
        assert!(!DialFailure::TimedOut.proves_proxy_up());
    }
}

/// The driver's own account of a dial failure (its rich error, whatever
/// its type), carried through the machine untouched: the driver hands it
/// in with [`Input::DialFinished`](crate::Input::DialFinished) and gets it
/// back in the [`Notification::DialFailed`](crate::Notification::DialFailed)
/// the failure causes, so it keeps nothing beside the machine. The machine
/// decides on the [`DialFailure`] class alone and never looks inside.
///
/// Cheap to clone (one `Arc`); two details are equal when they are the
/// same allocation.
#[derive(Clone)]
pub struct DialDetail(Arc<dyn Any + Send + Sync>);

impl DialDetail {
    /// Wraps the driver's error (or anything else it wants back).
    pub fn new<T: Any + Send + Sync>(detail: T) -> Self {
        Self(Arc::new(detail))
    }

    /// Wraps an error the driver already shares.
    pub fn from_arc<T: Any + Send + Sync>(detail: Arc<T>) -> Self {
        Self(detail)
    }

    /// The detail as the driver's type, if it is one.
    pub fn downcast<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        Arc::clone(&self.0).downcast().ok()
    }
}

impl fmt::Debug for DialDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DialDetail(..)")
    }
}

impl PartialEq for DialDetail {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for DialDetail {}
