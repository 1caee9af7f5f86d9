//! A tiny blocking client for this crate's own tests.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// Read timeout of test clients: long enough for a loaded machine, short
/// enough that a broken test fails instead of hanging.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(2);

/// Connects with a read timeout.
pub(crate) fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

/// Sends a SOCKS5 greeting offering `methods`; returns the server's choice.
pub(crate) fn greet(stream: &mut TcpStream, methods: &[u8]) -> io::Result<[u8; 2]> {
    let mut greeting = vec![5, u8::try_from(methods.len()).expect("few methods")];
    greeting.extend_from_slice(methods);
    stream.write_all(&greeting)?;
    let mut answer = [0u8; 2];
    stream.read_exact(&mut answer)?;
    Ok(answer)
}

/// Sends RFC 1929 credentials; returns the server's status answer.
pub(crate) fn authenticate(stream: &mut TcpStream, user: &str, pass: &str) -> io::Result<[u8; 2]> {
    let mut message = vec![1, u8::try_from(user.len()).expect("short user")];
    message.extend_from_slice(user.as_bytes());
    message.push(u8::try_from(pass.len()).expect("short password"));
    message.extend_from_slice(pass.as_bytes());
    stream.write_all(&message)?;
    let mut answer = [0u8; 2];
    stream.read_exact(&mut answer)?;
    Ok(answer)
}

/// Sends a CONNECT request to a domain (without reading the reply).
pub(crate) fn send_connect_domain(stream: &mut TcpStream, host: &str, port: u16) -> io::Result<()> {
    let mut request = vec![5, 1, 0, 3, u8::try_from(host.len()).expect("short host")];
    request.extend_from_slice(host.as_bytes());
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request)
}

/// Sends a CONNECT request to an IP address (without reading the reply).
pub(crate) fn send_connect_ip(stream: &mut TcpStream, ip: IpAddr, port: u16) -> io::Result<()> {
    let mut request = vec![5, 1, 0];
    match ip {
        IpAddr::V4(v4) => {
            request.push(1);
            request.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            request.push(4);
            request.extend_from_slice(&v6.octets());
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request)
}

/// Reads a 10-byte (IPv4 bound address) SOCKS5 reply.
pub(crate) fn read_reply(stream: &mut TcpStream) -> io::Result<[u8; 10]> {
    let mut reply = [0u8; 10];
    stream.read_exact(&mut reply)?;
    Ok(reply)
}

/// Greets without authentication and CONNECTs to `host:port`; returns the
/// reply.
pub(crate) fn socks_connect(stream: &mut TcpStream, host: &str, port: u16) -> io::Result<[u8; 10]> {
    assert_eq!(greet(stream, &[0])?, [5, 0]);
    send_connect_domain(stream, host, port)?;
    read_reply(stream)
}

/// Reads one line (up to and including `\n`), byte by byte.
pub(crate) fn read_line(stream: &mut TcpStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        if stream.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        line.push(byte[0]);
    }
    String::from_utf8(line).map_err(|_| io::ErrorKind::InvalidData.into())
}

/// `true` if the peer closed (EOF or reset) within the read timeout, with
/// no data before.
pub(crate) fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
    }
}

/// `true` if nothing arrives and the connection stays open for `duration`.
pub(crate) fn held(stream: &mut TcpStream, duration: Duration) -> bool {
    let mut byte = [0u8; 1];
    stream
        .set_read_timeout(Some(duration))
        .expect("set timeout");
    let result = match stream.read(&mut byte) {
        Err(e) => matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        Ok(_) => false,
    };
    stream.set_read_timeout(Some(TIMEOUT)).expect("set timeout");
    result
}
