//! The host side of each capbridge interface in `wit/host.wit`, one module per interface, plus
//! the outbound-network check that `wasi:http` calls go through.
//!
//! Each module implements the generated `Host` trait for [`HostState`](crate::state::HostState);
//! [`crate::linker`] decides which of them a component's linker gets.

pub mod awake;
pub mod dialog;
pub mod events;
pub mod log;
pub mod network;
pub mod system;

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "capbridge:host/imports",
    // `tracing` routes every call through the host-call recorder (see `crate::recorder`);
    // `trappable` lets a host fault trap instead of being mistaken for a guest-visible error.
    // `async` for the calls that wait on D-Bus, a picker or a child process.
    imports: {
        "capbridge:host/awake": async | tracing | trappable,
        "capbridge:host/dialog": async | tracing | trappable,
        "capbridge:host/system": async | tracing | trappable,
        default: tracing | trappable,
    },
});

pub use capbridge::host::types::Error as GuestError;

/// The host-wide services behind the capbridge interfaces that keep state across calls.
#[derive(Clone)]
pub struct Services {
    pub awake: awake::AwakeService,
    pub dialog: dialog::DialogService,
}

impl capbridge::host::types::Host for crate::state::HostState {}

/// The sentence a denial carries to the guest and to the audit log.
pub(crate) fn denial(component: &str, what: &str, grant: &str, policy: &std::path::Path) -> String {
    format!(
        "component `{component}` may not {what}: {grant} is not granted by {}",
        policy.display()
    )
}
