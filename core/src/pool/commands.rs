//! What a user asks: the connect passes, connect-with-retry, close-all,
//! and maintenance on and off.

use super::*;

impl PoolState {
    /// Dials every server that is neither connected nor being dialed, all at
    /// once, and finishes when every attempt it started or joined has a
    /// result. Its report's `connected` is the original's return value.
    pub(super) fn connect_all_parallel(&mut self, now: Instant) -> OperationId {
        self.start_pass(now, OperationKind::ConnectAllParallel)
    }

    /// Like [`connect_all_parallel`](Self::connect_all_parallel); its report's
    /// `newly_connected` is the original's return value.
    pub(super) fn reconnect_disconnected(&mut self, now: Instant) -> OperationId {
        self.start_pass(now, OperationKind::ReconnectDisconnected)
    }

    /// Dials every disconnected server at once and redials each failed one on
    /// the policy's backoff, until one server is connected (finishes at
    /// once) or the deadline (`now + policy.timeout`) passes (finishes with
    /// 0 exactly then). Dials still in flight go on and may connect later.
    ///
    /// # Errors
    /// [`ConfigError`] for a policy out of range; nothing is started then.
    pub(super) fn connect_all_with_retry(
        &mut self,
        now: Instant,
        policy: RetryPolicy,
    ) -> Result<OperationId, ConfigError> {
        policy.validate()?;
        let now = self.clock(now);
        let id = self.new_operation_id();
        let deadline = now + policy.timeout;
        self.operations.push(Operation {
            id,
            kind: OperationKind::ConnectAllWithRetry,
            waiting: BTreeSet::new(),
            newly_connected: Vec::new(),
            retry: Some(RetrySpec {
                backoff: policy.backoff,
            }),
        });
        for index in 0..self.servers.len() {
            let server = &mut self.servers[index];
            // An explicit command starts every server's backoff afresh.
            if !matches!(server.state, State::Connected { .. }) {
                server.backoff_step = 0;
            }
            match &mut server.state {
                state if state.is_down() => {
                    self.dial(now, server_id(index));
                }
                State::Closing { redial, .. } => *redial = true,
                _ => {}
            }
        }
        if self.connected > 0 {
            self.finish_operation(id, OperationEnd::Connected);
        } else if deadline <= now {
            self.finish_operation(id, OperationEnd::DeadlineReached);
        } else {
            self.timers.set(TimerKey::Operation(id), deadline);
        }
        Ok(id)
    }

    /// Closes every connection, aborts every dial in flight (a success that
    /// arrives later is closed, never registered), stops maintenance and
    /// ends the other operations. Finishes when every close has finished or
    /// timed out; each connected server gets one
    /// [`Notification::Disconnected`], whether its close succeeded or not.
    pub(super) fn close_all(&mut self, now: Instant) -> OperationId {
        let now = self.clock(now);
        let id = self.new_operation_id();
        self.maintenance = false;
        self.all_down = false;
        let others: Vec<OperationId> = self
            .operations
            .iter()
            .filter(|op| op.kind != OperationKind::CloseAll)
            .map(|op| op.id)
            .collect();
        for other in others {
            self.finish_operation(other, OperationEnd::Cancelled);
        }
        self.proxy.probe = None;
        self.cancel_proxy_probe();
        self.proxy.waiters.clear();

        let mut waiting = BTreeSet::new();
        for index in 0..self.servers.len() {
            let id = server_id(index);
            self.cancel_retry(id);
            let server = &mut self.servers[index];
            match server.state {
                State::Dialing { attempt, .. } => {
                    server.rest();
                    self.timers.cancel(TimerKey::Server(id));
                    self.set_link_state(attempt, LinkState::Abandoned);
                    self.outputs.push(Output::Abort(attempt));
                }
                State::Connected { attempt, .. } => {
                    self.connected -= 1;
                    self.set_link_state(attempt, LinkState::Closing);
                    self.request_close(now, attempt, id);
                    waiting.insert(attempt);
                }
                State::Closing {
                    attempt,
                    ref mut redial,
                    ..
                } => {
                    // close_all is the last word: no redial after this close.
                    *redial = false;
                    waiting.insert(attempt);
                }
                _ => {}
            }
        }
        let done = waiting.is_empty();
        self.operations.push(Operation {
            id,
            kind: OperationKind::CloseAll,
            waiting,
            newly_connected: Vec::new(),
            retry: None,
        });
        if done {
            self.finish_operation(id, OperationEnd::Completed);
        }
        id
    }

    /// Starts (or restarts) background maintenance: every server that is
    /// lost or not connected is redialed on its own backoff. A restart
    /// forgets earlier give-ups. Servers with nothing scheduled are dialed
    /// now if their last dial did not fail, else after their backoff (so a
    /// server that failed a moment ago is not hit again at once).
    pub(super) fn start_maintenance(&mut self, now: Instant) {
        let now = self.clock(now);
        self.maintenance = true;
        for index in 0..self.servers.len() {
            let server = &mut self.servers[index];
            server.gave_up = false;
            if server.state == State::GaveUp {
                server.enter(State::Idle);
            }
            if server.state == State::Idle {
                if server.consecutive_failures == 0 {
                    self.redial(now, server_id(index));
                } else {
                    self.schedule_retry(now, server_id(index));
                }
            }
        }
        self.keep_probing(now);
    }

    /// Stops background maintenance. Dials in flight go on; nothing new is
    /// scheduled unless a `connect_all_with_retry` is running.
    pub(super) fn stop_maintenance(&mut self, now: Instant) {
        self.clock(now);
        self.maintenance = false;
        self.forget_unwanted_retries();
    }

    pub(super) fn start_pass(&mut self, now: Instant, kind: OperationKind) -> OperationId {
        let now = self.clock(now);
        let id = self.new_operation_id();
        let mut waiting = BTreeSet::new();
        for index in 0..self.servers.len() {
            match &mut self.servers[index].state {
                state if state.is_down() => {
                    waiting.insert(self.dial(now, server_id(index)));
                }
                State::Dialing { attempt, .. } => {
                    waiting.insert(*attempt);
                }
                State::Closing {
                    attempt, redial, ..
                } => {
                    // Asked for after a close_all that is still closing this
                    // link: dial when the close ends; wait for that dial.
                    *redial = true;
                    waiting.insert(*attempt);
                }
                _ => {}
            }
        }
        let done = waiting.is_empty();
        self.operations.push(Operation {
            id,
            kind,
            waiting,
            newly_connected: Vec::new(),
            retry: None,
        });
        if done {
            self.finish_operation(id, OperationEnd::Completed);
        }
        id
    }
}
