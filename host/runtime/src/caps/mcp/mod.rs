//! `capbridge:host/mcp`: MCP servers for the web app, registered only with a person's approval.
//!
//! Registering a server is granting: an entry lets capbridge launch a program or reach a URL,
//! so adding one, or changing what it launches or reaches, waits on a prompt
//! ([`crate::approvals`]); `grants.mcp` bounds what may ever be asked for (programs, working
//! directories, environment, URL patterns), and a request outside it is refused before any
//! prompt. An approved entry is persisted ([`registry`]) and is a grant for that one server.
//!
//! The MCP protocol is the component's: the host starts a server's transport ([`transport`]),
//! moves whole messages of at most [`framing::MAX_MESSAGE_BYTES`], and runs one instance of
//! the component per connection, its *driver* ([`crate::runtime::Background`]), which the
//! other instances reach through `submit`. The host keeps what must not depend on the
//! component: the registry, the approvals, the secrets (resolved values live in memory only,
//! and go only into the server's environment or headers), and the server's state (a server
//! that dies is marked `failed` at once and every call waiting on it fails).

mod framing;
mod registry;
#[cfg(test)]
mod tests;
mod transport;

use crate::audit::{AuditLog, Outcome};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use capbridge_policy::{ExplainLine, Grant, GrantContext, GrantKind, NetworkGrant, Policy, Scheme};
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use wasmtime::component::{HasSelf, Linker, Val};

use super::capbridge::host::mcp::{
    self as wit, Host, HttpServer as GuestHttp, Incoming as GuestIncoming, Server as GuestServer,
    ServerState as GuestState, StdioServer as GuestStdio, Transport as GuestTransport,
};
use super::events::{Event, EventBus};
use super::process::template;
use super::process::{check_launch, read_launch_grant, ProcessGrant, ProcessGrantFile};
use super::{Capability, GuestError, HostContext, Service};
use crate::approvals::{now_ms, Approvals, Decision, Prompt};
use crate::own_files::OwnFiles;
use crate::state::HostState;

pub use framing::MAX_MESSAGE_BYTES;
pub use registry::{Entry, Transport};
use transport::{HttpTarget, Incoming, Link, StderrLog, StdioLaunch};

/// The capability: `[grants.mcp]`.
pub struct Mcp;

/// Requests in flight per connection (more are refused, not queued).
pub const MAX_IN_FLIGHT: usize = 256;
/// Messages waiting for the driver per connection (at most 16 × 4 MiB held); a server that
/// outruns it waits, and so do callers handing it requests.
const INBOX: usize = 16;
/// The longest `submit` may wait, whatever it asks.
pub const MAX_SUBMIT: Duration = Duration::from_secs(15 * 60);
/// How long a stopped driver gets to return before it is ended.
const DRIVER_GRACE: Duration = Duration::from_secs(2);
/// The export the host calls to start a connection's driver.
const DRIVE_EXPORT: &str = "drive";
/// The shortest time between two `mcp.tools.changed` events of one connection.
const TOOLS_CHANGED_EVERY: Duration = Duration::from_secs(1);
/// The longest wait after failures before the next connect may be tried.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// `[grants.mcp]`, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpGrant {
    /// What stdio servers may be launched: shaped like `grants.process`.
    pub launch: ProcessGrant,
    /// The URLs HTTP servers may have.
    pub urls: Vec<UrlPattern>,
}

/// One entry of `grants.mcp.urls`: an origin, whose port may be `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPattern {
    origin: NetworkGrant,
    any_port: bool,
    /// As written in the policy.
    text: String,
}

impl UrlPattern {
    fn parse(text: &str) -> Result<Self, String> {
        let (origin, any_port) = match text.strip_suffix(":*") {
            Some(origin) => (origin, true),
            None => (
                text.strip_suffix(":*/").unwrap_or(text),
                text.ends_with(":*/"),
            ),
        };
        Ok(Self {
            origin: NetworkGrant::parse(origin)?,
            any_port,
            text: text.to_string(),
        })
    }

    fn matches(&self, url: &url::Url) -> bool {
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return false,
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        let port = if self.any_port {
            self.origin.port
        } else {
            port
        };
        self.origin.matches(scheme, host, port)
    }
}

/// `[grants.mcp]` as written.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct McpGrantFile {
    /// Programs stdio servers may be: `*` (any), bare names (found on the server's `PATH`) or
    /// absolute paths. Each registration still needs a person's approval.
    #[serde(default)]
    pub programs: Vec<String>,
    /// Directories a stdio server may start in (absolute, `~` or `~/...`); the first is the
    /// default.
    #[serde(default)]
    pub working_directories: Vec<String>,
    /// Variables of capbridge's own environment every stdio server gets.
    #[serde(default)]
    #[schemars(inner(pattern(r"^[A-Za-z_][A-Za-z0-9_]*$")))]
    pub inherit_environment: Vec<String>,
    /// Variables that change how programs load or run that an entry may set anyway.
    #[serde(default)]
    #[schemars(inner(pattern(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")))]
    pub request_environment: Vec<String>,
    /// Origins HTTP servers may have: `scheme://host[:port]`, the port may be `*`.
    #[serde(default)]
    pub urls: Vec<String>,
}

impl Grant for McpGrant {
    fn reach(&self, _policy: &Policy) -> Vec<capbridge_policy::Reach> {
        let mut items = self.launch.launch_reach("MCP servers");
        items.extend(self.urls.iter().map(|url| {
            let line = ExplainLine::risky(
                format!(
                    "MCP servers may be reached over HTTP at {}, each approved by a person.",
                    url.text
                ),
                Some("the web app's requests to the server leave through capbridge".to_string()),
            );
            capbridge_policy::Reach::new("url", url.text.clone(), line)
        }));
        items
    }

    fn scope(&self) -> Option<String> {
        let mut scope: Vec<&str> = self.launch.programs.iter().map(String::as_str).collect();
        scope.extend(self.urls.iter().map(|u| u.text.as_str()));
        Some(format!("({})", scope.join(", ")))
    }

    fn explain(&self, _policy: &Policy) -> Vec<ExplainLine> {
        let mut lines = Vec::new();
        if !self.launch.programs.is_empty() {
            let programs = self.launch.programs_text();
            let dirs: Vec<String> = self
                .launch
                .working_directories
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            lines.push(ExplainLine::risky(
                format!(
                    "Can ask to register MCP servers that run {programs}, with any arguments, in \
                     {}. Each registration, and each change of what a server runs, needs a \
                     person's approval on a prompt.",
                    dirs.join(", ")
                ),
                Some(
                    "an approved server runs as you, outside any sandbox, whenever the web app \
                     connects to it"
                        .to_string(),
                ),
            ));
            lines.push(ExplainLine::plain(
                if self.launch.inherit_environment.is_empty() {
                    "Servers get none of capbridge's environment.".to_string()
                } else {
                    format!(
                        "Servers get these variables of capbridge's environment: {}.",
                        self.launch.inherit_environment.join(", ")
                    )
                },
            ));
        }
        if !self.urls.is_empty() {
            let urls: Vec<&str> = self.urls.iter().map(|u| u.text.as_str()).collect();
            lines.push(ExplainLine::risky(
                format!(
                    "Can ask to register MCP servers reached over HTTP at {}{}. Each needs a \
                     person's approval.",
                    urls.join(", "),
                    if self.urls.iter().any(|u| u.any_port) {
                        " (`:*`: any port)"
                    } else {
                        ""
                    }
                ),
                Some("an approved server receives what the web app sends it".to_string()),
            ));
        }
        lines
    }
}

impl GrantKind for Mcp {
    fn key(&self) -> &'static str {
        "mcp"
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        super::described_schema::<McpGrantFile>(
            generator,
            "MCP servers, each registration approved by a person (`capbridge:host/mcp`).",
        )
    }

    fn parse(
        &self,
        value: toml::Value,
        cx: &mut GrantContext<'_>,
    ) -> Result<Option<Arc<dyn Grant>>, toml::de::Error> {
        let file: McpGrantFile = capbridge_policy::read_grant(value)?;
        if file.programs.is_empty() && file.urls.is_empty() {
            cx.problem(
                "",
                "grants nothing: name `programs` (stdio servers) or `urls` (HTTP servers)",
            );
        }
        if !file.programs.is_empty() && file.working_directories.is_empty() {
            cx.problem(
                ".working-directories",
                "is empty: name at least one directory stdio servers may start in",
            );
        }
        let mut urls = Vec::new();
        for (i, text) in file.urls.iter().enumerate() {
            match UrlPattern::parse(text) {
                Ok(pattern) => urls.push(pattern),
                Err(e) => cx.problem(&format!(".urls[{i}]"), format!("{text:?}: {e}")),
            }
        }
        let launch = read_launch_grant(
            ProcessGrantFile {
                programs: file.programs,
                working_directories: file.working_directories,
                inherit_environment: file.inherit_environment,
                request_environment: file.request_environment,
            },
            cx,
        );
        Ok(Some(Arc::new(McpGrant { launch, urls })))
    }

    fn not_granted(&self) -> &'static str {
        "no MCP servers: it cannot register, start or reach any"
    }

    fn widening(&self) -> &'static str {
        "a program (flagged), working directory, inherited variable or URL origin (flagged) added"
    }
}

impl Capability for Mcp {
    fn interfaces(&self) -> &'static [&'static str] {
        &["capbridge:host/mcp"]
    }

    fn summary(&self) -> &'static str {
        "register MCP servers (each approved by a person), start their transports and exchange \
         messages with them"
    }

    fn add_to_linker(&self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)
    }

    fn start(&self, host: &HostContext<'_>) -> Option<Arc<dyn Service>> {
        Some(McpService::new(
            host.events.clone(),
            host.approvals.clone(),
            &host.config.state_dir,
            host.own_files.clone(),
            host.audit.clone(),
        ))
    }
}

/// A server's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    PendingApproval,
    Disconnected,
    Connecting,
    Connected,
    Failed,
}

/// What the policy allows of a transport.
enum Allowed {
    /// The program, directory and environment a stdio server gets.
    Stdio(super::process::Checked),
    /// The URL, and whether its grant names a private address.
    Http { url: url::Url, private_ok: bool },
}

impl Allowed {
    /// The program's host path (stdio).
    fn program_path(&self) -> Option<String> {
        match self {
            Allowed::Stdio(checked) => Some(checked.program.display().to_string()),
            Allowed::Http { .. } => None,
        }
    }
}

/// A change waiting for a person.
#[derive(Clone)]
struct Pending {
    name: String,
    transport: Transport,
    program_path: Option<String>,
    request_id: String,
}

/// What the host knows of one server.
struct Server {
    /// What the person approved (`None` until the first approval).
    entry: Option<Entry>,
    pending: Option<Pending>,
    state: State,
    message: Option<String>,
    protocol_version: Option<String>,
    connected_at_ms: Option<u64>,
    failures: u32,
    retry_after_ms: Option<u64>,
    connection: Option<Arc<Connection>>,
    stderr: Arc<StderrLog>,
    created_at_ms: u64,
}

/// One live connection: its transport, the driver's inbox, the requests in flight.
struct Connection {
    /// `mcp/<component>/<id>/<n>`: what the driver's store is told it is.
    role: String,
    /// The server's id.
    server_id: String,
    link: Link,
    inbox: mpsc::Sender<Incoming>,
    inbox_rx: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    tickets: Mutex<HashMap<u64, Ticket>>,
    next_ticket: AtomicU64,
    /// `Some(Ok(version))` once the driver is ready, `Some(Err(why))` when it never will be.
    ready: watch::Sender<Option<Result<String, String>>>,
    driver: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// When `mcp.tools.changed` was last published for it: a server that says so in a loop
    /// reaches every session at most once per [`TOOLS_CHANGED_EVERY`].
    tools_changed_at: Mutex<Option<std::time::Instant>>,
}

struct Ticket {
    answer: oneshot::Sender<Result<String, GuestError>>,
    session: Option<u64>,
}

type Key = (String, String);

/// The host-wide state: the registry, the servers, their connections.
pub struct McpService {
    this: Weak<McpService>,
    events: EventBus,
    approvals: Approvals,
    audit: AuditLog,
    own_files: OwnFiles,
    registry: registry::Registry,
    servers: Mutex<BTreeMap<Key, Server>>,
    next_connection: AtomicU64,
}

impl McpService {
    fn new(
        events: EventBus,
        approvals: Approvals,
        state_dir: &std::path::Path,
        own_files: OwnFiles,
        audit: AuditLog,
    ) -> Arc<Self> {
        let (registry, entries) = registry::Registry::open(state_dir);
        let servers = entries
            .into_iter()
            .map(|entry| {
                let key = (entry.component.clone(), entry.id.clone());
                let server = Server::new(Some(entry), State::Disconnected);
                (key, server)
            })
            .collect();
        Arc::new_cyclic(|this| Self {
            this: this.clone(),
            events,
            approvals,
            audit,
            own_files,
            registry,
            servers: Mutex::new(servers),
            next_connection: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Server>> {
        self.servers.lock().expect("servers lock")
    }

    fn publish(&self, topic: &str, audience: Option<u64>, payload: serde_json::Value) {
        self.events.publish(Event::host(topic, payload, audience));
    }

    /// Every server of `component`.
    pub fn servers(&self, component: &str) -> Vec<GuestServer> {
        self.lock()
            .iter()
            .filter(|((c, _), _)| c == component)
            .map(|((_, id), s)| s.view(id))
            .collect()
    }

    fn get(&self, component: &str, id: &str) -> Result<GuestServer, GuestError> {
        let servers = self.lock();
        let server = servers
            .get(&key(component, id))
            .ok_or_else(|| not_found(id))?;
        Ok(server.view(id))
    }

    fn log(&self, component: &str, id: &str) -> Result<String, GuestError> {
        let servers = self.lock();
        let server = servers
            .get(&key(component, id))
            .ok_or_else(|| not_found(id))?;
        Ok(server.stderr.text())
    }

    /// Checks a transport against the policy, a stdio server with the variables it would get
    /// (`resolved`; none: its templates).
    fn check(
        &self,
        policy: &Policy,
        transport: &Transport,
        resolved: Option<&[(String, String)]>,
    ) -> Result<Allowed, GuestError> {
        let grant = policy.grant::<McpGrant>().ok_or_else(|| {
            GuestError::Denied(super::denial(
                &policy.component_id,
                "register MCP servers",
                "grants.mcp",
                &policy.source,
            ))
        })?;
        check_shape(transport)?;
        match transport {
            Transport::Stdio {
                program, cwd, env, ..
            } => {
                if grant.launch.programs.is_empty() {
                    return Err(GuestError::Denied(format!(
                        "`transport`: grants.mcp of {} names no programs: stdio servers are not \
                         allowed",
                        policy.source.display()
                    )));
                }
                let checked = check_launch(
                    &grant.launch,
                    "grants.mcp",
                    "transport",
                    program,
                    cwd.as_deref(),
                    env,
                    resolved.unwrap_or(env),
                    &self.own_files,
                    &policy.source,
                )
                .map_err(GuestError::from)?;
                Ok(Allowed::Stdio(checked))
            }
            Transport::Http { url, .. } => {
                let url = parse_url(url)?;
                let Some(pattern) = grant.urls.iter().find(|p| p.matches(&url)) else {
                    return Err(GuestError::Denied(format!(
                        "`transport.url`: {url} does not match grants.mcp.urls of {}",
                        policy.source.display()
                    )));
                };
                let private_ok = pattern.origin.names_private_address();
                Ok(Allowed::Http { url, private_ok })
            }
        }
    }

    /// Asks a person to approve a new server.
    fn register(
        &self,
        policy: &Policy,
        session: Option<u64>,
        id: String,
        name: String,
        transport: Transport,
    ) -> Result<GuestServer, GuestError> {
        check_id(&id)?;
        check_name(&name)?;
        let program_path = self.check(policy, &transport, None).map(|a| a.program_path()).inspect_err(|e| {
            tracing::warn!(target: "capbridge::audit", component = %policy.component_id, server = %id, "MCP server refused: {}", error_text(e));
            self.audit.record("mcp.refused", Some(&policy.component_id), None, Outcome::Denied, json!({ "server": id }));
        })?;
        let component = policy.component_id.clone();
        let mut servers = self.lock();
        if servers.contains_key(&key(&component, &id)) {
            return Err(GuestError::Conflict(format!(
                "an MCP server `{id}` is already registered (PATCH it, or DELETE it first)"
            )));
        }
        if servers.len() >= registry::MAX_SERVERS {
            return Err(GuestError::Unavailable(format!(
                "{} MCP servers are registered already; remove some first",
                registry::MAX_SERVERS
            )));
        }
        let request_id = self.ask(&component, session, &id, &transport, &program_path)?;
        let mut server = Server::new(None, State::PendingApproval);
        server.pending = Some(Pending {
            name,
            transport,
            program_path,
            request_id,
        });
        let view = server.view(&id);
        servers.insert(key(&component, &id), server);
        Ok(view)
    }

    /// Renames at once; asks a person about a new transport.
    fn update(
        &self,
        policy: &Policy,
        session: Option<u64>,
        id: String,
        name: Option<String>,
        transport: Option<Transport>,
    ) -> Result<GuestServer, GuestError> {
        if let Some(name) = &name {
            check_name(name)?;
        }
        let program_path = match &transport {
            Some(t) => self.check(policy, t, None)?.program_path(),
            None => None,
        };
        let component = policy.component_id.clone();
        let mut servers = self.lock();
        let server = servers
            .get_mut(&key(&component, &id))
            .ok_or_else(|| not_found(&id))?;
        let Some(entry) = server.entry.clone() else {
            return Err(GuestError::Conflict(format!(
                "MCP server `{id}` is waiting for its first approval; it can change once \
                 approved (or DELETE it and register again)"
            )));
        };
        if let Some(transport) = transport {
            // A new change replaces a waiting one; the approved transport again withdraws it.
            if let Some(old) = server.pending.take() {
                self.approvals.reject_where(|p| p.id == old.request_id);
            }
            if transport == entry.transport {
                return Ok(server.view(&id));
            }
            let request_id = self.ask(&component, session, &id, &transport, &program_path)?;
            server.pending = Some(Pending {
                name: name.clone().unwrap_or_else(|| entry.name.clone()),
                transport,
                program_path,
                request_id,
            });
        }
        if let Some(name) = name.filter(|n| *n != entry.name) {
            let mut renamed = entry;
            renamed.name = name;
            renamed.updated_at_ms = now_ms();
            server.entry = Some(renamed);
            self.save(&servers)?;
        }
        Ok(servers[&key(&component, &id)].view(&id))
    }

    /// Shows the prompt and waits for the answer in the background.
    fn ask(
        &self,
        component: &str,
        session: Option<u64>,
        id: &str,
        transport: &Transport,
        program_path: &Option<String>,
    ) -> Result<String, GuestError> {
        let (summary, cwd, url, env_names, header_names) = match transport {
            Transport::Stdio {
                program,
                args,
                cwd,
                env,
            } => (
                // Literal values are shown: `UV_INDEX_URL=…` changes what `uvx` installs.
                // Placeholders stay placeholders.
                env.iter()
                    .map(|(k, v)| {
                        format!("{}={} ", template::printable(k), template::display(v, &[]))
                    })
                    .chain(std::iter::once(template::display(program, args)))
                    .collect::<String>(),
                Some(template::printable(
                    cwd.as_deref().unwrap_or("(the first granted directory)"),
                )),
                None,
                env.iter().map(|(k, _)| template::printable(k)).collect(),
                Vec::new(),
            ),
            Transport::Http { url, headers } => (
                std::iter::once(template::printable(url))
                    .chain(headers.iter().map(|(k, v)| {
                        format!(" ({}: {})", template::printable(k), template::printable(v))
                    }))
                    .collect::<String>(),
                None,
                Some(template::printable(url)),
                Vec::new(),
                headers
                    .iter()
                    .map(|(k, _)| template::printable(k))
                    .collect(),
            ),
        };
        let prompt = Prompt {
            id: String::new(),
            kind: "mcp-server".into(),
            component: component.to_string(),
            session,
            run_id: None,
            server_id: Some(id.to_string()),
            summary,
            program_path: program_path.as_deref().map(template::printable),
            cwd,
            url,
            env_names,
            header_names,
            has_stdin: false,
            warnings: vec![
                "an approved MCP server runs as you, outside any sandbox, each time the web app \
                 connects to it"
                    .to_string(),
            ],
            whitelistable: false,
            created_at_ms: 0,
            expires_at_ms: 0,
        };
        let (prompt, answer) = self
            .approvals
            .ask(prompt)
            .map_err(|e| GuestError::Unavailable(e.to_string()))?;
        tracing::info!(target: "capbridge::audit", request = %prompt.id, component, ?session, server = id, summary = %prompt.summary, "approval asked");
        self.audit.record(
            "prompt.asked",
            Some(component),
            session,
            Outcome::Allowed,
            json!({ "request": prompt.id, "kind": "mcp-server", "server": id }),
        );
        self.publish(
            "system.permission.prompt",
            session,
            json!({ "prompt": prompt, "serverId": id }),
        );
        let this = self.this.clone();
        let (component, id, request) = (component.to_string(), id.to_string(), prompt.id.clone());
        tokio::spawn(async move {
            let answer = answer.await;
            if let Some(this) = this.upgrade() {
                this.decided(&component, &id, &request, session, answer);
            }
        });
        Ok(prompt.id)
    }

    /// Applies a person's answer to the change it was about (if still waiting).
    fn decided(
        &self,
        component: &str,
        id: &str,
        request: &str,
        session: Option<u64>,
        answer: crate::approvals::Answer,
    ) {
        let allowed = answer.decision != Decision::Reject;
        let mut servers = self.lock();
        let k = key(component, id);
        let Some(server) = servers.get_mut(&k) else {
            return;
        };
        let Some(pending) = server.pending.take_if(|p| p.request_id == request) else {
            return;
        };
        tracing::info!(target: "capbridge::audit", request, component, server = id, decision = answer.decision.as_str(), by = answer.by.as_str(), "approval decided");
        self.audit.record(
            "prompt.decided",
            Some(component),
            None,
            if answer.decision == Decision::Reject { Outcome::Denied } else { Outcome::Allowed },
            json!({ "request": request, "server": id, "decision": answer.decision.as_str(), "by": answer.by.as_str() }),
        );
        self.publish(
            "system.permission.decided",
            session,
            json!({
                "requestId": request,
                "serverId": id,
                "decision": answer.decision.as_str(),
                "decidedBy": answer.by.as_str(),
            }),
        );
        if !allowed {
            if server.entry.is_none() {
                servers.remove(&k);
            } else {
                server.message = Some(format!(
                    "the change of transport was rejected ({})",
                    answer.by.as_str()
                ));
            }
            return;
        }
        let now = now_ms();
        let previous = server.entry.clone();
        server.entry = Some(Entry {
            component: component.to_string(),
            id: id.to_string(),
            // A rename since the change was asked for stands.
            name: previous.as_ref().map_or(pending.name, |e| e.name.clone()),
            transport: pending.transport,
            program_path: pending.program_path,
            created_at_ms: previous
                .as_ref()
                .map_or(server.created_at_ms, |e| e.created_at_ms),
            updated_at_ms: now,
            approved_by: answer.by.as_str().to_string(),
        });
        if server.state == State::PendingApproval {
            server.state = State::Disconnected;
        }
        if let Err(e) = self.save(&servers) {
            let server = servers.get_mut(&k).expect("still there");
            server.entry = previous;
            server.message = Some(error_text(&e));
            if server.entry.is_none() {
                servers.remove(&k);
            }
        }
    }

    fn save(&self, servers: &BTreeMap<Key, Server>) -> Result<(), GuestError> {
        self.registry
            .save(servers.values().filter_map(|s| s.entry.as_ref()))
            .map_err(GuestError::Unavailable)
    }

    async fn remove(&self, component: &str, id: &str) -> Result<GuestServer, GuestError> {
        let (view, connection) = {
            let mut servers = self.lock();
            let k = key(component, id);
            let mut server = servers.remove(&k).ok_or_else(|| not_found(id))?;
            if let Err(e) = self.save(&servers) {
                servers.insert(k, server);
                return Err(e);
            }
            if let Some(pending) = &server.pending {
                self.approvals.reject_where(|p| p.id == pending.request_id);
            }
            let connection = server.connection.take();
            server.state = State::Disconnected;
            (server.view(id), connection)
        };
        if let Some(connection) = connection {
            self.publish("mcp.server.disconnected", None, json!({ "serverId": id }));
            connection.end().await;
        }
        Ok(view)
    }

    /// Starts the transport and the driver; waits for the handshake.
    async fn connect(
        &self,
        policy: &Policy,
        background: Option<&crate::runtime::Background>,
        id: &str,
        env: Vec<(String, String)>,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<GuestServer, GuestError> {
        let component = policy.component_id.as_str();
        let k = key(component, id);
        let background = background
            .ok_or_else(|| GuestError::Unavailable("this instance cannot start a driver".into()))?;
        let (connection, ready) = {
            let mut servers = self.lock();
            let server = servers.get_mut(&k).ok_or_else(|| not_found(id))?;
            let Some(entry) = server.entry.clone() else {
                return Err(GuestError::Conflict(format!(
                    "MCP server `{id}` is waiting for a person's approval"
                )));
            };
            match server.state {
                State::Connected => return Ok(server.view(id)),
                State::Connecting => {
                    return Err(GuestError::Conflict(format!(
                        "MCP server `{id}` is connecting already"
                    )))
                }
                _ => {}
            }
            if let Some(after) = server.retry_after_ms.filter(|t| *t > now_ms()) {
                return Err(GuestError::Unavailable(format!(
                    "MCP server `{id}` failed {} times in a row; connect again in {} ms",
                    server.failures,
                    after - now_ms()
                )));
            }
            // The policy may have changed since the approval: check again, with the values
            // given now.
            let resolved = match &entry.transport {
                Transport::Stdio { env: template, .. } => resolve("env", template, env)?,
                Transport::Http {
                    headers: template, ..
                } => resolve("headers", template, headers)?,
            };
            let allowed = self.check(policy, &entry.transport, Some(&resolved))?;
            // The file that starts is the one the person approved, whatever the resolved
            // variables (a PATH filled at connect) find.
            let program_path = allowed.program_path();
            if program_path != entry.program_path {
                return Err(GuestError::Denied(format!(
                    "`transport.program` now finds {}, not {} as approved: register it again",
                    program_path.unwrap_or_default(),
                    entry.program_path.unwrap_or_default()
                )));
            }
            let n = self.next_connection.fetch_add(1, Ordering::Relaxed);
            let role = format!("mcp/{component}/{id}/{n}");
            let (inbox, inbox_rx) = mpsc::channel(INBOX);
            let gone: transport::Gone = {
                let (this, k, role) = (self.this.clone(), k.clone(), role.clone());
                Arc::new(move |why| {
                    if let Some(this) = this.upgrade() {
                        this.fail(&k, &role, why);
                    }
                })
            };
            let link = match (allowed, &entry.transport) {
                (Allowed::Stdio(checked), Transport::Stdio { args, .. }) => {
                    server.stderr = Arc::new(StderrLog::default());
                    Link::stdio(
                        StdioLaunch {
                            program: checked.program,
                            args: args.clone(),
                            cwd: checked.cwd,
                            env: checked.env,
                        },
                        server.stderr.clone(),
                        inbox.clone(),
                        gone,
                    )
                }
                (Allowed::Http { url, private_ok }, _) => Link::http(
                    HttpTarget {
                        url,
                        headers: resolved,
                        private_ok,
                    },
                    inbox.clone(),
                    gone,
                ),
                (Allowed::Stdio(_), Transport::Http { .. }) => {
                    unreachable!("a stdio check is of a stdio transport")
                }
            }
            .map_err(|e| GuestError::Unavailable(format!("MCP server `{id}`: {e}")))?;
            let connection = Arc::new(Connection {
                role: role.clone(),
                server_id: id.to_string(),
                link,
                inbox,
                inbox_rx: tokio::sync::Mutex::new(inbox_rx),
                tickets: Mutex::new(HashMap::new()),
                next_ticket: AtomicU64::new(1),
                ready: watch::channel(None).0,
                driver: Mutex::new(None),
                tools_changed_at: Mutex::new(None),
            });
            let ready = connection.ready.subscribe();
            let driver = background
                .run(
                    DRIVE_EXPORT,
                    vec![
                        Val::String(id.to_string()),
                        Val::U64(timeout.as_millis() as u64),
                    ],
                    role.clone(),
                )
                .map_err(|e| {
                    GuestError::Unavailable(format!("cannot start the driver of `{id}`: {e}"))
                })?;
            let (this, k2, role2) = (self.this.clone(), k.clone(), role);
            *connection.driver.lock().expect("driver lock") = Some(tokio::spawn(async move {
                let ended = driver.await;
                if let Some(this) = this.upgrade() {
                    this.driver_ended(&k2, &role2, ended).await;
                }
            }));
            server.state = State::Connecting;
            server.message = None;
            server.connection = Some(connection.clone());
            tracing::info!(target: "capbridge::audit", component, server = id, pid = ?connection.link.pid(), "MCP server connecting");
            (connection, ready)
        };
        let mut ready = ready;
        let outcome = tokio::time::timeout(timeout, async {
            ready
                .wait_for(Option::is_some)
                .await
                .map(|state| state.clone())
        })
        .await;
        let failure = match outcome {
            Ok(Ok(state)) => state.expect("waited for Some").err(),
            Ok(Err(_)) => Some("the driver ended".to_string()),
            Err(_) => Some(format!(
                "the server did not finish its handshake within {} ms",
                timeout.as_millis()
            )),
        };
        // Ready at the last moment (after the timeout fired) still counts.
        let connected = self.lock().get(&k).is_some_and(|s| {
            s.state == State::Connected
                && s.connection
                    .as_ref()
                    .is_some_and(|c| c.role == connection.role)
        });
        if let (Some(why), false) = (failure, connected) {
            self.fail(&k, &connection.role, why.clone());
            connection.end().await;
            return Err(GuestError::Unavailable(format!(
                "MCP server `{id}` did not connect: {why}"
            )));
        }
        self.get(component, id)
    }

    /// Marks the server of `role` failed (it is gone, or its handshake failed) and fails every
    /// call waiting on it. Returns whether `role` was the current connection.
    fn fail(&self, k: &Key, role: &str, why: String) -> bool {
        let mut servers = self.lock();
        let Some(server) = servers.get_mut(k) else {
            return false;
        };
        let Some(connection) = server.connection.take_if(|c| c.role == role) else {
            return false;
        };
        server.state = State::Failed;
        server.failures += 1;
        server.protocol_version = None;
        server.connected_at_ms = None;
        let backoff =
            Duration::from_secs(1 << server.failures.saturating_sub(2).min(6)).min(MAX_BACKOFF);
        // The first failure may be retried at once; from the second on, with growing waits.
        server.retry_after_ms =
            (server.failures > 1).then(|| now_ms() + backoff.as_millis() as u64);
        server.message = Some(why.clone());
        drop(servers);
        tracing::warn!(target: "capbridge::audit", component = %k.0, server = %k.1, "MCP server failed: {why}");
        self.audit.record(
            "mcp.failed",
            Some(&k.0),
            None,
            Outcome::Failed,
            json!({ "server": k.1 }),
        );
        self.publish(
            "mcp.server.failed",
            None,
            json!({ "serverId": k.1, "message": why }),
        );
        connection.fail_tickets(&format!("MCP server `{}` failed: {why}", k.1));
        connection
            .ready
            .send_if_modified(|r| r.is_none().then(|| *r = Some(Err(why.clone()))).is_some());
        let connection = connection.clone();
        tokio::spawn(async move { connection.end().await });
        true
    }

    /// The driver returned (or trapped).
    async fn driver_ended(&self, k: &Key, role: &str, ended: crate::runtime::Ended) {
        let last = ended
            .stderr
            .lines()
            .rev()
            // Only the driver's own account of a failed handshake: other lines it wrote may
            // quote the server (its log messages), which may hold anything.
            .find_map(|l| l.split_once("handshake failed: "))
            .map(|(_, why)| {
                format!(
                    "handshake failed: {}",
                    why.chars().take(300).collect::<String>()
                )
            });
        let why = match (&ended.outcome, last) {
            (Err(trap), _) => format!("the driver stopped: {trap}"),
            (Ok(()), Some(line)) => line,
            (Ok(()), None) => "the driver ended".to_string(),
        };
        self.fail(k, role, why);
    }

    async fn disconnect(&self, component: &str, id: &str) -> Result<GuestServer, GuestError> {
        let (view, connection) = {
            let mut servers = self.lock();
            let server = servers
                .get_mut(&key(component, id))
                .ok_or_else(|| not_found(id))?;
            let connection = server.connection.take();
            if server.state != State::PendingApproval {
                server.state = State::Disconnected;
            }
            server.protocol_version = None;
            server.connected_at_ms = None;
            (server.view(id), connection)
        };
        if let Some(connection) = connection {
            tracing::info!(target: "capbridge::audit", component, server = id, "MCP server disconnected");
            self.audit.record(
                "mcp.disconnected",
                Some(component),
                None,
                Outcome::Allowed,
                json!({ "server": id }),
            );
            self.publish("mcp.server.disconnected", None, json!({ "serverId": id }));
            connection.fail_tickets(&format!("MCP server `{id}` was disconnected"));
            connection.end().await;
        }
        Ok(view)
    }

    /// The connection of `component`'s server `id`, while connected.
    fn connection(&self, component: &str, id: &str) -> Result<Arc<Connection>, GuestError> {
        let servers = self.lock();
        let server = servers
            .get(&key(component, id))
            .ok_or_else(|| not_found(id))?;
        match (&server.connection, server.state) {
            (Some(c), State::Connected) => Ok(c.clone()),
            (_, State::Failed) => Err(GuestError::Unavailable(format!(
                "MCP server `{id}` failed ({}); connect it again",
                server.message.as_deref().unwrap_or("no reason given")
            ))),
            (_, State::Connecting) => Err(GuestError::Unavailable(format!(
                "MCP server `{id}` is still connecting"
            ))),
            _ => Err(GuestError::Unavailable(format!(
                "MCP server `{id}` is not connected; connect it first"
            ))),
        }
    }

    /// The connection whose driver has `role`.
    fn driving(&self, role: Option<&str>) -> Result<Arc<Connection>, GuestError> {
        let not_driver =
            || GuestError::Denied("only the driver the host started may do this".to_string());
        let role = role.ok_or_else(not_driver)?;
        let servers = self.lock();
        servers
            .values()
            .filter_map(|s| s.connection.clone())
            .find(|c| c.role == role)
            .ok_or_else(not_driver)
    }

    fn ready(&self, role: &str, version: String, info: String) {
        let (k, connection) = {
            let mut servers = self.lock();
            let Some((k, server)) = servers
                .iter_mut()
                .find(|(_, s)| s.connection.as_ref().is_some_and(|c| c.role == role))
            else {
                return;
            };
            if server.state != State::Connecting {
                return;
            }
            server.state = State::Connected;
            server.failures = 0;
            server.retry_after_ms = None;
            server.protocol_version = Some(version.clone());
            server.connected_at_ms = Some(now_ms());
            (k.clone(), server.connection.clone().expect("found by it"))
        };
        // Goes to every session in an event: at most 64 KiB, like any event.
        let info: serde_json::Value = (info.len() <= super::events::MAX_PAYLOAD_BYTES)
            .then(|| serde_json::from_str(&info).ok())
            .flatten()
            .unwrap_or(serde_json::Value::Null);
        tracing::info!(target: "capbridge::audit", component = %k.0, server = %k.1, protocol = %version, "MCP server connected");
        self.audit.record(
            "mcp.connected",
            Some(&k.0),
            None,
            Outcome::Allowed,
            json!({ "server": k.1, "protocol": version }),
        );
        self.publish(
            "mcp.server.connected",
            None,
            json!({ "serverId": k.1, "protocolVersion": version, "serverInfo": info }),
        );
        connection.ready.send_replace(Some(Ok(version)));
    }
}

impl Connection {
    /// Hands `request` to the driver and waits for its answer.
    async fn submit(
        self: &Arc<Self>,
        request: String,
        session: Option<u64>,
        timeout: Duration,
    ) -> Result<String, GuestError> {
        let (answer, answered) = oneshot::channel();
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        {
            let mut tickets = self.tickets.lock().expect("tickets lock");
            if tickets.len() >= MAX_IN_FLIGHT {
                return Err(GuestError::Unavailable(format!(
                    "{MAX_IN_FLIGHT} requests are in flight to this server already"
                )));
            }
            tickets.insert(ticket, Ticket { answer, session });
        }
        // Tells the driver when this call goes away unanswered (its caller left, or it timed
        // out), so that it can tell the server.
        struct Abandon<'a>(&'a Arc<Connection>, u64);
        impl Drop for Abandon<'_> {
            fn drop(&mut self) {
                let was_waiting = self
                    .0
                    .tickets
                    .lock()
                    .expect("tickets lock")
                    .remove(&self.1)
                    .is_some();
                if was_waiting {
                    let inbox = self.0.inbox.clone();
                    let ticket = self.1;
                    if let Err(mpsc::error::TrySendError::Full(message)) =
                        inbox.try_send(Incoming::Abandoned(ticket))
                    {
                        tokio::spawn(async move { inbox.send(message).await });
                    }
                }
            }
        }
        let _abandon = Abandon(self, ticket);
        let ended = || GuestError::Unavailable("the server's driver has ended".into());
        let wait = async {
            let mut answered = answered;
            // A failure answers the ticket even while the request waits for room in the inbox.
            tokio::select! {
                sent = self.inbox.send(Incoming::Request(ticket, request)) => {
                    sent.map_err(|_| ended())?;
                }
                answer = &mut answered => return answer.unwrap_or_else(|_| Err(ended())),
            }
            answered.await.unwrap_or_else(|_| Err(ended()))
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| {
                Err(GuestError::Unavailable(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                )))
            })
    }

    fn fail_tickets(&self, why: &str) {
        let tickets: Vec<Ticket> = self
            .tickets
            .lock()
            .expect("tickets lock")
            .drain()
            .map(|(_, t)| t)
            .collect();
        for ticket in tickets {
            let _ = ticket
                .answer
                .send(Err(GuestError::Unavailable(why.to_string())));
        }
    }

    /// Stops the driver (asked first, ended after a grace period) and closes the transport.
    async fn end(&self) {
        // A `connect` still waiting for the handshake hears that it will not come.
        self.ready.send_if_modified(|r| {
            r.is_none()
                .then(|| *r = Some(Err("disconnected while connecting".into())))
                .is_some()
        });
        let _ = self.inbox.try_send(Incoming::Stop);
        let driver = self.driver.lock().expect("driver lock").take();
        if let Some(mut driver) = driver {
            if tokio::time::timeout(DRIVER_GRACE, &mut driver)
                .await
                .is_err()
            {
                driver.abort();
            }
        }
        self.link.close().await;
    }
}

impl Server {
    fn new(entry: Option<Entry>, state: State) -> Self {
        Self {
            created_at_ms: entry.as_ref().map_or_else(now_ms, |e| e.created_at_ms),
            entry,
            pending: None,
            state,
            message: None,
            protocol_version: None,
            connected_at_ms: None,
            failures: 0,
            retry_after_ms: None,
            connection: None,
            stderr: Arc::new(StderrLog::default()),
        }
    }

    fn view(&self, id: &str) -> GuestServer {
        let (name, transport, program_path, updated) = match (&self.entry, &self.pending) {
            (Some(e), _) => (
                e.name.clone(),
                e.transport.clone(),
                e.program_path.clone(),
                e.updated_at_ms,
            ),
            (None, Some(p)) => (
                p.name.clone(),
                p.transport.clone(),
                p.program_path.clone(),
                self.created_at_ms,
            ),
            (None, None) => unreachable!("a server is approved or waiting"),
        };
        GuestServer {
            id: id.to_string(),
            name,
            transport: transport.into(),
            state: match self.state {
                State::PendingApproval => GuestState::PendingApproval,
                State::Disconnected => GuestState::Disconnected,
                State::Connecting => GuestState::Connecting,
                State::Connected => GuestState::Connected,
                State::Failed => GuestState::Failed,
            },
            pending_change: self
                .pending
                .as_ref()
                .filter(|_| self.entry.is_some())
                .map(|p| p.transport.clone().into()),
            request_id: self.pending.as_ref().map(|p| p.request_id.clone()),
            message: self.message.clone(),
            program_path,
            protocol_version: self.protocol_version.clone(),
            created_at_ms: self.created_at_ms,
            updated_at_ms: updated,
            connected_at_ms: self.connected_at_ms,
            failures: self.failures,
            retry_after_ms: self.retry_after_ms.filter(|t| *t > now_ms()),
        }
    }
}

impl From<Transport> for GuestTransport {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Stdio {
                program,
                args,
                cwd,
                env,
            } => GuestTransport::Stdio(GuestStdio {
                program,
                args,
                cwd,
                env,
            }),
            Transport::Http { url, headers } => GuestTransport::Http(GuestHttp { url, headers }),
        }
    }
}

impl From<GuestTransport> for Transport {
    fn from(t: GuestTransport) -> Self {
        match t {
            GuestTransport::Stdio(s) => Transport::Stdio {
                program: s.program,
                args: s.args,
                cwd: s.cwd,
                env: s.env,
            },
            GuestTransport::Http(h) => Transport::Http {
                url: h.url,
                headers: h.headers,
            },
        }
    }
}

fn key(component: &str, id: &str) -> Key {
    (component.to_string(), id.to_string())
}

fn not_found(id: &str) -> GuestError {
    GuestError::NotFound(format!("no MCP server `{id}` is registered"))
}

fn error_text(e: &GuestError) -> String {
    match e {
        GuestError::Denied(m)
        | GuestError::InvalidArgument(m)
        | GuestError::Unavailable(m)
        | GuestError::NotFound(m)
        | GuestError::Conflict(m)
        | GuestError::TooLarge(m) => m.clone(),
    }
}

fn check_id(id: &str) -> Result<(), GuestError> {
    let ok = (1..=64).contains(&id.len())
        && id.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && (b == b'-' || b == b'_'))
        });
    if ok {
        Ok(())
    } else {
        Err(GuestError::InvalidArgument(format!(
            "`id` {:?} must be 1 to 64 of a-z, 0-9, `-`, `_`, starting with a letter or digit",
            template::printable(id)
        )))
    }
}

fn check_name(name: &str) -> Result<(), GuestError> {
    if name.trim().is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(GuestError::InvalidArgument(
            "`name` must be 1 to 200 characters, none of them control characters".into(),
        ));
    }
    Ok(())
}

/// Headers the transport sets itself (or that would change how the request travels).
const RESERVED_HEADERS: &[&str] = &[
    "accept",
    "connection",
    "content-length",
    "content-type",
    "host",
    "mcp-method",
    "mcp-name",
    "mcp-protocol-version",
    "mcp-session-id",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What no policy can allow: placeholders outside values, malformed names and URLs.
fn check_shape(transport: &Transport) -> Result<(), GuestError> {
    let invalid = |m: String| Err(GuestError::InvalidArgument(m));
    let mut names: Vec<String> = Vec::new();
    let pairs = match transport {
        Transport::Stdio {
            program,
            args,
            cwd,
            env,
        } => {
            for (field, text) in std::iter::once(("program".to_string(), program))
                .chain(
                    args.iter()
                        .enumerate()
                        .map(|(i, a)| (format!("args[{i}]"), a)),
                )
                .chain(cwd.iter().map(|c| ("cwd".to_string(), c)))
            {
                if text.contains('\0') {
                    return invalid(format!("`transport.{field}` contains a NUL byte"));
                }
                if template::has_placeholder(text) {
                    return invalid(format!(
                        "`transport.{field}` holds a secret placeholder; secrets may only be in \
                         `env` values"
                    ));
                }
            }
            for (name, _) in env {
                if !template::is_variable_name(name) {
                    return invalid(format!("`transport.env.{name}` is not a variable name"));
                }
            }
            ("env", env)
        }
        Transport::Http { url, headers } => {
            if template::has_placeholder(url) {
                return invalid(
                    "`transport.url` holds a secret placeholder; secrets may only be in \
                     `headers` values"
                        .into(),
                );
            }
            parse_url(url)?;
            for (name, _) in headers {
                let token = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !token {
                    return invalid(format!("`transport.headers.{name}` is not a header name"));
                }
                if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                    return invalid(format!(
                        "`transport.headers.{name}`: capbridge sets this header itself"
                    ));
                }
            }
            ("headers", headers)
        }
    };
    let (field, pairs) = pairs;
    for (name, value) in pairs {
        if value.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n') {
            return invalid(format!(
                "`transport.{field}.{name}` contains a NUL byte or a line break"
            ));
        }
        let lower = name.to_ascii_lowercase();
        if names.contains(&lower) {
            return invalid(format!("`transport.{field}.{name}` is set twice"));
        }
        names.push(lower);
    }
    Ok(())
}

fn parse_url(url: &str) -> Result<url::Url, GuestError> {
    let invalid = |m: &str| GuestError::InvalidArgument(format!("`transport.url` {m}"));
    if url.len() > 4096 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "must be at most 4096 bytes, with no spaces or control characters",
        ));
    }
    let parsed = url::Url::parse(url).map_err(|e| invalid(&format!("is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("must be http or https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "may not hold user info (put credentials in `headers`)",
        ));
    }
    if parsed.fragment().is_some() {
        return Err(invalid("may not have a fragment"));
    }
    if parsed.host_str().is_none() {
        return Err(invalid("has no host"));
    }
    Ok(parsed)
}

/// The resolved values of `template`'s entries: those given must fill their templates; those
/// not given must hold no placeholder.
fn resolve(
    field: &str,
    template: &[(String, String)],
    given: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, GuestError> {
    let invalid = |m: String| Err(GuestError::InvalidArgument(m));
    for (name, _) in &given {
        if !template.iter().any(|(t, _)| t == name) {
            return invalid(format!(
                "`{field}.{name}` is not in the approved entry (only its entries may be given)"
            ));
        }
    }
    let mut resolved = Vec::with_capacity(template.len());
    for (name, pattern) in template {
        let value = match given.iter().find(|(g, _)| g == name) {
            Some((_, value)) => {
                if value.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n') {
                    return invalid(format!(
                        "`{field}.{name}` contains a NUL byte or a line break"
                    ));
                }
                if !template::fills(pattern, value) {
                    return invalid(format!(
                        "`{field}.{name}` is not its approved template with the placeholders \
                         filled"
                    ));
                }
                value.clone()
            }
            None if template::has_placeholder(pattern) => {
                return invalid(format!(
                    "`{field}.{name}` holds a secret placeholder: give its value at connect"
                ))
            }
            None => pattern.clone(),
        };
        resolved.push((name.clone(), value));
    }
    Ok(resolved)
}

impl Service for McpService {
    fn end_session(&self, session: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Servers outlive sessions; a registration a session asked about is rejected.
            self.approvals
                .reject_where(|p| p.kind == "mcp-server" && p.session == Some(session));
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.approvals.reject_where(|p| p.kind == "mcp-server");
            let connections: Vec<Arc<Connection>> = self
                .lock()
                .values_mut()
                .filter_map(|s| {
                    s.state = State::Disconnected;
                    s.connection.take()
                })
                .collect();
            for connection in &connections {
                connection.fail_tickets("capbridge is stopping");
            }
            futures_util::future::join_all(connections.iter().map(|c| c.end())).await;
        })
    }
}

impl HostState {
    fn mcp(&self) -> wasmtime::Result<Arc<McpService>> {
        self.grants
            .services
            .get_arc::<McpService>()
            .ok_or_else(|| wasmtime::format_err!("the MCP service is not running"))
    }
}

impl Host for HostState {
    async fn servers(&mut self) -> wasmtime::Result<Vec<GuestServer>> {
        Ok(self.mcp()?.servers(&self.grants.policy.component_id))
    }

    async fn get_server(
        &mut self,
        id: String,
    ) -> wasmtime::Result<Result<GuestServer, GuestError>> {
        Ok(self.mcp()?.get(&self.grants.policy.component_id, &id))
    }

    async fn server_log(&mut self, id: String) -> wasmtime::Result<Result<String, GuestError>> {
        Ok(self.mcp()?.log(&self.grants.policy.component_id, &id))
    }

    async fn register(
        &mut self,
        id: String,
        name: String,
        transport: GuestTransport,
    ) -> wasmtime::Result<Result<GuestServer, GuestError>> {
        let service = self.mcp()?;
        Ok(service.register(
            &self.grants.policy,
            self.grants.session,
            id,
            name,
            transport.into(),
        ))
    }

    async fn update(
        &mut self,
        id: String,
        name: Option<String>,
        transport: Option<GuestTransport>,
    ) -> wasmtime::Result<Result<GuestServer, GuestError>> {
        let service = self.mcp()?;
        Ok(service.update(
            &self.grants.policy,
            self.grants.session,
            id,
            name,
            transport.map(Into::into),
        ))
    }

    async fn remove(&mut self, id: String) -> wasmtime::Result<Result<GuestServer, GuestError>> {
        let service = self.mcp()?;
        Ok(service.remove(&self.grants.policy.component_id, &id).await)
    }

    async fn connect(
        &mut self,
        id: String,
        env: Vec<(String, String)>,
        headers: Vec<(String, String)>,
        timeout_ms: u64,
    ) -> wasmtime::Result<Result<GuestServer, GuestError>> {
        let service = self.mcp()?;
        let timeout = Duration::from_millis(timeout_ms.clamp(1, MAX_SUBMIT.as_millis() as u64));
        Ok(service
            .connect(
                &self.grants.policy,
                self.grants.background.as_ref(),
                &id,
                env,
                headers,
                timeout,
            )
            .await)
    }

    async fn disconnect(
        &mut self,
        id: String,
    ) -> wasmtime::Result<Result<GuestServer, GuestError>> {
        let service = self.mcp()?;
        Ok(service
            .disconnect(&self.grants.policy.component_id, &id)
            .await)
    }

    async fn submit(
        &mut self,
        id: String,
        request: String,
        timeout_ms: u64,
    ) -> wasmtime::Result<Result<String, GuestError>> {
        if request.len() > MAX_MESSAGE_BYTES {
            return Ok(Err(GuestError::TooLarge(format!(
                "the request is larger than {} MiB",
                MAX_MESSAGE_BYTES >> 20
            ))));
        }
        let connection = match self
            .mcp()?
            .connection(&self.grants.policy.component_id, &id)
        {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let timeout = Duration::from_millis(timeout_ms).min(MAX_SUBMIT);
        Ok(connection
            .submit(request, self.grants.session, timeout)
            .await)
    }

    async fn next(&mut self, wait_ms: u32) -> wasmtime::Result<Result<GuestIncoming, GuestError>> {
        let connection = match self.mcp()?.driving(self.grants.role.as_deref()) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let mut inbox = connection.inbox_rx.lock().await;
        let wait = Duration::from_millis(u64::from(wait_ms));
        let incoming = match tokio::time::timeout(wait, inbox.recv()).await {
            Err(_) => GuestIncoming::Idle,
            Ok(None) => GuestIncoming::Stop,
            Ok(Some(incoming)) => match incoming {
                Incoming::Message(m) => GuestIncoming::Message(m),
                Incoming::Refused(id, why) => GuestIncoming::Refused((id, why)),
                Incoming::Undelivered(id, why) => GuestIncoming::Undelivered((id, why)),
                Incoming::Closed(why) => GuestIncoming::Closed(why),
                Incoming::Request(ticket, request) => GuestIncoming::Request((ticket, request)),
                Incoming::Abandoned(ticket) => GuestIncoming::Abandoned(ticket),
                Incoming::Stop => GuestIncoming::Stop,
            },
        };
        Ok(Ok(incoming))
    }

    async fn send(
        &mut self,
        message: String,
        protocol_version: Option<String>,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        let connection = match self.mcp()?.driving(self.grants.role.as_deref()) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        Ok(connection
            .link
            .send(message, protocol_version)
            .await
            .map_err(GuestError::Unavailable))
    }

    async fn answer(
        &mut self,
        ticket: u64,
        outcome: Result<String, GuestError>,
    ) -> wasmtime::Result<()> {
        if let Ok(connection) = self.mcp()?.driving(self.grants.role.as_deref()) {
            let waiting = connection
                .tickets
                .lock()
                .expect("tickets lock")
                .remove(&ticket);
            if let Some(waiting) = waiting {
                let _ = waiting.answer.send(outcome);
            }
        }
        Ok(())
    }

    async fn progress(&mut self, ticket: u64, payload: String) -> wasmtime::Result<()> {
        let service = self.mcp()?;
        let Ok(connection) = service.driving(self.grants.role.as_deref()) else {
            return Ok(());
        };
        let Some(session) = connection
            .tickets
            .lock()
            .expect("tickets lock")
            .get(&ticket)
            .map(|t| t.session)
        else {
            return Ok(());
        };
        // An event like any component's: a JSON object of at most 64 KiB, else nothing is sent.
        if payload.len() > super::events::MAX_PAYLOAD_BYTES {
            return Ok(());
        }
        let Ok(serde_json::Value::Object(mut payload)) = serde_json::from_str(&payload) else {
            return Ok(());
        };
        payload.insert("serverId".into(), connection.server_id.clone().into());
        // Progress is the calling session's; outside a session (CLI, tests) it reaches everyone.
        service.publish("mcp.call.progress", session, payload.into());
        Ok(())
    }

    async fn ready(
        &mut self,
        protocol_version: String,
        server_info: String,
    ) -> wasmtime::Result<()> {
        let service = self.mcp()?;
        if let Some(role) = self.grants.role.clone() {
            service.ready(&role, protocol_version, server_info);
        }
        Ok(())
    }

    async fn tools_changed(&mut self) -> wasmtime::Result<()> {
        let service = self.mcp()?;
        let Ok(connection) = service.driving(self.grants.role.as_deref()) else {
            return Ok(());
        };
        let due = {
            let mut last = connection.tools_changed_at.lock().expect("tools lock");
            let now = std::time::Instant::now();
            let due = last.is_none_or(|at| now.duration_since(at) >= TOOLS_CHANGED_EVERY);
            if due {
                *last = Some(now);
            }
            due
        };
        if due {
            let id = &connection.server_id;
            service.publish("mcp.tools.changed", None, json!({ "serverId": id }));
        }
        Ok(())
    }
}
