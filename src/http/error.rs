//! The HTTP error body: `{"error": {"code": "snake_case", "message": "human sentence"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Seconds a client should wait before retrying a 503 (or a 429 without its own figure).
const RETRY_AFTER_SECS: u64 = 5;

/// An error reply.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// `Retry-After` seconds for a 429 or 503; `None` for the default.
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    /// A reply with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// 429 `rate_limited`: a call's bot rate limit refused the request; `Retry-After` is
    /// when the same request would pass (rounded up to whole seconds).
    pub fn rate_limited(refused: crate::control::rate::Refused) -> Self {
        let wait = refused.retry_after;
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError {
            retry_after_secs: Some(secs.max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                crate::control::ControlError::from(refused).to_string(),
            )
        }
    }

    /// 404 for an unknown call id.
    pub fn unknown_call() -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_call",
            "no live call has this id",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            let secs = self.retry_after_secs.unwrap_or(RETRY_AFTER_SECS);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
