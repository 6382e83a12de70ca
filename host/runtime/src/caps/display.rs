//! The X server of `DISPLAY`, as the screen and input capabilities reach it: one connection per
//! call. Wayland sessions are refused, saying so: their `DISPLAY` is XWayland's, which holds
//! only the X windows (a capture would be wrong, not missing; input would miss the rest).

use x11rb::rust_connection::RustConnection;

use super::GuestError;

/// A connection to the X server of `DISPLAY` and its screen number; `unavailable` without a
/// display, or in a Wayland session. `doing` says what for, in the errors (`read the screen`).
pub fn connect(doing: &str) -> Result<(RustConnection, usize), GuestError> {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("WAYLAND_DISPLAY") || std::env::var("XDG_SESSION_TYPE").is_ok_and(|t| t == "wayland") {
        return Err(GuestError::Unavailable(format!(
            "this is a Wayland session: capbridge cannot {doing} there yet (the ScreenCast and \
             RemoteDesktop portals are not supported; X11 sessions only)"
        )));
    }
    if !set("DISPLAY") {
        return Err(GuestError::Unavailable(
            "no display: capbridge runs without one (DISPLAY is not set)".into(),
        ));
    }
    x11rb::connect(None)
        .map_err(|e| GuestError::Unavailable(format!("cannot {doing}: the X server: {e}")))
}
