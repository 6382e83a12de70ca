//! In tray mode a prompt also raises a desktop notification (seed 000: "permission prompts
//! appear via tray notifications with a 60-second timeout"), through the freedesktop
//! notification service on the session bus. The notification only tells: what would run and
//! who asks. The answer is given in the prompt window, which opens with it and shows all of the
//! request. It is withdrawn once the prompt is answered or timed out, and when capbridge stops.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use capbridge_runtime::approvals::{self, Approvals, Prompt};
use tokio::sync::oneshot;
use zbus::zvariant::Value;

use crate::Bridge;

const SERVICE: &str = "org.freedesktop.Notifications";
const PATH: &str = "/org/freedesktop/Notifications";
/// How long one call to the notification service may take.
const CALL: Duration = Duration::from_secs(5);

/// The task that keeps one notification per pending prompt. Runs on its own, so a slow
/// notification service never delays the prompt windows.
pub struct Notifier {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Notifier {
    pub fn start(approvals: Approvals, bridge: Arc<Bridge>) -> Notifier {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut changed = approvals.changed();
            let mut notifications = Notifications::default();
            loop {
                let origin = |session| bridge.origin(session);
                notifications.update(&approvals.pending(), origin).await;
                tokio::select! {
                    next = changed.changed() => if next.is_err() { break },
                    _ = &mut stopped => break,
                }
            }
            // Nothing is left saying "answer in the prompt window" once there is none.
            notifications.update(&[], |_| None).await;
        });
        Notifier { stop, task }
    }

    /// Withdraws what is shown and ends the task (waits at most a few seconds).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(CALL, self.task).await;
    }
}

/// The notifications shown, by prompt id (`None`: the service did not take it).
#[derive(Default)]
struct Notifications {
    /// Connected on first use; `Err` once connecting failed (said once, not retried).
    service: Option<Result<Service, ()>>,
    shown: BTreeMap<String, Option<u32>>,
}

struct Service {
    bus: zbus::Connection,
    /// Whether the service reads bodies as markup (then `<`, `>`, `&` are escaped).
    markup: bool,
}

impl Notifications {
    /// One notification for each pending prompt; those of answered prompts withdrawn.
    /// `origin` is the web app origin of a session, when it has one.
    async fn update(&mut self, pending: &[Prompt], origin: impl Fn(u64) -> Option<String>) {
        let gone: Vec<(String, Option<u32>)> = self
            .shown
            .iter()
            .filter(|(id, _)| !pending.iter().any(|p| &p.id == *id))
            .map(|(id, n)| (id.clone(), *n))
            .collect();
        for (id, notification) in gone {
            self.shown.remove(&id);
            let (Some(service), Some(notification)) = (self.service().await, notification) else {
                continue;
            };
            if let Err(e) = call(&service.bus, "CloseNotification", &(notification,)).await {
                tracing::warn!("the notification of prompt {id} stays: {e:#}");
            }
        }
        for prompt in pending {
            if self.shown.contains_key(&prompt.id) {
                continue;
            }
            let Some(service) = self.service().await else {
                return;
            };
            let asker = prompt.session.and_then(&origin);
            let shown = match service.notify(prompt, asker.as_deref()).await {
                Ok(notification) => Some(notification),
                Err(e) => {
                    // Not tried again for this prompt: its window is open all the same.
                    tracing::warn!("no notification for prompt {}: {e:#}", prompt.id);
                    None
                }
            };
            self.shown.insert(prompt.id.clone(), shown);
        }
    }

    async fn service(&mut self) -> Option<&Service> {
        if self.service.is_none() {
            self.service = Some(Service::connect().await.map_err(|e| {
                tracing::warn!("no prompt notifications: {e:#}");
            }));
        }
        self.service.as_ref()?.as_ref().ok()
    }
}

impl Service {
    async fn connect() -> anyhow::Result<Service> {
        let bus = tokio::time::timeout(CALL, zbus::Connection::session())
            .await
            .map_err(|_| anyhow::anyhow!("the session bus does not answer"))??;
        // A service that is not there yet may come later: assume no markup until asked.
        let markup = match call(&bus, "GetCapabilities", &()).await {
            Ok(reply) => reply
                .body()
                .deserialize::<Vec<String>>()
                .is_ok_and(|caps| caps.iter().any(|c| c == "body-markup")),
            Err(_) => false,
        };
        Ok(Service { bus, markup })
    }

    async fn notify(&self, prompt: &Prompt, origin: Option<&str>) -> anyhow::Result<u32> {
        let (summary, mut body) = text(prompt, origin);
        if self.markup {
            body = escape(&body);
        }
        // Until the host rejects it (60 s after it was asked).
        let left = prompt.expires_at_ms.saturating_sub(approvals::now_ms());
        let timeout = i32::try_from(left).unwrap_or(i32::MAX).max(1);
        let mut hints: HashMap<&str, Value<'_>> = HashMap::new();
        // Normal urgency: critical ones never time out with some notification services.
        hints.insert("urgency", Value::U8(1));
        hints.insert("desktop-entry", Value::from("capbridge"));
        let actions: Vec<&str> = Vec::new();
        let reply = call(
            &self.bus,
            "Notify",
            &(
                "capbridge",
                0u32,
                "dialog-question",
                summary.as_str(),
                body.as_str(),
                actions,
                hints,
                timeout,
            ),
        )
        .await?;
        Ok(reply.body().deserialize::<u32>()?)
    }
}

async fn call<B>(bus: &zbus::Connection, method: &str, body: &B) -> anyhow::Result<zbus::Message>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    let reply = tokio::time::timeout(
        CALL,
        bus.call_method(Some(SERVICE), PATH, Some(SERVICE), method, body),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{SERVICE} did not answer {method} within {CALL:?}"))??;
    Ok(reply)
}

/// The notification's title and text: what would run and who asks. Not the arguments, the
/// environment or the headers: literal values the web app sent may be among them, and a
/// notification can outlive the prompt (in the notification history, on the lock screen). The
/// prompt window shows all of it.
fn text(prompt: &Prompt, origin: Option<&str>) -> (String, String) {
    let summary = match prompt.kind.as_str() {
        "command" => "capbridge: run this command?",
        "install" => "capbridge: run this install?",
        "mcp-server" => "capbridge: register this MCP server?",
        "automation" => "capbridge: let a component control the mouse and keyboard?",
        _ => "capbridge: allow this?",
    };
    let what = match (&prompt.server_id, &prompt.program_path) {
        (Some(server), _) => format!("MCP server: {}", bounded(server)),
        (None, Some(path)) => format!("Program: {}", bounded(program_name(path))),
        (None, None) => String::new(),
    };
    let asker = match origin {
        Some(origin) => format!(
            "{}, through component {}",
            bounded(origin),
            prompt.component
        ),
        None => format!("component {}", prompt.component),
    };
    let body = format!("{what}\nAsked by {asker}. Answer in the prompt window.");
    (summary.to_string(), body)
}

fn program_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// At most 80 characters of a name.
fn bounded(text: &str) -> String {
    const SHOWN: usize = 80;
    let mut out: String = text.chars().take(SHOWN).collect();
    if text.chars().count() > SHOWN {
        out.push('…');
    }
    out
}

/// For services that read bodies as markup: the text shows as written.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(kind: &str, server: Option<&str>, program: Option<&str>) -> Prompt {
        serde_json::from_value(serde_json::json!({
            "id": "req-1", "kind": kind, "component": "commands", "session": 1,
            "runId": "run-1", "serverId": server,
            "summary": "curl -H 'Authorization: Bearer s3cret' https://example.com",
            "programPath": program, "cwd": "/", "url": null, "envNames": ["TOKEN"],
            "headerNames": [], "hasStdin": false, "warnings": [], "whitelistable": true,
            "createdAtMs": 0, "expiresAtMs": 60000
        }))
        .unwrap()
    }

    #[test]
    fn the_text_names_what_runs_and_who_asks_but_no_argument() {
        let command = prompt("command", None, Some("/usr/bin/curl"));
        let (summary, body) = text(&command, None);
        assert_eq!(summary, "capbridge: run this command?");
        assert_eq!(
            body,
            "Program: curl\nAsked by component commands. Answer in the prompt window."
        );
        let (_, body) = text(&command, Some("https://app.example"));
        assert!(
            body.contains("Asked by https://app.example, through component commands."),
            "{body}"
        );
        let server = prompt("mcp-server", Some("files"), None);
        let (summary, body) = text(&server, Some(&"x".repeat(500)));
        assert_eq!(summary, "capbridge: register this MCP server?");
        assert!(body.starts_with("MCP server: files\n"), "{body}");
        assert!(!body.contains("s3cret"), "{body}");
        assert!(body.chars().count() < 200, "{body}");
        assert_eq!(escape("<b>&"), "&lt;b&gt;&amp;");
    }
}
