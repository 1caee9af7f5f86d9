//! Simulated network peers for the deterministic simulation: a SOCKS5 proxy
//! (RFC 1928, with RFC 1929 username/password) standing in for Tor, which
//! for a forwarded CONNECT plays the JoinMarket directory itself on the same
//! stream (after the SOCKS reply a tunnel is just bytes, so the client cannot
//! tell the difference, and each dial needs only one in-memory stream).
//!
//! Everything is async and generic over the stream. All waiting goes through
//! the given [`Runtime`] (`sleep_until(now() + d)`), so the peers run the
//! same on tokio and on the simulation's virtual-clock executor: no threads,
//! no real time, no randomness or hash-map iteration of their own. Every
//! choice comes from the [`SimWorld`], which is asked, per connection and in
//! a fixed order: [`SimWorld::proxy_accepts_user_pass`] once per greeting,
//! [`SimWorld::proxy_fate`] once per CONNECT request read, and
//! [`SimWorld::directory_fate`] once per tunnel that is forwarded (right
//! after the success reply, before the client's handshake is read).
//!
//! No client bytes can make the peers panic or buffer without bound: SOCKS
//! fields are at most 255 bytes, directory lines at most
//! [`MAX_DIRECTORY_LINE`] (a longer one closes the connection), bytes that
//! are only held are read into a fixed buffer and discarded. Anything
//! malformed closes the connection.
#![forbid(unsafe_code)]

use std::future::{Future, poll_fn};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use dirpool::Runtime;

use crate::directory_model::{
    DirectoryConfig, DirectoryLink, LineLimit, LinkClose, LinkOutput, LinkPeer, MODEL_DISCONNECT,
    MODEL_PING, MODEL_PONG,
};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The nick the simulated directories answer with: `J5`, base58 letters,
/// `O` padding, 16 characters.
pub const DIRECTORY_NICK: &str = "J5SimDirectoryOO";
/// The longest line a simulated directory reads; a longer one closes the
/// connection.
pub const MAX_DIRECTORY_LINE: usize = 64 * 1024;

/// SOCKS protocol version 5.
const SOCKS5: u8 = 0x05;
/// RFC 1929 sub-negotiation version.
const USER_PASS_VERSION: u8 = 0x01;
/// Method "no authentication required".
const METHOD_NO_AUTH: u8 = 0x00;
/// Method "username/password".
const METHOD_USER_PASS: u8 = 0x02;
/// Method selection "no acceptable methods".
const METHOD_NONE: u8 = 0xFF;
/// The CONNECT command.
const CMD_CONNECT: u8 = 0x01;
/// Address types.
const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;
/// Reply codes sent for requests the proxy does not support.
const REP_COMMAND_NOT_SUPPORTED: u8 = 0x07;
const REP_ATYP_NOT_SUPPORTED: u8 = 0x08;
/// JoinMarket message types.
const JM_HANDSHAKE: u64 = 793;
const JM_DN_HANDSHAKE: u32 = 795;
const JM_PING: u32 = 798;
const JM_PONG: u64 = 799;
const JM_PUBMSG: u32 = 687;
/// Bytes read from the client at a time.
const READ_CHUNK: usize = 4096;

/// How one simulated directory behaves for one connection, decided by the
/// world (seeded) per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryFate {
    /// Accepts the handshake after `reply_delay` (reply: `accepted: true`,
    /// nick [`DIRECTORY_NICK`], the client's network echoed, protocol 5..=5,
    /// feature `ping`, motd `sim`), then holds the connection, reading and
    /// discarding the client's messages (each PONG recorded).
    Accept {
        /// Wait before the reply.
        reply_delay: Duration,
        /// Close this long after the reply.
        drop_after: Option<Duration>,
        /// Send one PING (797) this long after the reply.
        send_ping_after: Option<Duration>,
    },
    /// Replies `accepted: false` with `motd`, then closes.
    Reject {
        /// The message of the day sent with the rejection.
        motd: String,
    },
    /// Closes without replying.
    CloseWithoutReply,
    /// Never replies; holds until the client closes.
    Silent,
    /// Sends `not json\r\n`, then holds until the client closes.
    Garbage,
    /// Sends the first half of a valid accepting reply, then closes.
    CloseMidReply,
    /// Behaves like a real directory implementation: after `reply_delay`,
    /// an accepting reply with the profile's features, then a
    /// [`DirectoryLink`] of `config` on the runtime's clock (its sweeps
    /// phased from the reply: the first one `sweep` after it), which answers,
    /// pings, evicts ([`PeerEvent::DirectoryPing`],
    /// [`PeerEvent::DirectoryModelClose`], [`PeerEvent::Pong`]). Lines over
    /// the profile's limit close the link.
    Modelled {
        /// The model's configuration.
        config: DirectoryConfig,
        /// Wait before the reply.
        reply_delay: Duration,
    },
    /// Accepts at once (as [`DirectoryFate::Accept`]), reads and discards
    /// the client's lines for `after`, then neither reads nor writes again:
    /// the socket stays open until the tunnel is cut
    /// ([`ProxyFate::CloseMidHandshake`]) or the task is dropped (a client
    /// close is not seen either).
    SilentAfter {
        /// How long the path works after the reply.
        after: Duration,
    },
    /// Accepts at once, then sends public messages of `line_len` bytes
    /// each (`\r\n` included; at least 27) as fast as the stream takes them,
    /// reading nothing, until the client closes.
    Flood {
        /// The length of each line.
        line_len: usize,
    },
    /// A [`DirectoryFate::Modelled`] directory (replying at once) whose
    /// link takes a [`Twist`] after the reply.
    ModelledWith {
        /// The model's configuration.
        config: DirectoryConfig,
        /// What happens to the link.
        twist: Twist,
    },
}

/// What happens to a modelled link besides the model's own behaviour
/// ([`DirectoryFate::ModelledWith`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Twist {
    /// `after` the reply the path goes silent both ways (nothing read,
    /// nothing written, the socket held open):
    /// [`PeerEvent::PathSilent`].
    SilentAfter(Duration),
    /// `after` the reply the directory sends DISCONNECT (801)
    /// ([`PeerEvent::DirectoryDisconnect`]), then only reads until the
    /// client closes.
    DisconnectAfter(Duration),
    /// Every `tick` from the reply until `until`, `lines_per_tick` public
    /// messages of `line_len` bytes (`\r\n` included, at least 27), while
    /// the model runs as usual (answers, PINGs, evictions);
    /// [`PeerEvent::FloodEnded`] when it stops.
    Flood {
        /// Bytes per line.
        line_len: usize,
        /// Lines per tick.
        lines_per_tick: usize,
        /// Between ticks (non-zero).
        tick: Duration,
        /// How long the flood lasts.
        until: Duration,
    },
}

/// How the proxy answers one CONNECT, decided by the world per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyFate {
    /// Answers success after `latency`, then the tunnel carries the
    /// simulated directory.
    Forward {
        /// Wait before the reply.
        latency: Duration,
    },
    /// Answers reply code `code` (0x01..=0x08, Tor's 0xF0..=0xF7) after
    /// `latency`, then closes.
    Reply {
        /// The SOCKS reply code.
        code: u8,
        /// Wait before the reply.
        latency: Duration,
    },
    /// Never answers; holds until the client closes.
    Stall,
    /// Closes right after reading the request, without answering.
    CloseEarly,
    /// Answers success at once and runs the directory, then cuts the tunnel
    /// `after` the reply, wherever the exchange is.
    CloseMidHandshake {
        /// How long the tunnel lives after the success reply.
        after: Duration,
    },
}

/// The simulation's side: decides the fates and receives what the peers
/// saw. The peers only call it, never hold anything across a call, and call
/// it from the task serving the connection.
pub trait SimWorld: Send + Sync + 'static {
    /// The fate of a CONNECT to `host:port`, made with `username` (RFC 1929)
    /// or without authentication.
    fn proxy_fate(&self, host: &str, port: u16, username: Option<&str>) -> ProxyFate;
    /// The fate of the directory at `host` for one forwarded tunnel.
    fn directory_fate(&self, host: &str) -> DirectoryFate;
    /// Whether the proxy takes username/password; `false` behaves like Tor's
    /// `PreferSOCKSNoAuth` (picks 0x00 when offered, answers 0xFF to the
    /// isolation probe).
    fn proxy_accepts_user_pass(&self) -> bool;
    /// Reports what happened.
    fn record(&self, event: PeerEvent);
}

/// What the simulated peers report to the [`SimWorld`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A CONNECT request was read (recorded before the fate is asked for).
    ProxyConnect {
        /// Target host: the domain name, or the IP address's display form.
        host: String,
        /// Target port.
        port: u16,
        /// RFC 1929 username (lossy UTF-8), if the client authenticated.
        username: Option<String>,
        /// RFC 1929 password (lossy UTF-8), if the client authenticated.
        password: Option<String>,
    },
    /// A greeting offering username/password only (the isolation probe) was
    /// answered: 0x02 if `accepted`, else 0xFF.
    ProxyAuthProbe {
        /// Whether 0x02 was picked.
        accepted: bool,
    },
    /// A well-formed client handshake (793) was read by the directory.
    DirectoryHandshake {
        /// The directory's host.
        host: String,
        /// The client's nick, as sent.
        nick: String,
        /// The client's network, as sent.
        network: String,
    },
    /// The directory sent its accepting reply: the connection is open.
    DirectoryOpen {
        /// The directory's host.
        host: String,
        /// The connection id given to [`serve_proxy_connection`].
        conn: u64,
    },
    /// An open directory connection ended, for whatever reason (client
    /// closed, `drop_after`, cut tunnel, bad client bytes). Exactly one per
    /// [`PeerEvent::DirectoryOpen`], recorded before the server closes.
    DirectoryClosed {
        /// The directory's host.
        host: String,
        /// The connection id given to [`serve_proxy_connection`].
        conn: u64,
    },
    /// The client answered a PING with a PONG.
    Pong {
        /// The directory's host.
        host: String,
    },
    /// A modelled directory ([`DirectoryFate::Modelled`]) sent a heartbeat
    /// PING (798).
    DirectoryPing {
        /// The directory's host.
        host: String,
        /// The connection id.
        conn: u64,
    },
    /// A modelled directory closed the link on its own (eviction or
    /// reaction), recorded before [`PeerEvent::DirectoryClosed`].
    DirectoryModelClose {
        /// The directory's host.
        host: String,
        /// The connection id.
        conn: u64,
        /// Why, and when.
        close: LinkClose,
    },
    /// A [`Twist::SilentAfter`] path went silent.
    PathSilent {
        /// The directory's host.
        host: String,
        /// The connection id.
        conn: u64,
        /// When the directory last wrote a byte to the client.
        last_sent: Instant,
    },
    /// A [`Twist::DisconnectAfter`] directory sent DISCONNECT (801).
    DirectoryDisconnect {
        /// The directory's host.
        host: String,
        /// The connection id.
        conn: u64,
    },
    /// A [`Twist::Flood`] stopped flooding.
    FloodEnded {
        /// The directory's host.
        host: String,
        /// The connection id.
        conn: u64,
        /// Bytes of flood lines written.
        bytes: u64,
    },
}

/// Serves one accepted client connection as a SOCKS5 proxy (RFC 1928 +
/// RFC 1929). For a forwarded CONNECT ([`ProxyFate::Forward`] or
/// [`ProxyFate::CloseMidHandshake`]) it runs the simulated directory for
/// the target host on the same stream: after the SOCKS success reply, the
/// stream carries the JoinMarket exchange with the directory behaving per
/// [`SimWorld::directory_fate`].
///
/// Returns when the connection is over (the stream shut down and dropped).
/// `conn` identifies the connection in [`PeerEvent::DirectoryOpen`] and
/// [`PeerEvent::DirectoryClosed`].
pub async fn serve_proxy_connection<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: S,
    world: Arc<dyn SimWorld>,
    rt: Arc<dyn Runtime>,
    conn: u64,
) {
    let last_sent = rt.now();
    let mut peer = Peer {
        stream,
        buf: Vec::new(),
        world,
        rt,
        conn,
        last_sent,
    };
    // Every way of ending (clean or not) closes the connection the same way.
    let _ = peer.socks().await;
    let _ = peer.stream.shutdown().await;
}

/// The connection is over (closed by either side, or broken).
struct End;

impl From<io::Error> for End {
    fn from(_: io::Error) -> Self {
        End
    }
}

type Flow = Result<(), End>;

/// What waiting for a directory line gave.
enum Line {
    /// A line, terminator removed.
    Text(Vec<u8>),
    /// A line over the limit (only from [`Peer::next_line_within`]).
    TooLong,
    /// The client closed cleanly between lines.
    Eof,
    /// The deadline passed first.
    Deadline,
}

/// One served connection.
struct Peer<S> {
    stream: S,
    /// Received directory bytes not yet taken as lines (at most
    /// `MAX_DIRECTORY_LINE + 1 + READ_CHUNK`).
    buf: Vec<u8>,
    world: Arc<dyn SimWorld>,
    rt: Arc<dyn Runtime>,
    conn: u64,
    /// When a byte was last written to the client.
    last_sent: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Peer<S> {
    /// The SOCKS exchange, then the fate of the request.
    async fn socks(&mut self) -> Flow {
        let [version, count] = self.read_array::<2>().await?;
        if version != SOCKS5 {
            return Err(End);
        }
        let offered = self.read_bytes(count).await?;
        let user_pass = self.world.proxy_accepts_user_pass();
        let offers = |method| offered.contains(&method);
        let method = if offered[..] == [METHOD_USER_PASS] {
            // The isolation probe (or a client that only has credentials).
            self.world.record(PeerEvent::ProxyAuthProbe {
                accepted: user_pass,
            });
            if user_pass {
                METHOD_USER_PASS
            } else {
                METHOD_NONE
            }
        } else if user_pass && offers(METHOD_USER_PASS) {
            METHOD_USER_PASS
        } else if offers(METHOD_NO_AUTH) {
            METHOD_NO_AUTH
        } else {
            METHOD_NONE
        };
        self.write(&[SOCKS5, method]).await?;
        if method == METHOD_NONE {
            return Ok(());
        }
        // After a probe the client closes here: the next read ends it.
        let (username, password) = if method == METHOD_USER_PASS {
            let [version, len] = self.read_array::<2>().await?;
            if version != USER_PASS_VERSION {
                return Err(End);
            }
            let username = lossy(self.read_bytes(len).await?);
            let [len] = self.read_array::<1>().await?;
            let password = lossy(self.read_bytes(len).await?);
            self.write(&[USER_PASS_VERSION, 0x00]).await?;
            (Some(username), Some(password))
        } else {
            (None, None)
        };

        let [version, command, _reserved, atyp] = self.read_array::<4>().await?;
        if version != SOCKS5 {
            return Err(End);
        }
        let host = match atyp {
            ATYP_IPV4 => Ipv4Addr::from(self.read_array::<4>().await?).to_string(),
            ATYP_DOMAIN => {
                let [len] = self.read_array::<1>().await?;
                lossy(self.read_bytes(len).await?)
            }
            ATYP_IPV6 => Ipv6Addr::from(self.read_array::<16>().await?).to_string(),
            _ => return self.write(&reply(REP_ATYP_NOT_SUPPORTED)).await,
        };
        let port = u16::from_be_bytes(self.read_array::<2>().await?);
        if command != CMD_CONNECT {
            return self.write(&reply(REP_COMMAND_NOT_SUPPORTED)).await;
        }
        self.world.record(PeerEvent::ProxyConnect {
            host: host.clone(),
            port,
            username: username.clone(),
            password,
        });
        match self.world.proxy_fate(&host, port, username.as_deref()) {
            ProxyFate::Forward { latency } => {
                self.sleep(latency).await;
                self.write(&reply(0x00)).await?;
                self.directory(&host, None).await
            }
            ProxyFate::Reply { code, latency } => {
                self.sleep(latency).await;
                self.write(&reply(code)).await
            }
            ProxyFate::Stall => self.drain().await,
            ProxyFate::CloseEarly => Ok(()),
            ProxyFate::CloseMidHandshake { after } => {
                self.write(&reply(0x00)).await?;
                let cut = self.rt.now() + after;
                self.directory(&host, Some(cut)).await
            }
        }
    }

    /// The directory at `host` on the tunnel, cut at `cut` if given; records
    /// [`PeerEvent::DirectoryClosed`] if it had opened.
    async fn directory(&mut self, host: &str, cut: Option<Instant>) -> Flow {
        let fate = self.world.directory_fate(host);
        let mut opened = false;
        let rt = Arc::clone(&self.rt);
        let result = race(&*rt, cut, self.directory_session(host, fate, &mut opened)).await;
        if opened {
            self.world.record(PeerEvent::DirectoryClosed {
                host: host.to_owned(),
                conn: self.conn,
            });
        }
        result.unwrap_or(Ok(()))
    }

    /// The handshake and what follows, per `fate`. Sets `opened` once the
    /// accepting reply has been sent.
    async fn directory_session(
        &mut self,
        host: &str,
        fate: DirectoryFate,
        opened: &mut bool,
    ) -> Flow {
        let Line::Text(line) = self.next_line(None).await? else {
            return Ok(());
        };
        let (nick, network) = parse_handshake(&line).ok_or(End)?;
        let link_peer = handshake_peer(&line);
        self.world.record(PeerEvent::DirectoryHandshake {
            host: host.to_owned(),
            nick,
            network: network.clone(),
        });
        match fate {
            DirectoryFate::Accept {
                reply_delay,
                drop_after,
                send_ping_after,
            } => {
                self.sleep(reply_delay).await;
                self.write(&accepting_reply(&network)).await?;
                *opened = true;
                self.world.record(PeerEvent::DirectoryOpen {
                    host: host.to_owned(),
                    conn: self.conn,
                });
                self.hold_open(host, drop_after, send_ping_after).await
            }
            DirectoryFate::Reject { motd } => {
                let line = reply_line(&network, false, &motd);
                self.write(&envelope(JM_DN_HANDSHAKE, &line)).await
            }
            DirectoryFate::CloseWithoutReply => Ok(()),
            DirectoryFate::Silent => self.drain().await,
            DirectoryFate::Garbage => {
                self.write(b"not json\r\n").await?;
                self.drain().await
            }
            DirectoryFate::CloseMidReply => {
                let full = accepting_reply(&network);
                self.write(&full[..full.len() / 2]).await
            }
            DirectoryFate::Modelled {
                config,
                reply_delay,
            } => {
                self.sleep(reply_delay).await;
                let features = config.profile.features();
                let reply = reply_line_with(&network, true, "sim", features);
                self.write(&envelope(JM_DN_HANDSHAKE, &reply)).await?;
                self.opened(host, opened);
                self.run_model(host, config, link_peer, None).await
            }
            DirectoryFate::ModelledWith { config, twist } => {
                let features = config.profile.features();
                let reply = reply_line_with(&network, true, "sim", features);
                self.write(&envelope(JM_DN_HANDSHAKE, &reply)).await?;
                self.opened(host, opened);
                self.run_model(host, config, link_peer, Some(twist)).await
            }
            DirectoryFate::SilentAfter { after } => {
                self.write(&accepting_reply(&network)).await?;
                self.opened(host, opened);
                let until = self.rt.now() + after;
                loop {
                    match self.next_line(Some(until)).await? {
                        Line::Text(_) | Line::TooLong => {}
                        Line::Eof => return Ok(()),
                        Line::Deadline => break,
                    }
                }
                std::future::pending::<()>().await;
                Ok(())
            }
            DirectoryFate::Flood { line_len } => {
                self.write(&accepting_reply(&network)).await?;
                self.opened(host, opened);
                let overhead = envelope(JM_PUBMSG, "").len();
                let line = envelope(JM_PUBMSG, &"f".repeat(line_len.saturating_sub(overhead)));
                loop {
                    self.write(&line).await?;
                    // Fair to the other tasks even if the stream never blocks.
                    yield_now().await;
                }
            }
        }
    }

    /// Marks the connection open and records it.
    fn opened(&self, host: &str, opened: &mut bool) {
        *opened = true;
        self.world.record(PeerEvent::DirectoryOpen {
            host: host.to_owned(),
            conn: self.conn,
        });
    }

    /// A modelled link on the runtime's clock, until the client closes or
    /// the model closes.
    async fn run_model(
        &mut self,
        host: &str,
        config: DirectoryConfig,
        peer: LinkPeer,
        twist: Option<Twist>,
    ) -> Flow {
        let now = self.rt.now();
        let limit = config.line_limit;
        let mut link = DirectoryLink::new(config, peer, now, now);
        // The twist's next instant: the silence or DISCONNECT, or the next
        // flood tick (`None` once the flood is over).
        let mut twist_at = match twist {
            Some(Twist::SilentAfter(after) | Twist::DisconnectAfter(after)) => Some(now + after),
            Some(Twist::Flood { .. }) => Some(now),
            None => None,
        };
        let flood_end = match twist {
            Some(Twist::Flood { until, .. }) => now + until,
            _ => now,
        };
        let mut flooded = 0u64;
        loop {
            let deadline = [link.poll_timeout(), twist_at].into_iter().flatten().min();
            let line = self.next_line_within(deadline, limit).await?;
            let now = self.rt.now();
            if twist_at.is_some_and(|at| now >= at) {
                match twist {
                    Some(Twist::SilentAfter(_)) => {
                        self.world.record(PeerEvent::PathSilent {
                            host: host.to_owned(),
                            conn: self.conn,
                            last_sent: self.last_sent,
                        });
                        std::future::pending::<()>().await;
                    }
                    Some(Twist::DisconnectAfter(_)) => {
                        self.world.record(PeerEvent::DirectoryDisconnect {
                            host: host.to_owned(),
                            conn: self.conn,
                        });
                        self.write(&envelope(MODEL_DISCONNECT, "")).await?;
                        return self.drain().await;
                    }
                    Some(Twist::Flood {
                        line_len,
                        lines_per_tick,
                        tick,
                        ..
                    }) => {
                        let overhead = envelope(JM_PUBMSG, "").len();
                        let body = "f".repeat(line_len.saturating_sub(overhead));
                        let message = envelope(JM_PUBMSG, &body);
                        for _ in 0..lines_per_tick {
                            self.write(&message).await?;
                            flooded += message.len() as u64;
                        }
                        let next = now + tick.max(Duration::from_millis(1));
                        twist_at = (next < flood_end).then_some(next);
                        if twist_at.is_none() {
                            self.world.record(PeerEvent::FloodEnded {
                                host: host.to_owned(),
                                conn: self.conn,
                                bytes: flooded,
                            });
                        }
                    }
                    None => twist_at = None,
                }
            }
            match line {
                Line::Text(line) => {
                    let pong = serde_json::from_slice::<Value>(&line)
                        .ok()
                        .and_then(|value| value.get("type")?.as_u64())
                        == Some(u64::from(MODEL_PONG));
                    if pong {
                        self.world.record(PeerEvent::Pong {
                            host: host.to_owned(),
                        });
                    }
                    link.handle_line(self.rt.now(), &line);
                }
                Line::TooLong => link.handle_line_too_long(self.rt.now()),
                Line::Eof => return Ok(()),
                Line::Deadline => link.handle_timeout(now),
            }
            while let Some(output) = link.poll_output() {
                match output {
                    LinkOutput::Send(message) => {
                        if message == crate::jm_message(MODEL_PING, "") {
                            self.world.record(PeerEvent::DirectoryPing {
                                host: host.to_owned(),
                                conn: self.conn,
                            });
                        }
                        self.write(message.as_bytes()).await?;
                    }
                    LinkOutput::Close(_) => {
                        if let Some(close) = link.record().close {
                            self.world.record(PeerEvent::DirectoryModelClose {
                                host: host.to_owned(),
                                conn: self.conn,
                                close,
                            });
                        }
                        return Ok(());
                    }
                }
            }
        }
    }

    /// An accepted connection: reads client messages (recording PONGs),
    /// sends the PING when due, ends at `drop_after` or when the client
    /// closes or sends something that is not a message.
    async fn hold_open(
        &mut self,
        host: &str,
        drop_after: Option<Duration>,
        send_ping_after: Option<Duration>,
    ) -> Flow {
        let replied = self.rt.now();
        let drop_at = drop_after.map(|d| replied + d);
        let mut ping_at = send_ping_after.map(|d| replied + d);
        loop {
            let deadline = [drop_at, ping_at].into_iter().flatten().min();
            match self.next_line(deadline).await? {
                Line::Text(line) => {
                    let value: Value = serde_json::from_slice(&line).map_err(|_| End)?;
                    let kind = value.get("type").and_then(Value::as_u64).ok_or(End)?;
                    if kind == JM_PONG {
                        self.world.record(PeerEvent::Pong {
                            host: host.to_owned(),
                        });
                    }
                }
                Line::Eof => return Ok(()),
                Line::TooLong => return Err(End),
                Line::Deadline => {
                    let now = self.rt.now();
                    if drop_at.is_some_and(|at| now >= at) {
                        return Ok(());
                    }
                    if ping_at.is_some_and(|at| now >= at) {
                        ping_at = None;
                        self.write(&envelope(JM_PING, "")).await?;
                    }
                }
            }
        }
    }

    /// The next directory line, or EOF, or `deadline` passing first. A line
    /// over [`MAX_DIRECTORY_LINE`], EOF mid-line and I/O errors end the
    /// connection.
    async fn next_line(&mut self, deadline: Option<Instant>) -> Result<Line, End> {
        let limit = LineLimit {
            max: MAX_DIRECTORY_LINE,
            terminator_counts: false,
        };
        match self.next_line_within(deadline, limit).await? {
            Line::TooLong => Err(End),
            line => Ok(line),
        }
    }

    /// [`next_line`](Self::next_line) with `limit`, a longer line given as
    /// [`Line::TooLong`] (the connection is unusable after it).
    async fn next_line_within(
        &mut self,
        deadline: Option<Instant>,
        limit: LineLimit,
    ) -> Result<Line, End> {
        let mut scanned = 0;
        loop {
            if let Some(offset) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=scanned + offset).collect();
                line.pop();
                let mut terminator = 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                    terminator = 2;
                }
                if !limit.allows(line.len(), terminator) {
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Text(line));
            }
            scanned = self.buf.len();
            if self.buf.len() > limit.max_pending() {
                self.buf.clear();
                return Ok(Line::TooLong);
            }
            let mut chunk = [0u8; READ_CHUNK];
            let rt = Arc::clone(&self.rt);
            // `read` is cancel-safe: if the deadline wins, nothing was taken.
            match race(&*rt, deadline, self.stream.read(&mut chunk)).await {
                None => return Ok(Line::Deadline),
                Some(Ok(0)) if self.buf.is_empty() => return Ok(Line::Eof),
                Some(Ok(0) | Err(_)) => return Err(End),
                Some(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Holds the connection, discarding whatever arrives, until the client
    /// closes it.
    async fn drain(&mut self) -> Flow {
        self.buf.clear();
        let mut chunk = [0u8; READ_CHUNK];
        while self.stream.read(&mut chunk).await? != 0 {}
        Ok(())
    }

    async fn read_array<const N: usize>(&mut self) -> Result<[u8; N], End> {
        let mut bytes = [0u8; N];
        self.stream.read_exact(&mut bytes).await?;
        Ok(bytes)
    }

    async fn read_bytes(&mut self, len: u8) -> Result<Vec<u8>, End> {
        let mut bytes = vec![0u8; usize::from(len)];
        self.stream.read_exact(&mut bytes).await?;
        Ok(bytes)
    }

    async fn write(&mut self, bytes: &[u8]) -> Flow {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        self.last_sent = self.rt.now();
        Ok(())
    }

    /// Waits `duration` on the runtime's clock (not at all for zero).
    async fn sleep(&mut self, duration: Duration) {
        if !duration.is_zero() {
            let deadline = self.rt.now() + duration;
            self.rt.sleep_until(deadline).await;
        }
    }
}

/// Runs `future` until it completes (`Some`) or `deadline` passes first
/// (`None`, and `future` is dropped). The future is polled first, so a
/// result ready at the deadline wins.
async fn race<F: Future>(
    rt: &dyn Runtime,
    deadline: Option<Instant>,
    future: F,
) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut timer = deadline.map(|at| rt.sleep_until(at));
    poll_fn(move |cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        match timer.as_mut().map(|timer| timer.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    })
    .await
}

/// A SOCKS5 reply with bound address `0.0.0.0:0` (as Tor sends).
fn reply(code: u8) -> [u8; 10] {
    [SOCKS5, code, 0x00, ATYP_IPV4, 0, 0, 0, 0, 0, 0]
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `{"type": kind, "line": line}` + `\r\n`.
fn envelope(kind: u32, line: &str) -> Vec<u8> {
    let mut bytes = json!({ "type": kind, "line": line })
        .to_string()
        .into_bytes();
    bytes.extend_from_slice(b"\r\n");
    bytes
}

/// The nick and network of a client handshake: a 793 envelope whose line
/// is a JSON object with string `nick` and `network`.
fn parse_handshake(line: &[u8]) -> Option<(String, String)> {
    let outer: Value = serde_json::from_slice(line).ok()?;
    if outer.get("type")?.as_u64()? != JM_HANDSHAKE {
        return None;
    }
    let inner: Value = serde_json::from_str(outer.get("line")?.as_str()?).ok()?;
    let field = |name: &str| inner.get(name)?.as_str().map(str::to_owned);
    Some((field("nick")?, field("network")?))
}

/// Yields once to the executor.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

/// What a modelled directory knows of the client from its handshake line
/// (a 793 envelope; anything else reads as a nick-less client without
/// features).
fn handshake_peer(line: &[u8]) -> LinkPeer {
    let inner = serde_json::from_slice::<Value>(line)
        .ok()
        .and_then(|outer| serde_json::from_str::<Value>(outer.get("line")?.as_str()?).ok())
        .unwrap_or(Value::Null);
    LinkPeer::from_handshake(&inner)
}

/// The directory's handshake line (a JSON object as text).
fn reply_line(network: &str, accepted: bool, motd: &str) -> String {
    reply_line_with(network, accepted, motd, &["ping"])
}

/// The directory's handshake line advertising `features`.
fn reply_line_with(network: &str, accepted: bool, motd: &str, features: &[&str]) -> String {
    let features: serde_json::Map<String, Value> = features
        .iter()
        .map(|&name| (name.to_owned(), Value::Bool(true)))
        .collect();
    json!({
        "app-name": "joinmarket",
        "directory": true,
        "proto-ver-min": 5,
        "proto-ver-max": 5,
        "features": features,
        "accepted": accepted,
        "nick": DIRECTORY_NICK,
        "network": network,
        "motd": motd,
    })
    .to_string()
}

/// The whole accepting 795 message, terminator included.
fn accepting_reply(network: &str) -> Vec<u8> {
    envelope(JM_DN_HANDSHAKE, &reply_line(network, true, "sim"))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use dirpool::joinmarket::{DirectoryConnection, JmConfig, JmError, Network, Nick};
    use dirpool::{Client, TokioRuntime};
    use dirpool_core::LinkLoss;
    use tokio::io::DuplexStream;
    use tokio::task::JoinHandle;
    use tokio::time::{Instant as TokioInstant, timeout};

    use super::*;
    use crate::directory_model::{CloseReason, DirectoryProfile};

    const HOST: &str = "simdir2xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion";
    use crate::CLIENT_NICK;
    const LONG: Duration = Duration::from_secs(600);

    /// A world with fixed fates that keeps every event.
    struct World {
        proxy: ProxyFate,
        directory: DirectoryFate,
        user_pass: bool,
        events: Mutex<Vec<PeerEvent>>,
    }

    impl SimWorld for World {
        fn proxy_fate(&self, _: &str, _: u16, _: Option<&str>) -> ProxyFate {
            self.proxy
        }
        fn directory_fate(&self, _: &str) -> DirectoryFate {
            self.directory.clone()
        }
        fn proxy_accepts_user_pass(&self) -> bool {
            self.user_pass
        }
        fn record(&self, event: PeerEvent) {
            self.events.lock().unwrap().push(event);
        }
    }

    fn fixed(proxy: ProxyFate, directory: DirectoryFate, user_pass: bool) -> Arc<World> {
        let events = Mutex::new(Vec::new());
        let world = World {
            proxy,
            directory,
            user_pass,
            events,
        };
        Arc::new(world)
    }

    fn accept(reply_ms: u64, drop_after: Option<u64>, ping_after: Option<u64>) -> DirectoryFate {
        DirectoryFate::Accept {
            reply_delay: Duration::from_millis(reply_ms),
            drop_after: drop_after.map(Duration::from_secs),
            send_ping_after: ping_after.map(Duration::from_secs),
        }
    }

    const FORWARD: ProxyFate = ProxyFate::Forward {
        latency: Duration::from_millis(250),
    };

    fn events(world: &World) -> Vec<PeerEvent> {
        world.events.lock().unwrap().clone()
    }

    fn connected(host: &str, user_pass: bool) -> PeerEvent {
        let (username, password) = (
            user_pass.then(|| "user".into()),
            user_pass.then(|| "pass".into()),
        );
        PeerEvent::ProxyConnect {
            host: host.into(),
            port: 5222,
            username,
            password,
        }
    }

    fn handshake() -> PeerEvent {
        let (host, nick, network) = (HOST.into(), CLIENT_NICK.into(), "regtest".into());
        PeerEvent::DirectoryHandshake {
            host,
            nick,
            network,
        }
    }

    fn directory(open: bool) -> PeerEvent {
        let (host, conn) = (HOST.into(), 7);
        if open {
            PeerEvent::DirectoryOpen { host, conn }
        } else {
            PeerEvent::DirectoryClosed { host, conn }
        }
    }

    fn start(world: &Arc<World>) -> (DuplexStream, JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime::current());
        let world: Arc<dyn SimWorld> = Arc::clone(world) as Arc<dyn SimWorld>;
        (
            client,
            tokio::spawn(serve_proxy_connection(server, world, rt, 7)),
        )
    }

    /// What dirpool's dial sends (async-socks5 behind its method guard):
    /// the greeting offering `methods`, RFC 1929 if 0x02 is picked, a CONNECT
    /// to HOST by name. The 10-byte reply.
    async fn dial(client: &mut DuplexStream, methods: &[u8]) -> io::Result<[u8; 10]> {
        client
            .write_all(&[&[SOCKS5, u8::try_from(methods.len()).unwrap()], methods].concat())
            .await?;
        let mut selection = [0u8; 2];
        client.read_exact(&mut selection).await?;
        if selection[1] == METHOD_USER_PASS {
            client.write_all(b"\x01\x04user\x04pass").await?;
            let mut status = [0u8; 2];
            client.read_exact(&mut status).await?;
            assert_eq!(status, [1, 0]);
        }
        let port = 5222u16.to_be_bytes();
        client
            .write_all(&[&[5, 1, 0, 3, 55], HOST.as_bytes(), &port].concat())
            .await?;
        let mut reply = [0u8; 10];
        client.read_exact(&mut reply).await?;
        Ok(reply)
    }

    /// The address the link is opened for: not an onion, so no nick
    /// authentication.
    fn local() -> dirpool_core::ServerAddr {
        dirpool_core::ServerAddr::parse("127.0.0.1:5222").unwrap()
    }

    fn config() -> JmConfig {
        JmConfig::new(crate::client_identity(), Network::Regtest)
    }

    /// Dials through the proxy, then runs the real JoinMarket client.
    async fn open(world: &Arc<World>) -> (Result<DirectoryConnection, JmError>, JoinHandle<()>) {
        let (mut client, server) = start(world);
        assert_eq!(dial(&mut client, &[0, 2]).await.unwrap(), reply(0));
        (
            DirectoryConnection::open(
                &dirpool::HandshakeContext::new(
                    Arc::new(TokioRuntime::current()),
                    std::time::Instant::now() + LONG,
                ),
                &local(),
                Box::pin(client),
                config(),
            )
            .await,
            server,
        )
    }

    #[test]
    fn the_server_is_send_for_any_send_stream() {
        fn check<S: AsyncRead + AsyncWrite + Unpin + Send>(
            s: S,
            world: Arc<dyn SimWorld>,
            rt: Arc<dyn Runtime>,
        ) -> impl Future<Output = ()> + Send {
            serve_proxy_connection(s, world, rt, 0)
        }
        let _ = check::<DuplexStream>;
    }

    #[tokio::test(start_paused = true)]
    async fn accept_opens_a_real_connection_answers_pings_and_drops_on_time() {
        assert_eq!(
            Nick::parse(DIRECTORY_NICK).unwrap().as_str(),
            DIRECTORY_NICK
        );
        let world = fixed(FORWARD, accept(100, Some(30), Some(5)), true);
        let started = TokioInstant::now();
        let (result, server) = open(&world).await;
        let connection = result.unwrap();
        assert!((350..360).contains(&started.elapsed().as_millis()));
        let info = connection.info();
        assert_eq!(info.nick, DIRECTORY_NICK);
        assert_eq!(info.network.as_deref(), Some("regtest"));
        assert_eq!((info.protocol_min, info.protocol_max), (5, 5));
        assert_eq!(
            (&info.features[..], info.motd.as_deref()),
            (&["ping".to_owned()][..], Some("sim"))
        );
        // The PING is answered while closed() runs the reader.
        assert_eq!(connection.closed().await, LinkLoss::ClosedByPeer);
        assert!((30_350..30_360).contains(&started.elapsed().as_millis()));
        server.await.unwrap();
        let pong = PeerEvent::Pong { host: HOST.into() };
        let expected = [
            connected(HOST, true),
            handshake(),
            directory(true),
            pong,
            directory(false),
        ];
        assert_eq!(events(&world), expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_close_is_recorded_and_no_auth_is_picked_without_user_pass() {
        let world = fixed(FORWARD, accept(0, None, None), false);
        let (mut client, server) = start(&world);
        // A PreferSOCKSNoAuth proxy picks 0x00 when both are offered.
        client.write_all(&[5, 2, 0, 2]).await.unwrap();
        let mut selection = [0u8; 2];
        client.read_exact(&mut selection).await.unwrap();
        assert_eq!(selection, [5, 0]);
        drop(client);
        server.await.unwrap();
        assert_eq!(events(&world), []);

        let (result, server) = open(&world).await;
        result.unwrap().close().await.unwrap();
        server.await.unwrap();
        let expected = [
            connected(HOST, false),
            handshake(),
            directory(true),
            directory(false),
        ];
        assert_eq!(events(&world), expected);
    }

    #[tokio::test(start_paused = true)]
    async fn directory_fates_give_the_clients_errors() {
        type Check = fn(&JmError) -> bool;
        let motd = String::from("go away");
        let cases: [(DirectoryFate, Check); 4] = [
            (
                DirectoryFate::Reject { motd },
                |e| matches!(e, JmError::Rejected { motd: Some(m) } if m == "go away"),
            ),
            (DirectoryFate::CloseWithoutReply, |e| {
                matches!(e, JmError::ClosedWithoutReply)
            }),
            (DirectoryFate::Garbage, |e| matches!(e, JmError::NotJson(_))),
            (DirectoryFate::CloseMidReply, |e| {
                matches!(e, JmError::ClosedMidLine)
            }),
        ];
        for (fate, check) in cases {
            let world = fixed(FORWARD, fate.clone(), true);
            let (result, server) = open(&world).await;
            let error = result.unwrap_err();
            assert!(check(&error), "{fate:?} gave {error:?}");
            server.await.unwrap();
            assert_eq!(events(&world), [connected(HOST, true), handshake()]);
        }
        // Silent holds until the client gives up (and closes).
        let world = fixed(FORWARD, DirectoryFate::Silent, true);
        let (mut client, server) = start(&world);
        assert_eq!(dial(&mut client, &[0, 2]).await.unwrap(), reply(0));
        let context = dirpool::HandshakeContext::new(
            Arc::new(TokioRuntime::current()),
            std::time::Instant::now() + LONG,
        );
        let addr = local();
        let open = DirectoryConnection::open(&context, &addr, Box::pin(client), config());
        assert!(timeout(LONG, open).await.is_err());
        server.await.unwrap();
        assert_eq!(events(&world), [connected(HOST, true), handshake()]);
    }

    #[tokio::test(start_paused = true)]
    async fn every_reply_code_arrives_as_sent() {
        for code in (0x01..=0x08).chain(0xF0..=0xF7) {
            let latency = Duration::from_secs(2);
            let world = fixed(
                ProxyFate::Reply { code, latency },
                DirectoryFate::Silent,
                true,
            );
            let (mut client, server) = start(&world);
            let started = TokioInstant::now();
            assert_eq!(dial(&mut client, &[0, 2]).await.unwrap(), reply(code));
            assert!((2000..2010).contains(&started.elapsed().as_millis()));
            assert_eq!(client.read(&mut [0u8; 8]).await.unwrap(), 0, "closed after");
            server.await.unwrap();
            assert_eq!(events(&world), [connected(HOST, true)]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stalls_early_closes_and_cut_tunnels() {
        let world = fixed(ProxyFate::Stall, DirectoryFate::Silent, true);
        let (mut client, server) = start(&world);
        assert!(timeout(LONG, dial(&mut client, &[0, 2])).await.is_err());
        assert!(!server.is_finished());
        drop(client);
        server.await.unwrap();

        let world = fixed(ProxyFate::CloseEarly, DirectoryFate::Silent, true);
        let (mut client, server) = start(&world);
        let error = dial(&mut client, &[0, 2]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        server.await.unwrap();
        assert_eq!(events(&world), [connected(HOST, true)]);

        // Cut before the directory replies: the client sees a silent close.
        let after = Duration::from_secs(1);
        let world = fixed(
            ProxyFate::CloseMidHandshake { after },
            accept(5000, None, None),
            true,
        );
        let (result, server) = open(&world).await;
        assert!(matches!(result.unwrap_err(), JmError::ClosedWithoutReply));
        server.await.unwrap();
        assert_eq!(events(&world), [connected(HOST, true), handshake()]);

        // Cut after it: an open connection that is lost.
        let after = Duration::from_secs(10);
        let world = fixed(
            ProxyFate::CloseMidHandshake { after },
            accept(0, None, None),
            true,
        );
        let started = TokioInstant::now();
        let (result, server) = open(&world).await;
        assert_eq!(result.unwrap().closed().await, LinkLoss::ClosedByPeer);
        assert!((10_000..10_010).contains(&started.elapsed().as_millis()));
        server.await.unwrap();
        let expected = [
            connected(HOST, true),
            handshake(),
            directory(true),
            directory(false),
        ];
        assert_eq!(events(&world), expected);
    }

    #[tokio::test(start_paused = true)]
    async fn the_isolation_probe_is_answered_as_configured() {
        for (user_pass, offered, answer) in [(true, 2, 2), (false, 2, 0xFF), (true, 1, 0xFF)] {
            let world = fixed(FORWARD, DirectoryFate::Silent, user_pass);
            let (mut client, server) = start(&world);
            client.write_all(&[5, 1, offered]).await.unwrap();
            let mut selection = [0u8; 2];
            client.read_exact(&mut selection).await.unwrap();
            assert_eq!(selection, [5, answer]);
            drop(client); // the probe closes here
            server.await.unwrap();
            let probe = PeerEvent::ProxyAuthProbe {
                accepted: user_pass,
            };
            assert_eq!(
                events(&world),
                if offered == 2 { vec![probe] } else { vec![] }
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ip_targets_are_recorded_and_hostile_bytes_only_close() {
        let code = ProxyFate::Reply {
            code: 4,
            latency: Duration::ZERO,
        };
        let ipv6 = "404:404:404:404:404:404:404:404";
        for (address, host) in [(&[1, 10, 0, 0, 1][..], "10.0.0.1"), (&[4; 17][..], ipv6)] {
            let world = fixed(code, DirectoryFate::Silent, true);
            let (mut client, server) = start(&world);
            client
                .write_all(&[&[5, 1, 0, 5, 1, 0], address, &[0x14, 0x66]].concat())
                .await
                .unwrap();
            let mut answer = [0u8; 12];
            client.read_exact(&mut answer).await.unwrap();
            assert_eq!(answer[2..], reply(4));
            server.await.unwrap();
            assert_eq!(events(&world), [connected(host, false)]);
        }

        // Over-long and malformed directory lines: the server closes by itself.
        let oversize = vec![b'x'; MAX_DIRECTORY_LINE + 10];
        let no_nick = b"{\"type\": 793, \"line\": \"{}\"}\n".to_vec();
        for line in [oversize, b"hello\r\n".to_vec(), no_nick] {
            let world = fixed(FORWARD, accept(0, None, None), true);
            let (mut client, server) = start(&world);
            dial(&mut client, &[0]).await.unwrap();
            let _ = client.write_all(&line).await;
            let mut rest = Vec::new();
            timeout(LONG, client.read_to_end(&mut rest))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(rest, b"");
            server.await.unwrap();
        }

        // Noise after assorted valid prefixes, then EOF: never a panic.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let prefixes: [&[u8]; 4] = [
            b"",
            b"\x05\x01\x00",
            b"\x05\x01\x02\x01",
            b"\x05\x01\x00\x05\x01\x00\x03",
        ];
        for round in 0..400 {
            let mut bytes = prefixes[round % prefixes.len()].to_vec();
            for _ in 0..round % 40 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed.to_le_bytes()[0]);
            }
            let world = fixed(FORWARD, accept(0, Some(1), Some(0)), true);
            let (mut client, server) = start(&world);
            let _ = client.write_all(&bytes).await;
            let _ = client.shutdown().await;
            let _ = timeout(LONG, client.read_to_end(&mut Vec::new()))
                .await
                .unwrap();
            server.await.unwrap();
        }
    }

    /// Dials, sends a valid handshake (with `ping`) by hand and reads the
    /// reply line.
    async fn handshaked(world: &Arc<World>) -> (DuplexStream, JoinHandle<()>, Value) {
        let (mut client, server) = start(world);
        assert_eq!(dial(&mut client, &[0]).await.unwrap(), reply(0));
        let handshake = crate::jm_client_handshake(CLIENT_NICK, "regtest");
        let message = crate::jm_message(793, &handshake.to_string());
        client.write_all(message.as_bytes()).await.unwrap();
        let line = read_line(&mut client).await.unwrap();
        let outer: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(outer["type"], 795);
        let inner = serde_json::from_str(outer["line"].as_str().unwrap()).unwrap();
        (client, server, inner)
    }

    /// One line, terminator included; `None` at EOF.
    async fn read_line(client: &mut DuplexStream) -> Option<Vec<u8>> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.last() != Some(&b'\n') {
            if client.read(&mut byte).await.unwrap() == 0 {
                return None;
            }
            line.push(byte[0]);
        }
        Some(line)
    }

    fn modelled(profile: DirectoryProfile) -> DirectoryFate {
        DirectoryFate::Modelled {
            config: DirectoryConfig::new(profile, DIRECTORY_NICK),
            reply_delay: Duration::ZERO,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_modelled_ng_directory_evicts_a_silent_client_on_the_virtual_clock() {
        let world = fixed(FORWARD, modelled(DirectoryProfile::JoinmarketNg), true);
        let (mut client, server, reply) = handshaked(&world).await;
        let opened = TokioInstant::now();
        assert_eq!(
            reply["features"],
            json!({"peerlist_features": true, "ping": true})
        );
        let ping = read_line(&mut client).await.unwrap();
        assert_eq!(ping, crate::jm_message(798, "").as_bytes());
        // Sweeps from the reply: idle 600 s is not > 600 s at the tenth.
        assert_eq!(opened.elapsed(), Duration::from_secs(660));
        assert_eq!(read_line(&mut client).await, None);
        assert_eq!(opened.elapsed(), Duration::from_secs(690));
        server.await.unwrap();
        let events = events(&world);
        let close = events
            .iter()
            .find_map(|event| match event {
                PeerEvent::DirectoryModelClose { close, .. } => Some(*close),
                _ => None,
            })
            .unwrap();
        assert_eq!(close.reason, CloseReason::PongTimeout);
        let ping = PeerEvent::DirectoryPing {
            host: HOST.into(),
            conn: 7,
        };
        assert!(events.contains(&ping));
        assert_eq!(events.last(), Some(&directory(false)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_modelled_link_that_pongs_lives_a_day_and_the_reference_never_pings() {
        let world = fixed(FORWARD, modelled(DirectoryProfile::JoinmarketRs), true);
        let (mut client, server, _) = handshaked(&world).await;
        let opened = TokioInstant::now();
        let mut pings = 0;
        while opened.elapsed() < Duration::from_secs(86_400) {
            let line = read_line(&mut client).await.unwrap();
            assert_eq!(line, crate::jm_message(798, "").as_bytes());
            pings += 1;
            client.write_all(&envelope(799, "")).await.unwrap();
        }
        assert!(pings > 100, "{pings}");
        drop(client);
        server.await.unwrap();
        let events = events(&world);
        assert!(
            !events
                .iter()
                .any(|event| matches!(event, PeerEvent::DirectoryModelClose { .. }))
        );

        let world = fixed(FORWARD, modelled(DirectoryProfile::Reference), true);
        let (mut client, server, reply) = handshaked(&world).await;
        assert_eq!(reply["features"], json!({}));
        let started = TokioInstant::now();
        assert!(
            timeout(Duration::from_secs(86_400), read_line(&mut client))
                .await
                .is_err()
        );
        assert!(started.elapsed() >= Duration::from_secs(86_400));
        client.write_all(&envelope(801, "")).await.unwrap();
        assert_eq!(read_line(&mut client).await, None);
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn silent_after_and_flood_fates() {
        let after = Duration::from_secs(5);
        let world = fixed(FORWARD, DirectoryFate::SilentAfter { after }, true);
        let (mut client, server, reply) = handshaked(&world).await;
        assert_eq!(reply["accepted"], true);
        // Read and discarded while the path works, then nothing at all.
        client.write_all(&envelope(798, "")).await.unwrap();
        assert!(timeout(LONG, read_line(&mut client)).await.is_err());
        assert!(!server.is_finished());
        server.abort();

        let world = fixed(FORWARD, DirectoryFate::Flood { line_len: 500 }, true);
        let (mut client, server, _) = handshaked(&world).await;
        let started = TokioInstant::now();
        for _ in 0..100 {
            let line = read_line(&mut client).await.unwrap();
            assert_eq!(line.len(), 500);
            assert!(line.starts_with(b"{\"line\":\"fff"), "{line:?}");
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(client);
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn modelled_twists_silence_disconnect_and_flood() {
        let config = DirectoryConfig::new(DirectoryProfile::JoinmarketNg, DIRECTORY_NICK);
        // Silent after 5 s: PINGs answered before, nothing after.
        let twist = Twist::SilentAfter(Duration::from_secs(5));
        let fate = DirectoryFate::ModelledWith {
            config: config.clone(),
            twist,
        };
        let world = fixed(FORWARD, fate, true);
        let (mut client, server, _) = handshaked(&world).await;
        client.write_all(&envelope(798, "")).await.unwrap();
        assert_eq!(
            read_line(&mut client).await.unwrap(),
            crate::jm_message(799, "").as_bytes()
        );
        // Past the silence, on the paused clock.
        tokio::time::advance(Duration::from_secs(6)).await;
        client.write_all(&envelope(798, "")).await.unwrap();
        assert!(timeout(LONG, read_line(&mut client)).await.is_err());
        assert!(
            events(&world)
                .iter()
                .any(|e| matches!(e, PeerEvent::PathSilent { .. }))
        );
        server.abort();

        // DISCONNECT after 5 s, then reading until the client closes.
        let twist = Twist::DisconnectAfter(Duration::from_secs(5));
        let fate = DirectoryFate::ModelledWith {
            config: config.clone(),
            twist,
        };
        let world = fixed(FORWARD, fate, true);
        let (mut client, server, _) = handshaked(&world).await;
        let started = TokioInstant::now();
        assert_eq!(read_line(&mut client).await.unwrap(), envelope(801, ""));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        drop(client);
        server.await.unwrap();
        assert_eq!(events(&world).last(), Some(&directory(false)));

        // A flood of 3 lines every second for 2 s.
        let twist = Twist::Flood {
            line_len: 100,
            lines_per_tick: 3,
            tick: Duration::from_secs(1),
            until: Duration::from_secs(2),
        };
        let world = fixed(FORWARD, DirectoryFate::ModelledWith { config, twist }, true);
        let (mut client, server, _) = handshaked(&world).await;
        for _ in 0..6 {
            assert_eq!(read_line(&mut client).await.unwrap().len(), 100);
        }
        assert!(
            timeout(Duration::from_secs(30), read_line(&mut client))
                .await
                .is_err()
        );
        drop(client);
        server.await.unwrap();
        assert!(
            events(&world)
                .iter()
                .any(|e| matches!(e, PeerEvent::FloodEnded { bytes, .. } if *bytes == 600))
        );
    }
}
