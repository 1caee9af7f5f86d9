//! Messages across every directory of a pool: one merged inbound queue,
//! public broadcasts, and private messages routed by where a nick was seen.
//!
//! [`Messaging`] sits on a [`DirectoryPool<JoinMarketHandshake>`]. A
//! background task on the pool's [`Runtime`] follows the links as they
//! connect (the pool's [`events`](DirectoryPool::events) and
//! [`clients`](DirectoryPool::clients)) and takes every message each link
//! keeps, whether or not anyone reads the merged queue, so routes are
//! learned and no link's queue fills because the user is slow. Each message
//! is typed with the [lines](super::lines) API and delivered once, tagged
//! with the directory it came from ([`Incoming`]).
//!
//! ```no_run
//! use dirpool::joinmarket::{
//!     JmConfig, JoinMarketHandshake, Message, Messaging, MessagingConfig, Network, NickIdentity,
//! };
//! use std::sync::Arc;
//! use dirpool::{Config, DirectoryPool};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! smol::block_on(async {
//!     let identity = Arc::new(NickIdentity::random()?);
//!     let handshake = JoinMarketHandshake::new(JmConfig::new(identity.clone(), Network::Signet))?;
//!     let config = Config::new(["duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion"]);
//!     let pool = DirectoryPool::builder(config, handshake).spawn_smol()?;
//!     let messaging = Messaging::new(&pool, MessagingConfig::new(identity))?;
//!     pool.connect_all_parallel().await?;
//!     for outcome in messaging.broadcast("!orderbook").await? {
//!         if let Err(failure) = &outcome.result {
//!             eprintln!("{}: {failure}", outcome.directory);
//!         }
//!     }
//!     let incoming = messaging.recv().await?;
//!     match &incoming.message {
//!         // Answered with a signed private message.
//!         Message::Public(offer) => {
//!             messaging.send_to(offer.from(), "!fill 0 100000 03abcd").await?;
//!         }
//!         // Its signature proves `sender()` wrote it.
//!         Message::Private(answer) => println!("{}: {}", answer.sender(), answer.message().body()),
//!         _ => {}
//!     }
//!     Ok(())
//! })
//! # }
//! ```
//!
//! # The merged queue
//!
//! Bounded in bytes ([`MessagingConfig::inbound_bytes`]; each message
//! counts [`ITEM_OVERHEAD`] plus three times its line, an upper estimate of
//! its typed form, and each peer-list entry its own size). A message that
//! does not fit is dropped and counted; so are the messages a link dropped
//! because its own queue was full. [`Messaging::recv`] reports the sum as
//! [`RecvError::Lagged`] before the next message: loss is never silent.
//!
//! # De-duplication of relayed messages
//!
//! An author sends a public message to every directory it is connected to,
//! and each relays it unchanged (joinmarket-ng
//! `directory_server/message_router.py::_handle_public_message` forwards the
//! envelope's bytes; the reference `src/jmdaemon/onionmc.py::_pubmsg` sends
//! to every directory in one go), so with N shared directories every public
//! message arrives N times. Private messages too: joinmarket-ng's maker
//! sends its offers and its answers to a taker through every directory it
//! is connected to (`maker/protocol_handlers.py::_send_offers_to_taker` and
//! `_send_response` loop over `directory_clients`), and the copies are
//! byte for byte the same (the signature covers the body and the fixed
//! onion host id, not the directory). We remember, per message (a 128-bit
//! keyed hash of its whole line, the signature included), how many copies each directory
//! delivered, and deliver a copy only when one directory has delivered more
//! copies than we delivered so far. So three directories relaying one
//! message give one delivery, and a message its author really sent twice
//! (say `!orderbook` again) is delivered twice, in any interleaving.
//!
//! The memory is bounded twice:
//! * in time, by [`MessagingConfig::dedup_window`] (30 s by default, what
//!   joinmarket-ng's `jmcore/deduplication.py::MessageDeduplicator` uses):
//!   the copies of one send arrive within the spread of the Tor circuit
//!   latencies of the directories, a few seconds; after the window the same
//!   line is a new message;
//! * in entries, by [`MessagingConfig::dedup_entries`] (8,192 by default:
//!   more than 270 distinct public messages a second, sustained over the
//!   window; each about 200 bytes with the hash table's spare room, plus
//!   8 per directory that relayed it: about 2 MiB with ten directories).
//!   When full, the oldest entry is forgotten early
//!   (counted in [`MessagingStats::dedup_evicted_early`]): a late relay of
//!   it is then delivered again. Forgetting early can only duplicate a
//!   message, never lose one.
//!
//! # Signed private messages
//!
//! [`Messaging::send_to`] signs every private message with
//! [`MessagingConfig::identity`], as joinmarket-ng and the reference do.
//! Every private message received is checked the same way before anyone
//! sees it: to a nick other than ours, it is dropped and counted
//! ([`MessagingStats::misaddressed`]); with a signature by the key its
//! sender's nick derives from, it is a [`Message::Private`] holding a
//! [`VerifiedPrivateMessage`]; otherwise a [`Message::Unverified`] with the
//! reason (joinmarket-ng's maker and taker drop those; we show them,
//! marked, and learn no route from them). The check (one ECDSA
//! verification, tens of microseconds) runs on the background task, outside
//! the queue's lock.
//!
//! # Routes for private messages
//!
//! What the implementations do for a private message to a peer we have no
//! direct connection with:
//! * the reference (`src/jmdaemon/onionmc.py`): `receive_msg` records, for
//!   every public or private message from a nick, the directory it came
//!   through (`active_directories[nick][directory] = True`); a peer-list
//!   entry `nick;location;D` from a directory marks that pair gone
//!   (`on_nick_leave_directory`); a directory's disconnection marks all its
//!   pairs gone and its reconnection marks them back (`update_directory_map`).
//!   Peer-list entries without `D` only add peers to connect to; they are
//!   not routes. `_privmsg` then sends through one directory picked at
//!   random among those marked present (`get_directory_for_nick`); with
//!   none it logs a warning and sends nothing.
//! * joinmarket-ng (`taker/src/taker/multi_directory.py::send_privmsg`):
//!   directories tracked as carrying the nick (from peer lists), else those
//!   whose peer list lists it, else every connected directory; shuffled,
//!   sent through the first that accepts, strictly one.
//!
//! What we do: a route is a (nick, directory) pair learned from a peer-list
//! entry without the disconnected flag (as ng) or from any public or
//! verified private message from that nick (as the reference); an entry with the
//! flag removes the pair. [`Messaging::send_to`] tries the routes most
//! recently learned first, one directory at a time, until one takes the
//! line, so exactly one directory relays it. A route through a directory
//! that is not connected now is skipped (and kept: the reference marks it
//! back when the directory returns). With no route we send nothing and
//! return [`SendToError::NoRoute`], as the reference does; ng's last resort
//! (every connected directory) is [`RouteFallback::AnyDirectory`].
//!
//! The table holds at most [`MessagingConfig::route_nicks`] nicks (4,096 by
//! default), each with at most one route per configured directory (about
//! 250 bytes a nick plus 32 a route: about 2.3 MiB with ten directories
//! for every nick); when full, the nick whose routes were learned least recently is forgotten
//! (counted in [`MessagingStats::route_evictions`]).
//!
//! A route says where a nick was seen, not that the directory will deliver:
//! a directory relays a private message only to a nick connected to it now,
//! and drops it silently otherwise (ng `_handle_private_message`: "Target
//! peer not found"). A nick claimed in a message through the reference
//! directory is not checked by it, so a route learned from a message is as
//! good as the directory's check (ng and rs drop messages whose from-nick is
//! not the link's).
//!
//! # Deadlines
//!
//! The link's `write_timeout` bounds each write once the link task starts
//! it, but [`DirectoryConnection::send`] waits, without a deadline of its
//! own, for room in the outbound queue, which a directory that reads slowly
//! but steadily can keep full for long. So every send here also has its own
//! deadline, [`MessagingConfig::send_timeout`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use dirpool_core::ServerAddr;
use futures::channel::oneshot;
use futures::future::{BoxFuture, FutureExt, join_all};
use futures::stream::{FuturesUnordered, StreamExt};

use super::lines::{
    LineError, PeerlistEntry, PrivateMessage, PublicMessage, get_peerlist, parse_peerlist,
};
use super::{
    DirectoryConnection, Envelope, JmConfigError, JmError, JoinMarketHandshake, MAX_QUEUE_BYTES,
    Nick, NickIdentity, NickKeyError, RecvError, SignatureError, VerifiedPrivateMessage, Wakers,
    check_sender, check_size, check_timeout, wire,
};
use crate::pool::DirectoryPool;
use crate::runtime::{Runtime, before};

/// What each message in the merged queue counts against
/// [`MessagingConfig::inbound_bytes`] on top of three times its line: its
/// slot in the queue (never more than four slots per message kept, plus 64
/// when nearly empty).
pub const ITEM_OVERHEAD: usize = 4 * std::mem::size_of::<(Incoming, usize)>();
/// The smallest [`MessagingConfig::inbound_bytes`]: the longest line a
/// current directory relays (joinmarket-ng's `max_line_length`, 65,536
/// bytes) must fit, counted as the queue counts it.
pub const MIN_INBOUND_BYTES: usize = 256 * 1024;
/// The largest [`MessagingConfig::dedup_entries`] or
/// [`MessagingConfig::route_nicks`].
pub const MAX_TABLE_ENTRIES: usize = 1 << 20;

/// Where a private message goes when no route to its nick is known.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteFallback {
    /// Nowhere: [`SendToError::NoRoute`] (the reference's behaviour).
    #[default]
    None,
    /// Every connected directory not tried yet, one at a time, in the
    /// pool's server order (joinmarket-ng's last resort).
    AnyDirectory,
}

/// How [`Messaging`] behaves, and its bounds.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagingConfig {
    /// Our identity: its nick is the `<from>` of what we send, and it signs
    /// our private messages. Its nick must be the nick the handshake
    /// presents, or directories drop our messages (joinmarket-ng
    /// `message_router.py` drops a message whose from-nick is not the
    /// link's; so does joinmarket-rs).
    pub identity: Arc<NickIdentity>,
    /// Bytes of messages kept in the merged queue (see [`ITEM_OVERHEAD`]).
    /// In [[`MIN_INBOUND_BYTES`], [`MAX_QUEUE_BYTES`]].
    pub inbound_bytes: usize,
    /// How long a public message is remembered for de-duplication.
    /// Non-zero, at most [`MAX_TIMEOUT`](super::MAX_TIMEOUT).
    pub dedup_window: Duration,
    /// How many public messages are remembered at most. In [1,
    /// [`MAX_TABLE_ENTRIES`]].
    pub dedup_entries: usize,
    /// How many nicks the route table holds at most. In [1,
    /// [`MAX_TABLE_ENTRIES`]].
    pub route_nicks: usize,
    /// Deadline of each send to one directory (queueing the line on its
    /// link). Non-zero, at most [`MAX_TIMEOUT`](super::MAX_TIMEOUT).
    pub send_timeout: Duration,
    /// Where a private message goes when no route is known.
    pub fallback: RouteFallback,
}

impl MessagingConfig {
    /// Every default for `identity`: a 16 MiB merged queue (room for one
    /// of joinmarket-rs's one-line peer lists of 20,000 makers, charged
    /// parsed), a 30 s window of at most 8,192 public messages, 4,096 nicks
    /// of routes, 30 s per send, no fallback.
    pub fn new(identity: impl Into<Arc<NickIdentity>>) -> Self {
        Self {
            identity: identity.into(),
            inbound_bytes: 16 * 1024 * 1024,
            dedup_window: Duration::from_secs(30),
            dedup_entries: 8192,
            route_nicks: 4096,
            send_timeout: Duration::from_secs(30),
            fallback: RouteFallback::None,
        }
    }

    /// Our nick (the identity's).
    pub fn nick(&self) -> &Nick {
        self.identity.nick()
    }

    /// Checks every bound.
    ///
    /// # Errors
    /// [`JmConfigError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), JmConfigError> {
        check_size(
            "inbound_bytes",
            self.inbound_bytes,
            MIN_INBOUND_BYTES,
            MAX_QUEUE_BYTES,
        )?;
        check_size("dedup_entries", self.dedup_entries, 1, MAX_TABLE_ENTRIES)?;
        check_size("route_nicks", self.route_nicks, 1, MAX_TABLE_ENTRIES)?;
        check_timeout("dedup_window", self.dedup_window)?;
        check_timeout("send_timeout", self.send_timeout)?;
        Ok(())
    }
}

/// One message from the merged queue, and the directory it came through.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The directory, as the pool names it ([`DirectoryPool::servers`]).
    pub directory: Arc<ServerAddr>,
    /// The message.
    pub message: Message,
}

/// A message from a directory, typed.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum Message {
    /// A public message (PUBMSG 687), delivered once however many
    /// directories relayed it.
    Public(PublicMessage),
    /// A private message to us (PRIVMSG 685) whose signature proves its
    /// sender holds the key its nick derives from; delivered once however
    /// many directories relayed it.
    Private(VerifiedPrivateMessage),
    /// A private message to us whose signature is missing or does not
    /// verify. joinmarket-ng's maker and taker drop these
    /// (`maker/protocol_handlers.py`, `taker/multi_directory.py`:
    /// "Dropping unverified message"); we hand them over, marked, so the
    /// failure is seen, and learn no route from them. Never act on one as
    /// if it came from its `from` nick.
    Unverified {
        /// As parsed.
        message: PrivateMessage,
        /// Why it does not verify.
        error: SignatureError,
    },
    /// A peer list (PEERLIST 789): one chunk of the directory's peers, or
    /// an update (joins, and leaves with the disconnected flag).
    Peerlist(Vec<PeerlistEntry>),
    /// A PUBMSG, PRIVMSG or PEERLIST whose line is malformed.
    Malformed {
        /// As received.
        envelope: Envelope,
        /// What is wrong with it.
        error: LineError,
    },
    /// Any other message type (PINGs, PONGs and DISCONNECT never reach
    /// here: the link handles them).
    Other(Envelope),
}

/// How a route was learned.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSource {
    /// A peer-list entry without the disconnected flag.
    Peerlist,
    /// A public or private message from the nick.
    Message,
}

/// A directory through which a nick was last seen.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The directory.
    pub directory: Arc<ServerAddr>,
    /// When it was last learned (the pool runtime's clock).
    pub learned_at: Instant,
    /// From what.
    pub source: RouteSource,
}

/// Why one directory did not take a line.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SendFailure {
    /// The directory is not connected now.
    #[error("not connected")]
    NotConnected,
    /// The link refused the line (it has ended: [`JmError::Closed`]).
    #[error("the link refused the line")]
    Link(#[source] JmError),
    /// The link's outbound queue had no room for the line within
    /// [`MessagingConfig::send_timeout`]; nothing of it was queued.
    #[error("no room in the outbound queue within {0:?}")]
    TimedOut(Duration),
}

/// What became of a line sent to one directory.
#[non_exhaustive]
#[derive(Debug)]
pub struct DirectoryOutcome {
    /// The directory.
    pub directory: Arc<ServerAddr>,
    /// Queued on its link (to be written within its `write_timeout`), or
    /// why not.
    pub result: Result<(), SendFailure>,
}

/// A message we cannot send anywhere.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The message cannot be built (e.g. a body with a line break).
    #[error("invalid message")]
    Line(#[from] LineError),
    /// Its line is longer than directories accept
    /// ([`JmError::SendTooLong`]).
    #[error("message cannot be sent")]
    Encode(#[source] JmError),
    /// Signing failed.
    #[error("cannot sign the message")]
    Sign(#[source] NickKeyError),
    /// A private message from another nick than ours: directories would
    /// drop it.
    #[error("the message is from {from}, but our nick is {ours}")]
    NotOurNick {
        /// The message's from-nick.
        from: Nick,
        /// Ours ([`MessagingConfig::nick`]).
        ours: Nick,
    },
}

/// Why [`Messaging::send_to`] could not hand a private message to any
/// directory.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SendToError {
    /// The message itself is wrong; nothing was tried.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// No directory is known to reach the nick (and no fallback applies):
    /// nothing was tried.
    #[error("no directory is known to reach {nick}")]
    NoRoute {
        /// The nick.
        nick: Nick,
    },
    /// Every candidate directory failed; none has the line.
    #[error("no directory took the message for {nick}: {}", Tried(.tried))]
    Unreachable {
        /// The nick.
        nick: Nick,
        /// Each directory tried, in order, and why it failed.
        tried: Vec<(Arc<ServerAddr>, SendFailure)>,
    },
}

/// Displays the directories tried and their failures, for an error message.
struct Tried<'a>(&'a [(Arc<ServerAddr>, SendFailure)]);

impl fmt::Display for Tried<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (directory, failure)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{directory}: {failure}")?;
            if let SendFailure::Link(source) = failure {
                write!(f, " ({source})")?;
            }
        }
        Ok(())
    }
}

/// A snapshot of the layer's queue, tables and counters, from
/// [`Messaging::stats`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessagingStats {
    /// Messages in the merged queue.
    pub queued: usize,
    /// What they count against [`MessagingConfig::inbound_bytes`].
    pub queued_charged: usize,
    /// Messages taken from the links so far.
    pub received: u64,
    /// Relayed copies of public and private messages not delivered again.
    pub duplicates: u64,
    /// Messages dropped because the merged queue was full.
    pub dropped_full: u64,
    /// Messages the links dropped because their own queues were full.
    pub dropped_by_links: u64,
    /// Private messages handed over as [`Message::Unverified`].
    pub unverified: u64,
    /// Private messages to another nick than ours, dropped (a directory
    /// relays a private message only to its `to` nick, so these are a
    /// directory's fault).
    pub misaddressed: u64,
    /// Dropped messages not reported by [`Messaging::recv`] yet.
    pub lagged: u64,
    /// Public messages remembered for de-duplication.
    pub dedup_entries: usize,
    /// Public messages forgotten before their window ended, for room.
    pub dedup_evicted_early: u64,
    /// Nicks in the route table.
    pub route_nicks: usize,
    /// Nicks forgotten for room.
    pub route_evictions: u64,
    /// Links the background task reads now.
    pub links_read: usize,
}

/// Messages across every directory of a pool; see the [module](self).
///
/// Cheap to clone; every clone shares the queue and the routes. It keeps
/// its pool alive; when the last clone is dropped, its background task
/// stops. Make one per pool, and do not call
/// [`DirectoryConnection::recv`] on the pool's links yourself: it takes
/// every message they keep.
#[derive(Clone)]
pub struct Messaging {
    inner: Arc<Inner>,
}

impl fmt::Debug for Messaging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Messaging")
            .field("nick", self.inner.config.nick())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Inner {
    pool: DirectoryPool<JoinMarketHandshake>,
    config: MessagingConfig,
    shared: Arc<Shared>,
    directories: Arc<Directories>,
    /// Dropped with the last handle: stops the background task.
    _stop: oneshot::Sender<()>,
}

/// The pool's configured servers, by node_id.
struct Directories {
    servers: Vec<Arc<ServerAddr>>,
    index: HashMap<String, usize>,
}

impl Directories {
    fn new(servers: &[Arc<ServerAddr>]) -> Self {
        let index = servers
            .iter()
            .enumerate()
            .map(|(i, s)| (s.node_id().to_owned(), i))
            .collect();
        Self {
            servers: servers.to_vec(),
            index,
        }
    }

    fn index(&self, node_id: &str) -> Option<usize> {
        self.index.get(node_id).copied()
    }
}

impl Messaging {
    /// Starts the layer on `pool`: its background task follows the pool's
    /// links from now on (links connected already included).
    ///
    /// # Errors
    /// [`JmConfigError`] for a configuration out of range.
    pub fn new(
        pool: &DirectoryPool<JoinMarketHandshake>,
        config: MessagingConfig,
    ) -> Result<Self, JmConfigError> {
        config.validate()?;
        let directories = Arc::new(Directories::new(pool.servers()));
        let shared = Arc::new(Shared::new(&config));
        // Subscribed before the task first looks at the clients, so no
        // connection falls between the two.
        let events = pool.events();
        let (stop, stopped) = oneshot::channel();
        let inner = Arc::new(Inner {
            pool: pool.clone(),
            config,
            shared: Arc::clone(&shared),
            directories: Arc::clone(&directories),
            _stop: stop,
        });
        let task = Reader {
            inner: Arc::downgrade(&inner),
            shared,
            directories,
            runtime: Arc::clone(pool.runtime()),
            ours: inner.config.nick().clone(),
            reading: HashMap::new(),
            reads: FuturesUnordered::new(),
        };
        pool.runtime().spawn(task.run(events, stopped).boxed());
        Ok(Self { inner })
    }

    /// The configuration.
    pub fn config(&self) -> &MessagingConfig {
        &self.inner.config
    }

    /// The next message from any directory, each public message once.
    ///
    /// Cancel-safe: a message is taken only when it is returned.
    ///
    /// # Errors
    /// [`RecvError::Lagged`] first if messages were dropped since the last
    /// call (the merged queue or a link's queue was full; the next call
    /// goes on with the messages kept); [`RecvError::Closed`] once the
    /// pool's driver is gone and every message kept has been received.
    pub async fn recv(&self) -> Result<Incoming, RecvError> {
        poll_fn(|cx| {
            let mut state = self.inner.shared.state();
            if state.lagged > 0 {
                return Poll::Ready(Err(RecvError::Lagged(std::mem::take(&mut state.lagged))));
            }
            if let Some(incoming) = state.pop() {
                return Poll::Ready(Ok(incoming));
            }
            if state.closed {
                return Poll::Ready(Err(RecvError::Closed));
            }
            state.receivers.register(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Sends a public message, `<our nick>!PUBLIC!<body>`, to every
    /// connected directory at once, each within
    /// [`send_timeout`](MessagingConfig::send_timeout); one directory's
    /// failure never stops the others. Returns one outcome per directory
    /// connected when called, in the pool's server order.
    ///
    /// Cancel-safe per directory: a dropped `broadcast` has queued the
    /// whole line on some directories and nothing on the others.
    ///
    /// # Errors
    /// [`MessageError`] if the message cannot be built or is too long;
    /// nothing is sent then.
    pub async fn broadcast(&self, body: &str) -> Result<Vec<DirectoryOutcome>, MessageError> {
        let message = PublicMessage::new(self.inner.config.nick().clone(), body)?;
        let envelope = message.to_envelope();
        envelope.encode().map_err(MessageError::Encode)?;
        Ok(self.send_everywhere(&envelope).await)
    }

    /// Asks every connected directory for its peer list (GETPEERLIST 791),
    /// each within [`send_timeout`](MessagingConfig::send_timeout). The
    /// answers arrive in the merged queue as [`Message::Peerlist`] (ng and
    /// rs answer, in chunks; the reference does not answer at all) and
    /// feed the routes.
    ///
    /// Cancel-safe per directory, as [`broadcast`](Self::broadcast).
    pub async fn request_peerlists(&self) -> Vec<DirectoryOutcome> {
        self.send_everywhere(&get_peerlist()).await
    }

    /// Sends a private message, `<our nick>!<nick>!<body> <pubkey> <sig>`,
    /// signed with our identity as joinmarket-ng and the reference sign
    /// (their makers and takers drop unsigned ones), through one directory that can reach `nick` (see the [module](self) for the
    /// choice): the routes most recently learned first, one at a time,
    /// each within [`send_timeout`](MessagingConfig::send_timeout).
    /// Returns the directory that took it. Taken means queued on that
    /// link; the directory delivers it only if `nick` is connected to it.
    ///
    /// Cancel-safe in that a dropped `send_to` has queued the line on at
    /// most one directory (it tries the next only after one failed).
    ///
    /// # Errors
    /// [`SendToError::NoRoute`] when no directory is known to reach
    /// `nick`; [`SendToError::Unreachable`] with every directory tried and
    /// why each failed; [`SendToError::Message`] for a message that cannot
    /// be built or signed.
    pub async fn send_to(&self, nick: &Nick, body: &str) -> Result<Arc<ServerAddr>, SendToError> {
        let message = self
            .inner
            .config
            .identity
            .sign_private(nick.clone(), body)
            .map_err(|error| match error {
                NickKeyError::Message(line) => MessageError::Line(line),
                other => MessageError::Sign(other),
            })?;
        self.send_private(&message).await
    }

    /// As [`send_to`](Self::send_to), for a message already built, sent as
    /// it is (signed or not). Its from-nick must be ours.
    ///
    /// Cancel-safe as [`send_to`](Self::send_to).
    ///
    /// # Errors
    /// As [`send_to`](Self::send_to); [`MessageError::NotOurNick`] for a
    /// message from another nick.
    pub async fn send_private(
        &self,
        message: &PrivateMessage,
    ) -> Result<Arc<ServerAddr>, SendToError> {
        let ours = self.inner.config.nick();
        let envelope = message.to_envelope();
        // The links refuse it too; checked here so that no directory is tried.
        if check_sender(&envelope, ours).is_err() {
            return Err(MessageError::NotOurNick {
                from: message.from().clone(),
                ours: ours.clone(),
            }
            .into());
        }
        envelope.encode().map_err(MessageError::Encode)?;
        let nick = message.to();
        let candidates = self.candidates(nick);
        if candidates.is_empty() {
            return Err(SendToError::NoRoute { nick: nick.clone() });
        }
        let mut tried = Vec::with_capacity(candidates.len());
        for directory in candidates {
            let result = match self.inner.pool.client(directory.node_id()) {
                None => Err(SendFailure::NotConnected),
                Some(link) => self.send_within(&link, &envelope).await,
            };
            match result {
                Ok(()) => {
                    tracing::debug!(%directory, %nick, "private message queued");
                    return Ok(directory);
                }
                Err(failure) => tried.push((directory, failure)),
            }
        }
        Err(SendToError::Unreachable {
            nick: nick.clone(),
            tried,
        })
    }

    /// The directories through which `nick` was last seen, most recent
    /// first (connected now or not).
    pub fn routes(&self, nick: &Nick) -> Vec<Route> {
        self.inner.shared.state().routes.get(nick)
    }

    /// What the layer holds and has counted right now.
    pub fn stats(&self) -> MessagingStats {
        let state = self.inner.shared.state();
        MessagingStats {
            queued: state.queue.len(),
            queued_charged: state.charged,
            received: state.received,
            duplicates: state.duplicates,
            dropped_full: state.dropped_full,
            dropped_by_links: state.dropped_by_links,
            unverified: state.unverified,
            misaddressed: state.misaddressed,
            lagged: state.lagged,
            dedup_entries: state.dedup.seen.len(),
            dedup_evicted_early: state.dedup.evicted_early,
            route_nicks: state.routes.by_nick.len(),
            route_evictions: state.routes.evicted,
            links_read: state.links_read,
        }
    }

    /// The directories to try for `nick`, in order.
    fn candidates(&self, nick: &Nick) -> Vec<Arc<ServerAddr>> {
        let mut candidates: Vec<Arc<ServerAddr>> = self
            .routes(nick)
            .into_iter()
            .map(|route| route.directory)
            .collect();
        if self.inner.config.fallback == RouteFallback::AnyDirectory {
            for directory in self.connected() {
                if !candidates.contains(&directory) {
                    candidates.push(directory);
                }
            }
        }
        candidates
    }

    /// The connected directories and their links, in server order.
    fn connected_links(&self) -> Vec<(Arc<ServerAddr>, Arc<DirectoryConnection>)> {
        let directories = &self.inner.directories;
        let mut links: Vec<(usize, Arc<DirectoryConnection>)> = self
            .inner
            .pool
            .clients()
            .into_iter()
            .filter_map(|(node_id, link)| Some((directories.index(&node_id)?, link)))
            .collect();
        links.sort_by_key(|(index, _)| *index);
        links
            .into_iter()
            .map(|(index, link)| (Arc::clone(&directories.servers[index]), link))
            .collect()
    }

    fn connected(&self) -> Vec<Arc<ServerAddr>> {
        self.connected_links().into_iter().map(|(d, _)| d).collect()
    }

    async fn send_everywhere(&self, envelope: &Envelope) -> Vec<DirectoryOutcome> {
        let sends = self
            .connected_links()
            .into_iter()
            .map(|(directory, link)| async move {
                let result = self.send_within(&link, envelope).await;
                if let Err(failure) = &result {
                    tracing::debug!(%directory, %failure, kind = envelope.kind, "send failed");
                }
                DirectoryOutcome { directory, result }
            });
        join_all(sends).await
    }

    /// Queues `envelope` on `link` within the send timeout (all or nothing:
    /// the link's `send` is).
    async fn send_within(
        &self,
        link: &DirectoryConnection,
        envelope: &Envelope,
    ) -> Result<(), SendFailure> {
        let runtime = self.inner.pool.runtime();
        let timeout = self.inner.config.send_timeout;
        let send = link.send(envelope);
        let result = match runtime.now().checked_add(timeout) {
            Some(deadline) => before(runtime.sleep_until(deadline), send).await,
            None => Some(send.await),
        };
        match result {
            Some(Ok(())) => Ok(()),
            Some(Err(error)) => Err(SendFailure::Link(error)),
            None => Err(SendFailure::TimedOut(timeout)),
        }
    }
}

/// What the background task and the handles share.
struct Shared {
    state: StdMutex<State>,
}

struct State {
    queue: VecDeque<(Incoming, usize)>,
    /// What `queue` counts against `bound`.
    charged: usize,
    bound: usize,
    lagged: u64,
    closed: bool,
    receivers: Wakers,
    dedup: Dedup,
    routes: Routes,
    received: u64,
    duplicates: u64,
    dropped_full: u64,
    dropped_by_links: u64,
    unverified: u64,
    misaddressed: u64,
    links_read: usize,
}

impl Shared {
    fn new(config: &MessagingConfig) -> Self {
        Self {
            state: StdMutex::new(State {
                queue: VecDeque::new(),
                charged: 0,
                bound: config.inbound_bytes,
                lagged: 0,
                closed: false,
                receivers: Wakers::default(),
                dedup: Dedup::new(config.dedup_window, config.dedup_entries),
                routes: Routes::new(config.route_nicks),
                received: 0,
                duplicates: 0,
                dropped_full: 0,
                dropped_by_links: 0,
                unverified: 0,
                misaddressed: 0,
                links_read: 0,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Learns what `message` (from a line of `line_len` bytes) from
    /// `directory` says about routes and keeps it for the user unless it is
    /// a relayed copy or the queue is full.
    fn ingest(
        &mut self,
        index: usize,
        directory: &Arc<ServerAddr>,
        line_len: usize,
        message: Option<Message>,
        now: Instant,
    ) {
        self.received = self.received.saturating_add(1);
        let Some(message) = message else {
            if self.misaddressed == 0 {
                tracing::debug!(%directory, "dropping a private message to another nick");
            }
            self.misaddressed = self.misaddressed.saturating_add(1);
            return;
        };
        match &message {
            Message::Public(public) => {
                self.routes
                    .learn(public.from(), directory, RouteSource::Message, now);
            }
            Message::Private(private) => {
                self.routes
                    .learn(private.sender(), directory, RouteSource::Message, now);
            }
            Message::Peerlist(entries) => {
                for entry in entries {
                    if entry.disconnected {
                        self.routes.forget(&entry.nick, directory);
                    } else {
                        self.routes
                            .learn(&entry.nick, directory, RouteSource::Peerlist, now);
                    }
                }
            }
            Message::Unverified { .. } | Message::Malformed { .. } | Message::Other(_) => {}
        }
        // Every directory relays a public message, and joinmarket-ng's maker
        // sends its offers and answers to a taker through every directory
        // (`maker/protocol_handlers.py::_send_offers_to_taker`,
        // `_send_response`): both arrive once per directory, byte for byte
        // (a private message's signature covers the fixed onion host id).
        let relayed = match &message {
            Message::Public(public) => Some(public.to_line()),
            Message::Private(private) => Some(private.message().to_line()),
            Message::Unverified { message, .. } => Some(message.to_line()),
            _ => None,
        };
        if let Some(line) = relayed {
            if !self.dedup.is_new(&line, index, now) {
                self.duplicates = self.duplicates.saturating_add(1);
                return;
            }
        }
        if let Message::Unverified { message, error } = &message {
            tracing::debug!(%directory, from = %message.from(), %error, "unverified private message");
            self.unverified = self.unverified.saturating_add(1);
        }
        let entries = match &message {
            Message::Peerlist(entries) => entries.len(),
            _ => 0,
        };
        let cost = ITEM_OVERHEAD
            .saturating_add(line_len.saturating_mul(3))
            .saturating_add(entries.saturating_mul(std::mem::size_of::<PeerlistEntry>()));
        let held = self.charged.saturating_add(cost);
        if held > self.bound {
            self.dropped_full = self.dropped_full.saturating_add(1);
            self.lost(1);
        } else {
            self.charged = held;
            let incoming = Incoming {
                directory: Arc::clone(directory),
                message,
            };
            self.queue.push_back((incoming, cost));
        }
        self.receivers.wake_all();
    }

    /// Counts `n` messages lost, to be reported.
    fn lost(&mut self, n: u64) {
        if self.lagged == 0 {
            tracing::debug!("merged queue full or a link lagged: dropping messages");
        }
        self.lagged = self.lagged.saturating_add(n);
    }

    fn pop(&mut self) -> Option<Incoming> {
        let (incoming, cost) = self.queue.pop_front()?;
        self.charged = self.charged.saturating_sub(cost);
        // Keep the slots within ITEM_OVERHEAD per message.
        let (len, capacity) = (self.queue.len(), self.queue.capacity());
        if capacity > 64 && len < capacity / 4 {
            self.queue.shrink_to(len.saturating_mul(2).max(64));
        }
        Some(incoming)
    }
}

/// Types a message by its kind and checks a private message's signature;
/// `None` for a private message to another nick than `ours`.
fn classify(envelope: Envelope, ours: &Nick) -> Option<Message> {
    let parsed = match envelope.kind {
        wire::PUBMSG => PublicMessage::parse(&envelope.line).map(Message::Public),
        wire::PRIVMSG => match PrivateMessage::parse(&envelope.line) {
            Ok(message) if message.to() != ours => return None,
            Ok(message) => Ok(match message.verify() {
                Ok(verified) => Message::Private(verified),
                Err(error) => Message::Unverified { message, error },
            }),
            Err(error) => Err(error),
        },
        wire::PEERLIST => parse_peerlist(&envelope.line).map(Message::Peerlist),
        _ => return Some(Message::Other(envelope)),
    };
    Some(parsed.unwrap_or_else(|error| Message::Malformed { envelope, error }))
}

/// Relayed (public and private) messages seen recently: per message, how many copies each
/// directory delivered and how many we delivered.
struct Dedup {
    keys: (RandomState, RandomState),
    seen: HashMap<u128, Seen>,
    /// Keys in the order first seen (and so of their expiry).
    order: VecDeque<(Instant, u128)>,
    window: Duration,
    capacity: usize,
    evicted_early: u64,
}

struct Seen {
    delivered: u32,
    /// (directory index, copies it delivered).
    copies: Vec<(u32, u32)>,
}

impl Dedup {
    fn new(window: Duration, capacity: usize) -> Self {
        Self {
            keys: (RandomState::new(), RandomState::new()),
            seen: HashMap::new(),
            order: VecDeque::new(),
            window,
            capacity,
            evicted_early: 0,
        }
    }

    /// Whether this copy of `line` from directory `index` is a message to
    /// deliver (true) or a relay of one delivered already.
    fn is_new(&mut self, line: &str, index: usize, now: Instant) -> bool {
        // A pool has far fewer than 2^32 servers.
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        while let Some(&(first, key)) = self.order.front() {
            if now.saturating_duration_since(first) < self.window {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&key);
        }
        let key =
            (u128::from(self.keys.0.hash_one(line)) << 64) | u128::from(self.keys.1.hash_one(line));
        if let Some(seen) = self.seen.get_mut(&key) {
            let copies = match seen.copies.iter_mut().find(|(i, _)| *i == index) {
                Some((_, copies)) => {
                    *copies = copies.saturating_add(1);
                    *copies
                }
                None => {
                    seen.copies.push((index, 1));
                    1
                }
            };
            let new = copies > seen.delivered;
            seen.delivered = seen.delivered.max(copies);
            return new;
        }
        if self.seen.len() >= self.capacity {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.seen.remove(&oldest);
                self.evicted_early = self.evicted_early.saturating_add(1);
            }
        }
        self.seen.insert(
            key,
            Seen {
                delivered: 1,
                copies: vec![(index, 1)],
            },
        );
        self.order.push_back((now, key));
        true
    }
}

/// Where nicks were last seen, least recently learned evicted first.
struct Routes {
    capacity: usize,
    by_nick: HashMap<Nick, NickRoutes>,
    /// Nicks by the tick of their last learning.
    recency: BTreeMap<u64, Nick>,
    tick: u64,
    evicted: u64,
}

struct NickRoutes {
    tick: u64,
    /// Most recent first; at most one per directory.
    via: Vec<Route>,
}

impl Routes {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            by_nick: HashMap::new(),
            recency: BTreeMap::new(),
            tick: 0,
            evicted: 0,
        }
    }

    fn learn(
        &mut self,
        nick: &Nick,
        directory: &Arc<ServerAddr>,
        source: RouteSource,
        now: Instant,
    ) {
        self.tick = self.tick.wrapping_add(1);
        let tick = self.tick;
        if !self.by_nick.contains_key(nick) && self.by_nick.len() >= self.capacity {
            if let Some((_, oldest)) = self.recency.pop_first() {
                self.by_nick.remove(&oldest);
                self.evicted = self.evicted.saturating_add(1);
            }
        }
        let routes = self
            .by_nick
            .entry(nick.clone())
            .or_insert_with(|| NickRoutes {
                tick,
                via: Vec::new(),
            });
        self.recency.remove(&routes.tick);
        routes.tick = tick;
        self.recency.insert(tick, nick.clone());
        routes.via.retain(|route| route.directory != *directory);
        routes.via.insert(
            0,
            Route {
                directory: Arc::clone(directory),
                learned_at: now,
                source,
            },
        );
    }

    fn forget(&mut self, nick: &Nick, directory: &Arc<ServerAddr>) {
        let Some(routes) = self.by_nick.get_mut(nick) else {
            return;
        };
        routes.via.retain(|route| route.directory != *directory);
        if routes.via.is_empty() {
            let tick = routes.tick;
            self.by_nick.remove(nick);
            self.recency.remove(&tick);
        }
    }

    fn get(&self, nick: &Nick) -> Vec<Route> {
        self.by_nick
            .get(nick)
            .map(|routes| routes.via.clone())
            .unwrap_or_default()
    }
}

/// One message (or the end) read from one link.
struct Read {
    index: usize,
    link: Arc<DirectoryConnection>,
    result: Result<Envelope, RecvError>,
}

/// What woke the background task.
enum Wake {
    Stop,
    /// An event; false when the stream ended.
    Event(bool),
    Read(Read),
}

/// The background task: reads every connected link.
struct Reader {
    inner: Weak<Inner>,
    shared: Arc<Shared>,
    directories: Arc<Directories>,
    runtime: Arc<dyn Runtime>,
    /// Our nick: private messages to another are dropped.
    ours: Nick,
    /// The link read for each directory (an older link of the same
    /// directory may still be read to its end meanwhile).
    reading: HashMap<usize, Arc<DirectoryConnection>>,
    reads: FuturesUnordered<BoxFuture<'static, Read>>,
}

impl Reader {
    async fn run(
        mut self,
        events: impl futures::Stream<Item = crate::PoolEvent> + Send + 'static,
        stopped: oneshot::Receiver<()>,
    ) {
        let mut events = std::pin::pin!(events);
        let mut stopped = stopped;
        if self.follow() {
            loop {
                // Stop first, then new links, then reads.
                let wake = poll_fn(|cx| {
                    if Pin::new(&mut stopped).poll(cx).is_ready() {
                        return Poll::Ready(Wake::Stop);
                    }
                    if let Poll::Ready(event) = events.as_mut().poll_next(cx) {
                        return Poll::Ready(Wake::Event(event.is_some()));
                    }
                    match self.reads.poll_next_unpin(cx) {
                        Poll::Ready(Some(read)) => Poll::Ready(Wake::Read(read)),
                        // None: no read in flight; a new link comes with an event.
                        Poll::Ready(None) | Poll::Pending => Poll::Pending,
                    }
                })
                .await;
                match wake {
                    Wake::Stop => break,
                    // Any event (connected, or lagged) may mean a new link;
                    // none (the driver is gone) ends the task.
                    Wake::Event(more) => {
                        if !more || !self.follow() {
                            break;
                        }
                    }
                    Wake::Read(read) => self.handle(read),
                }
            }
        }
        let mut state = self.shared.state();
        state.closed = true;
        state.links_read = 0;
        state.receivers.wake_all();
    }

    /// Starts reading every connected link not read yet; false once every
    /// handle is gone.
    fn follow(&mut self) -> bool {
        let Some(inner) = self.inner.upgrade() else {
            return false;
        };
        for (node_id, link) in inner.pool.clients() {
            let Some(index) = self.directories.index(&node_id) else {
                continue;
            };
            if self
                .reading
                .get(&index)
                .is_some_and(|read| Arc::ptr_eq(read, &link))
            {
                continue;
            }
            tracing::debug!(directory = %node_id, "reading a new link");
            self.reading.insert(index, Arc::clone(&link));
            self.reads.push(next_read(index, link));
        }
        self.shared.state().links_read = self.reading.len();
        true
    }

    fn handle(&mut self, read: Read) {
        let Read {
            index,
            link,
            result,
        } = read;
        match result {
            Ok(envelope) => {
                let directory = &self.directories.servers[index];
                let line_len = envelope.line.len();
                // Parsed and verified (an ECDSA check) outside the lock.
                let message = classify(envelope, &self.ours);
                let now = self.runtime.now();
                self.shared
                    .state()
                    .ingest(index, directory, line_len, message, now);
            }
            Err(RecvError::Lagged(n)) => {
                let mut state = self.shared.state();
                state.dropped_by_links = state.dropped_by_links.saturating_add(n);
                state.lost(n);
                state.receivers.wake_all();
            }
            Err(_) => {
                if self
                    .reading
                    .get(&index)
                    .is_some_and(|read| Arc::ptr_eq(read, &link))
                {
                    self.reading.remove(&index);
                    self.shared.state().links_read = self.reading.len();
                }
                return;
            }
        }
        self.reads.push(next_read(index, link));
    }
}

/// The next message of `link` (cancel-safe: dropping it loses nothing).
fn next_read(index: usize, link: Arc<DirectoryConnection>) -> BoxFuture<'static, Read> {
    async move {
        let result = link.recv().await;
        Read {
            index,
            link,
            result,
        }
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(n: u8) -> Arc<ServerAddr> {
        Arc::new(ServerAddr::from_onion_key(&[n; 32], 5222))
    }

    fn nick(text: &str) -> Nick {
        Nick::parse(text).unwrap()
    }

    #[test]
    fn relayed_copies_are_delivered_once_and_repeats_as_often_as_sent() {
        let t0 = Instant::now();
        let mut dedup = Dedup::new(Duration::from_secs(30), 100);
        // Three directories relay "a" once: one delivery.
        let a: Vec<bool> = (0..3).map(|d| dedup.is_new("a", d, t0)).collect();
        assert_eq!(a, [true, false, false]);
        // "b" sent twice, relayed by three directories, the first one's
        // copies both ahead of the others: two deliveries.
        let order = [0, 0, 1, 2, 1, 2];
        let b = order.iter().filter(|&&d| dedup.is_new("b", d, t0)).count();
        assert_eq!(b, 2);
        // After the window, the same line is a new message.
        assert!(dedup.is_new("a", 1, t0 + Duration::from_secs(30)));
        assert_eq!(dedup.evicted_early, 0);
    }

    #[test]
    fn the_dedup_table_never_holds_more_than_its_entries() {
        let t0 = Instant::now();
        let mut dedup = Dedup::new(Duration::from_secs(30), 4);
        for i in 0..10 {
            assert!(dedup.is_new(&i.to_string(), 0, t0));
            assert!(dedup.seen.len() <= 4 && dedup.order.len() <= 4);
        }
        assert_eq!(dedup.evicted_early, 6);
        // The newest are remembered, the oldest forgotten (delivered again).
        assert!(!dedup.is_new("9", 1, t0));
        assert!(dedup.is_new("0", 1, t0));
    }

    #[test]
    fn routes_are_most_recent_first_forgotten_by_flag_and_bounded() {
        let t0 = Instant::now();
        let (a, b) = (directory(1), directory(2));
        let maker = nick("J5xhGSWE7VrxM7sO");
        let mut routes = Routes::new(2);
        routes.learn(&maker, &a, RouteSource::Peerlist, t0);
        routes.learn(
            &maker,
            &b,
            RouteSource::Message,
            t0 + Duration::from_secs(1),
        );
        let via: Vec<_> = routes
            .get(&maker)
            .into_iter()
            .map(|r| r.directory)
            .collect();
        assert_eq!(via, [Arc::clone(&b), Arc::clone(&a)]);
        routes.learn(
            &maker,
            &a,
            RouteSource::Message,
            t0 + Duration::from_secs(2),
        );
        assert_eq!(routes.get(&maker)[0].directory, a);
        routes.forget(&maker, &a);
        assert_eq!(routes.get(&maker).len(), 1);
        routes.forget(&maker, &b);
        assert!(routes.get(&maker).is_empty() && routes.recency.is_empty());

        // Full: the nick learned least recently goes.
        let others = ["J52bCDEFGHJKLMNO", "J53bCDEFGHJKLMNO", "J54bCDEFGHJKLMNO"].map(nick);
        routes.learn(&others[0], &a, RouteSource::Peerlist, t0);
        routes.learn(&others[1], &a, RouteSource::Peerlist, t0);
        routes.learn(&others[0], &b, RouteSource::Peerlist, t0);
        routes.learn(&others[2], &a, RouteSource::Peerlist, t0);
        assert!(routes.get(&others[1]).is_empty(), "least recent evicted");
        assert_eq!(routes.get(&others[0]).len(), 2);
        assert_eq!(routes.by_nick.len(), 2);
        assert_eq!(routes.recency.len(), 2);
        assert_eq!(routes.evicted, 1);
    }

    fn identity(byte: u8) -> NickIdentity {
        NickIdentity::from_secret_bytes(&[byte; 32]).unwrap()
    }

    fn privmsg(message: &PrivateMessage) -> Envelope {
        message.to_envelope()
    }

    #[test]
    fn private_messages_are_verified_before_anyone_sees_them() {
        let (taker, maker, other) = (identity(1), identity(2), identity(3));
        let ours = taker.nick();
        let t0 = Instant::now();
        let dir = directory(1);
        let mut state = Shared::new(&MessagingConfig::new(identity(1)))
            .state
            .into_inner()
            .unwrap();
        let mut deliver = |envelope: Envelope| {
            let len = envelope.line.len();
            state.ingest(0, &dir, len, classify(envelope, ours), t0);
            state.pop().map(|incoming| incoming.message)
        };

        // Signed by the key its sender's nick derives from: verified.
        let signed = maker.sign_private(ours.clone(), "!ioauth a b c").unwrap();
        let Some(Message::Private(verified)) = deliver(privmsg(&signed)) else {
            panic!("a signed message is delivered verified");
        };
        assert_eq!(verified.sender(), maker.nick());

        // Unsigned: handed over, marked, with the reason.
        let unsigned = PrivateMessage::new(maker.nick().clone(), ours.clone(), "!fill 0").unwrap();
        assert!(matches!(
            deliver(privmsg(&unsigned)),
            Some(Message::Unverified {
                error: SignatureError::Unsigned,
                ..
            })
        ));

        // Signed by another key than the one `from` derives from: a forgery.
        let forged_line = other
            .sign_private(ours.clone(), "!ioauth a b c")
            .unwrap()
            .to_line()
            .replacen(other.nick().as_str(), maker.nick().as_str(), 1);
        let forged = PrivateMessage::parse(&forged_line).unwrap();
        assert!(matches!(
            deliver(privmsg(&forged)),
            Some(Message::Unverified {
                error: SignatureError::NickMismatch { .. },
                ..
            })
        ));

        // To another nick: dropped and counted.
        let elsewhere = maker.sign_private(other.nick().clone(), "!fill 0").unwrap();
        assert!(deliver(privmsg(&elsewhere)).is_none());

        // Routes only from the verified message.
        assert_eq!(state.routes.get(maker.nick()).len(), 1);
        assert_eq!(
            (state.unverified, state.misaddressed, state.received),
            (2, 1, 4)
        );
    }

    #[test]
    fn configs_out_of_range_are_typed_errors() {
        let ok = MessagingConfig::new(NickIdentity::from_secret_bytes(&[7; 32]).unwrap());
        assert_eq!(ok.validate(), Ok(()));
        let mut c = ok.clone();
        c.inbound_bytes = MIN_INBOUND_BYTES - 1;
        assert!(matches!(
            c.validate(),
            Err(JmConfigError::Size {
                field: "inbound_bytes",
                ..
            })
        ));
        let mut c = ok.clone();
        c.dedup_entries = 0;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.route_nicks = usize::MAX;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.send_timeout = Duration::ZERO;
        assert!(matches!(
            c.validate(),
            Err(JmConfigError::Timeout {
                field: "send_timeout",
                ..
            })
        ));
        let mut c = ok;
        c.dedup_window = Duration::MAX;
        assert!(c.validate().is_err());
    }
}
