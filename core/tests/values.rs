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
