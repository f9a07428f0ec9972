//! Awareness: relayed to the room, retracted when its connection goes, swept when stale.

mod common;

use std::time::Duration;

use common::{TestServer, YClient};

#[tokio::test]
async fn awareness_is_relayed_and_sent_to_joiners() {
    let server = TestServer::start().await;
    let mut a = YClient::join(&server, "doc").await;
    let mut b = YClient::join(&server, "doc").await;
    a.set_awareness(11, 1, r#"{"user":{"name":"Ada"}}"#).await;
    b.pump_until(|c| c.live_awareness() == vec![11]).await;
    let c = {
        let mut c = YClient::join(&server, "doc").await;
        c.pump_until(|c| c.live_awareness() == vec![11]).await;
        c
    };
    assert_eq!(c.awareness[&11].1, r#"{"user":{"name":"Ada"}}"#);
}

#[tokio::test]
async fn clean_close_removes_cursor() {
    let server = TestServer::start().await;
    let mut a = YClient::join(&server, "doc").await;
    let mut b = YClient::join(&server, "doc").await;
    a.set_awareness(11, 1, "{}").await;
    b.pump_until(|c| c.live_awareness() == vec![11]).await;
    a.close().await;
    b.pump_until(|c| c.live_awareness().is_empty()).await;
}

#[tokio::test]
async fn abrupt_drop_removes_cursor() {
    let server = TestServer::start().await;
    let mut a = YClient::join(&server, "doc").await;
    let mut b = YClient::join(&server, "doc").await;
    a.set_awareness(11, 1, "{}").await;
    a.set_awareness(12, 1, "{}").await;
    b.pump_until(|c| c.live_awareness() == vec![11, 12]).await;
    a.drop_abruptly();
    b.pump_until(|c| c.live_awareness().is_empty()).await;
    let late = YClient::join(&server, "doc").await;
    assert!(late.live_awareness().is_empty(), "no ghost for a late joiner");
}

#[tokio::test]
async fn silent_peer_is_closed_by_ping_timeout() {
    // The peer's TCP stays open but it never answers: emulate by not reading at all, so
    // pongs are never sent. tungstenite answers pings only while the socket is polled.
    let server = TestServer::start_with(|c| c.ping_interval_secs = 0.2).await;
    let a = YClient::join(&server, "doc").await;
    let mut b = YClient::join(&server, "doc").await;
    let mut a = a;
    a.set_awareness(21, 1, "{}").await;
    b.pump_until(|c| c.live_awareness() == vec![21]).await;
    // a stops reading; b keeps reading (and so answers pings).
    b.pump_until(|c| c.live_awareness().is_empty()).await;
    // When a reads again, it finds the reason it was closed.
    let (code, reason) = a.expect_close().await;
    assert_eq!(code, 4000, "{reason}");
}

/// A presence change whose batch window contains a sweep tick used to wait for the next
/// unrelated message (the sweep took the batch and did not send it).
#[tokio::test]
async fn a_batched_presence_change_is_never_stranded_by_a_sweep() {
    // Sweeps every 1 s (a quarter of the timeout); a batch window of 3 s spans them.
    let server = TestServer::start_with(|c| {
        c.awareness_batch_ms = 3000;
        c.awareness_timeout_secs = 4.0;
    })
    .await;
    let mut a = YClient::join(&server, "doc").await;
    let mut b = YClient::join(&server, "doc").await;
    a.set_awareness(51, 1, r#"{"cursor":1}"#).await;
    // Nothing else is sent by anyone: the batch must go out on its own.
    let started = tokio::time::Instant::now();
    b.pump_until(|c| c.live_awareness() == vec![51]).await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(4), "arrived after {waited:?}");
    a.pump_for(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn stale_states_are_swept() {
    let server = TestServer::start_with(|c| c.awareness_timeout_secs = 0.4).await;
    let mut a = YClient::join(&server, "doc").await;
    let mut b = YClient::join(&server, "doc").await;
    a.set_awareness(31, 1, "{}").await;
    b.pump_until(|c| c.live_awareness() == vec![31]).await;
    // a stays connected but never renews its state.
    b.pump_until(|c| c.live_awareness().is_empty()).await;
    a.pump_for(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn stale_clock_is_not_relayed() {
    let server = TestServer::start().await;
    let mut a = YClient::join(&server, "doc").await;
    let mut b = YClient::join(&server, "doc").await;
    a.set_awareness(41, 5, r#"{"v":5}"#).await;
    b.pump_until(|c| c.live_awareness() == vec![41]).await;
    a.set_awareness(41, 3, r#"{"v":3}"#).await;
    a.set_awareness(41, 6, r#"{"v":6}"#).await;
    b.pump_until(|c| c.awareness[&41].0 == 6).await;
    assert_eq!(b.awareness[&41].1, r#"{"v":6}"#);
}

#[tokio::test]
async fn peer_that_cannot_keep_up_is_closed_not_skipped() {
    // Pings far apart, so that only the full queue can end the sleeper's connection (with
    // 0.5 s pings, the ping timeout raced the queue filling up).
    let server = TestServer::start_with(|c| {
        c.peer_max_queued_bytes = 1 << 20;
        c.ping_interval_secs = 30.0;
    })
    .await;
    let mut writer = YClient::join(&server, "doc").await;
    let mut sleeper = YClient::join(&server, "doc").await;
    // 64 KiB updates until the sleeper's socket buffers and its 1 MiB allowance are full;
    // the writer keeps reading its echoes, so only the sleeper falls behind.
    let chunk = "x".repeat(64 * 1024);
    for i in 0..300u32 {
        writer.insert(i, &chunk).await;
        writer.pump_until(|c| c.updates_received > i as usize).await;
    }
    // The sleeper wakes up, reads what was buffered for it, then finds the close frame.
    let (code, reason) = sleeper.expect_close().await;
    assert_eq!(code, 1013, "{reason}");
    // The writer was never held up by the sleeper and got every echo.
    assert_eq!(writer.updates_received, 300);
}

#[tokio::test]
async fn a_client_that_is_busy_for_a_while_is_not_dropped() {
    // Defaults: "too slow" is megabytes behind or seconds without progress, not a frame
    // count (1,024 frames used to close clients that stalled for a fifth of a second).
    let server = TestServer::start_with(|c| c.max_updates_per_sec = 0.0).await;
    let mut writer = YClient::join(&server, "doc").await;
    let mut busy = YClient::join(&server, "doc").await;
    // 3,000 updates while the busy client reads nothing for 1.5 s.
    let started = std::time::Instant::now();
    for i in 0..3000u32 {
        writer.insert(i, "0123456789abcdef0123456789abcdef").await;
        if i % 100 == 99 {
            writer.pump_until(|c| c.updates_received > i as usize).await;
        }
    }
    let pause = Duration::from_millis(1500).saturating_sub(started.elapsed());
    tokio::time::sleep(pause).await;
    busy.pump_until(|c| c.updates_received >= 3000).await;
    assert!(busy.closed.is_none(), "{:?}", busy.closed);
    assert_eq!(busy.text().len(), 3000 * 32);
}

#[tokio::test]
async fn a_client_that_takes_nothing_for_the_stall_limit_is_closed() {
    // Far below the byte limit, but nothing is taken for a second: closed as too slow.
    let server = TestServer::start_with(|c| {
        c.peer_stall_secs = 1.0;
        c.ping_interval_secs = 30.0;
    })
    .await;
    let mut writer = YClient::join(&server, "doc").await;
    let mut sleeper = YClient::join(&server, "doc").await;
    // Enough to fill the sleeper's socket buffers, then a little more that must wait.
    let chunk = "x".repeat(64 * 1024);
    for i in 0..200u32 {
        writer.insert(i, &chunk).await;
        writer.pump_until(|c| c.updates_received > i as usize).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, reason) = sleeper.expect_close().await;
    assert_eq!(code, 1013, "{reason}");
    assert_eq!(writer.updates_received, 200);
}
