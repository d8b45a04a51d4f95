//! The one wasmtime `Engine` of the process, configured so that a module given the same
//! inputs computes the same bytes and burns the same fuel on every machine.
//!
//! - NaN canonicalisation: every float operation that yields a NaN yields the canonical one.
//! - Relaxed SIMD in its deterministic flavour; no threads, no shared memory.
//! - Fuel metering, for the instruction limit and for credit. Runs are asynchronous and
//!   yield every [`FUEL_YIELD_INTERVAL`] units of fuel; the sandbox checks the wall-clock
//!   limit, stop requests and the scratch directory at those yields (see [`super::watch`]).
//!   That replaces epoch interruption, whose check at every loop header and function entry
//!   cost 27-107% in tight loops (README, "Benchmarks"), while fuel is paid for anyway.

use wasmtime::{Config, OptLevel};

/// Deepest Wasm stack a module may use (unbounded recursion hits this, not the host).
pub const MAX_WASM_STACK: usize = 1 << 20;
/// Stack of the fiber a module runs on: its Wasm stack plus room for WASI host calls.
pub const FIBER_STACK: usize = MAX_WASM_STACK + (1 << 20);
/// Fuel a module burns between two yields to the sandbox: ten million Wasm operators, so
/// limits and stop requests act soon after they are due, while the yields are too rare to
/// show in the benchmark (the sandbox's whole fuel cost is measured there).
pub const FUEL_YIELD_INTERVAL: u64 = 10_000_000;

/// Which determinism and metering features to switch on; the sandbox uses [`Self::FULL`],
/// the benchmark compares it with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    /// Without fuel there are no yields, so the wall-clock limit and stop requests are only
    /// checked at host calls: for measuring what fuel costs, never for running tasks.
    pub fuel: bool,
    pub nan_canonicalization: bool,
    /// Cranelift optimisations; outputs and fuel must not depend on them.
    pub optimize: bool,
}

impl EngineSettings {
    pub const FULL: Self = Self { fuel: true, nan_canonicalization: true, optimize: true };
}

/// The engine configuration for `settings`.
pub fn config(settings: EngineSettings) -> Config {
    let mut config = Config::new();
    config
        .consume_fuel(settings.fuel)
        .cranelift_nan_canonicalization(settings.nan_canonicalization)
        .relaxed_simd_deterministic(true)
        // Threads are not even compiled in (wasmtime's `threads` feature is off).
        .wasm_shared_everything_threads(false)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(FIBER_STACK)
        .cranelift_opt_level(if settings.optimize { OptLevel::Speed } else { OptLevel::None })
        .parallel_compilation(true);
    config
}
