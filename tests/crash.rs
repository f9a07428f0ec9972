//! SIGKILL the real binary mid-stream: every update whose echo a client received must be in
//! the document after a restart on the same data dir.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::YClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

async fn spawn_tandem(data_dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["--listen", "127.0.0.1:0", "--web-dir=", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tandem");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(common::WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            if let Some(rest) = line.split("addr=").nth(1) {
                return rest.split_whitespace().next().expect("addr").to_string();
            }
        }
        panic!("tandem exited before listening");
    })
    .await
    .expect("tandem listens in time");
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

#[tokio::test]
async fn sigkill_loses_no_acknowledged_update() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (mut child, addr) = spawn_tandem(tmp.path()).await;
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
    // Then a burst, and the kill while the server is still working through it.
    for _ in 0..3000 {
        client.try_push(&format!("<{sent}>")).await;
        sent += 1;
    }
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    client.pump_for(Duration::from_millis(200)).await;
    let acked = client.updates_received;
    println!("sent {sent}, acknowledged {acked} before SIGKILL");
    assert!(acked > 0, "the server acknowledged nothing");
    if acked as u32 == sent {
        println!("note: every update was acknowledged before the kill landed");
    }

    let (_child, addr) = spawn_tandem(tmp.path()).await;
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
