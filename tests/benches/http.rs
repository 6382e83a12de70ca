//! HTTP benchmarks under a real load generator (wrk, from Debian) on the same machine: figures
//! printed, not asserted (`cargo xtask bench`).
//!
//! - `GET /api/v1/health` (no session);
//! - a native no-op route behind the same checks and session as the contract's routes;
//! - `POST /api/v1/commands/echo.noop/invoke`: a fresh component instance per request;
//!
//! and the ratio component / native from the same run.

use std::process::Command;
use std::sync::Arc;

use axum::routing::post;
use axum::{Json, Router};
use capbridge_api::{BridgeConfig, ServeOptions, Server, Shared};
use capbridge_tests::echo_fixture;
use serde_json::{json, Value};

const DURATION: &str = "10s";
const CONNECTIONS: &str = "32";

struct Figures {
    requests_per_second: f64,
    p50: String,
    p99: String,
}

/// Runs wrk against `url`; `post` is `(token, body)` for a POST with the session header.
fn wrk(url: &str, post: Option<(&str, &str)>) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("wrk");
    command.args(["--latency", "-t1", "-c", CONNECTIONS, "-d", DURATION]);
    if let Some((token, body)) = post {
        let script = dir.path().join("post.lua");
        std::fs::write(
            &script,
            format!(
                "wrk.method = \"POST\"\nwrk.body = '{body}'\n\
                 wrk.headers[\"Content-Type\"] = \"application/json\"\n\
                 wrk.headers[\"X-OSLOOP-BRIDGE-TOKEN\"] = \"{token}\"\n"
            ),
        )
        .unwrap();
        command.arg("-s").arg(&script);
    }
    let output = command.arg(url).output().unwrap_or_else(|e| {
        panic!("wrk is not installed ({e}): run `apt-get install -y wrk`, or `cargo xtask bench`")
    });
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {text}");
    assert!(
        !text.contains("Non-2xx"),
        "the bridge refused requests under load:\n{text}"
    );
    let field = |prefix: &str| -> String {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in wrk's output:\n{text}"))
            .trim()
            .to_string()
    };
    Figures {
        requests_per_second: field("Requests/sec:").parse().unwrap(),
        p50: field("50%"),
        p99: field("99%"),
    }
}

fn report(name: &str, f: &Figures) {
    println!(
        "{name:<52} {:>10.0} req/s   p50 {:>8}   p99 {:>8}",
        f.requests_per_second, f.p50, f.p99
    );
}

fn main() {
    // As `capbridge` itself runs.
    capbridge_runtime::engine::skip_error_backtraces();
    let fixture = echo_fixture();
    let runtime = Arc::new(fixture.runtime());
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let (server, token) = tokio.block_on(async {
        let native: Router<Arc<Shared>> = Router::new().route(
            "/bench/noop",
            post(|Json(_): Json<Value>| async { Json(json!({ "result": null })) }),
        );
        let options = ServeOptions {
            extra_routes: Some(native),
            ..ServeOptions::default()
        };
        let listener = capbridge_api::bind(0).await.unwrap();
        let server = Server::start(listener, runtime, BridgeConfig::default(), options).unwrap();
        let token = server.shared().sessions.issue(None).unwrap().token;
        (server, token)
    });
    let base = format!("http://{}", server.addr());
    println!(
        "wrk: 1 thread, {CONNECTIONS} connections, {DURATION} each; the server has the other core"
    );
    let health = wrk(&format!("{base}/api/v1/health"), None);
    report("GET /api/v1/health", &health);
    let body = r#"{"args":{}}"#;
    let native = wrk(&format!("{base}/bench/noop"), Some((&token, body)));
    report("POST native no-op (same checks and session)", &native);
    let component = wrk(
        &format!("{base}/api/v1/commands/echo.noop/invoke"),
        Some((&token, body)),
    );
    report("POST /api/v1/commands/echo.noop/invoke", &component);
    println!(
        "component / native: {:.2}x the requests/s",
        component.requests_per_second / native.requests_per_second
    );
    tokio
        .block_on(server.shutdown(std::time::Duration::from_secs(5)))
        .unwrap();
}
