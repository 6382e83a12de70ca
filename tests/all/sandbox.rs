//! The sandbox, proved from inside: guest test programs (tests/programs/*) try things under a
//! policy and report what they saw; each grant is tried granted and denied.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capbridge_runtime::{CallError, CallOptions, Runtime};
use capbridge_tests::{
    assert_loaded, component, failure, policy, program, shipped_policy, Fixture,
};
use serde_json::{json, Value};

async fn call(
    runtime: &Runtime,
    id: &str,
    function: &str,
    args: Value,
) -> Result<Value, CallError> {
    runtime
        .call(id, function, &args, &CallOptions::default())
        .await
        .map(|o| o.result)
}

fn ok(result: Result<Value, CallError>) -> Value {
    let value = result.expect("the call itself succeeds");
    assert!(
        value.get("err").is_none(),
        "guest reported an error: {value}"
    );
    value.get("ok").cloned().unwrap_or(value)
}

fn guest_err(result: Result<Value, CallError>) -> String {
    let value = result.expect("the call itself succeeds; the guest sees an error value");
    value
        .get("err")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("expected a guest-side error, got {value}"))
        .to_string()
}

// ---- link time -------------------------------------------------------------------------------

#[tokio::test]
async fn ungranted_import_refuses_to_load_and_the_others_still_load() {
    let fx = Fixture::new();
    fx.add("echo", &component("echo"), Some(&shipped_policy("echo")))
        .add(
            "events-probe",
            &program("events-probe"),
            Some(&policy("[grants]\nlog = true")),
        )
        .add("net-probe", &program("net-probe"), Some(&policy("")))
        .add(
            "socket-probe",
            &program("socket-probe"),
            Some(&policy("[grants]\nnetwork = [\"http://127.0.0.1:9\"]")),
        )
        .add(
            "sandbox-probe",
            &program("sandbox-probe"),
            Some(&policy("")),
        )
        .add("no-policy", &program("sandbox-probe"), None);
    let runtime = fx.runtime();

    let reason = failure(&runtime, "events-probe");
    assert!(reason.contains("component `events-probe`"), "{reason}");
    assert!(reason.contains("capbridge:host/events"), "{reason}");
    assert!(
        reason.contains(&fx.policy_path("events-probe").display().to_string()),
        "{reason}"
    );
    assert!(reason.contains("grants.events"), "{reason}");
    assert!(
        !reason.contains("capbridge:host/log"),
        "log is granted, so only events is named: {reason}"
    );

    let reason = failure(&runtime, "net-probe");
    assert!(
        reason.contains("wasi:http/outgoing-handler") && reason.contains("grants.network"),
        "{reason}"
    );

    let reason = failure(&runtime, "socket-probe");
    assert!(
        reason.contains("wasi:sockets/") && reason.contains("does not provide"),
        "{reason}"
    );

    let reason = failure(&runtime, "no-policy");
    assert!(
        reason.contains("no policy file") && reason.contains("no-policy.toml"),
        "{reason}"
    );

    assert_loaded(&runtime, "echo");
    assert_loaded(&runtime, "sandbox-probe");
    assert_eq!(
        call(&runtime, "echo", "reverse", json!({"text": "abc"}))
            .await
            .unwrap(),
        json!("cba")
    );
    let err = call(
        &runtime,
        "events-probe",
        "publish",
        json!({"topic": "x", "payload": "{}"}),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CallError::NotLoaded { .. }), "{err}");
}

#[tokio::test]
async fn invalid_policy_and_invalid_component_are_reported_and_others_load() {
    let fx = Fixture::new();
    fx.add("echo", &component("echo"), Some(&shipped_policy("echo")))
        .add(
            "typo",
            &program("sandbox-probe"),
            Some(&policy("[grants]\nfilesystem = []")),
        )
        .add(
            "not-wasm",
            &fx.path().join("policy/typo.toml"),
            Some(&policy("")),
        );
    let runtime = fx.runtime();
    let reason = failure(&runtime, "typo");
    assert!(
        reason.contains("typo.toml") && reason.contains("filesystem"),
        "{reason}"
    );
    let reason = failure(&runtime, "not-wasm");
    assert!(
        reason.contains("not a loadable WebAssembly component"),
        "{reason}"
    );
    assert_loaded(&runtime, "echo");
}

// ---- events and log --------------------------------------------------------------------------

#[tokio::test]
async fn events_publish_only_to_granted_topics_and_denial_is_an_error_value() {
    let fx = Fixture::new();
    fx.add(
        "events-probe",
        &program("events-probe"),
        Some(&policy("[grants]\nevents = [\"probe.*\"]\nlog = true")),
    );
    let runtime = fx.runtime();
    let mut bus = runtime.events().subscribe();

    ok(call(
        &runtime,
        "events-probe",
        "publish",
        json!({"topic": "probe.hello", "payload": "{\"n\":1}"}),
    )
    .await);
    let event = bus.try_recv().expect("the event reached the bus");
    assert_eq!(
        (event.source.as_str(), event.topic.as_str(), &event.payload),
        ("events-probe", "probe.hello", &json!({"n": 1}))
    );

    let denied = guest_err(
        call(
            &runtime,
            "events-probe",
            "publish",
            json!({"topic": "other.topic", "payload": "{}"}),
        )
        .await,
    );
    assert!(
        denied.starts_with("denied:") && denied.contains("other.topic"),
        "{denied}"
    );
    assert!(
        denied.contains(&fx.policy_path("events-probe").display().to_string()),
        "{denied}"
    );
    let invalid = guest_err(
        call(
            &runtime,
            "events-probe",
            "publish",
            json!({"topic": "probe.x", "payload": "not json"}),
        )
        .await,
    );
    assert!(invalid.starts_with("invalid-argument:"), "{invalid}");
    assert!(
        bus.try_recv().is_err(),
        "denied and invalid events are not published"
    );

    // The component keeps working after a denial.
    ok(call(
        &runtime,
        "events-probe",
        "publish",
        json!({"topic": "probe.again", "payload": "[]"}),
    )
    .await);
    call(
        &runtime,
        "events-probe",
        "log",
        json!({"message": "hello from the probe"}),
    )
    .await
    .unwrap();
}

// ---- filesystem ------------------------------------------------------------------------------

struct Tree {
    fx: Fixture,
    granted: std::path::PathBuf,
    outside: std::path::PathBuf,
}

/// granted/{a.txt, sub/b.txt, links…} and outside/secret.txt next to it.
fn tree() -> Tree {
    let fx = Fixture::new();
    let granted = fx.path().join("granted");
    let outside = fx.path().join("outside");
    std::fs::create_dir_all(granted.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(granted.join("a.txt"), "inside").unwrap();
    std::fs::write(granted.join("sub/b.txt"), "deeper").unwrap();
    std::fs::write(outside.join("secret.txt"), "SECRET").unwrap();
    let link = |target: &std::path::Path, name: &str| {
        std::os::unix::fs::symlink(target, granted.join(name)).unwrap()
    };
    link(&outside.join("secret.txt"), "link-out-absolute");
    link(
        std::path::Path::new("../outside/secret.txt"),
        "link-out-relative",
    );
    link(&outside, "link-out-dir");
    link(std::path::Path::new("loop-b"), "loop-a");
    link(std::path::Path::new("loop-a"), "loop-b");
    link(std::path::Path::new("a.txt"), "link-in");
    link(std::path::Path::new("/"), "link-root");
    Tree {
        fx,
        granted,
        outside,
    }
}

fn dir_policy(host: &std::path::Path, guest: &str, access: &str) -> String {
    policy(&format!(
        "[[grants.directories]]\nhost = \"{}\"\nguest = \"{guest}\"\naccess = \"{access}\"",
        host.display()
    ))
}

#[tokio::test]
async fn reads_stay_inside_the_granted_directory() {
    let t = tree();
    t.fx.add(
        "probe",
        &program("sandbox-probe"),
        Some(&dir_policy(&t.granted, "/data", "read-only")),
    );
    let runtime = t.fx.runtime();
    let read = |path: &str| call(&runtime, "probe", "read-file", json!({ "path": path }));

    assert_eq!(ok(read("/data/a.txt").await), json!("inside"));
    assert_eq!(ok(read("/data/sub/b.txt").await), json!("deeper"));
    assert_eq!(ok(read("/data/sub/../a.txt").await), json!("inside"));
    assert_eq!(
        ok(read("/data/link-in").await),
        json!("inside"),
        "a symlink staying inside is followed"
    );

    let secret = t.outside.join("secret.txt").display().to_string();
    for escape in [
        "/data/../outside/secret.txt".to_string(),
        "/data/sub/../../outside/secret.txt".to_string(),
        "/data/../../../../../../etc/passwd".to_string(),
        secret.clone(),
        "/etc/passwd".to_string(),
        "../outside/secret.txt".to_string(),
        "/data/link-out-absolute".to_string(),
        "/data/link-out-relative".to_string(),
        "/data/link-out-dir/secret.txt".to_string(),
        "/data/link-root/etc/passwd".to_string(),
        "/data/loop-a".to_string(),
        "/data/a.txt/".to_string(),
        "/data/sub/b.txt/.".to_string(),
        "/data/link-out-dir/".to_string(),
    ] {
        let err = guest_err(read(&escape).await);
        assert!(!err.contains("SECRET"), "{escape}: {err}");
    }
    let listing = ok(call(&runtime, "probe", "list-dir", json!({"path": "/data"})).await);
    assert!(listing.as_array().unwrap().contains(&json!("a.txt")));
    for outside in ["/data/..", "/data/link-out-dir", "/"] {
        guest_err(call(&runtime, "probe", "list-dir", json!({ "path": outside })).await);
    }
}

#[tokio::test]
async fn read_only_grant_refuses_every_write() {
    let t = tree();
    t.fx.add(
        "probe",
        &program("sandbox-probe"),
        Some(&dir_policy(&t.granted, "/data", "read-only")),
    );
    let runtime = t.fx.runtime();

    guest_err(
        call(
            &runtime,
            "probe",
            "write-file",
            json!({"path": "/data/new.txt", "contents": "x"}),
        )
        .await,
    );
    assert!(!t.granted.join("new.txt").exists());
    guest_err(
        call(
            &runtime,
            "probe",
            "write-file",
            json!({"path": "/data/a.txt", "contents": "overwritten"}),
        )
        .await,
    );
    guest_err(
        call(
            &runtime,
            "probe",
            "open-truncate",
            json!({"path": "/data/a.txt"}),
        )
        .await,
    );
    assert_eq!(
        std::fs::read_to_string(t.granted.join("a.txt")).unwrap(),
        "inside"
    );
}

#[tokio::test]
async fn read_write_grant_writes_inside_and_nowhere_else() {
    let t = tree();
    t.fx.add(
        "probe",
        &program("sandbox-probe"),
        Some(&dir_policy(&t.granted, "/rw", "read-write")),
    );
    let runtime = t.fx.runtime();

    ok(call(
        &runtime,
        "probe",
        "write-file",
        json!({"path": "/rw/new.txt", "contents": "written"}),
    )
    .await);
    assert_eq!(
        std::fs::read_to_string(t.granted.join("new.txt")).unwrap(),
        "written"
    );
    ok(call(
        &runtime,
        "probe",
        "open-truncate",
        json!({"path": "/rw/new.txt"}),
    )
    .await);
    assert_eq!(
        std::fs::read_to_string(t.granted.join("new.txt")).unwrap(),
        ""
    );

    for escape in [
        "/rw/../outside/planted.txt",
        "/rw/link-out-dir/planted.txt",
        "/rw/link-out-absolute",
        "/rw/link-out-relative",
    ] {
        guest_err(
            call(
                &runtime,
                "probe",
                "write-file",
                json!({"path": escape, "contents": "planted"}),
            )
            .await,
        );
    }
    assert!(!t.outside.join("planted.txt").exists());
    assert_eq!(
        std::fs::read_to_string(t.outside.join("secret.txt")).unwrap(),
        "SECRET"
    );
}

#[tokio::test]
async fn without_a_directory_grant_there_is_no_filesystem() {
    let t = tree();
    t.fx.add("probe", &program("sandbox-probe"), Some(&policy("")));
    let runtime = t.fx.runtime();
    guest_err(
        call(
            &runtime,
            "probe",
            "read-file",
            json!({"path": t.granted.join("a.txt").display().to_string()}),
        )
        .await,
    );
    guest_err(
        call(
            &runtime,
            "probe",
            "read-file",
            json!({"path": "/data/a.txt"}),
        )
        .await,
    );
    guest_err(call(&runtime, "probe", "list-dir", json!({"path": "/"})).await);
    assert_eq!(
        call(&runtime, "probe", "preopens", json!({}))
            .await
            .unwrap(),
        json!([])
    );
}

// ---- environment -----------------------------------------------------------------------------

#[tokio::test]
async fn only_granted_environment_variables_are_visible() {
    // SAFETY-equivalent: these names are used by no other test.
    std::env::set_var("CAPBRIDGE_TEST_VISIBLE", "yes");
    std::env::set_var("CAPBRIDGE_TEST_HIDDEN", "no");
    let fx = Fixture::new();
    fx.add(
        "granted",
        &program("sandbox-probe"),
        Some(&policy(
            "[grants]\nenvironment = [\"CAPBRIDGE_TEST_VISIBLE\"]",
        )),
    )
    .add("plain", &program("sandbox-probe"), Some(&policy("")));
    let runtime = fx.runtime();
    let get = |id: &'static str, name: &'static str| {
        call(&runtime, id, "get-env", json!({ "name": name }))
    };

    assert_eq!(
        get("granted", "CAPBRIDGE_TEST_VISIBLE").await.unwrap(),
        json!("yes")
    );
    assert_eq!(
        get("granted", "CAPBRIDGE_TEST_HIDDEN").await.unwrap(),
        Value::Null
    );
    assert_eq!(get("granted", "PATH").await.unwrap(), Value::Null);
    assert_eq!(
        call(&runtime, "granted", "env-count", json!({}))
            .await
            .unwrap(),
        json!(1)
    );
    assert_eq!(
        get("plain", "CAPBRIDGE_TEST_VISIBLE").await.unwrap(),
        Value::Null
    );
    assert_eq!(
        call(&runtime, "plain", "env-count", json!({}))
            .await
            .unwrap(),
        json!(0)
    );
}

// ---- deadlines, memory, stack, output --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_at_its_deadline_while_other_calls_are_served() {
    // Echo must be served within the loop's 1.5 s deadline: no Chromium starting meanwhile.
    let _alone = crate::without_chromium().await;
    let fx = Fixture::new();
    fx.add(
        "probe",
        &program("sandbox-probe"),
        Some(&policy("[limits]\ndeadline-ms = 1500")),
    )
    .add("echo", &component("echo"), Some(&shipped_policy("echo")));
    let runtime = Arc::new(fx.runtime());

    let spinning = tokio::spawn({
        let runtime = runtime.clone();
        async move { call(&runtime, "probe", "spin", json!({})).await }
    });
    let sleeping = tokio::spawn({
        let runtime = runtime.clone();
        async move { call(&runtime, "probe", "sleep-loop", json!({})).await }
    });
    // While both are stuck, other calls complete.
    let served = AtomicUsize::new(0);
    for i in 0..20 {
        let text = format!("call {i}");
        assert_eq!(
            call(&runtime, "echo", "echo", json!({ "text": text }))
                .await
                .unwrap(),
            json!(text)
        );
        served.fetch_add(1, Ordering::Relaxed);
    }
    assert!(
        !spinning.is_finished(),
        "the loop is still running while echo is served"
    );
    assert_eq!(served.load(Ordering::Relaxed), 20);

    for handle in [spinning, sleeping] {
        match handle.await.unwrap() {
            Err(CallError::Timeout(d)) => assert_eq!(d, Duration::from_millis(1500)),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    // A caller may ask for a shorter deadline, never a longer one.
    let options = CallOptions {
        deadline: Some(Duration::from_millis(100)),
        session: None,
    };
    match runtime.call("probe", "spin", &json!({}), &options).await {
        Err(CallError::Timeout(d)) => assert_eq!(d, Duration::from_millis(100)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let options = CallOptions {
        deadline: Some(Duration::from_secs(3600)),
        session: None,
    };
    match runtime
        .call("probe", "sleep-loop", &json!({}), &options)
        .await
    {
        Err(CallError::Timeout(d)) => assert_eq!(d, Duration::from_millis(1500)),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn memory_grows_only_up_to_the_limit() {
    let fx = Fixture::new();
    fx.add(
        "small",
        &program("sandbox-probe"),
        Some(&policy("[limits]\nmemory-mib = 4")),
    )
    .add(
        "large",
        &program("sandbox-probe"),
        Some(&policy("[limits]\nmemory-mib = 64")),
    );
    let runtime = fx.runtime();
    // 128 pages = 8 MiB.
    assert_eq!(
        call(&runtime, "small", "grow-memory", json!({"pages": 128}))
            .await
            .unwrap(),
        json!(-1)
    );
    assert!(
        call(&runtime, "large", "grow-memory", json!({"pages": 128}))
            .await
            .unwrap()
            .as_i64()
            .unwrap()
            > 0
    );
    guest_err(call(&runtime, "small", "allocate-mib", json!({"mib": 16})).await);
    assert_eq!(
        ok(call(&runtime, "large", "allocate-mib", json!({"mib": 16})).await),
        json!(16)
    );
}

/// A guest that runs out of memory aborts with `unreachable`; the caller hears that the memory
/// limit, with its size and policy, was the cause.
#[tokio::test]
async fn running_out_of_memory_names_the_limit() {
    let fx = Fixture::new();
    fx.add(
        "small",
        &program("sandbox-probe"),
        Some(&policy("[limits]\nmemory-mib = 4")),
    );
    let runtime = fx.runtime();
    match call(&runtime, "small", "exhaust-memory", json!({"mib": 16})).await {
        Err(CallError::Trap(message)) => {
            assert!(message.contains("memory limit of 4 MiB"), "{message}");
            assert!(message.contains("limits.memory-mib"), "{message}");
            assert!(message.contains("small.toml"), "{message}");
        }
        other => panic!("expected a trap naming the memory limit, got {other:?}"),
    }
    // Within the limit, the same call works.
    assert_eq!(
        call(&runtime, "small", "exhaust-memory", json!({"mib": 1}))
            .await
            .unwrap(),
        json!(1)
    );
    // A trap that has nothing to do with memory is not blamed on it.
    match call(
        &runtime,
        "small",
        "recurse",
        json!({"depth": 100_000_000u64}),
    )
    .await
    {
        Err(CallError::Trap(message)) => assert!(!message.contains("memory limit"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[tokio::test]
async fn deep_recursion_traps_without_harming_the_host() {
    let fx = Fixture::new();
    fx.add("probe", &program("sandbox-probe"), Some(&policy("")));
    let runtime = fx.runtime();
    match call(
        &runtime,
        "probe",
        "recurse",
        json!({"depth": 100_000_000u64}),
    )
    .await
    {
        Err(CallError::Trap(message)) => assert!(message.contains("stack"), "{message}"),
        other => panic!("expected a stack-overflow trap, got {other:?}"),
    }
    assert_eq!(
        call(&runtime, "probe", "recurse", json!({"depth": 100}))
            .await
            .unwrap(),
        json!(50)
    );
}

#[tokio::test]
async fn a_flood_of_stdout_is_capped() {
    let fx = Fixture::new();
    fx.add(
        "probe",
        &program("sandbox-probe"),
        Some(&policy("[limits]\noutput-bytes = 1000")),
    );
    let runtime = fx.runtime();
    let outcome = runtime
        .call(
            "probe",
            "flood-stdout",
            &json!({"bytes": 10_000_000u64}),
            &CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome.result,
        json!(10_000_000u64),
        "the guest's writes all succeed"
    );
    assert_eq!(outcome.stdout.bytes.len(), 1000);
    assert_eq!(outcome.stdout.dropped, 10_000_000 - 1000);
}

// ---- instances -------------------------------------------------------------------------------

#[tokio::test]
async fn fresh_instances_keep_nothing_and_persistent_ones_keep_state() {
    let fx = Fixture::new();
    fx.add("fresh", &program("sandbox-probe"), Some(&policy("")))
        .add(
            "kept",
            &program("sandbox-probe"),
            Some(&policy("instance = \"persistent\"")),
        );
    let runtime = fx.runtime();
    for _ in 0..3 {
        assert_eq!(
            call(&runtime, "fresh", "counter", json!({})).await.unwrap(),
            json!(1)
        );
    }
    for expected in 1..=3 {
        assert_eq!(
            call(&runtime, "kept", "counter", json!({})).await.unwrap(),
            json!(expected)
        );
    }
    // A trap throws the persistent instance away; the next call starts over.
    assert!(call(
        &runtime,
        "kept",
        "recurse",
        json!({"depth": 100_000_000u64})
    )
    .await
    .is_err());
    assert_eq!(
        call(&runtime, "kept", "counter", json!({})).await.unwrap(),
        json!(1)
    );
}

// ---- network ---------------------------------------------------------------------------------

/// A one-line HTTP server on 127.0.0.1 that counts connections.
async fn http_server() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (port, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_reaches_only_granted_origins() {
    let (port, connections) = http_server().await;
    let (other_port, other_connections) = http_server().await;
    let fx = Fixture::new();
    fx.add(
        "net",
        &program("net-probe"),
        Some(&policy(&format!(
            "[grants]\nnetwork = [\"http://127.0.0.1:{port}\"]"
        ))),
    );
    let runtime = fx.runtime();
    let fetch = |url: String| call(&runtime, "net", "fetch", json!({ "url": url }));

    assert_eq!(
        ok(fetch(format!("http://127.0.0.1:{port}/")).await),
        json!(204)
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1);

    for denied in [
        format!("http://127.0.0.1:{other_port}/"),
        format!("https://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::1]:{port}/"),
    ] {
        let err = guest_err(fetch(denied.clone()).await);
        assert!(err.contains("HttpRequestDenied"), "{denied}: {err}");
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "denied requests never connect"
    );
    assert_eq!(other_connections.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_name_that_resolves_to_a_private_address_is_refused() {
    let (port, connections) = http_server().await;
    // A name other than `localhost` that this machine resolves to a loopback or private address.
    let mut candidates = vec!["ip6-localhost".to_string(), "ip6-loopback".to_string()];
    if let Ok(hostname) = std::fs::read_to_string("/etc/hostname") {
        candidates.push(hostname.trim().to_string());
    }
    let mut name = None;
    for candidate in candidates {
        let private = match tokio::net::lookup_host((candidate.as_str(), port)).await {
            Ok(mut addrs) => addrs.any(|a| capbridge_policy::is_private_address(a.ip())),
            Err(_) => false,
        };
        if private {
            name = Some(candidate);
            break;
        }
    }
    let name =
        name.expect("this machine resolves ip6-localhost or its hostname to a private address");
    let fx = Fixture::new();
    fx.add(
        "net",
        &program("net-probe"),
        Some(&policy(&format!(
            "[grants]\nnetwork = [\"http://{name}:{port}\"]"
        ))),
    );
    let runtime = fx.runtime();
    let err = guest_err(
        call(
            &runtime,
            "net",
            "fetch",
            json!({ "url": format!("http://{name}:{port}/") }),
        )
        .await,
    );
    assert!(err.contains("HttpRequestDenied"), "{err}");
    assert_eq!(connections.load(Ordering::SeqCst), 0);
}

// ---- coverage of the probes ------------------------------------------------------------------

/// Every case a guest program exports is called by a host test (the wasmtime
/// test-programs rule: a probe without a host test proves nothing).
#[test]
fn every_probe_export_has_a_host_test() {
    let fx = Fixture::new();
    let grants = "[grants]\nevents = [\"x.*\"]\nlog = true\nnetwork = [\"http://127.0.0.1:9\"]";
    for name in ["sandbox-probe", "events-probe", "net-probe"] {
        fx.add(name, &program(name), Some(&policy(grants)));
    }
    let runtime = fx.runtime();
    let source = [
        include_str!("sandbox.rs"),
        include_str!("invoke.rs"),
        include_str!("replay.rs"),
    ]
    .concat();
    for name in ["sandbox-probe", "events-probe", "net-probe"] {
        assert_loaded(&runtime, name);
        for export in &runtime.component(name).unwrap().exports {
            let quoted = format!("\"{}\"", export.name);
            let uses = source.matches(&quoted).count();
            assert!(
                uses >= 1,
                "{name} exports `{}` but no test in tests/all/sandbox.rs, invoke.rs or replay.rs calls it",
                export.name
            );
        }
    }
}

/// capbridge's own files are out of every component's reach: a directory grant that is, lies in
/// or contains the policy, components or cache directory (or the config file, the data
/// directory) does not load, naming the clash; a neighbouring directory does.
#[test]
fn grants_that_reach_capbridge_s_own_files_do_not_load() {
    let fx = Fixture::new();
    let data = fx.path().join("data");
    let config_file = fx.path().join("settings/config.toml");
    let work = fx.path().join("work");
    for dir in [&data, &work, &fx.path().join("settings")] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let grant = |host: &std::path::Path| {
        policy(&format!(
            "[[grants.directories]]\nhost = {:?}\nguest = \"/d\"\naccess = \"read-only\"",
            host.display().to_string()
        ))
    };
    let cases = [
        (
            "policies",
            fx.policy_dir(),
            "it is capbridge's policy directory",
        ),
        (
            "components",
            fx.components_dir(),
            "it is capbridge's components directory",
        ),
        ("around", fx.path().to_path_buf(), "it contains capbridge's"),
        (
            "settings",
            fx.path().join("settings"),
            "it contains capbridge's config file",
        ),
        (
            "data",
            data.join("sub"),
            "it lies inside capbridge's data directory",
        ),
    ];
    for (id, host, _) in &cases {
        fx.add(id, &program("sandbox-probe"), Some(&grant(host)));
    }
    fx.add("neighbour", &program("sandbox-probe"), Some(&grant(&work)));
    let config = capbridge_runtime::RuntimeConfig {
        own_files: capbridge_runtime::own_files::OwnFiles::new()
            .with_path("config file", &config_file)
            .with_path("data directory", &data),
        ..fx.config()
    };
    let runtime = capbridge_tests::runtime_with(config);
    for (id, _, clash) in &cases {
        let reason = failure(&runtime, id);
        assert!(reason.contains(clash), "{id}: {reason}");
        assert!(reason.contains("grants.directories[0]"), "{id}: {reason}");
        assert!(
            reason.contains(&fx.policy_path(id).display().to_string()),
            "{id}: {reason}"
        );
    }
    assert_loaded(&runtime, "neighbour");
}

/// A network grant naming this machine at the bridge's own port does not load: a component
/// must not become a client of the contract. The same grant at another port does.
#[test]
fn network_grants_that_reach_the_bridge_s_port_do_not_load() {
    let fx = Fixture::new();
    for (id, origin) in [
        ("loopback", "http://127.0.0.1:47555"),
        ("localhost", "http://localhost:47555"),
        ("ipv6", "http://[::1]:47555"),
        ("other-port", "http://127.0.0.1:47556"),
    ] {
        fx.add(
            id,
            &program("net-probe"),
            Some(&policy(&format!("[grants]\nnetwork = [{origin:?}]"))),
        );
    }
    let config = capbridge_runtime::RuntimeConfig {
        own_files: capbridge_runtime::own_files::OwnFiles::new().with_port(47555),
        ..fx.config()
    };
    let runtime = capbridge_tests::runtime_with(config);
    for id in ["loopback", "localhost", "ipv6"] {
        let reason = failure(&runtime, id);
        assert!(reason.contains("bridge's own port 47555"), "{id}: {reason}");
        assert!(reason.contains("grants.network"), "{id}: {reason}");
    }
    assert_loaded(&runtime, "other-port");
}
