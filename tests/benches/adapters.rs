//! The pool on real loopback sockets, through the loopback SOCKS5 proxy
//! ([`SocksServer`]) to loopback directories ([`LineServer`], greeting read
//! by the integration tests' `LineHandshake`):
//!
//! * `first_connection`: 5 blackholed directories (the proxy never answers
//!   their CONNECT, as Tor does while it fails to reach a dead onion) listed
//!   before 1 live one, 120 s connection timeout. Our
//!   `connect_all_with_retry` against [`original_sequential_pass`], the
//!   original's algorithm (one server after another, each bounded by the
//!   connection timeout), run with a short timeout; and the live server's
//!   latency alone (`connect_to_directory`).
//! * `all_directories`: 1,000 directories (100 in test mode) all connected
//!   by `connect_all_parallel`, on tokio (2 worker threads) and on smol.
//! * `socks_dial`: our dial (`connect_to_directory`, raw tunnel, no
//!   handshake) against [`plain_socks_connect`], a TCP connect plus the same
//!   SOCKS5 exchange written as simply as possible.
//! * reconnect after a restart (printed, not a criterion measurement: one
//!   sample takes about half a minute): 20 directories under maintenance
//!   with the default policy are stopped for 20 s (every backoff at its
//!   10 s maximum), restarted, and the time from the restart to each
//!   server's `Connected` event is reported. Under `cargo test` a 3-server,
//!   fast-backoff version runs instead.
//!
//! Run: `cargo bench -p dirpool-tests --bench adapters`.
#![allow(
    clippy::print_stdout,
    reason = "the bench prints the reconnect figures and the model's ratio"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::line_pool;
use criterion::{BenchmarkId, Criterion, SamplingMode};
use dirpool::{Config, DirectoryPool, PoolEvent, RawStream, Runtime};
use dirpool_core::{MaintenancePolicy, RetryPolicy};
use dirpool_tests::{LineBehaviour, LineServer, Reply, SocksConfig, SocksServer};
use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The original's (and our) default connection timeout.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
/// Blackholed directories listed before the live one.
const BLACKHOLED: usize = 5;

fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A runtime to run the pool on, and a way to block on it.
enum Exec {
    /// A multi-threaded tokio runtime with 2 workers.
    Tokio(tokio::runtime::Runtime),
    /// smol's global executor.
    Smol,
}

impl Exec {
    fn tokio() -> Self {
        Exec::Tokio(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime"),
        )
    }

    fn name(&self) -> &'static str {
        match self {
            Exec::Tokio(_) => "tokio",
            Exec::Smol => "smol",
        }
    }

    fn runtime(&self) -> Arc<dyn Runtime> {
        match self {
            Exec::Tokio(rt) => Arc::new(rt.block_on(async { dirpool::TokioRuntime::current() })),
            Exec::Smol => Arc::new(dirpool::SmolRuntime),
        }
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        match self {
            Exec::Tokio(rt) => rt.block_on(future),
            Exec::Smol => smol::block_on(future),
        }
    }
}

/// `count` healthy directories and a proxy that forwards `d<i>.example` to
/// the i-th; returns them with the server entries.
fn directories_behind_proxy(count: usize) -> (Vec<LineServer>, SocksServer, Vec<String>) {
    let mut socks = SocksConfig::new();
    let mut directories = Vec::with_capacity(count);
    let mut servers = Vec::with_capacity(count);
    for i in 0..count {
        let directory = LineServer::start(LineBehaviour::Healthy).expect("directory starts");
        socks = socks.with_reply(format!("d{i}.example"), Reply::Forward(directory.addr()));
        servers.push(format!("d{i}.example:5222"));
        directories.push(directory);
    }
    let tor = SocksServer::start(socks).expect("proxy starts");
    (directories, tor, servers)
}

/// The original's `connect_all_with_retry` pass, kept here as the baseline
/// only: servers one after another, each dial bounded by the pool's
/// connection timeout, stopping at the first that connects.
async fn original_sequential_pass<H: dirpool::Handshake>(
    pool: &DirectoryPool<H>,
    servers: &[String],
) -> Option<H::Client> {
    for server in servers {
        if let Ok((_, client)) = pool.connect_to_directory(server).await {
            return Some(client);
        }
    }
    None
}

fn first_connection(c: &mut Criterion) {
    let live = LineServer::start(LineBehaviour::Healthy).expect("directory starts");
    let mut socks = SocksConfig::new().with_reply("live.example", Reply::Forward(live.addr()));
    let mut servers = Vec::new();
    for i in 0..BLACKHOLED {
        socks = socks.with_reply(format!("blackholed{i}.example"), Reply::Stall);
        servers.push(format!("blackholed{i}.example:5222"));
    }
    servers.push("live.example:5222".to_owned());
    let tor = SocksServer::start(socks).expect("proxy starts");
    let exec = Exec::tokio();
    let rt = exec.runtime();
    let mut config = common::config(&servers, tor.addr());
    config.pool.connection_timeout = CONNECTION_TIMEOUT;

    let mut group = c.benchmark_group("first_connection");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.bench_function("ours_connect_all_with_retry_120s", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let pool = line_pool(config.clone(), &rt);
                let start = Instant::now();
                let connected = exec
                    .block_on(pool.connect_all_with_retry(RetryPolicy::new(CONNECTION_TIMEOUT)))
                    .expect("pool runs");
                spent += start.elapsed();
                assert_eq!(connected, 1, "the live directory connects");
                exec.block_on(pool.close_all()).expect("pool runs");
            }
            spent
        });
    });
    group.bench_function("live_server_alone", |b| {
        let pool = line_pool(config.clone(), &rt);
        b.iter(|| {
            exec.block_on(pool.connect_to_directory("live.example:5222"))
                .expect("the live directory connects")
        });
    });
    // Long enough for the live directory even on a loaded CI machine.
    let short = Duration::from_millis(100);
    let mut baseline_config = config.clone();
    baseline_config.pool.connection_timeout = short;
    let baseline = line_pool(baseline_config, &rt);
    group.bench_function(
        BenchmarkId::new(
            "original_sequential_pass",
            format!("timeout_{}ms", short.as_millis()),
        ),
        |b| {
            b.iter(|| {
                exec.block_on(original_sequential_pass(&baseline, &servers))
                    .expect("the live directory connects within the short timeout")
            });
        },
    );
    group.finish();
    println!(
        "first_connection model: the original's sequential pass takes \
         {BLACKHOLED} x connection timeout + the live server's latency, i.e. \
         {BLACKHOLED} x {} ms + latency at the timeout measured above and \
         {} s + latency at 120 s",
        short.as_millis(),
        BLACKHOLED as u64 * CONNECTION_TIMEOUT.as_secs()
    );
}

fn all_directories(c: &mut Criterion) {
    let count = if full_run() { 1_000 } else { 100 };
    // Each directory costs about 5 descriptors here: the pool's socket to
    // the proxy, the proxy's two, the directory's listener and connection.
    let wanted = count as u64 * 5 + 256;
    let limit = rlimit::increase_nofile_limit(wanted).expect("getrlimit/setrlimit");
    assert!(
        limit >= wanted,
        "{count} loopback directories need about {wanted} open files, but the \
         limit is {limit} and cannot be raised (hard limit): raise `ulimit -n`"
    );
    let (_directories, tor, servers) = directories_behind_proxy(count);
    let mut group = c.benchmark_group("all_directories");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    for exec in [Exec::tokio(), Exec::Smol] {
        let rt = exec.runtime();
        let config = common::config(&servers, tor.addr());
        group.bench_function(BenchmarkId::new(exec.name(), count), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let pool = line_pool(config.clone(), &rt);
                    let start = Instant::now();
                    let connected = exec
                        .block_on(pool.connect_all_parallel())
                        .expect("pool runs");
                    spent += start.elapsed();
                    if connected != count {
                        let statuses = exec.block_on(pool.status()).expect("pool runs");
                        let mut why = std::collections::BTreeMap::<String, usize>::new();
                        for status in statuses {
                            if let Some(failure) = status.last_failure {
                                *why.entry(failure.to_string()).or_default() += 1;
                            }
                        }
                        panic!(
                            "{connected} of {count} directories connected on {} \
                             in {:?}; failures: {why:?}",
                            exec.name(),
                            start.elapsed()
                        );
                    }
                    exec.block_on(pool.close_all()).expect("pool runs");
                }
                spent
            });
        });
    }
    group.finish();
}

/// A TCP connect to the proxy and a SOCKS5 CONNECT to `host:port`, no
/// authentication, written as simply as possible: the reference our dial
/// is compared with.
async fn plain_socks_connect(proxy: std::net::SocketAddr, host: &str, port: u16) {
    let mut stream = tokio::net::TcpStream::connect(proxy).await.expect("proxy");
    stream.set_nodelay(true).expect("nodelay");
    stream.write_all(&[5, 1, 0]).await.expect("greeting");
    let mut method = [0u8; 2];
    stream.read_exact(&mut method).await.expect("method");
    assert_eq!(method, [5, 0]);
    let mut request = vec![5, 1, 0, 3, u8::try_from(host.len()).expect("short host")];
    request.extend_from_slice(host.as_bytes());
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).await.expect("connect request");
    let mut reply = [0u8; 10];
    stream.read_exact(&mut reply).await.expect("reply");
    assert_eq!(reply[1], 0, "CONNECT succeeded");
}

fn socks_dial(c: &mut Criterion) {
    let (_directories, tor, _servers) = directories_behind_proxy(1);
    let exec = Exec::tokio();
    let rt = exec.runtime();
    let pool = DirectoryPool::builder(
        common::config(&["d0.example:5222".to_owned()], tor.addr()),
        RawStream,
    )
    .entropy(common::entropy())
    .spawn(Arc::clone(&rt))
    .expect("valid config");
    let mut group = c.benchmark_group("socks_dial");
    group.bench_function("ours_connect_to_directory", |b| {
        b.iter(|| {
            exec.block_on(pool.connect_to_directory("d0.example:5222"))
                .expect("dial succeeds")
        });
    });
    group.bench_function("plain_socks_connect", |b| {
        b.iter(|| exec.block_on(plain_socks_connect(tor.addr(), "d0.example", 5222)));
    });
    group.finish();
}

/// Seconds from a restart of every directory to each one's reconnection
/// under maintenance.
fn reconnect_after_restart() {
    let (count, down, config_for) = if full_run() {
        // The default policy: 1 s x2 up to 10 s, +-20 % jitter.
        let policy: fn(&mut Config) = |c| c.pool.maintenance = MaintenancePolicy::default();
        (20, Duration::from_secs(20), policy)
    } else {
        // The integration tests' fast backoff (100 ms x2 up to 400 ms).
        let policy: fn(&mut Config) = |_| {};
        (3, Duration::from_millis(600), policy)
    };
    let (directories, tor, servers) = directories_behind_proxy(count);
    let exec = Exec::tokio();
    let rt = exec.runtime();
    let mut config = common::config(&servers, tor.addr());
    config.pool.connection_timeout = CONNECTION_TIMEOUT;
    config_for(&mut config);
    let pool = line_pool(config, &rt);
    let mut events = pool.events();
    pool.start_maintenance().expect("pool runs");
    let all_connected = exec.block_on(common::eventually(&rt, Duration::from_secs(30), || {
        pool.connected_count() == count
    }));
    assert!(all_connected, "every directory connects");
    for directory in &directories {
        directory.stop();
    }
    std::thread::sleep(down);
    // Forget what happened while they were down.
    while events.next().now_or_never().flatten().is_some() {}
    let back = Instant::now();
    for directory in &directories {
        directory.restart().expect("directory restarts on its port");
    }
    let mut latencies = exec.block_on(async {
        let mut latencies = Vec::with_capacity(count);
        while latencies.len() < count {
            let connected = common::next_matching(&rt, &mut events, Duration::from_secs(30), |e| {
                matches!(e, PoolEvent::Connected { .. }).then_some(())
            })
            .await;
            if connected.is_none() {
                break;
            }
            latencies.push(back.elapsed().as_secs_f64());
        }
        latencies
    });
    latencies.sort_by(f64::total_cmp);
    assert_eq!(latencies.len(), count, "every directory reconnects");
    println!(
        "reconnect_after_restart: {count} directories down {} s under maintenance \
         ({}), restarted: reconnected after min {:.2} s, median {:.2} s, max {:.2} s \
         (the original's maker redials every 300 s: up to 300 s, 150 s on average)",
        down.as_secs_f64(),
        if full_run() {
            "default policy"
        } else {
            "test mode: fast backoff"
        },
        latencies[0],
        latencies[count / 2],
        latencies[count - 1],
    );
    exec.block_on(pool.close_all()).expect("pool runs");
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    first_connection(&mut criterion);
    all_directories(&mut criterion);
    socks_dial(&mut criterion);
    criterion.final_summary();
    reconnect_after_restart();
}
