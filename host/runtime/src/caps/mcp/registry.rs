//! The MCP server registry: every server a person approved, with the transport they approved
//! (templates: secret placeholders kept, never a value), persisted atomically in the state
//! directory ([`StateFile`]) so it survives a restart and a kill -9. Servers still waiting for
//! approval are never written.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::state_file::{StateFile, VERSION};

/// The registry file's name in the state directory.
pub const FILE_NAME: &str = "mcp-servers.json";
/// Most servers registered, host-wide.
pub const MAX_SERVERS: usize = 256;

/// How a server is reached, as approved (templates).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Transport {
    Stdio {
        program: String,
        args: Vec<String>,
        cwd: Option<String>,
        env: Vec<(String, String)>,
    },
    Http {
        url: String,
        headers: Vec<(String, String)>,
    },
}

/// One approved server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entry {
    /// The component whose server it is.
    pub component: String,
    pub id: String,
    pub name: String,
    pub transport: Transport,
    /// The program's host path when the person approved it (stdio): the entry launches that
    /// file only.
    pub program_path: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Who approved its transport (`terminal`, `prompts-cli`, `web-app`).
    pub approved_by: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    servers: Vec<Entry>,
}

/// The registry file.
pub struct Registry {
    file: StateFile,
}

impl Registry {
    /// Opens the registry under `dir` and reads what it holds.
    pub fn open(dir: &Path) -> (Self, Vec<Entry>) {
        let file = StateFile::new(dir, FILE_NAME, "MCP server registry");
        let entries = file.read::<File>().map_or_else(Vec::new, |f| f.servers);
        (Self { file }, entries)
    }

    /// Replaces the file atomically with `entries`.
    pub fn save<'a>(&self, entries: impl Iterator<Item = &'a Entry>) -> Result<(), String> {
        self.file.write(&File {
            version: VERSION,
            servers: entries.cloned().collect(),
        })
    }
}
