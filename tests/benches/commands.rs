//! Command benchmarks (`cargo xtask bench`): figures printed, never asserted. A real bridge on
//! an ephemeral port, the real `commands` component, real child processes and a real WebSocket
//! client; the runs are allowed by whitelist rules written beforehand (a person's rules), so no
//! prompt is in the way.
//!
//! - latency from a child's write to the WebSocket client receiving the event: the child prints
//!   its clock (`date +%s%N`) every 10 ms, the client subtracts it from its own on arrival;
//! - throughput of a 100 MB output to the WebSocket client, against `cat` of the same file
//!   through a pipe to this process in the same run, and the peak RSS of this process (bridge and
//!   client together) during it;
//! - a rule-allowed `execute` of `true`, from the request to the `completed` event.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use capbridge_api::BridgeConfig;
use capbridge_tests::{
    component, each_run_event, shipped_policy_working_in, Bridge, Fixture, Socket,
};
use serde_json::{json, Value};

const TRUE_RUNS: usize = 200;
const TICKS: usize = 300;
const STREAM_BYTES: usize = 100 << 20;

fn main() {
    capbridge_runtime::engine::skip_error_backtraces();
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("output.txt");
    let line = "2026-12-01T19:00:00Z INFO capbridge command output line of typical length\n";
    std::fs::write(
        &big,
        &line.repeat(STREAM_BYTES / line.len() + 1).as_bytes()[..STREAM_BYTES],
    )
    .unwrap();
    let tick = "for i in $(seq 300); do date +%s%N; sleep 0.01; done";
    let templates = [
        json!({ "program": "true", "args": [] }),
        json!({ "program": "sh", "args": ["-c", tick] }),
        json!({ "program": "cat", "args": [big] }),
    ];

    let fixture = Fixture::new();
    let policy = shipped_policy_working_in("commands", "process", work.path(), |_| {});
    fixture.add("commands", &component("commands"), Some(&policy));
    let rules: Vec<Value> = templates
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({ "id": format!("rule-{}", i + 1), "component": "commands",
                "template": { "program": t["program"], "args": t["args"], "cwd": null, "env": [], "stdin": null },
                "programPath": capbridge_tests::which(t["program"].as_str().unwrap()),
                "createdAtMs": 1, "createdBy": "terminal" })
        })
        .collect();
    std::fs::create_dir_all(fixture.path().join("state")).unwrap();
    std::fs::write(
        fixture.path().join("state/command-rules.json"),
        json!({ "version": 1, "rules": rules }).to_string(),
    )
    .unwrap();

    let tokio = tokio::runtime::Runtime::new().unwrap();
    tokio.block_on(async {
        let bridge = Bridge::start(fixture.runtime(), BridgeConfig::default()).await;
        let token = bridge.token().await;
        let mut socket = bridge.events(&token).await;
        let execute = |template: &Value| {
            let body = json!({ "template": template });
            let (bridge, token) = (&bridge, &token);
            async move {
                let response = bridge
                    .post_as(token, "/api/v1/system/commands/execute", &body)
                    .await;
                let run: Value = response.json().await.unwrap();
                assert_eq!(run["approval"], "rule", "{run}");
                run["id"].as_str().unwrap().to_string()
            }
        };

        // Rule-allowed `true`, request to `completed`.
        let mut samples = Vec::with_capacity(TRUE_RUNS);
        for _ in 0..TRUE_RUNS {
            let start = Instant::now();
            let id = execute(&templates[0]).await;
            until(&mut socket, &id, "system.command.completed", |_| {}).await;
            samples.push(start.elapsed());
        }
        report(&format!("execute `true` by rule, request → completed event ({TRUE_RUNS} runs)"), &mut samples);

        // A child's write to the client.
        let id = execute(&templates[1]).await;
        let mut latencies = Vec::with_capacity(TICKS);
        until(&mut socket, &id, "system.command.completed", |event| {
            if event["type"] == "system.command.stdout" {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
                for stamp in event["payload"]["data"].as_str().unwrap().lines() {
                    if let Ok(written) = stamp.trim().parse::<u128>() {
                        latencies.push(Duration::from_nanos(now.saturating_sub(written) as u64));
                    }
                }
            }
        })
        .await;
        report("child write → WebSocket client (date +%s%N every 10 ms)", &mut latencies);

        // 100 MB: native pipe, then through the bridge.
        let start = Instant::now();
        let mut cat = tokio::process::Command::new("cat")
            .arg(&big)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = cat.stdout.take().unwrap();
        let (mut chunk, mut native) = (vec![0u8; 64 << 10], 0usize);
        loop {
            match tokio::io::AsyncReadExt::read(&mut pipe, &mut chunk).await.unwrap() {
                0 => break,
                n => native += n,
            }
        }
        cat.wait().await.unwrap();
        let native_time = start.elapsed();
        assert_eq!(native, STREAM_BYTES);
        // Reset this process's peak RSS (VmHWM) so it covers the stream alone.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let before = status_kib("VmRSS");
        let start = Instant::now();
        let id = execute(&templates[2]).await;
        let mut received = 0usize;
        until(&mut socket, &id, "system.command.completed", |event| {
            if event["type"] == "system.command.stdout" {
                let data = event["payload"]["data"].as_str().unwrap();
                received += match event["payload"]["encoding"].as_str().unwrap() {
                    "base64" => base64::engine::general_purpose::STANDARD.decode(data).unwrap().len(),
                    _ => data.len(),
                };
            }
        })
        .await;
        let bridge_time = start.elapsed();
        assert_eq!(received, STREAM_BYTES);
        let mb = STREAM_BYTES as f64 / 1e6;
        println!(
            "100 MB output: `cat` through a pipe {:>8.1} MB/s; through capbridge to the WebSocket client {:>8.1} MB/s ({:.2}x)",
            mb / native_time.as_secs_f64(),
            mb / bridge_time.as_secs_f64(),
            native_time.as_secs_f64() / bridge_time.as_secs_f64(),
        );
        println!(
            "peak RSS of bridge + client during the stream: {} MiB (before it: {} MiB; the run keeps 10 MiB per stream)",
            status_kib("VmHWM") / 1024,
            before / 1024
        );
    });
}

/// Reads events until `last` for run `id`, handing each of that run's events to `each`.
async fn until(socket: &mut Socket, id: &str, last: &str, each: impl FnMut(&Value)) {
    each_run_event(socket, id, &[last], Duration::from_secs(120), each).await;
}

fn report(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{name:<70} p50 {:>10.2?}   p99 {:>10.2?}",
        at(0.5),
        at(0.99)
    );
}

/// A `kB` field of /proc/self/status.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}
