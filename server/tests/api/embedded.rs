//! The real `wasmgrid-server` binary on its embedded PostgreSQL: started, stopped, killed
//! and started again.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wasmgrid_client::api::ServerClient;
use wasmgrid_protocol::api::RegisterHostRequest;

const SERVER: &str = env!("CARGO_BIN_EXE_wasmgrid-server");

struct RunningServer {
    child: Child,
    client: ServerClient,
}

/// A data directory PostgreSQL can reach even when the server runs as root and hands the
/// cluster to an unprivileged user.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("wg-embedded-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

async fn start(data_dir: &Path) -> RunningServer {
    let mut child = Command::new(SERVER)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::time::timeout(Duration::from_secs(120), BufReader::new(stdout).lines().next_line())
        .await
        .expect("the server announces its address in time")
        .unwrap()
        .expect("the server printed its address");
    let url = line.strip_prefix("wasmgrid-server listening on ").expect("the announcement line").to_owned();
    let client = ServerClient::new(&url).unwrap();
    let health = client.request(reqwest::Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(health.status(), 200);
    RunningServer { child, client }
}

impl RunningServer {
    async fn terminate(mut self) -> std::process::ExitStatus {
        signal(&self.child, libc::SIGTERM);
        tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await.expect("stops in time").unwrap()
    }

    async fn kill(mut self) {
        signal(&self.child, libc::SIGKILL);
        self.child.wait().await.unwrap();
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    let pid = child.id().expect("still running") as libc::pid_t;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, signal) };
}

fn pid_file(data_dir: &Path) -> PathBuf {
    data_dir.join("postgres").join("postmaster.pid")
}

/// PostgreSQL removes its pid file when it has shut down.
async fn wait_for_postgres_to_stop(data_dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while pid_file(data_dir).exists() {
        assert!(Instant::now() < deadline, "PostgreSQL is still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn host() -> RegisterHostRequest {
    RegisterHostRequest {
        name: "laptop".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        cores: 2,
        memory_bytes: 1 << 30,
        client_version: "test".into(),
    }
}

#[tokio::test]
async fn the_server_owns_its_postgres_and_keeps_data_across_restarts_and_crashes() {
    let dir = data_dir();

    let server = start(dir.path()).await;
    let account = server.client.create_account("first run").await.unwrap();
    assert!(pid_file(dir.path()).exists(), "the cluster runs in the data directory");
    let status = server.terminate().await;
    assert!(status.success(), "SIGTERM is a clean shutdown: {status}");
    assert!(!pid_file(dir.path()).exists(), "the cluster stopped with the server");

    let server = start(dir.path()).await;
    server.client.register_host(&account.account_key, &host()).await.expect("the account survived a restart");
    server.kill().await;
    wait_for_postgres_to_stop(dir.path()).await;

    let server = start(dir.path()).await;
    server.client.register_host(&account.account_key, &host()).await.expect("the account survived a crash");
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn a_stale_postmaster_pid_from_a_crash_does_not_stop_the_server() {
    let dir = data_dir();
    let server = start(dir.path()).await;
    assert!(server.terminate().await.success());
    // As after a power cut: the pid file survives, and its pid now belongs to another
    // process (this test).
    let stale = format!("{}\n{}\n", std::process::id(), dir.path().join("postgres").display());
    std::fs::write(pid_file(dir.path()), stale).unwrap();

    let server = start(dir.path()).await;
    server.client.create_account("after the crash").await.expect("the server works");
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn without_postgres_binaries_the_server_says_what_to_install_in_one_line() {
    let dir = data_dir();
    let output = Command::new(SERVER)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .env("WASMGRID_POSTGRES_BIN_DIR", "/nonexistent")
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();

    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("apt-get install postgresql"), "{stderr}");
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}

/// `wasmgrid-server token create` on a data directory; returns the token.
async fn create_token(data_dir: &Path, name: &str) -> String {
    let output = Command::new(SERVER)
        .args(["token", "create", "--scope", "publish", "--name", name, "--json", "--data-dir"])
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "token create: {}", String::from_utf8_lossy(&output.stderr));
    let created: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    created["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn publisher_tokens_are_created_beside_a_running_server_and_while_it_is_stopped() {
    use wasmgrid_client::publish::client::PublisherClient;
    let dir = data_dir();
    // A directory without a server's database is refused: most likely a mistyped path.
    let output = Command::new(SERVER)
        .args(["token", "create", "--scope", "publish", "--data-dir"])
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("holds no server database"));

    assert!(start(dir.path()).await.terminate().await.success());
    // While the server is stopped: the command starts the cluster for itself and stops it.
    let early = create_token(dir.path(), "early").await;
    wait_for_postgres_to_stop(dir.path()).await;

    let server = start(dir.path()).await;
    // Beside the running server, on its cluster, without stopping it.
    let late = create_token(dir.path(), "late").await;
    for token in [early, late] {
        let publisher = PublisherClient::new(server.client.clone(), token);
        assert_eq!(publisher.apps().await.unwrap(), vec![], "the token is accepted");
    }
    assert!(server.terminate().await.success());
}

/// The pid in the cluster's `postmaster.pid`, once the file names one.
/// Kills the postmaster of the cluster in `data_dir` outright, as the OOM killer would;
/// its pid.
async fn kill_postmaster(data_dir: &Path) -> u32 {
    let pid = postmaster_pid(data_dir).await;
    // SAFETY: signalling the test's own server's PostgreSQL.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    pid
}

async fn postmaster_pid(data_dir: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(pid) = std::fs::read_to_string(pid_file(data_dir))
            .ok()
            .and_then(|text| text.lines().next().and_then(|line| line.trim().parse().ok()))
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no postmaster.pid");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_running(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| !cmdline.is_empty())
}

/// Waits until the server answers `/healthz` with 200 and creates an account again.
async fn wait_until_serving(server: &RunningServer) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let healthy =
            server.client.request(reqwest::Method::GET, "/healthz").send().await.is_ok_and(|r| r.status() == 200);
        if healthy && server.client.create_account("after the outage").await.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "the server did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_killed_postmaster_is_restarted_and_the_server_recovers_by_itself() {
    let dir = data_dir();
    let server = start(dir.path()).await;
    let first = kill_postmaster(dir.path()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while postmaster_pid(dir.path()).await == first || !is_running(postmaster_pid(dir.path()).await) {
        assert!(Instant::now() < deadline, "the server did not restart its PostgreSQL");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until_serving(&server).await;

    assert!(server.terminate().await.success());
    assert!(!pid_file(dir.path()).exists(), "the restarted cluster stopped with the server");
}

#[tokio::test]
async fn a_cluster_restarted_by_hand_is_used_and_stopped_with_the_server() {
    use std::os::unix::fs::MetadataExt;
    let dir = data_dir();
    let server = start(dir.path()).await;
    let first = postmaster_pid(dir.path()).await;
    let cluster = dir.path().join("postgres");
    let binaries = wasmgrid_server::database::embedded::PostgresBinaries::find().unwrap();
    let pg_ctl = binaries.postgres.with_file_name("pg_ctl");
    // As its owner (PostgreSQL refuses root), with the options it was started with.
    let owner = std::fs::metadata(&cluster).unwrap();
    // Its log goes to a file: a postmaster left holding pg_ctl's output would keep it open.
    let restarted = std::process::Command::new(pg_ctl)
        .args(["restart", "--mode", "fast", "--wait", "--silent", "--pgdata"])
        .arg(&cluster)
        .arg("--log")
        .arg(cluster.join("restarted-by-hand.log"))
        .uid(owner.uid())
        .gid(owner.gid())
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(restarted.success(), "pg_ctl restart failed: see {}", cluster.join("restarted-by-hand.log").display());
    let by_hand = postmaster_pid(dir.path()).await;
    assert_ne!(by_hand, first);
    wait_until_serving(&server).await;
    assert_eq!(postmaster_pid(dir.path()).await, by_hand, "the server used the cluster started by hand");

    assert!(server.terminate().await.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while is_running(by_hand) {
        assert!(Instant::now() < deadline, "the server left the PostgreSQL started by hand running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!pid_file(dir.path()).exists());
}

#[tokio::test]
async fn a_server_stopped_while_its_postmaster_is_down_stops_promptly_and_leaves_none_running() {
    let dir = data_dir();
    let server = start(dir.path()).await;
    kill_postmaster(dir.path()).await;
    let status = server.terminate().await;

    assert!(status.success(), "{status}");
    let cluster = dir.path().join("postgres");
    assert!(
        wasmgrid_server::database::embedded::running_postmaster(&cluster).is_none(),
        "no PostgreSQL is left running on the cluster"
    );
}
