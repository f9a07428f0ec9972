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
                        shape::check_state_vector(payload)
                            .map_err(|e| Error::BadFrame(format!("state vector: {e}")))?;
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

/// Decodes a stored row (see `shape::check_stored`).
pub(crate) fn decode_stored_update(raw: &[u8]) -> Result<Update, Error> {
    shape::check_stored(raw).map_err(Error::InvalidUpdate)?;
    guarded(|| Update::decode_v1(raw)).map_err(Error::InvalidUpdate)
}

/// Decodes a v1 update so that nothing malformed ever reaches a document.
pub fn decode_update(raw: &[u8]) -> Result<Update, Error> {
    shape::check_update(raw).map_err(Error::InvalidUpdate)?;
    guarded(|| Update::decode_v1(raw)).map_err(Error::InvalidUpdate)
}

pub(crate) use shape::check_dependencies;

/// A walk over the v1 encodings before yrs decodes them, for two things yrs's decoders do
/// with hostile input (both found by the fuzzers):
/// - they reserve memory by the counts the input declares, and a hash map's reservation
///   writes its control bytes at once: an 8-byte SyncStep1 declaring 100 M entries touched
///   112 MiB and 81 ms of CPU before failing on the missing bytes;
/// - they decode nested `Any` values recursively, so deep enough nesting overflows the
///   stack (the whole process dies);
/// - the deprecated JSON content does not survive yrs's own encode/decode round trip.
///
/// The walk allocates nothing: it checks that every count fits in the bytes that follow
/// (each counted element takes at least one byte, or two) and that `Any` values nest at
/// most `MAX_DEPTH` deep. It mirrors yrs 0.28's v1 decoder; whatever it does not recognise
/// (a truncated input, an unknown tag) it leaves to yrs, which refuses it.
mod shape {
    /// Deeper than any document a person writes; far below what overflows a stack.
    const MAX_DEPTH: usize = 64;

    enum Stop {
        /// The input is not one we can judge (truncated, unknown tag): yrs decides.
        Unknown,
        /// The input declares more than it holds, or nests too deeply.
        Refuse(String),
    }

    type Step<T = ()> = Result<T, Stop>;

    struct Walk<'a> {
        buf: &'a [u8],
        pos: usize,
        /// What the update needs that it does not bring itself (see `check_dependencies`).
        deps: Deps,
        /// Stored rows written before the JSON-content refusal still load.
        allow_json: bool,
    }

    #[derive(Default)]
    struct Deps {
        /// Per client: the first clock of its blocks here, and the clock after them.
        ranges: Vec<(u64, u64, u64)>,
        /// Ids the blocks refer to (origins, parents) and deleted ranges' ends.
        refs: Vec<(u64, u64)>,
        /// Skip blocks (gaps inside an update, from merged updates): client, start, end.
        skips: Vec<(u64, u64, u64)>,
    }

    impl<'a> Walk<'a> {
        fn new(buf: &'a [u8]) -> Walk<'a> {
            Walk { buf, pos: 0, deps: Deps::default(), allow_json: false }
        }

        /// An id a block refers to: a client (u64) and a clock (u32, as yrs reads them).
        fn id(&mut self) -> Step {
            let client = self.var()?;
            let clock = self.var_as(32)?;
            self.deps.refs.push((client, clock + 1));
            Ok(())
        }
    }

    impl Walk<'_> {
        fn left(&self) -> usize {
            self.buf.len() - self.pos
        }

        fn byte(&mut self) -> Step<u8> {
            let b = *self.buf.get(self.pos).ok_or(Stop::Unknown)?;
            self.pos += 1;
            Ok(b)
        }

        /// A varint as yrs reads it: up to 11 bytes, each adding 7 bits shifted by
        /// `wrapping_shl` (so for a u32, bits past 32 wrap around rather than overflow).
        /// `bits` is the width yrs reads the field as (32 or 64); the value is what yrs
        /// gets, which is what it reserves by. Signed varints end the same way, so
        /// skipping one is reading it as either.
        fn var_as(&mut self, bits: u32) -> Step<u64> {
            let mut value = 0u64;
            let mut shift = 0u32;
            loop {
                let b = self.byte()?;
                let part = u64::from(b & 0x7f);
                value |= if bits == 32 {
                    u64::from((part as u32).wrapping_shl(shift))
                } else {
                    part.wrapping_shl(shift)
                };
                shift += 7;
                if b < 0x80 {
                    return Ok(value);
                }
                if shift > 70 {
                    return Err(Stop::Unknown); // yrs: invalid varint
                }
            }
        }

        fn var(&mut self) -> Step<u64> {
            self.var_as(64)
        }

        fn skip(&mut self, n: u64) -> Step {
            if n > self.left() as u64 {
                return Err(Stop::Unknown);
            }
            self.pos += n as usize;
            Ok(())
        }

        /// A length-prefixed string or buffer.
        fn bytes(&mut self) -> Step {
            self.slice().map(drop)
        }

        fn slice(&mut self) -> Step<&[u8]> {
            let n = self.var_as(32)?; // yrs reads string and buffer lengths as u32
            let start = self.pos;
            self.skip(n)?;
            Ok(&self.buf[start..self.pos])
        }

        /// A count (read as a `bits`-wide varint, as yrs reads it) of elements that take at
        /// least `each` bytes apiece.
        fn count(&mut self, bits: u32, each: u64, what: &str) -> Step<u64> {
            let n = self.var_as(bits)?;
            if n.saturating_mul(each) > self.left() as u64 {
                return Err(Stop::Refuse(format!("declares {n} {what} in {} bytes", self.left())));
            }
            Ok(n)
        }

        fn any(&mut self, depth: usize) -> Step {
            if depth > MAX_DEPTH {
                return Err(Stop::Refuse(format!("values nested deeper than {MAX_DEPTH}")));
            }
            match self.byte()? {
                127 | 126 | 121 | 120 => Ok(()),
                125 => self.var().map(drop),
                124 => self.skip(4),
                123 | 122 => self.skip(8),
                119 | 116 => self.bytes(),
                118 => {
                    for _ in 0..self.count(64, 2, "map entries")? {
                        self.bytes()?;
                        self.any(depth + 1)?;
                    }
                    Ok(())
                }
                117 => {
                    for _ in 0..self.count(64, 1, "array items")? {
                        self.any(depth + 1)?;
                    }
                    Ok(())
                }
                _ => Err(Stop::Unknown),
            }
        }

        /// Skips an item's content; returns its length in clock units, as yrs counts it.
        fn content(&mut self, info: u8) -> Step<u64> {
            match info & 0b1111 {
                1 => self.var_as(32), // deleted: a length, not a count
                // ContentJSON: deprecated (Yjs has written ContentAny since v13), and yrs
                // does not read back what it writes of it (its decoder takes one string
                // more than the count), so a document holding it could not be reloaded
                // after compaction. Found by the fuzzer's round-trip oracle.
                2 if self.allow_json => {
                    // yrs reads one more string than the count says.
                    let n = self.count(32, 1, "JSON values")?;
                    for _ in 0..=n {
                        self.bytes()?;
                    }
                    Ok(n + 1)
                }
                2 => Err(Stop::Refuse("deprecated JSON content (use Any content)".into())),
                4 => {
                    // A string is as long as its UTF-16 code units.
                    let text = std::str::from_utf8(self.slice()?).map_err(|_| Stop::Unknown)?;
                    Ok(text.encode_utf16().count() as u64)
                }
                3 | 5 => self.bytes().map(|()| 1), // binary, embed (JSON text)
                6 => {
                    self.bytes()?; // format: key, JSON text
                    self.bytes().map(|()| 1)
                }
                7 => match self.byte()? {
                    3 => self.bytes().map(|()| 1), // XmlElement: its tag name
                    0..=2 | 4..=6 | 9 | 15 => Ok(1),
                    _ => Err(Stop::Unknown),
                },
                8 => {
                    let n = self.count(32, 1, "values")?;
                    for _ in 0..n {
                        self.any(0)?;
                    }
                    Ok(n)
                }
                9 => {
                    self.bytes()?; // subdocument: guid, options
                    self.any(0).map(|()| 1)
                }
                _ => Err(Stop::Unknown),
            }
        }

        /// Skips one block; returns its length in clock units.
        fn block(&mut self) -> Step<u64> {
            let info = self.byte()?;
            if info == 10 || info == 0 {
                return self.var_as(32); // skip / GC: a length
            }
            if info & 0x80 != 0 {
                self.id()?; // origin
            }
            if info & 0x40 != 0 {
                self.id()?; // right origin
            }
            if info & 0xc0 == 0 {
                if self.var_as(32)? == 1 {
                    self.bytes()?; // parent: a root type's name
                } else {
                    self.id()?; // parent: an item's id
                }
                if info & 0x20 != 0 {
                    self.bytes()?; // parent sub (map key)
                }
            }
            self.content(info)
        }

        fn update(&mut self) -> Step {
            for _ in 0..self.count(32, 3, "clients")? {
                let blocks = self.count(32, 1, "blocks")?;
                let client = self.var()?;
                // Clocks are u32 in yrs: blocks that run past u32::MAX wrap around and
                // leave a gap in the client's blocks, after which yrs panics on every
                // encoding of the document (found by the apply fuzzer).
                let start = self.var_as(32)?;
                let mut clock = start;
                for _ in 0..blocks {
                    let skip = self.buf.get(self.pos) == Some(&10);
                    let len = self.block()?;
                    if skip {
                        self.deps.skips.push((client, clock, clock + len));
                    }
                    clock += len;
                    if clock > u64::from(u32::MAX) {
                        return Err(Stop::Refuse("clocks past 2^32".into()));
                    }
                }
                self.deps.ranges.push((client, start, clock));
            }
            // The delete set.
            for _ in 0..self.count(32, 2, "deleting clients")? {
                let client = self.var()?;
                for _ in 0..self.count(32, 2, "deleted ranges")? {
                    let (clock, len) = (self.var_as(32)?, self.var_as(32)?);
                    if clock + len > u64::from(u32::MAX) {
                        return Err(Stop::Refuse("deleted range past 2^32".into()));
                    }
                    self.deps.refs.push((client, clock + len));
                }
            }
            Ok(())
        }
    }

    /// Fails closed: what the walk cannot follow (a truncated input, an unknown tag) yrs
    /// refuses too, and refusing it here means no part of an input goes unchecked.
    fn verdict(step: Step) -> Result<(), String> {
        match step {
            Ok(()) => Ok(()),
            Err(Stop::Unknown) => Err("malformed update".into()),
            Err(Stop::Refuse(why)) => Err(why),
        }
    }

    pub(super) fn check_update(raw: &[u8]) -> Result<(), String> {
        verdict(Walk::new(raw).update())
    }

    /// For rows already stored: the same bounds on counts, depth and clocks (they protect
    /// the process), but JSON content, refused on the way in only since issue #9, loads.
    pub(super) fn check_stored(raw: &[u8]) -> Result<(), String> {
        let mut walk = Walk::new(raw);
        walk.allow_json = true;
        verdict(walk.update())
    }

    /// Whether the update brings everything it builds on, given what the document has
    /// seen (`known`: clock per client, its state vector). An update that does not would
    /// leave yrs a "pending" part, and yrs's handling of those is where the fuzzer found a
    /// use-after-free (a second update overlapping a pending one) and an unmergeable
    /// state. A client of this server never sends one: everything it builds on came from
    /// the server, and its resync is a diff against the server's own state vector.
    pub(crate) fn check_dependencies(raw: &[u8], known: impl Fn(u64) -> u64) -> Result<(), String> {
        let mut walk = Walk::new(raw);
        if let Err(Stop::Refuse(why)) = walk.update() {
            return Err(why);
        }
        let deps = walk.deps;
        let has = |client: u64| {
            let brought = deps.ranges.iter().filter(|r| r.0 == client).map(|r| r.2).max();
            known(client).max(brought.unwrap_or(0))
        };
        for &(client, start, _) in &deps.ranges {
            if start > known(client) {
                return Err(format!(
                    "update starts at clock {start} of client {client}, which this document has only up to {}",
                    known(client)
                ));
            }
        }
        // Blocks after a gap the document has not filled would wait for it, too.
        for &(client, _, gap_end) in &deps.skips {
            let end = deps.ranges.iter().filter(|r| r.0 == client).map(|r| r.2).max();
            if gap_end > known(client) && end.is_some_and(|end| end > gap_end) {
                return Err(format!(
                    "update skips changes of client {client} this document does not have"
                ));
            }
        }
        for &(client, needed) in &deps.refs {
            if needed > has(client) {
                return Err(format!(
                    "update refers to changes of client {client} this document does not have"
                ));
            }
        }
        Ok(())
    }

    pub(super) fn check_state_vector(raw: &[u8]) -> Result<(), String> {
        let mut walk = Walk::new(raw);
        verdict(walk.count(32, 2, "clients").map(drop))
    }
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

    /// Updates of every kind of content pass the shape check (a false refusal would lose a
    /// person's edit), and yrs decodes each.
    #[test]
    fn real_updates_of_every_kind_pass_the_shape_check() {
        use yrs::types::xml::{XmlElementPrelim, XmlFragment, XmlTextPrelim};
        use yrs::{Any, Array, ArrayPrelim, Map, MapPrelim, WriteTxn, Xml};
        let doc = Doc::new();
        let mut updates = Vec::new();
        let mut record = |doc: &Doc, change: &dyn Fn(&mut yrs::TransactionMut)| {
            let mut txn = doc.transact_mut();
            change(&mut txn);
            updates.push(txn.encode_update_v1());
        };
        record(&doc, &|txn| {
            let t = txn.get_or_insert_text("t");
            t.insert(txn, 0, "hello world");
            t.insert(txn, 11, " ünïcode ✓");
            t.format(txn, 0, 5, [("bold".into(), Any::Bool(true))].into_iter().collect());
            t.insert_embed(
                txn,
                3,
                Any::from(std::collections::HashMap::from([(
                    "img".to_string(),
                    Any::from("x.png"),
                )])),
            );
        });
        record(&doc, &|txn| {
            let t = txn.get_or_insert_text("t");
            t.remove_range(txn, 2, 4);
        });
        record(&doc, &|txn| {
            let m = txn.get_or_insert_map("m");
            m.insert(txn, "n", 42.5);
            m.insert(txn, "i", -7i64);
            m.insert(txn, "b", true);
            m.insert(txn, "s", "str");
            m.insert(txn, "buf", Any::Buffer(vec![1u8, 2, 3].into()));
            m.insert(
                txn,
                "nested",
                Any::from(vec![
                    Any::from(vec![Any::Null, Any::Undefined]),
                    Any::from(std::collections::HashMap::from([("k".to_string(), Any::from(1))])),
                ]),
            );
            m.insert(txn, "inner", MapPrelim::default());
            m.insert(txn, "list", ArrayPrelim::from(vec![1, 2, 3]));
        });
        record(&doc, &|txn| {
            let a = txn.get_or_insert_array("a");
            a.insert_range(txn, 0, [1, 2, 3]);
            a.remove_range(txn, 1, 1);
        });
        record(&doc, &|txn| {
            let x = txn.get_or_insert_xml_fragment("default");
            let p = x.insert(txn, 0, XmlElementPrelim::empty("paragraph"));
            p.insert_attribute(txn, "textAlign", "left");
            let text = p.insert(txn, 0, XmlTextPrelim::new("typed"));
            text.format(
                txn,
                0,
                2,
                [("italic".into(), Any::from(std::collections::HashMap::<String, Any>::new()))]
                    .into_iter()
                    .collect(),
            );
        });
        updates.push(doc.transact().encode_state_as_update_v1(&StateVector::default()));
        for (i, update) in updates.iter().enumerate() {
            assert_eq!(shape::check_update(update), Ok(()), "update {i}");
            decode_update(update).unwrap_or_else(|e| panic!("update {i}: {e}"));
        }
        let sv = doc.transact().state_vector().encode_v1();
        assert_eq!(shape::check_state_vector(&sv), Ok(()));
    }

    #[test]
    fn declared_counts_beyond_the_input_and_deep_nesting_are_refused() {
        // 100 M state-vector entries declared in 6 bytes.
        assert!(shape::check_state_vector(&[0x80, 0xc2, 0xd7, 0x2f, 1, 1]).is_err());
        // An update with 1 G clients.
        assert!(decode_update(&[0x80, 0x80, 0x80, 0x80, 4, 0, 0]).is_err());
        // The same count in 11 bytes, wrapping as yrs reads a u32 (found by the fuzzer).
        let wrapped = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f, 1, 1];
        assert!(shape::check_state_vector(&wrapped).is_err());
        // A map value nested 100 000 deep (an array in an array in …): Any content in a
        // root map entry, info 8 | parent sub.
        let mut deep = vec![1, 1, 5, 0, 0x28, 1, 1, b'm', 1, b'k', 1];
        for _ in 0..100_000 {
            deep.extend_from_slice(&[117, 1]);
        }
        deep.extend_from_slice(&[126, 0]);
        let err = decode_update(&deep).unwrap_err();
        assert!(err.to_string().contains("nested"), "{err}");
        // A string length that wraps as a u32 (3 to yrs) must not make the walk give up
        // and wave the rest through (found in review).
        let mut wrapped =
            vec![1, 2, 5, 0, 4, 1, 1, b't', 0x83, 0x80, 0x80, 0x80, 0x10, b'a', b'b', b'c'];
        wrapped.extend_from_slice(&[0x28, 1, 1, b'm', 1, b'k', 1]);
        for _ in 0..100_000 {
            wrapped.extend_from_slice(&[117, 1]);
        }
        wrapped.extend_from_slice(&[126, 0]);
        let err = decode_update(&wrapped).unwrap_err();
        assert!(err.to_string().contains("nested"), "{err}");
        // Truncated input is refused by the walk itself.
        assert!(shape::check_update(&[1, 1, 5, 0, 0x28, 1, 1]).is_err());
    }

    #[test]
    fn updates_that_build_on_unseen_changes_are_refused() {
        let a = Doc::with_client_id(1);
        let text = a.get_or_insert_text("t");
        let first = {
            let mut txn = a.transact_mut();
            text.insert(&mut txn, 0, "hello");
            txn.encode_update_v1()
        };
        let second = {
            let mut txn = a.transact_mut();
            text.insert(&mut txn, 5, " world");
            txn.encode_update_v1()
        };
        let nothing = |_| 0;
        let has_first = |client| if client == 1 { 5 } else { 0 };
        assert_eq!(check_dependencies(&first, nothing), Ok(()));
        assert!(check_dependencies(&second, nothing).is_err(), "starts past what is known");
        assert_eq!(check_dependencies(&second, has_first), Ok(()));
        // Another client's edit that builds on `first` (its origin is client 1's text).
        let b = Doc::with_client_id(2);
        b.transact_mut().apply_update(decode_update(&first).expect("decodes")).expect("applies");
        let reply = {
            let t = b.get_or_insert_text("t");
            let mut txn = b.transact_mut();
            t.insert(&mut txn, 2, "-");
            txn.encode_update_v1()
        };
        assert!(check_dependencies(&reply, nothing).is_err(), "refers to unseen changes");
        assert_eq!(check_dependencies(&reply, has_first), Ok(()));
        // A full state always brings everything it needs.
        let full = b.transact().encode_state_as_update_v1(&StateVector::default());
        assert_eq!(check_dependencies(&full, nothing), Ok(()));
        // A resync diff against what the server has is complete too.
        let diff = b.transact().encode_state_as_update_v1(&a.transact().state_vector());
        assert_eq!(check_dependencies(&diff, has_first), Ok(()));
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
