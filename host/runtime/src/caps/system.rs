//! `capbridge:host/system`: facts about this machine, and `--version` of granted programs.
//!
//! `platform` reads what any local program can (`/etc/os-release`, `uname`, the login shell).
//! `program-version` starts a host process, so it is scoped twice: the guest path must name a
//! file directly inside a directory granted to the component, and the file name must be listed
//! in `grants.system.programs`. The program gets `--version` and nothing else: no stdin, an
//! empty environment but `PATH`, 3 seconds, and only the first line of what it prints.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use capbridge_policy::{ExplainLine, Grant, GrantContext, GrantKind, Policy};
use tokio::io::AsyncReadExt as _;
use wasmtime::component::{HasSelf, Linker};

use super::capbridge::host::system::{self as wit, Host, PlatformInfo as Platform};
use super::{Capability, GuestError};
use crate::state::HostState;

/// The capability: `[grants.system]`.
pub struct System;

/// `[grants.system]`: the machine's facts, and the program names whose `--version` the
/// component may read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemGrant {
    pub programs: Vec<String>,
}

/// `[grants.system]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SystemGrantFile {
    /// File names of programs the component may run with the single argument `--version`, and
    /// only where they lie in a granted directory.
    #[serde(default)]
    #[schemars(inner(pattern(r"^[A-Za-z0-9._+-]{1,64}$")))]
    pub programs: Vec<String>,
}

impl Grant for SystemGrant {
    fn reach(&self, _policy: &Policy) -> Vec<capbridge_policy::Reach> {
        use capbridge_policy::Reach;
        let mut items = vec![Reach::line(ExplainLine::plain(
            "Can read the machine's OS name and version, architecture, kernel release and \
             login shell."
                .to_string(),
        ))];
        items.extend(self.programs.iter().map(|program| {
            let line = ExplainLine::risky(
                format!("Can run {program} --version, where it lies in a granted directory."),
                Some("it starts a host process".to_string()),
            );
            Reach::new("program", program.clone(), line)
        }));
        items
    }

    fn scope(&self) -> Option<String> {
        (!self.programs.is_empty()).then(|| format!("(--version of {})", self.programs.join(", ")))
    }

    fn explain(&self, _policy: &Policy) -> Vec<ExplainLine> {
        let mut lines = vec![ExplainLine::plain(
            "Can read the machine's OS name and version, architecture, kernel release and \
             login shell."
                .to_string(),
        )];
        if !self.programs.is_empty() {
            lines.push(ExplainLine::risky(
                format!(
                    "Can run these programs with the single argument --version, where they \
                     lie in a granted directory: {}.",
                    self.programs.join(", ")
                ),
                Some(format!(
                    "it starts host processes (no input, empty environment but PATH, killed \
                     after {} seconds); a program that ignores --version runs as if started \
                     bare",
                    VERSION_TIMEOUT.as_secs()
                )),
            ));
        }
        lines
    }
}

impl GrantKind for System {
    fn key(&self) -> &'static str {
        "system"
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        super::described_schema::<SystemGrantFile>(
            generator,
            "Facts about this machine and versions of named programs (`capbridge:host/system`).",
        )
    }

    fn parse(
        &self,
        value: toml::Value,
        cx: &mut GrantContext<'_>,
    ) -> Result<Option<Arc<dyn Grant>>, toml::de::Error> {
        let file: SystemGrantFile = capbridge_policy::read_grant(value)?;
        for (i, name) in file.programs.iter().enumerate() {
            if !is_program_name(name) {
                cx.problem(
                    &format!(".programs[{i}]"),
                    format!("{name:?} is not a program file name (1 to 64 of A-Z a-z 0-9 . _ + -)"),
                );
            }
        }
        Ok(Some(Arc::new(SystemGrant {
            programs: file.programs,
        })))
    }

    fn not_granted(&self) -> &'static str {
        "no system facts and no programs to run"
    }

    fn widening(&self) -> &'static str {
        "granted where it was not, or a program added to `programs` (flagged: it starts host processes)"
    }
}

impl Capability for System {
    fn interfaces(&self) -> &'static [&'static str] {
        &["capbridge:host/system"]
    }

    fn summary(&self) -> &'static str {
        "read the OS facts; run the listed programs with `--version` only"
    }

    fn add_to_linker(&self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)
    }
}

/// A bare file name a program may have: no separators, no `..`.
fn is_program_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// How long a `--version` run may take before it is killed.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes read of each of its output streams.
const VERSION_OUTPUT_BYTES: u64 = 64 << 10;
/// Longest line returned, in characters.
const VERSION_LINE_CHARS: usize = 256;

/// This machine's facts, as `platform` returns them.
pub fn platform() -> Platform {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |key: &str| {
        os_release.lines().find_map(|line| {
            let value = line.strip_prefix(key)?.strip_prefix('=')?;
            let value = value.trim().trim_matches('"').trim_matches('\'');
            (!value.is_empty()).then(|| value.to_string())
        })
    };
    let uname = rustix::system::uname();
    let kernel = uname.release().to_string_lossy().into_owned();
    Platform {
        os: std::env::consts::OS.to_string(),
        os_name: field("NAME"),
        os_version: field("VERSION_ID").or_else(|| field("VERSION")),
        arch: std::env::consts::ARCH.to_string(),
        kernel: (!kernel.is_empty()).then_some(kernel),
        shell: login_shell(),
    }
}

/// `$SHELL`, else the shell in the user's `/etc/passwd` entry.
fn login_shell() -> Option<String> {
    if let Some(shell) = std::env::var("SHELL").ok().filter(|s| !s.is_empty()) {
        return Some(shell);
    }
    let uid = rustix::process::getuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() == 7 && fields[2].parse() == Ok(uid) && !fields[6].is_empty())
            .then(|| fields[6].to_string())
    })
}

/// The host file a guest path names, when it lies directly inside a granted directory.
fn host_program(state: &HostState, guest: &str) -> Result<PathBuf, GuestError> {
    let policy = &state.grants.policy;
    let programs = policy
        .grant::<SystemGrant>()
        .map(|s| s.programs.as_slice())
        .unwrap_or_default();
    let (dir, name) = guest.rsplit_once('/').ok_or_else(|| {
        GuestError::InvalidArgument(format!("{guest:?} is not an absolute guest path"))
    })?;
    let dir = if dir.is_empty() { "/" } else { dir };
    if !programs.iter().any(|p| p == name) {
        tracing::warn!(target: "capbridge::audit", component = %policy.component_id, program = name, "denied: system.program-version");
        return Err(GuestError::Denied(super::denial(
            &policy.component_id,
            &format!("run `{name}`"),
            &format!("`{name}` in grants.system.programs"),
            &policy.source,
        )));
    }
    let granted = policy
        .directories
        .iter()
        .find(|d| d.guest == dir)
        .ok_or_else(|| {
            GuestError::Denied(super::denial(
                &policy.component_id,
                &format!("run a program in {dir:?}"),
                "that directory",
                &policy.source,
            ))
        })?;
    // A program the component could have written itself would be its way out of the sandbox.
    if granted.access != capbridge_policy::Access::ReadOnly {
        return Err(GuestError::Denied(format!(
            "component `{}` may not run programs in {dir:?}: it may write there, and only \
             programs in read-only granted directories run",
            policy.component_id
        )));
    }
    Ok(granted.host.join(name))
}

/// Runs `program --version` and returns its first non-empty line.
pub async fn program_version(program: &Path) -> Result<String, GuestError> {
    if !program.is_file() {
        return Err(GuestError::NotFound(format!(
            "no program at {}",
            program.display()
        )));
    }
    let mut child = tokio::process::Command::new(program)
        .arg("--version")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| GuestError::Unavailable(format!("cannot run {}: {e}", program.display())))?;
    let (mut stdout, mut stderr) = (
        child
            .stdout
            .take()
            .expect("piped")
            .take(VERSION_OUTPUT_BYTES),
        child
            .stderr
            .take()
            .expect("piped")
            .take(VERSION_OUTPUT_BYTES),
    );
    let run = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        let status = child.wait().await;
        (out, err, status)
    };
    let (out, err, status) = tokio::time::timeout(VERSION_TIMEOUT, run)
        .await
        .map_err(|_| {
            GuestError::Unavailable(format!(
                "{} --version did not finish within {VERSION_TIMEOUT:?}",
                program.display()
            ))
        })?;
    match status {
        Ok(status) if status.success() => {}
        // What a failing program prints is an error message, not a version.
        Ok(status) => {
            return Err(GuestError::Unavailable(format!(
                "{} --version failed ({status})",
                program.display()
            )))
        }
        Err(e) => {
            return Err(GuestError::Unavailable(format!(
                "{} --version: {e}",
                program.display()
            )))
        }
    }
    [out, err]
        .iter()
        .find_map(|bytes| {
            String::from_utf8_lossy(bytes)
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(|l| l.chars().take(VERSION_LINE_CHARS).collect::<String>())
        })
        .ok_or_else(|| {
            GuestError::Unavailable(format!("{} --version printed nothing", program.display()))
        })
}

impl Host for HostState {
    async fn platform(&mut self) -> wasmtime::Result<Platform> {
        Ok(tokio::task::spawn_blocking(platform).await?)
    }

    async fn program_version(
        &mut self,
        path: String,
    ) -> wasmtime::Result<Result<String, GuestError>> {
        let program = match host_program(self, &path) {
            Ok(program) => program,
            Err(e) => return Ok(Err(e)),
        };
        Ok(program_version(&program).await)
    }
}
