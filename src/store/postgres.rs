//! The shared backend: PostgreSQL, for several tandem nodes serving the same documents.
//!
//! Writes go through one writer task per node, which folds what its rooms queued into few
//! transactions (group commit, as with SQLite). A run of appends is one statement: it bumps
//! each document's `heads` row (`head = head + n`, in name order so that two nodes never
//! take those row locks in opposite orders), inserts the rows under the seqs that returned,
//! and rings the doorbell (`pg_notify`), all in the statement's own transaction. The row
//! lock is what makes seqs gapless and commit-ordered across nodes; PostgreSQL delivers the
//! notification only once the commit is durable (`synchronous_commit` stays on), so no
//! node can relay an update that could still be lost.
//!
//! The other nodes learn of a commit from `LISTEN tandem_updates` and read the rows after
//! the seq they have (`since`). Notifications are lost while a listener is disconnected,
//! so after every (re)connection the feed says `Resync`, and the cluster loop also polls
//! the heads of loaded documents: a missed doorbell delays an update, never loses it.
//!
//! When the database goes away the writer keeps the jobs, reconnects with backoff and
//! retries, so rooms hold their echoes instead of failing; only after `timeout` without
//! the database do jobs fail (`Unavailable`), and `outage` tells the rest of the node.

use std::str::FromStr as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, Row as _};
use tokio::sync::{mpsc, oneshot};

use super::job::{Done, Job};
use super::{
    Appended, DocSummary, FeedEvent, Health, Loaded, MAX_SEQ, Result, Revocation, RevocationKind,
    Since, StoreError, check_log,
};
use crate::id::DocId;

/// Most jobs folded into one group (as for SQLite).
const MAX_JOBS_PER_COMMIT: usize = 512;
/// One attempt at a statement (or a connection) that takes longer than this is treated as
/// a lost connection: a half-open TCP connection would otherwise hang the writer forever.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between two attempts while the database is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A commit slower than this is logged: every echo on this node waited for it.
const SLOW_COMMIT: Duration = Duration::from_millis(100);
/// `pg_notify` payloads must stay under 8,000 bytes.
pub(crate) const MAX_NOTIFY_PAYLOAD: usize = 7_900;

pub(crate) const CHANNEL_UPDATES: &str = "tandem_updates";
pub(crate) const CHANNEL_AWARENESS: &str = "tandem_awareness";
pub(crate) const CHANNEL_NODES: &str = "tandem_nodes";
pub(crate) const CHANNEL_REVOCATIONS: &str = "tandem_revocations";

#[derive(Clone)]
pub(super) struct PgStore {
    pool: PgPool,
    writer: mpsc::Sender<Job>,
    /// Notifications to send (presence, heartbeats): lossy, batched by one task.
    notify: mpsc::Sender<(&'static str, String)>,
    shared: Arc<Shared>,
}

struct Shared {
    health: Health,
    /// This process's id in every payload (skips its own notifications).
    instance: String,
    timeout: Duration,
    /// Since when the database has been unreachable, and why (None: reachable).
    down: Mutex<Option<(Instant, String)>>,
    /// Taken once by the cluster loop.
    feed: Mutex<Option<mpsc::Receiver<FeedEvent>>>,
    /// The health check's own connection: a pool busy with room loads is not an outage.
    probe: tokio::sync::Mutex<Option<PgConnection>>,
    options: PgConnectOptions,
}

impl Shared {
    fn went_down(&self, reason: &str) -> Instant {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match &*down {
            Some((since, _)) => *since,
            None => {
                tracing::warn!(reason, "database unreachable; holding writes and retrying");
                let now = Instant::now();
                *down = Some((now, reason.to_string()));
                now
            }
        }
    }

    fn came_back(&self) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((since, _)) = down.take() {
            tracing::info!(
                after_ms = since.elapsed().as_millis() as u64,
                "database reachable again"
            );
        }
    }

    fn outage(&self) -> Option<(Duration, String)> {
        let down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.as_ref().map(|(since, reason)| (since.elapsed(), reason.clone()))
    }
}

/// Errors that say the connection (or the server) is gone, not that the statement is wrong:
/// retried after a reconnect instead of failing the job.
pub(super) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // connection exceptions, shutdowns, "cannot connect now", too many connections,
            // serialization failures and deadlocks (a retry resolves them)
            code.starts_with("08")
                || code.starts_with("57P")
                || matches!(&*code, "53300" | "40001" | "40P01")
        }),
        _ => false,
    }
}

/// A failed attempt at a segment: the database's error, or a verdict of ours.
enum Failure {
    Sql(sqlx::Error),
    TimedOut,
    Store(StoreError),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Failure {
        Failure::Sql(e)
    }
}

impl Failure {
    fn transient(&self) -> bool {
        match self {
            Failure::Sql(e) => is_transient(e),
            Failure::TimedOut => true,
            Failure::Store(_) => false,
        }
    }

    fn conflict(&self) -> bool {
        matches!(self, Failure::Sql(sqlx::Error::Database(db))
            if db.code().is_some_and(|c| matches!(&*c, "40001" | "40P01")))
    }

    fn into_store(self) -> StoreError {
        match self {
            Failure::Sql(e) => e.into(),
            Failure::TimedOut => StoreError::Unavailable("the database did not answer".into()),
            Failure::Store(e) => e,
        }
    }
}

impl PgStore {
    pub(super) async fn open(
        url: &str,
        instance: &str,
        timeout: Duration,
    ) -> anyhow::Result<(PgStore, impl Future<Output = ()> + Send + 'static)> {
        let options = PgConnectOptions::from_str(url)
            .context("--database-url is not a PostgreSQL URL")?
            .application_name("tandem")
            // The echo is the durable acknowledgement: the commit must be flushed.
            .options([("synchronous_commit", "on")])
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(ATTEMPT_TIMEOUT)
            .connect_with(options.clone())
            .await
            .context("connecting to PostgreSQL")?;
        // Several nodes starting at once: sqlx's migrator takes an advisory lock.
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .context("migrating the PostgreSQL schema")?;
        sqlx::query(
            "insert into meta (key, value) values ('opened_at', $1)
             on conflict (key) do update set value = excluded.value",
        )
        .bind(now_millis().to_string())
        .execute(&pool)
        .await
        .context("the database is not writable")?;
        let (writer, jobs) = mpsc::channel(4096);
        let (notify, notifications) = mpsc::channel(4096);
        let (events, feed) = mpsc::channel(4096);
        let shared = Arc::new(Shared {
            health: Health::default(),
            instance: instance.to_string(),
            timeout,
            down: Mutex::new(None),
            feed: Mutex::new(Some(feed)),
            probe: tokio::sync::Mutex::new(None),
            options: options.clone(),
        });
        let store =
            PgStore { pool: pool.clone(), writer, notify: notify.clone(), shared: shared.clone() };
        let tasks = {
            let shared = shared.clone();
            async move {
                let listener = tokio::spawn(listen(pool.clone(), events, shared.clone()));
                let notifier = tokio::spawn(send_notifications(pool, notifications));
                drop(notify);
                run_writer(options, jobs, shared).await;
                // The writer ends once every store handle is gone; so do these.
                listener.abort();
                notifier.abort();
            }
        };
        Ok((store, tasks))
    }

    pub(super) async fn load(&self, doc: &DocId) -> Result<Loaded> {
        within(READ_TIMEOUT, self.load_now(doc)).await
    }

    async fn load_now(&self, doc: &DocId) -> Result<Loaded> {
        let mut tx = self.pool.begin().await?;
        // One snapshot of the database for all three reads: a compaction by another node
        // between them would otherwise show a snapshot without the rows it replaced.
        sqlx::query("set transaction isolation level repeatable read, read only")
            .execute(&mut *tx)
            .await?;
        let heads: Option<(i64, i64)> =
            sqlx::query_as("select head, epoch from heads where doc = $1")
                .bind(doc.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let head = heads.map(|(head, _)| head);
        let row = sqlx::query("select snapshot, snapshot_seq from documents where name = $1")
            .bind(doc.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let rows = sqlx::query("select seq, data from updates where doc = $1 order by seq")
            .bind(doc.as_str())
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let (snapshot, snapshot_seq) = match row {
            Some(row) => (row.try_get::<Option<Vec<u8>>, _>(0)?, row.try_get::<i64, _>(1)?),
            None => (None, 0),
        };
        let snapshot_seq = if snapshot.is_some() { snapshot_seq } else { 0 };
        let mut seqs = Vec::with_capacity(rows.len());
        let mut loaded = Loaded {
            head: head.unwrap_or(0),
            epoch: heads.map_or(0, |(_, epoch)| epoch),
            ..Default::default()
        };
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

    /// The rows after `after`, in one statement (one consistent view). Rows are only ever
    /// deleted from the front (compaction) or all at once (deletion), so what it returns is
    /// gapless; if it does not start right after `after`, or is empty while the head is
    /// known to be past it, compaction took those rows and the whole document is read.
    pub(super) async fn since(&self, doc: &DocId, after: i64, head: i64) -> Result<Since> {
        within(READ_TIMEOUT, self.since_now(doc, after, head)).await
    }

    async fn since_now(&self, doc: &DocId, after: i64, head: i64) -> Result<Since> {
        // The epoch comes with the rows (one statement, one view): rows of another life of
        // the name are told apart. No heads row at all: the document is gone.
        let rows = sqlx::query(
            "select h.epoch, u.seq, u.data from heads h
             left join updates u on u.doc = h.doc and u.seq > $2
             where h.doc = $1 order by u.seq",
        )
        .bind(doc.as_str())
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else { return Ok(Since::Reload(Loaded::default())) };
        let epoch: i64 = first.try_get(0)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: Option<i64> = row.try_get(1)?;
            let data: Option<Vec<u8>> = row.try_get(2)?;
            if let (Some(seq), Some(data)) = (seq, data) {
                out.push((seq, data));
            }
        }
        let starts_right = out.first().is_some_and(|(seq, _)| *seq == after + 1);
        if starts_right || (out.is_empty() && head <= after) {
            return Ok(Since::Rows { epoch, rows: out });
        }
        Ok(Since::Reload(self.load_now(doc).await?))
    }

    pub(super) async fn heads(&self, docs: &[DocId]) -> Result<Vec<(DocId, i64)>> {
        let names: Vec<&str> = docs.iter().map(DocId::as_str).collect();
        let query = sqlx::query("select doc, head from heads where doc = any($1)")
            .bind(&names)
            .fetch_all(&self.pool);
        let rows = within(READ_TIMEOUT, async { query.await.map_err(StoreError::from) }).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get(0)?;
            if let Ok(doc) = DocId::parse(&name) {
                out.push((doc, row.try_get(1)?));
            }
        }
        Ok(out)
    }

    pub(super) async fn append(
        &self,
        doc: &DocId,
        updates: Vec<Bytes>,
        epoch: i64,
    ) -> Result<Appended> {
        let (reply, done) = oneshot::channel();
        self.submit(Job::Append { doc: doc.clone(), updates, epoch, reply }, done).await
    }

    pub(super) async fn compact(
        &self,
        doc: &DocId,
        snapshot: Vec<u8>,
        upto_seq: i64,
        epoch: i64,
    ) -> Result<bool> {
        let (reply, done) = oneshot::channel();
        let job = Job::Compact { doc: doc.clone(), snapshot, upto_seq, epoch, reply };
        self.submit(job, done).await
    }

    pub(super) async fn revoke(&self, revocation: &Revocation) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.submit(Job::Revoke { revocation: revocation.clone(), reply }, done).await
    }

    pub(super) async fn delete(&self, doc: &DocId) -> Result<bool> {
        let (reply, done) = oneshot::channel();
        self.submit(Job::Delete { doc: doc.clone(), reply }, done).await
    }

    async fn submit<T>(&self, job: Job, done: oneshot::Receiver<Result<T>>) -> Result<T> {
        let gone = || StoreError::Unavailable("the store writer has stopped".into());
        self.writer.send(job).await.map_err(|_| gone())?;
        done.await.map_err(|_| gone())?
    }

    pub(super) async fn revocations(&self) -> Result<Vec<Revocation>> {
        let query =
            sqlx::query("select kind, value, revoked_at from revocations").fetch_all(&self.pool);
        let rows = within(READ_TIMEOUT, async { query.await.map_err(StoreError::from) }).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let kind: String = row.try_get(0)?;
            let Some(kind) = RevocationKind::parse(&kind) else { continue };
            let at: i64 = row.try_get(2)?;
            out.push(Revocation { kind, value: row.try_get(1)?, revoked_at: at.max(0) as u64 });
        }
        Ok(out)
    }

    pub(super) async fn list(
        &self,
        prefix: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<DocSummary>> {
        let upper = format!("{prefix}\u{7f}");
        let rows = sqlx::query(
            "select doc, created_at, updated_at, bytes from heads
             where doc > $1 and doc >= $2 and doc < $3 order by doc limit $4",
        )
        .bind(after)
        .bind(prefix)
        .bind(upper)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(summary).collect()
    }

    pub(super) async fn summary(&self, doc: &DocId) -> Result<Option<DocSummary>> {
        let row =
            sqlx::query("select doc, created_at, updated_at, bytes from heads where doc = $1")
                .bind(doc.as_str())
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(summary).transpose()
    }

    /// Sends a notification to the other nodes, best effort (a full queue drops it).
    pub(super) fn publish(&self, channel: &'static str, payload: String) {
        if payload.len() <= MAX_NOTIFY_PAYLOAD {
            let _ = self.notify.try_send((channel, payload));
        }
    }

    /// Sends a notification now and waits for it (the goodbye at shutdown).
    pub(super) async fn publish_now(&self, channel: &'static str, payload: String) -> Result<()> {
        let send = sqlx::query("select pg_notify($1, $2)").bind(channel).bind(payload);
        match tokio::time::timeout(Duration::from_secs(2), send.execute(&self.pool)).await {
            Ok(result) => result.map(|_| ()).map_err(Into::into),
            Err(_) => Err(StoreError::Unavailable("the database did not answer".into())),
        }
    }

    pub(super) fn instance(&self) -> &str {
        &self.shared.instance
    }

    pub(super) fn take_feed(&self) -> Option<mpsc::Receiver<FeedEvent>> {
        self.shared.feed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(super) fn outage(&self) -> Option<(Duration, String)> {
        self.shared.outage()
    }

    pub(super) fn outage_limit(&self) -> Duration {
        self.shared.timeout
    }

    /// Asks the database; an unreachable one starts (or continues) an outage, an answer
    /// ends it. Called by the cluster loop every second, so that a node learns of an outage
    /// even when nobody writes.
    pub(super) async fn health(&self) -> Result<(), String> {
        let result = {
            let mut probe = self.shared.probe.lock().await;
            let ping = async {
                if probe.is_none() {
                    *probe = Some(self.shared.options.connect().await?);
                }
                match probe.as_mut() {
                    Some(conn) => sqlx::query("select 1").execute(conn).await.map(|_| ()),
                    None => Err(sqlx::Error::PoolClosed),
                }
            };
            let result = match tokio::time::timeout(ATTEMPT_TIMEOUT, ping).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the database did not answer".to_string()),
            };
            if result.is_err() {
                *probe = None;
            }
            result
        };
        match result {
            Ok(()) => self.shared.came_back(),
            Err(reason) => {
                self.shared.went_down(&reason);
            }
        }
        if let Some((since, reason)) = self.shared.outage() {
            return Err(format!("database unreachable for {} ms: {reason}", since.as_millis()));
        }
        if let Some(reason) = self.shared.health.failing() {
            return Err(format!("commits are failing: {reason}"));
        }
        Ok(())
    }
}

/// A read that takes longer than this (a half-open connection, a stuck server) fails as
/// unavailable instead of holding a room or the cluster loop.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

async fn within<T>(limit: Duration, read: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(limit, read).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable("the database did not answer in time".into())),
    }
}

fn summary(row: &sqlx::postgres::PgRow) -> Result<DocSummary> {
    Ok(DocSummary {
        name: row.try_get(0)?,
        created_at: row.try_get(1)?,
        updated_at: row.try_get(2)?,
        bytes: row.try_get(3)?,
    })
}

// ---- the feed --------------------------------------------------------------------------

/// Listens for the other nodes' notifications and turns them into `FeedEvent`s. After every
/// (re)subscription it says `Resync`: whatever was sent meanwhile is lost, so the cluster
/// loop catches up every loaded document.
async fn listen(pool: PgPool, events: mpsc::Sender<FeedEvent>, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let subscribed = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener
                .listen_all([
                    CHANNEL_UPDATES,
                    CHANNEL_AWARENESS,
                    CHANNEL_NODES,
                    CHANNEL_REVOCATIONS,
                ])
                .await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match tokio::time::timeout(ATTEMPT_TIMEOUT, subscribed).await {
            Ok(Ok(listener)) => listener,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "feed: cannot subscribe yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        if events.send(FeedEvent::Resync).await.is_err() {
            return;
        }
        loop {
            let next = tokio::select! {
                _ = events.closed() => return,
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(notification)) => {
                    let event =
                        parse(notification.channel(), notification.payload(), &shared.instance);
                    if let Some(event) = event
                        && events.send(event).await.is_err()
                    {
                        return;
                    }
                }
                // Lost and reconnected (and subscribed again): anything may have been missed.
                Ok(None) => {
                    tracing::warn!("feed: connection lost and re-established; catching up");
                    if events.send(FeedEvent::Resync).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "feed: connection lost");
                    break;
                }
            }
        }
    }
}

/// Payloads (space-separated; document names have no spaces, node names go last):
/// - `tandem_updates`: `HEAD DOC INSTANCE`, or `- DOC INSTANCE` for a deletion;
/// - `tandem_awareness`: `DOC BASE64-FRAME INSTANCE`;
/// - `tandem_nodes`: `alive|bye INSTANCE`;
/// - `tandem_revocations`: `INSTANCE`.
///
/// Our own notifications, and anything that does not parse, are skipped.
fn parse(channel: &str, payload: &str, own: &str) -> Option<FeedEvent> {
    match channel {
        CHANNEL_UPDATES => {
            let mut parts = payload.splitn(3, ' ');
            let (head, doc, node) = (parts.next()?, parts.next()?, parts.next()?);
            if node == own {
                return None;
            }
            let doc = DocId::parse(doc).ok()?;
            if head == "-" {
                return Some(FeedEvent::Deleted { doc });
            }
            let head = head.parse::<i64>().ok().filter(|h| (1..=MAX_SEQ).contains(h))?;
            Some(FeedEvent::Committed { doc, head })
        }
        CHANNEL_AWARENESS => {
            let mut parts = payload.splitn(3, ' ');
            let (doc, frame, node) = (parts.next()?, parts.next()?, parts.next()?);
            if node == own {
                return None;
            }
            let doc = DocId::parse(doc).ok()?;
            let frame = base64::engine::general_purpose::STANDARD.decode(frame).ok()?;
            Some(FeedEvent::Awareness { doc, node: node.to_string(), frame: Bytes::from(frame) })
        }
        CHANNEL_NODES => {
            let (what, node) = payload.split_once(' ')?;
            if node == own {
                return None;
            }
            match what {
                "alive" => Some(FeedEvent::NodeAlive { node: node.to_string() }),
                "bye" => Some(FeedEvent::NodeGone { node: node.to_string() }),
                _ => None,
            }
        }
        CHANNEL_REVOCATIONS => (payload != own).then_some(FeedEvent::Revoked),
        _ => None,
    }
}

/// Sends queued notifications, many per statement. Presence is lossy by nature (every
/// client renews its state every 15 s), so a failure is logged and the batch dropped.
async fn send_notifications(pool: PgPool, mut queue: mpsc::Receiver<(&'static str, String)>) {
    let mut batch = Vec::with_capacity(256);
    while queue.recv_many(&mut batch, 256).await > 0 {
        let (channels, payloads): (Vec<&str>, Vec<String>) = batch.drain(..).unzip();
        let send =
            sqlx::query("select pg_notify(c, p) from unnest($1::text[], $2::text[]) as t(c, p)")
                .bind(&channels)
                .bind(&payloads)
                .execute(&pool);
        match tokio::time::timeout(ATTEMPT_TIMEOUT, send).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "notifications dropped"),
            Err(_) => tracing::debug!("notifications dropped: the database did not answer"),
        }
    }
}

// ---- the writer ------------------------------------------------------------------------

async fn run_writer(options: PgConnectOptions, mut jobs: mpsc::Receiver<Job>, shared: Arc<Shared>) {
    let mut conn: Option<PgConnection> = None;
    let mut batch = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
    while jobs.recv_many(&mut batch, MAX_JOBS_PER_COMMIT).await > 0 {
        let mut jobs = batch.drain(..).peekable();
        // Consecutive appends are one statement; anything else is its own transaction, in
        // queue order (a delete followed by a write re-creates the document, as asked).
        while let Some(job) = jobs.next() {
            let mut segment = vec![job];
            if matches!(segment[0], Job::Append { .. }) {
                while let Some(next) = jobs.next_if(|j| matches!(j, Job::Append { .. })) {
                    segment.push(next);
                }
            }
            let (started, jobs) = (Instant::now(), segment.len());
            commit_segment(&mut conn, segment, &options, &shared).await;
            let took = started.elapsed();
            if took >= SLOW_COMMIT {
                tracing::warn!(ms = took.as_millis() as u64, jobs, "slow commit");
            }
        }
    }
    if let Some(conn) = conn {
        let _ = conn.close().await;
    }
}

/// Commits one segment, retrying through a lost connection until the outage has lasted
/// `timeout`; a group that fails for another reason is retried job by job, so only the
/// culprit sees the error.
async fn commit_segment(
    conn: &mut Option<PgConnection>,
    segment: Vec<Job>,
    options: &PgConnectOptions,
    shared: &Shared,
) {
    match attempt_until_timeout(conn, &segment, options, shared).await {
        Ok(done) => {
            for (job, done) in segment.into_iter().zip(done) {
                job.reply(Ok(done));
            }
        }
        Err(e) if segment.len() == 1 || matches!(e, StoreError::Unavailable(_)) => {
            for job in segment {
                report_failure(&e, job.subject(), shared);
                job.reply(Err(e.clone()));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = segment.len(), "group commit failed, retrying jobs one by one");
            shared.health.split_group();
            for job in segment {
                let one = std::slice::from_ref(&job);
                match attempt_until_timeout(conn, one, options, shared).await {
                    Ok(mut done) => match done.pop() {
                        Some(done) => job.reply(Ok(done)),
                        None => job.reply(Err(StoreError::Unavailable("no result".into()))),
                    },
                    Err(e) => {
                        report_failure(&e, job.subject(), shared);
                        job.reply(Err(e));
                    }
                }
            }
        }
    }
}

fn report_failure(e: &StoreError, doc: &str, shared: &Shared) {
    tracing::error!(error = %e, doc, "store write failed");
    if matches!(e, StoreError::Database(_)) {
        shared.health.set_failing(Some(e.to_string()));
    }
}

async fn attempt_until_timeout(
    conn: &mut Option<PgConnection>,
    jobs: &[Job],
    options: &PgConnectOptions,
    shared: &Shared,
) -> Result<Vec<Done>> {
    let mut backoff = Duration::from_millis(20);
    let mut conflicts = 0;
    loop {
        let attempt = async {
            if conn.is_none() {
                *conn = Some(options.connect().await?);
            }
            match conn.as_mut() {
                Some(c) => write_segment(c, jobs, &shared.instance).await,
                None => Err(Failure::TimedOut),
            }
        };
        let failure = match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
            Ok(Ok(done)) => {
                shared.health.set_failing(None);
                shared.came_back();
                return Ok(done);
            }
            Ok(Err(failure)) => failure,
            Err(_) => Failure::TimedOut,
        };
        if !failure.transient() {
            return Err(failure.into_store());
        }
        // A deadlock or serialization failure is two writers colliding, not an outage:
        // again at once, on the same connection.
        if failure.conflict() && conflicts < 5 {
            conflicts += 1;
            continue;
        }
        // Whatever state the connection is in, it is not to be trusted again.
        *conn = None;
        let error = failure.into_store();
        let since = shared.went_down(&error.to_string());
        let waited = since.elapsed();
        if waited >= shared.timeout {
            return Err(StoreError::Unavailable(format!(
                "database unreachable for {} s: {error}",
                waited.as_secs()
            )));
        }
        tokio::time::sleep(backoff.min(shared.timeout - waited)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn write_segment(
    conn: &mut PgConnection,
    jobs: &[Job],
    instance: &str,
) -> std::result::Result<Vec<Done>, Failure> {
    let Some(first) = jobs.first() else { return Ok(Vec::new()) };
    let now = now_millis();
    match first {
        Job::Append { .. } => write_appends(conn, jobs, instance, now).await,
        Job::Compact { doc, snapshot, upto_seq, epoch, .. } => {
            let mut tx = conn.begin().await?;
            let replaced = compact_one(&mut tx, doc, snapshot, *upto_seq, *epoch, now).await?;
            tx.commit().await?;
            Ok(vec![Done::Compacted(replaced)])
        }
        Job::Delete { doc, .. } => {
            let mut tx = conn.begin().await?;
            let head: Option<i64> =
                sqlx::query_scalar("delete from heads where doc = $1 returning head")
                    .bind(doc.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            sqlx::query("delete from updates where doc = $1")
                .bind(doc.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query("delete from documents where name = $1")
                .bind(doc.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query("select pg_notify($1, $2)")
                .bind(CHANNEL_UPDATES)
                .bind(format!("- {doc} {instance}"))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(vec![Done::Deleted(head.is_some())])
        }
        Job::Revoke { revocation, .. } => {
            let mut tx = conn.begin().await?;
            sqlx::query(
                "insert into revocations (kind, value, revoked_at) values ($1, $2, $3)
                 on conflict (kind, value) do update
                 set revoked_at = greatest(revocations.revoked_at, excluded.revoked_at)",
            )
            .bind(revocation.kind.as_str())
            .bind(&revocation.value)
            .bind(revocation.revoked_at.min(i64::MAX as u64) as i64)
            .execute(&mut *tx)
            .await?;
            sqlx::query("select pg_notify($1, $2)")
                .bind(CHANNEL_REVOCATIONS)
                .bind(instance)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(vec![Done::Revoked])
        }
        Job::Webhook { .. } => Err(Failure::Store(StoreError::Unavailable(
            "webhooks are not available on PostgreSQL".into(),
        ))),
    }
}

/// Every append of the segment in one statement (its own transaction): heads bumped in name
/// order, rows inserted under the seqs that returned, and one doorbell per document.
async fn write_appends(
    conn: &mut PgConnection,
    jobs: &[Job],
    instance: &str,
    now: i64,
) -> std::result::Result<Vec<Done>, Failure> {
    // Per document in first-seen order: its name, updates and bytes in this segment.
    let mut docs: Vec<(&str, i64, i64)> = Vec::new();
    // The epoch each document's room knows (0: any).
    let mut epochs: Vec<i64> = Vec::new();
    let (mut row_docs, mut row_idx, mut row_data): (Vec<&str>, Vec<i64>, Vec<&[u8]>) =
        Default::default();
    let mut placement = Vec::with_capacity(jobs.len());
    for job in jobs {
        let Job::Append { doc, updates, epoch, .. } = job else {
            return Err(Failure::Store(StoreError::Unavailable("writer mixed up jobs".into())));
        };
        let i = match docs.iter().position(|(d, _, _)| *d == doc.as_str()) {
            Some(i) => i,
            None => {
                docs.push((doc.as_str(), 0, 0));
                epochs.push(*epoch);
                docs.len() - 1
            }
        };
        let start = docs[i].1;
        for update in updates {
            docs[i].1 += 1;
            docs[i].2 += update.len() as i64;
            row_docs.push(doc.as_str());
            row_idx.push(docs[i].1);
            row_data.push(update.as_ref());
        }
        // (document, its index within the segment: first and last)
        placement.push((i, start + 1, docs[i].1));
    }
    let names: Vec<&str> = docs.iter().map(|d| d.0).collect();
    let counts: Vec<i64> = docs.iter().map(|d| d.1).collect();
    let sizes: Vec<i64> = docs.iter().map(|d| d.2).collect();
    let rows = sqlx::query(
        "with input as (
             select * from unnest($1::text[], $2::int8[], $3::int8[], $10::int8[])
                 as t(doc, n, bytes, epoch)
         ),
         h as (
             insert into heads as h (doc, head, created_at, updated_at, bytes)
             select i.doc, i.n, $4, $4, i.bytes from input i
             where i.epoch = 0 or exists (select 1 from heads x where x.doc = i.doc)
             order by i.doc
             on conflict (doc) do update set head = h.head + excluded.head,
                 updated_at = excluded.updated_at, bytes = h.bytes + excluded.bytes
             where (select i.epoch from input i where i.doc = h.doc) in (0, h.epoch)
             returning h.doc, h.head, h.epoch
         ),
         ins as (
             insert into updates (doc, seq, data)
             select r.doc, h.head - i.n + r.idx, r.data
             from unnest($5::text[], $6::int8[], $7::bytea[]) as r(doc, idx, data)
             join h on h.doc = r.doc join input i on i.doc = r.doc
         )
         select h.doc, h.head, h.epoch from h,
             lateral (select pg_notify($8, h.head || ' ' || h.doc || ' ' || $9)) as bell",
    )
    .bind(&names)
    .bind(&counts)
    .bind(&sizes)
    .bind(now)
    .bind(&row_docs)
    .bind(&row_idx)
    .bind(&row_data)
    .bind(CHANNEL_UPDATES)
    .bind(instance)
    .bind(&epochs)
    .fetch_all(&mut *conn)
    .await?;
    let mut heads = vec![None; docs.len()];
    for row in rows {
        let (doc, head, epoch): (String, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if let Some(i) = names.iter().position(|n| *n == doc) {
            heads[i] = Some((head, epoch));
        }
    }
    let mut done = Vec::with_capacity(jobs.len());
    for (i, first, last) in placement {
        let Some((head, epoch)) = heads[i] else {
            // Its life ended under it (deleted on another node): nothing of it was written.
            done.push(Done::Gone);
            continue;
        };
        // The document's seqs in this segment end at `head`.
        let base = head - docs[i].1;
        done.push(Done::Appended(Appended { first: base + first, last: base + last, epoch }));
    }
    Ok(done)
}

async fn compact_one(
    tx: &mut PgConnection,
    doc: &DocId,
    snapshot: &[u8],
    upto_seq: i64,
    epoch: i64,
    now: i64,
) -> std::result::Result<bool, Failure> {
    // One node compacts a document at a time; the others skip (their turn comes later).
    let mine: bool = sqlx::query_scalar(
        "select pg_try_advisory_xact_lock(hashtextextended('tandem.compact.' || $1, 0))",
    )
    .bind(doc.as_str())
    .fetch_one(&mut *tx)
    .await?;
    if !mine {
        return Ok(false);
    }
    // The heads row first, as a deletion takes it: the two never lock in opposite orders.
    let row: Option<(i64, i64)> =
        sqlx::query_as("select head, epoch from heads where doc = $1 for update")
            .bind(doc.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    // A snapshot of another life of the name (deleted and written again since) is not this
    // document's: it is dropped, not stored over the new one.
    if row.is_some_and(|(_, e)| epoch != 0 && e != epoch) {
        return Ok(false);
    }
    let head = row.map(|(head, _)| head);
    if head.is_none_or(|head| upto_seq > head) || upto_seq < 1 {
        return Err(Failure::Store(StoreError::corrupt(
            doc,
            format!("snapshot up to {upto_seq} is past the head {head:?}"),
        )));
    }
    // A snapshot never goes backwards: an older one (another node's, or a late one) loses.
    let replaced = sqlx::query(
        "insert into documents as d (name, snapshot, snapshot_seq, created_at, updated_at)
         values ($1, $2, $3, $4, $4)
         on conflict (name) do update set snapshot = excluded.snapshot,
            snapshot_seq = excluded.snapshot_seq, updated_at = excluded.updated_at
         where excluded.snapshot_seq > d.snapshot_seq or d.snapshot is null",
    )
    .bind(doc.as_str())
    .bind(snapshot)
    .bind(upto_seq)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if replaced > 0 {
        sqlx::query("delete from updates where doc = $1 and seq <= $2")
            .bind(doc.as_str())
            .bind(upto_seq)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "update heads set bytes = $1 + coalesce((select sum(length(data)) from updates
               where doc = $2), 0) where doc = $2",
        )
        .bind(snapshot.len() as i64)
        .bind(doc.as_str())
        .execute(&mut *tx)
        .await?;
    }
    Ok(replaced > 0)
}

fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_parse_and_our_own_are_skipped() {
        let doc = |e: Option<FeedEvent>| match e {
            Some(FeedEvent::Committed { doc, head }) => Some((doc.as_str().to_string(), head)),
            _ => None,
        };
        assert_eq!(doc(parse(CHANNEL_UPDATES, "7 notes b-1", "a-1")), Some(("notes".into(), 7)));
        assert!(parse(CHANNEL_UPDATES, "7 notes a-1", "a-1").is_none());
        assert!(matches!(
            parse(CHANNEL_UPDATES, "- notes node with spaces", "a-1"),
            Some(FeedEvent::Deleted { .. })
        ));
        for bad in ["", "7", "x notes b", "0 notes b", "7 ../etc b", "99999999999999999 d b"] {
            assert!(parse(CHANNEL_UPDATES, bad, "a-1").is_none(), "{bad:?}");
        }
        assert!(matches!(
            parse(CHANNEL_AWARENESS, "notes AQID b-1", "a-1"),
            Some(FeedEvent::Awareness { frame, .. }) if frame.as_ref() == [1, 2, 3]
        ));
        assert!(parse(CHANNEL_AWARENESS, "notes !!! b-1", "a-1").is_none());
        assert!(matches!(parse(CHANNEL_NODES, "bye b-1", "a-1"), Some(FeedEvent::NodeGone { .. })));
        assert!(parse(CHANNEL_NODES, "alive a-1", "a-1").is_none());
        assert!(matches!(parse(CHANNEL_REVOCATIONS, "b-1", "a-1"), Some(FeedEvent::Revoked)));
    }
}
