//! The core's fuzz targets on stable: every checked-in corpus and
//! regression file of `fuzz/` replayed through the same target bodies
//! `cargo +nightly fuzz run` calls, and the quick check on seeded bytes.

use dirpool_core::JitterRng;
use dirpool_core_kit::fuzz::{addr_parse, pool_model, pool_ops};
use dirpool_core_kit::{QuickCounts, check_steps, replay_checked_in};

#[test]
fn addr_parse_corpus_and_regressions() {
    assert!(replay_checked_in("addr_parse", addr_parse) > 0);
}

#[test]
fn pool_ops_corpus_and_regressions() {
    assert!(replay_checked_in("pool_ops", pool_ops) > 0);
}

#[test]
fn pool_model_corpus_and_regressions() {
    assert!(replay_checked_in("pool_model", pool_model) > 0);
}

/// The fast target's body on 5,000 seeded inputs of 0 to 400 bytes, which
/// between them reach every kind of event it checks.
#[test]
fn pool_ops_on_seeded_bytes() {
    let mut rng = JitterRng::new(17);
    let mut total = QuickCounts::default();
    for seed in 0..5_000u64 {
        let len = usize::try_from(rng.next_u64() % 401).unwrap_or(0);
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64().to_le_bytes()[0]).collect();
        let counts = check_steps(&data).unwrap_or_else(|failure| {
            panic!("input {seed} ({data:02x?}): {failure}");
        });
        total.steps += counts.steps;
        total.connected += counts.connected;
        total.stray_closes += counts.stray_closes;
        total.lost += counts.lost;
        total.probes += counts.probes;
        total.aborts += counts.aborts;
        total.refused += counts.refused;
    }
    let QuickCounts {
        steps,
        connected,
        stray_closes,
        lost,
        probes,
        aborts,
        refused,
    } = total;
    assert!(
        [
            steps,
            connected,
            stray_closes,
            lost,
            probes,
            aborts,
            refused
        ]
        .iter()
        .all(|&n| n >= 20),
        "the quick runs reach too little: {total:?}"
    );
}
