//! The policy tests that need the capabilities: each grant as the registry reads, checks and
//! explains it (the baseline's tests are in the policy crate).

use std::time::Duration;

use capbridge_policy::*;

use super::events::EventsGrant;
use super::network::NetworkGrants;
use super::system::SystemGrant;

fn kinds() -> Vec<&'static dyn GrantKind> {
    super::grant_kinds()
}

fn network(p: &Policy) -> Vec<NetworkGrant> {
    p.grant::<NetworkGrants>()
        .map(|g| g.origins.clone())
        .unwrap_or_default()
}

fn network_grant_for(p: &Policy, scheme: Scheme, host: &str, port: u16) -> Option<NetworkGrant> {
    p.grant::<NetworkGrants>()?
        .grant_for(scheme, host, port)
        .cloned()
}

/// The queries the policy answered itself before grants moved into the capabilities.
trait Queries {
    fn network_grant_for(&self, scheme: Scheme, host: &str, port: u16) -> Option<NetworkGrant>;
}

impl Queries for Policy {
    fn network_grant_for(&self, scheme: Scheme, host: &str, port: u16) -> Option<NetworkGrant> {
        network_grant_for(self, scheme, host, port)
    }
}

fn events(p: &Policy) -> Vec<TopicPattern> {
    p.grant::<EventsGrant>()
        .map(|g| g.patterns.clone())
        .unwrap_or_default()
}

fn allows_topic(p: &Policy, topic: &str) -> bool {
    p.grant::<EventsGrant>().is_some_and(|g| g.allows(topic))
}

fn log(p: &Policy) -> bool {
    p.grants_key("log")
}

fn awake(p: &Policy) -> bool {
    p.grants_key("awake")
}

fn dialog(p: &Policy) -> bool {
    p.grants_key("dialog")
}

fn system(p: &Policy) -> Option<SystemGrant> {
    p.grant::<SystemGrant>().cloned()
}

mod policy {
    use super::*;
    use capbridge_policy::testing::{self, quoted};
    use std::path::{Path, PathBuf};

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        testing::parse(text, &kinds())
    }

    fn ok(text: &str) -> Policy {
        testing::ok(text, &kinds())
    }

    fn problems(text: &str) -> Vec<String> {
        testing::problems(text, &kinds())
    }

    fn problem(text: &str) -> String {
        testing::problem(text, &kinds())
    }

    fn syntax_error(text: &str) -> String {
        testing::syntax_error(text, &kinds())
    }

    #[test]
    fn minimal_policy_grants_nothing_and_fills_defaults() {
        let p = ok("version = 1");
        assert_eq!(p.component_id, "echo");
        assert_eq!(p.source, Path::new("policy/echo.toml"));
        assert_eq!(p.description, None);
        assert_eq!(p.instance, InstanceMode::Fresh);
        assert_eq!(
            p.limits,
            Limits {
                deadline: Duration::from_secs(30),
                memory_bytes: 64 * 1024 * 1024,
                table_elements: 10_000,
                output_bytes: 1_048_576,
            }
        );
        assert_eq!(p.limits, Limits::default());
        assert!(p.directories.is_empty());
        assert!(p.environment.is_empty());
        assert!(network(&p).is_empty());
        assert!(events(&p).is_empty());
        assert!(!log(&p));
        assert!(!allows_topic(&p, "echo.said"));
        assert!(p
            .network_grant_for(Scheme::Https, "example.com", 443)
            .is_none());
    }

    #[test]
    fn full_example_is_accepted() {
        let p = ok(r#"
            version = 1
            description = "Echoes its input"
            instance = "persistent"

            [limits]
            deadline-ms = 1500
            memory-mib = 128
            table-elements = 500
            output-bytes = 0

            [grants]
            environment = ["LANG", "TZ"]
            network = ["https://api.example.com", "http://127.0.0.1:8080"]
            events = ["echo.*", "echo.said"]
            log = true

            [[grants.directories]]
            host = "~/capbridge/files"
            guest = "/files"
            access = "read-only"

            [[grants.directories]]
            host = "/srv/data"
            guest = "/data"
            access = "read-write"
            create = true
        "#);
        assert_eq!(p.description.as_deref(), Some("Echoes its input"));
        assert_eq!(p.instance, InstanceMode::Persistent);
        assert_eq!(p.limits.deadline, Duration::from_millis(1500));
        assert_eq!(p.limits.memory_bytes, 128 << 20);
        assert_eq!(p.limits.table_elements, 500);
        assert_eq!(p.limits.output_bytes, 0);
        assert_eq!(p.environment, ["LANG", "TZ"]);
        assert_eq!(network(&p).len(), 2);
        assert_eq!(network(&p)[1].port, 8080);
        assert_eq!(
            events(&p),
            [
                TopicPattern::Below("echo".into()),
                TopicPattern::Exact("echo.said".into())
            ]
        );
        assert!(log(&p));
        assert_eq!(
            p.directories,
            [
                DirectoryGrant {
                    host: PathBuf::from("/home/reviewer/capbridge/files"),
                    guest: "/files".into(),
                    access: Access::ReadOnly,
                    create: false,
                },
                DirectoryGrant {
                    host: PathBuf::from("/srv/data"),
                    guest: "/data".into(),
                    access: Access::ReadWrite,
                    create: true,
                }
            ]
        );
    }

    #[test]
    fn wrong_types_and_values_are_syntax_errors() {
        assert!(syntax_error("version = 1\ninstance = \"shared\"").contains("shared"));
        assert!(syntax_error("version = 1\n[limits]\nmemory-mib = -1").contains("memory-mib"));
        assert!(syntax_error("version = 1\n[grants]\nlog = \"yes\"").contains("log"));
        assert!(
            syntax_error("version = 1\n[grants]\nnetwork = \"https://a.com\"").contains("network")
        );
        let missing =
            syntax_error("version = 1\n[[grants.directories]]\nhost = \"/a\"\nguest = \"/a\"");
        assert!(missing.contains("missing field `access`"), "{missing}");
        assert!(syntax_error(
            "version = 1\n[[grants.directories]]\nhost = \"/a\"\nguest = \"/a\"\naccess = \"write\""
        )
        .contains("write"));
        assert!(syntax_error("version = 1\nversion = 1").contains("duplicate"));
        assert!(syntax_error("version = ").contains("line 1"));
    }

    #[test]
    fn network_entries_are_checked_with_their_index() {
        let message = problem(
            "version = 1\n[grants]\nnetwork = [\"https://ok.example\", \"https://example.com/api\"]",
        );
        assert!(
            message.starts_with("grants.network[1]: \"https://example.com/api\": "),
            "{message}"
        );
        assert!(problem("version = 1\n[grants]\nnetwork = [\"ftp://x\"]")
            .contains("only http and https"));
        assert!(
            problem("version = 1\n[grants]\nnetwork = [\"https://*.x.com\"]").contains("wildcard")
        );
    }

    #[test]
    fn event_patterns_are_checked_with_their_index() {
        let p = ok("version = 1\n[grants]\nevents = [\"echo.*\", \"a.b\", \"*\"]");
        assert_eq!(events(&p).len(), 3);
        for bad in ["", "Echo", "echo.", "a..b", "echo*", "*.x", "x.*.y"] {
            let message = problem(&format!(
                "version = 1\n[grants]\nevents = [\"ok\", {}]",
                quoted(bad)
            ));
            assert!(message.starts_with("grants.events[1]: "), "{message}");
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
            version = 1
            [limits]
            deadline-ms = 0
            memory-mib = 9999
            [grants]
            environment = ["", "A=B"]
            network = ["ftp://x", "https://ok.example"]
            events = ["Bad"]
            [[grants.directories]]
            host = "relative"
            guest = "not/absolute"
            access = "read-only"
        "#;
        let all = problems(text);
        let keys: Vec<&str> = all.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "limits.deadline-ms",
                "limits.memory-mib",
                "grants.directories[0].host",
                "grants.directories[0].guest",
                "grants.environment[0]",
                "grants.environment[1]",
                "grants.network[0]",
                "grants.events[0]",
            ]
        );
        let err = parse(text).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with("policy file policy/echo.toml is not valid:\n  limits.deadline-ms: "),
            "{shown}"
        );
        assert_eq!(shown.lines().count(), 9, "{shown}");
        assert_eq!(err.path(), Path::new("policy/echo.toml"));
    }

    #[test]
    fn topics_are_allowed_by_any_matching_pattern() {
        let p = ok("version = 1\n[grants]\nevents = [\"echo.*\", \"status\"]");
        assert!(allows_topic(&p, "echo.said"));
        assert!(allows_topic(&p, "echo.a.b"));
        assert!(allows_topic(&p, "status"));
        assert!(!allows_topic(&p, "echo"));
        assert!(!allows_topic(&p, "echoes.x"));
        assert!(!allows_topic(&p, "status.changed"));
        assert!(!allows_topic(&p, "other"));
        let all = ok("version = 1\n[grants]\nevents = [\"*\"]");
        assert!(allows_topic(&all, "anything.at.all"));
    }

    #[test]
    fn network_grant_lookup() {
        let p = ok(
            "version = 1\n[grants]\nnetwork = [\"https://api.example.com\", \"http://127.0.0.1:8080\"]",
        );
        let g = p
            .network_grant_for(Scheme::Https, "API.EXAMPLE.COM", 443)
            .unwrap();
        assert_eq!(g.text, "https://api.example.com");
        assert!(p
            .network_grant_for(Scheme::Http, "api.example.com", 443)
            .is_none());
        assert!(p
            .network_grant_for(Scheme::Https, "api.example.com", 80)
            .is_none());
        assert!(p
            .network_grant_for(Scheme::Https, "example.com", 443)
            .is_none());
        let g = p
            .network_grant_for(Scheme::Http, "127.0.0.1", 8080)
            .unwrap();
        assert_eq!(g.text, "http://127.0.0.1:8080");
        assert!(network_grant_for(&p, Scheme::Http, "127.0.0.1", 80).is_none());
        assert!(p
            .network_grant_for(Scheme::Https, "127.0.0.1", 8080)
            .is_none());
        assert!(p
            .network_grant_for(Scheme::Http, "localhost", 8080)
            .is_none());
    }

    #[test]
    fn load_reads_the_file_and_names_it_in_errors() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("echo.toml");
        std::fs::write(&path, "version = 1\n[grants]\nlog = true\n").unwrap();
        let p = super::super::load_policy("echo", &path).unwrap();
        assert!(log(&p));
        assert_eq!(p.source, path);

        let missing = temp.path().join("missing.toml");
        let err = super::super::load_policy("missing", &missing).unwrap_err();
        assert!(matches!(err, PolicyError::Read { .. }));
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );

        std::fs::write(&path, "version = 1\nbogus = 1\n").unwrap();
        let err = super::super::load_policy("echo", &path).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains(&path.display().to_string()), "{shown}");
        assert!(shown.contains("line 2"), "{shown}");
        assert!(shown.contains("bogus"), "{shown}");
    }

    #[test]
    fn awake_dialog_and_system_are_granted_only_when_written() {
        let p = ok("version = 1");
        assert!(!awake(&p) && !dialog(&p) && system(&p).is_none());
        let p = ok(
            "version = 1\n[grants]\nawake = true\ndialog = true\n[grants.system]\nprograms = [\"git\", \"python3\", \"g++\"]\n",
        );
        assert!(awake(&p) && dialog(&p));
        assert_eq!(
            system(&p).unwrap().programs,
            ["git", "python3", "g++"].map(String::from)
        );
        // An empty table grants the facts, and no program.
        let p = ok("version = 1\n[grants.system]\n");
        assert!(system(&p).unwrap().programs.is_empty());
    }

    #[test]
    fn pickers_are_not_for_persistent_components() {
        let message = problem("version = 1\ninstance = \"persistent\"\n[grants]\ndialog = true\n");
        assert!(message.starts_with("grants.dialog"), "{message}");
        assert!(message.contains("persistent"), "{message}");
        ok("version = 1\ninstance = \"persistent\"\n[grants]\nawake = true\n");
    }

    #[test]
    fn system_programs_are_bare_file_names() {
        for bad in ["", "..", ".", "bin/git", "/usr/bin/git", "a b", "x\u{0}"] {
            let text = format!(
                "version = 1\n[grants.system]\nprograms = [{}]\n",
                quoted(bad)
            );
            let message = problem(&text);
            assert!(
                message.contains("grants.system.programs[0]"),
                "{bad:?}: {message}"
            );
        }
        let long = "a".repeat(65);
        let text = format!(
            "version = 1\n[grants.system]\nprograms = [{}]\n",
            quoted(&long)
        );
        assert!(problem(&text).contains("not a program file name"));
        assert!(syntax_error("version = 1\n[grants.system]\nprogram = []\n").contains("program"));
    }

    #[test]
    fn process_is_granted_only_when_written_and_checked() {
        use super::super::process::ProcessGrant;
        assert!(ok("version = 1").grant::<ProcessGrant>().is_none());
        let p = ok(
            "version = 1\n[grants.process]\nprograms = [\"git\", \"/opt/x/bin/tool\"]\n\
             working-directories = [\"/tmp\"]\ninherit-environment = [\"LANG\"]\n\
             request-environment = [\"GIT_*\"]\n",
        );
        let grant = p.grant::<ProcessGrant>().unwrap();
        assert_eq!(grant.programs, ["git", "/opt/x/bin/tool"]);
        assert_eq!(
            grant.working_directories,
            [std::fs::canonicalize("/tmp").unwrap()]
        );
        assert_eq!(grant.request_environment, ["GIT_*"]);
        for (text, key) in [
            ("programs = []\nworking-directories = [\"/tmp\"]", "grants.process.programs"),
            ("programs = [\"bin/git\"]\nworking-directories = [\"/tmp\"]", "grants.process.programs[0]"),
            ("programs = [\"*\"]\nworking-directories = []", "grants.process.working-directories"),
            ("programs = [\"*\"]\nworking-directories = [\"relative\"]", "grants.process.working-directories[0]"),
            ("programs = [\"*\"]\nworking-directories = [\"/tmp\"]\ninherit-environment = [\"A-B\"]", "grants.process.inherit-environment[0]"),
            ("programs = [\"*\"]\nworking-directories = [\"/tmp\"]\nrequest-environment = [\"*\"]", "grants.process.request-environment[0]"),
        ] {
            let message = problem(&format!("version = 1\n[grants.process]\n{text}\n"));
            assert!(message.starts_with(key), "{text}: {message}");
        }
        assert!(
            syntax_error("version = 1\n[grants.process]\nprograms = [\"*\"]\n")
                .contains("working-directories")
        );
        assert!(syntax_error("version = 1\n[grants.process]\nprograms = [\"*\"]\nworking-directories = [\"/tmp\"]\nshell = true\n").contains("shell"));
    }

    #[test]
    fn explain_flags_processes_and_writable_working_directories() {
        let text =
            "version = 1\n[grants.process]\nprograms = [\"*\"]\nworking-directories = [\"/tmp\"]\n\
                    request-environment = [\"NODE_OPTIONS\"]\n";
        let p = ok(text);
        let risks: Vec<String> = p.explain().risks().map(|l| l.text.clone()).collect();
        assert!(risks.iter().any(|r| r.contains("any program")), "{risks:?}");
        assert!(
            risks.iter().any(|r| r.contains("NODE_OPTIONS")),
            "{risks:?}"
        );
        let writer = ok("version = 1\n[[grants.directories]]\nhost = \"/tmp\"\nguest = \"/w\"\naccess = \"read-write\"\n");
        let among = super::super::explain_among(&p, &[&writer]);
        assert_eq!(among.len(), 1, "{among:?}");
        assert!(among[0].risk.as_deref().unwrap().contains(".git/config"));
        let reader = ok("version = 1\n[[grants.directories]]\nhost = \"/tmp\"\nguest = \"/w\"\naccess = \"read-only\"\n");
        assert!(super::super::explain_among(&p, &[&reader]).is_empty());
        assert!(ok("version = 1")
            .explain()
            .not_granted
            .join("\n")
            .contains("no processes"));
    }

    #[test]
    fn mcp_is_granted_only_when_written_and_checked() {
        use super::super::mcp::McpGrant;
        assert!(ok("version = 1").grant::<McpGrant>().is_none());
        let p = ok(
            "version = 1\n[grants.mcp]\nprograms = [\"npx\"]\nworking-directories = [\"/tmp\"]\n\
             urls = [\"http://127.0.0.1:*\", \"https://mcp.example.com\"]\n",
        );
        let grant = p.grant::<McpGrant>().unwrap();
        assert_eq!(grant.launch.programs, ["npx"]);
        assert_eq!(grant.urls.len(), 2);
        // HTTP servers only: no directories needed.
        assert!(
            ok("version = 1\n[grants.mcp]\nurls = [\"http://localhost:*\"]\n")
                .grant::<McpGrant>()
                .is_some()
        );
        for (text, key) in [
            ("urls = []", "grants.mcp"),
            ("programs = [\"*\"]", "grants.mcp.working-directories"),
            ("urls = [\"http://*.example.com\"]", "grants.mcp.urls[0]"),
            ("urls = [\"https://example.com/mcp\"]", "grants.mcp.urls[0]"),
            ("urls = [\"ftp://example.com\"]", "grants.mcp.urls[0]"),
            (
                "programs = [\"bin/x\"]\nworking-directories = [\"/tmp\"]",
                "grants.mcp.programs[0]",
            ),
        ] {
            let message = problem(&format!("version = 1\n[grants.mcp]\n{text}\n"));
            assert!(message.starts_with(key), "{text}: {message}");
        }
        assert!(syntax_error("version = 1\n[grants.mcp]\nurl = []\n").contains("url"));
        let risks: Vec<String> = p.explain().risks().map(|l| l.text.clone()).collect();
        assert!(risks.iter().any(|r| r.contains("npx")), "{risks:?}");
        assert!(
            risks.iter().any(|r| r.contains("https://mcp.example.com")),
            "{risks:?}"
        );
        assert!(ok("version = 1")
            .explain()
            .not_granted
            .join("\n")
            .contains("no MCP servers"));
    }

    #[test]
    fn explain_flags_pickers_and_programs() {
        let p = ok("version = 1\n[grants]\nawake = true\ndialog = true\n[grants.system]\nprograms = [\"git\"]\n");
        let explained = p.explain();
        let risks: Vec<String> = explained.risks().map(|l| l.text.clone()).collect();
        assert!(risks.iter().any(|r| r.contains("pickers")), "{risks:?}");
        assert!(
            risks
                .iter()
                .any(|r| r.contains("--version") && r.contains("git")),
            "{risks:?}"
        );
        let p = ok("version = 1");
        let not_granted = p.explain().not_granted.join("\n");
        assert!(not_granted.contains("no sleep prevention"), "{not_granted}");
        assert!(not_granted.contains("no native pickers"), "{not_granted}");
        assert!(not_granted.contains("no system facts"), "{not_granted}");
    }
    #[test]
    fn screen_accessibility_and_input_are_risks_granted_only_when_written() {
        let p = ok("version = 1");
        for key in ["screen", "accessibility", "input"] {
            assert!(!p.grants_key(key), "{key}");
        }
        let not_granted = p.explain().not_granted.join("\n");
        assert!(
            not_granted.contains("no clicks, no typing"),
            "{not_granted}"
        );
        assert!(
            not_granted.contains("no accessibility tree"),
            "{not_granted}"
        );
        let p = ok("version = 1\n[grants]\naccessibility = true\ninput = true\n");
        assert!(p.grants_key("accessibility") && p.grants_key("input"));
        let risks: Vec<String> = p.explain().risks().map(|l| l.text.clone()).collect();
        assert!(
            risks
                .iter()
                .any(|r| r.contains("move the mouse") && r.contains("turns automation on")),
            "{risks:?}"
        );
        assert!(
            risks.iter().any(|r| r.contains("accessibility tree")),
            "{risks:?}"
        );
        assert!(syntax_error("version = 1\n[grants]\ninput = \"yes\"\n").contains("input"));
    }
}

mod explain {
    use super::*;
    use capbridge_policy::testing::{line, no_risk, risk};

    fn explain(text: &str) -> Explanation {
        capbridge_policy::testing::explain(text, &kinds())
    }

    #[test]
    fn an_empty_policy_is_quiet_and_lists_what_is_not_granted() {
        let e = explain("version = 1\ndescription = \"Says hello\"");
        assert_eq!(e.risks().count(), 0, "{e}");
        no_risk(&e, "fresh instance");
        no_risk(&e, "30 s");
        no_risk(&e, "64 MiB");
        no_risk(&e, "10000 elements");
        no_risk(&e, "1 MiB of stdout");
        let shown = e.to_string();
        assert!(
            shown.starts_with("Component echo (policy policy/echo.toml)\n  Says hello\n"),
            "{shown}"
        );
        assert!(shown.contains("Nothing flagged for review."), "{shown}");
        assert!(!shown.contains("RISK:"), "{shown}");
        let not_granted = &shown[shown.find("Not granted:").expect("Not granted section")..];
        for what in [
            "no files",
            "no network",
            "no environment variables",
            "no events",
            "no host log",
            "no raw sockets",
        ] {
            assert!(not_granted.contains(what), "{what} missing from:\n{shown}");
        }
    }

    #[test]
    fn granted_things_are_not_listed_as_not_granted() {
        let e = explain(
            r#"
            version = 1
            [grants]
            environment = ["LANG"]
            network = ["https://api.example.com"]
            events = ["echo.said"]
            log = true
            [[grants.directories]]
            host = "/srv/files"
            guest = "/files"
            access = "read-only"
        "#,
        );
        let joined = e.not_granted.join("\n");
        for what in [
            "no files",
            "no network",
            "no environment",
            "no events",
            "no host log",
        ] {
            assert!(
                !joined.contains(what),
                "{what} listed although granted:\n{e}"
            );
        }
        assert!(joined.contains("no raw sockets"));
        no_risk(&e, "/srv/files");
        no_risk(&e, "LANG");
        no_risk(&e, "echo.said");
        no_risk(&e, "host log");
    }

    #[test]
    fn network_grants_are_flagged_and_private_ones_say_so() {
        let e = explain(
            "version = 1\n[grants]\nnetwork = [\"https://api.example.com\", \"http://127.0.0.1:8080\", \"http://localhost\", \"http://[fd00::1]:81\"]",
        );
        assert!(risk(&e, "api.example.com port 443").contains("off this machine"));
        for host in [
            "127.0.0.1 port 8080",
            "localhost port 80",
            "[fd00::1] port 81",
        ] {
            assert!(
                risk(&e, host).contains("reaches this machine or the local network"),
                "{host}"
            );
        }
        assert!(line(&e, "127.0.0.1").text.contains("plain HTTP"));
    }

    #[test]
    fn publishing_on_every_topic_is_flagged() {
        let e = explain("version = 1\n[grants]\nevents = [\"echo.*\", \"*\"]");
        no_risk(&e, "below echo (echo.*)");
        assert!(risk(&e, "every topic").contains("expect only from someone else"));
    }

    #[test]
    fn display_prefixes_risky_lines() {
        let e = explain(
            "version = 1\ninstance = \"persistent\"\n[grants]\nnetwork = [\"https://api.example.com\"]",
        );
        let shown = e.to_string();
        assert!(
            shown.contains("2 lines flagged for review (RISK)."),
            "{shown}"
        );
        assert!(shown.contains(
            "  RISK: Can make HTTPS requests to api.example.com port 443 (granted as \"https://api.example.com\"). -- can send data off this machine"
        ), "{shown}");
        assert!(
            shown.contains("  RISK: Runs in one long-lived instance"),
            "{shown}"
        );
        assert!(
            shown.contains("  - Each call may run for up to 30 s (wall clock)."),
            "{shown}"
        );
        assert!(shown.contains("Not granted:\n  - no files"), "{shown}");
        assert!(!shown.contains("no network"), "{shown}");
    }
}

mod schema {
    use super::*;

    /// The committed schema must match the types. To regenerate it:
    /// `cargo xtask bless`.
    #[test]
    fn committed_schema_is_current() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../policy/policy.schema.json"
        );
        let expected = serde_json::to_string_pretty(&super::super::policy_schema()).unwrap() + "\n";
        if std::env::var_os("CAPBRIDGE_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(path, &expected).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == expected,
            "{path} is stale or missing; regenerate it with \
             `cargo xtask bless` \
             and commit the result"
        );
    }

    #[test]
    fn schema_describes_the_format() {
        let schema = super::super::policy_schema();
        let properties = &schema["properties"];
        for key in ["version", "description", "instance", "limits", "grants"] {
            assert!(
                properties.get(key).is_some(),
                "{key} missing from the schema"
            );
        }
        assert_eq!(schema["required"], serde_json::json!(["version"]));
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
        let limits = &schema["$defs"]["LimitsFile"];
        assert_eq!(limits["additionalProperties"], serde_json::json!(false));
        assert_eq!(limits["properties"]["deadline-ms"]["default"], 30_000);
        assert_eq!(limits["properties"]["deadline-ms"]["maximum"], 3_600_000);
        let dir = &schema["$defs"]["DirectoryGrantFile"];
        assert_eq!(
            dir["required"],
            serde_json::json!(["host", "guest", "access"])
        );
        assert!(schema.to_string().contains("read-only"));
        assert!(schema.to_string().contains("persistent"));
    }

    /// The annotated example in docs/policy.md is a valid policy and explains as the doc says.
    #[test]
    fn documented_example_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/policy.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let example = &doc[doc.find("## Example").expect("an Example section")..];
        let start = example.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + example[start..].find("```").expect("the end of the block");
        let policy = Policy::parse_with_home(
            "echo",
            std::path::Path::new("policy/echo.toml"),
            &example[start..end],
            Some(std::path::Path::new("/home/reviewer")),
            &super::super::grant_kinds(),
        )
        .unwrap_or_else(|e| panic!("the example in {path} is not valid: {e}"));
        let explanation = policy.explain();
        let risks: Vec<_> = explanation.risks().collect();
        assert_eq!(risks.len(), 1, "{explanation}");
        assert!(risks[0].text.contains("api.example.com"), "{explanation}");
        assert!(allows_topic(&policy, "echo.said"));
    }
}

mod docs {
    /// The grant tables in docs/policy.md and docs/components.md are generated from the
    /// registry (between `<!-- grants:begin -->` and `<!-- grants:end -->`); `cargo xtask bless`
    /// rewrites them.
    #[test]
    fn committed_grant_tables_are_current() {
        const BEGIN: &str =
            "<!-- grants:begin (generated from caps::ALL by `cargo xtask bless`) -->\n";
        const END: &str = "<!-- grants:end -->";
        let table = super::super::grant_table();
        for doc in ["docs/policy.md", "docs/components.md"] {
            let path = format!("{}/../../{doc}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap();
            let start = text
                .find(BEGIN)
                .unwrap_or_else(|| panic!("{doc} has no {BEGIN}"));
            let end = text[start..].find(END).expect("an end marker") + start;
            let current = &text[start + BEGIN.len()..end];
            if std::env::var_os("CAPBRIDGE_BLESS").is_some_and(|v| v == "1") {
                let updated = format!("{}{table}{}", &text[..start + BEGIN.len()], &text[end..]);
                std::fs::write(&path, updated).unwrap();
                continue;
            }
            assert!(
                current == table,
                "the grant table in {doc} is stale: run `cargo xtask bless` and commit the result"
            );
        }
    }
}

mod diff {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::parse_with_home(
            "probe",
            std::path::Path::new("probe.toml"),
            &format!("version = 1\n{text}"),
            Some(std::path::Path::new("/home/person")),
            &kinds(),
        )
        .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// Where, which way, and whether flagged.
    type Seen = (String, Direction, bool);

    /// (where, direction, risky) of each change from `old` to `new`.
    fn changes(old: &str, new: &str) -> Vec<Seen> {
        capbridge_policy::diff(&policy(old), &policy(new))
            .changes
            .into_iter()
            .map(|c| (c.at, c.direction, c.risk.is_some()))
            .collect()
    }

    fn w(at: &str, risky: bool) -> Seen {
        (at.to_string(), Direction::Widens, risky)
    }

    fn n(at: &str) -> Seen {
        (at.to_string(), Direction::Narrows, false)
    }

    #[test]
    fn a_table_of_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("a/b"));
        std::fs::create_dir_all(&b).unwrap();
        let files = |path: &std::path::Path, access: &str| {
            format!(
                "[[grants.directories]]\nhost = \"{}\"\nguest = \"/w\"\naccess = \"{access}\"\n",
                path.display()
            )
        };
        let table: Vec<(&str, String, String, Vec<Seen>)> = vec![
            ("no change", String::new(), String::new(), vec![]),
            (
                "a key granted",
                String::new(),
                "[grants]\nlog = true".into(),
                vec![w("grants.log", false)],
            ),
            (
                "a key taken away",
                "[grants]\nawake = true".into(),
                String::new(),
                vec![n("grants.awake")],
            ),
            (
                "a topic below a granted pattern is no widening",
                "[grants]\nevents = [\"echo.*\"]".into(),
                "[grants]\nevents = [\"echo.*\", \"echo.said\"]".into(),
                vec![],
            ),
            (
                "every topic: risky",
                "[grants]\nevents = [\"echo.*\"]".into(),
                "[grants]\nevents = [\"*\"]".into(),
                vec![w("grants.events", true)],
            ),
            (
                "a new origin",
                "[grants]\nnetwork = [\"https://api.example\"]".into(),
                "[grants]\nnetwork = [\"https://api.example\", \"http://127.0.0.1:8080\"]".into(),
                vec![w("grants.network", true)],
            ),
            (
                "any program to two named ones narrows",
                "[grants.process]\nprograms = [\"*\"]\nworking-directories = [\"~\"]".into(),
                "[grants.process]\nprograms = [\"git\", \"npm\"]\nworking-directories = [\"~\"]".into(),
                vec![n("grants.process")],
            ),
            (
                "a program added is risky, a working directory below a granted one is not",
                "[grants.process]\nprograms = [\"git\"]\nworking-directories = [\"~\"]".into(),
                "[grants.process]\nprograms = [\"git\", \"npm\"]\nworking-directories = [\"~\", \"~/src\"]".into(),
                vec![w("grants.process", true)],
            ),
            (
                "read-only to read-write widens; the read is covered",
                files(&a, "read-only"),
                files(&a, "read-write"),
                vec![w("grants.directories", true)],
            ),
            (
                "a subdirectory of a read-write grant is covered",
                files(&a, "read-write"),
                files(&a, "read-write") + &files(&b, "read-only").replace("/w", "/x"),
                vec![],
            ),
            (
                "a secret-looking variable",
                String::new(),
                "[grants]\nenvironment = [\"GITHUB_TOKEN\"]".into(),
                vec![w("grants.environment", true)],
            ),
            (
                "more memory widens, flagged past 1 GiB; a shorter deadline narrows",
                "[limits]\nmemory-mib = 64\ndeadline-ms = 60000".into(),
                "[limits]\nmemory-mib = 2048\ndeadline-ms = 1000".into(),
                vec![n("limits.deadline-ms"), w("limits.memory-mib", true)],
            ),
            (
                "a persistent instance",
                String::new(),
                "instance = \"persistent\"".into(),
                vec![w("instance", true)],
            ),
            (
                "a system program",
                "[grants.system]\nprograms = [\"git\"]".into(),
                "[grants.system]\nprograms = [\"git\", \"curl\"]".into(),
                vec![w("grants.system", true)],
            ),
            (
                "an MCP URL",
                "[grants.mcp]\nurls = [\"http://127.0.0.1:*\"]".into(),
                "[grants.mcp]\nurls = [\"http://127.0.0.1:*\", \"https://mcp.example\"]".into(),
                vec![w("grants.mcp", true)],
            ),
        ];
        for (what, old, new, expected) in table {
            assert_eq!(changes(&old, &new), expected, "{what}");
        }
    }

    #[test]
    fn the_text_names_each_change_and_flags_risk() {
        let diff = capbridge_policy::diff(
            &policy("[grants]\nevents = [\"echo.said\"]"),
            &policy("[grants]\nevents = [\"*\"]\nlog = true"),
        );
        let text = diff.to_string();
        assert!(
            text.contains("2 widenings (1 flagged RISK), 0 narrowings."),
            "{text}"
        );
        assert!(
            text.contains("grants.events\n  + RISK: Can publish events on every topic (*)."),
            "{text}"
        );
        assert!(text.contains("grants.log\n  + "), "{text}");
    }
}
