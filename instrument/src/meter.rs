//! The code that reaches the counters, for each [`Target`].

use wasm_encoder::{BlockType, Instruction, MemArg};

use crate::{
    BROKE_HOST_MEMORY, BROKE_MEMORY_LIMIT, BROKE_TABLE_LIMIT, MAX_TABLE_ELEMENTS, METER_FUEL_LIMIT, METER_FUEL_USED,
    STACK_LIMIT, Target,
};

/// The most pages a 32-bit memory can have.
const MAX_MEMORY32_PAGES: i64 = 1 << 16;

/// Where the counters are, in the instrumented module's index spaces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meter {
    pub target: Target,
    /// [`Target::Portable`]: the imported fuel-limit global.
    pub fuel_limit_global: u32,
    /// [`Target::Portable`]: the defined fuel-used global.
    pub fuel_used_global: u32,
    /// Both: the defined stack-height global.
    pub stack_global: u32,
    /// [`Target::Portable`]: the imported memory-limit global (bytes).
    pub memory_limit_global: u32,
    /// [`Target::Portable`]: a defined `i32` global that holds a growth's delta while it is
    /// checked (a global, not a local, so that the frame's size stays what it is on the
    /// sandbox target).
    pub grow_delta_global: u32,
    /// [`Target::Portable`]: the defined global exported as [`crate::LIMIT_BROKEN_EXPORT`].
    pub limit_broken_global: u32,
    /// [`Target::Portable`]: a defined `i32` global that holds a `memory.grow`'s result while
    /// it is checked.
    pub grow_result_global: u32,
}

/// How far a memory may grow by its type, for telling an engine's refusal from the type's.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MemoryBound {
    /// The module defines it, with this maximum in pages (if any).
    Defined(Option<u64>),
    /// The module imports it: the memory given may have a lower maximum than the import
    /// names, so a refused growth cannot be told apart.
    Imported,
}

/// What a growth that is checked grows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Growth {
    Memory(u32),
    Table(u32),
}

/// [`Target::Sandbox`]: the meter is memory 0 of the instrumented module.
const METER_MEMORY_INDEX: u32 = 0;

fn meter_word(offset: u64) -> MemArg {
    MemArg { offset, align: 3, memory_index: METER_MEMORY_INDEX }
}

impl Meter {
    /// Pushes the fuel used so far.
    pub fn load_fuel(&self, out: &mut Vec<Instruction<'_>>) {
        match self.target {
            Target::Sandbox => {
                out.extend([Instruction::I32Const(0), Instruction::I64Load(meter_word(METER_FUEL_USED))])
            }
            Target::Portable => out.push(Instruction::GlobalGet(self.fuel_used_global)),
        }
    }

    /// Writes the function's running fuel count back where the host can read it.
    pub fn store_fuel(&self, fuel_local: u32, out: &mut Vec<Instruction<'_>>) {
        match self.target {
            Target::Sandbox => out.extend([
                Instruction::I32Const(0),
                Instruction::LocalGet(fuel_local),
                Instruction::I64Store(meter_word(METER_FUEL_USED)),
            ]),
            Target::Portable => {
                out.extend([Instruction::LocalGet(fuel_local), Instruction::GlobalSet(self.fuel_used_global)])
            }
        }
    }

    /// Traps if the running fuel count exceeds the limit. The limit is read every time: in the
    /// sandbox the host lowers it to stop a run.
    pub fn check_fuel(&self, fuel_local: u32, out: &mut Vec<Instruction<'_>>) {
        out.push(Instruction::LocalGet(fuel_local));
        match self.target {
            Target::Sandbox => {
                out.extend([Instruction::I32Const(0), Instruction::I64Load(meter_word(METER_FUEL_LIMIT))])
            }
            Target::Portable => out.push(Instruction::GlobalGet(self.fuel_limit_global)),
        }
        out.extend([
            Instruction::I64GtS,
            Instruction::If(BlockType::Empty),
            Instruction::Unreachable,
            Instruction::End,
        ]);
    }

    /// Adds `units` to the stack height and traps if it is then over [`STACK_LIMIT`].
    pub fn enter_frame(&self, units: u64, out: &mut Vec<Instruction<'_>>) {
        out.extend([
            Instruction::GlobalGet(self.stack_global),
            Instruction::I64Const(units as i64),
            Instruction::I64Add,
            Instruction::GlobalSet(self.stack_global),
            Instruction::GlobalGet(self.stack_global),
            Instruction::I64Const(STACK_LIMIT),
            Instruction::I64GtS,
            Instruction::If(BlockType::Empty),
            Instruction::Unreachable,
            Instruction::End,
        ]);
    }

    /// [`Target::Portable`]: before a `memory.grow` or `table.grow` (its delta on top of the
    /// stack), traps if the size it asks for is over the limit, as the sandbox's limiter
    /// ends the run; the fuel count is left as the last store wrote it, as it is there. On
    /// the sandbox target the limiter checks, and nothing is added.
    pub fn check_growth(&self, growth: Growth, out: &mut Vec<Instruction<'_>>) {
        if self.target != Target::Portable {
            return;
        }
        out.push(Instruction::GlobalSet(self.grow_delta_global));
        out.push(match growth {
            Growth::Memory(memory) => Instruction::MemorySize(memory),
            Growth::Table(table) => Instruction::TableSize(table),
        });
        out.extend([
            Instruction::I64ExtendI32U,
            Instruction::GlobalGet(self.grow_delta_global),
            Instruction::I64ExtendI32U,
            Instruction::I64Add,
        ]);
        let broke = match growth {
            Growth::Memory(_) => {
                // Pages to bytes.
                out.extend([
                    Instruction::I64Const(16),
                    Instruction::I64Shl,
                    Instruction::GlobalGet(self.memory_limit_global),
                ]);
                BROKE_MEMORY_LIMIT
            }
            Growth::Table(_) => {
                out.push(Instruction::I64Const(i64::from(MAX_TABLE_ELEMENTS)));
                BROKE_TABLE_LIMIT
            }
        };
        out.extend([
            Instruction::I64GtU,
            Instruction::If(BlockType::Empty),
            Instruction::I32Const(broke),
            Instruction::GlobalSet(self.limit_broken_global),
            Instruction::Unreachable,
            Instruction::End,
            Instruction::GlobalGet(self.grow_delta_global),
        ]);
    }

    /// [`Target::Portable`]: after a `memory.grow` of `memory` (its result on top of the
    /// stack), traps if the engine refused a growth that the run's limit (checked before) and
    /// the memory's own maximum allow: a native client would have grown it.
    pub fn check_grown(&self, memory: u32, bound: MemoryBound, out: &mut Vec<Instruction<'_>>) {
        let MemoryBound::Defined(maximum_pages) = bound else { return };
        if self.target != Target::Portable {
            return;
        }
        let maximum = maximum_pages.map_or(MAX_MEMORY32_PAGES, |pages| pages.min(MAX_MEMORY32_PAGES as u64) as i64);
        out.extend([
            Instruction::GlobalSet(self.grow_result_global),
            Instruction::GlobalGet(self.grow_result_global),
            Instruction::I32Const(-1),
            Instruction::I32Eq,
            Instruction::If(BlockType::Empty),
            Instruction::MemorySize(memory),
            Instruction::I64ExtendI32U,
            Instruction::GlobalGet(self.grow_delta_global),
            Instruction::I64ExtendI32U,
            Instruction::I64Add,
            Instruction::I64Const(maximum),
            Instruction::I64LeU,
            Instruction::If(BlockType::Empty),
            Instruction::I32Const(BROKE_HOST_MEMORY),
            Instruction::GlobalSet(self.limit_broken_global),
            Instruction::Unreachable,
            Instruction::End,
            Instruction::End,
            Instruction::GlobalGet(self.grow_result_global),
        ]);
    }

    pub fn leave_frame(&self, units: u64, out: &mut Vec<Instruction<'_>>) {
        out.extend([
            Instruction::GlobalGet(self.stack_global),
            Instruction::I64Const(units as i64),
            Instruction::I64Sub,
            Instruction::GlobalSet(self.stack_global),
        ]);
    }
}
