//! [`LineServer`]: a loopback server speaking a trivial line protocol, to
//! stand in for a directory server.

use std::fmt;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Ctx, Handler, ReadEvent, Server, lock, send};

/// The longest line accepted (without its terminator); a longer one closes
/// the connection.
pub const MAX_LINE: usize = 64 * 1024;

/// What a [`LineServer`] does with a connection. Read when the connection is
/// accepted: changing it affects the following connections only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineBehaviour {
    /// Sends `HELLO <port>\r\n` (its own listening port), then answers each
    /// received line (terminated by `\n`, an optional `\r` before it
    /// stripped) with `ECHO <line>\r\n`, until the client closes.
    #[default]
    Healthy,
    /// Blackholed: accepts, never sends, reads and discards, holds the
    /// connection open until the client closes it.
    Silent,
    /// Closes every connection as soon as it is accepted.
    CloseImmediately,
    /// As [`Healthy`](Self::Healthy), but closes the connection this long
    /// after the greeting.
    DropAfter(Duration),
}

/// A loopback server speaking a trivial line protocol (see
/// [`LineBehaviour`]), on a free `127.0.0.1` port (see the
/// [crate documentation](crate#ports)).
///
/// It runs on plain std threads (blocking I/O, no async runtime). It can be
/// stopped and restarted on the same port, started late, and told to drop
/// its connections. Dropping it closes the listener and every connection
/// and joins every thread.
pub struct LineServer {
    server: Server,
    behaviour: Arc<Mutex<LineBehaviour>>,
}

impl fmt::Debug for LineServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineServer")
            .field("server", &self.server)
            .field("behaviour", &self.behaviour())
            .finish()
    }
}

impl LineServer {
    /// Binds a free loopback port and starts serving.
    ///
    /// # Errors
    ///
    /// If the listener cannot be bound or its thread not spawned.
    pub fn start(behaviour: LineBehaviour) -> io::Result<Self> {
        let behaviour = Arc::new(Mutex::new(behaviour));
        let server = Server::start(handler(&behaviour))?;
        Ok(Self { server, behaviour })
    }

    /// Plans a free loopback address now (binds a free port, reads it,
    /// closes it, and keeps it claimed) and starts listening on it only after `delay`, in
    /// the background (as a directory behind a still-bootstrapping Tor).
    /// [`addr`](crate::Server::addr) is the planned address at once; until the delay
    /// has passed, connecting to it is refused. If the port cannot be bound
    /// by then (within 2 s of retries), the server stays down
    /// ([`is_listening`](crate::Server::is_listening) stays `false`).
    ///
    /// # Errors
    ///
    /// If no port can be reserved or the background thread not spawned.
    pub fn start_after(behaviour: LineBehaviour, delay: Duration) -> io::Result<Self> {
        let behaviour = Arc::new(Mutex::new(behaviour));
        let server = Server::start_after(handler(&behaviour), delay)?;
        Ok(Self { server, behaviour })
    }

    /// The behaviour for new connections.
    #[must_use]
    pub fn behaviour(&self) -> LineBehaviour {
        *lock(&self.behaviour)
    }

    /// Sets the behaviour for the connections accepted from now on.
    pub fn set_behaviour(&self, behaviour: LineBehaviour) {
        *lock(&self.behaviour) = behaviour;
    }
}

fn handler(behaviour: &Arc<Mutex<LineBehaviour>>) -> Handler {
    let behaviour = Arc::clone(behaviour);
    Arc::new(move |stream, ctx| {
        let current = *lock(&behaviour);
        serve(current, stream, ctx);
    })
}

fn serve(behaviour: LineBehaviour, mut stream: TcpStream, ctx: &Ctx) {
    match behaviour {
        LineBehaviour::CloseImmediately => {
            let _ = stream.shutdown(Shutdown::Both);
        }
        LineBehaviour::Silent => ctx.hold(&mut stream),
        LineBehaviour::Healthy => echo(&mut stream, ctx, None),
        LineBehaviour::DropAfter(delay) => echo(&mut stream, ctx, Some(delay)),
    }
}

/// Greets, then echoes lines until the client closes, a line is too long,
/// or `drop_after` has passed since the greeting.
fn echo(stream: &mut TcpStream, ctx: &Ctx, drop_after: Option<Duration>) {
    let port = stream.local_addr().map_or(0, |addr| addr.port());
    if send(stream, format!("HELLO {port}\r\n").as_bytes()).is_err() {
        return;
    }
    let deadline = drop_after.map(|delay| Instant::now() + delay);
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    while let ReadEvent::Data(n) = ctx.read_event(stream, &mut chunk, deadline) {
        pending.extend_from_slice(&chunk[..n]);
        while let Some(end) = pending.iter().position(|&byte| byte == b'\n') {
            let mut line: Vec<u8> = pending.drain(..=end).collect();
            line.pop(); // '\n'
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let mut answer = Vec::with_capacity(line.len() + 7);
            answer.extend_from_slice(b"ECHO ");
            answer.extend_from_slice(&line);
            answer.extend_from_slice(b"\r\n");
            if send(stream, &answer).is_err() {
                return;
            }
        }
        if pending.len() > MAX_LINE {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

impl std::ops::Deref for LineServer {
    type Target = Server;

    /// Its address, counters and lifecycle (stop, restart, drop links).
    fn deref(&self) -> &Server {
        &self.server
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Write};
    use std::net::{Ipv4Addr, TcpStream};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::test_client::{closed, connect, held, read_line};
    use crate::{free_loopback_port, wait_until};
    use std::net::SocketAddr;

    const WAIT: Duration = Duration::from_secs(2);

    fn refused(addr: SocketAddr) -> bool {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused)
    }

    #[test]
    fn healthy_greets_and_echoes() {
        let server = LineServer::start(LineBehaviour::Healthy).unwrap();
        assert!(server.addr().ip().is_loopback());
        assert!(server.is_listening());
        let mut client = connect(server.addr()).unwrap();
        assert_eq!(
            read_line(&mut client).unwrap(),
            format!("HELLO {}\r\n", server.port())
        );
        client.write_all(b"one\r\ntwo\nthr").unwrap();
        assert_eq!(read_line(&mut client).unwrap(), "ECHO one\r\n");
        assert_eq!(read_line(&mut client).unwrap(), "ECHO two\r\n");
        client.write_all(b"ee\n\n").unwrap();
        assert_eq!(read_line(&mut client).unwrap(), "ECHO three\r\n");
        assert_eq!(read_line(&mut client).unwrap(), "ECHO \r\n");
        assert_eq!((server.accepted(), server.open_connections()), (1, 1));
        drop(client);
        assert!(wait_until(WAIT, || server.open_connections() == 0));
        assert_eq!(server.accepted(), 1);
    }

    #[test]
    fn silent_holds_the_connection() {
        let server = LineServer::start(LineBehaviour::Silent).unwrap();
        let mut client = connect(server.addr()).unwrap();
        client.write_all(b"anyone?\n").unwrap();
        assert!(held(&mut client, Duration::from_millis(150)));
        assert_eq!(server.open_connections(), 1);
        drop(client);
        assert!(wait_until(WAIT, || server.open_connections() == 0));
    }

    #[test]
    fn close_immediately_closes() {
        let server = LineServer::start(LineBehaviour::CloseImmediately).unwrap();
        for _ in 0..3 {
            let mut client = connect(server.addr()).unwrap();
            assert!(closed(&mut client));
        }
        assert_eq!(server.accepted(), 3);
        assert!(wait_until(WAIT, || server.open_connections() == 0));
    }

    #[test]
    fn drop_after_greets_then_closes() {
        let delay = Duration::from_millis(100);
        let server = LineServer::start(LineBehaviour::DropAfter(delay)).unwrap();
        let started = Instant::now();
        let mut client = connect(server.addr()).unwrap();
        assert!(read_line(&mut client).unwrap().starts_with("HELLO "));
        client.write_all(b"hi\n").unwrap();
        assert_eq!(read_line(&mut client).unwrap(), "ECHO hi\r\n");
        assert!(closed(&mut client));
        assert!(started.elapsed() >= delay);
        assert!(wait_until(WAIT, || server.open_connections() == 0));
    }

    #[test]
    fn behaviour_changes_apply_to_new_connections() {
        let server = LineServer::start(LineBehaviour::Healthy).unwrap();
        let mut healthy = connect(server.addr()).unwrap();
        read_line(&mut healthy).unwrap();
        server.set_behaviour(LineBehaviour::CloseImmediately);
        assert_eq!(server.behaviour(), LineBehaviour::CloseImmediately);
        let mut client = connect(server.addr()).unwrap();
        assert!(closed(&mut client));
        healthy.write_all(b"x\n").unwrap();
        assert_eq!(read_line(&mut healthy).unwrap(), "ECHO x\r\n");
    }

    #[test]
    fn drop_all_closes_every_connection() {
        let server = LineServer::start(LineBehaviour::Healthy).unwrap();
        let mut clients: Vec<_> = (0..3).map(|_| connect(server.addr()).unwrap()).collect();
        for client in &mut clients {
            read_line(client).unwrap();
        }
        assert_eq!(server.open_connections(), 3);
        server.drop_all();
        assert_eq!(server.open_connections(), 0);
        for client in &mut clients {
            assert!(closed(client));
        }
        let mut client = connect(server.addr()).unwrap();
        assert!(read_line(&mut client).unwrap().starts_with("HELLO"));
        assert_eq!(server.accepted(), 4);
    }

    #[test]
    fn stop_and_restart_on_the_same_port() {
        let server = LineServer::start(LineBehaviour::Healthy).unwrap();
        let addr = server.addr();
        for _ in 0..3 {
            let mut open = connect(addr).unwrap();
            read_line(&mut open).unwrap();
            server.stop();
            assert!(!server.is_listening());
            assert!(refused(addr));
            assert!(closed(&mut open));
            assert_eq!(server.open_connections(), 0);
            server.stop(); // idempotent

            server.restart().unwrap();
            assert!(server.is_listening());
            assert_eq!(server.addr(), addr);
            let mut client = connect(addr).unwrap();
            assert_eq!(
                read_line(&mut client).unwrap(),
                format!("HELLO {}\r\n", addr.port())
            );
        }
        // restart while running: stops and rebinds.
        let mut open = connect(addr).unwrap();
        read_line(&mut open).unwrap();
        server.restart().unwrap();
        assert!(closed(&mut open));
        assert!(connect(addr).is_ok());
    }

    #[test]
    fn restart_after_many_server_closed_connections() {
        // Server-closed connections leave TIME_WAIT sockets on the port.
        let server = LineServer::start(LineBehaviour::CloseImmediately).unwrap();
        for _ in 0..20 {
            let mut client = connect(server.addr()).unwrap();
            assert!(closed(&mut client));
        }
        server.restart().unwrap();
        server.set_behaviour(LineBehaviour::Healthy);
        let mut client = connect(server.addr()).unwrap();
        assert!(read_line(&mut client).unwrap().starts_with("HELLO"));
    }

    #[test]
    fn restart_after_comes_back_later() {
        let server = LineServer::start(LineBehaviour::Healthy).unwrap();
        let mut open = connect(server.addr()).unwrap();
        read_line(&mut open).unwrap();
        let started = Instant::now();
        server.restart_after(Duration::from_millis(150)).unwrap();
        assert!(closed(&mut open));
        assert!(refused(server.addr()));
        assert!(wait_until(WAIT, || server.is_listening()));
        assert!(started.elapsed() >= Duration::from_millis(150));
        let mut client = connect(server.addr()).unwrap();
        assert!(read_line(&mut client).unwrap().starts_with("HELLO"));
    }

    #[test]
    fn start_after_listens_only_after_the_delay() {
        let started = Instant::now();
        let server =
            LineServer::start_after(LineBehaviour::Healthy, Duration::from_millis(200)).unwrap();
        let addr = server.addr();
        assert_eq!(addr.ip(), Ipv4Addr::LOCALHOST);
        assert!(!server.is_listening());
        assert!(refused(addr));
        assert!(wait_until(WAIT, || server.is_listening()));
        assert!(started.elapsed() >= Duration::from_millis(200));
        let mut client = connect(addr).unwrap();
        assert_eq!(
            read_line(&mut client).unwrap(),
            format!("HELLO {}\r\n", addr.port())
        );
    }

    #[test]
    fn start_after_dropped_early_never_listens() {
        let server =
            LineServer::start_after(LineBehaviour::Healthy, Duration::from_millis(150)).unwrap();
        let addr = server.addr();
        let started = Instant::now();
        drop(server);
        assert!(started.elapsed() < Duration::from_millis(150));
        // Real time is what is under test: past the start the server was
        // given, nothing listens (no event can say "never").
        std::thread::sleep(Duration::from_millis(200));
        assert!(refused(addr));
    }

    #[test]
    fn stop_cancels_a_late_start_and_restart_starts_now() {
        let server =
            LineServer::start_after(LineBehaviour::Healthy, Duration::from_secs(60)).unwrap();
        server.stop();
        server.restart().unwrap();
        assert!(server.is_listening());
        assert!(connect(server.addr()).is_ok());
    }

    #[test]
    fn overlong_lines_close_the_connection() {
        let server = LineServer::start(LineBehaviour::Healthy).unwrap();
        let mut client = connect(server.addr()).unwrap();
        read_line(&mut client).unwrap();
        let long = vec![b'a'; MAX_LINE + 1];
        // The server may close (and reset) before all of it is written.
        let _ = client.write_all(&long);
        assert!(closed(&mut client));
        assert!(wait_until(WAIT, || server.open_connections() == 0));
    }

    #[test]
    fn free_loopback_port_is_refused() {
        let port = free_loopback_port();
        assert_ne!(port, 0);
        assert!(refused(SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
    }

    #[test]
    fn drop_joins_with_open_connections() {
        let server = LineServer::start(LineBehaviour::Silent).unwrap();
        let addr = server.addr();
        let mut clients: Vec<_> = (0..4).map(|_| connect(addr).unwrap()).collect();
        assert!(wait_until(WAIT, || server.open_connections() == 4));
        let probe = server.server.leak_probe();
        let started = Instant::now();
        drop(server);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(probe.released());
        for client in &mut clients {
            assert!(closed(client));
        }
        assert!(refused(addr));
    }
}
