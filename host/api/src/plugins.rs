//! `/plugins/<id>/…`: the HTTP components answer (`grants.serve`, seed 004, ADR 0010).
//!
//! Two places answer:
//! - the contract's hosts (`127.0.0.1:<port>`, `localhost:<port>`) serve a component's routes,
//!   never its web UI;
//! - a component's own host, `<id>.localhost:<port>` (its own browser origin, which browsers
//!   resolve to loopback), serves that component's routes and web UI and nothing else: another
//!   component's paths are 404 there and the contract answers it 403 like any foreign host.
//!
//! Auth: `owner` takes the web app's session (its token header, with the contract's Origin
//! rules) or, on the component's own host only, the HttpOnly SameSite=Strict cookie a launch
//! link set for that component; `none` and `verify` are open but rate-limited, and refuse a
//! request a page of another origin sent unless the route says `cross-site = true`. The
//! component's handler never sees capbridge's credentials.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use capbridge_runtime::caps::serve::{
    web, Auth, RouteMatch, ServeGrant, ServeService, WebUi, HANDLER, OPEN_ROUTES_PER_MINUTE,
    ROUTE_CALLS_AT_ONCE, ROUTE_DEADLINE,
};
use capbridge_runtime::{CallError, CallOptions};
use serde::Deserialize;
use serde_json::json;
use tower::ServiceExt as _;

use crate::error::{self, ApiError};
use crate::security::TOKEN_HEADER;
use crate::Shared;

/// The cookie an `owner` web UI is signed in with, on its component's own host.
pub const UI_COOKIE: &str = "capbridge-ui";
/// Where a launch link is redeemed, on a component's own host.
pub const LAUNCH_PATH: &str = "/_capbridge/launch";
/// Largest HTML page of a web UI (read whole to take the script); other files stream.
const MAX_HTML_BYTES: usize = 8 << 20;
/// Largest body a dev server's answer may have.
const MAX_PROXIED_BYTES: usize = 64 << 20;

/// Where a request arrived.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place<'a> {
    /// `127.0.0.1:<port>` or `localhost:<port>`.
    Contract,
    /// `<id>.localhost:<port>`.
    Own(&'a str),
}

/// The layer in front of the contract: requests for `/plugins/…`, and every request to a
/// component's own host, are answered here; the rest go on to the contract (which refuses a
/// component's host as it refuses any other).
pub async fn dispatch(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    match answer(shared.clone(), request).await {
        // What a component's HTTP did is in the audit log before the client hears of it.
        Ok(response) => crate::durable(&shared, response).await,
        Err(request) => next.run(request).await,
    }
}

/// The answer of `/plugins` and of a component's own host, or the request back for the
/// contract.
async fn answer(shared: Arc<Shared>, request: Request) -> Result<Response, Request> {
    let Some(serve) = shared.runtime.service::<ServeService>() else {
        return Err(request);
    };
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts
        .next()
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    // Two Host headers, or a target naming another host than `Host` (or not over http): the
    // contract's checks refuse it.
    let (Some(host), None) = (host, hosts.next()) else {
        return Err(request);
    };
    if let Some(authority) = request.uri().authority() {
        let same = request.uri().scheme_str() == Some("http")
            && authority.as_str().eq_ignore_ascii_case(&host);
        if !same {
            return Err(request);
        }
    }
    let path = request.uri().path().to_string();
    let own = host
        .strip_suffix(&format!(".localhost:{}", shared.port))
        .filter(|id| serve.served(id).is_some())
        .map(str::to_string);
    match own {
        Some(id) => {
            if path == LAUNCH_PATH {
                return Ok(launch(&shared, &serve, &id, &request));
            }
            match component_of(&path) {
                Some((named, _)) if named == id => {
                    Ok(serve_component(shared.clone(), serve, Place::Own(&id), request).await)
                }
                Some(_) => Ok(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_this_component",
                    format!("{host} serves only component `{id}`'s paths, /plugins/{id}/…"),
                )
                .into_response()),
                None => Err(request),
            }
        }
        None if shared.hosts.iter().any(|h| h.eq_ignore_ascii_case(&host))
            && component_of(&path).is_some() =>
        {
            let allowed_origin = request
                .headers()
                .get(header::ORIGIN)
                .and_then(|o| o.to_str().ok())
                .is_some_and(|o| shared.allows_origin(o));
            if !allowed_origin {
                return Ok(serve_component(shared.clone(), serve, Place::Contract, request).await);
            }
            // The web app's origins get CORS here as on the contract (preflights included).
            let cors = crate::security::cors(&shared.origins).allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ]);
            let service = tower::service_fn(move |request: Request| {
                let (shared, serve) = (shared.clone(), serve.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(
                        serve_component(shared, serve, Place::Contract, request).await,
                    )
                }
            });
            match tower::Layer::layer(&cors, service).oneshot(request).await {
                Ok(response) => Ok(response),
                Err(never) => match never {},
            }
        }
        None => Err(request),
    }
}

/// `/plugins/<id>` or `/plugins/<id>/rest` → (`id`, `/rest`).
fn component_of(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/plugins/")?;
    let (id, rest) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    (!id.is_empty()).then_some((id, rest))
}

async fn serve_component(
    shared: Arc<Shared>,
    serve: Arc<ServeService>,
    place: Place<'_>,
    request: Request,
) -> Response {
    let path = request.uri().path().to_string();
    let Some((id, rest)) = component_of(&path) else {
        return not_found("no such path").into_response();
    };
    let Some(grant) = serve.served(id) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_component",
            format!("no loaded component `{id}` answers HTTP"),
        )
        .into_response();
    };
    let Some(segments) = decode_segments(rest) else {
        // Under the web mount such a path is a file refused (404), as every other way out is.
        let raw: Vec<String> = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if grant.under_web(&raw).is_some() {
            return not_found("no such file").into_response();
        }
        return ApiError::bad_request(
            "invalid_path",
            "the path is not valid percent-encoded UTF-8, or a segment holds an encoded `/`, \
             backslash or NUL",
        )
        .into_response();
    };
    let result = if let Some(web) = grant.under_web(&segments) {
        serve_web(&shared, &serve, &grant, web, place, request).await
    } else {
        serve_route(&shared, &serve, &grant, &segments, place, request).await
    };
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    secure(response.headers_mut());
    if place == Place::Contract {
        // Every component's routes answer on the contract's own origin: whatever one of them
        // renders runs sandboxed, on an opaque origin, so it can reach neither another
        // component's answers nor the contract.
        response.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        );
    }
    response
}

/// The path's segments, decoded; `None` for one that is not UTF-8 or that decodes to a `/`, a
/// backslash or a NUL (a segment is one segment, for a route's parameters as for files).
fn decode_segments(rest: &str) -> Option<Vec<String>> {
    rest.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let decoded = percent_encoding::percent_decode_str(s).decode_utf8().ok()?;
            (!decoded.contains(['/', '\\', '\0'])).then(|| decoded.into_owned())
        })
        .collect()
}

/// `405 method_not_allowed` with `Allow: allow`.
fn method_not_allowed(allow: &str, message: &str) -> Response {
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        message,
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
}

/// Headers the host sets on every `/plugins` answer, whatever the component said.
fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_FRAME_OPTIONS,
        HeaderValue::from_static("SAMEORIGIN"),
    );
}

// ---------------------------------------------------------------------------------------------
// Who may call

/// What a request asks to reach: a route or the web UI of component `id`, arrived at `place`.
struct Gate<'a> {
    id: &'a str,
    place: Place<'a>,
    auth: Auth,
    cross_site: bool,
    /// `route \`hook\``, `the web UI`: for messages.
    what: &'a str,
}

/// Checks the gate's `auth`; the contract session the request carries, if any.
fn authorize(
    shared: &Shared,
    serve: &ServeService,
    gate: Gate<'_>,
    headers: &HeaderMap,
) -> Result<Option<u64>, ApiError> {
    let Gate {
        id,
        place,
        auth,
        cross_site,
        what,
    } = gate;
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    // The web app: its token, under the contract's Origin rules, opens every level. On an open
    // route a token that is not valid is no token (the request is judged as open).
    if let Some(token) = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
        let checked =
            crate::security::authenticate(shared, Some(token), origin, "").and_then(|session| {
                match origin {
                    Some(o) if !shared.allows_origin(o) => Err(ApiError::forbidden(
                        "origin_not_allowed",
                        "this origin is not allowed to use the bridge",
                    )),
                    _ => Ok(session),
                }
            });
        match checked {
            Ok(session) => return Ok(Some(session)),
            Err(refusal) if auth == Auth::Owner => return Err(refusal),
            Err(_) => {}
        }
    }
    let same_origin = from_own_pages(shared, id, headers);
    match auth {
        Auth::Owner => {
            let signed_in = place == Place::Own(id)
                && cookies(headers, UI_COOKIE).any(|secret| serve.ui_session(id, secret));
            if signed_in && same_origin {
                return Ok(None);
            }
            Err(ApiError::unauthorized(
                "owner_only",
                format!(
                    "{what} of component `{id}` is for its owner: the web app's session (the \
                     X-OSLOOP-BRIDGE-TOKEN header), or the component's web UI opened with \
                     `capbridge component open {id}`"
                ),
            ))
        }
        Auth::None | Auth::Verify => {
            if !(same_origin || cross_site) {
                return Err(ApiError::forbidden(
                    "cross_site_refused",
                    format!(
                        "{what} of component `{id}` takes no requests from pages of other \
                         origins (the route does not say `cross-site = true`)"
                    ),
                ));
            }
            if let Err(wait) = serve.admit(id) {
                let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "component `{id}`'s open routes take {OPEN_ROUTES_PER_MINUTE} requests \
                         a minute; try again in {seconds} s"
                    ),
                )
                .with_retry_after(seconds));
            }
            Ok(None)
        }
    }
}

/// Whether a request was not sent by a page of another origin: its `Origin` is absent or the
/// component's own, and its `Sec-Fetch-Site` absent, `same-origin` or `none` (typed, bookmarked).
fn from_own_pages(shared: &Shared, id: &str, headers: &HeaderMap) -> bool {
    let own_origin = format!("http://{id}.localhost:{}", shared.port);
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    origin.is_none_or(|o| o == own_origin)
        && headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_none_or(|site| matches!(site, "same-origin" | "none"))
}

/// The values of every cookie `name` in the request's `Cookie` headers.
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

// ---------------------------------------------------------------------------------------------
// Routes

/// The handler's request, as `route-handler.handle` takes it.
#[derive(serde::Serialize)]
#[serde(rename_all = "kebab-case")]
struct RouteRequest {
    route_id: String,
    method: String,
    path: String,
    query: Vec<(String, String)>,
    path_params: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: String,
    body_encoding: &'static str,
    base_url: String,
}

/// The handler's answer.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RouteResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    body_encoding: String,
}

async fn serve_route(
    shared: &Shared,
    serve: &ServeService,
    grant: &ServeGrant,
    segments: &[String],
    place: Place<'_>,
    request: Request,
) -> Result<Response, ApiError> {
    let id = grant.component.as_str();
    let method = request.method().as_str().to_string();
    let (route, params) = match grant.find(&method, segments) {
        RouteMatch::Found { route, params } => (route, params),
        RouteMatch::NotFound => {
            return Err(not_found(format!(
                "component `{id}` has no route at {}",
                request.uri().path()
            )))
        }
        RouteMatch::WrongMethod { allow } => {
            let allow = allow.join(", ");
            return Ok(method_not_allowed(
                &allow,
                &format!("this route takes {allow}"),
            ));
        }
    };
    let what = format!("route `{}`", route.id);
    let gate = Gate {
        id,
        place,
        auth: route.auth,
        cross_site: route.cross_site,
        what: &what,
    };
    let session = authorize(shared, serve, gate, request.headers())?;
    let (parts, body) = request.into_parts();
    let body = read_body(shared, &parts.headers, body, grant.max_body_bytes).await?;
    let (body, body_encoding) = match String::from_utf8(body.to_vec()) {
        Ok(text) => (text, "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&body),
            "base64",
        ),
    };
    let prefix = format!("/plugins/{id}");
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("", |pq| pq.as_str())
        .strip_prefix(&prefix)
        .unwrap_or("/")
        .to_string();
    let query = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let handler_request = RouteRequest {
        route_id: route.id.clone(),
        method: method.clone(),
        path: if path_and_query.starts_with('/') {
            path_and_query
        } else {
            format!("/{path_and_query}")
        },
        query,
        path_params: params,
        headers: forwarded_headers(&parts.headers),
        body,
        body_encoding,
        base_url: match place {
            Place::Contract => format!("http://127.0.0.1:{}{prefix}", shared.port),
            Place::Own(_) => format!("http://{id}.localhost:{}{prefix}", shared.port),
        },
    };
    let options = CallOptions {
        deadline: Some(ROUTE_DEADLINE),
        session,
    };
    let args = json!({ "request": handler_request });
    // At most ROUTE_CALLS_AT_ONCE instances of the component answer at once; the others wait
    // for a slot as long as a request may take.
    let slots = serve.route_slots(id);
    let Ok(Ok(_slot)) =
        tokio::time::timeout(shared.config.request_timeout(), slots.acquire_owned()).await
    else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "component_busy",
            format!(
                "component `{id}` is answering {ROUTE_CALLS_AT_ONCE} requests already; try again"
            ),
        ));
    };
    let outcome = shared.runtime.call(id, HANDLER, &args, &options).await;
    shared.runtime.audit().record(
        "serve.route",
        Some(id),
        session,
        match &outcome {
            Ok(_) => capbridge_runtime::audit::Outcome::Allowed,
            Err(_) => capbridge_runtime::audit::Outcome::Failed,
        },
        json!({ "route": route.id, "method": method, "auth": route.auth.name() }),
    );
    let result = match outcome {
        Ok(outcome) => outcome.result,
        Err(CallError::Timeout(limit)) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "route_timeout",
                format!(
                    "component `{id}` did not answer {what} within its limit of {} (30 s at \
                     most; `limits.deadline-ms` in its policy may make it shorter)",
                    humantime::format_duration(limit)
                ),
            ))
        }
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "route_failed",
                format!("component `{id}` failed to answer {what}: {e}"),
            ))
        }
    };
    let answer: RouteResponse =
        serde_json::from_value(result).map_err(|e| bad_answer(id, &what, e))?;
    let body = match answer.body_encoding.as_str() {
        "utf8" => answer.body.into_bytes(),
        _ => base64::engine::general_purpose::STANDARD
            .decode(answer.body.as_bytes())
            .map_err(|e| bad_answer(id, &what, format!("its body is not valid base64 ({e})")))?,
    };
    let status = StatusCode::from_u16(answer.status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .ok_or_else(|| {
            bad_answer(
                id,
                &what,
                format!("status {} is not 200 to 599", answer.status),
            )
        })?;
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    for (name, value) in answer.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            return Err(bad_answer(
                id,
                &what,
                format!("header {name:?} is not a valid header"),
            ));
        };
        if !host_controlled(&name) {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}

fn bad_answer(id: &str, what: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "bad_route_answer",
        format!(
            "component `{id}` answered {what} with a response the host does not pass on: {why}"
        ),
    )
}

/// Reads a request body up to `limit` bytes, within the request timeout.
async fn read_body(
    shared: &Shared,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the body is larger than this component takes ({} KiB)",
                limit >> 10
            ),
        )
    };
    if crate::listener::declared_length(headers).is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(
        shared.config.request_timeout(),
        axum::body::to_bytes(body, limit),
    )
    .await
    {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(too_large()),
        Err(_) => Err(error::request_timeout()),
    }
}

/// Hop-by-hop headers, and what only the host decides on these origins.
fn host_controlled(name: &HeaderName) -> bool {
    const NAMES: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "set-cookie",
        "x-content-type-options",
        "x-frame-options",
        "cross-origin-resource-policy",
        "strict-transport-security",
        "content-security-policy",
        "service-worker-allowed",
    ];
    NAMES.contains(&name.as_str()) || name.as_str().starts_with("access-control-")
}

/// Whether a request header goes on to the component (its handler, its dev server): not the
/// session token, not cookies (every cookie on these hosts is capbridge's), not `Host`, not what
/// the host controls.
fn passed_on(name: &HeaderName) -> bool {
    !matches!(name.as_str(), TOKEN_HEADER | "cookie" | "host") && !host_controlled(name)
}

/// The request's headers as the handler sees them ([`passed_on`], values that are text).
fn forwarded_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| passed_on(name))
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Web UIs

async fn serve_web(
    shared: &Shared,
    serve: &ServeService,
    grant: &ServeGrant,
    web: &WebUi,
    place: Place<'_>,
    request: Request,
) -> Result<Response, ApiError> {
    let id = grant.component.as_str();
    let web_path = grant.web_path().unwrap_or_default();
    if place != Place::Own(id) {
        return Err(not_found(format!(
            "component `{id}`'s web UI is served on its own origin only: \
             http://{id}.localhost:{}{web_path}/",
            shared.port
        )));
    }
    // An open (`none`, `verify`) web UI is public files: not rate-limited, linkable from
    // anywhere (its answers still carry Cross-Origin-Resource-Policy: same-origin).
    if web.auth == Auth::Owner {
        let gate = Gate {
            id,
            place,
            auth: web.auth,
            cross_site: false,
            what: "the web UI",
        };
        authorize(shared, serve, gate, request.headers())?;
    }
    let proxy = shared.config.dev_proxy.get(id);
    if proxy.is_none() && !matches!(*request.method(), Method::GET | Method::HEAD) {
        return Ok(method_not_allowed(
            "GET, HEAD",
            "a web UI takes GET and HEAD",
        ));
    }
    let script = injected_script(grant, web);
    if let Some(target) = proxy {
        // What changes state on the dev server comes from the component's own pages only, as
        // for an open route (an `owner` UI's cookie already says so).
        let safe = matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
        if !safe && !from_own_pages(shared, id, request.headers()) {
            return Err(ApiError::forbidden(
                "cross_site_refused",
                format!("component `{id}`'s dev server takes no writes from other origins' pages"),
            ));
        }
        return proxy_to(shared, target, request, &script).await;
    }
    let Some(root) = serve.web_root(id, web) else {
        return Err(not_found(format!(
            "component `{id}`'s web UI directory is missing or not inside its own directory"
        )));
    };
    // The path after the mount, still encoded: `resolve` decodes it once and refuses the rest.
    let raw = request
        .uri()
        .path()
        .strip_prefix(&web_path)
        .unwrap_or_default();
    let file = match web::resolve(&root, raw) {
        web::StaticFile::Found(file) => file,
        web::StaticFile::Missing => match web::within(&root, &web.entry) {
            web::StaticFile::Found(entry) => entry,
            _ => {
                return Err(not_found(format!(
                    "component `{id}`'s web UI has no entry file"
                )))
            }
        },
        web::StaticFile::Refused => return Err(not_found("no such file")),
    };
    let content_type = web::content_type(&file);
    let html = content_type.starts_with("text/html");
    let opened = tokio::fs::File::open(&file)
        .await
        .map_err(|_| not_found("no such file"))?;
    let length = opened.metadata().await.map(|m| m.len()).ok();
    // HTML is read whole (at most MAX_HTML_BYTES) to take the script; the rest streams.
    let body = if html {
        let mut bytes = Vec::new();
        let read = tokio::io::AsyncReadExt::read_to_end(
            &mut tokio::io::AsyncReadExt::take(opened, MAX_HTML_BYTES as u64 + 1),
            &mut bytes,
        )
        .await;
        if read.is_err() || bytes.len() > MAX_HTML_BYTES {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "page_too_large",
                format!(
                    "an HTML page of a web UI is served up to {} MiB",
                    MAX_HTML_BYTES >> 20
                ),
            ));
        }
        Body::from(inject(&bytes, &script))
    } else {
        Body::from_stream(tokio_util::io::ReaderStream::new(opened))
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    if let (false, Some(length)) = (html, length) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The script every HTML answer of a web UI gets before `</head>`: where the component is, and
/// a `fetch` that carries the UI's own cookie to its own routes. It holds no credential: the
/// cookie is HttpOnly, and the contract's token never reaches a component's page.
fn injected_script(grant: &ServeGrant, web: &WebUi) -> String {
    let id = &grant.component;
    let base = format!("/plugins/{id}");
    let config = json!({
        "componentId": id,
        "baseUrl": base,
        "apiUrl": format!("{base}{}", web.api_mount.trim_end_matches('/')),
    });
    let config = config.to_string().replace("</", "<\\/");
    format!(
        "<script>window.__capbridge=Object.freeze(Object.assign({config},{{fetch:function(input,init){{return window.fetch(input,Object.assign({{credentials:\"same-origin\"}},init||{{}}));}}}}));</script>"
    )
}

/// `html` with `script` before its `</head>` (or at its start, when it has none).
fn inject(html: &[u8], script: &str) -> Vec<u8> {
    let lower = html.to_ascii_lowercase();
    let find = |needle: &[u8]| lower.windows(needle.len()).position(|w| w == needle);
    // Before `</head>`; else right after `<head…>`; else after the doctype; else first.
    let after_tag = |start: usize| {
        lower[start..]
            .iter()
            .position(|b| *b == b'>')
            .map(|end| start + end + 1)
    };
    let at = find(b"</head>")
        .or_else(|| find(b"<head").and_then(after_tag))
        .or_else(|| find(b"<!doctype").and_then(after_tag))
        .unwrap_or(0);
    let mut out = Vec::with_capacity(html.len() + script.len());
    out.extend_from_slice(&html[..at]);
    out.extend_from_slice(script.as_bytes());
    out.extend_from_slice(&html[at..]);
    out
}

/// Seed 004's dev proxy: the request, with its method, headers and body, to the component's dev
/// server; its answer back with the script injected into HTML.
async fn proxy_to(
    shared: &Shared,
    target: &str,
    request: Request,
    script: &str,
) -> Result<Response, ApiError> {
    let unavailable = |why: String| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "dev_server_unavailable",
            format!("the dev server {target} did not answer: {why}"),
        )
    };
    let (parts, body) = request.into_parts();
    let body = read_body(shared, &parts.headers, body, shared.config.max_body_bytes).await?;
    let url = format!(
        "{}{}",
        target.trim_end_matches('/'),
        parts.uri.path_and_query().map_or("/", |pq| pq.as_str())
    );
    // One client for every dev-proxy request: a direct connection (no system proxy), no
    // redirects followed.
    static CLIENT: std::sync::OnceLock<Result<reqwest::Client, String>> =
        std::sync::OnceLock::new();
    let client = CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| unavailable(e.clone()))?;
    let mut headers = reqwest::header::HeaderMap::new();
    // Without Accept-Encoding the answer comes as it is, so the script can go into its HTML.
    for (name, value) in &parts.headers {
        if passed_on(name) && name != header::ACCEPT_ENCODING {
            headers.append(name.clone(), value.clone());
        }
    }
    let answer = client
        .request(parts.method.clone(), &url)
        .timeout(shared.config.request_timeout())
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let status = answer.status();
    let answer_headers = answer.headers().clone();
    let mut answer = answer;
    let mut bytes = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|e| unavailable(e.to_string()))?
    {
        if bytes.len() + chunk.len() > MAX_PROXIED_BYTES {
            return Err(unavailable("its answer is larger than 64 MiB".into()));
        }
        bytes.extend_from_slice(&chunk);
    }
    let html = answer_headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/html"));
    let body = if html { inject(&bytes, script) } else { bytes };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    for (name, value) in &answer_headers {
        if !host_controlled(name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Launch links

/// `GET http://<id>.localhost:<port>/_capbridge/launch?code=…`: a launch link, redeemed once for
/// the UI cookie, then a same-origin step to the UI (so the Strict cookie goes with it even when
/// the link was followed from another site).
fn launch(shared: &Shared, serve: &ServeService, id: &str, request: &Request) -> Response {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return method_not_allowed("GET, HEAD", "a launch link is opened with GET");
    }
    let code = request.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
    });
    let secret = code.and_then(|code| serve.redeem(id, &code));
    shared.runtime.audit().record(
        "serve.launch",
        Some(id),
        None,
        match secret {
            Some(_) => capbridge_runtime::audit::Outcome::Allowed,
            None => capbridge_runtime::audit::Outcome::Denied,
        },
        json!({}),
    );
    let Some(secret) = secret else {
        return ApiError::forbidden(
            "launch_link_invalid",
            format!(
                "this launch link was used already, has expired, or is not for `{id}`; run \
                 `capbridge component open {id}` for a new one"
            ),
        )
        .into_response();
    };
    let home = format!(
        "{}/",
        serve
            .served(id)
            .and_then(|grant| grant.web_path())
            .unwrap_or_default()
    );
    // A same-origin step, keeping the link's #fragment (a deep link into the UI; never sent to
    // the server); without script, a refresh to the UI's start.
    let page = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>Opening {id}</title>\
         <script>location.replace({home:?} + location.hash)</script>\
         <noscript><meta http-equiv=\"refresh\" content=\"0;url={home}\"></noscript>\
         <p><a href=\"{home}\">Open {id}</a></p>"
    );
    let mut response = Response::new(Body::from(page));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(cookie) = HeaderValue::from_str(&format!(
        "{UI_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict"
    )) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    secure(headers);
    response
}

/// The URL of a launch link for `id` with `code`, on the bridge's `port`.
pub fn launch_url(id: &str, port: u16, code: &str) -> String {
    format!("http://{id}.localhost:{port}{LAUNCH_PATH}?code={code}")
}

#[cfg(test)]
mod tests {
    use super::inject;

    #[test]
    fn the_script_goes_before_head_end_or_after_head_or_the_doctype() {
        let at = |html: &str| String::from_utf8(inject(html.as_bytes(), "<S>")).unwrap();
        assert_eq!(
            at("<html><HEAD></HEAD></html>"),
            "<html><HEAD><S></HEAD></html>"
        );
        assert_eq!(
            at("<!doctype html><head lang=x><p>"),
            "<!doctype html><head lang=x><S><p>"
        );
        assert_eq!(at("<!DOCTYPE html><p>hi"), "<!DOCTYPE html><S><p>hi");
        assert_eq!(at("<p>hi"), "<S><p>hi");
    }
}
