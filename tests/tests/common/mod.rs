//! Shared by the integration tests: a line-protocol handshake for the
//! loopback `LineServer`, a runner that runs one scenario on tokio and on
//! smol, and small async helpers.
#![allow(dead_code, unreachable_pub)]

pub mod onion;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dirpool::{
    BoxedStream, Client, CloseError, Config, DirectoryPool, Handshake, HandshakeContext,
    HandshakeError, HandshakeErrorKind, LossSignal, PoolEvent, Runtime,
};
use dirpool_core::{
    Backoff, DisconnectReason, Entropy, IsolationToken, KeepalivePolicy, LinkLoss, ServerAddr,
};
use futures::future::{Either, select};
use futures::lock::Mutex;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

pub const TOKEN: [u8; 16] = *b"dirpool-testtokn";
pub const TOKEN_HEX: &str = "646972706f6f6c2d74657374746f6b6e";

/// Fixed entropy so credentials are known to the test.
pub fn entropy() -> Entropy {
    Entropy {
        isolation_token: IsolationToken::from_bytes(TOKEN),
        jitter_seed: 1,
    }
}

/// A config through `proxy` with short timeouts and a fast maintenance
/// backoff, for loopback tests.
pub fn config(servers: &[String], proxy: std::net::SocketAddr) -> Config {
    let mut config = Config::new(servers.iter().cloned());
    config.proxy = proxy;
    config.pool.connection_timeout = Duration::from_secs(3);
    config.pool.close_timeout = Duration::from_secs(2);
    config.pool.maintenance.backoff =
        Backoff::new(Duration::from_millis(100), Duration::from_millis(400), 2.0);
    config
}

/// Reads the `LineServer`'s `HELLO <port>` greeting; the client then keeps
/// the link and reads it (from the pool's loss watcher) until it closes.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineHandshake;

pub struct LineClient {
    pub greeting: String,
    reader: Mutex<ReadHalf<BoxedStream>>,
    writer: Mutex<WriteHalf<BoxedStream>>,
    loss: LossSignal,
}

impl std::fmt::Debug for LineClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineClient")
            .field("greeting", &self.greeting)
            .finish()
    }
}

impl Handshake for LineHandshake {
    type Client = LineClient;

    async fn handshake(
        &self,
        _context: &HandshakeContext,
        _server: &ServerAddr,
        mut stream: BoxedStream,
    ) -> Result<LineClient, HandshakeError> {
        let mut line = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await? == 0 {
                return Err(HandshakeError::new(
                    HandshakeErrorKind::Protocol,
                    "closed without a greeting",
                ));
            }
            if byte[0] == b'\n' {
                break;
            }
            line.push(byte[0]);
            if line.len() > 1024 {
                return Err(HandshakeError::new(
                    HandshakeErrorKind::Protocol,
                    "greeting too long",
                ));
            }
        }
        let greeting = String::from_utf8_lossy(&line).trim_end().to_owned();
        if !greeting.starts_with("HELLO ") {
            return Err(HandshakeError::new(HandshakeErrorKind::Rejected, greeting));
        }
        let (reader, writer) = tokio::io::split(stream);
        Ok(LineClient {
            greeting,
            reader: Mutex::new(reader),
            writer: Mutex::new(writer),
            loss: LossSignal::new(),
        })
    }
}

impl Client for LineClient {
    fn closed(&self) -> impl Future<Output = LinkLoss> + Send {
        let loss = self.loss.wait();
        async move {
            let read_until_eof = async {
                let mut reader = self.reader.lock().await;
                let mut buf = [0u8; 1024];
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) => return LinkLoss::ClosedByPeer,
                        Ok(_) => {}
                        Err(e) => return LinkLoss::Io(e.kind()),
                    }
                }
            };
            match select(loss, std::pin::pin!(read_until_eof)).await {
                Either::Left((loss, _)) | Either::Right((loss, _)) => loss,
            }
        }
    }

    async fn close(&self) -> Result<(), CloseError> {
        self.loss.fire(LinkLoss::ClosedByPeer);
        self.writer.lock().await.shutdown().await?;
        Ok(())
    }
}

/// Runs `scenario` on a tokio runtime and on smol, each bounded by 60 s.
pub fn on_both_runtimes<F, Fut>(scenario: F)
where
    F: Fn(Arc<dyn Runtime>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    on_both_runtimes_within(Duration::from_secs(60), scenario);
}

/// Runs `scenario` on a tokio runtime and on smol, each bounded by `limit`.
pub fn on_both_runtimes_within<F, Fut>(limit: Duration, scenario: F)
where
    F: Fn(Arc<dyn Runtime>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rt: Arc<dyn Runtime> = Arc::new(tokio.block_on(async { dirpool::TokioRuntime::current() }));
    tokio.block_on(bounded(rt.clone(), scenario(rt), "tokio", limit));
    drop(tokio);
    run_on_smol_within(limit, scenario);
}

/// Runs `scenario` on smol, bounded by 60 s.
pub fn run_on_smol<F, Fut>(scenario: F)
where
    F: Fn(Arc<dyn Runtime>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_on_smol_within(Duration::from_secs(60), scenario);
}

/// Runs `scenario` on smol, bounded by `limit`.
pub fn run_on_smol_within<F, Fut>(limit: Duration, scenario: F)
where
    F: Fn(Arc<dyn Runtime>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rt: Arc<dyn Runtime> = Arc::new(dirpool::SmolRuntime);
    smol::block_on(bounded(rt.clone(), scenario(rt), "smol", limit));
}

async fn bounded(
    rt: Arc<dyn Runtime>,
    scenario: impl Future<Output = ()>,
    name: &str,
    limit: Duration,
) {
    let deadline = rt.sleep_until(rt.now() + limit);
    if let Either::Right(_) = select(std::pin::pin!(scenario), deadline).await {
        panic!("scenario on {name} did not finish within {limit:?}");
    }
}

/// Sleeps on the runtime's clock.
pub async fn sleep(rt: &Arc<dyn Runtime>, d: Duration) {
    rt.sleep_until(rt.now() + d).await;
}

/// Waits until `condition` on the test servers' state (their connections,
/// the lines and pongs they received, their link records) holds, checking
/// it again after each change of that state; `false` if `timeout` passes
/// first. For the pool's own state, wait on its events
/// ([`until_event`]); for state that signals nothing, [`poll_until`].
pub async fn eventually(
    rt: &Arc<dyn Runtime>,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = rt.sleep_until(rt.now() + timeout).fuse();
    let mut deadline = std::pin::pin!(deadline);
    loop {
        let seen = dirpool_tests::change_generation();
        if condition() {
            return true;
        }
        let mut change = dirpool_tests::ChangeAfter(seen).fuse();
        futures::select! {
            () = change => {}
            () = deadline => return condition(),
        }
    }
}

/// Waits until `condition` on the pool's state holds, checking it now and
/// after each of the pool's events (the state changes before the event
/// that reports it is sent); `false` if `timeout` passes first.
pub async fn until_event(
    rt: &Arc<dyn Runtime>,
    events: &mut (impl futures::Stream<Item = PoolEvent> + Unpin),
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    condition()
        || next_matching(rt, events, timeout, |_| condition().then_some(()))
            .await
            .is_some()
}

/// Polls `condition` every 5 ms until it holds or `timeout` passes: only
/// for state that signals no change (the `Messaging` counters, a hook's own
/// counter, the process's file descriptors).
pub async fn poll_until(
    rt: &Arc<dyn Runtime>,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(rt, Duration::from_millis(5)).await;
    }
}

/// Waits for the first event matching `pick`, up to `timeout`.
pub async fn next_matching<T>(
    rt: &Arc<dyn Runtime>,
    events: &mut (impl futures::Stream<Item = PoolEvent> + Unpin),
    timeout: Duration,
    mut pick: impl FnMut(&PoolEvent) -> Option<T>,
) -> Option<T> {
    let deadline = rt.sleep_until(rt.now() + timeout).fuse();
    let mut deadline = std::pin::pin!(deadline);
    loop {
        let next = events.next().fuse();
        let mut next = std::pin::pin!(next);
        futures::select! {
            event = next => {
                let event = event?;
                if let Some(found) = pick(&event) {
                    return Some(found);
                }
            }
            () = deadline => return None,
        }
    }
}

/// [`next_matching`], keeping every event it takes (the match included)
/// in `seen`, for the assertion that follows.
pub async fn next_matching_seen<T>(
    rt: &Arc<dyn Runtime>,
    events: &mut (impl futures::Stream<Item = PoolEvent> + Unpin),
    timeout: Duration,
    seen: &mut Vec<PoolEvent>,
    mut pick: impl FnMut(&PoolEvent) -> Option<T>,
) -> Option<T> {
    next_matching(rt, events, timeout, |e| {
        seen.push(e.clone());
        pick(e)
    })
    .await
}

/// Waits for the first event `what` accepts, up to `timeout`.
pub async fn wait_for(
    rt: &Arc<dyn Runtime>,
    events: &mut (impl futures::Stream<Item = PoolEvent> + Unpin),
    timeout: Duration,
    what: impl Fn(&PoolEvent) -> bool,
) -> bool {
    next_matching(rt, events, timeout, |e| what(e).then_some(()))
        .await
        .is_some()
}

/// A healthy line directory and a proxy that forwards every host to it.
pub fn healthy_behind_proxy() -> (dirpool_tests::LineServer, dirpool_tests::SocksServer) {
    let dir = dirpool_tests::LineServer::start(dirpool_tests::LineBehaviour::Healthy).unwrap();
    let tor = dirpool_tests::SocksServer::start(
        dirpool_tests::SocksConfig::new()
            .with_default_reply(dirpool_tests::Reply::Forward(dir.addr())),
    )
    .unwrap();
    (dir, tor)
}

/// A pool with the line handshake.
pub fn line_pool(config: Config, rt: &Arc<dyn Runtime>) -> DirectoryPool<LineHandshake> {
    DirectoryPool::builder(config, LineHandshake)
        .entropy(entropy())
        .spawn(Arc::clone(rt))
        .expect("valid config")
}

/// `name.example:5222` as a server entry and its node_id.
pub fn dns(name: &str) -> String {
    format!("{name}.example:5222")
}

/// After a path was cut silently at `cut`: waits for the next
/// `Disconnected`, checks it is a keepalive loss within `keepalive`'s bound
/// (plus 10 s for a loaded machine), prints the time as `what`, and
/// returns it.
#[allow(
    dead_code,
    clippy::print_stdout,
    reason = "not every test binary cuts a path; the figure is for --nocapture"
)]
pub async fn expect_keepalive_loss(
    rt: &Arc<dyn Runtime>,
    events: &mut (impl futures::Stream<Item = PoolEvent> + Unpin),
    keepalive: KeepalivePolicy,
    cut: Instant,
    what: &str,
) -> Duration {
    let mut seen = Vec::new();
    let lost = next_matching_seen(
        rt,
        events,
        keepalive.loss_bound() * 3,
        &mut seen,
        |e| match e {
            PoolEvent::Disconnected { reason, .. } => Some(*reason),
            _ => None,
        },
    )
    .await;
    let detected = cut.elapsed();
    println!(
        "{what}: lost after {detected:.1?} (idle + probe_timeout = {:?})",
        keepalive.loss_bound()
    );
    assert_eq!(
        lost,
        Some(DisconnectReason::Lost(LinkLoss::KeepaliveTimeout)),
        "{seen:#?}"
    );
    assert!(
        detected <= keepalive.loss_bound() + Duration::from_secs(10),
        "{detected:?}"
    );
    detected
}

/// The events already delivered to `events`, without waiting.
#[allow(dead_code, reason = "used by the binaries with heartbeat tests")]
pub fn drain(events: &mut (impl futures::Stream<Item = PoolEvent> + Unpin)) -> Vec<PoolEvent> {
    let mut seen = Vec::new();
    while let Some(Some(event)) = events.next().now_or_never() {
        seen.push(event);
    }
    seen
}

/// Checks that `seen` has no lost link and no failed dial: the links held.
#[allow(dead_code, reason = "used by the binaries with heartbeat tests")]
pub fn assert_links_held(seen: &[PoolEvent]) {
    assert!(
        !seen.iter().any(|e| matches!(
            e,
            PoolEvent::Disconnected { .. } | PoolEvent::DialFailed { .. }
        )),
        "{seen:#?}"
    );
}

/// The JoinMarket error under a dial error (its source).
///
/// # Panics
/// If the dial failed for another reason.
pub fn jm_error(error: &dirpool::DialError) -> &dirpool::joinmarket::JmError {
    use std::error::Error as _;
    error
        .source()
        .and_then(|s| s.downcast_ref::<dirpool::joinmarket::JmError>())
        .unwrap_or_else(|| panic!("not a JoinMarket error: {error:?}"))
}

/// The error of the first dial failure among `events`, within `timeout`.
///
/// # Panics
/// If no dial fails in time.
pub async fn first_failure(
    rt: &Arc<dyn Runtime>,
    events: &mut (impl futures::Stream<Item = PoolEvent> + Unpin),
    timeout: Duration,
) -> Arc<dirpool::DialError> {
    next_matching(rt, events, timeout, |e| match e {
        PoolEvent::DialFailed { error, .. } => Some(Arc::clone(error)),
        _ => None,
    })
    .await
    .expect("a dial failure in time")
}
