//! Several nodes on one PostgreSQL database (issue #11): clients spread over them converge,
//! presence crosses nodes, a killed node loses nothing it echoed, a database restart loses
//! nothing echoed. Every test makes its own database; without a PostgreSQL server they
//! skip (see `common::pg`).

mod common;

use std::time::Duration;

use common::{TestServer, WAIT, YClient, pg, spawn_binary};
use tokio::time::{Instant, sleep, timeout};

async fn node(db: &pg::PgDb) -> TestServer {
    let url = db.url.clone();
    TestServer::start_with(move |c| {
        c.database_url = Some(url);
        c.max_updates_per_sec = 0.0;
        c.cluster_poll_secs = 0.5;
    })
    .await
}

/// Pumps every client until all hold the same text, which contains each of `expected`.
async fn converge(clients: &mut [YClient], expected: &[String]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        for c in clients.iter_mut() {
            c.pump_for(Duration::from_millis(20)).await;
        }
        let first = clients[0].text();
        let all_same = clients.iter().all(|c| c.text() == first);
        if all_same && expected.iter().all(|e| first.contains(e)) {
            return first;
        }
        if Instant::now() > deadline {
            let texts: Vec<String> = clients.iter().map(|c| c.text()).collect();
            panic!("no convergence: {texts:#?}");
        }
    }
}

#[tokio::test]
async fn clients_on_three_nodes_converge_and_a_late_joiner_anywhere_gets_everything() {
    let Some(db) = pg::fresh("cluster convergence").await else { return };
    let nodes = [node(&db).await, node(&db).await, node(&db).await];
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(YClient::join_url(&n.url("shared")).await);
    }
    let mut expected = Vec::new();
    for round in 0..15 {
        for (i, c) in clients.iter_mut().enumerate() {
            let mark = format!("<{i}.{round}>");
            c.try_push(&mark).await;
            expected.push(mark);
        }
        sleep(Duration::from_millis(3)).await;
    }
    let text = converge(&mut clients, &expected).await;
    for n in &nodes {
        let late = YClient::join_url(&n.url("shared")).await;
        assert_eq!(late.text(), text, "a late joiner on {} has everything", n.addr);
    }
    // And it is all in the shared store: a fresh node reads it back.
    let fresh = node(&db).await;
    assert_eq!(YClient::join_url(&fresh.url("shared")).await.text(), text);
}

#[tokio::test]
async fn presence_crosses_nodes_and_is_retracted_when_its_peer_leaves() {
    let Some(db) = pg::fresh("cluster presence").await else { return };
    let (a, b) = (node(&db).await, node(&db).await);
    let mut on_a = YClient::join_url(&a.url("room")).await;
    let mut on_b = YClient::join_url(&b.url("room")).await;
    on_a.set_awareness(101, 1, r#"{"user":{"name":"Ada"}}"#).await;
    on_b.pump_until(|c| c.live_awareness() == vec![101]).await;
    on_b.set_awareness(202, 1, r#"{"user":{"name":"Bob"}}"#).await;
    on_a.pump_until(|c| c.live_awareness() == vec![101, 202]).await;
    // A joiner on B sees A's peer too.
    let mut late = YClient::join_url(&b.url("room")).await;
    late.pump_until(|c| c.live_awareness() == vec![101, 202]).await;
    on_a.close().await;
    on_b.pump_until(|c| c.live_awareness() == vec![202]).await;
    late.pump_until(|c| c.live_awareness() == vec![202]).await;
}

#[tokio::test]
async fn a_node_that_stops_cleanly_retracts_its_peers_presence_elsewhere_within_5_s() {
    let Some(db) = pg::fresh("cluster clean stop").await else { return };
    let (a, b) = (node(&db).await, node(&db).await);
    let mut on_a = YClient::join_url(&a.url("room")).await;
    let mut on_b = YClient::join_url(&b.url("room")).await;
    on_a.set_awareness(7, 1, r#"{"user":{"name":"Ada"}}"#).await;
    on_b.pump_until(|c| c.live_awareness() == vec![7]).await;
    let stopped = Instant::now();
    let stopping = tokio::spawn(a.stop());
    on_a.pump_for(Duration::from_millis(50)).await;
    timeout(Duration::from_secs(5), on_b.pump_until(|c| c.live_awareness().is_empty()))
        .await
        .expect("presence retracted within 5 s");
    println!("retracted {} ms after the stop began", stopped.elapsed().as_millis());
    let _ = stopping.await;
}

#[tokio::test]
async fn a_node_killed_mid_stream_loses_nothing_it_echoed() {
    let Some(db) = pg::fresh("cluster sigkill").await else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let args = ["--database-url", db.url.as_str(), "--max-updates-per-sec", "0"];
    let (mut victim, victim_addr) = spawn_binary(tmp.path(), &args).await.expect("node 1");
    let (_two, two_addr) = spawn_binary(tmp.path(), &args).await.expect("node 2");
    let (_three, three_addr) = spawn_binary(tmp.path(), &args).await.expect("node 3");
    let doc = |addr: &str| format!("ws://{addr}/ws/crash");
    // A writer on each surviving node too, so the victim's rows interleave with theirs.
    let mut writer = YClient::join_url(&doc(&victim_addr)).await;
    let mut other = YClient::join_url(&doc(&two_addr)).await;
    // What the victim relayed (it relays only what is committed) is what was echoed.
    let mut observer = YClient::join_url(&doc(&victim_addr)).await;
    // The writer's cursor is seen on node 2; once its node is dead it must go.
    writer.set_awareness(55, 1, r#"{"user":{"name":"Ada"}}"#).await;
    other.pump_until(|c| c.live_awareness() == vec![55]).await;
    let mut sent = 0u32;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(600) {
        for _ in 0..20 {
            writer.try_push(&format!("<{sent}>")).await;
            sent += 1;
        }
        other.try_push(&format!("[{}]", sent)).await;
        writer.pump_for(Duration::from_millis(2)).await;
        other.pump_for(Duration::from_millis(1)).await;
        observer.pump_for(Duration::from_millis(1)).await;
    }
    let before_burst = writer.updates_received;
    for _ in 0..2000 {
        writer.try_push(&format!("<{sent}>")).await;
        sent += 1;
    }
    writer.pump_until(|c| c.updates_received > before_burst + 20).await;
    victim.start_kill().expect("SIGKILL");
    let _ = victim.wait().await;
    observer.pump_for(Duration::from_millis(300)).await;
    let seen = observer.text();
    let echoed: Vec<u32> = (0..sent).filter(|i| seen.contains(&format!("<{i}>"))).collect();
    assert!((echoed.len() as u32) < sent, "the kill landed after everything was committed");
    println!("sent {sent}, {} echoed or seen before the kill", echoed.len());
    assert!(!echoed.is_empty());
    let check = |text: String, through: &str| {
        let missing: Vec<u32> =
            echoed.iter().copied().filter(|i| !text.contains(&format!("<{i}>"))).collect();
        assert!(missing.is_empty(), "through {through}: echoed updates lost: {missing:?}");
    };
    check(YClient::join_url(&doc(&two_addr)).await.text(), "node 2");
    check(YClient::join_url(&doc(&three_addr)).await.text(), "node 3");
    let killed = Instant::now();
    while !other.live_awareness().is_empty() {
        assert!(killed.elapsed() < Duration::from_secs(30), "a dead node's presence stays");
        other.pump_for(Duration::from_millis(100)).await;
    }
    println!("dead node's presence removed {} ms after the kill", killed.elapsed().as_millis());
    drop((_two, _three, other));
    // A full restart of every node (the survivors were killed too, by dropping them).
    let mut again = Vec::new();
    for _ in 0..3 {
        again.push(spawn_binary(tmp.path(), &args).await.expect("restart"));
    }
    for (_, addr) in &again {
        check(YClient::join_url(&doc(addr)).await.text(), "a restarted node");
    }
}

#[tokio::test]
async fn through_a_database_outage_writes_wait_for_their_commit_then_peers_are_sent_away() {
    let Some(db) = pg::fresh("cluster outage").await else { return };
    let blip = pg::Blip::new(&db).await;
    let url = blip.url.clone();
    let node = TestServer::start_with(move |c| {
        c.database_url = Some(url);
        c.database_timeout_secs = 3.0;
    })
    .await;
    let mut client = YClient::join_url(&node.url("held")).await;
    client.insert(0, "before ").await;
    client.pump_until(|c| c.updates_received == 1).await;

    // A short outage: the write is held, not echoed, and /healthz says so.
    blip.cut();
    client.insert(7, "during ").await;
    client.pump_for(Duration::from_millis(1200)).await;
    assert_eq!(client.updates_received, 1, "an update was echoed without a commit");
    assert_eq!(common::http_get(&node.http("/healthz")).await.0, 503);
    blip.restore();
    client.pump_until(|c| c.updates_received == 2).await;
    let deadline = Instant::now() + WAIT;
    while common::http_get(&node.http("/healthz")).await.0 != 200 {
        assert!(Instant::now() < deadline, "/healthz never recovered");
        sleep(Duration::from_millis(100)).await;
    }

    // A long one: past the limit the peers are closed with 1013 and newcomers refused.
    blip.cut();
    let cut_at = Instant::now();
    client.insert(14, "lost? ").await;
    let (code, reason) = client.expect_close().await;
    assert_eq!(code, 1013, "{reason}");
    let waited = cut_at.elapsed();
    assert!(waited >= Duration::from_millis(2500), "sent away after only {waited:?}");
    let mut newcomer = YClient::connect(&node.url("held")).await.expect("upgrade");
    assert_eq!(newcomer.expect_close().await.0, 1013);
    blip.restore();
    let deadline = Instant::now() + WAIT;
    let text = loop {
        if let Ok(mut c) = YClient::connect(&node.url("held")).await
            && let Ok(text) = c.expect_close_or_text().await
        {
            break text;
        }
        assert!(Instant::now() < deadline, "the node never took clients again");
        sleep(Duration::from_millis(200)).await;
    };
    assert!(text.starts_with("before during "), "echoed updates kept: {text:?}");
}

#[tokio::test]
async fn a_revocation_on_one_node_closes_the_token_on_the_others() {
    let Some(db) = pg::fresh("cluster revocation").await else { return };
    let secret = "cluster-secret";
    let start = || {
        let url = db.url.clone();
        TestServer::start_with(move |c| {
            c.database_url = Some(url);
            c.auth_secret = Some(secret.into());
        })
    };
    let (a, b) = (start().await, start().await);
    let token = common::mint(
        secret,
        serde_json::json!({"sub": "ada", "jti": "t-9", "docs": [{"p": "*", "a": "rw"}]}),
    );
    let mut on_b = YClient::join_url(&format!("{}?token={token}", b.url("doc"))).await;
    let admin = common::mint(secret, serde_json::json!({"sub": "root", "admin": true}));
    let revoked = common::http_auth(
        &a.http("/api/admin/revoke"),
        "POST",
        Some(&admin),
        "application/json",
        br#"{"jti": "t-9"}"#,
    )
    .await;
    assert_eq!(revoked.status, 200);
    assert_eq!(on_b.expect_close().await, (4401, "token revoked".into()));
}

#[tokio::test]
async fn compaction_on_several_nodes_keeps_every_update_and_never_goes_backwards() {
    let Some(db) = pg::fresh("cluster compaction").await else { return };
    let start = || {
        let url = db.url.clone();
        TestServer::start_with(move |c| {
            c.database_url = Some(url);
            c.max_updates_per_sec = 0.0;
            c.compact_updates = 25;
        })
    };
    let (a, b) = (start().await, start().await);
    let mut clients =
        [YClient::join_url(&a.url("compact")).await, YClient::join_url(&b.url("compact")).await];
    let mut expected = Vec::new();
    for round in 0..60 {
        for (i, c) in clients.iter_mut().enumerate() {
            let mark = format!("<{i}.{round}>");
            c.try_push(&mark).await;
            expected.push(mark);
        }
        sleep(Duration::from_millis(2)).await;
    }
    let text = converge(&mut clients, &expected).await;
    let mut conn = db.connect().await;
    let (snapshot_seq, head): (i64, i64) = sqlx::query_as(
        "select d.snapshot_seq, h.head from documents d join heads h on h.doc = d.name
         where d.name = 'compact'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("compacted");
    let below: i64 =
        sqlx::query_scalar("select count(*) from updates where doc = 'compact' and seq <= $1")
            .bind(snapshot_seq)
            .fetch_one(&mut conn)
            .await
            .expect("count");
    assert!(snapshot_seq > 0 && snapshot_seq <= head, "snapshot {snapshot_seq}, head {head}");
    assert_eq!(below, 0, "rows the snapshot covers are gone");
    let fresh = start().await;
    assert_eq!(YClient::join_url(&fresh.url("compact")).await.text(), text);
}

#[tokio::test]
async fn a_deletion_on_one_node_closes_the_document_on_the_others_and_it_starts_afresh() {
    let Some(db) = pg::fresh("cluster deletion").await else { return };
    let (a, b) = (node(&db).await, node(&db).await);
    let mut on_b = YClient::join_url(&b.url("doomed")).await;
    on_b.insert(0, "old words").await;
    on_b.pump_until(|c| c.updates_received == 1).await;
    let mut on_a = YClient::join_url(&a.url("doomed")).await;
    assert_eq!(on_a.text(), "old words");
    assert_eq!(common::http(&a.http("/api/docs/doomed"), "DELETE", None).await.status, 204);
    assert_eq!(on_a.expect_close().await.0, 4404);
    assert_eq!(on_b.expect_close().await, (4404, "document deleted".into()));
    // Written again through the other node: a new document, nothing of the old one.
    let mut again = YClient::join_url(&b.url("doomed")).await;
    assert_eq!(again.text(), "");
    again.insert(0, "new").await;
    again.pump_until(|c| c.updates_received == 1).await;
    let mut reader = YClient::join_url(&a.url("doomed")).await;
    reader.pump_until(|c| c.text() == "new").await;
}
