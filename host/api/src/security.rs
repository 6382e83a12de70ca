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
/// and not allowed. Also refuses, with 400, a request with more than one `Host`, and one whose
/// target names a host itself (absolute form, `http://host/path`) unless that is `http://` and
/// one of the allowed hosts exactly; the `Host` header is checked as well even then. Nothing
/// below runs for a refused request.
pub async fn check_host_and_origin(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let allowed = |host: &str| shared.hosts.iter().any(|h| h.eq_ignore_ascii_case(host));
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts
        .next()
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if hosts.next().is_some() {
        return Err(ApiError::bad_request(
            "duplicate_host",
            "the request carries more than one Host header; send exactly one",
        ));
    }
    if let Some(authority) = request.uri().authority() {
        let http = request.uri().scheme_str() == Some("http");
        if !(http && allowed(authority.as_str())) {
            return Err(ApiError::bad_request(
                "bad_request_target",
                format!(
                    "the request target names another host; send the path alone (origin \
                     form, `GET /api/v1/health`) or http://{}/…",
                    shared.hosts[0]
                ),
            ));
        }
    }
    if !allowed(host) {
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
        let allowed = origin.to_str().is_ok_and(|o| shared.allows_origin(o));
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
/// URLs end up in logs and histories). A `sessionToken` in the query is refused even when the
/// header carries a token too.
pub async fn require_session(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    let token = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
    let in_query = request.uri().query().is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(name, _)| name == "sessionToken")
    });
    if in_query {
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

#[cfg(test)]
mod tests {
    use crate::testing::*;
    use crate::BridgeConfig;

    fn get(target: &str, host: &str, extra: &str) -> String {
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
    }

    /// On HTTP routes a `sessionToken` in the query is refused, even next to a valid token in
    /// the header.
    #[tokio::test]
    async fn a_token_in_the_query_is_refused_even_with_one_in_the_header() {
        let bridge = TestBridge::start(BridgeConfig::default()).await;
        let token = bridge.token().await;
        let host = bridge.host();
        let header = format!("X-OSLOOP-BRIDGE-TOKEN: {token}\r\n");
        for target in [
            format!("/api/v1/bridge/info?sessionToken={token}"),
            format!("/api/v1/awake/status?limit=1&sessionToken={token}"),
            format!("/api/v1/system/info?session%54oken={token}"),
        ] {
            for extra in ["", header.as_str()] {
                let answer = bridge.exchange(&get(&target, &host, extra)).await;
                assert_eq!(status(&answer), 401, "{target} {extra}: {answer}");
                assert_eq!(error_code(&answer), "token_in_query", "{target} {extra}");
            }
        }
        // The header alone, with another query, is fine.
        let answer = bridge
            .exchange(&get("/api/v1/bridge/info?x=sessionToken", &host, &header))
            .await;
        assert_eq!(status(&answer), 200, "{answer}");
    }

    /// A target naming another host (absolute form), or a second `Host`, is refused with 400;
    /// an absolute-form target naming the bridge exactly, over http, is served.
    #[tokio::test]
    async fn targets_naming_another_host_and_repeated_hosts_are_refused() {
        let bridge = TestBridge::start(BridgeConfig::default()).await;
        let host = bridge.host();
        let port = bridge.addr().port();
        for (target, extra, code) in [
            (
                "http://evil.example/api/v1/health".to_string(),
                String::new(),
                "bad_request_target",
            ),
            (
                format!("https://{host}/api/v1/health"),
                String::new(),
                "bad_request_target",
            ),
            (
                format!("http://user@{host}/api/v1/health"),
                String::new(),
                "bad_request_target",
            ),
            (
                "http://127.0.0.1/api/v1/health".to_string(),
                String::new(),
                "bad_request_target",
            ),
            (
                "/api/v1/health".to_string(),
                format!("Host: {host}\r\n"),
                "duplicate_host",
            ),
            (
                "/api/v1/health".to_string(),
                "Host: evil.example\r\n".to_string(),
                "duplicate_host",
            ),
        ] {
            let answer = bridge.exchange(&get(&target, &host, &extra)).await;
            assert_eq!(status(&answer), 400, "{target} {extra}: {answer}");
            assert_eq!(error_code(&answer), code, "{target} {extra}");
        }
        for target in [
            format!("http://{host}/api/v1/health"),
            format!("http://localhost:{port}/api/v1/health"),
        ] {
            let answer = bridge.exchange(&get(&target, &host, "")).await;
            assert_eq!(status(&answer), 200, "{target}: {answer}");
        }
        // The Host header must name the bridge too.
        let answer = bridge
            .exchange(&get(
                &format!("http://{host}/api/v1/health"),
                "evil.example",
                "",
            ))
            .await;
        assert_eq!(status(&answer), 403, "{answer}");
        assert_eq!(error_code(&answer), "host_not_allowed");
    }
}
