//! Durable storage of documents: per document, a snapshot and an append-only log of the raw
//! updates after it. This file is the API the rest of the server sees; `sqlite` (embedded,
//! one node) and `postgres` (shared by several nodes) are the backends, and nothing outside
//! this folder knows SQL or sees a `sqlx` type.
//!
//! A shared backend also carries the nodes' conversation (`FeedEvent`s in, `publish` out):
//! which documents another node committed, presence, heartbeats. It is the database's own
//! notification mechanism, so the cluster needs nothing but the database it stores in.
//!
//! Seqs are handed out here, by the backend, inside the transaction that writes the rows,
//! never computed in a room's memory: that is what lets a second writer (a later shared
//! backend, or a stray second process) never reuse one.
//!
//! Stored data is checked when it is read. A log with a gap, rows the snapshot should
//! have replaced, or a head that does not match the rows is refused as a whole
//! (`StoreError::Corrupt`) rather than served in part, which a later compaction would
//! then make permanent.

mod job;
mod postgres;
mod sqlite;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::Serialize;

use crate::config::SyncMode;
use crate::id::DocId;

/// The largest seq the store hands out (2^53 - 1: exact in JavaScript and in JSON). A head
/// beyond it can only come from a damaged or hand-edited database.
pub(crate) const MAX_SEQ: i64 = (1 << 53) - 1;

/// Why the store could not do what was asked. Backend-neutral: causes are kept as text
/// (they go to the log; clients only learn "storage failure" or "inconsistent").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The writer or the database connection is gone (shutdown, or a crashed worker).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The database refused or failed the operation; the text is its own message
    /// (for example "database or disk is full").
    #[error("database error: {0}")]
    Database(String),
    /// The document was deleted (by another node) under the writer: nothing was written.
    #[error("document {0:?} was deleted")]
    Deleted(String),
    /// What is stored for this document does not add up; it is refused, not served.
    #[error("stored data of {doc:?} is inconsistent: {detail}")]
    Corrupt { doc: String, detail: String },
}

impl From<sqlx::Error> for StoreError {
    /// A lost connection, a closed pool or a crashed worker is `Unavailable` (worth waiting
    /// for); anything the database itself refused is `Database`.
    fn from(e: sqlx::Error) -> StoreError {
        if postgres::is_transient(&e) {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Database(e.to_string())
        }
    }
}

impl StoreError {
    pub(crate) fn corrupt(doc: &DocId, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt { doc: doc.as_str().to_string(), detail: detail.into() }
    }
}

pub(crate) type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A document as stored: the snapshot and the log rows after it, already checked to be
/// consistent (gapless from the snapshot's seq up to the head).
#[derive(Debug, Default, Clone)]
pub(crate) struct Loaded {
    pub(crate) snapshot: Option<Vec<u8>>,
    /// Log rows after the snapshot, in seq order.
    pub(crate) tail: Vec<Vec<u8>>,
    /// The seq of the last stored update (0 for a new document).
    pub(crate) head: i64,
    pub(crate) tail_bytes: u64,
    /// Which life of the document this is (PostgreSQL: a new number each time a deleted
    /// name is written again; 0 when nothing is stored, and always 0 on SQLite, where a
    /// deletion runs in the document's only room).
    pub(crate) epoch: i64,
}

/// The seqs a committed append received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    pub(crate) first: i64,
    pub(crate) last: i64,
    /// The document's epoch the rows went into (see `Loaded::epoch`).
    pub(crate) epoch: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct DocSummary {
    pub(crate) name: String,
    /// Milliseconds since the Unix epoch.
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    /// Stored bytes: snapshot and log rows.
    pub(crate) bytes: i64,
}

/// Webhook receivers and the debounce of `document.updated` (see `webhook`).
#[derive(Debug, Clone)]
pub(crate) struct WebhookOutbox {
    pub(crate) urls: Vec<String>,
    pub(crate) debounce_ms: i64,
    pub(crate) max_wait_ms: i64,
}

/// One event owed to one receiver.
#[derive(Debug, Clone)]
pub(crate) struct WebhookEvent {
    pub(crate) id: i64,
    pub(crate) url: String,
    pub(crate) doc: String,
    pub(crate) event: String,
    pub(crate) seq: i64,
    pub(crate) updated_at: i64,
    pub(crate) attempts: i64,
}

#[derive(Debug, Clone)]
pub(crate) enum WebhookOutcome {
    /// The receiver answered 2xx for the event as it was at `seq`.
    Delivered {
        id: i64,
        seq: i64,
    },
    Failed {
        id: i64,
        error: String,
        retry_at: i64,
    },
    /// Every event owed to this receiver goes (an admin's decision).
    Drop {
        url: String,
    },
}

/// Per receiver: what is owed, what is failing.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct WebhookStatus {
    pub(crate) url: String,
    /// False for a receiver no longer configured: its events are kept, not sent.
    pub(crate) configured: bool,
    pub(crate) pending: i64,
    /// Pending events whose last attempt failed.
    pub(crate) failing: i64,
    /// When the oldest pending event started (ms since the epoch).
    pub(crate) oldest_pending_at: Option<i64>,
    pub(crate) last_error: Option<String>,
    pub(crate) last_error_at: Option<i64>,
}

/// A clonable handle on the store. Writes are serialised by the backend (group commit);
/// reads run beside them.
#[derive(Clone)]
pub(crate) struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// What a shared store tells this node about the others (PostgreSQL only).
#[derive(Debug)]
pub(crate) enum FeedEvent {
    /// Another node committed updates to `doc`, up to seq `head`.
    Committed { doc: DocId, head: i64 },
    /// Another node deleted `doc`.
    Deleted { doc: DocId },
    /// Presence from another node's peers: an awareness frame as sent to clients.
    Awareness { doc: DocId, node: String, frame: Bytes },
    /// Another node's heartbeat.
    NodeAlive { node: String },
    /// Another node said goodbye (a clean shutdown): its peers' presence goes now.
    NodeGone { node: String },
    /// The deny list changed.
    Revoked,
    /// The feed was (re)connected: anything sent before may have been missed.
    Resync,
}

/// What a node is missing of a document it holds.
#[derive(Debug)]
pub(crate) enum Since {
    /// The rows after the asked seq, in order, gapless (possibly none), of this epoch.
    Rows { epoch: i64, rows: Vec<(i64, Vec<u8>)> },
    /// Those rows were compacted away: the whole document, to merge.
    Reload(Loaded),
}

/// What a node says to the others (PostgreSQL only; nothing on SQLite).
pub(crate) enum Publish<'a> {
    Awareness { doc: &'a DocId, frame: &'a [u8] },
    Alive,
}

/// The largest awareness frame that fits in one notification (base64 of it, with the
/// document and node names, must stay under PostgreSQL's 8,000-byte payload limit).
pub(crate) const MAX_PUBLISHED_FRAME: usize = 5_000;

/// Opens the embedded SQLite store in `data_dir`. Fails (with a message for the operator)
/// when another process holds the directory, the database is read-only, or migrations fail.
/// The returned future is the writer task; it ends once every `Store` clone is dropped, and
/// only then is the data directory released.
pub(crate) async fn open_sqlite(
    data_dir: &std::path::Path,
    sync: SyncMode,
    linger: std::time::Duration,
    outbox: Option<WebhookOutbox>,
) -> anyhow::Result<(Store, impl Future<Output = ()> + Send + 'static)> {
    let (store, writer) = sqlite::SqliteStore::open(data_dir, sync, linger, outbox).await?;
    Ok((Store { backend: Backend::Sqlite(store) }, writer))
}

/// Opens the shared PostgreSQL store at `url` (migrating it if needed). `instance` names
/// this process in notifications; `timeout` is how long writes wait through an outage
/// before they fail. The returned future is the writer and the feed.
pub(crate) async fn open_postgres(
    url: &str,
    instance: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<(Store, impl Future<Output = ()> + Send + 'static)> {
    let (store, tasks) = postgres::PgStore::open(url, instance, timeout).await?;
    Ok((Store { backend: Backend::Postgres(store) }, tasks))
}

impl Store {
    /// Whether other nodes share this store (and so the cluster loop must run).
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The other nodes' notifications; `Some` once, for the cluster loop.
    pub(crate) fn take_feed(&self) -> Option<tokio::sync::mpsc::Receiver<FeedEvent>> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(s) => s.take_feed(),
        }
    }

    /// Tells the other nodes, best effort (presence and heartbeats are renewed anyway).
    pub(crate) fn publish(&self, what: Publish<'_>) {
        let Backend::Postgres(s) = &self.backend else { return };
        let base64 = |b: &[u8]| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(b)
        };
        match what {
            Publish::Awareness { doc, frame } => s.publish(
                postgres::CHANNEL_AWARENESS,
                format!("{doc} {} {}", base64(frame), s.instance()),
            ),
            Publish::Alive => s.publish(postgres::CHANNEL_NODES, format!("alive {}", s.instance())),
        }
    }

    /// Tells the other nodes this one is going (they drop its peers' presence at once).
    pub(crate) async fn say_goodbye(&self) {
        let Backend::Postgres(s) = &self.backend else { return };
        let bye = format!("bye {}", s.instance());
        if let Err(e) = s.publish_now(postgres::CHANNEL_NODES, bye).await {
            tracing::warn!(error = %e, "could not tell the other nodes we are leaving");
        }
    }

    /// The rows of `doc` after seq `after`; `head` is the seq the caller knows exists.
    pub(crate) async fn since(&self, doc: &DocId, after: i64, head: i64) -> Result<Since> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(Since::Reload(s.load(doc).await?)),
            Backend::Postgres(s) => s.since(doc, after, head).await,
        }
    }

    /// The current head of each of `docs` that has one (the safety poll).
    pub(crate) async fn heads(&self, docs: &[DocId]) -> Result<Vec<(DocId, i64)>> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Vec::new()),
            Backend::Postgres(s) => s.heads(docs).await,
        }
    }

    /// How long the database has been unreachable, if it is (PostgreSQL only; SQLite is a
    /// file and is never "unreachable"), and the limit after which peers are sent away.
    pub(crate) fn outage(&self) -> Option<(std::time::Duration, std::time::Duration)> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(s) => s.outage().map(|(d, _)| (d, s.outage_limit())),
        }
    }

    /// Reads the snapshot and the log tail consistently (one read transaction).
    pub(crate) async fn load(&self, doc: &DocId) -> Result<Loaded> {
        match &self.backend {
            Backend::Sqlite(s) => s.load(doc).await,
            Backend::Postgres(s) => s.load(doc).await,
        }
    }

    /// Durably appends `updates` (in order) to the document's life `epoch` (0: whatever is
    /// stored, or a new document); returns their seqs once committed. On PostgreSQL, a
    /// document deleted under the caller (its epoch gone) is `Deleted`, and nothing is
    /// written.
    pub(crate) async fn append(
        &self,
        doc: &DocId,
        updates: Vec<Bytes>,
        epoch: i64,
    ) -> Result<Appended> {
        match &self.backend {
            Backend::Sqlite(s) => s.append(doc, updates).await,
            Backend::Postgres(s) => s.append(doc, updates, epoch).await,
        }
    }

    /// Replaces the snapshot with one covering every seq up to `upto_seq` and deletes those
    /// log rows, in one transaction. A snapshot older than the stored one is ignored (false),
    /// so two generations of a room racing at unload cannot move a document backwards.
    pub(crate) async fn compact(
        &self,
        doc: &DocId,
        snapshot: Vec<u8>,
        upto_seq: i64,
        epoch: i64,
    ) -> Result<bool> {
        match &self.backend {
            Backend::Sqlite(s) => s.compact(doc, snapshot, upto_seq).await,
            Backend::Postgres(s) => s.compact(doc, snapshot, upto_seq, epoch).await,
        }
    }

    /// Stores a deny-list entry durably (through the writer, like every write).
    pub(crate) async fn revoke(&self, revocation: &Revocation) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(s) => s.revoke(revocation).await,
            Backend::Postgres(s) => s.revoke(revocation).await,
        }
    }

    /// The whole deny list (read once at startup).
    pub(crate) async fn revocations(&self) -> Result<Vec<Revocation>> {
        match &self.backend {
            Backend::Sqlite(s) => s.revocations().await,
            Backend::Postgres(s) => s.revocations().await,
        }
    }

    /// Up to `limit` documents in name order, after `after` (a cursor: the last name of
    /// the previous page), whose names start with `prefix`.
    pub(crate) async fn list(
        &self,
        prefix: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<DocSummary>> {
        match &self.backend {
            Backend::Sqlite(s) => s.list(prefix, after, limit).await,
            Backend::Postgres(s) => s.list(prefix, after, limit).await,
        }
    }

    /// The document's times and size, if anything is stored for it.
    pub(crate) async fn summary(&self, doc: &DocId) -> Result<Option<DocSummary>> {
        match &self.backend {
            Backend::Sqlite(s) => s.summary(doc).await,
            Backend::Postgres(s) => s.summary(doc).await,
        }
    }

    /// Deletes every stored row of `doc` (and queues `document.deleted`), through the
    /// writer; true if anything was stored.
    pub(crate) async fn delete(&self, doc: &DocId) -> Result<bool> {
        match &self.backend {
            Backend::Sqlite(s) => s.delete(doc).await,
            Backend::Postgres(s) => s.delete(doc).await,
        }
    }

    pub(crate) async fn record_webhook(&self, outcome: WebhookOutcome) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(s) => s.record_webhook(outcome).await,
            Backend::Postgres(_) => Err(no_webhooks()),
        }
    }

    pub(crate) async fn webhook_due(&self, now: i64, limit: i64) -> Result<Vec<WebhookEvent>> {
        match &self.backend {
            Backend::Sqlite(s) => s.webhook_due(now, limit).await,
            Backend::Postgres(_) => Ok(Vec::new()),
        }
    }

    pub(crate) async fn webhook_next_due(&self) -> Result<Option<i64>> {
        match &self.backend {
            Backend::Sqlite(s) => s.webhook_next_due().await,
            Backend::Postgres(_) => Ok(None),
        }
    }

    pub(crate) async fn webhook_status(&self) -> Result<Vec<WebhookStatus>> {
        match &self.backend {
            Backend::Sqlite(s) => s.webhook_status().await,
            Backend::Postgres(_) => Ok(Vec::new()),
        }
    }

    pub(crate) async fn webhook_events_queued(&self) {
        match &self.backend {
            Backend::Sqlite(s) => s.webhook_events_queued().await,
            Backend::Postgres(_) => std::future::pending().await,
        }
    }

    /// Ok when the store answers and can still commit; otherwise the reason.
    pub(crate) async fn health(&self) -> Result<(), String> {
        match &self.backend {
            Backend::Sqlite(s) => s.health().await,
            Backend::Postgres(s) => s.health().await,
        }
    }
}

/// Webhooks keep their outbox in the SQLite database; `serve` refuses `--webhook-url` with
/// `--database-url`, so this is only ever reached by a bug.
fn no_webhooks() -> StoreError {
    StoreError::Unavailable("webhooks are not available on PostgreSQL".into())
}

/// A deny-list entry (see `auth::revoke`): stored here, decided there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RevocationKind {
    Jti,
    Sub,
}

impl RevocationKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Jti => "jti",
            RevocationKind::Sub => "sub",
        }
    }

    pub(crate) fn parse(kind: &str) -> Option<RevocationKind> {
        match kind {
            "jti" => Some(RevocationKind::Jti),
            "sub" => Some(RevocationKind::Sub),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct Revocation {
    pub(crate) kind: RevocationKind,
    pub(crate) value: String,
    /// Seconds since the epoch. For `sub`, tokens with `iat` at or before this are refused.
    pub(crate) revoked_at: u64,
}

/// What the writer has seen, shared with health checks.
#[derive(Default)]
struct Health {
    /// Set when a commit failed for a reason that is not one document's data, cleared by
    /// the next commit that succeeds.
    failing: Mutex<Option<String>>,
    /// Group commits that failed and were retried job by job (tests read it).
    split_groups: AtomicU64,
}

impl Health {
    fn set_failing(&self, reason: Option<String>) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    fn failing(&self) -> Option<String> {
        self.failing.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn split_group(&self) {
        self.split_groups.fetch_add(1, Ordering::Relaxed);
    }
}

/// Checks what a backend read for one document: `head` from its head row, the snapshot's
/// seq (0 without a snapshot) and the seqs of the log rows, in order. The rows must be
/// exactly `snapshot_seq + 1 ..= head`.
fn check_log(
    doc: &DocId,
    head: Option<i64>,
    has_snapshot: bool,
    snapshot_seq: i64,
    seqs: &[i64],
) -> Result<()> {
    let corrupt = |detail: String| Err(StoreError::corrupt(doc, detail));
    let Some(head) = head else {
        if has_snapshot || !seqs.is_empty() {
            return corrupt("rows stored without a head row".into());
        }
        return Ok(());
    };
    if !(0..=MAX_SEQ).contains(&head) {
        return corrupt(format!("head {head} is outside 0..={MAX_SEQ}"));
    }
    if !(0..=head).contains(&snapshot_seq) {
        return corrupt(format!("snapshot seq {snapshot_seq} is outside 0..={head} (the head)"));
    }
    let mut expected = snapshot_seq + 1; // no overflow: snapshot_seq <= head <= MAX_SEQ
    for &seq in seqs {
        if seq <= snapshot_seq {
            return corrupt(format!(
                "log row {seq} is at or below the snapshot's seq {snapshot_seq}"
            ));
        }
        if seq != expected {
            return corrupt(format!("log rows {expected}..{seq} are missing"));
        }
        expected += 1;
    }
    if expected - 1 != head {
        return corrupt(format!("the log ends at {} but the head is {head}", expected - 1));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(head: Option<i64>, snap: bool, snapshot_seq: i64, seqs: &[i64]) -> Result<()> {
        check_log(&DocId::parse("d").expect("valid"), head, snap, snapshot_seq, seqs)
    }

    #[test]
    fn consistent_logs_pass() {
        check(None, false, 0, &[]).expect("new document");
        check(Some(3), false, 0, &[1, 2, 3]).expect("log only");
        check(Some(5), true, 3, &[4, 5]).expect("snapshot + tail");
        check(Some(3), true, 3, &[]).expect("snapshot only");
    }

    #[test]
    fn inconsistencies_are_refused() {
        for (head, snap, snapshot_seq, seqs) in [
            (None, false, 0, &[1][..]),      // rows without head
            (Some(3), false, 0, &[1, 3]),    // gap
            (Some(3), true, 2, &[2, 3]),     // row at the snapshot's seq
            (Some(3), true, 9, &[]),         // snapshot beyond the head
            (Some(5), false, 0, &[1, 2]),    // head beyond the rows: rows missing at the end
            (Some(2), false, 0, &[1, 2, 3]), // rows beyond the head
            (Some(i64::MAX), true, i64::MAX, &[]),
            (Some(-1), false, 0, &[]),
        ] {
            let result = check(head, snap, snapshot_seq, seqs);
            assert!(
                matches!(result, Err(StoreError::Corrupt { .. })),
                "{head:?} {snapshot_seq} {seqs:?}: {result:?}"
            );
        }
    }
}
