//! Discovery and the bridge's own state: health, info, capabilities, runtime, connection log.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::{RouteModule, Routes, Tier, MODULES};
use crate::config::Mode;
use crate::connlog::Connection;
use crate::error::ErrorBody;
use crate::tray::TrayState;
use crate::{Shared, APP_VERSION, PROTOCOL_VERSION};

pub const MODULE: RouteModule = RouteModule {
    capabilities: &["health", "version"],
    component: None,
    routes: || {
        vec![
            (
                Tier::Public,
                Routes::new()
                    .routes(routes!(health))
                    .routes(routes!(openapi)),
            ),
            (
                Tier::Session,
                Routes::new()
                    .routes(routes!(info))
                    .routes(routes!(capabilities))
                    .routes(routes!(runtime))
                    .routes(routes!(connections)),
            ),
        ]
    },
};

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Always `ok` while the bridge answers.
    pub status: &'static str,
    pub protocol_version: &'static str,
    pub app_version: &'static str,
    /// `capbridge`.
    pub name: &'static str,
}

/// Discovery: the web app probes this on the configured port. No session needed.
#[utoipa::path(get, path = "/api/v1/health", tag = "bridge",
    responses((status = 200, body = Health), (status = 403, body = ErrorBody)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        protocol_version: PROTOCOL_VERSION,
        app_version: APP_VERSION,
        name: "capbridge",
    })
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "bridge",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(crate::openapi::document())
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BridgeInfo {
    pub name: &'static str,
    pub app_version: &'static str,
    pub protocol_version: &'static str,
    /// `linux`, `macos`, `windows`.
    pub platform: &'static str,
    pub arch: &'static str,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub uptime_ms: u64,
    /// Loaded components (each one's exports are commands).
    pub components: Vec<String>,
}

#[utoipa::path(get, path = "/api/v1/bridge/info", tag = "bridge", security(("token" = [])),
    responses((status = 200, body = BridgeInfo), (status = 401, body = ErrorBody)))]
pub async fn info(State(shared): State<Arc<Shared>>) -> Json<BridgeInfo> {
    Json(BridgeInfo {
        name: "capbridge",
        app_version: APP_VERSION,
        protocol_version: PROTOCOL_VERSION,
        platform: std::env::consts::OS,
        arch: std::env::consts::ARCH,
        started_at: humantime::format_rfc3339_seconds(shared.started).to_string(),
        uptime_ms: SystemTime::now()
            .duration_since(shared.started)
            .unwrap_or_default()
            .as_millis() as u64,
        components: shared.commands().components(),
    })
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Capability names of the contract this bridge provides now.
    pub capabilities: Vec<&'static str>,
    /// Capability names of the contract this bridge does not provide yet, with why.
    pub unavailable: Vec<Unavailable>,
}

#[derive(Serialize, ToSchema)]
pub struct Unavailable {
    pub name: &'static str,
    pub reason: String,
}

/// Capabilities of seed 000 and whether this bridge has them.
// What the registered route modules provide, then the tray when the desktop shell has one.
#[utoipa::path(get, path = "/api/v1/capabilities", tag = "bridge", security(("token" = [])),
    responses((status = 200, body = Capabilities), (status = 401, body = ErrorBody)))]
pub async fn capabilities(State(shared): State<Arc<Shared>>) -> Json<Capabilities> {
    let mut capabilities: Vec<&'static str> = MODULES
        .iter()
        .flat_map(|module| module.capabilities.iter().copied())
        .collect();
    let mut unavailable = Vec::new();
    let tray = shared.tray.as_ref().map(|tray| tray.borrow().clone());
    match TrayState::unavailable(tray.as_ref()) {
        None => capabilities.push("tray_mode"),
        Some(reason) => unavailable.push(Unavailable {
            name: "tray_mode",
            reason,
        }),
    }
    Json(Capabilities {
        capabilities,
        unavailable,
    })
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeState {
    /// The persisted port (config file).
    pub configured_port: u16,
    /// The port bound now (differs for a one-run `--port`).
    pub bound_port: u16,
    /// `bound` while the server answers.
    pub bind_state: &'static str,
    pub bind_error: Option<String>,
    pub mode: Mode,
    pub allowed_origins: Vec<String>,
    pub config_path: Option<String>,
    pub request_timeout_ms: u64,
    pub command_timeout_ms: u64,
    pub session_ttl_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub max_body_bytes: usize,
    /// The config's `tray-mode`.
    pub tray_mode: bool,
    /// The desktop shell's tray now (`null` headless).
    pub tray: Option<TrayState>,
    pub live_sessions: usize,
}

#[utoipa::path(get, path = "/api/v1/bridge/runtime", tag = "bridge", security(("token" = [])),
    responses((status = 200, body = RuntimeState), (status = 401, body = ErrorBody)))]
pub async fn runtime(State(shared): State<Arc<Shared>>) -> Json<RuntimeState> {
    Json(runtime_state(&shared))
}

/// The runtime state: the route's answer, and the `bridge.runtime.updated` event's payload.
pub fn runtime_state(shared: &Shared) -> RuntimeState {
    let config = &shared.config;
    RuntimeState {
        configured_port: config.port,
        bound_port: shared.port,
        bind_state: "bound",
        bind_error: None,
        mode: config.mode,
        allowed_origins: shared.origins.clone(),
        config_path: shared.config_path.as_ref().map(|p| p.display().to_string()),
        request_timeout_ms: config.request_timeout_ms,
        command_timeout_ms: config.command_timeout_ms,
        session_ttl_ms: config.session_ttl().as_millis() as u64,
        heartbeat_interval_ms: config.heartbeat_interval_ms,
        max_body_bytes: config.max_body_bytes,
        tray_mode: config.tray_mode,
        tray: shared.tray.as_ref().map(|tray| tray.borrow().clone()),
        live_sessions: shared.sessions.live(),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ConnectionsQuery {
    /// At most this many entries (default 100, at most 500).
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct Connections {
    /// Newest first.
    pub connections: Vec<Connection>,
}

/// Recent requests (no tokens), newest first: what the status window shows.
#[utoipa::path(get, path = "/api/v1/bridge/connections", tag = "bridge", security(("token" = [])),
    params(ConnectionsQuery),
    responses((status = 200, body = Connections), (status = 401, body = ErrorBody)))]
pub async fn connections(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<ConnectionsQuery>,
) -> Json<Connections> {
    Json(Connections {
        connections: shared.connections.recent(query.limit.unwrap_or(100)),
    })
}
