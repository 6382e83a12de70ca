//! capbridge's localhost contract (seed 000, "OS Loop bridge"): the HTTP + WebSocket server a
//! web app discovers on 127.0.0.1 and trusts with a session token.
//!
//! Request path, outermost first: connection log → components' `/plugins` and own hosts
//! (`plugins`) → uniform JSON errors → `Host`/`Origin` checks
//! → CORS (allowed origins only) → body limit → request timeout → session check → handler.

pub mod config;
pub mod connlog;
pub mod error;
mod listener;
pub mod openapi;
pub mod plugins;
#[cfg(test)]
mod router_tests;
mod routes;
pub mod security;
pub mod session;
#[cfg(test)]
mod testing;
pub mod tray;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::Router;
use capbridge_runtime::Event;
use capbridge_runtime::Runtime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutLayer;

pub use config::{BridgeConfig, Mode, DEFAULT_PORT};
pub use routes::commands::Registry;
pub use routes::{routes, MODULES};

/// The contract version this bridge speaks.
/// How long in-flight requests get to finish when capbridge stops before they are cancelled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub const PROTOCOL_VERSION: &str = "osloop.bridge.v1";
/// This build's version.
pub const APP_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Event `source` of the bridge's own events.
pub const BRIDGE_SOURCE: &str = capbridge_runtime::caps::events::HOST_SOURCE;

/// State every handler shares.
pub struct Shared {
    pub runtime: Arc<Runtime>,
    pub config: BridgeConfig,
    pub config_path: Option<PathBuf>,
    /// The port actually bound (differs from `config.port` for a one-run override).
    pub port: u16,
    /// `Host` values accepted: the loopback names with the bound port.
    pub hosts: [String; 2],
    /// `Origin` values accepted, exactly as browsers send them.
    pub origins: Vec<String>,
    pub sessions: session::Sessions,
    pub connections: connlog::ConnectionLog,
    /// The command registry and the runtime generation it was built from.
    commands: std::sync::Mutex<(u64, Arc<Registry>)>,
    pub started: SystemTime,
    shutdown: watch::Sender<bool>,
    /// The event sockets' tasks, so shutdown can wait for their goodbyes.
    sockets: TaskTracker,
    /// The desktop shell's tray (`None` headless).
    pub tray: Option<watch::Receiver<tray::TrayState>>,
}

impl Shared {
    /// The state of a bridge answering on `port` (the router alone needs no socket: see
    /// [`router`]).
    pub fn new(
        runtime: Arc<Runtime>,
        config: BridgeConfig,
        port: u16,
        config_path: Option<PathBuf>,
        tray: Option<watch::Receiver<tray::TrayState>>,
    ) -> anyhow::Result<Arc<Self>> {
        config.validate()?;
        config.check_bound_port(port)?;
        Ok(Arc::new(Shared {
            commands: std::sync::Mutex::new((
                runtime.generation(),
                Arc::new(Registry::new(&runtime)),
            )),
            runtime,
            origins: config.allowed_origins(),
            hosts: security::allowed_hosts(port),
            port,
            sessions: session::Sessions::new(config.session_ttl()),
            connections: connlog::ConnectionLog::default(),
            config_path,
            config,
            started: SystemTime::now(),
            shutdown: watch::channel(false).0,
            sockets: TaskTracker::new(),
            tray,
        }))
    }

    /// The command registry of the components loaded now (rebuilt after a reload).
    pub fn commands(&self) -> Arc<Registry> {
        let mut commands = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.runtime.generation();
        if commands.0 != generation {
            *commands = (generation, Arc::new(Registry::new(&self.runtime)));
        }
        commands.1.clone()
    }

    /// Whether `origin` (as a browser sends it in `Origin`) may use the contract.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.origins.iter().any(|allowed| allowed == origin)
    }

    /// Publishes one of the bridge's own events (`bridge.*`) on the bus components use too.
    pub fn publish(&self, topic: &str, payload: serde_json::Value) {
        self.runtime
            .events()
            .publish(Event::host(topic, payload, None));
    }
}

/// Why the listening port could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "port {port} on 127.0.0.1 is already in use (another capbridge, or another program). \
         capbridge never moves to another port: stop whatever holds {port}, or choose another \
         port with `capbridge config set-port <port>` (persisted) or `capbridge serve --port \
         <port>` (this run only)"
    )]
    InUse { port: u16 },
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Other { port: u16, source: std::io::Error },
}

/// Binds 127.0.0.1:`port` (0: any free port, for tests). Loopback only, never another port.
pub async fn bind(port: u16) -> Result<TcpListener, BindError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AddrInUse => BindError::InUse { port },
            _ => BindError::Other { port, source },
        })
}

/// What to serve besides the contract.
#[derive(Default)]
pub struct ServeOptions {
    /// Where the config was read from (reported in `/api/v1/bridge/runtime`).
    pub config_path: Option<PathBuf>,
    /// Extra routes behind the same checks and session requirement as the contract's
    /// authenticated routes (the benchmark adds its native baseline here).
    pub extra_routes: Option<Router<Arc<Shared>>>,
    /// The desktop shell's tray: reported in `/api/v1/bridge/runtime` and `/api/v1/capabilities`,
    /// each change published as `bridge.runtime.updated`.
    pub tray: Option<watch::Receiver<tray::TrayState>>,
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Serves the contract on `listener` until [`Self::shutdown`].
    pub fn start(
        listener: TcpListener,
        runtime: Arc<Runtime>,
        config: BridgeConfig,
        options: ServeOptions,
    ) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let shared = Shared::new(
            runtime,
            config,
            addr.port(),
            options.config_path,
            options.tray,
        )?;
        let app = router_with(shared.clone(), options.extra_routes);
        tokio::spawn(end_sessions(shared.clone()));
        tokio::spawn(publish_tray_changes(shared.clone()));
        let bounds = listener::Bounds::new(&shared.config);
        let stop = shared.shutdown.subscribe();
        let task = tokio::spawn(listener::serve(listener, app, bounds, stop));
        Ok(Self { shared, addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, sends `bridge.stopping` and a close frame on every event socket, and
    /// waits up to `grace` for in-flight requests; whatever is still running then is cancelled.
    pub async fn shutdown(self, grace: Duration) -> anyhow::Result<()> {
        self.shared.shutdown.send_replace(true);
        self.shared.sockets.close();
        // Whatever a capability holds for anyone (sleep prevention) is given back.
        self.shared.runtime.shutdown().await;
        let mut task = self.task;
        let drained = tokio::time::timeout(grace, async {
            let served = (&mut task).await;
            self.shared.sockets.wait().await;
            served
        })
        .await;
        match drained {
            Ok(served) => Ok(served??),
            Err(_) => {
                task.abort();
                tracing::warn!("in-flight requests cancelled after {grace:?}");
                Ok(())
            }
        }
    }
}

/// A response leaves only once the audit entries its request made are on disk: whatever the
/// client was told happened is in the audit log, even if the bridge is killed right after.
async fn audit_durable(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(request).await;
    durable(&shared, response).await
}

/// `response`, once the audit entries made so far are on disk; a 500 if they cannot be written.
pub(crate) async fn durable(
    shared: &Shared,
    response: axum::response::Response,
) -> axum::response::Response {
    match shared.runtime.audit().flush().await {
        Ok(()) => response,
        // What was done could not be recorded: the client is not told it went well.
        Err(error) => {
            tracing::error!(target: "capbridge::audit", "{error}");
            let error = error::ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "audit_unavailable",
                format!(
                    "the request was handled, but its audit entry could not be written: {error}"
                ),
            );
            axum::response::IntoResponse::into_response(error)
        }
    }
}

/// Tells the runtime when a session ends (expires, or is dropped for a newer one), so that
/// every capability gives back what it held for it; waits for the next expiry in between.
async fn end_sessions(shared: Arc<Shared>) {
    let mut stop = shared.shutdown.subscribe();
    loop {
        let (ended, next_expiry) = shared.sessions.take_ended();
        for session in ended {
            shared.runtime.end_session(session).await;
            shared
                .runtime
                .audit()
                .session_ended(session, "expired or replaced");
            tracing::debug!(target: "capbridge::api", session, "session ended");
        }
        // Past the expiry by a little, so the session is no longer live when looked at.
        let wake = next_expiry.map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(3600),
            |at| tokio::time::Instant::from_std(at) + Duration::from_millis(5),
        );
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = shared.sessions.changed().notified() => {}
            _ = stop.wait_for(|stopping| *stopping) => break,
        }
    }
}

/// `bridge.runtime.updated` (the runtime state, as `/api/v1/bridge/runtime` shows it) each time
/// the shell's tray changes, until shutdown.
async fn publish_tray_changes(shared: Arc<Shared>) {
    let Some(mut tray) = shared.tray.clone() else {
        return;
    };
    let mut stop = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            changed = tray.changed() => {
                if changed.is_err() {
                    break;
                }
                let state = routes::bridge::runtime_state(&shared);
                match serde_json::to_value(state) {
                    Ok(payload) => shared.publish("bridge.runtime.updated", payload),
                    Err(e) => tracing::error!("bridge.runtime.updated: {e}"),
                }
            }
            _ = stop.wait_for(|stopping| *stopping) => break,
        }
    }
}

/// The contract's router: every route of [`MODULES`] behind the checks of its tier, for tests
/// that call it in-process (tower's `oneshot`) as much as for the server.
pub fn router(shared: Arc<Shared>) -> Router {
    router_with(shared, None)
}

fn router_with(shared: Arc<Shared>, extra: Option<Router<Arc<Shared>>>) -> Router {
    use routes::Tier;
    let config = &shared.config;
    let (mut public, mut session, mut own_deadline, mut socket) = Default::default();
    for module in MODULES {
        for (tier, group) in (module.routes)() {
            let slot: &mut Router<Arc<Shared>> = match tier {
                Tier::Public => &mut public,
                Tier::Session => &mut session,
                Tier::SessionOwnDeadline => &mut own_deadline,
                Tier::Socket => &mut socket,
            };
            *slot = std::mem::take(slot).merge(Router::from(group));
        }
    }
    let require_session = || from_fn_with_state(shared.clone(), security::require_session);
    let timed = public
        .merge(
            session
                .merge(extra.unwrap_or_default())
                .route_layer(require_session()),
        )
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout(),
        ));
    // Invocations and capability calls have their own deadline (504, from the command timeout
    // and the component's policy); the event socket lives as long as the session.
    let untimed = own_deadline.route_layer(require_session()).merge(socket);
    Router::new()
        .merge(timed)
        .merge(untimed)
        .fallback(routes::unknown_route)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(from_fn_with_state(shared.clone(), audit_durable))
        .layer(from_fn_with_state(shared.clone(), listener::bound_body))
        .layer(security::cors(&shared.origins))
        .layer(from_fn_with_state(
            shared.clone(),
            security::check_host_and_origin,
        ))
        .layer(from_fn(error::uniform_errors))
        // Components' own HTTP answers as they are (their 404 is theirs), so before the
        // uniform errors; the contract's checks do not apply to it (see `plugins`).
        .layer(from_fn_with_state(shared.clone(), plugins::dispatch))
        .layer(from_fn_with_state(shared.clone(), connlog::record))
        .with_state(shared)
}
