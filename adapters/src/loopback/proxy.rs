//! [`LoopbackProxy`]: a minimal SOCKS5 server (RFC 1928, RFC 1929) on
//! 127.0.0.1 that reaches loopback addresses only.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dirpool_core::{ServerAddr, SocksReply};

use super::{DeadlineReader, Hub, LoopbackDirectory, LoopbackError, lock, write_all_within};

const SOCKS5: u8 = 0x05;
const METHOD_NO_AUTH: u8 = 0x00;
const METHOD_USER_PASS: u8 = 0x02;
const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;
/// RFC 1929 sub-negotiation version.
const USER_PASS_VERSION: u8 = 0x01;
const CMD_CONNECT: u8 = 0x01;
const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;
/// Bytes copied per read while relaying.
const RELAY_CHUNK: usize = 16 * 1024;

/// The bounds of a [`LoopbackProxy`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// Client connections served at once; more are closed on arrival.
    pub max_connections: usize,
    /// Names [`LoopbackProxy::route`] may map.
    pub max_routes: usize,
    /// Bound on a client's greeting, authentication and request together.
    pub negotiation_timeout: Duration,
    /// Bound on reaching a target.
    pub connect_timeout: Duration,
    /// A tunnel one of whose directions carries nothing for this long is
    /// closed.
    pub idle_timeout: Duration,
    /// Bound on each write to either side.
    pub write_timeout: Duration,
}

impl Default for ProxySettings {
    /// 64 connections, 1,024 routes, 10 s to negotiate, 5 s to connect,
    /// tunnels idle for an hour closed, 30 s per write.
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_routes: 1024,
            negotiation_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3600),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// A SOCKS5 server on 127.0.0.1, standing in for Tor's SocksPort.
///
/// It offers "no authentication" and username/password (any credentials
/// pass, as with Tor, which uses them for stream isolation only; when a
/// client offers both it picks username/password, as Tor does with
/// `IsolateSOCKSAuth`). It CONNECTs to a domain name mapped by
/// [`route`](Self::route) (any port) or to an IPv4 address in 127.0.0.0/8,
/// and refuses everything else with the reply Tor would give:
/// - an unmapped `.onion` name: 0xF0 (onion descriptor not found);
/// - another unmapped name: 0x04 (host unreachable);
/// - an address outside 127.0.0.0/8, or IPv6: 0x02 (not allowed);
/// - a command other than CONNECT: 0x07; an unknown address type: 0x08;
/// - a target that refuses: 0x05.
///
/// Dropping it closes every tunnel and joins its threads.
pub struct LoopbackProxy {
    listener: super::Listener,
    routes: Arc<Mutex<HashMap<String, SocketAddr>>>,
    max_routes: usize,
}

impl fmt::Debug for LoopbackProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopbackProxy")
            .field("addr", &self.listener.addr)
            .field("routes", &lock(&self.routes).len())
            .finish_non_exhaustive()
    }
}

impl LoopbackProxy {
    /// Starts a proxy with the default [`ProxySettings`].
    ///
    /// # Errors
    /// Binding the listener or starting its thread failed.
    pub fn start() -> Result<Self, LoopbackError> {
        Self::with_settings(ProxySettings::default())
    }

    /// Starts a proxy with these bounds.
    ///
    /// # Errors
    /// Binding the listener or starting its thread failed.
    pub fn with_settings(settings: ProxySettings) -> Result<Self, LoopbackError> {
        let routes = Arc::new(Mutex::new(HashMap::new()));
        let max_routes = settings.max_routes;
        let served_routes = Arc::clone(&routes);
        let listener = super::Listener::start(
            "loopback-socks",
            settings.max_connections,
            move |hub, client| {
                if let Err(e) = serve(hub, &settings, &served_routes, client) {
                    tracing::debug!(error = %e, "loopback proxy: connection ended");
                }
            },
        )?;
        Ok(Self {
            listener,
            routes,
            max_routes,
        })
    }

    /// Where it listens (a proxy address for [`Config::proxy`](crate::Config::proxy)).
    pub fn addr(&self) -> SocketAddr {
        self.listener.addr
    }

    /// CONNECTs to `host` (a domain name, case-insensitive, any port) go to
    /// `to` from now on.
    ///
    /// # Errors
    /// [`LoopbackError::NotLoopback`] unless `to` is in 127.0.0.0/8;
    /// [`LoopbackError::TooManyRoutes`] past `max_routes` names.
    pub fn route(&self, host: &str, to: SocketAddr) -> Result<(), LoopbackError> {
        if !matches!(to.ip(), IpAddr::V4(ip) if ip.is_loopback()) {
            return Err(LoopbackError::NotLoopback(to));
        }
        let mut routes = lock(&self.routes);
        let host = host.to_ascii_lowercase();
        if !routes.contains_key(&host) && routes.len() >= self.max_routes {
            return Err(LoopbackError::TooManyRoutes(self.max_routes));
        }
        routes.insert(host, to);
        Ok(())
    }

    /// Routes the directory's fake onion ([`LoopbackDirectory::onion`]) to
    /// it and returns that onion address, the one to put in a pool's
    /// [`Config`](crate::Config).
    ///
    /// # Errors
    /// As [`route`](Self::route).
    pub fn route_directory(
        &self,
        directory: &LoopbackDirectory,
    ) -> Result<ServerAddr, LoopbackError> {
        let onion = directory.onion();
        self.route(onion.host(), directory.addr())?;
        Ok(onion)
    }
}

/// Where a CONNECT request asked to go.
enum Target {
    Ip(IpAddr),
    Name(String),
}

fn serve(
    hub: &Arc<Hub>,
    settings: &ProxySettings,
    routes: &Mutex<HashMap<String, SocketAddr>>,
    client: TcpStream,
) -> io::Result<()> {
    let _held = hub.hold(&client)?;
    let mut reader = DeadlineReader::new(client.try_clone()?, settings.negotiation_timeout);
    let reply = |bytes: &[u8]| write_all_within(&client, bytes, settings.write_timeout);

    let [version, count] = read_array(&mut reader)?;
    if version != SOCKS5 {
        return Err(io::Error::other("not SOCKS5"));
    }
    let mut methods = vec![0; usize::from(count)];
    reader.read_exact(&mut methods)?;
    let method = if methods.contains(&METHOD_USER_PASS) {
        METHOD_USER_PASS
    } else if methods.contains(&METHOD_NO_AUTH) {
        METHOD_NO_AUTH
    } else {
        METHOD_NONE_ACCEPTABLE
    };
    reply(&[SOCKS5, method])?;
    if method == METHOD_NONE_ACCEPTABLE {
        return Ok(());
    }
    if method == METHOD_USER_PASS {
        // RFC 1929: VER ULEN UNAME PLEN PASSWD; any credentials pass.
        let [version, user_len] = read_array(&mut reader)?;
        skip(&mut reader, usize::from(user_len))?;
        let [pass_len] = read_array(&mut reader)?;
        skip(&mut reader, usize::from(pass_len))?;
        let ok = version == USER_PASS_VERSION;
        reply(&[USER_PASS_VERSION, if ok { 0x00 } else { 0x01 }])?;
        if !ok {
            return Ok(());
        }
    }

    let [version, command, _reserved, atyp] = read_array(&mut reader)?;
    if version != SOCKS5 {
        return Err(io::Error::other("not SOCKS5"));
    }
    let target = match atyp {
        ATYP_IPV4 => Target::Ip(Ipv4Addr::from(read_array::<4>(&mut reader)?).into()),
        ATYP_IPV6 => Target::Ip(Ipv6Addr::from(read_array::<16>(&mut reader)?).into()),
        ATYP_DOMAIN => {
            let [len] = read_array(&mut reader)?;
            let mut name = vec![0; usize::from(len)];
            reader.read_exact(&mut name)?;
            Target::Name(String::from_utf8_lossy(&name).to_ascii_lowercase())
        }
        _ => return refuse(reply, SocksReply::AddressTypeNotSupported),
    };
    let port = u16::from_be_bytes(read_array(&mut reader)?);
    if command != CMD_CONNECT {
        return refuse(reply, SocksReply::CommandNotSupported);
    }
    let to = match target {
        Target::Ip(IpAddr::V4(ip)) if ip.is_loopback() => SocketAddr::new(ip.into(), port),
        Target::Ip(_) => return refuse(reply, SocksReply::NotAllowed),
        Target::Name(name) => match lock(routes).get(&name) {
            Some(to) => *to,
            None if name.ends_with(".onion") => {
                return refuse(reply, SocksReply::OnionDescriptorNotFound);
            }
            None => return refuse(reply, SocksReply::HostUnreachable),
        },
    };
    let upstream = match TcpStream::connect_timeout(&to, settings.connect_timeout) {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::debug!(%to, error = %e, "loopback proxy: target unreachable");
            return refuse(reply, SocksReply::ConnectionRefused);
        }
    };
    let _held_upstream = hub.hold(&upstream)?;
    let bound = upstream.local_addr()?;
    let mut success = vec![SOCKS5, 0x00, 0x00, ATYP_IPV4];
    match bound.ip() {
        IpAddr::V4(ip) => success.extend_from_slice(&ip.octets()),
        IpAddr::V6(_) => success.extend_from_slice(&[0; 4]),
    }
    success.extend_from_slice(&bound.port().to_be_bytes());
    reply(&success)?;

    // Client → target on this thread, target → client on another.
    let (idle, write) = (settings.idle_timeout, settings.write_timeout);
    let (down_from, down_to) = (upstream.try_clone()?, client.try_clone()?);
    hub.spawn("loopback-socks-relay", move || {
        relay(DeadlineReader::new(down_from, idle), &down_to, idle, write);
    })?;
    relay(reader, &upstream, idle, write);
    Ok(())
}

/// Copies until end of stream (then half-closes `to`) or an error, a
/// silence of `idle` or a write slower than `write` (then closes both
/// sides, which ends the other direction too).
fn relay(mut from: DeadlineReader, to: &TcpStream, idle: Duration, write: Duration) {
    let mut chunk = vec![0; RELAY_CHUNK];
    loop {
        from.extend(idle);
        match from.read(&mut chunk) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if write_all_within(to, &chunk[..n], write).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.stream.shutdown(Shutdown::Both);
}

/// Sends a failure reply (with an all-zero bound address) and ends.
fn refuse(send: impl Fn(&[u8]) -> io::Result<()>, reply: SocksReply) -> io::Result<()> {
    send(&[SOCKS5, reply.code(), 0x00, ATYP_IPV4, 0, 0, 0, 0, 0, 0])
}

fn read_array<const N: usize>(reader: &mut impl Read) -> io::Result<[u8; N]> {
    let mut bytes = [0; N];
    reader.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn skip(reader: &mut impl Read, len: usize) -> io::Result<()> {
    let mut bytes = vec![0; len];
    reader.read_exact(&mut bytes)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;

    use super::*;

    /// An echo server on 127.0.0.1 for one connection.
    fn echo_once() -> (SocketAddr, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0; 64];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => stream.write_all(&buf[..n]).unwrap(),
                }
            }
        });
        (addr, thread)
    }

    fn connect_request(target: &[u8], port: u16) -> Vec<u8> {
        let mut request = vec![SOCKS5, CMD_CONNECT, 0x00];
        request.extend_from_slice(target);
        request.extend_from_slice(&port.to_be_bytes());
        request
    }

    fn domain(name: &str) -> Vec<u8> {
        let mut bytes = vec![ATYP_DOMAIN, u8::try_from(name.len()).unwrap()];
        bytes.extend_from_slice(name.as_bytes());
        bytes
    }

    /// Negotiates `greeting` (and credentials if the proxy picks them),
    /// sends `request` and returns the method picked and the reply code.
    fn ask(proxy: &LoopbackProxy, greeting: &[u8], request: &[u8]) -> (TcpStream, u8, u8) {
        let mut client = TcpStream::connect(proxy.addr()).unwrap();
        client.write_all(greeting).unwrap();
        let [_, method] = read_array(&mut client).unwrap();
        if method == METHOD_USER_PASS {
            client.write_all(b"\x01\x04user\x08password").unwrap();
            assert_eq!(read_array(&mut client).unwrap(), [USER_PASS_VERSION, 0x00]);
        }
        client.write_all(request).unwrap();
        let [version, code, _, atyp] = read_array(&mut client).unwrap();
        assert_eq!((version, atyp), (SOCKS5, ATYP_IPV4));
        let _bound: [u8; 6] = read_array(&mut client).unwrap();
        (client, method, code)
    }

    fn assert_echoes(client: &mut TcpStream) {
        client.write_all(b"ping").unwrap();
        assert_eq!(&read_array::<4>(client).unwrap(), b"ping");
    }

    #[test]
    fn no_auth_connects_to_a_loopback_ipv4_address() {
        let proxy = LoopbackProxy::start().unwrap();
        let (echo, _thread) = echo_once();
        let request = connect_request(&[ATYP_IPV4, 127, 0, 0, 1], echo.port());
        let (mut client, method, code) = ask(&proxy, &[SOCKS5, 1, METHOD_NO_AUTH], &request);
        assert_eq!((method, code), (METHOD_NO_AUTH, 0x00));
        assert_echoes(&mut client);
    }

    #[test]
    fn username_password_is_preferred_and_a_routed_onion_is_reached() {
        let proxy = LoopbackProxy::start().unwrap();
        let (echo, _thread) = echo_once();
        let onion = super::super::fake_onion("echo");
        proxy.route(&onion.host().to_uppercase(), echo).unwrap();
        let greeting = [SOCKS5, 2, METHOD_NO_AUTH, METHOD_USER_PASS];
        let request = connect_request(&domain(onion.host()), 5222);
        let (mut client, method, code) = ask(&proxy, &greeting, &request);
        assert_eq!((method, code), (METHOD_USER_PASS, 0x00));
        assert_echoes(&mut client);
    }

    #[test]
    fn everything_else_is_refused_with_its_reply_code() {
        let proxy = LoopbackProxy::start().unwrap();
        let greeting = [SOCKS5, 1, METHOD_NO_AUTH];
        let unrouted = super::super::fake_onion("nobody");
        let mut ipv6 = vec![ATYP_IPV6];
        ipv6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        let mut bind = connect_request(&[ATYP_IPV4, 127, 0, 0, 1], 80);
        bind[1] = 0x02;
        let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let cases = [
            (connect_request(&domain(unrouted.host()), 5222), 0xF0),
            (connect_request(&domain("example.com"), 443), 0x04),
            (connect_request(&[ATYP_IPV4, 192, 0, 2, 7], 5222), 0x02),
            (connect_request(&ipv6, 5222), 0x02),
            (bind, 0x07),
            (
                connect_request(&[ATYP_IPV4, 127, 0, 0, 1], closed_port),
                0x05,
            ),
        ];
        for (request, expected) in cases {
            let (_, _, code) = ask(&proxy, &greeting, &request);
            assert_eq!(code, expected, "{request:?}");
        }
        // An unknown address type: 0x08 (nothing after ATYP is read).
        let mut client = TcpStream::connect(proxy.addr()).unwrap();
        client.write_all(&greeting).unwrap();
        let _: [u8; 2] = read_array(&mut client).unwrap();
        client.write_all(&[SOCKS5, CMD_CONNECT, 0, 0x09]).unwrap();
        assert_eq!(read_array::<2>(&mut client).unwrap(), [SOCKS5, 0x08]);
        // No acceptable method: 0xFF.
        let mut client = TcpStream::connect(proxy.addr()).unwrap();
        client.write_all(&[SOCKS5, 1, 0x01]).unwrap();
        assert_eq!(read_array::<2>(&mut client).unwrap(), [SOCKS5, 0xFF]);
        // Routes lead to loopback only.
        assert!(matches!(
            proxy.route("x.example", "192.0.2.1:80".parse().unwrap()),
            Err(LoopbackError::NotLoopback(_))
        ));
    }

    #[test]
    fn a_dropped_proxy_closes_its_open_tunnels() {
        let proxy = LoopbackProxy::start().unwrap();
        let (echo, _thread) = echo_once();
        let request = connect_request(&[ATYP_IPV4, 127, 0, 0, 1], echo.port());
        let (mut client, _, code) = ask(&proxy, &[SOCKS5, 1, METHOD_NO_AUTH], &request);
        assert_eq!(code, 0x00);
        assert_echoes(&mut client);
        drop(proxy);
        assert_eq!(client.read(&mut [0; 8]).unwrap(), 0, "closed by the drop");
    }
}
