//! The deterministic instrumentation pass: rewrites a work unit (or validator) module so that
//! what it computes, the fuel it burns and how deep it may recurse are properties of the
//! module itself, the same on every conforming engine and every CPU, instead of depending on
//! one engine's settings.
//!
//! The pass injects three things, each described in its own module:
//! - [`nan`]: NaN canonicalisation, only where the bits of a NaN could become observable;
//! - [`cost`]: a fuel counter, counting the operators executed by a fixed cost model, checked
//!   against a limit at every function entry and loop header (a small counted loop that is
//!   sure to stop soon only on entry: [`bounded_loop`]);
//! - a stack-height count, charged at function entry and released at exit, checked against
//!   [`STACK_LIMIT`], so a deep recursion fails at the same depth on every engine.
//!
//! When the fuel or the stack limit is exceeded the module executes `unreachable`: a trap,
//! never a call to the host, so the hot path of a loop holds no call that would clobber its
//! registers. The host tells the trap apart from the module's own by reading the counters
//! ([`classify_trap`]).
//!
//! Modules that cannot be made deterministic (threads, shared memory, relaxed SIMD) are
//! refused with the reason ([`Refusal`]).
//!
//! The instrumented module comes in two flavours ([`Target`]) that count identically and
//! differ only in where the counters live; see [`Target`].

pub mod bounded_loop;
pub mod cost;
mod features;
mod function;
mod meter;
mod module;
pub mod nan;

pub use features::Refusal;

/// The version of the pass. Fuel and output bits are only comparable between runs of the
/// same version: it is part of the compile-cache key and is reported with every result.
/// Raise it whenever a change could alter the fuel or the output of any module.
pub const VERSION: u32 = 2;

/// The import module the instrumented module's meter comes from. Modules may not import
/// from it themselves.
pub const IMPORT_MODULE: &str = "wasmgrid";
/// [`Target::Sandbox`]: the imported one-page memory holding the counters.
pub const METER_MEMORY: &str = "meter";
/// [`Target::Portable`]: the imported immutable `i64` global holding the fuel limit.
pub const FUEL_LIMIT_GLOBAL: &str = "fuel_limit";
/// [`Target::Portable`]: the exported mutable `i64` global holding the fuel used so far.
pub const FUEL_USED_EXPORT: &str = "wasmgrid_fuel_used";
/// Both targets: the exported mutable `i64` global holding the stack height in use.
pub const STACK_USED_EXPORT: &str = "wasmgrid_stack_used";
/// [`Target::Portable`]: the imported immutable `i64` global holding the most bytes of
/// linear memory the run may have. Growing past it ends the run, as the sandbox's memory
/// limiter does; an engine without a limiter of its own cannot tell that apart from a
/// refused `memory.grow` otherwise.
pub const MEMORY_LIMIT_GLOBAL: &str = "memory_limit";
/// [`Target::Portable`]: the exported mutable `i32` global that says which limit a growth
/// broke before the run trapped: [`BROKE_MEMORY_LIMIT`], [`BROKE_TABLE_LIMIT`] or
/// [`BROKE_HOST_MEMORY`]; 0 if none.
pub const LIMIT_BROKEN_EXPORT: &str = "wasmgrid_limit_broken";
pub const BROKE_MEMORY_LIMIT: i32 = 1;
pub const BROKE_TABLE_LIMIT: i32 = 2;
/// [`Target::Portable`]: a `memory.grow` within the run's limit and the memory's own maximum
/// that the engine refused all the same (a browser short of memory): the host's failure, not
/// the module's, where a native client would have grown. The run traps rather than let the
/// module see a refusal no native client would give it.
pub const BROKE_HOST_MEMORY: i32 = 3;
/// [`Target::Portable`]: the export naming the module's start function, which is no longer its
/// start section: the host calls it after instantiating the module and before `_start`. An
/// instantiation that traps leaves the host no instance to read the counters of, so a run
/// that ends in its start function could not say why.
pub const START_EXPORT: &str = "wasmgrid_start";
/// The most elements a table may grow to (function tables of real programs are far
/// smaller; a table-growth bomb is stopped here). The sandbox's limiter enforces it for
/// [`Target::Sandbox`]; the pass itself for [`Target::Portable`].
pub const MAX_TABLE_ELEMENTS: u32 = 1 << 20;

/// [`Target::Sandbox`]: byte offset in the meter memory of the fuel used (`i64`, little endian).
pub const METER_FUEL_USED: u64 = 0;
/// [`Target::Sandbox`]: byte offset in the meter memory of the fuel limit (`i64`). The host may
/// set it to a negative number while the module runs: the next check then ends the run.
pub const METER_FUEL_LIMIT: u64 = 8;

/// The most stack a run may use, in the units of [`cost::frame_cost`]: one per parameter,
/// local and operand-stack slot of every active call, plus [`cost::FRAME_OVERHEAD`] per call.
/// At eight bytes a unit it is one MiB, which engines must give a Wasm thread (wasmtime in
/// the sandbox gets four; Node needs `--stack-size`). That allows 8,192 calls of the
/// smallest functions, 2,000 to 4,000 of typical compiled code.
pub const STACK_LIMIT: i64 = 128 * 1024;

/// Where the counters of an instrumented module live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// For wasmtime in the sandbox: the fuel used and the fuel limit live in an imported
    /// memory (`wasmgrid::meter`, one page), which the host can read and write from another
    /// thread while the module runs. That is how a wall-clock limit or a stop request reaches
    /// a module in a tight loop. Needs multi-memory.
    Sandbox,
    /// For any engine: the fuel limit is an imported immutable global (`wasmgrid::fuel_limit`)
    /// and the fuel used an exported global ([`FUEL_USED_EXPORT`]). Needs nothing beyond
    /// Wasm 2.0; a run is stopped from outside by killing it (a worker's `terminate()`).
    /// Every `memory.grow` and `table.grow` is checked first against the memory limit
    /// ([`MEMORY_LIMIT_GLOBAL`]) and [`MAX_TABLE_ELEMENTS`], and a growth past either traps
    /// after setting [`LIMIT_BROKEN_EXPORT`], where the sandbox's limiter would end the run.
    /// The checks cost no fuel, so both targets count alike. A start function is exported as
    /// [`START_EXPORT`] for the host to call.
    Portable,
}

/// What to inject; everything but the default is for measuring what each part costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub fuel: bool,
    /// With `fuel`: run bounded loops without their header check ([`bounded_loop`]).
    pub bounded_loops: bool,
    pub stack: bool,
    pub nan_canonicalization: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { fuel: true, bounded_loops: true, stack: true, nan_canonicalization: true }
    }
}

/// Rewrites `wasm` for `target`, or says why the module cannot run deterministically.
pub fn instrument(wasm: &[u8], target: Target) -> Result<Vec<u8>, Refusal> {
    instrument_with(wasm, target, Options::default())
}

/// [`instrument`], with parts of the pass switched off (for measurements only: the result is
/// not deterministic without all of them).
pub fn instrument_with(wasm: &[u8], target: Target, options: Options) -> Result<Vec<u8>, Refusal> {
    features::check_header(wasm)?;
    module::rewrite(wasm, target, options)
}

/// Why an instrumented run that trapped ended, read from its counters after the trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapCause {
    FuelLimit,
    StackLimit,
    /// The module's own trap (or the engine's).
    Module,
}

/// Tells apart a trap of the injected checks from the module's own, from the counters as the
/// module last wrote them: a run whose fuel used exceeds its limit ended by the fuel limit,
/// and one whose stack height exceeds [`STACK_LIMIT`] by the stack limit. The checks write the
/// count before they trap, and so does the module's own `unreachable`: an `unreachable` in a
/// stretch whose charge took the count over the limit counts as the fuel limit, on every
/// engine alike. Other traps (a division by zero) leave the count as of the last call, loop
/// header or return.
pub fn classify_trap(fuel_used: i64, fuel_limit: i64, stack_used: i64) -> TrapCause {
    if fuel_used > fuel_limit {
        TrapCause::FuelLimit
    } else if stack_used > STACK_LIMIT {
        TrapCause::StackLimit
    } else {
        TrapCause::Module
    }
}
