//! `capbridge:host/process`: child processes, each started only with a person's approval.
//!
//! `grants.process` bounds what may ever run: programs, working directories, the variables of
//! capbridge's environment passed through, and the steering variables a request may set. A
//! request outside it is refused before any prompt. Inside it, a request runs at once only when
//! a whitelist rule (a template a person allowed for good) matches it exactly; otherwise it
//! waits on a prompt ([`crate::approvals`]) and starts only if a person allows it. Installs
//! always prompt and are never whitelisted. The component can ask and read back; it cannot
//! decide, and nothing here starts a process without the host's own approval of that exact
//! template.
//!
//! Runs, their output and their events belong to the session that asked; a session's runs are
//! terminated (and its prompts rejected) when it ends, and every run when the host stops.

mod rules;
mod runner;
pub(crate) mod template;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use capbridge_policy::{Access, ExplainLine, Grant, GrantContext, GrantKind, Policy};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::json;
use wasmtime::component::{HasSelf, Linker};

use super::capbridge::host::process::{
    self as wit, Command as GuestCommand, Host, Request as GuestRequest, RequestKind as GuestKind,
    Rule as GuestRule, Run as GuestRun, RunOutput as GuestOutput, RunStatus as GuestStatus,
};
use super::events::{Event, EventBus};
use super::{Capability, GuestError, HostContext, Service};
use crate::approvals::{now_ms, Answer, Approvals, Decider, Decision, Prompt};
use crate::audit::{AuditLog, Outcome};
use crate::own_files::OwnFiles;
use crate::state::HostState;

pub use rules::{Rule, RuleStore};
pub(crate) use runner::{contained, signal_group};
pub use runner::{Containment, Utf8Chunks, BUFFER_BYTES, TERM_GRACE};
pub use template::{fills, STEERING_VARIABLES};

/// The capability: `[grants.process]`.
pub struct Process;

/// `PATH` for finding programs when neither the policy nor the request gives one.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Runs going on or waiting for approval at once, per session (more are refused until one ends).
pub const MAX_ACTIVE_RUNS: usize = 16;
/// The same, host-wide.
pub const MAX_ACTIVE_RUNS_HOST: usize = 64;
/// Ended runs kept for reading back, host-wide (the oldest is forgotten first).
pub const MAX_ENDED_RUNS: usize = 32;

/// `[grants.process]`, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessGrant {
    /// `*` (any), bare names (found on the child's `PATH`) or absolute paths.
    pub programs: Vec<String>,
    /// Canonical directories a run's working directory must lie in; the first is the default.
    pub working_directories: Vec<PathBuf>,
    /// Variables of capbridge's own environment passed to every run.
    pub inherit_environment: Vec<String>,
    /// Steering variables a request may set anyway (names, or prefixes ending in `*`).
    pub request_environment: Vec<String>,
}

/// `[grants.process]` as written.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProcessGrantFile {
    /// Programs that may ever run: `*` (any), bare names (found on the child's `PATH`) or
    /// absolute paths. Each run still needs a person's approval.
    pub programs: Vec<String>,
    /// Directories a run's working directory must lie in (absolute, `~` or `~/...`); the first is
    /// the default.
    pub working_directories: Vec<String>,
    /// Variables of capbridge's own environment passed to every run (nothing else of it is).
    #[serde(default)]
    #[schemars(inner(pattern(r"^[A-Za-z_][A-Za-z0-9_]*$")))]
    pub inherit_environment: Vec<String>,
    /// Variables that change how programs load or run (`LD_*`, `PATH`, `NODE_OPTIONS`,
    /// `PYTHON*`, `GIT_*` …) that a request may set anyway: names, or prefixes ending in `*`.
    #[serde(default)]
    #[schemars(inner(pattern(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")))]
    pub request_environment: Vec<String>,
}

impl ProcessGrant {
    /// `any program`, or `these programs: a, b`, for `explain`.
    pub fn programs_text(&self) -> String {
        if self.programs.iter().any(|p| p == "*") {
            "any program".to_string()
        } else {
            format!("these programs: {}", self.programs.join(", "))
        }
    }
}

impl ProcessGrant {
    /// One item per program, working directory and variable (`policy diff`); `runs` names what
    /// is started (`runs`, `servers`).
    pub(crate) fn launch_reach(&self, runs: &str) -> Vec<capbridge_policy::Reach> {
        use capbridge_policy::Reach;
        let mut items: Vec<Reach> = self
            .programs
            .iter()
            .map(|program| {
                let what = if program == "*" {
                    "any program".to_string()
                } else {
                    format!("the program {program}")
                };
                let line = ExplainLine::risky(
                    format!("{runs} may run {what}, each approved by a person."),
                    Some("an approved program runs as you, outside any sandbox".to_string()),
                );
                Reach::new("program", program.clone(), line)
            })
            .collect();
        items.extend(self.working_directories.iter().map(|dir| {
            let line = ExplainLine::plain(format!("{runs} may work in {}.", dir.display()));
            let below = format!("{}/*", dir.display().to_string().trim_end_matches('/'));
            Reach::new("working-directory", below, line)
        }));
        items.extend(self.inherit_environment.iter().map(|name| {
            let line = ExplainLine::plain(format!("{runs} get capbridge's variable {name}."));
            Reach::new("inherited-variable", name.clone(), line)
        }));
        items.extend(self.request_environment.iter().map(|name| {
            let line = ExplainLine::risky(
                format!("Requests may set {name}, which changes how programs load or run."),
                Some("it can make an approved program load or run other code".to_string()),
            );
            Reach::new("request-variable", name.clone(), line)
        }));
        items
    }
}

impl Grant for ProcessGrant {
    fn scope(&self) -> Option<String> {
        Some(format!("({})", self.programs.join(", ")))
    }

    fn reach(&self, _policy: &Policy) -> Vec<capbridge_policy::Reach> {
        self.launch_reach("Runs")
    }

    fn explain(&self, _policy: &Policy) -> Vec<ExplainLine> {
        let programs = self.programs_text();
        let dirs: Vec<String> = self
            .working_directories
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let mut lines = vec![ExplainLine::risky(
            format!(
                "Can ask to run {programs}, with any arguments, in {}. Each run needs a person's \
                 approval: a prompt (allow once, allow and whitelist, reject; rejected after \
                 {} s), or a whitelist rule the person made for that exact template. Installs \
                 always prompt.",
                dirs.join(", "),
                crate::approvals::PROMPT_TIMEOUT.as_secs()
            ),
            Some(
                "an approved program runs as you, outside any sandbox; a whitelisted template \
                 runs again without asking"
                    .to_string(),
            ),
        )];
        if self.inherit_environment.is_empty() {
            lines.push(ExplainLine::plain(
                "Runs get none of capbridge's environment.".to_string(),
            ));
        } else {
            lines.push(ExplainLine::plain(format!(
                "Runs get these variables of capbridge's environment: {}.",
                self.inherit_environment.join(", ")
            )));
        }
        if !self.request_environment.is_empty() {
            lines.push(ExplainLine::risky(
                format!(
                    "Requests may set these variables that change how programs load or run: {}.",
                    self.request_environment.join(", ")
                ),
                Some("they can make an approved program load or run other code".to_string()),
            ));
        }
        lines
    }
}

impl GrantKind for Process {
    fn key(&self) -> &'static str {
        "process"
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        super::described_schema::<ProcessGrantFile>(
            generator,
            "Child processes, each run approved by a person (`capbridge:host/process`).",
        )
    }

    fn parse(
        &self,
        value: toml::Value,
        cx: &mut GrantContext<'_>,
    ) -> Result<Option<Arc<dyn Grant>>, toml::de::Error> {
        let file: ProcessGrantFile = capbridge_policy::read_grant(value)?;
        if file.programs.is_empty() {
            cx.problem(".programs", "is empty: name the programs, or `*` for any");
        }
        if file.working_directories.is_empty() {
            cx.problem(
                ".working-directories",
                "is empty: name at least one directory commands may run in",
            );
        }
        Ok(Some(Arc::new(read_launch_grant(file, cx))))
    }

    fn not_granted(&self) -> &'static str {
        "no processes: it cannot ask to run anything"
    }

    fn widening(&self) -> &'static str {
        "a program added (flagged), a working directory, an inherited variable, or a request variable (flagged) added"
    }
}

/// Reads the fields of a grant shaped like `grants.process` (also `grants.mcp`'s launch part),
/// noting each problem with its key; the caller checks which may be empty.
pub(crate) fn read_launch_grant(file: ProcessGrantFile, cx: &mut GrantContext<'_>) -> ProcessGrant {
    for (i, program) in file.programs.iter().enumerate() {
        let bare = !program.is_empty()
            && !program.contains('/')
            && !program.contains('\0')
            && program != "."
            && program != "..";
        if !(program == "*" || bare || (program.starts_with('/') && !program.contains('\0'))) {
            cx.problem(
                &format!(".programs[{i}]"),
                format!("{program:?} is not `*`, a bare program name or an absolute path"),
            );
        }
    }
    let mut working_directories = Vec::new();
    for (i, dir) in file.working_directories.iter().enumerate() {
        // `~` alone is the home directory (a directory grant never takes all of it).
        let expanded = match (dir.as_str(), cx.home) {
            ("~", Some(home)) => capbridge_policy::host_path(&home.display().to_string(), None),
            _ => capbridge_policy::host_path(dir, cx.home),
        };
        match expanded {
            Ok(path) => working_directories.push(path),
            Err(e) => cx.problem(
                &format!(".working-directories[{i}]"),
                format!("{dir:?} {e}"),
            ),
        }
    }
    for (i, name) in file.inherit_environment.iter().enumerate() {
        if !template::is_variable_name(name) {
            cx.problem(
                &format!(".inherit-environment[{i}]"),
                format!("{name:?} is not a variable name"),
            );
        }
    }
    for (i, name) in file.request_environment.iter().enumerate() {
        if !template::is_variable_name(name.strip_suffix('*').unwrap_or(name)) {
            cx.problem(
                &format!(".request-environment[{i}]"),
                format!("{name:?} is not a variable name or a prefix ending in `*`"),
            );
        }
    }
    ProcessGrant {
        programs: file.programs,
        working_directories,
        inherit_environment: file.inherit_environment,
        request_environment: file.request_environment,
    }
}

impl Capability for Process {
    fn interfaces(&self) -> &'static [&'static str] {
        &["capbridge:host/process"]
    }

    fn summary(&self) -> &'static str {
        "ask to run the granted programs; each run waits for a person's approval (a prompt, or a \
         whitelist rule the person made)"
    }

    fn add_to_linker(&self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)
    }

    fn start(&self, host: &HostContext<'_>) -> Option<Arc<dyn Service>> {
        Some(Arc::new(ProcessService::new(
            host.events.clone(),
            host.approvals.clone(),
            RuleStore::open(&host.config.state_dir),
            host.own_files.clone(),
            host.audit.clone(),
        )))
    }

    fn check_own_files(&self, policy: &Policy, own_files: &OwnFiles) -> Result<(), String> {
        let Some(grant) = policy.grant::<ProcessGrant>() else {
            return Ok(());
        };
        for dir in &grant.working_directories {
            if let Some(clash) = own_files.within(dir) {
                return Err(format!(
                    "grants.process.working-directories: {} {clash}",
                    dir.display()
                ));
            }
        }
        Ok(())
    }

    fn explain_among(&self, policy: &Policy, others: &[&Policy]) -> Vec<ExplainLine> {
        let Some(grant) = policy.grant::<ProcessGrant>() else {
            return Vec::new();
        };
        let writable = writable_directories(others);
        grant
            .working_directories
            .iter()
            .filter_map(|dir| {
                let (component, root) = writable
                    .iter()
                    .find(|(_, root)| root.starts_with(dir) || dir.starts_with(root))?;
                Some(ExplainLine::risky(
                    format!(
                        "Commands may run in {}, and component `{component}` can write in {}.",
                        dir.display(),
                        root.display()
                    ),
                    Some(
                        "a program run in a directory the web app can write is steered by that \
                         directory's files (git reads .git/config, npm reads package.json)"
                            .to_string(),
                    ),
                ))
            })
            .collect()
    }
}

/// The directories other components' policies grant read-write, with who may write there.
fn writable_directories(policies: &[&Policy]) -> Vec<(String, PathBuf)> {
    policies
        .iter()
        .flat_map(|policy| {
            policy
                .directories
                .iter()
                .filter(|d| d.access == Access::ReadWrite)
                .map(|d| (policy.component_id.clone(), d.host.clone()))
        })
        .collect()
}

/// A command as the host keeps it (templates only ever reach storage, events and prompts).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Command {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: Option<String>,
    /// Variables in the order given.
    pub env: Vec<(String, String)>,
    pub stdin: Option<String>,
}

impl From<GuestCommand> for Command {
    fn from(c: GuestCommand) -> Self {
        Self {
            program: c.program,
            args: c.args,
            cwd: c.cwd,
            env: c.env,
            stdin: c.stdin,
        }
    }
}

impl From<Command> for GuestCommand {
    fn from(c: Command) -> Self {
        Self {
            program: c.program,
            args: c.args,
            cwd: c.cwd,
            env: c.env,
            stdin: c.stdin,
        }
    }
}

/// A command or an install.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Command,
    Install,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Command => "command",
            RequestKind::Install => "install",
        }
    }
}

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    PendingApproval,
    Rejected,
    Running,
    Completed,
    Failed,
    Terminated,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::PendingApproval => "pending_approval",
            RunStatus::Rejected => "rejected",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Terminated => "terminated",
        }
    }

    fn is_over(self) -> bool {
        !matches!(self, RunStatus::PendingApproval | RunStatus::Running)
    }
}

/// What the host knows of one run.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub id: String,
    pub kind: RequestKind,
    pub status: RunStatus,
    pub template: Command,
    pub component: String,
    pub session: Option<u64>,
    pub program_path: String,
    pub cwd: String,
    pub request_id: Option<String>,
    pub rule_id: Option<String>,
    pub approval: Option<String>,
    pub rejection: Option<String>,
    pub message: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timeout_ms: u64,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    pub partial_output: bool,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

impl From<RunInfo> for GuestRun {
    fn from(r: RunInfo) -> Self {
        GuestRun {
            id: r.id,
            kind: match r.kind {
                RequestKind::Command => GuestKind::Command,
                RequestKind::Install => GuestKind::Install,
            },
            status: match r.status {
                RunStatus::PendingApproval => GuestStatus::PendingApproval,
                RunStatus::Rejected => GuestStatus::Rejected,
                RunStatus::Running => GuestStatus::Running,
                RunStatus::Completed => GuestStatus::Completed,
                RunStatus::Failed => GuestStatus::Failed,
                RunStatus::Terminated => GuestStatus::Terminated,
            },
            template: r.template.into(),
            program_path: r.program_path,
            cwd: r.cwd,
            request_id: r.request_id,
            rule_id: r.rule_id,
            approval: r.approval,
            rejection: r.rejection,
            message: r.message,
            exit_code: r.exit_code,
            signal: r.signal,
            timeout_ms: r.timeout_ms,
            created_at_ms: r.created_at_ms,
            started_at_ms: r.started_at_ms,
            ended_at_ms: r.ended_at_ms,
            partial_output: r.partial_output,
            stdout_bytes: r.stdout_bytes,
            stderr_bytes: r.stderr_bytes,
        }
    }
}

impl From<Rule> for GuestRule {
    fn from(r: Rule) -> Self {
        GuestRule {
            id: r.id,
            component: r.component,
            template: r.template.into(),
            program_path: r.program_path,
            created_at_ms: r.created_at_ms,
            created_by: r.created_by,
        }
    }
}

/// Why a request was refused before it became a run: the contract's rejection codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `bridge_policy_denied`: outside what the policy grants.
    PolicyDenied(String),
    /// `invalid_request`: not acceptable as sent.
    Invalid(String),
    /// Too many runs or prompts at once.
    Busy(String),
}

impl From<Refusal> for GuestError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::PolicyDenied(m) => GuestError::Denied(m),
            Refusal::Invalid(m) => GuestError::InvalidArgument(m),
            Refusal::Busy(m) => GuestError::Unavailable(m),
        }
    }
}

/// A request, as the component sent it.
pub struct Request {
    pub kind: RequestKind,
    pub template: Command,
    pub resolved: Command,
    pub timeout_ms: u64,
}

/// The host-wide state: runs, rules, and the way to the person.
pub struct ProcessService {
    events: EventBus,
    audit: AuditLog,
    approvals: Approvals,
    rules: RuleStore,
    runs: Mutex<BTreeMap<u64, Arc<runner::RunRecord>>>,
    next_run: AtomicU64,
    /// Directories other components may write, for the prompt's warning (set after loading).
    writable: RwLock<Vec<(String, PathBuf)>>,
    /// capbridge's own directories: no run works in them.
    own_files: OwnFiles,
    /// Sessions that ended, and whether the host is stopping: a request still in flight then
    /// starts nothing.
    closed: Mutex<Closed>,
}

#[derive(Default)]
struct Closed {
    sessions: std::collections::HashSet<u64>,
    stopping: bool,
}

impl ProcessService {
    pub fn new(
        events: EventBus,
        approvals: Approvals,
        rules: RuleStore,
        own_files: OwnFiles,
        audit: AuditLog,
    ) -> Self {
        Self {
            own_files,
            audit,
            closed: Mutex::new(Closed::default()),
            events,
            approvals,
            rules,
            runs: Mutex::new(BTreeMap::new()),
            next_run: AtomicU64::new(1),
            writable: RwLock::new(Vec::new()),
        }
    }

    /// Checks `request` against `policy` and the rules; starts it, or asks a person and starts
    /// it if they allow. Returns the run as it is now.
    pub fn start(
        self: &Arc<Self>,
        policy: &Policy,
        session: Option<u64>,
        request: Request,
    ) -> Result<RunInfo, Refusal> {
        let component = policy.component_id.clone();
        let checked = match self.check(policy, &request) {
            Ok(checked) => checked,
            Err(refusal) => {
                let (code, why) = match &refusal {
                    Refusal::PolicyDenied(why) => ("bridge_policy_denied", why),
                    Refusal::Invalid(why) => ("invalid_request", why),
                    Refusal::Busy(why) => ("busy", why),
                };
                tracing::warn!(target: "capbridge::audit", component, ?session, kind = request.kind.as_str(), program = %request.template.program, code, "command refused: {why}");
                self.audit.record(
                    "process.refused",
                    Some(&component),
                    session,
                    Outcome::Denied,
                    json!({ "kind": request.kind.as_str(), "program": request.template.program, "code": code }),
                );
                return Err(refusal);
            }
        };
        let rule = match request.kind {
            RequestKind::Command => self.rules.matching(
                &component,
                &request.template,
                &checked.program.display().to_string(),
            ),
            // Installs always ask, whatever the rules say.
            RequestKind::Install => None,
        };
        let (id, record) = self.new_run(RunInfo {
            id: String::new(),
            kind: request.kind,
            status: RunStatus::PendingApproval,
            template: request.template.clone(),
            component: component.clone(),
            session,
            program_path: checked.program.display().to_string(),
            cwd: checked.cwd.display().to_string(),
            request_id: None,
            rule_id: None,
            approval: None,
            rejection: None,
            message: None,
            exit_code: None,
            signal: None,
            timeout_ms: request.timeout_ms,
            created_at_ms: now_ms(),
            started_at_ms: None,
            ended_at_ms: None,
            partial_output: false,
            stdout_bytes: 0,
            stderr_bytes: 0,
        })?;
        let events = runner::RunEvents {
            bus: self.events.clone(),
            audit: self.audit.clone(),
            session,
            run_id: id.clone(),
        };
        let launch = runner::Launch {
            program: checked.program.clone(),
            args: request.resolved.args,
            cwd: checked.cwd.clone(),
            env: checked.env,
            stdin: request.resolved.stdin,
            timeout: Duration::from_millis(request.timeout_ms),
        };
        if let Some(rule) = rule {
            let info = record.update(|info| {
                info.status = RunStatus::Running;
                info.approval = Some("rule".into());
                info.rule_id = Some(rule.id.clone());
            });
            let command = template::display(&request.template.program, &request.template.args);
            tracing::info!(target: "capbridge::audit", run = %id, component, ?session, rule = %rule.id, %command, "command allowed by whitelist rule");
            self.audit.record(
                "process.allowed",
                Some(&component),
                session,
                Outcome::Allowed,
                json!({ "run": id, "rule": rule.id, "command": command }),
            );
            tokio::spawn(runner::run(launch, record, events));
            return Ok(info);
        }

        let mut warnings = Vec::new();
        let filled = template::placeholder_fields(&request.template);
        if !filled.is_empty() {
            warnings.push(format!(
                "the web app fills placeholders with text of its choosing on every run, here in \
                 {}: allow only if any text there is harmless",
                filled.join(", ")
            ));
        }
        if let Some((writer, root)) = self
            .writable
            .read()
            .expect("writable lock")
            .iter()
            .find(|(_, root)| checked.cwd.starts_with(root))
        {
            warnings.push(format!(
                "component `{writer}` (the web app) can write in {}: a program run there is \
                 steered by that directory's files (git reads .git/config, npm reads \
                 package.json)",
                template::printable(&root.display().to_string())
            ));
        }
        let mut env_names: Vec<String> = request
            .template
            .env
            .iter()
            .map(|(k, _)| k.clone())
            .collect();
        env_names.sort();
        let prompt = Prompt {
            id: String::new(),
            kind: request.kind.as_str().into(),
            component: component.clone(),
            session,
            run_id: Some(id.clone()),
            server_id: None,
            // Every text a terminal shows is made printable: no escape sequence in a request can
            // redraw the prompt.
            summary: template::display(&request.template.program, &request.template.args),
            program_path: Some(template::printable(&checked.program.display().to_string())),
            cwd: Some(template::printable(&checked.cwd.display().to_string())),
            url: None,
            env_names,
            header_names: Vec::new(),
            has_stdin: request.template.stdin.is_some(),
            warnings,
            whitelistable: request.kind == RequestKind::Command,
            created_at_ms: 0,
            expires_at_ms: 0,
        };
        let (prompt, answer) = match self.approvals.ask(prompt) {
            Ok(asked) => asked,
            Err(e) => {
                self.forget(&id);
                return Err(Refusal::Busy(e.to_string()));
            }
        };
        let info = record.update(|info| info.request_id = Some(prompt.id.clone()));
        tracing::info!(target: "capbridge::audit", run = %id, request = %prompt.id, component, ?session, kind = request.kind.as_str(), command = %prompt.summary, cwd = ?prompt.cwd, "approval asked");
        self.audit.record(
            "prompt.asked",
            Some(&component),
            session,
            Outcome::Allowed,
            json!({ "request": prompt.id, "run": id, "kind": request.kind.as_str(), "command": prompt.summary }),
        );
        self.publish(
            "system.permission.prompt",
            session,
            json!({ "prompt": prompt, "runId": id }),
        );
        let service = self.clone();
        let template = request.template;
        tokio::spawn(async move {
            let answer = answer.await;
            service
                .decided(&prompt, answer, &template, launch, record, events)
                .await;
        });
        Ok(info)
    }

    /// Acts on a person's answer to `prompt`.
    async fn decided(
        &self,
        prompt: &Prompt,
        answer: Answer,
        template: &Command,
        launch: runner::Launch,
        record: Arc<runner::RunRecord>,
        events: runner::RunEvents,
    ) {
        let withdrawn = *record.stop.borrow();
        let decision = answer.decision.as_str();
        let mut rule_id = None;
        if answer.decision == Decision::AllowAndWhitelist && !withdrawn {
            match self.rules.add(
                &prompt.component,
                template,
                &launch.program.display().to_string(),
                answer.by.as_str(),
            ) {
                Ok(rule) => {
                    tracing::info!(target: "capbridge::audit", rule = %rule.id, component = %rule.component, by = answer.by.as_str(), command = %prompt.summary, "whitelist rule added");
                    self.audit.record(
                        "rule.created",
                        Some(&rule.component),
                        prompt.session,
                        Outcome::Allowed,
                        json!({ "rule": rule.id, "by": answer.by.as_str(), "command": prompt.summary }),
                    );
                    self.publish(
                        "system.permission.whitelist.updated",
                        None,
                        json!({ "action": "added", "rule": rule }),
                    );
                    rule_id = Some(rule.id);
                }
                Err(e) => {
                    record.update(|info| info.message = Some(e));
                }
            }
        }
        tracing::info!(target: "capbridge::audit", run = ?prompt.run_id, request = %prompt.id, component = %prompt.component, session = ?prompt.session, decision, by = answer.by.as_str(), rule = ?rule_id, "approval decided");
        self.audit.record(
            "prompt.decided",
            Some(&prompt.component),
            prompt.session,
            if answer.decision == Decision::Reject { Outcome::Denied } else { Outcome::Allowed },
            json!({ "request": prompt.id, "run": prompt.run_id, "decision": decision, "by": answer.by.as_str(), "rule": rule_id }),
        );
        self.publish(
            "system.permission.decided",
            prompt.session,
            json!({
                "requestId": prompt.id,
                "runId": prompt.run_id,
                "decision": decision,
                "decidedBy": answer.by.as_str(),
                "ruleId": rule_id,
            }),
        );
        if withdrawn {
            record.finish(|info| {
                info.status = RunStatus::Terminated;
                info.message = Some("withdrawn before a decision".into());
            });
            events.publish(
                "system.command.terminated",
                json!({ "message": "withdrawn before a decision" }),
            );
            return;
        }
        if answer.decision == Decision::Reject {
            let message = match answer.by {
                Decider::Nobody => format!(
                    "nobody answered the prompt within {} s",
                    self.approvals.timeout().as_secs()
                ),
                by => format!("rejected by the person ({})", by.as_str()),
            };
            record.finish(|info| {
                info.status = RunStatus::Rejected;
                info.rejection = Some("rejected_by_user".into());
                info.message = Some(message);
            });
            return;
        }
        record.update(|info| {
            info.status = RunStatus::Running;
            info.approval = Some(
                match answer.decision {
                    Decision::AllowAndWhitelist => "whitelist",
                    _ => "once",
                }
                .into(),
            );
            info.rule_id = rule_id;
        });
        runner::run(launch, record, events).await;
    }

    /// The checks every request passes before a rule is looked up or a person is asked.
    fn check(&self, policy: &Policy, request: &Request) -> Result<Checked, Refusal> {
        let grant = policy.grant::<ProcessGrant>().ok_or_else(|| {
            Refusal::PolicyDenied(super::denial(
                &policy.component_id,
                "run programs",
                "grants.process",
                &policy.source,
            ))
        })?;
        for (prefix, command) in [
            ("template", &request.template),
            ("resolved", &request.resolved),
        ] {
            if let Some(field) = template::nul_field(prefix, command) {
                return Err(Refusal::Invalid(format!("{field} contains a NUL byte")));
            }
        }
        if request.timeout_ms == 0 {
            return Err(Refusal::Invalid("`timeoutMs` must be more than 0".into()));
        }
        for (prefix, command) in [
            ("template", &request.template),
            ("resolved", &request.resolved),
        ] {
            let mut names: Vec<&str> = command.env.iter().map(|(k, _)| k.as_str()).collect();
            names.sort_unstable();
            if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
                return Err(Refusal::Invalid(format!(
                    "`{prefix}.env.{}` is set twice",
                    twice[0]
                )));
            }
        }
        template::check_resolved(&request.template, &request.resolved).map_err(Refusal::Invalid)?;
        check_launch(
            grant,
            "grants.process",
            "template",
            &request.template.program,
            request.template.cwd.as_deref(),
            &request.template.env,
            &request.resolved.env,
            &self.own_files,
            &policy.source,
        )
    }

    fn new_run(&self, mut info: RunInfo) -> Result<(String, Arc<runner::RunRecord>), Refusal> {
        let mut runs = self.runs.lock().expect("runs lock");
        {
            let closed = self.closed.lock().expect("closed lock");
            if closed.stopping || info.session.is_some_and(|s| closed.sessions.contains(&s)) {
                return Err(Refusal::Busy(
                    "the session has ended or capbridge is stopping".into(),
                ));
            }
        }
        let active: Vec<Option<u64>> = runs
            .values()
            .filter_map(|r| {
                let info = r.info.lock().expect("run lock");
                (!info.status.is_over()).then_some(info.session)
            })
            .collect();
        let of_session = active.iter().filter(|s| **s == info.session).count();
        if of_session >= MAX_ACTIVE_RUNS || active.len() >= MAX_ACTIVE_RUNS_HOST {
            return Err(Refusal::Busy(format!(
                "{} runs are already going on or waiting for approval; wait for one to end",
                if of_session >= MAX_ACTIVE_RUNS {
                    format!("{MAX_ACTIVE_RUNS} of this session's")
                } else {
                    format!("{MAX_ACTIVE_RUNS_HOST}")
                }
            )));
        }
        // Forget the oldest ended runs beyond the limit.
        let ended: Vec<u64> = runs
            .iter()
            .filter(|(_, r)| r.info.lock().expect("run lock").status.is_over())
            .map(|(key, _)| *key)
            .collect();
        for key in ended
            .iter()
            .take((ended.len() + 1).saturating_sub(MAX_ENDED_RUNS))
        {
            runs.remove(key);
        }
        let key = self.next_run.fetch_add(1, Ordering::Relaxed);
        info.id = format!("run-{key}");
        let id = info.id.clone();
        let record = Arc::new(runner::RunRecord::new(info));
        runs.insert(key, record.clone());
        Ok((id, record))
    }

    fn forget(&self, id: &str) {
        self.runs
            .lock()
            .expect("runs lock")
            .retain(|_, r| r.info.lock().expect("run lock").id != id);
    }

    /// The run `id` if `component` asked for it in `session`.
    fn record(
        &self,
        component: &str,
        session: Option<u64>,
        id: &str,
    ) -> Result<Arc<runner::RunRecord>, GuestError> {
        self.runs
            .lock()
            .expect("runs lock")
            .values()
            .find(|r| {
                let info = r.info.lock().expect("run lock");
                info.id == id && info.session == session && info.component == component
            })
            .cloned()
            .ok_or_else(|| GuestError::NotFound(format!("this session has no run `{id}`")))
    }

    /// The runs `component` asked for in `session`, newest first.
    pub fn runs(&self, component: &str, session: Option<u64>) -> Vec<RunInfo> {
        let runs = self.runs.lock().expect("runs lock");
        runs.values()
            .rev()
            .map(|r| r.info())
            .filter(|info| info.session == session && info.component == component)
            .collect()
    }

    pub fn run(
        &self,
        component: &str,
        session: Option<u64>,
        id: &str,
    ) -> Result<RunInfo, GuestError> {
        Ok(self.record(component, session, id)?.info())
    }

    pub fn output(
        &self,
        component: &str,
        session: Option<u64>,
        id: &str,
    ) -> Result<(Vec<u8>, Vec<u8>), GuestError> {
        let record = self.record(component, session, id)?;
        let stdout = record.stdout.lock().expect("buffer lock").clone();
        let stderr = record.stderr.lock().expect("buffer lock").clone();
        Ok((stdout, stderr))
    }

    /// Ends run `id` of `session` and returns it as it ended (or as it is, if it takes longer
    /// than the grace period and a little).
    pub async fn terminate(
        &self,
        component: &str,
        session: Option<u64>,
        id: &str,
    ) -> Result<RunInfo, GuestError> {
        let record = self.record(component, session, id)?;
        self.stop(&record).await;
        Ok(record.info())
    }

    async fn stop(&self, record: &runner::RunRecord) {
        let info = record.info();
        if info.status.is_over() {
            return;
        }
        tracing::info!(target: "capbridge::audit", run = %info.id, component = %info.component, "command terminate asked");
        self.audit.record(
            "process.terminated",
            Some(&info.component),
            info.session,
            Outcome::Allowed,
            json!({ "run": info.id }),
        );
        record.stop.send_replace(true);
        if let Some(request) = info
            .request_id
            .filter(|_| info.status == RunStatus::PendingApproval)
        {
            self.approvals.reject_where(|p| p.id == request);
        }
        record.wait_done(runner::LONGEST_ENDING).await;
    }

    /// Ends every run `which` selects; forgets them when `forget`.
    async fn stop_where(&self, which: impl Fn(&RunInfo) -> bool, forget: bool) {
        let records: Vec<Arc<runner::RunRecord>> = self
            .runs
            .lock()
            .expect("runs lock")
            .values()
            .filter(|r| which(&r.info()))
            .cloned()
            .collect();
        futures_util::future::join_all(records.iter().map(|r| self.stop(r))).await;
        if forget {
            self.runs
                .lock()
                .expect("runs lock")
                .retain(|_, r| !which(&r.info()));
        }
    }

    pub fn rules(&self, component: &str) -> Vec<Rule> {
        self.rules.list(component)
    }

    pub fn delete_rule(&self, component: &str, id: &str) -> Result<Rule, GuestError> {
        match self.rules.delete(component, id) {
            Ok(Some(rule)) => {
                tracing::info!(target: "capbridge::audit", rule = %rule.id, component, "whitelist rule deleted");
                self.audit.record(
                    "rule.deleted",
                    Some(component),
                    None,
                    Outcome::Allowed,
                    json!({ "rule": rule.id }),
                );
                self.publish(
                    "system.permission.whitelist.updated",
                    None,
                    json!({ "action": "deleted", "rule": rule }),
                );
                Ok(rule)
            }
            Ok(None) => Err(GuestError::NotFound(format!("no whitelist rule `{id}`"))),
            Err(e) => Err(GuestError::Unavailable(e)),
        }
    }

    fn publish(&self, topic: &str, audience: Option<u64>, payload: serde_json::Value) {
        self.events.publish(Event::host(topic, payload, audience));
    }
}

/// A request's checked program, directory and environment.
pub(crate) struct Checked {
    pub program: PathBuf,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
}
/// Checks what a launch asks for against a grant shaped like `grants.process` (`key` names it in
/// refusals, `field` the request's part): the program (resolved on the child's `PATH`), the
/// working directory, and the variables set. Returns what the child gets.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_launch(
    grant: &ProcessGrant,
    key: &str,
    field: &str,
    program_text: &str,
    cwd: Option<&str>,
    template_env: &[(String, String)],
    resolved_env: &[(String, String)],
    own_files: &OwnFiles,
    source: &Path,
) -> Result<Checked, Refusal> {
    for (name, _) in template_env {
        if !template::is_variable_name(name) {
            return Err(Refusal::Invalid(format!(
                "`{field}.env.{name}` is not a variable name"
            )));
        }
        if template::is_steering(name)
            && !grant
                .request_environment
                .iter()
                .any(|p| template::name_matches(p, name))
        {
            return Err(Refusal::PolicyDenied(format!(
                "`{field}.env.{name}`: {name} changes how programs load or run, and \
                 {key}.request-environment of {} does not name it",
                source.display()
            )));
        }
    }
    // The child's environment: what the policy passes through, then what the request sets.
    let mut env: Vec<(String, String)> = grant
        .inherit_environment
        .iter()
        .filter_map(|name| Some((name.clone(), std::env::var(name).ok()?)))
        .collect();
    for (name, value) in resolved_env {
        env.retain(|(k, _)| k != name);
        env.push((name.clone(), value.clone()));
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    if program_text.is_empty() || (program_text.contains('/') && !program_text.starts_with('/')) {
        return Err(Refusal::Invalid(format!(
            "`{field}.program` {program_text:?} is not a bare program name or an absolute path"
        )));
    }
    // The PATH searched is not named: a request may have filled it from a placeholder.
    let program = runner::resolve_program(program_text, path).ok_or_else(|| {
        Refusal::Invalid(format!(
            "`{field}.program`: no executable {program_text:?} {}",
            if program_text.starts_with('/') {
                "exists"
            } else {
                "on the run's PATH"
            }
        ))
    })?;
    let allowed = grant.programs.iter().any(|granted| {
        granted == "*"
            || Path::new(granted) == program
            || (!granted.contains('/')
                && runner::resolve_program(granted, path).as_deref() == Some(&program))
    });
    if !allowed {
        return Err(Refusal::PolicyDenied(format!(
            "`{field}.program`: {} is not in {key}.programs of {}",
            program.display(),
            source.display()
        )));
    }
    let cwd =
        match cwd {
            Some(cwd) => {
                if !cwd.starts_with('/') {
                    return Err(Refusal::Invalid(format!(
                        "`{field}.cwd` {cwd:?} is not an absolute path"
                    )));
                }
                std::fs::canonicalize(cwd)
                    .ok()
                    .filter(|p| p.is_dir())
                    .ok_or_else(|| {
                        Refusal::Invalid(format!("`{field}.cwd` {cwd:?} is not a directory"))
                    })?
            }
            None => grant.working_directories.first().cloned().ok_or_else(|| {
                Refusal::PolicyDenied(format!("{key}.working-directories is empty"))
            })?,
        };
    if let Some(why) = own_files.within(&cwd) {
        return Err(Refusal::PolicyDenied(format!(
            "`{field}.cwd`: {}: {why}",
            cwd.display()
        )));
    }
    if !grant
        .working_directories
        .iter()
        .any(|dir| cwd.starts_with(dir))
    {
        return Err(Refusal::PolicyDenied(format!(
            "`{field}.cwd`: {} is not inside {key}.working-directories of {}",
            cwd.display(),
            source.display()
        )));
    }
    Ok(Checked { program, cwd, env })
}

impl Service for ProcessService {
    fn loaded(&self, policies: &[&Policy]) {
        *self.writable.write().expect("writable lock") = writable_directories(policies);
    }

    fn end_session(&self, session: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            {
                // Under the runs lock, so no run of the session is being created meanwhile.
                let _runs = self.runs.lock().expect("runs lock");
                self.closed
                    .lock()
                    .expect("closed lock")
                    .sessions
                    .insert(session);
            }
            self.approvals.reject_where(|p| p.session == Some(session));
            self.stop_where(|info| info.session == Some(session), true)
                .await;
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            {
                let _runs = self.runs.lock().expect("runs lock");
                self.closed.lock().expect("closed lock").stopping = true;
            }
            self.approvals.reject_where(|_| true);
            self.stop_where(|_| true, false).await;
        })
    }
}

impl HostState {
    fn process(&self) -> wasmtime::Result<Arc<ProcessService>> {
        self.grants
            .services
            .get_arc::<ProcessService>()
            .ok_or_else(|| wasmtime::format_err!("the process service is not running"))
    }
}

impl Host for HostState {
    async fn start(
        &mut self,
        request: GuestRequest,
    ) -> wasmtime::Result<Result<GuestRun, GuestError>> {
        let service = self.process()?;
        let request = Request {
            kind: match request.kind {
                GuestKind::Command => RequestKind::Command,
                GuestKind::Install => RequestKind::Install,
            },
            template: request.template.into(),
            resolved: request.resolved.into(),
            timeout_ms: request.timeout_ms,
        };
        Ok(service
            .start(&self.grants.policy, self.grants.session, request)
            .map(GuestRun::from)
            .map_err(GuestError::from))
    }

    async fn runs(&mut self) -> wasmtime::Result<Vec<GuestRun>> {
        let service = self.process()?;
        Ok(service
            .runs(&self.grants.policy.component_id, self.grants.session)
            .into_iter()
            .map(GuestRun::from)
            .collect())
    }

    async fn get_run(&mut self, id: String) -> wasmtime::Result<Result<GuestRun, GuestError>> {
        Ok(self
            .process()?
            .run(&self.grants.policy.component_id, self.grants.session, &id)
            .map(GuestRun::from))
    }

    async fn output(&mut self, id: String) -> wasmtime::Result<Result<GuestOutput, GuestError>> {
        Ok(self
            .process()?
            .output(&self.grants.policy.component_id, self.grants.session, &id)
            .map(|(stdout, stderr)| GuestOutput { stdout, stderr }))
    }

    async fn terminate(&mut self, id: String) -> wasmtime::Result<Result<GuestRun, GuestError>> {
        let service = self.process()?;
        Ok(service
            .terminate(&self.grants.policy.component_id, self.grants.session, &id)
            .await
            .map(GuestRun::from))
    }

    async fn rules(&mut self) -> wasmtime::Result<Vec<GuestRule>> {
        Ok(self
            .process()?
            .rules(&self.grants.policy.component_id)
            .into_iter()
            .map(GuestRule::from)
            .collect())
    }

    async fn delete_rule(&mut self, id: String) -> wasmtime::Result<Result<GuestRule, GuestError>> {
        Ok(self
            .process()?
            .delete_rule(&self.grants.policy.component_id, &id)
            .map(GuestRule::from))
    }
}
