//! Watching a run from outside the module: the wall-clock limit, stop requests, the
//! scratch-disk quota and the module's progress.
//!
//! The checks are made in three places:
//! - on a watch thread of the run's own, every [`HOST_WAIT_CHECK`]: compute-bound code never
//!   comes back to the sandbox, so the watch thread stops it through its meter (the module's
//!   next fuel check, at a function entry or loop header, then traps; a bounded loop is
//!   checked on entry, and ends within 2^20 units of fuel);
//! - on every return from a host call, through the call hook (a module busy with WASI calls
//!   fills the scratch directory there, and is stopped before it goes on);
//! - while it waits inside a host call (a sleep in `poll_oneoff`), a timer wakes the run
//!   every [`HOST_WAIT_CHECK`], so even a module that sleeps for a year is stopped in time.
//!
//! The progress file is never read while the module is inside a host call, and a host call
//! waits for a read in progress to end: only host calls change the file, and on Windows a
//! rename over `progress` fails while another handle holds it open. The scratch directory is
//! measured at any time (a module that fills it and then sleeps in a host call is stopped
//! all the same); the walk opens no file, and counts a file renamed or deleted under it as
//! holding nothing.

use std::fmt;
use std::future::{Future, poll_fn};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use wasmtime::{CallHook, StoreContextMut};

use super::limits::Limit;
use super::meter::MeterHandle;
use super::{RunControl, RunSpec, StopReason};

/// How often the scratch directory's size is measured (it walks the directory).
const SCRATCH_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How often the module's progress file is read.
const PROGRESS_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How often a run waiting inside a host call is woken to check its limits.
pub const HOST_WAIT_CHECK: Duration = Duration::from_millis(50);
/// A module may report how far it has got by writing its fraction done, a decimal number
/// from 0 to 1 (such as `0.25`), to this file in its scratch directory. It is not output.
pub const PROGRESS_FILE: &str = "progress";

/// Stands for "never": about thirty years on.
const FAR_FUTURE_SECONDS: u64 = 1 << 30;

/// Why a run was cut short from outside the module; recognised when the run ends.
#[derive(Debug, Clone, Copy)]
pub enum Interruption {
    Broke(Limit),
    Stopped(StopReason),
}

impl fmt::Display for Interruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Broke(limit) => write!(f, "{limit}"),
            Self::Stopped(reason) => write!(f, "stopped: {reason:?}"),
        }
    }
}

impl std::error::Error for Interruption {}

/// The watch over one run.
pub struct Watch {
    control: Arc<RunControl>,
    checks: Arc<Mutex<Checks>>,
}

/// The checks made whenever the module gets back to the sandbox, the costlier ones at most
/// once per interval.
struct Checks {
    control: Arc<RunControl>,
    deadline: Instant,
    /// Time the run had been paused when it started: pauses from then on extend the deadline.
    paused_before: Duration,
    scratch_dir: PathBuf,
    scratch_limit: u64,
    next_scratch_check: Instant,
    next_progress_check: Instant,
    /// Whether the module is inside a host call, which may be replacing the progress file.
    in_host_call: bool,
}

impl Watch {
    /// The watch over the run of `spec`, which started at `started`, when `control` had been
    /// paused for `paused_before`.
    pub fn new(spec: &RunSpec, control: Arc<RunControl>, started: Instant, paused_before: Duration) -> Self {
        let checks = Checks {
            control: control.clone(),
            // A limit too large to add is no limit.
            paused_before,
            deadline: started
                .checked_add(Duration::from_secs(spec.limits.wall_time_seconds))
                .unwrap_or_else(|| started + Duration::from_secs(FAR_FUTURE_SECONDS)),
            scratch_dir: spec.scratch_dir.clone(),
            scratch_limit: spec.scratch_limit_bytes,
            next_scratch_check: started,
            next_progress_check: started,
            in_host_call: false,
        };
        Self { control, checks: Arc::new(Mutex::new(checks)) }
    }

    /// The store's call hook: on every host call it records the fuel used so far (exact
    /// there: instrumented code writes its fuel count to the meter before every call), and
    /// on the way back into Wasm it makes the checks, since only host calls fill the scratch
    /// directory and a module busy with them burns little fuel. It marks the time between as
    /// inside a host call, for the checks made elsewhere meanwhile. Every crossing is also
    /// where a paused run is held (see [`crate::pause`]).
    pub fn call_hook<T>(
        &self,
        meter: MeterHandle,
    ) -> impl FnMut(StoreContextMut<'_, T>, CallHook) -> wasmtime::Result<()> + Send + Sync + 'static {
        let (control, checks) = (self.control.clone(), self.checks.clone());
        move |_context, hook| {
            match hook {
                CallHook::CallingHost => {
                    control.record_fuel_used(meter.fuel_used().max(0) as u64);
                    entering_host_call(&checks);
                    control.pause.hold_at_host_call(|| control.must_hold());
                }
                CallHook::ReturningFromHost => {
                    control.pause.hold_at_host_call(|| control.must_hold());
                    returning_from_host_call(&checks).map_err(wasmtime::Error::new)?;
                }
                // A run paused before it starts is held before its first instruction.
                CallHook::CallingWasm => control.pause.hold_at_host_call(|| control.must_hold()),
                CallHook::ReturningFromWasm => {}
            }
            Ok(())
        }
    }

    /// Drives `run` (instantiation and `_start`) to its end, checking the limits at every
    /// pause; a broken limit or a stop request drops the run, which unwinds the module.
    pub async fn run<F: Future<Output = wasmtime::Result<()>>>(&mut self, run: F) -> wasmtime::Result<()> {
        let mut run = pin!(run);
        let mut wake_up = tokio::time::interval(HOST_WAIT_CHECK);
        wake_up.set_missed_tick_behavior(MissedTickBehavior::Delay);
        poll_fn(|context| {
            if let Poll::Ready(result) = run.as_mut().poll(context) {
                return Poll::Ready(result);
            }
            if let Err(interruption) = lock(&self.checks).run() {
                return Poll::Ready(Err(wasmtime::Error::new(interruption)));
            }
            // Registers the next timer wake-up, for a run waiting inside a host call.
            while wake_up.poll_tick(context).is_ready() {}
            Poll::Pending
        })
        .await
    }
}

/// The watch thread of one run: see [`Watch::watch_from_outside`].
pub struct WatchThread<'scope> {
    finished: std::sync::mpsc::Sender<()>,
    thread: std::thread::ScopedJoinHandle<'scope, Option<Interruption>>,
}

impl WatchThread<'_> {
    /// Ends the watch, once the run has ended; says whether the watch stopped the run.
    pub fn finish(self) -> Option<Interruption> {
        drop(self.finished);
        self.thread.join().unwrap_or(None)
    }
}

impl Watch {
    /// Starts the watch thread: every [`HOST_WAIT_CHECK`] it records the fuel used and makes
    /// the checks; when one fails it stops the module through its meter, and remembers why.
    pub fn watch_from_outside<'scope>(
        &self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        meter: MeterHandle,
    ) -> std::io::Result<WatchThread<'scope>> {
        let (finished, until_finished) = std::sync::mpsc::channel::<()>();
        let (control, checks) = (self.control.clone(), self.checks.clone());
        let thread = std::thread::Builder::new().name("wasm-watch".into()).spawn_scoped(scope, move || {
            let mut interruption = None;
            let started = Instant::now();
            let mut sleep = HOST_WAIT_CHECK;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = until_finished.recv_timeout(sleep) {
                sleep = control.pause.tick(started.elapsed(), HOST_WAIT_CHECK);
                control.record_fuel_used(meter.fuel_used().max(0) as u64);
                if interruption.is_none() {
                    interruption = lock(&checks).run().err();
                    if interruption.is_some() {
                        meter.stop();
                    }
                }
            }
            interruption
        })?;
        Ok(WatchThread { finished, thread })
    }
}

/// The module calls the host. Taking the lock waits for a read of the progress file in
/// progress on another thread.
fn entering_host_call(checks: &Mutex<Checks>) {
    lock(checks).in_host_call = true;
}

/// The module is back from the host: the checks, whose time has come, are made here.
fn returning_from_host_call(checks: &Mutex<Checks>) -> Result<(), Interruption> {
    let mut checks = lock(checks);
    checks.in_host_call = false;
    checks.run()
}

impl Checks {
    /// Checks for a stop request and the deadline, and, when their time has come, the
    /// scratch directory's size and (when the module is not inside a host call) the
    /// progress file.
    fn run(&mut self) -> Result<(), Interruption> {
        stop_or_deadline(&self.control, self.deadline, self.paused_before)?;
        let now = Instant::now();
        if now >= self.next_progress_check && !self.in_host_call {
            self.next_progress_check = now + PROGRESS_CHECK_INTERVAL;
            if let Some(fraction) = read_fraction_done(&self.scratch_dir.join(PROGRESS_FILE)) {
                self.control.record_fraction_done(fraction);
            }
        }
        if now >= self.next_scratch_check {
            self.next_scratch_check = now + SCRATCH_CHECK_INTERVAL;
            if super::scratch_over(&self.scratch_dir, self.scratch_limit) {
                return Err(Interruption::Broke(Limit::ScratchDisk));
            }
        }
        Ok(())
    }
}

/// The checks are taken one at a time, on the run's thread or its watch thread; a panic
/// while holding them cannot leave them inconsistent.
fn lock(checks: &Mutex<Checks>) -> std::sync::MutexGuard<'_, Checks> {
    checks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn stop_or_deadline(control: &RunControl, deadline: Instant, paused_before: Duration) -> Result<(), Interruption> {
    if let Some(reason) = control.stop_reason() {
        return Err(Interruption::Stopped(reason));
    }
    // Time spent paused is the owner's, not the module's.
    if Instant::now() > deadline + control.paused_for().saturating_sub(paused_before) {
        return Err(Interruption::Broke(Limit::WallTime));
    }
    Ok(())
}

/// The fraction done a module wrote, if the file holds a number (clamped to 0..=1).
fn read_fraction_done(path: &Path) -> Option<f64> {
    use std::io::Read;
    // A module writes a few bytes; anything longer is not a progress report.
    const MAX_BYTES: u64 = 64;
    let file = open_regular_file(path)?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_BYTES + 1).read_to_string(&mut text).ok()?;
    if text.len() as u64 > MAX_BYTES {
        return None;
    }
    let fraction: f64 = text.trim().parse().ok()?;
    fraction.is_finite().then(|| fraction.clamp(0.0, 1.0))
}

/// Opens `path` for reading only if it is a regular file. The module chooses what the name
/// is: a symbolic link to a terminal or a FIFO must not block the sandbox, so on Unix links
/// are refused and opening never waits. (A WASI module cannot make FIFOs or device files on
/// Windows, and its links are checked before opening.)
fn open_regular_file(path: &Path) -> Option<std::fs::File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::File::options().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).ok()
    }
    #[cfg(not(unix))]
    {
        if !std::fs::symlink_metadata(path).ok()?.is_file() {
            return None;
        }
        std::fs::File::open(path).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks_of(scratch_dir: &Path, control: Arc<RunControl>) -> Checks {
        let now = Instant::now();
        Checks {
            control,
            deadline: now + Duration::from_secs(60),
            paused_before: Duration::ZERO,
            scratch_dir: scratch_dir.to_owned(),
            scratch_limit: 16,
            next_scratch_check: now,
            next_progress_check: now,
            in_host_call: false,
        }
    }

    /// As the watch thread takes the checks.
    fn check_from_outside(checks: &Mutex<Checks>) -> Result<(), Interruption> {
        lock(checks).run()
    }

    #[test]
    fn the_progress_file_is_read_only_while_the_module_is_outside_host_calls() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PROGRESS_FILE), "0.25").unwrap();
        let control = Arc::new(RunControl::default());
        let checks = Mutex::new(checks_of(dir.path(), control.clone()));

        entering_host_call(&checks);
        assert!(check_from_outside(&checks).is_ok());
        assert_eq!(control.progress().fraction_done, None, "the progress file was read during a host call");

        assert!(returning_from_host_call(&checks).is_ok());
        assert_eq!(control.progress().fraction_done, Some(0.25), "read on the way back");
        std::fs::write(dir.path().join(PROGRESS_FILE), "0.5").unwrap();
        lock(&checks).next_progress_check = Instant::now();
        assert!(check_from_outside(&checks).is_ok());
        assert_eq!(control.progress().fraction_done, Some(0.5), "read from outside while the module computes");
    }

    #[test]
    fn a_host_call_waits_for_a_read_of_the_progress_file_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let checks = Mutex::new(checks_of(dir.path(), Arc::new(RunControl::default())));
        let entered = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let held = lock(&checks);
            scope.spawn(|| {
                entering_host_call(&checks);
                entered.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(50));
            assert!(!entered.load(std::sync::atomic::Ordering::SeqCst), "the host call went ahead of the check");
            drop(held);
        });
        assert!(lock(&checks).in_host_call);
    }

    #[test]
    fn the_scratch_limit_holds_inside_a_host_call() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), [0; 64]).unwrap();
        let checks = Mutex::new(checks_of(dir.path(), Arc::new(RunControl::default())));
        // A module that filled its scratch directory and then sleeps in `poll_oneoff`.
        entering_host_call(&checks);
        assert!(matches!(check_from_outside(&checks), Err(Interruption::Broke(Limit::ScratchDisk))));
    }

    #[test]
    fn a_stop_request_is_seen_inside_a_host_call() {
        let dir = tempfile::tempdir().unwrap();
        let control = Arc::new(RunControl::default());
        let checks = Mutex::new(checks_of(dir.path(), control.clone()));
        entering_host_call(&checks);
        control.stop(StopReason::Aborted);
        assert!(matches!(check_from_outside(&checks), Err(Interruption::Stopped(StopReason::Aborted))));
    }

    #[cfg(unix)]
    #[test]
    fn a_progress_file_that_is_a_fifo_or_a_link_is_not_read() {
        use std::os::unix::ffi::OsStrExt;

        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let fifo_name = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo_name.as_ptr(), 0o600) }, 0);
        // Would block for ever, waiting for a writer, if opened the ordinary way.
        assert_eq!(read_fraction_done(&fifo), None);

        std::fs::write(dir.path().join("real"), "0.5").unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
        assert_eq!(read_fraction_done(&dir.path().join("link")), None);
        assert_eq!(read_fraction_done(&dir.path().join("real")), Some(0.5));
    }
}
