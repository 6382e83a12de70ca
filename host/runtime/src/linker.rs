//! Linking from grants: a component's linker holds the harmless baseline plus exactly the
//! interfaces its policy grants, and nothing else.
//!
//! Before linking, [`check_imports`] compares what the component imports with what its policy
//! grants, so a refusal names the component, each offending import, and the policy file, instead
//! of wasmtime's generic "import not found".
//!
//! The baseline, linked for every component, is harmless when nothing is granted: clocks,
//! randomness, I/O streams and polling, exit, stdio and terminal queries, the environment (empty
//! unless `grants.environment` names variables), the filesystem types and preopens (no
//! directories unless `grants.directories` lists some), and the type-only `capbridge:host/types`.

use capbridge_policy::Policy;
use wasmtime::component::{HasData, HasSelf, Linker, ResourceTable};
use wasmtime::Engine;
use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView as _};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::WasiView;

use crate::caps::capbridge::host as capbridge_host;
use crate::state::HostState;

/// Interfaces every component gets, by name without version.
pub const BASELINE: &[&str] = &[
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/exit",
    "wasi:cli/environment",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "capbridge:host/types",
];

/// An interface beyond the baseline, and the policy key that grants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grantable {
    /// `wasi:http/types` and `wasi:http/outgoing-handler`, by `grants.network`.
    Network,
    /// `capbridge:host/events`, by `grants.events`.
    Events,
    /// `capbridge:host/log`, by `grants.log`.
    Log,
    /// `capbridge:host/awake`, by `grants.awake`.
    Awake,
    /// `capbridge:host/dialog`, by `grants.dialog`.
    Dialog,
    /// `capbridge:host/system`, by `grants.system`.
    System,
}

impl Grantable {
    pub fn policy_key(self) -> &'static str {
        match self {
            Grantable::Network => "grants.network",
            Grantable::Events => "grants.events",
            Grantable::Log => "grants.log",
            Grantable::Awake => "grants.awake",
            Grantable::Dialog => "grants.dialog",
            Grantable::System => "grants.system",
        }
    }

    pub fn granted_by(self, policy: &Policy) -> bool {
        match self {
            Grantable::Network => !policy.network.is_empty(),
            Grantable::Events => !policy.events.is_empty(),
            Grantable::Log => policy.log,
            Grantable::Awake => policy.awake,
            Grantable::Dialog => policy.dialog,
            Grantable::System => policy.system.is_some(),
        }
    }
}

/// How capbridge can satisfy one import.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportKind {
    Baseline,
    Grantable(Grantable),
    /// capbridge provides no such interface (raw sockets, unknown packages).
    NotProvided,
}

/// Classifies an import by its name (`wasi:io/streams@0.2.3`, version optional).
pub fn classify(import: &str) -> ImportKind {
    let name = import.split('@').next().unwrap_or(import);
    if BASELINE.contains(&name) {
        return ImportKind::Baseline;
    }
    match name {
        "wasi:http/types" | "wasi:http/outgoing-handler" => {
            ImportKind::Grantable(Grantable::Network)
        }
        "capbridge:host/events" => ImportKind::Grantable(Grantable::Events),
        "capbridge:host/log" => ImportKind::Grantable(Grantable::Log),
        "capbridge:host/awake" => ImportKind::Grantable(Grantable::Awake),
        "capbridge:host/dialog" => ImportKind::Grantable(Grantable::Dialog),
        "capbridge:host/system" => ImportKind::Grantable(Grantable::System),
        _ => ImportKind::NotProvided,
    }
}

/// Why a component's imports cannot be satisfied under its policy: one line per import.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct ImportRefusal {
    pub problems: Vec<String>,
}

/// Checks every import of `component_id` against its policy.
pub fn check_imports<'a>(
    policy: &Policy,
    imports: impl IntoIterator<Item = &'a str>,
) -> Result<(), ImportRefusal> {
    let problems: Vec<String> = imports
        .into_iter()
        .filter_map(|import| match classify(import) {
            ImportKind::Baseline => None,
            ImportKind::Grantable(g) if g.granted_by(policy) => None,
            ImportKind::Grantable(g) => Some(format!(
                "component `{}` imports `{import}`, which {} does not grant (it needs `{}`)",
                policy.component_id,
                policy.source.display(),
                g.policy_key()
            )),
            ImportKind::NotProvided => Some(format!(
                "component `{}` imports `{import}`, which capbridge does not provide to components{}",
                policy.component_id,
                if import.starts_with("wasi:sockets/") {
                    " (raw sockets cannot be granted; use wasi:http with a `grants.network` entry)"
                } else {
                    ""
                }
            )),
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ImportRefusal { problems })
    }
}

/// A linker with the baseline and exactly the interfaces `policy` grants.
pub fn granted_linker(engine: &Engine, policy: &Policy) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    link_baseline(&mut linker)?;
    if Grantable::Network.granted_by(policy) {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    }
    if Grantable::Events.granted_by(policy) {
        capbridge_host::events::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    }
    if Grantable::Log.granted_by(policy) {
        capbridge_host::log::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    }
    if Grantable::Awake.granted_by(policy) {
        capbridge_host::awake::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    }
    if Grantable::Dialog.granted_by(policy) {
        capbridge_host::dialog::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    }
    if Grantable::System.granted_by(policy) {
        capbridge_host::system::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    }
    Ok(linker)
}

/// The [`BASELINE`] interfaces, mirroring `wasmtime_wasi::p2::add_to_linker_async` without
/// `wasi:sockets`.
fn link_baseline(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random};
    use wasmtime_wasi_io::bindings::wasi::io;

    io::error::add_to_linker::<_, HasIo>(l, |t| t.ctx().table)?;
    io::poll::add_to_linker::<_, HasIo>(l, |t| t.ctx().table)?;
    io::streams::add_to_linker::<_, HasIo>(l, |t| t.ctx().table)?;
    clocks::wall_clock::add_to_linker::<_, WasiClocks>(l, HostState::clocks)?;
    clocks::monotonic_clock::add_to_linker::<_, WasiClocks>(l, HostState::clocks)?;
    random::random::add_to_linker::<_, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure::add_to_linker::<_, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure_seed::add_to_linker::<_, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    cli::exit::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::environment::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::stdin::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::stdout::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::stderr::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::terminal_input::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::terminal_output::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::terminal_stdin::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::terminal_stdout::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::terminal_stderr::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    filesystem::types::add_to_linker::<_, WasiFilesystem>(l, HostState::filesystem)?;
    filesystem::preopens::add_to_linker::<_, WasiFilesystem>(l, HostState::filesystem)?;
    capbridge_host::types::add_to_linker::<_, HasSelf<HostState>>(l, |s| s)?;
    Ok(())
}

/// `wasi:io` works on the resource table alone.
struct HasIo;

impl HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}
