//! A hostile client must not grow the server's memory without bound: the real binary's
//! resident set (from /proc) with 2,000 connections that connect and never send, and with
//! 200 connections that each announce the most awareness the limits allow, and again once
//! they have all left. Prints the figures (`-- --nocapture`); asserts generous bounds.

mod common;

use std::time::Duration;

use common::{YClient, http_get, spawn_binary};
use tokio_tungstenite::connect_async;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connections_use_bounded_memory_and_give_it_back() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("skipped: needs /proc to read the server's resident set");
        return;
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let tmp = tempfile::tempdir().expect("tmp");
    // A short grace so the rooms are gone when we measure after.
    let (child, addr) =
        spawn_binary(tmp.path(), &["--room-grace-secs", "0.2"]).await.expect("starts");
    let pid = child.id().expect("pid");
    settle().await;
    let base = rss_kib(pid);

    // 2,000 connections that never send a byte after the upgrade.
    let mut idle = Vec::with_capacity(2000);
    for i in 0..2000 {
        let url = format!("ws://{addr}/ws/idle-{}", i % 20);
        let (socket, _) = connect_async(&url).await.expect("connect");
        idle.push(socket);
    }
    settle().await;
    let with_idle = rss_kib(pid);
    drop(idle);
    settle().await;
    let after_idle = rss_kib(pid);

    // 200 connections (over 20 rooms), each announcing the most it may: 8 client ids with
    // 64 KiB states (the room caps are 8 MiB; connections past them are closed).
    let state = format!("{{\"user\":\"{}\"}}", "x".repeat(65_536 - 12));
    let mut loud = Vec::with_capacity(200);
    for i in 0..200u64 {
        let mut client =
            YClient::connect(&format!("ws://{addr}/ws/loud-{}", i % 20)).await.expect("connect");
        for id in 0..8 {
            client.set_awareness(i * 100 + id + 1, 1, &state).await;
        }
        loud.push(client);
    }
    settle().await;
    let with_loud = rss_kib(pid);
    let mut closed = 0;
    for client in &mut loud {
        client.pump_for(Duration::from_millis(1)).await;
        if client.closed.is_some() {
            closed += 1;
        }
    }
    for client in loud {
        client.drop_abruptly();
    }
    settle().await;
    let (_, list) = http_get(&format!("http://{addr}/api/docs")).await;
    let after_loud = rss_kib(pid);

    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "RSS: start {:.1} MiB; 2,000 idle connections {:.1} MiB ({:.1} KiB each); after they left {:.1} MiB; \
         200 max-awareness connections {:.1} MiB ({closed} closed by the room caps); after they left {:.1} MiB",
        mib(base),
        mib(with_idle),
        (with_idle.saturating_sub(base)) as f64 / 2000.0,
        mib(after_idle),
        mib(with_loud),
        mib(after_loud),
    );
    println!("after: {list}");
    // Bounds: 64 KiB per idle connection would already be five times what we measure.
    assert!(with_idle - base < 2000 * 64, "idle connections cost {} KiB", with_idle - base);
    // 20 rooms × 8 MiB of presence, plus transient frames: well under 400 MiB.
    assert!(with_loud - base < 400 * 1024, "awareness cost {} KiB", with_loud - base);
    drop(child);
}
