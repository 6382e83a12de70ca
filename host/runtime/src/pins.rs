//! Pinning: `capbridge policy pin` records the SHA-256 of every component and its policy in
//! `<policy dir>/capbridge.lock`; while that file exists, a component loads only if both still
//! match. A reviewer reviews, pins, and commits the lock file with the policies: a component or
//! policy changed afterwards (tampered with, or updated without review) does not load, and the
//! refusal names the file and both hashes.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::replay::sha256_hex;

/// The lock file's name, in the policy directory.
pub const PINS_FILE: &str = "capbridge.lock";

/// The pinned hashes, by component id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    pub version: u32,
    #[serde(default)]
    pub components: BTreeMap<String, Pin>,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// `sha256:<hex>` of `<id>.wasm`.
    pub wasm: String,
    /// `sha256:<hex>` of `<id>.toml`.
    pub policy: String,
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

impl Pins {
    /// The lock file of `policy_dir`; `Ok(None)` when there is none (nothing is pinned).
    pub fn load(policy_dir: &Path) -> Result<Option<Pins>, String> {
        let path = policy_dir.join(PINS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let mut pins: Pins = toml::from_str(&text)
            .map_err(|e| format!("{} is not a capbridge lock file: {e}", path.display()))?;
        if pins.version != 1 {
            return Err(format!(
                "{}: version {} is not 1, the one this capbridge reads",
                path.display(),
                pins.version
            ));
        }
        pins.path = path;
        Ok(Some(pins))
    }

    /// Refuses a component whose files differ from their pins, or that is not pinned.
    pub fn check(
        &self,
        id: &str,
        wasm_path: &Path,
        wasm: &[u8],
        policy_path: &Path,
        policy: &[u8],
    ) -> Result<(), String> {
        let Some(pin) = self.components.get(id) else {
            return Err(format!(
                "component `{id}` is not pinned in {} (with a lock file, only pinned components \
                 load): review it, then run `capbridge policy pin {id}`",
                self.path.display()
            ));
        };
        for (file, pinned, bytes) in [
            (wasm_path, &pin.wasm, wasm),
            (policy_path, &pin.policy, policy),
        ] {
            let found = digest(bytes);
            if &found != pinned {
                return Err(format!(
                    "{} does not match its pin in {}: pinned {pinned}, found {found}; if the \
                     change was reviewed, run `capbridge policy pin {id}`",
                    file.display(),
                    self.path.display()
                ));
            }
        }
        Ok(())
    }

    /// Pins the components `only` names (every component of `components_dir` that has a
    /// policy in `policy_dir`, when `only` is empty), keeping the other pins, and replaces the
    /// lock file atomically; returns the pins and what changed.
    pub fn pin(
        components_dir: &Path,
        policy_dir: &Path,
        only: &[String],
    ) -> anyhow::Result<(Pins, Vec<String>)> {
        let before = Pins::load(policy_dir)
            .map_err(anyhow::Error::msg)?
            .unwrap_or_default();
        let mut components = if only.is_empty() {
            BTreeMap::new()
        } else {
            before.components.clone()
        };
        for id in only {
            anyhow::ensure!(
                components_dir.join(format!("{id}.wasm")).is_file()
                    && policy_dir.join(format!("{id}.toml")).is_file(),
                "no component `{id}` with a policy: {} and {} must both exist",
                components_dir.join(format!("{id}.wasm")).display(),
                policy_dir.join(format!("{id}.toml")).display()
            );
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(components_dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .collect();
        entries.sort();
        for wasm_path in entries {
            let Some(id) = wasm_path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if !only.is_empty() && !only.iter().any(|o| o == id) {
                continue;
            }
            let policy_path = policy_dir.join(format!("{id}.toml"));
            let Ok(policy) = std::fs::read(&policy_path) else {
                continue;
            };
            components.insert(
                id.to_string(),
                Pin {
                    wasm: digest(&std::fs::read(&wasm_path)?),
                    policy: digest(&policy),
                },
            );
        }
        let pins = Pins {
            version: 1,
            components,
            path: policy_dir.join(PINS_FILE),
        };
        let text = format!(
            "# Written by `capbridge policy pin`. While this file exists, a component loads only\n\
             # if its .wasm and its policy still have these SHA-256 hashes.\n{}",
            toml::to_string_pretty(&pins)?
        );
        let mut temp = tempfile::Builder::new()
            .prefix(".capbridge.lock.new-")
            .tempfile_in(policy_dir)?;
        temp.write_all(text.as_bytes())?;
        temp.as_file().sync_all()?;
        temp.persist(&pins.path).map_err(|e| e.error)?;
        let mut changes = Vec::new();
        for (id, pin) in &pins.components {
            match before.components.get(id) {
                None => changes.push(format!("{id}: pinned")),
                Some(old) if old == pin => {}
                Some(old) => {
                    for (what, was, now) in [
                        ("wasm", &old.wasm, &pin.wasm),
                        ("policy", &old.policy, &pin.policy),
                    ] {
                        if was != now {
                            changes.push(format!("{id}: {what} changed, {was} -> {now}"));
                        }
                    }
                }
            }
        }
        for id in before
            .components
            .keys()
            .filter(|id| !pins.components.contains_key(*id))
        {
            changes.push(format!("{id}: no longer pinned (gone)"));
        }
        Ok((pins, changes))
    }
}
