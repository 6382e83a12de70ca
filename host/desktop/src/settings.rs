//! The settings view's reads and writes of the config file: the same file, validation and
//! atomic write as `capbridge config`. Changes take effect when capbridge starts again (the
//! view says so); the running server keeps the port and origins it started with.

use std::path::{Path, PathBuf};

use capbridge_api::{config::normalize_origin, BridgeConfig, Mode};
use serde::Deserialize;
use serde_json::{json, Value};
use wry::http::StatusCode;

pub struct Settings {
    path: PathBuf,
}

/// What the settings view may change.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Change {
    pub port: u16,
    pub origins: Vec<String>,
    pub dev_mode: bool,
    pub tray_mode: bool,
}

type Failure = (StatusCode, String);

impl Settings {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read(&self) -> Result<Value, Failure> {
        let config = self.load()?;
        Ok(view(&config, &self.path))
    }

    /// Applies a change to the file as it is now (other keys are kept), validated first;
    /// nothing is written when any field is wrong.
    pub fn write(&self, body: &[u8]) -> Result<Value, Failure> {
        let change: Change = serde_json::from_slice(body)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("settings: {e}")))?;
        let mut config = self.load()?;
        if change.port == 0 {
            return Err((
                StatusCode::BAD_REQUEST,
                "port: choose a port from 1 to 65535 (0 is not a persisted port)".into(),
            ));
        }
        let mut origins = Vec::new();
        for origin in change
            .origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
        {
            let normalized = normalize_origin(origin)
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("origin `{origin}`: {e:#}")))?;
            if !origins.contains(&normalized) {
                origins.push(normalized);
            }
        }
        config.port = change.port;
        config.origins = origins;
        config.mode = if change.dev_mode {
            Mode::Dev
        } else {
            Mode::Prod
        };
        config.tray_mode = change.tray_mode;
        config
            .save(&self.path)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("{e:#}")))?;
        let mut saved = view(&config, &self.path);
        saved["saved"] = json!(true);
        Ok(saved)
    }

    fn load(&self) -> Result<BridgeConfig, Failure> {
        BridgeConfig::load_or_create(&self.path)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))
    }
}

fn view(config: &BridgeConfig, path: &Path) -> Value {
    json!({
        "port": config.port,
        "origins": config.origins,
        "devMode": config.mode == Mode::Dev,
        "trayMode": config.tray_mode,
        "configPath": path.display().to_string(),
        "takesEffect": "when capbridge starts again",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> (tempfile::TempDir, Settings) {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings::new(dir.path().join("config.toml"));
        (dir, settings)
    }

    #[test]
    fn a_valid_change_is_written_and_other_keys_stay() {
        let (_dir, settings) = settings();
        std::fs::write(settings.path(), "port = 47832\nweb-approvals = true\n").unwrap();
        let saved = settings
            .write(br#"{"port": 47900, "origins": ["https://app.example.com/", ""], "devMode": true, "trayMode": true}"#)
            .unwrap();
        assert_eq!(saved["port"], 47900);
        let config = BridgeConfig::load_or_create(settings.path()).unwrap();
        assert_eq!(config.port, 47900);
        assert_eq!(config.origins, ["https://app.example.com"]);
        assert_eq!(config.mode, Mode::Dev);
        assert!(config.tray_mode);
        assert!(config.web_approvals, "a key the view does not show is kept");
    }

    #[test]
    fn a_bad_change_is_refused_and_changes_nothing() {
        let (dir, settings) = settings();
        std::fs::write(settings.path(), "port = 47832\n").unwrap();
        for (body, says) in [
            (&br#"{"port": 0, "origins": [], "devMode": false, "trayMode": false}"#[..], "port"),
            (br#"{"port": 70000, "origins": [], "devMode": false, "trayMode": false}"#, "settings"),
            (br#"{"port": 1, "origins": ["javascript:alert(1)"], "devMode": false, "trayMode": false}"#, "origin"),
            (br#"{"port": 1, "origins": ["https://a.example/path"], "devMode": false, "trayMode": false}"#, "origin"),
            (br#"{"port": 1, "origins": [], "devMode": false, "trayMode": false, "webApprovals": true}"#, "unknown field"),
            (br#"{"port": "1"}"#, "settings"),
            (b"not json", "settings"),
        ] {
            let (status, message) = settings.write(body).unwrap_err();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
            assert!(message.contains(says), "{says}: {message}");
            assert_eq!(std::fs::read_to_string(settings.path()).unwrap(), "port = 47832\n");
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }
}
