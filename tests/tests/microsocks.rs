//! Through a real SOCKS5 server: Debian's `microsocks`, started on a free
//! loopback port with the isolation username and password.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TOKEN_HEX, config, line_pool, next_matching, on_both_runtimes};
use dirpool::{DialError, DirectoryPool, PoolEvent};
use dirpool_core::{Entropy, IsolationScope, IsolationToken};
use dirpool_tests::{LineBehaviour, LineServer, free_loopback_port};

/// A microsocks process, killed on drop.
struct Microsocks {
    child: Child,
    addr: SocketAddr,
}

impl Microsocks {
    fn start(user: &str, password: &str) -> Self {
        let port = free_loopback_port();
        let child = Command::new("microsocks")
            .args([
                "-i",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-u",
                user,
                "-P",
                password,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start microsocks ({e}): install it with `apt-get install microsocks` \
                     (scripts/test does this)"
                )
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "microsocks did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, addr }
    }
}

impl Drop for Microsocks {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_pool_connects_through_microsocks_with_isolation() {
    on_both_runtimes(|rt| async move {
        let dir = LineServer::start(LineBehaviour::Healthy).unwrap();
        let proxy = Microsocks::start("jm-directory", TOKEN_HEX);
        let mut cfg = config(&[dir.addr().to_string()], proxy.addr);
        cfg.pool.isolation = IsolationScope::PerCategory;
        let pool = line_pool(cfg, &rt);
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 1);
        let client = pool.client(&dir.addr().to_string()).expect("registered");
        assert_eq!(client.greeting, format!("HELLO {}", dir.port()));
        pool.close_all().await.unwrap();
    });
}

#[test]
fn wrong_credentials_fail_with_the_typed_auth_error() {
    on_both_runtimes(|rt| async move {
        let dir = LineServer::start(LineBehaviour::Healthy).unwrap();
        let proxy = Microsocks::start("jm-directory", TOKEN_HEX);
        let mut cfg = config(&[dir.addr().to_string()], proxy.addr);
        cfg.pool.isolation = IsolationScope::PerCategory;
        let other_token = Entropy {
            isolation_token: IsolationToken::from_bytes([9; 16]),
            jitter_seed: 1,
        };
        let pool = DirectoryPool::builder(cfg, common::LineHandshake)
            .entropy(other_token)
            .spawn(Arc::clone(&rt))
            .unwrap();
        let mut events = pool.events();
        assert_eq!(pool.connect_all_parallel().await.unwrap(), 0);
        let error = next_matching(&rt, &mut events, Duration::from_secs(5), |e| match e {
            PoolEvent::DialFailed { error, .. } => Some(Arc::clone(error)),
            _ => None,
        })
        .await
        .expect("a failure");
        assert!(
            matches!(&*error, DialError::ProxyAuthRejected { username, .. } if username == "jm-directory"),
            "{error:?}"
        );
        assert!(
            !error.to_string().contains(&"09".repeat(16)),
            "password in the error"
        );
        assert_eq!(dir.accepted(), 0);
    });
}
