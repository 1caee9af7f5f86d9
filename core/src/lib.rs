//! Sans-IO core of `dirpool`.
#![forbid(unsafe_code)]

pub mod addr;
pub mod isolation;
mod onion;

pub use addr::{AddrError, DEFAULT_PORT, HostKind, OnionError, ServerAddr};
pub use isolation::{IsolationCategory, IsolationScope, IsolationToken, Password, SocksCredentials, StreamIsolation};
