//! `capbridge:host/awake`: sleep prevention shared by the whole host.
//!
//! Holds are counted per contract session. The first hold takes the system's inhibition through
//! the `keepawake` crate (on Linux: `org.freedesktop.ScreenSaver.Inhibit` on the D-Bus session
//! bus); releasing the last one gives it back (`UnInhibit`). A session that ends or expires has
//! its holds released by [`AwakeService::release_where`]. Every change is published on the event
//! bus as `awake.acquired` / `awake.released` with source `capbridge`.

use crate::audit::{AuditLog, Outcome};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use capbridge_policy::{ExplainLine, Grant, GrantContext, GrantKind, Policy};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::json;
use wasmtime::component::{HasSelf, Linker};

use super::capbridge::host::awake::{
    self as wit, AwakeStatus as GuestStatus, Hold as GuestHold, Host,
};
use super::events::{Event, EventBus};
use super::{Capability, GuestError, HostContext, Service};
use crate::state::HostState;

mod inhibitor;
#[cfg(test)]
mod tests;

pub use inhibitor::{Inhibition, Inhibitor, KeepAwakeInhibitor};

/// The capability: `grants.awake = true`.
pub struct Awake;

/// `grants.awake = true`.
#[derive(Debug)]
pub struct AwakeGrant;

impl Grant for AwakeGrant {
    fn explain(&self, _policy: &Policy) -> Vec<ExplainLine> {
        vec![ExplainLine::plain(
            "Can keep the machine awake (inhibit the screen saver and idle sleep) while a \
             session holds it; holds end with their session."
                .to_string(),
        )]
    }
}

impl GrantKind for Awake {
    fn key(&self) -> &'static str {
        "awake"
    }

    fn schema(&self, _generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        super::flag_schema(
            "Whether the component may keep the machine awake (`capbridge:host/awake`).",
        )
    }

    fn parse(
        &self,
        value: toml::Value,
        _cx: &mut GrantContext<'_>,
    ) -> Result<Option<Arc<dyn Grant>>, toml::de::Error> {
        super::read_flag(value, AwakeGrant)
    }

    fn not_granted(&self) -> &'static str {
        "no sleep prevention"
    }

    fn widening(&self) -> &'static str {
        "granted where it was not"
    }
}

impl Capability for Awake {
    fn interfaces(&self) -> &'static [&'static str] {
        &["capbridge:host/awake"]
    }

    fn summary(&self) -> &'static str {
        "keep the machine awake while a session holds it; holds end with their session"
    }

    fn add_to_linker(&self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)
    }

    fn start(&self, host: &HostContext<'_>) -> Option<Arc<dyn Service>> {
        Some(Arc::new(AwakeService::new(
            host.events.clone(),
            host.audit.clone(),
        )))
    }
}

impl Service for AwakeService {
    fn end_session(&self, session: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.release_where(|s| s == session).await;
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        // Nobody can hold sleep prevention for a host that is gone.
        Box::pin(async move {
            self.release_where(|_| true).await;
        })
    }
}

/// Longest reason accepted, in characters (the one limit: the component, the route and the
/// contract's docs all defer to it).
pub const MAX_REASON_CHARS: usize = 200;
/// Most holds one session (or the CLI) may have at once.
pub const MAX_HOLDS_PER_SESSION: usize = 32;
/// How long the system may take to grant sleep prevention before the hold is refused.
pub const INHIBIT_TIMEOUT: Duration = Duration::from_secs(5);

/// One hold on sleep prevention: what the host keeps, what the component returns, and what
/// the contract's routes answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    /// Opaque id, unique for the life of the host.
    pub id: String,
    /// Why the machine is kept awake (1 to 200 characters).
    pub reason: String,
    /// The component that took it.
    pub component: String,
    /// The session that holds it (none outside the contract).
    pub session: Option<u64>,
    /// Milliseconds since the Unix epoch.
    pub acquired_at_ms: u64,
}

/// Whether sleep is prevented, and every hold.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwakeStatus {
    /// Whether sleep is prevented right now (while any hold remains).
    pub active: bool,
    pub holds: Vec<Hold>,
}

/// Why a hold could not be taken or given back.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AwakeError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<AwakeError> for GuestError {
    fn from(e: AwakeError) -> Self {
        match e {
            AwakeError::InvalidArgument(m) => GuestError::InvalidArgument(m),
            AwakeError::NotFound(m) => GuestError::NotFound(m),
            AwakeError::Unavailable(m) => GuestError::Unavailable(m),
        }
    }
}

/// The host's one sleep-prevention state; cheap to clone.
#[derive(Clone)]
pub struct AwakeService {
    inner: Arc<tokio::sync::Mutex<Inner>>,
    events: EventBus,
    inhibitor: Arc<dyn Inhibitor>,
    audit: AuditLog,
}

struct Inner {
    next_id: u64,
    holds: Vec<Hold>,
    /// The system inhibition, present exactly while `holds` is not empty.
    lock: Option<Inhibition>,
}

impl AwakeService {
    /// The service on the system's sleep inhibition (`keepawake`).
    pub fn new(events: EventBus, audit: AuditLog) -> Self {
        Self {
            audit,
            ..Self::with_inhibitor(events, Arc::new(KeepAwakeInhibitor))
        }
    }

    /// The service on another inhibitor (tests use a fake).
    pub fn with_inhibitor(events: EventBus, inhibitor: Arc<dyn Inhibitor>) -> Self {
        Self {
            inner: Arc::new(tokio::sync::Mutex::new(Inner {
                next_id: 1,
                holds: Vec::new(),
                lock: None,
            })),
            events,
            inhibitor,
            audit: AuditLog::off(),
        }
    }

    /// Adds a hold for `session`, taking the system inhibition if it is the first.
    pub async fn acquire(
        &self,
        component: &str,
        session: Option<u64>,
        reason: &str,
    ) -> Result<Hold, AwakeError> {
        let reason = check_reason(reason)?;
        let mut inner = self.inner.lock().await;
        if inner.holds.iter().filter(|h| h.session == session).count() >= MAX_HOLDS_PER_SESSION {
            return Err(AwakeError::Unavailable(format!(
                "this session already has {MAX_HOLDS_PER_SESSION} holds; release one first"
            )));
        }
        if inner.lock.is_none() {
            let inhibitor = self.inhibitor.clone();
            let why = reason.clone();
            let create = tokio::task::spawn_blocking(move || inhibitor.inhibit(&why));
            // A hung service must not hold every other caller (status, release, session ends)
            // behind this lock; if it answers late, the abandoned inhibition is dropped, which
            // gives it back.
            let created = tokio::time::timeout(INHIBIT_TIMEOUT, create)
                .await
                .map_err(|_| {
                    AwakeError::Unavailable(format!(
                        "cannot prevent sleep: {} did not answer within {INHIBIT_TIMEOUT:?}",
                        self.inhibitor.name()
                    ))
                })?
                .map_err(|e| AwakeError::Unavailable(format!("sleep prevention failed: {e}")))?;
            let lock = created.map_err(|e| {
                tracing::warn!(target: "capbridge::awake", error = %e, "cannot prevent sleep");
                AwakeError::Unavailable(format!("cannot prevent sleep: {e}"))
            })?;
            inner.lock = Some(lock);
        }
        let hold = Hold {
            id: format!("hold-{}", inner.next_id),
            reason,
            component: component.to_string(),
            session,
            acquired_at_ms: now_ms(),
        };
        inner.next_id += 1;
        inner.holds.push(hold.clone());
        tracing::info!(target: "capbridge::awake", id = %hold.id, component, ?session, "sleep prevention held");
        self.audit.record(
            "awake.acquired",
            Some(component),
            session,
            Outcome::Allowed,
            json!({ "hold": hold.id }),
        );
        self.publish("awake.acquired", json!({ "hold": hold, "active": true }));
        Ok(hold)
    }

    /// Releases hold `id`, which must belong to `session`.
    pub async fn release(&self, session: Option<u64>, id: &str) -> Result<Hold, AwakeError> {
        let mut inner = self.inner.lock().await;
        let index = inner
            .holds
            .iter()
            .position(|h| h.id == id && h.session == session)
            .ok_or_else(|| {
                AwakeError::NotFound(format!("this session holds no sleep prevention `{id}`"))
            })?;
        let hold = inner.holds.remove(index);
        let active = self.give_back_if_unused(&mut inner).await;
        self.audit.record(
            "awake.released",
            Some(&hold.component),
            session,
            Outcome::Allowed,
            json!({ "hold": hold.id, "cause": "released" }),
        );
        self.publish(
            "awake.released",
            json!({ "hold": hold, "active": active, "cause": "released" }),
        );
        Ok(hold)
    }

    /// Releases every hold whose session `ended` says is over; returns how many.
    pub async fn release_where(&self, ended: impl Fn(u64) -> bool) -> usize {
        let mut inner = self.inner.lock().await;
        let (gone, kept): (Vec<Hold>, Vec<Hold>) = std::mem::take(&mut inner.holds)
            .into_iter()
            .partition(|h| h.session.is_some_and(&ended));
        inner.holds = kept;
        if gone.is_empty() {
            return 0;
        }
        let active = self.give_back_if_unused(&mut inner).await;
        for hold in &gone {
            self.audit.record(
                "awake.released",
                Some(&hold.component),
                hold.session,
                Outcome::Allowed,
                json!({ "hold": hold.id, "cause": "session-ended" }),
            );
            self.publish(
                "awake.released",
                json!({ "hold": hold, "active": active, "cause": "session-ended" }),
            );
        }
        gone.len()
    }

    /// Every hold, oldest first, and whether the system inhibition is held.
    pub async fn status(&self) -> (bool, Vec<Hold>) {
        let inner = self.inner.lock().await;
        (inner.lock.is_some(), inner.holds.clone())
    }

    /// Gives the inhibition back when no hold remains; returns whether it is still held.
    async fn give_back_if_unused(&self, inner: &mut Inner) -> bool {
        if inner.holds.is_empty() {
            if let Some(lock) = inner.lock.take() {
                let _ = tokio::task::spawn_blocking(move || give_back(lock)).await;
            }
        }
        inner.lock.is_some()
    }

    fn publish(&self, topic: &str, payload: serde_json::Value) {
        self.events.publish(Event::host(topic, payload, None));
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            give_back(lock);
        }
    }
}

/// Drops the inhibition. `keepawake` panics when `UnInhibit` fails (the service went away);
/// that must not take the host down, so the panic is caught and logged.
fn give_back(lock: Inhibition) {
    if std::panic::catch_unwind(AssertUnwindSafe(move || drop(lock))).is_err() {
        tracing::warn!(target: "capbridge::awake", "giving back sleep prevention failed (the D-Bus service went away)");
    }
}

/// The trimmed reason, or why it is not acceptable.
pub fn check_reason(reason: &str) -> Result<String, AwakeError> {
    let reason = reason.trim();
    let chars = reason.chars().count();
    if chars == 0 {
        return Err(AwakeError::InvalidArgument(
            "`reason` is empty: say why the machine should stay awake".into(),
        ));
    }
    if chars > MAX_REASON_CHARS {
        return Err(AwakeError::InvalidArgument(format!(
            "`reason` is {chars} characters; at most {MAX_REASON_CHARS} are allowed"
        )));
    }
    if let Some(c) = reason.chars().find(|c| c.is_control()) {
        return Err(AwakeError::InvalidArgument(format!(
            "`reason` contains the control character U+{:04X}",
            c as u32
        )));
    }
    Ok(reason.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl From<Hold> for GuestHold {
    fn from(h: Hold) -> Self {
        GuestHold {
            id: h.id,
            reason: h.reason,
            component: h.component,
            session: h.session,
            acquired_at_ms: h.acquired_at_ms,
        }
    }
}

impl HostState {
    fn awake(&self) -> wasmtime::Result<&AwakeService> {
        self.grants
            .services
            .get::<AwakeService>()
            .ok_or_else(|| wasmtime::format_err!("the awake service is not running"))
    }
}

impl Host for HostState {
    async fn acquire(&mut self, reason: String) -> wasmtime::Result<Result<GuestHold, GuestError>> {
        let grants = &self.grants;
        Ok(self
            .awake()?
            .acquire(&grants.policy.component_id, grants.session, &reason)
            .await
            .map(GuestHold::from)
            .map_err(GuestError::from))
    }

    async fn release(&mut self, id: String) -> wasmtime::Result<Result<GuestHold, GuestError>> {
        Ok(self
            .awake()?
            .release(self.grants.session, &id)
            .await
            .map(GuestHold::from)
            .map_err(GuestError::from))
    }

    async fn status(&mut self) -> wasmtime::Result<GuestStatus> {
        let (active, holds) = self.awake()?.status().await;
        Ok(GuestStatus {
            active,
            holds: holds.into_iter().map(GuestHold::from).collect(),
        })
    }
}
