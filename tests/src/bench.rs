//! What the benchmark programs share: starting the release server on its embedded
//! database, building the example work units, their heavy runs and plain wasmtime to run
//! them in, and summarising measurements.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::RunLimits;
use wasmgrid_sandbox::RunSpec;
use wasmgrid_server::database::embedded::connect_options_for;
use wasmtime::{Config, Engine, Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// A binary next to the running benchmark in `target/release/`.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.parent().context("the benchmark lives in a directory")?.join(name);
    if !path.exists() {
        bail!("{} is missing: build it with `cargo build --release` first", path.display());
    }
    Ok(path)
}

/// A release server on its own embedded PostgreSQL in a temporary directory.
pub struct BenchServer {
    pub child: Child,
    pub url: String,
    pub pid: u32,
    pub pool: sqlx::PgPool,
    pub data_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl BenchServer {
    /// Starts `wasmgrid-server serve` with `extra_args`, as a private grid unless they say
    /// otherwise: the simulated volunteers all connect from this machine.
    pub async fn start(extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(extra_args, &[]).await
    }

    /// [`BenchServer::start`], with variables added to the server's environment.
    pub async fn start_with_env(extra_args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Self> {
        let private_grid: &[&str] =
            if extra_args.contains(&"--private-grid") { &[] } else { &["--private-grid", "true"] };
        let dir = tempfile::Builder::new().prefix("wgbench-").tempdir_in("/tmp")?;
        // When run as root, the embedded PostgreSQL runs as another user, who must get in.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let data_dir = dir.path().canonicalize()?;
        let args: Vec<String> = private_grid.iter().chain(extra_args).map(|arg| arg.to_string()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(key, value)| (key.to_string(), value.clone())).collect();
        let (child, url, pid, pool) = Self::spawn(&data_dir, &args, &env).await?;
        Ok(Self { child, url, pid, pool, data_dir, args, env, _dir: dir })
    }

    async fn spawn(
        data_dir: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<(Child, String, u32, sqlx::PgPool)> {
        let mut command = Command::new(sibling_binary("wasmgrid-server")?);
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(key, value)| (key, value)));
        let (child, url) = start_announced_server(command, &data_dir.join("server.log")).await?;
        let pid = child.id().context("the server has a pid")?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(connect_options_for(&data_dir.join("postgres"), "wasmgrid"))
            .await
            .context("cannot connect to the server's embedded database")?;
        Ok((child, url, pid, pool))
    }

    /// Stops the server and starts it again on the same data directory (and so restarts
    /// its cluster, which takes settings such as `shared_preload_libraries` only then).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.pool.close().await;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        self.child.wait().await?;
        let (child, url, pid, pool) = Self::spawn(&self.data_dir, &self.args, &self.env).await?;
        (self.child, self.url, self.pid, self.pool) = (child, url, pid, pool);
        Ok(())
    }

    /// Stops the server (SIGTERM) and waits for it to shut its database down.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.pool.close().await;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        self.child.wait().await?;
        Ok(())
    }
}

/// Starts a `wasmgrid-server serve` command with its log in `log`, and waits (up to two
/// minutes, for a first start that initialises its database) for the line that says
/// where it listens; returns it running and its URL.
pub async fn start_announced_server(mut command: Command, log: &Path) -> anyhow::Result<(Child, String)> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the server")?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let line = tokio::time::timeout(Duration::from_secs(120), BufReader::new(stdout).lines().next_line())
        .await
        .context("the server did not start within two minutes")??
        .with_context(|| format!("the server exited; see {}", log.display()))?;
    let url = line.strip_prefix("wasmgrid-server listening on ").context("unexpected announcement")?.to_owned();
    Ok((child, url))
}

/// `cargo`, for a build a test or benchmark runs itself: the cargo running the tests, without
/// the lints CI runs as it compiles this workspace (see `.ci/run`), which are not for the
/// example work units nor for the builds for other platforms.
pub fn cargo() -> std::process::Command {
    let mut command = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.env_remove("RUSTC_WORKSPACE_WRAPPER").env_remove("CLIPPY_ARGS");
    command
}

/// Builds the example work units in `workunits/` for `target` (`None`: this machine) and
/// returns the directory holding the results.
pub fn build_workunits(target: Option<&str>) -> anyhow::Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workunits").canonicalize()?;
    let mut command = cargo();
    command.current_dir(&workspace).args(["build", "--release", "--quiet"]);
    if let Some(target) = target {
        command.args(["--target", target]);
    }
    let status = command.status().context("cannot run cargo to build the work units")?;
    if !status.success() {
        bail!("building the work units failed (is the wasm32-wasip1 target installed?)");
    }
    let mut out = workspace.join("target");
    if let Some(target) = target {
        out.push(target);
    }
    Ok(out.join("release"))
}

/// The `quantile` (0 to 1) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], quantile: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let index = ((samples.len() as f64 - 1.0) * quantile).round() as usize;
    samples[index]
}

pub fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

/// Peak resident memory of a process, in KiB, from `/proc/<pid>/status`.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// A compute-heavy run of an example work unit.
pub struct Workload {
    pub program: &'static str,
    pub args: &'static [&'static str],
    pub what: &'static str,
}

/// The example apps' heavy runs, which the benchmarks time.
pub const WORKLOADS: [Workload; 3] = [
    Workload {
        program: "primes",
        args: &["--count-only", "0", "1000000000"],
        what: "primes below 10^9 (integer sieve)",
    },
    Workload {
        program: "mandelbrot",
        args: &["8192", "8192", "2048", "1", "1", "2000"],
        what: "a 2048x2048 Mandelbrot tile (f64)",
    },
    Workload { program: "nbody", args: &["64", "40000", "1"], what: "64 bodies for 40,000 steps (f64)" },
];

/// Limits that no workload meets.
pub const LIMITS: RunLimits =
    RunLimits { fuel: 1 << 60, memory_bytes: 1 << 30, output_bytes: 256 << 20, wall_time_seconds: 3600 };

/// `a` as a multiple of `b`.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// How much slower `with` is than `without`, in percent.
pub fn percent(with: Duration, without: Duration) -> f64 {
    (ratio(with, without) - 1.0) * 100.0
}

/// The module under wasmtime as anyone would embed it: `config` (the default, or with one
/// feature switched on), WASI with standard output captured, nothing else.
pub fn run_plain(config: &Config, wasm: &[u8], args: &[&str]) -> anyhow::Result<(Vec<u8>, Duration)> {
    let engine = Engine::new(config)?;
    let module = Module::new(&engine, wasm)?;
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |context| context)?;
    let stdout = MemoryOutputPipe::new(LIMITS.output_bytes as usize);
    // A working directory of its own (nbody writes its progress and checkpoints there).
    let dir = tempfile::tempdir()?;
    let mut builder = WasiCtxBuilder::new();
    builder.arg("main.wasm").args(args).stdout(stdout.clone()).preopened_dir(dir.path(), ".", FsPerms::ReadWrite)?;
    let wasi = builder.build_p1();
    let mut store = Store::new(&engine, wasi);
    // Never reached: the epoch is never incremented, and the fuel is all there is.
    store.set_epoch_deadline(u64::MAX);
    // Fails, harmlessly, when the engine meters no fuel.
    let _ = store.set_fuel(u64::MAX);
    let started = Instant::now();
    let instance = linker.instantiate(&mut store, &module)?;
    let result = instance.get_typed_func::<(), ()>(&mut store, "_start")?.call(&mut store, ());
    let time = started.elapsed();
    match result {
        Ok(()) => {}
        Err(error) if error.downcast_ref::<I32Exit>().is_some_and(|exit| exit.0 == 0) => {}
        Err(error) => bail!("the module failed under plain wasmtime: {error:?}"),
    }
    Ok((stdout.contents().to_vec(), time))
}

/// A sandbox run of the module at `module_path` (`wasm`) with `args`, within [`LIMITS`], in
/// directories of its own under `scratch`.
pub fn run_spec(module_path: &Path, wasm: &[u8], args: &[&str], scratch: &Path) -> anyhow::Result<RunSpec> {
    let run_dir = tempfile::tempdir_in(scratch)?.keep();
    let (input_dir, scratch_dir) = (run_dir.join("input"), run_dir.join("scratch"));
    std::fs::create_dir_all(&input_dir)?;
    std::fs::create_dir_all(&scratch_dir)?;
    Ok(RunSpec {
        module_hash: Sha256Hash::of(wasm),
        module_path: module_path.to_path_buf(),
        args: args.iter().map(|arg| arg.to_string()).collect(),
        stdin: Vec::new(),
        input_dir,
        scratch_dir,
        limits: LIMITS,
        scratch_limit_bytes: 1 << 30,
        seed: 1,
    })
}

/// Work units loaded per transaction by [`load_bench_work_units`].
const LOAD_CHUNK: usize = 10_000;

/// Loads `count` work units (quorum 2, named `wu-N`) of an empty module straight into the
/// database of a server whose data directory is `data_dir`, as one app replicated as
/// `replication`: the server's load, not the publishing API's, is what the benchmarks
/// measure.
pub async fn load_bench_work_units(
    pool: &sqlx::PgPool,
    data_dir: &Path,
    count: usize,
    replication: wasmgrid_server::publishing::AppReplication,
) -> anyhow::Result<()> {
    use wasmgrid_server::publishing::{self, WorkUnitSpec};
    let api_error = |error: wasmgrid_server::http::error::ApiError| anyhow::anyhow!("{error}");
    let store = wasmgrid_server::blobs::DirectoryStore::open(data_dir.join("blobs"))?;
    let mut transaction = pool.begin().await?;
    let module =
        wasmgrid_server::blobs::store_bytes(&mut transaction, &store, b"\0asm\x01\0\0\0").await.map_err(api_error)?;
    let publisher = wasmgrid_server::publishers::ensure(&mut transaction, "bench").await?;
    let validator = wasmgrid_protocol::publish::ValidatorSpec::Bitwise;
    let app = publishing::create_app(&mut transaction, publisher, "bench", "", &validator).await.map_err(api_error)?;
    publishing::set_replication(&mut transaction, app, replication).await?;
    publishing::add_app_version(&mut transaction, app, module).await.map_err(api_error)?;
    let batch = publishing::create_batch(&mut transaction, app, "bench", &[]).await.map_err(api_error)?;
    transaction.commit().await?;
    for start in (0..count).step_by(LOAD_CHUNK) {
        let specs: Vec<WorkUnitSpec> =
            (start..(start + LOAD_CHUNK).min(count)).map(|i| WorkUnitSpec::new(format!("wu-{i}"))).collect();
        let mut transaction = pool.begin().await?;
        publishing::add_work_units(&mut transaction, batch, &specs).await.map_err(api_error)?;
        transaction.commit().await?;
    }
    publishing::refresh_queue_statistics(&mut *pool.acquire().await?).await?;
    Ok(())
}

/// Creates an account and registers its host number `index`, as a simulated volunteer with
/// 4 cores and 8 GiB does; returns the host's id and token.
pub async fn register_simulated_host(
    client: &wasmgrid_client::api::ServerClient,
    index: usize,
) -> anyhow::Result<wasmgrid_protocol::api::RegisterHostResponse> {
    let account = client.create_account(&format!("volunteer-{index}")).await?;
    let host = wasmgrid_protocol::api::RegisterHostRequest {
        name: format!("host-{index}"),
        os: "linux".into(),
        arch: "x86_64".into(),
        cores: 4,
        memory_bytes: 8 << 30,
        client_version: "bench".into(),
    };
    Ok(client.register_host(&account.account_key, &host).await?)
}
