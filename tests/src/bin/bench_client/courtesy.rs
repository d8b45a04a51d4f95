//! Whether the owner notices the client: the owner's own CPU-bound program, one copy per
//! core, alone and then beside a work unit on every core, run as the daemon runs them (at
//! idle priority) and, for comparison, at normal priority; and how quickly running work
//! units pause and resume when asked.
//!
//! The work units are the daemon's own runs (`Sandbox::spawn_in_background`, as the daemon
//! starts every task) in this process; the owner's program is the native `primes` example,
//! a separate process per core. Then the real daemon, with work units from the real server
//! on every core, is suspended and resumed by `wasmgrid suspend` and `resume` and by a CPU
//! hog beside `--suspend-when-cpu-above`, and the time until `status` shows every task
//! paused (or running again) is measured.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use wasmgrid_e2e::bench::{BenchServer, sibling_binary};
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::RunLimits;
use wasmgrid_sandbox::{RunControl, RunOutcome, RunSpec, Sandbox, StopReason};

/// The owner's program: about two seconds of sieving on one core.
const OWNER_ARGS: [&str; 3] = ["--count-only", "0", "1000000000"];
/// A work unit that runs far longer than any measurement here.
const ENDLESS_NBODY: [&str; 3] = ["64", "100000000", "1"];
/// Pause and resume trials.
const TRIALS: usize = 20;

/// Work units running on a thread each until dropped.
struct RunningTasks {
    controls: Vec<Arc<RunControl>>,
    finished: Vec<tokio::sync::oneshot::Receiver<wasmgrid_sandbox::RunReport>>,
}

impl RunningTasks {
    fn start(sandbox: &Arc<Sandbox>, spec: &RunSpec, count: usize, background: bool) -> anyhow::Result<Self> {
        let mut tasks = Self { controls: Vec::new(), finished: Vec::new() };
        for _ in 0..count {
            // A scratch directory each, fresh: nbody keeps its checkpoint there.
            let scratch_dir = tempfile::tempdir_in(spec.scratch_dir.parent().unwrap_or(Path::new(".")))?.keep();
            let spec = RunSpec { scratch_dir, ..spec.clone() };
            let control = Arc::new(RunControl::default());
            let finished = if background {
                sandbox.spawn_in_background(spec, control.clone())?
            } else {
                sandbox.spawn(spec, control.clone())?
            };
            tasks.controls.push(control);
            tasks.finished.push(finished);
        }
        // Running, not compiling: every task has burnt fuel.
        let give_up = Instant::now() + Duration::from_secs(120);
        while tasks.controls.iter().any(|control| control.progress().fuel_used == 0) {
            if Instant::now() > give_up {
                bail!("the work units did not start");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(tasks)
    }

    fn stop(self) -> anyhow::Result<()> {
        for control in &self.controls {
            control.stop(StopReason::Shutdown);
        }
        for finished in self.finished {
            let report = finished.blocking_recv()?;
            if report.outcome != RunOutcome::Stopped(StopReason::Shutdown) {
                bail!("a work unit ended on its own: {:?} ({})", report.outcome, report.stderr);
            }
        }
        Ok(())
    }
}

/// The owner's program on every core at once: the time until the last copy ends.
fn owner_program(primes: &Path, cores: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let children: Vec<_> = (0..cores)
        .map(|_| std::process::Command::new(primes).args(OWNER_ARGS).stdout(std::process::Stdio::null()).spawn())
        .collect::<Result<_, _>>()?;
    for mut child in children {
        if !child.wait()?.success() {
            bail!("the owner's program failed");
        }
    }
    Ok(started.elapsed())
}

pub fn measure(native_dir: &Path, wasm_dir: &Path, scratch: &Path, repeat: usize) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let primes = native_dir.join("primes");
    let module_path = wasm_dir.join("nbody.wasm");
    let wasm = std::fs::read(&module_path)?;
    let sandbox = Sandbox::new(&scratch.join("courtesy-cache"))?;
    let spec = RunSpec {
        module_hash: Sha256Hash::of(&wasm),
        module_path,
        args: ENDLESS_NBODY.iter().map(|arg| arg.to_string()).collect(),
        stdin: Vec::new(),
        input_dir: make_dir(&scratch.join("courtesy-input"))?,
        scratch_dir: make_dir(&scratch.join("courtesy-scratch"))?,
        limits: RunLimits { fuel: 1 << 60, wall_time_seconds: 3600, ..RunLimits::DEFAULT },
        scratch_limit_bytes: 1 << 30,
        seed: 1,
    };
    sandbox.prepare(&spec.module_hash, &spec.module_path).map_err(|error| anyhow::anyhow!("{error}"))?;

    // Round after round, so that the machine's drift falls on every configuration alike;
    // the best of each counts.
    let (mut alone, mut beside_idle, mut beside_normal) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..repeat.max(1) {
        alone = alone.min(owner_program(&primes, cores)?);
        let tasks = RunningTasks::start(&sandbox, &spec, cores, true)?;
        beside_idle = beside_idle.min(owner_program(&primes, cores)?);
        tasks.stop()?;
        let tasks = RunningTasks::start(&sandbox, &spec, cores, false)?;
        beside_normal = beside_normal.min(owner_program(&primes, cores)?);
        tasks.stop()?;
    }
    let slower = |beside: Duration| (beside.as_secs_f64() / alone.as_secs_f64() - 1.0) * 100.0;
    println!("  the owner's program on each of {cores} cores, alone          {:>9.3} s", alone.as_secs_f64());
    println!(
        "  beside a work unit per core, as the daemon runs them     {:>9.3} s ({:+.1}%)",
        beside_idle.as_secs_f64(),
        slower(beside_idle)
    );
    println!(
        "  beside a work unit per core at normal priority           {:>9.3} s ({:+.1}%)",
        beside_normal.as_secs_f64(),
        slower(beside_normal)
    );

    let tasks = RunningTasks::start(&sandbox, &spec, cores, true)?;
    let (mut pauses, mut resumes) = (Vec::new(), Vec::new());
    for _ in 0..TRIALS {
        let asked = Instant::now();
        tasks.controls.iter().for_each(|control| control.pause());
        wait_until(|| tasks.controls.iter().all(|control| control.is_paused()))?;
        pauses.push(asked.elapsed());
        std::thread::sleep(Duration::from_millis(100));
        let fuel: Vec<u64> = tasks.controls.iter().map(|control| control.progress().fuel_used).collect();
        let asked = Instant::now();
        tasks.controls.iter().for_each(|control| control.resume());
        wait_until(|| tasks.controls.iter().all(|control| !control.is_paused()))?;
        resumes.push(asked.elapsed());
        // Going again: each task burns fuel before the next trial.
        wait_until(|| {
            tasks.controls.iter().zip(&fuel).all(|(control, before)| control.progress().fuel_used > *before)
        })?;
    }
    tasks.stop()?;
    for (what, mut times) in [("pause", pauses), ("resume", resumes)] {
        times.sort();
        println!(
            "  {what} of {cores} running work units, until all took effect  median {:>6.2} ms, worst {:>6.2} ms",
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times[times.len() - 1].as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

fn wait_until(condition: impl Fn() -> bool) -> anyhow::Result<()> {
    let give_up = Instant::now() + Duration::from_secs(10);
    while !condition() {
        if Instant::now() > give_up {
            bail!("waited ten seconds in vain");
        }
        // Sleeping, not spinning: a spinning waiter would take the core an idle task needs.
        std::thread::sleep(Duration::from_micros(50));
    }
    Ok(())
}

fn make_dir(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(path)?;
    Ok(path.to_owned())
}

/// Trials of `wasmgrid suspend` and `resume` on the real daemon.
const DAEMON_TRIALS: usize = 5;

/// The real daemon: how long from a suspend (by the volunteer, or by the owner's program
/// taking the CPU) until every task is paused, and from the end of it until every task runs.
pub async fn measure_daemon(nbody: &[u8]) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server = BenchServer::start(&["--idle-retry-after", "1"]).await?;
    super::publish_with_args(&server, nbody, "courtesy", cores, &ENDLESS_NBODY).await?;
    let data_dir = tempfile::tempdir()?;
    let wasmgrid = sibling_binary("wasmgrid")?;
    let command = |args: &[&str]| {
        let mut command = std::process::Command::new(&wasmgrid);
        command.arg("--data-dir").arg(data_dir.path()).args(args).env("RUST_LOG", "warn");
        command
    };
    let attached = command(&["attach", &server.url, "--name", "courtesy"]).output()?;
    if !attached.status.success() {
        bail!("attach failed: {}", String::from_utf8_lossy(&attached.stderr));
    }
    let cores_flag = cores.to_string();
    let mut daemon =
        command(&["run", "--cores", &cores_flag, "--suspend-when-cpu-above", "50"]).spawn().context("the daemon")?;
    // Tasks in one of `states`, as `status` shows them.
    let count = |states: &[&str]| -> anyhow::Result<usize> {
        let output = command(&["status", "--json"]).output()?;
        let status: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let tasks = status["tasks"].as_array().cloned().unwrap_or_default();
        let counted = |task: &&serde_json::Value| {
            states.iter().any(|state| task["state"] == *state) && task["fuel_used"].as_u64() > Some(0)
        };
        Ok(tasks.iter().filter(counted).count())
    };
    let wait_for_any = |states: &[&str]| -> anyhow::Result<Duration> {
        let started = Instant::now();
        while count(states)? < cores {
            if started.elapsed() > Duration::from_secs(120) {
                bail!("the tasks never became {states:?}");
            }
            // Each look is a `wasmgrid status` process: other programs' CPU, to the daemon.
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(started.elapsed())
    };
    let wait_for = |state: &str| wait_for_any(&[state]);
    wait_for("running")?;

    let (mut suspends, mut resumes) = (Vec::new(), Vec::new());
    for _ in 0..DAEMON_TRIALS {
        let asked = Instant::now();
        if !command(&["suspend"]).output()?.status.success() {
            bail!("wasmgrid suspend failed");
        }
        wait_for("paused")?;
        suspends.push(asked.elapsed());
        let asked = Instant::now();
        if !command(&["resume"]).output()?.status.success() {
            bail!("wasmgrid resume failed");
        }
        wait_for("running")?;
        resumes.push(asked.elapsed());
    }
    let hog_started = Instant::now();
    let mut hog: Vec<_> = (0..cores)
        .map(|_| std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn())
        .collect::<Result<_, _>>()?;
    // Suspended as soon as the daemon asks every task to pause ("pausing"); held once each
    // task's thread next runs, which a hog at normal priority lets an idle thread do only
    // now and then (the task computes nothing meanwhile either).
    wait_for_any(&["pausing", "paused"])?;
    let hog_suspended = hog_started.elapsed();
    wait_for("paused")?;
    let hog_paused = hog_started.elapsed();
    let hog_ended = Instant::now();
    for child in &mut hog {
        child.kill()?;
        child.wait()?;
    }
    wait_for("running")?;
    let hog_resumed = hog_ended.elapsed();

    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    daemon.wait()?;
    server.stop().await?;
    let worst = |times: &[Duration]| times.iter().max().copied().unwrap_or_default().as_secs_f64() * 1000.0;
    println!("  the real daemon, {cores} tasks, time until status shows them all paused or running:");
    println!(
        "    wasmgrid suspend -> all paused                        worst of {DAEMON_TRIALS} {:>7.1} ms",
        worst(&suspends)
    );
    println!(
        "    wasmgrid resume -> all running                        worst of {DAEMON_TRIALS} {:>7.1} ms",
        worst(&resumes)
    );
    println!(
        "    a CPU hog on every core starts -> all asked to pause           {:>7.1} ms",
        hog_suspended.as_secs_f64() * 1000.0
    );
    println!(
        "    ... -> all held (an idle thread under the hog runs rarely)     {:>7.1} ms",
        hog_paused.as_secs_f64() * 1000.0
    );
    println!(
        "    the hog ends -> all running (3 s calm required)                {:>7.1} ms",
        hog_resumed.as_secs_f64() * 1000.0
    );
    Ok(())
}
