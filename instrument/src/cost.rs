//! The cost model: what one unit of fuel means. Credit is computed from fuel, so this model
//! is part of the platform's promise and changes only with [`crate::VERSION`].
//!
//! - **One unit per operator executed**, except the operators that do no work of their own:
//!   `nop`, `drop`, `block`, `loop`, `else`, `end`, `return` and `unreachable` cost nothing.
//! - **One unit per function call**, charged on entry (tail calls included).
//!
//!   Together that is what wasmtime's own fuel metering counts by default, so a run burns the
//!   same fuel it did when the sandbox relied on it (the tests check this against wasmtime).
//! - A bulk memory operator (`memory.copy`, `memory.fill`, ...) is one operator whatever its
//!   length.
//! - **Charged on entry to a straight-line stretch.** The code is cut at every operator that
//!   can transfer control (`loop`, `if`, `else`, `end`, the branches, `return`, the tail
//!   calls, `unreachable`); each stretch's whole cost is added when it is entered. A run that
//!   completes is therefore charged exactly once for every operator it executed. The count
//!   is written where the host can read it before every call and `unreachable`, at every
//!   loop header and on return; a run that traps otherwise (a division by zero, an access
//!   out of bounds) shows the count as of the last of those, the same on every engine.
//! - **Checked at every function entry and loop header**, the only places from which a run
//!   can go on indefinitely. Between checks a run executes at most one function body's worth
//!   of straight-line code, so it can overshoot its limit by that much before it is stopped;
//!   a run stopped by the fuel limit reports the limit as its fuel. A bounded loop
//!   ([`crate::bounded_loop`]) is checked once on entry instead, and may add up to
//!   [`crate::bounded_loop::UNCHECKED_FUEL`] to the overshoot. Where the checks are does not
//!   change the count of a run that completes.

use wasmparser::Operator;

/// The fuel a function call costs, on top of its operators.
pub const CALL_COST: u64 = 1;

/// The fuel an operator costs.
pub fn operator_cost(operator: &Operator<'_>) -> u64 {
    match operator {
        Operator::Nop
        | Operator::Drop
        | Operator::Block { .. }
        | Operator::Loop { .. }
        | Operator::Else
        | Operator::End
        | Operator::Return
        | Operator::Unreachable => 0,
        _ => 1,
    }
}

/// Whether a straight-line stretch ends with `operator` (the next stretch starts after it).
pub(crate) fn ends_stretch(operator: &Operator<'_>) -> bool {
    matches!(
        operator,
        Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::Else
            | Operator::End
            | Operator::Br { .. }
            | Operator::BrIf { .. }
            | Operator::BrTable { .. }
            | Operator::Return
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::Unreachable
    )
}

/// Stack units every active call costs on top of its slots: the return address, saved
/// registers and frame bookkeeping every engine keeps (measured: an empty recursive function
/// takes 48 to 64 bytes a call in wasmtime).
pub const FRAME_OVERHEAD: u64 = 16;

/// The stack units a call of a function costs: [`FRAME_OVERHEAD`] plus one per parameter,
/// declared local and slot of its deepest operand stack. Engines' frames grow with these
/// (by engine-specific amounts), so bounding their sum bounds the real stack everywhere.
pub fn frame_cost(params: u64, locals: u64, max_operand_stack: u64) -> u64 {
    FRAME_OVERHEAD + params + locals + max_operand_stack
}
