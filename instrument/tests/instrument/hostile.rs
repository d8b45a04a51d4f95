//! Modules that attack the instrumentation itself, and modules it must refuse.

use wasmgrid_instrument::{Refusal, Target, instrument};
use wasmtime::Val;

use crate::{run_portable, run_portable_in, run_portable_limited, wasm};

#[test]
fn threads_and_shared_memory_are_refused_with_the_reason() {
    let shared = wasm(r#"(module (memory 1 1 shared) (func (export "_start")))"#);
    assert!(matches!(instrument(&shared, Target::Sandbox), Err(Refusal::Threads(_))));
    let atomics = wasm(
        r#"(module (memory 1 1 shared)
             (func (export "_start") (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1)))))"#,
    );
    let refusal = instrument(&atomics, Target::Sandbox).unwrap_err();
    assert!(refusal.to_string().contains("threads"), "{refusal}");
}

#[test]
fn relaxed_simd_is_refused_with_the_reason() {
    let module = wasm(include_str!("../../../workunits/hostile/relaxed_simd.wat"));
    let refusal = instrument(&module, Target::Sandbox).unwrap_err();
    assert!(matches!(refusal, Refusal::RelaxedSimd(_)), "{refusal}");
}

#[test]
fn the_meters_names_cannot_be_taken_by_the_module() {
    let importer = wasm(r#"(module (import "wasmgrid" "meter" (memory 1)) (func (export "_start")))"#);
    assert!(matches!(instrument(&importer, Target::Sandbox), Err(Refusal::Reserved(_))));
    let limit_importer = wasm(r#"(module (import "wasmgrid" "fuel_limit" (global i64)) (func (export "_start")))"#);
    assert!(matches!(instrument(&limit_importer, Target::Portable), Err(Refusal::Reserved(_))));
    for name in ["wasmgrid_fuel_used", "wasmgrid_stack_used", "wasmgrid_limit_broken"] {
        let exporter =
            wasm(&format!(r#"(module (global (export "{name}") (mut i64) (i64.const 0)) (func (export "_start")))"#));
        assert!(matches!(instrument(&exporter, Target::Portable), Err(Refusal::Reserved(_))), "{name}");
    }
    let start_exporter = wasm(r#"(module (func (export "wasmgrid_start")) (func (export "_start")))"#);
    assert!(matches!(instrument(&start_exporter, Target::Portable), Err(Refusal::Reserved(_))));
}

/// An engine cannot give back an instance whose start function trapped, and so no counters
/// to tell a limit from the module's own trap: the portable module's start function is an
/// export for the host to call once it holds the instance. The sandbox's module keeps its
/// start section, since the sandbox reads its counters from memory of its own.
#[test]
fn the_portable_modules_start_function_is_an_export_the_host_calls() {
    let spinner = wasm(r#"(module (func $spin (loop (br 0))) (start $spin) (func (export "_start")))"#);
    let sections = |wasm: &[u8]| -> Vec<String> {
        wasmparser::Parser::new(0)
            .parse_all(wasm)
            .filter_map(|payload| match payload.unwrap() {
                wasmparser::Payload::StartSection { .. } => Some("start".to_owned()),
                wasmparser::Payload::ExportSection(exports) => Some(
                    exports.into_iter().map(|export| export.unwrap().name.to_owned()).collect::<Vec<_>>().join(","),
                ),
                _ => None,
            })
            .collect()
    };
    let portable = instrument(&spinner, Target::Portable).unwrap();
    assert_eq!(
        sections(&portable),
        ["_start,wasmgrid_stack_used,wasmgrid_fuel_used,wasmgrid_limit_broken,wasmgrid_start"]
    );
    let sandbox = instrument(&spinner, Target::Sandbox).unwrap();
    assert_eq!(sections(&sandbox), ["_start,wasmgrid_stack_used", "start"]);

    let run = run_portable(&spinner, "wasmgrid_start", &[], 1_000_000);
    assert!(run.results.is_err(), "the start function spins until its fuel runs out");
    assert!(run.fuel_used > 1_000_000, "the counters are readable after the trap: {}", run.fuel_used);
}

#[test]
fn the_module_cannot_reach_the_counters_through_its_own_memory_or_globals() {
    // It writes all over its memory and every global it has; the meter is elsewhere, so the
    // fuel limit still stops its loop.
    let module = wasm(
        r#"(module (memory (export "memory") 1) (global $g (mut i64) (i64.const 0))
             (func (export "run") (local $i i32)
               (loop $forever
                 (i64.store (local.get $i) (i64.const -9223372036854775808))
                 (global.set $g (i64.const -9223372036854775808))
                 (local.set $i (i32.and (i32.add (local.get $i) (i32.const 8)) (i32.const 65535)))
                 (br $forever))))"#,
    );
    let run = run_portable(&module, "run", &[], 100_000);
    assert!(run.results.is_err());
    assert!(run.fuel_used > 100_000);
}

#[test]
fn a_second_memory_of_the_modules_own_is_refused() {
    let module = wasm(r#"(module (memory 1) (memory 1) (func (export "_start")))"#);
    assert!(matches!(instrument(&module, Target::Sandbox), Err(Refusal::Unsupported(_))));
}

#[test]
fn deeply_nested_and_enormous_code_is_instrumented_in_time() {
    // 20,000 nested blocks, and a function of a million operators.
    let depth = 20_000;
    let nested = format!(
        "(module (func (export \"run\") (result i32) {} (i32.const 7) {}))",
        "(block (result i32) ".repeat(depth),
        ")".repeat(depth)
    );
    let run = run_portable(&wasm(&nested), "run", &[], i64::MAX);
    assert_eq!(format!("{:?}", run.results.unwrap()), format!("{:?}", vec![Val::I32(7)]));

    let long = format!(
        "(module (func (export \"run\") (result i32) (local $x i32) {} (local.get $x)))",
        "(local.set $x (i32.add (local.get $x) (i32.const 1)))".repeat(250_000)
    );
    let run = run_portable(&wasm(&long), "run", &[], i64::MAX);
    assert_eq!(format!("{:?}", run.results.unwrap()), format!("{:?}", vec![Val::I32(250_000)]));
}

#[test]
fn a_function_with_the_most_locals_allowed_is_refused_not_broken() {
    // 50,000 locals is the engines' limit: the pass needs one more for the fuel count.
    let module = wasm(r#"(module (func (export "run") (local i32) (local f64) (local i64)))"#);
    assert!(instrument(&module, Target::Sandbox).is_ok());
    let crowded = wasm(&format!("(module (func (export \"run\") {}))", "(local i32)".repeat(50_000)));
    let refusal = instrument(&crowded, Target::Sandbox);
    assert!(matches!(refusal, Err(Refusal::TooLarge(_))), "{refusal:?}");
}

#[test]
fn bytes_that_are_not_a_module_are_refused() {
    assert_eq!(instrument(b"not wasm", Target::Sandbox), Err(Refusal::NotWasm));
    assert_eq!(instrument(&[0, 0x61, 0x73, 0x6d, 0x0d, 0, 1, 0], Target::Sandbox), Err(Refusal::Component));
    let valid = wasm(r#"(module (func (export "_start")))"#);
    assert!(matches!(instrument(&valid[..valid.len() - 3], Target::Sandbox), Err(Refusal::Invalid(_))));
}

/// The portable module stops a growth past the run's memory limit, or past
/// `MAX_TABLE_ELEMENTS`, with a trap and a flag, where the sandbox's limiter ends the run;
/// a growth within the limits, and one the module's own maximum refuses, behave as before.
#[test]
fn growth_past_the_limits_traps_in_the_portable_module_and_says_which_limit() {
    let module = wasm(
        r#"(module
             (memory (export "memory") 1 100)
             (table 1 funcref)
             (func (export "grow_memory") (param i32) (result i32) (memory.grow (local.get 0)))
             (func (export "grow_table") (param i32) (result i32) (table.grow (ref.null func) (local.get 0))))"#,
    );
    let memory_limit = 10 << 16;
    let grow_memory =
        |pages: i32| run_portable_limited(&module, "grow_memory", &[Val::I32(pages)], 1 << 40, memory_limit);
    let within = grow_memory(9);
    assert_eq!(within.results.unwrap()[0].unwrap_i32(), 1, "the old size in pages");
    assert_eq!(within.limit_broken, 0);
    let past = grow_memory(10);
    assert!(past.results.is_err(), "eleven pages are more than the limit of ten");
    assert_eq!(past.limit_broken, wasmgrid_instrument::BROKE_MEMORY_LIMIT);
    // A delta that would wrap a 32-bit sum is still past the limit.
    assert_eq!(grow_memory(-1).limit_broken, wasmgrid_instrument::BROKE_MEMORY_LIMIT);
    // Within the limit but past the module's own maximum: refused by the engine, as ever.
    let refused = run_portable_limited(&module, "grow_memory", &[Val::I32(200)], 1 << 40, 1 << 30);
    assert_eq!((refused.results.unwrap()[0].unwrap_i32(), refused.limit_broken), (-1, 0));

    let max = wasmgrid_instrument::MAX_TABLE_ELEMENTS as i32;
    let grow_table = |elements: i32| run_portable(&module, "grow_table", &[Val::I32(elements)], 1 << 40);
    let within = grow_table(max - 1);
    assert_eq!((within.results.unwrap()[0].unwrap_i32(), within.limit_broken), (1, 0));
    let past = grow_table(max);
    assert!(past.results.is_err());
    assert_eq!(past.limit_broken, wasmgrid_instrument::BROKE_TABLE_LIMIT);
}

/// A growth within the run's limit and the memory's maximum that the engine refuses all the
/// same (a browser short of memory) traps, flagged as the host's failure: the module must not
/// see a refusal no native client would give it. One past the memory's own maximum is the
/// module's business, refused by every engine alike.
#[test]
fn an_engine_refusing_a_growth_within_the_limits_is_the_hosts_failure() {
    let module = wasm(
        r#"(module
             (memory (export "memory") 1 100)
             (func (export "grow_memory") (param i32) (result i32) (memory.grow (local.get 0))))"#,
    );
    let engine_memory = 4 << 16;
    let grow =
        |pages: i32| run_portable_in(&module, "grow_memory", &[Val::I32(pages)], 1 << 40, 1 << 30, engine_memory);
    let within = grow(3);
    assert_eq!((within.results.unwrap()[0].unwrap_i32(), within.limit_broken), (1, 0), "the engine gives four pages");
    let refused = grow(10);
    assert!(refused.results.is_err(), "the engine cannot give eleven pages");
    assert_eq!(refused.limit_broken, wasmgrid_instrument::BROKE_HOST_MEMORY);
    let past_maximum = grow(200);
    assert_eq!((past_maximum.results.unwrap()[0].unwrap_i32(), past_maximum.limit_broken), (-1, 0));
}
