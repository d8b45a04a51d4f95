//! NaN canonicalisation, only where a NaN's bits could become observable.
//!
//! The WebAssembly specification leaves the sign and payload of a NaN produced by float
//! arithmetic nondeterministic, and engines on different CPUs do produce different bits. Every
//! other operation on floats is deterministic: loads, stores, constants, locals, globals,
//! `select`, parameters and results move bits unchanged; `neg`, `abs` and `copysign` are
//! defined on the bits; comparisons, `min`/`max` of non-NaNs and the float-to-integer
//! conversions do not depend on a NaN's bits. So a NaN's bits can only differ between engines
//! if arithmetic made it, and can only reach the output if they are read as bits.
//!
//! The pass tracks, for every float value, whether it may be such a "dirty" NaN:
//! - **Dirty when produced by arithmetic:** `add`, `sub`, `mul`, `div`, `sqrt`, `min`,
//!   `max`, `ceil`, `floor`, `trunc`, `nearest`, `f32.demote_f64` and `f64.promote_f32`.
//! - **Passed on** by `neg` and `abs` (which keep the payload), by `copysign` from its first
//!   operand, by `select` from either operand, and through locals, block parameters and block
//!   results (see below).
//! - **Clean otherwise:** constants, loads (a NaN-boxing interpreter keeps its bits),
//!   integer-to-float conversions and reinterpretations, parameters, call results and global
//!   reads (clean because every value that crosses those boundaries is canonicalised first).
//!
//! A dirty value is canonicalised (a NaN replaced by the positive quiet NaN, `0x7fc00000` or
//! `0x7ff8000000000000`; any other value left alone, which is one of the results the
//! specification allows) where it is **observed**:
//! - stored to memory (`f32.store`, `f64.store`);
//! - reinterpreted as an integer (`i32.reinterpret_f32`, `i64.reinterpret_f64`);
//! - used as the sign operand of `copysign` (its sign bit becomes the result's);
//! - put in a vector (`splat`, `replace_lane`), where integer operators can read it;
//! - leaving the function: call and tail-call arguments, return values, `global.set`.
//!
//! Nothing else can expose the bits: the host sees memory and the arguments and results of
//! calls, and every path from a dirty value to those goes through one of the points above.
//!
//! **Vectors** are canonicalised where float-lane arithmetic produces them: nearly every
//! vector operator can read lanes as integers, so tracking them would buy little.
//!
//! **Where the analysis is conservative:** it is flow-insensitive for locals (a local is dirty
//! if any write to it anywhere in the function may be dirty), and merges at control-flow joins
//! (a block's result is dirty if any branch to it, or its fallthrough, carries a dirty value;
//! a loop's parameter if its entry or any branch back does; `select`'s result if either
//! operand is). That is a fixpoint, computed by repeating the walk over the function; a
//! function that has not settled after [`MAX_ANALYSIS_PASSES`] walks (only contrived code
//! takes more than two or three) is treated as if every float local and block value were
//! dirty. Both are deterministic, but have a price: a value that may come from arithmetic on
//! one path and from a load on another (a local used for both, a `select` of both) is
//! canonicalised when observed, so a NaN that was loaded, and should keep its payload, loses
//! it there. A NaN-boxing interpreter keeps its boxed values out of locals that also hold
//! arithmetic results (flow-sensitive locals would lift most of this).

use wasm_encoder::Instruction;
use wasmparser::{Operator, ValType};

/// Walks over a function before giving up on precision; see the module documentation.
pub const MAX_ANALYSIS_PASSES: usize = 6;

/// The canonical NaNs: positive, quiet, no payload (what wasmtime's canonicalisation produces).
pub const CANONICAL_F32: u32 = 0x7fc0_0000;
pub const CANONICAL_F64: u64 = 0x7ff8_0000_0000_0000;

/// What an operator does to the NaN bits of its operands and result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Its float result, of this type, may be a dirty NaN.
    ProducesDirty(ValType),
    /// Its result is dirty if its only (top) operand is.
    PassesOn,
    /// `copysign`: observes its top operand, and its result is dirty if the other one is.
    CopySign,
    /// Observes its top operand (a store's value, a reinterpretation, a splat or lane).
    ObservesTop,
    /// A vector result of float-lane arithmetic, of lanes of this shape: canonicalised at once.
    VectorResult(ValType),
    /// Anything else: results clean, operands not observed.
    Neutral,
}

pub(crate) fn effect(operator: &Operator<'_>) -> Effect {
    use Operator::*;
    match operator {
        F32Add | F32Sub | F32Mul | F32Div | F32Min | F32Max | F32Sqrt | F32Ceil | F32Floor | F32Trunc | F32Nearest
        | F32DemoteF64 => Effect::ProducesDirty(ValType::F32),
        F64Add | F64Sub | F64Mul | F64Div | F64Min | F64Max | F64Sqrt | F64Ceil | F64Floor | F64Trunc | F64Nearest
        | F64PromoteF32 => Effect::ProducesDirty(ValType::F64),
        F32Neg | F32Abs | F64Neg | F64Abs => Effect::PassesOn,
        F32Copysign | F64Copysign => Effect::CopySign,
        F32Store { .. }
        | F64Store { .. }
        | I32ReinterpretF32
        | I64ReinterpretF64
        | F32x4Splat
        | F64x2Splat
        | F32x4ReplaceLane { .. }
        | F64x2ReplaceLane { .. } => Effect::ObservesTop,
        F32x4Add | F32x4Sub | F32x4Mul | F32x4Div | F32x4Min | F32x4Max | F32x4Sqrt | F32x4Ceil | F32x4Floor
        | F32x4Trunc | F32x4Nearest | F32x4DemoteF64x2Zero => Effect::VectorResult(ValType::F32),
        F64x2Add | F64x2Sub | F64x2Mul | F64x2Div | F64x2Min | F64x2Max | F64x2Sqrt | F64x2Ceil | F64x2Floor
        | F64x2Trunc | F64x2Nearest | F64x2PromoteLowF32x4 => Effect::VectorResult(ValType::F64),
        _ => Effect::Neutral,
    }
}

/// Replaces the value on top of the stack, of type `ty` (`f32`, `f64`, or `v128` with lanes
/// of type `lanes`), by the canonical NaN if it is a NaN, using `scratch`, a local of type `ty`.
///
/// A scalar is tested with `x >= x` and a branch around the replacement, not with `x != x`
/// and a `select`: Cranelift turns that `select` into two jumps, both taken for every number,
/// and builds the canonical NaN in a register up front, where `>=` (false only for a NaN,
/// as it is an ordered comparison) becomes one compare and one jump, with the constant built
/// only on the NaN path.
pub(crate) fn canonicalize(ty: ValType, lanes: ValType, scratch: u32, out: &mut Vec<Instruction<'_>>) {
    use wasm_encoder::{BlockType, Ieee32, Ieee64, ValType as EncodedValType};
    let (canonical, greater_or_equal, result) = match ty {
        ValType::F32 => (Instruction::F32Const(Ieee32::new(CANONICAL_F32)), Instruction::F32Ge, EncodedValType::F32),
        ValType::F64 => (Instruction::F64Const(Ieee64::new(CANONICAL_F64)), Instruction::F64Ge, EncodedValType::F64),
        _ => return canonicalize_lanes(lanes, scratch, out),
    };
    out.extend([
        Instruction::LocalTee(scratch),
        Instruction::LocalGet(scratch),
        greater_or_equal,
        Instruction::If(BlockType::Result(result)),
        Instruction::LocalGet(scratch),
        Instruction::Else,
        canonical,
        Instruction::End,
    ]);
}

/// [`canonicalize`] for a vector: lane by lane, `x != x` holds exactly for NaNs, and a
/// bit-select takes the canonical NaN there and the lane elsewhere.
fn canonicalize_lanes(lanes: ValType, scratch: u32, out: &mut Vec<Instruction<'_>>) {
    let vector = |lane: &[u8]| Instruction::V128Const(i128::from_le_bytes(splat(lane)));
    let (canonical, not_equal) = match lanes {
        ValType::F32 => (vector(&CANONICAL_F32.to_le_bytes()), Instruction::F32x4Ne),
        _ => (vector(&CANONICAL_F64.to_le_bytes()), Instruction::F64x2Ne),
    };
    out.extend([
        Instruction::LocalSet(scratch),
        canonical,
        Instruction::LocalGet(scratch),
        Instruction::LocalGet(scratch),
        Instruction::LocalGet(scratch),
        not_equal,
        Instruction::V128Bitselect,
    ]);
}

/// A lane repeated across 16 bytes.
fn splat(lane: &[u8]) -> [u8; 16] {
    let mut bytes = [0; 16];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = lane[index % lane.len()];
    }
    bytes
}
