//! Webhooks against a real local HTTP receiver: signatures verify, `document.updated` is
//! debounced, a receiver that was down gets every event afterwards in per-document order,
//! and events pending when the server is SIGKILLed are delivered after the restart.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{TestServer, YClient, http, http_bytes, http_get};
use hmac::{KeyInit, Mac};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};

const SECRET: &str = "whsec-test";

#[derive(Debug, Clone)]
struct Received {
    body: Value,
    raw: String,
    timestamp: String,
    signature: String,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    failing: Arc<AtomicBool>,
}

impl Receiver {
    fn events(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// (event, document, seq) of everything received so far.
    fn summary(&self) -> Vec<(String, String, i64)> {
        self.events()
            .iter()
            .map(|r| {
                (
                    r.body["event"].as_str().unwrap_or("").to_string(),
                    r.body["document"].as_str().unwrap_or("").to_string(),
                    r.body["seq"].as_i64().unwrap_or(-1),
                )
            })
            .collect()
    }

    async fn wait_for(&self, what: &str, mut done: impl FnMut(&[(String, String, i64)]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(&self.summary()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.summary()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn hook(State(receiver): State<Receiver>, headers: HeaderMap, raw: String) -> StatusCode {
    if receiver.failing.load(Ordering::Relaxed) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let header = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    };
    let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
    receiver.got.lock().expect("lock").push(Received {
        body,
        timestamp: header("x-tandem-timestamp"),
        signature: header("x-tandem-signature-256"),
        raw,
    });
    StatusCode::OK
}

/// Serves the receiver on `listener` until the test ends.
fn serve(listener: TcpListener, receiver: Receiver) {
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(receiver);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
}

async fn receiver() -> (Receiver, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let receiver = Receiver::default();
    serve(listener, receiver.clone());
    (receiver, url)
}

/// What a receiver does to check a delivery (README: Webhooks).
fn verify(received: &Received) -> bool {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(format!("{}.{}", received.timestamp, received.raw).as_bytes());
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    received.signature == format!("sha256={expected}")
}

async fn start(url: &str, debounce_ms: u64, max_wait_ms: u64) -> TestServer {
    let url = url.to_string();
    TestServer::start_with(move |c| {
        c.webhook_url = vec![url];
        c.webhook_secret = Some(SECRET.into());
        c.webhook_debounce_ms = debounce_ms;
        c.webhook_max_wait_ms = max_wait_ms;
        c.webhook_retry_max_secs = 0.5;
        c.max_updates_per_sec = 0.0;
    })
    .await
}

fn count(events: &[(String, String, i64)], event: &str, doc: &str) -> usize {
    events.iter().filter(|(e, d, _)| e == event && d == doc).count()
}

#[tokio::test]
async fn events_are_signed_debounced_and_in_order() {
    let (receiver, url) = receiver().await;
    let server = start(&url, 400, 1500).await;
    let mut peer = YClient::join(&server, "hooked").await;
    for i in 0..5 {
        peer.insert(0, &i.to_string()).await;
        sleep(Duration::from_millis(40)).await;
    }
    peer.pump_until(|c| c.updates_received == 5).await;
    receiver.wait_for("created and updated", |e| count(e, "document.updated", "hooked") == 1).await;
    // Nothing more comes for writes already reported.
    sleep(Duration::from_millis(800)).await;
    let events = receiver.summary();
    assert_eq!(
        events,
        vec![
            ("document.created".into(), "hooked".into(), 1),
            ("document.updated".into(), "hooked".into(), 5),
        ],
        "one created, one debounced updated carrying the last seq"
    );
    for received in receiver.events() {
        assert!(verify(&received), "signature must verify: {received:?}");
        let body = &received.body;
        assert!(body["updated_at"].as_i64().is_some_and(|t| t > 1_700_000_000_000), "{body}");
        assert!(body["node"].as_str().is_some_and(|n| !n.is_empty()), "{body}");
        assert!(body["delivery_id"].as_str().is_some_and(|n| !n.is_empty()), "{body}");
        let age = common::now_secs() as i64 - received.timestamp.parse::<i64>().expect("ts");
        assert!((0..30).contains(&age), "timestamp is now: {}", received.timestamp);
    }
    // Continuous typing for 3.2 s: updates keep coming at most every max-wait (1.5 s), not
    // only after the typing stops.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3200) {
        peer.insert(0, "x").await;
        peer.pump_for(Duration::from_millis(100)).await;
    }
    let during = count(&receiver.summary(), "document.updated", "hooked") - 1;
    assert!(
        (1..=3).contains(&during),
        "{during} updated events while typing: {:?}",
        receiver.summary()
    );
    // Deleting: `document.deleted` comes after every event before it.
    assert_eq!(http(&server.http("/api/docs/hooked"), "DELETE", None).await.status, 204);
    receiver.wait_for("deleted", |e| count(e, "document.deleted", "hooked") == 1).await;
    let events = receiver.summary();
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("document.deleted"), "{events:?}");
    let seqs: Vec<i64> = events.iter().filter(|e| e.0 == "document.updated").map(|e| e.2).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "updated seqs increase: {seqs:?}");
}

#[tokio::test]
async fn a_receiver_that_was_down_gets_every_event_afterwards_in_order() {
    // A port with nobody listening yet.
    let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = probe.local_addr().expect("addr");
    drop(probe);
    let url = format!("http://{addr}/hook");
    let server = start(&url, 100, 1000).await;
    let writer = YClient::join(&server, "scratch").await;
    let update = writer.insert_offline(0, "x");
    let docs = ["d1", "d2", "d3"];
    for doc in docs {
        let url = server.http(&format!("/api/docs/{doc}/update"));
        assert_eq!(http_bytes(&url, "POST", "application/octet-stream", &update).await.status, 200);
    }
    // Delivery fails meanwhile; the admin endpoint says so.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let (code, body) = http_get(&server.http("/api/admin/webhooks")).await;
        assert_eq!(code, 200, "{body}");
        let status: Value = serde_json::from_str(&body).expect("json");
        if status["receivers"][0]["failing"].as_i64().unwrap_or(0) >= 3 {
            break status;
        }
        assert!(Instant::now() < deadline, "never failing: {status}");
        sleep(Duration::from_millis(50)).await;
    };
    let receiver0 = &status["receivers"][0];
    assert_eq!(receiver0["url"], url.as_str());
    assert_eq!(receiver0["pending"], 6, "created + updated for three documents: {status}");
    assert!(receiver0["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{status}");
    // The receiver comes up; everything arrives, per document in order.
    let receiver = Receiver::default();
    serve(TcpListener::bind(addr).await.expect("rebind"), receiver.clone());
    receiver.wait_for("six events", |e| e.len() >= 6).await;
    let events = receiver.summary();
    for doc in docs {
        let of_doc: Vec<&str> =
            events.iter().filter(|e| e.1 == doc).map(|e| e.0.as_str()).collect();
        assert_eq!(of_doc, ["document.created", "document.updated"], "{doc}: {events:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(&server.http("/api/admin/webhooks")).await;
        let status: Value = serde_json::from_str(&body).expect("json");
        if status["receivers"][0]["pending"] == 0 {
            assert!(status["delivered"].as_u64().is_some_and(|d| d >= 6), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "still pending: {status}");
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn events_pending_at_a_sigkill_are_delivered_after_the_restart() {
    let (receiver, url) = receiver().await;
    let dir = tempfile::tempdir().expect("tmp");
    let args = ["--webhook-url", &url, "--webhook-secret", SECRET, "--webhook-debounce-ms", "1500"];
    let (mut child, addr) = common::spawn_binary(dir.path(), &args).await.expect("start");
    let author = yrs::Doc::new();
    let update = {
        use yrs::{Text, Transact};
        let text = author.get_or_insert_text("t");
        let mut txn = author.transact_mut();
        text.push(&mut txn, "before the crash");
        txn.encode_update_v1()
    };
    let post = http_bytes(
        &format!("http://{addr}/api/docs/crashy/update"),
        "POST",
        "application/octet-stream",
        &update,
    )
    .await;
    assert_eq!(post.status, 200);
    // Killed inside the debounce window of `document.updated`.
    child.start_kill().expect("kill");
    let _ = child.wait().await;
    let before = receiver.summary();
    assert!(count(&before, "document.updated", "crashy") == 0, "{before:?}");
    let (_child, _addr) = common::spawn_binary(dir.path(), &args).await.expect("restart");
    receiver
        .wait_for("updated after restart", |e| count(e, "document.updated", "crashy") == 1)
        .await;
    let events = receiver.summary();
    // At least once: `created` may have been delivered just before the kill, before its
    // row was deleted; then it comes again with the same delivery id, for receivers to
    // drop.
    assert!(count(&events, "document.created", "crashy") >= 1, "{events:?}");
    let ids: std::collections::HashSet<String> = receiver
        .events()
        .iter()
        .filter(|r| r.body["event"] == "document.created")
        .map(|r| r.body["delivery_id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(ids.len(), 1, "a repeated delivery keeps its id: {ids:?}");
    assert!(receiver.events().iter().all(verify));
}

#[tokio::test]
async fn a_receiver_that_never_answers_holds_up_no_editing() {
    // Accepts connections and never answers: every delivery waits out its timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let server = TestServer::start_with(move |c| {
        c.webhook_url = vec![url];
        c.webhook_debounce_ms = 0;
        c.webhook_timeout_secs = 30.0;
        c.max_updates_per_sec = 0.0;
    })
    .await;
    let mut peers = Vec::new();
    for i in 0..20 {
        peers.push(YClient::join(&server, &format!("busy-{i}")).await);
    }
    // Every document owes events that hang; editing in all of them goes on.
    for round in 1..=10 {
        for peer in &mut peers {
            peer.insert(0, "k").await;
        }
        for peer in &mut peers {
            peer.pump_until(|c| c.updates_received == round).await;
        }
    }
    let (status, body) = http_get(&server.http("/api/admin/webhooks")).await;
    assert_eq!(status, 200);
    let report: Value = serde_json::from_str(&body).expect("json");
    assert!(report["receivers"][0]["pending"].as_i64().is_some_and(|p| p >= 20), "{report}");
    assert_eq!(http_get(&server.http("/healthz")).await.0, 200);
}

#[tokio::test]
async fn events_owed_to_a_removed_receiver_are_kept_not_sent_until_dropped() {
    let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let old_url = format!("http://{}/hook", probe.local_addr().expect("addr"));
    drop(probe); // the old receiver is down
    let server = start(&old_url, 0, 1000).await;
    let writer = YClient::join(&server, "scratch").await;
    let update = writer.insert_offline(0, "x");
    let url = server.http("/api/docs/kept/update");
    assert_eq!(http_bytes(&url, "POST", "application/octet-stream", &update).await.status, 200);
    writer.close().await;
    let dir = server.stop().await.expect("temp dir");
    // Restarted with another receiver only: the old events stay, and are not sent to it.
    let (receiver, new_url) = receiver().await;
    let server = TestServer::start_in(dir.path(), move |c| {
        c.webhook_url = vec![new_url];
        c.webhook_debounce_ms = 0;
    })
    .await;
    sleep(Duration::from_millis(500)).await;
    assert!(receiver.summary().is_empty(), "{:?}", receiver.summary());
    let (_, body) = http_get(&server.http("/api/admin/webhooks")).await;
    let report: Value = serde_json::from_str(&body).expect("json");
    let old = report["receivers"]
        .as_array()
        .and_then(|r| r.iter().find(|s| s["url"] == old_url.as_str()))
        .unwrap_or_else(|| panic!("old receiver listed: {report}"))
        .clone();
    assert_eq!((old["configured"].clone(), old["pending"].clone()), (Value::Bool(false), 2.into()));
    // An empty URL names no receiver: refused, nothing dropped.
    let empty = http(&server.http("/api/admin/webhooks?url="), "DELETE", None).await;
    assert_eq!(empty.status, 400, "{}", empty.text());
    // An admin drops them.
    let encoded: String = old_url.bytes().map(|b| format!("%{b:02X}")).collect();
    let dropped =
        http(&server.http(&format!("/api/admin/webhooks?url={encoded}")), "DELETE", None).await;
    assert_eq!(dropped.status, 200, "{}", dropped.text());
    assert_eq!(serde_json::from_str::<Value>(&dropped.text()).expect("json")["dropped"], 2);
    let (_, body) = http_get(&server.http("/api/admin/webhooks")).await;
    assert!(!body.contains(&old_url), "{body}");
    drop(dir);
}
