//! The same module and inputs give the same bytes and the same fuel: twice, and with
//! another engine configuration.

use wasmgrid_protocol::api::RunLimits;
use wasmgrid_sandbox::engine::EngineSettings;
use wasmgrid_sandbox::{Backend, Limit, RunError, RunOutcome};

use crate::{Harness, LIMITS, wat};

#[test]
fn the_probe_gives_the_same_bytes_and_fuel_every_time() {
    let wasm = wat("probes/determinism.wat");
    let harness = Harness::default();
    let first = harness.run(harness.spec(&wasm, LIMITS));
    let second = harness.run(harness.spec(&wasm, LIMITS));
    let unoptimized = Harness::with_settings(EngineSettings { optimize: false, ..EngineSettings::FULL });
    let third = unoptimized.run(unoptimized.spec(&wasm, LIMITS));

    for report in [&first, &second, &third] {
        assert_eq!(report.outcome, RunOutcome::Success, "{}", report.stderr);
        assert_eq!(report.stdout, first.stdout);
        assert_eq!(report.fuel_used, first.fuel_used);
    }
    assert_eq!(first.stdout.len(), 128);
    assert!(first.fuel_used > 100_000, "the accumulation loop costs fuel");
}

#[test]
fn nans_are_canonical() {
    let harness = Harness::default();
    let report = harness.run(harness.spec(&wat("probes/determinism.wat"), LIMITS));
    let f64_bits = |offset: usize| u64::from_le_bytes(report.stdout[offset..offset + 8].try_into().unwrap());
    for offset in [0, 8, 16] {
        assert_eq!(f64_bits(offset), 0x7FF8_0000_0000_0000, "f64 NaN at {offset}");
    }
    let f32_bits = u32::from_le_bytes(report.stdout[24..28].try_into().unwrap());
    assert_eq!(f32_bits, 0x7FC0_0000);
}

#[test]
fn random_bytes_follow_the_seed_and_the_clock_is_frozen() {
    let wasm = wat("probes/determinism.wat");
    let harness = Harness::default();
    let seeded_42 = harness.run(harness.spec(&wasm, LIMITS));
    let mut other_seed = harness.spec(&wasm, LIMITS);
    other_seed.seed = 7;
    let seeded_7 = harness.run(other_seed);

    assert_ne!(seeded_42.stdout[56..88], seeded_7.stdout[56..88], "random bytes depend on the seed");
    assert_eq!(seeded_42.stdout[..56], seeded_7.stdout[..56], "nothing else does");
    assert_eq!(seeded_42.stdout[88..96], [0u8; 8], "the wall clock reads the Unix epoch");
}

#[test]
fn the_second_run_loads_the_compiled_module_from_the_cache() {
    let wasm = wat("probes/determinism.wat");
    let harness = Harness::default();
    harness.run(harness.spec(&wasm, LIMITS));
    let cached: Vec<_> = std::fs::read_dir(harness.dir.path().join("cache")).unwrap().flatten().collect();
    assert_eq!(cached.len(), 1, "one compiled module on disk");
    let report = harness.run(harness.spec(&wasm, LIMITS));
    assert_eq!(report.outcome, RunOutcome::Success);
}

#[test]
fn code_compiled_for_other_engine_settings_is_cleared_out() {
    let unoptimized = Harness::with_settings(EngineSettings { optimize: false, ..EngineSettings::FULL });
    unoptimized.run(unoptimized.spec(&wat("probes/determinism.wat"), LIMITS));
    let cache = unoptimized.dir.path().join("cache");
    let compiled = || std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(compiled(), 1);

    // As after an upgrade to a client whose engine differs: the old code is unusable.
    wasmgrid_sandbox::Sandbox::with_settings(&cache, EngineSettings::FULL).unwrap();
    assert_eq!(compiled(), 0);
}

/// Pulley, the fallback where Cranelift cannot compile a module, computes exactly what
/// Cranelift computes: the probes' bytes, and the fuel and the limit where runs break one.
#[test]
fn pulley_computes_the_same_bytes_and_fuel_as_cranelift() {
    let cranelift = Harness::default();
    let pulley = Harness::with_settings(EngineSettings { backend: Backend::Pulley, ..EngineSettings::FULL });
    let limits = RunLimits { fuel: 20_000_000, ..LIMITS };
    let cases = [
        ("probes/determinism.wat", RunOutcome::Success),
        ("probes/nan_simd.wat", RunOutcome::Success),
        ("hostile/infinite_loop.wat", RunOutcome::Failed(RunError::Limit(Limit::Fuel))),
        ("hostile/recursion.wat", RunOutcome::Failed(RunError::Limit(Limit::Stack))),
    ];
    for (module, outcome) in cases {
        let wasm = wat(module);
        let native = cranelift.run(cranelift.spec(&wasm, limits));
        let interpreted = pulley.run(pulley.spec(&wasm, limits));
        assert_eq!(native.backend, Some(Backend::Cranelift), "{module}");
        assert_eq!(interpreted.backend, Some(Backend::Pulley), "{module}");
        assert_eq!(native.outcome, outcome, "{module}: {}", native.stderr);
        assert_eq!(interpreted.outcome, outcome, "{module} on Pulley: {}", interpreted.stderr);
        assert_eq!(interpreted.stdout, native.stdout, "{module}");
        assert_eq!(interpreted.fuel_used, native.fuel_used, "{module}");
        assert!(native.fuel_used > 0, "{module}");
    }
}
