//! `POST /api/v1/session/handshake` and `POST /api/v1/session/refresh`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use utoipa_axum::routes;

use super::{RouteModule, Routes, Tier};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::session::Issued;
use crate::{Shared, PROTOCOL_VERSION};

pub const MODULE: RouteModule = RouteModule {
    capabilities: &[],
    component: None,
    routes: || {
        vec![(
            Tier::Public,
            Routes::new()
                .routes(routes!(handshake))
                .routes(routes!(refresh)),
        )]
    },
};

/// Optional facts about the client, shown in the status window's log.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HandshakeRequest {
    pub client_name: Option<String>,
    pub client_version: Option<String>,
    /// The contract version the client speaks; if given it must be this bridge's.
    pub protocol_version: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshRequest {
    /// The current, unexpired token; it stops working once the new one is issued.
    pub session_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionResponse {
    pub protocol_version: &'static str,
    /// 256 bits, base64url. Send as `X-OSLOOP-BRIDGE-TOKEN`; on the WebSocket as `?sessionToken=`.
    pub session_token: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
    pub expires_in_ms: u64,
}

impl From<Issued> for SessionResponse {
    fn from(issued: Issued) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            session_token: issued.token,
            expires_at: humantime::format_rfc3339_seconds(issued.expires_at).to_string(),
            expires_in_ms: issued.ttl.as_millis() as u64,
        }
    }
}

fn origin(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
}

/// Creates a session. Browsers may only do this from an allowed origin (checked before this
/// runs); a local client without `Origin` is trusted as any local process is.
#[utoipa::path(post, path = "/api/v1/session/handshake", tag = "session",
    request_body(content = HandshakeRequest, description = "optional; an empty body is fine"),
    responses(
        (status = 200, body = SessionResponse),
        (status = 400, body = ErrorBody, description = "malformed body or another protocol version"),
        (status = 403, body = ErrorBody, description = "Host or Origin not allowed"),
    ))]
pub async fn handshake(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<HandshakeRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    if let Some(version) = &request.protocol_version {
        if version != PROTOCOL_VERSION {
            return Err(ApiError::bad_request(
                "unsupported_protocol_version",
                format!("this bridge speaks {PROTOCOL_VERSION}, not {version}"),
            ));
        }
    }
    let origin = origin(&headers);
    let issued = shared
        .sessions
        .issue(origin)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    tracing::info!(
        target: "capbridge::api",
        session = issued.session_id,
        origin = origin.unwrap_or("(local client)"),
        client = request.client_name.as_deref().unwrap_or(""),
        client_version = request.client_version.as_deref().unwrap_or(""),
        "session created"
    );
    shared
        .runtime
        .audit()
        .session_opened(issued.session_id, origin);
    shared.publish(
        "bridge.session.created",
        serde_json::json!({
            "sessionId": issued.session_id,
            "origin": origin,
            "clientName": request.client_name,
        }),
    );
    Ok(Json(issued.into()))
}

/// Rotates a live session's token and extends its expiry. An expired token cannot be refreshed.
#[utoipa::path(post, path = "/api/v1/session/refresh", tag = "session",
    request_body = RefreshRequest,
    responses(
        (status = 200, body = SessionResponse),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody, description = "unknown, rotated or expired token"),
    ))]
pub async fn refresh(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    let issued = shared
        .sessions
        .refresh(&request.session_token, origin(&headers))
        .map_err(|e| ApiError::unauthorized("invalid_token", e.message()))?;
    Ok(Json(issued.into()))
}
