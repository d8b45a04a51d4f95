//! The code that reaches the counters, for each [`Target`].

use wasm_encoder::{BlockType, Instruction, MemArg};

use crate::cost::FUEL_CHUNK;
use crate::{METER_FUEL_BUDGET, METER_FUEL_END, METER_FUEL_LIMIT, METER_FUEL_SEEN, STACK_LIMIT, Target};

/// Where the counters are, in the instrumented module's index spaces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meter {
    pub target: Target,
    /// [`Target::Portable`]: the imported fuel-limit global.
    pub fuel_limit_global: u32,
    /// [`Target::Portable`]: the defined, exported fuel-used global.
    pub fuel_used_global: u32,
    /// [`Target::Portable`]: the defined global holding the count at which the budget ends.
    pub fuel_end_global: u32,
    /// Both: the defined stack-height global.
    pub stack_global: u32,
}

/// A function's locals for the fuel count.
///
/// `budget` is what is left of the current chunk of fuel: every stretch subtracts its cost,
/// and a check only asks whether it went below zero, a compare with zero that needs neither
/// a load nor a register holding the limit. The count itself is the chunk's end minus the
/// budget. `spent` is scratch for the check's slow path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FuelLocals {
    pub budget: u32,
    pub spent: u32,
}

/// [`Target::Sandbox`]: the meter is memory 0 of the instrumented module.
const METER_MEMORY_INDEX: u32 = 0;

fn meter_word(offset: u64) -> MemArg {
    MemArg { offset, align: 3, memory_index: METER_MEMORY_INDEX }
}

impl Meter {
    /// Pushes the budget left, as the latest call or return left it.
    pub fn load_budget(&self, out: &mut Vec<Instruction<'_>>) {
        match self.target {
            Target::Sandbox => {
                out.extend([Instruction::I32Const(0), Instruction::I64Load(meter_word(METER_FUEL_BUDGET))])
            }
            // The count is what the host reads: the budget is its distance to the end.
            Target::Portable => out.extend([
                Instruction::GlobalGet(self.fuel_end_global),
                Instruction::GlobalGet(self.fuel_used_global),
                Instruction::I64Sub,
            ]),
        }
    }

    /// Writes the function's budget back, where the callee, the caller and the host find it.
    pub fn store_budget(&self, budget: u32, out: &mut Vec<Instruction<'_>>) {
        match self.target {
            Target::Sandbox => out.extend([
                Instruction::I32Const(0),
                Instruction::LocalGet(budget),
                Instruction::I64Store(meter_word(METER_FUEL_BUDGET)),
            ]),
            Target::Portable => out.extend([
                Instruction::GlobalGet(self.fuel_end_global),
                Instruction::LocalGet(budget),
                Instruction::I64Sub,
                Instruction::GlobalSet(self.fuel_used_global),
            ]),
        }
    }

    fn load_end(&self, out: &mut Vec<Instruction<'_>>) {
        match self.target {
            Target::Sandbox => out.extend([Instruction::I32Const(0), Instruction::I64Load(meter_word(METER_FUEL_END))]),
            Target::Portable => out.push(Instruction::GlobalGet(self.fuel_end_global)),
        }
    }

    /// Stores the value on top of the stack (under the address, for the sandbox) as the end.
    fn store_end(&self, value: Vec<Instruction<'static>>, out: &mut Vec<Instruction<'_>>) {
        match self.target {
            Target::Sandbox => {
                out.push(Instruction::I32Const(0));
                out.extend(value);
                out.push(Instruction::I64Store(meter_word(METER_FUEL_END)));
            }
            Target::Portable => {
                out.extend(value);
                out.push(Instruction::GlobalSet(self.fuel_end_global));
            }
        }
    }

    /// Traps if the count exceeds the limit, writing the count first.
    ///
    /// The hot path is a compare of the budget with zero and a branch. The slow path, taken
    /// once per [`FUEL_CHUNK`] units, computes the count, publishes it for progress (the
    /// sandbox's [`METER_FUEL_SEEN`]), reads the limit once (the host lowers it to stop a run)
    /// and traps if the count is over it; otherwise it starts the next chunk, ending at the
    /// limit at the latest. So the trap comes at the first check where the count exceeds the
    /// limit, wherever the chunks fall: the same place on every engine.
    pub fn check_fuel(&self, fuel: FuelLocals, out: &mut Vec<Instruction<'_>>) {
        let FuelLocals { budget, spent } = fuel;
        out.extend([
            Instruction::LocalGet(budget),
            Instruction::I64Const(0),
            Instruction::I64LtS,
            Instruction::If(BlockType::Empty),
        ]);
        // spent = end - budget
        self.load_end(out);
        out.extend([Instruction::LocalGet(budget), Instruction::I64Sub, Instruction::LocalSet(spent)]);
        if self.target == Target::Sandbox {
            out.extend([
                Instruction::I32Const(0),
                Instruction::LocalGet(spent),
                Instruction::I64Store(meter_word(METER_FUEL_SEEN)),
            ]);
        }
        // budget = limit - spent, the limit read once
        match self.target {
            Target::Sandbox => {
                out.extend([Instruction::I32Const(0), Instruction::I64Load(meter_word(METER_FUEL_LIMIT))])
            }
            Target::Portable => out.push(Instruction::GlobalGet(self.fuel_limit_global)),
        }
        out.extend([Instruction::LocalGet(spent), Instruction::I64Sub, Instruction::LocalTee(budget)]);
        out.extend([Instruction::I64Const(0), Instruction::I64LtS, Instruction::If(BlockType::Empty)]);
        // Over the limit: leave the count where the host reads it (end - budget = spent).
        self.store_end(vec![Instruction::LocalGet(spent)], out);
        out.extend([Instruction::I64Const(0), Instruction::LocalSet(budget)]);
        self.store_budget(budget, out);
        out.extend([Instruction::Unreachable, Instruction::End]);
        // budget = min(FUEL_CHUNK, budget); end = spent + budget
        out.extend([
            Instruction::I64Const(FUEL_CHUNK),
            Instruction::LocalGet(budget),
            Instruction::I64Const(FUEL_CHUNK),
            Instruction::LocalGet(budget),
            Instruction::I64LtS,
            Instruction::Select,
            Instruction::LocalSet(budget),
        ]);
        self.store_end(vec![Instruction::LocalGet(spent), Instruction::LocalGet(budget), Instruction::I64Add], out);
        out.push(Instruction::End);
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
