#![allow(clippy::print_stdout, clippy::print_stderr)]
//! A JoinMarket maker's messaging, without a wallet: connects to
//! directories, announces its offers, answers every `!orderbook` privately
//! with them (through every directory, as joinmarket-ng's maker does), and
//! stays up until Ctrl-C or `--for SECONDS`.
//!
//! By default it starts its own loopback world (two in-process directories
//! behind an in-process SOCKS5 proxy, no Tor) and prints the command that
//! runs the `taker` example against it:
//!
//! ```text
//! cargo run -p dirpool --features loopback --example maker
//! cargo run -p dirpool --features loopback --example maker -- --socks 127.0.0.1:9050 --network signet DIRECTORY...
//! ```

mod support;

use std::error::Error;
use std::process::ExitCode;

use dirpool::joinmarket::Network;
use futures::future::{Either, select};
use support::{CommandLine, LoopbackWorld, Maker, example_offers, parse_command_line};

const USAGE: &str = "\
Usage: cargo run -p dirpool --features loopback --example maker -- [OPTIONS] [DIRECTORY...]

Announces example offers (it has no wallet: they cannot be filled) and
answers !orderbook requests with them, until Ctrl-C.

Without --socks it starts two loopback directories and a loopback SOCKS5
proxy in-process (no Tor) and prints how to run the taker example against them.

Options:
  --socks HOST:PORT   reach DIRECTORY... (`host` or `host:port`) through this
                      SOCKS5 proxy (Tor)
  --network NAME      mainnet | testnet | signet | regtest [default: signet with
                      --socks, regtest in the loopback world]; not mainnet
                      with --socks (the offers are fake)
  --for SECONDS       stop after this long instead of at Ctrl-C
  -h, --help          show this help";

fn main() -> ExitCode {
    let line = match parse_command_line(std::env::args().skip(1), "--for") {
        Ok(line) if line.help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(line) => line,
        Err(e) => {
            eprintln!("maker: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match smol::block_on(run(line)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("maker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(line: CommandLine) -> Result<(), Box<dyn Error>> {
    let default_network = if line.socks.is_some() {
        Network::Signet
    } else {
        Network::Regtest
    };
    let network = line.network.unwrap_or(default_network);
    if network == Network::Mainnet && line.socks.is_some() {
        return Err("the example maker's offers cannot be filled: not on mainnet".into());
    }
    let world;
    let (proxy, directories) = match line.socks {
        Some(socks) => (socks, line.directories),
        None => {
            world = LoopbackWorld::start(2, network)?;
            let onions: Vec<String> = world.onions.iter().map(|o| o.to_string()).collect();
            println!("loopback world: SOCKS5 proxy {}", world.proxy.addr());
            for onion in &onions {
                println!("  directory {onion}");
            }
            println!(
                "ask it for its offers with:\n  cargo run -p dirpool --features loopback \
                 --example taker -- --socks {} --network {network} {}",
                world.proxy.addr(),
                onions.join(" ")
            );
            (world.proxy.addr(), onions)
        }
    };
    let (maker, connected) = Maker::start(proxy, &directories, network, example_offers(0)).await?;
    let nick = &maker.participant.nick;
    println!(
        "maker {nick}: {connected} of {} directories connected",
        directories.len()
    );
    if connected == 0 {
        return Err("no directory reached".into());
    }
    for offer in &maker.offers {
        println!("  offers {offer}");
    }
    let count = maker.offers.len();
    let serve = Box::pin(maker.serve(|taker, through| {
        println!("!orderbook from {taker}: {count} offers sent through {through} directories");
    }));
    match line.seconds {
        Some(seconds) => {
            if let Either::Right(_) = select(serve, smol::Timer::after(seconds)).await {
                println!("stopping after {seconds:?}");
            }
        }
        None => serve.await,
    }
    maker.participant.pool.close_all().await?;
    Ok(())
}
