//! Prints the whole trace of one simulation seed (or its failure):
//! `cargo run -p dirpool-tests --example sim_trace -- SEED`.
#![allow(clippy::print_stdout)]
fn main() {
    let seed = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    match dirpool_tests::sim::world::run(seed) {
        Ok(trace) => println!("{}\n({} lines)", trace.0.join("\n"), trace.0.len()),
        Err(f) => println!("{f}"),
    }
}
