//! The `maker` and `taker` examples of `dirpool`, run as the README runs
//! them: without Tor, in their own loopback world, and against a loopback
//! world of this test's (`dirpool::loopback`) through `--socks`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use dirpool::joinmarket::{Network, Nick, parse_commands};
use dirpool::loopback::{LoopbackDirectory, LoopbackProxy};

/// One row of the taker's table: maker, offer, directories the maker was
/// seen through.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    /// A valid nick.
    maker: String,
    offer: String,
    via: BTreeSet<usize>,
}

/// The rows of the taker's table (after its `maker offer via`
/// header), each checked for shape: a nick, one offer command with five
/// arguments, directory numbers.
fn table(stdout: &str) -> Vec<Row> {
    let header = stdout
        .lines()
        .position(|l| l.starts_with("maker") && l.ends_with("via"))
        .unwrap_or_else(|| panic!("no table in\n{stdout}"));
    stdout
        .lines()
        .skip(header + 1)
        .take_while(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [maker, offer @ .., via] = fields.as_slice() else {
                panic!("row {line:?}");
            };
            let offer = offer.join(" ");
            let commands = parse_commands(&offer).unwrap();
            assert_eq!(commands.len(), 1, "{line}");
            assert!(commands[0].name().starts_with("sw0"), "{line}");
            assert_eq!(commands[0].args().len(), 5, "{line}");
            Row {
                maker: Nick::parse(maker).unwrap().to_string(),
                offer,
                via: via.split(',').map(|n| n.parse().unwrap()).collect(),
            }
        })
        .collect()
}

fn assert_success(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_taker_example_lists_each_offer_once_with_the_directories_its_maker_is_seen_through() {
    let output = Command::new(env!("CARGO_BIN_EXE_taker")).output().unwrap();
    let stdout = assert_success(&output);
    assert!(stdout.contains("3 of 3 directories connected"), "{stdout}");
    let rows = table(&stdout);
    assert!(!rows.is_empty(), "{stdout}");
    let offers: BTreeSet<(&str, &str)> = rows.iter().map(|r| (&*r.maker, &*r.offer)).collect();
    assert_eq!(offers.len(), rows.len(), "each offer once:\n{stdout}");
    let makers: BTreeSet<&str> = rows.iter().map(|r| &*r.maker).collect();
    assert!(makers.len() >= 2, "offers from several makers:\n{stdout}");
    let directories: BTreeSet<usize> = rows.iter().flat_map(|r| r.via.clone()).collect();
    assert!(
        directories.len() >= 2,
        "offers through several directories:\n{stdout}"
    );
    assert!(directories.iter().all(|d| (1..=3).contains(d)), "{stdout}");
    assert!(
        rows.iter().any(|r| r.via.len() >= 2),
        "a maker seen through more than one directory has its offers listed once:\n{stdout}"
    );
}

#[test]
fn the_maker_example_answers_a_taker_through_every_directory_until_stopped() {
    let directories = [
        LoopbackDirectory::start(Network::Regtest).unwrap(),
        LoopbackDirectory::start(Network::Regtest).unwrap(),
    ];
    let proxy = LoopbackProxy::start().unwrap();
    let onions: Vec<String> = directories
        .iter()
        .map(|d| proxy.route_directory(d).unwrap().to_string())
        .collect();
    let socks = proxy.addr().to_string();
    let world = ["--socks", &socks, "--network", "regtest"];

    let mut maker = Command::new(env!("CARGO_BIN_EXE_maker"))
        .args(world)
        .args(["--for", "120"])
        .args(&onions)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut maker_out = BufReader::new(maker.stdout.take().unwrap()).lines();
    let connected = maker_out.next().unwrap().unwrap();
    assert!(
        connected.contains("2 of 2 directories connected"),
        "{connected}"
    );
    let nick = Nick::parse(
        connected
            .split_whitespace()
            .nth(1)
            .unwrap()
            .trim_end_matches(':'),
    )
    .unwrap();
    let announced: Vec<String> = maker_out
        .by_ref()
        .take(2)
        .map(|line| {
            line.unwrap()
                .trim()
                .trim_start_matches("offers ")
                .to_owned()
        })
        .collect();

    let taker = Command::new(env!("CARGO_BIN_EXE_taker"))
        .args(world)
        .args(&onions)
        .output()
        .unwrap();
    let stdout = assert_success(&taker);
    let mut rows = table(&stdout);
    rows.sort();
    let expected: Vec<Row> = {
        let mut rows: Vec<Row> = announced
            .iter()
            .map(|offer| Row {
                maker: nick.to_string(),
                offer: offer.clone(),
                via: BTreeSet::from([1, 2]),
            })
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(rows, expected, "{stdout}");

    let answered = maker_out.next().unwrap().unwrap();
    assert!(answered.starts_with("!orderbook from J5"), "{answered}");
    assert!(answered.ends_with("through 2 directories"), "{answered}");
    assert!(maker.try_wait().unwrap().is_none(), "the maker stays up");
    maker.kill().unwrap();
    maker.wait().unwrap();
}
