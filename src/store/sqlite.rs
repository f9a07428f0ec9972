//! The embedded backend: SQLite in WAL mode in `--data-dir`.
//!
//! All writes go through one writer task that owns one connection: it drains every queued
//! job, from every room, into a single transaction. That is group commit across rooms: a
//! thousand rooms typing at once cost one fsync per batch, not one per update, and SQLite
//! never sees two writers fight over its lock. Reads (loading a room, listing documents)
//! use a separate pool, which WAL lets run beside the writer.
//!
//! One process per data directory: `tandem.lock` is locked for as long as the writer runs.
//! Two processes on one file would each think they are the only writer (and SQLite's own
//! locking does not stop that), so a second one refuses to start.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::{mpsc, oneshot};

use super::job::{Done, Job};
use super::{
    Appended, DocSummary, Health, Loaded, MAX_SEQ, Result, Revocation, RevocationKind, StoreError,
    WebhookEvent, WebhookOutbox, WebhookOutcome, WebhookStatus, check_log,
};
use crate::config::SyncMode;
use crate::id::DocId;

/// Most jobs folded into one transaction; bounds the time a single commit holds the lock.
const MAX_JOBS_PER_COMMIT: usize = 512;
/// Rows per multi-row INSERT (SQLite allows 32766 bound parameters; three per row).
const ROWS_PER_INSERT: usize = 500;
/// How often the writer looks at the WAL (size, still linked) while it is busy.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(5);
/// A WAL this large means automatic checkpoints are not keeping up (SQLite's own runs at
/// ~4 MiB); the writer then checkpoints itself and says so if that fails.
const WAL_WARN_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Clone)]
pub(super) struct SqliteStore {
    /// Room loads (and health checks): never queued behind API reads.
    reader: SqlitePool,
    /// The documents API and the webhook worker: lists of 100,000 documents must not make
    /// a room wait for a connection.
    api: SqlitePool,
    writer: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

struct Shared {
    health: Health,
    /// Receivers owed an event for every write, and the debounce (None: no webhooks).
    outbox: Option<WebhookOutbox>,
    /// Rung after a commit that queued webhook events.
    events: tokio::sync::Notify,
    /// The WAL file as opened at startup. If someone deletes it, SQLite keeps writing into
    /// the unlinked file and a crash loses everything since the last checkpoint: its link
    /// count dropping to 0 is how we notice.
    wal: Option<File>,
    wal_path: PathBuf,
}

impl Shared {
    fn wal_problem(&self) -> Option<String> {
        let wal = self.wal.as_ref()?;
        match wal.metadata() {
            Ok(meta) if meta.nlink() == 0 => Some(format!(
                "{} was deleted while in use; commits since the last checkpoint are at risk",
                self.wal_path.display()
            )),
            Ok(_) => None,
            Err(e) => Some(format!("cannot stat {}: {e}", self.wal_path.display())),
        }
    }
}

impl SqliteStore {
    pub(super) async fn open(
        data_dir: &Path,
        sync: SyncMode,
        linger: Duration,
        outbox: Option<WebhookOutbox>,
    ) -> anyhow::Result<(SqliteStore, impl Future<Output = ()> + Send + 'static)> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        let lock = lock_data_dir(data_dir)?;
        let db_path = data_dir.join("tandem.db");
        if let Ok(meta) = std::fs::metadata(&db_path)
            && meta.permissions().readonly()
        {
            anyhow::bail!(
                "{} is read-only; tandem must write it (fix its permissions or use another --data-dir)",
                db_path.display()
            );
        }
        let options = SqliteConnectOptions::new()
            .filename(&db_path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                SyncMode::Full => SqliteSynchronous::Full,
                SyncMode::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(10));
        // A one-connection pool: the migrator wants a pool, the writer wants a connection.
        let write_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .with_context(|| format!("opening {}", db_path.display()))?;
        sqlx::migrate!("migrations/sqlite")
            .run(&write_pool)
            .await
            .with_context(|| format!("migrating {}", db_path.display()))?;
        let mut write_conn = write_pool.acquire().await?.detach();
        // A real write at startup: SQLite opens a file it cannot write read-only without a
        // word, and every commit would then fail.
        sqlx::query(
            "insert into meta (key, value) values ('opened_at', ?)
             on conflict (key) do update set value = excluded.value",
        )
        .bind(now_millis().to_string())
        .execute(&mut write_conn)
        .await
        .with_context(|| format!("{} is not writable", db_path.display()))?;
        report_unknown_receivers(&mut write_conn, outbox.as_ref()).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone().read_only(true))
            .await?;
        let api = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options.read_only(true))
            .await?;
        let wal_path = data_dir.join("tandem.db-wal");
        let shared = Arc::new(Shared {
            health: Health::default(),
            outbox,
            events: tokio::sync::Notify::new(),
            wal: File::open(&wal_path).ok(),
            wal_path,
        });
        let (writer, jobs) = mpsc::channel(4096);
        let store = SqliteStore { reader, api, writer, shared: shared.clone() };
        Ok((store, run_writer(write_conn, jobs, shared, lock, linger)))
    }

    pub(super) async fn load(&self, doc: &DocId) -> Result<Loaded> {
        let mut tx = self.reader.begin().await?;
        let head: Option<i64> = sqlx::query_scalar("select head from heads where doc = ?")
            .bind(doc.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let row = sqlx::query("select snapshot, snapshot_seq from documents where name = ?")
            .bind(doc.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let (snapshot, snapshot_seq) = match row {
            Some(row) => (row.try_get::<Option<Vec<u8>>, _>(0)?, row.try_get::<i64, _>(1)?),
            None => (None, 0),
        };
        // A NULL snapshot covers nothing, whatever snapshot_seq says.
        let snapshot_seq = if snapshot.is_some() { snapshot_seq } else { 0 };
        // Every row, not only those after the snapshot: rows the snapshot should have
        // replaced are an inconsistency to report, not something to skip.
        let rows = sqlx::query("select seq, data from updates where doc = ? order by seq")
            .bind(doc.as_str())
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut seqs = Vec::with_capacity(rows.len());
        let mut loaded = Loaded { head: head.unwrap_or(0), ..Default::default() };
        for row in rows {
            seqs.push(row.try_get::<i64, _>(0)?);
            let data: Vec<u8> = row.try_get(1)?;
            loaded.tail_bytes += data.len() as u64;
            loaded.tail.push(data);
        }
        check_log(doc, head, snapshot.is_some(), snapshot_seq, &seqs)?;
        loaded.snapshot = snapshot;
        Ok(loaded)
    }

    pub(super) async fn append(&self, doc: &DocId, updates: Vec<Bytes>) -> Result<Appended> {
        let (reply, done) = oneshot::channel();
        self.submit(Job::Append { doc: doc.clone(), updates, epoch: 0, reply }, done).await
    }

    pub(super) async fn compact(
        &self,
        doc: &DocId,
        snapshot: Vec<u8>,
        upto_seq: i64,
    ) -> Result<bool> {
        let (reply, done) = oneshot::channel();
        let job = Job::Compact { doc: doc.clone(), snapshot, upto_seq, epoch: 0, reply };
        self.submit(job, done).await
    }

    async fn submit<T>(&self, job: Job, done: oneshot::Receiver<Result<T>>) -> Result<T> {
        let gone = || StoreError::Unavailable("the store writer has stopped".into());
        self.writer.send(job).await.map_err(|_| gone())?;
        done.await.map_err(|_| gone())?
    }

    pub(super) async fn revoke(&self, revocation: &Revocation) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.submit(Job::Revoke { revocation: revocation.clone(), reply }, done).await
    }

    pub(super) async fn revocations(&self) -> Result<Vec<Revocation>> {
        let rows = sqlx::query("select kind, value, revoked_at from revocations")
            .fetch_all(&self.reader)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let kind: String = row.try_get(0)?;
            let Some(kind) = RevocationKind::parse(&kind) else { continue };
            let at: i64 = row.try_get(2)?;
            out.push(Revocation { kind, value: row.try_get(1)?, revoked_at: at.max(0) as u64 });
        }
        Ok(out)
    }

    /// Documents in name order after `after`, whose names start with `prefix`.
    pub(super) async fn list(
        &self,
        prefix: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<DocSummary>> {
        // Names are ASCII below 0x7f, so [prefix, prefix + 0x7f) is exactly the prefix's.
        let upper = format!("{prefix}\u{7f}");
        let rows = sqlx::query(
            "select doc, created_at, updated_at, bytes from heads
             where doc > ? and doc >= ? and doc < ? order by doc limit ?",
        )
        .bind(after)
        .bind(prefix)
        .bind(upper)
        .bind(limit)
        .fetch_all(&self.api)
        .await?;
        rows.iter().map(summary).collect()
    }

    pub(super) async fn summary(&self, doc: &DocId) -> Result<Option<DocSummary>> {
        let row = sqlx::query("select doc, created_at, updated_at, bytes from heads where doc = ?")
            .bind(doc.as_str())
            .fetch_optional(&self.api)
            .await?;
        row.as_ref().map(summary).transpose()
    }

    pub(super) async fn delete(&self, doc: &DocId) -> Result<bool> {
        let (reply, done) = oneshot::channel();
        self.submit(Job::Delete { doc: doc.clone(), reply }, done).await
    }

    pub(super) async fn record_webhook(&self, outcome: WebhookOutcome) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.submit(Job::Webhook { outcome, reply }, done).await
    }

    /// Events that may be delivered now: due, not backing off, and first in line for their
    /// (url, document), so that each receiver sees a document's events in order.
    /// Events that may be delivered now: due, not backing off, owed to a configured
    /// receiver, and first in line for their (url, document), so that each receiver sees a
    /// document's events in order.
    pub(super) async fn webhook_due(&self, now: i64, limit: i64) -> Result<Vec<WebhookEvent>> {
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
            "select o.id, o.url, o.doc, o.event, o.seq, o.updated_at, o.attempts
             from webhook_outbox o where o.due_at <= ",
        );
        query.push_bind(now).push(" and o.retry_at <= ").push_bind(now);
        self.configured_urls(&mut query);
        query.push(
            " and not exists (select 1 from webhook_outbox e
                              where e.url = o.url and e.doc = o.doc and e.id < o.id)
             order by o.id limit ",
        );
        query.push_bind(limit);
        let rows = query.build().fetch_all(&self.api).await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            events.push(WebhookEvent {
                id: row.try_get(0)?,
                url: row.try_get(1)?,
                doc: row.try_get(2)?,
                event: row.try_get(3)?,
                seq: row.try_get(4)?,
                updated_at: row.try_get(5)?,
                attempts: row.try_get(6)?,
            });
        }
        Ok(events)
    }

    /// `and o.url in (…)`: rows owed to receivers no longer configured are kept, never sent.
    fn configured_urls(&self, query: &mut QueryBuilder<Sqlite>) {
        query.push(" and o.url in (");
        let mut list = query.separated(", ");
        for url in self.shared.outbox.iter().flat_map(|o| o.urls.iter()) {
            list.push_bind(url.clone());
        }
        // `in ()` is valid SQLite (matches nothing): no receivers, nothing due.
        query.push(")");
    }

    /// When the next deliverable event falls due (ms since the epoch), if any is pending.
    pub(super) async fn webhook_next_due(&self) -> Result<Option<i64>> {
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
            "select min(max(o.due_at, o.retry_at)) from webhook_outbox o where 1",
        );
        self.configured_urls(&mut query);
        query.push(
            " and not exists (select 1 from webhook_outbox e
                              where e.url = o.url and e.doc = o.doc and e.id < o.id)",
        );
        let next: Option<i64> = query.build_query_scalar().fetch_one(&self.api).await?;
        Ok(next)
    }

    pub(super) async fn webhook_status(&self) -> Result<Vec<WebhookStatus>> {
        let rows = sqlx::query(
            "select url, count(*), sum(attempts > 0), min(first_at) from webhook_outbox group by url",
        )
        .fetch_all(&self.api)
        .await?;
        let errors = sqlx::query(
            "select url, last_error, max(last_attempt_at) from webhook_outbox
             where last_error is not null group by url",
        )
        .fetch_all(&self.api)
        .await?;
        let mut last: HashMap<String, (String, i64)> = HashMap::new();
        for row in errors {
            last.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?));
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let url: String = row.try_get(0)?;
            let (last_error, last_error_at) = match last.remove(&url) {
                Some((e, at)) => (Some(e), Some(at)),
                None => (None, None),
            };
            let configured = self.shared.outbox.as_ref().is_some_and(|o| o.urls.contains(&url));
            out.push(WebhookStatus {
                configured,
                pending: row.try_get(1)?,
                failing: row.try_get(2)?,
                oldest_pending_at: row.try_get(3)?,
                last_error,
                last_error_at,
                url,
            });
        }
        Ok(out)
    }

    /// Resolves when a commit queued webhook events (or at once if one did since the last
    /// call).
    pub(super) async fn webhook_events_queued(&self) {
        self.shared.events.notified().await;
    }

    pub(super) async fn health(&self) -> Result<(), String> {
        if let Some(reason) = self.shared.health.failing() {
            return Err(format!("commits are failing: {reason}"));
        }
        if let Some(problem) = self.shared.wal_problem() {
            return Err(problem);
        }
        sqlx::query("select 1")
            .execute(&self.reader)
            .await
            .map_err(|e| format!("store does not answer: {e}"))?;
        Ok(())
    }

    /// Group commits that were retried job by job (for tests of that path).
    #[cfg(test)]
    fn split_groups(&self) -> u64 {
        self.shared.health.split_groups.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Takes `data_dir/tandem.lock` for the life of the process (the OS drops the lock if the
/// process dies, so a crash never leaves a stale lock behind).
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    let path = data_dir.join("tandem.lock");
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            anyhow::bail!(
                "another tandem process{} is using {} (it holds {}); stop it or use another --data-dir",
                if holder.is_empty() { String::new() } else { format!(" (pid {holder})") },
                data_dir.display(),
                path.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

async fn run_writer(
    mut conn: SqliteConnection,
    mut jobs: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
    lock: File,
    linger: Duration,
) {
    let mut batch = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
    let mut heads = Heads::default();
    let mut last_maintenance = Instant::now();
    let mut wal_reported = false;
    while jobs.recv_many(&mut batch, MAX_JOBS_PER_COMMIT).await > 0 {
        // `--commit-linger-ms`: wait a little for other rooms' jobs, so that one fsync
        // serves more of them (more latency, less CPU per update).
        if !linger.is_zero() && batch.len() < MAX_JOBS_PER_COMMIT {
            let until = tokio::time::Instant::now() + linger;
            while batch.len() < MAX_JOBS_PER_COMMIT {
                let room = MAX_JOBS_PER_COMMIT - batch.len();
                tokio::select! {
                    n = jobs.recv_many(&mut batch, room) => if n == 0 { break },
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
        }
        commit_group(&mut conn, &mut batch, &mut heads, &shared).await;
        if last_maintenance.elapsed() >= MAINTENANCE_EVERY {
            last_maintenance = Instant::now();
            maintain(&mut conn, &shared, &mut wal_reported).await;
        }
    }
    let _ = conn.close().await;
    // Released only now, after the last commit: a server started next on this directory
    // (a restart, a test) never overlaps with this writer.
    drop(lock);
}

/// The head seq of recently written documents, as committed. Only this writer writes the
/// database (the data-directory lock guarantees it), so a head it committed stays true; the
/// cache spares a statement that returns rows (each returned row is one more round trip to
/// SQLite's worker thread, on every commit). A miss
/// reads the head row; a wrong head could only collide with an existing row's primary key
/// and fail the commit, never overwrite.
#[derive(Default)]
struct Heads(HashMap<String, i64>);

/// Documents whose heads are remembered; past this the cache starts over (misses are cheap).
const HEADS_CACHED: usize = 100_000;

impl Heads {
    fn remember(&mut self, committed: Vec<(String, i64)>) {
        if self.0.len() + committed.len() > HEADS_CACHED {
            self.0.clear();
        }
        self.0.extend(committed);
    }
}

async fn commit_group(
    conn: &mut SqliteConnection,
    batch: &mut Vec<Job>,
    heads: &mut Heads,
    shared: &Shared,
) {
    let health = &shared.health;
    let outbox = shared.outbox.as_ref();
    match write_all(conn, batch, heads, outbox).await {
        Ok((done, events)) => {
            if events {
                shared.events.notify_one();
            }
            health.set_failing(None);
            for (job, done) in batch.drain(..).zip(done) {
                job.reply(Ok(done));
            }
        }
        Err(e) if batch.len() == 1 => {
            report_failure(&e, batch[0].subject(), health);
            if let Some(job) = batch.pop() {
                job.reply(Err(e));
            }
        }
        Err(e) => {
            // One bad job must not fail its neighbours: retry each on its own so only
            // the culprit sees the error.
            tracing::warn!(error = %e, jobs = batch.len(), "group commit failed, retrying jobs one by one");
            health.split_group();
            for job in batch.drain(..) {
                let result = write_all(conn, std::slice::from_ref(&job), heads, outbox).await;
                match result {
                    Ok((mut done, events)) => {
                        if events {
                            shared.events.notify_one();
                        }
                        health.set_failing(None);
                        match done.pop() {
                            Some(done) => job.reply(Ok(done)),
                            None => job.reply(Err(StoreError::Unavailable("no result".into()))),
                        }
                    }
                    Err(e) => {
                        report_failure(&e, job.subject(), health);
                        job.reply(Err(e));
                    }
                }
            }
        }
    }
}

/// One log line per failed write, with its cause; failures that are not one document's
/// data also make the store unhealthy until a commit succeeds again.
fn report_failure(e: &StoreError, doc: &str, health: &Health) {
    tracing::error!(error = %e, doc, "store write failed");
    if !matches!(e, StoreError::Corrupt { .. }) {
        health.set_failing(Some(e.to_string()));
    }
}

/// Looks after the WAL: says loudly when it was deleted, and checkpoints (and says why not)
/// when it has grown past what SQLite's automatic checkpoints would allow.
async fn maintain(conn: &mut SqliteConnection, shared: &Shared, wal_reported: &mut bool) {
    if let Some(problem) = shared.wal_problem() {
        if !*wal_reported {
            tracing::error!(problem, "write-ahead log is not safe");
            *wal_reported = true;
        }
        return;
    }
    let Some(size) = shared.wal.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.len()) else {
        return;
    };
    if size < WAL_WARN_BYTES {
        return;
    }
    let result: std::result::Result<(i64, i64, i64), sqlx::Error> =
        sqlx::query_as("pragma wal_checkpoint(truncate)").fetch_one(&mut *conn).await;
    match result {
        Ok((0, _, _)) => tracing::info!(wal_bytes = size, "checkpointed a large write-ahead log"),
        Ok((_, log, done)) => tracing::warn!(
            wal_bytes = size,
            frames = log,
            checkpointed = done,
            "write-ahead log keeps growing: checkpoint blocked by readers"
        ),
        Err(e) => tracing::warn!(wal_bytes = size, error = %e, "write-ahead log checkpoint failed"),
    }
}

/// One transaction for all `jobs`. Spelled out as BEGIN IMMEDIATE/COMMIT (rather than
/// `Connection::begin`) so the write lock is taken up front, not upgraded half-way.
async fn write_all(
    conn: &mut SqliteConnection,
    jobs: &[Job],
    heads: &mut Heads,
    outbox: Option<&WebhookOutbox>,
) -> Result<(Vec<Done>, bool)> {
    if outbox.is_none()
        && let Some(plan) = plan_appends(jobs, heads)
    {
        return write_appends(conn, plan, heads).await;
    }
    sqlx::query("begin immediate").execute(&mut *conn).await?;
    match write_jobs(conn, jobs, heads, outbox).await {
        Ok(written) => {
            if let Err(e) = sqlx::query("commit").execute(&mut *conn).await {
                let _ = sqlx::query("rollback").execute(&mut *conn).await;
                return Err(e.into());
            }
            for doc in &written.deleted {
                heads.0.remove(doc);
            }
            heads.remember(written.heads);
            Ok((written.done, written.events))
        }
        Err(e) => {
            let _ = sqlx::query("rollback").execute(&mut *conn).await;
            Err(e)
        }
    }
}

/// A group of appends only, to documents whose heads are remembered: the common case, which
/// goes to SQLite in one round trip (`write_appends`).
struct AppendPlan<'a> {
    /// Per document: its name, its head after this group, and the bytes added.
    heads: Vec<(&'a str, i64, i64)>,
    rows: Vec<(&'a str, i64, &'a [u8])>,
    done: Vec<Done>,
}

fn plan_appends<'a>(jobs: &'a [Job], heads: &Heads) -> Option<AppendPlan<'a>> {
    let mut plan = AppendPlan { heads: Vec::new(), rows: Vec::new(), done: Vec::new() };
    let mut index: HashMap<&str, usize> = HashMap::new();
    for job in jobs {
        let Job::Append { doc, updates, .. } = job else { return None };
        let doc = doc.as_str();
        let i = match index.get(doc) {
            Some(i) => *i,
            None => {
                let head = *heads.0.get(doc)?;
                plan.heads.push((doc, head, 0));
                index.insert(doc, plan.heads.len() - 1);
                plan.heads.len() - 1
            }
        };
        let entry = &mut plan.heads[i];
        let first = entry.1 + 1;
        let last = entry.1.checked_add(updates.len() as i64).filter(|h| *h <= MAX_SEQ)?;
        plan.rows.extend(updates.iter().zip(first..).map(|(u, seq)| (doc, seq, u.as_ref())));
        entry.1 = last;
        entry.2 += updates.iter().map(|u| u.len() as i64).sum::<i64>();
        plan.done.push(Done::Appended(Appended { first, last, epoch: 0 }));
    }
    Some(plan)
}

/// The heads upsert of a group commit: (document, head after it, bytes added) per row.
fn push_heads_upsert(query: &mut QueryBuilder<Sqlite>, rows: &[(&str, i64, i64)], now: i64) {
    query.push("insert into heads (doc, head, created_at, updated_at, bytes) ");
    query.push_values(rows, |mut row, (doc, head, bytes)| {
        row.push_bind(*doc).push_bind(*head).push_bind(now).push_bind(now).push_bind(*bytes);
    });
    query.push(
        " on conflict (doc) do update set head = excluded.head,
           updated_at = excluded.updated_at, bytes = heads.bytes + excluded.bytes",
    );
}

/// The whole transaction as one multi-statement query: every statement sqlx runs is a round
/// trip to its SQLite worker thread (a wake-up each way), and a group commit used to be four
/// (begin, heads, rows, commit).
async fn write_appends(
    conn: &mut SqliteConnection,
    plan: AppendPlan<'_>,
    heads: &mut Heads,
) -> Result<(Vec<Done>, bool)> {
    let now = now_millis();
    let mut query: QueryBuilder<Sqlite> = QueryBuilder::new("begin immediate; ");
    for chunk in plan.heads.chunks(ROWS_PER_INSERT) {
        push_heads_upsert(&mut query, chunk, now);
        query.push("; ");
    }
    for chunk in plan.rows.chunks(ROWS_PER_INSERT) {
        query.push("insert into updates (doc, seq, data) ");
        query.push_values(chunk, |mut row, (doc, seq, data)| {
            row.push_bind(*doc).push_bind(*seq).push_bind(*data);
        });
        query.push("; ");
    }
    query.push("commit");
    if let Err(e) = query.build().execute(&mut *conn).await {
        // Whatever statement failed, the transaction may still be open.
        let _ = sqlx::query("rollback").execute(&mut *conn).await;
        // Read these heads afresh next time.
        for (doc, _, _) in &plan.heads {
            heads.0.remove(*doc);
        }
        return Err(e.into());
    }
    heads.remember(plan.heads.iter().map(|(doc, head, _)| (doc.to_string(), *head)).collect());
    Ok((plan.done, false))
}

/// Writes a group of jobs with as few statements as possible: every sqlx statement is a
/// round trip to SQLite's worker thread, and with a thousand rooms typing those context
/// switches, not SQLite itself, were the cost. Appends first (all heads in one upsert that
/// returns the new heads, all rows in multi-row inserts), then compactions: a compaction only
/// deletes rows at or below its seq, which no append in the same group can have.
/// What a committed group did, for the writer's caches and the webhook worker.
struct Written {
    done: Vec<Done>,
    /// Heads as committed.
    heads: Vec<(String, i64)>,
    deleted: Vec<String>,
    /// Whether webhook events were queued.
    events: bool,
}

async fn write_jobs(
    tx: &mut SqliteConnection,
    jobs: &[Job],
    heads: &Heads,
    outbox: Option<&WebhookOutbox>,
) -> Result<Written> {
    let now = now_millis();
    // Updates and their bytes per document in this group, in first-seen order.
    let mut counts: Vec<(&str, i64)> = Vec::new();
    let mut sizes: Vec<i64> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for job in jobs {
        if let Job::Append { doc, updates, .. } = job {
            let i = *index.entry(doc.as_str()).or_insert_with(|| {
                counts.push((doc.as_str(), 0));
                sizes.push(0);
                counts.len() - 1
            });
            counts[i].1 += updates.len() as i64;
            sizes[i] += updates.iter().map(|u| u.len() as i64).sum::<i64>();
        }
    }
    // The current head of each document: remembered, or read (one statement for all misses).
    let mut current: HashMap<&str, i64> = HashMap::with_capacity(counts.len());
    let mut missing = Vec::new();
    for (doc, _) in &counts {
        match heads.0.get(*doc) {
            Some(head) => {
                current.insert(doc, *head);
            }
            None => missing.push(*doc),
        }
    }
    for chunk in missing.chunks(ROWS_PER_INSERT) {
        let mut select: QueryBuilder<Sqlite> =
            QueryBuilder::new("select doc, head from heads where doc in (");
        let mut names = select.separated(", ");
        for doc in chunk {
            names.push_bind(*doc);
        }
        select.push(")");
        for row in select.build().fetch_all(&mut *tx).await? {
            let (doc, head): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
            if let Some(name) = chunk.iter().find(|d| **d == doc) {
                current.insert(name, head);
            }
        }
    }
    // The seq each document's next update in this group gets, and its head after it.
    let mut next: HashMap<&str, i64> = HashMap::with_capacity(counts.len());
    let mut committed = Vec::with_capacity(counts.len());
    for (doc, n) in &counts {
        let head = current.get(doc).copied().unwrap_or(0);
        let Some(new_head) = head.checked_add(*n).filter(|h| *h <= MAX_SEQ) else {
            return Err(StoreError::Corrupt {
                doc: doc.to_string(),
                detail: format!("no seq left below {MAX_SEQ}"),
            });
        };
        next.insert(doc, head + 1);
        committed.push((doc.to_string(), new_head));
    }
    let with_sizes: Vec<(&str, i64, i64)> = committed
        .iter()
        .zip(sizes.iter().copied())
        .map(|((doc, head), bytes)| (doc.as_str(), *head, bytes))
        .collect();
    for chunk in with_sizes.chunks(ROWS_PER_INSERT) {
        let mut upsert: QueryBuilder<Sqlite> = QueryBuilder::new("");
        push_heads_upsert(&mut upsert, chunk, now);
        upsert.build().execute(&mut *tx).await?;
    }
    let mut events = false;
    if let Some(outbox) = outbox {
        let created: Vec<(&str, i64)> = counts
            .iter()
            .filter(|(doc, _)| current.get(doc).copied().unwrap_or(0) == 0)
            .map(|(doc, _)| (*doc, 1))
            .collect();
        let heads_now: Vec<(&str, i64)> = committed.iter().map(|(d, h)| (d.as_str(), *h)).collect();
        events |= queue_events(tx, outbox, "document.created", &created, now).await?;
        events |= queue_events(tx, outbox, "document.updated", &heads_now, now).await?;
    }
    let mut done = Vec::with_capacity(jobs.len());
    let mut rows: Vec<(&str, i64, &[u8])> = Vec::new();
    for job in jobs {
        match job {
            Job::Append { doc, updates, .. } => {
                let Some(first) = next.get_mut(doc.as_str()) else {
                    return Err(StoreError::corrupt(doc, "no seq allocated"));
                };
                let start = *first;
                rows.extend(
                    updates.iter().zip(start..).map(|(u, seq)| (doc.as_str(), seq, u.as_ref())),
                );
                *first += updates.len() as i64;
                done.push(Done::Appended(Appended { first: start, last: *first - 1, epoch: 0 }));
            }
            Job::Compact { .. } => done.push(Done::Compacted(false)),
            Job::Delete { .. } => done.push(Done::Deleted(false)),
            Job::Webhook { .. } => done.push(Done::Recorded),
            Job::Revoke { revocation, .. } => {
                sqlx::query(
                    "insert into revocations (kind, value, revoked_at) values (?, ?, ?)
                     on conflict (kind, value) do update
                     set revoked_at = max(revoked_at, excluded.revoked_at)",
                )
                .bind(revocation.kind.as_str())
                .bind(&revocation.value)
                .bind(revocation.revoked_at as i64)
                .execute(&mut *tx)
                .await?;
                done.push(Done::Revoked);
            }
        }
    }
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut insert: QueryBuilder<Sqlite> =
            QueryBuilder::new("insert into updates (doc, seq, data) ");
        insert.push_values(chunk, |mut row, (doc, seq, data)| {
            row.push_bind(*doc).push_bind(*seq).push_bind(*data);
        });
        insert.build().execute(&mut *tx).await?;
    }
    let mut deleted = Vec::new();
    for (job, done) in jobs.iter().zip(done.iter_mut()) {
        match job {
            Job::Compact { doc, snapshot, upto_seq, .. } => {
                let head = next.get(doc.as_str()).map(|next| next - 1);
                *done =
                    Done::Compacted(compact_one(tx, doc, snapshot, *upto_seq, head, now).await?);
            }
            Job::Delete { doc, .. } => {
                let head = delete_one(tx, doc).await?;
                if let (Some(head), Some(outbox)) = (head, outbox) {
                    sqlx::query("update webhook_outbox set open = 0 where doc = ? and open = 1")
                        .bind(doc.as_str())
                        .execute(&mut *tx)
                        .await?;
                    events |=
                        queue_events(tx, outbox, "document.deleted", &[(doc.as_str(), head)], now)
                            .await?;
                }
                deleted.push(doc.as_str().to_string());
                *done = Done::Deleted(head.is_some());
            }
            Job::Webhook { outcome, .. } => {
                record_outcome(tx, outcome, outbox, now).await?;
                *done = Done::Recorded;
            }
            _ => {}
        }
    }
    Ok(Written { done, heads: committed, deleted, events })
}

/// Queues `event` for each (document, seq) to every receiver, in the commit's transaction.
/// `document.updated` folds into the receiver's open row for the document, if it has one:
/// that is the debounce (due `debounce` after the last write, and no later than `max_wait`
/// after the row was opened).
async fn queue_events(
    tx: &mut SqliteConnection,
    outbox: &WebhookOutbox,
    event: &str,
    docs: &[(&str, i64)],
    now: i64,
) -> Result<bool> {
    if docs.is_empty() || outbox.urls.is_empty() {
        return Ok(false);
    }
    let updated = event == "document.updated";
    let due = if updated { now + outbox.debounce_ms } else { now };
    let rows: Vec<(&str, &str, i64)> = outbox
        .urls
        .iter()
        .flat_map(|url| docs.iter().map(move |(doc, seq)| (url.as_str(), *doc, *seq)))
        .collect();
    for chunk in rows.chunks(ROWS_PER_INSERT / 2) {
        let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
            "insert into webhook_outbox (url, doc, event, seq, updated_at, first_at, due_at, open) ",
        );
        insert.push_values(chunk, |mut row, (url, doc, seq)| {
            row.push_bind(*url)
                .push_bind(*doc)
                .push_bind(event)
                .push_bind(*seq)
                .push_bind(now)
                .push_bind(now)
                .push_bind(due)
                .push_bind(i64::from(updated));
        });
        if updated {
            insert.push(format!(
                " on conflict (url, doc) where open = 1 do update set seq = excluded.seq,
                   updated_at = excluded.updated_at,
                   due_at = min(webhook_outbox.first_at + {}, excluded.due_at)",
                outbox.max_wait_ms
            ));
        }
        insert.build().execute(&mut *tx).await?;
    }
    Ok(true)
}

async fn record_outcome(
    tx: &mut SqliteConnection,
    outcome: &WebhookOutcome,
    outbox: Option<&WebhookOutbox>,
    now: i64,
) -> Result<()> {
    match outcome {
        WebhookOutcome::Delivered { id, seq } => {
            let gone = sqlx::query("delete from webhook_outbox where id = ? and seq = ?")
                .bind(id)
                .bind(seq)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if gone == 0 {
                // Writes arrived while it was in flight: the row now stands for them, and
                // its debounce starts over from the delivery.
                let (debounce, max_wait) =
                    outbox.map_or((0, 0), |o| (o.debounce_ms, o.max_wait_ms));
                sqlx::query(
                    "update webhook_outbox set attempts = 0, retry_at = 0, last_error = null,
                       first_at = ?1, due_at = min(?1 + ?2, updated_at + ?3) where id = ?4",
                )
                .bind(now)
                .bind(max_wait)
                .bind(debounce)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
        }
        WebhookOutcome::Drop { url } => {
            sqlx::query("delete from webhook_outbox where url = ?")
                .bind(url)
                .execute(&mut *tx)
                .await?;
        }
        WebhookOutcome::Failed { id, error, retry_at } => {
            sqlx::query(
                "update webhook_outbox set attempts = attempts + 1, retry_at = ?, last_error = ?,
                   last_attempt_at = ? where id = ?",
            )
            .bind(retry_at)
            .bind(error)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

/// Deletes every row of `doc`; returns the head it had, if it had one.
async fn delete_one(tx: &mut SqliteConnection, doc: &DocId) -> Result<Option<i64>> {
    let head: Option<i64> = sqlx::query_scalar("delete from heads where doc = ? returning head")
        .bind(doc.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    sqlx::query("delete from updates where doc = ?").bind(doc.as_str()).execute(&mut *tx).await?;
    sqlx::query("delete from documents where name = ?")
        .bind(doc.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(head)
}

async fn compact_one(
    tx: &mut SqliteConnection,
    doc: &DocId,
    snapshot: &[u8],
    upto_seq: i64,
    head_in_group: Option<i64>,
    now: i64,
) -> Result<bool> {
    let head: Option<i64> = match head_in_group {
        Some(head) => Some(head),
        None => {
            sqlx::query_scalar("select head from heads where doc = ?")
                .bind(doc.as_str())
                .fetch_optional(&mut *tx)
                .await?
        }
    };
    if head.is_none_or(|head| upto_seq > head) || upto_seq < 1 {
        return Err(StoreError::corrupt(
            doc,
            format!("snapshot up to {upto_seq} is past the head {head:?}"),
        ));
    }
    let replaced = sqlx::query(
        "insert into documents (name, snapshot, snapshot_seq, created_at, updated_at)
         values (?, ?, ?, ?, ?)
         on conflict (name) do update set snapshot = excluded.snapshot,
            snapshot_seq = excluded.snapshot_seq
         where excluded.snapshot_seq > documents.snapshot_seq or documents.snapshot is null",
    )
    .bind(doc.as_str())
    .bind(snapshot)
    .bind(upto_seq)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if replaced > 0 {
        sqlx::query("delete from updates where doc = ? and seq <= ?")
            .bind(doc.as_str())
            .bind(upto_seq)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "update heads set bytes = ?1 + coalesce((select sum(length(data)) from updates
               where doc = ?2), 0) where doc = ?2",
        )
        .bind(snapshot.len() as i64)
        .bind(doc.as_str())
        .execute(&mut *tx)
        .await?;
    }
    Ok(replaced > 0)
}

fn summary(row: &sqlx::sqlite::SqliteRow) -> Result<DocSummary> {
    Ok(DocSummary {
        name: row.try_get(0)?,
        created_at: row.try_get(1)?,
        updated_at: row.try_get(2)?,
        bytes: row.try_get(3)?,
    })
}

/// Events owed to receivers that are no longer configured are kept (a URL missing from one
/// start's environment must not lose them) but not sent; the log says how many, and
/// `DELETE /api/admin/webhooks?url=` drops them.
async fn report_unknown_receivers(
    conn: &mut SqliteConnection,
    outbox: Option<&WebhookOutbox>,
) -> anyhow::Result<()> {
    let urls: Vec<&str> =
        outbox.map(|o| o.urls.iter().map(String::as_str).collect()).unwrap_or_default();
    let mut count: QueryBuilder<Sqlite> =
        QueryBuilder::new("select url, count(*) from webhook_outbox where url not in (");
    let mut list = count.separated(", ");
    for url in &urls {
        list.push_bind(*url);
    }
    count.push(") group by url");
    for row in count.build().fetch_all(&mut *conn).await? {
        let (url, pending): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
        tracing::warn!(
            url,
            pending,
            "webhook events are owed to a receiver that is not configured: kept, not sent (configure it again, or DELETE /api/admin/webhooks?url=)"
        );
    }
    Ok(())
}

fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(dir: &Path) -> (SqliteStore, tokio::task::JoinHandle<()>) {
        let (store, writer) =
            SqliteStore::open(dir, SyncMode::Normal, Duration::ZERO, None).await.expect("open");
        (store, tokio::spawn(writer))
    }

    fn doc(name: &str) -> DocId {
        DocId::parse(name).expect("valid")
    }

    fn bytes(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    async fn raw(dir: &Path) -> SqliteConnection {
        let url = format!("sqlite://{}", dir.join("tandem.db").display());
        SqliteConnection::connect(&url).await.expect("raw connection")
    }

    #[tokio::test]
    async fn seqs_are_handed_out_by_the_store_and_load_returns_snapshot_plus_tail() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (store, writer) = open(tmp.path()).await;
        let d = doc("d");
        assert_eq!(
            store.append(&d, vec![bytes("a"), bytes("b")]).await.expect("append"),
            Appended { first: 1, last: 2, epoch: 0 }
        );
        assert_eq!(
            store.append(&d, vec![bytes("c")]).await.expect("append"),
            Appended { first: 3, last: 3, epoch: 0 }
        );
        assert!(store.compact(&d, b"snap".to_vec(), 2).await.expect("compact"));
        store.append(&d, vec![bytes("d")]).await.expect("append");
        let loaded = store.load(&d).await.expect("load");
        assert_eq!(loaded.snapshot.as_deref(), Some(&b"snap"[..]));
        assert_eq!(loaded.tail, vec![b"c".to_vec(), b"d".to_vec()]);
        assert_eq!(loaded.head, 4);
        let fresh = store.load(&doc("never")).await.expect("load");
        assert_eq!((fresh.head, fresh.snapshot, fresh.tail.len()), (0, None, 0));
        drop(store);
        writer.await.expect("writer");
    }

    #[tokio::test]
    async fn a_snapshot_never_goes_backwards() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (store, _writer) = open(tmp.path()).await;
        let d = doc("d");
        store.append(&d, (0..5).map(|i| bytes(&i.to_string())).collect()).await.expect("append");
        assert!(store.compact(&d, b"newer".to_vec(), 4).await.expect("compact"));
        // An older generation of the room compacting late must not replace it.
        assert!(!store.compact(&d, b"older".to_vec(), 2).await.expect("compact"));
        let loaded = store.load(&d).await.expect("load");
        assert_eq!(loaded.snapshot.as_deref(), Some(&b"newer"[..]));
        assert_eq!(loaded.tail, vec![b"4".to_vec()]);
        // Nor may a snapshot claim seqs that were never handed out.
        assert!(matches!(
            store.compact(&d, b"future".to_vec(), 99).await,
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn a_failed_group_commit_fails_only_its_culprit() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (store, writer) = SqliteStore::open(tmp.path(), SyncMode::Normal, Duration::ZERO, None)
            .await
            .expect("open");
        let (good, bad) = (doc("good"), doc("bad"));
        let mut conn = raw(tmp.path()).await;
        sqlx::query(
            "insert into heads (doc, head, created_at, updated_at) values ('bad', ?, 0, 0)",
        )
        .bind(MAX_SEQ)
        .execute(&mut conn)
        .await
        .expect("exhaust bad's seqs");
        // Both appends are queued before the writer runs, so they share one group.
        let (a, b) = (store.clone(), store.clone());
        let good_append = tokio::spawn({
            let good = good.clone();
            async move { a.append(&good, vec![bytes("kept")]).await }
        });
        let bad_append = tokio::spawn({
            let bad = bad.clone();
            async move { b.append(&bad, vec![bytes("lost")]).await }
        });
        while store.writer.capacity() > store.writer.max_capacity() - 2 {
            tokio::task::yield_now().await;
        }
        let writer = tokio::spawn(writer);
        assert_eq!(
            good_append.await.expect("task").expect("good commits"),
            Appended { first: 1, last: 1, epoch: 0 }
        );
        assert!(matches!(bad_append.await.expect("task"), Err(StoreError::Corrupt { .. })));
        assert_eq!(store.split_groups(), 1, "the group was split and retried");
        assert_eq!(store.load(&good).await.expect("load").tail, vec![b"kept".to_vec()]);
        assert!(store.health().await.is_ok(), "one document's problem is not the store's");
        drop(store);
        writer.await.expect("writer");
    }

    #[tokio::test]
    async fn a_one_statement_commit_that_fails_is_rolled_back_whole() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (store, writer) = SqliteStore::open(tmp.path(), SyncMode::Normal, Duration::ZERO, None)
            .await
            .expect("open");
        let writer = tokio::spawn(writer);
        let (a, b) = (doc("a"), doc("b"));
        // The first append reads the head; the second goes the one-statement way.
        store.append(&a, vec![bytes("1")]).await.expect("first");
        assert_eq!(store.append(&a, vec![bytes("2")]).await.expect("second").last, 2);
        // A row the writer does not know of takes seq 4: the next group (seqs 3 and 4)
        // fails on its second row, after its heads upsert and first row were executed.
        let mut conn = raw(tmp.path()).await;
        sqlx::query("insert into updates (doc, seq, data) values ('a', 4, x'00')")
            .execute(&mut conn)
            .await
            .expect("sneak a row in");
        assert!(store.append(&a, vec![bytes("3"), bytes("4")]).await.is_err());
        // Nothing of it stayed, and the connection is not left inside a transaction.
        let head: i64 = sqlx::query_scalar("select head from heads where doc = 'a'")
            .fetch_one(&mut conn)
            .await
            .expect("head");
        assert_eq!(head, 2);
        let rows: i64 = sqlx::query_scalar("select count(*) from updates where doc = 'a'")
            .fetch_one(&mut conn)
            .await
            .expect("rows");
        assert_eq!(rows, 3, "seqs 1, 2 and the sneaked 4");
        store.append(&b, vec![bytes("b")]).await.expect("the store carries on");
        assert_eq!(store.append(&b, vec![bytes("b2")]).await.expect("one statement").last, 2);
        drop(conn);
        drop(store);
        writer.await.expect("writer");
    }

    #[tokio::test]
    async fn inconsistent_metadata_is_refused_not_served_in_part() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (store, _writer) = open(tmp.path()).await;
        let d = doc("d");
        store.append(&d, vec![bytes("a"), bytes("b"), bytes("c")]).await.expect("append");
        let mut conn = raw(tmp.path()).await;
        // A snapshot seq past every row would hide the whole log.
        sqlx::query("insert into documents values ('d', x'00', 7, 0, 0)")
            .execute(&mut conn)
            .await
            .expect("tamper");
        assert!(matches!(store.load(&d).await, Err(StoreError::Corrupt { .. })));
        // A NULL snapshot covers nothing: the full log is served.
        sqlx::query("update documents set snapshot = null")
            .execute(&mut conn)
            .await
            .expect("tamper");
        assert_eq!(store.load(&d).await.expect("load").tail.len(), 3);
        // A gap in the log.
        sqlx::query("delete from updates where seq = 2").execute(&mut conn).await.expect("tamper");
        assert!(matches!(store.load(&d).await, Err(StoreError::Corrupt { .. })));
    }

    #[tokio::test]
    async fn a_second_process_on_the_same_directory_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (store, writer) = open(tmp.path()).await;
        let second = SqliteStore::open(tmp.path(), SyncMode::Normal, Duration::ZERO, None).await;
        let message = second.err().expect("second open must fail").to_string();
        assert!(message.contains("another tandem process"), "{message}");
        drop(store);
        writer.await.expect("writer");
        // Once the first writer is gone, the directory is free again.
        let (_store, _writer) = open(tmp.path()).await;
    }
}
