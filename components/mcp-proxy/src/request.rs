//! The requests the front exports hand to the driver through `mcp::submit`: this component's
//! own shape, JSON with an `op` tag.
//!
//! ```json
//! {"op":"capabilities","timeoutMs":60000}
//! {"op":"call","tool":"echo","arguments":{"text":"hi"},"callId":"call-…","timeoutMs":60000}
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Request {
    /// Every page of every list the server announces.
    Capabilities { timeout_ms: u64 },
    /// `tools/call`.
    Call {
        tool: String,
        arguments: Map<String, Value>,
        call_id: String,
        timeout_ms: u64,
    },
}

impl Request {
    /// The driver's own deadline for this request.
    pub fn timeout_ms(&self) -> u64 {
        match self {
            Request::Capabilities { timeout_ms } | Request::Call { timeout_ms, .. } => *timeout_ms,
        }
    }

    pub fn to_json(&self) -> String {
        // A `Map<String, Value>` always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes() {
        let caps = Request::Capabilities { timeout_ms: 60_000 };
        assert_eq!(caps.to_json(), r#"{"op":"capabilities","timeoutMs":60000}"#);
        let mut arguments = Map::new();
        arguments.insert("text".into(), "hi".into());
        let call = Request::Call {
            tool: "echo".into(),
            arguments,
            call_id: "c1".into(),
            timeout_ms: 5,
        };
        let json = call.to_json();
        assert_eq!(
            json,
            r#"{"op":"call","tool":"echo","arguments":{"text":"hi"},"callId":"c1","timeoutMs":5}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), call);
    }
}
