//! Commands end to end: a real server, real HTTP and WebSocket clients, the real `commands`
//! component, real child processes. The person is played through the host's approvals (what
//! the `serve` terminal and `capbridge prompts` call; those faces have their own tests in
//! host/cli/tests). What must not happen is checked where it would show: the process table,
//! the file system, the event socket.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use capbridge_api::BridgeConfig;
use capbridge_runtime::approvals::{Decider, Decision, Prompt};
use capbridge_tests::{
    assert_error, component, each_run_event, shipped_policy, shipped_policy_working_in,
    status_and_json, Bridge, Fixture, Socket,
};
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A bridge serving the commands component (and the system component, for installs).
struct Env {
    fixture: Fixture,
    bridge: Bridge,
    token: String,
    /// A directory of the test's own, the default working directory.
    work: tempfile::TempDir,
}

/// The shipped commands policy, working in `work`, after `edit` of its process grant.
fn commands_policy(work: &Path, edit: impl FnOnce(&mut toml::Table)) -> String {
    shipped_policy_working_in("commands", "process", work, edit)
}

impl Env {
    async fn start() -> Self {
        Self::with(|_| {}, BridgeConfig::default()).await
    }

    async fn with(edit: impl FnOnce(&mut toml::Table), config: BridgeConfig) -> Self {
        let work = tempfile::tempdir().unwrap();
        let fixture = Fixture::new();
        fixture.add(
            "commands",
            &component("commands"),
            Some(&commands_policy(work.path(), edit)),
        );
        fixture.add(
            "system",
            &component("system"),
            Some(&shipped_policy("system")),
        );
        Self::serve(fixture, work, config).await
    }

    async fn serve(fixture: Fixture, work: tempfile::TempDir, config: BridgeConfig) -> Self {
        let runtime = fixture.runtime();
        capbridge_tests::assert_loaded(&runtime, "commands");
        let bridge = Bridge::start(runtime, config).await;
        let token = bridge.token().await;
        Self {
            fixture,
            bridge,
            token,
            work,
        }
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        status_and_json(self.bridge.post_as(&self.token, path, &body).await).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        status_and_json(self.bridge.get_as(&self.token, path).await).await
    }

    async fn execute(&self, body: Value) -> (StatusCode, Value) {
        self.post("/api/v1/system/commands/execute", body).await
    }

    /// Executes `program args`, which must be accepted (200); returns the run.
    async fn run(&self, program: &str, args: &[&str]) -> Value {
        let (status, run) = self
            .execute(json!({ "template": { "program": program, "args": args } }))
            .await;
        assert_eq!(status, StatusCode::OK, "{run}");
        run
    }

    async fn run_detail(&self, id: &str) -> Value {
        let (status, run) = self
            .get(&format!("/api/v1/system/commands/runs/{id}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{run}");
        run
    }

    /// Waits until run `id` is over and returns it with its output.
    async fn ended(&self, id: &str) -> Value {
        for _ in 0..600 {
            let run = self.run_detail(id).await;
            if !matches!(run["status"].as_str(), Some("running" | "pending_approval")) {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("run {id} did not end");
    }

    fn approvals(&self) -> &capbridge_runtime::approvals::Approvals {
        self.bridge.server.shared().runtime.approvals()
    }

    /// The person answers the prompt of `run`.
    fn decide(&self, run: &Value, decision: Decision) -> Prompt {
        let id = run["requestId"]
            .as_str()
            .expect("the run waits on a prompt");
        self.approvals()
            .decide(id, decision, Decider::PromptsCli)
            .expect("the prompt is pending")
    }

    async fn socket(&self) -> Socket {
        self.bridge.events(&self.token).await
    }
}

/// Every event of run `run` on `socket` until (and with) the one whose type is in `last`.
async fn events_until(socket: &mut Socket, run: &str, last: &[&str]) -> Vec<Value> {
    let mut seen = Vec::new();
    each_run_event(socket, run, last, Duration::from_secs(60), |e| {
        seen.push(e.clone())
    })
    .await;
    seen
}

/// The bytes of a stream's events, decoded.
fn stream_bytes(events: &[Value], topic: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for event in events.iter().filter(|e| e["type"] == topic) {
        let data = event["payload"]["data"].as_str().unwrap();
        match event["payload"]["encoding"].as_str().unwrap() {
            "utf-8" => bytes.extend_from_slice(data.as_bytes()),
            "base64" => bytes.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap(),
            ),
            other => panic!("encoding {other}"),
        }
    }
    bytes
}

/// Every process on this machine whose arguments, joined by spaces, are exactly `command`.
fn processes_with(command: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if line.trim_end() == command {
                found.push(line);
            }
        }
    }
    found
}

#[tokio::test]
async fn once_then_whitelisted_then_by_rule_and_rejected() {
    let env = Env::start().await;
    let mut events = env.socket().await;

    // No rule: the run waits for the person, and the prompt shows the template.
    let run = env.run("echo", &["hello", "world"]).await;
    assert_eq!(run["status"], "pending_approval", "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    let prompt = capbridge_tests::next_event(&mut events, "system.permission.prompt").await;
    assert_eq!(prompt["payload"]["prompt"]["summary"], "echo hello world");
    assert_eq!(prompt["payload"]["runId"], id.as_str());
    assert_eq!(env.run_detail(&id).await["status"], "pending_approval");

    env.decide(&run, Decision::AllowOnce);
    let seen = events_until(&mut events, &id, &["system.command.completed"]).await;
    let types: Vec<&str> = seen.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "system.permission.decided",
            "system.command.started",
            "system.command.stdout",
            "system.command.completed"
        ]
    );
    assert_eq!(
        stream_bytes(&seen, "system.command.stdout"),
        b"hello world\n"
    );
    let done = env.ended(&id).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["exitCode"], 0);
    assert_eq!(done["approval"], "once");
    assert_eq!(done["stdout"], "hello world\n");
    assert_eq!(done["stdoutEncoding"], "utf-8");

    // Allowed once is not a rule: the same request asks again. Allow and whitelist.
    let again = env.run("echo", &["hello", "world"]).await;
    assert_eq!(again["status"], "pending_approval");
    env.decide(&again, Decision::AllowAndWhitelist);
    let again = env.ended(again["id"].as_str().unwrap()).await;
    assert_eq!(again["status"], "completed");
    assert_eq!(again["approval"], "whitelist");
    let rule_id = again["ruleId"].as_str().expect("a rule").to_string();
    let (status, rules) = env.get("/api/v1/system/permissions/commands").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rules["rules"][0]["id"], rule_id.as_str());
    assert_eq!(
        rules["rules"][0]["template"]["args"],
        json!(["hello", "world"])
    );
    assert_eq!(rules["rules"][0]["createdBy"], "prompts-cli");
    let (status, rule) = env
        .get(&format!("/api/v1/system/permissions/commands/{rule_id}"))
        .await;
    assert_eq!((status, &rule["id"]), (StatusCode::OK, &json!(rule_id)));

    // The rule lets the same template run at once, with no prompt.
    let by_rule = env.run("echo", &["hello", "world"]).await;
    assert_eq!(by_rule["status"], "running", "{by_rule}");
    assert_eq!(by_rule["approval"], "rule");
    assert_eq!(by_rule["ruleId"], rule_id.as_str());
    assert!(by_rule["requestId"].is_null());
    assert!(env.approvals().pending().is_empty());
    assert_eq!(
        env.ended(by_rule["id"].as_str().unwrap()).await["stdout"],
        "hello world\n"
    );

    // Only that exact template: one more argument asks. Rejected, it never runs.
    let other = env.run("echo", &["hello", "world", "!"]).await;
    assert_eq!(other["status"], "pending_approval");
    env.decide(&other, Decision::Reject);
    let other = env.ended(other["id"].as_str().unwrap()).await;
    assert_eq!(other["status"], "rejected");
    assert_eq!(other["rejection"], "rejected_by_user");
    assert!(other["startedAtMs"].is_null(), "{other}");

    // Deleting the rule: the template asks again.
    let (status, deleted) = status_and_json(
        env.bridge
            .client
            .delete(
                env.bridge
                    .url(&format!("/api/v1/system/permissions/commands/{rule_id}")),
            )
            .header(capbridge_tests::TOKEN_HEADER, &env.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &deleted["id"]), (StatusCode::OK, &json!(rule_id)));
    let (status, _) = env
        .get(&format!("/api/v1/system/permissions/commands/{rule_id}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let after = env.run("echo", &["hello", "world"]).await;
    assert_eq!(after["status"], "pending_approval");
    env.decide(&after, Decision::Reject);

    // Runs are listed newest first.
    let (_, runs) = env.get("/api/v1/system/commands/runs").await;
    let ids: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(ids[4], id.as_str());
}

#[tokio::test]
async fn an_unanswered_prompt_is_rejected_after_60_seconds() {
    let env = Env::start().await;
    let run = env.run("echo", &["nobody", "answers"]).await;
    let id = run["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_secs(55)).await;
    assert_eq!(env.run_detail(id).await["status"], "pending_approval");
    let ended = env.ended(id).await;
    assert_eq!(ended["status"], "rejected");
    assert_eq!(ended["rejection"], "rejected_by_user");
    assert!(
        ended["message"]
            .as_str()
            .unwrap()
            .contains("nobody answered"),
        "{ended}"
    );
}

#[tokio::test]
async fn rules_survive_a_restart() {
    let env = Env::start().await;
    let run = env.run("echo", &["kept"]).await;
    env.decide(&run, Decision::AllowAndWhitelist);
    env.ended(run["id"].as_str().unwrap()).await;
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

    let env = Env::serve(fixture, work, BridgeConfig::default()).await;
    let run = env.run("echo", &["kept"]).await;
    assert_eq!(run["status"], "running", "{run}");
    assert_eq!(run["approval"], "rule");
}

#[tokio::test]
async fn installs_always_prompt_even_with_a_matching_rule() {
    if !Path::new("/usr/bin/apt-get").exists() {
        eprintln!("skipped: the recipe of this machine is not apt's");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let fixture = Fixture::new();
    fixture.add(
        "commands",
        &component("commands"),
        Some(&commands_policy(work.path(), |_| {})),
    );
    fixture.add(
        "system",
        &component("system"),
        Some(&shipped_policy("system")),
    );
    // The person whitelisted exactly the install command before (a rule file of an earlier run).
    let sudo = !is_root();
    let (program, args) = if sudo {
        ("sudo", vec!["apt-get", "install", "-y", "jq"])
    } else {
        ("apt-get", vec!["install", "-y", "jq"])
    };
    std::fs::create_dir_all(fixture.path().join("state")).unwrap();
    std::fs::write(
        fixture.path().join("state/command-rules.json"),
        serde_json::to_string(&json!({ "version": 1, "rules": [{
            "id": "rule-1", "component": "commands",
            "template": { "program": program, "args": args, "cwd": null, "env": [], "stdin": null },
            "programPath": capbridge_tests::which(program),
            "createdAtMs": 1, "createdBy": "terminal",
        }]}))
        .unwrap(),
    )
    .unwrap();
    let env = Env::serve(fixture, work, BridgeConfig::default()).await;
    let (status, rules) = env.get("/api/v1/system/permissions/commands").await;
    assert_eq!(
        (status, rules["rules"].as_array().unwrap().len()),
        (StatusCode::OK, 1)
    );
    // The same command through execute runs by the rule…
    let (status, by_rule) = env
        .execute(json!({ "template": { "program": program, "args": args }, "timeoutMs": 1 }))
        .await;
    assert_eq!(
        (status, &by_rule["approval"]),
        (StatusCode::OK, &json!("rule")),
        "{by_rule}"
    );
    // …but as an install it asks, and cannot be whitelisted.
    let (status, install) = env
        .post("/api/v1/system/tools/install", json!({ "tool": "jq" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{install}");
    assert_eq!(install["kind"], "install");
    assert_eq!(install["status"], "pending_approval");
    let request = install["requestId"].as_str().unwrap();
    assert!(
        env.approvals()
            .decide(request, Decision::AllowAndWhitelist, Decider::PromptsCli)
            .is_err(),
        "installs are never whitelisted"
    );
    env.decide(&install, Decision::Reject);
    assert_eq!(
        env.ended(install["id"].as_str().unwrap()).await["status"],
        "rejected"
    );
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[tokio::test]
async fn outside_the_grant_nothing_starts_and_nobody_is_asked() {
    let env = Env::with(
        |process| {
            process.insert("programs".into(), toml::Value::Array(vec!["echo".into()]));
        },
        BridgeConfig::default(),
    )
    .await;
    let marker = env.work.path().join("created-by-touch");
    let (status, body) = env
        .execute(json!({ "template": { "program": "touch", "args": [marker] } }))
        .await;
    assert_error(
        &(status, body.clone()),
        StatusCode::FORBIDDEN,
        "bridge_policy_denied",
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("grants.process.programs"),
        "{body}"
    );
    let (status, body) = env
        .execute(json!({ "template": { "program": "sleep", "args": ["770077"] } }))
        .await;
    assert_error(
        &(status, body),
        StatusCode::FORBIDDEN,
        "bridge_policy_denied",
    );
    // A working directory outside the grant.
    let (status, body) = env
        .execute(json!({ "template": { "program": "echo", "cwd": "/" } }))
        .await;
    assert_error(
        &(status, body),
        StatusCode::FORBIDDEN,
        "bridge_policy_denied",
    );
    assert!(env.approvals().pending().is_empty(), "nobody was asked");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!marker.exists());
    for started in [
        "sleep 770077".to_string(),
        format!("{} 770077", capbridge_tests::which("sleep")),
    ] {
        assert_eq!(processes_with(&started), Vec::<String>::new());
    }
    let (_, runs) = env.get("/api/v1/system/commands/runs").await;
    assert_eq!(runs["runs"], json!([]));
}

#[tokio::test]
async fn steering_variables_are_refused_unless_the_policy_names_them() {
    let env = Env::start().await;
    for name in [
        "LD_PRELOAD",
        "PATH",
        "NODE_OPTIONS",
        "PYTHONPATH",
        "GIT_SSH_COMMAND",
    ] {
        let (status, body) = env
            .execute(json!({ "template": { "program": "env", "env": { name: "/tmp/x" } } }))
            .await;
        assert_error(
            &(status, body.clone()),
            StatusCode::FORBIDDEN,
            "bridge_policy_denied",
        );
        assert!(
            body["error"]["message"].as_str().unwrap().contains(name),
            "{body}"
        );
    }
    assert!(env.approvals().pending().is_empty());

    let env = Env::with(
        |process| {
            process.insert(
                "request-environment".into(),
                toml::Value::Array(vec!["GIT_*".into()]),
            );
        },
        BridgeConfig::default(),
    )
    .await;
    let run = env
        .execute(json!({ "template": { "program": "env", "env": { "GIT_AUTHOR_NAME": "x" } } }))
        .await;
    assert_eq!(run.0, StatusCode::OK, "{}", run.1);
    env.decide(&run.1, Decision::Reject);
}

#[tokio::test]
async fn the_child_gets_the_granted_environment_and_nothing_else() {
    // A variable of capbridge's own environment that the policy does not pass through.
    std::env::set_var("CAPBRIDGE_TEST_CANARY", "must-not-leak");
    let env = Env::start().await;
    let (status, run) = env
        .execute(json!({ "template": { "program": "env", "env": { "FROM_REQUEST": "yes" } } }))
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    env.decide(&run, Decision::AllowOnce);
    let run = env.ended(run["id"].as_str().unwrap()).await;
    let output = run["stdout"].as_str().unwrap();
    let names: Vec<&str> = output.lines().filter_map(|l| l.split('=').next()).collect();
    let inherited = [
        "HOME", "LANG", "LC_ALL", "PATH", "TERM", "USER", "LOGNAME", "TZ",
    ];
    for name in &names {
        assert!(
            *name == "FROM_REQUEST" || inherited.contains(name),
            "{name} leaked: {output}"
        );
    }
    assert!(output.contains("FROM_REQUEST=yes"));
    assert!(!output.contains("must-not-leak"));
    assert!(
        !output.contains(&env.token),
        "the session token reached the child"
    );
}

#[tokio::test]
async fn metacharacters_reach_the_program_literally() {
    let env = Env::start().await;
    let marker = env.work.path().join("pwned");
    let words = [
        "a;b",
        "| cat /etc/passwd",
        "$(touch pwned)",
        "`touch pwned`",
        "*",
        "line\nbreak",
        "&& touch pwned",
        "'quoted'",
    ];
    let args: Vec<&str> = std::iter::once("%s\\n").chain(words).collect();
    let (status, run) = env
        .execute(json!({ "template": { "program": "printf", "args": args } }))
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    env.decide(&run, Decision::AllowOnce);
    let run = env.ended(run["id"].as_str().unwrap()).await;
    let expected: String = words.iter().map(|w| format!("{w}\n")).collect();
    assert_eq!(run["stdout"], expected.as_str());
    assert!(!marker.exists());
}

#[tokio::test]
async fn resolved_values_must_fill_the_template_and_stay_out_of_sight() {
    let env = Env::start().await;
    let mut events = env.socket().await;
    let template = json!({ "program": "echo", "args": ["token=__OSL_SECRET[api]__"] });
    // Differs outside the placeholder: refused, nobody asked.
    for resolved in [
        json!({ "program": "echo", "args": ["tokem=s3cr3t"] }),
        json!({ "program": "echo", "args": ["token=s3cr3t", "extra"] }),
        json!({ "program": "rm", "args": ["token=s3cr3t"] }),
        json!({ "program": "echo", "args": ["token=s3cr3t"], "env": { "X": "1" } }),
    ] {
        let (status, body) = env
            .execute(json!({ "template": template, "resolved": resolved }))
            .await;
        assert_error(
            &(status, body.clone()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
        assert!(!body.to_string().contains("s3cr3t"), "{body}");
    }
    // No placeholder in the program or the working directory.
    let (status, body) = env
        .execute(json!({
            "template": { "program": "__OSL_SECRET[p]__" },
            "resolved": { "program": "echo" },
        }))
        .await;
    assert_error(&(status, body), StatusCode::BAD_REQUEST, "invalid_request");
    assert!(env.approvals().pending().is_empty());

    // Filled: the person sees the template, the program gets the value.
    let (status, run) = env
        .execute(json!({ "template": template, "resolved": { "program": "echo", "args": ["token=s3cr3t"] } }))
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert!(!run.to_string().contains("s3cr3t"), "{run}");
    let prompt = env.approvals().pending().remove(0);
    assert_eq!(prompt.summary, "echo 'token=__OSL_SECRET[api]__'");
    env.decide(&run, Decision::AllowAndWhitelist);
    let id = run["id"].as_str().unwrap();
    let seen = events_until(&mut events, id, &["system.command.completed"]).await;
    let done = env.ended(id).await;
    assert_eq!(
        done["stdout"], "token=s3cr3t\n",
        "the web app redacts output, not the bridge"
    );
    // Nowhere but in the output: not in the run, the rule, the prompt or decision events.
    let mut shown = done.clone();
    shown["stdout"] = json!("");
    assert!(!shown.to_string().contains("s3cr3t"));
    for event in seen.iter().filter(|e| e["type"] != "system.command.stdout") {
        assert!(!event.to_string().contains("s3cr3t"), "{event}");
    }
    let (_, rules) = env.get("/api/v1/system/permissions/commands").await;
    assert!(!rules.to_string().contains("s3cr3t"));
    let rules_file =
        std::fs::read_to_string(env.fixture.path().join("state/command-rules.json")).unwrap();
    assert!(rules_file.contains("__OSL_SECRET[api]__") && !rules_file.contains("s3cr3t"));
    // The rule covers the template: another value runs without asking.
    let (_, other) = env
        .execute(json!({ "template": template, "resolved": { "program": "echo", "args": ["token=other"] } }))
        .await;
    assert_eq!(other["approval"], "rule");
}

#[tokio::test]
async fn output_past_the_buffer_is_partial_and_every_byte_is_an_event() {
    let env = Env::start().await;
    let mut events = env.socket().await;
    // 25 MiB that is not UTF-8 (a simple generator, so the test knows every byte).
    let mut state: u32 = 12345;
    let data: Vec<u8> = (0..25 << 20)
        .map(|_| {
            state = state.wrapping_mul(1103515245).wrapping_add(12345);
            (state >> 16) as u8
        })
        .collect();
    let file = env.work.path().join("big.bin");
    std::fs::write(&file, &data).unwrap();
    let (status, run) = env
        .execute(json!({ "template": { "program": "cat", "args": [file] } }))
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    env.decide(&run, Decision::AllowOnce);
    let id = run["id"].as_str().unwrap();
    let seen = events_until(&mut events, id, &["system.command.completed"]).await;
    assert!(
        stream_bytes(&seen, "system.command.stdout") == data,
        "the events carry every byte"
    );
    let completed = seen.last().unwrap();
    assert_eq!(completed["payload"]["partial_output"], true);
    let done = env.ended(id).await;
    assert_eq!(done["partial_output"], true);
    assert_eq!(done["stdoutBytes"], data.len());
    assert_eq!(done["stdoutEncoding"], "base64");
    let kept = base64::engine::general_purpose::STANDARD
        .decode(done["stdout"].as_str().unwrap())
        .unwrap();
    assert_eq!(kept.len(), 10 << 20);
    assert!(kept == data[..10 << 20]);
}

#[tokio::test]
async fn a_small_non_utf8_stream_survives_and_stderr_is_its_own() {
    let env = Env::start().await;
    let file = env.work.path().join("bytes.bin");
    let bytes = [b'a', 0xff, 0x00, 0xc3, 0x28, b'\n', 0xe2, 0x82];
    std::fs::write(&file, bytes).unwrap();
    let (_, run) = env
        .execute(json!({ "template": { "program": "cat", "args": [file, "/nonexistent-file"] } }))
        .await;
    env.decide(&run, Decision::AllowOnce);
    let done = env.ended(run["id"].as_str().unwrap()).await;
    assert_eq!(done["stdoutEncoding"], "base64");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(done["stdout"].as_str().unwrap())
            .unwrap(),
        bytes
    );
    assert_eq!(done["stderrEncoding"], "utf-8");
    assert!(done["stderr"]
        .as_str()
        .unwrap()
        .contains("/nonexistent-file"));
    assert_eq!(done["exitCode"], 1);
    assert_eq!(done["partial_output"], false);
}

#[tokio::test]
async fn terminate_and_timeout_leave_no_process_of_the_run_behind() {
    let env = Env::start().await;
    let mut events = env.socket().await;
    // A child in the run's group and a grandchild that leaves it (its own session).
    let script = "setsid sleep 880011 & sleep 880022 & echo started; wait";
    let (_, run) = env
        .execute(json!({ "template": { "program": "sh", "args": ["-c", script] } }))
        .await;
    env.decide(&run, Decision::AllowOnce);
    let id = run["id"].as_str().unwrap();
    events_until(&mut events, id, &["system.command.stdout"]).await;
    for needle in ["sleep 880011", "sleep 880022"] {
        let mut tries = 0;
        while processes_with(needle).is_empty() {
            tries += 1;
            assert!(tries < 100, "{needle} never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (status, ended) = env
        .post(
            &format!("/api/v1/system/commands/runs/{id}/terminate"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    assert_eq!(ended["status"], "terminated");
    events_until(&mut events, id, &["system.command.terminated"]).await;
    let containment_complete =
        capbridge_runtime::caps::process::Containment::get().name() == "pid-namespace";
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(processes_with("sleep 880022"), Vec::<String>::new());
    if containment_complete {
        assert_eq!(
            processes_with("sleep 880011"),
            Vec::<String>::new(),
            "the detached grandchild survived"
        );
    }

    // The timeout ends it the same way.
    let script = "setsid sleep 880033 & sleep 880044; wait";
    let (_, run) = env
        .execute(
            json!({ "template": { "program": "sh", "args": ["-c", script] }, "timeoutMs": 500 }),
        )
        .await;
    env.decide(&run, Decision::AllowOnce);
    let done = env.ended(run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed");
    assert!(
        done["message"].as_str().unwrap().contains("timed out"),
        "{done}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(processes_with("sleep 880044"), Vec::<String>::new());
    if containment_complete {
        assert_eq!(processes_with("sleep 880033"), Vec::<String>::new());
    }

    // A run still waiting for approval is withdrawn.
    let pending = env.run("echo", &["never"]).await;
    let (status, withdrawn) = env
        .post(
            &format!(
                "/api/v1/system/commands/runs/{}/terminate",
                pending["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, &withdrawn["status"]),
        (StatusCode::OK, &json!("terminated")),
        "{withdrawn}"
    );
    assert!(env.approvals().pending().is_empty());
}

#[tokio::test]
async fn no_contract_session_resolves_a_prompt_unless_the_user_opted_in() {
    let env = Env::start().await;
    let run = env.run("echo", &["approve", "yourself"]).await;
    let request = run["requestId"].as_str().unwrap();
    let path = format!("/api/v1/system/permissions/prompts/{request}/resolve");
    let (status, body) = env.post(&path, json!({ "decision": "allow_once" })).await;
    assert_error(
        &(status, body),
        StatusCode::FORBIDDEN,
        "web_approvals_disabled",
    );
    assert_eq!(
        env.approvals().pending().len(),
        1,
        "still waiting for the person"
    );
    env.decide(&run, Decision::Reject);

    // Opted in: a session answers its own prompts only.
    let config = BridgeConfig {
        web_approvals: true,
        ..BridgeConfig::default()
    };
    let env = Env::with(|_| {}, config).await;
    let run = env.run("echo", &["approved", "by", "the", "app"]).await;
    let request = run["requestId"].as_str().unwrap();
    let path = format!("/api/v1/system/permissions/prompts/{request}/resolve");
    let other = env.bridge.token().await;
    let (status, _) = status_and_json(
        env.bridge
            .post_as(&other, &path, &json!({ "decision": "allow_once" }))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = env.post(&path, json!({ "decision": "maybe" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = env.post(&path, json!({ "decision": "allow_once" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = env.ended(run["id"].as_str().unwrap()).await;
    assert_eq!(done["stdout"], "approved by the app\n");
}

#[tokio::test]
async fn another_session_sees_nothing_of_a_run() {
    let env = Env::start().await;
    let other = env.bridge.token().await;
    let mut theirs = env.bridge.events(&other).await;
    let (_, run) = env
        .execute(json!({ "template": { "program": "echo", "args": ["private"] } }))
        .await;
    let id = run["id"].as_str().unwrap();
    env.decide(&run, Decision::AllowOnce);
    env.ended(id).await;
    for path in [format!("/api/v1/system/commands/runs/{id}")] {
        let (status, _) = status_and_json(env.bridge.get_as(&other, &path).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, _) = status_and_json(
        env.bridge
            .post_as(
                &other,
                &format!("/api/v1/system/commands/runs/{id}/terminate"),
                &json!({}),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, runs) = status_and_json(
        env.bridge
            .get_as(&other, "/api/v1/system/commands/runs")
            .await,
    )
    .await;
    assert_eq!(runs["runs"], json!([]));
    // Their socket got heartbeats and the like, none of the run's events.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, theirs.next()).await {
        if let Message::Text(text) = message {
            assert!(!text.contains(id) && !text.contains("private"), "{text}");
        }
    }
}

#[tokio::test]
async fn bad_bodies_get_400_naming_the_field() {
    let env = Env::start().await;
    for (body, field) in [
        (json!({}), "template"),
        (
            json!({ "template": { "program": "echo", "args": "no" } }),
            "args",
        ),
        (
            json!({ "template": { "program": "echo" }, "timeoutMs": "soon" }),
            "timeoutMs",
        ),
        (
            json!({ "template": { "program": "echo" }, "extra": 1 }),
            "extra",
        ),
        (
            json!({ "template": { "program": "echo", "env": { "A-B": "x" } } }),
            "template.env",
        ),
        (
            json!({ "template": { "program": "echo", "args": ["a\u{0}b"] } }),
            "template.args[0]",
        ),
        (json!({ "template": { "program": "" } }), "template.program"),
        (
            json!({ "template": { "program": "echo" }, "timeoutMs": 0 }),
            "timeoutMs",
        ),
        (
            json!({ "template": { "program": "./relative" } }),
            "template.program",
        ),
        (
            json!({ "template": { "program": "echo", "cwd": "relative" } }),
            "template.cwd",
        ),
    ] {
        let (status, error) = env.execute(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert!(
            error["error"]["message"].as_str().unwrap().contains(field),
            "{body}: {error}"
        );
    }
    let (status, _) = env
        .execute(json!({ "template": { "program": "no-such-program-anywhere" } }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(env.approvals().pending().is_empty());
    let (status, _) = env.get("/api/v1/system/commands/runs/run-999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_component_that_tries_to_skip_the_prompt_gets_nothing_run() {
    let work = tempfile::tempdir().unwrap();
    let fixture = Fixture::new();
    fixture.add(
        "skipper",
        &capbridge_tests::program("process-probe"),
        Some(&commands_policy(work.path(), |_| {})),
    );
    let runtime = fixture.runtime();
    capbridge_tests::assert_loaded(&runtime, "skipper");
    let marker = work.path().join("ran-without-approval");
    let options = capbridge_runtime::CallOptions {
        session: Some(7),
        ..Default::default()
    };
    let outcome = runtime
        .call(
            "skipper",
            "skip-the-prompt",
            &json!({ "marker": marker }),
            &options,
        )
        .await
        .unwrap();
    let seen: Vec<String> = serde_json::from_value(outcome.result).unwrap();
    // Two asks (command, install), two refusals (the resolved touch is not the template; a
    // variable set twice), three deletions of rules that do not exist, then asks until the host
    // says enough; every ask is left waiting for a person, and withdrawing one ends it without
    // running it.
    assert!(seen[0].ends_with("PendingApproval None"), "{seen:?}");
    assert!(seen[1].ends_with("PendingApproval None"), "{seen:?}");
    assert!(seen[2].contains("InvalidArgument"), "{seen:?}");
    assert!(seen[3].contains("set twice"), "{seen:?}");
    assert!(
        seen[4..7].iter().all(|s| s.contains("NotFound")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.contains("Unavailable")),
        "the host bounds the asks: {seen:?}"
    );
    assert!(!seen.iter().any(|s| s.contains("Running")), "{seen:?}");
    assert!(
        seen.iter().any(|s| s.ends_with("Terminated None")),
        "{seen:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !marker.exists(),
        "a process ran without a person's approval"
    );
    assert!(
        runtime.approvals().pending().is_empty(),
        "withdrawn runs take their prompts along"
    );
}

#[tokio::test]
async fn a_session_s_end_ends_its_runs_and_its_late_requests() {
    let env = Env::start().await;
    let run = env.run("sleep", &["660066"]).await;
    let session = env.decide(&run, Decision::AllowOnce).session.unwrap();
    let id = run["id"].as_str().unwrap();
    let mut tries = 0;
    // Under `unshare` the program is started by its path; otherwise by the same path.
    let sleep = format!("{} 660066", capbridge_tests::which("sleep"));
    while processes_with(&sleep).is_empty() {
        tries += 1;
        assert!(tries < 100, "the run never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting = env.run("echo", &["still", "waiting"]).await;
    assert_eq!(waiting["status"], "pending_approval");

    env.bridge
        .server
        .shared()
        .runtime
        .end_session(session)
        .await;
    assert_eq!(processes_with(&sleep), Vec::<String>::new());
    assert!(
        env.approvals().pending().is_empty(),
        "its prompts went with it"
    );
    let (status, _) = env.get(&format!("/api/v1/system/commands/runs/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A request of that session still in flight when it ended starts nothing.
    let (status, body) = env
        .execute(json!({ "template": { "program": "echo", "args": ["late"] } }))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test]
async fn prompts_show_what_a_terminal_would_hide_and_warn_about_placeholders() {
    let env = Env::start().await;
    let spoof = "x\r\u{1b}[2K    git status\u{202e}";
    let (_, run) = env
        .execute(
            json!({ "template": { "program": "echo", "args": [spoof, "__OSL_SECRET[cmd]__"] },
                         "resolved": { "program": "echo", "args": [spoof, "anything"] } }),
        )
        .await;
    let prompt = env.approvals().pending().remove(0);
    assert!(
        !prompt
            .summary
            .chars()
            .any(|c| c.is_control() || c == '\u{202e}'),
        "{:?}",
        prompt.summary
    );
    assert!(prompt.summary.contains(r"\x1b[2K"), "{}", prompt.summary);
    assert!(
        prompt
            .warnings
            .iter()
            .any(|w| w.contains("placeholders") && w.contains("args[1]")),
        "{:?}",
        prompt.warnings
    );
    env.decide(&run, Decision::Reject);
}
