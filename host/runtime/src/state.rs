//! The host state of one store, built from a component's policy: what the guest's WASI calls
//! see (only the granted directories and environment variables), its limits, and its captured
//! output.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capbridge_policy::{Access, Policy};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

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

/// Clocks and randomness fixed for replay: the same seed and start give the same values in
/// the same order, so a recorded call can be run again and compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Determinism {
    /// Wall-clock time at the first read, as a duration since the Unix epoch.
    pub wall_clock_start: Duration,
    /// Seed of both the secure and the insecure random streams.
    pub seed: u64,
}

impl HostState {
    pub fn new(
        policy: Arc<Policy>,
        events: EventBus,
        services: Services,
        session: Option<u64>,
        determinism: Option<Determinism>,
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
        if let Some(determinism) = determinism {
            let seed = determinism.seed.to_le_bytes().to_vec();
            wasi.secure_random(wasmtime_wasi::Deterministic::new(seed.clone()))
                .insecure_random(wasmtime_wasi::Deterministic::new(seed))
                .insecure_random_seed(u128::from(determinism.seed))
                .wall_clock(ReplayWallClock::new(determinism.wall_clock_start))
                .monotonic_clock(ReplayMonotonicClock::default());
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
            network: NetworkHooks::new(policy.clone()),
            table: ResourceTable::new(),
            limits,
            grants: Grants {
                policy,
                events,
                services,
                session,
                background: None,
                role: None,
            },
            stdout,
            stderr,
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

/// Each read advances a replayed clock by this much, so time still moves forward.
const REPLAY_CLOCK_STEP: Duration = Duration::from_millis(1);

/// A wall clock that starts at a fixed instant and advances one step per read.
struct ReplayWallClock {
    start: Duration,
    reads: AtomicU64,
}

impl ReplayWallClock {
    fn new(start: Duration) -> Self {
        Self {
            start,
            reads: AtomicU64::new(0),
        }
    }
}

impl HostWallClock for ReplayWallClock {
    fn resolution(&self) -> Duration {
        REPLAY_CLOCK_STEP
    }
    fn now(&self) -> Duration {
        let reads = self.reads.fetch_add(1, Ordering::Relaxed);
        self.start + REPLAY_CLOCK_STEP * u32::try_from(reads).unwrap_or(u32::MAX)
    }
}

/// A monotonic clock that starts at zero and advances one step per read.
#[derive(Default)]
struct ReplayMonotonicClock {
    reads: AtomicU64,
}

impl HostMonotonicClock for ReplayMonotonicClock {
    fn resolution(&self) -> u64 {
        REPLAY_CLOCK_STEP.as_nanos() as u64
    }
    fn now(&self) -> u64 {
        self.reads.fetch_add(1, Ordering::Relaxed) * REPLAY_CLOCK_STEP.as_nanos() as u64
    }
}
