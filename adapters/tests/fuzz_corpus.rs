//! The adapters' fuzz targets on stable: every checked-in corpus and
//! regression file of `fuzz/` replayed through the same target bodies
//! `cargo +nightly fuzz run` calls.

use dirpool::fuzzing::{handshake_reply, socks_reply};
use dirpool_core::fuzzing::replay_checked_in;

#[test]
fn socks_reply_corpus_and_regressions() {
    assert!(replay_checked_in("socks_reply", socks_reply) > 0);
}

#[test]
fn handshake_reply_corpus_and_regressions() {
    assert!(replay_checked_in("handshake_reply", handshake_reply) > 0);
}

#[test]
fn jm_lines_corpus_and_regressions() {
    assert!(replay_checked_in("jm_lines", dirpool::fuzzing::jm_lines) > 0);
}

#[test]
fn nick_auth_corpus_and_regressions() {
    assert!(replay_checked_in("nick_auth", dirpool::fuzzing::nick_auth) > 0);
}
