//! Seed 001's desktop bridge socket: JSON-RPC 2.0 over a Unix socket, one newline-delimited
//! request per connection, answered within 30 s. A face like the localhost contract: each
//! `desktop.<method>` calls the `desktop` component's export of that name (`snake_case` in the
//! protocol, `kebab-case` in WIT), so the same policy, grants, prompts and audit apply. Every
//! request on the socket belongs to one session of its own, [`SESSION`]: a snapshot's refs
//! carry over to the next connection's click, and automation is turned on for it once.
//!
//! Where: the managed socket `$XDG_RUNTIME_DIR/capbridge/desktop-bridge.sock` when the session
//! has a runtime directory, else the standalone `~/.capbridge/bridge.sock` (clients probe in
//! that order, as seed 001's client does). Mode 0600 in a 0700 directory; a peer of another
//! user is refused (`SO_PEERCRED`); a stale socket file is replaced only when nothing answers
//! on it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capbridge_runtime::{CallError, CallOptions, Runtime};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The session every socket request is made for (the contract's sessions count from 1).
pub const SESSION: u64 = 0;
/// The component whose exports answer `desktop.*`.
const COMPONENT: &str = "desktop";
/// Longest a connection may take, request to answer (seed 001's client waits this long).
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// A call's deadline: inside [`TIMEOUT`], so the caller hears why.
const CALL_DEADLINE: Duration = Duration::from_secs(28);
/// Longest request line: an OCR image of 32 MiB, as base64, and room for the rest.
const MAX_LINE_BYTES: u64 = 48 << 20;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 8;

/// JSON-RPC 2.0 error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
/// Seed 001's code for every error of the bridge itself.
const BRIDGE_ERROR: i64 = -32000;

/// The managed socket, when the session has a runtime directory.
pub fn managed_path() -> Option<PathBuf> {
    crate::unix_socket::runtime_dir().map(|d| d.join("desktop-bridge.sock"))
}

/// The standalone socket, in the home directory.
pub fn standalone_path() -> Option<PathBuf> {
    directories::BaseDirs::new().map(|d| d.home_dir().join(".capbridge/bridge.sock"))
}

/// Where this capbridge answers: the managed socket, else the standalone one.
pub fn default_path() -> anyhow::Result<PathBuf> {
    managed_path()
        .or_else(standalone_path)
        .ok_or_else(|| anyhow::anyhow!("neither XDG_RUNTIME_DIR nor a home directory is set"))
}

/// The bridge socket, while it is served: remove the file and stop answering when dropped.
pub struct Answering {
    pub path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the bridge socket at `path` (else [`default_path`]) and answers on it for `runtime`.
/// A socket that cannot be bound (another capbridge answers there) is said, not fatal: the
/// contract still serves.
pub async fn answer_on_socket(path: Option<PathBuf>, runtime: Arc<Runtime>) -> Option<Answering> {
    let bound = async {
        let path = match path {
            Some(path) => path,
            None => default_path()?,
        };
        let listener = crate::unix_socket::bind(&path).await?;
        anyhow::Ok((path, listener))
    };
    match bound.await {
        Ok((path, listener)) => Some(Answering {
            path,
            task: tokio::spawn(serve(listener, runtime)),
        }),
        Err(e) => {
            println!("capbridge: the desktop bridge socket is not served: {e:#}");
            None
        }
    }
}

async fn serve(listener: UnixListener, runtime: Arc<Runtime>) {
    crate::unix_socket::serve(listener, MAX_CONNECTIONS, TIMEOUT, move |stream| {
        let runtime = runtime.clone();
        async move { answer(stream, &runtime).await }
    })
    .await
}

async fn answer(stream: UnixStream, runtime: &Runtime) -> std::io::Result<()> {
    let me = rustix::process::getuid().as_raw();
    let peer = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let response = if peer != me {
        // Refused before anything is read.
        tracing::warn!(target: "capbridge::audit", peer_uid = peer, "desktop bridge socket: refused a caller of another user");
        Some(error(
            Value::Null,
            BRIDGE_ERROR,
            "this socket answers only its own user",
        ))
    } else {
        let mut line = Vec::new();
        let mut reader = BufReader::new(read.take(MAX_LINE_BYTES + 1));
        reader.read_until(b'\n', &mut line).await?;
        if line.len() as u64 > MAX_LINE_BYTES {
            Some(error(
                Value::Null,
                INVALID_REQUEST,
                &format!("Invalid Request: longer than {MAX_LINE_BYTES} bytes"),
            ))
        } else {
            respond(&line, runtime).await
        }
    };
    if let Some(response) = response {
        let mut out = serde_json::to_vec(&response).expect("JSON");
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    write.shutdown().await
}

/// The response to one request line; none for a notification (a request without `id`, which
/// JSON-RPC 2.0 never answers).
async fn respond(line: &[u8], runtime: &Runtime) -> Option<Value> {
    let request: Value = match serde_json::from_slice(line) {
        Ok(request) => request,
        Err(e) => {
            return Some(error(
                Value::Null,
                PARSE_ERROR,
                &format!("Parse error: {e}"),
            ))
        }
    };
    let Some(object) = request.as_object() else {
        let what = if request.is_array() {
            "Invalid Request: batches are not supported (one request per connection)"
        } else {
            "Invalid Request: a request is a JSON object"
        };
        return Some(error(Value::Null, INVALID_REQUEST, what));
    };
    let id = match object.get("id") {
        None => None,
        Some(id @ (Value::Null | Value::String(_) | Value::Number(_))) => Some(id.clone()),
        Some(_) => {
            return Some(error(
                Value::Null,
                INVALID_REQUEST,
                "Invalid Request: `id` is a string, a number or null",
            ))
        }
    };
    let answer = |response: Value| id.is_some().then_some(response);
    let reply_id = id.clone().unwrap_or(Value::Null);
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return answer(error(
            reply_id,
            INVALID_REQUEST,
            "Invalid Request: `\"jsonrpc\": \"2.0\"` is required",
        ));
    }
    let Some(method) = object.get("method").and_then(Value::as_str) else {
        return answer(error(
            reply_id,
            INVALID_REQUEST,
            "Invalid Request: `method` is a string",
        ));
    };
    answer(call(reply_id, method, object.get("params"), runtime).await)
}

/// Calls `method` with `params` on the `desktop` component: the response for `id`.
async fn call(id: Value, method: &str, params: Option<&Value>, runtime: &Runtime) -> Value {
    let Some(function) = method
        .strip_prefix("desktop.")
        .filter(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    else {
        return error(id, METHOD_NOT_FOUND, &format!("Method not found: {method}"));
    };
    let args = match params {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(params)) => Value::Object(wit_names(params)),
        Some(_) => return error(id, INVALID_PARAMS, "Invalid params: `params` is an object"),
    };
    let options = CallOptions {
        deadline: Some(CALL_DEADLINE),
        session: Some(SESSION),
    };
    match runtime
        .call(COMPONENT, &function.replace('_', "-"), &args, &options)
        .await
    {
        Ok(outcome) => match outcome.result {
            Value::Object(mut result) if result.contains_key("err") => {
                let err = result.remove("err").unwrap_or_default();
                // `{"unavailable": "No display"}`: the message, and its kind as data.
                let (kind, message) = match &err {
                    Value::Object(variant) if variant.len() == 1 => {
                        let (kind, message) = variant.iter().next().expect("one");
                        (
                            Some(kind.clone()),
                            message
                                .as_str()
                                .map_or_else(|| message.to_string(), str::to_string),
                        )
                    }
                    other => (None, other.to_string()),
                };
                let mut response = error(id, BRIDGE_ERROR, &message);
                if let Some(kind) = kind {
                    response["error"]["data"] = json!({ "kind": kind });
                }
                response
            }
            Value::Object(mut result) if result.len() == 1 && result.contains_key("ok") => {
                success(id, seed_names(result.remove("ok").unwrap_or_default()))
            }
            other => success(id, seed_names(other)),
        },
        Err(CallError::UnknownFunction { .. }) => {
            error(id, METHOD_NOT_FOUND, &format!("Method not found: {method}"))
        }
        Err(CallError::InvalidArguments(reason)) => {
            error(id, INVALID_PARAMS, &format!("Invalid params: {reason}"))
        }
        Err(e) => error(id, BRIDGE_ERROR, &e.to_string()),
    }
}

/// Seed 001's `snake_case` parameter names as the component's `kebab-case` ones; `ref_id`,
/// the name seed 001's types give a ref, as the `ref` its methods take.
fn wit_names(params: &Map<String, Value>) -> Map<String, Value> {
    params
        .iter()
        .map(|(key, value)| {
            let key = match key.as_str() {
                "ref_id" => "ref".to_string(),
                other => other.replace('_', "-"),
            };
            let value = match value {
                Value::Object(inner) => Value::Object(wit_names(inner)),
                other => other.clone(),
            };
            (key, value)
        })
        .collect()
}

/// A result's field names as seed 001 spells them (`image_base64`, `ref_id`).
fn seed_names(value: Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(key, value)| (key.replace('-', "_"), seed_names(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(seed_names).collect()),
        other => other,
    }
}

fn success(id: Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_go_from_the_seed_to_wit_and_back() {
        let params = json!({"ref_id": "e1", "delta_x": 1, "position": {"x": 1}});
        assert_eq!(
            Value::Object(wit_names(params.as_object().unwrap())),
            json!({"ref": "e1", "delta-x": 1, "position": {"x": 1}})
        );
        assert_eq!(
            seed_names(json!({"elements": [{"ref-id": "e1"}], "image-base64": "x"})),
            json!({"elements": [{"ref_id": "e1"}], "image_base64": "x"})
        );
    }
}
