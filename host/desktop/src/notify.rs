//! In tray mode a prompt also raises a desktop notification (seed 000: "permission prompts
//! appear via tray notifications with a 60-second timeout"), through the freedesktop
//! notification service on the session bus. The notification only tells; the answer is given
//! in the prompt window, which opens with it. It is withdrawn once the prompt is answered or
//! timed out.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use capbridge_runtime::approvals::{self, Prompt};
use zbus::zvariant::Value;

const SERVICE: &str = "org.freedesktop.Notifications";
const PATH: &str = "/org/freedesktop/Notifications";
/// How long one call to the notification service may take.
const CALL: Duration = Duration::from_secs(5);
/// At most this much of the command is shown (the prompt window shows all of it).
const SHOWN: usize = 200;

/// The notifications shown, by prompt id.
#[derive(Default)]
pub struct Notifications {
    /// Connected on first use; `Err` once connecting failed (said once, not retried).
    bus: Option<Result<zbus::Connection, ()>>,
    shown: BTreeMap<String, u32>,
}

impl Notifications {
    /// One notification for each pending prompt; those of answered prompts withdrawn.
    /// `origin` is the web app origin of a session, when it has one.
    pub async fn update(&mut self, pending: &[Prompt], origin: impl Fn(u64) -> Option<String>) {
        let gone: Vec<(String, u32)> = self
            .shown
            .iter()
            .filter(|(id, _)| !pending.iter().any(|p| &p.id == *id))
            .map(|(id, n)| (id.clone(), *n))
            .collect();
        for (id, notification) in gone {
            self.shown.remove(&id);
            if let (Some(bus), true) = (self.bus().await, notification != 0) {
                if let Err(e) = call(&bus, "CloseNotification", &(notification,)).await {
                    tracing::warn!("the notification of prompt {id} stays: {e:#}");
                }
            }
        }
        for prompt in pending {
            if self.shown.contains_key(&prompt.id) {
                continue;
            }
            let Some(bus) = self.bus().await else {
                return;
            };
            let asker = prompt.session.and_then(&origin);
            match notify(&bus, prompt, asker.as_deref()).await {
                Ok(notification) => {
                    self.shown.insert(prompt.id.clone(), notification);
                }
                Err(e) => {
                    tracing::warn!("no notification for prompt {}: {e:#}", prompt.id);
                    // Not tried again for this prompt: its window is open all the same.
                    self.shown.insert(prompt.id.clone(), 0);
                }
            }
        }
    }

    async fn bus(&mut self) -> Option<zbus::Connection> {
        if self.bus.is_none() {
            let connected = tokio::time::timeout(CALL, zbus::Connection::session()).await;
            self.bus = Some(match connected {
                Ok(Ok(bus)) => Ok(bus),
                Ok(Err(e)) => {
                    tracing::warn!("no prompt notifications: no session bus: {e}");
                    Err(())
                }
                Err(_) => {
                    tracing::warn!("no prompt notifications: the session bus does not answer");
                    Err(())
                }
            });
        }
        self.bus.as_ref()?.as_ref().ok().cloned()
    }
}

async fn notify(
    bus: &zbus::Connection,
    prompt: &Prompt,
    origin: Option<&str>,
) -> anyhow::Result<u32> {
    let (summary, body) = text(prompt, origin);
    // Until the host rejects it (60 s after it was asked).
    let left = prompt.expires_at_ms.saturating_sub(approvals::now_ms());
    let timeout = i32::try_from(left).unwrap_or(i32::MAX).max(1);
    let mut hints: HashMap<&str, Value<'_>> = HashMap::new();
    // Normal urgency: critical ones never time out with some notification daemons.
    hints.insert("urgency", Value::U8(1));
    hints.insert("category", Value::from("im.received"));
    hints.insert("desktop-entry", Value::from("capbridge"));
    let actions: Vec<&str> = Vec::new();
    let reply = call(
        bus,
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

/// The notification's title and text: what is asked, by whom (the template command, never a
/// secret's value: the prompt never holds one).
fn text(prompt: &Prompt, origin: Option<&str>) -> (String, String) {
    let summary = match prompt.kind.as_str() {
        "command" => "capbridge: run this command?",
        "install" => "capbridge: run this install?",
        "mcp-server" => "capbridge: register this MCP server?",
        _ => "capbridge: allow this?",
    };
    let mut command: String = prompt.summary.chars().take(SHOWN).collect();
    if prompt.summary.chars().count() > SHOWN {
        command.push('…');
    }
    let asker = match origin {
        Some(origin) => format!("{origin}, through component {}", prompt.component),
        None => format!("component {}", prompt.component),
    };
    let body = format!("{command}\nAsked by {asker}. Answer in the prompt window.");
    (summary.to_string(), escape(&body))
}

/// Notification bodies may be markup: the text shows as written.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_escaped_and_bounded() {
        let prompt: Prompt = serde_json::from_value(serde_json::json!({
            "id": "req-1", "kind": "command", "component": "commands", "session": 1,
            "runId": "run-1", "serverId": null,
            "summary": format!("echo <b>&{}", "x".repeat(400)),
            "programPath": "/bin/echo", "cwd": "/", "url": null, "envNames": [],
            "headerNames": [], "hasStdin": false, "warnings": [], "whitelistable": true,
            "createdAtMs": 0, "expiresAtMs": 60000
        }))
        .unwrap();
        let (summary, body) = text(&prompt, None);
        assert_eq!(summary, "capbridge: run this command?");
        assert!(body.starts_with("echo &lt;b&gt;&amp;xxx"), "{body}");
        assert!(body.contains("…\nAsked by component commands."), "{body}");
        assert!(body.chars().count() < SHOWN + 80, "{body}");
        let (_, body) = text(&prompt, Some("https://app.example/<x>"));
        assert!(
            body.contains("Asked by https://app.example/&lt;x&gt;, through component commands."),
            "{body}"
        );
    }
}
