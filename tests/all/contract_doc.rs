//! docs/contract.md's shell examples work as written.
//!
//! A real bridge serves the echo component on an ephemeral port, with the config the doc's
//! examples assume (the defaults plus one allowed origin). Every ```` ```sh ```` block of the doc
//! runs, in order, as one bash script (`set -euo pipefail`), with the doc's
//! `BRIDGE=http://127.0.0.1:47832` line pointed at the test server. A ```` ```json ```` or
//! ```` ```text ```` block right after a ```` ```sh ```` block (only blank lines between) is what
//! that block must print: JSON is compared structurally, as a sequence of values (an error example
//! prints the body, then the status), where the string `"..."` matches any value; text is
//! compared line by line. A block without such a block must print nothing. The examples use
//! `curl` and `jq`; without them the test fails saying how to install them.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::process::Stdio;
use std::time::Duration;

use capbridge_tests::{
    component, echo_fixture, filesystem_policy_at, root, shipped_policy, Bridge,
};
use serde_json::Value;

/// The doc's first example; the test replaces it with the test server's address.
const BRIDGE_LINE: &str = "BRIDGE=http://127.0.0.1:47832";
/// The origin the doc's examples assume is configured.
const APP_ORIGIN: &str = "https://app.example";
/// What the script prints on stderr as each block starts, followed by the block's line.
const MARK: &str = "--- docs/contract.md:";
/// Tools the examples use.
const TOOLS: &[&str] = &["curl", "jq"];

/// A fenced block of the doc.
struct Block {
    lang: String,
    /// Line of the opening fence (1-based).
    line: usize,
    text: String,
    /// Only blank lines separate it from the block before.
    adjacent: bool,
}

fn blocks(doc: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    let mut adjacent = false;
    for (i, line) in doc.lines().enumerate() {
        match &mut open {
            Some(_) if line.trim_start().starts_with("```") => {
                blocks.push(open.take().expect("open block"));
                adjacent = true;
            }
            Some(block) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            None if line.trim_start().starts_with("```") => {
                open = Some(Block {
                    lang: line.trim_start().trim_start_matches('`').trim().to_string(),
                    line: i + 1,
                    text: String::new(),
                    adjacent,
                })
            }
            None => adjacent &= line.trim().is_empty(),
        }
    }
    assert!(
        open.is_none(),
        "docs/contract.md: a fenced block is not closed"
    );
    blocks
}

/// A ```` ```sh ```` block and what it must print.
struct Example<'a> {
    script: &'a Block,
    expected: Option<&'a Block>,
}

fn examples(blocks: &[Block]) -> Vec<Example<'_>> {
    blocks
        .iter()
        .enumerate()
        .filter(|(_, block)| block.lang == "sh")
        .map(|(i, script)| Example {
            script,
            expected: blocks
                .get(i + 1)
                .filter(|next| next.adjacent && matches!(next.lang.as_str(), "json" | "text")),
        })
        .collect()
}

/// `expected` matches `actual`, `"..."` standing for any value; else where they differ.
fn check(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::String(s), _) if s == "..." => Ok(()),
        (Value::Object(e), Value::Object(a)) => {
            let (e_keys, a_keys): (BTreeSet<_>, BTreeSet<_>) =
                (e.keys().collect(), a.keys().collect());
            if e_keys != a_keys {
                return Err(format!("{path}: expected keys {e_keys:?}, got {a_keys:?}"));
            }
            e.iter()
                .try_for_each(|(k, v)| check(v, &a[k], &format!("{path}.{k}")))
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => e
            .iter()
            .zip(a)
            .enumerate()
            .try_for_each(|(i, (e, a))| check(e, a, &format!("{path}[{i}]"))),
        _ if expected == actual => Ok(()),
        _ => Err(format!("{path}: expected {expected}, got {actual}")),
    }
}

/// Every JSON value in `text`, in order.
fn json_values(text: &str) -> Result<Value, String> {
    serde_json::Deserializer::from_str(text)
        .into_iter()
        .collect::<Result<Vec<Value>, _>>()
        .map(Value::Array)
        .map_err(|e| format!("not a sequence of JSON values ({e}):\n{text}"))
}

fn compare(expected: Option<&Block>, output: &str) -> Result<(), String> {
    let Some(expected) = expected else {
        return match output.trim() {
            "" => Ok(()),
            _ => Err(format!(
                "printed this, but the doc shows no output:\n{output}"
            )),
        };
    };
    if expected.lang == "text" {
        let lines = |text: &str| -> Vec<String> {
            text.trim()
                .lines()
                .map(|l| l.trim_end().to_string())
                .collect()
        };
        return match lines(&expected.text) == lines(output) {
            true => Ok(()),
            false => Err(format!("printed:\n{output}")),
        };
    }
    let wanted = json_values(&expected.text)
        .map_err(|e| format!("the doc's expected output (line {}) is {e}", expected.line))?;
    let got = json_values(output).map_err(|e| format!("printed {e}"))?;
    check(&wanted, &got, "output").map_err(|e| format!("{e}\nprinted:\n{output}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_examples_in_the_contract_print_what_the_doc_shows() {
    for tool in TOOLS {
        let found = std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is not installed: run `apt-get install -y {tool}`"
        );
    }
    let doc_path = root().join("docs/contract.md");
    let doc = std::fs::read_to_string(&doc_path).expect("docs/contract.md");
    let blocks = blocks(&doc);
    let examples = examples(&blocks);
    assert!(
        examples
            .first()
            .is_some_and(|e| e.script.text.lines().any(|l| l == BRIDGE_LINE)),
        "the doc's first ```sh block must set `{BRIDGE_LINE}`"
    );

    // The shipped components and policies, the workspace target in a temporary directory.
    let fixture = echo_fixture();
    let workspace = tempfile::tempdir().expect("temp workspace");
    fixture.add(
        "filesystem",
        &component("filesystem"),
        Some(&filesystem_policy_at(workspace.path())),
    );
    // Every component the contract's routes are a face of, as the API registers them.
    let faces = capbridge_api::MODULES.iter().filter_map(|m| m.component);
    for id in faces.filter(|id| *id != "filesystem") {
        fixture.add(id, &component(id), Some(&shipped_policy(id)));
    }
    // And the canvas, reached through commands only (no route of its own).
    fixture.add(
        "canvas",
        &component("canvas"),
        Some(&shipped_policy("canvas")),
    );
    let config = capbridge_api::BridgeConfig {
        origins: vec![APP_ORIGIN.to_string()],
        ..Default::default()
    };
    // The audit log on, as `capbridge serve` keeps it.
    let runtime = capbridge_tests::runtime_with(capbridge_runtime::RuntimeConfig {
        audit_retention: Some(capbridge_runtime::audit::DEFAULT_RETENTION),
        ..fixture.config()
    });
    let bridge = Bridge::start(runtime, config).await;

    // One script: each block's stdout goes to its own file; stderr names the block running.
    let out = tempfile::tempdir().expect("temp dir");
    let mut script = String::from("set -euo pipefail\n");
    for (i, example) in examples.iter().enumerate() {
        let text = example
            .script
            .text
            .lines()
            .map(|l| match l {
                BRIDGE_LINE => format!("BRIDGE={}", bridge.base),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            !text.contains(":47832"),
            "docs/contract.md:{}: examples reach the bridge through $BRIDGE only",
            example.script.line
        );
        let file = out.path().join(i.to_string());
        let line = example.script.line;
        writeln!(script, "echo '{MARK}{line}' >&2").unwrap();
        writeln!(script, "{{\n{text}\n}} > '{}'", file.display()).unwrap();
    }
    let run = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let run = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the examples finish within 2 minutes")
        .expect("run bash");
    let stderr = String::from_utf8_lossy(&run.stderr);
    let started = |l: &&str| l.starts_with(MARK);
    assert!(
        run.status.success(),
        "the examples failed ({}) in the block at {}:\n{}",
        run.status,
        stderr
            .lines()
            .rfind(started)
            .unwrap_or_default()
            .trim_start_matches("--- "),
        stderr
            .lines()
            .filter(|l| !started(l))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let mut failures = Vec::new();
    for (i, example) in examples.iter().enumerate() {
        let output = std::fs::read_to_string(out.path().join(i.to_string())).expect("output");
        if let Err(e) = compare(example.expected, &output) {
            failures.push(format!("docs/contract.md:{}: {e}", example.script.line));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} examples differ from the doc:\n\n{}",
        failures.len(),
        examples.len(),
        failures.join("\n\n")
    );
    bridge
        .server
        .shutdown(Duration::from_secs(1))
        .await
        .expect("shutdown");
}
