//! `capbridge:host/events`: publishing on the event bus, scoped to the granted topics.

use serde::Serialize;
use tokio::sync::broadcast;

use super::capbridge::host::events::Host;
use super::GuestError;
use crate::state::HostState;

/// Largest payload a component may publish.
pub const MAX_PAYLOAD_BYTES: usize = 64 << 10;

/// One event as published by a component (the API layer adds sequence numbers and timestamps).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Event {
    /// The publishing component's id, or `capbridge` for the host's own events.
    pub source: String,
    pub topic: String,
    pub payload: serde_json::Value,
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
    fn publish(
        &mut self,
        topic: String,
        payload: String,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        let policy = &self.grants.policy;
        if !policy.allows_topic(&topic) {
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
        });
        Ok(Ok(()))
    }
}
