//! Compiled components on disk.
//!
//! A cache entry is named by the SHA-256 of the component's bytes together with the engine's
//! compatibility hash (wasmtime version, target, and every setting that changes generated code),
//! so a changed component or an upgraded capbridge never loads stale machine code, and a second
//! start compiles nothing. Entries are written atomically (temporary file, fsync, rename).
//!
//! Loading a cache entry runs machine code from it, so the directory must be private to the user
//! (it is created with mode 0700 where the platform has modes).

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Where compiled components live, and how they are found again.
#[derive(Clone, Debug)]
pub struct CompileCache {
    dir: PathBuf,
}

/// Whether a load found its compiled code in the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Compiled,
}

impl CompileCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache file a component's bytes map to under this engine.
    pub fn entry_path(&self, engine: &Engine, wasm: &[u8]) -> PathBuf {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = hasher.0.finalize();
        let key = Sha256::new()
            .chain_update(engine_hash)
            .chain_update(Sha256::digest(wasm))
            .finalize();
        self.dir.join(format!("{}.cwasm", hex::encode(key)))
    }

    /// Returns the component for `wasm`, from the cache when present, otherwise compiling it
    /// (calling `before_compile` first, so a caller can show progress) and storing the result.
    pub fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
        before_compile: impl FnOnce(),
    ) -> anyhow::Result<(Component, CacheOutcome)> {
        let path = self.entry_path(engine, wasm);
        if path.exists() {
            // SAFETY: the file was written by `precompile_component` of an engine with the same
            // compatibility hash (its name says so) into the user's private cache directory.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(error) => tracing::warn!(
                    "ignoring unreadable cache entry {}: {error:#}",
                    path.display()
                ),
            }
        }
        before_compile();
        let compiled = engine.precompile_component(wasm)?;
        if let Err(error) = self.store(&path, &compiled) {
            tracing::warn!(
                "could not write compile cache {}: {error:#}",
                path.display()
            );
        }
        // SAFETY: `compiled` was produced just now by this engine.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, CacheOutcome::Compiled))
    }

    fn store(&self, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        create_private_dir(&self.dir)?;
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)?;
        file.write_all(bytes)?;
        file.as_file().sync_all()?;
        file.persist(path)
            .with_context(|| format!("renaming into {}", path.display()))?;
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Feeds `Hash` output into SHA-256 so the key is stable across processes (unlike `DefaultHasher`).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0 // unused: the digest is read from the inner hasher
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
