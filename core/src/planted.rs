//! Deliberate bugs, compiled only with `--cfg dirpool_planted_bugs`, so
//! the simulation can show it catches realistic mistakes. A normal build
//! (any features) contains none of this.

use std::sync::atomic::{AtomicU8, Ordering};

/// A realistic mistake the machine could make.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// A dial that succeeds after `close_all` (or after its timeout) is
    /// registered instead of closed. (The driver's `Abortable` keeps such
    /// successes from reaching the core on a single-threaded executor, so
    /// only the core's own tests can catch this one.)
    RegisterLateSuccess,
    /// A pass dials servers that are already being dialed.
    DialInFlightAgain,
    /// `close_all` forgets to abort the dials in flight.
    ForgetToAbortDials,
    /// A lost link is not subtracted from the connected count.
    MiscountLostLink,
    /// Issue 14, defect 2: links are never probed, so a silent path stays
    /// "connected" for ever.
    NoKeepalive,
    /// Issue 14, defect 9: a connect command that arrives while `close_all`
    /// is still closing a link dials nothing for it.
    NoRedialAfterClose,
    /// Issue 14, defect 1: the JoinMarket client answers PING 797 (an old
    /// spec's number) instead of 798, so current directories evict it.
    OldPingNumber,
    /// Issue 14, defect 3: the link's reader stops reading once the user's
    /// queue is full, so the directory's PINGs go unanswered.
    ReaderParksWhenFull,
    /// Issue 14, defect 4: the inbound queue has no byte bound.
    UnboundedInbound,
    /// Issue 14, defect 5: hooks run without a deadline; a hung hook holds
    /// every later hook call (and the clients they carry).
    HooksWithoutDeadline,
    /// Issue 14, defect 8: a proxy that accepts TCP and never answers SOCKS
    /// is not bounded by the proxy timeout, so each dial times out on its
    /// own and is blamed on the directory.
    NoProxyTimeout,
}

/// Every planted bug, in code order.
pub const ALL: [Bug; 11] = [
    Bug::RegisterLateSuccess,
    Bug::ForgetToAbortDials,
    Bug::MiscountLostLink,
    Bug::DialInFlightAgain,
    Bug::NoKeepalive,
    Bug::NoRedialAfterClose,
    Bug::OldPingNumber,
    Bug::ReaderParksWhenFull,
    Bug::UnboundedInbound,
    Bug::HooksWithoutDeadline,
    Bug::NoProxyTimeout,
];

static PLANTED: AtomicU8 = AtomicU8::new(0);

/// Plants `bug` (or none) for the whole process.
pub fn plant(bug: Option<Bug>) {
    let code = bug.map_or(0, |bug| {
        ALL.iter()
            .position(|b| *b == bug)
            .map_or(0, |i| u8::try_from(i + 1).unwrap_or(0))
    });
    PLANTED.store(code, Ordering::SeqCst);
}

/// Whether `bug` is planted now (the adapters ask too).
pub fn active(bug: Bug) -> bool {
    let code = PLANTED.load(Ordering::SeqCst);
    code != 0 && ALL.get(usize::from(code) - 1) == Some(&bug)
}
