//! The event stream's memory is bounded: a subscriber that does not read
//! gets at most its buffer, then one `Lagged` saying how many it missed.
//! (On the simulated runtime, so thousands of events take no real time.)

use std::time::{Duration, Instant};

use dirpool::{Config, DirectoryPool, PoolEvent, RawStream};
use dirpool_core::{Backoff, Entropy, IsolationToken};
use dirpool_tests::sim::runtime::SimRuntime;
use futures::FutureExt;

#[test]
fn an_unread_event_stream_stays_bounded_and_says_what_it_missed() {
    let sim = SimRuntime::new(Instant::now());
    let mut config = Config::new(["127.0.0.1:5222"]);
    // Nothing listens there: every probe fails at once.
    config.proxy = "127.0.0.1:9".parse().unwrap();
    config.pool.maintenance.backoff =
        Backoff::new(Duration::from_millis(1), Duration::from_millis(1), 1.0);
    let entropy = Entropy {
        isolation_token: IsolationToken::from_bytes([1; 16]),
        jitter_seed: 1,
    };
    let pool = DirectoryPool::builder(config, RawStream)
        .entropy(entropy)
        .spawn(sim.clone())
        .unwrap();
    let mut events = pool.events();
    pool.start_maintenance().unwrap();
    sim.run_for(Duration::from_secs(5));

    let mut buffered = 0;
    while let Some(Some(event)) = events.next().now_or_never() {
        assert!(
            !matches!(event, PoolEvent::Lagged { .. }),
            "no Lagged before the buffer is read"
        );
        buffered += 1;
    }
    assert!(
        (1_000..=1_100).contains(&buffered),
        "{buffered} events buffered"
    );

    // Room again: the next delivery starts by saying how many were missed.
    sim.run_for(Duration::from_millis(10));
    match events.next().now_or_never() {
        Some(Some(PoolEvent::Lagged { missed })) => assert!(missed > 3_000, "missed {missed}"),
        other => panic!("expected Lagged, got {other:?}"),
    }
    assert!(matches!(
        events.next().now_or_never(),
        Some(Some(PoolEvent::DialFailed { .. }))
    ));
    drop(pool);
    sim.run_for(Duration::from_secs(1));
}
