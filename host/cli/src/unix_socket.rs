//! capbridge's Unix sockets for the person's faces (the prompt socket, seed 001's desktop
//! bridge): bound private, served a bounded number of connections at a time, each within a
//! deadline.

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{UnixListener, UnixStream};

/// capbridge's directory in the session's runtime directory (`$XDG_RUNTIME_DIR/capbridge`),
/// when the session has one.
pub fn runtime_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
        .map(|d| d.join("capbridge"))
}

/// Binds a socket of capbridge's at `path`: its directory is created `0700` (or must already be this user's and
/// `0700`), a stale socket of a bridge that is gone is replaced, a live one is an error.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let dir = path.parent().context("socket path has a directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let meta = std::fs::metadata(dir)?;
    let uid = rustix::process::getuid().as_raw();
    anyhow::ensure!(
        meta.uid() == uid && meta.permissions().mode() & 0o077 == 0,
        "{} must belong to you and be private (mode 0700) to hold capbridge's sockets",
        dir.display()
    );
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!("another capbridge answers at {}", path.display());
        }
        std::fs::remove_file(path)?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers each connection on `listener` with `handle`, at most `connections` at once, each
/// cut off after `timeout`; until the task is dropped.
pub async fn serve<H, F>(listener: UnixListener, connections: usize, timeout: Duration, handle: H)
where
    H: Fn(UnixStream) -> F,
    F: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(connections));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let answer = handle(stream);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, answer).await;
            drop(permit);
        });
    }
}
