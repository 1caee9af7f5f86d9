//! The dial lifecycle: a dial goes out, succeeds or fails, its link is
//! lost or closed.

use super::*;

impl PoolState {
    pub(super) fn dial(&mut self, now: Tick, id: ServerId) -> AttemptId {
        let deadline = now + self.connection_timeout;
        let attempt = self.links.insert(Link {
            server: id,
            state: LinkState::Dialing,
        });
        let server = &mut self.servers[id.index()];
        debug_assert!(server.state.is_down());
        server.enter(State::Dialing {
            attempt,
            until: deadline,
        });
        server.attempts = server.attempts.saturating_add(1);
        // Replaces a pending redial, if any. A server waiting for the proxy
        // stays in its queue; the queue skips it when its turn comes.
        self.timers.set_in(Lane::Dial, id, deadline);
        self.outputs.push(Output::Dial(DialRequest {
            attempt,
            server: id,
            addr: Arc::clone(&server.addr),
            credentials: self.credentials.of(id),
            deadline: self.time.instant(deadline),
        }));
        attempt
    }

    /// The dial `attempt` connected and finished its handshake.
    ///
    /// # Errors
    /// [`InputError`] if `attempt` is unknown or already has a result.
    pub(super) fn dial_succeeded(
        &mut self,
        now: Instant,
        attempt: AttemptId,
    ) -> Result<(), InputError> {
        let link = self.link(attempt)?;
        let now = self.clock(now);
        match link.state {
            LinkState::Dialing => {
                self.set_link_state(attempt, LinkState::Open);
                let id = link.server;
                if self.proxy.probe == Some(attempt) {
                    self.proxy.probe = None;
                }
                let server = &mut self.servers[id.index()];
                server.enter(State::Connected {
                    attempt,
                    since: now,
                    last_active: now,
                    watch: Watch::Quiet,
                });
                server.consecutive_failures = 0;
                server.gave_up = false;
                server.last_probe_rtt = RoundTrip::NONE;
                self.connected += 1;
                self.timers
                    .set_in(Lane::Idle, id, now + self.keepalive.idle);
                self.notify(Notification::Connected {
                    server: id,
                    attempt,
                });
                if self.all_down {
                    self.all_down = false;
                    self.notify(Notification::Recovered);
                }
                self.attempt_resolved(attempt, Some(id));
                self.proxy_up(now);
                Ok(())
            }
            LinkState::Abandoned => {
                self.set_link_state(attempt, LinkState::StrayClosing);
                tracing::debug!(%attempt, "late success of an abandoned dial: closing it");
                self.request_stray_close(now, attempt, link.server);
                self.proxy_up(now);
                Ok(())
            }
            state => Err(unexpected(attempt, state)),
        }
    }

    /// The dial `attempt` failed.
    ///
    /// # Errors
    /// [`InputError`] if `attempt` is unknown or already has a result.
    pub(super) fn dial_failed(
        &mut self,
        now: Instant,
        attempt: AttemptId,
        failure: DialFailure,
        detail: Option<DialDetail>,
    ) -> Result<(), InputError> {
        let link = self.link(attempt)?;
        let now = self.clock(now);
        match link.state {
            LinkState::Dialing => {
                self.links.remove(attempt);
                self.fail_attempt(now, attempt, link.server, failure, detail);
                Ok(())
            }
            LinkState::Abandoned => {
                self.links.remove(attempt);
                Ok(())
            }
            state => Err(unexpected(attempt, state)),
        }
    }

    pub(super) fn fail_attempt(
        &mut self,
        now: Tick,
        attempt: AttemptId,
        id: ServerId,
        failure: DialFailure,
        // The driver's detail, handed back in the notification.
        detail: Option<DialDetail>,
    ) {
        let was_probe = self.proxy.probe == Some(attempt);
        if was_probe {
            self.proxy.probe = None;
        }
        let server = &mut self.servers[id.index()];
        server.last_failure = Some(failure);
        server.last_error = Some((ServerError::Dial(failure), now));

        match failure.scope() {
            FailureScope::Proxy => {
                // Pool-wide: the server's own budget and backoff are untouched.
                self.servers[id.index()].rest();
                let newly_down = !self.proxy.down;
                if newly_down {
                    self.proxy.down = true;
                    self.proxy.step = 0;
                } else if was_probe {
                    self.proxy.step = self.proxy.step.saturating_add(1);
                }
                let retry_at = if self.backoff_for(id).is_some() {
                    self.wait_for_proxy(now, id)
                } else {
                    None
                };
                self.notify(Notification::DialFailed {
                    server: id,
                    attempt,
                    failure,
                    retry_at: retry_at.map(|at| self.time.instant(at)),
                    detail,
                });
                if newly_down {
                    self.notify(Notification::ProxyUnreachable);
                }
            }
            FailureScope::Server => {
                if failure.proves_proxy_up() {
                    self.proxy_up(now);
                } else if was_probe && self.proxy.down {
                    self.proxy.step = self.proxy.step.saturating_add(1);
                }
                let max = self.maintenance_policy.max_retries;
                let server = &mut self.servers[id.index()];
                let counts = failure.counts_towards_give_up();
                if counts {
                    server.consecutive_failures = server.consecutive_failures.saturating_add(1);
                }
                let failures = server.consecutive_failures;
                let gives_up =
                    counts && self.maintenance && max > 0 && !server.gave_up && failures >= max;
                if gives_up {
                    server.gave_up = true;
                }
                server.rest();
                let retry_at = self.schedule_retry(now, id);
                self.notify(Notification::DialFailed {
                    server: id,
                    attempt,
                    failure,
                    retry_at: retry_at.map(|at| self.time.instant(at)),
                    detail,
                });
                if gives_up {
                    self.notify(Notification::GaveUp {
                        server: id,
                        failures,
                    });
                }
            }
        }
        self.attempt_resolved(attempt, None);
        self.keep_probing(now);
        self.drop_unused_deadline(id);
    }

    /// The connection made by `attempt` is gone. A loss reported while the
    /// connection is being closed is ignored (the close's result follows).
    ///
    /// # Errors
    /// [`InputError`] if `attempt` is unknown or never connected.
    pub(super) fn connection_lost(
        &mut self,
        now: Instant,
        attempt: AttemptId,
        loss: LinkLoss,
    ) -> Result<(), InputError> {
        let link = self.link(attempt)?;
        let now = self.clock(now);
        match link.state {
            LinkState::Open => {
                self.lose(now, attempt, link.server, loss);
                Ok(())
            }
            LinkState::Closing | LinkState::StrayClosing | LinkState::CloseAbandoned => Ok(()),
            state => Err(unexpected(attempt, state)),
        }
    }

    /// A registered link is gone without our asking.
    pub(super) fn lose(&mut self, now: Tick, attempt: AttemptId, id: ServerId, loss: LinkLoss) {
        self.links.remove(attempt);
        let stable_after = self.maintenance_policy.stable_after;
        let server = &mut self.servers[id.index()];
        if let State::Connected { since, .. } = server.state {
            // A link that stayed up long enough earns a fresh backoff; one
            // that died young keeps climbing, so a flapping directory is not
            // hammered.
            if now.saturating_since(since) >= stable_after {
                server.backoff_step = 0;
            }
        }
        server.rest();
        server.last_error = Some((ServerError::Link(loss), now));
        self.connected -= 1;
        self.notify(Notification::Disconnected {
            server: id,
            attempt,
            reason: DisconnectReason::Lost(loss),
        });
        if self.connected == 0 {
            self.all_down = true;
            self.notify(Notification::AllDown);
        }
        self.schedule_retry(now, id);
        self.drop_unused_deadline(id);
    }

    /// The close of `attempt`'s connection finished, well or not.
    ///
    /// # Errors
    /// [`InputError`] if `attempt` is unknown or was not being closed.
    pub(super) fn close_finished(
        &mut self,
        now: Instant,
        attempt: AttemptId,
        result: Result<(), CloseFailure>,
    ) -> Result<(), InputError> {
        let link = self.link(attempt)?;
        let now = self.clock(now);
        match link.state {
            LinkState::Closing => {
                self.links.remove(attempt);
                self.timers.cancel(TimerKey::Server(link.server));
                let reason = match result {
                    Ok(()) => DisconnectReason::Closed,
                    Err(e) => DisconnectReason::CloseFailed(e),
                };
                self.closed(now, attempt, link.server, reason);
                Ok(())
            }
            LinkState::StrayClosing | LinkState::CloseAbandoned => {
                self.links.remove(attempt);
                self.timers.cancel(TimerKey::StrayClose(attempt));
                Ok(())
            }
            state => Err(unexpected(attempt, state)),
        }
    }

    /// A registered connection's close ended (done, failed or timed out).
    pub(super) fn closed(
        &mut self,
        now: Tick,
        attempt: AttemptId,
        id: ServerId,
        reason: DisconnectReason,
    ) {
        let server = &mut self.servers[id.index()];
        let redial = matches!(server.state, State::Closing { redial: true, .. });
        server.rest();
        self.notify(Notification::Disconnected {
            server: id,
            attempt,
            reason,
        });
        if redial {
            // A connect command came while this link was closing: its dial
            // starts now, and the passes that waited for the close wait for
            // the dial instead.
            let dial = self.dial(now, id);
            for op in &mut self.operations {
                if op.kind != OperationKind::CloseAll && op.waiting.remove(&attempt) {
                    op.waiting.insert(dial);
                }
            }
            self.attempt_resolved(attempt, None);
        } else {
            self.attempt_resolved(attempt, None);
            // Only if a command started since close_all wants the server back.
            self.schedule_retry(now, id);
        }
    }

    /// Closes `server`'s registered connection (made by `attempt`).
    pub(super) fn request_close(&mut self, now: Tick, attempt: AttemptId, server: ServerId) {
        let until = now + self.close_timeout;
        self.servers[server.index()].enter(State::Closing {
            attempt,
            until,
            redial: false,
        });
        self.close_output(attempt, TimerKey::Server(server), server, until, false);
    }

    /// Closes the connection a late success of an abandoned dial made.
    pub(super) fn request_stray_close(&mut self, now: Tick, attempt: AttemptId, server: ServerId) {
        let until = now + self.close_timeout;
        self.close_output(attempt, TimerKey::StrayClose(attempt), server, until, true);
    }

    pub(super) fn close_output(
        &mut self,
        attempt: AttemptId,
        key: TimerKey,
        server: ServerId,
        deadline: Tick,
        stray: bool,
    ) {
        match key {
            TimerKey::Server(id) => self.timers.set_in(Lane::Close, id, deadline),
            key => self.timers.set(key, deadline),
        }
        self.outputs.push(Output::Close(CloseRequest {
            attempt,
            server,
            stray,
            deadline: self.time.instant(deadline),
        }));
    }
}
