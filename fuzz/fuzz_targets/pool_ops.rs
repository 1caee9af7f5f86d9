//! `pool_ops`: the body is `dirpool_core::fuzzing::pool_ops`, which the stable
//! tests also run on every corpus and regression file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dirpool_core::fuzzing::pool_ops(data));
