//! A room: one task that owns one loaded document. The logic lives in `core` (no IO); this
//! file is the loop around it: the inbox, the store calls and the timers.
//!
//! Everything that touches a document happens in this task, so there is no lock around a
//! `Doc` and every ordering question is answered by reading `Room::run` top to bottom.
//! Connections and the HTTP API reach it through a `RoomHandle` (a bounded channel).
//!
//! Every arm of the loop ends in `flush`: rows the core queued are appended and the commit
//! awaited, then the core releases what waited for it. A path that queues frames cannot
//! forget to send them.

pub(crate) mod core;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant, MissedTickBehavior, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub(crate) use self::core::{Applied, EditFn, NewPeer, ReadFn, Stats};
use self::core::{Limits, RoomCore, build_doc};
use crate::config::Config;
use crate::error::Error;
use crate::id::{BrowserId, DocId, PeerId};
use crate::protocol::Incoming;
use crate::store::Store;

/// Messages a room drains per turn; one turn ends in at most one commit.
const BATCH: usize = 256;
/// Inbox depth per room: enough to absorb a burst from every peer without making one fast
/// writer wait, small enough that a stuck room pushes back on its writers.
const INBOX: usize = 1024;

/// Where an update that does not come from a connected peer came from (for the log).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
    /// `POST /api/docs/{doc}/update`.
    Api,
}

pub(crate) enum RoomMsg {
    Join {
        peer: NewPeer,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Leave {
        peer: PeerId,
    },
    /// Which cursor colour (an index into `colour::PALETTE`) this browser gets here.
    Colour {
        browser: BrowserId,
        reply: oneshot::Sender<usize>,
    },
    Incoming {
        peer: PeerId,
        msgs: Vec<Incoming>,
    },
    /// An update from outside the peers, on the same write path; the reply comes after the
    /// commit, or at once with the reason the update was refused.
    Apply {
        update: Bytes,
        origin: Origin,
        reply: oneshot::Sender<Result<Applied, Error>>,
    },
    /// A read of the document (the documents API), answered after the pending commit.
    Read {
        read: ReadFn,
    },
    /// A change made by the server; `estimate` bounds the bytes it adds.
    Edit {
        edit: EditFn,
        estimate: u64,
        reply: oneshot::Sender<Result<Applied, Error>>,
    },
    /// Deletes the document: what is queued is committed first, then every stored row goes,
    /// the peers are closed with 4404 and the room ends. True if anything was stored or
    /// anyone was connected.
    Delete {
        reply: oneshot::Sender<Result<bool, Error>>,
    },
    /// Another node committed to this document (the head is in `RoomHandle::feed_head`):
    /// a wake-up; the room reads what it is missing after the batch.
    Feed,
    /// Another node deleted the document: the peers are closed with 4404, the room ends.
    DeletedElsewhere,
    /// The cluster's poll found no stored row of this document: if the room holds one, it
    /// was deleted elsewhere (a notification that was lost).
    Verify,
    /// Presence from another node's peers.
    RemoteAwareness {
        node: String,
        frame: Bytes,
    },
    /// Another node is gone; so is its peers' presence.
    NodeGone {
        node: String,
    },
    /// The database has been unreachable for too long: every peer is closed (1013) so it
    /// moves to a healthy node, and the room ends.
    SendAway,
}

/// A clonable way to reach a room. `generation` tells apart two rooms of the same document
/// (one unloading, one freshly loaded) in the registry.
#[derive(Clone)]
pub(crate) struct RoomHandle {
    tx: mpsc::Sender<RoomMsg>,
    generation: u64,
    /// Connected peers, kept by the room, read by the document list.
    peer_count: Arc<AtomicUsize>,
    /// The highest seq another node is known to have committed (the cluster's doorbell;
    /// a number rather than a message, so a full inbox cannot lose it).
    feed_head: Arc<AtomicI64>,
    /// The room's `applied`, mirrored: a doorbell rings while the room is behind, even for
    /// a head it heard before (a read that failed is retried on the next poll).
    applied: Arc<AtomicI64>,
}

impl RoomHandle {
    /// Forwards a message; waits while the room's inbox is full (backpressure on the
    /// sender, not on anyone else). Err means the room is gone.
    pub(crate) async fn send(&self, msg: RoomMsg) -> Result<(), Error> {
        self.tx.send(msg).await.map_err(|_| Error::RoomGone)
    }

    /// Forwards a message without waiting; dropped if the inbox is full or closed.
    pub(crate) fn try_send(&self, msg: RoomMsg) {
        let _ = self.tx.try_send(msg);
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub(crate) fn peers(&self) -> usize {
        self.peer_count.load(Ordering::Relaxed)
    }

    /// Another node committed this document up to `head`: the room catches up.
    pub(crate) fn feed(&self, head: i64) {
        let before = self.feed_head.fetch_max(head, Ordering::AcqRel);
        if before < head || self.applied.load(Ordering::Acquire) < head {
            self.try_send(RoomMsg::Feed);
        }
    }
}

/// The one thing a room needs from the registry: to leave it. `retire` runs under the
/// registry's lock; when it returns true the registry forgets this generation of the room,
/// so no new handle to a closing inbox is ever handed out.
pub(crate) trait Registry: Send + Sync {
    fn retire(&self, doc_id: &DocId, generation: u64, retire: &mut dyn FnMut() -> bool) -> bool;
}

/// A room's registration: its document and generation, and the way out.
pub(crate) struct Lease {
    pub(crate) doc_id: DocId,
    pub(crate) generation: u64,
    pub(crate) registry: Arc<dyn Registry>,
}

impl Lease {
    /// Unregisters and closes the inbox, atomically with respect to handle lookups; unless
    /// `force` (a failed room), only when nothing waits in the inbox.
    fn end(&self, inbox: &mut mpsc::Receiver<RoomMsg>, force: bool) -> bool {
        self.registry.retire(&self.doc_id, self.generation, &mut || {
            if !force && !inbox.is_empty() {
                return false;
            }
            inbox.close();
            true
        })
    }
}

/// What a room needs from the server to run.
#[derive(Clone)]
pub(crate) struct RoomDeps {
    pub(crate) store: Store,
    pub(crate) config: Arc<Config>,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

/// Starts the room for `lease.doc_id` and returns the handle to it. The document loads in
/// the task; messages that arrive meanwhile wait in the inbox.
pub(crate) fn spawn(lease: Lease, deps: &RoomDeps) -> RoomHandle {
    let (tx, inbox) = mpsc::channel(INBOX);
    let peer_count = Arc::new(AtomicUsize::new(0));
    let feed_head = Arc::new(AtomicI64::new(0));
    let applied = Arc::new(AtomicI64::new(0));
    let handle = RoomHandle {
        tx,
        generation: lease.generation,
        peer_count: peer_count.clone(),
        feed_head: feed_head.clone(),
        applied: applied.clone(),
    };
    let span = tracing::info_span!("room", doc = %lease.doc_id);
    let deps_for_task = deps.clone();
    let marks = Marks { feed_head, applied };
    deps.tracker.spawn(run(lease, inbox, peer_count, marks, deps_for_task).instrument(span));
    handle
}

async fn run(
    lease: Lease,
    mut inbox: mpsc::Receiver<RoomMsg>,
    peer_count: Arc<AtomicUsize>,
    marks: Marks,
    deps: RoomDeps,
) {
    let started = Instant::now();
    let limits = Limits {
        compact_updates: deps.config.compact_updates,
        compact_bytes: deps.config.compact_bytes,
        awareness_batch: std::time::Duration::from_millis(deps.config.awareness_batch_ms),
        awareness_timeout: deps.config.awareness_timeout(),
        max_doc_bytes: deps.config.max_doc_bytes,
        max_room_awareness_bytes: deps.config.max_room_awareness_bytes,
        state_bytes_per_min: deps.config.max_state_bytes_per_min,
        cluster: deps.store.is_shared(),
    };
    let core = match load(&lease.doc_id, &deps.store).await {
        Ok((doc, loaded)) => RoomCore::new(doc, &loaded, limits, peer_count),
        Err(e) => {
            tracing::error!(error = %e.cause(), "could not load document");
            lease.end(&mut inbox, true);
            while let Ok(msg) = inbox.try_recv() {
                refuse(msg, &e);
            }
            return;
        }
    };
    tracing::info!(
        updates = core.log_updates(),
        ms = started.elapsed().as_millis() as u64,
        "room loaded"
    );
    let batch_window = Duration::from_millis(deps.config.batch_ms);
    let room = Room {
        core,
        lease,
        store: deps.store,
        config: deps.config,
        deleted: None,
        batch_window,
        last_flush: None,
        marks,
    };
    room.run(inbox, deps.shutdown).await;
}

async fn load(doc_id: &DocId, store: &Store) -> Result<(yrs::Doc, crate::store::Loaded), Error> {
    let loaded = store.load(doc_id).await?;
    let doc = build_doc(doc_id.as_str(), &loaded)?;
    Ok((doc, loaded))
}

/// Answers a message the room will never handle.
fn refuse(msg: RoomMsg, error: &Error) {
    match msg {
        RoomMsg::Join { reply, .. } => {
            let _ = reply.send(Err(error.clone()));
        }
        RoomMsg::Apply { reply, .. } | RoomMsg::Edit { reply, .. } => {
            let _ = reply.send(Err(error.clone()));
        }
        RoomMsg::Delete { reply } => {
            let _ = reply.send(Err(error.clone()));
        }
        RoomMsg::Leave { .. }
        | RoomMsg::Colour { .. }
        | RoomMsg::Incoming { .. }
        | RoomMsg::Read { .. }
        | RoomMsg::Feed
        | RoomMsg::Verify
        | RoomMsg::DeletedElsewhere
        | RoomMsg::RemoteAwareness { .. }
        | RoomMsg::NodeGone { .. }
        | RoomMsg::SendAway => {}
    }
}

struct Room {
    core: RoomCore,
    lease: Lease,
    store: Store,
    config: Arc<Config>,
    /// Set once the document is deleted: answered after the room has left the registry,
    /// so a client that connects after the answer gets a fresh, empty document.
    deleted: Option<(oneshot::Sender<Result<bool, Error>>, bool)>,
    /// `--batch-ms`, and when the room last had something to commit or send.
    batch_window: Duration,
    last_flush: Option<Instant>,
    marks: Marks,
}

/// The numbers a room shares with its handles (see `RoomHandle::feed_head`, `applied`).
struct Marks {
    feed_head: Arc<AtomicI64>,
    applied: Arc<AtomicI64>,
}

impl Room {
    async fn run(mut self, mut inbox: mpsc::Receiver<RoomMsg>, shutdown: CancellationToken) {
        let mut sweep = tokio::time::interval(self.config.awareness_timeout() / 4);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        let mut idle_since = Instant::now();
        // A document loaded with a long tail gets compacted before anyone types.
        self.maybe_compact().await;
        let outcome: Result<&str, Error> = loop {
            // A document nobody ever wrote goes as soon as its last peer does: connecting to
            // random names must not pin a room per name for the grace period.
            let grace =
                if self.core.is_blank() { Duration::ZERO } else { self.config.room_grace() };
            let idle_deadline = idle_since + grace;
            let awareness_due = self.core.awareness_due();
            let step = tokio::select! {
                n = inbox.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break Ok("registry dropped");
                    }
                    self.gather(&mut inbox, &mut batch).await;
                    let step = self.handle_batch(&mut batch).await;
                    if !self.core.is_empty() {
                        idle_since = Instant::now();
                    }
                    step
                }
                _ = sleep_until(awareness_due.unwrap_or(idle_deadline)), if awareness_due.is_some() => {
                    self.core.flush_awareness();
                    self.flush().await
                }
                _ = sweep.tick() => {
                    self.core.sweep();
                    self.flush().await
                }
                _ = sleep_until(idle_deadline), if self.core.is_empty() => {
                    if !inbox.is_empty() {
                        continue;
                    }
                    self.compact_if_any().await;
                    if self.lease.end(&mut inbox, false) {
                        break Ok("idle");
                    }
                    Ok(())
                }
                _ = shutdown.cancelled() => {
                    // Whatever was queued before the signal still gets applied and committed.
                    while let Ok(msg) = inbox.try_recv() {
                        batch.push(msg);
                    }
                    match self.handle_batch(&mut batch).await {
                        Ok(()) => break Ok("shutdown"),
                        Err(e) => Err(e),
                    }
                }
            };
            if let Err(e) = step {
                break Err(e);
            }
            self.maybe_compact().await;
        };
        match outcome {
            Ok(reason) => tracing::info!(reason, "room unloaded"),
            Err(Error::DocDeleted) => {
                self.lease.end(&mut inbox, true);
                self.core.fail(&Error::DocDeleted);
                while let Ok(msg) = inbox.try_recv() {
                    refuse(msg, &Error::DocDeleted);
                }
                if let Some((reply, existed)) = self.deleted.take() {
                    let _ = reply.send(Ok(existed));
                }
                tracing::info!("document deleted; room unloaded");
            }
            Err(e) => {
                // The document in memory may hold updates the store refused; drop it and let
                // the next join reload from what is committed. Clients still hold their
                // edits and send them again when they resync.
                tracing::error!(error = %e.cause(), "room failed, closing its peers");
                self.lease.end(&mut inbox, true);
                self.core.fail(&e);
                while let Ok(msg) = inbox.try_recv() {
                    refuse(msg, &e);
                }
            }
        }
        // Joins that raced with the unload get their reply dropped; they retry on a new room.
        drop(inbox);
    }

    /// The batch window: a room that flushed less than `--batch-ms` ago gathers what
    /// arrives until the window ends (or the batch is full), so that a busy room pays one
    /// commit and one write per peer for many messages. A quiet room starts at once.
    async fn gather(&mut self, inbox: &mut mpsc::Receiver<RoomMsg>, batch: &mut Vec<RoomMsg>) {
        let Some(until) = self.last_flush.map(|at| at + self.batch_window) else { return };
        // What another node committed is relayed at once: it already paid its window.
        if batch.iter().all(|m| matches!(m, RoomMsg::Feed)) {
            return;
        }
        if self.batch_window.is_zero() || Instant::now() >= until {
            return;
        }
        while batch.len() < BATCH {
            tokio::select! {
                biased;
                n = inbox.recv_many(batch, BATCH - batch.len()) => if n == 0 { return },
                _ = sleep_until(until) => return,
            }
        }
    }

    async fn handle_batch(&mut self, batch: &mut Vec<RoomMsg>) -> Result<(), Error> {
        for msg in batch.drain(..) {
            match msg {
                RoomMsg::Join { peer, reply } => self.core.join(peer, reply),
                RoomMsg::Leave { peer } => self.core.leave(peer),
                RoomMsg::Colour { browser, reply } => {
                    let _ = reply.send(self.core.colour(&browser));
                }
                RoomMsg::Incoming { peer, msgs } => {
                    for msg in msgs {
                        // A bug in handling one message must cost its sender's connection,
                        // not the room: the peer is closed (1011), the document rebuilt.
                        let core = &mut self.core;
                        if catch_unwind(AssertUnwindSafe(|| core.incoming(peer, msg))).is_err() {
                            tracing::error!(%peer, "handling a message panicked; closing that peer");
                            self.core.panicked(peer);
                        }
                        self.recover_if_poisoned().await?;
                    }
                }
                RoomMsg::Apply { update, origin, reply } => {
                    tracing::debug!(?origin, bytes = update.len(), "update from outside the room");
                    self.core.apply(update, reply);
                    self.recover_if_poisoned().await?;
                }
                RoomMsg::Read { read } => self.core.read(read),
                RoomMsg::Edit { edit, estimate, reply } => {
                    self.core.edit(edit, estimate, reply);
                    self.recover_if_poisoned().await?;
                }
                RoomMsg::Feed => {}
                RoomMsg::Verify => {
                    // The poll found no heads row: read afresh to tell a deletion (reset)
                    // from a room that simply has nothing stored yet.
                    if self.core.applied() > 0 || self.core.epoch() != 0 {
                        let doc = &self.lease.doc_id;
                        match self.store.since(doc, self.core.applied(), 0).await {
                            Ok(crate::store::Since::Reload(loaded)) => {
                                self.core.remote_reload(&loaded)
                            }
                            Ok(crate::store::Since::Rows { epoch, rows }) => {
                                self.core.remote_rows(epoch, rows)
                            }
                            Err(e) => tracing::debug!(error = %e, "could not verify the document"),
                        }
                        if self.core.is_reset() {
                            return Err(Error::DocDeleted);
                        }
                    }
                }
                RoomMsg::DeletedElsewhere => {
                    tracing::info!("document deleted on another node");
                    return Err(Error::DocDeleted);
                }
                RoomMsg::RemoteAwareness { node, frame } => {
                    self.core.remote_awareness(&node, &frame);
                }
                RoomMsg::NodeGone { node } => self.core.node_gone(&node),
                RoomMsg::SendAway => {
                    return Err(Error::Store(crate::store::StoreError::Unavailable(
                        "the database is unreachable".into(),
                    )));
                }
                RoomMsg::Delete { reply } => {
                    // What came before the delete is committed (and answered) first.
                    self.flush().await?;
                    let had_peers = !self.core.is_empty();
                    match self.store.delete(&self.lease.doc_id).await {
                        Ok(existed) => {
                            tracing::info!(existed, "deleting document");
                            self.deleted = Some((reply, existed || had_peers));
                            // Messages after it in this batch are dropped unanswered: their
                            // senders retry, on a fresh room.
                            return Err(Error::DocDeleted);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e.into()));
                        }
                    }
                }
            }
        }
        if self.config.awareness_batch_ms == 0 {
            self.core.flush_awareness();
        }
        self.flush().await?;
        self.follow_feed().await
    }

    /// Reads and applies what other nodes committed past what this room holds (rings of the
    /// doorbell, or a gap below our own commit), then relays it. An unreachable store only
    /// delays it: the next doorbell or poll tries again.
    async fn follow_feed(&mut self) -> Result<(), Error> {
        for _ in 0..4 {
            let target = self.marks.feed_head.load(Ordering::Acquire).max(self.core.known_head());
            if target <= self.core.applied() {
                break;
            }
            let after = self.core.applied();
            match self.store.since(&self.lease.doc_id, after, target).await {
                Ok(crate::store::Since::Rows { epoch, rows }) => {
                    let nothing = rows.is_empty();
                    self.core.remote_rows(epoch, rows);
                    if nothing && !self.core.is_reset() {
                        break;
                    }
                }
                Ok(crate::store::Since::Reload(loaded)) => self.core.remote_reload(&loaded),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read other nodes' updates yet");
                    break;
                }
            }
            if self.core.is_reset() {
                return Err(Error::DocDeleted);
            }
            self.recover_if_poisoned().await?;
            self.flush().await?;
            if self.core.applied() == after {
                break;
            }
        }
        self.marks.applied.store(self.core.applied(), Ordering::Release);
        if self.core.is_reset() {
            return Err(Error::DocDeleted);
        }
        Ok(())
    }

    /// After yrs panicked mid-update: commit what was good before it, then rebuild the
    /// document from the store (everything committed, nothing of the culprit).
    async fn recover_if_poisoned(&mut self) -> Result<(), Error> {
        if !self.core.is_poisoned() {
            return Ok(());
        }
        self.flush().await?;
        let (doc, loaded) = load(&self.lease.doc_id, &self.store).await?;
        self.core.rebuild(doc, &loaded);
        Ok(())
    }

    /// Commits what the core queued, then lets it release what waited for the commit.
    async fn flush(&mut self) -> Result<(), Error> {
        if self.core.has_pending() {
            self.last_flush = Some(Instant::now());
        }
        if let Some(rows) = self.core.take_rows() {
            let bytes: u64 = rows.iter().map(|r| r.len() as u64).sum();
            let epoch = self.core.epoch();
            let appended = match self.store.append(&self.lease.doc_id, rows, epoch).await {
                Ok(appended) => appended,
                // Deleted on another node under this room: its peers hear 4404.
                Err(crate::store::StoreError::Deleted(_)) => return Err(Error::DocDeleted),
                Err(e) => return Err(e.into()),
            };
            self.core.committed(appended, bytes);
        }
        self.core.release();
        self.marks.applied.store(self.core.applied(), Ordering::Release);
        debug_assert!(!self.core.has_pending(), "everything queued was released");
        for frame in self.core.take_published() {
            self.store.publish(crate::store::Publish::Awareness {
                doc: &self.lease.doc_id,
                frame: &frame,
            });
        }
        Ok(())
    }

    async fn maybe_compact(&mut self) {
        if self.core.wants_compaction() {
            self.compact_if_any().await;
        }
    }

    async fn compact_if_any(&mut self) {
        let Some((snapshot, upto_seq)) = self.core.snapshot() else { return };
        let started = Instant::now();
        let size = snapshot.len();
        match self.store.compact(&self.lease.doc_id, snapshot, upto_seq, self.core.epoch()).await {
            Ok(replaced) => {
                tracing::info!(
                    updates = self.core.log_updates(),
                    snapshot_bytes = size,
                    replaced,
                    ms = started.elapsed().as_millis() as u64,
                    "compacted"
                );
                self.core.compacted(upto_seq, size as u64, replaced);
            }
            // The log is still complete, so this only costs load time; retry next turn.
            Err(e) => tracing::warn!(error = %e, "compaction failed"),
        }
    }
}
