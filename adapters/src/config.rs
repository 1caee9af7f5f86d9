//! The pool's configuration: the core's settings plus where the proxy is
//! and how to route.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use dirpool_core::PoolConfig;

/// Tor's default SocksPort.
pub const DEFAULT_PROXY: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9050);

/// Everything the pool is told up front.
///
/// ```
/// use dirpool::Config;
/// use dirpool_core::IsolationScope;
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
    /// not each directory's. Default 10 s.
    pub proxy_timeout: Duration,
    /// How long a connected or disconnected hook may run before it is
    /// dropped and reported ([`PoolEvent::HookTimedOut`](crate::PoolEvent::HookTimedOut)).
    /// Default 10 s.
    pub hook_timeout: Duration,
}

impl Config {
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
        }
    }
}
