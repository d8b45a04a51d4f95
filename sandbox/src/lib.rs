//! The sandbox: runs a WASI preview 1 command module with nothing granted but its
//! arguments, its standard input, a read-only input directory and a scratch directory,
//! within hard limits, deterministically.
//!
//! - [`engine`]: the engine, and the instrumentation pass every module goes through first.
//! - [`meter`]: the instrumented module's fuel counter and limit, shared with the sandbox.
//! - [`watch`]: the wall-clock limit, stop requests, scratch quota and progress, checked
//!   from a thread of the run's own and whenever the module gets back to the sandbox.
//! - [`limits`]: memory and table caps, and the names of the limits a run can break.
//! - [`capture`]: standard output and error, size-limited, in memory.
//! - [`determinism`]: seeded random numbers and clocks that cannot leak into outputs.
//! - [`compile_cache`]: compiled modules on disk, per module hash and engine.
//! - [`module_check`]: refusing, before any run, a module that cannot be a work unit.
//! - [`output`]: a run's output as one deterministic archive, packed and unpacked.
//!
//! A run ends with an outcome: success, an error that names its cause (a broken limit, a
//! trap, a non-zero exit, a missing import, an invalid module), an error of the host (this
//! host cannot compile the module), or stopped from outside (shutdown or abort), in which
//! case it is not a result at all and will run again.
//!
//! Runs are blocking and CPU-bound: call [`Sandbox::run`] from a thread of its own, outside
//! any async runtime ([`Sandbox::spawn`] does that). Inside, a run is asynchronous: the
//! module runs on a fiber of its own, so that a host call that waits (a sleep) gives the
//! sandbox its turn.

pub mod capture;
pub mod compile_cache;
pub mod determinism;
pub mod engine;
pub mod limits;
pub mod meter;
pub mod module_check;
pub mod output;
pub mod pause;
pub mod priority;
pub mod watch;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use wasmgrid_instrument::{STACK_USED_EXPORT, Target, TrapCause};
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{MAX_STDERR_BYTES, RunLimits};
use wasmtime::{Engine, Extern, Instance, Linker, Module, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use capture::CappedPipe;
use compile_cache::CompileCache;
use determinism::{FrozenWallClock, SeededRandom, SteppingClock};
pub use engine::Backend;
use engine::EngineSettings;
pub use limits::Limit;
use limits::MemoryLimiter;
use meter::{Meter, MeterHandle};
pub use module_check::ModuleRejection;
/// The version of the instrumentation every module runs through, reported with each result.
pub use wasmgrid_instrument::VERSION as INSTRUMENTATION_VERSION;
pub use watch::PROGRESS_FILE;
use watch::{Interruption, Watch};

/// Where the input directory appears to the module.
pub const GUEST_INPUT_DIR: &str = "/input";
/// Where the scratch directory appears to the module (it is also the working directory).
pub const GUEST_SCRATCH_DIR: &str = "/scratch";

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
    /// The run has its files and has begun (compiling, or running the module).
    started: AtomicBool,
    fuel_used: AtomicU64,
    /// The module's fraction done as `f64` bits, plus one (0: not reported).
    fraction_done: AtomicU64,
    /// The priority the run's thread got, once it is lowered.
    background: OnceLock<priority::Background>,
    pause: pause::PauseGate,
    /// Bytes of linear memory the module has (all its memories together).
    memory_in_use: Arc<AtomicU64>,
}

/// How far a running module has got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Fuel burnt so far, as of the module's latest call, return or loop iteration, read at
    /// most [`watch::HOST_WAIT_CHECK`] ago.
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

    fn record_fuel_used(&self, fuel: u64) {
        self.fuel_used.fetch_max(fuel, Ordering::Relaxed);
    }

    fn record_fraction_done(&self, fraction: f64) {
        self.fraction_done.store(fraction.to_bits() + 1, Ordering::Relaxed);
    }

    /// The priority the run's thread runs at, if [`Sandbox::spawn_in_background`] started it.
    pub fn background(&self) -> Option<&priority::Background> {
        self.background.get()
    }

    pub fn stop(&self, reason: StopReason) {
        let code = match reason {
            StopReason::Shutdown => 1,
            StopReason::Aborted => 2,
        };
        self.stop.store(code, Ordering::SeqCst);
        // A paused run must wake to stop.
        self.pause.wake_up();
    }

    /// Pauses the run where it is, keeping its memory (see [`pause`]): at once where it is in
    /// compiled code on a platform where [`pause::PAUSES_ANYWHERE`], else at its next host
    /// call. A run not started yet pauses as soon as it reaches Wasm.
    pub fn pause(&self) {
        self.pause.pause();
    }

    pub fn resume(&self) {
        self.pause.resume();
    }

    /// Whether a pause is asked for (it may not be in effect yet: see [`Self::is_paused`]).
    pub fn is_pause_requested(&self) -> bool {
        self.pause.is_requested()
    }

    /// Whether the run is held now, using no CPU.
    pub fn is_paused(&self) -> bool {
        self.pause.is_held()
    }

    /// Whether a pause would hold the run wherever it is now: it is in compiled code, on a
    /// platform where [`pause::PAUSES_ANYWHERE`]. Otherwise it pauses at its next host call.
    pub fn pauses_anywhere(&self) -> bool {
        self.pause.holds_anywhere()
    }

    /// Whether the run has begun: its caller has staged its files and handed it to the
    /// sandbox. Before, the task holds a slot but is still being prepared.
    pub fn has_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Whether the run has reached the module's code. Before (while it is staged or
    /// compiled), a pause holds it as it reaches it.
    pub fn is_in_wasm(&self) -> bool {
        self.pause.is_in_wasm()
    }

    /// Bytes of linear memory the module has now.
    pub fn memory_in_use(&self) -> u64 {
        self.memory_in_use.load(Ordering::Relaxed)
    }

    /// Time the run has spent paused, which its wall-clock limit does not count.
    pub fn paused_for(&self) -> Duration {
        self.pause.paused_for()
    }

    /// Caps the run at `percent` of one core, as a duty cycle (see [`pause`]); 100: no cap.
    pub fn limit_cpu(&self, percent: u8) {
        self.pause.limit_cpu(percent);
    }

    /// Whether the run's thread must stay held: paused or throttled, and not asked to stop.
    fn must_hold(&self) -> bool {
        self.pause.is_closed() && self.stop_reason().is_none()
    }

    fn stop_reason(&self) -> Option<StopReason> {
        match self.stop.load(Ordering::SeqCst) {
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
    /// The module is valid, but this host cannot compile it (the engine's compiler failed or
    /// panicked). Not the module's fault: another host may run it.
    HostCannotRun(String),
}

impl RunError {
    /// Whether the error says something about the module (and would be the same on every
    /// host), rather than about this host.
    pub fn is_deterministic(&self) -> bool {
        !matches!(self, Self::HostCannotRun(_))
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Limit(limit) => write!(f, "{limit}"),
            Self::Trap(message) => write!(f, "trap: {message}"),
            Self::Exit(code) => write!(f, "exited with status {code}"),
            Self::MissingImport(import) => write!(f, "the sandbox does not provide the import {import}"),
            Self::InvalidModule(reason) => write!(f, "not a valid WASI command module: {reason}"),
            Self::HostCannotRun(reason) => write!(f, "this host cannot run this module: {reason}"),
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
    /// The back end that ran the module, once it was compiled.
    pub backend: Option<Backend>,
    pub run_time: Duration,
    pub stdout: Vec<u8>,
    /// The end of standard error, lossily decoded.
    pub stderr: String,
    pub exit_status: Option<i32>,
}

/// The state a store carries: the WASI context, the memory limiter and, once instantiated,
/// the module's instance (whose counters say why a run trapped).
struct RunState {
    wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
    instance: Option<Instance>,
}

/// One of wasmtime's back ends, ready to compile and run modules: its engine, the WASI
/// imports for that engine and its compile cache.
struct Compiler {
    backend: Backend,
    engine: Engine,
    linker: Linker<RunState>,
    cache: CompileCache,
}

impl Compiler {
    /// The compiler for `backend`, caching its code under `cache_dir`.
    fn new(settings: EngineSettings, backend: Backend, cache_dir: &Path) -> anyhow::Result<Self> {
        let engine = Engine::new(&engine::config(settings, backend)?)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut RunState| &mut state.wasi)?;
        let instrumentation =
            format!("wasmgrid-instrument v{} {:?}", wasmgrid_instrument::VERSION, settings.instrumentation);
        let cache = CompileCache::open(cache_dir, &engine, &instrumentation)?;
        Ok(Self { backend, engine, linker, cache })
    }

    /// The instrumented module `instrumented`, compiled; a compiler panic is an error too.
    fn compile(&self, instrumented: &[u8]) -> Result<Module, CompileError> {
        let compiled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Module::new(&self.engine, instrumented)));
        let name = self.backend.name();
        match compiled {
            Ok(Ok(module)) => Ok(module),
            // The pass validated the module, so an error now is the compiler's.
            Ok(Err(error)) => Err(CompileError::Compiler(format!("{name}: {}", first_line(&format!("{error:#}"))))),
            Err(panic) => Err(CompileError::Compiler(format!("{name} panicked: {}", panic_message(&*panic)))),
        }
    }

    async fn instantiate_and_start(
        &self,
        store: &mut Store<RunState>,
        module: &Module,
        meter: &Meter,
    ) -> wasmtime::Result<()> {
        let mut imports = Vec::new();
        for import in module.imports() {
            if (import.module(), import.name())
                == (wasmgrid_instrument::IMPORT_MODULE, wasmgrid_instrument::METER_MEMORY)
            {
                imports.push(Extern::Memory(meter.memory));
                continue;
            }
            match self.linker.get_by_import(&mut *store, &import) {
                Some(definition) => imports.push(definition),
                None => {
                    let name = format!("{}::{}", import.module(), import.name());
                    return Err(wasmtime::Error::new(MissingImportError(name)));
                }
            }
        }
        // Instantiation runs the module's start function, if any: it is metered and watched too.
        let instance = Instance::new_async(&mut *store, module, &imports).await?;
        store.data_mut().instance = Some(instance);
        let start =
            instance.get_typed_func::<(), ()>(&mut *store, "_start").map_err(|_| wasmtime::Error::new(NotACommand))?;
        start.call_async(&mut *store, ()).await
    }
}

/// A module compiled and ready to run, and the back end that compiled it.
pub struct Prepared<'a> {
    pub module: Module,
    compiler: &'a Compiler,
}

/// The engines, the WASI imports and the compile caches; shared by every run of the process.
pub struct Sandbox {
    settings: EngineSettings,
    /// The back end the settings name.
    primary: Compiler,
    /// Pulley, for modules Cranelift cannot compile on this CPU: made when first needed, in
    /// a cache directory of its own. `None` when the primary is Pulley already.
    fallback: Option<OnceLock<Result<Compiler, String>>>,
    fallback_cache_dir: PathBuf,
}

impl Sandbox {
    /// A sandbox whose compiled modules are cached in `cache_dir`.
    pub fn new(cache_dir: &Path) -> anyhow::Result<Arc<Self>> {
        Self::with_settings(cache_dir, EngineSettings::FULL)
    }

    /// A sandbox with other settings: some determinism or metering switched off, for
    /// measuring their cost, or Pulley for everything.
    pub fn with_settings(cache_dir: &Path, settings: EngineSettings) -> anyhow::Result<Arc<Self>> {
        let primary = Compiler::new(settings, settings.backend, cache_dir)?;
        let fallback = (settings.backend != Backend::Pulley).then(OnceLock::new);
        let fallback_cache_dir = cache_dir.join(Backend::Pulley.name());
        Ok(Arc::new(Self { settings, primary, fallback, fallback_cache_dir }))
    }

    /// Runs `spec` on a thread of its own; the report arrives on the returned channel.
    pub fn spawn(
        self: &Arc<Self>,
        spec: RunSpec,
        control: Arc<RunControl>,
    ) -> std::io::Result<tokio::sync::oneshot::Receiver<RunReport>> {
        self.spawn_thread(spec, control, false)
    }

    /// [`Sandbox::spawn`], on a thread at the lowest CPU and I/O priority the system offers
    /// (see [`priority`]): how a volunteer's machine runs work units.
    pub fn spawn_in_background(
        self: &Arc<Self>,
        spec: RunSpec,
        control: Arc<RunControl>,
    ) -> std::io::Result<tokio::sync::oneshot::Receiver<RunReport>> {
        self.spawn_thread(spec, control, true)
    }

    fn spawn_thread(
        self: &Arc<Self>,
        spec: RunSpec,
        control: Arc<RunControl>,
        background: bool,
    ) -> std::io::Result<tokio::sync::oneshot::Receiver<RunReport>> {
        let (send, receive) = tokio::sync::oneshot::channel();
        let sandbox = self.clone();
        control.started.store(true, Ordering::SeqCst);
        std::thread::Builder::new().name("wasm-run".into()).spawn(move || {
            if background {
                let _ = control.background.set(priority::enter_background());
            }
            let _ = send.send(sandbox.run(&spec, &control));
        })?;
        Ok(receive)
    }

    /// The fallback back end, made on first use.
    fn fallback(&self) -> Option<Result<&Compiler, String>> {
        let fallback = self.fallback.as_ref()?.get_or_init(|| {
            Compiler::new(self.settings, Backend::Pulley, &self.fallback_cache_dir)
                .map_err(|error| format!("{error:#}"))
        });
        Some(fallback.as_ref().map_err(Clone::clone))
    }

    /// Instruments and compiles (or loads from the cache) the module, without running it:
    /// with the primary back end, or with the fallback where the primary's compiler fails
    /// on this module (now, or in an earlier attempt that the cache remembers).
    pub fn prepare(&self, module_hash: &Sha256Hash, module_path: &Path) -> Result<Prepared<'_>, RunError> {
        let known_failure = self.primary.cache.known_uncompilable(module_hash);
        let record_failure = |reason: &str| self.primary.cache.mark_uncompilable(module_hash, reason);
        let prepared = self.with_fallback(known_failure, record_failure, |compiler| {
            compiler.cache.load_or_compile(&compiler.engine, module_hash, || {
                let wasm = std::fs::read(module_path)
                    .map_err(|error| CompileError::Unreadable(format!("cannot read the module: {error}")))?;
                compiler.compile(&self.instrument(&wasm)?)
            })
        })?;
        Ok(prepared)
    }

    /// The module `wasm`, instrumented and compiled, bypassing the cache: with the primary
    /// back end, or the fallback where the primary's compiler fails.
    fn instrument_and_compile(&self, wasm: &[u8]) -> Result<Prepared<'_>, CompileError> {
        let instrumented = self.instrument(wasm)?;
        self.with_fallback(None, |_| {}, |compiler| compiler.compile(&instrumented))
    }

    /// The module `compile` makes with the primary back end or, where the primary's compiler
    /// fails (or `known_failure` says it did before, which is then not tried again), with
    /// the fallback. A new failure of the primary is passed to `record_failure`.
    fn with_fallback(
        &self,
        known_failure: Option<String>,
        record_failure: impl FnOnce(&str),
        compile: impl Fn(&Compiler) -> Result<Module, CompileError>,
    ) -> Result<Prepared<'_>, CompileError> {
        let primary_failure = match known_failure {
            Some(reason) => reason,
            None => match compile(&self.primary) {
                Ok(module) => return Ok(Prepared { module, compiler: &self.primary }),
                Err(CompileError::Compiler(reason)) => {
                    record_failure(&reason);
                    reason
                }
                Err(other) => return Err(other),
            },
        };
        let both_failed = |reason: String| CompileError::Compiler(format!("{primary_failure}; {reason}"));
        let fallback = match self.fallback() {
            None => return Err(CompileError::Compiler(primary_failure)),
            Some(fallback) => fallback.map_err(both_failed)?,
        };
        match compile(fallback) {
            Ok(module) => Ok(Prepared { module, compiler: fallback }),
            Err(CompileError::Compiler(reason)) => Err(both_failed(reason)),
            Err(other) => Err(other),
        }
    }

    /// The module `wasm`, instrumented for this sandbox.
    fn instrument(&self, wasm: &[u8]) -> Result<Vec<u8>, CompileError> {
        wasmgrid_instrument::instrument_with(wasm, Target::Sandbox, self.settings.instrumentation)
            .map_err(CompileError::Refused)
    }

    /// Runs a module to the end. Blocking: see the module documentation.
    pub fn run(&self, spec: &RunSpec, control: &Arc<RunControl>) -> RunReport {
        let started = Instant::now();
        // Only pauses during the run count against its time (one may have begun earlier).
        let paused_before = control.paused_for();
        let stdout = CappedPipe::failing_after(spec.limits.output_bytes);
        let stderr = CappedPipe::keeping_tail(MAX_STDERR_BYTES as u64);
        let backend = std::cell::Cell::new(None);
        let report = |outcome: RunOutcome, fuel_used: u64, exit_status: Option<i32>| RunReport {
            outcome,
            fuel_used,
            backend: backend.get(),
            run_time: started.elapsed().saturating_sub(control.paused_for().saturating_sub(paused_before)),
            stdout: stdout.contents(),
            stderr: String::from_utf8_lossy(&stderr.contents()).into_owned(),
            exit_status,
        };

        let Prepared { module, compiler } = match self.prepare(&spec.module_hash, &spec.module_path) {
            Ok(prepared) => prepared,
            Err(error) => return report(RunOutcome::Failed(error), 0, None),
        };
        backend.set(Some(compiler.backend));
        let wasi = match build_wasi(spec, &stdout, &stderr) {
            Ok(wasi) => wasi,
            Err(error) => return report(RunOutcome::Failed(RunError::Trap(format!("{error:#}"))), 0, None),
        };
        let limiter = MemoryLimiter::new(spec.limits.memory_bytes, control.memory_in_use.clone());
        let state = RunState { wasi, limiter, instance: None };
        let mut store = Store::new(&compiler.engine, state);
        // Before the limiter: the meter is the sandbox's, not the module's memory.
        let meter = match Meter::new(&mut store, spec.limits.fuel) {
            Ok(meter) => meter,
            Err(error) => return report(RunOutcome::Failed(RunError::HostCannotRun(format!("{error:#}"))), 0, None),
        };
        store.limiter(|state| &mut state.limiter);
        let mut watch = Watch::new(spec, control.clone(), started, paused_before);
        store.call_hook(watch.call_hook(meter.handle()));

        // Pulley's code is data for its interpreter: the interpreter is what a signal would
        // interrupt, so those runs pause at host calls only.
        let code = (compiler.backend == Backend::Cranelift).then(|| {
            let image = module.image_range();
            image.start as usize..image.end as usize
        });
        let (result, stopped_by_watch) = std::thread::scope(|scope| {
            // Without its watch a run could be neither stopped nor held: none starts.
            let watch_thread = match watch.watch_from_outside(scope, meter.handle()) {
                Ok(thread) => thread,
                Err(error) => {
                    return (Err(wasmtime::Error::msg(format!("cannot start the run's watch: {error}"))), None);
                }
            };
            let _in_wasm = pause::InWasm::enter(control, code);
            let result =
                match tokio::runtime::Builder::new_current_thread().enable_time().max_blocking_threads(1).build() {
                    Ok(runtime) => {
                        runtime.block_on(watch.run(compiler.instantiate_and_start(&mut store, &module, &meter)))
                    }
                    Err(error) => Err(wasmtime::Error::msg(format!("cannot start the run's event loop: {error}"))),
                };
            (result, watch_thread.finish())
        });
        let counters = Counters::read(&mut store, meter.handle(), spec.limits.fuel);
        let fuel_used = counters.fuel_used.clamp(0, counters.fuel_limit) as u64;
        let (outcome, exit_status) = match (result, stopped_by_watch) {
            (Ok(()), _) => (RunOutcome::Success, Some(0)),
            (Err(error), stopped_by_watch) => classify(error, stopped_by_watch, &store, &stdout, counters),
        };
        let outcome = match outcome {
            RunOutcome::Success if scratch_over(&spec.scratch_dir, spec.scratch_limit_bytes) => {
                RunOutcome::Failed(RunError::Limit(Limit::ScratchDisk))
            }
            other => other,
        };
        report(outcome, fuel_used, exit_status)
    }
}

/// Why a module could not be made ready to run.
enum CompileError {
    /// The module's fault: the instrumentation pass refused it (invalid, or not deterministic).
    Refused(wasmgrid_instrument::Refusal),
    /// This host's: the engine's compiler failed on a module the pass accepted, or panicked.
    Compiler(String),
    /// This host's: the module's file could not be read.
    Unreadable(String),
}

impl From<CompileError> for RunError {
    fn from(error: CompileError) -> Self {
        match error {
            CompileError::Refused(refusal) => Self::InvalidModule(refusal.to_string()),
            CompileError::Compiler(reason) | CompileError::Unreadable(reason) => Self::HostCannotRun(reason),
        }
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

/// The instrumented module's counters at the end of a run.
#[derive(Debug, Clone, Copy)]
struct Counters {
    fuel_used: i64,
    /// The run's limit (not the meter's word, which the watch lowers to stop a run).
    fuel_limit: i64,
    stack_used: i64,
}

impl Counters {
    fn read(store: &mut Store<RunState>, meter: MeterHandle, fuel_limit: u64) -> Self {
        let stack_used = store
            .data()
            .instance
            .and_then(|instance| instance.get_global(&mut *store, STACK_USED_EXPORT))
            .and_then(|global| global.get(&mut *store).i64())
            .unwrap_or(0);
        Self { fuel_used: meter.fuel_used(), fuel_limit: i64::try_from(fuel_limit).unwrap_or(i64::MAX), stack_used }
    }
}

/// Turns the error a run ended with into an outcome that names its cause.
fn classify(
    error: wasmtime::Error,
    stopped_by_watch: Option<Interruption>,
    store: &Store<RunState>,
    stdout: &CappedPipe,
    counters: Counters,
) -> (RunOutcome, Option<i32>) {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return if exit.0 == 0 {
            (RunOutcome::Success, Some(0))
        } else {
            (RunOutcome::Failed(RunError::Exit(exit.0)), Some(exit.0))
        };
    }
    let failed = |error: RunError| (RunOutcome::Failed(error), None);
    if let Some(interruption) = error.downcast_ref::<Interruption>().copied().or(stopped_by_watch) {
        return match interruption {
            Interruption::Broke(limit) => failed(RunError::Limit(limit)),
            Interruption::Stopped(reason) => (RunOutcome::Stopped(reason), None),
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
        Some(trap @ Trap::UnreachableCodeReached) => {
            match wasmgrid_instrument::classify_trap(counters.fuel_used, counters.fuel_limit, counters.stack_used) {
                TrapCause::FuelLimit => failed(RunError::Limit(Limit::Fuel)),
                TrapCause::StackLimit => failed(RunError::Limit(Limit::Stack)),
                TrapCause::Module => failed(RunError::Trap(trap.to_string())),
            }
        }
        // The engine's own limit, a backstop above the pass's.
        Some(Trap::StackOverflow) => failed(RunError::Limit(Limit::Stack)),
        Some(trap) => failed(RunError::Trap(trap.to_string())),
        // Host errors come wrapped in a "wasm backtrace" context; the root cause says why.
        None => failed(RunError::Trap(first_line(&error.root_cause().to_string()))),
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let message = panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    first_line(&message)
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
        // File operations then run on the run's blocking pool, and a sleep in `poll_oneoff`
        // is a timer the sandbox can interrupt rather than a sleep of the run's thread.
        .allow_blocking_current_thread(false);
    builder.preopened_dir(&spec.input_dir, GUEST_INPUT_DIR, FsPerms::ReadOnly)?;
    builder.preopened_dir(&spec.scratch_dir, GUEST_SCRATCH_DIR, FsPerms::ReadWrite)?;
    builder.preopened_dir(&spec.scratch_dir, ".", FsPerms::ReadWrite)?;
    Ok(builder.build_p1())
}

/// Deepest directory nesting a scratch directory may have.
const MAX_SCRATCH_DEPTH: usize = 64;
/// Most files and directories a scratch directory may hold.
const MAX_SCRATCH_ENTRIES: usize = 100_000;

/// Bytes held by the files under `dir` (apparent sizes, so sparse files count in full), or
/// `None` when they cannot all be counted, which counts as over quota: a tree deeper than
/// [`MAX_SCRATCH_DEPTH`] or with more than [`MAX_SCRATCH_ENTRIES`] entries, or one the host
/// cannot walk (a module working from directory handles can nest directories past the
/// host's path length limit, where a walk by path cannot follow). The module may be
/// renaming and deleting meanwhile: an entry gone between the listing and its measure held
/// nothing.
pub fn scratch_bytes(dir: &Path) -> Option<u64> {
    let mut entries_left = MAX_SCRATCH_ENTRIES;
    tree_bytes(dir, 0, &mut entries_left)
}

fn tree_bytes(dir: &Path, depth: usize, entries_left: &mut usize) -> Option<u64> {
    if depth > MAX_SCRATCH_DEPTH {
        return None;
    }
    let mut total = 0u64;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && depth > 0 => return Some(0),
        Err(_) => return None,
    };
    for entry in entries {
        let entry = entry.ok()?;
        *entries_left = entries_left.checked_sub(1)?;
        let kind = entry.file_type().ok()?;
        let bytes = if kind.is_dir() {
            tree_bytes(&entry.path(), depth + 1, entries_left)?
        } else if kind.is_file() {
            match entry.metadata() {
                Ok(metadata) => metadata.len(),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
                Err(_) => return None,
            }
        } else {
            0
        };
        total = total.checked_add(bytes)?;
    }
    Some(total)
}

/// Whether the scratch directory holds more than `limit` bytes, or cannot be measured.
fn scratch_over(dir: &Path, limit: u64) -> bool {
    scratch_bytes(dir).is_none_or(|bytes| bytes > limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_spec(dir: &Path) -> RunSpec {
        let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workunits/probes/determinism.wat");
        let wasm = wat::parse_file(probe).unwrap();
        let module_path = dir.join("probe.wasm");
        std::fs::write(&module_path, &wasm).unwrap();
        let (input_dir, scratch_dir) = (dir.join("input"), dir.join("scratch"));
        std::fs::create_dir_all(&input_dir).unwrap();
        std::fs::create_dir_all(&scratch_dir).unwrap();
        RunSpec {
            module_hash: Sha256Hash::of(&wasm),
            module_path,
            args: Vec::new(),
            stdin: Vec::new(),
            input_dir,
            scratch_dir,
            limits: RunLimits { fuel: 1 << 30, memory_bytes: 64 << 20, output_bytes: 1 << 20, wall_time_seconds: 30 },
            scratch_limit_bytes: 1 << 20,
            seed: 42,
        }
    }

    /// Where Cranelift has failed on a module (as it panics on some float stores on riscv64),
    /// the module runs on Pulley with the same answer, and later runs, in later processes
    /// too, go to Pulley at once instead of crashing the compiler again.
    #[test]
    fn a_module_cranelift_cannot_compile_runs_on_pulley() {
        let dir = tempfile::tempdir().unwrap();
        let spec = probe_spec(dir.path());
        let control = Arc::new(RunControl::default());
        let native = Sandbox::new(&dir.path().join("native-cache")).unwrap().run(&spec, &control);
        assert_eq!(native.outcome, RunOutcome::Success, "{}", native.stderr);
        assert_eq!(native.backend, Some(Backend::Cranelift));

        let cache = dir.path().join("cache");
        let sandbox = Sandbox::new(&cache).unwrap();
        // What `prepare` records when Cranelift's compilation fails or panics.
        sandbox.primary.cache.mark_uncompilable(&spec.module_hash, "cranelift panicked: not implemented here");
        let fallback = sandbox.run(&spec, &control);
        assert_eq!(fallback.outcome, RunOutcome::Success, "{}", fallback.stderr);
        assert_eq!(fallback.backend, Some(Backend::Pulley));
        assert_eq!((&fallback.stdout, fallback.fuel_used), (&native.stdout, native.fuel_used));
        assert!(cache.join("pulley").read_dir().unwrap().count() > 0, "Pulley's code is cached apart");

        let later = Sandbox::new(&cache).unwrap().run(&spec, &control);
        assert_eq!(later.backend, Some(Backend::Pulley));
        assert_eq!(later.stdout, native.stdout);
    }
}
