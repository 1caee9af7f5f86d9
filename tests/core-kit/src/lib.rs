//! dirpool-core's test kit (not published): the model checker, the core's
//! fuzz target bodies and the replay of the checked-in fuzz corpora.
//!
//! It depends on `dirpool-core` only (with its `test-kit` feature, the
//! small surface the checker needs from inside the pool), so that a
//! mutation test of the core rebuilds this light crate and nothing else:
//! `cargo mutants -p dirpool-core --test-package dirpool-core
//! --test-package dirpool-core-kit`.
//!
//! * [`model`]: the model checker: [`check_pool`] plays a driver against a
//!   `PoolState`, every decision drawn from [`Choices`] (a fuzzer's bytes
//!   or a seed), and checks the invariants of `ARCHITECTURE.md` after
//!   every step. Its commands come from [`command_from`], the one chooser
//!   the adapters' simulation (`dirpool-tests`) draws its commands with too.
//! * [`fuzz`]: the bodies of the core's cargo-fuzz targets (`addr_parse`,
//!   `pool_ops`, `pool_model`); `fuzz/fuzz_targets/*.rs` call them.
//! * [`corpus`]: the checked-in corpus and regression files of `fuzz/`,
//!   replayed on stable by this crate's tests and by the adapters' kit.
#![forbid(unsafe_code)]

pub mod corpus;
pub mod fuzz;
pub mod model;

pub use corpus::{checked_in_inputs, replay_checked_in};
pub use model::{
    Choices, QuickCounts, RunFailure, RunReport, Step, check_pool, check_steps, command_from,
};
