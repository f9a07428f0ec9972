//! Workloads that are not "writers and observers": idle memory, join storm, durable
//! throughput, cold load, and the raw SQLite ceiling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::load::{Kind, Outcome, Target, connect_synced, encode_frames, room_name};
use crate::proc;

fn outcome(target: &Target, workload: &str) -> Outcome {
    Outcome { workload: workload.into(), server: target.label.clone(), ..Default::default() }
}

async fn connect_many(urls: Vec<String>) -> (Vec<crate::load::Socket>, u64) {
    let gate = Arc::new(Semaphore::new(256));
    let tasks: Vec<_> = urls
        .into_iter()
        .map(|url| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire().await;
                connect_synced(&url).await.map(|(s, _)| s)
            })
        })
        .collect();
    let mut sockets = Vec::new();
    let mut errors = 0;
    for task in tasks {
        match task.await {
            Ok(Ok(s)) => sockets.push(s),
            _ => errors += 1,
        }
    }
    (sockets, errors)
}

/// Memory of idle connections: `rooms` rooms with one client each, then `per_room` each.
pub(crate) async fn idle(
    target: &Target,
    rooms: usize,
    per_room: usize,
) -> anyhow::Result<Outcome> {
    let mut out = outcome(target, "idle-memory");
    for r in 0..rooms {
        target.prepare_room(&room_name("idle", r)).await?;
    }
    let pid = target.pid;
    let base = pid.and_then(proc::rss_bytes).unwrap_or(0);
    let started = Instant::now();
    let urls = (0..rooms).map(|r| target.room_url(&room_name("idle", r))).collect();
    let (first, e1) = connect_many(urls).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_rooms = pid.and_then(proc::rss_bytes).unwrap_or(0);
    let urls = (0..rooms)
        .flat_map(|r| std::iter::repeat_n(target.room_url(&room_name("idle", r)), per_room - 1))
        .collect();
    let (rest, e2) = connect_many(urls).await;
    out.connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let full = pid.and_then(proc::rss_bytes).unwrap_or(0);
    out.clients = first.len() + rest.len();
    out.errors = e1 + e2;
    out.peak_rss_mb = full as f64 / 1_048_576.0;
    let per_conn = (full.saturating_sub(with_rooms)) as f64 / rest.len().max(1) as f64;
    let per_room = (with_rooms.saturating_sub(base)) as f64 / rooms as f64 - per_conn;
    out.note = format!(
        "{} idle connections in {rooms} rooms: {:.1} KiB per connection, {:.1} KiB per room (beyond its first connection)",
        out.clients,
        per_conn / 1024.0,
        per_room.max(0.0) / 1024.0
    );
    drop((first, rest));
    Ok(out)
}

/// Loads one document with `mb` MiB of text history, in `chunk`-byte updates, pipelined.
async fn populate(url: &str, mb: usize, chunk: usize) -> anyhow::Result<usize> {
    let n = (mb * 1024 * 1024).div_ceil(chunk);
    let frames = encode_frames(Kind::Doc, 0, n, chunk);
    write_pipelined(url, &frames, 32, None).await?;
    Ok(n)
}

/// Sends frames keeping at most `window` unacknowledged (echoes count as acks), until all
/// are sent or `send_for` has passed; then waits for the outstanding echoes.
/// Returns (frames acknowledged, seconds until the last echo).
async fn write_pipelined(
    url: &str,
    frames: &[Bytes],
    window: usize,
    send_for: Option<Duration>,
) -> anyhow::Result<(usize, f64)> {
    let (socket, _) = connect_synced(url).await?;
    let (mut sink, mut stream) = socket.split();
    let started = Instant::now();
    let (mut sent, mut acked) = (0usize, 0usize);
    let mut limit = frames.len();
    while acked < limit {
        if send_for.is_some_and(|d| started.elapsed() > d) {
            limit = sent;
        }
        while sent < limit && sent - acked < window {
            sink.send(Message::Binary(frames[sent].clone())).await?;
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(Message::Binary(f)))) if f.len() > 2 && f[0] == 0 && f[1] == 2 => acked += 1,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => anyhow::bail!("closed after {acked} acks"),
            Err(_) => anyhow::bail!("no echo in 30 s after {acked} acks: does this server echo?"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let mut socket = sink.reunite(stream).map_err(|_| anyhow::anyhow!("reunite"))?;
    let _ = socket.close(None).await;
    Ok((acked, secs))
}

/// 150 clients join one large document at once.
pub(crate) async fn join_storm(
    target: &Target,
    mb: usize,
    joiners: usize,
) -> anyhow::Result<Outcome> {
    let mut out = outcome(target, "join-storm");
    let room = room_name("storm", 0);
    target.prepare_room(&room).await?;
    let url = target.room_url(&room);
    populate(&url, mb, 64 * 1024).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = target.pid.and_then(proc::rss_bytes).unwrap_or(0);
    let rss = proc::RssSampler::start(target.pid);
    let cpu_before = target.cpu_seconds();
    let started = Instant::now();
    let tasks: Vec<_> = (0..joiners)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                connect_synced(&url).await.map(|(s, size)| (s, size, t.elapsed()))
            })
        })
        .collect();
    let mut times = Vec::new();
    let mut sizes = Vec::new();
    let mut sockets = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok((s, size, t))) => {
                sockets.push(s);
                sizes.push(size);
                times.push(t.as_secs_f64() * 1000.0);
            }
            _ => out.errors += 1,
        }
    }
    let all_synced = started.elapsed().as_secs_f64();
    out.cpu_secs = target.cpu_seconds() - cpu_before;
    out.peak_rss_mb = rss.finish().await as f64 / 1_048_576.0;
    times.sort_by(f64::total_cmp);
    out.clients = joiners;
    out.p50_ms = times.get(times.len() / 2).copied().unwrap_or(0.0);
    out.p99_ms = times.get(times.len() * 99 / 100).copied().unwrap_or(0.0);
    out.max_ms = times.last().copied().unwrap_or(0.0);
    let full = sizes.iter().max().copied().unwrap_or(0);
    out.note = format!(
        "{mb} MiB of history; all {} synced in {all_synced:.2} s; full state {:.1} MiB; RSS {:.0} MiB before the storm",
        sockets.len(),
        full as f64 / 1_048_576.0,
        before as f64 / 1_048_576.0
    );
    Ok(out)
}

/// The most durable (echoed) updates per second one room sustains.
pub(crate) async fn durable(target: &Target, secs: f64) -> anyhow::Result<Outcome> {
    let mut out = outcome(target, "durable-throughput");
    let room = room_name("durable", 0);
    target.prepare_room(&room).await?;
    // More than any server here can take in `secs`; sending stops at the deadline.
    let frames = encode_frames(Kind::Doc, 0, (secs * 100_000.0) as usize, 32);
    let cpu_before = target.cpu_seconds();
    let rss = proc::RssSampler::start(target.pid);
    let url = target.room_url(&room);
    let (n, took) =
        write_pipelined(&url, &frames, 256, Some(Duration::from_secs_f64(secs))).await?;
    out.cpu_secs = target.cpu_seconds() - cpu_before;
    out.peak_rss_mb = rss.finish().await as f64 / 1_048_576.0;
    out.sent = n as u64;
    out.delivered = n as u64;
    out.deliveries_per_sec = n as f64 / took;
    out.cpu_ms_per_1k = out.cpu_secs * 1000.0 / (n as f64 / 1000.0);
    out.note = format!("{n} updates acknowledged (echoed) in {took:.2} s, 256 in flight");
    Ok(out)
}

/// Writes `n` small updates into a document (for the cold-load measurement).
pub(crate) async fn populate_log(target: &Target, n: usize) -> anyhow::Result<Outcome> {
    let mut out = outcome(target, "populate");
    let room = room_name("cold", 0);
    target.prepare_room(&room).await?;
    let frames = encode_frames(Kind::Doc, 0, n, 24);
    let (_, took) = write_pipelined(&target.room_url(&room), &frames, 256, None).await?;
    out.sent = n as u64;
    out.note = format!("{n} updates written in {took:.2} s");
    Ok(out)
}

/// Time from connect to the first SyncStep2 for the populated document.
pub(crate) async fn cold_load(target: &Target, label: &str) -> anyhow::Result<Outcome> {
    let mut out = outcome(target, label);
    let started = Instant::now();
    let (_socket, size) = connect_synced(&target.room_url(&room_name("cold", 0))).await?;
    out.max_ms = started.elapsed().as_secs_f64() * 1000.0;
    out.p50_ms = out.max_ms;
    out.peak_rss_mb = target.pid.and_then(proc::rss_bytes).unwrap_or(0) as f64 / 1_048_576.0;
    out.note = format!("first sync {:.0} ms, state {:.1} KiB", out.max_ms, size as f64 / 1024.0);
    Ok(out)
}

/// Raw SQLite insert ceiling on this machine with Tandem's settings (WAL, synchronous=FULL):
/// one row per transaction, and 256 rows per transaction.
pub(crate) async fn sqlite_ceiling(
    dir: &std::path::Path,
    secs: f64,
) -> anyhow::Result<Vec<Outcome>> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    use sqlx::{ConnectOptions, Connection};
    std::fs::create_dir_all(dir)?;
    let path = dir.join("ceiling.db");
    let _ = std::fs::remove_file(&path);
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .connect()
        .await?;
    sqlx::query("create table updates (doc text not null, seq integer not null, data blob not null, primary key (doc, seq)) without rowid")
        .execute(&mut conn)
        .await?;
    let row = vec![7u8; 40];
    let mut results = Vec::new();
    let mut seq = 0i64;
    for per_txn in [1usize, 256] {
        let started = Instant::now();
        let mut rows = 0u64;
        while started.elapsed().as_secs_f64() < secs {
            let mut tx = conn.begin().await?;
            for _ in 0..per_txn {
                seq += 1;
                sqlx::query("insert into updates (doc, seq, data) values ('d', ?, ?)")
                    .bind(seq)
                    .bind(&row)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            rows += per_txn as u64;
        }
        let rate = rows as f64 / started.elapsed().as_secs_f64();
        results.push(Outcome {
            workload: "7b. durable throughput: one room, one writer, 256 in flight".into(),
            server: format!("sqlite ceiling, {per_txn} row(s)/txn"),
            sent: rows,
            delivered: rows,
            deliveries_per_sec: rate,
            note: format!("raw sqlx inserts, WAL, synchronous=FULL, {per_txn} per commit"),
            ..Default::default()
        });
    }
    Ok(results)
}

/// Does listing starve room loads? Writes `n` documents over the REST API, then times cold
/// room loads (connect to a document not in memory → first SyncStep2) alone, and again
/// while 50 clients list documents in a loop. Tandem only (it speaks Tandem's REST API).
pub(crate) async fn list_vs_load(target: &Target, n: usize) -> anyhow::Result<Outcome> {
    let mut out = outcome(target, "list");
    let base = target
        .room_url("")
        .replace("ws://", "http://")
        .split("/ws/")
        .next()
        .unwrap_or_default()
        .to_string();
    let update = {
        use yrs::{Text, Transact};
        let doc = yrs::Doc::new();
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.push(&mut txn, "a listed document");
        txn.encode_update_v1()
    };
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(64));
    let update = Arc::new(update);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (gate, update, base) = (gate.clone(), update.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            let url = format!("{base}/api/docs/list-{i:06}/update");
            let headers = [("Content-Type", "application/octet-stream")];
            crate::http::request(&url, "POST", "HTTP/1.1", &headers, &update)
                .await
                .map(|r| r.status)
        }));
    }
    let mut failed = 0u64;
    for task in tasks {
        if !matches!(task.await, Ok(Ok(200))) {
            failed += 1;
        }
    }
    let populate_secs = started.elapsed().as_secs_f64();
    // Let the rooms the writes loaded unload (the server runs with a short grace).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut next_doc = n / 2;
    let mut loads = |count: usize| {
        let docs: Vec<String> = (0..count)
            .map(|_| {
                next_doc = (next_doc + 7919) % n;
                target.room_url(&format!("list-{next_doc:06}"))
            })
            .collect();
        async move {
            let mut ms = Vec::new();
            for url in docs {
                let t = Instant::now();
                if connect_synced(&url).await.is_ok() {
                    ms.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
            ms
        }
    };
    let quiet = loads(40).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut listers = Vec::new();
    for _ in 0..50 {
        let (stop, base) = (stop.clone(), base.clone());
        listers.push(tokio::spawn(async move {
            let mut ms = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                match crate::http::request(
                    &format!("{base}/api/docs?limit=1000"),
                    "GET",
                    "HTTP/1.1",
                    &[],
                    b"",
                )
                .await
                {
                    Ok(r) if r.status == 200 => ms.push(t.elapsed().as_secs_f64() * 1000.0),
                    _ => {}
                }
            }
            ms
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = loads(40).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut list_ms = Vec::new();
    for lister in listers {
        list_ms.extend(lister.await.unwrap_or_default());
    }
    let p = |v: &[f64], q: f64| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
    };
    out.sent = n as u64;
    out.errors = failed;
    out.p50_ms = p(&busy, 0.5);
    out.p99_ms = p(&busy, 0.99);
    out.max_ms = p(&busy, 1.0);
    out.note = format!(
        "{n} documents written in {populate_secs:.1} s; cold room load alone p50 {:.1} ms p99 {:.1} ms; \
         with 50 clients listing (limit=1000): p50 {:.1} ms p99 {:.1} ms; list calls p50 {:.1} ms p99 {:.1} ms ({} calls)",
        p(&quiet, 0.5),
        p(&quiet, 0.99),
        out.p50_ms,
        out.p99_ms,
        p(&list_ms, 0.5),
        p(&list_ms, 0.99),
        list_ms.len()
    );
    Ok(out)
}

/// Issue #8, defect 1: ten 2-client rooms typing (10 updates/s per client) beside one
/// document grown to `mb` MiB that a client keeps appending to (every 5 ms); the same rooms
/// alone first, in the same run. Other rooms' latency must not depend on any document's size
/// (start the server with a small `--compact-bytes` so the large one gets compacted early).
pub(crate) async fn big_document(
    target: &Target,
    mb: usize,
    rooms: crate::load::Spec,
) -> anyhow::Result<Outcome> {
    let alone = crate::load::run(
        target,
        &crate::load::Spec { name: "bigdoc-alone".into(), ..rooms.clone() },
    )
    .await?;
    let big = target.room_url(&room_name("bigdoc-big", 0));
    let grow_started = Instant::now();
    populate(&big, mb, 1024 * 1024).await?;
    let grew = grow_started.elapsed().as_secs_f64();
    // Let the first compactions of the large document finish before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (socket, _) = connect_synced(&big).await?;
    let (mut sink, mut stream) = socket.split();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appends = encode_frames(Kind::Doc, 1, 100_000, 16);
    let appender = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sent = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < appends.len() {
                if sink.send(Message::Binary(appends[sent].clone())).await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    };
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let mut beside = crate::load::run(target, &rooms).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let appended = appender.await.unwrap_or(0);
    reader.abort();
    beside.note = format!(
        "the same rooms alone: p50 {:.2} ms, p99 {:.2} ms; beside a {mb} MiB document (grown in {grew:.1} s) receiving {appended} appends: p50 {:.2} ms, p99 {:.2} ms ({:.2}x the p99 alone)",
        alone.p50_ms,
        alone.p99_ms,
        beside.p50_ms,
        beside.p99_ms,
        beside.p99_ms / alone.p99_ms.max(0.001)
    );
    Ok(beside)
}
