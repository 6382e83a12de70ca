//! Component routes and web UIs (`grants.serve`, ADR 0010), over real HTTP against a real bridge
//! with the `web-probe` component (tests/programs/web-probe) dropped into a components directory
//! with its web files, as a user would.

use std::net::SocketAddr;
use std::time::Duration;

use capbridge_api::BridgeConfig;
use capbridge_tests::{failure, program, Bridge, Fixture};
use reqwest::StatusCode;
use serde_json::Value;

/// The web-probe's policy: routes of every auth level and tier, and a web UI.
pub(crate) const POLICY: &str = r#"
version = 1
description = "web-probe: routes and a dashboard"

[limits]
deadline-ms = 2000

[grants.serve.web]
dir = "web"
entry = "index.html"
mount = "/ui"
auth = "owner"
api-mount = "/api"

[[grants.serve.routes]]
id = "hook"
path = "/hooks/:source"
methods = ["POST"]
auth = "verify"
description = "Webhook; the component checks the signature"

[[grants.serve.routes]]
id = "status"
path = "/public/status"
methods = ["GET"]
auth = "none"

[[grants.serve.routes]]
id = "cross"
path = "/public/form"
methods = ["POST"]
auth = "none"
cross-site = true

[[grants.serve.routes]]
id = "items-any"
path = "/items/*"
methods = ["GET"]
auth = "owner"

[[grants.serve.routes]]
id = "item"
path = "/items/:id"
methods = ["GET", "DELETE"]
auth = "owner"

[[grants.serve.routes]]
id = "item-shadowed"
path = "/items/:other"
methods = ["GET"]
auth = "owner"

[[grants.serve.routes]]
id = "items-new"
path = "/items/new"
methods = ["GET"]
auth = "owner"

[[grants.serve.routes]]
id = "whoami"
path = "/api/whoami"
methods = ["GET"]
auth = "owner"

[[grants.serve.routes]]
id = "slow"
path = "/slow"
methods = ["GET"]
auth = "none"

[[grants.serve.routes]]
id = "trap"
path = "/trap"
methods = ["GET"]
auth = "none"

[[grants.serve.routes]]
id = "bad-base64"
path = "/bad"
methods = ["GET"]
auth = "none"

[[grants.serve.routes]]
id = "echo-body"
path = "/echo"
methods = ["POST"]
auth = "none"
"#;

/// A bridge serving web-probe components, with a client that resolves their own host names to
/// the bridge (as browsers and curl resolve `*.localhost`).
pub(crate) struct Site {
    /// The components and policies (kept while the site runs).
    _fixture: Fixture,
    pub bridge: Bridge,
    pub client: reqwest::Client,
    pub port: u16,
}

impl Site {
    /// web-probe under each of `ids`, each with [`POLICY`] edited by `edit`.
    pub async fn start(ids: &[&str], config: BridgeConfig) -> Site {
        let fixture = Fixture::new();
        for id in ids {
            add_probe(&fixture, id, POLICY);
        }
        let bridge = Bridge::start(fixture.runtime(), config).await;
        let addr: SocketAddr = bridge.server.addr();
        let mut client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        for id in ids {
            client = client.resolve(&format!("{id}.localhost"), addr);
        }
        Site {
            _fixture: fixture,
            bridge,
            client: client.build().expect("client"),
            port: addr.port(),
        }
    }

    /// `http://127.0.0.1:<port>/plugins/<id><path>`
    pub fn route(&self, id: &str, path: &str) -> String {
        self.bridge.url(&format!("/plugins/{id}{path}"))
    }

    /// `http://<id>.localhost:<port><path>`
    pub fn own(&self, id: &str, path: &str) -> String {
        format!("http://{id}.localhost:{}{path}", self.port)
    }

    /// A signed-in cookie for `id`'s web UI, through a launch link.
    pub async fn sign_in(&self, id: &str) -> String {
        let link = self.launch_link(id);
        let response = self.client.get(&link).send().await.expect("launch");
        assert_eq!(response.status(), 200, "{link}");
        let cookie = response
            .headers()
            .get("set-cookie")
            .expect("a cookie")
            .to_str()
            .unwrap()
            .to_string();
        cookie.split(';').next().unwrap().to_string()
    }

    /// `GET path` on `id`'s own host, sent as written (an HTTP client would fold `..`).
    pub async fn raw_get(&self, id: &str, path: &str, cookie: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(self.bridge.server.addr())
            .await
            .expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {id}.localhost:{}\r\nCookie: {cookie}\r\n\
             Connection: close\r\n\r\n",
            self.port
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("answer");
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, answer)
    }

    pub fn launch_link(&self, id: &str) -> String {
        let serve = self
            .bridge
            .server
            .shared()
            .runtime
            .service::<capbridge_runtime::caps::serve::ServeService>()
            .expect("the serve capability");
        let code = serve.launch_code(id).expect("a launch code");
        capbridge_api::plugins::launch_url(id, self.port, &code)
    }

    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> (StatusCode, reqwest::header::HeaderMap, String) {
        let response = request.send().await.expect("the bridge answers");
        let status = response.status();
        let headers = response.headers().clone();
        (status, headers, response.text().await.unwrap_or_default())
    }

    pub async fn json(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let (status, _, text) = self.send(request).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

/// web-probe as component `id`: its `.wasm` in components/, its web files in components/<id>/web
/// (with a hidden file, a hidden directory and a symlink out, which must never be served), and
/// `policy` as its policy.
pub(crate) fn add_probe(fixture: &Fixture, id: &str, policy: &str) {
    fixture.add(id, &program("web-probe"), Some(policy));
    let web = fixture.components_dir().join(id).join("web");
    capbridge_tests::copy_web_probe_ui(&web);
    std::fs::write(web.join(".env"), "SECRET=never-served").unwrap();
    std::fs::create_dir_all(web.join(".git")).unwrap();
    std::fs::write(web.join(".git/config"), "[core]").unwrap();
    std::fs::write(
        fixture.path().join("outside.txt"),
        "outside the web directory",
    )
    .unwrap();
    let _ = std::os::unix::fs::symlink(fixture.path().join("outside.txt"), web.join("out.txt"));
    let _ = std::os::unix::fs::symlink(fixture.path(), web.join("up"));
}

fn pair<'a>(list: &'a Value, name: &str) -> Option<&'a str> {
    list.as_array()?
        .iter()
        .find(|p| p[0] == name)
        .and_then(|p| p[1].as_str())
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_match_exact_then_parameter_then_wildcard_and_take_their_methods() {
    let site = Site::start(&["probe"], BridgeConfig::default()).await;
    let token = site.bridge.token().await;
    let get = |path: &str| {
        site.client
            .get(site.route("probe", path))
            .header("x-osloop-bridge-token", &token)
    };
    for (path, route, params) in [
        ("/items/new", "items-new", vec![]),
        ("/items/42", "item", vec![("id", "42")]),
        ("/items/a%20b", "item", vec![("id", "a b")]),
        ("/items/a/b", "items-any", vec![("*", "a/b")]),
        ("/items", "items-any", vec![("*", "")]),
    ] {
        let (status, body) = site.json(get(path)).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["route"], route, "{path}: {body}");
        for (name, value) in params {
            assert_eq!(pair(&body["params"], name), Some(value), "{path}: {body}");
        }
    }
    // The query and the path as the handler sees them; capbridge's credentials are not passed.
    let (_, body) = site
        .json(get("/items/7?format=full&x=%C3%A9").header("cookie", "a=b"))
        .await;
    assert_eq!(body["path"], "/items/7?format=full&x=%C3%A9", "{body}");
    assert_eq!(pair(&body["query"], "x"), Some("é"), "{body}");
    assert_eq!(
        pair(&body["headers"], "x-osloop-bridge-token"),
        None,
        "{body}"
    );
    assert_eq!(pair(&body["headers"], "cookie"), None, "{body}");
    assert_eq!(
        body["baseUrl"],
        format!("http://127.0.0.1:{}/plugins/probe", site.port)
    );

    // A path with routes, none taking the method: 405 with what they take.
    let (status, headers, _) = site
        .send(
            site.client
                .post(site.route("probe", "/items/42"))
                .header("x-osloop-bridge-token", &token),
        )
        .await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, DELETE, HEAD");
    let (status, body) = site
        .json(
            site.client
                .delete(site.route("probe", "/items/42"))
                .header("x-osloop-bridge-token", &token),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &body["route"]),
        (200, &Value::from("item"))
    );
    let (status, body) = site.json(get("/nothing/here")).await;
    assert_eq!(status, 404, "{body}");
    // A segment is one segment: an encoded `/` (or backslash, or NUL) in it is refused.
    for path in ["/items/a%2Fb", "/items/a%5Cb", "/items/a%00b", "/items/%FF"] {
        let (status, body) = site.json(get(path)).await;
        assert_eq!(status, 400, "{path}: {body}");
    }

    // HEAD: the same route as GET, the handler told it is HEAD, no body.
    let (status, headers, text) = site
        .send(
            site.client
                .head(site.route("probe", "/items/9"))
                .header("x-osloop-bridge-token", &token),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-probe"], "yes");
    assert!(text.is_empty(), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_auth_level_with_and_without_a_session_and_from_other_origins() {
    let site = Site::start(&["probe"], BridgeConfig::default()).await;
    let token = site.bridge.token().await;
    let owner = site.route("probe", "/items/1");
    // owner: nothing, a wrong token, a cookie on the contract's host → refused.
    let (status, body) = site.json(site.client.get(&owner)).await;
    assert_eq!(
        (status.as_u16(), &body["error"]["code"]),
        (401, &Value::from("owner_only"))
    );
    let (status, _) = site
        .json(
            site.client
                .get(&owner)
                .header("x-osloop-bridge-token", "forged"),
        )
        .await;
    assert_eq!(status, 401);
    let cookie = site.sign_in("probe").await;
    let (status, _) = site
        .json(site.client.get(&owner).header("cookie", &cookie))
        .await;
    assert_eq!(
        status, 401,
        "the UI cookie counts on the component's own host only"
    );
    // …with the session, or the cookie on the component's own host: answered.
    let (status, _) = site
        .json(
            site.client
                .get(&owner)
                .header("x-osloop-bridge-token", &token),
        )
        .await;
    assert_eq!(status, 200);
    let own = site.own("probe", "/plugins/probe/items/1");
    let (status, _) = site
        .json(site.client.get(&own).header("cookie", &cookie))
        .await;
    assert_eq!(status, 200);
    // The cookie from a page of another origin, or another site: refused.
    for (name, value) in [
        ("origin", "http://other.localhost:1"),
        ("origin", "null"),
        ("sec-fetch-site", "same-site"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let (status, _) = site
            .json(
                site.client
                    .get(&own)
                    .header("cookie", &cookie)
                    .header(name, value),
            )
            .await;
        assert_eq!(status, 401, "{name}: {value}");
    }
    // none and verify: open without a session, from no origin or the component's own…
    let hook = site.route("probe", "/hooks/github");
    let (status, body) = site.json(site.client.post(&hook).body("{\"x\":1}")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (&body["route"], pair(&body["params"], "source")),
        (&Value::from("hook"), Some("github"))
    );
    assert_eq!(body["body"], "{\"x\":1}");
    let (status, _) = site
        .json(
            site.client
                .post(&hook)
                .header("x-osloop-bridge-token", "stale"),
        )
        .await;
    assert_eq!(status, 202, "a stale token on an open route is no token");
    let own_origin = format!("http://probe.localhost:{}", site.port);
    let (status, _) = site
        .json(site.client.post(&hook).header("origin", &own_origin))
        .await;
    assert_eq!(status, 202);
    // …but not from another page, unless the route opts in.
    for origin in ["https://evil.example", "null", "http://127.0.0.1:5173"] {
        let (status, body) = site
            .json(site.client.post(&hook).header("origin", origin))
            .await;
        assert_eq!(status, 403, "{origin}: {body}");
        assert_eq!(body["error"]["code"], "cross_site_refused");
    }
    let (status, _) = site
        .json(
            site.client
                .post(&hook)
                .header("sec-fetch-site", "cross-site"),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = site
        .json(
            site.client
                .post(site.route("probe", "/public/form"))
                .header("origin", "https://evil.example"),
        )
        .await;
    assert_eq!(status, 202, "cross-site = true takes it");
    // A session from a disallowed origin is no session.
    let (status, _) = site
        .json(
            site.client
                .get(&owner)
                .header("x-osloop-bridge-token", &token)
                .header("origin", "https://evil.example"),
        )
        .await;
    assert!(status == 401 || status == 403, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn open_routes_are_rate_limited_per_component_then_recover() {
    let site = Site::start(&["probe", "other"], BridgeConfig::default()).await;
    let url = site.route("probe", "/public/status");
    for i in 0..100 {
        let (status, _, _) = site.send(site.client.get(&url)).await;
        assert_eq!(status, 200, "request {i}");
    }
    let (status, headers, body) = site.send(site.client.get(&url)).await;
    assert_eq!(status, 429, "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Another component's open routes have their own budget; owner routes none.
    let (status, _, _) = site
        .send(site.client.get(site.route("other", "/public/status")))
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let (status, _, _) = site.send(site.client.get(&url)).await;
    assert_eq!(status, 200, "recovered after Retry-After");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_or_trapping_handler_is_500_and_the_next_request_works() {
    let site = Site::start(&["probe"], BridgeConfig::default()).await;
    let (status, body) = site
        .json(site.client.get(site.route("probe", "/slow")))
        .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "route_timeout");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`probe`") && message.contains("2s"),
        "{message}"
    );
    let (status, body) = site
        .json(site.client.get(site.route("probe", "/trap")))
        .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "route_failed");
    let (status, _) = site
        .json(site.client.get(site.route("probe", "/public/status")))
        .await;
    assert_eq!(status, 200, "the next request works");
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_are_checked_bodies_are_capped_and_the_host_sets_its_headers() {
    let site = Site::start(&["probe"], BridgeConfig::default()).await;
    let (status, body) = site
        .json(site.client.get(site.route("probe", "/bad")))
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "bad_route_answer");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("base64"));

    // Bytes that are not UTF-8 go to the handler as base64 and come back as the same bytes.
    let bytes: Vec<u8> = (0..=255u8).collect();
    let (status, headers, _) = site
        .send(
            site.client
                .post(site.route("probe", "/echo"))
                .body(bytes.clone()),
        )
        .await;
    assert_eq!(status, 200);
    let echoed = site
        .client
        .post(site.route("probe", "/echo"))
        .body(bytes.clone())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(echoed.as_ref(), bytes.as_slice());
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cross-origin-resource-policy"], "same-origin");

    // The component's own Set-Cookie and CORS headers never leave. On the contract's host,
    // whatever a route renders is sandboxed (every component's routes share that origin).
    let (_, headers, _) = site
        .send(site.client.get(site.route("probe", "/public/status")))
        .await;
    assert_eq!(headers["content-security-policy"], "sandbox");
    assert!(headers.get("set-cookie").is_none());
    assert!(headers.get("access-control-allow-origin").is_none());
    assert_eq!(headers["x-probe"], "yes");

    // Over the body cap (1 MiB by default): 413, the handler never called.
    let big = vec![b'a'; (1 << 20) + 1];
    let (status, body) = site
        .json(site.client.post(site.route("probe", "/echo")).body(big))
        .await;
    assert_eq!(status, 413, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_are_checked_at_load_overlap_tunnels_and_a_missing_handler() {
    let fixture = Fixture::new();
    let overlap = POLICY.replace("path = \"/api/whoami\"", "path = \"/ui/health\"");
    add_probe(&fixture, "overlap", &overlap);
    let tunnel = format!("{POLICY}\n[[grants.serve.routes]]\nid = \"t\"\npath = \"/t\"\nmethods = [\"GET\"]\nauth = \"none\"\ntunnel-exposed = true\n");
    add_probe(&fixture, "tunnel", &tunnel);
    let seed = POLICY.replace(
        "api-mount = \"/api\"",
        "api-mount = \"/api\"\ntunnel_exposed = true",
    );
    add_probe(&fixture, "seed-tunnel", &seed);
    // A component with routes but no route-handler export (echo exports other things).
    fixture.add(
        "nohandler",
        &capbridge_tests::component("echo"),
        Some(&format!(
            "{}\n[[grants.serve.routes]]\nid = \"a\"\npath = \"/a\"\nmethods = [\"GET\"]\nauth = \"none\"\n",
            capbridge_tests::shipped_policy("echo")
        )),
    );
    // A web directory that is a link out of the component's own directory.
    fixture.add("linked", &program("web-probe"), Some(POLICY));
    std::fs::create_dir_all(fixture.components_dir().join("linked")).unwrap();
    std::os::unix::fs::symlink(
        capbridge_tests::root().join("tests/programs/web-probe/web"),
        fixture.components_dir().join("linked/web"),
    )
    .unwrap();
    let runtime = fixture.runtime();
    let why = failure(&runtime, "linked");
    assert!(why.contains("not inside"), "{why}");
    let why = failure(&runtime, "overlap");
    assert!(
        why.contains("declares route `whoami` ('/ui/health') under web mount '/ui'")
            && why.contains("Move the route outside the web mount"),
        "{why}"
    );
    let why = failure(&runtime, "tunnel");
    assert!(
        why.contains("tunnel-exposed") && why.contains("loopback only"),
        "{why}"
    );
    // Seed 004's spelling gets the same reason, not "unknown field".
    let why = failure(&runtime, "seed-tunnel");
    assert!(why.contains("loopback only"), "{why}");
    let why = failure(&runtime, "nohandler");
    assert!(why.contains("route-handler"), "{why}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_ui_serves_its_files_only_and_injects_its_script_into_html() {
    let site = Site::start(&["probe"], BridgeConfig::default()).await;
    let cookie = site.sign_in("probe").await;
    let get = |path: &str| {
        site.client
            .get(site.own("probe", &format!("/plugins/probe/ui{path}")))
            .header("cookie", &cookie)
    };
    // The entry, with the script before </head>.
    for path in [
        "/",
        "",
        "/index.html",
        "/some/app/route",
        "/assets/missing.js",
    ] {
        let (status, headers, text) = site.send(get(path)).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            headers["content-type"], "text/html; charset=utf-8",
            "{path}"
        );
        let script = text
            .find("<script>window.__capbridge=")
            .expect("the script");
        assert!(script < text.find("</head>").unwrap(), "{text}");
        assert!(text.contains("\"apiUrl\":\"/plugins/probe/api\""), "{text}");
        assert!(
            !text.contains(&cookie[cookie.find('=').unwrap() + 1..]),
            "no secret in the page"
        );
    }
    // Other types as they are, with their type and nosniff.
    let (status, headers, text) = site.send(get("/assets/app.js")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(
        !text.contains("__capbridge=Object"),
        "no script injected into JavaScript"
    );
    let (_, headers, text) = site.send(get("/notes.txt")).await;
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(text, "plain text, served as is\n");

    // Every way out, and every hidden file: 404, never the entry.
    for hostile in [
        "/../../../outside.txt",
        "/%2e%2e/%2e%2e/%2e%2e/outside.txt",
        "/..%2f..%2f..%2foutside.txt",
        "/%252e%252e/outside.txt",
        "/..%5c..%5coutside.txt",
        "/..\\..\\outside.txt",
        "/out.txt",
        "/up/outside.txt",
        "/.env",
        "/.git/config",
        "/%2eenv",
    ] {
        let (status, text) = site
            .raw_get("probe", &format!("/plugins/probe/ui{hostile}"), &cookie)
            .await;
        assert_eq!(status, 404, "{hostile}: {text}");
        assert!(
            !text.contains("never-served") && !text.contains("outside the web"),
            "{hostile}"
        );
    }
    // Only GET and HEAD.
    let (status, headers, _) = site
        .send(
            site.client
                .post(site.own("probe", "/plugins/probe/ui/"))
                .header("cookie", &cookie),
        )
        .await;
    assert_eq!(
        (status.as_u16(), headers["allow"].to_str().unwrap()),
        (405, "GET, HEAD")
    );
    // Without the cookie an owner UI is not served.
    let (status, _, _) = site
        .send(site.client.get(site.own("probe", "/plugins/probe/ui/")))
        .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_component_host_serves_only_that_component_and_never_the_contract() {
    let site = Site::start(&["alpha", "beta"], BridgeConfig::default()).await;
    let cookie = site.sign_in("alpha").await;
    // alpha's host: alpha's paths only.
    let (status, _, _) = site
        .send(
            site.client
                .get(site.own("alpha", "/plugins/beta/public/status")),
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = site
        .json(site.client.get(site.own("alpha", "/api/v1/health")))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "host_not_allowed");
    let (status, _) = site
        .json(
            site.client
                .post(site.own("alpha", "/api/v1/session/handshake")),
        )
        .await;
    assert_eq!(status, 403);
    // The UI is not served on 127.0.0.1, and says where it is.
    let (status, body) = site
        .json(
            site.client
                .get(site.route("alpha", "/ui/"))
                .header("cookie", &cookie),
        )
        .await;
    assert_eq!(status, 404);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "http://alpha.localhost:{}/plugins/alpha/ui/",
                site.port
            )),
        "{body}"
    );
    // alpha's cookie opens nothing of beta's.
    let (status, _, _) = site
        .send(
            site.client
                .get(site.own("beta", "/plugins/beta/ui/"))
                .header("cookie", &cookie),
        )
        .await;
    assert_eq!(status, 401);
    // An unknown component's host is any foreign host.
    let (status, _, _) = site
        .send(
            reqwest::Client::builder()
                .resolve("gamma.localhost", site.bridge.server.addr())
                .build()
                .unwrap()
                .get(format!(
                    "http://gamma.localhost:{}/plugins/gamma/",
                    site.port
                )),
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_launch_link_works_once_for_its_own_component() {
    let site = Site::start(&["alpha", "beta"], BridgeConfig::default()).await;
    let link = site.launch_link("alpha");
    let response = site.client.get(&link).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("capbridge-ui="), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Domain"), "host-only: {cookie}");
    assert_eq!(response.headers()["referrer-policy"], "no-referrer");
    let page = response.text().await.unwrap();
    assert!(
        page.contains("location.replace(\"/plugins/alpha/ui/\" + location.hash)"),
        "{page}"
    );
    // Never again.
    let (status, body) = site.json(site.client.get(&link)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "launch_link_invalid");
    // Another component's code on this host, or a made-up one: refused.
    let beta = site.launch_link("beta");
    let code = beta.split("code=").nth(1).unwrap();
    for url in [
        site.own("alpha", &format!("/_capbridge/launch?code={code}")),
        site.own("alpha", "/_capbridge/launch?code=forged"),
        site.own("alpha", "/_capbridge/launch"),
    ] {
        let (status, _, _) = site.send(site.client.get(&url)).await;
        assert_eq!(status, 403, "{url}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dev_proxy_round_trips_and_still_injects_the_script() {
    use axum::routing::any;
    // A stand-in dev server (a real HTTP server on loopback) that echoes what it got.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dev_port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(any(
        |method: axum::http::Method,
         uri: axum::http::Uri,
         headers: axum::http::HeaderMap,
         body: String| async move {
            let seen = serde_json::json!({
                "method": method.as_str(),
                "uri": uri.to_string(),
                "body": body,
                "cookie": headers.get("cookie").is_some(),
                "custom": headers.get("x-dev").and_then(|v| v.to_str().ok()),
            });
            if uri.path().ends_with(".json") || method != axum::http::Method::GET {
                axum::response::IntoResponse::into_response(axum::Json(seen))
            } else {
                axum::response::IntoResponse::into_response(axum::response::Html(format!(
                    "<html><head><title>dev</title></head><body>{seen}</body></html>"
                )))
            }
        },
    ));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut config = BridgeConfig::default();
    config
        .dev_proxy
        .insert("probe".into(), format!("http://127.0.0.1:{dev_port}"));
    let site = Site::start(&["probe"], config).await;
    let cookie = site.sign_in("probe").await;
    let (status, _, html) = site
        .send(
            site.client
                .get(site.own("probe", "/plugins/probe/ui/page?x=1"))
                .header("cookie", &cookie),
        )
        .await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("<script>window.__capbridge="), "{html}");
    assert!(html.contains("/plugins/probe/ui/page?x=1"), "{html}");
    assert!(
        html.contains("\"cookie\":false"),
        "capbridge's cookie stays home: {html}"
    );
    let (status, body) = site
        .json(
            site.client
                .post(site.own("probe", "/plugins/probe/ui/save"))
                .header("cookie", &cookie)
                .header("x-dev", "hmr")
                .body("payload"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["method"], &body["body"], &body["custom"]),
        (
            &Value::from("POST"),
            &Value::from("payload"),
            &Value::from("hmr")
        )
    );
    let (status, _) = site
        .json(
            site.client
                .post(site.own("probe", "/plugins/probe/ui/save"))
                .header("cookie", &cookie)
                .header("origin", "https://evil.example"),
        )
        .await;
    assert_eq!(
        status, 401,
        "another origin's page writes nothing to the dev server"
    );
    server.abort();
    // A contract origin that is a component's own origin is refused, and so is a dev server on
    // the port of any loopback origin the contract allows.
    let mut config = BridgeConfig {
        origins: vec!["http://app.localhost:5174".into()],
        ..BridgeConfig::default()
    };
    config
        .dev_proxy
        .insert("probe".into(), "http://127.0.0.2:5174".into());
    assert!(
        config.validate().is_err(),
        "app.localhost:5174 is loopback too"
    );
    let port = BridgeConfig::default().port;
    let config = BridgeConfig {
        origins: vec![format!("http://probe.localhost:{port}")],
        ..BridgeConfig::default()
    };
    assert!(config.validate().is_err(), "a component's origin");
    // A dev server on an allowed web-app origin's port, or off loopback, is refused.
    for target in [
        "http://localhost:5173",
        "http://127.0.0.1:5173",
        "http://example.com:8080",
        "https://localhost:9999",
        "http://localhost:9999/sub",
    ] {
        let mut config = BridgeConfig::default();
        config.dev_proxy.insert("probe".into(), target.into());
        assert!(config.validate().is_err(), "{target}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_lists_routes_and_flags_open_ones() {
    let fixture = Fixture::new();
    add_probe(&fixture, "probe", POLICY);
    let policy =
        capbridge_runtime::caps::load_policy("probe", &fixture.policy_path("probe")).unwrap();
    let explanation = policy.explain();
    let risks: Vec<&str> = explanation.risks().map(|l| l.text.as_str()).collect();
    assert!(
        risks
            .iter()
            .any(|r| r.contains("/plugins/probe/hooks/:source") && r.contains("`verify`")),
        "{risks:#?}"
    );
    assert!(
        risks
            .iter()
            .any(|r| r.contains("/plugins/probe/public/status") && r.contains("`none`")),
        "{risks:#?}"
    );
    let cross = explanation
        .lines
        .iter()
        .find(|l| l.text.contains("/public/form"))
        .unwrap();
    assert!(
        cross.risk.as_deref().unwrap().contains("cross-site"),
        "{cross:?}"
    );
    let owner = explanation
        .lines
        .iter()
        .find(|l| l.text.contains("/items/new"))
        .unwrap();
    assert!(owner.risk.is_none(), "{owner:?}");
    assert!(explanation.lines.iter().any(|l| l
        .text
        .contains("http://probe.localhost:<port>/plugins/probe/ui")));
}

/// In headless Chromium: a person opens alpha's dashboard from its launch link (signed in to
/// alpha, whose page calls its owner route with the injected fetch), then beta's. beta's page,
/// hostile, tries alpha's owner route with credentials (CORS and no-cors), alpha's page in a
/// frame, and the contract: it reads nothing, and alpha's route answered it nothing but 401.
#[tokio::test(flavor = "multi_thread")]
async fn in_a_browser_one_components_page_cannot_read_anothers_or_use_the_contract() {
    use crate::browser::{Browser, PageServer};
    let _chromium = crate::chromium_running().await;
    let mut pages = PageServer::start().await;
    let site = Site::start(&["alpha", "beta"], BridgeConfig::default()).await;
    let report = format!("http://127.0.0.1:{}/report", pages.port);
    let fragment = |pairs: &[(&str, &str)]| {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    };
    let beta = format!(
        "{}#{}",
        site.launch_link("beta"),
        fragment(&[
            ("other", &site.own("alpha", "/plugins/alpha")),
            ("bridge", &site.bridge.base),
            ("report", &report),
        ])
    );
    let alpha = format!(
        "{}#{}",
        site.launch_link("alpha"),
        fragment(&[("report", &report), ("then", &beta)])
    );
    let mut browser = Browser::launch(&[], &alpha);

    let first = browser.next_report(&mut pages).await;
    assert_eq!(first["origin"], site.own("alpha", ""), "{first:#}");
    assert_eq!(
        first["injected"]["apiUrl"], "/plugins/alpha/api",
        "{first:#}"
    );
    assert_eq!(first["whoami"]["status"], 200, "{first:#}");
    assert_eq!(first["whoami"]["body"]["route"], "whoami", "{first:#}");
    assert_eq!(
        first["whoami"]["body"]["baseUrl"],
        site.own("alpha", "/plugins/alpha"),
        "the handler is told the host the request came to: {first:#}"
    );
    assert_eq!(first["cookieVisible"], "", "HttpOnly: {first:#}");

    let second = browser.next_report(&mut pages).await;
    assert_eq!(second["origin"], site.own("beta", ""), "{second:#}");
    assert_eq!(
        second["whoami"]["status"], 200,
        "beta's own route works: {second:#}"
    );
    assert!(second["otherRoute"]["error"].is_string(), "{second:#}");
    // no-cors: a network error (the host's Cross-Origin-Resource-Policy), or at most opaque.
    let no_cors = &second["otherRouteNoCors"];
    assert!(
        no_cors["error"].is_string() || no_cors["type"] == "opaque",
        "{second:#}"
    );
    assert!(second["otherPage"]["read"].is_null(), "{second:#}");
    assert!(second["contract"]["error"].is_string(), "{second:#}");
    drop(browser);

    // By the bridge's own records: alpha's owner route answered alpha once, and beta's page
    // nothing but refusals; the contract issued no session to beta's page.
    let log = site.bridge.server.shared().connections.recent(500);
    let alpha_calls: Vec<_> = log
        .iter()
        .filter(|c| c.path == "/plugins/alpha/api/whoami")
        .map(|c| (c.status, c.origin.clone()))
        .collect();
    assert_eq!(
        alpha_calls.iter().filter(|(s, _)| *s == 200).count(),
        1,
        "{alpha_calls:?}"
    );
    assert!(
        alpha_calls
            .iter()
            .filter(|(s, _)| *s != 200)
            .all(|(s, _)| *s == 401 || *s == 403),
        "{alpha_calls:?}"
    );
    assert!(
        alpha_calls.len() >= 2,
        "beta's page did try: {alpha_calls:?}"
    );
    let handshakes: Vec<u16> = log
        .iter()
        .filter(|c| c.path == "/api/v1/session/handshake" && c.origin.is_some())
        .map(|c| c.status)
        .collect();
    assert!(handshakes.iter().all(|s| *s == 403), "{handshakes:?}");
}
