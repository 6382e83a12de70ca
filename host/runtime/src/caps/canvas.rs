//! `capbridge:host/canvas`: one HTML overlay on the person's screen (seed 001's canvas).
//!
//! The host keeps who owns the overlay and checks every call; the window itself belongs to the
//! desktop shell, which attaches itself as the [`Screen`] ([`CanvasService::attach`]). Without
//! a shell (`capbridge serve`, the CLI) every call is `unavailable`.

use std::sync::{Arc, Mutex};

use capbridge_policy::{ExplainLine, Grant, GrantContext, GrantKind, Policy};
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::json;
use wasmtime::component::{HasSelf, Linker};

use super::capbridge::host::canvas::{
    self as wit, Host, Patch as GuestPatch, Position as GuestPosition,
};
use super::{Capability, GuestError, HostContext, Service};
use crate::audit::{AuditLog, Outcome};
use crate::state::HostState;

/// Largest overlay document.
pub const MAX_HTML_BYTES: usize = 1024 * 1024;
/// Largest width or height, in pixels.
pub const MAX_SIZE: f64 = 8192.0;
/// Farthest corner from the screen's origin, in pixels.
pub const MAX_OFFSET: f64 = 16384.0;

/// The capability: `grants.canvas = true`.
pub struct Canvas;

#[derive(Debug)]
pub struct CanvasGrant;

impl Grant for CanvasGrant {
    fn explain(&self, _policy: &Policy) -> Vec<ExplainLine> {
        vec![ExplainLine::plain(
            "Can show HTML it chooses in an overlay on top of every window (click-through, no \
             script, no network), for the session that asked; hidden while a prompt is open."
                .to_string(),
        )]
    }
}

impl GrantKind for Canvas {
    fn key(&self) -> &'static str {
        "canvas"
    }

    fn schema(&self, _generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        super::flag_schema(
            "Whether the component may show an HTML overlay on the screen (`capbridge:host/canvas`).",
        )
    }

    fn parse(
        &self,
        value: toml::Value,
        _cx: &mut GrantContext<'_>,
    ) -> Result<Option<Arc<dyn Grant>>, toml::de::Error> {
        super::read_flag(value, CanvasGrant)
    }

    fn not_granted(&self) -> &'static str {
        "no overlay on the screen"
    }

    fn widening(&self) -> &'static str {
        "granted where it was not"
    }
}

impl Capability for Canvas {
    fn interfaces(&self) -> &'static [&'static str] {
        &["capbridge:host/canvas"]
    }

    fn summary(&self) -> &'static str {
        "show an HTML overlay on the screen (click-through, no script or network) for the session that asked"
    }

    fn add_to_linker(&self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)
    }

    fn start(&self, host: &HostContext<'_>) -> Option<Arc<dyn Service>> {
        Some(Arc::new(CanvasService::new(host.audit.clone())))
    }
}

/// Where an overlay is, in screen pixels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Position {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

/// What the screen is asked to do; the shell does it on its own thread.
#[derive(Clone, Debug, PartialEq)]
pub enum Overlay {
    Show {
        html: String,
        position: Position,
    },
    Update {
        html: Option<String>,
        position: Option<Position>,
    },
    Hide,
}

/// The desktop shell's side: it shows what it is told.
pub trait Screen: Send + Sync {
    fn overlay(&self, change: Overlay);
}

/// Who owns the overlay, and the screen it is on.
pub struct CanvasService {
    inner: Mutex<Inner>,
    audit: AuditLog,
}

#[derive(Default)]
struct Inner {
    screen: Option<Arc<dyn Screen>>,
    /// The session whose overlay is shown (`Some(None)`: a call outside any session).
    owner: Option<Option<u64>>,
}

impl CanvasService {
    pub fn new(audit: AuditLog) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            audit,
        }
    }

    /// The desktop shell shows overlays from now on.
    pub fn attach(&self, screen: Arc<dyn Screen>) {
        self.lock().screen = Some(screen);
    }

    /// The session whose overlay is shown, if any.
    pub fn owner(&self) -> Option<Option<u64>> {
        self.lock().owner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn show(
        &self,
        component: &str,
        session: Option<u64>,
        html: String,
        position: Position,
    ) -> Result<(), GuestError> {
        let result = (|| {
            check_html(&html)?;
            check_position(&position)?;
            let mut inner = self.lock();
            let screen = screen(&inner)?;
            if let Some(owner) = inner.owner {
                if owner != session {
                    return Err(GuestError::Conflict(
                        "another session's overlay is shown; it must hide it first".into(),
                    ));
                }
            }
            inner.owner = Some(session);
            screen.overlay(Overlay::Show { html, position });
            Ok(())
        })();
        self.record(
            "canvas.shown",
            component,
            session,
            &result,
            json!({ "position": position }),
        );
        result
    }

    pub fn update(
        &self,
        component: &str,
        session: Option<u64>,
        html: Option<String>,
        position: Option<Position>,
    ) -> Result<(), GuestError> {
        let result = (|| {
            if let Some(html) = &html {
                check_html(html)?;
            }
            if let Some(position) = &position {
                check_position(position)?;
            }
            let inner = self.lock();
            let screen = screen(&inner)?;
            owned(&inner, session)?;
            screen.overlay(Overlay::Update { html, position });
            Ok(())
        })();
        self.record(
            "canvas.updated",
            component,
            session,
            &result,
            json!({ "position": position }),
        );
        result
    }

    pub fn hide(&self, component: &str, session: Option<u64>) -> Result<(), GuestError> {
        let result = (|| {
            let mut inner = self.lock();
            let screen = screen(&inner)?;
            owned(&inner, session)?;
            inner.owner = None;
            screen.overlay(Overlay::Hide);
            Ok(())
        })();
        self.record("canvas.hidden", component, session, &result, json!(null));
        result
    }

    /// Hides the overlay of sessions `ended` accepts.
    fn hide_where(&self, ended: impl Fn(Option<u64>) -> bool) {
        let mut inner = self.lock();
        if let (Some(owner), Some(screen)) = (inner.owner, inner.screen.clone()) {
            if ended(owner) {
                inner.owner = None;
                screen.overlay(Overlay::Hide);
            }
        }
    }

    fn record(
        &self,
        kind: &str,
        component: &str,
        session: Option<u64>,
        result: &Result<(), GuestError>,
        detail: serde_json::Value,
    ) {
        let (outcome, detail) = match result {
            Ok(()) => (Outcome::Allowed, detail),
            Err(e) => (Outcome::Denied, json!({ "error": e.to_string() })),
        };
        self.audit
            .record(kind, Some(component), session, outcome, detail);
    }
}

fn screen(inner: &Inner) -> Result<Arc<dyn Screen>, GuestError> {
    inner.screen.clone().ok_or_else(|| {
        GuestError::Unavailable(
            "no screen: capbridge runs without its desktop shell (`capbridge serve`, or no \
             display); start `capbridge` on a desktop to show overlays"
                .into(),
        )
    })
}

fn owned(inner: &Inner, session: Option<u64>) -> Result<(), GuestError> {
    match inner.owner {
        Some(owner) if owner == session => Ok(()),
        Some(_) => Err(GuestError::NotFound(
            "this session has no overlay (another session's is shown)".into(),
        )),
        None => Err(GuestError::NotFound("this session has no overlay".into())),
    }
}

fn check_html(html: &str) -> Result<(), GuestError> {
    if html.len() > MAX_HTML_BYTES {
        return Err(GuestError::TooLarge(format!(
            "html is {} bytes; at most {MAX_HTML_BYTES}",
            html.len()
        )));
    }
    Ok(())
}

fn check_position(p: &Position) -> Result<(), GuestError> {
    let finite = [p.x, p.y, p.width, p.height].iter().all(|v| v.is_finite());
    if !finite {
        return Err(GuestError::InvalidArgument(
            "position: x, y, width and height must be finite numbers".into(),
        ));
    }
    if !(1.0..=MAX_SIZE).contains(&p.width) || !(1.0..=MAX_SIZE).contains(&p.height) {
        return Err(GuestError::InvalidArgument(format!(
            "position: width and height must be from 1 to {MAX_SIZE} pixels"
        )));
    }
    if p.x.abs() > MAX_OFFSET || p.y.abs() > MAX_OFFSET {
        return Err(GuestError::InvalidArgument(format!(
            "position: x and y must be within ±{MAX_OFFSET} pixels"
        )));
    }
    Ok(())
}

impl Service for CanvasService {
    fn end_session(&self, session: u64) -> BoxFuture<'_, ()> {
        self.hide_where(|owner| owner == Some(session));
        Box::pin(async {})
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.hide_where(|_| true);
        Box::pin(async {})
    }
}

impl From<GuestPosition> for Position {
    fn from(p: GuestPosition) -> Self {
        Position {
            x: p.x,
            y: p.y,
            width: p.width,
            height: p.height,
        }
    }
}

impl HostState {
    fn canvas(&self) -> wasmtime::Result<&CanvasService> {
        self.grants
            .services
            .get::<CanvasService>()
            .ok_or_else(|| wasmtime::format_err!("the canvas service is not running"))
    }
}

impl Host for HostState {
    async fn show(
        &mut self,
        html: String,
        position: GuestPosition,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        let grants = &self.grants;
        Ok(self.canvas()?.show(
            &grants.policy.component_id,
            grants.session,
            html,
            position.into(),
        ))
    }

    async fn update(&mut self, patch: GuestPatch) -> wasmtime::Result<Result<(), GuestError>> {
        let grants = &self.grants;
        Ok(self.canvas()?.update(
            &grants.policy.component_id,
            grants.session,
            patch.html,
            patch.position.map(Position::from),
        ))
    }

    async fn hide(&mut self) -> wasmtime::Result<Result<(), GuestError>> {
        let grants = &self.grants;
        Ok(self
            .canvas()?
            .hide(&grants.policy.component_id, grants.session))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the shell was asked to do (the real shell is tested under Xvfb by the CLI's tests).
    #[derive(Default)]
    struct Recorded(Mutex<Vec<Overlay>>);

    impl Screen for Recorded {
        fn overlay(&self, change: Overlay) {
            self.0.lock().unwrap().push(change);
        }
    }

    const AT: Position = Position {
        x: 10.0,
        y: 20.0,
        width: 300.0,
        height: 100.0,
    };

    #[test]
    fn without_a_screen_every_call_is_unavailable() {
        let canvas = CanvasService::new(AuditLog::off());
        for result in [
            canvas.show("c", Some(1), "x".into(), AT),
            canvas.update("c", Some(1), None, None),
            canvas.hide("c", Some(1)),
        ] {
            assert!(
                matches!(result, Err(GuestError::Unavailable(_))),
                "{result:?}"
            );
        }
    }

    #[test]
    fn only_the_session_that_showed_the_overlay_changes_it() {
        let canvas = CanvasService::new(AuditLog::off());
        let screen = Arc::new(Recorded::default());
        canvas.attach(screen.clone());
        canvas.show("c", Some(1), "<b>one</b>".into(), AT).unwrap();
        assert!(matches!(
            canvas.show("c", Some(2), "two".into(), AT),
            Err(GuestError::Conflict(_))
        ));
        assert!(matches!(
            canvas.update("c", Some(2), Some("two".into()), None),
            Err(GuestError::NotFound(_))
        ));
        assert!(matches!(
            canvas.hide("c", Some(2)),
            Err(GuestError::NotFound(_))
        ));
        canvas
            .update("c", Some(1), None, Some(Position { x: 0.0, ..AT }))
            .unwrap();
        canvas.hide("c", Some(1)).unwrap();
        assert!(matches!(
            canvas.hide("c", Some(1)),
            Err(GuestError::NotFound(_))
        ));
        // Free again: another session may show one.
        canvas.show("c", Some(2), "two".into(), AT).unwrap();
        assert_eq!(screen.0.lock().unwrap().len(), 4);
    }

    #[test]
    fn a_session_that_ends_loses_its_overlay() {
        let canvas = CanvasService::new(AuditLog::off());
        let screen = Arc::new(Recorded::default());
        canvas.attach(screen.clone());
        canvas.show("c", Some(7), "x".into(), AT).unwrap();
        futures_util::FutureExt::now_or_never(canvas.end_session(8)).unwrap();
        assert_eq!(
            canvas.owner(),
            Some(Some(7)),
            "another session's end changes nothing"
        );
        futures_util::FutureExt::now_or_never(canvas.end_session(7)).unwrap();
        assert_eq!(canvas.owner(), None);
        assert_eq!(screen.0.lock().unwrap().last(), Some(&Overlay::Hide));
    }

    #[test]
    fn bad_sizes_and_content_are_refused_and_change_nothing() {
        let canvas = CanvasService::new(AuditLog::off());
        let screen = Arc::new(Recorded::default());
        canvas.attach(screen.clone());
        for position in [
            Position { width: 0.0, ..AT },
            Position {
                height: 9000.0,
                ..AT
            },
            Position { x: f64::NAN, ..AT },
            Position {
                y: f64::INFINITY,
                ..AT
            },
            Position { x: -20000.0, ..AT },
        ] {
            let result = canvas.show("c", Some(1), "x".into(), position);
            assert!(
                matches!(result, Err(GuestError::InvalidArgument(_))),
                "{position:?}"
            );
        }
        let big = "x".repeat(MAX_HTML_BYTES + 1);
        assert!(matches!(
            canvas.show("c", Some(1), big, AT),
            Err(GuestError::TooLarge(_))
        ));
        assert!(screen.0.lock().unwrap().is_empty());
        assert_eq!(canvas.owner(), None);
    }
}
