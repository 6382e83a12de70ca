//! MCP benchmark (`cargo xtask bench`): figures printed, never asserted.
//!
//! `tools/call echo` on the real `@modelcontextprotocol/server-everything` over stdio, made
//! - through capbridge's contract: `POST /api/v1/mcp/call` to a real bridge on an ephemeral
//!   port, the real `mcp-proxy` component (a fresh instance per call, handing the call to the
//!   connection's driver instance), the host's stdio transport;
//! - directly: the official Rust SDK's client (`rmcp`) spawning the same server, same run.
//!
//! The registration is written into the registry beforehand (as a person's approval would
//! leave it), so no prompt is in the way. Calls are sequential; the added latency is the
//! difference of the medians.

use std::time::{Duration, Instant};

use capbridge_api::BridgeConfig;
use capbridge_tests::{component, root, shipped_policy_working_in, Bridge, Fixture};
use rmcp::model::CallToolRequestParams;
use rmcp::ServiceExt as _;
use serde_json::json;

const WARMUP: usize = 100;
const CALLS: usize = 2000;

fn main() {
    capbridge_runtime::engine::skip_error_backtraces();
    let server = root().join(
        "tests/mcp-servers/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
    );
    assert!(
        server.is_file(),
        "{} is missing: run `cargo xtask bench` (it installs the test MCP servers)",
        server.display()
    );
    let work = tempfile::tempdir().unwrap();
    let fixture = Fixture::new();
    let policy = shipped_policy_working_in("mcp-proxy", "mcp", work.path(), |_| {});
    fixture.add("mcp-proxy", &component("mcp-proxy"), Some(&policy));
    let entry = json!({
        "component": "mcp-proxy", "id": "everything", "name": "everything",
        "transport": { "type": "stdio", "program": "node", "args": [server, "stdio"],
            "cwd": work.path(), "env": [] },
        "programPath": capbridge_tests::which("node"),
        "createdAtMs": 1, "updatedAtMs": 1, "approvedBy": "terminal",
    });
    std::fs::create_dir_all(fixture.path().join("state")).unwrap();
    std::fs::write(
        fixture.path().join("state/mcp-servers.json"),
        json!({ "version": 1, "servers": [entry] }).to_string(),
    )
    .unwrap();

    let tokio = tokio::runtime::Runtime::new().unwrap();
    tokio.block_on(async {
        // Directly: the SDK's client and the server, nothing between.
        let transport = rmcp::transport::TokioChildProcess::new({
            let mut command = tokio::process::Command::new("node");
            command.arg(&server).arg("stdio").current_dir(work.path());
            command
        })
        .unwrap();
        let client = ().serve(transport).await.unwrap();
        let params = || {
            CallToolRequestParams::new("echo")
                .with_arguments(json!({ "message": "hello" }).as_object().unwrap().clone())
        };
        let mut direct = Vec::with_capacity(CALLS);
        for i in 0..WARMUP + CALLS {
            let started = Instant::now();
            let result = client.call_tool(params()).await.unwrap();
            if i >= WARMUP {
                direct.push(started.elapsed());
            }
            assert!(format!("{result:?}").contains("Echo: hello"));
        }
        client.cancel().await.unwrap();

        // Through capbridge.
        let bridge = Bridge::start(fixture.runtime(), BridgeConfig::default()).await;
        let token = bridge.token().await;
        let connected = bridge
            .post_as(&token, "/api/v1/mcp/servers/everything/connect", &json!({}))
            .await;
        assert!(
            connected.status().is_success(),
            "{}",
            connected.text().await.unwrap()
        );
        let body = json!({ "serverId": "everything", "tool": "echo",
            "arguments": { "message": "hello" } });
        let mut through = Vec::with_capacity(CALLS);
        for i in 0..WARMUP + CALLS {
            let started = Instant::now();
            let response = bridge.post_as(&token, "/api/v1/mcp/call", &body).await;
            let text = response.text().await.unwrap();
            if i >= WARMUP {
                through.push(started.elapsed());
            }
            assert!(text.contains("Echo: hello"), "{text}");
        }

        println!("tools/call echo, server-everything over stdio, {CALLS} sequential calls");
        let direct_p50 = report("directly (rmcp client)", &mut direct);
        let through_p50 = report("through capbridge (POST /api/v1/mcp/call)", &mut through);
        println!(
            "{:<70} p50 {:>10.2?}   ({:.2}x the direct call)",
            "added by capbridge",
            through_p50.saturating_sub(direct_p50),
            through_p50.as_secs_f64() / direct_p50.as_secs_f64()
        );
    });
}

fn report(name: &str, samples: &mut [Duration]) -> Duration {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{name:<70} p50 {:>10.2?}   p99 {:>10.2?}",
        at(0.5),
        at(0.99)
    );
    at(0.5)
}
