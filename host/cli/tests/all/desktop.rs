//! The desktop shell as a person sees it: `capbridge` (no command) on a real X server (Xvfb)
//! with a window manager (openbox) and a private D-Bus session, started by each test. What the
//! test sees it reads off screenshots (ImageMagick's `import`, OCR by `tesseract`); what it does
//! it does with synthesized input (`xdotool`), as a person would. Screenshots are kept in
//! `target/desktop-screenshots/<test>/`.
//!
//! The tests take turns (one X server at a time: WebKit is heavy on two cores).

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capbridge_tests::root;
use serde_json::json;

use crate::capabilities::{Bus, Events, Install, Server, PATIENCE};

/// One desktop test at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An X server with a window manager, and a session bus, for one test; stopped when dropped.
pub(crate) struct Desktop {
    xvfb: Child,
    wm: Child,
    pub(crate) bus: Bus,
    pub(crate) display: String,
    pub(crate) shots: PathBuf,
    taken: std::cell::Cell<usize>,
    /// Held while the test runs (dropped last).
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// A word on the screen, where it is (screen coordinates of its box).
#[derive(Clone, Debug)]
pub(crate) struct Word {
    /// Tesseract's block, paragraph and line: words with the same key are on one line.
    line: (u32, u32, u32),
    text: String,
    x: i32,
    y: i32,
    width: i32,
    height: i32,
}

impl Word {
    pub(crate) fn center(&self) -> (i32, i32) {
        (self.x + self.width / 2, self.y + self.height / 2)
    }
}

/// A window's place on the screen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Geometry {
    pub(crate) x: i32,
    pub(crate) y: i32,
    pub(crate) width: i32,
    pub(crate) height: i32,
}

impl Desktop {
    /// Waits for its turn, then starts the X server, the window manager and the bus.
    pub(crate) async fn start(test: &str) -> Desktop {
        Self::start_sized(test, "1280x900x24").await
    }

    /// [`Desktop::start`] with a screen of `screen` (`WIDTHxHEIGHTxDEPTH`).
    pub(crate) async fn start_sized(test: &str, screen: &str) -> Desktop {
        let turn = TURN.lock().await;
        tokio::task::block_in_place(|| Self::start_now(test, screen, turn))
    }

    fn start_now(test: &str, screen: &str, turn: tokio::sync::MutexGuard<'static, ()>) -> Desktop {
        for tool in [
            "Xvfb",
            "openbox",
            "xdotool",
            "wmctrl",
            "import",
            "convert",
            "tesseract",
        ] {
            assert!(
                which(tool),
                "`{tool}` is not installed: `cargo xtask test` installs it, or run: apt-get \
                 install xvfb openbox xdotool wmctrl imagemagick tesseract-ocr"
            );
        }
        let shots = root().join("target/desktop-screenshots").join(test);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        // -displayfd: Xvfb picks a free display and writes its number when it is ready.
        let mut xvfb = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                screen,
                "-nolisten",
                "tcp",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb starts");
        let mut number = String::new();
        let mut out = xvfb.stdout.take().expect("stdout");
        let mut byte = [0u8; 1];
        while out.read(&mut byte).map(|n| n == 1).unwrap_or(false) && byte[0] != b'\n' {
            number.push(byte[0] as char);
        }
        assert!(!number.is_empty(), "Xvfb did not report a display");
        let display = format!(":{}", number.trim());
        let wm_log = shots.join("openbox.log");
        let mut desktop = Desktop {
            xvfb,
            wm: start_openbox(&display, &wm_log),
            bus: Bus::start(),
            display,
            shots,
            taken: std::cell::Cell::new(0),
            _turn: turn,
        };
        // Up when it has claimed the root window; started again if it died or hangs.
        for attempt in 1.. {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if desktop
                    .x(&["xprop", "-root", "_NET_SUPPORTING_WM_CHECK"])
                    .contains("window id")
                {
                    return desktop;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            assert!(
                attempt < 3,
                "openbox never came up on {}: {}",
                desktop.display,
                std::fs::read_to_string(&wm_log).unwrap_or_default()
            );
            let _ = desktop.wm.kill();
            let _ = desktop.wm.wait();
            desktop.wm = start_openbox(&desktop.display, &wm_log);
        }
        unreachable!()
    }

    /// The environment capbridge needs to show windows here.
    pub(crate) fn env(&self) -> Vec<(&str, String)> {
        vec![
            ("DISPLAY", self.display.clone()),
            ("GDK_BACKEND", "x11".into()),
            ("WEBKIT_DISABLE_COMPOSITING_MODE", "1".into()),
            ("DBUS_SESSION_BUS_ADDRESS", self.bus.address.clone()),
        ]
    }

    /// Starts the desktop shell (`capbridge ARGS`) for `install`, with `extra` environment.
    pub(crate) fn capbridge(
        &self,
        install: &Install,
        extra: &[(&str, &str)],
        args: &[&str],
    ) -> Server {
        // The compile cache the other tests share: a first start here compiles nothing.
        if !install.cache().is_symlink() {
            std::fs::remove_dir(install.cache()).expect("empty cache dir");
            std::os::unix::fs::symlink(capbridge_tests::shared_cache_dir(), install.cache())
                .expect("link the shared cache");
        }
        let env = self.env();
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        Server::start_with(install, &all, args)
    }

    /// The desktop shell on any free port, for `install`.
    pub(crate) fn shell(&self, install: &Install) -> Server {
        tokio::task::block_in_place(|| self.capbridge(install, &[], &["--port", "0"]))
    }

    /// Runs an X client on this display; its stdout.
    pub(crate) fn x(&self, command: &[&str]) -> String {
        let output = Command::new(command[0])
            .args(&command[1..])
            .env("DISPLAY", &self.display)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", command[0]));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Saves a screenshot of the whole screen as `NN-name.png`; its path.
    pub(crate) fn screenshot(&self, name: &str) -> PathBuf {
        self.taken.set(self.taken.get() + 1);
        let path = self
            .shots
            .join(format!("{:02}-{name}.png", self.taken.get()));
        let shot = self.x(&["import", "-window", "root", path.to_str().unwrap()]);
        assert!(path.exists(), "screenshot {name} not taken: {shot}");
        path
    }

    /// The window whose title contains `title`, once it is shown.
    pub(crate) fn window(&self, title: &str) -> Geometry {
        let mut found = None;
        // Shown, and in place on the screen (a window coming back from being minimized is
        // mapped before the window manager moves it back).
        // Shown, and still (the window manager animates a window coming back from being
        // minimized: its place settles after it is mapped).
        let mut last = None;
        self.wait_for(&format!("a window titled `{title}`"), || {
            let previous = last;
            last = self.geometry(title);
            found = last;
            last.is_some() && previous == last
        });
        found.unwrap()
    }

    /// Where capbridge's window whose title contains `title` is, while it is shown.
    pub(crate) fn geometry(&self, title: &str) -> Option<Geometry> {
        self.placed(&self.window_id(title)?)
    }

    /// capbridge's shown window whose title contains `title` (not its tray icon, whose class
    /// is the tray library's).
    pub(crate) fn window_id(&self, title: &str) -> Option<String> {
        let ids = self.x(&[
            "xdotool",
            "search",
            "--onlyvisible",
            "--classname",
            "^capbridge$",
        ]);
        ids.lines()
            .map(|id| id.trim().to_string())
            .find(|id| self.x(&["xdotool", "getwindowname", id]).contains(title))
    }

    /// Where the first shown window `xdotool search SEARCH` finds is.
    pub(crate) fn found(&self, search: &[&str]) -> Option<Geometry> {
        let ids = self.x(&[&["xdotool", "search", "--onlyvisible"], search].concat());
        self.placed(ids.lines().next()?.trim())
    }

    /// Where window `id` is on the screen.
    pub(crate) fn placed(&self, id: &str) -> Option<Geometry> {
        // xwininfo: xdotool's getwindowgeometry counts the frame's offset twice under a
        // reparenting window manager.
        let info = self.x(&["xwininfo", "-id", id]);
        let value = |key: &str| -> Option<i32> {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(key))?
                .trim()
                .parse()
                .ok()
        };
        Some(Geometry {
            x: value("Absolute upper-left X:")?,
            y: value("Absolute upper-left Y:")?,
            width: value("Width:")?,
            height: value("Height:")?,
        })
    }

    /// The words in `area` of the screen now (OCR of a fresh screenshot, enlarged `scale`
    /// times).
    pub(crate) fn read(&self, area: Geometry, scale: i32) -> Vec<Word> {
        let dir = tempfile::tempdir().expect("temp dir");
        let shot = dir.path().join("screen.png");
        let big = dir.path().join("area.png");
        self.x(&["import", "-window", "root", shot.to_str().unwrap()]);
        let crop = format!("{}x{}+{}+{}", area.width, area.height, area.x, area.y);
        let status = Command::new("convert")
            .arg(&shot)
            .args([
                "-crop",
                &crop,
                "+repage",
                "-colorspace",
                "gray",
                "-resize",
                &format!("{}%", scale * 100),
            ])
            .arg(&big)
            .status()
            .expect("convert runs");
        assert!(status.success(), "convert {crop}");
        let tsv = Command::new("tesseract")
            // One thread: the machine is busy with capbridge and WebKit.
            .env("OMP_THREAD_LIMIT", "1")
            .arg(&big)
            .args(["-", "--psm", "11", "tsv"])
            .stderr(Stdio::null())
            .output()
            .expect("tesseract runs");
        String::from_utf8_lossy(&tsv.stdout)
            .lines()
            .skip(1)
            .filter_map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                let text = f.get(11)?.trim();
                if text.is_empty() {
                    return None;
                }
                let n = |i: usize| f.get(i).and_then(|v| v.parse::<i32>().ok());
                let k = |i: usize| f.get(i).and_then(|v| v.parse::<u32>().ok());
                Some(Word {
                    line: (k(2)?, k(3)?, k(4)?),
                    text: text.to_string(),
                    x: area.x + n(6)? / scale,
                    y: area.y + n(7)? / scale,
                    width: n(8)? / scale,
                    height: n(9)? / scale,
                })
            })
            .collect()
    }

    /// Waits until `phrase` appears in `area`, within one line of text; the word it starts in.
    pub(crate) fn find(&self, area: Geometry, phrase: &str) -> Word {
        let start = Instant::now();
        let mut tries = 0;
        let seen = loop {
            // Twice, then three times the size, in turn: a word tesseract misreads at one size
            // it reads at the other.
            let words = self.read(area, 2 + tries % 2);
            tries += 1;
            if let Some(word) = find_phrase(&words, phrase) {
                return word;
            }
            if start.elapsed() > PATIENCE {
                break words;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        let text: Vec<&str> = seen.iter().map(|w| w.text.as_str()).collect();
        let shot = self.screenshot("phrase-not-found");
        panic!(
            "`{phrase}` never appeared in {area:?} (see {}); it shows: {}",
            shot.display(),
            text.join(" ")
        );
    }

    /// Waits until `xdotool search SEARCH` finds a shown window; where it is.
    pub(crate) fn wait_for_window(&self, what: &str, search: &[&str]) -> Geometry {
        let mut found = None;
        self.wait_for(what, || {
            found = self.found(search);
            found.is_some()
        });
        found.unwrap()
    }

    /// Asks the window manager to close capbridge's window titled `title`, as its close button
    /// does (`_NET_CLOSE_WINDOW`: the window manager asks the window to close).
    pub(crate) fn close(&self, title: &str) {
        self.window(title);
        let id = self.window_id(title).expect("the window");
        self.x(&["wmctrl", "-i", "-c", &id]);
    }

    /// A system tray (trayer: an XEmbed tray, as in many panels) at the bottom right of the
    /// screen; stopped when dropped.
    pub(crate) fn tray_host(&self) -> Running {
        let tray = Running(
            Command::new("trayer")
                .args([
                    "--edge",
                    "bottom",
                    "--align",
                    "right",
                    "--widthtype",
                    "pixel",
                ])
                .args(["--width", "120", "--heighttype", "pixel", "--height", "32"])
                .args(["--transparent", "false", "--tint", "0xffffff"])
                .env("DISPLAY", &self.display)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("trayer starts (`cargo xtask test` installs it: apt-get install trayer)"),
        );
        self.wait_for_window("the system tray", &["--classname", "^panel$"]);
        tray
    }

    /// The freedesktop notification service (Debian's notification-daemon) on this desktop's
    /// bus; stopped when dropped.
    pub(crate) fn notification_daemon(&self) -> Running {
        Running(
            Command::new("/usr/lib/notification-daemon/notification-daemon")
                .envs(self.env())
                // The private bus has no accessibility bus to start.
                .env("NO_AT_BRIDGE", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect(
                    "notification-daemon starts (`cargo xtask test` installs it: apt-get \
                     install notification-daemon)",
                ),
        )
    }

    /// Opens the tray icon's menu; the part of the screen it shows in.
    pub(crate) fn open_tray_menu(&self) -> Geometry {
        let icon = self.wait_for_window(
            "capbridge's tray icon",
            &["--classname", "^tray-icon tray app capbridge$"],
        );
        self.click((icon.x + icon.width / 2, icon.y + icon.height / 2));
        // The menu opens just above the icon, at the bottom right of the screen (kept tight:
        // the empty black screen around it makes the OCR misread).
        let x = icon.x + icon.width - 300;
        Geometry {
            x,
            y: icon.y - 120,
            width: icon.x + icon.width - x,
            height: 120,
        }
    }

    pub(crate) fn click(&self, (x, y): (i32, i32)) {
        self.x(&[
            "xdotool",
            "mousemove",
            &x.to_string(),
            &y.to_string(),
            "click",
            "1",
        ]);
    }

    /// Waits until no window titled `title` is shown.
    pub(crate) fn wait_until_gone(&self, what: &str, title: &str) {
        self.wait_for(what, || self.geometry(title).is_none());
    }

    pub(crate) fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < PATIENCE, "gave up waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Desktop {
    fn drop(&mut self) {
        for child in [&mut self.wm, &mut self.xvfb] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The word where `phrase` starts, when a line's text (its words joined by spaces) has it.
fn find_phrase(words: &[Word], phrase: &str) -> Option<Word> {
    let mut i = 0;
    while i < words.len() {
        let line: Vec<&Word> = words[i..]
            .iter()
            .take_while(|w| w.line == words[i].line)
            .collect();
        let text = line
            .iter()
            .map(|w| w.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let bounded = |at: usize| {
            let before = text[..at].chars().next_back();
            let after = text[at + phrase.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        };
        if let Some(at) = text
            .match_indices(phrase)
            .map(|(at, _)| at)
            .find(|&at| bounded(at))
        {
            // The word whose span holds byte `at` of the joined text.
            let mut offset = 0;
            for word in &line {
                if at < offset + word.text.len() + 1 {
                    return Some((*word).clone());
                }
                offset += word.text.len() + 1;
            }
        }
        i += line.len();
    }
    None
}

fn start_openbox(display: &str, log: &std::path::Path) -> Child {
    Command::new("openbox")
        .arg("--sm-disable")
        .env("DISPLAY", display)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("openbox log"))
        .spawn()
        .expect("openbox starts")
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_window_shows_the_bound_port_and_live_requests() {
    let desktop = Desktop::start("status").await;
    let install = Install::everything_shipped();
    let server = desktop.shell(&install);
    let status = tokio::task::block_in_place(|| desktop.window("capbridge"));
    // A real request, made now: the connection log shows it.
    let token = server.handshake().await;
    let (code, _) = server.get(&token, "/api/v1/bridge/info").await;
    assert_eq!(code, 200);
    tokio::task::block_in_place(|| {
        desktop.find(status, &format!("127.0.0.1:{}", server.port));
        desktop.find(status, "/api/v1/bridge/info");
        desktop.screenshot("status-with-requests");
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_waits_for_the_prompt_window_and_runs_when_allowed_once() {
    let desktop = Desktop::start("prompt-allow").await;
    let install = Install::everything_shipped();
    let server = desktop.shell(&install);
    let token = server.handshake().await;
    let (id, request) = execute(&server, &token, "echo", &["allowed", "by", "a", "click"]).await;
    tokio::task::block_in_place(|| {
        let prompt = desktop.window(&prompt_title(&request));
        // The exact command, as a person reads it.
        desktop.find(prompt, "echo allowed by a click");
        desktop.screenshot("prompt-window");
        // The buttons unlock after a second; a click before that does nothing.
        std::thread::sleep(Duration::from_millis(1200));
        let allow = desktop.find(prompt, "Allow once");
        desktop.click(allow.center());
    });
    let last = run_once_decided(&server, &token, &id).await;
    assert_eq!(last["status"], "completed", "{last}");
    assert_eq!(last["approval"], "once", "{last}");
    assert_eq!(last["stdout"], "allowed by a click\n", "{last}");
    tokio::task::block_in_place(|| {
        desktop.wait_until_gone("the prompt window to close", &prompt_title(&request));
        desktop.screenshot("after-allow");
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_change_the_port_in_the_config_file_and_a_restart_binds_it() {
    let desktop = Desktop::start("settings").await;
    let install = Install::everything_shipped();
    let mut server = desktop.shell(&install);
    let new_port = free_port();
    tokio::task::block_in_place(|| {
        let window = desktop.window("capbridge");
        desktop.click(desktop.find(window, "Settings").center());
        // As a person with a keyboard: into the origins box, back one field to the port,
        // replace it, and Enter submits the form.
        desktop.click(desktop.find(window, "Allowed origins").center());
        desktop.x(&["xdotool", "key", "shift+Tab", "ctrl+a"]);
        desktop.x(&["xdotool", "type", &new_port.to_string()]);
        desktop.x(&["xdotool", "key", "Return"]);
        desktop.find(window, "Saved. Restart capbridge");
        desktop.screenshot("settings-saved");
    });
    let config = std::fs::read_to_string(install.config()).expect("config file");
    assert!(
        config.contains(&format!("port = {new_port}")),
        "the config file has the new port:\n{config}"
    );
    // Written atomically: no temporary file left beside it.
    let leftovers: Vec<String> = std::fs::read_dir(install.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    server.terminate();
    // Started again without --port: the persisted port.
    let server = tokio::task::block_in_place(|| desktop.capbridge(&install, &[], &[]));
    assert_eq!(server.port, new_port);
    assert_eq!(server.health().await, 200);
    tokio::task::block_in_place(|| {
        let window = desktop.window("capbridge");
        desktop.find(window, &format!("127.0.0.1:{new_port}"));
        desktop.screenshot("restarted-on-new-port");
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_link_opens_in_the_browser_and_the_window_stays() {
    let desktop = Desktop::start("navigation").await;
    let install = Install::everything_shipped();
    // The person's browser, as the desktop knows it: the default handler of http links
    // (mimeapps.list and a .desktop file), which xdg-open runs.
    let opened = install.path().join("browser-opened");
    let browser = install.path().join("browser.sh");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\necho \"$1\" >> {}\n", opened.display()),
    )
    .unwrap();
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    let applications = install.home().join(".local/share/applications");
    std::fs::create_dir_all(&applications).unwrap();
    std::fs::write(
        applications.join("test-browser.desktop"),
        format!(
            "[Desktop Entry]\nType=Application\nName=Test browser\nExec={} %u\n\
             MimeType=x-scheme-handler/http;x-scheme-handler/https;\n",
            browser.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(install.home().join(".config")).unwrap();
    std::fs::write(
        install.home().join(".config/mimeapps.list"),
        "[Default Applications]\nx-scheme-handler/http=test-browser.desktop\n\
         x-scheme-handler/https=test-browser.desktop\n",
    )
    .unwrap();
    let server = desktop.shell(&install);
    tokio::task::block_in_place(|| {
        let window = desktop.window("capbridge");
        desktop.click(desktop.find(window, "Settings").center());
        desktop.click(desktop.find(window, "OpenAPI").center());
        desktop.wait_for("the browser to be asked", || opened.exists());
        // Still the app's page, not the remote one.
        desktop.find(window, "Allowed origins");
        desktop.screenshot("after-remote-link");
    });
    let asked = std::fs::read_to_string(&opened).unwrap();
    assert_eq!(
        asked.trim(),
        format!("http://127.0.0.1:{}/api/v1/openapi.json", server.port)
    );
}

/// The title of the prompt window of prompt `request` (`req-3`).
pub(crate) fn prompt_title(request: &str) -> String {
    format!("allow? ({request})")
}

/// Invokes command `name` (`component.export`) through the contract with `args`.
pub(crate) async fn invoke(
    server: &Server,
    token: &str,
    name: &str,
    args: serde_json::Value,
) -> (u16, serde_json::Value) {
    server
        .post(
            token,
            &format!("/api/v1/commands/{name}/invoke"),
            json!({ "args": args }),
        )
        .await
}

/// Asks for a command through the contract; it waits for a person. Its run id and prompt id.
async fn execute(server: &Server, token: &str, program: &str, args: &[&str]) -> (String, String) {
    let (code, run) = server
        .post(
            token,
            "/api/v1/system/commands/execute",
            json!({"template": {"program": program, "args": args}}),
        )
        .await;
    assert_eq!(code, 200, "{run}");
    assert_eq!(run["status"], "pending_approval", "{run}");
    let id = run["id"].as_str().expect("id").to_string();
    (
        id,
        run["requestId"].as_str().expect("requestId").to_string(),
    )
}

/// The run once it is decided and, when allowed, done (a prompt waits at most 60 s).
async fn run_once_decided(server: &Server, token: &str, id: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (_, run) = server
            .get(token, &format!("/api/v1/system/commands/runs/{id}"))
            .await;
        if !matches!(run["status"].as_str(), Some("pending_approval" | "running")) {
            return run;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "still undecided or running: {run}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The color of one pixel of a screenshot, as ImageMagick names it (`srgb(255,0,0)`).
fn pixel(shot: &std::path::Path, (x, y): (i32, i32)) -> (u8, u8, u8) {
    let out = Command::new("convert")
        .arg(shot)
        .args(["-crop", &format!("1x1+{x}+{y}"), "-depth", "8", "txt:-"])
        .output()
        .expect("convert runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // `0,0: (255,0,0)  #FF0000  red`
    let hex = text
        .split_whitespace()
        .find(|w| w.starts_with('#') && w.len() >= 7)
        .unwrap_or_else(|| panic!("no color in {text}"));
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap();
    (byte(1), byte(3), byte(5))
}

fn close_to(a: (u8, u8, u8), b: (u8, u8, u8)) -> bool {
    [(a.0, b.0), (a.1, b.1), (a.2, b.2)]
        .iter()
        .all(|(x, y)| x.abs_diff(*y) < 24)
}

const RED: (u8, u8, u8) = (0xcc, 0x00, 0x00);
const GREEN: (u8, u8, u8) = (0x00, 0xaa, 0x00);

#[tokio::test(flavor = "multi_thread")]
async fn a_canvas_overlay_shows_updates_hides_and_lets_clicks_through() {
    let desktop = Desktop::start("canvas").await;
    let install = Install::everything_shipped();
    let server = desktop.shell(&install);
    let token = server.handshake().await;
    let status = tokio::task::block_in_place(|| desktop.window("capbridge"));
    // Over the status window's "Settings" tab: a click there must reach the tab.
    let settings = tokio::task::block_in_place(|| desktop.find(status, "Settings"));
    let (cx, cy) = settings.center();
    // The overlay tries to run a script (magenta if it could) and to embed the app's own
    // pages (their fallback, the green probe, shows when it cannot, as it must).
    let html = r##"<html><body style="margin:0;background:#cc0000">
        <p style="font:bold 28px sans-serif;color:#fff;margin:8px">Build done</p>
        <script>document.body.style.background = "#ff00ff";</script>
        <object data="capbridge-ui://app/api/status" type="text/plain"
          style="position:fixed;right:0;bottom:0;width:40px;height:40px">
          <div style="width:40px;height:40px;background:#00aa00"></div></object>
        </body></html>"##;
    let position = json!({"x": cx - 150, "y": cy - 60, "width": 300, "height": 120});
    let (code, body) = invoke(
        &server,
        &token,
        "canvas.show",
        json!({"html": html, "position": position}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"], json!({"ok": null}), "{body}");
    tokio::task::block_in_place(|| {
        let overlay = desktop.window("capbridge canvas");
        desktop.find(overlay, "Build done");
        let probe = (
            overlay.x + overlay.width - 20,
            overlay.y + overlay.height - 20,
        );
        desktop.wait_for("the overlay's embed of the app's pages to fail", || {
            close_to(pixel(&desktop.screenshot("canvas-probe"), probe), GREEN)
        });
        let shot = desktop.screenshot("canvas-shown");
        assert!(close_to(
            pixel(&shot, (overlay.x + 10, overlay.y + 60)),
            RED
        ));
    });

    // Another session can neither update nor hide it.
    let other = server.handshake().await;
    let (_, body) = invoke(&server, &other, "canvas.hide", json!({})).await;
    assert!(body["error"]["details"]["not-found"].is_string(), "{body}");

    // Update: new content, same place.
    let (code, body) = invoke(&server, &token, "canvas.update", json!({"patch": {"html": "<body style='margin:0;background:#00aa00'><p style='font:bold 28px sans-serif;margin:8px'>Deployed</p></body>", "position": null}})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"], json!({"ok": null}), "{body}");
    tokio::task::block_in_place(|| {
        let overlay = desktop.window("capbridge canvas");
        desktop.find(overlay, "Deployed");
        let shot = desktop.screenshot("canvas-updated");
        assert!(close_to(
            pixel(&shot, (overlay.x + 10, overlay.y + 60)),
            GREEN
        ));
        // Click-through: the click lands on the tab under the overlay.
        desktop.click((cx, cy));
        desktop.find(status, "Allowed origins");
        desktop.screenshot("clicked-through");
    });

    // A prompt hides it; answering the prompt brings it back.
    let (_, request) = execute(&server, &token, "true", &[]).await;
    tokio::task::block_in_place(|| {
        desktop.window(&prompt_title(&request));
        desktop.wait_until_gone(
            "the overlay to hide while the prompt is open",
            "capbridge canvas",
        );
        desktop.screenshot("prompt-hides-canvas");
    });
    let (code, _) = server
        .post(
            &token,
            &format!("/api/v1/system/permissions/prompts/{request}/resolve"),
            json!({"decision": "reject"}),
        )
        .await;
    // The web app may not answer (web-approvals is off): a person rejects it in its window.
    assert_eq!(code, 403);
    tokio::task::block_in_place(|| {
        let prompt = desktop.window(&prompt_title(&request));
        desktop.click(desktop.find(prompt, "Reject").center());
        desktop.window("capbridge canvas");
    });

    let (code, body) = invoke(&server, &token, "canvas.hide", json!({})).await;
    assert_eq!(code, 200, "{body}");
    tokio::task::block_in_place(|| {
        desktop.wait_until_gone("the overlay to hide", "capbridge canvas");
        desktop.screenshot("canvas-hidden");
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn url_scheme_reaches_the_running_shell_and_ensure_server_never_moves() {
    let desktop = Desktop::start("url-scheme").await;
    let install = Install::everything_shipped();
    // The persisted port is held by another program.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    install.set_config(&format!("port = {port}\n"));
    let env = desktop.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (mut command, log) = Server::command(&install, &env, &[]);
    let shell = Running(
        command
            .stdout(Stdio::null())
            .spawn()
            .expect("capbridge starts"),
    );
    tokio::task::block_in_place(|| {
        let window = desktop.window("capbridge");
        desktop.find(window, "Not listening");
        desktop.find(window, "Retry");
        desktop.screenshot("port-busy");
    });

    // A second launch, as the browser makes it through the .desktop file: it hands the URL to
    // the running shell, which tries the same port again and says why it cannot.
    let desktop_file = install
        .home()
        .join(".local/share/applications/capbridge.desktop");
    let registered = std::fs::read_to_string(&desktop_file).expect("the .desktop file");
    assert!(
        registered.contains("MimeType=x-scheme-handler/osloop;x-scheme-handler/capbridge;")
            && registered.contains("%u"),
        "{registered}"
    );
    let second = |url: &str| {
        let (mut command, _) = Server::command(&install, &env, &[url]);
        command
            .stdout(Stdio::piped())
            .output()
            .expect("second launch")
    };
    let out = second("osloop://ensure-server");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!("port {port}")) && said.contains("in use"),
        "{said}"
    );
    let config = std::fs::read_to_string(install.config()).unwrap();
    assert!(
        config.contains(&format!("port = {port}")),
        "the port stays: {config}"
    );

    // The port is free again: ensure-server binds it, and only it.
    drop(busy);
    let out = second("capbridge://ensure-server");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert_eq!(
        said.trim(),
        format!("capbridge listening on http://127.0.0.1:{port}")
    );
    let health = reqwest::get(format!("http://127.0.0.1:{port}/api/v1/health"))
        .await
        .expect("the bridge answers on its port");
    assert_eq!(health.status(), 200);

    // osloop://focus through xdg-open, as a browser opens it: the minimized window comes back.
    tokio::task::block_in_place(|| {
        let id = desktop.x(&["xdotool", "search", "--onlyvisible", "--name", "^capbridge"]);
        let id = id.lines().next().expect("the status window").to_string();
        desktop.x(&["xdotool", "windowminimize", "--sync", &id]);
        desktop.wait_until_gone("the window to be minimized", "capbridge");
        let opened = Command::new("xdg-open")
            .arg("osloop://focus")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", install.home())
            .envs(env.iter().copied())
            .status()
            .expect("xdg-open runs");
        assert!(opened.success());
        let window = desktop.window("capbridge");
        desktop.find(window, &format!("127.0.0.1:{port}"));
        desktop.screenshot("focused-by-url");
    });
    let out = second("osloop://nowhere");
    assert!(!out.status.success());
    drop(shell);
    let _ = log;
}

/// A process the test started, killed when dropped.
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_prompt_window_counts_down_and_rejects() {
    let desktop = Desktop::start("prompt-timeout").await;
    let install = Install::everything_shipped();
    let server = desktop.shell(&install);
    let token = server.handshake().await;
    let (id, request) = execute(&server, &token, "echo", &["nobody", "answers"]).await;
    tokio::task::block_in_place(|| {
        let prompt = desktop.window(&prompt_title(&request));
        desktop.find(prompt, "unless you answer");
        desktop.screenshot("counting-down");
    });
    // Nobody answers: after 60 s the host rejects it and the window goes.
    let run = run_once_decided(&server, &token, &id).await;
    assert_eq!(run["status"], "rejected", "{run}");
    assert!(
        run["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nobody answered"),
        "{run}"
    );
    tokio::task::block_in_place(|| {
        desktop.wait_until_gone("the prompt window to close", &prompt_title(&request));
        desktop.screenshot("rejected-by-timeout");
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn in_tray_mode_closing_hides_to_the_tray_whose_menu_shows_status_and_quits() {
    let desktop = Desktop::start("tray").await;
    let _tray = tokio::task::block_in_place(|| desktop.tray_host());
    let install = Install::everything_shipped();
    install.set_config("tray-mode = true\n");
    let mut server = desktop.shell(&install);
    tokio::task::block_in_place(|| {
        let status = desktop.window("capbridge");
        desktop.find(status, "closing this window keeps capbridge serving");
    });
    let token = server.handshake().await;
    let (_, runtime) = server.get(&token, "/api/v1/bridge/runtime").await;
    assert_eq!(
        runtime["tray"],
        json!({"icon": "shown", "statusWindow": "shown", "reason": null}),
        "{runtime}"
    );
    let (_, capabilities) = server.get(&token, "/api/v1/capabilities").await;
    assert!(
        capabilities["capabilities"]
            .as_array()
            .unwrap()
            .contains(&json!("tray_mode")),
        "{capabilities}"
    );
    let mut events = Events::connect(&server, &token).await;

    // Closing the window hides it; capbridge keeps serving, and says so.
    tokio::task::block_in_place(|| {
        desktop.close("capbridge");
        desktop.wait_until_gone("the status window to hide", "capbridge");
        desktop.screenshot("hidden-to-the-tray");
    });
    let updated = events.next_of("bridge.runtime.updated").await;
    assert_eq!(
        updated["payload"]["tray"]["statusWindow"], "hidden",
        "{updated}"
    );
    assert_eq!(updated["payload"]["boundPort"], server.port, "{updated}");
    assert_eq!(server.health().await, 200);

    // The icon's menu: "Show Status" brings the window back.
    tokio::task::block_in_place(|| {
        let menu = desktop.open_tray_menu();
        let show = desktop.find(menu, "Show Status");
        desktop.find(menu, "Quit");
        desktop.screenshot("tray-menu");
        desktop.click(show.center());
        let status = desktop.window("capbridge");
        desktop.find(status, &format!("127.0.0.1:{}", server.port));
    });
    let updated = events.next_of("bridge.runtime.updated").await;
    assert_eq!(
        updated["payload"]["tray"]["statusWindow"], "shown",
        "{updated}"
    );

    // "Quit" stops capbridge: the sessions hear it, the process ends.
    tokio::task::block_in_place(|| {
        let menu = desktop.open_tray_menu();
        let quit = desktop.find(menu, "Quit");
        desktop.click(quit.center());
    });
    events.next_of("bridge.stopping").await;
    let exit = tokio::task::block_in_place(|| server.wait_exit());
    assert!(exit.success(), "{exit}: {}", server.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn in_tray_mode_a_prompt_raises_a_notification_withdrawn_once_answered() {
    let desktop = Desktop::start("notification").await;
    let _daemon = desktop.notification_daemon();
    desktop
        .bus
        .wait_until_owned("org.freedesktop.Notifications")
        .await;
    let install = Install::everything_shipped();
    install.set_config("tray-mode = true\n");
    let server = desktop.shell(&install);
    let bus = desktop.bus.connect().await;
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.freedesktop.Notifications")
        .unwrap()
        .member("NotificationClosed")
        .unwrap()
        .build();
    let mut closed = zbus::MessageStream::for_match_rule(rule, &bus, None)
        .await
        .expect("watch NotificationClosed");
    let token = server.handshake().await;
    let (id, request) = execute(&server, &token, "echo", &["notify", "me"]).await;
    tokio::task::block_in_place(|| {
        let note = desktop.wait_for_window(
            "the notification",
            &["--classname", "^notification-daemon$"],
        );
        // The title wraps: one line of it.
        desktop.find(note, "capbridge: run this");
        // What runs, not all of it (a literal argument may be a value the person would not
        // want in the notification history): the prompt window shows everything.
        desktop.find(note, "Program: echo");
        desktop.find(note, "Asked by component commands");
        // The prompt window opens with it; the answer is given there.
        let prompt = desktop.window(&prompt_title(&request));
        desktop.screenshot("notification-and-prompt");
        std::thread::sleep(Duration::from_millis(1200));
        let allow = desktop.find(prompt, "Allow once");
        desktop.click(allow.center());
    });
    let run = run_once_decided(&server, &token, &id).await;
    assert_eq!(run["status"], "completed", "{run}");
    // Answered: capbridge withdraws the notification (reason 3: closed by CloseNotification).
    let signal = tokio::time::timeout(PATIENCE, futures_util::StreamExt::next(&mut closed))
        .await
        .expect("the notification is withdrawn")
        .expect("a signal")
        .expect("a message");
    let (_, reason): (u32, u32) = signal.body().deserialize().expect("(id, reason)");
    assert_eq!(reason, 3, "closed by capbridge, not expired or dismissed");

    // No tray on this desktop: the icon is not reported as shown, and closing the window
    // minimizes it (it stays in reach) instead of hiding it.
    let (_, runtime) = server.get(&token, "/api/v1/bridge/runtime").await;
    assert_eq!(runtime["tray"]["icon"], "unavailable", "{runtime}");
    assert!(
        runtime["tray"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no system tray"),
        "{runtime}"
    );
    tokio::task::block_in_place(|| {
        let status = desktop.window("capbridge");
        desktop.find(status, "no tray icon shows");
        let id = desktop.window_id("capbridge").expect("the status window");
        desktop.close("capbridge");
        desktop.wait_until_gone("the status window to minimize", "capbridge");
        let state = desktop.x(&["xprop", "-id", &id, "WM_STATE"]);
        assert!(state.contains("Iconic"), "{state}");
    });
    let (_, runtime) = server.get(&token, "/api/v1/bridge/runtime").await;
    assert_eq!(runtime["tray"]["statusWindow"], "shown", "{runtime}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_screenshot_through_the_contract_is_what_is_on_the_screen() {
    use base64::Engine as _;
    let desktop = Desktop::start("screenshot").await;
    let install = Install::everything_shipped();
    let server = desktop.shell(&install);
    let token = server.handshake().await;
    let status = tokio::task::block_in_place(|| {
        let status = desktop.window("capbridge");
        // Painted: the header's words show (a window is mapped before WebKit paints it).
        desktop.find(status, "Settings");
        status
    });
    // The window's header: a part of the screen that does not change while the test runs.
    let (width, height) = (300, 60);
    let region = json!({"x": status.x, "y": status.y, "width": width, "height": height});
    let (code, body) = invoke(
        &server,
        &token,
        "desktop.screenshot",
        json!({"region": region}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let shot = &body["result"]["ok"];
    assert_eq!(
        (shot["width"].clone(), shot["height"].clone()),
        (json!(width), json!(height))
    );
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["image-base64"].as_str().expect("image-base64"))
        .expect("base64");
    tokio::task::block_in_place(|| {
        let taken = desktop.shots.join("through-the-contract.png");
        std::fs::write(&taken, &png).expect("write the screenshot");
        // The same part of the screen as ImageMagick reads it: the same pixels, and not a
        // blank (the header has text on it).
        let screen = desktop.screenshot("the-screen");
        let reference = desktop.shots.join("reference.png");
        let cropped = Command::new("convert")
            .arg(&screen)
            .args([
                "-crop",
                &format!("{width}x{height}+{}+{}", status.x, status.y),
                "+repage",
            ])
            .arg(&reference)
            .status()
            .expect("convert runs");
        assert!(cropped.success());
        let compared = Command::new("compare")
            .args(["-metric", "AE"])
            .arg(&taken)
            .arg(&reference)
            .arg("null:")
            .output()
            .expect("compare runs");
        let differing = String::from_utf8_lossy(&compared.stderr);
        assert_eq!(differing.trim(), "0", "pixels differ: {differing}");
        let colors = Command::new("identify")
            .args(["-format", "%k"])
            .arg(&taken)
            .output()
            .expect("identify runs");
        let colors: u32 = String::from_utf8_lossy(&colors.stdout)
            .trim()
            .parse()
            .unwrap();
        assert!(colors > 2, "a blank screenshot ({colors} colors)");
    });

    // The whole screen.
    let (code, body) = invoke(
        &server,
        &token,
        "desktop.screenshot",
        json!({"region": null}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"]["ok"]["width"], 1280);
    assert_eq!(body["result"]["ok"]["height"], 900);

    // A region off the screen, or not a region, is refused with why.
    let (code, body) = invoke(
        &server,
        &token,
        "desktop.screenshot",
        json!({"region": {"x": 1200, "y": 0, "width": 100, "height": 10}}),
    )
    .await;
    // A command's own error: 500 `command_failed`, with the component's error as details.
    assert_eq!(code, 500, "{body}");
    assert!(
        body["error"]["details"]["invalid-argument"]
            .as_str()
            .is_some_and(|why| why.contains("does not lie on the 1280×900 screen")),
        "{body}"
    );
    let (code, body) = invoke(
        &server,
        &token,
        "desktop.screenshot",
        json!({"region": {"x": -1, "y": 0, "width": 10, "height": 10}}),
    )
    .await;
    assert_eq!(code, 500, "{body}");
    assert!(
        body["error"]["details"]["invalid-argument"]
            .as_str()
            .is_some_and(|why| why.contains("at least 0")),
        "{body}"
    );

    // The text on the screen now: the status window's header is in it, each word placed
    // (read again if OCR misses it once).
    let mut tries = 0;
    let settings = loop {
        let (code, body) = invoke(
            &server,
            &token,
            "desktop.ocr",
            json!({"image-base64": null}),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let read = body["result"]["ok"].clone();
        let found = read["words"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["text"] == "Settings")
            .cloned();
        tries += 1;
        match found {
            Some(word) => break word,
            None if tries < 5 => tokio::time::sleep(Duration::from_millis(500)).await,
            None => panic!("no word `Settings` in {tries} reads: {read}"),
        }
    };
    let x = settings["x"].as_i64().unwrap() as i32;
    let y = settings["y"].as_i64().unwrap() as i32;
    assert!(
        (status.x..status.x + status.width).contains(&x) && (status.y..status.y + 60).contains(&y),
        "`Settings` at ({x}, {y}), not in the header of {status:?}"
    );

    let (code, body) = invoke(&server, &token, "desktop.ping", json!({})).await;
    assert_eq!(
        (code, body["result"].clone()),
        (200, json!("pong")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_display_capbridge_runs_headless_as_serve() {
    let install = Install::shipped(&["canvas", "desktop"]);
    // No DISPLAY, no WAYLAND_DISPLAY: the environment is cleared.
    let server =
        tokio::task::block_in_place(|| Server::start_with(&install, &[], &["--port", "0"]));
    assert_eq!(server.health().await, 200);
    assert!(
        server.log().contains("running headless"),
        "{}",
        server.log()
    );
    let token = server.handshake().await;
    let (_, body) = invoke(
        &server,
        &token,
        "canvas.show",
        json!({"html": "x", "position": {"x": 0, "y": 0, "width": 10, "height": 10}}),
    )
    .await;
    // No screen to show an overlay on: the component's call says so.
    let why = body["error"]["details"]["unavailable"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("no screen"), "{body}");
    // Text is read off a given image without any display.
    let image = tempfile::tempdir().unwrap();
    let png = image.path().join("hello.png");
    let rendered = Command::new("convert")
        .args([
            "-size",
            "520x90",
            "xc:white",
            "-fill",
            "black",
            "-font",
            "DejaVu-Sans",
        ])
        .args([
            "-pointsize",
            "36",
            "-annotate",
            "+20+60",
            "Hello from capbridge",
        ])
        .arg(&png)
        .status()
        .expect("convert runs");
    assert!(rendered.success());
    let encoded = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&png).unwrap())
    };
    let (code, body) = invoke(
        &server,
        &token,
        "desktop.ocr",
        json!({"image-base64": encoded}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["result"]["ok"]["text"], "Hello from capbridge",
        "{body}"
    );
    assert_eq!(body["result"]["ok"]["words"].as_array().unwrap().len(), 3);
    // Not an image: refused, saying why.
    for (bad, why) in [("%%%", "not base64"), ("aGVsbG8=", "not a PNG")] {
        let (code, body) =
            invoke(&server, &token, "desktop.ocr", json!({"image-base64": bad})).await;
        assert_eq!(code, 500, "{body}");
        assert!(
            body["error"]["details"]["invalid-argument"]
                .as_str()
                .is_some_and(|w| w.contains(why)),
            "{body}"
        );
    }

    // Nor a screen to read.
    let (code, body) = invoke(
        &server,
        &token,
        "desktop.screenshot",
        json!({"region": null}),
    )
    .await;
    assert_eq!(code, 500, "{body}");
    let why = body["error"]["details"]["unavailable"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("no display"), "{body}");
}
