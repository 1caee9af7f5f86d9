//! Redials: which backoff applies, scheduling and cancelling a server's
//! redial, and the pool-wide proxy watch (one probe dial at a time while
//! the proxy is down).

use super::*;

impl PoolState {
    /// The newest running `connect_all_with_retry`, if any.
    pub(super) fn retry_operation(&self) -> Option<&RetrySpec> {
        self.operations
            .iter()
            .rev()
            .find_map(|op| op.retry.as_ref())
    }

    /// The backoff that applies to a server now, or `None` if nothing wants
    /// it redialed.
    pub(super) fn backoff_for(&self, id: ServerId) -> Option<Backoff> {
        if let Some(retry) = self.retry_operation() {
            return Some(retry.backoff);
        }
        (self.maintenance && !self.servers[id.index()].gave_up)
            .then_some(self.maintenance_policy.backoff)
    }

    /// Drops scheduled redials and proxy waits that nothing wants any more
    /// (maintenance stopped, a retry operation ended), so the status never
    /// promises a retry that will not happen.
    pub(super) fn forget_unwanted_retries(&mut self) {
        for index in 0..self.servers.len() {
            let id = server_id(index);
            let scheduled = matches!(
                self.servers[index].state,
                State::BackingOff { .. } | State::WaitingForProxy
            );
            if scheduled && self.backoff_for(id).is_none() {
                self.cancel_retry(id);
            }
        }
        let servers = &self.servers;
        self.proxy
            .waiters
            .retain(|id| servers[id.index()].state == State::WaitingForProxy);
        if self.proxy.waiters.is_empty() {
            self.cancel_proxy_probe();
        }
    }

    /// Dial now if the proxy is up, else queue for the proxy.
    pub(super) fn redial(&mut self, now: Tick, id: ServerId) {
        if self.proxy.down {
            self.wait_for_proxy(now, id);
        } else {
            self.dial(now, id);
        }
    }

    /// Schedules the server's next dial on its backoff, if anything wants it.
    pub(super) fn schedule_retry(&mut self, now: Tick, id: ServerId) -> Option<Tick> {
        let backoff = self.backoff_for(id)?;
        if self.proxy.down {
            return self.wait_for_proxy(now, id);
        }
        let server = &mut self.servers[id.index()];
        let at = now + backoff.delay(server.backoff_step, &mut self.rng);
        server.backoff_step = server.backoff_step.saturating_add(1);
        server.enter(State::BackingOff { until: at });
        self.timers.set(TimerKey::Server(id), at);
        Some(at)
    }

    pub(super) fn wait_for_proxy(&mut self, now: Tick, id: ServerId) -> Option<Tick> {
        let server = &mut self.servers[id.index()];
        if let State::BackingOff { .. } = server.state {
            self.timers.cancel(TimerKey::Server(id));
        }
        if server.state != State::WaitingForProxy {
            server.enter(State::WaitingForProxy);
            self.proxy.waiters.push_back(id);
        }
        self.keep_probing(now);
        // A probe already due fires in this same `handle_timeout` call.
        self.proxy.probe_at.map(|at| at.max(now))
    }

    /// While the proxy is down and servers wait for it, keep exactly one
    /// probe scheduled or in flight, unless the route reports it is not
    /// ready (it reports when it is).
    pub(super) fn keep_probing(&mut self, now: Tick) {
        if !self.proxy.down
            || self.proxy.hold.is_some()
            || self.proxy.probe.is_some()
            || self.proxy.probe_at.is_some()
            || self.proxy.waiters.is_empty()
        {
            return;
        }
        let Some(backoff) = self
            .retry_operation()
            .map(|r| r.backoff)
            .or(self.maintenance.then_some(self.maintenance_policy.backoff))
        else {
            return;
        };
        let at = now + backoff.delay(self.proxy.step, &mut self.rng);
        self.proxy.probe_at = Some(at);
        self.timers.set(TimerKey::ProxyProbe, at);
    }

    /// A dial got through the proxy, or the route reports it ready: it is
    /// up, unless the route's latest report says otherwise (a report wins
    /// over a dial result). Servers that waited for it are dialed now.
    pub(super) fn proxy_up(&mut self, now: Tick) {
        if !self.proxy.down || self.proxy.hold.is_some() {
            return;
        }
        self.cancel_proxy_probe();
        self.proxy = ProxyHealth {
            waiters: std::mem::take(&mut self.proxy.waiters),
            ..ProxyHealth::default()
        };
        self.notify(Notification::ProxyRecovered);
        while let Some(id) = self.next_proxy_waiter() {
            if self.backoff_for(id).is_some() {
                self.dial(now, id);
            }
        }
    }

    /// The route reports its own state: not ready holds the proxy down
    /// (no probe dials), ready brings it up.
    pub(super) fn proxy_reported(&mut self, now: Instant, report: ProxyReport) {
        let now = self.clock(now);
        self.proxy.hold = report.holds_dials().then_some(report);
        if !report.holds_dials() {
            self.proxy_up(now);
            return;
        }
        // Tor says when it is ready: probing before would only fail.
        self.cancel_proxy_probe();
        if !self.proxy.down {
            self.proxy.down = true;
            self.proxy.step = 0;
            self.notify(Notification::ProxyUnreachable);
        }
    }

    /// Takes the next server still waiting for the proxy off the queue (a
    /// queued server may have moved on since) and brings it to rest.
    pub(super) fn next_proxy_waiter(&mut self) -> Option<ServerId> {
        while let Some(id) = self.proxy.waiters.pop_front() {
            let server = &mut self.servers[id.index()];
            if server.state == State::WaitingForProxy {
                server.rest();
                return Some(id);
            }
        }
        None
    }

    /// Drops `id`'s scheduled redial or proxy wait, if it has one (a server
    /// left in the proxy's queue is skipped when its turn comes).
    pub(super) fn cancel_retry(&mut self, id: ServerId) {
        let server = &mut self.servers[id.index()];
        match server.state {
            State::BackingOff { .. } => self.timers.cancel(TimerKey::Server(id)),
            State::WaitingForProxy => {}
            _ => return,
        }
        server.rest();
    }

    /// Drops the scheduled proxy probe, if any.
    pub(super) fn cancel_proxy_probe(&mut self) {
        if self.proxy.probe_at.take().is_some() {
            self.timers.cancel(TimerKey::ProxyProbe);
        }
    }
}
