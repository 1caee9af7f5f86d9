//! Changes of server state, recorded while the model checker watches, to be
//! held against [`crate::diagram::EDGES`].

use std::cell::RefCell;
use std::collections::BTreeSet;

use crate::status::ServerState;

thread_local! {
    /// `None` unless a [`Watch`] is alive on this thread: nothing is kept
    /// otherwise, so the recorder costs a pool outside the checker nothing
    /// but a check.
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

/// Records the distinct changes of state on this thread while it lives.
#[derive(Debug)]
pub struct Watch(());

impl Watch {
    /// Starts recording (forgetting anything recorded before).
    pub fn start() -> Self {
        SEEN.with(|seen| *seen.borrow_mut() = Some(BTreeSet::new()));
        Watch(())
    }

    /// The distinct changes seen so far.
    pub fn seen(&self) -> BTreeSet<(ServerState, ServerState)> {
        SEEN.with(|seen| seen.borrow().clone().unwrap_or_default())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        SEEN.with(|seen| *seen.borrow_mut() = None);
    }
}
