//! Deterministic simulation of the pool: a virtual clock, a single-threaded
//! executor and an in-memory network ([`runtime::SimRuntime`]), on which
//! the unchanged driver runs.

pub mod liveness;
pub mod peers;
pub mod runtime;
pub mod world;

/// Which seeded world failed, and so how to replay it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// [`world`]: commands, dials and directories up and down.
    Simulation,
    /// [`liveness`]: long-lived links against modelled directories.
    Liveness,
}

/// What one run did, line by line (virtual time, then the event).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Trace(pub Vec<String>);

impl Trace {
    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let start = self.0.len().saturating_sub(n);
        self.0[start..].join("\n")
    }
}

/// A broken invariant, with the trace that led to it.
#[derive(Debug)]
pub struct Failure {
    /// The world that broke it.
    pub kind: Kind,
    /// The seed that replays it.
    pub seed: u64,
    /// What broke.
    pub message: String,
    /// How we got there.
    pub trace: Trace,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, variable, filter) = match self.kind {
            Kind::Simulation => ("simulation", "DIRPOOL_SIM_SEED", ""),
            Kind::Liveness => ("liveness", "DIRPOOL_LIVENESS_SEED", " liveness"),
        };
        write!(
            f,
            "{name} seed {} failed: {}\nreplay: {variable}={} cargo test -p dirpool-tests --test simulation{filter}\nlast events:\n{}",
            self.seed,
            self.message,
            self.seed,
            self.trace.tail(40)
        )
    }
}
