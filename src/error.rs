//! What a client can do wrong or run into, mapped once to an HTTP status or a WebSocket
//! close code. Internal causes are logged where they happen; the client only gets a short
//! reason that fits in a close frame (123 bytes).
//!
//! Startup failures (a locked data directory, a read-only database) are not here: they never
//! reach a client and travel as `anyhow` errors out of `main`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

/// Close codes we send. 1000-range codes are RFC 6455; 4000-range codes are ours.
pub(crate) mod close_code {
    pub(crate) const GOING_AWAY: u16 = 1001;
    pub(crate) const PROTOCOL_ERROR: u16 = 1002;
    pub(crate) const UNSUPPORTED_DATA: u16 = 1003;
    pub(crate) const INVALID_PAYLOAD: u16 = 1007;
    pub(crate) const POLICY_VIOLATION: u16 = 1008;
    pub(crate) const TOO_BIG: u16 = 1009;
    pub(crate) const INTERNAL_ERROR: u16 = 1011;
    pub(crate) const TRY_AGAIN_LATER: u16 = 1013;
    /// The peer did not answer pings for two intervals.
    pub(crate) const PING_TIMEOUT: u16 = 4000;
    /// No valid token (missing, malformed, bad signature, expired, not yet valid, revoked).
    pub(crate) const UNAUTHORIZED: u16 = 4401;
    /// A valid token without a grant for this document.
    pub(crate) const FORBIDDEN: u16 = 4403;
    /// The document was deleted (`DELETE /api/docs/{doc}`) while the peer was in it.
    pub(crate) const DOC_DELETED: u16 = 4404;
    /// The update would take the document past `--max-doc-bytes`.
    pub(crate) const DOC_TOO_LARGE: u16 = 4413;
}

/// Everything that can end a request or a connection. `Clone` because one failure (a
/// commit that did not happen) is told to every peer of a room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid document name: {0}")]
    BadDocName(&'static str),
    #[error("invalid browser id: 1-64 letters, digits, '-' or '_'")]
    BadBrowserId,
    #[error("bad websocket handshake: {0}")]
    BadHandshake(&'static str),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("malformed message: {0}")]
    BadFrame(String),
    #[error("text frames are not part of the protocol")]
    TextFrame,
    #[error("unsupported message type {0}")]
    UnknownMessage(u64),
    #[error("invalid yjs update: {0}")]
    InvalidUpdate(String),
    #[error("invalid awareness update: {0}")]
    InvalidAwareness(String),
    #[error("message larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("too slow: outbound queue full")]
    SlowConsumer,
    #[error("no pong for two ping intervals")]
    PingTimeout,
    #[error("server shutting down")]
    ShuttingDown,
    /// The store failed or holds data that does not add up. The cause is logged; the
    /// client is told only which of the two it was.
    #[error("{}", store_reason(.0))]
    Store(#[from] StoreError),
    #[error("room unavailable")]
    RoomGone,
    /// The reason is the whole message ("token expired", "token revoked", ...).
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("origin not allowed")]
    OriginRefused,
    /// The reason is exactly `document too large` (the interface); the limit is
    /// in the server's log.
    #[error("document too large")]
    DocTooLarge { limit: u64 },
    /// A per-connection rate limit (updates, awareness bytes, state requests).
    #[error("rate limit: {0}")]
    RateLimited(String),
    #[error("too many awareness client ids on one connection (limit {limit})")]
    TooManyAwarenessIds { limit: usize },
    #[error("awareness state larger than {limit} bytes")]
    AwarenessTooLarge { limit: usize },
    #[error("the room's presence is full ({limit} bytes)")]
    PresenceFull { limit: usize },
    /// A server-wide cap (connections, rooms) is reached; try again (elsewhere) later.
    #[error("server busy: {0}")]
    Overloaded(String),
    /// A bug (a caught panic); the cause is logged where it happened.
    #[error("internal error")]
    Internal,
    /// Nothing stored under this name (or no such field in it).
    #[error("{0}")]
    NotFound(String),
    /// The reason is exactly `document deleted` (the interface, close code 4404).
    #[error("document deleted")]
    DocDeleted,
    #[error("request body too large")]
    BodyTooLarge,
}

fn store_reason(e: &StoreError) -> &'static str {
    match e {
        StoreError::Corrupt { .. } => "stored document is inconsistent",
        StoreError::Unavailable(_) => "database unavailable",
        _ => "storage failure",
    }
}

impl Error {
    pub(crate) fn status_code(&self) -> StatusCode {
        match self {
            Error::BadDocName(_)
            | Error::BadBrowserId
            | Error::BadHandshake(_)
            | Error::BadRequest(_)
            | Error::BadFrame(_)
            | Error::TextFrame
            | Error::UnknownMessage(_)
            | Error::InvalidUpdate(_)
            | Error::InvalidAwareness(_) => StatusCode::BAD_REQUEST,
            Error::TooLarge { .. }
            | Error::BodyTooLarge
            | Error::DocTooLarge { .. }
            | Error::AwarenessTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) | Error::OriginRefused => StatusCode::FORBIDDEN,
            Error::RateLimited(_)
            | Error::TooManyAwarenessIds { .. }
            | Error::PresenceFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Error::NotFound(_) | Error::DocDeleted => StatusCode::NOT_FOUND,
            Error::SlowConsumer | Error::PingTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::ShuttingDown | Error::RoomGone => StatusCode::SERVICE_UNAVAILABLE,
            Error::Store(StoreError::Corrupt { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub(crate) fn close_code(&self) -> u16 {
        use close_code::*;
        match self {
            Error::BadDocName(_)
            | Error::BadBrowserId
            | Error::BadHandshake(_)
            | Error::BadRequest(_)
            | Error::OriginRefused
            | Error::RateLimited(_)
            | Error::TooManyAwarenessIds { .. }
            | Error::PresenceFull { .. } => POLICY_VIOLATION,
            Error::BadFrame(_) | Error::UnknownMessage(_) => PROTOCOL_ERROR,
            Error::TextFrame => UNSUPPORTED_DATA,
            Error::InvalidUpdate(_) | Error::InvalidAwareness(_) => INVALID_PAYLOAD,
            Error::TooLarge { .. } | Error::BodyTooLarge | Error::AwarenessTooLarge { .. } => {
                TOO_BIG
            }
            // An unreachable database (PostgreSQL): another node may be able to serve.
            Error::SlowConsumer
            | Error::Overloaded(_)
            | Error::Store(StoreError::Unavailable(_)) => TRY_AGAIN_LATER,
            Error::Unauthorized(_) => UNAUTHORIZED,
            Error::Forbidden(_) => FORBIDDEN,
            Error::DocTooLarge { .. } => DOC_TOO_LARGE,
            Error::Internal => INTERNAL_ERROR,
            Error::NotFound(_) => POLICY_VIOLATION,
            Error::DocDeleted => DOC_DELETED,
            Error::PingTimeout => PING_TIMEOUT,
            Error::ShuttingDown => GOING_AWAY,
            Error::Store(_) | Error::RoomGone => INTERNAL_ERROR,
        }
    }

    /// The text worth logging: for storage failures, the store's own cause (clients only
    /// get the short reason).
    pub(crate) fn cause(&self) -> String {
        match self {
            Error::Store(cause) => cause.to_string(),
            other => other.to_string(),
        }
    }

    /// Reason text for a close frame: the display string cut to the 123 bytes RFC 6455 allows.
    pub(crate) fn close_reason(&self) -> String {
        let mut reason = self.to_string();
        if reason.len() > 123 {
            let mut cut = 123;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        reason
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if matches!(self, Error::Store(_)) {
            tracing::error!(error = %self.cause(), "request failed");
        }
        let body = serde_json::json!({ "error": self.to_string() });
        let mut response = (self.status_code(), axum::Json(body)).into_response();
        if matches!(self, Error::Unauthorized(_)) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every close code the server sends is in README's table, so clients can rely on it.
    #[test]
    fn every_close_code_is_documented() {
        let readme = include_str!("../README.md");
        let errors = [
            Error::BadFrame(String::new()),
            Error::TextFrame,
            Error::InvalidUpdate(String::new()),
            Error::TooLarge { limit: 1 },
            Error::SlowConsumer,
            Error::PingTimeout,
            Error::ShuttingDown,
            Error::Store(StoreError::Unavailable("x".into())),
            Error::Store(StoreError::Corrupt { doc: "d".into(), detail: "x".into() }),
            Error::RoomGone,
            Error::Unauthorized("token expired".into()),
            Error::Forbidden("no access".into()),
            Error::DocTooLarge { limit: 1 },
            Error::RateLimited("updates".into()),
            Error::AwarenessTooLarge { limit: 1 },
            Error::Overloaded("rooms".into()),
            Error::Internal,
            Error::DocDeleted,
        ];
        for e in errors {
            let row = format!("| {} |", e.close_code());
            assert!(
                readme.contains(&row),
                "close code {} ({e}) missing from README",
                e.close_code()
            );
        }
    }
}
