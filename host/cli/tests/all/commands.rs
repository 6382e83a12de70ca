//! `capbridge serve` running commands for the web app, with the person answering where a person
//! would: in the terminal running `serve` (a real pseudo-terminal, through util-linux `script`)
//! and with `capbridge prompts` from another terminal, over the prompt socket.
//!
//! Everything is real: the binary, the shipped `commands` component and policy (its working
//! directory moved into the test's own directory), HTTP, the event WebSocket, child processes
//! (looked for in /proc), the rules file, SIGKILL. Each test has its own HOME, XDG_DATA_HOME
//! (the rules file lives in `$XDG_DATA_HOME/capbridge/state`) and private XDG_RUNTIME_DIR (the
//! prompt socket `$XDG_RUNTIME_DIR/capbridge/prompts-<port>.sock`), so nothing touches the
//! person's real ones and no test sees another's prompts. Every wait is bounded; every process
//! a test starts is killed when its guard drops, panic or not. (The routes themselves are covered
//! in-process by the workspace's tests/all/commands.rs; here is what only the binary shows.)

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capbridge_tests::{component, shared_cache_dir, shipped_policy, Socket, TOKEN_HEADER};
use futures_util::StreamExt as _;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// How long `serve` may take to print its address (a first start compiles the component).
const START: Duration = Duration::from_secs(180);
/// How long anything else may take.
const WAIT: Duration = Duration::from_secs(30);

/// One person's machine, all in temporary directories: HOME, the XDG directories, the
/// components and policy, the config file, and the directory commands run in.
pub(crate) struct Home {
    dir: tempfile::TempDir,
    /// `XDG_RUNTIME_DIR`: a directory of its own, private (0700) as a login session's is.
    runtime_dir: tempfile::TempDir,
}

impl Home {
    /// The shipped commands component and policy, the policy's `working-directories = ["~"]`
    /// replaced by this home's `work` directory.
    pub(crate) fn new() -> Home {
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in [
            "home",
            "data",
            "config",
            "cache",
            "components",
            "policy",
            "work",
        ] {
            std::fs::create_dir(dir.path().join(sub)).expect("layout");
        }
        let runtime_dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(runtime_dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("a runtime dir is private");
        let home = Home { dir, runtime_dir };
        std::fs::copy(
            component("commands"),
            home.path().join("components/commands.wasm"),
        )
        .expect("copy the component");
        let shipped = shipped_policy("commands");
        let line = r#"working-directories = ["~"]"#;
        assert!(
            shipped.contains(line),
            "policy/commands.toml changed:\n{shipped}"
        );
        let work = serde_json::to_string(home.work().to_str().unwrap()).unwrap();
        std::fs::write(
            home.path().join("policy/commands.toml"),
            shipped.replace(line, &format!("working-directories = [{work}]")),
        )
        .expect("write the policy");
        home
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    fn work(&self) -> PathBuf {
        self.path().join("work")
    }

    /// `$XDG_DATA_HOME/capbridge/state`, where the whitelist rules are kept.
    fn state_dir(&self) -> PathBuf {
        self.path().join("data/capbridge/state")
    }

    fn rules_file(&self) -> PathBuf {
        self.state_dir().join("command-rules.json")
    }

    /// The whole environment of every capbridge process of this home.
    fn env(&self) -> Vec<(&'static str, OsString)> {
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        vec![
            ("PATH", path),
            ("HOME", self.path().join("home").into()),
            ("XDG_DATA_HOME", self.path().join("data").into()),
            ("XDG_CONFIG_HOME", self.path().join("config").into()),
            ("XDG_CACHE_HOME", self.path().join("cache").into()),
            ("XDG_RUNTIME_DIR", self.runtime_dir.path().into()),
            ("CAPBRIDGE_LOG", "info".into()),
        ]
    }

    /// `capbridge` and its global options (one compile cache shared by all tests, so the
    /// component compiles once per test run).
    fn argv(&self) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec![env!("CARGO_BIN_EXE_capbridge").into()];
        for (flag, dir) in [
            ("--components", self.path().join("components")),
            ("--policies", self.path().join("policy")),
            ("--cache", shared_cache_dir()),
            ("--config", self.path().join("config.toml")),
        ] {
            argv.push(flag.into());
            argv.push(dir.into());
        }
        argv
    }

    /// `capbridge <global options>` with this home's environment and nothing else.
    pub(crate) fn capbridge(&self) -> Command {
        self.wrapped(&[])
    }

    /// [`Home::capbridge`] started through `wrapper` (e.g. `setpriv …`).
    fn wrapped(&self, wrapper: &[&str]) -> Command {
        let argv = self.argv();
        let mut words = wrapper.iter().map(OsString::from).chain(argv);
        let mut command = Command::new(words.next().unwrap());
        command.args(words).env_clear().envs(self.env());
        command
    }

    /// `capbridge prompts --port <port> <args>`, as the person types it in another terminal.
    async fn prompts(&self, port: u16, args: &[&str]) -> std::process::Output {
        self.prompts_as(&[], port, args).await
    }

    async fn prompts_as(&self, wrapper: &[&str], port: u16, args: &[&str]) -> std::process::Output {
        let mut command = self.wrapped(wrapper);
        command
            .args(["prompts", "--port", &port.to_string()])
            .args(args)
            .stdin(Stdio::null());
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        tokio::time::timeout(WAIT, command.output())
            .await
            .unwrap_or_else(|_| panic!("capbridge prompts {args:?} did not end in {WAIT:?}"))
            .expect("capbridge prompts runs")
    }
}

/// Where `serve`'s standard input comes from.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Stdin {
    /// A pseudo-terminal (`script`), as when a person runs it in a terminal: it asks there.
    Terminal,
    /// Nothing (`/dev/null`), as under a service manager: only `capbridge prompts` answers.
    Null,
}

/// Everything a process printed, collected by a thread as it comes.
#[derive(Clone, Default)]
struct Printed(Arc<Mutex<Vec<u8>>>);

impl Printed {
    fn collect(&self, mut from: impl std::io::Read + Send + 'static) {
        let buffer = self.0.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = from.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buffer.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
    }

    /// Where the output is now, for [`Printed::since`].
    fn mark(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// What was printed after `mark`, as text (a terminal's `\r` removed).
    fn since(&self, mark: usize) -> String {
        let bytes = self.0.lock().unwrap();
        String::from_utf8_lossy(&bytes[mark.min(bytes.len())..]).replace('\r', "")
    }

    /// Waits until what was printed after `mark` contains `what`; returns it.
    async fn wait_for(&self, mark: usize, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.since(mark);
            if text.contains(what) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{what:?} was not printed within {WAIT:?}; printed:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A running `capbridge serve --port 0` of a [`Home`], with a contract session. Dropping it kills
/// capbridge and everything it started (SIGKILL), panic or not.
pub(crate) struct Serve {
    child: Child,
    /// The terminal's keyboard ([`Stdin::Terminal`]).
    keyboard: Option<ChildStdin>,
    /// What appeared on its terminal ([`Stdin::Terminal`]: stdout and stderr), or its stdout.
    printed: Printed,
    /// Its stderr ([`Stdin::Null`]), or `script`'s own.
    log: PathBuf,
    pub(crate) port: u16,
    token: String,
    http: reqwest::Client,
}

impl Serve {
    pub(crate) async fn start(home: &Home, stdin: Stdin) -> Serve {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let log = home.path().join(format!(
            "serve-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut command = match stdin {
            Stdin::Terminal => {
                // `script` runs the command on a new pseudo-terminal and copies our writes to
                // its stdin onto it, as keystrokes. `exec`: capbridge is script's child.
                let mut line = String::from("exec");
                for word in home
                    .argv()
                    .iter()
                    .chain(&["serve".into(), "--port".into(), "0".into()])
                {
                    let word = word.to_str().expect("UTF-8 paths");
                    line.push_str(&format!(" '{}'", word.replace('\'', r"'\''")));
                }
                let mut command = Command::new("script");
                command
                    .args(["-qfec", &line, "/dev/null"])
                    .env_clear()
                    .envs(home.env())
                    .env("TERM", "dumb")
                    .stdin(Stdio::piped());
                command
            }
            Stdin::Null => {
                let mut command = home.capbridge();
                command.args(["serve", "--port", "0"]).stdin(Stdio::null());
                command
            }
        };
        command
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = command.spawn().expect("capbridge serve starts");
        let printed = Printed::default();
        printed.collect(child.stdout.take().expect("stdout"));
        let mut serve = Serve {
            keyboard: child.stdin.take(),
            child,
            printed,
            log,
            port: 0,
            token: String::new(),
            http: reqwest::Client::builder().timeout(WAIT).build().unwrap(),
        };
        serve.port = serve.address().await;
        let (status, body) = serve
            .send(serve.http.post(serve.url("/api/v1/session/handshake")))
            .await
            .expect("handshake");
        assert_eq!(status, 200, "handshake: {body}");
        serve.token = body["sessionToken"]
            .as_str()
            .expect("sessionToken")
            .to_string();
        serve
    }

    /// Waits for `capbridge listening on http://127.0.0.1:<port>` and returns the port.
    async fn address(&mut self) -> u16 {
        const SAYS: &str = "capbridge listening on http://127.0.0.1:";
        let deadline = Instant::now() + START;
        loop {
            let text = self.printed.since(0);
            if let Some(at) = text.find(SAYS) {
                let digits: String = text[at + SAYS.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let (Ok(port), true) = (digits.parse(), text[at..].contains('\n')) {
                    return port;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "capbridge serve exited ({status}) before printing its address:\n{text}\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no address within {START:?}:\n{text}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value), reqwest::Error> {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    async fn try_get(&self, path: &str) -> Result<(u16, Value), reqwest::Error> {
        self.send(
            self.http
                .get(self.url(path))
                .header(TOKEN_HEADER, &self.token),
        )
        .await
    }

    async fn try_post(&self, path: &str, body: Value) -> Result<(u16, Value), reqwest::Error> {
        self.send(
            self.http
                .post(self.url(path))
                .header(TOKEN_HEADER, &self.token)
                .json(&body),
        )
        .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.try_get(path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.try_post(path, body)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// `POST …/execute` of `template`.
    async fn execute(&self, template: Value) -> (u16, Value) {
        self.post(
            "/api/v1/system/commands/execute",
            json!({ "template": template }),
        )
        .await
    }

    /// Executes `template`, which must be accepted; returns the run.
    async fn asks(&self, template: Value) -> Value {
        let (status, run) = self.execute(template).await;
        assert_eq!(status, 200, "{run}");
        run
    }

    /// The run `id` now, with its output.
    async fn run(&self, id: &str) -> Value {
        let (status, run) = self
            .get(&format!("/api/v1/system/commands/runs/{id}"))
            .await;
        assert_eq!(status, 200, "{run}");
        run
    }

    /// Waits until run `id` is over; returns it with its output.
    async fn ended(&self, id: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let run = self.run(id).await;
            if !matches!(run["status"].as_str(), Some("running" | "pending_approval")) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} did not end within {WAIT:?}: {run}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn rules(&self) -> Vec<Value> {
        let (status, body) = self.get("/api/v1/system/permissions/commands").await;
        assert_eq!(status, 200, "{body}");
        body["rules"].as_array().expect("rules").clone()
    }

    /// The event WebSocket of this session.
    async fn events(&self) -> Socket {
        let url = format!(
            "ws://127.0.0.1:{}/ws/v1/events?sessionToken={}",
            self.port, self.token
        );
        let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("the event socket opens in time")
            .expect("the event socket opens");
        socket
    }

    /// Types `line` and Enter in the terminal running `serve`, as a person does: after reading
    /// what is shown (the prompter ignores what is typed within 300 ms of a prompt appearing).
    fn type_line(&mut self, line: &str) {
        std::thread::sleep(Duration::from_millis(500));
        let keyboard = self.keyboard.as_mut().expect("serve runs in a terminal");
        keyboard
            .write_all(format!("{line}\n").as_bytes())
            .expect("type");
        keyboard.flush().expect("type");
    }

    /// SIGKILL to capbridge (not in a terminal: the child is capbridge itself), then reaps it.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        kill_tree(self.child.id());
        if self.keyboard.is_some() {
            // `script` reaps capbridge and exits by itself: let it, rather than leave a zombie
            // capbridge to init.
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.kill9();
        if std::thread::panicking() {
            let text = self.printed.since(0);
            let log = self.log();
            eprintln!(
                "--- capbridge serve (port {}) printed ---\n{}\n--- its log ---\n{}",
                self.port,
                &text[text.floor_char_boundary(text.len().saturating_sub(8000))..],
                &log[log.floor_char_boundary(log.len().saturating_sub(8000))..],
            );
        }
    }
}

/// One process of /proc: its id, parent and arguments.
struct Proc {
    pid: i32,
    ppid: i32,
    args: Vec<String>,
}

fn processes() -> Vec<Proc> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let (Ok(stat), Ok(cmdline)) = (
            std::fs::read_to_string(entry.path().join("stat")),
            std::fs::read(entry.path().join("cmdline")),
        ) else {
            continue; // gone meanwhile
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        let args = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        found.push(Proc { pid, ppid, args });
    }
    found
}

/// Processes (a zombie has no arguments, so it is not one) whose arguments are exactly `args`.
fn running(args: &[&str]) -> Vec<i32> {
    processes()
        .into_iter()
        .filter(|p| p.args == args)
        .map(|p| p.pid)
        .collect()
}

/// Processes whose command line (arguments joined by spaces) contains `needle`.
fn running_with(needle: &str) -> Vec<String> {
    let me = std::process::id() as i32;
    processes()
        .into_iter()
        .filter(|p| p.pid != me && p.args.join(" ").contains(needle))
        .map(|p| format!("{} {}", p.pid, p.args.join(" ")))
        .collect()
}

fn kill(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        // ESRCH: already gone.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// SIGKILL to every descendant of `root` (not `root` itself).
fn kill_tree(root: u32) {
    let all = processes();
    let mut family = vec![root as i32];
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        family.extend(all.iter().filter(|p| p.ppid == parent).map(|p| p.pid));
        i += 1;
    }
    family.iter().skip(1).for_each(|pid| kill(*pid));
}

/// Kills, when dropped, every process whose arguments are one of these: what a test expects
/// to be gone, in case it is not.
struct Reaper(Vec<Vec<String>>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for args in &self.0 {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            running(&args).into_iter().for_each(kill);
        }
    }
}

/// Polls `check` until it holds, at most `limit`; whether it did.
async fn within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next event on `socket` about run `run` (others are skipped).
async fn next_event_of(socket: &mut Socket, run: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no event about {run} within {WAIT:?}"))
            .expect("the event socket is open")
            .expect("a message");
        if let Message::Text(text) = message {
            let event: Value = serde_json::from_str(&text).expect("events are JSON");
            if event["payload"]["runId"] == run {
                return event;
            }
        }
    }
}

fn id_of(run: &Value, field: &str) -> String {
    run[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {run}"))
        .to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// What the terminal shows when it asks.
const ASKS: &str = "answer [o]nce, [a]lways (whitelist), [r]eject: ";

#[tokio::test(flavor = "multi_thread")]
async fn a_new_user_approves_from_the_serve_terminal() {
    let home = Home::new();
    let mut serve = Serve::start(&home, Stdin::Terminal).await;
    let mut events = serve.events().await;
    let git_version = json!({ "program": "git", "args": ["--version"] });

    // No rule yet: the run waits, and the terminal asks, showing the command.
    let mark = serve.printed.mark();
    let run = serve.asks(git_version.clone()).await;
    assert_eq!(run["status"], "pending_approval", "{run}");
    let (id, request) = (id_of(&run, "id"), id_of(&run, "requestId"));
    let shown = serve.printed.wait_for(mark, ASKS).await;
    assert!(
        shown.contains(&format!(
            "commands wants to run a command (prompt {request}"
        )),
        "{shown}"
    );
    assert!(shown.contains("\n    git --version\n"), "{shown}");
    assert!(
        shown.contains(&format!("in {}", home.work().display())),
        "{shown}"
    );
    serve.type_line("o");
    serve
        .printed
        .wait_for(mark, &format!("prompt {request} answered: allow once"))
        .await;
    let done = serve.ended(&id).await;
    assert_eq!(
        (&done["status"], &done["approval"]),
        (&json!("completed"), &json!("once")),
        "{done}"
    );
    assert!(
        done["stdout"].as_str().unwrap().starts_with("git version"),
        "{done}"
    );
    assert!(serve.rules().await.is_empty(), "once is not a rule");

    // Once was once: it asks again. Always: it runs, and a rule now allows it.
    let mark = serve.printed.mark();
    let run = serve.asks(git_version.clone()).await;
    assert_eq!(run["status"], "pending_approval", "{run}");
    let (id, request) = (id_of(&run, "id"), id_of(&run, "requestId"));
    let shown = serve.printed.wait_for(mark, ASKS).await;
    assert!(shown.contains(&format!("(prompt {request}")), "{shown}");
    serve.type_line("a");
    serve
        .printed
        .wait_for(
            mark,
            &format!("prompt {request} answered: allow and whitelist"),
        )
        .await;
    let done = serve.ended(&id).await;
    assert_eq!(
        (&done["status"], &done["approval"]),
        (&json!("completed"), &json!("whitelist")),
        "{done}"
    );
    assert!(
        done["stdout"].as_str().unwrap().starts_with("git version"),
        "{done}"
    );
    let rules = serve.rules().await;
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["id"], done["ruleId"]);
    assert_eq!(rules[0]["template"]["program"], "git");
    assert_eq!(rules[0]["template"]["args"], json!(["--version"]));
    assert_eq!(rules[0]["createdBy"], "terminal");

    // The rule: running at once, and the terminal asks nothing.
    let mark = serve.printed.mark();
    let run = serve.asks(git_version.clone()).await;
    assert_eq!(
        (&run["status"], &run["approval"]),
        (&json!("running"), &json!("rule")),
        "{run}"
    );
    assert_eq!(run["ruleId"], rules[0]["id"]);
    assert!(run["requestId"].is_null(), "{run}");
    let done = serve.ended(&id_of(&run, "id")).await;
    assert!(
        done["stdout"].as_str().unwrap().starts_with("git version"),
        "{done}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let printed = serve.printed.since(mark);
    assert!(
        !printed.contains("wants to run") && !printed.contains(ASKS),
        "asked anyway:\n{printed}"
    );

    // A long command's output arrives while it runs; terminate ends it and all it started.
    // (The sleep's odd length marks this command's processes in /proc.)
    let script = "for i in $(seq 1 1000); do echo line $i; sleep 0.0137; done";
    let mark = serve.printed.mark();
    let run = serve
        .asks(json!({ "program": "sh", "args": ["-c", script] }))
        .await;
    let id = id_of(&run, "id");
    serve.printed.wait_for(mark, ASKS).await;
    serve.type_line("o");
    let (mut chunks, mut output) = (0, String::new());
    while chunks < 5 {
        let event = next_event_of(&mut events, &id).await;
        match event["type"].as_str().unwrap() {
            "system.command.stdout" => {
                assert_eq!(event["payload"]["encoding"], "utf-8", "{event}");
                output.push_str(event["payload"]["data"].as_str().unwrap());
                chunks += 1;
            }
            "system.command.completed" | "system.command.failed" | "system.command.terminated" => {
                panic!("the run ended before its output was seen: {event}")
            }
            _ => {}
        }
    }
    assert!(output.starts_with("line 1\nline 2\n"), "{output}");
    let now = serve.run(&id).await;
    assert_eq!(
        now["status"], "running",
        "5 output events arrived while it ran: {now}"
    );
    assert!(
        !running_with("0.0137").is_empty(),
        "the command's processes are in /proc"
    );
    let (status, ended) = serve
        .post(
            &format!("/api/v1/system/commands/runs/{id}/terminate"),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, &ended["status"]),
        (200, &json!("terminated")),
        "{ended}"
    );
    loop {
        let event = next_event_of(&mut events, &id).await;
        if event["type"] == "system.command.terminated" {
            break;
        }
        assert_ne!(event["type"], "system.command.completed", "{event}");
    }
    // Terminate answers once the run has ended: nothing of it is left (a little slack for
    // the kernel to finish tearing down the run's processes).
    let gone = within(Duration::from_secs(2), || running_with("0.0137").is_empty()).await;
    assert!(gone, "left behind: {:?}", running_with("0.0137"));

    // A request that could steer the program is refused before anyone is asked.
    let mark = serve.printed.mark();
    let (status, body) = serve
        .execute(json!({ "program": "env", "env": { "LD_PRELOAD": "/tmp/x.so" } }))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("bridge_policy_denied")),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let printed = serve.printed.since(mark);
    assert!(
        !printed.contains("wants to run") && !printed.contains(ASKS),
        "asked:\n{printed}"
    );
    let listed = home.prompts(serve.port, &["list", "--json"]).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&listed.stdout).ok(),
        Some(json!([])),
        "{listed:?}"
    );

    // The audit log has all of it, as `capbridge audit` shows the person.
    let out = home
        .capbridge()
        .args(["audit", "--json", "--limit", "1000"])
        .output()
        .expect("capbridge audit runs");
    assert!(out.status.success(), "{out:?}");
    let entries: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON entry per line"))
        .collect();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "component.loaded",
        "session.opened",
        "prompt.asked",
        "prompt.decided",
        "rule.created",
        "process.allowed",
        "process.started",
        "process.ended",
        "process.terminated",
        "process.refused",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    let created = entries
        .iter()
        .find(|e| e["kind"] == "rule.created")
        .unwrap();
    assert_eq!(created["detail"]["by"], "terminal", "{created}");
    assert_eq!(created["detail"]["command"], "git --version", "{created}");
    let refused = entries
        .iter()
        .find(|e| e["kind"] == "process.refused")
        .unwrap();
    assert_eq!(refused["outcome"], "denied", "{refused}");
    assert_eq!(refused["detail"]["program"], "env", "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prompts_cli_lists_and_answers_over_the_socket() {
    let home = Home::new();
    let serve = Serve::start(&home, Stdin::Null).await;
    let port = serve.port;

    // Listed with its summary, allowed: it runs.
    let run = serve
        .asks(json!({ "program": "echo", "args": ["one", "two words"] }))
        .await;
    assert_eq!(run["status"], "pending_approval", "{run}");
    let (id, request) = (id_of(&run, "id"), id_of(&run, "requestId"));
    let out = home.prompts(port, &["list", "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let listed: Value = serde_json::from_slice(&out.stdout).expect("list --json prints JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["id"], request.as_str());
    assert_eq!(listed[0]["runId"], id.as_str());
    assert_eq!(listed[0]["summary"], "echo one 'two words'");
    assert_eq!(listed[0]["cwd"], home.work().to_str().unwrap());
    let out = home.prompts(port, &["list"]).await;
    let shown = text(&out.stdout);
    assert!(
        shown.contains(&format!(
            "commands wants to run a command (prompt {request}"
        )),
        "{shown}"
    );
    assert!(shown.contains("    echo one 'two words'"), "{shown}");
    let out = home.prompts(port, &["allow", &request]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout).trim(), format!("{request}: allow once"));
    let done = serve.ended(&id).await;
    assert_eq!(
        (&done["status"], &done["approval"]),
        (&json!("completed"), &json!("once")),
        "{done}"
    );
    assert_eq!(done["stdout"], "one two words\n");
    // Answered: no longer listed, and cannot be answered twice.
    let out = home.prompts(port, &["list", "--json"]).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).ok(),
        Some(json!([])),
        "{out:?}"
    );
    let out = home.prompts(port, &["reject", &request]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains(&format!("no pending prompt `{request}`")),
        "{out:?}"
    );

    // A process of another user can neither list nor answer the prompts.
    let run = serve
        .asks(json!({ "program": "echo", "args": ["three"] }))
        .await;
    let (id, request) = (id_of(&run, "id"), id_of(&run, "requestId"));
    let socket = home
        .runtime_dir
        .path()
        .join(format!("capbridge/prompts-{port}.sock"));
    assert!(
        socket.exists(),
        "the prompt socket is at {}",
        socket.display()
    );
    if is_root() {
        let nobody = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ];
        // First wall: the socket's directory (and XDG_RUNTIME_DIR) are 0700, so another user's
        // process cannot even reach the socket: connect fails with EACCES before capbridge
        // sees anything.
        let out = home.prompts_as(&nobody, port, &["list"]).await;
        assert!(!out.status.success(), "{out:?}");
        assert!(text(&out.stderr).contains("Permission denied"), "{out:?}");
        // Second wall, should the directories ever be opened up: the socket itself checks the
        // caller's user id (SO_PEERCRED) and answers only its own user.
        let open = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let dir = socket.parent().unwrap();
        open(home.runtime_dir.path(), 0o711);
        open(dir, 0o711);
        open(&socket, 0o666);
        let list = home.prompts_as(&nobody, port, &["list"]).await;
        let allow = home.prompts_as(&nobody, port, &["allow", &request]).await;
        open(&socket, 0o600);
        open(dir, 0o700);
        open(home.runtime_dir.path(), 0o700);
        for out in [list, allow] {
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            // The bridge answers a refused caller without reading its request, so the caller
            // may find the socket closed while it still writes (EPIPE) and never read the
            // reason: either way it is refused, which the bridge's audit log shows.
            let said = text(&out.stderr);
            assert!(
                said.contains("answers only its own user") || said.contains("Broken pipe"),
                "{out:?}"
            );
        }
        let refused = "prompt socket: refused a caller of another user peer_uid=65534";
        assert_eq!(serve.log().matches(refused).count(), 2, "{}", serve.log());
    } else {
        eprintln!("not root: cannot switch to another user to try the prompt socket; skipped");
    }
    assert_eq!(
        serve.run(&id).await["status"],
        "pending_approval",
        "still waiting for its person"
    );

    // Rejected: it never runs.
    let out = home.prompts(port, &["reject", &request]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout).trim(), format!("{request}: reject"));
    let done = serve.ended(&id).await;
    assert_eq!(
        (&done["status"], &done["rejection"]),
        (&json!("rejected"), &json!("rejected_by_user")),
        "{done}"
    );
    assert!(
        done["startedAtMs"].is_null() && done["stdout"] == "",
        "{done}"
    );

    // No bridge on that port: a clear message, and failure.
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = home.prompts(unused, &["list"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = text(&out.stderr);
    assert!(said.contains("no capbridge answers prompts at"), "{said}");
    assert!(
        said.contains(&format!("running on port {unused}")),
        "{said}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn capbridge_killed_with_sigkill_leaves_no_child_behind() {
    // Numbers of this test process, so that what an earlier run left is not taken for ours.
    let n = 900_000 + std::process::id() % 40_000 * 2;
    let (detached, grouped) = (n.to_string(), (n + 1).to_string());
    let script = format!("setsid sleep {detached} & sleep {grouped} & wait");
    let _reaper = Reaper(vec![
        vec!["sleep".into(), detached.clone()],
        vec!["sleep".into(), grouped.clone()],
    ]);
    let home = Home::new();
    // A rule the person made earlier: the run starts without a prompt.
    let template =
        json!({ "program": "sh", "args": ["-c", script], "cwd": null, "env": [], "stdin": null });
    std::fs::create_dir_all(home.state_dir()).unwrap();
    let rules = json!({ "version": 1, "rules": [{
        "id": "rule-1", "component": "commands", "template": template,
        "programPath": capbridge_tests::which("sh"),
        "createdAtMs": 1, "createdBy": "terminal",
    }]});
    std::fs::write(
        home.rules_file(),
        serde_json::to_vec_pretty(&rules).unwrap(),
    )
    .unwrap();

    let mut serve = Serve::start(&home, Stdin::Null).await;
    let run = serve
        .asks(json!({ "program": "sh", "args": ["-c", script] }))
        .await;
    assert_eq!(
        (&run["status"], &run["approval"]),
        (&json!("running"), &json!("rule")),
        "{run}"
    );
    let both = within(WAIT, || {
        !running(&["sleep", &detached]).is_empty() && !running(&["sleep", &grouped]).is_empty()
    })
    .await;
    assert!(
        both,
        "the run's two sleeps did not start: {:?}",
        running_with("sleep")
    );

    serve.kill9();
    // Where capbridge may make PID namespaces (root), the kernel ends the run's whole
    // namespace, the `setsid` one included; elsewhere a run is a process group whose direct
    // child gets SIGKILL when capbridge dies, and only that is promised.
    let namespaces = Command::new("/usr/bin/unshare")
        .args(["--pid", "--fork", "--kill-child", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if namespaces {
        let gone = within(Duration::from_secs(5), || {
            running(&["sleep", &detached]).is_empty() && running(&["sleep", &grouped]).is_empty()
        })
        .await;
        assert!(
            gone,
            "left behind after SIGKILL: {:?}",
            running_with(&n.to_string())
        );
    } else {
        let gone = within(Duration::from_secs(5), || {
            running(&["sh", "-c", &script]).is_empty()
        })
        .await;
        assert!(gone, "the run's shell outlived capbridge");
        eprintln!(
            "PID namespaces are not available here (not root?): only the run's direct child is \
             ended with capbridge; left behind (killed by this test): {:?}",
            running_with(&n.to_string())
        );
    }
}

/// The rules file as it is on disk (none: no rules), each rule checked well-formed; panics if
/// it is not the complete JSON of a version-1 rules file, or was moved aside as unreadable.
fn rules_on_disk(home: &Home) -> Vec<Value> {
    let path = home.rules_file();
    let aside = home.state_dir().join("command-rules.json.unreadable");
    assert!(
        !aside.exists(),
        "the rules file was found unreadable: {}",
        text(&std::fs::read(&aside).unwrap())
    );
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("{}: {e}", path.display()),
    };
    let file: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}):\n{}", path.display(), text(&bytes)));
    let keys = |v: &Value| {
        let mut keys: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&file), ["rules", "version"], "{file}");
    assert_eq!(file["version"], 1, "{file}");
    let rules = file["rules"].as_array().expect("rules is a list").clone();
    for (i, rule) in rules.iter().enumerate() {
        assert_eq!(
            keys(rule),
            [
                "component",
                "createdAtMs",
                "createdBy",
                "id",
                "programPath",
                "template"
            ],
            "{rule}"
        );
        assert!(
            rule["id"]
                .as_str()
                .and_then(|id| u64::from_str_radix(id.strip_prefix("rule-")?, 16).ok())
                .is_some(),
            "{rule}"
        );
        assert!(
            rules[..i].iter().all(|other| other["id"] != rule["id"]),
            "two rules {}",
            rule["id"]
        );
        assert_eq!(rule["component"], "commands", "{rule}");
        assert_eq!(rule["createdBy"], "prompts-cli", "{rule}");
        assert!(
            rule["createdAtMs"].as_u64().is_some_and(|ms| ms > 0),
            "{rule}"
        );
        let template = &rule["template"];
        assert_eq!(
            keys(template),
            ["args", "cwd", "env", "program", "stdin"],
            "{rule}"
        );
        assert_eq!(template["program"], "echo", "{rule}");
        let args = template["args"].as_array().expect("args");
        assert!(
            args.len() == 1 && args[0].as_str().is_some_and(|n| n.parse::<u64>().is_ok()),
            "{rule}"
        );
        assert_eq!(
            (&template["cwd"], &template["env"], &template["stdin"]),
            (&Value::Null, &json!([]), &Value::Null),
            "{rule}"
        );
    }
    rules
}

/// The route's rules are the file's: same ids, templates, times and authors, in order.
fn assert_served_as_on_disk(served: &[Value], on_disk: &[Value]) {
    let summary = |rule: &Value| {
        json!([
            rule["id"],
            rule["component"],
            rule["template"]["program"],
            rule["template"]["args"],
            rule["template"]["cwd"],
            rule["template"]["stdin"],
            rule["createdAtMs"],
            rule["createdBy"]
        ])
    };
    let served: Vec<Value> = served.iter().map(summary).collect();
    let on_disk: Vec<Value> = on_disk.iter().map(summary).collect();
    assert_eq!(
        served, on_disk,
        "the restarted bridge serves other rules than its file holds"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_survive_kill_9_during_rule_writes() {
    let home = Home::new();
    let mut next = 1u64;
    // Rules a run was seen started by: written to disk (and flushed) before that run started.
    let mut acknowledged: Vec<String> = Vec::new();
    let mut counts: Vec<usize> = Vec::new();
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis() as u64;
    for round in 0..5u64 {
        let serve = Serve::start(&home, Stdin::Null).await;
        let on_disk = rules_on_disk(&home);
        assert_served_as_on_disk(&serve.rules().await, &on_disk);

        // Ask and answer `always`, one request after another, until SIGKILL lands. A failure
        // is the kill's only once it has been sent; any earlier one is a failure of the test.
        let delay = Duration::from_millis(200 + (round * 157 + jitter) % 601);
        let pid = serve.child.id() as i32;
        let killed = Arc::new(AtomicBool::new(false));
        let killer = std::thread::spawn({
            let killed = killed.clone();
            move || {
                std::thread::sleep(delay);
                killed.store(true, Ordering::SeqCst);
                kill(pid);
            }
        });
        let after_kill = |what: String| {
            assert!(killed.load(Ordering::SeqCst), "before the kill, {what}");
        };
        let mut asked = 0;
        'asking: loop {
            let template = json!({ "program": "echo", "args": [next.to_string()] });
            next += 1;
            let body = json!({ "template": template });
            let run = match serve
                .try_post("/api/v1/system/commands/execute", body)
                .await
            {
                Ok((200, run)) => run,
                Ok(answer) => panic!("execute: {answer:?}"),
                Err(e) => {
                    after_kill(format!("execute: {e}"));
                    break;
                }
            };
            assert_eq!(
                run["status"], "pending_approval",
                "a new template asks: {run}"
            );
            asked += 1;
            let out = home
                .prompts(serve.port, &["always", &id_of(&run, "requestId")])
                .await;
            if !out.status.success() {
                after_kill(format!("prompts always: {out:?}"));
                break;
            }
            // The rule is on disk once the run it allowed has started.
            let path = format!("/api/v1/system/commands/runs/{}", id_of(&run, "id"));
            loop {
                let now = match serve.try_get(&path).await {
                    Ok((200, now)) => now,
                    Ok(answer) => panic!("GET {path}: {answer:?}"),
                    Err(e) => {
                        after_kill(format!("GET {path}: {e}"));
                        break 'asking;
                    }
                };
                if now["approval"] == "whitelist" {
                    acknowledged.push(id_of(&now, "ruleId"));
                    break;
                }
                assert_eq!(now["status"], "pending_approval", "{now}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        killer.join().unwrap();
        drop(serve); // reaps it

        let on_disk = rules_on_disk(&home);
        for id in &acknowledged {
            assert!(
                on_disk.iter().any(|r| r["id"] == id.as_str()),
                "rule {id} was lost: {on_disk:?}"
            );
        }
        let before = counts.last().copied().unwrap_or(0);
        assert!(
            on_disk.len() >= before,
            "rules went from {before} to {}",
            on_disk.len()
        );
        // A write the kill interrupted leaves its temporary file (never read back).
        let leftovers: Vec<String> = std::fs::read_dir(home.state_dir())
            .map(|dir| {
                dir.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name != "command-rules.json")
                    .collect()
            })
            .unwrap_or_default();
        eprintln!(
            "round {round}: SIGKILL after {delay:?}; {asked} asked, {} rules on disk; other files in the state dir: {leftovers:?}",
            on_disk.len()
        );
        counts.push(on_disk.len());
    }
    assert!(
        acknowledged.len() >= 5,
        "too few rules were written to test anything: {counts:?}"
    );
    let serve = Serve::start(&home, Stdin::Null).await;
    assert_served_as_on_disk(&serve.rules().await, &rules_on_disk(&home));
}
