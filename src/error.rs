//! What a client can do wrong or run into, mapped once to an HTTP status or a WebSocket
//! close code. Internal causes are logged where they happen; the client only gets a short
//! reason that fits in a close frame (123 bytes).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Close codes we send. 1000-range codes are RFC 6455; 4000-range codes are ours.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The peer did not answer pings for two intervals.
    pub const PING_TIMEOUT: u16 = 4000;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid document name: {0}")]
    BadDocName(&'static str),
    #[error("invalid browser id: 1-64 letters, digits, '-' or '_'")]
    BadBrowserId,
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
    #[error("storage error")]
    Store(#[from] sqlx::Error),
    #[error("storage error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("room unavailable")]
    RoomGone,
}

impl Error {
    pub fn status_code(&self) -> StatusCode {
        match self {
            Error::BadDocName(_)
            | Error::BadBrowserId
            | Error::BadFrame(_)
            | Error::TextFrame
            | Error::UnknownMessage(_)
            | Error::InvalidUpdate(_)
            | Error::InvalidAwareness(_) => StatusCode::BAD_REQUEST,
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::SlowConsumer | Error::PingTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::ShuttingDown | Error::RoomGone => StatusCode::SERVICE_UNAVAILABLE,
            Error::Store(_) | Error::Migrate(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn close_code(&self) -> u16 {
        use close_code::*;
        match self {
            Error::BadDocName(_) | Error::BadBrowserId => POLICY_VIOLATION,
            Error::BadFrame(_) | Error::UnknownMessage(_) => PROTOCOL_ERROR,
            Error::TextFrame => UNSUPPORTED_DATA,
            Error::InvalidUpdate(_) | Error::InvalidAwareness(_) => INVALID_PAYLOAD,
            Error::TooLarge { .. } => TOO_BIG,
            Error::SlowConsumer => TRY_AGAIN_LATER,
            Error::PingTimeout => PING_TIMEOUT,
            Error::ShuttingDown => GOING_AWAY,
            Error::Store(_) | Error::Migrate(_) | Error::RoomGone => INTERNAL_ERROR,
        }
    }

    /// Reason text for a close frame: the display string cut to the 123 bytes RFC 6455 allows.
    pub fn close_reason(&self) -> String {
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
        if matches!(self, Error::Store(_) | Error::Migrate(_)) {
            tracing::error!(error = ?self, "request failed");
        }
        (self.status_code(), self.to_string()).into_response()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
