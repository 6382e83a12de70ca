//! The commands component: runs programs for the web app, each only with a person's approval.
//!
//! A thin layer over `capbridge:host/process`, which owns everything that matters for safety:
//! the prompts, the whitelist rules, the policy's bounds (programs, working directories,
//! environment) and the check that `resolved` is `template` with placeholders filled. This
//! component checks the shapes of requests (naming the field, see `check`), fills in defaults,
//! and gives output as text or base64.

// The generated glue passes flattened records as many parameters.
#![allow(clippy::too_many_arguments)]

mod check;

wit_bindgen::generate!({ world: "commands", generate_all });

use capbridge::host::process::{self as host, Request, RequestKind};

struct Commands;

impl Guest for Commands {
    fn execute(
        template: Command,
        resolved: Option<Command>,
        timeout_ms: Option<u64>,
    ) -> Result<Run, Error> {
        check_command("template", &template)?;
        if let Some(resolved) = &resolved {
            check_command("resolved", resolved)?;
        }
        let timeout_ms = check::timeout(timeout_ms).map_err(Error::InvalidArgument)?;
        let resolved = resolved.unwrap_or_else(|| template.clone());
        host::start(&Request {
            kind: RequestKind::Command,
            template,
            resolved,
            timeout_ms,
        })
    }

    fn install(command: Command, timeout_ms: Option<u64>) -> Result<Run, Error> {
        check_command("command", &command)?;
        let timeout_ms = check::timeout(timeout_ms).map_err(Error::InvalidArgument)?;
        host::start(&Request {
            kind: RequestKind::Install,
            template: command.clone(),
            resolved: command,
            timeout_ms,
        })
    }

    fn runs() -> Vec<Run> {
        host::runs()
    }

    fn get_run(id: String) -> Result<RunDetail, Error> {
        check_id(&id)?;
        let run = host::get_run(&id)?;
        let output = host::output(&id)?;
        let (stdout, stdout_encoding) = check::encode(output.stdout);
        let (stderr, stderr_encoding) = check::encode(output.stderr);
        Ok(RunDetail {
            run,
            stdout,
            stdout_encoding,
            stderr,
            stderr_encoding,
        })
    }

    fn terminate(id: String) -> Result<Run, Error> {
        check_id(&id)?;
        host::terminate(&id)
    }

    fn rules() -> Vec<Rule> {
        host::rules()
    }

    fn get_rule(id: String) -> Result<Rule, Error> {
        check_id(&id)?;
        host::rules()
            .into_iter()
            .find(|rule| rule.id == id)
            .ok_or_else(|| Error::NotFound(format!("no whitelist rule `{id}`")))
    }

    fn delete_rule(id: String) -> Result<Rule, Error> {
        check_id(&id)?;
        host::delete_rule(&id)
    }
}

/// `check::command` on a WIT `command`; `field` names it in messages.
fn check_command(field: &str, command: &Command) -> Result<(), Error> {
    let fields = check::Command {
        program: &command.program,
        args: &command.args,
        cwd: command.cwd.as_deref(),
        env: &command.env,
        stdin: command.stdin.as_deref(),
    };
    check::command(field, &fields).map_err(Error::InvalidArgument)
}

fn check_id(id: &str) -> Result<(), Error> {
    check::id(id).map_err(Error::InvalidArgument)
}

export!(Commands);
