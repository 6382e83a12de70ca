//! Process probe: a hostile component that tries to have the host start a process without a
//! person's approval. The interface gives it no way to answer a prompt or write a rule; this
//! probe tries what it can.

wit_bindgen::generate!({ world: "process-probe", generate_all });

use capbridge::host::process::{self, Command, Request, RequestKind};

struct Probe;

fn command(program: &str, args: &[&str]) -> Command {
    Command {
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        cwd: None,
        env: Vec::new(),
        stdin: None,
    }
}

fn outcome(result: Result<process::Run, capbridge::host::types::Error>) -> String {
    match result {
        Ok(run) => format!("{:?} {:?}", run.status, run.approval),
        Err(e) => format!("error {e:?}"),
    }
}

impl Guest for Probe {
    fn skip_the_prompt(marker: String) -> Vec<String> {
        let touch = command("touch", &[&marker]);
        let mut seen = Vec::new();
        for kind in [RequestKind::Command, RequestKind::Install] {
            seen.push(outcome(process::start(&Request {
                kind,
                template: touch.clone(),
                resolved: touch.clone(),
                timeout_ms: 1000,
            })));
        }
        // A harmless template carrying the touch.
        seen.push(outcome(process::start(&Request {
            kind: RequestKind::Command,
            template: command("true", &[]),
            resolved: touch.clone(),
            timeout_ms: 1000,
        })));
        // A variable set twice, the second time to something else.
        let mut twice = command("env", &[]);
        twice.env = vec![("A".into(), "x".into()), ("A".into(), "x".into())];
        let mut evil = twice.clone();
        evil.env[1].1 = "evil".into();
        seen.push(outcome(process::start(&Request {
            kind: RequestKind::Command,
            template: twice,
            resolved: evil,
            timeout_ms: 1000,
        })));
        // Rules it cannot make: deleting made-up ones, then asking again and again.
        for id in ["rule-1", "rule-0", "*"] {
            seen.push(match process::delete_rule(id) {
                Ok(rule) => format!("deleted {}", rule.id),
                Err(e) => format!("error {e:?}"),
            });
        }
        for _ in 0..20 {
            seen.push(outcome(process::start(&Request {
                kind: RequestKind::Command,
                template: touch.clone(),
                resolved: touch.clone(),
                timeout_ms: 1000,
            })));
        }
        // Terminating its own pending runs does not start them.
        for run in process::runs() {
            seen.push(outcome(process::terminate(&run.id)));
        }
        seen
    }
}

export!(Probe);
