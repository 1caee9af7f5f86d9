//! The addresses' canonical strings are built at their exact size (a
//! promise of `ServerAddr`'s code: no regrowing while the id is written, no
//! shrinking when it is boxed). Alone in its binary: the counters are
//! process-wide, so no other test may allocate meanwhile.

use std::alloc::System;

use dirpool_core::ServerAddr;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn canonical_ids_are_written_at_their_exact_size() {
    let onion = ServerAddr::from_onion_key(&[7; 32], 5222);
    let onion_host = onion.host().to_owned();
    // Every port width (1 to 5 digits) on every kind of host.
    let mut inputs = Vec::new();
    for port in ["1", "42", "443", "5222", "65535"] {
        for host in [
            "127.0.0.1",
            "[::1]",
            "[2001:db8::1]",
            "example.com",
            &onion_host,
        ] {
            inputs.push(format!("{host}:{port}"));
        }
    }
    inputs.extend(["[::1]".to_owned(), "Example.COM".to_owned()]);
    for input in &inputs {
        // IP literals are first printed by std (`IpAddr::to_string`, whose
        // own buffer may regrow): the id may reallocate that much, no more.
        let ip = ServerAddr::parse(input).expect("valid").ip();
        let region = Region::new(GLOBAL);
        let printed = ip.map(|ip| ip.to_string());
        let std_reallocations = region.change().reallocations;
        drop(printed);
        let region = Region::new(GLOBAL);
        let addr = ServerAddr::parse(input).expect("valid");
        let change = region.change();
        assert_eq!(
            change.reallocations,
            std_reallocations,
            "{input} -> {}",
            addr.node_id()
        );
        assert_eq!(ServerAddr::parse(addr.node_id()).as_ref(), Ok(&addr));
        drop(addr);
    }
}
