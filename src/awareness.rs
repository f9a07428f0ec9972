//! Presence policy: who announced which awareness client ids, and when their states go away.
//!
//! Relaying awareness is easy; the product problem is ghosts. A browser that crashes or loses
//! its network never sends the "I left" update, so the server must retract, on the client's
//! behalf, every state a connection announced, and sweep states nobody renewed. This module
//! keeps that bookkeeping apart from the room loop and has no IO, so it is tested directly.
//!
//! It also holds presence to account: a connection may set or remove only client ids it
//! introduced first (nobody can overwrite or hide another person's cursor), and the room's
//! states together stay under a byte cap.
//!
//! It owns its own `yrs::sync::Awareness` over a private, empty `Doc`: awareness never reads
//! document content, and keeping it apart means the room's `Doc` is touched only by updates.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use tokio::time::{Duration, Instant};
use yrs::sync::Awareness;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::{ClientID, Doc};

use crate::error::Error;
use crate::id::PeerId;
use crate::protocol;

pub(crate) struct Presence {
    awareness: Awareness,
    /// Client ids each connection announced a live state for.
    owners: HashMap<PeerId, HashSet<ClientID>>,
    /// The connection that introduced each live client id: only it may change that id.
    owner_of: HashMap<ClientID, PeerId>,
    /// Bytes of each live state's JSON, and their sum (bounded by `max_bytes`).
    sizes: HashMap<ClientID, usize>,
    total_bytes: usize,
    max_bytes: usize,
    timeout: Duration,
    origin: Instant,
    /// Entries applied since the last `take_pending` (the latest per client): relayed as
    /// one update per tick instead of one frame per cursor move.
    pending: HashMap<ClientID, AwarenessUpdateEntry>,
    /// The same, for entries from this node's own peers only: what the other nodes of a
    /// cluster are told (states from other nodes are never sent back to them).
    pending_local: HashMap<ClientID, AwarenessUpdateEntry>,
    /// Stand-ins for other nodes (see `apply_remote`).
    remote: HashSet<PeerId>,
}

impl Presence {
    pub(crate) fn new(timeout: Duration, max_bytes: usize) -> Presence {
        // A monotonic clock on tokio's time, so paused-time tests can drive the sweep.
        let origin = Instant::now();
        let clock = move || origin.elapsed().as_millis() as u64;
        let awareness = Awareness::with_clock(Doc::new(), clock);
        Presence {
            awareness,
            owners: HashMap::new(),
            owner_of: HashMap::new(),
            sizes: HashMap::new(),
            total_bytes: 0,
            max_bytes,
            timeout,
            origin,
            pending: HashMap::new(),
            pending_local: HashMap::new(),
            remote: HashSet::new(),
        }
    }

    /// Applies a peer's awareness update; Ok(true) when anything changed and it should be
    /// relayed. Entries for client ids another connection introduced are dropped; an update
    /// that would take the room past its byte cap is refused (the caller closes the peer).
    pub(crate) fn apply(&mut self, peer: PeerId, update: AwarenessUpdate) -> Result<bool, Error> {
        self.apply_from(peer, update, true)
    }

    /// The same for states relayed by another node; `node` stands for all its peers.
    pub(crate) fn apply_remote(
        &mut self,
        node: PeerId,
        update: AwarenessUpdate,
    ) -> Result<bool, Error> {
        self.apply_from(node, update, false)
    }

    fn apply_from(
        &mut self,
        peer: PeerId,
        mut update: AwarenessUpdate,
        local: bool,
    ) -> Result<bool, Error> {
        // Only the connection that introduced an id may change it; removing ("null") an id
        // nobody holds would only leave yrs a dead entry per id (found in review).
        // An id held for another node may be taken over: its client moved (to this node,
        // or to a third one) and that node may not have retracted it yet.
        update.clients.retain(|id, entry| match self.owner_of.get(id) {
            // (Not to remove it, though: that would let anyone hide a cursor held elsewhere.)
            Some(owner) => {
                *owner == peer || (self.remote.contains(owner) && &*entry.json != "null")
            }
            None => &*entry.json != "null",
        });
        if update.clients.is_empty() {
            return Ok(false);
        }
        let mut total = self.total_bytes;
        for (id, entry) in &update.clients {
            let new = if &*entry.json == "null" { 0 } else { entry.json.len() };
            total = total - self.sizes.get(id).copied().unwrap_or(0) + new;
        }
        if total > self.max_bytes {
            return Err(Error::PresenceFull { limit: self.max_bytes });
        }
        let entries = update.clients.clone();
        let summary = match self.awareness.apply_update_summary(update) {
            Ok(Some(summary)) => summary,
            // Ok(None): every entry was stale. Err only arises for unknown ids on encode.
            Ok(None) | Err(_) => return Ok(false),
        };
        let owned = self.owners.entry(peer).or_default();
        for id in summary.added.iter().chain(&summary.updated) {
            owned.insert(*id);
        }
        for id in &summary.removed {
            owned.remove(id);
        }
        if !local {
            self.remote.insert(peer);
        }
        for id in summary.added.iter().chain(&summary.updated) {
            if let Some(old) = self.owner_of.insert(*id, peer)
                && old != peer
                && let Some(theirs) = self.owners.get_mut(&old)
            {
                theirs.remove(id);
            }
            let size = entries.get(id).map_or(0, |e| e.json.len());
            self.total_bytes = self.total_bytes + size - self.sizes.insert(*id, size).unwrap_or(0);
        }
        for id in &summary.removed {
            self.forget(*id);
        }
        let changed = summary.added.iter().chain(&summary.updated).chain(&summary.removed);
        for id in changed {
            if let Some(entry) = entries.get(id) {
                self.pending.insert(*id, entry.clone());
                if local {
                    self.pending_local.insert(*id, entry.clone());
                }
            }
        }
        Ok(true)
    }

    fn forget(&mut self, id: ClientID) {
        self.owner_of.remove(&id);
        self.total_bytes -= self.sizes.remove(&id).unwrap_or(0);
    }

    /// Bytes of live states, for tests and limits.
    #[cfg(test)]
    pub(crate) fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// One frame with every state that changed since the last call, if any did.
    pub(crate) fn take_pending(&mut self) -> Option<Bytes> {
        if self.pending.is_empty() {
            return None;
        }
        let update = AwarenessUpdate { clients: std::mem::take(&mut self.pending) };
        Some(protocol::awareness(&update))
    }

    /// What this node's peers changed since the last call, in updates small enough for the
    /// cluster's notifications (`max_bytes` of JSON each). A single state larger than that
    /// stays on this node (logged): PostgreSQL cannot carry it.
    pub(crate) fn take_pending_local(&mut self, max_bytes: usize) -> Vec<AwarenessUpdate> {
        let mut out = Vec::new();
        let mut current = AwarenessUpdate { clients: HashMap::new() };
        let mut bytes = 0;
        for (id, entry) in self.pending_local.drain() {
            let size = entry.json.len() + 16;
            if size > max_bytes {
                tracing::warn!(client = %id, bytes = entry.json.len(), "presence state too large to share with other nodes");
                continue;
            }
            if bytes + size > max_bytes {
                out.push(std::mem::replace(
                    &mut current,
                    AwarenessUpdate { clients: HashMap::new() },
                ));
                bytes = 0;
            }
            bytes += size;
            current.clients.insert(id, entry);
        }
        if !current.clients.is_empty() {
            out.push(current);
        }
        out
    }

    /// Forgets a connection: removes the states it announced and returns the frame that tells
    /// the others, if there was anything to remove.
    pub(crate) fn remove_peer(&mut self, peer: PeerId) -> Option<Bytes> {
        self.remote.remove(&peer);
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
            self.pending_local.remove(id);
            self.forget(*id);
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
        let mut presence = Presence::new(Duration::from_secs(30), 1 << 20);
        let (a, b) = (PeerId::new(), PeerId::new());
        assert_eq!(presence.apply(a, state(1, 1, "{\"n\":1}")), Ok(true));
        assert_eq!(presence.apply(b, state(2, 1, "{\"n\":2}")), Ok(true));
        assert!(presence.take_pending().is_some());
        assert_eq!(
            presence.apply(b, state(2, 1, "{\"n\":2}")),
            Ok(false),
            "stale clock is not relayed"
        );
        assert!(presence.take_pending().is_none());
        assert_eq!(presence.live_states(), 2);
        assert!(presence.remove_peer(a).is_some());
        assert_eq!(presence.live_states(), 1);
        assert!(presence.remove_peer(a).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_removes_states_not_renewed() {
        let mut presence = Presence::new(Duration::from_secs(30), 1 << 20);
        let peer = PeerId::new();
        let _ = presence.apply(peer, state(1, 1, "{}"));
        tokio::time::advance(Duration::from_secs(20)).await;
        let _ = presence.apply(peer, state(2, 1, "{}"));
        assert!(presence.sweep().is_none());
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(presence.sweep().is_some());
        assert_eq!(presence.live_states(), 1, "the renewed state stays");
        assert!(presence.remove_peer(peer).is_some());
        assert_eq!(presence.live_states(), 0);
    }

    #[tokio::test]
    async fn nobody_overwrites_or_removes_another_connections_state() {
        let mut presence = Presence::new(Duration::from_secs(30), 1 << 20);
        let (victim, attacker) = (PeerId::new(), PeerId::new());
        assert_eq!(presence.apply(victim, state(1, 1, "{\"n\":\"v\"}")), Ok(true));
        presence.take_pending();
        // A higher clock would hide the victim's state; a null would remove it.
        assert_eq!(presence.apply(attacker, state(1, 99, "{\"n\":\"x\"}")), Ok(false));
        assert_eq!(presence.apply(attacker, state(1, 99, "null")), Ok(false));
        assert!(presence.take_pending().is_none());
        assert_eq!(presence.live_states(), 1);
        // Once the victim leaves, its id is free again.
        assert!(presence.remove_peer(victim).is_some());
        assert_eq!(presence.apply(attacker, state(1, 100, "{}")), Ok(true));
    }

    #[tokio::test]
    async fn a_client_that_moves_between_nodes_keeps_its_cursor() {
        let mut presence = Presence::new(Duration::from_secs(30), 1 << 20);
        let (node_a, local) = (PeerId::new(), PeerId::new());
        // Client 1 was on node A; it reconnects here before A has retracted it.
        assert_eq!(presence.apply_remote(node_a, state(1, 3, "{\"n\":1}")), Ok(true));
        assert_eq!(presence.apply(local, state(1, 4, "{\"n\":1}")), Ok(true));
        presence.take_pending();
        // A's late retraction (its connection closing there) removes nothing of ours...
        assert!(presence.remove_peer(node_a).is_none());
        assert_eq!(presence.live_states(), 1);
        // ...and no other node may take over a state held by a connection here.
        let node_b = PeerId::new();
        assert_eq!(presence.apply_remote(node_b, state(1, 9, "null")), Ok(false));
        assert_eq!(presence.live_states(), 1);
    }

    #[tokio::test]
    async fn only_this_nodes_peers_are_published_in_bounded_updates() {
        let mut presence = Presence::new(Duration::from_secs(30), 1 << 20);
        let (node_a, local) = (PeerId::new(), PeerId::new());
        let _ = presence.apply_remote(node_a, state(1, 1, "{}"));
        for id in 2..6 {
            let _ =
                presence.apply(local, state(id, 1, &format!("{{\"pad\":\"{}\"}}", "x".repeat(40))));
        }
        let _ =
            presence.apply(local, state(9, 1, &format!("{{\"huge\":\"{}\"}}", "x".repeat(500))));
        let published = presence.take_pending_local(140);
        let ids: Vec<u64> =
            published.iter().flat_map(|u| u.clients.keys().map(|id| id.get())).collect();
        assert_eq!(published.len(), 2, "two per update at this size: {published:?}");
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, vec![2, 3, 4, 5], "neither the other node's state nor the huge one");
        assert!(presence.take_pending_local(140).is_empty());
    }

    #[tokio::test]
    async fn a_room_holds_a_bounded_amount_of_presence() {
        let mut presence = Presence::new(Duration::from_secs(30), 100);
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(40));
        let (a, b) = (PeerId::new(), PeerId::new());
        assert_eq!(presence.apply(a, state(1, 1, &big)), Ok(true));
        assert_eq!(presence.apply(b, state(2, 1, &big)), Ok(true));
        assert!(matches!(presence.apply(b, state(3, 1, &big)), Err(Error::PresenceFull { .. })));
        // Replacing one's own state counts the difference, not the sum.
        assert_eq!(presence.apply(a, state(1, 2, &big)), Ok(true));
        assert_eq!(presence.total_bytes(), 2 * big.len());
        assert!(presence.remove_peer(a).is_some());
        assert_eq!(presence.total_bytes(), big.len());
    }
}
