//! Hostile or broken input closes only the offending connection, with a fitting close code,
//! and leaves the document, the store and every other peer untouched.

mod common;

use bytes::Bytes;
use common::{TestServer, YClient};
use tandem::protocol;
use tokio_tungstenite::tungstenite::Message;

/// Sends `msg` from a fresh connection into a room where `witness` is editing, and checks
/// the close code, that the witness carries on, and that nothing was stored or relayed.
async fn rejected(msg: Message, expected_code: u16) -> String {
    let server = TestServer::start_with(|c| c.max_message_bytes = 64 * 1024).await;
    let mut witness = YClient::join(&server, "doc").await;
    witness.insert(0, "intact").await;
    witness.pump_until(|c| c.updates_received == 1).await;

    let mut attacker = YClient::join(&server, "doc").await;
    attacker.send_message(msg).await;
    let (code, reason) = attacker.expect_close().await;
    assert_eq!(code, expected_code, "reason: {reason}");

    // The witness still edits and gets its echo; it saw nothing from the attacker.
    witness.insert(6, "!").await;
    witness.pump_until(|c| c.updates_received == 2).await;
    assert_eq!(witness.text(), "intact!");
    let fresh = YClient::join(&server, "doc").await;
    assert_eq!(fresh.text(), "intact!");
    let tmp = server.stop().await;
    drop(tmp);
    reason
}

#[tokio::test]
async fn garbage_bytes() {
    rejected(Message::Binary(Bytes::from_static(&[0xff, 0xfe, 0x00, 0x13, 0x37])), 1002).await;
}

#[tokio::test]
async fn truncated_message() {
    // Sync/Update announcing 100 bytes but carrying 3.
    rejected(Message::Binary(Bytes::from_static(&[0, 2, 100, 1, 2, 3])), 1002).await;
}

#[tokio::test]
async fn unknown_message_type() {
    rejected(Message::Binary(Bytes::from_static(&[9, 1, 0])), 1002).await;
}

#[tokio::test]
async fn unknown_sync_step() {
    rejected(Message::Binary(Bytes::from_static(&[0, 7, 0])), 1002).await;
}

#[tokio::test]
async fn invalid_update_inside_valid_frame() {
    let reason =
        rejected(Message::Binary(protocol::sync_update(&[3, 200, 7, 7, 7, 7, 1, 2])), 1007).await;
    assert!(reason.contains("invalid yjs update"), "{reason}");
}

#[tokio::test]
async fn invalid_update_as_sync_step2() {
    rejected(Message::Binary(protocol::sync_step2(&[1, 1, 255, 255, 255, 255, 15, 9])), 1007).await;
}

#[tokio::test]
async fn awareness_that_is_not_json() {
    // One entry: client 5, clock 1, state "{oops".
    let frame = Bytes::from_static(&[1, 9, 1, 5, 1, 5, b'{', b'o', b'o', b'p', b's']);
    rejected(Message::Binary(frame), 1007).await;
}

#[tokio::test]
async fn text_frame() {
    rejected(Message::Text("hello".into()), 1003).await;
}

#[tokio::test]
async fn oversized_frame() {
    let huge = protocol::sync_update(&vec![0u8; 200 * 1024]);
    rejected(Message::Binary(huge), 1009).await;
}

#[tokio::test]
async fn bad_document_names_get_http_400() {
    let server = TestServer::start().await;
    for name in ["a%20b", "%C3%A4", "a..%2Fb", "...", "%2E%2E", &"x".repeat(201)] {
        let (status, body) = common::http_get(&server.http(&format!("/ws/{name}"))).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert!(body.contains("invalid document name"), "{body}");
        assert!(YClient::connect(&server.url(name)).await.is_err());
    }
}

#[tokio::test]
async fn nothing_of_a_rejected_update_is_stored() {
    let server = TestServer::start().await;
    let mut good = YClient::join(&server, "doc").await;
    good.insert(0, "ok").await;
    good.pump_until(|c| c.updates_received == 1).await;
    // A frame with a valid update followed by garbage: the whole frame is refused.
    let mut frame = protocol::sync_update(&good.update_on_copy("evil")).to_vec();
    frame.extend_from_slice(&[0xff, 0xff]);
    let mut bad = YClient::join(&server, "doc").await;
    bad.send(Bytes::from(frame)).await;
    assert_eq!(bad.expect_close().await.0, 1002);
    let data_dir = server.data_dir.clone();
    good.close().await;
    let tmp = server.stop().await;
    assert_eq!(common::reload_text(&data_dir, "doc").await, "ok");
    drop(tmp);
}

/// Upgrades that get the RFC 6455 handshake wrong are refused before anything opens.
#[tokio::test]
async fn broken_handshakes_get_http_400_with_a_reason() {
    let server = TestServer::start().await;
    let url = server.http("/ws/doc");
    let upgrade = |key: &'static str| {
        vec![
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", key),
        ]
    };
    for key in ["x", "not base64 at all!!", "dGhlIHNhbXBsZSBub25jZSEh"] {
        let response = common::http_raw(&url, "HTTP/1.1", &upgrade(key)).await;
        assert_eq!(response.status, 400, "key {key:?}");
        assert!(response.text().contains("Sec-WebSocket-Key"), "{}", response.text());
    }
    let mut no_key = upgrade("x");
    no_key.pop();
    assert_eq!(common::http_raw(&url, "HTTP/1.1", &no_key).await.status, 400);
    let http10 = common::http_raw(&url, "HTTP/1.0", &upgrade("dGhlIHNhbXBsZSBub25jZQ==")).await;
    assert_eq!(http10.status, 400, "{}", http10.headers);
    assert!(http10.text().contains("HTTP/1.1"), "{}", http10.text());
    // The valid key from RFC 6455 still upgrades.
    let ok = common::http_raw(&url, "HTTP/1.1", &upgrade("dGhlIHNhbXBsZSBub25jZQ==")).await;
    assert_eq!(ok.status, 101, "{}", ok.headers);
    assert!(
        ok.headers.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{}",
        ok.headers
    );
}

/// A stored row that does not decode is the store's fault, not a client's: 1011, and the
/// document is refused as a whole rather than served without it.
#[tokio::test]
async fn a_corrupt_stored_row_closes_with_1011_not_1007() {
    let server = TestServer::start().await;
    let mut a = YClient::join(&server, "doc").await;
    a.insert(0, "before").await;
    a.pump_until(|c| c.updates_received == 1).await;
    let data_dir = server.data_dir.clone();
    a.close().await;
    let tmp = server.stop().await;
    let mut conn = common::db_rw(&data_dir).await;
    sqlx::query("insert into updates (doc, seq, data) values ('doc', 2, x'ffffffff')")
        .execute(&mut conn)
        .await
        .expect("damage");
    sqlx::query("update heads set head = 2 where doc = 'doc'")
        .execute(&mut conn)
        .await
        .expect("damage");
    drop(conn);
    let server = TestServer::start_in(&data_dir, |_| {}).await;
    let mut client = YClient::connect(&server.url("doc")).await.expect("upgrade");
    let (code, reason) = client.expect_close().await;
    assert_eq!(code, 1011, "{reason}");
    assert!(reason.contains("inconsistent"), "{reason}");
    // Other documents are unaffected.
    let mut other = YClient::join(&server, "other").await;
    other.insert(0, "fine").await;
    other.pump_until(|c| c.updates_received == 1).await;
    server.stop().await;
    drop(tmp);
}

/// Metadata that does not match the rows (a snapshot seq past every row, a head at the end
/// of the seq space) is refused with 1011 instead of serving an empty or partial document.
#[tokio::test]
async fn inconsistent_metadata_is_refused_and_nothing_is_lost() {
    for tamper in [
        "insert into documents values ('doc', null, 999, 0, 0)",
        "insert into documents values ('doc', x'0000', 999, 0, 0)",
        "update heads set head = 9223372036854775807",
    ] {
        let server = TestServer::start().await;
        let mut a = YClient::join(&server, "doc").await;
        for i in 0..5 {
            a.insert(i, "x").await;
        }
        a.pump_until(|c| c.updates_received == 5).await;
        let data_dir = server.data_dir.clone();
        a.close().await;
        let tmp = server.stop().await;
        let mut conn = common::db_rw(&data_dir).await;
        sqlx::query(tamper).execute(&mut conn).await.expect("tamper");
        drop(conn);
        let server = TestServer::start_in(&data_dir, |_| {}).await;
        let mut client = YClient::connect(&server.url("doc")).await.expect("upgrade");
        match client.expect_close_or_text().await {
            // A NULL snapshot covers nothing: every row is served.
            Ok(text) => assert_eq!(text, "xxxxx", "{tamper}"),
            Err((code, reason)) => assert_eq!(code, 1011, "{tamper}: {reason}"),
        }
        server.stop().await;
        let rows = common::count_log_rows(&data_dir).await;
        assert_eq!(rows, 5, "{tamper}: no stored row was touched");
        drop(tmp);
    }
}

/// Found while fuzzing: yrs decodes nested values recursively, and one 200 KB update
/// nesting arrays 100,000 deep overflowed the stack, killing the whole process. It is now
/// refused like any invalid update, and the server carries on.
#[tokio::test]
async fn a_deeply_nested_update_is_refused_and_the_server_stays_up() {
    let server = TestServer::start().await;
    let mut other = YClient::join(&server, "elsewhere").await;
    let mut attacker = YClient::join(&server, "deep").await;
    let mut deep = vec![1, 1, 5, 0, 0x28, 1, 1, b'm', 1, b'k', 1];
    for _ in 0..100_000 {
        deep.extend_from_slice(&[117, 1]);
    }
    deep.extend_from_slice(&[126, 0]);
    attacker.send(tandem::protocol::sync_update(&deep)).await;
    let (code, reason) = attacker.expect_close().await;
    assert_eq!(code, 1007, "{reason}");
    assert!(reason.contains("nested"), "{reason}");
    other.insert(0, "still serving").await;
    other.pump_until(|c| c.updates_received == 1).await;
    server.stop().await;
}
