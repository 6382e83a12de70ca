//! Browser-facing checks that run before any handler: `Host` (DNS rebinding), `Origin`
//! (exact allow-list), CORS for allowed origins only, and session tokens.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::ApiError;
use crate::Shared;

/// The header that carries the session token on HTTP routes.
pub const TOKEN_HEADER: &str = "x-osloop-bridge-token";

/// Marks a response as produced for an authenticated session (for the connection log).
#[derive(Clone, Copy, Debug)]
pub struct Authenticated;

/// The session an authenticated request belongs to (a request extension set by
/// [`require_session`]; capability routes make their component calls for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionId(pub u64);

/// The names a loopback client may use for this bridge (it listens on 127.0.0.1 only), with the
/// bound port.
pub fn allowed_hosts(port: u16) -> [String; 2] {
    [format!("127.0.0.1:{port}"), format!("localhost:{port}")]
}

/// Refuses a request whose `Host` is not a loopback name with the bound port (a page on a
/// rebound DNS name reaches 127.0.0.1 with its own name in `Host`), or whose `Origin` is present
/// and not allowed. Nothing below runs for a refused request.
pub async fn check_host_and_origin(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !shared.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Err(ApiError::forbidden(
            "host_not_allowed",
            format!(
                "this bridge answers only to {} (the Host header named something else, as a \
                 DNS-rebinding page would)",
                shared.hosts[0]
            ),
        ));
    }
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| shared.origins.iter().any(|a| a == o));
        if !allowed {
            return Err(ApiError::forbidden(
                "origin_not_allowed",
                "this origin is not allowed to use the bridge; add it to `origins` in the \
                 bridge's config",
            ));
        }
    }
    Ok(next.run(request).await)
}

/// CORS for the allowed origins only (never `*`, never an echo of an arbitrary origin),
/// including Private Network Access preflights.
pub fn cors(origins: &[String]) -> CorsLayer {
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(list))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([header::CONTENT_TYPE, HeaderName::from_static(TOKEN_HEADER)])
        .allow_private_network(true)
        .max_age(Duration::from_secs(600))
}

/// The session a request's origin presents, or why not; `missing` says where the token goes.
pub fn authenticate(
    shared: &Shared,
    token: Option<&str>,
    origin: Option<&str>,
    missing: &'static str,
) -> Result<u64, ApiError> {
    let token = token.ok_or_else(|| ApiError::unauthorized("missing_token", missing))?;
    shared
        .sessions
        .validate(token, origin)
        .map_err(|e| ApiError::unauthorized("invalid_token", e.message()))
}

/// Requires a live session token in the `X-OSLOOP-BRIDGE-TOKEN` header (never the query string:
/// URLs end up in logs and histories).
pub async fn require_session(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    let token = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
    if token.is_none()
        && request
            .uri()
            .query()
            .is_some_and(|q| q.contains("sessionToken="))
    {
        return Err(ApiError::unauthorized(
            "token_in_query",
            "HTTP routes take the session token only in the X-OSLOOP-BRIDGE-TOKEN header; the \
             query string is for the event WebSocket",
        ));
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let session = authenticate(
        &shared,
        token,
        origin,
        "this route needs a session: send the token from POST /api/v1/session/handshake in \
         the X-OSLOOP-BRIDGE-TOKEN header",
    )?;
    let mut request = request;
    request.extensions_mut().insert(SessionId(session));
    let mut response = next.run(request).await;
    response.extensions_mut().insert(Authenticated);
    Ok(response)
}
