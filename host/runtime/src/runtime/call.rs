//! Invocation: JSON arguments in, a fresh (or the persistent) instance, limits, JSON out.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wasmtime::component::types::Type;
use wasmtime::component::{Instance, InstancePre, Val};
use wasmtime::{Store, Trap, UpdateDeadline};

use super::{
    CallError, CallOptions, CallOutcome, ComponentStatus, Function, Live, Loaded, Runtime,
};
use crate::output::CapturedOutput;
use crate::state::HostState;
use crate::values::{self, json_to_val, val_to_json};

impl Runtime {
    /// Calls `function` of `component` with JSON `args` (an object keyed by parameter name).
    /// With `record_dir` in the config, the call is also recorded there
    /// (`<component>/<time>-<function>-<random>.trace.json`), unless the component is persistent.
    pub async fn call(
        &self,
        component: &str,
        function: &str,
        args: &Value,
        options: &CallOptions,
    ) -> Result<CallOutcome, CallError> {
        let outcome = self
            .call_unaudited(component, function, args, options)
            .await;
        let (result, detail) = match &outcome {
            Ok(_) => (
                crate::audit::Outcome::Allowed,
                json!({ "function": function }),
            ),
            Err(error) => (
                crate::audit::Outcome::Failed,
                json!({ "function": function, "error": error.kind() }),
            ),
        };
        self.audit.record(
            "component.called",
            Some(component),
            options.session,
            result,
            detail,
        );
        outcome
    }

    async fn call_unaudited(
        &self,
        component: &str,
        function: &str,
        args: &Value,
        options: &CallOptions,
    ) -> Result<CallOutcome, CallError> {
        let (loaded, params) = self.prepare(component, function, args)?;
        let func = &loaded.functions[function];
        if let (Some(dir), None) = (&self.config.record_dir, &loaded.persistent) {
            // A component that cannot be recorded still runs, unrecorded.
            match self.recorder(&loaded) {
                Ok(_) => {
                    let (trace, outcome) = self
                        .record_prepared(&loaded, component, function, func, params, args, options)
                        .await?;
                    if let Err(error) = crate::replay::write_trace(dir, &trace) {
                        tracing::warn!(component, function, "trace not written: {error:#}");
                    }
                    return outcome;
                }
                Err(why) => tracing::warn!(component, function, "not recorded: {why}"),
            }
        }
        let deadline = loaded.deadline(options);
        let started = Instant::now();
        let (result, stdout, stderr) = self
            .run(&loaded, func, params, deadline, options.session)
            .await?;
        Ok(CallOutcome {
            result: result_to_json(function, result)?,
            stdout,
            stderr,
            elapsed: started.elapsed(),
        })
    }

    /// The loaded component (as it is now: a reload does not affect this call) and the
    /// arguments as WIT values; its `functions` has `function`.
    pub(super) fn prepare(
        &self,
        component: &str,
        function: &str,
        args: &Value,
    ) -> Result<(std::sync::Arc<Loaded>, Vec<Val>), CallError> {
        let snapshot = self.snapshot();
        let entry = snapshot
            .get(component)
            .ok_or_else(|| CallError::UnknownComponent(component.to_string()))?;
        let loaded = match (&entry.loaded, &entry.info.status) {
            (Some(loaded), _) => loaded.clone(),
            (None, ComponentStatus::Failed { reason }) => {
                return Err(CallError::NotLoaded {
                    component: component.to_string(),
                    reason: reason.clone(),
                })
            }
            (None, ComponentStatus::Loaded) => {
                unreachable!("a loaded component always has its instance-pre")
            }
        };
        let func = loaded
            .functions
            .get(function)
            .ok_or_else(|| CallError::UnknownFunction {
                component: component.to_string(),
                function: function.to_string(),
                hint: format!(
                    " (it exports: {})",
                    loaded
                        .functions
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        if let Some(reason) = &func.unsupported {
            return Err(CallError::Unsupported {
                function: function.to_string(),
                reason: reason.clone(),
            });
        }
        let params = params_from_json(&func.signature.params, args)?;
        Ok((loaded.clone(), params))
    }

    async fn run(
        &self,
        loaded: &Loaded,
        func: &Function,
        params: Vec<Val>,
        deadline: Duration,
        session: Option<u64>,
    ) -> Result<(Option<Val>, CapturedOutput, CapturedOutput), CallError> {
        match &loaded.persistent {
            None => {
                let mut store = self.new_store(loaded, session)?;
                let result =
                    call_in_store(&mut store, None, &loaded.pre, func, &params, deadline).await;
                let (stdout, stderr) = (store.data().stdout.take(), store.data().stderr.take());
                result.map(|(val, _)| (val, stdout, stderr))
            }
            Some(slot) => {
                let mut slot = slot.lock().await;
                let (mut store, instance) = match slot.take() {
                    Some(live) => (live.store, Some(live.instance)),
                    None => (self.new_store(loaded, session)?, None),
                };
                // The instance outlives the call; the session is this call's (picks are
                // mounted only into fresh instances).
                store.data_mut().grants.session = session;
                let result =
                    call_in_store(&mut store, instance, &loaded.pre, func, &params, deadline).await;
                let (stdout, stderr) = (store.data().stdout.take(), store.data().stderr.take());
                // After a trap or a deadline the instance may be mid-way through anything: the
                // next call starts a new one.
                match result {
                    Ok((val, instance)) => {
                        *slot = Some(Live { store, instance });
                        Ok((val, stdout, stderr))
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    pub(super) fn new_store(
        &self,
        loaded: &Loaded,
        session: Option<u64>,
    ) -> Result<Store<HostState>, CallError> {
        loaded
            .background
            .store(session)
            .map_err(|e| CallError::Host(format!("{e:#}")))
    }
}

/// Instantiates (unless `instance` is given) and calls, all within `deadline`.
pub(super) async fn call_in_store(
    store: &mut Store<HostState>,
    instance: Option<Instance>,
    pre: &InstancePre<HostState>,
    func: &Function,
    params: &[Val],
    deadline: Duration,
) -> Result<(Option<Val>, Instance), CallError> {
    let deadline_at = Instant::now() + deadline;
    store.data_mut().limits.memory_refused = false;
    // At every epoch tick the guest either stops (past the deadline) or yields, so that a busy
    // guest never starves the other tasks on its thread.
    store.epoch_deadline_callback(move |_| {
        Ok(if Instant::now() >= deadline_at {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Yield(1)
        })
    });
    store.set_epoch_deadline(1);
    let call = async {
        let instance = match instance {
            Some(instance) => instance,
            None => pre.instantiate_async(&mut *store).await?,
        };
        let f = instance
            .get_func(&mut *store, func.index)
            .ok_or_else(|| wasmtime::format_err!("export vanished from its instance"))?;
        let mut results = vec![Val::Bool(false); usize::from(func.signature.result.is_some())];
        f.call_async(&mut *store, params, &mut results).await?;
        Ok::<_, wasmtime::Error>((results.pop(), instance))
    };
    // The timeout also covers time spent inside host calls, where epochs do not reach.
    let outcome = tokio::time::timeout(deadline, call).await;
    let state = store.data();
    match outcome {
        Err(_elapsed) => Err(CallError::Timeout(deadline)),
        Ok(Ok(done)) => Ok(done),
        Ok(Err(error)) => Err(match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Timeout(deadline),
            // A guest refused memory usually aborts (`unreachable`); say what caused it.
            _ if state.limits.memory_refused => {
                let policy = &state.grants.policy;
                CallError::Trap(format!(
                    "the component reached its memory limit of {} MiB (`limits.memory-mib` in \
                     {}) and stopped ({})",
                    policy.limits.memory_bytes >> 20,
                    policy.source.display(),
                    error
                        .downcast_ref::<Trap>()
                        .map_or_else(|| format!("{error:#}"), ToString::to_string)
                ))
            }
            Some(trap) => CallError::Trap(trap.to_string()),
            None => CallError::Trap(format!("{error:#}")),
        }),
    }
}

/// The result as the contract's JSON (`null` for none).
pub(super) fn result_to_json(function: &str, result: Option<Val>) -> Result<Value, CallError> {
    match result {
        Some(val) => val_to_json(&val).map_err(|e| CallError::Unsupported {
            function: function.to_string(),
            reason: e.to_string(),
        }),
        None => Ok(Value::Null),
    }
}

/// Turns the JSON arguments object into positional parameters.
pub(super) fn params_from_json(
    params: &[(String, Type)],
    args: &Value,
) -> Result<Vec<Val>, CallError> {
    let empty = serde_json::Map::new();
    let object = match args {
        Value::Object(o) => o,
        Value::Null => &empty,
        other => {
            return Err(CallError::InvalidArguments(format!(
                "arguments must be a JSON object keyed by parameter name, not {}",
                match other {
                    Value::Array(_) => "an array",
                    Value::String(_) => "a string",
                    Value::Number(_) => "a number",
                    _ => "a boolean",
                }
            )))
        }
    };
    if let Some(unknown) = object.keys().find(|k| !params.iter().any(|(n, _)| n == *k)) {
        let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        return Err(CallError::InvalidArguments(format!(
            "unknown parameter `{unknown}` (parameters are: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    }
    params
        .iter()
        .map(|(name, ty)| match (object.get(name), ty) {
            (Some(v), ty) => {
                json_to_val(ty, v, name).map_err(|e| CallError::InvalidArguments(e.to_string()))
            }
            (None, Type::Option(_)) => Ok(Val::Option(None)),
            (None, ty) => Err(CallError::InvalidArguments(format!(
                "missing parameter `{name}` ({})",
                values::type_name(ty)
            ))),
        })
        .collect()
}
