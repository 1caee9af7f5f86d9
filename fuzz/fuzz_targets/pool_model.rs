//! `pool_model`: the body is `dirpool_core_kit::fuzz::pool_model` (the deep
//! model checker: a few hundred steps per input), which the stable tests
//! also run on every corpus and regression file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dirpool_core_kit::fuzz::pool_model(data));
