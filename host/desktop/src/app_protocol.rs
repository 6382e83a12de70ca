//! `capbridge-ui://app/`: the app-owned origin of the shell's own pages (seed 002). Only the
//! shell's trusted webviews register this scheme, so no website can load or frame these pages,
//! and the canvas overlay (another web context) cannot reach them. The pages are the files of
//! `ui/`, built into the binary; `api/…` is the narrow face the pages talk to the host through.

use std::sync::Arc;

use capbridge_runtime::approvals::{Decider, Decision};
use capbridge_runtime::audit::Query;
use capbridge_runtime::caps::awake::AwakeService;
use capbridge_runtime::caps::input::InputService;
use capbridge_runtime::{ComponentStatus, Runtime};
use serde::Deserialize;
use serde_json::{json, Value};
use wry::http::{header, Method, Request, Response, StatusCode};

use crate::bridge::Bridge;
use crate::settings::Settings;

pub const SCHEME: &str = "capbridge-ui";
/// The origin of the shell's pages.
pub const ORIGIN: &str = "capbridge-ui://app";

/// No remote anything, no inline script, no framing; fetches only to this origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' \
                       data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                       frame-ancestors 'none'";

/// Largest request body a page sends (settings, a decision).
const MAX_BODY: usize = 64 * 1024;
/// Connection log entries the status view shows.
const CONNECTIONS_SHOWN: usize = 50;

/// The files of `ui/`, by name (`/` is `index.html`).
const ASSETS: &[(&str, &[u8])] = &[
    ("index.html", include_bytes!("../../../ui/index.html")),
    ("prompt.html", include_bytes!("../../../ui/prompt.html")),
    ("app.css", include_bytes!("../../../ui/app.css")),
    ("status.js", include_bytes!("../../../ui/status.js")),
    ("prompt.js", include_bytes!("../../../ui/prompt.js")),
];

/// The page at `path`, and its media type.
fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let name = match path {
        "/" => "index.html",
        path => path.strip_prefix('/')?,
    };
    let (name, body) = ASSETS.iter().find(|(n, _)| *n == name)?;
    let mime = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html",
        Some("css") => "text/css",
        _ => "text/javascript",
    };
    Some((mime, body))
}

/// What the pages reach.
pub struct App {
    pub runtime: Arc<Runtime>,
    pub bridge: Arc<Bridge>,
    pub settings: Settings,
}

pub type Reply = Response<Vec<u8>>;

impl App {
    /// Answers one request of a trusted page.
    pub async fn handle(&self, request: Request<Vec<u8>>) -> Reply {
        let uri = request.uri();
        if uri.scheme_str() != Some(SCHEME) || uri.host() != Some("app") {
            return error(StatusCode::NOT_FOUND, "unknown origin");
        }
        let path = uri.path();
        if let Err(why) = check_path(path) {
            return error(StatusCode::BAD_REQUEST, why);
        }
        // The scheme is reachable only from the shell's own pages; a request that says it comes
        // from elsewhere is refused all the same.
        if let Some(origin) = request.headers().get(header::ORIGIN) {
            if origin.as_bytes() != ORIGIN.as_bytes() {
                return error(
                    StatusCode::FORBIDDEN,
                    "requests come from the app's own pages only",
                );
            }
        }
        if request.body().len() > MAX_BODY {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        let method = request.method().clone();
        if let Some(api) = path.strip_prefix("/api/") {
            return self.api(&method, api, request.body()).await;
        }
        if method != Method::GET {
            return error(StatusCode::METHOD_NOT_ALLOWED, "pages are read with GET");
        }
        match asset(path) {
            Some((mime, body)) => respond(StatusCode::OK, mime, body.to_vec()),
            None => error(StatusCode::NOT_FOUND, "no such page"),
        }
    }

    async fn api(&self, method: &Method, path: &str, body: &[u8]) -> Reply {
        match (method, path) {
            (&Method::GET, "status") => reply(Ok(self.status().await)),
            (&Method::GET, "settings") => reply(self.settings.read()),
            (&Method::POST, "settings") => reply(self.settings.write(body)),
            (&Method::POST, "ensure-server") => reply(
                self.bridge
                    .ensure()
                    .await
                    .map(|port| json!({ "boundPort": port }))
                    .map_err(|e| (StatusCode::CONFLICT, e)),
            ),
            (&Method::POST, "stop-input") => reply(Ok(json!({
                "stopped": self
                    .runtime
                    .service::<InputService>()
                    .map_or(0, |input| input.stop_all()),
            }))),
            (&Method::GET, path) if path.starts_with("prompts/") => {
                let id = &path["prompts/".len()..];
                reply(match self.runtime.approvals().get(id) {
                    Some(prompt) => {
                        let origin = prompt.session.and_then(|s| self.bridge.origin(s));
                        let mut view = json!(prompt);
                        view["origin"] = json!(origin);
                        Ok(view)
                    }
                    None => Err((StatusCode::NOT_FOUND, format!("no pending prompt `{id}`"))),
                })
            }
            (&Method::POST, path) if path.starts_with("prompts/") => {
                reply(self.decide(&path["prompts/".len()..], body))
            }
            _ => error(StatusCode::NOT_FOUND, "no such route"),
        }
    }

    fn decide(&self, id: &str, body: &[u8]) -> Result<Value, (StatusCode, String)> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            decision: Decision,
        }
        let body: Body = serde_json::from_slice(body).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("expected {{\"decision\": \"allow_once\" | \"allow_and_whitelist\" | \"reject\"}}: {e}"),
            )
        })?;
        let prompt = self
            .runtime
            .approvals()
            .decide(id, body.decision, Decider::PromptWindow)
            .map_err(|e| (StatusCode::CONFLICT, e.to_string()))?;
        Ok(json!({ "id": prompt.id, "decision": body.decision }))
    }

    /// Everything the status view shows.
    async fn status(&self) -> Value {
        let components: Vec<Value> = self
            .runtime
            .components()
            .into_iter()
            .map(|c| {
                let (state, reason) = match &c.status {
                    ComponentStatus::Loaded => ("loaded", None),
                    ComponentStatus::Failed { reason } => ("failed", Some(reason.clone())),
                };
                json!({
                    "id": c.id,
                    "state": state,
                    "reason": reason,
                    "grants": c.policy.as_ref().map(|p| p.grant_summary()).unwrap_or_default(),
                    "exports": c.exports.iter().map(|e| &e.name).collect::<Vec<_>>(),
                })
            })
            .collect();
        let holds = match self.runtime.service::<AwakeService>() {
            Some(awake) => awake.status().await.1,
            None => Vec::new(),
        };
        let runs = self
            .runtime
            .audit()
            .query(&Query {
                kind: Some("process.*".into()),
                limit: 20,
                ..Query::default()
            })
            .map(|page| page.entries)
            .unwrap_or_default();
        json!({
            "bind": self.bridge.status(),
            "tray": self.bridge.tray(),
            "connections": self.bridge.connections(CONNECTIONS_SHOWN),
            "components": components,
            "awakeHolds": holds,
            "commandRuns": runs,
            "prompts": self.runtime.approvals().pending(),
            "automation": self
                .runtime
                .service::<InputService>()
                .map(|input| input.active())
                .unwrap_or_default(),
            "configPath": self.settings.path().display().to_string(),
        })
    }
}

/// Refuses `..` in any spelling and anything but plain path characters: the assets are looked
/// up by exact name, so this is a clear answer, not the only guard.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    if decoded.split(['/', '\\']).any(|part| part == "..") || path.contains('\\') {
        return Err("refused: the path leaves the app's pages");
    }
    if decoded != path {
        return Err("refused: encoded characters in a path");
    }
    Ok(())
}

fn reply(result: Result<Value, (StatusCode, String)>) -> Reply {
    match result {
        Ok(value) => respond(
            StatusCode::OK,
            "application/json",
            serde_json::to_vec(&value).unwrap_or_default(),
        ),
        Err((status, message)) => error(status, &message),
    }
}

pub fn error(status: StatusCode, message: &str) -> Reply {
    respond(
        status,
        "application/json",
        serde_json::to_vec(&json!({ "error": message })).unwrap_or_default(),
    )
}

fn respond(status: StatusCode, mime: &str, body: Vec<u8>) -> Reply {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, mime)
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CACHE_CONTROL, "no-store")
        .header("Cross-Origin-Resource-Policy", "same-origin")
        .body(body)
        .expect("static headers")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_the_pages_are_refused() {
        for path in ["/", "/index.html", "/api/status", "/api/prompts/req-1"] {
            assert_eq!(check_path(path), Ok(()), "{path}");
        }
        for path in [
            "/../etc/passwd",
            "/api/../../x",
            "/%2e%2e/etc/passwd",
            "/%2E%2E%2Fetc",
            "/..%2fetc",
            "/a\\..\\b",
            "/index%2ehtml",
        ] {
            assert!(check_path(path).is_err(), "{path}");
        }
    }

    async fn get(app: &App, uri: &str) -> (StatusCode, String) {
        let request = Request::builder().uri(uri).body(Vec::new()).unwrap();
        let reply = app.handle(request).await;
        (
            reply.status(),
            String::from_utf8_lossy(reply.body()).into_owned(),
        )
    }

    #[tokio::test]
    async fn the_handler_serves_pages_and_refuses_the_rest() {
        let fixture = capbridge_tests::Fixture::new();
        let runtime = Arc::new(fixture.runtime());
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let bridge = Bridge::start(
            runtime.clone(),
            capbridge_api::BridgeConfig::default(),
            config.clone(),
            47832,
            Err("port 47832 is in use".into()),
            tokio::sync::watch::Sender::new(capbridge_api::tray::TrayState {
                icon: capbridge_api::tray::TrayIcon::Off,
                status_window: capbridge_api::tray::WindowState::Shown,
                reason: None,
            })
            .subscribe(),
        );
        let app = App {
            runtime,
            bridge,
            settings: Settings::new(config),
        };
        let (status, body) = get(&app, "capbridge-ui://app/index.html").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("<title>capbridge</title>"));
        let (status, body) = get(&app, "capbridge-ui://app/api/status").await;
        assert_eq!(status, StatusCode::OK);
        let status_view: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status_view["bind"]["state"], "not-bound");
        assert_eq!(status_view["bind"]["error"], "port 47832 is in use");
        assert_eq!(status_view["tray"]["icon"], "off");
        for (uri, expected) in [
            (
                "capbridge-ui://app/../../etc/passwd",
                StatusCode::BAD_REQUEST,
            ),
            (
                "capbridge-ui://app/%2e%2e/%2e%2e/etc/passwd",
                StatusCode::BAD_REQUEST,
            ),
            ("capbridge-ui://app/nothing.html", StatusCode::NOT_FOUND),
            ("capbridge-ui://app/icon.png", StatusCode::NOT_FOUND),
            ("capbridge-ui://app/api/nothing", StatusCode::NOT_FOUND),
            ("capbridge-ui://other/index.html", StatusCode::NOT_FOUND),
            ("http://app/index.html", StatusCode::NOT_FOUND),
        ] {
            assert_eq!(get(&app, uri).await.0, expected, "{uri}");
        }
        // Another origin's request is refused, even to a page.
        let request = Request::builder()
            .uri("capbridge-ui://app/api/settings")
            .method(Method::POST)
            .header(header::ORIGIN, "https://evil.example")
            .body(br#"{"port": 1, "origins": [], "devMode": false, "trayMode": false}"#.to_vec())
            .unwrap();
        assert_eq!(app.handle(request).await.status(), StatusCode::FORBIDDEN);
        assert!(!dir.path().join("config.toml").exists(), "nothing written");
        // A decision on a prompt that does not exist.
        let request = Request::builder()
            .uri("capbridge-ui://app/api/prompts/req-9")
            .method(Method::POST)
            .body(br#"{"decision": "allow_once"}"#.to_vec())
            .unwrap();
        assert_eq!(app.handle(request).await.status(), StatusCode::CONFLICT);
    }

    #[test]
    fn every_page_is_served_under_the_strict_csp() {
        for (name, _) in ASSETS {
            let (mime, body) = asset(&format!("/{name}")).expect("every asset is served");
            assert!(!body.is_empty(), "{name}");
            let reply = respond(StatusCode::OK, mime, body.to_vec());
            assert_eq!(reply.headers()[header::CONTENT_SECURITY_POLICY], CSP);
            // No inline script in the pages: the CSP would refuse it.
            let text = String::from_utf8_lossy(body);
            assert!(!text.contains("<script>"), "{name} has an inline script");
            assert!(
                !text.contains("onclick=") && !text.contains("onload="),
                "{name}"
            );
        }
    }
}
