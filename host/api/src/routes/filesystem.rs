//! `/api/v1/filesystem/*`: the `filesystem` component's granted directories (targets), reads
//! and atomic writes inside them, and native pickers that widen access for one session.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use capbridge_runtime::policy::Access;
use capbridge_runtime::{PathOrigin, PickKind};
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
pub const COMPONENT: &str = "filesystem";

pub const MODULE: RouteModule = RouteModule {
    capabilities: &["filesystem"],
    component: Some(COMPONENT),
    routes: || {
        vec![(
            Tier::SessionOwnDeadline,
            Routes::new()
                .routes(routes!(targets))
                .routes(routes!(select))
                .routes(routes!(read))
                .routes(routes!(write)),
        )]
    },
};

#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TargetAccess {
    ReadOnly,
    ReadWrite,
}

impl From<Access> for TargetAccess {
    fn from(access: Access) -> Self {
        match access {
            Access::ReadOnly => TargetAccess::ReadOnly,
            Access::ReadWrite => TargetAccess::ReadWrite,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// Granted by the component's policy file, for every session.
    Granted,
    /// A directory picked by a person in a native picker, for this session only.
    Picked,
    /// A single file picked by a person, for this session only: read and write it with an
    /// empty `path` (or its file name); nothing next to it is reachable.
    PickedFile,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// What requests name it by (`workspace`, `picked-3`).
    pub name: String,
    /// Absolute host path.
    pub path: String,
    pub access: TargetAccess,
    pub kind: TargetKind,
}

impl Target {
    /// A pick as a target: `picked-<id>`, for this session only.
    fn picked(id: &str, path: String, access: TargetAccess, kind: PickKind) -> Self {
        Target {
            name: format!("picked-{id}"),
            path,
            access,
            kind: match kind {
                PickKind::Directory => TargetKind::Picked,
                PickKind::File => TargetKind::PickedFile,
            },
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Targets {
    pub targets: Vec<Target>,
}

/// The directories the `filesystem` component may use for this session: those its policy
/// grants, then those this session picked.
#[utoipa::path(get, path = "/api/v1/filesystem/targets", tag = "filesystem",
    security(("token" = [])),
    responses((status = 200, body = Targets), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "the filesystem component is not loaded")))]
pub async fn targets(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
) -> Result<Json<Targets>, ApiError> {
    let paths = shared.runtime.paths(COMPONENT, session.0).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "capability_unavailable",
            format!("no component `{COMPONENT}` with a valid policy is installed"),
        )
    })?;
    let targets = paths
        .into_iter()
        .filter_map(|path| {
            let kind = match path.origin {
                PathOrigin::Policy => TargetKind::Granted,
                PathOrigin::PickedDirectory => TargetKind::Picked,
                PathOrigin::PickedFile => TargetKind::PickedFile,
            };
            // A granted target is one path segment (`/workspace` → `workspace`); a grant mounted
            // deeper is no target of these routes.
            let name = match kind {
                TargetKind::Granted => {
                    let name = path.name.trim_start_matches('/');
                    if name.is_empty() || name.contains('/') {
                        return None;
                    }
                    name.to_string()
                }
                TargetKind::Picked | TargetKind::PickedFile => path.name,
            };
            Some(Target {
                name,
                path: path.host_path.display().to_string(),
                access: path.access.into(),
                kind,
            })
        })
        .collect();
    Ok(Json(Targets { targets }))
}

#[derive(Deserialize, ToSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SelectKind {
    #[default]
    Directory,
    File,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectRequest {
    /// What to pick; `directory` unless given.
    #[serde(default)]
    pub kind: SelectKind,
    /// Appended to the picker's title, which names the component and the access asked for.
    #[serde(default)]
    pub title: String,
    /// What the pick grants; `read-only` unless asked.
    #[serde(default = "read_only")]
    pub access: TargetAccess,
}

fn read_only() -> TargetAccess {
    TargetAccess::ReadOnly
}

#[derive(Serialize, ToSchema)]
pub struct Selected {
    /// `null` when the person cancelled.
    pub selected: Option<Target>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Picked {
    id: String,
    kind: PickKind,
    host_path: String,
    access: TargetAccess,
}

/// Shows a native directory (or file) picker; what is picked becomes a target for this
/// session only. Without a display: 503 `unavailable`.
#[utoipa::path(post, path = "/api/v1/filesystem/select", tag = "filesystem",
    security(("token" = [])), request_body = SelectRequest,
    responses((status = 200, body = Selected), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "no display, or no picker service")))]
pub async fn select(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    ApiJson(request): ApiJson<SelectRequest>,
) -> Result<Json<Selected>, ApiError> {
    let export = match request.kind {
        SelectKind::Directory => "select-directory",
        SelectKind::File => "select-file",
    };
    let picked: Option<Picked> = call(
        &shared,
        session,
        COMPONENT,
        export,
        json!({ "title": request.title, "access": request.access }),
    )
    .await?;
    Ok(Json(Selected {
        selected: picked.map(|p| Target::picked(&p.id, p.host_path, p.access, p.kind)),
    }))
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// UTF-8 text.
    Utf8,
    /// Standard base64 with padding.
    Base64,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadRequest {
    /// A target name from `GET /api/v1/filesystem/targets`.
    pub target: String,
    /// Relative to the target: no `..`, not absolute, no NUL, at most 4096 bytes.
    pub path: String,
    /// Omitted: `utf8` when the file is valid UTF-8, else `base64`.
    pub encoding: Option<Encoding>,
    /// Refuse files larger than this (default 8 MiB, at most 16 MiB).
    pub max_bytes: Option<u64>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileContent {
    pub target: String,
    pub path: String,
    pub size: u64,
    pub encoding: Encoding,
    pub content: String,
    pub modified_ms: Option<u64>,
}

/// Reads a file inside a target. Publishes `filesystem.read`.
#[utoipa::path(post, path = "/api/v1/filesystem/read", tag = "filesystem",
    security(("token" = [])), request_body = ReadRequest,
    responses((status = 200, body = FileContent),
        (status = 400, body = ErrorBody, description = "bad path (escapes, NUL, too long, a directory)"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such target or file"),
        (status = 413, body = ErrorBody, description = "the file is larger than maxBytes")))]
pub async fn read(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    ApiJson(request): ApiJson<ReadRequest>,
) -> Result<Json<FileContent>, ApiError> {
    let read: Result<FileContent, ApiError> = call(
        &shared,
        session,
        COMPONENT,
        "read-file",
        json!({
            "target": request.target,
            "path": request.path,
            "encoding": request.encoding,
            "max-bytes": request.max_bytes,
        }),
    )
    .await;
    audit_file(
        &shared,
        session,
        "file.read",
        &request.target,
        &request.path,
        read.as_ref().map(|f| f.size),
    );
    read.map(Json)
}

/// An audit entry for a file read or written through these routes: where and how much, never
/// what.
fn audit_file(
    shared: &Shared,
    session: SessionId,
    kind: &str,
    target: &str,
    path: &str,
    result: Result<u64, &ApiError>,
) {
    use capbridge_runtime::audit::Outcome;
    let (outcome, detail) = match result {
        Ok(size) => (
            Outcome::Allowed,
            json!({ "target": target, "path": path, "size": size }),
        ),
        Err(error) => (
            if error.status == axum::http::StatusCode::FORBIDDEN {
                Outcome::Denied
            } else {
                Outcome::Failed
            },
            json!({ "target": target, "path": path, "error": error.code }),
        ),
    };
    shared
        .runtime
        .audit()
        .record(kind, Some(COMPONENT), Some(session.0), outcome, detail);
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WriteMode {
    /// Only if the file does not exist (409 otherwise).
    Create,
    /// Only if the file exists (404 otherwise).
    Overwrite,
    /// Either way.
    CreateOrOverwrite,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WriteRequest {
    pub target: String,
    pub path: String,
    pub content: String,
    /// How `content` is encoded; `utf8` unless given.
    pub encoding: Option<Encoding>,
    /// `create` unless given.
    pub mode: Option<WriteMode>,
    /// Create missing parent directories inside the target.
    #[serde(default)]
    pub create_parents: bool,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Written {
    pub target: String,
    pub path: String,
    pub size: u64,
    /// Whether the file did not exist before.
    pub created: bool,
}

/// Writes a file inside a read-write target atomically (a temporary file, then a rename): a
/// reader, or a crash, sees the old file or the new one, never a part. Publishes
/// `filesystem.written`.
#[utoipa::path(post, path = "/api/v1/filesystem/write", tag = "filesystem",
    security(("token" = [])), request_body = WriteRequest,
    responses((status = 200, body = Written),
        (status = 400, body = ErrorBody, description = "bad path or content encoding"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "the target is read-only"),
        (status = 404, body = ErrorBody, description = "no such target; or mode overwrite and no file"),
        (status = 409, body = ErrorBody, description = "mode create and the file exists"),
        (status = 413, body = ErrorBody, description = "content too large")))]
pub async fn write(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    ApiJson(request): ApiJson<WriteRequest>,
) -> Result<Json<Written>, ApiError> {
    let written: Result<Written, ApiError> = call(
        &shared,
        session,
        COMPONENT,
        "write-file",
        json!({
            "target": request.target,
            "path": request.path,
            "content": request.content,
            "encoding": request.encoding.unwrap_or(Encoding::Utf8),
            "mode": request.mode.unwrap_or(WriteMode::Create),
            "create-parents": request.create_parents,
        }),
    )
    .await;
    audit_file(
        &shared,
        session,
        "file.written",
        &request.target,
        &request.path,
        written.as_ref().map(|w| w.size),
    );
    written.map(Json)
}
