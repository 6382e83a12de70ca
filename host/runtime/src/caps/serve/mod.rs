//! `grants.serve`: a component answers HTTP under `/plugins/<id>/` — routes (webhooks, OAuth
//! callbacks, small APIs) handled by its `capbridge:host/route-handler` export, and a static web
//! UI from its own directory (seed 004, ADR 0010).
//!
//! This unit owns what the policy declares and who may do what: the routes and the web UI as
//! read and checked at load, the match of a request to its route, the files a web request may
//! read, the rate limit of open routes, and the launch links and UI sessions an `owner` web UI
//! is opened with. The HTTP side (hosts, headers, the injected script, the dev proxy) is the
//! API's `plugins` module.

pub mod path;
pub mod web;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use capbridge_policy::{ExplainLine, Grant, GrantContext, GrantKind, Policy};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use serde::Deserialize;
use wasmtime::component::Linker;

use super::{Capability, ComponentFacts, HostContext, Service};
use crate::state::HostState;
pub use path::{Pattern, RouteMatch};

/// The export that handles routes, as `Runtime::call` names it.
pub const HANDLER: &str = "route-handler.handle";
/// Requests a minute an open (`none` or `verify`) route of one component takes, all its open
/// routes together.
pub const OPEN_ROUTES_PER_MINUTE: u32 = 100;
/// Most route calls of one component running at once (each is an instance with the policy's
/// memory); more wait for a slot.
pub const ROUTE_CALLS_AT_ONCE: usize = 16;
/// Longest a route handler may run; a policy's `limits.deadline-ms` may make it shorter.
pub const ROUTE_DEADLINE: Duration = Duration::from_secs(30);
/// How long a launch link works, once.
pub const LAUNCH_LINK_TTL: Duration = Duration::from_secs(60);
/// How long a web UI opened with a launch link stays signed in (the cookie is a session cookie
/// as well: it ends with the browser, or with capbridge).
pub const UI_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Default and largest request body a route takes.
const DEFAULT_BODY_KIB: u64 = 1024;
const MAX_BODY_KIB: u64 = 32 * 1024;
/// Longest component id that can be a host name label (`<id>.localhost`).
const MAX_LABEL: usize = 63;

/// The capability: `grants.serve`.
pub struct Serve;

/// Who may call a route or open the web UI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// Open to any program on this machine (rate-limited); no check.
    None,
    /// Open like `none`; the component checks the request itself (a webhook signature).
    Verify,
    /// Only the web app's session (its token header, from an allowed origin) or the
    /// component's own web UI opened with a launch link.
    Owner,
}

impl Auth {
    pub fn name(self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::Verify => "verify",
            Auth::Owner => "owner",
        }
    }
}

/// `grants.serve` as written.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeGrantFile {
    /// Routes handled by the component's `route-handler.handle` export.
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    /// A static web UI from the component's own directory.
    #[serde(default)]
    pub web: Option<WebFile>,
    /// Largest request body a route takes, in KiB (default 1024, at most 32768); larger is 413.
    #[serde(default = "default_body_kib")]
    #[schemars(range(min = 1, max = 32768))]
    pub max_body_kib: u64,
    /// Refused: capbridge is loopback only (also read as seed 004's `tunnel_exposed`, to say so).
    #[serde(default, alias = "tunnel_exposed")]
    #[schemars(skip)]
    pub tunnel_exposed: Option<toml::Value>,
}

fn default_body_kib() -> u64 {
    DEFAULT_BODY_KIB
}

/// One route as written.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RouteFile {
    /// Passed to the handler as `route-id`; unique in the policy.
    #[schemars(regex(pattern = r"^[a-z0-9_-]{1,64}$"))]
    pub id: String,
    /// Under `/plugins/<id>`: literal segments, `:name` (one segment), `*` last (the rest).
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE`, `OPTIONS`; GET answers HEAD too.
    pub methods: Vec<String>,
    pub auth: Auth,
    #[serde(default)]
    pub description: String,
    /// Also accept requests that web pages of other origins send (a form post from any site).
    /// Off: a request whose `Origin` is present and not the component's own is refused.
    #[serde(default)]
    pub cross_site: bool,
    /// Refused: capbridge is loopback only (also read as seed 004's `tunnel_exposed`, to say so).
    #[serde(default, alias = "tunnel_exposed")]
    #[schemars(skip)]
    pub tunnel_exposed: Option<toml::Value>,
}

/// The web UI as written.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WebFile {
    /// The directory served, under `components/<id>/` (default `web`).
    #[serde(default = "default_dir")]
    pub dir: String,
    /// The file answered for the mount itself and for any path with no file (SPA fallback).
    #[serde(default = "default_entry")]
    pub entry: String,
    /// Where it is served under `/plugins/<id>` (default `/ui`).
    #[serde(default = "default_mount")]
    pub mount: String,
    pub auth: Auth,
    /// Where the page's routes are, for the injected `window.__capbridge.apiUrl` (default `/api`).
    #[serde(default = "default_api_mount")]
    pub api_mount: String,
    /// Refused: capbridge is loopback only (also read as seed 004's `tunnel_exposed`, to say so).
    #[serde(default, alias = "tunnel_exposed")]
    #[schemars(skip)]
    pub tunnel_exposed: Option<toml::Value>,
}

fn default_dir() -> String {
    "web".into()
}
fn default_entry() -> String {
    "index.html".into()
}
fn default_mount() -> String {
    "/ui".into()
}
fn default_api_mount() -> String {
    "/api".into()
}

/// `grants.serve` as read: what the component answers.
#[derive(Debug, Clone)]
pub struct ServeGrant {
    pub component: String,
    pub routes: Vec<Route>,
    pub web: Option<WebUi>,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub id: String,
    pub pattern: Pattern,
    /// Uppercase.
    pub methods: Vec<String>,
    pub auth: Auth,
    pub description: String,
    pub cross_site: bool,
}

impl Route {
    pub fn takes(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m == method)
    }
}

#[derive(Debug, Clone)]
pub struct WebUi {
    /// Relative to `components/<id>/`.
    pub dir: PathBuf,
    pub entry: PathBuf,
    pub mount: Pattern,
    pub auth: Auth,
    pub api_mount: String,
}

impl ServeGrant {
    /// The route for `method` on `path` (decoded segments under `/plugins/<id>`).
    pub fn find(&self, method: &str, path: &[String]) -> RouteMatch<'_> {
        path::find(&self.routes, method, path)
    }

    /// The part of `path` under the web mount, when it is there.
    pub fn under_web(&self, path: &[String]) -> Option<&WebUi> {
        self.web.as_ref().filter(|web| web.mount.contains(path))
    }

    /// Where the web UI is on the component's own host, `/plugins/<id><mount>` (no trailing
    /// `/`), when there is one.
    pub fn web_path(&self) -> Option<String> {
        let web = self.web.as_ref()?;
        Some(format!(
            "/plugins/{}{}",
            self.component,
            web.mount.text.trim_end_matches('/')
        ))
    }
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

impl Grant for ServeGrant {
    fn scope(&self) -> Option<String> {
        let mut parts: Vec<String> = self
            .routes
            .iter()
            .map(|r| {
                format!(
                    "{} {} ({})",
                    r.methods.join("|"),
                    r.pattern.text,
                    r.auth.name()
                )
            })
            .collect();
        if let Some(web) = &self.web {
            parts.push(format!("web {} ({})", web.mount.text, web.auth.name()));
        }
        Some(parts.join(", "))
    }

    fn explain(&self, _policy: &Policy) -> Vec<ExplainLine> {
        let id = &self.component;
        let mut lines: Vec<ExplainLine> = self
            .routes
            .iter()
            .map(|route| {
                let what = format!(
                    "Answers {} /plugins/{id}{} (route `{}`{}), auth `{}`",
                    route.methods.join(", "),
                    route.pattern.text,
                    route.id,
                    if route.description.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", route.description)
                    },
                    route.auth.name()
                );
                let open = match route.auth {
                    Auth::Owner => None,
                    Auth::Verify => Some(
                        "any program on this machine can call it (100 requests a minute); the \
                         component must check each request itself",
                    ),
                    Auth::None => Some(
                        "any program on this machine can call it with no check at all (100 \
                         requests a minute)",
                    ),
                };
                let risk = match (open, route.cross_site) {
                    (None, _) => None,
                    (Some(open), false) => Some(open.to_string()),
                    (Some(open), true) => Some(format!(
                        "{open}; `cross-site = true`: any web page the person visits can send \
                         requests to it too"
                    )),
                };
                let text = match route.auth {
                    Auth::Owner => format!(
                        "{what}: only with a contract session (the web app's, or a local \
                         program's that handshook) or from this component's own web UI."
                    ),
                    _ => format!("{what}."),
                };
                ExplainLine::risky(text, risk)
            })
            .collect();
        if self.max_body_bytes != (DEFAULT_BODY_KIB << 10) as usize {
            lines.push(ExplainLine::plain(format!(
                "Takes request bodies of up to {} KiB (`max-body-kib`).",
                self.max_body_bytes >> 10
            )));
        }
        if let (Some(web), Some(path)) = (&self.web, self.web_path()) {
            let text = format!(
                "Serves the files of components/{id}/{} as a web UI at \
                 http://{id}.localhost:<port>{path} (entry {}), auth `{}`.",
                web.dir.display(),
                web.entry.display(),
                web.auth.name()
            );
            let risk = (web.auth != Auth::Owner).then(|| {
                "any program on this machine can read every file of that directory".to_string()
            });
            lines.push(ExplainLine::risky(text, risk));
        }
        lines
    }
}

impl GrantKind for Serve {
    fn key(&self) -> &'static str {
        "serve"
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        super::described_schema::<ServeGrantFile>(
            generator,
            "HTTP the component answers under /plugins/<id>/: routes handled by its \
             `capbridge:host/route-handler` export, and a static web UI.",
        )
    }

    fn parse(
        &self,
        value: toml::Value,
        cx: &mut GrantContext<'_>,
    ) -> Result<Option<Arc<dyn Grant>>, toml::de::Error> {
        let file: ServeGrantFile = capbridge_policy::read_grant(value)?;
        Ok(read_grant(file, cx).map(|grant| Arc::new(grant) as Arc<dyn Grant>))
    }

    fn not_granted(&self) -> &'static str {
        "no HTTP: it answers no route and serves no web UI"
    }

    fn widening(&self) -> &'static str {
        "a route or a web UI added or changed (one with auth `none` or `verify`, or `cross-site = true`, flagged)"
    }
}

const LOOPBACK_ONLY: &str = "capbridge listens on loopback only and exposes nothing beyond this \
                             machine: remove `tunnel-exposed`";

fn read_grant(file: ServeGrantFile, cx: &mut GrantContext<'_>) -> Option<ServeGrant> {
    let component = cx.component_id().to_string();
    if file.tunnel_exposed.is_some() {
        cx.problem(".tunnel-exposed", LOOPBACK_ONLY);
    }
    if !(1..=MAX_BODY_KIB).contains(&file.max_body_kib) {
        cx.problem(
            ".max-body-kib",
            format!("must be 1 to {MAX_BODY_KIB}, not {}", file.max_body_kib),
        );
    }
    let mut routes: Vec<Route> = Vec::new();
    for (i, route) in file.routes.into_iter().enumerate() {
        let at = format!(".routes[{i}]");
        if route.tunnel_exposed.is_some() {
            cx.problem(&format!("{at}.tunnel-exposed"), LOOPBACK_ONLY);
        }
        let valid_id = !route.id.is_empty()
            && route.id.len() <= 64
            && route
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid_id {
            cx.problem(
                &format!("{at}.id"),
                format!(
                    "{:?} is not a route id (lowercase letters, digits, `-` and `_`)",
                    route.id
                ),
            );
        } else if routes.iter().any(|r| r.id == route.id) {
            cx.problem(
                &format!("{at}.id"),
                format!("{:?} is declared twice", route.id),
            );
        }
        let pattern = match Pattern::parse(&route.path) {
            Ok(pattern) => pattern,
            Err(e) => {
                cx.problem(&format!("{at}.path"), e);
                continue;
            }
        };
        if route.methods.is_empty() {
            cx.problem(
                &format!("{at}.methods"),
                "is empty: name the methods it takes",
            );
        }
        let mut methods = Vec::new();
        for method in &route.methods {
            let upper = method.to_ascii_uppercase();
            if !METHODS.contains(&upper.as_str()) {
                cx.problem(
                    &format!("{at}.methods"),
                    format!("{method:?} is not one of {}", METHODS.join(", ")),
                );
            } else if !methods.contains(&upper) {
                methods.push(upper);
            }
        }
        if route.cross_site && route.auth == Auth::Owner {
            cx.problem(
                &format!("{at}.cross-site"),
                "applies to `none` and `verify` routes only: an `owner` route never takes a \
                 request from another origin's page",
            );
        }
        routes.push(Route {
            id: route.id,
            pattern,
            methods,
            auth: route.auth,
            description: route.description,
            cross_site: route.cross_site,
        });
    }
    let web = file.web.and_then(|web| {
        if web.tunnel_exposed.is_some() {
            cx.problem(".web.tunnel-exposed", LOOPBACK_ONLY);
        }
        for (key, value) in [("dir", &web.dir), ("entry", &web.entry)] {
            let relative = Path::new(value);
            let plain = !value.is_empty()
                && relative.is_relative()
                && relative
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
                && !value.split('/').any(|part| part.starts_with('.'));
            if !plain {
                cx.problem(
                    &format!(".web.{key}"),
                    format!(
                        "{value:?} must be a relative path inside components/{component}/, \
                         without `..` or hidden names"
                    ),
                );
                return None;
            }
        }
        let mount = match Pattern::parse(&web.mount) {
            Ok(mount) if mount.tier() == 0 => mount,
            Ok(_) => {
                cx.problem(
                    ".web.mount",
                    "must be literal segments (no `:name`, no `*`)",
                );
                return None;
            }
            Err(e) => {
                cx.problem(".web.mount", e);
                return None;
            }
        };
        if let Err(e) = Pattern::parse(&web.api_mount) {
            cx.problem(".web.api-mount", e);
        }
        if component.len() > MAX_LABEL {
            cx.problem(
                ".web",
                format!(
                    "the component id is longer than {MAX_LABEL} characters, too long for its \
                     web UI's host name {component}.localhost"
                ),
            );
        }
        Some(WebUi {
            dir: PathBuf::from(web.dir),
            entry: PathBuf::from(web.entry),
            mount,
            auth: web.auth,
            api_mount: web.api_mount,
        })
    });
    if let Some(web) = &web {
        for (i, route) in routes.iter().enumerate() {
            if route.pattern.reaches_under(&web.mount) {
                cx.problem(
                    &format!(".routes[{i}].path"),
                    format!(
                        "component `{component}` declares route `{}` ('{}') under web mount \
                         '{}'; the static web branch would shadow this route. Move the route \
                         outside the web mount or remove the web mount overlap.",
                        route.id, route.pattern.text, web.mount.text
                    ),
                );
            }
        }
    }
    if routes.is_empty() && web.is_none() {
        cx.problem("", "declares neither routes nor a web UI");
        return None;
    }
    Some(ServeGrant {
        component,
        routes,
        web,
        max_body_bytes: (file.max_body_kib.clamp(1, MAX_BODY_KIB) << 10) as usize,
    })
}

impl Capability for Serve {
    fn interfaces(&self) -> &'static [&'static str] {
        &[]
    }

    fn summary(&self) -> &'static str {
        "answer the declared routes under /plugins/<id>/ (its `route-handler` export is called \
         for each) and serve a static web UI from its own directory on its own origin"
    }

    fn add_to_linker(&self, _linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        // Nothing to import: the host calls the component's export.
        Ok(())
    }

    fn start(&self, host: &HostContext<'_>) -> Option<Arc<dyn Service>> {
        Some(Arc::new(ServeService::new(
            host.config.components_dir.clone(),
        )))
    }

    fn check_component(&self, policy: &Policy, facts: &ComponentFacts<'_>) -> Result<(), String> {
        let Some(grant) = policy.grant::<ServeGrant>() else {
            return Ok(());
        };
        if !grant.routes.is_empty() && !facts.exports.iter().any(|e| e == HANDLER) {
            return Err(
                "it declares routes but does not export `capbridge:host/route-handler` \
                        (`handle`), which answers them; export it, or remove the routes (a \
                        `wasi:http/incoming-handler` export is not supported: see \
                        docs/components.md)"
                    .to_string(),
            );
        }
        if let Some(web) = &grant.web {
            let Some(root) = web::root_within(facts.dir, &web.dir) else {
                return Err(format!(
                    "its web UI's directory {} does not exist or is not inside {}",
                    facts.dir.join(&web.dir).display(),
                    facts.dir.display()
                ));
            };
            if !matches!(web::within(&root, &web.entry), web::StaticFile::Found(_)) {
                return Err(format!(
                    "its web UI's entry {} is not a file inside {}",
                    web.entry.display(),
                    root.display()
                ));
            }
        }
        Ok(())
    }
}

/// What the served components answer, the open routes' rate limits, and the launch links and
/// UI sessions of `owner` web UIs.
pub struct ServeService {
    components_dir: PathBuf,
    served: RwLock<BTreeMap<String, Arc<ServeGrant>>>,
    limits: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Launch code → (component, until).
    launches: Mutex<HashMap<String, (String, Instant)>>,
    /// UI session secret → (component, until).
    ui_sessions: Mutex<HashMap<String, (String, Instant)>>,
}

impl ServeService {
    fn new(components_dir: PathBuf) -> Self {
        Self {
            components_dir,
            served: Default::default(),
            limits: Default::default(),
            slots: Default::default(),
            launches: Default::default(),
            ui_sessions: Default::default(),
        }
    }

    /// What `component` answers, when it is loaded with `grants.serve`.
    pub fn served(&self, component: &str) -> Option<Arc<ServeGrant>> {
        read(&self.served).get(component).cloned()
    }

    /// The directory of `component`'s web UI, symlinks resolved; `None` when it is not inside
    /// `components/<id>/` (nothing is served then).
    pub fn web_root(&self, component: &str, web: &WebUi) -> Option<PathBuf> {
        web::root_within(&self.components_dir.join(component), &web.dir)
    }

    /// What bounds how many route calls of `component` run at once.
    pub fn route_slots(&self, component: &str) -> Arc<tokio::sync::Semaphore> {
        lock(&self.slots)
            .entry(component.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(ROUTE_CALLS_AT_ONCE)))
            .clone()
    }

    /// Admits one request to an open route of `component`, or says how long until one is.
    pub fn admit(&self, component: &str) -> Result<(), Duration> {
        let limiter = lock(&self.limits)
            .entry(component.to_string())
            .or_insert_with(|| {
                let quota = Quota::per_minute(
                    NonZeroU32::new(OPEN_ROUTES_PER_MINUTE).expect("a positive quota"),
                );
                Arc::new(governor::RateLimiter::direct(quota))
            })
            .clone();
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// A one-time code opening `component`'s web UI, valid for [`LAUNCH_LINK_TTL`].
    pub fn launch_code(&self, component: &str) -> Result<String, String> {
        let grant = self
            .served(component)
            .ok_or_else(|| format!("no loaded component `{component}` serves anything"))?;
        if grant.web.is_none() {
            return Err(format!("component `{component}` has no web UI"));
        }
        let code = secret()?;
        let now = Instant::now();
        let mut launches = lock(&self.launches);
        launches.retain(|_, (_, until)| *until > now);
        launches.insert(code.clone(), (component.to_string(), now + LAUNCH_LINK_TTL));
        Ok(code)
    }

    /// Exchanges a launch code of `component` for a UI session secret; a code works once, for
    /// its own component, before it expires.
    pub fn redeem(&self, component: &str, code: &str) -> Option<String> {
        let (owner, until) = lock(&self.launches).remove(code)?;
        if owner != component || until <= Instant::now() {
            return None;
        }
        let secret = secret().ok()?;
        let now = Instant::now();
        let mut sessions = lock(&self.ui_sessions);
        sessions.retain(|_, (_, until)| *until > now);
        sessions.insert(
            secret.clone(),
            (component.to_string(), now + UI_SESSION_TTL),
        );
        Some(secret)
    }

    /// Whether `secret` is a live UI session of `component`.
    pub fn ui_session(&self, component: &str, secret: &str) -> bool {
        lock(&self.ui_sessions)
            .get(secret)
            .is_some_and(|(owner, until)| owner == component && *until > Instant::now())
    }
}

impl Service for ServeService {
    fn loaded(&self, policies: &[&Policy]) {
        let served: BTreeMap<String, Arc<ServeGrant>> = policies
            .iter()
            .filter_map(|policy| {
                let grant = policy.grant::<ServeGrant>()?;
                Some((policy.component_id.clone(), Arc::new(grant.clone())))
            })
            .collect();
        // A component gone or reloaded without a web UI keeps no way in.
        lock(&self.ui_sessions)
            .retain(|_, (id, _)| served.get(id).is_some_and(|g| g.web.is_some()));
        lock(&self.launches).retain(|_, (id, _)| served.contains_key(id));
        *self.served.write().unwrap_or_else(|p| p.into_inner()) = served;
    }
}

/// 256 random bits, base64url.
fn secret() -> Result<String, String> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}
