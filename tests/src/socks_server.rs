//! [`SocksServer`]: a scriptable, recording SOCKS5 server (RFC 1928, with
//! RFC 1929 username/password authentication) on loopback, standing in for
//! Tor's SocksPort.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::common::{Ctx, Handler, ReadEvent, Server, lock, prepare, send};

/// SOCKS protocol version 5.
const VERSION: u8 = 0x05;
/// Username/password sub-negotiation version (RFC 1929).
const USERPASS_VERSION: u8 = 0x01;
/// Method "no authentication required".
pub const METHOD_NO_AUTH: u8 = 0x00;
/// Method "username/password".
pub const METHOD_USER_PASS: u8 = 0x02;
/// Method reply "no acceptable methods".
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;
/// The CONNECT command.
pub const CMD_CONNECT: u8 = 0x01;
/// Address type IPv4.
pub const ATYP_IPV4: u8 = 0x01;
/// Address type domain name.
pub const ATYP_DOMAIN: u8 = 0x03;
/// Address type IPv6.
pub const ATYP_IPV6: u8 = 0x04;
/// Reply code "command not supported".
const REP_COMMAND_NOT_SUPPORTED: u8 = 0x07;
/// Reply code "address type not supported".
const REP_ATYP_NOT_SUPPORTED: u8 = 0x08;
/// How long the server tries to reach a [`Reply::Forward`] target.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How the server answers the method negotiation (and, for
/// username/password, the sub-negotiation). Read when a client's greeting
/// arrives: changing it affects the following greetings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Selects method 0x00 if the client offers it, else answers 0xFF.
    #[default]
    NoAuth,
    /// Requires method 0x02: answers 0xFF if the client did not offer it.
    /// With `expect: Some((user, pass))`, other credentials get status 0x01
    /// and the connection is closed; with `None`, any credentials pass (like
    /// Tor, which uses them only for stream isolation).
    UserPass {
        /// The only credentials accepted, or `None` for any.
        expect: Option<(String, String)>,
    },
    /// Selects 0x00 whenever the client offers it, even if it also offered
    /// 0x02 (a proxy that silently drops stream isolation); else 0x02 (any
    /// credentials pass) if offered; else 0xFF.
    PreferNoAuth,
    /// Always answers 0xFF.
    Refuse,
}

impl AuthMode {
    /// Username/password with any credentials accepted.
    #[must_use]
    pub fn user_pass_any() -> Self {
        Self::UserPass { expect: None }
    }

    /// Username/password accepting only `user`/`pass`.
    #[must_use]
    pub fn user_pass(user: impl Into<String>, pass: impl Into<String>) -> Self {
        Self::UserPass {
            expect: Some((user.into(), pass.into())),
        }
    }

    /// The method this mode selects among the client's `offered` ones.
    fn select(&self, offered: &[u8]) -> u8 {
        let offers = |method| offered.contains(&method);
        match self {
            Self::NoAuth if offers(METHOD_NO_AUTH) => METHOD_NO_AUTH,
            Self::UserPass { .. } if offers(METHOD_USER_PASS) => METHOD_USER_PASS,
            Self::PreferNoAuth if offers(METHOD_NO_AUTH) => METHOD_NO_AUTH,
            Self::PreferNoAuth if offers(METHOD_USER_PASS) => METHOD_USER_PASS,
            _ => METHOD_NONE_ACCEPTABLE,
        }
    }
}

/// How the server answers a CONNECT. Read when the CONNECT request arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Connects to this address; on success answers 0x00 (bound address
    /// `0.0.0.0:0`, as Tor does) and relays bytes both ways until either
    /// side closes; on failure answers the forward-failure code (default
    /// 0x01, what Tor answers for an onion whose local listener is down; see
    /// [`SocksServer::set_forward_failure_code`]) and closes.
    Forward(SocketAddr),
    /// Answers this reply code (e.g. 0x01–0x08, Tor's onion codes
    /// 0xF0–0xF7), then closes. `Code(0x00)` answers success and then closes:
    /// a tunnel that dies at once.
    Code(u8),
    /// Never answers; holds the connection until the client closes it or
    /// the server drops (or [`SocksServer::drop_all`]).
    Stall,
    /// Closes the connection right after reading the CONNECT request.
    CloseEarly,
    /// Answers a 10-byte reply whose version byte is wrong (0x04), then
    /// closes.
    Garbage,
}

/// Settings of a [`SocksServer`]; every field can also be changed at run
/// time through the server's setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksConfig {
    /// Method negotiation and authentication.
    pub auth: AuthMode,
    /// The answer for a target host not in `replies`.
    pub default_reply: Reply,
    /// Per-host answers, matched exactly against the host as the client
    /// sent it: the domain name for ATYP 0x03, or the address's `Display`
    /// form (`127.0.0.1`, `::1`) for ATYP 0x01/0x04. The port is ignored.
    pub replies: HashMap<String, Reply>,
    /// The reply code when a [`Reply::Forward`] target cannot be reached.
    pub forward_failure_code: u8,
}

impl Default for SocksConfig {
    /// [`AuthMode::NoAuth`], no per-host replies, default reply
    /// `Code(0x04)` (host unreachable), forward-failure code 0x01.
    fn default() -> Self {
        Self {
            auth: AuthMode::NoAuth,
            default_reply: Reply::Code(0x04),
            replies: HashMap::new(),
            forward_failure_code: 0x01,
        }
    }
}

impl SocksConfig {
    /// The default configuration (see [`SocksConfig::default`]).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the authentication mode.
    #[must_use]
    pub fn with_auth(mut self, auth: AuthMode) -> Self {
        self.auth = auth;
        self
    }

    /// Sets the answer for `host`.
    #[must_use]
    pub fn with_reply(mut self, host: impl Into<String>, reply: Reply) -> Self {
        self.replies.insert(host.into(), reply);
        self
    }

    /// Sets the answer for hosts without their own.
    #[must_use]
    pub fn with_default_reply(mut self, reply: Reply) -> Self {
        self.default_reply = reply;
        self
    }

    /// Sets the reply code for an unreachable [`Reply::Forward`] target.
    #[must_use]
    pub fn with_forward_failure_code(mut self, code: u8) -> Self {
        self.forward_failure_code = code;
        self
    }

    fn reply_for(&self, host: &str) -> Reply {
        self.replies
            .get(host)
            .unwrap_or(&self.default_reply)
            .clone()
    }
}

/// How a recorded exchange ended (or is going on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocksOutcome {
    /// The server answered 0xFF to the greeting and closed; no request was
    /// read.
    NoAcceptableMethod,
    /// The credentials were refused (status 0x01) and the connection closed;
    /// no request was read.
    AuthFailed,
    /// The request was answered with this reply code (0x00: success, for a
    /// [`Reply::Forward`] that reached its target or `Code(0x00)`). Also
    /// unsupported commands (0x07) and address types (0x08).
    Replied(u8),
    /// The request is never answered ([`Reply::Stall`]).
    Stalled,
    /// The connection was closed without an answer ([`Reply::CloseEarly`]).
    ClosedEarly,
    /// A reply with a wrong version byte was sent ([`Reply::Garbage`]).
    Garbage,
}

/// One recorded exchange with a client: a CONNECT (or other) request, or an
/// attempt that ended before the request.
///
/// A record is made once the greeting has been read and the exchange is
/// decided: after a refused method ([`SocksOutcome::NoAcceptableMethod`]:
/// `method` is 0xFF), after refused credentials
/// ([`SocksOutcome::AuthFailed`]: `username`/`password` are set), or when the
/// request has been read (before the answer is sent, so a client that got an
/// answer always finds its record). For the two early outcomes there is no
/// target: `atyp` and `command` are 0, `target_host` is empty and
/// `target_port` is 0. Malformed greetings, and clients that close before
/// the exchange is decided, are not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksRequest {
    /// The target host as sent: the domain for ATYP 0x03, the address's
    /// `Display` form for ATYP 0x01/0x04; empty if no request was read (or
    /// its address type was not supported).
    pub target_host: String,
    /// The target port (0 if no request was read).
    pub target_port: u16,
    /// The address type (0 if no request was read).
    pub atyp: u8,
    /// The command (0x01 CONNECT; 0 if no request was read).
    pub command: u8,
    /// The username sent in the RFC 1929 sub-negotiation (lossy UTF-8), if
    /// there was one.
    pub username: Option<String>,
    /// The password sent in the RFC 1929 sub-negotiation (lossy UTF-8), if
    /// there was one.
    pub password: Option<String>,
    /// The method the server selected (0x00, 0x02, or 0xFF).
    pub method: u8,
    /// The methods the client offered, in its order.
    pub offered_methods: Vec<u8>,
    /// How the exchange ended.
    pub outcome: SocksOutcome,
}

impl SocksRequest {
    /// `true` if a CONNECT request was read (whatever the answer).
    #[must_use]
    pub fn is_connect(&self) -> bool {
        self.command == CMD_CONNECT
    }
}

/// State shared with the connection threads.
#[derive(Debug, Default)]
struct State {
    config: Mutex<SocksConfig>,
    requests: Mutex<Vec<SocksRequest>>,
}

/// A scriptable, recording SOCKS5 server on a free `127.0.0.1` port (see
/// the [crate documentation](crate#ports)).
///
/// It runs on plain std threads (blocking I/O, no async runtime), so it works
/// the same under any runtime. Behaviour can be set at start
/// ([`SocksConfig`]) and changed at any time through `&self` setters; a
/// change applies to the next greeting (auth) or request (replies). Dropping
/// it closes the listener and every connection (tunnels included) and joins
/// every thread.
pub struct SocksServer {
    server: Server,
    state: Arc<State>,
}

impl fmt::Debug for SocksServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocksServer")
            .field("server", &self.server)
            .field("config", &*lock(&self.state.config))
            .finish_non_exhaustive()
    }
}

impl SocksServer {
    /// Binds a free loopback port and starts serving.
    ///
    /// # Errors
    ///
    /// If the listener cannot be bound or its thread not spawned.
    pub fn start(config: SocksConfig) -> io::Result<Self> {
        let state = Arc::new(State {
            config: Mutex::new(config),
            requests: Mutex::new(Vec::new()),
        });
        let handler: Handler = {
            let state = Arc::clone(&state);
            Arc::new(move |stream, ctx| {
                let _ = serve(&state, stream, ctx);
            })
        };
        Ok(Self {
            server: Server::start(handler)?,
            state,
        })
    }

    /// The address it listens on (the same for its whole life, across
    /// [`set_down`](Self::set_down)).
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Every recorded exchange so far, in order (see [`SocksRequest`]).
    #[must_use]
    pub fn requests(&self) -> Vec<SocksRequest> {
        lock(&self.state.requests).clone()
    }

    /// The recorded exchanges in which a CONNECT request was read.
    #[must_use]
    pub fn connect_requests(&self) -> Vec<SocksRequest> {
        lock(&self.state.requests)
            .iter()
            .filter(|request| request.is_connect())
            .cloned()
            .collect()
    }

    /// Forgets the recorded exchanges.
    pub fn clear_requests(&self) {
        lock(&self.state.requests).clear();
    }

    /// The number of client connections accepted so far.
    #[must_use]
    pub fn connection_count(&self) -> usize {
        self.server.accepted()
    }

    /// The number of client connections open now, tunnels included (a
    /// tunnel counts once; its upstream socket is closed with it). A
    /// connection is uncounted only after the server closed its sockets.
    #[must_use]
    pub fn open_connections(&self) -> usize {
        self.server.open_connections()
    }

    /// A copy of the current configuration.
    #[must_use]
    pub fn config(&self) -> SocksConfig {
        lock(&self.state.config).clone()
    }

    /// Replaces the whole configuration.
    pub fn set_config(&self, config: SocksConfig) {
        *lock(&self.state.config) = config;
    }

    /// Sets the authentication mode (for the following greetings).
    pub fn set_auth(&self, auth: AuthMode) {
        lock(&self.state.config).auth = auth;
    }

    /// Sets the answer for `host` (for the following requests).
    pub fn set_reply(&self, host: impl Into<String>, reply: Reply) {
        lock(&self.state.config).replies.insert(host.into(), reply);
    }

    /// Removes `host`'s own answer: it gets the default reply again.
    pub fn clear_reply(&self, host: &str) {
        lock(&self.state.config).replies.remove(host);
    }

    /// Sets the answer for hosts without their own.
    pub fn set_default_reply(&self, reply: Reply) {
        lock(&self.state.config).default_reply = reply;
    }

    /// Sets the reply code for an unreachable [`Reply::Forward`] target
    /// (default 0x01, as Tor; 0x05 "connection refused" is the other
    /// plausible choice).
    pub fn set_forward_failure_code(&self, code: u8) {
        lock(&self.state.config).forward_failure_code = code;
    }

    /// `set_down(true)` closes the listening socket (when it returns,
    /// connecting to [`addr`](Self::addr) is refused, as with Tor not
    /// running); connections already open stay open (call
    /// [`drop_all`](Self::drop_all) too to simulate a crash).
    /// `set_down(false)` listens again on the same port now (cancelling a
    /// pending [`set_down_for`](Self::set_down_for)), retrying the bind for
    /// up to 2 s; when it returns `Ok`, connections are accepted again. Both
    /// are idempotent, and block only briefly (`set_down(false)`: at most
    /// the 2 s of retries).
    ///
    /// # Errors
    ///
    /// `set_down(false)`: if the port could not be bound again within 2 s
    /// (another socket took it).
    pub fn set_down(&self, down: bool) -> io::Result<()> {
        if down {
            self.server.stop_listening();
            Ok(())
        } else {
            self.server.start_listening()
        }
    }

    /// Goes down now (as `set_down(true)`) and comes back on the same port
    /// after `delay`, on its own (from a background thread; if the port
    /// cannot be bound again it stays down). Returns at once.
    ///
    /// # Errors
    ///
    /// If the background thread cannot be spawned.
    pub fn set_down_for(&self, delay: Duration) -> io::Result<()> {
        self.server.start_listening_after(delay)
    }

    /// `true` while not listening.
    #[must_use]
    pub fn is_down(&self) -> bool {
        !self.server.is_listening()
    }

    /// Closes every open client connection (and tunnel) now, and waits (up
    /// to 2 s) until they are closed on the server's side. The listener is
    /// unaffected.
    pub fn drop_all(&self) {
        self.server.drop_all();
    }
}

fn record(state: &State, request: SocksRequest) {
    lock(&state.requests).push(request);
}

/// A reply with a `0.0.0.0:0` bound address.
fn reply_bytes(version: u8, code: u8) -> [u8; 10] {
    [version, code, 0x00, ATYP_IPV4, 0, 0, 0, 0, 0, 0]
}

/// Reads a one-byte length, then that many bytes (at most 255).
fn read_field(ctx: &Ctx, stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 1];
    ctx.read_exact(stream, &mut len)?;
    let mut field = vec![0u8; usize::from(len[0])];
    ctx.read_exact(stream, &mut field)?;
    Ok(field)
}

fn malformed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed SOCKS message")
}

/// Serves one client connection. Errors just end (and close) it.
fn serve(state: &State, mut stream: TcpStream, ctx: &Ctx) -> io::Result<()> {
    // Greeting: VER NMETHODS METHODS.
    let mut head = [0u8; 2];
    ctx.read_exact(&mut stream, &mut head)?;
    if head[0] != VERSION {
        return Err(malformed());
    }
    let mut offered = vec![0u8; usize::from(head[1])];
    ctx.read_exact(&mut stream, &mut offered)?;
    let auth = lock(&state.config).auth.clone();
    let method = auth.select(&offered);
    let mut request = SocksRequest {
        target_host: String::new(),
        target_port: 0,
        atyp: 0,
        command: 0,
        username: None,
        password: None,
        method,
        offered_methods: offered,
        outcome: SocksOutcome::NoAcceptableMethod,
    };
    if method == METHOD_NONE_ACCEPTABLE {
        record(state, request);
        send(&mut stream, &[VERSION, METHOD_NONE_ACCEPTABLE])?;
        ctx.close_gracefully(stream);
        return Ok(());
    }
    send(&mut stream, &[VERSION, method])?;

    if method == METHOD_USER_PASS {
        // RFC 1929: VER ULEN UNAME PLEN PASSWD.
        let mut version = [0u8; 1];
        ctx.read_exact(&mut stream, &mut version)?;
        if version[0] != USERPASS_VERSION {
            return Err(malformed());
        }
        let username = String::from_utf8_lossy(&read_field(ctx, &mut stream)?).into_owned();
        let password = String::from_utf8_lossy(&read_field(ctx, &mut stream)?).into_owned();
        let accepted = match &auth {
            AuthMode::UserPass {
                expect: Some((user, pass)),
            } => *user == username && *pass == password,
            _ => true,
        };
        request.username = Some(username);
        request.password = Some(password);
        if !accepted {
            request.outcome = SocksOutcome::AuthFailed;
            record(state, request);
            send(&mut stream, &[USERPASS_VERSION, 0x01])?;
            ctx.close_gracefully(stream);
            return Ok(());
        }
        send(&mut stream, &[USERPASS_VERSION, 0x00])?;
    }

    // Request: VER CMD RSV ATYP DST.ADDR DST.PORT.
    let mut head = [0u8; 4];
    ctx.read_exact(&mut stream, &mut head)?;
    let [version, command, _reserved, atyp] = head;
    if version != VERSION {
        return Err(malformed());
    }
    request.command = command;
    request.atyp = atyp;
    let host = match atyp {
        ATYP_IPV4 => {
            let mut octets = [0u8; 4];
            ctx.read_exact(&mut stream, &mut octets)?;
            Ipv4Addr::from(octets).to_string()
        }
        ATYP_IPV6 => {
            let mut octets = [0u8; 16];
            ctx.read_exact(&mut stream, &mut octets)?;
            Ipv6Addr::from(octets).to_string()
        }
        ATYP_DOMAIN => String::from_utf8_lossy(&read_field(ctx, &mut stream)?).into_owned(),
        _ => {
            request.outcome = SocksOutcome::Replied(REP_ATYP_NOT_SUPPORTED);
            record(state, request);
            send(&mut stream, &reply_bytes(VERSION, REP_ATYP_NOT_SUPPORTED))?;
            ctx.close_gracefully(stream);
            return Ok(());
        }
    };
    let mut port = [0u8; 2];
    ctx.read_exact(&mut stream, &mut port)?;
    request.target_host = host;
    request.target_port = u16::from_be_bytes(port);

    if command != CMD_CONNECT {
        request.outcome = SocksOutcome::Replied(REP_COMMAND_NOT_SUPPORTED);
        record(state, request);
        send(
            &mut stream,
            &reply_bytes(VERSION, REP_COMMAND_NOT_SUPPORTED),
        )?;
        ctx.close_gracefully(stream);
        return Ok(());
    }

    let (reply, failure_code) = {
        let config = lock(&state.config);
        (
            config.reply_for(&request.target_host),
            config.forward_failure_code,
        )
    };
    match reply {
        Reply::Code(code) => {
            request.outcome = SocksOutcome::Replied(code);
            record(state, request);
            send(&mut stream, &reply_bytes(VERSION, code))?;
            ctx.close_gracefully(stream);
        }
        Reply::Stall => {
            request.outcome = SocksOutcome::Stalled;
            record(state, request);
            ctx.hold(&mut stream);
        }
        Reply::CloseEarly => {
            request.outcome = SocksOutcome::ClosedEarly;
            record(state, request);
            let _ = stream.shutdown(Shutdown::Both);
        }
        Reply::Garbage => {
            request.outcome = SocksOutcome::Garbage;
            record(state, request);
            send(&mut stream, &reply_bytes(0x04, 0x00))?;
            ctx.close_gracefully(stream);
        }
        Reply::Forward(target) => {
            match TcpStream::connect_timeout(&target, FORWARD_CONNECT_TIMEOUT) {
                Err(_) => {
                    request.outcome = SocksOutcome::Replied(failure_code);
                    record(state, request);
                    send(&mut stream, &reply_bytes(VERSION, failure_code))?;
                    ctx.close_gracefully(stream);
                }
                Ok(upstream) => {
                    prepare(&upstream)?;
                    let _registration = ctx.register(&upstream);
                    request.outcome = SocksOutcome::Replied(0x00);
                    record(state, request);
                    send(&mut stream, &reply_bytes(VERSION, 0x00))?;
                    relay(stream, upstream, ctx)?;
                }
            }
        }
    }
    Ok(())
}

/// Relays bytes both ways until either side closes (or fails, or the server
/// stops); then both sockets are shut down.
fn relay(client: TcpStream, upstream: TcpStream, ctx: &Ctx) -> io::Result<()> {
    let back = {
        let from = upstream.try_clone()?;
        let to = client.try_clone()?;
        let ctx = ctx.clone();
        thread::Builder::new()
            .name("socks-relay".into())
            .spawn(move || pump(from, to, &ctx))?
    };
    pump(client, upstream, ctx);
    let _ = back.join();
    Ok(())
}

/// Copies `from` to `to` until one of them ends, then shuts both down (which
/// also ends the opposite pump).
fn pump(mut from: TcpStream, mut to: TcpStream, ctx: &Ctx) {
    let mut buf = vec![0u8; 16 * 1024];
    while let ReadEvent::Data(n) = ctx.read_event(&mut from, &mut buf, None) {
        if send(&mut to, &buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::test_client::{
        authenticate, closed, connect, greet, held, read_line, read_reply, send_connect_domain,
        send_connect_ip, socks_connect,
    };
    use crate::{LineBehaviour, LineServer, free_loopback_port, wait_until};

    const WAIT: Duration = Duration::from_secs(2);

    fn server(config: SocksConfig) -> SocksServer {
        SocksServer::start(config).expect("start SOCKS server")
    }

    #[test]
    fn forward_relays_both_ways_and_records_the_request() {
        let directory = LineServer::start(LineBehaviour::Healthy).unwrap();
        let tor =
            server(SocksConfig::new().with_reply("dir.onion", Reply::Forward(directory.addr())));
        assert!(tor.addr().ip().is_loopback());

        let mut client = connect(tor.addr()).unwrap();
        let reply = socks_connect(&mut client, "dir.onion", 5222).unwrap();
        assert_eq!(reply, [5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            read_line(&mut client).unwrap(),
            format!("HELLO {}\r\n", directory.port())
        );
        client.write_all(b"ping\r\n").unwrap();
        assert_eq!(read_line(&mut client).unwrap(), "ECHO ping\r\n");

        let requests = tor.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.target_host, "dir.onion");
        assert_eq!(request.target_port, 5222);
        assert_eq!(request.atyp, ATYP_DOMAIN);
        assert_eq!(request.command, CMD_CONNECT);
        assert_eq!(request.method, METHOD_NO_AUTH);
        assert_eq!(request.offered_methods, vec![0]);
        assert_eq!(
            (request.username.clone(), request.password.clone()),
            (None, None)
        );
        assert_eq!(request.outcome, SocksOutcome::Replied(0));
        assert!(request.is_connect());
        assert_eq!(tor.connect_requests(), requests);
        assert_eq!(tor.connection_count(), 1);
        assert_eq!(tor.open_connections(), 1);
        assert_eq!(directory.open_connections(), 1);

        drop(client);
        assert!(wait_until(WAIT, || tor.open_connections() == 0));
        assert!(wait_until(WAIT, || directory.open_connections() == 0));
        assert_eq!(tor.connection_count(), 1);
    }

    #[test]
    fn forward_ends_the_tunnel_when_the_target_closes() {
        let directory = LineServer::start(LineBehaviour::Healthy).unwrap();
        let tor = server(SocksConfig::new().with_default_reply(Reply::Forward(directory.addr())));
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(socks_connect(&mut client, "any.onion", 1).unwrap()[1], 0);
        read_line(&mut client).unwrap();
        directory.drop_all();
        assert!(closed(&mut client));
        assert!(wait_until(WAIT, || tor.open_connections() == 0));
    }

    #[test]
    fn forward_to_a_dead_target_answers_the_failure_code() {
        let nowhere = SocketAddr::from((Ipv4Addr::LOCALHOST, free_loopback_port()));
        let tor = server(SocksConfig::new().with_reply("dead.onion", Reply::Forward(nowhere)));
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(
            socks_connect(&mut client, "dead.onion", 80).unwrap()[1],
            0x01
        );
        assert!(closed(&mut client));

        tor.set_forward_failure_code(0x05);
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(
            socks_connect(&mut client, "dead.onion", 80).unwrap()[1],
            0x05
        );
        let outcomes: Vec<_> = tor.requests().iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [SocksOutcome::Replied(0x01), SocksOutcome::Replied(0x05)]
        );
    }

    #[test]
    fn code_replies_answer_the_code_then_close() {
        let tor = server(SocksConfig::new());
        for code in [
            0x01u8, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0xF0, 0xF2, 0xF6, 0xF7,
        ] {
            let host = format!("h{code}.onion");
            tor.set_reply(host.clone(), Reply::Code(code));
            let mut client = connect(tor.addr()).unwrap();
            let reply = socks_connect(&mut client, &host, 443).unwrap();
            assert_eq!(reply[..2], [5, code]);
            assert!(closed(&mut client), "code {code:#x} should close");
        }
        // Unknown hosts get the default reply, host unreachable.
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(
            socks_connect(&mut client, "other.onion", 1).unwrap()[1],
            0x04
        );
        assert!(wait_until(WAIT, || tor.open_connections() == 0));
    }

    #[test]
    fn stall_holds_until_the_client_closes() {
        let tor = server(SocksConfig::new().with_default_reply(Reply::Stall));
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[0]).unwrap(), [5, 0]);
        send_connect_domain(&mut client, "slow.onion", 80).unwrap();
        assert!(held(&mut client, Duration::from_millis(150)));
        assert_eq!(tor.requests()[0].outcome, SocksOutcome::Stalled);
        assert_eq!(tor.open_connections(), 1);
        drop(client);
        assert!(wait_until(WAIT, || tor.open_connections() == 0));
    }

    #[test]
    fn close_early_closes_without_an_answer() {
        let tor = server(SocksConfig::new().with_default_reply(Reply::CloseEarly));
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[0]).unwrap(), [5, 0]);
        send_connect_domain(&mut client, "gone.onion", 80).unwrap();
        assert!(closed(&mut client));
        assert_eq!(tor.requests()[0].outcome, SocksOutcome::ClosedEarly);
    }

    #[test]
    fn garbage_answers_a_wrong_version() {
        let tor = server(SocksConfig::new().with_default_reply(Reply::Garbage));
        let mut client = connect(tor.addr()).unwrap();
        let reply = socks_connect(&mut client, "x.onion", 80).unwrap();
        assert_eq!(reply[0], 0x04);
        assert!(closed(&mut client));
    }

    #[test]
    fn ip_targets_are_matched_by_their_string_form() {
        let tor = server(
            SocksConfig::new()
                .with_reply("127.0.0.1", Reply::Code(0x02))
                .with_reply("::1", Reply::Code(0x03)),
        );
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[0]).unwrap(), [5, 0]);
        send_connect_ip(&mut client, IpAddr::V4(Ipv4Addr::LOCALHOST), 8080).unwrap();
        assert_eq!(read_reply(&mut client).unwrap()[1], 0x02);

        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[0]).unwrap(), [5, 0]);
        send_connect_ip(&mut client, IpAddr::V6(Ipv6Addr::LOCALHOST), 8081).unwrap();
        assert_eq!(read_reply(&mut client).unwrap()[1], 0x03);

        let requests = tor.requests();
        assert_eq!(
            (
                requests[0].target_host.as_str(),
                requests[0].target_port,
                requests[0].atyp
            ),
            ("127.0.0.1", 8080, ATYP_IPV4)
        );
        assert_eq!(
            (
                requests[1].target_host.as_str(),
                requests[1].target_port,
                requests[1].atyp
            ),
            ("::1", 8081, ATYP_IPV6)
        );
    }

    #[test]
    fn no_auth_refuses_a_client_offering_only_user_pass() {
        let tor = server(SocksConfig::new());
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[2]).unwrap(), [5, 0xFF]);
        assert!(closed(&mut client));
        let request = &tor.requests()[0];
        assert_eq!(request.outcome, SocksOutcome::NoAcceptableMethod);
        assert_eq!(request.method, METHOD_NONE_ACCEPTABLE);
        assert_eq!(request.offered_methods, vec![2]);
        assert!(!request.is_connect());
        assert!(tor.connect_requests().is_empty());
    }

    #[test]
    fn user_pass_any_records_the_credentials() {
        let tor = server(SocksConfig::new().with_auth(AuthMode::user_pass_any()));
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[0, 2]).unwrap(), [5, 2]);
        assert_eq!(
            authenticate(&mut client, "dirpool", "scope-1").unwrap(),
            [1, 0]
        );
        send_connect_domain(&mut client, "a.onion", 5222).unwrap();
        assert_eq!(read_reply(&mut client).unwrap()[1], 0x04);
        let request = &tor.requests()[0];
        assert_eq!(request.username.as_deref(), Some("dirpool"));
        assert_eq!(request.password.as_deref(), Some("scope-1"));
        assert_eq!(request.method, METHOD_USER_PASS);
        assert_eq!(request.target_host, "a.onion");

        // Without method 0x02 on offer: no acceptable method.
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[0]).unwrap(), [5, 0xFF]);
        assert!(closed(&mut client));
    }

    #[test]
    fn user_pass_with_expected_credentials_refuses_others() {
        let tor = server(SocksConfig::new().with_auth(AuthMode::user_pass("u", "p")));
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[2]).unwrap(), [5, 2]);
        assert_eq!(authenticate(&mut client, "u", "wrong").unwrap(), [1, 1]);
        assert!(closed(&mut client));
        let failed = &tor.requests()[0];
        assert_eq!(failed.outcome, SocksOutcome::AuthFailed);
        assert_eq!(failed.password.as_deref(), Some("wrong"));
        assert_eq!((failed.atyp, failed.target_port), (0, 0));

        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[2]).unwrap(), [5, 2]);
        assert_eq!(authenticate(&mut client, "u", "p").unwrap(), [1, 0]);
        send_connect_domain(&mut client, "b.onion", 1).unwrap();
        assert_eq!(read_reply(&mut client).unwrap()[1], 0x04);
    }

    #[test]
    fn prefer_no_auth_drops_isolation_silently() {
        let tor = server(SocksConfig::new().with_auth(AuthMode::PreferNoAuth));
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[0, 2]).unwrap(), [5, 0]);
        send_connect_domain(&mut client, "c.onion", 1).unwrap();
        assert_eq!(read_reply(&mut client).unwrap()[1], 0x04);
        let request = &tor.requests()[0];
        assert_eq!(request.method, METHOD_NO_AUTH);
        assert_eq!(request.username, None);

        // Offered only 0x02: it takes it, with any credentials.
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[2]).unwrap(), [5, 2]);
        assert_eq!(authenticate(&mut client, "x", "y").unwrap(), [1, 0]);
    }

    #[test]
    fn refuse_answers_no_acceptable_method() {
        let tor = server(SocksConfig::new().with_auth(AuthMode::Refuse));
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[0, 1, 2]).unwrap(), [5, 0xFF]);
        assert!(closed(&mut client));
    }

    #[test]
    fn behaviour_changes_at_run_time() {
        let tor = server(SocksConfig::new());
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(
            socks_connect(&mut client, "flip.onion", 1).unwrap()[1],
            0x04
        );
        tor.set_reply("flip.onion", Reply::Code(0xF3));
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(
            socks_connect(&mut client, "flip.onion", 1).unwrap()[1],
            0xF3
        );
        tor.clear_reply("flip.onion");
        tor.set_default_reply(Reply::Code(0x06));
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(
            socks_connect(&mut client, "flip.onion", 1).unwrap()[1],
            0x06
        );
        tor.set_auth(AuthMode::Refuse);
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[0]).unwrap(), [5, 0xFF]);
        tor.set_config(SocksConfig::new());
        assert_eq!(tor.config(), SocksConfig::new());
        tor.clear_requests();
        assert!(tor.requests().is_empty());
    }

    #[test]
    fn malformed_messages_close_or_are_refused() {
        let tor = server(SocksConfig::new());
        // Wrong greeting version: closed, not recorded.
        let mut client = connect(tor.addr()).unwrap();
        client.write_all(&[4, 1, 0]).unwrap();
        assert!(closed(&mut client));
        // Unsupported command (BIND): 0x07.
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[0]).unwrap(), [5, 0]);
        client
            .write_all(&[5, 2, 0, 1, 127, 0, 0, 1, 0, 80])
            .unwrap();
        assert_eq!(read_reply(&mut client).unwrap()[1], 0x07);
        // Unsupported address type: 0x08.
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[0]).unwrap(), [5, 0]);
        client.write_all(&[5, 1, 0, 9]).unwrap();
        assert_eq!(read_reply(&mut client).unwrap()[1], 0x08);
        // Wrong request version: closed.
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[0]).unwrap(), [5, 0]);
        client
            .write_all(&[4, 1, 0, 1, 127, 0, 0, 1, 0, 80])
            .unwrap();
        assert!(closed(&mut client));
        // Wrong sub-negotiation version: closed.
        tor.set_auth(AuthMode::user_pass_any());
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[2]).unwrap(), [5, 2]);
        client.write_all(&[5, 1, b'u', 1, b'p']).unwrap();
        assert!(closed(&mut client));

        let outcomes: Vec<_> = tor
            .requests()
            .iter()
            .map(|r| (r.command, r.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                (2, SocksOutcome::Replied(0x07)),
                (1, SocksOutcome::Replied(0x08))
            ]
        );
        assert!(wait_until(WAIT, || tor.open_connections() == 0));
    }

    #[test]
    fn set_down_refuses_connections_and_comes_back_on_the_same_port() {
        let directory = LineServer::start(LineBehaviour::Healthy).unwrap();
        let tor = server(SocksConfig::new().with_default_reply(Reply::Forward(directory.addr())));
        let addr = tor.addr();
        // A tunnel open across the outage survives it.
        let mut tunnel = connect(addr).unwrap();
        assert_eq!(socks_connect(&mut tunnel, "t.onion", 1).unwrap()[1], 0);
        read_line(&mut tunnel).unwrap();

        for _ in 0..3 {
            // Connections closed by the server leave TIME_WAIT sockets on
            // the port: the rebind must cope with them.
            tor.set_reply("closed.onion", Reply::Code(1));
            let mut client = connect(addr).unwrap();
            assert_eq!(socks_connect(&mut client, "closed.onion", 1).unwrap()[1], 1);
            assert!(closed(&mut client));

            tor.set_down(true).unwrap();
            assert!(tor.is_down());
            let refused = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1));
            assert_eq!(
                refused.map(|_| ()).unwrap_err().kind(),
                std::io::ErrorKind::ConnectionRefused
            );
            tor.set_down(true).unwrap(); // idempotent

            tor.set_down(false).unwrap();
            assert!(!tor.is_down());
            assert_eq!(tor.addr(), addr);
            let mut client = connect(addr).unwrap();
            assert_eq!(greet(&mut client, &[0]).unwrap(), [5, 0]);
        }
        tunnel.write_all(b"still here\n").unwrap();
        assert_eq!(read_line(&mut tunnel).unwrap(), "ECHO still here\r\n");
    }

    #[test]
    fn set_down_false_cuts_a_set_down_for_short() {
        let tor = server(SocksConfig::new());
        tor.set_down_for(Duration::from_secs(60)).unwrap();
        assert!(tor.is_down());
        tor.set_down(false).unwrap();
        assert!(!tor.is_down());
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[0]).unwrap(), [5, 0]);
    }

    #[test]
    fn set_down_for_comes_back_on_its_own() {
        let tor = server(SocksConfig::new());
        let addr = tor.addr();
        let started = Instant::now();
        tor.set_down_for(Duration::from_millis(150)).unwrap();
        assert!(tor.is_down());
        assert!(connect(addr).is_err());
        assert!(wait_until(WAIT, || connect(addr).is_ok()));
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert!(!tor.is_down());
    }

    #[test]
    fn drop_all_closes_tunnels_and_stalled_connections() {
        let directory = LineServer::start(LineBehaviour::Healthy).unwrap();
        let tor = server(
            SocksConfig::new()
                .with_reply("fwd.onion", Reply::Forward(directory.addr()))
                .with_default_reply(Reply::Stall),
        );
        let mut tunnel = connect(tor.addr()).unwrap();
        assert_eq!(socks_connect(&mut tunnel, "fwd.onion", 1).unwrap()[1], 0);
        read_line(&mut tunnel).unwrap();
        let mut stalled = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut stalled, &[0]).unwrap(), [5, 0]);
        send_connect_domain(&mut stalled, "stall.onion", 1).unwrap();
        // An idle connection that never sent its greeting.
        let mut idle = connect(tor.addr()).unwrap();
        assert!(wait_until(WAIT, || tor.open_connections() == 3));

        tor.drop_all();
        assert_eq!(tor.open_connections(), 0);
        assert!(closed(&mut tunnel));
        assert!(closed(&mut stalled));
        assert!(closed(&mut idle));
        assert!(wait_until(WAIT, || directory.open_connections() == 0));
        // Still accepting.
        let mut client = connect(tor.addr()).unwrap();
        assert_eq!(greet(&mut client, &[0]).unwrap(), [5, 0]);
    }

    #[test]
    fn drop_closes_everything_quickly() {
        let directory = LineServer::start(LineBehaviour::Healthy).unwrap();
        let tor = server(
            SocksConfig::new()
                .with_reply("fwd.onion", Reply::Forward(directory.addr()))
                .with_default_reply(Reply::Stall),
        );
        let addr = tor.addr();
        let mut tunnel = connect(addr).unwrap();
        assert_eq!(socks_connect(&mut tunnel, "fwd.onion", 1).unwrap()[1], 0);
        read_line(&mut tunnel).unwrap();
        let mut stalled = connect(addr).unwrap();
        assert_eq!(greet(&mut stalled, &[0]).unwrap(), [5, 0]);
        send_connect_domain(&mut stalled, "s.onion", 1).unwrap();
        assert!(wait_until(WAIT, || tor.open_connections() == 2));

        let probe = tor.server.leak_probe();
        let started = Instant::now();
        drop(tor);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(probe.released());
        assert!(closed(&mut tunnel));
        assert!(closed(&mut stalled));
        assert!(connect(addr).is_err());
        assert!(wait_until(WAIT, || directory.open_connections() == 0));
    }

    #[test]
    fn many_concurrent_tunnels() {
        let directory = LineServer::start(LineBehaviour::Healthy).unwrap();
        let tor = server(SocksConfig::new().with_default_reply(Reply::Forward(directory.addr())));
        let mut clients: Vec<_> = (0..16)
            .map(|i| {
                let mut client = connect(tor.addr()).unwrap();
                assert_eq!(
                    socks_connect(&mut client, &format!("{i}.onion"), 1).unwrap()[1],
                    0
                );
                client
            })
            .collect();
        for (i, client) in clients.iter_mut().enumerate() {
            read_line(client).unwrap();
            client.write_all(format!("n{i}\n").as_bytes()).unwrap();
            assert_eq!(read_line(client).unwrap(), format!("ECHO n{i}\r\n"));
        }
        assert_eq!(tor.open_connections(), 16);
        assert_eq!(directory.open_connections(), 16);
        drop(clients);
        assert!(wait_until(WAIT, || tor.open_connections() == 0));
        assert!(wait_until(WAIT, || directory.open_connections() == 0));
        let mut sink = Vec::new();
        let _ = connect(tor.addr()).unwrap().take(0).read_to_end(&mut sink);
    }
}
