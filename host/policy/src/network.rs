//! Network grants: outbound HTTP(S) origins, and which addresses count as private.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The scheme of a network grant. Only HTTP and HTTPS are ever granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// The port used when a grant does not write one: 80 for http, 443 for https.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One granted origin: requests may go to exactly this scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkGrant {
    pub scheme: Scheme,
    /// Lowercased host name (IDNA names in their ASCII form), or an IP literal; IPv6 is written
    /// without brackets.
    pub host: String,
    /// The port, filled in from the scheme when not written.
    pub port: u16,
    /// The entry as written in the policy file.
    pub text: String,
}

impl NetworkGrant {
    /// Parse one `grants.network` entry: `scheme://host[:port]`, scheme http or https, path
    /// empty or `/`, no query, fragment, user info or wildcard.
    pub fn parse(text: &str) -> Result<NetworkGrant, String> {
        const FORM: &str = "write an origin as scheme://host[:port], e.g. https://api.example.com";
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("spaces and control characters are not allowed".to_string());
        }
        if text.contains('*') {
            return Err(format!(
                "wildcards are not supported; name each host ({FORM})"
            ));
        }
        let Some((scheme_text, rest)) = text.split_once("://") else {
            return Err(format!("not an origin ({FORM})"));
        };
        let scheme = match scheme_text.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => {
                return Err(format!(
                    "scheme {scheme_text:?} is not granted; only http and https are"
                ))
            }
        };
        // Checked on the text too: the URL parser drops an empty query or fragment marker and
        // resolves dot segments, and a reviewer should see exactly what is granted.
        let authority_end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
        let (authority, after) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err("user info (user@ or user:password@) is not allowed".to_string());
        }
        if after.contains('?') {
            return Err("a query (?...) is not allowed".to_string());
        }
        if after.contains('#') {
            return Err("a fragment (#...) is not allowed".to_string());
        }
        if !after.is_empty() && after != "/" {
            // Includes a backslash, which URL parsers read as a slash.
            return Err(format!(
                "a path ({after}) is not allowed; a grant names an origin, not a URL"
            ));
        }
        if authority.is_empty() {
            return Err(format!("no host ({FORM})"));
        }
        let url = url::Url::parse(text).map_err(|e| format!("not a valid origin: {e}"))?;
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(format!("no host ({FORM})")),
        };
        if authority.ends_with(':') {
            return Err("empty port after ':'".to_string());
        }
        let port = url.port().unwrap_or(scheme.default_port());
        if port == 0 {
            return Err("port 0 is not a port one can connect to".to_string());
        }
        Ok(NetworkGrant {
            scheme,
            host,
            port,
            text: text.to_string(),
        })
    }

    /// Whether this grant matches a request to `scheme://host:port`. The host is compared
    /// case-insensitively and exactly (no suffix matching); IP literals compare by address, and
    /// an IPv6 host may be given with or without brackets.
    pub fn matches(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        if self.scheme != scheme || self.port != port {
            return false;
        }
        let host = strip_brackets(host);
        match (self.host.parse::<IpAddr>(), host.parse::<IpAddr>()) {
            (Ok(granted), Ok(asked)) => granted == asked,
            (Ok(_), Err(_)) | (Err(_), Ok(_)) => false,
            (Err(_), Err(_)) => self.host.eq_ignore_ascii_case(host),
        }
    }

    /// Whether the grant names this machine or the local network: its host is an IP literal
    /// for which [`is_private_address`] holds, or `localhost` (or a name under `.localhost`,
    /// which resolves to loopback). Only such grants may reach private addresses; a host name
    /// that resolves to one is refused at call time.
    pub fn names_private_address(&self) -> bool {
        match self.host.parse::<IpAddr>() {
            Ok(ip) => is_private_address(ip),
            Err(_) => {
                let host = self.host.trim_end_matches('.').to_ascii_lowercase();
                host == "localhost" || host.ends_with(".localhost")
            }
        }
    }
}

impl fmt::Display for NetworkGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Whether `ip` is on this machine or a private network: loopback (127.0.0.0/8, ::1),
/// unspecified or "this network" (0.0.0.0/8, ::), RFC 1918 (10/8, 172.16/12, 192.168/16),
/// link-local (169.254/16, fe80::/10), carrier-grade NAT (100.64/10), unique-local (fc00::/7),
/// and IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) of any of these.
pub fn is_private_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => is_private_v6(v6),
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_private_v4(v4);
    }
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(text: &str) -> NetworkGrant {
        NetworkGrant::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn rejected(text: &str) -> String {
        match NetworkGrant::parse(text) {
            Ok(g) => panic!("{text} was accepted as {g:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_origins_with_default_ports() {
        let g = grant("https://api.example.com");
        assert_eq!(
            (g.scheme, g.host.as_str(), g.port, g.text.as_str()),
            (
                Scheme::Https,
                "api.example.com",
                443,
                "https://api.example.com"
            )
        );
        let g = grant("http://example.com/");
        assert_eq!((g.scheme, g.port), (Scheme::Http, 80));
        let g = grant("http://127.0.0.1:8080");
        assert_eq!((g.host.as_str(), g.port), ("127.0.0.1", 8080));
        let g = grant("HTTPS://API.Example.COM:8443");
        assert_eq!(
            (g.scheme, g.host.as_str(), g.port),
            (Scheme::Https, "api.example.com", 8443)
        );
        assert_eq!(g.text, "HTTPS://API.Example.COM:8443");
        let g = grant("https://example.com:443");
        assert_eq!(g.port, 443);
    }

    #[test]
    fn ipv6_hosts_lose_their_brackets() {
        let g = grant("http://[::1]:3000");
        assert_eq!((g.host.as_str(), g.port), ("::1", 3000));
        let g = grant("https://[FD00:0:0::1]");
        assert_eq!(g.host, "fd00::1");
        assert_eq!(g.to_string(), "https://[fd00::1]:443");
    }

    #[test]
    fn rejects_what_is_not_an_origin() {
        assert!(rejected("ftp://example.com").contains("only http and https"));
        assert!(rejected("ws://example.com").contains("only http and https"));
        assert!(rejected("example.com").contains("scheme://host"));
        assert!(rejected("https://").contains("no host"));
        assert!(rejected("https:///path").contains("path"));
        assert!(rejected("https://example.com/api").contains("path"));
        assert!(rejected("https://example.com?x=1").contains("query"));
        assert!(rejected("https://example.com/?").contains("query"));
        assert!(rejected("https://example.com#top").contains("fragment"));
        assert!(rejected("https://user@example.com").contains("user info"));
        assert!(rejected("https://user:pw@example.com").contains("user info"));
        assert!(rejected("https://*.example.com").contains("wildcard"));
        assert!(rejected("https://example.com:*").contains("wildcard"));
        assert!(rejected("https://example.com:").contains("port"));
        assert!(rejected("https://example.com:0").contains("port 0"));
        assert!(rejected("https://example.com:70000").contains("not a valid origin"));
        assert!(rejected("https://exa mple.com").contains("spaces"));
        assert!(rejected("https://exa%20mple.com").contains("not a valid origin"));
        assert!(rejected("").contains("scheme://host"));
        assert!(rejected("https://example.com\\x").contains("path"));
        assert!(rejected("https://exa\tmple.com").contains("control"));
        assert!(rejected(" https://example.com").contains("spaces"));
    }

    #[test]
    fn matching_checks_scheme_host_and_port() {
        let g = grant("https://api.example.com");
        assert!(g.matches(Scheme::Https, "api.example.com", 443));
        assert!(g.matches(Scheme::Https, "API.Example.com", 443));
        assert!(!g.matches(Scheme::Http, "api.example.com", 443), "scheme");
        assert!(!g.matches(Scheme::Https, "api.example.com", 8443), "port");
        assert!(!g.matches(Scheme::Https, "example.com", 443), "parent host");
        assert!(
            !g.matches(Scheme::Https, "x.api.example.com", 443),
            "subdomain"
        );
        assert!(
            !g.matches(Scheme::Https, "api.example.com.evil", 443),
            "suffix"
        );

        let g = grant("http://[::1]:8080");
        assert!(g.matches(Scheme::Http, "::1", 8080));
        assert!(g.matches(Scheme::Http, "[::1]", 8080));
        assert!(g.matches(Scheme::Http, "0:0::1", 8080));
        assert!(!g.matches(Scheme::Http, "127.0.0.1", 8080));
        assert!(!g.matches(Scheme::Http, "localhost", 8080));
    }

    #[test]
    fn private_addresses_v4() {
        for private in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
        ] {
            assert!(is_private_address(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.169.0.1",
            "1.1.1.1",
        ] {
            assert!(!is_private_address(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn private_addresses_v6_and_mapped() {
        for private in [
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:192.168.0.1",
        ] {
            assert!(is_private_address(private.parse().unwrap()), "{private}");
        }
        for public in [
            "2001:4860:4860::8888",
            "fec0::1",
            "::ffff:8.8.8.8",
            "2606:4700::1111",
        ] {
            assert!(!is_private_address(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn grants_naming_private_addresses() {
        for private in [
            "http://localhost:8080",
            "http://LOCALHOST",
            "http://app.localhost",
            "http://127.0.0.1",
            "http://[::1]",
            "http://[::ffff:192.168.0.10]",
            "https://10.0.0.5",
        ] {
            assert!(grant(private).names_private_address(), "{private}");
        }
        for public in [
            "https://api.example.com",
            "https://8.8.8.8",
            "https://localhost.example.com",
        ] {
            assert!(!grant(public).names_private_address(), "{public}");
        }
    }

    #[test]
    fn odd_ipv4_spellings_are_normalised() {
        // The URL standard reads these as IPv4 addresses, and so do resolvers.
        let g = grant("http://0x7f.1");
        assert_eq!(g.host, "127.0.0.1");
        assert!(g.names_private_address());
    }
}
