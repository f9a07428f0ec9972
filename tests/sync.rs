//! Document sync between real clients through a real server.

mod common;

use common::{TestServer, YClient, count_log_rows, reload_text};
use yrs::{ReadTxn, StateVector, Transact};

#[tokio::test]
async fn concurrent_editors_converge() {
    let server = TestServer::start().await;
    let mut a = YClient::join(&server, "doc").await;
    let mut b = YClient::join(&server, "doc").await;
    a.insert(0, "hello ").await;
    b.insert(0, "world").await;
    // Both see both edits; the CRDT decides one order and both agree on it.
    b.pump_until(|c| c.text().len() == 11).await;
    a.pump_until(|c| c.text().len() == 11).await;
    assert_eq!(a.text(), b.text());
    assert!(a.text().contains("hello ") && a.text().contains("world"));
}

/// The echo is the durable acknowledgement the editor's "Saved" relies on: byte-identical
/// to what was sent, and only sent once the row is committed.
#[tokio::test]
async fn sender_gets_an_exact_echo_after_commit() {
    let server = TestServer::start().await;
    let mut a = YClient::join(&server, "doc").await;
    let mut db = common::db(&server.data_dir).await;
    for (i, s) in ["x", "yz", "a longer edit"].into_iter().enumerate() {
        let sent = a.insert(0, s).await;
        a.pump_until(|c| c.updates_received == i + 1).await;
        assert_eq!(a.received[i], sent, "echo is byte-identical");
        // Checked the moment the echo arrived: the row is already committed.
        let stored: Vec<Vec<u8>> =
            sqlx::query_scalar("select data from updates where doc = 'doc' order by seq")
                .fetch_all(&mut db)
                .await
                .expect("read log");
        assert_eq!(stored.last(), Some(&sent), "the echoed bytes are the stored row");
        assert_eq!(stored.len(), i + 1);
    }
}

#[tokio::test]
async fn late_joiner_gets_whole_document() {
    let server = TestServer::start().await;
    let mut a = YClient::join(&server, "doc").await;
    for i in 0..50 {
        a.insert(i, "a").await;
    }
    a.pump_until(|c| c.updates_received == 50).await;
    let late = YClient::join(&server, "doc").await;
    assert_eq!(late.text(), "a".repeat(50));
}

#[tokio::test]
async fn reconnect_receives_only_missed_changes() {
    let server = TestServer::start().await;
    let mut a = YClient::join(&server, "doc").await;
    let big = "lorem ipsum dolor sit amet ".repeat(400); // ~10 KiB of history
    a.insert(0, &big).await;
    a.pump_until(|c| c.updates_received == 1).await;

    let b = YClient::join(&server, "doc").await;
    let full_state = b.step2_sizes[0];
    let b_doc = b.doc.clone();
    b.close().await;

    a.insert(0, "missed!").await;
    a.pump_until(|c| c.updates_received == 2).await;

    let b = YClient::join_with(&server, "doc", b_doc).await;
    let missed = *b.step2_sizes.last().expect("step2");
    assert!(b.text().starts_with("missed!"));
    assert_eq!(b.text(), a.text());
    println!("full state {full_state} bytes, reconnect reply {missed} bytes");
    assert!(
        missed * 20 < full_state,
        "reply {missed} B should be far below full state {full_state} B"
    );
}

#[tokio::test]
async fn offline_edits_merge_on_reconnect() {
    let server = TestServer::start().await;
    let mut a = YClient::join(&server, "doc").await;
    let mut b = YClient::join(&server, "doc").await;
    a.insert(0, "base").await;
    b.wait_text("base").await;
    let b_doc = b.doc.clone();
    b.drop_abruptly();

    // Both edit while b is offline.
    a.insert(4, " online").await;
    {
        let text = b_doc.get_or_insert_text("t");
        yrs::Text::insert(&text, &mut b_doc.transact_mut(), 0, "offline ");
    }
    let mut b = YClient::join_with(&server, "doc", b_doc).await;
    // The server asked for what it lacks in its SyncStep1; b's offline edit flows back.
    a.pump_until(|c| c.text().contains("offline")).await;
    b.pump_until(|c| c.text().contains("online")).await;
    assert_eq!(a.text(), b.text());
    assert_eq!(a.text(), "offline base online");
}

#[tokio::test]
async fn rooms_are_isolated() {
    let server = TestServer::start().await;
    let mut a = YClient::join(&server, "one").await;
    let mut b = YClient::join(&server, "two").await;
    a.insert(0, "in one").await;
    b.insert(0, "in two").await;
    a.pump_until(|c| c.updates_received == 1).await;
    b.pump_until(|c| c.updates_received == 1).await;
    b.pump_for(std::time::Duration::from_millis(200)).await;
    assert_eq!(a.text(), "in one");
    assert_eq!(b.text(), "in two");
    let fresh = YClient::join(&server, "one").await;
    assert_eq!(fresh.text(), "in one");
}

#[tokio::test]
async fn content_survives_restart() {
    let server = TestServer::start().await;
    let mut a = YClient::join(&server, "doc").await;
    a.insert(0, "durable").await;
    a.pump_until(|c| c.updates_received == 1).await;
    let data_dir = server.data_dir.clone();
    let tmp = server.stop().await;
    assert_eq!(reload_text(&data_dir, "doc").await, "durable");
    drop(tmp);
}

#[tokio::test]
async fn compaction_keeps_content_and_bounds_the_log() {
    let server = TestServer::start_with(|c| c.compact_updates = 20).await;
    let mut a = YClient::join(&server, "doc").await;
    for i in 0..105u32 {
        a.insert(i, "z").await;
    }
    a.pump_until(|c| c.updates_received == 105).await;
    let expected = a.text();
    let data_dir = server.data_dir.clone();
    a.close().await;
    let tmp = server.stop().await;

    let rows = count_log_rows(&data_dir).await;
    assert!(rows < 20, "log holds {rows} rows after compaction");
    assert_eq!(reload_text(&data_dir, "doc").await, expected);
    drop(tmp);
}

#[tokio::test]
async fn room_unloads_after_grace_and_reloads() {
    let server = TestServer::start_with(|c| c.room_grace_secs = 0.2).await;
    let mut a = YClient::join(&server, "doc").await;
    a.insert(0, "kept").await;
    a.pump_until(|c| c.updates_received == 1).await;
    a.close().await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let (_, body) = common::http_get(&server.http("/api/docs")).await;
        if body.contains("\"rooms_loaded\":0") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "room never unloaded: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let b = YClient::join(&server, "doc").await;
    assert_eq!(b.text(), "kept");
    // The unload compacted the log into the snapshot.
    assert_eq!(count_log_rows(&server.data_dir).await, 0);
}

#[tokio::test]
async fn healthz_answers() {
    let server = TestServer::start().await;
    let (status, body) = common::http_get(&server.http("/healthz")).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
}

#[tokio::test]
async fn missing_state_vector_entries_give_full_state() {
    let server = TestServer::start().await;
    let mut a = YClient::join(&server, "doc").await;
    a.insert(0, "abc").await;
    a.pump_until(|c| c.updates_received == 1).await;
    let b = YClient::join(&server, "doc").await;
    assert_eq!(b.doc.transact().state_vector(), a.doc.transact().state_vector());
    assert_ne!(b.doc.transact().state_vector(), StateVector::default());
}

#[tokio::test]
async fn large_document_reaches_a_late_joiner() {
    // Larger than the 64 KiB fragment size, so it travels as a fragmented message.
    let server = TestServer::start().await;
    let mut a = YClient::join(&server, "big").await;
    let big = "0123456789abcdef".repeat(40 * 1024); // 640 KiB
    a.insert(0, &big).await;
    a.pump_until(|c| c.updates_received == 1).await;
    let late = YClient::join(&server, "big").await;
    assert!(late.step2_sizes[0] > 640 * 1024);
    assert_eq!(late.text(), big);
}
