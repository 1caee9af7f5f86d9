//! What the `maker` and `taker` examples share: the command line, the
//! loopback world, offers, and the maker itself (the taker runs the same
//! makers in-process).

use std::collections::BTreeSet;
use std::error::Error;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use dirpool::joinmarket::{
    Command, JmConfig, JoinMarketHandshake, Message, Messaging, MessagingConfig, Network, Nick,
    NickIdentity, RecvError,
};
use dirpool::loopback::{LoopbackDirectory, LoopbackError, LoopbackProxy};
use dirpool::{Config, DirectoryPool};
use dirpool_core::{IsolationScope, ServerAddr};
use futures::future::{Either, select};

/// Bound on queueing one line on one directory link.
const SEND_WITHIN: Duration = Duration::from_secs(10);

/// The options both examples take.
pub(crate) struct CommandLine {
    /// `--socks HOST:PORT`: real directories through this proxy (Tor).
    pub(crate) socks: Option<SocketAddr>,
    /// `--network NAME`.
    pub(crate) network: Option<Network>,
    /// The seconds option (`--for` or `--wait`).
    pub(crate) seconds: Option<Duration>,
    /// Directory addresses (with `--socks` only).
    pub(crate) directories: Vec<String>,
    /// `-h` or `--help`.
    pub(crate) help: bool,
}

/// Parses `--socks`, `--network`, `seconds_option`, `-h`/`--help` and
/// directory addresses.
pub(crate) fn parse_command_line(
    mut args: impl Iterator<Item = String>,
    seconds_option: &str,
) -> Result<CommandLine, String> {
    let mut line = CommandLine {
        socks: None,
        network: None,
        seconds: None,
        directories: Vec::new(),
        help: false,
    };
    while let Some(arg) = args.next() {
        if !arg.starts_with('-') {
            line.directories.push(arg);
            continue;
        }
        let (name, value) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        if name == "-h" || name == "--help" {
            line.help = true;
            continue;
        }
        let value = match value {
            Some(value) => value,
            None => args.next().ok_or(format!("{name} needs a value"))?,
        };
        match name.as_str() {
            "--socks" => {
                let bad = |why: String| format!("--socks {value:?}: {why} (expected HOST:PORT)");
                let addr = value
                    .to_socket_addrs()
                    .map_err(|e| bad(e.to_string()))?
                    .next();
                line.socks = Some(addr.ok_or_else(|| bad("no address".to_owned()))?);
            }
            "--network" => {
                line.network = Some(value.parse().map_err(|e| format!("--network: {e}"))?);
            }
            name if name == seconds_option => {
                let seconds: f64 = value.parse().unwrap_or(-1.0);
                match Duration::try_from_secs_f64(seconds) {
                    Ok(d) if !d.is_zero() && d <= Duration::from_secs(365 * 86_400) => {
                        line.seconds = Some(d);
                    }
                    _ => {
                        return Err(format!(
                            "{name} {value:?}: expected a positive number of seconds"
                        ));
                    }
                }
            }
            _ => return Err(format!("unknown option {name} (see --help)")),
        }
    }
    if line.socks.is_some() == line.directories.is_empty() {
        return Err("give --socks HOST:PORT and directory addresses, or neither (loopback)".into());
    }
    Ok(line)
}

/// Loopback directories behind a loopback SOCKS5 proxy, each reachable
/// under a fake onion name: a JoinMarket world without Tor.
pub(crate) struct LoopbackWorld {
    /// The proxy (put its address in `Config::proxy`).
    pub(crate) proxy: LoopbackProxy,
    /// The directories' onion addresses, in order.
    pub(crate) onions: Vec<ServerAddr>,
    /// Kept running while the world lives.
    _directories: Vec<LoopbackDirectory>,
}

impl LoopbackWorld {
    /// Starts `count` directories for `network` and a proxy routing to them.
    pub(crate) fn start(count: usize, network: Network) -> Result<Self, LoopbackError> {
        let proxy = LoopbackProxy::start()?;
        let directories = (0..count)
            .map(|_| LoopbackDirectory::start(network))
            .collect::<Result<Vec<_>, _>>()?;
        let onions = directories
            .iter()
            .map(|d| proxy.route_directory(d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            proxy,
            onions,
            _directories: directories,
        })
    }
}

/// A JoinMarket offer: `!<kind> <oid> <minsize> <maxsize> <txfee> <cjfee>`
/// (reference `src/jmdaemon/protocol.py`, `offertypes`; joinmarket-ng
/// `maker/src/maker/protocol_handlers.py`, `_send_offers_to_taker`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Offer {
    /// `sw0reloffer` (cjfee a fraction of the amount) or `sw0absoffer`
    /// (cjfee in satoshis).
    pub(crate) kind: String,
    /// Offer id, per maker.
    pub(crate) oid: u32,
    /// Smallest coinjoin amount, satoshis.
    pub(crate) minsize: u64,
    /// Largest coinjoin amount, satoshis.
    pub(crate) maxsize: u64,
    /// The maker's contribution to the mining fee, satoshis.
    pub(crate) txfee: u64,
    /// The coinjoin fee, as sent (a decimal fraction or satoshis).
    pub(crate) cjfee: String,
}

impl Offer {
    /// The offer in a message body.
    pub(crate) fn command(&self) -> Command {
        let args = [
            self.oid.to_string(),
            self.minsize.to_string(),
            self.maxsize.to_string(),
            self.txfee.to_string(),
            self.cjfee.clone(),
        ];
        Command::new(self.kind.as_str(), args).expect("offer fields are plain tokens")
    }

    /// The offer a command carries, if it is a well-formed segwit offer.
    #[allow(
        dead_code,
        reason = "the taker's; the maker example compiles this module too"
    )]
    pub(crate) fn from_command(command: &Command) -> Option<Self> {
        let relative = match command.name() {
            "sw0reloffer" => true,
            "sw0absoffer" => false,
            _ => return None,
        };
        let [oid, minsize, maxsize, txfee, cjfee] = command.args() else {
            return None;
        };
        let fee_ok = if relative {
            cjfee.parse::<f64>().is_ok_and(|f| (0.0..1.0).contains(&f))
        } else {
            cjfee.parse::<u64>().is_ok()
        };
        let offer = Self {
            kind: command.name().to_owned(),
            oid: oid.parse().ok()?,
            minsize: minsize.parse().ok()?,
            maxsize: maxsize.parse().ok()?,
            txfee: txfee.parse().ok()?,
            cjfee: cjfee.clone(),
        };
        (fee_ok && offer.minsize <= offer.maxsize).then_some(offer)
    }
}

impl fmt::Display for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.command())
    }
}

/// The offers of the `n`th example maker: joinmarket-ng's defaults
/// (`jmcore/src/jmcore/settings.py`, `MakerSettings`: `sw0reloffer`,
/// minimum 100,000 sat, relative fee 0.00002, absolute fee 500 sat, no
/// mining fee contribution), with balances and fees that differ per maker.
pub(crate) fn example_offers(n: usize) -> Vec<Offer> {
    let offer = |kind: &str, oid, maxsize, cjfee: &str| Offer {
        kind: kind.to_owned(),
        oid,
        minsize: 100_000,
        maxsize,
        txfee: 0,
        cjfee: cjfee.to_owned(),
    };
    match n % 3 {
        0 => vec![
            offer("sw0reloffer", 0, 48_513_220, "0.00002"),
            offer("sw0absoffer", 1, 48_513_220, "500"),
        ],
        1 => vec![offer("sw0reloffer", 0, 12_750_000, "0.0003")],
        _ => vec![offer("sw0absoffer", 0, 231_004_117, "1200")],
    }
}

/// A pool of directories with the messaging layer on top.
pub(crate) struct Participant {
    /// Our nick (our identity's).
    pub(crate) nick: Nick,
    /// Our key: signs our private messages.
    pub(crate) identity: Arc<NickIdentity>,
    /// The pool.
    pub(crate) pool: DirectoryPool<JoinMarketHandshake>,
    /// Messages across every directory.
    pub(crate) messaging: Messaging,
}

impl Participant {
    /// Connects to `directories` through `proxy` with a fresh nick, with
    /// stream isolation (Tor's default `IsolateSOCKSAuth` honours it; the
    /// loopback proxy accepts any credentials); returns once every dial
    /// ended (within the pool's connection timeout), with how many
    /// directories are connected.
    pub(crate) async fn connect(
        proxy: SocketAddr,
        directories: &[String],
        network: Network,
    ) -> Result<(Self, usize), Box<dyn Error>> {
        let identity = Arc::new(NickIdentity::random()?);
        let nick = identity.nick().clone();
        let mut config = Config::new(directories.iter().cloned());
        config.proxy = proxy;
        config.pool.isolation = IsolationScope::PerCategory;
        let handshake = JoinMarketHandshake::new(JmConfig::new(Arc::clone(&identity), network))?;
        let pool = DirectoryPool::builder(config, handshake).spawn_smol()?;
        // Before connecting, so it sees every link from its first line.
        let messaging = Messaging::new(&pool, MessagingConfig::new(Arc::clone(&identity)))?;
        let connected = pool.connect_all_parallel().await?;
        // Lost or unreached directories are redialed from now on.
        pool.start_maintenance()?;
        let participant = Self {
            nick,
            identity,
            pool,
            messaging,
        };
        Ok((participant, connected))
    }

    /// Sends a private message through every connected directory at once,
    /// each within its deadline (as joinmarket-ng's maker answers
    /// `!orderbook`); directories that do not carry `to` drop it. Returns
    /// how many took it.
    pub(crate) async fn send_everywhere(
        &self,
        to: &Nick,
        body: &str,
    ) -> Result<usize, Box<dyn Error>> {
        let envelope = self.identity.sign_private(to.clone(), body)?.to_envelope();
        let sends = self.pool.clients().into_iter().map(|(_, link)| {
            let envelope = envelope.clone();
            async move {
                let send = Box::pin(async move { link.send(&envelope).await });
                match select(send, smol::Timer::after(SEND_WITHIN)).await {
                    Either::Left((result, _)) => result.is_ok(),
                    Either::Right(_) => false,
                }
            }
        });
        let taken = futures::future::join_all(sends).await;
        Ok(taken.into_iter().filter(|ok| *ok).count())
    }
}

/// A maker: announces its offers and answers every `!orderbook` privately
/// with them, through every directory (joinmarket-ng
/// `maker/src/maker/protocol_handlers.py`: one private message per offer,
/// sent through every connected directory). Its offers are for show: it has
/// no wallet and cannot fill them.
pub(crate) struct Maker {
    /// The pool and messaging.
    pub(crate) participant: Participant,
    /// What it offers.
    pub(crate) offers: Vec<Offer>,
}

impl Maker {
    /// Connects and announces `offers` publicly (one message, all offers).
    pub(crate) async fn start(
        proxy: SocketAddr,
        directories: &[String],
        network: Network,
        offers: Vec<Offer>,
    ) -> Result<(Self, usize), Box<dyn Error>> {
        let (participant, connected) = Participant::connect(proxy, directories, network).await?;
        let commands: Vec<Command> = offers.iter().map(Offer::command).collect();
        let body = dirpool::joinmarket::commands_body(&commands);
        participant.messaging.broadcast(&body).await?;
        Ok((
            Self {
                participant,
                offers,
            },
            connected,
        ))
    }

    /// Answers `!orderbook` requests until the pool is gone; `on_request`
    /// hears of each: the taker, and through how many directories the
    /// offers went (the most that took any one offer).
    pub(crate) async fn serve(&self, on_request: impl Fn(&Nick, usize)) {
        let messaging = &self.participant.messaging;
        loop {
            let incoming = match messaging.recv().await {
                Ok(incoming) => incoming,
                Err(RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let Message::Public(message) = &incoming.message else {
                continue;
            };
            let asked = message
                .commands()
                .is_ok_and(|c| c.iter().any(|c| c.name() == "orderbook"));
            if !asked || message.from() == &self.participant.nick {
                continue;
            }
            let mut through = 0;
            for offer in &self.offers {
                let body = offer.command().to_string();
                let taken = self
                    .participant
                    .send_everywhere(message.from(), &body)
                    .await;
                through = through.max(taken.unwrap_or(0));
            }
            on_request(message.from(), through);
        }
    }
}

/// The directories a set of node ids names, as `1,3` (positions in `all`,
/// from 1).
#[allow(
    dead_code,
    reason = "the taker's; the maker example compiles this module too"
)]
pub(crate) fn directory_numbers(all: &[Arc<ServerAddr>], relayed: &BTreeSet<String>) -> String {
    all.iter()
        .enumerate()
        .filter(|(_, d)| relayed.contains(d.node_id()))
        .map(|(i, _)| (i + 1).to_string())
        .collect::<Vec<_>>()
        .join(",")
}
