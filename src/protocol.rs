//! y-websocket framing over `yrs::sync`: bytes in, typed messages out, and the few frames the
//! server sends. No IO and no document access happen here, so connection tasks can decode and
//! validate in parallel before anything reaches a room.
//!
//! We decode the outer frame ourselves instead of using `yrs::sync::Message::decode` because
//! we need the raw update bytes (to store and relay without re-encoding), and because we must
//! reject a few inputs yrs would accept or trip over: unknown tags, awareness states that are
//! not JSON (they would throw in every browser), and client ids past 2^53.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::sync::protocol::{
    MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC, MSG_SYNC_STEP_1, MSG_SYNC_STEP_2,
    MSG_SYNC_UPDATE,
};
use yrs::updates::decoder::Decode;
use yrs::{ClientID, StateVector, Update};

use crate::error::Error;

/// Largest client id Yjs produces (53 bits, a JavaScript safe integer).
const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// One decoded message from a client.
#[derive(Debug)]
pub enum Incoming {
    /// The client's state vector: it wants a SyncStep2 with what it is missing.
    SyncStep1(StateVector),
    /// Raw v1 update bytes (from SyncStep2 or Update; the server treats both alike). Only the
    /// framing is checked here: `yrs::Update` is not `Send`, so the room decodes it, with
    /// `decode_update`, right before applying.
    Update(Bytes),
    /// Presence. Rooms coalesce these per tick, so the frame itself is not kept.
    Awareness { update: AwarenessUpdate },
    /// The client asks for all awareness states.
    QueryAwareness,
}

/// Bounds on what one frame may carry, checked while decoding so that a hostile frame
/// is refused before it costs memory (a million tiny awareness states fit in 8 MiB).
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Awareness entries in one frame (a connection may not announce more ids anyway).
    pub max_awareness_entries: usize,
    /// Bytes of one awareness state's JSON.
    pub max_awareness_bytes: usize,
}

impl Default for FrameLimits {
    fn default() -> FrameLimits {
        FrameLimits { max_awareness_entries: 8, max_awareness_bytes: 65536 }
    }
}

/// Decodes every message packed into one binary WebSocket frame.
pub fn decode_frame(frame: &Bytes, limits: &FrameLimits) -> Result<Vec<Incoming>, Error> {
    let mut cursor = Cursor::new(frame);
    let mut out = Vec::with_capacity(1);
    while cursor.has_content() {
        let tag: u64 = cursor.read_var().map_err(bad_frame)?;
        match tag {
            t if t == MSG_SYNC as u64 => {
                let sync_tag: u64 = cursor.read_var().map_err(bad_frame)?;
                let payload = cursor.read_buf().map_err(bad_frame)?;
                match sync_tag {
                    t if t == MSG_SYNC_STEP_1 as u64 => {
                        let sv = guarded(|| StateVector::decode_v1(payload))
                            .map_err(|e| Error::BadFrame(format!("state vector: {e}")))?;
                        out.push(Incoming::SyncStep1(sv));
                    }
                    t if t == MSG_SYNC_STEP_2 as u64 || t == MSG_SYNC_UPDATE as u64 => {
                        out.push(Incoming::Update(frame.slice_ref(payload)));
                    }
                    other => return Err(Error::BadFrame(format!("unknown sync message {other}"))),
                }
            }
            t if t == MSG_AWARENESS as u64 => {
                let payload = cursor.read_buf().map_err(bad_frame)?;
                out.push(Incoming::Awareness { update: decode_awareness(payload, limits)? });
            }
            t if t == MSG_QUERY_AWARENESS as u64 => out.push(Incoming::QueryAwareness),
            t if t == MSG_AUTH as u64 => return Err(Error::UnknownMessage(tag)),
            other => return Err(Error::UnknownMessage(other)),
        }
    }
    if out.is_empty() {
        return Err(Error::BadFrame("empty frame".into()));
    }
    Ok(out)
}

/// Decodes a v1 update so that nothing malformed ever reaches a document.
pub fn decode_update(raw: &[u8]) -> Result<Update, Error> {
    guarded(|| Update::decode_v1(raw)).map_err(Error::InvalidUpdate)
}

fn decode_awareness(payload: &[u8], limits: &FrameLimits) -> Result<AwarenessUpdate, Error> {
    let mut cursor = Cursor::new(payload);
    let bad = |e: yrs::encoding::read::Error| Error::InvalidAwareness(e.to_string());
    let len: u64 = cursor.read_var().map_err(bad)?;
    // Each entry takes at least three bytes, which bounds `len` by the payload.
    if len > payload.len() as u64 / 3 + 1 {
        return Err(Error::InvalidAwareness("entry count exceeds payload".into()));
    }
    if len > limits.max_awareness_entries as u64 {
        return Err(Error::TooManyAwarenessIds { limit: limits.max_awareness_entries });
    }
    let mut update = AwarenessUpdate { clients: Default::default() };
    for _ in 0..len {
        let client_id: u64 = cursor.read_var().map_err(bad)?;
        if client_id > MAX_CLIENT_ID {
            return Err(Error::InvalidAwareness(format!("client id {client_id} exceeds 2^53")));
        }
        let clock: u32 = cursor.read_var().map_err(bad)?;
        let json = cursor.read_string().map_err(bad)?;
        if json.len() > limits.max_awareness_bytes {
            return Err(Error::AwarenessTooLarge { limit: limits.max_awareness_bytes });
        }
        serde_json::from_str::<serde::de::IgnoredAny>(json)
            .map_err(|e| Error::InvalidAwareness(format!("state is not JSON: {e}")))?;
        let entry = AwarenessUpdateEntry { clock, json: json.into() };
        update.clients.insert(ClientID::new(client_id), entry);
    }
    if cursor.has_content() {
        return Err(Error::InvalidAwareness("trailing bytes".into()));
    }
    Ok(update)
}

/// Runs a yrs decoder, turning both its errors and its internal assertion panics (which
/// hostile input can reach in debug builds) into a message.
fn guarded<T, E: std::fmt::Display>(decode: impl FnOnce() -> Result<T, E>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(decode)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("decoder rejected input".into()),
    }
}

fn bad_frame(e: yrs::encoding::read::Error) -> Error {
    Error::BadFrame(e.to_string())
}

pub fn sync_step1(sv: &StateVector) -> Bytes {
    use yrs::updates::encoder::Encode;
    sync_frame(MSG_SYNC_STEP_1, &sv.encode_v1())
}

pub fn sync_step2(update: &[u8]) -> Bytes {
    sync_frame(MSG_SYNC_STEP_2, update)
}

pub fn sync_update(update: &[u8]) -> Bytes {
    sync_frame(MSG_SYNC_UPDATE, update)
}

/// The y-protocols auth message `permission denied` (message type 2, sub-type 0).
pub fn permission_denied(reason: &str) -> Bytes {
    let mut buf = Vec::with_capacity(reason.len() + 4);
    buf.write_var(MSG_AUTH);
    buf.write_var(0u8);
    buf.write_string(reason);
    Bytes::from(buf)
}

fn sync_frame(kind: u8, payload: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(payload.len() + 12);
    buf.write_var(MSG_SYNC);
    buf.write_var(kind);
    buf.write_buf(payload);
    Bytes::from(buf)
}

pub fn awareness(update: &AwarenessUpdate) -> Bytes {
    use yrs::updates::encoder::Encode;
    let mut buf = Vec::new();
    buf.write_var(MSG_AWARENESS);
    buf.write_buf(update.encode_v1());
    Bytes::from(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::encoder::Encode;
    use yrs::{Doc, GetString, ReadTxn, Text, Transact};

    fn update_bytes() -> Vec<u8> {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        text.push(&mut doc.transact_mut(), "hello");
        doc.transact().encode_state_as_update_v1(&StateVector::default())
    }

    #[test]
    fn round_trips_server_frames() {
        let raw = update_bytes();
        let frame = sync_update(&raw);
        let msgs = decode_frame(&frame, &FrameLimits::default()).expect("valid frame");
        let Incoming::Update(u) = &msgs[0] else { panic!("expected update") };
        assert_eq!(&u[..], &raw[..]);
        let doc = Doc::new();
        doc.transact_mut().apply_update(decode_update(u).expect("decodes")).expect("applies");
        assert_eq!(doc.get_or_insert_text("t").get_string(&doc.transact()), "hello");

        let sv = StateVector::default();
        let msgs = decode_frame(&sync_step1(&sv), &FrameLimits::default()).expect("valid");
        assert!(matches!(&msgs[0], Incoming::SyncStep1(s) if s.encode_v1() == sv.encode_v1()));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for input in [
            vec![],
            vec![0],
            vec![0, 2],
            vec![0, 2, 10, 1, 2],
            vec![0, 9, 0],
            vec![7, 0],
            vec![2, 0],
            vec![1, 5, 1, 1, 1, b'{'],
            vec![0xff; 16],
        ] {
            assert!(
                decode_frame(&Bytes::from(input.clone()), &FrameLimits::default()).is_err(),
                "{input:?}"
            );
        }
    }

    #[test]
    fn rejects_update_that_is_not_yjs() {
        for bad in
            [&[200, 1, 2, 3, 4, 5, 6, 7][..], &[0xff, 0xff, 0xff], &[1, 1, 255, 255, 255, 255, 15]]
        {
            let err = decode_update(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidUpdate(_)), "{err:?}");
        }
    }

    #[test]
    fn awareness_limits_are_checked_while_decoding() {
        let mut update = AwarenessUpdate { clients: Default::default() };
        for id in 0..9 {
            update
                .clients
                .insert(ClientID::new(id), AwarenessUpdateEntry { clock: 1, json: "{}".into() });
        }
        let err = decode_frame(&awareness(&update), &FrameLimits::default()).unwrap_err();
        assert_eq!(err.close_code(), 1008);
        let mut big = AwarenessUpdate { clients: Default::default() };
        let json = format!("{{\"a\":\"{}\"}}", "x".repeat(70_000));
        big.clients.insert(ClientID::new(1), AwarenessUpdateEntry { clock: 1, json: json.into() });
        let err = decode_frame(&awareness(&big), &FrameLimits::default()).unwrap_err();
        assert_eq!(err.close_code(), 1009);
    }

    #[test]
    fn awareness_round_trips() {
        let mut update = AwarenessUpdate { clients: Default::default() };
        update
            .clients
            .insert(ClientID::new(7), AwarenessUpdateEntry { clock: 3, json: "{\"a\":1}".into() });
        let frame = awareness(&update);
        let msgs = decode_frame(&frame, &FrameLimits::default()).expect("valid");
        let Incoming::Awareness { update: got } = &msgs[0] else { panic!() };
        assert_eq!(got, &update);
    }
}
