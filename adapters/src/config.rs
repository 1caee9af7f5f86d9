//! The pool's configuration: the core's settings plus where the proxy is
//! and how to route.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use dirpool_core::{IsolationScope, PoolConfig, SocksCredentials};

/// Tor's default SocksPort.
pub const DEFAULT_PROXY: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9050);

/// Everything the pool is told up front.
///
/// ```
/// use dirpool::Config;
/// use dirpool::IsolationScope;
///
/// let mut config = Config::new(["duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion"]);
/// config.pool.isolation = IsolationScope::PerCategory;
/// config.proxy = "127.0.0.1:9150".parse().unwrap();
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Servers, timeouts, isolation, maintenance policy.
    pub pool: PoolConfig,
    /// The SOCKS5 proxy (Tor's SocksPort). Default 127.0.0.1:9050.
    pub proxy: SocketAddr,
    /// Connect to non-onion IP hosts directly instead of through the proxy,
    /// as the original does for local and regtest setups. Off by default:
    /// it bypasses Tor.
    pub direct_clearnet: bool,
    /// How long the proxy may take to answer our SOCKS greeting (Tor
    /// answers at once; only the CONNECT reply waits for the circuit). A
    /// proxy that accepts TCP and stays silent past this is a pool-wide
    /// fault ([`PoolEvent::ProxyUnreachable`](crate::PoolEvent::ProxyUnreachable)),
    /// not each directory's. Default 10 s; the pool uses at most half the
    /// connection timeout, so a hung proxy is found before any dial times
    /// out and is never blamed on a directory. Through an in-process Tor
    /// (`PoolBuilder::arti`, feature `arti`):
    /// how long a dial waits for Tor to finish bootstrapping.
    pub proxy_timeout: Duration,
    /// How long a connected or disconnected hook may run before it is
    /// dropped and reported ([`PoolEvent::HookTimedOut`](crate::PoolEvent::HookTimedOut)).
    /// Default 10 s.
    pub hook_timeout: Duration,
    /// The fixed username and password of a proxy that requires them
    /// (RFC 1929), e.g. a SOCKS server in front of Tor. Default `None`.
    ///
    /// Sent on every dial through the proxy (directories, and
    /// [`peer_credentials`](crate::DirectoryPool::peer_credentials) for
    /// peers), and checked once up front by the pool's proxy probe: a proxy
    /// that refuses the pair fails every dial with
    /// [`DialError::ProxyAuthRejected`](crate::DialError::ProxyAuthRejected),
    /// which names the username, never the password. The password is a
    /// [`Password`](crate::Password): `Debug` shows `<redacted>`.
    ///
    /// **Not combined with stream isolation.** Tor's `IsolateSOCKSAuth`
    /// isolates by the (username, password) pair, and Tor itself checks
    /// neither (its SOCKS port ignores credentials except as an isolation
    /// key). A proxy that checks credentials is therefore another program,
    /// which accepts exactly its one pair and opens its own connection
    /// onwards: varying the pair per category or server would be refused,
    /// and the pair would not reach Tor anyway. So `proxy_auth` together
    /// with [`pool.isolation`](PoolConfig::isolation) other than
    /// [`IsolationScope::Off`] is the typed
    /// [`ConfigError::ProxyAuthWithIsolation`](crate::ConfigError::ProxyAuthWithIsolation)
    /// rather than isolation silently lost. To isolate behind such a proxy,
    /// configure the Tor it forwards to (e.g. `IsolateDestAddr` on its
    /// `SocksPort` gives each directory its own circuits).
    ///
    /// ```
    /// use dirpool::{Config, SocksCredentials};
    ///
    /// let mut config = Config::new(["duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion"]);
    /// config.proxy_auth = Some(SocksCredentials::new("alice", "correct horse"));
    /// assert!(config.validate().is_ok());
    /// assert!(!format!("{config:?}").contains("correct horse"));
    /// ```
    pub proxy_auth: Option<SocksCredentials>,
}

/// The longest `proxy_timeout` or `hook_timeout` accepted: a year, as
/// every duration of the core.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

impl Config {
    /// Checks every setting: the core's, then the adapters' own.
    ///
    /// # Errors
    /// [`ConfigError`](crate::ConfigError) naming the first field out of
    /// range; [`ConfigError::Credentials`](crate::ConfigError::Credentials)
    /// for a `proxy_auth` a proxy cannot take;
    /// [`ConfigError::ProxyAuthWithIsolation`](crate::ConfigError::ProxyAuthWithIsolation)
    /// for `proxy_auth` with isolation on.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        self.pool.validate()?;
        for (field, value) in [
            ("proxy_timeout", self.proxy_timeout),
            ("hook_timeout", self.hook_timeout),
        ] {
            if value.is_zero() || value > MAX_TIMEOUT {
                return Err(crate::ConfigError::Timeout {
                    field,
                    value,
                    max: MAX_TIMEOUT,
                });
            }
        }
        if let Some(auth) = &self.proxy_auth {
            crate::socks::validate_credentials(auth.username(), auth.password().expose())?;
            if self.pool.isolation != IsolationScope::Off {
                return Err(crate::ConfigError::ProxyAuthWithIsolation {
                    scope: self.pool.isolation,
                });
            }
        }
        Ok(())
    }

    /// A configuration with these servers and every default.
    pub fn new<I, S>(servers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            pool: PoolConfig::new(servers),
            proxy: DEFAULT_PROXY,
            direct_clearnet: false,
            proxy_timeout: Duration::from_secs(10),
            hook_timeout: Duration::from_secs(10),
            proxy_auth: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_auth_is_checked_and_refused_with_isolation() {
        let mut base = Config::new(["127.0.0.1:5222"]);
        base.proxy_auth = Some(SocksCredentials::new("alice", "s3cret-pass"));
        assert!(base.validate().is_ok());
        for scope in [IsolationScope::PerCategory, IsolationScope::PerServer] {
            let mut c = base.clone();
            c.pool.isolation = scope;
            let err = c.validate().unwrap_err();
            assert!(
                matches!(err, crate::ConfigError::ProxyAuthWithIsolation { scope: s } if s == scope),
                "{err:?}"
            );
            for text in crate::error::every_text(&err) {
                assert!(!text.contains("s3cret"), "{text}");
            }
        }
        let mut c = base.clone();
        c.proxy_auth = Some(SocksCredentials::new("alice", ""));
        assert!(matches!(
            c.validate(),
            Err(crate::ConfigError::Credentials(
                crate::CredentialsError::Empty("password")
            ))
        ));
        c.proxy_auth = Some(SocksCredentials::new("<torS0X>0", "s3cret-pass"));
        assert!(matches!(
            c.validate(),
            Err(crate::ConfigError::Credentials(
                crate::CredentialsError::ReservedPrefix
            ))
        ));
        for text in [format!("{base:?}"), format!("{base:#?}")] {
            assert!(text.contains("alice"), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
    }

    #[test]
    fn every_timeout_is_checked_and_no_value_panics() {
        let base = Config::new(["127.0.0.1:5222"]);
        assert!(base.validate().is_ok());
        for value in [
            Duration::ZERO,
            Duration::MAX,
            MAX_TIMEOUT + Duration::from_secs(1),
        ] {
            let mut c = base.clone();
            c.hook_timeout = value;
            assert!(
                matches!(
                    c.validate(),
                    Err(crate::ConfigError::Timeout {
                        field: "hook_timeout",
                        ..
                    })
                ),
                "{value:?}"
            );
            let mut c = base.clone();
            c.proxy_timeout = value;
            assert!(
                matches!(
                    c.validate(),
                    Err(crate::ConfigError::Timeout {
                        field: "proxy_timeout",
                        ..
                    })
                ),
                "{value:?}"
            );
            let mut c = base.clone();
            c.pool.connection_timeout = value;
            c.pool.keepalive.probe_timeout = value;
            assert!(
                matches!(c.validate(), Err(crate::ConfigError::Pool(_))),
                "{value:?}"
            );
        }
    }
}
