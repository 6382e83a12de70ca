//! `policy diff`: what a change to a policy widens or narrows, grant by grant.
//!
//! Each grant says what it reaches as comparable items ([`crate::Grant::reach`]: a topic
//! pattern, an origin, a program, a directory), each with the risk `policy explain` would flag.
//! An item only the new policy has is a widening, one only the old has a narrowing. Limits
//! compare by value (a larger limit widens); the instance mode widens from fresh to persistent.

use std::fmt;

use serde::Serialize;

use crate::explain::ExplainLine;
use crate::file::InstanceMode;
use crate::policy::Policy;

/// One thing a grant reaches, as `policy diff` compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// What `policy explain` says about it.
    pub line: ExplainLine,
    /// What sort of thing it is (`topic`, `program`, `files`); only things of one sort compare.
    pub kind: &'static str,
    /// The thing. One ending in `*` reaches every thing it is a prefix of (`echo.*` reaches
    /// `echo.said`; `*`, everything; a directory `/a/*`, `/a/b/*`).
    pub value: String,
    /// How much of it: a reach of the same thing with less strength is covered (read-write
    /// covers read).
    pub strength: u8,
}

impl Reach {
    pub fn new(kind: &'static str, value: impl Into<String>, line: ExplainLine) -> Self {
        Self {
            line,
            kind,
            value: value.into(),
            strength: 0,
        }
    }

    /// An item known only by its explain line: it covers exactly itself.
    pub fn line(line: ExplainLine) -> Self {
        Self::new("line", line.text.clone(), line)
    }

    pub fn with_strength(self, strength: u8) -> Self {
        Self { strength, ..self }
    }

    /// Whether reaching `self` already reaches `other`.
    pub fn covers(&self, other: &Reach) -> bool {
        self.kind == other.kind
            && self.strength >= other.strength
            && (self.value == other.value
                || self
                    .value
                    .strip_suffix('*')
                    .is_some_and(|prefix| other.value.starts_with(prefix)))
    }
}

/// The changes from one policy to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDiff {
    pub component_id: String,
    pub old: String,
    pub new: String,
    pub changes: Vec<Change>,
}

/// One item widened or narrowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// Where in the policy: `grants.events`, `grants.directories`, `limits.memory-mib`,
    /// `instance`.
    pub at: String,
    pub direction: Direction,
    /// The item, as `policy explain` says it (for a limit: its new value, and the old).
    pub text: String,
    /// Why a reviewer should look, for a widening `policy explain` flags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Widens,
    Narrows,
}

impl PolicyDiff {
    pub fn widenings(&self) -> impl Iterator<Item = &Change> {
        self.changes
            .iter()
            .filter(|c| c.direction == Direction::Widens)
    }

    /// Widenings a reviewer should look at.
    pub fn risky_widenings(&self) -> impl Iterator<Item = &Change> {
        self.widenings().filter(|c| c.risk.is_some())
    }
}

/// The changes from `old` to `new` (two versions of one component's policy).
pub fn diff(old: &Policy, new: &Policy) -> PolicyDiff {
    let mut changes = Vec::new();
    if old.instance != new.instance {
        let line = &new.explain().lines[0];
        changes.push(Change {
            at: "instance".into(),
            direction: if new.instance == InstanceMode::Persistent {
                Direction::Widens
            } else {
                Direction::Narrows
            },
            text: line.text.clone(),
            risk: line.risk.clone(),
        });
    }
    changes.extend(limits(old, new));
    compare(
        &mut changes,
        "grants.directories",
        &directories(old),
        &directories(new),
    );
    let environment = |policy: &Policy| -> Vec<Reach> {
        policy
            .environment
            .iter()
            .zip(policy.explain_environment())
            .map(|(name, line)| Reach::new("variable", name.clone(), line))
            .collect()
    };
    compare(
        &mut changes,
        "grants.environment",
        &environment(old),
        &environment(new),
    );
    // Every key either policy has, in the registry's order.
    for entry in &new.grants {
        let reach = |policy: &Policy| -> Vec<Reach> {
            policy
                .grants
                .iter()
                .find(|e| e.key == entry.key)
                .and_then(|e| e.grant.as_ref())
                .map(|g| g.reach(policy))
                .unwrap_or_default()
        };
        compare(
            &mut changes,
            &format!("grants.{}", entry.key),
            &reach(old),
            &reach(new),
        );
    }
    PolicyDiff {
        component_id: new.component_id.clone(),
        old: old.source.display().to_string(),
        new: new.source.display().to_string(),
        changes,
    }
}

/// A directory reaches itself and everything below it; read-write covers read.
fn directories(policy: &Policy) -> Vec<Reach> {
    policy
        .directories
        .iter()
        .zip(policy.explain_directories())
        .map(|(dir, line)| {
            let below = format!("{}/*", dir.host.display().to_string().trim_end_matches('/'));
            Reach::new("files", below, line)
                .with_strength(u8::from(dir.access == crate::Access::ReadWrite))
        })
        .collect()
}

/// What `new` reaches that nothing of `old` did widens; what `old` reached that nothing of
/// `new` does narrows (its risk is no longer a reviewer's concern).
fn compare(changes: &mut Vec<Change>, at: &str, old: &[Reach], new: &[Reach]) {
    for reach in new.iter().filter(|n| !old.iter().any(|o| o.covers(n))) {
        changes.push(Change {
            at: at.to_string(),
            direction: Direction::Widens,
            text: reach.line.text.clone(),
            risk: reach.line.risk.clone(),
        });
    }
    for reach in old.iter().filter(|o| !new.iter().any(|n| n.covers(o))) {
        changes.push(Change {
            at: at.to_string(),
            direction: Direction::Narrows,
            text: reach.line.text.clone(),
            risk: None,
        });
    }
}

fn limits(old: &Policy, new: &Policy) -> Vec<Change> {
    let (o, n) = (&old.limits, &new.limits);
    let old_lines = old.explain_limits();
    let new_lines = new.explain_limits();
    let values = [
        (
            "limits.deadline-ms",
            o.deadline.as_millis() as u64,
            n.deadline.as_millis() as u64,
        ),
        ("limits.memory-mib", o.memory_bytes, n.memory_bytes),
        (
            "limits.table-elements",
            u64::from(o.table_elements),
            u64::from(n.table_elements),
        ),
        ("limits.output-bytes", o.output_bytes, n.output_bytes),
    ];
    values
        .iter()
        .zip(old_lines.iter().zip(&new_lines))
        .filter(|((_, before, after), _)| before != after)
        .map(|((at, before, after), (old_line, new_line))| Change {
            at: at.to_string(),
            direction: if after > before {
                Direction::Widens
            } else {
                Direction::Narrows
            },
            text: format!("{} (was: {})", new_line.text, old_line.text),
            risk: (after > before).then(|| new_line.risk.clone()).flatten(),
        })
        .collect()
}

impl fmt::Display for PolicyDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Policy of component {}: {} -> {}",
            self.component_id, self.old, self.new
        )?;
        let widen = self.widenings().count();
        let risky = self.risky_widenings().count();
        let narrow = self.changes.len() - widen;
        if self.changes.is_empty() {
            return writeln!(f, "No change in what the component may do.");
        }
        writeln!(
            f,
            "{widen} widening{} ({risky} flagged RISK), {narrow} narrowing{}.",
            if widen == 1 { "" } else { "s" },
            if narrow == 1 { "" } else { "s" }
        )?;
        let mut at = "";
        for change in &self.changes {
            if change.at != at {
                at = &change.at;
                writeln!(f, "\n{at}")?;
            }
            match (change.direction, &change.risk) {
                (Direction::Widens, Some(risk)) => {
                    writeln!(f, "  + RISK: {} -- {risk}", change.text)?
                }
                (Direction::Widens, None) => writeln!(f, "  + {}", change.text)?,
                (Direction::Narrows, _) => writeln!(f, "  - {}", change.text)?,
            }
        }
        Ok(())
    }
}
