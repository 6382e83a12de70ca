//! The tray icon of tray mode (seed 000): the menu "Show Status", "Stop automation" (issue 14:
//! stops every component's input at once) and "Quit". Made through
//! libayatana-appindicator (as Tauri's is): a StatusNotifierItem where the desktop hosts them
//! (KDE, GNOME with the AppIndicator extension, XFCE), else an icon in an XEmbed system tray.
//! Whether any tray shows it is asked separately ([`host_present`]): the library makes the icon
//! either way.

use std::path::Path;
use std::time::Duration;

use tao::event_loop::EventLoopProxy;
use tray_icon::menu::{Menu, MenuEvent, MenuId, MenuItem};
use tray_icon::{TrayIcon, TrayIconBuilder};

use crate::{instance, Shell};

const SHOW_STATUS: &str = "show-status";
const STOP_INPUT: &str = "stop-input";
const QUIT: &str = "quit";

/// The icon, while it is in the tray.
pub struct Tray {
    _icon: TrayIcon,
}

/// The libraries the icon is made with; the first one found is used.
const APPINDICATOR: &[&str] = &["libayatana-appindicator3.so.1", "libappindicator3.so.1"];

/// What to install when none of [`APPINDICATOR`] is there.
pub const MISSING: &str = "libayatana-appindicator3 is not installed (Debian and Ubuntu: `sudo \
                           apt-get install libayatana-appindicator3-1`); closing the status \
                           window minimizes it instead";

/// Said when the icon is made but no tray on this desktop shows it.
pub const NO_TRAY: &str = "no system tray on this desktop (on GNOME, the AppIndicator \
                           extension adds one); closing the status window minimizes it instead";

impl Tray {
    /// Puts the icon in the tray; its menu's choices come back as the [`Shell`] events a
    /// second launch (`osloop://open`) and a signal send. Runs on the
    /// main thread, after GTK is set up (the event loop does that). `icons` is a private
    /// directory the icon's image is written to (the tray host reads it from there).
    pub fn show(proxy: EventLoopProxy<Shell>, icons: &Path) -> Result<Tray, String> {
        // The icon library is loaded when first used, and its absence is a panic there.
        if !APPINDICATOR.iter().any(|name| loadable(name)) {
            return Err(MISSING.into());
        }
        let menu = Menu::new();
        menu.append_items(&[
            &MenuItem::with_id(SHOW_STATUS, "Show Status", true, None),
            &MenuItem::with_id(STOP_INPUT, "Stop automation", true, None),
            &MenuItem::with_id(QUIT, "Quit", true, None),
        ])
        .map_err(|e| format!("the tray menu: {e}"))?;
        MenuEvent::set_event_handler(Some(move |event: MenuEvent| {
            if let Some(shell) = chosen(&event.id) {
                let _ = proxy.send_event(shell);
            }
        }));
        let icon = TrayIconBuilder::new()
            .with_id("capbridge")
            .with_icon(icon()?)
            .with_tooltip("capbridge")
            .with_menu(Box::new(menu))
            .with_temp_dir_path(icons)
            .build()
            .map_err(|e| format!("the tray icon could not be made: {e}"))?;
        Ok(Tray { _icon: icon })
    }
}

/// Whether a tray shows icons now: a StatusNotifierItem host on the session bus, or an XEmbed
/// system tray on the X display.
pub async fn host_present() -> bool {
    xembed_tray() || status_notifier_host().await
}

fn xembed_tray() -> bool {
    use x11rb::protocol::xproto::ConnectionExt as _;
    let ask = || -> Option<bool> {
        let (x, screen) = x11rb::connect(None).ok()?;
        let name = format!("_NET_SYSTEM_TRAY_S{screen}");
        // Only if it exists: no tray ever ran when nobody made the atom.
        let atom = x
            .intern_atom(true, name.as_bytes())
            .ok()?
            .reply()
            .ok()?
            .atom;
        if atom == x11rb::NONE {
            return Some(false);
        }
        let owner = x.get_selection_owner(atom).ok()?.reply().ok()?.owner;
        Some(owner != x11rb::NONE)
    };
    ask().unwrap_or(false)
}

async fn status_notifier_host() -> bool {
    let ask = async {
        let bus = zbus::Connection::session().await.ok()?;
        let reply = bus
            .call_method(
                Some("org.kde.StatusNotifierWatcher"),
                "/StatusNotifierWatcher",
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(
                    "org.kde.StatusNotifierWatcher",
                    "IsStatusNotifierHostRegistered",
                ),
            )
            .await
            .ok()?;
        let value: zbus::zvariant::OwnedValue = reply.body().deserialize().ok()?;
        bool::try_from(value).ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), ask).await,
        Ok(Some(true))
    )
}

/// What a menu item asks of the shell.
fn chosen(id: &MenuId) -> Option<Shell> {
    match id.as_ref() {
        SHOW_STATUS => Some(Shell::Show(instance::Action::Open)),
        STOP_INPUT => Some(Shell::StopInput),
        QUIT => Some(Shell::Quit),
        _ => None,
    }
}

fn loadable(name: &str) -> bool {
    // SAFETY: the libraries named in APPINDICATOR are C libraries without load-time side effects
    // beyond their own (and GTK's) initialisers; the tray library loads the same one next.
    unsafe { libloading::Library::new(name) }.is_ok()
}

/// capbridge's icon (`ui/icon.png`, RGBA).
fn icon() -> Result<tray_icon::Icon, String> {
    let (rgba, width, height) = crate::icon_rgba();
    tray_icon::Icon::from_rgba(rgba, width, height).map_err(|e| format!("the tray icon: {e}"))
}
