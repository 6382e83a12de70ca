//! The `capbridge` command as a user runs it, against the shipped example and hostile set-ups.

use std::process::{Command, Output};

use capbridge_tests::{component, policy, program, shared_cache_dir, shipped_policy, Fixture};

use crate::capbridge;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn shipped_echo(fx: &Fixture) {
    fx.add("echo", &component("echo"), Some(&shipped_policy("echo")));
}

#[test]
fn component_list_shows_status_imports_grants_and_exports() {
    let fx = Fixture::new();
    shipped_echo(&fx);
    fx.add("events-probe", &program("events-probe"), Some(&policy("")));
    let out = capbridge(&fx, &["component", "list"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("echo  loaded"), "{text}");
    assert!(text.contains("grants:  events echo.*; log"), "{text}");
    assert!(
        text.contains("capbridge:host/events@0.1.0  (granted by grants.events)"),
        "{text}"
    );
    assert!(text.contains("(baseline)"), "{text}");
    assert!(text.contains("reverse(text: string) -> string"), "{text}");
    assert!(text.contains("events-probe  NOT LOADED"), "{text}");
    assert!(text.contains("NOT GRANTED: needs grants.events"), "{text}");

    let json = capbridge(&fx, &["component", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(list[0]["id"], "echo");
    assert_eq!(list[0]["status"]["state"], "loaded");
    assert_eq!(list[1]["status"]["state"], "failed");
}

#[test]
fn refused_imports_are_grouped_one_line_per_reason() {
    let fx = Fixture::new();
    fx.add(
        "socket-probe",
        &program("socket-probe"),
        Some(&policy("[grants]\nnetwork = [\"http://127.0.0.1:9\"]")),
    );
    // Imports events and log, neither granted: two reasons, so two lines.
    fx.add("events-probe", &program("events-probe"), Some(&policy("")));
    let not_provided = "which capbridge does not provide to components";
    for command in [&["component", "list"][..], &["policy", "check"]] {
        let text = stdout(&capbridge(&fx, command));
        // Every refused socket import is listed under `imports`, and once in the one line.
        let sockets: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("wasi:sockets/") && l.contains("NOT PROVIDED"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with("wasi:sockets/"))
            })
            .collect();
        assert!(sockets.len() > 1, "{text}");
        assert_eq!(
            text.matches(not_provided).count(),
            1,
            "{command:?}:\n{text}"
        );
        assert_eq!(
            text.matches("raw sockets cannot be granted").count(),
            1,
            "{text}"
        );
        let line = text.lines().find(|l| l.contains(not_provided)).unwrap();
        let count = line.matches("wasi:sockets/").count();
        assert!(count > 1, "{line}");
        assert!(line.contains(&format!("({count} interfaces)")), "{line}");
        for import in &sockets {
            assert_eq!(line.matches(&format!("`{import}`")).count(), 1, "{line}");
        }
        for key in ["grants.events", "grants.log"] {
            let needs = format!("does not grant (it needs `{key}`)");
            assert_eq!(text.matches(&needs).count(), 1, "{text}");
        }
    }
}

#[test]
fn policy_check_passes_the_shipped_policies_and_fails_on_any_problem() {
    let fx = Fixture::new();
    shipped_echo(&fx);
    let out = capbridge(&fx, &["policy", "check"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("echo: ok"));
    assert!(stdout(&out).contains("✓ capbridge:host/log@0.1.0  granted by grants.log"));

    fx.add(
        "events-probe",
        &program("events-probe"),
        Some(&policy("[grants]\nevents = [\"x\"]")),
    );
    let out = capbridge(&fx, &["policy", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("✗ capbridge:host/log@0.1.0  NOT GRANTED: needs grants.log"),
        "{}",
        stdout(&out)
    );

    let fx = Fixture::new();
    shipped_echo(&fx);
    std::fs::write(
        fx.policy_path("orphan"),
        "version = 1\nunknown-key = true\n",
    )
    .unwrap();
    let out = capbridge(&fx, &["policy", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("unknown-key"), "{}", stdout(&out));
}

#[test]
fn policy_explain_summarises_and_flags_risky_grants() {
    let fx = Fixture::new();
    let file = fx.policy_path("risky");
    std::fs::write(
        &file,
        policy("[grants]\nnetwork = [\"https://api.example.com\"]\nenvironment = [\"GITHUB_TOKEN\"]\n[[grants.directories]]\nhost = \"~/\"\nguest = \"/home\"\naccess = \"read-write\""),
    )
    .unwrap();
    let out = capbridge(&fx, &["policy", "explain", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.matches("RISK").count() >= 3, "{text}");
    assert!(
        text.contains("api.example.com") && text.contains("GITHUB_TOKEN"),
        "{text}"
    );

    let out = capbridge(&fx, &["policy", "explain", "/nonexistent/x.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.toml"));
}

#[test]
fn component_call_prints_the_json_result() {
    let fx = Fixture::new();
    shipped_echo(&fx);
    let out = capbridge(
        &fx,
        &["component", "call", "echo", "reverse", r#"{"text":"abc"}"#],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim(), "\"cba\"");
    let out = capbridge(
        &fx,
        &["component", "call", "echo", "reverse", r#"{"text":1}"#],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`text`: expected string"),
        "{out:?}"
    );
}

/// `component call` loads only the component it calls: another component that cannot load (no
/// policy, an ungranted import) is not its business and is not mentioned.
#[test]
fn component_call_loads_only_the_component_called() {
    let fx = Fixture::new();
    shipped_echo(&fx);
    fx.add("events-probe", &program("events-probe"), Some(&policy("")));
    fx.add("no-policy", &program("sandbox-probe"), None);
    let out = capbridge(
        &fx,
        &["component", "call", "echo", "reverse", r#"{"text":"abc"}"#],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim(), "\"cba\"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for other in ["events-probe", "no-policy", "not loaded"] {
        assert!(!stderr.contains(other), "{other} in:\n{stderr}");
    }
    // Calling a component that is not there still says so.
    let out = capbridge(&fx, &["component", "call", "nope", "run"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no component named `nope`"),
        "{out:?}"
    );
}

fn with_config(fx: &Fixture, config: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_capbridge"));
    command
        .args(["--components", fx.components_dir().to_str().unwrap()])
        .args(["--policies", fx.policy_dir().to_str().unwrap()])
        .args(["--cache", shared_cache_dir().to_str().unwrap()])
        .args(["--config", config.to_str().unwrap()])
        // Its own state (whitelist rules, the audit log, which one `serve` at a time holds):
        // tests run side by side.
        .env("XDG_DATA_HOME", fx.path().join("data"))
        .env_remove("CAPBRIDGE_PORT");
    command
}

/// A plain HTTP/1.1 GET, as any local client would send it.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn serve_prints_its_address_answers_and_stops_cleanly_on_sigterm() {
    use std::io::BufRead as _;
    let fx = Fixture::new();
    shipped_echo(&fx);
    let config = fx.path().join("config/config.toml");
    let mut child = with_config(&fx, &config)
        .args(["serve", "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("serve prints its address").unwrap();
    let port: u16 = first
        .strip_prefix("capbridge listening on http://127.0.0.1:")
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .parse()
        .unwrap();
    let health = http_get(port, "/api/v1/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("osloop.bridge.v1"), "{health}");
    // The first run persisted the default port; the one-run override did not replace it.
    let persisted = std::fs::read_to_string(&config).unwrap();
    assert!(persisted.contains("port = 47832"), "{persisted}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l == "capbridge: stopped"), "{rest:?}");
}

/// `serve` knows its port before any component loads: a network grant that reaches it does not
/// load (a component must not become a client of the contract it serves).
#[test]
fn serve_refuses_a_network_grant_to_its_own_port() {
    use std::io::BufRead as _;
    let fx = Fixture::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    fx.add(
        "net-probe",
        &program("net-probe"),
        Some(&policy(&format!(
            "[grants]\nnetwork = [\"http://127.0.0.1:{port}\"]"
        ))),
    );
    let config = fx.path().join("config/config.toml");
    let mut child = with_config(&fx, &config)
        .args(["serve", "--port", &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("serve prints its address").unwrap();
    assert_eq!(
        first,
        format!("capbridge listening on http://127.0.0.1:{port}")
    );
    let second = lines.next().expect("a summary line").unwrap();
    assert!(second.contains("0 of 1 components loaded"), "{second}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("bridge's own port {port}")),
        "{stderr}"
    );
}

#[test]
fn serve_on_a_busy_port_fails_naming_it_and_keeps_the_persisted_port() {
    let fx = Fixture::new();
    shipped_echo(&fx);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = fx.path().join("config.toml");
    let text = format!("# mine\nport = {port}\n");
    std::fs::write(&config, &text).unwrap();
    let out = with_config(&fx, &config).arg("serve").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("port {port} on 127.0.0.1 is already in use")),
        "{stderr}"
    );
    assert!(stderr.contains("never moves to another port"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
}

#[test]
fn config_set_port_persists_and_refuses_bad_values_without_changing_the_file() {
    let fx = Fixture::new();
    let config = fx.path().join("config.toml");
    let out = with_config(&fx, &config)
        .args(["config", "set-port", "40123"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(saved.contains("port = 40123"), "{saved}");
    for bad in ["0", "70000", "x"] {
        let out = with_config(&fx, &config)
            .args(["config", "set-port", bad])
            .output()
            .unwrap();
        assert!(!out.status.success(), "set-port {bad} accepted");
        assert_eq!(std::fs::read_to_string(&config).unwrap(), saved);
    }
}

#[test]
fn a_word_that_is_neither_a_command_nor_an_osloop_url_is_refused() {
    let fx = Fixture::new();
    // Global options, then a subcommand: still the subcommand (not the URL argument).
    let listed = capbridge(&fx, &["component", "list"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    for (word, says) in [
        ("sevre", "`sevre` is neither a command nor an osloop:// URL"),
        // Without a display an osloop:// URL has no shell to go to.
        ("osloop://focus", "needs a display"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_capbridge"))
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .args(["--components", fx.components_dir().to_str().unwrap()])
            .args(["--policies", fx.policy_dir().to_str().unwrap()])
            .arg(word)
            .output()
            .expect("capbridge runs");
        assert!(!out.status.success(), "{word}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{word}: {stderr}");
    }
}
