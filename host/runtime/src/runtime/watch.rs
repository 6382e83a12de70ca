//! Live drop-in: while a [`Watcher`] lives, a component or policy added, changed or removed (or
//! the lock file changed) is loaded again for new calls, without a restart
//! ([`Runtime::reload`]), and `component.loaded` / `component.refused` / `component.unloaded`
//! events say what happened. Changes are gathered for a moment first: a copy in progress, or an
//! editor's write-and-rename, becomes one reload.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};

use super::{Reloaded, Runtime};

/// How long changes are gathered before a reload.
const SETTLE: Duration = Duration::from_millis(300);

/// Watches the components and policy directories; stops when dropped.
pub struct Watcher {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether a changed path is one the runtime loads from.
fn matters(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.ends_with(".wasm") || name.ends_with(".toml") || name == crate::pins::PINS_FILE
}

impl Runtime {
    /// Starts watching; call from within a tokio runtime.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<Watcher> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    if event.paths.iter().any(|p| matters(p)) {
                        let _ = tx.send(());
                    }
                }
            })?;
        for dir in [&self.config.components_dir, &self.config.policy_dir] {
            std::fs::create_dir_all(dir)?;
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        let runtime = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Gather what follows quickly, then load once.
                loop {
                    tokio::time::sleep(SETTLE).await;
                    let mut more = false;
                    while rx.try_recv().is_ok() {
                        more = true;
                    }
                    if !more {
                        break;
                    }
                }
                let Some(runtime) = runtime.upgrade() else {
                    break;
                };
                let reloaded = tokio::task::spawn_blocking(move || runtime.reload()).await;
                match reloaded {
                    Ok(Ok(changes)) => {
                        for change in changes {
                            match change {
                                Reloaded::Loaded(id) => {
                                    tracing::info!(component = %id, "loaded (changed on disk)")
                                }
                                Reloaded::Refused(id, reason) => {
                                    tracing::warn!(component = %id, "not loaded: {reason}")
                                }
                                Reloaded::Unloaded(id) => {
                                    tracing::info!(component = %id, "unloaded (removed)")
                                }
                            }
                        }
                    }
                    Ok(Err(e)) => tracing::error!("reloading components: {e:#}"),
                    Err(e) => tracing::error!("reloading components: {e}"),
                }
            }
        });
        Ok(Watcher {
            _watcher: watcher,
            task,
        })
    }
}
