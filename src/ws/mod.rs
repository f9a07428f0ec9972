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
//! The upgrade is done here by hand, rather than with axum's `WebSocketUpgrade`, to get the
//! TCP socket itself back from hyper and split it: tungstenite reads and checks what the
//! client sends (its read side only), and everything we send goes through the peer's
//! `Outbox` as ready frames, written by the room straight into the socket (see `outbox`).
//! Nothing we send is ever copied into a per-connection write buffer, so a 20 MiB document
//! sent to many peers is one shared buffer, not a copy per peer.

mod guard;

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use self::guard::Guard;
use crate::auth::{Auth, Identity};
use crate::config::Config;
use crate::error::{Error, close_code};
use crate::id::{BrowserId, DocId, PeerId};
use crate::outbox::{self, DrainEnd, Outbox, SlowLimits};
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
        .read_buffer_size(READ_BUFFER);
    let slow = SlowLimits {
        max_bytes: deps.config.peer_max_queued_bytes,
        stall: deps.config.peer_stall(),
    };
    let upgrade = hyper::upgrade::on(request);
    let tracker = deps.tracker.clone();
    tracker.spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                // Our accept loop (lib.rs) serves hyper plain TCP streams, so this is one.
                match upgraded.downcast::<hyper_util::rt::TokioIo<TcpStream>>() {
                    Ok(parts) => {
                        let (read, write) = parts.io.into_inner().into_split();
                        // Bytes hyper read past the request belong to the WebSocket. Copied:
                        // even an empty slice would keep hyper's whole read buffer alive
                        // for the life of the connection.
                        let prefix = if parts.read_buf.is_empty() {
                            Bytes::new()
                        } else {
                            Bytes::copy_from_slice(&parts.read_buf)
                        };
                        let io = ReadSide { prefix, read };
                        let stream =
                            WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                        let conn = Conn { stream, outbox: Outbox::new(write, slow) };
                        run(conn, doc_id, admission, deps).await;
                    }
                    Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
                }
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

/// One upgraded connection: what the client sends (checked by tungstenite), and our way
/// out, shared with the room once joined.
struct Conn {
    stream: WebSocketStream<ReadSide>,
    outbox: Outbox,
}

impl Conn {
    /// Sends a close frame after everything queued and waits (at most `wait`) for it to go
    /// out, then (at most `linger`, and not past `shutdown`) for the client's own Close:
    /// dropping TCP while the client still writes (pongs, updates) makes the kernel answer
    /// with a reset, and the client would lose our close frame and its reason.
    async fn close(
        &mut self,
        e: &Error,
        wait: Duration,
        linger: Duration,
        shutdown: &CancellationToken,
    ) {
        self.outbox.seal(Some(outbox::close_frame(e.close_code(), &e.close_reason())));
        let sent = matches!(timeout(wait, self.outbox.drain()).await, Ok(Ok(())));
        if sent {
            let stream = &mut self.stream;
            let _ = timeout(linger, async {
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
        }
    }
}

async fn run(mut conn: Conn, doc_id: DocId, admission: Admission, deps: ConnDeps) {
    let peer = PeerId::new();
    let (identity, can_write, browser) = match admission {
        Admission::Admitted { identity, can_write, browser } => (identity, can_write, browser),
        Admission::Refused(e) => {
            // Tokens never reach a log; the reason says which check failed.
            tracing::info!(doc = %doc_id, code = e.close_code(), reason = %e, "connection refused");
            // Briefly: a refused client must not hold a connection slot for long.
            conn.close(&e, REFUSAL_TIMEOUT, REFUSAL_TIMEOUT, &deps.shutdown).await;
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
    run_peer(conn, joining, deps).instrument(span).await
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

async fn run_peer(mut conn: Conn, joining: Joining, deps: ConnDeps) {
    let ConnDeps { rooms, config, shutdown, auth, .. } = deps;
    let Joining { doc_id, peer, browser, can_write, identity } = joining;
    // A node cut off from its database for too long sends clients to a healthy node.
    if let Some((down, limit)) = rooms.store_outage()
        && down >= limit
    {
        let e = Error::Store(crate::store::StoreError::Unavailable("database unreachable".into()));
        tracing::warn!(code = e.close_code(), "connection refused: database unreachable");
        conn.close(&e, CLOSE_TIMEOUT, CLOSE_LINGER, &shutdown).await;
        return;
    }
    let joined = match rooms.join(&doc_id, peer, browser, can_write, conn.outbox.clone()).await {
        Ok(joined) => joined,
        Err(e) => {
            tracing::warn!(code = e.close_code(), reason = %e, "join failed");
            conn.close(&e, CLOSE_TIMEOUT, CLOSE_LINGER, &shutdown).await;
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
        conn.close(&e, CLOSE_TIMEOUT, CLOSE_LINGER, &shutdown).await;
        return;
    }
    // Pinned once: every wake-up of this loop polls these futures, it does not rebuild them.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    // The writer finishes what the room could not write at once; it wakes only when a
    // socket was full, so this loop wakes for what the client sends, not for fan-out.
    let writer = conn.outbox.clone();
    let drain = writer.drain();
    tokio::pin!(drain);
    let Conn { stream, outbox } = &mut conn;
    let mut writer_done = false;

    let end: End = loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => break Err(Error::ShuttingDown),
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
            ended = &mut drain => break {
                writer_done = true;
                match ended {
                Err(DrainEnd::Stalled) => Err(Error::SlowConsumer),
                Err(DrainEnd::Failed(e)) => Ok(format!("write failed: {e}")),
                    Ok(()) => Ok("closed".into()),
                }
            },
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
                    Some(Ok(Message::Ping(payload))) => {
                        // Ordered with the room's frames, and counted: a client that pings
                        // without reading falls behind like any other.
                        if outbox.push(&[outbox::pong_frame(&payload)], true).is_err() {
                            break Err(Error::SlowConsumer);
                        }
                    }
                    Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        // Answer with the client's own code (RFC 6455 section 5.5.1).
                        let code = frame.as_ref().map_or(1000, |f| u16::from(f.code));
                        outbox.seal(Some(outbox::close_frame(code, "")));
                        break Ok(format!("client closed ({code})"));
                    }
                    Some(Err(e)) => break read_error(e, config.max_message_bytes),
                    None => break Ok("connection dropped".into()),
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > ping_interval * 2 {
                    break Err(Error::PingTimeout);
                }
                let _ = outbox.push(&[outbox::ping_frame()], false);
            }
        }
    };

    // Tell the room first so the others see this peer's cursor go at once; `send` only waits
    // if the room's inbox is full, and fails harmlessly if the room is gone.
    leave_on_unwind.armed = false;
    let _ = room.send(RoomMsg::Leave { peer }).await;
    match end {
        Ok(reason) => {
            tracing::info!(%reason, "connection closed");
            // Our answer to the client's Close, if it sent one, goes out briefly.
            outbox.seal(None);
            if !writer_done {
                let _ = timeout(REFUSAL_TIMEOUT, &mut drain).await;
            }
        }
        Err(e) => {
            let code = e.close_code();
            if code == close_code::GOING_AWAY {
                tracing::info!(code, reason = %e, "connection closed");
            } else {
                tracing::warn!(code, reason = %e, "connection closed");
            }
            // Best effort: the close frame queues behind whatever the peer has not read yet
            // (a slow consumer may have megabytes queued), so give it a while, then drop.
            conn.close(&e, CLOSE_TIMEOUT, CLOSE_LINGER, &shutdown).await;
        }
    }
}

/// The read side of a connection's socket, for tungstenite. tungstenite also writes its
/// automatic replies (a pong, the echo of a Close) to its stream; we send those ourselves
/// through the outbox, in order with the room's frames, so what it writes here is dropped.
struct ReadSide {
    /// What hyper had read past the upgrade request.
    prefix: Bytes,
    read: OwnedReadHalf,
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
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
