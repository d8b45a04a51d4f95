//! Running the real binaries: a server process on a fresh database, volunteer processes
//! with data directories of their own, and work published straight into the database.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::publish::ValidatorSpec;
use wasmgrid_server::database::test_cluster;
use wasmgrid_server::publishers;
use wasmgrid_server::publishing::{self, ReplicationPolicy, WorkUnitSpec};

/// `target/<profile>/`, where cargo put the binaries (it builds them for the server's and
/// the client's own integration tests in the same `cargo test` run).
pub fn binary(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let path = deps.parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`)",
        path.display()
    );
    path
}

/// One replica per work unit, accepted on its own: the policy of tests about one volunteer.
pub fn single() -> ReplicationPolicy {
    ReplicationPolicy { min_quorum: 1, target_replicas: 1, ..ReplicationPolicy::default() }
}

pub fn workunit(relative: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workunits").join(relative);
    wat::parse_file(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub port: u16,
    pub data_dir: tempfile::TempDir,
    pub database_url: String,
    pub pool: sqlx::PgPool,
    extra_args: Vec<String>,
    open_files: Option<(u64, u64)>,
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A server with `serve` flags of its own (replacing the harness's defaults).
    pub async fn start_with(extra_args: &[&str]) -> Self {
        let database_url = test_cluster::fresh_database_url().await;
        Self::start_in(tempfile::tempdir().unwrap(), database_url, extra_args).await
    }

    /// A server on `database_url` with its data in `data_dir` (prepared by the test: a
    /// small disk mounted in it, say). Its log goes to `server.log` there, for tests that
    /// read it, instead of the test's output.
    pub async fn start_in(data_dir: tempfile::TempDir, database_url: String, extra_args: &[&str]) -> Self {
        Self::start_limited(data_dir, database_url, extra_args, None).await
    }

    /// [`Self::start_in`], the server started with its open-file limit at `open_files`
    /// (soft, hard), as a service manager may start it.
    pub async fn start_limited(
        data_dir: tempfile::TempDir,
        database_url: String,
        extra_args: &[&str],
        open_files: Option<(u64, u64)>,
    ) -> Self {
        let extra_args: Vec<String> = extra_args.iter().map(|arg| arg.to_string()).collect();
        let (child, url) = spawn_server(&database_url, data_dir.path(), 0, &extra_args, open_files).await;
        let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
        Self { child: Some(child), port: port_of(&url), url, data_dir, database_url, pool, extra_args, open_files }
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The server's log, when it has one (see [`Self::start_in`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("server.log")).unwrap_or_default()
    }

    /// Sends the server `signal_number` (SIGHUP, say) and leaves it running.
    pub fn send(&self, signal_number: libc::c_int) {
        if let Some(child) = &self.child {
            signal(child, signal_number);
        }
    }

    /// Sends the server `signal` and waits for it to exit; returns how long that took.
    pub async fn stop_with(&mut self, signal_number: libc::c_int, timeout: Duration) -> Duration {
        let started = Instant::now();
        if let Some(mut child) = self.child.take() {
            signal(&child, signal_number);
            tokio::time::timeout(timeout, child.wait()).await.expect("the server stops in time").unwrap();
        }
        started.elapsed()
    }

    /// Stops the server (SIGTERM) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            child.wait().await.unwrap();
        }
    }

    /// Starts it again on the same port, database and data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        let (child, _) =
            spawn_server(&self.database_url, self.data_dir.path(), self.port, &self.extra_args, self.open_files).await;
        self.child = Some(child);
    }

    /// Starts it again as [`Self::restart`] does, with other `serve` flags.
    pub async fn restart_with(&mut self, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(|arg| arg.to_string()).collect();
        self.restart().await;
    }

    /// A second server process on the same database and data directory (so the same blob
    /// store), as a project with several server replicas runs them. Returns it and its URL.
    pub async fn start_twin(&self) -> (Child, String) {
        spawn_server(&self.database_url, self.data_dir.path(), 0, &self.extra_args, self.open_files).await
    }

    /// Publishes `count` work units running `wasm`, with `policy`; returns their ids.
    pub async fn publish(&self, wasm: &[u8], count: usize, policy: ReplicationPolicy) -> Vec<i64> {
        let specs: Vec<_> =
            (0..count).map(|i| WorkUnitSpec { policy, ..WorkUnitSpec::new(format!("wu-{i}")) }).collect();
        self.publish_app("e2e", wasm, &specs).await
    }

    /// Publishes a new app named `app` running `wasm`, with one batch of `specs`; returns
    /// the work units' ids.
    pub async fn publish_app(&self, app: &str, wasm: &[u8], specs: &[WorkUnitSpec]) -> Vec<i64> {
        let mut transaction = self.pool.begin().await.unwrap();
        let module = wasmgrid_server::blobs::store_bytes(&mut transaction, &self.blob_store(), wasm).await.unwrap();
        let publisher = publishers::ensure(&mut transaction, "e2e").await.unwrap();
        let app = publishing::create_app(&mut transaction, publisher, app, "", &ValidatorSpec::Bitwise).await.unwrap();
        publishing::add_app_version(&mut transaction, app, module).await.unwrap();
        let batch = publishing::create_batch(&mut transaction, app, "e2e", specs).await.unwrap();
        transaction.commit().await.unwrap();
        sqlx::query_scalar("select id from work_unit where batch_id = $1 order by id")
            .bind(batch)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// Stores an input blob for work units to name.
    pub async fn store_blob(&self, bytes: &[u8]) -> Sha256Hash {
        let mut connection = self.pool.acquire().await.unwrap();
        wasmgrid_server::blobs::store_bytes(&mut connection, &self.blob_store(), bytes).await.unwrap()
    }

    fn blob_store(&self) -> wasmgrid_server::blobs::DirectoryStore {
        wasmgrid_server::blobs::DirectoryStore::open(self.data_dir.path().join("blobs")).unwrap()
    }

    /// From now on, records the time of every scheduler request in `host_contact` (the
    /// server sets `host.last_contact_at` to its transaction's start on each one).
    pub async fn record_contacts(&self) {
        for statement in [
            "create table host_contact (host_id bigint not null, at timestamptz not null)",
            "create function record_host_contact() returns trigger language plpgsql as $$
             begin
                 insert into host_contact values (new.id, new.last_contact_at);
                 return new;
             end $$",
            "create trigger record_host_contact after update of last_contact_at on host for each row
             when (new.last_contact_at is distinct from old.last_contact_at)
             execute function record_host_contact()",
        ] {
            sqlx::query(statement).execute(&self.pool).await.unwrap();
        }
    }

    /// The recorded scheduler requests (see [`Self::record_contacts`]), oldest first.
    pub async fn contacts(&self) -> Vec<chrono::DateTime<chrono::Utc>> {
        sqlx::query_scalar("select at from host_contact order by at").fetch_all(&self.pool).await.unwrap()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// Waits until `sql` counts `expected`, or panics after `timeout`.
    pub async fn wait_for_count(&self, sql: &str, expected: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.count(sql).await;
            if count == expected {
                return;
            }
            assert!(Instant::now() < deadline, "{sql}: {count}, expected {expected}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `serve` flags for fast tests, unless the test gives its own. Every volunteer of a test
/// registers from this one machine, and connects from one address unless bound to its own.
const DEFAULT_SERVER_ARGS: [(&str, &str); 5] = [
    ("--private-grid", "true"),
    ("--idle-retry-after", "1"),
    ("--sweep-interval", "1"),
    ("--accounts-per-address", "100000"),
    ("--hosts-per-address", "100000"),
];

/// Starts a server process; returns it and the URL it announced (https with `--tls-cert`).
async fn spawn_server(
    database_url: &str,
    data_dir: &Path,
    port: u16,
    extra_args: &[String],
    open_files: Option<(u64, u64)>,
) -> (Child, String) {
    let defaults = DEFAULT_SERVER_ARGS
        .into_iter()
        .filter(|(flag, _)| !extra_args.iter().any(|arg| arg == flag))
        .flat_map(|(flag, value)| [flag, value]);
    let mut command = Command::new(binary("wasmgrid-server"));
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(defaults)
        .args(extra_args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    // A data directory the test prepared (one with a server.log in it) keeps the log there.
    let log = data_dir.join("server.log");
    if log.exists() {
        command.stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap());
    }
    if let Some((soft, hard)) = open_files {
        // SAFETY: runs in the child before exec and only calls setrlimit, which is
        // async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = command.spawn().expect("the server binary starts");
    let url = announced_url(&mut child).await;
    (child, url)
}

/// The URL a server process started with its standard output piped says it listens at.
pub async fn announced_url(server: &mut Child) -> String {
    let stdout = server.stdout.take().expect("the server's standard output is piped");
    let line = tokio::time::timeout(Duration::from_secs(60), BufReader::new(stdout).lines().next_line())
        .await
        .expect("the server announces itself")
        .unwrap()
        .expect("an announcement line");
    line.rsplit(' ').next().expect("a URL").to_owned()
}

/// The port of a URL the server announced.
pub fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().expect("a port")
}

pub fn signal(child: &Child, signal: libc::c_int) {
    if let Some(pid) = child.id() {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid as libc::pid_t, signal) };
    }
}

/// One volunteer machine: a data directory and the `wasmgrid` binary.
pub struct Volunteer {
    pub data_dir: tempfile::TempDir,
}

impl Volunteer {
    /// A new volunteer attached to `server` with a new account, retrying failed contacts
    /// after a second rather than BOINC's minute.
    pub async fn attach(server: &Server, name: &str) -> Self {
        let volunteer = Self::unattached();
        volunteer.attach_to(server, name, &[]).await;
        volunteer
    }

    /// A volunteer attached to nothing yet, retrying failed contacts after a second.
    pub fn unattached() -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        std::fs::write(data_dir.path().join("client.toml"), "backoff_min_seconds = 1\nbackoff_max_seconds = 2\n")
            .unwrap();
        Self { data_dir }
    }

    /// Attaches to one more project, with a new account and `attach` flags of its own.
    pub async fn attach_to(&self, server: &Server, name: &str, extra_args: &[&str]) {
        let mut args = vec!["attach", &server.url, "--name", name];
        args.extend(extra_args);
        let output = self.command(&args).output().await.unwrap();
        assert!(output.status.success(), "attach failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// The cached blobs, by file name (their SHA-256 in hex).
    pub fn cached_blobs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.data_dir.path().join("blobs"))
            .map(|entries| entries.flatten().filter_map(|entry| entry.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary("wasmgrid"));
        command
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs the daemon until it has nothing left to do; panics if it fails or takes longer
    /// than `timeout`.
    pub async fn run_until_idle(&self, timeout: Duration) {
        self.run_until_idle_with(&["--cores", "2"], timeout).await;
    }

    /// [`Self::run_until_idle`] with `run` flags of the test's choosing.
    pub async fn run_until_idle_with(&self, args: &[&str], timeout: Duration) {
        let mut all_args = vec!["run", "--exit-when-idle"];
        all_args.extend(args);
        let child = self.command(&all_args).spawn().unwrap();
        let output = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .expect("the daemon finished in time")
            .unwrap();
        assert!(output.status.success(), "the daemon failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    pub fn start(&self) -> Child {
        self.command(&["run", "--cores", "1"]).spawn().unwrap()
    }

    pub async fn status(&self) -> serde_json::Value {
        let output = self.command(&["status", "--json"]).output().await.unwrap();
        assert!(output.status.success());
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Waits until the daemon reports a task in `state` (running, finished...).
    pub async fn wait_for_task_state(&self, state: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status().await;
            if status["tasks"].as_array().unwrap().iter().any(|task| task["state"] == state) {
                return;
            }
            assert!(Instant::now() < deadline, "no task became {state}: {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The example work units built for `wasm32-wasip1` (once per test process).
pub fn example_module(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        wasmgrid_e2e::bench::build_workunits(Some("wasm32-wasip1")).expect("the example work units build")
    });
    dir.join(format!("{name}.wasm"))
}

/// A scientist: the `wasmgrid` binary with a server URL and a publisher token.
pub struct Publisher {
    pub server_url: String,
    pub token: String,
}

impl Server {
    /// A publisher token made by `wasmgrid-server token create` on this running server's
    /// database.
    pub async fn publisher(&self, name: &str) -> Publisher {
        Publisher { server_url: self.url.clone(), token: publisher_token(&self.database_url, name).await }
    }
}

/// A publisher token for `name` made by `wasmgrid-server token create` on `database_url`.
pub async fn publisher_token(database_url: &str, name: &str) -> String {
    let output = Command::new(binary("wasmgrid-server"))
        .args(["token", "create", "--scope", "publish", "--name", name, "--json"])
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "token create failed: {}", String::from_utf8_lossy(&output.stderr));
    let created: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    created["token"].as_str().unwrap().to_owned()
}

impl Publisher {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary("wasmgrid"));
        command
            .args(args)
            .env("WASMGRID_SERVER", &self.server_url)
            .env("WASMGRID_TOKEN", &self.token)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs a command with `--json` and returns its document; panics if it fails.
    pub async fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all_args = args.to_vec();
        all_args.push("--json");
        let output = self.command(&all_args).output().await.unwrap();
        assert!(output.status.success(), "wasmgrid {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!("wasmgrid {}: not JSON ({error}): {}", args.join(" "), String::from_utf8_lossy(&output.stdout))
        })
    }

    /// Runs a command that must fail; returns its standard error.
    pub async fn failure(&self, args: &[&str]) -> String {
        let output = self.command(args).output().await.unwrap();
        assert!(!output.status.success(), "wasmgrid {} succeeded", args.join(" "));
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// The same publisher through the client library, for what the commands do not show.
    pub fn client(&self) -> wasmgrid_client::publish::client::PublisherClient {
        let server = wasmgrid_client::api::ServerClient::new(&self.server_url).unwrap();
        wasmgrid_client::publish::client::PublisherClient::new(server, self.token.clone())
    }
}

/// Runs `module` directly in a fresh sandbox with `stdin`; returns its stdout and the
/// files it wrote. Blocking, like every sandbox run.
pub fn run_directly(module: &Path, args: &[&str], stdin: &[u8]) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = wasmgrid_sandbox::Sandbox::new(&dir.path().join("cache")).unwrap();
    let (input, scratch) = (dir.path().join("input"), dir.path().join("scratch"));
    std::fs::create_dir_all(&input).unwrap();
    std::fs::create_dir_all(&scratch).unwrap();
    let spec = wasmgrid_sandbox::RunSpec {
        module_hash: wasmgrid_protocol::Sha256Hash::of(&std::fs::read(module).unwrap()),
        module_path: module.to_owned(),
        args: args.iter().map(|arg| arg.to_string()).collect(),
        stdin: stdin.to_vec(),
        input_dir: input,
        scratch_dir: scratch.clone(),
        limits: wasmgrid_protocol::api::RunLimits {
            fuel: 1 << 40,
            memory_bytes: 256 << 20,
            output_bytes: 64 << 20,
            wall_time_seconds: 60,
        },
        scratch_limit_bytes: 64 << 20,
        seed: 7,
    };
    let report = sandbox.run(&spec, &std::sync::Arc::new(wasmgrid_sandbox::RunControl::default()));
    assert_eq!(report.outcome, wasmgrid_sandbox::RunOutcome::Success, "{}", report.stderr);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&scratch)
        .unwrap()
        .flatten()
        .map(|entry| (entry.file_name().into_string().unwrap(), std::fs::read(entry.path()).unwrap()))
        .collect();
    files.sort();
    (report.stdout, files)
}

/// `target/test-artifacts/` under the workspace root (created): files a test run keeps for
/// people to look at, such as screenshots.
pub fn test_artifact_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
    dir
}

/// A small tmpfs mounted at a directory for as long as it lives: a disk that fills up.
/// Mounting needs root, as CI has.
pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    pub fn mount(path: &Path, bytes: u64) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0755"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount runs");
        assert!(mounted.success(), "cannot mount a tmpfs at {} (the test needs root)", path.display());
        Self { path: path.to_owned() }
    }

    /// Fills the disk with one file, until no byte is left; returns its path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(error) => panic!("filling {}: {error}", self.path.display()),
            }
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
