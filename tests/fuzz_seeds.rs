//! Writes the fuzz targets' seed corpus (fuzz/corpus/*) from the same frames and tokens the
//! tests use. Run by hand when the formats change:
//! `cargo test --test fuzz_seeds -- --ignored`

mod common;

use std::path::Path;

use tandem::protocol;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::{ClientID, Doc, ReadTxn, StateVector, Text, Transact};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

#[test]
#[ignore = "writes files; run by hand"]
fn write_fuzz_seeds() {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let insert = {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "hello");
        txn.encode_update_v1()
    };
    let delete = {
        let mut txn = doc.transact_mut();
        text.remove_range(&mut txn, 1, 2);
        txn.encode_update_v1()
    };
    let full = doc.transact().encode_state_as_update_v1(&StateVector::default());
    let mut presence = AwarenessUpdate { clients: Default::default() };
    presence.clients.insert(
        ClientID::new(7),
        AwarenessUpdateEntry {
            clock: 1,
            json: r##"{"user":{"name":"Ada","color":"#e03131"}}"##.into(),
        },
    );
    let frames: Vec<(&str, Vec<u8>)> = vec![
        ("step1-empty", protocol::sync_step1(&StateVector::default()).to_vec()),
        ("step1", protocol::sync_step1(&doc.transact().state_vector()).to_vec()),
        ("step2", protocol::sync_step2(&full).to_vec()),
        ("update-insert", protocol::sync_update(&insert).to_vec()),
        ("update-delete", protocol::sync_update(&delete).to_vec()),
        ("awareness", protocol::awareness(&presence).to_vec()),
        ("query-awareness", vec![3]),
        ("two-messages", [protocol::sync_update(&insert).to_vec(), vec![3]].concat()),
    ];
    for (name, frame) in &frames {
        write("frame", name, frame);
        write("apply", name, frame);
    }
    let secret = "fuzz secret"; // the key the token target verifies with
    let now = common::now_secs();
    let tokens = [
        (
            "valid",
            common::mint(
                secret,
                serde_json::json!({"sub": "a", "docs": [{"p": "team-42.*", "a": "rw"}, {"p": "a", "a": "r"}]}),
            ),
        ),
        ("admin", common::mint(secret, serde_json::json!({"sub": "a", "admin": true, "jti": "j"}))),
        (
            "expired",
            common::mint(secret, serde_json::json!({"sub": "a", "exp": now - 100, "docs": []})),
        ),
        ("other-key", common::mint("nope", serde_json::json!({"sub": "a", "docs": []}))),
        ("alg-none", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.".to_string()),
    ];
    for (name, token) in tokens {
        write("token", name, token.as_bytes());
    }
}
