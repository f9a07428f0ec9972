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

use crate::id::{BrowserId, PeerId};
use crate::protocol;

pub struct Presence {
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
    pub fn new(timeout: Duration) -> Presence {
        // A monotonic clock on tokio's time, so paused-time tests can drive the sweep.
        let origin = Instant::now();
        let clock = move || origin.elapsed().as_millis() as u64;
        let awareness = Awareness::with_clock(Doc::new(), clock);
        Presence { awareness, owners: HashMap::new(), timeout, origin, pending: HashMap::new() }
    }

    /// Applies a peer's awareness update; true when anything changed and it should be relayed.
    pub fn apply(&mut self, peer: PeerId, update: AwarenessUpdate) -> bool {
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
    pub fn take_pending(&mut self) -> Option<Bytes> {
        if self.pending.is_empty() {
            return None;
        }
        let update = AwarenessUpdate { clients: std::mem::take(&mut self.pending) };
        Some(protocol::awareness(&update))
    }

    /// Forgets a connection: removes the states it announced and returns the frame that tells
    /// the others, if there was anything to remove.
    pub fn remove_peer(&mut self, peer: PeerId) -> Option<Bytes> {
        let ids = self.owners.remove(&peer)?;
        self.retract(ids.into_iter().collect())
    }

    /// Removes states not renewed within the timeout (a client renews every 15 s).
    pub fn sweep(&mut self) -> Option<Bytes> {
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
    pub fn current(&self) -> Option<Bytes> {
        let update = self.awareness.update().ok()?;
        (!update.clients.is_empty()).then(|| protocol::awareness(&update))
    }

    pub fn live_states(&self) -> usize {
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

/// Cursor colours: 14 hues far apart on the wheel and in lightness, each dark enough to read
/// as a caret on white and to carry a white name label.
pub const PALETTE: [&str; 14] = [
    "#d7263d", // crimson
    "#f46036", // orange
    "#b8860b", // goldenrod
    "#7f8c00", // olive
    "#2a9d3f", // green
    "#1b998b", // teal
    "#00a0b0", // cyan
    "#2e86de", // blue
    "#0b3d91", // navy
    "#5f27cd", // indigo
    "#8e44ad", // purple
    "#e84393", // pink
    "#8d6e63", // brown
    "#34495e", // slate
];

/// How long a colour handed out over HTTP stays reserved for a browser that has not
/// connected yet (it normally connects within a second).
const RESERVATION: Duration = Duration::from_secs(60);

/// Hands out cursor colours in one room: never a colour someone else present holds while
/// the palette lasts, and the same colour again for a browser that comes back.
#[derive(Default)]
pub struct ColourBook {
    browsers: HashMap<BrowserId, Holder>,
}

struct Holder {
    colour: usize,
    connections: usize,
    reserved_until: Instant,
}

impl ColourBook {
    /// The colour index for `browser`, reserving it.
    pub fn assign(&mut self, browser: &BrowserId) -> usize {
        let now = Instant::now();
        let mut used = [0usize; PALETTE.len()];
        for (id, holder) in &self.browsers {
            if id != browser && (holder.connections > 0 || holder.reserved_until > now) {
                used[holder.colour] += 1;
            }
        }
        let colour = match self.browsers.get(browser) {
            Some(holder) if used[holder.colour] == 0 => holder.colour,
            _ => {
                // Start from a per-browser spot so that, after a restart, a browser is likely
                // to get its old colour back; then take the first free (or least used) one.
                let start = stable_hash(browser.as_str()) % PALETTE.len();
                (0..PALETTE.len())
                    .map(|i| (start + i) % PALETTE.len())
                    .min_by_key(|&c| used[c])
                    .unwrap_or(start)
            }
        };
        let holder = self.browsers.entry(browser.clone()).or_insert(Holder {
            colour,
            connections: 0,
            reserved_until: now,
        });
        holder.colour = colour;
        holder.reserved_until = now + RESERVATION;
        self.prune(now);
        colour
    }

    pub fn connected(&mut self, browser: &BrowserId) {
        if let Some(holder) = self.browsers.get_mut(browser) {
            holder.connections += 1;
        }
    }

    pub fn disconnected(&mut self, browser: &BrowserId) {
        if let Some(holder) = self.browsers.get_mut(browser) {
            holder.connections = holder.connections.saturating_sub(1);
        }
    }

    /// Keeps memory bounded in long-lived rooms: forget absent browsers past 1,000 entries.
    fn prune(&mut self, now: Instant) {
        if self.browsers.len() > 1000 {
            self.browsers.retain(|_, h| h.connections > 0 || h.reserved_until > now);
        }
    }
}

/// FNV-1a: stable across runs and platforms (std's hasher is randomly seeded).
fn stable_hash(s: &str) -> usize {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in s.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash as usize
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

    fn browser(s: &str) -> BrowserId {
        BrowserId::parse(s).expect("valid")
    }

    #[tokio::test]
    async fn colours_are_distinct_while_the_palette_lasts() {
        let mut book = ColourBook::default();
        let mut seen = HashSet::new();
        for i in 0..PALETTE.len() {
            let b = browser(&format!("b{i}"));
            let colour = book.assign(&b);
            book.connected(&b);
            assert!(seen.insert(colour), "colour {colour} handed out twice");
        }
        // Past the palette, colours repeat but stay evenly spread.
        let extra = book.assign(&browser("extra"));
        assert!(extra < PALETTE.len());
    }

    #[tokio::test]
    async fn a_returning_browser_gets_its_colour_back() {
        let mut book = ColourBook::default();
        let (a, b) = (browser("alice"), browser("bob"));
        let colour_a = book.assign(&a);
        book.connected(&a);
        let colour_b = book.assign(&b);
        book.connected(&b);
        assert_ne!(colour_a, colour_b);
        book.disconnected(&a);
        assert_eq!(book.assign(&a), colour_a);
    }
}
