//! The tray icon of tray mode (seed 000): the menu "Show Status" and "Quit". Made through
//! libayatana-appindicator (as Tauri's is): a StatusNotifierItem where the desktop hosts them
//! (KDE, GNOME with the AppIndicator extension, XFCE), else an icon in an XEmbed system tray.

use std::path::Path;

use tao::event_loop::EventLoopProxy;
use tray_icon::menu::{Menu, MenuEvent, MenuId, MenuItem};
use tray_icon::{TrayIcon, TrayIconBuilder};

use crate::Shell;

/// What the menu asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    ShowStatus,
    Quit,
}

const SHOW_STATUS: &str = "show-status";
const QUIT: &str = "quit";

/// The icon, while it is in the tray.
pub struct Tray {
    _icon: TrayIcon,
}

/// The libraries the icon is made with; the first one found is used.
const APPINDICATOR: &[&str] = &["libayatana-appindicator3.so.1", "libappindicator3.so.1"];

/// What to install when none of [`APPINDICATOR`] is there.
pub const MISSING: &str = "no tray icon: libayatana-appindicator3 is not installed (Debian and \
                           Ubuntu: `sudo apt-get install libayatana-appindicator3-1`); closing \
                           the status window still hides it, and starting capbridge again \
                           shows it";

impl Tray {
    /// Puts the icon in the tray; its menu's choices come back as [`Shell::Tray`]. Runs on the
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
            &MenuItem::with_id(QUIT, "Quit", true, None),
        ])
        .map_err(|e| format!("the tray menu: {e}"))?;
        MenuEvent::set_event_handler(Some(move |event: MenuEvent| {
            if let Some(command) = command(&event.id) {
                let _ = proxy.send_event(Shell::Tray(command));
            }
        }));
        let icon = TrayIconBuilder::new()
            .with_id("capbridge")
            .with_icon(icon()?)
            .with_tooltip("capbridge")
            .with_menu(Box::new(menu))
            .with_temp_dir_path(icons)
            .build()
            .map_err(|e| format!("no tray icon: {e}"))?;
        Ok(Tray { _icon: icon })
    }
}

fn command(id: &MenuId) -> Option<Command> {
    match id.as_ref() {
        SHOW_STATUS => Some(Command::ShowStatus),
        QUIT => Some(Command::Quit),
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
