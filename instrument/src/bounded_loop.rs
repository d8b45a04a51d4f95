//! Bounded loops: innermost counted loops whose number of iterations a cheap test at entry
//! bounds, so that they can run without the fuel check at their header.
//!
//! A check at every loop header is most of what fuel costs in a tight loop: an integer sieve's
//! inner loop is a dozen instructions, and the check adds four (the count's store, a compare
//! with the limit in memory, a jump). A loop that is known to stop soon needs no check of its
//! own: checking before it starts and again wherever the code goes next bounds the run just as
//! well. So the pass versions such a loop:
//!
//! ```text
//! store and check the fuel                 ;; once per entry
//! <guard>                                  ;; true: at most `budget` iterations
//! if
//!   loop <the body, charged as ever, with no check at its header> end
//! else
//!   loop <the body, charged and checked as every other loop> end
//! end
//! ```
//!
//! Both copies charge every operator exactly as before, so a run burns the same fuel either
//! way; only where the limit is looked at moves. A run past its limit is stopped at most
//! [`UNCHECKED_FUEL`] units later than a check at every header would have stopped it, and the
//! count the host reads (for progress, and after a trap) may lag by as much. All of it is the
//! same on every engine: the guard is integer arithmetic on the loop's locals.
//!
//! **Which loops.** A `loop` without parameters or results, with no loop, call or tail call
//! inside it, of at most [`MAX_BODY_OPERATORS`] operators, that continues only through its
//! last operators, in one of these forms (`i` a local of type `iN`, `step` and `bound` each a
//! constant or a local that the loop never writes, and `i` written nowhere else in the loop):
//!
//! ```text
//! local.get i  step  iN.add  local.tee i  bound  iN.lt_u  br_if 0            end  ;; do-while
//! local.get i  step  iN.add  local.tee i  bound  iN.ge_u  br_if OUT  br 0    end  ;; exit test
//! local.get i  step  iN.add  local.tee i  bound  iN.ne    br_if 0            end  ;; pointer walk
//! local.get i  step  iN.add  local.tee i  bound  iN.eq    br_if OUT  br 0    end
//! ```
//!
//! (`local.set i  local.get i` may stand for `local.tee i`.) Every other branch in the body
//! must leave the loop, so every iteration that goes round again passed the increment once,
//! at the body's top level, and found `i` (unsigned) below, or unequal to, `bound`.
//!
//! **The guard**, on the entry values `i0`, `step` and `bound`, for a budget of `K` iterations:
//! - `i0 < bound` and `bound - i0 <= K * unit`, where `unit` is 1 for the ordered forms and
//!   `step` for the others;
//! - ordered forms: `1 <= step <= 2^(N-1)` and `bound <= 2^(N-1)`. Then `i + step` cannot
//!   wrap while `i < bound`, `i` grows on every round, and each round but the last has a
//!   distinct `i` in `(i0, bound)`: fewer than `K` rounds go back;
//! - `ne` and `eq` forms: `step` a constant power of two and `bound - i0` a multiple of it.
//!   Then `i` meets `bound` exactly, after `(bound - i0) / step <= K` rounds, never wrapping.
//!
//! An entry that fails the guard runs the checked copy: slower, never wrong.

use wasm_encoder::Instruction;
use wasmparser::{BlockType, Operator};

/// The fuel an unchecked copy may burn per entry, at most: it bounds how late a run past its
/// limit (or one the host lowered the limit of to stop it) is stopped.
pub const UNCHECKED_FUEL: u64 = 1 << 20;

/// Larger loops are left alone: their header check is a small part of an iteration, and their
/// copies would grow the module.
pub const MAX_BODY_OPERATORS: usize = 256;

/// An innermost loop that may run without its header check when its guard holds.
#[derive(Debug, Clone)]
pub(crate) struct BoundedLoop {
    /// Index of the loop's `end` among the function's operators.
    pub end: usize,
    /// Leaves an `i32` on the stack: nonzero when the loop is sure to stop within its budget.
    pub guard: Vec<Instruction<'static>>,
}

/// The loop starting at `operators[start]`, if it is a bounded one. `stretch_cost[k]` is the
/// fuel charged on entry to the stretch starting at operator `k`.
pub(crate) fn analyse(operators: &[&Operator<'_>], start: usize, stretch_cost: &[u64]) -> Option<BoundedLoop> {
    let Operator::Loop { blockty: BlockType::Empty } = operators[start] else {
        return None;
    };
    let end = matching_end(operators, start)?;
    let body = &operators[start + 1..end];
    let per_iteration: u64 = stretch_cost[start + 1..=end].iter().sum();
    let budget = (UNCHECKED_FUEL / per_iteration.max(1)).max(1);

    let tail = Tail::match_end_of(body)?;
    // The increment is the body's only write of `i`, and `step` and `bound` are never written.
    let mut writes_of_i = 0;
    for operator in body {
        if let Operator::LocalSet { local_index } | Operator::LocalTee { local_index } = operator {
            if *local_index == tail.counter {
                writes_of_i += 1;
            }
            if [tail.step, tail.bound].contains(&Operand::Local(*local_index)) {
                return None;
            }
        }
    }
    if writes_of_i != 1 || [tail.step, tail.bound].contains(&Operand::Local(tail.counter)) {
        return None;
    }
    // The only way round again is the tail's branch.
    if branches_to_loop(body) != 1 {
        return None;
    }
    tail.guard(budget).map(|guard| BoundedLoop { end, guard })
}

/// The index of the `end` of the loop at `start`, if the loop qualifies: nothing inside that
/// loops or calls, and small.
fn matching_end(operators: &[&Operator<'_>], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (index, operator) in operators.iter().enumerate().skip(start + 1) {
        if index - start > MAX_BODY_OPERATORS {
            return None;
        }
        match operator {
            Operator::Loop { .. }
            | Operator::Call { .. }
            | Operator::CallIndirect { .. }
            | Operator::CallRef { .. }
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. }
            | Operator::TryTable { .. }
            | Operator::Try { .. }
            | Operator::Delegate { .. } => return None,
            Operator::Block { .. } | Operator::If { .. } => depth += 1,
            Operator::End if depth == 0 => return Some(index),
            Operator::End => depth -= 1,
            _ => {}
        }
    }
    None
}

/// How many branches in `body` (the operators between a loop and its `end`) go back to the
/// loop's header.
fn branches_to_loop(body: &[&Operator<'_>]) -> usize {
    let mut depth = 0u32;
    let mut count = 0;
    for operator in body {
        match operator {
            Operator::Block { .. } | Operator::If { .. } => depth += 1,
            Operator::End => depth = depth.saturating_sub(1),
            Operator::Br { relative_depth } | Operator::BrIf { relative_depth } if *relative_depth == depth => {
                count += 1
            }
            Operator::BrTable { targets } => {
                let back = targets
                    .targets()
                    .chain(std::iter::once(Ok(targets.default())))
                    .filter(|target| !matches!(target, Ok(target) if *target != depth))
                    .count();
                count += back;
            }
            _ => {}
        }
    }
    count
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operand {
    Local(u32),
    Constant(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    I32,
    I64,
}

impl Width {
    fn bits(self) -> u32 {
        match self {
            Width::I32 => 32,
            Width::I64 => 64,
        }
    }

    fn constant(self, value: u64) -> Instruction<'static> {
        match self {
            Width::I32 => Instruction::I32Const(value as u32 as i32),
            Width::I64 => Instruction::I64Const(value as i64),
        }
    }

    /// A constant as the loop's comparisons see it: unsigned.
    fn unsigned(self, value: i64) -> u64 {
        match self {
            Width::I32 => value as i32 as u32 as u64,
            Width::I64 => value as u64,
        }
    }
}

/// How the loop decides to go round again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Continues {
    /// While `i < bound` (unsigned).
    Below,
    /// While `i != bound`.
    Unequal,
}

/// The last operators of a bounded loop's body: the increment and the test.
#[derive(Debug, Clone, Copy)]
struct Tail {
    width: Width,
    counter: u32,
    step: Operand,
    bound: Operand,
    continues: Continues,
}

impl Tail {
    fn match_end_of(body: &[&Operator<'_>]) -> Option<Tail> {
        // The branch back: `br_if 0`, or `br_if OUT  br 0`.
        let (test_end, exit_on_true) = match body {
            [.., Operator::BrIf { relative_depth: 0 }] => (body.len().checked_sub(2)?, false),
            [.., Operator::BrIf { relative_depth: 1.. }, Operator::Br { relative_depth: 0 }] => {
                (body.len().checked_sub(3)?, true)
            }
            _ => return None,
        };
        let (width, continues) = match (body.get(test_end)?, exit_on_true) {
            (Operator::I32LtU, false) | (Operator::I32GeU, true) => (Width::I32, Continues::Below),
            (Operator::I64LtU, false) | (Operator::I64GeU, true) => (Width::I64, Continues::Below),
            (Operator::I32Ne, false) | (Operator::I32Eq, true) => (Width::I32, Continues::Unequal),
            (Operator::I64Ne, false) | (Operator::I64Eq, true) => (Width::I64, Continues::Unequal),
            _ => return None,
        };
        let bound = operand(body.get(test_end.checked_sub(1)?)?, width)?;
        // `local.tee i`, or `local.set i  local.get i`.
        let (counter, add_at) = match body.get(..test_end.checked_sub(1)?)? {
            [.., Operator::LocalSet { local_index: set }, Operator::LocalGet { local_index: get }] if set == get => {
                (*set, test_end.checked_sub(4)?)
            }
            [.., Operator::LocalTee { local_index }] => (*local_index, test_end.checked_sub(3)?),
            _ => return None,
        };
        let adds =
            matches!((body.get(add_at)?, width), (Operator::I32Add, Width::I32) | (Operator::I64Add, Width::I64));
        let reads_counter =
            matches!(body.get(add_at.checked_sub(2)?)?, Operator::LocalGet { local_index } if *local_index == counter);
        if !adds || !reads_counter {
            return None;
        }
        let step = operand(body.get(add_at - 1)?, width)?;
        // The tail must sit at the body's top level, not inside a block of the body.
        let mut depth = 0i64;
        for operator in &body[..add_at - 2] {
            match operator {
                Operator::Block { .. } | Operator::If { .. } => depth += 1,
                Operator::End => depth -= 1,
                _ => {}
            }
        }
        (depth == 0).then_some(Tail { width, counter, step, bound, continues })
    }

    /// The guard for a budget of `budget` iterations, or `None` if the constants rule it out.
    fn guard(&self, budget: u64) -> Option<Vec<Instruction<'static>>> {
        let width = self.width;
        let half = 1u64 << (width.bits() - 1);
        let mut guard = Vec::new();
        let push = |operand: Operand, guard: &mut Vec<Instruction<'static>>| match operand {
            Operand::Local(local) => guard.push(Instruction::LocalGet(local)),
            Operand::Constant(value) => guard.push(width.constant(width.unsigned(value))),
        };
        let (lt_u, le_u, sub, and, eqz) = match width {
            Width::I32 => (
                Instruction::I32LtU,
                Instruction::I32LeU,
                Instruction::I32Sub,
                Instruction::I32And,
                Instruction::I32Eqz,
            ),
            Width::I64 => (
                Instruction::I64LtU,
                Instruction::I64LeU,
                Instruction::I64Sub,
                Instruction::I64And,
                Instruction::I64Eqz,
            ),
        };

        let unit = match (self.continues, self.step) {
            (Continues::Below, _) => 1,
            (Continues::Unequal, Operand::Constant(step)) => {
                let step = width.unsigned(step);
                if !step.is_power_of_two() || step > UNCHECKED_FUEL {
                    return None;
                }
                step
            }
            (Continues::Unequal, Operand::Local(_)) => return None,
        };
        let span = budget.checked_mul(unit)?;
        if span >= half {
            return None;
        }
        // i0 < bound
        guard.push(Instruction::LocalGet(self.counter));
        push(self.bound, &mut guard);
        guard.push(lt_u.clone());
        // bound - i0 <= budget * unit
        push(self.bound, &mut guard);
        guard.push(Instruction::LocalGet(self.counter));
        guard.push(sub.clone());
        guard.push(width.constant(span));
        guard.push(le_u.clone());
        guard.push(Instruction::I32And);

        match self.continues {
            Continues::Below => {
                match self.step {
                    Operand::Constant(step) => {
                        let step = width.unsigned(step);
                        if step == 0 || step > half {
                            return None;
                        }
                    }
                    Operand::Local(local) => {
                        // step - 1 < 2^(N-1): 1 <= step <= 2^(N-1)
                        guard.push(Instruction::LocalGet(local));
                        guard.push(width.constant(1));
                        guard.push(sub);
                        guard.push(width.constant(half));
                        guard.push(lt_u);
                        guard.push(Instruction::I32And);
                    }
                }
                match self.bound {
                    Operand::Constant(bound) if width.unsigned(bound) > half => return None,
                    Operand::Constant(_) => {}
                    Operand::Local(local) => {
                        guard.push(Instruction::LocalGet(local));
                        guard.push(width.constant(half));
                        guard.push(le_u);
                        guard.push(Instruction::I32And);
                    }
                }
            }
            Continues::Unequal if unit > 1 => {
                // (bound - i0) is a multiple of the step
                push(self.bound, &mut guard);
                guard.push(Instruction::LocalGet(self.counter));
                guard.push(sub);
                guard.push(width.constant(unit - 1));
                guard.push(and);
                guard.push(eqz);
                guard.push(Instruction::I32And);
            }
            Continues::Unequal => {}
        }
        Some(guard)
    }
}

fn operand(operator: &Operator<'_>, width: Width) -> Option<Operand> {
    match (operator, width) {
        (Operator::LocalGet { local_index }, _) => Some(Operand::Local(*local_index)),
        (Operator::I32Const { value }, Width::I32) => Some(Operand::Constant(*value as i64)),
        (Operator::I64Const { value }, Width::I64) => Some(Operand::Constant(*value)),
        _ => None,
    }
}
