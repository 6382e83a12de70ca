//! capbridge's desktop shell: the status and settings window, a prompt window for each
//! permission prompt, the canvas overlay, and in tray mode the tray icon and prompt
//! notifications. The host owns every window (tao + wry); the
//! shell's pages are `ui/`, served over the app-owned `capbridge-ui://app` origin
//! ([`app_protocol`]), never from the localhost port.
//!
//! The shell runs on the main thread (GTK's); the server, the runtime and the pages' requests
//! run on tokio, and reach the windows through [`Shell`] events.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use capbridge_api::tray::{TrayIcon, TrayState, WindowState};
use capbridge_api::BridgeConfig;
use capbridge_runtime::approvals::Decision;
use capbridge_runtime::caps::canvas::CanvasService;
use capbridge_runtime::caps::input::InputService;
use capbridge_runtime::Runtime;
use tao::event::{Event, WindowEvent};
use tao::event_loop::{ControlFlow, EventLoopBuilder, EventLoopProxy, EventLoopWindowTarget};
use tao::window::{Icon, Window, WindowBuilder, WindowId};
use tokio::sync::watch;
use wry::{RequestAsyncResponder, WebView, WebViewBuilder};

pub mod app_protocol;
mod bridge;
pub mod instance;
pub mod navigation;
mod notify;
mod overlay;
mod settings;
mod tray;

use app_protocol::App;
pub use bridge::{BindStatus, Bridge};
use navigation::Navigation;
use settings::Settings;

/// What the shell is started with.
pub struct Options {
    pub runtime: Arc<Runtime>,
    /// The config as this run uses it (`--dev` applied).
    pub config: BridgeConfig,
    pub config_path: PathBuf,
    /// The port this run binds, and the first try at binding it.
    pub port: u16,
    pub listener: Result<tokio::net::TcpListener, String>,
    pub tokio: tokio::runtime::Runtime,
    /// Where second launches hand their URL ([`instance::claim`]), held while the shell runs.
    pub instance: instance::First,
    /// What the launch asked for (`osloop://settings` opens the settings view).
    pub first: instance::Action,
    /// The user's private state directory (the tray icon's image is written there).
    pub state_dir: PathBuf,
}

/// What other threads ask of the windows.
enum Shell {
    /// A page's request is answered (on the main thread, as WebKitGTK wants).
    Respond(RequestAsyncResponder, app_protocol::Reply),
    /// The pending prompts changed: open and close prompt windows.
    PromptsChanged,
    /// A second launch asked to show the window (`osloop://open`, `focus`, `settings`).
    Show(instance::Action),
    /// The canvas service asks for an overlay change.
    Overlay(capbridge_runtime::caps::canvas::Overlay),
    /// The tray menu's "Stop automation".
    StopInput,
    Quit,
}

struct Windows {
    status: (Window, WebView),
    /// One window per pending prompt, by prompt id.
    prompts: BTreeMap<String, (Window, WebView)>,
    /// The canvas overlay, once a component showed one.
    overlay: Option<overlay::Overlay>,
}

/// Runs the shell until the person quits (or SIGTERM / Ctrl-C); then stops the server.
pub fn run(options: Options) -> anyhow::Result<()> {
    let Options {
        runtime,
        config,
        config_path,
        port,
        listener,
        tokio,
        instance,
        first,
        state_dir,
    } = options;
    // Closing the window hides it; the icon's menu shows it again or quits.
    let tray_mode = config.tray_mode;
    let handle = tokio.handle().clone();
    let _guard = handle.enter();
    let event_loop = EventLoopBuilder::<Shell>::with_user_event().build();
    let proxy = event_loop.create_proxy();
    let tray = tray_mode.then(|| tray::Tray::show(proxy.clone(), &state_dir.join("tray")));
    let (icon, reason) = tray_report(&tray, &tokio);
    if let Some(reason) = reason.as_ref().filter(|_| tray_mode) {
        tracing::warn!("no tray icon: {reason}");
    }
    let tray_state = watch::Sender::new(TrayState {
        icon,
        status_window: WindowState::Shown,
        reason,
    });
    let bridge = Bridge::start(
        runtime.clone(),
        config,
        config_path.clone(),
        port,
        listener,
        tray_state.subscribe(),
    );
    let app = Arc::new(App {
        runtime: runtime.clone(),
        bridge: bridge.clone(),
        settings: Settings::new(config_path),
    });

    watch_prompts(&runtime, proxy.clone());
    let mut notifier =
        tray_mode.then(|| notify::Notifier::start(runtime.approvals().clone(), bridge.clone()));
    if let Some(canvas) = runtime.service::<CanvasService>() {
        canvas.attach(Arc::new(overlay::ShellScreen(proxy.clone())));
    }
    quit_on_signals(proxy.clone());
    let instance::First {
        listener,
        _lock: one_shell,
    } = instance;
    answer_second_launches(listener, bridge.clone(), proxy.clone());

    let status = open_page(
        &event_loop,
        WindowBuilder::new()
            .with_title("capbridge")
            .with_inner_size(tao::dpi::LogicalSize::new(960.0, 720.0)),
        if first == instance::Action::Settings {
            "index.html#settings"
        } else {
            "index.html"
        },
        &app,
        &proxy,
    )?;
    let mut windows = Windows {
        status,
        prompts: BTreeMap::new(),
        overlay: None,
    };
    open_prompt_windows(&event_loop, &mut windows, &runtime, &app, &proxy);

    event_loop.run(move |event, target, control_flow| {
        // This process stays the one shell until it ends.
        let _ = &one_shell;
        *control_flow = ControlFlow::Wait;
        match event {
            Event::UserEvent(Shell::Respond(responder, reply)) => responder.respond(reply),
            Event::UserEvent(Shell::PromptsChanged) => {
                open_prompt_windows(target, &mut windows, &runtime, &app, &proxy);
                show_overlay(&windows, &runtime);
            }
            Event::UserEvent(Shell::Overlay(change)) => {
                if windows.overlay.is_none() {
                    match overlay::Overlay::open(target) {
                        Ok(overlay) => windows.overlay = Some(overlay),
                        Err(e) => tracing::error!("cannot open the canvas overlay: {e:#}"),
                    }
                }
                if let Some(overlay) = &mut windows.overlay {
                    overlay.apply(change);
                }
                show_overlay(&windows, &runtime);
            }
            Event::UserEvent(Shell::StopInput) => {
                if let Some(input) = runtime.service::<InputService>() {
                    input.stop_all();
                }
            }
            Event::UserEvent(Shell::Quit) => *control_flow = ControlFlow::Exit,
            Event::UserEvent(Shell::Show(action)) => show_status(&windows, &tray_state, action),
            Event::WindowEvent {
                window_id,
                event: WindowEvent::CloseRequested,
                ..
            } => {
                if window_id == windows.status.0.id() {
                    if tray_mode {
                        // Still serving. Into the tray when one shows the icon (its "Show
                        // Status", `osloop://focus` or starting capbridge again shows it);
                        // else minimized, so it is never out of reach.
                        let (icon, reason) = tray_report(&tray, &tokio);
                        let status_window = if icon == TrayIcon::Shown {
                            windows.status.0.set_visible(false);
                            WindowState::Hidden
                        } else {
                            windows.status.0.set_minimized(true);
                            WindowState::Shown
                        };
                        report_tray(
                            &tray_state,
                            TrayState {
                                icon,
                                status_window,
                                reason,
                            },
                        );
                    } else {
                        *control_flow = ControlFlow::Exit;
                    }
                } else if let Some(id) = prompt_of(&windows, window_id) {
                    // Closing a prompt is an answer: no.
                    let _ = runtime.approvals().decide(
                        &id,
                        Decision::Reject,
                        capbridge_runtime::approvals::Decider::PromptWindow,
                    );
                    windows.prompts.remove(&id);
                    show_overlay(&windows, &runtime);
                }
            }
            Event::LoopDestroyed => {
                windows.prompts.clear();
                if let Some(notifier) = notifier.take() {
                    tokio.block_on(notifier.stop());
                }
                tokio.block_on(bridge.stop());
                println!("capbridge: stopped");
            }
            _ => {}
        }
    });
}

/// Shows the status window (in front, with the view `action` asks for).
fn show_status(windows: &Windows, tray: &watch::Sender<TrayState>, action: instance::Action) {
    let (window, webview) = &windows.status;
    window.set_visible(true);
    window.set_minimized(false);
    let view = match action {
        instance::Action::Settings => Some("#settings"),
        instance::Action::Open => Some("#status"),
        _ => None,
    };
    if let Some(view) = view {
        let _ = webview.evaluate_script(&format!("location.hash = {view:?}"));
    }
    window.set_focus();
    let now = TrayState {
        status_window: WindowState::Shown,
        ..tray.borrow().clone()
    };
    report_tray(tray, now);
}

/// The tray as the contract reports it: `off` without tray mode; `shown` when the icon is
/// made and a tray on this desktop shows it; else `unavailable`, with why.
fn tray_report(
    tray: &Option<Result<tray::Tray, String>>,
    tokio: &tokio::runtime::Runtime,
) -> (TrayIcon, Option<String>) {
    match tray {
        None => (
            TrayIcon::Off,
            Some(capbridge_api::tray::TRAY_MODE_OFF.into()),
        ),
        Some(Err(reason)) => (TrayIcon::Unavailable, Some(reason.clone())),
        Some(Ok(_)) if tokio.block_on(tray::host_present()) => (TrayIcon::Shown, None),
        Some(Ok(_)) => (TrayIcon::Unavailable, Some(tray::NO_TRAY.into())),
    }
}

/// Reported in `/api/v1/bridge/runtime`, and as `bridge.runtime.updated` when it changes.
fn report_tray(tray: &watch::Sender<TrayState>, now: TrayState) {
    tray.send_if_modified(|tray| {
        let changed = *tray != now;
        *tray = now;
        changed
    });
}

/// capbridge's icon (`ui/icon.png`) as RGBA pixels, width and height.
fn icon_rgba() -> (Vec<u8>, u32, u32) {
    static ICON: std::sync::LazyLock<(Vec<u8>, u32, u32)> = std::sync::LazyLock::new(|| {
        let decoder =
            png::Decoder::new(std::io::Cursor::new(include_bytes!("../../../ui/icon.png")));
        let mut reader = decoder.read_info().expect("ui/icon.png is a PNG");
        let mut pixels = vec![0; reader.output_buffer_size().expect("a small image")];
        let frame = reader.next_frame(&mut pixels).expect("ui/icon.png decodes");
        assert_eq!(
            frame.color_type,
            png::ColorType::Rgba,
            "ui/icon.png is RGBA"
        );
        pixels.truncate(frame.buffer_size());
        (pixels, frame.width, frame.height)
    });
    ICON.clone()
}

/// The overlay is never on screen together with a prompt: nothing a component shows can cover
/// or imitate the prompt a person answers.
fn show_overlay(windows: &Windows, runtime: &Runtime) {
    if let Some(overlay) = &windows.overlay {
        // Pending prompts, not prompt windows: a prompt whose window did not open counts too.
        let prompt_waiting = runtime.approvals().any_pending();
        overlay.show_unless(prompt_waiting || !windows.prompts.is_empty());
    }
}

fn prompt_of(windows: &Windows, window: WindowId) -> Option<String> {
    windows
        .prompts
        .iter()
        .find(|(_, (w, _))| w.id() == window)
        .map(|(id, _)| id.clone())
}

/// A prompt window for each pending prompt without one; prompts answered or timed out lose
/// theirs.
fn open_prompt_windows(
    target: &EventLoopWindowTarget<Shell>,
    windows: &mut Windows,
    runtime: &Runtime,
    app: &Arc<App>,
    proxy: &EventLoopProxy<Shell>,
) {
    let pending = runtime.approvals().pending();
    windows
        .prompts
        .retain(|id, _| pending.iter().any(|p| &p.id == id));
    for prompt in pending {
        if windows.prompts.contains_key(&prompt.id) {
            continue;
        }
        let builder = WindowBuilder::new()
            .with_title(format!("capbridge: allow? ({})", prompt.id))
            .with_inner_size(tao::dpi::LogicalSize::new(560.0, 420.0))
            .with_always_on_top(true);
        match open_page(
            target,
            builder,
            &format!("prompt.html#{}", prompt.id),
            app,
            proxy,
        ) {
            Ok(window) => {
                window.0.set_focus();
                windows.prompts.insert(prompt.id, window);
            }
            Err(e) => tracing::error!("cannot open the prompt window for {}: {e:#}", prompt.id),
        }
    }
}

/// A window showing one of the app's pages, in its own web context with the app's scheme.
fn open_page(
    target: &EventLoopWindowTarget<Shell>,
    builder: WindowBuilder,
    page: &str,
    app: &Arc<App>,
    proxy: &EventLoopProxy<Shell>,
) -> anyhow::Result<(Window, WebView)> {
    let (rgba, width, height) = icon_rgba();
    let window = builder
        .with_window_icon(Icon::from_rgba(rgba, width, height).ok())
        .build(target)?;
    let app = app.clone();
    let responder_proxy = proxy.clone();
    let webview = WebViewBuilder::new()
        // Its own ephemeral context: nothing persists, and only these pages have the scheme.
        .with_incognito(true)
        .with_devtools(cfg!(debug_assertions))
        .with_asynchronous_custom_protocol(
            app_protocol::SCHEME.into(),
            move |_webview, request, responder| {
                let app = app.clone();
                let proxy = responder_proxy.clone();
                tokio::spawn(async move {
                    let reply = app.handle(request).await;
                    let _ = proxy.send_event(Shell::Respond(responder, reply));
                });
            },
        )
        .with_navigation_handler(|url| match navigation::decide(&url) {
            Navigation::Allow => true,
            Navigation::OpenInBrowser(url) => {
                navigation::open_in_browser(&url);
                false
            }
            Navigation::Refuse => {
                tracing::warn!("navigation refused: {url}");
                false
            }
        })
        .with_new_window_req_handler(|url, _| {
            tracing::warn!("window.open refused: {url}");
            wry::NewWindowResponse::Deny
        })
        .with_url(format!("{}/{page}", app_protocol::ORIGIN));
    let webview = {
        use tao::platform::unix::WindowExtUnix;
        use wry::WebViewBuilderExtUnix;
        let vbox = window
            .default_vbox()
            .ok_or_else(|| anyhow::anyhow!("the window has no GTK box"))?;
        webview.build_gtk(vbox)?
    };
    Ok((window, webview))
}

/// Second launches (`capbridge osloop://…`) are answered here: `ensure-server` binds the
/// port if it is not bound (the launch prints what happened), the others show the window.
fn answer_second_launches(
    listener: std::os::unix::net::UnixListener,
    bridge: Arc<Bridge>,
    proxy: EventLoopProxy<Shell>,
) {
    use instance::{Action, Reply};
    tokio::spawn(instance::serve(listener, move |action| {
        let bridge = bridge.clone();
        let proxy = proxy.clone();
        async move {
            match action {
                Action::EnsureServer => match bridge.ensure().await {
                    Ok(port) => Reply {
                        ok: true,
                        message: format!("capbridge listening on http://127.0.0.1:{port}"),
                    },
                    Err(error) => Reply {
                        ok: false,
                        message: error,
                    },
                },
                shown => {
                    let sent = proxy.send_event(Shell::Show(shown));
                    Reply {
                        ok: sent.is_ok(),
                        message: "capbridge: the status window is shown".into(),
                    }
                }
            }
        }
    }));
}

/// Prompt windows open and close as prompts come and go.
fn watch_prompts(runtime: &Runtime, proxy: EventLoopProxy<Shell>) {
    let mut changed = runtime.approvals().changed();
    tokio::spawn(async move {
        while changed.changed().await.is_ok() {
            if proxy.send_event(Shell::PromptsChanged).is_err() {
                break;
            }
        }
    });
}

fn quit_on_signals(proxy: EventLoopProxy<Shell>) {
    tokio::spawn(async move {
        let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        let _ = proxy.send_event(Shell::Quit);
    });
}
