//! What the pool says about itself: `health()`, the metrics it records
//! (feature `metrics`, read with a recorder of our own), and its log lines
//! (each event once, in its server's span, read with a tracing layer of
//! our own). Real loopback sockets through the loopback SOCKS5 proxy.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{config, line_pool, next_matching, next_matching_seen, on_both_runtimes, wait_for};
use dirpool::{
    DialFailure, DirectoryPool, LinkLoss, PoolEvent, ProxyState, Runtime, ServerError, ServerState,
    SocksReply,
};
use dirpool_tests::{LineBehaviour, LineServer, Reply, SocksConfig, SocksServer};

const SHORT: Duration = Duration::from_secs(5);

/// A healthy directory ("up.example") and one the proxy refuses with host
/// unreachable ("refused.example"), behind one loopback proxy.
fn one_up_one_refused() -> (LineServer, SocksServer, Vec<String>) {
    let dir = LineServer::start(LineBehaviour::Healthy).unwrap();
    let tor = SocksServer::start(
        SocksConfig::new()
            .with_reply("up.example", Reply::Forward(dir.addr()))
            .with_reply("refused.example", Reply::Code(0x04)),
    )
    .unwrap();
    (dir, tor, vec![common::dns("up"), common::dns("refused")])
}

#[test]
fn health_shows_counts_errors_ages_and_the_proxy() {
    on_both_runtimes(|rt| async move {
        let (dir, tor, servers) = one_up_one_refused();
        let pool = line_pool(config(&servers, tor.addr()), &rt);
        let mut events = pool.events();
        let started = rt.now();
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 1);

        let health = pool.health().await.unwrap();
        let elapsed = rt.now() - started;
        assert_eq!(health.proxy, ProxyState::Reachable);
        assert!(!health.maintenance);
        assert_eq!(
            (health.counts.up, health.counts.idle),
            (1, 1),
            "{health:#?}"
        );
        assert_eq!(health.counts.total(), 2);
        let (up, refused) = (&health.servers[0], &health.servers[1]);
        assert_eq!(up.addr.node_id(), servers[0]);
        assert_eq!(up.state, ServerState::Connected);
        assert!(up.connected_for.is_some_and(|d| d <= elapsed), "{up:?}");
        assert!(up.quiet_for.is_some_and(|d| d <= elapsed), "{up:?}");
        assert_eq!((up.last_error, up.last_probe_rtt), (None, None));
        assert_eq!(refused.state, ServerState::Idle, "no maintenance: no retry");
        let error = refused.last_error.expect("the refusal");
        assert_eq!(
            error.error,
            ServerError::Dial(DialFailure::Socks(SocksReply::HostUnreachable))
        );
        assert!(error.ago <= elapsed, "{error:?}");
        assert_eq!(refused.consecutive_failures, 1);
        assert_eq!((refused.quiet_for, refused.connected_for), (None, None));

        // The directory drops the link: the loss is now the server's error.
        dir.drop_all();
        assert!(
            wait_for(&rt, &mut events, SHORT, |e| matches!(
                e,
                PoolEvent::Disconnected { .. }
            ))
            .await
        );
        let health = pool.health().await.unwrap();
        assert_eq!(health.counts.up, 0);
        let up = &health.servers[0];
        assert_eq!(
            up.last_error.map(|e| e.error),
            Some(ServerError::Link(LinkLoss::ClosedByPeer))
        );
        assert_eq!((up.quiet_for, up.connected_for), (None, None));
        pool.close_all().await.unwrap();

        // A proxy that is not there is the pool's state, not a server's.
        let gone = tor.addr();
        drop(tor);
        let pool = line_pool(config(&servers, gone), &rt);
        let mut events = pool.events();
        pool.start_maintenance().unwrap();
        assert!(
            wait_for(&rt, &mut events, SHORT, |e| matches!(
                e,
                PoolEvent::ProxyUnreachable
            ))
            .await
        );
        let health = pool.health().await.unwrap();
        assert_eq!(health.proxy, ProxyState::Unreachable);
        assert!(health.maintenance);
        // Both were dialed at once; the first refusal put the pool in that
        // state (the other dial may still be on its way).
        assert!(
            health.servers.iter().any(|s| s.last_error.map(|e| e.error)
                == Some(ServerError::Dial(DialFailure::ProxyUnreachable))),
            "{health:#?}"
        );
        pool.close_all().await.unwrap();
    });
}

// ---- metrics -------------------------------------------------------------------

/// A recorder of our own: every counter and gauge by `name{label=value,…}`,
/// every histogram's samples.
#[derive(Debug, Default, Clone)]
struct TestRecorder {
    values: Arc<Mutex<BTreeMap<String, f64>>>,
    samples: Arc<Mutex<BTreeMap<String, Vec<f64>>>>,
}

impl TestRecorder {
    fn value(&self, key: &str) -> f64 {
        self.values.lock().unwrap().get(key).copied().unwrap_or(0.0)
    }

    fn samples(&self, key: &str) -> Vec<f64> {
        self.samples
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    fn handle(&self, key: &metrics::Key) -> Arc<Handle> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = if labels.is_empty() {
            key.name().to_owned()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        Arc::new(Handle {
            name,
            recorder: self.clone(),
        })
    }
}

struct Handle {
    name: String,
    recorder: TestRecorder,
}

impl Handle {
    fn add(&self, delta: f64) {
        *self
            .recorder
            .values
            .lock()
            .unwrap()
            .entry(self.name.clone())
            .or_default() += delta;
    }
}

#[allow(clippy::cast_precision_loss, reason = "test counts are small")]
impl metrics::CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.add(value as f64);
    }
    fn absolute(&self, value: u64) {
        let mut values = self.recorder.values.lock().unwrap();
        let slot = values.entry(self.name.clone()).or_default();
        *slot = slot.max(value as f64);
    }
}

impl metrics::GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.add(value);
    }
    fn decrement(&self, value: f64) {
        self.add(-value);
    }
    fn set(&self, value: f64) {
        self.recorder
            .values
            .lock()
            .unwrap()
            .insert(self.name.clone(), value);
    }
}

impl metrics::HistogramFn for Handle {
    fn record(&self, value: f64) {
        self.recorder
            .samples
            .lock()
            .unwrap()
            .entry(self.name.clone())
            .or_default()
            .push(value);
    }
}

impl metrics::Recorder for TestRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.handle(key))
    }
}

/// A current-thread tokio runtime: every task of the pool runs on this
/// thread, so a thread-local recorder or subscriber sees all of them.
fn current_thread() -> (tokio::runtime::Runtime, Arc<dyn Runtime>) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt: Arc<dyn Runtime> = Arc::new(tokio.block_on(async { dirpool::TokioRuntime::current() }));
    (tokio, rt)
}

fn gauges(recorder: &TestRecorder) -> [f64; 4] {
    [
        "dirpool_links_up",
        "dirpool_links_connecting",
        "dirpool_links_backing_off",
        "dirpool_links_given_up",
    ]
    .map(|name| recorder.value(name))
}

#[test]
fn metrics_count_dials_losses_and_move_the_gauges() {
    let recorder = TestRecorder::default();
    let (tokio, rt) = current_thread();
    metrics::with_local_recorder(&recorder, || {
        tokio.block_on(async {
            let (dir, tor, servers) = one_up_one_refused();
            let pool = line_pool(config(&servers, tor.addr()), &rt);
            let mut events = pool.events();
            assert_eq!(pool.connect_all_parallel().await.unwrap(), 1);
            assert_eq!(recorder.value("dirpool_dials_started_total"), 2.0);
            assert_eq!(recorder.value("dirpool_dials_succeeded_total"), 1.0);
            assert_eq!(
                recorder.value("dirpool_dials_failed_total{class=socks}"),
                1.0
            );
            let counts = pool.health().await.unwrap().counts;
            #[allow(clippy::cast_precision_loss, reason = "two servers")]
            let expected = [
                counts.up,
                counts.connecting,
                counts.backing_off,
                counts.given_up,
            ]
            .map(|n| n as f64);
            assert_eq!(
                gauges(&recorder),
                expected,
                "the gauges are health()'s counts"
            );
            assert_eq!(gauges(&recorder), [1.0, 0.0, 0.0, 0.0]);

            // The link is lost; maintenance redials it and backs off the
            // refused one.
            dir.drop_all();
            let lost = next_matching(&rt, &mut events, SHORT, |e| match e {
                PoolEvent::Disconnected { reason, .. } => Some(*reason),
                _ => None,
            })
            .await;
            assert!(lost.is_some());
            assert_eq!(
                recorder.value("dirpool_links_lost_total{reason=closed_by_peer}"),
                1.0
            );
            assert_eq!(recorder.value("dirpool_links_up"), 0.0);
            pool.start_maintenance().unwrap();
            assert!(
                wait_for(&rt, &mut events, SHORT, |e| matches!(
                    e,
                    PoolEvent::Connected { .. }
                ))
                .await
            );
            assert_eq!(recorder.value("dirpool_dials_succeeded_total"), 2.0);
            assert_eq!(recorder.value("dirpool_links_up"), 1.0);
            assert!(
                wait_for(&rt, &mut events, SHORT, |e| matches!(
                    e,
                    PoolEvent::DialFailed {
                        retry_at: Some(_),
                        ..
                    }
                ))
                .await
            );
            assert_eq!(recorder.value("dirpool_links_backing_off"), 1.0);
            let started = recorder.value("dirpool_dials_started_total");
            let ended = recorder.value("dirpool_dials_succeeded_total")
                + recorder.value("dirpool_dials_failed_total{class=socks}");
            assert!(started - ended <= 1.0, "at most the refused one in flight");

            pool.close_all().await.unwrap();
            assert_eq!(gauges(&recorder), [0.0; 4], "all closed");
            drop(pool);
            drop(events);
        });
    });
    assert_eq!(recorder.value("dirpool_events_dropped_total"), 0.0);
}

/// Probes need minutes of quiet: on the simulated runtime (virtual time,
/// one thread) the recorder's probe counts and round trips must be those
/// the simulation counted itself.
#[test]
fn metrics_count_probes_and_their_round_trips() {
    use dirpool_tests::directory_model::DirectoryProfile;
    use dirpool_tests::sim::liveness;

    let recorder = TestRecorder::default();
    let scenario = liveness::base_scenario(
        vec![liveness::Plan::Healthy(DirectoryProfile::JoinmarketRs)],
        Duration::from_secs(600),
    );
    let report = metrics::with_local_recorder(&recorder, || {
        liveness::run_scenario(0, &scenario).unwrap_or_else(|f| panic!("{f}"))
    });
    assert!(report.probes_sent > 0, "{report:?}");
    #[allow(clippy::cast_precision_loss, reason = "small counts")]
    let (sent, answered) = (report.probes_sent as f64, report.probes_answered as f64);
    assert_eq!(recorder.value("dirpool_probes_sent_total"), sent);
    assert_eq!(recorder.value("dirpool_probes_answered_total"), answered);
    assert_eq!(recorder.value("dirpool_probes_timed_out_total"), 0.0);
    let rtts = recorder.samples("dirpool_probe_rtt_seconds");
    assert_eq!(rtts.len(), report.probes_answered);
    assert!(rtts.iter().all(|s| (0.0..30.0).contains(s)), "{rtts:?}");
}

// ---- logs ----------------------------------------------------------------------

/// One log line: its level, message, and the `server` of the nearest
/// enclosing span that has one.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    level: tracing::Level,
    message: String,
    server: Option<String>,
}

/// A tracing layer of our own that keeps every log line.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<Line>>>);

/// A span's `server` field, kept in its extensions.
struct ServerField(String);

#[derive(Default)]
struct Fields {
    message: Option<String>,
    server: Option<String>,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = Some(format!("{value:?}")),
            "server" => self.server = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for Lines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(server), Some(span)) = (fields.server, ctx.span(id)) {
            span.extensions_mut().insert(ServerField(server));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let server = ctx.event_scope(event).and_then(|scope| {
            scope
                .into_iter()
                .find_map(|span| span.extensions().get::<ServerField>().map(|s| s.0.clone()))
        });
        self.0.lock().unwrap().push(Line {
            level: *event.metadata().level(),
            message: fields.message.unwrap_or_default(),
            server,
        });
    }
}

/// The node_id an event is about, and the message its log line has.
fn expected_line(event: &PoolEvent) -> Option<(Option<&str>, &'static str)> {
    Some(match event {
        PoolEvent::Connected { node_id } => (Some(node_id.as_str()), "connected"),
        PoolEvent::Disconnected { node_id, .. } => (Some(node_id.as_str()), "disconnected"),
        PoolEvent::DialFailed {
            node_id,
            retry_at: Some(_),
            ..
        } => (Some(node_id.as_str()), "dial failed"),
        PoolEvent::DialFailed { node_id, .. } => (Some(node_id.as_str()), "dial failed; no retry"),
        PoolEvent::AllDown => (None, "all directory servers are down"),
        PoolEvent::Recovered => (None, "a directory server is back"),
        _ => return None,
    })
}

#[test]
fn each_event_is_logged_once_in_the_span_of_its_server() {
    use tracing_subscriber::layer::SubscriberExt;

    let lines = Lines::default();
    let subscriber = tracing_subscriber::registry().with(lines.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    // With a single dispatcher registered, tracing-core caches each
    // callsite's interest from whichever thread reaches it first, and the
    // other tests of this binary run pools on threads without a subscriber:
    // their "never" would hide our lines. A second live dispatcher makes
    // every callsite ask the current thread's subscriber.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let (tokio, rt) = current_thread();
    let seen = tokio.block_on(async {
        let (dir, tor, servers) = one_up_one_refused();
        let pool: DirectoryPool<_> = line_pool(config(&servers, tor.addr()), &rt);
        let mut events = pool.events();
        pool.connect_all_parallel().await.unwrap();
        dir.drop_all();
        pool.start_maintenance().unwrap();
        let mut seen = Vec::new();
        // Lost, all down, the refused one redialed and refused again,
        // reconnected, recovered.
        let recovered = next_matching_seen(&rt, &mut events, SHORT, &mut seen, |e| {
            matches!(e, PoolEvent::Recovered).then_some(())
        })
        .await;
        assert!(recovered.is_some(), "{seen:#?}");
        pool.close_all().await.unwrap();
        seen.extend(common::drain(&mut events));
        seen
    });
    let lines = lines.0.lock().unwrap().clone();

    let mut expected: BTreeMap<(Option<&str>, &str), usize> = BTreeMap::new();
    for event in &seen {
        let key = expected_line(event).unwrap_or_else(|| panic!("unexpected {event:?}"));
        *expected.entry(key).or_default() += 1;
    }
    for kind in [
        "connected",
        "disconnected",
        "dial failed; no retry",
        "all directory servers are down",
    ] {
        assert!(
            expected.keys().any(|(_, m)| *m == kind),
            "no {kind:?} in {seen:#?}"
        );
    }
    let mut logged: BTreeMap<(Option<&str>, &str), usize> = BTreeMap::new();
    for line in &lines {
        if let Some(key) = expected
            .keys()
            .find(|(_, message)| *message == line.message)
        {
            *logged.entry((line.server.as_deref(), key.1)).or_default() += 1;
        }
    }
    assert_eq!(
        logged, expected,
        "log lines per event and server:\n{lines:#?}"
    );
    // And nothing else at info or above: each fact is told once.
    let loud = lines
        .iter()
        .filter(|l| l.level <= tracing::Level::INFO)
        .count();
    assert_eq!(loud, seen.len(), "{lines:#?}");
}
