//! `capbridge:host/accessibility`: the accessibility tree of the applications on the screen
//! (seed 001's `desktop.ax_tree` and `desktop.snapshot`), read over AT-SPI (the `atspi` crate,
//! on the accessibility bus the session bus names).
//!
//! A snapshot gives each element a ref (`e1`, `e2`, …) and keeps, per session, the AT-SPI
//! object each ref names (its bus name and path), never its coordinates: the input capability
//! asks for the element's frame again when it acts ([`AccessibilityService::resolve`]), so a
//! window moved since the snapshot is still hit, and an element that is gone fails instead of
//! being clicked where it was.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use atspi::proxy::accessible::AccessibleProxy;
use atspi::proxy::component::ComponentProxy;
use atspi::{CoordType, Interface, State, StateSet};
use capbridge_policy::{ExplainLine, Grant, GrantContext, GrantKind, Policy};
use futures_util::future::BoxFuture;
use serde_json::json;
use wasmtime::component::{HasSelf, Linker};

use super::capbridge::host::accessibility::SnapshotStats;
use super::capbridge::host::accessibility::{self as wit, Element, Host, Node, UiSnapshot};
use super::capbridge::host::types::Rect;
use super::{Capability, GuestError, HostContext, Service};
use crate::audit::{AuditLog, Outcome};
use crate::state::HostState;

/// The capability: `grants.accessibility = true`.
pub struct Accessibility;

#[derive(Debug)]
pub struct AccessibilityGrant;

impl Grant for AccessibilityGrant {
    fn explain(&self, _policy: &Policy) -> Vec<ExplainLine> {
        vec![ExplainLine::risky(
            "Can read the accessibility tree of every application on the screen: window \
             titles, and the names, roles, states and places of buttons, fields, labels and \
             list rows."
                .to_string(),
            Some("it reads what applications show, capbridge's own windows included".to_string()),
        )]
    }
}

impl GrantKind for Accessibility {
    fn key(&self) -> &'static str {
        "accessibility"
    }

    fn schema(&self, _generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        super::flag_schema(
            "Whether the component may read the applications' accessibility tree and take \
             snapshots with element refs (`capbridge:host/accessibility`).",
        )
    }

    fn parse(
        &self,
        value: toml::Value,
        _cx: &mut GrantContext<'_>,
    ) -> Result<Option<Arc<dyn Grant>>, toml::de::Error> {
        super::read_flag(value, AccessibilityGrant)
    }

    fn not_granted(&self) -> &'static str {
        "no accessibility tree, no snapshots, no refs to act on"
    }

    fn widening(&self) -> &'static str {
        "granted where it was not"
    }
}

impl Capability for Accessibility {
    fn interfaces(&self) -> &'static [&'static str] {
        &["capbridge:host/accessibility"]
    }

    fn summary(&self) -> &'static str {
        "read the applications' accessibility tree and take snapshots whose element refs input calls can target"
    }

    fn add_to_linker(&self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)
    }

    fn start(&self, host: &HostContext<'_>) -> Option<Arc<dyn Service>> {
        Some(Arc::new(AccessibilityService {
            audit: host.audit.clone(),
            bus: tokio::sync::Mutex::new(None),
            refs: Mutex::new(HashMap::new()),
        }))
    }
}

/// Default depth of a walk, and the deepest one asked for.
pub const DEFAULT_DEPTH: u32 = 12;
pub const MAX_DEPTH: u32 = 32;
/// Most nodes one walk visits.
pub const MAX_NODES: usize = 5000;
/// Most elements one snapshot gives refs to.
pub const MAX_ELEMENTS: usize = 2000;
/// Longest an application may take to answer about one element; one that takes longer is
/// left out of the walk (it may be frozen).
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Roles a person acts on (AT-SPI role names).
const INTERACTIVE_ROLES: &[&str] = &[
    "push button",
    "toggle button",
    "check box",
    "radio button",
    "text",
    "password text",
    "entry",
    "combo box",
    "menu item",
    "check menu item",
    "radio menu item",
    "menu",
    "link",
    "slider",
    "spin button",
    "list item",
    "page tab",
    "scroll bar",
    "table cell",
    "tree item",
    "switch",
];

/// Roles that hold others and are never a target themselves, even when focusable.
const CONTAINER_ROLES: &[&str] = &[
    "application",
    "frame",
    "window",
    "dialog",
    "filler",
    "panel",
    "scroll pane",
    "viewport",
    "list",
    "list box",
    "tree",
    "tree table",
    "table",
];

/// States an agent needs, as AT-SPI names them.
const REPORTED_STATES: &[State] = &[
    State::Focused,
    State::Focusable,
    State::Enabled,
    State::Showing,
    State::Checked,
    State::Selected,
    State::Editable,
    State::Expanded,
];

/// Where an AT-SPI object lives: its application's bus name and its path.
#[derive(Clone, Debug)]
struct Address {
    bus: String,
    path: String,
}

/// One node seen by a walk.
struct Seen {
    address: Address,
    parent: Option<u32>,
    depth: u32,
    role: String,
    name: String,
    states: StateSet,
    frame: Option<Rect>,
}

impl Seen {
    fn interactive(&self) -> bool {
        let role = self.role.as_str();
        INTERACTIVE_ROLES.contains(&role)
            || (self.states.contains(State::Focusable) && !CONTAINER_ROLES.contains(&role))
    }

    /// On the screen now, with a place a pointer can reach.
    fn on_screen(&self) -> bool {
        self.states.contains(State::Showing)
            && self.frame.is_some_and(|f| f.width > 0 && f.height > 0)
    }
}

pub struct AccessibilityService {
    audit: AuditLog,
    /// The accessibility bus, opened on first use and again after it failed.
    bus: tokio::sync::Mutex<Option<zbus::Connection>>,
    /// Each session's refs, by number (`e1` is index 0), from its latest snapshot.
    refs: Mutex<HashMap<Option<u64>, Vec<Address>>>,
}

impl Service for AccessibilityService {
    fn end_session(&self, session: u64) -> BoxFuture<'_, ()> {
        self.refs.lock().expect("refs lock").remove(&Some(session));
        Box::pin(async {})
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.refs.lock().expect("refs lock").clear();
        Box::pin(async {})
    }
}

impl AccessibilityService {
    /// The accessibility bus, connecting when there is none yet.
    async fn bus(&self) -> Result<zbus::Connection, GuestError> {
        let mut bus = self.bus.lock().await;
        if let Some(connection) = bus.as_ref() {
            return Ok(connection.clone());
        }
        let connection = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            atspi::AccessibilityConnection::new(),
        )
        .await
        .map_err(|_| GuestError::Unavailable("the accessibility bus did not answer in 5 s".into()))?
        .map_err(|e| {
            GuestError::Unavailable(format!(
                "no accessibility bus (AT-SPI, from the session bus's org.a11y.Bus; Debian: \
                 `at-spi2-core`): {e}"
            ))
        })?
        .connection()
        .clone();
        *bus = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets the bus after a failure, so the next call connects again.
    async fn forget_bus(&self) {
        *self.bus.lock().await = None;
    }

    /// The tree of `app` (or of every application).
    pub async fn tree(
        &self,
        component: &str,
        session: Option<u64>,
        app: Option<String>,
        max_depth: Option<u32>,
    ) -> Result<Vec<Node>, GuestError> {
        let result = self.walk(app.as_deref(), max_depth).await;
        self.audit.record(
            "accessibility.tree_read",
            Some(component),
            session,
            outcome(&result),
            json!({ "app": app, "nodes": result.as_ref().map(Vec::len).ok() }),
        );
        Ok(result?
            .into_iter()
            .map(|seen| Node {
                parent: seen.parent,
                depth: seen.depth,
                states: REPORTED_STATES
                    .iter()
                    .filter(|s| seen.states.contains(**s))
                    .map(|s| s.to_static_str().to_string())
                    .collect(),
                role: seen.role,
                name: seen.name,
                frame: seen.frame,
            })
            .collect())
    }

    /// The elements on the screen of `app`, each with a new ref for `session`.
    pub async fn snapshot(
        &self,
        component: &str,
        session: Option<u64>,
        app: Option<String>,
        max_depth: Option<u32>,
        include_non_interactive: bool,
    ) -> Result<UiSnapshot, GuestError> {
        let result = self.walk(app.as_deref(), max_depth).await.map(|mut seen| {
            name_from_children(&mut seen);
            let stats = SnapshotStats {
                total_elements: seen.len() as u32,
                interactive: seen.iter().filter(|s| s.interactive()).count() as u32,
                max_depth: seen.iter().map(|s| s.depth).max().unwrap_or(0),
            };
            let chosen: Vec<Seen> = seen
                .into_iter()
                .filter(|s| {
                    s.on_screen()
                        && (s.interactive() || (include_non_interactive && !s.name.is_empty()))
                })
                .take(MAX_ELEMENTS)
                .collect();
            let elements = chosen
                .iter()
                .enumerate()
                .map(|(i, s)| Element {
                    ref_: format!("e{}", i + 1),
                    role: s.role.clone(),
                    label: (!s.name.is_empty()).then(|| s.name.clone()),
                    frame: s.frame.expect("on screen"),
                })
                .collect();
            let addresses = chosen.into_iter().map(|s| s.address).collect();
            self.refs
                .lock()
                .expect("refs lock")
                .insert(session, addresses);
            UiSnapshot { elements, stats }
        });
        self.audit.record(
            "accessibility.snapshot_taken",
            Some(component),
            session,
            outcome(&result),
            json!({
                "app": app,
                "elements": result.as_ref().map(|s| s.elements.len()).ok(),
            }),
        );
        result
    }

    /// The element `reference` (`e3`) of `session`'s latest snapshot, with its frame now.
    pub async fn resolve(
        &self,
        session: Option<u64>,
        reference: &str,
    ) -> Result<Element, GuestError> {
        let index = reference
            .strip_prefix('e')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                GuestError::InvalidArgument(format!(
                    "`{reference}` is not a ref: refs are `e1`, `e2`, … as a snapshot gives them"
                ))
            })?;
        let address = self
            .refs
            .lock()
            .expect("refs lock")
            .get(&session)
            .and_then(|refs| refs.get(index - 1).cloned())
            .ok_or_else(|| {
                GuestError::NotFound(format!(
                    "no element `{reference}` in this session: take a snapshot first (refs \
                     last until the next snapshot)"
                ))
            })?;
        let bus = self.bus().await?;
        tokio::time::timeout(ANSWER_WITHIN, now(&bus, &address, reference))
            .await
            .map_err(|_| {
                GuestError::Unavailable(format!(
                    "the application of element `{reference}` did not answer within \
                     {ANSWER_WITHIN:?}"
                ))
            })?
    }

    /// Every node of `app`'s tree (or every application's), depth first, at most
    /// [`MAX_NODES`].
    async fn walk(
        &self,
        app: Option<&str>,
        max_depth: Option<u32>,
    ) -> Result<Vec<Seen>, GuestError> {
        let max_depth = max_depth.unwrap_or(DEFAULT_DEPTH);
        if max_depth > MAX_DEPTH {
            return Err(GuestError::InvalidArgument(format!(
                "max-depth is {max_depth}; at most {MAX_DEPTH}"
            )));
        }
        let bus = self.bus().await?;
        let result = walk(&bus, app, max_depth).await;
        if let Err(Failure::Bus(_)) = &result {
            self.forget_bus().await;
        }
        result.map_err(|failure| match failure {
            Failure::Bus(e) => GuestError::Unavailable(format!("the accessibility bus: {e}")),
            Failure::Guest(e) => e,
        })
    }
}

/// The element at `address`, that `reference` names, as it is now.
async fn now(
    bus: &zbus::Connection,
    address: &Address,
    reference: &str,
) -> Result<Element, GuestError> {
    let gone = |why: &str| GuestError::NotFound(format!("element `{reference}` {why}"));
    let object = accessible(bus, address)
        .await
        .map_err(|_| gone("is gone: its application no longer has it"))?;
    let (role, name, states) =
        tokio::try_join!(object.get_role_name(), object.name(), object.get_state())
            .map_err(|_| gone("is gone: its application no longer has it"))?;
    if states.contains(State::Defunct) {
        return Err(gone("is gone: its application destroyed it"));
    }
    if !states.contains(State::Showing) {
        return Err(gone("is no longer on the screen"));
    }
    let frame = extents(bus, address)
        .await
        .filter(|f| f.width > 0 && f.height > 0)
        .ok_or_else(|| gone("has no place on the screen now"))?;
    Ok(Element {
        ref_: reference.to_string(),
        role,
        label: (!name.is_empty()).then_some(name),
        frame,
    })
}

enum Failure {
    /// The registry itself did not answer: the bus is gone.
    Bus(zbus::Error),
    Guest(GuestError),
}

async fn walk(
    bus: &zbus::Connection,
    app: Option<&str>,
    max_depth: u32,
) -> Result<Vec<Seen>, Failure> {
    let registry = Address {
        bus: "org.a11y.atspi.Registry".into(),
        path: "/org/a11y/atspi/accessible/root".into(),
    };
    let root = accessible(bus, &registry).await.map_err(Failure::Bus)?;
    let apps = tokio::time::timeout(ANSWER_WITHIN, root.get_children())
        .await
        .map_err(|_| Failure::Bus(zbus::Error::Failure("the registry did not answer".into())))?
        .map_err(Failure::Bus)?;
    let mut seen = Vec::new();
    let mut matched = false;
    for child in apps {
        let Some(address) = address_of(&child) else {
            continue;
        };
        // An application that does not answer is skipped (it may be closing).
        let Ok(object) = accessible(bus, &address).await else {
            continue;
        };
        if let Some(wanted) = app {
            match tokio::time::timeout(ANSWER_WITHIN, object.name()).await {
                Ok(Ok(name)) if name.eq_ignore_ascii_case(wanted) => {}
                _ => continue,
            }
        }
        matched = true;
        // Depth first, with an explicit stack: (address, parent index, depth).
        let mut stack = vec![(address, None, 0u32)];
        while let Some((address, parent, depth)) = stack.pop() {
            if seen.len() >= MAX_NODES {
                break;
            }
            let node = match tokio::time::timeout(
                ANSWER_WITHIN,
                visit(bus, &address, parent, depth),
            )
            .await
            {
                Ok(Some(node)) => node,
                // Gone meanwhile.
                Ok(None) => continue,
                // Not answering: the rest of this application is left out.
                Err(_) => break,
            };
            let index = seen.len() as u32;
            let children = if depth < max_depth && !node.states.contains(State::Defunct) {
                let children = async { accessible(bus, &address).await?.get_children().await };
                match tokio::time::timeout(ANSWER_WITHIN, children).await {
                    Ok(Ok(children)) => children,
                    _ => Vec::new(),
                }
            } else {
                Vec::new()
            };
            seen.push(node);
            for child in children.iter().rev() {
                if let Some(child) = address_of(child) {
                    stack.push((child, Some(index), depth + 1));
                }
            }
        }
    }
    match app {
        Some(wanted) if !matched => Err(Failure::Guest(GuestError::NotFound(format!(
            "no application named `{wanted}` on the accessibility bus"
        )))),
        _ => Ok(seen),
    }
}

/// One node: its role, name, states and frame; `None` when it does not answer (gone).
async fn visit(
    bus: &zbus::Connection,
    address: &Address,
    parent: Option<u32>,
    depth: u32,
) -> Option<Seen> {
    let object = accessible(bus, address).await.ok()?;
    let (role, name, states, interfaces) = tokio::try_join!(
        object.get_role_name(),
        object.name(),
        object.get_state(),
        object.get_interfaces()
    )
    .ok()?;
    let frame = if interfaces.contains(Interface::Component) {
        extents(bus, address).await
    } else {
        None
    };
    Some(Seen {
        address: address.clone(),
        parent,
        depth,
        role,
        name,
        states,
        frame,
    })
}

/// An interactive element without a name of its own (a list row) takes its first named
/// child's (the row's label), as a person would read it.
fn name_from_children(seen: &mut [Seen]) {
    for i in 0..seen.len() {
        if !seen[i].name.is_empty() || !seen[i].interactive() {
            continue;
        }
        let named = seen[i + 1..]
            .iter()
            .take_while(|s| s.depth > seen[i].depth)
            .find(|s| !s.name.is_empty())
            .map(|s| s.name.clone());
        if let Some(name) = named {
            seen[i].name = name;
        }
    }
}

fn address_of(object: &atspi::ObjectRefOwned) -> Option<Address> {
    if object.is_null() {
        return None;
    }
    Some(Address {
        bus: object.name_as_str()?.to_string(),
        path: object.path_as_str().to_string(),
    })
}

async fn accessible<'a>(
    bus: &'a zbus::Connection,
    address: &'a Address,
) -> zbus::Result<AccessibleProxy<'a>> {
    AccessibleProxy::builder(bus)
        .destination(address.bus.as_str())?
        .path(address.path.as_str())?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}

/// The object's frame on the screen, when it has one.
async fn extents(bus: &zbus::Connection, address: &Address) -> Option<Rect> {
    let component = ComponentProxy::builder(bus)
        .destination(address.bus.as_str())
        .ok()?
        .path(address.path.as_str())
        .ok()?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .ok()?;
    let (x, y, width, height) = component.get_extents(CoordType::Screen).await.ok()?;
    // GTK gives i32::MIN for an element scrolled out of view: it has no place.
    if x == i32::MIN || y == i32::MIN {
        return None;
    }
    Some(Rect {
        x,
        y,
        width: u32::try_from(width).unwrap_or(0),
        height: u32::try_from(height).unwrap_or(0),
    })
}

fn outcome<T>(result: &Result<T, GuestError>) -> Outcome {
    if result.is_ok() {
        Outcome::Allowed
    } else {
        Outcome::Denied
    }
}

impl HostState {
    fn accessibility(&self) -> wasmtime::Result<&AccessibilityService> {
        self.grants
            .services
            .get::<AccessibilityService>()
            .ok_or_else(|| wasmtime::Error::msg("the accessibility service is not running"))
    }
}

impl Host for HostState {
    async fn tree(
        &mut self,
        app: Option<String>,
        max_depth: Option<u32>,
    ) -> wasmtime::Result<Result<Vec<Node>, GuestError>> {
        let grants = &self.grants;
        Ok(self
            .accessibility()?
            .tree(&grants.policy.component_id, grants.session, app, max_depth)
            .await)
    }

    async fn snapshot(
        &mut self,
        app: Option<String>,
        max_depth: Option<u32>,
        include_non_interactive: bool,
    ) -> wasmtime::Result<Result<UiSnapshot, GuestError>> {
        let grants = &self.grants;
        Ok(self
            .accessibility()?
            .snapshot(
                &grants.policy.component_id,
                grants.session,
                app,
                max_depth,
                include_non_interactive,
            )
            .await)
    }

    async fn resolve(
        &mut self,
        reference: String,
    ) -> wasmtime::Result<Result<Element, GuestError>> {
        let session = self.grants.session;
        Ok(self.accessibility()?.resolve(session, &reference).await)
    }
}
