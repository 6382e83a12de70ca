//! capbridge's component runtime.
//!
//! - [`engine`]: the one wasmtime [`Engine`](wasmtime::Engine) (pooling allocator, epoch ticks).
//! - [`cache`]: compiled components on disk, keyed by content and engine compatibility.
//! - [`linker`]: a linker holding only what a policy grants, and the import check before it.
//! - [`state`]: the per-store host state built from a policy (WASI context, limits, captures).
//! - [`approvals`]: prompts a person answers before the host does something risky.
//! - [`audit`]: the audit log: every grant use that matters, on disk, queryable, kept 90 days.
//! - [`caps`]: the capabilities, one unit per host interface, and [`caps::ALL`], their registry.
//! - [`own_files`]: capbridge's own files and port, which no grant may reach.
//! - [`pins`]: the lock file of reviewed components and policies (`capbridge policy pin`).
//! - [`values`]: the generic JSON ⇄ WIT conversion and JSON Schemas for exports.
//! - [`replay`]: recording a call and its host calls into a trace, and replaying it offline.
//! - [`runtime`]: discovery, loading and invocation with limits — the API the rest of capbridge uses.

pub mod approvals;
pub mod audit;
pub mod cache;
pub mod caps;
pub mod engine;
pub mod linker;
pub mod output;
pub mod own_files;
pub mod pins;
pub mod replay;
pub mod runtime;
pub mod state;
pub mod state_file;
pub mod values;

pub use capbridge_policy as policy;
/// The types the layers above share with the capabilities, so they need not reach into `caps`.
pub use caps::awake::{AwakeStatus, Hold};
pub use caps::dialog::{PickKind, Picker};
pub use caps::events::{Event, Subscription};
pub use caps::{GrantedPath, PathOrigin};
pub use runtime::{
    CallError, CallOptions, CallOutcome, ComponentInfo, ComponentStatus, ExportInfo, LoadEvent,
    ReplayFailure, ReplayReport, Runtime, RuntimeConfig, Signature,
};
