//! Connected / disconnected hooks: the Rust form of the original's
//! overridable `_on_directory_connected` / `_on_directory_disconnected`.
//!
//! Hooks run one after another on their own task, in the order the events
//! happened (so a server's connected and disconnected hooks alternate), and
//! never inside the driver: a slow hook delays later hooks, never a dial.
//!
//! Each hook runs under [`Config::hook_timeout`](crate::Config::hook_timeout):
//! one that overruns is dropped, with everything it holds, and reported as
//! [`PoolEvent::HookTimedOut`](crate::PoolEvent::HookTimedOut); a panicking
//! one is reported as [`PoolEvent::Panicked`](crate::PoolEvent::Panicked).
//! Waiting hooks hold no client: if a link is gone by the time its
//! connected hook's turn comes, that hook and its disconnected hook are
//! skipped, so hooks never keep a closed link's socket open.

use std::future::Future;
use std::sync::Arc;

use dirpool_core::DisconnectReason;

/// Hooks called as servers connect and disconnect. Both have empty
/// defaults; implement the ones you need.
pub trait PoolHooks<C>: Send + Sync + 'static {
    /// A server connected; `client` is registered in the pool.
    fn on_connected(&self, _node_id: &str, _client: &Arc<C>) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// A registered server's connection ended (lost, or closed by the pool).
    fn on_disconnected(
        &self,
        _node_id: &str,
        _reason: DisconnectReason,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// No hooks.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl<C: Send + Sync + 'static> PoolHooks<C> for NoHooks {}
