//! The audit log over the contract: entries for what sessions did, each session seeing only its
//! own (`GET /api/v1/audit`), none holding a token or a file's contents.

use capbridge_runtime::audit::{AuditEntry, DEFAULT_RETENTION};
use capbridge_tests::{
    component, filesystem_policy_at, policy, program, shipped_policy, status_and_json, Bridge,
    Fixture,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SECRET_CONTENT: &str = "the file's private words";

async fn audit_of(bridge: &Bridge, token: &str, query: &str) -> Vec<Value> {
    let (status, body) =
        status_and_json(bridge.get_as(token, &format!("/api/v1/audit{query}")).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["entries"].as_array().unwrap().clone()
}

fn kinds(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn each_session_sees_what_it_did_and_no_token_or_content_is_kept() {
    let fx = Fixture::new();
    let work = tempfile::tempdir().unwrap();
    fx.add("echo", &component("echo"), Some(&shipped_policy("echo")));
    fx.add(
        "filesystem",
        &component("filesystem"),
        Some(&filesystem_policy_at(work.path())),
    );
    fx.add(
        "net-probe",
        &program("net-probe"),
        Some(&policy("[grants]\nnetwork = [\"http://127.0.0.1:9\"]")),
    );
    // Refused at load: it imports events, not granted.
    fx.add("events-probe", &program("events-probe"), Some(&policy("")));
    let runtime = capbridge_tests::runtime_with(capbridge_runtime::RuntimeConfig {
        audit_retention: Some(DEFAULT_RETENTION),
        ..fx.config()
    });
    let log_file = runtime.audit().path().unwrap().to_path_buf();
    let bridge = Bridge::start(runtime, Default::default()).await;
    let one = bridge.token().await;
    let two = bridge.token().await;

    let ok = |r: reqwest::Response| async move {
        let (status, body) = status_and_json(r).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    };
    ok(bridge
        .post_as(
            &one,
            "/api/v1/commands/echo.say/invoke",
            &json!({"args": {"message": "hi"}}),
        )
        .await)
    .await;
    ok(bridge
        .post_as(
            &one,
            "/api/v1/filesystem/write",
            &json!({"target": "workspace", "path": "note.txt", "content": SECRET_CONTENT}),
        )
        .await)
    .await;
    ok(bridge
        .post_as(
            &one,
            "/api/v1/filesystem/read",
            &json!({"target": "workspace", "path": "note.txt"}),
        )
        .await)
    .await;
    // Outside the grant: refused, and recorded as denied.
    let denied = bridge
        .post_as(
            &one,
            "/api/v1/filesystem/read",
            &json!({"target": "workspace", "path": "../x"}),
        )
        .await;
    assert_eq!(denied.status(), StatusCode::BAD_REQUEST);
    // Nothing listens there: the request is made (and refused by the port), or denied.
    for url in [
        "http://127.0.0.1:9/allowed?token=abc",
        "http://127.0.0.1:10/not-granted",
    ] {
        bridge
            .post_as(
                &two,
                "/api/v1/commands/net-probe.fetch/invoke",
                &json!({"args": {"url": url}}),
            )
            .await;
    }

    let mine = audit_of(&bridge, &one, "?limit=100").await;
    for kind in [
        "session.opened",
        "component.called",
        "event.published",
        "file.written",
        "file.read",
    ] {
        assert!(kinds(&mine).contains(&kind), "{kind} missing in {mine:?}");
    }
    assert!(
        mine.iter().all(|e| e["session"] == mine[0]["session"]),
        "{mine:?}"
    );
    let written = mine.iter().find(|e| e["kind"] == "file.written").unwrap();
    assert_eq!(
        written["detail"],
        json!({"target": "workspace", "path": "note.txt", "size": SECRET_CONTENT.len()})
    );
    let refused = mine
        .iter()
        .find(|e| e["kind"] == "file.read" && e["outcome"] != "allowed")
        .expect("the refused read");
    assert_eq!(refused["detail"]["path"], "../x");
    let topics: Vec<&Value> = mine
        .iter()
        .filter(|e| e["kind"] == "event.published")
        .map(|e| &e["detail"]["topic"])
        .collect();
    assert_eq!(
        topics,
        ["filesystem.read", "filesystem.written", "echo.said"]
    );

    // Session two sees its own network requests, and nothing of session one.
    let theirs = audit_of(&bridge, &two, "?kind=network.*").await;
    assert_eq!(theirs.len(), 2, "{theirs:?}");
    assert_eq!(theirs[0]["outcome"], "denied");
    assert_eq!(theirs[1]["outcome"], "allowed");
    assert_eq!(theirs[1]["detail"]["uri"], "http://127.0.0.1:9/allowed");
    let all_theirs = audit_of(&bridge, &two, "?limit=1000").await;
    assert!(
        !kinds(&all_theirs).contains(&"file.written"),
        "{all_theirs:?}"
    );
    // Filters: component, and paging.
    let echo_only = audit_of(&bridge, &one, "?component=echo").await;
    assert!(echo_only.iter().all(|e| e["component"] == "echo"));
    let (status, page) = status_and_json(bridge.get_as(&one, "/api/v1/audit?limit=2").await).await;
    assert_eq!(status, StatusCode::OK);
    let next = page["next"].as_u64().expect("a next page");
    let older = audit_of(&bridge, &one, &format!("?limit=2&before={next}")).await;
    assert!(older[0]["seq"].as_u64().unwrap() < next);
    // Bad filters are refused with their reason.
    for bad in [
        "?limit=0",
        "?limit=5000",
        "?since=5&until=1",
        "?kind=DROP%20TABLE",
        "?what=1",
    ] {
        let (status, body) =
            status_and_json(bridge.get_as(&one, &format!("/api/v1/audit{bad}")).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    // Without a session: nothing.
    let anonymous = bridge
        .client
        .get(bridge.url("/api/v1/audit"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // On disk: every entry whole, loads recorded, no token, no content.
    let text = std::fs::read_to_string(&log_file).unwrap();
    let entries: Vec<AuditEntry> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refused_load = entries
        .iter()
        .find(|e| e.kind == "component.refused")
        .expect("the refused component");
    assert_eq!(refused_load.component.as_deref(), Some("events-probe"));
    assert!(entries.iter().any(|e| e.kind == "component.loaded"));
    for secret in [one.as_str(), two.as_str(), SECRET_CONTENT, "token=abc"] {
        assert!(!text.contains(secret), "{secret} is in the audit log");
    }
}
