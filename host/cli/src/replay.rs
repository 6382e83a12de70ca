//! `capbridge replay` and `capbridge test`: recorded traces run again, offline, every host call
//! answered from the trace.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use capbridge_runtime::replay::{sha256_hex, Trace};
use capbridge_runtime::{Runtime, RuntimeConfig};

/// `capbridge replay FILE`.
pub fn replay_one(
    config: RuntimeConfig,
    trace: &Path,
    wasm: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::new(config)?;
    let tokio = tokio::runtime::Runtime::new()?;
    let passed = tokio.block_on(replay(&runtime, trace, wasm))?;
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `capbridge test DIR`: every `*.trace.json` under `DIR/tests`.
pub fn test_dir(
    config: RuntimeConfig,
    dir: &Path,
    wasm: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let tests = dir.join("tests");
    let mut traces = Vec::new();
    collect_traces(&tests, &mut traces);
    traces.sort();
    if traces.is_empty() {
        anyhow::bail!(
            "no traces (*.trace.json) under {}: record one with `capbridge component call \
             <component> <function> '<args>' --record {}/<name>.trace.json`",
            tests.display(),
            tests.display()
        );
    }
    let runtime = Runtime::new(config)?;
    let tokio = tokio::runtime::Runtime::new()?;
    let mut failed = 0;
    for trace in &traces {
        match tokio.block_on(replay(&runtime, trace, wasm)) {
            Ok(true) => {}
            Ok(false) => failed += 1,
            Err(error) => {
                println!("FAIL  {}\n  {error:#}", trace.display());
                failed += 1;
            }
        }
    }
    println!(
        "{} of {} traces replayed as recorded",
        traces.len() - failed,
        traces.len()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn collect_traces(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Not through symbolic links: a link loop would never end.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_traces(&path, out);
        } else if path.to_string_lossy().ends_with(".trace.json") {
            out.push(path);
        }
    }
}

/// Replays one trace and prints how it went; `Ok(false)` when it diverged.
async fn replay(runtime: &Runtime, path: &Path, wasm: Option<&Path>) -> anyhow::Result<bool> {
    let trace = Trace::load(path)?;
    let wasm = match wasm {
        Some(wasm) => wasm.to_path_buf(),
        None => runtime
            .config()
            .components_dir
            .join(format!("{}.wasm", trace.component.id)),
    };
    let report = runtime.replay(&wasm, &trace).await?;
    let Some(failure) = report.failure else {
        println!(
            "ok    {} ({} `{}`, {} host calls)",
            path.display(),
            trace.component.id,
            trace.function,
            report.matched
        );
        return Ok(true);
    };
    println!(
        "FAIL  {} ({} `{}`)",
        path.display(),
        trace.component.id,
        trace.function
    );
    for line in failure.to_string().lines() {
        println!("  {line}");
    }
    let now = std::fs::read(&wasm)
        .map(|bytes| sha256_hex(&bytes))
        .unwrap_or_default();
    if now != trace.component.sha256 {
        println!(
            "  ({} changed since the trace was recorded: sha256 {} then, {} now)",
            wasm.display(),
            short(&trace.component.sha256),
            short(&now)
        );
    }
    Ok(false)
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
