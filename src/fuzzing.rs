//! Entry points for the fuzz targets in `fuzz/` (compiled only under `cfg(fuzzing)`, which
//! cargo-fuzz sets): the real ingestion paths with nothing mocked, plus oracles that a
//! crash-free run is also a correct one.

use std::sync::Arc;

use bytes::Bytes;
use std::time::Duration;

use tokio::sync::oneshot;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

use crate::auth::Keys;
use crate::id::{DocId, PeerId};
use crate::outbox::{Outbox, SlowLimits};
use crate::protocol::{self, FrameLimits};
use crate::room::core::{Limits, NewPeer, RoomCore, build_doc};
use crate::store::{Appended, Loaded};

/// A document that already has content (text, a map, deletions), as one stored snapshot.
fn seeded() -> Loaded {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "hello fuzzing world");
        text.remove_range(&mut txn, 5, 8);
        yrs::Map::insert(&map, &mut txn, "k", "v");
    }
    let snapshot = doc.transact().encode_state_as_update_v1(&StateVector::default());
    Loaded { snapshot: Some(snapshot), tail: Vec::new(), head: 1, tail_bytes: 0, epoch: 0 }
}

/// One peer's frame through decode and the room core, on a document with content: the core
/// must not panic, and what it stores must rebuild the document it holds.
pub fn frame_into_room(data: &[u8]) {
    let loaded = seeded();
    let Ok(doc) = build_doc("fuzz", &loaded) else { return };
    let mut core = RoomCore::new(doc, &loaded, Limits::for_tests(), Arc::default());
    let outbox =
        Outbox::detached(SlowLimits { max_bytes: 1 << 30, stall: Duration::from_secs(20) });
    let tx = outbox.clone();
    let (kick, _kicked) = oneshot::channel();
    let (reply, _joined) = oneshot::channel();
    let peer = PeerId::new();
    core.join(NewPeer { id: peer, browser: None, can_write: true, outbox: tx, kick }, reply);
    let frame = Bytes::copy_from_slice(data);
    let Ok(msgs) = protocol::decode_frame(&frame, &FrameLimits::default()) else { return };
    for msg in msgs {
        core.incoming(peer, msg);
        if core.is_poisoned() {
            return; // the room rebuilds from the store here; nothing of it was stored
        }
    }
    let mut stored = loaded.clone();
    if let Some(rows) = core.take_rows() {
        let bytes = rows.iter().map(|r| r.len() as u64).sum();
        let n = rows.len() as i64;
        stored.tail.extend(rows.iter().map(|r| r.to_vec()));
        core.committed(Appended { first: 2, last: 1 + n, epoch: 0 }, bytes);
    }
    core.release();
    outbox.take_messages();
    // Oracle: the stored rows rebuild a document with the same state as the room's.
    let rebuilt = build_doc("fuzz", &stored).expect("stored rows always rebuild");
    let (a, b) = (
        core.state_for_tests(),
        rebuilt.transact().encode_state_as_update_v1(&StateVector::default()),
    );
    let (da, db) = (Doc::new(), Doc::new());
    for (doc, update) in [(&da, a), (&db, b)] {
        let update = Update::decode_v1(&update).expect("own encoding decodes");
        doc.transact_mut().apply_update(update).expect("own encoding applies");
    }
    let text = |d: &Doc| d.get_or_insert_text("t").get_string(&d.transact());
    assert_eq!(text(&da), text(&db), "stored rows and room disagree");
    assert_eq!(da.transact().state_vector().encode_v1(), db.transact().state_vector().encode_v1());
}

/// A token string through verification and the access decision.
pub fn token_decision(data: &[u8]) {
    thread_local! {
        static KEYS: Keys = Keys::from_config(Some("fuzz secret"), &[]).ok().flatten().expect("keys");
    }
    let Ok(token) = std::str::from_utf8(data) else { return };
    KEYS.with(|keys| {
        if let Ok(identity) = keys.verify(token, crate::auth::now_secs()) {
            for doc in ["a", "team-42.plan", "x.y.z"] {
                let doc = DocId::parse(doc).expect("valid");
                let _ = identity.access(&doc);
            }
        }
    });
}
