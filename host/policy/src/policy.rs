//! A validated policy: parsing, every validation rule, and the queries the runtime asks.

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::file::{Access, DirectoryGrantFile, InstanceMode, LimitsFile, PolicyFile};
use crate::grant::{read, Grant, GrantContext, GrantKind};
use crate::POLICY_VERSION;

/// A policy checked and ready to enforce. Everything not listed here is denied.
#[derive(Debug, Clone)]
pub struct Policy {
    pub component_id: String,
    /// The policy file, for messages ("granted by policy/echo.toml").
    pub source: PathBuf,
    pub description: Option<String>,
    pub instance: InstanceMode,
    pub limits: Limits,
    pub directories: Vec<DirectoryGrant>,
    pub environment: Vec<String>,
    /// One entry per capability the policy was read with, in their order: its grant, if the
    /// policy grants it.
    pub grants: Vec<GrantEntry>,
    /// The home directory `~/` was expanded against (from `$HOME` at parse time), if known.
    pub home: Option<PathBuf>,
}

/// Resource limits with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock limit per call.
    pub deadline: Duration,
    /// Linear memory per instance, in bytes.
    pub memory_bytes: u64,
    /// Elements per table.
    pub table_elements: u32,
    /// Bytes kept of stdout, and separately of stderr, per call.
    pub output_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        limits_from(&LimitsFile::default())
    }
}

/// One granted directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryGrant {
    /// Absolute host path with `~/` expanded and `.` components removed; canonicalised
    /// (symbolic links resolved) when it existed at parse time.
    pub host: PathBuf,
    /// Absolute, normalised path at which the component sees it.
    pub guest: String,
    pub access: Access,
    /// Create `host` (and its parents) at load if it is missing.
    pub create: bool,
}

/// What a policy says about one capability's key.
#[derive(Debug, Clone)]
pub struct GrantEntry {
    /// The key under `[grants]`.
    pub key: &'static str,
    /// The scope granted; `None` when the policy does not grant it.
    pub grant: Option<Arc<dyn Grant>>,
    /// What the component cannot do without it.
    pub not_granted: &'static str,
}

/// One thing wrong with a policy file, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, as a path: `grants.directories[0].guest`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a policy could not be loaded. Every variant names the policy file.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML, or has an unknown key, a missing key or a value of the wrong type.
    /// `message` is the TOML parser's, with line, column and the key.
    #[error("policy file {}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    /// The file parses but breaks one or more rules; every problem found is listed.
    #[error("policy file {} is not valid:{}", path.display(), ProblemList(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl PolicyError {
    /// The policy file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            PolicyError::Read { path, .. }
            | PolicyError::Syntax { path, .. }
            | PolicyError::Invalid { path, .. } => path,
        }
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in self.0 {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

/// Only the version, read before the rest so a file written for another version is reported
/// as such rather than as unknown keys.
#[derive(Deserialize)]
struct VersionProbe {
    version: Option<toml::Value>,
}

impl Policy {
    /// One short line per grant (`directory ~/capbridge as /data (ReadWrite)`, `awake`,
    /// `network https://api.example.com`): what `component list` and the status window show.
    pub fn grant_summary(&self) -> Vec<String> {
        let mut grants = Vec::new();
        for dir in &self.directories {
            grants.push(format!(
                "directory {} as {} ({:?})",
                dir.host.display(),
                dir.guest,
                dir.access
            ));
        }
        if !self.environment.is_empty() {
            grants.push(format!("environment {}", self.environment.join(", ")));
        }
        for entry in &self.grants {
            if let Some(grant) = &entry.grant {
                grants.push(match grant.scope() {
                    Some(scope) => format!("{} {scope}", entry.key),
                    None => entry.key.to_string(),
                });
            }
        }
        grants
    }

    /// Parse and validate a policy file's text; `kinds` are the capabilities' keys under
    /// `[grants]` (any other key is unknown). `~/` in directory grants is expanded against
    /// `$HOME`.
    pub fn parse(
        component_id: &str,
        source: &Path,
        text: &str,
        kinds: &[&dyn GrantKind],
    ) -> Result<Policy, PolicyError> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Self::parse_with_home(component_id, source, text, home.as_deref(), kinds)
    }

    /// [`Policy::parse`] with the home directory given instead of read from `$HOME` (`None`:
    /// unknown, so `~/` paths are rejected).
    pub fn parse_with_home(
        component_id: &str,
        source: &Path,
        text: &str,
        home: Option<&Path>,
        kinds: &[&dyn GrantKind],
    ) -> Result<Policy, PolicyError> {
        let syntax = |e: toml::de::Error| PolicyError::Syntax {
            path: source.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        };
        let probe: VersionProbe = toml::from_str(text).map_err(syntax)?;
        if let Some(toml::Value::Integer(version)) = probe.version {
            if version != i64::from(POLICY_VERSION) {
                return Err(PolicyError::Invalid {
                    path: source.to_path_buf(),
                    problems: vec![Problem {
                        key: "version".to_string(),
                        message: format!(
                            "unsupported policy version {version}; this capbridge reads version \
                             {POLICY_VERSION}"
                        ),
                    }],
                });
            }
        }
        let file: PolicyFile = toml::from_str(text).map_err(syntax)?;
        Self::from_file(component_id, source, text, file, home, kinds)
    }

    /// Read the file at `path`, then [`Policy::parse`] it.
    pub fn load(
        component_id: &str,
        path: &Path,
        kinds: &[&dyn GrantKind],
    ) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(component_id, path, &text, kinds)
    }

    /// Validate a deserialised file (of version 1), collecting every problem.
    fn from_file(
        component_id: &str,
        source: &Path,
        text: &str,
        mut file: PolicyFile,
        home: Option<&Path>,
        kinds: &[&dyn GrantKind],
    ) -> Result<Policy, PolicyError> {
        let home = home.filter(|h| h.is_absolute()).map(Path::to_path_buf);
        // A value of the wrong shape is a syntax error naming its key and line, as the TOML
        // parser's own errors do.
        let line = |span: std::ops::Range<usize>| {
            text[..span.start.min(text.len())].matches('\n').count() + 1
        };
        let syntax =
            |key: &str, span: std::ops::Range<usize>, e: toml::de::Error| PolicyError::Syntax {
                path: source.to_path_buf(),
                message: format!("{key}: {} at line {}", e.message().trim_end(), line(span)),
            };
        if let Some((key, value)) = file
            .grants
            .iter()
            .find(|(key, _)| !is_baseline_key(key) && !kinds.iter().any(|k| k.key() == *key))
        {
            let mut known: Vec<&str> = BASELINE_KEYS.to_vec();
            known.extend(kinds.iter().map(|k| k.key()));
            return Err(PolicyError::Syntax {
                path: source.to_path_buf(),
                message: format!(
                    "grants: unknown field `{key}`, expected one of {} at line {}",
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    line(value.span())
                ),
            });
        }
        // The baseline keys this crate reads itself; absent means an empty list.
        fn baseline<T: serde::de::DeserializeOwned + Default>(
            file: &mut PolicyFile,
            key: &str,
            syntax: impl Fn(&str, std::ops::Range<usize>, toml::de::Error) -> PolicyError,
        ) -> Result<T, PolicyError> {
            match file.grants.remove(key) {
                Some(value) => {
                    let span = value.span();
                    read(value.into_inner()).map_err(|e| syntax(&format!("grants.{key}"), span, e))
                }
                None => Ok(T::default()),
            }
        }
        let directories: Vec<DirectoryGrantFile> = baseline(&mut file, "directories", syntax)?;
        let environment: Vec<String> = baseline(&mut file, "environment", syntax)?;

        let mut problems = Problems::default();
        check_limits(&file.limits, &mut problems);
        let directories = check_directories(&directories, home.as_deref(), &mut problems);
        check_environment(&environment, &mut problems);
        let mut grants = Vec::with_capacity(kinds.len());
        for kind in kinds {
            let grant = match file.grants.remove(kind.key()) {
                None => None,
                Some(value) => {
                    let span = value.span();
                    let mut cx = GrantContext {
                        key: kind.key(),
                        component_id,
                        instance: file.instance,
                        directories: &directories,
                        home: home.as_deref(),
                        problems: &mut problems,
                    };
                    kind.parse(value.into_inner(), &mut cx)
                        .map_err(|e| syntax(&format!("grants.{}", kind.key()), span, e))?
                }
            };
            grants.push(GrantEntry {
                key: kind.key(),
                grant,
                not_granted: kind.not_granted(),
            });
        }
        if !problems.0.is_empty() {
            return Err(PolicyError::Invalid {
                path: source.to_path_buf(),
                problems: problems.0,
            });
        }
        Ok(Policy {
            component_id: component_id.to_string(),
            source: source.to_path_buf(),
            description: file.description,
            instance: file.instance,
            limits: limits_from(&file.limits),
            directories,
            environment,
            grants,
            home,
        })
    }

    /// The scope of capability grant `G`, when this policy grants it.
    pub fn grant<G: Grant>(&self) -> Option<&G> {
        self.grants.iter().find_map(|entry| {
            let grant: &dyn std::any::Any = entry.grant.as_deref()?;
            grant.downcast_ref::<G>()
        })
    }

    /// Whether the policy grants the capability whose key is `key`.
    pub fn grants_key(&self, key: &str) -> bool {
        self.grants
            .iter()
            .any(|entry| entry.key == key && entry.grant.is_some())
    }
}

/// The keys under `[grants]` this crate reads itself; every other key belongs to a capability.
pub const BASELINE_KEYS: [&str; 2] = ["directories", "environment"];

fn is_baseline_key(key: &str) -> bool {
    BASELINE_KEYS.contains(&key)
}

/// The problems found so far while reading a policy.
#[derive(Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }
}

fn limits_from(file: &LimitsFile) -> Limits {
    Limits {
        deadline: Duration::from_millis(file.deadline_ms),
        memory_bytes: file.memory_mib * 1024 * 1024,
        table_elements: file.table_elements,
        output_bytes: file.output_bytes,
    }
}

fn check_limits(limits: &LimitsFile, problems: &mut Problems) {
    let mut range = |key: &str, value: u64, min: u64, max: u64| {
        if !(min..=max).contains(&value) {
            problems.add(
                format!("limits.{key}"),
                format!("{value} is out of range; allowed {min} to {max}"),
            );
        }
    };
    range("deadline-ms", limits.deadline_ms, 1, 3_600_000);
    range("memory-mib", limits.memory_mib, 1, 4096);
    range(
        "table-elements",
        u64::from(limits.table_elements),
        1,
        1_000_000,
    );
    range("output-bytes", limits.output_bytes, 0, 67_108_864);
}

fn check_directories(
    directories: &[DirectoryGrantFile],
    home: Option<&Path>,
    problems: &mut Problems,
) -> Vec<DirectoryGrant> {
    let mut guests = HashSet::new();
    let mut granted = Vec::new();
    for (i, dir) in directories.iter().enumerate() {
        let key = |field: &str| format!("grants.directories[{i}].{field}");
        let host = match host_path(&dir.host, home) {
            Ok(host) => Some(host),
            Err(e) => {
                problems.add(key("host"), format!("{:?}: {e}", dir.host));
                None
            }
        };
        let guest_ok = match check_guest_path(&dir.guest) {
            Ok(()) => {
                if guests.insert(dir.guest.as_str()) {
                    true
                } else {
                    problems.add(
                        key("guest"),
                        format!("{:?} is already granted by an earlier directory", dir.guest),
                    );
                    false
                }
            }
            Err(e) => {
                problems.add(key("guest"), format!("{:?}: {e}", dir.guest));
                false
            }
        };
        if let (Some(host), true) = (host, guest_ok) {
            granted.push(DirectoryGrant {
                host,
                guest: dir.guest.clone(),
                access: dir.access,
                create: dir.create,
            });
        }
    }
    granted
}

/// Expands and checks a host path written in a policy: absolute, or `~/...` (in the home
/// directory), without `..`; canonical when it exists.
pub fn host_path(text: &str, home: Option<&Path>) -> Result<PathBuf, String> {
    if text.contains('\0') {
        return Err("must not contain a NUL character".to_string());
    }
    let path = if let Some(rest) = text.strip_prefix("~/") {
        let home = home.ok_or(
            "starts with ~/ but the home directory is not known ($HOME is not set to an \
             absolute path)",
        )?;
        home.join(rest)
    } else if text.starts_with('~') {
        return Err(
            "only ~/ (your own home directory) is expanded; write ~/... or an absolute path"
                .to_string(),
        );
    } else if text.starts_with('/') {
        PathBuf::from(text)
    } else {
        return Err("must be an absolute path or start with ~/".to_string());
    };
    if path.components().any(|c| c == Component::ParentDir) {
        return Err("must not contain `..`; write the directory it means".to_string());
    }
    // Rebuilding from components drops `.` components, repeated and trailing slashes.
    let path: PathBuf = path.components().collect();
    Ok(std::fs::canonicalize(&path).unwrap_or(path))
}

/// A guest path must be absolute and normalised: `/`, or `/` followed by non-empty segments that
/// are neither `.` nor `..`, with no trailing slash.
fn check_guest_path(guest: &str) -> Result<(), String> {
    if guest.contains('\0') {
        return Err("must not contain a NUL character".to_string());
    }
    let Some(rest) = guest.strip_prefix('/') else {
        return Err("must be an absolute path".to_string());
    };
    if rest.is_empty() {
        return Ok(());
    }
    if rest.ends_with('/') {
        return Err("must not end with '/'".to_string());
    }
    for segment in rest.split('/') {
        match segment {
            "" => return Err("must not contain '//'".to_string()),
            "." | ".." => return Err(format!("must be normalised (no `{segment}` components)")),
            _ => {}
        }
    }
    Ok(())
}

fn check_environment(names: &[String], problems: &mut Problems) {
    let mut seen = HashSet::new();
    for (i, name) in names.iter().enumerate() {
        let key = format!("grants.environment[{i}]");
        if name.is_empty() {
            problems.add(key, "must not be empty");
        } else if name.contains('=') {
            problems.add(key, format!("{name:?}: a variable name cannot contain '='"));
        } else if name.contains('\0') {
            problems.add(key, format!("{name:?}: must not contain a NUL character"));
        } else if !seen.insert(name.as_str()) {
            problems.add(key, format!("{name:?} is listed twice"));
        }
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
