#![allow(clippy::print_stdout, clippy::print_stderr)]
//! Probes JoinMarket directory servers through a Tor SOCKS5 proxy: dials
//! each one (all at once), runs the JoinMarket handshake, reports what the
//! directory says about itself, and closes.
//!
//! ```text
//! cargo run -p dirpool --example probe -- [OPTIONS] DIRECTORY...
//! ```

use std::error::Error;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dirpool::joinmarket::{DirectoryConnection, JmConfig, JoinMarketHandshake, Network, Nick};
use dirpool::{Client, Config, ConfigError, DEFAULT_PROXY, DialError, DirectoryPool};
use dirpool_core::backoff::MAX_POLICY_DURATION;
use dirpool_core::{IsolationScope, ServerAddr};

const USAGE: &str = "\
Usage: cargo run -p dirpool --example probe -- [OPTIONS] DIRECTORY...

Connects to each JoinMarket directory (all at once) through Tor, runs the
JoinMarket handshake and reports what it says about itself.

Arguments:
  DIRECTORY...        directory addresses, `host` or `host:port` (default port 5222)

Options:
  --socks HOST:PORT   Tor SOCKS port [default: 127.0.0.1:9050]
  --isolate           use stream isolation credentials (user `jm-directory`, a random
                      per-process password): with Tor's IsolateSOCKSAuth (on by default)
                      the probe's streams get circuits of their own
  --network NAME      mainnet | testnet | testnet4 | signet | regtest [default: mainnet]
  --nick NICK         JoinMarket nick to present (J5 + 14 characters)
                      [default: a random one]
  --timeout SECONDS   per-directory connection timeout, Tor circuit and handshake
                      included [default: 120]
  -h, --help          show this help

Exit status: 0 if at least one directory was reached, 1 if none, 2 on a usage error.";

struct Options {
    socks: SocketAddr,
    isolate: bool,
    network: Network,
    nick: Option<Nick>,
    timeout: Duration,
    directories: Vec<String>,
}

/// Parses the command line; `Ok(None)` means help was asked for.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        socks: DEFAULT_PROXY,
        isolate: false,
        network: Network::Mainnet,
        nick: None,
        timeout: Duration::from_secs(120),
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
        let takes_value = matches!(name, "--socks" | "--network" | "--nick" | "--timeout");
        let value = match (takes_value, inline) {
            (true, Some(value)) => value,
            (true, None) => args.next().ok_or(format!("{name} needs a value"))?,
            (false, Some(_)) => return Err(format!("{name} takes no value")),
            (false, None) => String::new(),
        };
        match name {
            "-h" | "--help" => return Ok(None),
            "--isolate" => options.isolate = true,
            "--socks" => options.socks = parse_socks(&value)?,
            "--network" => {
                options.network = value.parse().map_err(|e| format!("--network: {e}"))?;
            }
            "--nick" => {
                let nick = Nick::parse(&value).map_err(|e| format!("--nick {value:?}: {e}"))?;
                options.nick = Some(nick);
            }
            "--timeout" => options.timeout = parse_timeout(&value)?,
            _ => return Err(format!("unknown option {name} (see --help)")),
        }
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

fn parse_timeout(value: &str) -> Result<Duration, String> {
    let bad =
        || format!("--timeout {value:?}: expected a positive number of seconds, at most a year");
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

async fn probe_all(options: &Options, handshake: JoinMarketHandshake) -> ExitCode {
    let mut config = Config::new(options.directories.iter().cloned());
    config.proxy = options.socks;
    config.pool.connection_timeout = options.timeout;
    if options.isolate {
        config.pool.isolation = IsolationScope::PerCategory;
    }
    let probes = match DirectoryPool::builder(config, handshake).spawn_smol() {
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
    let (nick, origin) = match &options.nick {
        Some(nick) => (nick.clone(), "given"),
        None => match Nick::random() {
            Ok(nick) => (nick, "random"),
            Err(e) => {
                eprintln!("error: no OS randomness for a nick: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let handshake = match JoinMarketHandshake::new(JmConfig::new(nick.clone(), options.network)) {
        Ok(handshake) => handshake,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return ExitCode::FAILURE;
        }
    };
    println!(
        "probing {} director{} via SOCKS {} (stream isolation {}), network {}, nick {nick} ({origin}), timeout {:?}\n",
        options.directories.len(),
        if options.directories.len() == 1 {
            "y"
        } else {
            "ies"
        },
        options.socks,
        if options.isolate { "on" } else { "off" },
        options.network,
        options.timeout,
    );
    smol::block_on(probe_all(&options, handshake))
}
