//! Attempts and the connections they become, in a generational slab.
//!
//! A slab rather than a map: O(1) without hashing (std's hasher seeds itself
//! from the OS, which would make the machine depend on hidden randomness),
//! no allocation once warm, and the generation makes every id unique for as
//! long as a result for it can still arrive. Free slots form a list through
//! the slots themselves, so a slab sized by a burst of 100,000 dials costs
//! 12 bytes a slot and nothing more.

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
    content: Content,
}

#[derive(Debug, Clone, Copy)]
enum Content {
    Live(Link),
    /// Free; the next free slot, or [`NO_SLOT`].
    Free(u32),
}

/// The end of the free list.
const NO_SLOT: u32 = u32::MAX;

#[derive(Debug)]
pub(crate) struct Links {
    slots: Vec<Slot>,
    /// The most recently freed slot (reused first), or [`NO_SLOT`].
    free: u32,
    live: usize,
}

impl Default for Links {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: NO_SLOT,
            live: 0,
        }
    }
}

impl Slot {
    fn link(&self, generation: u32) -> Option<&Link> {
        match &self.content {
            Content::Live(link) if self.generation == generation => Some(link),
            _ => None,
        }
    }
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
        let (index, generation) = if self.free == NO_SLOT {
            let index = u32::try_from(self.slots.len())
                .ok()
                .filter(|&i| i != NO_SLOT)
                .expect("fewer than 2^32 - 1 live attempts");
            self.slots.push(Slot {
                generation: 0,
                content: Content::Live(link),
            });
            (index, 0)
        } else {
            let index = self.free;
            let slot = &mut self.slots[index as usize];
            if let Content::Free(next) = slot.content {
                self.free = next;
            }
            slot.generation = slot.generation.wrapping_add(1);
            slot.content = Content::Live(link);
            (index, slot.generation)
        };
        AttemptId(u64::from(generation) << 32 | u64::from(index))
    }

    pub(crate) fn get(&self, id: AttemptId) -> Option<&Link> {
        let (index, generation) = split(id);
        self.slots.get(index)?.link(generation)
    }

    pub(crate) fn get_mut(&mut self, id: AttemptId) -> Option<&mut Link> {
        let (index, generation) = split(id);
        match self.slots.get_mut(index)? {
            Slot {
                generation: g,
                content: Content::Live(link),
            } if *g == generation => Some(link),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, id: AttemptId) -> Option<Link> {
        let (index, generation) = split(id);
        let slot = self.slots.get_mut(index)?;
        let link = *slot.link(generation)?;
        // Index fits: it came from a u32.
        slot.content = Content::Free(self.free);
        self.free = u32::try_from(index).unwrap_or(NO_SLOT);
        self.live -= 1;
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
            let link = slot.link(slot.generation)?;
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
        assert!(links.get_mut(a).is_none(), "nor change it");
        assert!(links.remove(a).is_none());
        assert_eq!(links.get(b).map(|l| l.server), Some(ServerId(2)));
        assert_eq!(links.len(), 1);
        assert_eq!(links.iter().map(|(id, _)| id).collect::<Vec<_>>(), [b]);
    }

    #[test]
    fn freed_slots_are_reused_before_the_slab_grows() {
        let mut links = Links::default();
        let ids: Vec<_> = (0..4).map(|n| links.insert(link(n))).collect();
        links.remove(ids[1]);
        links.remove(ids[3]);
        let a = links.insert(link(10));
        let b = links.insert(link(11));
        let c = links.insert(link(12));
        assert_eq!(links.slots.len(), 5, "two slots reused, then one new");
        let slot = |id: AttemptId| split(id).0;
        assert_eq!([slot(a), slot(b), slot(c)], [3, 1, 4]);
        for (id, n) in [(ids[0], 0), (ids[2], 2), (a, 10), (b, 11), (c, 12)] {
            assert_eq!(links.get(id).map(|l| l.server), Some(ServerId(n)));
        }
        assert!(links.get(ids[1]).is_none() && links.get(ids[3]).is_none());
        assert_eq!(links.len(), 5);
    }

    #[test]
    fn unknown_ids_are_none() {
        let mut links = Links::default();
        assert!(links.get(AttemptId(99)).is_none());
        assert!(links.get_mut(AttemptId(u64::MAX)).is_none());
        assert!(links.remove(AttemptId(7 << 32)).is_none());
    }
}
