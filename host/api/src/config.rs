//! The bridge's persisted configuration (`$XDG_CONFIG_HOME/capbridge/config.toml`): the one
//! listening port and who may talk to it.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The port a web app written for the contract looks for first.
pub const DEFAULT_PORT: u16 = 47832;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BridgeConfig {
    /// The one port the bridge listens on (127.0.0.1). Never changed by the bridge itself.
    #[serde(default = "default_port")]
    pub port: u16,
    /// `prod`: only `origins` may call. `dev`: `origins` and `dev-origins` (loopback only).
    #[serde(default)]
    pub mode: Mode,
    /// Web app origins allowed to call, exactly `scheme://host[:port]`.
    #[serde(default)]
    pub origins: Vec<String>,
    /// Local development servers allowed in `dev` mode; each must be a loopback origin.
    #[serde(default = "default_dev_origins")]
    pub dev_origins: Vec<String>,
    /// How long a session token lives; `POST /api/v1/session/refresh` extends it.
    #[serde(default = "default_session_ttl")]
    pub session_ttl_seconds: u64,
    /// Longest a request (other than a command invocation or the event socket) may take; on
    /// every route, also the longest its body may take to arrive after its headers.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    /// Longest a client may take to send a request's whole header block, counted from when the
    /// bridge starts waiting for it (a new connection, or a kept-alive one after its previous
    /// answer); past it the connection is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
    /// Default deadline of a command invocation when the request names none (policies may cut it).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_ms: u64,
    /// Largest request body.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Most connections open at once, event sockets included; more wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Interval of `bridge.heartbeat` events on the event socket.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_ms: u64,
    /// Reported in `/api/v1/bridge/runtime`; the tray itself belongs to the desktop shell.
    #[serde(default)]
    pub tray_mode: bool,
    /// Lets the web app answer its own sessions' command prompts through
    /// `POST /api/v1/system/permissions/prompts/:requestId/resolve`: it can then approve its own
    /// commands. Off: only the person answers (the terminal running `serve`, `capbridge prompts`).
    #[serde(default)]
    pub web_approvals: bool,
    /// How many days audit entries are kept (`capbridge audit`, `GET /api/v1/audit`).
    #[serde(default = "default_audit_retention_days")]
    pub audit_retention_days: u64,
    /// Component web UIs served from a local development server instead of their directory
    /// (seed 004's dev proxy): component id → `http://localhost:<port>`. Loopback only, and
    /// never the port of an allowed web-app origin (the default dev origins' 5173 included): a
    /// component's dev server must not be a page that may use the contract.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub dev_proxy: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Prod,
    Dev,
}

fn default_audit_retention_days() -> u64 {
    90
}
fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_dev_origins() -> Vec<String> {
    ["http://localhost:5173", "http://127.0.0.1:5173"]
        .map(String::from)
        .to_vec()
}
fn default_session_ttl() -> u64 {
    3600
}
fn default_request_timeout() -> u64 {
    30_000
}
fn default_header_timeout() -> u64 {
    10_000
}
fn default_command_timeout() -> u64 {
    30_000
}
fn default_max_body() -> usize {
    // A 16 MiB file written as base64 (the filesystem capability's limit) fits.
    32 << 20
}
fn default_max_connections() -> usize {
    256
}
fn default_heartbeat() -> u64 {
    15_000
}

impl Default for BridgeConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

impl BridgeConfig {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the config file, creating it with the defaults (atomically) if there is none.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).with_context(|| format!("config {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let config = Self::default();
                config.save(path)?;
                Ok(config)
            }
            Err(e) => Err(e).with_context(|| format!("reading config {}", path.display())),
        }
    }

    /// Writes the config atomically: a reader sees the old file or the new one, never a part.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        self.validate()?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let text = format!(
            "# capbridge configuration; see docs/contract.md (\"Configuration\").\n{}",
            toml::to_string_pretty(self)?
        );
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        file.as_file().sync_all()?;
        file.persist(path)
            .with_context(|| format!("writing config {}", path.display()))?;
        Ok(())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.port != 0,
            "port 0 is not a persisted port; choose one (default {DEFAULT_PORT})"
        );
        for origin in &self.origins {
            normalize_origin(origin).with_context(|| format!("origins: `{origin}`"))?;
        }
        for origin in &self.dev_origins {
            let url =
                url::Url::parse(origin).with_context(|| format!("dev-origins: `{origin}`"))?;
            let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            anyhow::ensure!(
                loopback,
                "dev-origins: `{origin}` is not a loopback origin (localhost, 127.0.0.1, [::1])"
            );
            normalize_origin(origin).with_context(|| format!("dev-origins: `{origin}`"))?;
        }
        anyhow::ensure!(
            self.session_ttl_seconds > 0,
            "session-ttl-seconds must be > 0"
        );
        for (key, value) in [
            ("heartbeat-interval-ms", self.heartbeat_interval_ms),
            ("request-timeout-ms", self.request_timeout_ms),
            ("header-timeout-ms", self.header_timeout_ms),
            ("command-timeout-ms", self.command_timeout_ms),
        ] {
            anyhow::ensure!(value > 0, "{key} must be more than 0");
        }
        anyhow::ensure!(
            self.max_body_bytes >= 1024,
            "max-body-bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.max_connections > 0,
            "max-connections must be more than 0"
        );
        anyhow::ensure!(
            (1..=3650).contains(&self.audit_retention_days),
            "audit-retention-days must be from 1 to 3650"
        );
        for (component, target) in &self.dev_proxy {
            self.check_dev_proxy(target)
                .with_context(|| format!("dev-proxy.{component}: `{target}`"))?;
        }
        self.check_bound_port(self.port)
    }

    /// What depends on the port the bridge is bound to (the configured one, or a one-run
    /// override): no allowed origin may be a component's own web UI origin
    /// (`http://<id>.localhost:<port>`), and no dev proxy may point at the bridge itself.
    pub fn check_bound_port(&self, port: u16) -> anyhow::Result<()> {
        for origin in self.origins.iter().chain(&self.dev_origins) {
            let component_host = url::Url::parse(origin).is_ok_and(|url| {
                url.host_str().is_some_and(|h| h.ends_with(".localhost"))
                    && url.port_or_known_default() == Some(port)
            });
            anyhow::ensure!(
                !component_host,
                "origins: `{origin}` is a component's web UI origin on the bridge's port; a \
                 component's page may not use the contract"
            );
        }
        for (component, target) in &self.dev_proxy {
            let own = url::Url::parse(target).is_ok_and(|url| url.port() == Some(port));
            anyhow::ensure!(
                !own,
                "dev-proxy.{component}: `{target}` is the bridge's own port"
            );
        }
        Ok(())
    }

    /// A dev proxy target: `http://` on a loopback name with a port, nothing else, and not the
    /// port of an allowed web-app origin on loopback (in either mode) nor the bridge's own.
    fn check_dev_proxy(&self, target: &str) -> anyhow::Result<()> {
        let url = url::Url::parse(target)?;
        anyhow::ensure!(url.scheme() == "http", "the dev proxy speaks http:// only");
        // Every name and address that reaches this machine: `localhost` and its subdomains (as
        // browsers resolve them), and loopback addresses.
        let loopback = |url: &url::Url| match url.host() {
            Some(url::Host::Domain(name)) => name == "localhost" || name.ends_with(".localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        anyhow::ensure!(
            loopback(&url),
            "not a loopback target (localhost, a *.localhost name, a loopback address): a \
             component's dev server \
             runs on this machine"
        );
        anyhow::ensure!(
            url.path() == "/" && url.query().is_none() && url.username().is_empty(),
            "give the server alone, `http://localhost:<port>`: requests keep their path"
        );
        let port = url
            .port()
            .ok_or_else(|| anyhow::anyhow!("name the dev server's port"))?;
        let allowed = self.origins.iter().chain(&self.dev_origins).find(|origin| {
            url::Url::parse(origin)
                .is_ok_and(|o| loopback(&o) && o.port_or_known_default() == Some(port))
        });
        if let Some(origin) = allowed {
            anyhow::bail!(
                "port {port} is the port of `{origin}`, an origin allowed to use the contract: \
                 a component's dev server there would be a page that may use the contract. Run \
                 the component's dev server on another port"
            );
        }
        Ok(())
    }

    /// The origins allowed in this config's mode, as browsers send them in `Origin`.
    pub fn allowed_origins(&self) -> Vec<String> {
        let dev = match self.mode {
            Mode::Dev => self.dev_origins.as_slice(),
            Mode::Prod => &[],
        };
        self.origins
            .iter()
            .chain(dev)
            .filter_map(|o| normalize_origin(o).ok())
            .collect()
    }

    /// How long audit entries are kept.
    pub fn audit_retention(&self) -> Duration {
        Duration::from_secs(self.audit_retention_days * 24 * 3600)
    }

    pub fn session_ttl(&self) -> Duration {
        Duration::from_secs(self.session_ttl_seconds)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }
    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
}

/// `https://App.example:443/` → `https://app.example`: the form a browser sends in `Origin`.
/// Refuses anything that is not exactly an origin (paths, queries, user names, wildcards).
pub fn normalize_origin(text: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !text.contains('*'),
        "wildcards are not allowed; list each origin"
    );
    let url = url::Url::parse(text)?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https"),
        "the scheme must be http or https"
    );
    anyhow::ensure!(
        url.username().is_empty() && url.password().is_none(),
        "an origin has no user name or password"
    );
    anyhow::ensure!(
        url.path() == "/" && url.query().is_none() && url.fragment().is_none(),
        "an origin is scheme://host[:port], with no path, query or fragment"
    );
    anyhow::ensure!(url.host_str().is_some(), "an origin needs a host");
    Ok(url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_prod_on_the_contract_port() {
        let config = BridgeConfig::default();
        assert_eq!(config.port, 47832);
        assert_eq!(config.mode, Mode::Prod);
        assert!(config.allowed_origins().is_empty());
    }

    #[test]
    fn dev_mode_adds_dev_origins_only_in_dev() {
        let mut config =
            BridgeConfig::parse("origins = [\"https://app.example\"]\nmode = \"dev\"").unwrap();
        assert_eq!(
            config.allowed_origins(),
            [
                "https://app.example",
                "http://localhost:5173",
                "http://127.0.0.1:5173"
            ]
        );
        config.mode = Mode::Prod;
        assert_eq!(config.allowed_origins(), ["https://app.example"]);
    }

    #[test]
    fn origins_must_be_exact() {
        for bad in [
            "https://*.example",
            "https://app.example/path",
            "app.example",
            "ftp://app.example",
            "https://user@app.example",
            "https://app.example?x=1",
            "null",
        ] {
            let text = format!("origins = [\"{bad}\"]");
            assert!(BridgeConfig::parse(&text).is_err(), "{bad} accepted");
        }
        assert_eq!(
            normalize_origin("HTTPS://App.Example:443/").unwrap(),
            "https://app.example"
        );
        assert_eq!(
            normalize_origin("http://localhost:5173").unwrap(),
            "http://localhost:5173"
        );
    }

    #[test]
    fn dev_origins_must_be_loopback() {
        let err = BridgeConfig::parse("dev-origins = [\"http://192.168.1.5:5173\"]").unwrap_err();
        assert!(
            format!("{err:#}").contains("not a loopback origin"),
            "{err:#}"
        );
        assert!(BridgeConfig::parse("dev-origins = [\"http://[::1]:3000\"]").is_ok());
    }

    #[test]
    fn unknown_keys_and_zero_values_are_refused() {
        for bad in [
            "prot = 1",
            "port = 0",
            "request-timeout-ms = 0",
            "header-timeout-ms = 0",
            "max-connections = 0",
            "command-timeout-ms = 0",
            "heartbeat-interval-ms = 0",
            "session-ttl-seconds = 0",
            "max-body-bytes = 0",
        ] {
            assert!(BridgeConfig::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn load_creates_then_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.toml");
        let created = BridgeConfig::load_or_create(&path).unwrap();
        assert_eq!(created, BridgeConfig::default());
        let mut changed = created.clone();
        changed.port = 40001;
        changed.save(&path).unwrap();
        assert_eq!(BridgeConfig::load_or_create(&path).unwrap().port, 40001);
        // A broken file is reported and left alone.
        std::fs::write(&path, "port = \"x\"").unwrap();
        assert!(BridgeConfig::load_or_create(&path).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "port = \"x\"");
    }
}
