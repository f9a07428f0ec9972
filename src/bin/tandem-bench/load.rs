//! The load engine: many cheap y-websocket clients, pre-encoded updates, latency measured
//! from send to receipt at every other client in the room.
//!
//! A client costs a socket and a few buffers: no `Doc`. Writers' updates are encoded before
//! the clock starts, each from a small `Doc` holding only that writer's own text (so every
//! update is a valid Yjs update for any server), and each carries a marker `~W<writer>.S<seq>~`
//! in its text, which observers find in the raw frame without decoding it. Any server that
//! relays the update's content (as is or re-encoded) keeps the marker intact.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{Barrier, Mutex, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::{ClientID, Doc, Text, Transact};

use crate::proc;

/// What to run against.
#[derive(Clone)]
pub(crate) struct Target {
    pub label: String,
    /// WebSocket URL with `{room}` where the document name goes; one per node of a cluster
    /// (the clients of every room are spread over them in turn).
    pub urls: Vec<String>,
    /// y-sweet needs each document created over HTTP first: `http://host:port`.
    pub ysweet: Option<String>,
    /// The (first) server process, for RSS.
    pub pid: Option<u32>,
    /// Every server process (all nodes of a cluster), for CPU time.
    pub pids: Vec<u32>,
}

impl Target {
    /// The room on the first node.
    pub(crate) fn room_url(&self, room: &str) -> String {
        self.room_url_on(room, 0)
    }

    /// The room on node `i` (modulo the number of nodes).
    pub(crate) fn room_url_on(&self, room: &str, i: usize) -> String {
        let url = &self.urls[i % self.urls.len().max(1)];
        url.replace("{room}", room)
    }

    pub(crate) fn nodes(&self) -> usize {
        self.urls.len().max(1)
    }

    /// CPU seconds of every server process.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        self.pids.iter().filter_map(|p| proc::cpu_seconds(*p)).sum()
    }

    pub(crate) async fn prepare_room(&self, room: &str) -> anyhow::Result<()> {
        if let Some(base) = &self.ysweet {
            let body = format!(r#"{{"docId":"{room}"}}"#);
            crate::http_post(&format!("{base}/doc/new"), &body).await?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Doc,
    Awareness,
}

#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub name: String,
    pub rooms: usize,
    pub clients_per_room: usize,
    pub writers_per_room: usize,
    /// Updates per second per writer.
    pub rate: f64,
    pub duration: Duration,
    pub kind: Kind,
    /// Approximate update payload size (text inserted per update).
    pub update_bytes: usize,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct Outcome {
    pub workload: String,
    pub server: String,
    pub clients: usize,
    pub connect_secs: f64,
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub errors: u64,
    pub deliveries_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub cpu_secs: f64,
    pub cpu_ms_per_1k: f64,
    pub peak_rss_mb: f64,
    /// Free-form extra figures (memory per connection, sync times, ...).
    pub note: String,
    /// Nodes the clients were spread over (1 for a single server).
    #[serde(default)]
    pub nodes: usize,
    /// Latency of deliveries to clients on another node than the writer's.
    #[serde(default)]
    pub cross_p50_ms: f64,
    #[serde(default)]
    pub cross_p99_ms: f64,
}

struct Shared {
    start: Instant,
    /// Send time (ns since start, +1 so 0 means "not sent") per writer and seq.
    sent_at: Vec<Vec<AtomicU64>>,
    delivered: AtomicU64,
    errors: AtomicU64,
    latencies: Mutex<Vec<u32>>,
    /// The same for deliveries that crossed from one node to another.
    cross: Mutex<Vec<u32>>,
    /// Which node each writer's client is on.
    writer_node: Vec<usize>,
}

const MARK: &[u8] = b"~W";

/// Finds every `~W<w>.S<s>~` marker in a frame.
fn markers(frame: &[u8], mut each: impl FnMut(usize, usize)) {
    let mut i = 0;
    while i + 2 < frame.len() {
        if &frame[i..i + 2] != MARK {
            i += 1;
            continue;
        }
        let mut j = i + 2;
        let mut w = 0usize;
        while j < frame.len() && frame[j].is_ascii_digit() {
            w = w * 10 + (frame[j] - b'0') as usize;
            j += 1;
        }
        if frame.get(j) == Some(&b'.') && frame.get(j + 1) == Some(&b'S') {
            j += 2;
            let mut s = 0usize;
            while j < frame.len() && frame[j].is_ascii_digit() {
                s = s * 10 + (frame[j] - b'0') as usize;
                j += 1;
            }
            if frame.get(j) == Some(&b'~') {
                each(w, s);
            }
        }
        i = j.max(i + 1);
    }
}

/// Pre-encodes `n` frames for writer `w`.
pub(crate) fn encode_frames(kind: Kind, w: usize, n: usize, update_bytes: usize) -> Vec<Bytes> {
    match kind {
        Kind::Doc => {
            let doc = Doc::with_client_id(1_000_000 + w as u64);
            let text = doc.get_or_insert_text("t");
            (0..n)
                .map(|s| {
                    let mut chunk = format!("~W{w}.S{s}~");
                    while chunk.len() < update_bytes {
                        chunk.push('x');
                    }
                    let mut txn = doc.transact_mut();
                    let len = text.len(&txn);
                    text.insert(&mut txn, len, &chunk);
                    tandem::protocol::sync_update(&txn.encode_update_v1())
                })
                .collect()
        }
        Kind::Awareness => (0..n)
            .map(|s| {
                let mut update = AwarenessUpdate { clients: Default::default() };
                let json = format!(
                    r##"{{"user":{{"name":"bench {w}","color":"#2e86de"}},"cursor":"~W{w}.S{s}~"}}"##
                );
                let entry = AwarenessUpdateEntry { clock: s as u32 + 1, json: json.into() };
                update.clients.insert(ClientID::new(5_000_000 + w as u64), entry);
                tandem::protocol::awareness(&update)
            })
            .collect(),
    }
}

/// How messages travel: y-websocket's (one document per connection) or Hocuspocus's.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum Framing {
    Yws,
    Hocuspocus,
}

static FRAMING: OnceLock<Framing> = OnceLock::new();

pub(crate) fn set_framing(framing: Framing) {
    let _ = FRAMING.set(framing);
}

fn framing() -> Framing {
    FRAMING.get().copied().unwrap_or(Framing::Yws)
}

/// A y-websocket message as sent for `doc`: Hocuspocus puts the document's name (a lib0
/// varString) before every message.
pub(crate) fn wrap(doc: &str, message: &[u8]) -> Bytes {
    if framing() == Framing::Yws {
        return Bytes::copy_from_slice(message);
    }
    let mut out = Vec::with_capacity(doc.len() + message.len() + 5);
    let mut n = doc.len();
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(doc.as_bytes());
    out.extend_from_slice(message);
    out.into()
}

/// The y-websocket message inside a received frame.
pub(crate) fn unwrap(frame: &[u8]) -> &[u8] {
    if framing() == Framing::Yws {
        return frame;
    }
    let (mut len, mut shift, mut i) = (0usize, 0, 0);
    while let Some(b) = frame.get(i) {
        len |= ((b & 0x7f) as usize) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    frame.get(i + len..).unwrap_or(&[])
}

/// The document a URL names (its last path segment).
fn doc_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// Empty state vector SyncStep1: "send me everything".
pub(crate) const EMPTY_STEP1: [u8; 4] = [0, 0, 1, 0];

pub(crate) fn is_step2(frame: &[u8]) -> bool {
    frame.len() >= 2 && frame[0] == 0 && frame[1] == 1
}

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects and waits for the server's SyncStep2 answering our empty SyncStep1.
/// Returns the socket and the size of that SyncStep2.
pub(crate) async fn connect_synced(url: &str) -> anyhow::Result<(Socket, usize)> {
    // No size limits on what we receive: a join-storm SyncStep2 is tens of MiB.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
    let doc = doc_of(url);
    if framing() == Framing::Hocuspocus {
        // Auth (2), token (0), an empty token: Hocuspocus without an auth hook takes it.
        socket.send(Message::Binary(wrap(doc, &[2, 0, 0]))).await?;
    }
    socket.send(Message::Binary(wrap(doc, &EMPTY_STEP1))).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), socket.next()).await {
            Ok(Some(Ok(Message::Binary(frame)))) if is_step2(unwrap(&frame)) => {
                return Ok((socket, frame.len()));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => anyhow::bail!("closed before sync"),
            Err(_) => anyhow::bail!("no SyncStep2 within 60 s"),
        }
    }
}

pub(crate) async fn run(target: &Target, spec: &Spec) -> anyhow::Result<Outcome> {
    let n_writers = spec.rooms * spec.writers_per_room;
    let per_writer = (spec.rate * spec.duration.as_secs_f64()).round().max(1.0) as usize;
    let frames: Vec<Arc<Vec<Bytes>>> = (0..n_writers)
        .map(|w| {
            let room = room_name(&spec.name, w / spec.writers_per_room.max(1));
            let frames = encode_frames(spec.kind, w, per_writer, spec.update_bytes);
            Arc::new(frames.iter().map(|f| wrap(&room, f)).collect())
        })
        .collect();
    let shared = Arc::new(Shared {
        start: Instant::now(),
        sent_at: (0..n_writers)
            .map(|_| (0..per_writer).map(|_| AtomicU64::new(0)).collect())
            .collect(),
        delivered: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
        cross: Mutex::new(Vec::new()),
        writer_node: (0..n_writers)
            .map(|w| (w % spec.writers_per_room.max(1)) % target.nodes())
            .collect(),
    });
    for r in 0..spec.rooms {
        target.prepare_room(&room_name(&spec.name, r)).await?;
    }

    let n_clients = spec.rooms * spec.clients_per_room;
    let ready = Arc::new(Barrier::new(n_clients + 1));
    let go = Arc::new(Barrier::new(n_clients + 1));
    let connecting = Arc::new(Semaphore::new(256));
    let connect_started = Instant::now();
    let mut tasks = Vec::with_capacity(n_clients);
    for r in 0..spec.rooms {
        for c in 0..spec.clients_per_room {
            let writer = (c < spec.writers_per_room).then(|| r * spec.writers_per_room + c);
            // Client c of a room is on node c mod nodes: the writer (c = 0) on the first.
            let node = c % target.nodes();
            let url = target.room_url_on(&room_name(&spec.name, r), node);
            let frames = writer.map(|w| frames[w].clone());
            let (shared, ready, go, connecting) =
                (shared.clone(), ready.clone(), go.clone(), connecting.clone());
            let (rate, duration) = (spec.rate, spec.duration);
            tasks.push(tokio::spawn(async move {
                let socket = {
                    let _permit = connecting.acquire().await;
                    connect_synced(&url).await
                };
                ready.wait().await;
                let socket = match socket {
                    Ok((s, _)) => s,
                    Err(_) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        go.wait().await;
                        return;
                    }
                };
                go.wait().await;
                client(socket, writer, node, frames, rate, duration, shared).await;
            }));
        }
    }
    ready.wait().await;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let cpu_before = target.cpu_seconds();
    let node_cpu_before: Vec<f64> =
        target.pids.iter().map(|p| proc::cpu_seconds(*p).unwrap_or(0.0)).collect();
    let rss = proc::RssSampler::start(target.pid);
    let started = Instant::now();
    go.wait().await;
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = target.cpu_seconds() - cpu_before;
    let node_cpu: Vec<f64> = target
        .pids
        .iter()
        .zip(node_cpu_before)
        .map(|(p, before)| proc::cpu_seconds(*p).unwrap_or(0.0) - before)
        .collect();
    let peak_rss = rss.finish().await;
    let mut cross = std::mem::take(&mut *shared.cross.lock().await);
    cross.sort_unstable();

    let sent: u64 =
        shared.sent_at.iter().flatten().filter(|t| t.load(Ordering::Relaxed) > 0).count() as u64;
    let expected = sent * (spec.clients_per_room as u64 - 1);
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let mut latencies = std::mem::take(&mut *shared.latencies.lock().await);
    latencies.sort_unstable();
    let pct_of = |latencies: &[u32], p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i] as f64 / 1000.0
    };
    let pct = |p: f64| pct_of(&latencies, p);
    let note = if target.nodes() > 1 && delivered > 0 {
        let per_node: Vec<String> = node_cpu
            .iter()
            .map(|c| format!("{:.1}", c * 1000.0 / (delivered as f64 / 1000.0)))
            .collect();
        format!(
            "{} nodes; CPU ms per 1k deliveries on each node: {}; {} of {delivered} deliveries crossed nodes",
            target.nodes(),
            per_node.join(", "),
            cross.len()
        )
    } else {
        String::new()
    };
    // Throughput over the sending window (drain time excluded, so slow servers are not
    // flattered by a long tail and fast ones not penalised by the fixed drain wait).
    let window = spec.duration.as_secs_f64().max(0.001).min(elapsed);
    Ok(Outcome {
        workload: spec.name.clone(),
        server: target.label.clone(),
        clients: n_clients,
        connect_secs,
        sent,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        errors: shared.errors.load(Ordering::Relaxed),
        deliveries_per_sec: delivered as f64 / window,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: latencies.last().map_or(0.0, |&l| l as f64 / 1000.0),
        cpu_secs: cpu,
        cpu_ms_per_1k: if delivered > 0 { cpu * 1000.0 / (delivered as f64 / 1000.0) } else { 0.0 },
        peak_rss_mb: peak_rss as f64 / 1_048_576.0,
        note,
        nodes: target.nodes(),
        cross_p50_ms: pct_of(&cross, 0.5),
        cross_p99_ms: pct_of(&cross, 0.99),
    })
}

pub(crate) fn room_name(workload: &str, r: usize) -> String {
    format!("bench-{workload}-{r}")
}

/// One client: writes its frames at `rate` (if a writer) while reading everything, then
/// keeps reading until the room has gone quiet.
#[allow(clippy::too_many_arguments)]
async fn client(
    socket: Socket,
    writer: Option<usize>,
    node: usize,
    frames: Option<Arc<Vec<Bytes>>>,
    rate: f64,
    duration: Duration,
    shared: Arc<Shared>,
) {
    let (mut sink, mut stream) = socket.split();
    let shared_reader = shared.clone();
    let reader = tokio::spawn(async move {
        let mut local = Vec::new();
        let mut crossed = Vec::new();
        let mut delivered = 0u64;
        let quiet = Duration::from_secs(3);
        let hard_stop = Instant::now() + duration + Duration::from_secs(20);
        loop {
            // A server still trickling a backlog 20 s after the window has lost the rest.
            if Instant::now() > hard_stop {
                break;
            }
            let msg = match tokio::time::timeout(quiet, stream.next()).await {
                Ok(Some(Ok(msg))) => msg,
                Ok(Some(Err(_))) | Ok(None) => {
                    shared_reader.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                // Quiet for 3 s after the sending window: everything that will arrive has.
                Err(_) if shared_reader.start.elapsed() > duration => break,
                Err(_) => continue,
            };
            let Message::Binary(frame) = msg else { continue };
            let now = shared_reader.start.elapsed().as_nanos() as u64;
            markers(&frame, |w, s| {
                if Some(w) == writer {
                    return; // our own echo
                }
                let sent = shared_reader
                    .sent_at
                    .get(w)
                    .and_then(|v| v.get(s))
                    .map_or(0, |t| t.load(Ordering::Relaxed));
                if sent > 0 {
                    delivered += 1;
                    let micros =
                        ((now.saturating_sub(sent - 1)) / 1000).min(u32::MAX as u64) as u32;
                    local.push(micros);
                    if shared_reader.writer_node.get(w).is_some_and(|n| *n != node) {
                        crossed.push(micros);
                    }
                }
            });
        }
        shared_reader.delivered.fetch_add(delivered, Ordering::Relaxed);
        shared_reader.latencies.lock().await.extend(local);
        shared_reader.cross.lock().await.extend(crossed);
        stream
    });
    if let (Some(w), Some(frames)) = (writer, frames) {
        // Writers start at a random phase so a room's writers do not tick in lockstep.
        let period = Duration::from_secs_f64(1.0 / rate);
        tokio::time::sleep(period.mul_f64(fastrand_unit(w))).await;
        let deadline = Instant::now() + duration + Duration::from_secs(20);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for (s, frame) in frames.iter().enumerate() {
            tick.tick().await;
            shared.sent_at[w][s]
                .store(shared.start.elapsed().as_nanos() as u64 + 1, Ordering::Relaxed);
            // A server that stops reading must not stall the run past its time box.
            let sent =
                tokio::time::timeout_at(deadline.into(), sink.send(Message::Binary(frame.clone())))
                    .await;
            if !matches!(sent, Ok(Ok(()))) {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    } else {
        tokio::time::sleep(duration).await;
    }
    if let Ok(stream) = reader.await
        && let Ok(mut socket) = sink.reunite(stream)
    {
        let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
    }
}

/// A deterministic pseudo-random number in [0, 1) per writer.
fn fastrand_unit(w: usize) -> f64 {
    let x = (w as u64).wrapping_mul(0x9E3779B97F4A7C15) >> 11;
    x as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_markers() {
        let mut found = Vec::new();
        markers(b"xx~W12.S345~yy~W1.S2~~W9.S", |w, s| found.push((w, s)));
        assert_eq!(found, vec![(12, 345), (1, 2)]);
    }

    #[test]
    fn encoded_frames_carry_markers() {
        for kind in [Kind::Doc, Kind::Awareness] {
            let frames = encode_frames(kind, 7, 3, 40);
            let mut found = Vec::new();
            for f in &frames {
                markers(f, |w, s| found.push((w, s)));
            }
            assert_eq!(found, vec![(7, 0), (7, 1), (7, 2)], "{kind:?}");
        }
    }
}
