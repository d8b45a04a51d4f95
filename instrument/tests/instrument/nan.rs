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
    // integer: nothing to canonicalise, so the instrumented code has no `f64.ge` (the test for
    // a NaN that canonicalising an f64 makes).
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
    assert!(!tests_for_f64_nans(&instrumented));
    // And the same loop storing its float does get it.
    let storing = wasm(
        r#"(module (memory (export "memory") 1)
          (func (export "run") (local $x f64)
            (local.set $x (f64.add (local.get $x) (f64.const 0.25)))
            (f64.store (i32.const 0) (local.get $x))))"#,
    );
    assert!(tests_for_f64_nans(
        &wasmgrid_instrument::instrument(&storing, wasmgrid_instrument::Target::Portable).unwrap()
    ));
}

/// Whether any function body of `wasm` has an `f64.ge` (`x >= x` is how canonicalising an f64
/// tests for a NaN).
fn tests_for_f64_nans(wasm: &[u8]) -> bool {
    wasmparser::Parser::new(0).parse_all(wasm).any(|payload| match payload {
        Ok(wasmparser::Payload::CodeSectionEntry(body)) => body
            .get_operators_reader()
            .unwrap()
            .into_iter()
            .any(|operator| matches!(operator, Ok(wasmparser::Operator::F64Ge))),
        _ => false,
    })
}

#[test]
fn code_after_an_if_whose_else_returns_is_instrumented() {
    // The then-branch falls through: what follows the `if` runs, and must be canonicalised
    // and metered like any code.
    let module = wasm(
        r#"(module (memory (export "memory") 1)
          (func (export "run") (param i32)
            (if (local.get 0) (then) (else (return)))
            (f64.store (i32.const 0) (f64.div (f64.const 0) (f64.const 0)))
            (loop $forever (br $forever))))"#,
    );
    let run = run_portable(&module, "run", &[wasmtime::Val::I32(1)], 100_000);
    assert!(run.results.is_err(), "the loop is stopped by the fuel limit");
    assert!(run.fuel_used > 100_000);
    assert_eq!(u64::from_le_bytes(run.memory[..8].try_into().unwrap()), CANONICAL_F64);
}

#[test]
fn a_conditional_branch_out_of_the_function_canonicalises_below_its_condition() {
    let module = wasm(
        r#"(module
          (func (export "run") (param f64 i32) (result f64)
            (br_if 0 (f64.div (local.get 0) (local.get 0)) (local.get 1))
            drop (f64.const 0))
          (func (export "table") (param f64 i32) (result f64)
            (f64.div (local.get 0) (local.get 0))
            (br_table 0 0 (local.get 1))))"#,
    );
    for export in ["run", "table"] {
        let run = run_portable(&module, export, &[wasmtime::Val::F64(0), wasmtime::Val::I32(1)], i64::MAX);
        let results = run.results.unwrap();
        assert_eq!(results[0].unwrap_f64().to_bits(), CANONICAL_F64, "{export}");
    }
}

#[test]
fn a_function_that_never_settles_keeps_its_integer_and_vector_locals_intact() {
    // Each local is copied from the next, written later: the fixpoint gives up and treats
    // every float local as dirty, but an i64x2 of all ones must still reach the call as is.
    let module = wasm(
        r#"(module (memory (export "memory") 1)
          (func $keep (param v128) (v128.store (i32.const 0) (local.get 0)))
          (func (export "run") (local $v v128) (local $i i64)
            (local $a f32) (local $b f32) (local $c f32) (local $d f32) (local $e f32) (local $f f32) (local $g f32)
            (local.set $v (i64x2.splat (i64.const -1)))
            (local.set $i (i64.const -1))
            (local.set $a (local.get $b)) (local.set $b (local.get $c)) (local.set $c (local.get $d))
            (local.set $d (local.get $e)) (local.set $e (local.get $f)) (local.set $f (local.get $g))
            (local.set $g (f32.sqrt (f32.const -1)))
            (call $keep (local.get $v))
            (i64.store (i32.const 16) (local.get $i))
            (f32.store (i32.const 24) (local.get $a))))"#,
    );
    let run = run_portable(&module, "run", &[], i64::MAX);
    run.results.as_ref().unwrap();
    assert!(run.memory[..24].iter().all(|&byte| byte == 0xff), "{:x?}", &run.memory[..24]);
}
