//! The code that reaches the counters, for each [`Target`].

use wasm_encoder::{BlockType, Instruction, MemArg};

use crate::{METER_FUEL_LIMIT, METER_FUEL_USED, STACK_LIMIT, Target};

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

    pub fn leave_frame(&self, units: u64, out: &mut Vec<Instruction<'_>>) {
        out.extend([
            Instruction::GlobalGet(self.stack_global),
            Instruction::I64Const(units as i64),
            Instruction::I64Sub,
            Instruction::GlobalSet(self.stack_global),
        ]);
    }
}
