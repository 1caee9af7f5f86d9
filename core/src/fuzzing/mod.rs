//! Fuzz target bodies and the checked runs they share with stable tests
//! (feature `fuzzing`).
//!
//! Each function here takes the raw bytes of one fuzzer input and panics
//! when a property is broken; the cargo-fuzz targets in `fuzz/` call them
//! on nightly, and `core/tests/fuzz_corpus.rs` replays every corpus and
//! regression file through them on stable. Not part of the stable API.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod alphabet;
mod choices;
mod pool_ops;
pub mod transitions;

pub use alphabet::Step;
pub use choices::Choices;

use crate::{ServerAddr, ServerState};

/// What a checked run of the pool that kept every invariant saw.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How often each interesting thing happened ("connections",
    /// "stray closes", …), to show the runs reach them.
    pub counts: BTreeMap<&'static str, u64>,
    /// Every step, when asked for.
    pub trace: Option<String>,
    /// Every distinct change of server state the run made (each one an
    /// edge of [`crate::diagram::EDGES`], or the run fails).
    pub transitions: BTreeSet<(ServerState, ServerState)>,
}

/// A checked run that broke an invariant, or panicked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RunFailure {
    /// What broke, then the last steps of the run.
    pub message: String,
}

/// Plays one run of the pool's model checker, drawing every decision from
/// `choices` (see [`Step`] for the alphabet), and checks the invariants of
/// `ARCHITECTURE.md` after every step. Afterwards `choices.consumed()` is the
/// fuzz input that replays the run.
///
/// # Errors
/// [`RunFailure`] naming the broken invariant, with the last steps.
pub fn check_pool(choices: &mut Choices, full_trace: bool) -> Result<RunReport, RunFailure> {
    let watch = transitions::Watch::start();
    let (stats, trace) =
        pool_ops::check(choices, full_trace).map_err(|message| RunFailure { message })?;
    let transitions = watch.seen();
    if let Some((from, to)) = transitions
        .iter()
        .find(|(from, to)| !crate::diagram::is_edge(*from, *to))
    {
        return Err(RunFailure {
            message: format!(
                "a server went from {from:?} to {to:?}, which is not an edge of the state diagram"
            ),
        });
    }
    Ok(RunReport {
        counts: stats.0,
        trace: trace.full,
        transitions,
    })
}

/// The `pool_ops` target: `data` decides a whole checked run.
///
/// # Panics
/// When the run breaks an invariant.
pub fn pool_ops(data: &[u8]) {
    if let Err(failure) = check_pool(&mut Choices::from_bytes(data), false) {
        panic!("pool_ops: {failure}");
    }
}

/// The `addr_parse` target: `data` (as text, invalid UTF-8 replaced) into
/// the address parser. Whatever parses must print back to text that parses
/// to the same server; an error must display. The first 32 bytes, as an
/// onion service key, must give an address that parses back too.
///
/// # Panics
/// When a property is broken.
pub fn addr_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match ServerAddr::parse(&text) {
        Ok(addr) => {
            let printed = addr.to_string();
            match ServerAddr::parse(&printed) {
                Ok(again) => assert!(
                    again == addr && again.node_id() == addr.node_id(),
                    "{text:?} parsed to {addr:?}, which printed as {printed:?}, which parsed to {again:?}"
                ),
                Err(e) => panic!(
                    "{text:?} parsed to {addr:?}, but its text {printed:?} does not parse: {e}"
                ),
            }
        }
        Err(e) => drop(e.to_string()),
    }
    if let Some(key) = data.first_chunk::<32>() {
        let port = u16::from_le_bytes([
            data.get(32).copied().unwrap_or(1),
            data.get(33).copied().unwrap_or(0),
        ])
        .max(1);
        let addr = ServerAddr::from_onion_key(key, port);
        let again = ServerAddr::parse(&addr.to_string());
        assert!(
            again.as_ref() == Ok(&addr),
            "the onion address {addr:?} of key {key:02x?} parses to {again:?}"
        );
    }
}

/// The checked-in inputs of a fuzz target: every file of
/// `fuzz/corpus/TARGET` (kept small and minimised) and of
/// `fuzz/regressions/TARGET` (each a crash the fuzzer found, now fixed),
/// in name order.
///
/// # Panics
/// When the corpus directory is missing or empty, or a file cannot be
/// read: a replay that finds nothing must not pass.
pub fn checked_in_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut inputs = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = fuzz.join(kind).join(target);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(_) if kind == "regressions" => continue,
            Err(e) => panic!("reading {}: {e}", dir.display()),
        };
        let mut paths: Vec<PathBuf> = entries
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
        paths.retain(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        });
        paths.sort();
        for path in paths {
            let data =
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            inputs.push((path, data));
        }
    }
    assert!(
        !inputs.is_empty(),
        "no corpus for fuzz target {target} under {}",
        fuzz.display()
    );
    inputs
}

/// Runs `body` (a target) on every checked-in input of `target`; a failing
/// file is named in the panic.
///
/// # Panics
/// When `body` panics on any input.
pub fn replay_checked_in(target: &str, body: fn(&[u8])) -> usize {
    let inputs = checked_in_inputs(target);
    for (path, data) in &inputs {
        if let Err(payload) = std::panic::catch_unwind(|| body(data)) {
            let text = panic_text(&*payload);
            panic!("fuzz target {target} fails on {}: {text}", path.display());
        }
    }
    inputs.len()
}

/// The message of a caught panic (empty if it carried no text).
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}
