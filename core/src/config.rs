//! What the pool is told up front: its servers, its timeouts, isolation and
//! the retry and maintenance policies, plus the randomness it is handed.

use std::time::Duration;

use crate::backoff::{Backoff, MAX_POLICY_DURATION};
pub use crate::errors::ConfigError;
use crate::isolation::{IsolationScope, IsolationToken};

/// The pool's configuration.
///
/// ```
/// use std::time::Duration;
/// use dirpool_core::{IsolationScope, PoolConfig};
///
/// let mut config = PoolConfig::new(["127.0.0.1:5222", "localhost"]);
/// config.connection_timeout = Duration::from_secs(60);
/// config.isolation = IsolationScope::PerCategory;
/// assert!(config.validate().is_ok());
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Directory servers as `"host"` or `"host:port"` (default port 5222).
    pub servers: Vec<String>,
    /// Bound on one dial: proxy connect, SOCKS exchange, Tor circuit and
    /// handshake together. Default 120 s, as the original.
    pub connection_timeout: Duration,
    /// How long a close may take before the pool stops waiting for it.
    /// Default 10 s.
    pub close_timeout: Duration,
    /// SOCKS stream isolation. Default off, as the original.
    pub isolation: IsolationScope,
    /// The background redial policy used while maintenance runs.
    pub maintenance: MaintenancePolicy,
    /// How connected links are watched for a silent path.
    pub keepalive: KeepalivePolicy,
}

impl PoolConfig {
    /// A configuration with the given servers and every default.
    pub fn new<I, S>(servers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            servers: servers.into_iter().map(Into::into).collect(),
            connection_timeout: Duration::from_secs(120),
            close_timeout: Duration::from_secs(10),
            isolation: IsolationScope::Off,
            maintenance: MaintenancePolicy::default(),
            keepalive: KeepalivePolicy::default(),
        }
    }

    /// Checks everything but the addresses (a malformed address is reported
    /// and skipped, not fatal).
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.servers.is_empty() {
            return Err(ConfigError::NoServers);
        }
        check_duration("connection_timeout", self.connection_timeout)?;
        check_duration("close_timeout", self.close_timeout)?;
        self.maintenance.validate()?;
        self.keepalive.validate()
    }
}

fn check_duration(field: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        Err(ConfigError::ZeroDuration { field })
    } else if value > MAX_POLICY_DURATION {
        Err(ConfigError::DurationTooLong { field })
    } else {
        Ok(())
    }
}

/// Policy of `connect_all_with_retry`: keep dialing until one server is
/// connected or `timeout` has passed.
///
/// The defaults are the original's: 5 s initial delay, ×1.5 per failure, at
/// most 30 s, no jitter.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Hard deadline of the whole operation, from the moment it starts.
    pub timeout: Duration,
    /// Delay between a server's failed dial and its next one.
    pub backoff: Backoff,
}

impl RetryPolicy {
    /// The original's policy with the given overall timeout.
    pub const fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            backoff: Backoff::new(Duration::from_secs(5), Duration::from_secs(30), 1.5),
        }
    }

    /// Checks the policy.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // A zero timeout is allowed: one pass, finished at once.
        if self.timeout > MAX_POLICY_DURATION {
            return Err(ConfigError::DurationTooLong {
                field: "retry.timeout",
            });
        }
        self.backoff.validate("retry.backoff")
    }
}

/// Policy of background maintenance: every server that is lost or was never
/// reached is redialed on its own backoff.
///
/// The defaults (1 s, ×2, at most 10 s, ±20 % jitter, unlimited retries,
/// stable after 60 s) bring a directory back within about 10 s of its return.
/// The original's maker instead polls every 300 s; raise `backoff.max` for
/// that behaviour.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaintenancePolicy {
    /// Delay before each redial; the step grows with consecutive failures and
    /// with links that die before `stable_after`.
    pub backoff: Backoff,
    /// After this many consecutive failed dials of one server, maintenance
    /// gives up on it (0 = never). Reset when the server connects; proxy
    /// failures do not count.
    pub max_retries: u32,
    /// A link that stays up this long resets its server's backoff; a link
    /// that dies sooner counts as a failure, so a flapping directory is not
    /// hammered.
    pub stable_after: Duration,
}

impl Default for MaintenancePolicy {
    fn default() -> Self {
        Self {
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(10), 2.0)
                .with_jitter(0.2),
            max_retries: 0,
            stable_after: Duration::from_secs(60),
        }
    }
}

impl MaintenancePolicy {
    /// Checks the policy.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.backoff.validate("maintenance.backoff")?;
        if self.stable_after > MAX_POLICY_DURATION {
            return Err(ConfigError::DurationTooLong {
                field: "maintenance.stable_after",
            });
        }
        Ok(())
    }
}

/// How the pool watches each connected link.
///
/// A link that shows no sign of life (no line read, no probe answered) for
/// `idle` is probed once; a probe unanswered after `probe_timeout` means the
/// path is dead and the link is declared lost
/// ([`LinkLoss::KeepaliveTimeout`](crate::LinkLoss::KeepaliveTimeout)), so a
/// silent path is found at most `idle + probe_timeout` after its last sign
/// of life. A healthy idle link is probed at most once per `idle`.
///
/// The defaults (30 s, 30 s) find a silent path within 60 s and send at
/// most two probes a minute on an idle link: a third of what joinmarket-rs
/// allows (6 PING a minute per peer; it disconnects a peer that sends more),
/// and far inside joinmarket-ng's heartbeat (it PINGs a peer idle for
/// 600 s and evicts it 30 s later without a PONG).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepalivePolicy {
    /// Quiet time after which a link is probed. At least
    /// [`MIN_PROBE_INTERVAL`], so no directory's PING rate limit is reached.
    pub idle: Duration,
    /// How long a probe may go unanswered before the link is declared lost.
    pub probe_timeout: Duration,
}

/// The shortest allowed [`KeepalivePolicy::idle`]. joinmarket-rs
/// disconnects a peer whose PING finds 6 others in the minute before it
/// (`crates/joinmarket-dn/src/peer.rs`, `MAX_PING_PER_MINUTE`); probes every
/// 10 s put exactly 6 there (the window includes its start), so the floor
/// sits at 15 s (at most 4 others), which also leaves room for the jitter
/// of Tor's latency.
pub const MIN_PROBE_INTERVAL: Duration = Duration::from_secs(15);

impl Default for KeepalivePolicy {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(30),
        }
    }
}

impl KeepalivePolicy {
    /// A policy with these timings.
    pub const fn new(idle: Duration, probe_timeout: Duration) -> Self {
        Self {
            idle,
            probe_timeout,
        }
    }

    /// The longest a silent path can stay unnoticed: `idle + probe_timeout`.
    pub fn loss_bound(&self) -> Duration {
        self.idle.saturating_add(self.probe_timeout)
    }

    /// Checks the policy.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_duration("keepalive.idle", self.idle)?;
        check_duration("keepalive.probe_timeout", self.probe_timeout)?;
        if self.idle < MIN_PROBE_INTERVAL {
            return Err(ConfigError::ProbeTooFrequent {
                idle: self.idle,
                min: MIN_PROBE_INTERVAL,
            });
        }
        Ok(())
    }
}

/// The randomness the pool needs, made by the caller: the core never reads
/// an RNG, so a run is a pure function of its inputs.
#[derive(Debug, Clone, Copy)]
pub struct Entropy {
    /// The per-process isolation secret (16 random bytes).
    pub isolation_token: IsolationToken,
    /// Seed of the backoff jitter.
    pub jitter_seed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_original() {
        let c = PoolConfig::new(["a.example"]);
        assert_eq!(c.connection_timeout, Duration::from_secs(120));
        assert_eq!(c.isolation, IsolationScope::Off);
        let r = RetryPolicy::new(Duration::from_secs(120));
        assert_eq!(r.backoff.initial, Duration::from_secs(5));
        assert_eq!(r.backoff.max, Duration::from_secs(30));
        assert!((r.backoff.factor - 1.5).abs() < f64::EPSILON);
        assert!(c.validate().is_ok() && r.validate().is_ok());
    }

    #[test]
    fn rejects_bad_values() {
        assert_eq!(
            PoolConfig::new(Vec::<String>::new()).validate(),
            Err(ConfigError::NoServers)
        );
        let mut c = PoolConfig::new(["a.example"]);
        c.connection_timeout = Duration::ZERO;
        assert_eq!(
            c.validate(),
            Err(ConfigError::ZeroDuration {
                field: "connection_timeout"
            })
        );
        let mut c = PoolConfig::new(["a.example"]);
        c.maintenance.backoff.factor = 0.5;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InvalidFactor { .. })
        ));
        let mut r = RetryPolicy::new(Duration::from_secs(1));
        r.backoff.jitter = 2.0;
        assert!(matches!(
            r.validate(),
            Err(ConfigError::InvalidJitter { .. })
        ));
    }
}
