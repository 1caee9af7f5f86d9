//! The adapters' fuzz targets on stable: every checked-in corpus and
//! regression file of `fuzz/` replayed through the same target bodies
//! `cargo +nightly fuzz run` calls.

use dirpool_adapters_kit::{handshake_reply, jm_lines, nick_auth, socks_reply};
use dirpool_core_kit::replay_checked_in;

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
    assert!(replay_checked_in("jm_lines", jm_lines) > 0);
}

#[test]
fn nick_auth_corpus_and_regressions() {
    assert!(replay_checked_in("nick_auth", nick_auth) > 0);
}
