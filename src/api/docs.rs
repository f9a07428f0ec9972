//! `/api/docs…`: the documents as an application backend sees them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, StateVector, Transact};

use super::{ApiQuery, Body, DocPath, json_body};
use crate::auth::{Access, Caller};
use crate::colour::PALETTE;
use crate::content::{self, DEFAULT_FIELD, Format, Kind, Payload};
use crate::error::Error;
use crate::http::AppState;
use crate::id::{BrowserId, DocId};
use crate::room::Origin;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const B64_URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
/// The `{doc}` path parameter as the description states it (`DocId::parse` is the rule).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only its description is used
pub(crate) struct DocParam {
    /// 1-200 ASCII letters, digits, '-', '_' and '.', not only dots.
    #[param(
        pattern = r"^[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*$",
        max_length = 200,
        min_length = 1
    )]
    doc: String,
}

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// `{"error": "..."}`, the body of every error.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    error: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only documents whose names start with this.
    #[param(pattern = r"^[A-Za-z0-9._-]*$", max_length = 200)]
    prefix: Option<String>,
    /// Documents per page (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[A-Za-z0-9._-]*$", max_length = 200)]
    cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DocEntry {
    name: String,
    /// Milliseconds since the Unix epoch.
    created_at: i64,
    updated_at: i64,
    /// Stored bytes (snapshot and log).
    size: i64,
    /// People connected right now.
    peers: usize,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DocList {
    /// In name order.
    docs: Vec<DocEntry>,
    /// Pass as `cursor` for the next page; absent on the last one.
    next_cursor: Option<String>,
    /// Documents loaded in memory right now (all of them, for an admin; those you can read
    /// otherwise).
    rooms_loaded: usize,
}

/// Documents in name order, a page at a time. Only those the token can read are listed.
#[utoipa::path(get, path = "/api/docs", tag = "documents", params(ListParams),
    responses((status = 200, body = DocList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<DocList>, Error> {
    let prefix = params.prefix.unwrap_or_default();
    if !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || prefix.len() > DocId::MAX_LEN
    {
        return Err(Error::BadRequest("prefix: letters, digits, '-', '_' and '.' only".into()));
    }
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::BadRequest(format!("limit: 1 to {MAX_PAGE}")));
    }
    // The cursor is the last name of the previous page (opaque to clients, but any string
    // of name characters is a valid lower bound, so none is refused for what it names).
    let after = params.cursor.unwrap_or_default();
    if !after.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || after.len() > DocId::MAX_LEN
    {
        return Err(Error::BadRequest("cursor: not one this server handed out".into()));
    }
    let mut rows = state.store.list(&prefix, &after, i64::from(limit) + 1).await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|last| last.name.clone())
    } else {
        None
    };
    let live = state.rooms.peer_counts();
    let docs = rows
        .into_iter()
        .filter_map(|row| {
            let doc = DocId::parse(&row.name).ok()?;
            caller.can_read(&doc).then(|| DocEntry {
                peers: live.get(&doc).copied().unwrap_or(0),
                name: row.name,
                created_at: row.created_at,
                updated_at: row.updated_at,
                size: row.bytes,
            })
        })
        .collect();
    let rooms_loaded = live.keys().filter(|doc| caller.can_read(doc)).count();
    Ok(Json(DocList { docs, next_cursor, rooms_loaded }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Metadata {
    name: String,
    /// Milliseconds since the Unix epoch.
    created_at: i64,
    updated_at: i64,
    /// Stored bytes (snapshot and log).
    stored_bytes: u64,
    /// Log rows since the last snapshot.
    log_rows: u64,
    /// People connected right now.
    peers: usize,
    /// Each top-level shared type and its kind.
    types: BTreeMap<String, Kind>,
}

/// A document's metadata. 404 for a document with nothing stored.
#[utoipa::path(get, path = "/api/docs/{doc}", tag = "documents", params(DocParam),
    responses((status = 200, body = Metadata), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn metadata(
    DocPath(doc): DocPath,
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Metadata>, Error> {
    let doc_id = DocId::parse(&doc)?;
    caller.require(&doc_id, Access::Read)?;
    let (stats, types) =
        state.rooms.read(&doc_id, Arc::new(|doc, stats| (*stats, content::kinds(doc)))).await?;
    // Read after the room answered, so the row reflects at least what the room had.
    let summary = state.store.summary(&doc_id).await?;
    let Some(summary) = summary.filter(|_| !stats.blank) else {
        return Err(not_found(&doc_id));
    };
    Ok(Json(Metadata {
        name: summary.name,
        created_at: summary.created_at,
        updated_at: summary.updated_at,
        stored_bytes: stats.stored_bytes,
        log_rows: stats.log_rows,
        peers: stats.peers,
        types,
    }))
}

fn not_found(doc: &DocId) -> Error {
    Error::NotFound(format!("no document named {:?}", doc.as_str()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UpdateParams {
    /// A Yjs v1 state vector (standard or URL-safe base64): only what it lacks is sent.
    #[param(pattern = r"^[A-Za-z0-9+/_=-]*$")]
    sv: Option<String>,
}

/// The document as one Yjs v1 update, or the diff against a state vector.
#[utoipa::path(get, path = "/api/docs/{doc}/update", tag = "documents",
    params(DocParam, UpdateParams),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn get_update(
    DocPath(doc): DocPath,
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<UpdateParams>,
) -> Result<Response, Error> {
    let doc_id = DocId::parse(&doc)?;
    caller.require(&doc_id, Access::Read)?;
    let sv = match params.sv.as_deref().filter(|s| !s.is_empty()) {
        None => StateVector::default(),
        Some(text) => {
            let bytes =
                decode_base64(text).ok_or_else(|| Error::BadRequest("sv: not base64".into()))?;
            StateVector::decode_v1(&bytes)
                .map_err(|e| Error::BadRequest(format!("sv: not a Yjs state vector: {e}")))?
        }
    };
    let update = state
        .rooms
        .read(
            &doc_id,
            Arc::new(move |doc, stats| {
                if stats.blank {
                    return None;
                }
                let txn = doc.transact();
                // An odd state vector can make yrs panic (see room::core); the full state is
                // a superset of any diff.
                let diff = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    txn.encode_state_as_update_v1(&sv)
                }));
                Some(
                    diff.unwrap_or_else(|_| txn.encode_state_as_update_v1(&StateVector::default())),
                )
            }),
        )
        .await?
        .ok_or_else(|| not_found(&doc_id))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], update).into_response())
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| B64_URL.decode(trimmed))
        .ok()
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct StateVectorReply {
    /// The document's state vector after the write (Yjs v1 encoding, standard base64).
    state_vector: String,
}

/// Applies a Yjs v1 update on the peers' write path; answered once committed, and relayed
/// to connected peers like any update.
#[utoipa::path(post, path = "/api/docs/{doc}/update", tag = "documents", params(DocParam),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = StateVectorReply), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn post_update(
    DocPath(doc): DocPath,
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(body): Body,
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
    Ok(Json(StateVectorReply { state_vector: B64.encode(&applied.state_vector) }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ContentParams {
    /// `text`, `json`, `html` or `markdown`. Reading: default `text` (`json` for a map or
    /// array). Writing: default from the body's Content-Type.
    format: Option<Format>,
    /// The top-level shared type (default `default`, the editor's).
    #[param(min_length = 1, max_length = 256)]
    field: Option<String>,
    /// Writing: `replace` (PUT's default) or `append` (POST's default).
    mode: Option<Mode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    Replace,
    Append,
}

fn field_name(field: Option<String>) -> Result<String, Error> {
    let field = field.unwrap_or_else(|| DEFAULT_FIELD.to_string());
    if field.is_empty() || field.len() > 256 {
        return Err(Error::BadRequest("field: 1 to 256 bytes".into()));
    }
    Ok(field)
}

/// The content of one shared type: for the editor's rich text, plain text, ProseMirror JSON,
/// HTML or Markdown; for a `Y.Text`, text (or its delta as JSON); for a map or an array, JSON.
#[utoipa::path(get, path = "/api/docs/{doc}/content", tag = "content",
    params(DocParam, ContentParams),
    responses((status = 200, content(("text/plain"), ("text/markdown"), ("text/html"), ("application/json"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn get_content(
    DocPath(doc): DocPath,
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ContentParams>,
) -> Result<Response, Error> {
    let doc_id = DocId::parse(&doc)?;
    caller.require(&doc_id, Access::Read)?;
    let field = field_name(params.field)?;
    let format = params.format;
    let exported = state
        .rooms
        .read(
            &doc_id,
            Arc::new(move |doc, stats| {
                if stats.blank {
                    return Err(Error::NotFound("nothing stored".into()));
                }
                let format =
                    format.unwrap_or_else(|| match content::kinds(doc).get(field.as_str()) {
                        Some(Kind::Map | Kind::Array) => Format::Json,
                        _ => Format::Text,
                    });
                content::export(doc, &field, format)
            }),
        )
        .await?
        .map_err(|e| match e {
            Error::NotFound(reason) if reason == "nothing stored" => not_found(&doc_id),
            other => other,
        })?;
    Ok(([(header::CONTENT_TYPE, exported.content_type)], exported.body).into_response())
}

/// Replaces the content of one shared type, as one change that connected editors see live.
/// Answered after the commit.
#[utoipa::path(put, path = "/api/docs/{doc}/content", tag = "content",
    params(DocParam, ContentParams),
    request_body(content((String = "text/markdown"), (String = "text/html"), (String = "text/plain"), (Object = "application/json"))),
    responses((status = 200, body = StateVectorReply), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn put_content(
    doc: DocPath,
    state: State<AppState>,
    caller: Caller,
    params: ApiQuery<ContentParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<StateVectorReply>, Error> {
    write_content(doc, state, caller, params, headers, body, Mode::Replace).await
}

/// Appends to the content of one shared type (`mode=replace` replaces instead).
#[utoipa::path(post, path = "/api/docs/{doc}/content", tag = "content",
    params(DocParam, ContentParams),
    request_body(content((String = "text/markdown"), (String = "text/html"), (String = "text/plain"), (Object = "application/json"))),
    responses((status = 200, body = StateVectorReply), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn post_content(
    doc: DocPath,
    state: State<AppState>,
    caller: Caller,
    params: ApiQuery<ContentParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<StateVectorReply>, Error> {
    write_content(doc, state, caller, params, headers, body, Mode::Append).await
}

async fn write_content(
    DocPath(doc): DocPath,
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ContentParams>,
    headers: HeaderMap,
    Body(body): Body,
    default_mode: Mode,
) -> Result<Json<StateVectorReply>, Error> {
    let doc_id = DocId::parse(&doc)?;
    caller.require(&doc_id, Access::Write)?;
    let field = field_name(params.field)?;
    let format = match params.format {
        Some(format) => format,
        None => format_from_content_type(&headers)?,
    };
    let append = params.mode.unwrap_or(default_mode) == Mode::Append;
    let payload: Arc<Payload> = Arc::new(content::parse(format, &body)?);
    // Generous: the Yjs encoding of content is rarely twice its text.
    let estimate = body.len() as u64 * 2 + 1024;
    let applied = state
        .rooms
        .edit(&doc_id, Arc::new(move |txn| content::edit(txn, &field, &payload, append)), estimate)
        .await?;
    Ok(Json(StateVectorReply { state_vector: B64.encode(&applied.state_vector) }))
}

fn format_from_content_type(headers: &HeaderMap) -> Result<Format, Error> {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    match kind.as_str() {
        "text/markdown" | "text/x-markdown" => Ok(Format::Markdown),
        "text/html" => Ok(Format::Html),
        "text/plain" => Ok(Format::Text),
        "application/json" => Ok(Format::Json),
        _ => Err(Error::BadRequest(
            "give ?format=markdown|html|text|json or a matching Content-Type".into(),
        )),
    }
}

/// Deletes a document (admin): connected peers are closed with 4404 `document deleted`,
/// every stored row goes, and the name starts afresh.
#[utoipa::path(delete, path = "/api/docs/{doc}", tag = "documents", params(DocParam),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete(
    DocPath(doc): DocPath,
    State(state): State<AppState>,
    caller: Caller,
) -> Result<StatusCode, Error> {
    let doc_id = DocId::parse(&doc)?;
    caller.require_admin()?;
    if !state.rooms.delete(&doc_id).await? {
        return Err(not_found(&doc_id));
    }
    let by = caller.identity().map(|id| id.sub.clone()).unwrap_or_default();
    tracing::info!(doc = %doc_id, by, "document deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct IdentityRequest {
    browser: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Identity {
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
#[utoipa::path(post, path = "/api/docs/{doc}/identity", tag = "editor", params(DocParam),
    request_body = IdentityRequest,
    responses((status = 200, body = Identity), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(crate) async fn identity(
    DocPath(doc): DocPath,
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body,
) -> Result<Json<Identity>, Error> {
    let doc_id = DocId::parse(&doc)?;
    caller.require(&doc_id, Access::Read)?;
    let request: IdentityRequest = json_body(&body)?;
    let browser = match caller.identity().and_then(|id| id.colour_key()) {
        Some(key) => key,
        None => BrowserId::parse(&request.browser)?,
    };
    let index = state.rooms.colour(&doc_id, &browser).await?;
    let color = PALETTE[index % PALETTE.len()];
    let name = caller.identity().and_then(|id| id.name.clone());
    Ok(Json(Identity { color, color_light: format!("{color}33"), index, name }))
}
