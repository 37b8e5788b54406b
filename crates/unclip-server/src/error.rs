//! Errors: startup failures (`ServerError`) and request failures (`ApiError`), the latter
//! always answered in OpenAI's error shape so that its clients can read them:
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::path::PathBuf;

/// Why the server could not start. Each message carries its cause, and none is also exposed as
/// `source()`: the CLI prints the chain (`{err:#}`), which would print a cause twice.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot load the model: {0}")]
    Model(unclip::Error),
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {cause}")]
    Bind { addr: String, cause: std::io::Error },
}

impl From<unclip::Error> for ServerError {
    fn from(error: unclip::Error) -> Self {
        ServerError::Model(error)
    }
}

/// A request that failed, as the client will see it.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds, sent as `Retry-After` (429 only).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 about one request field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// A client error that is about the request as a whole (malformed body, wrong media type).
    pub fn request(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, "invalid_request_error", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
        }
    }

    pub fn overloaded(retry_after: u64) -> Self {
        Self {
            code: Some("rate_limit_exceeded"),
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "the server is at capacity (its queue is full); retry after the time in Retry-After",
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
    }

    /// The error shape for a status produced outside our handlers (routing, body limits,
    /// timeouts), with the text those layers gave.
    pub fn from_status(status: StatusCode, text: &str) -> Self {
        let text = text.trim();
        let message = match status {
            StatusCode::NOT_FOUND => "no such route; see GET /v1/models, POST /v1/images/generations, POST /v1/images/variations, POST /v1/images/edits".to_string(),
            StatusCode::METHOD_NOT_ALLOWED => format!("method not allowed on this route{}", suffix(text)),
            StatusCode::PAYLOAD_TOO_LARGE => format!(
                "request body too large (limits: 64 KB for JSON requests, 4 MB per image){}",
                suffix(text)
            ),
            StatusCode::REQUEST_TIMEOUT => "the request took longer than the server's request timeout".to_string(),
            s if s.is_server_error() => format!("internal server error{}", suffix(text)),
            _ => match text.is_empty() {
                true => status.canonical_reason().unwrap_or("error").to_string(),
                false => text.to_string(),
            },
        };
        let kind = if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        Self::new(status, kind, message)
    }
}

fn suffix(text: &str) -> String {
    match text.is_empty() {
        true => String::new(),
        false => format!(": {text}"),
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
