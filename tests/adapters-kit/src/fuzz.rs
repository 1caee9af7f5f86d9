//! Fuzz target bodies for the bytes a proxy or a directory sends us.
//!
//! Each function takes one fuzzer input and panics when a property is
//! broken; the cargo-fuzz targets in `fuzz/` call them on nightly, and
//! `tests/fuzz_corpus.rs` of this crate replays every corpus and regression
//! file through them on stable.
//!
//! The untrusted bytes arrive through [`ScriptRuntime`], a [`Runtime`]
//! whose every TCP connection reads from one script: the input after its
//! first byte, handed out in reads whose sizes the first byte picks, then
//! either the end of the stream or silence. Silence is where timeouts
//! matter: the runtime's clock stands still while anything can still make
//! progress and jumps an hour ahead once the script is silent and nothing
//! else moves, so a run ends by a timeout or not at all; a run that has not
//! ended after [`MAX_POLLS`] polls is reported as a hang.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dirpool_core::{IsolationScope, IsolationToken, ServerAddr, StreamIsolation};
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use dirpool::DialError;
use dirpool::handshake::{Client, Handshake, HandshakeContext};
use dirpool::joinmarket::{
    JmConfig, JoinMarketHandshake, MESSAGE_OVERHEAD, Network, NickIdentity, RecvError,
};
use dirpool::runtime::{BoxedStream, Runtime};
use dirpool::test_kit::{LineReader, before, dial_raw, every_text};

/// Polls after which a run that has not ended counts as a hang. Every
/// script read is ready at once, so a live run needs a few per byte.
pub const MAX_POLLS: usize = 1_000_000;

/// The most bytes a dial may write (greeting, credentials, CONNECT with a
/// 255-byte name): more means something loops.
const MAX_DIAL_WRITE: usize = 1_024;

/// The SOCKS password the dials carry: it must never show in an error.
const PASSWORD_TOKEN: [u8; 16] = [0x5A; 16];

/// The `socks_reply` target: the input is what a SOCKS5 proxy answers the
/// pool's dialing path (isolation probe, greeting, username/password,
/// CONNECT). The first byte picks the read sizes, whether the script ends
/// in EOF or silence, and whether isolation credentials are used; the
/// second picks the target (onion, DNS name, IPv4, IPv6).
///
/// Properties: the dial ends with a typed error or a tunnel, within the
/// timeout when the proxy falls silent; the password never appears in an
/// error; on success, every byte after the proxy's reply is still there to
/// read (nothing read ahead and lost).
///
/// # Panics
/// When a property is broken.
pub fn socks_reply(data: &[u8]) {
    let header = data.first().copied().unwrap_or(0);
    let target = match data.get(1).copied().unwrap_or(0) % 4 {
        0 => "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion:5222",
        1 => "directory.example:5222",
        2 => "127.0.0.1:5222",
        _ => "[::1]:5222",
    };
    let target = ServerAddr::parse(target).expect("the targets are valid");
    let isolation = StreamIsolation::new(
        IsolationScope::PerCategory,
        IsolationToken::from_bytes(PASSWORD_TOKEN),
    );
    let credentials = (header & 2 != 0)
        .then(|| isolation.directory_credentials(&target))
        .flatten();
    let rt = ScriptRuntime::new(data);
    let timeout = Duration::from_secs(120);
    let deadline = rt.now() + timeout;
    let runtime: Arc<dyn Runtime> = Arc::new(rt.clone());
    let result = rt.run(dial_raw(
        runtime,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 9050)),
        Duration::from_secs(10),
        &target,
        credentials.as_ref(),
        deadline,
        timeout,
    ));
    let written = rt.script().written;
    assert!(
        written <= MAX_DIAL_WRITE,
        "the dial wrote {written} bytes to the proxy"
    );
    match result {
        Ok(connection) => {
            let mut stream = connection.take_stream().expect("a fresh tunnel");
            let rest = rt.script().unread().to_vec();
            let mut got = vec![0; rest.len()];
            rt.run(stream.read_exact(&mut got))
                .expect("the bytes after the reply are readable");
            assert_eq!(got, rest, "bytes after the SOCKS reply were lost");
        }
        Err(error) => {
            let silent = rt.script().silent_end;
            match &error {
                DialError::ProxyProtocol { .. }
                | DialError::ProxyAuthRejected { .. }
                | DialError::IsolationUnsupported { .. }
                | DialError::Socks { .. }
                | DialError::Io { .. } => {}
                // A proxy that said nothing before falling silent is a
                // proxy fault; one that answered, then stalled, the dial's.
                DialError::TimedOut(_) | DialError::ProxyTimedOut { .. } if silent => {}
                other => panic!("unexpected dial error {other:?}"),
            }
            if let Some(credentials) = &credentials {
                for shown in every_text(&error) {
                    assert!(
                        !shown.contains(credentials.password().expose()),
                        "the SOCKS password shows in {shown}"
                    );
                }
            }
        }
    }
}

/// One fixed key for every run: making a key costs more than a run.
fn fuzz_identity() -> Arc<NickIdentity> {
    static IDENTITY: std::sync::OnceLock<Arc<NickIdentity>> = std::sync::OnceLock::new();
    Arc::clone(IDENTITY.get_or_init(|| {
        Arc::new(NickIdentity::from_secret_bytes(&[1; 32]).expect("a valid secret"))
    }))
}

/// The `handshake_reply` target: the input is a JoinMarket directory's
/// reply to our handshake and the messages after it. The first byte picks
/// the read sizes and whether the script ends in EOF or silence; the
/// second the line limit of a bare line reader run over the same bytes.
///
/// Properties: the handshake ends with a typed error or a connection
/// (within its timeout when the directory falls silent); a connection's
/// reader ends when the bytes do, and every message it keeps is received;
/// the line reader never holds more than its limit (plus `\r\n`).
///
/// # Panics
/// When a property is broken.
pub fn handshake_reply(data: &[u8]) {
    let limit = 1 + usize::from(data.get(1).copied().unwrap_or(0));
    line_reader_stays_bounded(data, limit);

    let mut config = JmConfig::new(fuzz_identity(), Network::Mainnet);
    config.max_line = 1_024;
    // The smallest inbound queue: a full one drops and reports lag.
    config.inbound_bytes = config.max_line + MESSAGE_OVERHEAD;
    let handshake = JoinMarketHandshake::new(config).expect("a valid configuration");
    let server =
        ServerAddr::parse("duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion")
            .expect("a valid address");
    let rt = ScriptRuntime::new(data);
    let runtime: Arc<dyn Runtime> = Arc::new(rt.clone());
    let context = HandshakeContext::new(Arc::clone(&runtime), rt.now() + Duration::from_secs(120));
    let stream = rt.stream();
    let connection = match rt.run(handshake.handshake(&context, &server, stream)) {
        Ok(connection) => connection,
        Err(error) => {
            drop(every_text(&error));
            return;
        }
    };
    // Read every message after the reply: the reader must end with the
    // bytes (or, on silence, be cut off by the caller), and whatever it
    // queued must come out of recv().
    let messages = async {
        let mut received = 0usize;
        let reading = async {
            let loss = connection.closed().await;
            drop(format!("{loss:?}"));
        };
        let receiving = async {
            loop {
                match connection.recv().await {
                    Ok(envelope) => {
                        drop(envelope);
                        received += 1;
                    }
                    Err(RecvError::Lagged(n)) => assert!(n > 0, "a lag of nothing"),
                    Err(RecvError::Closed) => break,
                    Err(other) => panic!("recv failed with {other:?}"),
                }
            }
        };
        futures::join!(reading, receiving);
        received
    };
    let cut_off = runtime.sleep_until(runtime.now() + Duration::from_secs(600));
    if rt.run(before(cut_off, messages)).is_none() {
        assert!(
            rt.script().silent_end,
            "the message reader stopped without an end of stream"
        );
    }
}

/// A bare [`LineReader`] over the script never holds more than `limit`
/// bytes plus the line's `\r\n`.
fn line_reader_stays_bounded(data: &[u8], limit: usize) {
    let rt = ScriptRuntime::new(data);
    let mut reader = LineReader::new(rt.stream(), limit);
    let bound = limit + 2;
    for _ in 0..data.len() + 1 {
        let deadline = rt.sleep_until(rt.now() + Duration::from_secs(1));
        let line = rt.run(before(deadline, reader.next_line()));
        let held = reader.held_capacity();
        assert!(
            held <= bound,
            "a line reader with limit {limit} holds {held} bytes"
        );
        match line {
            Some(Ok(Some(line))) => assert!(line.len() <= limit, "a line over the limit"),
            Some(Ok(None) | Err(_)) | None => return,
        }
    }
    panic!("the line reader read more lines than there are bytes");
}

/// The bytes every connection reads, and what was written to them.
#[derive(Debug)]
struct Script {
    data: Vec<u8>,
    pos: usize,
    /// Read sizes cycle through `1..=chunk` (0: as much as asked for).
    chunk: usize,
    reads: usize,
    /// After the data: silence instead of end of stream.
    silent_end: bool,
    /// A read found nothing left and the end is silent.
    stalled: bool,
    written: usize,
}

impl Script {
    fn unread(&self) -> &[u8] {
        &self.data[self.pos..]
    }
}

/// A [`Runtime`] whose connections all read one script, with a clock that
/// moves only when nothing else can.
#[derive(Clone)]
pub struct ScriptRuntime {
    script: Arc<Mutex<Script>>,
    clock: Arc<Mutex<Instant>>,
    spawned: Arc<Mutex<Vec<BoxFuture<'static, ()>>>>,
}

impl std::fmt::Debug for ScriptRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptRuntime")
            .field("script", &self.script)
            .field("now", &self.now())
            .finish_non_exhaustive()
    }
}

impl ScriptRuntime {
    /// A runtime for one fuzz input: its first byte is the control byte
    /// (bit 0: silence at the end, bits 2–7: read sizes), the script is
    /// all of it after that byte.
    pub fn new(data: &[u8]) -> Self {
        let header = data.first().copied().unwrap_or(0);
        Self {
            script: Arc::new(Mutex::new(Script {
                data: data.get(1..).unwrap_or_default().to_vec(),
                pos: 0,
                chunk: usize::from(header >> 2),
                reads: 0,
                silent_end: header & 1 != 0,
                stalled: false,
                written: 0,
            })),
            // Only differences between instants matter; no timer reads the
            // real clock.
            clock: Arc::new(Mutex::new(Instant::now())),
            spawned: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stream(&self) -> BoxedStream {
        Box::pin(ScriptStream(Arc::clone(&self.script)))
    }

    /// Runs `future` (and whatever it spawns) to its end.
    ///
    /// # Panics
    /// After [`MAX_POLLS`] polls without an end: a hang.
    pub fn run<F: Future>(&self, future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        for _ in 0..MAX_POLLS {
            self.script().stalled = false;
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            let mut tasks =
                std::mem::take(&mut *self.spawned.lock().unwrap_or_else(|e| e.into_inner()));
            tasks.retain_mut(|task| task.as_mut().poll(&mut cx).is_pending());
            self.spawned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(tasks);
            if self.script().stalled {
                // Nothing can come any more: let the timers fire.
                let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
                *clock += Duration::from_secs(3_600);
            }
        }
        panic!("no result after {MAX_POLLS} polls: the run hangs");
    }
}

impl Runtime for ScriptRuntime {
    fn now(&self) -> Instant {
        *self.clock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        let clock = Arc::clone(&self.clock);
        Box::pin(futures::future::poll_fn(move |_| {
            if *clock.lock().unwrap_or_else(|e| e.into_inner()) >= deadline {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }))
    }

    fn connect_tcp(&self, _addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxedStream>> {
        let stream = self.stream();
        Box::pin(async move { Ok(stream) })
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) {
        self.spawned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(future);
    }
}

/// One connection reading the script; writes are counted and dropped.
struct ScriptStream(Arc<Mutex<Script>>);

impl AsyncRead for ScriptStream {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut script = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if script.pos == script.data.len() {
            if script.silent_end {
                script.stalled = true;
                return Poll::Pending;
            }
            return Poll::Ready(Ok(()));
        }
        let size = match script.chunk {
            0 => usize::MAX,
            chunk => 1 + (script.reads * 7 + chunk) % chunk,
        };
        script.reads += 1;
        let n = size
            .min(buf.remaining())
            .min(script.data.len() - script.pos);
        let start = script.pos;
        buf.put_slice(&script.data[start..start + n]);
        script.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ScriptStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).written += buf.len();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The `jm_lines` target: the input is a message line, a body or a
/// PEERLIST payload as a directory relays it. The first byte picks the
/// parser (public message, private message, PEERLIST payload, PEERLIST
/// entry and body); the rest is the text (invalid UTF-8 replaced).
///
/// Properties: parsing ends with a typed error or a value; a parsed
/// message prints back to exactly its line, and a parsed body or
/// command list to exactly its body; every parsed value is rebuilt by the
/// builders to an equal value (or refused only as too long to send, when
/// its envelope is), and what the builders make parses back to it.
///
/// # Panics
/// When a property is broken.
pub fn jm_lines(data: &[u8]) {
    use dirpool::joinmarket::lines::{
        Command, LineError, PeerlistEntry, PrivateMessage, PrivmsgSignature, PublicMessage,
        commands_body, parse_commands, parse_peerlist, peerlist_payload,
    };
    use dirpool::joinmarket::wire::MAX_SEND_LINE;
    use dirpool::joinmarket::{Envelope, JmError, SignatureError};

    /// A builder refused `line` only because its envelope is too long.
    fn refused_as_too_long(error: &LineError, envelope: &Envelope) {
        let LineError::TooLongToSend { len, limit } = *error else {
            panic!("the builder refuses a parsed value: {error}");
        };
        assert_eq!(limit, MAX_SEND_LINE);
        assert!(
            matches!(envelope.encode(), Err(JmError::SendTooLong { len: l, .. }) if l == len),
            "refused as {len} bytes long"
        );
    }

    fn commands_round_trip(body: &str, commands: &[Command]) {
        assert_eq!(commands_body(commands), body);
        for command in commands {
            let rebuilt = Command::new(command.name(), command.args().iter().cloned());
            assert_eq!(rebuilt.as_ref(), Ok(command));
        }
    }

    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match selector % 4 {
        0 => match PublicMessage::parse(&text) {
            Ok(message) => {
                assert_eq!(message.to_line(), text);
                let commands = message.commands().expect("a parsed body parses");
                commands_round_trip(message.body(), &commands);
                match PublicMessage::new(message.from().clone(), message.body()) {
                    Ok(built) => {
                        assert_eq!(built, message);
                        assert!(built.to_envelope().encode().is_ok());
                    }
                    Err(error) => refused_as_too_long(&error, &message.to_envelope()),
                }
            }
            Err(error) => drop(every_text(&error)),
        },
        1 => match PrivateMessage::parse(&text) {
            Ok(message) => {
                assert_eq!(message.to_line(), text);
                assert_eq!(
                    PrivateMessage::parse(&message.to_line()).as_ref(),
                    Ok(&message)
                );
                let commands = message.commands().expect("a parsed body parses");
                commands_round_trip(message.body(), &commands);
                // Verifying never panics, and only an unsigned message is
                // refused as unsigned.
                match message.verify() {
                    Ok(verified) => assert_eq!(verified.message(), &message),
                    Err(error) => {
                        let unsigned = error == SignatureError::Unsigned;
                        assert_eq!(unsigned, message.signature().is_none());
                        drop(error.to_string());
                    }
                }
                let (from, to) = (message.from().clone(), message.to().clone());
                let built = match message.signature() {
                    Some(signature) => {
                        let shown = signature.to_string();
                        let (key, sig) = shown.split_once(' ').expect("two fields");
                        assert_eq!(PrivmsgSignature::parse(key, sig).as_ref(), Ok(signature));
                        drop(signature.nick());
                        PrivateMessage::signed(from, to, message.body(), signature.clone())
                    }
                    None => PrivateMessage::new(from, to, message.body()),
                };
                match built {
                    Ok(built) => {
                        assert_eq!(built, message);
                        assert!(built.to_envelope().encode().is_ok());
                    }
                    Err(error) => refused_as_too_long(&error, &message.to_envelope()),
                }
            }
            Err(error) => drop(every_text(&error)),
        },
        2 => match parse_peerlist(&text) {
            Ok(entries) => {
                // Locations are printed canonically, so compare values.
                let payload = peerlist_payload(&entries);
                assert_eq!(parse_peerlist(&payload).as_ref(), Ok(&entries));
                for entry in &entries {
                    let rebuilt = PeerlistEntry::new(
                        entry.nick.clone(),
                        entry.location.clone(),
                        entry.disconnected,
                        entry.features.clone(),
                    );
                    assert_eq!(rebuilt.as_ref(), Ok(entry));
                }
            }
            Err(error) => drop(every_text(&error)),
        },
        _ => {
            match PeerlistEntry::parse(&text) {
                Ok(entry) => {
                    assert_eq!(PeerlistEntry::parse(&entry.to_entry()).as_ref(), Ok(&entry));
                }
                Err(error) => drop(every_text(&error)),
            }
            match parse_commands(&text) {
                Ok(commands) => commands_round_trip(&text, &commands),
                Err(error) => drop(every_text(&error)),
            }
        }
    }
}

/// The `nick_auth` target: JMP-0005 payloads and signed private messages
/// as a directory or a peer sends them. The first byte picks what the rest
/// (invalid UTF-8 replaced) is: a challenge, proof or result `line`, a
/// client's answer judged by the directory side, a directory id, a private
/// message line to verify, or a body we sign.
///
/// Properties: parsing ends with a typed error or a value; every parsed
/// value prints to a line that parses back to it; a proof verifies or is
/// refused without panicking, and the directory's verdict is `malformed`
/// for whatever does not parse as a proof; a private message we sign
/// parses back to itself and verifies as ours; a parsed private message
/// verifies or is refused with a typed error.
///
/// # Panics
/// When a property is broken.
pub fn nick_auth(data: &[u8]) {
    use dirpool::joinmarket::nick_auth::{
        NickAuthChallenge, NickAuthProof, NickAuthResult, judge_answer, transcript,
    };
    use dirpool::joinmarket::{DirectoryId, Envelope, NickAuthCode, PrivateMessage, wire};

    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let identity = fuzz_identity();
    let challenge = NickAuthChallenge::new(
        &[0x22; 32],
        DirectoryId::parse("test:directory-a").expect("a valid id"),
    );
    match selector % 7 {
        0 => match NickAuthChallenge::parse(&text) {
            Ok(parsed) => {
                assert_eq!(
                    NickAuthChallenge::parse(&parsed.to_line()).ok(),
                    Some(parsed.clone())
                );
                let _ = transcript(&parsed, &text, identity.nick(), identity.public_key());
            }
            Err(error) => drop(every_text(&error)),
        },
        1 => match NickAuthProof::parse(&text) {
            Ok(proof) => {
                assert_eq!(
                    NickAuthProof::parse(&proof.to_line()).ok(),
                    Some(proof.clone())
                );
                drop(proof.verify(&challenge, &text, identity.nick()));
            }
            Err(error) => drop(every_text(&error)),
        },
        2 => match NickAuthResult::parse(&text) {
            Ok(result) => {
                assert_eq!(NickAuthResult::parse(&result.to_line()).ok(), Some(result));
            }
            Err(error) => drop(every_text(&error)),
        },
        3 => {
            let answer = Envelope::new(wire::NICK_AUTH_PROOF, text.as_ref());
            // The raw line as a directory reads it: any verdict, no panic.
            let _ = judge_answer(&challenge, "{}", identity.nick().as_str(), &text);
            if NickAuthProof::parse(&text).is_err() {
                let line = serde_json::json!({"type": answer.kind, "line": answer.line});
                assert_eq!(
                    judge_answer(
                        &challenge,
                        "{}",
                        identity.nick().as_str(),
                        &line.to_string()
                    ),
                    NickAuthCode::Malformed
                );
            }
            // Our own proof for this handshake line is judged `ok`.
            let proof = NickAuthProof::create(&identity, &challenge, &text).expect("signs");
            let answer = Envelope::new(wire::NICK_AUTH_PROOF, proof.to_line());
            let line = serde_json::json!({"type": answer.kind, "line": answer.line});
            assert_eq!(
                judge_answer(
                    &challenge,
                    &text,
                    identity.nick().as_str(),
                    &line.to_string()
                ),
                NickAuthCode::Ok
            );
        }
        4 => match DirectoryId::parse(&text) {
            Ok(id) => assert_eq!(DirectoryId::parse(id.as_str()).ok(), Some(id)),
            Err(error) => drop(every_text(&error)),
        },
        5 => match PrivateMessage::parse(&text) {
            Ok(message) => match message.verify() {
                Ok(verified) => assert_eq!(verified.sender(), message.from()),
                Err(error) => drop(error.to_string()),
            },
            Err(error) => drop(every_text(&error)),
        },
        _ => {
            let to = identity.nick().clone();
            match identity.sign_private(to, text.as_ref()) {
                Ok(message) => {
                    let parsed = PrivateMessage::parse(&message.to_line()).expect("reparses");
                    assert_eq!(parsed, message);
                    let verified = parsed.verify().expect("our signature verifies");
                    assert_eq!(verified.sender(), identity.nick());
                }
                Err(error) => drop(every_text(&error)),
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn dial(
        script: &[u8],
        with_credentials: bool,
    ) -> (ScriptRuntime, Result<dirpool::RawConnection, DialError>) {
        let rt = ScriptRuntime::new(script);
        let target = ServerAddr::parse("127.0.0.1:5222").expect("valid");
        let isolation = StreamIsolation::new(
            IsolationScope::PerCategory,
            IsolationToken::from_bytes(PASSWORD_TOKEN),
        );
        let credentials = with_credentials
            .then(|| isolation.directory_credentials(&target))
            .flatten();
        let timeout = Duration::from_secs(120);
        let deadline = rt.now() + timeout;
        let result = rt.run(dial_raw(
            Arc::new(rt.clone()),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 9050)),
            Duration::from_secs(10),
            &target,
            credentials.as_ref(),
            deadline,
            timeout,
        ));
        (rt, result)
    }

    const CONNECTED: [u8; 10] = [5, 0, 0, 1, 127, 0, 0, 1, 0x14, 0x5e];

    #[test]
    fn a_script_proxy_carries_a_real_dial_and_keeps_the_bytes_after_it() {
        let mut script = vec![4 * 3, 5, 2, 5, 2, 1, 0];
        script.extend_from_slice(&CONNECTED);
        script.extend_from_slice(b"hello");
        let (rt, result) = dial(&script, true);
        let connection = result.expect("the dial succeeds");
        assert_eq!(rt.script().unread(), b"hello");
        let mut stream = connection.take_stream().expect("stream");
        let mut got = [0; 5];
        rt.run(stream.read_exact(&mut got)).expect("readable");
        assert_eq!(&got, b"hello");
    }

    #[test]
    fn a_silent_proxy_is_cut_off_by_the_dial_timeout() {
        let (rt, result) = dial(&[1, 5, 0], false);
        assert!(
            matches!(result, Err(DialError::TimedOut(t)) if t == Duration::from_secs(120)),
            "{result:?}"
        );
        assert!(rt.now() > Instant::now(), "the clock moved to the deadline");
    }

    #[test]
    fn a_proxy_that_hangs_up_is_a_protocol_error_at_once() {
        let (_, result) = dial(&[0, 5, 0, 5], false);
        assert!(
            matches!(result, Err(DialError::ProxyProtocol { .. })),
            "{result:?}"
        );
    }

    #[test]
    #[should_panic(expected = "the run hangs")]
    fn a_future_that_never_ends_is_reported_as_a_hang() {
        ScriptRuntime::new(&[0]).run(futures::future::pending::<()>());
    }
}
