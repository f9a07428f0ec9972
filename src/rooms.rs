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
use tokio::sync::oneshot;

use crate::colour::ColourBook;
use crate::error::Error;
use crate::id::{BrowserId, DocId, PeerId};
use crate::outbox::Outbox;
use crate::room::{
    self, Applied, Lease, NewPeer, Origin, Registry, RoomDeps, RoomHandle, RoomMsg, Stats,
};

/// A read the registry may hand to a room more than once (if the room unloads meanwhile).
pub(crate) type SharedRead<T> = Arc<dyn Fn(&yrs::Doc, &Stats) -> T + Send + Sync>;
/// An edit likewise; a room that got it either applied it and answered, or never ran it.
pub(crate) type SharedEdit =
    Arc<dyn Fn(&mut yrs::TransactionMut) -> Result<(), Error> + Send + Sync>;

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

    /// Joins `doc_id`'s room, loading it if needed. Frames for the peer go out through `outbox`.
    pub(crate) async fn join(
        &self,
        doc_id: &DocId,
        peer: PeerId,
        browser: Option<BrowserId>,
        can_write: bool,
        outbox: Outbox,
    ) -> Result<Joined, Error> {
        let mut kick_rx = None;
        let (room, joined) = self
            .ask(doc_id, |reply| {
                let (kick, rx) = oneshot::channel();
                kick_rx = Some(rx);
                let (browser, outbox) = (browser.clone(), outbox.clone());
                RoomMsg::Join {
                    peer: NewPeer { id: peer, browser, can_write, outbox, kick },
                    reply,
                }
            })
            .await?;
        joined?;
        let kick = kick_rx.ok_or(Error::RoomGone)?;
        Ok(Joined { room, kick })
    }

    /// The cursor colour (index into `colour::PALETTE`) for `browser` in `doc_id`. A room
    /// that is not loaded is not loaded for this: nobody is in it, so the browser's own
    /// preferred colour is free, and the room assigns the same when the browser joins.
    pub(crate) async fn colour(&self, doc_id: &DocId, browser: &BrowserId) -> Result<usize, Error> {
        let Some(room) = self.loaded_room(doc_id) else {
            return Ok(ColourBook::default().assign(browser));
        };
        let (reply, answer) = oneshot::channel();
        if room.send(RoomMsg::Colour { browser: browser.clone(), reply }).await.is_ok()
            && let Ok(colour) = answer.await
        {
            return Ok(colour);
        }
        Ok(ColourBook::default().assign(browser))
    }

    /// Applies `update` to `doc_id` (loading it if needed) on the same path as a peer's
    /// update; returns after the commit.
    pub(crate) async fn apply(
        &self,
        doc_id: &DocId,
        update: Bytes,
        origin: Origin,
    ) -> Result<Applied, Error> {
        self.ask(doc_id, |reply| RoomMsg::Apply { update: update.clone(), origin, reply }).await?.1
    }

    /// Runs `read` on `doc_id`'s document (loading it if needed) in its room; the answer
    /// comes once everything queued before it is committed.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        doc_id: &DocId,
        read: SharedRead<T>,
    ) -> Result<T, Error> {
        let (_, answer) = self
            .ask(doc_id, |reply| {
                let read = read.clone();
                RoomMsg::Read {
                    read: Box::new(move |doc, stats| {
                        let answer = read(doc, stats);
                        Box::new(move || {
                            let _ = reply.send(answer);
                        })
                    }),
                }
            })
            .await?;
        Ok(answer)
    }

    /// Changes `doc_id`'s document in its room (one transaction, stored and relayed like a
    /// peer's update); returns after the commit.
    pub(crate) async fn edit(
        &self,
        doc_id: &DocId,
        edit: SharedEdit,
        estimate: u64,
    ) -> Result<Applied, Error> {
        self.ask(doc_id, |reply| {
            let edit = edit.clone();
            RoomMsg::Edit { edit: Box::new(move |txn| edit(txn)), estimate, reply }
        })
        .await?
        .1
    }

    /// Deletes `doc_id` (see `RoomMsg::Delete`).
    pub(crate) async fn delete(&self, doc_id: &DocId) -> Result<bool, Error> {
        self.ask(doc_id, |reply| RoomMsg::Delete { reply }).await?.1
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
    ) -> Result<(RoomHandle, T), Error> {
        for _attempt in 0..3 {
            let room = self.get_or_spawn(doc_id)?;
            let (reply, answer) = oneshot::channel();
            if room.send(request(reply)).await.is_err() {
                continue;
            }
            if let Ok(answer) = answer.await {
                return Ok((room, answer));
            }
        }
        Err(Error::RoomGone)
    }

    // ---- other nodes (see `cluster`): only rooms already loaded hear of them -----------

    fn loaded_room(&self, doc_id: &DocId) -> Option<RoomHandle> {
        self.inner.map.lock().get(doc_id).filter(|h| !h.is_closed()).cloned()
    }

    /// Another node committed `doc_id` up to `head`.
    pub(crate) fn committed_elsewhere(&self, doc_id: &DocId, head: i64) {
        if let Some(room) = self.loaded_room(doc_id) {
            room.feed(head);
        }
    }

    /// Another node deleted `doc_id`: its room here closes its peers (4404) and ends.
    pub(crate) fn deleted_elsewhere(&self, doc_id: &DocId) {
        if let Some(room) = self.loaded_room(doc_id) {
            // Not lossy: wait for room in the inbox, off the caller's task.
            tokio::spawn(async move {
                let _ = room.send(RoomMsg::DeletedElsewhere).await;
            });
        }
    }

    /// The poll found nothing stored for `doc_id`: its room checks whether it was deleted.
    pub(crate) fn verify(&self, doc_id: &DocId) {
        if let Some(room) = self.loaded_room(doc_id) {
            room.try_send(RoomMsg::Verify);
        }
    }

    /// Presence from another node's peers (lossy, like presence itself: renewed anyway).
    pub(crate) fn awareness_from(&self, doc_id: &DocId, node: &str, frame: Bytes) {
        if let Some(room) = self.loaded_room(doc_id) {
            room.try_send(RoomMsg::RemoteAwareness { node: node.to_string(), frame });
        }
    }

    /// Another node is gone: every room drops its peers' presence.
    pub(crate) fn node_gone(&self, node: &str) {
        for room in self.handles() {
            let (room, node) = (room, node.to_string());
            tokio::spawn(async move {
                let _ = room.send(RoomMsg::NodeGone { node }).await;
            });
        }
    }

    /// The database is gone for too long: every room closes its peers (1013) and ends.
    pub(crate) fn send_everyone_away(&self) {
        for room in self.handles() {
            tokio::spawn(async move {
                let _ = room.send(RoomMsg::SendAway).await;
            });
        }
    }

    /// The documents loaded here (the cluster's safety poll).
    pub(crate) fn loaded(&self) -> Vec<DocId> {
        self.inner.map.lock().keys().cloned().collect()
    }

    /// How long the store has been unreachable and the limit (see `Store::outage`).
    pub(crate) fn store_outage(&self) -> Option<(std::time::Duration, std::time::Duration)> {
        self.inner.deps.store.outage()
    }

    fn handles(&self) -> Vec<RoomHandle> {
        self.inner.map.lock().values().filter(|h| !h.is_closed()).cloned().collect()
    }

    /// Connected peers per loaded room.
    pub(crate) fn peer_counts(&self) -> HashMap<DocId, usize> {
        self.inner.map.lock().iter().map(|(doc, handle)| (doc.clone(), handle.peers())).collect()
    }

    fn get_or_spawn(&self, doc_id: &DocId) -> Result<RoomHandle, Error> {
        let mut map = self.inner.map.lock();
        if let Some(handle) = map.get(doc_id)
            && !handle.is_closed()
        {
            return Ok(handle.clone());
        }
        if map.len() >= self.inner.deps.config.max_rooms {
            tracing::warn!(doc = %doc_id, limit = self.inner.deps.config.max_rooms, "room limit reached");
            return Err(Error::Overloaded("too many documents open".into()));
        }
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let lease = Lease {
            doc_id: doc_id.clone(),
            generation,
            registry: Arc::new(Retire(Arc::downgrade(&self.inner))),
        };
        let handle = room::spawn(lease, &self.inner.deps);
        map.insert(doc_id.clone(), handle.clone());
        Ok(handle)
    }
}
