//! PostgreSQL itself restarted (immediately, as after a crash) under load, with three nodes
//! on it: nothing that was echoed is lost, every node catches up, every client converges.
//! It restarts the machine's server, so it runs only when told how:
//! `TANDEM_PG_RESTART_CMD` (`.ci/run` sets `pg_ctlcluster 15 main restart -m immediate`).
//! Its own test binary, so that no other test's database goes down with it.

mod common;

use std::time::Duration;

use common::{TestServer, WAIT, YClient, pg};
use tokio::time::{Instant, sleep};

#[tokio::test]
async fn an_immediate_postgres_restart_under_load_loses_nothing_echoed() {
    let Ok(restart) = std::env::var("TANDEM_PG_RESTART_CMD") else {
        eprintln!("skipping: set TANDEM_PG_RESTART_CMD to a command that restarts PostgreSQL");
        return;
    };
    let Some(db) = pg::fresh("postgres restart").await else { return };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let url = db.url.clone();
        nodes.push(
            TestServer::start_with(move |c| {
                c.database_url = Some(url);
                c.max_updates_per_sec = 0.0;
                c.cluster_poll_secs = 0.5;
            })
            .await,
        );
    }
    let mut writers = [
        YClient::join_url(&nodes[0].url("load")).await,
        YClient::join_url(&nodes[1].url("load")).await,
    ];
    // What an observer is relayed was committed: those marks must survive.
    let mut observers = Vec::new();
    for n in &nodes {
        observers.push(YClient::join_url(&n.url("load")).await);
    }
    let mut sent = Vec::new();
    let started = Instant::now();
    let mut restarting: Option<tokio::process::Child> = None;
    let mut seq = 0;
    while started.elapsed() < Duration::from_secs(6) {
        for (w, writer) in writers.iter_mut().enumerate() {
            let mark = format!("<{w}.{seq}>");
            writer.try_push(&mark).await;
            sent.push(mark);
            writer.pump_for(Duration::from_millis(2)).await;
        }
        seq += 1;
        for o in observers.iter_mut() {
            o.pump_for(Duration::from_millis(1)).await;
        }
        // The restart runs beside the stream: the nodes keep serving while it happens.
        if restarting.is_none() && started.elapsed() > Duration::from_secs(1) {
            let child = tokio::process::Command::new("sh").args(["-c", &restart]).spawn();
            restarting = Some(child.expect("run TANDEM_PG_RESTART_CMD"));
            println!("restarting PostgreSQL after {} updates", sent.len());
        }
    }
    let status = restarting.expect("restarted").wait().await.expect("restart command");
    assert!(status.success(), "{restart} failed");
    let committed_before: Vec<String> =
        sent.iter().filter(|m| observers.iter().any(|o| o.text().contains(*m))).cloned().collect();
    println!(
        "sent {}, {} seen committed by the end of the stream",
        sent.len(),
        committed_before.len()
    );
    // Everyone converges on everything sent: held writes are committed once it is back.
    let deadline = Instant::now() + WAIT * 3;
    loop {
        for c in writers.iter_mut().chain(observers.iter_mut()) {
            c.pump_for(Duration::from_millis(20)).await;
        }
        let texts: Vec<String> = writers.iter().chain(&observers).map(|c| c.text()).collect();
        if texts.iter().all(|t| *t == texts[0]) && sent.iter().all(|m| texts[0].contains(m)) {
            break;
        }
        assert!(Instant::now() < deadline, "no convergence after the restart");
        sleep(Duration::from_millis(50)).await;
    }
    let url = db.url.clone();
    let fresh = TestServer::start_with(move |c| c.database_url = Some(url)).await;
    let stored = YClient::join_url(&fresh.url("load")).await.text();
    let missing: Vec<&String> = sent.iter().filter(|m| !stored.contains(*m)).collect();
    assert!(missing.is_empty(), "lost after the restart: {missing:?}");
}
