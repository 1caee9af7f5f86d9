//! The quick check behind the fast `pool_ops` fuzz target: a short run
//! (at most [`MAX_STEPS`] steps of the shared alphabet [`Step`]) on a
//! small pool, with invariants that cost a few comparisons per output.
//!
//! What it holds after every step (the numbers are ARCHITECTURE.md's):
//! a dial only for a server that is neither connected nor being dialed
//! (1, 2); every success registered or, when its dial was aborted, closed
//! as a stray (3); per server, `Connected` and `Disconnected` alternate and
//! name the live attempt (4); aborts, closes and probes name attempts in
//! the right state; every result the pool owes an answer to is taken, a
//! wrong one refused without an output; `connected_count` is the model's.
//! At the end, `close_all` and quiescence: no link, no operation, one
//! `Disconnected` per `Connected` (7).
//!
//! The deep model checker ([`check_pool`](super::check_pool), the
//! `pool_model` target) holds the rest: timing, backoff bounds, retry
//! deadlines, operation reports, credentials, keepalive, liveness.

use std::collections::BTreeMap;
use std::time::Instant;

use dirpool_core::{
    AttemptId, Command, DialDetail, DialFailure, Entropy, Input, IsolationToken, KeepalivePolicy,
    Notification, Output, PoolConfig, PoolState, ProxyReport,
};

use super::checker::{
    random_backoff, random_failure, random_loss, random_report, random_retry_policy,
};
use super::{Choices, Step};

/// The most steps one input plays (the deep checker plays 200 to 400).
pub const MAX_STEPS: usize = 16;

/// Servers the pool may be given (all distinct, none an onion: parsing an
/// onion's checksum would cost more than a step).
const SERVERS: &[&str] = &["127.0.0.1:5222", "127.0.0.2", "[::1]:5223", "dir.example"];

/// What the driver holds, as the outputs told it.
#[derive(Default)]
struct Held {
    /// Dials issued and not answered: server, and whether aborted.
    dials: BTreeMap<AttemptId, (usize, bool)>,
    /// Registered links, by attempt: their server.
    open: BTreeMap<AttemptId, usize>,
    /// Closes asked for and not answered: server, and whether stray.
    closes: BTreeMap<AttemptId, (usize, bool)>,
    /// Per server, the attempt its last `Connected` named, until its
    /// `Disconnected`.
    live: Vec<Option<AttemptId>>,
    /// The last few attempts owed nothing any more.
    answered: Vec<AttemptId>,
}

/// How many answered attempts are kept for wrong inputs.
const ANSWERED_KEPT: usize = 8;

/// What a quick run reached, to show the runs get somewhere.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QuickCounts {
    /// Steps played.
    pub steps: u64,
    /// Links registered.
    pub connected: u64,
    /// Late successes closed as strays.
    pub stray_closes: u64,
    /// Links lost.
    pub lost: u64,
    /// Probes asked for.
    pub probes: u64,
    /// Dials aborted (close_all or their deadline).
    pub aborts: u64,
    /// Wrong inputs refused.
    pub refused: u64,
}

struct Run {
    counts: QuickCounts,
    pool: PoolState,
    now: Instant,
    held: Held,
    servers: usize,
}

/// Plays one quick run decided by `data`.
///
/// # Errors
/// The broken invariant, with the step it broke at.
pub fn check_steps(data: &[u8]) -> Result<QuickCounts, String> {
    let mut choices = Choices::from_bytes(data);
    let servers = 1 + choices.index(SERVERS.len());
    let mut config = PoolConfig::new(SERVERS[..servers].iter().copied());
    config.connection_timeout = choices.millis(1_000, 60_000);
    config.close_timeout = choices.millis(500, 10_000);
    config.maintenance.backoff = random_backoff(&mut choices);
    config.maintenance.max_retries = u32::try_from(choices.below(3)).unwrap_or(0);
    config.keepalive = KeepalivePolicy::new(
        choices.millis(15_000, 60_000),
        choices.millis(1_000, 30_000),
    );
    let entropy = Entropy {
        isolation_token: IsolationToken::from_bytes([7; 16]),
        jitter_seed: choices.next_u64(),
    };
    let pool = PoolState::new(config, entropy).map_err(|e| format!("valid config refused: {e}"))?;
    let mut run = Run {
        counts: QuickCounts::default(),
        pool,
        now: Instant::now(),
        held: Held {
            live: vec![None; servers],
            ..Held::default()
        },
        servers,
    };
    for step in 0..MAX_STEPS {
        if choices.is_exhausted() {
            break;
        }
        let step_kind = choices.arbitrary().unwrap_or(Step::Time);
        run.step(&mut choices, step_kind)
            .map_err(|e| format!("step {step} ({step_kind:?}): {e}"))?;
        run.counts.steps += 1;
    }
    run.quiesce(&mut choices)
        .map_err(|e| format!("quiescence: {e}"))?;
    Ok(run.counts)
}

impl Run {
    fn step(&mut self, choices: &mut Choices, step: Step) -> Result<(), String> {
        match step {
            Step::Command(command) => {
                let command = match command {
                    Command::ConnectAllWithRetry(_) => {
                        Command::ConnectAllWithRetry(random_retry_policy(choices))
                    }
                    other => other,
                };
                // A policy out of range is refused; nothing may start then.
                let refused = self.pool.handle_command(self.now, command).is_err();
                self.drain(Taken::Command(command), refused)
            }
            Step::DialResult => {
                let Some((&attempt, _)) = nth(&self.held.dials, choices) else {
                    return self.advance(choices);
                };
                let result = if choices.chance(50) {
                    Ok(())
                } else {
                    Err(random_failure(choices, 10))
                };
                let taken = self
                    .pool
                    .handle_input(self.now, dial_finished(attempt, result));
                ensure!(
                    taken.is_ok(),
                    "the result of dial {attempt} refused: {taken:?}"
                );
                let (server, aborted) = self.held.dials.remove(&attempt).unwrap_or_default();
                self.drain(Taken::Input(attempt), false)?;
                if result.is_err() {
                    self.retire(attempt);
                } else {
                    // Invariant 3: registered, or closed as a stray.
                    let stray = self.held.closes.get(&attempt) == Some(&(server, true));
                    let open = self.held.open.contains_key(&attempt);
                    ensure!(
                        if aborted {
                            stray && !open
                        } else {
                            open && !stray
                        },
                        "inv 3: success of {attempt} (aborted: {aborted}): registered {open}, stray close {stray}"
                    );
                }
                Ok(())
            }
            Step::CloseResult => {
                let Some((&attempt, _)) = nth(&self.held.closes, choices) else {
                    return self.advance(choices);
                };
                let result = if choices.chance(70) {
                    Ok(())
                } else {
                    Err(dirpool_core::CloseFailure::Io(
                        std::io::ErrorKind::BrokenPipe,
                    ))
                };
                let taken = self
                    .pool
                    .handle_input(self.now, Input::CloseFinished { attempt, result });
                ensure!(
                    taken.is_ok(),
                    "the result of close {attempt} refused: {taken:?}"
                );
                self.held.closes.remove(&attempt);
                self.retire(attempt);
                self.drain(Taken::Input(attempt), false)
            }
            Step::LoseLink => {
                let Some((&attempt, _)) = nth(&self.held.open, choices) else {
                    return self.advance(choices);
                };
                let loss = random_loss(choices);
                let taken = self
                    .pool
                    .handle_input(self.now, Input::LinkLost { attempt, loss });
                ensure!(taken.is_ok(), "the loss of {attempt} refused: {taken:?}");
                self.counts.lost += 1;
                self.drain(Taken::Input(attempt), false)?;
                ensure!(
                    !self.held.open.contains_key(&attempt),
                    "{attempt} still registered after its loss"
                );
                self.retire(attempt);
                Ok(())
            }
            Step::LinkSignal => {
                let Some((&attempt, _)) = nth(&self.held.open, choices) else {
                    return self.advance(choices);
                };
                let input = match choices.below(3) {
                    0 => Input::LinkActive(attempt),
                    1 => Input::ProbeAnswered(attempt),
                    _ => Input::ProbeUnsupported(attempt),
                };
                let refused = self.pool.handle_input(self.now, input).is_err();
                self.drain(Taken::Input(attempt), refused)
            }
            Step::Time => self.advance(choices),
            Step::ProxyReport => {
                let report = random_report(choices);
                let taken = self
                    .pool
                    .handle_input(self.now, Input::ProxyReported(report));
                ensure!(taken.is_ok(), "a report was refused: {taken:?}");
                self.drain(Taken::Report(report), false)
            }
            Step::WrongInput => {
                // A result for an attempt already answered, or a dial
                // result for a registered link: neither fits.
                let input = if let Some(&attempt) = nth_of(&self.held.answered, choices) {
                    Input::CloseFinished {
                        attempt,
                        result: Ok(()),
                    }
                } else if let Some((&attempt, _)) = nth(&self.held.open, choices) {
                    dial_finished(attempt, Ok(()))
                } else {
                    return self.advance(choices);
                };
                let taken = self.pool.handle_input(self.now, input.clone());
                ensure!(taken.is_err(), "a wrong input {input:?} was taken");
                self.counts.refused += 1;
                self.drain(Taken::Wrong, true)
            }
        }
    }

    /// `attempt` is owed nothing any more: a stale id for wrong inputs.
    fn retire(&mut self, attempt: AttemptId) {
        if self.held.answered.len() == ANSWERED_KEPT {
            self.held.answered.remove(0);
        }
        self.held.answered.push(attempt);
    }

    /// Time moves (a little, a lot, or to the pool's next deadline) and
    /// the pool is told.
    fn advance(&mut self, choices: &mut Choices) -> Result<(), String> {
        let to = match choices.below(4) {
            0 => self.now + choices.millis(0, 2_000),
            1 => self.now + choices.millis(0, 600_000),
            _ => self.pool.poll_timeout().unwrap_or(self.now).max(self.now),
        };
        self.now = to;
        self.pool.handle_timeout(self.now);
        self.drain(Taken::Timeout, false)
    }

    /// Takes every output, checking each against what the driver holds.
    fn drain(&mut self, taken: Taken, refused: bool) -> Result<(), String> {
        while let Some(output) = self.pool.poll_output() {
            ensure!(!refused, "{output:?} after a refused input");
            self.check(taken, output)?;
        }
        ensure!(
            self.pool.connected_count() == self.held.open.len(),
            "connected_count {} but {} links registered",
            self.pool.connected_count(),
            self.held.open.len()
        );
        Ok(())
    }

    fn check(&mut self, taken: Taken, output: Output) -> Result<(), String> {
        let held = &mut self.held;
        let counts = &mut self.counts;
        match output {
            Output::Dial(d) => {
                let s = d.server.index();
                ensure!(s < self.servers, "dial for unknown server {}", d.server);
                ensure!(
                    held.live[s].is_none(),
                    "inv 2: dial {} for connected {}",
                    d.attempt,
                    d.server
                );
                ensure!(
                    !held.dials.values().any(|&(x, aborted)| x == s && !aborted),
                    "inv 2: dial {} for {} while it is being dialed",
                    d.attempt,
                    d.server
                );
                ensure!(
                    !held.dials.contains_key(&d.attempt)
                        && !held.open.contains_key(&d.attempt)
                        && !held.closes.contains_key(&d.attempt),
                    "attempt {} reused while in use",
                    d.attempt
                );
                // Invariant 14: Tor says wait, so nothing is dialed for it.
                ensure!(
                    !matches!(taken, Taken::Report(r) if r.holds_dials()),
                    "inv 14: dial {} on a not-ready report ({taken:?})",
                    d.attempt
                );
                held.dials.insert(d.attempt, (s, false));
            }
            Output::Abort(a) => {
                ensure!(
                    matches!(taken, Taken::Timeout | Taken::Command(Command::CloseAll)),
                    "Abort of {a} outside close_all and timeouts"
                );
                let dial = held.dials.get_mut(&a);
                ensure!(
                    dial.as_ref().is_some_and(|(_, aborted)| !aborted),
                    "Abort of {a}, which is no live dial"
                );
                if let Some((_, aborted)) = dial {
                    *aborted = true;
                }
                counts.aborts += 1;
            }
            Output::Close(c) => {
                let a = c.attempt;
                ensure!(!held.closes.contains_key(&a), "Close of {a} twice");
                if c.stray {
                    ensure!(
                        taken == Taken::Input(a),
                        "stray Close of {a} without its late success"
                    );
                    counts.stray_closes += 1;
                } else {
                    ensure!(
                        held.open.remove(&a) == Some(c.server.index()),
                        "Close of {a}, which is not registered for {}",
                        c.server
                    );
                }
                held.closes.insert(a, (c.server.index(), c.stray));
            }
            Output::Probe(p) => {
                counts.probes += 1;
                ensure!(
                    held.open.get(&p.attempt) == Some(&p.server.index()),
                    "Probe of {}, which is not registered for {}",
                    p.attempt,
                    p.server
                );
            }
            Output::Notify(Notification::Connected { server, attempt }) => {
                let s = server.index();
                ensure!(
                    taken == Taken::Input(attempt),
                    "Connected {attempt} without its success"
                );
                ensure!(
                    held.live[s].is_none(),
                    "inv 1/4: Connected {attempt} for {server}, still connected by {:?}",
                    held.live[s]
                );
                held.live[s] = Some(attempt);
                held.open.insert(attempt, s);
                counts.connected += 1;
            }
            Output::Notify(Notification::Disconnected {
                server, attempt, ..
            }) => {
                let s = server.index();
                ensure!(
                    held.live.get(s) == Some(&Some(attempt)),
                    "inv 4: Disconnected {attempt} for {server}, whose live link is {:?}",
                    held.live.get(s)
                );
                held.live[s] = None;
                held.open.remove(&attempt);
            }
            Output::Notify(Notification::AddressRejected { .. })
            | Output::Notify(Notification::DuplicateAddress { .. }) => {
                return Err("an address rejected after construction".to_owned());
            }
            Output::Notify(Notification::DialFailed {
                attempt, detail, ..
            }) => {
                // The driver's detail comes back with the failure it
                // reported, and none with the machine's own timeout.
                let handed_back = detail.map(|d| d.downcast::<AttemptId>().map(|a| *a));
                let want = match taken {
                    Taken::Input(a) if a == attempt => Some(Some(attempt)),
                    _ => None,
                };
                ensure!(
                    handed_back == want,
                    "DialFailed {attempt} hands back {handed_back:?} after {taken:?}"
                );
            }
            // Timing, backoff and reports are the deep checker's.
            Output::Notify(_) => {}
            other => {
                return Err(format!(
                    "an output the quick check does not know: {other:?}"
                ));
            }
        }
        Ok(())
    }

    /// `close_all`, then every owed result (dials fail, closes succeed)
    /// and every deadline, until nothing is left.
    fn quiesce(&mut self, choices: &mut Choices) -> Result<(), String> {
        let taken = self.pool.handle_command(self.now, Command::CloseAll);
        ensure!(taken.is_ok(), "close_all refused: {taken:?}");
        self.drain(Taken::Command(Command::CloseAll), false)?;
        // Each round answers one thing or fires the deadlines; close_all
        // starts nothing new, so this many rounds are enough.
        let rounds = 8 + 2 * (self.held.dials.len() + self.held.closes.len() + self.servers);
        for _ in 0..rounds {
            if let Some((&attempt, _)) = self.held.dials.iter().next() {
                let result = Err(random_failure(choices, 0));
                let taken = self
                    .pool
                    .handle_input(self.now, dial_finished(attempt, result));
                ensure!(
                    taken.is_ok(),
                    "the result of dial {attempt} refused: {taken:?}"
                );
                self.held.dials.remove(&attempt);
                self.drain(Taken::Input(attempt), false)?;
            } else if let Some((&attempt, _)) = self.held.closes.iter().next() {
                let taken = self.pool.handle_input(
                    self.now,
                    Input::CloseFinished {
                        attempt,
                        result: Ok(()),
                    },
                );
                ensure!(
                    taken.is_ok(),
                    "the result of close {attempt} refused: {taken:?}"
                );
                self.held.closes.remove(&attempt);
                self.drain(Taken::Input(attempt), false)?;
            } else if let Some(at) = self.pool.poll_timeout() {
                self.now = self.now.max(at);
                self.pool.handle_timeout(self.now);
                self.drain(Taken::Timeout, false)?;
            } else {
                break;
            }
        }
        ensure!(
            self.held.dials.is_empty() && self.held.closes.is_empty() && self.held.open.is_empty(),
            "inv 7: after close_all, dials {:?} closes {:?} links {:?}",
            self.held.dials,
            self.held.closes,
            self.held.open
        );
        ensure!(
            self.held.live.iter().all(Option::is_none),
            "inv 7: a Connected without its Disconnected: {:?}",
            self.held.live
        );
        ensure!(
            self.pool.operations_in_progress() == 0,
            "inv 7: {} operations still running",
            self.pool.operations_in_progress()
        );
        Ok(())
    }
}

/// What the outputs being drained answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Taken {
    Command(Command),
    Input(AttemptId),
    Report(ProxyReport),
    Timeout,
    Wrong,
}

/// The result of dial `attempt`; a failure carries the attempt as its
/// detail, which its `DialFailed` must hand back.
fn dial_finished(attempt: AttemptId, result: Result<(), DialFailure>) -> Input {
    Input::DialFinished {
        attempt,
        result,
        detail: result.is_err().then(|| DialDetail::new(attempt)),
    }
}

/// The entry `choices` picks, if there is any.
fn nth<'a, K, V>(map: &'a BTreeMap<K, V>, choices: &mut Choices) -> Option<(&'a K, &'a V)> {
    if map.is_empty() {
        return None;
    }
    map.iter().nth(choices.index(map.len()))
}

/// The item `choices` picks, if there is any.
fn nth_of<'a, T>(items: &'a [T], choices: &mut Choices) -> Option<&'a T> {
    if items.is_empty() {
        return None;
    }
    Some(choices.pick(items))
}
