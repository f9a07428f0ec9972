//! HTTP surface: the WebSocket upgrade, health, a small JSON API and the browser editor.
//! Handlers validate inputs (`DocId`, `BrowserId`) before anything else runs, so a bad name
//! is an HTTP 400 with a reason, never a WebSocket that opens and then fails.
//!
//! Static files: the editor is built into `--web-dir` (by build.rs, see web/build.mjs) as
//! two HTML pages plus content-hashed bundles under `assets/`. Hashed assets are cached
//! forever (`immutable`); the HTML is revalidated on every load, so a new build is picked
//! up at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::awareness::PALETTE;
use crate::config::Config;
use crate::error::Error;
use crate::id::{BrowserId, DocId};
use crate::rooms::Rooms;
use crate::store::Store;
use crate::ws;

/// tungstenite allocates the whole read buffer up front (128 KiB by default), most of an
/// idle connection's memory; 8 KiB covers typical frames, and bigger ones grow it.
const READ_BUFFER: usize = 8 * 1024;
/// Frames are buffered up to this size before a write; `ws` flushes after each batch anyway.
const WRITE_BUFFER: usize = 16 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub rooms: Rooms,
    /// Connections run outside hyper once upgraded; the tracker lets shutdown wait for them.
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

pub fn router(state: AppState) -> Router {
    let web_dir = state.config.web_dir.clone();
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/ws/{doc}", get(websocket))
        .route("/api/docs", get(list_docs))
        .route("/api/docs/{doc}/identity", post(identity));
    if !web_dir.as_os_str().is_empty() {
        let assets = ServeDir::new(web_dir.join("assets"));
        app = app
            .route("/", get(index_page))
            .route("/d/{doc}", get(editor_page))
            .route("/sw.js", get(service_worker))
            .nest_service(
                "/assets",
                tower::ServiceBuilder::new()
                    .layer(SetResponseHeaderLayer::overriding(
                        header::CACHE_CONTROL,
                        HeaderValue::from_static("public, max-age=31536000, immutable"),
                    ))
                    .service(assets),
            );
    }
    app.with_state(state)
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable").into_response()
        }
    }
}

#[derive(Deserialize)]
struct WsParams {
    /// The browser's id, sent by our editor so the room knows whose colour is in use.
    /// Stock y-websocket clients leave it out.
    browser: Option<String>,
}

/// The WebSocket endpoint. The upgrade is done here by hand, rather than with axum's
/// `WebSocketUpgrade`, to get tokio-tungstenite's stream itself: only that one can send a
/// large message as fragments (see `ws::write_batch`). Through axum's wrapper, every peer
/// receiving a 20 MiB document would hold a 20 MiB copy in its write buffer for good.
async fn websocket(
    Path(doc): Path<String>,
    Query(params): Query<WsParams>,
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, Error> {
    // The name is checked before the upgrade headers, so a bad name is always a 400 that
    // says why, whatever else is wrong with the request.
    let doc_id = DocId::parse(&doc)?;
    let browser = params.browser.as_deref().map(BrowserId::parse).transpose()?;
    let Some(accept) = accept_key(request.headers()) else {
        return Ok((StatusCode::UPGRADE_REQUIRED, "expected a WebSocket upgrade (version 13)")
            .into_response());
    };
    if state.shutdown.is_cancelled() {
        return Err(Error::ShuttingDown);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(state.config.max_message_bytes))
        .max_frame_size(Some(state.config.max_message_bytes))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER);
    let upgrade = hyper::upgrade::on(request);
    state.tracker.clone().spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                ws::run(socket, doc_id, browser, state.rooms, state.config, state.shutdown).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// Checks the RFC 6455 upgrade headers; returns the Sec-WebSocket-Accept value.
fn accept_key(headers: &HeaderMap) -> Option<String> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return None;
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    Some(derive_accept_key(key.as_bytes()))
}

#[derive(Serialize)]
struct DocEntry {
    name: String,
    /// Milliseconds since the Unix epoch; absent for a document open but never edited.
    updated_at: Option<i64>,
    /// People connected right now.
    peers: usize,
}

#[derive(Serialize)]
struct DocList {
    docs: Vec<DocEntry>,
    rooms_loaded: usize,
}

async fn list_docs(State(state): State<AppState>) -> Result<Json<DocList>, Error> {
    let stored = state.store.list(500).await?;
    let mut live: HashMap<String, usize> = state
        .rooms
        .peer_counts()
        .into_iter()
        .map(|(doc, n)| (doc.as_str().to_string(), n))
        .collect();
    let rooms_loaded = live.len();
    let mut docs: Vec<DocEntry> = stored
        .into_iter()
        .map(|d| DocEntry {
            peers: live.remove(&d.name).unwrap_or(0),
            updated_at: Some(d.updated_at),
            name: d.name,
        })
        .collect();
    // Open right now but not written yet: still worth listing, people are in it.
    docs.extend(live.into_iter().filter(|(_, peers)| *peers > 0).map(|(name, peers)| DocEntry {
        name,
        updated_at: None,
        peers,
    }));
    Ok(Json(DocList { docs, rooms_loaded }))
}

#[derive(Deserialize)]
struct IdentityRequest {
    browser: String,
}

#[derive(Serialize)]
struct Identity {
    /// Caret and label colour.
    color: &'static str,
    /// Selection highlight: the same colour at 20% opacity.
    color_light: String,
    index: usize,
}

/// The cursor colour the server assigns this browser in this document: unique among the
/// people present while the palette lasts, and stable when the same browser returns.
async fn identity(
    Path(doc): Path<String>,
    State(state): State<AppState>,
    Json(request): Json<IdentityRequest>,
) -> Result<Json<Identity>, Error> {
    let doc_id = DocId::parse(&doc)?;
    let browser = BrowserId::parse(&request.browser)?;
    let index = state.rooms.colour(&doc_id, &browser).await?;
    let color = PALETTE[index % PALETTE.len()];
    Ok(Json(Identity { color, color_light: format!("{color}33"), index }))
}

async fn index_page(State(state): State<AppState>) -> Response {
    page(&state.config.web_dir, "index.html").await
}

async fn editor_page(Path(doc): Path<String>, State(state): State<AppState>) -> Response {
    if let Err(e) = DocId::parse(&doc) {
        return e.into_response();
    }
    page(&state.config.web_dir, "editor.html").await
}

async fn service_worker(State(state): State<AppState>) -> Response {
    match tokio::fs::read(state.config.web_dir.join("sw.js")).await {
        Ok(js) => (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            js,
        )
            .into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn page(web_dir: &std::path::Path, name: &str) -> Response {
    let path: PathBuf = web_dir.join(name);
    match tokio::fs::read_to_string(&path).await {
        Ok(html) => ([(header::CACHE_CONTROL, "no-cache")], Html(html)).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Html(NOT_BUILT)).into_response(),
    }
}

const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>Tandem</title>\
<body style=\"font-family:system-ui;max-width:40rem;margin:4rem auto;line-height:1.5\">\
<h1>The editor is not built</h1><p>This server was compiled without the browser editor, \
usually because <code>npm</code> was not found at build time. Install Node.js 18+ and npm, \
then rebuild (<code>cargo run --release</code>). Yjs clients can still connect to \
<code>/ws/{document}</code>.</p>";
