//! The bodies of the core's cargo-fuzz targets.
//!
//! Each takes the raw bytes of one fuzzer input and panics when a property
//! is broken; `fuzz/fuzz_targets/*.rs` call them on nightly, and
//! `tests/fuzz_corpus.rs` replays every corpus and regression file through
//! them on stable.

use dirpool_core::ServerAddr;

use crate::model::{Choices, check_pool, check_steps};

/// The `pool_ops` target, fast: `data` decides a short run on a small
/// pool with the invariants that cost a few comparisons per output
/// ([`check_steps`]).
///
/// # Panics
/// When the run breaks an invariant.
pub fn pool_ops(data: &[u8]) {
    if let Err(failure) = check_steps(data) {
        panic!("pool_ops: {failure}");
    }
}

/// The `pool_model` target, deep: `data` decides a whole run of the model
/// checker ([`check_pool`]: a few hundred steps, every invariant of
/// ARCHITECTURE.md after each, liveness, quiescence).
///
/// # Panics
/// When the run breaks an invariant.
pub fn pool_model(data: &[u8]) {
    if let Err(failure) = check_pool(&mut Choices::from_bytes(data), false) {
        panic!("pool_model: {failure}");
    }
}

/// The `addr_parse` target: `data` (as text, invalid UTF-8 replaced) into
/// the address parser. Whatever parses must print back to text that parses
/// to the same server; an error must display. The first 32 bytes, as an
/// onion service key, must give an address that parses back too.
///
/// # Panics
/// When a property is broken.
pub fn addr_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match ServerAddr::parse(&text) {
        Ok(addr) => {
            let printed = addr.to_string();
            match ServerAddr::parse(&printed) {
                Ok(again) => assert!(
                    again == addr && again.node_id() == addr.node_id(),
                    "{text:?} parsed to {addr:?}, which printed as {printed:?}, which parsed to {again:?}"
                ),
                Err(e) => panic!(
                    "{text:?} parsed to {addr:?}, but its text {printed:?} does not parse: {e}"
                ),
            }
        }
        Err(e) => drop(e.to_string()),
    }
    if let Some(key) = data.first_chunk::<32>() {
        let port = u16::from_le_bytes([
            data.get(32).copied().unwrap_or(1),
            data.get(33).copied().unwrap_or(0),
        ])
        .max(1);
        let addr = ServerAddr::from_onion_key(key, port);
        let again = ServerAddr::parse(&addr.to_string());
        assert!(
            again.as_ref() == Ok(&addr),
            "the onion address {addr:?} of key {key:02x?} parses to {again:?}"
        );
    }
}
