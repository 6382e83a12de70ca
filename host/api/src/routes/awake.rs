//! `/api/v1/awake/*`: sleep prevention through the `awake` component. Holds are counted per
//! session; a session's holds end with it. Changes are published as `awake.acquired` and
//! `awake.released` (source `capbridge`).

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::routes;

use capbridge_runtime::{AwakeStatus, Hold};

use super::capability::call;
use super::{RouteModule, Routes, Tier};
use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::security::SessionId;
use crate::Shared;

/// The component these routes call.
pub const COMPONENT: &str = "awake";

pub const MODULE: RouteModule = RouteModule {
    capabilities: &["awake"],
    component: Some(COMPONENT),
    routes: || {
        vec![(
            Tier::SessionOwnDeadline,
            Routes::new()
                .routes(routes!(status))
                .routes(routes!(acquire))
                .routes(routes!(release)),
        )]
    },
};

/// Whether sleep is prevented, and every hold of every session.
#[utoipa::path(get, path = "/api/v1/awake/status", tag = "awake", security(("token" = [])),
    responses((status = 200, body = AwakeStatus), (status = 401, body = ErrorBody)))]
pub async fn status(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
) -> Result<Json<AwakeStatus>, ApiError> {
    call(&shared, session, COMPONENT, "status", json!({}))
        .await
        .map(Json)
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcquireRequest {
    /// Why (1 to 200 characters); shown to the system's power manager.
    pub reason: String,
}

/// Adds a hold for this session; the first hold prevents sleep. 503 when the system has no
/// sleep-prevention service (on Linux: `org.freedesktop.ScreenSaver` on the session bus).
#[utoipa::path(post, path = "/api/v1/awake/acquire", tag = "awake", security(("token" = [])),
    request_body = AcquireRequest,
    responses((status = 200, body = Hold), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "sleep cannot be prevented here")))]
pub async fn acquire(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    ApiJson(request): ApiJson<AcquireRequest>,
) -> Result<Json<Hold>, ApiError> {
    call(
        &shared,
        session,
        COMPONENT,
        "acquire",
        json!({ "reason": request.reason }),
    )
    .await
    .map(Json)
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseRequest {
    /// A hold id this session acquired.
    pub id: String,
}

/// Releases one of this session's holds; releasing the last hold lets the machine sleep.
#[utoipa::path(post, path = "/api/v1/awake/release", tag = "awake", security(("token" = [])),
    request_body = ReleaseRequest,
    responses((status = 200, body = Hold), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "not a hold of this session")))]
pub async fn release(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    ApiJson(request): ApiJson<ReleaseRequest>,
) -> Result<Json<Hold>, ApiError> {
    call(
        &shared,
        session,
        COMPONENT,
        "release",
        json!({ "id": request.id }),
    )
    .await
    .map(Json)
}
