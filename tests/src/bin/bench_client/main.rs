//! `bench-client`: what the volunteer client costs on top of the work itself.
//!
//! 1. Sandbox speed: compute-heavy example work units from `workunits/` natively, under
//!    plain wasmtime (the library with default settings, then with wasmtime's own fuel
//!    metering and NaN canonicalisation, which is how the sandbox used to make runs
//!    deterministic), and under the client's sandbox, whose modules go through the
//!    instrumentation pass, with everything on and then without each part of the pass, to
//!    show what each costs. Best of `--repeat` runs; the outputs must be identical. Then the
//!    time the pass takes per MiB of module.
//! 2. Courtesy to the owner (see [`courtesy`]): how much slower the owner's own program runs
//!    beside a work unit on every core, and how fast running work units pause and resume.
//! 3. Per-task overhead: the real `wasmgrid` daemon, one slot, runs a batch of trivial work
//!    units from the real server (module cached after the first), and the time and CPU it
//!    spends per task, from claim to report, are printed.
//!
//! It is a measurement, not a test: nothing here fails on a timing.
//!
//! ```sh
//! cargo build --release --workspace && target/release/bench-client
//! ```

mod courtesy;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use wasmgrid_e2e::bench::{
    BenchServer, WORKLOADS, Workload, build_workunits, percent, ratio, run_plain, run_spec, sibling_binary,
};
use wasmgrid_instrument::Options;
use wasmgrid_protocol::publish::ValidatorSpec;
use wasmgrid_sandbox::engine::EngineSettings;
use wasmgrid_sandbox::{RunControl, RunOutcome, RunSpec, Sandbox};
use wasmgrid_server::blobs::{DirectoryStore, store_bytes};
use wasmgrid_server::publishers;
use wasmgrid_server::publishing::{self, ReplicationPolicy, WorkUnitSpec};
use wasmtime::Config;

#[derive(Parser)]
#[command(about = "Measures the sandbox against plain wasmtime and native code, and the client's per-task overhead")]
struct Args {
    /// Runs of each configuration; the best counts.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Trivial work units for the per-task overhead (0: skip that part).
    #[arg(long, default_value_t = 300)]
    tasks: usize,
    /// Measure only these workloads (primes, mandelbrot, nbody) [default: all].
    #[arg(long)]
    only: Vec<String>,
    /// Skip the sandbox's speed (and go straight to the courtesy to the owner).
    #[arg(long)]
    no_speed: bool,
}

/// A module that prints one line: the smallest real task.
const TRIVIAL_MODULE: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\10\00\00\00\03\00\00\00")
  (data (i32.const 16) "ok\0a")
  (func (export "_start")
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 24)))))
"#;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("building the example work units (native and wasm32-wasip1)...");
    let native_dir = build_workunits(None)?;
    let wasm_dir = build_workunits(Some("wasm32-wasip1"))?;
    let scratch = tempfile::tempdir()?;

    if !args.no_speed {
        println!();
        println!("Sandbox speed (best of {} runs)", args.repeat);
        for workload in WORKLOADS
            .iter()
            .filter(|workload| args.only.is_empty() || args.only.iter().any(|name| name == workload.program))
        {
            measure_workload(workload, &native_dir, &wasm_dir, scratch.path(), args.repeat)?;
        }
    }

    println!();
    println!("Courtesy to the owner (best of {} rounds)", args.repeat);
    courtesy::measure(&native_dir, &wasm_dir, scratch.path(), args.repeat)?;
    let nbody = std::fs::read(wasm_dir.join("nbody.wasm"))?;
    tokio::runtime::Runtime::new()?.block_on(courtesy::measure_daemon(&nbody))?;
    if args.tasks == 0 {
        return Ok(());
    }

    println!();
    println!("Per-task overhead ({} trivial tasks, one slot)", args.tasks);
    tokio::runtime::Runtime::new()?.block_on(measure_overhead(args.tasks))
}

fn measure_workload(
    workload: &Workload,
    native_dir: &Path,
    wasm_dir: &Path,
    scratch: &Path,
    repeat: usize,
) -> anyhow::Result<()> {
    let module_path = wasm_dir.join(format!("{}.wasm", workload.program));
    let wasm = std::fs::read(&module_path)?;
    println!();
    println!("{}: {}", workload.program, workload.what);

    // Every configuration runs once per round, round after round, so that the machine's
    // drift (it is shared and its speed wanders) falls on all of them alike; the best of
    // each counts.
    let configs = plain_configs()?;
    let full = EngineSettings::FULL;
    let without = |change: fn(&mut Options)| {
        let mut settings = full;
        change(&mut settings.instrumentation);
        settings
    };
    let sandbox_settings = [
        ("sandbox (instrumented: fuel, stack, NaN)", full),
        ("sandbox, pass without fuel", without(|options| options.fuel = false)),
        ("sandbox, pass without NaN canonicalisation", without(|options| options.nan_canonicalization = false)),
        ("sandbox, pass without the stack count", without(|options| options.stack = false)),
        ("sandbox, every loop header checked", without(|options| options.bounded_loops = false)),
    ];
    let mut sandboxes = Vec::new();
    for (index, (label, settings)) in sandbox_settings.into_iter().enumerate() {
        let sandbox = Sandbox::with_settings(&scratch.join(format!("cache-{index}")), settings)?;
        let spec = run_spec(&module_path, &wasm, workload.args, scratch)?;
        sandbox.prepare(&spec.module_hash, &spec.module_path).map_err(|error| anyhow::anyhow!("{error}"))?;
        sandboxes.push((label, sandbox, spec));
    }
    let mut native: Option<(Vec<u8>, Duration)> = None;
    let mut plain: Vec<(&str, Vec<u8>, Duration)> =
        configs.iter().map(|(label, _)| (*label, Vec::new(), Duration::MAX)).collect();
    let mut sandboxed: Vec<(&str, Vec<u8>, Duration)> =
        sandboxes.iter().map(|(label, _, _)| (*label, Vec::new(), Duration::MAX)).collect();
    let keep_best = |slot: &mut (&str, Vec<u8>, Duration), (output, time): (Vec<u8>, Duration)| {
        if time < slot.2 {
            *slot = (slot.0, output, time);
        }
    };
    for _ in 0..repeat.max(1) {
        let (output, time) = run_native(&native_dir.join(workload.program), workload.args)?;
        if native.as_ref().is_none_or(|(_, best)| time < *best) {
            native = Some((output, time));
        }
        for ((_, config), slot) in configs.iter().zip(plain.iter_mut()) {
            keep_best(slot, run_plain(config, &wasm, workload.args)?);
        }
        for ((_, sandbox, spec), slot) in sandboxes.iter().zip(sandboxed.iter_mut()) {
            keep_best(slot, run_sandboxed(sandbox, spec)?);
        }
    }
    let (native_output, native) = native.expect("at least one round");

    let (full, plain_default) = (sandboxed[0].2, plain[0].2);
    println!("  {:<52} {:>9.3} s", "native (same Rust code)", native.as_secs_f64());
    for (label, _, time) in plain.iter().chain(&sandboxed) {
        println!("  {:<52} {:>9.3} s", label, time.as_secs_f64());
    }
    println!("  {:<52} {:>9.2}x", "sandbox / plain wasmtime", ratio(full, plain_default));
    println!("  {:<52} {:>9.2}x", "sandbox / native", ratio(full, native));
    println!("  {:<52} {:>+8.1}%", "cost of the fuel count in the sandbox", percent(full, sandboxed[1].2));
    println!("  {:<52} {:>+8.1}%", "cost of NaN canonicalisation in the sandbox", percent(full, sandboxed[2].2));
    println!("  {:<52} {:>+8.1}%", "cost of the stack count in the sandbox", percent(full, sandboxed[3].2));
    println!("  {:<52} {:>+8.1}%", "cost of checking bounded loops at every header", percent(sandboxed[4].2, full));
    for (label, _, time) in &plain[1..] {
        println!(
            "  {:<52} {:>+8.1}%",
            format!("cost of {}", label.trim_start_matches("plain wasmtime + ")),
            percent(*time, plain_default)
        );
    }
    let identical = plain.iter().chain(&sandboxed).all(|(_, output, _)| *output == native_output);
    println!("  {:<52} {:>10}", "outputs identical everywhere", if identical { "yes" } else { "NO" });
    if !identical {
        bail!("{} gave different outputs in different configurations", workload.program);
    }
    let (instrumented, per_mib) = instrumentation_time(&wasm, repeat)?;
    println!(
        "  {:<52} {:>9.1} ms/MiB",
        format!("instrumenting ({} KiB -> {} KiB)", wasm.len() / 1024, instrumented / 1024),
        per_mib.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// The size of `wasm` instrumented, and the time the pass takes per MiB of it (best of
/// `repeat` passes).
fn instrumentation_time(wasm: &[u8], repeat: usize) -> anyhow::Result<(usize, Duration)> {
    let mut best = Duration::MAX;
    let mut size = 0;
    for _ in 0..repeat.max(1) {
        let started = Instant::now();
        size = wasmgrid_instrument::instrument(wasm, wasmgrid_instrument::Target::Sandbox)?.len();
        best = best.min(started.elapsed());
    }
    Ok((size, best.mul_f64((1 << 20) as f64 / wasm.len() as f64)))
}

/// Plain wasmtime as anyone would embed it, and with wasmtime's own determinism and metering
/// switched on: the way the sandbox worked before the instrumentation pass.
fn plain_configs() -> anyhow::Result<Vec<(&'static str, Config)>> {
    let mut fuel = Config::default();
    fuel.consume_fuel(true);
    let mut nan = Config::default();
    nan.cranelift_nan_canonicalization(true);
    let mut old_sandbox = Config::default();
    old_sandbox.consume_fuel(true).cranelift_nan_canonicalization(true);
    Ok(vec![
        ("plain wasmtime (default settings)", Config::default()),
        ("plain wasmtime + its fuel metering", fuel),
        ("plain wasmtime + its NaN canonicalisation", nan),
        ("plain wasmtime + both (the old sandbox's engine)", old_sandbox),
    ])
}

fn run_native(program: &Path, args: &[&str]) -> anyhow::Result<(Vec<u8>, Duration)> {
    // A working directory of its own (nbody writes its progress and checkpoints there).
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let output = std::process::Command::new(program).args(args).current_dir(dir.path()).output()?;
    let time = started.elapsed();
    if !output.status.success() {
        bail!("{} failed: {}", program.display(), String::from_utf8_lossy(&output.stderr));
    }
    Ok((output.stdout, time))
}

fn run_sandboxed(sandbox: &Arc<Sandbox>, spec: &RunSpec) -> anyhow::Result<(Vec<u8>, Duration)> {
    // An empty scratch directory every time: nbody would resume from its checkpoint.
    std::fs::remove_dir_all(&spec.scratch_dir)?;
    std::fs::create_dir_all(&spec.scratch_dir)?;
    let started = Instant::now();
    let report = sandbox.spawn(spec.clone(), Arc::new(RunControl::default()))?.blocking_recv()?;
    let time = started.elapsed();
    if report.outcome != RunOutcome::Success {
        bail!("the sandboxed run failed: {:?} ({})", report.outcome, report.stderr);
    }
    Ok((report.stdout, time))
}

async fn measure_overhead(tasks: usize) -> anyhow::Result<()> {
    let server =
        BenchServer::start(&["--busy-retry-after", "0", "--idle-retry-after", "1", "--sweep-interval", "1"]).await?;
    let wasm = wat::parse_str(TRIVIAL_MODULE)?;
    let client_dir = tempfile::tempdir()?;
    let wasmgrid = sibling_binary("wasmgrid")?;
    let attach = std::process::Command::new(&wasmgrid)
        .arg("--data-dir")
        .arg(client_dir.path())
        .args(["attach", &server.url, "--name", "bench"])
        .output()?;
    if !attach.status.success() {
        bail!("attach failed: {}", String::from_utf8_lossy(&attach.stderr));
    }

    // A first task compiles and caches the module; the measured ones find it cached.
    publish(&server, &wasm, "warm-up", 1).await?;
    run_daemon(&wasmgrid, client_dir.path()).await?;
    publish(&server, &wasm, "measured", tasks).await?;
    let run = run_daemon(&wasmgrid, client_dir.path()).await?;

    let validated: i64 =
        sqlx::query_scalar("select count(*) from work_unit where state = 'validated'").fetch_one(&server.pool).await?;
    let module_ms: Option<i64> =
        sqlx::query_scalar("select sum(run_time_ms)::bigint from replica").fetch_one(&server.pool).await?;
    server.stop().await?;
    if validated != tasks as i64 + 1 {
        bail!("only {validated} of {} work units were validated", tasks + 1);
    }
    let per_task = |total: Duration| total.as_secs_f64() * 1000.0 / tasks as f64;
    println!("  work units validated                           {:>10}", validated);
    println!("  wall time per task, claim to report            {:>7.2} ms", per_task(run.wall));
    println!("  client CPU per task (user + system)            {:>7.2} ms", per_task(run.cpu));
    println!(
        "  of which the modules' own runs (reported)      {:>7.2} ms",
        module_ms.unwrap_or(0) as f64 / tasks as f64
    );
    println!("  client peak memory                             {:>7} MiB", run.peak_rss_kib / 1024);
    Ok(())
}

async fn publish(server: &BenchServer, wasm: &[u8], name: &str, count: usize) -> anyhow::Result<()> {
    publish_with_args(server, wasm, name, count, &[]).await
}

/// Publishes `count` work units of `wasm` with `args`, one replica each.
async fn publish_with_args(
    server: &BenchServer,
    wasm: &[u8],
    name: &str,
    count: usize,
    args: &[&str],
) -> anyhow::Result<()> {
    let store = DirectoryStore::open(server.data_dir.join("blobs"))?;
    let mut transaction = server.pool.begin().await?;
    let module = store_bytes(&mut transaction, &store, wasm).await.map_err(|error| anyhow::anyhow!("{error}"))?;
    let publisher = publishers::ensure(&mut transaction, "bench").await?;
    let app = publishing::create_app(&mut transaction, publisher, name, "", &ValidatorSpec::Bitwise)
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    publishing::add_app_version(&mut transaction, app, module).await.map_err(|error| anyhow::anyhow!("{error}"))?;
    let policy = ReplicationPolicy { min_quorum: 1, target_replicas: 1, ..ReplicationPolicy::default() };
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let specs: Vec<WorkUnitSpec> = (0..count)
        .map(|i| WorkUnitSpec { policy, args: args.clone(), ..WorkUnitSpec::new(format!("{name}-{i}")) })
        .collect();
    publishing::create_batch(&mut transaction, app, name, &specs).await.map_err(|error| anyhow::anyhow!("{error}"))?;
    transaction.commit().await?;
    Ok(())
}

struct DaemonRun {
    wall: Duration,
    cpu: Duration,
    peak_rss_kib: u64,
}

/// Runs `wasmgrid run --cores 1 --exit-when-idle` to the end; its wall time, CPU time
/// (from the kernel's accounting of the finished process) and peak memory.
async fn run_daemon(wasmgrid: &Path, data_dir: &Path) -> anyhow::Result<DaemonRun> {
    let (wasmgrid, data_dir): (PathBuf, PathBuf) = (wasmgrid.to_path_buf(), data_dir.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let child = std::process::Command::new(&wasmgrid)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["run", "--cores", "1", "--exit-when-idle"])
            .env("RUST_LOG", "warn")
            .spawn()
            .context("cannot start the daemon")?;
        let mut status = 0;
        // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waiting for our own child, with valid pointers; `child` is not waited on
        // elsewhere.
        let waited = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
        let wall = started.elapsed();
        if waited < 0 {
            return Err(std::io::Error::last_os_error()).context("waiting for the daemon");
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            bail!("the daemon failed (wait status {status})");
        }
        let seconds = |time: libc::timeval| Duration::new(time.tv_sec as u64, time.tv_usec as u32 * 1000);
        Ok(DaemonRun {
            wall,
            cpu: seconds(usage.ru_utime) + seconds(usage.ru_stime),
            peak_rss_kib: usage.ru_maxrss as u64,
        })
    })
    .await?
}
