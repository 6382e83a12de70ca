//! The audit log, as a session sees it: its own entries only.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use capbridge_runtime::audit::{self, Page};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::routes;

use super::{RouteModule, Routes, Tier};
use crate::error::{ApiError, ErrorBody};
use crate::security::SessionId;
use crate::Shared;

pub const MODULE: RouteModule = RouteModule {
    capabilities: &["audit"],
    component: None,
    routes: || vec![(Tier::Session, Routes::new().routes(routes!(audit_log)))],
};

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries at or after this time (milliseconds since the Unix epoch).
    pub since: Option<u64>,
    /// Only entries before this time (milliseconds since the Unix epoch).
    pub until: Option<u64>,
    /// Only entries of this component.
    pub component: Option<String>,
    /// Only entries of this kind (`event.published`), or of a family (`process.*`).
    pub kind: Option<String>,
    /// Only entries older than this `seq`: the previous page's `next`.
    pub before: Option<u64>,
    /// At most this many entries (default 100, at most 1000).
    pub limit: Option<usize>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_argument", message.into())
}

/// The audit entries of this session (what it did with the bridge: calls, events, commands,
/// prompts, files, sleep prevention), newest first, one page at a time. Entries hold no tokens
/// and no contents.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", security(("token" = [])),
    params(AuditQuery),
    responses((status = 200, body = Page),
        (status = 400, body = ErrorBody, description = "a filter out of range"),
        (status = 401, body = ErrorBody)))]
pub async fn audit_log(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionId>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Page>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=audit::MAX_PAGE).contains(&limit) {
        return Err(invalid(format!(
            "`limit` is {limit}; from 1 to {} entries are returned",
            audit::MAX_PAGE
        )));
    }
    if let (Some(since), Some(until)) = (query.since, query.until) {
        if since > until {
            return Err(invalid("`since` is after `until`"));
        }
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.*".contains(c))
    };
    for (key, value) in [("component", &query.component), ("kind", &query.kind)] {
        if let Some(value) = value {
            if !name_ok(value) {
                return Err(invalid(format!(
                    "`{key}` must be 1 to 64 lowercase letters, digits, `-`, `.` or `*`"
                )));
            }
        }
    }
    let log = shared.runtime.audit().clone();
    let query = audit::Query {
        since_ms: query.since,
        until_ms: query.until,
        component: query.component,
        session: Some((log.run().to_string(), session.0)),
        kind: query.kind,
        before: query.before,
        limit,
    };
    // SQLite blocks: not on the async workers.
    let page = tokio::task::spawn_blocking(move || log.query(&query))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|page| page)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the audit log cannot be read: {e}"),
            )
        })?;
    Ok(Json(page))
}
