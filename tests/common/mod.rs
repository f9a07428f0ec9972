//! Test plumbing: a real server on an ephemeral port with its own SQLite file, and `YClient`,
//! a minimal y-websocket peer holding a real `yrs::Doc`. Tests read as behaviour on top.
#![allow(dead_code)] // each test binary uses a different subset
#![allow(unreachable_pub)] // a module of each test crate: `pub` is how tests reach it

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tandem::protocol::{self, Incoming};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::updates::decoder::Decode;
use yrs::{ClientID, Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut tandem::Config)) -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut server = Self::start_in(tmp.path(), tweak).await;
        server._tmp = Some(tmp);
        server
    }

    /// Starts a server on an existing data dir (to test restarts).
    pub async fn start_in(data_dir: &Path, tweak: impl FnOnce(&mut tandem::Config)) -> TestServer {
        let mut config = tandem::Config::for_data_dir(data_dir);
        config.web_dir = Some(PathBuf::new());
        config.sync = tandem::config::SyncMode::Normal;
        tweak(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tandem::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            data_dir: data_dir.to_path_buf(),
            stop: Some(stop),
            task: Some(task),
            _tmp: None,
        }
    }

    pub fn url(&self, doc: &str) -> String {
        format!("ws://{}/ws/{}", self.addr, doc)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Graceful stop; returns the temp dir so a new server can start on the same data.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
        self._tmp.take()
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A y-websocket peer with a real document and a mirror of the room's awareness.
pub struct YClient {
    pub doc: Doc,
    socket: Socket,
    pub awareness: std::collections::HashMap<u64, (u32, String)>,
    /// Sizes of SyncStep2 payloads received, in order.
    pub step2_sizes: Vec<usize>,
    /// Update frames received (echoes included).
    pub updates_received: usize,
    pub closed: Option<(u16, String)>,
}

impl YClient {
    /// Connects and completes the y-sync handshake both ways.
    pub async fn join(server: &TestServer, doc: &str) -> YClient {
        let mut client = Self::connect(&server.url(doc)).await.expect("connect");
        client.handshake().await;
        client
    }

    pub async fn join_url(url: &str) -> YClient {
        let mut client = Self::connect(url).await.expect("connect");
        client.handshake().await;
        client
    }

    pub async fn join_with(server: &TestServer, doc: &str, ydoc: Doc) -> YClient {
        let mut client = Self::connect(&server.url(doc)).await.expect("connect");
        client.doc = ydoc;
        client.handshake().await;
        client
    }

    pub async fn connect(url: &str) -> Result<YClient, tokio_tungstenite::tungstenite::Error> {
        let (socket, _) = connect_async(url).await?;
        Ok(YClient {
            doc: Doc::new(),
            socket,
            awareness: Default::default(),
            step2_sizes: Vec::new(),
            updates_received: 0,
            closed: None,
        })
    }

    /// Sends our state vector and waits for the SyncStep2 that answers it.
    pub async fn handshake(&mut self) {
        let sv = self.doc.transact().state_vector();
        self.send(protocol::sync_step1(&sv)).await;
        let before = self.step2_sizes.len();
        self.pump_until(|c| c.step2_sizes.len() > before).await;
    }

    pub fn text(&self) -> String {
        let text = self.doc.get_or_insert_text("t");
        text.get_string(&self.doc.transact())
    }

    /// Inserts at `index` (clamped) and sends the resulting update.
    pub async fn insert(&mut self, index: u32, s: &str) -> Vec<u8> {
        let update = {
            let text = self.doc.get_or_insert_text("t");
            let mut txn = self.doc.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, index.min(len), s);
            txn.encode_update_v1()
        };
        self.send(protocol::sync_update(&update)).await;
        update
    }

    /// Appends `s` and sends the update, ignoring a dead socket (for crash tests).
    pub async fn try_push(&mut self, s: &str) {
        let update = {
            let text = self.doc.get_or_insert_text("t");
            let mut txn = self.doc.transact_mut();
            text.push(&mut txn, s);
            txn.encode_update_v1()
        };
        let _ = self.socket.send(Message::Binary(protocol::sync_update(&update))).await;
    }

    /// Edits offline: changes the local doc without telling anyone.
    pub fn insert_offline(&self, index: u32, s: &str) {
        let text = self.doc.get_or_insert_text("t");
        let mut txn = self.doc.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, index.min(len), s);
    }

    pub async fn set_awareness(&mut self, client_id: u64, clock: u32, json: &str) {
        let mut update = AwarenessUpdate { clients: Default::default() };
        update
            .clients
            .insert(ClientID::new(client_id), AwarenessUpdateEntry { clock, json: json.into() });
        self.send(protocol::awareness(&update)).await;
    }

    pub fn live_awareness(&self) -> Vec<u64> {
        let mut ids: Vec<u64> =
            self.awareness.iter().filter(|(_, (_, j))| j != "null").map(|(id, _)| *id).collect();
        ids.sort();
        ids
    }

    pub async fn send(&mut self, frame: Bytes) {
        self.socket.send(Message::Binary(frame)).await.expect("send");
    }

    pub async fn send_message(&mut self, msg: Message) {
        // The server may already have closed on us; that is what some tests want.
        let _ = self.socket.send(msg).await;
    }

    pub async fn wait_text(&mut self, expected: &str) {
        let expected = expected.to_string();
        self.pump_until(move |c| c.text() == expected).await;
    }

    /// Reads frames, applying them, until `done` holds. Panics after `WAIT`.
    pub async fn pump_until(&mut self, mut done: impl FnMut(&YClient) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.socket.next()).await {
                Err(_) => {
                    panic!("timed out; text is {:?}, awareness {:?}", self.text(), self.awareness)
                }
                Ok(None) => panic!("socket ended; closed = {:?}", self.closed),
                Ok(Some(Err(e))) => panic!("socket error {e}; closed = {:?}", self.closed),
                Ok(Some(Ok(msg))) => self.handle(msg).await,
            }
        }
    }

    /// Pumps for a while, applying whatever arrives (for "nothing else happens" checks).
    pub async fn pump_for(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.socket.next()).await {
                Ok(Some(Ok(msg))) => self.handle(msg).await,
                _ => return,
            }
        }
    }

    /// Waits for the server to close the connection; returns the close code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(closed) = &self.closed {
                return closed.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.socket.next()).await {
                Err(_) => panic!("server did not close the connection"),
                Ok(None) | Ok(Some(Err(_))) => {
                    return self.closed.clone().unwrap_or((1006, String::new()));
                }
                Ok(Some(Ok(msg))) => self.handle(msg).await,
            }
        }
    }

    async fn handle(&mut self, msg: Message) {
        match msg {
            Message::Binary(frame) => {
                for incoming in decode_server_frame(&frame) {
                    match incoming {
                        ServerMsg::Step1(sv) => {
                            let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                            let _ = self
                                .socket
                                .send(Message::Binary(protocol::sync_step2(&diff)))
                                .await;
                        }
                        ServerMsg::Step2(update) => {
                            self.step2_sizes.push(update.len());
                            self.apply(&update);
                        }
                        ServerMsg::Update(update) => {
                            self.updates_received += 1;
                            self.apply(&update);
                        }
                        ServerMsg::Awareness(update) => {
                            for (id, entry) in update.clients {
                                let known = self.awareness.get(&id.get()).map(|(c, _)| *c);
                                if known.is_none_or(|c| c < entry.clock || &*entry.json == "null") {
                                    self.awareness
                                        .insert(id.get(), (entry.clock, entry.json.to_string()));
                                }
                            }
                        }
                    }
                }
            }
            Message::Close(frame) => {
                let closed = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                self.closed = Some(closed.unwrap_or((u16::from(CloseCode::Status), String::new())));
            }
            _ => {}
        }
    }

    fn apply(&self, update: &[u8]) {
        let update = Update::decode_v1(update).expect("server sent a valid update");
        self.doc.transact_mut().apply_update(update).expect("update applies");
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }

    /// Drops the TCP connection without a close frame (a crashed browser, a lost network).
    pub fn drop_abruptly(self) {
        let YClient { socket, .. } = self;
        drop(socket.into_inner());
    }
}

enum ServerMsg {
    Step1(StateVector),
    Step2(Vec<u8>),
    Update(Vec<u8>),
    Awareness(AwarenessUpdate),
}

/// The server speaks the same framing it accepts, so its own decoder reads its frames;
/// SyncStep1/2 are told apart by the second byte.
fn decode_server_frame(frame: &Bytes) -> Vec<ServerMsg> {
    let kind = frame.get(1).copied();
    protocol::decode_frame(frame)
        .expect("server frame decodes")
        .into_iter()
        .map(|msg| match msg {
            Incoming::SyncStep1(sv) => ServerMsg::Step1(sv),
            Incoming::Update(raw) if kind == Some(1) => ServerMsg::Step2(raw.to_vec()),
            Incoming::Update(raw) => ServerMsg::Update(raw.to_vec()),
            Incoming::Awareness { update, .. } => ServerMsg::Awareness(update),
            Incoming::QueryAwareness => panic!("server asked for awareness"),
        })
        .collect()
}

/// Reads the document straight from a stopped server's data dir, through a fresh server.
pub async fn reload_text(data_dir: &Path, doc: &str) -> String {
    let server = TestServer::start_in(data_dir, |_| {}).await;
    let client = YClient::join(&server, doc).await;
    let text = client.text();
    client.close().await;
    server.stop().await;
    text
}

pub async fn http_get(url: &str) -> (u16, String) {
    let response = http(url, "GET", None).await;
    (response.status, response.body)
}

pub struct HttpResponse {
    pub status: u16,
    /// Status line and header lines, lower-cased.
    pub headers: String,
    pub body: String,
}

/// A tiny HTTP/1.1 client over a raw socket: enough for status codes, headers and small
/// bodies, without pulling an HTTP client into the build.
pub async fn http(url: &str, method: &str, json: Option<&str>) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) =
        rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut stream = TcpStream::connect(host).await.expect("connect");
    let body = json.unwrap_or("");
    let content = if json.is_some() { "Content-Type: application/json\r\n" } else { "" };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{content}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    HttpResponse { status, headers: head.to_lowercase(), body: body.to_string() }
}
