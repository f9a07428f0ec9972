//! SIGKILL the real binary mid-stream: every update whose echo a client received must be in
//! the document after a restart on the same data dir.

mod common;

use std::time::Duration;

use common::{YClient, spawn_binary};

#[tokio::test]
async fn sigkill_loses_no_acknowledged_update() {
    let tmp = tempfile::tempdir().expect("tmp");
    // The stream below is far faster than a person types: lift the per-connection limit.
    let unlimited = ["--max-updates-per-sec", "0"];
    let (mut child, addr) = spawn_binary(tmp.path(), &unlimited).await.expect("tandem starts");
    let url = format!("ws://{addr}/ws/crash");
    let mut client = YClient::connect(&url).await.expect("connect");
    client.handshake().await;

    let started = tokio::time::Instant::now();
    let mut sent = 0u32;
    // A steady stream first: several updates in flight, echoes read as they come.
    while started.elapsed() < Duration::from_millis(800) {
        for _ in 0..20 {
            client.try_push(&format!("<{sent}>")).await;
            sent += 1;
        }
        client.pump_for(Duration::from_millis(2)).await;
    }
    // Then a burst, and the kill as soon as the server has acknowledged the first part of
    // it: it is then still working through the rest.
    let before_burst = client.updates_received;
    for _ in 0..3000 {
        client.try_push(&format!("<{sent}>")).await;
        sent += 1;
    }
    client.pump_until(|c| c.updates_received > before_burst + 20).await;
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    client.pump_for(Duration::from_millis(200)).await;
    let acked = client.updates_received;
    println!("sent {sent}, acknowledged {acked} before SIGKILL");
    assert!(acked > 0, "the server acknowledged nothing");
    // A kill after the last echo would prove nothing about in-flight updates.
    assert!((acked as u32) < sent, "the kill landed after every update was acknowledged");

    let (_child, addr) = spawn_binary(tmp.path(), &[]).await.expect("tandem restarts");
    let reloaded = YClient::join_url(&format!("ws://{addr}/ws/crash")).await.text();
    let mut missing = Vec::new();
    for i in 0..acked {
        if !reloaded.contains(&format!("<{i}>")) {
            missing.push(i);
        }
    }
    let recovered = (0..sent).filter(|i| reloaded.contains(&format!("<{i}>"))).count();
    println!("recovered {recovered} of {sent} sent ({acked} acknowledged)");
    assert!(missing.is_empty(), "acknowledged updates lost: {missing:?}");
}
