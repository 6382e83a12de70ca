//! MCP servers end to end: `/api/v1/mcp/*` over real HTTP and WebSocket clients, the real
//! `mcp-proxy` component, real MCP servers (the official `server-everything` and
//! `server-filesystem` under node, and `mcp-fixture`, a native rmcp server of this package) over
//! stdio and Streamable HTTP, both protocol generations. The person is played through the host's
//! approvals. What must not happen is checked where it would show: the process table, the
//! registry file, the servers' own logs, the event sockets.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capbridge_api::BridgeConfig;
use capbridge_runtime::approvals::{Decider, Decision};
use capbridge_tests::{
    assert_error, component, next_event, shipped_policy_working_in, status_and_json, Bridge,
    Fixture, Socket,
};
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt as _;
use tokio_tungstenite::tungstenite::Message;

/// The native MCP test server (`tests/fixtures/mcp_fixture.rs`).
const FIXTURE: &str = env!("CARGO_BIN_EXE_mcp-fixture");
/// The registry's file name in the state directory.
const REGISTRY: &str = "mcp-servers.json";
/// The longest any single wait of these tests may take before it is a failure.
const PATIENCE: Duration = Duration::from_secs(60);

/// The installed npm package `@modelcontextprotocol/<name>`'s entry point.
fn npm_server(name: &str) -> String {
    capbridge_tests::root()
        .join("tests/mcp-servers/node_modules/@modelcontextprotocol")
        .join(name)
        .join("dist/index.js")
        .display()
        .to_string()
}

/// A bridge serving the mcp-proxy component.
struct Env {
    fixture: Fixture,
    bridge: Bridge,
    token: String,
    /// The policy's one working directory; every server gets a directory of its own in it.
    work: tempfile::TempDir,
}

/// The shipped mcp-proxy policy with its working directory moved to `work`, after `edit` of its
/// `grants.mcp` table.
fn mcp_policy(work: &Path, edit: impl FnOnce(&mut toml::Table)) -> String {
    shipped_policy_working_in("mcp-proxy", "mcp", work, edit)
}

/// A fixture with the mcp-proxy component under [`mcp_policy`]`(work, edit)`.
fn proxy_fixture(work: &Path, edit: impl FnOnce(&mut toml::Table)) -> Fixture {
    let fixture = Fixture::new();
    fixture.add(
        "mcp-proxy",
        &component("mcp-proxy"),
        Some(&mcp_policy(work, edit)),
    );
    fixture
}

/// An mcp-fixture server registered over stdio by [`Env::add_fixture`].
struct Added {
    /// Its own new directory in the working directory: its cwd.
    cwd: PathBuf,
    /// Its log, [`log_in`] `cwd` (written only when registered by [`Env::add_logged_fixture`]).
    log: PathBuf,
    /// The transport it was registered and allowed with.
    transport: Value,
}

impl Env {
    async fn start() -> Self {
        Self::with(|_| {}).await
    }

    async fn with(edit: impl FnOnce(&mut toml::Table)) -> Self {
        let work = tempfile::tempdir().unwrap();
        let fixture = proxy_fixture(work.path(), edit);
        Self::serve(fixture, work).await
    }

    async fn serve(fixture: Fixture, work: tempfile::TempDir) -> Self {
        let runtime = fixture.runtime();
        capbridge_tests::assert_loaded(&runtime, "mcp-proxy");
        let bridge = Bridge::start(runtime, BridgeConfig::default()).await;
        let token = bridge.token().await;
        Self {
            fixture,
            bridge,
            token,
            work,
        }
    }

    /// A new directory `name` inside the granted working directory (a server's cwd).
    fn dir(&self, name: &str) -> PathBuf {
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn registry_path(&self) -> PathBuf {
        self.fixture.config().state_dir.join(REGISTRY)
    }

    /// The registry file's text (empty when there is none).
    fn registry_text(&self) -> String {
        std::fs::read_to_string(self.registry_path()).unwrap_or_default()
    }

    /// The entry `id` of the registry file, if persisted.
    fn persisted(&self, id: &str) -> Option<Value> {
        let text = self.registry_text();
        if text.is_empty() {
            return None;
        }
        let file: Value = serde_json::from_str(&text).unwrap();
        file["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
    }

    fn approvals(&self) -> &capbridge_runtime::approvals::Approvals {
        self.bridge.server.shared().runtime.approvals()
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        status_and_json(
            request
                .header(capbridge_tests::TOKEN_HEADER, &self.token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.bridge.client.get(self.bridge.url(path)))
            .await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.bridge.client.post(self.bridge.url(path)).json(&body))
            .await
    }

    async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.bridge.client.patch(self.bridge.url(path)).json(&body))
            .await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.bridge.client.delete(self.bridge.url(path)))
            .await
    }

    async fn list(&self) -> Vec<Value> {
        let (status, body) = self.get("/api/v1/mcp/servers").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["servers"].as_array().unwrap().clone()
    }

    async fn server(&self, id: &str) -> Option<Value> {
        self.list().await.into_iter().find(|s| s["id"] == id)
    }

    async fn register(&self, id: &str, transport: Value) -> (StatusCode, Value) {
        self.post(
            "/api/v1/mcp/servers",
            json!({ "id": id, "transport": transport }),
        )
        .await
    }

    /// Registers `transport` as `id`, which must be accepted; returns the server.
    async fn register_ok(&self, id: &str, transport: Value) -> Value {
        let (status, server) = self.register(id, transport).await;
        assert_eq!(status, StatusCode::OK, "{server}");
        server
    }

    /// `PATCH`es server `id` with `body`, which must be accepted; returns the server.
    async fn change(&self, id: &str, body: Value) -> Value {
        let (status, server) = self.patch(&format!("/api/v1/mcp/servers/{id}"), body).await;
        assert_eq!(status, StatusCode::OK, "{server}");
        server
    }

    /// The person answers the prompt `server` waits on.
    fn decide(&self, server: &Value, decision: Decision) {
        let request = server["requestId"]
            .as_str()
            .unwrap_or_else(|| panic!("{server} waits on no prompt"));
        self.approvals()
            .decide(request, decision, Decider::PromptsCli)
            .expect("the prompt is pending");
    }

    /// Waits until server `id` is listed in `state` and returns it.
    async fn until_state(&self, id: &str, state: &str) -> Value {
        until(&format!("`{id}` {state}"), || async {
            self.server(id).await.filter(|s| s["state"] == state)
        })
        .await
    }

    /// Waits until server `id` is no longer listed.
    async fn until_forgotten(&self, id: &str) {
        until(&format!("`{id}` forgotten"), || async {
            self.server(id).await.is_none().then_some(())
        })
        .await
    }

    /// Waits until server `id` has no pending change (applied or rejected) and returns it.
    async fn until_no_pending_change(&self, id: &str) -> Value {
        until(&format!("`{id}`'s change decided"), || async {
            self.server(id)
                .await
                .filter(|s| s["pendingChange"].is_null())
        })
        .await
    }

    /// Registers `transport` as `id` and allows it: the server is `disconnected`, persisted.
    async fn add(&self, id: &str, transport: Value) -> Value {
        let server = self.register_ok(id, transport).await;
        assert_eq!(server["state"], "pending_approval", "{server}");
        self.decide(&server, Decision::AllowOnce);
        self.until_state(id, "disconnected").await
    }

    /// [`Env::add`]s `mcp-fixture stdio <args>` as `id`, in a new directory `id` with `vars` in
    /// its environment.
    async fn add_fixture(&self, id: &str, args: &[&str], vars: &[(&str, &str)]) -> Added {
        let cwd = self.dir(id);
        let transport = fixture_stdio(&cwd, &[&["stdio"], args].concat(), vars);
        self.add(id, transport.clone()).await;
        Added {
            log: log_in(&cwd),
            cwd,
            transport,
        }
    }

    /// [`Env::add_fixture`] with the server logging to its `log`, and `vars`.
    async fn add_logged_fixture(&self, id: &str, vars: &[(&str, &str)]) -> Added {
        let log = log_in(&self.work.path().join(id));
        self.add_fixture(id, &[], &[&[logging_to(&log)], vars].concat())
            .await
    }

    /// [`Env::add`]s server-everything over stdio as `id`, in a new directory `id`; returns it.
    async fn add_everything(&self, id: &str) -> PathBuf {
        let cwd = self.dir(id);
        self.add(id, everything_stdio(&cwd)).await;
        cwd
    }

    async fn connect_with(&self, id: &str, body: Value) -> (StatusCode, Value) {
        self.post(&format!("/api/v1/mcp/servers/{id}/connect"), body)
            .await
    }

    /// Connects `id`, which must succeed.
    async fn connect(&self, id: &str) -> Value {
        let (status, server) = self.connect_with(id, json!({})).await;
        assert_eq!(status, StatusCode::OK, "{server}");
        assert_eq!(server["state"], "connected", "{server}");
        server
    }

    async fn disconnect(&self, id: &str) -> Value {
        let (status, server) = self
            .post(&format!("/api/v1/mcp/servers/{id}/disconnect"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{server}");
        assert_eq!(server["state"], "disconnected", "{server}");
        server
    }

    /// Once the process of failed server `id` in `cwd` has ended: `id` connects again, echoes
    /// `message`, and is disconnected until its new process has ended too.
    async fn connects_again(&self, id: &str, cwd: &Path, message: &str) {
        until_no_process_in(cwd).await;
        self.connect(id).await;
        assert_eq!(self.echo(id, message).await, message);
        self.disconnect_until_gone(id, cwd).await;
    }

    /// Disconnects `id` and waits until its process, in `cwd`, has ended.
    async fn disconnect_until_gone(&self, id: &str, cwd: &Path) {
        self.disconnect(id).await;
        until_no_process_in(cwd).await;
    }

    async fn capabilities(&self, id: &str) -> Value {
        let (status, capabilities) = self
            .get(&format!("/api/v1/mcp/servers/{id}/capabilities"))
            .await;
        assert_eq!(status, StatusCode::OK, "{capabilities}");
        capabilities
    }

    async fn call(&self, body: Value) -> (StatusCode, Value) {
        self.post("/api/v1/mcp/call", body).await
    }

    /// Calls `tool` of `server`, which must answer; returns its first text content.
    async fn text(&self, server: &str, tool: &str, arguments: Value) -> String {
        let (status, answer) = self
            .call(json!({ "serverId": server, "tool": tool, "arguments": arguments }))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["serverId"], server, "{answer}");
        assert_eq!(answer["tool"], tool, "{answer}");
        assert_ne!(answer["result"]["isError"], true, "{answer}");
        answer["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("no text content: {answer}"))
            .to_string()
    }

    /// The text `server`'s `echo` tool answers `message` with.
    async fn echo(&self, server: &str, message: &str) -> String {
        self.text(server, "echo", json!({ "message": message }))
            .await
    }

    /// `POST /api/v1/mcp/call` with `body` in a task of its own (abort it to close the request).
    fn spawn_call(&self, body: Value) -> tokio::task::JoinHandle<(StatusCode, Value)> {
        let request = self
            .bridge
            .client
            .post(self.bridge.url("/api/v1/mcp/call"))
            .header(capbridge_tests::TOKEN_HEADER, &self.token)
            .json(&body);
        tokio::spawn(async move { status_and_json(request.send().await.unwrap()).await })
    }

    /// [`Env::spawn_call`], once the server has written `called <tool>` to its `log`.
    async fn spawn_call_until_called(
        &self,
        body: Value,
        log: &Path,
    ) -> tokio::task::JoinHandle<(StatusCode, Value)> {
        let called = format!("called {}", body["tool"].as_str().unwrap());
        let call = self.spawn_call(body);
        until_logged(log, &called).await;
        call
    }

    /// The event socket of this session, subscribed.
    async fn socket(&self) -> Socket {
        socket_of(&self.bridge, &self.token).await
    }
}

/// The event socket of session `token`, once it has said hello (so it gets every later event).
async fn socket_of(bridge: &Bridge, token: &str) -> Socket {
    let mut socket = bridge.events(token).await;
    next_event(&mut socket, "bridge.connected").await;
    socket
}

/// Polls `check` until it gives a value; panics after [`PATIENCE`].
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "waited {PATIENCE:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event on `socket` up to and with the first for which `last` holds.
async fn events_until(socket: &mut Socket, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let message = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("the awaited event within the patience")
            .expect("socket open")
            .expect("message");
        let Message::Text(text) = message else {
            continue;
        };
        let event: Value = serde_json::from_str(&text).unwrap();
        let done = last(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

fn is(event: &Value, kind: &str, server: &str) -> bool {
    event["type"] == kind && event["payload"]["serverId"] == server
}

/// A stdio transport starting `mcp-fixture` in `cwd`.
fn fixture_stdio(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Value {
    let env: serde_json::Map<String, Value> =
        env.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    json!({ "type": "stdio", "program": FIXTURE, "args": args, "cwd": cwd, "env": env })
}

/// A stdio transport starting server-everything under node in `cwd`.
fn everything_stdio(cwd: &Path) -> Value {
    json!({
        "type": "stdio",
        "program": "node",
        "args": [npm_server("server-everything"), "stdio"],
        "cwd": cwd,
        "env": {},
    })
}

fn http(url: &str) -> Value {
    json!({ "type": "http", "url": url, "headers": {} })
}

/// Where mcp-fixture running in `cwd` is told to log (by [`logging_to`]).
fn log_in(cwd: &Path) -> PathBuf {
    cwd.join("fixture.log")
}

/// The environment variable that has mcp-fixture log to `log`.
fn logging_to(log: &Path) -> (&'static str, &str) {
    ("MCP_FIXTURE_LOG", log.to_str().unwrap())
}

/// Asserts that `response` is the error `status` with `code`, its message naming `part`.
fn assert_error_naming(response: &(StatusCode, Value), status: StatusCode, code: &str, part: &str) {
    assert_error(response, status, code);
    let body = &response.1;
    assert!(
        body["error"]["message"].as_str().unwrap().contains(part),
        "`{part}` is not named: {body}"
    );
}

/// The text of a server's log file (empty until it writes one).
fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until the log at `path` has a line starting with `start`.
async fn until_logged(path: &Path, start: &str) -> String {
    until(&format!("`{start}` in {}", path.display()), || async {
        let log = log_of(path);
        log.lines().any(|l| l.starts_with(start)).then_some(log)
    })
    .await
}

/// A live process of this machine.
#[derive(Debug)]
struct Process {
    pid: u32,
    argv: Vec<String>,
}

impl Process {
    fn environ(&self) -> Vec<String> {
        nul_separated(format!("/proc/{}/environ", self.pid))
    }

    /// Whether it is the server itself, not the `unshare` that contains it.
    fn is_server(&self) -> bool {
        !self
            .argv
            .first()
            .is_some_and(|program| program.ends_with("unshare"))
    }
}

/// The non-empty NUL-separated strings of a `/proc` file (none when it cannot be read).
fn nul_separated(path: impl AsRef<Path>) -> Vec<String> {
    std::fs::read(path)
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Every live (not zombie) process whose working directory is `dir`.
fn processes_in(dir: &Path) -> Vec<Process> {
    let dir = std::fs::canonicalize(dir).unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(entry.path().join("cwd")).ok().as_deref() != Some(dir.as_path()) {
            continue;
        }
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit_once(") ")?.1.chars().next()?;
                Some(state == 'Z' || state == 'X')
            })
            .unwrap_or(true);
        if zombie {
            continue;
        }
        let argv = nul_separated(entry.path().join("cmdline"));
        found.push(Process { pid, argv });
    }
    found
}

/// The one server process (not its containment) running in `dir`.
async fn server_process_in(dir: &Path) -> Process {
    until(
        &format!("a server process in {}", dir.display()),
        || async {
            let mut servers: Vec<Process> = processes_in(dir)
                .into_iter()
                .filter(Process::is_server)
                .collect();
            (servers.len() == 1).then(|| servers.remove(0))
        },
    )
    .await
}

/// Waits until no process runs in `dir` any more.
async fn until_no_process_in(dir: &Path) {
    until(&format!("no process left in {}", dir.display()), || async {
        processes_in(dir).is_empty().then_some(())
    })
    .await
}

fn kill9(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// An HTTP MCP server this test started; ended when dropped.
struct Spawned {
    _child: tokio::process::Child,
    url: String,
}

/// `mcp-fixture http --port 0 <args>` in `cwd`, once it listens.
async fn fixture_http(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Spawned {
    let mut child = tokio::process::Command::new(FIXTURE)
        .args(["http", "--port", "0"])
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("mcp-fixture says where it listens")
        .unwrap()
        .expect("a first line");
    let url = line
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Spawned { _child: child, url }
}

/// `PORT=<free port> node server-everything streamableHttp` in `cwd`, once it answers.
async fn everything_http(cwd: &Path) -> Spawned {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new("node")
        .arg(npm_server("server-everything"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server-everything exited: {status}");
        }
        assert!(
            started.elapsed() < PATIENCE,
            "server-everything does not answer on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Spawned {
        _child: child,
        url: format!("http://127.0.0.1:{port}/mcp"),
    }
}

/// The names of the tools a `capabilities` answer lists.
fn tool_names(capabilities: &Value) -> BTreeSet<String> {
    capabilities["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools: {capabilities}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

/// The new user's path with server-everything reached by `transport`: register, the prompt,
/// allow, connect, what it offers, calls, a call's progress on the caller's socket only,
/// disconnect. `cwd`: where its process runs, when the bridge starts it.
async fn new_user_path(env: &Env, id: &str, transport: Value, cwd: Option<&Path>) {
    let mut events = env.socket().await;
    let other_token = env.bridge.token().await;
    let mut others = socket_of(&env.bridge, &other_token).await;

    // Registering asks the person and answers at once; nothing is persisted yet.
    let server = env.register_ok(id, transport.clone()).await;
    assert_eq!(server["state"], "pending_approval", "{server}");
    assert_eq!(server["transport"], transport, "{server}");
    let request = server["requestId"]
        .as_str()
        .expect("a requestId")
        .to_string();
    let prompt = next_event(&mut events, "system.permission.prompt").await;
    assert_eq!(prompt["payload"]["serverId"], id, "{prompt}");
    assert_eq!(
        prompt["payload"]["prompt"]["id"],
        request.as_str(),
        "{prompt}"
    );
    assert_eq!(
        prompt["payload"]["prompt"]["kind"], "mcp-server",
        "{prompt}"
    );
    let pending = env.approvals().pending();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, request);
    assert!(env.persisted(id).is_none(), "{}", env.registry_text());
    assert_eq!(env.server(id).await.unwrap()["state"], "pending_approval");
    // Waiting for the person: it cannot connect or change yet.
    assert_error(
        &env.connect_with(id, json!({})).await,
        StatusCode::CONFLICT,
        "conflict",
    );
    assert_error(
        &env.patch(&format!("/api/v1/mcp/servers/{id}"), json!({ "name": "x" }))
            .await,
        StatusCode::CONFLICT,
        "conflict",
    );

    // Allowed: disconnected, and persisted with the transport the person saw.
    env.decide(&server, Decision::AllowOnce);
    let server = env.until_state(id, "disconnected").await;
    assert!(server["requestId"].is_null(), "{server}");
    assert_eq!(server["transport"], transport, "{server}");
    let entry = env.persisted(id).expect("persisted once allowed");
    assert_eq!(entry["approvedBy"], "prompts-cli", "{entry}");
    // Not connected yet: nothing to list or call.
    assert_error(
        &env.get(&format!("/api/v1/mcp/servers/{id}/capabilities"))
            .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    assert_error(
        &env.call(json!({ "serverId": id, "tool": "echo", "arguments": { "message": "x" } }))
            .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );

    // Connected: the 2025-11-25 lifecycle (server-everything has no `server/discover`).
    let connected = env.connect(id).await;
    assert_eq!(connected["protocolVersion"], "2025-11-25", "{connected}");
    assert!(connected["connectedAtMs"].as_u64().is_some(), "{connected}");
    let seen = events_until(&mut events, |e| is(e, "mcp.server.connected", id)).await;
    assert_eq!(
        seen.last().unwrap()["payload"]["protocolVersion"],
        "2025-11-25"
    );
    // Over stdio, server-everything says its tools changed right after the handshake (they
    // depend on the client's capabilities): `mcp.tools.changed` (over HTTP it says so on the
    // standalone GET stream, which the bridge does not open).
    if cwd.is_some() && !seen.iter().any(|e| is(e, "mcp.tools.changed", id)) {
        events_until(&mut events, |e| is(e, "mcp.tools.changed", id)).await;
    }
    if cwd.is_some() {
        // Its standard error is kept, and read through the component's `server-log` export
        // (the server's first line of it may still be on its way to the bridge).
        let started = "Starting default (STDIO) server";
        let mut log = Value::Null;
        for _ in 0..100 {
            let (status, answer) = env
                .post(
                    "/api/v1/commands/mcp-proxy.server-log/invoke",
                    json!({ "args": { "id": id } }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            log = answer;
            if log["result"]["ok"]
                .as_str()
                .is_some_and(|t| t.contains(started))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            log["result"]["ok"]
                .as_str()
                .is_some_and(|t| t.contains(started)),
            "{log}"
        );
    }
    if let Some(cwd) = cwd {
        let node = server_process_in(cwd).await;
        assert!(
            node.argv
                .iter()
                .any(|a| a.ends_with("server-everything/dist/index.js")),
            "{node:?}"
        );
    }

    // What it offers, every list complete.
    let capabilities = env.capabilities(id).await;
    assert_eq!(capabilities["serverId"], id);
    assert_eq!(capabilities["protocolVersion"], "2025-11-25");
    let tools = tool_names(&capabilities);
    for tool in ["echo", "get-sum", "trigger-long-running-operation"] {
        assert!(tools.contains(tool), "{tool} is not in {tools:?}");
    }
    assert_eq!(
        capabilities["resources"].as_array().unwrap().len(),
        7,
        "{}",
        capabilities["resources"]
    );
    assert_eq!(
        capabilities["prompts"].as_array().unwrap().len(),
        4,
        "{}",
        capabilities["prompts"]
    );

    // Calls.
    assert_eq!(env.echo(id, "hello").await, "Echo: hello");
    assert_eq!(
        env.text(id, "get-sum", json!({ "a": 2, "b": 40 })).await,
        "The sum of 2 and 40 is 42."
    );

    // A long operation: its progress reaches the calling session, named by the call id.
    let (status, answer) = env
        .call(json!({
            "serverId": id,
            "tool": "trigger-long-running-operation",
            "arguments": { "duration": 2, "steps": 4 },
            "callId": "long-1",
        }))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["callId"], "long-1", "{answer}");
    assert_ne!(answer["result"]["isError"], true, "{answer}");

    // Disconnected: the event reaches every session, after the call's progress.
    let server = env.disconnect(id).await;
    assert!(server["protocolVersion"].is_null(), "{server}");
    assert_eq!(env.server(id).await.unwrap()["state"], "disconnected");
    let seen = events_until(&mut events, |e| is(e, "mcp.server.disconnected", id)).await;
    let progress: Vec<&Value> = seen
        .iter()
        .filter(|e| e["type"] == "mcp.call.progress")
        .collect();
    assert_eq!(progress.len(), 4, "{seen:#?}");
    for (step, event) in progress.iter().enumerate() {
        let payload = &event["payload"];
        assert_eq!(payload["callId"], "long-1", "{event}");
        assert_eq!(payload["serverId"], id, "{event}");
        assert_eq!(payload["tool"], "trigger-long-running-operation", "{event}");
        assert_eq!(
            payload["progress"].as_f64(),
            Some(step as f64 + 1.0),
            "{event}"
        );
        assert_eq!(payload["total"].as_f64(), Some(4.0), "{event}");
    }
    let seen = events_until(&mut others, |e| is(e, "mcp.server.disconnected", id)).await;
    assert!(
        seen.iter().all(|e| e["type"] != "mcp.call.progress"),
        "another session saw the call's progress: {seen:#?}"
    );
    assert!(
        seen.iter().all(|e| e["type"] != "system.permission.prompt"),
        "another session saw the prompt: {seen:#?}"
    );
    if let Some(cwd) = cwd {
        until_no_process_in(cwd).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_user_registers_approves_connects_and_calls_server_everything_over_stdio() {
    let env = Env::start().await;
    let cwd = env.dir("everything");
    new_user_path(&env, "everything", everything_stdio(&cwd), Some(&cwd)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_user_does_the_same_with_server_everything_over_streamable_http() {
    let env = Env::start().await;
    let spawned = everything_http(&env.dir("everything-http")).await;
    new_user_path(&env, "everything-http", http(&spawned.url), None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_2026_07_28_revision_is_detected_per_server() {
    let env = Env::start().await;
    let only_2026_stdio = env
        .add_fixture("new-stdio", &["--only-2026"], &[])
        .await
        .cwd;
    let spawned = fixture_http(&env.dir("new-http-process"), &["--only-2026"], &[]).await;
    env.add("new-http", http(&spawned.url)).await;
    let plain = env.add_fixture("plain", &[], &[]).await.cwd;
    let legacy = fixture_http(&env.dir("plain-http-process"), &[], &[]).await;
    env.add("plain-http", http(&legacy.url)).await;

    // Servers that know only the new revision speak it, over both transports.
    for id in ["new-stdio", "new-http"] {
        let server = env.connect(id).await;
        assert_eq!(server["protocolVersion"], "2026-07-28", "{server}");
        assert_eq!(env.capabilities(id).await["protocolVersion"], "2026-07-28");
        assert_eq!(env.echo(id, id).await, id);
    }
    // A server that knows both is asked the new one first (`server/discover`), and speaks it.
    for id in ["plain", "plain-http"] {
        let server = env.connect(id).await;
        assert_eq!(server["protocolVersion"], "2026-07-28", "{server}");
        assert_eq!(
            env.text(id, "add", json!({ "a": 1, "b": 2 })).await,
            "3",
            "{id}"
        );
    }
    // Per server: server-everything, next to them, gets the 2025-11-25 lifecycle.
    let everything = env.add_everything("everything").await;
    let server = env.connect("everything").await;
    assert_eq!(server["protocolVersion"], "2025-11-25", "{server}");
    for id in ["new-stdio", "new-http", "plain", "plain-http"] {
        assert_eq!(
            env.server(id).await.unwrap()["protocolVersion"],
            "2026-07-28"
        );
    }
    for id in ["new-stdio", "new-http", "plain", "plain-http", "everything"] {
        env.disconnect(id).await;
    }
    for dir in [&only_2026_stdio, &plain, &everything] {
        until_no_process_in(dir).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_of_a_paginated_listing_is_followed() {
    let env = Env::start().await;
    let cwd = env
        .add_fixture("paged", &[], &[("MCP_FIXTURE_PAGE_SIZE", "2")])
        .await
        .cwd;
    env.connect("paged").await;
    let capabilities = env.capabilities("paged").await;
    let tools = capabilities["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 6, "{capabilities}");
    assert_eq!(
        tool_names(&capabilities),
        ["add", "die", "echo", "hang", "huge", "slow"]
            .map(String::from)
            .into(),
    );
    assert_eq!(capabilities["resources"][0]["uri"], "fixture://hello");
    assert_eq!(capabilities["prompts"][0]["name"], "greet");
    assert_eq!(
        capabilities["serverInfo"]["name"], "capbridge-mcp-fixture",
        "{capabilities}"
    );
    env.disconnect_until_gone("paged", &cwd).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_filesystem_lists_and_reads_the_directory_it_was_given() {
    let env = Env::start().await;
    let cwd = env.dir("fs-server");
    let shared = tempfile::tempdir().unwrap();
    let shared_dir = std::fs::canonicalize(shared.path()).unwrap();
    std::fs::write(shared_dir.join("hello.txt"), "hello from the test\n").unwrap();
    std::fs::create_dir(shared_dir.join("sub")).unwrap();
    env.add(
        "files",
        json!({
            "type": "stdio",
            "program": "node",
            "args": [npm_server("server-filesystem"), shared_dir],
            "cwd": cwd,
        }),
    )
    .await;
    env.connect("files").await;
    let tools = tool_names(&env.capabilities("files").await);
    assert!(
        tools.contains("list_directory") && tools.contains("read_text_file"),
        "{tools:?}"
    );
    let listing = env
        .text("files", "list_directory", json!({ "path": shared_dir }))
        .await;
    let entries: BTreeSet<&str> = listing.lines().collect();
    assert_eq!(
        entries,
        ["[FILE] hello.txt", "[DIR] sub"].into(),
        "{listing}"
    );
    let text = env
        .text(
            "files",
            "read_text_file",
            json!({ "path": shared_dir.join("hello.txt") }),
        )
        .await;
    assert_eq!(text, "hello from the test\n");
    // Outside its directory, the server refuses (a tool error, passed on as the server sent it).
    let (status, answer) = env
        .call(json!({ "serverId": "files", "tool": "read_text_file", "arguments": { "path": "/etc/hostname" } }))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    env.disconnect_until_gone("files", &cwd).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_a_call_or_its_timeout_tells_the_server_to_cancel() {
    let env = Env::start().await;
    let Added { cwd, log, .. } = env.add_logged_fixture("canceller", &[]).await;
    env.connect("canceller").await;

    // The caller goes away midway: the server hears `notifications/cancelled`.
    let call = env
        .spawn_call_until_called(
            json!({ "serverId": "canceller", "tool": "slow", "arguments": { "ms": 10000 } }),
            &log,
        )
        .await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    let logged = until_logged(&log, "cancelled ").await;
    assert_eq!(
        logged
            .lines()
            .filter(|l| l.starts_with("cancelled "))
            .count(),
        1,
        "{logged}"
    );

    // A call past its own timeout: 503 naming the timeout, and the server is told too.
    let answer = env
        .call(json!({ "serverId": "canceller", "tool": "hang", "timeoutMs": 500 }))
        .await;
    for part in ["timed out after 500 ms", "`hang`"] {
        assert_error_naming(
            &answer,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            part,
        );
    }
    until(
        "a second `cancelled` line, for the call that timed out",
        || async {
            let log = log_of(&log);
            (log.lines().filter(|l| l.starts_with("cancelled ")).count() == 2).then_some(())
        },
    )
    .await;
    assert!(log_of(&log).contains("called hang"));

    // The connection is fine.
    assert_eq!(env.echo("canceller", "still here").await, "still here");
    assert_eq!(env.server("canceller").await.unwrap()["state"], "connected");
    env.disconnect_until_gone("canceller", &cwd).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_call_over_stateless_http_closes_its_stream_and_the_server_hears_it() {
    let env = Env::start().await;
    let dir = env.dir("stateless");
    let log = log_in(&dir);
    let spawned = fixture_http(&dir, &["--only-2026"], &[logging_to(&log)]).await;
    env.add("stateless", http(&spawned.url)).await;
    let server = env.connect("stateless").await;
    assert_eq!(server["protocolVersion"], "2026-07-28");
    let call = env
        .spawn_call_until_called(
            json!({ "serverId": "stateless", "tool": "slow", "arguments": { "ms": 10000 } }),
            &log,
        )
        .await;
    call.abort();
    until_logged(&log, "cancelled ").await;
    assert_eq!(env.echo("stateless", "after").await, "after");
    env.disconnect("stateless").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_long_operation_of_server_everything_leaves_the_connection_usable() {
    let env = Env::start().await;
    let cwd = env.add_everything("everything").await;
    env.connect("everything").await;
    let mut events = env.socket().await;
    let call = env.spawn_call(json!({
        "serverId": "everything",
        "tool": "trigger-long-running-operation",
        "arguments": { "duration": 30, "steps": 30 },
        "callId": "dropped",
    }));
    events_until(&mut events, |e| {
        e["type"] == "mcp.call.progress" && e["payload"]["callId"] == "dropped"
    })
    .await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    assert_eq!(
        env.echo("everything", "after the drop").await,
        "Echo: after the drop"
    );
    assert_eq!(
        env.text("everything", "get-sum", json!({ "a": 1, "b": 1 }))
            .await,
        "The sum of 1 and 1 is 2."
    );
    env.disconnect_until_gone("everything", &cwd).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_mid_call_fails_the_call_at_once_and_connects_again() {
    let env = Env::start().await;
    let Added { cwd, log, .. } = env.add_logged_fixture("victim", &[]).await;
    env.connect("victim").await;
    let mut events = env.socket().await;

    let call = env
        .spawn_call_until_called(
            json!({
                "serverId": "victim", "tool": "slow", "arguments": { "ms": 300000 }, "timeoutMs": 600000,
            }),
            &log,
        )
        .await;
    let server = server_process_in(&cwd).await;
    assert_eq!(server.argv.first().map(String::as_str), Some(FIXTURE));
    kill9(server.pid);
    // Answered when the server went, not at the call's timeout (600 s).
    let answer = tokio::time::timeout(PATIENCE, call)
        .await
        .expect("the call fails when its server dies")
        .unwrap();
    assert_error_naming(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "`victim`",
    );
    let failed = env.until_state("victim", "failed").await;
    assert!(
        !failed["message"].as_str().unwrap_or_default().is_empty(),
        "{failed}"
    );
    assert!(failed["protocolVersion"].is_null(), "{failed}");
    let event = events_until(&mut events, |e| is(e, "mcp.server.failed", "victim")).await;
    assert!(
        event.last().unwrap()["payload"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{event:?}"
    );
    // Calls fail at once while it is failed, naming why.
    assert_error(
        &env.call(json!({ "serverId": "victim", "tool": "echo", "arguments": { "message": "x" } }))
            .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );

    // Connecting again works.
    env.connects_again("victim", &cwd, "back").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_exits_mid_call_fails_the_call_and_connects_again() {
    let env = Env::start().await;
    let cwd = env.add_fixture("mortal", &[], &[]).await.cwd;
    env.connect("mortal").await;
    let mut events = env.socket().await;
    let answer = tokio::time::timeout(
        PATIENCE,
        env.call(json!({ "serverId": "mortal", "tool": "die", "timeoutMs": 600000 })),
    )
    .await
    .expect("the call fails when its server exits");
    assert_error_naming(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "`mortal`",
    );
    let failed = env.until_state("mortal", "failed").await;
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .contains("exited with code 3"),
        "{failed}"
    );
    events_until(&mut events, |e| is(e, "mcp.server.failed", "mortal")).await;
    env.connects_again("mortal", &cwd, "again").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_answer_is_refused_and_the_connection_goes_on() {
    let env = Env::start().await;
    let cwd = env.add_fixture("big", &[], &[]).await.cwd;
    env.connect("big").await;
    let (status, answer) = env
        .call(json!({ "serverId": "big", "tool": "huge", "arguments": { "bytes": 5_000_000 } }))
        .await;
    // The contract: 413 when the server's answer is over the message size limit (4 MiB).
    assert_error(
        &(status, answer.clone()),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );
    assert!(!answer.to_string().contains("xxxxxxxx"), "{answer}");
    // Under the limit it passes.
    assert_eq!(
        env.text("big", "huge", json!({ "bytes": 1_000_000 }))
            .await
            .len(),
        1_000_000
    );
    assert_eq!(env.echo("big", "fine").await, "fine");
    assert_eq!(env.server("big").await.unwrap()["state"], "connected");
    env.disconnect_until_gone("big", &cwd).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_server_is_404_everywhere() {
    let env = Env::start().await;
    let not_found = |response: (StatusCode, Value)| {
        assert_error_naming(&response, StatusCode::NOT_FOUND, "not_found", "`ghost`");
    };
    not_found(env.connect_with("ghost", json!({})).await);
    not_found(
        env.post("/api/v1/mcp/servers/ghost/disconnect", json!({}))
            .await,
    );
    not_found(env.get("/api/v1/mcp/servers/ghost/capabilities").await);
    not_found(
        env.call(json!({ "serverId": "ghost", "tool": "echo" }))
            .await,
    );
    not_found(
        env.patch("/api/v1/mcp/servers/ghost", json!({ "name": "Ghost" }))
            .await,
    );
    not_found(env.delete("/api/v1/mcp/servers/ghost").await);
    assert!(env.list().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_outside_the_policy_is_refused_before_any_prompt() {
    let env = Env::with(|mcp| {
        mcp.insert("programs".into(), toml::Value::Array(vec!["node".into()]));
    })
    .await;
    let cwd = env.dir("shell");
    let marker = cwd.join("ran");
    assert_error_naming(
        &env.register(
            "shell",
            json!({
                "type": "stdio",
                "program": "/bin/sh",
                "args": ["-c", format!("touch {}; sleep 770077", marker.display())],
                "cwd": cwd,
            }),
        )
        .await,
        StatusCode::FORBIDDEN,
        "denied",
        "grants.mcp.programs",
    );
    assert!(env.approvals().pending().is_empty(), "nobody was asked");
    assert!(env.list().await.is_empty());
    assert!(!env.registry_path().exists());
    // And the program the policy names is still asked about (the refusal was the program's).
    let node = env.register_ok("node-ok", everything_stdio(&cwd)).await;
    env.decide(&node, Decision::Reject);
    env.until_forgotten("node-ok").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!marker.exists());
    assert!(processes_in(&cwd).is_empty(), "{:?}", processes_in(&cwd));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registration_the_person_rejects_is_forgotten() {
    let env = Env::start().await;
    let mut events = env.socket().await;
    let cwd = env.dir("unwanted");
    let server = env
        .register_ok("unwanted", fixture_stdio(&cwd, &["stdio"], &[]))
        .await;
    env.decide(&server, Decision::Reject);
    let decided = events_until(&mut events, |e| {
        is(e, "system.permission.decided", "unwanted")
    })
    .await;
    assert_eq!(decided.last().unwrap()["payload"]["decision"], "reject");
    env.until_forgotten("unwanted").await;
    assert!(env.persisted("unwanted").is_none());
    assert!(env.approvals().pending().is_empty());
    assert_error(
        &env.connect_with("unwanted", json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert!(processes_in(&cwd).is_empty());
    // The id is free again.
    env.register_ok("unwanted", fixture_stdio(&cwd, &["stdio"], &[]))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_calls_each_get_their_own_answer() {
    let env = Env::start().await;
    let cwd = env.add_fixture("busy", &[], &[]).await.cwd;
    env.connect("busy").await;
    let calls = (0..20).map(|i| {
        let env = &env;
        async move {
            let message = format!("message number {i}");
            let text = env.echo("busy", &message).await;
            (message, text)
        }
    });
    let answers = tokio::time::timeout(PATIENCE, futures_util::future::join_all(calls))
        .await
        .expect("twenty echoes");
    for (message, text) in answers {
        assert_eq!(text, message);
    }
    env.disconnect_until_gone("busy", &cwd).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_values_fill_their_templates_and_go_only_to_the_server() {
    let env = Env::start().await;
    let Added {
        cwd,
        log,
        transport,
    } = env
        .add_logged_fixture(
            "secretive",
            &[
                ("SECRET_TOKEN", "__OSL_SECRET[tok]__"),
                ("API_KEY_LINE", "key=__OSL_SECRET[key]__"),
            ],
        )
        .await;
    let bad_request = |response: (StatusCode, Value)| {
        assert_error(&response, StatusCode::BAD_REQUEST, "invalid_argument");
        assert!(!response.1.to_string().contains("s3cr3t"), "{}", response.1);
        response.1["error"]["message"].as_str().unwrap().to_string()
    };

    // Without the values.
    let message = bad_request(env.connect_with("secretive", json!({})).await);
    assert!(
        message.contains("SECRET_TOKEN") || message.contains("API_KEY_LINE"),
        "{message}"
    );
    // One missing.
    let message = bad_request(
        env.connect_with("secretive", json!({ "env": { "SECRET_TOKEN": "s3cr3t" } }))
            .await,
    );
    assert!(message.contains("API_KEY_LINE"), "{message}");
    // A value that changes the template's literal part.
    let message = bad_request(
        env.connect_with(
            "secretive",
            json!({ "env": { "SECRET_TOKEN": "s3cr3t", "API_KEY_LINE": "kay=s3cr3t" } }),
        )
        .await,
    );
    assert!(message.contains("API_KEY_LINE"), "{message}");
    // A variable the approved entry does not have.
    let message = bad_request(
        env.connect_with(
            "secretive",
            json!({ "env": { "SECRET_TOKEN": "s3cr3t", "API_KEY_LINE": "key=k", "OTHER": "s3cr3t" } }),
        )
        .await,
    );
    assert!(message.contains("OTHER"), "{message}");
    assert!(processes_in(&cwd).is_empty(), "nothing started");
    assert_eq!(
        env.server("secretive").await.unwrap()["state"],
        "disconnected"
    );

    // Filled: the server gets the values.
    let (status, server) = env
        .connect_with(
            "secretive",
            json!({ "env": { "SECRET_TOKEN": "s3cr3t", "API_KEY_LINE": "key=s3cr3t-k3y" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{server}");
    assert_eq!(server["state"], "connected");
    assert!(!server.to_string().contains("s3cr3t"), "{server}");
    let logged = until_logged(&log, "env SECRET_TOKEN=").await;
    assert!(
        logged.lines().any(|l| l == "env SECRET_TOKEN=s3cr3t"),
        "{logged}"
    );
    let process = server_process_in(&cwd).await;
    let environ = process.environ();
    assert!(
        environ.contains(&"SECRET_TOKEN=s3cr3t".to_string()),
        "{environ:?}"
    );
    assert!(
        environ.contains(&"API_KEY_LINE=key=s3cr3t-k3y".to_string()),
        "{environ:?}"
    );
    // Nothing of the session: not its token, in no variable.
    assert!(
        environ.iter().all(|v| !v.contains(&env.token)),
        "the session token reached the server: {environ:?}"
    );
    let names: BTreeSet<&str> = environ.iter().filter_map(|v| v.split('=').next()).collect();
    let allowed: BTreeSet<&str> = [
        "HOME",
        "LANG",
        "LC_ALL",
        "PATH",
        "TERM",
        "USER",
        "LOGNAME",
        "TZ",
        "MCP_FIXTURE_LOG",
        "SECRET_TOKEN",
        "API_KEY_LINE",
    ]
    .into();
    assert!(names.is_subset(&allowed), "{names:?}");
    assert!(!log_of(&log).contains(&env.token));
    assert_eq!(env.echo("secretive", "ok").await, "ok");

    // Neither the registry nor the list holds a value; the templates are kept.
    let registry = env.registry_text();
    assert!(registry.contains("__OSL_SECRET[tok]__"), "{registry}");
    assert!(registry.contains("key=__OSL_SECRET[key]__"), "{registry}");
    assert!(!registry.contains("s3cr3t"), "{registry}");
    let list = json!(env.list().await);
    assert!(!list.to_string().contains("s3cr3t"), "{list}");
    assert_eq!(list[0]["transport"], transport);
    env.disconnect_until_gone("secretive", &cwd).await;
    assert!(!env.registry_text().contains("s3cr3t"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_survives_a_restart_and_a_malformed_one_is_moved_aside() {
    let env = Env::start().await;
    let Added { cwd, transport, .. } = env.add_fixture("kept", &[], &[]).await;
    env.connect("kept").await;
    let Env {
        fixture,
        bridge,
        work,
        ..
    } = env;
    bridge
        .server
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap();
    until_no_process_in(&cwd).await;

    // A new runtime on the same state: listed, disconnected, with the approved transport.
    let env = Env::serve(fixture, work).await;
    let servers = env.list().await;
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0]["id"], "kept");
    assert_eq!(servers[0]["state"], "disconnected");
    assert_eq!(servers[0]["transport"], transport);
    assert!(env.approvals().pending().is_empty(), "not asked again");
    env.connect("kept").await;
    assert_eq!(env.echo("kept", "after restart").await, "after restart");
    env.disconnect_until_gone("kept", &cwd).await;

    // A registry that cannot be read is moved aside, never taken for approvals.
    let work = tempfile::tempdir().unwrap();
    let fixture = proxy_fixture(work.path(), |_| {});
    let state = fixture.config().state_dir;
    std::fs::create_dir_all(&state).unwrap();
    let garbage = "{ \"version\": 1, \"servers\": [ not json";
    std::fs::write(state.join(REGISTRY), garbage).unwrap();
    let env = Env::serve(fixture, work).await;
    assert!(env.list().await.is_empty());
    assert_eq!(
        std::fs::read_to_string(state.join(format!("{REGISTRY}.unreadable"))).unwrap(),
        garbage
    );
    assert!(!state.join(REGISTRY).exists());
    // And a new registration is persisted in a fresh file.
    env.add_fixture("fresh", &[], &[]).await;
    assert!(env.persisted("fresh").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_registrations_name_their_field_and_changes_wait_for_approval() {
    let env = Env::start().await;
    let cwd = env.dir("valid");
    let invalid = |response: (StatusCode, Value), field: &str| {
        assert_error_naming(
            &response,
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            field,
        );
    };
    invalid(
        env.register("Bad Id", fixture_stdio(&cwd, &["stdio"], &[]))
            .await,
        "`id`",
    );
    invalid(
        env.register(
            "placeholder",
            fixture_stdio(&cwd, &["stdio", "__OSL_SECRET[x]__"], &[]),
        )
        .await,
        "`transport.args[1]`",
    );
    invalid(
        env.register(
            "session-header",
            json!({ "type": "http", "url": "http://127.0.0.1:9/mcp", "headers": { "Mcp-Session-Id": "x" } }),
        )
        .await,
        "`transport.headers.Mcp-Session-Id`",
    );
    invalid(
        env.register("ftp", http("ftp://127.0.0.1/mcp")).await,
        "transport.url",
    );
    assert_error_naming(
        &env.register("elsewhere", http("http://example.com/mcp"))
            .await,
        StatusCode::FORBIDDEN,
        "denied",
        "grants.mcp.urls",
    );
    assert!(env.approvals().pending().is_empty(), "nobody was asked");
    assert!(env.list().await.is_empty());

    // A valid one; its id is then taken, approved or not.
    let original = fixture_stdio(&cwd, &["stdio"], &[]);
    let server = env.register_ok("valid", original.clone()).await;
    assert_error(
        &env.register("valid", original.clone()).await,
        StatusCode::CONFLICT,
        "conflict",
    );
    env.decide(&server, Decision::AllowOnce);
    env.until_state("valid", "disconnected").await;
    assert_error(
        &env.register("valid", original.clone()).await,
        StatusCode::CONFLICT,
        "conflict",
    );

    // A new name applies at once, with no prompt.
    let renamed = env
        .change("valid", json!({ "name": "The valid one" }))
        .await;
    assert_eq!(renamed["name"], "The valid one");
    assert!(renamed["requestId"].is_null(), "{renamed}");
    assert!(env.approvals().pending().is_empty());
    assert_eq!(env.persisted("valid").unwrap()["name"], "The valid one");

    // A new transport waits for the person; the approved one stays until then.
    env.connect("valid").await;
    let changed = fixture_stdio(&cwd, &["stdio", "--only-2026"], &[]);
    let pending = env.change("valid", json!({ "transport": changed })).await;
    assert_eq!(pending["transport"], original, "{pending}");
    assert_eq!(pending["pendingChange"], changed, "{pending}");
    assert!(pending["requestId"].is_string(), "{pending}");
    assert_eq!(pending["state"], "connected", "{pending}");
    assert_eq!(env.approvals().pending().len(), 1);
    assert_eq!(
        env.persisted("valid").unwrap()["transport"]["args"],
        json!(["stdio"])
    );
    assert_eq!(env.echo("valid", "old transport").await, "old transport");
    env.decide(&pending, Decision::AllowOnce);
    let approved = env.until_no_pending_change("valid").await;
    assert_eq!(approved["transport"], changed, "{approved}");
    assert_eq!(approved["name"], "The valid one", "{approved}");
    assert_eq!(
        env.persisted("valid").unwrap()["transport"]["args"],
        json!(["stdio", "--only-2026"])
    );
    // A change the person rejects leaves the approved transport, and says so.
    let pending = env.change("valid", json!({ "transport": original })).await;
    env.decide(&pending, Decision::Reject);
    let kept = env.until_no_pending_change("valid").await;
    assert_eq!(kept["transport"], changed, "{kept}");
    assert!(
        kept["message"]
            .as_str()
            .unwrap_or_default()
            .contains("rejected"),
        "{kept}"
    );
    // Removed: forgotten, and its process ended.
    let (status, removed) = env.delete("/api/v1/mcp/servers/valid").await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert!(env.list().await.is_empty());
    assert!(env.persisted("valid").is_none());
    until_no_process_in(&cwd).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_with_the_same_tool_names_each_get_their_own_calls() {
    let env = Env::start().await;
    let Added {
        cwd: a, log: log_a, ..
    } = env.add_logged_fixture("a", &[]).await;
    let Added {
        cwd: b, log: log_b, ..
    } = env.add_logged_fixture("b", &[]).await;
    env.connect("a").await;
    env.connect("b").await;
    assert_eq!(
        tool_names(&env.capabilities("a").await),
        tool_names(&env.capabilities("b").await)
    );
    assert_eq!(env.echo("a", "to a").await, "to a");
    assert_eq!(env.text("a", "add", json!({ "a": 1, "b": 1 })).await, "2");
    assert_eq!(env.echo("b", "to b").await, "to b");
    let calls = |path: &Path| -> Vec<String> {
        log_of(path)
            .lines()
            .filter(|l| l.starts_with("called "))
            .map(String::from)
            .collect()
    };
    assert_eq!(calls(&log_a), ["called echo", "called add"]);
    assert_eq!(calls(&log_b), ["called echo"]);

    // An unknown tool (the server's -32602), arguments that are not an object, a timeout past
    // the cap: 400, naming what is wrong.
    assert_error_naming(
        &env.call(json!({ "serverId": "b", "tool": "nope" })).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "`nope`",
    );
    assert_eq!(calls(&log_b), ["called echo", "called nope"]);
    assert_error_naming(
        &env.call(json!({ "serverId": "b", "tool": "echo", "arguments": [1] }))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "arguments",
    );
    assert_error_naming(
        &env
            .call(json!({ "serverId": "b", "tool": "echo", "arguments": { "message": "x" }, "timeoutMs": 600_001 }))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "600000",
    );
    assert_eq!(
        calls(&log_a),
        ["called echo", "called add"],
        "b's calls stay b's"
    );
    assert_eq!(calls(&log_b), ["called echo", "called nope"]);
    env.disconnect("a").await;
    env.disconnect("b").await;
    until_no_process_in(&a).await;
    until_no_process_in(&b).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_never_answers_its_handshake_times_out_or_is_disconnected_while_waiting() {
    let env = Env::start().await;
    let cwd = env.dir("mute");
    // A program that reads nothing and says nothing: no handshake ever comes.
    let mute =
        json!({ "type": "stdio", "program": "sleep", "args": ["600"], "cwd": cwd, "env": {} });
    env.add("mute", mute).await;

    let (status, error) = env.connect_with("mute", json!({ "timeoutMs": 1000 })).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("1000 ms"), "{message}");
    assert_eq!(env.server("mute").await.unwrap()["state"], "failed");
    until_no_process_in(&cwd).await;

    // A connect waiting for a handshake ends as soon as the server is disconnected, not at its
    // timeout (ten minutes here).
    let waiting = {
        let (client, url, token) = (
            env.bridge.client.clone(),
            env.bridge.url("/api/v1/mcp/servers/mute/connect"),
            env.token.clone(),
        );
        tokio::spawn(async move {
            let response = client
                .post(url)
                .header(capbridge_tests::TOKEN_HEADER, token)
                .json(&json!({ "timeoutMs": 600000 }))
                .send()
                .await
                .unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        })
    };
    env.until_state("mute", "connecting").await;
    server_process_in(&cwd).await;
    env.disconnect("mute").await;
    let (status, error) = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the waiting connect ends with the disconnect")
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disconnected while connecting"),
        "{error}"
    );
    assert_eq!(env.server("mute").await.unwrap()["state"], "disconnected");
    until_no_process_in(&cwd).await;
}
