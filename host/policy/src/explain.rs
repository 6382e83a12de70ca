//! A policy in plain language, with the grants a reviewer should look at flagged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::file::{Access, InstanceMode};
use crate::policy::Policy;

/// Deadlines above this are flagged.
const LONG_DEADLINE: Duration = Duration::from_secs(5 * 60);
/// Memory limits above this are flagged.
const LARGE_MEMORY_BYTES: u64 = 1024 * 1024 * 1024;
/// Environment variable names containing one of these (in any case) are flagged.
const SECRET_WORDS: [&str; 5] = ["TOKEN", "SECRET", "KEY", "PASSWORD", "CREDENTIAL"];

/// Whether an environment variable's name suggests a secret: `policy explain` flags it, and a
/// recorded trace holds a placeholder instead of its value.
pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|w| upper.contains(w))
}

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
    /// A line a reviewer need not look at.
    pub fn plain(text: String) -> Self {
        ExplainLine { text, risk: None }
    }

    /// A line flagged for review when `risk` is given.
    pub fn risky(text: String, risk: Option<String>) -> Self {
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
        lines.extend(self.explain_environment());
        for entry in &self.grants {
            if let Some(grant) = &entry.grant {
                lines.extend(grant.explain(self));
            }
        }

        let mut not_granted = Vec::new();
        if self.directories.is_empty() {
            not_granted.push("no files: it sees no host directory".to_string());
        }
        if self.environment.is_empty() {
            not_granted.push("no environment variables: it sees an empty environment".to_string());
        }
        not_granted.extend(
            self.grants
                .iter()
                .filter(|entry| entry.grant.is_none())
                .map(|entry| entry.not_granted.to_string()),
        );
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

    pub(crate) fn explain_environment(&self) -> Vec<ExplainLine> {
        self.environment
            .iter()
            .map(|name| {
                let risk = looks_secret(name).then(|| {
                    "the name suggests a secret; the component can read its value".to_string()
                });
                ExplainLine::risky(
                    format!("Can read the host environment variable {name}."),
                    risk,
                )
            })
            .collect()
    }

    pub(crate) fn explain_limits(&self) -> Vec<ExplainLine> {
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

    pub(crate) fn explain_directories(&self) -> Vec<ExplainLine> {
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
#[path = "explain_tests.rs"]
mod tests;
