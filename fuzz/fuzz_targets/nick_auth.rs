//! `nick_auth`: the body is `dirpool_adapters_kit::nick_auth`, which the stable
//! tests also run on every corpus and regression file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dirpool_adapters_kit::nick_auth(data));
