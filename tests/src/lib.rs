//! Test support for dirpool: loopback servers that tests drive.
//!
//! * [`SocksServer`]: a scriptable, recording SOCKS5 server (RFC 1928 and
//!   RFC 1929), standing in for Tor's SocksPort: per-host replies
//!   ([`Reply`]: forward to a real server, error code, stall, early close,
//!   garbage), authentication modes ([`AuthMode`]), going down and coming
//!   back on the same port.
//! * [`LineServer`]: a trivial line-protocol server standing in for a
//!   directory server ([`LineBehaviour`]: healthy, silent, closing, dropping
//!   after a while), which can drop its links, stop, restart on the same
//!   port, or start late.
//! * [`free_loopback_port`]: a port on which nothing listens.
//!
//! Everything runs on plain std threads with blocking I/O (no async
//! runtime), so the servers behave the same under tokio, under smol, and in
//! a process without any tokio runtime. Every server listens on `127.0.0.1`
//! only, and on drop closes its listener and every connection it holds and
//! joins all its threads.
//!
//! # Ports
//!
//! Servers are stopped and restarted *on the same port*, so their ports must
//! not be taken by someone else while they are down. A port from the OS's
//! ephemeral range (what binding port 0 gives) can be: by any `bind` to port
//! 0 in a parallel test, or as the source port of any outgoing connection
//! (such a socket then blocks the rebind for its whole life). So every
//! server (and [`free_loopback_port`]) picks a random free port *below* the
//! ephemeral range (on Linux, from `/proc/sys/net/ipv4/ip_local_port_range`:
//! ports 10000–32767 by default), which the OS never hands out by itself,
//! and keeps it claimed in this process so that no other server of this
//! crate picks it while it is down. Without room outside the ephemeral
//! range it falls back to port 0.
//!
//! ```
//! use dirpool_tests::{LineBehaviour, LineServer, Reply, SocksConfig, SocksServer};
//! use std::io::{BufRead, BufReader, Read, Write};
//! use std::net::TcpStream;
//!
//! let directory = LineServer::start(LineBehaviour::Healthy)?;
//! let tor = SocksServer::start(
//!     SocksConfig::new().with_reply("example.onion", Reply::Forward(directory.addr())),
//! )?;
//!
//! let mut client = TcpStream::connect(tor.addr())?;
//! client.write_all(&[5, 1, 0])?; // greeting: no authentication
//! let mut answer = [0u8; 2];
//! client.read_exact(&mut answer)?;
//! assert_eq!(answer, [5, 0]);
//! let mut request = vec![5, 1, 0, 3, 13];
//! request.extend_from_slice(b"example.onion");
//! request.extend_from_slice(&5222u16.to_be_bytes());
//! client.write_all(&request)?;
//! let mut reply = [0u8; 10];
//! client.read_exact(&mut reply)?;
//! assert_eq!(reply[1], 0x00);
//!
//! let mut hello = String::new();
//! BufReader::new(&client).read_line(&mut hello)?;
//! assert_eq!(hello, format!("HELLO {}\r\n", directory.port()));
//! assert_eq!(tor.requests()[0].target_host, "example.onion");
//! # Ok::<(), std::io::Error>(())
//! ```
#![forbid(unsafe_code)]

mod common;
pub mod directory_model;
pub mod jm_server;
pub mod line_server;
pub mod sim;
pub mod socks_server;
pub mod tor;

#[cfg(test)]
mod test_client;

use std::time::{Duration, Instant};

pub use common::{ChangeAfter, Server, change_generation, free_loopback_port};
pub use jm_server::{
    ClientHandshake, JM_DEFAULT_MOTD, JM_DEFAULT_NETWORK, JM_DIRECTORY_NICK, JM_DN_HANDSHAKE,
    JM_GETPEERLIST, JM_HANDSHAKE, JM_MAX_LINE, JM_PEERLIST, JM_PING, JM_PONG, JM_PRIVMSG,
    JM_PROTO_VER, JM_PUBMSG, JmAccept, JmBehaviour, JmDirectory, JmModelled, JmReplyStyle,
    SplitReply, is_valid_jm_nick, jm_client_handshake, jm_message,
};
pub use line_server::{LineBehaviour, LineServer};
pub use socks_server::{AuthMode, Reply, SocksConfig, SocksOutcome, SocksRequest, SocksServer};

/// Waits until `condition` on the test servers' state holds (`true`) or
/// `timeout` has passed (`false`; checked one last time at the end). The
/// condition is checked again after each change of a server's state (see
/// [`change_generation`]), so it must read only that state.
///
/// It blocks the calling thread: call it from a test's own thread or from a
/// blocking context (`tokio::task::spawn_blocking`, `smol::unblock`), never
/// on an async executor thread that the code under test needs.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = change_generation();
        if condition() {
            return true;
        }
        if !common::wait_for_change(seen, deadline) {
            return condition();
        }
    }
}

/// Polls `condition` every `interval` until it holds (`true`) or `timeout`
/// has passed (`false`; checked one last time at the end): only for a
/// condition outside this process's test servers that sends no signal
/// (another process's state, such as Tor's streams read over its control
/// port). For the test servers' state, [`wait_until`] waits for changes.
pub fn poll_until(
    timeout: Duration,
    interval: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return condition();
        }
        std::thread::sleep(interval.min(deadline - now));
    }
}

/// The secret of [`client_identity`]: joinmarket-ng's test key
/// (`jmcore/tests/test_nick_auth.py`, `PRIVATE_KEY`).
pub const CLIENT_SECRET: [u8; 32] = [0x11; 32];

/// The nick [`client_identity`] backs (`Nick::from_public_key` of
/// joinmarket-ng's test public key `034f355b…71aa`).
pub const CLIENT_NICK: &str = "J52N8GdNkKtMA6TW";

/// The identity the tests' dirpool clients present: a fixed key, so the
/// nick in a directory's records is known in advance.
///
/// # Panics
/// Never: [`CLIENT_SECRET`] is a valid key.
pub fn client_identity() -> dirpool::joinmarket::NickIdentity {
    dirpool::joinmarket::NickIdentity::from_secret_bytes(&CLIENT_SECRET).expect("a valid key")
}

#[cfg(test)]
mod identity_tests {
    #[test]
    fn the_client_identity_backs_the_client_nick() {
        assert_eq!(super::client_identity().nick().as_str(), super::CLIENT_NICK);
    }
}
