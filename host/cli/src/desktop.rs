//! `capbridge` with no command: the desktop shell (`capbridge-desktop`) when there is a display
//! and the binary was built with it (the `desktop` feature, on by default), else `serve`.

use std::path::Path;
use std::process::ExitCode;

use capbridge_runtime::RuntimeConfig;

use crate::ServeArgs;

/// Said when `capbridge` runs headless.
pub const HEADLESS: &str = if cfg!(feature = "desktop") {
    "capbridge: no display (DISPLAY and WAYLAND_DISPLAY are unset): running headless, as \
     `capbridge serve`"
} else {
    "capbridge: built without the desktop shell (the `desktop` feature): running headless, as \
     `capbridge serve`"
};

/// Whether the desktop shell can open windows here.
pub fn available() -> bool {
    let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    cfg!(feature = "desktop") && (set("DISPLAY") || set("WAYLAND_DISPLAY"))
}

#[cfg(feature = "desktop")]
pub fn run(
    config: RuntimeConfig,
    config_path: &Path,
    args: ServeArgs,
    url: Option<&str>,
) -> anyhow::Result<ExitCode> {
    use capbridge_desktop::instance::{self, Action, Claim};
    // Before anything is created: the state directory and the socket are the user's alone.
    crate::keep_files_private();
    let first = match url {
        Some(url) => Action::parse(url).map_err(anyhow::Error::msg)?,
        None => Action::Focus,
    };
    // One shell per user: a second launch hands its URL to the first and says what happened.
    let instance = match instance::claim(&instance::socket_path(&config.state_dir), first)? {
        Claim::Handed(reply) => {
            println!("{}", reply.message);
            return Ok(if reply.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Claim::First(first) => first,
    };
    // `osloop://` links open capbridge (this binary) from the browser.
    if let (Some(dirs), Ok(exe)) = (directories::BaseDirs::new(), std::env::current_exe()) {
        if let Err(e) = instance::register_url_handler(dirs.data_dir(), &exe) {
            tracing::warn!("cannot register the osloop:// URL handler: {e:#}");
        }
    }
    let tokio = tokio::runtime::Runtime::new()?;
    let state_dir = config.state_dir.clone();
    let bridge_socket_path = args.bridge_socket.clone();
    let prepared = crate::prepare(config, config_path, args, &tokio)?;
    let watcher = {
        let _guard = tokio.enter();
        prepared.runtime.watch()?
    };
    match &prepared.listener {
        // `capbridge prompts` answers here too, as with `serve`.
        Ok(listener) => {
            let port = listener.local_addr()?.port();
            tokio.block_on(crate::prompts::answer_on_socket(port, &prepared.runtime))?;
        }
        Err(e) => println!("capbridge: not listening: {e}"),
    }
    // Seed 001's desktop bridge answers as long as the shell runs (the process ends with it).
    let bridge_socket = tokio.block_on(crate::bridge_socket::answer_on_socket(
        bridge_socket_path,
        prepared.runtime.clone(),
    ));
    std::mem::forget(bridge_socket);
    // Lives as long as the shell: the shell's event loop ends the process.
    std::mem::forget(watcher);
    capbridge_desktop::run(capbridge_desktop::Options {
        runtime: prepared.runtime,
        config: prepared.bridge,
        config_path: config_path.to_path_buf(),
        port: prepared.port,
        listener: prepared.listener.map_err(|e| e.to_string()),
        tokio,
        instance,
        first,
        state_dir,
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "desktop"))]
pub fn run(_: RuntimeConfig, _: &Path, _: ServeArgs, _: Option<&str>) -> anyhow::Result<ExitCode> {
    anyhow::bail!("capbridge was built without the desktop shell (the `desktop` feature)")
}
