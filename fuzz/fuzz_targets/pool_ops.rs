//! `pool_ops`: the body is `dirpool_core_kit::fuzz::pool_ops` (a short run
//! with cheap invariants after every step; the deep check is `pool_model`),
//! which the stable tests also run on every corpus and regression file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dirpool_core_kit::fuzz::pool_ops(data));
