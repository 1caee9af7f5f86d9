//! Reaching a directory server: through the Tor SOCKS5 proxy (RFC 1928, with
//! RFC 1929 username/password for stream isolation), or directly for IP
//! hosts when the caller asks for it.
//!
//! The SOCKS exchange itself is [`async_socks5::connect`]; this module adds
//! what it lacks:
//!
//! - **Isolation guard.** With credentials, async-socks5 offers both "no
//!   authentication" and username/password, so a proxy could pick "no
//!   authentication" and silently drop isolation. Every isolated dial watches
//!   the proxy's method selection and refuses to send the CONNECT request if
//!   the proxy picked "no authentication"
//!   ([`DialError::IsolationUnsupported`]); [`probe_isolation`] checks the
//!   proxy up front with a greeting that offers username/password only.
//! - **Precise errors.** Every async-socks5 error becomes the [`DialError`]
//!   that says who failed: the proxy (down, broken, refusing our
//!   credentials) or the path to the target (a SOCKS reply, including Tor's
//!   onion-service codes 0xF0–0xF7).
//! - **No lost bytes.** The stream is never read ahead: async-socks5 reads
//!   the reply byte by byte, so the directory's first bytes, which may arrive
//!   in the same segment as the SOCKS reply, stay in the stream for the
//!   caller. During the exchange writes go through a [`BufWriter`], so each
//!   SOCKS message leaves in one segment rather than one per field; the
//!   buffer is flushed and removed before the stream is returned.
//!
//! One timeout here: the proxy must connect and send its first byte within
//! `proxy_timeout` (a silent proxy is a pool-wide fault, reported as
//! [`DialError::ProxyTimedOut`]); the caller bounds the whole dial. Nothing loops or
//! buffers without bound on hostile input (SOCKS fields are at most 255
//! bytes, the probe reads two bytes).
//!
//! The password is never logged or put in an error; only the username is.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_socks5::{AddrKind, Auth, UnsuccessfulReply};
use dirpool_core::{ServerAddr, SocksCredentials, SocksReply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};
use tracing::debug;

use crate::error::{BoxError, CredentialsError, DialError};
use crate::runtime::{BoxedStream, Runtime, before};

/// SOCKS protocol version 5.
const SOCKS5: u8 = 0x05;
/// Authentication method "no authentication required".
const METHOD_NO_AUTH: u8 = 0x00;
/// Authentication method "username/password" (RFC 1929).
const METHOD_USER_PASS: u8 = 0x02;
/// Version of the RFC 1929 username/password sub-negotiation.
const USER_PASS_VERSION: u8 = 0x01;
/// The method selection "no acceptable methods".
const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;
/// Longest RFC 1929 username or password, in bytes (sent in one length byte).
const MAX_CREDENTIAL_LEN: usize = 255;
/// Username prefix that Tor and arti parse as extended SOCKS parameters.
const TOR_EXTENDED_PREFIX: &str = "<torS0X>";

/// The route of a dial to `target`, decided once per dial: `Some(ip)`, a
/// plain TCP connection to the target, when `direct_clearnet` is set and
/// `target` is an IP address (never an onion); `None`, through the SOCKS5
/// proxy, otherwise. A DNS-name target goes through the proxy even with
/// `direct_clearnet`: resolving it here would need the blocking system
/// resolver (the [`Runtime`] has no asynchronous one) and would leak the
/// name to the local DNS server.
pub(crate) fn route(direct_clearnet: bool, target: &ServerAddr) -> Option<IpAddr> {
    if !direct_clearnet || target.is_onion() {
        return None;
    }
    let ip = target.ip();
    if ip.is_none() {
        debug!(
            target = %target,
            "direct route asked for a DNS name; going through the proxy (no local resolution)"
        );
    }
    ip
}

/// Opens a stream to `target` on the route [`route`] decided, ready for
/// the directory handshake.
///
/// - `direct` is `Some(ip)`: a plain TCP connection to `ip` at the
///   target's port; the proxy is not used.
/// - `None`: through the SOCKS5 proxy at `proxy`: onion and DNS hosts by
///   name (Tor resolves them; nothing goes to the local resolver), IP hosts
///   by address.
///
/// With `credentials`, the proxy must take them (RFC 1929): a proxy that
/// picks "no authentication" instead would drop stream isolation, so the
/// dial fails with [`DialError::IsolationUnsupported`] before any CONNECT
/// request is sent.
///
/// The returned stream is the bare proxy connection: neither reads nor
/// writes are buffered, so whatever the server sent right after the SOCKS
/// reply is the first thing read from it.
///
/// No timeout is applied here; the caller bounds the dial.
///
/// # Errors
///
/// | what happened | error |
/// |---|---|
/// | direct connection failed | [`DialError::Io`] |
/// | TCP connection to the proxy failed | [`DialError::ProxyUnreachable`] |
/// | CONNECT answered with reply code `c` ≠ 0 | [`DialError::Socks`] with `SocksReply::from_code(c)` |
/// | username/password refused (status ≠ 0) | [`DialError::ProxyAuthRejected`] |
/// | no acceptable method, or "no authentication" picked, with credentials | [`DialError::IsolationUnsupported`] |
/// | proxy closed or reset during the exchange, or broke the protocol | [`DialError::ProxyProtocol`] |
/// | any other I/O error | [`DialError::Io`] |
pub(crate) async fn dial(
    rt: &dyn Runtime,
    proxy: SocketAddr,
    proxy_timeout: Duration,
    direct: Option<IpAddr>,
    target: &ServerAddr,
    credentials: Option<&SocksCredentials>,
) -> Result<BoxedStream, DialError> {
    match direct {
        Some(ip) => dial_direct(rt, ip, target).await,
        None => dial_via_proxy(rt, proxy, proxy_timeout, target, credentials).await,
    }
}

/// Connects to the proxy, bounded by `proxy_timeout`: a proxy address that
/// swallows the SYN is as unreachable as one that refuses it.
async fn connect_proxy(
    rt: &dyn Runtime,
    proxy: SocketAddr,
    proxy_timeout: Duration,
) -> Result<BoxedStream, DialError> {
    let unreachable = |source| DialError::ProxyUnreachable { proxy, source };
    let Some(deadline) = rt.now().checked_add(proxy_timeout) else {
        return rt.connect_tcp(proxy).await.map_err(unreachable);
    };
    match before(rt.sleep_until(deadline), rt.connect_tcp(proxy)).await {
        Some(result) => result.map_err(unreachable),
        None => Err(unreachable(io::Error::new(
            io::ErrorKind::TimedOut,
            "TCP connect to the proxy timed out",
        ))),
    }
}

/// Runs `exchange` (a SOCKS exchange on a stream whose first answer sets
/// `answered`); if the proxy has sent nothing by `proxy_timeout`, gives up
/// with [`DialError::ProxyTimedOut`]. Once the proxy has answered, the
/// exchange may take as long as the caller allows (Tor's CONNECT reply
/// waits for the circuit to the onion service).
async fn proxy_must_answer<T>(
    rt: &dyn Runtime,
    proxy: SocketAddr,
    proxy_timeout: Duration,
    answered: &AtomicBool,
    exchange: impl std::future::Future<Output = T>,
) -> Result<T, DialError> {
    let exchange = std::pin::pin!(exchange);
    let Some(deadline) = rt.now().checked_add(proxy_timeout) else {
        return Ok(exchange.await);
    };
    match futures::future::select(exchange, rt.sleep_until(deadline)).await {
        futures::future::Either::Left((output, _)) => Ok(output),
        futures::future::Either::Right(((), exchange)) => {
            if answered.load(Ordering::Acquire) {
                Ok(exchange.await)
            } else {
                Err(DialError::ProxyTimedOut {
                    proxy,
                    waited: proxy_timeout,
                })
            }
        }
    }
}

/// A plain TCP connection to an IP target.
async fn dial_direct(
    rt: &dyn Runtime,
    ip: IpAddr,
    target: &ServerAddr,
) -> Result<BoxedStream, DialError> {
    let addr = SocketAddr::new(ip, target.port());
    debug!(target = %target, "connecting directly");
    rt.connect_tcp(addr).await.map_err(|source| DialError::Io {
        target: target.node_id().to_owned(),
        source,
    })
}

/// A SOCKS5 CONNECT through `proxy`.
async fn dial_via_proxy(
    rt: &dyn Runtime,
    proxy: SocketAddr,
    proxy_timeout: Duration,
    target: &ServerAddr,
    credentials: Option<&SocksCredentials>,
) -> Result<BoxedStream, DialError> {
    let username = credentials.map(SocksCredentials::username);
    debug!(proxy = %proxy, target = %target, username, "connecting to the SOCKS proxy");
    let stream = connect_proxy(rt, proxy, proxy_timeout).await?;

    // Not a BufReader or BufStream: a read-ahead buffer would swallow the
    // bytes the server sends right after the SOCKS reply.
    let answered = Arc::new(AtomicBool::new(false));
    let mut guarded = MethodGuard::new(
        BufWriter::new(stream),
        credentials.is_some(),
        Arc::clone(&answered),
    );
    let addr = match target.ip() {
        Some(ip) => AddrKind::Ip(SocketAddr::new(ip, target.port())),
        None => AddrKind::Domain(target.host().to_owned(), target.port()),
    };
    let auth = credentials.map(|c| {
        debug_assert!(
            validate_credentials(c.username(), c.password().expose()).is_ok(),
            "invalid SOCKS credentials for user {:?}",
            c.username()
        );
        Auth::new(c.username(), c.password().expose())
    });

    let exchange = async_socks5::connect(&mut guarded, addr, auth);
    let outcome = proxy_must_answer(rt, proxy, proxy_timeout, &answered, exchange).await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            debug!(proxy = %proxy, error = %error, "SOCKS proxy silent");
            return Err(error);
        }
    };
    if let Err(error) = outcome {
        let error = map_socks_error(error, guarded.no_auth_picked(), proxy, target, username);
        debug!(proxy = %proxy, target = %target, error = %error, "SOCKS CONNECT failed");
        return Err(error);
    }
    let mut stream = guarded.into_inner();
    stream.flush().await.map_err(|source| DialError::Io {
        target: target.node_id().to_owned(),
        source,
    })?;
    debug!(proxy = %proxy, target = %target, "SOCKS CONNECT succeeded");
    // The buffer only batched the SOCKS messages; hand back the bare
    // stream so the caller's writes are not held back by a buffer it did
    // not ask for. (Flushed above, so nothing is left in it.)
    Ok(stream.into_inner())
}

/// Checks that the proxy at `proxy` takes username/password authentication,
/// as stream isolation needs: sends a greeting that offers only method 0x02
/// and reads the proxy's choice. Without `fixed` it then drops the
/// connection (no credentials, no CONNECT request: the isolation
/// credentials vary per dial). With `fixed`, the credentials of a proxy
/// that requires them, it also authenticates (RFC 1929) and reads the
/// verdict, then drops the connection without a CONNECT request.
///
/// No timeout is applied here beyond `proxy_timeout` for each answer; the
/// caller bounds the probe.
///
/// # Errors
///
/// - [`DialError::ProxyUnreachable`]: the TCP connection failed.
/// - [`DialError::IsolationUnsupported`]: the proxy answered "no acceptable
///   methods" (0xFF).
/// - [`DialError::ProxyAuthRejected`]: `fixed` was refused (status ≠ 0);
///   the error names the username, never the password.
/// - [`DialError::ProxyProtocol`]: the proxy picked a method we did not
///   offer, answered with another SOCKS version or sub-negotiation version,
///   closed the connection, or an I/O error happened after connecting.
pub(crate) async fn probe_isolation(
    rt: &dyn Runtime,
    proxy: SocketAddr,
    proxy_timeout: Duration,
    fixed: Option<&SocksCredentials>,
) -> Result<(), DialError> {
    debug!(proxy = %proxy, "probing the SOCKS proxy for username/password support");
    let mut stream = connect_proxy(rt, proxy, proxy_timeout).await?;
    let mut answer = [0u8; 2];
    let greeting = [SOCKS5, 0x01, METHOD_USER_PASS];
    ask_proxy(
        rt,
        proxy,
        proxy_timeout,
        &mut stream,
        &greeting,
        &mut answer,
    )
    .await?;
    let result = match answer {
        [SOCKS5, METHOD_USER_PASS] => match fixed {
            Some(credentials) => {
                authenticate(rt, proxy, proxy_timeout, &mut stream, credentials).await
            }
            None => Ok(()),
        },
        [SOCKS5, METHOD_NONE_ACCEPTABLE] => Err(DialError::IsolationUnsupported { proxy }),
        [SOCKS5, method] => Err(DialError::ProxyProtocol {
            proxy,
            source: Box::new(ProtocolViolation::UnofferedMethod(method)),
        }),
        [version, _] => Err(DialError::ProxyProtocol {
            proxy,
            source: Box::new(ProtocolViolation::Version(version)),
        }),
    };
    debug!(proxy = %proxy, ok = result.is_ok(), "SOCKS isolation probe answered");
    result
}

/// One step of the probe: writes `request`, then reads exactly
/// `answer.len()` bytes within `proxy_timeout`. Nothing else is read, so
/// an answer is the whole step ("answered" is "done").
async fn ask_proxy(
    rt: &dyn Runtime,
    proxy: SocketAddr,
    proxy_timeout: Duration,
    stream: &mut BoxedStream,
    request: &[u8],
    answer: &mut [u8],
) -> Result<(), DialError> {
    let protocol = |source: io::Error| DialError::ProxyProtocol {
        proxy,
        source: Box::new(source),
    };
    stream.write_all(request).await.map_err(protocol)?;
    stream.flush().await.map_err(protocol)?;
    let never = AtomicBool::new(false);
    proxy_must_answer(rt, proxy, proxy_timeout, &never, stream.read_exact(answer))
        .await?
        .map_err(protocol)?;
    Ok(())
}

/// The RFC 1929 sub-negotiation of the probe: sends `credentials` in one
/// message and reads the two-byte verdict within `proxy_timeout`.
async fn authenticate(
    rt: &dyn Runtime,
    proxy: SocketAddr,
    proxy_timeout: Duration,
    stream: &mut BoxedStream,
    credentials: &SocksCredentials,
) -> Result<(), DialError> {
    let username = credentials.username().as_bytes();
    let password = credentials.password().expose().as_bytes();
    // Validated at start-up; a length that does not fit one byte is refused
    // here rather than sent truncated.
    let (Ok(username_len), Ok(password_len)) =
        (u8::try_from(username.len()), u8::try_from(password.len()))
    else {
        return Err(DialError::ProxyProtocol {
            proxy,
            source: Box::new(ProtocolViolation::CredentialsTooLong),
        });
    };
    let mut message = Vec::with_capacity(3 + username.len() + password.len());
    message.push(USER_PASS_VERSION);
    message.push(username_len);
    message.extend_from_slice(username);
    message.push(password_len);
    message.extend_from_slice(password);
    let mut verdict = [0u8; 2];
    ask_proxy(rt, proxy, proxy_timeout, stream, &message, &mut verdict).await?;
    match verdict {
        [USER_PASS_VERSION, 0x00] => Ok(()),
        [USER_PASS_VERSION, _] => Err(DialError::ProxyAuthRejected {
            proxy,
            username: credentials.username().to_owned(),
        }),
        [version, _] => Err(DialError::ProxyProtocol {
            proxy,
            source: Box::new(ProtocolViolation::AuthVersion(version)),
        }),
    }
}

/// Checks a SOCKS5 username/password pair before it is used: each must be 1
/// to 255 bytes long (RFC 1929), and the username must not start with
/// `<torS0X>`, which Tor and arti parse as extended SOCKS parameters rather
/// than as an isolation key.
///
/// # Errors
///
/// The first problem found, username first: [`CredentialsError::Empty`],
/// [`CredentialsError::TooLong`] or [`CredentialsError::ReservedPrefix`].
/// The error never contains the password.
pub fn validate_credentials(username: &str, password: &str) -> Result<(), CredentialsError> {
    check_length("username", username)?;
    if username.starts_with(TOR_EXTENDED_PREFIX) {
        return Err(CredentialsError::ReservedPrefix);
    }
    check_length("password", password)
}

/// Checks that `value` is 1 to 255 bytes long.
fn check_length(field: &'static str, value: &str) -> Result<(), CredentialsError> {
    match value.len() {
        0 => Err(CredentialsError::Empty(field)),
        len if len > MAX_CREDENTIAL_LEN => Err(CredentialsError::TooLong { field, len }),
        _ => Ok(()),
    }
}

/// Maps an async-socks5 error to the [`DialError`] that says who failed.
///
/// `no_auth_picked`: the proxy picked "no authentication" although we had
/// credentials (and [`MethodGuard`] stopped the exchange).
fn map_socks_error(
    error: async_socks5::Error,
    no_auth_picked: bool,
    proxy: SocketAddr,
    target: &ServerAddr,
    username: Option<&str>,
) -> DialError {
    use async_socks5::Error as E;

    if no_auth_picked {
        return DialError::IsolationUnsupported { proxy };
    }
    let protocol = |source: BoxError| DialError::ProxyProtocol { proxy, source };
    match error {
        E::Response(reply) => DialError::Socks {
            target: target.node_id().to_owned(),
            reply: SocksReply::from_code(reply_code(reply)),
        },
        E::InvalidAuthStatus(status) => match username {
            Some(username) => DialError::ProxyAuthRejected {
                proxy,
                username: username.to_owned(),
            },
            // async-socks5 authenticates only when given credentials.
            None => protocol(Box::new(E::InvalidAuthStatus(status))),
        },
        E::NoAcceptableMethods if username.is_some() => DialError::IsolationUnsupported { proxy },
        E::Io(source) if closed_by_peer(&source) => protocol(Box::new(source)),
        E::Io(source) => DialError::Io {
            target: target.node_id().to_owned(),
            source,
        },
        // NoAcceptableMethods without credentials, InvalidAuthMethod (a
        // method we did not offer), versions, address type, reserved byte,
        // UTF-8, over-long strings.
        other => protocol(Box::new(other)),
    }
}

/// The wire code of an unsuccessful reply (Tor's 0xF0–0xF7 arrive as
/// `Unassigned`).
fn reply_code(reply: UnsuccessfulReply) -> u8 {
    match reply {
        UnsuccessfulReply::GeneralFailure => 0x01,
        UnsuccessfulReply::ConnectionNotAllowedByRules => 0x02,
        UnsuccessfulReply::NetworkUnreachable => 0x03,
        UnsuccessfulReply::HostUnreachable => 0x04,
        UnsuccessfulReply::ConnectionRefused => 0x05,
        UnsuccessfulReply::TtlExpired => 0x06,
        UnsuccessfulReply::CommandNotSupported => 0x07,
        UnsuccessfulReply::AddressTypeNotSupported => 0x08,
        UnsuccessfulReply::Unassigned(code) => code,
    }
}

/// Whether an I/O error means the proxy closed or reset the connection.
fn closed_by_peer(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// How a proxy broke the protocol, as the source of
/// [`DialError::ProxyProtocol`].
#[derive(Debug, thiserror::Error)]
enum ProtocolViolation {
    /// The method selection has a version other than 5.
    #[error("the proxy answered with SOCKS version {0:#04x}, not 5")]
    Version(u8),
    /// The username/password verdict has a version other than 1.
    #[error("the proxy answered the username/password message with version {0:#04x}, not 1")]
    AuthVersion(u8),
    /// Credentials longer than RFC 1929 allows (refused by the
    /// configuration check before they get here).
    #[error("the SOCKS username or password is longer than 255 bytes")]
    CredentialsTooLong,
    /// The proxy picked a method that was not offered.
    #[error("the proxy picked authentication method {0:#04x}, which was not offered")]
    UnofferedMethod(u8),
    /// The proxy picked "no authentication" although username/password was
    /// offered for stream isolation.
    #[error("the proxy picked \"no authentication\"; stream isolation would be lost")]
    NoAuthPicked,
}

/// A stream wrapper that watches the proxy's method selection (the first two
/// bytes it sends) and, when credentials were offered, fails every write
/// once the proxy has picked "no authentication": async-socks5 would carry
/// on without authenticating and send the CONNECT request on a stream that
/// is not isolated. Buffers two bytes at most.
struct MethodGuard<S> {
    /// The proxy connection.
    inner: S,
    /// The first bytes read: version and chosen method.
    selection: [u8; 2],
    /// How many of `selection` have been read (0 to 2).
    seen: usize,
    /// Whether credentials were offered, so "no authentication" is refused.
    require_auth: bool,
    /// Set once the proxy has sent a byte (it is alive and speaking).
    answered: Arc<AtomicBool>,
}

impl<S> MethodGuard<S> {
    /// Wraps `inner`.
    fn new(inner: S, require_auth: bool, answered: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            selection: [0; 2],
            seen: 0,
            require_auth,
            answered,
        }
    }

    /// Whether credentials were offered and the proxy picked "no
    /// authentication" anyway.
    fn no_auth_picked(&self) -> bool {
        self.require_auth && self.seen == 2 && self.selection == [SOCKS5, METHOD_NO_AUTH]
    }

    /// The wrapped stream.
    fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MethodGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            this.answered.store(true, Ordering::Release);
        }
        let take = new.len().min(this.selection.len() - this.seen);
        this.selection[this.seen..this.seen + take].copy_from_slice(&new[..take]);
        this.seen += take;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MethodGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.no_auth_picked() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                ProtocolViolation::NoAuthPicked,
            )));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(all(test, feature = "tokio"))]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use dirpool_core::{
        DialFailure, IsolationCategory, IsolationScope, IsolationToken, StreamIsolation,
    };
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::runtime::TokioRuntime;

    const ONION: &str = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion";
    const TOKEN: [u8; 16] = [
        0x5e, 0xc7, 0x3f, 0x11, 0x08, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc,
        0xde,
    ];
    const GREETING: &[u8] = b"hello\r\n";
    const PING: &[u8] = b"ping\n";

    fn credentials() -> SocksCredentials {
        StreamIsolation::new(
            IsolationScope::PerCategory,
            IsolationToken::from_bytes(TOKEN),
        )
        .credentials(IsolationCategory::Directory)
        .unwrap()
    }

    fn password() -> String {
        credentials().password().expose().to_owned()
    }

    fn addr(s: &str) -> ServerAddr {
        ServerAddr::parse(s).unwrap()
    }

    /// Where the scripted proxy stops.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Stop {
        /// After reading the greeting, without answering.
        AfterGreeting,
        /// After reading the CONNECT request, without answering.
        BeforeReply,
        /// Runs to the end.
        Never,
    }

    /// What the scripted proxy does.
    #[derive(Debug, Clone)]
    struct Script {
        /// Version byte of the method selection.
        version: u8,
        /// The method it picks.
        method: u8,
        /// The password it accepts (any if `None`).
        password: Option<String>,
        /// The CONNECT reply code.
        reply: u8,
        /// Where it stops.
        stop: Stop,
    }

    impl Script {
        fn picking(method: u8) -> Self {
            Self {
                version: SOCKS5,
                method,
                password: None,
                reply: 0,
                stop: Stop::Never,
            }
        }

        fn replying(method: u8, reply: u8) -> Self {
            Self {
                reply,
                ..Self::picking(method)
            }
        }
    }

    /// What the scripted proxy saw.
    #[derive(Debug, Default)]
    struct Seen {
        methods: Vec<u8>,
        username: Option<String>,
        password: Option<String>,
        /// Address type, host, port.
        connect: Option<(u8, String, u16)>,
        /// Bytes the client sent after a successful reply.
        after: Vec<u8>,
    }

    /// Starts a scripted SOCKS5 proxy for one connection.
    async fn proxy(script: Script) -> (SocketAddr, JoinHandle<Seen>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut seen = Seen::default();
            // An error just means the client went away: the test checks
            // what it saw.
            let _ = run_script(&mut stream, &script, &mut seen).await;
            seen
        });
        (addr, task)
    }

    async fn read_string(s: &mut TcpStream) -> io::Result<String> {
        let len = s.read_u8().await?;
        let mut bytes = vec![0; usize::from(len)];
        s.read_exact(&mut bytes).await?;
        Ok(String::from_utf8(bytes).unwrap())
    }

    async fn run_script(s: &mut TcpStream, script: &Script, seen: &mut Seen) -> io::Result<()> {
        assert_eq!(s.read_u8().await?, SOCKS5);
        let n = s.read_u8().await?;
        seen.methods = vec![0; usize::from(n)];
        s.read_exact(&mut seen.methods).await?;
        if script.stop == Stop::AfterGreeting {
            return Ok(());
        }
        s.write_all(&[script.version, script.method]).await?;
        match script.method {
            METHOD_NO_AUTH => {}
            METHOD_USER_PASS => {
                assert_eq!(s.read_u8().await?, 0x01);
                let username = read_string(s).await?;
                let password = read_string(s).await?;
                let ok = script.password.as_ref().is_none_or(|p| *p == password);
                seen.username = Some(username);
                seen.password = Some(password);
                s.write_all(&[0x01, if ok { 0x00 } else { 0x01 }]).await?;
                if !ok {
                    return Ok(());
                }
            }
            _ => {
                // Wait for the client to give up.
                s.read_to_end(&mut Vec::new()).await?;
                return Ok(());
            }
        }
        let mut request = [0u8; 4];
        s.read_exact(&mut request).await?;
        assert_eq!(request[..3], [SOCKS5, 0x01, 0x00]);
        let host = match request[3] {
            0x01 => {
                let mut ip = [0; 4];
                s.read_exact(&mut ip).await?;
                Ipv4Addr::from(ip).to_string()
            }
            0x03 => read_string(s).await?,
            0x04 => {
                let mut ip = [0; 16];
                s.read_exact(&mut ip).await?;
                Ipv6Addr::from(ip).to_string()
            }
            other => panic!("bad address type {other}"),
        };
        let port = s.read_u16().await?;
        seen.connect = Some((request[3], host, port));
        if script.stop == Stop::BeforeReply {
            return Ok(());
        }
        let mut reply = vec![SOCKS5, script.reply, 0x00, 0x01, 10, 0, 0, 1, 0x14, 0x66];
        if script.reply == 0 {
            // In the same segment as the reply: nothing may swallow it.
            reply.extend_from_slice(GREETING);
        }
        s.write_all(&reply).await?;
        if script.reply == 0 {
            s.read_to_end(&mut seen.after).await?;
        }
        Ok(())
    }

    /// A proxy address where nothing listens.
    async fn dead_addr() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        listener.local_addr().unwrap()
    }

    /// Reads the greeting through `stream`, answers, and closes.
    async fn converse(mut stream: BoxedStream) {
        let mut buf = [0u8; GREETING.len()];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, GREETING);
        stream.write_all(PING).await.unwrap();
        stream.flush().await.unwrap();
        stream.shutdown().await.unwrap();
    }

    /// No form of the error shows the password.
    fn assert_no_secret(error: &DialError) {
        let secret = password();
        for text in crate::error::every_text(error) {
            assert!(!text.contains(&secret), "{text} leaks the password");
        }
    }

    const PROXY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

    async fn dial_with(
        script: Script,
        target: &str,
        creds: Option<&SocksCredentials>,
    ) -> (Result<BoxedStream, DialError>, JoinHandle<Seen>) {
        let rt = TokioRuntime::current();
        let (proxy_addr, seen) = proxy(script).await;
        let result = dial(&rt, proxy_addr, PROXY_TIMEOUT, None, &addr(target), creds).await;
        (result, seen)
    }

    async fn dial_err(
        script: Script,
        target: &str,
        creds: Option<&SocksCredentials>,
    ) -> (DialError, Seen) {
        let (result, seen) = dial_with(script, target, creds).await;
        let error = match result {
            Ok(_) => panic!("dial succeeded"),
            Err(e) => e,
        };
        assert_no_secret(&error);
        (error, seen.await.unwrap())
    }

    #[tokio::test]
    async fn onion_by_name_without_credentials() {
        let (result, seen) = dial_with(Script::picking(METHOD_NO_AUTH), ONION, None).await;
        converse(result.unwrap()).await;
        let seen = seen.await.unwrap();
        assert_eq!(seen.methods, [METHOD_NO_AUTH]);
        assert_eq!(seen.username, None);
        assert_eq!(seen.connect, Some((0x03, ONION.to_owned(), 5222)));
        assert_eq!(seen.after, PING);
    }

    #[tokio::test]
    async fn onion_by_name_with_credentials() {
        let creds = credentials();
        let script = Script {
            password: Some(password()),
            ..Script::picking(METHOD_USER_PASS)
        };
        let target = format!("{ONION}:8080");
        let (result, seen) = dial_with(script, &target, Some(&creds)).await;
        converse(result.unwrap()).await;
        let seen = seen.await.unwrap();
        assert_eq!(seen.methods, [METHOD_NO_AUTH, METHOD_USER_PASS]);
        assert_eq!(seen.username.as_deref(), Some("jm-directory"));
        assert_eq!(seen.password, Some(password()));
        assert_eq!(seen.connect, Some((0x03, ONION.to_owned(), 8080)));
        assert_eq!(seen.after, PING);
    }

    #[tokio::test]
    async fn dns_name_by_name() {
        let creds = credentials();
        for c in [None, Some(&creds)] {
            let method = if c.is_some() {
                METHOD_USER_PASS
            } else {
                METHOD_NO_AUTH
            };
            let (result, seen) = dial_with(Script::picking(method), "Example.COM:443", c).await;
            converse(result.unwrap()).await;
            let seen = seen.await.unwrap();
            assert_eq!(seen.connect, Some((0x03, "example.com".to_owned(), 443)));
            assert_eq!(seen.username.is_some(), c.is_some());
            assert_eq!(seen.after, PING);
        }
    }

    #[tokio::test]
    async fn ip_hosts_by_address() {
        let creds = credentials();
        for (target, atyp, host) in [
            ("192.0.2.7:5222", 0x01, "192.0.2.7"),
            ("[2001:db8::1]:5222", 0x04, "2001:db8::1"),
        ] {
            for c in [None, Some(&creds)] {
                let method = if c.is_some() {
                    METHOD_USER_PASS
                } else {
                    METHOD_NO_AUTH
                };
                let (result, seen) = dial_with(Script::picking(method), target, c).await;
                converse(result.unwrap()).await;
                let seen = seen.await.unwrap();
                assert_eq!(seen.connect, Some((atyp, host.to_owned(), 5222)));
                assert_eq!(seen.password, c.map(|_| password()));
            }
        }
    }

    #[tokio::test]
    async fn direct_route_for_ip_hosts_skips_the_proxy() {
        let rt = TokioRuntime::current();
        let server = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = server.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            s.write_all(GREETING).await.unwrap();
            let mut after = Vec::new();
            s.read_to_end(&mut after).await.unwrap();
            after
        });
        let target = addr(&format!("127.0.0.1:{port}"));
        let proxy_addr = dead_addr().await;
        let creds = credentials();
        let stream = dial(
            &rt,
            proxy_addr,
            PROXY_TIMEOUT,
            route(true, &target),
            &target,
            Some(&creds),
        )
        .await
        .unwrap();
        converse(stream).await;
        assert_eq!(task.await.unwrap(), PING);

        // Nothing listening: an I/O error about the target, not the proxy.
        let port = dead_addr().await.port();
        let target = addr(&format!("127.0.0.1:{port}"));
        let err = match dial(
            &rt,
            proxy_addr,
            PROXY_TIMEOUT,
            route(true, &target),
            &target,
            None,
        )
        .await
        {
            Ok(_) => panic!("dial succeeded"),
            Err(e) => e,
        };
        assert!(matches!(&err, DialError::Io { target: t, .. } if *t == target.node_id()));
        assert!(matches!(err.failure(), DialFailure::Io(_)));
    }

    #[test]
    fn the_route_is_direct_only_for_an_ip_host_with_direct_clearnet() {
        let v4 = addr("127.0.0.1:5222");
        let v6 = addr("[::1]:5222");
        assert_eq!(route(true, &v4), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(route(true, &v6), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        for target in [&v4, &v6, &addr(ONION), &addr("localhost:5222")] {
            assert_eq!(route(false, target), None, "{target}");
        }
        assert_eq!(route(true, &addr(ONION)), None);
        assert_eq!(route(true, &addr("localhost:5222")), None);
    }

    /// An I/O error in the SOCKS exchange is the proxy's fault only when the
    /// proxy closed or reset the connection; any other (a timeout, a
    /// refused permission) is reported against the target.
    #[test]
    fn an_io_error_is_a_proxy_protocol_error_only_when_the_proxy_closed() {
        use io::ErrorKind as K;
        let proxy = SocketAddr::from((Ipv4Addr::LOCALHOST, 9050));
        let target = addr(ONION);
        let map = |kind| {
            map_socks_error(
                async_socks5::Error::Io(io::Error::from(kind)),
                false,
                proxy,
                &target,
                None,
            )
        };
        for kind in [
            K::UnexpectedEof,
            K::ConnectionReset,
            K::ConnectionAborted,
            K::BrokenPipe,
        ] {
            assert!(closed_by_peer(&io::Error::from(kind)), "{kind:?}");
            assert!(
                matches!(map(kind), DialError::ProxyProtocol { proxy: p, .. } if p == proxy),
                "{kind:?}"
            );
        }
        for kind in [K::TimedOut, K::PermissionDenied, K::Other] {
            assert!(!closed_by_peer(&io::Error::from(kind)), "{kind:?}");
            match map(kind) {
                DialError::Io { target: t, source } => {
                    assert_eq!(t, target.node_id());
                    assert_eq!(source.kind(), kind);
                }
                other => panic!("{kind:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn direct_route_never_applies_to_onions_or_names() {
        let rt = TokioRuntime::current();
        for (target, atyp) in [(ONION, 0x03), ("localhost:5222", 0x03)] {
            let (proxy_addr, seen) = proxy(Script::picking(METHOD_NO_AUTH)).await;
            let stream = dial(
                &rt,
                proxy_addr,
                PROXY_TIMEOUT,
                route(true, &addr(target)),
                &addr(target),
                None,
            )
            .await
            .unwrap();
            converse(stream).await;
            let seen = seen.await.unwrap();
            let (got_atyp, host, _) = seen.connect.unwrap();
            assert_eq!(got_atyp, atyp);
            assert_eq!(host, addr(target).host());
        }
    }

    #[tokio::test]
    async fn every_error_reply_maps_to_its_socks_reply() {
        let creds = credentials();
        for code in (0x01..=0x08).chain(0xF0..=0xF7) {
            let c = (code % 2 == 0).then_some(&creds);
            let method = if c.is_some() {
                METHOD_USER_PASS
            } else {
                METHOD_NO_AUTH
            };
            let (err, _) = dial_err(Script::replying(method, code), ONION, c).await;
            let expected = SocksReply::from_code(code);
            match &err {
                DialError::Socks { target, reply } => {
                    assert_eq!(*reply, expected);
                    assert_eq!(target, &format!("{ONION}:5222"));
                }
                other => panic!("code {code:#x}: {other:?}"),
            }
            assert_eq!(err.failure(), DialFailure::Socks(expected));
            if code >= 0xF0 {
                assert!(expected.is_onion_error(), "{code:#x}");
            }
        }
    }

    #[tokio::test]
    async fn wrong_credentials_are_rejected() {
        let creds = credentials();
        let script = Script {
            password: Some("something else".to_owned()),
            ..Script::picking(METHOD_USER_PASS)
        };
        let (err, seen) = dial_err(script, ONION, Some(&creds)).await;
        match &err {
            DialError::ProxyAuthRejected { username, .. } => assert_eq!(username, "jm-directory"),
            other => panic!("{other:?}"),
        }
        assert_eq!(err.failure(), DialFailure::ProxyAuthRejected);
        assert!(err.to_string().contains("jm-directory"));
        assert_eq!(seen.connect, None);
    }

    #[tokio::test]
    async fn refused_methods_with_credentials_is_isolation_unsupported() {
        let creds = credentials();
        let script = Script::picking(METHOD_NONE_ACCEPTABLE);
        let (err, seen) = dial_err(script, ONION, Some(&creds)).await;
        assert!(
            matches!(err, DialError::IsolationUnsupported { .. }),
            "{err:?}"
        );
        assert_eq!(err.failure(), DialFailure::IsolationUnsupported);
        assert_eq!(seen.connect, None);

        // Without credentials it is just a broken proxy.
        let (err, _) = dial_err(Script::picking(METHOD_NONE_ACCEPTABLE), ONION, None).await;
        assert!(matches!(err, DialError::ProxyProtocol { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn no_auth_picked_despite_credentials_sends_no_connect() {
        let creds = credentials();
        let (err, seen) = dial_err(Script::picking(METHOD_NO_AUTH), ONION, Some(&creds)).await;
        assert!(
            matches!(err, DialError::IsolationUnsupported { .. }),
            "{err:?}"
        );
        assert_eq!(seen.methods, [METHOD_NO_AUTH, METHOD_USER_PASS]);
        assert_eq!(seen.connect, None, "the CONNECT request went out");
    }

    #[tokio::test]
    async fn unoffered_method_is_a_protocol_error() {
        // User/pass picked although not offered, and GSSAPI.
        for (method, creds) in [(METHOD_USER_PASS, None), (0x01, Some(credentials()))] {
            let (err, _) = dial_err(Script::picking(method), ONION, creds.as_ref()).await;
            assert!(matches!(err, DialError::ProxyProtocol { .. }), "{err:?}");
            assert_eq!(err.failure(), DialFailure::ProxyProtocol);
        }
    }

    #[tokio::test]
    async fn unreachable_proxy() {
        let rt = TokioRuntime::current();
        let proxy_addr = dead_addr().await;
        let creds = credentials();
        let err = match dial(
            &rt,
            proxy_addr,
            PROXY_TIMEOUT,
            None,
            &addr(ONION),
            Some(&creds),
        )
        .await
        {
            Ok(_) => panic!("dial succeeded"),
            Err(e) => e,
        };
        assert!(
            matches!(err, DialError::ProxyUnreachable { proxy, .. } if proxy == proxy_addr),
            "{err:?}"
        );
        assert_eq!(err.failure(), DialFailure::ProxyUnreachable);
        assert_no_secret(&err);

        let err = probe_isolation(&rt, proxy_addr, PROXY_TIMEOUT, None)
            .await
            .unwrap_err();
        assert_eq!(err.failure(), DialFailure::ProxyUnreachable);
    }

    #[tokio::test]
    async fn proxy_closing_mid_exchange_is_a_protocol_error() {
        let creds = credentials();
        for stop in [Stop::AfterGreeting, Stop::BeforeReply] {
            for c in [None, Some(&creds)] {
                let method = if c.is_some() {
                    METHOD_USER_PASS
                } else {
                    METHOD_NO_AUTH
                };
                let script = Script {
                    stop,
                    ..Script::picking(method)
                };
                let (err, _) = dial_err(script, ONION, c).await;
                assert!(matches!(err, DialError::ProxyProtocol { .. }), "{err:?}");
                assert_eq!(err.failure(), DialFailure::ProxyProtocol);
            }
        }
    }

    #[tokio::test]
    async fn garbage_version_is_a_protocol_error() {
        let creds = credentials();
        // 'H' as in "HTTP/1.1 ...", and SOCKS4.
        for version in [b'H', 0x04] {
            for c in [None, Some(&creds)] {
                let script = Script {
                    version,
                    ..Script::picking(METHOD_NO_AUTH)
                };
                let (err, seen) = dial_err(script, ONION, c).await;
                assert!(matches!(err, DialError::ProxyProtocol { .. }), "{err:?}");
                assert_eq!(seen.connect, None);
            }
        }
    }

    #[tokio::test]
    async fn probe_accepts_a_proxy_offering_username_password() {
        let rt = TokioRuntime::current();
        let (proxy_addr, seen) = proxy(Script::picking(METHOD_USER_PASS)).await;
        probe_isolation(&rt, proxy_addr, PROXY_TIMEOUT, None)
            .await
            .unwrap();
        let seen = seen.await.unwrap();
        assert_eq!(seen.methods, [METHOD_USER_PASS]);
        assert_eq!(seen.username, None);
        assert_eq!(seen.connect, None);
    }

    #[tokio::test]
    async fn probe_failures() {
        let rt = TokioRuntime::current();
        let cases = [
            (
                Script::picking(METHOD_NONE_ACCEPTABLE),
                DialFailure::IsolationUnsupported,
            ),
            (Script::picking(METHOD_NO_AUTH), DialFailure::ProxyProtocol),
            (Script::picking(0x01), DialFailure::ProxyProtocol),
            (
                Script {
                    version: b'H',
                    ..Script::picking(METHOD_USER_PASS)
                },
                DialFailure::ProxyProtocol,
            ),
            (
                Script {
                    stop: Stop::AfterGreeting,
                    ..Script::picking(METHOD_USER_PASS)
                },
                DialFailure::ProxyProtocol,
            ),
        ];
        for (script, failure) in cases {
            let (proxy_addr, seen) = proxy(script.clone()).await;
            let err = probe_isolation(&rt, proxy_addr, PROXY_TIMEOUT, None)
                .await
                .unwrap_err();
            assert_eq!(err.failure(), failure, "{script:?}: {err:?}");
            assert_eq!(seen.await.unwrap().methods, [METHOD_USER_PASS]);
        }
    }

    const FIXED_USER: &str = "alice";
    const FIXED_PASSWORD: &str = "fixed-proxy-s3cret";

    fn fixed() -> SocksCredentials {
        SocksCredentials::new(FIXED_USER, FIXED_PASSWORD)
    }

    #[tokio::test]
    async fn probe_with_fixed_credentials_authenticates_and_sends_no_connect() {
        let rt = TokioRuntime::current();
        let script = Script {
            password: Some(FIXED_PASSWORD.to_owned()),
            ..Script::picking(METHOD_USER_PASS)
        };
        let (proxy_addr, seen) = proxy(script).await;
        probe_isolation(&rt, proxy_addr, PROXY_TIMEOUT, Some(&fixed()))
            .await
            .unwrap();
        let seen = seen.await.unwrap();
        assert_eq!(seen.methods, [METHOD_USER_PASS]);
        assert_eq!(seen.username.as_deref(), Some(FIXED_USER));
        assert_eq!(seen.password.as_deref(), Some(FIXED_PASSWORD));
        assert_eq!(seen.connect, None);
    }

    #[tokio::test]
    async fn probe_with_a_wrong_fixed_password_is_auth_rejected_without_the_password() {
        let rt = TokioRuntime::current();
        let script = Script {
            password: Some("the proxy's real one".to_owned()),
            ..Script::picking(METHOD_USER_PASS)
        };
        let (proxy_addr, seen) = proxy(script).await;
        let err = probe_isolation(&rt, proxy_addr, PROXY_TIMEOUT, Some(&fixed()))
            .await
            .unwrap_err();
        match &err {
            DialError::ProxyAuthRejected { proxy, username } => {
                assert_eq!(*proxy, proxy_addr);
                assert_eq!(username, FIXED_USER);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.failure(), DialFailure::ProxyAuthRejected);
        for text in crate::error::every_text(&err) {
            assert!(!text.contains(FIXED_PASSWORD), "{text} leaks the password");
        }
        assert_eq!(seen.await.unwrap().connect, None);
    }

    #[tokio::test]
    async fn probe_with_fixed_credentials_still_refuses_a_proxy_without_user_pass() {
        let rt = TokioRuntime::current();
        for (method, failure) in [
            (METHOD_NONE_ACCEPTABLE, DialFailure::IsolationUnsupported),
            (METHOD_NO_AUTH, DialFailure::ProxyProtocol),
        ] {
            let (proxy_addr, seen) = proxy(Script::picking(method)).await;
            let err = probe_isolation(&rt, proxy_addr, PROXY_TIMEOUT, Some(&fixed()))
                .await
                .unwrap_err();
            assert_eq!(err.failure(), failure, "{err:?}");
            let seen = seen.await.unwrap();
            assert_eq!(seen.username, None, "credentials sent after {method:#x}");
        }
    }

    #[tokio::test]
    async fn dial_with_fixed_credentials_connects_or_is_rejected() {
        let right = Script {
            password: Some(FIXED_PASSWORD.to_owned()),
            ..Script::picking(METHOD_USER_PASS)
        };
        let (result, seen) = dial_with(right, ONION, Some(&fixed())).await;
        converse(result.unwrap()).await;
        let seen = seen.await.unwrap();
        assert_eq!(seen.username.as_deref(), Some(FIXED_USER));
        assert_eq!(seen.password.as_deref(), Some(FIXED_PASSWORD));
        assert_eq!(seen.connect, Some((0x03, ONION.to_owned(), 5222)));

        let wrong = SocksCredentials::new(FIXED_USER, "not-the-password");
        let (result, seen) = dial_with(
            Script {
                password: Some(FIXED_PASSWORD.to_owned()),
                ..Script::picking(METHOD_USER_PASS)
            },
            ONION,
            Some(&wrong),
        )
        .await;
        let Err(err) = result else {
            panic!("dial succeeded");
        };
        assert!(
            matches!(&err, DialError::ProxyAuthRejected { username, .. } if username == FIXED_USER),
            "{err:?}"
        );
        for text in crate::error::every_text(&err) {
            assert!(!text.contains("not-the-password"), "{text}");
        }
        assert_eq!(seen.await.unwrap().connect, None);
    }

    #[test]
    fn credentials_validation() {
        let long = "a".repeat(255);
        let too_long = "a".repeat(256);
        // 128 two-byte characters: 256 bytes.
        let too_long_utf8 = "é".repeat(128);
        assert_eq!(validate_credentials("jm-directory", "secret"), Ok(()));
        assert_eq!(validate_credentials(&long, &long), Ok(()));
        assert_eq!(
            validate_credentials("", "secret"),
            Err(CredentialsError::Empty("username"))
        );
        assert_eq!(
            validate_credentials("user", ""),
            Err(CredentialsError::Empty("password"))
        );
        assert_eq!(
            validate_credentials(&too_long, "secret"),
            Err(CredentialsError::TooLong {
                field: "username",
                len: 256
            })
        );
        assert_eq!(
            validate_credentials("user", &too_long_utf8),
            Err(CredentialsError::TooLong {
                field: "password",
                len: 256
            })
        );
        assert_eq!(
            validate_credentials("<torS0X>0", "secret"),
            Err(CredentialsError::ReservedPrefix)
        );
        assert_eq!(
            validate_credentials("<torS0X>", "secret"),
            Err(CredentialsError::ReservedPrefix)
        );
        assert_eq!(validate_credentials("<torS0X", "secret"), Ok(()));
        assert_eq!(validate_credentials("x<torS0X>", "secret"), Ok(()));
        assert_eq!(validate_credentials("<TORS0X>", "secret"), Ok(()));
        // The password never appears in the error.
        let err = validate_credentials("user", &too_long_utf8).unwrap_err();
        assert!(!err.to_string().contains('é'));
        assert!(!format!("{err:?}").contains('é'));
        // The credentials the core derives are valid.
        let creds = credentials();
        assert_eq!(
            validate_credentials(creds.username(), creds.password().expose()),
            Ok(())
        );
    }

    #[test]
    fn reply_codes() {
        let replies = [
            UnsuccessfulReply::GeneralFailure,
            UnsuccessfulReply::ConnectionNotAllowedByRules,
            UnsuccessfulReply::NetworkUnreachable,
            UnsuccessfulReply::HostUnreachable,
            UnsuccessfulReply::ConnectionRefused,
            UnsuccessfulReply::TtlExpired,
            UnsuccessfulReply::CommandNotSupported,
            UnsuccessfulReply::AddressTypeNotSupported,
        ];
        for (code, reply) in (1u8..).zip(replies) {
            assert_eq!(reply_code(reply), code);
        }
        assert_eq!(reply_code(UnsuccessfulReply::Unassigned(0xF3)), 0xF3);
    }
}
