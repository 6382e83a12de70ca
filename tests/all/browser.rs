//! The contract as a browser meets it: headless Chromium loads a small web app
//! (`browser/page.html`) that handshakes, calls an authenticated route, opens the event socket and
//! receives a component's event. The same page on a disallowed origin, and on a DNS-rebound
//! name, gets no token, no data and no socket — and the bridge, by its own records, issued
//! nothing and answered nothing but 403s.
//!
//! Needs Debian's `chromium` (`cargo xtask test` installs it); without it these tests fail.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::{get, post};
use axum::Router;
use capbridge_api::connlog::Connection;
use capbridge_api::{BridgeConfig, PROTOCOL_VERSION};
use capbridge_tests::{echo_fixture, Bridge, Fixture};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The web app every case loads.
const PAGE: &str = include_str!("browser/page.html");
/// How long Chromium may take to start, run the page and report (or dump a document). Running
/// out is a failure that says so, not a timing assertion.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);
/// The attacker's name for the loopback bridge.
const REBOUND_HOST: &str = "rebind.test";

// ---------------------------------------------------------------------------------------------
// The cases

#[tokio::test(flavor = "multi_thread")]
async fn a_page_on_an_allowed_origin_handshakes_calls_and_receives_events() {
    let _chromium = crate::chromium_running().await;
    let mut pages = PageServer::start().await;
    let origin = format!("http://127.0.0.1:{}", pages.port);
    let (_fixture, bridge) = bridge_allowing(&origin).await;

    let url = pages.url(&[("bridge", &bridge.base)]);
    let report = Browser::launch(&[], &url).report(&mut pages).await;

    assert_eq!(report["origin"], origin, "{report:#}");
    assert_eq!(report["health"]["status"], 200, "{report:#}");
    assert_eq!(report["health"]["body"]["status"], "ok", "{report:#}");

    assert_eq!(report["handshake"]["status"], 200, "{report:#}");
    let session = &report["handshake"]["body"];
    assert_eq!(session["protocolVersion"], PROTOCOL_VERSION, "{report:#}");
    let token = session["sessionToken"].as_str().expect("a token");
    assert_eq!(token.len(), 43, "256 bits, base64url: {token}");
    assert_eq!(report["token"], "issued");

    assert_eq!(report["info"]["status"], 200, "{report:#}");
    assert_eq!(report["info"]["body"]["name"], "capbridge", "{report:#}");
    assert_eq!(
        report["info"]["body"]["components"],
        json!(["echo"]),
        "{report:#}"
    );

    let socket = &report["socket"];
    assert_eq!(socket["opened"], true, "{report:#}");
    let hello = &socket["messages"][0];
    assert_eq!(hello["type"], "bridge.connected", "{report:#}");
    assert_eq!(hello["source"], "capbridge", "{report:#}");
    assert_eq!(hello["seq"], 1, "{report:#}");
    assert_eq!(
        hello["payload"]["protocolVersion"], PROTOCOL_VERSION,
        "{report:#}"
    );

    assert_eq!(report["invoke"]["status"], 200, "{report:#}");
    let event = &report["event"];
    assert_eq!(event["type"], "echo.said", "{report:#}");
    assert_eq!(event["source"], "echo", "{report:#}");
    assert_eq!(
        event["payload"],
        json!({ "message": report["expectedMessage"] }),
        "{report:#}"
    );
    assert!(
        event["seq"].as_u64().is_some_and(|seq| seq > 1),
        "{report:#}"
    );
    assert!(event["timestamp"].is_string(), "{report:#}");

    // The bridge's side: one session, for this origin; every request answered, the
    // authenticated ones as such, and the token (sent in the socket's query) logged nowhere.
    let shared = bridge.server.shared();
    assert_eq!(shared.sessions.live(), 1);
    let log = connections(&bridge);
    for entry in &log {
        assert_eq!(entry.origin.as_deref(), Some(origin.as_str()), "{entry:?}");
        assert!(entry.status < 400, "{entry:?}");
        assert!(!entry.path.contains(token), "{entry:?}");
    }
    let find = |method, path| reached(&log, method, path);
    assert_eq!(find("GET", "/api/v1/health").status, 200);
    // Preflights (JSON body, token header) are answered for the allowed origin.
    assert_eq!(find("OPTIONS", "/api/v1/session/handshake").status, 200);
    assert_eq!(find("POST", "/api/v1/session/handshake").status, 200);
    let info = find("GET", "/api/v1/bridge/info");
    assert!(info.status == 200 && info.authenticated, "{info:?}");
    let ws = find("GET", "/ws/v1/events");
    assert!(
        ws.status == 101 && ws.websocket && ws.authenticated,
        "{ws:?}"
    );
    let invoke = find("POST", "/api/v1/commands/echo.say/invoke");
    assert!(invoke.status == 200 && invoke.authenticated, "{invoke:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_on_a_disallowed_origin_gets_no_token_no_data_and_no_socket() {
    let _chromium = crate::chromium_running().await;
    let mut pages = PageServer::start().await;
    let hostile = format!("http://127.0.0.1:{}", pages.port);
    // The bridge allows the very same server under another name: origins match exactly, never
    // by port or by the address a name resolves to.
    let (_fixture, bridge) = bridge_allowing(&format!("http://localhost:{}", pages.port)).await;
    // A valid token in the page's hands (as if leaked): a header and a socket without CORS
    // must still get nothing.
    let stolen = bridge.token().await;
    let before = Before::take(&bridge);

    let url = pages.url(&[("bridge", &bridge.base), ("token", &stolen), ("blind", "1")]);
    let report = Browser::launch(&[], &url).report(&mut pages).await;

    assert_eq!(report["origin"], hostile, "{report:#}");
    assert_page_got_nothing(&report, Seen::NetworkErrors);
    before.assert_nothing_happened(&bridge, Some(&hostile), "origin_not_allowed");
    // What got through the browser to be refused there: the preflights, the simple requests
    // (whose answers CORS then hid), the blind handshake and the socket's upgrade.
    let log = before.new_entries(&bridge);
    for (method, path) in [
        ("GET", "/api/v1/health"),
        ("OPTIONS", "/api/v1/session/handshake"),
        ("POST", "/api/v1/session/handshake"),
        ("OPTIONS", "/api/v1/bridge/info"),
        ("GET", "/ws/v1/events"),
        ("OPTIONS", "/api/v1/commands/echo.say/invoke"),
    ] {
        reached(&log, method, path);
    }
    assert!(reached(&log, "GET", "/ws/v1/events").websocket);
}

/// DNS rebinding: the attacker's name first points at the attacker's server, which serves the
/// page, then at 127.0.0.1. The page's requests to "its own" origin — same-origin, so without
/// CORS, and `GET`s without `Origin` — then reach the bridge with the attacker's name in `Host`.
///
/// Chromium resolves `rebind.test` to 127.0.0.2, where a stand-in for the attacker listens on
/// the bridge's port: it serves the page for `GET /` and relays every other connection to the
/// bridge, byte for byte, exactly what the bridge would receive once the name is rebound.
#[tokio::test(flavor = "multi_thread")]
async fn a_dns_rebinding_page_gets_no_token_no_data_and_no_socket() {
    let _chromium = crate::chromium_running().await;
    let mut pages = PageServer::start().await;
    let (_fixture, bridge) = bridge_allowing(&format!("http://127.0.0.1:{}", pages.port)).await;
    let port = bridge.server.addr().port();
    let attacker = TcpListener::bind(("127.0.0.2", port))
        .await
        .expect("bind 127.0.0.2 on the bridge's port");
    let relay = tokio::spawn(rebinding_server(attacker, bridge.server.addr()));
    let stolen = bridge.token().await;
    let before = Before::take(&bridge);

    let rebound = format!("http://{REBOUND_HOST}:{port}");
    let report_to = format!("http://127.0.0.1:{}/report", pages.port);
    let url = format!(
        "{rebound}/?{}",
        query(&[
            ("bridge", &rebound),
            ("token", &stolen),
            ("blind", "1"),
            ("report", &report_to)
        ])
    );
    let rule = format!("--host-resolver-rules=MAP {REBOUND_HOST} 127.0.0.2");
    let report = Browser::launch(&[&rule], &url).report(&mut pages).await;
    relay.abort();

    // The bridge was the page's own origin: nothing was cross-origin.
    assert_eq!(report["origin"], rebound, "{report:#}");
    assert_page_got_nothing(&report, Seen::Refusals("host_not_allowed"));
    before.assert_nothing_happened(&bridge, None, "host_not_allowed");
    // Same-origin, so no preflights: every request went straight to the bridge. Its `GET`s carry
    // no `Origin`, so only the `Host` check stood between the page and the answers (the stolen
    // token's included).
    let log = before.new_entries(&bridge);
    for path in ["/api/v1/health", "/api/v1/bridge/info"] {
        assert_eq!(reached(&log, "GET", path).origin, None);
    }
    for (method, path) in [
        ("POST", "/api/v1/session/handshake"),
        ("GET", "/ws/v1/events"),
        ("POST", "/api/v1/commands/echo.say/invoke"),
    ] {
        assert_eq!(
            reached(&log, method, path).origin.as_deref(),
            Some(rebound.as_str())
        );
    }
    assert!(reached(&log, "GET", "/ws/v1/events").websocket);
    assert!(!log.iter().any(|e| e.method == "OPTIONS"), "{log:#?}");
}

/// The rebound name typed into the address bar: the bridge answers with its refusal, not with
/// its health.
#[tokio::test(flavor = "multi_thread")]
async fn navigating_to_the_bridge_under_a_rebound_name_is_refused() {
    let _chromium = crate::chromium_running().await;
    let pages = PageServer::start().await;
    let (_fixture, bridge) = bridge_allowing(&format!("http://127.0.0.1:{}", pages.port)).await;
    let before = Before::take(&bridge);

    let port = bridge.server.addr().port();
    let rule = format!("--host-resolver-rules=MAP {REBOUND_HOST} 127.0.0.1");
    let url = format!("http://{REBOUND_HOST}:{port}/api/v1/health");
    let dom = Browser::launch(&[&rule, "--dump-dom"], &url).dump().await;

    assert!(dom.contains("host_not_allowed"), "{dom}");
    assert!(
        !dom.contains(PROTOCOL_VERSION),
        "the health answer leaked: {dom}"
    );
    before.assert_nothing_happened(&bridge, None, "host_not_allowed");
    reached(&before.new_entries(&bridge), "GET", "/api/v1/health");
}

// ---------------------------------------------------------------------------------------------
// What the page saw, what the bridge did

/// What a hostile page may see of the bridge's answers.
enum Seen {
    /// Cross-origin, refused without CORS headers: each request fails as a network error (the
    /// page cannot even read the refusal), and a no-cors answer stays opaque.
    NetworkErrors,
    /// Same-origin (a rebound name): the page reads the answers, and each is this 403 refusal
    /// and nothing more.
    Refusals(&'static str),
}

/// A hostile page's report: no token, no data (only what `seen` allows), no socket, no event.
fn assert_page_got_nothing(report: &Value, seen: Seen) {
    assert!(report.get("pageError").is_none(), "{report:#}");
    for step in ["health", "handshake", "info", "invoke"] {
        let outcome = &report[step];
        let nothing = match seen {
            Seen::NetworkErrors => {
                outcome["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("TypeError"))
                    && outcome.get("status").is_none()
            }
            Seen::Refusals(code) => {
                outcome["status"] == 403
                    && outcome["body"].as_object().is_some_and(|b| b.len() == 1)
                    && outcome["body"]["error"]["code"] == code
            }
        };
        assert!(
            nothing,
            "{step}: the page saw more than it should: {report:#}"
        );
    }
    assert_eq!(report["token"], "stolen", "no token of its own: {report:#}");
    let blind = match seen {
        Seen::NetworkErrors => json!({ "type": "opaque", "status": 0 }),
        Seen::Refusals(_) => json!({ "type": "basic", "status": 403 }),
    };
    assert_eq!(report["blind"], blind, "{report:#}");
    let socket = &report["socket"];
    assert_eq!(socket["opened"], false, "{report:#}");
    assert_eq!(socket["messages"], json!([]), "{report:#}");
    assert_eq!(socket["closed"]["code"], 1006, "{report:#}");
    assert_eq!(report["event"], Value::Null, "{report:#}");
}

/// The bridge's state before a hostile page ran.
struct Before {
    live: usize,
    logged: usize,
}

impl Before {
    fn take(bridge: &Bridge) -> Self {
        let shared = bridge.server.shared();
        Self {
            live: shared.sessions.live(),
            logged: connections(bridge).len(),
        }
    }

    /// Requests logged since, oldest first.
    fn new_entries(&self, bridge: &Bridge) -> Vec<Connection> {
        connections(bridge).split_off(self.logged)
    }

    /// No session was issued, and every request that reached the bridge since (and some did)
    /// was refused with 403 `code` before anything else ran.
    fn assert_nothing_happened(&self, bridge: &Bridge, origin: Option<&str>, code: &str) {
        assert_eq!(
            bridge.server.shared().sessions.live(),
            self.live,
            "the bridge issued a session to a hostile page"
        );
        let log = self.new_entries(bridge);
        assert!(!log.is_empty(), "nothing reached the bridge");
        for entry in &log {
            assert_eq!(entry.status, 403, "{entry:?}");
            assert_eq!(entry.error.as_deref(), Some(code), "{entry:?}");
            assert!(!entry.authenticated, "{entry:?}");
            if let Some(origin) = origin {
                assert_eq!(entry.origin.as_deref(), Some(origin), "{entry:?}");
            }
        }
    }
}

/// The first logged request `method path`; fails if there is none.
fn reached<'a>(log: &'a [Connection], method: &str, path: &str) -> &'a Connection {
    log.iter()
        .find(|e| e.method == method && e.path == path)
        .unwrap_or_else(|| panic!("no {method} {path} in the connection log: {log:#?}"))
}

/// The connection log, oldest first.
fn connections(bridge: &Bridge) -> Vec<Connection> {
    let mut log = bridge
        .server
        .shared()
        .connections
        .recent(capbridge_api::connlog::CAPACITY);
    log.reverse();
    log
}

/// A bridge serving the echo component that allows one browser origin.
async fn bridge_allowing(origin: &str) -> (Fixture, Bridge) {
    let fixture = echo_fixture();
    let runtime = fixture.runtime();
    let config = BridgeConfig {
        origins: vec![origin.to_string()],
        ..BridgeConfig::default()
    };
    let bridge = Bridge::start(runtime, config).await;
    (fixture, bridge)
}

// ---------------------------------------------------------------------------------------------
// The page's server

/// Serves the page at `/` and takes reports at `POST /report` (any origin: the body is read as
/// text, nothing is answered but 204).
pub(crate) struct PageServer {
    pub(crate) port: u16,
    reports: mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    pub(crate) async fn start() -> Self {
        let (sender, reports) = mpsc::unbounded_channel();
        let app = Router::new()
            .route("/", get(|| async { Html(PAGE) }))
            .route("/report", post(receive_report))
            .with_state(sender);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the page server");
        let port = listener.local_addr().expect("page server address").port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("page server");
        });
        Self {
            port,
            reports,
            task,
        }
    }

    /// The page on this server's origin, with `params`.
    fn url(&self, params: &[(&str, &str)]) -> String {
        format!("http://127.0.0.1:{}/?{}", self.port, query(params))
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive_report(
    State(sender): State<mpsc::UnboundedSender<String>>,
    body: String,
) -> StatusCode {
    let _ = sender.send(body);
    StatusCode::NO_CONTENT
}

fn query(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The attacker's server after the rebinding: `GET /` is the page (then the connection closes,
/// so the page's own requests open new ones); every other connection is relayed to the bridge
/// unchanged.
async fn rebinding_server(listener: TcpListener, bridge: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buffer = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match inbound.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
                if head.len() > 64 * 1024 {
                    return;
                }
            }
            if head.starts_with(b"GET / ") || head.starts_with(b"GET /?") {
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n\
                     content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{PAGE}",
                    PAGE.len()
                );
                let _ = inbound.write_all(response.as_bytes()).await;
                let _ = inbound.shutdown().await;
                return;
            }
            let Ok(mut outbound) = TcpStream::connect(bridge).await else {
                return;
            };
            if outbound.write_all(&head).await.is_ok() {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Chromium

/// `chromium` on `PATH`.
fn chromium() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("chromium"))
                .find(|path| path.is_file())
        })
        .expect("chromium is not installed: run `apt-get install -y chromium`")
}

/// A headless Chromium with a fresh profile, killed with all its processes when dropped (also
/// when a test fails).
pub(crate) struct Browser {
    child: Child,
    dir: tempfile::TempDir,
}

impl Browser {
    pub(crate) fn launch(extra: &[&str], url: &str) -> Self {
        let dir = tempfile::tempdir().expect("browser temp dir");
        let profile = dir.path().join("profile");
        let stdout = std::fs::File::create(dir.path().join("stdout")).expect("stdout file");
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-proxy-server",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group, so that the browser's helpers go with it.
            .process_group(0)
            .spawn()
            .expect("start chromium");
        Self { child, dir }
    }

    /// The page's report (from `pages`), or a failure saying why there is none.
    async fn report(mut self, pages: &mut PageServer) -> Value {
        self.next_report(pages).await
    }

    /// The next report a page of this browser posts to `pages`.
    pub(crate) async fn next_report(&mut self, pages: &mut PageServer) -> Value {
        let deadline = tokio::time::Instant::now() + BROWSER_TIMEOUT;
        let text = loop {
            tokio::select! {
                report = pages.reports.recv() => break report.expect("the page server is running"),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!("chromium exited ({status}) before the page reported:\n{}", self.output());
                    }
                    if tokio::time::Instant::now() > deadline {
                        panic!(
                            "the page did not report within {BROWSER_TIMEOUT:?}:\n{}",
                            self.output()
                        );
                    }
                }
            }
        };
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("report {text:?}: {e}"))
    }

    /// What `--dump-dom` printed, once Chromium has exited.
    async fn dump(mut self) -> String {
        let deadline = tokio::time::Instant::now() + BROWSER_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    assert!(status.success(), "chromium: {status}\n{}", self.output());
                    break;
                }
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => panic!(
                    "chromium did not dump the document within {BROWSER_TIMEOUT:?} ({other:?}):\n{}",
                    self.output()
                ),
            }
        }
        std::fs::read_to_string(self.dir.path().join("stdout")).expect("chromium's output")
    }

    /// The end of Chromium's stderr, for failure messages.
    fn output(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.running() {
            return;
        }
        // Asked to stop, the browser ends its helpers and reaps them itself.
        signal("-TERM", &self.child.id().to_string());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.running() {
            // Its whole process group, while the browser is not yet reaped (the group's id is
            // its id, so it cannot have been reused).
            signal("-KILL", &format!("-{}", self.child.id()));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `kill <signal> -- <target>` (a process id, or a process group's as `-id`).
fn signal(signal: &str, target: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
