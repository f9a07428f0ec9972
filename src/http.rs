//! HTTP surface: the WebSocket upgrade, health, a small JSON API and the browser editor's
//! static files. Handlers validate inputs (a `DocId`) before anything else runs, so a bad name
//! is an HTTP 400 with a reason, never a WebSocket that opens and then fails.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::services::ServeDir;

use crate::config::Config;
use crate::error::Error;
use crate::id::DocId;
use crate::rooms::Rooms;
use crate::store::Store;
use crate::ws;

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
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/ws/{doc}", get(websocket))
        .route("/api/docs", get(list_docs))
        .with_state(state);
    if web_dir.as_os_str().is_empty() {
        api
    } else {
        api.fallback_service(ServeDir::new(web_dir))
    }
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

async fn websocket(
    Path(doc): Path<String>,
    State(state): State<AppState>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    // The name is checked before the upgrade headers, so a bad name is always a 400 that
    // says why, whatever else is wrong with the request.
    let doc_id = DocId::parse(&doc)?;
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    if state.shutdown.is_cancelled() {
        return Err(Error::ShuttingDown);
    }
    let limit = state.config.max_message_bytes;
    let tracker = state.tracker.clone();
    Ok(upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            tracker.track_future(ws::run(
                socket,
                doc_id,
                state.rooms,
                state.config,
                state.shutdown,
            ))
        }))
}

#[derive(serde::Serialize)]
struct DocList {
    docs: Vec<crate::store::DocSummary>,
    rooms_loaded: usize,
}

async fn list_docs(State(state): State<AppState>) -> Result<Json<DocList>, Error> {
    let docs = state.store.list(500).await?;
    Ok(Json(DocList {
        docs,
        rooms_loaded: state.rooms.loaded(),
    }))
}
