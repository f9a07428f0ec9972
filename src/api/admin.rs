//! `/api/admin/…`: what only an admin token (or an open server) may do.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::Body;
use super::docs::ErrorBody;
use crate::auth::{Caller, Revocation, RevocationKind};
use crate::error::Error;
use crate::http::AppState;
use crate::store::{WebhookOutcome, WebhookStatus};

/// Exactly one of the two.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum RevokeRequest {
    Jti(ByJti),
    Sub(BySub),
}

/// One token.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ByJti {
    #[schema(min_length = 1)]
    jti: String,
}

/// Every token the user holds now.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BySub {
    #[schema(min_length = 1)]
    sub: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Revoked {
    revoked: Revocation,
}

/// Revokes a token (`{"jti": ...}`) or every token a user holds now (`{"sub": ...}`).
/// Stored before the answer; live connections holding a matching token close with 4401.
#[utoipa::path(post, path = "/api/admin/revoke", tag = "admin", request_body = RevokeRequest,
    responses((status = 200, body = Revoked), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body,
) -> Result<Json<Revoked>, Error> {
    if matches!(caller, Caller::Open) {
        return Err(Error::Forbidden(
            "revocation needs access control: start the server with an auth key".into(),
        ));
    }
    caller.require_admin()?;
    let exactly_one = || Error::BadRequest("give exactly one of \"jti\" and \"sub\"".into());
    let request: RevokeRequest = serde_json::from_slice(&body).map_err(|_| exactly_one())?;
    let (kind, value) = match request {
        RevokeRequest::Jti(ByJti { jti }) if !jti.is_empty() => (RevocationKind::Jti, jti),
        RevokeRequest::Sub(BySub { sub }) if !sub.is_empty() => (RevocationKind::Sub, sub),
        _ => return Err(exactly_one()),
    };
    let revoked = state.auth.revocations().revoke(&state.store, kind, value).await?;
    let by = caller.identity().map(|id| id.sub.clone()).unwrap_or_default();
    tracing::info!(kind = kind.as_str(), value = %revoked.value, by, "revoked");
    Ok(Json(Revoked { revoked }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct WebhookReport {
    /// This node's name (as in every event it sends).
    node: String,
    /// Every configured receiver, with what it is owed; then any receiver no longer
    /// configured that is still owed events (kept, not sent).
    receivers: Vec<WebhookStatus>,
    /// Since this process started.
    delivered: u64,
    failed_attempts: u64,
}

/// Webhook delivery state: per receiver, the events pending, how many of them are failing,
/// and the last error.
#[utoipa::path(get, path = "/api/admin/webhooks", tag = "admin",
    responses((status = 200, body = WebhookReport), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn webhooks(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<WebhookReport>, Error> {
    caller.require_admin()?;
    let mut stored = state.store.webhook_status().await?;
    let receivers = state
        .config
        .webhook_url
        .iter()
        .map(|url| url.trim())
        .filter(|url| !url.is_empty())
        .map(|url| match stored.iter().position(|s| s.url == url) {
            Some(i) => stored.remove(i),
            None => WebhookStatus {
                url: url.to_string(),
                configured: true,
                pending: 0,
                failing: 0,
                oldest_pending_at: None,
                last_error: None,
                last_error_at: None,
            },
        })
        .collect::<Vec<_>>()
        .into_iter()
        // Receivers no longer configured, whose events are kept but not sent.
        .chain(stored)
        .collect();
    Ok(Json(WebhookReport {
        node: state.node.clone(),
        receivers,
        delivered: state.webhooks.delivered.load(Ordering::Relaxed),
        failed_attempts: state.webhooks.failed_attempts.load(Ordering::Relaxed),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DropParams {
    /// The receiver whose pending events are dropped.
    #[param(min_length = 1)]
    url: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Dropped {
    url: String,
    /// Events that were pending for it.
    dropped: i64,
}

/// Drops every pending event owed to one receiver (for one that is gone for good; events
/// of a receiver that is merely down are delivered when it is back).
#[utoipa::path(delete, path = "/api/admin/webhooks", tag = "admin", params(DropParams),
    responses((status = 200, body = Dropped), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(crate) async fn drop_webhooks(
    State(state): State<AppState>,
    caller: Caller,
    super::ApiQuery(params): super::ApiQuery<DropParams>,
) -> Result<Json<Dropped>, Error> {
    caller.require_admin()?;
    if params.url.is_empty() {
        return Err(Error::BadRequest(
            "url: the receiver's URL, as listed by GET /api/admin/webhooks".into(),
        ));
    }
    let dropped = state
        .store
        .webhook_status()
        .await?
        .into_iter()
        .find(|s| s.url == params.url)
        .map_or(0, |s| s.pending);
    state.store.record_webhook(WebhookOutcome::Drop { url: params.url.clone() }).await?;
    let by = caller.identity().map(|id| id.sub.clone()).unwrap_or_default();
    tracing::warn!(url = %params.url, dropped, by, "dropped pending webhook events");
    Ok(Json(Dropped { url: params.url, dropped }))
}
