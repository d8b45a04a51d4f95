//! Stack depth as code: the same recursion depth fails on every engine.

use wasmgrid_instrument::cost::frame_cost;
use wasmgrid_instrument::{STACK_LIMIT, TrapCause, classify_trap};
use wasmtime::Val;

use crate::{run_portable, trap_of, wasm};

/// Recurses `n` deep; its frame: one parameter, no locals, an operand stack of two.
const RECURSION: &str = r#"
(module
  (func $down (export "run") (param i32) (result i32)
    (if (result i32) (i32.eqz (local.get 0))
      (then (i32.const 0))
      (else (i32.add (call $down (i32.sub (local.get 0) (i32.const 1))) (i32.const 1))))))
"#;

#[test]
fn recursion_up_to_the_limit_runs_and_one_frame_more_fails_as_the_stack_limit() {
    let module = wasm(RECURSION);
    let frame = frame_cost(1, 0, 2) as i64;
    let deepest = STACK_LIMIT / frame; // frames that fit: calls with n = deepest - 1 down to 0
    let fits = run_portable(&module, "run", &[Val::I32(deepest as i32 - 1)], i64::MAX);
    assert_eq!(format!("{:?}", fits.results.unwrap()), format!("{:?}", vec![Val::I32(deepest as i32 - 1)]));
    assert_eq!(fits.stack_used, 0);

    let too_deep = run_portable(&module, "run", &[Val::I32(deepest as i32)], i64::MAX);
    assert_eq!(trap_of(&too_deep), Some(wasmtime::Trap::UnreachableCodeReached));
    assert_eq!(classify_trap(too_deep.fuel_used, i64::MAX, too_deep.stack_used), TrapCause::StackLimit);
}

#[test]
fn unbounded_recursion_ends_at_the_pass_limit_before_the_engines() {
    let module = wasm(r#"(module (func $forever (export "run") (call $forever)))"#);
    let run = run_portable(&module, "run", &[], i64::MAX);
    assert_eq!(trap_of(&run), Some(wasmtime::Trap::UnreachableCodeReached));
    assert!(run.stack_used > STACK_LIMIT);
}
