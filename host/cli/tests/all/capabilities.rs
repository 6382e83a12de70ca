//! `capbridge serve` as a person runs it, with the filesystem, awake and system capabilities.
//!
//! Everything is real: the `capbridge` binary (a child process with a clean environment and a
//! temporary home), the shipped components and policies, HTTP and the event WebSocket, a private
//! `dbus-daemon` per test, and capbridge's own D-Bus clients (`keepawake` for
//! org.freedesktop.ScreenSaver, zbus for the desktop portal's FileChooser). Only the desktop
//! services on the other end of the bus are stand-ins, written here with zbus, recording what
//! capbridge asked of them.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capbridge_tests::{component, root, shipped_policy, TOKEN_HEADER as TOKEN};
use futures_util::StreamExt as _;
use serde_json::{json, Value};
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value as DbusValue};

/// How long anything may take before a test gives up (generous: a first start compiles, and
/// this machine may be busy building).
pub(crate) const PATIENCE: Duration = Duration::from_secs(180);
const MIB: usize = 1024 * 1024;

/// A person's installation, all in one temporary directory: a home directory, the components
/// and their policies, a compile cache and the bridge's config file.
pub(crate) struct Install {
    dir: tempfile::TempDir,
}

impl Install {
    /// The shipped components `ids`, each with its shipped policy.
    pub(crate) fn shipped(ids: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["home", "components", "policy", "cache"] {
            std::fs::create_dir(dir.path().join(sub)).expect("install layout");
        }
        let install = Self { dir };
        for id in ids {
            std::fs::copy(
                component(id),
                install.components().join(format!("{id}.wasm")),
            )
            .expect("copy component");
            install.set_policy(id, &shipped_policy(id));
        }
        install
    }

    /// Every component `cargo xtask build` installed, with every shipped policy.
    pub(crate) fn everything_shipped() -> Self {
        let mut ids: Vec<String> = std::fs::read_dir(root().join("components"))
            .expect("components/")
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                (path.extension()? == "wasm")
                    .then(|| path.file_stem()?.to_str().map(String::from))?
            })
            .collect();
        ids.sort();
        for needed in ["filesystem", "awake", "system"] {
            assert!(
                ids.iter().any(|id| id == needed),
                "components/{needed}.wasm is not built: run `cargo xtask build` first"
            );
        }
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        Self::shipped(&ids)
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
    pub(crate) fn home(&self) -> PathBuf {
        self.path().join("home")
    }
    pub(crate) fn components(&self) -> PathBuf {
        self.path().join("components")
    }
    pub(crate) fn policies(&self) -> PathBuf {
        self.path().join("policy")
    }
    pub(crate) fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }
    pub(crate) fn config(&self) -> PathBuf {
        self.path().join("config.toml")
    }

    pub(crate) fn set_policy(&self, id: &str, text: &str) {
        std::fs::write(self.policies().join(format!("{id}.toml")), text).expect("write policy");
    }

    pub(crate) fn set_config(&self, text: &str) {
        std::fs::write(self.config(), text).expect("write config");
    }
}

/// A running `capbridge serve --port 0`; killed (SIGKILL) when dropped.
pub(crate) struct Server {
    child: Child,
    base: String,
    pub(crate) port: u16,
    log: PathBuf,
    http: reqwest::Client,
}

impl Server {
    /// Starts the binary for `install` with a clean environment: PATH, HOME (the install's home)
    /// and `env`, nothing else (no display, no session bus unless `env` names them).
    pub(crate) fn start(install: &Install, env: &[(&str, &str)]) -> Server {
        Self::start_with(install, env, &["serve", "--port", "0"])
    }

    /// [`Server::start`] with other arguments after the directories (`--port 0` alone: the
    /// desktop shell).
    pub(crate) fn start_with(install: &Install, env: &[(&str, &str)], args: &[&str]) -> Server {
        let (mut command, log) = Self::command(install, env, args);
        let mut child = command.spawn().expect("capbridge starts");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next().and_then(Result::ok);
        let port = first.as_deref().and_then(|line| {
            line.strip_prefix("capbridge listening on http://127.0.0.1:")?
                .parse::<u16>()
                .ok()
        });
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "capbridge did not start (first line {first:?}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        // Keep reading stdout: a closed pipe would fail capbridge's later prints.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            port,
            log,
            http: reqwest::Client::builder()
                .timeout(PATIENCE)
                .build()
                .expect("http client"),
        }
    }

    /// The command [`Server::start_with`] runs, and the file its stderr goes to.
    pub(crate) fn command(
        install: &Install,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> (Command, PathBuf) {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let log = install.path().join(format!(
            "capbridge-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut command = Command::new(env!("CARGO_BIN_EXE_capbridge"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", install.home())
            .env("CAPBRIDGE_LOG", "info")
            .envs(env.iter().copied())
            .arg("--components")
            .arg(install.components())
            .arg("--policies")
            .arg(install.policies())
            .arg("--cache")
            .arg(install.cache())
            .arg("--config")
            .arg(install.config())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        (command, log)
    }

    /// [`Server::start`] from an async test (the start blocks until capbridge prints its address).
    pub(crate) fn start_in_place(install: &Install, env: &[(&str, &str)]) -> Server {
        tokio::task::block_in_place(|| Server::start(install, env))
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// What capbridge logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash or a power cut of the process would end it.
    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as Ctrl-C or a service manager stops it; waits for the exit.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        tokio::task::block_in_place(|| self.child.wait()).expect("capbridge exits")
    }

    /// Waits for capbridge to end by itself (within [`PATIENCE`]).
    pub(crate) fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("capbridge's status") {
                return status;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "capbridge did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the process is still running.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A new session as a local client (no `Origin`).
    pub(crate) async fn handshake(&self) -> String {
        let (status, body) = self
            .send(self.http.post(self.url("/api/v1/session/handshake")))
            .await;
        assert_eq!(status, 200, "handshake: {body}");
        body["sessionToken"]
            .as_str()
            .expect("sessionToken")
            .to_string()
    }

    pub(crate) async fn health(&self) -> u16 {
        self.send(self.http.get(self.url("/api/v1/health"))).await.0
    }

    pub(crate) async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.url(path)).header(TOKEN, token))
            .await
    }

    pub(crate) async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        self.send(
            self.http
                .post(self.url(path))
                .header(TOKEN, token)
                .json(&body),
        )
        .await
    }

    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("capbridge answers: {e}\n{}", self.log()));
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("response body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            let tail = &log[log.len().saturating_sub(6000)..];
            eprintln!("--- capbridge log (port {}) ---\n{tail}", self.port);
        }
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

/// A private D-Bus session bus (`dbus-daemon --session`) of one test; killed when dropped.
pub(crate) struct Bus {
    child: Child,
    pub(crate) address: String,
    _dir: tempfile::TempDir,
}

impl Bus {
    pub(crate) fn start() -> Bus {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let spawned = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address"])
            .arg(format!(
                "--address=unix:path={}",
                dir.path().join("bus").display()
            ))
            // No activatable services: only what a test serves is on this bus.
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", &data)
            .env("XDG_DATA_DIRS", &data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("dbus-daemon is not installed: install it: apt-get install dbus-daemon")
            }
            Err(e) => panic!("dbus-daemon does not start: {e}"),
        };
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let address = match lines.next() {
            Some(Ok(line)) if line.starts_with("unix:") => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("dbus-daemon printed no address: {other:?}");
            }
        };
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Bus {
            child,
            address,
            _dir: dir,
        }
    }

    /// A plain client connection, to ask the bus itself.
    pub(crate) async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .expect("bus address")
            .build()
            .await
            .expect("connect to the private bus")
    }

    /// Waits until nobody owns `name` on this bus.
    pub(crate) async fn wait_until_unowned(&self, name: &str) {
        self.wait_until_owned_is(name, false).await;
    }

    /// Waits until a service owns `name` on this bus.
    pub(crate) async fn wait_until_owned(&self, name: &str) {
        self.wait_until_owned_is(name, true).await;
    }

    async fn wait_until_owned_is(&self, name: &str, owned: bool) {
        let connection = self.connect().await;
        let dbus = zbus::fdo::DBusProxy::new(&connection)
            .await
            .expect("org.freedesktop.DBus");
        let name = zbus::names::BusName::try_from(name).expect("bus name");
        let what = if owned { "join" } else { "leave" };
        eventually(&format!("{name} to {what} the bus"), || async {
            dbus.name_has_owner(name.clone())
                .await
                .expect("NameHasOwner")
                == owned
        })
        .await;
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `done` until it is true, failing after [`PATIENCE`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < PATIENCE, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What capbridge asked the stand-in ScreenSaver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SaverCalls {
    /// (application name, reason, cookie returned)
    inhibit: Vec<(String, String, u32)>,
    /// cookies
    uninhibit: Vec<u32>,
}

/// A stand-in org.freedesktop.ScreenSaver (what GNOME, KDE and others serve on the session bus).
#[derive(Clone, Default)]
struct ScreenSaver {
    calls: Arc<Mutex<SaverCalls>>,
}

#[zbus::interface(name = "org.freedesktop.ScreenSaver")]
impl ScreenSaver {
    fn inhibit(&self, application_name: String, reason: String) -> u32 {
        let mut calls = self.calls.lock().unwrap();
        let cookie = 4100 + calls.inhibit.len() as u32;
        calls.inhibit.push((application_name, reason, cookie));
        cookie
    }

    fn un_inhibit(&self, cookie: u32) {
        self.calls.lock().unwrap().uninhibit.push(cookie);
    }
}

impl ScreenSaver {
    /// Serves it on `bus` (at both paths desktops use) until the connection is closed.
    async fn serve(&self, bus: &Bus) -> zbus::Connection {
        zbus::connection::Builder::address(bus.address.as_str())
            .expect("bus address")
            .name("org.freedesktop.ScreenSaver")
            .expect("name")
            .serve_at("/org/freedesktop/ScreenSaver", self.clone())
            .expect("path")
            .serve_at("/ScreenSaver", self.clone())
            .expect("path")
            .build()
            .await
            .expect("the stand-in ScreenSaver joins the private bus")
    }

    fn calls(&self) -> SaverCalls {
        self.calls.lock().unwrap().clone()
    }
}

/// How the stand-in portal answers the next OpenFile.
enum Answer {
    Pick(PathBuf),
    Cancel,
}

#[derive(Clone, Debug)]
struct OpenFileCall {
    title: String,
    directory: bool,
    request: String,
}

/// A stand-in desktop portal (org.freedesktop.portal.Desktop) with the FileChooser interface:
/// OpenFile returns the request's object path and then answers on it with the Request.Response
/// signal, as xdg-desktop-portal does once the person has chosen.
#[derive(Clone, Default)]
struct Portal {
    answers: Arc<Mutex<VecDeque<Answer>>>,
    calls: Arc<Mutex<Vec<OpenFileCall>>>,
}

#[zbus::interface(name = "org.freedesktop.portal.FileChooser")]
impl Portal {
    async fn open_file(
        &self,
        parent_window: String,
        title: String,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] connection: &zbus::Connection,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        let failed = |why: &str| zbus::fdo::Error::Failed(why.to_string());
        let _ = parent_window;
        let sender = header
            .sender()
            .ok_or_else(|| failed("no sender"))?
            .to_string();
        let token = match options.get("handle_token").map(|v| &**v) {
            Some(DbusValue::Str(token)) => token.to_string(),
            _ => return Err(failed("no handle_token option")),
        };
        let directory = matches!(
            options.get("directory").map(|v| &**v),
            Some(DbusValue::Bool(true))
        );
        // The request path the portal documents: the caller's unique name without ':' and
        // with '.' as '_', then the caller's handle_token.
        let request = format!(
            "/org/freedesktop/portal/desktop/request/{}/{token}",
            sender.trim_start_matches(':').replace('.', "_")
        );
        self.calls.lock().unwrap().push(OpenFileCall {
            title,
            directory,
            request: request.clone(),
        });
        let answer = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .ok_or_else(|| failed("the test queued no answer"))?;
        let connection = connection.clone();
        let path = request.clone();
        tokio::spawn(async move {
            let mut results: HashMap<&str, DbusValue<'_>> = HashMap::new();
            let code: u32 = match answer {
                Answer::Pick(dir) => {
                    let uri = format!("file://{}", dir.display());
                    results.insert("uris", DbusValue::from(vec![uri]));
                    0
                }
                Answer::Cancel => 1,
            };
            connection
                .emit_signal(
                    Some(sender.as_str()),
                    path.as_str(),
                    "org.freedesktop.portal.Request",
                    "Response",
                    &(code, results),
                )
                .await
                .expect("emit Request.Response");
        });
        OwnedObjectPath::try_from(request).map_err(|e| failed(&e.to_string()))
    }
}

impl Portal {
    async fn serve(&self, bus: &Bus) -> zbus::Connection {
        zbus::connection::Builder::address(bus.address.as_str())
            .expect("bus address")
            .name("org.freedesktop.portal.Desktop")
            .expect("name")
            .serve_at("/org/freedesktop/portal/desktop", self.clone())
            .expect("path")
            .build()
            .await
            .expect("the stand-in portal joins the private bus")
    }

    fn answer(&self, answer: Answer) {
        self.answers.lock().unwrap().push_back(answer);
    }

    fn calls(&self) -> Vec<OpenFileCall> {
        self.calls.lock().unwrap().clone()
    }
}

/// The event socket of one session.
pub(crate) struct Events {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Events {
    pub(crate) async fn connect(server: &Server, token: &str) -> Events {
        let url = format!(
            "ws://127.0.0.1:{}/ws/v1/events?sessionToken={token}",
            server.port
        );
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("event socket");
        let mut events = Events { socket };
        events.next_of("bridge.connected").await;
        events
    }

    /// The next event of type `kind`, skipping others (heartbeats, sessions created).
    pub(crate) async fn next_of(&mut self, kind: &str) -> Value {
        let wait = async {
            loop {
                let message = self
                    .socket
                    .next()
                    .await
                    .expect("the event socket stays open")
                    .expect("event socket message");
                let Ok(text) = message.to_text() else {
                    continue;
                };
                let Ok(event) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                if event["type"] == kind {
                    return event;
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("no {kind} event"))
    }
}

/// `label line 00000000\n`, `label line 00000001\n`, … cut at exactly `size` bytes: every part
/// of it says which content it belongs to and where, so a torn or mixed file cannot pass as whole.
fn text(label: &str, size: usize) -> String {
    let mut out = String::with_capacity(size + 64);
    let mut line = 0u64;
    while out.len() < size {
        let _ = writeln!(out, "{label} line {line:08}");
        line += 1;
    }
    out.truncate(size);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn new_user_flow() {
    let install = Install::everything_shipped();
    // A new user: a home with nothing of capbridge's in it, no desktop, no session bus.
    let server = Server::start_in_place(&install, &[]);
    let workspace = install.home().join("capbridge");
    assert!(
        workspace.is_dir(),
        "the shipped filesystem policy's ~/capbridge is created at start\n{}",
        server.log()
    );

    let token = server.handshake().await;
    let (status, capabilities) = server.get(&token, "/api/v1/capabilities").await;
    assert_eq!(status, 200, "{capabilities}");
    for name in ["filesystem", "awake", "system_info"] {
        assert!(
            capabilities["capabilities"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == name),
            "{name} missing: {capabilities}"
        );
    }

    let (status, targets) = server.get(&token, "/api/v1/filesystem/targets").await;
    assert_eq!(status, 200, "{targets}");
    assert_eq!(
        targets["targets"],
        json!([{
            "name": "workspace",
            "path": workspace.display().to_string(),
            "access": "read-write",
            "kind": "granted",
        }])
    );

    let content = "Hello from a new user: héllo wörld\n";
    let (status, written) = server
        .post(
            &token,
            "/api/v1/filesystem/write",
            json!({"target": "workspace", "path": "notes/hello.txt", "content": content,
                   "createParents": true}),
        )
        .await;
    assert_eq!(status, 200, "{written}");
    assert_eq!(written["size"], content.len());
    assert_eq!(written["created"], true);
    assert_eq!(
        std::fs::read_to_string(workspace.join("notes/hello.txt")).unwrap(),
        content
    );
    // `serve` runs with umask 077: what it writes is the user's alone.
    let mode = |path: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&workspace.join("notes/hello.txt")), 0o600);
    assert_eq!(mode(&workspace.join("notes")), 0o700);
    let (status, read) = server
        .post(
            &token,
            "/api/v1/filesystem/read",
            json!({"target": "workspace", "path": "notes/hello.txt"}),
        )
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["content"], content);
    assert_eq!(read["encoding"], "utf8");
    assert_eq!(read["size"], content.len());
    // The default mode is `create`: a second write does not replace the file.
    let (status, refused) = server
        .post(
            &token,
            "/api/v1/filesystem/write",
            json!({"target": "workspace", "path": "notes/hello.txt", "content": "x"}),
        )
        .await;
    assert_eq!((status, code(&refused)), (409, "conflict"), "{refused}");

    let (status, info) = server.get(&token, "/api/v1/system/info").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["os"], "linux", "{info}");
    assert!(
        !info["arch"].as_str().unwrap_or_default().is_empty(),
        "{info}"
    );
    let apt = Path::new("/usr/bin/apt").is_file() || Path::new("/bin/apt").is_file();
    let (status, recipe) = server
        .post(
            &token,
            "/api/v1/system/tools/recipes/resolve",
            json!({"tool": "jq"}),
        )
        .await;
    if apt {
        assert!(
            info["packageManagers"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m == "apt")),
            "{info}"
        );
        assert_eq!(status, 200, "{recipe}");
        assert_eq!(recipe["tool"], "jq", "{recipe}");
        assert_eq!(recipe["manager"], "apt", "{recipe}");
        assert_eq!(recipe["package"], "jq", "{recipe}");
        assert!(
            recipe["command"].as_array().is_some_and(|c| !c.is_empty()),
            "{recipe}"
        );
    } else {
        assert_eq!((status, code(&recipe)), (404, "not_found"), "{recipe}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn awake_inhibits_through_dbus() {
    let bus = Bus::start();
    let saver = ScreenSaver::default();
    let _service = saver.serve(&bus).await;
    let install = Install::shipped(&["awake"]);
    let bus_env = [("DBUS_SESSION_BUS_ADDRESS", bus.address.as_str())];
    let server = Server::start_in_place(&install, &bus_env);

    let one = server.handshake().await;
    let two = server.handshake().await;
    let mut events = Events::connect(&server, &one).await;

    let (status, first) = server
        .post(
            &one,
            "/api/v1/awake/acquire",
            json!({"reason": "rendering"}),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["reason"], "rendering");
    assert_eq!(first["component"], "awake");
    let calls = saver.calls();
    assert_eq!(calls.inhibit.len(), 1, "{calls:?}");
    let (application, reason, cookie) = calls.inhibit[0].clone();
    assert_eq!(reason, "rendering");
    assert!(!application.is_empty());
    assert!(calls.uninhibit.is_empty(), "{calls:?}");
    let acquired = events.next_of("awake.acquired").await;
    assert_eq!(acquired["source"], "capbridge", "{acquired}");
    assert_eq!(acquired["payload"]["hold"]["id"], first["id"], "{acquired}");
    assert_eq!(acquired["payload"]["active"], true, "{acquired}");

    // A second session's hold shares the one inhibition.
    let (status, second) = server
        .post(&two, "/api/v1/awake/acquire", json!({"reason": "export"}))
        .await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(first["id"], second["id"]);
    assert_ne!(first["session"], second["session"]);
    assert_eq!(saver.calls().inhibit.len(), 1, "{:?}", saver.calls());
    events.next_of("awake.acquired").await;

    let (status, state) = server.get(&two, "/api/v1/awake/status").await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["active"], true, "{state}");
    let ids: Vec<&Value> = state["holds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| &h["id"])
        .collect();
    assert_eq!(ids, [&first["id"], &second["id"]], "{state}");

    // Session two cannot release session one's hold.
    let (status, refused) = server
        .post(&two, "/api/v1/awake/release", json!({"id": first["id"]}))
        .await;
    assert_eq!((status, code(&refused)), (404, "not_found"), "{refused}");

    let (status, released) = server
        .post(&two, "/api/v1/awake/release", json!({"id": second["id"]}))
        .await;
    assert_eq!(status, 200, "{released}");
    assert_eq!(released["id"], second["id"]);
    assert!(saver.calls().uninhibit.is_empty(), "{:?}", saver.calls());
    let event = events.next_of("awake.released").await;
    assert_eq!(event["payload"]["cause"], "released", "{event}");
    assert_eq!(event["payload"]["active"], true, "{event}");

    let (status, released) = server
        .post(&one, "/api/v1/awake/release", json!({"id": first["id"]}))
        .await;
    assert_eq!(status, 200, "{released}");
    let calls = saver.calls();
    assert_eq!(calls.inhibit.len(), 1, "{calls:?}");
    assert_eq!(calls.uninhibit, [cookie], "{calls:?}");
    let event = events.next_of("awake.released").await;
    assert_eq!(event["payload"]["hold"]["id"], first["id"], "{event}");
    assert_eq!(event["payload"]["active"], false, "{event}");
    let (_, state) = server.get(&one, "/api/v1/awake/status").await;
    assert_eq!(state, json!({"active": false, "holds": []}));
    drop(events);
    drop(server);

    // A session that goes away without releasing: its hold ends when it expires. (The shortest
    // TTL that leaves time for the acquire after the handshake on a busy machine.)
    install.set_config("session-ttl-seconds = 3\n");
    let server = Server::start_in_place(&install, &bus_env);
    // An observer that keeps its own session alive, to see the release on the event socket.
    let observer = server.handshake().await;
    let mut events = Events::connect(&server, &observer).await;
    let refresher = tokio::spawn({
        let (http, url) = (server.http.clone(), server.url("/api/v1/session/refresh"));
        let mut token = observer;
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Ok(response) = http
                    .post(&url)
                    .json(&json!({"sessionToken": token}))
                    .send()
                    .await
                else {
                    return;
                };
                let Ok(body) = response.json::<Value>().await else {
                    return;
                };
                match body["sessionToken"].as_str() {
                    Some(new) => token = new.to_string(),
                    None => return,
                }
            }
        }
    });
    let forgetful = server.handshake().await;
    let (status, hold) = server
        .post(
            &forgetful,
            "/api/v1/awake/acquire",
            json!({"reason": "left running"}),
        )
        .await;
    assert_eq!(status, 200, "{hold}");
    let calls = saver.calls();
    assert_eq!(calls.inhibit.len(), 2, "{calls:?}");
    let cookie = calls.inhibit[1].2;
    // No refresh: the session expires, the sweep releases its hold and gives the inhibition back.
    let event = events.next_of("awake.released").await;
    assert_eq!(event["payload"]["hold"]["id"], hold["id"], "{event}");
    assert_eq!(event["payload"]["cause"], "session-ended", "{event}");
    assert_eq!(event["payload"]["active"], false, "{event}");
    refresher.abort();
    eventually("UnInhibit after the session expired", || async {
        saver.calls().uninhibit.len() == 2
    })
    .await;
    assert_eq!(saver.calls().uninhibit[1], cookie);
    let (status, expired) = server.get(&forgetful, "/api/v1/awake/status").await;
    assert_eq!(status, 401, "{expired}");
    let newcomer = server.handshake().await;
    let (status, state) = server.get(&newcomer, "/api/v1/awake/status").await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state, json!({"active": false, "holds": []}));
    assert_eq!(saver.calls().inhibit.len(), 2);

    // Stopping capbridge (SIGTERM) while a hold is held gives the inhibition back.
    let (status, hold) = server
        .post(
            &newcomer,
            "/api/v1/awake/acquire",
            json!({"reason": "until stop"}),
        )
        .await;
    assert_eq!(status, 200, "{hold}");
    let calls = saver.calls();
    assert_eq!(calls.inhibit.len(), 3, "{calls:?}");
    let cookie = calls.inhibit[2].2;
    let mut server = server;
    let exit = server.terminate();
    assert!(exit.success(), "{exit}\n{}", server.log());
    assert_eq!(
        saver.calls().uninhibit[2..],
        [cookie],
        "{:?}",
        saver.calls()
    );
}

/// Calls through the contract recorded by `serve --record` (here `CAPBRIDGE_RECORD`) replay with
/// `capbridge replay` and touch nothing: the ScreenSaver hears nothing more.
#[tokio::test(flavor = "multi_thread")]
async fn awake_recorded_through_the_contract_replays_without_touching_the_bus() {
    let bus = Bus::start();
    let saver = ScreenSaver::default();
    let _service = saver.serve(&bus).await;
    let install = Install::shipped(&["awake"]);
    let traces = install.path().join("traces");
    let env = [
        ("DBUS_SESSION_BUS_ADDRESS", bus.address.as_str()),
        ("CAPBRIDGE_RECORD", traces.to_str().unwrap()),
    ];
    let mut server = Server::start_in_place(&install, &env);
    let token = server.handshake().await;
    let (status, hold) = server
        .post(
            &token,
            "/api/v1/awake/acquire",
            json!({"reason": "recorded"}),
        )
        .await;
    assert_eq!(status, 200, "{hold}");
    let (status, released) = server
        .post(&token, "/api/v1/awake/release", json!({"id": hold["id"]}))
        .await;
    assert_eq!(status, 200, "{released}");
    assert!(server.terminate().success());
    let recorded = saver.calls();
    assert_eq!(
        (recorded.inhibit.len(), recorded.uninhibit.len()),
        (1, 1),
        "{recorded:?}"
    );

    let mut files: Vec<PathBuf> = std::fs::read_dir(traces.join("awake"))
        .expect("traces/awake")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.contains("-acquire-")), "{names:?}");
    assert!(names.iter().any(|n| n.contains("-release-")), "{names:?}");
    for file in &files {
        let out = Command::new(env!("CARGO_BIN_EXE_capbridge"))
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            .arg("--components")
            .arg(install.components())
            .arg("--policies")
            .arg(install.policies())
            .arg("--cache")
            .arg(install.cache())
            .arg("replay")
            .arg(file)
            .output()
            .expect("capbridge replay runs");
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{shown}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(shown.starts_with("ok    "), "{shown}");
    }
    assert_eq!(saver.calls(), recorded, "a replay reached the ScreenSaver");
}

#[tokio::test(flavor = "multi_thread")]
async fn awake_without_dbus_service() {
    let install = Install::shipped(&["awake"]);

    // A session bus, but no org.freedesktop.ScreenSaver on it.
    let bus = Bus::start();
    let mut server = Server::start_in_place(
        &install,
        &[("DBUS_SESSION_BUS_ADDRESS", bus.address.as_str())],
    );
    let token = server.handshake().await;
    let (status, refused) = server
        .post(&token, "/api/v1/awake/acquire", json!({"reason": "build"}))
        .await;
    assert_eq!((status, code(&refused)), (503, "unavailable"), "{refused}");
    assert!(
        message(&refused).contains("org.freedesktop.ScreenSaver"),
        "{refused}"
    );
    assert_eq!(server.health().await, 200);
    let (_, state) = server.get(&token, "/api/v1/awake/status").await;
    assert_eq!(state, json!({"active": false, "holds": []}));

    // The service appears: the next acquire takes the inhibition.
    let saver = ScreenSaver::default();
    let service = saver.serve(&bus).await;
    let (status, hold) = server
        .post(&token, "/api/v1/awake/acquire", json!({"reason": "build"}))
        .await;
    assert_eq!(status, 200, "{hold}");
    assert_eq!(saver.calls().inhibit.len(), 1);

    // The service goes away while the hold is held (the desktop session's service crashed):
    // UnInhibit fails inside keepawake, which panics; the host survives it and the release
    // still succeeds.
    service
        .close()
        .await
        .expect("close the stand-in's connection");
    bus.wait_until_unowned("org.freedesktop.ScreenSaver").await;
    let (status, released) = server
        .post(&token, "/api/v1/awake/release", json!({"id": hold["id"]}))
        .await;
    assert_eq!(status, 200, "{released}");
    assert!(saver.calls().uninhibit.is_empty());
    assert!(server.alive(), "capbridge died:\n{}", server.log());
    // The case this covers: keepawake's UnInhibit failed and it panicked (in its Drop), which
    // the host caught. If keepawake stops panicking there, this check can go.
    let log = server.log();
    assert!(
        log.contains("panicked") && log.contains("keepawake"),
        "UnInhibit did not fail inside keepawake:\n{log}"
    );
    assert_eq!(server.health().await, 200);
    let (_, state) = server.get(&token, "/api/v1/awake/status").await;
    assert_eq!(state, json!({"active": false, "holds": []}));
    // And with no service, acquiring is refused again rather than pretending.
    let (status, refused) = server
        .post(&token, "/api/v1/awake/acquire", json!({"reason": "again"}))
        .await;
    assert_eq!((status, code(&refused)), (503, "unavailable"), "{refused}");
    assert_eq!(server.health().await, 200);
    drop(server);

    // The session bus address points at no socket at all.
    let missing = install.path().join("no-such-bus");
    let missing = format!("unix:path={}", missing.display());
    let mut server =
        Server::start_in_place(&install, &[("DBUS_SESSION_BUS_ADDRESS", missing.as_str())]);
    let token = server.handshake().await;
    let (status, refused) = server
        .post(&token, "/api/v1/awake/acquire", json!({"reason": "build"}))
        .await;
    assert_eq!((status, code(&refused)), (503, "unavailable"), "{refused}");
    assert!(
        message(&refused).contains("org.freedesktop.ScreenSaver"),
        "{refused}"
    );
    assert!(server.alive(), "capbridge died:\n{}", server.log());
    assert_eq!(server.health().await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn select_through_portal() {
    let bus = Bus::start();
    let portal = Portal::default();
    let _service = portal.serve(&bus).await;
    let places = tempfile::tempdir().expect("temp dir");
    let picked = places.path().join("picked");
    let sibling = places.path().join("sibling");
    std::fs::create_dir(&picked).unwrap();
    std::fs::create_dir(&sibling).unwrap();
    std::fs::write(sibling.join("secret.txt"), "not yours").unwrap();

    let install = Install::shipped(&["filesystem"]);
    // DISPLAY only tells capbridge that a desktop (and so a portal) is there; no X server needed.
    let server = Server::start_in_place(
        &install,
        &[
            ("DISPLAY", ":99"),
            ("DBUS_SESSION_BUS_ADDRESS", bus.address.as_str()),
        ],
    );
    let mine = server.handshake().await;
    let other = server.handshake().await;

    portal.answer(Answer::Pick(picked.clone()));
    let (status, selected) = server
        .post(
            &mine,
            "/api/v1/filesystem/select",
            json!({"access": "read-write"}),
        )
        .await;
    assert_eq!(status, 200, "{selected}");
    let selected = &selected["selected"];
    let name = selected["name"].as_str().expect("a pick").to_string();
    assert!(name.starts_with("picked-"), "{selected}");
    assert_eq!(
        selected["path"],
        picked.canonicalize().unwrap().display().to_string()
    );
    assert_eq!(selected["access"], "read-write");
    assert_eq!(selected["kind"], "picked");
    let calls = portal.calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].directory, "{calls:?}");
    assert!(!calls[0].title.is_empty(), "{calls:?}");
    assert!(
        calls[0]
            .request
            .starts_with("/org/freedesktop/portal/desktop/request/"),
        "{calls:?}"
    );

    let (_, targets) = server.get(&mine, "/api/v1/filesystem/targets").await;
    assert!(
        targets["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == selected),
        "{targets}"
    );
    let (status, written) = server
        .post(
            &mine,
            "/api/v1/filesystem/write",
            json!({"target": name, "path": "notes.txt", "content": "picked by a person"}),
        )
        .await;
    assert_eq!(status, 200, "{written}");
    assert_eq!(
        std::fs::read_to_string(picked.join("notes.txt")).unwrap(),
        "picked by a person"
    );
    let (status, read) = server
        .post(
            &mine,
            "/api/v1/filesystem/read",
            json!({"target": name, "path": "notes.txt"}),
        )
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["content"], "picked by a person");

    // The pick belongs to the session that made it.
    let (_, targets) = server.get(&other, "/api/v1/filesystem/targets").await;
    assert!(
        targets["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["name"] != name.as_str()),
        "{targets}"
    );
    let (status, refused) = server
        .post(
            &other,
            "/api/v1/filesystem/read",
            json!({"target": name, "path": "notes.txt"}),
        )
        .await;
    assert_eq!((status, code(&refused)), (404, "not_found"), "{refused}");
    let (status, refused) = server
        .post(
            &other,
            "/api/v1/filesystem/write",
            json!({"target": name, "path": "theirs.txt", "content": "x"}),
        )
        .await;
    assert_eq!((status, code(&refused)), (404, "not_found"), "{refused}");
    assert!(!picked.join("theirs.txt").exists());

    // The pick is the directory, not its neighbourhood.
    let (status, refused) = server
        .post(
            &mine,
            "/api/v1/filesystem/read",
            json!({"target": name, "path": "../sibling/secret.txt"}),
        )
        .await;
    assert_eq!(
        (status, code(&refused)),
        (400, "invalid_argument"),
        "{refused}"
    );
    let (status, refused) = server
        .post(
            &mine,
            "/api/v1/filesystem/write",
            json!({"target": name, "path": "../sibling/planted.txt", "content": "x"}),
        )
        .await;
    assert_eq!(
        (status, code(&refused)),
        (400, "invalid_argument"),
        "{refused}"
    );
    assert!(!sibling.join("planted.txt").exists());

    // The person cancels the dialog.
    portal.answer(Answer::Cancel);
    let (status, cancelled) = server
        .post(&mine, "/api/v1/filesystem/select", json!({}))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled, json!({"selected": null}));
    assert_eq!(portal.calls().len(), 2);
    let (_, targets) = server.get(&mine, "/api/v1/filesystem/targets").await;
    assert_eq!(targets["targets"].as_array().unwrap().len(), 2, "{targets}");

    // A single file: that file, and nothing next to it.
    let document = places.path().join("document.txt");
    std::fs::write(&document, "first draft").unwrap();
    std::fs::set_permissions(&document, std::fs::Permissions::from_mode(0o640)).unwrap();
    portal.answer(Answer::Pick(document.clone()));
    let (status, selected) = server
        .post(
            &mine,
            "/api/v1/filesystem/select",
            json!({"kind": "file", "access": "read-write"}),
        )
        .await;
    assert_eq!(status, 200, "{selected}");
    let selected = &selected["selected"];
    assert_eq!(selected["kind"], "picked-file", "{selected}");
    assert_eq!(
        selected["path"],
        document.canonicalize().unwrap().display().to_string()
    );
    assert!(!portal.calls()[2].directory, "a file picker was asked for");
    let file = selected["name"].as_str().unwrap().to_string();
    let (status, read) = server
        .post(
            &mine,
            "/api/v1/filesystem/read",
            json!({"target": file, "path": ""}),
        )
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["content"], "first draft");
    let (status, written) = server
        .post(
            &mine,
            "/api/v1/filesystem/write",
            json!({"target": file, "path": "", "content": "second draft", "mode": "overwrite"}),
        )
        .await;
    assert_eq!(status, 200, "{written}");
    assert_eq!(std::fs::read_to_string(&document).unwrap(), "second draft");
    let mode = std::fs::metadata(&document).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the replaced file keeps its permissions");
    let (status, refused) = server
        .post(
            &mine,
            "/api/v1/filesystem/write",
            json!({"target": file, "path": "", "content": "x"}),
        )
        .await;
    assert_eq!((status, code(&refused)), (409, "conflict"), "{refused}");
    for path in ["../sibling/secret.txt", "other.txt", "document.txt/x"] {
        let (status, refused) = server
            .post(
                &mine,
                "/api/v1/filesystem/read",
                json!({"target": file, "path": path}),
            )
            .await;
        assert_eq!(
            (status, code(&refused)),
            (400, "invalid_argument"),
            "{path}: {refused}"
        );
    }
    let (status, refused) = server
        .post(
            &other,
            "/api/v1/filesystem/read",
            json!({"target": file, "path": "document.txt"}),
        )
        .await;
    assert_eq!((status, code(&refused)), (404, "not_found"), "{refused}");
    // Picked read-only: readable, not writable.
    portal.answer(Answer::Pick(document.clone()));
    let (_, selected) = server
        .post(&mine, "/api/v1/filesystem/select", json!({"kind": "file"}))
        .await;
    let read_only = selected["selected"]["name"].as_str().unwrap().to_string();
    assert_eq!(selected["selected"]["access"], "read-only");
    let (status, refused) = server
        .post(
            &mine,
            "/api/v1/filesystem/write",
            json!({"target": read_only, "path": "", "content": "x", "mode": "overwrite"}),
        )
        .await;
    assert_eq!((status, code(&refused)), (403, "denied"), "{refused}");
    assert_eq!(std::fs::read_to_string(&document).unwrap(), "second draft");
    let calls_before_headless = portal.calls().len();
    drop(server);

    // Headless: no display, so no picker, even with a portal on the bus.
    let server = Server::start_in_place(
        &install,
        &[("DBUS_SESSION_BUS_ADDRESS", bus.address.as_str())],
    );
    let token = server.handshake().await;
    portal.answer(Answer::Pick(picked.clone()));
    let (status, refused) = server
        .post(
            &token,
            "/api/v1/filesystem/select",
            json!({"access": "read-only"}),
        )
        .await;
    assert_eq!((status, code(&refused)), (503, "unavailable"), "{refused}");
    assert!(message(&refused).contains("display"), "{refused}");
    assert_eq!(
        portal.calls().len(),
        calls_before_headless,
        "the portal was not asked"
    );
}

/// Starts `POST /api/v1/filesystem/write` of a pre-encoded JSON body in a task of its own;
/// the task ends with the status, or an error if capbridge died first.
fn start_write(
    server: &Server,
    token: &str,
    body: Vec<u8>,
) -> tokio::task::JoinHandle<reqwest::Result<u16>> {
    let request = server
        .http
        .post(server.url("/api/v1/filesystem/write"))
        .header(TOKEN, token)
        .header("content-type", "application/json")
        .body(body)
        .send();
    tokio::spawn(async move { request.await.map(|r| r.status().as_u16()) })
}

/// The names of the write temp files (`.<name>.capbridge-<random>.tmp`) in `dir`.
fn temp_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| {
            name.starts_with('.') && name.contains(".capbridge-") && name.ends_with(".tmp")
        })
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_write_leaves_old_or_new() {
    const ROUNDS: u32 = 15;
    const SIZE: usize = 12 * MIB;
    let install = Install::shipped(&["filesystem"]);
    let workspace = install.path().join("workspace");
    let shipped = shipped_policy("filesystem");
    let policy = shipped
        .replace(
            "host = \"~/capbridge\"",
            &format!("host = \"{}\"", workspace.display()),
        )
        .replace("memory-mib = 256", "memory-mib = 512");
    assert!(
        policy.contains(&workspace.display().to_string()) && policy.contains("memory-mib = 512"),
        "policy/filesystem.toml changed shape; adapt this test:\n{shipped}"
    );
    install.set_policy("filesystem", &policy);
    install.set_config("max-body-bytes = 67108864\n");
    let file = workspace.join("data.txt");
    let body = |path: &str, content: &str| {
        serde_json::to_vec(&json!({
            "target": "workspace",
            "path": path,
            "content": content,
            "mode": "create-or-overwrite",
        }))
        .unwrap()
    };

    let mut server = Server::start_in_place(&install, &[]);
    let token = server.handshake().await;
    let a = text("first version", 4 * MIB);
    let status = start_write(&server, &token, body("data.txt", &a))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), a);

    // How long one uninterrupted 12 MiB write takes, measured as the rounds run it: the first
    // write of a freshly started bridge, the body encoded beforehand (to another file).
    drop(server);
    server = Server::start_in_place(&install, &[]);
    let token = server.handshake().await;
    let probe = body("probe.txt", &text("probe", SIZE));
    let started = Instant::now();
    let status = start_write(&server, &token, probe).await.unwrap().unwrap();
    let full = started.elapsed();
    assert_eq!(status, 200);
    drop(server);
    server = Server::start_in_place(&install, &[]);

    let mut previous = a;
    let (mut unchanged, mut replaced, mut torn_temp) = (0, 0, 0);
    let mut outcomes = Vec::new();
    for round in 0..ROUNDS {
        let b = text(&format!("round {round:02}"), SIZE);
        let encoded = body("data.txt", &b);
        // From "at once" to a little past the measured duration.
        let delay = full.mul_f64(f64::from(round) / f64::from(ROUNDS - 3));
        let temp_before = temp_files(&workspace);
        let token = server.handshake().await;
        let write = start_write(&server, &token, encoded);
        tokio::time::sleep(delay).await;
        server.kill9();
        let answered = write.await.expect("write task");
        let now = std::fs::read(&file)
            .unwrap_or_else(|e| panic!("round {round}: the file is missing after the kill: {e}"));
        let outcome = if now == b.as_bytes() {
            replaced += 1;
            previous = b;
            "new"
        } else if now == previous.as_bytes() {
            assert!(
                !matches!(answered, Ok(200)),
                "round {round}: the write was confirmed (200) but the file is the old content"
            );
            unchanged += 1;
            "old"
        } else {
            panic!(
                "round {round} (kill after {delay:?}): the file is neither the old nor the new \
                 content: {} bytes, starting {:?}",
                now.len(),
                String::from_utf8_lossy(&now[..now.len().min(40)])
            );
        };
        // A temp file left by this round: the kill came while the write was under way.
        let left = temp_files(&workspace).len() > temp_before.len();
        torn_temp += usize::from(left);
        outcomes.push(format!(
            "{round:2}: kill after {delay:>12?} -> {outcome} (client saw {}){}",
            match &answered {
                Ok(status) => status.to_string(),
                Err(_) => "no answer".into(),
            },
            if left { "; left a temp file" } else { "" }
        ));
        server = Server::start_in_place(&install, &[]);
    }

    // The restarted bridge serves the surviving content.
    let token = server.handshake().await;
    let (status, read) = server
        .post(
            &token,
            "/api/v1/filesystem/read",
            json!({"target": "workspace", "path": "data.txt", "maxBytes": 16 * MIB}),
        )
        .await;
    assert_eq!(status, 200, "{}", message(&read));
    assert!(
        read["content"] == previous.as_str(),
        "served content differs"
    );

    let leftovers = temp_files(&workspace);
    println!("uninterrupted 12 MiB write (fresh bridge): {full:?}");
    for line in &outcomes {
        println!("  round {line}");
    }
    println!(
        "{ROUNDS} killed writes: {unchanged} left the file unchanged (killed before the rename), \
         {replaced} had completed; {torn_temp} round(s) were killed while writing the temp file; \
         {} leftover temp file(s): {leftovers:?}",
        leftovers.len()
    );
    assert_eq!(unchanged + replaced, ROUNDS);
}

/// Heavy audit writing, then SIGKILL: every write the bridge acknowledged (a 200) has its
/// `file.written` entry in the audit log, which still loads after the crash.
#[tokio::test(flavor = "multi_thread")]
async fn audit_entries_of_acknowledged_requests_survive_kill_9() {
    const WORKERS: usize = 8;
    let install = Install::shipped(&["filesystem"]);
    let workspace = install.path().join("workspace");
    let shipped = shipped_policy("filesystem");
    let policy = shipped.replace(
        "host = \"~/capbridge\"",
        &format!("host = \"{}\"", workspace.display()),
    );
    assert!(
        policy.contains(&workspace.display().to_string()),
        "adapt this test:\n{shipped}"
    );
    install.set_policy("filesystem", &policy);
    let mut server = Server::start_in_place(&install, &[]);
    let token = server.handshake().await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (http, url, token, stop) = (
            server.http.clone(),
            server.url("/api/v1/filesystem/write"),
            token.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let path = format!("w{worker}-{i}.txt");
                let sent = http
                    .post(&url)
                    .header(TOKEN, &token)
                    .json(&json!({"target": "workspace", "path": path, "content": "x"}))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == 200 => acknowledged.push(path),
                    Ok(response) => panic!("write {path}: {}", response.status()),
                    // The kill: whatever was in flight was not acknowledged.
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    stop.store(true, Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    for worker in workers {
        acknowledged.extend(worker.await.unwrap());
    }
    assert!(
        acknowledged.len() > 20,
        "too few writes to mean anything: {}",
        acknowledged.len()
    );

    // A new start reads the log (a torn last line is cut) and goes on appending.
    let mut again = Server::start_in_place(&install, &[]);
    again.handshake().await;
    assert!(again.terminate().success());
    // The lines are the record (the SQLite projection is rebuilt from them).
    let log = install
        .home()
        .join(".local/share/capbridge/state/audit/audit.jsonl");
    let recorded: std::collections::HashSet<String> = std::fs::read_to_string(&log)
        .expect("the audit log")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("whole entries only"))
        .filter(|e| e["kind"] == "file.written")
        .map(|e| e["detail"]["path"].as_str().unwrap().to_string())
        .collect();
    eprintln!(
        "{} writes acknowledged, {} recorded",
        acknowledged.len(),
        recorded.len()
    );
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|p| !recorded.contains(*p))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but not in the audit log: {lost:?}"
    );
}
