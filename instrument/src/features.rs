//! Which WebAssembly features a work unit may use, and why a module is refused.

use std::fmt;

use wasmparser::{Validator, WasmFeatures};

/// Why a module cannot be instrumented.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a WebAssembly module: it does not start with the Wasm magic bytes")]
    NotWasm,
    #[error("a WebAssembly component, not a core module: build for wasm32-wasip1 (WASI preview 1)")]
    Component,
    #[error("not valid WebAssembly: {0}")]
    Invalid(String),
    /// Threads make a run's result depend on scheduling; nothing can make them deterministic.
    #[error(
        "uses threads or shared memory, which cannot give the same result on every machine: build without the `atomics` target feature ({0})"
    )]
    Threads(String),
    /// Relaxed SIMD is defined to differ between CPUs.
    #[error(
        "uses relaxed SIMD, whose results differ between CPUs by design: build without the `relaxed-simd` target feature ({0})"
    )]
    RelaxedSimd(String),
    #[error("uses a WebAssembly feature that work units may not use: {0}")]
    Unsupported(String),
    /// A name the pass itself needs.
    #[error("{0}")]
    Reserved(String),
    #[error("too large to instrument: {0}")]
    TooLarge(String),
}

/// The features a work unit may use: WebAssembly 2.0 (with SIMD) and tail calls and
/// extended constant expressions, which engines have shipped for years. Reference types
/// are allowed for `funcref` tables (which compilers use for indirect calls); `externref`
/// needs a garbage collector and is not.
pub(crate) fn allowed() -> WasmFeatures {
    WasmFeatures::MUTABLE_GLOBAL
        | WasmFeatures::SATURATING_FLOAT_TO_INT
        | WasmFeatures::SIGN_EXTENSION
        | WasmFeatures::REFERENCE_TYPES
        | WasmFeatures::MULTI_VALUE
        | WasmFeatures::BULK_MEMORY
        | WasmFeatures::SIMD
        | WasmFeatures::TAIL_CALL
        | WasmFeatures::FLOATS
        | WasmFeatures::EXTENDED_CONST
}

/// What the instrumented module itself uses: the allowed features, plus the second memory
/// of [`crate::Target::Sandbox`].
pub(crate) fn of_output() -> WasmFeatures {
    allowed() | WasmFeatures::MULTI_MEMORY
}

pub(crate) fn check_header(wasm: &[u8]) -> Result<(), Refusal> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(Refusal::NotWasm);
    }
    // A core module is version 1; components use the layer field after the version.
    if wasm[4..8] != [1, 0, 0, 0] {
        return Err(Refusal::Component);
    }
    Ok(())
}

/// Turns a validation error into the refusal that explains it best: a module that is valid
/// once threads (or relaxed SIMD) are allowed is refused for using them.
pub(crate) fn explain(wasm: &[u8], error: &wasmparser::BinaryReaderError) -> Refusal {
    let valid_with = |extra: WasmFeatures| Validator::new_with_features(allowed() | extra).validate_all(wasm).is_ok();
    let message = first_line(error);
    if valid_with(WasmFeatures::THREADS) {
        Refusal::Threads(message)
    } else if valid_with(WasmFeatures::RELAXED_SIMD) {
        Refusal::RelaxedSimd(message)
    } else if valid_with(WasmFeatures::all()) {
        Refusal::Unsupported(message)
    } else {
        Refusal::Invalid(message)
    }
}

fn first_line(error: &impl fmt::Display) -> String {
    error.to_string().lines().next().unwrap_or_default().to_owned()
}
