//! The tokio adapter takes its time from tokio's clock, so a user's test
//! with paused time drives the pool's timers: a 120 s retry deadline passes
//! without waiting 120 s.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, line_pool};
use dirpool::Runtime;
use dirpool_core::RetryPolicy;
use dirpool_tests::{Reply, SocksConfig, SocksServer};

#[test]
fn paused_tokio_time_drives_the_pool() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let tor = SocksServer::start(SocksConfig::new().with_default_reply(Reply::Stall)).unwrap();
        let rt: Arc<dyn Runtime> = Arc::new(dirpool::TokioRuntime::current());
        let mut cfg = config(&[common::dns("stalled")], tor.addr());
        cfg.pool.connection_timeout = Duration::from_secs(60);
        let pool = line_pool(cfg, &rt);
        let virtual_start = tokio::time::Instant::now();
        let wall_start = std::time::Instant::now();
        assert_eq!(
            pool.connect_all_with_retry(RetryPolicy::new(Duration::from_secs(120)))
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            virtual_start.elapsed(),
            Duration::from_secs(120),
            "returned exactly at the deadline, on tokio's clock"
        );
        assert!(
            wall_start.elapsed() < Duration::from_secs(60),
            "the deadline was not waited for in real time"
        );
        pool.close_all().await.unwrap();
    });
}
