//! Whitelist rules: templates a person allowed to run without asking again, per component.
//!
//! Persisted in capbridge's state directory as one JSON file, replaced atomically on every
//! change ([`StateFile`]). Rules hold templates only: never a resolved value.

use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::Command;
use crate::state_file::{random_hex, StateFile, VERSION};

/// The rules file's name in the state directory.
pub const FILE_NAME: &str = "command-rules.json";
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
    file: StateFile,
    rules: Mutex<Vec<Rule>>,
}

impl RuleStore {
    /// Reads the rules under `dir` (none yet: an empty store). A file that cannot be read is
    /// moved aside (`command-rules.json.unreadable`), never silently overwritten, and the store
    /// starts empty: a broken file must not be taken for permission.
    pub fn open(dir: &Path) -> Self {
        let file = StateFile::new(dir, FILE_NAME, "whitelist rules");
        let rules = file.read::<File>().map_or_else(Vec::new, |f| f.rules);
        Self {
            file,
            rules: Mutex::new(rules),
        }
    }

    pub fn path(&self) -> &Path {
        self.file.path()
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
        self.file.write(&File {
            version: VERSION,
            rules: rules.to_vec(),
        })
    }
}
