//! The localhost server as the desktop shell sees it: bound, or not bound with the reason, and
//! bound again on the same port by `osloop://ensure-server` (seed 000: the bridge never moves to
//! another port on its own).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use capbridge_api::connlog::Connection;
use capbridge_api::tray::TrayState;
use capbridge_api::{BridgeConfig, ServeOptions, Server};
use capbridge_runtime::Runtime;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub struct Bridge {
    runtime: Arc<Runtime>,
    config: BridgeConfig,
    config_path: PathBuf,
    /// The port this run binds: the persisted one, or `--port` for this run.
    port: u16,
    /// The shell's tray, reported by every server this bridge starts.
    tray: watch::Receiver<TrayState>,
    state: Mutex<State>,
}

enum State {
    Bound(Server),
    NotBound { error: String },
    Stopped,
}

/// What the status view shows about the listening port.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BindStatus {
    /// The port in the config file.
    pub configured_port: u16,
    /// The port this run binds (`--port` may differ from the config for one run).
    pub port: u16,
    /// The port the server listens on now (`port`, or the one chosen for `--port 0`).
    pub bound_port: Option<u16>,
    /// `bound`, `not-bound` or `stopped`.
    pub state: &'static str,
    pub error: Option<String>,
    /// What the person can do about the error.
    pub hint: Option<String>,
}

impl Bridge {
    /// The bridge of this run; `listener` is the first try at binding `port`.
    pub fn start(
        runtime: Arc<Runtime>,
        config: BridgeConfig,
        config_path: PathBuf,
        port: u16,
        listener: Result<TcpListener, String>,
        tray: watch::Receiver<TrayState>,
    ) -> Arc<Self> {
        let bridge = Arc::new(Bridge {
            runtime,
            config,
            config_path,
            port,
            tray,
            state: Mutex::new(State::Stopped),
        });
        let state = match listener {
            Ok(listener) => bridge.serve(listener),
            Err(error) => State::NotBound { error },
        };
        *bridge.state.lock().expect("bridge lock") = state;
        bridge
    }

    /// Binds the same port again if it is not bound (`osloop://ensure-server`, the status
    /// view's retry); never another port.
    pub async fn ensure(&self) -> Result<u16, String> {
        match &*self.state.lock().expect("bridge lock") {
            State::Bound(server) => return Ok(server.addr().port()),
            State::Stopped => return Err("capbridge is stopping".into()),
            State::NotBound { .. } => {}
        }
        let state = match capbridge_api::bind(self.port).await {
            Ok(listener) => self.serve(listener),
            Err(e) => State::NotBound {
                error: e.to_string(),
            },
        };
        let mut current = self.state.lock().expect("bridge lock");
        match &*current {
            // Bound by another retry meanwhile; this one's server is dropped.
            State::Bound(server) => return Ok(server.addr().port()),
            // Stopping meanwhile: nothing may start again.
            State::Stopped => return Err("capbridge is stopping".into()),
            State::NotBound { .. } => {}
        }
        *current = state;
        match &*current {
            State::Bound(server) => Ok(server.addr().port()),
            State::NotBound { error } => Err(error.clone()),
            State::Stopped => Err("capbridge is stopping".into()),
        }
    }

    fn serve(&self, listener: TcpListener) -> State {
        let options = ServeOptions {
            config_path: Some(self.config_path.clone()),
            tray: Some(self.tray.clone()),
            ..ServeOptions::default()
        };
        match Server::start(listener, self.runtime.clone(), self.config.clone(), options) {
            Ok(server) => {
                println!("capbridge listening on http://{}", server.addr());
                State::Bound(server)
            }
            Err(e) => State::NotBound {
                error: format!("{e:#}"),
            },
        }
    }

    pub fn status(&self) -> BindStatus {
        let state = self.state.lock().expect("bridge lock");
        let (name, bound_port, error) = match &*state {
            State::Bound(server) => ("bound", Some(server.addr().port()), None),
            State::NotBound { error } => ("not-bound", None, Some(error.clone())),
            State::Stopped => ("stopped", None, None),
        };
        let hint = error.as_ref().map(|_| {
            format!(
                "Another program is using port {port}, or it cannot be bound. Stop that \
                 program and press Retry (osloop://ensure-server does the same), or choose \
                 another port in Settings and restart capbridge. capbridge never moves to \
                 another port by itself.",
                port = self.port
            )
        });
        BindStatus {
            configured_port: self.config.port,
            port: self.port,
            bound_port,
            state: name,
            error,
            hint,
        }
    }

    /// The shell's tray now.
    pub fn tray(&self) -> TrayState {
        self.tray.borrow().clone()
    }

    /// The most recent requests, newest first (empty while not bound).
    pub fn connections(&self, limit: usize) -> Vec<Connection> {
        match &*self.state.lock().expect("bridge lock") {
            State::Bound(server) => server.shared().connections.recent(limit),
            _ => Vec::new(),
        }
    }

    /// The web app origin of session `id`, while it is live.
    pub fn origin(&self, session: u64) -> Option<String> {
        match &*self.state.lock().expect("bridge lock") {
            State::Bound(server) => server.shared().sessions.origin(session),
            _ => None,
        }
    }

    /// Stops the server (sessions hear `bridge.stopping`) and what the capabilities hold.
    pub async fn stop(&self) {
        let state = std::mem::replace(
            &mut *self.state.lock().expect("bridge lock"),
            State::Stopped,
        );
        match state {
            State::Bound(server) => {
                if let Err(e) = server.shutdown(capbridge_api::SHUTDOWN_GRACE).await {
                    tracing::warn!("stopping the server: {e:#}");
                }
            }
            _ => self.runtime.shutdown().await,
        }
    }
}
