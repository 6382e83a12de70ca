//! `capbridge:host/input`: mouse and keyboard input synthesized on the person's screen (seed
//! 001's action methods), through the X server's XTEST extension.
//!
//! The most dangerous thing capbridge can do, so a grant is not enough (ADR 0009):
//! - **a person turns automation on**: the first call of a session asks (an `automation`
//!   prompt, never whitelistable) and automation then stays on for that session and component
//!   for [`AUTOMATION_DURATION`], until the session ends, or until someone stops it
//!   ([`InputService::stop_all`]: the status window's button, the tray, `capbridge
//!   stop-input`), which also interrupts a running drag;
//! - **input waits for no prompt**: while any prompt is open every call is refused, so no
//!   component can answer one;
//! - **capbridge's windows are out of reach**: a point on a window of this process, or keys
//!   while one of them has the focus, is refused;
//! - **every action is audited** (`input.*`: what, where, component, session), typed text only
//!   when its target is an element that is not a password field.

mod xtest;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capbridge_policy::{ExplainLine, Grant, GrantContext, GrantKind, Policy};
use futures_util::future::BoxFuture;
use serde_json::json;
use wasmtime::component::{HasSelf, Linker};

use super::accessibility::AccessibilityService;
use super::capbridge::host::accessibility::Element;
use super::capbridge::host::input::{self as wit, Host, MouseButton, Point, Target, Window};
use super::{AuditEntry, Capability, GuestError, HostContext, Service};
use crate::approvals::{Approvals, Decision, Prompt};
use crate::audit::{AuditLog, Outcome};
use crate::state::HostState;

/// The capability: `grants.input = true`.
pub struct Input;

#[derive(Debug)]
pub struct InputGrant;

impl Grant for InputGrant {
    fn explain(&self, _policy: &Policy) -> Vec<ExplainLine> {
        vec![ExplainLine::risky(
            "Can move the mouse, click, type and press keys in any application on the screen, \
             once a person turns automation on for a session (and not in capbridge's own \
             windows, nor while a prompt is open)."
                .to_string(),
            Some(
                "it acts as the person: it can send messages, delete files, change settings in \
                 any open application"
                    .to_string(),
            ),
        )]
    }
}

impl GrantKind for Input {
    fn key(&self) -> &'static str {
        "input"
    }

    fn schema(&self, _generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        super::flag_schema(
            "Whether the component may synthesize mouse and keyboard input once a person \
             turns automation on (`capbridge:host/input`).",
        )
    }

    fn parse(
        &self,
        value: toml::Value,
        _cx: &mut GrantContext<'_>,
    ) -> Result<Option<Arc<dyn Grant>>, toml::de::Error> {
        super::read_flag(value, InputGrant)
    }

    fn not_granted(&self) -> &'static str {
        "no clicks, no typing, no keys, no window focus"
    }

    fn widening(&self) -> &'static str {
        "granted where it was not"
    }
}

impl Capability for Input {
    fn interfaces(&self) -> &'static [&'static str] {
        &["capbridge:host/input"]
    }

    fn summary(&self) -> &'static str {
        "click, type, press keys, scroll, drag and focus windows, once a person turns automation on for the session"
    }

    fn add_to_linker(&self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)
    }

    fn start(&self, host: &HostContext<'_>) -> Option<Arc<dyn Service>> {
        Some(Arc::new(InputService::new(
            host.audit.clone(),
            host.approvals.clone(),
        )))
    }
}

/// Roles of the elements whose typed text the audit log keeps (never `password text`).
const PLAIN_TEXT_ROLES: &[&str] = &["text", "entry", "editbar", "paragraph"];

/// How long automation stays on once a person turned it on.
pub const AUTOMATION_DURATION: Duration = Duration::from_secs(15 * 60);
/// Most characters one `type-text` types.
pub const MAX_TEXT_CHARS: usize = 10_000;
/// Longest drag.
pub const MAX_DRAG_MS: u32 = 10_000;
/// Most scroll steps in one call, each way.
pub const MAX_SCROLL_STEPS: f64 = 100.0;

/// Automation a person turned on: who may act, for which session, until when.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Automation {
    pub component: String,
    pub session: u64,
    /// When it ends, in milliseconds since the Unix epoch.
    pub until_ms: u64,
    /// When a component last acted under it (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action_ms: Option<u64>,
}

pub struct InputService {
    audit: AuditLog,
    approvals: Approvals,
    /// Automation on, by session and component, with when it ends.
    on: Mutex<HashMap<(u64, String), (Instant, Automation)>>,
    /// One automation prompt at a time (while it is open, other calls are refused: a prompt
    /// is open).
    asking: tokio::sync::Mutex<()>,
    /// Bumped by every stop; an action started before it stops at its next step.
    stops: Arc<AtomicU64>,
    /// The clipboard `paste` uses, kept so the text it puts back stays there (X11: the
    /// clipboard lives in its owner).
    clipboard: Arc<Mutex<Option<arboard::Clipboard>>>,
}

impl Service for InputService {
    fn end_session(&self, session: u64) -> BoxFuture<'_, ()> {
        self.turn_off(|(s, _)| *s == session, "the session ended");
        Box::pin(async {})
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.stop_all();
        Box::pin(async {})
    }
}

/// Who acts: the component, its session, and what its policy lets it reach.
struct Caller<'a> {
    component: &'a str,
    session: Option<u64>,
    policy: &'a Policy,
    /// The accessibility service, when the policy grants it (refs need it).
    accessibility: Option<&'a AccessibilityService>,
}

impl InputService {
    fn new(audit: AuditLog, approvals: Approvals) -> Self {
        InputService {
            audit,
            approvals,
            on: Mutex::new(HashMap::new()),
            asking: tokio::sync::Mutex::new(()),
            stops: Arc::new(AtomicU64::new(0)),
            clipboard: Arc::new(Mutex::new(None)),
        }
    }

    /// Where automation is on now, by session and component.
    pub fn active(&self) -> Vec<Automation> {
        self.expire();
        let mut list: Vec<Automation> = (self.on.lock().expect("automation lock"))
            .values()
            .map(|(_, automation)| automation.clone())
            .collect();
        list.sort_by(|a, b| (a.session, &a.component).cmp(&(b.session, &b.component)));
        list
    }

    /// Turns all automation off and interrupts whatever action is running; the next call of
    /// any session asks a person again. How many were on.
    pub fn stop_all(&self) -> usize {
        self.stops.fetch_add(1, Ordering::SeqCst);
        let stopped = self.turn_off(|_| true, "stopped by the person");
        self.audit.record(
            "input.automation_stopped",
            None,
            None,
            Outcome::Allowed,
            json!({ "stopped": stopped }),
        );
        stopped
    }

    /// Turns off the automation `which` picks; how many.
    fn turn_off(&self, which: impl Fn(&(u64, String)) -> bool, why: &str) -> usize {
        let mut on = self.on.lock().expect("automation lock");
        let before = on.len();
        on.retain(|key, _| !which(key));
        let stopped = before - on.len();
        if stopped > 0 {
            tracing::warn!(target: "capbridge::input", "automation off ({why}): {stopped} stopped");
        }
        stopped
    }

    fn expire(&self) {
        let now = Instant::now();
        let mut on = self.on.lock().expect("automation lock");
        let before = on.len();
        on.retain(|_, (until, _)| *until > now);
        if on.len() != before {
            tracing::warn!(target: "capbridge::input", "automation off: its time ended");
        }
    }

    /// Refuses unless a person has turned automation on for `caller` (asking them first when
    /// nobody has yet) and no prompt is open. The stop generation the action runs under: read
    /// first, so a stop at any point from here on stops it.
    async fn allowed(self: &Arc<Self>, caller: &Caller<'_>) -> Result<u64, GuestError> {
        let generation = self.stops.load(Ordering::SeqCst);
        let Some(session) = caller.session else {
            return Err(GuestError::Denied(
                "input acts only for a session (of the contract or of the desktop bridge \
                 socket), where a person can turn automation on"
                    .into(),
            ));
        };
        self.refuse_while_prompting()?;
        let key = (session, caller.component.to_string());
        self.expire();
        if self.is_on(&key) {
            return Ok(generation);
        }
        let _asking = self.asking.lock().await;
        if self.is_on(&key) {
            return Ok(generation);
        }
        let minutes = AUTOMATION_DURATION.as_secs() / 60;
        let prompt = Prompt {
            id: String::new(),
            kind: "automation".into(),
            component: caller.component.to_string(),
            session: Some(session),
            run_id: None,
            server_id: None,
            summary: format!(
                "control the mouse and keyboard for session {session} for {minutes} minutes"
            ),
            program_path: None,
            cwd: None,
            url: None,
            env_names: Vec::new(),
            header_names: Vec::new(),
            has_stdin: false,
            warnings: vec![
                "it can click, type and press keys in any application on the screen (not in \
                 capbridge's own windows)"
                    .into(),
                "stop it at any time: the status window's Stop button, the tray menu, or \
                 `capbridge stop-input`"
                    .into(),
            ],
            whitelistable: false,
            created_at_ms: 0,
            expires_at_ms: 0,
        };
        let (prompt, answer) = self.approvals.ask(prompt).map_err(|e| {
            GuestError::Unavailable(format!("cannot ask the person to turn automation on: {e}"))
        })?;
        tracing::warn!(
            target: "capbridge::input",
            "{} asks to control the mouse and keyboard for session {session} (prompt {})",
            caller.component,
            prompt.id
        );
        // The answer is taken on a task of its own: when this call ends first (its deadline,
        // the client gone), the prompt still leaves the list when answered or timed out, and
        // the person's answer still counts (and is audited).
        let this = self.clone();
        let decided = tokio::spawn(async move {
            let answer = answer.await;
            this.decided(key, &prompt.id, answer, generation)
        });
        let allowed = decided
            .await
            .map_err(|e| GuestError::Unavailable(format!("the automation prompt failed: {e}")))?;
        if !allowed {
            return Err(GuestError::Denied(
                "automation is off: the person did not turn it on for this session".into(),
            ));
        }
        // The person may have opened another prompt meanwhile.
        self.refuse_while_prompting()?;
        Ok(generation)
    }

    /// Takes the person's `answer` to automation prompt `prompt` for `key`: on when allowed
    /// and nobody stopped automation since the ask (`generation`). Whether it is on.
    fn decided(
        &self,
        (session, component): (u64, String),
        prompt: &str,
        answer: crate::approvals::Answer,
        generation: u64,
    ) -> bool {
        let minutes = AUTOMATION_DURATION.as_secs() / 60;
        let allowed = answer.decision == Decision::AllowOnce
            && self.stops.load(Ordering::SeqCst) == generation;
        self.audit.record(
            "input.automation_asked",
            Some(&component),
            Some(session),
            if allowed {
                Outcome::Allowed
            } else {
                Outcome::Denied
            },
            json!({ "prompt": prompt, "by": answer.by.as_str(), "minutes": minutes }),
        );
        if !allowed {
            return false;
        }
        tracing::warn!(
            target: "capbridge::input",
            "automation ON: {component} may control the mouse and keyboard for session \
             {session} for {minutes} minutes (stop: `capbridge stop-input`)"
        );
        let automation = Automation {
            component: component.clone(),
            session,
            until_ms: crate::approvals::now_ms() + AUTOMATION_DURATION.as_millis() as u64,
            last_action_ms: None,
        };
        self.on.lock().expect("automation lock").insert(
            (session, component),
            (Instant::now() + AUTOMATION_DURATION, automation),
        );
        true
    }

    fn is_on(&self, key: &(u64, String)) -> bool {
        self.on.lock().expect("automation lock").contains_key(key)
    }

    fn refuse_while_prompting(&self) -> Result<(), GuestError> {
        refuse_while_prompting(&self.approvals)
    }

    /// Marks `caller`'s automation as used now (the status window shows it).
    fn used(&self, caller: &Caller<'_>) {
        let Some(session) = caller.session else {
            return;
        };
        let mut on = self.on.lock().expect("automation lock");
        if let Some((_, automation)) = on.get_mut(&(session, caller.component.to_string())) {
            automation.last_action_ms = Some(crate::approvals::now_ms());
        }
    }

    /// Runs `work` on the display, once `caller` may act, and audits it as `kind` with
    /// `detail`. One action at a time, host-wide. `work` gets a check that fails when a stop
    /// came, a prompt opened, or the call ended (its deadline, the client gone): the action
    /// stops at its next step, and is audited either way.
    async fn act<T: Send + 'static>(
        self: &Arc<Self>,
        caller: &Caller<'_>,
        kind: &'static str,
        detail: serde_json::Value,
        work: impl FnOnce(&xtest::Display, &Stop) -> Result<T, GuestError> + Send + 'static,
    ) -> Result<T, GuestError> {
        let mut acting = Acting {
            entry: AuditEntry::new(&self.audit, kind, caller.component, caller.session, detail),
            abandoned: Arc::new(AtomicBool::new(false)),
        };
        let result = match self.allowed(caller).await {
            Ok(generation) => {
                self.used(caller);
                let stop = Stop {
                    stops: self.stops.clone(),
                    generation,
                    approvals: self.approvals.clone(),
                    abandoned: acting.abandoned.clone(),
                };
                blocking(move || {
                    // One action at a time: two at once would mix their keys and remaps.
                    static TURN: Mutex<()> = Mutex::new(());
                    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
                    stop.check()?;
                    let display = xtest::Display::open()?;
                    work(&display, &stop)
                })
                .await
            }
            Err(e) => Err(e),
        };
        acting.entry.finish(&result, |_, _| {});
        result
    }
}

/// An action's audit entry; dropped before the action ended (the call's deadline, the client
/// gone), it also tells the action to stop.
struct Acting<'a> {
    entry: AuditEntry<'a>,
    abandoned: Arc<AtomicBool>,
}

impl Drop for Acting<'_> {
    fn drop(&mut self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }
}

fn refuse_while_prompting(approvals: &Approvals) -> Result<(), GuestError> {
    if !approvals.any_pending() {
        Ok(())
    } else {
        Err(GuestError::Unavailable(
            "input is paused while a prompt is open: a person must answer it first".into(),
        ))
    }
}

/// Whether an action may go on: no stop since it started, no prompt open, its call not gone.
pub struct Stop {
    stops: Arc<AtomicU64>,
    generation: u64,
    approvals: Approvals,
    abandoned: Arc<AtomicBool>,
}

impl Stop {
    fn check(&self) -> Result<(), GuestError> {
        if self.stops.load(Ordering::SeqCst) != self.generation {
            return Err(GuestError::Denied(
                "automation was stopped by the person".into(),
            ));
        }
        if self.abandoned.load(Ordering::SeqCst) {
            return Err(GuestError::Unavailable(
                "the call ended before the action did".into(),
            ));
        }
        refuse_while_prompting(&self.approvals)
    }
}

/// A target resolved to a point now: where, and the element when it was a ref.
struct Aim {
    point: Point,
    element: Option<Element>,
}

impl HostState {
    fn input(&self) -> wasmtime::Result<Arc<InputService>> {
        self.grants
            .services
            .get_arc::<InputService>()
            .ok_or_else(|| wasmtime::format_err!("the input service is not running"))
    }

    fn caller(&self) -> Caller<'_> {
        Caller {
            component: &self.grants.policy.component_id,
            session: self.grants.session,
            policy: &self.grants.policy,
            accessibility: self.grants.services.get::<AccessibilityService>(),
        }
    }
}

impl Caller<'_> {
    /// [`Caller::aim`] when there is a target.
    async fn aim_if_any(&self, target: Option<&Target>) -> Result<Option<Aim>, GuestError> {
        match target {
            Some(target) => self.aim(target).await.map(Some),
            None => Ok(None),
        }
    }

    /// Where `target` is now: a point as given, or the centre of a ref's element as it is now.
    async fn aim(&self, target: &Target) -> Result<Aim, GuestError> {
        match target {
            Target::Point(point) => Ok(Aim {
                point: *point,
                element: None,
            }),
            Target::Element(reference) => {
                let Some(accessibility) = self.accessibility else {
                    return Err(GuestError::Denied(super::denial(
                        self.component,
                        "act on an element by its ref",
                        "`accessibility`",
                        &self.policy.source,
                    )));
                };
                let element = accessibility.resolve(self.session, reference).await?;
                let frame = element.frame;
                Ok(Aim {
                    point: Point {
                        x: f64::from(frame.x) + f64::from(frame.width) / 2.0,
                        y: f64::from(frame.y) + f64::from(frame.height) / 2.0,
                    },
                    element: Some(element),
                })
            }
        }
    }
}

fn where_json(aim: &Aim) -> serde_json::Value {
    json!({
        "x": aim.point.x,
        "y": aim.point.y,
        "ref": aim.element.as_ref().map(|e| e.ref_.clone()),
        "role": aim.element.as_ref().map(|e| e.role.clone()),
    })
}

fn button_number(button: MouseButton) -> u8 {
    match button {
        MouseButton::Left => 1,
        MouseButton::Middle => 2,
        MouseButton::Right => 3,
    }
}

fn button_name(button: MouseButton) -> &'static str {
    match button {
        MouseButton::Left => "left",
        MouseButton::Middle => "middle",
        MouseButton::Right => "right",
    }
}

/// `work` on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, GuestError> + Send + 'static,
) -> Result<T, GuestError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(GuestError::Unavailable(format!(
            "the input task failed: {e}"
        )))
    })
}

impl Host for HostState {
    async fn click(
        &mut self,
        target: Target,
        button: MouseButton,
        count: u32,
    ) -> wasmtime::Result<Result<Point, GuestError>> {
        let input = self.input()?;
        let caller = self.caller();
        if !(1..=3).contains(&count) {
            return Ok(Err(GuestError::InvalidArgument(format!(
                "count is {count}: 1 (click), 2 (double-click) or 3"
            ))));
        }
        let aim = match caller.aim(&target).await {
            Ok(aim) => aim,
            Err(e) => return Ok(Err(e)),
        };
        let mut detail = where_json(&aim);
        detail["button"] = json!(button_name(button));
        detail["count"] = json!(count);
        let point = aim.point;
        Ok(input
            .act(&caller, "input.clicked", detail, move |display, stop| {
                let (x, y) = display.reach(point)?;
                display.move_to(x, y)?;
                for _ in 0..count {
                    stop.check()?;
                    display.button(button_number(button), true)?;
                    display.button(button_number(button), false)?;
                }
                display.sync()?;
                Ok(point)
            })
            .await)
    }

    async fn move_to(&mut self, target: Target) -> wasmtime::Result<Result<Point, GuestError>> {
        let input = self.input()?;
        let caller = self.caller();
        let aim = match caller.aim(&target).await {
            Ok(aim) => aim,
            Err(e) => return Ok(Err(e)),
        };
        let point = aim.point;
        Ok(input
            .act(
                &caller,
                "input.moved",
                where_json(&aim),
                move |display, _| {
                    let (x, y) = display.reach(point)?;
                    display.move_to(x, y)?;
                    display.sync()?;
                    Ok(point)
                },
            )
            .await)
    }

    async fn scroll(
        &mut self,
        target: Option<Target>,
        delta_x: f64,
        delta_y: f64,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        let input = self.input()?;
        let caller = self.caller();
        let steps = |delta: f64, name: &str| -> Result<i32, GuestError> {
            if !delta.is_finite() || delta.abs() > MAX_SCROLL_STEPS {
                return Err(GuestError::InvalidArgument(format!(
                    "{name} is {delta}: at most {MAX_SCROLL_STEPS} steps each way"
                )));
            }
            Ok(delta.round() as i32)
        };
        let (dx, dy) = match (steps(delta_x, "delta-x"), steps(delta_y, "delta-y")) {
            (Ok(dx), Ok(dy)) => (dx, dy),
            (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
        };
        let aim = match caller.aim_if_any(target.as_ref()).await {
            Ok(aim) => aim,
            Err(e) => return Ok(Err(e)),
        };
        let mut detail = aim.as_ref().map(where_json).unwrap_or_else(|| json!({}));
        detail["delta_x"] = json!(dx);
        detail["delta_y"] = json!(dy);
        let point = aim.map(|a| a.point);
        Ok(input
            .act(&caller, "input.scrolled", detail, move |display, stop| {
                let (x, y) = match point {
                    Some(point) => display.reach(point)?,
                    None => display.pointer()?,
                };
                display.refuse_own_at(x, y)?;
                display.move_to(x, y)?;
                // X buttons 4 and 5 scroll up and down, 6 and 7 left and right.
                let vertical = if dy < 0 { 4 } else { 5 };
                let horizontal = if dx < 0 { 6 } else { 7 };
                for (button, count) in [
                    (vertical, dy.unsigned_abs()),
                    (horizontal, dx.unsigned_abs()),
                ] {
                    for _ in 0..count {
                        stop.check()?;
                        display.refuse_own_at(x, y)?;
                        display.button(button, true)?;
                        display.button(button, false)?;
                        display.sync()?;
                    }
                }
                Ok(())
            })
            .await)
    }

    async fn drag(
        &mut self,
        start: Target,
        end: Target,
        button: MouseButton,
        duration_ms: u32,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        let input = self.input()?;
        let caller = self.caller();
        if duration_ms > MAX_DRAG_MS {
            return Ok(Err(GuestError::InvalidArgument(format!(
                "duration-ms is {duration_ms}: at most {MAX_DRAG_MS}"
            ))));
        }
        let (from, to) = match (caller.aim(&start).await, caller.aim(&end).await) {
            (Ok(from), Ok(to)) => (from, to),
            (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
        };
        let detail = json!({
            "from": where_json(&from),
            "to": where_json(&to),
            "button": button_name(button),
            "duration_ms": duration_ms,
        });
        let (from, to) = (from.point, to.point);
        Ok(input
            .act(&caller, "input.dragged", detail, move |display, stop| {
                let (x0, y0) = display.reach(from)?;
                let (x1, y1) = display.reach(to)?;
                // A step every 16 ms (at least 8 steps, so toolkits see the pointer move past
                // their drag threshold), each checked before the button goes down and again
                // when the pointer gets there.
                let steps = (duration_ms / 16).max(8);
                let path: Vec<(i16, i16)> = (1..=steps)
                    .map(|step| {
                        let t = f64::from(step) / f64::from(steps);
                        let x = f64::from(x0) + (f64::from(x1) - f64::from(x0)) * t;
                        let y = f64::from(y0) + (f64::from(y1) - f64::from(y0)) * t;
                        (x.round() as i16, y.round() as i16)
                    })
                    .collect();
                for (x, y) in &path {
                    display.refuse_own_at(*x, *y)?;
                }
                display.move_to(x0, y0)?;
                display.button(button_number(button), true)?;
                display.sync()?;
                let mut result = Ok(());
                for (x, y) in path {
                    if let Err(e) = stop.check().and_then(|()| display.refuse_own_at(x, y)) {
                        result = Err(e);
                        break;
                    }
                    display.move_to(x, y)?;
                    display.sync()?;
                    std::thread::sleep(Duration::from_millis(u64::from(duration_ms / steps)));
                }
                if result.is_err() {
                    // Interrupted: the drop goes back where it started (checked above), not
                    // wherever the pointer was.
                    display.move_to(x0, y0)?;
                }
                display.button(button_number(button), false)?;
                display.sync()?;
                result
            })
            .await)
    }

    async fn type_text(
        &mut self,
        target: Option<Target>,
        text: String,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        let input = self.input()?;
        let caller = self.caller();
        let chars = text.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Ok(Err(GuestError::TooLarge(format!(
                "the text has {chars} characters; at most {MAX_TEXT_CHARS}"
            ))));
        }
        let aim = match caller.aim_if_any(target.as_ref()).await {
            Ok(aim) => aim,
            Err(e) => return Ok(Err(e)),
        };
        let mut detail = aim.as_ref().map(where_json).unwrap_or_else(|| json!({}));
        detail["chars"] = json!(chars);
        // The text is recorded only where it is known not to be a secret: typed into an
        // element that is a plain text field.
        detail["text"] = match aim.as_ref().and_then(|a| a.element.as_ref()) {
            Some(element) if element.role == "password text" => {
                json!("(withheld: a password field)")
            }
            Some(element) if PLAIN_TEXT_ROLES.contains(&element.role.as_str()) => json!(text),
            _ => json!("(withheld: the target is not a known text field)"),
        };
        let point = aim.map(|a| a.point);
        Ok(input
            .act(&caller, "input.typed", detail, move |display, stop| {
                if let Some(point) = point {
                    let (x, y) = display.reach(point)?;
                    display.move_to(x, y)?;
                    display.button(1, true)?;
                    display.button(1, false)?;
                    display.sync()?;
                    // The click gives the element the focus before the keys arrive.
                    std::thread::sleep(Duration::from_millis(50));
                }
                display.refuse_own_focus()?;
                display.type_text(&text, stop)
            })
            .await)
    }

    async fn key_combo(&mut self, keys: Vec<String>) -> wasmtime::Result<Result<(), GuestError>> {
        let input = self.input()?;
        let caller = self.caller();
        let keysyms = match xtest::keysyms_of_combo(&keys) {
            Ok(keysyms) => keysyms,
            Err(e) => return Ok(Err(e)),
        };
        Ok(input
            .act(
                &caller,
                "input.keys_pressed",
                json!({ "keys": keys }),
                move |display, _| {
                    display.refuse_own_focus()?;
                    display.combo(&keysyms)
                },
            )
            .await)
    }

    async fn paste(&mut self, text: String) -> wasmtime::Result<Result<(), GuestError>> {
        let input = self.input()?;
        let caller = self.caller();
        let chars = text.chars().count();
        if text.len() > 1 << 20 {
            return Ok(Err(GuestError::TooLarge(format!(
                "the text is {} bytes; at most 1 MiB",
                text.len()
            ))));
        }
        let detail = json!({ "chars": chars, "text": "(withheld: pasted text)" });
        // The clipboard outlives the call: X11 keeps a clipboard's text in its owner.
        let clipboard = input.clipboard.clone();
        Ok(input
            .act(&caller, "input.pasted", detail, move |display, _| {
                display.refuse_own_focus()?;
                let mut slot = clipboard.lock().expect("clipboard lock");
                if slot.is_none() {
                    *slot = Some(arboard::Clipboard::new().map_err(|e| {
                        GuestError::Unavailable(format!("cannot open the clipboard: {e}"))
                    })?);
                }
                let board = slot.as_mut().expect("just opened");
                let before = board.get_text().ok();
                board.set_text(text).map_err(|e| {
                    GuestError::Unavailable(format!("cannot set the clipboard: {e}"))
                })?;
                let pasted = display.combo(&[xtest::CONTROL, u32::from(b'v')]);
                // The application asks the clipboard's owner for the text after the keys
                // arrive: give it time before the earlier text is put back.
                std::thread::sleep(Duration::from_millis(300));
                let _ = match before {
                    Some(text) => board.set_text(text),
                    None => board.clear(),
                };
                pasted
            })
            .await)
    }

    async fn windows(&mut self) -> wasmtime::Result<Result<Vec<Window>, GuestError>> {
        let caller = self.caller();
        let input = self.input()?;
        let result = blocking(|| xtest::Display::open()?.windows()).await;
        input.audit.record(
            "input.windows_listed",
            Some(caller.component),
            caller.session,
            if result.is_ok() {
                Outcome::Allowed
            } else {
                Outcome::Denied
            },
            json!({ "windows": result.as_ref().map(Vec::len).ok() }),
        );
        Ok(result)
    }

    async fn focus_window(&mut self, id: u32) -> wasmtime::Result<Result<(), GuestError>> {
        let input = self.input()?;
        let caller = self.caller();
        Ok(input
            .act(
                &caller,
                "input.window_focused",
                json!({ "window": id }),
                move |display, _| display.focus(id),
            )
            .await)
    }
}
