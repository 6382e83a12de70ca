//! Helpers for tests that read policies from inline text, here and in the crates whose
//! capabilities bring their own grants (feature `testing`).

use std::path::Path;

use crate::{ExplainLine, Explanation, GrantKind, Policy, PolicyError};

/// The home directory `~/` expands to in these tests.
pub const HOME: &str = "/home/reviewer";

/// Reads `text` as `policy/echo.toml` of component `echo`, with `kinds`' grants.
pub fn parse(text: &str, kinds: &[&dyn GrantKind]) -> Result<Policy, PolicyError> {
    Policy::parse_with_home(
        "echo",
        Path::new("policy/echo.toml"),
        text,
        Some(Path::new(HOME)),
        kinds,
    )
}

/// The policy; panics when it is refused.
pub fn ok(text: &str, kinds: &[&dyn GrantKind]) -> Policy {
    parse(text, kinds).unwrap_or_else(|e| panic!("rejected: {e}\n--- policy ---\n{text}"))
}

/// The problems of an invalid policy, as `key: message` strings.
pub fn problems(text: &str, kinds: &[&dyn GrantKind]) -> Vec<String> {
    match parse(text, kinds) {
        Err(PolicyError::Invalid { problems, .. }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        Err(other) => panic!("expected validation problems, got: {other}"),
        Ok(p) => panic!("accepted: {p:?}\n--- policy ---\n{text}"),
    }
}

/// The one problem of an invalid policy.
pub fn problem(text: &str, kinds: &[&dyn GrantKind]) -> String {
    let mut all = problems(text, kinds);
    assert_eq!(all.len(), 1, "expected one problem, got {all:#?}");
    all.remove(0)
}

/// The syntax error of a policy that does not parse.
pub fn syntax_error(text: &str, kinds: &[&dyn GrantKind]) -> String {
    match parse(text, kinds) {
        Err(e @ PolicyError::Syntax { .. }) => e.to_string(),
        Err(other) => panic!("expected a syntax error, got: {other}"),
        Ok(p) => panic!("accepted: {p:?}"),
    }
}

/// `s` as a TOML string literal.
pub fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The explanation of a valid policy.
pub fn explain(text: &str, kinds: &[&dyn GrantKind]) -> Explanation {
    ok(text, kinds).explain()
}

/// The line whose text contains `needle`.
pub fn line<'a>(e: &'a Explanation, needle: &str) -> &'a ExplainLine {
    e.lines
        .iter()
        .find(|l| l.text.contains(needle))
        .unwrap_or_else(|| panic!("no line contains {needle:?} in:\n{e}"))
}

/// The risk of the line containing `needle`; panics when it is not flagged.
pub fn risk<'a>(e: &'a Explanation, needle: &str) -> &'a str {
    line(e, needle)
        .risk
        .as_deref()
        .unwrap_or_else(|| panic!("line with {needle:?} is not flagged:\n{e}"))
}

/// Panics when the line containing `needle` is flagged.
pub fn no_risk(e: &Explanation, needle: &str) {
    let l = line(e, needle);
    assert!(l.risk.is_none(), "{needle:?} flagged: {:?}", l.risk);
}
