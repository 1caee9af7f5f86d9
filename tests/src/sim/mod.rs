//! Deterministic simulation of the pool: a virtual clock, a single-threaded
//! executor and an in-memory network ([`runtime::SimRuntime`]), on which
//! the unchanged driver runs.

pub mod liveness;
pub mod peers;
pub mod runtime;
pub mod world;
