//! capbridge's end-to-end tests, all in one test binary (as wasmtime's `tests/all`): each
//! binary links wasmtime, so one binary instead of one per file saves a link of wasmtime per
//! file. See `tests/README.md` for what each module covers.
//!
//! The modules' tests share one process, as threads of one test harness; before, each file was
//! its own binary, and the binaries ran one after the other. Process-wide state is shared:
//! environment variables (a test sets only names no other test reads), and the machine's cores — hence
//! [`chromium_running`] and [`without_chromium`].

mod api;
mod audit;
mod browser;
mod commands;
mod contract_doc;
mod filesystem;
mod invoke;
mod live;
mod mcp;
mod plugins;
mod replay;
mod sandbox;
mod system;

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Headless Chromium is the heaviest thing the suite runs: every browser test starts a tree of
/// processes that takes the cores for seconds. A test that times calls against a deadline must
/// not run meanwhile, so browser tests hold this lock shared (they still run together) and such a
/// test holds it exclusively.
static CHROMIUM: RwLock<()> = RwLock::const_new(());

/// Held by a test for as long as its Chromium runs.
pub(crate) async fn chromium_running() -> RwLockReadGuard<'static, ()> {
    CHROMIUM.read().await
}

/// Held by a test whose assertions depend on timing: no Chromium runs meanwhile.
pub(crate) async fn without_chromium() -> RwLockWriteGuard<'static, ()> {
    CHROMIUM.write().await
}
