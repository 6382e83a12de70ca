//! `capbridge:host/log`: a component's messages in the host log, attributed to it.
//! Granted by `grants.log = true`.

use std::sync::Arc;

use capbridge_policy::{ExplainLine, Grant, GrantContext, GrantKind, Policy};
use wasmtime::component::{HasSelf, Linker};

use super::capbridge::host::log::{self as wit, Host, Level};
use super::Capability;
use crate::state::HostState;

/// The capability: `grants.log`.
pub struct Log;

/// `grants.log = true`.
#[derive(Debug)]
pub struct LogGrant;

impl Grant for LogGrant {
    fn explain(&self, _policy: &Policy) -> Vec<ExplainLine> {
        vec![ExplainLine::plain("Can write to the host log.".to_string())]
    }
}

impl GrantKind for Log {
    fn key(&self) -> &'static str {
        "log"
    }

    fn schema(&self, _generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        super::flag_schema("Whether the component may write to the host log.")
    }

    fn parse(
        &self,
        value: toml::Value,
        _cx: &mut GrantContext<'_>,
    ) -> Result<Option<Arc<dyn Grant>>, toml::de::Error> {
        super::read_flag(value, LogGrant)
    }

    fn not_granted(&self) -> &'static str {
        "no host log"
    }

    fn widening(&self) -> &'static str {
        "granted where it was not"
    }
}

impl Capability for Log {
    fn interfaces(&self) -> &'static [&'static str] {
        &["capbridge:host/log"]
    }

    fn summary(&self) -> &'static str {
        "write messages to the host log, attributed to the component"
    }

    fn add_to_linker(&self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)
    }
}

/// Longest message kept; the rest is cut (at a character boundary).
pub const MAX_MESSAGE_BYTES: usize = 4 << 10;

impl Host for HostState {
    async fn write(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let mut end = message.len().min(MAX_MESSAGE_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let message = &message[..end];
        let component = &self.grants.policy.component_id;
        match level {
            Level::Trace => tracing::trace!(target: "capbridge::component", component, "{message}"),
            Level::Debug => tracing::debug!(target: "capbridge::component", component, "{message}"),
            Level::Info => tracing::info!(target: "capbridge::component", component, "{message}"),
            Level::Warn => tracing::warn!(target: "capbridge::component", component, "{message}"),
            Level::Error => tracing::error!(target: "capbridge::component", component, "{message}"),
        }
        Ok(())
    }
}
