//! HTTP surface: routes, health, a small JSON API and the browser editor's files.
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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::auth::{Access, Auth, Caller, RevocationKind};
use crate::colour::PALETTE;
use crate::config::Config;
use crate::error::Error;
use crate::id::{BrowserId, DocId};
use crate::room::Origin;
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
    /// What an upgraded connection needs (it runs outside hyper, tracked for shutdown).
    pub(crate) conn: ConnDeps,
}

pub(crate) fn router(state: AppState) -> Router {
    let body_limit = state.config.max_message_bytes;
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/ws/{doc}", get(websocket))
        .route("/api/docs", get(list_docs))
        .route("/api/docs/{doc}/identity", post(identity))
        .route("/api/admin/revoke", post(revoke))
        .route(
            "/api/docs/{doc}/update",
            post(post_update).layer(DefaultBodyLimit::max(body_limit)),
        );
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

/// The caller of an HTTP request, from `Authorization: Bearer TOKEN`: 401 for a missing or
/// bad token when access control is on.
impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, Error> {
        let token = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(value) => {
                let value = value.to_str().unwrap_or_default();
                match value.split_once(' ') {
                    Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                        Some(token.trim())
                    }
                    _ => {
                        return Err(Error::Unauthorized(
                            "expected Authorization: Bearer TOKEN".into(),
                        ));
                    }
                }
            }
        };
        let caller = state.auth.caller(token)?;
        if let Some(id) = caller.identity() {
            tracing::debug!(sub = %id.sub, jti = ?id.jti, path = %parts.uri.path(), "request");
        }
        Ok(caller)
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

#[derive(Serialize)]
struct StateVectorReply {
    /// The document's state vector after the write (v1 encoding, standard base64).
    state_vector: String,
}

/// `POST /api/docs/{doc}/update`: a Yjs v1 update applied through the room, on the peers'
/// write path; answered once committed, and relayed to connected peers like any update.
async fn post_update(
    Path(doc): Path<String>,
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<StateVectorReply>, Error> {
    let doc_id = DocId::parse(&doc)?;
    caller.require(&doc_id, Access::Write)?;
    // Required, not just checked when present: a cross-site `fetch` with a binary body and
    // no content type needs no CORS preflight; with this one it does.
    let octets = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|kind| kind.as_bytes().starts_with(b"application/octet-stream"));
    if !octets {
        return Err(Error::BadRequest("expected Content-Type: application/octet-stream".into()));
    }
    if body.is_empty() {
        return Err(Error::BadRequest("empty body: expected a Yjs v1 update".into()));
    }
    let applied = state.rooms.apply(&doc_id, body, Origin::Api).await?;
    let state_vector = base64::engine::general_purpose::STANDARD.encode(&applied.state_vector);
    Ok(Json(StateVectorReply { state_vector }))
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

async fn list_docs(State(state): State<AppState>, caller: Caller) -> Result<Json<DocList>, Error> {
    let stored = state.store.list(500).await?;
    let mut live: HashMap<String, usize> = state
        .rooms
        .peer_counts()
        .into_iter()
        .filter(|(doc, _)| caller.can_read(doc))
        .map(|(doc, n)| (doc.as_str().to_string(), n))
        .collect();
    let rooms_loaded = live.len();
    let mut docs: Vec<DocEntry> = stored
        .into_iter()
        .filter(|d| DocId::parse(&d.name).is_ok_and(|doc| caller.can_read(&doc)))
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
    /// With a token: the `name` it carries (the editor shows it instead of asking).
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// The cursor colour the server assigns this browser in this document: unique among the
/// people present while the palette lasts, and stable when the same browser returns.
async fn identity(
    Path(doc): Path<String>,
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<IdentityRequest>,
) -> Result<Json<Identity>, Error> {
    let doc_id = DocId::parse(&doc)?;
    caller.require(&doc_id, Access::Read)?;
    let browser = match caller.identity().and_then(|id| id.colour_key()) {
        Some(key) => key,
        None => BrowserId::parse(&request.browser)?,
    };
    let index = state.rooms.colour(&doc_id, &browser).await?;
    let color = PALETTE[index % PALETTE.len()];
    let name = caller.identity().and_then(|id| id.name.clone());
    Ok(Json(Identity { color, color_light: format!("{color}33"), index, name }))
}

#[derive(Deserialize)]
struct RevokeRequest {
    jti: Option<String>,
    sub: Option<String>,
}

#[derive(Serialize)]
struct Revoked {
    revoked: crate::auth::Revocation,
}

/// `POST /api/admin/revoke` (admin): `{"jti": ...}` or `{"sub": ...}`. Stored before the
/// answer; live connections holding a matching token are closed with 4401 at once.
async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<RevokeRequest>,
) -> Result<Json<Revoked>, Error> {
    caller.require_admin()?;
    let (kind, value) = match (request.jti, request.sub) {
        (Some(jti), None) => (RevocationKind::Jti, jti),
        (None, Some(sub)) => (RevocationKind::Sub, sub),
        _ => return Err(Error::BadRequest("give exactly one of \"jti\" and \"sub\"".into())),
    };
    let revoked = state.auth.revocations().revoke(&state.store, kind, value).await?;
    let by = caller.identity().map(|id| id.sub.clone()).unwrap_or_default();
    tracing::info!(kind = kind.as_str(), value = %revoked.value, by, "revoked");
    Ok(Json(Revoked { revoked }))
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
