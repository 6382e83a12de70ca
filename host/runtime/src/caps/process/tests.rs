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
    let rule = store.add("commands", &git, "terminal").unwrap();
    assert_eq!(rule.id, "rule-1");
    assert_eq!(
        store.add("commands", &git, "terminal").unwrap(),
        rule,
        "no duplicate"
    );
    assert!(store.matching("commands", &git).is_some());
    assert!(store.matching("other", &git).is_none());
    assert!(store
        .matching("commands", &command("git", &["--version", "x"]))
        .is_none());

    let reopened = RuleStore::open(dir.path());
    assert_eq!(reopened.list("commands"), vec![rule.clone()]);
    let second = reopened
        .add("commands", &command("ls", &[]), "prompts-cli")
        .unwrap();
    assert_eq!(second.id, "rule-2");
    assert_eq!(reopened.delete("other", "rule-1").unwrap(), None);
    assert_eq!(reopened.delete("commands", "rule-1").unwrap(), Some(rule));
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
