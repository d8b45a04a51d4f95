//! Publication-time checks: every kind of module that cannot be a work unit is refused with
//! its reason, and real command modules pass.

use wasmgrid_sandbox::ModuleRejection;

use crate::{Harness, wat};

fn check(wasm: &[u8]) -> Result<(), ModuleRejection> {
    Harness::default().sandbox.check_command_module(wasm)
}

#[test]
fn command_modules_pass() {
    for module in ["probes/determinism.wat", "probes/progress.wat", "hostile/infinite_loop.wat", "hostile/trap.wat"] {
        assert_eq!(check(&wat(module)), Ok(()), "{module}");
    }
}

#[test]
fn bytes_that_are_not_wasm_are_refused() {
    assert_eq!(check(b"#!/bin/sh\necho hello\n"), Err(ModuleRejection::NotWasm));
    assert_eq!(check(b""), Err(ModuleRejection::NotWasm));
}

#[test]
fn a_component_is_refused() {
    // The preamble of a component: magic, then version 0x0d and layer 1.
    let component = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
    assert_eq!(check(&component), Err(ModuleRejection::Component));
}

#[test]
fn a_truncated_module_is_invalid() {
    let wasm = wat("probes/determinism.wat");
    let rejection = check(&wasm[..wasm.len() / 2]).unwrap_err();
    assert!(matches!(rejection, ModuleRejection::Invalid(_)), "{rejection}");
}

#[test]
fn a_module_without_start_is_not_a_command() {
    assert_eq!(check(&wat("hostile/not_a_command.wat")), Err(ModuleRejection::NoStart));
    let reactor = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_initialize")))"#).unwrap();
    assert_eq!(check(&reactor), Err(ModuleRejection::Reactor));
    let with_params =
        wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start") (param i32)))"#).unwrap();
    assert_eq!(check(&with_params), Err(ModuleRejection::StartSignature));
    let no_memory = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32))) (func (export "_start")))"#,
    )
    .unwrap();
    assert_eq!(check(&no_memory), Err(ModuleRejection::NoMemory));
}

#[test]
fn imports_the_sandbox_lacks_are_named() {
    let rejection = check(&wat("hostile/unknown_import.wat")).unwrap_err();
    let ModuleRejection::ForbiddenImports(imports) = &rejection else { panic!("{rejection}") };
    assert_eq!(imports.len(), 1, "{rejection}");
    let sockets = wat::parse_str(
        r#"(module
             (import "wasi_snapshot_preview1" "sock_open" (func (param i32 i32 i32) (result i32)))
             (import "env" "system" (func (param i32) (result i32)))
             (memory (export "memory") 1)
             (func (export "_start")))"#,
    )
    .unwrap();
    let rejection = check(&sockets).unwrap_err();
    assert_eq!(
        rejection,
        ModuleRejection::ForbiddenImports(vec!["wasi_snapshot_preview1::sock_open".into(), "env::system".into()])
    );
    assert!(rejection.to_string().contains("env::system"), "{rejection}");
}

#[test]
fn a_wasi_import_with_the_wrong_type_is_refused() {
    let wrong = wat::parse_str(
        r#"(module
             (import "wasi_snapshot_preview1" "proc_exit" (func (param i64)))
             (memory (export "memory") 1)
             (func (export "_start")))"#,
    )
    .unwrap();
    let rejection = check(&wrong).unwrap_err();
    assert!(matches!(rejection, ModuleRejection::ImportMismatch(_)), "{rejection}");
}

#[test]
fn modules_that_cannot_be_deterministic_are_refused_with_the_reason() {
    let relaxed = check(&wat("hostile/relaxed_simd.wat")).unwrap_err();
    assert!(matches!(relaxed, ModuleRejection::Nondeterministic(_)), "{relaxed}");
    assert!(relaxed.to_string().contains("relaxed SIMD"), "{relaxed}");
    let shared = wat::parse_str(r#"(module (memory (export "memory") 1 1 shared) (func (export "_start")))"#).unwrap();
    let threads = check(&shared).unwrap_err();
    assert!(matches!(threads, ModuleRejection::Nondeterministic(_)), "{threads}");
    assert!(threads.to_string().contains("threads"), "{threads}");
    let meter_thief =
        wat::parse_str(r#"(module (import "wasmgrid" "meter" (memory 1)) (func (export "_start")))"#).unwrap();
    let reserved = check(&meter_thief).unwrap_err();
    assert!(reserved.to_string().contains("reserved"), "{reserved}");
}
