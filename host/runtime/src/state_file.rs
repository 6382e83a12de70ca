//! capbridge's own persisted state (whitelist rules, the MCP server registry): one JSON file
//! each in the state directory, out of every component's reach, replaced atomically on every
//! change: written to a temporary file next to it, flushed to disk, renamed over the old one,
//! and the directory flushed. A crash at any moment leaves the old content or the new.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format version every state file is written with (its top-level `version`).
pub const VERSION: u32 = 1;

/// One state file.
pub struct StateFile {
    path: PathBuf,
    /// How its temporary files start; one left by a crash is removed at the next start.
    temp_prefix: String,
    /// What it holds, for the log (`whitelist rules`).
    what: &'static str,
}

impl StateFile {
    /// The file `name` under `dir`, holding `what`; removes what earlier crashes left.
    pub fn new(dir: &Path, name: &str, what: &'static str) -> Self {
        let file = Self {
            path: dir.join(name),
            temp_prefix: format!("{name}.new-"),
            what,
        };
        file.remove_leftovers();
        file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its content; `None` when there is no file yet. A file that cannot be read, or has
    /// another `version` than [`VERSION`], is moved aside (`<name>.unreadable`), never silently
    /// overwritten, and `None` is returned: a broken file must not be taken for permission.
    pub fn read<T: DeserializeOwned>(&self) -> Option<T> {
        #[derive(serde::Deserialize)]
        struct Head {
            version: u32,
        }
        let why = match std::fs::read(&self.path) {
            Ok(bytes) => match serde_json::from_slice::<Head>(&bytes) {
                Ok(head) if head.version != VERSION => format!("unknown version {}", head.version),
                _ => match serde_json::from_slice::<T>(&bytes) {
                    Ok(value) => return Some(value),
                    Err(e) => e.to_string(),
                },
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::error!(target: "capbridge::audit", file = %self.path.display(), error = %e, "{} unreadable; starting with none", self.what);
                return None;
            }
        };
        let aside = self.path.with_extension("json.unreadable");
        let _ = std::fs::rename(&self.path, &aside);
        tracing::error!(target: "capbridge::audit", file = %self.path.display(), moved_to = %aside.display(), "{} unreadable ({why}); starting with none", self.what);
        None
    }

    /// Replaces the file atomically with `value`.
    pub fn write<T: Serialize>(&self, value: &T) -> Result<(), String> {
        let write = || -> std::io::Result<()> {
            let dir = self.path.parent().expect("the file is in a directory");
            std::fs::create_dir_all(dir)?;
            let mut temp = tempfile::Builder::new()
                .prefix(&self.temp_prefix)
                .tempfile_in(dir)?;
            serde_json::to_writer_pretty(&mut temp, value)?;
            temp.write_all(b"\n")?;
            temp.as_file().sync_all()?;
            temp.persist(&self.path).map_err(|e| e.error)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            tracing::error!(target: "capbridge::audit", file = %self.path.display(), error = %e, "cannot write {}", self.what);
            format!("cannot write the {} ({}): {e}", self.what, self.path.display())
        })
    }

    /// Removes the temporary files of writes a crash interrupted (they hold nothing the file
    /// does not: a write that did not reach its rename did not happen). Only those older than a
    /// minute, in case another capbridge shares the directory and is writing right now.
    fn remove_leftovers(&self) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 60));
            if stale
                && entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&self.temp_prefix)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// 64 random bits from the system, in hex.
pub fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 8];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?,
        &mut bytes,
    )
    .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(hex::encode(bytes))
}
