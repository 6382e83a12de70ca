//! What a request may carry, checked by the host whatever the component did: the resolved
//! command against its template, variables that steer programs, and how a template is shown.
//!
//! The web app resolves secrets itself: it sends the template (with `__OSL_SECRET[name]__`
//! placeholders) and the resolved command. A person approves, and a rule matches, the template
//! only; so the host runs the resolved command only when each of its fields is its template's
//! field with every placeholder replaced by some text. That check is the only use capbridge makes
//! of the placeholder syntax: it never learns which secret a placeholder names or its value.

use super::Command;

/// How a placeholder starts and ends: `__OSL_SECRET[name]__`.
const OPEN: &str = "__OSL_SECRET[";
const CLOSE: &str = "]__";

/// Variables that change how programs load or run. A request may set one only when the
/// policy's `request-environment` names it. Entries ending in `*` are prefixes.
pub const STEERING_VARIABLES: &[&str] = &[
    "LD_*",
    "DYLD_*",
    "PATH",
    "HOME",
    "SHELL",
    "ENV",
    "BASH_ENV",
    "BASH_FUNC_*",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "IFS",
    "CDPATH",
    "PROMPT_COMMAND",
    "NODE_*",
    "NPM_CONFIG_*",
    "npm_config_*",
    "PYTHON*",
    "PERL*",
    "RUBY*",
    "GEM_*",
    "BUNDLE_*",
    "GIT_*",
    "SSH_*",
    "EDITOR",
    "VISUAL",
    "PAGER",
    "LESSOPEN",
    "LESSCLOSE",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    "RUSTC_WRAPPER",
    "RUSTFLAGS",
    "CARGO_*",
    "GCONV_PATH",
    "LOCPATH",
    "MALLOC_*",
    "GLIBC_TUNABLES",
    "TMPDIR",
    "SUDO_ASKPASS",
    "GNUPGHOME",
    "ZDOTDIR",
    "OPENSSL_*",
    "SSL_CERT_*",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "PIP_*",
    "UV_*",
    "POETRY_*",
    "CONDA_*",
    "VIRTUAL_ENV",
    "BUN_*",
    "DENO_*",
    "YARN_*",
    "PNPM_*",
    "COREPACK_*",
    "DOCKER_*",
    "CONTAINER_HOST",
    "GOFLAGS",
    "GOENV",
    "GOPATH",
    "GOROOT",
    "GOPROXY",
    "GOTOOLCHAIN",
    "DOTNET_*",
    "COREHOST_*",
    "MAKEFLAGS",
    "MAKEFILES",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "LUA_*",
    "TCL*",
    "PHP*",
    "XDG_*",
];

/// Whether `name` matches `pattern` (an exact name, or a prefix ending in `*`).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Whether `name` is a variable that steers how programs load or run.
pub fn is_steering(name: &str) -> bool {
    STEERING_VARIABLES.iter().any(|p| name_matches(p, name))
}

/// Whether `name` is a variable name (`[A-Za-z_][A-Za-z0-9_]*`, at most 256 bytes).
pub fn is_variable_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 256
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `text` holds a placeholder.
pub fn has_placeholder(text: &str) -> bool {
    split(text).len() > 1
}

/// The literal parts of `template` around its placeholders: `a __OSL_SECRET[x]__ b` → `["a ",
/// " b"]`. A text without placeholders is one part.
fn split(template: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        match after.find(CLOSE) {
            // `__OSL_SECRET[]__` names nothing: it is literal text.
            Some(end) if end > 0 && !after[..end].contains('[') => {
                parts.push(&rest[..start]);
                rest = &after[end + CLOSE.len()..];
            }
            _ => break,
        }
    }
    parts.push(rest);
    parts
}

/// Whether `resolved` is `template` with each placeholder replaced by some text (possibly
/// empty): the literal parts appear in order, the first at the start and the last at the end.
pub fn fills(template: &str, resolved: &str) -> bool {
    let parts = split(template);
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return template == resolved;
    }
    if !resolved.starts_with(first) || resolved.len() < first.len() + last.len() {
        return false;
    }
    let end = resolved.len() - last.len();
    if !resolved[end..].eq(last) {
        return false;
    }
    // Leftmost matching of each middle part is always safe: taking the earliest place for a
    // part leaves the most room for those after it.
    let mut at = first.len();
    for part in &parts[1..parts.len() - 1] {
        match resolved[at..end].find(part) {
            Some(found) => at += found + part.len(),
            None => return false,
        }
    }
    true
}

/// Checks that `resolved` is `template` with placeholders filled, field by field; the error
/// names the first field that is not (never its value).
pub fn check_resolved(template: &Command, resolved: &Command) -> Result<(), String> {
    if has_placeholder(&template.program) {
        return Err("`template.program` holds a placeholder; the program must be literal".into());
    }
    if template.cwd.as_deref().is_some_and(has_placeholder) {
        return Err(
            "`template.cwd` holds a placeholder; the working directory must be literal".into(),
        );
    }
    if resolved.program != template.program {
        return Err("`resolved.program` differs from `template.program`".into());
    }
    if resolved.cwd != template.cwd {
        return Err("`resolved.cwd` differs from `template.cwd`".into());
    }
    if resolved.args.len() != template.args.len() {
        return Err(format!(
            "`resolved.args` has {} arguments, `template.args` {}",
            resolved.args.len(),
            template.args.len()
        ));
    }
    for (i, (t, r)) in template.args.iter().zip(&resolved.args).enumerate() {
        if !fills(t, r) {
            return Err(format!(
                "`resolved.args[{i}]` is not `template.args[{i}]` with its placeholders filled"
            ));
        }
    }
    fn names(c: &Command) -> Vec<&str> {
        let mut names: Vec<&str> = c.env.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        names
    }
    if names(template) != names(resolved) {
        return Err("`resolved.env` does not set the same variables as `template.env`".into());
    }
    for (name, t) in &template.env {
        let r = resolved
            .env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .expect("same names");
        if !fills(t, r) {
            return Err(format!(
                "`resolved.env.{name}` is not `template.env.{name}` with its placeholders filled"
            ));
        }
    }
    match (&template.stdin, &resolved.stdin) {
        (None, None) => {}
        (Some(t), Some(r)) if fills(t, r) => {}
        _ => {
            return Err(
                "`resolved.stdin` is not `template.stdin` with its placeholders filled".into(),
            )
        }
    }
    Ok(())
}

/// The first field holding a NUL byte (no program can receive one), if any.
pub fn nul_field(prefix: &str, command: &Command) -> Option<String> {
    if command.program.contains('\0') {
        return Some(format!("`{prefix}.program`"));
    }
    if let Some(i) = command.args.iter().position(|a| a.contains('\0')) {
        return Some(format!("`{prefix}.args[{i}]`"));
    }
    if command.cwd.as_deref().is_some_and(|c| c.contains('\0')) {
        return Some(format!("`{prefix}.cwd`"));
    }
    command
        .env
        .iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        .map(|(k, _)| format!("`{prefix}.env.{}`", k.replace('\0', "\\0")))
}

/// A command line a person can read and paste: each word shell-quoted when it needs it.
pub fn display(program: &str, args: &[String]) -> String {
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%^".contains(&b));
    if plain {
        word.to_string()
    } else if word.chars().any(is_hidden) {
        // Bash's $'…' shows what a terminal would act on (a carriage return, an escape
        // sequence, a change of text direction) as escapes, so a prompt cannot be overwritten.
        let mut out = String::from("$'");
        for c in word.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if is_hidden(c) && (c as u32) < 0x100 => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c if is_hidden(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('\'');
        out
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A character a terminal acts on or hides instead of showing: controls, and the marks that
/// change the direction of text.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` safe to print in a terminal: what [`is_hidden`] flags shown as `\xNN` / `\uNNNN`.
pub fn printable(text: &str) -> String {
    if !text.chars().any(is_hidden) {
        return text.to_string();
    }
    text.chars()
        .map(|c| match c {
            c if is_hidden(c) && (c as u32) < 0x100 => format!("\\x{:02x}", c as u32),
            c if is_hidden(c) => format!("\\u{:04x}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

/// Where `command` has placeholders the web app fills on every run (`args[1]`, `env.TOKEN`,
/// `stdin`).
pub fn placeholder_fields(command: &Command) -> Vec<String> {
    let mut fields: Vec<String> = command
        .args
        .iter()
        .enumerate()
        .filter(|(_, a)| has_placeholder(a))
        .map(|(i, _)| format!("args[{i}]"))
        .collect();
    fields.extend(
        command
            .env
            .iter()
            .filter(|(_, v)| has_placeholder(v))
            .map(|(k, _)| format!("env.{k}")),
    );
    if command.stdin.as_deref().is_some_and(has_placeholder) {
        fields.push("stdin".into());
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(program: &str, args: &[&str]) -> Command {
        Command {
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            cwd: None,
            env: vec![],
            stdin: None,
        }
    }

    #[test]
    fn placeholders_fill_with_any_text_and_nothing_else_may_change() {
        let t = "--token=__OSL_SECRET[gh]__";
        assert!(fills(t, "--token=abc"));
        assert!(fills(t, "--token="));
        assert!(fills(t, "--token=a b; rm -rf /"));
        assert!(!fills(t, "--tokem=abc"));
        assert!(!fills(t, "x--token=abc"));
        let two = "__OSL_SECRET[a]__:__OSL_SECRET[b]__@host";
        assert!(fills(two, "u:p@host"));
        assert!(fills(two, "u:p:q@host"));
        assert!(!fills(two, "u@host"));
        assert!(!fills(two, "u:p@hostile"));
        // No placeholder: equality.
        assert!(fills("status", "status"));
        assert!(!fills("status", "status "));
        // An empty or unclosed placeholder is literal text.
        assert!(!fills("__OSL_SECRET[]__", "x"));
        assert!(fills("__OSL_SECRET[]__", "__OSL_SECRET[]__"));
        assert!(!fills("__OSL_SECRET[x", "y"));
        // Overlapping literal parts.
        assert!(fills("a__OSL_SECRET[x]__a", "aa"));
        assert!(!fills("a__OSL_SECRET[x]__a", "a"));
        assert!(!fills("ab__OSL_SECRET[x]__ba", "aba"));
    }

    #[test]
    fn resolved_commands_are_checked_field_by_field() {
        let template = cmd("git", &["push", "https://__OSL_SECRET[tok]__@github.com/x"]);
        let ok = cmd("git", &["push", "https://s3cr3t@github.com/x"]);
        assert_eq!(check_resolved(&template, &ok), Ok(()));
        let other_program = cmd("rm", &["push", "https://s3cr3t@github.com/x"]);
        assert!(check_resolved(&template, &other_program)
            .unwrap_err()
            .contains("resolved.program"));
        let extra = cmd("git", &["push", "https://s@github.com/x", "--force"]);
        assert!(check_resolved(&template, &extra)
            .unwrap_err()
            .contains("resolved.args"));
        let changed = cmd("git", &["pull", "https://s@github.com/x"]);
        let error = check_resolved(&template, &changed).unwrap_err();
        assert!(error.contains("resolved.args[0]"), "{error}");
        assert!(!error.contains("pull"), "values are never echoed: {error}");
        let in_program = cmd("__OSL_SECRET[p]__", &[]);
        assert!(check_resolved(&in_program, &cmd("sh", &[]))
            .unwrap_err()
            .contains("template.program"));
        let mut with_cwd = cmd("ls", &[]);
        with_cwd.cwd = Some("/home/__OSL_SECRET[u]__".into());
        assert!(check_resolved(&with_cwd, &with_cwd)
            .unwrap_err()
            .contains("template.cwd"));
        let mut env_t = cmd("env", &[]);
        env_t.env = vec![("TOKEN".into(), "__OSL_SECRET[t]__".into())];
        let mut env_r = env_t.clone();
        env_r.env = vec![("TOKEN".into(), "v".into())];
        assert_eq!(check_resolved(&env_t, &env_r), Ok(()));
        env_r.env.push(("LD_PRELOAD".into(), "/x.so".into()));
        assert!(check_resolved(&env_t, &env_r)
            .unwrap_err()
            .contains("resolved.env"));
        let mut stdin_r = cmd("cat", &[]);
        stdin_r.stdin = Some("surprise".into());
        assert!(check_resolved(&cmd("cat", &[]), &stdin_r)
            .unwrap_err()
            .contains("stdin"));
    }

    #[test]
    fn steering_variables_and_names() {
        for name in [
            "LD_PRELOAD",
            "PATH",
            "NODE_OPTIONS",
            "PYTHONPATH",
            "GIT_SSH_COMMAND",
        ] {
            assert!(is_steering(name), "{name}");
        }
        for name in ["LANG", "MY_TOKEN", "CI"] {
            assert!(!is_steering(name), "{name}");
        }
        assert!(is_variable_name("A_1"));
        for bad in ["", "1A", "A-B", "A=B", "Ä"] {
            assert!(!is_variable_name(bad), "{bad}");
        }
    }

    #[test]
    fn display_quotes_what_a_shell_would_read_differently() {
        assert_eq!(
            display(
                "echo",
                &["a;b".into(), "$(x)".into(), "plain".into(), "it's".into()]
            ),
            r#"echo 'a;b' '$(x)' plain 'it'\''s'"#
        );
    }

    #[test]
    fn display_shows_what_a_terminal_would_act_on() {
        // A carriage return and an erase-line sequence would overwrite the prompt with
        // `git status`; a direction mark would reorder what follows.
        let spoof = "x\r\u{1b}[2K    git status\u{202e}";
        let shown = display("rm", &["-rf".into(), spoof.into()]);
        assert_eq!(shown, r"rm -rf $'x\r\x1b[2K    git status\u202e'");
        assert!(!shown.chars().any(is_hidden));
        assert_eq!(display("echo", &["a\nb".into()]), r"echo $'a\nb'");
        assert_eq!(printable("/tmp/\u{1b}[31mred"), r"/tmp/\x1b[31mred");
        assert_eq!(printable("/home/you"), "/home/you");
    }
}
