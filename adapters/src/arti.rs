//! An in-process Tor client ([arti](https://arti.torproject.org)) as the
//! pool's route to the directories, instead of a tor daemon's SOCKS port
//! (feature `arti`).
//!
//! Hand the pool an [`ArtiClient`] with
//! [`PoolBuilder::arti`](crate::PoolBuilder::arti): every directory's
//! stream is then opened with `TorClient::connect_with_prefs`, and the very
//! same [`Handshake`](crate::Handshake), core, liveness and events run on
//! it. [`Config::proxy`](crate::Config::proxy) and
//! [`Config::proxy_auth`](crate::Config::proxy_auth) are not used;
//! [`Config::proxy_timeout`](crate::Config::proxy_timeout) bounds how long a
//! dial waits for Tor to finish bootstrapping.
//!
//! - **Sharing or owning.** [`ArtiClient::new`] shares the application's
//!   own `TorClient` (any arti runtime); [`ArtiClient::bootstrap`] creates
//!   and bootstraps one from a [`TorClientConfig`] (its state and cache
//!   directories are in that config).
//! - **Isolation.** The isolation credentials the core derives for each
//!   scope ([`IsolationScope`](crate::IsolationScope): per category, per
//!   server) become one arti [`IsolationToken`] each, so two scopes never
//!   share a circuit, exactly as two SOCKS usernames do on Tor's
//!   `IsolateSOCKSAuth`. The credentials of every pool carry the pool's own
//!   random token, so two pools sharing a `TorClient` share no circuit.
//! - **Tor's own state is the proxy's state.** The pool watches
//!   [`ArtiClient::readiness_events`] from its start: while arti reports
//!   it is bootstrapping or blocked the proxy counts as down (one
//!   [`PoolEvent::ProxyUnreachable`](crate::PoolEvent::ProxyUnreachable);
//!   [`PoolHealth::proxy`](crate::PoolHealth::proxy) shows
//!   [`ProxyState::Bootstrapping`](crate::ProxyState::Bootstrapping) or
//!   [`Blocked`](crate::ProxyState::Blocked)) and maintenance dials
//!   nothing; once arti reports ready, `ProxyRecovered` and the servers
//!   that waited are dialed. While arti is not ready the pool asks it to
//!   bootstrap, as a first connect would (one bootstrap at a time, each
//!   given up after `proxy_timeout`, asked again on arti's next change), so
//!   a client made with `create_unbootstrapped` needs nobody else to start
//!   it. A command still dials while arti is not ready: such a dial
//!   waits up to `proxy_timeout` for the bootstrap, then
//!   fails with [`DialError::TorNotReady`] (at once with
//!   [`DialError::TorStopped`] if the tokio runtime arti runs on has shut
//!   down: nothing of arti runs any more), which the
//!   core counts as the proxy being unreachable, never as a directory's
//!   failure. Each change of arti's state is logged once, in the pool's
//!   span (a blockage at warn level, with arti's reason).
//! - **Errors** are classified from arti's [`ErrorKind`] ([`failure_of`]):
//!   an onion whose descriptor is not found is the directory's
//!   ([`SocksReply::OnionDescriptorNotFound`],
//!   as Tor's extended SOCKS reply), a client that is not bootstrapped or
//!   shutting down is the proxy's.
//!
//! # Runtime, TLS and Rust version
//!
//! arti runs on tokio here (its smol runtime is experimental), so the
//! feature turns on dirpool's `tokio` feature. [`ArtiClient::bootstrap`]
//! and [`ArtiClient::new`] must be called inside a tokio runtime; each
//! directory's connect then runs on that runtime, so the pool itself may
//! run on smol or tokio. TLS to the relays is arti's `native-tls` backend
//! (OpenSSL: `libssl-dev` and `pkg-config` to build): unlike arti's
//! `rustls` backend it needs no process-wide `CryptoProvider`, so nothing
//! global is installed behind the application's back. arti needs Rust 1.92.
//!
//! ```no_run
//! # #[cfg(feature = "joinmarket")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use dirpool::arti::{ArtiClient, arti_client::TorClientConfig};
//! use dirpool::joinmarket::{JmConfig, JoinMarketHandshake, Network, NickIdentity};
//! use dirpool::{Config, DirectoryPool};
//! use std::time::Duration;
//!
//! // Inside a tokio runtime: bootstraps arti (default state directories).
//! let tor = ArtiClient::bootstrap(TorClientConfig::default(), Duration::from_secs(120)).await?;
//! let config = Config::new(["duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion:5222"]);
//! let handshake =
//!     JoinMarketHandshake::new(JmConfig::new(NickIdentity::random()?, Network::Mainnet))?;
//! let pool = DirectoryPool::builder(config, handshake).arti(tor).spawn_tokio()?;
//! pool.connect_all_parallel().await?;
//! # Ok(())
//! # }
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arti_client::status::{BootstrapEvents, BootstrapStatus};
use arti_client::{DataStream, StreamPrefs, TorClient};
use dirpool_core::{DialFailure, ProxyReport, ServerAddr, SocksCredentials, SocksReply};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt as _, Stream, StreamExt as _};

pub use arti_client;
pub use arti_client::{ErrorKind, IsolationToken, TorClientConfig};

use crate::error::DialError;
use crate::runtime::{BoxedStream, Runtime, before};

/// A shared handle on an in-process Tor client, for
/// [`PoolBuilder::arti`](crate::PoolBuilder::arti). Cheap to clone; the
/// application may keep a clone to watch Tor's readiness.
#[derive(Clone)]
pub struct ArtiClient {
    tor: Arc<dyn Connector>,
    /// Where each connect runs: the tokio runtime the client was made in,
    /// whose timers arti's futures need, whatever runtime the pool runs on.
    tokio: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for ArtiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtiClient")
            .field("readiness", &self.readiness())
            .finish_non_exhaustive()
    }
}

/// Why [`ArtiClient::bootstrap`] failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ArtiError {
    /// Called outside a tokio runtime.
    #[error("arti needs a tokio runtime: call ArtiClient::bootstrap inside one")]
    NoRuntime(#[source] std::io::Error),
    /// A configuration text arti cannot read or build.
    #[error("invalid arti configuration")]
    Config(#[source] crate::error::BoxError),
    /// Bootstrapping did not finish within the deadline given.
    #[error("arti did not bootstrap within {within:?}")]
    BootstrapTimedOut {
        /// The deadline.
        within: Duration,
    },
    /// arti could not be created or bootstrapped (configuration, state
    /// directory, network).
    #[error("arti failed to bootstrap ({kind})")]
    Bootstrap {
        /// arti's classification.
        kind: ErrorKind,
        /// arti's error.
        #[source]
        source: arti_client::Error,
    },
}

/// Tor's readiness, from arti's bootstrap status: the proxy-wide state the
/// pool's dials depend on.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum TorReadiness {
    /// Still bootstrapping; `progress` from 0 to 1.
    Bootstrapping {
        /// arti's rough estimate of how far it got.
        progress: f32,
    },
    /// Ready: a new connect can start at once.
    Ready,
    /// arti says it is stuck (offline, clock skew, no usable directory…).
    Blocked {
        /// arti's reason, for people.
        reason: String,
    },
}

impl TorReadiness {
    /// What the pool's core makes of it: the one mapping from arti's
    /// state to the proxy's.
    pub(crate) fn report(&self) -> ProxyReport {
        match self {
            Self::Bootstrapping { .. } => ProxyReport::Bootstrapping,
            Self::Ready => ProxyReport::Ready,
            Self::Blocked { .. } => ProxyReport::Blocked,
        }
    }

    fn of(status: &BootstrapStatus) -> Self {
        if status.ready_for_traffic() {
            Self::Ready
        } else if let Some(blockage) = status.blocked() {
            Self::Blocked {
                reason: blockage.to_string(),
            }
        } else {
            Self::Bootstrapping {
                progress: status.as_frac(),
            }
        }
    }
}

impl std::fmt::Display for TorReadiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bootstrapping { progress } => {
                write!(f, "bootstrapping ({:.0} %)", progress * 100.0)
            }
            Self::Ready => f.write_str("ready"),
            Self::Blocked { reason } => write!(f, "blocked: {reason}"),
        }
    }
}

impl ArtiClient {
    /// Shares the application's own `TorClient` (its circuits, guards and
    /// directory cache); the pool's streams are still isolated from the
    /// application's by the pool's own isolation tokens when isolation is
    /// on. Call it inside the tokio runtime the client runs on (outside
    /// one, e.g. with another arti runtime, each connect is polled by the
    /// pool's own runtime, which must then suit `R`).
    pub fn new<R: tor_rtcompat::Runtime>(client: Arc<TorClient<R>>) -> Self {
        Self {
            tor: Arc::new(client),
            tokio: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Creates a `TorClient` on the current tokio runtime from `config`
    /// and bootstraps it, giving up after `within` (a few seconds on the
    /// real network, from empty state directories longer; a filtered
    /// network never answers, hence the deadline). Cancel-safe: dropping
    /// the future drops the half-made client.
    ///
    /// # Errors
    /// [`ArtiError::NoRuntime`] outside a tokio runtime;
    /// [`ArtiError::Bootstrap`] if arti cannot start or bootstrap;
    /// [`ArtiError::BootstrapTimedOut`] if it is not done within `within`.
    pub async fn bootstrap(config: TorClientConfig, within: Duration) -> Result<Self, ArtiError> {
        let runtime = tor_rtcompat::PreferredRuntime::current().map_err(ArtiError::NoRuntime)?;
        let builder = TorClient::with_runtime(runtime).config(config);
        let client = tokio::time::timeout(within, builder.create_bootstrapped())
            .await
            .map_err(|_| ArtiError::BootstrapTimedOut { within })?
            .map_err(|source| ArtiError::Bootstrap {
                kind: arti_client::HasKind::kind(&source),
                source,
            })?;
        Ok(Self::new(client))
    }

    /// Reads an arti configuration in arti's TOML form (what `arti.toml`
    /// holds: `[storage]`, `[tor_network]`, …), every key not given at its
    /// default. Unknown keys are ignored, as arti does.
    ///
    /// ```
    /// let config = dirpool::arti::ArtiClient::config_from_toml(
    ///     "[storage]\nstate_dir = \"/var/lib/my-app/arti/state\"\n",
    /// )?;
    /// assert!(dirpool::arti::ArtiClient::config_from_toml("[storage]\nstate_dir = 3").is_err());
    /// # Ok::<(), dirpool::arti::ArtiError>(())
    /// ```
    ///
    /// # Errors
    /// [`ArtiError::Config`] for text that is not TOML or a value arti
    /// refuses.
    pub fn config_from_toml(text: &str) -> Result<TorClientConfig, ArtiError> {
        let mut sources = tor_config::ConfigurationSources::new_empty();
        sources.push_source(
            tor_config::ConfigurationSource::from_verbatim(text.to_owned()),
            tor_config::sources::MustRead::MustRead,
        );
        let tree = sources.load().map_err(|e| ArtiError::Config(Box::new(e)))?;
        tor_config::resolve(&tree).map_err(|e| ArtiError::Config(Box::new(e)))
    }

    /// Tor's readiness now.
    pub fn readiness(&self) -> TorReadiness {
        self.tor.readiness()
    }

    /// Tor's readiness each time arti's bootstrap status changes (the
    /// current one first). Changes faster than the reader are coalesced;
    /// the stream ends with the client.
    pub fn readiness_events(&self) -> impl Stream<Item = TorReadiness> + Send + Unpin + 'static {
        let current = futures::stream::iter([self.readiness()]);
        current.chain(self.tor.readiness_changes())
    }

    /// What the pool's driver watches: [`readiness_events`](Self::readiness_events)
    /// as the core's reports, with arti's words for the log.
    pub(crate) fn route_reports(&self) -> crate::driver::RouteReports {
        self.readiness_events()
            .map(|readiness| crate::driver::RouteReport {
                report: readiness.report(),
                detail: readiness.to_string(),
            })
            .boxed()
    }

    /// arti's own bootstrap events, for what [`TorReadiness`] leaves out.
    pub fn bootstrap_events(&self) -> BootstrapEvents {
        self.tor.events()
    }
}

/// The part of `TorClient<R>` the pool uses, with the runtime type erased.
trait Connector: Send + Sync + 'static {
    fn connect(
        &self,
        host: String,
        port: u16,
        isolation: Option<IsolationToken>,
    ) -> BoxFuture<'static, Result<DataStream, arti_client::Error>>;
    fn bootstrap(&self) -> BoxFuture<'static, Result<(), arti_client::Error>>;
    fn readiness(&self) -> TorReadiness;
    /// Whether a connect can start at once.
    fn ready(&self) -> bool {
        self.readiness() == TorReadiness::Ready
    }
    /// Each change of [`readiness`](Self::readiness), coalesced; ends with
    /// the client.
    fn readiness_changes(&self) -> BoxStream<'static, TorReadiness>;
    fn events(&self) -> BootstrapEvents;
}

impl<R: tor_rtcompat::Runtime> Connector for Arc<TorClient<R>> {
    fn connect(
        &self,
        host: String,
        port: u16,
        isolation: Option<IsolationToken>,
    ) -> BoxFuture<'static, Result<DataStream, arti_client::Error>> {
        let client = Arc::clone(self);
        async move {
            let mut prefs = StreamPrefs::new();
            if let Some(token) = isolation {
                prefs.set_isolation(token);
            }
            client
                .connect_with_prefs((host.as_str(), port), &prefs)
                .await
        }
        .boxed()
    }

    fn bootstrap(&self) -> BoxFuture<'static, Result<(), arti_client::Error>> {
        let client = Arc::clone(self);
        // The inherent method, not this trait's (which the Arc would pick).
        async move { TorClient::bootstrap(&client).await }.boxed()
    }

    fn readiness(&self) -> TorReadiness {
        TorReadiness::of(&self.bootstrap_status())
    }

    fn ready(&self) -> bool {
        self.bootstrap_status().ready_for_traffic()
    }

    fn readiness_changes(&self) -> BoxStream<'static, TorReadiness> {
        self.bootstrap_events()
            .map(|status| TorReadiness::of(&status))
            .boxed()
    }

    fn events(&self) -> BootstrapEvents {
        self.bootstrap_events()
    }
}

/// Isolation tokens kept at most: far more than the scopes of a pool
/// (categories plus servers); past it the oldest is forgotten, which only
/// gives its scope a fresh token, i.e. new circuits.
const MAX_TOKENS: usize = 1024;

/// The core's credentials of each scope and its arti token, oldest first.
/// `SocksCredentials` is the one idea of "scope": the core derives it, the
/// SOCKS path sends it, this path maps it. A linear search: a pool has a
/// few dozen scopes.
#[derive(Default)]
struct ScopeTokens(Mutex<Vec<(SocksCredentials, IsolationToken)>>);

impl ScopeTokens {
    /// The arti token of the scope `credentials` name.
    fn token(&self, credentials: &SocksCredentials) -> IsolationToken {
        let mut tokens = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, token)) = tokens.iter().find(|(c, _)| c == credentials) {
            return *token;
        }
        if tokens.len() >= MAX_TOKENS {
            tokens.remove(0);
        }
        let token = IsolationToken::new();
        tokens.push((credentials.clone(), token));
        token
    }

    /// Forgets `token` as the token of `credentials` (if it still is): the
    /// scope's next dial gets a fresh one.
    fn renew(&self, credentials: &SocksCredentials, token: IsolationToken) {
        let mut tokens = self.0.lock().unwrap_or_else(|e| e.into_inner());
        tokens.retain(|(c, t)| !(c == credentials && *t == token));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The pool's route through arti: the client and one isolation token per
/// scope the core named.
pub(crate) struct ArtiRoute {
    client: ArtiClient,
    tokens: ScopeTokens,
    /// A bootstrap the pool started is running ([`Self::bootstrap`]).
    bootstrapping: AtomicBool,
}

impl ArtiRoute {
    pub(crate) fn new(client: ArtiClient) -> Self {
        Self {
            client,
            tokens: ScopeTokens::default(),
            bootstrapping: AtomicBool::new(false),
        }
    }

    /// Bootstraps Tor if it is not ready, waiting up to `within`: what a
    /// connect does on first use, for a pool whose only user is
    /// maintenance (whose redials wait while Tor is not ready, so without
    /// this a client made unbootstrapped would wait for ever). One at a
    /// time: returns at once while another runs. The driver starts it on
    /// each change of Tor's state while it is not ready; arti joins a
    /// bootstrap already under way.
    pub(crate) async fn bootstrap(&self, runtime: &dyn Runtime, within: Duration) {
        if self.bootstrapping.swap(true, Ordering::AcqRel) {
            return;
        }
        let _running = ClearOnDrop(&self.bootstrapping);
        match self.wait_ready(runtime, within, "the Tor network").await {
            Ok(()) => tracing::debug!("Tor bootstrapped"),
            Err(error) => tracing::info!(
                %error,
                "Tor not bootstrapped; tried again when its state changes or a command dials"
            ),
        }
    }

    /// Ready at once, or after a bootstrap that ends within `within`.
    async fn wait_ready(
        &self,
        runtime: &dyn Runtime,
        within: Duration,
        target: &str,
    ) -> Result<(), DialError> {
        if self.client.tor.ready() {
            return Ok(());
        }
        let bootstrap = self.on_tokio(self.client.tor.bootstrap());
        match before(runtime.sleep_until(runtime.now() + within), bootstrap).await {
            Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(source))) => Err(tor_error(target.to_owned(), source)),
            Some(Err(stopped)) => Err(stopped),
            None => Err(DialError::TorNotReady {
                waited: within,
                readiness: self.client.readiness().to_string(),
            }),
        }
    }

    /// Opens a stream to `addr` through arti, isolated by `credentials`.
    /// Waits up to `ready_timeout` for a bootstrap first. Not bounded
    /// otherwise: the caller races it against its deadline; dropping it
    /// drops the connect.
    pub(crate) async fn open(
        &self,
        runtime: &dyn Runtime,
        ready_timeout: Duration,
        addr: &ServerAddr,
        credentials: Option<&SocksCredentials>,
    ) -> Result<BoxedStream, DialError> {
        let target = addr.to_string();
        self.wait_ready(runtime, ready_timeout, &target).await?;
        let isolation = credentials.map(|c| (c, self.tokens.token(c)));
        // arti keeps what it learnt of an onion service (its descriptor,
        // which introduction points failed) per isolation token; after a
        // service restart that state can stall every later connect (as a
        // tor daemon's does until a controller sends NEWNYM). So a connect
        // that fails or is dropped unfinished (timed out) renews its
        // scope's token: the scope's next dial starts afresh, on new
        // circuits, which isolates no less.
        let mut renew = RenewUnlessDone {
            tokens: &self.tokens,
            isolation,
        };
        let connect = self.client.tor.connect(
            addr.host().to_owned(),
            addr.port(),
            isolation.map(|(_, token)| token),
        );
        match self.on_tokio(connect).await {
            Ok(Ok(stream)) => {
                renew.isolation = None;
                Ok(Box::pin(stream))
            }
            Ok(Err(source)) => Err(tor_error(target, source)),
            Err(stopped) => Err(stopped),
        }
    }

    /// Runs `future` on the client's tokio runtime when there is one (arti
    /// makes its timers in the caller's context), aborted when dropped.
    /// [`DialError::TorStopped`] if that runtime shut down before `future` ended
    /// (or was already down): nothing of arti runs any more, and the
    /// connect would otherwise hang until the pool's deadline and be
    /// counted as the directory's timeout.
    fn on_tokio<T: Send + 'static>(
        &self,
        future: BoxFuture<'static, Result<T, arti_client::Error>>,
    ) -> BoxFuture<'static, Result<Result<T, arti_client::Error>, DialError>> {
        let Some(handle) = &self.client.tokio else {
            return future.map(Ok).boxed();
        };
        let task = AbortOnDrop(handle.spawn(future));
        async move {
            let mut task = task;
            match (&mut task.0).await {
                Ok(result) => Ok(result),
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                // Cancelled, and not by our own drop (nobody would be
                // awaiting): by the runtime's shutdown.
                Err(_) => Err(DialError::TorStopped),
            }
        }
        .boxed()
    }
}

/// Renews the scope's token on drop, unless the connect succeeded.
struct RenewUnlessDone<'a> {
    tokens: &'a ScopeTokens,
    isolation: Option<(&'a SocksCredentials, IsolationToken)>,
}

impl Drop for RenewUnlessDone<'_> {
    fn drop(&mut self) {
        if let Some((credentials, token)) = self.isolation {
            self.tokens.renew(credentials, token);
        }
    }
}

/// Clears its flag when dropped (the work the flag marks ended, or was
/// dropped unfinished).
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A tokio task aborted when its handle is dropped (the pool dropped the dial).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn tor_error(target: String, source: arti_client::Error) -> DialError {
    DialError::Tor {
        target,
        kind: arti_client::HasKind::kind(&source),
        source,
    }
}

/// What the core makes of an arti error of `kind`: Tor itself not usable
/// (not bootstrapped, no usable directory, shutting down, local fault) is
/// the proxy's; what happened on the way to one onion is that server's,
/// as the SOCKS reply a tor daemon sends for it with `ExtendedErrors`
/// (`OnionServiceNotFound` → 0xF0, …; timeouts → TTL expired, Tor's code
/// for them).
pub fn failure_of(kind: ErrorKind) -> DialFailure {
    use ErrorKind as K;
    let socks = DialFailure::Socks;
    match kind {
        // Tor not ready or going away: as a tor daemon not listening.
        K::BootstrapRequired
        | K::TorAccessFailed
        | K::DirectoryExpired
        | K::TorDirectoryUnusable
        | K::ClockSkew
        | K::LocalNetworkError
        | K::NoPath
        | K::ReactorShuttingDown
        | K::ArtiShuttingDown => DialFailure::ProxyUnreachable,
        // The local client is misconfigured or broken: every dial alike.
        K::InvalidConfig
        | K::InvalidConfigTransition
        | K::FeatureDisabled
        | K::ForbiddenStreamTarget
        | K::NotImplemented
        | K::BadApiUsage
        | K::Internal
        | K::LocalProtocolViolation
        | K::LocalResourceExhausted
        | K::LocalResourceAlreadyInUse
        | K::FsPermissions
        | K::PersistentStateAccessFailed
        | K::PersistentStateCorrupted
        | K::CacheAccessFailed
        | K::CacheCorrupted
        | K::KeystoreAccessFailed
        | K::KeystoreCorrupted
        | K::NoHomeDirectory
        | K::SoftwareDeprecated => DialFailure::ProxyProtocol,
        K::OnionServiceNotFound => socks(SocksReply::OnionDescriptorNotFound),
        K::OnionServiceNotRunning => socks(SocksReply::OnionIntroFailed),
        K::OnionServiceConnectionFailed => socks(SocksReply::OnionRendezvousFailed),
        K::OnionServiceProtocolViolation => socks(SocksReply::OnionDescriptorInvalid),
        K::OnionServiceMissingClientAuth => socks(SocksReply::OnionMissingClientAuth),
        K::OnionServiceWrongClientAuth => socks(SocksReply::OnionWrongClientAuth),
        K::OnionServiceAddressInvalid | K::InvalidStreamTarget => {
            socks(SocksReply::OnionBadAddress)
        }
        K::TorNetworkTimeout | K::RemoteNetworkTimeout | K::ExitTimeout => {
            socks(SocksReply::TtlExpired)
        }
        K::RemoteConnectionRefused => socks(SocksReply::ConnectionRefused),
        K::RemoteHostNotFound | K::RemoteHostResolutionFailed => socks(SocksReply::HostUnreachable),
        K::RemoteNetworkFailed | K::NoExit => socks(SocksReply::NetworkUnreachable),
        K::ExitPolicyRejected => socks(SocksReply::NotAllowed),
        // Circuit trouble, stream closed or reset, a relay's fault.
        _ => socks(SocksReply::GeneralFailure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dirpool_core::{FailureScope, ProxyState, ServerState};
    use futures::channel::mpsc;

    #[test]
    fn not_ready_is_the_proxys_and_a_missing_onion_the_servers() {
        for kind in [
            ErrorKind::BootstrapRequired,
            ErrorKind::TorDirectoryUnusable,
            ErrorKind::ArtiShuttingDown,
            ErrorKind::InvalidConfig,
        ] {
            assert_eq!(failure_of(kind).scope(), FailureScope::Proxy, "{kind}");
        }
        for (kind, reply) in [
            (
                ErrorKind::OnionServiceNotFound,
                SocksReply::OnionDescriptorNotFound,
            ),
            (
                ErrorKind::OnionServiceConnectionFailed,
                SocksReply::OnionRendezvousFailed,
            ),
            (ErrorKind::TorNetworkTimeout, SocksReply::TtlExpired),
            (ErrorKind::CircuitCollapse, SocksReply::GeneralFailure),
        ] {
            let failure = failure_of(kind);
            assert_eq!(failure, DialFailure::Socks(reply), "{kind}");
            assert_eq!(failure.scope(), FailureScope::Server, "{kind}");
        }
    }

    /// A Tor client whose readiness the test sets and whose connects never
    /// end (a circuit that never answers); it tells each connect's host.
    struct FakeTor {
        readiness: Mutex<TorReadiness>,
        /// The streams of readiness changes handed out.
        watchers: Mutex<Vec<mpsc::UnboundedSender<TorReadiness>>>,
        connects: mpsc::UnboundedSender<String>,
        /// Bootstraps asked for (each runs until its caller gives up).
        bootstraps: std::sync::atomic::AtomicUsize,
    }

    impl FakeTor {
        /// The fake, `readiness` to start with, and the hosts it is asked
        /// to connect to, as it is asked.
        fn new(readiness: TorReadiness) -> (Arc<Self>, mpsc::UnboundedReceiver<String>) {
            let (connects, asked) = mpsc::unbounded();
            let tor = Self {
                readiness: Mutex::new(readiness),
                watchers: Mutex::new(Vec::new()),
                connects,
                bootstraps: std::sync::atomic::AtomicUsize::new(0),
            };
            (Arc::new(tor), asked)
        }

        /// Tor's state changes to `readiness`; every watcher is told.
        fn set(&self, readiness: TorReadiness) {
            *self.readiness.lock().unwrap() = readiness.clone();
            self.watchers
                .lock()
                .unwrap()
                .retain(|watcher| watcher.unbounded_send(readiness.clone()).is_ok());
        }

        /// A client on this fake, connecting where it is polled.
        fn client(self: &Arc<Self>) -> ArtiClient {
            ArtiClient {
                tor: Arc::clone(self) as Arc<dyn Connector>,
                tokio: None,
            }
        }
    }

    impl Connector for FakeTor {
        fn connect(
            &self,
            host: String,
            _port: u16,
            _isolation: Option<IsolationToken>,
        ) -> BoxFuture<'static, Result<DataStream, arti_client::Error>> {
            let _ = self.connects.unbounded_send(host);
            futures::future::pending().boxed()
        }
        fn bootstrap(&self) -> BoxFuture<'static, Result<(), arti_client::Error>> {
            self.bootstraps.fetch_add(1, Ordering::SeqCst);
            futures::future::pending().boxed()
        }
        fn readiness(&self) -> TorReadiness {
            self.readiness.lock().unwrap().clone()
        }
        fn readiness_changes(&self) -> BoxStream<'static, TorReadiness> {
            let (watcher, changes) = mpsc::unbounded();
            self.watchers.lock().unwrap().push(watcher);
            changes.boxed()
        }
        fn events(&self) -> BootstrapEvents {
            unreachable!("arti's own status type cannot be made outside arti")
        }
    }

    #[test]
    fn a_connect_whose_tokio_runtime_stops_fails_at_once_as_the_proxys() {
        // arti's runtime: the application's, which it shuts down while a
        // connect is pending (arti's tasks then never run again).
        let arti_runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tor, _connects) = FakeTor::new(TorReadiness::Ready);
        let route = ArtiRoute::new(ArtiClient {
            tokio: Some(arti_runtime.handle().clone()),
            ..tor.client()
        });
        // The pool's runtime.
        let pool_runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let runtime = pool_runtime.block_on(async { crate::runtime::TokioRuntime::current() });
        let addr = ServerAddr::parse(
            "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion:5222",
        )
        .unwrap();
        let credentials = SocksCredentials::new("dirpool-directory", "a");
        pool_runtime.block_on(async {
            let ready_timeout = Duration::from_secs(1);
            let mut open =
                std::pin::pin!(route.open(&runtime, ready_timeout, &addr, Some(&credentials)));
            assert!(futures::poll!(&mut open).is_pending(), "the connect runs");
            arti_runtime.shutdown_background();
            // Without an answer the connect would wait for the pool's
            // deadline and be counted as the directory's timeout.
            let outcome = tokio::time::timeout(Duration::from_secs(10), open)
                .await
                .expect("a connect on a stopped runtime ends at once");
            let Err(error) = outcome else {
                panic!("no stream without arti")
            };
            assert!(matches!(error, DialError::TorStopped), "{error:?}");
            assert_eq!(error.failure(), DialFailure::ProxyUnreachable);
            assert_eq!(error.failure(), DialFailure::ProxyUnreachable);
        });
        // The failed connect renewed its scope's token, as any failure does.
        assert_eq!(route.tokens.len(), 0);
    }

    const ALPHA: &str = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion:5222";
    const BETA: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion:5222";

    /// The log lines of the thread it is the default of: level, message
    /// and the name of the innermost span each is in.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<LinesInner>>);

    #[derive(Default)]
    struct LinesInner {
        /// Span names, by id - 1.
        spans: Vec<&'static str>,
        entered: Vec<u64>,
        lines: Vec<(tracing::Level, String, &'static str)>,
    }

    impl Lines {
        /// How many lines at `level` read `message` in the span `span`.
        fn count(&self, level: tracing::Level, message: &str, span: &str) -> usize {
            let inner = self.0.lock().unwrap();
            let wanted = |(l, m, s): &&(tracing::Level, String, &str)| {
                *l == level && m == message && *s == span
            };
            inner.lines.iter().filter(wanted).count()
        }
    }

    struct Message(String);

    impl tracing::field::Visit for Message {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl tracing::Subscriber for Lines {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            let mut inner = self.0.lock().unwrap();
            inner.spans.push(span.metadata().name());
            tracing::span::Id::from_u64(inner.spans.len() as u64)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut message = Message(String::new());
            event.record(&mut message);
            let mut inner = self.0.lock().unwrap();
            let span = inner
                .entered
                .last()
                .and_then(|id| inner.spans.get(usize::try_from(*id).ok()? - 1))
                .copied()
                .unwrap_or("");
            inner
                .lines
                .push((*event.metadata().level(), message.0, span));
        }
        fn enter(&self, span: &tracing::span::Id) {
            self.0.lock().unwrap().entered.push(span.into_u64());
        }
        fn exit(&self, span: &tracing::span::Id) {
            let mut inner = self.0.lock().unwrap();
            if let Some(at) = inner.entered.iter().rposition(|id| *id == span.into_u64()) {
                inner.entered.remove(at);
            }
        }
    }

    /// Tor's own state holds the pool: while it bootstraps (or is blocked)
    /// maintenance dials nothing and the proxy shows the state Tor
    /// reports; once Tor is ready every server is dialed, with no command.
    /// Each change is logged once, in the pool's span.
    #[test]
    fn a_pool_on_a_bootstrapping_tor_dials_once_tor_reports_ready() {
        // Everything below runs on this thread, so its default subscriber
        // sees every line. A second live dispatcher makes each callsite ask
        // the current thread's subscriber, whatever another test's thread
        // (without one) answered first.
        let lines = Lines::default();
        let _default = tracing::subscriber::set_default(lines.clone());
        let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Deadlines only: every wait below ends on an event first.
        let within = Duration::from_secs(10);
        runtime.block_on(async {
            let (tor, mut connects) = FakeTor::new(TorReadiness::Bootstrapping { progress: 0.1 });
            let pool =
                crate::DirectoryPool::builder(crate::Config::new([ALPHA, BETA]), crate::RawStream)
                    .arti(tor.client())
                    .spawn_tokio()
                    .unwrap();
            let mut events = pool.events();
            pool.start_maintenance().unwrap();
            // One turn of the driver after the command: maintenance applied.
            let health = pool.health().await.unwrap();
            assert_eq!(health.proxy, ProxyState::Bootstrapping);
            for server in &health.servers {
                assert_eq!(server.state, ServerState::WaitingForProxy, "{health:#?}");
            }
            assert!(connects.try_recv().is_err(), "no dial while Tor bootstraps");
            // The pool asked Tor to bootstrap, as a first connect would.
            assert_eq!(tor.bootstraps.load(Ordering::SeqCst), 1);
            assert!(matches!(
                events.try_next(),
                Ok(crate::PoolEvent::ProxyUnreachable)
            ));
            assert_eq!(events.try_next().unwrap_err(), crate::TryNextError::Empty);

            // Progress, then a blockage: still held, no further event. Each
            // report is taken before the command that follows it.
            tor.set(TorReadiness::Bootstrapping { progress: 0.6 });
            assert_eq!(
                pool.health().await.unwrap().proxy,
                ProxyState::Bootstrapping
            );
            tor.set(TorReadiness::Blocked {
                reason: "clock skew".to_owned(),
            });
            assert_eq!(pool.health().await.unwrap().proxy, ProxyState::Blocked);
            assert!(connects.try_recv().is_err(), "no dial while Tor is blocked");
            // Its bootstrap still runs (within proxy_timeout): none more.
            assert_eq!(tor.bootstraps.load(Ordering::SeqCst), 1);
            assert_eq!(events.try_next().unwrap_err(), crate::TryNextError::Empty);
            // A stream made now is told the proxy is down, once.
            let mut late = pool.events();
            assert!(matches!(
                late.try_next(),
                Ok(crate::PoolEvent::ProxyUnreachable)
            ));
            assert_eq!(late.try_next().unwrap_err(), crate::TryNextError::Empty);

            tor.set(TorReadiness::Ready);
            let event = tokio::time::timeout(within, events.next()).await.unwrap();
            assert!(
                matches!(event, Some(crate::PoolEvent::ProxyRecovered)),
                "{event:?}"
            );
            let mut dialed = Vec::new();
            for _ in 0..2 {
                let host = tokio::time::timeout(within, connects.next()).await.unwrap();
                dialed.extend(host);
            }
            dialed.sort();
            let mut expected: Vec<String> = [ALPHA, BETA]
                .map(|a| ServerAddr::parse(a).unwrap().host().to_owned())
                .into();
            expected.sort();
            assert_eq!(dialed, expected);
            let health = pool.health().await.unwrap();
            assert_eq!(health.proxy, ProxyState::Reachable);
            assert_eq!(health.counts.connecting, 2, "{health:#?}");
            // Once the proxy is back, a new stream starts with nothing.
            assert_eq!(
                pool.events().try_next().unwrap_err(),
                crate::TryNextError::Empty
            );
            pool.close_all().await.unwrap();
        });
        use tracing::Level;
        for (level, message) in [
            (Level::INFO, "Tor bootstrapping (10 %)"),
            (Level::DEBUG, "Tor bootstrapping (60 %)"),
            (Level::WARN, "Tor blocked: clock skew"),
            (Level::INFO, "Tor ready"),
            (
                Level::WARN,
                "Tor (arti) cannot carry traffic; servers wait for it",
            ),
            (Level::INFO, "Tor (arti) carries traffic again"),
        ] {
            assert_eq!(lines.count(level, message, "dirpool"), 1, "{message}");
        }
    }

    #[test]
    fn each_scope_has_one_token_of_its_own_and_the_map_is_bounded() {
        let scopes = ScopeTokens::default();
        let a = SocksCredentials::new("dirpool-directory", "a");
        let b = SocksCredentials::new("dirpool-directory", "b");
        let peer = SocksCredentials::new("dirpool-peer", "a");
        let ta = scopes.token(&a);
        assert_eq!(scopes.token(&a), ta);
        assert_ne!(scopes.token(&b), ta);
        assert_ne!(scopes.token(&peer), ta);
        assert_ne!(scopes.token(&peer), scopes.token(&b));
        for i in 0..MAX_TOKENS {
            scopes.token(&SocksCredentials::new("dirpool-directory", format!("x{i}")));
        }
        assert_eq!(scopes.len(), MAX_TOKENS);
        // `a` was the oldest: forgotten, so a fresh token (new circuits).
        let renewed = scopes.token(&a);
        assert_ne!(renewed, ta);
        // Renewing an outdated token changes nothing; the current one, all.
        scopes.renew(&a, ta);
        assert_eq!(scopes.token(&a), renewed);
        scopes.renew(&a, renewed);
        assert_ne!(scopes.token(&a), renewed);
    }
}
