//! NaN canonicalisation where the bits become observable, and nowhere else.
//!
//! Runs on x86_64, where arithmetic NaNs come out negative (`0xfff8...`) without
//! canonicalisation, so a canonical positive NaN in memory shows the pass did its work.

use wasmgrid_instrument::nan::{CANONICAL_F32, CANONICAL_F64};

use crate::{run_portable, wasm};

fn stored_u64(module: &str, at: usize) -> u64 {
    let run = run_portable(&wasm(module), "run", &[], i64::MAX);
    run.results.as_ref().expect("the run completes");
    u64::from_le_bytes(run.memory[at..at + 8].try_into().unwrap())
}

fn stored_u32(module: &str, at: usize) -> u32 {
    let run = run_portable(&wasm(module), "run", &[], i64::MAX);
    run.results.as_ref().expect("the run completes");
    u32::from_le_bytes(run.memory[at..at + 4].try_into().unwrap())
}

fn module(body: &str) -> String {
    format!(
        r#"(module (memory (export "memory") 1)
             (global $g (mut f64) (f64.const 0))
             (func $identity (param f64) (result f64) (local.get 0))
             (func $zero_by_zero (result f64) (f64.div (f64.const 0) (f64.const 0)))
             (func (export "run") (local $x f64) {body}))"#
    )
}

#[test]
fn arithmetic_nans_are_canonical_when_stored() {
    assert_eq!(
        stored_u64(&module("(f64.store (i32.const 0) (f64.div (f64.const 0) (f64.const 0)))"), 0),
        CANONICAL_F64
    );
    let f32_module = r#"(module (memory (export "memory") 1)
        (func (export "run") (f32.store (i32.const 0) (f32.sqrt (f32.const -1)))))"#;
    assert_eq!(stored_u32(f32_module, 0), CANONICAL_F32);
}

#[test]
fn nans_are_canonical_wherever_they_travel_before_being_stored() {
    let paths = [
        // Through a local.
        "(local.set $x (f64.div (f64.const 0) (f64.const 0))) (f64.store (i32.const 0) (local.get $x))",
        // Through a block result and a select.
        "(f64.store (i32.const 0) (select (block (result f64) (f64.div (f64.const 0) (f64.const 0))) (f64.const 1) (i32.const 1)))",
        // Through a call argument and a call result.
        "(f64.store (i32.const 0) (call $identity (f64.div (f64.const 0) (f64.const 0))))",
        "(f64.store (i32.const 0) (call $zero_by_zero))",
        // Through a global.
        "(global.set $g (f64.div (f64.const 0) (f64.const 0))) (f64.store (i32.const 0) (global.get $g))",
        // Through neg and abs, which keep the payload.
        "(f64.store (i32.const 0) (f64.abs (f64.neg (f64.div (f64.const 0) (f64.const 0)))))",
        // Reinterpreted as an integer.
        "(i64.store (i32.const 0) (i64.reinterpret_f64 (f64.div (f64.const 0) (f64.const 0))))",
        // A loop parameter set on the way round (found by the fixpoint).
        "(local.set $x (f64.const 1))
         (loop $again
           (f64.store (i32.const 0) (local.get $x))
           (local.set $x (f64.div (f64.const 0) (f64.const 0)))
           (br_if $again (i64.ne (i64.load (i32.const 0)) (i64.const 0x7ff8000000000000))))",
    ];
    for path in paths {
        assert_eq!(stored_u64(&module(path), 0), CANONICAL_F64, "{path}");
    }
}

#[test]
fn the_sign_of_a_nan_cannot_leak_through_copysign() {
    // copysign(1, -NaN-from-arithmetic): on x86 the NaN is negative, so without the pass the
    // result would be -1.
    let body = "(f64.store (i32.const 0) (f64.copysign (f64.const 1) (f64.div (f64.const 0) (f64.const 0))))";
    assert_eq!(stored_u64(&module(body), 0), 1f64.to_bits());
}

#[test]
fn loaded_and_constant_nans_keep_their_bits() {
    // A NaN-boxing interpreter stores payloads in NaNs: loads, stores, locals, calls, neg,
    // abs and copysign must keep them.
    let boxed = 0x7ff4_dead_beef_0001_u64;
    let bodies = [
        format!("(f64.store (i32.const 0) (f64.reinterpret_i64 (i64.const {boxed})))"),
        format!(
            "(i64.store (i32.const 8) (i64.const {boxed}))
             (local.set $x (f64.load (i32.const 8)))
             (f64.store (i32.const 0) (call $identity (local.get $x)))"
        ),
        format!("(f64.store (i32.const 0) (f64.neg (f64.neg (f64.reinterpret_i64 (i64.const {boxed})))))"),
    ];
    for body in &bodies {
        assert_eq!(stored_u64(&module(body), 0), boxed, "{body}");
    }
    let negated = format!("(f64.store (i32.const 0) (f64.neg (f64.reinterpret_i64 (i64.const {boxed}))))");
    assert_eq!(stored_u64(&module(&negated), 0), boxed ^ (1 << 63));
}

#[test]
fn simd_lanes_are_canonical() {
    let body = r#"(module (memory (export "memory") 1)
        (func (export "run")
          (v128.store (i32.const 0) (f32x4.div (v128.const f32x4 0 1 0 2) (v128.const f32x4 0 1 0 1)))
          (v128.store (i32.const 16) (f64x2.sqrt (v128.const f64x2 -1 4)))))"#;
    let run = run_portable(&wasm(body), "run", &[], i64::MAX);
    let lanes32: Vec<u32> =
        run.memory[..16].chunks(4).map(|lane| u32::from_le_bytes(lane.try_into().unwrap())).collect();
    assert_eq!(lanes32, [CANONICAL_F32, 1f32.to_bits(), CANONICAL_F32, 2f32.to_bits()]);
    let lanes64: Vec<u64> =
        run.memory[16..32].chunks(8).map(|lane| u64::from_le_bytes(lane.try_into().unwrap())).collect();
    assert_eq!(lanes64, [CANONICAL_F64, 2f64.to_bits()]);
}

#[test]
fn code_that_never_exposes_a_nan_gets_no_canonicalisation() {
    // A float loop whose values only reach comparisons and a store after a conversion to
    // integer: nothing to canonicalise, so the instrumented code has no `f64.ne`.
    let module = wasm(
        r#"(module (memory (export "memory") 1)
          (func (export "run") (local $x f64) (local $i i32)
            (loop $step
              (local.set $x (f64.add (f64.mul (local.get $x) (local.get $x)) (f64.const 0.25)))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $step (i32.and (f64.lt (local.get $x) (f64.const 4)) (i32.lt_u (local.get $i) (i32.const 100)))))
            (i32.store (i32.const 0) (i32.trunc_sat_f64_s (local.get $x)))))"#,
    );
    let instrumented = wasmgrid_instrument::instrument(&module, wasmgrid_instrument::Target::Portable).unwrap();
    assert!(!uses_f64_ne(&instrumented));
    // And the same loop storing its float does get it.
    let storing = wasm(
        r#"(module (memory (export "memory") 1)
          (func (export "run") (local $x f64)
            (local.set $x (f64.add (local.get $x) (f64.const 0.25)))
            (f64.store (i32.const 0) (local.get $x))))"#,
    );
    assert!(uses_f64_ne(&wasmgrid_instrument::instrument(&storing, wasmgrid_instrument::Target::Portable).unwrap()));
}

/// Whether any function body of `wasm` compares f64s for inequality (what canonicalising an
/// f64 does).
fn uses_f64_ne(wasm: &[u8]) -> bool {
    wasmparser::Parser::new(0).parse_all(wasm).any(|payload| match payload {
        Ok(wasmparser::Payload::CodeSectionEntry(body)) => body
            .get_operators_reader()
            .unwrap()
            .into_iter()
            .any(|operator| matches!(operator, Ok(wasmparser::Operator::F64Ne))),
        _ => false,
    })
}
