//! Seeded random scenario: several clients edit, drop off (cleanly or not), edit offline,
//! come back; everyone converges, and so does a reload from the store. The seed is printed;
//! rerun one with `TANDEM_SEED=<seed> cargo test --test random_convergence`. The same
//! scenario runs on three nodes sharing one PostgreSQL database, each reconnect landing on a
//! random node (skipped without a PostgreSQL server; see `common::pg`).

mod common;

use std::time::Duration;

use common::{TestServer, YClient, pg, reload_text};
use yrs::{Doc, GetString, Text, Transact};

struct Peer {
    doc: Doc,
    client: Option<YClient>,
}

fn text_of(doc: &Doc) -> String {
    doc.get_or_insert_text("t").get_string(&doc.transact())
}

/// `db`: run on three nodes sharing it; None: one node on SQLite.
async fn run_scenario(seed: u64, n_peers: usize, steps: usize, db: Option<&pg::PgDb>) {
    println!("seed {seed}{}", if db.is_some() { " (three nodes)" } else { "" });
    let mut rng = fastrand::Rng::with_seed(seed);
    let doc = format!("rand-{seed}");
    let node = || async {
        let url = db.map(|db| db.url.clone());
        TestServer::start_with(move |c| {
            c.compact_updates = 50;
            c.database_url = url;
        })
        .await
    };
    let mut servers = vec![node().await];
    if db.is_some() {
        servers.push(node().await);
        servers.push(node().await);
    }
    let mut peers = Vec::new();
    for _ in 0..n_peers {
        let server = &servers[rng.usize(..servers.len())];
        let client = YClient::join(server, &doc).await;
        peers.push(Peer { doc: client.doc.clone(), client: Some(client) });
    }
    for _ in 0..steps {
        let peer = &mut peers[rng.usize(..n_peers)];
        match rng.u8(..100) {
            0..=54 => {
                let text = peer.doc.get_or_insert_text("t");
                let update = {
                    let mut txn = peer.doc.transact_mut();
                    let len = text.len(&txn);
                    let word: String = (0..rng.usize(1..6)).map(|_| rng.alphabetic()).collect();
                    text.insert(&mut txn, rng.u32(..=len), &word);
                    txn.encode_update_v1()
                };
                if let Some(c) = &mut peer.client {
                    c.send(tandem::protocol::sync_update(&update)).await;
                }
            }
            55..=69 => {
                let text = peer.doc.get_or_insert_text("t");
                let update = {
                    let mut txn = peer.doc.transact_mut();
                    let len = text.len(&txn);
                    if len > 0 {
                        let at = rng.u32(..len);
                        text.remove_range(&mut txn, at, rng.u32(1..=(len - at).min(4)));
                    }
                    txn.encode_update_v1()
                };
                if let Some(c) = &mut peer.client {
                    c.send(tandem::protocol::sync_update(&update)).await;
                }
            }
            70..=79 => {
                if let Some(c) = &mut peer.client {
                    c.pump_for(Duration::from_millis(5)).await;
                }
            }
            80..=89 => match peer.client.take() {
                Some(c) if rng.bool() => c.close().await,
                Some(c) => c.drop_abruptly(),
                None => {}
            },
            _ => {
                if peer.client.is_none() {
                    let server = &servers[rng.usize(..servers.len())];
                    peer.client = Some(YClient::join_with(server, &doc, peer.doc.clone()).await);
                }
            }
        }
    }
    for peer in &mut peers {
        if peer.client.is_none() {
            let server = &servers[rng.usize(..servers.len())];
            peer.client = Some(YClient::join_with(server, &doc, peer.doc.clone()).await);
        }
    }
    // Converge: pump everyone until all texts agree, with a deadline.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        for peer in &mut peers {
            if let Some(c) = &mut peer.client {
                c.pump_for(Duration::from_millis(30)).await;
            }
        }
        let texts: Vec<String> = peers.iter().map(|p| text_of(&p.doc)).collect();
        if texts.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "seed {seed}: no convergence: {texts:#?}");
    }
    let expected = text_of(&peers[0].doc);
    for peer in peers {
        if let Some(c) = peer.client {
            c.close().await;
        }
    }
    if db.is_some() {
        // What the shared store holds, through a node that never saw the scenario.
        let fresh = node().await;
        let stored = YClient::join(&fresh, &doc).await.text();
        assert_eq!(stored, expected, "seed {seed}: the store differs");
        return;
    }
    let server = servers.remove(0);
    let data_dir = server.data_dir.clone();
    let tmp = server.stop().await;
    assert_eq!(reload_text(&data_dir, &doc).await, expected, "seed {seed}: reload differs");
    drop(tmp);
}

fn seeds() -> Vec<u64> {
    match std::env::var("TANDEM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
            vec![1, 2, base]
        }
    }
}

#[tokio::test]
async fn random_edits_disconnects_and_reconnects_converge() {
    for seed in seeds() {
        run_scenario(seed, 4, 400, None).await;
    }
}

#[tokio::test]
async fn the_same_on_three_nodes_with_clients_moving_between_them() {
    let Some(db) = pg::fresh("random scenario on three nodes").await else { return };
    for seed in seeds() {
        run_scenario(seed, 4, 400, Some(&db)).await;
    }
}
