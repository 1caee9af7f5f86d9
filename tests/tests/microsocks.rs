//! Through a real SOCKS5 server: Debian's `microsocks`, started on a free
//! loopback port (with the isolation username and password, or open), in
//! front of loopback directories: line servers, and JoinMarket directories
//! that model the real implementations (heartbeat and all). A path cut
//! silently is a microsocks stopped with SIGSTOP: its sockets stay open,
//! nothing is forwarded. The `probe` example's `--watch` runs here too.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    TOKEN_HEX, assert_links_held, config, drain, eventually, expect_keepalive_loss, first_failure,
    line_pool, on_both_runtimes, on_both_runtimes_within,
};
use dirpool::joinmarket::{JmConfig, JoinMarketHandshake, Network};
use dirpool::{DialError, DirectoryPool, Runtime};
use dirpool_core::{Entropy, IsolationScope, IsolationToken, KeepalivePolicy};
use dirpool_tests::directory_model::{DirectoryConfig, DirectoryProfile, HeartbeatTimings};
use dirpool_tests::{
    JM_DIRECTORY_NICK, JmBehaviour, JmDirectory, JmModelled, LineBehaviour, LineServer,
    free_loopback_port,
};

/// A microsocks process, killed on drop (resumed first if stopped).
struct Microsocks {
    child: Child,
    addr: SocketAddr,
}

impl Microsocks {
    /// With username/password authentication.
    fn start(user: &str, password: &str) -> Self {
        Self::spawn(&["-u", user, "-P", password])
    }

    /// Without authentication.
    fn start_open() -> Self {
        Self::spawn(&[])
    }

    fn spawn(auth: &[&str]) -> Self {
        let port = free_loopback_port();
        let child = Command::new("microsocks")
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(auth)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start microsocks ({e}): install it with `apt-get install microsocks` \
                     (scripts/test does this)"
                )
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Another process starting to listen sends us no event: poll.
        assert!(
            dirpool_tests::poll_until(Duration::from_secs(5), Duration::from_millis(10), || {
                TcpStream::connect(addr).is_ok()
            }),
            "microsocks did not listen on {addr}"
        );
        Self { child, addr }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the process.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "kill -{signal}: {status:?}"
        );
    }
}

impl Drop for Microsocks {
    fn drop(&mut self) {
        // A stopped process is killed all the same.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_pool_connects_through_microsocks_with_isolation() {
    on_both_runtimes(|rt| async move {
        let dir = LineServer::start(LineBehaviour::Healthy).unwrap();
        let proxy = Microsocks::start("jm-directory", TOKEN_HEX);
        let mut cfg = config(&[dir.addr().to_string()], proxy.addr);
        cfg.pool.isolation = IsolationScope::PerCategory;
        let pool = line_pool(cfg, &rt);
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 1);
        let client = pool.client(&dir.addr().to_string()).expect("registered");
        assert_eq!(client.greeting, format!("HELLO {}", dir.port()));
        pool.close_all().await.unwrap();
    });
}

#[test]
fn wrong_credentials_fail_with_the_typed_auth_error() {
    on_both_runtimes(|rt| async move {
        let dir = LineServer::start(LineBehaviour::Healthy).unwrap();
        let proxy = Microsocks::start("jm-directory", TOKEN_HEX);
        let mut cfg = config(&[dir.addr().to_string()], proxy.addr);
        cfg.pool.isolation = IsolationScope::PerCategory;
        let other_token = Entropy {
            isolation_token: IsolationToken::from_bytes([9; 16]),
            jitter_seed: 1,
        };
        let pool = DirectoryPool::builder(cfg, common::LineHandshake)
            .entropy(other_token)
            .spawn(Arc::clone(&rt))
            .unwrap();
        let mut events = pool.events();
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 0);
        let error = first_failure(&rt, &mut events, Duration::from_secs(5)).await;
        assert!(
            matches!(&*error, DialError::ProxyAuthRejected { username, .. } if username == "jm-directory"),
            "{error:?}"
        );
        assert!(
            !error.to_string().contains(&"09".repeat(16)),
            "password in the error"
        );
        assert_eq!(dir.accepted(), 0);
    });
}

/// The heartbeat of the modelled directories here: the real timings / 100
/// (sweep 0.6 s, idle 6 s, pong wait 0.3 s, hard eviction 15 s).
const SCALE: u32 = 100;

/// A JoinMarket pool through `proxy`, isolation off, with `keepalive`.
fn jm_pool(
    servers: &[String],
    proxy: SocketAddr,
    keepalive: KeepalivePolicy,
    rt: &Arc<dyn Runtime>,
) -> DirectoryPool<JoinMarketHandshake> {
    let mut config = config(servers, proxy);
    config.pool.keepalive = keepalive;
    let handshake = JoinMarketHandshake::new(JmConfig::new(
        dirpool_tests::client_identity(),
        Network::Regtest,
    ))
    .unwrap();
    DirectoryPool::builder(config, handshake)
        .entropy(common::entropy())
        .spawn(Arc::clone(rt))
        .unwrap()
}

/// A directory modelling `profile` with the heartbeat scaled down by `scale`.
fn modelled(profile: DirectoryProfile, scale: u32) -> JmDirectory {
    let timings = HeartbeatTimings::default().scaled_down(scale);
    let config = DirectoryConfig::new(profile, JM_DIRECTORY_NICK).with_timings(timings);
    JmDirectory::start(JmBehaviour::Modelled(JmModelled::with_config(config))).unwrap()
}

#[test]
#[allow(clippy::print_stdout)]
fn modelled_directories_heartbeat_through_microsocks_and_keep_the_links() {
    on_both_runtimes_within(Duration::from_secs(120), |rt| async move {
        let ng = modelled(DirectoryProfile::JoinmarketNg, SCALE);
        let rs = modelled(DirectoryProfile::JoinmarketRs, SCALE);
        let proxy = Microsocks::start_open();
        let servers = [ng.addr().to_string(), rs.addr().to_string()];
        let pool = jm_pool(&servers, proxy.addr, KeepalivePolicy::default(), &rt);
        let mut events = pool.events();
        let connected = pool.connect_all_parallel().await.unwrap();
        assert_eq!(connected, 2, "events: {:#?}", drain(&mut events));
        let started = Instant::now();
        // Three heartbeat cycles each: PINGed after 6 s idle, PONG answered
        // within the 0.3 s pong wait. Generous bound for a loaded machine.
        let cycles = eventually(&rt, Duration::from_secs(90), || {
            ng.pongs_received() >= 3 && rs.pongs_received() >= 3
        })
        .await;
        let elapsed = started.elapsed();
        let seen = drain(&mut events);
        assert!(
            cycles,
            "ng: {:#?}\nrs: {:#?}\nevents: {seen:#?}",
            ng.link_records(),
            rs.link_records()
        );
        assert_eq!(ng.evictions(), Vec::new());
        assert_eq!(rs.evictions(), Vec::new());
        assert_links_held(&seen);
        assert_eq!(pool.connected_count(), 2);
        assert_eq!(ng.link_records().len(), 1, "one link, never redialed");
        assert_eq!(rs.link_records().len(), 1, "one link, never redialed");
        println!(
            "microsocks heartbeat: ng {} PINGs / {} PONGs, rs {} PINGs / {} PONGs in {elapsed:.1?}",
            ng.pings_sent(),
            ng.pongs_received(),
            rs.pings_sent(),
            rs.pongs_received()
        );
        pool.close_all().await.unwrap();
    });
}

#[test]
#[allow(clippy::print_stdout)]
fn a_path_cut_by_stopping_microsocks_is_lost_to_the_keepalive() {
    on_both_runtimes_within(Duration::from_secs(90), |rt| async move {
        // Real heartbeat timings: the directory would not PING for 600 s,
        // so only the pool's keepalive can notice.
        let dir = modelled(DirectoryProfile::JoinmarketNg, 1);
        let proxy = Microsocks::start_open();
        let keepalive = KeepalivePolicy::new(Duration::from_secs(15), Duration::from_secs(2));
        let pool = jm_pool(&[dir.addr().to_string()], proxy.addr, keepalive, &rt);
        let mut events = pool.events();
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 1);

        proxy.signal("STOP");
        let cut = Instant::now();
        expect_keepalive_loss(&rt, &mut events, keepalive, cut, "microsocks SIGSTOP").await;
        proxy.signal("CONT");
        assert_eq!(pool.connected_count(), 0);
        pool.close_all().await.unwrap();
    });
}

/// The probe running with `--watch` through a proxy, its stdout read line
/// by line as it comes.
struct WatchRun {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl WatchRun {
    fn start(proxy: SocketAddr, directory: SocketAddr, watch: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_probe"))
            .args(["--socks", &proxy.to_string(), "--network", "regtest"])
            .args(["--timeout", "10", "--watch", watch])
            .args(["--keepalive-idle", "15", "--probe-timeout", "2"])
            .arg(directory.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits up to `timeout` for a line containing `text`.
    fn wait_for(&mut self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.seen.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Waits for the probe to exit (within `timeout`): its exit code and
    /// its whole output.
    #[allow(clippy::print_stdout)]
    fn finish(mut self, timeout: Duration) -> (Option<i32>, String) {
        // The probe's stdout ends when it exits: the reader thread's channel
        // closes then.
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the probe did not exit:\n{}", self.seen.join("\n"))
                }
            }
        }
        let status = self.child.wait().unwrap();
        let stdout = self.seen.join("\n");
        println!("{stdout}");
        (status.code(), stdout)
    }
}

impl Drop for WatchRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_probe_watches_a_healthy_directory_and_succeeds() {
    let dir = JmDirectory::start(JmBehaviour::Modelled(JmModelled::new(
        DirectoryProfile::JoinmarketNg,
    )))
    .unwrap();
    let proxy = Microsocks::start_open();
    let node = dir.addr().to_string();
    // Probed at 15 s of quiet, answered.
    let mut run = WatchRun::start(proxy.addr, dir.addr(), "19");
    let connected = format!("{node}  connected  nick {JM_DIRECTORY_NICK}, features ");
    assert!(
        run.wait_for(&connected, Duration::from_secs(20)),
        "{:#?}",
        run.seen
    );
    let (code, stdout) = run.finish(Duration::from_secs(60));
    #[allow(clippy::print_stdout)]
    {
        println!("{stdout}");
    }
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("watching for 19s"), "{stdout}");
    assert!(!stdout.contains("  lost: "), "{stdout}");
    assert!(
        stdout.contains("  connected:  ") && stdout.contains("(1 connection)"),
        "{stdout}"
    );
    assert!(stdout.contains("  losses:     none"), "{stdout}");
    assert!(
        stdout.contains("reached 1 of 1 directories; 0 links lost"),
        "{stdout}"
    );
    // The probe was sent and answered on the wire, and the pool reported
    // the answer with its round trip.
    let records = dir.link_records();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert!(records[0].pongs_sent >= 1, "{records:#?}");
    assert!(dir.evictions().is_empty());
    assert!(
        stdout.contains(&format!("{node}  probe answered  rtt ")),
        "{stdout}"
    );
    assert!(stdout.contains("answered, rtt min "), "{stdout}");
}

#[test]
fn the_probe_watch_reports_a_silent_path_and_fails() {
    let dir = JmDirectory::start(JmBehaviour::Modelled(JmModelled::new(
        DirectoryProfile::JoinmarketNg,
    )))
    .unwrap();
    let proxy = Microsocks::start_open();
    let node = dir.addr().to_string();
    let mut run = WatchRun::start(proxy.addr, dir.addr(), "30");
    let connected = format!("{node}  connected  nick {JM_DIRECTORY_NICK}");
    assert!(
        run.wait_for(&connected, Duration::from_secs(20)),
        "{:#?}",
        run.seen
    );
    // The path goes silent: probed after 15 s of quiet, lost 2 s later.
    dir.silence_links();
    let lost = format!("{node}  lost: keepalive timed out (silent path)");
    assert!(
        run.wait_for(&lost, Duration::from_secs(30)),
        "{:#?}",
        run.seen
    );
    // The directory still holds the nick of the dead link (a real one does
    // until its heartbeat evicts it: 630 s for joinmarket-ng) and refuses
    // the redial; make it forget the link, as that eviction would.
    dir.drop_all();
    let reconnected = format!("{node}  reconnected  nick {JM_DIRECTORY_NICK}");
    assert!(
        run.wait_for(&reconnected, Duration::from_secs(20)),
        "{:#?}",
        run.seen
    );
    let (code, stdout) = run.finish(Duration::from_secs(60));
    #[allow(clippy::print_stdout)]
    {
        println!("{stdout}");
    }
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("  losses:     1: 1 × keepalive timed out (silent path)"),
        "{stdout}"
    );
    assert!(stdout.contains("(2 connections)"), "{stdout}");
    assert!(
        stdout.contains("reached 1 of 1 directories; 1 link lost"),
        "{stdout}"
    );
}

/// The fixed username and password of the password-protected microsocks
/// below (issue 16, item 9).
const PROXY_USER: &str = "alice";
const PROXY_PASSWORD: &str = "fixed-Pr0xy-secret";

/// Every way a user can print `error`: Display, Debug, and each cause.
fn error_texts(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut texts = vec![error.to_string(), format!("{error:?}")];
    texts.extend(std::iter::successors(error.source(), |&e| e.source()).map(ToString::to_string));
    texts
}

/// A line pool through `proxy` with the fixed proxy credentials
/// `username`/`password` and isolation off.
fn fixed_auth_pool(
    dir: &LineServer,
    proxy: SocketAddr,
    username: &str,
    password: &str,
    rt: &Arc<dyn Runtime>,
) -> DirectoryPool<common::LineHandshake> {
    let mut cfg = config(&[dir.addr().to_string()], proxy);
    cfg.proxy_auth = Some(dirpool::SocksCredentials::new(
        username.to_owned(),
        password,
    ));
    line_pool(cfg, rt)
}

#[test]
fn the_pool_connects_through_microsocks_with_fixed_proxy_credentials() {
    on_both_runtimes(|rt| async move {
        let dir = LineServer::start(LineBehaviour::Healthy).unwrap();
        let proxy = Microsocks::start(PROXY_USER, PROXY_PASSWORD);
        let pool = fixed_auth_pool(&dir, proxy.addr, PROXY_USER, PROXY_PASSWORD, &rt);
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 1);
        let client = pool.client(&dir.addr().to_string()).expect("registered");
        assert_eq!(client.greeting, format!("HELLO {}", dir.port()));
        // A one-off dial takes the same credentials.
        let (_, other) = pool
            .connect_to_directory(&dir.addr().to_string())
            .await
            .unwrap();
        assert_eq!(other.greeting, client.greeting);
        // Peers are dialed through the same proxy, with the same pair.
        let peer = pool.peer_credentials().expect("proxy credentials");
        assert_eq!(peer.username(), PROXY_USER);
        assert_eq!(peer.password().expose(), PROXY_PASSWORD);
        for text in [
            format!("{pool:?}"),
            format!("{peer:?}"),
            format!("{peer:#?}"),
        ] {
            assert!(!text.contains(PROXY_PASSWORD), "{text} leaks the password");
        }
        pool.close_all().await.unwrap();
        assert_eq!(dir.accepted(), 2);
    });
}

#[test]
fn a_wrong_fixed_proxy_password_is_the_typed_auth_error_without_the_password() {
    on_both_runtimes(|rt| async move {
        let dir = LineServer::start(LineBehaviour::Healthy).unwrap();
        let proxy = Microsocks::start(PROXY_USER, PROXY_PASSWORD);
        let wrong = "wrong-Pr0xy-secret";
        let pool = fixed_auth_pool(&dir, proxy.addr, PROXY_USER, wrong, &rt);
        let mut events = pool.events();
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 0);
        let error = first_failure(&rt, &mut events, Duration::from_secs(5)).await;
        assert!(
            matches!(&*error, DialError::ProxyAuthRejected { username, proxy: p } if username == PROXY_USER && *p == proxy.addr),
            "{error:?}"
        );
        let Err(direct) = pool.connect_to_directory(&dir.addr().to_string()).await else {
            panic!("dial succeeded with a wrong password");
        };
        assert!(
            matches!(&direct, DialError::ProxyAuthRejected { username, .. } if username == PROXY_USER),
            "{direct:?}"
        );
        let mut texts = error_texts(&*error);
        texts.extend(error_texts(&direct));
        texts.push(format!("{pool:?}"));
        for text in &texts {
            assert!(!text.contains(wrong), "{text} leaks the password");
            assert!(!text.contains(PROXY_PASSWORD), "{text} leaks a password");
        }
        assert!(error.to_string().contains(PROXY_USER), "{error}");
        assert_eq!(dir.accepted(), 0);
    });
}

/// A writer that keeps what the log formatter writes.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn fixed_proxy_passwords_never_reach_the_log() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    // As in health.rs: a second live dispatcher makes every callsite ask
    // this thread's subscriber rather than a cached "never".
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt: Arc<dyn Runtime> = Arc::new(tokio.block_on(async { dirpool::TokioRuntime::current() }));
    let wrong = "wrong-Pr0xy-secret";
    tokio.block_on(async {
        let dir = LineServer::start(LineBehaviour::Healthy).unwrap();
        let proxy = Microsocks::start(PROXY_USER, PROXY_PASSWORD);
        for password in [PROXY_PASSWORD, wrong] {
            let pool = fixed_auth_pool(&dir, proxy.addr, PROXY_USER, password, &rt);
            let connected = pool.connect_all_parallel().await.unwrap();
            assert_eq!(connected, usize::from(password == PROXY_PASSWORD));
            pool.close_all().await.unwrap();
        }
    });
    drop(tokio);
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // The log is there (the dials and the rejection are logged, with the
    // username), and neither password is in it.
    assert!(log.contains(PROXY_USER), "{log}");
    assert!(log.contains("connected"), "{log}");
    assert!(!log.contains(PROXY_PASSWORD), "{log}");
    assert!(!log.contains(wrong), "{log}");
}

#[test]
fn fixed_proxy_credentials_with_isolation_are_a_typed_configuration_error() {
    let dir = LineServer::start(LineBehaviour::Healthy).unwrap();
    let proxy = Microsocks::start(PROXY_USER, PROXY_PASSWORD);
    for scope in [IsolationScope::PerCategory, IsolationScope::PerServer] {
        let mut cfg = config(&[dir.addr().to_string()], proxy.addr);
        cfg.pool.isolation = scope;
        cfg.proxy_auth = Some(dirpool::SocksCredentials::new(PROXY_USER, PROXY_PASSWORD));
        let (tokio, rt) = {
            let tokio = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let rt: Arc<dyn Runtime> =
                Arc::new(tokio.block_on(async { dirpool::TokioRuntime::current() }));
            (tokio, rt)
        };
        let _guard = tokio.enter();
        let spawned = DirectoryPool::builder(cfg, common::LineHandshake)
            .entropy(common::entropy())
            .spawn(rt);
        let Err(error) = spawned else {
            panic!("spawned with isolation and proxy credentials");
        };
        assert!(
            matches!(error, dirpool::ConfigError::ProxyAuthWithIsolation { scope: s } if s == scope),
            "{error:?}"
        );
        for text in error_texts(&error) {
            assert!(!text.contains(PROXY_PASSWORD), "{text}");
        }
    }
    assert_eq!(dir.accepted(), 0);
}
