//! `capbridge:host/dialog`: native pickers, and the access a pick grants.
//!
//! The picker is the XDG desktop portal's `org.freedesktop.portal.FileChooser` on the D-Bus
//! session bus (what GTK, Qt and browsers use on Linux desktops, sandboxed or not). Without a
//! display (`DISPLAY` and `WAYLAND_DISPLAY` both unset) there is no picker, and a pick answers
//! `unavailable`.
//!
//! A pick widens access only for the session that asked and only for the component that asked:
//! the picked directory is preopened at `/picked-<id>` in that component's later calls made for
//! that session ([`DialogService::preopens`]), and in no other store. Picks end with their
//! session ([`DialogService::forget_where`]). Each pick is logged to the audit target.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use capbridge_policy::Access;
use futures_util::StreamExt as _;
use serde::Serialize;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use super::capbridge::host::dialog::{Host, PickKind as GuestPickKind, Picked as GuestPicked};
use super::capbridge::host::types::Access as GuestAccess;
use super::GuestError;
use crate::state::HostState;

/// Most picks one session may hold.
pub const MAX_PICKS_PER_SESSION: usize = 32;

/// Where pickers come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Picker {
    /// No display: every pick is `unavailable`.
    Headless,
    /// The desktop portal on the D-Bus session bus at this address (`None`: the default
    /// session bus, from `DBUS_SESSION_BUS_ADDRESS`).
    Portal { bus: Option<String> },
}

impl Picker {
    /// The portal when a display is present, otherwise headless.
    pub fn from_env() -> Self {
        let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        if set("DISPLAY") || set("WAYLAND_DISPLAY") {
            Picker::Portal { bus: None }
        } else {
            Picker::Headless
        }
    }
}

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
    picker: Picker,
    picks: Arc<Mutex<Picks>>,
}

#[derive(Default)]
struct Picks {
    next_id: u64,
    all: Vec<Pick>,
}

impl DialogService {
    pub fn new(picker: Picker) -> Self {
        Self {
            picker,
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
        let bus = match &self.picker {
            Picker::Headless => {
                return Err(GuestError::Unavailable(
                    "a native picker is not available without a display (capbridge is running \
                     headless); use a granted target instead"
                        .into(),
                ))
            }
            Picker::Portal { bus } => bus.clone(),
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
        let Some(uri) = portal_pick(bus.as_deref(), kind, &title, accept)
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
    pub fn preopens(&self, session: Option<u64>, component: &str) -> Vec<Pick> {
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
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Result<Vec<u8>, u64>> {
            use std::io::Read as _;
            let file = std::fs::File::open(&path)?;
            let mut bytes = Vec::new();
            file.take(max_bytes.saturating_add(1))
                .read_to_end(&mut bytes)?;
            Ok(if bytes.len() as u64 > max_bytes {
                Err(bytes.len() as u64)
            } else {
                Ok(bytes)
            })
        })
        .await
        .map_err(|e| GuestError::Unavailable(e.to_string()))?;
        match read {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(_)) => Err(GuestError::TooLarge(format!(
                "picked file `{id}` is larger than {max_bytes} bytes"
            ))),
            Err(e) => Err(io_error(&pick, e)),
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
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write as _;
            let dir = path.parent().unwrap_or(std::path::Path::new("/"));
            let permissions = std::fs::metadata(&path)?.permissions();
            let mut temp = tempfile::Builder::new()
                .prefix(".capbridge-")
                .suffix(".tmp")
                .tempfile_in(dir)?;
            temp.write_all(&content)?;
            temp.as_file().sync_all()?;
            temp.as_file().set_permissions(permissions)?;
            temp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        })
        .await
        .map_err(|e| GuestError::Unavailable(e.to_string()))?;
        written.map_err(|e| io_error(&pick, e))?;
        tracing::info!(target: "capbridge::audit", component, path = %pick.host_path.display(), "picked file written");
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

fn io_error(pick: &Pick, e: std::io::Error) -> GuestError {
    let message = format!("picked file {}: {e}", pick.host_path.display());
    match e.kind() {
        std::io::ErrorKind::NotFound => GuestError::NotFound(message),
        std::io::ErrorKind::PermissionDenied => GuestError::Denied(message),
        _ => GuestError::Unavailable(message),
    }
}

/// Asks the portal for one directory or file; `Ok(None)` when the person cancels.
async fn portal_pick(
    bus: Option<&str>,
    kind: PickKind,
    title: &str,
    accept_label: &str,
) -> anyhow::Result<Option<String>> {
    let connection = match bus {
        Some(address) => zbus::connection::Builder::address(address)?.build().await?,
        None => zbus::Connection::session().await?,
    };
    static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
    // Only [A-Za-z0-9_]: the token becomes an element of the request's object path.
    let token = format!(
        "capbridge_{}_{}",
        std::process::id(),
        NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
    );
    let sender = connection
        .unique_name()
        .map(|n| n.trim_start_matches(':').replace('.', "_"))
        .unwrap_or_default();
    let request_path = format!("/org/freedesktop/portal/desktop/request/{sender}/{token}");
    let request = zbus::Proxy::new(
        &connection,
        "org.freedesktop.portal.Desktop",
        request_path,
        "org.freedesktop.portal.Request",
    )
    .await?;
    // Subscribe before asking, so the answer cannot be missed.
    let mut responses = request.receive_signal("Response").await?;
    let chooser = zbus::Proxy::new(
        &connection,
        "org.freedesktop.portal.Desktop",
        "/org/freedesktop/portal/desktop",
        "org.freedesktop.portal.FileChooser",
    )
    .await?;
    let mut options: HashMap<&str, Value<'_>> = HashMap::new();
    options.insert("handle_token", Value::from(token.as_str()));
    options.insert("directory", Value::from(kind == PickKind::Directory));
    options.insert("modal", Value::from(true));
    options.insert("accept_label", Value::from(accept_label));
    let _handle: OwnedObjectPath = chooser.call("OpenFile", &("", title, options)).await?;
    let message = responses
        .next()
        .await
        .ok_or_else(|| anyhow::anyhow!("the portal closed the request without an answer"))?;
    let (code, results): (u32, HashMap<String, OwnedValue>) = message.body().deserialize()?;
    match code {
        0 => {
            let uris = results
                .get("uris")
                .ok_or_else(|| anyhow::anyhow!("the portal answered without `uris`"))?;
            let uris = <Vec<String>>::try_from(uris.try_clone()?)?;
            Ok(uris.into_iter().next())
        }
        1 => Ok(None),
        other => anyhow::bail!("the portal ended the request (response code {other})"),
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
        Ok(grants
            .services
            .dialog
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
        Ok(grants
            .session
            .map(|s| {
                grants
                    .services
                    .dialog
                    .picks_of(s, &grants.policy.component_id)
            })
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
        Ok(grants
            .services
            .dialog
            .read_picked(grants.session, &grants.policy.component_id, &id, max_bytes)
            .await)
    }

    async fn write_picked(
        &mut self,
        id: String,
        content: Vec<u8>,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        let grants = &self.grants;
        Ok(grants
            .services
            .dialog
            .write_picked(grants.session, &grants.policy.component_id, &id, content)
            .await)
    }
}
