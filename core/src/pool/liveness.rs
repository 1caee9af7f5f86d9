//! Keepalive of connected links: signs of life, probes, and declaring a
//! silent link lost.

use super::*;

impl PoolState {
    /// A sign of life on `attempt`'s link; `answer` when it answers a probe.
    pub(super) fn heard(
        &mut self,
        now: Instant,
        attempt: AttemptId,
        answer: bool,
    ) -> Result<(), InputError> {
        let link = self.link(attempt)?;
        let now = self.clock(now);
        match link.state {
            LinkState::Open => {
                let id = link.server;
                let idle = self.keepalive.idle;
                let server = &mut self.servers[id.index()];
                let Some((last_active, watch)) = server.state.keepalive() else {
                    return Ok(());
                };
                *last_active = now;
                if let Watch::Probing { sent, .. } = *watch {
                    // Any sign of life settles the probe; the next one is
                    // due once the link has been quiet for `idle`. While
                    // quiet, a sign of life only moves `last_active`: the
                    // timer re-arms from it when it fires.
                    *watch = Watch::Quiet;
                    self.timers.set_in(Lane::Idle, id, now + idle);
                    if answer {
                        let rtt = now.saturating_since(sent);
                        server.last_probe_rtt = RoundTrip::of(rtt);
                        self.notify(Notification::ProbeAnswered {
                            server: id,
                            attempt,
                            rtt,
                        });
                    }
                }
                Ok(())
            }
            LinkState::Closing | LinkState::StrayClosing | LinkState::CloseAbandoned => Ok(()),
            state => Err(unexpected(attempt, state)),
        }
    }

    /// The keepalive timer of an open link fired: probe it if it has been
    /// quiet for `idle`, declare it lost if its probe went unanswered, else
    /// re-arm at the link's next due instant.
    pub(super) fn keepalive_due(&mut self, now: Tick, attempt: AttemptId, id: ServerId) {
        let keepalive = self.keepalive;
        let Some((last_active, watch)) = self.servers[id.index()].state.keepalive() else {
            return;
        };
        match *watch {
            Watch::Passive => {}
            Watch::Quiet => {
                let due = *last_active + keepalive.idle;
                if now < due {
                    self.timers.set_in(Lane::Idle, id, due);
                    return;
                }
                let deadline = now + keepalive.probe_timeout;
                *watch = Watch::Probing { sent: now };
                self.timers.set_in(Lane::Probe, id, deadline);
                self.outputs.push(Output::Probe(ProbeRequest {
                    attempt,
                    server: id,
                }));
            }
            Watch::Probing { sent } => {
                let deadline = sent + keepalive.probe_timeout;
                if now < deadline {
                    self.timers.set_in(Lane::Probe, id, deadline);
                    return;
                }
                self.lose(now, attempt, id, LinkLoss::KeepaliveTimeout);
            }
        }
    }

    /// `attempt`'s connection cannot be probed (its peer answers no probe):
    /// from now on it is watched only for its end, never declared lost for
    /// silence.
    ///
    /// # Errors
    /// [`InputError`] if `attempt` is unknown or never connected.
    pub(super) fn probe_unsupported(
        &mut self,
        now: Instant,
        attempt: AttemptId,
    ) -> Result<(), InputError> {
        let link = self.link(attempt)?;
        self.clock(now);
        match link.state {
            LinkState::Open => {
                if let State::Connected { watch, .. } = &mut self.servers[link.server.index()].state
                {
                    *watch = Watch::Passive;
                    self.timers.cancel(TimerKey::Server(link.server));
                }
                Ok(())
            }
            LinkState::Closing | LinkState::StrayClosing | LinkState::CloseAbandoned => Ok(()),
            state => Err(unexpected(attempt, state)),
        }
    }
}
