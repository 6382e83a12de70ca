//! The host side of each capbridge interface in `wit/host.wit`, one module per interface, plus
//! the outbound-network check that `wasi:http` calls go through.
//!
//! Each module implements the generated `Host` trait for [`HostState`](crate::state::HostState);
//! [`crate::linker`] decides which of them a component's linker gets.

pub mod events;
pub mod log;
pub mod network;

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "capbridge:host/imports",
    // `tracing` routes every call through the host-call recorder (see `crate::recorder`);
    // `trappable` lets a host fault trap instead of being mistaken for a guest-visible error.
    imports: { default: tracing | trappable },
});

pub use capbridge::host::types::Error as GuestError;

impl capbridge::host::types::Host for crate::state::HostState {}

/// The sentence a denial carries to the guest and to the audit log.
pub(crate) fn denial(component: &str, what: &str, grant: &str, policy: &std::path::Path) -> String {
    format!(
        "component `{component}` may not {what}: {grant} is not granted by {}",
        policy.display()
    )
}
