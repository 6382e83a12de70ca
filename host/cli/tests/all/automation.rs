//! Screen and input (issue 14) as a person and an agent use them: capbridge on a real X server
//! (Xvfb, openbox, a private D-Bus session with the accessibility bus started on it), a real
//! GTK application (`tests/apps/controls.py`, which prints what happens to it), and the agent's
//! requests over seed 001's JSON-RPC socket or the contract. Automation is turned on as a person
//! does: answering the prompt (its window, or `capbridge prompts`).

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use crate::capabilities::{Install, Server, PATIENCE};
use crate::desktop::{prompt_title, Desktop, Running};

/// The test application's title and accessible name.
const APP_TITLE: &str = "capbridge test app";
const APP_NAME: &str = "capbridge-test-app";

/// The accessibility bus (`at-spi-bus-launcher`, which D-Bus would activate in a real session)
/// on the desktop's private bus; stopped when dropped.
fn accessibility_bus(desktop: &Desktop) -> Running {
    let launcher = "/usr/libexec/at-spi-bus-launcher";
    assert!(
        Path::new(launcher).exists(),
        "{launcher} is missing: `cargo xtask test` installs it, or run: apt-get install \
         at-spi2-core"
    );
    let running = Running(
        Command::new(launcher)
            .envs(desktop.env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("at-spi-bus-launcher starts"),
    );
    tokio::runtime::Handle::current().block_on(desktop.bus.wait_until_owned("org.a11y.Bus"));
    running
}

/// The GTK test application, and what it reports.
struct App {
    _child: Running,
    events: mpsc::Receiver<Value>,
}

impl App {
    fn start(desktop: &Desktop) -> App {
        let mut child = Command::new("/usr/bin/python3")
            .arg(root_path("host/cli/tests/apps/controls.py"))
            .envs(desktop.env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the test app (apt-get install python3-gi gir1.2-gtk-3.0)");
        let (send, events) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    if send.send(event).is_err() {
                        return;
                    }
                }
            }
        });
        let app = App {
            _child: Running(child),
            events,
        };
        app.wait_for("the app to be ready", |e| e["event"] == "ready");
        app
    }

    /// The first event from now on that `want` accepts.
    fn wait_for(&self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let left = PATIENCE.saturating_sub(start.elapsed());
            match self.events.recv_timeout(left) {
                Ok(event) if want(&event) => return event,
                Ok(_) => {}
                Err(_) => panic!("the test app never reported {what}"),
            }
        }
    }

    /// Forgets what it reported so far.
    fn drain(&self) {
        while self.events.try_recv().is_ok() {}
    }
}

fn root_path(path: &str) -> PathBuf {
    capbridge_tests::root().join(path)
}

/// Activates (raises and focuses) the window titled exactly `title`.
fn raise(desktop: &Desktop, title: &str) {
    let ids = desktop.x(&["xdotool", "search", "--name", &format!("^{title}$")]);
    let id = ids.lines().next().expect("the window").trim().to_string();
    desktop.x(&["xdotool", "windowactivate", "--sync", &id]);
}

/// One JSON-RPC request over the desktop bridge socket: the response.
async fn rpc(socket: &Path, method: &str, params: Value) -> Value {
    let request = json!({"jsonrpc": "2.0", "id": "t-1", "method": method, "params": params});
    let answer = send_line(socket, &format!("{request}\n")).await;
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"))
}

/// Sends `line` as it is; the line answered.
async fn send_line(socket: &Path, line: &str) -> String {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    stream.write_all(line.as_bytes()).await.expect("send");
    let mut answer = String::new();
    tokio::time::timeout(
        Duration::from_secs(40),
        tokio::io::BufReader::new(stream).read_line(&mut answer),
    )
    .await
    .expect("an answer within 40 s")
    .expect("read");
    answer
}

/// The `result` of a successful response.
fn ok(response: Value) -> Value {
    assert!(response.get("error").is_none(), "{response}");
    response["result"].clone()
}

/// The message of an error response (code -32000).
fn failure(response: &Value) -> String {
    assert_eq!(response["error"]["code"], -32000, "{response}");
    response["error"]["message"].as_str().unwrap().to_string()
}

/// The element of `snapshot` with `role` and `label`.
fn element<'a>(snapshot: &'a Value, role: &str, label: &str) -> &'a Value {
    snapshot["elements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["role"] == role && e["label"] == label)
        .unwrap_or_else(|| panic!("no {role} `{label}` in {snapshot}"))
}

fn reference(element: &Value) -> String {
    element["ref_id"].as_str().unwrap().to_string()
}

/// `capbridge prompts ARGS` for the server on `server.port`, as a person types it.
fn prompts(install: &Install, server: &Server, args: &[&str]) -> Value {
    let port = server.port.to_string();
    let (mut command, _) = Server::command(
        install,
        &[],
        &[&["prompts", "--port", &port], args].concat(),
    );
    let output = command.output().expect("capbridge prompts runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
}

/// Waits for the automation prompt; its id.
fn automation_prompt(install: &Install, server: &Server) -> String {
    let start = Instant::now();
    loop {
        let list = prompts(install, server, &["list", "--json"]);
        if let Some(prompt) = list
            .as_array()
            .and_then(|l| l.iter().find(|p| p["kind"] == "automation"))
        {
            assert_eq!(prompt["whitelistable"], false, "{prompt}");
            assert_eq!(prompt["component"], "desktop", "{prompt}");
            return prompt["id"].as_str().unwrap().to_string();
        }
        assert!(start.elapsed() < PATIENCE, "no automation prompt came");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Everything an agent needs: the desktop, the accessibility bus, the app, and capbridge (the
/// shell) answering on its standalone socket in the install's home.
struct Scene {
    app: App,
    server: Server,
    install: Install,
    socket: PathBuf,
    _a11y: Running,
    desktop: Desktop,
}

impl Scene {
    async fn start(test: &str) -> Scene {
        Self::start_sized(test, "1280x900x24").await
    }

    async fn start_sized(test: &str, screen: &str) -> Scene {
        let desktop = Desktop::start_sized(test, screen).await;
        let a11y = tokio::task::block_in_place(|| accessibility_bus(&desktop));
        let app = tokio::task::block_in_place(|| App::start(&desktop));
        let install = Install::everything_shipped();
        let server = desktop.shell(&install);
        tokio::task::block_in_place(|| {
            // The status window opened over the app: bring the app to the front, as a person
            // would before letting an agent use it.
            desktop.window("capbridge");
            raise(&desktop, APP_TITLE);
        });
        // No XDG_RUNTIME_DIR here: the standalone socket, in the home directory.
        let socket = install.home().join(".capbridge/bridge.sock");
        Scene {
            app,
            server,
            install,
            socket,
            _a11y: a11y,
            desktop,
        }
    }

    /// The app's snapshot, over the socket.
    async fn snapshot(&self) -> Value {
        ok(rpc(
            &self.socket,
            "desktop.snapshot",
            json!({"app_bundle_id": APP_NAME}),
        )
        .await)
    }

    /// Sends `method` and answers the automation prompt it raises with `decision` through
    /// `capbridge prompts`; the response.
    async fn first_action(&self, method: &str, params: Value, decision: &str) -> Value {
        let socket = self.socket.clone();
        let method = method.to_string();
        let call = tokio::spawn(async move { rpc(&socket, &method, params).await });
        tokio::task::block_in_place(|| {
            let id = automation_prompt(&self.install, &self.server);
            prompts(&self.install, &self.server, &[decision, &id]);
        });
        call.await.expect("the call")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_snapshots_clicks_and_types_by_ref_over_the_socket_once_a_person_allows_it() {
    let scene = Scene::start("automation-new-user").await;
    let socket = &scene.socket;
    // The socket is private: mode 0600 in a 0700 directory.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(socket), 0o600);
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert_eq!(ok(rpc(socket, "desktop.ping", json!(null)).await), "pong");

    // The snapshot names the button and the fields, with refs and frames on the screen.
    let snapshot = scene.snapshot().await;
    let press = element(&snapshot, "push button", "Press me").clone();
    let name = element(&snapshot, "text", "Name").clone();
    element(&snapshot, "password text", "Password");
    element(&snapshot, "slider", "Level");
    assert!(press["frame"]["width"].as_f64().unwrap() > 0.0, "{press}");
    let stats = &snapshot["stats"];
    assert!(
        stats["total_elements"].as_u64() > stats["interactive"].as_u64(),
        "{stats}"
    );
    assert!(stats["max_depth"].as_u64().unwrap() >= 3, "{stats}");

    // Before a person turns automation on, nothing acts; the first action asks them, in a
    // prompt window that names the component.
    let click = {
        let socket = socket.clone();
        let params = json!({"ref": reference(&press)});
        tokio::spawn(async move { rpc(&socket, "desktop.click", params).await })
    };
    tokio::task::block_in_place(|| {
        let id = automation_prompt(&scene.install, &scene.server);
        let window = scene.desktop.window(&prompt_title(&id));
        scene.desktop.find(window, "Turn automation on");
        // While a prompt is open, input is paused: a click on the prompt's Allow button from a
        // component is refused.
        let allow = {
            std::thread::sleep(Duration::from_millis(1200));
            scene.desktop.find(window, "Allow once")
        };
        let (x, y) = allow.center();
        let refused = tokio::runtime::Handle::current().block_on(rpc(
            socket,
            "desktop.click",
            json!({"x": x, "y": y}),
        ));
        assert!(
            failure(&refused).contains("paused while a prompt is open"),
            "{refused}"
        );
        scene.desktop.screenshot("automation-prompt");
        scene.desktop.click((x, y));
    });
    let clicked = ok(click.await.unwrap());
    assert!(clicked["x"].as_f64().is_some(), "{clicked}");
    scene.app.wait_for("the button's click", |e| {
        e["event"] == "clicked" && e["button"] == "Press me"
    });

    // Typing by ref fills the field, non-ASCII text included.
    let text = "Grüße, 世界: capbridge typed this";
    ok(rpc(
        socket,
        "desktop.type_text",
        json!({"ref": reference(&name), "text": text}),
    )
    .await);
    scene.app.wait_for("the typed text", |e| {
        e["field"] == "name" && e["value"] == text
    });

    // OCR reads the typed text back off the screen.
    tokio::task::block_in_place(|| {
        let start = Instant::now();
        loop {
            let read =
                tokio::runtime::Handle::current().block_on(rpc(socket, "desktop.ocr", json!({})));
            let read = ok(read);
            if read["text"].as_str().unwrap().contains("typed this") {
                break;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "OCR never read the text: {read}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    });

    // A click aimed at capbridge's own status window is refused, prompt or not.
    let status = tokio::task::block_in_place(|| scene.desktop.window("capbridge"));
    let refused = rpc(
        socket,
        "desktop.click",
        json!({"x": status.x + status.width / 2, "y": status.y + status.height / 2}),
    )
    .await;
    assert!(
        failure(&refused).contains("capbridge's own windows"),
        "{refused}"
    );

    // The status window says automation is on; its Stop button turns it off, and the next
    // action asks again.
    tokio::task::block_in_place(|| {
        let id = scene
            .desktop
            .window_id("capbridge")
            .expect("the status window");
        scene
            .desktop
            .x(&["xdotool", "windowactivate", "--sync", &id]);
        let status = scene.desktop.window("capbridge");
        scene.desktop.find(status, "Automation is on");
        let stop = scene.desktop.find(status, "Stop automation");
        scene.desktop.screenshot("automation-on");
        scene.desktop.click(stop.center());
    });
    let again = scene
        .first_action("desktop.click", json!({"ref": reference(&press)}), "reject")
        .await;
    assert!(failure(&again).contains("automation is off"), "{again}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refs_are_resolved_when_acting_and_every_action_reaches_the_app() {
    let scene = Scene::start("automation-actions").await;
    let socket = &scene.socket;
    let snapshot = scene.snapshot().await;
    let press = reference(element(&snapshot, "push button", "Press me"));
    let name = reference(element(&snapshot, "text", "Name"));
    let password = reference(element(&snapshot, "password text", "Password"));
    let vanish = reference(element(&snapshot, "push button", "Vanish"));
    let slider = element(&snapshot, "slider", "Level").clone();
    let row = reference(element(&snapshot, "list item", "Row 1"));

    let first = scene
        .first_action(
            "desktop.type_text",
            json!({"ref": name, "text": "hello"}),
            "allow",
        )
        .await;
    ok(first);
    scene.app.wait_for("hello", |e| e["value"] == "hello");
    // A key combo selects all; what is typed next replaces it.
    ok(rpc(socket, "desktop.key_combo", json!({"keys": ["ctrl", "a"]})).await);
    ok(rpc(socket, "desktop.type_text", json!({"text": "X"})).await);
    scene.app.wait_for("the field replaced", |e| {
        e["field"] == "name" && e["value"] == "X"
    });

    // The window moves after the snapshot: the ref still hits the button where it is now.
    tokio::task::block_in_place(|| {
        scene
            .desktop
            .x(&["wmctrl", "-r", APP_TITLE, "-e", "0,600,250,-1,-1"]);
        scene.desktop.wait_for("the app to move", || {
            let moved = scene.desktop.x(&["xdotool", "search", "--name", APP_TITLE]);
            let id = moved.lines().next().unwrap_or_default().trim().to_string();
            scene
                .desktop
                .placed(&id)
                .is_some_and(|g| g.x >= 600 && g.y >= 250)
        });
        raise(&scene.desktop, APP_TITLE);
    });
    scene.app.drain();
    let clicked = ok(rpc(socket, "desktop.click", json!({"ref": press})).await);
    assert!(clicked["x"].as_f64().unwrap() >= 600.0, "{clicked}");
    scene
        .app
        .wait_for("the moved button's click", |e| e["button"] == "Press me");

    // A password field takes the text; the audit log does not keep it.
    ok(rpc(
        socket,
        "desktop.type_text",
        json!({"ref": password, "text": "hunter2"}),
    )
    .await);
    scene.app.wait_for("the password", |e| {
        e["field"] == "password" && e["value"] == "hunter2"
    });

    // A destroyed element fails clearly instead of being clicked where it was.
    ok(rpc(socket, "desktop.click", json!({"ref": vanish})).await);
    scene
        .app
        .wait_for("Vanish pressed", |e| e["button"] == "Vanish");
    let gone = rpc(socket, "desktop.click", json!({"ref": vanish})).await;
    let message = failure(&gone);
    assert!(message.contains(&format!("element `{vanish}`")), "{gone}");
    assert_eq!(gone["error"]["data"]["kind"], "not-found", "{gone}");

    // Scrolling the list scrolls it.
    ok(rpc(
        socket,
        "desktop.scroll",
        json!({"ref": row, "delta_x": 0, "delta_y": 5}),
    )
    .await);
    scene.app.wait_for("the list to scroll", |e| {
        e["event"] == "scrolled" && e["value"].as_f64().unwrap_or(0.0) > 0.0
    });

    // Dragging the slider's knob to its right end moves it (taken from a fresh snapshot: the
    // window moved).
    let snapshot = scene.snapshot().await;
    let slider_now = element(&snapshot, "slider", "Level");
    assert_ne!(slider_now["frame"], slider["frame"]);
    let f = &slider_now["frame"];
    let (x, y, w, h) = (
        f["x"].as_f64().unwrap(),
        f["y"].as_f64().unwrap(),
        f["width"].as_f64().unwrap(),
        f["height"].as_f64().unwrap(),
    );
    ok(rpc(
        socket,
        "desktop.drag",
        json!({"start_x": x + 10.0, "start_y": y + h / 2.0,
               "end_x": x + w - 2.0, "end_y": y + h / 2.0, "duration_ms": 400}),
    )
    .await);
    scene.app.wait_for("the slider to move far right", |e| {
        e["event"] == "slider" && e["value"].as_f64().unwrap_or(0.0) > 80.0
    });

    // The window list shows the app; focusing it makes it the active window.
    let windows = ok(rpc(socket, "desktop.window_list", json!({})).await);
    let app = windows
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["title"] == APP_TITLE)
        .unwrap_or_else(|| panic!("no test app in {windows}"))
        .clone();
    let status = windows
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["app"] == "Capbridge")
        .unwrap_or_else(|| panic!("no status window in {windows}"))
        .clone();
    ok(rpc(
        socket,
        "desktop.focus_window",
        json!({"window_id": app["id"]}),
    )
    .await);
    let windows = ok(rpc(socket, "desktop.window_list", json!({})).await);
    assert!(
        windows
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == app["id"] && w["focused"] == true),
        "{windows}"
    );
    // capbridge's own window is not focused for a component.
    let refused = rpc(
        socket,
        "desktop.focus_window",
        json!({"window_id": status["id"]}),
    )
    .await;
    assert!(failure(&refused).contains("capbridge's own"), "{refused}");

    // The audit log has every action, the password's text withheld.
    let (mut command, _) = Server::command(
        &scene.install,
        &[],
        &["audit", "--kind", "input.*", "--json", "--limit", "100"],
    );
    let audit = command.output().expect("capbridge audit runs");
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(!audit.contains("hunter2"), "{audit}");
    assert!(audit.contains("withheld: a password field"), "{audit}");
    for kind in [
        "input.clicked",
        "input.typed",
        "input.keys_pressed",
        "input.scrolled",
        "input.dragged",
        "input.window_focused",
        "input.automation_asked",
    ] {
        assert!(audit.contains(kind), "no {kind} in {audit}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_input_interrupts_a_long_drag_and_the_socket_speaks_json_rpc() {
    let scene = Scene::start("automation-stop").await;
    let socket = &scene.socket;
    ok(scene
        .first_action("desktop.hover", json!({"x": 50, "y": 50}), "allow")
        .await);
    // A slow drag, stopped from a terminal half way.
    let drag = {
        let socket = socket.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let response = rpc(
                &socket,
                "desktop.drag",
                json!({"start_x": 20, "start_y": 20, "end_x": 60, "end_y": 20,
                       "duration_ms": 8000}),
            )
            .await;
            (response, started.elapsed())
        })
    };
    // Stopped once the pointer is on its way (the drag started, the button is down).
    tokio::task::block_in_place(|| {
        scene.desktop.wait_for("the drag to start", || {
            let at = scene.desktop.x(&["xdotool", "getmouselocation"]);
            let x: i32 = at
                .split_whitespace()
                .find_map(|w| w.strip_prefix("x:"))
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            x > 22
        })
    });
    let (mut command, _) = Server::command(
        &scene.install,
        &[],
        &["stop-input", "--port", &scene.server.port.to_string()],
    );
    let stopped = command.output().expect("capbridge stop-input runs");
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(
        String::from_utf8_lossy(&stopped.stdout).contains("automation stopped"),
        "{stopped:?}"
    );
    let (response, took) = drag.await.unwrap();
    assert!(
        failure(&response).contains("stopped by the person"),
        "{response}"
    );
    assert!(
        took < Duration::from_secs(8),
        "the drag ran to its end: {took:?}"
    );

    // Seed 001's protocol: errors as JSON-RPC 2.0 has them.
    let bad = send_line(socket, "{not json\n").await;
    let bad: Value = serde_json::from_str(&bad).unwrap();
    assert_eq!(bad["error"]["code"], -32700, "{bad}");
    let unknown = rpc(socket, "desktop.teleport", json!({})).await;
    assert_eq!(unknown["error"]["code"], -32601, "{unknown}");
    assert_eq!(unknown["id"], "t-1");
    let no_version = send_line(socket, "{\"id\": 1, \"method\": \"desktop.ping\"}\n").await;
    assert!(no_version.contains("-32600"), "{no_version}");
    let wrong = rpc(socket, "desktop.click", json!({"x": "left"})).await;
    assert_eq!(wrong["error"]["code"], -32602, "{wrong}");
    let batch = send_line(
        socket,
        "[{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"desktop.ping\"}]\n",
    )
    .await;
    assert!(
        batch.contains("-32600") && batch.contains("batches"),
        "{batch}"
    );
    // A notification (no id) is carried out and never answered.
    let silent = send_line(
        socket,
        "{\"jsonrpc\": \"2.0\", \"method\": \"desktop.ping\"}\n",
    )
    .await;
    assert_eq!(silent, "");

    // launch_app starts a program as a command of the session: a person approves it.
    let launch = ok(rpc(socket, "desktop.launch_app", json!({"bundle_id": "true"})).await);
    assert_eq!(launch["status"], "pending-approval", "{launch}");
    let request = launch["request_id"].as_str().expect("a prompt").to_string();
    let listed = tokio::task::block_in_place(|| {
        let listed = prompts(&scene.install, &scene.server, &["list", "--json"]);
        prompts(&scene.install, &scene.server, &["allow", &request]);
        listed
    });
    let prompt = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == request.as_str())
        .unwrap_or_else(|| panic!("no prompt {request} in {listed}"))
        .clone();
    assert_eq!(prompt["kind"], "command", "{prompt}");
    assert_eq!(prompt["summary"], "true", "{prompt}");
    let bad = rpc(
        socket,
        "desktop.launch_app",
        json!({"bundle_id": "rm -rf /"}),
    )
    .await;
    assert_eq!(bad["error"]["data"]["kind"], "invalid-argument", "{bad}");

    // A peer of another user is refused.
    let other = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/usr/bin/python3", "-c"])
        .arg(
            "import socket,sys\n\
             s=socket.socket(socket.AF_UNIX)\n\
             s.connect(sys.argv[1])\n\
             s.sendall(b'{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"desktop.ping\"}\\n')\n\
             print(s.makefile().readline())",
        )
        .arg(socket)
        .output()
        .expect("setpriv runs");
    // The directory is 0700: another user cannot even reach the socket (capbridge also checks
    // the peer's user id, behind it).
    assert!(!other.status.success(), "{other:?}");
    let said = String::from_utf8_lossy(&other.stderr);
    assert!(said.contains("PermissionError"), "{said}");

    // A client that sends nothing is cut off after 30 s.
    let started = Instant::now();
    let mut idle = tokio::net::UnixStream::connect(socket).await.unwrap();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(40),
        tokio::io::AsyncReadExt::read_to_end(&mut idle, &mut buffer),
    )
    .await;
    assert!(read.is_ok(), "the idle connection was never closed");
    assert!(
        started.elapsed() >= Duration::from_secs(29),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_without_the_input_grant_does_not_load_and_the_contract_acts_too() {
    let desktop = Desktop::start("automation-grants").await;
    let install = Install::everything_shipped();
    // Through the contract: the same prompt as over the socket, then the pointer moves.
    let server = desktop.shell(&install);
    let token = server.handshake().await;
    let call = {
        let url = server.url("/api/v1/commands/desktop.hover/invoke");
        let token = token.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .header(capbridge_tests::TOKEN_HEADER, token)
                .json(&json!({"args": {"x": 10, "y": 10}}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::task::block_in_place(|| {
        let id = automation_prompt(&install, &server);
        prompts(&install, &server, &["allow", &id]);
    });
    let hovered = call.await.unwrap();
    assert_eq!(hovered["result"]["ok"]["x"], 10.0, "{hovered}");
    let pointer = tokio::task::block_in_place(|| desktop.x(&["xdotool", "getmouselocation"]));
    assert!(pointer.starts_with("x:10 y:10 "), "{pointer}");
    drop(server);

    // The shipped desktop component with a policy that does not grant input does not load:
    // it imports the input interface.
    let policy = std::fs::read_to_string(root_path("policy/desktop.toml"))
        .unwrap()
        .replace("input = true", "input = false");
    install.set_policy("desktop", &policy);
    let (mut command, _) = Server::command(&install, &[], &["component", "list"]);
    let listed = command.output().expect("capbridge component list runs");
    let listed = String::from_utf8_lossy(&listed.stdout);
    let desktop_lines = listed
        .lines()
        .skip_while(|l| !l.contains("desktop"))
        .take(6)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(desktop_lines.contains("capbridge:host/input"), "{listed}");
}

/// p50 and p99 of `samples`, in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99))
}

/// Times `n` runs of `run`.
async fn timed<F, Fut>(n: usize, mut run: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        run().await;
        samples.push(start.elapsed());
    }
    samples
}

fn report(name: &str, samples: &mut [Duration]) {
    let (p50, p99) = percentiles(samples);
    println!(
        "{name:<58} p50 {p50:>8.2} ms   p99 {p99:>8.2} ms   ({} runs)",
        samples.len()
    );
}

/// Screen and input figures (`cargo xtask bench` runs it in a release build): printed, not
/// asserted. A 1920×1080 Xvfb screen, the GTK test app, capbridge's shell.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: `cargo xtask bench` runs it"]
async fn benchmark_screen_and_input() {
    let scene = Scene::start_sized("automation-benchmark", "1920x1080x24").await;
    let socket = &scene.socket;
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("screen and input, {build} build, 1920x1080 Xvfb, openbox, GTK 3 test app");

    let snapshot = scene.snapshot().await;
    let stats = &snapshot["stats"];
    println!(
        "snapshot of the test app: {} elements with refs, {} nodes walked, {} interactive, depth {}",
        snapshot["elements"].as_array().unwrap().len(),
        stats["total_elements"],
        stats["interactive"],
        stats["max_depth"]
    );
    report(
        "desktop.snapshot over the socket",
        &mut timed(20, || async {
            ok(rpc(
                socket,
                "desktop.snapshot",
                json!({"app_bundle_id": APP_NAME}),
            )
            .await);
        })
        .await,
    );
    let press = reference(element(&scene.snapshot().await, "push button", "Press me"));
    ok(scene
        .first_action("desktop.hover", json!({"x": 5, "y": 5}), "allow")
        .await);
    report(
        "desktop.ping over the socket (the socket's own cost)",
        &mut timed(50, || async {
            ok(rpc(socket, "desktop.ping", json!({})).await);
        })
        .await,
    );
    report(
        "desktop.click by ref over the socket",
        &mut timed(50, || async {
            ok(rpc(socket, "desktop.click", json!({"ref": press})).await);
        })
        .await,
    );

    // The same over HTTP: a session of its own, with its own snapshot and consent.
    let token = scene.server.handshake().await;
    let http = reqwest::Client::new();
    let invoke = |name: &str, args: Value| {
        http.post(scene.server.url(&format!("/api/v1/commands/{name}/invoke")))
            .header(capbridge_tests::TOKEN_HEADER, token.clone())
            .json(&json!({ "args": args }))
            .send()
    };
    let snapshot = invoke("desktop.snapshot", json!({"app-bundle-id": APP_NAME}))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let press_http = snapshot["result"]["ok"]["elements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["label"] == "Press me")
        .unwrap()["ref-id"]
        .as_str()
        .unwrap()
        .to_string();
    let first = {
        let request = invoke("desktop.hover", json!({"x": 5, "y": 5}));
        tokio::spawn(async move { request.await.unwrap().status() })
    };
    tokio::task::block_in_place(|| {
        let id = automation_prompt(&scene.install, &scene.server);
        prompts(&scene.install, &scene.server, &["allow", &id]);
    });
    assert!(first.await.unwrap().is_success());
    report(
        "desktop.ping over HTTP (the contract's own cost)",
        &mut timed(50, || async {
            assert!(invoke("desktop.ping", json!({}))
                .await
                .unwrap()
                .status()
                .is_success());
        })
        .await,
    );
    report(
        "desktop.click by ref over HTTP",
        &mut timed(50, || async {
            let answer = invoke("desktop.click", json!({"ref": press_http}))
                .await
                .unwrap();
            assert!(answer.status().is_success());
        })
        .await,
    );

    // A screenshot of the whole 1920x1080 screen, against ImageMagick's `import` of it.
    report(
        "desktop.screenshot of 1920x1080 over the socket",
        &mut timed(20, || async {
            let shot = ok(rpc(socket, "desktop.screenshot", json!({"region": null})).await);
            assert_eq!(shot["width"], 1920);
        })
        .await,
    );
    let display = scene.desktop.display.clone();
    report(
        "native baseline: `import -window root png:-` (ImageMagick)",
        &mut timed(20, || {
            let display = display.clone();
            async move {
                let out = Command::new("import")
                    .args(["-window", "root", "png:-"])
                    .env("DISPLAY", &display)
                    .output()
                    .unwrap();
                assert!(out.status.success());
            }
        })
        .await,
    );
}
