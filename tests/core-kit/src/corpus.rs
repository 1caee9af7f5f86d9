//! The checked-in inputs of the fuzz targets, replayed on stable.

use std::path::{Path, PathBuf};

/// The checked-in inputs of a fuzz target: every file of
/// `fuzz/corpus/TARGET` (kept small and minimised) and of
/// `fuzz/regressions/TARGET` (each a crash the fuzzer found, now fixed),
/// in name order.
///
/// # Panics
/// When the corpus directory is missing or empty, or a file cannot be
/// read: a replay that finds nothing must not pass.
pub fn checked_in_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
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

/// Runs `body` (a target) on every checked-in input of `target`, and
/// returns how many there were; a failing file is named in the panic.
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
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}
