//! The embedded default: a private PostgreSQL cluster that the server starts and owns.
//!
//! The cluster lives in `<data-dir>/postgres`, listens only on a Unix socket inside that
//! directory (no TCP port), and trusts local connections: the socket is only reachable by
//! the cluster's owner and root. It runs the machine's own PostgreSQL binaries. Because
//! PostgreSQL refuses to run as root, a server running as root runs the cluster as an
//! unprivileged system user instead.
//!
//! The postmaster is a direct child of this process and is told by the kernel to shut down
//! when this process dies (`PR_SET_PDEATHSIG`), so a crashed server leaves no orphan behind;
//! a stale `postmaster.pid` left by a crash is recognised and removed before starting.
//!
//! While the server runs, [`EmbeddedPostgres::supervise`] restarts the cluster if it dies
//! (with a capped backoff), or adopts one that someone restarted by hand (`pg_ctl`); when
//! the server stops, it stops whichever postmaster runs its cluster. Signals go only to a
//! process known to be that postmaster: its own child, not yet reaped, or the pid in
//! `postmaster.pid`, checked through a pidfd so that a reused pid is never signalled.

use std::fs;
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;

/// Name of the cluster's superuser role and of the server's database.
const ROLE: &str = "wasmgrid";
const DATABASE: &str = "wasmgrid";
/// The port only names the socket file (`.s.PGSQL.5432`); no TCP port is opened.
const PORT: u16 = 5432;
/// Unix socket paths are limited to 107 bytes on Linux.
const MAX_SOCKET_PATH: usize = 107;
/// Names the directory of the PostgreSQL server binaries, overriding the search.
const BIN_DIR_VARIABLE: &str = "WASMGRID_POSTGRES_BIN_DIR";
/// Users tried, in order, to own the cluster when the server runs as root.
const UNPRIVILEGED_USERS: &[&str] = &["postgres", "nobody"];

/// How the cluster should behave: durable for a real server, fast for throwaway test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on, the normal PostgreSQL guarantees.
    Durable,
    /// fsync off: for throwaway clusters whose data may be lost on a machine crash.
    Throwaway,
}

/// The PostgreSQL server binaries found on this machine.
#[derive(Debug, Clone)]
pub struct PostgresBinaries {
    pub initdb: PathBuf,
    pub postgres: PathBuf,
}

impl PostgresBinaries {
    /// Finds `initdb` and `postgres` in `$WASMGRID_POSTGRES_BIN_DIR` if it is set (for
    /// installations elsewhere), otherwise on `PATH`, then in the newest
    /// `/usr/lib/postgresql/<version>/bin` (where Debian and Ubuntu put them).
    pub fn find() -> anyhow::Result<Self> {
        let dirs: Vec<PathBuf> = match std::env::var_os(BIN_DIR_VARIABLE) {
            Some(dir) => vec![PathBuf::from(dir)],
            None => std::env::var_os("PATH")
                .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .chain(debian_postgres_bin_dirs())
                .collect(),
        };
        for dir in dirs {
            let initdb = dir.join("initdb");
            let postgres = dir.join("postgres");
            if is_executable(&initdb) && is_executable(&postgres) {
                return Ok(Self { initdb, postgres });
            }
        }
        bail!(
            "no PostgreSQL server binaries (initdb, postgres) found on PATH or under \
             /usr/lib/postgresql/*/bin: install them with `apt-get install postgresql`, or set \
             DATABASE_URL to use an existing PostgreSQL server"
        )
    }
}

fn debian_postgres_bin_dirs() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut versions: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The operating-system user that owns and runs the cluster.
#[derive(Debug, Clone, Copy)]
struct ClusterUser {
    uid: u32,
    gid: u32,
}

impl ClusterUser {
    /// This process's own user, or an unprivileged one when running as root.
    fn choose() -> anyhow::Result<Option<Self>> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        for name in UNPRIVILEGED_USERS {
            if let Some(user) = lookup_user(name) {
                return Ok(Some(user));
            }
        }
        bail!(
            "running as root, and PostgreSQL refuses to run as root; none of the users {:?} \
             exists to run it: create one (`useradd --system postgres`) or run wasmgrid-server \
             as an unprivileged user",
            UNPRIVILEGED_USERS
        )
    }
}

/// Looks a user up in the system's user database.
fn lookup_user(name: &str) -> Option<ClusterUser> {
    let c_name = std::ffi::CString::new(name).ok()?;
    let mut record: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, correctly sized storage owned by this frame;
    // getpwnam_r writes only within `buffer` and `record`.
    let status =
        unsafe { libc::getpwnam_r(c_name.as_ptr(), &mut record, buffer.as_mut_ptr(), buffer.len(), &mut result) };
    if status != 0 || result.is_null() {
        return None;
    }
    Some(ClusterUser { uid: record.pw_uid, gid: record.pw_gid })
}

/// A running PostgreSQL cluster owned by this process.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    cluster_dir: PathBuf,
    binaries: PostgresBinaries,
    user: Option<ClusterUser>,
    durability: Durability,
    postmaster: Mutex<Option<Postmaster>>,
}

/// The postmaster child and the thread that spawned it and waits for it. The kernel's
/// parent-death signal follows the spawning *thread*, so that thread must live exactly as
/// long as the child: it does, because all it does is wait for it.
#[derive(Debug)]
struct Postmaster {
    pid: u32,
    /// Set, under its lock, just before the waiter reaps the child: until then the pid is
    /// the child's (alive, or a zombie) and cannot belong to anything else.
    reaped: Arc<Mutex<bool>>,
    waiter: JoinHandle<std::io::Result<ExitStatus>>,
}

impl Postmaster {
    /// Sends `signal` to the child unless it has been reaped; whether it was sent.
    fn signal(&self, signal: libc::c_int) -> bool {
        let reaped = self.reaped.lock().expect("postmaster state poisoned");
        if *reaped {
            return false;
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(self.pid as libc::pid_t, signal) == 0 }
    }

    fn has_exited(&self) -> bool {
        self.waiter.is_finished() || *self.reaped.lock().expect("postmaster state poisoned")
    }

    /// Fast shutdown, then waits for the child to exit.
    fn shut_down(self) -> anyhow::Result<ExitStatus> {
        self.signal(libc::SIGINT);
        self.join()
    }

    /// Waits for the child to exit (it has, or is exiting) and returns how it ended.
    fn join(self) -> anyhow::Result<ExitStatus> {
        let status = self.waiter.join().map_err(|_| anyhow::anyhow!("postmaster waiter panicked"))??;
        Ok(status)
    }
}

/// The longest wait between attempts to restart a cluster that died.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);
/// How often the supervisor looks at the cluster.
const SUPERVISION_INTERVAL: Duration = Duration::from_millis(250);

impl EmbeddedPostgres {
    /// The cluster directory for a server data directory.
    pub fn cluster_dir(data_dir: &Path) -> PathBuf {
        data_dir.join("postgres")
    }

    /// Creates the cluster on first use, then starts it and creates the server's database.
    /// Returns once PostgreSQL accepts connections.
    pub async fn start(data_dir: &Path, durability: Durability) -> anyhow::Result<Self> {
        let binaries = PostgresBinaries::find()?;
        let user = ClusterUser::choose()?;
        fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
        let data_dir = data_dir
            .canonicalize()
            .with_context(|| format!("cannot resolve the data directory {}", data_dir.display()))?;
        let cluster_dir = Self::cluster_dir(&data_dir);
        let socket = cluster_dir.join(format!(".s.PGSQL.{PORT}"));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "the data directory path {} is too long for PostgreSQL's Unix socket (at most \
                 {MAX_SOCKET_PATH} bytes for {}): choose a shorter --data-dir",
                data_dir.display(),
                socket.display()
            );
        }
        if let Some(user) = user {
            check_reachable_by(&data_dir, user)?;
        }

        if !cluster_dir.join("PG_VERSION").exists() {
            init_cluster(&binaries, &cluster_dir, user).await?;
        }
        remove_stale_pid_file(&cluster_dir)?;

        let postmaster = spawn_postmaster(&binaries, &cluster_dir, user, durability)?;
        let this = Self { cluster_dir, binaries, user, durability, postmaster: Mutex::new(Some(postmaster)) };
        this.wait_until_ready(Duration::from_secs(60)).await?;
        this.create_database_if_missing(DATABASE).await?;
        Ok(this)
    }

    /// Connection options for a database in this cluster.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        connect_options_for(&self.cluster_dir, database)
    }

    /// Connection options for the server's own database.
    pub fn server_database(&self) -> PgConnectOptions {
        self.connect_options(DATABASE)
    }

    /// A `postgres://` URL for the server's database, for tools and for other processes
    /// (a second server replica, the benchmark) that should share this cluster.
    pub fn database_url(&self) -> String {
        database_url_for(&self.cluster_dir, DATABASE)
    }

    async fn wait_until_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if self.postmaster_exited() {
                bail!(
                    "PostgreSQL exited during start-up; its log is {}",
                    self.cluster_dir.join("postgres.log").display()
                );
            }
            let options = self.connect_options("postgres");
            match sqlx::ConnectOptions::connect(&options).await {
                Ok(connection) => {
                    sqlx::Connection::close(connection).await.ok();
                    return Ok(());
                }
                Err(error) if started.elapsed() > timeout => {
                    return Err(error).context(format!(
                        "PostgreSQL did not accept connections within {timeout:?}; its log is {}",
                        self.cluster_dir.join("postgres.log").display()
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn postmaster_exited(&self) -> bool {
        let guard = self.postmaster.lock().expect("postmaster handle poisoned");
        guard.as_ref().is_none_or(Postmaster::has_exited)
    }

    /// Keeps the cluster running until `shutdown` fires. If the postmaster dies, it is
    /// restarted after a backoff (1 s, doubling up to 30 s), unless by then another one runs
    /// the cluster (restarted by hand with `pg_ctl`): that one is adopted, and stopped with
    /// the server. Meanwhile the server answers 503; it recovers by itself.
    pub async fn supervise(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        let (mut down, mut failed_restarts) = (false, 0u32);
        loop {
            if !crate::background::pause(SUPERVISION_INTERVAL, &mut shutdown).await {
                return;
            }
            if !self.postmaster_exited() || running_postmaster(&self.cluster_dir).is_some() {
                continue;
            }
            if !down {
                let exited = self.postmaster.lock().expect("postmaster handle poisoned").take().map(Postmaster::join);
                let status = match exited {
                    Some(Ok(status)) => status.to_string(),
                    Some(Err(error)) => format!("{error:#}"),
                    None => "stopped outside the server".to_owned(),
                };
                tracing::error!(status, "the embedded PostgreSQL exited; restarting it");
                down = true;
            }
            if !crate::background::pause(backoff, &mut shutdown).await {
                return;
            }
            if let Some(pid) = running_postmaster(&self.cluster_dir) {
                tracing::warn!(pid, "the embedded PostgreSQL was restarted outside the server; using it");
                (down, backoff) = (false, Duration::from_secs(1));
                continue;
            }
            let restarted = tokio::select! {
                restarted = self.restart() => restarted,
                _ = shutdown.changed() => return,
            };
            match restarted {
                Ok(()) => {
                    tracing::info!(attempts = failed_restarts + 1, "the embedded PostgreSQL is running again");
                    (down, backoff, failed_restarts) = (false, Duration::from_secs(1), 0);
                }
                Err(error) => {
                    if failed_restarts == 0 {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "cannot restart the embedded PostgreSQL yet; retrying"
                        );
                    }
                    failed_restarts += 1;
                    // Doubling, with jitter: backends of a killed postmaster may need a
                    // moment to exit before PostgreSQL agrees to start again.
                    backoff = (backoff * 2).min(MAX_RESTART_BACKOFF).mul_f64(rand::random_range(0.75..1.0));
                }
            }
        }
    }

    async fn restart(&self) -> anyhow::Result<()> {
        let (binaries, cluster_dir, user, durability) =
            (self.binaries.clone(), self.cluster_dir.clone(), self.user, self.durability);
        let postmaster = tokio::task::spawn_blocking(move || {
            remove_stale_pid_file(&cluster_dir)?;
            spawn_postmaster(&binaries, &cluster_dir, user, durability)
        })
        .await??;
        if let Some(earlier) = self.postmaster.lock().expect("postmaster handle poisoned").replace(postmaster) {
            let _ = earlier.join();
        }
        self.wait_until_ready(Duration::from_secs(30)).await
    }

    /// Creates `name` unless it exists, optionally as a copy of `template`.
    pub async fn create_database_if_missing(&self, name: &str) -> anyhow::Result<()> {
        self.create_database(name, None, true).await
    }

    /// Creates a database, as a copy of `template` when given (much faster than running
    /// migrations again).
    pub async fn create_database(&self, name: &str, template: Option<&str>, if_missing: bool) -> anyhow::Result<()> {
        use sqlx::{Connection, Executor};
        let mut connection = sqlx::PgConnection::connect_with(&self.connect_options("postgres")).await?;
        let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(name)
            .fetch_one(&mut connection)
            .await?;
        if exists && if_missing {
            return Ok(());
        }
        let mut statement = format!("create database {}", quote_identifier(name));
        if let Some(template) = template {
            statement.push_str(&format!(" template {}", quote_identifier(template)));
        }
        connection.execute(statement.as_str()).await.with_context(|| format!("cannot create database {name}"))?;
        connection.close().await?;
        Ok(())
    }

    /// Fast shutdown: disconnects clients, writes a checkpoint and waits for PostgreSQL to
    /// exit; whoever started the postmaster that runs the cluster now.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let postmaster = self.postmaster.lock().expect("postmaster handle poisoned").take();
        let cluster_dir = self.cluster_dir.clone();
        tokio::task::spawn_blocking(move || stop_cluster(postmaster, &cluster_dir)).await?
    }
}

/// Stops our own postmaster, if it still runs, then any other that runs the cluster (one
/// restarted by hand).
fn stop_cluster(postmaster: Option<Postmaster>, cluster_dir: &Path) -> anyhow::Result<()> {
    if let Some(postmaster) = postmaster {
        let exited = postmaster.shut_down()?;
        tracing::info!(%exited, "embedded PostgreSQL stopped");
    }
    if let Some(pid) = running_postmaster(cluster_dir) {
        tracing::info!(pid, "stopping the PostgreSQL that was started outside the server on its cluster");
        stop_foreign_postmaster(pid, cluster_dir)?;
    }
    Ok(())
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        let postmaster = self.postmaster.lock().ok().and_then(|mut guard| guard.take());
        let _ = stop_cluster(postmaster, &self.cluster_dir);
    }
}

/// Connection options for the server's database in the cluster of `data_dir` (which must
/// be canonical, as the server makes it), running or not.
pub fn server_database_in(data_dir: &Path) -> PgConnectOptions {
    connect_options_for(&EmbeddedPostgres::cluster_dir(data_dir), DATABASE)
}

/// The pid of the postmaster running the cluster at `cluster_dir`, if one is.
pub fn running_postmaster(cluster_dir: &Path) -> Option<u32> {
    let contents = fs::read_to_string(cluster_dir.join("postmaster.pid")).ok()?;
    let pid = contents.lines().next()?.trim().parse::<u32>().ok()?;
    is_postmaster_of(pid, cluster_dir).then_some(pid)
}

/// Connection options for a database in the cluster at `cluster_dir`, running or not.
pub fn connect_options_for(cluster_dir: &Path, database: &str) -> PgConnectOptions {
    PgConnectOptions::new().socket(cluster_dir).port(PORT).username(ROLE).database(database)
}

fn database_url_for(cluster_dir: &Path, database: &str) -> String {
    format!("postgres://{ROLE}@localhost:{PORT}/{database}?host={}", cluster_dir.display())
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Signals the postmaster `pid` of `cluster_dir`, which is not our child: through a pidfd
/// opened before checking that the pid is that postmaster, so that a pid reused by another
/// process in between is never signalled. Whether it was sent.
fn signal_foreign_postmaster(pid: u32, cluster_dir: &Path, signal: libc::c_int) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return false;
    }
    // SAFETY: the descriptor was just opened and is owned here alone.
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd as std::os::fd::RawFd) };
    if !is_postmaster_of(pid, cluster_dir) {
        return false;
    }
    // SAFETY: pidfd_send_signal takes a live descriptor, a signal, no siginfo and no flags.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    sent == 0
}

/// Fast shutdown of a postmaster that is not our child, and a wait of up to a minute for it
/// to exit.
fn stop_foreign_postmaster(pid: u32, cluster_dir: &Path) -> anyhow::Result<()> {
    signal_foreign_postmaster(pid, cluster_dir, libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(60);
    while is_postmaster_of(pid, cluster_dir) {
        if Instant::now() > deadline {
            bail!("PostgreSQL (pid {pid}) on {} does not stop", cluster_dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// PostgreSQL running as `user` must be able to reach its directory: every ancestor of the
/// data directory needs to be searchable by it (a home directory of mode 0700 is not).
fn check_reachable_by(data_dir: &Path, user: ClusterUser) -> anyhow::Result<()> {
    for ancestor in data_dir.ancestors() {
        let meta = fs::metadata(ancestor)?;
        let mode = meta.mode();
        let searchable = if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !searchable {
            bail!(
                "the embedded PostgreSQL runs as uid {} (the server runs as root), which cannot \
                 enter {}: choose a --data-dir outside it, or set DATABASE_URL",
                user.uid,
                ancestor.display()
            );
        }
    }
    Ok(())
}

fn command_as(program: &Path, user: Option<ClusterUser>) -> Command {
    let mut command = Command::new(program);
    if let Some(user) = user {
        // std drops supplementary groups before setuid when running as root.
        command.uid(user.uid).gid(user.gid);
    }
    command.env_clear().env("LC_ALL", "C").env("PATH", "/usr/bin:/bin");
    command
}

async fn init_cluster(
    binaries: &PostgresBinaries,
    cluster_dir: &Path,
    user: Option<ClusterUser>,
) -> anyhow::Result<()> {
    // initdb wants an empty directory it can own; a half-finished earlier attempt (no
    // PG_VERSION) is discarded.
    if cluster_dir.exists() {
        fs::remove_dir_all(cluster_dir)
            .with_context(|| format!("cannot clear the unfinished cluster {}", cluster_dir.display()))?;
    }
    fs::create_dir_all(cluster_dir)?;
    fs::set_permissions(cluster_dir, fs::Permissions::from_mode(0o700))?;
    if let Some(user) = user {
        std::os::unix::fs::chown(cluster_dir, Some(user.uid), Some(user.gid))?;
    }
    let mut command = command_as(&binaries.initdb, user);
    command
        .arg("--pgdata")
        .arg(cluster_dir)
        .args(["--username", ROLE, "--auth", "trust", "--encoding", "UTF8", "--locale", "C", "--no-instructions"])
        .stdin(Stdio::null());
    let output = tokio::task::spawn_blocking(move || command.output()).await?.context("cannot run initdb")?;
    if !output.status.success() {
        bail!("initdb failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Clears the way for a postmaster to start on `cluster_dir`:
/// - a live postmaster on this cluster was left by a server that died without its child
///   noticing: it is stopped;
/// - a pid file naming a live process that is not one (the pid was reused, after a reboot
///   say) would stop PostgreSQL from starting: it is removed;
/// - a pid file naming no live process is left for PostgreSQL, which replaces it itself,
///   after checking that no backend of the dead postmaster still uses the cluster's shared
///   memory (removing it would skip that check, and could start a postmaster beside such
///   a backend).
fn remove_stale_pid_file(cluster_dir: &Path) -> anyhow::Result<()> {
    let pid_file = cluster_dir.join("postmaster.pid");
    let Ok(contents) = fs::read_to_string(&pid_file) else {
        return Ok(());
    };
    let Some(pid) = contents.lines().next().and_then(|line| line.trim().parse::<u32>().ok()) else {
        fs::remove_file(&pid_file)?;
        return Ok(());
    };
    if is_postmaster_of(pid, cluster_dir) {
        tracing::warn!(pid, "stopping a PostgreSQL left running by an earlier server");
        stop_foreign_postmaster(pid, cluster_dir)?;
    } else if Path::new(&format!("/proc/{pid}")).exists() {
        tracing::info!(pid, "removing a postmaster.pid whose pid now belongs to another process");
        fs::remove_file(&pid_file)?;
    }
    Ok(())
}

fn is_postmaster_of(pid: u32, cluster_dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let as_path = |bytes: &[u8]| Path::new(std::ffi::OsStr::from_bytes(bytes)).to_path_buf();
    let is_postgres = args.first().is_some_and(|program| as_path(program).ends_with("postgres"));
    is_postgres && args.iter().any(|arg| as_path(arg) == cluster_dir)
}

fn spawn_postmaster(
    binaries: &PostgresBinaries,
    cluster_dir: &Path,
    user: Option<ClusterUser>,
    durability: Durability,
) -> anyhow::Result<Postmaster> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cluster_dir.join("postgres.log"))
        .context("cannot open the PostgreSQL log")?;
    if let Some(user) = user {
        std::os::unix::fs::chown(cluster_dir.join("postgres.log"), Some(user.uid), Some(user.gid))?;
    }
    let mut command = command_as(&binaries.postgres, user);
    command
        .arg("-D")
        .arg(cluster_dir)
        .arg("-c")
        .arg("listen_addresses=")
        .arg("-c")
        .arg(format!("unix_socket_directories={}", cluster_dir.display()))
        .arg("-c")
        .arg("unix_socket_permissions=0700")
        .arg("-p")
        .arg(PORT.to_string())
        .args(["-c", "max_connections=200", "-c", "shared_buffers=128MB", "-c", "autovacuum_naptime=10s"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if durability == Durability::Throwaway {
        command.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
    }
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // async-signal-safe functions (prctl, getppid).
    unsafe {
        command.pre_exec(|| {
            // Runs after std's setuid, which would otherwise clear the setting. SIGINT is
            // PostgreSQL's fast shutdown.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
    spawn_waited(command).with_context(|| format!("cannot start {}", binaries.postgres.display()))
}

/// Spawns `command` on a thread of its own that waits for it: the thread notes, under the
/// child's `reaped` lock, that the child is about to be reaped, so that a signal sent under
/// that lock reaches the child or nothing.
fn spawn_waited(mut command: Command) -> anyhow::Result<Postmaster> {
    let reaped = Arc::new(Mutex::new(false));
    let reaped_by_waiter = reaped.clone();
    let (started, pid) = std::sync::mpsc::channel();
    let waiter = std::thread::Builder::new()
        .name("postmaster".into())
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let _ = started.send(Ok(child.id()));
                wait_without_reaping(child.id())?;
                *reaped_by_waiter.lock().expect("postmaster state poisoned") = true;
                child.wait()
            }
            Err(error) => {
                let message = error.to_string();
                let _ = started.send(Err(error));
                Err(std::io::Error::other(message))
            }
        })
        .context("cannot start the postmaster thread")?;
    let pid = pid.recv().context("the postmaster thread ended early")??;
    Ok(Postmaster { pid, reaped, waiter })
}

/// Waits until child `pid` has exited, leaving it to be reaped (`WNOWAIT`).
fn wait_without_reaping(pid: u32) -> std::io::Result<()> {
    loop {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is writable storage of the right type; the pid is our own child.
        let waited = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if waited == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawned(program: &str, args: &[&str]) -> Postmaster {
        let mut command = Command::new(program);
        command.args(args);
        spawn_waited(command).unwrap()
    }

    #[test]
    fn a_running_child_is_signalled() {
        let child = spawned("sleep", &["30"]);
        assert!(!child.has_exited());
        assert!(child.signal(libc::SIGTERM));
        let status = child.join().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGTERM));
    }

    #[test]
    fn a_reaped_child_is_never_signalled_since_its_pid_may_be_someone_elses() {
        let child = spawned("true", &[]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !child.waiter.is_finished() {
            assert!(Instant::now() < deadline, "`true` did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(child.has_exited());
        assert!(!child.signal(libc::SIGINT), "the pid of a reaped child is not ours to signal");
        assert!(child.join().unwrap().success());
    }

    #[test]
    fn a_process_that_is_not_the_clusters_postmaster_is_not_signalled() {
        let child = spawned("sleep", &["30"]);
        let elsewhere = Path::new("/nonexistent/cluster");
        assert!(!signal_foreign_postmaster(child.pid, elsewhere, libc::SIGTERM));
        assert!(!child.has_exited());
        child.shut_down().unwrap();
    }
}
