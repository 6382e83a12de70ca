//! The policy file as written: the TOML shape, with the defaults a reviewer can rely on.
//!
//! These types only describe the syntax. [`crate::Policy::parse`] checks the values and turns
//! them into a [`crate::Policy`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default wall-clock limit per call, in milliseconds.
pub const DEFAULT_DEADLINE_MS: u64 = 30_000;
/// Default linear-memory limit per instance, in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 64;
/// Default limit on table elements per table.
pub const DEFAULT_TABLE_ELEMENTS: u32 = 10_000;
/// Default number of bytes kept of stdout, and of stderr, per call.
pub const DEFAULT_OUTPUT_BYTES: u64 = 1_048_576;

/// A capbridge policy file (`policy/<component-id>.toml`); anything not granted is denied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[schemars(title = "capbridge policy file")]
pub struct PolicyFile {
    /// Policy format version. Only 1 is accepted.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// What this component is for, in a sentence; shown by tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether each call gets a new instance ("fresh") or all calls share one ("persistent").
    #[serde(default)]
    pub instance: InstanceMode,
    /// Resource limits; every key is optional.
    #[serde(default)]
    pub limits: LimitsFile,
    /// What the component may reach. Anything absent is not granted.
    #[serde(default)]
    #[schemars(with = "BaselineGrantsFile")]
    pub grants: GrantsFile,
}

/// How component instances live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceMode {
    /// A new instance for every call; nothing survives a call.
    #[default]
    Fresh,
    /// One long-lived instance; calls are serialised and state survives between them.
    Persistent,
}

/// Limits on each call and each instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsFile {
    /// Wall-clock limit per call, in milliseconds (1 to 3600000).
    #[serde(default = "default_deadline_ms")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub deadline_ms: u64,
    /// Linear memory per instance, in MiB (1 to 4096).
    #[serde(default = "default_memory_mib")]
    #[schemars(range(min = 1, max = 4096))]
    pub memory_mib: u64,
    /// Elements per table (1 to 1000000).
    #[serde(default = "default_table_elements")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub table_elements: u32,
    /// Bytes kept of stdout, and of stderr, per call (0 to 67108864); the rest is dropped.
    #[serde(default = "default_output_bytes")]
    #[schemars(range(min = 0, max = 67_108_864))]
    pub output_bytes: u64,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            deadline_ms: DEFAULT_DEADLINE_MS,
            memory_mib: DEFAULT_MEMORY_MIB,
            table_elements: DEFAULT_TABLE_ELEMENTS,
            output_bytes: DEFAULT_OUTPUT_BYTES,
        }
    }
}

fn default_deadline_ms() -> u64 {
    DEFAULT_DEADLINE_MS
}
fn default_memory_mib() -> u64 {
    DEFAULT_MEMORY_MIB
}
fn default_table_elements() -> u32 {
    DEFAULT_TABLE_ELEMENTS
}
fn default_output_bytes() -> u64 {
    DEFAULT_OUTPUT_BYTES
}

/// The `[grants]` table: what the component may reach. Anything absent is not granted.
///
/// `directories` and `environment` are read by this crate ([`DirectoryGrantFile`], a list of
/// names); every other key belongs to a capability ([`crate::GrantKind`]), which reads its own
/// value. The values are kept with their place in the file, so a problem names its line.
pub type GrantsFile = std::collections::BTreeMap<String, toml::Spanned<toml::Value>>;

/// What the component may reach; anything absent is not granted. Every key but `directories`
/// and `environment` belongs to one capability (see docs/policy.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BaselineGrantsFile {
    /// Host directories the component can see, each mounted at a guest path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directories: Vec<DirectoryGrantFile>,
    /// Host environment variables the component can see, by exact name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub environment: Vec<String>,
}

/// One host directory made visible to the component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DirectoryGrantFile {
    /// Host directory: an absolute path, or one starting with `~/` (the user's home).
    #[schemars(pattern(r"^(/|~/)"))]
    pub host: String,
    /// Absolute, normalised path at which the component sees the directory.
    #[schemars(pattern(r"^/"))]
    pub guest: String,
    /// Whether the component may only read, or also create, change and delete files.
    pub access: Access,
    /// Create the host directory (and its parents) at load if it is missing.
    #[serde(default)]
    pub create: bool,
}

/// What a component may do inside a granted directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Read files and list directories.
    ReadOnly,
    /// Also create, change, rename and delete files and directories.
    ReadWrite,
}
