//! The rule store on disk; the placeholder and output checks are tested next to their code.

use super::rules::{RuleStore, FILE_NAME};
use super::Command;

fn command(program: &str, args: &[&str]) -> Command {
    Command {
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Command::default()
    }
}

#[test]
fn rules_persist_match_exactly_and_belong_to_one_component() {
    let dir = tempfile::tempdir().unwrap();
    let store = RuleStore::open(dir.path());
    let git = command("git", &["--version"]);
    let rule = store
        .add("commands", &git, "/usr/bin/git", "terminal")
        .unwrap();
    assert!(rule.id.starts_with("rule-"));
    let again = store.add("commands", &git, "/usr/bin/git", "terminal");
    assert_eq!(again.unwrap(), rule, "no duplicate");
    assert!(store.matching("commands", &git, "/usr/bin/git").is_some());
    assert!(
        store
            .matching("commands", &git, "/home/you/.local/bin/git")
            .is_none(),
        "another file of that name"
    );
    assert!(store.matching("other", &git, "/usr/bin/git").is_none());
    let longer = command("git", &["--version", "x"]);
    assert!(store
        .matching("commands", &longer, "/usr/bin/git")
        .is_none());

    let reopened = RuleStore::open(dir.path());
    assert_eq!(reopened.list("commands"), vec![rule.clone()]);
    let second = reopened
        .add("commands", &command("ls", &[]), "/bin/ls", "prompts-cli")
        .unwrap();
    assert_ne!(second.id, rule.id);
    assert_eq!(reopened.delete("other", &rule.id).unwrap(), None);
    assert_eq!(
        reopened.delete("commands", &rule.id).unwrap(),
        Some(rule.clone())
    );
    // A deleted rule's id is not given to a new one.
    let third = reopened
        .add("commands", &command("pwd", &[]), "/bin/pwd", "terminal")
        .unwrap();
    assert_ne!(third.id, rule.id);
    assert_eq!(reopened.delete("commands", &third.id).unwrap(), Some(third));
    assert_eq!(RuleStore::open(dir.path()).list("commands"), vec![second]);
    // Nothing but the rules file is left in the directory (no temporary files).
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)]);
}

#[test]
fn an_unreadable_rules_file_grants_nothing_and_is_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE_NAME), b"{ not json").unwrap();
    let store = RuleStore::open(dir.path());
    assert!(store.list("commands").is_empty());
    assert!(dir.path().join("command-rules.json.unreadable").exists());
}

#[test]
fn writes_a_crash_interrupted_are_cleaned_up_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("command-rules.json.new-abc123");
    let fresh = dir.path().join("command-rules.json.new-def456");
    for file in [&old, &fresh] {
        std::fs::write(file, b"{\"version\": 1, \"ru").unwrap();
    }
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let store = RuleStore::open(dir.path());
    assert!(store.list("commands").is_empty());
    assert!(!old.exists(), "a leftover of a crash is removed");
    assert!(
        fresh.exists(),
        "a write that may be going on now is left alone"
    );
}
