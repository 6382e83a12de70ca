//! Runtime benchmarks: figures printed, not asserted (`cargo xtask bench`).
//!
//! - a fresh-instance call of a no-op export, against a native no-op call in the same run;
//! - loading one component from a warm compile cache;
//! - the JSON ⇄ WIT round trip of a nested record.

use std::hint::black_box;
use std::time::{Duration, Instant};

use capbridge_runtime::values::{json_to_val, val_to_json};
use capbridge_runtime::CallOptions;
use capbridge_tests::{component, filesystem_policy_at, shipped_policy, Fixture};
use serde_json::json;

struct Stats {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        mean,
    }
}

fn report(name: &str, s: &Stats) {
    println!(
        "{name:<44} p50 {:>10.2?}  p99 {:>10.2?}  mean {:>10.2?}",
        s.p50, s.p99, s.mean
    );
}

#[inline(never)]
fn native_noop() {
    black_box(());
}

fn main() {
    let fx = Fixture::new();
    fx.add("echo", &component("echo"), Some(&shipped_policy("echo")));
    // The filesystem component over a temporary workspace holding a 4 KiB file.
    let workspace = tempfile::tempdir().unwrap();
    let page = workspace.path().join("page.txt");
    std::fs::write(&page, "capbridge ".repeat(410)).unwrap();
    fx.add(
        "filesystem",
        &component("filesystem"),
        Some(&filesystem_policy_at(workspace.path())),
    );
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = capbridge_tests::runtime_with(fx.config());
    let iterations = 20_000;

    // Native baseline: the same (no) work without a sandbox, timed the same way.
    let native: Vec<Duration> = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            native_noop();
            t.elapsed()
        })
        .collect();
    let native = stats(native);

    let options = CallOptions::default();
    let args = json!({});
    tokio.block_on(async {
        for _ in 0..1000 {
            runtime.call("echo", "noop", &args, &options).await.unwrap();
        }
    });
    let fresh: Vec<Duration> = tokio.block_on(async {
        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let t = Instant::now();
            black_box(runtime.call("echo", "noop", &args, &options).await.unwrap());
            samples.push(t.elapsed());
        }
        samples
    });
    let fresh = stats(fresh);

    // Reading a 4 KiB file: natively, then through the sandboxed component (fresh instance,
    // preopened directory, WASI reads, JSON result, an event).
    let native_reads = stats(
        (0..iterations)
            .map(|_| {
                let t = Instant::now();
                black_box(std::fs::read_to_string(black_box(&page)).unwrap());
                t.elapsed()
            })
            .collect(),
    );
    let read_args =
        json!({"target": "workspace", "path": "page.txt", "encoding": null, "max-bytes": null});
    let component_reads: Vec<Duration> = tokio.block_on(async {
        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let t = Instant::now();
            let outcome = runtime
                .call("filesystem", "read-file", &read_args, &options)
                .await
                .unwrap();
            black_box(outcome);
            samples.push(t.elapsed());
        }
        samples
    });
    let component_reads = stats(component_reads);

    // The same read recorded (every host call through the interposer and the pass-through
    // component, the trace built), and replayed from that trace.
    let wasm = fx.components_dir().join("filesystem.wasm");
    let (recorded, trace) = tokio.block_on(async {
        let mut trace = None;
        let mut samples = Vec::with_capacity(1000);
        for i in 0..1100 {
            let t = Instant::now();
            let (recorded, outcome) = runtime
                .record("filesystem", "read-file", &read_args, &options)
                .await
                .unwrap();
            outcome.unwrap();
            if i >= 100 {
                samples.push(t.elapsed());
            }
            trace = Some(recorded);
        }
        (stats(samples), trace.unwrap())
    });
    let replayed = tokio.block_on(async {
        let mut samples = Vec::with_capacity(1000);
        for i in 0..1100 {
            let t = Instant::now();
            let report = runtime.replay(&wasm, &trace).await.unwrap();
            assert!(report.failure.is_none());
            if i >= 100 {
                samples.push(t.elapsed());
            }
        }
        stats(samples)
    });

    let loads: Vec<Duration> = (0..50)
        .map(|_| {
            let t = Instant::now();
            runtime.load_all(&mut |_| {}).unwrap();
            t.elapsed()
        })
        .collect();
    let loads = stats(loads);

    let drawing = json!({
        "name": "house",
        "color": "green",
        "shapes": ["empty", {"circle": 7}, {"rectangle": {"x": -3, "y": 4}}, {"circle": 9}],
        "origin": {"x": 0, "y": -2},
        "tags": [["roof", 255], ["door", 0], ["window", 3]],
        "access": ["read", "execute"]
    });
    let ty = runtime
        .signature("echo", "echo-drawing")
        .expect("echo-drawing")
        .params[0]
        .1
        .clone();
    let round_trips: Vec<Duration> = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            let val = json_to_val(&ty, black_box(&drawing), "drawing").unwrap();
            black_box(val_to_json(&val).unwrap());
            t.elapsed()
        })
        .collect();
    let round_trips = stats(round_trips);

    println!("capbridge runtime benchmarks ({iterations} samples each; loads: 50)");
    report("native no-op call (baseline)", &native);
    report("fresh-instance call of echo.noop", &fresh);
    println!(
        "{:<44} p50 {:>10.2?}   (target ≤ 30µs)",
        "  added over native",
        fresh.p50.saturating_sub(native.p50)
    );
    report("load one component from the compile cache", &loads);
    println!("{:<44} (target ≤ 5ms)", "");
    report("JSON ⇄ WIT round trip, nested record", &round_trips);
    report("native read of a 4 KiB file", &native_reads);
    report(
        "filesystem.read-file of it (fresh instance)",
        &component_reads,
    );
    println!(
        "{:<44} p50 {:>10.2?}",
        "  added over native",
        component_reads.p50.saturating_sub(native_reads.p50)
    );
    report(
        &format!("  recorded ({} host calls)", trace.host_calls.len()),
        &recorded,
    );
    report("  replayed from the trace", &replayed);
    println!(
        "{:<44} {:.2}x the plain call's p50",
        "  recording costs",
        recorded.p50.as_secs_f64() / component_reads.p50.as_secs_f64()
    );
}
