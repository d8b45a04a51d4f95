//! The engines of the process, and the instrumentation of every module they run.
//!
//! Determinism and metering are properties of the module itself: before a module is
//! compiled, the instrumentation pass (`wasmgrid-instrument`) injects NaN canonicalisation
//! where NaN bits become observable, a fuel counter and a stack-height count. So the engine
//! needs none of wasmtime's own: no fuel metering, no NaN canonicalisation, no epochs. Its
//! settings only keep what the pass cannot: no threads, and the deterministic flavour of
//! relaxed SIMD (which the pass refuses anyway).
//!
//! Because the module carries its own determinism, any of wasmtime's back ends computes the
//! same outputs and fuel from it. Cranelift compiles to this CPU's machine code; Pulley, the
//! portable interpreter, runs what Cranelift cannot compile here (a compiler bug on one CPU
//! costs speed, not the ability to take part).

use wasmgrid_instrument::Options;
use wasmtime::{Config, OptLevel};

/// The engine's own limit on the Wasm stack: a backstop well above the pass's deterministic
/// one (`wasmgrid_instrument::STACK_LIMIT`, about one MiB of frames).
pub const MAX_WASM_STACK: usize = 4 << 20;
/// Stack of the fiber a module runs on: its Wasm stack plus room for WASI host calls.
pub const FIBER_STACK: usize = MAX_WASM_STACK + (1 << 20);

/// Which of wasmtime's back ends turns a module into code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Cranelift, compiling to this CPU's machine code: the fast one.
    Cranelift,
    /// Pulley, wasmtime's portable interpreter: much slower, but it runs on every CPU and
    /// takes no CPU-specific compiler path.
    Pulley,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cranelift => "cranelift",
            Self::Pulley => "pulley",
        }
    }

    /// The target triple to compile for, or `None` for this machine's own.
    fn target(self) -> Option<&'static str> {
        match self {
            Self::Cranelift => None,
            // Pulley's bytecode has this host's pointer width and byte order.
            Self::Pulley => Some(match (cfg!(target_pointer_width = "64"), cfg!(target_endian = "little")) {
                (true, true) => "pulley64",
                (true, false) => "pulley64be",
                (false, true) => "pulley32",
                (false, false) => "pulley32be",
            }),
        }
    }
}

/// What the pass injects and how the engine compiles; the sandbox uses [`Self::FULL`], the
/// benchmark compares it with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    /// Without fuel, a module in a loop that makes no host calls cannot be stopped: for
    /// measuring what each part costs, never for running tasks.
    pub instrumentation: Options,
    /// Cranelift optimisations; outputs and fuel must not depend on them.
    pub optimize: bool,
    /// The back end modules are compiled with first. With Cranelift, a module Cranelift
    /// fails on (an error or a panic) falls back to Pulley.
    pub backend: Backend,
}

impl EngineSettings {
    pub const FULL: Self = Self {
        instrumentation: Options { fuel: true, bounded_loops: true, stack: true, nan_canonicalization: true },
        optimize: true,
        backend: Backend::Cranelift,
    };
}

/// The engine configuration for `settings`, compiling with `backend`.
pub fn config(settings: EngineSettings, backend: Backend) -> wasmtime::Result<Config> {
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
    if let Some(target) = backend.target() {
        config.target(target)?;
    }
    Ok(config)
}
