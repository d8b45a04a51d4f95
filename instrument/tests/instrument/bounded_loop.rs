//! Bounded loops: counted loops that run without their header check when a test at entry
//! bounds them, and loops that look counted but are not, which must still be stopped.

use wasmgrid_instrument::bounded_loop::UNCHECKED_FUEL;
use wasmgrid_instrument::{Target, TrapCause, classify_trap};
use wasmparser::{Operator, Parser, Payload};
use wasmtime::Val;

use crate::{run_portable, run_with_wasmtime_fuel, trap_of, wasm};

/// The `loop` operators in a module's code.
fn loops_in(module: &[u8]) -> usize {
    let mut loops = 0;
    for payload in Parser::new(0).parse_all(module) {
        if let Payload::CodeSectionEntry(body) = payload.unwrap() {
            let mut reader = body.get_operators_reader().unwrap();
            while !reader.eof() {
                loops += usize::from(matches!(reader.read().unwrap(), Operator::Loop { .. }));
            }
        }
    }
    loops
}

fn instrumented_loops(module: &[u8]) -> usize {
    loops_in(&wasmgrid_instrument::instrument(module, Target::Portable).unwrap())
}

/// Counted loops in the forms compilers write, each taking `n` rounds over a sum in memory.
const COUNTED: &str = r#"
(module
  (memory (export "memory") 1)
  ;; do-while, `local.set i  local.get i`, constant step and bound
  (func (export "do_while") (param $n i32) (result i32) (local $i i32) (local $sum i32)
    (loop $round
      (local.set $sum (i32.add (local.get $sum) (local.get $i)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $round (i32.lt_u (local.get $i) (local.get $n))))
    (local.get $sum))
  ;; a sieve's inner loop: 64-bit counter, step and bound in locals, an exit test, a bounds
  ;; check that leaves the loop
  (func (export "sieve") (param $start i64) (param $step i64) (param $end i64) (result i32)
    (local $marked i32)
    (block $out_of_bounds
      (block $done
        (loop $mark
          (br_if $out_of_bounds (i64.ge_u (local.get $start) (i64.const 65536)))
          (i32.store8 (i32.wrap_i64 (local.get $start)) (i32.const 1))
          (local.set $marked (i32.add (local.get $marked) (i32.const 1)))
          (br_if $done (i64.ge_u (local.tee $start (i64.add (local.get $start) (local.get $step))) (local.get $end)))
          (br $mark)))
      (return (local.get $marked)))
    (i32.const -1))
  ;; a pointer walk: step 4, ends when the pointer meets the end
  (func (export "walk") (param $p i32) (param $end i32) (result i32) (local $sum i32)
    (loop $next
      (local.set $sum (i32.add (local.get $sum) (i32.load (local.get $p))))
      (br_if $next (i32.ne (local.tee $p (i32.add (local.get $p) (i32.const 4))) (local.get $end))))
    (local.get $sum))
  ;; the same two forms touching no memory, so only the limit can stop a wrong one
  (func (export "count") (param $i i64) (param $step i64) (param $end i64) (result i32) (local $rounds i32)
    (block $done
      (loop $round
        (local.set $rounds (i32.add (local.get $rounds) (i32.const 1)))
        (br_if $done (i64.ge_u (local.tee $i (i64.add (local.get $i) (local.get $step))) (local.get $end)))
        (br $round)))
    (local.get $rounds))
  (func (export "skip") (param $p i32) (param $end i32) (result i32)
    (loop $next
      (br_if $next (i32.ne (local.tee $p (i32.add (local.get $p) (i32.const 4))) (local.get $end))))
    (local.get $p)))
"#;

#[test]
fn counted_loops_get_an_unchecked_copy_and_burn_the_fuel_wasmtime_counts() {
    let module = wasm(COUNTED);
    assert_eq!(loops_in(&module), 5);
    assert_eq!(instrumented_loops(&module), 10, "each counted loop is written twice");
    let cases: [(&str, Vec<Val>); 13] = [
        ("count", vec![Val::I64(5), Val::I64(3), Val::I64(1000)]),
        // The counter wraps once, from the top of the range: the guard sends it to the
        // checked copy.
        ("count", vec![Val::I64(-2), Val::I64(1), Val::I64(100)]),
        ("skip", vec![Val::I32(0), Val::I32(4000)]),
        ("skip", vec![Val::I32(-8), Val::I32(8)]),
        ("do_while", vec![Val::I32(1)]),
        ("do_while", vec![Val::I32(1000)]),
        // The first round runs anyway: i0 >= bound fails the guard.
        ("do_while", vec![Val::I32(0)]),
        ("sieve", vec![Val::I64(7), Val::I64(3), Val::I64(60_000)]),
        // Runs into the bounds check.
        ("sieve", vec![Val::I64(7), Val::I64(1000), Val::I64(1 << 40)]),
        // More rounds than an unchecked copy may take: the checked one runs.
        ("sieve", vec![Val::I64(0), Val::I64(1), Val::I64(65_536)]),
        ("walk", vec![Val::I32(0), Val::I32(400)]),
        ("walk", vec![Val::I32(4), Val::I32(8)]),
        ("walk", vec![Val::I32(0), Val::I32(60_000)]),
    ];
    for (name, args) in cases {
        let (expected, wasmtime_fuel) = run_with_wasmtime_fuel(&module, name, &args);
        let run = run_portable(&module, name, &args, i64::MAX);
        assert_eq!(format!("{:?}", run.results.unwrap()), format!("{:?}", expected.unwrap()), "{name} {args:?}");
        assert_eq!(run.fuel_used as u64, wasmtime_fuel, "{name} {args:?}");
    }
}

#[test]
fn loops_that_only_look_counted_are_still_stopped_by_the_limit() {
    let module = wasm(COUNTED);
    let limit = 1_000_000;
    let cases: [(&str, Vec<Val>); 6] = [
        // A step of zero never moves.
        ("count", vec![Val::I64(0), Val::I64(0), Val::I64(10)]),
        // A step of half the range and a bound above it: 1, 2^63 + 1, 1, ... for ever.
        ("count", vec![Val::I64(1), Val::I64(i64::MIN), Val::I64(i64::MIN + 2)]),
        // Close below a bound near the top of the range, a big step wraps: 2^64 - 10,
        // 2^63 - 10, 2^64 - 10, ... for ever.
        ("count", vec![Val::I64(-10), Val::I64(i64::MIN), Val::I64(-5)]),
        // A bound at the top of the range: 2^64 rounds.
        ("count", vec![Val::I64(0), Val::I64(1), Val::I64(-1)]),
        // A pointer that steps over its end and wraps around for ever.
        ("skip", vec![Val::I32(0), Val::I32(6)]),
        // One that starts past its end.
        ("skip", vec![Val::I32(8), Val::I32(4)]),
    ];
    for (name, args) in cases {
        let run = run_portable(&module, name, &args, limit);
        assert_eq!(trap_of(&run), Some(wasmtime::Trap::UnreachableCodeReached), "{name} {args:?}");
        assert_eq!(classify_trap(run.fuel_used, limit, run.stack_used), TrapCause::FuelLimit, "{name} {args:?}");
        assert!(run.fuel_used < limit + 100, "stopped by the checked copy: {} ({name} {args:?})", run.fuel_used);
    }
}

#[test]
fn a_run_spinning_through_unchecked_loops_is_stopped_within_their_budget() {
    // An endless outer loop around a counted one: the inner loop's rounds go unchecked, the
    // outer header is checked every time round.
    let module = wasm(
        r#"(module
          (func (export "run") (local $i i32)
            (loop $forever
              (local.set $i (i32.const 0))
              (loop $count
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br_if $count (i32.lt_u (local.get $i) (i32.const 100000))))
              (br $forever))))"#,
    );
    assert_eq!(instrumented_loops(&module), 3);
    for limit in [1_000, 1_000_000, 10_000_000] {
        let run = run_portable(&module, "run", &[], limit);
        assert_eq!(classify_trap(run.fuel_used, limit, run.stack_used), TrapCause::FuelLimit);
        assert!(run.fuel_used <= limit + UNCHECKED_FUEL as i64 + 100, "limit {limit}: stopped at {}", run.fuel_used);
    }
}

#[test]
fn loops_with_calls_other_back_edges_or_a_second_write_of_the_counter_stay_checked() {
    let module = wasm(
        r#"(module
          (func $f)
          (func (export "calls") (local $i i32)
            (loop $l
              (call $f)
              (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 10)))))
          (func (export "continues") (param $c i32) (local $i i32)
            (loop $l
              (br_if $l (local.get $c))
              (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 10)))))
          (func (export "rewinds") (local $i i32)
            (loop $l
              (local.set $i (i32.const 0))
              (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 10)))))
          (func (export "moves_its_bound") (param $n i32) (local $i i32)
            (loop $l
              (local.set $n (i32.add (local.get $n) (i32.const 1)))
              (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $n)))))
          (func (export "odd_step") (param $end i32) (local $p i32)
            (loop $l
              (br_if $l (i32.ne (local.tee $p (i32.add (local.get $p) (i32.const 3))) (local.get $end))))))"#,
    );
    assert_eq!(instrumented_loops(&module), 5, "none is copied");
    // Each of them would run for ever if trusted; the checks stop them.
    let limit = 100_000;
    for (name, args) in [
        ("continues", vec![Val::I32(1)]),
        ("rewinds", vec![]),
        ("moves_its_bound", vec![Val::I32(5)]),
        ("odd_step", vec![Val::I32(2)]),
    ] {
        let run = run_portable(&module, name, &args, limit);
        assert_eq!(classify_trap(run.fuel_used, limit, run.stack_used), TrapCause::FuelLimit, "{name}");
        assert!(run.fuel_used < limit + 100, "{name}: {}", run.fuel_used);
    }
}
