//! capbridge policy files: what one component may do.
//!
//! A policy file (`policy/<component-id>.toml`, format in `docs/policy.md`) is read by a security
//! reviewer and enforced by the runtime. This crate holds no runtime: it
//!
//! - describes the file as written ([`PolicyFile`]) and its JSON Schema ([`schema`]),
//! - parses and validates it into a [`Policy`], reporting every problem with the key it is about
//!   ([`PolicyError`]),
//! - answers the scope questions the runtime asks on each call ([`Policy::allows_topic`],
//!   [`Policy::network_grant_for`], [`is_private_address`]),
//! - explains a policy in plain language with risky grants flagged ([`Policy::explain`]).
//!
//! Deny by default: anything absent from the file is not granted, and unknown keys are errors.

mod explain;
mod file;
mod network;
mod policy;
mod topic;

pub use explain::{ExplainLine, Explanation};
pub use file::{
    Access, DirectoryGrantFile, GrantsFile, InstanceMode, LimitsFile, PolicyFile, SystemGrantFile,
    DEFAULT_DEADLINE_MS, DEFAULT_MEMORY_MIB, DEFAULT_OUTPUT_BYTES, DEFAULT_TABLE_ELEMENTS,
};
pub use network::{is_private_address, NetworkGrant, Scheme};
pub use policy::{DirectoryGrant, Limits, Policy, PolicyError, Problem, SystemGrant};
pub use topic::{check_topic, TopicPattern};

/// The policy format version this crate reads.
pub const POLICY_VERSION: u32 = 1;

/// The JSON Schema of [`PolicyFile`], with object keys sorted so the output is the same however
/// `serde_json` is configured. The committed copy is `policy/policy.schema.json`.
pub fn schema() -> serde_json::Value {
    sort_keys(schemars::schema_for!(PolicyFile).to_value())
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
mod tests {
    use super::*;

    /// The committed schema must match the types. To regenerate it:
    /// `CAPBRIDGE_BLESS=1 cargo test -p capbridge-policy committed_schema_is_current`.
    #[test]
    fn committed_schema_is_current() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../policy/policy.schema.json"
        );
        let expected = serde_json::to_string_pretty(&schema()).unwrap() + "\n";
        if std::env::var_os("CAPBRIDGE_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(path, &expected).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == expected,
            "{path} is stale or missing; regenerate it with \
             `CAPBRIDGE_BLESS=1 cargo test -p capbridge-policy committed_schema_is_current` \
             and commit the result"
        );
    }

    #[test]
    fn schema_describes_the_format() {
        let schema = schema();
        let properties = &schema["properties"];
        for key in ["version", "description", "instance", "limits", "grants"] {
            assert!(
                properties.get(key).is_some(),
                "{key} missing from the schema"
            );
        }
        assert_eq!(schema["required"], serde_json::json!(["version"]));
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
        let limits = &schema["$defs"]["LimitsFile"];
        assert_eq!(limits["additionalProperties"], serde_json::json!(false));
        assert_eq!(limits["properties"]["deadline-ms"]["default"], 30_000);
        assert_eq!(limits["properties"]["deadline-ms"]["maximum"], 3_600_000);
        let dir = &schema["$defs"]["DirectoryGrantFile"];
        assert_eq!(
            dir["required"],
            serde_json::json!(["host", "guest", "access"])
        );
        assert!(schema.to_string().contains("read-only"));
        assert!(schema.to_string().contains("persistent"));
    }

    /// The file types serialise back to the same TOML keys they read.
    #[test]
    fn file_types_round_trip_through_toml() {
        let file: PolicyFile = toml::from_str(
            "version = 1\n[grants]\nevents = [\"a.*\"]\n[[grants.directories]]\nhost = \"/a\"\nguest = \"/a\"\naccess = \"read-write\"\n",
        )
        .unwrap();
        let text = toml::to_string(&file).unwrap();
        assert!(text.contains("access = \"read-write\""), "{text}");
        assert!(text.contains("deadline-ms = 30000"), "{text}");
        let again: PolicyFile = toml::from_str(&text).unwrap();
        assert_eq!(again, file);
    }

    /// The annotated example in docs/policy.md is a valid policy and explains as the doc says.
    #[test]
    fn documented_example_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/policy.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let example = &doc[doc.find("## Example").expect("an Example section")..];
        let start = example.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + example[start..].find("```").expect("the end of the block");
        let policy = Policy::parse_with_home(
            "echo",
            std::path::Path::new("policy/echo.toml"),
            &example[start..end],
            Some(std::path::Path::new("/home/reviewer")),
        )
        .unwrap_or_else(|e| panic!("the example in {path} is not valid: {e}"));
        let explanation = policy.explain();
        let risks: Vec<_> = explanation.risks().collect();
        assert_eq!(risks.len(), 1, "{explanation}");
        assert!(risks[0].text.contains("api.example.com"), "{explanation}");
        assert!(policy.allows_topic("echo.said"));
    }
}
