//! `addr_parse`: the body is `dirpool_core_kit::fuzz::addr_parse`, which the stable
//! tests also run on every corpus and regression file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dirpool_core_kit::fuzz::addr_parse(data));
