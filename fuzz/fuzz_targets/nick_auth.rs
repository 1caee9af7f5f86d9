//! `nick_auth`: the body is `dirpool::fuzzing::nick_auth`, which the stable
//! tests also run on every corpus and regression file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dirpool::fuzzing::nick_auth(data));
