//! A room: one task that owns one document, its presence and its peers' outboxes.
//!
//! Everything that touches a document happens in this task, so there is no lock around a
//! `Doc` and every ordering question is answered by reading `Room::run` top to bottom.
//! Connections talk to it through a `RoomHandle` (a bounded channel).
//!
//! The durability invariant lives in `flush`: updates a batch applied are appended to the
//! store and the commit is awaited before any frame of that batch (echo to the sender
//! included) is queued for a peer. Anything that reads document state for a peer (a join, a
//! SyncStep1 reply) first flushes, so no peer ever sees uncommitted state.
//!
//! The room never awaits a peer: frames go out with `try_send`, and a peer whose queue is
//! full is disconnected (it resyncs by state vector when it comes back). Silently skipping a
//! frame would break CRDT sync for that peer, so that is never an option.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant, MissedTickBehavior, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::awareness::{ColourBook, Presence};
use crate::config::Config;
use crate::error::Error;
use crate::id::{BrowserId, DocId, PeerId};
use crate::protocol::{self, Incoming};
use crate::rooms::Rooms;
use crate::store::Store;

/// Messages a room drains per turn; one turn ends in at most one commit.
const BATCH: usize = 256;

/// Why the room closed a peer: sent once on the peer's kick channel.
#[derive(Debug, Clone)]
pub struct Kick {
    pub code: u16,
    pub reason: String,
}

impl From<&Error> for Kick {
    fn from(e: &Error) -> Kick {
        Kick { code: e.close_code(), reason: e.close_reason() }
    }
}

pub enum RoomMsg {
    Join {
        peer: PeerId,
        /// Set when the client said which browser it is (for its cursor colour).
        browser: Option<BrowserId>,
        outbox: mpsc::Sender<Bytes>,
        kick: oneshot::Sender<Kick>,
        reply: oneshot::Sender<Result<(), Kick>>,
    },
    Leave {
        peer: PeerId,
    },
    /// Which cursor colour (an index into `awareness::PALETTE`) this browser gets here.
    Colour {
        browser: BrowserId,
        reply: oneshot::Sender<usize>,
    },
    Incoming {
        peer: PeerId,
        msgs: Vec<Incoming>,
    },
}

/// A clonable way to reach a room. `generation` tells apart two rooms of the same document
/// (one unloading, one freshly loaded) in the registry.
#[derive(Clone)]
pub struct RoomHandle {
    pub(crate) tx: mpsc::Sender<RoomMsg>,
    pub(crate) generation: u64,
    /// Connected peers, kept by the room, read by the document list.
    pub(crate) peer_count: Arc<AtomicUsize>,
}

impl RoomHandle {
    /// Forwards a peer's messages; waits while the room's inbox is full (backpressure on the
    /// sending socket, not on anyone else's). Err means the room is gone.
    pub async fn send(&self, msg: RoomMsg) -> Result<(), Error> {
        self.tx.send(msg).await.map_err(|_| Error::RoomGone)
    }
}

struct Peer {
    outbox: mpsc::Sender<Bytes>,
    kick: Option<oneshot::Sender<Kick>>,
    browser: Option<BrowserId>,
}

pub(crate) struct Room {
    doc_id: DocId,
    doc: Doc,
    presence: Presence,
    colours: ColourBook,
    peers: HashMap<PeerId, Peer>,
    peer_count: Arc<AtomicUsize>,
    store: Store,
    config: Arc<Config>,
    /// Seq of the next update appended to the log.
    next_seq: i64,
    /// Log rows and bytes since the last snapshot: the compaction trigger.
    log_updates: u64,
    log_bytes: u64,
    /// Applied but not yet committed; emptied by `flush`.
    pending_updates: Vec<Bytes>,
    /// Frames for every peer, held until the updates before them are committed.
    pending_frames: Vec<Bytes>,
    /// SyncStep2 against an empty state vector, reused by every fresh joiner until the
    /// document changes (a join storm encodes the document once, not once per joiner).
    full_state: Option<Bytes>,
    /// When the gathered awareness changes go out (see `--awareness-batch-ms`).
    awareness_due: Option<Instant>,
}

impl Room {
    /// Loads the document and runs the room until it unloads, the server shuts down or the
    /// store fails. Joins that arrive while the document is loading wait in the inbox.
    #[allow(clippy::too_many_arguments)] // the registry's one call site names them all
    pub(crate) async fn spawn_run(
        doc_id: DocId,
        generation: u64,
        peer_count: Arc<AtomicUsize>,
        mut inbox: mpsc::Receiver<RoomMsg>,
        rooms: Rooms,
        store: Store,
        config: Arc<Config>,
        shutdown: CancellationToken,
    ) {
        let span = tracing::info_span!("room", doc = %doc_id);
        async move {
            let started = Instant::now();
            let room = match Room::load(doc_id.clone(), store, config).await {
                Ok(room) => Room { peer_count, ..room },
                Err(e) => {
                    tracing::error!(error = %e, "could not load document");
                    rooms.forget(&doc_id, generation, &mut inbox, true);
                    let kick = Kick::from(&e);
                    while let Ok(msg) = inbox.try_recv() {
                        if let RoomMsg::Join { reply, .. } = msg {
                            let _ = reply.send(Err(kick.clone()));
                        }
                    }
                    return;
                }
            };
            tracing::info!(
                updates = room.log_updates,
                ms = started.elapsed().as_millis() as u64,
                "room loaded"
            );
            room.run(generation, inbox, rooms, shutdown).await;
        }
        .instrument(span)
        .await
    }

    async fn load(doc_id: DocId, store: Store, config: Arc<Config>) -> Result<Room, Error> {
        let loaded = store.load(&doc_id).await?;
        let doc = Doc::new();
        for (i, bytes) in loaded.snapshot.iter().chain(&loaded.tail).enumerate() {
            // A row that no longer decodes is corruption. Refuse to serve the document
            // rather than serve (and later compact away) part of it.
            let update = Update::decode_v1(bytes)
                .map_err(|e| Error::InvalidUpdate(format!("stored update {i}: {e}")))?;
            // One transaction per row, as when the updates arrived: yrs keeps per-transaction
            // bookkeeping that grows with every update applied in it (a 100,000-row tail
            // in one transaction took minutes and gigabytes).
            doc.transact_mut()
                .apply_update(update)
                .map_err(|e| Error::InvalidUpdate(format!("stored update {i}: {e}")))?;
        }
        Ok(Room {
            presence: Presence::new(config.awareness_timeout()),
            colours: ColourBook::default(),
            doc_id,
            doc,
            peers: HashMap::new(),
            peer_count: Arc::default(),
            store,
            next_seq: loaded.next_seq,
            log_updates: loaded.tail.len() as u64,
            log_bytes: loaded.tail_bytes,
            config,
            pending_updates: Vec::new(),
            pending_frames: Vec::new(),
            full_state: None,
            awareness_due: None,
        })
    }

    async fn run(
        mut self,
        generation: u64,
        mut inbox: mpsc::Receiver<RoomMsg>,
        rooms: Rooms,
        shutdown: CancellationToken,
    ) {
        let mut sweep = tokio::time::interval(self.config.awareness_timeout() / 4);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        let mut idle_since = Instant::now();
        // A document loaded with a long tail gets compacted before anyone types.
        self.maybe_compact().await;
        let outcome: Result<&str, Error> = loop {
            let idle_deadline = idle_since + self.config.room_grace();
            tokio::select! {
                n = inbox.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break Ok("registry dropped");
                    }
                    if let Err(e) = self.handle_batch(&mut batch).await {
                        break Err(e);
                    }
                    self.maybe_compact().await;
                    if !self.peers.is_empty() {
                        idle_since = Instant::now();
                    }
                }
                _ = sleep_until(self.awareness_due.unwrap_or(idle_deadline)), if self.awareness_due.is_some() => {
                    self.queue_awareness();
                    if let Err(e) = self.flush().await {
                        break Err(e);
                    }
                }
                _ = sweep.tick() => {
                    self.queue_awareness();
                    if let Some(frame) = self.presence.sweep() {
                        self.pending_frames.push(frame);
                        if let Err(e) = self.flush().await {
                            break Err(e);
                        }
                    }
                }
                _ = sleep_until(idle_deadline), if self.peers.is_empty() => {
                    if !inbox.is_empty() {
                        continue;
                    }
                    self.compact_if_any().await;
                    if rooms.forget(&self.doc_id, generation, &mut inbox, false) {
                        break Ok("idle");
                    }
                }
                _ = shutdown.cancelled() => {
                    // Whatever was queued before the signal still gets applied and committed.
                    while let Ok(msg) = inbox.try_recv() {
                        batch.push(msg);
                    }
                    if let Err(e) = self.handle_batch(&mut batch).await {
                        break Err(e);
                    }
                    break Ok("shutdown");
                }
            }
        };
        match outcome {
            Ok(reason) => tracing::info!(reason, "room unloaded"),
            Err(e) => {
                // The document in memory may hold updates the store refused; drop it and let
                // the next join reload from what is committed. Clients still hold their
                // edits and send them again when they resync.
                tracing::error!(error = %e, "room failed, closing its peers");
                rooms.forget(&self.doc_id, generation, &mut inbox, true);
                let kick = Kick::from(&e);
                self.peer_count.store(0, Ordering::Relaxed);
                for (_, peer) in self.peers.drain() {
                    if let Some(k) = peer.kick {
                        let _ = k.send(kick.clone());
                    }
                }
            }
        }
        // Joins that raced with the unload get their reply dropped; they retry on a new room.
        drop(inbox);
    }

    async fn handle_batch(&mut self, batch: &mut Vec<RoomMsg>) -> Result<(), Error> {
        for msg in batch.drain(..) {
            match msg {
                RoomMsg::Join { peer, browser, outbox, kick, reply } => {
                    self.flush().await?;
                    self.join(peer, browser, outbox, kick, reply);
                }
                RoomMsg::Leave { peer } => {
                    self.remove_peer(peer);
                }
                RoomMsg::Colour { browser, reply } => {
                    let _ = reply.send(self.colours.assign(&browser));
                }
                RoomMsg::Incoming { peer, msgs } => {
                    for msg in msgs {
                        self.incoming(peer, msg).await?;
                    }
                }
            }
        }
        if self.config.awareness_batch_ms == 0 {
            self.queue_awareness();
        }
        self.flush().await
    }

    fn join(
        &mut self,
        peer: PeerId,
        browser: Option<BrowserId>,
        outbox: mpsc::Sender<Bytes>,
        kick: oneshot::Sender<Kick>,
        reply: oneshot::Sender<Result<(), Kick>>,
    ) {
        let sv = self.doc.transact().state_vector();
        // The outbox was just created, so these two frames always fit.
        let _ = outbox.try_send(protocol::sync_step1(&sv));
        if let Some(frame) = self.presence.current() {
            let _ = outbox.try_send(frame);
        }
        if reply.send(Ok(())).is_ok() {
            if let Some(browser) = &browser {
                self.colours.connected(browser);
            }
            self.peers.insert(peer, Peer { outbox, kick: Some(kick), browser });
            self.peer_count.store(self.peers.len(), Ordering::Relaxed);
            tracing::debug!(%peer, peers = self.peers.len(), "peer joined");
        }
    }

    /// Forgets a peer that left or was closed, and retracts its presence.
    fn remove_peer(&mut self, peer: PeerId) -> Option<Peer> {
        // States this peer announced before leaving go out before their removal.
        self.queue_awareness();
        let removed = self.peers.remove(&peer);
        if let Some(browser) = removed.as_ref().and_then(|p| p.browser.as_ref()) {
            self.colours.disconnected(browser);
        }
        self.peer_count.store(self.peers.len(), Ordering::Relaxed);
        if let Some(frame) = self.presence.remove_peer(peer) {
            self.pending_frames.push(frame);
        }
        removed
    }

    async fn incoming(&mut self, peer: PeerId, msg: Incoming) -> Result<(), Error> {
        if !self.peers.contains_key(&peer) {
            // Kicked a moment ago; its in-flight messages no longer count.
            return Ok(());
        }
        match msg {
            Incoming::SyncStep1(sv) => {
                self.flush().await?;
                let frame = self.sync_step2_for(&sv);
                self.send_to(peer, frame);
            }
            Incoming::Update(raw) => match self.apply(&raw) {
                Applied::Empty => {}
                Applied::Ok => {
                    self.pending_frames.push(protocol::sync_update(&raw));
                    self.pending_updates.push(raw);
                }
                Applied::Rejected(e) => self.kick(peer, &e),
                Applied::Poisoned(e) => {
                    self.kick(peer, &e);
                    self.flush().await?;
                    self.rebuild().await?;
                }
            },
            Incoming::Awareness { update } => {
                if self.presence.apply(peer, update) && self.awareness_due.is_none() {
                    let window = Duration::from_millis(self.config.awareness_batch_ms);
                    self.awareness_due = Some(Instant::now() + window);
                }
            }
            Incoming::QueryAwareness => {
                if let Some(frame) = self.presence.current() {
                    self.send_to(peer, frame);
                }
            }
        }
        Ok(())
    }

    /// Applies a decoded update. yrs rejects most bad input with an error; a panic deep in
    /// integration is caught too, and then the in-memory document can no longer be trusted,
    /// so it is rebuilt from the store plus what this batch has applied so far.
    fn apply(&mut self, raw: &[u8]) -> Applied {
        let update = match protocol::decode_update(raw) {
            Ok(update) => update,
            Err(e) => return Applied::Rejected(e),
        };
        // Every y-websocket client answers our SyncStep1 with a SyncStep2, empty when it has
        // nothing new: not worth a log row nor a broadcast to the room.
        if update.is_empty() {
            return Applied::Empty;
        }
        let result =
            catch_unwind(AssertUnwindSafe(|| self.doc.transact_mut().apply_update(update)));
        match result {
            Ok(Ok(())) => {
                self.full_state = None;
                Applied::Ok
            }
            Ok(Err(e)) => Applied::Rejected(Error::InvalidUpdate(e.to_string())),
            Err(_) => {
                tracing::error!("update integration panicked; rebuilding document from the log");
                Applied::Poisoned(Error::InvalidUpdate("update could not be integrated".into()))
            }
        }
    }

    /// Replaces the in-memory document with what the store holds (everything committed).
    async fn rebuild(&mut self) -> Result<(), Error> {
        let fresh =
            Room::load(self.doc_id.clone(), self.store.clone(), self.config.clone()).await?;
        self.doc = fresh.doc;
        self.next_seq = fresh.next_seq;
        self.log_updates = fresh.log_updates;
        self.log_bytes = fresh.log_bytes;
        self.full_state = None;
        Ok(())
    }

    fn sync_step2_for(&mut self, sv: &StateVector) -> Bytes {
        if *sv == StateVector::default() {
            if let Some(frame) = &self.full_state {
                return frame.clone();
            }
            let frame = protocol::sync_step2(&self.doc.transact().encode_state_as_update_v1(sv));
            self.full_state = Some(frame.clone());
            return frame;
        }
        protocol::sync_step2(&self.doc.transact().encode_state_as_update_v1(sv))
    }

    /// Moves the gathered awareness changes into the outgoing frames.
    fn queue_awareness(&mut self) {
        self.awareness_due = None;
        if let Some(frame) = self.presence.take_pending() {
            self.pending_frames.push(frame);
        }
    }

    /// Commits pending updates, then releases the frames that waited for them.
    async fn flush(&mut self) -> Result<(), Error> {
        if !self.pending_updates.is_empty() {
            let updates = std::mem::take(&mut self.pending_updates);
            let n = updates.len() as u64;
            let bytes: u64 = updates.iter().map(|u| u.len() as u64).sum();
            self.store.append(&self.doc_id, self.next_seq, updates).await?;
            self.next_seq += n as i64;
            self.log_updates += n;
            self.log_bytes += bytes;
        }
        for frame in std::mem::take(&mut self.pending_frames) {
            self.broadcast(frame);
        }
        Ok(())
    }

    fn broadcast(&mut self, frame: Bytes) {
        let mut slow = Vec::new();
        for (id, peer) in &self.peers {
            match peer.outbox.try_send(frame.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => slow.push(*id),
                // The connection ended; its Leave is on the way.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        for id in slow {
            self.kick(id, &Error::SlowConsumer);
        }
    }

    fn send_to(&mut self, peer: PeerId, frame: Bytes) {
        let full = match self.peers.get(&peer) {
            Some(p) => matches!(p.outbox.try_send(frame), Err(mpsc::error::TrySendError::Full(_))),
            None => false,
        };
        if full {
            self.kick(peer, &Error::SlowConsumer);
        }
    }

    /// Disconnects one peer with a close code and retracts its presence.
    fn kick(&mut self, peer: PeerId, error: &Error) {
        if let Some(mut p) = self.remove_peer(peer) {
            // debug: the connection logs the close itself, once.
            tracing::debug!(%peer, error = %error, "closing peer");
            if let Some(k) = p.kick.take() {
                let _ = k.send(Kick::from(error));
            }
        }
    }

    async fn maybe_compact(&mut self) {
        if self.log_updates >= self.config.compact_updates
            || self.log_bytes >= self.config.compact_bytes
        {
            self.compact_if_any().await;
        }
    }

    async fn compact_if_any(&mut self) {
        if self.log_updates == 0 {
            return;
        }
        let started = Instant::now();
        let snapshot = self.doc.transact().encode_state_as_update_v1(&StateVector::default());
        let size = snapshot.len();
        match self.store.compact(&self.doc_id, snapshot, self.next_seq - 1).await {
            Ok(()) => {
                tracing::info!(
                    updates = self.log_updates,
                    snapshot_bytes = size,
                    ms = started.elapsed().as_millis() as u64,
                    "compacted"
                );
                self.log_updates = 0;
                self.log_bytes = 0;
            }
            // The log is still complete, so this only costs load time; retry next turn.
            Err(e) => tracing::warn!(error = %e, "compaction failed"),
        }
    }
}

enum Applied {
    Ok,
    /// Nothing to apply, store or relay.
    Empty,
    /// yrs refused the update; the document is unchanged.
    Rejected(Error),
    /// yrs panicked half-way; the document must be rebuilt.
    Poisoned(Error),
}
