//! Recorded component tests, as a third-party author runs them: a component built outside this
//! repository with its own cargo project, recorded with `capbridge component call --record`,
//! committed, replayed offline with `capbridge test`, then changed and replayed again.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use capbridge_tests::{policy, root, Fixture};

use crate::capbridge;

const WORLD: &str = r#"package example:greeter;

world greeter {
  import capbridge:host/log@0.1.0;

  export greet: func(name: string) -> string;
}
"#;

/// Version 1: reads the greeting from its granted directory, logs, and greets.
const GREETER_V1: &str = r#"
wit_bindgen::generate!({ world: "greeter", path: "wit", generate_all });

struct Greeter;

impl Guest for Greeter {
    fn greet(name: String) -> String {
        let greeting = std::fs::read_to_string("/data/greeting.txt")
            .unwrap_or_else(|e| format!("(no greeting: {e})"));
        capbridge::host::log::write(capbridge::host::log::Level::Info, &format!("greeting {name}"));
        format!("{}, {name}!", greeting.trim())
    }
}

export!(Greeter);
"#;

/// Version 2: the same, and it looks at the clock first (one more host call).
fn greeter_v2() -> String {
    let v2 = GREETER_V1.replace(
        "    fn greet(name: String) -> String {\n",
        "    fn greet(name: String) -> String {\n        let _started = std::time::SystemTime::now();\n",
    );
    assert_ne!(v2, GREETER_V1, "version 1 changed shape; adapt this test");
    v2
}

/// A component author's project, outside this repository.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path();
        std::fs::create_dir_all(path.join("src")).unwrap();
        std::fs::create_dir_all(path.join("wit/deps/capbridge")).unwrap();
        std::fs::write(
            path.join("Cargo.toml"),
            format!(
                "[package]\nname = \"greeter\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
                 [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nwit-bindgen = \"{}\"\n\n\
                 # Its own workspace, not part of any around it.\n[workspace]\n",
                wit_bindgen_version()
            ),
        )
        .unwrap();
        std::fs::write(path.join("wit/world.wit"), WORLD).unwrap();
        // The author copies capbridge's interfaces (docs/components.md).
        std::fs::copy(
            root().join("wit/host.wit"),
            path.join("wit/deps/capbridge/host.wit"),
        )
        .unwrap();
        // The lock file of this repository pins what the registry cache already holds.
        std::fs::copy(root().join("Cargo.lock"), path.join("Cargo.lock")).unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `source` and builds the component; returns the `.wasm`.
    fn build(&self, source: &str) -> PathBuf {
        std::fs::write(self.path().join("src/lib.rs"), source).unwrap();
        // Its own target directory (kept between runs, so later builds are quick), and none
        // of the variables the enclosing `cargo test` sets for its own build.
        let target = root().join("target/third-party");
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
            .current_dir(self.path())
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "the greeter does not build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("wasm32-wasip2/release/greeter.wasm")
    }

    fn git(&self, args: &[&str]) {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=Author",
                "-c",
                "user.email=author@example.org",
            ])
            .args(args)
            .current_dir(self.path())
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    }
}

/// The wit-bindgen version this repository's components use (so nothing new is downloaded).
fn wit_bindgen_version() -> String {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).unwrap();
    let at = lock
        .find("name = \"wit-bindgen\"\nversion = \"0.61")
        .expect("wit-bindgen 0.61 in Cargo.lock");
    let version = &lock[at + "name = \"wit-bindgen\"\nversion = \"".len()..];
    format!("={}", &version[..version.find('"').unwrap()])
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_third_party_component_is_recorded_committed_replayed_and_its_change_caught() {
    let project = Project::new();
    let wasm = project.build(GREETER_V1);

    // Installed next to a bridge, with a policy granting its data directory and the log.
    let fx = Fixture::new();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("greeting.txt"), "Hello").unwrap();
    fx.add(
        "greeter",
        &wasm,
        Some(&policy(&format!(
            "[grants]\nlog = true\n\n[[grants.directories]]\nhost = \"{}\"\nguest = \"/data\"\naccess = \"read-only\"\n",
            data.path().display()
        ))),
    );
    let trace = project.path().join("tests/greet-ada.trace.json");
    let out = capbridge(
        &fx,
        &[
            "component",
            "call",
            "greeter",
            "greet",
            r#"{"name": "Ada"}"#,
            "--record",
            trace.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "\"Hello, Ada!\""
    );
    let recorded = std::fs::read_to_string(&trace).unwrap();
    assert!(recorded.contains(r#""utf8": "Hello""#), "{recorded}");
    assert!(recorded.contains(r#""function": "write""#), "{recorded}");
    project.git(&["init", "--quiet"]);
    project.git(&["add", "."]);
    project.git(&["commit", "--quiet", "-m", "greeter with a recorded test"]);

    // Offline: the greeting file is gone, the bridge's components too; the trace answers.
    std::fs::remove_file(data.path().join("greeting.txt")).unwrap();
    let empty = Fixture::new();
    let out = capbridge(
        &empty,
        &[
            "test",
            project.path().to_str().unwrap(),
            "--wasm",
            wasm.to_str().unwrap(),
        ],
    );
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("ok    "), "{shown}");
    assert!(
        shown.contains("1 of 1 traces replayed as recorded"),
        "{shown}"
    );
    assert!(!data.path().join("greeting.txt").exists());

    // The author changes the component: the replay fails at the first call that differs.
    let changed = project.build(&greeter_v2());
    let out = capbridge(
        &empty,
        &[
            "test",
            project.path().to_str().unwrap(),
            "--wasm",
            changed.to_str().unwrap(),
        ],
    );
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("FAIL  "), "{shown}");
    assert!(shown.contains("diverges from the trace"), "{shown}");
    assert!(
        shown.contains("actual:   wasi:clocks/wall-clock@"),
        "{shown}"
    );
    assert!(
        shown.contains("changed since the trace was recorded"),
        "{shown}"
    );
    assert!(
        shown.contains("0 of 1 traces replayed as recorded"),
        "{shown}"
    );

    // `capbridge replay` says the same for one file.
    let out = capbridge(
        &empty,
        &[
            "replay",
            trace.to_str().unwrap(),
            "--wasm",
            changed.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("diverges from the trace"),
        "{}",
        text(&out)
    );
}

#[test]
fn test_without_traces_says_how_to_record_one() {
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let out = capbridge(&fx, &["test", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(shown.contains("no traces (*.trace.json) under"), "{shown}");
    assert!(shown.contains("--record"), "{shown}");
}
