//! dirpool's adapters' test kit (not published): the bodies of the fuzz
//! targets for the bytes a proxy or a directory sends the pool
//! (`socks_reply`, `handshake_reply`, `jm_lines`, `nick_auth`), and
//! [`ScriptRuntime`](fuzz::ScriptRuntime), the scripted runtime they run
//! on.
//!
//! Light on purpose: `dirpool` without a runtime (its `test-kit` feature,
//! the small surface these bodies need from inside it), `dirpool-core-kit`
//! for the corpus replay, and the I/O traits. So the fuzz build and a
//! mutation test of the adapters rebuild little.
#![forbid(unsafe_code)]

pub mod fuzz;

pub use fuzz::{handshake_reply, jm_lines, nick_auth, socks_reply};
