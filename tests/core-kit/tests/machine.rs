//! Drives `PoolState` step by step with explicit instants, through its
//! public API only, checking every rule a user of the pool relies on.

use std::time::{Duration, Instant};

use dirpool_core::{
    AttemptId, Backoff, CloseFailure, Command, ConfigError, DialFailure, DialRequest,
    DisconnectReason, Entropy, Input, InputError, IsolationScope, IsolationToken, KeepalivePolicy,
    LinkLoss, Notification, OperationEnd, OperationKind, OperationReport, Output, PoolConfig,
    PoolState, ProbeRequest, ProxyReport, ProxyState, RetryPolicy, ServerId, ServerState,
    SocksReply,
};

const A: &str = "127.0.0.1:5222";
const B: &str = "127.0.0.2:5222";
const C: &str = "127.0.0.3:5222";
const TOKEN: [u8; 16] = [0xab; 16];
const TOKEN_HEX: &str = "abababababababababababababababab";

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The machine plus a virtual clock and a log of everything it said.
struct Rig {
    pool: PoolState,
    t0: Instant,
    now: Instant,
}

impl Rig {
    fn new(config: PoolConfig) -> Self {
        let entropy = Entropy {
            isolation_token: IsolationToken::from_bytes(TOKEN),
            jitter_seed: 7,
        };
        let t0 = Instant::now();
        Self {
            pool: PoolState::new(config, entropy).expect("valid config"),
            t0,
            now: t0,
        }
    }

    fn with(servers: &[&str]) -> Self {
        Self::new(PoolConfig::new(servers.iter().copied()))
    }

    /// Seconds since start.
    fn at(&self, s: f64) -> Instant {
        self.t0 + secs(s)
    }

    fn elapsed(&self, t: Instant) -> f64 {
        t.duration_since(self.t0).as_secs_f64()
    }

    /// Moves the clock to `s` seconds and fires the timers due.
    fn advance_to(&mut self, s: f64) -> Vec<Output> {
        self.now = self.at(s);
        self.pool.handle_timeout(self.now);
        self.drain()
    }

    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.pool.poll_output()).collect()
    }

    fn id(&self, name: &str) -> ServerId {
        self.pool.find_server(name).expect("server in pool")
    }

    fn succeed(&mut self, attempt: AttemptId) -> Vec<Output> {
        self.pool
            .handle_input(
                self.now,
                Input::DialFinished {
                    attempt,
                    result: Ok(()),
                    detail: None,
                },
            )
            .expect("accepted");
        self.drain()
    }

    fn fail(&mut self, attempt: AttemptId, failure: DialFailure) -> Vec<Output> {
        self.pool
            .handle_input(
                self.now,
                Input::DialFinished {
                    attempt,
                    result: Err(failure),
                    detail: None,
                },
            )
            .expect("accepted");
        self.drain()
    }
}

fn dials(outputs: &[Output]) -> Vec<DialRequest> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Dial(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

fn dial_to(outputs: &[Output], server: ServerId) -> AttemptId {
    let found: Vec<_> = dials(outputs)
        .into_iter()
        .filter(|d| d.server == server)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one dial to {server} in {outputs:#?}"
    );
    found[0].attempt
}

fn notes(outputs: &[Output]) -> Vec<Notification> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Notify(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

fn finished(outputs: &[Output]) -> Option<OperationReport> {
    notes(outputs).into_iter().find_map(|n| match n {
        Notification::OperationFinished(r) => Some(r),
        _ => None,
    })
}

fn no_jitter_retry(timeout: f64) -> RetryPolicy {
    RetryPolicy::new(secs(timeout))
}

// ---- passes ---------------------------------------------------------------

#[test]
fn a_pass_dials_every_server_at_once() {
    let mut rig = Rig::with(&[A, B, C]);
    let op = rig
        .pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command")
        .expect("an operation");
    let out = rig.drain();
    let d = dials(&out);
    assert_eq!(d.len(), 3, "all three dialed before any result");
    assert!(d.iter().all(|d| d.deadline == rig.at(120.0)));
    assert!(
        d.iter().all(|d| d.credentials.is_none()),
        "isolation is off by default"
    );

    rig.now = rig.at(1.0);
    assert!(finished(&rig.succeed(d[0].attempt)).is_none());
    assert!(
        finished(&rig.fail(
            d[1].attempt,
            DialFailure::Socks(SocksReply::HostUnreachable)
        ))
        .is_none()
    );
    let out = rig.succeed(d[2].attempt);
    let report = finished(&out).expect("finished after the last result");
    assert_eq!(report.id, op);
    assert_eq!(report.kind, OperationKind::ConnectAllParallel);
    assert_eq!(report.end, OperationEnd::Completed);
    assert_eq!(report.connected, 2);
    assert_eq!(report.newly_connected, vec![rig.id(A), rig.id(C)]);
    assert_eq!(
        rig.pool.poll_timeout(),
        Some(rig.at(31.0)),
        "no maintenance: only the links' keepalive (idle 30 s from t=1)"
    );
}

#[test]
fn a_pass_never_dials_a_connected_or_in_flight_server_twice() {
    let mut rig = Rig::with(&[A, B]);
    rig.pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command");
    let first = dials(&rig.drain());
    rig.succeed(first[0].attempt);
    // B is still in flight: a second command joins it instead of redialing.
    let op = rig
        .pool
        .handle_command(rig.now, Command::ReconnectDisconnected)
        .expect("a valid command")
        .expect("an operation");
    assert!(dials(&rig.drain()).is_empty());
    let out = rig.succeed(first[1].attempt);
    let reports: Vec<_> = notes(&out)
        .into_iter()
        .filter_map(|n| match n {
            Notification::OperationFinished(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(
        reports.len(),
        2,
        "the pass and the reconnect both waited for B"
    );
    let report = reports
        .iter()
        .find(|r| r.id == op)
        .expect("reconnect finished");
    assert_eq!(report.kind, OperationKind::ReconnectDisconnected);
    assert_eq!(report.newly_connected, vec![rig.id(B)]);
    // Everything connected: nothing to dial, finishes at once with nothing new.
    rig.pool
        .handle_command(rig.now, Command::ReconnectDisconnected)
        .expect("a valid command");
    let out = rig.drain();
    assert!(dials(&out).is_empty());
    assert_eq!(finished(&out).map(|r| r.newly_connected), Some(vec![]));
}

#[test]
fn list_disconnected_and_connected_queries() {
    let mut rig = Rig::with(&[A, B]);
    rig.pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command");
    let d = dials(&rig.drain());
    rig.succeed(d[0].attempt);
    let disconnected: Vec<_> = rig
        .pool
        .list_disconnected()
        .map(|(_, a)| a.node_id().to_owned())
        .collect();
    assert_eq!(disconnected, [B]);
    assert_eq!(
        rig.pool.connected().collect::<Vec<_>>(),
        [(rig.id(A), d[0].attempt)]
    );
    assert_eq!(rig.pool.connected_count(), 1);
}

// ---- connect_all_with_retry ----------------------------------------------

#[test]
fn retry_backs_off_exactly_like_the_original_without_jitter() {
    let mut rig = Rig::with(&[A]);
    rig.pool
        .handle_command(
            rig.now,
            Command::ConnectAllWithRetry(no_jitter_retry(600.0)),
        )
        .map(|op| op.expect("an operation"))
        .expect("valid");
    let mut attempt = dial_to(&rig.drain(), rig.id(A));
    let mut t = 0.0;
    let mut delays = Vec::new();
    for _ in 0..8 {
        let out = rig.fail(attempt, DialFailure::Socks(SocksReply::GeneralFailure));
        let retry_at = notes(&out)
            .into_iter()
            .find_map(|n| match n {
                Notification::DialFailed { retry_at, .. } => retry_at,
                _ => None,
            })
            .expect("a retry is scheduled");
        let next = rig.elapsed(retry_at);
        delays.push(next - t);
        // Nothing happens a hair before the retry is due.
        assert!(dials(&rig.advance_to(next - 0.001)).is_empty());
        assert_eq!(rig.pool.poll_timeout(), Some(retry_at));
        attempt = dial_to(&rig.advance_to(next), rig.id(A));
        t = next;
    }
    let expected = [5.0, 7.5, 11.25, 16.875, 25.3125, 30.0, 30.0, 30.0];
    for (got, want) in delays.iter().zip(expected) {
        assert!(
            (got - want).abs() < 1e-6,
            "delays {delays:?}, expected {expected:?}"
        );
    }
}

#[test]
fn retry_jitter_stays_within_its_bounds() {
    let mut rig = Rig::with(&[A]);
    let mut policy = no_jitter_retry(3600.0);
    policy.backoff = Backoff::new(secs(5.0), secs(30.0), 1.5).with_jitter(0.5);
    rig.pool
        .handle_command(rig.now, Command::ConnectAllWithRetry(policy))
        .map(|op| op.expect("an operation"))
        .expect("valid");
    let mut attempt = dial_to(&rig.drain(), rig.id(A));
    let mut distinct = std::collections::BTreeSet::new();
    for step in 0..40u32 {
        let out = rig.fail(attempt, DialFailure::TimedOut);
        let Some(Notification::DialFailed {
            retry_at: Some(at), ..
        }) = notes(&out).pop()
        else {
            panic!("no retry in {out:?}")
        };
        let delay = at.duration_since(rig.now);
        let (low, high) = policy.backoff.bounds(step);
        assert!(
            delay + Duration::from_micros(1) >= low && delay <= high,
            "step {step}: {delay:?} outside {low:?}..={high:?}"
        );
        assert!(delay <= secs(30.0), "jitter never overshoots the maximum");
        distinct.insert(delay);
        let s = rig.elapsed(at);
        attempt = dial_to(&rig.advance_to(s), rig.id(A));
    }
    assert!(distinct.len() > 20, "jitter actually varies the delays");
}

#[test]
fn retry_finishes_as_soon_as_one_server_connects() {
    let mut rig = Rig::with(&[A, B]);
    let op = rig
        .pool
        .handle_command(
            rig.now,
            Command::ConnectAllWithRetry(no_jitter_retry(120.0)),
        )
        .map(|op| op.expect("an operation"))
        .expect("valid");
    let out = rig.drain();
    let (a, b) = (dial_to(&out, rig.id(A)), dial_to(&out, rig.id(B)));
    rig.now = rig.at(0.5);
    let out = rig.succeed(b);
    let report = finished(&out).expect("finished at the first connection");
    assert_eq!(
        (report.id, report.end, report.connected),
        (op, OperationEnd::Connected, 1)
    );
    assert_eq!(report.newly_connected, vec![rig.id(B)]);
    // A's dial goes on in the background and joins when it connects.
    rig.now = rig.at(3.0);
    let out = rig.succeed(a);
    assert!(notes(&out).contains(&Notification::Connected {
        server: rig.id(A),
        attempt: a
    }));
    assert_eq!(rig.pool.connected_count(), 2);
}

#[test]
fn retry_finishes_with_zero_exactly_at_its_deadline_and_late_dials_still_join() {
    let mut rig = Rig::with(&[A]);
    let op = rig
        .pool
        .handle_command(rig.now, Command::ConnectAllWithRetry(no_jitter_retry(10.0)))
        .map(|op| op.expect("an operation"))
        .expect("valid");
    let first = dial_to(&rig.drain(), rig.id(A));
    rig.now = rig.at(1.0);
    rig.fail(
        first,
        DialFailure::Socks(SocksReply::OnionDescriptorNotFound),
    );
    let second = dial_to(&rig.advance_to(6.0), rig.id(A));
    // In flight at the deadline: not finished a nanosecond early...
    let out = rig.advance_to(10.0 - 1e-9);
    assert!(finished(&out).is_none());
    // ...and finished with 0 exactly at it.
    let out = rig.advance_to(10.0);
    let report = finished(&out).expect("finished at the deadline");
    assert_eq!(
        (report.id, report.end, report.connected),
        (op, OperationEnd::DeadlineReached, 0)
    );
    // The dial in flight joins later, without a retry operation around.
    rig.now = rig.at(12.0);
    let out = rig.succeed(second);
    assert!(notes(&out).contains(&Notification::Connected {
        server: rig.id(A),
        attempt: second
    }));
}

#[test]
fn retry_with_a_connected_server_finishes_at_once() {
    let mut rig = Rig::with(&[A, B]);
    rig.pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command");
    let d = dials(&rig.drain());
    rig.succeed(d[0].attempt);
    rig.fail(d[1].attempt, DialFailure::TimedOut);
    rig.pool
        .handle_command(rig.now, Command::ConnectAllWithRetry(no_jitter_retry(60.0)))
        .map(|op| op.expect("an operation"))
        .expect("valid");
    let out = rig.drain();
    assert_eq!(
        dials(&out).len(),
        1,
        "the disconnected one is still dialed once"
    );
    assert_eq!(
        finished(&out).map(|r| (r.end, r.connected)),
        Some((OperationEnd::Connected, 1))
    );
}

#[test]
fn invalid_retry_policy_is_an_error_at_the_call() {
    let mut rig = Rig::with(&[A]);
    let mut policy = no_jitter_retry(60.0);
    policy.backoff.factor = 0.5;
    assert!(matches!(
        rig.pool
            .handle_command(rig.now, Command::ConnectAllWithRetry(policy))
            .map(|op| op.expect("an operation")),
        Err(ConfigError::InvalidFactor { .. })
    ));
    assert!(rig.drain().is_empty(), "nothing started");
}

// ---- timeouts and stray results --------------------------------------------

#[test]
fn the_machine_times_out_a_dial_and_closes_its_late_success() {
    let mut config = PoolConfig::new([A]);
    config.connection_timeout = secs(30.0);
    let mut rig = Rig::new(config);
    rig.pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command");
    let attempt = dial_to(&rig.drain(), rig.id(A));
    assert_eq!(rig.pool.poll_timeout(), Some(rig.at(30.0)));
    let out = rig.advance_to(30.0);
    assert!(matches!(out[0], Output::Abort(a) if a == attempt));
    assert!(notes(&out).iter().any(|n| matches!(
        n,
        Notification::DialFailed {
            failure: DialFailure::TimedOut,
            ..
        }
    )));
    assert_eq!(finished(&out).map(|r| r.connected), Some(0));
    // The driver lost the race: the success is closed, never registered.
    rig.now = rig.at(30.1);
    let out = rig.succeed(attempt);
    assert!(matches!(&out[..], [Output::Close(c)] if c.attempt == attempt && c.stray));
    assert_eq!(rig.pool.connected_count(), 0);
    rig.pool
        .handle_input(
            rig.now,
            Input::CloseFinished {
                attempt,
                result: Ok(()),
            },
        )
        .expect("accepted");
    assert!(
        rig.drain().is_empty(),
        "a stray close says nothing to the user"
    );
    assert_eq!(rig.pool.pending_attempts(), 0);
}

#[test]
fn wrong_inputs_are_errors_and_change_nothing() {
    let mut rig = Rig::with(&[A]);
    rig.pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command");
    let attempt = dial_to(&rig.drain(), rig.id(A));
    assert!(matches!(
        rig.pool.handle_input(
            rig.now,
            Input::LinkLost {
                attempt,
                loss: LinkLoss::ClosedByPeer
            }
        ),
        Err(InputError::UnexpectedInput { .. })
    ));
    rig.succeed(attempt);
    assert_eq!(
        rig.pool.handle_input(
            rig.now,
            Input::DialFinished {
                attempt,
                result: Ok(()),
                detail: None,
            }
        ),
        Err(InputError::UnexpectedInput {
            attempt,
            state: "open"
        })
    );
    assert!(matches!(
        rig.pool.handle_input(
            rig.now,
            Input::DialFinished {
                attempt,
                result: Err(DialFailure::TimedOut),
                detail: None,
            }
        ),
        Err(InputError::UnexpectedInput { .. })
    ));
    assert!(matches!(
        rig.pool.handle_input(
            rig.now,
            Input::CloseFinished {
                attempt,
                result: Ok(())
            }
        ),
        Err(InputError::UnexpectedInput { .. })
    ));
    rig.pool
        .handle_input(
            rig.now,
            Input::LinkLost {
                attempt,
                loss: LinkLoss::ClosedByPeer,
            },
        )
        .expect("accepted");
    assert_eq!(
        rig.pool.handle_input(
            rig.now,
            Input::DialFinished {
                attempt,
                result: Ok(()),
                detail: None,
            }
        ),
        Err(InputError::UnknownAttempt(attempt))
    );
    assert_eq!(rig.pool.connected_count(), 0);
}

#[test]
fn handle_timeout_early_twice_or_backwards_is_harmless() {
    let mut rig = Rig::with(&[A]);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    let attempt = dial_to(&rig.drain(), rig.id(A));
    rig.now = rig.at(2.0);
    rig.fail(attempt, DialFailure::Socks(SocksReply::ConnectionRefused));
    let due = rig.pool.poll_timeout().expect("a retry");
    for _ in 0..3 {
        rig.pool.handle_timeout(rig.at(2.5));
        rig.pool.handle_timeout(rig.at(0.0)); // a clock that went backwards counts as now
    }
    assert!(rig.drain().is_empty());
    assert_eq!(rig.pool.poll_timeout(), Some(due));
    rig.pool.handle_timeout(due);
    rig.pool.handle_timeout(due);
    assert_eq!(dials(&rig.drain()).len(), 1, "fired once");
}

// ---- configuration ---------------------------------------------------------

#[test]
fn duplicates_are_one_server_and_reported() {
    let onion = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion";
    let upper = format!("{}:5222", onion.to_uppercase().replace(".ONION", ".onion"));
    let mut rig = Rig::with(&[onion, A, &upper, "127.0.0.1"]);
    let out = rig.drain();
    assert_eq!(rig.pool.servers().len(), 2);
    let first = rig.pool.find_server(onion).expect("present");
    assert_eq!(
        notes(&out),
        vec![
            Notification::DuplicateAddress {
                index: 2,
                server: first
            },
            Notification::DuplicateAddress {
                index: 3,
                server: rig.id(A)
            },
        ]
    );
    rig.pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command");
    assert_eq!(dials(&rig.drain()).len(), 2, "each server dialed once");
    assert_eq!(rig.pool.rejected_entries().len(), 2);
}

#[test]
fn malformed_entries_are_reported_once_and_never_dialed_or_listed() {
    let bad = ["a:b:c", "host:", "x.onion", "[::1", "bad host", "h:0"];
    let mut entries = vec![A];
    entries.extend(bad);
    let mut rig = Rig::with(&entries);
    let out = rig.drain();
    let rejected: Vec<usize> = notes(&out)
        .iter()
        .map(|n| match n {
            Notification::AddressRejected { index, .. } => *index,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(rejected, [1, 2, 3, 4, 5, 6]);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    rig.pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command");
    rig.pool
        .handle_command(rig.now, Command::ConnectAllWithRetry(no_jitter_retry(5.0)))
        .map(|op| op.expect("an operation"))
        .expect("valid");
    let out = rig.drain();
    assert!(dials(&out).iter().all(|d| d.addr.node_id() == A));
    assert!(
        !notes(&out)
            .iter()
            .any(|n| matches!(n, Notification::AddressRejected { .. })),
        "reported once"
    );
    assert_eq!(rig.pool.list_disconnected().count(), 1);
}

#[test]
fn a_pool_with_nothing_valid_is_a_config_error() {
    let entropy = Entropy {
        isolation_token: IsolationToken::from_bytes(TOKEN),
        jitter_seed: 0,
    };
    // The error names every entry and why, in its message too.
    let error = PoolState::new(PoolConfig::new(["nope:0", "a b"]), entropy).err();
    let Some(ConfigError::NoValidServers { rejected }) = &error else {
        panic!("{error:?}");
    };
    let indices: Vec<usize> = rejected.iter().map(|r| r.index).collect();
    assert_eq!(indices, [0, 1]);
    assert!(
        rejected
            .iter()
            .all(|r| matches!(r.reason, dirpool_core::Rejection::Malformed(_))),
        "{rejected:?}"
    );
    let message = error.as_ref().map(ToString::to_string).unwrap_or_default();
    for r in rejected {
        let dirpool_core::Rejection::Malformed(reason) = &r.reason else {
            unreachable!()
        };
        assert!(
            message.contains(&format!("#{} {:?}: {reason}", r.index, r.entry)),
            "{message}"
        );
    }
    // Bounded: a thousand bad entries show a few and count the rest.
    let many: Vec<String> = (0..1000).map(|i| format!("bad {i}")).collect();
    let error = PoolState::new(PoolConfig::new(many), entropy)
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(
        message.ends_with("; and 992 more") && message.len() < 2000,
        "{message}"
    );
    assert_eq!(
        PoolState::new(PoolConfig::new(Vec::<String>::new()), entropy).err(),
        Some(ConfigError::NoServers)
    );
}

// ---- isolation -------------------------------------------------------------

#[test]
fn credentials_follow_the_isolation_scope() {
    for scope in [
        IsolationScope::Off,
        IsolationScope::PerCategory,
        IsolationScope::PerServer,
    ] {
        let mut config = PoolConfig::new([A, B]);
        config.isolation = scope;
        let mut rig = Rig::new(config);
        rig.pool
            .handle_command(rig.now, Command::ConnectAllParallel)
            .expect("a valid command");
        let d = dials(&rig.drain());
        let creds: Vec<_> = d.iter().map(|d| d.credentials.clone()).collect();
        match scope {
            IsolationScope::Off => {
                assert!(creds.iter().all(Option::is_none));
                assert!(rig.pool.isolation().peer_credentials().is_none());
            }
            _ => {
                let creds: Vec<_> = creds.into_iter().map(|c| c.expect("credentials")).collect();
                assert!(creds.iter().all(|c| c.username() == "jm-directory"));
                let peer = rig
                    .pool
                    .isolation()
                    .peer_credentials()
                    .expect("peer credentials");
                assert_eq!(peer.username(), "jm-peer");
                if scope == IsolationScope::PerCategory {
                    assert!(creds.iter().all(|c| c.password().expose() == TOKEN_HEX));
                } else {
                    assert_ne!(
                        creds[0].password(),
                        creds[1].password(),
                        "one circuit per server"
                    );
                    assert_ne!(creds[0].password().expose(), TOKEN_HEX);
                }
            }
        }
        // Secrets never show in Debug output of anything the user can print.
        let printed = format!("{:?} {:?}", rig.pool, d);
        assert!(!printed.contains(TOKEN_HEX), "token leaked: {printed}");
        for dial in &d {
            if let Some(c) = &dial.credentials {
                assert!(!printed.contains(c.password().expose()));
            }
        }
    }
}

// ---- close_all ---------------------------------------------------------------

#[test]
fn close_all_closes_everything_and_aborts_dials_in_flight() {
    let mut rig = Rig::with(&[A, B, C]);
    let pass = rig
        .pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command")
        .expect("an operation");
    let d = dials(&rig.drain());
    rig.succeed(d[0].attempt);
    rig.succeed(d[1].attempt);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    rig.drain();
    let close = rig
        .pool
        .handle_command(rig.now, Command::CloseAll)
        .expect("a valid command")
        .expect("an operation");
    let out = rig.drain();
    // The pass waiting for C is cancelled; C's dial is aborted; A and B close.
    let cancelled = finished(&out).expect("pass cancelled");
    assert_eq!(
        (cancelled.id, cancelled.end),
        (pass, OperationEnd::Cancelled)
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Abort(a) if *a == d[2].attempt))
    );
    let closes: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Close(c) => Some(*c),
            _ => None,
        })
        .collect();
    assert_eq!(closes.len(), 2);
    assert!(closes.iter().all(|c| !c.stray));
    assert!(!rig.pool.maintenance_running());

    // One close fails: the other still completes; both are disconnected.
    rig.now = rig.at(0.2);
    rig.pool
        .handle_input(
            rig.now,
            Input::CloseFinished {
                attempt: closes[0].attempt,
                result: Err(CloseFailure::Io(std::io::ErrorKind::BrokenPipe)),
            },
        )
        .expect("accepted");
    let out = rig.drain();
    assert!(finished(&out).is_none());
    assert!(matches!(
        notes(&out)[..],
        [Notification::Disconnected {
            reason: DisconnectReason::CloseFailed(_),
            ..
        }]
    ));
    rig.pool
        .handle_input(
            rig.now,
            Input::CloseFinished {
                attempt: closes[1].attempt,
                result: Ok(()),
            },
        )
        .expect("accepted");
    let out = rig.drain();
    let report = finished(&out).expect("close_all finished");
    assert_eq!(
        (report.id, report.kind, report.connected),
        (close, OperationKind::CloseAll, 0)
    );

    // C's dial succeeds after close_all: closed as a stray, never registered.
    let out = rig.succeed(d[2].attempt);
    assert!(matches!(&out[..], [Output::Close(c)] if c.stray && c.attempt == d[2].attempt));
    rig.pool
        .handle_input(
            rig.now,
            Input::CloseFinished {
                attempt: d[2].attempt,
                result: Ok(()),
            },
        )
        .expect("accepted");
    assert_eq!(rig.pool.live_clients(), 0);
    assert_eq!(rig.pool.pending_attempts(), 0);
    // Maintenance stopped: nothing is ever redialed.
    assert!(dials(&rig.advance_to(3600.0)).is_empty());
}

#[test]
fn a_hanging_close_times_out_and_still_counts_as_disconnected() {
    let mut config = PoolConfig::new([A, B]);
    config.close_timeout = secs(5.0);
    let mut rig = Rig::new(config);
    rig.pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command");
    let d = dials(&rig.drain());
    rig.succeed(d[0].attempt);
    rig.succeed(d[1].attempt);
    rig.pool
        .handle_command(rig.now, Command::CloseAll)
        .expect("a valid command");
    rig.drain();
    rig.pool
        .handle_input(
            rig.now,
            Input::CloseFinished {
                attempt: d[0].attempt,
                result: Ok(()),
            },
        )
        .expect("accepted");
    assert!(finished(&rig.drain()).is_none());
    let out = rig.advance_to(5.0);
    assert!(notes(&out).contains(&Notification::Disconnected {
        server: rig.id(B),
        attempt: d[1].attempt,
        reason: DisconnectReason::CloseTimedOut
    }));
    assert_eq!(finished(&out).map(|r| r.end), Some(OperationEnd::Completed));
    // Its close finishing later is accepted quietly.
    rig.pool
        .handle_input(
            rig.at(9.0),
            Input::CloseFinished {
                attempt: d[1].attempt,
                result: Ok(()),
            },
        )
        .expect("accepted");
    assert!(rig.drain().is_empty());
}

#[test]
fn close_all_with_nothing_open_finishes_at_once() {
    let mut rig = Rig::with(&[A]);
    rig.pool
        .handle_command(rig.now, Command::CloseAll)
        .expect("a valid command");
    assert_eq!(
        finished(&rig.drain()).map(|r| r.end),
        Some(OperationEnd::Completed)
    );
}

// ---- maintenance -------------------------------------------------------------

fn maintained(max_retries: u32) -> Rig {
    let mut config = PoolConfig::new([A, B]);
    config.maintenance.backoff = Backoff::new(secs(1.0), secs(8.0), 2.0);
    config.maintenance.max_retries = max_retries;
    config.maintenance.stable_after = secs(60.0);
    Rig::new(config)
}

/// Fails `attempt` and returns when its retry is due, in seconds.
fn fail_and_retry_in(rig: &mut Rig, attempt: AttemptId) -> Option<f64> {
    let now = rig.elapsed(rig.now);
    let out = rig.fail(attempt, DialFailure::Socks(SocksReply::HostUnreachable));
    notes(&out).into_iter().find_map(|n| match n {
        Notification::DialFailed { retry_at, .. } => retry_at.map(|t| rig.elapsed(t) - now),
        _ => None,
    })
}

#[test]
fn maintenance_redials_a_lost_server_after_its_backoff() {
    let mut rig = maintained(0);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    let out = rig.drain();
    let (a, b) = (dial_to(&out, rig.id(A)), dial_to(&out, rig.id(B)));
    rig.succeed(a);
    rig.succeed(b);
    rig.now = rig.at(100.0);
    rig.pool
        .handle_input(
            rig.now,
            Input::LinkLost {
                attempt: a,
                loss: LinkLoss::ClosedByPeer,
            },
        )
        .expect("accepted");
    let out = rig.drain();
    assert!(matches!(
        notes(&out)[..],
        [Notification::Disconnected {
            reason: DisconnectReason::Lost(LinkLoss::ClosedByPeer),
            ..
        }]
    ));
    assert_eq!(
        rig.pool.status(rig.id(A)).map(|s| s.state),
        Some(ServerState::WaitingRetry)
    );
    assert!(dials(&rig.advance_to(100.999)).is_empty());
    let again = dial_to(&rig.advance_to(101.0), rig.id(A));
    rig.succeed(again);
    assert_eq!(rig.pool.connected_count(), 2);
}

#[test]
fn a_stable_link_resets_the_backoff_and_a_flapping_one_does_not() {
    let mut rig = maintained(0);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    let out = rig.drain();
    let mut a = dial_to(&out, rig.id(A));
    rig.succeed(dial_to(&out, rig.id(B)));
    // Three failures: 1, 2, 4 s.
    let mut t = 0.0;
    for want in [1.0, 2.0, 4.0] {
        let delay = fail_and_retry_in(&mut rig, a).expect("retry");
        assert!((delay - want).abs() < 1e-9, "{delay} != {want}");
        t += delay;
        a = dial_to(&rig.advance_to(t), rig.id(A));
    }
    // Connects, but dies 5 s later: not stable, the backoff keeps climbing (8 s).
    rig.succeed(a);
    rig.now = rig.at(t + 5.0);
    rig.pool
        .handle_input(
            rig.now,
            Input::LinkLost {
                attempt: a,
                loss: LinkLoss::ClosedByPeer,
            },
        )
        .expect("accepted");
    let status = rig.pool.status(rig.id(A)).expect("status");
    assert_eq!(
        status.consecutive_failures, 0,
        "a connection resets the failure count"
    );
    let retry = rig.elapsed(status.next_retry_at.expect("retry")) - (t + 5.0);
    assert!((retry - 8.0).abs() < 1e-9, "flapping link: {retry}");
    t += 13.0;
    a = dial_to(&rig.advance_to(t), rig.id(A));
    // Connects and stays up 60 s: stable, so the next loss waits only 1 s.
    rig.succeed(a);
    rig.now = rig.at(t + 60.0);
    rig.pool
        .handle_input(
            rig.now,
            Input::LinkLost {
                attempt: a,
                loss: LinkLoss::Io(std::io::ErrorKind::ConnectionReset),
            },
        )
        .expect("accepted");
    let status = rig.pool.status(rig.id(A)).expect("status");
    let retry = rig.elapsed(status.next_retry_at.expect("retry")) - (t + 60.0);
    assert!((retry - 1.0).abs() < 1e-9, "stable link: {retry}");
}

#[test]
fn maintenance_gives_up_after_max_retries_until_restarted() {
    let mut rig = maintained(3);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    let out = rig.drain();
    rig.succeed(dial_to(&out, rig.id(B)));
    let mut a = dial_to(&out, rig.id(A));
    let mut t = 0.0;
    for _ in 0..2 {
        t += fail_and_retry_in(&mut rig, a).expect("retry");
        a = dial_to(&rig.advance_to(t), rig.id(A));
    }
    let out = rig.fail(a, DialFailure::HandshakeRejected);
    assert!(notes(&out).contains(&Notification::GaveUp {
        server: rig.id(A),
        failures: 3
    }));
    assert_eq!(
        rig.pool.status(rig.id(A)).map(|s| s.state),
        Some(ServerState::GaveUp)
    );
    assert!(dials(&rig.advance_to(10_000.0)).is_empty(), "no more dials");
    // An explicit command still dials it; a restart forgets the give-up.
    rig.pool
        .handle_command(rig.now, Command::ReconnectDisconnected)
        .expect("a valid command");
    let a = dial_to(&rig.drain(), rig.id(A));
    rig.fail(a, DialFailure::TimedOut);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    // It failed a moment ago: redialed after its backoff, not at once.
    assert!(dials(&rig.drain()).is_empty());
    let status = rig.pool.status(rig.id(A)).expect("status");
    assert_eq!(status.state, ServerState::WaitingRetry);
    let due = rig.elapsed(status.next_retry_at.expect("scheduled"));
    assert_eq!(dials(&rig.advance_to(due)).len(), 1);
}

#[test]
fn all_down_and_recovered() {
    let mut rig = maintained(0);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    let out = rig.drain();
    let (a, b) = (dial_to(&out, rig.id(A)), dial_to(&out, rig.id(B)));
    rig.succeed(a);
    rig.succeed(b);
    rig.now = rig.at(100.0);
    rig.pool
        .handle_input(
            rig.now,
            Input::LinkLost {
                attempt: a,
                loss: LinkLoss::ClosedByPeer,
            },
        )
        .expect("accepted");
    assert!(!notes(&rig.drain()).contains(&Notification::AllDown));
    rig.pool
        .handle_input(
            rig.now,
            Input::LinkLost {
                attempt: b,
                loss: LinkLoss::KeepaliveTimeout,
            },
        )
        .expect("accepted");
    let out = rig.drain();
    assert_eq!(notes(&out).last(), Some(&Notification::AllDown));
    let out = rig.advance_to(101.0);
    let a2 = dial_to(&out, rig.id(A));
    let b2 = dial_to(&out, rig.id(B));
    let out = rig.succeed(a2);
    assert_eq!(
        notes(&out),
        vec![
            Notification::Connected {
                server: rig.id(A),
                attempt: a2
            },
            Notification::Recovered
        ]
    );
    let out = rig.succeed(b2);
    assert!(!notes(&out).contains(&Notification::Recovered), "once only");
}

#[test]
fn stop_maintenance_stops_redials() {
    let mut rig = maintained(0);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    let out = rig.drain();
    rig.fail(dial_to(&out, rig.id(A)), DialFailure::TimedOut);
    rig.pool
        .handle_command(rig.now, Command::StopMaintenance)
        .expect("a valid command");
    assert_eq!(
        rig.pool.status(rig.id(A)).map(|s| s.state),
        Some(ServerState::Idle)
    );
    assert!(dials(&rig.advance_to(1000.0)).is_empty());
}

// ---- the proxy ---------------------------------------------------------------

#[test]
fn a_dead_proxy_is_one_pool_wide_state_not_every_servers_failure() {
    let mut config = PoolConfig::new([A, B, C]);
    config.maintenance.backoff = Backoff::new(secs(1.0), secs(8.0), 2.0);
    config.maintenance.max_retries = 2;
    let mut rig = Rig::new(config);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    let d = dials(&rig.drain());
    let out = rig.fail(d[0].attempt, DialFailure::ProxyUnreachable);
    assert!(notes(&out).contains(&Notification::ProxyUnreachable));
    assert!(!rig.pool.proxy_reachable());
    rig.fail(d[1].attempt, DialFailure::ProxyUnreachable);
    let out = rig.fail(d[2].attempt, DialFailure::ProxyUnreachable);
    assert!(
        !notes(&out).contains(&Notification::ProxyUnreachable),
        "reported once"
    );
    // One probe at a time, backing off: 1, 2, 4, 8, 8 s.
    let mut t = 0.0;
    for want in [1.0, 2.0, 4.0, 8.0, 8.0] {
        let next = rig.pool.poll_timeout().expect("probe scheduled");
        let due = rig.elapsed(next);
        assert!(
            (due - t - want).abs() < 1e-9,
            "probe after {} s, want {want}",
            due - t
        );
        t = due;
        let out = rig.advance_to(t);
        let probe = dials(&out);
        assert_eq!(probe.len(), 1, "exactly one probe");
        rig.fail(probe[0].attempt, DialFailure::ProxyUnreachable);
    }
    for status in rig.pool.statuses() {
        assert_eq!(status.state, ServerState::WaitingForProxy);
        assert_eq!(
            status.consecutive_failures, 0,
            "proxy failures burn no retry budget"
        );
    }
    // The proxy is back: the next probe gets through and everyone is dialed.
    t += 8.0;
    let probe = dials(&rig.advance_to(t));
    let out = rig.succeed(probe[0].attempt);
    assert!(notes(&out).contains(&Notification::ProxyRecovered));
    assert_eq!(dials(&out).len(), 2, "the other two at once");
    assert!(rig.pool.proxy_reachable());
}

#[test]
fn an_onion_error_proves_the_proxy_is_back() {
    let mut rig = maintained(0);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    let d = dials(&rig.drain());
    rig.fail(d[0].attempt, DialFailure::ProxyUnreachable);
    rig.fail(d[1].attempt, DialFailure::ProxyUnreachable);
    let probe = dials(&rig.advance_to(1.0));
    let out = rig.fail(
        probe[0].attempt,
        DialFailure::Socks(SocksReply::OnionDescriptorNotFound),
    );
    assert!(notes(&out).contains(&Notification::ProxyRecovered));
    assert_eq!(dials(&out).len(), 1, "the waiting server is dialed now");
}

impl Rig {
    fn report(&mut self, report: ProxyReport) -> Vec<Output> {
        self.pool
            .handle_input(self.now, Input::ProxyReported(report))
            .expect("a report is always taken");
        self.drain()
    }
}

#[test]
fn a_tor_that_reports_bootstrapping_holds_redials_without_probes_until_ready() {
    let mut rig = maintained(2);
    let out = rig.report(ProxyReport::Bootstrapping);
    assert_eq!(notes(&out), [Notification::ProxyUnreachable]);
    assert_eq!(rig.pool.health(rig.now).proxy, ProxyState::Bootstrapping);
    // Maintenance holds its dials: both servers wait, nothing is probed.
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    assert!(dials(&rig.drain()).is_empty());
    assert_eq!(
        rig.pool.poll_timeout(),
        None,
        "no probe while Tor says wait"
    );
    for status in rig.pool.statuses() {
        assert_eq!(status.state, ServerState::WaitingForProxy);
    }
    // A repeat and a change of reason are no news.
    assert!(rig.report(ProxyReport::Bootstrapping).is_empty());
    assert!(rig.report(ProxyReport::Blocked).is_empty());
    assert_eq!(rig.pool.health(rig.now).proxy, ProxyState::Blocked);
    // Ready: both are dialed at once.
    rig.now = rig.at(30.0);
    let out = rig.report(ProxyReport::Ready);
    assert!(notes(&out).contains(&Notification::ProxyRecovered));
    assert_eq!(dials(&out).len(), 2);
    assert_eq!(rig.pool.health(rig.now).proxy, ProxyState::Reachable);
    assert!(rig.report(ProxyReport::Ready).is_empty(), "no news");
}

#[test]
fn a_not_ready_report_wins_over_a_dial_that_gets_through() {
    let mut rig = maintained(0);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    let d = dials(&rig.drain());
    // Tor says blocked while both dials are out; one connects anyway, the
    // other fails at the proxy.
    assert_eq!(
        notes(&rig.report(ProxyReport::Blocked)),
        [Notification::ProxyUnreachable]
    );
    let out = rig.succeed(d[0].attempt);
    assert!(!notes(&out).contains(&Notification::ProxyRecovered));
    assert_eq!(rig.pool.connected_count(), 1, "the link is kept");
    let out = rig.fail(d[1].attempt, DialFailure::ProxyUnreachable);
    assert!(dials(&out).is_empty());
    let b = rig.id(B);
    assert_eq!(
        rig.pool.status(b).unwrap().state,
        ServerState::WaitingForProxy
    );
    // Only the connected link's keepalive is due: no probe dial.
    rig.advance_to(1_000.0);
    assert_eq!(
        rig.pool.status(b).unwrap().state,
        ServerState::WaitingForProxy
    );
    let out = rig.report(ProxyReport::Ready);
    assert!(notes(&out).contains(&Notification::ProxyRecovered));
    dial_to(&out, b);
}

#[test]
fn after_ready_a_dial_that_fails_at_the_proxy_still_marks_it_down() {
    let mut rig = maintained(0);
    assert!(rig.report(ProxyReport::Ready).is_empty(), "up already");
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    let d = dials(&rig.drain());
    let out = rig.fail(d[0].attempt, DialFailure::ProxyUnreachable);
    assert!(notes(&out).contains(&Notification::ProxyUnreachable));
    assert_eq!(rig.pool.health(rig.now).proxy, ProxyState::Unreachable);
    // Inferred, so probed: one probe on the backoff (1 s).
    let probe = dials(&rig.advance_to(1.0));
    assert_eq!(probe.len(), 1);
    // Tor then says it is bootstrapping: the probe's success proves
    // nothing against it, and no further probe is scheduled.
    rig.report(ProxyReport::Bootstrapping);
    let out = rig.succeed(probe[0].attempt);
    assert!(!notes(&out).contains(&Notification::ProxyRecovered));
    assert_eq!(rig.pool.health(rig.now).proxy, ProxyState::Bootstrapping);
    let out = rig.fail(d[1].attempt, DialFailure::ProxyUnreachable);
    assert!(dials(&out).is_empty());
    assert!(dials(&rig.advance_to(100.0)).is_empty(), "no probe");
    let out = rig.report(ProxyReport::Ready);
    assert_eq!(dials(&out).len(), 1, "the one still waiting");
}

#[test]
fn a_command_still_dials_while_tor_says_wait() {
    let mut rig = Rig::with(&[A, B]);
    rig.report(ProxyReport::Bootstrapping);
    rig.pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command");
    assert_eq!(dials(&rig.drain()).len(), 2, "the route bounds their wait");
}

// ---- keepalive ---------------------------------------------------------------

fn probes(outputs: &[Output]) -> Vec<ProbeRequest> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Probe(p) => Some(*p),
            _ => None,
        })
        .collect()
}

/// One server, connected at t=0, keepalive idle 30 s and probe timeout 20 s.
fn connected_link() -> (Rig, AttemptId) {
    let mut config = PoolConfig::new([A]);
    config.keepalive = KeepalivePolicy::new(secs(30.0), secs(20.0));
    let mut rig = Rig::new(config);
    rig.pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command");
    let attempt = dials(&rig.drain())[0].attempt;
    rig.succeed(attempt);
    (rig, attempt)
}

#[test]
fn a_quiet_link_is_probed_once_per_idle_interval_and_an_answer_keeps_it() {
    let (mut rig, attempt) = connected_link();
    assert_eq!(rig.pool.poll_timeout(), Some(rig.at(30.0)));
    assert!(probes(&rig.advance_to(29.9)).is_empty(), "not before idle");
    let out = rig.advance_to(30.0);
    let p = probes(&out);
    assert_eq!(p.len(), 1, "{out:#?}");
    assert_eq!(p[0].attempt, attempt);
    // The probe's deadline is the machine's own next wake-up.
    assert_eq!(rig.pool.poll_timeout(), Some(rig.at(50.0)));
    assert!(
        probes(&rig.advance_to(40.0)).is_empty(),
        "one probe at a time"
    );

    rig.now = rig.at(40.5);
    rig.pool
        .handle_input(rig.now, Input::ProbeAnswered(attempt))
        .unwrap();
    let out = rig.drain();
    assert_eq!(
        notes(&out),
        vec![Notification::ProbeAnswered {
            server: rig.id(A),
            attempt,
            rtt: secs(10.5)
        }]
    );
    // The answer moves the link's one deadline to one idle interval after
    // it: the old probe deadline no longer wakes the driver.
    assert_eq!(rig.pool.poll_timeout(), Some(rig.at(70.5)));
    assert!(rig.advance_to(50.0).is_empty(), "not lost, not probed");
    assert_eq!(rig.pool.poll_timeout(), Some(rig.at(70.5)));
    assert_eq!(probes(&rig.advance_to(70.5)).len(), 1);
    assert_eq!(rig.pool.connected_count(), 1);
}

#[test]
fn signs_of_life_postpone_the_probe() {
    let (mut rig, attempt) = connected_link();
    for t in [10.0, 25.0, 50.0] {
        rig.now = rig.at(t);
        rig.pool
            .handle_input(rig.now, Input::LinkActive(attempt))
            .unwrap();
        rig.drain();
    }
    // Stale entries may wake the driver early; they never probe early.
    for t in [30.0, 55.0, 79.9] {
        assert!(probes(&rig.advance_to(t)).is_empty(), "no probe at {t}");
    }
    assert_eq!(probes(&rig.advance_to(80.0)).len(), 1);
    // Any line settles the probe, without an RTT (it was no answer).
    rig.now = rig.at(85.0);
    rig.pool
        .handle_input(rig.now, Input::LinkActive(attempt))
        .unwrap();
    assert!(rig.drain().is_empty());
    assert!(notes(&rig.advance_to(100.0)).is_empty(), "not lost");
}

#[test]
fn a_silent_link_is_lost_at_idle_plus_probe_timeout_and_redialed() {
    let (mut rig, attempt) = connected_link();
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    rig.drain();
    rig.advance_to(30.0);
    assert!(notes(&rig.advance_to(49.9)).is_empty());
    let out = rig.advance_to(50.0);
    assert_eq!(
        notes(&out)[..2],
        [
            Notification::Disconnected {
                server: rig.id(A),
                attempt,
                reason: DisconnectReason::Lost(LinkLoss::KeepaliveTimeout),
            },
            Notification::AllDown,
        ]
    );
    assert_eq!(rig.pool.connected_count(), 0);
    assert_eq!(
        rig.pool.status(rig.id(A)).unwrap().state,
        ServerState::WaitingRetry,
        "maintenance redials it"
    );
    // The lost link's late signals and losses are harmless.
    assert_eq!(
        rig.pool
            .handle_input(rig.now, Input::ProbeAnswered(attempt)),
        Err(InputError::UnknownAttempt(attempt))
    );
}

#[test]
fn a_link_without_a_probe_is_watched_only_for_its_end() {
    let (mut rig, attempt) = connected_link();
    assert_eq!(probes(&rig.advance_to(30.0)).len(), 1);
    rig.pool
        .handle_input(rig.now, Input::ProbeUnsupported(attempt))
        .unwrap();
    for t in [50.0, 500.0, 86_400.0] {
        let out = rig.advance_to(t);
        assert!(out.is_empty(), "{out:#?}");
    }
    assert_eq!(rig.pool.connected_count(), 1);
    assert_eq!(rig.pool.poll_timeout(), None);
}

#[test]
fn keepalive_settings_are_validated() {
    let mut config = PoolConfig::new([A]);
    config.keepalive.idle = secs(9.0);
    assert!(matches!(
        config.validate(),
        Err(ConfigError::ProbeTooFrequent { .. })
    ));
    config.keepalive.idle = Duration::MAX;
    assert!(matches!(
        config.validate(),
        Err(ConfigError::DurationTooLong { .. })
    ));
    config.keepalive = KeepalivePolicy::new(secs(30.0), Duration::ZERO);
    assert!(matches!(
        config.validate(),
        Err(ConfigError::ZeroDuration { .. })
    ));
    let defaults = PoolConfig::new([A]).keepalive;
    assert!(defaults.loss_bound() <= secs(120.0));
}

// ---- close_all, then a command at once --------------------------------------

#[test]
fn a_connect_right_after_close_all_waits_for_the_close_and_dials() {
    let mut rig = Rig::with(&[A, B]);
    rig.pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command");
    let d = dials(&rig.drain());
    rig.succeed(d[0].attempt);
    rig.succeed(d[1].attempt);
    let close = rig
        .pool
        .handle_command(rig.now, Command::CloseAll)
        .expect("a valid command")
        .expect("an operation");
    let closes: Vec<_> = rig
        .drain()
        .into_iter()
        .filter_map(|o| match o {
            Output::Close(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(closes.len(), 2);
    // The user asks for the pool again before the closes finished.
    let op = rig
        .pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command")
        .expect("an operation");
    assert!(
        dials(&rig.drain()).is_empty(),
        "nothing dials a link still closing"
    );
    rig.now = rig.at(0.1);
    rig.pool
        .handle_input(
            rig.now,
            Input::CloseFinished {
                attempt: closes[0].attempt,
                result: Ok(()),
            },
        )
        .unwrap();
    let out = rig.drain();
    let first = dial_to(&out, closes[0].server);
    rig.pool
        .handle_input(
            rig.now,
            Input::CloseFinished {
                attempt: closes[1].attempt,
                result: Ok(()),
            },
        )
        .unwrap();
    let out = rig.drain();
    let second = dial_to(&out, closes[1].server);
    assert_eq!(finished(&out).map(|r| r.id), Some(close));
    rig.succeed(first);
    let report = finished(&rig.succeed(second)).expect("the connect finished");
    assert_eq!((report.id, report.connected), (op, 2));

    // close_all is the last word: a close_all after the command cancels
    // the redial.
    let mut rig = Rig::with(&[A]);
    rig.pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command");
    let a = dials(&rig.drain())[0].attempt;
    rig.succeed(a);
    rig.pool
        .handle_command(rig.now, Command::CloseAll)
        .expect("a valid command");
    rig.drain();
    rig.pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command");
    rig.pool
        .handle_command(rig.now, Command::CloseAll)
        .expect("a valid command");
    rig.drain();
    rig.pool
        .handle_input(
            rig.now,
            Input::CloseFinished {
                attempt: a,
                result: Ok(()),
            },
        )
        .unwrap();
    assert!(dials(&rig.drain()).is_empty());
}

#[test]
fn a_nick_still_registered_is_retried_and_never_gives_up() {
    let mut rig = maintained(2);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    let a = rig.id(A);
    let mut attempt = dial_to(&rig.drain(), a);
    for _ in 0..5 {
        let out = rig.fail(attempt, DialFailure::NickInUse);
        assert!(
            !notes(&out)
                .iter()
                .any(|n| matches!(n, Notification::GaveUp { .. })),
            "{out:#?}"
        );
        let at = rig.pool.poll_timeout().expect("a retry is scheduled");
        rig.now = at;
        rig.pool.handle_timeout(at);
        attempt = dial_to(&rig.drain(), a);
    }
    assert_eq!(rig.pool.status(a).unwrap().consecutive_failures, 0);
}

// ---- health ------------------------------------------------------------------

#[test]
fn health_reports_ages_errors_and_counts_against_the_given_now() {
    use dirpool_core::{LinkCounts, ProxyState, RecentError, ServerError};

    let mut config = PoolConfig::new([A, B]);
    config.keepalive = KeepalivePolicy::new(secs(30.0), secs(20.0));
    config.maintenance.backoff = Backoff::new(secs(5.0), secs(5.0), 1.0);
    let mut rig = Rig::new(config);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    let out = rig.drain();
    let (a, b) = (dial_to(&out, rig.id(A)), dial_to(&out, rig.id(B)));
    rig.succeed(a);
    rig.now = rig.at(2.0);
    rig.fail(b, DialFailure::Socks(SocksReply::HostUnreachable));

    // A at t=30 is probed; answered 0.25 s later.
    rig.advance_to(30.0);
    rig.now = rig.at(30.25);
    rig.pool
        .handle_input(rig.now, Input::ProbeAnswered(a))
        .unwrap();
    rig.drain();

    let health = rig.pool.health(rig.at(40.0));
    assert_eq!(health.proxy, ProxyState::Reachable);
    assert!(health.maintenance);
    let mut expected = LinkCounts::default();
    expected.up = 1;
    expected.connecting = 1; // B's redial (backoff 5 s) went out at t=7
    assert_eq!(health.counts, expected);
    assert_eq!(health.counts.total(), 2);
    let (ha, hb) = (&health.servers[0], &health.servers[1]);
    assert_eq!(ha.state, ServerState::Connected);
    assert_eq!(ha.connected_for, Some(secs(40.0)));
    assert_eq!(ha.quiet_for, Some(secs(9.75)), "since the probe's answer");
    assert_eq!(ha.last_probe_rtt, Some(secs(0.25)));
    assert_eq!(ha.last_error, None);
    assert_eq!(hb.state, ServerState::Dialing);
    assert_eq!(
        hb.last_error,
        Some(RecentError {
            error: ServerError::Dial(DialFailure::Socks(SocksReply::HostUnreachable)),
            ago: secs(38.0),
        })
    );
    assert_eq!((hb.quiet_for, hb.last_probe_rtt), (None, None));

    // A's link is lost at t=41: its error is the loss; its probe figures go.
    rig.now = rig.at(41.0);
    rig.pool
        .handle_input(
            rig.now,
            Input::LinkLost {
                attempt: a,
                loss: LinkLoss::ClosedByPeer,
            },
        )
        .unwrap();
    rig.drain();
    let health = rig.pool.health(rig.at(42.5));
    let ha = &health.servers[0];
    assert_eq!(ha.state, ServerState::WaitingRetry);
    assert_eq!(
        ha.last_error,
        Some(RecentError {
            error: ServerError::Link(LinkLoss::ClosedByPeer),
            ago: secs(1.5),
        })
    );
    assert_eq!((ha.connected_for, ha.quiet_for), (None, None));
    assert_eq!(ha.next_retry_in, Some(secs(3.5)));
    assert_eq!(health.counts.backing_off, 1);
    let status = rig.pool.status(rig.id(A)).unwrap();
    assert_eq!(
        status.last_probe_rtt,
        Some(secs(0.25)),
        "kept until the next link"
    );

    // Reconnected: the old link's round trip is not this link's.
    let out = rig.advance_to(46.0);
    rig.succeed(dial_to(&out, rig.id(A)));
    assert_eq!(rig.pool.status(rig.id(A)).unwrap().last_probe_rtt, None);

    // A proxy failure is the pool's state, not the server's.
    rig.pool
        .handle_command(rig.now, Command::CloseAll)
        .expect("a valid command");
    let mut rig = Rig::with(&[C]);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    let out = rig.drain();
    rig.fail(dial_to(&out, rig.id(C)), DialFailure::ProxyUnreachable);
    let health = rig.pool.health(rig.now);
    assert_eq!(health.proxy, ProxyState::Unreachable);
    assert_eq!(health.servers[0].state, ServerState::WaitingForProxy);
    assert_eq!(health.counts.backing_off, 1);
}

// ---- edges found by mutation testing (scripts/mutants) ----------------------

#[test]
fn a_command_with_an_earlier_now_is_timed_from_the_latest_now() {
    let mut rig = Rig::with(&[A]);
    rig.pool.handle_timeout(rig.at(10.0));
    rig.pool
        .handle_command(rig.at(5.0), Command::ConnectAllParallel)
        .expect("a valid command");
    let dial = dials(&rig.drain()).remove(0);
    // Connection timeout 120 s, from t=10 (the clock never goes back).
    assert_eq!(rig.elapsed(dial.deadline), 130.0);
}

#[test]
fn connect_all_with_retry_restarts_a_failing_server_s_backoff() {
    let mut config = PoolConfig::new([A]);
    config.maintenance.backoff = Backoff::new(secs(1.0), secs(64.0), 2.0);
    let mut rig = Rig::new(config);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    let mut attempt = dial_to(&rig.drain(), rig.id(A));
    // Maintenance's backoff grows: 1, 2, 4 s.
    for (t, expected) in [(0.0, 1.0), (1.0, 2.0), (3.0, 4.0)] {
        rig.now = rig.at(t);
        assert_eq!(fail_and_retry_in(&mut rig, attempt), Some(expected));
        let out = rig.advance_to(t + expected);
        attempt = dial_to(&out, rig.id(A));
    }
    // The user's retry starts the server's backoff over: 5 s (the policy's
    // first delay), not maintenance's step 3 on the retry policy (16.9 s).
    rig.pool
        .handle_command(rig.now, Command::ConnectAllWithRetry(no_jitter_retry(60.0)))
        .expect("a valid command");
    rig.drain();
    assert_eq!(fail_and_retry_in(&mut rig, attempt), Some(5.0));
}

#[test]
fn a_retry_right_after_close_all_waits_for_the_close_and_dials() {
    let mut rig = Rig::with(&[A]);
    rig.pool
        .handle_command(rig.now, Command::ConnectAllParallel)
        .expect("a valid command");
    let a = dials(&rig.drain())[0].attempt;
    rig.succeed(a);
    rig.pool
        .handle_command(rig.now, Command::CloseAll)
        .expect("a valid command");
    rig.drain();
    rig.pool
        .handle_command(rig.now, Command::ConnectAllWithRetry(no_jitter_retry(60.0)))
        .expect("a valid command");
    assert!(dials(&rig.drain()).is_empty(), "not while it closes");
    rig.pool
        .handle_input(
            rig.now,
            Input::CloseFinished {
                attempt: a,
                result: Ok(()),
            },
        )
        .unwrap();
    dial_to(&rig.drain(), rig.id(A));
}

#[test]
fn link_counts_add_up_to_the_servers_and_never_go_below_zero() {
    use dirpool_core::LinkCounts;
    let states = [
        ServerState::Connected,
        ServerState::Dialing,
        ServerState::WaitingRetry,
        ServerState::WaitingForProxy,
        ServerState::GaveUp,
        ServerState::Idle,
        ServerState::Closing,
    ];
    let mut counts = LinkCounts::default();
    for (n, state) in states.into_iter().enumerate() {
        for _ in 0..=n {
            counts.add(state);
        }
    }
    // 1 + 2 + ... + 7 servers, each in one count.
    assert_eq!(counts.total(), 28);
    assert_eq!(
        (counts.up, counts.connecting, counts.backing_off),
        (1, 2, 3 + 4)
    );
    assert_eq!((counts.given_up, counts.idle, counts.closing), (5, 6, 7));
    counts.remove(ServerState::Closing);
    counts.remove(ServerState::WaitingForProxy);
    assert_eq!(
        (counts.closing, counts.backing_off, counts.total()),
        (6, 6, 26)
    );
    let mut empty = LinkCounts::default();
    empty.remove(ServerState::Connected);
    assert_eq!((empty.up, empty.total()), (0, 0));
}

#[test]
fn only_the_probe_s_failures_slow_the_probing() {
    let mut config = PoolConfig::new([A, B, C]);
    config.maintenance.backoff = Backoff::new(secs(1.0), secs(8.0), 2.0);
    let mut rig = Rig::new(config);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    let d = dials(&rig.drain());
    rig.fail(d[0].attempt, DialFailure::ProxyUnreachable);
    // A dial from before the proxy went down times out: the server's own
    // failure, not a probe's; the probes keep their pace.
    rig.fail(d[1].attempt, DialFailure::TimedOut);
    rig.fail(d[2].attempt, DialFailure::ProxyUnreachable);
    let mut t = 0.0;
    for want in [1.0, 2.0, 4.0] {
        let due = rig.elapsed(rig.pool.poll_timeout().expect("probe scheduled"));
        assert!(
            (due - t - want).abs() < 1e-9,
            "probe after {} s, want {want}",
            due - t
        );
        t = due;
        let probe = dials(&rig.advance_to(t));
        assert_eq!(probe.len(), 1, "exactly one probe");
        rig.fail(probe[0].attempt, DialFailure::ProxyUnreachable);
    }
}

/// Three servers under maintenance (backoff 1 s, ×2, at most 8 s), their
/// first dials in flight.
fn three_maintained() -> (Rig, Vec<DialRequest>) {
    let mut config = PoolConfig::new([A, B, C]);
    config.maintenance.backoff = Backoff::new(secs(1.0), secs(8.0), 2.0);
    let mut rig = Rig::new(config);
    rig.pool
        .handle_command(rig.now, Command::StartMaintenance)
        .expect("a valid command");
    let d = dials(&rig.drain());
    (rig, d)
}

#[test]
fn a_proxy_failure_while_the_probe_is_in_flight_adds_no_probe() {
    let (mut rig, d) = three_maintained();
    rig.fail(d[0].attempt, DialFailure::ProxyUnreachable);
    let probe = dials(&rig.advance_to(1.0));
    assert_eq!(probe.len(), 1);
    // The other first dials fail on the proxy while the probe is out.
    rig.fail(d[1].attempt, DialFailure::ProxyUnreachable);
    rig.fail(d[2].attempt, DialFailure::ProxyUnreachable);
    // Nothing more until the probe's own deadline (connection timeout).
    let next = rig.pool.poll_timeout().expect("the probe's deadline");
    assert_eq!(rig.elapsed(next), 121.0);
    assert!(
        dials(&rig.advance_to(60.0)).is_empty(),
        "one probe at a time"
    );
}

#[test]
fn a_proxy_failure_while_a_probe_is_scheduled_keeps_its_time() {
    let (mut rig, d) = three_maintained();
    rig.fail(d[0].attempt, DialFailure::ProxyUnreachable);
    let due = rig.pool.poll_timeout().expect("a probe");
    assert_eq!(rig.elapsed(due), 1.0);
    rig.now = rig.at(0.5);
    rig.fail(d[1].attempt, DialFailure::ProxyUnreachable);
    assert_eq!(rig.pool.poll_timeout(), Some(due), "not pushed back");
    assert_eq!(dials(&rig.advance_to(1.0)).len(), 1);
}

#[test]
fn stopping_maintenance_cancels_the_proxy_probe() {
    let (mut rig, d) = three_maintained();
    for dial in &d {
        rig.fail(dial.attempt, DialFailure::ProxyUnreachable);
    }
    assert!(rig.pool.poll_timeout().is_some(), "a probe is scheduled");
    rig.pool
        .handle_command(rig.now, Command::StopMaintenance)
        .expect("a valid command");
    rig.drain();
    assert_eq!(rig.pool.poll_timeout(), None, "nothing left to do");
    assert!(dials(&rig.advance_to(10.0)).is_empty());
}

#[test]
fn each_server_s_address_is_found_by_its_id_and_by_its_name() {
    let rig = Rig::with(&[B, A, "Example.COM"]);
    let listed: Vec<_> = rig
        .pool
        .servers()
        .map(|(id, addr)| (id, addr.clone()))
        .collect();
    assert_eq!(listed.len(), 3);
    for (id, addr) in &listed {
        assert_eq!(rig.pool.server_addr(*id), Some(addr));
        assert_eq!(rig.pool.find_server(addr.node_id()), Some(*id));
    }
    let example = rig.id("example.com");
    assert_eq!(
        rig.pool.server_addr(example).map(|a| a.node_id()),
        Some("example.com:5222")
    );
}

#[test]
fn the_pool_reports_the_timeouts_it_was_configured_with() {
    let mut config = PoolConfig::new([A]);
    config.connection_timeout = secs(7.0);
    config.close_timeout = secs(3.0);
    config.maintenance.max_retries = 4;
    let rig = Rig::new(config.clone());
    assert_eq!(rig.pool.connection_timeout(), secs(7.0));
    assert_eq!(rig.pool.close_timeout(), secs(3.0));
    assert_eq!(rig.pool.maintenance_policy(), &config.maintenance);
}

#[test]
fn many_jittered_retries_fire_in_time_order() {
    // Forty servers fail at once; jitter spreads their retries, so the
    // timer table holds forty deadlines in no particular order (a new
    // order for each jitter seed).
    let servers: Vec<String> = (1..=40).map(|i| format!("10.0.0.{i}:5222")).collect();
    for seed in 0..40 {
        let mut config = PoolConfig::new(servers.iter().map(String::as_str));
        config.maintenance.backoff = Backoff::new(secs(10.0), secs(60.0), 2.0).with_jitter(0.9);
        let entropy = Entropy {
            isolation_token: IsolationToken::from_bytes(TOKEN),
            jitter_seed: seed,
        };
        let t0 = Instant::now();
        let mut rig = Rig {
            pool: PoolState::new(config, entropy).expect("valid config"),
            t0,
            now: t0,
        };
        rig.pool
            .handle_command(rig.now, Command::StartMaintenance)
            .expect("a valid command");
        let mut due: Vec<(Instant, ServerId)> = Vec::new();
        for dial in dials(&rig.drain()) {
            let out = rig.fail(
                dial.attempt,
                DialFailure::Socks(SocksReply::HostUnreachable),
            );
            for note in notes(&out) {
                if let Notification::DialFailed {
                    server,
                    retry_at: Some(at),
                    ..
                } = note
                {
                    due.push((at, server));
                }
            }
        }
        assert_eq!(due.len(), 40);
        due.sort();
        // Each wake-up is the earliest retry left, and dials exactly it.
        for (at, server) in due {
            assert_eq!(rig.pool.poll_timeout(), Some(at), "seed {seed}");
            rig.now = at;
            rig.pool.handle_timeout(at);
            let redialed: Vec<_> = dials(&rig.drain()).iter().map(|d| d.server).collect();
            assert_eq!(redialed, [server], "seed {seed}");
        }
    }
}
