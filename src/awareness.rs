//! Presence policy: who announced which awareness client ids, and when their states go away.
//!
//! Relaying awareness is easy; the product problem is ghosts. A browser that crashes or loses
//! its network never sends the "I left" update, so the server must retract, on the client's
//! behalf, every state a connection announced, and sweep states nobody renewed. This module
//! keeps that bookkeeping apart from the room loop and has no IO, so it is tested directly.
//!
//! It owns its own `yrs::sync::Awareness` over a private, empty `Doc`: awareness never reads
//! document content, and keeping it apart means the room's `Doc` is touched only by updates.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use tokio::time::{Duration, Instant};
use yrs::sync::Awareness;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::{ClientID, Doc};

use crate::id::PeerId;
use crate::protocol;

pub(crate) struct Presence {
    awareness: Awareness,
    /// Client ids each connection announced a live state for.
    owners: HashMap<PeerId, HashSet<ClientID>>,
    timeout: Duration,
    origin: Instant,
    /// Entries applied since the last `take_pending` (the latest per client): relayed as
    /// one update per tick instead of one frame per cursor move.
    pending: HashMap<ClientID, AwarenessUpdateEntry>,
}

impl Presence {
    pub(crate) fn new(timeout: Duration) -> Presence {
        // A monotonic clock on tokio's time, so paused-time tests can drive the sweep.
        let origin = Instant::now();
        let clock = move || origin.elapsed().as_millis() as u64;
        let awareness = Awareness::with_clock(Doc::new(), clock);
        Presence { awareness, owners: HashMap::new(), timeout, origin, pending: HashMap::new() }
    }

    /// Applies a peer's awareness update; true when anything changed and it should be relayed.
    pub(crate) fn apply(&mut self, peer: PeerId, update: AwarenessUpdate) -> bool {
        let entries = update.clients.clone();
        let summary = match self.awareness.apply_update_summary(update) {
            Ok(Some(summary)) => summary,
            // Ok(None): every entry was stale. Err only arises for unknown ids on encode.
            Ok(None) | Err(_) => return false,
        };
        let owned = self.owners.entry(peer).or_default();
        owned.extend(summary.added.iter().chain(&summary.updated).copied());
        for id in &summary.removed {
            owned.remove(id);
        }
        let changed = summary.added.iter().chain(&summary.updated).chain(&summary.removed);
        for id in changed {
            if let Some(entry) = entries.get(id) {
                self.pending.insert(*id, entry.clone());
            }
        }
        true
    }

    /// One frame with every state that changed since the last call, if any did.
    pub(crate) fn take_pending(&mut self) -> Option<Bytes> {
        if self.pending.is_empty() {
            return None;
        }
        let update = AwarenessUpdate { clients: std::mem::take(&mut self.pending) };
        Some(protocol::awareness(&update))
    }

    /// Forgets a connection: removes the states it announced and returns the frame that tells
    /// the others, if there was anything to remove.
    pub(crate) fn remove_peer(&mut self, peer: PeerId) -> Option<Bytes> {
        let ids = self.owners.remove(&peer)?;
        self.retract(ids.into_iter().collect())
    }

    /// Removes states not renewed within the timeout (a client renews every 15 s).
    pub(crate) fn sweep(&mut self) -> Option<Bytes> {
        let now = self.awareness_now();
        let limit = self.timeout.as_millis() as u64;
        let stale: Vec<ClientID> = self
            .awareness
            .iter()
            .filter(|(_, state)| {
                state.data.is_some() && now.saturating_sub(state.last_updated) > limit
            })
            .map(|(id, _)| id)
            .collect();
        if stale.is_empty() {
            return None;
        }
        for owned in self.owners.values_mut() {
            for id in &stale {
                owned.remove(id);
            }
        }
        self.retract(stale)
    }

    /// Every live state, for a peer that just joined or asked.
    pub(crate) fn current(&self) -> Option<Bytes> {
        let update = self.awareness.update().ok()?;
        (!update.clients.is_empty()).then(|| protocol::awareness(&update))
    }

    #[cfg(test)]
    pub(crate) fn live_states(&self) -> usize {
        self.awareness.iter().filter(|(_, s)| s.data.is_some()).count()
    }

    fn retract(&mut self, ids: Vec<ClientID>) -> Option<Bytes> {
        let live_now: HashSet<ClientID> =
            self.awareness.iter().filter(|(_, s)| s.data.is_some()).map(|(id, _)| id).collect();
        let live: Vec<ClientID> = ids.into_iter().filter(|id| live_now.contains(id)).collect();
        if live.is_empty() {
            return None;
        }
        for id in &live {
            self.awareness.remove_state(*id);
            self.pending.remove(id);
        }
        let update = self.awareness.update_with_clients(live).ok()?;
        Some(protocol::awareness(&update))
    }

    /// The awareness clock's current reading (milliseconds since this room started).
    fn awareness_now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: u64, clock: u32, json: &str) -> AwarenessUpdate {
        let mut update = AwarenessUpdate { clients: Default::default() };
        update.clients.insert(ClientID::new(id), AwarenessUpdateEntry { clock, json: json.into() });
        update
    }

    #[tokio::test]
    async fn leaving_peer_retracts_only_its_states() {
        let mut presence = Presence::new(Duration::from_secs(30));
        let (a, b) = (PeerId::new(), PeerId::new());
        assert!(presence.apply(a, state(1, 1, "{\"n\":1}")));
        assert!(presence.apply(b, state(2, 1, "{\"n\":2}")));
        assert!(presence.take_pending().is_some());
        assert!(!presence.apply(b, state(2, 1, "{\"n\":2}")), "stale clock is not relayed");
        assert!(presence.take_pending().is_none());
        assert_eq!(presence.live_states(), 2);
        assert!(presence.remove_peer(a).is_some());
        assert_eq!(presence.live_states(), 1);
        assert!(presence.remove_peer(a).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_removes_states_not_renewed() {
        let mut presence = Presence::new(Duration::from_secs(30));
        let peer = PeerId::new();
        presence.apply(peer, state(1, 1, "{}"));
        tokio::time::advance(Duration::from_secs(20)).await;
        presence.apply(peer, state(2, 1, "{}"));
        assert!(presence.sweep().is_none());
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(presence.sweep().is_some());
        assert_eq!(presence.live_states(), 1, "the renewed state stays");
        assert!(presence.remove_peer(peer).is_some());
        assert_eq!(presence.live_states(), 0);
    }
}
