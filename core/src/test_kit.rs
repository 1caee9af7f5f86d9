//! What dirpool's own test kit (the unpublished `dirpool-core-kit` crate
//! under `tests/`) needs from inside the pool (feature `test-kit`).
//!
//! **Not covered by semver**: this module and the queries the feature adds
//! to [`PoolState`](crate::PoolState) (`list_disconnected`,
//! `maintenance_running`, `proxy_reachable`, `pending_attempts`,
//! `live_clients`, `maintenance_policy`) exist for dirpool's model checker,
//! fuzz targets and tests. They may change or go in any release; a user of
//! the pool does not need them.
//!
//! The only thing here is a recorder of the changes of server state, which
//! the model checker holds against [`crate::diagram::EDGES`].

use std::cell::RefCell;
use std::collections::BTreeSet;

use crate::status::ServerState;

thread_local! {
    /// `None` unless a [`TransitionWatch`] is alive on this thread: nothing
    /// is kept otherwise, so the recorder costs a pool outside the checker
    /// nothing but a check.
    static SEEN: RefCell<Option<BTreeSet<(ServerState, ServerState)>>> =
        const { RefCell::new(None) };
}

/// Called by the pool on every change of a server's state.
pub(crate) fn record(from: ServerState, to: ServerState) {
    if from == to {
        return;
    }
    SEEN.with(|seen| {
        if let Some(seen) = seen.borrow_mut().as_mut() {
            seen.insert((from, to));
        }
    });
}

/// Records the distinct changes of server state that pools on this thread
/// make while it lives.
#[derive(Debug)]
pub struct TransitionWatch(());

impl TransitionWatch {
    /// Starts recording (forgetting anything recorded before).
    pub fn start() -> Self {
        SEEN.with(|seen| *seen.borrow_mut() = Some(BTreeSet::new()));
        TransitionWatch(())
    }

    /// The distinct changes seen so far.
    pub fn seen(&self) -> BTreeSet<(ServerState, ServerState)> {
        SEEN.with(|seen| seen.borrow().clone().unwrap_or_default())
    }
}

impl Drop for TransitionWatch {
    fn drop(&mut self) {
        SEEN.with(|seen| *seen.borrow_mut() = None);
    }
}
