//! Attempts and the connections they become, in a generational slab.
//!
//! A slab rather than a map: O(1) without hashing (std's hasher seeds itself
//! from the OS, which would make the machine depend on hidden randomness),
//! no allocation once warm, and the generation makes every id unique for as
//! long as a result for it can still arrive.

use crate::output::{AttemptId, ServerId};

/// What an attempt has become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// Dial in flight; the server's current attempt.
    Dialing,
    /// The machine gave up on the dial (timed out, or aborted by close_all);
    /// its result is still due and a success becomes a stray close.
    Abandoned,
    /// Connected and registered.
    Open,
    /// Close requested for a registered connection.
    Closing,
    /// Close requested for a connection that was never registered.
    StrayClosing,
    /// Close timed out; its result is still due.
    CloseAbandoned,
}

impl LinkState {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Dialing => "dialing",
            Self::Abandoned => "abandoned",
            Self::Open => "open",
            Self::Closing => "closing",
            Self::StrayClosing => "closing (stray)",
            Self::CloseAbandoned => "close abandoned",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Link {
    pub(crate) server: ServerId,
    pub(crate) state: LinkState,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    link: Option<Link>,
}

#[derive(Debug, Default)]
pub(crate) struct Links {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
}

fn split(id: AttemptId) -> (usize, u32) {
    // Low half: slot index; high half: generation. Both fit a u32.
    let index = u32::try_from(id.0 & u64::from(u32::MAX)).unwrap_or(u32::MAX) as usize;
    let generation = u32::try_from(id.0 >> 32).unwrap_or(u32::MAX);
    (index, generation)
}

impl Links {
    pub(crate) fn insert(&mut self, link: Link) -> AttemptId {
        self.live += 1;
        let (index, generation) = match self.free.pop() {
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                slot.generation = slot.generation.wrapping_add(1);
                slot.link = Some(link);
                (index, slot.generation)
            }
            None => {
                let index = u32::try_from(self.slots.len()).expect("more than 2^32 live attempts");
                self.slots.push(Slot {
                    generation: 0,
                    link: Some(link),
                });
                (index, 0)
            }
        };
        AttemptId(u64::from(generation) << 32 | u64::from(index))
    }

    pub(crate) fn get(&self, id: AttemptId) -> Option<&Link> {
        let (index, generation) = split(id);
        let slot = self.slots.get(index)?;
        if slot.generation == generation {
            slot.link.as_ref()
        } else {
            None
        }
    }

    pub(crate) fn get_mut(&mut self, id: AttemptId) -> Option<&mut Link> {
        let (index, generation) = split(id);
        let slot = self.slots.get_mut(index)?;
        if slot.generation == generation {
            slot.link.as_mut()
        } else {
            None
        }
    }

    pub(crate) fn remove(&mut self, id: AttemptId) -> Option<Link> {
        let (index, generation) = split(id);
        let slot = self.slots.get_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        let link = slot.link.take()?;
        self.live -= 1;
        // Index fits: it came from a u32.
        self.free.push(u32::try_from(index).unwrap_or(u32::MAX));
        Some(link)
    }

    // Read only by the test kit's queries (`pending_attempts`, `live_clients`).
    #[cfg(any(test, feature = "test-kit"))]
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    #[cfg(any(test, feature = "test-kit"))]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (AttemptId, &Link)> {
        self.slots.iter().enumerate().filter_map(|(index, slot)| {
            let link = slot.link.as_ref()?;
            Some((
                AttemptId(u64::from(slot.generation) << 32 | index as u64),
                link,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(n: u32) -> Link {
        Link {
            server: ServerId(n),
            state: LinkState::Dialing,
        }
    }

    #[test]
    fn reused_slots_get_fresh_ids() {
        let mut links = Links::default();
        let a = links.insert(link(1));
        assert_eq!(links.remove(a).map(|l| l.server), Some(ServerId(1)));
        let b = links.insert(link(2));
        assert_ne!(a, b);
        assert!(links.get(a).is_none(), "stale id must not see the new link");
        assert!(links.remove(a).is_none());
        assert_eq!(links.get(b).map(|l| l.server), Some(ServerId(2)));
        assert_eq!(links.len(), 1);
        assert_eq!(links.iter().map(|(id, _)| id).collect::<Vec<_>>(), [b]);
    }

    #[test]
    fn unknown_ids_are_none() {
        let mut links = Links::default();
        assert!(links.get(AttemptId(99)).is_none());
        assert!(links.get_mut(AttemptId(u64::MAX)).is_none());
        assert!(links.remove(AttemptId(7 << 32)).is_none());
    }
}
