//! A peer's way out: ready WebSocket frames, written straight into its socket by whoever
//! has them (the room, for updates and replies; the connection, for pings and the close).
//!
//! Why not a channel to the connection task: under fan-out, handing every frame to 100
//! connection tasks cost a cross-thread wake-up per delivery, and each woken task re-polled
//! its read side (tungstenite zero-fills its read buffer on every attempt). Here the room
//! encodes a batch of frames once (server frames are unmasked, so the bytes are the same
//! for every peer), shares the buffer, and `try_write`s it into each socket: one syscall per
//! peer per batch, no wake-up. Only when a socket is full does the rest wait in the queue,
//! and the connection's writer task (`drain`) is woken to finish it when the socket drains.
//!
//! Too slow is decided by what the peer falls behind, not by a frame count: more than
//! `max_bytes` waiting (SyncStep2 replies, bounded on their own by the state budget, and
//! the close frame do not count), or nothing written for `stall` while something waits. A peer that is busy for a
//! second has a few hundred KiB waiting and is never dropped for it.
//!
//! The lock guards a queue of frames, never a document, and is held for no await.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Frames at most this large are copied into a batch's shared buffer; larger ones keep
/// their own bytes (a 20 MiB document state is never copied per batch).
const COPY_MAX: usize = 16 * 1024;
/// No stall limit (a day).
const FOREVER: Duration = Duration::from_secs(86_400);
/// Chunks handed to one `writev`.
const IOV_MAX: usize = 64;

/// When a peer counts as too slow (`--peer-max-queued-bytes`, `--peer-stall-secs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlowLimits {
    pub(crate) max_bytes: usize,
    pub(crate) stall: Duration,
}

/// The peer fell too far behind: close it (1013).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooSlow;

/// One ready chunk of frames and whether its bytes count against `max_bytes`.
struct Chunk {
    bytes: Bytes,
    counted: bool,
}

struct State {
    queue: VecDeque<Chunk>,
    /// Counted bytes in `queue`.
    queued: usize,
    /// The writer task owns the socket until the queue is empty: nobody else writes.
    draining: bool,
    /// No more frames are taken (the connection is closing or gone).
    sealed: bool,
    /// The last time bytes went into the socket, or the queue went from empty to not.
    progress: Instant,
    /// Why writing stopped (the socket failed); frames are dropped from then on.
    failed: Option<String>,
}

struct Inner {
    state: Mutex<State>,
    /// Wakes the writer task: the queue needs draining, or it is sealed.
    wake: Notify,
    /// None for a peer without a socket (the core's unit tests, the fuzzer): frames stay
    /// queued and are read back with `take_frames`.
    socket: Option<OwnedWriteHalf>,
    limits: SlowLimits,
}

/// A handle to one peer's outbound bytes; clones share it.
#[derive(Clone)]
pub(crate) struct Outbox {
    inner: Arc<Inner>,
}

impl Outbox {
    pub(crate) fn new(socket: OwnedWriteHalf, limits: SlowLimits) -> Outbox {
        Outbox::build(Some(socket), limits)
    }

    /// An outbox that writes nowhere: what is pushed stays queued (tests, fuzzing).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn detached(limits: SlowLimits) -> Outbox {
        Outbox::build(None, limits)
    }

    fn build(socket: Option<OwnedWriteHalf>, limits: SlowLimits) -> Outbox {
        let state = State {
            queue: VecDeque::new(),
            queued: 0,
            draining: false,
            sealed: false,
            progress: Instant::now(),
            failed: None,
        };
        Outbox {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                wake: Notify::new(),
                socket,
                limits,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves a consistent queue (every update is one
        // assignment), so a poisoned lock is still usable.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends ready frames (from `binary_frames` and the like) after everything before
    /// them: written at once if nothing waits and the socket takes them, else queued for
    /// the writer task. `counted`: whether their bytes count against the peer's limit.
    /// Err when the peer is too far behind; then nothing of `chunks` was sent or queued (a
    /// push to an empty queue is never refused, however large).
    pub(crate) fn push(&self, chunks: &[Bytes], counted: bool) -> Result<(), TooSlow> {
        let mut state = self.state();
        if state.sealed {
            // The connection is ending and will tell the room; nothing more to send.
            return Ok(());
        }
        let wake = self.push_locked(&mut state, chunks, counted)?;
        drop(state);
        if wake {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    /// `push` under the lock; true when the writer task must be woken.
    fn push_locked(
        &self,
        state: &mut State,
        chunks: &[Bytes],
        counted: bool,
    ) -> Result<bool, TooSlow> {
        if state.failed.is_some() {
            return Ok(false);
        }
        if !state.draining && state.queue.is_empty() {
            let written = match self.write_now(chunks) {
                Ok(written) => written,
                Err(e) => {
                    state.failed = Some(e.to_string());
                    return Ok(true);
                }
            };
            state.progress = Instant::now();
            let added = queue_rest(&mut state.queue, chunks, written, counted);
            if state.queue.is_empty() {
                return Ok(false);
            }
            // The socket is full: the writer takes over from here.
            state.queued += added;
            state.draining = true;
            return Ok(true);
        }
        let adding: usize = if counted { chunks.iter().map(Bytes::len).sum() } else { 0 };
        // Only a backlog is refused: the writer may not have handed back an empty queue yet.
        if adding > 0
            && !state.queue.is_empty()
            && state.queued + adding > self.inner.limits.max_bytes
        {
            return Err(TooSlow);
        }
        queue_rest(&mut state.queue, chunks, 0, counted);
        state.queued += adding;
        Ok(false)
    }

    /// Writes as much as the socket takes without waiting.
    fn write_now(&self, chunks: &[Bytes]) -> std::io::Result<usize> {
        let Some(socket) = &self.inner.socket else { return Ok(0) };
        let mut total = 0;
        let mut start = 0;
        while start < chunks.len() {
            let end = (start + IOV_MAX).min(chunks.len());
            let slices: Vec<IoSlice<'_>> =
                chunks[start..end].iter().map(|c| IoSlice::new(c)).collect();
            let want: usize = chunks[start..end].iter().map(Bytes::len).sum();
            match socket.try_write_vectored(&slices) {
                Ok(n) => {
                    total += n;
                    if n < want {
                        return Ok(total);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(total),
                Err(e) => return Err(e),
            }
            start = end;
        }
        Ok(total)
    }

    /// Takes no more frames after `last` (the close frame), which is queued after
    /// everything already waiting; `drain` returns once it is out.
    pub(crate) fn seal(&self, last: Option<Bytes>) {
        let mut state = self.state();
        if state.sealed {
            return;
        }
        // Under one lock: no frame of the room's can slip in after the close frame.
        if let Some(last) = last {
            let _ = self.push_locked(&mut state, &[last], false);
        }
        state.sealed = true;
        drop(state);
        self.inner.wake.notify_one();
    }

    /// The connection's writer: finishes what the socket did not take at once, whenever
    /// `push` hands over. Returns when the outbox is sealed and empty, or with the reason
    /// it gave up: the socket failed, or nothing could be written for `stall` (too slow).
    pub(crate) async fn drain(&self) -> Result<(), DrainEnd> {
        let Some(socket) = &self.inner.socket else { return Ok(()) };
        let stall = self.inner.limits.stall;
        loop {
            // Wait until there is something to write (or nothing more will come).
            loop {
                let notified = self.inner.wake.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let state = self.state();
                    if let Some(e) = &state.failed {
                        return Err(DrainEnd::Failed(e.clone()));
                    }
                    if state.draining {
                        break;
                    }
                    if state.sealed && state.queue.is_empty() {
                        return Ok(());
                    }
                }
                notified.await;
            }
            // Write until the queue is empty; the deadline moves with every byte written.
            loop {
                let (slices, deadline): (Vec<Bytes>, Instant) = {
                    let mut state = self.state();
                    if state.queue.is_empty() {
                        state.draining = false;
                        break;
                    }
                    let slices =
                        state.queue.iter().take(IOV_MAX).map(|c| c.bytes.clone()).collect();
                    // Once sealed, the closing connection bounds the wait itself.
                    let allowance = if state.sealed { FOREVER } else { stall };
                    (slices, state.progress + allowance)
                };
                match tokio::time::timeout_at(deadline, socket.writable()).await {
                    // Kept queued: the close frame goes behind it, should the peer wake up.
                    Err(_) => return Err(DrainEnd::Stalled),
                    Ok(Err(e)) => {
                        self.fail(&e.to_string());
                        return Err(DrainEnd::Failed(e.to_string()));
                    }
                    Ok(Ok(())) => {}
                }
                let iov: Vec<IoSlice<'_>> = slices.iter().map(|c| IoSlice::new(c)).collect();
                match socket.try_write_vectored(&iov) {
                    Ok(n) => {
                        let mut state = self.state();
                        consume(&mut state, n);
                        state.progress = Instant::now();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        self.fail(&e.to_string());
                        return Err(DrainEnd::Failed(e.to_string()));
                    }
                }
            }
        }
    }

    fn fail(&self, why: &str) {
        let mut state = self.state();
        state.failed = Some(why.to_string());
        state.queue.clear();
        state.queued = 0;
    }

    /// Counted bytes waiting now.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.state().queued
    }

    /// The messages waiting (frame headers stripped), taken out of the queue: how the
    /// core's tests and the fuzzer read what a peer would have received.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn take_messages(&self) -> Vec<Bytes> {
        let mut state = self.state();
        let mut all = BytesMut::new();
        for chunk in state.queue.drain(..) {
            all.extend_from_slice(&chunk.bytes);
        }
        state.queued = 0;
        let mut all = all.freeze();
        let mut out = Vec::new();
        while let Some((payload, used)) = parse_frame(&all) {
            out.push(payload);
            all = all.slice(used..);
        }
        out
    }
}

/// How the writer gave up.
#[derive(Debug)]
pub(crate) enum DrainEnd {
    /// Nothing could be written for the stall limit.
    Stalled,
    Failed(String),
}

/// Queues what is left of `chunks` after `written` bytes of them went out; returns the
/// counted bytes it queued.
fn queue_rest(
    queue: &mut VecDeque<Chunk>,
    chunks: &[Bytes],
    mut written: usize,
    counted: bool,
) -> usize {
    let mut added = 0;
    for chunk in chunks {
        if written >= chunk.len() {
            written -= chunk.len();
            continue;
        }
        let bytes = chunk.slice(written..);
        written = 0;
        if counted {
            added += bytes.len();
        }
        queue.push_back(Chunk { bytes, counted });
    }
    added
}

/// Drops `n` written bytes from the front of the queue.
fn consume(state: &mut State, mut n: usize) {
    while n > 0 {
        let Some(front) = state.queue.front_mut() else { return };
        if n >= front.bytes.len() {
            n -= front.bytes.len();
            if front.counted {
                state.queued = state.queued.saturating_sub(front.bytes.len());
            }
            state.queue.pop_front();
        } else {
            if front.counted {
                state.queued = state.queued.saturating_sub(n);
            }
            front.bytes = front.bytes.slice(n..);
            n = 0;
        }
    }
}

// ---- frame encoding (RFC 6455 section 5.2, server to client: never masked) ---------------

const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

fn put_header(buf: &mut BytesMut, opcode: u8, len: usize) {
    buf.put_u8(0x80 | opcode);
    if len < 126 {
        buf.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        buf.put_u8(126);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
}

/// Binary frames for `messages`, in order: small ones copied into shared buffers, large
/// ones as a header chunk followed by their own bytes. Encode once, push to every peer.
pub(crate) fn binary_frames(messages: &[Bytes]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    for message in messages {
        if message.len() <= COPY_MAX {
            put_header(&mut buf, OP_BINARY, message.len());
            buf.extend_from_slice(message);
        } else {
            put_header(&mut buf, OP_BINARY, message.len());
            out.push(buf.split().freeze());
            out.push(message.clone());
        }
    }
    if !buf.is_empty() {
        out.push(buf.freeze());
    }
    out
}

fn control(opcode: u8, payload: &[u8]) -> Bytes {
    let payload = &payload[..payload.len().min(125)];
    let mut buf = BytesMut::with_capacity(2 + payload.len());
    put_header(&mut buf, opcode, payload.len());
    buf.extend_from_slice(payload);
    buf.freeze()
}

/// A close frame with a code and a reason (cut to fit the 125-byte control payload, on a
/// character boundary).
pub(crate) fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    control(OP_CLOSE, &payload)
}

pub(crate) fn ping_frame() -> Bytes {
    control(OP_PING, &[])
}

pub(crate) fn pong_frame(payload: &[u8]) -> Bytes {
    control(OP_PONG, payload)
}

/// Reads one unmasked frame's payload off the front of `buf`, and the bytes it used.
#[cfg(any(test, fuzzing))]
fn parse_frame(buf: &Bytes) -> Option<(Bytes, usize)> {
    let len7 = *buf.get(1)? & 0x7f;
    let (len, at) = match len7 {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => {
            let raw: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(raw) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at + len)?;
    let _ = payload;
    Some((buf.slice(at..at + len), at + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_bytes: usize) -> SlowLimits {
        SlowLimits { max_bytes, stall: Duration::from_secs(5) }
    }

    #[test]
    fn frames_round_trip_at_every_length_encoding() {
        let messages: Vec<Bytes> = [0usize, 1, 125, 126, 65_535, 65_536, 100_000]
            .iter()
            .map(|n| Bytes::from(vec![7u8; *n]))
            .collect();
        let outbox = Outbox::detached(limits(1 << 30));
        outbox.push(&binary_frames(&messages), true).expect("room");
        assert_eq!(outbox.take_messages(), messages);
    }

    #[test]
    fn too_slow_is_counted_in_bytes_and_state_replies_do_not_count() {
        let outbox = Outbox::detached(limits(1000));
        let big = Bytes::from(vec![1u8; 5000]);
        outbox.push(&binary_frames(std::slice::from_ref(&big)), false).expect("state is free");
        let small = Bytes::from(vec![2u8; 400]);
        outbox.push(&binary_frames(std::slice::from_ref(&small)), true).expect("fits");
        outbox.push(&binary_frames(std::slice::from_ref(&small)), true).expect("fits");
        assert_eq!(outbox.queued(), 2 * (4 + 400), "two frames, 4-byte headers");
        assert_eq!(outbox.push(&binary_frames(&[small]), true), Err(TooSlow));
    }

    #[test]
    fn close_reasons_are_cut_on_a_character_boundary() {
        let reason = "é".repeat(100);
        let frame = close_frame(1013, &reason);
        assert!(frame.len() <= 127);
        let payload = &frame[2..];
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1013);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }
}
