//! The one wasmtime `Engine` of the process, configured so that a module given the same
//! inputs computes the same bytes and burns the same fuel on every machine.
//!
//! - NaN canonicalisation: every float operation that yields a NaN yields the canonical one.
//! - Relaxed SIMD in its deterministic flavour; no threads, no shared memory.
//! - Fuel metering for the instruction limit and for credit.
//! - Epoch interruption, ticked by one thread for all stores, for the wall-clock limit and
//!   for stopping a run from outside (shutdown, abort, scratch-disk quota).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Config, Engine, OptLevel};

/// How often the epoch advances: the granularity of wall-clock limits and interruption.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Deepest Wasm stack a module may use (unbounded recursion hits this, not the host).
pub const MAX_WASM_STACK: usize = 1 << 20;
/// Native stack of the threads that run Wasm: room for the Wasm stack and host frames.
pub const RUN_THREAD_STACK: usize = 8 << 20;

/// Which determinism and metering features to switch on; the sandbox uses [`Self::FULL`],
/// the benchmark compares it with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    pub fuel: bool,
    pub nan_canonicalization: bool,
    pub epoch_interruption: bool,
    /// Cranelift optimisations; outputs and fuel must not depend on them.
    pub optimize: bool,
}

impl EngineSettings {
    pub const FULL: Self = Self { fuel: true, nan_canonicalization: true, epoch_interruption: true, optimize: true };
}

/// The engine configuration for `settings`.
pub fn config(settings: EngineSettings) -> Config {
    let mut config = Config::new();
    config
        .consume_fuel(settings.fuel)
        .epoch_interruption(settings.epoch_interruption)
        .cranelift_nan_canonicalization(settings.nan_canonicalization)
        .relaxed_simd_deterministic(true)
        // Threads are not even compiled in (wasmtime's `threads` feature is off).
        .wasm_shared_everything_threads(false)
        .max_wasm_stack(MAX_WASM_STACK)
        .cranelift_opt_level(if settings.optimize { OptLevel::Speed } else { OptLevel::None })
        .parallel_compilation(true);
    config
}

/// An engine and the thread that advances its epoch. Dropping it stops the thread.
pub struct TickingEngine {
    pub engine: Engine,
    stop: Arc<AtomicBool>,
}

impl TickingEngine {
    pub fn new(settings: EngineSettings) -> anyhow::Result<Self> {
        let engine = Engine::new(&config(settings))?;
        let stop = Arc::new(AtomicBool::new(false));
        if settings.epoch_interruption {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })?;
        }
        Ok(Self { engine, stop })
    }
}

impl Drop for TickingEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
