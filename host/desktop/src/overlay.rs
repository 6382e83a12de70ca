//! The canvas overlay (seed 001): a transparent, always-on-top, undecorated, click-through
//! window showing only the HTML a `canvas` component gave. Its webview has its own ephemeral
//! web context with one scheme, `capbridge-canvas://overlay/`, which answers that HTML under a
//! CSP with no script and no network at all; the app's `capbridge-ui` scheme does not exist there, there is no
//! IPC handler, navigation away and `window.open` are refused.

use std::sync::{Arc, Mutex};

use capbridge_runtime::caps::canvas::{Overlay as Change, Position, Screen};
use tao::dpi::{LogicalPosition, LogicalSize};
use tao::event_loop::{EventLoopProxy, EventLoopWindowTarget};
use tao::window::{Window, WindowBuilder};
use wry::http::{header, Response};
use wry::{WebView, WebViewBuilder};

use crate::Shell;

const SCHEME: &str = "capbridge-canvas";
const ORIGIN: &str = "capbridge-canvas://overlay/";

/// HTML and inline style only: no script (so no print dialog, no fullscreen, no timers),
/// nothing loads from anywhere (images and fonts as `data:`), nothing is sent anywhere,
/// nothing navigates.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'none'; \
                       img-src data:; font-src data:; media-src data:; connect-src 'none'; \
                       object-src 'none'; base-uri 'none'; form-action 'none'; \
                       frame-ancestors 'none'; frame-src 'none'; worker-src 'none'";

/// The runtime's canvas service shows overlays through the shell's event loop.
pub struct ShellScreen(pub EventLoopProxy<Shell>);

impl Screen for ShellScreen {
    fn overlay(&self, change: Change) {
        let _ = self.0.send_event(Shell::Overlay(change));
    }
}

pub struct Overlay {
    window: Window,
    webview: WebView,
    /// What `capbridge-canvas://overlay/` answers.
    html: Arc<Mutex<String>>,
    /// Bumped on every new content, so the webview loads it afresh.
    generation: u64,
    /// Shown by a session (it may still be hidden while a prompt is open).
    shown: bool,
}

impl Overlay {
    pub fn open(target: &EventLoopWindowTarget<Shell>) -> anyhow::Result<Self> {
        use tao::platform::unix::{WindowBuilderExtUnix, WindowExtUnix};
        use wry::WebViewBuilderExtUnix;
        let window = WindowBuilder::new()
            .with_title("capbridge canvas")
            .with_decorations(false)
            .with_transparent(true)
            .with_rgba_visual(true)
            .with_always_on_top(true)
            .with_focused(false)
            // Never the keyboard's: a page there gets no key presses (and so no user gesture).
            .with_focusable(false)
            .with_skip_taskbar(true)
            .with_visible(false)
            .build(target)?;
        let html = Arc::new(Mutex::new(String::new()));
        let content = html.clone();
        let webview = WebViewBuilder::new()
            .with_incognito(true)
            .with_transparent(true)
            .with_devtools(false)
            .with_custom_protocol(SCHEME.into(), move |_id, _request| {
                let body = content.lock().unwrap_or_else(|p| p.into_inner()).clone();
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                    .header(header::CONTENT_SECURITY_POLICY, CSP)
                    .header(header::CACHE_CONTROL, "no-store")
                    .body(body.into_bytes().into())
                    .expect("static headers")
            })
            .with_navigation_handler(|url| url.starts_with(ORIGIN))
            .with_new_window_req_handler(|_, _| wry::NewWindowResponse::Deny)
            .with_url(format!("{ORIGIN}0"));
        let vbox = window
            .default_vbox()
            .ok_or_else(|| anyhow::anyhow!("the overlay window has no GTK box"))?;
        let webview = webview.build_gtk(vbox)?;
        Ok(Self {
            window,
            webview,
            html,
            generation: 0,
            shown: false,
        })
    }

    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Show { html, position } => {
                self.set_html(html);
                self.place(position);
                self.shown = true;
            }
            Change::Update { html, position } => {
                if let Some(html) = html {
                    self.set_html(html);
                }
                if let Some(position) = position {
                    self.place(position);
                }
            }
            Change::Hide => {
                self.shown = false;
                self.set_html(String::new());
            }
        }
    }

    /// Shown when a session showed it and nothing else must be seen alone (a prompt).
    pub fn show_unless(&self, prompt_open: bool) {
        let visible = self.shown && !prompt_open;
        self.window.set_visible(visible);
        if visible {
            // Clicks and the pointer go to whatever is below. Set once the window is shown (a
            // GTK window has no input shape before), and again each time it is shown.
            let _ = self.window.set_ignore_cursor_events(true);
        }
    }

    fn set_html(&mut self, html: String) {
        *self.html.lock().unwrap_or_else(|p| p.into_inner()) = html;
        self.generation += 1;
        if let Err(e) = self
            .webview
            .load_url(&format!("{ORIGIN}{}", self.generation))
        {
            tracing::warn!("canvas overlay: {e}");
        }
    }

    fn place(&self, p: Position) {
        self.window
            .set_outer_position(LogicalPosition::new(p.x, p.y));
        self.window
            .set_inner_size(LogicalSize::new(p.width, p.height));
    }
}
