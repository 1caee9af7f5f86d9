//! Read-only views of the pool: servers, statuses, health, counts.

use super::*;

impl PoolState {
    /// The valid, distinct configured servers, in configured order.
    pub fn servers(&self) -> impl ExactSizeIterator<Item = (ServerId, &Arc<ServerAddr>)> {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| (server_id(i), &s.addr))
    }

    /// The address of `server`.
    pub fn server_addr(&self, server: ServerId) -> Option<&Arc<ServerAddr>> {
        self.servers.get(server.index()).map(|s| &s.addr)
    }

    /// The server named by `text` (`"host"` or `"host:port"`, any case), if
    /// it is in the pool.
    pub fn find_server(&self, text: &str) -> Option<ServerId> {
        let addr = ServerAddr::parse(text).ok()?;
        let at = self
            .by_node_id
            .binary_search_by(|id| self.servers[id.index()].addr.node_id().cmp(addr.node_id()))
            .ok()?;
        Some(self.by_node_id[at])
    }

    /// Connected servers and the attempts whose connections they use.
    pub fn connected(&self) -> impl Iterator<Item = (ServerId, AttemptId)> + '_ {
        self.servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.state {
                State::Connected { attempt, .. } => Some((server_id(i), attempt)),
                _ => None,
            })
    }

    /// How many servers are connected.
    pub fn connected_count(&self) -> usize {
        self.connected
    }

    /// Configured, valid servers that are not connected (malformed entries
    /// are never listed).
    ///
    /// (Feature `test-kit`: for dirpool's own test kit, not covered by semver.)
    #[cfg(feature = "test-kit")]
    pub fn list_disconnected(&self) -> impl Iterator<Item = (ServerId, &Arc<ServerAddr>)> {
        self.servers()
            .filter(|(id, _)| !matches!(self.servers[id.index()].state, State::Connected { .. }))
    }

    /// A snapshot of `server`.
    pub fn status(&self, server: ServerId) -> Option<ServerStatus> {
        let s = self.servers.get(server.index())?;
        Some(ServerStatus {
            server,
            addr: Arc::clone(&s.addr),
            state: s.state.public(),
            attempts: u64::from(s.attempts),
            consecutive_failures: s.consecutive_failures,
            last_failure: s.last_failure,
            last_error: s.last_error.map(|(error, at)| LastError {
                error,
                at: self.time.instant(at),
            }),
            connected_since: match s.state {
                State::Connected { since, .. } => Some(self.time.instant(since)),
                _ => None,
            },
            last_active: match s.state {
                State::Connected { last_active, .. } => Some(self.time.instant(last_active)),
                _ => None,
            },
            last_probe_rtt: s.last_probe_rtt.get(),
            next_retry_at: match s.state {
                State::BackingOff { until } => Some(self.time.instant(until)),
                _ => None,
            },
        })
    }

    /// The pool's health at `now`: how many servers stand where, the proxy
    /// as the machine knows it, and each server's state, latest error, and
    /// the ages of its connection and of its last sign of life. O(servers).
    pub fn health(&self, now: Instant) -> PoolHealth {
        let statuses: Vec<ServerStatus> = self.statuses().collect();
        PoolHealth {
            counts: statuses.iter().collect::<LinkCounts>(),
            proxy: match (self.proxy.down, self.proxy.hold) {
                (false, _) => ProxyState::Reachable,
                (true, Some(ProxyReport::Bootstrapping)) => ProxyState::Bootstrapping,
                (true, Some(ProxyReport::Blocked)) => ProxyState::Blocked,
                (true, _) => ProxyState::Unreachable,
            },
            maintenance: self.maintenance,
            servers: statuses
                .iter()
                .map(|status| ServerHealth::new(status, now))
                .collect(),
        }
    }

    /// Snapshots of every server.
    pub fn statuses(&self) -> impl Iterator<Item = ServerStatus> + '_ {
        (0..self.servers.len()).filter_map(|i| self.status(server_id(i)))
    }

    /// Configured entries that are not in the pool, and why.
    pub fn rejected_entries(&self) -> &[RejectedEntry] {
        &self.rejected
    }

    /// The isolation settings; ask it for the peer credentials.
    pub fn isolation(&self) -> &StreamIsolation {
        &self.isolation
    }

    /// Whether maintenance is running.
    ///
    /// (Feature `test-kit`: for dirpool's own test kit, not covered by semver.)
    #[cfg(feature = "test-kit")]
    pub fn maintenance_running(&self) -> bool {
        self.maintenance
    }

    /// False from the first proxy failure until a dial gets through again.
    ///
    /// (Feature `test-kit`: for dirpool's own test kit, not covered by semver.)
    #[cfg(feature = "test-kit")]
    pub fn proxy_reachable(&self) -> bool {
        !self.proxy.down
    }

    /// Attempts still owed a result or a close result by the driver.
    ///
    /// (Feature `test-kit`: for dirpool's own test kit, not covered by semver.)
    #[cfg(feature = "test-kit")]
    pub fn pending_attempts(&self) -> usize {
        self.links.len()
    }

    /// Attempts the driver holds a live client for (registered, or stray and
    /// being closed).
    ///
    /// (Feature `test-kit`: for dirpool's own test kit, not covered by semver.)
    #[cfg(feature = "test-kit")]
    pub fn live_clients(&self) -> usize {
        self.links
            .iter()
            .filter(|(_, l)| {
                matches!(
                    l.state,
                    LinkState::Open | LinkState::Closing | LinkState::StrayClosing
                )
            })
            .count()
    }

    /// Operations not finished yet.
    pub fn operations_in_progress(&self) -> usize {
        self.operations.len()
    }

    /// The connection timeout every dial gets.
    pub fn connection_timeout(&self) -> Duration {
        self.connection_timeout
    }

    /// How long a close may take; the driver bounds its own closes by it.
    pub fn close_timeout(&self) -> Duration {
        self.close_timeout
    }

    /// The maintenance policy.
    ///
    /// (Feature `test-kit`: for dirpool's own test kit, not covered by semver.)
    #[cfg(feature = "test-kit")]
    pub fn maintenance_policy(&self) -> &MaintenancePolicy {
        &self.maintenance_policy
    }
}
