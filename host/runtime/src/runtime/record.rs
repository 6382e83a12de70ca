//! Recording a call into a trace, and replaying a trace against a component
//! ([`crate::replay`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use wasmtime::component::Val;

use super::call::{call_in_store, params_from_json, result_to_json};
use super::exports::{exported_functions, lookup_export};
use super::{CallError, CallOptions, CallOutcome, Function, Loaded, Runtime, Signature};
use crate::replay::{self, Divergence, Outcome, Recorder, Trace, TracedComponent};

/// How a replay went.
#[derive(Debug)]
pub struct ReplayReport {
    /// Host calls answered from the trace.
    pub matched: usize,
    /// `None`: the component made exactly the trace's host calls and returned its result.
    pub failure: Option<ReplayFailure>,
}

#[derive(Debug)]
pub enum ReplayFailure {
    /// The component's host calls departed from the trace.
    Divergence(Divergence),
    /// Same host calls, different result.
    Outcome { expected: Outcome, actual: Outcome },
}

impl std::fmt::Display for ReplayFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayFailure::Divergence(d) => write!(f, "{d}"),
            ReplayFailure::Outcome { expected, actual } => write!(
                f,
                "the host calls match, the outcome does not:\n  expected: {}\n  actual:   {}",
                serde_json::to_string(expected).unwrap_or_default(),
                serde_json::to_string(actual).unwrap_or_default()
            ),
        }
    }
}

impl Runtime {
    /// Calls like [`Runtime::call`], recording a trace of the call and every host call it
    /// made. A trap or a deadline ends up in the trace (and the outcome), not as an error.
    pub async fn record(
        &self,
        component: &str,
        function: &str,
        args: &Value,
        options: &CallOptions,
    ) -> Result<(Trace, Result<CallOutcome, CallError>), CallError> {
        let (loaded, params) = self.prepare(component, function, args)?;
        let func = &loaded.functions[function];
        self.record_prepared(&loaded, component, function, func, params, args, options)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn record_prepared(
        &self,
        loaded: &Loaded,
        component: &str,
        function: &str,
        func: &Function,
        params: Vec<Val>,
        args: &Value,
        options: &CallOptions,
    ) -> Result<(Trace, Result<CallOutcome, CallError>), CallError> {
        if loaded.persistent.is_some() {
            return Err(CallError::Unsupported {
                function: function.to_string(),
                reason: "recording: the component keeps one instance between calls \
                         (`instance = \"persistent\"`), and a trace of one call cannot hold what \
                         earlier calls left in it"
                    .into(),
            });
        }
        let recorder = self.recorder(loaded).map_err(CallError::Host)?;
        let mut store = self.new_store(loaded, options.session)?;
        recorder
            .start(&mut store)
            .await
            .map_err(|e| CallError::Host(format!("starting the recording: {e:#}")))?;
        let deadline = loaded.deadline(options);
        let started = Instant::now();
        let result = call_in_store(
            &mut store,
            None,
            recorder.instance_pre(),
            func,
            &params,
            deadline,
        )
        .await;
        let session = store
            .data_mut()
            .replay
            .take()
            .ok_or_else(|| CallError::Host("the recording session vanished".into()))?;
        let (stdout, stderr) = (store.data().stdout.take(), store.data().stderr.take());
        let outcome = result.and_then(|(val, _)| {
            Ok(CallOutcome {
                result: result_to_json(function, val)?,
                stdout,
                stderr,
                elapsed: started.elapsed(),
            })
        });
        let mut trace = Trace {
            format: replay::FORMAT.to_string(),
            component: TracedComponent {
                id: component.to_string(),
                sha256: loaded.sha256.clone(),
            },
            max_value_bytes: replay::MAX_VALUE_BYTES,
            max_trace_bytes: replay::MAX_TRACE_BYTES,
            limits: replay::TraceLimits {
                deadline_ms: loaded.policy.limits.deadline.as_millis() as u64,
                memory_mib: loaded.policy.limits.memory_bytes >> 20,
            },
            function: function.to_string(),
            args: args.clone(),
            host_calls: session.into_calls(),
            outcome: match &outcome {
                Ok(done) => Outcome::Result(done.result.clone()),
                Err(error) => Outcome::Trap(error.to_string()),
            },
        };
        trace.redact(&secrets_of(&loaded.policy));
        Ok((trace, outcome))
    }

    /// The component's recorder, made at its first recording.
    pub(super) fn recorder(&self, loaded: &Loaded) -> Result<Arc<Recorder>, String> {
        loaded
            .recorder
            .get_or_init(|| {
                Recorder::new(
                    &self.engine,
                    loaded.pre.component(),
                    &loaded.wasm,
                    &loaded.linker,
                    |bytes| Ok(self.cache.load(&self.engine, bytes, || {})?.0),
                )
                .map(Arc::new)
                .map_err(|e| format!("cannot record this component: {e:#}"))
            })
            .clone()
    }

    /// Runs the component at `wasm` with every host call answered from `trace`, nothing real
    /// touched, and says where it departed from the trace, if it did.
    pub async fn replay(&self, wasm: &Path, trace: &Trace) -> anyhow::Result<ReplayReport> {
        if trace.format != replay::FORMAT {
            anyhow::bail!(
                "trace format `{}` is not `{}`, the one this capbridge reads",
                trace.format,
                replay::FORMAT
            );
        }
        let bytes = std::fs::read(wasm)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", wasm.display()))?;
        let (component, _) = self.cache.load(&self.engine, &bytes, || {})?;
        let (name, (found, _)) = exported_functions(&self.engine, &component)
            .into_iter()
            .find(|(name, _)| *name == trace.function)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} exports no function `{}` (the trace's)",
                    wasm.display(),
                    trace.function
                )
            })?;
        let func = Function {
            index: lookup_export(&component, &name)
                .ok_or_else(|| anyhow::anyhow!("export `{name}` not found"))?,
            signature: Signature {
                params: found
                    .func
                    .params()
                    .map(|(n, t)| (n.to_string(), t))
                    .collect(),
                result: found.func.results().next(),
            },
            unsupported: None,
        };
        let params = params_from_json(&func.signature.params, &trace.args)?;
        let pre = replay::replay_instance_pre(&self.engine, &component)?;
        // Nothing is granted (every import is answered from the trace); the limits are the
        // recording's.
        let policy = Arc::new(crate::caps::baseline_policy(
            &trace.component.id,
            &format!(
                "[limits]\ndeadline-ms = {}\nmemory-mib = {}\n",
                trace.limits.deadline_ms, trace.limits.memory_mib
            ),
        )?);
        let background = super::Background::new(
            self.engine.clone(),
            pre.clone(),
            Default::default(),
            policy.clone(),
            self.events.clone(),
            self.services.granted_to(&policy),
            self.audit.clone(),
        );
        let mut store = background.store(None)?;
        store.data_mut().replay = Some(replay::Session::replay(
            trace.host_calls.clone(),
            replay::budget_of(trace),
        ));
        let result = call_in_store(
            &mut store,
            None,
            &pre,
            &func,
            &params,
            policy.limits.deadline,
        )
        .await;
        let session = store
            .data_mut()
            .replay
            .take()
            .ok_or_else(|| anyhow::anyhow!("the replay session vanished"))?;
        let matched = session.answered();
        if let Some(divergence) = session.divergence.clone() {
            return Ok(ReplayReport {
                matched,
                failure: Some(ReplayFailure::Divergence(divergence)),
            });
        }
        let actual = match result {
            Ok((val, _)) => match result_to_json(&trace.function, val) {
                Ok(json) => Outcome::Result(json),
                Err(e) => Outcome::Trap(e.to_string()),
            },
            Err(error) => Outcome::Trap(error.to_string()),
        };
        let unmade = session.into_calls();
        if let Some(expected) = unmade.into_iter().next() {
            return Ok(ReplayReport {
                matched,
                failure: Some(ReplayFailure::Divergence(Divergence {
                    at: matched,
                    expected: Some(expected),
                    actual: None,
                    trap: match actual {
                        Outcome::Trap(trap) => Some(trap),
                        Outcome::Result(_) => None,
                    },
                })),
            });
        }
        // Two traps after the same host calls are the same outcome (their texts carry
        // backtraces that need not match word for word).
        let same = match (&actual, &trace.outcome) {
            (Outcome::Trap(_), Outcome::Trap(_)) => true,
            (actual, expected) => actual == expected,
        };
        let failure = (!same).then(|| ReplayFailure::Outcome {
            expected: trace.outcome.clone(),
            actual,
        });
        Ok(ReplayReport { matched, failure })
    }
}

/// The granted environment variables whose names look secret, with their values now: a trace
/// holds placeholders instead.
fn secrets_of(policy: &capbridge_policy::Policy) -> Vec<(String, String)> {
    policy
        .environment
        .iter()
        .filter(|name| capbridge_policy::looks_secret(name))
        .map(|name| (name.clone(), std::env::var(name).unwrap_or_default()))
        .collect()
}
