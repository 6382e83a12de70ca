use super::*;
use crate::testing::{self, quoted, HOME};

/// The baseline alone: no capability claims a key.
const KINDS: &[&dyn GrantKind] = &[];

fn ok(text: &str) -> Policy {
    testing::ok(text, KINDS)
}

fn problem(text: &str) -> String {
    testing::problem(text, KINDS)
}

fn syntax_error(text: &str) -> String {
    testing::syntax_error(text, KINDS)
}

fn directory(host: &str, guest: &str) -> String {
    format!(
        "version = 1\n[[grants.directories]]\nhost = {}\nguest = {}\naccess = \"read-only\"\n",
        quoted(host),
        quoted(guest)
    )
}

#[test]
fn version_is_required_and_must_be_1() {
    assert!(syntax_error("").contains("missing field `version`"));
    assert!(syntax_error("description = \"x\"").contains("version"));
    assert_eq!(
        problem("version = 2"),
        "version: unsupported policy version 2; this capbridge reads version 1"
    );
    assert!(problem("version = 0").contains("unsupported policy version 0"));
    // A newer file is reported by its version, not by the keys this version does not know.
    assert!(problem("version = 2\n[sandbox]\nnew = true").contains("unsupported policy version 2"));
    assert!(syntax_error("version = \"1\"").contains("version"));
}

#[test]
fn unknown_keys_are_rejected_everywhere() {
    let cases = [
        ("version = 1\nnetwrok = []", "netwrok"),
        ("version = 1\n[limits]\ncpu-ms = 5", "cpu-ms"),
        ("version = 1\n[limits]\ndeadline_ms = 5", "deadline_ms"),
        ("version = 1\n[grants]\nprocesses = [\"ls\"]", "processes"),
        ("version = 1\n[grants]\nsockets = true", "sockets"),
        (
            "version = 1\n[[grants.directories]]\nhost = \"/a\"\nguest = \"/a\"\naccess = \"read-only\"\nfollow-symlinks = true",
            "follow-symlinks",
        ),
        ("version = 1\n[deny]\nnetwork = []", "deny"),
    ];
    for (text, key) in cases {
        let message = syntax_error(text);
        assert!(
            message.contains(&format!("unknown field `{key}`")),
            "{message}"
        );
        assert!(message.contains("policy/echo.toml"), "{message}");
        assert!(message.contains("line"), "{message}");
    }
}

#[test]
fn limits_are_range_checked() {
    for (key, low, high, below, above) in [
        ("deadline-ms", 1, 3_600_000, Some(0), 3_600_001),
        ("memory-mib", 1, 4096, Some(0), 4097),
        ("table-elements", 1, 1_000_000, Some(0), 1_000_001),
        ("output-bytes", 0, 67_108_864, None, 67_108_865),
    ] {
        ok(&format!("version = 1\n[limits]\n{key} = {low}"));
        ok(&format!("version = 1\n[limits]\n{key} = {high}"));
        let message = problem(&format!("version = 1\n[limits]\n{key} = {above}"));
        assert!(
            message.starts_with(&format!("limits.{key}: {above} is out of range")),
            "{message}"
        );
        if let Some(below) = below {
            let message = problem(&format!("version = 1\n[limits]\n{key} = {below}"));
            assert!(message.starts_with(&format!("limits.{key}: ")), "{message}");
        }
    }
    let p = ok("version = 1\n[limits]\nmemory-mib = 4096\ndeadline-ms = 3600000");
    assert_eq!(p.limits.memory_bytes, 4096 << 20);
    assert_eq!(p.limits.deadline, Duration::from_secs(3600));
}

#[test]
fn instance_modes() {
    assert_eq!(
        ok("version = 1\ninstance = \"fresh\"").instance,
        InstanceMode::Fresh
    );
    assert_eq!(
        ok("version = 1\ninstance = \"persistent\"").instance,
        InstanceMode::Persistent
    );
}

#[test]
fn home_is_expanded() {
    let p = ok(&directory("~/capbridge/files", "/files"));
    assert_eq!(
        p.directories[0].host,
        Path::new("/home/reviewer/capbridge/files")
    );
    let p = ok(&directory("~/", "/home"));
    assert_eq!(p.directories[0].host, Path::new("/home/reviewer"));
    assert_eq!(p.home.as_deref(), Some(Path::new(HOME)));
}

#[test]
fn parse_takes_home_from_the_environment() {
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        return;
    };
    let text = directory("~/capbridge-test-no-such-dir", "/x");
    let p = Policy::parse("echo", Path::new("policy/echo.toml"), &text, &[]).unwrap();
    assert_eq!(
        p.directories[0].host,
        home.join("capbridge-test-no-such-dir")
    );
}

#[test]
fn tilde_without_a_known_home_is_rejected() {
    let err = Policy::parse_with_home(
        "echo",
        Path::new("p.toml"),
        &directory("~/x", "/x"),
        None,
        &[],
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("home directory is not known"),
        "{err}"
    );
    let err = Policy::parse_with_home(
        "echo",
        Path::new("p.toml"),
        &directory("~/x", "/x"),
        Some(Path::new("relative/home")),
        &[],
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("home directory is not known"),
        "{err}"
    );
}

#[test]
fn host_paths_must_be_absolute_or_home_relative() {
    for host in [
        "files",
        "./files",
        "../files",
        "~user/files",
        "~",
        "~files",
        "",
    ] {
        let message = problem(&directory(host, "/files"));
        assert!(
            message.starts_with("grants.directories[0].host: "),
            "{message}"
        );
    }
    assert!(problem(&directory("~bob/x", "/x")).contains("only ~/"));
    assert!(problem(&directory("/srv/../etc", "/x")).contains(".."));
    assert!(problem(&directory("~/../other", "/x")).contains(".."));
    assert!(problem(&directory("/srv/a\0b", "/x")).contains("NUL"));
}

#[test]
fn host_paths_are_normalised_and_canonicalised_when_they_exist() {
    let p = ok(&directory("/no-such-dir-capbridge//a/./b/", "/x"));
    assert_eq!(
        p.directories[0].host,
        Path::new("/no-such-dir-capbridge/a/b")
    );

    let temp = tempfile::tempdir().unwrap();
    let real = temp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = temp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let p = ok(&directory(link.to_str().unwrap(), "/x"));
    assert_eq!(p.directories[0].host, std::fs::canonicalize(&real).unwrap());

    let missing = temp.path().join("link").join("missing");
    let p = ok(&directory(missing.to_str().unwrap(), "/x"));
    assert_eq!(
        p.directories[0].host, missing,
        "a missing path is kept as written"
    );
}

#[test]
fn guest_paths_must_be_absolute_and_normalised() {
    for guest in ["/", "/files", "/a/b-c/d.e", "/..x", "/.hidden"] {
        ok(&directory("/srv", guest));
    }
    for (guest, why) in [
        ("files", "absolute"),
        ("", "absolute"),
        ("/files/", "end with '/'"),
        ("/a//b", "'//'"),
        ("/a/./b", "`.`"),
        ("/a/../b", "`..`"),
        ("/..", "`..`"),
        ("/.", "`.`"),
        ("/a\0", "NUL"),
    ] {
        let message = problem(&directory("/srv", guest));
        assert!(
            message.starts_with("grants.directories[0].guest: "),
            "{message}"
        );
        assert!(message.contains(why), "{guest:?}: {message}");
    }
}

#[test]
fn guest_paths_must_be_unique() {
    let text = r#"
        version = 1
        [[grants.directories]]
        host = "/a"
        guest = "/files"
        access = "read-only"
        [[grants.directories]]
        host = "/b"
        guest = "/other"
        access = "read-only"
        [[grants.directories]]
        host = "/c"
        guest = "/files"
        access = "read-write"
    "#;
    assert_eq!(
        problem(text),
        "grants.directories[2].guest: \"/files\" is already granted by an earlier directory"
    );
    // The same host at two guest paths is allowed.
    ok(r#"
        version = 1
        [[grants.directories]]
        host = "/a"
        guest = "/one"
        access = "read-only"
        [[grants.directories]]
        host = "/a"
        guest = "/two"
        access = "read-only"
    "#);
}

#[test]
fn environment_names() {
    let p = ok("version = 1\n[grants]\nenvironment = [\"LANG\", \"lower_case\", \"A1\"]");
    assert_eq!(p.environment, ["LANG", "lower_case", "A1"]);
    assert_eq!(
        problem("version = 1\n[grants]\nenvironment = [\"\"]"),
        "grants.environment[0]: must not be empty"
    );
    assert!(problem("version = 1\n[grants]\nenvironment = [\"A=B\"]")
        .starts_with("grants.environment[0]: \"A=B\""));
    assert!(problem("version = 1\n[grants]\nenvironment = [\"A\\u0000\"]").contains("NUL"));
    assert_eq!(
        problem("version = 1\n[grants]\nenvironment = [\"LANG\", \"TZ\", \"LANG\"]"),
        "grants.environment[2]: \"LANG\" is listed twice"
    );
}
