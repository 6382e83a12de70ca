//! The shape checks of the front exports and their defaults, on plain Rust types: this module
//! does not use the generated bindings, so it compiles and is tested on any target
//! (`cargo test -p mcp-proxy`).
//!
//! Messages start with the field they are about, as the contract names it (`` `transport.args[3]` … ``) and never quote a
//! value: environment values and headers may hold secrets. The host checks everything again
//! and enforces the policy; these are shape checks only.

use serde_json::{Map, Value};

/// `connect`'s `timeout-ms` when none is given.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 30_000;
/// `call`'s `timeout-ms` when none is given.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 60_000;
/// How long `capabilities` lets the driver follow every page.
pub const CAPABILITIES_TIMEOUT_MS: u64 = 60_000;
/// The longest timeout a caller may ask for.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// What `submit` waits on top of the driver's own timeout, so that the driver's answer (a
/// timeout that names the call) arrives before `submit` gives up.
pub const SUBMIT_MARGIN_MS: u64 = 5_000;

const MAX_ID_BYTES: usize = 64;
const MAX_NAME_CHARS: usize = 200;
const MAX_PROGRAM_BYTES: usize = 4096;
const MAX_URL_BYTES: usize = 4096;
const MAX_CWD_BYTES: usize = 4096;
const MAX_ARGS: usize = 1024;
/// Linux's own limit on one argument or environment string (`MAX_ARG_STRLEN`).
const MAX_ARG_BYTES: usize = 128 * 1024;
const MAX_ENTRIES: usize = 256;
const MAX_ENTRY_NAME_BYTES: usize = 256;
const MAX_ENV_VALUE_BYTES: usize = 128 * 1024;
const MAX_HEADER_VALUE_BYTES: usize = 16 * 1024;
const MAX_TOOL_BYTES: usize = 1024;
const MAX_CALL_ID_BYTES: usize = 128;

/// The fields of a `transport`, borrowed.
pub enum Transport<'a> {
    Stdio {
        program: &'a str,
        args: &'a [String],
        cwd: Option<&'a str>,
        env: &'a [(String, String)],
    },
    Http {
        url: &'a str,
        headers: &'a [(String, String)],
    },
}

/// A server id: 1 to 64 of `a-z`, `0-9`, `-`, `_`, starting with a letter or digit.
pub fn id(field: &str, id: &str) -> Result<(), String> {
    let bytes = id.as_bytes();
    let well_formed = !bytes.is_empty()
        && bytes.len() <= MAX_ID_BYTES
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "`{field}` must be 1 to {MAX_ID_BYTES} of a-z, 0-9, -, _, starting with a letter or digit"
        ))
    }
}

/// A display name: 1 to 200 characters, no control characters.
pub fn name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(format!(
            "`name` must be 1 to {MAX_NAME_CHARS} characters without control characters"
        ));
    }
    if name.trim().is_empty() {
        return Err("`name` must not be blank".into());
    }
    Ok(())
}

/// A transport (`register`, `update`).
pub fn transport(transport: &Transport) -> Result<(), String> {
    match transport {
        Transport::Stdio {
            program,
            args,
            cwd,
            env,
        } => {
            if program.is_empty() {
                return Err("`transport.program` is empty".into());
            }
            text("transport.program", program, MAX_PROGRAM_BYTES)?;
            if args.len() > MAX_ARGS {
                return Err(format!(
                    "`transport.args` has {} items; at most {MAX_ARGS} are allowed",
                    args.len()
                ));
            }
            for (i, arg) in args.iter().enumerate() {
                text(&format!("transport.args[{i}]"), arg, MAX_ARG_BYTES)?;
            }
            if let Some(cwd) = cwd {
                if cwd.is_empty() {
                    return Err("`transport.cwd` is empty (leave it out for the default)".into());
                }
                text("transport.cwd", cwd, MAX_CWD_BYTES)?;
            }
            env_entries("transport.env", env)
        }
        Transport::Http { url, headers } => {
            self::url("transport.url", url)?;
            header_entries("transport.headers", headers)
        }
    }
}

/// `connect`'s resolved environment entries.
pub fn env_entries(field: &str, env: &[(String, String)]) -> Result<(), String> {
    entries(field, env.len())?;
    let mut seen = std::collections::HashSet::new();
    for (i, (name, value)) in env.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let mut bytes = name.bytes();
        let well_formed = name.len() <= MAX_ENTRY_NAME_BYTES
            && bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !well_formed {
            return Err(format!(
                "`{at}`: its name must be 1 to {MAX_ENTRY_NAME_BYTES} of A-Z, a-z, 0-9, _, not starting with a digit"
            ));
        }
        if !seen.insert(name.as_str()) {
            return Err(format!("`{at}`: `{name}` is given twice"));
        }
        text(&format!("{at}.value"), value, MAX_ENV_VALUE_BYTES)?;
    }
    Ok(())
}

/// `connect`'s resolved header entries (and a transport's header templates).
pub fn header_entries(field: &str, headers: &[(String, String)]) -> Result<(), String> {
    entries(field, headers.len())?;
    let mut seen = std::collections::HashSet::new();
    for (i, (name, value)) in headers.iter().enumerate() {
        let at = format!("{field}[{i}]");
        // RFC 9110 `token`.
        let token = !name.is_empty()
            && name.len() <= MAX_ENTRY_NAME_BYTES
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(format!(
                "`{at}`: its name must be 1 to {MAX_ENTRY_NAME_BYTES} HTTP token characters"
            ));
        }
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(format!("`{at}`: `{name}` is given twice"));
        }
        if value.len() > MAX_HEADER_VALUE_BYTES {
            return Err(format!(
                "`{at}.value` is {} bytes; at most {MAX_HEADER_VALUE_BYTES} are allowed",
                value.len()
            ));
        }
        if value.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n') {
            return Err(format!("`{at}.value` contains a NUL, CR or LF byte"));
        }
    }
    Ok(())
}

/// An `http` or `https` URL.
fn url(field: &str, url: &str) -> Result<(), String> {
    text(field, url, MAX_URL_BYTES)?;
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(format!("`{field}` must be an http:// or https:// URL"));
    }
    if url.len() <= if lower.starts_with("https://") { 8 } else { 7 } {
        return Err(format!("`{field}` has no host"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{field}` contains whitespace or control characters"
        ));
    }
    Ok(())
}

/// A timeout: `default` when none, else 1 to 600000.
pub fn timeout(value: Option<u64>, default: u64) -> Result<u64, String> {
    match value {
        None => Ok(default),
        Some(0) => Err("`timeoutMs` must be at least 1".into()),
        Some(ms) if ms > MAX_TIMEOUT_MS => {
            Err(format!("`timeoutMs` must be at most {MAX_TIMEOUT_MS}"))
        }
        Some(ms) => Ok(ms),
    }
}

/// A tool name: 1 to 1024 bytes, no control characters.
pub fn tool(tool: &str) -> Result<(), String> {
    if tool.is_empty() || tool.len() > MAX_TOOL_BYTES || tool.chars().any(char::is_control) {
        return Err(format!(
            "`tool` must be 1 to {MAX_TOOL_BYTES} bytes without control characters"
        ));
    }
    Ok(())
}

/// A call id: 1 to 128 bytes, no control characters.
pub fn call_id(call_id: &str) -> Result<(), String> {
    if call_id.is_empty()
        || call_id.len() > MAX_CALL_ID_BYTES
        || call_id.chars().any(char::is_control)
    {
        return Err(format!(
            "`callId` must be 1 to {MAX_CALL_ID_BYTES} bytes without control characters"
        ));
    }
    Ok(())
}

/// A tool's arguments: a JSON object (none: `{}`).
pub fn arguments(arguments: Option<&str>) -> Result<Map<String, Value>, String> {
    let Some(text) = arguments else {
        return Ok(Map::new());
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("`arguments` must be a JSON object".into()),
        // serde_json's message names a line and column, never the text.
        Err(error) => Err(format!(
            "`arguments` must be a JSON object (not valid JSON: {error})"
        )),
    }
}

fn entries(field: &str, count: usize) -> Result<(), String> {
    if count > MAX_ENTRIES {
        return Err(format!(
            "`{field}` has {count} entries; at most {MAX_ENTRIES} are allowed"
        ));
    }
    Ok(())
}

/// At most `max` bytes, no NUL byte.
fn text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "`{field}` is {} bytes; at most {max} are allowed",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err(format!("`{field}` contains a NUL byte"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ids() {
        for good in ["a", "0", "github", "my-server_2", &"a".repeat(64)] {
            assert_eq!(id("id", good), Ok(()), "{good}");
        }
        for bad in ["", "-a", "_a", "A", "a b", "a.b", "é", &"a".repeat(65)] {
            let error = id("id", bad).unwrap_err();
            assert!(error.starts_with("`id` must be 1 to 64"), "{error}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(name("GitHub"), Ok(()));
        assert_eq!(name(&"é".repeat(200)), Ok(()));
        assert!(name("").is_err());
        assert!(name("  ").is_err());
        assert!(name(&"x".repeat(201)).is_err());
        assert!(name("a\0b").is_err());
        assert!(name("a\nb").is_err());
    }

    #[test]
    fn stdio_transports() {
        let args = vec![
            "-y".to_string(),
            "@modelcontextprotocol/server-everything".into(),
        ];
        let env = pairs(&[("TOKEN", "__OSL_SECRET[gh]__")]);
        let ok = Transport::Stdio {
            program: "npx",
            args: &args,
            cwd: Some("/home/me"),
            env: &env,
        };
        assert_eq!(transport(&ok), Ok(()));

        let empty = Transport::Stdio {
            program: "",
            args: &[],
            cwd: None,
            env: &[],
        };
        assert_eq!(
            transport(&empty).unwrap_err(),
            "`transport.program` is empty"
        );

        let long = "p".repeat(4097);
        let long = Transport::Stdio {
            program: &long,
            args: &[],
            cwd: None,
            env: &[],
        };
        assert!(transport(&long)
            .unwrap_err()
            .starts_with("`transport.program` is 4097 bytes"));

        let args = vec!["ok".to_string(), "a\0b".into()];
        let nul = Transport::Stdio {
            program: "x",
            args: &args,
            cwd: None,
            env: &[],
        };
        assert_eq!(
            transport(&nul).unwrap_err(),
            "`transport.args[1]` contains a NUL byte"
        );

        let many = vec![String::new(); 1025];
        let many = Transport::Stdio {
            program: "x",
            args: &many,
            cwd: None,
            env: &[],
        };
        assert!(transport(&many)
            .unwrap_err()
            .starts_with("`transport.args` has 1025 items"));
    }

    #[test]
    fn env_entries_are_checked_without_quoting_values() {
        assert_eq!(
            env_entries("env", &pairs(&[("A_1", "x"), ("_B", "")])),
            Ok(())
        );
        let error = env_entries("env", &pairs(&[("A", "x"), ("1A", "secret")])).unwrap_err();
        assert!(error.starts_with("`env[1]`: its name must be"), "{error}");
        assert!(!error.contains("secret"));
        let error = env_entries("env", &pairs(&[("A", "x"), ("A", "y")])).unwrap_err();
        assert_eq!(error, "`env[1]`: `A` is given twice");
        let error = env_entries("env", &pairs(&[("A", "se\0cret")])).unwrap_err();
        assert_eq!(error, "`env[0].value` contains a NUL byte");
        let many: Vec<(String, String)> =
            (0..257).map(|i| (format!("V{i}"), String::new())).collect();
        assert!(env_entries("env", &many)
            .unwrap_err()
            .starts_with("`env` has 257 entries"));
    }

    #[test]
    fn http_transports() {
        let headers = pairs(&[("Authorization", "Bearer __OSL_SECRET[t]__")]);
        for good in ["https://example.com/mcp", "HTTP://localhost:8080/mcp"] {
            let t = Transport::Http {
                url: good,
                headers: &headers,
            };
            assert_eq!(transport(&t), Ok(()), "{good}");
        }
        for bad in ["ftp://x", "https://", "example.com", "https://a b", ""] {
            let t = Transport::Http {
                url: bad,
                headers: &[],
            };
            assert!(
                transport(&t).unwrap_err().starts_with("`transport.url` "),
                "{bad}"
            );
        }
        let error = header_entries("headers", &pairs(&[("X-A", "a\r\nInjected: 1")])).unwrap_err();
        assert_eq!(error, "`headers[0].value` contains a NUL, CR or LF byte");
        let error = header_entries("headers", &pairs(&[("Bad Name", "v")])).unwrap_err();
        assert!(
            error.starts_with("`headers[0]`: its name must be"),
            "{error}"
        );
        let error = header_entries("headers", &pairs(&[("X-A", "1"), ("x-a", "2")])).unwrap_err();
        assert_eq!(error, "`headers[1]`: `x-a` is given twice");
    }

    #[test]
    fn timeouts() {
        assert_eq!(timeout(None, 60_000), Ok(60_000));
        assert_eq!(timeout(Some(1), 60_000), Ok(1));
        assert_eq!(timeout(Some(600_000), 60_000), Ok(600_000));
        assert_eq!(
            timeout(Some(600_001), 1).unwrap_err(),
            "`timeoutMs` must be at most 600000"
        );
        assert_eq!(
            timeout(Some(0), 1).unwrap_err(),
            "`timeoutMs` must be at least 1"
        );
    }

    #[test]
    fn call_fields() {
        assert_eq!(tool("echo"), Ok(()));
        assert!(tool("").is_err());
        assert!(tool("a\nb").is_err());
        assert_eq!(call_id("call-1"), Ok(()));
        assert!(call_id("").is_err());
        assert!(call_id(&"c".repeat(129)).is_err());

        assert_eq!(arguments(None), Ok(Map::new()));
        assert_eq!(arguments(Some(r#"{"a":1}"#)).unwrap()["a"], 1);
        assert_eq!(
            arguments(Some("[1]")).unwrap_err(),
            "`arguments` must be a JSON object"
        );
        let error = arguments(Some("{secret")).unwrap_err();
        assert!(
            error.starts_with("`arguments` must be a JSON object (not valid JSON"),
            "{error}"
        );
        assert!(!error.contains("secret"));
    }
}
