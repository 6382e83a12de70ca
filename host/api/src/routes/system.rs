//! `/api/v1/system/*` (info and tools): the `system` component's view of this machine, limited
//! to the directories and programs its policy grants. Installing a tool runs a command and
//! belongs to the commands capability.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::capability::call;
use super::{RouteModule, Routes, Tier};
use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::security::SessionId;
use crate::Shared;

/// The component these routes call.
pub const COMPONENT: &str = "system";

pub const MODULE: RouteModule = RouteModule {
    capabilities: &["system_info", "system_tools", "tool_install_recipes"],
    component: Some(COMPONENT),
    routes: || {
        vec![(
            Tier::SessionOwnDeadline,
            Routes::new()
                .routes(routes!(info))
                .routes(routes!(tools))
                .routes(routes!(locate))
                .routes(routes!(recipes))
                .routes(routes!(resolve)),
        )]
    },
};

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemInfo {
    /// `linux`, `macos`, `windows`, …
    pub os: String,
    /// `Debian GNU/Linux`
    pub os_name: Option<String>,
    /// `12`
    pub os_version: Option<String>,
    /// `x86_64`, `aarch64`, …
    pub arch: String,
    pub kernel: Option<String>,
    /// The login shell.
    pub shell: Option<String>,
    /// Package managers found on the search path (`apt`, `dnf`, `brew`, …).
    pub package_managers: Vec<String>,
}

/// OS, version, architecture, shell and package managers.
#[utoipa::path(get, path = "/api/v1/system/info", tag = "system", security(("token" = [])),
    responses((status = 200, body = SystemInfo), (status = 401, body = ErrorBody)))]
pub async fn info(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
) -> Result<Json<SystemInfo>, ApiError> {
    call(&shared, session, COMPONENT, "info", json!({}))
        .await
        .map(Json)
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub installed: bool,
    /// Where it was found first on the search path.
    pub path: Option<String>,
    /// From `<tool> --version`, when the policy lets the component run it.
    pub version: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Tools {
    pub tools: Vec<Tool>,
}

/// The catalogue of known tools, with whether each is installed and its version.
#[utoipa::path(get, path = "/api/v1/system/tools", tag = "system", security(("token" = [])),
    responses((status = 200, body = Tools), (status = 401, body = ErrorBody)))]
pub async fn tools(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
) -> Result<Json<Tools>, ApiError> {
    let tools = call(&shared, session, COMPONENT, "tools", json!({})).await?;
    Ok(Json(Tools { tools }))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocateRequest {
    /// Program names (1 to 64 of `A-Z a-z 0-9 . _ + -`), at most 64.
    pub names: Vec<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Located {
    pub name: String,
    pub found: bool,
    /// Every match on the search path, in search order.
    pub paths: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct LocateResults {
    pub results: Vec<Located>,
}

/// Finds programs by name on the search path, in the directories the policy grants.
#[utoipa::path(post, path = "/api/v1/system/tools/locate", tag = "system",
    security(("token" = [])), request_body = LocateRequest,
    responses((status = 200, body = LocateResults), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
pub async fn locate(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    ApiJson(request): ApiJson<LocateRequest>,
) -> Result<Json<LocateResults>, ApiError> {
    let results = call(
        &shared,
        session,
        COMPONENT,
        "locate",
        json!({ "names": request.names }),
    )
    .await?;
    Ok(Json(LocateResults { results }))
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recipe {
    pub tool: String,
    /// `linux`, `macos`, `windows`.
    pub os: String,
    /// `apt`, `dnf`, `pacman`, `zypper`, `apk`, `brew`, `winget`.
    pub manager: String,
    pub package: String,
    /// The install command as program and arguments (run it through the commands capability).
    pub command: Vec<String>,
    pub needs_root: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Recipes {
    pub recipes: Vec<Recipe>,
}

/// Install recipes for every catalogue tool, per platform and package manager.
#[utoipa::path(get, path = "/api/v1/system/tools/recipes", tag = "system",
    security(("token" = [])),
    responses((status = 200, body = Recipes), (status = 401, body = ErrorBody)))]
pub async fn recipes(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
) -> Result<Json<Recipes>, ApiError> {
    let recipes = call(&shared, session, COMPONENT, "recipes", json!({})).await?;
    Ok(Json(Recipes { recipes }))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolveRequest {
    /// A catalogue tool name.
    pub tool: String,
}

/// The recipe for this machine: its OS, and the first package manager present.
#[utoipa::path(post, path = "/api/v1/system/tools/recipes/resolve", tag = "system",
    security(("token" = [])), request_body = ResolveRequest,
    responses((status = 200, body = Recipe), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no recipe for this machine")))]
pub async fn resolve(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    ApiJson(request): ApiJson<ResolveRequest>,
) -> Result<Json<Recipe>, ApiError> {
    call(
        &shared,
        session,
        COMPONENT,
        "resolve",
        json!({ "tool": request.tool }),
    )
    .await
    .map(Json)
}
