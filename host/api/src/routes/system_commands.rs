//! `/api/v1/system/commands/*`, `/api/v1/system/permissions/*` and `/api/v1/system/tools/install`:
//! running programs for the web app through the `commands` component, each run approved by a
//! person.
//!
//! `execute` answers at once: with the run `running` when a whitelist rule matched, else
//! `pending_approval` with the prompt's `requestId` (the web app follows the run through its
//! events, or by reading it back). The person answers in the terminal running `capbridge
//! serve` or with `capbridge prompts`; the resolve route answers only when the user set
//! `web-approvals = true` in the config. Refusals carry the contract's codes:
//! `bridge_policy_denied` (403), `invalid_request` (400); a person's rejection is the run's
//! `rejection: "rejected_by_user"`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use capbridge_runtime::approvals::{DecideError, Decider, Decision};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::capability::call;
use super::{RouteModule, Routes, Tier};
use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::security::SessionId;
use crate::Shared;

/// The component these routes call.
pub const COMPONENT: &str = "commands";

pub const MODULE: RouteModule = RouteModule {
    capabilities: &["command_permissions"],
    component: Some(COMPONENT),
    routes: || {
        vec![
            (
                Tier::SessionOwnDeadline,
                Routes::new()
                    .routes(routes!(execute))
                    .routes(routes!(runs))
                    .routes(routes!(get_run))
                    .routes(routes!(terminate))
                    .routes(routes!(rules))
                    .routes(routes!(get_rule, delete_rule))
                    .routes(routes!(install)),
            ),
            (Tier::Session, Routes::new().routes(routes!(resolve))),
        ]
    },
};

/// A program and its arguments, run without a shell: every argument reaches the program as it
/// is.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandSpec {
    /// A bare name (found on the run's `PATH`) or an absolute path. No placeholders.
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Absolute; inside the policy's working directories (default: the first). No placeholders.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Variables set for the program (on top of those the policy passes through).
    #[serde(default, deserialize_with = "env_map")]
    pub env: BTreeMap<String, String>,
    /// Standard input; absent: closed.
    #[serde(default)]
    pub stdin: Option<String>,
}

/// `env` as an object, or as the component's list of `[name, value]` pairs.
fn env_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Env {
        Map(BTreeMap<String, String>),
        Pairs(Vec<(String, String)>),
    }
    Ok(match Env::deserialize(d)? {
        Env::Map(map) => map,
        Env::Pairs(pairs) => pairs.into_iter().collect(),
    })
}

impl CommandSpec {
    /// The component's `command` record.
    fn to_wit(&self) -> Value {
        json!({
            "program": self.program,
            "args": self.args,
            "cwd": self.cwd,
            "env": self.env.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "stdin": self.stdin,
        })
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecuteRequest {
    /// The command as the person approves it and rules match it, with the web app's secret
    /// placeholders (`__OSL_SECRET[name]__`) in place.
    pub template: CommandSpec,
    /// What runs: the template with every placeholder replaced by its value (default: the
    /// template). Each field must be its template field with placeholders filled, else 400.
    /// Never stored, logged, shown or sent in an event.
    #[serde(default)]
    pub resolved: Option<CommandSpec>,
    /// Default 300000; no maximum.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// One run: its state, how it was approved, how it ended. Never the resolved values.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub id: String,
    /// `command` or `install`.
    pub kind: String,
    /// `pending_approval`, `rejected`, `running`, `completed`, `failed`, `terminated`.
    #[serde(deserialize_with = "snake")]
    pub status: String,
    pub template: CommandSpec,
    /// The program's host path.
    pub program_path: String,
    pub cwd: String,
    /// The prompt's id, when one was shown.
    pub request_id: Option<String>,
    /// The whitelist rule that allowed it, or that its approval created.
    pub rule_id: Option<String>,
    /// `rule`, `once`, `whitelist`.
    pub approval: Option<String>,
    /// `rejected_by_user`, `bridge_policy_denied`, `invalid_request`.
    pub rejection: Option<String>,
    pub message: Option<String>,
    pub exit_code: Option<i32>,
    /// The signal that ended it.
    pub signal: Option<i32>,
    pub timeout_ms: u64,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    /// Whether a stream outgrew its 10 MiB buffer (the events carried every byte).
    #[serde(rename = "partial_output", alias = "partialOutput")]
    pub partial_output: bool,
    /// Bytes each stream produced in all.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

fn snake<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(String::deserialize(d)?.replace('-', "_"))
}

/// A run with the output its buffers kept.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: Run,
    /// The first 10 MiB of standard output: text when it is UTF-8, else base64.
    pub stdout: String,
    /// `utf-8` or `base64`.
    pub stdout_encoding: String,
    pub stderr: String,
    pub stderr_encoding: String,
}

/// The component's `run-detail`: the run nested, not flattened.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WitRunDetail {
    run: Run,
    stdout: String,
    stdout_encoding: String,
    stderr: String,
    stderr_encoding: String,
}

/// The contract's codes for the component's refusals.
fn contract_code(mut error: ApiError) -> ApiError {
    error.code = match error.code {
        "denied" => "bridge_policy_denied",
        "invalid_argument" => "invalid_request",
        other => other,
    };
    error
}

async fn commands<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    session: SessionId,
    function: &str,
    args: Value,
) -> Result<T, ApiError> {
    call(shared, session, COMPONENT, function, args)
        .await
        .map_err(contract_code)
}

/// Asks to run a command. It runs at once when a whitelist rule matches its template;
/// otherwise the person is asked, and the run waits in `pending_approval` (the answer does not
/// wait for the person).
#[utoipa::path(post, path = "/api/v1/system/commands/execute", tag = "commands",
    security(("token" = [])), request_body = ExecuteRequest,
    responses((status = 200, body = Run, description = "`running`, or `pending_approval` with its `requestId`"),
        (status = 400, body = ErrorBody, description = "`invalid_request`"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`bridge_policy_denied`: outside the policy's process grant"),
        (status = 503, body = ErrorBody, description = "too many runs or prompts at once")))]
pub async fn execute(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    ApiJson(request): ApiJson<ExecuteRequest>,
) -> Result<Json<Run>, ApiError> {
    let args = json!({
        "template": request.template.to_wit(),
        "resolved": request.resolved.as_ref().map(CommandSpec::to_wit),
        "timeout-ms": request.timeout_ms,
    });
    commands(&shared, session, "execute", args).await.map(Json)
}

#[derive(Serialize, ToSchema)]
pub struct Runs {
    pub runs: Vec<Run>,
}

/// This session's runs, newest first (other sessions' runs are not visible).
#[utoipa::path(get, path = "/api/v1/system/commands/runs", tag = "commands",
    security(("token" = [])),
    responses((status = 200, body = Runs), (status = 401, body = ErrorBody)))]
pub async fn runs(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
) -> Result<Json<Runs>, ApiError> {
    let runs = commands(&shared, session, "runs", json!({})).await?;
    Ok(Json(Runs { runs }))
}

/// One run of this session, with its output so far.
#[utoipa::path(get, path = "/api/v1/system/commands/runs/{runId}", tag = "commands",
    security(("token" = [])), params(("runId" = String, Path)),
    responses((status = 200, body = RunDetail), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "not a run of this session")))]
pub async fn get_run(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    Path(run_id): Path<String>,
) -> Result<Json<RunDetail>, ApiError> {
    let detail: WitRunDetail =
        commands(&shared, session, "get-run", json!({ "id": run_id })).await?;
    Ok(Json(RunDetail {
        run: detail.run,
        stdout: detail.stdout,
        stdout_encoding: detail.stdout_encoding,
        stderr: detail.stderr,
        stderr_encoding: detail.stderr_encoding,
    }))
}

/// Ends a run: TERM to everything it started, KILL after 2 s; a run still waiting for approval
/// is withdrawn. Answers once it has ended.
#[utoipa::path(post, path = "/api/v1/system/commands/runs/{runId}/terminate", tag = "commands",
    security(("token" = [])), params(("runId" = String, Path)),
    responses((status = 200, body = Run), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "not a run of this session")))]
pub async fn terminate(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    Path(run_id): Path<String>,
) -> Result<Json<Run>, ApiError> {
    commands(&shared, session, "terminate", json!({ "id": run_id }))
        .await
        .map(Json)
}

/// A whitelist rule: a command request whose template equals this one runs without a prompt.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub id: String,
    pub component: String,
    pub template: CommandSpec,
    /// The program's host path when the person allowed it: the rule allows that file only, not
    /// whatever the name finds on `PATH` later.
    pub program_path: String,
    pub created_at_ms: u64,
    /// `terminal`, `prompts-cli` or `web-app`.
    pub created_by: String,
}

#[derive(Serialize, ToSchema)]
pub struct Rules {
    pub rules: Vec<Rule>,
}

/// The whitelist rules, oldest first.
#[utoipa::path(get, path = "/api/v1/system/permissions/commands", tag = "commands",
    security(("token" = [])),
    responses((status = 200, body = Rules), (status = 401, body = ErrorBody)))]
pub async fn rules(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
) -> Result<Json<Rules>, ApiError> {
    let rules = commands(&shared, session, "rules", json!({})).await?;
    Ok(Json(Rules { rules }))
}

/// One whitelist rule.
#[utoipa::path(get, path = "/api/v1/system/permissions/commands/{ruleId}", tag = "commands",
    security(("token" = [])), params(("ruleId" = String, Path)),
    responses((status = 200, body = Rule), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get_rule(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    Path(rule_id): Path<String>,
) -> Result<Json<Rule>, ApiError> {
    commands(&shared, session, "get-rule", json!({ "id": rule_id }))
        .await
        .map(Json)
}

/// Deletes a whitelist rule: its template prompts again.
#[utoipa::path(delete, path = "/api/v1/system/permissions/commands/{ruleId}", tag = "commands",
    security(("token" = [])), params(("ruleId" = String, Path)),
    responses((status = 200, body = Rule, description = "the deleted rule"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_rule(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    Path(rule_id): Path<String>,
) -> Result<Json<Rule>, ApiError> {
    commands(&shared, session, "delete-rule", json!({ "id": rule_id }))
        .await
        .map(Json)
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstallRequest {
    /// A catalogue tool (`GET /api/v1/system/tools/recipes`).
    pub tool: String,
    /// Default 300000; no maximum.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Installs a tool with this machine's recipe (`POST /api/v1/system/tools/recipes/resolve`),
/// run like `execute` but always after a prompt, never by a whitelist rule. A recipe that
/// needs root runs through `sudo` when capbridge is not root.
#[utoipa::path(post, path = "/api/v1/system/tools/install", tag = "commands",
    security(("token" = [])), request_body = InstallRequest,
    responses((status = 200, body = Run, description = "`pending_approval` with its `requestId`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`bridge_policy_denied`"),
        (status = 404, body = ErrorBody, description = "no recipe for this tool on this machine")))]
pub async fn install(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    ApiJson(request): ApiJson<InstallRequest>,
) -> Result<Json<Run>, ApiError> {
    let recipe: super::system::Recipe = call(
        &shared,
        session,
        super::system::COMPONENT,
        "resolve",
        json!({ "tool": request.tool }),
    )
    .await?;
    let mut words = recipe.command.into_iter();
    let program = words.next().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "capability_failed",
            "the recipe has an empty command",
        )
    })?;
    let mut args: Vec<String> = words.collect();
    let program = if recipe.needs_root && !rustix::process::geteuid().is_root() {
        args.insert(0, program);
        "sudo".to_string()
    } else {
        program
    };
    let command = CommandSpec {
        program,
        args,
        cwd: None,
        env: BTreeMap::new(),
        stdin: None,
    };
    let args = json!({ "command": command.to_wit(), "timeout-ms": request.timeout_ms });
    commands(&shared, session, "install", args).await.map(Json)
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolveRequest {
    /// `allow_once`, `allow_and_whitelist` (not for installs) or `reject`.
    pub decision: Decision,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    pub request_id: String,
    pub decision: Decision,
}

/// Answers a prompt of this session. Refused (403 `web_approvals_disabled`) unless the user set
/// `web-approvals = true` in the config: by default only the person answers, in the terminal
/// running `capbridge serve` or with `capbridge prompts`.
#[utoipa::path(post, path = "/api/v1/system/permissions/prompts/{requestId}/resolve",
    tag = "commands", security(("token" = [])), params(("requestId" = String, Path)),
    request_body = ResolveRequest,
    responses((status = 200, body = Resolved), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`web_approvals_disabled`"),
        (status = 404, body = ErrorBody, description = "no pending prompt of this session")))]
pub async fn resolve(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    Path(request_id): Path<String>,
    ApiJson(request): ApiJson<ResolveRequest>,
) -> Result<Json<Resolved>, ApiError> {
    if !shared.config.web_approvals {
        tracing::warn!(target: "capbridge::audit", session = session.0, request = %request_id, "prompt resolve refused: web approvals are off");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "web_approvals_disabled",
            "prompts are answered by the person at this machine, not through the contract",
        )
        .with_hint(
            "answer in the terminal running `capbridge serve`, or with `capbridge prompts`; \
             `web-approvals = true` in the config lets the web app approve its own commands",
        ));
    }
    let approvals = shared.runtime.approvals();
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("this session has no pending prompt `{request_id}`"),
        )
    };
    let prompt = approvals.get(&request_id).ok_or_else(not_found)?;
    if prompt.session != Some(session.0) {
        return Err(not_found());
    }
    approvals
        .decide(&request_id, request.decision, Decider::WebApp)
        .map_err(|e| match e {
            DecideError::NotFound(_) => not_found(),
            DecideError::NotWhitelistable(_) => {
                ApiError::bad_request("invalid_request", e.to_string())
            }
            DecideError::PersonOnly(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
            }
        })?;
    Ok(Json(Resolved {
        request_id,
        decision: request.decision,
    }))
}
