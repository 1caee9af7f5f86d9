//! Figures of the long-lived-link simulation (`tests/src/sim/liveness.rs`),
//! from deterministic virtual-time runs of the real pool against modelled
//! directories:
//!
//! (a) time to declare a silent path lost at the default keepalive;
//! (b) probes per hour on a healthy idle link per directory profile, and
//!     PINGs from the directory per hour;
//! (c) evictions over 24 h idle against each profile (must be 0);
//! (d) peak bytes held per link under a flood nobody reads, vs the bound;
//! (e) what the default test seeds exercise.
//!
//! `cargo run -p dirpool-tests --example liveness_figures`
#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::time::Duration;

use dirpool_core::KeepalivePolicy;
use dirpool_tests::directory_model::DirectoryProfile;
use dirpool_tests::sim::liveness::{self, Plan, Report, Scenario};

fn base(plans: Vec<Plan>, duration: Duration) -> Scenario {
    liveness::base_scenario(plans, duration)
}

fn run(seed: u64, scenario: &Scenario) -> Report {
    liveness::run_scenario(seed, scenario).unwrap_or_else(|failure| panic!("{failure}"))
}

fn main() {
    // (a) silent paths, silence at a random instant within three hours.
    let mut rng = fastrand::Rng::with_seed(2024);
    let mut losses = Vec::new();
    let mut from_silence = Vec::new();
    for seed in 0..100 {
        let profile = if seed % 2 == 0 {
            DirectoryProfile::JoinmarketNg
        } else {
            DirectoryProfile::JoinmarketRs
        };
        let after = Duration::from_millis(rng.u64(1_000..3 * 3_600_000));
        let scenario = base(
            vec![Plan::Silent { profile, after }],
            after + Duration::from_secs(600),
        );
        let report = run(seed, &scenario);
        assert_eq!(report.silent_losses.len(), 1, "seed {seed}");
        losses.extend(report.silent_losses);
        from_silence.extend(report.silence_to_loss);
    }
    losses.sort();
    from_silence.sort();
    let bound = KeepalivePolicy::default().loss_bound();
    println!(
        "(a) silent path declared lost (default keepalive, bound {bound:?}), 100 seeds: min {:?}, median {:?}, max {:?}",
        losses[0],
        losses[losses.len() / 2],
        losses[losses.len() - 1]
    );
    println!(
        "    measured from the last byte the directory sent; from the instant the path went silent: min {:?}, median {:?}, max {:?}",
        from_silence[0],
        from_silence[from_silence.len() / 2],
        from_silence[from_silence.len() - 1]
    );

    // (b) and (c): one idle link per profile for 24 h, at the default
    // keepalive and at an idle of 900 s (past the directories' 600 s).
    let day = Duration::from_secs(24 * 3600);
    let hours = day.as_secs_f64() / 3600.0;
    for (label, keepalive) in [
        (
            "default keepalive (30 s + 30 s)",
            KeepalivePolicy::default(),
        ),
        (
            "keepalive idle 900 s",
            KeepalivePolicy::new(Duration::from_secs(900), Duration::from_secs(30)),
        ),
    ] {
        println!("(b)/(c) {label}, 24 h idle:");
        for profile in DirectoryProfile::ALL {
            let mut scenario = base(vec![Plan::Healthy(profile)], day);
            scenario.keepalive = keepalive;
            let report = run(1, &scenario);
            println!(
                "    {profile:?}: {:.1} probes/h sent ({:.1}/h reported answered), {:.1} directory PINGs/h, {} evictions or other directory closes",
                report.probes_sent as f64 / hours,
                report.probes_answered as f64 / hours,
                report.directory_pings as f64 / hours,
                report.directory_closes
            );
        }
    }

    // (d) floods nobody reads.
    for (max_line, inbound_bytes, outbound_bytes, line_len) in [
        (
            4_usize * 1024,
            16_usize * 1024 + 512,
            40_000_usize,
            2_900_usize,
        ),
        (64 * 1024, 1024 * 1024, 256 * 1024, 4_000),
        (64 * 1024, 1024 * 1024, 256 * 1024, 64 * 1024),
    ] {
        let tick = Duration::from_millis(100);
        let until = Duration::from_secs(120);
        let target = inbound_bytes * 4;
        let ticks = usize::try_from(until.as_millis() / tick.as_millis()).unwrap_or(1);
        let lines_per_tick = target.div_ceil(ticks * line_len).max(1);
        let mut scenario = base(
            vec![Plan::Flood {
                line_len,
                lines_per_tick,
                tick,
                until,
            }],
            Duration::from_secs(300),
        );
        scenario.max_line = max_line;
        scenario.inbound_bytes = inbound_bytes;
        scenario.outbound_bytes = outbound_bytes;
        let report = run(2, &scenario);
        println!(
            "(d) flood of {} lines of {line_len} B (max_line {max_line}, inbound {inbound_bytes}, outbound {outbound_bytes}): peak held {} B, bound {} B ({:.0} %), user then saw Lagged{:?}, {} directory PINGs answered",
            lines_per_tick * ticks,
            report.peak_held,
            report.held_bound,
            100.0 * report.peak_held as f64 / report.held_bound as f64,
            report.lagged_seen,
            report.directory_pings
        );
    }

    // (e) the default test seeds.
    let started = std::time::Instant::now();
    let mut totals = [0usize; 7];
    for seed in 0..40 {
        let report = liveness::run(seed).unwrap_or_else(|failure| panic!("{failure}"));
        let trace = &report.trace.0;
        totals[0] += report.silent_losses.len();
        totals[1] += report.lagged_seen.len();
        totals[2] += report.hooks_hung;
        totals[3] += trace
            .iter()
            .filter(|l| l.contains("lost: disconnected"))
            .count();
        totals[4] += trace
            .iter()
            .filter(|l| l.contains("event proxy unreachable"))
            .count();
        totals[5] += report.probes_sent;
        totals[6] += report.directory_pings;
    }
    println!(
        "(e) default seeds 0..40 ({:.1} s): {} silent paths declared lost, {} Lagged seen after floods, {} hung hooks timed out, {} DISCONNECTs, {} ProxyUnreachable, {} probes sent, {} directory PINGs answered",
        started.elapsed().as_secs_f64(),
        totals[0],
        totals[1],
        totals[2],
        totals[3],
        totals[4],
        totals[5],
        totals[6]
    );
}
