use serde_json::json;

use super::*;

/// Records what the driver asks of the host.
#[derive(Default)]
struct Mock {
    sent: Vec<(Value, Option<String>)>,
    answers: Vec<(u64, Result<Value, Failure>)>,
    progress: Vec<(u64, Value)>,
    ready: Vec<(String, Value)>,
    tools_changed: usize,
    logs: Vec<String>,
    /// The next `send` fails with this.
    fail_send: Option<Failure>,
}

impl Host for Mock {
    fn send(&mut self, message: &str, protocol_version: Option<&str>) -> Result<(), Failure> {
        if let Some(failure) = self.fail_send.take() {
            return Err(failure);
        }
        let message = serde_json::from_str(message).expect("the driver sends JSON");
        self.sent
            .push((message, protocol_version.map(str::to_owned)));
        Ok(())
    }

    fn answer(&mut self, ticket: u64, outcome: Result<String, Failure>) {
        let outcome = outcome.map(|text| serde_json::from_str(&text).expect("answers are JSON"));
        self.answers.push((ticket, outcome));
    }

    fn progress(&mut self, ticket: u64, payload: &str) {
        self.progress
            .push((ticket, serde_json::from_str(payload).unwrap()));
    }

    fn ready(&mut self, protocol_version: &str, server_info: &str) {
        self.ready.push((
            protocol_version.to_owned(),
            serde_json::from_str(server_info).unwrap(),
        ));
    }

    fn tools_changed(&mut self) {
        self.tools_changed += 1;
    }

    fn log(&mut self, line: &str) {
        self.logs.push(line.to_owned());
    }
}

impl Mock {
    fn last_sent(&self) -> &Value {
        &self.sent.last().expect("something was sent").0
    }

    fn take_sent(&mut self) -> Vec<(Value, Option<String>)> {
        std::mem::take(&mut self.sent)
    }
}

struct Fixture {
    driver: Driver,
    host: Mock,
    now: Instant,
}

impl Fixture {
    fn started() -> Fixture {
        let mut fixture = Fixture {
            driver: Driver::new("srv".into()),
            host: Mock::default(),
            now: Instant::now(),
        };
        assert_eq!(
            fixture.driver.start(&mut fixture.host, fixture.now),
            Flow::Continue
        );
        fixture
    }

    /// Connected over 2026-07-28 with tools, resources and prompts.
    fn modern() -> Fixture {
        let mut fixture = Fixture::started();
        fixture.message(json!({
            "jsonrpc": "2.0",
            "id": 1,
            "result": {
                "resultType": "complete",
                "supportedVersions": ["2025-11-25", "2026-07-28"],
                "capabilities": {"tools": {"listChanged": true}, "resources": {}, "prompts": {}},
                "instructions": "be nice",
                "ttlMs": 0,
                "cacheScope": "private",
                "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "everything", "version": "2.0.0"}}
            }
        }));
        assert_eq!(fixture.host.ready.len(), 1);
        fixture.host.take_sent();
        fixture
    }

    /// Connected over the initialize lifecycle, the server answering `version`.
    fn legacy(version: &str) -> Fixture {
        let mut fixture = Fixture::started();
        fixture.message(json!({
            "jsonrpc": "2.0", "id": 1,
            "error": {"code": -32601, "message": "Method not found"}
        }));
        fixture.message(json!({
            "jsonrpc": "2.0", "id": 2,
            "result": {
                "protocolVersion": version,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "old", "version": "1.0.0"}
            }
        }));
        assert_eq!(fixture.host.ready.len(), 1, "{:?}", fixture.host.logs);
        fixture.host.take_sent();
        fixture
    }

    fn handle(&mut self, input: Input) -> Flow {
        self.driver.handle(&mut self.host, input, self.now)
    }

    fn message(&mut self, message: Value) -> Flow {
        self.handle(Input::Message(message.to_string()))
    }

    fn call(&mut self, ticket: u64, tool: &str, call_id: &str, timeout_ms: u64) -> i64 {
        let mut arguments = Map::new();
        arguments.insert("text".into(), json!("hi"));
        let request = Request::Call {
            tool: tool.into(),
            arguments,
            call_id: call_id.into(),
            timeout_ms,
        };
        self.handle(Input::Request(ticket, request.to_json()));
        let sent = self.host.last_sent();
        assert_eq!(sent["method"], "tools/call");
        sent["id"].as_i64().unwrap()
    }

    fn advance(&mut self, ms: u64) -> Flow {
        self.now += Duration::from_millis(ms);
        self.handle(Input::Idle)
    }
}

fn client_info() -> Value {
    json!({"name": "capbridge-mcp-proxy", "version": env!("CARGO_PKG_VERSION")})
}

#[test]
fn discover_goes_first_with_the_client_context_in_meta() {
    let fixture = Fixture::started();
    assert_eq!(
        fixture.host.sent,
        vec![(
            json!({
                "jsonrpc": "2.0",
                "id": 1,
                "method": "server/discover",
                "params": {"_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientInfo": client_info(),
                    "io.modelcontextprotocol/clientCapabilities": {}
                }}
            }),
            Some("2026-07-28".to_string())
        )]
    );
}

#[test]
fn a_modern_server_is_ready_after_discover_and_every_request_carries_the_version() {
    let mut fixture = Fixture::modern();
    assert_eq!(
        fixture.host.ready,
        vec![(
            "2026-07-28".to_string(),
            json!({"name": "everything", "version": "2.0.0"})
        )]
    );
    fixture.call(7, "echo", "c1", 1000);
    let (message, version) = fixture.host.sent.last().unwrap().clone();
    assert_eq!(version.as_deref(), Some("2026-07-28"));
    assert_eq!(
        message,
        json!({
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientInfo": client_info(),
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "progressToken": "c1"
                },
                "name": "echo",
                "arguments": {"text": "hi"}
            }
        })
    );
}

#[test]
fn a_legacy_server_gets_initialize_then_initialized() {
    let mut fixture = Fixture::started();
    fixture.host.take_sent();
    fixture.message(json!({
        "jsonrpc": "2.0", "id": 1,
        "error": {"code": -32601, "message": "Method not found"}
    }));
    assert_eq!(
        fixture.host.take_sent(),
        vec![(
            json!({
                "jsonrpc": "2.0",
                "id": 2,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": client_info()
                }
            }),
            None
        )]
    );
    assert!(fixture.host.ready.is_empty());
    fixture.message(json!({
        "jsonrpc": "2.0", "id": 2,
        "result": {
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "old", "version": "1.0.0"}
        }
    }));
    assert_eq!(
        fixture.host.take_sent(),
        vec![(
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            Some("2025-06-18".to_string())
        )]
    );
    assert_eq!(
        fixture.host.ready,
        vec![(
            "2025-06-18".to_string(),
            json!({"name": "old", "version": "1.0.0"})
        )]
    );

    // No per-request context in `_meta`; the negotiated version on every send.
    fixture.call(1, "echo", "c1", 1000);
    let (message, version) = fixture.host.sent.last().unwrap().clone();
    assert_eq!(version.as_deref(), Some("2025-06-18"));
    assert_eq!(message["params"]["_meta"], json!({"progressToken": "c1"}));
}

#[test]
fn discover_falls_back_on_any_error_even_without_an_id() {
    let mut fixture = Fixture::started();
    fixture.message(json!({
        "jsonrpc": "2.0", "id": null,
        "error": {"code": -32000, "message": "Bad Request: Server not initialized"}
    }));
    assert_eq!(fixture.host.last_sent()["method"], "initialize");
    assert!(
        fixture.host.logs[0].contains("-32000"),
        "{:?}",
        fixture.host.logs
    );
}

#[test]
fn discover_falls_back_when_the_server_is_silent_or_the_request_is_undelivered() {
    let mut fixture = Fixture::started();
    assert_eq!(fixture.driver.wait_ms(fixture.now), 10_000);
    fixture.advance(9_999);
    assert_eq!(fixture.host.sent.len(), 1);
    fixture.advance(1);
    assert_eq!(fixture.host.last_sent()["method"], "initialize");
    // A late answer to discover is ignored.
    fixture.message(json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "no"}}));
    assert_eq!(fixture.host.sent.len(), 2);

    let mut fixture = Fixture::started();
    fixture.handle(Input::Undelivered(Some("1".into()), "HTTP 405".into()));
    assert_eq!(fixture.host.last_sent()["method"], "initialize");
}

#[test]
fn discover_without_2026_07_28_falls_back() {
    let mut fixture = Fixture::started();
    fixture.message(json!({
        "jsonrpc": "2.0", "id": 1,
        "result": {"resultType": "complete", "supportedVersions": ["2027-01-01"],
                   "capabilities": {}, "ttlMs": 0, "cacheScope": "private"}
    }));
    assert_eq!(fixture.host.last_sent()["method"], "initialize");
}

#[test]
fn the_handshake_fails_on_an_unknown_version_or_a_timeout() {
    let mut fixture = Fixture::started();
    fixture.message(json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "no"}}));
    let flow = fixture.message(json!({
        "jsonrpc": "2.0", "id": 2,
        "result": {"protocolVersion": "1999-01-01", "capabilities": {},
                   "serverInfo": {"name": "x", "version": "1"}}
    }));
    assert_eq!(flow, Flow::Exit);
    assert!(fixture.host.ready.is_empty());
    let last = fixture.host.logs.last().unwrap();
    assert!(
        last.contains("`1999-01-01`") && last.contains("server/discover"),
        "{last}"
    );

    let mut fixture = Fixture::started();
    assert_eq!(fixture.advance(10_000), Flow::Continue);
    assert_eq!(fixture.advance(19_999), Flow::Continue);
    assert_eq!(fixture.advance(1), Flow::Exit);
    assert!(fixture.host.ready.is_empty());
}

#[test]
fn requests_during_the_handshake_wait_for_it() {
    let mut fixture = Fixture::started();
    let request = Request::Capabilities { timeout_ms: 1000 }.to_json();
    fixture.handle(Input::Request(5, request));
    assert_eq!(fixture.host.sent.len(), 1);
    fixture.message(json!({
        "jsonrpc": "2.0", "id": 1,
        "result": {"resultType": "complete", "supportedVersions": ["2026-07-28"],
                   "capabilities": {}, "ttlMs": 0, "cacheScope": "private"}
    }));
    // No lists announced: answered at once.
    let (ticket, answer) = &fixture.host.answers[0];
    assert_eq!(*ticket, 5);
    let answer = answer.as_ref().unwrap();
    assert_eq!(answer["protocolVersion"], "2026-07-28");
    assert_eq!(answer["serverInfo"], Value::Null);
    assert_eq!(answer["tools"], json!([]));
}

#[test]
fn twenty_concurrent_calls_each_get_their_own_result() {
    let mut fixture = Fixture::modern();
    let ids: Vec<i64> = (0..20)
        .map(|i| fixture.call(100 + i, "echo", &format!("c{i}"), 60_000))
        .collect();
    for (i, id) in ids.iter().enumerate().rev() {
        fixture.message(json!({
            "jsonrpc": "2.0", "id": id,
            "result": {"content": [{"type": "text", "text": format!("r{i}")}]}
        }));
    }
    assert_eq!(fixture.host.answers.len(), 20);
    for (ticket, answer) in &fixture.host.answers {
        let i = ticket - 100;
        let answer = answer.as_ref().unwrap();
        assert_eq!(answer["callId"], format!("c{i}"));
        assert_eq!(answer["serverId"], "srv");
        assert_eq!(answer["tool"], "echo");
        assert_eq!(answer["result"]["content"][0]["text"], format!("r{i}"));
    }
}

#[test]
fn progress_reaches_the_calls_ticket() {
    let mut fixture = Fixture::modern();
    fixture.call(1, "slow", "a", 60_000);
    fixture.call(2, "slow", "b", 60_000);
    fixture.message(json!({
        "jsonrpc": "2.0", "method": "notifications/progress",
        "params": {"progressToken": "b", "progress": 1, "total": 4, "message": "one"}
    }));
    fixture.message(json!({
        "jsonrpc": "2.0", "method": "notifications/progress",
        "params": {"progressToken": "unknown", "progress": 1}
    }));
    assert_eq!(
        fixture.host.progress,
        vec![(
            2,
            json!({"callId": "b", "serverId": "srv", "tool": "slow",
                   "progress": 1.0, "total": 4.0, "message": "one"})
        )]
    );
}

#[test]
fn a_repeated_call_id_gets_a_distinct_progress_token() {
    let mut fixture = Fixture::modern();
    fixture.call(1, "t", "same", 60_000);
    let id = fixture.call(2, "t", "same", 60_000);
    let token = fixture.host.last_sent()["params"]["_meta"]["progressToken"].clone();
    assert_eq!(token, json!(format!("same#{id}")));
    fixture.message(json!({
        "jsonrpc": "2.0", "method": "notifications/progress",
        "params": {"progressToken": token, "progress": 2}
    }));
    assert_eq!(fixture.host.progress[0].0, 2);
    assert_eq!(fixture.host.progress[0].1["callId"], "same");
}

#[test]
fn a_call_that_times_out_is_cancelled() {
    let mut fixture = Fixture::modern();
    let id = fixture.call(9, "slow", "c", 50);
    assert_eq!(fixture.driver.wait_ms(fixture.now), 50);
    fixture.advance(49);
    assert!(fixture.host.answers.is_empty());
    fixture.advance(1);
    let (message, version) = fixture.host.sent.last().unwrap().clone();
    assert_eq!(version.as_deref(), Some("2026-07-28"));
    assert_eq!(
        message,
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
               "params": {"requestId": id, "reason": "timed out after 50 ms"}})
    );
    assert_eq!(
        fixture.host.answers,
        vec![(
            9,
            Err(Failure::Unavailable(
                "tool `slow` of server `srv` timed out after 50 ms; the server was told to cancel"
                    .into()
            ))
        )]
    );
    // The late result goes nowhere.
    fixture.message(json!({"jsonrpc": "2.0", "id": id, "result": {"content": []}}));
    assert_eq!(fixture.host.answers.len(), 1);
    assert_eq!(fixture.driver.wait_ms(fixture.now), 60_000);
}

#[test]
fn an_abandoned_call_is_cancelled_and_forgotten() {
    let mut fixture = Fixture::modern();
    let id = fixture.call(3, "slow", "c", 60_000);
    fixture.handle(Input::Abandoned(3));
    assert_eq!(
        fixture.host.last_sent()["method"],
        "notifications/cancelled"
    );
    assert_eq!(fixture.host.last_sent()["params"]["requestId"], id);
    fixture.message(json!({"jsonrpc": "2.0", "id": id, "result": {"content": []}}));
    assert!(fixture.host.answers.is_empty());
}

#[test]
fn server_errors_become_invalid_argument_or_unavailable() {
    let mut fixture = Fixture::legacy("2025-11-25");
    let a = fixture.call(1, "nope", "a", 60_000);
    let b = fixture.call(2, "boom", "b", 60_000);
    fixture.message(json!({"jsonrpc": "2.0", "id": a,
        "error": {"code": -32602, "message": "Unknown tool: nope"}}));
    fixture.message(json!({"jsonrpc": "2.0", "id": b,
        "error": {"code": -32603, "message": "internal"}}));
    assert_eq!(
        fixture.host.answers,
        vec![
            (
                1,
                Err(Failure::InvalidArgument(
                    "server `srv` answered tools/call `nope` with error -32602: Unknown tool: nope"
                        .into()
                ))
            ),
            (
                2,
                Err(Failure::Unavailable(
                    "server `srv` answered tools/call `boom` with error -32603: internal".into()
                ))
            ),
        ]
    );
}

#[test]
fn odd_call_results() {
    let mut fixture = Fixture::modern();
    let a = fixture.call(1, "ask", "a", 60_000);
    fixture.message(json!({"jsonrpc": "2.0", "id": a,
        "result": {"resultType": "input_required", "inputRequests": {}}}));
    let Err(Failure::Unavailable(text)) = &fixture.host.answers[0].1 else {
        panic!("{:?}", fixture.host.answers)
    };
    assert!(text.contains("asked for more input"), "{text}");

    // Off rmcp's schema (an unknown content type): passed on as it came, the mismatch logged.
    let b = fixture.call(2, "odd", "b", 60_000);
    fixture.message(json!({"jsonrpc": "2.0", "id": b,
        "result": {"content": [{"type": "hologram", "data": 1}]}}));
    let answer = fixture.host.answers[1].1.as_ref().unwrap();
    assert_eq!(answer["result"]["content"][0]["type"], "hologram");
    assert!(fixture.host.logs.last().unwrap().contains("CallToolResult"));

    // A refused answer: too large.
    let c = fixture.call(3, "big", "c", 60_000);
    fixture.handle(Input::Refused(
        Some(c.to_string()),
        "the server sent a message of more than 16 MiB, which capbridge refuses".into(),
    ));
    let Err(Failure::TooLarge(text)) = &fixture.host.answers[2].1 else {
        panic!("{:?}", fixture.host.answers)
    };
    assert!(
        text.starts_with("tools/call `big`: ") && text.contains("16 MiB"),
        "{text}"
    );
}

#[test]
fn a_failed_send_answers_the_call() {
    let mut fixture = Fixture::modern();
    fixture.host.fail_send = Some(Failure::TooLarge("message over 16 MiB".into()));
    let request = Request::Call {
        tool: "t".into(),
        arguments: Map::new(),
        call_id: "c".into(),
        timeout_ms: 1000,
    };
    fixture.handle(Input::Request(4, request.to_json()));
    assert_eq!(
        fixture.host.answers,
        vec![(
            4,
            Err(Failure::TooLarge(
                "tools/call `t`: message over 16 MiB".into()
            ))
        )]
    );
    assert_eq!(fixture.driver.wait_ms(fixture.now), 60_000);
}

#[test]
fn capabilities_follow_every_page_of_every_announced_list() {
    let mut fixture = Fixture::modern();
    fixture.handle(Input::Request(
        8,
        Request::Capabilities { timeout_ms: 60_000 }.to_json(),
    ));
    let sent = fixture.host.take_sent();
    let methods: Vec<&str> = sent
        .iter()
        .map(|(m, _)| m["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "tools/list",
            "resources/list",
            "resources/templates/list",
            "prompts/list"
        ]
    );
    let id_of = |method: &str| {
        sent.iter()
            .find(|(m, _)| m["method"] == method)
            .map(|(m, _)| m["id"].clone())
            .unwrap()
    };
    assert_eq!(
        sent[0].0["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"],
        "2026-07-28"
    );
    assert_eq!(sent[0].0["params"].get("cursor"), None);

    let tool = |name: &str| json!({"name": name, "inputSchema": {"type": "object"}});
    fixture.message(json!({"jsonrpc": "2.0", "id": id_of("tools/list"),
        "result": {"tools": [tool("a"), tool("b")], "nextCursor": "p2"}}));
    let next = fixture.host.last_sent().clone();
    assert_eq!(next["method"], "tools/list");
    assert_eq!(next["params"]["cursor"], "p2");
    fixture.message(
        json!({"jsonrpc": "2.0", "id": id_of("resources/templates/list"),
        "error": {"code": -32601, "message": "Method not found"}}),
    );
    fixture.message(json!({"jsonrpc": "2.0", "id": id_of("resources/list"),
        "result": {"resources": [{"uri": "file:///a", "name": "a"}]}}));
    fixture.message(json!({"jsonrpc": "2.0", "id": id_of("prompts/list"),
        "result": {"prompts": [{"name": "p"}]}}));
    assert!(fixture.host.answers.is_empty());
    fixture.message(json!({"jsonrpc": "2.0", "id": next["id"],
        "result": {"tools": [tool("c")]}}));

    let (ticket, answer) = &fixture.host.answers[0];
    assert_eq!(*ticket, 8);
    let answer = answer.as_ref().unwrap();
    assert_eq!(answer["serverId"], "srv");
    assert_eq!(answer["protocolVersion"], "2026-07-28");
    assert_eq!(answer["serverInfo"]["name"], "everything");
    assert_eq!(answer["instructions"], "be nice");
    assert_eq!(answer["capabilities"]["tools"]["listChanged"], true);
    let names: Vec<&str> = answer["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(answer["resources"][0]["uri"], "file:///a");
    assert_eq!(answer["resourceTemplates"], json!([]));
    assert_eq!(answer["prompts"][0]["name"], "p");
}

#[test]
fn capabilities_only_list_what_is_announced_and_stop_on_a_repeated_cursor() {
    let mut fixture = Fixture::legacy("2025-11-25");
    fixture.handle(Input::Request(
        1,
        Request::Capabilities { timeout_ms: 60_000 }.to_json(),
    ));
    assert_eq!(fixture.host.sent.len(), 1);
    let id = fixture.host.last_sent()["id"].clone();
    fixture.message(json!({"jsonrpc": "2.0", "id": id,
        "result": {"tools": [], "nextCursor": "x"}}));
    let id = fixture.host.last_sent()["id"].clone();
    fixture.message(json!({"jsonrpc": "2.0", "id": id,
        "result": {"tools": [], "nextCursor": "x"}}));
    let Err(Failure::Unavailable(text)) = &fixture.host.answers[0].1 else {
        panic!("{:?}", fixture.host.answers)
    };
    assert!(text.contains("same tools/list cursor twice"), "{text}");
}

#[test]
fn a_page_off_rmcps_schema_is_read_leniently() {
    let mut fixture = Fixture::legacy("2025-11-25");
    fixture.handle(Input::Request(
        1,
        Request::Capabilities { timeout_ms: 60_000 }.to_json(),
    ));
    let id = fixture.host.last_sent()["id"].clone();
    // No inputSchema: not a valid Tool.
    fixture.message(json!({"jsonrpc": "2.0", "id": id,
        "result": {"tools": [{"name": "loose"}]}}));
    let answer = fixture.host.answers[0].1.as_ref().unwrap();
    assert_eq!(answer["tools"], json!([{"name": "loose"}]));
}

#[test]
fn a_capabilities_timeout_cancels_the_pages_in_flight() {
    let mut fixture = Fixture::modern();
    fixture.handle(Input::Request(
        1,
        Request::Capabilities { timeout_ms: 100 }.to_json(),
    ));
    fixture.host.take_sent();
    fixture.advance(100);
    let cancelled = fixture
        .host
        .sent
        .iter()
        .filter(|(m, _)| m["method"] == "notifications/cancelled")
        .count();
    assert_eq!(cancelled, 4);
    let Err(Failure::Unavailable(text)) = &fixture.host.answers[0].1 else {
        panic!("{:?}", fixture.host.answers)
    };
    assert!(text.contains("timed out after 100 ms"), "{text}");
}

#[test]
fn server_requests_are_answered() {
    let mut fixture = Fixture::legacy("2025-11-25");
    fixture.message(json!({"jsonrpc": "2.0", "id": "s1", "method": "ping"}));
    fixture.message(json!({"jsonrpc": "2.0", "id": 5, "method": "roots/list"}));
    fixture.message(
        json!({"jsonrpc": "2.0", "id": 6, "method": "sampling/createMessage",
        "params": {"messages": [], "maxTokens": 5}}),
    );
    fixture.message(
        json!({"jsonrpc": "2.0", "id": 7, "method": "elicitation/create",
        "params": {"message": "?", "requestedSchema": {"type": "object", "properties": {}}}}),
    );
    let sent = fixture.host.take_sent();
    assert_eq!(
        sent[0].0,
        json!({"jsonrpc": "2.0", "id": "s1", "result": {}})
    );
    assert_eq!(sent[0].1.as_deref(), Some("2025-11-25"));
    assert_eq!(
        sent[1].0,
        json!({"jsonrpc": "2.0", "id": 5, "result": {"roots": []}})
    );
    for (message, id) in [(&sent[2].0, 6), (&sent[3].0, 7)] {
        assert_eq!(message["id"], id);
        assert_eq!(message["error"]["code"], -32601);
        assert!(message["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("is not supported by capbridge"));
    }
}

#[test]
fn notifications() {
    let mut fixture = Fixture::modern();
    fixture.message(json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}));
    assert_eq!(fixture.host.tools_changed, 1);
    fixture.message(json!({"jsonrpc": "2.0", "method": "notifications/message",
        "params": {"level": "warning", "logger": "db", "data": "slow\nquery"}}));
    assert_eq!(
        fixture.host.logs.last().unwrap(),
        "server log [warning] db: slow query"
    );
    fixture.message(json!({"jsonrpc": "2.0", "method": "notifications/whatever"}));
    assert_eq!(fixture.host.logs.len(), 1);
}

#[test]
fn batches_are_read_one_by_one() {
    let mut fixture = Fixture::legacy("2025-03-26");
    let a = fixture.call(1, "t", "a", 60_000);
    let b = fixture.call(2, "t", "b", 60_000);
    fixture.message(json!([
        {"jsonrpc": "2.0", "id": a, "result": {"content": []}},
        {"jsonrpc": "2.0", "id": b.to_string(), "result": {"content": []}}
    ]));
    assert_eq!(fixture.host.answers.len(), 2);
}

#[test]
fn closed_and_stop_answer_every_waiting_ticket() {
    let mut fixture = Fixture::modern();
    fixture.call(1, "t", "a", 60_000);
    fixture.call(2, "t", "b", 60_000);
    assert_eq!(
        fixture.handle(Input::Closed("exit status 1".into())),
        Flow::Exit
    );
    assert_eq!(
        fixture.host.answers,
        vec![
            (
                1,
                Err(Failure::Unavailable(
                    "server `srv` is gone: exit status 1".into()
                ))
            ),
            (
                2,
                Err(Failure::Unavailable(
                    "server `srv` is gone: exit status 1".into()
                ))
            ),
        ]
    );

    let mut fixture = Fixture::modern();
    fixture.call(1, "t", "a", 60_000);
    assert_eq!(fixture.handle(Input::Stop), Flow::Exit);
    assert_eq!(
        fixture.host.answers,
        vec![(
            1,
            Err(Failure::Unavailable("server `srv` disconnected".into()))
        )]
    );

    let mut fixture = Fixture::started();
    fixture.handle(Input::Request(
        3,
        Request::Capabilities { timeout_ms: 5 }.to_json(),
    ));
    assert_eq!(fixture.handle(Input::Closed("eof".into())), Flow::Exit);
    assert_eq!(fixture.host.answers.len(), 1);
    assert!(fixture
        .host
        .logs
        .last()
        .unwrap()
        .starts_with("handshake failed"));
}

#[test]
fn malformed_requests_and_messages() {
    let mut fixture = Fixture::modern();
    fixture.handle(Input::Request(1, r#"{"op":"dance"}"#.into()));
    assert!(matches!(
        &fixture.host.answers[0].1,
        Err(Failure::InvalidArgument(text)) if text.starts_with("request: ")
    ));
    fixture.handle(Input::Message("not json".into()));
    fixture.handle(Input::Message(r#"{"jsonrpc":"2.0"}"#.into()));
    assert_eq!(fixture.host.logs.len(), 2, "{:?}", fixture.host.logs);
}

#[test]
fn mcp_2026_answers_to_initialize_keep_the_inline_context() {
    let mut fixture = Fixture::legacy("2026-07-28");
    assert_eq!(fixture.host.ready[0].0, "2026-07-28");
    fixture.call(1, "t", "a", 1000);
    assert_eq!(
        fixture.host.last_sent()["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"],
        "2026-07-28"
    );
}

#[test]
fn a_discover_answer_without_cache_hints_is_still_modern() {
    let mut fixture = Fixture::started();
    fixture.message(json!({
        "jsonrpc": "2.0", "id": 1,
        "result": {"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}},
                   "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "n", "version": "1"}}}
    }));
    assert_eq!(
        fixture.host.ready,
        vec![(
            "2026-07-28".to_string(),
            json!({"name": "n", "version": "1"})
        )]
    );
    assert!(fixture.host.logs[0].contains("DiscoverResult"));
}

#[test]
fn a_refusal_for_another_reason_is_unavailable() {
    let mut fixture = Fixture::modern();
    let id = fixture.call(1, "t", "a", 60_000);
    fixture.handle(Input::Refused(
        Some(id.to_string()),
        "the server sent a message that is not UTF-8".into(),
    ));
    assert!(matches!(
        &fixture.host.answers[0].1,
        Err(Failure::Unavailable(_))
    ));
}
