//! The `capbridge` binary's tests, in one test binary (as wasmtime's `tests/all`): every module
//! runs the real `capbridge` binary (`CARGO_BIN_EXE_capbridge`) as a child process.

mod automation;
mod capabilities;
mod cli;
mod commands;
mod desktop;
mod plugins;
mod replay;

use std::process::{Command, Output};

use capbridge_tests::{shared_cache_dir, Fixture};

/// `capbridge --components … --policies … --cache … ARGS` on the fixture's directories.
pub fn capbridge(fx: &Fixture, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capbridge"))
        .args(["--components", fx.components_dir().to_str().unwrap()])
        .args(["--policies", fx.policy_dir().to_str().unwrap()])
        .args(["--cache", shared_cache_dir().to_str().unwrap()])
        .args(args)
        .output()
        .expect("capbridge runs")
}
