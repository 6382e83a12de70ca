//! HTTP benchmarks under a real load generator (wrk, from Debian) on the same machine: figures
//! printed, not asserted (`cargo xtask bench`).
//!
//! - `GET /api/v1/health` (no session);
//! - a native no-op route behind the same checks and session as the contract's routes;
//! - `POST /api/v1/commands/echo.noop/invoke`: a fresh component instance per request;
//! - `POST /api/v1/filesystem/read` of a 4 KiB file through the sandboxed `filesystem`
//!   component, against a native route that reads the same file and answers the same JSON;
//! - `GET /api/v1/system/info` through the `system` component;
//! - a component route (`GET /plugins/probe/items/42`, the `web-probe` component describing the
//!   request) against a native route answering the same JSON, and a 4 KiB file of its web UI
//!   on its own host against a native route reading the same file;
//!
//! and the ratios component / native from the same run.

use std::process::Command;
use std::sync::Arc;

use axum::routing::post;
use axum::{Json, Router};
use capbridge_api::{BridgeConfig, ServeOptions, Server, Shared};
use capbridge_tests::{component, echo_fixture, filesystem_policy_at, shipped_policy};
use serde_json::{json, Value};

const DURATION: &str = "10s";
const CONNECTIONS: &str = "32";

struct Figures {
    requests_per_second: f64,
    p50: String,
    p99: String,
}

/// Runs wrk against `url`, with the session header when `token` is given, as a POST of `body`
/// when one is given.
fn wrk(url: &str, token: Option<&str>, body: Option<&str>) -> Figures {
    let headers: Vec<(&str, &str)> = token
        .map(|token| ("X-OSLOOP-BRIDGE-TOKEN", token))
        .into_iter()
        .collect();
    wrk_with(url, &headers, body)
}

/// [`wrk`] with any request headers (`Host`, `Cookie`).
fn wrk_with(url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("wrk");
    command.args(["--latency", "-t1", "-c", CONNECTIONS, "-d", DURATION]);
    let mut script = String::new();
    for (name, value) in headers {
        script += &format!("wrk.headers[\"{name}\"] = \"{value}\"\n");
    }
    if let Some(body) = body {
        script += &format!(
            "wrk.method = \"POST\"\nwrk.body = '{body}'\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\n"
        );
    }
    if !script.is_empty() {
        let path = dir.path().join("request.lua");
        std::fs::write(&path, script).unwrap();
        command.arg("-s").arg(&path);
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
    let workspace = tempfile::tempdir().unwrap();
    let file = workspace.path().join("page.txt");
    std::fs::write(&file, "capbridge ".repeat(410)).unwrap();
    fixture.add(
        "filesystem",
        &component("filesystem"),
        Some(&filesystem_policy_at(workspace.path())),
    );
    fixture.add(
        "system",
        &component("system"),
        Some(&shipped_policy("system")),
    );
    // A component with an owner route and a web UI (rate limits apply to open routes only).
    fixture.add(
        "probe",
        &capbridge_tests::program("web-probe"),
        Some(
            "version = 1\n[grants.serve.web]\nauth = \"owner\"\n\
             [[grants.serve.routes]]\nid = \"item\"\npath = \"/items/:id\"\n\
             methods = [\"GET\"]\nauth = \"owner\"\n",
        ),
    );
    let web = fixture.components_dir().join("probe/web");
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(web.join("index.html"), "<html><head></head></html>").unwrap();
    std::fs::write(web.join("page.txt"), "capbridge ".repeat(410)).unwrap();
    let web_file = web.join("page.txt");
    // The audit log on, as `capbridge serve` keeps it (a second bridge without it, below).
    let state = tempfile::tempdir().unwrap();
    let audited = |audit: bool| capbridge_runtime::RuntimeConfig {
        audit_retention: audit.then_some(capbridge_runtime::audit::DEFAULT_RETENTION),
        state_dir: state.path().join(if audit { "audited" } else { "plain" }),
        ..fixture.config()
    };
    let runtime = Arc::new(capbridge_tests::runtime_with(audited(true)));
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let (server, token) = tokio.block_on(async {
        let native: Router<Arc<Shared>> = Router::new()
            .route(
                "/bench/noop",
                post(|Json(_): Json<Value>| async { Json(json!({ "result": null })) }),
            )
            .route(
                "/bench/describe/{id}",
                axum::routing::get(
                    |axum::extract::Path(id): axum::extract::Path<String>| async move {
                        Json(json!({ "route": "item", "method": "GET", "params": [["id", id]] }))
                    },
                ),
            )
            .route(
                "/bench/file",
                axum::routing::get(move || {
                    let file = web_file.clone();
                    async move { tokio::fs::read(&file).await.unwrap() }
                }),
            )
            .route(
                "/bench/read",
                post(move |Json(request): Json<Value>| {
                    let file = file.clone();
                    async move {
                        let content = tokio::fs::read_to_string(&file).await.unwrap();
                        Json(json!({
                            "target": request["target"], "path": request["path"],
                            "size": content.len(), "encoding": "utf8", "content": content,
                        }))
                    }
                }),
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
    let health = wrk(&format!("{base}/api/v1/health"), None, None);
    report("GET /api/v1/health", &health);
    let body = r#"{"args":{}}"#;
    let native = wrk(&format!("{base}/bench/noop"), Some(&token), Some(body));
    report("POST native no-op (same checks and session)", &native);
    let component = wrk(
        &format!("{base}/api/v1/commands/echo.noop/invoke"),
        Some(&token),
        Some(body),
    );
    report("POST /api/v1/commands/echo.noop/invoke", &component);
    println!(
        "component / native: {:.2}x the requests/s",
        component.requests_per_second / native.requests_per_second
    );
    let read = r#"{"target":"workspace","path":"page.txt"}"#;
    let native_read = wrk(&format!("{base}/bench/read"), Some(&token), Some(read));
    report("POST native read of a 4 KiB file", &native_read);
    let component_read = wrk(
        &format!("{base}/api/v1/filesystem/read"),
        Some(&token),
        Some(read),
    );
    report("POST /api/v1/filesystem/read (4 KiB)", &component_read);
    println!(
        "filesystem component / native read: {:.2}x the requests/s",
        component_read.requests_per_second / native_read.requests_per_second
    );
    let info = wrk(&format!("{base}/api/v1/system/info"), Some(&token), None);
    report("GET /api/v1/system/info", &info);

    let describe = wrk(&format!("{base}/bench/describe/42"), Some(&token), None);
    report("GET native route answering JSON", &describe);
    let route = wrk(
        &format!("{base}/plugins/probe/items/42"),
        Some(&token),
        None,
    );
    report("GET /plugins/probe/items/42 (component route)", &route);
    println!(
        "component route / native: {:.2}x the requests/s",
        route.requests_per_second / describe.requests_per_second
    );
    let serve = server
        .shared()
        .runtime
        .service::<capbridge_runtime::caps::serve::ServeService>()
        .unwrap();
    let secret = serve
        .redeem("probe", &serve.launch_code("probe").unwrap())
        .unwrap();
    let host = format!("probe.localhost:{}", server.addr().port());
    let cookie = format!("capbridge-ui={secret}");
    let native_file = wrk(&format!("{base}/bench/file"), Some(&token), None);
    report("GET native read of a 4 KiB file (bytes)", &native_file);
    let web_file = wrk_with(
        &format!("{base}/plugins/probe/ui/page.txt"),
        &[("Host", &host), ("Cookie", &cookie)],
        None,
    );
    report("GET a 4 KiB file of a component's web UI", &web_file);
    println!(
        "web UI file / native: {:.2}x the requests/s",
        web_file.requests_per_second / native_file.requests_per_second
    );

    // The same read on a bridge without the audit log: what writing (and fsyncing) the
    // entries before answering costs.
    let (plain, plain_token) = tokio.block_on(async {
        let runtime = Arc::new(capbridge_tests::runtime_with(audited(false)));
        let listener = capbridge_api::bind(0).await.unwrap();
        let server = Server::start(
            listener,
            runtime,
            BridgeConfig::default(),
            ServeOptions::default(),
        )
        .unwrap();
        let token = server.shared().sessions.issue(None).unwrap().token;
        (server, token)
    });
    let unaudited_read = wrk(
        &format!("http://{}/api/v1/filesystem/read", plain.addr()),
        Some(&plain_token),
        Some(read),
    );
    report(
        "POST /api/v1/filesystem/read, no audit log",
        &unaudited_read,
    );
    println!(
        "with the audit log / without: {:.2}x the requests/s",
        component_read.requests_per_second / unaudited_read.requests_per_second
    );
    tokio
        .block_on(plain.shutdown(std::time::Duration::from_secs(5)))
        .unwrap();
    tokio
        .block_on(server.shutdown(std::time::Duration::from_secs(5)))
        .unwrap();
}
