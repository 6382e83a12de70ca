//! `GET /ws/v1/events?sessionToken=…`: every event on the bus, in one envelope, to each
//! authenticated client. A slow client never holds up the others: each reads the bus at its own
//! position in a bounded ring, and what it missed is counted and reported to it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use utoipa_axum::routes;

use super::{RouteModule, Routes, Tier};
use capbridge_runtime::Subscription;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::security::{authenticate, Authenticated};
use crate::{Shared, BRIDGE_SOURCE, PROTOCOL_VERSION};

/// Close code sent when the session expires (application range 4000–4999).
pub const CLOSE_SESSION_EXPIRED: u16 = 4001;

pub const MODULE: RouteModule = RouteModule {
    capabilities: &[],
    component: None,
    routes: || vec![(Tier::Socket, Routes::new().routes(routes!(upgrade)))],
};

/// Every message on the event socket.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope {
    /// The event name: `bridge.*` for the bridge's own, a component's topic otherwise.
    #[serde(rename = "type")]
    pub kind: String,
    /// 1, 2, 3, … per connection, without gaps (missed events are reported, not skipped).
    pub seq: u64,
    /// RFC 3339 with milliseconds, UTC.
    pub timestamp: String,
    /// `capbridge` for the bridge, else the publishing component's id.
    pub source: String,
    pub payload: serde_json::Value,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct EventsQuery {
    /// The session token (the only route that takes it in the query: browsers cannot set
    /// headers on a WebSocket).
    pub session_token: Option<String>,
}

/// The event stream. Host, Origin and token are checked before the upgrade.
#[utoipa::path(get, path = "/ws/v1/events", tag = "events", params(EventsQuery),
    responses(
        (status = 101, description = "WebSocket of `Envelope` JSON text messages"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ))]
pub async fn upgrade(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let session = authenticate(
        &shared,
        query.session_token.as_deref(),
        origin,
        "the event socket needs a session: connect to /ws/v1/events?sessionToken=<token from \
         POST /api/v1/session/handshake> (browsers cannot set headers on a WebSocket)",
    )?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::bad_request(
            "websocket_required",
            format!("not a WebSocket upgrade: {e}"),
        )
    })?;
    // Subscribe before answering so nothing published after the upgrade is missed.
    let events = shared.runtime.events().subscribe_as(session);
    let mut response = upgrade
        .on_upgrade(move |socket| {
            let sockets = shared.sockets.clone();
            sockets.track_future(stream(socket, shared, session, events))
        })
        .into_response();
    response.extensions_mut().insert(Authenticated);
    Ok(response)
}

struct Sender {
    socket: WebSocket,
    seq: u64,
    send_timeout: Duration,
}

impl Sender {
    /// Sends one envelope; `false` if the client is gone or not reading.
    async fn send(&mut self, kind: &str, source: &str, payload: serde_json::Value) -> bool {
        self.seq += 1;
        let envelope = Envelope {
            kind: kind.to_string(),
            seq: self.seq,
            timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            source: source.to_string(),
            payload,
        };
        let Ok(text) = serde_json::to_string(&envelope) else {
            return false;
        };
        matches!(
            tokio::time::timeout(
                self.send_timeout,
                self.socket.send(Message::Text(text.into()))
            )
            .await,
            Ok(Ok(()))
        )
    }

    async fn close(mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(
            self.send_timeout,
            self.socket.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

async fn stream(socket: WebSocket, shared: Arc<Shared>, session: u64, mut events: Subscription) {
    let heartbeat = shared.config.heartbeat_interval();
    let mut sender = Sender {
        socket,
        seq: 0,
        send_timeout: heartbeat.max(Duration::from_secs(5)),
    };
    let mut shutdown = shared.shutdown.subscribe();
    let mut dropped_total: u64 = 0;
    let hello = serde_json::json!({
        "protocolVersion": PROTOCOL_VERSION,
        "heartbeatIntervalMs": heartbeat.as_millis() as u64,
    });
    if !sender.send("bridge.connected", BRIDGE_SOURCE, hello).await {
        return;
    }
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    loop {
        tokio::select! {
            received = events.recv() => match received {
                // A run's events and its prompt are its session's alone.
                Ok(event) if event.audience.is_some_and(|a| a != session) => {}
                Ok(event) => {
                    if !sender.send(&event.topic, &event.source, event.payload).await {
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    dropped_total += missed;
                    let payload = serde_json::json!({ "dropped": missed, "droppedTotal": dropped_total });
                    if !sender.send("bridge.events.dropped", BRIDGE_SOURCE, payload).await {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            _ = ticks.tick() => {
                if !shared.sessions.is_live(session) {
                    sender.send("bridge.session.expired", BRIDGE_SOURCE, serde_json::json!({})).await;
                    sender.close(CLOSE_SESSION_EXPIRED, "session expired").await;
                    return;
                }
                if !sender.send("bridge.heartbeat", BRIDGE_SOURCE, serde_json::json!({ "droppedTotal": dropped_total })).await {
                    return;
                }
            }
            incoming = sender.socket.recv() => match incoming {
                // Clients have nothing to say on this socket; pings are answered by the library.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
        }
    }
    sender
        .send("bridge.stopping", BRIDGE_SOURCE, serde_json::json!({}))
        .await;
    sender.close(1001, "bridge stopping").await;
}
