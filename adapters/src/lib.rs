//! # dirpool
//!
//! A pool of connections to JoinMarket directory servers (Tor onion
//! services) through a Tor SOCKS5 proxy, on smol (default) or tokio: the
//! Rust counterpart of joinmarket-ng's `DirectoryClientPool`.
//!
//! The pool's logic lives in the sans-IO [`sans_io::PoolState`] (the
//! `dirpool-core` crate); this crate runs it: one driver task, written once
//! against the small [`Runtime`] trait, does the SOCKS5 dialing (with
//! stream-isolation credentials), the user's [`Handshake`], timers, hooks
//! and events.
//!
//! `dirpool` is the only dependency a user needs: every type its API
//! names is re-exported here (the core's configuration, policies,
//! statuses, health and failure types), [`EventStream`] is read with its
//! own `next()`, and the runtime crate of each runtime feature is
//! re-exported ([`smol`] with feature `smol`, [`tokio`] with feature
//! `tokio`) for its `block_on`. The whole core is [`sans_io`], for running
//! the state machine yourself.
//!
//! ```no_run
//! use std::time::Duration;
//! use dirpool::{Config, DirectoryPool, RawStream, RetryPolicy};
//!
//! # #[cfg(not(feature = "smol"))] fn main() {}
//! # #[cfg(feature = "smol")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! dirpool::smol::block_on(async {
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
// docs.rs (nightly, `--cfg docsrs`): a badge on each item a feature gates.
// `doc_cfg` shows them by itself since `doc_auto_cfg` was folded into it.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "arti")]
pub mod arti;
pub mod config;
mod dialer;
mod driver;
pub mod error;
pub mod event;
pub mod handshake;
pub mod hooks;
#[cfg(feature = "joinmarket")]
pub mod joinmarket;
#[cfg(feature = "loopback")]
pub mod loopback;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
mod pool;
pub mod runtime;
mod socks;
#[cfg(feature = "test-kit")]
pub mod test_kit;

pub use config::{Config, DEFAULT_PROXY, MAX_TIMEOUT};
pub use error::{
    BoxError, CloseError, ConfigError, CredentialsError, DialError, HandshakeError,
    HandshakeErrorKind, PoolError,
};
pub use event::{EventStream, PoolEvent, TryNextError};
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

/// The sans-IO core (`dirpool-core`), whole: [`PoolState`](sans_io::PoolState)
/// and its inputs and outputs, for running the state machine yourself.
/// Everything the pool's own API names is also re-exported at this
/// crate's root.
pub use dirpool_core as sans_io;
/// The core's configuration error (servers, timeouts, policies), inside
/// [`ConfigError::Pool`] and [`PoolError::Config`].
pub use dirpool_core::ConfigError as PoolConfigError;
pub use dirpool_core::{
    AddrError, Backoff, CloseFailure, Command, DEFAULT_PORT, DialFailure, DisconnectReason,
    Entropy, FailureScope, HostKind, IsolationCategory, IsolationScope, IsolationToken,
    KeepalivePolicy, LastError, LinkCounts, LinkLoss, MIN_PROBE_INTERVAL, MaintenancePolicy,
    OnionError, OperationEnd, OperationId, OperationKind, OperationReport, Password, PoolConfig,
    PoolHealth, ProxyState, RecentError, RejectedEntry, Rejection, RetryPolicy, ServerAddr,
    ServerError, ServerHealth, ServerId, ServerState, ServerStatus, SocksCredentials, SocksReply,
    StreamIsolation,
};
/// The smol runtime crate the pool runs on (feature `smol`), for
/// `dirpool::smol::block_on` without a dependency of your own.
#[cfg(feature = "smol")]
pub use smol;
/// The tokio crate the pool runs on (feature `tokio`: `rt`, `net`, `time`,
/// `io-util`), for building a runtime without a dependency of your own.
#[cfg(feature = "tokio")]
pub use tokio;

/// The README's Rust examples, compiled as doctests (they use both
/// runtimes and the JoinMarket layer).
#[cfg(all(doctest, feature = "joinmarket", feature = "smol", feature = "tokio"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
