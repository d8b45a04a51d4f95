//! The sandbox: runs a WASI preview 1 command module with nothing granted but its
//! arguments, its standard input, a read-only input directory and a scratch directory,
//! within hard limits, deterministically.
//!
//! - [`engine`]: the deterministic engine and its epoch ticker.
//! - [`limits`]: memory and table caps, and the names of the limits a run can break.
//! - [`capture`]: standard output and error, size-limited, in memory.
//! - [`determinism`]: seeded random numbers and clocks that cannot leak into outputs.
//! - [`compile_cache`]: compiled modules on disk, per module hash and engine.
//!
//! A run ends with an outcome: success, an error that names its cause (a broken limit, a
//! trap, a non-zero exit, a missing import, an invalid module), or stopped from outside
//! (shutdown or abort), in which case it is not a result at all and will run again.
//!
//! Runs are blocking and CPU-bound: call [`Sandbox::run`] from a thread of its own with
//! [`engine::RUN_THREAD_STACK`] bytes of stack ([`Sandbox::spawn`] does that).

pub mod capture;
pub mod compile_cache;
pub mod determinism;
pub mod engine;
pub mod limits;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{MAX_STDERR_BYTES, RunLimits};
use wasmtime::{Linker, Module, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use capture::CappedPipe;
use compile_cache::CompileCache;
use determinism::{FrozenWallClock, SeededRandom, SteppingClock};
use engine::{EngineSettings, TickingEngine};
pub use limits::Limit;
use limits::MemoryLimiter;

/// Where the input directory appears to the module.
pub const GUEST_INPUT_DIR: &str = "/input";
/// Where the scratch directory appears to the module (it is also the working directory).
pub const GUEST_SCRATCH_DIR: &str = "/scratch";
/// How often, in epoch ticks, the scratch directory's size is measured.
const SCRATCH_CHECK_TICKS: u64 = 10;
/// How often, in epoch ticks, the module's progress file is read.
const PROGRESS_CHECK_TICKS: u64 = 50;
/// A module may report how far it has got by writing its fraction done, a decimal number
/// from 0 to 1 (such as `0.25`), to this file in its scratch directory. It is not output.
pub const PROGRESS_FILE: &str = "progress";

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub module_hash: Sha256Hash,
    pub module_path: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<String>,
    pub stdin: Vec<u8>,
    pub input_dir: PathBuf,
    pub scratch_dir: PathBuf,
    pub limits: RunLimits,
    /// Bytes the scratch directory may hold.
    pub scratch_limit_bytes: u64,
    pub seed: u64,
}

/// Why a run was stopped from outside; not the module's fault, and not a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The client is shutting down; the task runs again at the next start.
    Shutdown,
    /// The server no longer needs the replica.
    Aborted,
}

/// Shared between a run and the rest of the client: asks it to stop, and tells how far it
/// has got.
#[derive(Debug, Default)]
pub struct RunControl {
    stop: AtomicU8,
    fuel_used: AtomicU64,
    /// The module's fraction done as `f64` bits, plus one (0: not reported).
    fraction_done: AtomicU64,
}

/// How far a running module has got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Fuel burnt so far, as of the module's latest function call: compiled code keeps the
    /// fuel counter in a register and writes it back only around calls, so a long loop
    /// without calls shows the figure from before it until it calls something or ends.
    pub fuel_used: u64,
    /// What the module says in its [`PROGRESS_FILE`], if it writes one.
    pub fraction_done: Option<f64>,
}

impl RunControl {
    pub fn progress(&self) -> Progress {
        let fraction = self.fraction_done.load(Ordering::Relaxed);
        Progress {
            fuel_used: self.fuel_used.load(Ordering::Relaxed),
            fraction_done: fraction.checked_sub(1).map(f64::from_bits),
        }
    }

    fn record_fraction_done(&self, fraction: f64) {
        self.fraction_done.store(fraction.to_bits() + 1, Ordering::Relaxed);
    }

    pub fn stop(&self, reason: StopReason) {
        let code = match reason {
            StopReason::Shutdown => 1,
            StopReason::Aborted => 2,
        };
        self.stop.store(code, Ordering::Relaxed);
    }

    fn stop_reason(&self) -> Option<StopReason> {
        match self.stop.load(Ordering::Relaxed) {
            1 => Some(StopReason::Shutdown),
            2 => Some(StopReason::Aborted),
            _ => None,
        }
    }
}

/// Why a run failed; reported to the server as the replica's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    Limit(Limit),
    Trap(String),
    Exit(i32),
    MissingImport(String),
    InvalidModule(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Limit(limit) => write!(f, "{limit}"),
            Self::Trap(message) => write!(f, "trap: {message}"),
            Self::Exit(code) => write!(f, "exited with status {code}"),
            Self::MissingImport(import) => write!(f, "the sandbox does not provide the import {import}"),
            Self::InvalidModule(reason) => write!(f, "not a valid WASI command module: {reason}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    Success,
    Failed(RunError),
    Stopped(StopReason),
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: RunOutcome,
    pub fuel_used: u64,
    pub run_time: Duration,
    pub stdout: Vec<u8>,
    /// The end of standard error, lossily decoded.
    pub stderr: String,
    pub exit_status: Option<i32>,
}

/// The state a store carries: the WASI context and the memory limiter.
struct RunState {
    wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
}

/// Errors raised from the epoch callback, recognised when the run ends.
#[derive(Debug)]
enum Interruption {
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

/// The engine, the WASI imports and the compile cache; shared by every run of the process.
pub struct Sandbox {
    settings: EngineSettings,
    engine: TickingEngine,
    linker: Linker<RunState>,
    cache: CompileCache,
}

impl Sandbox {
    /// A sandbox whose compiled modules are cached in `cache_dir`.
    pub fn new(cache_dir: &Path) -> anyhow::Result<Arc<Self>> {
        Self::with_settings(cache_dir, EngineSettings::FULL)
    }

    /// A sandbox with some determinism or metering switched off, for measuring their cost.
    pub fn with_settings(cache_dir: &Path, settings: EngineSettings) -> anyhow::Result<Arc<Self>> {
        let engine = TickingEngine::new(settings)?;
        let mut linker = Linker::new(&engine.engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |state: &mut RunState| &mut state.wasi)?;
        let cache = CompileCache::open(cache_dir, &engine.engine)?;
        Ok(Arc::new(Self { settings, engine, linker, cache }))
    }

    /// Runs `spec` on a thread of its own; the report arrives on the returned channel.
    pub fn spawn(
        self: &Arc<Self>,
        spec: RunSpec,
        control: Arc<RunControl>,
    ) -> std::io::Result<tokio::sync::oneshot::Receiver<RunReport>> {
        let (send, receive) = tokio::sync::oneshot::channel();
        let sandbox = self.clone();
        std::thread::Builder::new().name("wasm-run".into()).stack_size(engine::RUN_THREAD_STACK).spawn(move || {
            let _ = send.send(sandbox.run(&spec, &control));
        })?;
        Ok(receive)
    }

    /// Compiles (or loads from the cache) the module, without running it.
    pub fn prepare(&self, module_hash: &Sha256Hash, module_path: &Path) -> Result<Module, RunError> {
        self.cache
            .load_or_compile(&self.engine.engine, module_hash, module_path)
            .map_err(|error| RunError::InvalidModule(first_line(&format!("{error:#}"))))
    }

    /// Runs a module to the end. Blocking: see the module documentation.
    pub fn run(&self, spec: &RunSpec, control: &Arc<RunControl>) -> RunReport {
        let started = Instant::now();
        let stdout = CappedPipe::failing_after(spec.limits.output_bytes);
        let stderr = CappedPipe::keeping_tail(MAX_STDERR_BYTES as u64);
        let report = |outcome: RunOutcome, fuel_used: u64, exit_status: Option<i32>| RunReport {
            outcome,
            fuel_used,
            run_time: started.elapsed(),
            stdout: stdout.contents(),
            stderr: String::from_utf8_lossy(&stderr.contents()).into_owned(),
            exit_status,
        };

        let module = match self.prepare(&spec.module_hash, &spec.module_path) {
            Ok(module) => module,
            Err(error) => return report(RunOutcome::Failed(error), 0, None),
        };
        let wasi = match build_wasi(spec, &stdout, &stderr) {
            Ok(wasi) => wasi,
            Err(error) => return report(RunOutcome::Failed(RunError::Trap(format!("{error:#}"))), 0, None),
        };
        let mut store =
            Store::new(&self.engine.engine, RunState { wasi, limiter: MemoryLimiter::new(spec.limits.memory_bytes) });
        store.limiter(|state| &mut state.limiter);
        if self.settings.fuel {
            store.set_fuel(spec.limits.fuel).expect("fuel metering is enabled");
        }
        if self.settings.epoch_interruption {
            watch(&mut store, spec, control.clone(), started, self.settings.fuel);
        }

        let result = self.instantiate_and_start(&mut store, &module);
        let fuel_used = if self.settings.fuel { spec.limits.fuel - store.get_fuel().unwrap_or(0) } else { 0 };
        let (outcome, exit_status) = match result {
            Ok(()) => (RunOutcome::Success, Some(0)),
            Err(error) => classify(error, &store, &stdout),
        };
        let outcome = match outcome {
            RunOutcome::Success if scratch_bytes(&spec.scratch_dir) > spec.scratch_limit_bytes => {
                RunOutcome::Failed(RunError::Limit(Limit::ScratchDisk))
            }
            other => other,
        };
        report(outcome, fuel_used, exit_status)
    }

    fn instantiate_and_start(&self, store: &mut Store<RunState>, module: &Module) -> wasmtime::Result<()> {
        for import in module.imports() {
            if self.linker.get_by_import(&mut *store, &import).is_none() {
                let name = format!("{}::{}", import.module(), import.name());
                return Err(wasmtime::Error::new(MissingImportError(name)));
            }
        }
        let instance = self.linker.instantiate(&mut *store, module)?;
        let start =
            instance.get_typed_func::<(), ()>(&mut *store, "_start").map_err(|_| wasmtime::Error::new(NotACommand))?;
        start.call(&mut *store, ())
    }
}

#[derive(Debug)]
struct MissingImportError(String);

impl fmt::Display for MissingImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "missing import {}", self.0)
    }
}

impl std::error::Error for MissingImportError {}

#[derive(Debug)]
struct NotACommand;

impl fmt::Display for NotACommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the module exports no `_start` function: it is not a WASI command")
    }
}

impl std::error::Error for NotACommand {}

/// Checks, every epoch tick, the stop flag and the wall-clock limit, records the fuel
/// used so far, and less often measures the scratch directory and reads the progress file.
fn watch(store: &mut Store<RunState>, spec: &RunSpec, control: Arc<RunControl>, started: Instant, fuel: bool) {
    let deadline = started + Duration::from_secs(spec.limits.wall_time_seconds);
    let scratch_dir = spec.scratch_dir.clone();
    let scratch_limit = spec.scratch_limit_bytes;
    let fuel_limit = spec.limits.fuel;
    let mut ticks = 0u64;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |context| {
        ticks += 1;
        if fuel && let Ok(remaining) = context.get_fuel() {
            control.fuel_used.store(fuel_limit.saturating_sub(remaining), Ordering::Relaxed);
        }
        if ticks.is_multiple_of(PROGRESS_CHECK_TICKS)
            && let Some(fraction) = read_fraction_done(&scratch_dir.join(PROGRESS_FILE))
        {
            control.record_fraction_done(fraction);
        }
        if let Some(reason) = control.stop_reason() {
            return Err(wasmtime::Error::new(Interruption::Stopped(reason)));
        }
        if Instant::now() > deadline {
            return Err(wasmtime::Error::new(Interruption::Broke(Limit::WallTime)));
        }
        if ticks.is_multiple_of(SCRATCH_CHECK_TICKS) && scratch_bytes(&scratch_dir) > scratch_limit {
            return Err(wasmtime::Error::new(Interruption::Broke(Limit::ScratchDisk)));
        }
        Ok(UpdateDeadline::Continue(1))
    });
}

/// Turns the error a run ended with into an outcome that names its cause.
fn classify(error: wasmtime::Error, store: &Store<RunState>, stdout: &CappedPipe) -> (RunOutcome, Option<i32>) {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return if exit.0 == 0 {
            (RunOutcome::Success, Some(0))
        } else {
            (RunOutcome::Failed(RunError::Exit(exit.0)), Some(exit.0))
        };
    }
    let failed = |error: RunError| (RunOutcome::Failed(error), None);
    if let Some(interruption) = error.downcast_ref::<Interruption>() {
        return match interruption {
            Interruption::Broke(limit) => failed(RunError::Limit(*limit)),
            Interruption::Stopped(reason) => (RunOutcome::Stopped(*reason), None),
        };
    }
    if stdout.exceeded() {
        return failed(RunError::Limit(Limit::Output));
    }
    if let Some(limit) = store.data().limiter.broken {
        return failed(RunError::Limit(limit));
    }
    if let Some(missing) = error.downcast_ref::<MissingImportError>() {
        return failed(RunError::MissingImport(missing.0.clone()));
    }
    if error.downcast_ref::<NotACommand>().is_some() {
        return failed(RunError::InvalidModule(NotACommand.to_string()));
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => failed(RunError::Limit(Limit::Fuel)),
        Some(Trap::StackOverflow) => failed(RunError::Limit(Limit::Stack)),
        Some(trap) => failed(RunError::Trap(trap.to_string())),
        // Host errors come wrapped in a "wasm backtrace" context; the root cause says why.
        None => failed(RunError::Trap(first_line(&error.root_cause().to_string()))),
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

/// The WASI context of one run: nothing from the host but what the spec names.
fn build_wasi(spec: &RunSpec, stdout: &CappedPipe, stderr: &CappedPipe) -> anyhow::Result<WasiP1Ctx> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .arg("main.wasm")
        .args(&spec.args)
        .stdin(MemoryInputPipe::new(spec.stdin.clone()))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .wall_clock(FrozenWallClock)
        .monotonic_clock(SteppingClock::default())
        .secure_random(SeededRandom::new(spec.seed))
        .insecure_random(SeededRandom::new(spec.seed.rotate_left(32)))
        .insecure_random_seed(u128::from(spec.seed))
        .allow_blocking_current_thread(true);
    builder.preopened_dir(&spec.input_dir, GUEST_INPUT_DIR, FsPerms::ReadOnly)?;
    builder.preopened_dir(&spec.scratch_dir, GUEST_SCRATCH_DIR, FsPerms::ReadWrite)?;
    builder.preopened_dir(&spec.scratch_dir, ".", FsPerms::ReadWrite)?;
    Ok(builder.build_p1())
}

/// The fraction done a module wrote, if the file holds a number (clamped to 0..=1).
fn read_fraction_done(path: &Path) -> Option<f64> {
    // A module writes a few bytes; anything longer is not a progress report.
    const MAX_BYTES: u64 = 64;
    let mut text = String::new();
    std::io::Read::take(std::fs::File::open(path).ok()?, MAX_BYTES + 1).read_to_string(&mut text).ok()?;
    if text.len() as u64 > MAX_BYTES {
        return None;
    }
    let fraction: f64 = text.trim().parse().ok()?;
    fraction.is_finite().then(|| fraction.clamp(0.0, 1.0))
}

/// Bytes held by the files under `dir` (apparent sizes, so sparse files count in full).
pub fn scratch_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => scratch_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map(|meta| meta.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
