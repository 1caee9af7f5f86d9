//! Drives `PoolState` through a scripted world on a virtual clock: no Tor,
//! no sockets, no waiting. Four directories: one healthy, one blackholed
//! (dials hang until the machine's timeout), one that comes up 20 s late
//! (Tor still bootstrapping its circuits), one that drops its link after a
//! while and comes back; and Tor itself is down for the first 3 s.
//!
//! Run: `cargo run -p dirpool-core --example walkthrough`
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dirpool_core::{
    AttemptId, Command, DialFailure, Entropy, Input, IsolationScope, IsolationToken, LinkLoss,
    Notification, Output, PoolConfig, PoolState, RetryPolicy, SocksReply,
};

const HEALTHY: &str = "127.0.0.1:5222";
const BLACKHOLED: &str = "127.0.0.2:5222";
const LATE: &str = "127.0.0.3:5222";
const FLAPPING: &str = "127.0.0.4:5222";

/// What the scripted world does with a dial started at `t` seconds.
enum Fate {
    Succeed(f64),
    Fail(f64, DialFailure),
    Hang,
}

fn fate(node: &str, t: f64) -> Fate {
    if t < 3.0 {
        return Fate::Fail(0.001, DialFailure::ProxyUnreachable);
    }
    match node {
        HEALTHY | FLAPPING => Fate::Succeed(0.8),
        LATE if t >= 20.0 => Fate::Succeed(1.5),
        LATE => Fate::Fail(2.0, DialFailure::Socks(SocksReply::OnionDescriptorNotFound)),
        _ => Fate::Hang,
    }
}

enum Event {
    Result(AttemptId, Result<(), DialFailure>),
    Lost(AttemptId),
    Closed(AttemptId),
}

fn main() {
    let mut config = PoolConfig::new([HEALTHY, BLACKHOLED, LATE, FLAPPING, "not a server"]);
    config.connection_timeout = Duration::from_secs(30);
    config.isolation = IsolationScope::PerCategory;
    let entropy = Entropy {
        isolation_token: IsolationToken::from_bytes(*b"walkthrough-demo"),
        jitter_seed: 42,
    };
    let mut pool = PoolState::new(config, entropy).expect("valid configuration");
    let t0 = Instant::now();
    let secs = |t: Instant| t.duration_since(t0).as_secs_f64();
    // The world's pending events, by due time since t0, in order.
    let mut world: BTreeMap<(Duration, u64), Event> = BTreeMap::new();
    let mut seq = 0u64;
    let mut schedule = |world: &mut BTreeMap<(Duration, u64), Event>, at: f64, e: Event| {
        seq += 1;
        world.insert((Duration::from_secs_f64(at), seq), e);
    };

    let mut now = t0;
    pool.handle_command(
        now,
        Command::ConnectAllWithRetry(RetryPolicy::new(Duration::from_secs(60))),
    )
    .map(|op| op.expect("an operation"))
    .expect("valid policy");
    pool.handle_command(now, Command::StartMaintenance)
        .expect("a valid command");
    let mut closing = false;
    loop {
        // Drain every output, as a driver must after each input.
        while let Some(output) = pool.poll_output() {
            let t = secs(now);
            match output {
                Output::Dial(d) => {
                    let node = d.addr.node_id().to_owned();
                    let user = d.credentials.as_ref().map_or("-", |c| c.username());
                    println!(
                        "{t:7.3}s  dial    {node} (attempt {}, SOCKS user {user})",
                        d.attempt
                    );
                    match fate(&node, t) {
                        Fate::Succeed(after) => {
                            schedule(&mut world, t + after, Event::Result(d.attempt, Ok(())));
                            if node == FLAPPING && t < 30.0 {
                                schedule(&mut world, t + after + 15.0, Event::Lost(d.attempt));
                            }
                        }
                        Fate::Fail(after, why) => {
                            schedule(&mut world, t + after, Event::Result(d.attempt, Err(why)));
                        }
                        Fate::Hang => {}
                    }
                }
                Output::Abort(attempt) => {
                    println!("{t:7.3}s  abort   attempt {attempt}");
                    schedule(
                        &mut world,
                        t,
                        Event::Result(attempt, Err(DialFailure::Aborted)),
                    );
                }
                Output::Close(c) => {
                    println!("{t:7.3}s  close   attempt {}", c.attempt);
                    schedule(&mut world, t + 0.05, Event::Closed(c.attempt));
                }
                Output::Notify(n) => println!("{t:7.3}s  {}", describe(&pool, &n)),
                _ => {}
            }
        }
        if closing && pool.operations_in_progress() == 0 && world.is_empty() {
            break;
        }
        // Wake at the earliest of: the world's next event, the machine's timer.
        let next_event = world.keys().next().map(|&(at, _)| t0 + at);
        let next = match (next_event, pool.poll_timeout()) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).expect("something is always pending before close"),
        };
        if !closing && secs(next) >= 90.0 {
            now = t0 + Duration::from_secs(90);
            println!("{:7.3}s  --- close_all ---", secs(now));
            pool.handle_command(now, Command::CloseAll)
                .expect("a valid command");
            closing = true;
            continue;
        }
        now = next;
        pool.handle_timeout(now);
        while let Some(entry) = world.first_entry() {
            if t0 + entry.key().0 > now {
                break;
            }
            let result = match entry.remove() {
                Event::Result(a, Ok(())) => pool.handle_input(
                    now,
                    Input::DialFinished {
                        attempt: a,
                        result: Ok(()),
                        detail: None,
                    },
                ),
                Event::Result(a, Err(why)) => pool.handle_input(
                    now,
                    Input::DialFinished {
                        attempt: a,
                        result: Err(why),
                        detail: None,
                    },
                ),
                Event::Lost(a) => pool.handle_input(
                    now,
                    Input::LinkLost {
                        attempt: a,
                        loss: LinkLoss::ClosedByPeer,
                    },
                ),
                Event::Closed(a) => pool.handle_input(
                    now,
                    Input::CloseFinished {
                        attempt: a,
                        result: Ok(()),
                    },
                ),
            };
            // A loss for a link that was already closed is the only expected refusal.
            if let Err(e) = result {
                println!("{:7.3}s  (ignored: {e})", secs(now));
            }
        }
    }
    println!("\nfinal status:");
    for s in pool.statuses() {
        println!(
            "  {:<16} {:<12} attempts {:>2}  last failure: {}",
            s.addr.node_id(),
            format!("{:?}", s.state),
            s.attempts,
            s.last_failure.map_or("-".to_owned(), |f| f.to_string())
        );
    }
}

fn describe(pool: &PoolState, n: &Notification) -> String {
    let name = |id| {
        pool.server_addr(id)
            .map_or("?".to_owned(), |a| a.node_id().to_owned())
    };
    match n {
        Notification::Connected { server, .. } => format!("CONNECTED     {}", name(*server)),
        Notification::Disconnected { server, reason, .. } => {
            format!("DISCONNECTED  {} ({reason})", name(*server))
        }
        Notification::DialFailed {
            server,
            failure,
            retry_at,
            ..
        } => format!(
            "failed  {}: {failure}{}",
            name(*server),
            retry_at.map_or(String::new(), |_| ", will retry".to_owned())
        ),
        Notification::OperationFinished(r) => format!(
            "{:?} finished: {:?}, {} connected",
            r.kind, r.end, r.connected
        ),
        other => format!("{other:?}"),
    }
}
