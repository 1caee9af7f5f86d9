//! The state diagram in ARCHITECTURE.md is `dirpool_core::diagram::EDGES`,
//! and the seeded model checker, which fails a run on any change of state
//! that is not an edge, walks every edge of it.

use std::collections::BTreeSet;

use dirpool_core::ServerState;
use dirpool_core::diagram::EDGES;
use dirpool_core_kit::{Choices, check_pool};

fn state(name: &str) -> ServerState {
    match name {
        "Idle" => ServerState::Idle,
        "GaveUp" => ServerState::GaveUp,
        "WaitingRetry" => ServerState::WaitingRetry,
        "WaitingForProxy" => ServerState::WaitingForProxy,
        "Dialing" => ServerState::Dialing,
        "Connected" => ServerState::Connected,
        "Closing" => ServerState::Closing,
        other => panic!("ARCHITECTURE.md names an unknown state {other:?}"),
    }
}

/// The edges drawn between the `state-diagram` markers of ARCHITECTURE.md,
/// one `From -> To : cause` line each.
fn drawn() -> Vec<(ServerState, ServerState, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ARCHITECTURE.md");
    let text = std::fs::read_to_string(path).expect("ARCHITECTURE.md");
    let start = text
        .find("<!-- state-diagram -->")
        .expect("ARCHITECTURE.md has a state-diagram block");
    let end = text[start..]
        .find("<!-- /state-diagram -->")
        .expect("the block ends")
        + start;
    text[start..end]
        .lines()
        .filter_map(|line| {
            let (edge, on) = line.split_once(" : ")?;
            let (from, to) = edge.split_once("->")?;
            Some((state(from.trim()), state(to.trim()), on.trim().to_owned()))
        })
        .collect()
}

#[test]
fn the_document_draws_exactly_the_table() {
    let drawn = drawn();
    let table: Vec<(ServerState, ServerState, String)> = EDGES
        .iter()
        .map(|e| (e.from, e.to, e.on.to_owned()))
        .collect();
    assert_eq!(drawn, table, "ARCHITECTURE.md and diagram::EDGES differ");
}

#[test]
fn the_model_checker_walks_every_edge_and_no_other() {
    let mut seen = BTreeSet::new();
    for seed in 0..300 {
        let report = check_pool(&mut Choices::from_seed(seed), false)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        seen.extend(report.transitions);
    }
    let missing: Vec<_> = EDGES
        .iter()
        .filter(|e| !seen.contains(&(e.from, e.to)))
        .collect();
    assert!(missing.is_empty(), "edges never walked: {missing:#?}");
}
