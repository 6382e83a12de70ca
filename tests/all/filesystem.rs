//! `/api/v1/filesystem/*` end to end: a real server, real HTTP and WebSocket clients, the real
//! `filesystem` component with its shipped policy, whose directory grants are rewritten to a
//! temporary read-write `/workspace` and a read-only `/docs`. Every hostile request checks its
//! status and that nothing outside the targets was read or written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use capbridge_api::BridgeConfig;
use capbridge_tests::{
    assert_error, fixture_with, next_event, shipped_policy, with_directories, Bridge, DirGrant,
    Fixture,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

use capbridge_tests::TOKEN_HEADER as TOKEN;
/// What the file next to the targets holds; no response may ever contain it.
const SECRET: &str = "secret-next-to-the-target-5c1e0d";
/// What the file in the directory next to the targets holds.
const OUTSIDE: &str = "secret-in-a-sibling-directory-93ab7f";
const MIB: u64 = 1024 * 1024;

/// A bridge serving the `filesystem` component over a temporary layout:
///
/// ```text
/// root/
///   workspace/     granted read-write at /workspace (target `workspace`)
///   docs/          granted read-only at /docs (target `docs`), holds readme.txt
///   secret.txt     SECRET
///   outside/       secret.txt: OUTSIDE
/// ```
struct Env {
    _fixture: Fixture,
    root: tempfile::TempDir,
    bridge: Bridge,
    token: String,
    /// Every response body received, to check that no secret ever left.
    seen: Mutex<Vec<String>>,
}

const README: &str = "read me, do not change me\n";

impl Env {
    async fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let path = root.path();
        std::fs::create_dir(path.join("workspace")).unwrap();
        std::fs::create_dir(path.join("docs")).unwrap();
        std::fs::create_dir(path.join("outside")).unwrap();
        std::fs::write(path.join("secret.txt"), SECRET).unwrap();
        std::fs::write(path.join("outside/secret.txt"), OUTSIDE).unwrap();
        std::fs::write(path.join("docs/readme.txt"), README).unwrap();
        let policy = with_directories(
            &shipped_policy("filesystem"),
            &[
                DirGrant {
                    host: &path.join("workspace"),
                    guest: "/workspace",
                    access: "read-write",
                },
                DirGrant {
                    host: &path.join("docs"),
                    guest: "/docs",
                    access: "read-only",
                },
            ],
        );
        Self::with_policy(root, &policy).await
    }

    async fn with_policy(root: tempfile::TempDir, policy: &str) -> Self {
        let fixture = fixture_with("filesystem", policy);
        let runtime = fixture.runtime();
        capbridge_tests::assert_loaded(&runtime, "filesystem");
        let bridge = Bridge::start(runtime, BridgeConfig::default()).await;
        let token = bridge.token().await;
        Self {
            _fixture: fixture,
            root,
            bridge,
            token,
            seen: Mutex::new(Vec::new()),
        }
    }

    fn workspace(&self) -> PathBuf {
        self.root.path().join("workspace")
    }

    fn docs(&self) -> PathBuf {
        self.root.path().join("docs")
    }

    async fn record(&self, response: reqwest::Response) -> (StatusCode, Value) {
        let status = response.status();
        let text = response.text().await.unwrap();
        self.seen.lock().unwrap().push(text.clone());
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text}"));
        (status, body)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.record(self.bridge.post_as(&self.token, path, &body).await)
            .await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.record(self.bridge.get_as(&self.token, path).await)
            .await
    }

    async fn read(&self, body: Value) -> (StatusCode, Value) {
        self.post("/api/v1/filesystem/read", body).await
    }

    async fn write(&self, body: Value) -> (StatusCode, Value) {
        self.post("/api/v1/filesystem/write", body).await
    }

    /// Checks that nothing next to the targets changed, and that no response held a secret.
    fn assert_outside_untouched(&self) {
        let root = self.root.path();
        assert_eq!(
            names(root),
            set(&["docs", "outside", "secret.txt", "workspace"])
        );
        assert_eq!(
            std::fs::read_to_string(root.join("secret.txt")).unwrap(),
            SECRET
        );
        assert_eq!(names(&root.join("outside")), set(&["secret.txt"]));
        assert_eq!(
            std::fs::read_to_string(root.join("outside/secret.txt")).unwrap(),
            OUTSIDE
        );
        assert_eq!(names(&self.docs()), set(&["readme.txt"]));
        assert_eq!(
            std::fs::read_to_string(self.docs().join("readme.txt")).unwrap(),
            README
        );
        for body in self.seen.lock().unwrap().iter() {
            assert!(
                !body.contains(SECRET),
                "a response leaked the secret: {body}"
            );
            assert!(
                !body.contains(OUTSIDE),
                "a response leaked the secret: {body}"
            );
        }
        assert_no_temp_files(root);
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// The names in `dir` (not following symbolic links).
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// Panics if a write's temporary file (`.<name>.capbridge-<random>.tmp`) is left anywhere under
/// `dir` (symbolic links are not followed).
fn assert_no_temp_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        assert!(
            !name.contains(".capbridge-") && !name.ends_with(".tmp"),
            "temporary file left behind: {}",
            entry.path().display()
        );
        if entry.file_type().unwrap().is_dir() {
            assert_no_temp_files(&entry.path());
        }
    }
}

/// Checks a refusal of a hostile request: 403 `denied` or 400 `invalid_argument`, never a
/// success, a "not found" (which would tell what exists outside) or a server error.
#[track_caller]
fn assert_refused(response: &(StatusCode, Value), what: &str) {
    let (status, body) = response;
    let code = body["error"]["code"].as_str().unwrap_or_default();
    assert!(
        matches!(
            (status.as_u16(), code),
            (403, "denied") | (400, "invalid_argument")
        ),
        "{what}: {status} {body}"
    );
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn targets_list_the_granted_directories_with_host_paths_and_access() {
    let env = Env::start().await;
    let (status, body) = env.get("/api/v1/filesystem/targets").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let canonical = |p: PathBuf| std::fs::canonicalize(p).unwrap().display().to_string();
    assert_eq!(
        body,
        json!({ "targets": [
            { "name": "workspace", "path": canonical(env.workspace()),
              "access": "read-write", "kind": "granted" },
            { "name": "docs", "path": canonical(env.docs()),
              "access": "read-only", "kind": "granted" },
        ]})
    );
    for target in body["targets"].as_array().unwrap() {
        assert!(Path::new(target["path"].as_str().unwrap()).is_absolute());
    }
}

#[tokio::test]
async fn text_and_binary_round_trip() {
    let env = Env::start().await;
    // UTF-8 text, written and read back through the API and checked on disk.
    let text = "héllo, wörld ✓\nsecond line\n";
    let (status, written) = env
        .write(json!({ "target": "workspace", "path": "hello.txt", "content": text }))
        .await;
    assert_eq!(status, StatusCode::OK, "{written}");
    assert_eq!(
        written,
        json!({ "target": "workspace", "path": "hello.txt", "size": text.len(), "created": true })
    );
    assert_eq!(
        std::fs::read_to_string(env.workspace().join("hello.txt")).unwrap(),
        text
    );
    let (status, read) = env
        .read(json!({ "target": "workspace", "path": "hello.txt" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["target"], "workspace");
    assert_eq!(read["path"], "hello.txt");
    assert_eq!(read["size"], text.len());
    assert_eq!(read["encoding"], "utf8");
    assert_eq!(read["content"], text);
    let modified = std::fs::metadata(env.workspace().join("hello.txt"))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert_eq!(read["modifiedMs"], modified);
    // Text asked for as base64.
    let (_, read) = env
        .read(json!({ "target": "workspace", "path": "hello.txt", "encoding": "base64" }))
        .await;
    assert_eq!(read["encoding"], "base64");
    assert_eq!(read["content"], b64(text.as_bytes()));

    // Every byte value, written as base64.
    let bytes: Vec<u8> = (0..=255u8).rev().chain(0..=255).collect();
    let (status, written) = env
        .write(json!({
            "target": "workspace", "path": "blob.bin", "content": b64(&bytes),
            "encoding": "base64",
        }))
        .await;
    assert_eq!(status, StatusCode::OK, "{written}");
    assert_eq!(written["size"], bytes.len());
    assert_eq!(
        std::fs::read(env.workspace().join("blob.bin")).unwrap(),
        bytes
    );
    // Read without an encoding: not UTF-8, so base64.
    let (status, read) = env
        .read(json!({ "target": "workspace", "path": "blob.bin" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["encoding"], "base64");
    assert_eq!(read["size"], bytes.len());
    assert_eq!(read["content"], b64(&bytes));
    // Asked for as UTF-8, it is refused rather than mangled.
    let refused = env
        .read(json!({ "target": "workspace", "path": "blob.bin", "encoding": "utf8" }))
        .await;
    assert_error(&refused, StatusCode::BAD_REQUEST, "invalid_argument");
    // A file written natively reads back the same way.
    std::fs::write(env.workspace().join("native.bin"), [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let (_, read) = env
        .read(json!({ "target": "workspace", "path": "native.bin" }))
        .await;
    assert_eq!(
        (read["encoding"].clone(), read["content"].clone()),
        (json!("base64"), json!("//4AQQ=="))
    );
    // The read-only target can be read.
    let (status, read) = env
        .read(json!({ "target": "docs", "path": "readme.txt" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["content"], README);
    env.assert_outside_untouched();
}

#[tokio::test]
async fn write_modes_create_overwrite_and_either() {
    let env = Env::start().await;
    let file = env.workspace().join("mode.txt");
    let write = |content: &str, mode: Option<&str>| {
        let mut body = json!({ "target": "workspace", "path": "mode.txt", "content": content });
        if let Some(mode) = mode {
            body["mode"] = json!(mode);
        }
        env.write(body)
    };

    // overwrite: the file must exist; nothing is created when it does not.
    let missing = write("one", Some("overwrite")).await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found");
    assert!(!file.exists());
    assert_eq!(names(&env.workspace()), set(&[]));

    // create (the default): made once...
    let (status, body) = write("first", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created"], true);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "first");
    // ...and never replaced.
    for mode in [None, Some("create")] {
        let conflict = write("second", mode).await;
        assert_error(&conflict, StatusCode::CONFLICT, "conflict");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "first");
    }

    // overwrite replaces the content, including with a shorter one.
    let (status, body) = write("2nd", Some("overwrite")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({ "target": "workspace", "path": "mode.txt", "size": 3, "created": false })
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "2nd");

    // create-or-overwrite: either way, and says which.
    let (status, body) = write("third", Some("create-or-overwrite")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created"], false);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "third");
    std::fs::remove_file(&file).unwrap();
    let (status, body) = write("fourth", Some("create-or-overwrite")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created"], true);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "fourth");

    // An empty file is a file.
    let (status, body) = write("", Some("overwrite")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["size"], 0);
    assert_eq!(std::fs::read(&file).unwrap(), b"");

    // A directory is never replaced by a file.
    std::fs::create_dir(env.workspace().join("dir")).unwrap();
    for mode in ["create", "overwrite", "create-or-overwrite"] {
        let refused = env
            .write(json!({ "target": "workspace", "path": "dir", "content": "x", "mode": mode }))
            .await;
        assert_error(&refused, StatusCode::BAD_REQUEST, "invalid_argument");
        assert!(env.workspace().join("dir").is_dir());
    }
    // Nor read as one.
    let refused = env
        .read(json!({ "target": "workspace", "path": "dir" }))
        .await;
    assert_error(&refused, StatusCode::BAD_REQUEST, "invalid_argument");

    assert_eq!(names(&env.workspace()), set(&["dir", "mode.txt"]));
    env.assert_outside_untouched();
}

#[tokio::test]
async fn create_parents_makes_missing_directories_only_when_asked() {
    let env = Env::start().await;
    let refused = env
        .write(json!({ "target": "workspace", "path": "a/b/c.txt", "content": "deep" }))
        .await;
    assert_error(&refused, StatusCode::NOT_FOUND, "not_found");
    assert!(!env.workspace().join("a").exists());

    let (status, body) = env
        .write(json!({
            "target": "workspace", "path": "a/b/c.txt", "content": "deep", "createParents": true,
        }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["path"], "a/b/c.txt");
    assert_eq!(
        std::fs::read_to_string(env.workspace().join("a/b/c.txt")).unwrap(),
        "deep"
    );
    // `.` and empty components are harmless.
    let (status, body) = env
        .read(json!({ "target": "workspace", "path": "./a//b/./c.txt" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["content"], "deep");
    // A file where a parent directory should be.
    let refused = env
        .write(json!({
            "target": "workspace", "path": "a/b/c.txt/d.txt", "content": "x", "createParents": true,
        }))
        .await;
    assert_refused(&refused, "a file as a parent");
    assert_eq!(
        std::fs::read_to_string(env.workspace().join("a/b/c.txt")).unwrap(),
        "deep"
    );
    // `overwrite` of a file that cannot exist: refused before any directory is made.
    let refused = env
        .write(json!({
            "target": "workspace", "path": "x/y/z.txt", "content": "x",
            "mode": "overwrite", "createParents": true,
        }))
        .await;
    assert_error(&refused, StatusCode::NOT_FOUND, "not_found");
    assert!(!env.workspace().join("x").exists());
    // A path naming a directory (trailing `/`) is no file name.
    for path in ["a/b/", "new-dir/"] {
        let refused = env
            .write(json!({ "target": "workspace", "path": path, "content": "x" }))
            .await;
        assert_error(&refused, StatusCode::BAD_REQUEST, "invalid_argument");
    }
    assert!(!env.workspace().join("new-dir").exists());
    env.assert_outside_untouched();
}

#[tokio::test]
async fn reads_are_limited_in_size() {
    let env = Env::start().await;
    std::fs::write(env.workspace().join("2k.txt"), "z".repeat(2048)).unwrap();
    let too_large = env
        .read(json!({ "target": "workspace", "path": "2k.txt", "maxBytes": 1024 }))
        .await;
    assert_error(&too_large, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert!(!too_large.1.to_string().contains("zzzz"), "{}", too_large.1);
    let too_large = env
        .read(json!({ "target": "workspace", "path": "2k.txt", "maxBytes": 2047 }))
        .await;
    assert_error(&too_large, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    // Exactly the limit is fine.
    let (status, body) = env
        .read(json!({ "target": "workspace", "path": "2k.txt", "maxBytes": 2048 }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["size"], 2048);
    // The limit itself is limited: at most 16 MiB.
    let (status, body) = env
        .read(json!({ "target": "workspace", "path": "2k.txt", "maxBytes": 16 * MIB }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for max in [16 * MIB + 1, u64::MAX] {
        let invalid = env
            .read(json!({ "target": "workspace", "path": "2k.txt", "maxBytes": max }))
            .await;
        assert_error(&invalid, StatusCode::BAD_REQUEST, "invalid_argument");
    }
    // The default limit is 8 MiB (a sparse file: nothing is really allocated).
    let big = std::fs::File::create(env.workspace().join("big.bin")).unwrap();
    big.set_len(8 * MIB + 1).unwrap();
    let too_large = env
        .read(json!({ "target": "workspace", "path": "big.bin" }))
        .await;
    assert_error(&too_large, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    env.assert_outside_untouched();
}

#[tokio::test]
async fn reads_and_writes_are_published_as_events_without_content() {
    let env = Env::start().await;
    let mut socket = env.bridge.events(&env.token).await;
    next_event(&mut socket, "bridge.connected").await;

    let content = "event content that stays out of events";
    let (status, body) = env
        .write(
            json!({ "target": "workspace", "path": "sub/e.txt", "content": content,
                        "createParents": true }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let written = next_event(&mut socket, "filesystem.written").await;
    assert_eq!(written["source"], "filesystem");
    assert_eq!(
        written["payload"],
        json!({ "target": "workspace", "path": "sub/e.txt", "size": content.len(), "created": true })
    );

    let (status, body) = env
        .read(json!({ "target": "workspace", "path": "sub/e.txt" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let read = next_event(&mut socket, "filesystem.read").await;
    assert_eq!(read["source"], "filesystem");
    assert_eq!(
        read["payload"],
        json!({ "target": "workspace", "path": "sub/e.txt", "size": content.len() })
    );

    // A refused write publishes nothing: the next written event is the later, allowed one.
    let conflict = env
        .write(json!({ "target": "workspace", "path": "sub/e.txt", "content": "no" }))
        .await;
    assert_error(&conflict, StatusCode::CONFLICT, "conflict");
    let (status, body) = env
        .write(
            json!({ "target": "workspace", "path": "sub/e.txt", "content": "yes",
                        "mode": "overwrite" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let written = next_event(&mut socket, "filesystem.written").await;
    assert_eq!(
        written["payload"],
        json!({ "target": "workspace", "path": "sub/e.txt", "size": 3, "created": false })
    );
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn parent_references_and_absolute_paths_are_refused() {
    let env = Env::start().await;
    std::fs::write(env.workspace().join("inside.txt"), "inside").unwrap();
    let sibling = env.root.path().join("outside/secret.txt");
    let sibling_canonical = std::fs::canonicalize(&sibling).unwrap();
    let paths = [
        "..".to_string(),
        "../secret.txt".to_string(),
        "a/../../secret.txt".to_string(),
        "a/../inside.txt".to_string(),
        "./../secret.txt".to_string(),
        "../outside/secret.txt".to_string(),
        "../workspace/inside.txt".to_string(),
        "/etc/passwd".to_string(),
        "//etc/passwd".to_string(),
        "/workspace/inside.txt".to_string(),
        "/docs/readme.txt".to_string(),
        sibling.display().to_string(),
        sibling_canonical.display().to_string(),
    ];
    for path in &paths {
        for target in ["workspace", "docs"] {
            let read = env.read(json!({ "target": target, "path": path })).await;
            assert_error(&read, StatusCode::BAD_REQUEST, "invalid_argument");
            for mode in ["create", "overwrite", "create-or-overwrite"] {
                let write = env
                    .write(json!({
                        "target": target, "path": path, "content": "pwned", "mode": mode,
                        "createParents": true,
                    }))
                    .await;
                assert_error(&write, StatusCode::BAD_REQUEST, "invalid_argument");
            }
        }
    }
    // Spellings that only look like escapes are ordinary names inside the target.
    for path in ["..\\secret.txt", "%2e%2e/secret.txt", "...", "..a"] {
        let read = env
            .read(json!({ "target": "workspace", "path": path }))
            .await;
        assert_error(&read, StatusCode::NOT_FOUND, "not_found");
    }
    let (status, body) = env
        .write(json!({ "target": "workspace", "path": "..\\secret.txt", "content": "inside" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        std::fs::read_to_string(env.workspace().join("..\\secret.txt")).unwrap(),
        "inside"
    );
    assert_eq!(
        names(&env.workspace()),
        set(&["..\\secret.txt", "inside.txt"])
    );
    assert_eq!(
        std::fs::read_to_string(env.workspace().join("inside.txt")).unwrap(),
        "inside"
    );
    env.assert_outside_untouched();
}

#[tokio::test]
async fn symbolic_links_do_not_lead_out_of_a_target() {
    use std::os::unix::fs::symlink;
    let env = Env::start().await;
    let ws = env.workspace();
    let root = env.root.path();
    std::fs::write(ws.join("hello.txt"), "hello").unwrap();
    symlink("hello.txt", ws.join("alias.txt")).unwrap();
    symlink("../secret.txt", ws.join("leak.txt")).unwrap();
    symlink(root.join("secret.txt"), ws.join("leak-abs.txt")).unwrap();
    symlink("../outside", ws.join("leak-dir")).unwrap();
    symlink(root.join("outside"), ws.join("leak-dir-abs")).unwrap();
    symlink("../docs", ws.join("docs-link")).unwrap();
    symlink("loop-b", ws.join("loop-a")).unwrap();
    symlink("loop-a", ws.join("loop-b")).unwrap();

    // A link that stays inside the target works, so the refusals below are about escaping.
    let (status, body) = env
        .read(json!({ "target": "workspace", "path": "alias.txt" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["content"], "hello");

    // Out of the target: denied by the sandbox. A loop: not a file.
    for (path, status, code) in [
        ("leak.txt", StatusCode::FORBIDDEN, "denied"),
        ("leak-abs.txt", StatusCode::FORBIDDEN, "denied"),
        ("leak-dir/secret.txt", StatusCode::FORBIDDEN, "denied"),
        ("leak-dir-abs/secret.txt", StatusCode::FORBIDDEN, "denied"),
        ("docs-link/readme.txt", StatusCode::FORBIDDEN, "denied"),
        ("loop-a", StatusCode::BAD_REQUEST, "invalid_argument"),
        ("loop-b/x", StatusCode::BAD_REQUEST, "invalid_argument"),
    ] {
        for encoding in [json!(null), json!("base64"), json!("utf8")] {
            let read = env
                .read(json!({ "target": "workspace", "path": path, "encoding": encoding }))
                .await;
            assert_error(&read, status, code);
        }
    }

    // Writing into a linked directory outside: refused in every mode, nothing appears there.
    for path in [
        "leak-dir/new.txt",
        "leak-dir/secret.txt",
        "leak-dir/sub/new.txt",
        "leak-dir-abs/new.txt",
        "leak-dir-abs/secret.txt",
        "docs-link/new.txt",
        "docs-link/readme.txt",
        "loop-a/new.txt",
    ] {
        for mode in ["create", "overwrite", "create-or-overwrite"] {
            for create_parents in [false, true] {
                let write = env
                    .write(json!({
                        "target": "workspace", "path": path, "content": "pwned", "mode": mode,
                        "createParents": create_parents,
                    }))
                    .await;
                assert_refused(&write, path);
            }
        }
    }
    env.assert_outside_untouched();

    // Writing to a link to a file outside never writes through it: `create` finds the name
    // taken; replacing modes replace the link itself, inside the target.
    for link in ["leak.txt", "leak-abs.txt"] {
        let conflict = env
            .write(json!({ "target": "workspace", "path": link, "content": "pwned" }))
            .await;
        assert_error(&conflict, StatusCode::CONFLICT, "conflict");
        env.assert_outside_untouched();
    }
    let (status, body) = env
        .write(
            json!({ "target": "workspace", "path": "leak.txt", "content": "replaced",
                        "mode": "overwrite" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = env
        .write(
            json!({ "target": "workspace", "path": "leak-abs.txt", "content": "replaced",
                        "mode": "create-or-overwrite" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for link in ["leak.txt", "leak-abs.txt"] {
        let meta = std::fs::symlink_metadata(ws.join(link)).unwrap();
        assert!(meta.is_file(), "{link} is still a link");
        assert_eq!(std::fs::read_to_string(ws.join(link)).unwrap(), "replaced");
    }
    env.assert_outside_untouched();
}

/// A replacing write (`overwrite`, `create-or-overwrite`) to a path that is a symbolic link
/// replaces the link itself with a regular file: the new file is renamed over the entry, so the
/// file the link pointed to keeps its content, whether it is in the same target or outside it.
/// No write ever goes through a link (docs/contract.md, "Symbolic links").
#[tokio::test]
async fn replacing_a_symbolic_link_replaces_the_link_never_the_file_it_points_to() {
    use std::os::unix::fs::symlink;
    let env = Env::start().await;
    let ws = env.workspace();
    let root = env.root.path();
    std::fs::create_dir(ws.join("real")).unwrap();
    std::fs::write(ws.join("real/inside.txt"), "inside").unwrap();
    let links = [
        ("to-inside.txt", PathBuf::from("real/inside.txt")),
        ("to-outside.txt", PathBuf::from("../secret.txt")),
        ("to-outside-abs.txt", root.join("secret.txt")),
    ];
    for mode in ["overwrite", "create-or-overwrite"] {
        for (link, points_to) in &links {
            let _ = std::fs::remove_file(ws.join(link));
            symlink(points_to, ws.join(link)).unwrap();
        }
        // The link inside the target is followed for reading.
        let (status, body) = env
            .read(json!({ "target": "workspace", "path": "to-inside.txt" }))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["content"], "inside");

        for (link, _) in &links {
            // `create` finds the name taken, and changes nothing.
            let conflict = env
                .write(json!({ "target": "workspace", "path": link, "content": "new" }))
                .await;
            assert_error(&conflict, StatusCode::CONFLICT, "conflict");
            assert!(std::fs::symlink_metadata(ws.join(link))
                .unwrap()
                .file_type()
                .is_symlink());

            let (status, body) = env
                .write(json!({ "target": "workspace", "path": link,
                               "content": format!("new {link}"), "mode": mode }))
                .await;
            assert_eq!(status, StatusCode::OK, "{mode} {link}: {body}");
            assert_eq!(body["created"], false, "{mode} {link}: {body}");
            let meta = std::fs::symlink_metadata(ws.join(link)).unwrap();
            assert!(meta.is_file(), "{mode}: {link} is still a link");
            assert_eq!(
                std::fs::read_to_string(ws.join(link)).unwrap(),
                format!("new {link}")
            );
        }
        // The files the links pointed to are unchanged, inside the target and outside.
        assert_eq!(
            std::fs::read_to_string(ws.join("real/inside.txt")).unwrap(),
            "inside"
        );
        let (status, body) = env
            .read(json!({ "target": "workspace", "path": "real/inside.txt" }))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["content"], "inside");
        let (status, body) = env
            .read(json!({ "target": "workspace", "path": "to-inside.txt" }))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["content"], "new to-inside.txt");
        assert_eq!(names(&ws.join("real")), set(&["inside.txt"]));
        assert_eq!(
            names(&ws),
            set(&[
                "real",
                "to-inside.txt",
                "to-outside.txt",
                "to-outside-abs.txt"
            ])
        );
        env.assert_outside_untouched();
    }
}

/// An I/O error inside the component is reported by its WASI error name, never by the number
/// std formats it with (`os error 63`), which is a WASI errno and means something else on the
/// host.
#[tokio::test]
async fn io_errors_are_named_not_numbered() {
    use std::os::unix::fs::symlink;
    let env = Env::start().await;
    let ws = env.workspace();
    std::fs::write(ws.join("file.txt"), "a file").unwrap();
    symlink("../secret.txt", ws.join("leak.txt")).unwrap();
    symlink("loop-b", ws.join("loop-a")).unwrap();
    symlink("loop-a", ws.join("loop-b")).unwrap();
    let cases = [
        (
            "write into the read-only target",
            env.write(json!({ "target": "docs", "path": "new.txt", "content": "x" }))
                .await,
            StatusCode::FORBIDDEN,
            "denied",
            "`not-permitted`",
        ),
        (
            "read through a link out of the target",
            env.read(json!({ "target": "workspace", "path": "leak.txt" }))
                .await,
            StatusCode::FORBIDDEN,
            "denied",
            "`not-permitted`",
        ),
        (
            "read a loop of links",
            env.read(json!({ "target": "workspace", "path": "loop-a" }))
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "`loop`",
        ),
        (
            "read below a file",
            env.read(json!({ "target": "workspace", "path": "file.txt/x" }))
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "`not-directory`",
        ),
    ];
    for (what, response, status, code, name) in cases {
        assert_error(&response, status, code);
        let message = response.1["error"]["message"].as_str().unwrap();
        assert!(!message.contains("os error"), "{what}: {message}");
        assert!(message.contains(name), "{what}: {message}");
    }
    env.assert_outside_untouched();
}

#[tokio::test]
async fn nul_bytes_and_overlong_paths_are_refused() {
    let env = Env::start().await;
    std::fs::write(env.workspace().join("a"), "a").unwrap();
    let long_path = "a/".repeat(2500);
    assert_eq!(long_path.len(), 5000);
    let long_component = "x".repeat(300);
    let cases = [
        ("workspace", "a\0"),
        ("workspace", "\0"),
        ("workspace", "a\0/../../secret.txt"),
        ("workspace", long_path.as_str()),
        ("workspace", long_component.as_str()),
        ("workspace", ""),
        ("workspace", "."),
        ("workspace", "./"),
        ("workspace\0", "a"),
        ("workspace\0/../secret.txt", "a"),
        ("\0", "a"),
    ];
    for (target, path) in cases {
        let read = env.read(json!({ "target": target, "path": path })).await;
        assert_error(&read, StatusCode::BAD_REQUEST, "invalid_argument");
        let write = env
            .write(json!({ "target": target, "path": path, "content": "x",
                           "mode": "create-or-overwrite", "createParents": true }))
            .await;
        assert_error(&write, StatusCode::BAD_REQUEST, "invalid_argument");
    }
    // The limits themselves: a 255-byte name can be written and read.
    let longest = "n".repeat(255);
    let (status, body) = env
        .write(json!({ "target": "workspace", "path": longest, "content": "long name" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = env
        .read(json!({ "target": "workspace", "path": longest }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["content"], "long name");
    assert_eq!(names(&env.workspace()), set(&["a", &longest]));
    assert_eq!(
        std::fs::read_to_string(env.workspace().join("a")).unwrap(),
        "a"
    );
    env.assert_outside_untouched();
}

#[tokio::test]
async fn targets_are_names_of_granted_directories_only() {
    let env = Env::start().await;
    std::fs::write(env.workspace().join("f.txt"), "f").unwrap();
    for target in ["nope", "tmp", "etc", "root", "picked-1", "workspace2"] {
        let read = env.read(json!({ "target": target, "path": "f.txt" })).await;
        assert_error(&read, StatusCode::NOT_FOUND, "not_found");
        let write = env
            .write(json!({ "target": target, "path": "new.txt", "content": "x" }))
            .await;
        assert_error(&write, StatusCode::NOT_FOUND, "not_found");
    }
    for target in [
        "",
        ".",
        "..",
        "/workspace",
        "workspace/",
        "workspace/..",
        "../workspace",
        "workspace/../docs",
        "docs/../workspace",
        "workspace/f.txt",
    ] {
        let read = env.read(json!({ "target": target, "path": "f.txt" })).await;
        assert_error(&read, StatusCode::BAD_REQUEST, "invalid_argument");
        let write = env
            .write(json!({ "target": target, "path": "new.txt", "content": "x",
                           "createParents": true }))
            .await;
        assert_error(&write, StatusCode::BAD_REQUEST, "invalid_argument");
    }
    assert_eq!(names(&env.workspace()), set(&["f.txt"]));
    env.assert_outside_untouched();
}

#[tokio::test]
async fn the_read_only_target_refuses_every_write() {
    let env = Env::start().await;
    std::fs::create_dir(env.docs().join("sub")).unwrap();
    for (path, mode, create_parents) in [
        ("new.txt", "create", false),
        ("readme.txt", "overwrite", false),
        ("readme.txt", "create-or-overwrite", false),
        ("new.txt", "create-or-overwrite", false),
        ("sub/new.txt", "create", false),
        ("deeper/new.txt", "create", true),
    ] {
        let denied = env
            .write(
                json!({ "target": "docs", "path": path, "content": "pwned", "mode": mode,
                           "createParents": create_parents }),
            )
            .await;
        assert_error(&denied, StatusCode::FORBIDDEN, "denied");
    }
    // Wrong mode for what exists is still reported as such, and changes nothing either.
    let conflict = env
        .write(json!({ "target": "docs", "path": "readme.txt", "content": "pwned" }))
        .await;
    assert_error(&conflict, StatusCode::CONFLICT, "conflict");
    std::fs::remove_dir(env.docs().join("sub")).unwrap();
    // Nothing changed and no temporary file was left in the read-only directory.
    env.assert_outside_untouched();
}

#[tokio::test]
async fn invalid_content_is_refused_and_leaves_nothing_behind() {
    let env = Env::start().await;
    std::fs::write(env.workspace().join("keep.txt"), "keep").unwrap();
    for content in ["not base64!", "QUJD=QUJD", "@@@@", "QQ=Q"] {
        for (path, mode) in [
            ("new.bin", "create"),
            ("keep.txt", "overwrite"),
            ("keep.txt", "create-or-overwrite"),
        ] {
            let invalid = env
                .write(
                    json!({ "target": "workspace", "path": path, "content": content,
                               "encoding": "base64", "mode": mode }),
                )
                .await;
            assert_error(&invalid, StatusCode::BAD_REQUEST, "invalid_argument");
        }
    }
    // An unknown encoding or mode is a bad request before the component is called.
    for body in [
        json!({ "target": "workspace", "path": "new.bin", "content": "x", "encoding": "hex" }),
        json!({ "target": "workspace", "path": "new.bin", "content": "x", "mode": "append" }),
        json!({ "target": "workspace", "path": "new.bin" }),
    ] {
        let (status, body) = env.write(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    assert_eq!(names(&env.workspace()), set(&["keep.txt"]));
    assert_eq!(
        std::fs::read_to_string(env.workspace().join("keep.txt")).unwrap(),
        "keep"
    );
    // Successful writes in every mode leave no temporary file either.
    for (mode, content) in [
        ("create", "a"),
        ("overwrite", "b"),
        ("create-or-overwrite", "c"),
    ] {
        let (status, body) = env
            .write(
                json!({ "target": "workspace", "path": "fresh.txt", "content": content,
                           "mode": mode }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{mode}: {body}");
    }
    assert_eq!(names(&env.workspace()), set(&["fresh.txt", "keep.txt"]));
    assert_eq!(
        std::fs::read_to_string(env.workspace().join("fresh.txt")).unwrap(),
        "c"
    );
    env.assert_outside_untouched();
}

#[tokio::test]
async fn select_needs_a_display() {
    let env = Env::start().await;
    for body in [
        json!({}),
        json!({ "title": "Pick a folder", "access": "read-write" }),
    ] {
        let unavailable = env.post("/api/v1/filesystem/select", body).await;
        assert_error(&unavailable, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        let message = unavailable.1["error"]["message"].as_str().unwrap();
        assert!(message.contains("display"), "{message}");
    }
    // A file picker needs a display too.
    let refused = env
        .post("/api/v1/filesystem/select", json!({ "kind": "file" }))
        .await;
    assert_error(&refused, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let refused = env
        .post("/api/v1/filesystem/select", json!({ "kind": "socket" }))
        .await;
    assert_eq!(refused.0, StatusCode::BAD_REQUEST, "{}", refused.1);
    let (status, body) = env.get("/api/v1/filesystem/targets").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["targets"].as_array().unwrap().len(), 2, "{body}");
}

#[tokio::test]
async fn every_route_needs_a_session() {
    let env = Env::start().await;
    std::fs::write(env.workspace().join("f.txt"), "f").unwrap();
    let client = &env.bridge.client;
    let anonymous = [
        client.get(env.bridge.url("/api/v1/filesystem/targets")),
        client
            .post(env.bridge.url("/api/v1/filesystem/select"))
            .json(&json!({})),
        client
            .post(env.bridge.url("/api/v1/filesystem/read"))
            .json(&json!({ "target": "workspace", "path": "f.txt" })),
        client
            .post(env.bridge.url("/api/v1/filesystem/write"))
            .json(&json!({ "target": "workspace", "path": "new.txt", "content": "x" })),
        client
            .post(env.bridge.url("/api/v1/filesystem/write"))
            .header(TOKEN, "A".repeat(43))
            .json(&json!({ "target": "workspace", "path": "new.txt", "content": "x" })),
    ];
    for request in anonymous {
        let response = env.record(request.send().await.unwrap()).await;
        assert_eq!(response.0, StatusCode::UNAUTHORIZED, "{}", response.1);
        assert!(response.1["error"]["code"].is_string());
        assert!(response.1.get("targets").is_none());
    }
    let in_query = client
        .post(env.bridge.url(&format!(
            "/api/v1/filesystem/read?sessionToken={}",
            env.token
        )))
        .json(&json!({ "target": "workspace", "path": "f.txt" }))
        .send()
        .await
        .unwrap();
    assert_eq!(in_query.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(names(&env.workspace()), set(&["f.txt"]));
    // With the session, the same read works.
    let (status, _) = env
        .read(json!({ "target": "workspace", "path": "f.txt" }))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn without_directory_grants_there_is_no_target() {
    let root = tempfile::tempdir().unwrap();
    let policy = with_directories(&shipped_policy("filesystem"), &[]);
    assert!(!policy.contains("~/capbridge"), "{policy}");
    let env = Env::with_policy(root, &policy).await;
    let (status, body) = env.get("/api/v1/filesystem/targets").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "targets": [] }));
    let missing = env
        .read(json!({ "target": "workspace", "path": "f.txt" }))
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found");
    let missing = env
        .write(json!({ "target": "workspace", "path": "f.txt", "content": "x" }))
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn without_the_component_the_routes_are_unavailable() {
    let fixture = Fixture::new();
    let bridge = Bridge::start(fixture.runtime(), BridgeConfig::default()).await;
    let token = bridge.token().await;
    let response = bridge.get_as(&token, "/api/v1/filesystem/targets").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "capability_unavailable");
    let response = bridge
        .post_as(
            &token,
            "/api/v1/filesystem/read",
            &json!({ "target": "workspace", "path": "f.txt" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "capability_unavailable");
}
