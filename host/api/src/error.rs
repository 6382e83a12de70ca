//! One error format for the whole API: `{"error": {"code", "message", "hint"?, "details"?}}`.
//!
//! Handlers return [`ApiError`]; [`ApiJson`] turns body problems into it (a body that outlives
//! its deadline, see [`crate::listener`], into `408 request_timeout`); [`uniform_errors`]
//! rewrites any error response produced below it in another format (axum's 405, tower-http's
//! 413 and 408) so that a client parses one shape for every failure.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

/// The error reading a body fails with once its deadline has passed (the listener's body bound);
/// [`ApiJson`] answers it with `408 request_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the request timeout")]
pub(crate) struct BodyTimeout;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `unauthorized`, `origin_not_allowed`, `unknown_route`, …
    pub code: String,
    /// Safe to show to a user.
    pub message: String,
    /// What to do instead (for `unknown_route`: the canonical path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Structured detail, such as the error value a command returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// The error code of a response, kept as a response extension for the connection log.
#[derive(Clone, Debug)]
pub struct ErrorCode(pub String);

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
    pub details: Option<serde_json::Value>,
    /// Seconds to wait before trying again: sent as `Retry-After` (and in the details).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            hint: None,
            details: None,
            retry_after: None,
        }
    }

    /// A refusal to try again in `seconds`: `Retry-After` and `details.retryAfterSeconds`.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self.with_details(serde_json::json!({ "retryAfterSeconds": seconds }))
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
                hint: self.hint.clone(),
                details: self.details.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
            .extensions_mut()
            .insert(ErrorCode(self.code.to_string()));
        response
    }
}

/// A JSON request body. An empty body reads as `{}`; a non-empty one must be sent as
/// `Content-Type: application/json` (which also makes every browser request a CORS preflight).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else if caused_by::<BodyTimeout>(&rejection) {
                    request_timeout()
                } else {
                    ApiError::bad_request("invalid_body", rejection.body_text())
                }
            })?;
        let text: &[u8] = if bytes.is_empty() {
            b"{}"
        } else if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        } else {
            &bytes
        };
        // The path names the field that is wrong (`template.args`), however deep.
        let mut deserializer = serde_json::Deserializer::from_slice(text);
        let parsed = match serde_path_to_error::deserialize(&mut deserializer) {
            Ok(value) => deserializer
                .end()
                .map(|()| value)
                .map_err(|e| (String::new(), e)),
            Err(e) => Err((e.path().to_string(), e.into_inner())),
        };
        parsed.map(ApiJson).map_err(|(path, e)| {
            let code = if e.is_syntax() || e.is_eof() {
                "malformed_json"
            } else {
                "invalid_request"
            };
            let message = match path.as_str() {
                "." | "" => format!("request body: {e}"),
                path => format!("request body: `{path}`: {e}"),
            };
            ApiError::bad_request(code, message)
        })
    }
}

pub(crate) fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is larger than this bridge accepts",
    )
}

pub(crate) fn request_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request did not complete within the bridge's request timeout",
    )
}

/// Whether `error` or anything in its chain of sources is an `E`.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<E>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// Rewrites error responses that are not already in the API's JSON format, keeping their status,
/// headers (CORS, `Allow`) and extensions.
pub async fn uniform_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        // axum's extractor rejections (query strings, path parameters) say what was wrong.
        StatusCode::BAD_REQUEST if !text.is_empty() => {
            ApiError::bad_request("invalid_request", text)
        }
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            "method_not_allowed",
            "this route does not take that method (the Allow header lists those it takes)",
        ),
        StatusCode::REQUEST_TIMEOUT => request_timeout(),
        _ => ApiError::new(
            status,
            "request_failed",
            status.canonical_reason().unwrap_or("request failed"),
        ),
    };
    let body = serde_json::to_vec(&error.body()).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.extensions.insert(ErrorCode(error.code.to_string()));
    Response::from_parts(parts, Body::from(body))
}
