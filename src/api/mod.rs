//! The HTTP API under `/api`: documents (list, metadata, Yjs updates, content in four
//! formats, deletion), identity, and the admin endpoints (revocation, webhook status).
//!
//! Every handler asks the `Caller` for the access it needs before anything else happens.
//! Nothing here touches a document: reads and writes go to the document's room
//! (`Rooms::read`, `Rooms::edit`, `Rooms::apply`) and are answered after the commit of
//! whatever came before them, so an API client never sees, or is acknowledged for, anything
//! that is not durable.
//!
//! Extractor failures (a bad query string, an oversized body) are our `Error` too, so every
//! error is `{"error": "..."}` with the status the OpenAPI description promises; the
//! description itself is generated from the annotations here (`openapi`).

mod admin;
mod docs;
mod openapi;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use crate::auth::Caller;
use crate::error::Error;
use crate::http::AppState;

pub(crate) fn router(state: &AppState) -> Router<AppState> {
    let body_limit = state.config.max_message_bytes;
    Router::new()
        .route("/api/openapi.json", get(openapi::serve))
        .route("/api/docs", get(docs::list))
        .route("/api/docs/{doc}", get(docs::metadata).delete(docs::delete))
        .route("/api/docs/{doc}/identity", post(docs::identity))
        .route(
            "/api/docs/{doc}/update",
            get(docs::get_update).post(docs::post_update).layer(DefaultBodyLimit::max(body_limit)),
        )
        .route(
            "/api/docs/{doc}/content",
            get(docs::get_content)
                .put(docs::put_content)
                .post(docs::post_content)
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .route("/api/admin/revoke", post(admin::revoke))
        .route("/api/admin/webhooks", get(admin::webhooks).delete(admin::drop_webhooks))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), refuse_cross_site_writes))
}

/// Browsers say where a request comes from (`Sec-Fetch-Site`); a write from another site is
/// refused unless its `Origin` is in `--allowed-origins`. A cross-site `fetch` with a
/// `text/plain` body needs no CORS preflight, so without this any page a user visits could
/// write into (or delete from) a server on their machine running without access control.
/// Clients that are not browsers send no such header and are not affected.
async fn refuse_cross_site_writes(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, Error> {
    use axum::http::Method;
    let site = request.headers().get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let write = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if write && matches!(site, Some("cross-site" | "same-site")) {
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .map(|o| o.trim_end_matches('/'));
        let listed = origin.is_some_and(|origin| {
            state.config.allowed_origins.iter().any(|a| a.trim().trim_end_matches('/') == origin)
        });
        if !listed {
            tracing::info!(?origin, path = %request.uri().path(), "cross-site write refused");
            return Err(Error::Forbidden(
                "cross-site request refused (list its origin in --allowed-origins)".into(),
            ));
        }
    }
    Ok(next.run(request).await)
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

/// The `{doc}` path segment, as our error when it is not valid UTF-8.
pub(crate) struct DocPath(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for DocPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<DocPath, Error> {
        let axum::extract::Path(doc) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| Error::BadRequest(e.body_text()))?;
        Ok(DocPath(doc))
    }
}

/// A query string, as our error when it does not parse.
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<ApiQuery<T>, Error> {
        let axum::extract::Query(value) = axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map_err(|e| Error::BadRequest(e.body_text()))?;
        Ok(ApiQuery(value))
    }
}

/// A request body, as our error when it is too large or cut short.
pub(crate) struct Body(pub(crate) Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Body, Error> {
        match Bytes::from_request(request, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(Error::BodyTooLarge)
            }
            Err(e) => Err(Error::BadRequest(e.body_text())),
        }
    }
}

/// A JSON body, parsed by us so a bad one is a 400 with serde's reason.
pub(crate) fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))
}
