//! Record and replay: a trace of one export call and every host call it made, and a run of the
//! component answered from that trace alone (docs/adr/0007-record-and-replay.md).
//!
//! - [`passthrough`]: the generated component through which a recording reaches the real host.
//! - `interpose`: the linker defining every import dynamically, answering from the real host
//!   or from the trace.
//! - `value`: the trace's lossless JSON form of host-call values.

mod interpose;
pub mod passthrough;
mod value;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use wasmtime::component::{Component, InstancePre};
use wasmtime::{Engine, Store};

use crate::state::HostState;
use crate::state_file::StateFile;

pub(crate) use interpose::Session;

/// The `format` of every trace this version writes and reads.
pub const FORMAT: &str = "capbridge-trace/1";

/// The largest byte list a trace keeps; a longer one is recorded as `{"omitted": length}`.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// The most bytes of byte lists one trace keeps in all; past it, lists are omitted too.
pub const MAX_TRACE_BYTES: usize = 64 << 20;

/// One recorded export call: what was called, every host call it made, and how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trace {
    /// Always [`FORMAT`].
    pub format: String,
    /// The component recorded: its id and the SHA-256 of its `.wasm` file.
    pub component: TracedComponent,
    /// Byte lists longer than this were omitted.
    pub max_value_bytes: usize,
    /// Byte lists past this many bytes in all were omitted.
    pub max_trace_bytes: usize,
    /// The component's limits when recorded; a replay runs under the same.
    pub limits: TraceLimits,
    /// The export called.
    pub function: String,
    /// Its arguments, in the contract's JSON form (as `component call` takes them).
    pub args: Value,
    /// Every host call, in order.
    pub host_calls: Vec<HostCall>,
    /// The export's result in the contract's JSON form, or its trap.
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceLimits {
    pub deadline_ms: u64,
    pub memory_mib: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracedComponent {
    pub id: String,
    pub sha256: String,
}

/// One host import call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostCall {
    /// `wasi:filesystem/types@0.2.6`, `capbridge:host/events`, …
    pub interface: String,
    /// `[method]descriptor.read`, `publish`, `[resource-drop]descriptor`, …
    pub function: String,
    /// Arguments by parameter name, in the trace's JSON form.
    pub args: Map<String, Value>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl Trace {
    /// Reads a trace file.
    pub fn load(path: &Path) -> anyhow::Result<Trace> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a capbridge trace: {e}", path.display()))
    }

    /// Writes the trace to `path`, atomically.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{} is not a file name", path.display()))?;
        StateFile::new(dir.unwrap_or(Path::new(".")), name, "trace").write(self)
    }
}

/// Writes `trace` into `dir` as `<component>/<unix ms>-<function>.trace.json`.
pub(crate) fn write_trace(dir: &Path, trace: &Trace) -> Result<PathBuf, String> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let function: String = trace
        .function
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Two calls in one millisecond get two files.
    let unique: String = crate::state_file::random_hex()?.chars().take(6).collect();
    let path = dir
        .join(&trace.component.id)
        .join(format!("{millis}-{function}-{unique}.trace.json"));
    trace.save(&path)?;
    Ok(path)
}

impl HostCall {
    /// Same interface, function and arguments.
    pub fn same_call(&self, other: &HostCall) -> bool {
        self.interface == other.interface
            && self.function == other.function
            && self.args == other.args
    }
}

impl fmt::Display for HostCall {
    /// `wasi:filesystem/types@0.2.6 [method]descriptor.read {"self":{"resource":3},…}`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.interface,
            self.function,
            Value::Object(self.args.clone())
        )
    }
}

/// How a call ended: `{"result": …}` or `{"trap": "…"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Result(Value),
    Trap(String),
}

/// Where a replay first departed from its trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    /// How many host calls matched before it.
    pub at: usize,
    /// The call the trace has next (`None`: the trace had no more).
    pub expected: Option<HostCall>,
    /// The call the component made (`None`: it made no more).
    pub actual: Option<HostCall>,
    /// When it made no more: the trap that ended it, if one did.
    pub trap: Option<String>,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "host call #{} diverges from the trace:", self.at + 1)?;
        match &self.expected {
            Some(call) => writeln!(f, "  expected: {call}")?,
            None => writeln!(f, "  expected: no more host calls")?,
        }
        match (&self.actual, &self.trap) {
            (Some(call), _) => write!(f, "  actual:   {call}"),
            (None, Some(trap)) => write!(
                f,
                "  actual:   no more host calls (the export trapped: {trap})"
            ),
            (None, None) => write!(f, "  actual:   no more host calls (the export returned)"),
        }
    }
}

/// The SHA-256 of a component's bytes, in hex, as a trace names it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `__CAPBRIDGE_SECRET[NAME]__`: what a trace holds instead of a secret.
pub fn secret_placeholder(name: &str) -> String {
    format!("__CAPBRIDGE_SECRET[{name}]__")
}

impl Trace {
    /// Replaces every occurrence of each secret value, anywhere in the trace (a component may
    /// echo what it read), with its placeholder.
    pub(crate) fn redact(&mut self, secrets: &[(String, String)]) {
        let secrets: Vec<&(String, String)> = secrets
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .collect();
        if secrets.is_empty() {
            return;
        }
        let walk = |value: &mut Value| redact_strings(value, &secrets);
        walk(&mut self.args);
        for call in &mut self.host_calls {
            for arg in call.args.values_mut() {
                walk(arg);
            }
            if let Outcome::Result(v) = &mut call.outcome {
                walk(v);
            }
            if let Outcome::Trap(text) = &mut call.outcome {
                *text = redact_text(text, &secrets);
            }
        }
        match &mut self.outcome {
            Outcome::Result(v) => walk(v),
            Outcome::Trap(text) => *text = redact_text(text, &secrets),
        }
    }
}

fn redact_strings(value: &mut Value, secrets: &[&(String, String)]) {
    use base64::Engine as _;
    match value {
        Value::String(text) => *text = redact_text(text, secrets),
        Value::Array(items) => items.iter_mut().for_each(|v| redact_strings(v, secrets)),
        // Bytes that are not UTF-8 are searched as bytes.
        Value::Object(fields) if fields.len() == 1 && fields.contains_key("base64") => {
            let engine = base64::engine::general_purpose::STANDARD;
            if let Some(Ok(bytes)) = fields["base64"].as_str().map(|b| engine.decode(b)) {
                let redacted = secrets.iter().fold(bytes, |bytes, (name, value)| {
                    replace_bytes(
                        &bytes,
                        value.as_bytes(),
                        secret_placeholder(name).as_bytes(),
                    )
                });
                fields.insert("base64".into(), Value::String(engine.encode(redacted)));
            }
        }
        Value::Object(fields) => fields.values_mut().for_each(|v| redact_strings(v, secrets)),
        _ => {}
    }
}

fn replace_bytes(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

fn redact_text(text: &str, secrets: &[&(String, String)]) -> String {
    secrets
        .iter()
        .fold(text.to_string(), |text, (name, value)| {
            text.replace(value.as_str(), &secret_placeholder(name))
        })
}

/// What a component needs to record: its interposed link and its pass-through.
pub(crate) struct Recorder {
    interposed: InstancePre<HostState>,
    passthrough: InstancePre<HostState>,
    exports: HashMap<(String, String), (String, String)>,
}

impl Recorder {
    /// `linker` is the component's ordinary (granted) linker; the pass-through links to it.
    pub(crate) fn new(
        engine: &Engine,
        component: &Component,
        wasm: &[u8],
        linker: &wasmtime::component::Linker<HostState>,
        compile: impl FnOnce(&[u8]) -> anyhow::Result<Component>,
    ) -> anyhow::Result<Self> {
        let generated = passthrough::generate(wasm)?;
        let passthrough = linker.instantiate_pre(&compile(&generated.wasm)?)?;
        let interposed = interpose::linker(engine, component)?.instantiate_pre(component)?;
        Ok(Self {
            interposed,
            passthrough,
            exports: generated.exports,
        })
    }

    pub(crate) fn instance_pre(&self) -> &InstancePre<HostState> {
        &self.interposed
    }

    /// Starts recording in `store`: instantiates the pass-through there.
    pub(crate) async fn start(&self, store: &mut Store<HostState>) -> anyhow::Result<()> {
        // Instantiating runs no guest code for long; the call sets its own deadline after.
        store.epoch_deadline_callback(|_| Ok(wasmtime::UpdateDeadline::Yield(1)));
        store.set_epoch_deadline(1);
        let instance = self.passthrough.instantiate_async(&mut *store).await?;
        let mut forwards = HashMap::new();
        for (key, (interface, export)) in &self.exports {
            let func = instance
                .get_export_index(&mut *store, None, interface)
                .and_then(|i| instance.get_export_index(&mut *store, Some(&i), export))
                .and_then(|i| instance.get_func(&mut *store, i))
                .ok_or_else(|| {
                    anyhow::anyhow!("pass-through export {interface}#{export} missing")
                })?;
            forwards.insert(key.clone(), func);
        }
        store.data_mut().replay = Some(Session::record(forwards, budget()));
        Ok(())
    }
}

/// The caps a recording starts with.
pub(crate) fn budget() -> value::Budget {
    value::Budget {
        per_value: MAX_VALUE_BYTES,
        remaining: MAX_TRACE_BYTES,
    }
}

/// The caps a trace was recorded with.
pub(crate) fn budget_of(trace: &Trace) -> value::Budget {
    value::Budget {
        per_value: trace.max_value_bytes,
        remaining: trace.max_trace_bytes,
    }
}

/// The interposed link of a component for replay.
pub(crate) fn replay_instance_pre(
    engine: &Engine,
    component: &Component,
) -> anyhow::Result<InstancePre<HostState>> {
    Ok(interpose::linker(engine, component)?.instantiate_pre(component)?)
}
