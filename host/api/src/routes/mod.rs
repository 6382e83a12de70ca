//! The contract's routes, and the strict handling of everything else.
//!
//! Each route is declared once, in its module: its path, method and OpenAPI entry come from the
//! handler's `#[utoipa::path]`, and utoipa-axum's `routes!` adds handler and document entry
//! together. [`MODULES`] is the one list of route modules: the router, the OpenAPI document, the
//! list of paths ([`routes`]), the contract's capability list and the components the contract
//! is a face of all come from it.

pub mod audit;
pub mod awake;
pub mod bridge;
pub mod capability;
pub mod commands;
pub mod events;
pub mod filesystem;
pub mod mcp;
pub mod session;
pub mod system;
pub mod system_commands;

use std::sync::{Arc, LazyLock};

use axum::http::{Method, StatusCode, Uri};
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::Shared;

/// Where a group of routes sits in the request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// No session needed; under the request timeout (health, handshake).
    Public,
    /// A session is needed; under the request timeout.
    Session,
    /// A session is needed; the call has its own deadline (invocations, capability routes:
    /// 504 from the command timeout and the component's policy).
    SessionOwnDeadline,
    /// Authenticates itself and lives as long as its session (the event WebSocket).
    Socket,
}

/// Routes of one tier, each added with `routes!` so its OpenAPI entry comes along.
pub type Routes = OpenApiRouter<Arc<Shared>>;

/// One module of routes, as registered in [`MODULES`].
pub struct RouteModule {
    /// The contract's capability names it provides (`GET /api/v1/capabilities`).
    pub capabilities: &'static [&'static str],
    /// The component whose exports it is a face of, if any.
    pub component: Option<&'static str>,
    /// Its routes, by tier.
    pub routes: fn() -> Vec<(Tier, Routes)>,
}

/// Every module of routes. A capability's route module is one line here.
pub const MODULES: &[RouteModule] = &[
    bridge::MODULE,
    session::MODULE,
    commands::MODULE,
    events::MODULE,
    filesystem::MODULE,
    awake::MODULE,
    system::MODULE,
    system_commands::MODULE,
    mcp::MODULE,
    audit::MODULE,
];

/// Every path this bridge serves, canonical form (`{x}`: one segment), as the registered
/// modules declare them.
pub fn routes() -> &'static [String] {
    static ROUTES: LazyLock<Vec<String>> = LazyLock::new(|| {
        crate::openapi::document()
            .paths
            .paths
            .keys()
            .cloned()
            .collect()
    });
    &ROUTES
}

/// 404 for every path that is not a route, with the canonical path when one was meant
/// (`/api/v1/api/v1/health`, `/api/v2/health`, `/api/v1/health/`, `//api/v1/health`, `/health`).
pub async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    let path = uri.path();
    let error = ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_route",
        format!("no route {method} {path}; this bridge speaks the /api/v1 contract"),
    );
    match canonical(path) {
        Some(canonical) => error.with_hint(format!("did you mean {canonical}?")),
        None => error.with_hint("GET /api/v1/openapi.json lists every route"),
    }
}

/// The route a malformed path most likely meant.
pub fn canonical(path: &str) -> Option<String> {
    let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Duplicated prefixes: /api/v1/api/v1/…
    while segments.len() >= 4 && segments[0] == "api" && segments[2] == "api" {
        segments.drain(..2);
    }
    let is_version = |s: &str| s.len() > 1 && s.starts_with('v') && s[1..].parse::<u32>().is_ok();
    match segments.as_slice() {
        ["api" | "ws", version, ..] if is_version(version) => segments[1] = "v1",
        [version, ..] if is_version(version) => segments.insert(0, "api"),
        ["api" | "ws", ..] => segments.insert(1, "v1"),
        _ => segments.splice(0..0, ["api", "v1"]).for_each(drop),
    }
    let candidate = format!("/{}", segments.join("/"));
    (candidate != path && is_route(&candidate)).then_some(candidate)
}

fn is_route(path: &str) -> bool {
    let wanted: Vec<&str> = path.split('/').collect();
    routes().iter().any(|route| {
        let parts: Vec<&str> = route.split('/').collect();
        parts.len() == wanted.len()
            && parts
                .iter()
                .zip(&wanted)
                .all(|(p, w)| p.starts_with('{') || p == w)
    })
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn hints_point_at_the_canonical_path() {
        for (bad, good) in [
            ("/api/v1/api/v1/health", "/api/v1/health"),
            ("/api/v1/api/v1/api/v1/bridge/info", "/api/v1/bridge/info"),
            ("/api/v2/health", "/api/v1/health"),
            ("/api/v1/health/", "/api/v1/health"),
            ("//api//v1/health", "/api/v1/health"),
            ("/v1/health", "/api/v1/health"),
            ("/health", "/api/v1/health"),
            ("/api/health", "/api/v1/health"),
            ("/ws/v2/events", "/ws/v1/events"),
            (
                "/api/v1/commands/echo.noop/invoke/",
                "/api/v1/commands/echo.noop/invoke",
            ),
        ] {
            assert_eq!(canonical(bad).as_deref(), Some(good), "{bad}");
        }
        for nothing in ["/api/v1/nope", "/", "/favicon.ico", "/api/v1/health"] {
            assert_eq!(canonical(nothing), None, "{nothing}");
        }
    }
}
