//! Shared set-up for capbridge's end-to-end tests: real components built from source (by
//! `cargo xtask build`), loaded into a real runtime from a temporary components/policy layout.

use std::path::{Path, PathBuf};

use capbridge_runtime::{ComponentStatus, Runtime, RuntimeConfig};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// A guest test program from `tests/programs/<name>`, built for wasm32-wasip2.
pub fn program(name: &str) -> PathBuf {
    let path = root()
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is not built: run `cargo xtask test` (or `cargo xtask build`) first",
        path.display()
    );
    path
}

/// Copies the web UI of the `web-probe` test program (`tests/programs/web-probe/web`) to `to`, as
/// a component's `components/<id>/web`.
pub fn copy_web_probe_ui(to: &Path) {
    copy_dir(&root().join("tests/programs/web-probe/web"), to);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for entry in std::fs::read_dir(from).expect("read directory").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

/// A first-party component as installed by `cargo xtask build`.
pub fn component(id: &str) -> PathBuf {
    let path = root().join("components").join(format!("{id}.wasm"));
    assert!(
        path.is_file(),
        "{} is not built: run `cargo xtask test` (or `cargo xtask build`) first",
        path.display()
    );
    path
}

/// The repository's shipped policy for a first-party component (`policy/<id>.toml`).
pub fn shipped_policy(id: &str) -> String {
    let path = root().join("policy").join(format!("{id}.toml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One compile cache for all tests, so each component compiles once per test run.
pub fn shared_cache_dir() -> PathBuf {
    root().join("target/test-compile-cache")
}

/// A temporary components directory and policy directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("components")).expect("components dir");
        std::fs::create_dir(dir.path().join("policy")).expect("policy dir");
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn components_dir(&self) -> PathBuf {
        self.path().join("components")
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.path().join("policy")
    }

    pub fn policy_path(&self, id: &str) -> PathBuf {
        self.policy_dir().join(format!("{id}.toml"))
    }

    /// Adds component `id` from `wasm`, with `policy` as its policy file (or none).
    pub fn add(&self, id: &str, wasm: &Path, policy: Option<&str>) -> &Self {
        std::fs::copy(wasm, self.components_dir().join(format!("{id}.wasm")))
            .expect("copy component");
        if let Some(policy) = policy {
            std::fs::write(self.policy_path(id), policy).expect("write policy");
        }
        self
    }

    pub fn config(&self) -> RuntimeConfig {
        RuntimeConfig {
            components_dir: self.components_dir(),
            policy_dir: self.policy_dir(),
            cache_dir: shared_cache_dir(),
            record_dir: None,
            audit_retention: None,
            picker: capbridge_runtime::caps::dialog::Picker::Headless,
            own_files: Default::default(),
            state_dir: self.path().join("state"),
        }
    }

    /// A runtime with every component of the fixture loaded (or failed, with its reason).
    pub fn runtime(&self) -> Runtime {
        runtime_with(self.config())
    }
}

pub fn runtime_with(config: RuntimeConfig) -> Runtime {
    let runtime = Runtime::new(config).expect("engine");
    runtime.load_all(&mut |_| {}).expect("load");
    runtime
}

/// The reason `id` did not load; panics if it loaded.
pub fn failure(runtime: &Runtime, id: &str) -> String {
    match &runtime
        .component(id)
        .unwrap_or_else(|| panic!("no component {id}"))
        .status
    {
        ComponentStatus::Failed { reason } => reason.clone(),
        ComponentStatus::Loaded => panic!("{id} loaded, but it should not have"),
    }
}

/// Panics unless `id` loaded.
pub fn assert_loaded(runtime: &Runtime, id: &str) {
    match &runtime
        .component(id)
        .unwrap_or_else(|| panic!("no component {id}"))
        .status
    {
        ComponentStatus::Loaded => {}
        ComponentStatus::Failed { reason } => panic!("{id} did not load: {reason}"),
    }
}

/// A policy file granting nothing beyond the baseline, with extra TOML appended.
pub fn policy(extra: &str) -> String {
    format!("version = 1\n{extra}\n")
}

/// A real bridge server on an ephemeral loopback port, serving `runtime`.
pub struct Bridge {
    pub server: capbridge_api::Server,
    /// `http://127.0.0.1:<port>`
    pub base: String,
    pub client: reqwest::Client,
}

impl Bridge {
    /// Starts the contract server on 127.0.0.1:0 with `config` (its `port` is ignored).
    pub async fn start(runtime: Runtime, config: capbridge_api::BridgeConfig) -> Self {
        Self::start_shared(std::sync::Arc::new(runtime), config).await
    }

    /// [`Bridge::start`] with a runtime the test keeps a handle on (to watch it, say).
    pub async fn start_shared(
        runtime: std::sync::Arc<Runtime>,
        config: capbridge_api::BridgeConfig,
    ) -> Self {
        let listener = capbridge_api::bind(0).await.expect("bind 127.0.0.1:0");
        let server = capbridge_api::Server::start(
            listener,
            runtime,
            config,
            capbridge_api::ServeOptions::default(),
        )
        .expect("start server");
        Self {
            base: format!("http://{}", server.addr()),
            server,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Handshakes as a local client (no Origin) and returns the session token.
    pub async fn token(&self) -> String {
        let body: serde_json::Value = self
            .client
            .post(self.url("/api/v1/session/handshake"))
            .send()
            .await
            .expect("handshake")
            .json()
            .await
            .expect("handshake body");
        body["sessionToken"].as_str().expect("token").to_string()
    }

    /// The event WebSocket of session `token`.
    pub async fn events(&self, token: &str) -> Socket {
        let url = format!(
            "ws://{}/ws/v1/events?sessionToken={token}",
            self.server.addr()
        );
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("the event socket opens");
        socket
    }

    /// `GET path` with the session token in its header.
    pub async fn get_as(&self, token: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header(TOKEN_HEADER, token)
            .send()
            .await
            .expect("GET")
    }

    /// `POST path` of JSON `body` with the session token in its header.
    pub async fn post_as(
        &self,
        token: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header(TOKEN_HEADER, token)
            .json(body)
            .send()
            .await
            .expect("POST")
    }
}

/// The header that carries the session token on HTTP routes.
pub const TOKEN_HEADER: &str = "X-OSLOOP-BRIDGE-TOKEN";

/// The status and JSON body of a response.
pub async fn status_and_json(
    response: reqwest::Response,
) -> (reqwest::StatusCode, serde_json::Value) {
    (
        response.status(),
        response.json().await.expect("a JSON body"),
    )
}

/// The shipped filesystem policy with its one directory grant moved to `dir` (as `workspace`,
/// read-write): the shipped component as a user gets it, in a test's own directory.
pub fn filesystem_policy_at(dir: &Path) -> String {
    with_directories(
        &shipped_policy("filesystem"),
        &[DirGrant {
            host: dir,
            guest: "/workspace",
            access: "read-write",
        }],
    )
}

/// A fixture holding the shipped echo component and its shipped policy.
pub fn echo_fixture() -> Fixture {
    let fixture = Fixture::new();
    fixture.add("echo", &component("echo"), Some(&shipped_policy("echo")));
    fixture
}

/// A fixture holding component `id` (as built) with `policy` as its policy file.
pub fn fixture_with(id: &str, policy: &str) -> Fixture {
    let fixture = Fixture::new();
    fixture.add(id, &component(id), Some(policy));
    fixture
}

/// Policy `text` after `edit` changed its TOML table (comments are not kept).
pub fn edit_policy(text: &str, edit: impl FnOnce(&mut toml::Table)) -> String {
    let mut table: toml::Table = text.parse().expect("the policy is TOML");
    edit(&mut table);
    toml::to_string(&table).expect("serialise the policy")
}

/// The shipped policy of component `id` with `grants.<grant>.working-directories` moved to
/// `dir` (the only one), after `edit` of that grant's table: the shipped component as a user
/// gets it, working in a test's own directory.
pub fn shipped_policy_working_in(
    id: &str,
    grant: &str,
    dir: &Path,
    edit: impl FnOnce(&mut toml::Table),
) -> String {
    edit_policy(&shipped_policy(id), |table| {
        let grant = table["grants"][grant].as_table_mut().expect("the grant");
        grant.insert(
            "working-directories".into(),
            toml::Value::Array(vec![dir.to_str().expect("UTF-8 path").into()]),
        );
        edit(grant);
    })
}

/// One `[[grants.directories]]` entry: host directory, guest path, access.
pub struct DirGrant<'a> {
    pub host: &'a Path,
    pub guest: &'a str,
    pub access: &'a str,
}

/// Policy `text` with its directory grants replaced by `directories` (every other key kept).
pub fn with_directories(text: &str, directories: &[DirGrant]) -> String {
    edit_policy(text, |table| {
        let grants = table
            .entry("grants")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("[grants] is a table");
        let list = directories
            .iter()
            .map(|d| {
                let mut entry = toml::Table::new();
                entry.insert(
                    "host".into(),
                    toml::Value::String(d.host.to_str().expect("UTF-8 path").into()),
                );
                entry.insert("guest".into(), toml::Value::String(d.guest.into()));
                entry.insert("access".into(), toml::Value::String(d.access.into()));
                toml::Value::Table(entry)
            })
            .collect();
        grants.insert("directories".into(), toml::Value::Array(list));
    })
}

/// Checks an error response: its status and code, and that it has a message.
#[track_caller]
pub fn assert_error(
    response: &(reqwest::StatusCode, serde_json::Value),
    status: reqwest::StatusCode,
    code: &str,
) {
    let (actual, body) = response;
    assert_eq!(*actual, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{body}"
    );
}

/// A client of the event WebSocket.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next event of type `kind` (heartbeats included, when asked for), skipping others;
/// panics after 30 s without one.
pub async fn next_event(socket: &mut Socket, kind: &str) -> serde_json::Value {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(30), socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} event"))
            .expect("socket open")
            .expect("message");
        if let Message::Text(text) = message {
            let event: serde_json::Value = serde_json::from_str(&text).unwrap();
            if event["type"] == kind {
                return event;
            }
        }
    }
}

/// Where `program` is found on this process's `PATH`, as capbridge finds a run's program (a
/// whitelist rule names that file).
pub fn which(program: &str) -> String {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
        .display()
        .to_string()
}

/// Reads `socket` until the event whose type is one of `last` for command run `run`, handing
/// each of that run's events (the last included) to `each`; panics after `wait` without one.
pub async fn each_run_event(
    socket: &mut Socket,
    run: &str,
    last: &[&str],
    wait: std::time::Duration,
    mut each: impl FnMut(&serde_json::Value),
) {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(wait, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {last:?} for {run} within {wait:?}"))
            .expect("socket open")
            .expect("message");
        let Message::Text(text) = message else {
            continue;
        };
        let event: serde_json::Value = serde_json::from_str(&text).unwrap();
        if event["payload"]["runId"] == run {
            each(&event);
            if last.contains(&event["type"].as_str().unwrap_or_default()) {
                return;
            }
        }
    }
}
