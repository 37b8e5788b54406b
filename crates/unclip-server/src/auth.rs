//! Bearer API keys, compared in constant time so that response timing does not reveal how
//! much of a guessed key was right.

use crate::error::{ApiError, ServerError};
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::path::Path;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The accepted keys; empty means no key is needed.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys(Arc<Vec<Vec<u8>>>);

impl ApiKeys {
    pub fn new(keys: Vec<String>) -> Self {
        Self(Arc::new(keys.into_iter().map(String::into_bytes).collect()))
    }

    /// One key per line; blank lines and lines starting with `#` are skipped.
    pub fn load(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ServerError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        let keys: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_string)
            .collect();
        if keys.is_empty() {
            return Err(ServerError::Config(format!(
                "{}: no API keys (expected one key per line)",
                path.display()
            )));
        }
        Ok(Self::new(keys))
    }

    pub fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `presented` is one of the keys. Every key is compared, whatever matched.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let mut found = subtle::Choice::from(0u8);
        for key in self.0.iter() {
            found |= key.as_slice().ct_eq(presented);
        }
        found.into()
    }
}

/// Middleware for the /v1 API routes.
pub async fn require_key(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    if !keys.required() {
        return next.run(request).await;
    }
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or_default());
    match header.map(bearer_token) {
        None => {
            ApiError::unauthorized("no API key: send the header `Authorization: Bearer YOUR_KEY`")
                .into_response()
        }
        Some(None) => ApiError::unauthorized(
            "the Authorization header is not `Bearer YOUR_KEY`; API keys are sent as bearer tokens",
        )
        .into_response(),
        Some(Some(key)) if keys.accepts(key.as_bytes()) => next.run(request).await,
        Some(Some(_)) => ApiError::unauthorized("incorrect API key provided").into_response(),
    }
}

/// The token of a `Bearer` Authorization header (the scheme's name is case-insensitive, RFC
/// 7235), if it is one.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_keys_are_accepted() {
        let keys = ApiKeys::new(vec!["sk-one".into(), "sk-two".into()]);
        assert!(keys.accepts(b"sk-one"));
        assert!(keys.accepts(b"sk-two"));
        assert!(!keys.accepts(b"sk-on"));
        assert!(!keys.accepts(b"sk-one "));
        assert!(!keys.accepts(b""));
        assert!(keys.required());
        assert!(!ApiKeys::default().required());
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        assert_eq!(bearer_token("Bearer sk-one"), Some("sk-one"));
        assert_eq!(bearer_token("bearer  sk-one "), Some("sk-one"));
        assert_eq!(bearer_token("BEARER sk-one"), Some("sk-one"));
        assert_eq!(bearer_token("Basic c2stb25l"), None);
        assert_eq!(bearer_token("sk-one"), None);
    }
}
