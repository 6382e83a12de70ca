//! `capbridge:host/events`: publishing on the event bus, scoped to the granted topics
//! (`grants.events`, a list of topic patterns), and the bus itself.

use std::sync::Arc;

use capbridge_policy::{ExplainLine, Grant, GrantContext, GrantKind, Policy, TopicPattern};
use serde::Serialize;
use tokio::sync::broadcast;
use wasmtime::component::{HasSelf, Linker};

use super::capbridge::host::events::{self as wit, Host};
use super::{Capability, GuestError};
use crate::state::HostState;

/// The capability: `grants.events`.
pub struct Events;

/// The topics a component may publish to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsGrant {
    pub patterns: Vec<TopicPattern>,
}

impl EventsGrant {
    /// Whether the component may publish on `topic`.
    pub fn allows(&self, topic: &str) -> bool {
        self.patterns.iter().any(|pattern| pattern.matches(topic))
    }
}

impl Grant for EventsGrant {
    fn scope(&self) -> Option<String> {
        let topics: Vec<String> = self.patterns.iter().map(ToString::to_string).collect();
        Some(topics.join(", "))
    }

    fn explain(&self, _policy: &Policy) -> Vec<ExplainLine> {
        self.patterns
            .iter()
            .map(|pattern| match pattern {
                TopicPattern::Exact(topic) => {
                    ExplainLine::plain(format!("Can publish events on the topic {topic}."))
                }
                TopicPattern::Below(prefix) => ExplainLine::plain(format!(
                    "Can publish events on any topic below {prefix} ({pattern})."
                )),
                TopicPattern::Any => ExplainLine::risky(
                    "Can publish events on every topic (*).".to_string(),
                    Some(
                        "it can publish events that the web app and other components expect \
                         only from someone else"
                            .to_string(),
                    ),
                ),
            })
            .collect()
    }
}

impl GrantKind for Events {
    fn key(&self) -> &'static str {
        "events"
    }

    fn schema(&self, _generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Event topics it may publish to: exact, `prefix.*` (any topic below), or `*` (all).",
            "type": "array",
            "items": { "type": "string", "pattern": r"^(\*|[a-z0-9_-]+(\.[a-z0-9_-]+)*(\.\*)?)$" },
        })
    }

    fn parse(
        &self,
        value: toml::Value,
        cx: &mut GrantContext<'_>,
    ) -> Result<Option<Arc<dyn Grant>>, toml::de::Error> {
        let patterns = capbridge_policy::read_list(value, cx, TopicPattern::parse)?;
        Ok((!patterns.is_empty()).then(|| Arc::new(EventsGrant { patterns }) as Arc<dyn Grant>))
    }

    fn not_granted(&self) -> &'static str {
        "no events: it cannot publish on the event bus"
    }
}

impl Capability for Events {
    fn interfaces(&self) -> &'static [&'static str] {
        &["capbridge:host/events"]
    }

    fn summary(&self) -> &'static str {
        "publish JSON events on the granted topics; the web app receives them on /ws/v1/events"
    }

    fn add_to_linker(&self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)
    }
}

/// The `source` of the host's own events; no component may take this name.
pub const HOST_SOURCE: &str = "capbridge";

/// How far behind the slowest subscriber may be before [`EventBus::publish_paced`] waits.
pub const PACE_BACKLOG: usize = 64;

/// Largest payload a component may publish.
pub const MAX_PAYLOAD_BYTES: usize = 64 << 10;

/// One event as published by a component (the API layer adds sequence numbers and timestamps).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Event {
    /// The publishing component's id, or `capbridge` for the host's own events.
    pub source: String,
    pub topic: String,
    pub payload: serde_json::Value,
    /// The one contract session that may see it (a run's output, its prompt); `None`: every
    /// session.
    #[serde(skip)]
    pub audience: Option<u64>,
}

/// The bus components and the host publish on; subscribers each get every event from the moment
/// they subscribe, and a subscriber that falls behind loses the oldest (it is told how many).
#[derive(Clone, Debug)]
pub struct EventBus {
    sender: broadcast::Sender<Event>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity).0,
        }
    }

    pub fn publish(&self, event: Event) {
        // No subscriber is not an error: nobody is listening yet.
        let _ = self.sender.send(event);
    }

    /// Publishes `event` once the slowest subscriber is within [`PACE_BACKLOG`] events of the
    /// newest: a producer of many events (a command's output) waits for its readers instead of
    /// making them lose events.
    pub async fn publish_paced(&self, event: Event) {
        while self.sender.len() >= PACE_BACKLOG {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        self.publish(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl Host for HostState {
    async fn publish(
        &mut self,
        topic: String,
        payload: String,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        let policy = &self.grants.policy;
        if !policy
            .grant::<EventsGrant>()
            .is_some_and(|g| g.allows(&topic))
        {
            let message = super::denial(
                &policy.component_id,
                &format!("publish to topic `{topic}`"),
                "that topic",
                &policy.source,
            );
            tracing::warn!(target: "capbridge::audit", component = %policy.component_id, topic, "denied: events.publish");
            return Ok(Err(GuestError::Denied(message)));
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Ok(Err(GuestError::InvalidArgument(format!(
                "payload is {} bytes; at most {MAX_PAYLOAD_BYTES} are accepted",
                payload.len()
            ))));
        }
        let payload = match serde_json::from_str(&payload) {
            Ok(value) => value,
            Err(e) => {
                return Ok(Err(GuestError::InvalidArgument(format!(
                    "payload is not JSON: {e}"
                ))))
            }
        };
        self.grants.events.publish(Event {
            source: policy.component_id.clone(),
            topic,
            payload,
            audience: None,
        });
        Ok(Ok(()))
    }
}
