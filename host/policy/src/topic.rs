//! Event topics and the patterns that grant them.
//!
//! A topic is a dotted lowercase name (`echo.said`): segments of `[a-z0-9_-]`, separated by
//! single dots. A pattern is an exact topic, a topic followed by `.*` (any topic below it), or a
//! lone `*` (every topic).

use std::fmt;

/// One entry of `grants.events`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicPattern {
    /// Exactly this topic.
    Exact(String),
    /// Any topic below this prefix (written `prefix.*`): `echo.*` matches `echo.said` and
    /// `echo.a.b`, not `echo` nor `echoes.x`. The prefix is stored without the `.*`.
    Below(String),
    /// Every topic (written `*`).
    Any,
}

impl TopicPattern {
    /// Parse one pattern as written in a policy file.
    pub fn parse(text: &str) -> Result<TopicPattern, String> {
        if text == "*" {
            return Ok(TopicPattern::Any);
        }
        if text.is_empty() {
            return Err("must not be empty".to_string());
        }
        let (topic, below) = match text.strip_suffix(".*") {
            Some(prefix) => (prefix, true),
            None => (text, false),
        };
        check_topic(topic).map_err(|e| {
            format!("{e}; a pattern is a topic like echo.said, a prefix like echo.*, or *")
        })?;
        if is_reserved(topic) {
            return Err(format!(
                "topics under `{RESERVED}` are the bridge's own events; components cannot publish them"
            ));
        }
        Ok(if below {
            TopicPattern::Below(topic.to_string())
        } else {
            TopicPattern::Exact(topic.to_string())
        })
    }

    /// Whether `topic` falls under this pattern. A topic that is not well formed (see the
    /// module docs) matches no pattern, not even `*`.
    pub fn matches(&self, topic: &str) -> bool {
        if check_topic(topic).is_err() || is_reserved(topic) {
            return false;
        }
        match self {
            TopicPattern::Exact(exact) => topic == exact,
            TopicPattern::Below(prefix) => topic
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.starts_with('.')),
            TopicPattern::Any => true,
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicPattern::Exact(topic) => f.write_str(topic),
            TopicPattern::Below(prefix) => write!(f, "{prefix}.*"),
            TopicPattern::Any => f.write_str("*"),
        }
    }
}

/// The prefix of the bridge's own events (`bridge.connected`, …): no pattern grants it, not
/// even `*`, so a component cannot pose as the bridge on the event socket.
pub const RESERVED: &str = "bridge";

fn is_reserved(topic: &str) -> bool {
    topic == RESERVED
        || topic
            .strip_prefix(RESERVED)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Check that `topic` is a well-formed topic name.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("must not be empty".to_string());
    }
    if let Some(bad) = topic
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-' | '.'))
    {
        return Err(format!(
            "{bad:?} is not allowed (use lowercase letters, digits, '_', '-' and '.')"
        ));
    }
    if topic.split('.').any(str::is_empty) {
        return Err("has an empty segment (a leading, trailing or doubled '.')".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> TopicPattern {
        TopicPattern::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn the_bridge_topics_are_reserved() {
        for reserved in ["bridge", "bridge.*", "bridge.connected"] {
            let err = TopicPattern::parse(reserved).unwrap_err();
            assert!(err.contains("bridge's own events"), "{reserved}: {err}");
        }
        assert!(!TopicPattern::Any.matches("bridge.stopping"));
        assert!(!TopicPattern::Any.matches("bridge"));
        assert!(TopicPattern::Any.matches("bridges.x"));
        assert!(pattern("bridges.*").matches("bridges.x"));
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            pattern("echo.said"),
            TopicPattern::Exact("echo.said".into())
        );
        assert_eq!(pattern("echo.*"), TopicPattern::Below("echo".into()));
        assert_eq!(
            pattern("a-b_c.d9.*"),
            TopicPattern::Below("a-b_c.d9".into())
        );
        assert_eq!(pattern("*"), TopicPattern::Any);
        for text in ["echo.said", "echo.*", "*"] {
            assert_eq!(pattern(text).to_string(), text);
        }
    }

    #[test]
    fn rejects_malformed_patterns() {
        for bad in [
            "",
            "Echo",
            "echo.",
            ".echo",
            "echo..said",
            "echo*",
            "*.echo",
            "echo.*.said",
            "echo.**",
            ".*",
            "echo said",
            "echo/said",
            "échо",
            "echo.*.*",
        ] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let message = TopicPattern::parse("Echo").unwrap_err();
        assert!(message.contains("'E'"), "{message}");
    }

    #[test]
    fn prefix_matches_below_only() {
        let p = pattern("echo.*");
        assert!(p.matches("echo.said"));
        assert!(p.matches("echo.a.b"));
        assert!(!p.matches("echo"));
        assert!(!p.matches("echoes.x"));
        assert!(!p.matches("other.echo.said"));
        assert!(!p.matches("echo."));
        assert!(!p.matches("echo..x"));
    }

    #[test]
    fn exact_matches_itself_only() {
        let p = pattern("echo.said");
        assert!(p.matches("echo.said"));
        assert!(!p.matches("echo.said.more"));
        assert!(!p.matches("echo"));
        assert!(!p.matches("ECHO.SAID"));
    }

    #[test]
    fn any_matches_every_well_formed_topic() {
        let p = pattern("*");
        assert!(p.matches("echo"));
        assert!(p.matches("a.b.c"));
        assert!(!p.matches(""));
        assert!(!p.matches("Bad Topic"));
    }
}
