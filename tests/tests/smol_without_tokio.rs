//! The smol adapter in a process where no tokio runtime exists: this test
//! binary never builds one, and every pool task checks it has no tokio
//! context. Dials, timers, timeouts, maintenance and closes all run, so any
//! use of tokio's reactor or timer would panic here.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{LineClient, LineHandshake, config, entropy, poll_until, run_on_smol, wait_for};
use dirpool::{DirectoryPool, PoolEvent, PoolHooks};
use dirpool_core::RetryPolicy;
use dirpool_tests::{LineBehaviour, LineServer, Reply, SocksConfig, SocksServer};

struct NoTokioHere(Arc<AtomicUsize>);

impl PoolHooks<LineClient> for NoTokioHere {
    async fn on_connected(&self, _node_id: &str, _client: &Arc<LineClient>) {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "a tokio runtime is running"
        );
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn the_smol_adapter_runs_without_any_tokio_runtime() {
    run_on_smol(|rt| async move {
        let dir = LineServer::start(LineBehaviour::Healthy).unwrap();
        let tor = SocksServer::start(
            SocksConfig::new()
                .with_reply("dir.example", Reply::Forward(dir.addr()))
                .with_default_reply(Reply::Stall),
        )
        .unwrap();
        let hooks = Arc::new(AtomicUsize::new(0));
        let mut cfg = config(&[common::dns("dir"), common::dns("stalled")], tor.addr());
        cfg.pool.connection_timeout = Duration::from_millis(500);
        let pool = DirectoryPool::builder(cfg, LineHandshake)
            .entropy(entropy())
            .hooks(NoTokioHere(Arc::clone(&hooks)))
            .spawn(Arc::clone(&rt))
            .unwrap();
        let mut events = pool.events();
        assert_eq!(
            pool.connect_all_with_retry(RetryPolicy::new(Duration::from_secs(5)))
                .await
                .unwrap(),
            1
        );
        pool.start_maintenance().unwrap();
        // The stalled dial times out on smol's timer and is retried.
        assert!(
            wait_for(&rt, &mut events, Duration::from_secs(5), |e| matches!(
                e,
                PoolEvent::DialFailed { .. }
            ))
            .await,
            "timeout on the smol timer"
        );
        dir.drop_all();
        assert!(
            wait_for(&rt, &mut events, Duration::from_secs(5), |e| matches!(
                e,
                PoolEvent::Disconnected { .. }
            ))
            .await,
            "loss"
        );
        assert!(
            poll_until(&rt, Duration::from_secs(5), || hooks.load(Ordering::SeqCst)
                == 2)
            .await,
            "redialed"
        );
        pool.close_all().await.unwrap();
        assert!(tokio::runtime::Handle::try_current().is_err());
    });
}
