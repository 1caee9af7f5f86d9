//! `jm_lines`: the body is `dirpool::fuzzing::jm_lines`, which the stable tests
//! also run on every corpus and regression file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dirpool::fuzzing::jm_lines(data));
