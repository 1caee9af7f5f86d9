//! `DirectoryPool`: the public, async face of the pool.

use std::sync::Arc;
use std::time::Duration;

use dirpool_core::{
    Command, Entropy, IsolationToken, OperationReport, PoolHealth, PoolState, RejectedEntry,
    Rejection, RetryPolicy, ServerAddr, ServerId, ServerStatus, SocksCredentials, StreamIsolation,
};
use futures::channel::{mpsc, oneshot};

use crate::config::Config;
use crate::dialer::Dialer;
use crate::driver::{Driver, EVENT_BUFFER, OpOutcome, Request, Route, Shared, Subscriber};
use crate::error::{ConfigError, DialError, PoolError};
use crate::event::{EventStream, PoolEvent};
use crate::handshake::Handshake;
use crate::hooks::{NoHooks, PoolHooks};
use crate::runtime::Runtime;
use crate::socks::validate_credentials;

/// A pool of connections to directory servers, driven in the background.
///
/// Cheap to clone; every clone drives the same pool. When the last clone is
/// dropped the pool closes every connection and its driver stops.
pub struct DirectoryPool<H: Handshake> {
    inner: Arc<Inner<H>>,
}

struct Inner<H: Handshake> {
    commands: mpsc::UnboundedSender<Request<H::Client>>,
    shared: Arc<Shared<H::Client>>,
    dialer: Arc<Dialer<H>>,
    isolation: StreamIsolation,
    connection_timeout: Duration,
    servers: Vec<Arc<ServerAddr>>,
    /// Server ids sorted by node id, for lookups by name.
    by_node_id: Vec<ServerId>,
    rejected: Vec<RejectedEntry>,
}

impl<H: Handshake> Inner<H> {
    /// The id of the configured server `addr` names.
    fn server_id(&self, addr: &ServerAddr) -> Option<ServerId> {
        let at = self
            .by_node_id
            .binary_search_by(|id| self.servers[id.index()].node_id().cmp(addr.node_id()))
            .ok()?;
        Some(self.by_node_id[at])
    }
}

impl<H: Handshake> Clone for DirectoryPool<H> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<H: Handshake> std::fmt::Debug for DirectoryPool<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryPool")
            .field("servers", &self.inner.servers)
            .field("proxy", &self.inner.dialer.proxy)
            .field("isolation", &self.inner.isolation)
            .field("connected", &self.connected_count())
            .finish_non_exhaustive()
    }
}

/// Builds a [`DirectoryPool`].
#[derive(Debug)]
#[must_use]
pub struct PoolBuilder<H, K> {
    config: Config,
    handshake: H,
    hooks: K,
    entropy: Option<Entropy>,
    #[cfg(feature = "arti")]
    arti: Option<crate::arti::ArtiClient>,
}

impl<H: Handshake> DirectoryPool<H> {
    /// Starts building a pool that connects to `config`'s servers with
    /// `handshake`.
    pub fn builder(config: Config, handshake: H) -> PoolBuilder<H, NoHooks> {
        PoolBuilder {
            config,
            handshake,
            hooks: NoHooks,
            entropy: None,
            #[cfg(feature = "arti")]
            arti: None,
        }
    }
}

impl<H: Handshake, K: PoolHooks<H::Client>> PoolBuilder<H, K> {
    /// Calls `hooks` as servers connect and disconnect.
    pub fn hooks<K2: PoolHooks<H::Client>>(self, hooks: K2) -> PoolBuilder<H, K2> {
        PoolBuilder {
            config: self.config,
            handshake: self.handshake,
            hooks,
            entropy: self.entropy,
            #[cfg(feature = "arti")]
            arti: self.arti,
        }
    }

    /// Opens every directory's stream through the in-process Tor client
    /// `tor` (feature `arti`) instead of the SOCKS proxy of
    /// [`Config::proxy`](crate::Config::proxy); see [`crate::arti`]. The
    /// pool follows `tor`'s readiness from its start: while it is not
    /// ready, maintenance waits for it instead of dialing.
    #[cfg(feature = "arti")]
    pub fn arti(mut self, tor: crate::arti::ArtiClient) -> Self {
        self.arti = Some(tor);
        self
    }

    /// Uses this isolation token and jitter seed instead of fresh OS
    /// randomness (for reproducible tests).
    pub fn entropy(mut self, entropy: Entropy) -> Self {
        self.entropy = Some(entropy);
        self
    }

    /// Starts the pool on `runtime`. Nothing is dialed until a command (or
    /// maintenance) asks.
    ///
    /// # Errors
    /// [`ConfigError`] for settings out of range, no valid server, or no OS
    /// randomness.
    pub fn spawn(self, runtime: impl Runtime) -> Result<DirectoryPool<H>, ConfigError> {
        let entropy = match self.entropy {
            Some(entropy) => entropy,
            None => os_entropy()?,
        };
        let runtime: Arc<dyn Runtime> = Arc::new(runtime);
        self.config.validate()?;
        let state = PoolState::new(self.config.pool.clone(), entropy)?;
        let isolation = state.isolation().clone();
        for credentials in state
            .servers()
            .filter_map(|(_, addr)| isolation.directory_credentials(addr))
            .chain(isolation.peer_credentials())
        {
            validate_credentials(credentials.username(), credentials.password().expose())?;
        }
        let servers: Vec<Arc<ServerAddr>> = state.servers().map(|(_, a)| Arc::clone(a)).collect();
        let mut by_node_id: Vec<ServerId> = state.servers().map(|(id, _)| id).collect();
        by_node_id.sort_by(|a, b| {
            servers[a.index()]
                .node_id()
                .cmp(servers[b.index()].node_id())
        });
        let rejected = state.rejected_entries().to_vec();
        let connection_timeout = state.connection_timeout();
        let dialer = Dialer::new(
            Arc::clone(&runtime),
            self.config.proxy,
            // Before the dial's own deadline, so the proxy takes the blame.
            self.config.proxy_timeout.min(connection_timeout / 2),
            self.config.direct_clearnet,
            self.handshake,
        )
        .with_proxy_auth(self.config.proxy_auth.clone());
        // A route that reports its own state (an in-process Tor client)
        // tells the driver; a SOCKS proxy reports nothing.
        let (route, reports) = (Route::Socks, None);
        #[cfg(feature = "arti")]
        let (route, reports) = match &self.arti {
            Some(tor) => (Route::Arti, Some(tor.route_reports())),
            None => (route, reports),
        };
        #[cfg(feature = "arti")]
        let dialer = dialer.with_arti(self.arti);
        let dialer = Arc::new(dialer);
        let shared = Arc::new(Shared::new(route));
        let commands = Driver::spawn(
            state,
            runtime,
            Arc::clone(&dialer),
            Arc::clone(&shared),
            self.hooks,
            self.config.hook_timeout,
            reports,
        );
        Ok(DirectoryPool {
            inner: Arc::new(Inner {
                commands,
                shared,
                dialer,
                isolation,
                connection_timeout,
                servers,
                by_node_id,
                rejected,
            }),
        })
    }

    /// Starts the pool on smol's global executor.
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn).
    #[cfg(feature = "smol")]
    pub fn spawn_smol(self) -> Result<DirectoryPool<H>, ConfigError> {
        self.spawn(crate::runtime::SmolRuntime)
    }

    /// Starts the pool on the tokio runtime of the calling task.
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[cfg(feature = "tokio")]
    pub fn spawn_tokio(self) -> Result<DirectoryPool<H>, ConfigError> {
        self.spawn(crate::runtime::TokioRuntime::current())
    }
}

fn os_entropy() -> Result<Entropy, ConfigError> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| ConfigError::Randomness(e.to_string()))?;
    let mut token = [0u8; 16];
    token.copy_from_slice(&bytes[..16]);
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&bytes[16..]);
    Ok(Entropy {
        isolation_token: IsolationToken::from_bytes(token),
        jitter_seed: u64::from_le_bytes(seed),
    })
}

impl<H: Handshake> DirectoryPool<H> {
    /// The one path of every command: hands it to the driver and waits for
    /// the outcome of the operation it starts (`None`, at once, if it
    /// starts none).
    async fn run(&self, command: Command) -> Result<Option<OpOutcome<H::Client>>, PoolError> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Command(command, Some(tx)))?;
        Ok(rx.await.map_err(|_| self.gone())??)
    }

    /// [`run`](Self::run) for a command that starts an operation (every one
    /// but the maintenance switches; see [`Command`]).
    async fn operation(&self, command: Command) -> Result<OpOutcome<H::Client>, PoolError> {
        // The core starts an operation for each of these commands; a driver
        // that answers without one has stopped being the pool's.
        self.run(command).await?.ok_or(PoolError::DriverGone)
    }

    /// Runs one of the pool's [`Command`]s and returns the report of the
    /// operation it starts, once that operation has finished, or `None` at
    /// once for a command that starts none (`StartMaintenance`,
    /// `StopMaintenance`: `None` means the driver has applied it). Every
    /// other method that changes the pool is a shorthand for this one
    /// (same path through the driver), so a command added to the core
    /// needs nothing new here.
    ///
    /// Cancel-safe in that dropping the future loses only the report: once
    /// polled, the command is with the driver and runs to its end (a
    /// dropped connect still dials, a dropped `CloseAll` still closes).
    ///
    /// ```no_run
    /// # async fn demo(pool: dirpool::DirectoryPool<impl dirpool::Handshake>) -> Result<(), dirpool::PoolError> {
    /// use dirpool::Command;
    /// let report = pool.command(Command::ConnectAllParallel).await?;
    /// let connected = report.map_or(0, |r| r.connected);
    /// # let _ = connected;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`PoolError::Config`] for a command the core refuses (a retry policy
    /// out of range; nothing starts then), [`PoolError::DriverGone`] or
    /// [`PoolError::Panicked`] if the driver stopped.
    pub async fn command(&self, command: Command) -> Result<Option<OperationReport>, PoolError> {
        Ok(self.run(command).await?.map(|outcome| outcome.report))
    }

    fn send(&self, request: Request<H::Client>) -> Result<(), PoolError> {
        self.inner
            .commands
            .unbounded_send(request)
            .map_err(|_| self.gone())
    }

    /// Why the driver is not there: the panic that stopped it, if any.
    fn gone(&self) -> PoolError {
        match self.inner.shared.panic.lock().ok().and_then(|p| p.clone()) {
            Some((task, message)) => PoolError::Panicked { task, message },
            None => PoolError::DriverGone,
        }
    }

    /// Connects to one server, bounded by the connection timeout, without
    /// registering it in the pool: the original's `connect_to_directory`.
    /// Returns its node_id and the client.
    ///
    /// # Errors
    /// [`DialError`] saying why, including a malformed `addr`.
    pub async fn connect_to_directory(&self, addr: &str) -> Result<(String, H::Client), DialError> {
        let addr = ServerAddr::parse(addr)?;
        let credentials = self.inner.isolation.directory_credentials(&addr);
        let dialer = &self.inner.dialer;
        let timeout = self.inner.connection_timeout;
        let deadline = dialer.runtime.now() + timeout;
        let client = dialer
            .dial_until(&addr, credentials.as_ref(), deadline, timeout)
            .await?;
        Ok((addr.node_id().to_owned(), client))
    }

    /// Dials every server not connected, all at once, and waits for every
    /// result. Returns how many servers are connected then.
    ///
    /// Shorthand for [`command`](Self::command)`(`[`Command::ConnectAllParallel`]`)`
    /// (its report's `connected`); cancel-safe as that one.
    ///
    /// # Errors
    /// [`PoolError::DriverGone`] if the driver stopped.
    pub async fn connect_all_parallel(&self) -> Result<usize, PoolError> {
        Ok(self
            .operation(Command::ConnectAllParallel)
            .await?
            .report
            .connected)
    }

    /// Dials every server at once and redials failures on `policy`'s
    /// backoff, until one server is connected (returns at once) or
    /// `policy.timeout` passes (returns 0). Dials still in flight go on.
    ///
    /// Shorthand for [`command`](Self::command)`(`[`Command::ConnectAllWithRetry`]`(policy))`
    /// (its report's `connected`); cancel-safe as that one.
    ///
    /// # Errors
    /// [`PoolError::Config`] for a policy out of range.
    pub async fn connect_all_with_retry(&self, policy: RetryPolicy) -> Result<usize, PoolError> {
        Ok(self
            .operation(Command::ConnectAllWithRetry(policy))
            .await?
            .report
            .connected)
    }

    /// Dials the disconnected servers once, at once, and returns the newly
    /// connected `(node_id, client)` pairs.
    ///
    /// Shorthand for [`command`](Self::command)`(`[`Command::ReconnectDisconnected`]`)`,
    /// with the clients of its report's `newly_connected`; cancel-safe as
    /// that one.
    ///
    /// # Errors
    /// [`PoolError::DriverGone`] if the driver stopped.
    pub async fn reconnect_disconnected(&self) -> Result<Vec<(String, Arc<H::Client>)>, PoolError> {
        let newly_connected = self
            .operation(Command::ReconnectDisconnected)
            .await?
            .newly_connected;
        Ok(newly_connected
            .into_iter()
            .map(|(server, client)| {
                (
                    self.inner.servers[server.index()].node_id().to_owned(),
                    client,
                )
            })
            .collect())
    }

    /// Closes every connection (each bounded by the close timeout), aborts
    /// dials in flight and stops maintenance. Close errors are reported in
    /// the events and logs and never stop the shutdown.
    ///
    /// Shorthand for [`command`](Self::command)`(`[`Command::CloseAll`]`)`;
    /// cancel-safe as that one.
    ///
    /// # Errors
    /// [`PoolError::DriverGone`] if the driver stopped.
    pub async fn close_all(&self) -> Result<OperationReport, PoolError> {
        Ok(self.operation(Command::CloseAll).await?.report)
    }

    /// Starts background maintenance: lost and unreached servers are
    /// redialed on their own backoff.
    ///
    /// Shorthand for [`command`](Self::command)`(`[`Command::StartMaintenance`]`)`
    /// without waiting for the driver to apply it.
    ///
    /// # Errors
    /// [`PoolError::DriverGone`] if the driver stopped.
    pub fn start_maintenance(&self) -> Result<(), PoolError> {
        self.send(Request::Command(Command::StartMaintenance, None))
    }

    /// Stops background maintenance.
    ///
    /// Shorthand for [`command`](Self::command)`(`[`Command::StopMaintenance`]`)`
    /// without waiting for the driver to apply it.
    ///
    /// # Errors
    /// [`PoolError::DriverGone`] if the driver stopped.
    pub fn stop_maintenance(&self) -> Result<(), PoolError> {
        self.send(Request::Command(Command::StopMaintenance, None))
    }

    /// A status snapshot of every server.
    ///
    /// Cancel-safe: dropping the future before it completes changes
    /// nothing (the driver's answer is dropped).
    ///
    /// # Errors
    /// [`PoolError::DriverGone`] if the driver stopped.
    pub async fn status(&self) -> Result<Vec<ServerStatus>, PoolError> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Statuses(tx))?;
        rx.await.map_err(|_| self.gone())
    }

    /// The pool's health now: how many servers are up, connecting, backing
    /// off, given up, idle or closing; whether the proxy is reachable as
    /// far as the pool knows; and per server its state, its latest error
    /// class ([`DialFailure`](crate::DialFailure) or
    /// [`LinkLoss`](crate::LinkLoss)) and how long ago, how long
    /// since its link last showed life, and its last probe round trip.
    /// Ages are on the pool's runtime clock. No credentials are in it.
    ///
    /// It asks the driver (which owns the state), so it waits one turn of
    /// the driver's loop. Cancel-safe: dropping the future before it
    /// completes changes nothing.
    ///
    /// ```no_run
    /// # async fn show(pool: &dirpool::DirectoryPool<dirpool::RawStream>) -> Result<(), dirpool::PoolError> {
    /// let health = pool.health().await?;
    /// println!("{} of {} up, proxy {:?}", health.counts.up, health.counts.total(), health.proxy);
    /// for server in &health.servers {
    ///     if let Some(error) = &server.last_error {
    ///         println!("{}: {} ({:.0?} ago)", server.addr, error.error, error.ago);
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`PoolError::DriverGone`] (or [`PoolError::Panicked`]) if the
    /// driver stopped.
    pub async fn health(&self) -> Result<PoolHealth, PoolError> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Health(tx))?;
        rx.await.map_err(|_| self.gone())
    }

    /// The connected clients, by node_id.
    pub fn clients(&self) -> Vec<(String, Arc<H::Client>)> {
        self.inner
            .shared
            .clients
            .lock()
            .map(|c| {
                let mut clients: Vec<(String, Arc<H::Client>)> = c
                    .iter()
                    .filter_map(|(id, client)| {
                        let addr = self.inner.servers.get(id.index())?;
                        Some((addr.node_id().to_owned(), Arc::clone(client)))
                    })
                    .collect();
                clients.sort_by(|a, b| a.0.cmp(&b.0));
                clients
            })
            .unwrap_or_default()
    }

    /// The client of `server` (`"host"` or `"host:port"`, any spelling), if
    /// connected.
    pub fn client(&self, server: &str) -> Option<Arc<H::Client>> {
        let addr = ServerAddr::parse(server).ok()?;
        let id = self.inner.server_id(&addr)?;
        self.inner.shared.clients.lock().ok()?.get(&id).cloned()
    }

    /// How many servers are connected.
    pub fn connected_count(&self) -> usize {
        self.inner
            .shared
            .clients
            .lock()
            .map(|c| c.len())
            .unwrap_or(0)
    }

    /// Configured, valid servers that are not connected (malformed entries
    /// are never listed).
    pub fn list_disconnected(&self) -> Vec<Arc<ServerAddr>> {
        let Ok(clients) = self.inner.shared.clients.lock() else {
            return Vec::new();
        };
        let mut connected = vec![false; self.inner.servers.len()];
        for id in clients.keys() {
            if let Some(up) = connected.get_mut(id.index()) {
                *up = true;
            }
        }
        self.inner
            .servers
            .iter()
            .zip(connected)
            .filter(|(_, up)| !up)
            .map(|(addr, _)| Arc::clone(addr))
            .collect()
    }

    /// The configured, valid servers.
    pub fn servers(&self) -> &[Arc<ServerAddr>] {
        &self.inner.servers
    }

    /// Configured entries that are not used, and why.
    pub fn rejected_entries(&self) -> &[RejectedEntry] {
        &self.inner.rejected
    }

    /// The runtime the pool runs on, for companion tasks that must live as
    /// long as the pool's links (e.g. the reader of `joinmarket::Messaging`,
    /// feature `joinmarket`).
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.inner.dialer.runtime
    }

    /// The SOCKS credentials for dialing peers through the proxy: the fixed
    /// [`Config::proxy_auth`] when set, else the isolation credentials when
    /// isolation is on, else `None`.
    pub fn peer_credentials(&self) -> Option<SocksCredentials> {
        match self.inner.dialer.proxy_auth() {
            Some(fixed) => Some(fixed.clone()),
            None => self.inner.isolation.peer_credentials(),
        }
    }

    /// The pool's events: first one [`PoolEvent::AddressRejected`] per
    /// malformed configured entry, then [`PoolEvent::ProxyUnreachable`] if
    /// the proxy is down now (as a pool on an in-process Tor client that is
    /// still bootstrapping is from its start), then, as they happen,
    /// connected, disconnected, dial failures, give-ups, all down,
    /// recovered, proxy unreachable / recovered.
    ///
    /// Each stream buffers up to 1,024 events; a stream that is not read
    /// does not grow past that: later events are counted and it receives
    /// one [`PoolEvent::Lagged`] saying how many it missed once it has room.
    pub fn events(&self) -> EventStream {
        let rejections: Vec<PoolEvent> = self
            .inner
            .rejected
            .iter()
            .filter_map(|entry| match &entry.reason {
                Rejection::Malformed(error) => Some(PoolEvent::AddressRejected {
                    index: entry.index,
                    error: error.clone(),
                }),
                _ => None,
            })
            .collect();
        // Room for the rejections and the proxy's state.
        let (mut tx, rx) = mpsc::channel(EVENT_BUFFER + rejections.len() + 1);
        for event in rejections {
            // Fits: the buffer was sized for them.
            let _ = tx.try_send(event);
        }
        if let Ok(mut audience) = self.inner.shared.audience.lock() {
            // Under the lock that publishing takes: either this stream gets
            // the live event or this copy, never both, never neither.
            if audience.proxy_down {
                let _ = tx.try_send(PoolEvent::ProxyUnreachable);
            }
            audience.subscribers.push(Subscriber { tx, missed: 0 });
        }
        EventStream { rx }
    }
}
