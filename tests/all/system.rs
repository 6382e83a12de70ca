//! `/api/v1/system/*` and `/api/v1/awake/*` end to end: a real server, a real HTTP client, the
//! real `system` and `awake` components. What the system component reports is checked against
//! this machine, looked at natively; policies that grant less show that what is not granted is
//! invisible or refused.

use std::path::{Path, PathBuf};

use capbridge_api::BridgeConfig;
use capbridge_tests::{
    assert_error, edit_policy, failure, fixture_with, policy, shipped_policy, status_and_json,
    Bridge, Fixture,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A bridge serving one component with `policy`, and a session token.
struct Env {
    _fixture: Fixture,
    bridge: Bridge,
    token: String,
}

impl Env {
    async fn start(id: &str, policy: &str) -> Self {
        let fixture = fixture_with(id, policy);
        let runtime = fixture.runtime();
        capbridge_tests::assert_loaded(&runtime, id);
        Self::serve(fixture, runtime).await
    }

    async fn serve(fixture: Fixture, runtime: capbridge_runtime::Runtime) -> Self {
        let bridge = Bridge::start(runtime, BridgeConfig::default()).await;
        let token = bridge.token().await;
        Self {
            _fixture: fixture,
            bridge,
            token,
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        status_and_json(self.bridge.get_as(&self.token, path).await).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        status_and_json(self.bridge.post_as(&self.token, path, &body).await).await
    }

    /// `GET path`, which must answer 200.
    async fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    async fn locate(&self, names: &[&str]) -> (StatusCode, Value) {
        self.post("/api/v1/system/tools/locate", json!({ "names": names }))
            .await
    }
}

/// The shipped system policy after `edit`.
fn system_policy(edit: impl FnOnce(&mut toml::Table)) -> String {
    edit_policy(&shipped_policy("system"), edit)
}

fn grants(table: &mut toml::Table) -> &mut toml::Table {
    table["grants"].as_table_mut().unwrap()
}

/// What a policy lets the system component see, for predicting its answers natively.
struct View {
    /// (guest path, canonical host directory) of each directory grant.
    dirs: Vec<(String, PathBuf)>,
    /// Whether `PATH` is granted.
    path: bool,
    programs: Vec<String>,
}

impl View {
    fn of(policy: &str) -> Self {
        let table: toml::Table = policy.parse().unwrap();
        let grants = table["grants"].as_table().unwrap();
        let dirs = grants
            .get("directories")
            .and_then(|d| d.as_array())
            .map(|dirs| {
                dirs.iter()
                    .map(|d| {
                        let host = d["host"].as_str().unwrap();
                        let host = std::fs::canonicalize(host).unwrap_or_else(|_| host.into());
                        (d["guest"].as_str().unwrap().to_string(), host)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let path = grants
            .get("environment")
            .and_then(|e| e.as_array())
            .is_some_and(|vars| vars.iter().any(|v| v.as_str() == Some("PATH")));
        let programs = grants
            .get("system")
            .and_then(|s| s.get("programs"))
            .and_then(|p| p.as_array())
            .map(|p| p.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        View {
            dirs,
            path,
            programs,
        }
    }

    /// The absolute `PATH` entries, in order, each once (as the component reads them).
    fn path_dirs(&self) -> Vec<String> {
        if !self.path {
            return Vec::new();
        }
        let mut dirs: Vec<String> = Vec::new();
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let trimmed = dir.trim_end_matches('/');
            let dir = if trimmed.is_empty() && dir.starts_with('/') {
                "/"
            } else {
                trimmed
            };
            if dir.starts_with('/') && !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_string());
            }
        }
        dirs
    }

    /// The host file guest path `dir/name` stands for, when `dir` lies in a granted directory,
    /// with that directory's canonical host path.
    fn host_file(&self, dir: &str, name: &str) -> Option<(PathBuf, &Path)> {
        let (guest, host) = self
            .dirs
            .iter()
            .filter(|(guest, _)| dir == guest || dir.starts_with(&format!("{guest}/")))
            .max_by_key(|(guest, _)| guest.len())?;
        let rest = dir[guest.len()..].trim_start_matches('/');
        Some((host.join(rest).join(name), host.as_path()))
    }

    /// Whether the component finds program `dir/name`: a regular file, following symbolic
    /// links as far as the sandbox lets it (inside the granted directory); a link it cannot
    /// follow (out of the grant, or dangling) counts as the program installed under that name.
    fn visible(&self, dir: &str, name: &str) -> bool {
        let Some((file, host)) = self.host_file(dir, name) else {
            return false;
        };
        match std::fs::canonicalize(&file) {
            Ok(real) if real.starts_with(host) => file.is_file(),
            _ => std::fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_symlink()),
        }
    }

    /// Where the component should find program `name`, in search order.
    fn find(&self, name: &str) -> Vec<String> {
        self.path_dirs()
            .into_iter()
            .filter(|dir| self.visible(dir, name))
            .map(|dir| format!("{}/{name}", if dir == "/" { "" } else { &dir }))
            .collect()
    }
}

/// Every `PATH` entry holding a regular file `name`, looked at natively without any sandbox.
fn native_find(name: &str) -> Vec<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(name))
        .filter(|p| p.is_file())
        .collect()
}

/// The first non-empty line `program --version` prints (stdout, else stderr), natively.
fn native_version_line(program: &Path) -> String {
    let output = std::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    [output.stdout, output.stderr]
        .iter()
        .find_map(|bytes| {
            String::from_utf8_lossy(bytes)
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn os_release(key: &str) -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix('=')?;
        let value = value.trim().trim_matches('"').trim_matches('\'');
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// The package managers recipes know, in order of preference, with the programs that show each.
const MANAGERS: &[(&str, &[&str])] = &[
    ("apt", &["apt-get", "apt"]),
    ("dnf", &["dnf"]),
    ("pacman", &["pacman"]),
    ("zypper", &["zypper"]),
    ("apk", &["apk"]),
    ("brew", &["brew"]),
    ("winget", &["winget"]),
];

fn has_apt() -> bool {
    Path::new("/usr/bin/apt").is_file()
}

#[tokio::test]
async fn info_describes_this_machine() {
    let env = Env::start("system", &shipped_policy("system")).await;
    let info = env.ok("/api/v1/system/info").await;
    assert_eq!(info["os"], std::env::consts::OS);
    assert_eq!(info["arch"], std::env::consts::ARCH);
    if Path::new("/etc/os-release").is_file() {
        assert_eq!(info["osName"], json!(os_release("NAME")), "{info}");
        assert_eq!(info["osVersion"], json!(os_release("VERSION_ID")), "{info}");
    }
    if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        assert_eq!(info["kernel"], release.trim(), "{info}");
    }
    match std::env::var("SHELL") {
        Ok(shell) if !shell.is_empty() => assert_eq!(info["shell"], shell),
        _ => eprintln!("SHELL is not set: the shell is not checked"),
    }
    let view = View::of(&shipped_policy("system"));
    let expected: Vec<&str> = MANAGERS
        .iter()
        .filter(|(_, programs)| programs.iter().any(|p| !view.find(p).is_empty()))
        .map(|(manager, _)| *manager)
        .collect();
    assert_eq!(info["packageManagers"], json!(expected), "{info}");
    if has_apt() {
        assert!(
            info["packageManagers"]
                .as_array()
                .unwrap()
                .contains(&json!("apt")),
            "{info}"
        );
    } else {
        eprintln!("no /usr/bin/apt: apt is not expected");
    }
    // Nothing but these keys: no environment, no home directory, no user name.
    let mut keys: Vec<&str> = info
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "arch",
            "kernel",
            "os",
            "osName",
            "osVersion",
            "packageManagers",
            "shell"
        ]
    );
}

#[tokio::test]
async fn tools_report_what_is_installed_where_and_its_version() {
    let policy = shipped_policy("system");
    let view = View::of(&policy);
    let env = Env::start("system", &policy).await;
    let body = env.ok("/api/v1/system/tools").await;
    let tools = body["tools"].as_array().unwrap();
    // The catalogue is the list of programs the shipped policy lets it run.
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, view.programs, "{body}");
    let mut versions = 0;
    for tool in tools {
        let name = tool["name"].as_str().unwrap();
        assert!(!tool["description"].as_str().unwrap().is_empty(), "{tool}");
        let found = view.find(name);
        assert_eq!(
            tool["installed"],
            !found.is_empty(),
            "{tool} (expected at {found:?})"
        );
        assert_eq!(tool["path"], json!(found.first()), "{tool}");
        let native = native_find(name);
        if let Some(path) = found.first() {
            // What the component sees is real: the same file natively.
            assert!(Path::new(path).is_file(), "{tool}");
            assert!(
                native
                    .iter()
                    .any(|n| n.parent() == Path::new(path).parent()),
                "{tool} not natively on PATH: {native:?}"
            );
        }
        match tool["version"].as_str() {
            Some(version) => {
                versions += 1;
                assert!(
                    tool["installed"] == true,
                    "a version without a program: {tool}"
                );
                assert!(version.contains('.'), "{tool}");
                let line = native_version_line(Path::new(tool["path"].as_str().unwrap()));
                assert!(line.contains(version), "{tool}: `{line}`");
            }
            None => assert!(tool["version"].is_null(), "{tool}"),
        }
    }
    // Tools that print `--version` plainly must have a version when they are visible.
    for name in ["git", "curl", "jq", "make", "wget"] {
        let tool = tools.iter().find(|t| t["name"] == name).unwrap();
        if tool["installed"] == true {
            let version = tool["version"].as_str();
            assert!(version.is_some(), "{tool}");
            let line = native_version_line(Path::new(tool["path"].as_str().unwrap()));
            assert!(line.contains(version.unwrap()), "{tool}: `{line}`");
        } else {
            eprintln!("{name} is not installed where the policy grants: not checked");
        }
    }
    assert!(
        versions > 0 || tools.iter().all(|t| t["installed"] == false),
        "no installed tool has a version: {body}"
    );
}

/// A program installed in a granted `PATH` directory, natively: there (following links as any
/// shell does), whatever the link points to.
fn installed_in_granted_dir(view: &View, name: &str) -> bool {
    view.path_dirs().iter().any(|dir| {
        view.host_file(dir, name)
            .is_some_and(|(file, _)| file.is_file())
    })
}

/// What a shell on this machine would run is "installed", even when the entry in the granted
/// directory is a symbolic link to a place the policy does not grant: Debian's alternatives
/// (`/usr/bin/java -> /etc/alternatives/java`), npm (`/usr/bin/npm ->
/// ../lib/node_modules/npm/bin/npm-cli.js`), every Homebrew program on macOS
/// (`/opt/homebrew/bin/git -> ../Cellar/git/…`).
#[tokio::test]
async fn tools_linked_from_a_granted_directory_count_as_installed() {
    let policy = shipped_policy("system");
    let view = View::of(&policy);
    let env = Env::start("system", &policy).await;
    let body = env.ok("/api/v1/system/tools").await;
    for tool in body["tools"].as_array().unwrap() {
        let name = tool["name"].as_str().unwrap();
        assert_eq!(
            tool["installed"],
            installed_in_granted_dir(&view, name),
            "{tool}"
        );
    }
}

#[tokio::test]
async fn locate_finds_programs_on_the_granted_path() {
    let policy = shipped_policy("system");
    let view = View::of(&policy);
    let env = Env::start("system", &policy).await;
    let made_up = "capbridge-no-such-program-4e1b";
    let (status, body) = env.locate(&["sh", made_up, "sh"]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{body}");
    let sh = &results[0];
    assert_eq!(sh["name"], "sh");
    assert_eq!(sh["found"], true, "{body}");
    let paths: Vec<&str> = sh["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"/usr/bin/sh") || paths.contains(&"/bin/sh"),
        "{paths:?}"
    );
    assert_eq!(paths, view.find("sh"));
    assert_eq!(results[2], results[0]);
    assert_eq!(
        results[1],
        json!({ "name": made_up, "found": false, "paths": [] })
    );

    // The limits: 64 names of 64 characters are fine; no names is an empty answer.
    let longest = "a".repeat(64);
    let many: Vec<&str> = vec![longest.as_str(); 64];
    let (status, body) = env.locate(&many).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 64);
    assert_eq!(body["results"][63]["found"], false);
    let (status, body) = env.locate(&[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "results": [] }));
    for name in ["a.b_c+d-e", "g++", "python3.11", "java"] {
        let (status, body) = env.locate(&[name]).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        assert_eq!(
            body["results"][0]["paths"],
            json!(view.find(name)),
            "{name}"
        );
    }

    let too_long = "a".repeat(65);
    for names in [
        vec!["../sh"],
        vec!["a/b"],
        vec!["/usr/bin/sh"],
        vec![".."],
        vec![""],
        vec![too_long.as_str()],
        vec!["sh\0"],
        vec![" sh"],
        vec!["sh*"],
        vec!["s h"],
        vec!["sh", "../../etc/passwd"],
        vec!["sh"; 65],
    ] {
        let refused = env.locate(&names).await;
        assert_error(&refused, StatusCode::BAD_REQUEST, "invalid_argument");
        assert!(refused.1.get("results").is_none());
    }
    let (status, body) = env
        .post("/api/v1/system/tools/locate", json!({ "names": "sh" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// Debian has `/usr/bin/X11 -> .`: a link the sandbox can follow, to a directory. It is not a
/// program; only links that cannot be followed from inside count as one.
#[tokio::test]
async fn a_link_to_a_directory_is_not_a_program() {
    let policy = shipped_policy("system");
    let view = View::of(&policy);
    let x11 = Path::new("/usr/bin/X11");
    if !(x11.is_symlink() && x11.is_dir()) {
        eprintln!("no /usr/bin/X11 link to a directory here: not checked");
        return;
    }
    let env = Env::start("system", &policy).await;
    let (status, body) = env.locate(&["X11"]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["results"][0]["paths"],
        json!(view.find("X11")),
        "{body}"
    );
    assert_eq!(body["results"][0]["found"], false, "{body}");
}

#[tokio::test]
async fn recipes_are_data_and_resolve_picks_this_machine_s_manager() {
    let env = Env::start("system", &shipped_policy("system")).await;
    let body = env.ok("/api/v1/system/tools/recipes").await;
    let recipes = body["recipes"].as_array().unwrap();
    assert!(!recipes.is_empty());
    let programs = View::of(&shipped_policy("system")).programs;
    let managers: Vec<&str> = MANAGERS.iter().map(|(m, _)| *m).collect();
    for recipe in recipes {
        let command = recipe["command"].as_array().unwrap();
        assert!(!command.is_empty(), "{recipe}");
        assert!(
            command.iter().all(|c| !c.as_str().unwrap().is_empty()),
            "{recipe}"
        );
        assert!(command.contains(&recipe["package"]), "{recipe}");
        assert!(
            programs.iter().any(|p| recipe["tool"] == p.as_str()),
            "{recipe}"
        );
        let manager = recipe["manager"].as_str().unwrap();
        assert!(managers.contains(&manager), "{recipe}");
        let os = match manager {
            "brew" => "macos",
            "winget" => "windows",
            _ => "linux",
        };
        assert_eq!(recipe["os"], os, "{recipe}");
        assert!(recipe["needsRoot"].is_boolean(), "{recipe}");
    }
    // Every tool can be installed with apt.
    for program in &programs {
        assert!(
            recipes
                .iter()
                .any(|r| r["tool"] == program.as_str() && r["manager"] == "apt"),
            "no apt recipe for {program}"
        );
    }

    let (status, jq) = env
        .post(
            "/api/v1/system/tools/recipes/resolve",
            json!({ "tool": "jq" }),
        )
        .await;
    if has_apt() {
        assert_eq!(status, StatusCode::OK, "{jq}");
        assert_eq!(jq["tool"], "jq");
        assert_eq!(jq["manager"], "apt");
        assert_eq!(jq["os"], "linux");
        assert_eq!(jq["package"], "jq");
        assert_eq!(jq["needsRoot"], true);
        let command = jq["command"].as_array().unwrap();
        assert!(command.contains(&json!("jq")), "{jq}");
        assert!(
            recipes.contains(&jq),
            "resolve answers one of the recipes: {jq}"
        );
    } else {
        eprintln!("no /usr/bin/apt: resolve(jq) answered {status} {jq}");
    }
    for tool in ["no-such-tool", "", "JQ", "../jq"] {
        let missing = env
            .post(
                "/api/v1/system/tools/recipes/resolve",
                json!({ "tool": tool }),
            )
            .await;
        assert_error(&missing, StatusCode::NOT_FOUND, "not_found");
    }
}

#[tokio::test]
async fn without_programs_to_run_there_are_no_versions() {
    let policy = system_policy(|t| {
        grants(t)["system"]["programs"] = toml::Value::Array(Vec::new());
    });
    let view = View::of(&policy);
    assert!(view.programs.is_empty());
    let env = Env::start("system", &policy).await;
    let body = env.ok("/api/v1/system/tools").await;
    let tools = body["tools"].as_array().unwrap();
    assert!(!tools.is_empty());
    for tool in tools {
        let found = view.find(tool["name"].as_str().unwrap());
        assert_eq!(tool["installed"], !found.is_empty(), "{tool}");
        assert_eq!(tool["path"], json!(found.first()), "{tool}");
        assert!(
            tool["version"].is_null(),
            "ran a program it may not run: {tool}"
        );
    }
    assert!(
        tools.iter().any(|t| t["installed"] == true),
        "this test needs one catalogue tool (git, curl, …) installed in /usr/bin or the like: {body}"
    );
}

#[tokio::test]
async fn without_the_system_grant_the_component_does_not_load() {
    let policy = system_policy(|t| {
        grants(t).remove("system").unwrap();
    });
    let fixture = fixture_with("system", &policy);
    let runtime = fixture.runtime();
    let reason = failure(&runtime, "system");
    assert!(reason.contains("system"), "{reason}");
    let env = Env::serve(fixture, runtime).await;
    for response in [
        env.get("/api/v1/system/info").await,
        env.get("/api/v1/system/tools").await,
        env.get("/api/v1/system/tools/recipes").await,
        env.locate(&["sh"]).await,
        env.post(
            "/api/v1/system/tools/recipes/resolve",
            json!({ "tool": "jq" }),
        )
        .await,
    ] {
        assert_error(
            &response,
            StatusCode::SERVICE_UNAVAILABLE,
            "capability_unavailable",
        );
    }
}

#[tokio::test]
async fn directories_and_variables_not_granted_are_invisible() {
    let shipped = View::of(&shipped_policy("system"));
    assert!(
        shipped
            .find("sh")
            .iter()
            .any(|p| p.starts_with("/usr/bin/")),
        "this test needs /usr/bin/sh"
    );

    // Without /usr/bin: nothing is found there, though it is on PATH.
    let without_usr_bin = system_policy(|t| {
        grants(t)["directories"]
            .as_array_mut()
            .unwrap()
            .retain(|d| d["guest"].as_str() != Some("/usr/bin"));
    });
    let view = View::of(&without_usr_bin);
    let env = Env::start("system", &without_usr_bin).await;
    let (status, body) = env.locate(&["sh", "apt"]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for result in body["results"].as_array().unwrap() {
        let name = result["name"].as_str().unwrap();
        assert_eq!(result["paths"], json!(view.find(name)), "{result}");
        for path in result["paths"].as_array().unwrap() {
            assert!(!path.as_str().unwrap().starts_with("/usr/bin/"), "{result}");
        }
    }
    let tools = env.ok("/api/v1/system/tools").await;
    for tool in tools["tools"].as_array().unwrap() {
        let path = tool["path"].as_str().unwrap_or_default();
        assert!(!path.starts_with("/usr/bin/"), "{tool}");
    }
    drop(env);

    // Without any of the usual directories: nothing at all.
    let no_directories = system_policy(|t| {
        grants(t).remove("directories").unwrap();
    });
    let env = Env::start("system", &no_directories).await;
    let (status, body) = env.locate(&["sh", "git", "env"]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for result in body["results"].as_array().unwrap() {
        assert_eq!(result["found"], false, "{result}");
        assert_eq!(result["paths"], json!([]), "{result}");
    }
    let tools = env.ok("/api/v1/system/tools").await;
    for tool in tools["tools"].as_array().unwrap() {
        assert_eq!(tool["installed"], false, "{tool}");
        assert!(tool["version"].is_null(), "{tool}");
    }
    let info = env.ok("/api/v1/system/info").await;
    assert_eq!(info["packageManagers"], json!([]), "{info}");
    drop(env);

    // Without PATH: the directories are there, but the component does not know where to look.
    let no_path = system_policy(|t| {
        grants(t).remove("environment").unwrap();
    });
    let env = Env::start("system", &no_path).await;
    let (status, body) = env.locate(&["sh"]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["found"], false, "{body}");
}

#[tokio::test]
async fn every_system_and_awake_route_needs_a_session() {
    let fixture = Fixture::new();
    fixture.add(
        "system",
        &capbridge_tests::component("system"),
        Some(&shipped_policy("system")),
    );
    fixture.add(
        "awake",
        &capbridge_tests::component("awake"),
        Some(&shipped_policy("awake")),
    );
    let bridge = Bridge::start(fixture.runtime(), BridgeConfig::default()).await;
    for (method, path, body) in [
        ("GET", "/api/v1/system/info", json!(null)),
        ("GET", "/api/v1/system/tools", json!(null)),
        (
            "POST",
            "/api/v1/system/tools/locate",
            json!({ "names": ["sh"] }),
        ),
        ("GET", "/api/v1/system/tools/recipes", json!(null)),
        (
            "POST",
            "/api/v1/system/tools/recipes/resolve",
            json!({ "tool": "jq" }),
        ),
        ("GET", "/api/v1/awake/status", json!(null)),
        (
            "POST",
            "/api/v1/awake/acquire",
            json!({ "reason": "build" }),
        ),
        ("POST", "/api/v1/awake/release", json!({ "id": "hold-1" })),
    ] {
        let mut request = bridge
            .client
            .request(method.parse().unwrap(), bridge.url(path));
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "missing_token", "{path}");
    }
    // With a session the same routes answer.
    let token = bridge.token().await;
    let response = bridge.get_as(&token, "/api/v1/awake/status").await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn awake_without_its_grant_does_not_load() {
    let fixture = fixture_with("awake", &policy("description = \"no awake grant\""));
    let runtime = fixture.runtime();
    let reason = failure(&runtime, "awake");
    assert!(reason.contains("awake"), "{reason}");
    let env = Env::serve(fixture, runtime).await;
    for response in [
        env.get("/api/v1/awake/status").await,
        env.post("/api/v1/awake/acquire", json!({ "reason": "build" }))
            .await,
        env.post("/api/v1/awake/release", json!({ "id": "hold-1" }))
            .await,
    ] {
        assert_error(
            &response,
            StatusCode::SERVICE_UNAVAILABLE,
            "capability_unavailable",
        );
    }
}

#[tokio::test]
async fn awake_checks_reasons_and_hold_ids() {
    let env = Env::start("awake", &shipped_policy("awake")).await;
    let idle = json!({ "active": false, "holds": [] });
    assert_eq!(env.ok("/api/v1/awake/status").await, idle);
    let too_long = "r".repeat(201);
    for reason in [
        "",
        "   ",
        "\t\n",
        too_long.as_str(),
        "a\u{7}b",
        "line\nbreak",
    ] {
        let invalid = env
            .post("/api/v1/awake/acquire", json!({ "reason": reason }))
            .await;
        assert_error(&invalid, StatusCode::BAD_REQUEST, "invalid_argument");
    }
    for id in ["hold-1", "", "nope", "hold-0"] {
        let missing = env.post("/api/v1/awake/release", json!({ "id": id })).await;
        assert_error(&missing, StatusCode::NOT_FOUND, "not_found");
    }
    let (status, body) = env.post("/api/v1/awake/acquire", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(env.ok("/api/v1/awake/status").await, idle);
}

/// Without a D-Bus session bus, sleep cannot be prevented: a plain 503, and the bridge goes on.
#[tokio::test]
async fn awake_without_a_session_bus_is_unavailable_not_a_crash() {
    let runtime_dir_bus = std::env::var_os("XDG_RUNTIME_DIR")
        .map(|dir| PathBuf::from(dir).join("bus"))
        .is_some_and(|bus| bus.exists());
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some() || runtime_dir_bus {
        eprintln!("a D-Bus session bus may be present: not checked here");
        return;
    }
    let env = Env::start("awake", &shipped_policy("awake")).await;
    // The longest reason allowed passes the checks and reaches the host.
    for reason in ["build", &"r".repeat(200)] {
        let unavailable = env
            .post("/api/v1/awake/acquire", json!({ "reason": reason }))
            .await;
        assert_error(&unavailable, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
    assert_eq!(
        env.ok("/api/v1/awake/status").await,
        json!({ "active": false, "holds": [] })
    );
    let health = env
        .bridge
        .client
        .get(env.bridge.url("/api/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}
