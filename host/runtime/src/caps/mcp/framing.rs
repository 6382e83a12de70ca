//! Whole messages out of a byte stream, never holding more than [`MAX_MESSAGE_BYTES`] of one:
//! newline-delimited JSON (stdio) and Server-Sent Events (Streamable HTTP). A message over the
//! cap is skipped as it streams past; what is kept of it is the `id` it answered, so the call
//! waiting for it hears why.

/// The largest message accepted from a server (or sent to one).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// What one message turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    Message(String),
    /// Over the cap, or not UTF-8: the `id` at its top level (as JSON) when one was seen.
    Refused {
        id: Option<String>,
        why: String,
    },
}

/// One message being read, never more than [`MAX_MESSAGE_BYTES`] of it: past the cap it is
/// skipped as it streams, keeping only its top-level `id`.
#[derive(Default)]
pub struct Capped {
    bytes: Vec<u8>,
    /// Set while skipping a message over the cap.
    skipping: Option<IdScanner>,
}

impl Capped {
    pub fn push(&mut self, bytes: &[u8]) {
        match &mut self.skipping {
            Some(scanner) => scanner.feed(bytes),
            None if self.bytes.len() + bytes.len() > MAX_MESSAGE_BYTES => {
                let mut scanner = IdScanner::default();
                scanner.feed(&self.bytes);
                scanner.feed(bytes);
                self.bytes = Vec::new();
                self.skipping = Some(scanner);
            }
            None => self.bytes.extend_from_slice(bytes),
        }
    }

    /// The message read so far (none when it is blank), and a fresh start.
    pub fn take(&mut self) -> Option<Framed> {
        if let Some(scanner) = self.skipping.take() {
            return Some(Framed::Refused {
                id: scanner.id(),
                why: too_large(),
            });
        }
        let bytes = std::mem::take(&mut self.bytes);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(text(bytes))
    }
}

/// Splits newline-delimited messages; blank lines are skipped.
#[derive(Default)]
pub struct Lines {
    line: Capped,
}

impl Lines {
    /// Feeds `bytes`; returns the messages they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Framed> {
        let mut out = Vec::new();
        for (part, ended) in pieces(bytes) {
            self.line.push(part);
            if ended {
                out.extend(self.line.take());
            }
        }
        out
    }
}

/// `bytes` cut at each newline: the pieces, each with whether a newline ended it.
fn pieces(bytes: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        Some(match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let piece = &rest[..i];
                rest = &rest[i + 1..];
                (piece, true)
            }
            None => (std::mem::take(&mut rest), false),
        })
    })
}

fn too_large() -> String {
    format!(
        "the server sent a message of more than {} MiB, which capbridge refuses",
        MAX_MESSAGE_BYTES >> 20
    )
}

fn text(bytes: Vec<u8>) -> Framed {
    match String::from_utf8(bytes) {
        Ok(text) => Framed::Message(text),
        Err(e) => {
            let mut scanner = IdScanner::default();
            scanner.feed(e.as_bytes());
            Framed::Refused {
                id: scanner.id(),
                why: "the server sent a message that is not UTF-8".into(),
            }
        }
    }
}

/// Splits a `text/event-stream` body into the `data` of its events (only `message` events, the
/// default type, carry MCP messages).
#[derive(Default)]
pub struct Events {
    /// The current field line, while it fits.
    lines: Vec<u8>,
    /// The current line is a `data` line too long to hold: the rest of it streams into `data`.
    long_data_line: bool,
    data: Capped,
    has_data: bool,
    event_type: Vec<u8>,
}

impl Events {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Framed> {
        let mut out = Vec::new();
        for (part, ended) in pieces(bytes) {
            // A field line longer than the cap can only be an oversized `data` line: the rest
            // of it goes to the message, which skips it keeping the `id`.
            if !self.long_data_line && self.lines.len() + part.len() > MAX_MESSAGE_BYTES + 16 {
                let line = std::mem::take(&mut self.lines);
                let value = line.strip_prefix(b"data:").unwrap_or(&line);
                self.start_data_line();
                self.data.push(value.strip_prefix(b" ").unwrap_or(value));
                self.long_data_line = true;
            }
            if self.long_data_line {
                self.data.push(part);
                self.long_data_line = !ended;
                continue;
            }
            self.lines.extend_from_slice(part);
            if !ended {
                continue;
            }
            let mut line = std::mem::take(&mut self.lines);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(framed) = self.line(&line) {
                out.push(framed);
            }
        }
        out
    }

    fn line(&mut self, line: &[u8]) -> Option<Framed> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(b":") {
            return None;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                self.start_data_line();
                self.data.push(value);
            }
            b"event" => self.event_type = value.to_vec(),
            _ => {}
        }
        None
    }

    /// A `data` line begins: lines of one event are joined with a newline.
    fn start_data_line(&mut self) {
        if self.has_data {
            self.data.push(b"\n");
        }
        self.has_data = true;
    }

    fn dispatch(&mut self) -> Option<Framed> {
        let message = self.data.take();
        let has_data = std::mem::take(&mut self.has_data);
        let event_type = std::mem::take(&mut self.event_type);
        let wanted = event_type.is_empty() || event_type == b"message";
        match message {
            // A refusal is told whatever the event's type: a call may be waiting for it.
            Some(refused @ Framed::Refused { .. }) => Some(refused),
            message if has_data && wanted => message,
            _ => None,
        }
    }
}

/// Finds the top-level `"id"` member of a JSON object streaming past, keeping nothing else.
#[derive(Default)]
pub struct IdScanner {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The current top-level key, while it is short enough to be `id`.
    key: Vec<u8>,
    key_done: bool,
    /// Whether the value being read belongs to the top-level key `id`.
    reading_id: bool,
    value: Vec<u8>,
    found: Option<String>,
    /// Whether the next string at depth 1 is a key.
    expect_key: bool,
}

impl IdScanner {
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.found.is_some() {
                return;
            }
            if self.reading_id && self.value.len() < 256 {
                self.value.push(b);
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    if self.depth == 1 && self.expect_key {
                        self.key_done = true;
                    }
                    if self.reading_id && self.depth == 1 {
                        self.finish_value();
                    }
                } else if self.depth == 1 && self.expect_key && self.key.len() < 4 {
                    self.key.push(b);
                }
                continue;
            }
            match b {
                b'"' => {
                    self.in_string = true;
                    if self.depth == 1 && self.expect_key {
                        self.key.clear();
                        self.key_done = false;
                    }
                }
                b'{' | b'[' => {
                    self.depth += 1;
                    if self.depth == 1 {
                        self.expect_key = true;
                    }
                }
                b'}' | b']' => {
                    if self.reading_id && self.depth == 1 {
                        self.value.pop();
                        self.finish_value();
                    }
                    self.depth = self.depth.saturating_sub(1);
                }
                b':' if self.depth == 1 && self.expect_key => {
                    self.expect_key = false;
                    if self.key_done && self.key == b"id" {
                        self.reading_id = true;
                        self.value.clear();
                    }
                }
                b',' if self.depth == 1 => {
                    if self.reading_id {
                        self.value.pop();
                        self.finish_value();
                    }
                    self.expect_key = true;
                }
                _ => {}
            }
        }
    }

    fn finish_value(&mut self) {
        self.reading_id = false;
        let text = String::from_utf8_lossy(&self.value).trim().to_string();
        // Only ids a request could have had: a number or a string.
        if serde_json::from_str::<serde_json::Value>(&text)
            .is_ok_and(|v| v.is_number() || v.is_string())
        {
            self.found = Some(text);
        }
    }

    pub fn id(&self) -> Option<String> {
        self.found.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_found_wherever_it_sits() {
        for (json, id) in [
            (r#"{"jsonrpc":"2.0","id":5,"result":{"id":9}}"#, Some("5")),
            (
                r#"{"result":{"id":9,"x":"}"},"jsonrpc":"2.0","id":"a\"b"}"#,
                Some(r#""a\"b""#),
            ),
            (
                r#"{"method":"notifications/progress","params":{"id":1}}"#,
                None,
            ),
            (r#"{ "id" : 12 }"#, Some("12")),
        ] {
            let mut scanner = IdScanner::default();
            // Fed a byte at a time, as a stream may split it anywhere.
            for b in json.as_bytes() {
                scanner.feed(std::slice::from_ref(b));
            }
            assert_eq!(scanner.id().as_deref(), id, "{json}");
        }
    }

    #[test]
    fn lines_over_the_cap_are_refused_with_their_id_and_the_next_ones_still_come() {
        let mut lines = Lines::default();
        let big = format!(
            "{{\"result\":{{\"text\":\"{}\"}},\"jsonrpc\":\"2.0\",\"id\":7}}\n",
            "x".repeat(MAX_MESSAGE_BYTES)
        );
        let mut out = Vec::new();
        for chunk in big.as_bytes().chunks(64 << 10) {
            out.extend(lines.feed(chunk));
        }
        out.extend(lines.feed(b"\n{\"id\":8}\n"));
        assert_eq!(
            out,
            vec![
                Framed::Refused {
                    id: Some("7".into()),
                    why: too_large()
                },
                Framed::Message("{\"id\":8}".into())
            ]
        );
        assert!(lines.line.bytes.capacity() <= 2 * MAX_MESSAGE_BYTES);
    }

    #[test]
    fn a_json_body_is_one_message_however_it_is_laid_out() {
        let mut whole = Capped::default();
        whole.push(b"{\n  \"id\": 1,\n");
        whole.push(b"  \"result\": {}\n}\n");
        assert_eq!(
            whole.take(),
            Some(Framed::Message(
                "{\n  \"id\": 1,\n  \"result\": {}\n}\n".into()
            ))
        );
        let mut big = Capped::default();
        big.push(b"{\"id\": 2, \"result\": \"");
        big.push(&vec![b'x'; MAX_MESSAGE_BYTES]);
        assert!(matches!(big.take(), Some(Framed::Refused { id: Some(id), .. }) if id == "2"));
    }

    #[test]
    fn event_streams_give_the_data_of_message_events() {
        let mut events = Events::default();
        let out = events.feed(
            b": comment\r\nevent: message\r\nid: 1\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\nevent: ping\ndata: x\n\ndata: {\"b\":2}\n\n",
        );
        assert_eq!(
            out,
            vec![
                Framed::Message("{\"a\":\n1}".into()),
                Framed::Message("{\"b\":2}".into())
            ]
        );
        let big = format!(
            "data: {{\"id\":3,\"r\":\"{}\"}}\n\n",
            "y".repeat(MAX_MESSAGE_BYTES)
        );
        let mut out = Vec::new();
        for chunk in big.as_bytes().chunks(1000) {
            out.extend(events.feed(chunk));
        }
        assert!(matches!(&out[..], [Framed::Refused { id: Some(id), .. }] if id == "3"));
        // The id at the end of an oversized line (as the TypeScript SDK writes it) is kept too.
        let big = format!(
            "data: {{\"r\":\"{}\",\"id\":4}}\n\ndata: {{\"id\":5}}\n\n",
            "y".repeat(MAX_MESSAGE_BYTES)
        );
        let mut out = Vec::new();
        for chunk in big.as_bytes().chunks(1000) {
            out.extend(events.feed(chunk));
        }
        assert!(
            matches!(&out[..], [Framed::Refused { id: Some(id), .. }, Framed::Message(m)] if id == "4" && m == "{\"id\":5}"),
            "{out:?}"
        );
    }
}
