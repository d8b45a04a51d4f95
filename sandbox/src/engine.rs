//! The one wasmtime `Engine` of the process, and the instrumentation of every module it runs.
//!
//! Determinism and metering are properties of the module itself: before a module is
//! compiled, the instrumentation pass (`wasmgrid-instrument`) injects NaN canonicalisation
//! where NaN bits become observable, a fuel counter and a stack-height count. So the engine
//! needs none of wasmtime's own: no fuel metering, no NaN canonicalisation, no epochs. Its
//! settings only keep what the pass cannot: no threads, and the deterministic flavour of
//! relaxed SIMD (which the pass refuses anyway).

use wasmgrid_instrument::Options;
use wasmtime::{Config, OptLevel};

/// The engine's own limit on the Wasm stack: a backstop well above the pass's deterministic
/// one (`wasmgrid_instrument::STACK_LIMIT`, about one MiB of frames).
pub const MAX_WASM_STACK: usize = 4 << 20;
/// Stack of the fiber a module runs on: its Wasm stack plus room for WASI host calls.
pub const FIBER_STACK: usize = MAX_WASM_STACK + (1 << 20);

/// What the pass injects and how the engine compiles; the sandbox uses [`Self::FULL`], the
/// benchmark compares it with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    /// Without fuel, a module in a loop that makes no host calls cannot be stopped: for
    /// measuring what each part costs, never for running tasks.
    pub instrumentation: Options,
    /// Cranelift optimisations; outputs and fuel must not depend on them.
    pub optimize: bool,
}

impl EngineSettings {
    pub const FULL: Self =
        Self { instrumentation: Options { fuel: true, stack: true, nan_canonicalization: true }, optimize: true };
}

/// The engine configuration for `settings`.
pub fn config(settings: EngineSettings) -> Config {
    let mut config = Config::new();
    config
        .relaxed_simd_deterministic(true)
        // The instrumented module's meter is a second memory.
        .wasm_multi_memory(true)
        // Threads are not even compiled in (wasmtime's `threads` feature is off).
        .wasm_shared_everything_threads(false)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(FIBER_STACK)
        .cranelift_opt_level(if settings.optimize { OptLevel::Speed } else { OptLevel::None })
        .parallel_compilation(true);
    config
}
