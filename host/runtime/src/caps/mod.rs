//! Capabilities: each host interface a policy can grant is one unit, in one module here.
//!
//! A unit ([`Capability`]) alone declares
//! - the WIT interfaces it serves ([`Capability::interfaces`]),
//! - its key under `[grants]`: how the value is read and checked, its part of the JSON Schema,
//!   what `policy explain` says about it and its risk (the [`GrantKind`] half),
//! - how it links into a component's linker ([`Capability::add_to_linker`]),
//! - its host-wide state, if it has any ([`Capability::start`] → a [`Service`]): what that adds to
//!   a new store, the host paths it opens to a session, and what happens when a session ends
//!   and when the host stops.
//!
//! [`ALL`] is the one registry: the import classifier, the linker, the policy reader and its
//! schema, `component list`, the generated grant tables in the docs, and the runtime's session
//! and shutdown hooks all iterate it. Nothing outside a unit names a specific capability.
//!
//! Adding a capability: a module here, its interface in `wit/host.wit`, and one line in [`ALL`]
//! (see docs/architecture.md).

pub mod accessibility;
pub mod awake;
pub mod canvas;
pub mod dialog;
mod display;
pub mod events;
pub mod input;
pub mod log;
pub mod mcp;
pub mod network;
pub mod process;
pub mod screen;
pub mod serve;
pub mod system;

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

use capbridge_policy::{Access, ExplainLine, Grant, GrantKind, Policy};
use futures_util::future::BoxFuture;
use wasmtime::component::Linker;
use wasmtime_wasi::WasiCtxBuilder;

use crate::approvals::Approvals;
use crate::own_files::OwnFiles;
use crate::runtime::RuntimeConfig;
use crate::state::HostState;
use events::EventBus;

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "capbridge:host/imports",
    // `tracing` routes every call through the host-call recorder (see `crate::recorder`);
    // `trappable` lets a host fault trap instead of being mistaken for a guest-visible error;
    // `async` for every interface, so one that waits (D-Bus, a picker, a child process) needs no
    // line here.
    imports: { default: async | tracing | trappable },
});

pub use capbridge::host::types::Error as GuestError;

impl capbridge::host::types::Host for HostState {}

/// Every capability, in the order policies are explained and documented.
pub static ALL: &[&dyn Capability] = &[
    &network::Network,
    &events::Events,
    &log::Log,
    &awake::Awake,
    &dialog::Dialog,
    &system::System,
    &process::Process,
    &mcp::Mcp,
    &canvas::Canvas,
    &screen::Screen,
    &accessibility::Accessibility,
    &input::Input,
    &serve::Serve,
];

/// The policy halves of [`ALL`], for reading policy files.
/// A policy granting nothing beyond the baseline, with `more` (TOML: limits) added (a replay's:
/// every import is answered from the trace).
pub fn baseline_policy(
    component_id: &str,
    more: &str,
) -> Result<Policy, capbridge_policy::PolicyError> {
    Policy::parse(
        component_id,
        std::path::Path::new("(a replay: nothing granted)"),
        &format!("version = 1\n{more}"),
        &grant_kinds(),
    )
}

pub fn grant_kinds() -> Vec<&'static dyn GrantKind> {
    ALL.iter().map(|c| *c as &dyn GrantKind).collect()
}

/// The JSON Schema of a policy file with every capability's grant
/// (`policy/policy.schema.json`).
pub fn policy_schema() -> serde_json::Value {
    capbridge_policy::schema(&grant_kinds())
}

/// Reads and checks the policy file of `component_id` with every capability's grant.
pub fn load_policy(
    component_id: &str,
    path: &std::path::Path,
) -> Result<Policy, capbridge_policy::PolicyError> {
    Policy::load(component_id, path, &grant_kinds())
}

/// What a reviewer should know about `policy` given the other components' policies: risks of
/// grants taken together.
pub fn explain_among(policy: &Policy, others: &[&Policy]) -> Vec<ExplainLine> {
    ALL.iter()
        .flat_map(|cap| cap.explain_among(policy, others))
        .collect()
}

/// The capabilities as rows of a Markdown table (`| key | interfaces | allows | without it |`),
/// for the grant tables in docs/policy.md and docs/components.md.
pub fn grant_table() -> String {
    let mut table = String::from(
        "| grant | linked when granted | lets the component | without it | `policy diff` calls a widening |\n|---|---|---|---|---|\n",
    );
    for cap in ALL {
        let interfaces: Vec<String> = cap.interfaces().iter().map(|i| format!("`{i}`")).collect();
        table.push_str(&format!(
            "| `grants.{}` | {} | {} | {} | {} |\n",
            cap.key(),
            interfaces.join(", "),
            cap.summary(),
            cap.not_granted(),
            cap.widening()
        ));
    }
    table
}

/// One host interface a policy can grant.
pub trait Capability: GrantKind {
    /// The WIT interfaces it serves, by name without version (`capbridge:host/awake`).
    fn interfaces(&self) -> &'static [&'static str];

    /// One sentence for the docs' grant tables: what granting it lets a component do.
    fn summary(&self) -> &'static str;

    /// Adds its interfaces to a component's linker; called only when the policy grants it.
    fn add_to_linker(&self, linker: &mut Linker<HostState>) -> wasmtime::Result<()>;

    /// Creates its host-wide state, once per runtime; `None` for a stateless capability.
    fn start(&self, _host: &HostContext<'_>) -> Option<Arc<dyn Service>> {
        None
    }

    /// Refuses a grant that reaches capbridge's own files or port (checked at load).
    fn check_own_files(&self, _policy: &Policy, _own_files: &OwnFiles) -> Result<(), String> {
        Ok(())
    }

    /// Refuses a component that does not fit what its policy declares for this capability (an
    /// export it needs, a file it names); checked at load, once compiled.
    fn check_component(&self, _policy: &Policy, _facts: &ComponentFacts<'_>) -> Result<(), String> {
        Ok(())
    }

    /// Whether `policy` grants it.
    fn granted_by(&self, policy: &Policy) -> bool {
        policy.grants_key(self.key())
    }

    /// What a reviewer should know about `policy`'s grant given the other components'
    /// policies (`others`): a risk that comes from two grants together.
    fn explain_among(&self, _policy: &Policy, _others: &[&Policy]) -> Vec<ExplainLine> {
        Vec::new()
    }
}

/// What a loaded component is, for [`Capability::check_component`].
pub struct ComponentFacts<'a> {
    /// Its exported functions, as `Runtime::call` names them (`route-handler.handle`).
    pub exports: &'a [String],
    /// Its own directory, `components/<id>/` (a web UI's files, recorded tests).
    pub dir: &'a std::path::Path,
}

/// What a capability's host-wide state is created from.
pub struct HostContext<'a> {
    pub config: &'a RuntimeConfig,
    pub events: &'a EventBus,
    /// The host's prompts for a person.
    pub approvals: &'a Approvals,
    /// capbridge's own files and port: what no grant or pick may reach.
    pub own_files: &'a OwnFiles,
    /// Where grant uses are recorded.
    pub audit: &'a crate::audit::AuditLog,
}

/// The host-wide state of one capability, shared by every store of the runtime.
pub trait Service: Any + Send + Sync {
    /// The components are loaded; `policies` are theirs (a capability may warn about what they
    /// grant together).
    fn loaded(&self, _policies: &[&Policy]) {}

    /// Adds to a new store of `policy`'s component, made for `session`, what this capability
    /// gives it (a picked directory mounted for that session). Called only when the policy
    /// grants the capability.
    fn prepare_store(&self, _policy: &Policy, _session: Option<u64>, _wasi: &mut WasiCtxBuilder) {}

    /// The host paths this capability opens to `component` for `session` beyond its policy.
    fn paths(&self, _component: &str, _session: u64) -> Vec<GrantedPath> {
        Vec::new()
    }

    /// Gives back what `session` held (it ended or expired).
    fn end_session(&self, _session: u64) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Gives back everything: the host is stopping.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A host path a component can reach, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantedPath {
    /// What names it: the guest path of a granted directory (`/workspace`), or `picked-<id>`.
    pub name: String,
    pub host_path: PathBuf,
    pub access: Access,
    pub origin: PathOrigin,
}

/// Where a [`GrantedPath`] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathOrigin {
    /// A directory the policy grants, to every session.
    Policy,
    /// A directory a person picked, for one session.
    PickedDirectory,
    /// A single file a person picked, for one session.
    PickedFile,
}

/// The running services of the capabilities in [`ALL`], by key.
#[derive(Clone, Default)]
pub struct Services {
    running: Arc<[(&'static str, Arc<dyn Service>)]>,
}

impl Services {
    /// Starts the host-wide state of every capability that has one.
    pub fn start(host: &HostContext<'_>) -> Self {
        Self {
            running: ALL
                .iter()
                .filter_map(|cap| Some((cap.key(), cap.start(host)?)))
                .collect(),
        }
    }

    /// The service of type `S`, if its capability is running.
    pub fn get<S: Service>(&self) -> Option<&S> {
        self.running.iter().find_map(|(_, service)| {
            let any: &dyn Any = &**service;
            any.downcast_ref::<S>()
        })
    }

    /// The service of type `S`, shared, for work that outlives the call (a child process).
    pub fn get_arc<S: Service>(&self) -> Option<Arc<S>> {
        self.running.iter().find_map(|(_, service)| {
            let any: Arc<dyn Any + Send + Sync> = service.clone();
            any.downcast::<S>().ok()
        })
    }

    /// The services of the capabilities `policy` grants: what its stores may reach (picked once
    /// per loaded component, not per call).
    pub fn granted_to(&self, policy: &Policy) -> Self {
        Self {
            running: self
                .running
                .iter()
                .filter(|(key, _)| policy.grants_key(key))
                .cloned()
                .collect(),
        }
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Service>> {
        self.running.iter().map(|(_, service)| service)
    }
}

/// A host call's audit entry, written when the call ends: with its outcome, or as cancelled
/// when the call is dropped first (its deadline, the client gone).
pub(crate) struct AuditEntry<'a> {
    audit: &'a crate::audit::AuditLog,
    kind: &'static str,
    component: &'a str,
    session: Option<u64>,
    /// What it recorded about the call (never contents or secrets).
    pub detail: serde_json::Value,
    outcome: Option<crate::audit::Outcome>,
}

impl<'a> AuditEntry<'a> {
    pub fn new(
        audit: &'a crate::audit::AuditLog,
        kind: &'static str,
        component: &'a str,
        session: Option<u64>,
        detail: serde_json::Value,
    ) -> Self {
        AuditEntry {
            audit,
            kind,
            component,
            session,
            detail,
            outcome: None,
        }
    }

    /// The call ended with `result`: allowed (and `ok` may change the detail), or denied with
    /// its error.
    pub fn finish<T>(
        &mut self,
        result: &Result<T, GuestError>,
        ok: impl FnOnce(&T, &mut serde_json::Value),
    ) {
        use crate::audit::Outcome;
        self.outcome = Some(match result {
            Ok(value) => {
                ok(value, &mut self.detail);
                Outcome::Allowed
            }
            Err(e) => {
                self.detail["error"] = serde_json::json!(e.to_string());
                Outcome::Denied
            }
        });
    }
}

impl Drop for AuditEntry<'_> {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or_else(|| {
            self.detail["error"] = serde_json::json!("cancelled before it finished");
            crate::audit::Outcome::Failed
        });
        let detail = std::mem::take(&mut self.detail);
        self.audit.record(
            self.kind,
            Some(self.component),
            self.session,
            outcome,
            detail,
        );
    }
}

/// The sentence a denial carries to the guest and to the audit log.
pub(crate) fn denial(component: &str, what: &str, grant: &str, policy: &std::path::Path) -> String {
    format!(
        "component `{component}` may not {what}: {grant} is not granted by {}",
        policy.display()
    )
}

/// The JSON Schema of a grant's file form `T`, with the grant's one-line `description`.
pub(crate) fn described_schema<T: schemars::JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
    description: &str,
) -> schemars::Schema {
    let mut schema = generator.subschema_for::<T>();
    schema.insert("description".into(), description.into());
    schema
}

/// Reads a grant written `key = true`: `grant` when true, nothing when false.
pub(crate) fn read_flag(
    value: toml::Value,
    grant: impl Grant,
) -> Result<Option<Arc<dyn Grant>>, toml::de::Error> {
    let granted: bool = capbridge_policy::read_grant(value)?;
    Ok(granted.then(|| Arc::new(grant) as Arc<dyn Grant>))
}

/// The JSON Schema of a grant written `key = true`.
pub(crate) fn flag_schema(description: &str) -> schemars::Schema {
    schemars::json_schema!({
        "description": description,
        "type": "boolean",
        "default": false,
    })
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod policy_tests;
