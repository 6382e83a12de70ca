//! capbridge policy files: what one component may do.
//!
//! A policy file (`policy/<component-id>.toml`, format in `docs/policy.md`) is read by a security
//! reviewer and enforced by the runtime. This crate holds no runtime: it
//!
//! - describes the file as written ([`PolicyFile`]) and its JSON Schema ([`schema`]),
//! - parses and validates it into a [`Policy`], reporting every problem with the key it is about
//!   ([`PolicyError`]),
//! - defines the policy half of a capability ([`GrantKind`], [`Grant`]): each capability of the
//!   runtime reads, checks and explains its own key under `[grants]`, and the parser is given
//!   the list of them,
//! - holds the value types grants are written in ([`NetworkGrant`], [`TopicPattern`]),
//! - explains a policy in plain language with risky grants flagged ([`Policy::explain`]).
//!
//! Deny by default: anything absent from the file is not granted, and unknown keys are errors.

mod diff;
mod explain;
mod file;
mod grant;
mod network;
mod policy;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod topic;

pub use diff::{diff, Change, Direction, PolicyDiff, Reach};
pub use explain::{looks_secret, ExplainLine, Explanation};
pub use file::{
    Access, BaselineGrantsFile, DirectoryGrantFile, GrantsFile, InstanceMode, LimitsFile,
    PolicyFile, DEFAULT_DEADLINE_MS, DEFAULT_MEMORY_MIB, DEFAULT_OUTPUT_BYTES,
    DEFAULT_TABLE_ELEMENTS,
};
pub use grant::{read as read_grant, read_list, Grant, GrantContext, GrantKind};
pub use network::{is_private_address, NetworkGrant, Scheme};
pub use policy::{
    host_path, DirectoryGrant, GrantEntry, Limits, Policy, PolicyError, Problem, BASELINE_KEYS,
};
pub use topic::{check_topic, TopicPattern};

/// The policy format version this crate reads.
pub const POLICY_VERSION: u32 = 1;

/// The JSON Schema of a policy file whose `[grants]` keys are the baseline ones and `kinds`'
/// with object keys sorted so the output is the same however `serde_json` is configured. The
/// committed copy (for the runtime's capabilities) is `policy/policy.schema.json`.
pub fn schema(kinds: &[&dyn GrantKind]) -> serde_json::Value {
    let mut generator = schemars::SchemaGenerator::default();
    let grants: Vec<(&str, serde_json::Value)> = kinds
        .iter()
        .map(|kind| (kind.key(), kind.schema(&mut generator).to_value()))
        .collect();
    let mut root = generator.root_schema_for::<PolicyFile>().to_value();
    // `grants` is described by `BaselineGrantsFile`; each capability adds its key to it.
    if let Some(properties) = root
        .pointer_mut("/$defs/BaselineGrantsFile/properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        for (key, schema) in grants {
            properties.insert(key.to_string(), schema);
        }
    }
    sort_keys(root)
}

fn sort_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sort_keys).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests;
