//! # dirpool
//!
//! A pool of connections to JoinMarket directory servers (Tor onion
//! services) through a Tor SOCKS5 proxy, on smol (default) or tokio: the
//! Rust counterpart of joinmarket-ng's `DirectoryClientPool`.
//!
//! The pool's logic lives in the sans-IO [`dirpool_core::PoolState`]; this
//! crate runs it: one driver task, written once against the small
//! [`Runtime`] trait, does the SOCKS5 dialing (with stream-isolation
//! credentials), the user's [`Handshake`], timers, hooks and events.
//!
//! ```no_run
//! use std::time::Duration;
//! use dirpool::{Config, DirectoryPool, RawStream};
//! use dirpool_core::RetryPolicy;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! smol::block_on(async {
//!     let config = Config::new(["duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion"]);
//!     let pool = DirectoryPool::builder(config, RawStream).spawn_smol()?;
//!     let connected = pool.connect_all_with_retry(RetryPolicy::new(Duration::from_secs(120))).await?;
//!     println!("{connected} connected");
//!     pool.start_maintenance()?;
//!     pool.close_all().await?;
//!     Ok(())
//! })
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod config;
mod dialer;
mod driver;
pub mod error;
pub mod event;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod handshake;
pub mod hooks;
pub mod joinmarket;
#[cfg(feature = "loopback")]
pub mod loopback;
mod pool;
pub mod runtime;
mod socks;

pub use config::{Config, DEFAULT_PROXY, MAX_TIMEOUT};
pub use error::{
    BoxError, CloseError, ConfigError, CredentialsError, DialError, HandshakeError,
    HandshakeErrorKind, PoolError,
};
pub use event::PoolEvent;
pub use handshake::{
    Client, Handshake, HandshakeContext, LinkSignals, LossSignal, ProbeStatus, RawConnection,
    RawStream,
};
pub use hooks::{NoHooks, PoolHooks};
pub use pool::{DirectoryPool, PoolBuilder};
#[cfg(feature = "smol")]
pub use runtime::SmolRuntime;
#[cfg(feature = "tokio")]
pub use runtime::TokioRuntime;
pub use runtime::{AsyncStream, BoxedStream, Runtime};
pub use socks::validate_credentials;

/// The README's Rust examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
