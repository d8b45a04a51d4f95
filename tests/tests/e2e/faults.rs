//! The server when what it depends on fails: PostgreSQL stopped under it, the blob disk
//! full. It answers 503 (or 507) with advice that matches the outage, burns no CPU and
//! writes no flood of log lines meanwhile, stops promptly, recovers by itself, and no
//! volunteer loses a result.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use wasmgrid_client::api::ServerClient;
use wasmgrid_protocol::api::{RegisterHostRequest, SchedulerRequest};
use wasmgrid_server::database::{Durability, EmbeddedPostgres};

use crate::harness::{Server, SmallDisk, Volunteer, single, workunit};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A PostgreSQL of the test's own, which it can stop and start again under a server.
struct OwnPostgres {
    dir: tempfile::TempDir,
    cluster: Option<EmbeddedPostgres>,
}

impl OwnPostgres {
    async fn start() -> Self {
        // Reachable by the unprivileged user PostgreSQL runs as when the tests run as root.
        let dir = tempfile::Builder::new().prefix("wg-faults-").tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cluster = EmbeddedPostgres::start(dir.path(), Durability::Throwaway).await.unwrap();
        Self { dir, cluster: Some(cluster) }
    }

    fn url(&self) -> String {
        self.cluster.as_ref().expect("running").database_url()
    }

    /// A fast shutdown, as `pg_ctl stop` does.
    async fn stop(&mut self) {
        self.cluster.take().expect("running").stop().await.unwrap();
    }

    async fn restart(&mut self) {
        self.cluster = Some(EmbeddedPostgres::start(self.dir.path(), Durability::Throwaway).await.unwrap());
    }
}

/// A data directory with an (empty) log file, so that the server logs there.
fn logged_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.log"), "").unwrap();
    dir
}

/// User and system CPU time a process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

fn host(name: &str) -> RegisterHostRequest {
    RegisterHostRequest {
        name: name.into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        cores: 2,
        memory_bytes: 1 << 30,
        client_version: "test".into(),
    }
}

/// Every kind of route, as a request: the scheduler, an upload, a download, the public
/// API and pages, the publishing API.
fn every_kind_of_route(client: &ServerClient, host_token: &str) -> Vec<(&'static str, reqwest::RequestBuilder)> {
    let scheduler = serde_json::to_vec(&SchedulerRequest { want_replicas: 1, ..Default::default() }).unwrap();
    vec![
        ("scheduler", client.request(Method::POST, "/api/v1/scheduler").bearer_auth(host_token).body(scheduler)),
        (
            "upload",
            client
                .request(Method::PUT, &format!("/api/v1/replicas/1/output/{}", "0".repeat(64)))
                .bearer_auth(host_token)
                .body("x"),
        ),
        ("download", client.request(Method::GET, &format!("/api/v1/blobs/{}", "0".repeat(64)))),
        ("new account", client.request(Method::POST, "/api/v1/accounts").json(&serde_json::json!({"name": "x"}))),
        ("leaderboard", client.request(Method::GET, "/users")),
        ("status", client.request(Method::GET, "/api/v1/stats/status")),
        ("publishing", client.request(Method::GET, "/api/v1/apps").bearer_auth("wgp_made_up")),
    ]
}

async fn health(client: &ServerClient) -> (StatusCode, Duration, serde_json::Value) {
    let started = Instant::now();
    let response = client.request(Method::GET, "/healthz").send().await.unwrap();
    let status = response.status();
    (status, started.elapsed(), response.json().await.unwrap())
}

async fn wait_until_healthy(client: &ServerClient) {
    let deadline = Instant::now() + TIMEOUT;
    while health(client).await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "the server did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn with_postgres_stopped_every_route_answers_503_and_the_server_stays_quiet_and_recovers() {
    let mut postgres = OwnPostgres::start().await;
    let mut server = Server::start_in(logged_data_dir(), postgres.url(), &[]).await;
    let client = ServerClient::new(&server.url).unwrap();
    let account = client.create_account("volunteer").await.unwrap();
    let token = client.register_host(&account.account_key, &host("laptop")).await.unwrap().host_token;
    let pid = server.pid().unwrap();

    postgres.stop().await;
    let stopped_at = Instant::now();
    let (log_before, cpu_before) = (server.log().lines().count(), cpu_time(pid));
    let mut first_advice = None;
    let mut last_advice = 0;
    while stopped_at.elapsed() < Duration::from_secs(8) {
        for (route, request) in every_kind_of_route(&client, &token) {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{route}");
            let advice: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            first_advice.get_or_insert(advice);
            last_advice = advice;
        }
        let (status, took, body) = health(&client).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["database"], "unavailable");
        // Generous bounds, far from what a pool timeout (5 s) or a spinning loop would give.
        assert!(took < Duration::from_secs(2), "/healthz answers at once, not after a pool timeout: {took:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (log_during, cpu_during) = (server.log().lines().count() - log_before, cpu_time(pid) - cpu_before);

    // The advice follows the outage: a second at first, more the longer it lasts.
    assert!(first_advice.unwrap() <= 2, "a fresh outage asks for a short wait: {first_advice:?}");
    assert!(last_advice >= 5, "eight seconds in, a longer one: {last_advice}");
    // No loop spins on the dead connection, none logs a line per try.
    assert!(cpu_during < Duration::from_secs(3), "the server used {cpu_during:?} of CPU in 8 s of outage");
    assert!(log_during < 30, "{log_during} log lines in 8 s of outage:\n{}", server.log());

    postgres.restart().await;
    wait_until_healthy(&client).await;
    let reply = client.scheduler(&token, &SchedulerRequest::default()).await.expect("the scheduler works again");
    assert!(reply.assignments.is_empty());

    // A shutdown with the database gone does not wait for it.
    postgres.stop().await;
    let took = server.stop_with(libc::SIGTERM, Duration::from_secs(60)).await;
    assert!(took < Duration::from_secs(8), "shutting down took {took:?} with the database gone");
}

#[tokio::test]
async fn after_a_short_outage_volunteers_come_back_soon() {
    let mut postgres = OwnPostgres::start().await;
    let server = Server::start_in(logged_data_dir(), postgres.url(), &[]).await;
    let ids = server.publish(&workunit("probes/determinism.wat"), 4, single()).await;
    let volunteer = Volunteer::attach(&server, "steady").await;
    // Failed contacts would be retried after the server's advice or this backoff, which
    // is longer than the whole test.
    std::fs::write(
        volunteer.data_dir.path().join("client.toml"),
        "backoff_min_seconds = 600\nbackoff_max_seconds = 600\n",
    )
    .unwrap();

    postgres.stop().await;
    let daemon = volunteer.command(&["run", "--cores", "1", "--exit-when-idle"]).spawn().unwrap();
    // The daemon's first request meets the outage, a blip of two seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres.restart().await;
    let back = Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(60), daemon.wait_with_output())
        .await
        .expect("the daemon finished")
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let took = back.elapsed();
    assert_eq!(server.count("select count(*) from work_unit where state = 'validated'").await, ids.len() as i64);
    // Without following the advice, the daemon would wait its own backoff: 300 s or more.
    assert!(took < Duration::from_secs(45), "after a blip of 2 s, the work took {took:?} to finish");
}

/// Every file under `dir`, but the filler.
fn files_under(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else if entry.file_name() != "filler" {
                files.push(entry.path().strip_prefix(dir.as_path()).unwrap().display().to_string());
            }
        }
    }
    files.sort();
    files
}

#[tokio::test]
async fn with_the_blob_disk_full_uploads_wait_and_nothing_is_lost() {
    let data_dir = logged_data_dir();
    let blobs = data_dir.path().join("blobs");
    let disk = SmallDisk::mount(&blobs, 4 << 20);
    let database_url = wasmgrid_server::database::test_cluster::fresh_database_url().await;
    let server = Server::start_in(data_dir, database_url, &[]).await;
    let ids = server.publish(&workunit("probes/determinism.wat"), 2, single()).await;
    let stored_before = files_under(&blobs);

    // The disk fills up (another tenant, a log gone wild).
    let filler = disk.fill();
    let client = ServerClient::new(&server.url).unwrap();
    let account = client.create_account("direct").await.unwrap();
    let token = client.register_host(&account.account_key, &host("direct")).await.unwrap().host_token;
    let replica = client
        .scheduler(&token, &SchedulerRequest { want_replicas: 1, ..Default::default() })
        .await
        .unwrap()
        .assignments[0]
        .replica_id;
    for size in [100, 3 << 20] {
        let refused = client.upload_output(&token, replica, Bytes::from(vec![7u8; size])).await.unwrap_err();
        assert_eq!(refused.status(), Some(StatusCode::INSUFFICIENT_STORAGE), "{size} bytes");
        assert!(matches!(refused, wasmgrid_client::api::ApiError::Server { retry_after: Some(_), .. }));
    }
    // Refused before its body was read, so the connection cannot carry another request:
    // the client is told, rather than find out from a reset on its next request.
    let refused = client
        .request(Method::PUT, &format!("/api/v1/replicas/{replica}/output/{}", "0".repeat(64)))
        .bearer_auth(&token)
        .body(vec![7u8; 3 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(refused.headers().get("connection").map(|value| value.as_bytes()), Some(&b"close"[..]));
    assert_eq!(files_under(&blobs), stored_before, "no partial file is left behind");
    assert_eq!(server.count("select count(*) from replica where uploaded_sha256 is not null").await, 0);
    assert_eq!(server.count("select count(*) from output_upload").await, 0, "nothing recorded");
    let (status, _, body) = health(&client).await;
    assert_eq!((status, body["blob_store"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("full")));
    // Room returns: /healthz says so at once, before any upload has succeeded.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(health(&client).await.0, StatusCode::OK);
    let filler = disk.fill();

    // A volunteer's daemon runs the other work unit meanwhile, and keeps its result.
    let volunteer = Volunteer::attach(&server, "patient").await;
    let daemon = volunteer.command(&["run", "--cores", "1", "--exit-when-idle"]).spawn().unwrap();
    volunteer.wait_for_task_state("finished", TIMEOUT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = volunteer.status().await;
    assert_eq!(status["tasks"][0]["state"], "finished", "the result waits on disk: {status}");

    // Space comes back; the server recovers by itself, the daemon uploads and reports.
    std::fs::remove_file(filler).unwrap();
    let output = tokio::time::timeout(TIMEOUT, daemon.wait_with_output()).await.expect("the daemon finished").unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    client.upload_output(&token, replica, Bytes::from_static(b"room again")).await.expect("uploads work again");
    wait_until_healthy(&client).await;
    assert_eq!(server.count("select count(*) from work_unit where state = 'validated'").await, 1);
    assert_eq!(ids.len(), 2);
}
