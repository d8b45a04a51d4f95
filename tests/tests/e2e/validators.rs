//! Apps with a validator module: the server runs it in its sandbox on two outputs that
//! differ. The volunteers here are scripted hosts on the real client library, so that they
//! can return outputs that differ in chosen ways (as different hardware or a cheat would).

use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmgrid_client::api::ServerClient;
use wasmgrid_protocol::api::{RegisterHostRequest, ReplicaReport, ReportedOutcome, SchedulerRequest};
use wasmgrid_sandbox::output;

use crate::harness::{Publisher, Server, example_module, workunit};

/// A host that returns the standard output it is told to.
struct ScriptedHost {
    client: ServerClient,
    token: String,
}

impl ScriptedHost {
    async fn register(server: &Server, name: &str) -> Self {
        Self::register_at(&server.url, name).await
    }

    async fn register_at(url: &str, name: &str) -> Self {
        let client = ServerClient::new(url).unwrap();
        let account = client.create_account(name).await.unwrap();
        let request = RegisterHostRequest {
            name: name.into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            cores: 1,
            memory_bytes: 1 << 30,
            client_version: "scripted".into(),
        };
        let host = client.register_host(&account.account_key, &request).await.unwrap();
        Self { client, token: host.host_token }
    }

    /// Takes one replica and returns `stdout` as its output, packed as the client packs.
    async fn run_returning(&self, stdout: &str) {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let archive = dir.path().join("out.tar");
        output::pack(stdout.as_bytes(), &scratch, &archive, 1 << 20).unwrap();
        self.run_returning_archive(std::fs::read(&archive).unwrap()).await;
    }

    /// Takes one replica and returns `archive` as its output, whatever it holds.
    async fn run_returning_archive(&self, archive: Vec<u8>) {
        let reply = self
            .client
            .scheduler(&self.token, &SchedulerRequest { want_replicas: 1, ..SchedulerRequest::default() })
            .await
            .unwrap();
        let replica = reply.assignments.first().expect("a replica for this host").replica_id;
        let (hash, bytes) = (wasmgrid_protocol::Sha256Hash::of(&archive), archive.len() as u64);
        self.client.upload_output_as(&self.token, replica, hash, Bytes::from(archive)).await.unwrap();
        let report = ReplicaReport {
            replica_id: replica,
            outcome: ReportedOutcome::Success { output_hash: hash, output_bytes: bytes },
            fuel_used: 1_000_000,
            run_time_ms: 5,
            exit_status: Some(0),
            stderr: String::new(),
            instrumentation_version: wasmgrid_sandbox::INSTRUMENTATION_VERSION,
            output: None,
        };
        let reply = self
            .client
            .scheduler(&self.token, &SchedulerRequest { reports: vec![report], ..SchedulerRequest::default() })
            .await
            .unwrap();
        assert_eq!(reply.acknowledged, [replica]);
    }
}

/// An app validated by `validator`, with one batch of `work_units` work units
/// (`sim-1`...), quorum 2, and `submit_args` of the test's own.
async fn app_with_validator(
    scientist: &Publisher,
    validator: &std::path::Path,
    work_units: usize,
    submit_args: &[&str],
) -> String {
    let validator = format!("wasm:{}", validator.display());
    scientist.json(&["app", "create", "sim", "--validator", &validator]).await;
    let module = example_module("nbody");
    scientist.json(&["app", "publish", "sim", module.to_str().unwrap()]).await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    let lines: String =
        (1..=work_units).map(|i| format!("{{\"name\": \"sim-{i}\", \"args\": [\"8\", \"100\", \"{i}\"]}}\n")).collect();
    std::fs::write(&jobs, lines).unwrap();
    let mut args = vec!["batch", "submit", "--app", "sim", "--jobs", jobs.to_str().unwrap()];
    args.extend(submit_args);
    let submitted = scientist.json(&args).await;
    submitted["batch_id"].as_i64().unwrap().to_string()
}

/// Polls the batch status until `done` says so.
async fn wait_for_status(
    scientist: &Publisher,
    batch: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = scientist.json(&["batch", "status", batch]).await;
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "the batch did not get there: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tolerant_validator_accepts_outputs_that_differ_in_the_last_digits() {
    let server = Server::start().await;
    let scientist = server.publisher("alice").await;
    let batch = app_with_validator(&scientist, &example_module("nbody-validator"), 1, &[]).await;

    let (first, second) = (ScriptedHost::register(&server, "x86").await, ScriptedHost::register(&server, "arm").await);
    first.run_returning("energy start -1.25000000000000000e0 end -1.24999999999999990e0\n").await;
    second.run_returning("energy start -1.25000000000000000e0 end -1.24999999999999978e0\n").await;

    let status = wait_for_status(&scientist, &batch, |status| status["state"] == "done").await;
    assert_eq!(status["work_units"]["validated"], 1, "{status}");
    assert_eq!(status["validator_failures"], 0);
    let credited = server.count("select count(*) from replica where validate_state = 'valid'").await;
    assert_eq!(credited, 2, "both near-equal results are valid and earn credit");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tolerant_validator_rejects_a_different_answer() {
    let server = Server::start().await;
    let scientist = server.publisher("alice").await;
    let batch = app_with_validator(&scientist, &example_module("nbody-validator"), 1, &[]).await;

    let (honest, cheat) =
        (ScriptedHost::register(&server, "honest").await, ScriptedHost::register(&server, "cheat").await);
    honest.run_returning("energy start -1.25000000000000000e0 end -1.24999999999999990e0\n").await;
    cheat.run_returning("energy start -1.25000000000000000e0 end -1.00000000000000000e0\n").await;

    // Two disagreeing outputs: no consensus, so a third replica goes out.
    server
        .wait_for_count(
            "select count(*) from replica where validate_state = 'inconclusive'",
            2,
            Duration::from_secs(60),
        )
        .await;
    let status = scientist.json(&["batch", "status", &batch]).await;
    assert_eq!(status["work_units"]["active"], 1);
    assert_eq!(status["replicas"]["unsent"], 1, "{status}");
    assert_eq!(status["validator_failures"], 0, "disagreeing is not a failure of the validator");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_validator_that_traps_is_reported_and_counts_as_disagreement() {
    let server = Server::start().await;
    let scientist = server.publisher("alice").await;
    let validator = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(validator.path(), workunit("hostile/validator_trap.wat")).unwrap();
    // Two replicas in all: when they cannot be shown to agree, the work unit fails.
    let batch = app_with_validator(&scientist, validator.path(), 1, &["--max-total", "2"]).await;

    let (first, second) = (ScriptedHost::register(&server, "one").await, ScriptedHost::register(&server, "two").await);
    first.run_returning("1.0\n").await;
    second.run_returning("1.0000000001\n").await;

    let status = wait_for_status(&scientist, &batch, |status| status["state"] == "done").await;
    assert_eq!(status["validator_failures"], 1, "{status}");
    let failure = &status["recent_validator_failures"][0];
    assert_eq!(failure["name"], "sim-1");
    assert!(failure["reason"].as_str().unwrap().contains("trap"), "{failure}");
    assert_eq!(status["work_units"]["failed"], 1, "never validated on a failed comparison");
    let reason = status["failures"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("no consensus") && reason.contains("validator module failed"), "{reason}");
    // The failed comparison is stored, not run again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(server.count("select count(*) from validator_failure").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_validator_that_writes_nul_and_escapes_to_stderr_is_reported_without_them() {
    let server = Server::start().await;
    let scientist = server.publisher("alice").await;
    let validator = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(validator.path(), workunit("hostile/validator_nul_stderr.wat")).unwrap();
    let batch = app_with_validator(&scientist, validator.path(), 1, &["--max-total", "2"]).await;

    let (first, second) = (ScriptedHost::register(&server, "one").await, ScriptedHost::register(&server, "two").await);
    first.run_returning("1.0\n").await;
    second.run_returning("1.0000000001\n").await;

    let status = wait_for_status(&scientist, &batch, |status| status["state"] == "done").await;
    let reason = status["recent_validator_failures"][0]["reason"].as_str().unwrap();
    assert!(reason.ends_with(": bad byte [2J here"), "{reason:?}");
    assert!(!reason.chars().any(char::is_control), "{reason:?}");
    assert_eq!(status["work_units"]["failed"], 1, "the work unit moved on: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_that_is_not_an_archive_cannot_stall_validation() {
    let server = Server::start().await;
    let scientist = server.publisher("alice").await;
    let batch = app_with_validator(&scientist, &example_module("nbody-validator"), 1, &[]).await;

    let (honest, hostile) =
        (ScriptedHost::register(&server, "honest").await, ScriptedHost::register(&server, "hostile").await);
    honest.run_returning("energy start -1.25000000000000000e0 end -1.24999999999999990e0\n").await;
    hostile.run_returning_archive(b"this is not a tar archive at all".repeat(100)).await;

    // The comparison is answered (as different, with the reason) rather than retried for
    // ever, so the work unit moves on to a third replica.
    let status = wait_for_status(&scientist, &batch, |status| status["validator_failures"] == 1).await;
    let reason = status["recent_validator_failures"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("not a valid output archive"), "{reason}");
    let status = wait_for_status(&scientist, &batch, |status| status["replicas"]["unsent"] == 1).await;
    assert_eq!(status["work_units"]["active"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_server_processes_share_the_comparisons_and_report_each_failure_once() {
    const WORK_UNITS: usize = 8;
    let server = Server::start().await;
    let (mut twin, twin_url) = server.start_twin().await;
    let scientist = server.publisher("alice").await;
    let validator = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(validator.path(), workunit("hostile/validator_trap.wat")).unwrap();
    let batch = app_with_validator(&scientist, validator.path(), WORK_UNITS, &["--max-total", "2"]).await;

    // Hosts report to either process; both are woken for every comparison.
    let first = ScriptedHost::register(&server, "first").await;
    let second = ScriptedHost::register_at(&twin_url, "second").await;
    for i in 0..WORK_UNITS {
        first.run_returning(&format!("{i}.0\n")).await;
        second.run_returning(&format!("{i}.000001\n")).await;
    }

    let status = wait_for_status(&scientist, &batch, |status| status["state"] == "done").await;
    assert_eq!(status["work_units"]["failed"], WORK_UNITS as u64, "{status}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        server.count("select count(*) from validator_failure").await,
        WORK_UNITS as i64,
        "each failed comparison is reported once, whichever process ran it"
    );
    assert_eq!(server.count("select count(*) from output_comparison").await, WORK_UNITS as i64);
    crate::harness::signal(&twin, libc::SIGTERM);
    twin.wait().await.unwrap();
}
