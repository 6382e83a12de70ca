//! capbridge's localhost contract (seed 000, "OS Loop bridge"): the HTTP + WebSocket server a
//! web app discovers on 127.0.0.1 and trusts with a session token.
//!
//! Request path, outermost first: connection log → uniform JSON errors → `Host`/`Origin` checks
//! → CORS (allowed origins only) → body limit → request timeout → session check → handler.

pub mod config;
pub mod connlog;
pub mod error;
mod listener;
pub mod openapi;
mod routes;
pub mod security;
pub mod session;
#[cfg(test)]
mod testing;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::Router;
use capbridge_runtime::caps::events::Event;
use capbridge_runtime::Runtime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutLayer;

pub use config::{BridgeConfig, Mode, DEFAULT_PORT};
pub use routes::commands::Registry;
pub use routes::ROUTES;

/// The contract version this bridge speaks.
pub const PROTOCOL_VERSION: &str = "osloop.bridge.v1";
/// This build's version.
pub const APP_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Event `source` of the bridge's own events.
pub const BRIDGE_SOURCE: &str = "capbridge";

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
    pub commands: Registry,
    pub started: SystemTime,
    shutdown: watch::Sender<bool>,
    /// The event sockets' tasks, so shutdown can wait for their goodbyes.
    sockets: TaskTracker,
}

impl Shared {
    /// Publishes one of the bridge's own events (`bridge.*`) on the bus components use too.
    pub fn publish(&self, topic: &str, payload: serde_json::Value) {
        self.runtime.events().publish(Event {
            source: BRIDGE_SOURCE.into(),
            topic: topic.into(),
            payload,
        });
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
        config.validate()?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            commands: Registry::new(&runtime),
            runtime,
            origins: config.allowed_origins(),
            hosts: security::allowed_hosts(addr.port()),
            port: addr.port(),
            sessions: session::Sessions::new(config.session_ttl()),
            connections: connlog::ConnectionLog::default(),
            config_path: options.config_path,
            config,
            started: SystemTime::now(),
            shutdown: watch::channel(false).0,
            sockets: TaskTracker::new(),
        });
        let app = router(shared.clone(), options.extra_routes);
        // Ended sessions give back their sleep-prevention holds and picks.
        let sweeper = shared.clone();
        let mut sweeper_stop = shared.shutdown.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(routes::capability::SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => routes::capability::sweep_ended_sessions(&sweeper).await,
                    _ = sweeper_stop.changed() => break,
                }
            }
        });
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
        // Nobody can hold sleep prevention for a bridge that is gone.
        self.shared
            .runtime
            .services()
            .awake
            .release_where(|_| true)
            .await;
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

fn router(shared: Arc<Shared>, extra: Option<Router<Arc<Shared>>>) -> Router {
    let config = &shared.config;
    let authenticated = Router::new()
        .merge(routes::bridge::authenticated())
        .merge(routes::commands::listing())
        .merge(routes::not_supported())
        .merge(extra.unwrap_or_default())
        .route_layer(from_fn_with_state(
            shared.clone(),
            security::require_session,
        ));
    let timed = Router::new()
        .merge(routes::bridge::public())
        .merge(routes::session::routes())
        .merge(authenticated)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout(),
        ));
    // Invocations and capability calls have their own deadline (504, from the command timeout
    // and the component's policy); the event socket lives as long as the session.
    let untimed = Router::new()
        .merge(
            routes::commands::invocation()
                .merge(routes::filesystem::routes())
                .merge(routes::awake::routes())
                .merge(routes::system::routes())
                .route_layer(from_fn_with_state(
                    shared.clone(),
                    security::require_session,
                )),
        )
        .merge(routes::events::routes());
    Router::new()
        .merge(timed)
        .merge(untimed)
        .fallback(routes::unknown_route)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(from_fn_with_state(shared.clone(), listener::bound_body))
        .layer(security::cors(&shared.origins))
        .layer(from_fn_with_state(
            shared.clone(),
            security::check_host_and_origin,
        ))
        .layer(from_fn(error::uniform_errors))
        .layer(from_fn_with_state(shared.clone(), connlog::record))
        .with_state(shared)
}
