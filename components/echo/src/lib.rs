//! The example capbridge component: a template to copy, and the no-op the benchmarks call.
//!
//! Its exports cover many WIT types so that the JSON ⇄ WIT conversion can be tried on it
//! through `capbridge component call`; `say` shows a component using granted host interfaces.

// The generated glue passes flattened records as many parameters.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ world: "echo", generate_all });

use capbridge::host::{events, log};

struct Echo;

impl Guest for Echo {
    fn noop() {}

    fn echo(text: String) -> String {
        text
    }

    fn reverse(text: String) -> String {
        text.chars().rev().collect()
    }

    fn add(a: i64, b: i64) -> Result<i64, String> {
        a.checked_add(b)
            .ok_or_else(|| format!("{a} + {b} overflows a 64-bit integer"))
    }

    fn echo_drawing(drawing: Drawing) -> Drawing {
        drawing
    }

    fn echo_scalars(values: Scalars) -> Scalars {
        values
    }

    fn echo_result(value: Result<u32, String>) -> Result<u32, String> {
        value
    }

    fn say(message: String) -> Result<(), String> {
        log::write(log::Level::Info, &format!("saying {message:?}"));
        let payload = format!("{{\"message\":{}}}", json_string(&message));
        events::publish("echo.said", &payload).map_err(|e| format!("{e:?}"))
    }
}

/// Quotes a string as JSON (the component keeps no JSON dependency to stay small).
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
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

export!(Echo);
