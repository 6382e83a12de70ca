//! A policy in plain language, with the grants a reviewer should look at flagged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::file::{Access, InstanceMode};
use crate::network::Scheme;
use crate::policy::Policy;
use crate::topic::TopicPattern;

/// Deadlines above this are flagged.
const LONG_DEADLINE: Duration = Duration::from_secs(5 * 60);
/// Memory limits above this are flagged.
const LARGE_MEMORY_BYTES: u64 = 1024 * 1024 * 1024;
/// Environment variable names containing one of these (in any case) are flagged.
const SECRET_WORDS: [&str; 5] = ["TOKEN", "SECRET", "KEY", "PASSWORD", "CREDENTIAL"];

/// A plain-language summary of a policy for a reviewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub component_id: String,
    /// The policy file explained.
    pub source: PathBuf,
    pub description: Option<String>,
    /// One line for the instance mode, one per limit, one per grant.
    pub lines: Vec<ExplainLine>,
    /// What the component cannot do, one entry per kind of grant it lacks.
    pub not_granted: Vec<String>,
}

/// One statement about what the component can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainLine {
    pub text: String,
    /// Why a reviewer should look at this line, if they should.
    pub risk: Option<String>,
}

impl ExplainLine {
    fn plain(text: String) -> Self {
        ExplainLine { text, risk: None }
    }

    fn risky(text: String, risk: Option<String>) -> Self {
        ExplainLine { text, risk }
    }
}

impl Explanation {
    /// The lines a reviewer should look at.
    pub fn risks(&self) -> impl Iterator<Item = &ExplainLine> {
        self.lines.iter().filter(|line| line.risk.is_some())
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Component {} (policy {})",
            self.component_id,
            self.source.display()
        )?;
        if let Some(description) = &self.description {
            writeln!(f, "  {description}")?;
        }
        let risks = self.risks().count();
        match risks {
            0 => writeln!(f, "Nothing flagged for review.")?,
            1 => writeln!(f, "1 line flagged for review (RISK).")?,
            n => writeln!(f, "{n} lines flagged for review (RISK).")?,
        }
        writeln!(f, "\nGrants and limits:")?;
        for line in &self.lines {
            match &line.risk {
                Some(risk) => writeln!(f, "  RISK: {} -- {risk}", line.text)?,
                None => writeln!(f, "  - {}", line.text)?,
            }
        }
        writeln!(f, "\nNot granted:")?;
        for item in &self.not_granted {
            writeln!(f, "  - {item}")?;
        }
        Ok(())
    }
}

impl Policy {
    /// Explain this policy in plain language, flagging risky grants.
    pub fn explain(&self) -> Explanation {
        let mut lines = Vec::new();
        lines.push(match self.instance {
            InstanceMode::Fresh => ExplainLine::plain(
                "Runs in a fresh instance for every call; nothing survives a call.".to_string(),
            ),
            InstanceMode::Persistent => ExplainLine::risky(
                "Runs in one long-lived instance; calls are serialised.".to_string(),
                Some(
                    "state survives between calls, from different callers: what one caller \
                     leaves behind, the next can see"
                        .to_string(),
                ),
            ),
        });
        lines.extend(self.explain_limits());
        lines.extend(self.explain_directories());
        for name in &self.environment {
            let upper = name.to_ascii_uppercase();
            let risk = SECRET_WORDS.iter().any(|w| upper.contains(w)).then(|| {
                "the name suggests a secret; the component can read its value".to_string()
            });
            lines.push(ExplainLine::risky(
                format!("Can read the host environment variable {name}."),
                risk,
            ));
        }
        for grant in &self.network {
            let what = match grant.scheme {
                Scheme::Https => "HTTPS",
                Scheme::Http => "plain HTTP",
            };
            let host = if grant.host.contains(':') {
                format!("[{}]", grant.host)
            } else {
                grant.host.clone()
            };
            let risk = if grant.names_private_address() {
                "reaches this machine or the local network, where services often trust local \
                 callers"
            } else {
                "can send data off this machine and bring data in"
            };
            lines.push(ExplainLine::risky(
                format!(
                    "Can make {what} requests to {host} port {} (granted as {:?}).",
                    grant.port, grant.text
                ),
                Some(risk.to_string()),
            ));
        }
        for pattern in &self.events {
            lines.push(match pattern {
                TopicPattern::Exact(topic) => {
                    ExplainLine::plain(format!("Can publish events on the topic {topic}."))
                }
                TopicPattern::Below(prefix) => ExplainLine::plain(format!(
                    "Can publish events on any topic below {prefix} ({pattern})."
                )),
                TopicPattern::Any => ExplainLine::risky(
                    "Can publish events on every topic (*).".to_string(),
                    Some(
                        "it can publish events that the web app and other components expect \
                         only from someone else"
                            .to_string(),
                    ),
                ),
            });
        }
        if self.log {
            lines.push(ExplainLine::plain("Can write to the host log.".to_string()));
        }
        if self.awake {
            lines.push(ExplainLine::plain(
                "Can keep the machine awake (inhibit the screen saver and idle sleep) while a \
                 session holds it; holds end with their session."
                    .to_string(),
            ));
        }
        if self.dialog {
            lines.push(ExplainLine::risky(
                "Can show native pickers; a directory the person picks becomes readable (or \
                 writable, as the picker says) by this component for the session that asked."
                    .to_string(),
                Some(
                    "what a person picks widens this component's file access beyond the \
                     directories listed above, for that session only"
                        .to_string(),
                ),
            ));
        }
        if let Some(system) = &self.system {
            lines.push(ExplainLine::plain(
                "Can read the machine's OS name and version, architecture, kernel release and \
                 login shell."
                    .to_string(),
            ));
            if !system.programs.is_empty() {
                lines.push(ExplainLine::risky(
                    format!(
                        "Can run these programs with the single argument --version, where they \
                         lie in a granted directory: {}.",
                        system.programs.join(", ")
                    ),
                    Some(
                        "it starts host processes (no input, empty environment but PATH, killed \
                         after 3 seconds); a program that ignores --version runs as if started \
                         bare"
                            .to_string(),
                    ),
                ));
            }
        }

        let mut not_granted = Vec::new();
        if self.directories.is_empty() {
            not_granted.push("no files: it sees no host directory".to_string());
        }
        if self.network.is_empty() {
            not_granted.push("no network: it cannot make HTTP(S) requests".to_string());
        }
        if self.environment.is_empty() {
            not_granted.push("no environment variables: it sees an empty environment".to_string());
        }
        if self.events.is_empty() {
            not_granted.push("no events: it cannot publish on the event bus".to_string());
        }
        if !self.log {
            not_granted.push("no host log".to_string());
        }
        if !self.awake {
            not_granted.push("no sleep prevention".to_string());
        }
        if !self.dialog {
            not_granted.push("no native pickers".to_string());
        }
        if self.system.is_none() {
            not_granted.push("no system facts and no programs to run".to_string());
        }
        not_granted.push("no raw sockets (wasi:sockets is never granted)".to_string());
        not_granted.push(
            "no other host interface: a component importing anything beyond the baseline and \
             the grants above fails to load"
                .to_string(),
        );

        Explanation {
            component_id: self.component_id.clone(),
            source: self.source.clone(),
            description: self.description.clone(),
            lines,
            not_granted,
        }
    }

    fn explain_limits(&self) -> Vec<ExplainLine> {
        let limits = &self.limits;
        let deadline = describe_duration(limits.deadline);
        let memory = describe_bytes(limits.memory_bytes);
        vec![
            ExplainLine::risky(
                format!("Each call may run for up to {deadline} (wall clock)."),
                (limits.deadline > LONG_DEADLINE).then(|| {
                    format!("a deadline over 5 min lets one call hold the host for {deadline}")
                }),
            ),
            ExplainLine::risky(
                format!("Each instance may use up to {memory} of linear memory."),
                (limits.memory_bytes > LARGE_MEMORY_BYTES).then(|| {
                    format!(
                        "more than 1 GiB per instance; {memory} is a large share of the machine"
                    )
                }),
            ),
            ExplainLine::plain(format!(
                "Each table may hold up to {} elements.",
                limits.table_elements
            )),
            ExplainLine::plain(format!(
                "Up to {} of stdout, and of stderr, is kept per call; the rest is dropped.",
                describe_bytes(limits.output_bytes)
            )),
        ]
    }

    fn explain_directories(&self) -> Vec<ExplainLine> {
        // $HOME as written and, if it is a symbolic link, where it points.
        let homes: Vec<PathBuf> = self
            .home
            .iter()
            .flat_map(|home| [Some(home.clone()), std::fs::canonicalize(home).ok()])
            .flatten()
            .collect();
        let contains_home =
            |host: &Path| host == Path::new("/") || homes.iter().any(|h| h.starts_with(host));
        let under_home = |host: &Path| homes.iter().any(|h| host.starts_with(h));

        self.directories
            .iter()
            .map(|dir| {
                let host = dir.host.display();
                let created = if dir.create {
                    "; created at load if missing"
                } else {
                    ""
                };
                let (verb, risk) = match (dir.access, contains_home(&dir.host)) {
                    (Access::ReadOnly, false) => ("read", None),
                    (Access::ReadOnly, true) => (
                        "read",
                        Some(
                            "this is the home directory or contains it: every file of the user, \
                             including keys and credentials",
                        ),
                    ),
                    (Access::ReadWrite, true) => (
                        "read, change and delete",
                        Some(
                            "STRONG: read-write on the home directory or above it: it can change \
                             or delete every file of the user, and plant files that run later",
                        ),
                    ),
                    (Access::ReadWrite, false) if under_home(&dir.host) => (
                        "read, change and delete",
                        Some(
                            "STRONG: read-write inside the home directory: it can change or \
                             delete the user's files there",
                        ),
                    ),
                    (Access::ReadWrite, false) => (
                        "read, change and delete",
                        Some("read-write: it can change or delete the files there"),
                    ),
                };
                ExplainLine::risky(
                    format!(
                        "Can {verb} files in {host} (seen by the component as {}){created}.",
                        dir.guest
                    ),
                    risk.map(str::to_string),
                )
            })
            .collect()
    }
}

fn describe_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

fn describe_bytes(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explain(text: &str) -> Explanation {
        Policy::parse_with_home(
            "echo",
            Path::new("policy/echo.toml"),
            text,
            Some(Path::new("/home/reviewer")),
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .explain()
    }

    /// The line whose text contains `needle`.
    fn line<'a>(e: &'a Explanation, needle: &str) -> &'a ExplainLine {
        e.lines
            .iter()
            .find(|l| l.text.contains(needle))
            .unwrap_or_else(|| panic!("no line contains {needle:?} in:\n{e}"))
    }

    fn risk<'a>(e: &'a Explanation, needle: &str) -> &'a str {
        line(e, needle)
            .risk
            .as_deref()
            .unwrap_or_else(|| panic!("line with {needle:?} is not flagged:\n{e}"))
    }

    fn no_risk(e: &Explanation, needle: &str) {
        let l = line(e, needle);
        assert!(l.risk.is_none(), "{needle:?} flagged: {:?}", l.risk);
    }

    fn dir(host: &str, access: &str) -> String {
        format!(
            "version = 1\n[[grants.directories]]\nhost = {host:?}\nguest = \"/d\"\naccess = {access:?}\n"
        )
    }

    #[test]
    fn an_empty_policy_is_quiet_and_lists_what_is_not_granted() {
        let e = explain("version = 1\ndescription = \"Says hello\"");
        assert_eq!(e.risks().count(), 0, "{e}");
        no_risk(&e, "fresh instance");
        no_risk(&e, "30 s");
        no_risk(&e, "64 MiB");
        no_risk(&e, "10000 elements");
        no_risk(&e, "1 MiB of stdout");
        let shown = e.to_string();
        assert!(
            shown.starts_with("Component echo (policy policy/echo.toml)\n  Says hello\n"),
            "{shown}"
        );
        assert!(shown.contains("Nothing flagged for review."), "{shown}");
        assert!(!shown.contains("RISK:"), "{shown}");
        let not_granted = &shown[shown.find("Not granted:").expect("Not granted section")..];
        for what in [
            "no files",
            "no network",
            "no environment variables",
            "no events",
            "no host log",
            "no raw sockets",
        ] {
            assert!(not_granted.contains(what), "{what} missing from:\n{shown}");
        }
    }

    #[test]
    fn granted_things_are_not_listed_as_not_granted() {
        let e = explain(
            r#"
            version = 1
            [grants]
            environment = ["LANG"]
            network = ["https://api.example.com"]
            events = ["echo.said"]
            log = true
            [[grants.directories]]
            host = "/srv/files"
            guest = "/files"
            access = "read-only"
        "#,
        );
        let joined = e.not_granted.join("\n");
        for what in [
            "no files",
            "no network",
            "no environment",
            "no events",
            "no host log",
        ] {
            assert!(
                !joined.contains(what),
                "{what} listed although granted:\n{e}"
            );
        }
        assert!(joined.contains("no raw sockets"));
        no_risk(&e, "/srv/files");
        no_risk(&e, "LANG");
        no_risk(&e, "echo.said");
        no_risk(&e, "host log");
    }

    #[test]
    fn persistent_instances_are_flagged() {
        let e = explain("version = 1\ninstance = \"persistent\"");
        assert!(
            risk(&e, "long-lived").contains("state survives between calls, from different callers")
        );
    }

    #[test]
    fn large_limits_are_flagged() {
        let e = explain("version = 1\n[limits]\ndeadline-ms = 300000\nmemory-mib = 1024");
        no_risk(&e, "5 min");
        no_risk(&e, "1024 MiB");
        let e = explain("version = 1\n[limits]\ndeadline-ms = 300001\nmemory-mib = 1025");
        assert!(risk(&e, "300001 ms").contains("over 5 min"));
        assert!(risk(&e, "1025 MiB").contains("1 GiB"));
    }

    #[test]
    fn directories_are_flagged_by_access_and_place() {
        no_risk(&explain(&dir("/srv/data", "read-only")), "/srv/data");
        no_risk(
            &explain(&dir("~/capbridge/files", "read-only")),
            "/home/reviewer/capbridge/files",
        );

        let e = explain(&dir("/srv/data", "read-write"));
        let r = risk(&e, "/srv/data");
        assert!(r.contains("read-write") && !r.contains("STRONG"), "{r}");

        let e = explain(&dir("~/capbridge/files", "read-write"));
        let r = risk(&e, "/home/reviewer/capbridge/files");
        assert!(
            r.starts_with("STRONG") && r.contains("inside the home directory"),
            "{r}"
        );

        for host in ["~/", "/home/reviewer", "/home", "/"] {
            let e = explain(&dir(host, "read-only"));
            assert!(
                risk(&e, "(seen by").contains("home directory or contains it"),
                "{host}"
            );
            let e = explain(&dir(host, "read-write"));
            assert!(
                risk(&e, "(seen by").contains("STRONG: read-write on the home directory"),
                "{host}"
            );
        }
        // A sibling whose name starts like the home directory is not the home directory.
        no_risk(
            &explain(&dir("/home/reviewer2", "read-only")),
            "/home/reviewer2",
        );
    }

    #[test]
    fn network_grants_are_flagged_and_private_ones_say_so() {
        let e = explain(
            "version = 1\n[grants]\nnetwork = [\"https://api.example.com\", \"http://127.0.0.1:8080\", \"http://localhost\", \"http://[fd00::1]:81\"]",
        );
        assert!(risk(&e, "api.example.com port 443").contains("off this machine"));
        for host in [
            "127.0.0.1 port 8080",
            "localhost port 80",
            "[fd00::1] port 81",
        ] {
            assert!(
                risk(&e, host).contains("reaches this machine or the local network"),
                "{host}"
            );
        }
        assert!(line(&e, "127.0.0.1").text.contains("plain HTTP"));
    }

    #[test]
    fn secret_looking_environment_variables_are_flagged() {
        let e = explain(
            "version = 1\n[grants]\nenvironment = [\"LANG\", \"GITHUB_TOKEN\", \"client_secret\", \"API_KEY\", \"DB_Password\", \"AWS_CREDENTIALS\"]",
        );
        no_risk(&e, "LANG");
        for name in [
            "GITHUB_TOKEN",
            "client_secret",
            "API_KEY",
            "DB_Password",
            "AWS_CREDENTIALS",
        ] {
            assert!(risk(&e, name).contains("secret"), "{name}");
        }
    }

    #[test]
    fn publishing_on_every_topic_is_flagged() {
        let e = explain("version = 1\n[grants]\nevents = [\"echo.*\", \"*\"]");
        no_risk(&e, "below echo (echo.*)");
        assert!(risk(&e, "every topic").contains("expect only from someone else"));
    }

    #[test]
    fn display_prefixes_risky_lines() {
        let e = explain(
            "version = 1\ninstance = \"persistent\"\n[grants]\nnetwork = [\"https://api.example.com\"]",
        );
        let shown = e.to_string();
        assert!(
            shown.contains("2 lines flagged for review (RISK)."),
            "{shown}"
        );
        assert!(shown.contains(
            "  RISK: Can make HTTPS requests to api.example.com port 443 (granted as \"https://api.example.com\"). -- can send data off this machine"
        ), "{shown}");
        assert!(
            shown.contains("  RISK: Runs in one long-lived instance"),
            "{shown}"
        );
        assert!(
            shown.contains("  - Each call may run for up to 30 s (wall clock)."),
            "{shown}"
        );
        assert!(shown.contains("Not granted:\n  - no files"), "{shown}");
        assert!(!shown.contains("no network"), "{shown}");
    }
}
