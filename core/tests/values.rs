//! The core's value types through their public API: edges the machine
//! tests do not reach (each test here was written for a mutant that
//! survived `scripts/mutants`).

use dirpool_core::{DEFAULT_PORT, ServerAddr};

#[test]
fn an_onion_key_keeps_its_port_and_only_port_0_means_the_default() {
    let key = [7; 32];
    for port in [1, 80, 443, DEFAULT_PORT, 65535] {
        assert_eq!(ServerAddr::from_onion_key(&key, port).port(), port);
    }
    let default = ServerAddr::from_onion_key(&key, 0);
    assert_eq!(default.port(), DEFAULT_PORT);
    assert!(default.is_onion());
}

#[test]
fn a_policy_may_last_one_year_and_not_a_second_more() {
    use dirpool_core::{Backoff, ConfigError};
    use std::time::Duration;
    // The documented bound of every policy duration (MAX_POLICY_DURATION).
    let year = Duration::from_secs(365 * 24 * 3600);
    let start = Duration::from_secs(5);
    assert_eq!(Backoff::new(start, year, 1.5).validate("b"), Ok(()));
    assert!(matches!(
        Backoff::new(start, year + Duration::from_secs(1), 1.5).validate("b"),
        Err(ConfigError::DurationTooLong { field: "b" })
    ));
}

#[test]
fn the_jitter_source_is_splitmix64() {
    use dirpool_core::JitterRng;
    // The reference generator's published outputs (Vigna's splitmix64.c:
    // seed 1234567 gives 6457827717110365317, 3203168211198807973, ...).
    let mut rng = JitterRng::new(1_234_567);
    let got: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
    assert_eq!(
        got,
        [
            6_457_827_717_110_365_317,
            3_203_168_211_198_807_973,
            9_817_491_932_198_370_423
        ]
    );
    let mut rng = JitterRng::new(0);
    assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
    assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
}

#[test]
fn a_saturated_delay_is_max_to_the_nanosecond() {
    use dirpool_core::Backoff;
    use std::time::Duration;
    // 10^7 s and 1 ns: more digits than an f64 of seconds keeps, so a delay
    // that went through f64 would lose the nanosecond.
    let max = Duration::new(10_000_000, 1);
    let flat = Backoff::new(max, max, 1.0);
    assert_eq!(flat.base_delay(0), max);
    assert_eq!(flat.base_delay(5), max);
    let growing = Backoff::new(Duration::from_secs(1), max, 2.0);
    assert_eq!(growing.base_delay(40), max);
    assert_eq!(growing.bounds(40).1, max);
}

#[test]
fn every_policy_duration_may_be_one_year_and_not_a_second_more() {
    use dirpool_core::{ConfigError, KeepalivePolicy, MaintenancePolicy, PoolConfig, RetryPolicy};
    use std::time::Duration;
    let year = Duration::from_secs(365 * 24 * 3600);
    let over = year + Duration::from_secs(1);
    let too_long = |result: Result<(), ConfigError>, name: &str| {
        assert!(
            matches!(result, Err(ConfigError::DurationTooLong { field }) if field == name),
            "{name}: {result:?}"
        );
    };

    assert_eq!(RetryPolicy::new(year).validate(), Ok(()));
    too_long(RetryPolicy::new(over).validate(), "retry.timeout");

    let mut maintenance = MaintenancePolicy::default();
    maintenance.stable_after = year;
    assert_eq!(maintenance.validate(), Ok(()));
    maintenance.stable_after = over;
    too_long(maintenance.validate(), "maintenance.stable_after");

    let mut config = PoolConfig::new(["a.example"]);
    config.connection_timeout = year;
    config.close_timeout = year;
    config.keepalive = KeepalivePolicy::new(year, year);
    assert_eq!(config.validate(), Ok(()));
    config.close_timeout = over;
    too_long(config.validate(), "close_timeout");
}

#[test]
fn the_loss_bound_is_idle_plus_probe_timeout() {
    use dirpool_core::KeepalivePolicy;
    use std::time::Duration;
    let policy = KeepalivePolicy::new(Duration::from_secs(20), Duration::from_secs(7));
    assert_eq!(policy.loss_bound(), Duration::from_secs(27));
    let huge = KeepalivePolicy::new(Duration::MAX, Duration::from_secs(1));
    assert_eq!(huge.loss_bound(), Duration::MAX, "saturates");
}

#[test]
fn is_edge_holds_for_the_diagram_s_edges_only() {
    use dirpool_core::ServerState::{
        Closing, Connected, Dialing, GaveUp, Idle, WaitingForProxy, WaitingRetry,
    };
    use dirpool_core::diagram::{EDGES, is_edge};
    let all = [
        Idle,
        GaveUp,
        WaitingRetry,
        WaitingForProxy,
        Dialing,
        Connected,
        Closing,
    ];
    let mut edges = 0;
    for from in all {
        for to in all {
            let drawn = EDGES.iter().any(|e| e.from == from && e.to == to);
            assert_eq!(is_edge(from, to), drawn, "{from:?} -> {to:?}");
            edges += usize::from(drawn);
        }
    }
    assert_eq!(edges, EDGES.len(), "no edge drawn twice");
    // A link cannot connect without a dial, nor come back from a close.
    assert!(!is_edge(Idle, Connected));
    assert!(!is_edge(Closing, Connected));
}

#[test]
fn only_a_directory_s_goodbye_is_a_deliberate_loss() {
    use dirpool_core::LinkLoss;
    let losses = [
        LinkLoss::ClosedByPeer,
        LinkLoss::Io(std::io::ErrorKind::ConnectionReset),
        LinkLoss::Protocol,
        LinkLoss::KeepaliveTimeout,
        LinkLoss::WriteTimedOut,
        LinkLoss::DisconnectedByPeer,
        LinkLoss::Panicked,
    ];
    let deliberate: Vec<_> = losses.into_iter().filter(|l| l.is_deliberate()).collect();
    assert_eq!(deliberate, [LinkLoss::DisconnectedByPeer]);
}

#[test]
fn every_loss_failure_and_reason_says_what_it_is() {
    use dirpool_core::{
        CloseFailure, DialFailure, DisconnectReason, LinkLoss, ServerError, SocksReply,
    };
    use std::collections::BTreeSet;
    let losses = [
        LinkLoss::ClosedByPeer,
        LinkLoss::Io(std::io::ErrorKind::ConnectionReset),
        LinkLoss::Protocol,
        LinkLoss::KeepaliveTimeout,
        LinkLoss::WriteTimedOut,
        LinkLoss::DisconnectedByPeer,
        LinkLoss::Panicked,
    ];
    let replies: Vec<SocksReply> = (1..=9).map(SocksReply::from_code).collect();
    let mut texts: Vec<String> = Vec::new();
    texts.extend(losses.iter().map(ToString::to_string));
    texts.extend(replies.iter().map(ToString::to_string));
    texts.extend(
        losses
            .iter()
            .map(|l| DisconnectReason::Lost(*l).to_string()),
    );
    texts.extend(
        [
            DisconnectReason::Closed,
            DisconnectReason::CloseTimedOut,
            DisconnectReason::CloseFailed(CloseFailure::Client),
        ]
        .iter()
        .map(ToString::to_string),
    );
    texts.extend(losses.iter().map(|l| ServerError::Link(*l).to_string()));
    texts.push(ServerError::Dial(DialFailure::TimedOut).to_string());
    texts.push(ServerError::Dial(DialFailure::Socks(SocksReply::from_code(4))).to_string());
    // Each names its case: none empty, no two alike.
    assert!(texts.iter().all(|t| !t.is_empty()), "{texts:#?}");
    let distinct: BTreeSet<&String> = texts.iter().collect();
    assert_eq!(distinct.len(), texts.len(), "{texts:#?}");
    let addr = dirpool_core::ServerAddr::parse("[::1]:99").unwrap();
    assert_eq!(addr.to_string(), addr.node_id());
    assert!(format!("{addr:?}").contains("[::1]:99"));
}

#[test]
fn the_no_valid_servers_message_is_bounded() {
    use dirpool_core::{ConfigError, Entropy, IsolationToken, PoolConfig, PoolState};
    let entropy = || Entropy {
        isolation_token: IsolationToken::from_bytes([1; 16]),
        jitter_seed: 1,
    };
    let message = |servers: Vec<String>| match PoolState::new(PoolConfig::new(servers), entropy()) {
        Err(error @ ConfigError::NoValidServers { .. }) => error.to_string(),
        other => panic!("{other:?}"),
    };
    // Eight shown, each entry cut to 80 characters, and a count of the rest.
    let mut servers: Vec<String> = (0..10).map(|i| format!("bad entry {i}")).collect();
    servers[1] = format!("x y{}", "z".repeat(200));
    let text = message(servers);
    assert!(text.starts_with("none of the 10 configured"), "{text}");
    assert!(text.contains(": #0 \"bad entry 0\": "), "{text}");
    assert!(text.contains("; #1 \"x y"), "{text}");
    assert!(text.contains(&format!("{}…\"", "z".repeat(77))), "{text}");
    assert!(!text.contains(&"z".repeat(79)), "{text}");
    assert!(text.contains("; #7 "), "{text}");
    assert!(!text.contains("#8"), "{text}");
    assert!(text.ends_with("; and 2 more"), "{text}");
    // Exactly eight: all shown, nothing more to count.
    let text = message((0..8).map(|i| format!("bad entry {i}")).collect());
    assert!(text.contains("; #7 ") && !text.contains("more"), "{text}");
    // One entry: introduced by ": ", no "; " after it.
    let text = message(vec!["bad entry".into()]);
    assert!(text.contains(": #0 ") && !text.contains("; #"), "{text}");
}

#[test]
fn ids_are_distinct_in_value_and_in_print() {
    use dirpool_core::{Command, Entropy, IsolationToken, Output, PoolConfig, PoolState};
    use std::collections::BTreeSet;
    use std::time::Instant;
    let entropy = Entropy {
        isolation_token: IsolationToken::from_bytes([2; 16]),
        jitter_seed: 3,
    };
    let servers = ["127.0.0.1:1", "127.0.0.2:1", "127.0.0.3:1"];
    let mut pool = PoolState::new(PoolConfig::new(servers), entropy).unwrap();
    let now = Instant::now();
    let first = pool
        .handle_command(now, Command::ConnectAllParallel)
        .unwrap();
    let second = pool
        .handle_command(now, Command::ReconnectDisconnected)
        .unwrap();
    let ops: Vec<_> = [first, second].into_iter().flatten().collect();
    assert_eq!(ops.len(), 2);
    assert_ne!(ops[0].get(), ops[1].get());
    assert_ne!(ops[0].to_string(), ops[1].to_string());
    let dials: Vec<_> = std::iter::from_fn(|| pool.poll_output())
        .filter_map(|output| match output {
            Output::Dial(dial) => Some(dial),
            _ => None,
        })
        .collect();
    assert_eq!(dials.len(), 3);
    let attempts: BTreeSet<u64> = dials.iter().map(|d| d.attempt.get()).collect();
    let printed: BTreeSet<String> = dials.iter().map(|d| d.attempt.to_string()).collect();
    let servers: BTreeSet<String> = dials.iter().map(|d| d.server.to_string()).collect();
    assert_eq!((attempts.len(), printed.len(), servers.len()), (3, 3, 3));
    assert!(printed.iter().chain(&servers).all(|text| !text.is_empty()));
}

#[test]
fn a_dial_detail_is_equal_to_its_clones_only_and_prints_no_content() {
    use dirpool_core::DialDetail;
    use std::sync::Arc;
    let detail = DialDetail::new("the driver's error");
    assert_eq!(detail.clone(), detail);
    // Equal contents in another allocation: another detail.
    assert_ne!(DialDetail::new("the driver's error"), detail);
    let shared = Arc::new(7_u32);
    assert_eq!(
        DialDetail::from_arc(Arc::clone(&shared)),
        DialDetail::from_arc(shared)
    );
    // The machine never looks inside, and neither does its Debug.
    assert_eq!(format!("{detail:?}"), "DialDetail(..)");
}
