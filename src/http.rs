//! HTTP surface: routes, health, the WebSocket upgrade and the browser editor's files; the
//! JSON API under `/api` is `api`.
//! Handlers validate inputs (`DocId`, `BrowserId`) before anything else runs, so a bad name
//! is an HTTP 400 with a reason, never a WebSocket that opens and then fails. Errors are
//! `{"error": "..."}` with a fitting status, mapped once in `error.rs`.
//!
//! Nothing here touches a document: writes go to the room (`Rooms::apply`), on the same
//! path as a peer's update, and are answered after their commit.
//!
//! Every handler that names a document asks the `Caller` (from `Authorization: Bearer`)
//! for the access it needs before anything else happens; with no auth key configured the
//! caller is `Open` and may do everything, as before access control.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::auth::{Access, Auth};
use crate::config::Config;
use crate::error::Error;
use crate::id::{BrowserId, DocId};
use crate::rooms::Rooms;
use crate::store::Store;
use crate::web::Web;
use crate::ws::{self, Admission, ConnDeps, Handshake};

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Store,
    pub(crate) rooms: Rooms,
    pub(crate) auth: Auth,
    pub(crate) web: Arc<Web>,
    /// This node's name (`--node-id`).
    pub(crate) node: String,
    pub(crate) webhooks: Arc<crate::webhook::Counters>,
    /// What an upgraded connection needs (it runs outside hyper, tracked for shutdown).
    pub(crate) conn: ConnDeps,
}

pub(crate) fn router(state: AppState) -> Router {
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/ws/{doc}", get(websocket))
        .merge(crate::api::router(&state));
    if state.web.enabled() {
        app = app
            .route("/", get(index_page))
            .route("/d/{doc}", get(editor_page))
            .route("/sw.js", get(service_worker))
            .route("/assets/{*path}", get(asset));
    }
    // Whole-request deadline (body included): a client that declares a large body and
    // trickles it holds a descriptor for this long at most. Upgraded WebSockets run
    // outside it (the handler returns at the 101).
    let timeout = tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        state.config.request_timeout(),
    );
    app.layer(timeout).with_state(state)
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.health().await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(reason) => {
            tracing::error!(%reason, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {reason}")).into_response()
        }
    }
}

#[derive(Deserialize)]
struct WsParams {
    /// The browser's id, sent by our editor so the room knows whose colour is in use.
    /// Stock y-websocket clients leave it out.
    browser: Option<String>,
    /// A token, for clients that cannot set headers (the y-websocket provider's `params`).
    token: Option<String>,
}

/// A browser's upgrade from an origin not in `--allowed-origins` (list the server's own
/// origin too when the built-in editor is used). Requests without `Origin` are not from a
/// browser.
fn origin_allowed(config: &Config, headers: &HeaderMap) -> bool {
    if config.allowed_origins.is_empty() {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let origin = origin.trim_end_matches('/');
    // Only the list counts: trusting `Host` as well would let DNS rebinding through.
    config.allowed_origins.iter().any(|a| a.trim().trim_end_matches('/') == origin)
}

/// `GET /ws/{doc}`: the y-websocket endpoint (see `ws` for the handshake and the socket).
async fn websocket(
    Path(doc): Path<String>,
    Query(params): Query<WsParams>,
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, Error> {
    // The name is checked before the upgrade headers, so a bad name is always a 400 that
    // says why, whatever else is wrong with the request.
    let doc_id = DocId::parse(&doc)?;
    let mut browser = params.browser.as_deref().map(BrowserId::parse).transpose()?;
    let accept = match ws::handshake(request.version(), request.headers())? {
        Handshake::Accept(accept) => accept,
        Handshake::NotUpgrade => {
            return Ok((
                StatusCode::UPGRADE_REQUIRED,
                [(header::SEC_WEBSOCKET_VERSION, "13")],
                "expected a WebSocket upgrade (version 13)",
            )
                .into_response());
        }
    };
    if state.conn.shutdown.is_cancelled() {
        return Err(Error::ShuttingDown);
    }
    if !origin_allowed(&state.config, request.headers()) {
        tracing::info!(doc = %doc_id, origin = ?request.headers().get(header::ORIGIN), "origin refused");
        return Err(Error::OriginRefused);
    }
    let ip = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let slot = state.conn.slots.take(ip, &state.config).inspect_err(|e| {
        tracing::warn!(reason = %e, "connection refused");
    })?;
    let (subprotocol, protocol_token) = ws::offered_protocols(request.headers());
    let token = params.token.or(protocol_token);
    let admission = match state.auth.caller(token.as_deref()) {
        Err(e) => Admission::Refused(e),
        Ok(caller) => match caller.access(&doc_id) {
            Err(e) => Admission::Refused(e),
            Ok(access) => {
                let identity = caller.identity().cloned();
                if let Some(id) = &identity {
                    // With a token, colours follow the person on every device.
                    browser = id.colour_key();
                }
                Admission::Admitted { identity, can_write: access == Access::Write, browser }
            }
        },
    };
    Ok(ws::upgrade(request, accept, subprotocol, doc_id, admission, slot, state.conn))
}

async fn index_page(State(state): State<AppState>) -> Response {
    state.web.page("index.html").await
}

async fn editor_page(Path(doc): Path<String>, State(state): State<AppState>) -> Response {
    if let Err(e) = DocId::parse(&doc) {
        return e.into_response();
    }
    state.web.page("editor.html").await
}

async fn service_worker(State(state): State<AppState>) -> Response {
    state.web.file("sw.js").await
}

async fn asset(Path(path): Path<String>, State(state): State<AppState>) -> Response {
    state.web.file(&format!("assets/{path}")).await
}
