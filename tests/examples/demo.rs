//! The live demo: a real `DirectoryPool` speaking JoinMarket through a
//! SOCKS5 proxy to four directories, all in this process on 127.0.0.1
//! (no Tor, no network), in about 10 seconds of wall time.
//!
//! The world, as Tor would show it:
//! * `healthy`: accepts at once; restarted partway (down for 1 s);
//! * `blackholed`: the proxy never answers (Tor cannot reach the onion), so
//!   every dial ends at the 4 s connection timeout and is retried;
//! * `late`: published only 3 s after start; until then the proxy answers
//!   0xF0 (onion descriptor not found);
//! * `flapping`: drops every connection 2.5 s after the handshake;
//! * `not-an-onion.onion`: malformed, reported at start, never dialed.
//!
//! ```sh
//! cargo run --example demo
//! ```
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dirpool::joinmarket::{
    DirectoryConnection, JmConfig, JoinMarketHandshake, Network, NickIdentity,
};
use dirpool::{Config, DirectoryPool, PoolEvent, PoolHooks};
use dirpool_core::{Backoff, IsolationScope, RetryPolicy, ServerAddr, ServerStatus};
use dirpool_tests::{
    AuthMode, JmAccept, JmBehaviour, JmDirectory, Reply, SocksConfig, SocksServer,
};
use futures::StreamExt;

/// Tor's answer while an onion service has no descriptor published.
const ONION_DESCRIPTOR_NOT_FOUND: u8 = 0xF0;

fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    // The directories (plain std threads on loopback ports).
    let healthy_dir = JmDirectory::start(accepting(
        "J5goodDirOOOOOOO",
        "welcome to the healthy directory",
        None,
    ))?;
    let late_dir = JmDirectory::start_after(
        accepting("J5LateDirOOOOOOO", "just published", None),
        Duration::from_secs(3),
    )?;
    let flapping_dir = JmDirectory::start(accepting(
        "J5BouncyDirOOOOO",
        "back again",
        Some(Duration::from_millis(2500)),
    ))?;

    // Valid v3 onion names for them (any 32 bytes make a valid key).
    let [healthy, blackholed, late, flapping] =
        [1u8, 2, 3, 4].map(|key| ServerAddr::from_onion_key(&[key; 32], 5222));

    // The "Tor" SocksPort: demands username/password as Tor does with
    // IsolateSOCKSAuth, and routes each onion to its loopback directory.
    let tor = SocksServer::start(
        SocksConfig::new()
            .with_auth(AuthMode::user_pass_any())
            .with_reply(healthy.host(), Reply::Forward(healthy_dir.addr()))
            .with_reply(blackholed.host(), Reply::Stall)
            .with_reply(late.host(), Reply::Forward(late_dir.addr()))
            .with_reply(flapping.host(), Reply::Forward(flapping_dir.addr()))
            // A directory that is down answers what Tor answers for an
            // onion it cannot find, so the logs show the typed onion error.
            .with_forward_failure_code(ONION_DESCRIPTOR_NOT_FOUND),
    )?;

    let names = [
        (&healthy, "healthy"),
        (&blackholed, "blackholed"),
        (&late, "late"),
        (&flapping, "flapping"),
    ];
    for (addr, name) in names {
        println!("{name:>10}  {addr}");
    }

    let mut servers: Vec<String> = names.iter().map(|(a, _)| a.to_string()).collect();
    servers.push("not-an-onion.onion".to_owned());
    let mut config = Config::new(servers);
    config.proxy = tor.addr();
    config.pool.isolation = IsolationScope::PerCategory;
    // Demo-sized timings (the defaults are 120 s, 1 s ×2 ≤ 10 s and 60 s).
    config.pool.connection_timeout = Duration::from_secs(4);
    config.pool.close_timeout = Duration::from_secs(2);
    config.pool.maintenance.backoff =
        Backoff::new(Duration::from_millis(500), Duration::from_secs(2), 2.0).with_jitter(0.2);
    // The healthy link (up 5 s) counts as stable, the flapping one (2.5 s)
    // does not, so its redials back off.
    config.pool.maintenance.stable_after = Duration::from_secs(4);

    let handshake =
        JoinMarketHandshake::new(JmConfig::new(NickIdentity::random()?, Network::Regtest))?;
    let pool = DirectoryPool::builder(config, handshake)
        .hooks(ShowDirectory)
        .spawn_smol()?;

    smol::block_on(async {
        let watcher = smol::spawn(watch_events(pool.events()));

        let started = Instant::now();
        // Returns as soon as one directory is connected.
        let retry = RetryPolicy::new(Duration::from_secs(10));
        let connected = pool.connect_all_with_retry(retry).await?;
        println!(
            "connect_all_with_retry: {connected} connected after {:?}",
            started.elapsed()
        );
        pool.start_maintenance()?;

        smol::Timer::after(Duration::from_secs(5)).await;
        println!("restarting the healthy directory (down for 1 s)");
        healthy_dir.restart_after(Duration::from_secs(1))?;

        smol::Timer::after(Duration::from_secs(5)).await;
        print_status(&pool.status().await?, &pool, &names);

        let report = pool.close_all().await?;
        println!("close_all: {} connected left", report.connected);
        // Isolation is invisible in the logs: ask the proxy what it saw.
        let connects = tor.connect_requests();
        let users: BTreeSet<_> = connects.iter().filter_map(|r| r.username.clone()).collect();
        println!("proxy: {} CONNECTs, usernames {users:?}", connects.len());
        // The last handle: the driver stops, which ends the event stream.
        drop(pool);
        watcher.await;
        Ok::<_, Box<dyn Error>>(())
    })?;

    // Every listener, connection and thread of the fake world goes here.
    drop((tor, healthy_dir, late_dir, flapping_dir));
    Ok(())
}

/// An accepting directory with this nick and motd, dropping each link
/// `drop_after` after the handshake if set.
fn accepting(nick: &str, motd: &str, drop_after: Option<Duration>) -> JmBehaviour {
    JmBehaviour::Accept(JmAccept {
        nick: nick.to_owned(),
        motd: Some(motd.to_owned()),
        drop_after,
        ..JmAccept::default()
    })
}

/// Shows who answered: the library logs "connected" but not the
/// directory's own greeting.
struct ShowDirectory;

impl PoolHooks<DirectoryConnection> for ShowDirectory {
    async fn on_connected(&self, node_id: &str, client: &Arc<DirectoryConnection>) {
        let info = client.info();
        let motd = info.motd.as_deref().unwrap_or("-");
        tracing::info!(server = %short(node_id), nick = %info.nick, "motd: {motd}");
    }
}

/// The library logs every event already, so this prints no line per
/// event: only the rest of a failed dial's cause chain (the log shows its
/// first line), and a tally when the pool stops.
async fn watch_events(mut events: impl futures::Stream<Item = PoolEvent> + Unpin) {
    let mut tally = BTreeMap::<&str, usize>::new();
    while let Some(event) = events.next().await {
        let kind = match &event {
            PoolEvent::Connected { .. } => "connected",
            PoolEvent::Disconnected { .. } => "disconnected",
            PoolEvent::DialFailed { .. } => "dial failed",
            _ => continue,
        };
        *tally.entry(kind).or_default() += 1;
        if let PoolEvent::DialFailed { node_id, error, .. } = event {
            for cause in std::iter::successors(error.source(), |&e| e.source()) {
                tracing::info!(server = %short(&node_id), "  caused by: {cause}");
            }
        }
    }
    let tally: Vec<String> = tally.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!("events seen: {}", tally.join(", "));
}

/// One row per server: what `status()` says, plus the directory's greeting
/// for the connected ones.
fn print_status(
    statuses: &[ServerStatus],
    pool: &DirectoryPool<JoinMarketHandshake>,
    names: &[(&ServerAddr, &str)],
) {
    let clients = pool.clients();
    let mut rows = vec![
        [
            "",
            "server",
            "state",
            "attempts",
            "up for",
            "last error",
            "directory",
        ]
        .map(String::from),
    ];
    for status in statuses {
        let node_id = status.addr.node_id();
        let directory = clients.iter().find(|(id, _)| id == node_id).map(|(_, c)| {
            let info = c.info();
            format!("{} {:?}", info.nick, info.motd.as_deref().unwrap_or(""))
        });
        let name = names.iter().find(|(a, _)| *a == &*status.addr);
        rows.push([
            name.map_or("", |(_, n)| n).to_owned(),
            short(node_id),
            format!("{:?}", status.state),
            status.attempts.to_string(),
            status.connected_since.map_or("-".into(), |since| {
                format!("{:.1}s", since.elapsed().as_secs_f64())
            }),
            // A connected server's old dial error would only mislead.
            match status.connected_since {
                Some(_) => "-".into(),
                None => status.last_failure.map_or("-".into(), |f| f.to_string()),
            },
            directory.unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    println!();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    for rejected in pool.rejected_entries() {
        println!(
            "{:?} (entry {}): never dialed",
            rejected.entry, rejected.index
        );
    }
    println!();
}

/// The first 16 characters of an onion node_id.
fn short(node_id: &str) -> String {
    let head: String = node_id.chars().take(16).collect();
    format!("{head}…")
}
