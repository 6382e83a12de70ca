//! The `capbridge` command as a user runs it, against the shipped example and hostile set-ups.

use std::process::{Command, Output};

use capbridge_tests::{component, policy, program, shared_cache_dir, shipped_policy, Fixture};

fn capbridge(fx: &Fixture, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capbridge"))
        .args(["--components", fx.components_dir().to_str().unwrap()])
        .args(["--policies", fx.policy_dir().to_str().unwrap()])
        .args(["--cache", shared_cache_dir().to_str().unwrap()])
        .args(args)
        .output()
        .expect("capbridge runs")
}

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
