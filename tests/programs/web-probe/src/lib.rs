//! Web probe: answers its routes by describing the request it was given, as JSON, except for a
//! few routes that misbehave on purpose (a handler that never returns, one that traps, a body
//! that is not valid base64) and one that echoes its body with its encoding.

wit_bindgen::generate!({ world: "web-probe", generate_all });

use exports::capbridge::host::route_handler::{BodyEncoding, Guest, RouteRequest, RouteResponse};

struct Probe;

impl Guest for Probe {
    fn handle(request: RouteRequest) -> RouteResponse {
        match request.route_id.as_str() {
            "slow" => loop {
                std::hint::spin_loop();
            },
            "trap" => panic!("the trap route traps"),
            "bad-base64" => RouteResponse {
                status: 200,
                headers: vec![],
                body: "this is not base64!".into(),
                body_encoding: BodyEncoding::Base64,
            },
            "echo-body" => RouteResponse {
                status: 200,
                headers: vec![("content-type".into(), "application/octet-stream".into())],
                body: request.body,
                body_encoding: request.body_encoding,
            },
            _ => {
                let status = if request.method == "POST" { 202 } else { 200 };
                RouteResponse {
                    status,
                    headers: vec![
                        ("content-type".into(), "application/json".into()),
                        ("x-probe".into(), "yes".into()),
                        // The host decides these; the probe tries anyway.
                        ("set-cookie".into(), "capbridge-ui=forged".into()),
                        ("access-control-allow-origin".into(), "*".into()),
                    ],
                    body: describe(&request),
                    body_encoding: BodyEncoding::Utf8,
                }
            }
        }
    }
}

/// The request as a JSON object (written by hand: the probe has no dependencies).
fn describe(request: &RouteRequest) -> String {
    let pairs = |list: &[(String, String)]| {
        let items: Vec<String> = list
            .iter()
            .map(|(k, v)| format!("[{},{}]", quote(k), quote(v)))
            .collect();
        format!("[{}]", items.join(","))
    };
    format!(
        "{{\"route\":{},\"method\":{},\"path\":{},\"query\":{},\"params\":{},\"headers\":{},\"body\":{},\"encoding\":{},\"baseUrl\":{}}}",
        quote(&request.route_id),
        quote(&request.method),
        quote(&request.path),
        pairs(&request.query),
        pairs(&request.path_params),
        pairs(&request.headers),
        quote(&request.body),
        quote(match request.body_encoding {
            BodyEncoding::Utf8 => "utf8",
            BodyEncoding::Base64 => "base64",
        }),
        quote(&request.base_url),
    )
}

fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

export!(Probe);
