//! The only module that knows SQL. SQLite (WAL) holds, per document, a snapshot and an
//! append-only log of raw updates after it.
//!
//! All writes go through one writer task that owns one connection: it drains every queued
//! job, from every room, into a single transaction. That is group commit across rooms: a
//! thousand rooms typing at once cost one fsync per batch, not one per update, and SQLite
//! never sees two writers fight over its lock. Reads (loading a room, listing documents)
//! use a separate pool, which WAL lets run beside the writer.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite};

use tokio::sync::{mpsc, oneshot};

use crate::config::SyncMode;
use crate::error::{Error, Result};
use crate::id::DocId;

/// Most jobs folded into one transaction; bounds the time a single commit holds the lock.
const MAX_JOBS_PER_COMMIT: usize = 512;
/// Rows per multi-row INSERT (SQLite allows 32766 bound parameters; three per row).
const ROWS_PER_INSERT: usize = 500;

#[derive(Clone)]
pub struct Store {
    reader: SqlitePool,
    writer: mpsc::Sender<WriteJob>,
}

/// What a room gets back when it loads a document.
#[derive(Debug, Default)]
pub struct Loaded {
    pub snapshot: Option<Vec<u8>>,
    /// Log rows after the snapshot, in seq order.
    pub tail: Vec<Vec<u8>>,
    /// The seq the next appended update gets.
    pub next_seq: i64,
    pub tail_bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DocSummary {
    pub name: String,
    /// Milliseconds since the Unix epoch.
    pub updated_at: i64,
}

enum WriteJob {
    Append { doc: DocId, first_seq: i64, updates: Vec<Bytes>, reply: oneshot::Sender<Result<()>> },
    Compact { doc: DocId, snapshot: Vec<u8>, upto_seq: i64, reply: oneshot::Sender<Result<()>> },
}

impl WriteJob {
    fn reply(self, result: Result<()>) {
        let reply = match self {
            WriteJob::Append { reply, .. } | WriteJob::Compact { reply, .. } => reply,
        };
        // The room may have gone away (shutdown); nothing to tell then.
        let _ = reply.send(result);
    }
}

impl Store {
    /// Opens (creating if needed) `data_dir/tandem.db` and applies pending migrations.
    /// Returns the store and the writer task, which ends once every `Store` clone is dropped.
    pub async fn open(
        data_dir: &Path,
        sync: SyncMode,
    ) -> Result<(Store, impl Future<Output = ()> + Send + 'static)> {
        std::fs::create_dir_all(data_dir).map_err(|e| Error::Store(sqlx::Error::Io(e)))?;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join("tandem.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                SyncMode::Full => SqliteSynchronous::Full,
                SyncMode::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(10));
        // A one-connection pool: the migrator wants a pool, the writer wants a connection.
        let write_pool =
            SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
        sqlx::migrate!().run(&write_pool).await?;
        let write_conn = write_pool.acquire().await?.detach();
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        let (writer, jobs) = mpsc::channel(4096);
        Ok((Store { reader, writer }, run_writer(write_conn, jobs)))
    }

    /// Reads the snapshot and the log tail in one read transaction, so a compaction that
    /// commits in between cannot make us miss rows.
    pub async fn load(&self, doc: &DocId) -> Result<Loaded> {
        let mut tx = self.reader.begin().await?;
        let row = sqlx::query("select snapshot, snapshot_seq from documents where name = ?")
            .bind(doc.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let (snapshot, snapshot_seq) = match row {
            Some(row) => (row.try_get::<Option<Vec<u8>>, _>(0)?, row.try_get::<i64, _>(1)?),
            None => (None, 0),
        };
        let rows =
            sqlx::query("select seq, data from updates where doc = ? and seq > ? order by seq")
                .bind(doc.as_str())
                .bind(snapshot_seq)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let mut loaded = Loaded { snapshot, next_seq: snapshot_seq + 1, ..Default::default() };
        for row in rows {
            let seq: i64 = row.try_get(0)?;
            let data: Vec<u8> = row.try_get(1)?;
            loaded.tail_bytes += data.len() as u64;
            loaded.tail.push(data);
            loaded.next_seq = seq + 1;
        }
        Ok(loaded)
    }

    /// Durably appends `updates` with seqs `first_seq..`; returns once they are committed.
    pub async fn append(&self, doc: &DocId, first_seq: i64, updates: Vec<Bytes>) -> Result<()> {
        let (reply, done) = oneshot::channel();
        let job = WriteJob::Append { doc: doc.clone(), first_seq, updates, reply };
        self.submit(job, done).await
    }

    /// Replaces the snapshot with one covering every seq up to `upto_seq` and deletes those
    /// log rows, in one transaction. A snapshot older than the stored one is ignored, so two
    /// generations of a room racing at unload cannot move a document backwards.
    pub async fn compact(&self, doc: &DocId, snapshot: Vec<u8>, upto_seq: i64) -> Result<()> {
        let (reply, done) = oneshot::channel();
        let job = WriteJob::Compact { doc: doc.clone(), snapshot, upto_seq, reply };
        self.submit(job, done).await
    }

    async fn submit(&self, job: WriteJob, done: oneshot::Receiver<Result<()>>) -> Result<()> {
        self.writer.send(job).await.map_err(|_| Error::Store(sqlx::Error::PoolClosed))?;
        done.await.map_err(|_| Error::Store(sqlx::Error::PoolClosed))?
    }

    pub async fn list(&self, limit: i64) -> Result<Vec<DocSummary>> {
        let rows =
            sqlx::query("select name, updated_at from documents order by updated_at desc limit ?")
                .bind(limit)
                .fetch_all(&self.reader)
                .await?;
        let mut docs = Vec::with_capacity(rows.len());
        for row in rows {
            docs.push(DocSummary { name: row.try_get(0)?, updated_at: row.try_get(1)? });
        }
        Ok(docs)
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("select 1").execute(&self.reader).await?;
        Ok(())
    }
}

async fn run_writer(mut conn: SqliteConnection, mut jobs: mpsc::Receiver<WriteJob>) {
    let mut batch = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
    while jobs.recv_many(&mut batch, MAX_JOBS_PER_COMMIT).await > 0 {
        match write_all(&mut conn, &batch).await {
            Ok(()) => batch.drain(..).for_each(|job| job.reply(Ok(()))),
            Err(e) => {
                // One bad job must not fail its neighbours: retry each on its own so only
                // the culprit sees the error.
                tracing::warn!(error = %e, jobs = batch.len(), "group commit failed, retrying jobs one by one");
                for job in batch.drain(..) {
                    let result = write_all(&mut conn, std::slice::from_ref(&job)).await;
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "store write failed");
                    }
                    job.reply(result);
                }
            }
        }
    }
    let _ = conn.close().await;
}

/// One transaction for all `jobs`. Spelled out as BEGIN IMMEDIATE/COMMIT (rather than
/// `Connection::begin`) so the write lock is taken up front, not upgraded half-way.
async fn write_all(conn: &mut SqliteConnection, jobs: &[WriteJob]) -> Result<()> {
    sqlx::query("begin immediate").execute(&mut *conn).await?;
    match write_jobs(conn, jobs).await {
        Ok(()) => {
            if let Err(e) = sqlx::query("commit").execute(&mut *conn).await {
                let _ = sqlx::query("rollback").execute(&mut *conn).await;
                return Err(e.into());
            }
            Ok(())
        }
        Err(e) => {
            let _ = sqlx::query("rollback").execute(&mut *conn).await;
            Err(e)
        }
    }
}

/// Writes a group of jobs with as few statements as possible: every sqlx statement is a
/// round trip to SQLite's worker thread, and with a thousand rooms typing those context
/// switches, not SQLite itself, were the cost. Appends first (all documents in one upsert,
/// all rows in multi-row inserts), then compactions: a compaction only deletes rows at or
/// below its seq, which no append in the same group can have.
async fn write_jobs(tx: &mut SqliteConnection, jobs: &[WriteJob]) -> Result<()> {
    let now = now_millis();
    let mut docs: Vec<&str> = Vec::new();
    let mut rows: Vec<(&str, i64, &[u8])> = Vec::new();
    for job in jobs {
        if let WriteJob::Append { doc, first_seq, updates, .. } = job {
            if !docs.contains(&doc.as_str()) {
                docs.push(doc.as_str());
            }
            rows.extend(
                updates.iter().zip(*first_seq..).map(|(u, seq)| (doc.as_str(), seq, u.as_ref())),
            );
        }
    }
    for chunk in docs.chunks(ROWS_PER_INSERT) {
        let mut upsert: QueryBuilder<Sqlite> =
            QueryBuilder::new("insert into documents (name, created_at, updated_at) ");
        upsert.push_values(chunk, |mut row, name| {
            row.push_bind(*name).push_bind(now).push_bind(now);
        });
        upsert.push(" on conflict (name) do update set updated_at = excluded.updated_at");
        upsert.build().execute(&mut *tx).await?;
    }
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut insert: QueryBuilder<Sqlite> =
            QueryBuilder::new("insert into updates (doc, seq, data) ");
        insert.push_values(chunk, |mut row, (doc, seq, data)| {
            row.push_bind(*doc).push_bind(*seq).push_bind(*data);
        });
        insert.build().execute(&mut *tx).await?;
    }
    for job in jobs {
        if let WriteJob::Compact { doc, snapshot, upto_seq, .. } = job {
            let replaced = sqlx::query(
                "insert into documents (name, snapshot, snapshot_seq, created_at, updated_at)
                 values (?, ?, ?, ?, ?)
                 on conflict (name) do update set snapshot = excluded.snapshot,
                    snapshot_seq = excluded.snapshot_seq
                 where excluded.snapshot_seq > documents.snapshot_seq",
            )
            .bind(doc.as_str())
            .bind(snapshot.as_slice())
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
            }
        }
    }
    Ok(())
}

fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
