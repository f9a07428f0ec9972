//! Test plumbing: a real server on an ephemeral port with its own SQLite file, and `YClient`,
//! a minimal y-websocket peer holding a real `yrs::Doc`. Tests read as behaviour on top.
#![allow(dead_code)] // each test binary uses a different subset
#![allow(unreachable_pub)] // a module of each test crate: `pub` is how tests reach it

pub mod pg;

#[path = "../../src/bin/tandem-bench/http.rs"]
mod http_client;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tandem::protocol::{self, Incoming};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::updates::decoder::Decode;
use yrs::{
    ClientID, Doc, GetString, ReadTxn, StateVector, Text, TextRef, Transact, TransactionMut, Update,
};

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
    /// The payloads of those update frames, as received.
    pub received: Vec<Vec<u8>>,
    pub closed: Option<(u16, String)>,
    /// Reasons of y-protocols auth `permission denied` messages received.
    pub denied: Vec<String>,
}

impl YClient {
    /// Connects and completes the y-sync handshake both ways.
    pub async fn join(server: &TestServer, doc: &str) -> YClient {
        Self::join_url_with(&server.url(doc), Doc::new()).await
    }

    pub async fn join_url(url: &str) -> YClient {
        Self::join_url_with(url, Doc::new()).await
    }

    /// Joins with an existing document (a client coming back with what it had).
    pub async fn join_with(server: &TestServer, doc: &str, ydoc: Doc) -> YClient {
        Self::join_url_with(&server.url(doc), ydoc).await
    }

    pub async fn join_url_with(url: &str, ydoc: Doc) -> YClient {
        let mut client = Self::connect(url).await.expect("connect");
        client.doc = ydoc;
        client.handshake().await;
        client
    }

    pub async fn connect(url: &str) -> Result<YClient, tokio_tungstenite::tungstenite::Error> {
        let (socket, _) = connect_async(url).await?;
        Ok(YClient::over(socket))
    }

    fn over(socket: Socket) -> YClient {
        YClient {
            doc: Doc::new(),
            socket,
            awareness: Default::default(),
            step2_sizes: Vec::new(),
            updates_received: 0,
            received: Vec::new(),
            closed: None,
            denied: Vec::new(),
        }
    }

    /// Connects offering these `Sec-WebSocket-Protocol` entries; returns the client and
    /// the protocol the server selected.
    pub async fn connect_with_protocols(
        url: &str,
        protocols: &str,
    ) -> Result<(YClient, Option<String>), tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().expect("header value"));
        let (socket, response) = connect_async(request).await?;
        let selected = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        Ok((YClient::over(socket), selected))
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

    /// Changes the local text with `change` and returns the update, without sending it.
    pub fn edit(&self, change: impl FnOnce(&TextRef, &mut TransactionMut)) -> Vec<u8> {
        let text = self.doc.get_or_insert_text("t");
        let mut txn = self.doc.transact_mut();
        change(&text, &mut txn);
        txn.encode_update_v1()
    }

    /// Inserts at `index` (clamped) and sends the resulting update.
    pub async fn insert(&mut self, index: u32, s: &str) -> Vec<u8> {
        let update = self.insert_offline(index, s);
        self.send(protocol::sync_update(&update)).await;
        update
    }

    /// Appends `s` and sends the update, ignoring a dead socket (for crash tests).
    pub async fn try_push(&mut self, s: &str) {
        let update = self.edit(|text, txn| text.push(txn, s));
        let _ = self.socket.send(Message::Binary(protocol::sync_update(&update))).await;
    }

    /// Edits offline: changes the local doc without telling anyone; returns the update.
    pub fn insert_offline(&self, index: u32, s: &str) -> Vec<u8> {
        self.edit(|text, txn| {
            let len = text.len(txn);
            text.insert(txn, index.min(len), s);
        })
    }

    /// An update that would append `s`, made on a copy, so this client's doc is unchanged.
    pub fn update_on_copy(&self, s: &str) -> Vec<u8> {
        let copy = YClient::doc_copy(&self.doc);
        let text = copy.get_or_insert_text("t");
        let mut txn = copy.transact_mut();
        text.push(&mut txn, s);
        txn.encode_update_v1()
    }

    fn doc_copy(doc: &Doc) -> Doc {
        let copy = Doc::new();
        let state = doc.transact().encode_state_as_update_v1(&StateVector::default());
        copy.transact_mut()
            .apply_update(Update::decode_v1(&state).expect("own state"))
            .expect("applies");
        copy
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
            Message::Binary(frame) if frame.first() == Some(&2) => {
                // y-protocols auth: [2, 0 (permission denied), reason]
                let mut cursor = yrs::encoding::read::Cursor::new(&frame[..]);
                use yrs::encoding::read::Read as _;
                let _tag: u8 = cursor.read_var().expect("tag");
                let kind: u8 = cursor.read_var().expect("auth kind");
                assert_eq!(kind, 0, "only permission denied is defined");
                self.denied.push(cursor.read_string().expect("reason").to_string());
            }
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
                            self.received.push(update);
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
                // Answer the close now, as a live client does (tungstenite queued the reply).
                let _ = self.socket.flush().await;
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
    protocol::decode_frame(
        frame,
        &protocol::FrameLimits {
            max_awareness_entries: usize::MAX,
            max_awareness_bytes: usize::MAX,
        },
    )
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

pub(crate) use http_client::HttpResponse;

pub async fn http_get(url: &str) -> (u16, String) {
    let response = http(url, "GET", None).await;
    (response.status, response.text())
}

/// A JSON request (or none) through the one hand-written client.
pub async fn http(url: &str, method: &str, json: Option<&str>) -> HttpResponse {
    match json {
        Some(json) => http_bytes(url, method, "application/json", json.as_bytes()).await,
        None => http_client::request(url, method, "HTTP/1.1", &[], b"").await.expect("http"),
    }
}

pub async fn http_bytes(url: &str, method: &str, content_type: &str, body: &[u8]) -> HttpResponse {
    http_client::request(url, method, "HTTP/1.1", &[("Content-Type", content_type)], body)
        .await
        .expect("http")
}

/// A request with a bearer token (or none) and a body of `content_type`.
pub async fn http_auth(
    url: &str,
    method: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> HttpResponse {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", content_type)];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer.as_str()));
    }
    http_client::request(url, method, "HTTP/1.1", &headers, body).await.expect("http")
}

/// An HS256 token with these claims (`exp` and `iat` filled in relative to now unless
/// given).
pub fn mint(secret: &str, mut claims: serde_json::Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    if claims.get("exp").is_none() {
        claims["exp"] = serde_json::json!(now + 3600);
    }
    if claims.get("iat").is_none() {
        claims["iat"] = serde_json::json!(now);
    }
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("key");
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("sign")
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

/// A request with exactly these headers and HTTP version (handshake tests).
pub async fn http_raw(url: &str, version: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_client::request(url, "GET", version, headers, b"").await.expect("http")
}

/// A read connection to a data dir's database (what is committed, from outside the server).
pub async fn db(data_dir: &Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let url = format!("sqlite://{}?mode=ro", data_dir.join("tandem.db").display());
    sqlx::SqliteConnection::connect(&url).await.expect("open db")
}

/// A read-write connection, to damage a stopped server's database on purpose.
pub async fn db_rw(data_dir: &Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let url = format!("sqlite://{}", data_dir.join("tandem.db").display());
    sqlx::SqliteConnection::connect(&url).await.expect("open db")
}

pub async fn count_log_rows(data_dir: &Path) -> i64 {
    sqlx::query_scalar("select count(*) from updates")
        .fetch_one(&mut db(data_dir).await)
        .await
        .expect("count")
}

/// The real `tandem` binary on `data_dir`, started on an ephemeral port. Returns once it
/// printed `listening addr=…`, or Err with everything it printed if it exited first.
pub async fn spawn_binary(data_dir: &Path, extra: &[&str]) -> Result<(Child, String), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["--listen", "127.0.0.1:0", "--web-dir=", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tandem");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = String::new();
    let found = timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix("listening addr=") {
                return Some(addr.trim().to_string());
            }
            printed.push_str(&line);
            printed.push('\n');
        }
        None
    })
    .await
    .ok()
    .flatten();
    match found {
        Some(addr) => {
            // Keep draining both pipes so the child never blocks on a full one.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            let mut errors = BufReader::new(stderr).lines();
            tokio::spawn(async move { while let Ok(Some(_)) = errors.next_line().await {} });
            Ok((child, addr))
        }
        None => {
            let mut rest = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut BufReader::new(stderr), &mut rest)
                .await;
            Err(printed + &rest)
        }
    }
}

impl YClient {
    /// After `connect`: either the handshake completes (Ok with the text) or the server
    /// closes the connection (Err with code and reason).
    pub async fn expect_close_or_text(&mut self) -> Result<String, (u16, String)> {
        let sv = self.doc.transact().state_vector();
        let _ = self.socket.send(Message::Binary(protocol::sync_step1(&sv))).await;
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(closed) = &self.closed {
                return Err(closed.clone());
            }
            if !self.step2_sizes.is_empty() {
                return Ok(self.text());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.socket.next()).await {
                Err(_) => panic!("neither synced nor closed"),
                Ok(None) | Ok(Some(Err(_))) => {
                    return Err(self.closed.clone().unwrap_or((1006, String::new())));
                }
                Ok(Some(Ok(msg))) => self.handle(msg).await,
            }
        }
    }
}

/// A request with exactly these headers and body.
pub async fn http_with(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    http_client::request(url, method, "HTTP/1.1", headers, body).await.expect("http")
}
