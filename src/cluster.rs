//! Several nodes on one shared store: what this node hears from the others, and what it
//! tells them. Runs only with a shared backend (PostgreSQL); a single SQLite node never
//! starts it.
//!
//! The store's feed is a doorbell, not the data: a notification names a document and the
//! head another node committed, and the room reads the rows itself (`Store::since`), so
//! whatever reaches a client was read back from committed rows. Doorbells can be lost (a
//! dropped connection), so every `poll` interval, and at once after the feed reconnects,
//! this loop reads the heads of every loaded document and rings for those that moved.
//!
//! Presence has no store: frames go node to node, and a node's peers' states are kept per
//! node on the others. A node that says goodbye, or whose heartbeat stops for
//! `NODE_SILENCE`, has its peers' states removed everywhere (clients renew theirs every
//! 15 s, so the awareness timeout would remove them too, only later).

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::rooms::Rooms;
use crate::store::{FeedEvent, Publish, Store};

/// How often this node says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node not heard from for this long is taken for dead.
const NODE_SILENCE: Duration = Duration::from_secs(10);
/// How long a node that said goodbye stays gone (its instance id never comes back).
const GONE_FOR: Duration = Duration::from_secs(60);
/// How often the store's reachability is checked (and an outage acted on).
const HEALTH_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Cluster {
    pub(crate) store: Store,
    pub(crate) rooms: Rooms,
    pub(crate) auth: Auth,
    pub(crate) poll: Duration,
}

impl Cluster {
    pub(crate) async fn run(
        self,
        mut feed: mpsc::Receiver<FeedEvent>,
        shutdown: CancellationToken,
    ) {
        let mut heartbeat = interval(HEARTBEAT);
        let mut poll = interval(self.poll);
        let mut health = interval(HEALTH_EVERY);
        for timer in [&mut heartbeat, &mut poll, &mut health] {
            timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        let mut nodes: HashMap<String, Instant> = HashMap::new();
        // Nodes that said goodbye: a presence frame of theirs still in flight must not bring
        // their peers back.
        let mut gone: HashMap<String, Instant> = HashMap::new();
        // Peers are sent away once per outage, when it passes the limit.
        let mut sent_away = false;
        loop {
            tokio::select! {
                event = feed.recv() => {
                    let Some(event) = event else { break };
                    self.handle(event, &mut nodes, &mut gone).await;
                }
                _ = heartbeat.tick() => {
                    self.store.publish(Publish::Alive);
                    let now = Instant::now();
                    gone.retain(|_, at| now.duration_since(*at) < GONE_FOR);
                    nodes.retain(|node, seen| {
                        let alive = now.duration_since(*seen) < NODE_SILENCE;
                        if !alive {
                            tracing::warn!(node, "node silent; removing its peers' presence");
                            self.rooms.node_gone(node);
                        }
                        alive
                    });
                }
                _ = poll.tick() => self.poll().await,
                _ = health.tick() => {
                    let healthy = self.store.health().await.is_ok();
                    match self.store.outage() {
                        Some((down, limit)) if down >= limit && !sent_away => {
                            tracing::error!(
                                down_ms = down.as_millis() as u64,
                                "database unreachable past the limit; closing every peer (1013)"
                            );
                            self.rooms.send_everyone_away();
                            sent_away = true;
                        }
                        None if healthy => sent_away = false,
                        _ => {}
                    }
                }
                _ = shutdown.cancelled() => {
                    self.store.say_goodbye().await;
                    break;
                }
            }
        }
    }

    async fn handle(
        &self,
        event: FeedEvent,
        nodes: &mut HashMap<String, Instant>,
        gone: &mut HashMap<String, Instant>,
    ) {
        match event {
            FeedEvent::Awareness { node, .. } | FeedEvent::NodeAlive { node }
                if gone.contains_key(&node) => {}
            FeedEvent::Committed { doc, head } => self.rooms.committed_elsewhere(&doc, head),
            FeedEvent::Deleted { doc } => self.rooms.deleted_elsewhere(&doc),
            FeedEvent::Awareness { doc, node, frame } => {
                nodes.insert(node.clone(), Instant::now());
                self.rooms.awareness_from(&doc, &node, frame);
            }
            FeedEvent::NodeAlive { node } => {
                nodes.insert(node, Instant::now());
            }
            FeedEvent::NodeGone { node } => {
                tracing::info!(node, "node left");
                nodes.remove(&node);
                self.rooms.node_gone(&node);
                gone.insert(node, Instant::now());
            }
            FeedEvent::Revoked => match self.store.revocations().await {
                Ok(list) => self.auth.revocations().merge(list),
                Err(e) => tracing::warn!(error = %e, "could not read the deny list"),
            },
            FeedEvent::Resync => {
                // We heard nothing while disconnected: nobody is dead for that, and every
                // loaded document may have moved.
                let now = Instant::now();
                nodes.values_mut().for_each(|seen| *seen = now);
                self.poll().await;
                if let Ok(list) = self.store.revocations().await {
                    self.auth.revocations().merge(list);
                }
            }
        }
    }

    /// Reads the heads of every loaded document and rings for those that moved.
    async fn poll(&self) {
        let docs = self.rooms.loaded();
        for chunk in docs.chunks(1000) {
            match self.store.heads(chunk).await {
                Ok(heads) => {
                    for doc in chunk {
                        if !heads.iter().any(|(d, _)| d == doc) {
                            // Nothing stored: new, or deleted elsewhere (the room tells).
                            self.rooms.verify(doc);
                        }
                    }
                    for (doc, head) in heads {
                        self.rooms.committed_elsewhere(&doc, head);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "poll of loaded documents failed");
                    return;
                }
            }
        }
    }
}
