//! The JoinMarket line protocol: `{"type": N, "line": "..."}` + `\r\n`.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::JmError;

/// Client handshake.
pub const HANDSHAKE: u32 = 793;
/// Directory handshake reply.
pub const DIRECTORY_HANDSHAKE: u32 = 795;
/// Peer list.
pub const PEERLIST: u32 = 789;
/// Get peer list.
pub const GET_PEERLIST: u32 = 791;
/// Private message.
pub const PRIVMSG: u32 = 685;
/// Public message.
pub const PUBMSG: u32 = 687;
/// Ping: 798, as in joinmarket-ng (`jmcore/src/jmcore/protocol.py`,
/// `MessageType.PING`) and joinmarket-rs
/// (`crates/joinmarket-core/src/message.rs`). JMP-0004 moved it there from
/// 797 because the reference joinmarket-clientserver
/// (`src/jmdaemon/onionmc.py`) uses 797 for its local control type
/// `connect-in`: it lists `"ping": 797` but never sends a PING, and ignores
/// 798 as an unknown type.
pub const PING: u32 = 798;
/// Pong: 799 in all three. The reference never sends it and closes the
/// link (`assert False`) if it receives one, so it is sent only to answer
/// a PING.
pub const PONG: u32 = 799;
/// Disconnect: 801 in all three (the reference closes on receiving one).
pub const DISCONNECT: u32 = 801;
/// JMP-0005 nick-auth challenge, directory to client (joinmarket-ng
/// `protocol.py`, `NICK_AUTH_CHALLENGE`; unknown to joinmarket-rs and the
/// reference).
pub const NICK_AUTH_CHALLENGE: u32 = 803;
/// JMP-0005 nick-auth proof, client to directory (`NICK_AUTH_PROOF`).
pub const NICK_AUTH_PROOF: u32 = 805;
/// JMP-0005 nick-auth result, directory to client (`NICK_AUTH_RESULT`).
pub const NICK_AUTH_RESULT: u32 = 807;

/// The longest line we send, its `\r\n` terminator included.
///
/// joinmarket-rs's directory (`crates/joinmarket-dn/src/peer.rs`,
/// `MAX_LINE_LEN = 40_000` in `read_line_bounded`) refuses a line whose
/// bytes up to and including its `\n` exceed 40,000; the reference's
/// Twisted `LineReceiver` (`MAX_LENGTH = 40000`) refuses one whose text
/// without the delimiter exceeds 40,000. Counting the terminator satisfies
/// both.
pub const MAX_SEND_LINE: usize = 40_000;

/// One message on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Message type (e.g. [`PUBMSG`]).
    pub kind: u32,
    /// Its payload.
    pub line: String,
}

impl Envelope {
    /// A message of `kind` carrying `line`.
    pub fn new(kind: u32, line: impl Into<String>) -> Self {
        Self {
            kind,
            line: line.into(),
        }
    }

    /// Parses one received line (without its terminator).
    ///
    /// # Errors
    /// [`JmError`] if it is not a JSON object with an integer `type` and a
    /// string `line`.
    /// [`JmError::DuplicateKey`] for a key twice in one object (see
    /// [`parse_strict_json`]).
    pub fn parse(text: &str) -> Result<Self, JmError> {
        let value = parse_strict_json(text)?;
        let Value::Object(map) = value else {
            return Err(JmError::NotObject);
        };
        let kind = match map.get("type") {
            None => return Err(JmError::MissingField("type")),
            Some(v) => v
                .as_u64()
                .and_then(|k| u32::try_from(k).ok())
                .ok_or(JmError::WrongFieldType("type"))?,
        };
        let line = match map.get("line") {
            None => return Err(JmError::MissingField("line")),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(JmError::WrongFieldType("line")),
        };
        Ok(Self { kind, line })
    }

    /// The bytes to send, `\r\n` terminator included.
    ///
    /// # Errors
    /// [`JmError::SendTooLong`] when the bytes, terminator included, would
    /// exceed [`MAX_SEND_LINE`].
    pub fn encode(&self) -> Result<Vec<u8>, JmError> {
        let mut text = serde_json::json!({ "type": self.kind, "line": self.line }).to_string();
        text.push_str("\r\n");
        if text.len() > MAX_SEND_LINE {
            return Err(JmError::SendTooLong {
                len: text.len(),
                limit: MAX_SEND_LINE,
            });
        }
        Ok(text.into_bytes())
    }
}

/// Parses one JSON text as joinmarket-ng's `parse_strict_json_object`
/// does (`jmcore/src/jmcore/nick_auth.py`, used for every JMP-0005 message
/// of the handshake): a key twice in one object, at any depth, is refused
/// ([`JmError::DuplicateKey`]) where serde_json alone would keep the last
/// one; `NaN`, `Infinity` and numbers out of the `f64` range are refused
/// too ([`JmError::NotJson`]), as serde_json does. Nesting is bounded by
/// serde_json's recursion limit (128).
///
/// # Errors
/// [`JmError::DuplicateKey`] or [`JmError::NotJson`].
pub fn parse_strict_json(text: &str) -> Result<Value, JmError> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = StrictValue {
        duplicate: &duplicate,
    }
    .deserialize(&mut deserializer)
    .and_then(|value| deserializer.end().map(|()| value));
    parsed.map_err(|error| match duplicate.into_inner() {
        Some(key) => JmError::DuplicateKey(key),
        None => JmError::NotJson(error),
    })
}

/// Builds a [`Value`], recording the first duplicate key (cleaned for
/// display) before failing on it.
#[derive(Clone, Copy)]
struct StrictValue<'a> {
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(super::clean(&key));
                return Err(de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(self)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Reads `\n`-terminated lines (a preceding `\r` dropped), never holding
/// more than `limit` bytes of an unfinished line plus one read's worth.
#[derive(Debug)]
pub(crate) struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for `\n`.
    scanned: usize,
    limit: usize,
}

const READ_CHUNK: usize = 8 * 1024;

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(crate) fn new(inner: R, limit: usize) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            scanned: 0,
            limit,
        }
    }

    /// The stream it reads (e.g. to move a deadline).
    #[cfg(feature = "loopback")]
    pub(crate) fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Bytes of memory the reader holds for unfinished lines.
    pub(crate) fn held_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next line, or `None` at a clean end of stream. Cancel-safe.
    pub(crate) async fn next_line(&mut self) -> Result<Option<String>, JmError> {
        loop {
            if let Some(offset) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + offset;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                self.scanned = 0;
                // A long line (a large peer list) leaves a large buffer:
                // give the memory back once the rest is small.
                if self.buf.capacity() > 4 * READ_CHUNK && self.buf.len() < self.buf.capacity() / 4
                {
                    self.buf
                        .shrink_to(self.buf.len().saturating_mul(2).max(READ_CHUNK));
                }
                line.pop(); // '\n'
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.len() > self.limit {
                    return Err(JmError::LineTooLong { limit: self.limit });
                }
                return String::from_utf8(line)
                    .map(Some)
                    .map_err(|_| JmError::InvalidUtf8);
            }
            self.scanned = self.buf.len();
            // "\r\n" may follow a line of exactly `limit` bytes.
            // (Saturating: a limit near `usize::MAX` must not overflow.)
            let most = self.limit.saturating_add(2);
            if self.buf.len() >= most {
                return Err(JmError::LineTooLong { limit: self.limit });
            }
            let room = (most - self.buf.len()).min(READ_CHUNK);
            let start = self.buf.len();
            // Grow by doubling, but never past what the limit can need, so
            // the buffer's memory stays within the limit.
            let wanted = (start + room).max(self.buf.capacity().saturating_mul(2).min(most));
            self.buf.reserve_exact(wanted - start);
            // `read_buf` fills the spare capacity only (at most up to the
            // capacity reserved above) and is cancel-safe: a dropped
            // `next_line` loses no bytes and leaves no padding behind.
            let n = self
                .inner
                .read_buf(&mut self.buf)
                .await
                .map_err(JmError::Io)?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(JmError::ClosedMidLine)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message types of the current implementations:
    /// joinmarket-ng `jmcore/src/jmcore/protocol.py` (`MessageType`) and
    /// joinmarket-rs `crates/joinmarket-core/src/message.rs` agree on every
    /// one; the reference joinmarket-clientserver `src/jmdaemon/onionmc.py`
    /// lists `"ping": 797`, but 797 is its local `connect-in` and it never
    /// sends a PING (JMP-0004 moved PING to 798).
    #[test]
    fn message_types_match_the_current_implementations() {
        assert_eq!(
            [
                PRIVMSG,
                PUBMSG,
                PEERLIST,
                GET_PEERLIST,
                HANDSHAKE,
                DIRECTORY_HANDSHAKE,
                PING,
                PONG,
                DISCONNECT
            ],
            [685, 687, 789, 791, 793, 795, 798, 799, 801]
        );
    }

    /// joinmarket-rs refuses a line whose bytes through its `\n` exceed
    /// 40,000; Twisted's `LineReceiver` one whose text exceeds 40,000.
    #[test]
    fn the_send_limit_counts_the_terminator() {
        let overhead = Envelope::new(PUBMSG, "").encode().unwrap().len();
        let fits = Envelope::new(PUBMSG, "x".repeat(MAX_SEND_LINE - overhead));
        let bytes = fits.encode().unwrap();
        assert_eq!(bytes.len(), MAX_SEND_LINE);
        assert!(bytes.ends_with(b"\r\n"));
        let over = Envelope::new(PUBMSG, "x".repeat(MAX_SEND_LINE - overhead + 1));
        assert!(matches!(
            over.encode(),
            Err(JmError::SendTooLong {
                len: 40_001,
                limit: MAX_SEND_LINE
            })
        ));
    }

    /// joinmarket-ng `jmcore/src/jmcore/nick_auth.py`
    /// (`parse_strict_json_object`: `object_pairs_hook` refusing duplicate
    /// keys, `parse_constant` refusing `NaN` and the infinities).
    #[test]
    fn strict_json_refuses_what_joinmarket_ng_refuses() {
        let error = parse_strict_json(r#"{"type": 795, "line": "a", "type": 687}"#).unwrap_err();
        assert!(
            matches!(&error, JmError::DuplicateKey(k) if k == "type"),
            "{error:?}"
        );
        let nested = r#"{"a": [{"b": 1}, {"c": {"d": 1, "d": 2}}]}"#;
        assert!(matches!(parse_strict_json(nested), Err(JmError::DuplicateKey(k)) if k == "d"));
        for text in [
            r#"{"a": NaN}"#,
            r#"{"a": Infinity}"#,
            r#"{"a": -Infinity}"#,
            r#"{"a": 1e400}"#,
            r#"{"a": 1} x"#,
            &format!("{}1{}", "[".repeat(200), "]".repeat(200)),
        ] {
            assert!(
                matches!(parse_strict_json(text), Err(JmError::NotJson(_))),
                "{text:.40}"
            );
        }
        let value = parse_strict_json(r#"{"a": [1, -2, 2.5, null, true, "x"], "b": {}}"#);
        assert_eq!(
            value.unwrap(),
            serde_json::json!({"a": [1, -2, 2.5, null, true, "x"], "b": {}})
        );
        // Envelopes are parsed so too.
        assert!(matches!(
            Envelope::parse(r#"{"type": 687, "line": "a", "line": "b"}"#),
            Err(JmError::DuplicateKey(k)) if k == "line"
        ));
    }

    #[tokio::test]
    async fn a_line_reader_with_a_huge_limit_does_not_overflow() {
        let data: &[u8] = b"{\"type\": 687, \"line\": \"a\"}\r\nrest";
        let mut reader = LineReader::new(data, usize::MAX);
        let line = reader.next_line().await.unwrap().unwrap();
        assert_eq!(Envelope::parse(&line).unwrap(), Envelope::new(PUBMSG, "a"));
        assert!(matches!(
            reader.next_line().await,
            Err(JmError::ClosedMidLine)
        ));
        assert!(reader.held_capacity() <= 2 * READ_CHUNK);
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_limit_is_read_and_one_byte_more_is_not() {
        let exact = format!("{}\r\n", "a".repeat(10));
        let mut reader = LineReader::new(exact.as_bytes(), 10);
        assert_eq!(reader.next_line().await.unwrap().unwrap(), "a".repeat(10));
        let over = format!("{}\n", "a".repeat(11));
        let mut reader = LineReader::new(over.as_bytes(), 10);
        assert!(matches!(
            reader.next_line().await,
            Err(JmError::LineTooLong { limit: 10 })
        ));
    }

    #[tokio::test]
    async fn the_reader_reports_the_memory_an_unfinished_line_holds() {
        // What the link reports as the reader's share of its memory.
        let unfinished = vec![b'a'; 5 * READ_CHUNK];
        let mut reader = LineReader::new(&unfinished[..], usize::MAX);
        assert!(matches!(
            reader.next_line().await,
            Err(JmError::ClosedMidLine)
        ));
        assert!(
            reader.held_capacity() >= unfinished.len(),
            "{}",
            reader.held_capacity()
        );
        // Once the long line is read and the rest is small, it gives the
        // memory back.
        let mut data = unfinished.clone();
        data.extend_from_slice(b"\nb\n");
        let mut reader = LineReader::new(&data[..], usize::MAX);
        let line = reader.next_line().await.unwrap().unwrap();
        assert_eq!(line.len(), unfinished.len());
        assert!(reader.held_capacity() <= 2 * READ_CHUNK);
        assert_eq!(reader.next_line().await.unwrap().as_deref(), Some("b"));
        // It keeps the buffer when that is no more than four reads' worth
        // (a 20,000-byte line grows it to 8, 16, then 32 KiB), and when
        // what follows the line fills a quarter of it (a 40,000-byte line
        // grows it to 64 KiB; 16 KiB follow).
        for (line, rest, kept) in [
            (20_000, 100, 4 * READ_CHUNK),
            (40_000, 2 * READ_CHUNK, 8 * READ_CHUNK),
        ] {
            let mut data = vec![b'a'; line];
            data.push(b'\n');
            data.extend(std::iter::repeat_n(b'b', rest));
            let mut reader = LineReader::new(&data[..], usize::MAX);
            assert_eq!(reader.next_line().await.unwrap().unwrap().len(), line);
            assert!(
                reader.held_capacity() >= kept,
                "{line}: {}",
                reader.held_capacity()
            );
        }
    }
}
