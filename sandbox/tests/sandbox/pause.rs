//! Pausing a run where it is: the module stops burning fuel and CPU within a moment,
//! resumes where it was, and ends with the output and fuel of a run never paused. Paused
//! time does not count against the wall-clock limit, and a paused run still stops on demand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmgrid_protocol::api::RunLimits;
use wasmgrid_sandbox::engine::{Backend, EngineSettings};
use wasmgrid_sandbox::pause::PAUSES_ANYWHERE;
use wasmgrid_sandbox::{RunControl, RunOutcome, RunReport, StopReason};

use crate::{Harness, wat};

const LIMITS: RunLimits = RunLimits { fuel: u64::MAX / 2, wall_time_seconds: 120, ..crate::LIMITS };
/// The bound on how soon a pause or a stop takes effect. Natively it is milliseconds
/// (`bench-client` measures it); the bound leaves room for this suite's run on an emulated
/// CPU, where one host call of a debug build takes a hundred times longer.
const PROMPTLY: Duration = Duration::from_secs(10);

fn wait_for(what: &str, within: Duration, condition: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    started.elapsed()
}

/// Pauses a run of `wasm` once it has burnt some fuel, checks that it burns none while
/// paused, resumes it, and returns its report.
fn pause_and_resume(harness: &Harness, wasm: &[u8], pause_for: Duration) -> RunReport {
    let control = Arc::new(RunControl::default());
    let finished = harness.sandbox.spawn(harness.spec(wasm, LIMITS), control.clone()).unwrap();
    wait_for("the run starts", Duration::from_secs(60), || control.progress().fuel_used > 0);
    assert!(control.pauses_anywhere());

    control.pause();
    wait_for("the pause takes effect", PROMPTLY, || control.is_paused());
    // The watch reads the meter every 50 ms: give it two readings, then compare.
    std::thread::sleep(Duration::from_millis(120));
    let fuel_at_pause = control.progress().fuel_used;
    std::thread::sleep(pause_for);
    assert_eq!(control.progress().fuel_used, fuel_at_pause, "a paused run burns no fuel");
    assert!(control.is_paused());

    control.resume();
    wait_for("the run resumes", PROMPTLY, || !control.is_paused());
    let report = finished.blocking_recv().unwrap();
    assert!(control.paused_for() >= pause_for);
    report
}

#[test]
fn a_compute_bound_run_pauses_in_place_and_ends_as_if_never_paused() {
    const { assert!(PAUSES_ANYWHERE, "Linux on x86_64 and aarch64 pauses runs in compiled code") };
    let harness = Harness::default();
    let wasm = wat("probes/spin.wat");
    let uninterrupted = harness.run(harness.spec(&wasm, LIMITS));
    assert_eq!(uninterrupted.outcome, RunOutcome::Success, "{}", uninterrupted.stderr);

    let paused = pause_and_resume(&harness, &wasm, Duration::from_millis(500));

    assert_eq!(paused.outcome, RunOutcome::Success, "{}", paused.stderr);
    assert_eq!((&paused.stdout, paused.fuel_used), (&uninterrupted.stdout, uninterrupted.fuel_used));
}

#[test]
fn a_run_busy_with_host_calls_pauses_at_one() {
    let harness = Harness::default();
    let control = Arc::new(RunControl::default());
    let limits = RunLimits { wall_time_seconds: 60, ..crate::LIMITS };
    let finished =
        harness.sandbox.spawn(harness.spec(&wat("hostile/host_call_spinner.wat"), limits), control.clone()).unwrap();
    wait_for("the run starts", Duration::from_secs(60), || control.progress().fuel_used > 0);

    control.pause();
    wait_for("the pause takes effect", PROMPTLY, || control.is_paused());
    std::thread::sleep(Duration::from_millis(120));
    let fuel_at_pause = control.progress().fuel_used;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(control.progress().fuel_used, fuel_at_pause);

    // A stop request ends a paused run, without resuming it first.
    let asked = Instant::now();
    control.stop(StopReason::Shutdown);
    let report = finished.blocking_recv().unwrap();
    assert_eq!(report.outcome, RunOutcome::Stopped(StopReason::Shutdown));
    assert!(asked.elapsed() < PROMPTLY, "stopped in {:?}", asked.elapsed());
}

#[test]
fn a_paused_compute_bound_run_stops_on_demand() {
    let harness = Harness::default();
    let control = Arc::new(RunControl::default());
    let finished =
        harness.sandbox.spawn(harness.spec(&wat("hostile/infinite_loop.wat"), LIMITS), control.clone()).unwrap();
    wait_for("the run starts", Duration::from_secs(60), || control.progress().fuel_used > 0);
    control.pause();
    wait_for("the pause takes effect", PROMPTLY, || control.is_paused());

    let asked = Instant::now();
    control.stop(StopReason::Aborted);
    assert_eq!(finished.blocking_recv().unwrap().outcome, RunOutcome::Stopped(StopReason::Aborted));
    assert!(asked.elapsed() < PROMPTLY, "stopped in {:?}", asked.elapsed());
}

/// Paused and resumed again and again, at whatever instruction each signal finds it, a run
/// still computes exactly what it computes alone.
#[test]
fn many_short_pauses_change_nothing() {
    let harness = Harness::default();
    let wasm = wat("probes/spin.wat");
    let uninterrupted = harness.run(harness.spec(&wasm, LIMITS));
    let control = Arc::new(RunControl::default());
    let mut finished = harness.sandbox.spawn(harness.spec(&wasm, LIMITS), control.clone()).unwrap();
    let mut pauses = 0;
    let report = loop {
        if let Ok(report) = finished.try_recv() {
            break report;
        }
        control.pause();
        std::thread::sleep(Duration::from_millis(3));
        pauses += u32::from(control.is_paused());
        control.resume();
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(pauses > 10, "only {pauses} pauses took effect");
    assert_eq!(report.outcome, RunOutcome::Success, "{}", report.stderr);
    assert_eq!((&report.stdout, report.fuel_used), (&uninterrupted.stdout, uninterrupted.fuel_used));
}

/// Paused for longer than its whole wall-clock limit, a run still ends well: the limit
/// counts the module's time, not the owner's.
#[test]
fn paused_time_does_not_count_against_the_wall_clock_limit() {
    let harness = Harness::default();
    let wasm = wat("probes/determinism.wat");
    let control = Arc::new(RunControl::default());
    let limits = RunLimits { wall_time_seconds: 5, ..LIMITS };
    // Paused before it starts: it holds as soon as it reaches Wasm.
    control.pause();
    let finished = harness.sandbox.spawn(harness.spec(&wasm, limits), control.clone()).unwrap();
    wait_for("the pause takes effect", Duration::from_secs(60), || control.is_paused());
    assert_eq!(control.progress().fuel_used, 0, "held before its first loop");
    std::thread::sleep(Duration::from_secs(6));
    control.resume();

    let report = finished.blocking_recv().unwrap();
    assert_eq!(report.outcome, RunOutcome::Success, "{}", report.stderr);
    assert!(report.run_time < Duration::from_secs(5), "{:?} of running", report.run_time);
}

/// Pulley interprets the module: the signal would land in the interpreter, so its runs
/// pause at host calls, and end with the same output as Cranelift's.
#[test]
fn a_pulley_run_pauses_at_a_host_call() {
    let pulley = Harness::with_settings(EngineSettings { backend: Backend::Pulley, ..EngineSettings::FULL });
    let wasm = wat("probes/determinism.wat");
    let uninterrupted = pulley.run(pulley.spec(&wasm, LIMITS));
    assert_eq!(uninterrupted.outcome, RunOutcome::Success, "{}", uninterrupted.stderr);

    let control = Arc::new(RunControl::default());
    control.pause();
    let finished = pulley.sandbox.spawn(pulley.spec(&wasm, LIMITS), control.clone()).unwrap();
    wait_for("the pause takes effect", Duration::from_secs(60), || control.is_paused());
    assert!(!control.pauses_anywhere(), "Pulley runs pause at host calls only");
    std::thread::sleep(Duration::from_millis(200));
    assert!(control.is_paused());
    control.resume();
    let report = finished.blocking_recv().unwrap();
    assert_eq!(
        (&report.outcome, &report.stdout, report.fuel_used),
        (&uninterrupted.outcome, &uninterrupted.stdout, uninterrupted.fuel_used)
    );
}

/// A CPU cap is a duty cycle: a run capped at 30% of a core is held about 70% of the time,
/// and computes the same.
#[test]
fn a_cpu_cap_holds_the_run_for_the_rest_of_each_second() {
    let harness = Harness::default();
    // A loop that runs until its fuel is gone: a few seconds of work, over several cycles.
    let wasm = wat("hostile/infinite_loop.wat");
    let limits = RunLimits { fuel: 3_000_000_000, ..LIMITS };
    let uninterrupted = harness.run(harness.spec(&wasm, limits));
    let control = Arc::new(RunControl::default());
    control.limit_cpu(30);
    let finished = harness.sandbox.spawn(harness.spec(&wasm, limits), control.clone()).unwrap();
    let report = finished.blocking_recv().unwrap();

    assert!(matches!(report.outcome, RunOutcome::Failed(_)), "{:?}", report.outcome);
    assert_eq!((&report.outcome, report.fuel_used), (&uninterrupted.outcome, uninterrupted.fuel_used));
    let held = control.paused_for().as_secs_f64();
    let share = report.run_time.as_secs_f64() / (report.run_time.as_secs_f64() + held);
    assert!((0.15..0.5).contains(&share), "ran {share:.2} of the time, held {held:.2} s");
}

/// A cap lifted while the run is in the off part of its cycle lets it go on at once, and for
/// good: no tick of the old cycle holds it again.
#[test]
fn lifting_a_cpu_cap_lets_a_throttled_run_go_on() {
    let harness = Harness::default();
    let wasm = wat("hostile/infinite_loop.wat");
    let limits = RunLimits { fuel: 3_000_000_000, ..LIMITS };
    let control = Arc::new(RunControl::default());
    control.limit_cpu(5);
    let finished = harness.sandbox.spawn(harness.spec(&wasm, limits), control.clone()).unwrap();
    wait_for("the cap holds the run", PROMPTLY, || control.is_paused());

    control.limit_cpu(100);
    wait_for("the run goes on", PROMPTLY, || !control.is_paused());
    let paused = control.paused_for();
    let report = finished.blocking_recv().unwrap();
    assert!(matches!(report.outcome, RunOutcome::Failed(_)), "ran to its fuel limit: {:?}", report.outcome);
    assert!(control.paused_for() - paused < Duration::from_millis(100), "held again after the cap was lifted");
}
