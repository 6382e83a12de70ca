//! Live drop-in: components and policies added, changed or removed while the bridge serves take
//! effect for the next call, with `component.loaded` / `component.refused` /
//! `component.unloaded` events; an invalid policy stops its component from serving and says why.

use std::sync::Arc;
use std::time::Duration;

use capbridge_runtime::Event;
use capbridge_tests::{component, shipped_policy, status_and_json, Bridge, Fixture};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The next event on `topic` about `id` (other events are skipped).
async fn next_about(
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    topic: &str,
    id: &str,
) -> Value {
    let wait = async {
        loop {
            let event = events.recv().await.expect("the bus is open");
            if event.topic == topic && event.payload["component"] == id {
                return event.payload;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("no {topic} for {id}"))
}

async fn invoke(bridge: &Bridge, token: &str, command: &str, args: Value) -> (StatusCode, Value) {
    status_and_json(
        bridge
            .post_as(
                token,
                &format!("/api/v1/commands/{command}/invoke"),
                &json!({"args": args}),
            )
            .await,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn components_and_policies_changed_while_serving_take_effect() {
    let fx = Fixture::new();
    fx.add("echo", &component("echo"), Some(&shipped_policy("echo")));
    let runtime = Arc::new(fx.runtime());
    let _watcher = runtime.watch().expect("watching");
    let mut events = runtime.events().subscribe();
    let bridge = Bridge::start_shared(runtime.clone(), Default::default()).await;
    let token = bridge.token().await;

    // A component copied in becomes invokable.
    fx.add(
        "greeter",
        &component("echo"),
        Some(&shipped_policy("echo").replace("echo.*", "greeter.*")),
    );
    next_about(&mut events, "component.loaded", "greeter").await;
    let (status, body) = invoke(&bridge, &token, "greeter.reverse", json!({"text": "abc"})).await;
    assert_eq!(
        (status, &body["result"]),
        (StatusCode::OK, &json!("cba")),
        "{body}"
    );
    let (_, list) = status_and_json(bridge.get_as(&token, "/api/v1/commands").await).await;
    assert!(list.to_string().contains("greeter.say"), "{list}");

    // A policy narrowed: the next call is denied what it no longer grants.
    let (status, body) = invoke(&bridge, &token, "echo.say", json!({"message": "hi"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    std::fs::write(
        fx.policy_path("echo"),
        shipped_policy("echo").replace("events = [\"echo.*\"]", "events = [\"elsewhere.*\"]"),
    )
    .unwrap();
    next_about(&mut events, "component.loaded", "echo").await;
    let (status, body) = invoke(&bridge, &token, "echo.say", json!({"message": "hi"})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        body.to_string()
            .contains("may not publish to topic `echo.said`"),
        "{body}"
    );

    // An invalid policy: the component stops serving, fail closed, and says why.
    std::fs::write(
        fx.policy_path("echo"),
        "version = 1\n[grants]\nevents = 5\n",
    )
    .unwrap();
    let refused = next_about(&mut events, "component.refused", "echo").await;
    assert!(
        refused["reason"].as_str().unwrap().contains("events"),
        "{refused}"
    );
    let (status, body) = invoke(&bridge, &token, "echo.reverse", json!({"text": "abc"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "capability_unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("events"),
        "{body}"
    );

    // Mended: it serves again.
    std::fs::write(fx.policy_path("echo"), shipped_policy("echo")).unwrap();
    next_about(&mut events, "component.loaded", "echo").await;
    let (status, _) = invoke(&bridge, &token, "echo.reverse", json!({"text": "abc"})).await;
    assert_eq!(status, StatusCode::OK);

    // Removed: gone.
    std::fs::remove_file(fx.components_dir().join("greeter.wasm")).unwrap();
    next_about(&mut events, "component.unloaded", "greeter").await;
    let (status, body) = invoke(&bridge, &token, "greeter.reverse", json!({"text": "abc"})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("unknown_command")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_component_tampered_with_while_serving_stops_loading() {
    let fx = Fixture::new();
    fx.add("echo", &component("echo"), Some(&shipped_policy("echo")));
    capbridge_runtime::pins::Pins::pin(&fx.components_dir(), &fx.policy_dir(), &[]).unwrap();
    let runtime = Arc::new(fx.runtime());
    capbridge_tests::assert_loaded(&runtime, "echo");
    let _watcher = runtime.watch().expect("watching");
    let mut events = runtime.events().subscribe();
    // A grant slipped into the reviewed policy.
    std::fs::write(
        fx.policy_path("echo"),
        shipped_policy("echo") + "\nawake = true\n",
    )
    .unwrap();
    let refused = next_about(&mut events, "component.refused", "echo").await;
    let reason = refused["reason"].as_str().unwrap();
    assert!(reason.contains("does not match its pin"), "{reason}");
    assert!(reason.contains("echo.toml"), "{reason}");
    assert!(reason.contains("capbridge policy pin echo"), "{reason}");
    assert_eq!(
        reason.matches("sha256:").count(),
        2,
        "both hashes: {reason}"
    );
    // Pinned again after review: it loads.
    capbridge_runtime::pins::Pins::pin(&fx.components_dir(), &fx.policy_dir(), &[]).unwrap();
    next_about(&mut events, "component.loaded", "echo").await;
}
