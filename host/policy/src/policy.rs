//! A validated policy: parsing, every validation rule, and the queries the runtime asks.

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::file::{Access, DirectoryGrantFile, GrantsFile, InstanceMode, LimitsFile, PolicyFile};
use crate::network::{NetworkGrant, Scheme};
use crate::topic::TopicPattern;
use crate::POLICY_VERSION;

/// A policy checked and ready to enforce. Everything not listed here is denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub component_id: String,
    /// The policy file, for messages ("granted by policy/echo.toml").
    pub source: PathBuf,
    pub description: Option<String>,
    pub instance: InstanceMode,
    pub limits: Limits,
    pub directories: Vec<DirectoryGrant>,
    pub environment: Vec<String>,
    pub network: Vec<NetworkGrant>,
    pub events: Vec<TopicPattern>,
    pub log: bool,
    pub awake: bool,
    pub dialog: bool,
    /// `grants.system`: `None` when the interface is not granted.
    pub system: Option<SystemGrant>,
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

/// `grants.system`: the program names whose `--version` the component may read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemGrant {
    pub programs: Vec<String>,
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
    /// Parse and validate a policy file's text. `~/` in directory grants is expanded against
    /// `$HOME`.
    pub fn parse(component_id: &str, source: &Path, text: &str) -> Result<Policy, PolicyError> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Self::parse_with_home(component_id, source, text, home.as_deref())
    }

    /// [`Policy::parse`] with the home directory given instead of read from `$HOME` (`None`:
    /// unknown, so `~/` paths are rejected).
    pub fn parse_with_home(
        component_id: &str,
        source: &Path,
        text: &str,
        home: Option<&Path>,
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
        Self::from_file(component_id, source, file, home)
    }

    /// Read the file at `path`, then [`Policy::parse`] it.
    pub fn load(component_id: &str, path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(component_id, path, &text)
    }

    /// Validate a deserialised file (of version 1), collecting every problem.
    fn from_file(
        component_id: &str,
        source: &Path,
        file: PolicyFile,
        home: Option<&Path>,
    ) -> Result<Policy, PolicyError> {
        let home = home.filter(|h| h.is_absolute()).map(Path::to_path_buf);
        let mut problems = Problems::default();
        check_limits(&file.limits, &mut problems);
        let GrantsFile {
            directories,
            environment,
            network,
            events,
            log,
            awake,
            dialog,
            system,
        } = file.grants;
        let directories = check_directories(&directories, home.as_deref(), &mut problems);
        check_environment(&environment, &mut problems);
        let network = network
            .iter()
            .enumerate()
            .filter_map(|(i, text)| match NetworkGrant::parse(text) {
                Ok(grant) => Some(grant),
                Err(e) => {
                    problems.add(format!("grants.network[{i}]"), format!("{text:?}: {e}"));
                    None
                }
            })
            .collect();
        let events = events
            .iter()
            .enumerate()
            .filter_map(|(i, text)| match TopicPattern::parse(text) {
                Ok(pattern) => Some(pattern),
                Err(e) => {
                    problems.add(format!("grants.events[{i}]"), format!("{text:?}: {e}"));
                    None
                }
            })
            .collect();
        if dialog && file.instance == InstanceMode::Persistent {
            problems.add(
                "grants.dialog",
                "cannot be granted to a persistent component: a pick is mounted into the \
                 instances of the session that made it, and a persistent instance serves every \
                 session (use instance = \"fresh\")",
            );
        }
        let system = system.map(|system| {
            for (i, name) in system.programs.iter().enumerate() {
                if !is_program_name(name) {
                    problems.add(
                        format!("grants.system.programs[{i}]"),
                        format!(
                            "{name:?} is not a program file name (1 to 64 of A-Z a-z 0-9 . _ + -)"
                        ),
                    );
                }
            }
            SystemGrant {
                programs: system.programs,
            }
        });
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
            network,
            events,
            log,
            awake,
            dialog,
            system,
            home,
        })
    }

    /// Whether the component may publish on `topic`.
    pub fn allows_topic(&self, topic: &str) -> bool {
        self.events.iter().any(|pattern| pattern.matches(topic))
    }

    /// The grant that lets the component reach `scheme://host:port`, if any. The host must
    /// match exactly, ignoring case; an IPv6 host may be given with or without brackets.
    pub fn network_grant_for(
        &self,
        scheme: Scheme,
        host: &str,
        port: u16,
    ) -> Option<&NetworkGrant> {
        self.network
            .iter()
            .find(|grant| grant.matches(scheme, host, port))
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

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
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

/// Expand and check a directory grant's host path.
fn host_path(text: &str, home: Option<&Path>) -> Result<PathBuf, String> {
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
mod tests {
    use super::*;

    const HOME: &str = "/home/reviewer";

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse_with_home(
            "echo",
            Path::new("policy/echo.toml"),
            text,
            Some(Path::new(HOME)),
        )
    }

    fn ok(text: &str) -> Policy {
        parse(text).unwrap_or_else(|e| panic!("rejected: {e}\n--- policy ---\n{text}"))
    }

    /// The problems of an invalid policy, as `key: message` strings.
    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Err(PolicyError::Invalid { problems, .. }) => {
                problems.iter().map(ToString::to_string).collect()
            }
            Err(other) => panic!("expected validation problems, got: {other}"),
            Ok(p) => panic!("accepted: {p:?}\n--- policy ---\n{text}"),
        }
    }

    /// The one problem of an invalid policy.
    fn problem(text: &str) -> String {
        let mut all = problems(text);
        assert_eq!(all.len(), 1, "expected one problem, got {all:#?}");
        all.remove(0)
    }

    fn syntax_error(text: &str) -> String {
        match parse(text) {
            Err(e @ PolicyError::Syntax { .. }) => e.to_string(),
            Err(other) => panic!("expected a syntax error, got: {other}"),
            Ok(p) => panic!("accepted: {p:?}"),
        }
    }

    /// `s` as a TOML string literal.
    fn quoted(s: &str) -> String {
        toml::Value::String(s.to_string()).to_string()
    }

    fn directory(host: &str, guest: &str) -> String {
        format!(
            "version = 1\n[[grants.directories]]\nhost = {}\nguest = {}\naccess = \"read-only\"\n",
            quoted(host),
            quoted(guest)
        )
    }

    #[test]
    fn minimal_policy_grants_nothing_and_fills_defaults() {
        let p = ok("version = 1");
        assert_eq!(p.component_id, "echo");
        assert_eq!(p.source, Path::new("policy/echo.toml"));
        assert_eq!(p.description, None);
        assert_eq!(p.instance, InstanceMode::Fresh);
        assert_eq!(
            p.limits,
            Limits {
                deadline: Duration::from_secs(30),
                memory_bytes: 64 * 1024 * 1024,
                table_elements: 10_000,
                output_bytes: 1_048_576,
            }
        );
        assert_eq!(p.limits, Limits::default());
        assert!(p.directories.is_empty());
        assert!(p.environment.is_empty());
        assert!(p.network.is_empty());
        assert!(p.events.is_empty());
        assert!(!p.log);
        assert!(!p.allows_topic("echo.said"));
        assert!(p
            .network_grant_for(Scheme::Https, "example.com", 443)
            .is_none());
    }

    #[test]
    fn full_example_is_accepted() {
        let p = ok(r#"
            version = 1
            description = "Echoes its input"
            instance = "persistent"

            [limits]
            deadline-ms = 1500
            memory-mib = 128
            table-elements = 500
            output-bytes = 0

            [grants]
            environment = ["LANG", "TZ"]
            network = ["https://api.example.com", "http://127.0.0.1:8080"]
            events = ["echo.*", "echo.said"]
            log = true

            [[grants.directories]]
            host = "~/capbridge/files"
            guest = "/files"
            access = "read-only"

            [[grants.directories]]
            host = "/srv/data"
            guest = "/data"
            access = "read-write"
            create = true
        "#);
        assert_eq!(p.description.as_deref(), Some("Echoes its input"));
        assert_eq!(p.instance, InstanceMode::Persistent);
        assert_eq!(p.limits.deadline, Duration::from_millis(1500));
        assert_eq!(p.limits.memory_bytes, 128 << 20);
        assert_eq!(p.limits.table_elements, 500);
        assert_eq!(p.limits.output_bytes, 0);
        assert_eq!(p.environment, ["LANG", "TZ"]);
        assert_eq!(p.network.len(), 2);
        assert_eq!(p.network[1].port, 8080);
        assert_eq!(
            p.events,
            [
                TopicPattern::Below("echo".into()),
                TopicPattern::Exact("echo.said".into())
            ]
        );
        assert!(p.log);
        assert_eq!(
            p.directories,
            [
                DirectoryGrant {
                    host: PathBuf::from("/home/reviewer/capbridge/files"),
                    guest: "/files".into(),
                    access: Access::ReadOnly,
                    create: false,
                },
                DirectoryGrant {
                    host: PathBuf::from("/srv/data"),
                    guest: "/data".into(),
                    access: Access::ReadWrite,
                    create: true,
                }
            ]
        );
    }

    #[test]
    fn version_is_required_and_must_be_1() {
        assert!(syntax_error("").contains("missing field `version`"));
        assert!(syntax_error("description = \"x\"").contains("version"));
        assert_eq!(
            problem("version = 2"),
            "version: unsupported policy version 2; this capbridge reads version 1"
        );
        assert!(problem("version = 0").contains("unsupported policy version 0"));
        // A newer file is reported by its version, not by the keys this version does not know.
        assert!(
            problem("version = 2\n[sandbox]\nnew = true").contains("unsupported policy version 2")
        );
        assert!(syntax_error("version = \"1\"").contains("version"));
    }

    #[test]
    fn unknown_keys_are_rejected_everywhere() {
        let cases = [
            ("version = 1\nnetwrok = []", "netwrok"),
            ("version = 1\n[limits]\ncpu-ms = 5", "cpu-ms"),
            ("version = 1\n[limits]\ndeadline_ms = 5", "deadline_ms"),
            ("version = 1\n[grants]\nprocesses = [\"ls\"]", "processes"),
            ("version = 1\n[grants]\nsockets = true", "sockets"),
            (
                "version = 1\n[[grants.directories]]\nhost = \"/a\"\nguest = \"/a\"\naccess = \"read-only\"\nfollow-symlinks = true",
                "follow-symlinks",
            ),
            ("version = 1\n[deny]\nnetwork = []", "deny"),
        ];
        for (text, key) in cases {
            let message = syntax_error(text);
            assert!(
                message.contains(&format!("unknown field `{key}`")),
                "{message}"
            );
            assert!(message.contains("policy/echo.toml"), "{message}");
            assert!(message.contains("line"), "{message}");
        }
    }

    #[test]
    fn wrong_types_and_values_are_syntax_errors() {
        assert!(syntax_error("version = 1\ninstance = \"shared\"").contains("shared"));
        assert!(syntax_error("version = 1\n[limits]\nmemory-mib = -1").contains("memory-mib"));
        assert!(syntax_error("version = 1\n[grants]\nlog = \"yes\"").contains("log"));
        assert!(
            syntax_error("version = 1\n[grants]\nnetwork = \"https://a.com\"").contains("network")
        );
        let missing =
            syntax_error("version = 1\n[[grants.directories]]\nhost = \"/a\"\nguest = \"/a\"");
        assert!(missing.contains("missing field `access`"), "{missing}");
        assert!(syntax_error(
            "version = 1\n[[grants.directories]]\nhost = \"/a\"\nguest = \"/a\"\naccess = \"write\""
        )
        .contains("write"));
        assert!(syntax_error("version = 1\nversion = 1").contains("duplicate"));
        assert!(syntax_error("version = ").contains("line 1"));
    }

    #[test]
    fn limits_are_range_checked() {
        for (key, low, high, below, above) in [
            ("deadline-ms", 1, 3_600_000, Some(0), 3_600_001),
            ("memory-mib", 1, 4096, Some(0), 4097),
            ("table-elements", 1, 1_000_000, Some(0), 1_000_001),
            ("output-bytes", 0, 67_108_864, None, 67_108_865),
        ] {
            ok(&format!("version = 1\n[limits]\n{key} = {low}"));
            ok(&format!("version = 1\n[limits]\n{key} = {high}"));
            let message = problem(&format!("version = 1\n[limits]\n{key} = {above}"));
            assert!(
                message.starts_with(&format!("limits.{key}: {above} is out of range")),
                "{message}"
            );
            if let Some(below) = below {
                let message = problem(&format!("version = 1\n[limits]\n{key} = {below}"));
                assert!(message.starts_with(&format!("limits.{key}: ")), "{message}");
            }
        }
        let p = ok("version = 1\n[limits]\nmemory-mib = 4096\ndeadline-ms = 3600000");
        assert_eq!(p.limits.memory_bytes, 4096 << 20);
        assert_eq!(p.limits.deadline, Duration::from_secs(3600));
    }

    #[test]
    fn instance_modes() {
        assert_eq!(
            ok("version = 1\ninstance = \"fresh\"").instance,
            InstanceMode::Fresh
        );
        assert_eq!(
            ok("version = 1\ninstance = \"persistent\"").instance,
            InstanceMode::Persistent
        );
    }

    #[test]
    fn home_is_expanded() {
        let p = ok(&directory("~/capbridge/files", "/files"));
        assert_eq!(
            p.directories[0].host,
            Path::new("/home/reviewer/capbridge/files")
        );
        let p = ok(&directory("~/", "/home"));
        assert_eq!(p.directories[0].host, Path::new("/home/reviewer"));
        assert_eq!(p.home.as_deref(), Some(Path::new(HOME)));
    }

    #[test]
    fn parse_takes_home_from_the_environment() {
        let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
            return;
        };
        let text = directory("~/capbridge-test-no-such-dir", "/x");
        let p = Policy::parse("echo", Path::new("policy/echo.toml"), &text).unwrap();
        assert_eq!(
            p.directories[0].host,
            home.join("capbridge-test-no-such-dir")
        );
    }

    #[test]
    fn tilde_without_a_known_home_is_rejected() {
        let err =
            Policy::parse_with_home("echo", Path::new("p.toml"), &directory("~/x", "/x"), None)
                .unwrap_err();
        assert!(
            err.to_string().contains("home directory is not known"),
            "{err}"
        );
        let err = Policy::parse_with_home(
            "echo",
            Path::new("p.toml"),
            &directory("~/x", "/x"),
            Some(Path::new("relative/home")),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("home directory is not known"),
            "{err}"
        );
    }

    #[test]
    fn host_paths_must_be_absolute_or_home_relative() {
        for host in [
            "files",
            "./files",
            "../files",
            "~user/files",
            "~",
            "~files",
            "",
        ] {
            let message = problem(&directory(host, "/files"));
            assert!(
                message.starts_with("grants.directories[0].host: "),
                "{message}"
            );
        }
        assert!(problem(&directory("~bob/x", "/x")).contains("only ~/"));
        assert!(problem(&directory("/srv/../etc", "/x")).contains(".."));
        assert!(problem(&directory("~/../other", "/x")).contains(".."));
        assert!(problem(&directory("/srv/a\0b", "/x")).contains("NUL"));
    }

    #[test]
    fn host_paths_are_normalised_and_canonicalised_when_they_exist() {
        let p = ok(&directory("/no-such-dir-capbridge//a/./b/", "/x"));
        assert_eq!(
            p.directories[0].host,
            Path::new("/no-such-dir-capbridge/a/b")
        );

        let temp = tempfile::tempdir().unwrap();
        let real = temp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = temp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let p = ok(&directory(link.to_str().unwrap(), "/x"));
        assert_eq!(p.directories[0].host, std::fs::canonicalize(&real).unwrap());

        let missing = temp.path().join("link").join("missing");
        let p = ok(&directory(missing.to_str().unwrap(), "/x"));
        assert_eq!(
            p.directories[0].host, missing,
            "a missing path is kept as written"
        );
    }

    #[test]
    fn guest_paths_must_be_absolute_and_normalised() {
        for guest in ["/", "/files", "/a/b-c/d.e", "/..x", "/.hidden"] {
            ok(&directory("/srv", guest));
        }
        for (guest, why) in [
            ("files", "absolute"),
            ("", "absolute"),
            ("/files/", "end with '/'"),
            ("/a//b", "'//'"),
            ("/a/./b", "`.`"),
            ("/a/../b", "`..`"),
            ("/..", "`..`"),
            ("/.", "`.`"),
            ("/a\0", "NUL"),
        ] {
            let message = problem(&directory("/srv", guest));
            assert!(
                message.starts_with("grants.directories[0].guest: "),
                "{message}"
            );
            assert!(message.contains(why), "{guest:?}: {message}");
        }
    }

    #[test]
    fn guest_paths_must_be_unique() {
        let text = r#"
            version = 1
            [[grants.directories]]
            host = "/a"
            guest = "/files"
            access = "read-only"
            [[grants.directories]]
            host = "/b"
            guest = "/other"
            access = "read-only"
            [[grants.directories]]
            host = "/c"
            guest = "/files"
            access = "read-write"
        "#;
        assert_eq!(
            problem(text),
            "grants.directories[2].guest: \"/files\" is already granted by an earlier directory"
        );
        // The same host at two guest paths is allowed.
        ok(r#"
            version = 1
            [[grants.directories]]
            host = "/a"
            guest = "/one"
            access = "read-only"
            [[grants.directories]]
            host = "/a"
            guest = "/two"
            access = "read-only"
        "#);
    }

    #[test]
    fn environment_names() {
        let p = ok("version = 1\n[grants]\nenvironment = [\"LANG\", \"lower_case\", \"A1\"]");
        assert_eq!(p.environment, ["LANG", "lower_case", "A1"]);
        assert_eq!(
            problem("version = 1\n[grants]\nenvironment = [\"\"]"),
            "grants.environment[0]: must not be empty"
        );
        assert!(problem("version = 1\n[grants]\nenvironment = [\"A=B\"]")
            .starts_with("grants.environment[0]: \"A=B\""));
        assert!(problem("version = 1\n[grants]\nenvironment = [\"A\\u0000\"]").contains("NUL"));
        assert_eq!(
            problem("version = 1\n[grants]\nenvironment = [\"LANG\", \"TZ\", \"LANG\"]"),
            "grants.environment[2]: \"LANG\" is listed twice"
        );
    }

    #[test]
    fn network_entries_are_checked_with_their_index() {
        let message = problem(
            "version = 1\n[grants]\nnetwork = [\"https://ok.example\", \"https://example.com/api\"]",
        );
        assert!(
            message.starts_with("grants.network[1]: \"https://example.com/api\": "),
            "{message}"
        );
        assert!(problem("version = 1\n[grants]\nnetwork = [\"ftp://x\"]")
            .contains("only http and https"));
        assert!(
            problem("version = 1\n[grants]\nnetwork = [\"https://*.x.com\"]").contains("wildcard")
        );
    }

    #[test]
    fn event_patterns_are_checked_with_their_index() {
        let p = ok("version = 1\n[grants]\nevents = [\"echo.*\", \"a.b\", \"*\"]");
        assert_eq!(p.events.len(), 3);
        for bad in ["", "Echo", "echo.", "a..b", "echo*", "*.x", "x.*.y"] {
            let message = problem(&format!(
                "version = 1\n[grants]\nevents = [\"ok\", {}]",
                quoted(bad)
            ));
            assert!(message.starts_with("grants.events[1]: "), "{message}");
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
            version = 1
            [limits]
            deadline-ms = 0
            memory-mib = 9999
            [grants]
            environment = ["", "A=B"]
            network = ["ftp://x", "https://ok.example"]
            events = ["Bad"]
            [[grants.directories]]
            host = "relative"
            guest = "not/absolute"
            access = "read-only"
        "#;
        let all = problems(text);
        let keys: Vec<&str> = all.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "limits.deadline-ms",
                "limits.memory-mib",
                "grants.directories[0].host",
                "grants.directories[0].guest",
                "grants.environment[0]",
                "grants.environment[1]",
                "grants.network[0]",
                "grants.events[0]",
            ]
        );
        let err = parse(text).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with("policy file policy/echo.toml is not valid:\n  limits.deadline-ms: "),
            "{shown}"
        );
        assert_eq!(shown.lines().count(), 9, "{shown}");
        assert_eq!(err.path(), Path::new("policy/echo.toml"));
    }

    #[test]
    fn topics_are_allowed_by_any_matching_pattern() {
        let p = ok("version = 1\n[grants]\nevents = [\"echo.*\", \"status\"]");
        assert!(p.allows_topic("echo.said"));
        assert!(p.allows_topic("echo.a.b"));
        assert!(p.allows_topic("status"));
        assert!(!p.allows_topic("echo"));
        assert!(!p.allows_topic("echoes.x"));
        assert!(!p.allows_topic("status.changed"));
        assert!(!p.allows_topic("other"));
        let all = ok("version = 1\n[grants]\nevents = [\"*\"]");
        assert!(all.allows_topic("anything.at.all"));
    }

    #[test]
    fn network_grant_lookup() {
        let p = ok(
            "version = 1\n[grants]\nnetwork = [\"https://api.example.com\", \"http://127.0.0.1:8080\"]",
        );
        let g = p
            .network_grant_for(Scheme::Https, "API.EXAMPLE.COM", 443)
            .unwrap();
        assert_eq!(g.text, "https://api.example.com");
        assert!(p
            .network_grant_for(Scheme::Http, "api.example.com", 443)
            .is_none());
        assert!(p
            .network_grant_for(Scheme::Https, "api.example.com", 80)
            .is_none());
        assert!(p
            .network_grant_for(Scheme::Https, "example.com", 443)
            .is_none());
        let g = p
            .network_grant_for(Scheme::Http, "127.0.0.1", 8080)
            .unwrap();
        assert_eq!(g.text, "http://127.0.0.1:8080");
        assert!(p.network_grant_for(Scheme::Http, "127.0.0.1", 80).is_none());
        assert!(p
            .network_grant_for(Scheme::Https, "127.0.0.1", 8080)
            .is_none());
        assert!(p
            .network_grant_for(Scheme::Http, "localhost", 8080)
            .is_none());
    }

    #[test]
    fn load_reads_the_file_and_names_it_in_errors() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("echo.toml");
        std::fs::write(&path, "version = 1\n[grants]\nlog = true\n").unwrap();
        let p = Policy::load("echo", &path).unwrap();
        assert!(p.log);
        assert_eq!(p.source, path);

        let missing = temp.path().join("missing.toml");
        let err = Policy::load("missing", &missing).unwrap_err();
        assert!(matches!(err, PolicyError::Read { .. }));
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );

        std::fs::write(&path, "version = 1\nbogus = 1\n").unwrap();
        let err = Policy::load("echo", &path).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains(&path.display().to_string()), "{shown}");
        assert!(shown.contains("line 2"), "{shown}");
        assert!(shown.contains("bogus"), "{shown}");
    }

    #[test]
    fn awake_dialog_and_system_are_granted_only_when_written() {
        let p = ok("version = 1");
        assert!(!p.awake && !p.dialog && p.system.is_none());
        let p = ok(
            "version = 1\n[grants]\nawake = true\ndialog = true\n[grants.system]\nprograms = [\"git\", \"python3\", \"g++\"]\n",
        );
        assert!(p.awake && p.dialog);
        assert_eq!(
            p.system.unwrap().programs,
            ["git", "python3", "g++"].map(String::from)
        );
        // An empty table grants the facts, and no program.
        let p = ok("version = 1\n[grants.system]\n");
        assert!(p.system.unwrap().programs.is_empty());
    }

    #[test]
    fn pickers_are_not_for_persistent_components() {
        let message = problem("version = 1\ninstance = \"persistent\"\n[grants]\ndialog = true\n");
        assert!(message.starts_with("grants.dialog"), "{message}");
        assert!(message.contains("persistent"), "{message}");
        ok("version = 1\ninstance = \"persistent\"\n[grants]\nawake = true\n");
    }

    #[test]
    fn system_programs_are_bare_file_names() {
        for bad in ["", "..", ".", "bin/git", "/usr/bin/git", "a b", "x\u{0}"] {
            let text = format!(
                "version = 1\n[grants.system]\nprograms = [{}]\n",
                quoted(bad)
            );
            let message = problem(&text);
            assert!(
                message.contains("grants.system.programs[0]"),
                "{bad:?}: {message}"
            );
        }
        let long = "a".repeat(65);
        let text = format!(
            "version = 1\n[grants.system]\nprograms = [{}]\n",
            quoted(&long)
        );
        assert!(problem(&text).contains("not a program file name"));
        assert!(syntax_error("version = 1\n[grants.system]\nprogram = []\n").contains("program"));
    }

    #[test]
    fn explain_flags_pickers_and_programs() {
        let p = ok("version = 1\n[grants]\nawake = true\ndialog = true\n[grants.system]\nprograms = [\"git\"]\n");
        let explained = p.explain();
        let risks: Vec<String> = explained.risks().map(|l| l.text.clone()).collect();
        assert!(risks.iter().any(|r| r.contains("pickers")), "{risks:?}");
        assert!(
            risks
                .iter()
                .any(|r| r.contains("--version") && r.contains("git")),
            "{risks:?}"
        );
        let p = ok("version = 1");
        let not_granted = p.explain().not_granted.join("\n");
        assert!(not_granted.contains("no sleep prevention"), "{not_granted}");
        assert!(not_granted.contains("no native pickers"), "{not_granted}");
        assert!(not_granted.contains("no system facts"), "{not_granted}");
    }
}
