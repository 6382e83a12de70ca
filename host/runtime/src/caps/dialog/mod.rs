//! `capbridge:host/dialog`: native pickers, and the access a pick grants.
//!
//! The picker is the XDG desktop portal's `org.freedesktop.portal.FileChooser` on the D-Bus
//! session bus (what GTK, Qt and browsers use on Linux desktops, sandboxed or not). Without a
//! display (`DISPLAY` and `WAYLAND_DISPLAY` both unset) there is no picker, and a pick answers
//! `unavailable`.
//!
//! A pick widens access only for the session that asked and only for the component that asked:
//! the picked directory is preopened at `/picked-<id>` in that component's later calls made for
//! that session (its `Service::prepare_store`), and in no other store. Picks end with their
//! session ([`DialogService::forget_where`]). Each pick is logged to the audit target.
//!
//! Files: the unit and the pick registry here; the portal client in `portal.rs` (behind
//! [`Chooser`], so this logic is tested with a fake); the picked file's atomic I/O in
//! `files.rs`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use capbridge_policy::{Access, ExplainLine, Grant, GrantContext, GrantKind, InstanceMode, Policy};
use futures_util::future::BoxFuture;
use serde::Serialize;
use wasmtime::component::{HasSelf, Linker};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::capbridge::host::dialog::{
    self as wit, Host, PickKind as GuestPickKind, Picked as GuestPicked,
};
use super::capbridge::host::types::Access as GuestAccess;
use super::{Capability, GrantedPath, GuestError, HostContext, PathOrigin, Service};
use crate::own_files::OwnFiles;
use crate::state::HostState;

mod files;
mod portal;
#[cfg(test)]
mod tests;

pub use portal::{Chooser, Picker, Portal};

/// The capability: `grants.dialog = true`.
pub struct Dialog;

/// `grants.dialog = true`.
#[derive(Debug)]
pub struct DialogGrant;

impl Grant for DialogGrant {
    fn explain(&self, _policy: &Policy) -> Vec<ExplainLine> {
        vec![ExplainLine::risky(
            "Can show native pickers; a directory the person picks becomes readable (or \
             writable, as the picker says) by this component for the session that asked."
                .to_string(),
            Some(
                "what a person picks widens this component's file access beyond the \
                 directories listed above, for that session only"
                    .to_string(),
            ),
        )]
    }
}

impl GrantKind for Dialog {
    fn key(&self) -> &'static str {
        "dialog"
    }

    fn schema(&self, _generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        super::flag_schema(
            "Whether the component may show native pickers (`capbridge:host/dialog`); a pick \
             widens access for the session that asked, to what the person picked.",
        )
    }

    fn parse(
        &self,
        value: toml::Value,
        cx: &mut GrantContext<'_>,
    ) -> Result<Option<Arc<dyn Grant>>, toml::de::Error> {
        let grant = super::read_flag(value, DialogGrant)?;
        if grant.is_some() && cx.instance == InstanceMode::Persistent {
            cx.problem(
                "",
                "cannot be granted to a persistent component: a pick is mounted into the \
                 instances of the session that made it, and a persistent instance serves every \
                 session (use instance = \"fresh\")",
            );
        }
        Ok(grant)
    }

    fn not_granted(&self) -> &'static str {
        "no native pickers"
    }

    fn widening(&self) -> &'static str {
        "granted where it was not (flagged: what a person picks is opened to the component)"
    }
}

impl Capability for Dialog {
    fn interfaces(&self) -> &'static [&'static str] {
        &["capbridge:host/dialog"]
    }

    fn summary(&self) -> &'static str {
        "show native pickers; what a person picks is opened to that component for that session"
    }

    fn add_to_linker(&self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)
    }

    fn start(&self, host: &HostContext<'_>) -> Option<Arc<dyn Service>> {
        Some(Arc::new(DialogService {
            audit: host.audit.clone(),
            ..DialogService::new(host.config.picker.clone(), host.own_files.clone())
        }))
    }
}

impl Service for DialogService {
    /// Mounts what a person picked for this session, and only for it.
    fn prepare_store(&self, policy: &Policy, session: Option<u64>, wasi: &mut WasiCtxBuilder) {
        for pick in self.preopens(session, &policy.component_id) {
            let perms = match pick.access {
                Access::ReadOnly => FsPerms::ReadOnly,
                Access::ReadWrite => FsPerms::ReadWrite,
            };
            // A picked folder that went away (deleted, unmounted) is left out, not fatal: the
            // granted directories still work.
            if let Err(e) = wasi.preopened_dir(&pick.host_path, &pick.guest_path, perms) {
                tracing::warn!(
                    target: "capbridge::dialog",
                    component = %policy.component_id,
                    path = %pick.host_path.display(),
                    "picked directory not mounted: {e}"
                );
            }
        }
    }

    fn paths(&self, component: &str, session: u64) -> Vec<GrantedPath> {
        self.picks_of(session, component)
            .into_iter()
            .map(|pick| GrantedPath {
                name: format!("picked-{}", pick.id),
                host_path: pick.host_path,
                access: pick.access,
                origin: match pick.kind {
                    PickKind::Directory => PathOrigin::PickedDirectory,
                    PickKind::File => PathOrigin::PickedFile,
                },
            })
            .collect()
    }

    fn end_session(&self, session: u64) -> BoxFuture<'_, ()> {
        self.forget_where(|s| s == session);
        Box::pin(async {})
    }
}

/// Most picks one session may hold.
pub const MAX_PICKS_PER_SESSION: usize = 32;

/// What a picker picks.
#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PickKind {
    Directory,
    File,
}

/// One directory or file a person picked, and who may use it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Pick {
    pub id: u64,
    pub kind: PickKind,
    pub session: u64,
    pub component: String,
    pub host_path: PathBuf,
    /// `/picked-<id>` for a directory; empty for a file (not mounted).
    pub guest_path: String,
    pub access: Access,
}

/// Largest picked file `write-picked` accepts (the filesystem capability's write limit).
pub const MAX_PICKED_WRITE_BYTES: usize = 16 << 20;

/// The host's picker and every pick made through it; cheap to clone.
#[derive(Clone)]
pub struct DialogService {
    /// What shows pickers; `None` when headless.
    chooser: Option<Arc<dyn Chooser>>,
    picks: Arc<Mutex<Picks>>,
    /// capbridge's own directories: a pick that is one of them or contains one is refused.
    own_files: OwnFiles,
    audit: crate::audit::AuditLog,
}

#[derive(Default)]
struct Picks {
    next_id: u64,
    all: Vec<Pick>,
}

impl DialogService {
    /// The service on the configured picker.
    pub fn new(picker: Picker, own_files: OwnFiles) -> Self {
        let chooser = match picker {
            Picker::Headless => None,
            Picker::Portal { bus } => Some(Arc::new(Portal { bus }) as Arc<dyn Chooser>),
        };
        Self::with_chooser(chooser, own_files)
    }

    /// The service on another chooser (tests use a fake), or none (headless).
    pub fn with_chooser(chooser: Option<Arc<dyn Chooser>>, own_files: OwnFiles) -> Self {
        Self {
            chooser,
            own_files,
            audit: crate::audit::AuditLog::off(),
            picks: Arc::new(Mutex::new(Picks {
                next_id: 1,
                all: Vec::new(),
            })),
        }
    }

    /// Shows a picker of `kind` for `component` in `session`; `Ok(None)` when cancelled.
    pub async fn pick(
        &self,
        kind: PickKind,
        component: &str,
        session: Option<u64>,
        title: &str,
        access: Access,
    ) -> Result<Option<Pick>, GuestError> {
        let Some(session) = session else {
            return Err(GuestError::Denied(
                "a picker can only be shown for a contract session (the pick is granted to it)"
                    .into(),
            ));
        };
        let title = title.trim();
        if title.chars().count() > 200 || title.chars().any(char::is_control) {
            return Err(GuestError::InvalidArgument(
                "title must be at most 200 characters, without control characters".into(),
            ));
        }
        if self.picks_of(session, component).len() >= MAX_PICKS_PER_SESSION {
            return Err(GuestError::Unavailable(format!(
                "this session already holds {MAX_PICKS_PER_SESSION} picks"
            )));
        }
        let Some(chooser) = self.chooser.clone() else {
            return Err(GuestError::Unavailable(
                "a native picker is not available without a display (capbridge is running \
                 headless); use a granted target instead"
                    .into(),
            ));
        };
        // The person must see who asks and what a pick grants; the web app only adds a purpose.
        let grant = match access {
            Access::ReadOnly => "read",
            Access::ReadWrite => "read and change",
        };
        let what = match kind {
            PickKind::Directory => "folder",
            PickKind::File => "file",
        };
        let title = if title.is_empty() {
            format!("{component} asks for a {what} it may {grant}")
        } else {
            format!("{component} asks for a {what} it may {grant}: {title}")
        };
        let accept = match access {
            Access::ReadOnly => "Allow reading",
            Access::ReadWrite => "Allow reading and changing",
        };
        let Some(uri) = chooser
            .choose(kind, &title, accept)
            .await
            .map_err(|e| GuestError::Unavailable(format!("the file picker failed: {e}")))?
        else {
            return Ok(None);
        };
        let host_path = url::Url::parse(&uri)
            .ok()
            .filter(|u| u.scheme() == "file")
            .and_then(|u| u.to_file_path().ok())
            .and_then(|p| p.canonicalize().ok())
            .filter(|p| match kind {
                PickKind::Directory => p.is_dir(),
                PickKind::File => p.is_file(),
            })
            .ok_or_else(|| {
                GuestError::Unavailable(format!("the picker answered {uri:?}, not a local {what}"))
            })?;
        if let Some(clash) = self.own_files.clash(&host_path) {
            tracing::warn!(target: "capbridge::audit", component, session, path = %host_path.display(), "refused: pick reaches capbridge's own files");
            return Err(GuestError::Denied(format!(
                "{} cannot be opened to a component: {clash}",
                host_path.display()
            )));
        }
        let mut picks = self.picks.lock().expect("picks lock");
        // Again, under the lock: other picks may have finished while the person chose.
        let held = picks
            .all
            .iter()
            .filter(|p| p.session == session && p.component == component)
            .count();
        if held >= MAX_PICKS_PER_SESSION {
            return Err(GuestError::Unavailable(format!(
                "this session already holds {MAX_PICKS_PER_SESSION} picks"
            )));
        }
        let id = picks.next_id;
        picks.next_id += 1;
        let pick = Pick {
            id,
            kind,
            session,
            component: component.to_string(),
            host_path,
            guest_path: match kind {
                PickKind::Directory => format!("/picked-{id}"),
                PickKind::File => String::new(),
            },
            access,
        };
        tracing::info!(
            target: "capbridge::audit",
            component,
            session,
            path = %pick.host_path.display(),
            ?access,
            "granted: picked {what} for this session"
        );
        self.audit.record(
            "file.picked",
            Some(component),
            Some(session),
            crate::audit::Outcome::Allowed,
            serde_json::json!({ "pick": pick.id, "path": pick.host_path, "access": format!("{access:?}").to_lowercase() }),
        );
        picks.all.push(pick.clone());
        Ok(Some(pick))
    }

    /// The picks `component` made in `session`, oldest first.
    pub fn picks_of(&self, session: u64, component: &str) -> Vec<Pick> {
        let picks = self.picks.lock().expect("picks lock");
        picks
            .all
            .iter()
            .filter(|p| p.session == session && p.component == component)
            .cloned()
            .collect()
    }

    /// The directories to preopen for a call of `component` on behalf of `session`.
    fn preopens(&self, session: Option<u64>, component: &str) -> Vec<Pick> {
        let mut picks = session.map_or_else(Vec::new, |s| self.picks_of(s, component));
        picks.retain(|p| p.kind == PickKind::Directory);
        picks
    }

    /// Picked file `id`, if `component` picked it in `session`.
    fn picked_file(
        &self,
        session: Option<u64>,
        component: &str,
        id: &str,
    ) -> Result<Pick, GuestError> {
        session
            .and_then(|s| {
                self.picks_of(s, component)
                    .into_iter()
                    .find(|p| p.kind == PickKind::File && p.id.to_string() == id)
            })
            .ok_or_else(|| GuestError::NotFound(format!("this session picked no file `{id}`")))
    }

    /// The content of picked file `id`, at most `max_bytes`.
    pub async fn read_picked(
        &self,
        session: Option<u64>,
        component: &str,
        id: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, GuestError> {
        let pick = self.picked_file(session, component, id)?;
        let path = pick.host_path.clone();
        let read = tokio::task::spawn_blocking(move || files::read_at_most(&path, max_bytes))
            .await
            .map_err(|e| GuestError::Unavailable(e.to_string()))?;
        match read {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(GuestError::TooLarge(format!(
                "picked file `{id}` is larger than {max_bytes} bytes"
            ))),
            Err(e) => Err(files::guest_error(&pick.host_path, e)),
        }
    }

    /// Replaces picked file `id` atomically, keeping its permissions.
    pub async fn write_picked(
        &self,
        session: Option<u64>,
        component: &str,
        id: &str,
        content: Vec<u8>,
    ) -> Result<(), GuestError> {
        let pick = self.picked_file(session, component, id)?;
        if pick.access != Access::ReadWrite {
            return Err(GuestError::Denied(format!(
                "picked file `{id}` was granted read-only"
            )));
        }
        if content.len() > MAX_PICKED_WRITE_BYTES {
            return Err(GuestError::TooLarge(format!(
                "{} bytes; at most {MAX_PICKED_WRITE_BYTES} are written",
                content.len()
            )));
        }
        let path = pick.host_path.clone();
        let written =
            tokio::task::spawn_blocking(move || files::replace_atomically(&path, &content))
                .await
                .map_err(|e| GuestError::Unavailable(e.to_string()))?;
        written.map_err(|e| files::guest_error(&pick.host_path, e))?;
        tracing::info!(target: "capbridge::audit", component, path = %pick.host_path.display(), "picked file written");
        self.audit.record(
            "file.written",
            Some(component),
            session,
            crate::audit::Outcome::Allowed,
            serde_json::json!({ "pick": id, "path": pick.host_path }),
        );
        Ok(())
    }

    /// Forgets the picks of every session `ended` says is over; returns how many.
    pub fn forget_where(&self, ended: impl Fn(u64) -> bool) -> usize {
        let mut picks = self.picks.lock().expect("picks lock");
        let before = picks.all.len();
        picks.all.retain(|p| !ended(p.session));
        before - picks.all.len()
    }
}

impl From<Pick> for GuestPicked {
    fn from(p: Pick) -> Self {
        GuestPicked {
            id: p.id.to_string(),
            kind: match p.kind {
                PickKind::Directory => GuestPickKind::Directory,
                PickKind::File => GuestPickKind::File,
            },
            host_path: p.host_path.display().to_string(),
            guest_path: p.guest_path,
            access: access_to_guest(p.access),
        }
    }
}

pub(crate) fn access_to_guest(access: Access) -> GuestAccess {
    match access {
        Access::ReadOnly => GuestAccess::ReadOnly,
        Access::ReadWrite => GuestAccess::ReadWrite,
    }
}

impl HostState {
    fn dialog(&self) -> wasmtime::Result<&DialogService> {
        self.grants
            .services
            .get::<DialogService>()
            .ok_or_else(|| wasmtime::format_err!("the dialog service is not running"))
    }

    async fn pick(
        &mut self,
        kind: PickKind,
        title: String,
        access: GuestAccess,
    ) -> wasmtime::Result<Result<Option<GuestPicked>, GuestError>> {
        let access = match access {
            GuestAccess::ReadOnly => Access::ReadOnly,
            GuestAccess::ReadWrite => Access::ReadWrite,
        };
        let grants = &self.grants;
        Ok(self
            .dialog()?
            .pick(
                kind,
                &grants.policy.component_id,
                grants.session,
                &title,
                access,
            )
            .await
            .map(|pick| pick.map(GuestPicked::from)))
    }
}

impl Host for HostState {
    async fn pick_directory(
        &mut self,
        title: String,
        access: GuestAccess,
    ) -> wasmtime::Result<Result<Option<GuestPicked>, GuestError>> {
        self.pick(PickKind::Directory, title, access).await
    }

    async fn pick_file(
        &mut self,
        title: String,
        access: GuestAccess,
    ) -> wasmtime::Result<Result<Option<GuestPicked>, GuestError>> {
        self.pick(PickKind::File, title, access).await
    }

    async fn picks(&mut self) -> wasmtime::Result<Vec<GuestPicked>> {
        let grants = &self.grants;
        let dialog = self.dialog()?;
        Ok(grants
            .session
            .map(|s| dialog.picks_of(s, &grants.policy.component_id))
            .unwrap_or_default()
            .into_iter()
            .map(GuestPicked::from)
            .collect())
    }

    async fn read_picked(
        &mut self,
        id: String,
        max_bytes: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, GuestError>> {
        let grants = &self.grants;
        Ok(self
            .dialog()?
            .read_picked(grants.session, &grants.policy.component_id, &id, max_bytes)
            .await)
    }

    async fn write_picked(
        &mut self,
        id: String,
        content: Vec<u8>,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        let grants = &self.grants;
        Ok(self
            .dialog()?
            .write_picked(grants.session, &grants.policy.component_id, &id, content)
            .await)
    }
}
