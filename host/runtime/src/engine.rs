//! The wasmtime engine shared by every component, and the epoch ticker that bounds calls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; a running guest checks its deadline (and yields to other tasks)
/// at every tick, so this is the granularity of deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The largest linear memory any policy may allow (`limits.memory-mib` is capped at 4096).
const MAX_MEMORY_BYTES: usize = 4 << 30;

/// Bytes of each pooled memory, table and stack kept resident between instances.
const KEEP_RESIDENT: usize = 2 << 20;

/// Builds the engine: component model, async calls, epoch interruption, and a pooling allocator
/// sized for a desktop host (a few hundred live instances at once). Falls back to on-demand
/// allocation where the pool's virtual-memory reservation is refused (tight `ulimit -v`).
pub fn new_engine() -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(256)
        .total_core_instances(1024)
        .total_memories(256)
        .total_tables(512)
        .total_stacks(256)
        .max_memory_size(MAX_MEMORY_BYTES);
    // Where the kernel tells which pages an instance dirtied (PAGEMAP_SCAN, Linux ≥ 6.7), reset
    // just those in place when a slot is freed: the next instance (every call is a fresh one)
    // then costs neither page faults nor an madvise, whose TLB flush interrupts every core.
    // Without it, resetting the whole region by memset would cost more than it saves.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .async_stack_keep_resident(KEEP_RESIDENT);
    }
    let mut config = base_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&config) {
        Ok(engine) => Ok(engine),
        Err(pool_error) => {
            tracing::warn!("pooling allocator unavailable ({pool_error:#}); allocating on demand");
            Engine::new(&base_config())
        }
    }
}

fn base_config() -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(512 << 10)
        .async_stack_size(2 << 20)
        // Copy data segments into a fresh instance's memory instead of mapping the image
        // copy-on-write: an instance per call would otherwise map and unmap per call, and each
        // unmap flushes the TLB on every core.
        .memory_init_cow(false);
    config
}

/// Makes error values skip backtrace capture (`RUST_LIB_BACKTRACE=0`) unless the environment
/// says otherwise: wasmtime creates an error as every store is dropped, and with
/// `RUST_BACKTRACE=1` capturing its backtrace would triple the cost of a fresh-instance call.
/// Panics still print backtraces under `RUST_BACKTRACE`. Call before any other thread starts.
pub fn skip_error_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a background thread until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let engine = engine.weak();
        let thread = std::thread::Builder::new()
            .name("capbridge-epoch".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        match engine.upgrade() {
                            Some(engine) => engine.increment_epoch(),
                            None => break,
                        }
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
