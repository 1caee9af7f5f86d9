//! Peak memory with one directory flooding as fast as loopback allows and
//! a user who never reads: the figure behind "memory is bounded per
//! directory" in the README.
//!
//! A loopback directory (the joinmarket-ng model, flooding public messages
//! of LINE bytes) is reached through the in-process SOCKS5 server; the pool
//! reads it at full speed while nobody calls `recv()`. Every second this
//! prints the process's resident set (VmRSS) and its peak (VmHWM) from
//! `/proc/self/status`, the link's held bytes and how many messages were
//! dropped and counted.
//!
//! ```text
//! cargo run --release -p dirpool-tests --example flood_rss -- [SECS] [LINE] [INBOUND]
//! ```
//!
//! Defaults: 20 s, lines of 2,000,000 bytes (just under the 2 MiB line
//! limit), `inbound_bytes` = 4 MiB (the default).
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use dirpool::joinmarket::{JmConfig, JoinMarketHandshake, Network, NickIdentity};
use dirpool::{Config, DirectoryPool};
use dirpool_core::ServerAddr;
use dirpool_tests::directory_model::DirectoryProfile;
use dirpool_tests::{
    AuthMode, JmBehaviour, JmDirectory, JmModelled, Reply, SocksConfig, SocksServer,
};

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let rest = line.strip_prefix(field)?.trim_start_matches(':').trim();
                rest.split_whitespace().next()?.parse().ok()
            })
        })
        .unwrap_or(0)
}

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secs = arg(1, 20);
    let line = usize::try_from(arg(2, 2_000_000))?;
    let inbound = usize::try_from(arg(3, 4 * 1024 * 1024))?;

    let mut flooding = JmModelled::new(DirectoryProfile::JoinmarketNg);
    flooding.flood = Some(line);
    let directory = JmDirectory::start(JmBehaviour::Modelled(flooding))?;
    let onion = ServerAddr::from_onion_key(&[7; 32], 5222);
    let proxy = SocksServer::start(
        SocksConfig::new()
            .with_auth(AuthMode::user_pass_any())
            .with_reply(onion.host(), Reply::Forward(directory.addr())),
    )?;

    let mut config = Config::new([onion.node_id()]);
    config.proxy = proxy.addr();
    config.pool.isolation = dirpool_core::IsolationScope::PerCategory;
    let mut jm = JmConfig::new(NickIdentity::random()?, Network::Regtest);
    // The figure was measured with 2 MiB lines; the default is now larger.
    jm.max_line = 2 * 1024 * 1024;
    jm.inbound_bytes = inbound;
    let handshake = JoinMarketHandshake::new(jm)?;
    let baseline = status_kib("VmRSS");
    println!(
        "flood: lines of {line} bytes, inbound_bytes {inbound}, for {secs} s; RSS before connecting {baseline} KiB"
    );

    smol::block_on(async {
        let pool = DirectoryPool::builder(config, handshake).spawn_smol()?;
        let mut events = pool.events();
        let connected = pool.connect_all_parallel().await?;
        println!("connected: {connected}");
        if connected == 0 {
            for _ in 0..4 {
                if let Some(Some(event)) = futures::FutureExt::now_or_never(events.next()) {
                    println!("{event:?}");
                }
            }
        }
        let start = Instant::now();
        let client = pool
            .client(onion.node_id())
            .ok_or("the directory did not connect")?;
        let mut peak_held = 0usize;
        while start.elapsed() < Duration::from_secs(secs) {
            smol::Timer::after(Duration::from_secs(1)).await;
            let stats = client.stats();
            let held = stats.inbound_bytes + stats.reader_bytes + stats.outbound_bytes;
            peak_held = peak_held.max(held);
            println!(
                "t={:>3} s  RSS {:>7} KiB  peak {:>7} KiB  held {:>9} B (inbound {} in {} messages, reader {}, outbound {})  dropped {}  sent by directory {}",
                start.elapsed().as_secs(),
                status_kib("VmRSS"),
                status_kib("VmHWM"),
                held,
                stats.inbound_bytes,
                stats.inbound_messages,
                stats.reader_bytes,
                stats.outbound_bytes,
                stats.lagged,
                directory.flood_lines(),
            );
        }
        let peak = status_kib("VmHWM");
        println!(
            "summary: peak RSS {peak} KiB = baseline {baseline} KiB + {} KiB; peak held by the link {peak_held} B (bound: inbound {inbound} + line {} + outbound {})",
            peak.saturating_sub(baseline),
            line + 2,
            JmConfig::new(NickIdentity::random()?, Network::Regtest).outbound_bytes,
        );
        drop(client);
        pool.close_all().await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
