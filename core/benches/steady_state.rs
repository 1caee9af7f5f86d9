//! Steady-state cost of `PoolState` per input, heap allocations per input,
//! and heap bytes per configured server.
//!
//! A scripted world drives the machine on a virtual clock, one input per
//! [`World::step`]:
//!
//! * **an input** is one call of `handle_timeout`, `dial_failed`,
//!   `dial_succeeded` or `connection_lost`, or one `Some` taken from
//!   `poll_output`. `poll_timeout` is not counted (it is called before each
//!   `handle_timeout`, and its cost is in that step's time);
//! * cycle **dial_fail**: maintenance on, every dial fails at once with a
//!   server-side SOCKS error (onion descriptor not found), so each server
//!   goes dial → fail → backoff timer → dial for ever (default maintenance
//!   policy: 1 s ×2 up to 10 s, ±20 % jitter; 120 s connection timeout);
//! * cycle **connect_lose**: every dial succeeds at once and the link is
//!   lost as soon as the world hears of it: dial → connected → lost →
//!   backoff timer → redial.
//! * cycle **keepalive**: every dial succeeds and every link stays up; the
//!   machine probes each link once per quiet interval (default keepalive:
//!   30 s idle) and the world answers every probe at once, and reports a
//!   sign of life (`link_active`) after each answer, as a directory's next
//!   line would: probe timer → probe → answer → sign of life → re-armed
//!   timer.
//! * cycle **keepalive_lost**: every dial succeeds, and no probe is ever
//!   answered: probe timer → probe → probe deadline → link lost (silent) →
//!   backoff timer → redial → connected.
//!
//! Each size is warmed up for 200 virtual seconds first (every server at
//! its maximum backoff, every stale 120 s dial deadline in the timer heap at
//! its steady level). Servers are v3 onion addresses (the longest realistic
//! names) with per-category stream isolation on.
//!
//! `cargo bench -p dirpool-core --bench steady_state` measures 10, 1,000
//! and 100,000 servers and prints the allocation and memory figures. Under
//! `cargo test` (criterion's test mode, no `--bench` argument) only 10 and
//! 1,000 servers are set up, and each benchmark runs once.
//!
//! For a load-independent count, run the binary under callgrind with
//! `DIRPOOL_CALLGRIND=<cycle>:<servers>:<steps>`: it warms up, then makes
//! `<steps>` steps inside `measured_steps`, the only function collected with
//! `--toggle-collect='*measured_steps*'` (see the README).
#![allow(
    clippy::print_stdout,
    reason = "the bench prints its allocation and memory figures"
)]

use std::alloc::System;
use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use dirpool_core::{
    AttemptId, Command, DialFailure, Entropy, Input, IsolationScope, IsolationToken, LinkLoss,
    Notification, Output, PoolConfig, PoolState, SocksReply,
};
use sha3::{Digest, Sha3_256};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Virtual time each world runs before it is measured.
const WARM_UP: Duration = Duration::from_secs(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cycle {
    DialFail,
    ConnectLose,
    Keepalive,
    KeepaliveLost,
}

impl Cycle {
    const ALL: [Cycle; 4] = [
        Cycle::DialFail,
        Cycle::ConnectLose,
        Cycle::Keepalive,
        Cycle::KeepaliveLost,
    ];

    fn name(self) -> &'static str {
        match self {
            Cycle::DialFail => "dial_fail",
            Cycle::ConnectLose => "connect_lose",
            Cycle::Keepalive => "keepalive",
            Cycle::KeepaliveLost => "keepalive_lost",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// What the world owes the machine.
#[derive(Debug, Clone, Copy)]
enum Due {
    Failed(AttemptId),
    Succeeded(AttemptId),
    Lost(AttemptId),
    Answered(AttemptId),
    Active(AttemptId),
}

/// The machine and the scripted world around it.
struct World {
    pool: PoolState,
    cycle: Cycle,
    t0: Instant,
    now: Instant,
    due: VecDeque<Due>,
}

/// A valid v3 onion address (`<56 base32 chars>.onion`) made from `n`.
fn onion(n: u64) -> String {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&n.to_le_bytes());
    key[8..16].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    let mut hasher = Sha3_256::new();
    hasher.update(b".onion checksum");
    hasher.update(key);
    hasher.update([3u8]);
    let checksum = hasher.finalize();
    let mut raw = key.to_vec();
    raw.extend_from_slice(&checksum[..2]);
    raw.push(3);
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut label = String::with_capacity(62);
    let (mut bits, mut acc) = (0u32, 0u32);
    for byte in raw {
        acc = (acc << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            label.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    label.push_str(".onion");
    label
}

fn config(servers: usize) -> PoolConfig {
    let mut config = PoolConfig::new((0..servers as u64).map(onion));
    config.isolation = IsolationScope::PerCategory;
    config
}

fn entropy() -> Entropy {
    Entropy {
        isolation_token: IsolationToken::from_bytes(*b"dirpool-benchtkn"),
        jitter_seed: 7,
    }
}

impl World {
    fn new(cycle: Cycle, servers: usize) -> Self {
        let pool = PoolState::new(config(servers), entropy()).expect("valid configuration");
        let t0 = Instant::now();
        let mut world = World {
            pool,
            cycle,
            t0,
            now: t0,
            // Never grows once built: at most one result per server is due.
            due: VecDeque::with_capacity(servers * 2 + 16),
        };
        world
            .pool
            .handle_command(t0, Command::StartMaintenance)
            .expect("a valid command");
        world
    }

    /// Feeds the machine exactly one input.
    #[inline(always)]
    fn step(&mut self) {
        if let Some(output) = self.pool.poll_output() {
            match &output {
                Output::Dial(dial) => self.due.push_back(match self.cycle {
                    Cycle::DialFail => Due::Failed(dial.attempt),
                    Cycle::ConnectLose | Cycle::Keepalive | Cycle::KeepaliveLost => {
                        Due::Succeeded(dial.attempt)
                    }
                }),
                Output::Notify(Notification::Connected { attempt, .. })
                    if self.cycle == Cycle::ConnectLose =>
                {
                    self.due.push_back(Due::Lost(*attempt));
                }
                // keepalive_lost: the probe goes unanswered and the link is
                // declared lost at the probe's deadline.
                Output::Probe(probe) if self.cycle == Cycle::Keepalive => {
                    self.due.push_back(Due::Answered(probe.attempt));
                }
                Output::Notify(Notification::ProbeAnswered { attempt, .. }) => {
                    self.due.push_back(Due::Active(*attempt));
                }
                _ => {}
            }
            black_box(output);
        } else if let Some(due) = self.due.pop_front() {
            let now = self.now;
            let result = match due {
                Due::Failed(attempt) => self.pool.handle_input(
                    now,
                    Input::DialFinished {
                        attempt,
                        result: Err(DialFailure::Socks(SocksReply::OnionDescriptorNotFound)),
                        detail: None,
                    },
                ),
                Due::Succeeded(attempt) => self.pool.handle_input(
                    now,
                    Input::DialFinished {
                        attempt,
                        result: Ok(()),
                        detail: None,
                    },
                ),
                Due::Lost(attempt) => self.pool.handle_input(
                    now,
                    Input::LinkLost {
                        attempt,
                        loss: LinkLoss::ClosedByPeer,
                    },
                ),
                Due::Answered(attempt) => {
                    self.pool.handle_input(now, Input::ProbeAnswered(attempt))
                }
                Due::Active(attempt) => self.pool.handle_input(now, Input::LinkActive(attempt)),
            };
            result.expect("the world only reports attempts the machine issued");
        } else {
            let at = self.pool.poll_timeout().expect("maintenance keeps a timer");
            self.now = self.now.max(at);
            self.pool.handle_timeout(self.now);
        }
    }

    fn warm_up(&mut self) {
        while self.now.duration_since(self.t0) < WARM_UP {
            self.step();
        }
    }
}

/// The only code `DIRPOOL_CALLGRIND` runs collect instructions in.
#[inline(never)]
fn measured_steps(world: &mut World, steps: u64) {
    for _ in 0..steps {
        world.step();
    }
}

fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn sizes() -> &'static [usize] {
    if full_run() {
        &[10, 1_000, 100_000]
    } else {
        &[10, 1_000]
    }
}

fn steady_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("core_steady_state");
    group.throughput(Throughput::Elements(1));
    for &cycle in &Cycle::ALL {
        for &servers in sizes() {
            let mut world = World::new(cycle, servers);
            world.warm_up();
            group.bench_function(BenchmarkId::new(cycle.name(), servers), |b| {
                b.iter(|| world.step());
            });
        }
    }
    group.finish();
}

/// Heap allocations (allocations plus reallocations) per steady-state input.
fn allocations_per_input() {
    let steps: u64 = if full_run() { 2_000_000 } else { 20_000 };
    for &cycle in &Cycle::ALL {
        for &servers in sizes() {
            let mut world = World::new(cycle, servers);
            world.warm_up();
            let region = Region::new(GLOBAL);
            measured_steps(&mut world, steps);
            let change = region.change();
            let allocations = change.allocations + change.reallocations;
            println!(
                "core_allocations/{}/{servers}: {allocations} allocations in {steps} inputs \
                 ({:.6} per input)",
                cycle.name(),
                allocations as f64 / steps as f64
            );
        }
    }
}

/// Live heap bytes per configured server: right after `PoolState::new`
/// (the configuration consumed), and after the dial_fail warm-up.
fn memory_per_server() {
    let servers = *sizes().last().expect("at least one size");
    // stats_alloc already counts a reallocation's growth in
    // `bytes_allocated` and its shrinking in `bytes_deallocated`
    // (`bytes_reallocated` is their net, so adding it would count growth
    // twice).
    let live = |region: &Region<'_, System>| {
        let change = region.change();
        change.bytes_allocated as f64 - change.bytes_deallocated as f64
    };
    let region = Region::new(GLOBAL);
    let pool = PoolState::new(config(servers), entropy()).expect("valid configuration");
    let built = live(&region);
    drop(pool);
    let region = Region::new(GLOBAL);
    let mut world = World::new(Cycle::DialFail, servers);
    world.warm_up();
    let warm = live(&region);
    let due = (world.due.capacity() * std::mem::size_of::<Due>()) as f64;
    println!(
        "core_memory/{servers}: {:.0} B per server after PoolState::new, \
         {:.0} B per server in steady state (dial_fail, 200 s; the bench's own \
         result queue excluded)",
        built / servers as f64,
        (warm - due) / servers as f64
    );
    // Queries are not steady-state inputs; say what they allocate.
    let region = Region::new(GLOBAL);
    let statuses = world.pool.statuses().count();
    let connected = world.pool.connected().count();
    let change = region.change();
    black_box((statuses, connected));
    println!(
        "core_queries/{servers}: statuses() + connected() over every server: {} allocations",
        change.allocations + change.reallocations
    );
}

/// `DIRPOOL_CALLGRIND=<cycle>:<servers>:<steps>`: warm up, then run the
/// measured steps only (for `valgrind --tool=callgrind`).
fn callgrind(spec: &str) {
    let mut parts = spec.split(':');
    let (Some(cycle), Some(servers), Some(steps)) = (
        parts.next().and_then(Cycle::parse),
        parts.next().and_then(|s| s.parse().ok()),
        parts.next().and_then(|s| s.parse().ok()),
    ) else {
        panic!("DIRPOOL_CALLGRIND must be <dial_fail|connect_lose>:<servers>:<steps>");
    };
    let mut world = World::new(cycle, servers);
    world.warm_up();
    measured_steps(&mut world, steps);
    println!("{}/{servers}: {steps} inputs measured", cycle.name());
}

fn main() {
    if let Ok(spec) = std::env::var("DIRPOOL_CALLGRIND") {
        callgrind(&spec);
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    steady_state(&mut criterion);
    criterion.final_summary();
    allocations_per_input();
    memory_per_server();
}
