//! The instrumented module's meter: a one-page memory the sandbox creates for each run and
//! the module imports (`wasmgrid::meter`), holding the fuel used and the fuel limit.
//!
//! The module reads the limit at every function entry and loop header (a bounded loop's only
//! on entry: it stops within 2^20 units of fuel). The sandbox reads the
//! fuel used from any thread (for progress), and stops a run from any thread by lowering the
//! limit below zero, so the module's next check traps. Nothing on the module's hot path calls
//! the host.

use std::sync::atomic::{AtomicI64, Ordering};

use wasmgrid_instrument::{METER_FUEL_LIMIT, METER_FUEL_USED};
use wasmtime::{AsContextMut, Memory, MemoryType};

/// The limit that makes the next check fail, whatever the fuel used.
const STOP: i64 = -1;

/// A run's meter memory and a handle on its words.
pub struct Meter {
    pub memory: Memory,
    handle: MeterHandle,
}

/// The meter's words, usable from any thread while the run's store is alive.
#[derive(Clone, Copy)]
pub struct MeterHandle {
    base: *mut u8,
}

// SAFETY: the pointer is to the meter memory's bytes, which never move (one page, no growth)
// and outlive every use: handles are only used while the run's store is alive (the watch
// thread is joined before the store is dropped). All accesses from the host are atomic; the
// module's own accesses are plain Wasm loads and stores of aligned 8-byte words, which are
// single instructions on every 64-bit CPU, the same assumption wasmtime makes for its epoch
// counter.
unsafe impl Send for MeterHandle {}
unsafe impl Sync for MeterHandle {}

impl Meter {
    /// A meter for a run whose fuel limit is `fuel_limit`.
    pub fn new(mut store: impl AsContextMut, fuel_limit: u64) -> wasmtime::Result<Self> {
        let memory = Memory::new(&mut store, MemoryType::new(1, Some(1)))?;
        let handle = MeterHandle { base: memory.data_ptr(&store) };
        handle.store(METER_FUEL_LIMIT, i64::try_from(fuel_limit).unwrap_or(i64::MAX));
        Ok(Self { memory, handle })
    }

    pub fn handle(&self) -> MeterHandle {
        self.handle
    }
}

impl MeterHandle {
    fn word(&self, offset: u64) -> &AtomicI64 {
        // SAFETY: `offset` is 0 or 8, inside the page and 8-byte aligned (the page is); see the
        // `Send` implementation for why the memory is alive.
        unsafe { AtomicI64::from_ptr(self.base.add(offset as usize).cast()) }
    }

    /// Wasm memory is little-endian whatever the host is (s390x is not).
    fn load(&self, offset: u64) -> i64 {
        i64::from_le(self.word(offset).load(Ordering::Relaxed))
    }

    fn store(&self, offset: u64, value: i64) {
        self.word(offset).store(value.to_le(), Ordering::Relaxed);
    }

    /// The fuel the module has used, as of its latest call, return or loop iteration.
    pub fn fuel_used(&self) -> i64 {
        self.load(METER_FUEL_USED)
    }

    pub fn fuel_limit(&self) -> i64 {
        self.load(METER_FUEL_LIMIT)
    }

    /// Makes the module's next fuel check end the run.
    pub fn stop(&self) {
        self.store(METER_FUEL_LIMIT, STOP);
    }
}
