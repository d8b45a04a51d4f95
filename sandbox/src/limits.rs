//! Resource limits that end a run with an error naming the limit.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::ResourceLimiter;

/// A limit a run broke, or the reason it was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Fuel,
    WallTime,
    Memory,
    Tables,
    Stack,
    Output,
    ScratchDisk,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fuel => "fuel limit exceeded",
            Self::WallTime => "wall-clock time limit exceeded",
            Self::Memory => "memory limit exceeded",
            Self::Tables => "table limit exceeded",
            Self::Stack => "stack depth limit exceeded",
            Self::Output => "output size limit exceeded",
            Self::ScratchDisk => "scratch disk limit exceeded",
        })
    }
}

/// Most table elements a module may have: the same cap as the portable module's own check.
pub const MAX_TABLE_ELEMENTS: usize = wasmgrid_instrument::MAX_TABLE_ELEMENTS as usize;

/// Caps linear memory and tables, remembers which cap was hit, and tells the rest of the
/// client how much memory the module has (so that a daemon short of memory knows what its
/// tasks may still grow into).
pub struct MemoryLimiter {
    memory_bytes: usize,
    pub broken: Option<Limit>,
    in_use: Arc<AtomicU64>,
}

impl MemoryLimiter {
    pub fn new(memory_bytes: u64, in_use: Arc<AtomicU64>) -> Self {
        Self { memory_bytes: usize::try_from(memory_bytes).unwrap_or(usize::MAX), broken: None, in_use }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.broken = Some(Limit::Memory);
            wasmtime::bail!("{}: {desired} bytes requested, {} allowed", Limit::Memory, self.memory_bytes);
        }
        self.in_use.fetch_add((desired - current) as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.broken = Some(Limit::Tables);
            wasmtime::bail!("{}: {desired} elements requested", Limit::Tables);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        16
    }

    /// The module's own memory and the instrumentation's meter.
    fn memories(&self) -> usize {
        2
    }
}
