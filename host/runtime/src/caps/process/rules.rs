//! Whitelist rules: templates a person allowed to run without asking again, per component.
//!
//! Persisted in capbridge's state directory (out of every component's reach) as one JSON file,
//! replaced atomically on every change: written to a temporary file next to it, flushed to disk,
//! renamed over the old one, and the directory flushed. A crash at any moment leaves the old
//! rules or the new ones. Rules hold templates only: never a resolved value.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::Command;

/// The rules file's name in the state directory.
pub const FILE_NAME: &str = "command-rules.json";
/// How the temporary files of a write start; one left by a crash is removed at the next start.
const TEMP_PREFIX: &str = "command-rules.json.new-";
/// Most rules kept; a person who whitelists more must delete some first.
pub const MAX_RULES: usize = 1000;

/// One whitelist rule.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    /// The component whose requests it allows.
    pub component: String,
    pub template: Command,
    /// The program's host path when the person allowed it: the rule allows that file only,
    /// not whatever the name finds on `PATH` later.
    pub program_path: String,
    pub created_at_ms: u64,
    /// Who made it (`terminal`, `prompts-cli`, `web-app`).
    pub created_by: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    rules: Vec<Rule>,
}

/// The rules, in memory and on disk.
pub struct RuleStore {
    path: PathBuf,
    rules: Mutex<Vec<Rule>>,
}

impl RuleStore {
    /// Reads the rules under `dir` (none yet: an empty store). A file that cannot be read is
    /// moved aside (`command-rules.json.unreadable`), never silently overwritten, and the store
    /// starts empty: a broken file must not be taken for permission.
    pub fn open(dir: &Path) -> Self {
        remove_leftovers(dir);
        let path = dir.join(FILE_NAME);
        let rules = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(file) if file.version == 1 => file.rules,
                outcome => {
                    let why = match outcome {
                        Ok(file) => format!("unknown version {}", file.version),
                        Err(e) => e.to_string(),
                    };
                    let aside = path.with_extension("json.unreadable");
                    let _ = std::fs::rename(&path, &aside);
                    tracing::error!(target: "capbridge::audit", file = %path.display(), moved_to = %aside.display(), "whitelist rules unreadable ({why}); starting with none");
                    Vec::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::error!(target: "capbridge::audit", file = %path.display(), error = %e, "whitelist rules unreadable; starting with none");
                Vec::new()
            }
        };
        Self {
            path,
            rules: Mutex::new(rules),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rule of `component` whose template is exactly `template`, for the program at
    /// `program_path`.
    pub fn matching(
        &self,
        component: &str,
        template: &Command,
        program_path: &str,
    ) -> Option<Rule> {
        self.lock()
            .iter()
            .find(|r| {
                r.component == component
                    && &r.template == template
                    && r.program_path == program_path
            })
            .cloned()
    }

    /// The rules of `component`, oldest first.
    pub fn list(&self, component: &str) -> Vec<Rule> {
        self.lock()
            .iter()
            .filter(|r| r.component == component)
            .cloned()
            .collect()
    }

    /// Adds a rule (or returns the identical one that exists), persisted before it is returned.
    pub fn add(
        &self,
        component: &str,
        template: &Command,
        program_path: &str,
        created_by: &str,
    ) -> Result<Rule, String> {
        let mut rules = self.lock();
        if let Some(rule) = rules.iter().find(|r| {
            r.component == component && &r.template == template && r.program_path == program_path
        }) {
            return Ok(rule.clone());
        }
        if rules.len() >= MAX_RULES {
            return Err(format!(
                "there are already {MAX_RULES} whitelist rules; delete some first"
            ));
        }
        // Random ids are never reused, so a stale delete cannot remove a newer rule.
        let id = loop {
            let id = format!("rule-{}", random_hex()?);
            if !rules.iter().any(|r| r.id == id) {
                break id;
            }
        };
        let now = crate::approvals::now_ms();
        let rule = Rule {
            id,
            component: component.to_string(),
            template: template.clone(),
            program_path: program_path.to_string(),
            created_at_ms: now,
            created_by: created_by.to_string(),
        };
        let mut changed = rules.clone();
        changed.push(rule.clone());
        self.save(&changed)?;
        *rules = changed;
        Ok(rule)
    }

    /// Deletes rule `id` of `component`.
    pub fn delete(&self, component: &str, id: &str) -> Result<Option<Rule>, String> {
        let mut rules = self.lock();
        let Some(index) = rules
            .iter()
            .position(|r| r.id == id && r.component == component)
        else {
            return Ok(None);
        };
        let mut changed = rules.clone();
        let rule = changed.remove(index);
        self.save(&changed)?;
        *rules = changed;
        Ok(Some(rule))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        self.rules.lock().expect("rules lock")
    }

    /// Replaces the file atomically with `rules`.
    fn save(&self, rules: &[Rule]) -> Result<(), String> {
        let write = || -> std::io::Result<()> {
            let dir = self.path.parent().expect("the file is in a directory");
            std::fs::create_dir_all(dir)?;
            let file = File {
                version: 1,
                rules: rules.to_vec(),
            };
            let mut temp = tempfile::Builder::new()
                .prefix(TEMP_PREFIX)
                .tempfile_in(dir)?;
            serde_json::to_writer_pretty(&mut temp, &file)?;
            temp.write_all(b"\n")?;
            temp.as_file().sync_all()?;
            temp.persist(&self.path).map_err(|e| e.error)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            tracing::error!(target: "capbridge::audit", file = %self.path.display(), error = %e, "cannot write whitelist rules");
            format!("cannot write the whitelist rules ({}): {e}", self.path.display())
        })
    }
}

/// Removes the temporary files of writes a crash interrupted (they hold nothing the rules file
/// does not: a write that did not reach its rename did not happen). Only those older than a
/// minute, in case another capbridge shares the directory and is writing right now.
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 60));
        if stale && entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// 64 random bits from the system, in hex.
fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 8];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?,
        &mut bytes,
    )
    .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(hex::encode(bytes))
}
