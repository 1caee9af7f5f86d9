//! The pool's metrics, through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`): the pool records, the application's
//! recorder (Prometheus exporter, statsd, …) collects. Without the feature
//! nothing here is compiled in and nothing is recorded.
//!
//! Everything is recorded by the driver, where it learns each fact, in this
//! one module. Names and labels:
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `dirpool_dials_started_total` | counter | | dials started (SOCKS connect, CONNECT, handshake) |
//! | `dirpool_dials_succeeded_total` | counter | | dials that ended with a registered link |
//! | `dirpool_dials_failed_total` | counter | `class` | failed dials, by the core's [`DialFailure`] class: `proxy_unreachable`, `proxy_protocol`, `proxy_timed_out`, `proxy_auth_rejected`, `isolation_unsupported`, `socks`, `timed_out`, `handshake_rejected`, `nick_in_use`, `handshake_protocol`, `io`, `aborted` |
//! | `dirpool_links_lost_total` | counter | `reason` | links lost without the pool asking, by [`LinkLoss`]: `closed_by_peer`, `io`, `protocol`, `keepalive_timeout`, `write_timed_out`, `disconnected_by_peer`, `panicked` |
//! | `dirpool_probes_sent_total` | counter | | keepalive probes sent |
//! | `dirpool_probes_answered_total` | counter | | probes answered |
//! | `dirpool_probes_timed_out_total` | counter | | probes unanswered by their deadline (each loses its link: `reason="keepalive_timeout"`) |
//! | `dirpool_events_dropped_total` | counter | | events an `events()` stream missed because its reader fell behind (it then gets `PoolEvent::Lagged`) |
//! | `dirpool_links_up` | gauge | | servers connected |
//! | `dirpool_links_connecting` | gauge | | servers with a dial in flight |
//! | `dirpool_links_backing_off` | gauge | | servers waiting for their next dial (backoff, or the proxy) |
//! | `dirpool_links_given_up` | gauge | | servers maintenance gave up on |
//! | `dirpool_probe_rtt_seconds` | histogram | | round trip of each answered probe |
//!
//! The gauges move by increments, so the pools of one process add up; a
//! pool that stops takes its servers out of them. The counts are those of
//! [`LinkCounts`](crate::LinkCounts) (the same as
//! [`DirectoryPool::health`](crate::DirectoryPool::health) reports).
//!
//! [`DialFailure`]: crate::DialFailure
//! [`LinkLoss`]: crate::LinkLoss

#[cfg(feature = "metrics")]
pub(crate) use recording::*;

#[cfg(not(feature = "metrics"))]
pub(crate) use silent::*;

#[cfg(feature = "metrics")]
mod recording {
    use std::time::Duration;

    use dirpool_core::{DialFailure, LinkCounts, LinkLoss, PoolState, ServerId, ServerState};
    use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};

    const DIALS_STARTED: &str = "dirpool_dials_started_total";
    const DIALS_SUCCEEDED: &str = "dirpool_dials_succeeded_total";
    const DIALS_FAILED: &str = "dirpool_dials_failed_total";
    const LINKS_LOST: &str = "dirpool_links_lost_total";
    const PROBES_SENT: &str = "dirpool_probes_sent_total";
    const PROBES_ANSWERED: &str = "dirpool_probes_answered_total";
    const PROBES_TIMED_OUT: &str = "dirpool_probes_timed_out_total";
    const EVENTS_DROPPED: &str = "dirpool_events_dropped_total";
    const LINKS_UP: &str = "dirpool_links_up";
    const LINKS_CONNECTING: &str = "dirpool_links_connecting";
    const LINKS_BACKING_OFF: &str = "dirpool_links_backing_off";
    const LINKS_GIVEN_UP: &str = "dirpool_links_given_up";
    const PROBE_RTT: &str = "dirpool_probe_rtt_seconds";

    /// Tells the recorder what each metric is (once per pool; recorders
    /// keep the first description).
    pub(crate) fn describe() {
        for (name, what) in [
            (DIALS_STARTED, "Dials started"),
            (DIALS_SUCCEEDED, "Dials that ended with a registered link"),
            (DIALS_FAILED, "Failed dials, by failure class"),
            (LINKS_LOST, "Links lost without the pool asking, by reason"),
            (PROBES_SENT, "Keepalive probes sent"),
            (PROBES_ANSWERED, "Keepalive probes answered"),
            (
                PROBES_TIMED_OUT,
                "Keepalive probes unanswered by their deadline",
            ),
            (
                EVENTS_DROPPED,
                "Events an events() stream missed while full",
            ),
        ] {
            describe_counter!(name, Unit::Count, what);
        }
        for (name, what) in [
            (LINKS_UP, "Servers connected"),
            (LINKS_CONNECTING, "Servers with a dial in flight"),
            (LINKS_BACKING_OFF, "Servers waiting for their next dial"),
            (LINKS_GIVEN_UP, "Servers maintenance gave up on"),
        ] {
            describe_gauge!(name, Unit::Count, what);
        }
        describe_histogram!(PROBE_RTT, Unit::Seconds, "Keepalive probe round trips");
    }

    pub(crate) fn dial_started() {
        counter!(DIALS_STARTED).increment(1);
    }

    pub(crate) fn dial_succeeded() {
        counter!(DIALS_SUCCEEDED).increment(1);
    }

    pub(crate) fn dial_failed(failure: DialFailure) {
        counter!(DIALS_FAILED, "class" => failure_class(failure)).increment(1);
    }

    pub(crate) fn link_lost(loss: LinkLoss) {
        counter!(LINKS_LOST, "reason" => loss_reason(loss)).increment(1);
        if loss == LinkLoss::KeepaliveTimeout {
            counter!(PROBES_TIMED_OUT).increment(1);
        }
    }

    pub(crate) fn probe_sent() {
        counter!(PROBES_SENT).increment(1);
    }

    pub(crate) fn probe_answered(rtt: Duration) {
        counter!(PROBES_ANSWERED).increment(1);
        metrics::histogram!(PROBE_RTT).record(rtt.as_secs_f64());
    }

    pub(crate) fn event_dropped() {
        counter!(EVENTS_DROPPED).increment(1);
    }

    /// The `class` label of a failed dial.
    fn failure_class(failure: DialFailure) -> &'static str {
        match failure {
            DialFailure::ProxyUnreachable => "proxy_unreachable",
            DialFailure::ProxyProtocol => "proxy_protocol",
            DialFailure::ProxyTimedOut => "proxy_timed_out",
            DialFailure::ProxyAuthRejected => "proxy_auth_rejected",
            DialFailure::IsolationUnsupported => "isolation_unsupported",
            DialFailure::Socks(_) => "socks",
            DialFailure::TimedOut => "timed_out",
            DialFailure::HandshakeRejected => "handshake_rejected",
            DialFailure::NickInUse => "nick_in_use",
            DialFailure::HandshakeProtocol => "handshake_protocol",
            DialFailure::Io(_) => "io",
            DialFailure::Aborted => "aborted",
            _ => "other",
        }
    }

    /// The `reason` label of a lost link.
    fn loss_reason(loss: LinkLoss) -> &'static str {
        match loss {
            LinkLoss::ClosedByPeer => "closed_by_peer",
            LinkLoss::Io(_) => "io",
            LinkLoss::Protocol => "protocol",
            LinkLoss::KeepaliveTimeout => "keepalive_timeout",
            LinkLoss::WriteTimedOut => "write_timed_out",
            LinkLoss::DisconnectedByPeer => "disconnected_by_peer",
            LinkLoss::Panicked => "panicked",
            _ => "other",
        }
    }

    /// This pool's share of the link gauges. The driver marks the servers
    /// its outputs name; [`update`](Self::update) re-reads only those
    /// (O(1) each), or every server after a command or an operation's end
    /// (which may move servers without an output naming them).
    #[derive(Debug)]
    pub(crate) struct Gauges {
        states: Vec<ServerState>,
        /// Counts of `states`, and what the gauges were last moved to.
        counts: LinkCounts,
        published: LinkCounts,
        touched: Vec<ServerId>,
        all: bool,
    }

    impl Gauges {
        pub(crate) fn new(servers: usize) -> Self {
            let mut counts = LinkCounts::default();
            for _ in 0..servers {
                counts.add(ServerState::Idle);
            }
            Self {
                states: vec![ServerState::Idle; servers],
                counts,
                published: counts,
                touched: Vec::new(),
                all: false,
            }
        }

        pub(crate) fn touch(&mut self, server: ServerId) {
            if !self.all {
                self.touched.push(server);
            }
        }

        pub(crate) fn touch_all(&mut self) {
            self.all = true;
            self.touched.clear();
        }

        /// Re-reads the servers touched since the last update and moves the
        /// gauges by what changed.
        pub(crate) fn update(&mut self, state: &PoolState) {
            if std::mem::take(&mut self.all) {
                for (index, status) in state.statuses().enumerate() {
                    self.set(index, status.state);
                }
            } else {
                for server in std::mem::take(&mut self.touched) {
                    if let Some(status) = state.status(server) {
                        self.set(server.index(), status.state);
                    }
                }
            }
            let (now, before) = (self.counts, self.published);
            move_gauge(LINKS_UP, before.up, now.up);
            move_gauge(LINKS_CONNECTING, before.connecting, now.connecting);
            move_gauge(LINKS_BACKING_OFF, before.backing_off, now.backing_off);
            move_gauge(LINKS_GIVEN_UP, before.given_up, now.given_up);
            self.published = now;
        }

        fn set(&mut self, index: usize, new: ServerState) {
            let Some(old) = self.states.get_mut(index) else {
                return;
            };
            if *old != new {
                self.counts.remove(*old);
                self.counts.add(new);
                *old = new;
            }
        }
    }

    impl Drop for Gauges {
        /// A stopped pool holds no link: its servers leave the gauges.
        fn drop(&mut self) {
            let before = self.published;
            move_gauge(LINKS_UP, before.up, 0);
            move_gauge(LINKS_CONNECTING, before.connecting, 0);
            move_gauge(LINKS_BACKING_OFF, before.backing_off, 0);
            move_gauge(LINKS_GIVEN_UP, before.given_up, 0);
        }
    }

    #[allow(
        clippy::cast_precision_loss,
        reason = "server counts are far below 2^52"
    )]
    fn move_gauge(name: &'static str, before: usize, now: usize) {
        if now > before {
            gauge!(name).increment((now - before) as f64);
        } else if now < before {
            gauge!(name).decrement((before - now) as f64);
        }
    }
}

/// The same calls, doing nothing: without the feature the driver's calls
/// compile to nothing.
#[cfg(not(feature = "metrics"))]
mod silent {
    use std::time::Duration;

    use dirpool_core::{DialFailure, LinkLoss, PoolState, ServerId};

    pub(crate) fn describe() {}
    pub(crate) fn dial_started() {}
    pub(crate) fn dial_succeeded() {}
    pub(crate) fn dial_failed(_: DialFailure) {}
    pub(crate) fn link_lost(_: LinkLoss) {}
    pub(crate) fn probe_sent() {}
    pub(crate) fn probe_answered(_: Duration) {}
    pub(crate) fn event_dropped() {}

    #[derive(Debug)]
    pub(crate) struct Gauges;

    impl Gauges {
        pub(crate) fn new(_: usize) -> Self {
            Self
        }
        pub(crate) fn touch(&mut self, _: ServerId) {}
        pub(crate) fn touch_all(&mut self) {}
        pub(crate) fn update(&mut self, _: &PoolState) {}
    }
}
