//! What the capability routes (filesystem, awake, system) share: each is a thin HTTP face on a
//! sandboxed component. A route turns its request into the export's arguments, calls the
//! component for the request's session, and maps the component's `capbridge:host/types.error`
//! to an HTTP status. The component does the work, within what its policy grants.

use axum::http::StatusCode;
use capbridge_runtime::{CallError, CallOptions};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::security::SessionId;
use crate::Shared;

/// Calls `component.function` with `args` on behalf of `session`, and returns the export's
/// value (the `ok` side of a WIT `result`) with its keys in camelCase, as `T`.
pub async fn call<T: DeserializeOwned>(
    shared: &Shared,
    session: SessionId,
    component: &str,
    function: &str,
    args: Value,
) -> Result<T, ApiError> {
    // The component's policy bounds the call (`limits.deadline-ms`): a picker waits for a
    // person, a tools inventory runs programs.
    let options = CallOptions {
        deadline: None,
        session: Some(session.0),
    };
    let outcome = shared
        .runtime
        .call(component, function, &args, &options)
        .await
        .map_err(|e| call_error(component, function, e))?;
    let value = match outcome.result {
        Value::Object(mut map) if map.len() == 1 && map.contains_key("ok") => {
            map.remove("ok").unwrap_or(Value::Null)
        }
        Value::Object(map) if map.len() == 1 && map.contains_key("err") => {
            return Err(component_error(map.get("err").unwrap_or(&Value::Null)))
        }
        other => other,
    };
    serde_json::from_value(camel_keys(value)).map_err(|e| {
        tracing::warn!(target: "capbridge::api", component, function, error = %e, "unexpected result shape");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "capability_failed",
            format!("component `{component}` answered `{function}` with an unexpected value: {e}"),
        )
    })
}

/// A component's `capbridge:host/types.error` (`{"not-found": "…"}`) as an HTTP error.
fn component_error(err: &Value) -> ApiError {
    let (kind, message) = match err {
        Value::Object(map) if map.len() == 1 => {
            let (kind, message) = map.iter().next().expect("one entry");
            (
                kind.as_str(),
                message.as_str().unwrap_or_default().to_string(),
            )
        }
        other => ("", other.to_string()),
    };
    let (status, code) = match kind {
        "denied" => (StatusCode::FORBIDDEN, "denied"),
        "invalid-argument" => (StatusCode::BAD_REQUEST, "invalid_argument"),
        "unavailable" => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        "not-found" => (StatusCode::NOT_FOUND, "not_found"),
        "conflict" => (StatusCode::CONFLICT, "conflict"),
        "too-large" => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "capability_failed"),
    };
    ApiError::new(status, code, message)
}

fn call_error(component: &str, function: &str, error: CallError) -> ApiError {
    let message = error.to_string();
    match error {
        CallError::UnknownComponent(_) | CallError::NotLoaded { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "capability_unavailable",
            message,
        )
        .with_hint(format!(
            "capbridge serves this route with the component `{component}`; `capbridge component \
             list` shows why it is not loaded"
        )),
        CallError::Timeout(_) => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, "capability_timeout", message)
        }
        // The route builds the arguments: one that does not fit the export is a mismatch
        // between this bridge and the installed component, not the client's fault.
        CallError::InvalidArguments(_)
        | CallError::UnknownFunction { .. }
        | CallError::Unsupported { .. }
        | CallError::Trap(_)
        | CallError::Host(_) => {
            tracing::warn!(target: "capbridge::api", component, function, "{message}");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "capability_failed",
                message,
            )
        }
    }
}

/// Rewrites WIT's kebab-case record fields (`modified-ms`) as the contract's camelCase
/// (`modifiedMs`), at every depth. String values are left alone.
pub fn camel_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (camel(&k), camel_keys(v)))
                .collect::<Map<_, _>>(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(camel_keys).collect()),
        other => other,
    }
}

fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_become_camel_case_values_do_not() {
        assert_eq!(
            camel_keys(
                json!({"modified-ms": 1, "holds": [{"acquired-at-ms": 2, "reason": "a-b"}]})
            ),
            json!({"modifiedMs": 1, "holds": [{"acquiredAtMs": 2, "reason": "a-b"}]})
        );
    }

    #[test]
    fn error_kinds_map_to_statuses() {
        for (kind, status) in [
            ("denied", 403),
            ("invalid-argument", 400),
            ("unavailable", 503),
            ("not-found", 404),
            ("conflict", 409),
            ("too-large", 413),
            ("other", 500),
        ] {
            let e = component_error(&json!({ kind: "why" }));
            assert_eq!(e.status.as_u16(), status, "{kind}");
        }
    }
}
