#![allow(clippy::print_stdout, clippy::print_stderr)]
//! Probes JoinMarket directory servers through a Tor SOCKS5 proxy: dials
//! each one (all at once), runs the JoinMarket handshake, reports what the
//! directory says about itself, and closes; with `--watch SECS` it holds
//! the links instead, printing each event (connected, probe answered, lost,
//! reconnected), and sums them up per directory at the end.
//!
//! With `--arti` (feature `arti`) it needs no tor daemon: an in-process
//! Tor client (arti) bootstraps and opens the streams.
//!
//! ```text
//! cargo run -p dirpool --example probe -- [OPTIONS] DIRECTORY...
//! cargo run -p dirpool --features arti --example probe -- --arti DIRECTORY...
//! ```

use std::collections::BTreeMap;
use std::error::Error;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dirpool::joinmarket::{
    DirectoryConnection, JmConfig, JoinMarketHandshake, Network, NickIdentity,
};
use dirpool::{Client, Config, ConfigError, DEFAULT_PROXY, DialError, DirectoryPool, PoolEvent};
use dirpool_core::backoff::MAX_POLICY_DURATION;
use dirpool_core::{
    DisconnectReason, IsolationScope, KeepalivePolicy, LinkLoss, MIN_PROBE_INTERVAL, Rejection,
    ServerAddr,
};
use futures::{FutureExt, StreamExt};

const USAGE: &str = "\
Usage: cargo run -p dirpool --example probe -- [OPTIONS] DIRECTORY...

Connects to each JoinMarket directory (all at once) through Tor, runs the
JoinMarket handshake and reports what it says about itself.

Arguments:
  DIRECTORY...        directory addresses, `host` or `host:port` (default port 5222)

Options:
  --socks HOST:PORT   Tor SOCKS port [default: 127.0.0.1:9050]
  --arti              no tor daemon: bootstrap an in-process Tor client (arti) and
                      open every stream through it (needs the `arti` feature:
                      `cargo run -p dirpool --features arti --example probe`);
                      arti keeps its state in its default directories
  --arti-config FILE  as --arti, with arti's configuration (its TOML form, as
                      arti.toml) from FILE, e.g. another Tor network or state
                      directory
  --rss               print the process's peak resident memory at the end (Linux)
  --isolate           use stream isolation credentials (user `jm-directory`, a random
                      per-process password): with Tor's IsolateSOCKSAuth (on by default)
                      the probe's streams get circuits of their own
  --network NAME      mainnet | testnet | signet | regtest [default: mainnet]
  --timeout SECONDS   per-directory connection timeout, Tor circuit and handshake
                      included [default: 120]
  --watch SECONDS     after connecting, hold the links this long instead of closing
                      them: print one line per event (connected, probe answered
                      with its round trip, lost with its reason, reconnected, dial
                      failed, ...), redial lost links on the pool's backoff, then
                      print a summary per directory (time connected, probes
                      answered, RTT min/median/max, losses by reason)
  --keepalive-idle SECONDS
                      probe a link quiet this long (PING 798, if the directory
                      advertises `ping`); at least 15 [default: 30]
  --probe-timeout SECONDS
                      declare a link lost when a probe goes unanswered this long
                      [default: 30]
  -h, --help          show this help

Watch output: one line per event, `[SECONDS.MMMs] DIRECTORY  EVENT`, seconds since
the start, e.g.
  [   0.412s] abc...xyz.onion:5222  connected  nick J5..., features ping, our nick NotOffered
  [  30.877s] abc...xyz.onion:5222  probe answered  rtt 812.4 ms
  [  61.290s] abc...xyz.onion:5222  lost: keepalive timed out (silent path)
  [  63.101s] abc...xyz.onion:5222  reconnected  nick J5..., features ping, our nick NotOffered

Exit status: 0 if at least one directory was reached (with --watch: and no link
was lost that its directory did not close on purpose, i.e. anything but a
DISCONNECT 801), 1 otherwise, 2 on a usage error.";

struct Options {
    socks: SocketAddr,
    /// `--arti`: the in-process Tor, with the configuration file if given.
    arti: Option<Option<PathBuf>>,
    rss: bool,
    isolate: bool,
    network: Network,
    timeout: Duration,
    watch: Option<Duration>,
    keepalive: KeepalivePolicy,
    directories: Vec<String>,
}

/// Parses the command line; `Ok(None)` means help was asked for.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        socks: DEFAULT_PROXY,
        arti: None,
        rss: false,
        isolate: false,
        network: Network::Mainnet,
        timeout: Duration::from_secs(120),
        watch: None,
        keepalive: KeepalivePolicy::default(),
        directories: Vec::new(),
    };
    while let Some(arg) = args.next() {
        if arg == "--" {
            options.directories.extend(args.by_ref());
            break;
        }
        if !arg.starts_with('-') {
            options.directories.push(arg);
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (arg.as_str(), None),
        };
        let takes_value = matches!(
            name,
            "--socks"
                | "--arti-config"
                | "--network"
                | "--timeout"
                | "--watch"
                | "--keepalive-idle"
                | "--probe-timeout"
        );
        let value = match (takes_value, inline) {
            (true, Some(value)) => value,
            (true, None) => args.next().ok_or(format!("{name} needs a value"))?,
            (false, Some(_)) => return Err(format!("{name} takes no value")),
            (false, None) => String::new(),
        };
        match name {
            "-h" | "--help" => return Ok(None),
            "--isolate" => options.isolate = true,
            "--rss" => options.rss = true,
            "--socks" => options.socks = parse_socks(&value)?,
            "--arti" => {
                options.arti.get_or_insert(None);
            }
            "--arti-config" => options.arti = Some(Some(PathBuf::from(value))),
            "--network" => {
                options.network = value.parse().map_err(|e| format!("--network: {e}"))?;
            }
            "--timeout" => options.timeout = parse_seconds(name, &value)?,
            "--watch" => options.watch = Some(parse_seconds(name, &value)?),
            "--keepalive-idle" => {
                let idle = parse_seconds(name, &value)?;
                if idle < MIN_PROBE_INTERVAL {
                    return Err(format!(
                        "--keepalive-idle {value:?}: at least {} seconds (directories \
                         disconnect a peer that pings more often)",
                        MIN_PROBE_INTERVAL.as_secs()
                    ));
                }
                options.keepalive.idle = idle;
            }
            "--probe-timeout" => options.keepalive.probe_timeout = parse_seconds(name, &value)?,
            _ => return Err(format!("unknown option {name} (see --help)")),
        }
    }
    if options.arti.is_some() && options.socks != DEFAULT_PROXY {
        return Err("--socks and --arti exclude each other".to_owned());
    }
    if options.arti.is_some() && !cfg!(feature = "arti") {
        return Err("--arti needs the `arti` feature \
             (cargo run -p dirpool --features arti --example probe)"
            .to_owned());
    }
    Ok(Some(options))
}

fn parse_socks(value: &str) -> Result<SocketAddr, String> {
    let bad = |why: String| format!("--socks {value:?}: {why} (expected HOST:PORT)");
    value
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("no address found".to_owned()))
}

fn parse_seconds(name: &str, value: &str) -> Result<Duration, String> {
    let bad = || format!("{name} {value:?}: expected a positive number of seconds, at most a year");
    let seconds: f64 = value.parse().map_err(|_| bad())?;
    match Duration::try_from_secs_f64(seconds) {
        Ok(timeout) if !timeout.is_zero() && timeout <= MAX_POLICY_DURATION => Ok(timeout),
        _ => Err(bad()),
    }
}

/// An error and its `source()` chain on one line.
fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    for cause in std::iter::successors(error.source(), |&e| e.source()) {
        text.push_str(": ");
        text.push_str(&cause.to_string());
    }
    text
}

/// One directory's result: how long the dial took, and the connection.
struct Probe {
    addr: String,
    elapsed: Duration,
    result: Result<(String, DirectoryConnection), DialError>,
}

fn report(probe: &Probe) -> bool {
    let ms = probe.elapsed.as_millis();
    println!("{}", probe.addr);
    let (node_id, connection) = match &probe.result {
        Ok(ok) => ok,
        Err(e) => {
            println!("  outcome:    FAILED: {}", chain(e));
            println!("  failed in:  {ms} ms");
            return false;
        }
    };
    let info = connection.info();
    println!("  outcome:    OK");
    if node_id != &probe.addr {
        println!("  node id:    {node_id}");
    }
    println!("  handshake:  {ms} ms");
    println!("  nick:       {}", info.nick);
    println!("  motd:       {}", info.motd.as_deref().unwrap_or("(none)"));
    let features = if info.features.is_empty() {
        "(none)".to_owned()
    } else {
        info.features.join(", ")
    };
    println!("  features:   {features}");
    println!(
        "  our nick:   {:?} (JMP-0005 nick authentication)",
        info.nick_auth
    );
    println!(
        "  protocol:   {} to {}",
        info.protocol_min, info.protocol_max
    );
    let directory = if info.directory { "yes" } else { "no" };
    println!("  directory:  {directory}");
    if let Some(network) = &info.network {
        println!("  network:    {network}");
    }
    if let Some(location) = &info.location {
        println!("  location:   {location}");
    }
    true
}

fn pool_config(options: &Options) -> Config {
    let mut config = Config::new(options.directories.iter().cloned());
    config.proxy = options.socks;
    config.pool.connection_timeout = options.timeout;
    config.pool.keepalive = options.keepalive;
    if options.isolate {
        config.pool.isolation = IsolationScope::PerCategory;
    }
    config
}

/// The in-process Tor client of `--arti`, if any.
#[cfg(feature = "arti")]
type Tor = Option<dirpool::arti::ArtiClient>;
/// Without the `arti` feature there is none.
#[cfg(not(feature = "arti"))]
type Tor = Option<std::convert::Infallible>;

/// The pool, on smol, through `tor` if given, else the SOCKS proxy.
fn spawn_pool(
    options: &Options,
    handshake: JoinMarketHandshake,
    tor: &Tor,
) -> Result<DirectoryPool<JoinMarketHandshake>, ConfigError> {
    let builder = DirectoryPool::builder(pool_config(options), handshake);
    #[cfg(feature = "arti")]
    let builder = match tor {
        Some(tor) => builder.arti(tor.clone()),
        None => builder,
    };
    #[cfg(not(feature = "arti"))]
    let _ = tor;
    builder.spawn_smol()
}

/// `--arti`: a tokio runtime for arti, driven by a thread of its own (the
/// pool runs on smol), entered for the rest of the process, and a client
/// bootstrapped on it; prints how long the bootstrap took.
#[cfg(feature = "arti")]
fn start_arti(config: Option<&std::path::Path>) -> Result<Tor, String> {
    use dirpool::arti::{ArtiClient, TorClientConfig};
    let config = match config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--arti-config {}: {e}", path.display()))?;
            ArtiClient::config_from_toml(&text)
                .map_err(|e| format!("--arti-config {}: {}", path.display(), chain(&e)))?
        }
        None => TorClientConfig::default(),
    };
    let runtime = dirpool::tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("no tokio runtime for arti: {e}"))?;
    let handle = runtime.handle().clone();
    std::thread::spawn(move || runtime.block_on(futures::future::pending::<()>()));
    // Entered for good: arti makes its timers in the caller's context.
    std::mem::forget(handle.enter());
    let started = Instant::now();
    // From empty state directories on the real network: tens of seconds.
    let tor = smol::block_on(ArtiClient::bootstrap(config, Duration::from_secs(180)))
        .map_err(|e| format!("arti: {}", chain(&e)))?;
    println!(
        "tor (arti): bootstrapped in {} ms",
        started.elapsed().as_millis()
    );
    Ok(Some(tor))
}

#[cfg(not(feature = "arti"))]
fn start_arti(_: Option<&std::path::Path>) -> Result<Tor, String> {
    Err("--arti needs the `arti` feature".to_owned())
}

/// The process's peak resident set (`VmHWM` of /proc/self/status).
fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.trim_start_matches("VmHWM:").trim().to_owned())
}

async fn probe_all(options: &Options, handshake: JoinMarketHandshake, tor: &Tor) -> ExitCode {
    let probes = match spawn_pool(options, handshake, tor) {
        Ok(pool) => {
            let dials = options.directories.iter().map(|addr| {
                let pool = &pool;
                async move {
                    let start = Instant::now();
                    let result = pool.connect_to_directory(addr).await;
                    let elapsed = start.elapsed();
                    Probe {
                        addr: addr.clone(),
                        elapsed,
                        result,
                    }
                }
            });
            futures::future::join_all(dials).await
        }
        // Every address is malformed: report each one as its dial would.
        Err(ConfigError::Pool(dirpool_core::ConfigError::NoValidServers { .. })) => options
            .directories
            .iter()
            .filter_map(|addr| {
                let error = ServerAddr::parse(addr).err()?;
                Some(Probe {
                    addr: addr.clone(),
                    elapsed: Duration::ZERO,
                    result: Err(DialError::from(error)),
                })
            })
            .collect(),
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let mut reached = 0usize;
    for probe in &probes {
        if report(probe) {
            reached += 1;
        }
        if let Ok((_, connection)) = &probe.result {
            if let Err(e) = connection.close().await {
                println!("  close:      failed: {}", chain(&e));
            }
        }
        println!();
    }
    println!(
        "reached {reached} of {} directories",
        options.directories.len()
    );
    if reached > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What `--watch` saw of one directory.
#[derive(Default)]
struct Watched {
    /// Connections made (the first one and every reconnection).
    connections: usize,
    /// Since when the current connection is up.
    since: Option<Instant>,
    /// Time connected, the current connection excluded.
    connected: Duration,
    /// The round trip of every probe answered.
    rtts: Vec<Duration>,
    /// Links lost, by reason.
    losses: BTreeMap<String, usize>,
    /// Links lost that the directory did not end on purpose.
    undeliberate: usize,
}

impl Watched {
    fn connected_until(&self, end: Instant) -> Duration {
        self.connected + self.since.map_or(Duration::ZERO, |since| end - since)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// One line about the event (`None` for those the watch does not show).
fn watch_line(
    event: &PoolEvent,
    now: Instant,
    pool: &DirectoryPool<JoinMarketHandshake>,
    watched: &mut BTreeMap<String, Watched>,
) -> Option<(Option<String>, String)> {
    fn entry<'a>(watched: &'a mut BTreeMap<String, Watched>, node_id: &str) -> &'a mut Watched {
        watched.entry(node_id.to_owned()).or_default()
    }
    Some(match event {
        PoolEvent::Connected { node_id } => {
            let w = entry(watched, node_id);
            w.connections += 1;
            w.since = Some(now);
            let what = if w.connections == 1 {
                "connected"
            } else {
                "reconnected"
            };
            let about = pool.client(node_id).map_or(String::new(), |client| {
                let info = client.info();
                let features = if info.features.is_empty() {
                    "(none)".to_owned()
                } else {
                    info.features.join(", ")
                };
                format!(
                    "  nick {}, features {features}, our nick {:?}",
                    info.nick, info.nick_auth
                )
            });
            (Some(node_id.clone()), format!("{what}{about}"))
        }
        PoolEvent::ProbeAnswered { node_id, rtt } => {
            entry(watched, node_id).rtts.push(*rtt);
            (
                Some(node_id.clone()),
                format!("probe answered  rtt {}", ms(*rtt)),
            )
        }
        PoolEvent::Disconnected { node_id, reason } => {
            let w = entry(watched, node_id);
            if let Some(since) = w.since.take() {
                w.connected += now - since;
            }
            if let DisconnectReason::Lost(loss) = reason {
                *w.losses.entry(loss.to_string()).or_default() += 1;
                if !LinkLoss::is_deliberate(*loss) {
                    w.undeliberate += 1;
                }
            }
            (Some(node_id.clone()), reason.to_string())
        }
        PoolEvent::DialFailed {
            node_id,
            error,
            retry_at,
        } => {
            let retry = retry_at.map_or(String::new(), |at| {
                format!(
                    " (retry in {:.1} s)",
                    at.saturating_duration_since(now).as_secs_f64()
                )
            });
            (
                Some(node_id.clone()),
                format!("dial failed: {}{retry}", chain(&**error)),
            )
        }
        PoolEvent::GaveUp { node_id, failures } => (
            Some(node_id.clone()),
            format!("gave up after {failures} failed dials"),
        ),
        PoolEvent::HookTimedOut { node_id, hook } => {
            (Some(node_id.clone()), format!("{hook} hook timed out"))
        }
        PoolEvent::Panicked { task, message } => (None, format!("{task} task panicked: {message}")),
        PoolEvent::AllDown => (None, "every directory is down".to_owned()),
        PoolEvent::Recovered => (None, "a directory is back".to_owned()),
        PoolEvent::ProxyUnreachable => (None, "SOCKS proxy unreachable".to_owned()),
        PoolEvent::ProxyRecovered => (None, "SOCKS proxy answers again".to_owned()),
        PoolEvent::Lagged { missed } => (None, format!("{missed} events missed (lagged)")),
        PoolEvent::AddressRejected { index, error } => {
            (None, format!("address #{index} rejected: {error}"))
        }
        _ => return None,
    })
}

/// `--watch`: connects, holds the links for `watch` with maintenance on,
/// prints every event as it comes and a summary per directory at the end.
async fn watch_all(
    options: &Options,
    handshake: JoinMarketHandshake,
    tor: &Tor,
    watch: Duration,
) -> ExitCode {
    let pool = match spawn_pool(options, handshake, tor) {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let start = Instant::now();
    let stamp = |at: Instant| format!("[{:>8.3}s]", (at - start).as_secs_f64());
    for rejected in pool.rejected_entries() {
        let why = match &rejected.reason {
            Rejection::Malformed(error) => format!("malformed: {error}"),
            Rejection::Duplicate(_) => "listed twice".to_owned(),
            _ => "rejected".to_owned(),
        };
        println!("{} {}  not dialed: {why}", stamp(start), rejected.entry);
    }
    let mut watched: BTreeMap<String, Watched> = pool
        .servers()
        .iter()
        .map(|addr| (addr.node_id().to_owned(), Watched::default()))
        .collect();
    let mut events = pool.events().fuse();
    let mut connect = std::pin::pin!(pool.connect_all_parallel().fuse());
    let mut deadline: Option<Instant> = None;
    loop {
        let timer = deadline.map_or_else(smol::Timer::never, smol::Timer::at);
        futures::select! {
            result = connect => {
                let now = Instant::now();
                match result {
                    Ok(reached) => println!(
                        "{} connected to {reached} of {}; watching for {watch:?}",
                        stamp(now),
                        watched.len()
                    ),
                    Err(e) => {
                        eprintln!("error: {}", chain(&e));
                        return ExitCode::FAILURE;
                    }
                }
                if let Err(e) = pool.start_maintenance() {
                    eprintln!("error: {}", chain(&e));
                    return ExitCode::FAILURE;
                }
                deadline = Some(now + watch);
            }
            event = events.next() => {
                let Some(event) = event else { break };
                let now = Instant::now();
                if let Some((node_id, line)) = watch_line(&event, now, &pool, &mut watched) {
                    let who = node_id.map_or(String::new(), |n| format!(" {n} "));
                    println!("{}{who} {line}", stamp(now));
                }
            }
            _ = FutureExt::fuse(timer) => break,
        }
    }
    let end = Instant::now();
    let _ = pool.stop_maintenance();
    if let Err(e) = pool.close_all().await {
        println!("close: failed: {}", chain(&e));
    }

    println!("\nwatched for {:.1} s\n", (end - start).as_secs_f64());
    let mut reached = 0usize;
    let mut undeliberate = 0usize;
    for (node_id, w) in &watched {
        if w.connections > 0 {
            reached += 1;
        }
        undeliberate += w.undeliberate;
        println!("{node_id}");
        println!(
            "  connected:  {:.1} s of {:.1} s ({} connection{})",
            w.connected_until(end).as_secs_f64(),
            (end - start).as_secs_f64(),
            w.connections,
            if w.connections == 1 { "" } else { "s" }
        );
        let mut rtts = w.rtts.clone();
        rtts.sort_unstable();
        match (
            rtts.first(),
            rtts.get((rtts.len().saturating_sub(1)) / 2),
            rtts.last(),
        ) {
            (Some(min), Some(median), Some(max)) => println!(
                "  probes:     {} answered, rtt min {} / median {} / max {}",
                rtts.len(),
                ms(*min),
                ms(*median),
                ms(*max)
            ),
            _ => println!("  probes:     0 answered"),
        }
        if w.losses.is_empty() {
            println!("  losses:     none");
        } else {
            let total: usize = w.losses.values().sum();
            let by_reason: Vec<_> = w
                .losses
                .iter()
                .map(|(reason, n)| format!("{n} × {reason}"))
                .collect();
            println!("  losses:     {total}: {}", by_reason.join(", "));
        }
        println!();
    }
    println!(
        "reached {reached} of {} directories; {undeliberate} link{} lost without the directory closing {}",
        watched.len(),
        if undeliberate == 1 { "" } else { "s" },
        if undeliberate == 1 { "it" } else { "them" },
    );
    if reached > 0 && undeliberate == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if options.directories.is_empty() {
        eprintln!("error: no directories given\n\n{USAGE}");
        return ExitCode::from(2);
    }
    // A fresh key each run: the nick it backs is not linked to any other.
    let identity = match NickIdentity::random() {
        Ok(identity) => identity,
        Err(e) => {
            eprintln!("error: no key for a nick: {e}");
            return ExitCode::FAILURE;
        }
    };
    let nick = identity.nick().clone();
    let handshake = match JoinMarketHandshake::new(JmConfig::new(identity, options.network)) {
        Ok(handshake) => handshake,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let route = match options.arti {
        Some(_) => "an in-process Tor (arti)".to_owned(),
        None => format!("SOCKS {}", options.socks),
    };
    println!(
        "probing {} director{} via {route} (stream isolation {}), network {}, nick {nick} (fresh key), timeout {:?}\n",
        options.directories.len(),
        if options.directories.len() == 1 {
            "y"
        } else {
            "ies"
        },
        if options.isolate { "on" } else { "off" },
        options.network,
        options.timeout,
    );
    if let Some(watch) = options.watch {
        println!(
            "watching for {:?} after connecting (keepalive idle {:?}, probe timeout {:?})\n",
            watch, options.keepalive.idle, options.keepalive.probe_timeout
        );
    }
    let tor = match &options.arti {
        Some(config) => match start_arti(config.as_deref()) {
            Ok(tor) => tor,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let code = match options.watch {
        Some(watch) => smol::block_on(watch_all(&options, handshake, &tor, watch)),
        None => smol::block_on(probe_all(&options, handshake, &tor)),
    };
    if options.rss {
        println!(
            "peak RSS: {}",
            peak_rss().unwrap_or_else(|| "unknown".to_owned())
        );
    }
    code
}
