//! The JoinMarket line protocol: `{"type": N, "line": "..."}` + `\r\n`.

use serde_json::Value;
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
    pub fn parse(text: &str) -> Result<Self, JmError> {
        let value: Value = serde_json::from_str(text).map_err(JmError::NotJson)?;
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
}
