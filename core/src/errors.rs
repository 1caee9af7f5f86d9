//! Why a configuration is refused: [`ConfigError`], and the configured
//! entries the pool leaves out ([`RejectedEntry`]). A module of its own so
//! that the modules it serves (configuration, backoff, the pool) import it
//! and not each other.

use std::fmt;
use std::time::Duration;

use crate::addr::AddrError;
use crate::output::ServerId;

/// A configured entry that is not dialed.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedEntry {
    /// Position in the configured list.
    pub index: usize,
    /// The entry as configured.
    pub entry: String,
    /// Why.
    pub reason: Rejection,
}

/// Why a configured entry is not dialed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// The address is malformed.
    Malformed(AddrError),
    /// It names a server listed earlier.
    Duplicate(ServerId),
}

/// A configuration or policy value the pool cannot work with.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The server list is empty.
    #[error("no directory servers configured")]
    NoServers,
    /// Every configured server was rejected: each entry, with why.
    #[error("{}", NoValidServers(rejected))]
    NoValidServers {
        /// Every configured entry, with its reason (in configured order).
        rejected: Vec<RejectedEntry>,
    },
    /// A duration that must be positive is zero.
    #[error("{field} must be greater than zero")]
    ZeroDuration {
        /// The field.
        field: &'static str,
    },
    /// A duration longer than a year.
    #[error("{field} is longer than one year")]
    DurationTooLong {
        /// The field.
        field: &'static str,
    },
    /// A backoff's maximum is below its initial delay.
    #[error("{field}: max delay is below the initial delay")]
    MaxBelowInitial {
        /// The field.
        field: &'static str,
    },
    /// A backoff factor below 1 or not finite.
    #[error("{field}: factor must be a finite number >= 1, got {factor}")]
    InvalidFactor {
        /// The field.
        field: &'static str,
        /// The value given.
        factor: f64,
    },
    /// A keepalive interval short enough to trip a directory's PING rate
    /// limit.
    #[error(
        "keepalive.idle {idle:?} is below {min:?}: directories disconnect a peer that pings more often"
    )]
    ProbeTooFrequent {
        /// The value given.
        idle: Duration,
        /// The least allowed.
        min: Duration,
    },
    /// A jitter fraction outside `0.0..=1.0`.
    #[error("{field}: jitter must be within 0.0..=1.0, got {jitter}")]
    InvalidJitter {
        /// The field.
        field: &'static str,
        /// The value given.
        jitter: f64,
    },
}

/// Entries shown in [`ConfigError::NoValidServers`]'s message; the rest
/// are counted. The error itself keeps them all.
const SHOWN_REJECTIONS: usize = 8;

/// Characters of an entry shown in a message.
const SHOWN_ENTRY_CHARS: usize = 80;

/// The message of [`ConfigError::NoValidServers`]: each rejected entry
/// (at most [`SHOWN_REJECTIONS`], each cut to [`SHOWN_ENTRY_CHARS`]) with
/// its reason, so the message is bounded whatever the configuration.
struct NoValidServers<'a>(&'a [RejectedEntry]);

impl fmt::Display for NoValidServers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "none of the {} configured directory servers is usable",
            self.0.len()
        )?;
        for (n, entry) in self.0.iter().take(SHOWN_REJECTIONS).enumerate() {
            f.write_str(if n == 0 { ": " } else { "; " })?;
            let text = match entry.entry.char_indices().nth(SHOWN_ENTRY_CHARS) {
                Some((end, _)) => format!("{}…", &entry.entry[..end]),
                None => entry.entry.clone(),
            };
            write!(f, "#{} {text:?}: ", entry.index)?;
            match &entry.reason {
                Rejection::Malformed(error) => write!(f, "{error}")?,
                Rejection::Duplicate(server) => write!(f, "duplicate of server {server}")?,
            }
        }
        if let Some(more) = self
            .0
            .len()
            .checked_sub(SHOWN_REJECTIONS)
            .filter(|&n| n > 0)
        {
            write!(f, "; and {more} more")?;
        }
        Ok(())
    }
}
