//! The registry: which room serves which document. It maps ids to handles, spawns a room on
//! first use and forgets it when the room retires; it knows nothing of what a room does.
//!
//! A `std::sync::Mutex` (not tokio's) guards the map: it is held only for a lookup or an
//! insert, never across an `.await`, so contention is a few nanoseconds per join. A room
//! that unloads races with a caller fetching its handle; the caller then sees a closed
//! channel or a dropped reply and retries on a freshly spawned room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::id::{BrowserId, DocId, PeerId};
use crate::room::{self, Applied, Lease, Origin, Registry, RoomDeps, RoomHandle, RoomMsg};

#[derive(Clone)]
pub(crate) struct Rooms {
    inner: Arc<Inner>,
}

struct Inner {
    map: Map,
    deps: RoomDeps,
    next_generation: AtomicU64,
}

#[derive(Default)]
struct Map(Mutex<HashMap<DocId, RoomHandle>>);

impl Map {
    fn lock(&self) -> MutexGuard<'_, HashMap<DocId, RoomHandle>> {
        // A panic while holding this lock cannot leave the map half-updated (every critical
        // section is a single insert/remove), so a poisoned lock is still safe to use.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a connection holds after joining.
pub(crate) struct Joined {
    pub(crate) room: RoomHandle,
    pub(crate) kick: oneshot::Receiver<Error>,
}

/// The registry as a room sees it: only the way out. Weak, so that rooms do not keep the
/// registry (and through it the store) alive after the server let go of it.
struct Retire(Weak<Inner>);

impl Registry for Retire {
    fn retire(&self, doc_id: &DocId, generation: u64, retire: &mut dyn FnMut() -> bool) -> bool {
        let Some(inner) = self.0.upgrade() else { return retire() };
        let mut map = inner.map.lock();
        if !retire() {
            return false;
        }
        if map.get(doc_id).is_some_and(|h| h.generation() == generation) {
            map.remove(doc_id);
        }
        true
    }
}

impl Rooms {
    pub(crate) fn new(deps: RoomDeps) -> Rooms {
        let inner = Inner { map: Map::default(), deps, next_generation: AtomicU64::new(1) };
        Rooms { inner: Arc::new(inner) }
    }

    /// Joins `doc_id`'s room, loading it if needed. Frames for the peer arrive on `outbox`.
    pub(crate) async fn join(
        &self,
        doc_id: &DocId,
        peer: PeerId,
        browser: Option<BrowserId>,
        outbox: mpsc::Sender<Bytes>,
    ) -> Result<Joined, Error> {
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
            (Some((_, Err(e))), _) => Err(e),
            _ => Err(Error::RoomGone),
        }
    }

    /// The cursor colour (index into `colour::PALETTE`) for `browser` in `doc_id`.
    pub(crate) async fn colour(&self, doc_id: &DocId, browser: &BrowserId) -> Result<usize, Error> {
        self.ask(doc_id, |reply| RoomMsg::Colour { browser: browser.clone(), reply })
            .await
            .map(|(_, colour)| colour)
            .ok_or(Error::RoomGone)
    }

    /// Applies `update` to `doc_id` (loading it if needed) on the same path as a peer's
    /// update; returns after the commit.
    pub(crate) async fn apply(
        &self,
        doc_id: &DocId,
        update: Bytes,
        origin: Origin,
    ) -> Result<Applied, Error> {
        match self
            .ask(doc_id, |reply| RoomMsg::Apply { update: update.clone(), origin, reply })
            .await
        {
            Some((_, result)) => result,
            None => Err(Error::RoomGone),
        }
    }

    /// Sends `request` to `doc_id`'s room (spawning it if needed) and waits for its reply.
    /// A room that unloads between our lookup and its reply drops the request (closed inbox
    /// or dropped reply); we then ask again, which spawns a fresh room. Asking again is
    /// safe for writes too: a dropped request was never applied (the reply of an applied
    /// one is sent, not dropped, even when the room fails).
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

    /// Connected peers per loaded room.
    pub(crate) fn peer_counts(&self) -> HashMap<DocId, usize> {
        self.inner.map.lock().iter().map(|(doc, handle)| (doc.clone(), handle.peers())).collect()
    }

    fn get_or_spawn(&self, doc_id: &DocId) -> RoomHandle {
        let mut map = self.inner.map.lock();
        if let Some(handle) = map.get(doc_id)
            && !handle.is_closed()
        {
            return handle.clone();
        }
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let lease = Lease {
            doc_id: doc_id.clone(),
            generation,
            registry: Arc::new(Retire(Arc::downgrade(&self.inner))),
        };
        let handle = room::spawn(lease, &self.inner.deps);
        map.insert(doc_id.clone(), handle.clone());
        handle
    }
}
