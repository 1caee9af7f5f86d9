//! A real, private Tor network on loopback for the real-Tor tests.
//!
//! [`TorNetwork::shared`] starts, once per test process, the network of
//! `tests/tor/private-network` (3 directory authorities, 5 relays, two
//! client tors with a SocksPort and a ControlPort each, one onion-service
//! tor for four services, and a tor of its own for each of the two services
//! that are stopped and restarted) in front of six JoinMarket-speaking
//! directories ([`JmDirectory`]) published as the onion services of
//! [`SERVICES`]. Every tor process exits when the test process does
//! (`__OwningControllerProcess`); the data directory,
//! `$TMPDIR/dirpool-tor-PID` with every tor's log, stays for a post-mortem
//! until the next run removes it.
//!
//! [`Control`] is a minimal Tor control-port client (cookie
//! authentication, commands, GETINFO, asynchronous events), enough to see
//! what Tor did with the pool's streams (`stream-status`, `circuit-status`)
//! and to send it signals. [`socks5_connect`] opens one SOCKS5 stream by
//! hand.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dirpool_core::ServerAddr;

use crate::directory_model::{DirectoryConfig, DirectoryProfile, HeartbeatTimings};
use crate::{JM_DIRECTORY_NICK, JmBehaviour, JmDirectory, JmModelled};

/// The onion port every service exposes (JoinMarket's default).
pub const ONION_PORT: u16 = 5222;

/// The onion services of the shared network: `alpha` and `beta` on the
/// shared onion-service tor, `gamma` and `delta` each on a tor of its own
/// (see [`TorNetwork::kill_service`]), and on the shared tor `epsilon` and
/// `zeta`, whose directories model joinmarket-ng (see [`behaviour`]):
/// `epsilon` with a fast heartbeat, `zeta` with the real one.
pub const SERVICES: [(&str, ServiceTor); 6] = [
    ("alpha", ServiceTor::Shared),
    ("beta", ServiceTor::Shared),
    ("gamma", ServiceTor::Own),
    ("delta", ServiceTor::Own),
    ("epsilon", ServiceTor::Shared),
    ("zeta", ServiceTor::Shared),
];

/// The heartbeat of the `epsilon` directory: joinmarket-ng's timings / 100
/// (sweep 0.6 s, PING after 6 s idle, hard eviction after 15 s), but 2 s
/// for the PONG rather than 0.3 s, for the onion circuit's round trip on a
/// loaded machine.
#[must_use]
pub fn fast_heartbeat() -> HeartbeatTimings {
    HeartbeatTimings {
        pong_wait: Duration::from_secs(2),
        ..HeartbeatTimings::default().scaled_down(100)
    }
}

/// How the directory behind the service `name` behaves: `epsilon` models
/// joinmarket-ng with [`fast_heartbeat`], `zeta` joinmarket-ng with the real
/// timings (it never PINGs within a test), the others accept and record
/// ([`JmBehaviour::default`]).
#[must_use]
pub fn behaviour(name: &str) -> JmBehaviour {
    let ng = |timings| {
        JmBehaviour::Modelled(JmModelled::with_config(
            DirectoryConfig::new(DirectoryProfile::JoinmarketNg, JM_DIRECTORY_NICK)
                .with_timings(timings),
        ))
    };
    match name {
        "epsilon" => ng(fast_heartbeat()),
        "zeta" => ng(HeartbeatTimings::default()),
        _ => JmBehaviour::default(),
    }
}

/// Which tor publishes an onion service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceTor {
    /// The shared onion-service tor.
    Shared,
    /// A tor of its own, which can be stopped and restarted.
    Own,
}

/// One of the network's two client tors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorClient {
    /// `client`: shared by the tests that leave it running.
    First,
    /// `client2`: for the test that stops and restarts it.
    Second,
}

impl TorClient {
    fn node(self) -> &'static str {
        match self {
            Self::First => "client",
            Self::Second => "client2",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::First => "CLIENT",
            Self::Second => "CLIENT2",
        }
    }
}

/// A running private Tor network and the directories behind its onions.
pub struct TorNetwork {
    dir: PathBuf,
    env: BTreeMap<String, String>,
    directories: Vec<(&'static str, JmDirectory)>,
    startup: Duration,
}

impl std::fmt::Debug for TorNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorNetwork")
            .field("dir", &self.dir)
            .field("startup", &self.startup)
            .finish_non_exhaustive()
    }
}

/// The network script.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tor/private-network")
}

/// Removes the data directories of earlier test processes that are gone.
fn remove_stale_networks(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("dirpool-tor-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl TorNetwork {
    /// The network of this test process, started on first use.
    ///
    /// # Panics
    /// If the network cannot start: the message says why, with the tail of
    /// every tor log (and what to install if tor is missing).
    pub fn shared() -> &'static TorNetwork {
        static NETWORK: OnceLock<TorNetwork> = OnceLock::new();
        NETWORK.get_or_init(|| {
            // The script picks ports that are free, then starts the tors: a
            // port can be taken in between by another process (another test
            // binary's network, seen in CI). The failed start stopped what
            // it started; one more try picks new ports.
            match Self::start() {
                Err(error) if error.contains("Address already in use") => Self::start(),
                started => started,
            }
            .unwrap_or_else(|e| panic!("{e}"))
        })
    }

    /// Starts the directories and the network.
    fn start() -> Result<Self, String> {
        let parent = std::env::temp_dir();
        remove_stale_networks(&parent);
        let dir = parent.join(format!("dirpool-tor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut directories = Vec::new();
        let mut command = Command::new(script());
        command
            .arg("start")
            .arg(&dir)
            .arg("--owner")
            .arg(std::process::id().to_string());
        for (name, tor) in SERVICES {
            let directory = JmDirectory::start(behaviour(name))
                .map_err(|e| format!("cannot start the {name} directory: {e}"))?;
            command
                .arg(match tor {
                    ServiceTor::Shared => "--service",
                    ServiceTor::Own => "--own-service",
                })
                .arg(format!("{name}={}", directory.port()));
            directories.push((name, directory));
        }
        let started = Instant::now();
        let output = command
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
        let startup = started.elapsed();
        if !output.status.success() {
            return Err(format!(
                "the private Tor network did not start ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            ));
        }
        let description = dir.join("network.env");
        let text = std::fs::read_to_string(&description)
            .map_err(|e| format!("cannot read {}: {e}", description.display()))?;
        let env = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        Ok(Self {
            dir,
            env,
            directories,
            startup,
        })
    }

    fn value(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("network.env has no {key}"))
    }

    fn port(&self, key: &str) -> u16 {
        self.value(key)
            .parse()
            .unwrap_or_else(|e| panic!("network.env: {key}: {e}"))
    }

    /// How long the script took to start the network.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// The SocksPort of `client`.
    pub fn socks(&self, client: TorClient) -> SocketAddr {
        SocketAddr::from((
            [127, 0, 0, 1],
            self.port(&format!("{}_SOCKS_PORT", client.key())),
        ))
    }

    /// An authenticated control connection to `client`.
    ///
    /// # Errors
    /// If the control port cannot be reached or refuses the cookie.
    pub fn control(&self, client: TorClient) -> io::Result<Control> {
        Control::connect(
            self.port(&format!("{}_CONTROL_PORT", client.key())),
            Path::new(self.value(&format!("{}_COOKIE", client.key()))),
        )
    }

    /// An authenticated control connection to the onion-service tor.
    ///
    /// # Errors
    /// As [`control`](Self::control).
    pub fn service_control(&self) -> io::Result<Control> {
        Control::connect(
            self.port("SERVICE_CONTROL_PORT"),
            Path::new(self.value("SERVICE_COOKIE")),
        )
    }

    /// The onion address (port 5222) of the service `name`.
    pub fn onion(&self, name: &str) -> ServerAddr {
        let host = self.value(&format!("ONION_{}", name.to_uppercase()));
        ServerAddr::parse(&format!("{host}:{ONION_PORT}")).expect("a valid onion address")
    }

    /// A valid v3 onion address (port 5222) that nobody publishes.
    pub fn unpublished(&self) -> ServerAddr {
        let host = self.value("UNPUBLISHED_ONION");
        ServerAddr::parse(&format!("{host}:{ONION_PORT}")).expect("a valid onion address")
    }

    /// The configuration, in arti's TOML form, of an arti client of this
    /// network with its state and cache under `dir`: the authorities as
    /// fallback directory caches, their v3 identities, path rules that let
    /// relays which all share 127.0.0.1 make one path (the subnet family
    /// prefixes past the address length), and the onion time period C tor
    /// uses in a testing network, 24 voting intervals, as arti's
    /// `hsdir_interval` in minutes (see /work/shared/notes/arti-private-network.md).
    ///
    /// # Panics
    /// If network.env lacks an authority's keys, or the voting interval
    /// gives no whole number of minutes of at least 5.
    pub fn arti_toml(&self, dir: &Path) -> String {
        let authorities: usize = self
            .value("AUTHORITY_COUNT")
            .parse()
            .expect("AUTHORITY_COUNT");
        let (mut caches, mut v3idents) = (Vec::new(), Vec::new());
        for i in 1..=authorities {
            caches.push(format!(
                "  {{ rsa_identity = \"{}\", ed_identity = \"{}\", orports = [\"127.0.0.1:{}\"] }},",
                self.value(&format!("AUTH{i}_RSA_FINGERPRINT")),
                self.value(&format!("AUTH{i}_ED25519")),
                self.port(&format!("AUTH{i}_ORPORT")),
            ));
            v3idents.push(format!("\"{}\"", self.value(&format!("AUTH{i}_V3IDENT"))));
        }
        let interval: u64 = self
            .value("VOTING_INTERVAL")
            .parse()
            .expect("VOTING_INTERVAL");
        assert!(
            (24 * interval) % 60 == 0 && 24 * interval / 60 >= 5,
            "a voting interval of {interval} s gives arti no onion time period"
        );
        format!(
            "[tor_network]\nfallback_caches = [\n{}\n]\n\
             [tor_network.authorities]\nv3idents = [{}]\n\
             [path_rules]\nipv4_subnet_family_prefix = 33\nipv6_subnet_family_prefix = 129\n\
             [override_net_params]\nhsdir_interval = {}\n\
             [storage]\nstate_dir = \"{}\"\ncache_dir = \"{}\"\n\
             [storage.permissions]\ndangerously_trust_everyone = true\n",
            caches.join("\n"),
            v3idents.join(", "),
            24 * interval / 60,
            dir.join("state").display(),
            dir.join("cache").display(),
        )
    }

    /// A fresh directory for an arti client's state, under the network's
    /// data directory (removed with it).
    ///
    /// # Panics
    /// If it cannot be made.
    pub fn arti_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.join("arti").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("arti state directory");
        dir
    }

    /// The process id of the onion-service tor of the restartable service
    /// `name` (`GETINFO process/pid`).
    ///
    /// # Errors
    /// If its control port cannot be reached or answers no pid.
    pub fn service_pid(&self, name: &str) -> io::Result<u32> {
        let key = format!("SVC_{}", name.to_uppercase());
        Control::connect(
            self.port(&format!("{key}_CONTROL_PORT")),
            Path::new(self.value(&format!("{key}_COOKIE"))),
        )?
        .getinfo("process/pid")?
        .first()
        .and_then(|pid| pid.parse().ok())
        .ok_or_else(|| io::Error::other("no process/pid"))
    }

    /// The directory behind the onion service `name`.
    pub fn directory(&self, name: &str) -> &JmDirectory {
        self.directories
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("no directory {name}"))
    }

    fn run_script(&self, args: &[&str]) -> io::Result<()> {
        let output = Command::new(script()).args(args).output()?;
        if output.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "private-network {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            )))
        }
    }

    /// The process id of `client`'s tor (`GETINFO process/pid`).
    ///
    /// # Errors
    /// If the control port cannot be reached or answers no pid.
    pub fn client_pid(&self, client: TorClient) -> io::Result<u32> {
        self.control(client)?
            .getinfo("process/pid")?
            .first()
            .and_then(|pid| pid.parse().ok())
            .ok_or_else(|| io::Error::other("no process/pid"))
    }

    /// Kills `client`'s tor and waits until it has exited.
    ///
    /// # Errors
    /// If the script fails.
    pub fn kill_client(&self, client: TorClient) -> io::Result<()> {
        let dir = self.dir.to_string_lossy();
        self.run_script(&["kill-node", &dir, client.node()])
    }

    /// Starts `client`'s tor again (same ports, same data directory).
    ///
    /// # Errors
    /// If the script fails.
    pub fn restart_client(&self, client: TorClient) -> io::Result<()> {
        let dir = self.dir.to_string_lossy();
        self.run_script(&["restart-node", &dir, client.node()])
    }

    /// Kills the onion-service tor of the restartable service `name` (its
    /// own tor: the service is gone, circuits and all) and waits until it
    /// has exited.
    ///
    /// # Errors
    /// If the script fails.
    pub fn kill_service(&self, name: &str) -> io::Result<()> {
        let dir = self.dir.to_string_lossy();
        self.run_script(&["kill-node", &dir, &format!("svc-{name}")])
    }

    /// Starts the onion-service tor of `name` again and waits until it has
    /// uploaded its descriptors.
    ///
    /// # Errors
    /// If the script fails.
    pub fn restart_service(&self, name: &str) -> io::Result<()> {
        let dir = self.dir.to_string_lossy();
        self.run_script(&["restart-node", &dir, &format!("svc-{name}")])
    }
}

/// A minimal Tor control-port client.
pub struct Control {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    events: Vec<String>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

/// How long a command's reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

impl Control {
    /// Connects to `127.0.0.1:port` and authenticates with the cookie file.
    ///
    /// # Errors
    /// If it cannot connect or Tor refuses the cookie.
    pub fn connect(port: u16, cookie: &Path) -> io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let mut control = Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            events: Vec::new(),
        };
        let cookie = std::fs::read(cookie)?;
        let hex: String = cookie.iter().map(|b| format!("{b:02x}")).collect();
        control.command(&format!("AUTHENTICATE {hex}"))?;
        Ok(control)
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    /// Reads one reply or event: its lines, the data of `+` lines folded
    /// in (each data line on its own), status code prefixes kept on the
    /// first line of each part.
    fn read_reply(&mut self) -> io::Result<(String, Vec<String>)> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.len() < 4 {
                return Err(io::Error::other(format!("bad control line {line:?}")));
            }
            let (code, sep, rest) = (&line[..3], &line[3..4], &line[4..]);
            lines.push(rest.to_owned());
            match sep {
                " " => return Ok((code.to_owned(), lines)),
                "+" => loop {
                    let data = self.read_line()?;
                    if data == "." {
                        break;
                    }
                    lines.push(data.strip_prefix('.').unwrap_or(&data).to_owned());
                },
                _ => {}
            }
        }
    }

    /// Sends `command` and returns the lines of its `250` reply (the final
    /// `OK` included); events arriving meanwhile are kept for
    /// [`next_event`](Self::next_event).
    ///
    /// # Errors
    /// On I/O errors or any other status than 250.
    pub fn command(&mut self, command: &str) -> io::Result<Vec<String>> {
        self.writer.write_all(format!("{command}\r\n").as_bytes())?;
        loop {
            let (code, lines) = self.read_reply()?;
            if code == "650" {
                self.events.push(lines.join("\n"));
                continue;
            }
            if code != "250" {
                let shown = command.split(' ').next().unwrap_or_default();
                return Err(io::Error::other(format!(
                    "{shown}: Tor answered {code} {}",
                    lines.join(" ")
                )));
            }
            return Ok(lines);
        }
    }

    /// The value lines of `GETINFO key`.
    ///
    /// # Errors
    /// As [`command`](Self::command).
    pub fn getinfo(&mut self, key: &str) -> io::Result<Vec<String>> {
        let lines = self.command(&format!("GETINFO {key}"))?;
        let prefix = format!("{key}=");
        Ok(lines
            .into_iter()
            .filter(|l| l != "OK")
            .map(|l| l.strip_prefix(&prefix).map(str::to_owned).unwrap_or(l))
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// The next asynchronous event (after `SETEVENTS`), waiting up to
    /// `timeout`; `None` if none came.
    ///
    /// # Errors
    /// On I/O errors.
    pub fn next_event(&mut self, timeout: Duration) -> io::Result<Option<String>> {
        if !self.events.is_empty() {
            return Ok(Some(self.events.remove(0)));
        }
        self.writer.set_read_timeout(Some(timeout))?;
        let result = self.read_reply();
        self.writer.set_read_timeout(Some(REPLY_TIMEOUT))?;
        match result {
            Ok((_, lines)) => Ok(Some(lines.join("\n"))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Tor's open streams (`GETINFO stream-status`).
    ///
    /// # Errors
    /// As [`command`](Self::command).
    pub fn streams(&mut self) -> io::Result<Vec<TorStream>> {
        Ok(self
            .getinfo("stream-status")?
            .iter()
            .filter_map(|line| {
                let mut fields = line.split(' ');
                Some(TorStream {
                    id: fields.next()?.to_owned(),
                    status: fields.next()?.to_owned(),
                    circuit: fields.next()?.to_owned(),
                    target: fields.next()?.to_owned(),
                })
            })
            .collect())
    }

    /// Tor's circuits (`GETINFO circuit-status`).
    ///
    /// # Errors
    /// As [`command`](Self::command).
    pub fn circuits(&mut self) -> io::Result<Vec<TorCircuit>> {
        Ok(self
            .getinfo("circuit-status")?
            .iter()
            .filter_map(|line| {
                let (id, rest) = line.split_once(' ')?;
                Some(TorCircuit {
                    id: id.to_owned(),
                    purpose: keyword(rest, "PURPOSE"),
                    socks_username: keyword(rest, "SOCKS_USERNAME"),
                    socks_password: keyword(rest, "SOCKS_PASSWORD"),
                })
            })
            .collect())
    }
}

/// The value of `KEY=value` or `KEY="quoted value"` in a control line.
fn keyword(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '"' => return Some(value),
                c => value.push(c),
            }
        }
        None
    } else {
        Some(rest.split(' ').next().unwrap_or_default().to_owned())
    }
}

/// A stream as `GETINFO stream-status` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorStream {
    /// Tor's stream id.
    pub id: String,
    /// `SUCCEEDED`, `SENTCONNECT`, …
    pub status: String,
    /// The id of its circuit (`0` if none yet).
    pub circuit: String,
    /// `host:port`.
    pub target: String,
}

/// A circuit as `GETINFO circuit-status` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorCircuit {
    /// Tor's circuit id.
    pub id: String,
    /// `PURPOSE=`, e.g. `HS_CLIENT_REND`.
    pub purpose: Option<String>,
    /// The SOCKS username of the streams it was built for, if any.
    pub socks_username: Option<String>,
    /// The SOCKS password of the streams it was built for, if any.
    pub socks_password: Option<String>,
}

/// Opens a SOCKS5 stream to `host:port` through `proxy`, with
/// username/password authentication if `credentials` are given. Returns the
/// stream, or the reply code of a refused CONNECT.
///
/// # Errors
/// On I/O errors or a proxy that breaks the protocol.
pub fn socks5_connect(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    credentials: Option<(&str, &str)>,
    timeout: Duration,
) -> io::Result<Result<TcpStream, u8>> {
    let mut stream = TcpStream::connect_timeout(&proxy, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let method = if credentials.is_some() { 2 } else { 0 };
    stream.write_all(&[5, 1, method])?;
    let mut answer = [0u8; 2];
    stream.read_exact(&mut answer)?;
    if answer != [5, method] {
        return Err(io::Error::other(format!("proxy chose method {answer:?}")));
    }
    if let Some((user, password)) = credentials {
        let mut auth = vec![1, u8::try_from(user.len()).expect("short username")];
        auth.extend_from_slice(user.as_bytes());
        auth.push(u8::try_from(password.len()).expect("short password"));
        auth.extend_from_slice(password.as_bytes());
        stream.write_all(&auth)?;
        stream.read_exact(&mut answer)?;
        if answer[1] != 0 {
            return Err(io::Error::other("proxy refused the credentials"));
        }
    }
    let mut request = vec![5, 1, 0, 3, u8::try_from(host.len()).expect("short host")];
    request.extend_from_slice(host.as_bytes());
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request)?;
    let mut reply = [0u8; 10];
    stream.read_exact(&mut reply)?;
    if reply[1] != 0 {
        return Ok(Err(reply[1]));
    }
    stream.set_read_timeout(None)?;
    Ok(Ok(stream))
}

/// A process stopped with SIGSTOP (a tor, to make its path silent without
/// closing a socket), resumed with SIGCONT when dropped.
#[derive(Debug)]
pub struct Stopped(u32);

impl Stopped {
    /// Stops process `pid`.
    ///
    /// # Panics
    /// If `kill -STOP` fails.
    pub fn stop(pid: u32) -> Self {
        signal(pid, "STOP");
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "kill -{signal} {pid}: {status:?}"
    );
}
