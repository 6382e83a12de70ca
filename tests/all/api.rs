//! The localhost contract end to end: a real server on an ephemeral port, real HTTP and
//! WebSocket clients, real components. Every hostile request checks its status and that
//! nothing happened (no session issued, no command run).

use std::time::Duration;

use capbridge_api::{BridgeConfig, Mode};
use capbridge_tests::{echo_fixture, next_event, policy, program, Bridge, Fixture, Socket};
use futures_util::StreamExt as _;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

const APP: &str = "http://127.0.0.1:5173";
const OTHER_APP: &str = "https://app.example";
use capbridge_tests::TOKEN_HEADER as TOKEN;

fn config() -> BridgeConfig {
    BridgeConfig {
        origins: vec![APP.into(), OTHER_APP.into()],
        ..BridgeConfig::default()
    }
}

async fn echo_bridge(config: BridgeConfig) -> (Fixture, Bridge) {
    let fixture = echo_fixture();
    let bridge = Bridge::start(fixture.runtime(), config).await;
    (fixture, bridge)
}

/// The JSON error body's `code`, checking the body has the one error format.
async fn error_code(response: reqwest::Response) -> String {
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.expect("JSON error body");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert!(body["error"]["message"].is_string(), "{body}");
    body["error"]["code"]
        .as_str()
        .expect("error code")
        .to_string()
}

fn live_sessions(bridge: &Bridge) -> usize {
    bridge.server.shared().sessions.live()
}

async fn handshake_from(bridge: &Bridge, origin: &str) -> reqwest::Response {
    bridge
        .client
        .post(bridge.url("/api/v1/session/handshake"))
        .header("Origin", origin)
        .send()
        .await
        .unwrap()
}

async fn refresh(bridge: &Bridge, token: &str) -> reqwest::Response {
    bridge
        .client
        .post(bridge.url("/api/v1/session/refresh"))
        .json(&json!({ "sessionToken": token }))
        .send()
        .await
        .unwrap()
}

/// `GET path` with the session header, its JSON body.
async fn get_json(bridge: &Bridge, path: &str, token: &str) -> Value {
    bridge.get_as(token, path).await.json().await.unwrap()
}

async fn invoke(bridge: &Bridge, token: &str, name: &str, body: Value) -> reqwest::Response {
    bridge
        .client
        .post(bridge.url(&format!("/api/v1/commands/{name}/invoke")))
        .header(TOKEN, token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn health_needs_no_session_and_names_the_protocol() {
    let (_fx, bridge) = echo_bridge(config()).await;
    let response = bridge
        .client
        .get(bridge.url("/api/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["protocolVersion"], "osloop.bridge.v1");
    assert_eq!(body["appVersion"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn authenticated_routes_need_a_valid_token_in_the_header() {
    let (_fx, bridge) = echo_bridge(config()).await;
    let info = bridge.url("/api/v1/bridge/info");
    let missing = bridge.client.get(&info).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(missing).await, "missing_token");

    let wrong = bridge
        .client
        .get(&info)
        .header(TOKEN, "A".repeat(43))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(wrong).await, "invalid_token");

    let token = bridge.token().await;
    assert_eq!(token.len(), 43, "256 bits, base64url without padding");
    let in_query = bridge
        .client
        .get(format!("{info}?sessionToken={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(in_query.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(in_query).await, "token_in_query");

    for path in [
        "/api/v1/bridge/info",
        "/api/v1/capabilities",
        "/api/v1/bridge/runtime",
        "/api/v1/bridge/connections",
        "/api/v1/commands",
    ] {
        let response = bridge
            .client
            .get(bridge.url(path))
            .header(TOKEN, &token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let unauthenticated = bridge.client.get(bridge.url(path)).send().await.unwrap();
        assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let info: Value = get_json(&bridge, "/api/v1/bridge/info", &token).await;
    assert_eq!(info["components"], json!(["echo"]));
    let runtime: Value = get_json(&bridge, "/api/v1/bridge/runtime", &token).await;
    assert_eq!(runtime["boundPort"], bridge.server.addr().port());
    assert_eq!(runtime["configuredPort"], 47832);
    assert_eq!(runtime["bindState"], "bound");
    assert_eq!(runtime["trayMode"], false);
    // Headless: no tray, and the capability says why.
    assert_eq!(runtime["tray"], Value::Null);
    let capabilities = get_json(&bridge, "/api/v1/capabilities", &token).await;
    assert_eq!(
        capabilities["unavailable"],
        json!([{"name": "tray_mode", "reason": "the headless bridge has no tray"}])
    );
}

#[tokio::test]
async fn the_shells_tray_is_reported_and_each_change_published() {
    use capbridge_api::tray::{TrayIcon, TrayState, WindowState};
    let fixture = echo_fixture();
    // What the desktop shell hands the server: the tray's state, which it changes later.
    let tray = tokio::sync::watch::Sender::new(TrayState {
        icon: TrayIcon::Unavailable,
        status_window: WindowState::Shown,
        reason: Some("no tray library here".into()),
    });
    let server = capbridge_api::Server::start(
        capbridge_api::bind(0).await.unwrap(),
        std::sync::Arc::new(fixture.runtime()),
        config(),
        capbridge_api::ServeOptions {
            tray: Some(tray.subscribe()),
            ..Default::default()
        },
    )
    .unwrap();
    let bridge = Bridge {
        base: format!("http://{}", server.addr()),
        server,
        client: reqwest::Client::new(),
    };
    let token = bridge.token().await;
    let capabilities = get_json(&bridge, "/api/v1/capabilities", &token).await;
    assert_eq!(
        capabilities["unavailable"],
        json!([{"name": "tray_mode", "reason": "no tray library here"}])
    );
    let mut socket = bridge.events(&token).await;
    next_event(&mut socket, "bridge.connected").await;

    tray.send_modify(|tray| {
        tray.icon = TrayIcon::Shown;
        tray.reason = None;
        tray.status_window = WindowState::Hidden;
    });
    let updated = next_event(&mut socket, "bridge.runtime.updated").await;
    assert_eq!(updated["source"], "capbridge");
    let expected = json!({"icon": "shown", "statusWindow": "hidden", "reason": null});
    assert_eq!(updated["payload"]["tray"], expected, "{updated}");
    // The payload is the runtime state, as the route answers it.
    let runtime = get_json(&bridge, "/api/v1/bridge/runtime", &token).await;
    assert_eq!(runtime["tray"], expected);
    assert_eq!(updated["payload"]["boundPort"], runtime["boundPort"]);
    assert_eq!(
        updated["payload"]["configuredPort"],
        runtime["configuredPort"]
    );
    let capabilities = get_json(&bridge, "/api/v1/capabilities", &token).await;
    assert!(
        capabilities["capabilities"]
            .as_array()
            .unwrap()
            .contains(&json!("tray_mode")),
        "{capabilities}"
    );
    assert_eq!(capabilities["unavailable"], json!([]));

    // Each change is published.
    tray.send_modify(|tray| tray.status_window = WindowState::Shown);
    let updated = next_event(&mut socket, "bridge.runtime.updated").await;
    assert_eq!(updated["payload"]["tray"]["statusWindow"], "shown");
}

#[tokio::test]
async fn refresh_rotates_the_token_and_expired_tokens_are_refused() {
    let config = BridgeConfig {
        session_ttl_seconds: 1,
        ..config()
    };
    let (_fx, bridge) = echo_bridge(config).await;
    let old = bridge.token().await;
    let refreshed: Value = refresh(&bridge, &old).await.json().await.unwrap();
    let new = refreshed["sessionToken"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(refreshed["expiresInMs"], 1000);
    let info = bridge.url("/api/v1/bridge/info");
    let with_old = bridge
        .client
        .get(&info)
        .header(TOKEN, &old)
        .send()
        .await
        .unwrap();
    assert_eq!(with_old.status(), StatusCode::UNAUTHORIZED);
    let with_new = bridge
        .client
        .get(&info)
        .header(TOKEN, &new)
        .send()
        .await
        .unwrap();
    assert_eq!(with_new.status(), StatusCode::OK);

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let expired = bridge
        .client
        .get(&info)
        .header(TOKEN, &new)
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    let body: Value = expired.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
    let late_refresh = refresh(&bridge, &new).await;
    assert_eq!(late_refresh.status(), StatusCode::UNAUTHORIZED);
}

/// DNS rebinding: a page on an attacker's name that resolves to 127.0.0.1 sends its own name
/// in `Host`; nothing is answered, not even health.
#[tokio::test]
async fn foreign_host_names_are_refused_before_any_handler() {
    let (_fx, bridge) = echo_bridge(config()).await;
    let port = bridge.server.addr().port();
    for host in [
        format!("rebind.example:{port}"),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        "localhost".to_string(),
        format!("127.0.0.1.nip.io:{port}"),
        String::new(),
    ] {
        for (method, path) in [
            ("GET", "/api/v1/health"),
            ("POST", "/api/v1/session/handshake"),
        ] {
            let response = bridge
                .client
                .request(method.parse().unwrap(), bridge.url(path))
                .header("Host", &host)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{host} {path}");
            assert_eq!(error_code(response).await, "host_not_allowed");
        }
    }
    assert_eq!(live_sessions(&bridge), 0, "no session was issued");
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let response = bridge
            .client
            .get(bridge.url("/api/v1/health"))
            .header("Host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn disallowed_origins_get_no_token_no_cors_and_no_data() {
    let (_fx, bridge) = echo_bridge(config()).await;
    let token = bridge.token().await;
    for origin in [
        "https://evil.example",
        "http://127.0.0.1:5174",
        "https://127.0.0.1:5173",
        "http://localhost:5173",
        "null",
        "http://127.0.0.1:5173.evil.example",
    ] {
        let response = handshake_from(&bridge, origin).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{origin}");
        assert!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{origin}"
        );
        assert_eq!(error_code(response).await, "origin_not_allowed");
        // Even with a valid token, a page on a foreign origin reads nothing.
        let info = bridge
            .client
            .get(bridge.url("/api/v1/bridge/info"))
            .header("Origin", origin)
            .header(TOKEN, &token)
            .send()
            .await
            .unwrap();
        assert_eq!(info.status(), StatusCode::FORBIDDEN, "{origin}");
        let say = bridge
            .client
            .post(bridge.url("/api/v1/commands/echo.say/invoke"))
            .header("Origin", origin)
            .header(TOKEN, &token)
            .json(&json!({ "args": { "message": "from evil" } }))
            .send()
            .await
            .unwrap();
        assert_eq!(say.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(
        live_sessions(&bridge),
        1,
        "only the local client's session exists"
    );
}

#[tokio::test]
async fn allowed_origins_get_cors_for_themselves_only() {
    let (_fx, bridge) = echo_bridge(config()).await;
    let response = handshake_from(&bridge, APP).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["access-control-allow-origin"], APP);
    assert!(headers
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().contains("origin")));
    let token = response.json::<Value>().await.unwrap()["sessionToken"]
        .as_str()
        .unwrap()
        .to_string();

    // The token is bound to the origin that handshook.
    let elsewhere = bridge
        .client
        .get(bridge.url("/api/v1/bridge/info"))
        .header("Origin", OTHER_APP)
        .header(TOKEN, &token)
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::UNAUTHORIZED);
    // Errors for an allowed origin carry CORS headers, so the page can read them.
    assert_eq!(
        elsewhere.headers()["access-control-allow-origin"],
        OTHER_APP
    );

    let home = bridge
        .client
        .get(bridge.url("/api/v1/bridge/info"))
        .header("Origin", APP)
        .header(TOKEN, &token)
        .send()
        .await
        .unwrap();
    assert_eq!(home.status(), StatusCode::OK);
}

async fn preflight(bridge: &Bridge, origin: &str) -> reqwest::Response {
    bridge
        .client
        .request(
            reqwest::Method::OPTIONS,
            bridge.url("/api/v1/commands/echo.say/invoke"),
        )
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "content-type,x-osloop-bridge-token",
        )
        .header("Access-Control-Request-Private-Network", "true")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn preflights_including_private_network_access_only_for_allowed_origins() {
    let (_fx, bridge) = echo_bridge(config()).await;
    let allowed = preflight(&bridge, APP).await;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let headers: &HeaderMap = allowed.headers();
    assert_eq!(headers["access-control-allow-origin"], APP);
    assert_eq!(headers["access-control-allow-private-network"], "true");
    let allow_headers = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allow_headers.contains("x-osloop-bridge-token"),
        "{allow_headers}"
    );
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));

    let refused = preflight(&bridge, "https://evil.example").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    for header in [
        "access-control-allow-origin",
        "access-control-allow-private-network",
    ] {
        assert!(refused.headers().get(header).is_none(), "{header}");
    }
    assert_eq!(live_sessions(&bridge), 0);
}

#[tokio::test]
async fn dev_origins_are_allowed_in_dev_mode_only() {
    let dev_origin = "http://localhost:5173";
    let prod = BridgeConfig::default();
    let (_fx, bridge) = echo_bridge(prod.clone()).await;
    assert_eq!(
        handshake_from(&bridge, dev_origin).await.status(),
        StatusCode::FORBIDDEN
    );
    let dev = BridgeConfig {
        mode: Mode::Dev,
        ..prod
    };
    let (_fx, bridge) = echo_bridge(dev).await;
    assert_eq!(
        handshake_from(&bridge, dev_origin).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        handshake_from(&bridge, "http://localhost:8080")
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn bad_bodies_get_one_error_format_and_change_nothing() {
    let config = BridgeConfig {
        max_body_bytes: 4096,
        ..config()
    };
    let (_fx, bridge) = echo_bridge(config).await;
    let handshake = bridge.url("/api/v1/session/handshake");
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            bridge
                .client
                .post(&handshake)
                .header("content-type", "application/json")
                .body("{\"clientName\":"),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            bridge
                .client
                .post(&handshake)
                .json(&json!({ "clientName": 7 })),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            bridge
                .client
                .post(&handshake)
                .json(&json!({ "surprise": true })),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            bridge
                .client
                .post(&handshake)
                .json(&json!({ "protocolVersion": "osloop.bridge.v9" })),
            StatusCode::BAD_REQUEST,
            "unsupported_protocol_version",
        ),
        (
            bridge
                .client
                .post(&handshake)
                .header("content-type", "text/plain")
                .body("{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            bridge
                .client
                .post(&handshake)
                .json(&json!({ "clientName": "x".repeat(5000) })),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            bridge.client.delete(bridge.url("/api/v1/health")),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (request, status, code) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{code}");
        assert_eq!(error_code(response).await, code);
    }
    assert_eq!(
        live_sessions(&bridge),
        0,
        "no bad handshake created a session"
    );
}

/// A client that sends headers and then stalls gets a 408 in the JSON format.
#[tokio::test]
async fn stalled_requests_time_out() {
    let config = BridgeConfig {
        request_timeout_ms: 300,
        ..config()
    };
    let (_fx, bridge) = echo_bridge(config).await;
    let mut stream = tokio::net::TcpStream::connect(bridge.server.addr())
        .await
        .unwrap();
    let request = format!(
        "POST /api/v1/session/handshake HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        bridge.server.addr()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("}}") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the bridge answers a stalled request")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert_eq!(live_sessions(&bridge), 0);
}

#[tokio::test]
async fn malformed_paths_get_404_with_the_canonical_path() {
    let (_fx, bridge) = echo_bridge(config()).await;
    for (path, hint) in [
        ("/api/v1/api/v1/health", Some("/api/v1/health")),
        ("/api/v2/health", Some("/api/v1/health")),
        ("/api/v1/health/", Some("/api/v1/health")),
        ("/api/v1//bridge/info", Some("/api/v1/bridge/info")),
        ("/v1/capabilities", Some("/api/v1/capabilities")),
        ("/api/v1/nothing-here", None),
    ] {
        let response = bridge.client.get(bridge.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unknown_route");
        let text = body["error"]["hint"].as_str().unwrap();
        match hint {
            Some(hint) => assert_eq!(text, format!("did you mean {hint}?")),
            None => assert!(text.contains("openapi.json"), "{text}"),
        }
    }
    // A capability route whose component is not loaded (this bridge serves echo only) says so,
    // after the session check.
    let token = bridge.token().await;
    let mcp = bridge
        .client
        .get(bridge.url("/api/v1/mcp/servers"))
        .header(TOKEN, &token)
        .send()
        .await
        .unwrap();
    assert_eq!(mcp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(mcp).await, "capability_unavailable");
    let anonymous = bridge
        .client
        .get(bridge.url("/api/v1/mcp/servers"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_connection_log_records_requests_without_tokens() {
    let (_fx, bridge) = echo_bridge(config()).await;
    let token = bridge.token().await;
    bridge
        .client
        .get(bridge.url("/api/v1/api/v1/health"))
        .send()
        .await
        .unwrap();
    handshake_from(&bridge, "https://evil.example").await;
    let mut socket = bridge.events(&token).await;
    socket.next().await.unwrap().unwrap();
    let log: Value = get_json(&bridge, "/api/v1/bridge/connections", &token).await;
    let text = log.to_string();
    assert!(!text.contains(&token), "the log holds a token: {text}");
    let entries = log["connections"].as_array().unwrap();
    let find = |path: &str| {
        entries
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("{path} not logged: {text}"))
    };
    let upgrade = find("/ws/v1/events");
    assert_eq!(
        (upgrade["websocket"].clone(), upgrade["status"].clone()),
        (json!(true), json!(101))
    );
    assert_eq!(upgrade["authenticated"], true);
    let duplicated = find("/api/v1/api/v1/health");
    assert_eq!(
        (duplicated["status"].clone(), duplicated["error"].clone()),
        (json!(404), json!("unknown_route"))
    );
    let refused = entries
        .iter()
        .find(|e| e["origin"] == "https://evil.example")
        .expect("refused handshake logged");
    assert_eq!(refused["status"], 403);
    assert_eq!(refused["authenticated"], false);
    let local_handshake = entries
        .iter()
        .find(|e| e["path"] == "/api/v1/session/handshake" && e["origin"].is_null())
        .expect("local handshake logged");
    assert_eq!(local_handshake["status"], 200);
}

#[tokio::test]
async fn the_registry_lists_every_export_with_schemas_and_invokes_it() {
    let (_fx, bridge) = echo_bridge(config()).await;
    let token = bridge.token().await;
    let list: Value = get_json(&bridge, "/api/v1/commands", &token).await;
    let commands = list["commands"].as_array().unwrap();
    let names: Vec<&str> = commands
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in [
        "echo.noop",
        "echo.reverse",
        "echo.add",
        "echo.say",
        "echo.echo-drawing",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let reverse = commands
        .iter()
        .find(|c| c["name"] == "echo.reverse")
        .unwrap();
    assert_eq!(
        reverse["argsSchema"]["properties"]["text"]["type"],
        "string"
    );
    assert_eq!(reverse["resultSchema"]["type"], "string");
    assert!(reverse["description"]
        .as_str()
        .unwrap()
        .starts_with("reverse(text: string) -> string"));

    let ok = invoke(
        &bridge,
        &token,
        "echo.reverse",
        json!({ "args": { "text": "abc" } }),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.json::<Value>().await.unwrap()["result"], "cba");
    let noop = invoke(&bridge, &token, "echo.noop", json!({})).await;
    assert_eq!(noop.json::<Value>().await.unwrap()["result"], Value::Null);

    for (name, body, code) in [
        ("echo.nope", json!({ "args": {} }), "unknown_command"),
        ("nope.reverse", json!({ "args": {} }), "unknown_command"),
        (
            "echo.reverse",
            json!({ "args": { "text": 5 } }),
            "invalid_arguments",
        ),
        ("echo.reverse", json!({ "args": {} }), "invalid_arguments"),
        ("echo.reverse", json!({ "args": [1] }), "invalid_arguments"),
        (
            "echo.reverse",
            json!({ "args": {}, "timeout": 5 }),
            "invalid_request",
        ),
    ] {
        let response = invoke(&bridge, &token, name, body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{name} {code}");
        assert_eq!(error_code(response).await, code, "{name}");
    }

    let failed = invoke(
        &bridge,
        &token,
        "echo.add",
        json!({ "args": { "a": i64::MAX, "b": 1 } }),
    )
    .await;
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = failed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "command_failed");
    assert_eq!(
        body["error"]["details"],
        "9223372036854775807 + 1 overflows a 64-bit integer"
    );
}

#[tokio::test]
async fn traps_answer_500_and_deadlines_504() {
    let fixture = Fixture::new();
    fixture.add("probe", &program("sandbox-probe"), Some(&policy("")));
    let bridge = Bridge::start(fixture.runtime(), config()).await;
    let token = bridge.token().await;
    let trapped = invoke(
        &bridge,
        &token,
        "probe.recurse",
        json!({ "args": { "depth": u64::MAX } }),
    )
    .await;
    assert_eq!(trapped.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_code(trapped).await, "command_failed");
    let spun = invoke(&bridge, &token, "probe.spin", json!({ "timeoutMs": 200 })).await;
    assert_eq!(spun.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_code(spun).await, "command_timeout");
    // The bridge is still fine afterwards.
    let counter = invoke(&bridge, &token, "probe.counter", json!({})).await;
    assert_eq!(counter.status(), StatusCode::OK);
}

async fn connect(
    bridge: &Bridge,
    token: &str,
    origin: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let url = format!(
        "ws://{}/ws/v1/events?sessionToken={token}",
        bridge.server.addr()
    );
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

fn ws_status(error: tokio_tungstenite::tungstenite::Error) -> u16 {
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn the_event_socket_delivers_component_events_in_one_envelope() {
    let (_fx, bridge) = echo_bridge(config()).await;
    let token = bridge.token().await;
    let mut socket = connect(&bridge, &token, None).await.unwrap();
    let hello = next_event(&mut socket, "bridge.connected").await;
    assert_eq!(hello["seq"], 1);
    assert_eq!(hello["source"], "capbridge");
    assert_eq!(hello["payload"]["protocolVersion"], "osloop.bridge.v1");
    let said = invoke(
        &bridge,
        &token,
        "echo.say",
        json!({ "args": { "message": "hi there" } }),
    )
    .await;
    assert_eq!(said.status(), StatusCode::OK);
    let event = next_event(&mut socket, "echo.said").await;
    assert_eq!(event["source"], "echo");
    assert_eq!(event["payload"], json!({ "message": "hi there" }));
    assert!(event["seq"].as_u64().unwrap() > 1);
    assert!(event["timestamp"].as_str().unwrap().ends_with('Z'));
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn the_event_socket_checks_token_origin_and_host_before_upgrading() {
    let (_fx, bridge) = echo_bridge(config()).await;
    let token = bridge.token().await;
    assert_eq!(
        ws_status(connect(&bridge, "", None).await.unwrap_err()),
        401
    );
    assert_eq!(
        ws_status(connect(&bridge, &"B".repeat(43), None).await.unwrap_err()),
        401
    );
    assert_eq!(
        ws_status(
            connect(&bridge, &token, Some("https://evil.example"))
                .await
                .unwrap_err()
        ),
        403
    );
    // A token issued to a local client is not accepted from a page.
    assert_eq!(
        ws_status(connect(&bridge, &token, Some(APP)).await.unwrap_err()),
        401
    );
    let mut request = format!(
        "ws://{}/ws/v1/events?sessionToken={token}",
        bridge.server.addr()
    )
    .into_client_request()
    .unwrap();
    request
        .headers_mut()
        .insert("Host", "rebind.example".parse().unwrap());
    let rebound = tokio_tungstenite::connect_async(request).await.unwrap_err();
    assert_eq!(ws_status(rebound), 403);
    // The header token is not accepted on the socket (only the query string is).
    let mut request = format!("ws://{}/ws/v1/events", bridge.server.addr())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(TOKEN, token.parse().unwrap());
    assert_eq!(
        ws_status(tokio_tungstenite::connect_async(request).await.unwrap_err()),
        401
    );
}

#[tokio::test]
async fn heartbeats_flow_and_an_expired_session_closes_the_socket() {
    let config = BridgeConfig {
        heartbeat_interval_ms: 100,
        session_ttl_seconds: 1,
        ..config()
    };
    let (_fx, bridge) = echo_bridge(config).await;
    let token = bridge.token().await;
    let mut socket = connect(&bridge, &token, None).await.unwrap();
    let beat = next_event(&mut socket, "bridge.heartbeat").await;
    assert_eq!(beat["payload"]["droppedTotal"], 0);
    next_event(&mut socket, "bridge.session.expired").await;
    let close = loop {
        match socket.next().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.expect("close frame").code), 4001);
}

/// One client that stops reading does not slow another; what it missed is reported to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_loses_events_and_is_told_while_others_get_everything() {
    let (_fx, bridge) = echo_bridge(config()).await;
    let token = bridge.token().await;
    let mut slow = connect(&bridge, &token, None).await.unwrap();
    let mut fast = connect(&bridge, &token, None).await.unwrap();
    next_event(&mut fast, "bridge.connected").await;
    let bus = bridge.server.shared().runtime.events().clone();
    let padding = "x".repeat(16 << 10);
    let (batches, per_batch) = (40, 100);
    for batch in 0..batches {
        for i in 0..per_batch {
            bus.publish(capbridge_runtime::caps::events::Event {
                source: "test".into(),
                topic: "test.flood".into(),
                payload: json!({ "n": batch * per_batch + i, "padding": padding }),
                audience: None,
            });
        }
        // The fast client keeps up: it receives every event of the batch, in order.
        for i in 0..per_batch {
            let event = next_event(&mut fast, "test.flood").await;
            assert_eq!(event["payload"]["n"], batch * per_batch + i);
        }
    }
    // 64 MB went by; the slow client's socket buffers hold far less, so it lost some.
    let dropped = next_event(&mut slow, "bridge.events.dropped").await;
    assert!(
        dropped["payload"]["dropped"].as_u64().unwrap() > 0,
        "{dropped}"
    );
    // Its sequence numbers have no gaps: drops are reported, not skipped over.
    assert_eq!(
        dropped["payload"]["droppedTotal"], dropped["payload"]["dropped"],
        "first report"
    );
}

#[tokio::test]
async fn shutdown_tells_sockets_and_stops_answering() {
    let (_fx, bridge) = echo_bridge(config()).await;
    let token = bridge.token().await;
    let mut socket = connect(&bridge, &token, None).await.unwrap();
    next_event(&mut socket, "bridge.connected").await;
    let addr = bridge.server.addr();
    let client = bridge.client.clone();
    bridge
        .server
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap();
    next_event(&mut socket, "bridge.stopping").await;
    let refused = client
        .get(format!("http://{addr}/api/v1/health"))
        .send()
        .await;
    assert!(refused.is_err(), "still answering after shutdown");
}

#[tokio::test]
async fn a_busy_port_is_an_error_naming_it_never_another_port() {
    let taken = capbridge_api::bind(0).await.unwrap();
    let port = taken.local_addr().unwrap().port();
    let error = capbridge_api::bind(port).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains(&format!("port {port}")), "{message}");
    assert!(message.contains("set-port"), "{message}");
}

#[tokio::test]
async fn the_openapi_document_is_served_and_lists_every_route() {
    let (_fx, bridge) = echo_bridge(config()).await;
    let doc: Value = bridge
        .client
        .get(bridge.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for path in capbridge_api::routes() {
        assert!(
            paths.contains_key(path.as_str()),
            "{path} missing from the OpenAPI document"
        );
    }
}

#[test]
fn no_component_may_take_the_bridge_s_name() {
    let fixture = Fixture::new();
    fixture.add(
        "capbridge",
        &capbridge_tests::component("echo"),
        Some(&policy("")),
    );
    let runtime = fixture.runtime();
    let reason = capbridge_tests::failure(&runtime, "capbridge");
    assert!(reason.contains("the host's own name"), "{reason}");
}
