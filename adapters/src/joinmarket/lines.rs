//! Typed JoinMarket lines: the payloads of PUBMSG (687), PRIVMSG (685),
//! PEERLIST (789) and GETPEERLIST (791).
//!
//! # Public and private messages
//!
//! Every implementation writes a message as `<from>!<to>!<commands>`, the
//! `!` (`COMMAND_PREFIX`) separating the two nicks and then each command;
//! `<to>` is `PUBLIC` for a public message. The reference
//! (joinmarket-clientserver `src/jmdaemon/onionmc.py`, `get_pubmsg`,
//! `get_privmsg`), joinmarket-ng (`jmcore/src/jmcore/directory_client.py`,
//! `send_public_message`, `send_private_message`) and joinmarket-rs
//! (`crates/joinmarket-core/src/message.rs`, `make_pubmsg_line`) all send
//! `J5…!PUBLIC!orderbook` and `J5…!J5…!fill 0 …`. Here the *body* is
//! everything from the second `!` on, so it starts with `!`:
//! `to_line()` is `<from>!<to>` followed by the body.
//!
//! Receivers split differently: the reference and joinmarket-ng
//! (`jmcore/src/jmcore/protocol.py`, `parse_jm_message`) split the whole
//! line on every `!`; joinmarket-rs (`message.rs`, `parse_pubmsg_line`,
//! `parse_privmsg_line`) splits only at the first one or two. A body holds
//! several commands when a maker answers `!orderbook` privately with all
//! its offers and its fidelity bond (reference
//! `src/jmdaemon/message_channel.py`, `announce_orders`, joins the offer
//! commands with nothing between them: `!sw0reloffer 0 … 0.0002!sw0absoffer
//! 1 …!tbond <proof>`; joinmarket-ng `maker/src/maker/bot.py`,
//! `_format_offer_announcement`, appends `!tbond <proof>` the same way) or
//! cancels several offers (`!cancel 0!cancel 1`). The reference's receiver
//! (`on_pubmsg`, `on_verified_privmsg`) splits the body on `!` and each
//! command on single spaces; joinmarket-ng splits offers on `!` and their
//! fields on any whitespace; joinmarket-rs reads one command only (its
//! fields split on any whitespace), so a second command would show up
//! among the first one's fields.
//!
//! [`parse_commands`] is strict where they are lenient: a body is one or
//! more `!name arg arg …`, names of ASCII letters, digits and `_`, arguments
//! separated by exactly one space (an empty argument, as a doubled or
//! trailing space would make in the reference's split, is refused), no
//! control characters anywhere. [`commands_body`] builds exactly that text
//! back, without a space before the next `!`, as the reference does.
//! Real senders never put a space before the next `!`; what strictness
//! costs is free text: an `!error` whose text holds `!` or a doubled space
//! (joinmarket-ng sends its error texts as they are,
//! `maker/src/maker/maker_session.py`) is refused as a whole, where the
//! reference would have split it into a bogus command anyway.
//!
//! # Private-message signatures
//!
//! Current senders append `<pubkey hex> <signature base64>` to every
//! private message: the reference (`message_channel.py`,
//! `prepare_privmsg`, the check in `on_privmsg`, which takes the last two
//! space-separated fields and ignores the message when they are not hex and
//! base64) and joinmarket-ng (`jmcore/src/jmcore/crypto.py`,
//! `sign_message`; its directory `message_router.py` warns about private
//! messages with fewer than three fields, as lacking it). joinmarket-rs's
//! directory does not check it (`message.rs`, `extract_nick_sig`, a
//! heuristic it uses for logging only). The signature is a DER ECDSA
//! signature (both sign with libsecp256k1: `CKey.sign` in the reference's
//! `src/jmbitcoin/secp256k1_main.py`, coincurve in joinmarket-ng), so 8 to
//! 72 bytes; the key is the sender's compressed public key, from which its
//! nick derives. [`PrivateMessage::parse`] takes the last two fields as a
//! [`PrivmsgSignature`] exactly when they have that shape (lower-case hex
//! of a 33-byte key starting 02 or 03, canonical padded base64 of 8 to 72
//! bytes); [`PrivateMessage::new`] therefore refuses an unsigned body that
//! ends in two such fields. Checking the signature is not done here.
//!
//! # Peer lists
//!
//! A PEERLIST payload is entries separated by `,`, each `nick;location`
//! (`NICK_PEERLOCATOR_SEPARATOR`) with optional fields after further `;`:
//! - the reference (`onionmc.py`, `send_peers`) sends `nick;location` and,
//!   for peers that left, `nick;location;D`, all peers in one message; its
//!   receiver (`process_control_message`) treats any three-field entry
//!   whose third field is not `D` as nothing at all, so it drops entries
//!   with features. It ignores GETPEERLIST ("currently not supported").
//! - joinmarket-ng (`jmcore/src/jmcore/protocol.py`,
//!   `create_peerlist_entry`) sends `nick;location`, `nick;location;D`,
//!   `nick;location;F:f1+f2` (features sorted, joined with `+`, only to
//!   peers that announced `peerlist_features`) or `nick;location;D;F:…`;
//!   its directory (`directory_server/src/directory_server/message_router.py`,
//!   `send_peerlist`) answers GETPEERLIST in chunks of 20 entries, with an
//!   empty payload when it knows no peer. Its parser (`parse_peerlist_entry`)
//!   takes the extra fields in any order and ignores unknown ones; its client
//!   (`directory_client.py`) skips empty entries and entries without `;`.
//! - joinmarket-rs (`crates/joinmarket-dn/src/peer.rs`,
//!   `append_peerlist_entry`) sends `nick;location` or
//!   `nick;location;F:f1+f2` (features in its map's order, the directory
//!   itself first), all in one message, and `nick;location;D` followed by
//!   its own entry when a maker leaves.
//!
//! [`PeerlistEntry::parse`] accepts `nick;location[;D][;F:f1+f2…]` in that
//! order only: nicks by [`Nick::parse`], locations by [`Location::parse`],
//! feature names as joinmarket-rs's handshake allows them (`[a-z0-9_]+`,
//! `crates/joinmarket-core/src/handshake.rs`, `is_valid_feature_name`), at
//! least one after `F:`, none twice. [`parse_peerlist`] refuses empty
//! entries, so one bad entry refuses the whole payload.
//!
//! # Bounds
//!
//! Every parser first checks its input against a length cap
//! ([`MAX_MESSAGE_LINE`], [`MAX_PEERLIST_PAYLOAD`], [`MAX_PEERLIST_ENTRY`])
//! and counts against [`MAX_COMMANDS`], [`MAX_ARGS`],
//! [`MAX_PEERLIST_ENTRIES`] and [`MAX_FEATURES`], so time and memory stay
//! linear in a bounded input. Parsing is linear and never panics.
//!
//! ```
//! use dirpool::joinmarket::{Nick, PrivateMessage, PublicMessage, parse_peerlist};
//!
//! let offer = PublicMessage::parse("J5xhGSWE7VrxM7sO!PUBLIC!sw0reloffer 0 27300 9000000 0 0.00002")?;
//! assert_eq!(offer.commands()?[0].name(), "sw0reloffer");
//!
//! let from = Nick::parse("J5xhGSWE7VrxM7sO")?;
//! let to = Nick::parse("J52bCDEFGHJKLMNO")?;
//! let fill = PrivateMessage::new(from, to, "!fill 0 1000000 abc")?;
//! assert_eq!(fill.to_line(), "J5xhGSWE7VrxM7sO!J52bCDEFGHJKLMNO!fill 0 1000000 abc");
//!
//! assert!(parse_peerlist("")?.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use super::wire::{self, Envelope};
use super::{JmError, Location, LocationError, Nick, NickError};

/// The longest PUBMSG or PRIVMSG line parsed, in bytes: joinmarket-ng's
/// directory reads JSON lines of at most 65,536 bytes
/// (`jmcore/src/jmcore/config.py`, `max_line_length`), the reference's and
/// joinmarket-rs's at most 40,000 (see [`wire::MAX_SEND_LINE`]), so no
/// relayed message carries a longer one.
pub const MAX_MESSAGE_LINE: usize = 65_536;

/// The most commands in one body. Real bodies carry a handful (a maker's
/// offers and its bond, a few `!cancel`s); the cap bounds the vector a
/// hostile 64 KiB line could make.
pub const MAX_COMMANDS: usize = 256;

/// The most arguments of one command. The longest real ones are offers
/// (five) and `!error` texts (a sentence).
pub const MAX_ARGS: usize = 256;

/// The longest command name, in bytes (the longest real one,
/// `sw0absoffer`, has 11).
pub const MAX_COMMAND_NAME: usize = 32;

/// The longest PEERLIST payload parsed, in bytes: the largest peer list
/// joinmarket-rs can send in its one PEERLIST, by its caps: every maker up
/// to 20,000 (`crates/joinmarket-dn/src/router.rs`,
/// `MAX_MAKERS_BEFORE_SAMPLE`; beyond, it samples 4,000) plus its own
/// entry ([`MAX_PEERLIST_ENTRIES`]), each at most [`MAX_PEERLIST_ENTRY`]
/// bytes, separated by `,`: 43,402,169 bytes. Lists of about 2.2 MB (20,000 makers
/// with `peerlist_features` and `ping`) have been seen live; its comment
/// (`peer.rs`, "up to ~1.4 MB") counts entries without features. ng sends
/// chunks of 20 entries; the reference all its peers at once, without
/// features. [`MAX_MAX_LINE`](super::MAX_MAX_LINE), the largest
/// `JmConfig::max_line`, holds the envelope of the largest.
pub const MAX_PEERLIST_PAYLOAD: usize = MAX_PEERLIST_ENTRIES * (MAX_PEERLIST_ENTRY + 1) - 1;

const _: () = assert!(MAX_PEERLIST_PAYLOAD + 64 <= super::MAX_MAX_LINE);

/// The most entries in one PEERLIST: joinmarket-rs lists every maker up to
/// 20,000 (and samples beyond, `crates/joinmarket-dn/src/router.rs`,
/// `MAX_MAKERS_BEFORE_SAMPLE`), plus its own entry.
pub const MAX_PEERLIST_ENTRIES: usize = 20_001;

/// The most features in one entry: joinmarket-rs refuses handshakes with
/// more (`crates/joinmarket-core/src/handshake.rs`, `MAX_FEATURES_ENTRIES`).
pub const MAX_FEATURES: usize = 32;

/// The longest feature name, in bytes (joinmarket-rs's
/// `MAX_FEATURE_KEY_LEN`).
pub const MAX_FEATURE_LEN: usize = 64;

/// The longest peer location, in bytes: a v3 onion (62 characters), `:`
/// and a port of up to 5 digits (joinmarket-rs's `MAX_LOCATION_LEN`
/// comment, `crates/joinmarket-core/src/handshake.rs`; see [`Location`]).
pub const MAX_LOCATION_LEN: usize = 62 + 1 + 5;

/// The longest PEERLIST entry, in bytes: a nick (16), `;` and a location
/// ([`MAX_LOCATION_LEN`]), `;D`, and `;F:` with [`MAX_FEATURES`] names of
/// [`MAX_FEATURE_LEN`] bytes and the `+`s between them (2,169 bytes).
pub const MAX_PEERLIST_ENTRY: usize =
    16 + 1 + MAX_LOCATION_LEN + 2 + 3 + MAX_FEATURES * (MAX_FEATURE_LEN + 1) - 1;

/// The `to` of a public message.
const PUBLIC: &str = "PUBLIC";
/// Separates nicks and commands.
const COMMAND_PREFIX: char = '!';
/// Separates the fields of a PEERLIST entry.
const NICK_PEERLOCATOR_SEPARATOR: char = ';';
/// Separates PEERLIST entries.
const ENTRY_SEPARATOR: char = ',';
/// Separates feature names after `F:`.
const FEATURE_SEPARATOR: char = '+';
/// The disconnected flag of a PEERLIST entry.
const DISCONNECTED: &str = "D";
/// Starts the features field of a PEERLIST entry.
const FEATURES_PREFIX: &str = "F:";
/// Bytes of a compressed public key.
const PUBKEY_LEN: usize = 33;
/// Shortest and longest DER ECDSA signature, in bytes.
const MIN_SIGNATURE_LEN: usize = 8;
const MAX_SIGNATURE_LEN: usize = 72;
const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Why a line, a body or a PEERLIST entry is refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The input is longer than its cap.
    #[error("{what} of {len} bytes exceeds the limit of {limit}")]
    TooLong {
        /// What was too long (`"message line"`, `"peerlist"`, ...).
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The cap.
        limit: usize,
    },
    /// The encoded envelope would exceed [`wire::MAX_SEND_LINE`].
    #[error("the message would be a line of {len} bytes, over the {limit}-byte send limit")]
    TooLongToSend {
        /// Bytes of the encoded line, `\r\n` included.
        len: usize,
        /// [`wire::MAX_SEND_LINE`].
        limit: usize,
    },
    /// A message line without the `!` after its sender or its recipient.
    #[error("a message line is <from>!<to>!<commands>; this one has no {0}")]
    MissingField(&'static str),
    /// The sender or recipient is not a JoinMarket nick.
    #[error("the {field} nick is invalid")]
    InvalidNick {
        /// `"from"`, `"to"` or `"peerlist"`.
        field: &'static str,
        /// Why.
        #[source]
        source: NickError,
    },
    /// A public message not addressed to `PUBLIC`.
    #[error("a public message is addressed to PUBLIC")]
    NotPublic,
    /// A private message addressed to `PUBLIC`.
    #[error("a private message is addressed to a nick, not PUBLIC")]
    NotPrivate,
    /// A body that does not start with `!`.
    #[error("a body starts with '!'")]
    NoCommand,
    /// A command whose name is empty (`!!`, `! x`).
    #[error("command {index} has an empty name")]
    EmptyCommandName {
        /// Index of the command in its body.
        index: usize,
    },
    /// A command name with a character other than ASCII letters, digits
    /// and `_`, or longer than [`MAX_COMMAND_NAME`].
    #[error("command {index} has an invalid name")]
    InvalidCommandName {
        /// Index of the command in its body.
        index: usize,
    },
    /// An empty argument: two spaces in a row, or a space before `!` or at
    /// the end.
    #[error("command {index} has an empty argument (doubled or trailing space)")]
    EmptyArgument {
        /// Index of the command in its body.
        index: usize,
    },
    /// An argument holding a space or `!` (builders only; parsing splits
    /// there).
    #[error("an argument holds a space or '!'")]
    InvalidArgument,
    /// A control character (`\n`, `\r`, `\t`, NUL, DEL, ...).
    #[error("control character at byte {pos}")]
    ControlCharacter {
        /// Its byte offset.
        pos: usize,
    },
    /// More than [`MAX_COMMANDS`] commands.
    #[error("more than {limit} commands in one body")]
    TooManyCommands {
        /// [`MAX_COMMANDS`].
        limit: usize,
    },
    /// More than [`MAX_ARGS`] arguments to one command.
    #[error("command {index} has more than {limit} arguments")]
    TooManyArguments {
        /// Index of the command in its body.
        index: usize,
        /// [`MAX_ARGS`].
        limit: usize,
    },
    /// An unsigned private body ending in two fields that parse as a
    /// signature: sent as is, it would be read back as signed.
    #[error("an unsigned body ends in what reads as a public key and a signature")]
    AmbiguousSignature,
    /// A signature's public key is not 33 bytes starting with 02 or 03.
    #[error("a signature's public key is a compressed one (33 bytes, 02 or 03 first)")]
    InvalidPublicKey,
    /// A signature that is not canonical padded base64 of 8 to 72 bytes.
    #[error("a signature is canonical padded base64 of 8 to 72 bytes")]
    InvalidSignature,
    /// An empty PEERLIST entry (`,,`, or a leading or trailing `,`).
    #[error("peerlist entry {index} is empty")]
    EmptyEntry {
        /// Index of the entry.
        index: usize,
    },
    /// A PEERLIST entry without `;location`.
    #[error("a peerlist entry is nick;location")]
    MissingLocation,
    /// A PEERLIST entry whose location does not parse.
    #[error("invalid location in a peerlist entry")]
    InvalidLocation(#[source] LocationError),
    /// A PEERLIST entry field after the location that is neither `D` nor
    /// `F:…`, or out of order, or repeated.
    #[error("unexpected field {index} in a peerlist entry (only ;D then ;F:features)")]
    UnexpectedField {
        /// Index of the field (the location is field 1).
        index: usize,
    },
    /// `F:` with no feature, an empty name between `+`s, or a name that is
    /// not `[a-z0-9_]+` of at most [`MAX_FEATURE_LEN`] bytes.
    #[error("invalid feature name in a peerlist entry")]
    InvalidFeature,
    /// A feature named twice in one entry.
    #[error("a feature is named twice in a peerlist entry")]
    DuplicateFeature,
    /// More than [`MAX_FEATURES`] features in one entry.
    #[error("more than {limit} features in a peerlist entry")]
    TooManyFeatures {
        /// [`MAX_FEATURES`].
        limit: usize,
    },
    /// More than [`MAX_PEERLIST_ENTRIES`] entries.
    #[error("more than {limit} entries in a peerlist")]
    TooManyEntries {
        /// [`MAX_PEERLIST_ENTRIES`].
        limit: usize,
    },
    /// A PEERLIST entry error, with the entry's index.
    #[error("peerlist entry {index}")]
    Entry {
        /// Index of the entry.
        index: usize,
        /// Why it is refused.
        #[source]
        source: Box<LineError>,
    },
}

/// One `!name arg arg …` command; a body may hold several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    name: String,
    args: Vec<String>,
}

impl Command {
    /// A command named `name` (without `!`) with `args`.
    ///
    /// # Errors
    /// [`LineError`] when [`parse_commands`] would not read it back: a name
    /// not of ASCII letters, digits and `_` (1 to [`MAX_COMMAND_NAME`]
    /// bytes), an empty argument or one with a space, `!` or control
    /// character, more than [`MAX_ARGS`] arguments.
    pub fn new<I, S>(name: impl Into<String>, args: I) -> Result<Self, LineError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let name = name.into();
        check_name(&name, 0)?;
        let mut checked = Vec::new();
        for arg in args {
            let arg: String = arg.into();
            if checked.len() == MAX_ARGS {
                return Err(LineError::TooManyArguments {
                    index: 0,
                    limit: MAX_ARGS,
                });
            }
            if arg.is_empty() {
                return Err(LineError::EmptyArgument { index: 0 });
            }
            if let Some(pos) = arg.find(char::is_control) {
                return Err(LineError::ControlCharacter { pos });
            }
            if arg.contains([' ', COMMAND_PREFIX]) {
                return Err(LineError::InvalidArgument);
            }
            checked.push(arg);
        }
        Ok(Self {
            name,
            args: checked,
        })
    }

    /// The name, without `!` (e.g. `sw0reloffer`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }
}

/// `!name arg arg …`.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{COMMAND_PREFIX}{}", self.name)?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

fn check_name(name: &str, index: usize) -> Result<(), LineError> {
    if name.is_empty() {
        return Err(LineError::EmptyCommandName { index });
    }
    if name.len() > MAX_COMMAND_NAME
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(LineError::InvalidCommandName { index });
    }
    Ok(())
}

/// Splits a body into its commands (see the [module](self) doc).
///
/// # Errors
/// [`LineError`] for a body over [`MAX_MESSAGE_LINE`], not starting with
/// `!`, with an empty or invalid name, an empty argument, a control
/// character, or over [`MAX_COMMANDS`] or [`MAX_ARGS`].
pub fn parse_commands(body: &str) -> Result<Vec<Command>, LineError> {
    check_text(body, "body", MAX_MESSAGE_LINE)?;
    let rest = body
        .strip_prefix(COMMAND_PREFIX)
        .ok_or(LineError::NoCommand)?;
    let mut commands = Vec::new();
    for (index, text) in rest.split(COMMAND_PREFIX).enumerate() {
        if index == MAX_COMMANDS {
            return Err(LineError::TooManyCommands {
                limit: MAX_COMMANDS,
            });
        }
        let mut fields = text.split(' ');
        let name = fields.next().unwrap_or_default();
        check_name(name, index)?;
        let mut args = Vec::new();
        for arg in fields {
            if args.len() == MAX_ARGS {
                return Err(LineError::TooManyArguments {
                    index,
                    limit: MAX_ARGS,
                });
            }
            if arg.is_empty() {
                return Err(LineError::EmptyArgument { index });
            }
            args.push(arg.to_owned());
        }
        commands.push(Command {
            name: name.to_owned(),
            args,
        });
    }
    Ok(commands)
}

/// The body of `commands`, each `!name arg …` right after the previous one
/// (as the reference joins offers); [`parse_commands`] reads it back.
pub fn commands_body(commands: &[Command]) -> String {
    commands.iter().map(Command::to_string).collect()
}

/// Checks length and control characters of a whole input.
fn check_text(text: &str, what: &'static str, limit: usize) -> Result<(), LineError> {
    if text.len() > limit {
        return Err(LineError::TooLong {
            what,
            len: text.len(),
            limit,
        });
    }
    if let Some(pos) = text.find(char::is_control) {
        return Err(LineError::ControlCharacter { pos });
    }
    Ok(())
}

/// Splits `<from>!<to><body>` (body starting with `!`).
fn split_line(line: &str) -> Result<(Nick, &str, &str), LineError> {
    check_text(line, "message line", MAX_MESSAGE_LINE)?;
    let (from, rest) = line
        .split_once(COMMAND_PREFIX)
        .ok_or(LineError::MissingField("recipient"))?;
    let to_end = rest
        .find(COMMAND_PREFIX)
        .ok_or(LineError::MissingField("body"))?;
    let from = Nick::parse(from).map_err(|source| LineError::InvalidNick {
        field: "from",
        source,
    })?;
    Ok((from, &rest[..to_end], &rest[to_end..]))
}

/// Whether `envelope` fits [`wire::MAX_SEND_LINE`].
fn check_sendable(envelope: &Envelope) -> Result<(), LineError> {
    match envelope.encode() {
        Ok(_) => Ok(()),
        Err(JmError::SendTooLong { len, limit }) => Err(LineError::TooLongToSend { len, limit }),
        // Encoding a JSON object of a number and a string cannot fail
        // otherwise; were it to, sending would say so.
        Err(_) => Ok(()),
    }
}

/// `<from>!PUBLIC<body>`, the payload of a PUBMSG (687) as every directory
/// relays it; the body starts with `!` (`!orderbook`, `!sw0reloffer 0 …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicMessage {
    from: Nick,
    body: String,
}

impl PublicMessage {
    /// A public message from `from`.
    ///
    /// # Errors
    /// [`LineError`] when [`parse_commands`] refuses `body`, or
    /// [`LineError::TooLongToSend`] when its envelope would exceed
    /// [`wire::MAX_SEND_LINE`].
    pub fn new(from: Nick, body: impl Into<String>) -> Result<Self, LineError> {
        let message = Self {
            from,
            body: body.into(),
        };
        parse_commands(&message.body)?;
        check_sendable(&message.to_envelope())?;
        Ok(message)
    }

    /// Parses a PUBMSG payload.
    ///
    /// # Errors
    /// [`LineError`] for a line over [`MAX_MESSAGE_LINE`], a sender that is
    /// not a nick, a recipient other than `PUBLIC`, or a body
    /// [`parse_commands`] refuses.
    pub fn parse(line: &str) -> Result<Self, LineError> {
        let (from, to, body) = split_line(line)?;
        if to != PUBLIC {
            return Err(LineError::NotPublic);
        }
        parse_commands(body)?;
        Ok(Self {
            from,
            body: body.to_owned(),
        })
    }

    /// The sender.
    pub fn from(&self) -> &Nick {
        &self.from
    }

    /// The commands as text, starting with `!`.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The commands of the body.
    ///
    /// # Errors
    /// None for a message that was parsed or built (the body was checked);
    /// the `Result` is that of [`parse_commands`].
    pub fn commands(&self) -> Result<Vec<Command>, LineError> {
        parse_commands(&self.body)
    }

    /// `<from>!PUBLIC<body>`.
    pub fn to_line(&self) -> String {
        format!("{}{COMMAND_PREFIX}{PUBLIC}{}", self.from, self.body)
    }

    /// The PUBMSG envelope.
    pub fn to_envelope(&self) -> Envelope {
        Envelope::new(wire::PUBMSG, self.to_line())
    }
}

/// The `<pubkey hex> <signature base64>` current senders append to a
/// private message. Only its shape is checked here, not the signature.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivmsgSignature {
    public_key: [u8; PUBKEY_LEN],
    signature: String,
}

impl PrivmsgSignature {
    /// A signature by the holder of `public_key`, `signature` being the
    /// base64 of a DER ECDSA signature.
    ///
    /// # Errors
    /// [`LineError::InvalidPublicKey`] unless `public_key` starts with 02
    /// or 03; [`LineError::InvalidSignature`] unless `signature` is
    /// canonical padded base64 of 8 to 72 bytes.
    pub fn new(public_key: [u8; PUBKEY_LEN], signature: &str) -> Result<Self, LineError> {
        if !matches!(public_key[0], 0x02 | 0x03) {
            return Err(LineError::InvalidPublicKey);
        }
        if !is_signature_base64(signature) {
            return Err(LineError::InvalidSignature);
        }
        Ok(Self {
            public_key,
            signature: signature.to_owned(),
        })
    }

    /// Parses the two trailing fields of a private message.
    ///
    /// # Errors
    /// [`LineError::InvalidPublicKey`] unless `public_key_hex` is lower-case
    /// hex of a compressed key; as [`PrivmsgSignature::new`] otherwise.
    pub fn parse(public_key_hex: &str, signature: &str) -> Result<Self, LineError> {
        let public_key = parse_public_key(public_key_hex).ok_or(LineError::InvalidPublicKey)?;
        Self::new(public_key, signature)
    }

    /// The signer's compressed public key.
    pub fn public_key(&self) -> &[u8; PUBKEY_LEN] {
        &self.public_key
    }

    /// The signature, base64.
    pub fn signature_base64(&self) -> &str {
        &self.signature
    }

    /// The nick of the key's holder: a private message is genuine only if
    /// this is its sender (and the signature verifies).
    pub fn nick(&self) -> Nick {
        Nick::from_public_key(&self.public_key)
            .unwrap_or_else(|_| unreachable!("checked to be a compressed key"))
    }
}

/// `<pubkey hex> <signature base64>`.
impl fmt::Display for PrivmsgSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.public_key {
            write!(f, "{byte:02x}")?;
        }
        write!(f, " {}", self.signature)
    }
}

impl fmt::Debug for PrivmsgSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivmsgSignature({self})")
    }
}

/// Lower-case hex of a 33-byte key starting 02 or 03.
fn parse_public_key(hex: &str) -> Option<[u8; PUBKEY_LEN]> {
    let digits = hex.as_bytes();
    if digits.len() != 2 * PUBKEY_LEN {
        return None;
    }
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut key = [0u8; PUBKEY_LEN];
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    matches!(key[0], 0x02 | 0x03).then_some(key)
}

/// Canonical padded base64 (standard alphabet, unused bits zero) of
/// [`MIN_SIGNATURE_LEN`] to [`MAX_SIGNATURE_LEN`] bytes.
fn is_signature_base64(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() % 4 != 0 {
        return false;
    }
    let padding = bytes.iter().rev().take_while(|&&b| b == b'=').count();
    if padding > 2 {
        return false;
    }
    let data = &bytes[..bytes.len() - padding];
    let decoded = bytes.len() / 4 * 3 - padding;
    if !(MIN_SIGNATURE_LEN..=MAX_SIGNATURE_LEN).contains(&decoded) {
        return false;
    }
    let value = |b: u8| BASE64.iter().position(|&c| c == b);
    if !data.iter().all(|&b| value(b).is_some()) {
        return false;
    }
    // The last character's bits past the data must be zero (one pad: two
    // bits, two pads: four bits), or another text decodes the same.
    let unused_mask = match padding {
        0 => 0,
        1 => 0b11,
        _ => 0b1111,
    };
    data.last()
        .and_then(|&b| value(b))
        .is_some_and(|v| v & unused_mask == 0)
}

/// Splits off the trailing `<pubkey hex> <signature base64>` when the last
/// two fields have that shape.
fn split_signature(text: &str) -> (&str, Option<PrivmsgSignature>) {
    let Some((rest, signature)) = text.rsplit_once(' ') else {
        return (text, None);
    };
    let Some((body, public_key)) = rest.rsplit_once(' ') else {
        return (text, None);
    };
    match PrivmsgSignature::parse(public_key, signature) {
        Ok(parsed) => (body, Some(parsed)),
        Err(_) => (text, None),
    }
}

/// `<from>!<to><body>[ <pubkey hex> <signature base64>]`, the payload of a
/// PRIVMSG (685); the body starts with `!` (`!fill 0 …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateMessage {
    from: Nick,
    to: Nick,
    body: String,
    signature: Option<PrivmsgSignature>,
}

impl PrivateMessage {
    /// An unsigned private message (see [`PrivateMessage::signed`]).
    ///
    /// # Errors
    /// [`LineError`] when [`parse_commands`] refuses `body`;
    /// [`LineError::AmbiguousSignature`] when it ends in two fields that
    /// would be read back as a signature; [`LineError::TooLongToSend`]
    /// when its envelope would exceed [`wire::MAX_SEND_LINE`].
    pub fn new(from: Nick, to: Nick, body: impl Into<String>) -> Result<Self, LineError> {
        let body = body.into();
        parse_commands(&body)?;
        if split_signature(&body).1.is_some() {
            return Err(LineError::AmbiguousSignature);
        }
        let message = Self {
            from,
            to,
            body,
            signature: None,
        };
        check_sendable(&message.to_envelope())?;
        Ok(message)
    }

    /// A private message with `signature` appended.
    ///
    /// # Errors
    /// [`LineError`] when [`parse_commands`] refuses `body`;
    /// [`LineError::TooLongToSend`] when its envelope would exceed
    /// [`wire::MAX_SEND_LINE`].
    pub fn signed(
        from: Nick,
        to: Nick,
        body: impl Into<String>,
        signature: PrivmsgSignature,
    ) -> Result<Self, LineError> {
        let body = body.into();
        parse_commands(&body)?;
        let message = Self {
            from,
            to,
            body,
            signature: Some(signature),
        };
        check_sendable(&message.to_envelope())?;
        Ok(message)
    }

    /// Parses a PRIVMSG payload, taking the last two fields as a
    /// [`PrivmsgSignature`] when they have its shape.
    ///
    /// # Errors
    /// [`LineError`] for a line over [`MAX_MESSAGE_LINE`], a sender or
    /// recipient that is not a nick ([`LineError::NotPrivate`] for
    /// `PUBLIC`), or a body [`parse_commands`] refuses.
    pub fn parse(line: &str) -> Result<Self, LineError> {
        let (from, to, rest) = split_line(line)?;
        if to == PUBLIC {
            return Err(LineError::NotPrivate);
        }
        let to = Nick::parse(to).map_err(|source| LineError::InvalidNick {
            field: "to",
            source,
        })?;
        let (body, signature) = split_signature(rest);
        parse_commands(body)?;
        Ok(Self {
            from,
            to,
            body: body.to_owned(),
            signature,
        })
    }

    /// The sender.
    pub fn from(&self) -> &Nick {
        &self.from
    }

    /// The recipient.
    pub fn to(&self) -> &Nick {
        &self.to
    }

    /// The commands as text, starting with `!`, without the signature.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The appended signature, if any (not verified).
    pub fn signature(&self) -> Option<&PrivmsgSignature> {
        self.signature.as_ref()
    }

    /// The commands of the body (the signature is not among their
    /// arguments).
    ///
    /// # Errors
    /// None for a message that was parsed or built (the body was checked);
    /// the `Result` is that of [`parse_commands`].
    pub fn commands(&self) -> Result<Vec<Command>, LineError> {
        parse_commands(&self.body)
    }

    /// `<from>!<to><body>[ <pubkey hex> <signature base64>]`.
    pub fn to_line(&self) -> String {
        let mut line = format!("{}{COMMAND_PREFIX}{}{}", self.from, self.to, self.body);
        if let Some(signature) = &self.signature {
            line.push(' ');
            line.push_str(&signature.to_string());
        }
        line
    }

    /// The PRIVMSG envelope.
    pub fn to_envelope(&self) -> Envelope {
        Envelope::new(wire::PRIVMSG, self.to_line())
    }
}

/// One PEERLIST entry: `nick;location`, with the disconnected flag (`;D`)
/// and the features (`;F:a+b`) current directories send.
///
/// The fields are public; [`PeerlistEntry::new`] and
/// [`PeerlistEntry::check`] check the features, which [`Self::to_entry`]
/// writes as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerlistEntry {
    /// The peer's nick.
    pub nick: Nick,
    /// Where it can be reached.
    pub location: Location,
    /// Whether the directory says it left (`;D`).
    pub disconnected: bool,
    /// Its features, in the order sent (empty: no `;F:` field).
    pub features: Vec<String>,
}

impl PeerlistEntry {
    /// An entry, its features checked.
    ///
    /// # Errors
    /// As [`PeerlistEntry::check`].
    pub fn new(
        nick: Nick,
        location: Location,
        disconnected: bool,
        features: Vec<String>,
    ) -> Result<Self, LineError> {
        let entry = Self {
            nick,
            location,
            disconnected,
            features,
        };
        entry.check()?;
        Ok(entry)
    }

    /// Checks that [`PeerlistEntry::parse`] reads [`Self::to_entry`] back.
    ///
    /// # Errors
    /// [`LineError::InvalidFeature`] for a name that is not `[a-z0-9_]+` of
    /// at most [`MAX_FEATURE_LEN`] bytes, [`LineError::DuplicateFeature`],
    /// [`LineError::TooManyFeatures`].
    pub fn check(&self) -> Result<(), LineError> {
        check_features(self.features.iter().map(String::as_str))?;
        Ok(())
    }

    /// Parses one entry.
    ///
    /// # Errors
    /// [`LineError`] for an entry over [`MAX_PEERLIST_ENTRY`], an invalid
    /// nick or location, a field other than `D` then `F:…`, or invalid
    /// features.
    pub fn parse(entry: &str) -> Result<Self, LineError> {
        check_text(entry, "peerlist entry", MAX_PEERLIST_ENTRY)?;
        let mut fields = entry.split(NICK_PEERLOCATOR_SEPARATOR);
        let nick = fields.next().unwrap_or_default();
        let location = fields.next().ok_or(LineError::MissingLocation)?;
        let nick = Nick::parse(nick).map_err(|source| LineError::InvalidNick {
            field: "peerlist",
            source,
        })?;
        let location = Location::parse(location).map_err(LineError::InvalidLocation)?;
        let mut disconnected = false;
        let mut features = None;
        for (index, field) in fields.enumerate() {
            let index = index + 2;
            if field == DISCONNECTED && !disconnected && features.is_none() {
                disconnected = true;
                continue;
            }
            match field.strip_prefix(FEATURES_PREFIX) {
                Some(names) if features.is_none() => {
                    features = Some(check_features(names.split(FEATURE_SEPARATOR))?);
                }
                _ => return Err(LineError::UnexpectedField { index }),
            }
        }
        Ok(Self {
            nick,
            location,
            disconnected,
            features: features.unwrap_or_default(),
        })
    }

    /// `nick;location[;D][;F:a+b]`.
    pub fn to_entry(&self) -> String {
        let mut entry = format!("{}{NICK_PEERLOCATOR_SEPARATOR}{}", self.nick, self.location);
        if self.disconnected {
            entry.push(NICK_PEERLOCATOR_SEPARATOR);
            entry.push_str(DISCONNECTED);
        }
        if !self.features.is_empty() {
            entry.push(NICK_PEERLOCATOR_SEPARATOR);
            entry.push_str(FEATURES_PREFIX);
            entry.push_str(&self.features.join(&FEATURE_SEPARATOR.to_string()));
        }
        entry
    }
}

/// Checks feature names: 1 to [`MAX_FEATURES`] of them, each `[a-z0-9_]+`
/// of at most [`MAX_FEATURE_LEN`] bytes, none twice.
fn check_features<'a>(names: impl Iterator<Item = &'a str>) -> Result<Vec<String>, LineError> {
    let mut features: Vec<String> = Vec::new();
    for name in names {
        if features.len() == MAX_FEATURES {
            return Err(LineError::TooManyFeatures {
                limit: MAX_FEATURES,
            });
        }
        if name.is_empty()
            || name.len() > MAX_FEATURE_LEN
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(LineError::InvalidFeature);
        }
        // At most 32 short names: a linear search is cheapest.
        if features.iter().any(|f| f == name) {
            return Err(LineError::DuplicateFeature);
        }
        features.push(name.to_owned());
    }
    Ok(features)
}

/// Parses a PEERLIST payload; `""` (joinmarket-ng's answer when it knows no
/// peer) is no entries.
///
/// # Errors
/// [`LineError`] for a payload over [`MAX_PEERLIST_PAYLOAD`], over
/// [`MAX_PEERLIST_ENTRIES`] entries, or with an empty or invalid entry
/// ([`LineError::Entry`] says which and why).
pub fn parse_peerlist(payload: &str) -> Result<Vec<PeerlistEntry>, LineError> {
    check_text(payload, "peerlist", MAX_PEERLIST_PAYLOAD)?;
    if payload.is_empty() {
        return Ok(Vec::new());
    }
    let mut entries = Vec::new();
    for (index, entry) in payload.split(ENTRY_SEPARATOR).enumerate() {
        if index == MAX_PEERLIST_ENTRIES {
            return Err(LineError::TooManyEntries {
                limit: MAX_PEERLIST_ENTRIES,
            });
        }
        if entry.is_empty() {
            return Err(LineError::EmptyEntry { index });
        }
        let parsed = PeerlistEntry::parse(entry).map_err(|source| LineError::Entry {
            index,
            source: Box::new(source),
        })?;
        entries.push(parsed);
    }
    Ok(entries)
}

/// The PEERLIST payload of `entries`, joined with `,`
/// ([`parse_peerlist`] reads it back when every entry passes
/// [`PeerlistEntry::check`] and there are at most
/// [`MAX_PEERLIST_ENTRIES`]).
pub fn peerlist_payload(entries: &[PeerlistEntry]) -> String {
    entries
        .iter()
        .map(PeerlistEntry::to_entry)
        .collect::<Vec<_>>()
        .join(&ENTRY_SEPARATOR.to_string())
}

/// The GETPEERLIST (791) request: an empty line, as joinmarket-ng sends
/// it (`jmcore/src/jmcore/directory_client.py`). The reference's directory
/// ignores it.
pub fn get_peerlist() -> Envelope {
    Envelope::new(wire::GET_PEERLIST, "")
}

#[cfg(test)]
mod tests {
    use dirpool_core::ServerAddr;

    use super::*;

    const MAKER: &str = "J5xhGSWE7VrxM7sO";
    const TAKER: &str = "J52bCDEFGHJKLMNO";
    const ONION: &str = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion:5222";
    /// Lower-case hex of a compressed key, as both Python senders write it.
    const PUBKEY: &str = "028254c329a92850f6d539dd376f4816ee2764517da5e0235514af433164480d7a";
    /// Base64 of a 70-byte DER signature (`30 44 02 20 … 02 20 …`).
    const SIG: &str = "MEQCIEVDSeQi8FKXGR6tE+IdPbUg5avvUgVeSWS4L7IT9ZOhAiAEOnGHdMVyvYolrb6xv81cAlauEc7Pn5w/kl0OUr6viQ==";
    /// A fidelity bond proof's shape: base64 of 128 bytes.
    const PROOF: &str = "wc2iY2KCi2kmZRIFK5fLNynjsFLkreR8Ch4zg97+c8fBzaJjYoKLaSZlEgUrl8s3KeOwUuSt5HwKHjOD3v5zx8HNomNigotpJmUSBSuXyzcp47BS5K3kfAoeM4Pe/nPHwc2iY2KCi2kmZRIFK5fLNynjsFLkreR8Ch4zg97+c8c=";

    fn nick(text: &str) -> Nick {
        Nick::parse(text).unwrap()
    }

    fn names(commands: &[Command]) -> Vec<&str> {
        commands.iter().map(Command::name).collect()
    }

    fn other_onion() -> String {
        ServerAddr::from_onion_key(&[7; 32], 5222)
            .node_id()
            .to_owned()
    }

    #[test]
    fn an_orderbook_request_as_every_implementation_sends_it() {
        // joinmarket-ng's directory_client.py and heartbeat.py, the
        // reference's request_orderbook through get_pubmsg.
        let line = format!("{MAKER}!PUBLIC!orderbook");
        let message = PublicMessage::parse(&line).unwrap();
        assert_eq!(message.from().as_str(), MAKER);
        assert_eq!(message.body(), "!orderbook");
        let commands = message.commands().unwrap();
        assert_eq!(names(&commands), ["orderbook"]);
        assert!(commands[0].args().is_empty());
        assert_eq!(message.to_line(), line);
        let envelope = message.to_envelope();
        assert_eq!(envelope, Envelope::new(wire::PUBMSG, line));
        assert_eq!(
            PublicMessage::new(nick(MAKER), "!orderbook").unwrap(),
            message
        );
    }

    #[test]
    fn public_offers_and_cancels() {
        // joinmarket-ng's _format_offer_announcement, one offer per message.
        let line = format!("{MAKER}!PUBLIC!sw0reloffer 0 27300 9000000 0 0.00002");
        let commands = PublicMessage::parse(&line).unwrap().commands().unwrap();
        assert_eq!(names(&commands), ["sw0reloffer"]);
        assert_eq!(
            commands[0].args(),
            ["0", "27300", "9000000", "0", "0.00002"]
        );
        // The reference's cancel_orders joins its commands with nothing.
        let line = format!("{MAKER}!PUBLIC!cancel 0!cancel 1");
        let commands = PublicMessage::parse(&line).unwrap().commands().unwrap();
        assert_eq!(names(&commands), ["cancel", "cancel"]);
        assert_eq!(commands[1].args(), ["1"]);
    }

    #[test]
    fn a_private_offer_reply_with_several_commands_a_bond_and_a_signature() {
        // The reference's announce_orders to one taker: offers joined with
        // nothing, then !tbond, then the signature prepare_privmsg appends.
        let body = format!(
            "!sw0reloffer 0 27300 9000000 0 0.00002!sw0absoffer 1 27300 9000000 0 250!tbond {PROOF}"
        );
        let line = format!("{MAKER}!{TAKER}{body} {PUBKEY} {SIG}");
        let message = PrivateMessage::parse(&line).unwrap();
        assert_eq!(message.from().as_str(), MAKER);
        assert_eq!(message.to().as_str(), TAKER);
        assert_eq!(message.body(), body);
        let commands = message.commands().unwrap();
        assert_eq!(names(&commands), ["sw0reloffer", "sw0absoffer", "tbond"]);
        assert_eq!(commands[1].args(), ["1", "27300", "9000000", "0", "250"]);
        assert_eq!(commands[2].args(), [PROOF]);
        let signature = message.signature().unwrap();
        assert_eq!(signature.to_string(), format!("{PUBKEY} {SIG}"));
        assert_eq!(signature.signature_base64(), SIG);
        assert_eq!(signature.public_key()[..2], [0x02, 0x82]);
        assert_eq!(message.to_line(), line);
        assert_eq!(message.to_envelope(), Envelope::new(wire::PRIVMSG, line));
        let built = PrivateMessage::signed(nick(MAKER), nick(TAKER), body, signature.clone());
        assert_eq!(built.unwrap(), message);
    }

    #[test]
    fn a_signed_fill_keeps_its_hex_arguments() {
        // joinmarket-ng's send_private_message: "<command> <data> <pubkey>
        // <sig>". The fill's 64-hex encryption key is not a signing key.
        let enc = "5fb2ab76ed9bda034b192c48c7069359252fccda168d925acc0ae7d316c0b53e";
        let line = format!("{TAKER}!{MAKER}!fill 0 1000000 {enc} P{enc} {PUBKEY} {SIG}");
        let message = PrivateMessage::parse(&line).unwrap();
        let commands = message.commands().unwrap();
        assert_eq!(
            commands[0].args(),
            ["0", "1000000", enc, &format!("P{enc}")]
        );
        assert!(message.signature().is_some());
        // Without the signature the same fields stay arguments.
        let unsigned = format!("{TAKER}!{MAKER}!fill 0 1000000 {enc} {PUBKEY}");
        let message = PrivateMessage::parse(&unsigned).unwrap();
        assert_eq!(message.signature(), None);
        assert_eq!(message.commands().unwrap()[0].args().len(), 4);
        assert_eq!(message.to_line(), unsigned);
    }

    #[test]
    fn the_signature_names_its_signer() {
        let signature = PrivmsgSignature::parse(PUBKEY, SIG).unwrap();
        let key = signature.public_key();
        assert_eq!(signature.nick(), Nick::from_public_key(key).unwrap());
        assert_eq!(PrivmsgSignature::new(*key, SIG).unwrap(), signature);
    }

    #[test]
    fn a_body_ending_like_a_signature_needs_one() {
        let body = format!("!error {PUBKEY} {SIG}");
        assert_eq!(
            PrivateMessage::new(nick(MAKER), nick(TAKER), body.clone()),
            Err(LineError::AmbiguousSignature)
        );
        let signature = PrivmsgSignature::parse(PUBKEY, SIG).unwrap();
        let signed = PrivateMessage::signed(nick(MAKER), nick(TAKER), body.clone(), signature);
        let signed = signed.unwrap();
        let again = PrivateMessage::parse(&signed.to_line()).unwrap();
        assert_eq!(again, signed);
        assert_eq!(again.body(), body);
    }

    #[test]
    fn signature_shapes() {
        // 8 and 72 bytes are the DER bounds; 7 and 73 are not signatures.
        assert!(PrivmsgSignature::parse(PUBKEY, "AAAAAAAAAAA=").is_ok());
        let max = "A".repeat(96);
        assert!(PrivmsgSignature::parse(PUBKEY, &max).is_ok());
        // Only the bits past the data must be zero: none without padding,
        // two with one pad.
        assert!(PrivmsgSignature::parse(PUBKEY, &format!("{}B", "A".repeat(95))).is_ok());
        assert!(PrivmsgSignature::parse(PUBKEY, "AAAAAAAAAAE=").is_ok());
        for bad in [
            "AAAAAAAAAA==",                     // 7 bytes
            &format!("{}AA==", "A".repeat(96)), // 73 bytes
            "AAAAAAAAAAB=",                     // unused bits set
            "AAAAAAAAAAA",                      // unpadded
            "AAAAAAAAAAAAA",                    // 13 characters: 9 bytes, but no multiple of 4
            "AAAAAAAAAA=A",                     // padding inside
            "AAAAAAAA====",                     // three pads
            "AAAAAAAAAA-_",                     // URL-safe alphabet
            "",
        ] {
            assert_eq!(
                PrivmsgSignature::parse(PUBKEY, bad),
                Err(LineError::InvalidSignature),
                "{bad:?}"
            );
        }
        let upper = PUBKEY.to_ascii_uppercase();
        for bad in [&PUBKEY[2..], &upper, &format!("04{}", &PUBKEY[2..])] {
            assert_eq!(
                PrivmsgSignature::parse(bad, SIG),
                Err(LineError::InvalidPublicKey),
                "{bad:?}"
            );
        }
        assert_eq!(
            PrivmsgSignature::new([4; 33], SIG),
            Err(LineError::InvalidPublicKey)
        );
        // Debug shows what Display shows (a signature is public).
        let parsed = PrivmsgSignature::parse(PUBKEY, SIG).unwrap();
        assert_eq!(
            format!("{parsed:?}"),
            format!("PrivmsgSignature({PUBKEY} {SIG})")
        );
    }

    #[test]
    fn message_line_errors() {
        // Each body error, in a public and in a private message.
        let cases = [
            ("!", LineError::EmptyCommandName { index: 0 }),
            ("!!x", LineError::EmptyCommandName { index: 0 }),
            ("!a-b", LineError::InvalidCommandName { index: 0 }),
            ("!a\tb", LineError::ControlCharacter { pos: 2 }),
            ("!a  b", LineError::EmptyArgument { index: 0 }),
            ("!a b ", LineError::EmptyArgument { index: 0 }),
            ("!a b !c", LineError::EmptyArgument { index: 0 }),
        ];
        for (body, error) in cases {
            for to in ["PUBLIC", TAKER] {
                let line = format!("{MAKER}!{to}{body}");
                // A control character is reported at its place in the line.
                let expected = match &error {
                    LineError::ControlCharacter { pos } => LineError::ControlCharacter {
                        pos: line.len() - body.len() + pos,
                    },
                    other => other.clone(),
                };
                let parsed = if to == "PUBLIC" {
                    PublicMessage::parse(&line).map(|_| ())
                } else {
                    PrivateMessage::parse(&line).map(|_| ())
                };
                assert_eq!(parsed, Err(expected), "{line:?}");
            }
        }
        assert_eq!(
            PublicMessage::parse(MAKER),
            Err(LineError::MissingField("recipient"))
        );
        assert_eq!(
            PrivateMessage::parse(&format!("{MAKER}!{TAKER}")),
            Err(LineError::MissingField("body"))
        );
        assert_eq!(
            PublicMessage::parse(&format!("{MAKER}!{TAKER}!orderbook")),
            Err(LineError::NotPublic)
        );
        assert_eq!(
            PublicMessage::parse(&format!("{MAKER}!PUBLICx!orderbook")),
            Err(LineError::NotPublic)
        );
        assert_eq!(
            PrivateMessage::parse(&format!("{MAKER}!PUBLIC!orderbook")),
            Err(LineError::NotPrivate)
        );
        assert_eq!(
            PublicMessage::parse("J5short!PUBLIC!orderbook"),
            Err(LineError::InvalidNick {
                field: "from",
                source: NickError::WrongLength(7)
            })
        );
        assert_eq!(
            PrivateMessage::parse(&format!("{MAKER}!K5xhGSWE7VrxM7sO!orderbook")),
            Err(LineError::InvalidNick {
                field: "to",
                source: NickError::WrongPrefix
            })
        );
        let long = format!("{MAKER}!PUBLIC!a {}", "x".repeat(MAX_MESSAGE_LINE));
        assert_eq!(
            PublicMessage::parse(&long),
            Err(LineError::TooLong {
                what: "message line",
                len: long.len(),
                limit: MAX_MESSAGE_LINE
            })
        );
    }

    #[test]
    fn command_errors_and_limits() {
        assert_eq!(parse_commands("orderbook"), Err(LineError::NoCommand));
        assert_eq!(parse_commands(""), Err(LineError::NoCommand));
        assert_eq!(
            parse_commands("!a!b c!"),
            Err(LineError::EmptyCommandName { index: 2 })
        );
        let name = "a".repeat(MAX_COMMAND_NAME);
        assert!(parse_commands(&format!("!{name}")).is_ok());
        assert_eq!(
            parse_commands(&format!("!{name}a")),
            Err(LineError::InvalidCommandName { index: 0 })
        );
        assert_eq!(
            parse_commands("!a!é"),
            Err(LineError::InvalidCommandName { index: 1 })
        );
        assert_eq!(
            parse_commands("!a b\u{7f}"),
            Err(LineError::ControlCharacter { pos: 4 })
        );
        let most = "!a".repeat(MAX_COMMANDS);
        assert_eq!(parse_commands(&most).unwrap().len(), MAX_COMMANDS);
        assert_eq!(
            parse_commands(&format!("{most}!a")),
            Err(LineError::TooManyCommands {
                limit: MAX_COMMANDS
            })
        );
        let most = format!("!a{}", " x".repeat(MAX_ARGS));
        assert_eq!(parse_commands(&most).unwrap()[0].args().len(), MAX_ARGS);
        assert_eq!(
            parse_commands(&format!("!b!c{}", " x".repeat(MAX_ARGS + 1))),
            Err(LineError::TooManyArguments {
                index: 1,
                limit: MAX_ARGS
            })
        );
        // Arguments may hold anything but spaces, '!' and controls.
        let commands = parse_commands("!error bad \"input\" ünïcode\\").unwrap();
        assert_eq!(commands[0].args(), ["bad", "\"input\"", "ünïcode\\"]);
    }

    #[test]
    fn commands_build_what_they_parse() {
        let commands = vec![
            Command::new("sw0reloffer", ["0", "27300", "9000000", "0", "0.00002"]).unwrap(),
            Command::new("tbond", [PROOF]).unwrap(),
            Command::new("orderbook", Vec::<String>::new()).unwrap(),
        ];
        let body = commands_body(&commands);
        assert_eq!(
            body,
            format!("!sw0reloffer 0 27300 9000000 0 0.00002!tbond {PROOF}!orderbook")
        );
        assert_eq!(parse_commands(&body).unwrap(), commands);
        assert_eq!(commands[1].to_string(), format!("!tbond {PROOF}"));

        assert_eq!(
            Command::new("", ["x"]),
            Err(LineError::EmptyCommandName { index: 0 })
        );
        assert_eq!(
            Command::new("a b", ["x"]),
            Err(LineError::InvalidCommandName { index: 0 })
        );
        assert_eq!(
            Command::new("a", ["x", ""]),
            Err(LineError::EmptyArgument { index: 0 })
        );
        assert_eq!(Command::new("a", ["x y"]), Err(LineError::InvalidArgument));
        assert_eq!(Command::new("a", ["x!y"]), Err(LineError::InvalidArgument));
        assert_eq!(
            Command::new("a", ["x\ry"]),
            Err(LineError::ControlCharacter { pos: 1 })
        );
        assert_eq!(
            Command::new("a", vec!["x"; MAX_ARGS + 1]),
            Err(LineError::TooManyArguments {
                index: 0,
                limit: MAX_ARGS
            })
        );
    }

    #[test]
    fn builders_refuse_what_does_not_fit_a_line() {
        let overhead = Envelope::new(wire::PUBMSG, format!("{MAKER}!PUBLIC!a "))
            .encode()
            .unwrap()
            .len();
        let fits = format!("!a {}", "x".repeat(wire::MAX_SEND_LINE - overhead));
        let message = PublicMessage::new(nick(MAKER), fits).unwrap();
        assert_eq!(
            message.to_envelope().encode().unwrap().len(),
            wire::MAX_SEND_LINE
        );
        // '"' takes two bytes in JSON: one more is over.
        let over = format!("!a \"{}", "x".repeat(wire::MAX_SEND_LINE - overhead - 1));
        assert_eq!(
            PublicMessage::new(nick(MAKER), over),
            Err(LineError::TooLongToSend {
                len: wire::MAX_SEND_LINE + 1,
                limit: wire::MAX_SEND_LINE
            })
        );
        let long = format!("!a {}", "x".repeat(wire::MAX_SEND_LINE));
        assert!(matches!(
            PrivateMessage::new(nick(MAKER), nick(TAKER), long.clone()),
            Err(LineError::TooLongToSend { .. })
        ));
        let signature = PrivmsgSignature::parse(PUBKEY, SIG).unwrap();
        assert!(matches!(
            PrivateMessage::signed(nick(MAKER), nick(TAKER), long, signature),
            Err(LineError::TooLongToSend { .. })
        ));
        // A parsed message over the send limit is still read.
        let line = format!("{MAKER}!PUBLIC!a {}", "x".repeat(wire::MAX_SEND_LINE));
        assert!(PublicMessage::parse(&line).is_ok());
        assert_eq!(
            PublicMessage::new(nick(MAKER), "x"),
            Err(LineError::NoCommand)
        );
    }

    #[test]
    fn peerlists_as_current_directories_send_them() {
        let onion = other_onion();
        // joinmarket-rs answering a peer with peerlist_features: itself
        // first, features joined with '+' in its order.
        let payload =
            format!("{TAKER};{onion};F:peerlist_features+ping,{MAKER};{ONION};F:neutrino_compat");
        let entries = parse_peerlist(&payload).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].nick.as_str(), TAKER);
        assert_eq!(entries[0].location.to_string(), onion);
        assert!(!entries[0].disconnected);
        assert_eq!(entries[0].features, ["peerlist_features", "ping"]);
        assert_eq!(entries[1].features, ["neutrino_compat"]);
        assert_eq!(peerlist_payload(&entries), payload);

        // The reference's (and joinmarket-rs's) disconnect notice.
        let payload = format!("{MAKER};{ONION};D,{TAKER};{onion}");
        let entries = parse_peerlist(&payload).unwrap();
        assert!(entries[0].disconnected);
        assert!(entries[0].features.is_empty());
        assert!(!entries[1].disconnected);
        assert_eq!(peerlist_payload(&entries), payload);

        // joinmarket-ng's create_peerlist_entry with both fields.
        let entry = format!("{MAKER};{ONION};D;F:ping");
        let parsed = PeerlistEntry::parse(&entry).unwrap();
        assert!(parsed.disconnected);
        assert_eq!(parsed.features, ["ping"]);
        assert_eq!(parsed.to_entry(), entry);

        // A taker's location, and joinmarket-ng's empty answer.
        let entry = PeerlistEntry::parse(&format!("{TAKER};NOT-SERVING-ONION")).unwrap();
        assert_eq!(entry.location, Location::NotServing);
        assert_eq!(parse_peerlist(""), Ok(Vec::new()));
        assert_eq!(peerlist_payload(&[]), "");
    }

    #[test]
    fn peerlist_entries_build_what_they_parse() {
        let entry = PeerlistEntry::new(
            nick(MAKER),
            Location::parse(ONION).unwrap(),
            true,
            vec!["ping".to_owned(), "nick_auth".to_owned()],
        )
        .unwrap();
        assert_eq!(
            entry.to_entry(),
            format!("{MAKER};{ONION};D;F:ping+nick_auth")
        );
        assert_eq!(PeerlistEntry::parse(&entry.to_entry()), Ok(entry.clone()));
        let entries = vec![entry.clone(), entry];
        assert_eq!(parse_peerlist(&peerlist_payload(&entries)), Ok(entries));
        let location = Location::parse(ONION).unwrap();
        for (features, error) in [
            (vec![""], LineError::InvalidFeature),
            (vec!["a+b"], LineError::InvalidFeature),
            (vec!["Ping"], LineError::InvalidFeature),
            (vec!["ping", "ping"], LineError::DuplicateFeature),
        ] {
            let features = features.into_iter().map(str::to_owned).collect();
            assert_eq!(
                PeerlistEntry::new(nick(MAKER), location.clone(), false, features),
                Err(error)
            );
        }
    }

    #[test]
    fn peerlist_errors() {
        let ok = format!("{MAKER};{ONION}");
        let entry_error = |index, error| LineError::Entry {
            index,
            source: Box::new(error),
        };
        assert_eq!(parse_peerlist(","), Err(LineError::EmptyEntry { index: 0 }));
        assert_eq!(
            parse_peerlist(&format!("{ok},,{ok}")),
            Err(LineError::EmptyEntry { index: 1 })
        );
        assert_eq!(
            parse_peerlist(&format!("{ok},")),
            Err(LineError::EmptyEntry { index: 1 })
        );
        assert_eq!(
            parse_peerlist(&format!("{ok},{MAKER}")),
            Err(entry_error(1, LineError::MissingLocation))
        );
        // joinmarket-ng skips this "metadata"; we refuse it.
        assert_eq!(
            parse_peerlist("peerlist_features"),
            Err(entry_error(0, LineError::MissingLocation))
        );
        assert!(matches!(
            PeerlistEntry::parse(&format!("{MAKER};nowhere:x")),
            Err(LineError::InvalidLocation(_))
        ));
        assert!(matches!(
            PeerlistEntry::parse(&format!("{MAKER};")),
            Err(LineError::InvalidLocation(LocationError::Addr(
                dirpool_core::AddrError::Empty
            )))
        ));
        // joinmarket-ng's `PeerInfo` pattern and joinmarket-rs's
        // `OnionServiceAddr::parse` take v3 onions only.
        assert_eq!(
            PeerlistEntry::parse(&format!("{MAKER};127.0.0.1:5222")),
            Err(LineError::InvalidLocation(LocationError::NotOnion))
        );
        assert_eq!(
            PeerlistEntry::parse(&format!("J5;{ONION}")),
            Err(LineError::InvalidNick {
                field: "peerlist",
                source: NickError::WrongLength(2)
            })
        );
        for (suffix, index) in [
            (";X", 2),
            (";D;D", 3),
            (";F:ping;D", 3),
            (";F:ping;F:ping", 3),
            (";d", 2),
            (";", 2),
        ] {
            assert_eq!(
                PeerlistEntry::parse(&format!("{ok}{suffix}")),
                Err(LineError::UnexpectedField { index }),
                "{suffix:?}"
            );
        }
        for suffix in [
            ";F:", ";F:ping+", ";F:+ping", ";F:a++b", ";F:Ping", ";F:a-b",
        ] {
            assert_eq!(
                PeerlistEntry::parse(&format!("{ok}{suffix}")),
                Err(LineError::InvalidFeature),
                "{suffix:?}"
            );
        }
        let long_name = "a".repeat(MAX_FEATURE_LEN);
        assert!(PeerlistEntry::parse(&format!("{ok};F:{long_name}")).is_ok());
        assert_eq!(
            PeerlistEntry::parse(&format!("{ok};F:{long_name}a")),
            Err(LineError::InvalidFeature)
        );
        assert_eq!(
            PeerlistEntry::parse(&format!("{ok};F:ping+a+ping")),
            Err(LineError::DuplicateFeature)
        );
        let many: Vec<String> = (0..=MAX_FEATURES).map(|i| format!("f{i}")).collect();
        assert_eq!(
            PeerlistEntry::parse(&format!("{ok};F:{}", many[..MAX_FEATURES].join("+")))
                .unwrap()
                .features
                .len(),
            MAX_FEATURES
        );
        assert_eq!(
            PeerlistEntry::parse(&format!("{ok};F:{}", many.join("+"))),
            Err(LineError::TooManyFeatures {
                limit: MAX_FEATURES
            })
        );
        assert_eq!(
            parse_peerlist(&format!("{ok}\n")),
            Err(LineError::ControlCharacter { pos: ok.len() })
        );
        let long = "x".repeat(MAX_PEERLIST_ENTRY + 1);
        assert_eq!(
            PeerlistEntry::parse(&long),
            Err(LineError::TooLong {
                what: "peerlist entry",
                len: long.len(),
                limit: MAX_PEERLIST_ENTRY
            })
        );
        let long = "x".repeat(MAX_PEERLIST_PAYLOAD + 1);
        assert!(matches!(
            parse_peerlist(&long),
            Err(LineError::TooLong {
                what: "peerlist",
                ..
            })
        ));
    }

    #[test]
    fn a_peerlist_holds_at_most_its_entry_cap() {
        let entry = format!("{MAKER};{ONION}");
        let most = vec![entry.as_str(); MAX_PEERLIST_ENTRIES].join(",");
        assert!(most.len() <= MAX_PEERLIST_PAYLOAD);
        assert_eq!(parse_peerlist(&most).unwrap().len(), MAX_PEERLIST_ENTRIES);
        let over = format!("{most},{entry}");
        assert!(over.len() <= MAX_PEERLIST_PAYLOAD);
        assert_eq!(
            parse_peerlist(&over),
            Err(LineError::TooManyEntries {
                limit: MAX_PEERLIST_ENTRIES
            })
        );
    }

    #[test]
    fn the_longest_checked_entry_fits_the_entry_cap() {
        let features: Vec<String> = (0..MAX_FEATURES)
            .map(|i| format!("{i:0width$}", width = MAX_FEATURE_LEN))
            .collect();
        let onion = ServerAddr::from_onion_key(&[9; 32], 65535);
        let location = Location::parse(onion.node_id()).unwrap();
        let entry = PeerlistEntry::new(nick(MAKER), location, true, features).unwrap();
        let text = entry.to_entry();
        assert!(text.len() <= MAX_PEERLIST_ENTRY, "{}", text.len());
        assert_eq!(PeerlistEntry::parse(&text), Ok(entry));
    }

    /// joinmarket-rs `crates/joinmarket-dn/src/router.rs`
    /// (`MAX_MAKERS_BEFORE_SAMPLE = 20_000`, plus its own entry) and
    /// `crates/joinmarket-core/src/handshake.rs` (32 features of at most
    /// 64 bytes each, relayed in `F:` by `peer.rs`,
    /// `append_peerlist_entry`): its largest PEERLIST parses, and its
    /// envelope fits the default line limit.
    /// The `i`th of distinct entries as long as an entry can be: a 5-digit
    /// port, `;D`, and every feature at its longest.
    fn longest_entry(i: u32) -> PeerlistEntry {
        let features: Vec<String> = (0..MAX_FEATURES)
            .map(|i| format!("{i:0width$}", width = MAX_FEATURE_LEN))
            .collect();
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        let onion = ServerAddr::from_onion_key(&key, 65535);
        let location = Location::parse(onion.node_id()).unwrap();
        PeerlistEntry::new(nick(MAKER), location, true, features).unwrap()
    }

    /// The bounds from two of the longest entries. The next test builds
    /// and reads the largest list itself, which takes 24 s unoptimised:
    /// `scripts/mutants --adapters` skips it, and this one keeps its
    /// constants checked there.
    #[test]
    fn the_peerlist_bounds_are_those_of_its_longest_entries() {
        assert_eq!(longest_entry(0).to_entry().len(), MAX_PEERLIST_ENTRY);
        let one = peerlist_payload(&[longest_entry(0)]).len();
        let two = peerlist_payload(&[longest_entry(0), longest_entry(1)]).len();
        let separator = two - 2 * one;
        assert_eq!(separator, 1);
        assert_eq!(
            MAX_PEERLIST_PAYLOAD,
            MAX_PEERLIST_ENTRIES * one + (MAX_PEERLIST_ENTRIES - 1) * separator
        );
    }

    #[test]
    fn the_largest_peerlist_of_joinmarket_rs_is_read() {
        assert_eq!(longest_entry(0).to_entry().len(), MAX_PEERLIST_ENTRY);
        let entries: Vec<PeerlistEntry> = (0..u32::try_from(MAX_PEERLIST_ENTRIES).unwrap())
            .map(longest_entry)
            .collect();
        let payload = peerlist_payload(&entries);
        assert_eq!(payload.len(), MAX_PEERLIST_PAYLOAD);
        let line = Envelope::new(wire::PEERLIST, payload.as_str());
        let encoded = serde_json::json!({"type": line.kind, "line": line.line}).to_string();
        assert!(
            encoded.len() <= crate::joinmarket::MAX_MAX_LINE,
            "{}",
            encoded.len()
        );
        assert_eq!(
            parse_peerlist(&payload).unwrap().len(),
            MAX_PEERLIST_ENTRIES
        );
    }

    #[test]
    fn getpeerlist_is_an_empty_791() {
        let request = get_peerlist();
        assert_eq!(request, Envelope::new(wire::GET_PEERLIST, ""));
        assert_eq!(
            request.encode().unwrap(),
            b"{\"line\":\"\",\"type\":791}\r\n".to_vec()
        );
    }

    #[test]
    fn errors_say_where() {
        let error = parse_peerlist(&format!("{MAKER};{ONION},{MAKER}")).unwrap_err();
        let source = std::error::Error::source(&error).unwrap();
        assert_eq!(error.to_string(), "peerlist entry 1");
        assert_eq!(source.to_string(), "a peerlist entry is nick;location");
    }
}
