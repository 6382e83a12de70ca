//! `/api/v1/mcp/*`: MCP servers for the web app, through the `mcp-proxy` component.
//!
//! Registering (or changing what a server launches or reaches) asks a person and answers at
//! once with the server `pending_approval`; nothing is persisted until they allow it. The
//! component speaks MCP (both protocol generations, detected per server); the host supplies the
//! transports. Tools are addressed by server id and tool name, so names never collide across
//! servers. A call's progress reaches the calling session only (`mcp.call.progress`); closing
//! the call's HTTP request cancels it (the server is told).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::capability::call;
use super::{RouteModule, Routes, Tier};
use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::security::SessionId;
use crate::Shared;

/// The component these routes call.
pub const COMPONENT: &str = "mcp-proxy";

pub const MODULE: RouteModule = RouteModule {
    capabilities: &["mcp_proxy"],
    component: Some(COMPONENT),
    routes: || {
        vec![(
            Tier::SessionOwnDeadline,
            Routes::new()
                .routes(routes!(servers, register))
                .routes(routes!(update, remove))
                .routes(routes!(connect))
                .routes(routes!(disconnect))
                .routes(routes!(capabilities))
                .routes(routes!(call_tool)),
        )]
    },
};

/// How a server is reached. Secret placeholders (`__OSL_SECRET[name]__`) may stand in `env`
/// and `headers` values only; their values are given at connect.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TransportSpec {
    /// A child process spoken to over its standard input and output.
    Stdio {
        /// A bare name (found on the server's `PATH`) or an absolute path.
        program: String,
        #[serde(default)]
        args: Vec<String>,
        /// Absolute, inside the policy's working directories (default: the first).
        #[serde(default)]
        cwd: Option<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// Streamable HTTP.
    Http {
        url: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
}

impl TransportSpec {
    /// The component's `transport` variant.
    fn to_wit(&self) -> Value {
        let pairs =
            |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>();
        match self {
            TransportSpec::Stdio {
                program,
                args,
                cwd,
                env,
            } => {
                json!({ "stdio": { "program": program, "args": args, "cwd": cwd, "env": pairs(env) } })
            }
            TransportSpec::Http { url, headers } => {
                json!({ "http": { "url": url, "headers": pairs(headers) } })
            }
        }
    }

    /// From the component's `transport` variant (camelCased).
    fn from_wit(value: &Value) -> Option<Self> {
        let map = |v: &Value| -> BTreeMap<String, String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|pair| {
                    Some((
                        pair.get(0)?.as_str()?.to_string(),
                        pair.get(1)?.as_str()?.to_string(),
                    ))
                })
                .collect()
        };
        if let Some(s) = value.get("stdio") {
            return Some(TransportSpec::Stdio {
                program: s.get("program")?.as_str()?.to_string(),
                args: serde_json::from_value(s.get("args")?.clone()).ok()?,
                cwd: s.get("cwd").and_then(Value::as_str).map(str::to_string),
                env: map(s.get("env")?),
            });
        }
        let h = value.get("http")?;
        Some(TransportSpec::Http {
            url: h.get("url")?.as_str()?.to_string(),
            headers: map(h.get("headers")?),
        })
    }
}

/// A registered server. Never a secret's value.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub id: String,
    pub name: String,
    /// What the person approved (templates); before the first approval, what is asked for.
    pub transport: TransportSpec,
    /// `pending_approval`, `disconnected`, `connecting`, `connected` or `failed`.
    pub state: String,
    /// A change of transport waiting for the person (the approved one stays in use).
    pub pending_change: Option<TransportSpec>,
    /// The prompt's id while a person is asked.
    pub request_id: Option<String>,
    /// Why it failed, or why its last change was refused.
    pub message: Option<String>,
    /// The program's host path as approved (stdio).
    pub program_path: Option<String>,
    /// The protocol revision spoken while connected (`2025-11-25`, `2026-07-28`).
    pub protocol_version: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub connected_at_ms: Option<u64>,
    /// Connects that failed in a row.
    pub failures: u32,
    /// While backing off after failures: when a connect may be tried again.
    pub retry_after_ms: Option<u64>,
}

/// The component's `server` record, camelCased.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WitServer {
    id: String,
    name: String,
    transport: Value,
    state: String,
    pending_change: Option<Value>,
    request_id: Option<String>,
    message: Option<String>,
    program_path: Option<String>,
    protocol_version: Option<String>,
    created_at_ms: u64,
    updated_at_ms: u64,
    connected_at_ms: Option<u64>,
    failures: u32,
    retry_after_ms: Option<u64>,
}

impl TryFrom<WitServer> for Server {
    type Error = ApiError;

    fn try_from(s: WitServer) -> Result<Self, ApiError> {
        let transport = TransportSpec::from_wit(&s.transport).ok_or_else(|| {
            malformed(format!(
                "component `{COMPONENT}` gave a malformed transport"
            ))
        })?;
        Ok(Server {
            id: s.id,
            name: s.name,
            transport,
            state: s.state.replace('-', "_"),
            pending_change: s.pending_change.as_ref().and_then(TransportSpec::from_wit),
            request_id: s.request_id,
            message: s.message,
            program_path: s.program_path,
            protocol_version: s.protocol_version,
            created_at_ms: s.created_at_ms,
            updated_at_ms: s.updated_at_ms,
            connected_at_ms: s.connected_at_ms,
            failures: s.failures,
            retry_after_ms: s.retry_after_ms,
        })
    }
}

async fn proxy<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    session: SessionId,
    function: &str,
    args: Value,
) -> Result<T, ApiError> {
    call(shared, session, COMPONENT, function, args).await
}

async fn server(
    shared: &Shared,
    session: SessionId,
    function: &str,
    args: Value,
) -> Result<Json<Server>, ApiError> {
    let server: WitServer = proxy(shared, session, function, args).await?;
    Ok(Json(server.try_into()?))
}

fn malformed(message: String) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "capability_failed",
        message,
    )
}

/// A JSON document a component returned as text.
fn document(text: &str) -> Result<Value, ApiError> {
    serde_json::from_str(text).map_err(|e| {
        malformed(format!(
            "component `{COMPONENT}` answered with malformed JSON: {e}"
        ))
    })
}

#[derive(Serialize, ToSchema)]
pub struct Servers {
    pub servers: Vec<Server>,
}

/// Every registered server, in id order (and those waiting for approval).
#[utoipa::path(get, path = "/api/v1/mcp/servers", tag = "mcp", security(("token" = [])),
    responses((status = 200, body = Servers), (status = 401, body = ErrorBody)))]
pub async fn servers(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
) -> Result<Json<Servers>, ApiError> {
    let servers: Vec<WitServer> = proxy(&shared, session, "list-servers", json!({})).await?;
    Ok(Json(Servers {
        servers: servers
            .into_iter()
            .map(Server::try_from)
            .collect::<Result<_, _>>()?,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    /// 1 to 64 of `a-z`, `0-9`, `-`, `_`, starting with a letter or digit.
    pub id: String,
    /// Default: the id.
    #[serde(default)]
    pub name: Option<String>,
    pub transport: TransportSpec,
}

/// Registers a server: a person is asked (the answer does not wait for them); the server is
/// `pending_approval` until they allow it, and forgotten if they reject it.
#[utoipa::path(post, path = "/api/v1/mcp/servers", tag = "mcp", security(("token" = [])),
    request_body = RegisterRequest,
    responses((status = 200, body = Server, description = "`pending_approval`, with its `requestId`"),
        (status = 400, body = ErrorBody, description = "a malformed entry; the message names the field"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "outside `grants.mcp`: nothing is asked, nothing started"),
        (status = 409, body = ErrorBody, description = "the id is taken")))]
pub async fn register(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<Json<Server>, ApiError> {
    let args = json!({
        "id": request.id,
        "name": request.name,
        "transport": request.transport.to_wit(),
    });
    server(&shared, session, "register-server", args).await
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateRequest {
    /// Applied at once.
    #[serde(default)]
    pub name: Option<String>,
    /// Waits for a person's approval (the approved transport stays in use meanwhile).
    #[serde(default)]
    pub transport: Option<TransportSpec>,
}

/// Renames a server at once; a new transport waits for a person's approval.
#[utoipa::path(patch, path = "/api/v1/mcp/servers/{serverId}", tag = "mcp",
    security(("token" = [])), params(("serverId" = String, Path)), request_body = UpdateRequest,
    responses((status = 200, body = Server), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn update(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UpdateRequest>,
) -> Result<Json<Server>, ApiError> {
    let args = json!({
        "id": id,
        "name": request.name,
        "transport": request.transport.as_ref().map(TransportSpec::to_wit),
    });
    server(&shared, session, "update-server", args).await
}

/// Disconnects and forgets a server.
#[utoipa::path(delete, path = "/api/v1/mcp/servers/{serverId}", tag = "mcp",
    security(("token" = [])), params(("serverId" = String, Path)),
    responses((status = 200, body = Server), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    Path(id): Path<String>,
) -> Result<Json<Server>, ApiError> {
    server(&shared, session, "remove-server", json!({ "id": id })).await
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectRequest {
    /// Values of the `env` entries whose templates hold secret placeholders (stdio): each must
    /// be its template with the placeholders filled. Kept in memory only.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The same for `headers` (HTTP).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How long the handshake may take (default 30000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Connects to an approved server: starts it (or reaches its URL) and runs the MCP handshake.
/// Connecting a connected server answers it as it is.
#[utoipa::path(post, path = "/api/v1/mcp/servers/{serverId}/connect", tag = "mcp",
    security(("token" = [])), params(("serverId" = String, Path)), request_body = ConnectRequest,
    responses((status = 200, body = Server, description = "`connected`"),
        (status = 400, body = ErrorBody, description = "a secret value that does not fill its template"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "still waiting for approval, or connecting"),
        (status = 503, body = ErrorBody, description = "the server did not start or answer; or backing off after failures")))]
pub async fn connect(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ConnectRequest>,
) -> Result<Json<Server>, ApiError> {
    let pairs = |m: BTreeMap<String, String>| m.into_iter().collect::<Vec<_>>();
    let args = json!({
        "id": id,
        "env": pairs(request.env),
        "headers": pairs(request.headers),
        "timeout-ms": request.timeout_ms,
    });
    server(&shared, session, "connect-server", args).await
}

/// Disconnects: the driver stops, a stdio server's whole process group is ended.
#[utoipa::path(post, path = "/api/v1/mcp/servers/{serverId}/disconnect", tag = "mcp",
    security(("token" = [])), params(("serverId" = String, Path)),
    responses((status = 200, body = Server), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn disconnect(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    Path(id): Path<String>,
) -> Result<Json<Server>, ApiError> {
    server(&shared, session, "disconnect-server", json!({ "id": id })).await
}

/// What a connected server offers, every page followed: `serverId`, `protocolVersion`,
/// `serverInfo`, `capabilities`, `instructions`, `tools`, `resources`, `resourceTemplates`,
/// `prompts` (as the server describes them).
#[utoipa::path(get, path = "/api/v1/mcp/servers/{serverId}/capabilities", tag = "mcp",
    security(("token" = [])), params(("serverId" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "not connected, or failed")))]
pub async fn capabilities(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let text: String = proxy(&shared, session, "server-capabilities", json!({ "id": id })).await?;
    document(&text).map(Json)
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallRequest {
    pub server_id: String,
    /// The tool's name as the server lists it.
    pub tool: String,
    /// A JSON object (default `{}`).
    #[serde(default)]
    pub arguments: Option<Value>,
    /// Names the call in its `mcp.call.progress` events (default: one is made).
    #[serde(default)]
    pub call_id: Option<String>,
    /// Default 60000, at most 600000. On timeout the server is told to cancel.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallResponse {
    pub call_id: String,
    pub server_id: String,
    pub tool: String,
    /// The server's `CallToolResult` (`content`, `structuredContent`, `isError`).
    pub result: Value,
    pub elapsed_ms: u64,
}

/// Calls a tool of a connected server and waits for its result. Progress arrives as
/// `mcp.call.progress` events on this session's event socket; closing this request cancels the
/// call (the server is told).
#[utoipa::path(post, path = "/api/v1/mcp/call", tag = "mcp", security(("token" = [])),
    request_body = CallRequest,
    responses((status = 200, body = CallResponse),
        (status = 400, body = ErrorBody, description = "malformed arguments, or the server refused them"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody, description = "the server's answer was over the message size limit"),
        (status = 503, body = ErrorBody, description = "not connected, failed, or timed out (the server was told to cancel)")))]
pub async fn call_tool(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    ApiJson(request): ApiJson<CallRequest>,
) -> Result<Json<CallResponse>, ApiError> {
    let started = Instant::now();
    let args = json!({
        "server-id": request.server_id,
        "tool": request.tool,
        "arguments": request.arguments.as_ref().map(Value::to_string),
        "call-id": request.call_id,
        "timeout-ms": request.timeout_ms,
    });
    let text: String = proxy(&shared, session, "call-tool", args).await?;
    let mut answer = document(&text)?;
    let take = |answer: &mut Value, key: &str| answer.get_mut(key).map(Value::take);
    let text_of = |v: Option<Value>| {
        v.and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    Ok(Json(CallResponse {
        call_id: text_of(take(&mut answer, "callId")),
        server_id: text_of(take(&mut answer, "serverId")),
        tool: text_of(take(&mut answer, "tool")),
        result: take(&mut answer, "result").unwrap_or(Value::Null),
        elapsed_ms: started.elapsed().as_millis() as u64,
    }))
}
