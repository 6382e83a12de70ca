//! Discovery, loading and invocation: the API the rest of capbridge uses.
//!
//! Components are the `*.wasm` files in the components directory; each needs a policy at
//! `<policy dir>/<id>.toml`. A component that fails to load (no policy, bad policy, an import
//! its policy does not grant, not a component) is listed with the reason and the others load.
//!
//! A call gets a fresh instance by default (instantiated from a pre-linked `InstancePre` and
//! dropped afterwards) so nothing leaks from one call to the next; a policy with
//! `instance = "persistent"` keeps one instance and serialises its calls ([`call`]).
//!
//! The runtime is the one way in for the layers above: they call exports, ask what a component
//! may reach for a session ([`Runtime::paths`]), end sessions ([`Runtime::end_session`]) and stop
//! the host ([`Runtime::shutdown`]); the capabilities' services stay behind it.

mod background;
mod call;
mod exports;
mod record;
mod watch;

pub use background::{Background, Ended};
pub use record::{ReplayFailure, ReplayReport};
pub use watch::Watcher;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use capbridge_policy::{InstanceMode, Policy};
use serde::Serialize;
use serde_json::{json, Value};
use wasmtime::component::types::Type;
use wasmtime::component::{ComponentExportIndex, Instance, InstancePre, Linker};
use wasmtime::{Engine, Store};

use crate::approvals::Approvals;
use crate::audit::AuditLog;
use crate::cache::{CacheOutcome, CompileCache};
use crate::caps::dialog::Picker;
use crate::caps::events::EventBus;
use crate::caps::{GrantedPath, HostContext, PathOrigin, Services};
use crate::engine::{new_engine, EpochTicker};
use crate::linker::{check_imports, granted_linker};
use crate::output::CapturedOutput;
use crate::own_files::OwnFiles;
use crate::pins::Pins;
use crate::replay::Recorder;
use crate::state::HostState;
use exports::{export_info, exported_functions, lookup_export};

/// Where the runtime finds components, policies and its compile cache.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub components_dir: PathBuf,
    pub policy_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// Record every call made with [`Runtime::call`] into this directory, one trace file each
    /// (`capbridge serve --record DIR`); `None` records nothing.
    pub record_dir: Option<PathBuf>,
    /// Where native pickers come from ([`Picker::from_env`]: the desktop portal when a display
    /// is present, none when headless).
    pub picker: Picker,
    /// capbridge's own files and port beyond the three directories above (the config and data
    /// directories, the bridge's port), which no grant or pick may reach.
    pub own_files: OwnFiles,
    /// Where capbridge keeps its own state (whitelist rules, the audit log); out of every
    /// component's reach.
    pub state_dir: PathBuf,
    /// Keep the audit log (in `state_dir/audit`), entries kept this long
    /// ([`crate::audit::DEFAULT_RETENTION`]: 90 days); `None`: no audit log (the CLI's one-off
    /// commands; `capbridge serve` keeps one).
    pub audit_retention: Option<Duration>,
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

impl CallError {
    /// The error's kind in one word, for the audit log (whose entries hold no messages: a
    /// trap's text may quote what the component read).
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::UnknownComponent(_) => "unknown-component",
            CallError::NotLoaded { .. } => "not-loaded",
            CallError::UnknownFunction { .. } => "unknown-function",
            CallError::Unsupported { .. } => "unsupported",
            CallError::InvalidArguments(_) => "invalid-arguments",
            CallError::Timeout(_) => "timeout",
            CallError::Trap(_) => "trap",
            CallError::Host(_) => "host",
        }
    }
}

/// No component may take the host's own name: it is the `source` of the bridge's events.
pub const RESERVED_ID: &str = crate::caps::events::HOST_SOURCE;

/// The component runtime: one engine, every discovered component, the event bus.
pub struct Runtime {
    engine: Engine,
    config: RuntimeConfig,
    cache: CompileCache,
    events: EventBus,
    approvals: Approvals,
    audit: AuditLog,
    services: Services,
    own_files: OwnFiles,
    /// What is loaded now. A reload swaps in a new map; a call holds the `Loaded` it started
    /// with, so it finishes on the version it began on.
    components: std::sync::RwLock<Arc<BTreeMap<String, Entry>>>,
    /// Bumped by every (re)load, so the layers above know to refresh what they derive.
    generation: std::sync::atomic::AtomicU64,
    _ticker: EpochTicker,
}

#[derive(Clone)]
struct Entry {
    info: ComponentInfo,
    loaded: Option<Arc<Loaded>>,
    /// The SHA-256 of its `.wasm`, its policy and the lock file when it was loaded.
    fingerprint: String,
}

/// What a reload changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// New or changed, and it loaded.
    Loaded(String),
    /// New or changed, and it did not load (the reason).
    Refused(String, String),
    /// Gone from the components directory.
    Unloaded(String),
}

struct Loaded {
    policy: Arc<Policy>,
    /// The bytes it was compiled from, and their SHA-256 (a recording generates its
    /// pass-through from these, whatever is on disk by then).
    wasm: Arc<[u8]>,
    sha256: String,
    /// The granted linker `pre` came from (a recording links its pass-through to it).
    linker: Linker<HostState>,
    pre: InstancePre<HostState>,
    /// Made at the first recording of a call.
    recorder: OnceLock<Result<Arc<Recorder>, String>>,
    functions: BTreeMap<String, Function>,
    persistent: Option<tokio::sync::Mutex<Option<Live>>>,
    background: Background,
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

impl Loaded {
    /// The call's deadline: the caller's, cut to the policy's.
    fn deadline(&self, options: &CallOptions) -> Duration {
        options.deadline.map_or(self.policy.limits.deadline, |d| {
            d.min(self.policy.limits.deadline)
        })
    }
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
        let own_files = config
            .own_files
            .clone()
            .with_path("components directory", &config.components_dir)
            .with_path("policy directory", &config.policy_dir)
            .with_path("compile cache", &config.cache_dir)
            .with_path("state directory", &config.state_dir);
        // Traces hold what components read and wrote: no component may reach them.
        let own_files = match &config.record_dir {
            Some(dir) => own_files.with_path("record directory", dir),
            None => own_files,
        };
        let approvals = Approvals::default();
        let audit = match config.audit_retention {
            Some(retention) => AuditLog::open(&config.state_dir.join("audit"), retention)?,
            None => AuditLog::off(),
        };
        let services = Services::start(&HostContext {
            config: &config,
            events: &events,
            approvals: &approvals,
            own_files: &own_files,
            audit: &audit,
        });
        Ok(Self {
            cache: CompileCache::new(&config.cache_dir),
            engine,
            config,
            events,
            approvals,
            audit,
            services,
            own_files,
            components: Default::default(),
            generation: Default::default(),
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

    /// The audit log: what components and sessions did with their grants.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// A capability's host-wide state, for the person's faces (the status window shows
    /// `AwakeService::status`).
    pub fn service<S: crate::caps::Service>(&self) -> Option<Arc<S>> {
        self.services.get_arc::<S>()
    }

    /// The prompts waiting for a person, and the way to answer them. Only the host's own faces
    /// (the terminal, `capbridge prompts`, the prompt windows, the opted-in resolve route)
    /// reach this.
    pub fn approvals(&self) -> &Approvals {
        &self.approvals
    }

    /// Every host path `component` may reach in a call made for `session`: the directories its
    /// policy grants, then what the granted capabilities opened to that session (picks).
    /// `None` when there is no such component with a valid policy.
    pub fn paths(&self, component: &str, session: u64) -> Option<Vec<GrantedPath>> {
        let policy = self.component(component)?.policy.clone()?;
        let mut paths: Vec<GrantedPath> = policy
            .directories
            .iter()
            .map(|dir| GrantedPath {
                name: dir.guest.clone(),
                host_path: dir.host.clone(),
                access: dir.access,
                origin: PathOrigin::Policy,
            })
            .collect();
        for service in self.services.granted_to(&policy).all() {
            paths.extend(service.paths(component, session));
        }
        Some(paths)
    }

    /// A contract session ended (expired, evicted, closed): every capability gives back what it
    /// held for it (sleep-prevention holds, picks).
    pub async fn end_session(&self, session: u64) {
        for service in self.services.all() {
            service.end_session(session).await;
        }
    }

    /// The host is stopping: every capability gives back everything it holds.
    pub async fn shutdown(&self) {
        for service in self.services.all() {
            service.shutdown().await;
        }
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Entry>> {
        self.components
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every discovered component, loaded or not, by id (as loaded now).
    pub fn components(&self) -> Vec<ComponentInfo> {
        self.snapshot().values().map(|e| e.info.clone()).collect()
    }

    pub fn component(&self, id: &str) -> Option<ComponentInfo> {
        self.snapshot().get(id).map(|e| e.info.clone())
    }

    /// Counts the (re)loads: what the layers above derive from [`Self::components`] is stale
    /// when this changed.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The parameter and result types of a loaded component's exported function.
    pub fn signature(&self, component: &str, function: &str) -> Option<Signature> {
        let snapshot = self.snapshot();
        let loaded = snapshot.get(component)?.loaded.as_ref()?;
        Some(loaded.functions.get(function)?.signature.clone())
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
                        .is_some_and(|id| !self.snapshot().contains_key(id))
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
    pub fn load_all(&self, progress: &mut dyn FnMut(LoadEvent<'_>)) -> anyhow::Result<()> {
        self.load_where(|_| true, progress)
    }

    /// Loads only the discovered components `wanted` accepts (by id); the others stay unknown.
    pub fn load_where(
        &self,
        wanted: impl Fn(&str) -> bool,
        progress: &mut dyn FnMut(LoadEvent<'_>),
    ) -> anyhow::Result<()> {
        let mut found = discover(&self.config.components_dir)?;
        found.retain(|(id, _)| wanted(id));
        let total = found.len();
        // A lock file that cannot be read refuses every component: pins fail closed.
        let pins = Pins::load(&self.config.policy_dir);
        let mut components = BTreeMap::new();
        for (i, (id, wasm_path)) in found.into_iter().enumerate() {
            let entry = self.load_one(&id, wasm_path, &pins, i + 1, total, progress);
            components.insert(id, entry);
        }
        self.install(components);
        Ok(())
    }

    /// Loads again what changed on disk since the last load (a component or policy added,
    /// changed or removed, or the lock file changed), keeps the rest as it is, and says what
    /// changed. Calls already running finish on the version they started with.
    pub fn reload(&self) -> anyhow::Result<Vec<Reloaded>> {
        let found = discover(&self.config.components_dir)?;
        let pins = Pins::load(&self.config.policy_dir);
        let old = self.snapshot();
        let mut components = BTreeMap::new();
        let mut changes = Vec::new();
        let total = found.len();
        for (i, (id, wasm_path)) in found.into_iter().enumerate() {
            let unchanged = old
                .get(&id)
                .filter(|e| e.fingerprint == self.fingerprint(&id, &wasm_path, &pins))
                .cloned();
            let entry = match unchanged {
                Some(entry) => entry,
                None => {
                    let entry = self.load_one(&id, wasm_path, &pins, i + 1, total, &mut |_| {});
                    changes.push(match &entry.info.status {
                        ComponentStatus::Loaded => Reloaded::Loaded(id.clone()),
                        ComponentStatus::Failed { reason } => {
                            Reloaded::Refused(id.clone(), reason.clone())
                        }
                    });
                    entry
                }
            };
            components.insert(id, entry);
        }
        for id in old.keys().filter(|id| !components.contains_key(*id)) {
            changes.push(Reloaded::Unloaded(id.clone()));
            self.audit.record(
                "component.unloaded",
                Some(id),
                None,
                crate::audit::Outcome::Allowed,
                serde_json::Value::Null,
            );
        }
        if !changes.is_empty() {
            self.install(components);
            for change in &changes {
                let (topic, payload) = match change {
                    Reloaded::Loaded(id) => ("component.loaded", json!({ "component": id })),
                    Reloaded::Refused(id, reason) => (
                        "component.refused",
                        json!({ "component": id, "reason": reason }),
                    ),
                    Reloaded::Unloaded(id) => ("component.unloaded", json!({ "component": id })),
                };
                self.events
                    .publish(crate::caps::events::Event::host(topic, payload, None));
            }
        }
        Ok(changes)
    }

    /// What a component is loaded from — its `.wasm`, its policy and its pin — as one string:
    /// what a reload compares.
    /// `pins` is the lock file as read once for the whole (re)load.
    fn fingerprint(
        &self,
        id: &str,
        wasm_path: &Path,
        pins: &Result<Option<Pins>, String>,
    ) -> String {
        let read = |path: &Path| std::fs::read(path).unwrap_or_default();
        let policy = self.config.policy_dir.join(format!("{id}.toml"));
        let pin = match pins {
            Ok(Some(pins)) => format!("{:?}", pins.components.get(id)),
            Ok(None) => "unpinned".to_string(),
            Err(e) => e.clone(),
        };
        format!(
            "{}:{}:{pin}",
            crate::replay::sha256_hex(&read(wasm_path)),
            crate::replay::sha256_hex(&read(&policy)),
        )
    }

    /// Makes `components` the loaded set, and tells the services what is loaded now.
    fn install(&self, components: BTreeMap<String, Entry>) {
        let components = Arc::new(components);
        *self.components.write().unwrap_or_else(|p| p.into_inner()) = components.clone();
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let policies: Vec<&Policy> = components
            .values()
            .filter(|e| e.loaded.is_some())
            .filter_map(|e| e.info.policy.as_deref())
            .collect();
        for service in self.services.all() {
            service.loaded(&policies);
        }
    }

    fn load_one(
        &self,
        id: &str,
        wasm_path: PathBuf,
        pins: &Result<Option<Pins>, String>,
        index: usize,
        total: usize,
        progress: &mut dyn FnMut(LoadEvent<'_>),
    ) -> Entry {
        let fingerprint = self.fingerprint(id, &wasm_path, pins);
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
        match self.try_load(&mut info, pins, index, total, progress) {
            Ok((loaded, cached)) => {
                progress(LoadEvent::Loaded {
                    component: id,
                    cached,
                });
                self.audit.record(
                    "component.loaded",
                    Some(id),
                    None,
                    crate::audit::Outcome::Allowed,
                    serde_json::json!({ "wasm": info.wasm_path, "policy": info.policy_path }),
                );
                Entry {
                    info,
                    loaded: Some(Arc::new(loaded)),
                    fingerprint,
                }
            }
            Err(reason) => {
                progress(LoadEvent::Failed {
                    component: id,
                    reason: &reason,
                });
                tracing::warn!(component = id, "not loaded: {reason}");
                self.audit.record(
                    "component.refused",
                    Some(id),
                    None,
                    crate::audit::Outcome::Denied,
                    serde_json::json!({ "wasm": info.wasm_path, "reason": reason }),
                );
                info.status = ComponentStatus::Failed { reason };
                Entry {
                    info,
                    loaded: None,
                    fingerprint,
                }
            }
        }
    }

    fn try_load(
        &self,
        info: &mut ComponentInfo,
        pins: &Result<Option<Pins>, String>,
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
        // Each file is read once: what is checked against its pin is what is used.
        let policy_text = std::fs::read_to_string(&info.policy_path)
            .map_err(|e| format!("cannot read {}: {e}", info.policy_path.display()))?;
        let wasm = std::fs::read(&info.wasm_path)
            .map_err(|e| format!("cannot read {}: {e}", info.wasm_path.display()))?;
        if let Some(pins) = pins.as_ref().map_err(Clone::clone)? {
            pins.check(
                &id,
                &info.wasm_path,
                &wasm,
                &info.policy_path,
                policy_text.as_bytes(),
            )?;
        }
        let policy = Arc::new(
            Policy::parse(
                &id,
                &info.policy_path,
                &policy_text,
                &crate::caps::grant_kinds(),
            )
            .map_err(|e| e.to_string())?,
        );
        info.policy = Some(policy.clone());
        // Before anything is created on disk for it.
        self.check_own_files(&policy)?;
        prepare_directories(&policy)?;

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
        let names: Vec<String> = functions.iter().map(|(name, _)| name.clone()).collect();
        let facts = crate::caps::ComponentFacts {
            exports: &names,
            dir: &self.config.components_dir.join(&id),
        };
        for cap in crate::caps::ALL
            .iter()
            .filter(|cap| cap.granted_by(&policy))
        {
            cap.check_component(&policy, &facts).map_err(|why| {
                format!("grants.{} in {}: {why}", cap.key(), policy.source.display())
            })?;
        }
        let linker =
            granted_linker(&self.engine, &policy).map_err(|e| format!("linking: {e:#}"))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| format!("cannot link against {}: {e:#}", policy.source.display()))?;

        let functions: BTreeMap<String, Function> = functions
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
        let services = self.services.granted_to(&policy);
        let background = Background::new(
            self.engine.clone(),
            pre.clone(),
            functions
                .iter()
                .map(|(name, f): (&String, &Function)| (name.clone(), f.index))
                .collect(),
            policy.clone(),
            self.events.clone(),
            services,
            self.audit.clone(),
        );
        Ok((
            Loaded {
                policy,
                sha256: crate::replay::sha256_hex(&wasm),
                wasm: wasm.into(),
                linker,
                pre,
                recorder: OnceLock::new(),
                functions,
                persistent,
                background,
            },
            outcome == CacheOutcome::Hit,
        ))
    }
}

impl Runtime {
    /// Refuses a policy whose grants reach capbridge's own files or port.
    fn check_own_files(&self, policy: &Policy) -> Result<(), String> {
        for (i, dir) in policy.directories.iter().enumerate() {
            if let Some(clash) = self.own_files.clash(&dir.host) {
                return Err(format!(
                    "grants.directories[{i}] in {} grants {}, and {clash}: a component may not \
                     reach capbridge's own files",
                    policy.source.display(),
                    dir.host.display()
                ));
            }
        }
        for cap in crate::caps::ALL.iter().filter(|cap| cap.granted_by(policy)) {
            cap.check_own_files(policy, &self.own_files)
                .map_err(|clash| {
                    format!(
                        "grants.{} in {}: {clash}",
                        cap.key(),
                        policy.source.display()
                    )
                })?;
        }
        Ok(())
    }
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
