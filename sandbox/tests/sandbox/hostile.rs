//! Every hostile module ends as an error outcome naming its cause, within its limit.

use std::time::Duration;

use wasmgrid_protocol::api::RunLimits;
use wasmgrid_sandbox::{Limit, RunError, RunOutcome};

use crate::{Harness, LIMITS, wat};

fn failed(outcome: &RunOutcome) -> &RunError {
    match outcome {
        RunOutcome::Failed(error) => error,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn an_infinite_loop_runs_out_of_fuel() {
    let harness = Harness::default();
    let report = harness.run(harness.spec(&wat("hostile/infinite_loop.wat"), RunLimits { fuel: 10_000_000, ..LIMITS }));
    assert_eq!(failed(&report.outcome), &RunError::Limit(Limit::Fuel));
    assert_eq!(report.fuel_used, 10_000_000, "all the fuel, and no more");
    assert_eq!(failed(&report.outcome).to_string(), "fuel limit exceeded");
}

#[test]
fn an_infinite_loop_with_ample_fuel_hits_the_wall_clock_limit() {
    let harness = Harness::default();
    let limits = RunLimits { fuel: u64::MAX / 2, wall_time_seconds: 1, ..LIMITS };
    let report = harness.run(harness.spec(&wat("hostile/infinite_loop.wat"), limits));
    assert_eq!(failed(&report.outcome), &RunError::Limit(Limit::WallTime));
    assert!(report.run_time >= Duration::from_secs(1));
    assert!(report.run_time < Duration::from_secs(10), "stopped soon after its limit: {:?}", report.run_time);
}

#[test]
fn an_infinite_loop_in_the_start_function_runs_out_of_fuel() {
    let harness = Harness::default();
    let report = harness.run(harness.spec(&wat("hostile/start_loop.wat"), RunLimits { fuel: 10_000_000, ..LIMITS }));
    assert_eq!(failed(&report.outcome), &RunError::Limit(Limit::Fuel));
}

#[test]
fn sleeping_inside_a_host_call_hits_the_wall_clock_limit() {
    let harness = Harness::default();
    let limits = RunLimits { wall_time_seconds: 1, ..LIMITS };
    let report = harness.run(harness.spec(&wat("hostile/sleeper.wat"), limits));
    assert_eq!(failed(&report.outcome), &RunError::Limit(Limit::WallTime));
    assert!(report.run_time < Duration::from_secs(10), "stopped soon after its limit: {:?}", report.run_time);
}

#[test]
fn slow_host_calls_that_burn_little_fuel_hit_the_wall_clock_limit() {
    let harness = Harness::default();
    let limits = RunLimits { fuel: u64::MAX / 2, wall_time_seconds: 1, ..LIMITS };
    let report = harness.run(harness.spec(&wat("hostile/host_call_spinner.wat"), limits));
    assert_eq!(failed(&report.outcome), &RunError::Limit(Limit::WallTime));
    assert!(report.run_time < Duration::from_secs(10), "stopped soon after its limit: {:?}", report.run_time);
    assert!(report.fuel_used < 10_000_000, "the attack burns little fuel: {}", report.fuel_used);
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() {
    let harness = Harness::default();
    let report =
        harness.run(harness.spec(&wat("hostile/memory_bomb.wat"), RunLimits { memory_bytes: 16 << 20, ..LIMITS }));
    assert_eq!(failed(&report.outcome), &RunError::Limit(Limit::Memory));
}

#[test]
fn a_table_bomb_hits_the_table_limit() {
    let harness = Harness::default();
    let report = harness.run(harness.spec(&wat("hostile/table_bomb.wat"), LIMITS));
    assert_eq!(failed(&report.outcome), &RunError::Limit(Limit::Tables));
}

#[test]
fn unbounded_recursion_hits_the_stack_limit() {
    let harness = Harness::default();
    let report = harness.run(harness.spec(&wat("hostile/recursion.wat"), LIMITS));
    assert_eq!(failed(&report.outcome), &RunError::Limit(Limit::Stack));
}

#[test]
fn flooding_standard_output_hits_the_output_limit() {
    let harness = Harness::default();
    let report =
        harness.run(harness.spec(&wat("hostile/huge_stdout.wat"), RunLimits { output_bytes: 1 << 20, ..LIMITS }));
    assert_eq!(failed(&report.outcome), &RunError::Limit(Limit::Output));
    assert!(report.stdout.len() <= 1 << 20, "no more than the limit is kept");
}

#[test]
fn filling_the_scratch_directory_hits_the_scratch_limit() {
    let harness = Harness::default();
    let mut spec = harness.spec(&wat("hostile/scratch_filler.wat"), RunLimits { fuel: u64::MAX / 2, ..LIMITS });
    spec.scratch_limit_bytes = 4 << 20;
    let scratch = spec.scratch_dir.clone();
    let report = harness.run(spec);
    assert_eq!(failed(&report.outcome), &RunError::Limit(Limit::ScratchDisk));
    let written = wasmgrid_sandbox::scratch_bytes(&scratch).expect("a flat directory can be measured");
    assert!(written < 4 << 30, "stopped long before filling the disk: {written} bytes");
}

#[test]
fn nesting_directories_beyond_the_hosts_path_limit_breaks_the_scratch_limit() {
    let harness = Harness::default();
    let spec = harness.spec(&wat("hostile/deep_scratch.wat"), LIMITS);
    let scratch = spec.scratch_dir.clone();
    let report = harness.run(spec);
    assert_eq!(failed(&report.outcome), &RunError::Limit(Limit::ScratchDisk), "{}", report.stderr);
    assert_eq!(wasmgrid_sandbox::scratch_bytes(&scratch), None, "the host cannot see the bottom");
}

#[test]
fn paths_outside_the_sandbox_cannot_be_opened() {
    let harness = Harness::default();
    let report = harness.run(harness.spec(&wat("hostile/escape.wat"), LIMITS));
    match failed(&report.outcome) {
        // WASI errno: 2 EACCES, 44 ENOENT, 63 EPERM, 76 ENOTCAPABLE.
        RunError::Exit(errno) => assert!([2, 44, 63, 76].contains(errno), "errno {errno}"),
        other => panic!("expected a denied open, got {other:?}"),
    }
    assert!(report.stdout.is_empty(), "nothing leaked: {:?}", String::from_utf8_lossy(&report.stdout));
}

#[test]
fn an_unknown_import_is_named() {
    let harness = Harness::default();
    let report = harness.run(harness.spec(&wat("hostile/unknown_import.wat"), LIMITS));
    assert_eq!(failed(&report.outcome), &RunError::MissingImport("env::open_socket".into()));
}

#[test]
fn a_trap_is_reported_with_its_cause() {
    let harness = Harness::default();
    let report = harness.run(harness.spec(&wat("hostile/trap.wat"), LIMITS));
    let error = failed(&report.outcome).to_string();
    assert!(error.contains("unreachable"), "{error}");
}

#[test]
fn a_nonzero_exit_is_an_error_with_its_status() {
    let harness = Harness::default();
    let report = harness.run(harness.spec(&wat("hostile/nonzero_exit.wat"), LIMITS));
    assert_eq!(failed(&report.outcome), &RunError::Exit(3));
    assert_eq!(report.exit_status, Some(3));
}

#[test]
fn a_module_without_start_is_not_a_command() {
    let harness = Harness::default();
    let report = harness.run(harness.spec(&wat("hostile/not_a_command.wat"), LIMITS));
    assert!(matches!(failed(&report.outcome), RunError::InvalidModule(reason) if reason.contains("_start")));
}

#[test]
fn a_truncated_module_is_invalid() {
    let harness = Harness::default();
    let wasm = wat("probes/determinism.wat");
    let report = harness.run(harness.spec(&wasm[..wasm.len() / 2], LIMITS));
    assert!(matches!(failed(&report.outcome), RunError::InvalidModule(_)), "{:?}", report.outcome);
}

#[test]
fn bytes_that_are_not_wasm_are_invalid() {
    let harness = Harness::default();
    let report = harness.run(harness.spec(b"#!/bin/sh\nrm -rf /\n", LIMITS));
    assert!(matches!(failed(&report.outcome), RunError::InvalidModule(_)));
}

#[test]
fn the_sandbox_runs_the_next_module_after_a_hostile_one() {
    let harness = Harness::default();
    let hostile =
        harness.run(harness.spec(&wat("hostile/memory_bomb.wat"), RunLimits { memory_bytes: 16 << 20, ..LIMITS }));
    assert!(matches!(hostile.outcome, RunOutcome::Failed(_)));
    let probe = harness.run(harness.spec(&wat("probes/determinism.wat"), LIMITS));
    assert_eq!(probe.outcome, RunOutcome::Success);
}
