//! The checks that need no server: URL patterns, entry shapes, secret values at connect.

use super::*;

fn url(text: &str) -> url::Url {
    url::Url::parse(text).unwrap()
}

#[test]
fn url_patterns_match_scheme_host_and_port() {
    let any_port = UrlPattern::parse("http://127.0.0.1:*").unwrap();
    assert!(any_port.matches(&url("http://127.0.0.1:3001/mcp")));
    assert!(any_port.matches(&url("http://127.0.0.1/mcp")));
    assert!(!any_port.matches(&url("https://127.0.0.1:3001/mcp")));
    assert!(!any_port.matches(&url("http://127.0.0.2:3001/mcp")));
    let exact = UrlPattern::parse("https://mcp.example.com").unwrap();
    assert!(exact.matches(&url("https://MCP.example.com/v1/mcp")));
    assert!(!exact.matches(&url("https://mcp.example.com:8443/mcp")));
    assert!(!exact.matches(&url("https://mcp.example.com.evil.test/mcp")));
    let v6 = UrlPattern::parse("http://[::1]:*").unwrap();
    assert!(v6.matches(&url("http://[::1]:9/mcp")));
}

fn stdio(args: &[&str], env: &[(&str, &str)]) -> Transport {
    Transport::Stdio {
        program: "node".into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        cwd: None,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn http(url: &str, headers: &[(&str, &str)]) -> Transport {
    Transport::Http {
        url: url.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn invalid(transport: &Transport) -> String {
    match check_shape(transport) {
        Err(GuestError::InvalidArgument(m)) => m,
        other => panic!("{transport:?} was not refused: {other:?}"),
    }
}

#[test]
fn secrets_may_stand_only_in_values_and_names_are_checked() {
    assert!(check_shape(&stdio(&["server.js"], &[("TOKEN", "__OSL_SECRET[t]__")])).is_ok());
    assert!(invalid(&stdio(&["--token=__OSL_SECRET[t]__"], &[])).contains("transport.args[0]"));
    assert!(invalid(&stdio(&["a\0b"], &[])).contains("NUL"));
    assert!(invalid(&stdio(&[], &[("A-B", "1")])).contains("transport.env.A-B"));
    assert!(invalid(&stdio(&[], &[("A", "1"), ("A", "2")])).contains("twice"));
    assert!(invalid(&stdio(&[], &[("A", "x\ny")])).contains("line break"));
    let bearer = [("Authorization", "Bearer __OSL_SECRET[t]__")];
    assert!(check_shape(&http("http://127.0.0.1:1/mcp", &bearer)).is_ok());
    assert!(invalid(&http("http://127.0.0.1:1/__OSL_SECRET[t]__", &[])).contains("transport.url"));
    assert!(invalid(&http("ftp://127.0.0.1/mcp", &[])).contains("http or https"));
    assert!(invalid(&http("http://u:p@127.0.0.1/mcp", &[])).contains("user info"));
    assert!(invalid(&http("http://127.0.0.1/mcp", &[("Mcp-Session-Id", "x")])).contains("itself"));
    assert!(invalid(&http("http://127.0.0.1/mcp", &[("Bad Name", "x")])).contains("header name"));
    assert!(
        invalid(&http("http://127.0.0.1/mcp", &[("X-A", "1"), ("x-a", "2")])).contains("twice")
    );
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn connect_values_must_fill_their_templates() {
    let template = pairs(&[("TOKEN", "Bearer __OSL_SECRET[t]__"), ("MODE", "fast")]);
    assert_eq!(
        resolve("env", &template, pairs(&[("TOKEN", "Bearer abc")])).unwrap(),
        pairs(&[("TOKEN", "Bearer abc"), ("MODE", "fast")])
    );
    let refused = |given: &[(&str, &str)]| match resolve("env", &template, pairs(given)) {
        Err(GuestError::InvalidArgument(m)) => m,
        other => panic!("{given:?} was not refused: {other:?}"),
    };
    assert!(refused(&[]).contains("give its value at connect"));
    assert!(refused(&[("TOKEN", "Basic abc")]).contains("not its approved template"));
    assert!(refused(&[("TOKEN", "Bearer abc"), ("OTHER", "1")]).contains("env.OTHER"));
    assert!(refused(&[("TOKEN", "Bearer a\nb")]).contains("line break"));
}

#[test]
fn ids_and_names_are_checked() {
    for good in ["everything", "a", "gh-1_x", &"a".repeat(64)] {
        assert!(check_id(good).is_ok(), "{good}");
    }
    for bad in ["", "-a", "_a", "Bad", "a b", "a/b", &"a".repeat(65)] {
        assert!(check_id(bad).is_err(), "{bad}");
    }
    assert!(check_name("GitHub").is_ok());
    assert!(check_name(" ").is_err());
    assert!(check_name("a\u{1b}[2J").is_err());
}
