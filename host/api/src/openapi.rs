//! The OpenAPI document, generated from the registered routes' annotations; served at
//! `/api/v1/openapi.json` and committed as `docs/openapi.json` (a test keeps it current).

use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{events, MODULES};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "capbridge localhost contract",
        description = "The OS Loop bridge contract (osloop.bridge.v1) as capbridge serves it on \
                       127.0.0.1. See docs/contract.md.",
    ),
    components(schemas(events::Envelope)),
    modifiers(&TokenHeader),
    tags(
        (name = "bridge", description = "Discovery and the bridge's own state"),
        (name = "session", description = "Handshake and refresh"),
        (name = "commands", description = "Component exports, listed and invoked"),
        (name = "filesystem", description = "Granted directories: targets, read, atomic write, pickers"),
        (name = "awake", description = "Sleep prevention, held per session"),
        (name = "system", description = "OS facts, tools on the search path, install recipes"),
        (name = "events", description = "The event WebSocket"),
    ),
)]
struct ApiDoc;

struct TokenHeader;

impl Modify for TokenHeader {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-OSLOOP-BRIDGE-TOKEN",
                "The session token from POST /api/v1/session/handshake",
            ))),
        );
    }
}

/// The document: the contract's description, then the paths and schemas of every route module
/// in [`MODULES`], as their handlers declare them. Built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: std::sync::LazyLock<utoipa::openapi::OpenApi> =
        std::sync::LazyLock::new(|| {
            let mut doc = ApiDoc::openapi();
            for module in MODULES {
                for (_, routes) in (module.routes)() {
                    doc.merge(routes.into_openapi());
                }
            }
            doc.info.version = crate::APP_VERSION.to_string();
            doc
        });
    &DOCUMENT
}

#[cfg(test)]
mod tests {
    /// `docs/openapi.json` must match the code; `CAPBRIDGE_BLESS=1` (or `cargo xtask bless`)
    /// rewrites it.
    #[test]
    fn committed_openapi_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let current = super::document().to_pretty_json().unwrap() + "\n";
        if std::env::var_os("CAPBRIDGE_BLESS").is_some() {
            std::fs::write(path, &current).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == current,
            "docs/openapi.json is stale: run `cargo xtask bless` and commit the result"
        );
    }
}
