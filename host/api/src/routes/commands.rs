//! The command registry (seed 003 applied to components): every JSON-callable export of every
//! loaded component, listed with its schemas and invoked by the same name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use utoipa_axum::routes;

use super::{RouteModule, Routes, Tier};
use capbridge_runtime::{CallError, CallOptions, ComponentStatus, Runtime};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::security::SessionId;
use crate::Shared;

pub const MODULE: RouteModule = RouteModule {
    capabilities: &["commands"],
    component: None,
    routes: || {
        vec![
            (Tier::Session, Routes::new().routes(routes!(list))),
            (
                Tier::SessionOwnDeadline,
                Routes::new().routes(routes!(invoke)),
            ),
        ]
    },
};

/// One invokable command: `<component>.<export>`.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Command {
    /// `echo.reverse`; an export of an interface is `<component>.<interface>.<function>`.
    pub name: String,
    pub component: String,
    pub function: String,
    /// The WIT signature, then the component's own description.
    pub description: String,
    /// JSON Schema of `args`.
    pub args_schema: Value,
    /// JSON Schema of `result`.
    pub result_schema: Value,
    /// Whether the export returns a WIT `result` whose `err` side is answered with 500.
    pub fallible: bool,
}

/// Built once from the loaded components; the listing and the invocation both read it.
pub struct Registry {
    commands: BTreeMap<String, Command>,
}

impl Registry {
    pub fn new(runtime: &Runtime) -> Self {
        let mut commands = BTreeMap::new();
        for info in runtime.components() {
            if info.status != ComponentStatus::Loaded {
                continue;
            }
            let about = info
                .policy
                .as_ref()
                .and_then(|p| p.description.clone())
                .unwrap_or_default();
            for export in &info.exports {
                let (Some(args), Some(result), None) = (
                    &export.params_schema,
                    &export.result_schema,
                    &export.unsupported,
                ) else {
                    continue;
                };
                // The host calls a component's route handler for its routes (`/plugins`); the
                // web app reaches them there, never as a command with a made-up request.
                if export.name == capbridge_runtime::caps::serve::HANDLER {
                    continue;
                }
                let name = format!("{}.{}", info.id, export.name);
                let description = if about.is_empty() {
                    export.signature.clone()
                } else {
                    format!("{} — {about}", export.signature)
                };
                commands.insert(
                    name.clone(),
                    Command {
                        name,
                        component: info.id.clone(),
                        function: export.name.clone(),
                        description,
                        args_schema: args.clone(),
                        result_schema: result.clone(),
                        fallible: export.fallible,
                    },
                );
            }
        }
        Self { commands }
    }

    pub fn get(&self, name: &str) -> Option<&Command> {
        self.commands.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Command> {
        self.commands.values()
    }

    /// The components that provide at least one command.
    pub fn components(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.all().map(|c| c.component.clone()).collect();
        ids.dedup();
        ids
    }
}

#[derive(Serialize, ToSchema)]
pub struct CommandList {
    pub commands: Vec<Command>,
}

#[utoipa::path(get, path = "/api/v1/commands", tag = "commands", security(("token" = [])),
    responses((status = 200, body = CommandList), (status = 401, body = ErrorBody)))]
pub async fn list(State(shared): State<Arc<Shared>>) -> Json<CommandList> {
    Json(CommandList {
        commands: shared.commands().all().cloned().collect(),
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InvokeRequest {
    /// Arguments keyed by parameter name; must fit the command's `argsSchema`.
    #[serde(default = "empty_object")]
    pub args: Value,
    /// Deadline for this call; the command-timeout default applies when absent, and the
    /// component's policy `limits.deadline-ms` caps both.
    pub timeout_ms: Option<u64>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvokeResponse {
    /// The export's return value as JSON (`null` for none).
    pub result: Value,
    pub elapsed_ms: f64,
}

/// Calls a command. 400: no such command, or arguments that do not fit its schema; 500: the
/// command returned an error or trapped; 504: it ran past its deadline.
#[utoipa::path(post, path = "/api/v1/commands/{name}/invoke", tag = "commands",
    security(("token" = [])),
    params(("name" = String, Path, description = "`<component>.<export>`, as listed")),
    request_body = InvokeRequest,
    responses(
        (status = 200, body = InvokeResponse),
        (status = 400, body = ErrorBody, description = "unknown command or invalid arguments"),
        (status = 401, body = ErrorBody),
        (status = 500, body = ErrorBody, description = "the command failed; `details` holds its error value"),
        (status = 504, body = ErrorBody, description = "the command did not finish in time"),
    ))]
pub async fn invoke(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<InvokeRequest>,
) -> Result<Json<InvokeResponse>, ApiError> {
    let registry = shared.commands();
    let command = registry.get(&name).ok_or_else(|| {
        // A component that was there and stopped loading (its policy became invalid, its pin
        // no longer matches) says why.
        let id = name.split('.').next().unwrap_or_default();
        match shared.runtime.component(id).map(|c| c.status) {
            Some(ComponentStatus::Failed { reason }) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "capability_unavailable",
                format!("component `{id}` is not loaded: {reason}"),
            ),
            _ => ApiError::bad_request("unknown_command", format!("no command named `{name}`"))
                .with_hint("GET /api/v1/commands lists every command"),
        }
    })?;
    if !request.args.is_object() {
        return Err(ApiError::bad_request(
            "invalid_arguments",
            "`args` must be an object keyed by parameter name",
        ));
    }
    let deadline = request
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(shared.config.command_timeout());
    let options = CallOptions {
        deadline: Some(deadline),
        session: Some(session.0),
    };
    let outcome = shared
        .runtime
        .call(
            &command.component,
            &command.function,
            &request.args,
            &options,
        )
        .await
        .map_err(|e| call_error(&name, e))?;
    if command.fallible {
        if let Some(err) = outcome.result.get("err") {
            let message = match err {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "command_failed",
                format!("`{name}` returned an error: {message}"),
            )
            .with_details(err.clone()));
        }
    }
    Ok(Json(InvokeResponse {
        result: outcome.result,
        elapsed_ms: outcome.elapsed.as_secs_f64() * 1000.0,
    }))
}

fn call_error(name: &str, error: CallError) -> ApiError {
    let message = error.to_string();
    match error {
        CallError::InvalidArguments(_) => ApiError::bad_request("invalid_arguments", message),
        CallError::UnknownComponent(_)
        | CallError::UnknownFunction { .. }
        | CallError::Unsupported { .. }
        | CallError::NotLoaded { .. } => ApiError::bad_request("unknown_command", message),
        CallError::Timeout(_) => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, "command_timeout", message)
        }
        CallError::Trap(_) | CallError::Host(_) => {
            tracing::warn!(target: "capbridge::api", command = name, "{message}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "command_failed", message)
        }
    }
}
