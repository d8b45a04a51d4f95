//! Fuel as code: the count, its limit, and agreement with wasmtime's own metering.

use wasmgrid_instrument::{TrapCause, classify_trap};
use wasmtime::Val;

use crate::{run_portable, run_with_wasmtime_fuel, trap_of, wasm};

/// Loops, branches of every kind, calls direct and indirect, early returns and a tail call.
const CONTROL_FLOW: &str = r#"
(module
  (type $unary (func (param i32) (result i32)))
  (table 2 funcref)
  (elem (i32.const 0) $square $collatz_steps)
  (func $square (type $unary) (i32.mul (local.get 0) (local.get 0)))
  (func $collatz_steps (type $unary) (local $steps i32)
    (block $done
      (loop $next
        (br_if $done (i32.le_u (local.get 0) (i32.const 1)))
        (local.set $steps (i32.add (local.get $steps) (i32.const 1)))
        (if (i32.and (local.get 0) (i32.const 1))
          (then (local.set 0 (i32.add (i32.mul (local.get 0) (i32.const 3)) (i32.const 1))))
          (else (local.set 0 (i32.shr_u (local.get 0) (i32.const 1)))))
        (br $next)))
    (local.get $steps))
  (func $classify (param i32) (result i32)
    (block $c (block $b (block $a
      (br_table $a $b $c (i32.rem_u (local.get 0) (i32.const 3))))
      (return (i32.const 10)))
      (return (call_indirect (type $unary) (local.get 0) (i32.const 0))))
    (call_indirect (type $unary) (local.get 0) (i32.const 1)))
  (func $tail (param i32) (result i32)
    (if (i32.eqz (local.get 0)) (then (return (i32.const 7))))
    (return_call $tail (i32.sub (local.get 0) (i32.const 1))))
  (func (export "run") (param $n i32) (result i32) (local $i i32) (local $sum i32)
    (loop $each
      (local.set $sum (i32.add (local.get $sum) (call $classify (local.get $i))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $each (i32.lt_u (local.get $i) (local.get $n))))
    (i32.add (local.get $sum) (call $tail (i32.const 50)))))
"#;

#[test]
fn a_completed_run_burns_the_fuel_wasmtime_counts() {
    let module = wasm(CONTROL_FLOW);
    for n in [1, 2, 3, 10, 1000] {
        let (expected, wasmtime_fuel) = run_with_wasmtime_fuel(&module, "run", &[Val::I32(n)]);
        let run = run_portable(&module, "run", &[Val::I32(n)], i64::MAX);
        assert_eq!(format!("{:?}", run.results.as_ref().unwrap()), format!("{:?}", expected.unwrap()), "n = {n}");
        assert_eq!(run.fuel_used as u64, wasmtime_fuel, "n = {n}");
        assert_eq!(run.stack_used, 0, "every frame was taken off again");
    }
}

#[test]
fn the_example_probe_burns_the_fuel_wasmtime_counts() {
    // The float probe of the sandbox, without its WASI calls: arithmetic, a long loop, stores.
    let module = wasm(
        r#"(module (memory (export "memory") 1)
          (func (export "run") (local $i i32) (local $sum f64)
            (loop $accumulate
              (local.set $sum (f64.add (local.get $sum)
                (f64.div (f64.const 1) (f64.convert_i32_u (i32.add (local.get $i) (i32.const 1))))))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $accumulate (i32.lt_u (local.get $i) (i32.const 100000))))
            (f64.store (i32.const 8) (local.get $sum))))"#,
    );
    let (_, wasmtime_fuel) = run_with_wasmtime_fuel(&module, "run", &[]);
    let run = run_portable(&module, "run", &[], i64::MAX);
    assert!(run.results.is_ok());
    assert_eq!(run.fuel_used as u64, wasmtime_fuel);
}

#[test]
fn a_run_past_its_limit_traps_and_is_told_apart_from_the_modules_own_trap() {
    let spinner = wasm(r#"(module (func (export "run") (loop $forever (br $forever))))"#);
    let run = run_portable(&spinner, "run", &[], 1_000_000);
    assert_eq!(trap_of(&run), Some(wasmtime::Trap::UnreachableCodeReached));
    assert!(run.fuel_used > 1_000_000 && run.fuel_used < 1_000_010, "{}", run.fuel_used);
    assert_eq!(classify_trap(run.fuel_used, 1_000_000, run.stack_used), TrapCause::FuelLimit);

    let trapper = wasm(r#"(module (func (export "run") (unreachable)))"#);
    let run = run_portable(&trapper, "run", &[], 1_000_000);
    assert_eq!(trap_of(&run), Some(wasmtime::Trap::UnreachableCodeReached));
    assert_eq!(classify_trap(run.fuel_used, 1_000_000, run.stack_used), TrapCause::Module);
}

#[test]
fn a_limit_of_exactly_the_fuel_needed_is_enough() {
    let module = wasm(CONTROL_FLOW);
    let needed = run_portable(&module, "run", &[Val::I32(100)], i64::MAX).fuel_used;
    assert!(run_portable(&module, "run", &[Val::I32(100)], needed).results.is_ok());
    let short = run_portable(&module, "run", &[Val::I32(100)], needed - 1);
    assert_eq!(classify_trap(short.fuel_used, needed - 1, short.stack_used), TrapCause::FuelLimit);
}

#[test]
fn a_start_function_is_metered_too() {
    // The limit is imported, so it is in force before the start function runs.
    let module = wasm(r#"(module (func $start (loop $forever (br $forever))) (start $start) (func (export "run")))"#);
    let instrumented = wasmgrid_instrument::instrument(&module, wasmgrid_instrument::Target::Portable).unwrap();
    let engine = crate::engine(|_| {});
    let compiled = wasmtime::Module::new(&engine, &instrumented).unwrap();
    let mut store = wasmtime::Store::new(&engine, ());
    let limit = wasmtime::Global::new(
        &mut store,
        wasmtime::GlobalType::new(wasmtime::ValType::I64, wasmtime::Mutability::Const),
        Val::I64(1000),
    )
    .unwrap();
    // The memory limit comes second. The portable module's start function is the host's to
    // call, once it holds the instance.
    let instance = wasmtime::Instance::new(&mut store, &compiled, &[limit.into(), limit.into()]).unwrap();
    let start = instance.get_typed_func::<(), ()>(&mut store, wasmgrid_instrument::START_EXPORT).unwrap();
    let error = start.call(&mut store, ()).unwrap_err();
    assert_eq!(error.downcast_ref::<wasmtime::Trap>(), Some(&wasmtime::Trap::UnreachableCodeReached));
    let fuel_used = instance.get_global(&mut store, wasmgrid_instrument::FUEL_USED_EXPORT).unwrap().get(&mut store);
    assert!(fuel_used.unwrap_i64() > 1000, "{fuel_used:?}");
}
