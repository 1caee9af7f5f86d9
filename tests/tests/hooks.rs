//! Hooks that never return, under churn, on real loopback sockets: each is
//! dropped at the hook timeout and reported, later hooks still run, and no
//! queued or hung hook keeps a link's socket open (issue 14, defect 5: open
//! fds went 60 → 363 and stayed there).
//!
//! Its own test binary: it counts the directory's open connections and the
//! process's file descriptors, which other tests running beside it would
//! disturb.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    LineHandshake, config, dns, entropy, eventually, next_matching, on_both_runtimes, poll_until,
};
use dirpool::{DirectoryPool, PoolEvent, PoolHooks};
use dirpool_core::{Backoff, DisconnectReason};
use dirpool_tests::{LineBehaviour, LineServer, Reply, SocksConfig, SocksServer};

const SHORT: Duration = Duration::from_secs(10);

/// Hooks that never return.
struct HungHooks {
    started: Arc<AtomicUsize>,
}

impl<C: Send + Sync + 'static> PoolHooks<C> for HungHooks {
    fn on_connected(&self, _node_id: &str, _client: &Arc<C>) -> impl Future<Output = ()> + Send {
        self.started.fetch_add(1, Ordering::SeqCst);
        futures::future::pending()
    }

    fn on_disconnected(
        &self,
        _node_id: &str,
        _reason: DisconnectReason,
    ) -> impl Future<Output = ()> + Send {
        self.started.fetch_add(1, Ordering::SeqCst);
        futures::future::pending()
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

#[test]
fn hung_hooks_under_churn_are_dropped_and_hold_no_socket() {
    on_both_runtimes(|rt| async move {
        let before = open_fds();
        // Every link is dropped by the directory 20 ms after its greeting.
        let dir = LineServer::start(LineBehaviour::DropAfter(Duration::from_millis(20))).unwrap();
        let tor = SocksServer::start(
            SocksConfig::new().with_reply("churn.example", Reply::Forward(dir.addr())),
        )
        .unwrap();
        let mut config = config(&[dns("churn")], tor.addr());
        config.hook_timeout = Duration::from_millis(50);
        config.pool.maintenance.backoff =
            Backoff::new(Duration::from_millis(5), Duration::from_millis(10), 2.0);
        let started = Arc::new(AtomicUsize::new(0));
        let pool = DirectoryPool::builder(config, LineHandshake)
            .entropy(entropy())
            .hooks(HungHooks {
                started: Arc::clone(&started),
            })
            .spawn(Arc::clone(&rt))
            .unwrap();
        let mut events = pool.events();
        pool.start_maintenance().unwrap();

        // Links come and go much faster than hooks time out.
        let (mut connected, mut timed_out) = (0, 0);
        while connected < 30 || timed_out < 3 {
            let event = next_matching(&rt, &mut events, SHORT, |e| match e {
                PoolEvent::Connected { .. } => Some(true),
                PoolEvent::HookTimedOut { .. } => Some(false),
                _ => None,
            })
            .await
            .expect("churn goes on and hooks time out");
            if event {
                connected += 1;
            } else {
                timed_out += 1;
            }
        }
        assert!(started.load(Ordering::SeqCst) >= 3, "hooks were started");

        // Hung hooks and the hooks queued behind them hold no link: every
        // connection the directory saw closes with the pool's close_all.
        pool.close_all().await.unwrap();
        assert!(
            eventually(&rt, SHORT, || dir.open_connections() == 0).await,
            "{} directory connections still open after close_all",
            dir.open_connections()
        );
        drop(pool);
        drop(tor);
        drop(dir);
        // And the process's descriptors come back to where they were (give
        // or take the runtime's own).
        assert!(
            poll_until(&rt, SHORT, || open_fds() <= before + 8).await,
            "{} fds open, {before} before",
            open_fds()
        );
    });
}
