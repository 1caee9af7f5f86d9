//! One dial: isolation check, proxy, SOCKS CONNECT, handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// One probe at a time; the others wait for its verdict.
    probe_lock: futures::lock::Mutex<()>,
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
            probe_lock: futures::lock::Mutex::new(()),
        }
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
        let direct = self.direct_clearnet && !addr.is_onion() && addr.ip().is_some();
        if credentials.is_some() && !direct {
            self.verify_isolation().await?;
        }
        let stream = socks::dial(
            &*self.runtime,
            self.proxy,
            self.proxy_timeout,
            self.direct_clearnet,
            addr,
            credentials,
        )
        .await?;
        tracing::debug!("tunnel open, handshaking");
        let context =
            HandshakeContext::new(Arc::clone(&self.runtime), deadline).with_signals(signals);
        Ok(self.handshake.handshake(&context, addr, stream).await?)
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
    /// username/password.
    async fn verify_isolation(&self) -> Result<(), DialError> {
        if self.isolation_verified.load(Ordering::Acquire) {
            return Ok(());
        }
        let _probe = self.probe_lock.lock().await;
        if self.isolation_verified.load(Ordering::Acquire) {
            return Ok(());
        }
        socks::probe_isolation(&*self.runtime, self.proxy, self.proxy_timeout).await?;
        tracing::debug!(proxy = %self.proxy, "proxy supports username/password isolation");
        self.isolation_verified.store(true, Ordering::Release);
        Ok(())
    }

    /// The proxy went away: the next one may be another program, so check again.
    pub(crate) fn forget_isolation_check(&self) {
        self.isolation_verified.store(false, Ordering::Release);
    }
}
