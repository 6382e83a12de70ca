//! `capbridge:host/log`: a component's messages in the host log, attributed to it.

use super::capbridge::host::log::{Host, Level};
use crate::state::HostState;

/// Longest message kept; the rest is cut (at a character boundary).
pub const MAX_MESSAGE_BYTES: usize = 4 << 10;

impl Host for HostState {
    fn write(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
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
