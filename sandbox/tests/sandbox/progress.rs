//! A running module's progress is visible from outside while it runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmgrid_protocol::api::RunLimits;
use wasmgrid_sandbox::{RunControl, RunOutcome, StopReason};

use crate::{Harness, wat};

#[test]
fn fuel_and_the_reported_fraction_grow_while_a_module_runs() {
    let harness = Harness::default();
    let limits = RunLimits { fuel: u64::MAX / 2, wall_time_seconds: 60, ..crate::LIMITS };
    let spec = harness.spec(&wat("probes/progress.wat"), limits);
    let control = Arc::new(RunControl::default());
    let mut finished = harness.sandbox.spawn(spec, control.clone()).unwrap();

    let mut samples = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(20);
    while Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(200));
        let progress = control.progress();
        samples.push(progress.fuel_used);
        let grew = samples.windows(2).any(|pair| pair[1] > pair[0] && pair[0] > 0);
        if grew && progress.fraction_done == Some(0.5) {
            break;
        }
    }
    control.stop(StopReason::Shutdown);
    let report = loop {
        match finished.try_recv() {
            Ok(report) => break report,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };

    assert_eq!(control.progress().fraction_done, Some(0.5), "the module wrote 0.5 to its progress file");
    assert!(
        samples.windows(2).any(|pair| pair[1] > pair[0] && pair[0] > 0),
        "fuel so far must grow while the module runs: {samples:?}"
    );
    assert_eq!(report.outcome, RunOutcome::Stopped(StopReason::Shutdown));
    assert!(report.fuel_used >= *samples.last().unwrap(), "the final count is at least the last sample");
}

/// The sandbox reads `progress` and measures the scratch directory while the module renames
/// a new `progress` into place thousands of times: none of its calls may fail for that (on
/// Windows a rename over a file another handle holds open does).
#[test]
fn a_module_renaming_its_progress_file_into_place_is_never_disturbed() {
    let harness = Harness::default();
    let limits = RunLimits { wall_time_seconds: 120, ..crate::LIMITS };
    let spec = harness.spec(&wat("probes/renames.wat"), limits);
    let control = Arc::new(RunControl::default());
    let report = harness.sandbox.run(&spec, &control);
    // A failed rename exits with its WASI errno.
    assert_eq!(report.outcome, RunOutcome::Success, "exit status {:?}", report.exit_status);
    assert_eq!(report.stdout, b"renamed\n");
}
