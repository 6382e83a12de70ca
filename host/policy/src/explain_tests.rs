use super::*;
use crate::testing::{no_risk, risk};

fn explain(text: &str) -> Explanation {
    crate::testing::explain(text, &[])
}

fn dir(host: &str, access: &str) -> String {
    format!(
        "version = 1\n[[grants.directories]]\nhost = {host:?}\nguest = \"/d\"\naccess = {access:?}\n"
    )
}

#[test]
fn persistent_instances_are_flagged() {
    let e = explain("version = 1\ninstance = \"persistent\"");
    assert!(risk(&e, "long-lived").contains("state survives between calls, from different callers"));
}

#[test]
fn large_limits_are_flagged() {
    let e = explain("version = 1\n[limits]\ndeadline-ms = 300000\nmemory-mib = 1024");
    no_risk(&e, "5 min");
    no_risk(&e, "1024 MiB");
    let e = explain("version = 1\n[limits]\ndeadline-ms = 300001\nmemory-mib = 1025");
    assert!(risk(&e, "300001 ms").contains("over 5 min"));
    assert!(risk(&e, "1025 MiB").contains("1 GiB"));
}

#[test]
fn directories_are_flagged_by_access_and_place() {
    no_risk(&explain(&dir("/srv/data", "read-only")), "/srv/data");
    no_risk(
        &explain(&dir("~/capbridge/files", "read-only")),
        "/home/reviewer/capbridge/files",
    );

    let e = explain(&dir("/srv/data", "read-write"));
    let r = risk(&e, "/srv/data");
    assert!(r.contains("read-write") && !r.contains("STRONG"), "{r}");

    let e = explain(&dir("~/capbridge/files", "read-write"));
    let r = risk(&e, "/home/reviewer/capbridge/files");
    assert!(
        r.starts_with("STRONG") && r.contains("inside the home directory"),
        "{r}"
    );

    for host in ["~/", "/home/reviewer", "/home", "/"] {
        let e = explain(&dir(host, "read-only"));
        assert!(
            risk(&e, "(seen by").contains("home directory or contains it"),
            "{host}"
        );
        let e = explain(&dir(host, "read-write"));
        assert!(
            risk(&e, "(seen by").contains("STRONG: read-write on the home directory"),
            "{host}"
        );
    }
    // A sibling whose name starts like the home directory is not the home directory.
    no_risk(
        &explain(&dir("/home/reviewer2", "read-only")),
        "/home/reviewer2",
    );
}

#[test]
fn secret_looking_environment_variables_are_flagged() {
    let e = explain(
        "version = 1\n[grants]\nenvironment = [\"LANG\", \"GITHUB_TOKEN\", \"client_secret\", \"API_KEY\", \"DB_Password\", \"AWS_CREDENTIALS\"]",
    );
    no_risk(&e, "LANG");
    for name in [
        "GITHUB_TOKEN",
        "client_secret",
        "API_KEY",
        "DB_Password",
        "AWS_CREDENTIALS",
    ] {
        assert!(risk(&e, name).contains("secret"), "{name}");
    }
}
