//! What the benchmark programs share: starting the release server on its embedded
//! database, building the example work units, and summarising measurements.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wasmgrid_server::database::embedded::connect_options_for;

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
    _dir: tempfile::TempDir,
}

impl BenchServer {
    /// Starts `wasmgrid-server serve` with `extra_args`.
    pub async fn start(extra_args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("wgbench-").tempdir_in("/tmp")?;
        // When run as root, the embedded PostgreSQL runs as another user, who must get in.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let data_dir = dir.path().canonicalize()?;
        let mut command = Command::new(sibling_binary("wasmgrid-server")?);
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra_args)
            .arg("--data-dir")
            .arg(&data_dir)
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn");
        let (child, url) = start_announced_server(command, &data_dir.join("server.log")).await?;
        let pid = child.id().context("the server has a pid")?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(connect_options_for(&data_dir.join("postgres"), "wasmgrid"))
            .await
            .context("cannot connect to the server's embedded database")?;
        Ok(Self { child, url, pid, pool, data_dir, _dir: dir })
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

/// Builds the example work units in `workunits/` for `target` (`None`: this machine) and
/// returns the directory holding the results.
pub fn build_workunits(target: Option<&str>) -> anyhow::Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workunits").canonicalize()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
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
