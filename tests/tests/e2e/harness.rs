//! Running the real binaries: a server process on a fresh database, volunteer processes
//! with data directories of their own, and work published straight into the database.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wasmgrid_server::database::test_cluster;
use wasmgrid_server::publishing::{self, ReplicationPolicy, WorkUnitSpec};

/// `target/<profile>/`, where cargo put the binaries (it builds them for the server's and
/// the client's own integration tests in the same `cargo test` run).
fn binary(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let path = deps.parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`)",
        path.display()
    );
    path
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
}

impl Server {
    pub async fn start() -> Self {
        let database_url = test_cluster::fresh_database_url().await;
        let data_dir = tempfile::tempdir().unwrap();
        let (child, port) = spawn_server(&database_url, data_dir.path(), 0).await;
        let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
        Self { child: Some(child), url: format!("http://127.0.0.1:{port}"), port, data_dir, database_url, pool }
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
        let (child, _) = spawn_server(&self.database_url, self.data_dir.path(), self.port).await;
        self.child = Some(child);
    }

    /// Publishes `count` work units running `wasm`, with `policy`; returns their ids.
    pub async fn publish(&self, wasm: &[u8], count: usize, policy: ReplicationPolicy) -> Vec<i64> {
        let store = wasmgrid_server::blobs::DirectoryStore::open(self.data_dir.path().join("blobs")).unwrap();
        let mut transaction = self.pool.begin().await.unwrap();
        let module = wasmgrid_server::blobs::store_bytes(&mut transaction, &store, wasm).await.unwrap();
        let app = publishing::create_app(&mut transaction, "e2e").await.unwrap();
        publishing::add_app_version(&mut transaction, app, module).await.unwrap();
        let specs: Vec<_> =
            (0..count).map(|i| WorkUnitSpec { policy, ..WorkUnitSpec::new(format!("wu-{i}")) }).collect();
        let batch = publishing::create_batch(&mut transaction, app, "e2e", &specs).await.unwrap();
        transaction.commit().await.unwrap();
        sqlx::query_scalar("select id from work_unit where batch_id = $1 order by id")
            .bind(batch)
            .fetch_all(&self.pool)
            .await
            .unwrap()
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

async fn spawn_server(database_url: &str, data_dir: &Path, port: u16) -> (Child, u16) {
    let mut child = Command::new(binary("wasmgrid-server"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--idle-retry-after", "1", "--sweep-interval", "1"])
        .arg("--data-dir")
        .arg(data_dir)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::time::timeout(Duration::from_secs(60), BufReader::new(stdout).lines().next_line())
        .await
        .expect("the server announces itself")
        .unwrap()
        .expect("an announcement line");
    let port = line.rsplit(':').next().unwrap().parse().expect("a port");
    (child, port)
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
        let data_dir = tempfile::tempdir().unwrap();
        std::fs::write(data_dir.path().join("client.toml"), "backoff_min_seconds = 1\nbackoff_max_seconds = 2\n")
            .unwrap();
        let volunteer = Self { data_dir };
        let output = volunteer.command(&["attach", &server.url, "--name", name]).output().await.unwrap();
        assert!(output.status.success(), "attach failed: {}", String::from_utf8_lossy(&output.stderr));
        volunteer
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
        let child = self.command(&["run", "--exit-when-idle", "--cores", "2"]).spawn().unwrap();
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
