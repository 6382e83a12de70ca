//! `cargo xtask`: the set-up and orchestration behind the README's two commands.
//!
//! - `cargo xtask serve [ARGS]`: check the machine, build the guest components, run `capbridge serve`.
//! - `cargo xtask test`: check the machine, build the guest components, run every test and check.
//! - `cargo xtask build`: build the guest components only (into `components/<id>.wasm`).
//! - `cargo xtask bench`: run the benchmarks (release build) and print their figures.
//! - `cargo xtask bless`: regenerate committed generated files (policy JSON Schema, OpenAPI).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

const GUEST_TARGET: &str = "wasm32-wasip2";
/// Directories whose sub-directories are guest crates built for [`GUEST_TARGET`].
const GUEST_DIRS: &[&str] = &["components", "tests/programs"];

fn main() -> std::process::ExitCode {
    match xtask() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn xtask() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("build") => {
            ensure_toolchain()?;
            build_guests(&root)
        }
        Some("serve") => {
            ensure_toolchain()?;
            ensure_packages(BUILD_PACKAGES)?;
            build_guests(&root)?;
            // `capbridge` itself: the desktop shell on a desktop, else headless as `serve`.
            let mut cmd = cargo();
            cmd.args(["run", "--quiet", "--package", "capbridge", "--"])
                .args(&args[1..]);
            run(&mut cmd)
        }
        Some("test") => {
            ensure_toolchain()?;
            // The browser end-to-end test drives Chromium; the contract doc test runs curl and jq.
            // dbus-daemon: the private session bus the sleep-prevention and picker tests run on.
            // The command tests run git, answer prompts in a pseudo-terminal (script), call the
            // prompt socket as another user (setpriv) and contain runs in PID namespaces
            // (unshare). The MCP tests start real MCP servers from npm (node, npm).
            // The desktop shell's tests run an X server (Xvfb) with a window manager (openbox),
            // a system tray (trayer) and a notification service (notification-daemon), take
            // screenshots (ImageMagick), read them (tesseract) and click (xdotool); the screen and
            // input tests add the accessibility bus and a GTK application.
            ensure_packages(BUILD_PACKAGES)?;
            ensure_packages(DESKTOP_TEST_PACKAGES)?;
            ensure_packages(&[
                ("tesseract", "tesseract-ocr"),
                (
                    "file:/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                    "fonts-dejavu-core",
                ),
                ("xdg-open", "xdg-utils"),
                ("trayer", "trayer"),
                (
                    "file:/usr/lib/notification-daemon/notification-daemon",
                    "notification-daemon",
                ),
                ("chromium", "chromium"),
                ("curl", "curl"),
                ("jq", "jq"),
                ("git", "git"),
                ("script", "bsdutils"),
                ("setpriv", "util-linux"),
                ("unshare", "util-linux"),
                ("node", "nodejs"),
                ("npm", "npm"),
            ])?;
            install_mcp_servers(&root)?;
            build_guests(&root)?;
            run(cargo().args(["fmt", "--all", "--", "--check"]))
                .context("code is not formatted: run `cargo fmt --all`")?;
            run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
            run(cargo()
                .args(["clippy", "--target", GUEST_TARGET])
                .args(guest_package_args(&root)?)
                .args(["--", "-D", "warnings"]))?;
            run(cargo().args(["test", "--no-fail-fast"]).args(&args[1..]))?;
            // The first-party components' own unit tests (their pure parts: shape checks, the
            // MCP protocol state machine) run on the host.
            if args.len() == 1 {
                run(cargo()
                    .args(["test", "--lib"])
                    .args(component_package_args(&root)?))?;
                replay_recorded_tests(&root)?;
            }
            let shots = root.join("target/desktop-screenshots");
            if shots.is_dir() {
                eprintln!("xtask: the desktop tests' screenshots: {}", shots.display());
            }
            Ok(())
        }
        Some("bench") => {
            ensure_toolchain()?;
            ensure_packages(&[("wrk", "wrk"), ("node", "nodejs"), ("npm", "npm")])?;
            install_mcp_servers(&root)?;
            build_guests(&root)?;
            run(cargo()
                .args(["bench", "--package", "capbridge-tests"])
                .args(&args[1..]))?;
            if args.len() == 1 {
                // Screen and input, on a 1920x1080 Xvfb with the GTK test app: a release build
                // of the desktop test binary runs its ignored benchmark.
                ensure_packages(BUILD_PACKAGES)?;
                ensure_packages(DESKTOP_TEST_PACKAGES)?;
                run(cargo().args([
                    "test",
                    "--release",
                    "--package",
                    "capbridge",
                    "--test",
                    "all",
                    "--",
                    "--ignored",
                    "--nocapture",
                    "benchmark_screen_and_input",
                ]))?;
            }
            Ok(())
        }
        Some("bless") => {
            for (package, test) in [
                ("capbridge-runtime", "committed_schema_is_current"),
                ("capbridge-runtime", "committed_grant_tables_are_current"),
                ("capbridge-api", "committed_openapi_is_current"),
            ] {
                run(cargo()
                    .args(["test", "--package", package, "--lib", "--", test])
                    .env("CAPBRIDGE_BLESS", "1"))?;
            }
            Ok(())
        }
        _ => {
            eprintln!("usage: cargo xtask <serve [ARGS] | test [FILTER] | build | bench | bless>");
            std::process::exit(2);
        }
    }
}

/// Replays the traces each first-party component keeps in `components/<id>/tests/`, as a
/// third-party author would with `capbridge test`.
fn replay_recorded_tests(root: &Path) -> anyhow::Result<()> {
    for (_, dir) in guest_crates(root)? {
        if dir.starts_with(root.join("components")) && dir.join("tests").is_dir() {
            run(cargo()
                .args(["run", "--quiet", "--package", "capbridge", "--", "test"])
                .arg(&dir))?;
        }
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The guest target comes with the toolchain through rust-toolchain.toml; older rustups do not
/// add targets to an already-installed toolchain, so add it here if it is missing.
fn ensure_toolchain() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(out)
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == GUEST_TARGET) =>
        {
            Ok(())
        }
        Ok(_) => {
            run(Command::new("rustup").args(["target", "add", GUEST_TARGET])).with_context(|| {
                format!(
                    "installing the {GUEST_TARGET} target; run `rustup target add {GUEST_TARGET}`"
                )
            })
        }
        Err(_) => {
            eprintln!("warning: rustup not found; assuming the {GUEST_TARGET} target is installed");
            Ok(())
        }
    }
}

/// What building and running capbridge needs: WebKitGTK for the desktop shell (`lib:` names a
/// pkg-config module), the library its tray icon is made with (`deb:` names a package, loaded
/// at run time), and Tesseract for OCR.
const BUILD_PACKAGES: &[(&str, &str)] = &[
    ("lib:webkit2gtk-4.1", "libwebkit2gtk-4.1-dev"),
    ("pkg-config", "pkg-config"),
    (
        "deb:libayatana-appindicator3-1",
        "libayatana-appindicator3-1",
    ),
    // The desktop component's OCR (`desktop.ocr`), with Debian's English data.
    ("tesseract", "tesseract-ocr"),
];

/// What the desktop tests and the screen-and-input benchmark need beyond the build: an X
/// server with a window manager, a session bus, and the accessibility bus with a GTK
/// application (python3-gi) to drive.
const DESKTOP_TEST_PACKAGES: &[(&str, &str)] = &[
    ("Xvfb", "xvfb"),
    ("openbox", "openbox"),
    ("xdotool", "xdotool"),
    ("wmctrl", "wmctrl"),
    ("xprop", "x11-utils"),
    ("import", "imagemagick"),
    ("dbus-daemon", "dbus-daemon"),
    ("file:/usr/libexec/at-spi-bus-launcher", "at-spi2-core"),
    ("deb:python3-gi", "python3-gi"),
    ("deb:gir1.2-gtk-3.0", "gir1.2-gtk-3.0"),
];

/// Installs missing Debian packages (`(command, package)`, `("lib:module", package)` for a
/// library pkg-config knows, `("file:/path", package)` for a file, `("deb:package", package)`
/// for a package itself) with apt-get when running as root; otherwise fails with the exact
/// command to run.
fn ensure_packages(needed: &[(&str, &str)]) -> anyhow::Result<()> {
    let present = |check: &str| {
        if let Some(module) = check.strip_prefix("lib:") {
            Command::new("pkg-config")
                .args(["--exists", module])
                .status()
                .is_ok_and(|s| s.success())
        } else if let Some(file) = check.strip_prefix("file:") {
            Path::new(file).exists()
        } else if let Some(package) = check.strip_prefix("deb:") {
            // One line per architecture the package is installed for.
            Command::new("dpkg-query")
                .args(["--show", "--showformat=${db:Status-Status}\n", package])
                .output()
                .is_ok_and(|out| {
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .any(|status| status == "installed")
                })
        } else {
            on_path(check)
        }
    };
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(check, _)| !present(check))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!("apt-get install -y {}", missing.join(" "));
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    if !root || !on_path("apt-get") {
        bail!("missing Debian packages: run `sudo apt-get update && sudo {install}`");
    }
    eprintln!("xtask: installing {}", missing.join(", "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("installing packages; run `{install}`"))
}

/// Installs the MCP servers the tests and benchmarks start (`tests/mcp-servers`, exact versions
/// from its package-lock.json) unless they are there already.
fn install_mcp_servers(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("tests/mcp-servers");
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules/.package-lock.json");
    let current = match (std::fs::metadata(&lock), std::fs::metadata(&installed)) {
        (Ok(lock), Ok(installed)) => installed.modified()? >= lock.modified()?,
        _ => false,
    };
    if current {
        return Ok(());
    }
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir))
    .with_context(|| {
        format!(
            "installing the test MCP servers; run `npm ci --prefix {}`",
            dir.display()
        )
    })
}

fn on_path(command: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file()))
}

/// `(package name, crate dir)` of every guest crate.
fn guest_crates(root: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut crates = Vec::new();
    for dir in GUEST_DIRS {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.join("Cargo.toml").is_file() {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .context("non-UTF-8 crate dir")?
                    .to_string();
                crates.push((name, path));
            }
        }
    }
    crates.sort();
    Ok(crates)
}

fn guest_package_args(root: &Path) -> anyhow::Result<Vec<String>> {
    Ok(guest_crates(root)?
        .into_iter()
        .flat_map(|(name, _)| ["--package".to_string(), name])
        .collect())
}

/// `--package <name>` for each first-party component (`components/*`).
fn component_package_args(root: &Path) -> anyhow::Result<Vec<String>> {
    Ok(guest_crates(root)?
        .into_iter()
        .filter(|(_, dir)| dir.starts_with(root.join("components")))
        .flat_map(|(name, _)| ["--package".to_string(), name])
        .collect())
}

/// Builds every guest crate for wasm32-wasip2 (release: small and fast components), then copies
/// the first-party components into `components/<id>.wasm`, where capbridge discovers them.
fn build_guests(root: &Path) -> anyhow::Result<()> {
    let crates = guest_crates(root)?;
    run(cargo()
        .args(["build", "--release", "--target", GUEST_TARGET])
        .args(guest_package_args(root)?))?;
    let out_dir = target_dir(root).join(GUEST_TARGET).join("release");
    for (name, dir) in &crates {
        if !dir.starts_with(root.join("components")) {
            continue;
        }
        let built = out_dir.join(format!("{}.wasm", name.replace('-', "_")));
        let installed = root.join("components").join(format!("{name}.wasm"));
        let bytes =
            std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
        if std::fs::read(&installed).ok().as_deref() != Some(&bytes[..]) {
            let tmp = installed.with_extension("wasm.tmp");
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, &installed)?;
        }
    }
    Ok(())
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}
