//! A bounded in-memory log of recent requests, for the status window: who called what, with
//! what outcome. Paths are logged without their query strings, so no token ever enters it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ErrorCode;
use crate::security::Authenticated;
use crate::Shared;

/// Entries kept; older ones are dropped.
pub const CAPACITY: usize = 500;

#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// RFC 3339, UTC.
    pub time: String,
    pub origin: Option<String>,
    pub method: String,
    /// Without the query string.
    pub path: String,
    pub status: u16,
    pub authenticated: bool,
    pub websocket: bool,
    pub duration_ms: f64,
    /// The error code of a failed request.
    pub error: Option<String>,
}

#[derive(Default)]
pub struct ConnectionLog {
    entries: Mutex<VecDeque<Connection>>,
}

impl ConnectionLog {
    pub fn push(&self, entry: Connection) {
        let mut entries = self.entries.lock().expect("connection log lock");
        if entries.len() == CAPACITY {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// The most recent `limit` entries, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Connection> {
        let entries = self.entries.lock().expect("connection log lock");
        entries.iter().rev().take(limit).cloned().collect()
    }
}

/// Records every request, including those refused by the checks below it.
pub async fn record(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let method = request.method().to_string();
    let path = truncate(request.uri().path(), 512);
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .map(|v| truncate(&String::from_utf8_lossy(v.as_bytes()), 256));
    let websocket = request
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let error = response
        .extensions()
        .get::<ErrorCode>()
        .map(|c| c.0.clone());
    if status >= 400 {
        tracing::info!(target: "capbridge::api", %method, %path, status, error = error.as_deref().unwrap_or(""), "request refused or failed");
    }
    shared.connections.push(Connection {
        time,
        origin,
        method,
        path,
        status,
        authenticated: response.extensions().get::<Authenticated>().is_some(),
        websocket,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        error,
    });
    response
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}
