//! # dirpool-core
//!
//! The sans-IO core of `dirpool`: a pool of connections to JoinMarket
//! directory servers (Tor onion services) reached through a Tor SOCKS5
//! proxy, written as a pure state machine. It is the Rust counterpart of
//! joinmarket-ng's `DirectoryClientPool`.
//!
//! [`PoolState`] takes [`Command`]s (connect all in parallel, connect all
//! with retry, reconnect the disconnected, close all, maintenance on/off),
//! [`Input`]s (dial finished with its failure class, link lost with its
//! reason, sign of life, probe answered or unsupported, close finished) and
//! time (`handle_timeout`), every one with `now`. It
//! answers with [`Output`]s — dial this server with these SOCKS credentials
//! and this timeout, abort that attempt, close that connection, tell the
//! user this — and with [`PoolState::poll_timeout`], the next instant it
//! wants to be woken. It reads no clock, draws no randomness (the isolation
//! token and the jitter seed are handed in as [`Entropy`]) and does no I/O,
//! so a run is a pure function of its inputs and tests can drive it step by
//! step.
//!
//! The `dirpool` crate runs it against real sockets on tokio or smol.
#![forbid(unsafe_code)]
// docs.rs (nightly, `--cfg docsrs`): a badge on each item a feature gates.
// `doc_cfg` shows them by itself since `doc_auto_cfg` was folded into it.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod addr;
pub mod backoff;
pub mod command;
pub mod config;
pub mod diagram;
mod errors;
pub mod failure;
pub mod isolation;
mod onion;
pub mod output;
pub mod pool;
pub mod status;
#[cfg(feature = "test-kit")]
pub mod test_kit;

pub use addr::{AddrError, DEFAULT_PORT, HostKind, OnionError, ServerAddr};
pub use backoff::{Backoff, JitterRng};
pub use command::{Command, Input, ProxyReport};
pub use config::{
    ConfigError, Entropy, KeepalivePolicy, MIN_PROBE_INTERVAL, MaintenancePolicy, PoolConfig,
    RetryPolicy,
};
pub use errors::{RejectedEntry, Rejection};
pub use failure::{CloseFailure, DialDetail, DialFailure, FailureScope, LinkLoss, SocksReply};
pub use isolation::{
    IsolationCategory, IsolationScope, IsolationToken, Password, SocksCredentials, StreamIsolation,
};
pub use output::{
    AttemptId, CloseRequest, DialRequest, DisconnectReason, Notification, OperationEnd,
    OperationId, OperationKind, OperationReport, Output, ProbeRequest, ServerId,
};
pub use pool::{InputError, PoolState};
pub use status::{
    LastError, LinkCounts, PoolHealth, ProxyState, RecentError, ServerError, ServerHealth,
    ServerState, ServerStatus,
};
