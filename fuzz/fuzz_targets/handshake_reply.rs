//! `handshake_reply`: the body is `dirpool::fuzzing::handshake_reply`, which the stable tests
//! also run on every corpus and regression file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dirpool::fuzzing::handshake_reply(data));
