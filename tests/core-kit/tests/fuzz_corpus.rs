//! The core's fuzz targets on stable: every checked-in corpus and
//! regression file of `fuzz/` replayed through the same target bodies
//! `cargo +nightly fuzz run` calls.

use dirpool_core_kit::fuzz::{addr_parse, pool_ops};
use dirpool_core_kit::replay_checked_in;

#[test]
fn addr_parse_corpus_and_regressions() {
    assert!(replay_checked_in("addr_parse", addr_parse) > 0);
}

#[test]
fn pool_ops_corpus_and_regressions() {
    assert!(replay_checked_in("pool_ops", pool_ops) > 0);
}
