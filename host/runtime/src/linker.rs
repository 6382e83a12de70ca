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
use crate::caps::{self, Capability};
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

/// How capbridge can satisfy one import.
#[derive(Clone, Copy)]
pub enum ImportKind {
    Baseline,
    /// Served by this capability, when the policy grants it.
    Capability(&'static dyn Capability),
    /// capbridge provides no such interface (raw sockets, unknown packages).
    NotProvided,
}

/// Classifies an import by its name (`wasi:io/streams@0.2.3`, version optional).
pub fn classify(import: &str) -> ImportKind {
    let name = import.split('@').next().unwrap_or(import);
    if BASELINE.contains(&name) {
        return ImportKind::Baseline;
    }
    caps::ALL
        .iter()
        .find(|cap| cap.interfaces().contains(&name))
        .map_or(ImportKind::NotProvided, |cap| ImportKind::Capability(*cap))
}

/// Why a component's imports cannot be satisfied under its policy: one sentence per reason,
/// naming every import it applies to.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct ImportRefusal {
    pub problems: Vec<String>,
}

/// Checks every import of `component_id` against its policy. Imports refused for the same
/// reason (seven `wasi:sockets/*` interfaces) share one sentence.
pub fn check_imports<'a>(
    policy: &Policy,
    imports: impl IntoIterator<Item = &'a str>,
) -> Result<(), ImportRefusal> {
    let mut reasons: Vec<(String, Vec<&str>)> = Vec::new();
    for import in imports {
        let why = match classify(import) {
            ImportKind::Baseline => continue,
            ImportKind::Capability(cap) if cap.granted_by(policy) => continue,
            ImportKind::Capability(cap) => format!(
                "{} does not grant (it needs `grants.{}`)",
                policy.source.display(),
                cap.key()
            ),
            ImportKind::NotProvided => format!(
                "capbridge does not provide to components{}",
                if import.starts_with("wasi:sockets/") {
                    " (raw sockets cannot be granted; use wasi:http with a `grants.network` entry)"
                } else {
                    ""
                }
            ),
        };
        match reasons.iter_mut().find(|(w, _)| *w == why) {
            Some((_, imports)) => imports.push(import),
            None => reasons.push((why, vec![import])),
        }
    }
    if reasons.is_empty() {
        return Ok(());
    }
    let problems = reasons
        .into_iter()
        .map(|(why, imports)| {
            let list: Vec<String> = imports.iter().map(|i| format!("`{i}`")).collect();
            let count = match imports.len() {
                1 => String::new(),
                n => format!(" ({n} interfaces)"),
            };
            format!(
                "component `{}` imports {}{count}, which {why}",
                policy.component_id,
                list.join(", ")
            )
        })
        .collect();
    Err(ImportRefusal { problems })
}

/// A linker with the baseline and exactly the interfaces `policy` grants.
pub fn granted_linker(engine: &Engine, policy: &Policy) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    link_baseline(&mut linker)?;
    for cap in caps::ALL.iter().filter(|cap| cap.granted_by(policy)) {
        cap.add_to_linker(&mut linker)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_refused_for_one_reason_share_one_sentence() {
        let policy = Policy::parse(
            "probe",
            std::path::Path::new("policy/probe.toml"),
            "version = 1\n[grants]\nlog = true\n",
            &caps::grant_kinds(),
        )
        .unwrap();
        let refusal = check_imports(
            &policy,
            [
                "wasi:io/streams@0.2.6",
                "wasi:sockets/tcp@0.2.6",
                "capbridge:host/events@0.1.0",
                "capbridge:host/log@0.1.0",
                "wasi:sockets/udp@0.2.6",
            ],
        )
        .unwrap_err();
        assert_eq!(
            refusal.problems,
            [
                "component `probe` imports `wasi:sockets/tcp@0.2.6`, `wasi:sockets/udp@0.2.6` \
                 (2 interfaces), which capbridge does not provide to components (raw sockets \
                 cannot be granted; use wasi:http with a `grants.network` entry)",
                "component `probe` imports `capbridge:host/events@0.1.0`, which \
                 policy/probe.toml does not grant (it needs `grants.events`)",
            ]
        );
        assert!(check_imports(&policy, ["capbridge:host/log@0.1.0"]).is_ok());
    }
}
