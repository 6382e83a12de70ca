//! A new user's first component with HTTP: they drop a component with a webhook route and a
//! dashboard into `components/`, start `capbridge serve`, post to the webhook with curl, open
//! the dashboard with `capbridge component open` (through xdg-open, into headless Chromium),
//! and see the hostile cases refused.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

use capbridge_tests::program;

use crate::commands::{Home, Serve, Stdin};

const POLICY: &str = r#"
version = 1
description = "A dashboard with a GitHub webhook"

[grants.serve.web]
auth = "owner"

[[grants.serve.routes]]
id = "github"
path = "/hooks/github"
methods = ["POST"]
auth = "verify"
description = "GitHub webhook; the component checks the signature"

[[grants.serve.routes]]
id = "whoami"
path = "/api/whoami"
methods = ["GET"]
auth = "owner"
"#;

fn curl(args: &[&str]) -> (String, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs (cargo xtask test installs it)");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_user_drops_in_a_dashboard_posts_to_its_webhook_and_opens_it() {
    let home = Home::new();
    let components = home.path().join("components");
    std::fs::copy(program("web-probe"), components.join("dash.wasm")).unwrap();
    capbridge_tests::copy_web_probe_ui(&components.join("dash/web"));
    std::fs::write(components.join("dash/web/.env"), "TOKEN=never-served").unwrap();
    std::fs::write(home.path().join("policy/dash.toml"), POLICY).unwrap();

    let serve = Serve::start(&home, Stdin::Null).await;
    let port = serve.port.to_string();
    let base = format!("http://127.0.0.1:{port}/plugins/dash");
    let own = format!("http://dash.localhost:{port}/plugins/dash");

    // The webhook, as GitHub's delivery (or the user's curl) posts it.
    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        "x-hub-signature-256: sha256=abc",
        "--data",
        "{\"action\":\"opened\"}",
        &format!("{base}/hooks/github"),
    ]);
    assert_eq!(code, "202", "{body}\n{}", serve.log());
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["route"], "github");
    assert_eq!(seen["body"], "{\"action\":\"opened\"}");

    // `capbridge component open dash`: the link goes to the person's browser through xdg-open
    // ($BROWSER, here a script that hands it to the test).
    let opened = home.path().join("opened-url");
    let browser = home.path().join("browser.sh");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\nprintf '%s' \"$1\" > '{}'\n", opened.display()),
    )
    .unwrap();
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    let printed = ok(&home
        .capbridge()
        .args(["component", "open", "dash", "--port", &port])
        .env("BROWSER", &browser)
        .output()
        .unwrap());
    let link = std::fs::read_to_string(&opened).expect("xdg-open ran the browser");
    assert_eq!(printed, link);
    assert!(
        link.starts_with(&format!(
            "http://dash.localhost:{port}/_capbridge/launch?code="
        )),
        "{link}"
    );

    // Headless Chromium opens it: the dashboard loads signed in and calls its owner route.
    let profile = tempfile::tempdir().unwrap();
    let dom = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-proxy-server",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-extensions",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&link)
        .output()
        .expect("chromium runs (cargo xtask test installs it)");
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(
        dom.contains("\"whoami\":{\"status\":200") && dom.contains("\"route\":\"whoami\""),
        "the dashboard did not report its owner route: {dom}\n{}",
        serve.log()
    );

    // The link worked once; the hostile cases are refused, without the UI's cookie and with it
    // (curl signed in through a second link).
    let (code, _) = curl(&[&link]);
    assert_eq!(code, "403", "a used launch link");
    let second = ok(&home
        .capbridge()
        .args(["component", "open", "dash", "--print", "--port", &port])
        .output()
        .unwrap());
    let jar = home.path().join("cookies");
    let jar = jar.to_str().unwrap();
    let (code, _) = curl(&["-c", jar, &second]);
    assert_eq!(code, "200", "the second link signs curl in");
    for (url, without, with) in [
        (format!("{own}/api/whoami"), "401", "200"),
        (format!("{base}/api/whoami"), "401", "401"),
        (format!("{own}/ui/"), "401", "200"),
        (format!("{own}/ui/../../../policy/dash.toml"), "401", "404"),
        (format!("{own}/ui/%2e%2e/%2e%2e/dash.wasm"), "401", "404"),
        (format!("{own}/ui/..%5c..%5cdash.wasm"), "404", "404"),
        (format!("{own}/ui/.env"), "401", "404"),
        (format!("{base}/ui/"), "404", "404"),
        (
            format!("http://dash.localhost:{port}/api/v1/health"),
            "403",
            "403",
        ),
    ] {
        for (cookie, expected) in [(None, without), (Some(jar), with)] {
            let mut args = vec!["--path-as-is"];
            if let Some(jar) = cookie {
                args.extend(["-b", jar]);
            }
            args.push(&url);
            let (code, body) = curl(&args);
            assert_eq!(
                code,
                expected,
                "{url} (cookie: {}): {body}",
                cookie.is_some()
            );
            assert!(
                !body.contains("never-served") && !body.contains("version = 1"),
                "{url}"
            );
        }
    }
    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "origin: https://evil.example",
        &format!("{base}/hooks/github"),
    ]);
    assert_eq!(code, "403", "a cross-site post: {body}");
}

/// A route call is an ordinary call: a component author records one from the terminal and
/// replays it as a test (`capbridge replay`, `capbridge test`).
#[test]
fn a_route_call_records_and_replays_like_any_call() {
    let fx = capbridge_tests::Fixture::new();
    fx.add("dash", &program("web-probe"), Some(POLICY));
    let web = fx.components_dir().join("dash/web");
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(web.join("index.html"), "<html><head></head></html>").unwrap();
    let trace = fx.path().join("dash/tests/github.trace.json");
    std::fs::create_dir_all(trace.parent().unwrap()).unwrap();
    let request = serde_json::json!({ "request": {
        "route-id": "github", "method": "POST", "path": "/hooks/github", "query": [],
        "path-params": [], "headers": [["content-type", "application/json"]],
        "body": "{\"action\":\"opened\"}", "body-encoding": "utf8",
        "base-url": "http://127.0.0.1:47832/plugins/dash",
    }});
    let answer = ok(&crate::capbridge(
        &fx,
        &[
            "component",
            "call",
            "dash",
            "route-handler.handle",
            &request.to_string(),
            "--record",
            trace.to_str().unwrap(),
        ],
    ));
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["status"], 202, "{answer}");
    let replayed = crate::capbridge(&fx, &["replay", trace.to_str().unwrap()]);
    let text = ok(&replayed);
    assert!(text.starts_with("ok"), "{text}");
}
