//! Record and replay (docs/adr/0007-record-and-replay.md): first-party components' calls
//! recorded and replayed with nothing real touched, divergences named, secrets kept out of
//! traces, traps recorded, and the contract's calls recorded by `record_dir`.

use std::path::Path;

use capbridge_runtime::replay::{Outcome, Trace};
use capbridge_runtime::{CallError, CallOptions, ReplayFailure, Runtime};
use capbridge_tests::{
    component, policy, program, shipped_policy, with_directories, DirGrant, Fixture,
};
use serde_json::{json, Value};

async fn record(runtime: &Runtime, id: &str, function: &str, args: Value) -> Trace {
    let (trace, outcome) = runtime
        .record(id, function, &args, &CallOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{id} {function}: {e}"));
    outcome.unwrap_or_else(|e| panic!("{id} {function}: {e}"));
    trace
}

#[track_caller]
fn calls(trace: &Trace) -> Vec<String> {
    trace
        .host_calls
        .iter()
        .map(|c| format!("{} {}", c.interface, c.function))
        .collect()
}

async fn replays_as_recorded(runtime: &Runtime, wasm: &Path, trace: &Trace) {
    let report = runtime.replay(wasm, trace).await.expect("replay runs");
    if let Some(failure) = report.failure {
        panic!(
            "{} `{}` diverged:\n{failure}",
            trace.component.id, trace.function
        );
    }
    assert_eq!(report.matched, trace.host_calls.len());
}

/// A trace survives a round trip through its file form.
fn through_a_file(trace: &Trace) -> Trace {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("call.trace.json");
    trace.save(&path).unwrap();
    Trace::load(&path).unwrap()
}

#[tokio::test]
async fn filesystem_reads_and_writes_replay_with_no_file_and_no_event_touched() {
    let fx = Fixture::new();
    let work = tempfile::tempdir().unwrap();
    fx.add(
        "filesystem",
        &component("filesystem"),
        Some(&with_directories(
            &shipped_policy("filesystem"),
            &[DirGrant {
                host: work.path(),
                guest: "/workspace",
                access: "read-write",
            }],
        )),
    );
    std::fs::write(work.path().join("note.txt"), "hello, trace").unwrap();
    let runtime = fx.runtime();
    let read = record(
        &runtime,
        "filesystem",
        "read-file",
        json!({"target": "workspace", "path": "note.txt"}),
    )
    .await;
    let write = record(
        &runtime,
        "filesystem",
        "write-file",
        json!({"target": "workspace", "path": "new.txt", "content": "new content",
               "encoding": "utf8", "mode": "create", "create-parents": false}),
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(work.path().join("new.txt")).unwrap(),
        "new content"
    );
    // The file's bytes are in the trace, as the component read them.
    let read_text = serde_json::to_string(&read).unwrap();
    assert!(
        read_text.contains(r#"{"utf8":"hello, trace"}"#),
        "{read_text}"
    );
    assert!(calls(&read).contains(&"wasi:filesystem/types@0.2.6 [method]descriptor.open-at".into()));
    assert!(calls(&write).contains(&"capbridge:host/events@0.1.0 publish".into()));

    // The world moves on: both files gone. A replay reads and writes nothing, publishes nothing.
    std::fs::remove_file(work.path().join("note.txt")).unwrap();
    std::fs::remove_file(work.path().join("new.txt")).unwrap();
    let mut events = runtime.events().subscribe();
    let wasm = fx.components_dir().join("filesystem.wasm");
    for trace in [&read, &write] {
        replays_as_recorded(&runtime, &wasm, &through_a_file(trace)).await;
    }
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        0,
        "a replay touched files"
    );
    assert!(events.try_recv().is_err(), "a replay published an event");
    let Outcome::Result(result) = &read.outcome else {
        panic!("read trapped");
    };
    assert_eq!(result["ok"]["content"], "hello, trace");
}

#[tokio::test]
async fn echo_and_system_info_replay() {
    let fx = Fixture::new();
    fx.add("echo", &component("echo"), Some(&shipped_policy("echo")));
    fx.add(
        "system",
        &component("system"),
        Some(&shipped_policy("system")),
    );
    let runtime = fx.runtime();
    let say = record(&runtime, "echo", "say", json!({"message": "hi"})).await;
    assert_eq!(
        calls(&say),
        [
            "capbridge:host/log@0.1.0 write",
            "capbridge:host/events@0.1.0 publish"
        ]
    );
    assert_eq!(say.host_calls[1].args["topic"], "echo.said");
    let drawing = json!({"name": "d", "color": "red", "shapes": [{"circle": 3}, "empty"],
                         "origin": {"x": -1, "y": 2}, "tags": [["t", 7]], "access": ["read"]});
    let echoed = record(
        &runtime,
        "echo",
        "echo-drawing",
        json!({"drawing": drawing}),
    )
    .await;
    assert_eq!(echoed.outcome, Outcome::Result(drawing));
    let info = record(&runtime, "system", "info", json!({})).await;
    assert!(!info.host_calls.is_empty());

    let mut events = runtime.events().subscribe();
    for (id, trace) in [("echo", &say), ("echo", &echoed), ("system", &info)] {
        let wasm = fx.components_dir().join(format!("{id}.wasm"));
        replays_as_recorded(&runtime, &wasm, trace).await;
    }
    assert!(events.try_recv().is_err(), "a replay published an event");
}

#[tokio::test]
async fn a_changed_host_call_or_result_is_a_divergence_naming_both_sides() {
    let fx = Fixture::new();
    fx.add("echo", &component("echo"), Some(&shipped_policy("echo")));
    let runtime = fx.runtime();
    let wasm = fx.components_dir().join("echo.wasm");
    let said = record(&runtime, "echo", "say", json!({"message": "hi"})).await;

    // The trace expected another message: the component's actual call is shown against it.
    let mut other = said.clone();
    other.host_calls[0]
        .args
        .insert("message".into(), json!("saying \"bye\""));
    let report = runtime.replay(&wasm, &other).await.unwrap();
    let Some(ReplayFailure::Divergence(divergence)) = &report.failure else {
        panic!("{:?}", report.failure);
    };
    assert_eq!(divergence.at, 0);
    let text = report.failure.as_ref().unwrap().to_string();
    assert!(text.contains("host call #1 diverges"), "{text}");
    assert!(text.contains(r#"expected: capbridge:host/log@0.1.0 write {"level":"info","message":"saying \"bye\""}"#), "{text}");
    assert!(
        text.contains(
            r#"actual:   capbridge:host/log@0.1.0 write {"level":"info","message":"saying \"hi\""}"#
        ),
        "{text}"
    );

    // The trace has one more call than the component makes.
    let mut longer = said.clone();
    longer.host_calls.push(said.host_calls[0].clone());
    let text = runtime
        .replay(&wasm, &longer)
        .await
        .unwrap()
        .failure
        .unwrap()
        .to_string();
    assert!(text.contains("host call #3 diverges"), "{text}");
    assert!(
        text.contains("actual:   no more host calls (the export returned)"),
        "{text}"
    );

    // The component makes one more call than the trace has.
    let mut shorter = said.clone();
    shorter.host_calls.pop();
    let text = runtime
        .replay(&wasm, &shorter)
        .await
        .unwrap()
        .failure
        .unwrap()
        .to_string();
    assert!(text.contains("expected: no more host calls"), "{text}");
    assert!(
        text.contains("actual:   capbridge:host/events@0.1.0 publish"),
        "{text}"
    );

    // Same calls, another result: the host answered differently than recorded.
    let mut refused = said.clone();
    refused.host_calls[1].outcome = Outcome::Result(json!({"err": {"denied": "not today"}}));
    let report = runtime.replay(&wasm, &refused).await.unwrap();
    let Some(ReplayFailure::Outcome { expected, actual }) = &report.failure else {
        panic!("{:?}", report.failure);
    };
    assert_eq!(*expected, Outcome::Result(json!({"ok": null})));
    let Outcome::Result(actual) = actual else {
        panic!("{actual:?}");
    };
    assert!(
        actual["err"].as_str().unwrap().contains("not today"),
        "{actual}"
    );
}

#[tokio::test]
async fn secret_variables_are_placeholders_wherever_they_appear() {
    const NAME: &str = "REPLAY_PROBE_API_TOKEN";
    const VALUE: &str = "s3cret-value-from-the-environment";
    std::env::set_var(NAME, VALUE);
    let fx = Fixture::new();
    fx.add(
        "probe",
        &program("sandbox-probe"),
        Some(&policy(&format!(
            "[grants]\nenvironment = [\"{NAME}\", \"PATH\"]"
        ))),
    );
    let runtime = fx.runtime();
    let trace = record(&runtime, "probe", "get-env", json!({"name": NAME})).await;
    let text = serde_json::to_string(&trace).unwrap();
    assert!(!text.contains(VALUE), "the secret is in the trace: {text}");
    let placeholder = format!("__CAPBRIDGE_SECRET[{NAME}]__");
    assert_eq!(trace.outcome, Outcome::Result(json!(placeholder)));
    assert!(
        text.contains(&format!("[\"{NAME}\",\"{placeholder}\"]")),
        "{text}"
    );
    // Not secret-looking: kept.
    assert!(text.contains("[\"PATH\","), "{text}");
    // The placeholder replays: the component sees it, and returns it.
    replays_as_recorded(&runtime, &fx.components_dir().join("probe.wasm"), &trace).await;
}

#[tokio::test]
async fn traps_are_recorded_and_replayed() {
    let fx = Fixture::new();
    fx.add("probe", &program("sandbox-probe"), Some(&policy("")));
    let runtime = fx.runtime();
    let (trace, outcome) = runtime
        .record(
            "probe",
            "recurse",
            &json!({"depth": 10_000_000u64}),
            &CallOptions::default(),
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Err(CallError::Trap(_))), "{outcome:?}");
    let Outcome::Trap(message) = &trace.outcome else {
        panic!("{:?}", trace.outcome);
    };
    assert!(message.contains("trapped"), "{message}");
    replays_as_recorded(&runtime, &fx.components_dir().join("probe.wasm"), &trace).await;
}

#[tokio::test]
async fn clocks_and_random_values_replay_as_recorded() {
    let fx = Fixture::new();
    fx.add("probe", &program("sandbox-probe"), Some(&policy("")));
    let runtime = fx.runtime();
    let first = record(&runtime, "probe", "clock-and-random", json!({})).await;
    let second = record(&runtime, "probe", "clock-and-random", json!({})).await;
    let interfaces: Vec<&str> = first
        .host_calls
        .iter()
        .map(|c| c.interface.as_str())
        .collect();
    assert!(
        interfaces
            .iter()
            .any(|i| i.starts_with("wasi:clocks/wall-clock@")),
        "{interfaces:?}"
    );
    assert!(
        interfaces.iter().any(|i| i.starts_with("wasi:random/")),
        "{interfaces:?}"
    );
    // Live, the seed differs from one call to the next; replayed, each trace gives back its own.
    assert_ne!(first.outcome, second.outcome);
    let wasm = fx.components_dir().join("probe.wasm");
    for trace in [&first, &second] {
        replays_as_recorded(&runtime, &wasm, trace).await;
    }
}

#[tokio::test]
async fn a_persistent_component_is_not_recorded_and_says_why() {
    let fx = Fixture::new();
    fx.add(
        "probe",
        &program("sandbox-probe"),
        Some(&policy("instance = \"persistent\"")),
    );
    let runtime = fx.runtime();
    let refused = runtime
        .record("probe", "counter", &json!({}), &CallOptions::default())
        .await
        .expect_err("refused");
    assert!(refused.to_string().contains("persistent"), "{refused}");
}

#[tokio::test]
async fn a_record_dir_records_every_call_and_the_traces_replay() {
    let fx = Fixture::new();
    fx.add("echo", &component("echo"), Some(&shipped_policy("echo")));
    let traces = tempfile::tempdir().unwrap();
    let runtime = capbridge_tests::runtime_with(capbridge_runtime::RuntimeConfig {
        record_dir: Some(traces.path().to_path_buf()),
        ..fx.config()
    });
    for message in ["one", "two"] {
        let outcome = runtime
            .call(
                "echo",
                "say",
                &json!({"message": message}),
                &CallOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(outcome.result, json!({"ok": null}));
    }
    let mut files: Vec<_> = std::fs::read_dir(traces.path().join("echo"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    for file in &files {
        assert!(file.to_string_lossy().contains("-say-"), "{file:?}");
        let trace = Trace::load(file).unwrap();
        replays_as_recorded(&runtime, &fx.components_dir().join("echo.wasm"), &trace).await;
    }
}

#[tokio::test]
async fn a_trace_that_is_not_one_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.trace.json");
    std::fs::write(&path, "{\"format\": \"capbridge-trace/1\"}").unwrap();
    let error = Trace::load(&path).unwrap_err().to_string();
    assert!(error.contains("is not a capbridge trace"), "{error}");
    let fx = Fixture::new();
    fx.add("echo", &component("echo"), Some(&shipped_policy("echo")));
    let runtime = fx.runtime();
    let mut trace = record(&runtime, "echo", "reverse", json!({"text": "abc"})).await;
    trace.format = "capbridge-trace/0".into();
    let error = runtime
        .replay(&fx.components_dir().join("echo.wasm"), &trace)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("trace format `capbridge-trace/0`"),
        "{error}"
    );
}
