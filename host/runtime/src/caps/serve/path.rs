//! Route paths (seed 004's syntax) and how a request finds its route.
//!
//! A pattern is literal segments, `:name` segments (one segment each, captured) and at most one
//! `*`, last (zero or more segments, captured as `*`). A request picks its route by tier, exact
//! before parameter before wildcard, and within a tier the first declared that matches both the
//! path and the method; HEAD is answered by a route that takes GET.

use super::Route;

/// One segment of a route pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
    Wildcard,
}

/// A parsed route path or web mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    pub text: String,
    pub segments: Vec<Segment>,
}

impl Pattern {
    /// Reads `/items/:id`, `/files/*`, `/ui`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| format!("{text:?} does not start with `/`"))?;
        let mut segments = Vec::new();
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        for (i, part) in parts.iter().enumerate() {
            let segment = if *part == "*" {
                if i + 1 != parts.len() {
                    return Err(format!("{text:?}: `*` may only be the last segment"));
                }
                Segment::Wildcard
            } else if let Some(name) = part.strip_prefix(':') {
                let valid = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !valid {
                    return Err(format!(
                        "{text:?}: `:{name}` is not a parameter name (lowercase letters, digits \
                         and `_`)"
                    ));
                }
                if segments.contains(&Segment::Param(name.to_string())) {
                    return Err(format!("{text:?}: the parameter `:{name}` appears twice"));
                }
                Segment::Param(name.to_string())
            } else {
                let valid = !part.is_empty()
                    && !part.starts_with('.')
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c));
                if !valid {
                    return Err(format!(
                        "{text:?}: segment {part:?} must be letters, digits, `-`, `_`, `.` or \
                         `~`, not empty and not starting with `.`"
                    ));
                }
                Segment::Literal(part.to_string())
            };
            segments.push(segment);
        }
        Ok(Pattern {
            text: text.to_string(),
            segments,
        })
    }

    /// 0 exact, 1 with parameters, 2 with a wildcard.
    pub fn tier(&self) -> u8 {
        if self.segments.contains(&Segment::Wildcard) {
            2
        } else if self.segments.iter().any(|s| matches!(s, Segment::Param(_))) {
            1
        } else {
            0
        }
    }

    /// The captured parameters when `path` (decoded segments) matches.
    pub fn matches(&self, path: &[String]) -> Option<Vec<(String, String)>> {
        let mut params = Vec::new();
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Wildcard => {
                    params.push(("*".to_string(), path[i.min(path.len())..].join("/")));
                    return Some(params);
                }
                Segment::Literal(text) => {
                    if path.get(i) != Some(text) {
                        return None;
                    }
                }
                Segment::Param(name) => params.push((name.clone(), path.get(i)?.clone())),
            }
        }
        (path.len() == self.segments.len()).then_some(params)
    }

    /// Whether `path` is this mount or under it (a mount is literal segments).
    pub fn contains(&self, path: &[String]) -> bool {
        path.len() >= self.segments.len()
            && self
                .segments
                .iter()
                .zip(path)
                .all(|(segment, part)| matches!(segment, Segment::Literal(text) if text == part))
    }

    /// Whether this route pattern can match the mount `mount` or a path under it.
    pub fn reaches_under(&self, mount: &Pattern) -> bool {
        for (i, mount_segment) in mount.segments.iter().enumerate() {
            match (self.segments.get(i), mount_segment) {
                (None, _) => return false,
                (Some(Segment::Wildcard), _) => return true,
                (Some(Segment::Param(_)), _) => {}
                (Some(Segment::Literal(a)), Segment::Literal(b)) if a == b => {}
                _ => return false,
            }
        }
        true
    }
}

/// What a request to a component's routes finds.
#[derive(Debug)]
pub enum RouteMatch<'a> {
    Found {
        route: &'a Route,
        params: Vec<(String, String)>,
    },
    /// The path has routes, none taking this method; `allow` is what they take.
    WrongMethod {
        allow: Vec<String>,
    },
    NotFound,
}

/// The route for `method` on `path` (decoded segments), by tier then order.
pub fn find<'a>(routes: &'a [Route], method: &str, path: &[String]) -> RouteMatch<'a> {
    let takes = |route: &Route| route.takes(method) || (method == "HEAD" && route.takes("GET"));
    let mut allow: Vec<String> = Vec::new();
    for tier in 0..3 {
        for route in routes.iter().filter(|r| r.pattern.tier() == tier) {
            let Some(params) = route.pattern.matches(path) else {
                continue;
            };
            if takes(route) {
                return RouteMatch::Found { route, params };
            }
            for m in &route.methods {
                if !allow.contains(m) {
                    allow.push(m.clone());
                }
            }
        }
    }
    if allow.is_empty() {
        return RouteMatch::NotFound;
    }
    if allow.iter().any(|m| m == "GET") && !allow.iter().any(|m| m == "HEAD") {
        allow.push("HEAD".to_string());
    }
    RouteMatch::WrongMethod { allow }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::serve::Auth;

    fn route(id: &str, path: &str, methods: &[&str]) -> Route {
        Route {
            id: id.to_string(),
            pattern: Pattern::parse(path).unwrap(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            auth: Auth::None,
            description: String::new(),
            cross_site: false,
        }
    }

    fn path(text: &str) -> Vec<String> {
        text.split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    fn found(routes: &[Route], method: &str, p: &str) -> Option<(String, Vec<(String, String)>)> {
        match find(routes, method, &path(p)) {
            RouteMatch::Found { route, params } => Some((route.id.clone(), params)),
            _ => None,
        }
    }

    #[test]
    fn exact_beats_parameter_beats_wildcard_and_the_first_wins_within_a_tier() {
        let routes = [
            route("wild", "/items/*", &["GET"]),
            route("param", "/items/:id", &["GET"]),
            route("param-later", "/items/:other", &["GET"]),
            route("exact", "/items/new", &["GET"]),
        ];
        assert_eq!(found(&routes, "GET", "/items/new").unwrap().0, "exact");
        let (id, params) = found(&routes, "GET", "/items/42").unwrap();
        assert_eq!(
            (id.as_str(), params),
            ("param", vec![("id".into(), "42".into())])
        );
        let (id, params) = found(&routes, "GET", "/items/a/b").unwrap();
        assert_eq!(
            (id.as_str(), params),
            ("wild", vec![("*".into(), "a/b".into())])
        );
        let (id, params) = found(&routes, "GET", "/items").unwrap();
        assert_eq!(
            (id.as_str(), params),
            ("wild", vec![("*".into(), String::new())])
        );
        assert!(found(&routes, "GET", "/other").is_none());
    }

    #[test]
    fn a_method_no_route_takes_is_refused_with_what_they_take() {
        let routes = [route("a", "/x", &["POST"]), route("b", "/:p", &["GET"])];
        assert_eq!(found(&routes, "POST", "/x").unwrap().0, "a");
        assert_eq!(found(&routes, "GET", "/x").unwrap().0, "b");
        assert_eq!(found(&routes, "HEAD", "/x").unwrap().0, "b");
        match find(&routes, "DELETE", &path("/x")) {
            RouteMatch::WrongMethod { allow } => assert_eq!(allow, ["POST", "GET", "HEAD"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn patterns_are_checked() {
        for bad in [
            "items", "/a/*/b", "/:Id", "/a//b", "/../x", "/.env", "/a b", "/:x/:x",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
        assert!(Pattern::parse("/").unwrap().segments.is_empty());
    }

    #[test]
    fn a_route_reaches_under_a_mount() {
        let mount = Pattern::parse("/ui").unwrap();
        for (p, under) in [
            ("/ui/health", true),
            ("/ui", true),
            ("/:page", true),
            ("/*", true),
            ("/api/:x", false),
            ("/", false),
            ("/uix", false),
        ] {
            assert_eq!(
                Pattern::parse(p).unwrap().reaches_under(&mount),
                under,
                "{p}"
            );
        }
    }
}
