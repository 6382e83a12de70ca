//! The routing and security layers in-process, without a socket (axum's `examples/testing`):
//! `router(shared)` answered with tower's `oneshot`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use capbridge_runtime::Picker;
use capbridge_runtime::{Runtime, RuntimeConfig};
use tower::ServiceExt as _;

use crate::security::TOKEN_HEADER;
use crate::{router, BridgeConfig, Shared, MODULES};

const PORT: u16 = 47999;
const HOST: &str = "127.0.0.1:47999";

fn shared() -> (Arc<Shared>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = Runtime::new(RuntimeConfig {
        components_dir: dir.path().join("components"),
        policy_dir: dir.path().join("policy"),
        cache_dir: dir.path().join("cache"),
        record_dir: None,
        audit_retention: None,
        picker: Picker::Headless,
        own_files: Default::default(),
        state_dir: dir.path().join("state"),
    })
    .expect("runtime");
    let config = BridgeConfig {
        origins: vec!["https://app.example".into()],
        ..Default::default()
    };
    let shared = Shared::new(Arc::new(runtime), config, PORT, None, None).expect("shared");
    (shared, dir)
}

async fn send(shared: &Arc<Shared>, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = router(shared.clone())
        .oneshot(request)
        .await
        .expect("answer");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

fn get(path: &str) -> axum::http::request::Builder {
    Request::get(path).header(header::HOST, HOST)
}

async fn token(shared: &Arc<Shared>) -> String {
    let request = Request::post("/api/v1/session/handshake")
        .header(header::HOST, HOST)
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(shared, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["sessionToken"].as_str().expect("a token").to_string()
}

#[tokio::test]
async fn health_answers_only_to_the_bridge_s_own_host() {
    let (shared, _dir) = shared();
    let (status, body) = send(&shared, get("/api/v1/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let rebound = Request::get("/api/v1/health")
        .header(header::HOST, "rebind.example:47999")
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(&shared, rebound).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "host_not_allowed");
}

#[tokio::test]
async fn every_registered_route_needs_what_its_tier_says() {
    let (shared, _dir) = shared();
    // A session route without a token is refused before its handler runs.
    let (status, body) = send(
        &shared,
        get("/api/v1/bridge/info").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // With one, it answers.
    let token = token(&shared).await;
    let request = get("/api/v1/bridge/info")
        .header(TOKEN_HEADER, &token)
        .body(Body::empty())
        .unwrap();
    let (status, _) = send(&shared, request).await;
    assert_eq!(status, StatusCode::OK);
    // A capability route whose component is not installed says so (503), after the session check.
    let request = get("/api/v1/awake/status")
        .header(TOKEN_HEADER, &token)
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(&shared, request).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test]
async fn the_capability_list_is_what_the_route_modules_register() {
    let (shared, _dir) = shared();
    let token = token(&shared).await;
    let request = get("/api/v1/capabilities")
        .header(TOKEN_HEADER, &token)
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(&shared, request).await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<&str> = body["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let registered: Vec<&str> = MODULES
        .iter()
        .flat_map(|m| m.capabilities.iter().copied())
        .collect();
    assert_eq!(listed, registered);
    for name in ["health", "commands", "filesystem", "awake", "system_info"] {
        assert!(listed.contains(&name), "{name} missing from {listed:?}");
    }
}

#[tokio::test]
async fn unknown_paths_get_a_hint_to_the_canonical_route() {
    let (shared, _dir) = shared();
    let (status, body) = send(&shared, get("/api/v2/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["hint"], "did you mean /api/v1/health?");
}

#[tokio::test]
async fn a_token_in_the_query_is_refused_on_http_routes() {
    let (shared, _dir) = shared();
    let token = token(&shared).await;
    let request = get(&format!("/api/v1/bridge/info?sessionToken={token}"))
        .header(TOKEN_HEADER, &token)
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(&shared, request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "token_in_query");
}
