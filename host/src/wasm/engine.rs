//! The engine: two wasmtime `Engine`s per process, each with its linker,
//! and the one epoch ticker that drives deadlines and fair yields for
//! every instance. A component that needs the component model's async ABI
//! and concurrency (WASI 0.3) runs on the concurrent engine; any other (WASI
//! 0.2) on the plain one, whose stores and host calls skip the concurrency
//! bookkeeping (about a fifth of a WASI 0.2 hello's CPU time when it was
//! on; see `docs/benchmarks.md`).
//!
//! Settings (see `docs/benchmarks.md` for the measurements behind them):
//! - async support, fuel metering and epoch interruption on; the
//!   component model's async ABI and concurrency on the concurrent engine
//!   only;
//! - the pooling instance allocator, sized by [`EngineOptions::max_instances`],
//!   with pages of each slot kept resident between instances; where the
//!   address-space reservation fails (small devices, tight `ulimit -v`) it
//!   falls back to on-demand allocation, whose memories reserve only what
//!   they hold (plus 64 MiB to grow into) when the address space is
//!   limited;
//! - copy-on-write memory images for linear-memory initialization;
//! - the host's budget of guest linear memory ([`crate::wasm::budget`]).

use crate::values::limits::MAX_MEMORY;
use crate::values::units::ByteSize;
use crate::wasm::budget;
use crate::wasm::instance::limiter::{
    MAX_CORE_INSTANCES, MAX_MEMORIES, MAX_TABLE_ELEMENTS, MAX_TABLES, MemoryBudget,
};
use crate::wasm::instance::{self, InstanceState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
};

/// Host-wide engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Instances that may exist at once across all services; the size of the
    /// pool and of the host-wide admission gate.
    pub max_instances: u32,
    /// Use the pooling allocator (falls back to on-demand if it cannot
    /// reserve its address space).
    pub pooling: bool,
    /// Interval of the epoch ticker: how often a running guest yields.
    pub epoch_tick: Duration,
    /// Linear-memory bytes per pool slot reset with `memset` and kept
    /// resident instead of being returned to the kernel.
    pub memory_keep_resident: ByteSize,
    /// Table bytes per pool slot kept resident likewise.
    pub table_keep_resident: ByteSize,
    /// Async stack bytes per pool slot kept resident likewise.
    pub stack_keep_resident: ByteSize,
    /// Initialize linear memories from copy-on-write images.
    pub memory_init_cow: bool,
    /// Reset pool slots by scanning for the pages a guest actually touched
    /// (Linux `PAGEMAP_SCAN`, kernel 6.7+; ignored where unsupported).
    pub pagemap_scan: bool,
    /// Linear memory all instances may hold together; `None`: what the
    /// machine, the memory cgroup and `ulimit -v` leave
    /// ([`budget::guest_memory`]).
    pub guest_memory: Option<ByteSize>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_instances: 1000,
            pooling: true,
            epoch_tick: Duration::from_millis(1),
            memory_keep_resident: ByteSize::mib(4),
            table_keep_resident: ByteSize::mib(1),
            stack_keep_resident: ByteSize::mib(2),
            memory_init_cow: true,
            pagemap_scan: true,
            guest_memory: None,
        }
    }
}

/// The process's engines and what goes with them.
pub struct BerthEngine {
    plain: Flavour,
    concurrent: Flavour,
    pooled: bool,
    max_instances: u32,
    memory: Arc<MemoryBudget>,
    _ticker: EpochTicker,
}

/// One wasmtime engine and the linker holding what Berth provides on it.
pub struct Flavour {
    engine: Engine,
    linker: Linker<InstanceState>,
}

impl Flavour {
    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker holding every interface Berth provides on this engine.
    pub fn linker(&self) -> &Linker<InstanceState> {
        &self.linker
    }
}

impl std::fmt::Debug for BerthEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BerthEngine")
            .field("pooled", &self.pooled)
            .field("max_instances", &self.max_instances)
            .finish_non_exhaustive()
    }
}

fn base_config(options: &EngineOptions, concurrent: bool) -> Config {
    let mut config = Config::new();
    config
        .concurrency_support(concurrent)
        .wasm_component_model(true)
        // WASI 0.3 components: async functions, streams and futures.
        .wasm_component_model_async(concurrent)
        .consume_fuel(true)
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .memory_init_cow(options.memory_init_cow);
    config
}

/// On-demand allocation where the address space is limited: a memory
/// reserves what it holds and 64 MiB to grow into (moving when it grows
/// past), without guard regions (bounds are checked), instead of the
/// 4 GiB and more each that would leave room for few instances.
fn within_address_space(config: &mut Config) {
    config
        .memory_reservation(0)
        .memory_guard_size(0)
        .memory_reservation_for_growth(64 << 20)
        .memory_may_move(true);
}

fn pooling_config(options: &EngineOptions) -> PoolingAllocationConfig {
    let n = options.max_instances;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        // A component holds several core instances (its modules and the
        // adapters between them) but usually one or two memories and tables.
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(2))
        .total_stacks(n)
        .max_memory_size(MAX_MEMORY.bytes() as usize)
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_core_instances_per_component(MAX_CORE_INSTANCES as u32)
        .max_memories_per_component(MAX_MEMORIES as u32)
        .max_tables_per_component(MAX_TABLES as u32)
        .linear_memory_keep_resident(options.memory_keep_resident.bytes() as usize)
        .table_keep_resident(options.table_keep_resident.bytes() as usize)
        .async_stack_keep_resident(options.stack_keep_resident.bytes() as usize)
        .pagemap_scan(if options.pagemap_scan {
            Enabled::Auto
        } else {
            Enabled::No
        });
    pool
}

impl BerthEngine {
    /// Builds the engines, their linkers and starts the epoch ticker.
    pub fn new(options: &EngineOptions) -> anyhow::Result<Self> {
        let (plain, pooled) = Self::flavour(options, false)?;
        let (concurrent, _) = Self::flavour(options, true)?;
        let engines = [plain.engine.clone(), concurrent.engine.clone()];
        let ticker = EpochTicker::start(engines, options.epoch_tick)
            .map_err(|e| anyhow::anyhow!("starting the epoch ticker: {e}"))?;
        // Read once the engines hold their reservations.
        let memory = match budget::guest_memory(options.guest_memory) {
            Some(limit) => MemoryBudget::new(limit),
            None => MemoryBudget::unlimited(),
        };
        Ok(BerthEngine {
            plain,
            concurrent,
            pooled,
            max_instances: options.max_instances,
            memory,
            _ticker: ticker,
        })
    }

    /// One engine and its linker; whether it pools its instances.
    fn flavour(options: &EngineOptions, concurrent: bool) -> anyhow::Result<(Flavour, bool)> {
        let mut pooled = false;
        let engine = if options.pooling {
            let mut config = base_config(options, concurrent);
            config
                .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(options)));
            match Engine::new(&config) {
                Ok(engine) => {
                    pooled = true;
                    engine
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "the pooling allocator is unavailable here; falling back to on-demand allocation"
                    );
                    Self::on_demand(options, concurrent)?
                }
            }
        } else {
            Self::on_demand(options, concurrent)?
        };
        let mut linker = Linker::new(&engine);
        instance::add_to_linker(&mut linker, concurrent)
            .map_err(|e| anyhow::anyhow!("linking WASI into the engine: {e}"))?;
        Ok((Flavour { engine, linker }, pooled))
    }

    /// An engine allocating each instance's memories when it is made.
    fn on_demand(options: &EngineOptions, concurrent: bool) -> anyhow::Result<Engine> {
        let mut config = base_config(options, concurrent);
        if budget::address_space_limited() {
            within_address_space(&mut config);
        }
        Engine::new(&config).map_err(|e| anyhow::anyhow!("creating the engine: {e}"))
    }

    /// The linear memory all instances may hold together.
    pub fn memory(&self) -> &Arc<MemoryBudget> {
        &self.memory
    }

    /// The engines, the plain one first: a component runs on the first
    /// that takes it.
    pub fn flavours(&self) -> [&Flavour; 2] {
        [&self.plain, &self.concurrent]
    }

    /// Whether the pooling allocator is in use.
    pub fn is_pooled(&self) -> bool {
        self.pooled
    }

    /// Instances that may exist at once.
    pub fn max_instances(&self) -> u32 {
        self.max_instances
    }
}

/// A thread that advances the engine's epoch every tick, for as long as it
/// lives. Each advance makes running guests yield (and lets the deadline
/// check run).
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engines: [Engine; 2], tick: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("berth-epoch".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    realtime_priority();
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        for engine in &engines {
                            engine.increment_epoch();
                        }
                    }
                }
            })?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

/// Asks for real-time scheduling (`SCHED_FIFO`, lowest priority) for the
/// calling thread, so a tick is not delayed behind busy threads and
/// CPU-bound guests are interrupted on time. It needs `CAP_SYS_NICE`;
/// without it the ticker runs as an ordinary thread (ticks may then come
/// late, by up to an OS time slice, when every core is busy).
fn realtime_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: plain system call on the calling thread with a valid
        // parameter.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
        if rc == 0 {
            tracing::debug!("epoch ticker: real-time priority");
        } else {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "epoch ticker: no real-time priority (needs CAP_SYS_NICE); ticks may come late under load"
            );
        }
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
