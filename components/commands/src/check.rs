//! The shape checks and the output encoding, on plain Rust types: this module does not use the
//! generated bindings, so it compiles and is tested on any target (`cargo test -p commands`).
//!
//! Messages start with the field they are about, in backticks (`` `template.args[3]` ``), and
//! never quote a value: a resolved command holds secrets.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// `timeout-ms` when none is given: 5 minutes.
pub const DEFAULT_TIMEOUT_MS: u64 = 300_000;

const MAX_PROGRAM_BYTES: usize = 4096;
const MAX_ARGS: usize = 1024;
/// Linux's own limit on one argument or environment string (`MAX_ARG_STRLEN`).
const MAX_ARG_BYTES: usize = 128 * 1024;
const MAX_CWD_BYTES: usize = 4096;
const MAX_ENV: usize = 256;
const MAX_ENV_NAME_BYTES: usize = 256;
const MAX_ENV_VALUE_BYTES: usize = 128 * 1024;
const MAX_STDIN_BYTES: usize = 1024 * 1024;
const MAX_ID_BYTES: usize = 128;

/// The fields of a `command`, borrowed.
pub struct Command<'a> {
    pub program: &'a str,
    pub args: &'a [String],
    pub cwd: Option<&'a str>,
    pub env: &'a [(String, String)],
    pub stdin: Option<&'a str>,
}

/// Checks a command; `field` (`template`, `resolved`, `command`) prefixes every field name.
pub fn command(field: &str, command: &Command) -> Result<(), String> {
    let program = format!("{field}.program");
    if command.program.is_empty() {
        return Err(format!("`{program}` is empty"));
    }
    text(&program, command.program, MAX_PROGRAM_BYTES)?;

    if command.args.len() > MAX_ARGS {
        return Err(format!(
            "`{field}.args` has {} items; at most {MAX_ARGS} are allowed",
            command.args.len()
        ));
    }
    for (i, arg) in command.args.iter().enumerate() {
        text(&format!("{field}.args[{i}]"), arg, MAX_ARG_BYTES)?;
    }

    if let Some(cwd) = command.cwd {
        let name = format!("{field}.cwd");
        if !cwd.starts_with('/') {
            return Err(format!(
                "`{name}` is not an absolute path (it must start with `/`)"
            ));
        }
        text(&name, cwd, MAX_CWD_BYTES)?;
    }

    if command.env.len() > MAX_ENV {
        return Err(format!(
            "`{field}.env` has {} entries; at most {MAX_ENV} are allowed",
            command.env.len()
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, (name, value)) in command.env.iter().enumerate() {
        env_name(&format!("{field}.env[{i}]"), name)?;
        // A valid name holds no secret (a placeholder is not a valid name), so it may be shown.
        if let Some(first) = seen.insert(name, i) {
            return Err(format!(
                "`{field}.env.{name}` is given twice (entries {first} and {i})"
            ));
        }
        text(&format!("{field}.env.{name}"), value, MAX_ENV_VALUE_BYTES)?;
    }

    if let Some(stdin) = command.stdin {
        if stdin.len() > MAX_STDIN_BYTES {
            return Err(format!(
                "`{field}.stdin` is {} bytes; at most {MAX_STDIN_BYTES} (1 MiB) are allowed",
                stdin.len()
            ));
        }
    }
    Ok(())
}

/// `timeoutMs`, or its default.
pub fn timeout(timeout_ms: Option<u64>) -> Result<u64, String> {
    match timeout_ms {
        None => Ok(DEFAULT_TIMEOUT_MS),
        Some(0) => Err("`timeoutMs` must be greater than 0".into()),
        Some(ms) => Ok(ms),
    }
}

/// The id of a run or a rule: 1 to 128 bytes.
pub fn id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("`id` is empty".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!(
            "`id` is {} bytes; at most {MAX_ID_BYTES} are allowed",
            id.len()
        ));
    }
    Ok(())
}

/// Output as text and its encoding: `utf-8` when it is valid UTF-8, else standard padded
/// base64 of the exact bytes.
pub fn encode(bytes: Vec<u8>) -> (String, String) {
    match String::from_utf8(bytes) {
        Ok(text) => (text, "utf-8".into()),
        Err(e) => (STANDARD.encode(e.as_bytes()), "base64".into()),
    }
}

/// At most `max` bytes, no NUL byte.
fn text(name: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "`{name}` is {} bytes; at most {max} are allowed",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err(format!("`{name}` contains a NUL byte"));
    }
    Ok(())
}

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 256 bytes. `name` is the entry (`template.env[2]`).
fn env_name(name: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("`{name}` has an empty name"));
    }
    if value.len() > MAX_ENV_NAME_BYTES {
        return Err(format!(
            "`{name}` has a name of {} bytes; at most {MAX_ENV_NAME_BYTES} are allowed",
            value.len()
        ));
    }
    let mut bytes = value.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "`{name}` has a name that is not a variable name (letters, digits and `_`, not \
             starting with a digit)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// Checks `git <args>` with `env`, in `/home/me`, without stdin.
    fn check(args: &[String], env: &[(String, String)]) -> Result<(), String> {
        let cmd = Command {
            program: "git",
            args,
            cwd: Some("/home/me"),
            env,
            stdin: None,
        };
        command("template", &cmd)
    }

    #[test]
    fn a_plain_command_passes() {
        let args = strings(&["status", "--short", ""]);
        let env = pairs(&[("GIT_PAGER", "cat"), ("_x1", "")]);
        assert_eq!(check(&args, &env), Ok(()));
        let bare = Command {
            program: "/usr/bin/env",
            args: &[],
            cwd: None,
            env: &[],
            stdin: Some("input\0with nul"),
        };
        assert_eq!(command("command", &bare), Ok(()));
    }

    #[test]
    fn the_program_must_be_given_short_and_without_nul() {
        let mut cmd = Command {
            program: "",
            args: &[],
            cwd: None,
            env: &[],
            stdin: None,
        };
        assert_eq!(
            command("resolved", &cmd),
            Err("`resolved.program` is empty".into())
        );
        cmd.program = "a\0b";
        assert_eq!(
            command("resolved", &cmd),
            Err("`resolved.program` contains a NUL byte".into())
        );
        let long = "x".repeat(4097);
        cmd.program = &long;
        assert_eq!(
            command("command", &cmd),
            Err("`command.program` is 4097 bytes; at most 4096 are allowed".into())
        );
        let exact = "x".repeat(4096);
        cmd.program = &exact;
        assert_eq!(command("command", &cmd), Ok(()));
    }

    #[test]
    fn args_are_bounded_and_named_by_index() {
        assert_eq!(
            check(&strings(&["ok", "ok", "ok", "a\0"]), &[]),
            Err("`template.args[3]` contains a NUL byte".into())
        );
        let big = vec!["x".repeat(128 * 1024 + 1)];
        assert_eq!(
            check(&big, &[]),
            Err("`template.args[0]` is 131073 bytes; at most 131072 are allowed".into())
        );
        assert_eq!(check(&vec![String::new(); 1024], &[]), Ok(()));
        assert_eq!(
            check(&vec![String::new(); 1025], &[]),
            Err("`template.args` has 1025 items; at most 1024 are allowed".into())
        );
    }

    #[test]
    fn cwd_must_be_absolute() {
        for cwd in ["", "work", "./x", "~/x"] {
            let cmd = Command {
                program: "ls",
                args: &[],
                cwd: Some(cwd),
                env: &[],
                stdin: None,
            };
            assert_eq!(
                command("template", &cmd),
                Err("`template.cwd` is not an absolute path (it must start with `/`)".into()),
                "{cwd:?}"
            );
        }
        let nul = Command {
            program: "ls",
            args: &[],
            cwd: Some("/tmp\0"),
            env: &[],
            stdin: None,
        };
        assert_eq!(
            command("template", &nul),
            Err("`template.cwd` contains a NUL byte".into())
        );
    }

    #[test]
    fn env_names_values_and_duplicates() {
        let err = |env: &[(&str, &str)]| check(&[], &pairs(env)).unwrap_err();
        assert_eq!(err(&[("", "v")]), "`template.env[0]` has an empty name");
        for bad in ["1A", "A-B", "A=B", "É", "__OSL_SECRET[x]__", "A B"] {
            assert!(
                err(&[("OK", ""), (bad, "v")])
                    .starts_with("`template.env[1]` has a name that is not"),
                "{bad:?}"
            );
        }
        assert_eq!(
            err(&[("A", "1"), ("B", "2"), ("A", "3")]),
            "`template.env.A` is given twice (entries 0 and 2)"
        );
        assert_eq!(
            err(&[("TOKEN", "a\0b")]),
            "`template.env.TOKEN` contains a NUL byte"
        );
        let long_name = "N".repeat(257);
        assert_eq!(
            err(&[(&long_name, "")]),
            "`template.env[0]` has a name of 257 bytes; at most 256 are allowed"
        );
        let long_value = "v".repeat(128 * 1024 + 1);
        assert_eq!(
            err(&[("V", &long_value)]),
            "`template.env.V` is 131073 bytes; at most 131072 are allowed"
        );
        let many: Vec<(String, String)> =
            (0..257).map(|i| (format!("V{i}"), String::new())).collect();
        assert_eq!(
            check(&[], &many),
            Err("`template.env` has 257 entries; at most 256 are allowed".into())
        );
        assert_eq!(check(&[], &many[..256]), Ok(()));
    }

    #[test]
    fn stdin_is_at_most_one_mib() {
        let exact = "x".repeat(1024 * 1024);
        let over = "x".repeat(1024 * 1024 + 1);
        let with = |stdin: &str| {
            let cmd = Command {
                program: "cat",
                args: &[],
                cwd: None,
                env: &[],
                stdin: Some(stdin),
            };
            command("template", &cmd)
        };
        assert_eq!(with(&exact), Ok(()));
        assert_eq!(
            with(&over),
            Err("`template.stdin` is 1048577 bytes; at most 1048576 (1 MiB) are allowed".into())
        );
    }

    #[test]
    fn messages_never_quote_values() {
        let secret = "s3cr3t\0";
        let args = vec![secret.to_string()];
        let env = pairs(&[("K", secret)]);
        for result in [check(&args, &[]), check(&[], &env)] {
            assert!(!result.unwrap_err().contains("s3cr3t"));
        }
    }

    #[test]
    fn timeout_defaults_and_must_be_positive() {
        assert_eq!(timeout(None), Ok(300_000));
        assert_eq!(timeout(Some(1)), Ok(1));
        assert_eq!(timeout(Some(u64::MAX)), Ok(u64::MAX));
        assert_eq!(
            timeout(Some(0)),
            Err("`timeoutMs` must be greater than 0".into())
        );
    }

    #[test]
    fn ids_are_one_to_128_bytes() {
        assert_eq!(id("run-1"), Ok(()));
        assert_eq!(id(&"a".repeat(128)), Ok(()));
        assert_eq!(id(""), Err("`id` is empty".into()));
        assert_eq!(
            id(&"a".repeat(129)),
            Err("`id` is 129 bytes; at most 128 are allowed".into())
        );
    }

    #[test]
    fn output_is_text_when_utf8_else_padded_base64() {
        assert_eq!(
            encode(b"h\xc3\xa9\n".to_vec()),
            ("hé\n".into(), "utf-8".into())
        );
        assert_eq!(encode(Vec::new()), (String::new(), "utf-8".into()));
        assert_eq!(
            encode(vec![0xff, 0x00, 0x41, 0x42]),
            ("/wBBQg==".into(), "base64".into())
        );
        // A UTF-8 sequence cut at the end of the buffer is not valid UTF-8.
        assert_eq!(encode(vec![0x61, 0xc3]), ("YcM=".into(), "base64".into()));
    }
}
