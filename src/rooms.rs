//! The registry: which room serves which document. Spawns a room on first join and forgets it
//! when the room unloads.
//!
//! A `std::sync::Mutex` (not tokio's) guards the map: it is held only for a lookup or an
//! insert, never across an `.await`, so contention is a few nanoseconds per join. A room
//! that unloads races with a connection fetching its handle; the connection then sees a
//! closed channel or a dropped reply and retries once on a freshly spawned room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::Error;
use crate::id::{BrowserId, DocId, PeerId};
use crate::room::{Kick, Room, RoomHandle, RoomMsg};
use crate::store::Store;

/// Inbox depth per room: enough to absorb a burst from every peer without making one fast
/// writer wait, small enough that a stuck room pushes back on its writers.
const ROOM_INBOX: usize = 1024;

#[derive(Clone)]
pub struct Rooms {
    inner: Arc<Inner>,
}

struct Inner {
    map: Mutex<HashMap<DocId, RoomHandle>>,
    store: Store,
    config: Arc<Config>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    next_generation: AtomicU64,
}

/// What a connection holds after joining.
pub struct Joined {
    pub room: RoomHandle,
    pub kick: oneshot::Receiver<Kick>,
}

impl Rooms {
    pub fn new(
        store: Store,
        config: Arc<Config>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Rooms {
        let inner = Inner {
            map: Mutex::new(HashMap::new()),
            store,
            config,
            tracker,
            shutdown,
            next_generation: AtomicU64::new(1),
        };
        Rooms { inner: Arc::new(inner) }
    }

    /// Joins `doc_id`'s room, loading it if needed. Frames for the peer arrive on `outbox`.
    pub async fn join(
        &self,
        doc_id: &DocId,
        peer: PeerId,
        browser: Option<BrowserId>,
        outbox: mpsc::Sender<Bytes>,
    ) -> Result<Joined, Kick> {
        let mut kick_rx = None;
        let asked = self
            .ask(doc_id, |reply| {
                let (kick, rx) = oneshot::channel();
                kick_rx = Some(rx);
                let (browser, outbox) = (browser.clone(), outbox.clone());
                RoomMsg::Join { peer, browser, outbox, kick, reply }
            })
            .await;
        match (asked, kick_rx) {
            (Some((room, Ok(()))), Some(kick)) => Ok(Joined { room, kick }),
            (Some((_, Err(kick))), _) => Err(kick),
            _ => Err(Kick::from(&Error::RoomGone)),
        }
    }

    /// The cursor colour (index into `awareness::PALETTE`) for `browser` in `doc_id`.
    pub async fn colour(&self, doc_id: &DocId, browser: &BrowserId) -> Result<usize, Error> {
        self.ask(doc_id, |reply| RoomMsg::Colour { browser: browser.clone(), reply })
            .await
            .map(|(_, colour)| colour)
            .ok_or(Error::RoomGone)
    }

    /// Sends `request` to `doc_id`'s room (spawning it if needed) and waits for its reply.
    /// A room that unloads between our lookup and its reply drops the request (closed inbox
    /// or dropped reply); we then ask again, which spawns a fresh room.
    async fn ask<T>(
        &self,
        doc_id: &DocId,
        mut request: impl FnMut(oneshot::Sender<T>) -> RoomMsg,
    ) -> Option<(RoomHandle, T)> {
        for _attempt in 0..3 {
            let room = self.get_or_spawn(doc_id);
            let (reply, answer) = oneshot::channel();
            if room.send(request(reply)).await.is_err() {
                continue;
            }
            if let Ok(answer) = answer.await {
                return Some((room, answer));
            }
        }
        None
    }

    pub fn loaded(&self) -> usize {
        self.lock().len()
    }

    /// Connected peers per loaded room.
    pub fn peer_counts(&self) -> HashMap<DocId, usize> {
        self.lock()
            .iter()
            .map(|(doc, handle)| (doc.clone(), handle.peer_count.load(Ordering::Relaxed)))
            .collect()
    }

    fn get_or_spawn(&self, doc_id: &DocId) -> RoomHandle {
        let mut map = self.lock();
        if let Some(handle) = map.get(doc_id)
            && !handle.tx.is_closed()
        {
            return handle.clone();
        }
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let (tx, inbox) = mpsc::channel(ROOM_INBOX);
        let peer_count = Arc::default();
        let handle = RoomHandle { tx, generation, peer_count: Arc::clone(&peer_count) };
        map.insert(doc_id.clone(), handle.clone());
        let inner = &self.inner;
        inner.tracker.spawn(Room::spawn_run(
            doc_id.clone(),
            generation,
            peer_count,
            inbox,
            self.clone(),
            inner.store.clone(),
            inner.config.clone(),
            inner.shutdown.clone(),
        ));
        handle
    }

    /// Called by a room that wants to unload. Succeeds only if nothing is waiting in its
    /// inbox; then the room is unregistered and its inbox closed under the registry lock, so
    /// no new handle to it can be handed out.
    /// With `force` (a failed room) it unregisters regardless.
    pub(crate) fn forget(
        &self,
        doc_id: &DocId,
        generation: u64,
        inbox: &mut mpsc::Receiver<RoomMsg>,
        force: bool,
    ) -> bool {
        let mut map = self.lock();
        if !force && !inbox.is_empty() {
            return false;
        }
        if map.get(doc_id).is_some_and(|h| h.generation == generation) {
            map.remove(doc_id);
        }
        inbox.close();
        true
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<DocId, RoomHandle>> {
        // A panic while holding this lock cannot leave the map half-updated (every critical
        // section is a single insert/remove), so a poisoned lock is still safe to use.
        self.inner.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
