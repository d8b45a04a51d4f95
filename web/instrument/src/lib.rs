//! The deterministic instrumentation pass for browser volunteers: [`wasmgrid_instrument`]
//! built for `wasm32-unknown-unknown` (by `web/build-instrument`), so that a tab rewrites a
//! work unit's module with the very code a native client uses, and computes the same bits
//! and the same fuel.
//!
//! The interface is a plain C ABI, small enough to call from JavaScript without generated
//! glue (`web/static/contribute/instrument.js` is the other side):
//! - [`wasmgrid_alloc`] and [`wasmgrid_free`]: buffers in this module's memory;
//! - [`wasmgrid_instrument`]: instruments a module for [`Target::Portable`]; the result (the
//!   module, or the reason it was refused, as UTF-8) is then at [`wasmgrid_result_ptr`] for
//!   [`wasmgrid_result_len`] bytes, with the sizes the module starts with
//!   ([`wasmgrid_initial_memory_bytes`], [`wasmgrid_initial_table_elements`]), which a
//!   browser must check against the limits before it instantiates the module: a native
//!   client's limiter refuses them at instantiation, and a browser has no limiter;
//! - the constants JavaScript needs to classify a run's end, so that they have one source.
//!
//! One call at a time: JavaScript is single-threaded, and each worker has its own instance.

use std::cell::RefCell;

use wasmgrid_instrument::Target;
use wasmparser::{Parser, Payload, TypeRef};

/// What the last [`wasmgrid_instrument`] call produced.
#[derive(Default)]
struct Outcome {
    bytes: Vec<u8>,
    initial_memory_bytes: u64,
    initial_table_elements: u64,
}

thread_local! {
    static LAST: RefCell<Outcome> = RefCell::default();
}

/// A buffer of `len` bytes for JavaScript to fill; give it back with [`wasmgrid_free`].
#[unsafe(no_mangle)]
pub extern "C" fn wasmgrid_alloc(len: usize) -> *mut u8 {
    let mut buffer = Vec::<u8>::with_capacity(len);
    let pointer = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    pointer
}

/// Frees a buffer from [`wasmgrid_alloc`].
///
/// # Safety
/// `pointer` and `len` must be exactly what [`wasmgrid_alloc`] was given and returned, and
/// the buffer not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn wasmgrid_free(pointer: *mut u8, len: usize) {
    // SAFETY: the caller passes back an allocation of `wasmgrid_alloc`, of capacity `len`.
    drop(unsafe { Vec::from_raw_parts(pointer, 0, len) });
}

/// Instruments the module in `len` bytes at `pointer` for [`Target::Portable`]. Returns 0
/// when it did (the result is the instrumented module) and 1 when the module was refused
/// (the result is the reason).
///
/// # Safety
/// `pointer` must point to `len` initialised bytes that stay unchanged during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn wasmgrid_instrument(pointer: *const u8, len: usize) -> u32 {
    // SAFETY: the caller guarantees `len` readable bytes at `pointer`.
    let wasm = unsafe { std::slice::from_raw_parts(pointer, len) };
    let (status, outcome) = instrument(wasm);
    LAST.with(|last| *last.borrow_mut() = outcome);
    status
}

/// Where the last result starts.
#[unsafe(no_mangle)]
pub extern "C" fn wasmgrid_result_ptr() -> *const u8 {
    LAST.with(|last| last.borrow().bytes.as_ptr())
}

/// How many bytes the last result has.
#[unsafe(no_mangle)]
pub extern "C" fn wasmgrid_result_len() -> usize {
    LAST.with(|last| last.borrow().bytes.len())
}

/// Bytes of linear memory the last instrumented module has as soon as it is instantiated.
#[unsafe(no_mangle)]
pub extern "C" fn wasmgrid_initial_memory_bytes() -> u64 {
    LAST.with(|last| last.borrow().initial_memory_bytes)
}

/// Elements of its largest table the last instrumented module has as soon as it is
/// instantiated.
#[unsafe(no_mangle)]
pub extern "C" fn wasmgrid_initial_table_elements() -> u64 {
    LAST.with(|last| last.borrow().initial_table_elements)
}

/// [`wasmgrid_instrument::VERSION`]: results are only compared within one version.
#[unsafe(no_mangle)]
pub extern "C" fn wasmgrid_version() -> u32 {
    wasmgrid_instrument::VERSION
}

/// [`wasmgrid_instrument::STACK_LIMIT`], for telling a stack-limit trap from the module's own.
#[unsafe(no_mangle)]
pub extern "C" fn wasmgrid_stack_limit() -> i64 {
    wasmgrid_instrument::STACK_LIMIT
}

/// [`wasmgrid_instrument::MAX_TABLE_ELEMENTS`].
#[unsafe(no_mangle)]
pub extern "C" fn wasmgrid_max_table_elements() -> u32 {
    wasmgrid_instrument::MAX_TABLE_ELEMENTS
}

fn instrument(wasm: &[u8]) -> (u32, Outcome) {
    match wasmgrid_instrument::instrument(wasm, Target::Portable) {
        Ok(instrumented) => {
            let (initial_memory_bytes, initial_table_elements) = initial_sizes(&instrumented);
            (0, Outcome { bytes: instrumented, initial_memory_bytes, initial_table_elements })
        }
        Err(refusal) => (1, Outcome { bytes: refusal.to_string().into_bytes(), ..Outcome::default() }),
    }
}

/// The largest minimum size of the module's memories (in bytes) and of its tables (in
/// elements), defined or imported: what instantiating it allocates at once. The pass has
/// validated the module, so a section that does not parse here cannot occur; it would
/// count as nothing.
fn initial_sizes(wasm: &[u8]) -> (u64, u64) {
    const PAGE: u64 = 64 * 1024;
    let (mut memory, mut table) = (0u64, 0u64);
    for payload in Parser::new(0).parse_all(wasm).flatten() {
        match payload {
            Payload::ImportSection(imports) => {
                for import in imports.into_imports().flatten() {
                    match import.ty {
                        TypeRef::Memory(ty) => memory = memory.max(ty.initial.saturating_mul(PAGE)),
                        TypeRef::Table(ty) => table = table.max(ty.initial),
                        _ => {}
                    }
                }
            }
            Payload::MemorySection(memories) => {
                for ty in memories.into_iter().flatten() {
                    memory = memory.max(ty.initial.saturating_mul(PAGE));
                }
            }
            Payload::TableSection(tables) => {
                for ty in tables.into_iter().flatten() {
                    table = table.max(ty.ty.initial);
                }
            }
            _ => {}
        }
    }
    (memory, table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(wasm: &[u8]) -> (u32, Vec<u8>, u64, u64) {
        let pointer = wasmgrid_alloc(wasm.len());
        // SAFETY: `pointer` has room for `wasm.len()` bytes, freed once below.
        unsafe {
            std::ptr::copy_nonoverlapping(wasm.as_ptr(), pointer, wasm.len());
            let status = wasmgrid_instrument(pointer, wasm.len());
            wasmgrid_free(pointer, wasm.len());
            let result = std::slice::from_raw_parts(wasmgrid_result_ptr(), wasmgrid_result_len()).to_vec();
            (status, result, wasmgrid_initial_memory_bytes(), wasmgrid_initial_table_elements())
        }
    }

    #[test]
    fn a_module_comes_back_instrumented_for_any_engine_with_its_initial_sizes() {
        let wasm =
            wat::parse_str(r#"(module (memory 3) (table 7 funcref) (func (export "_start") (loop (br 0))))"#).unwrap();
        let (status, result, memory, table) = call(&wasm);
        assert_eq!(status, 0);
        assert_eq!(result, wasmgrid_instrument::instrument(&wasm, Target::Portable).unwrap());
        assert_eq!((memory, table), (3 * 65536, 7));
    }

    #[test]
    fn an_imported_memory_counts_as_initial_memory() {
        let wasm = wat::parse_str(r#"(module (import "env" "memory" (memory 5)) (func (export "_start")))"#).unwrap();
        let (status, _, memory, _) = call(&wasm);
        assert_eq!((status, memory), (0, 5 * 65536));
    }

    #[test]
    fn a_refused_module_comes_back_with_the_reason() {
        let (status, result, _, _) = call(b"#!/bin/sh\n");
        assert_eq!(status, 1);
        assert_eq!(String::from_utf8(result).unwrap(), wasmgrid_instrument::Refusal::NotWasm.to_string());
    }
}
