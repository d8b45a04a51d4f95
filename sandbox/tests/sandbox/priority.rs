//! A volunteer's work runs at the lowest priority the system offers: on Linux, the run's
//! thread is `SCHED_IDLE`, at nice 19, in the idle I/O class, as `/proc` shows it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmgrid_protocol::api::RunLimits;
use wasmgrid_sandbox::{RunControl, RunOutcome, StopReason};

use crate::{Harness, wat};

/// `SCHED_IDLE`, as `/proc/<pid>/task/<tid>/stat` writes the policy.
const SCHED_IDLE: &str = "5";
const IOPRIO_WHO_PROCESS: libc::c_int = 1;
const IOPRIO_CLASS_IDLE: libc::c_long = 3;

/// The scheduling policy and nice value of every thread of this process named `name`.
fn threads_named(name: &str) -> Vec<(i32, String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The fields after the command name, which is in parentheses and may hold spaces:
        // field 3 (state) is the first, nice is field 19 and the policy field 41.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let tid: i32 = entry.file_name().to_str().unwrap().parse().unwrap();
        found.push((tid, fields[19 - 3].to_owned(), fields[41 - 3].to_owned()));
    }
    found
}

#[test]
fn a_background_run_is_idle_for_the_cpu_and_for_io() {
    let harness = Harness::default();
    let limits = RunLimits { fuel: u64::MAX / 2, wall_time_seconds: 60, ..crate::LIMITS };
    let control = Arc::new(RunControl::default());
    let spec = harness.spec(&wat("hostile/infinite_loop.wat"), limits);
    let finished = harness.sandbox.spawn_in_background(spec, control.clone()).unwrap();
    let give_up = Instant::now() + Duration::from_secs(30);
    while control.progress().fuel_used == 0 && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(5));
    }

    // Other tests run modules on threads of the same name, at normal priority; this one is
    // the only background run. Threads the run starts (its event loop's helper, wasmtime's
    // compiler threads) carry its name and its priority.
    let idle: Vec<_> = threads_named("wasm-run").into_iter().filter(|(_, _, policy)| policy == SCHED_IDLE).collect();
    let io_priorities: Vec<libc::c_long> = idle
        .iter()
        // SAFETY: a plain query of a thread's I/O priority.
        .map(|(tid, _, _)| unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, *tid) })
        .collect();
    let background = control.background().cloned();
    control.stop(StopReason::Shutdown);
    assert_eq!(finished.blocking_recv().unwrap().outcome, RunOutcome::Stopped(StopReason::Shutdown));

    assert!(!idle.is_empty(), "the run's thread is at SCHED_IDLE: {:?}", threads_named("wasm-run"));
    for ((tid, nice, _), io_priority) in idle.iter().zip(&io_priorities) {
        assert_eq!(nice, "19", "nice of thread {tid}");
        assert_eq!(io_priority >> 13, IOPRIO_CLASS_IDLE, "I/O priority {io_priority:#x} of thread {tid}");
    }
    let background = background.expect("the run says what priority it got");
    assert_eq!(background.cpu, "SCHED_IDLE");
    assert_eq!(background.io, "idle class");
}
