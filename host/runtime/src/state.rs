//! The host state of one store, built from a component's policy: what the guest's WASI calls
//! see (only the granted directories and environment variables), its limits, and its captured
//! output.

use std::sync::Arc;

use capbridge_policy::{Access, Policy};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::audit::AuditLog;
use crate::caps::events::EventBus;
use crate::caps::network::NetworkHooks;
use crate::caps::Services;
use crate::output::CappedOutput;

/// What the capbridge interfaces of a store act on: the policy that scopes them, the bus, the
/// host-wide services of the capabilities the policy grants, and the contract session the call
/// is made for.
pub struct Grants {
    pub policy: Arc<Policy>,
    pub events: EventBus,
    pub services: Services,
    /// Where grant uses are recorded.
    pub audit: AuditLog,
    /// The contract session the call is made for (`None`: the CLI, a test, a benchmark).
    pub session: Option<u64>,
    /// Starts instances of this same component for work that outlives a call.
    pub background: Option<crate::runtime::Background>,
    /// What the host started this instance for, when it did ([`crate::runtime::Background`]);
    /// `None` for every call from outside.
    pub role: Option<String>,
}

/// The `T` of every `Store<T>` capbridge creates.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    network: NetworkHooks,
    table: ResourceTable,
    pub(crate) limits: Limits,
    pub(crate) grants: Grants,
    pub(crate) stdout: CappedOutput,
    pub(crate) stderr: CappedOutput,
    /// While recording or replaying ([`crate::replay`]): what answers the host calls.
    pub(crate) replay: Option<crate::replay::Session>,
}

/// The store's limits (memory and tables from the policy), remembering whether a memory growth
/// was refused: a guest that runs out usually aborts with `unreachable`, and the caller should
/// hear that the memory limit was the cause.
pub(crate) struct Limits {
    inner: StoreLimits,
    pub(crate) memory_refused: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        self.memory_refused |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

impl HostState {
    pub fn new(
        policy: Arc<Policy>,
        events: EventBus,
        services: Services,
        audit: AuditLog,
        session: Option<u64>,
    ) -> anyhow::Result<Self> {
        let output_cap = usize::try_from(policy.limits.output_bytes).unwrap_or(usize::MAX);
        let stdout = CappedOutput::new(output_cap);
        let stderr = CappedOutput::new(output_cap);
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        // File operations run on the calling thread instead of a hop to tokio's blocking pool
        // for each one (wasmtime#7973): a 4 KiB read through the filesystem component drops
        // from ~0.5 ms to tens of µs. The price: a call blocked in a slow file system holds its
        // worker thread, and its deadline fires only when the operation returns.
        wasi.allow_blocking_current_thread(true);
        for name in &policy.environment {
            if let Ok(value) = std::env::var(name) {
                wasi.env(name, value);
            }
        }
        for dir in &policy.directories {
            let perms = match dir.access {
                Access::ReadOnly => FsPerms::ReadOnly,
                Access::ReadWrite => FsPerms::ReadWrite,
            };
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| {
                    anyhow::anyhow!("opening granted directory {}: {e}", dir.host.display())
                })?;
        }
        // What the granted capabilities add for this session (a person's picks).
        for service in services.all() {
            service.prepare_store(&policy, session, &mut wasi);
        }
        let limits = Limits {
            inner: StoreLimitsBuilder::new()
                .memory_size(usize::try_from(policy.limits.memory_bytes).unwrap_or(usize::MAX))
                .table_elements(policy.limits.table_elements as usize)
                .build(),
            memory_refused: false,
        };
        Ok(Self {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            network: NetworkHooks::new(policy.clone(), audit.clone(), session),
            table: ResourceTable::new(),
            limits,
            grants: Grants {
                policy,
                events,
                services,
                audit,
                session,
                background: None,
                role: None,
            },
            stdout,
            stderr,
            replay: None,
        })
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.network,
        }
    }
}
