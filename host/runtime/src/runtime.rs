//! Discovery, loading and invocation: the API the rest of capbridge uses.
//!
//! Components are the `*.wasm` files in the components directory; each needs a policy at
//! `<policy dir>/<id>.toml`. A component that fails to load (no policy, bad policy, an import
//! its policy does not grant, not a component) is listed with the reason and the others load.
//!
//! A call gets a fresh instance by default (instantiated from a pre-linked `InstancePre` and
//! dropped afterwards) so nothing leaks from one call to the next; a policy with
//! `instance = "persistent"` keeps one instance and serialises its calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capbridge_policy::{InstanceMode, Policy};
use serde::Serialize;
use serde_json::Value;
use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};
use wasmtime::component::{Component, ComponentExportIndex, Instance, InstancePre, Val};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

use crate::cache::{CacheOutcome, CompileCache};
use crate::caps::awake::AwakeService;
use crate::caps::dialog::{DialogService, Picker};
use crate::caps::events::EventBus;
use crate::caps::Services;
use crate::engine::{new_engine, EpochTicker};
use crate::linker::{check_imports, granted_linker};
use crate::output::CapturedOutput;
use crate::recorder::HostCall;
use crate::state::{Determinism, HostState};
use crate::values::{self, json_to_val, val_to_json};

/// Where the runtime finds components, policies and its compile cache.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub components_dir: PathBuf,
    pub policy_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// Fixed clocks and randomness for every store (replay); `None` uses the real ones.
    pub determinism: Option<Determinism>,
    /// Where native pickers come from ([`Picker::from_env`]: the desktop portal when a display
    /// is present, none when headless).
    pub picker: Picker,
}

/// Progress while loading, for a caller to show.
#[derive(Clone, Debug)]
pub enum LoadEvent<'a> {
    /// A component is being compiled (not found in the cache); `index` counts from 1.
    Compiling {
        component: &'a str,
        index: usize,
        total: usize,
    },
    Loaded {
        component: &'a str,
        cached: bool,
    },
    Failed {
        component: &'a str,
        reason: &'a str,
    },
}

/// Whether a component is available, and if not, why.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ComponentStatus {
    Loaded,
    Failed { reason: String },
}

/// What `component list` and the command registry show about a component.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentInfo {
    pub id: String,
    pub wasm_path: PathBuf,
    pub policy_path: PathBuf,
    pub status: ComponentStatus,
    /// Everything the component imports, with versions (empty if it could not be read).
    pub imports: Vec<String>,
    pub exports: Vec<ExportInfo>,
    /// The policy, when it was read and is valid.
    #[serde(skip)]
    pub policy: Option<Arc<Policy>>,
}

/// One exported function and the JSON forms of its arguments and result.
#[derive(Clone, Debug, Serialize)]
pub struct ExportInfo {
    /// How to call it: `reverse` for a function of the world, `api.reverse` for one in an
    /// exported interface named `…/api`.
    pub name: String,
    /// `reverse(text: string) -> string`
    pub signature: String,
    /// JSON Schema of the arguments object; `None` when [`Self::unsupported`] says why not.
    pub params_schema: Option<Value>,
    pub result_schema: Option<Value>,
    /// The function returns a WIT `result`: an `{"err": …}` value is the function's own error.
    pub fallible: bool,
    /// Why this function cannot be called with JSON (it takes or returns a resource, …).
    pub unsupported: Option<String>,
}

/// Per-call settings.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// A deadline shorter than the policy's `limits.deadline-ms`; longer ones are cut to it.
    pub deadline: Option<Duration>,
    /// Record every host import call (see [`crate::recorder`]).
    pub record: bool,
    /// The contract session the call is made for: awake holds are counted against it, and what
    /// it picked is mounted. `None` outside the contract (CLI, tests, benchmarks).
    pub session: Option<u64>,
}

/// What a successful call produced.
#[derive(Clone, Debug, Serialize)]
pub struct CallOutcome {
    pub result: Value,
    #[serde(skip)]
    pub stdout: CapturedOutput,
    #[serde(skip)]
    pub stderr: CapturedOutput,
    pub host_calls: Vec<HostCall>,
    pub elapsed: Duration,
}

/// Why a call did not produce a result. Messages are safe to show to the caller.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no component named `{0}`")]
    UnknownComponent(String),
    #[error("component `{component}` is not loaded: {reason}")]
    NotLoaded { component: String, reason: String },
    #[error("component `{component}` has no exported function `{function}`{hint}")]
    UnknownFunction {
        component: String,
        function: String,
        hint: String,
    },
    #[error("`{function}` cannot be called with JSON: {reason}")]
    Unsupported { function: String, reason: String },
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    #[error("the call did not finish within its deadline of {0:?}")]
    Timeout(Duration),
    #[error("the component trapped: {0}")]
    Trap(String),
    #[error("the host could not run the call: {0}")]
    Host(String),
}

/// No component may take the host's own name: it is the `source` of the bridge's events.
pub const RESERVED_ID: &str = "capbridge";

/// The component runtime: one engine, every discovered component, the event bus.
pub struct Runtime {
    engine: Engine,
    config: RuntimeConfig,
    cache: CompileCache,
    events: EventBus,
    services: Services,
    components: BTreeMap<String, Entry>,
    _ticker: EpochTicker,
}

struct Entry {
    info: ComponentInfo,
    loaded: Option<Arc<Loaded>>,
}

struct Loaded {
    policy: Arc<Policy>,
    pre: InstancePre<HostState>,
    functions: BTreeMap<String, Function>,
    persistent: Option<tokio::sync::Mutex<Option<Live>>>,
}

struct Function {
    index: ComponentExportIndex,
    signature: Signature,
    unsupported: Option<String>,
}

/// The WIT types of an exported function.
#[derive(Clone, Debug)]
pub struct Signature {
    pub params: Vec<(String, Type)>,
    pub result: Option<Type>,
}

/// The one instance of a persistent component.
struct Live {
    store: Store<HostState>,
    instance: Instance,
}

impl Runtime {
    /// Creates the engine and an empty runtime; [`Self::load_all`] finds the components.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let engine = new_engine()?;
        let ticker = EpochTicker::start(&engine)?;
        let events = EventBus::default();
        let services = Services {
            awake: AwakeService::new(events.clone()),
            dialog: DialogService::new(config.picker.clone()),
        };
        Ok(Self {
            cache: CompileCache::new(&config.cache_dir),
            engine,
            config,
            events,
            services,
            components: BTreeMap::new(),
            _ticker: ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// The host-wide services (sleep prevention, picks) the capbridge interfaces act on.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Every discovered component, loaded or not, by id.
    pub fn components(&self) -> impl Iterator<Item = &ComponentInfo> {
        self.components.values().map(|e| &e.info)
    }

    pub fn component(&self, id: &str) -> Option<&ComponentInfo> {
        self.components.get(id).map(|e| &e.info)
    }

    /// The parameter and result types of a loaded component's exported function.
    pub fn signature(&self, component: &str, function: &str) -> Option<&Signature> {
        let loaded = self.components.get(component)?.loaded.as_ref()?;
        Some(&loaded.functions.get(function)?.signature)
    }

    /// Policy files in the policy directory with no component of the same id.
    pub fn orphan_policies(&self) -> Vec<PathBuf> {
        let mut orphans = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.config.policy_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "toml")
                    && path
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .is_some_and(|id| !self.components.contains_key(id))
                {
                    orphans.push(path);
                }
            }
        }
        orphans.sort();
        orphans
    }

    /// Discovers and loads every component in the components directory, replacing what was
    /// loaded before. One component's failure never stops the others.
    pub fn load_all(&mut self, progress: &mut dyn FnMut(LoadEvent<'_>)) -> anyhow::Result<()> {
        let found = discover(&self.config.components_dir)?;
        let total = found.len();
        let mut components = BTreeMap::new();
        for (i, (id, wasm_path)) in found.into_iter().enumerate() {
            let entry = self.load_one(&id, wasm_path, i + 1, total, progress);
            components.insert(id, entry);
        }
        self.components = components;
        Ok(())
    }

    fn load_one(
        &self,
        id: &str,
        wasm_path: PathBuf,
        index: usize,
        total: usize,
        progress: &mut dyn FnMut(LoadEvent<'_>),
    ) -> Entry {
        let policy_path = self.config.policy_dir.join(format!("{id}.toml"));
        let mut info = ComponentInfo {
            id: id.to_string(),
            wasm_path,
            policy_path,
            status: ComponentStatus::Loaded,
            imports: Vec::new(),
            exports: Vec::new(),
            policy: None,
        };
        match self.try_load(&mut info, index, total, progress) {
            Ok((loaded, cached)) => {
                progress(LoadEvent::Loaded {
                    component: id,
                    cached,
                });
                Entry {
                    info,
                    loaded: Some(Arc::new(loaded)),
                }
            }
            Err(reason) => {
                progress(LoadEvent::Failed {
                    component: id,
                    reason: &reason,
                });
                tracing::warn!(component = id, "not loaded: {reason}");
                info.status = ComponentStatus::Failed { reason };
                Entry { info, loaded: None }
            }
        }
    }

    fn try_load(
        &self,
        info: &mut ComponentInfo,
        index: usize,
        total: usize,
        progress: &mut dyn FnMut(LoadEvent<'_>),
    ) -> Result<(Loaded, bool), String> {
        let id = info.id.clone();
        if !is_valid_id(&id) {
            return Err(format!(
                "`{id}` is not a valid component id (lowercase letters, digits and `-`, starting with a letter); rename {}",
                info.wasm_path.display()
            ));
        }
        if id == RESERVED_ID {
            return Err(format!(
                "`{RESERVED_ID}` is the host's own name (the source of its events); rename {}",
                info.wasm_path.display()
            ));
        }
        if !info.policy_path.exists() {
            return Err(format!(
                "no policy file: a component loads only with a policy at {} saying what it may use",
                info.policy_path.display()
            ));
        }
        let policy = Arc::new(Policy::load(&id, &info.policy_path).map_err(|e| e.to_string())?);
        info.policy = Some(policy.clone());
        prepare_directories(&policy)?;

        let wasm = std::fs::read(&info.wasm_path)
            .map_err(|e| format!("cannot read {}: {e}", info.wasm_path.display()))?;
        let (component, outcome) = self
            .cache
            .load(&self.engine, &wasm, || {
                progress(LoadEvent::Compiling {
                    component: &id,
                    index,
                    total,
                })
            })
            .map_err(|e| {
                format!(
                    "{} is not a loadable WebAssembly component: {e:#}",
                    info.wasm_path.display()
                )
            })?;

        let ty = component.component_type();
        info.imports = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let functions = exported_functions(&self.engine, &component);
        info.exports = functions
            .iter()
            .map(|(name, (f, unsupported))| export_info(name, f, unsupported.clone()))
            .collect();

        check_imports(&policy, info.imports.iter().map(String::as_str))
            .map_err(|e| e.to_string())?;
        let linker =
            granted_linker(&self.engine, &policy).map_err(|e| format!("linking: {e:#}"))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| format!("cannot link against {}: {e:#}", policy.source.display()))?;

        let functions = functions
            .into_iter()
            .filter_map(|(name, (f, unsupported))| {
                let index = lookup_export(&component, &name)?;
                let params = f.func.params().map(|(n, t)| (n.to_string(), t)).collect();
                let result = f.func.results().next();
                Some((
                    name,
                    Function {
                        index,
                        signature: Signature { params, result },
                        unsupported,
                    },
                ))
            })
            .collect();
        let persistent =
            (policy.instance == InstanceMode::Persistent).then(|| tokio::sync::Mutex::new(None));
        Ok((
            Loaded {
                policy,
                pre,
                functions,
                persistent,
            },
            outcome == CacheOutcome::Hit,
        ))
    }

    /// Calls `function` of `component` with JSON `args` (an object keyed by parameter name).
    pub async fn call(
        &self,
        component: &str,
        function: &str,
        args: &Value,
        options: &CallOptions,
    ) -> Result<CallOutcome, CallError> {
        let entry = self
            .components
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
        let deadline = options.deadline.map_or(loaded.policy.limits.deadline, |d| {
            d.min(loaded.policy.limits.deadline)
        });

        if options.record && !crate::recorder::is_installed() {
            return Err(CallError::Host(
                "recording host calls needs capbridge_runtime::recorder::layer() in the tracing subscriber".into(),
            ));
        }
        let started = Instant::now();
        let run = self.run(&loaded, func, params, deadline, options.session);
        let (outcome, host_calls) = if options.record {
            crate::recorder::record(run).await
        } else {
            (run.await, Vec::new())
        };
        let (result, stdout, stderr) = outcome?;
        let result = match result {
            Some(val) => val_to_json(&val).map_err(|e| CallError::Unsupported {
                function: function.to_string(),
                reason: e.to_string(),
            })?,
            None => Value::Null,
        };
        Ok(CallOutcome {
            result,
            stdout,
            stderr,
            host_calls,
            elapsed: started.elapsed(),
        })
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

    fn new_store(
        &self,
        loaded: &Loaded,
        session: Option<u64>,
    ) -> Result<Store<HostState>, CallError> {
        let state = HostState::new(
            loaded.policy.clone(),
            self.events.clone(),
            self.services.clone(),
            session,
            self.config.determinism,
        )
        .map_err(|e| CallError::Host(format!("{e:#}")))?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        Ok(store)
    }
}

/// Instantiates (unless `instance` is given) and calls, all within `deadline`.
async fn call_in_store(
    store: &mut Store<HostState>,
    instance: Option<Instance>,
    pre: &InstancePre<HostState>,
    func: &Function,
    params: &[Val],
    deadline: Duration,
) -> Result<(Option<Val>, Instance), CallError> {
    let deadline_at = Instant::now() + deadline;
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
    match tokio::time::timeout(deadline, call).await {
        Err(_elapsed) => Err(CallError::Timeout(deadline)),
        Ok(Ok(done)) => Ok(done),
        Ok(Err(error)) => Err(match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Timeout(deadline),
            Some(trap) => CallError::Trap(trap.to_string()),
            None => CallError::Trap(format!("{error:#}")),
        }),
    }
}

/// Turns the JSON arguments object into positional parameters.
fn params_from_json(params: &[(String, Type)], args: &Value) -> Result<Vec<Val>, CallError> {
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

/// `*.wasm` files in `dir`, by id (file stem), sorted.
fn discover(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(anyhow::anyhow!(
                "cannot read components directory {}: {e}",
                dir.display()
            ))
        }
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_string(), p)))
        .collect();
    found.sort();
    Ok(found)
}

pub(crate) fn is_valid_id(id: &str) -> bool {
    id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Creates granted directories marked `create = true`; every granted directory must then exist.
fn prepare_directories(policy: &Policy) -> Result<(), String> {
    for dir in &policy.directories {
        if dir.create && !dir.host.exists() {
            std::fs::create_dir_all(&dir.host).map_err(|e| {
                format!(
                    "cannot create granted directory {}: {e}",
                    dir.host.display()
                )
            })?;
        }
        if !dir.host.is_dir() {
            return Err(format!(
                "granted directory {} (guest path {}) does not exist; create it or set `create = true` in {}",
                dir.host.display(),
                dir.guest,
                policy.source.display()
            ));
        }
    }
    Ok(())
}

struct FoundFunction {
    func: ComponentFunc,
}

/// Every exported function, top-level and inside exported interfaces, with the reason it cannot
/// be called with JSON, if any.
fn exported_functions(
    engine: &Engine,
    component: &Component,
) -> Vec<(String, (FoundFunction, Option<String>))> {
    let mut out = Vec::new();
    let ty = component.component_type();
    for (name, export) in ty.exports(engine) {
        match export.ty {
            ComponentItem::ComponentFunc(func) => out.push((name.to_string(), func)),
            ComponentItem::ComponentInstance(instance) => {
                let short = interface_short_name(name);
                for (fname, item) in instance.exports(engine) {
                    if let ComponentItem::ComponentFunc(func) = item.ty {
                        out.push((format!("{short}.{fname}"), func));
                    }
                }
            }
            _ => {}
        }
    }
    out.into_iter()
        .map(|(name, func)| {
            let unsupported = unsupported_reason(&name, &func);
            (name, (FoundFunction { func }, unsupported))
        })
        .collect()
}

fn unsupported_reason(name: &str, func: &ComponentFunc) -> Option<String> {
    if name.contains('[') {
        return Some("it is a resource constructor or method".into());
    }
    let params = values::object_schema(func.params().map(|(n, t)| (n.to_string(), t)));
    let result = func
        .results()
        .map(|t| values::schema(&t))
        .collect::<Result<Vec<_>, _>>();
    params.err().or(result.err()).map(|e| e.to_string())
}

/// `capbridge:echo/api@0.1.0` → `api`.
fn interface_short_name(name: &str) -> &str {
    let without_version = name.split('@').next().unwrap_or(name);
    without_version
        .rsplit('/')
        .next()
        .unwrap_or(without_version)
}

fn lookup_export(component: &Component, name: &str) -> Option<ComponentExportIndex> {
    if let Some(index) = component.get_export_index(None, name) {
        return Some(index);
    }
    let (short, fname) = name.split_once('.')?;
    let ty = component.component_type();
    let engine = component.engine();
    let (iface, _) = ty
        .exports(engine)
        .find(|(n, _)| interface_short_name(n) == short)?;
    let parent = component.get_export_index(None, iface)?;
    component.get_export_index(Some(&parent), fname)
}

fn export_info(name: &str, found: &FoundFunction, unsupported: Option<String>) -> ExportInfo {
    let params: Vec<String> = found
        .func
        .params()
        .map(|(n, t)| format!("{n}: {}", values::type_name(&t)))
        .collect();
    let result = found.func.results().next();
    let signature = match &result {
        Some(t) => format!("{name}({}) -> {}", params.join(", "), values::type_name(t)),
        None => format!("{name}({})", params.join(", ")),
    };
    let fallible = matches!(result, Some(Type::Result(_)));
    let (params_schema, result_schema) = if unsupported.is_some() {
        (None, None)
    } else {
        (
            values::object_schema(found.func.params().map(|(n, t)| (n.to_string(), t))).ok(),
            Some(
                result
                    .map_or(Ok(serde_json::json!({ "type": "null" })), |t| {
                        values::schema(&t)
                    })
                    .unwrap_or(Value::Null),
            ),
        )
    };
    ExportInfo {
        name: name.to_string(),
        signature,
        params_schema,
        result_schema,
        fallible,
        unsupported,
    }
}
