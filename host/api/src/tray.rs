//! The tray as the contract reports it (seed 000's tray mode): `tray` in
//! `/api/v1/bridge/runtime`, the `tray_mode` capability, and a `bridge.runtime.updated` event
//! each time it changes. The desktop shell owns the tray and sends its state here
//! ([`ServeOptions::tray`](crate::ServeOptions)); a headless bridge has none.

use serde::Serialize;
use utoipa::ToSchema;

/// The shell's tray now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrayState {
    pub icon: TrayIcon,
    /// The status window: `hidden` after closing it in tray mode (capbridge keeps serving).
    pub status_window: WindowState,
    /// Why there is no icon (`icon` is `off` or `unavailable`).
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TrayIcon {
    /// In the desktop's tray, with the menu "Show Status" and "Quit".
    Shown,
    /// Tray mode is off in the config.
    Off,
    /// Tray mode is on but no icon could be made (`reason` says why).
    Unavailable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WindowState {
    Shown,
    Hidden,
}

/// Said when the tray mode is off.
pub const TRAY_MODE_OFF: &str =
    "tray mode is off: set `tray-mode = true` in the config (or in Settings) and restart";
/// Said by a bridge without the desktop shell.
pub const HEADLESS: &str = "the headless bridge has no tray";

impl TrayState {
    /// The `tray_mode` capability: provided while the icon is in the tray, else why not.
    pub fn unavailable(state: Option<&TrayState>) -> Option<String> {
        match state {
            None => Some(HEADLESS.into()),
            Some(TrayState {
                icon: TrayIcon::Shown,
                ..
            }) => None,
            Some(TrayState { reason, .. }) => {
                Some(reason.clone().unwrap_or_else(|| TRAY_MODE_OFF.into()))
            }
        }
    }
}
