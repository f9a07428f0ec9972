//! The ceiling: a bare WebSocket relay with no CRDT and no storage. Every binary frame goes
//! to every connection on the same path (sender included, as the Yjs servers do). The only
//! protocol it knows is answering a SyncStep1 with an empty SyncStep2, so the same load
//! generator can count a client as joined.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

type Rooms = Arc<Mutex<HashMap<String, Vec<(u64, mpsc::UnboundedSender<Message>)>>>>;

/// An empty SyncStep2: sync message, step 2, a 2-byte empty v1 update.
const EMPTY_STEP2: [u8; 5] = [0, 1, 2, 0, 0];

pub(crate) async fn serve(listen: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("relay listening addr={}", listener.local_addr()?);
    let rooms: Rooms = Arc::default();
    let mut next_id = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let mut path = String::new();
            // The signature is tungstenite's; its error type is large by design.
            #[allow(clippy::result_large_err)]
            let callback = |req: &Request, resp: Response| {
                path = req.uri().path().to_string();
                Ok(resp)
            };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = mpsc::unbounded_channel();
            rooms
                .lock()
                .expect("relay lock")
                .entry(path.clone())
                .or_default()
                .push((id, tx.clone()));
            // Same write batching as Tandem (everything queued, then one flush), so the
            // ceiling is not lowered by a syscall per frame.
            let writer = tokio::spawn(async move {
                while let Some(msg) = rx.recv().await {
                    if sink.feed(msg).await.is_err() {
                        break;
                    }
                    for _ in 1..64 {
                        let Ok(msg) = rx.try_recv() else { break };
                        if sink.feed(msg).await.is_err() {
                            return;
                        }
                    }
                    if sink.flush().await.is_err() {
                        break;
                    }
                }
            });
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Binary(bytes) = msg else { continue };
                if bytes.first() == Some(&0) && matches!(bytes.get(1), Some(0) | Some(1)) {
                    if bytes.get(1) == Some(&0) {
                        let _ = tx.send(Message::Binary(EMPTY_STEP2.to_vec().into()));
                    }
                    continue;
                }
                let peers: Vec<_> = rooms
                    .lock()
                    .expect("relay lock")
                    .get(&path)
                    .map(|p| p.iter().map(|(_, tx)| tx.clone()).collect())
                    .unwrap_or_default();
                for peer in peers {
                    let _ = peer.send(Message::Binary(bytes.clone()));
                }
            }
            if let Some(peers) = rooms.lock().expect("relay lock").get_mut(&path) {
                peers.retain(|(peer, _)| *peer != id);
            }
            writer.abort();
        });
    }
}
