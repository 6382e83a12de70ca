//! The policy half of a capability: how one `grants.<key>` entry is read, checked, described in
//! the JSON Schema and explained to a reviewer.
//!
//! This crate knows the grants every component has a use for (`directories`, `environment`);
//! every other key under `[grants]` belongs to one capability, which implements [`GrantKind`]
//! next to its host code (in the runtime's `caps/`). [`crate::Policy::parse`] is given the list
//! of kinds, so a key no kind claims is an unknown key, and a reviewer's document, the schema and
//! the checker all come from the same list.

use std::any::Any;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use crate::explain::ExplainLine;
use crate::file::InstanceMode;
use crate::policy::{DirectoryGrant, Policy, Problems};

/// One key under `[grants]` that a capability claims.
pub trait GrantKind: Send + Sync {
    /// The key under `[grants]` (`awake` for `grants.awake`).
    fn key(&self) -> &'static str;

    /// The JSON Schema of the key's value, for `policy/policy.schema.json`.
    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema;

    /// Reads the key's value. `Ok(None)` when the value grants nothing (`log = false`, an empty
    /// list); a value of the wrong shape is a syntax error; a value of the right shape that
    /// breaks a rule is reported through `cx.problem` (and may still return a grant).
    fn parse(
        &self,
        value: toml::Value,
        cx: &mut GrantContext<'_>,
    ) -> Result<Option<Arc<dyn Grant>>, toml::de::Error>;

    /// What a component whose policy lacks this key cannot do (`no sleep prevention`).
    fn not_granted(&self) -> &'static str;

    /// What `policy diff` treats as a widening of this grant, for the grant reference
    /// (`granted where it was not`, `a topic pattern added`).
    fn widening(&self) -> &'static str;
}

/// A granted capability's scope, as read from the policy; the capability's host code reads it
/// back with [`Policy::grant`].
pub trait Grant: Any + Debug + Send + Sync {
    /// What it lets the component do, in plain language, with risky lines flagged.
    fn explain(&self, policy: &Policy) -> Vec<ExplainLine>;

    /// The scope in a few words, after the key in one-line summaries (`component list`);
    /// `None` for a grant that is only on or off.
    fn scope(&self) -> Option<String> {
        None
    }

    /// What it reaches, one comparable item each (a topic pattern, an origin, a program), with
    /// the risk `explain` flags: `policy diff` compares these. By default its explain lines,
    /// each an item of its own.
    fn reach(&self, policy: &Policy) -> Vec<crate::Reach> {
        self.explain(policy)
            .into_iter()
            .map(crate::Reach::line)
            .collect()
    }
}

/// What a [`GrantKind`] sees while it reads its key: the rest of the policy it may depend on, and
/// where to report problems.
pub struct GrantContext<'a> {
    pub(crate) key: &'static str,
    pub(crate) component_id: &'a str,
    pub instance: InstanceMode,
    pub directories: &'a [DirectoryGrant],
    pub home: Option<&'a Path>,
    pub(crate) problems: &'a mut Problems,
}

impl GrantContext<'_> {
    /// The id of the component whose policy is read.
    pub fn component_id(&self) -> &str {
        self.component_id
    }

    /// Reports a problem with the value; `suffix` is appended to `grants.<key>` (`[2]`,
    /// `.programs[0]`, or empty for the whole value).
    pub fn problem(&mut self, suffix: &str, message: impl Into<String>) {
        self.problems
            .add(format!("grants.{}{suffix}", self.key), message.into());
    }
}

/// Reads a TOML value as `T` (the usual serde derive, with `deny_unknown_fields`).
pub fn read<T: serde::de::DeserializeOwned>(value: toml::Value) -> Result<T, toml::de::Error> {
    T::deserialize(value)
}

/// Reads a list of strings, each parsed by `parse`; an entry that does not parse is a problem
/// with its index (`grants.<key>[2]: "text": why`) and is left out.
pub fn read_list<T, E: std::fmt::Display>(
    value: toml::Value,
    cx: &mut GrantContext<'_>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, toml::de::Error> {
    let texts: Vec<String> = read(value)?;
    Ok(texts
        .iter()
        .enumerate()
        .filter_map(|(i, text)| match parse(text) {
            Ok(item) => Some(item),
            Err(e) => {
                cx.problem(&format!("[{i}]"), format!("{text:?}: {e}"));
                None
            }
        })
        .collect())
}
