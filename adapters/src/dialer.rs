//! One dial: isolation check, proxy, SOCKS CONNECT (or arti's connect),
//! handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dirpool_core::{ServerAddr, SocksCredentials};

use crate::error::DialError;
use crate::handshake::{Handshake, HandshakeContext, LinkSignals};
use crate::runtime::{Runtime, before};
use crate::socks;

pub(crate) struct Dialer<H> {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) proxy: SocketAddr,
    /// How long the proxy may take to connect and answer.
    pub(crate) proxy_timeout: Duration,
    pub(crate) direct_clearnet: bool,
    pub(crate) handshake: H,
    /// The proxy was seen to take username/password since it last went down.
    isolation_verified: AtomicBool,
    /// One probe at a time; the others wait for its verdict. Holds the
    /// last probe's failure, if it failed.
    probe_lock: futures::lock::Mutex<Option<DialError>>,
    /// The fixed credentials of a password-protected proxy
    /// ([`Config::proxy_auth`](crate::Config::proxy_auth)): sent on every
    /// proxied dial instead of the (then absent) isolation credentials,
    /// and checked by the probe.
    proxy_auth: Option<SocksCredentials>,
    /// Probes finished so far: a dial that waited while one ran takes its
    /// verdict instead of probing again, so N dials queued behind a hung
    /// proxy cost one `proxy_timeout`, not N (the last of them would
    /// otherwise run out of connection timeout and blame its directory).
    probes_done: AtomicU64,
    /// An in-process Tor client (feature `arti`) instead of the SOCKS
    /// proxy for every proxied dial; `None`: the proxy.
    #[cfg(feature = "arti")]
    arti: Option<crate::arti::ArtiRoute>,
}

impl<H: Handshake> Dialer<H> {
    pub(crate) fn new(
        runtime: Arc<dyn Runtime>,
        proxy: SocketAddr,
        proxy_timeout: Duration,
        direct_clearnet: bool,
        handshake: H,
    ) -> Self {
        Self {
            runtime,
            proxy,
            proxy_timeout,
            direct_clearnet,
            handshake,
            isolation_verified: AtomicBool::new(false),
            probe_lock: futures::lock::Mutex::new(None),
            proxy_auth: None,
            probes_done: AtomicU64::new(0),
            #[cfg(feature = "arti")]
            arti: None,
        }
    }

    /// Bootstraps the route's Tor when it is an in-process one that is not
    /// ready ([`ArtiRoute::bootstrap`](crate::arti::ArtiRoute::bootstrap),
    /// within `proxy_timeout`); nothing for a SOCKS proxy.
    #[cfg(feature = "arti")]
    pub(crate) async fn bootstrap_route(&self) {
        if let Some(arti) = &self.arti {
            arti.bootstrap(&*self.runtime, self.proxy_timeout).await;
        }
    }

    /// Opens every proxied stream through `arti` instead of the proxy.
    #[cfg(feature = "arti")]
    pub(crate) fn with_arti(mut self, arti: Option<crate::arti::ArtiClient>) -> Self {
        self.arti = arti.map(crate::arti::ArtiRoute::new);
        self
    }

    /// Sends `proxy_auth` to the proxy on every proxied dial (a proxy that
    /// requires a fixed username and password). The configuration check
    /// keeps it apart from isolation, so the core's credentials are then
    /// `None`; were both given, the fixed pair wins, being the only one
    /// such a proxy accepts.
    pub(crate) fn with_proxy_auth(mut self, proxy_auth: Option<SocksCredentials>) -> Self {
        self.proxy_auth = proxy_auth;
        self
    }

    /// The fixed proxy credentials, if configured.
    pub(crate) fn proxy_auth(&self) -> Option<&SocksCredentials> {
        self.proxy_auth.as_ref()
    }

    /// Dials `addr` and runs the handshake. Not bounded in time: callers
    /// race it against their deadline (the pool's core aborts it).
    pub(crate) async fn dial(
        &self,
        addr: &ServerAddr,
        credentials: Option<&SocksCredentials>,
        deadline: Instant,
        signals: LinkSignals,
    ) -> Result<H::Client, DialError> {
        // The route, decided once: the isolation check is for proxied dials.
        let direct = socks::route(self.direct_clearnet, addr);
        let stream = self.open(direct, addr, credentials).await?;
        tracing::debug!("tunnel open, handshaking");
        let context =
            HandshakeContext::new(Arc::clone(&self.runtime), deadline).with_signals(signals);
        Ok(self.handshake.handshake(&context, addr, stream).await?)
    }

    /// The stream to `addr` on its route: direct, through arti, or through
    /// the SOCKS proxy.
    async fn open(
        &self,
        direct: Option<std::net::IpAddr>,
        addr: &ServerAddr,
        credentials: Option<&SocksCredentials>,
    ) -> Result<crate::runtime::BoxedStream, DialError> {
        #[cfg(feature = "arti")]
        if let (Some(arti), None) = (&self.arti, direct) {
            return arti
                .open(&*self.runtime, self.proxy_timeout, addr, credentials)
                .await;
        }
        let credentials = self.proxy_auth.as_ref().or(credentials);
        if credentials.is_some() && direct.is_none() {
            self.verify_isolation().await?;
        }
        socks::dial(
            &*self.runtime,
            self.proxy,
            self.proxy_timeout,
            direct,
            addr,
            credentials,
        )
        .await
    }

    /// [`dial`](Self::dial), failing with `TimedOut` at `deadline`.
    pub(crate) async fn dial_until(
        &self,
        addr: &ServerAddr,
        credentials: Option<&SocksCredentials>,
        deadline: Instant,
        timeout: std::time::Duration,
    ) -> Result<H::Client, DialError> {
        let dial = self.dial(addr, credentials, deadline, LinkSignals::detached());
        before(self.runtime.sleep_until(deadline), dial)
            .await
            .unwrap_or(Err(DialError::TimedOut(timeout)))
    }

    /// async-socks5 offers "no auth" beside username/password, and a proxy
    /// that picks it silently drops isolation: before trusting a proxy with
    /// isolated dials, check it accepts a greeting offering only
    /// username/password. With fixed proxy credentials the probe also
    /// authenticates with them, so a wrong password is one pool-wide
    /// verdict ([`DialError::ProxyAuthRejected`]) rather than each dial's.
    async fn verify_isolation(&self) -> Result<(), DialError> {
        if self.isolation_verified.load(Ordering::Acquire) {
            return Ok(());
        }
        let before = self.probes_done.load(Ordering::Acquire);
        let mut last_failure = self.probe_lock.lock().await;
        if self.isolation_verified.load(Ordering::Acquire) {
            return Ok(());
        }
        if self.probes_done.load(Ordering::Acquire) != before {
            if let Some(failure) = last_failure.as_ref() {
                // A probe ended while this dial waited for it: its verdict.
                return Err(replay(self.proxy, failure));
            }
        }
        let result = socks::probe_isolation(
            &*self.runtime,
            self.proxy,
            self.proxy_timeout,
            self.proxy_auth.as_ref(),
        )
        .await;
        self.probes_done.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok(()) => {
                tracing::debug!(proxy = %self.proxy, "proxy supports username/password isolation");
                *last_failure = None;
                self.isolation_verified.store(true, Ordering::Release);
                Ok(())
            }
            Err(error) => {
                *last_failure = Some(replay(self.proxy, &error));
                Err(error)
            }
        }
    }

    /// The proxy went away: the next one may be another program, so check again.
    pub(crate) fn forget_isolation_check(&self) {
        self.isolation_verified.store(false, Ordering::Release);
    }
}

/// The same verdict for another dial: a copy of a proxy probe's failure
/// (its sources kept as text, which is all they are to the user). The
/// probe only fails at the proxy; anything else is shown as the proxy's
/// protocol error, with its text.
fn replay(proxy: std::net::SocketAddr, error: &DialError) -> DialError {
    match error {
        DialError::ProxyUnreachable { proxy, source } => DialError::ProxyUnreachable {
            proxy: *proxy,
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        DialError::ProxyTimedOut { proxy, waited } => DialError::ProxyTimedOut {
            proxy: *proxy,
            waited: *waited,
        },
        DialError::IsolationUnsupported { proxy } => {
            DialError::IsolationUnsupported { proxy: *proxy }
        }
        DialError::ProxyAuthRejected { proxy, username } => DialError::ProxyAuthRejected {
            proxy: *proxy,
            username: username.clone(),
        },
        DialError::ProxyProtocol { proxy, source } => DialError::ProxyProtocol {
            proxy: *proxy,
            source: source.to_string().into(),
        },
        other => DialError::ProxyProtocol {
            proxy,
            source: other.to_string().into(),
        },
    }
}
