//! Outbound HTTP(S) for components, through `wasi:http/outgoing-handler`, scoped to the granted
//! origins.
//!
//! Each request is checked before anything is sent: its scheme, host and port must match a
//! `grants.network` entry exactly, and every address the host resolves to must be public unless
//! the grant itself names a private address (`http://127.0.0.1:8080`, `http://localhost:3000`).
//! A hostname that resolves into a private range is refused, so a grant for a public name cannot
//! be turned against this machine or the local network by DNS.
//!
//! Limitation: the connection resolves the name again after the check; a resolver that changes
//! its answer between the two lookups (DNS rebinding at sub-second TTL) is not defended against
//! for plain `http://` grants. HTTPS grants are additionally bound to the name by TLS.

use std::future::Future;
use std::sync::Arc;

use capbridge_policy::{
    is_private_address, ExplainLine, Grant, GrantContext, GrantKind, NetworkGrant, Policy, Scheme,
};
use http::uri::Scheme as UriScheme;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::Capability;
use crate::own_files::OwnFiles;
use crate::state::HostState;

/// The capability: `grants.network`, served by `wasi:http`.
pub struct Network;

/// The origins a component may send HTTP(S) requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkGrants {
    pub origins: Vec<NetworkGrant>,
}

impl NetworkGrants {
    /// The grant that lets the component reach `scheme://host:port`, if any. The host must
    /// match exactly, ignoring case; an IPv6 host may be given with or without brackets.
    pub fn grant_for(&self, scheme: Scheme, host: &str, port: u16) -> Option<&NetworkGrant> {
        self.origins
            .iter()
            .find(|grant| grant.matches(scheme, host, port))
    }
}

impl Grant for NetworkGrants {
    fn scope(&self) -> Option<String> {
        let texts: Vec<&str> = self.origins.iter().map(|g| g.text.as_str()).collect();
        Some(texts.join(", "))
    }

    fn explain(&self, _policy: &Policy) -> Vec<ExplainLine> {
        self.origins
            .iter()
            .map(|grant| {
                let what = match grant.scheme {
                    Scheme::Https => "HTTPS",
                    Scheme::Http => "plain HTTP",
                };
                let host = if grant.host.contains(':') {
                    format!("[{}]", grant.host)
                } else {
                    grant.host.clone()
                };
                let risk = if grant.names_private_address() {
                    "reaches this machine or the local network, where services often trust local \
                     callers"
                } else {
                    "can send data off this machine and bring data in"
                };
                ExplainLine::risky(
                    format!(
                        "Can make {what} requests to {host} port {} (granted as {:?}).",
                        grant.port, grant.text
                    ),
                    Some(risk.to_string()),
                )
            })
            .collect()
    }
}

impl GrantKind for Network {
    fn key(&self) -> &'static str {
        "network"
    }

    fn schema(&self, _generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Outbound HTTP(S) origins, written `scheme://host[:port]` (http or https only).",
            "type": "array",
            "items": { "type": "string", "pattern": "^[hH][tT][tT][pP][sS]?://" },
        })
    }

    fn parse(
        &self,
        value: toml::Value,
        cx: &mut GrantContext<'_>,
    ) -> Result<Option<Arc<dyn Grant>>, toml::de::Error> {
        let origins = capbridge_policy::read_list(value, cx, NetworkGrant::parse)?;
        Ok((!origins.is_empty()).then(|| Arc::new(NetworkGrants { origins }) as Arc<dyn Grant>))
    }

    fn not_granted(&self) -> &'static str {
        "no network: it cannot make HTTP(S) requests"
    }

    fn widening(&self) -> &'static str {
        "an origin added (each flagged: data leaves the machine; a private address reaches local services); `:*` for a port counts as a new origin"
    }
}

impl Capability for Network {
    fn interfaces(&self) -> &'static [&'static str] {
        &["wasi:http/types", "wasi:http/outgoing-handler"]
    }

    fn summary(&self) -> &'static str {
        "send HTTP(S) requests to the granted origins only; private addresses only when named"
    }

    fn add_to_linker(&self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
    }

    fn check_own_files(&self, policy: &Policy, own_files: &OwnFiles) -> Result<(), String> {
        let origins = policy
            .grant::<NetworkGrants>()
            .map(|g| g.origins.as_slice());
        match origins
            .unwrap_or_default()
            .iter()
            .find_map(|grant| own_files.network_clash(grant))
        {
            Some(clash) => Err(clash),
            None => Ok(()),
        }
    }
}

/// The `wasi:http` hooks of one store: the policy decides where requests may go.
use crate::audit::Outcome;

pub struct NetworkHooks {
    policy: Arc<Policy>,
    audit: crate::audit::AuditLog,
    session: Option<u64>,
}

impl NetworkHooks {
    pub fn new(policy: Arc<Policy>, audit: crate::audit::AuditLog, session: Option<u64>) -> Self {
        Self {
            policy,
            audit,
            session,
        }
    }
}

type ResponseFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for NetworkHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _request_body_result: ResponseFuture,
    ) -> Box<
        dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, ResponseFuture)>>
            + Send,
    > {
        let policy = self.policy.clone();
        let (audit, session) = (self.audit.clone(), self.session);
        Box::new(async move {
            let uri = redact_query(request.uri());
            let detail = serde_json::json!({ "method": request.method().as_str(), "uri": uri });
            let component = Some(policy.component_id.as_str());
            if let Err(reason) = check_request(&policy, request.uri()).await {
                tracing::warn!(target: "capbridge::audit", component = %policy.component_id, %uri, "denied: {reason}");
                audit.record(
                    "network.request",
                    component,
                    session,
                    Outcome::Denied,
                    detail,
                );
                return Err(HttpError::HttpRequestDenied);
            }
            audit.record(
                "network.request",
                component,
                session,
                Outcome::Allowed,
                detail,
            );
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as ResponseFuture,
            ))
        })
    }
}

/// Decides whether a request to `uri` may be sent under `policy`; the error says why not.
pub async fn check_request(policy: &Policy, uri: &http::Uri) -> Result<(), String> {
    let scheme = match uri.scheme() {
        Some(s) if *s == UriScheme::HTTP => Scheme::Http,
        Some(s) if *s == UriScheme::HTTPS => Scheme::Https,
        other => return Err(format!("scheme {other:?} is not http or https")),
    };
    let host = uri.host().ok_or("the request has no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    });
    let grant = policy
        .grant::<NetworkGrants>()
        .and_then(|grants| grants.grant_for(scheme, &host, port));
    let Some(grant) = grant else {
        return Err(format!(
            "{scheme}://{host}:{port} is not granted by {}",
            policy.source.display()
        ));
    };
    if grant.names_private_address() {
        return Ok(());
    }
    let addresses = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    for address in addresses {
        if is_private_address(address.ip()) {
            return Err(format!(
                "{host} resolves to the private address {}, and the grant `{}` does not name it",
                address.ip(),
                grant.text
            ));
        }
    }
    Ok(())
}

/// The URI without its query string, which may carry secrets, for the audit log.
/// The URL without its query and without any `user:password@` (logs and the audit log keep
/// where a request went, never credentials).
fn redact_query(uri: &http::Uri) -> String {
    let host = uri.host().unwrap_or("?");
    match uri.port_u16() {
        Some(port) => format!(
            "{}://{host}:{port}{}",
            uri.scheme_str().unwrap_or("?"),
            uri.path()
        ),
        None => format!("{}://{host}{}", uri.scheme_str().unwrap_or("?"), uri.path()),
    }
}
