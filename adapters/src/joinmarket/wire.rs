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
/// Ping. (797 in both joinmarket-clientserver and joinmarket-ng; an
/// earlier note of ours said 798, which neither uses.)
pub const PING: u32 = 797;
/// Pong.
pub const PONG: u32 = 799;
/// Disconnect.
pub const DISCONNECT: u32 = 801;

/// Reference directories drop a line over 40,000 bytes: never send more.
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

    /// The bytes to send, terminator included.
    ///
    /// # Errors
    /// [`JmError::SendTooLong`] past [`MAX_SEND_LINE`].
    pub fn encode(&self) -> Result<Vec<u8>, JmError> {
        let mut text = serde_json::json!({ "type": self.kind, "line": self.line }).to_string();
        if text.len() > MAX_SEND_LINE {
            return Err(JmError::SendTooLong {
                len: text.len(),
                limit: MAX_SEND_LINE,
            });
        }
        text.push_str("\r\n");
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

    /// Bytes of memory the reader holds for unfinished lines.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn held_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next line, or `None` at a clean end of stream.
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
            if self.buf.len() > self.limit + 1 {
                return Err(JmError::LineTooLong { limit: self.limit });
            }
            let room = (self.limit + 2 - self.buf.len()).min(READ_CHUNK);
            let start = self.buf.len();
            // Grow by doubling, but never past what the limit can need, so
            // the buffer's memory stays within the limit.
            let wanted = (start + room).max((2 * self.buf.capacity()).min(self.limit + 2));
            self.buf.reserve_exact(wanted - start);
            self.buf.resize(start + room, 0);
            let read = self.inner.read(&mut self.buf[start..]).await;
            let n = *read.as_ref().unwrap_or(&0);
            self.buf.truncate(start + n);
            read.map_err(JmError::Io)?;
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
