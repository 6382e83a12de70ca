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

/// Splits newline-delimited messages; blank lines are skipped.
pub struct Lines {
    line: Vec<u8>,
    /// Set while skipping a message over the cap.
    skipping: Option<IdScanner>,
}

impl Default for Lines {
    fn default() -> Self {
        Self::new()
    }
}

impl Lines {
    pub fn new() -> Self {
        Self {
            line: Vec::new(),
            skipping: None,
        }
    }

    /// Feeds `bytes`; returns the messages they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Framed> {
        let mut out = Vec::new();
        for (part, ended) in pieces(bytes) {
            match &mut self.skipping {
                Some(scanner) => scanner.feed(part),
                None if self.line.len() + part.len() > MAX_MESSAGE_BYTES => {
                    let mut scanner = IdScanner::default();
                    scanner.feed(&self.line);
                    scanner.feed(part);
                    self.line = Vec::new();
                    self.skipping = Some(scanner);
                }
                None => self.line.extend_from_slice(part),
            }
            if ended {
                if let Some(framed) = self.finish() {
                    out.push(framed);
                }
            }
        }
        out
    }

    fn finish(&mut self) -> Option<Framed> {
        if let Some(scanner) = self.skipping.take() {
            return Some(Framed::Refused {
                id: scanner.id(),
                why: too_large(),
            });
        }
        let line = std::mem::take(&mut self.line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(text(line))
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

/// A body that is one message however it is laid out (`application/json`).
#[derive(Default)]
pub struct Whole {
    bytes: Vec<u8>,
    skipping: Option<IdScanner>,
}

impl Whole {
    pub fn feed(&mut self, bytes: &[u8]) {
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

    pub fn finish(self) -> Option<Framed> {
        if let Some(scanner) = self.skipping {
            return Some(Framed::Refused {
                id: scanner.id(),
                why: too_large(),
            });
        }
        if self.bytes.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(text(self.bytes))
    }
}

/// Splits a `text/event-stream` body into the `data` of its events (only `message` events, the
/// default type, carry MCP messages).
#[derive(Default)]
pub struct Events {
    lines: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    skipping: Option<IdScanner>,
    event_type: Vec<u8>,
}

impl Events {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Framed> {
        let mut out = Vec::new();
        for (part, ended) in pieces(bytes) {
            // A field line longer than the cap can only be an oversized `data` line.
            if self.lines.len() + part.len() > MAX_MESSAGE_BYTES + 16 {
                let scanner = self.skipping.get_or_insert_with(IdScanner::default);
                let start = if self.lines.starts_with(b"data:") {
                    5
                } else {
                    0
                };
                scanner.feed(self.lines.get(start..).unwrap_or_default());
                scanner.feed(part);
                self.lines.clear();
                self.has_data = true;
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
                if let Some(scanner) = &mut self.skipping {
                    scanner.feed(value);
                } else if self.data.len() + value.len() + 1 > MAX_MESSAGE_BYTES {
                    let mut scanner = IdScanner::default();
                    scanner.feed(&self.data);
                    scanner.feed(value);
                    self.data.clear();
                    self.skipping = Some(scanner);
                } else {
                    if self.has_data {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                }
                self.has_data = true;
            }
            b"event" => self.event_type = value.to_vec(),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Framed> {
        let data = std::mem::take(&mut self.data);
        let has_data = std::mem::take(&mut self.has_data);
        let event_type = std::mem::take(&mut self.event_type);
        if let Some(scanner) = self.skipping.take() {
            return Some(Framed::Refused {
                id: scanner.id(),
                why: too_large(),
            });
        }
        if !has_data || !(event_type.is_empty() || event_type == b"message") {
            return None;
        }
        if data.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(text(data))
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
        let mut lines = Lines::new();
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
        assert!(lines.line.capacity() <= 2 * MAX_MESSAGE_BYTES);
    }

    #[test]
    fn a_json_body_is_one_message_however_it_is_laid_out() {
        let mut whole = Whole::default();
        whole.feed(b"{\n  \"id\": 1,\n");
        whole.feed(b"  \"result\": {}\n}\n");
        assert_eq!(
            whole.finish(),
            Some(Framed::Message(
                "{\n  \"id\": 1,\n  \"result\": {}\n}\n".into()
            ))
        );
        let mut big = Whole::default();
        big.feed(b"{\"id\": 2, \"result\": \"");
        big.feed(&vec![b'x'; MAX_MESSAGE_BYTES]);
        assert!(matches!(big.finish(), Some(Framed::Refused { id: Some(id), .. }) if id == "2"));
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
    }
}
