//! Abuse resistance over real sockets: each limit closes the offending connection with its
//! code (or refuses the request with its status), stores nothing of what it refused, and
//! leaves everyone else alone.

mod common;

use std::time::Duration;

use common::{TestServer, YClient, count_log_rows, http_bytes, http_get, http_raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

fn upgrade_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    headers.extend_from_slice(extra);
    headers
}

#[tokio::test]
async fn a_document_past_max_doc_bytes_refuses_the_update_and_stores_nothing() {
    let server = TestServer::start_with(|c| c.max_doc_bytes = 4000).await;
    let mut a = YClient::join(&server, "big").await;
    let mut b = YClient::join(&server, "big").await;
    a.insert(0, &"x".repeat(2000)).await;
    b.wait_text(&"x".repeat(2000)).await;
    let rows = count_log_rows(&server.data_dir).await;
    a.insert(0, &"y".repeat(3000)).await;
    assert_eq!(a.expect_close().await, (4413, "document too large".into()));
    // Over HTTP: 413, and nothing stored either.
    let update = b.update_on_copy(&"z".repeat(3000));
    let response = http_bytes(
        &server.http("/api/docs/big/update"),
        "POST",
        "application/octet-stream",
        &update,
    )
    .await;
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(count_log_rows(&server.data_dir).await, rows);
    b.pump_for(Duration::from_millis(100)).await;
    assert_eq!(b.text(), "x".repeat(2000), "the other peer saw none of it");
    assert!(b.closed.is_none());
    server.stop().await;
}

#[tokio::test]
async fn the_room_cap_refuses_new_documents_only() {
    let server = TestServer::start_with(|c| c.max_rooms = 2).await;
    let mut a = YClient::join(&server, "one").await;
    let _b = YClient::join(&server, "two").await;
    let mut third = YClient::connect(&server.url("three")).await.expect("upgrade");
    assert_eq!(third.expect_close().await.0, 1013);
    let response = http_bytes(
        &server.http("/api/docs/three/update"),
        "POST",
        "application/octet-stream",
        &a.update_on_copy("x"),
    )
    .await;
    assert_eq!(response.status, 503);
    a.insert(0, "loaded rooms still work").await;
    a.pump_until(|c| c.updates_received == 1).await;
    server.stop().await;
}

#[tokio::test]
async fn connection_caps_answer_503_before_the_upgrade() {
    let server = TestServer::start_with(|c| c.max_connections = 2).await;
    let _a = YClient::join(&server, "doc").await;
    let b = YClient::join(&server, "doc").await;
    let url = server.http("/ws/doc");
    let response = http_raw(&url, "HTTP/1.1", &upgrade_headers(&[])).await;
    assert_eq!(response.status, 503, "{}", response.text());
    // A slot is given back when its connection ends.
    b.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = http_raw(&url, "HTTP/1.1", &upgrade_headers(&[])).await;
        if response.status == 101 {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {}", response.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;

    let server = TestServer::start_with(|c| c.max_connections_per_ip = 1).await;
    let _a = YClient::join(&server, "doc").await;
    let response = http_raw(&server.http("/ws/doc"), "HTTP/1.1", &upgrade_headers(&[])).await;
    assert_eq!(response.status, 503);
    server.stop().await;
}

#[tokio::test]
async fn browser_upgrades_from_other_origins_get_403() {
    let server = TestServer::start_with(|c| {
        c.allowed_origins = vec!["https://good.example".into()];
    })
    .await;
    let url = server.http("/ws/doc");
    let host = server.addr.to_string();
    let same = format!("http://{host}");
    for (origin, status) in [
        (Some("https://evil.example"), 403),
        (Some("https://good.example"), 101),
        // Not even the server's own host unless listed: Host can be anything (DNS rebinding).
        (Some(same.as_str()), 403),
        (None, 101),
    ] {
        let extra: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
        let response = http_raw(&url, "HTTP/1.1", &upgrade_headers(&extra)).await;
        assert_eq!(response.status, status, "origin {origin:?}: {}", response.text());
    }
    server.stop().await;
}

#[tokio::test]
async fn awareness_limits_close_with_1008_and_1009() {
    let server = TestServer::start().await;
    let mut many = YClient::join(&server, "p").await;
    for id in 1..=9 {
        many.set_awareness(id, 1, "{}").await;
    }
    assert_eq!(many.expect_close().await.0, 1008, "nine client ids from one connection");

    let mut big = YClient::join(&server, "p").await;
    let state = format!("{{\"a\":\"{}\"}}", "x".repeat(70_000));
    big.set_awareness(1, 1, &state).await;
    assert_eq!(big.expect_close().await.0, 1009);
    server.stop().await;
}

#[tokio::test]
async fn nobody_can_overwrite_or_hide_another_clients_presence() {
    let server = TestServer::start().await;
    let mut victim = YClient::join(&server, "p").await;
    let mut attacker = YClient::join(&server, "p").await;
    let mut observer = YClient::join(&server, "p").await;
    victim.set_awareness(42, 1, r#"{"user":"victim"}"#).await;
    observer.pump_until(|c| c.awareness.contains_key(&42)).await;
    attacker.set_awareness(42, 1000, r#"{"user":"attacker"}"#).await;
    attacker.set_awareness(42, 1001, "null").await;
    attacker.set_awareness(43, 1, r#"{"user":"attacker"}"#).await;
    observer.pump_until(|c| c.awareness.contains_key(&43)).await;
    assert_eq!(observer.awareness[&42], (1, r#"{"user":"victim"}"#.to_string()));
    // A newcomer sees the victim's state, not the attacker's version.
    let late = YClient::join(&server, "p").await;
    let mut late = late;
    late.pump_until(|c| c.awareness.contains_key(&42)).await;
    assert_eq!(late.awareness[&42].1, r#"{"user":"victim"}"#);
    assert!(attacker.closed.is_none() && victim.closed.is_none());
    server.stop().await;
}

#[tokio::test]
async fn an_update_flood_is_closed_with_1008_and_others_carry_on() {
    let server = TestServer::start_with(|c| {
        c.max_updates_per_sec = 50.0;
        c.max_updates_burst = 100.0;
    })
    .await;
    let mut flood = YClient::join(&server, "f").await;
    let mut calm = YClient::join(&server, "f").await;
    for i in 0..150 {
        flood.try_push(&format!("{i},")).await;
    }
    let (code, reason) = flood.expect_close().await;
    assert_eq!(code, 1008, "{reason}");
    calm.insert(0, "still fine").await;
    calm.pump_until(|c| c.text().contains("still fine")).await;
    server.stop().await;
}

#[tokio::test]
async fn state_requests_are_budgeted() {
    let server = TestServer::start_with(|c| c.max_state_bytes_per_min = 20_000).await;
    let mut writer = YClient::join(&server, "s").await;
    writer.insert(0, &"x".repeat(5000)).await;
    writer.pump_until(|c| c.updates_received == 1).await;
    let mut greedy = YClient::join(&server, "s").await; // the first full state is free
    let empty = tandem::protocol::sync_step1(&yrs::StateVector::default());
    for _ in 0..8 {
        greedy.send_message(tokio_tungstenite::tungstenite::Message::Binary(empty.clone())).await;
    }
    let (code, reason) = greedy.expect_close().await;
    assert_eq!(code, 1008, "{reason}");
    assert!(greedy.step2_sizes.len() <= 6, "served {} full states", greedy.step2_sizes.len());
    server.stop().await;
}

#[tokio::test]
async fn rooms_nobody_wrote_unload_at_once_and_identity_spawns_none() {
    let server = TestServer::start().await;
    for i in 0..50 {
        let client = YClient::join(&server, &format!("probe-{i}")).await;
        client.close().await;
    }
    for i in 0..50 {
        let body = r#"{"browser":"b1"}"#;
        let r =
            common::http(&server.http(&format!("/api/docs/id-{i}/identity")), "POST", Some(body))
                .await;
        assert_eq!(r.status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = http_get(&server.http("/api/docs")).await;
        let list: serde_json::Value = serde_json::from_str(&body).expect("json");
        if list["rooms_loaded"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "rooms still loaded: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn silent_and_idle_http_connections_are_closed() {
    let server = TestServer::start_with(|c| c.header_timeout_secs = 0.5).await;
    // Sends nothing at all.
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    // Sends half a header.
    let mut half = TcpStream::connect(server.addr).await.expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    // Keep-alive after one request.
    let mut idle = TcpStream::connect(server.addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    for (name, socket) in [("silent", &mut silent), ("half", &mut half), ("idle", &mut idle)] {
        let started = Instant::now();
        let mut buf = vec![0u8; 4096];
        let closed = timeout(Duration::from_secs(5), async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{name} connection still open after 5 s");
        assert!(started.elapsed() < Duration::from_secs(3), "{name}: {:?}", started.elapsed());
    }
    server.stop().await;
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408() {
    let server = TestServer::start_with(|c| c.request_timeout_secs = 0.5).await;
    let mut socket = TcpStream::connect(server.addr).await.expect("connect");
    let head = "POST /api/docs/slow/update HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\nabc";
    socket.write_all(head.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let started = Instant::now();
    let _ = timeout(Duration::from_secs(5), socket.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    server.stop().await;
}
