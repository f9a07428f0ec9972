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
    for name in ["a%20b", "%C3%A4", "a..%2Fb", &"x".repeat(201)] {
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
    let mut frame = protocol::sync_update(&good.doc.transact_mut_update("evil")).to_vec();
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

trait EvilUpdate {
    fn transact_mut_update(&self, s: &str) -> Vec<u8>;
}

impl EvilUpdate for yrs::Doc {
    /// An update that would append `s`, made on a clone so the sender's doc is unchanged.
    fn transact_mut_update(&self, s: &str) -> Vec<u8> {
        use yrs::{ReadTxn, Text, Transact, updates::decoder::Decode};
        let copy = yrs::Doc::new();
        let state = self.transact().encode_state_as_update_v1(&Default::default());
        copy.transact_mut().apply_update(yrs::Update::decode_v1(&state).unwrap()).unwrap();
        let text = copy.get_or_insert_text("t");
        let mut txn = copy.transact_mut();
        text.push(&mut txn, s);
        txn.encode_update_v1()
    }
}
