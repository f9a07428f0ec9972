//! One WebSocket connection: joins a room, pumps frames both ways, keeps the peer honest.
//!
//! This is where untrusted bytes stop. Every frame is decoded and validated here (in the
//! connection's own task, so decoding runs on all cores) before the room sees it; anything
//! malformed closes this connection with a code and one log line, and nothing of it reaches
//! the room. `ws` never touches a `Doc`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::error::{Error, close_code};
use crate::id::{BrowserId, DocId, PeerId};
use crate::protocol;
use crate::room::{Kick, RoomMsg};
use crate::rooms::Rooms;

/// How long we keep trying to deliver a close frame before dropping the connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection ended, for the one log line and the close frame.
enum End {
    /// The client closed or vanished; nothing more to send.
    ByClient(String),
    /// We close with this code and reason.
    Close(Kick),
}

impl From<Error> for End {
    fn from(e: Error) -> End {
        End::Close(Kick::from(&e))
    }
}

pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    socket: WebSocketStream<S>,
    doc_id: DocId,
    browser: Option<BrowserId>,
    rooms: Rooms,
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    let peer = PeerId::new();
    let span = tracing::info_span!("conn", doc = %doc_id, %peer);
    run_peer(socket, doc_id, peer, browser, rooms, config, shutdown).instrument(span).await
}

async fn run_peer<S: AsyncRead + AsyncWrite + Unpin>(
    socket: WebSocketStream<S>,
    doc_id: DocId,
    peer: PeerId,
    browser: Option<BrowserId>,
    rooms: Rooms,
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    let (mut sink, mut stream) = socket.split();
    let (outbox, mut outbox_rx) = mpsc::channel(config.peer_queue.max(4));
    let joined = match rooms.join(&doc_id, peer, browser, outbox).await {
        Ok(joined) => joined,
        Err(kick) => {
            tracing::warn!(code = kick.code, reason = %kick.reason, "join failed");
            let _ = sink.send(close(&kick)).await;
            return;
        }
    };
    tracing::info!("connection opened");
    let room = joined.room;
    let mut kick = joined.kick;

    let ping_interval = config.ping_interval();
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // A write that takes this long means the peer stopped reading.
    let write_timeout = ping_interval * 2;

    let end: End = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Error::ShuttingDown.into(),
            kicked = &mut kick => match kicked {
                Ok(k) => break End::Close(k),
                Err(_) => break Error::RoomGone.into(),
            },
            frame = outbox_rx.recv() => {
                let Some(frame) = frame else { break Error::RoomGone.into() };
                match timeout(write_timeout, write_batch(&mut sink, frame, &mut outbox_rx)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break End::ByClient(format!("write failed: {e}")),
                    Err(_) => break Error::SlowConsumer.into(),
                }
            }
            msg = stream.next() => {
                last_heard = Instant::now();
                match msg {
                    Some(Ok(Message::Binary(bytes))) => {
                        let msgs = match protocol::decode_frame(&bytes) {
                            Ok(msgs) => msgs,
                            Err(e) => break e.into(),
                        };
                        if room.send(RoomMsg::Incoming { peer, msgs }).await.is_err() {
                            break Error::RoomGone.into();
                        }
                    }
                    Some(Ok(Message::Text(_))) => break Error::TextFrame.into(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        break End::ByClient(match frame {
                            Some(f) => format!("client closed ({})", u16::from(f.code)),
                            None => "client closed".into(),
                        })
                    }
                    Some(Err(e)) => break read_error(e, config.max_message_bytes),
                    None => break End::ByClient("connection dropped".into()),
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > ping_interval * 2 {
                    break Error::PingTimeout.into();
                }
                if timeout(write_timeout, sink.send(Message::Ping(Default::default()))).await.is_err() {
                    break Error::SlowConsumer.into();
                }
            }
        }
    };

    // Tell the room first so the others see this peer's cursor go at once; `send` only waits
    // if the room's inbox is full, and fails harmlessly if the room is gone.
    let _ = room.send(RoomMsg::Leave { peer }).await;
    match end {
        End::ByClient(reason) => tracing::info!(%reason, "connection closed"),
        End::Close(kick) => {
            if kick.code == close_code::GOING_AWAY {
                tracing::info!(code = kick.code, reason = %kick.reason, "connection closed");
            } else {
                tracing::warn!(code = kick.code, reason = %kick.reason, "connection closed");
            }
            // Best effort: the close frame queues behind whatever the peer has not read yet
            // (a slow consumer may have megabytes buffered), so give it a while, then drop.
            let _ = timeout(CLOSE_TIMEOUT, async {
                sink.send(close(&kick)).await?;
                sink.close().await
            })
            .await;
        }
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

fn close(kick: &Kick) -> Message {
    Message::Close(Some(CloseFrame { code: kick.code.into(), reason: kick.reason.as_str().into() }))
}

fn read_error(e: WsError, limit: usize) -> End {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::Capacity(_) => Error::TooLarge { limit }.into(),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            End::ByClient("connection dropped".into())
        }
        WsError::Protocol(p) => Error::BadFrame(p.to_string()).into(),
        WsError::Utf8(_) => Error::BadFrame("text frame is not UTF-8".into()).into(),
        other => End::ByClient(format!("read failed: {other}")),
    }
}
