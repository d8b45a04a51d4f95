//! A running module's progress is visible from outside while it runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmgrid_protocol::api::RunLimits;
use wasmgrid_sandbox::{RunControl, RunOutcome, StopReason};

use crate::{Harness, wat};

#[test]
fn fuel_and_the_reported_fraction_grow_while_a_module_runs() {
    let (samples, report, control) =
        watch_until_stopped("probes/progress.wat", |progress| progress.fraction_done == Some(0.5));
    assert_eq!(control.progress().fraction_done, Some(0.5), "the module wrote 0.5 to its progress file");
    assert_fuel_grew_then_stopped(&samples, &report);
}

#[test]
fn fuel_grows_in_a_loop_that_never_calls_or_returns() {
    // The count is only written at calls and returns, and at the end of each fuel chunk: this
    // loop is seen through the chunks alone, and stopped at one.
    let (samples, report, _) = watch_until_stopped("hostile/infinite_loop.wat", |_| true);
    assert_fuel_grew_then_stopped(&samples, &report);
}

/// Runs `module` with ample limits, sampling its progress until its fuel has grown and
/// `enough` holds (or 20 seconds have passed), then stops it.
fn watch_until_stopped(
    module: &str,
    enough: impl Fn(&wasmgrid_sandbox::Progress) -> bool,
) -> (Vec<u64>, wasmgrid_sandbox::RunReport, Arc<RunControl>) {
    let harness = Harness::default();
    let limits = RunLimits { fuel: u64::MAX / 2, wall_time_seconds: 60, ..crate::LIMITS };
    let spec = harness.spec(&wat(module), limits);
    let control = Arc::new(RunControl::default());
    let mut finished = harness.sandbox.spawn(spec, control.clone()).unwrap();

    let mut samples = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(20);
    while Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(200));
        let progress = control.progress();
        samples.push(progress.fuel_used);
        if grew(&samples) && enough(&progress) {
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
    (samples, report, control)
}

fn grew(samples: &[u64]) -> bool {
    samples.windows(2).any(|pair| pair[1] > pair[0] && pair[0] > 0)
}

fn assert_fuel_grew_then_stopped(samples: &[u64], report: &wasmgrid_sandbox::RunReport) {
    assert!(grew(samples), "fuel so far must grow while the module runs: {samples:?}");
    assert_eq!(report.outcome, RunOutcome::Stopped(StopReason::Shutdown));
    assert!(report.fuel_used >= *samples.last().unwrap(), "the final count is at least the last sample");
}
