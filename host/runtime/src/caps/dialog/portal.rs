//! The XDG desktop portal's FileChooser on D-Bus, behind [`Chooser`] so the picks' logic is
//! tested without D-Bus.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future::BoxFuture;
use futures_util::StreamExt as _;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use super::PickKind;

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

/// Something that shows a person a picker.
pub trait Chooser: Send + Sync + 'static {
    /// Shows a picker of `kind` titled `title`; the URI picked, or `None` when cancelled.
    fn choose<'a>(
        &'a self,
        kind: PickKind,
        title: &'a str,
        accept_label: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<String>>>;
}

/// `org.freedesktop.portal.FileChooser` on a D-Bus session bus.
pub struct Portal {
    /// The bus address; `None`: the default session bus (`DBUS_SESSION_BUS_ADDRESS`).
    pub bus: Option<String>,
}

impl Chooser for Portal {
    fn choose<'a>(
        &'a self,
        kind: PickKind,
        title: &'a str,
        accept_label: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<String>>> {
        Box::pin(portal_pick(self.bus.as_deref(), kind, title, accept_label))
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
