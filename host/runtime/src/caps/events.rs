//! `capbridge:host/events`: publishing on the event bus, scoped to the granted topics
//! (`grants.events`, a list of topic patterns), and the bus itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

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
    fn reach(&self, policy: &Policy) -> Vec<capbridge_policy::Reach> {
        self.patterns
            .iter()
            .zip(self.explain(policy))
            .map(|(pattern, line)| capbridge_policy::Reach::new("topic", pattern.to_string(), line))
            .collect()
    }

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

    fn widening(&self) -> &'static str {
        "a topic pattern added (`*` flagged)"
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

impl Event {
    /// One of the host's own events (`source: capbridge`), for every session (`audience:
    /// None`) or for one.
    pub fn host(topic: &str, payload: serde_json::Value, audience: Option<u64>) -> Self {
        Self {
            source: HOST_SOURCE.into(),
            topic: topic.into(),
            payload,
            audience,
        }
    }
}

/// How far behind a reader of the audience may be before [`EventBus::publish_paced`] waits.
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
    /// How many events were published, ever.
    published: Arc<AtomicU64>,
    /// How far each session's readers are ([`EventBus::subscribe_as`]).
    readers: Arc<Mutex<Vec<Weak<ReaderMark>>>>,
}

/// How many events one reader of a session has taken off the bus.
#[derive(Debug)]
struct ReaderMark {
    session: u64,
    consumed: AtomicU64,
}

/// A subscription of one session's reader (an event socket): [`EventBus::publish_paced`] waits
/// for it when it publishes to that session.
pub struct Subscription {
    receiver: broadcast::Receiver<Event>,
    mark: Arc<ReaderMark>,
}

impl Subscription {
    /// The next event, as [`broadcast::Receiver::recv`].
    pub async fn recv(&mut self) -> Result<Event, broadcast::error::RecvError> {
        let received = self.receiver.recv().await;
        let taken = match &received {
            Ok(_) => 1,
            Err(broadcast::error::RecvError::Lagged(missed)) => *missed,
            Err(broadcast::error::RecvError::Closed) => 0,
        };
        self.mark.consumed.fetch_add(taken, Ordering::Relaxed);
        received
    }
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity).0,
            published: Arc::new(AtomicU64::new(0)),
            readers: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn publish(&self, event: Event) {
        // Counted before it is sent, so a reader is never ahead of the count.
        self.published.fetch_add(1, Ordering::Relaxed);
        // No subscriber is not an error: nobody is listening yet.
        let _ = self.sender.send(event);
    }

    /// Publishes `event` once every reader of its audience is within [`PACE_BACKLOG`] events of
    /// the newest: a producer of many events (a command's output) waits for the session it
    /// writes to instead of making it lose events. Readers of other sessions (which do not get
    /// the event) never hold it up.
    pub async fn publish_paced(&self, event: Event) {
        if let Some(session) = event.audience {
            while self.behind(session) {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        self.publish(event);
    }

    /// Whether a reader of `session` is more than [`PACE_BACKLOG`] events behind.
    fn behind(&self, session: u64) -> bool {
        let published = self.published.load(Ordering::Relaxed);
        let mut readers = self.readers.lock().expect("readers lock");
        readers.retain(|r| r.strong_count() > 0);
        readers.iter().filter_map(Weak::upgrade).any(|r| {
            r.session == session
                && published.saturating_sub(r.consumed.load(Ordering::Relaxed))
                    >= PACE_BACKLOG as u64
        })
    }

    /// Every event from now on, for a reader that does not hold anyone up (a log).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }

    /// Every event from now on, for a reader of `session` whose pace the session's paced events
    /// follow (an event socket).
    pub fn subscribe_as(&self, session: u64) -> Subscription {
        let receiver = self.sender.subscribe();
        let mark = Arc::new(ReaderMark {
            session,
            consumed: AtomicU64::new(self.published.load(Ordering::Relaxed)),
        });
        self.readers
            .lock()
            .expect("readers lock")
            .push(Arc::downgrade(&mark));
        Subscription { receiver, mark }
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
            self.grants.audit.record(
                "event.published",
                Some(&policy.component_id),
                self.grants.session,
                crate::audit::Outcome::Denied,
                serde_json::json!({ "topic": topic }),
            );
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
        self.grants.audit.record(
            "event.published",
            Some(&policy.component_id),
            self.grants.session,
            crate::audit::Outcome::Allowed,
            serde_json::json!({ "topic": topic }),
        );
        self.grants.events.publish(Event {
            source: policy.component_id.clone(),
            topic,
            payload,
            audience: None,
        });
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn output(session: u64) -> Event {
        Event::host(
            "system.command.stdout",
            serde_json::json!({}),
            Some(session),
        )
    }

    #[tokio::test]
    async fn paced_events_wait_for_their_audience_only() {
        let bus = EventBus::new(1024);
        let mut mine = bus.subscribe_as(1);
        let _others_never_read = bus.subscribe_as(2);
        let _a_log_never_reads = bus.subscribe();
        // The other session's reader and the log fall behind: nobody waits for them.
        for _ in 0..PACE_BACKLOG {
            bus.publish_paced(output(1)).await;
        }
        // Session 1's reader is PACE_BACKLOG behind: the next one waits…
        let waits = tokio::time::timeout(Duration::from_millis(200), bus.publish_paced(output(1)));
        assert!(
            waits.await.is_err(),
            "it should wait for session 1's reader"
        );
        // …until that reader reads, and not for session 2's.
        for _ in 0..PACE_BACKLOG {
            mine.recv().await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), bus.publish_paced(output(1)))
            .await
            .expect("session 1's reader caught up");
        tokio::time::timeout(Duration::from_secs(5), async {
            for _ in 0..PACE_BACKLOG * 2 {
                bus.publish_paced(output(3)).await;
            }
        })
        .await
        .expect("a session without readers holds nothing up");
    }
}
