#![allow(clippy::print_stdout, clippy::print_stderr)]
//! A JoinMarket taker's first step: ask every directory for the orderbook
//! (`!orderbook`), collect the offers makers send back for a few seconds,
//! and print each once (`Messaging` drops the copies other directories
//! relay) with the directories its maker was seen through (its routes).
//!
//! By default it runs without Tor in a loopback world of its own: three
//! in-process directories behind an in-process SOCKS5 proxy, and three
//! in-process makers (the `maker` example's code) connected to different
//! directories:
//!
//! ```text
//! cargo run -p dirpool --features loopback --example taker
//! cargo run -p dirpool --features loopback --example taker -- --socks 127.0.0.1:9050 DIRECTORY...
//! ```

mod support;

use std::collections::BTreeSet;
use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dirpool::joinmarket::{Message, Network, Nick, RecvError};
use futures::future::{Either, select};
use support::{
    CommandLine, LoopbackWorld, Maker, Offer, Participant, directory_numbers, example_offers,
    parse_command_line,
};

const USAGE: &str = "\
Usage: cargo run -p dirpool --features loopback --example taker -- [OPTIONS] [DIRECTORY...]

Sends !orderbook to every directory, collects the offers makers answer with,
and prints each offer once with the directories its maker was seen through.
Exits 0 if
it collected at least one offer.

Without --socks it starts three loopback directories, a loopback SOCKS5 proxy
and three makers in-process (no Tor).

Options:
  --socks HOST:PORT   reach DIRECTORY... (`host` or `host:port`) through this
                      SOCKS5 proxy (Tor)
  --network NAME      mainnet | testnet | signet | regtest [default:
                      mainnet with --socks, regtest in the loopback world]
  --wait SECONDS      how long to collect offers [default: 3]
  -h, --help          show this help";

/// Which of the loopback world's directories each in-process maker uses
/// (positions from 0): makers do not all use the same directories.
const MAKER_DIRECTORIES: [&[usize]; 3] = [&[0, 1, 2], &[0, 1], &[2]];

fn main() -> ExitCode {
    let line = match parse_command_line(std::env::args().skip(1), "--wait") {
        Ok(line) if line.help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(line) => line,
        Err(e) => {
            eprintln!("taker: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match smol::block_on(run(line)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("taker: no offers");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("taker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(line: CommandLine) -> Result<bool, Box<dyn Error>> {
    let default_network = if line.socks.is_some() {
        Network::Mainnet
    } else {
        Network::Regtest
    };
    let network = line.network.unwrap_or(default_network);
    let wait = line.seconds.unwrap_or(Duration::from_secs(3));

    let world;
    let mut makers = Vec::new();
    let mut serving = Vec::new();
    let (proxy, directories) = match line.socks {
        Some(socks) => (socks, line.directories),
        None => {
            world = LoopbackWorld::start(3, network)?;
            let onions: Vec<String> = world.onions.iter().map(|o| o.to_string()).collect();
            for (n, used) in MAKER_DIRECTORIES.iter().enumerate() {
                let dirs: Vec<String> = used.iter().map(|&i| onions[i].clone()).collect();
                let (maker, _) =
                    Maker::start(world.proxy.addr(), &dirs, network, example_offers(n)).await?;
                let maker = Arc::new(maker);
                let serve = Arc::clone(&maker);
                serving.push(smol::spawn(async move { serve.serve(|_, _| {}).await }));
                makers.push(maker);
            }
            println!(
                "loopback world: {} directories, {} makers, SOCKS5 proxy {}",
                onions.len(),
                makers.len(),
                world.proxy.addr()
            );
            (world.proxy.addr(), onions)
        }
    };

    let (taker, connected) = Participant::connect(proxy, &directories, network).await?;
    println!(
        "taker {}: {connected} of {} directories connected",
        taker.nick,
        directories.len()
    );
    let asked = taker.messaging.broadcast("!orderbook").await?;
    let asked = asked
        .iter()
        .filter(|outcome| outcome.result.is_ok())
        .count();
    println!("!orderbook sent through {asked} directories; collecting offers for {wait:?}");

    // Each offer once: `Messaging` delivers one copy however many
    // directories relay it.
    let mut book: BTreeSet<(Nick, Offer)> = BTreeSet::new();
    let deadline = Instant::now() + wait;
    loop {
        let next = Box::pin(taker.messaging.recv());
        let incoming = match select(next, smol::Timer::at(deadline)).await {
            Either::Left((Ok(incoming), _)) => incoming,
            Either::Left((Err(RecvError::Lagged(n)), _)) => {
                eprintln!("taker: {n} messages lost (queue full)");
                continue;
            }
            Either::Left((Err(_), _)) | Either::Right(_) => break,
        };
        let (from, commands) = match &incoming.message {
            // Verified: signed by the key the maker's nick derives from.
            Message::Private(m) => (m.sender(), m.message().commands()),
            Message::Public(m) => (m.from(), m.commands()),
            _ => continue,
        };
        for offer in commands.iter().flatten().filter_map(Offer::from_command) {
            book.insert((from.clone(), offer));
        }
    }

    let servers = taker.pool.servers();
    println!("\ndirectories:");
    for (i, server) in servers.iter().enumerate() {
        println!("  [{}] {server}", i + 1);
    }
    // Every directory a maker's messages came through is a route to it.
    let via = |maker: &Nick| -> BTreeSet<String> {
        taker
            .messaging
            .routes(maker)
            .iter()
            .map(|route| route.directory.node_id().to_owned())
            .collect()
    };
    println!("\n{:<18}{:<50}via", "maker", "offer");
    let mut relaying = BTreeSet::new();
    for (maker, offer) in &book {
        let through = via(maker);
        println!(
            "{:<18}{:<50}{}",
            maker.as_str(),
            offer.to_string(),
            directory_numbers(servers, &through)
        );
        relaying.extend(through);
    }
    let makers_seen: BTreeSet<&Nick> = book.iter().map(|(maker, _)| maker).collect();
    println!(
        "\n{} offers from {} makers, seen through {} directories",
        book.len(),
        makers_seen.len(),
        relaying.len()
    );

    taker.pool.close_all().await?;
    for maker in &makers {
        maker.participant.pool.close_all().await?;
    }
    drop(serving);
    Ok(!book.is_empty())
}
