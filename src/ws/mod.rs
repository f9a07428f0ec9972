//! One WebSocket connection: the RFC 6455 handshake, then joining a room, pumping frames
//! both ways and keeping the peer honest.
//!
//! This is where untrusted bytes stop. Every frame is decoded and validated here (in the
//! connection's own task, so decoding runs on all cores) before the room sees it; anything
//! malformed closes this connection with a code and one log line, and nothing of it reaches
//! the room. `ws` never touches a `Doc`.
//!
//! Access is decided before the upgrade (`Admission`), but a refusal is told after it, as a
//! close code (4401/4403): browsers cannot read the HTTP status of a failed upgrade. A
//! token's expiry and its revocation end the connection the same way.
//!
//! The upgrade is done here by hand, rather than with axum's `WebSocketUpgrade`, to get
//! tokio-tungstenite's stream itself: only that one can send a large message as fragments
//! (see `write_batch`). Through axum's wrapper, every peer receiving a 20 MiB document would
//! hold a 20 MiB copy in its write buffer for good.

mod guard;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use self::guard::Guard;
use crate::auth::{Auth, Identity};
use crate::config::Config;
use crate::error::{Error, close_code};
use crate::id::{BrowserId, DocId, PeerId};
use crate::room::RoomMsg;
use crate::rooms::Rooms;

/// How long we keep trying to deliver a close frame before dropping the connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long we then wait for the peer's Close (a live client answers at once).
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Each of sending the close frame and waiting for the answer, for a refused connection.
const REFUSAL_TIMEOUT: Duration = Duration::from_millis(1000);
/// tungstenite allocates the whole read buffer up front (128 KiB by default), most of an
/// idle connection's memory; 8 KiB covers typical frames, and bigger ones grow it.
const READ_BUFFER: usize = 8 * 1024;
/// Frames are buffered up to this size before a write; we flush after each batch anyway.
const WRITE_BUFFER: usize = 16 * 1024;

/// What the upgrade request asked for.
pub(crate) enum Handshake {
    /// A valid upgrade; the value is the `Sec-WebSocket-Accept` to answer with.
    Accept(String),
    /// Not a WebSocket upgrade we speak (plain HTTP, or another protocol version): 426.
    NotUpgrade,
}

/// Checks the RFC 6455 (section 4.2.1) upgrade request. A request that is plainly not an
/// upgrade gets a 426; one that tries and gets it wrong gets a 400 that says what.
pub(crate) fn handshake(version: Version, headers: &HeaderMap) -> Result<Handshake, Error> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Ok(Handshake::NotUpgrade);
    }
    if version != Version::HTTP_11 {
        return Err(Error::BadHandshake("a websocket upgrade needs HTTP/1.1"));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Ok(Handshake::NotUpgrade);
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Error::BadHandshake("missing Sec-WebSocket-Key"));
    };
    let nonce = base64::engine::general_purpose::STANDARD.decode(key.as_bytes());
    if nonce.map(|n| n.len()) != Ok(16) {
        return Err(Error::BadHandshake("Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    Ok(Handshake::Accept(derive_accept_key(key.as_bytes())))
}

/// The subprotocol a client offers next to a token carried as `tandem.jwt.TOKEN`.
pub(crate) const SUBPROTOCOL: &str = "tandem";
const TOKEN_SUBPROTOCOL_PREFIX: &str = "tandem.jwt.";

/// What `Sec-WebSocket-Protocol` offered: whether `tandem` was among the entries, and a
/// token if one was carried there.
pub(crate) fn offered_protocols(headers: &HeaderMap) -> (bool, Option<String>) {
    let mut tandem = false;
    let mut token = None;
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else { continue };
        for entry in value.split(',').map(str::trim) {
            if entry == SUBPROTOCOL {
                tandem = true;
            } else if let Some(t) = entry.strip_prefix(TOKEN_SUBPROTOCOL_PREFIX) {
                token = Some(t.to_string());
            }
        }
    }
    (tandem, token)
}

/// What a connection needs from the server.
#[derive(Clone)]
pub(crate) struct ConnDeps {
    pub(crate) rooms: Rooms,
    pub(crate) config: Arc<Config>,
    pub(crate) auth: Auth,
    pub(crate) slots: Slots,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

/// The server-wide connection caps (`--max-connections`, `--max-connections-per-ip`).
#[derive(Clone, Default)]
pub(crate) struct Slots {
    inner: Arc<SlotsInner>,
}

#[derive(Default)]
struct SlotsInner {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place under the caps, given back when it is dropped.
pub(crate) struct Slot {
    slots: Slots,
    ip: Option<IpAddr>,
}

impl Slots {
    pub(crate) fn take(&self, ip: Option<IpAddr>, config: &Config) -> Result<Slot, Error> {
        let total = self.inner.total.fetch_add(1, Ordering::AcqRel) + 1;
        // From here on the slot exists: dropping it undoes the counts.
        let mut slot = Slot { slots: self.clone(), ip: None };
        if total > config.max_connections {
            return Err(Error::Overloaded(format!(
                "{} connections (--max-connections)",
                config.max_connections
            )));
        }
        if let Some(ip) = ip
            && config.max_connections_per_ip > 0
        {
            let mut per_ip = self.inner.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = per_ip.entry(ip).or_insert(0);
            *n += 1;
            slot.ip = Some(ip);
            if *n > config.max_connections_per_ip {
                return Err(Error::Overloaded(format!(
                    "{} connections from one address (--max-connections-per-ip)",
                    config.max_connections_per_ip
                )));
            }
        }
        Ok(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.inner.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut per_ip = self.slots.inner.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// Whether, and how, a connection may join its document: decided before the upgrade,
/// told after it.
pub(crate) enum Admission {
    Admitted {
        /// Set for a token holder: what expiry and revocation are checked against.
        identity: Option<Arc<Identity>>,
        can_write: bool,
        /// For the cursor colour: derived from the token's `sub`, else the browser's id.
        browser: Option<BrowserId>,
    },
    Refused(Error),
}

/// Answers a checked upgrade (101) and runs the connection in its own tracked task once
/// hyper hands the socket over.
pub(crate) fn upgrade(
    request: Request,
    accept: String,
    subprotocol: bool,
    doc_id: DocId,
    admission: Admission,
    slot: Slot,
    deps: ConnDeps,
) -> Response {
    let config = WebSocketConfig::default()
        .max_message_size(Some(deps.config.max_message_bytes))
        .max_frame_size(Some(deps.config.max_message_bytes))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER);
    let upgrade = hyper::upgrade::on(request);
    let tracker = deps.tracker.clone();
    tracker.spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                run(socket, doc_id, admission, deps).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
        drop(slot);
    });
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if subprotocol {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL);
    }
    response
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// How a connection ended: `Ok` when the client closed or vanished (nothing more to send),
/// `Err` when we close it with that error's code and reason.
type End = Result<String, Error>;

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: WebSocketStream<S>,
    doc_id: DocId,
    admission: Admission,
    deps: ConnDeps,
) {
    let peer = PeerId::new();
    let (identity, can_write, browser) = match admission {
        Admission::Admitted { identity, can_write, browser } => (identity, can_write, browser),
        Admission::Refused(e) => {
            // Tokens never reach a log; the reason says which check failed.
            tracing::info!(doc = %doc_id, code = e.close_code(), reason = %e, "connection refused");
            // Briefly: a refused client must not hold a connection slot for long.
            if let Ok(Ok(())) = timeout(REFUSAL_TIMEOUT, socket.send(close(&e))).await {
                let _ = timeout(REFUSAL_TIMEOUT, async {
                    while let Some(Ok(msg)) = socket.next().await {
                        if matches!(msg, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
            return;
        }
    };
    let (sub, jti) = match &identity {
        Some(id) => (Some(id.sub.as_str()), id.jti.as_deref()),
        None => (None, None),
    };
    let span = tracing::info_span!("conn", doc = %doc_id, %peer, sub, jti, read_only = !can_write);
    let joining =
        Joining { doc_id: doc_id.clone(), peer, browser, can_write, identity: identity.clone() };
    run_peer(socket, joining, deps).instrument(span).await
}

/// Who is joining which document, once admitted.
struct Joining {
    doc_id: DocId,
    peer: PeerId,
    browser: Option<BrowserId>,
    can_write: bool,
    identity: Option<Arc<Identity>>,
}

/// When a token's `exp` (seconds since the epoch) falls on tokio's clock.
fn expiry_instant(exp: u64) -> Instant {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let left = Duration::from_secs(exp).saturating_sub(now);
    // A token may claim an expiry centuries away: cap it rather than overflow.
    let far = Duration::from_secs(100 * 365 * 86_400);
    Instant::now() + left.min(far)
}

async fn run_peer<S: AsyncRead + AsyncWrite + Unpin>(
    socket: WebSocketStream<S>,
    joining: Joining,
    deps: ConnDeps,
) {
    let ConnDeps { rooms, config, shutdown, auth, .. } = deps;
    let Joining { doc_id, peer, browser, can_write, identity } = joining;
    let (mut sink, mut stream) = socket.split();
    let (outbox, mut outbox_rx) = mpsc::channel(config.peer_queue.max(4));
    let joined = match rooms.join(&doc_id, peer, browser, can_write, outbox).await {
        Ok(joined) => joined,
        Err(e) => {
            tracing::warn!(code = e.close_code(), reason = %e, "join failed");
            let _ = sink.send(close(&e)).await;
            return;
        }
    };
    tracing::info!("connection opened");
    let room = joined.room;
    let mut kick = joined.kick;
    // Should this task unwind (a bug), the room still hears that the peer is gone.
    let mut leave_on_unwind = LeaveOnUnwind { room: room.clone(), peer, armed: true };

    let ping_interval = config.ping_interval();
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // A write that takes this long means the peer stopped reading.
    let write_timeout = ping_interval * 2;
    let mut guard = Guard::new(&config, Instant::now());
    // A token ends the session at its expiry, and at its revocation.
    let expiry = sleep_until_or_never(identity.as_ref().map(|id| expiry_instant(id.exp)));
    tokio::pin!(expiry);
    let mut revocations = identity.as_ref().map(|_| auth.revocations().subscribe());
    // A revocation between the token check (before the upgrade) and this subscription would
    // not wake the loop below: check once now that we are listening.
    if identity.as_ref().is_some_and(|id| auth.revocations().is_revoked(id)) {
        leave_on_unwind.armed = false;
        let _ = room.send(RoomMsg::Leave { peer }).await;
        let e = Error::Unauthorized("token revoked".into());
        tracing::info!(code = e.close_code(), reason = %e, "connection closed");
        let _ = timeout(CLOSE_TIMEOUT, sink.send(close(&e))).await;
        return;
    }

    let end: End = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Err(Error::ShuttingDown),
            kicked = &mut kick => break Err(kicked.unwrap_or(Error::RoomGone)),
            _ = &mut expiry => {
                break Err(Error::Unauthorized("token expired".into()));
            }
            changed = changed_or_never(&mut revocations) => {
                if changed.is_err() {
                    revocations = None; // the deny list is gone (shutdown): nothing to watch
                } else if identity.as_ref().is_some_and(|id| auth.revocations().is_revoked(id)) {
                    break Err(Error::Unauthorized("token revoked".into()));
                }
            }
            frame = outbox_rx.recv() => {
                let Some(frame) = frame else { break Err(Error::RoomGone) };
                match timeout(write_timeout, write_batch(&mut sink, frame, &mut outbox_rx)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Ok(format!("write failed: {e}")),
                    Err(_) => break Err(Error::SlowConsumer),
                }
            }
            msg = stream.next() => {
                last_heard = Instant::now();
                match msg {
                    Some(Ok(Message::Binary(bytes))) => {
                        let msgs = match guard.check(&bytes, last_heard) {
                            Ok(msgs) => msgs,
                            Err(e) => break Err(e),
                        };
                        if room.send(RoomMsg::Incoming { peer, msgs }).await.is_err() {
                            break Err(Error::RoomGone);
                        }
                    }
                    Some(Ok(Message::Text(_))) => break Err(Error::TextFrame),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        break Ok(match frame {
                            Some(f) => format!("client closed ({})", u16::from(f.code)),
                            None => "client closed".into(),
                        })
                    }
                    Some(Err(e)) => break read_error(e, config.max_message_bytes),
                    None => break Ok("connection dropped".into()),
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > ping_interval * 2 {
                    break Err(Error::PingTimeout);
                }
                if timeout(write_timeout, sink.send(Message::Ping(Default::default()))).await.is_err() {
                    break Err(Error::SlowConsumer);
                }
            }
        }
    };

    // Tell the room first so the others see this peer's cursor go at once; `send` only waits
    // if the room's inbox is full, and fails harmlessly if the room is gone.
    leave_on_unwind.armed = false;
    let _ = room.send(RoomMsg::Leave { peer }).await;
    match end {
        Ok(reason) => tracing::info!(%reason, "connection closed"),
        Err(e) => {
            let code = e.close_code();
            if code == close_code::GOING_AWAY {
                tracing::info!(code, reason = %e, "connection closed");
            } else {
                tracing::warn!(code, reason = %e, "connection closed");
            }
            // Best effort: the close frame queues behind whatever the peer has not read yet
            // (a slow consumer may have megabytes buffered), so give it a while, then drop.
            if let Ok(Ok(())) = timeout(CLOSE_TIMEOUT, sink.send(close(&e))).await {
                // Then read until the peer's own Close (briefly, and not during shutdown):
                // dropping TCP while the peer still writes (pongs, updates) makes the kernel
                // answer with a reset, and the peer loses our close frame and its reason.
                let _ = timeout(CLOSE_LINGER, async {
                    tokio::select! {
                        _ = async {
                            while let Some(Ok(msg)) = stream.next().await {
                                if matches!(msg, Message::Close(_)) {
                                    break;
                                }
                            }
                        } => {}
                        _ = shutdown.cancelled() => {}
                    }
                })
                .await;
                let _ = sink.close().await;
            }
        }
    }
}

/// Sends `Leave` when dropped while armed: only if the connection task unwinds, since the
/// normal paths disarm it and send `Leave` themselves.
struct LeaveOnUnwind {
    room: crate::room::RoomHandle,
    peer: PeerId,
    armed: bool,
}

impl Drop for LeaveOnUnwind {
    fn drop(&mut self) {
        if self.armed {
            self.room.try_send(RoomMsg::Leave { peer: self.peer });
        }
    }
}

async fn sleep_until_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn changed_or_never(
    rx: &mut Option<tokio::sync::watch::Receiver<u64>>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

/// Most frames written per flush: under fan-out load one syscall carries many frames.
const WRITE_BATCH: usize = 64;

/// Messages larger than this go out as WebSocket fragments of this size. tungstenite
/// copies a whole frame into the connection's write buffer and keeps that capacity for the
/// connection's life, so one 20 MiB SyncStep2 would pin 20 MiB per peer; fragments keep
/// the buffer near this size. Every WebSocket client reassembles them.
const FRAGMENT: usize = 64 * 1024;

/// Writes `first` and whatever else is already queued (up to `WRITE_BATCH`), then flushes
/// once. Frames stay in order; nothing is waited for that is not already there.
async fn write_batch<K>(
    sink: &mut K,
    first: Bytes,
    outbox: &mut mpsc::Receiver<Bytes>,
) -> Result<(), WsError>
where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    feed(sink, first).await?;
    for _ in 1..WRITE_BATCH {
        match outbox.try_recv() {
            Ok(frame) => feed(sink, frame).await?,
            Err(_) => break,
        }
    }
    sink.flush().await
}

async fn feed<K>(sink: &mut K, message: Bytes) -> Result<(), WsError>
where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    if message.len() <= FRAGMENT {
        return sink.feed(Message::Binary(message)).await;
    }
    let mut start = 0;
    while start < message.len() {
        let end = (start + FRAGMENT).min(message.len());
        let opcode = if start == 0 { Data::Binary } else { Data::Continue };
        let frame =
            Frame::message(message.slice(start..end), OpCode::Data(opcode), end == message.len());
        sink.feed(Message::Frame(frame)).await?;
        start = end;
    }
    Ok(())
}

fn close(e: &Error) -> Message {
    Message::Close(Some(CloseFrame {
        code: e.close_code().into(),
        reason: e.close_reason().into(),
    }))
}

fn read_error(e: WsError, limit: usize) -> End {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::Capacity(_) => Err(Error::TooLarge { limit }),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Ok("connection dropped".into())
        }
        WsError::Protocol(p) => Err(Error::BadFrame(p.to_string())),
        WsError::Utf8(_) => Err(Error::BadFrame("text frame is not UTF-8".into())),
        other => Ok(format!("read failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn upgrade_headers(key: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        headers.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_str(key).expect("header"));
        headers
    }

    #[test]
    fn the_rfc_example_key_is_accepted() {
        let headers = upgrade_headers("dGhlIHNhbXBsZSBub25jZQ==");
        let Ok(Handshake::Accept(accept)) = handshake(Version::HTTP_11, &headers) else {
            panic!("refused")
        };
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn broken_upgrades_are_refused_with_a_reason() {
        for key in ["", "short", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZSEh"] {
            let result = handshake(Version::HTTP_11, &upgrade_headers(key));
            assert!(matches!(result, Err(Error::BadHandshake(_))), "key {key:?}");
        }
        let http10 = handshake(Version::HTTP_10, &upgrade_headers("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(matches!(http10, Err(Error::BadHandshake(_))));
        assert!(matches!(
            handshake(Version::HTTP_11, &HeaderMap::new()),
            Ok(Handshake::NotUpgrade)
        ));
    }
}
