//! Publishing end to end: a scientist with a publisher token creates an app, publishes a
//! real module, submits a batch, real volunteers run it, and the validated outputs come back
//! identical to what the module gives when run directly. Plus what publishers must not be
//! able to do: see each other's work, publish modules that cannot run.

use std::time::Duration;

use crate::harness::{Publisher, Server, Volunteer, example_module, run_directly, workunit};

const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// Creates `app` and publishes the WAT module `wat` (from `workunits/`) as its first
/// version; returns the module's file.
async fn app_running(scientist: &Publisher, app: &str, wat: &str) -> tempfile::NamedTempFile {
    let module = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(module.path(), workunit(wat)).unwrap();
    scientist.json(&["app", "create", app]).await;
    scientist.json(&["app", "publish", app, module.path().to_str().unwrap()]).await;
    module
}

#[tokio::test(flavor = "multi_thread")]
async fn a_published_batch_runs_on_volunteers_and_its_outputs_come_back_verified() {
    let server = Server::start().await;
    let scientist = server.publisher("alice").await;
    let primes = example_module("primes");

    let app = scientist.json(&["app", "create", "primes", "--description", "counts primes"]).await;
    assert_eq!(app["name"], "primes");
    let version = scientist.json(&["app", "publish", "primes", primes.to_str().unwrap()]).await;
    assert_eq!(version["version"], 1);

    let inputs = tempfile::tempdir().unwrap();
    let ranges: Vec<(String, String)> =
        (0..6).map(|i| (format!("range-{i}"), format!("{} {}", i * 200_000, (i + 1) * 200_000))).collect();
    for (name, range) in &ranges {
        std::fs::write(inputs.path().join(name), range).unwrap();
    }
    let submitted = scientist
        .json(&["batch", "submit", "--app", "primes", "--inputs", inputs.path().to_str().unwrap(), "--quorum", "2"])
        .await;
    assert_eq!(submitted["work_units"], 6);
    assert_eq!(submitted["created"], 6);
    assert_eq!(submitted["files_uploaded"], 6);
    let batch = submitted["batch_id"].as_i64().unwrap().to_string();

    let status = scientist.json(&["batch", "status", &batch]).await;
    assert_eq!(status["state"], "in_progress");
    assert_eq!(status["replicas"]["unsent"], 12, "quorum 2: two replicas per work unit");

    // Two unrelated volunteers: a quorum of 2 needs both.
    let (first, second) = (Volunteer::attach(&server, "first").await, Volunteer::attach(&server, "second").await);
    tokio::join!(first.run_until_idle(RUN_TIMEOUT), second.run_until_idle(RUN_TIMEOUT));

    let status = scientist.json(&["batch", "status", &batch]).await;
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["work_units"]["validated"], 6);
    assert_eq!(status["fraction_done"], 1.0);

    let out = tempfile::tempdir().unwrap();
    let collected = scientist.json(&["batch", "results", &batch, "--out", out.path().to_str().unwrap()]).await;
    assert_eq!(collected["validated"], 6);
    assert_eq!(collected["downloaded"], 6);
    for (name, range) in &ranges {
        let (module, input) = (primes.clone(), range.clone());
        let (stdout, files) =
            tokio::task::spawn_blocking(move || run_directly(&module, &[], input.as_bytes())).await.unwrap();
        let result = out.path().join(name);
        assert_eq!(std::fs::read(result.join("stdout")).unwrap(), stdout, "{name}: standard output");
        for (file, bytes) in files {
            assert_eq!(std::fs::read(result.join("files").join(&file)).unwrap(), bytes, "{name}: {file}");
        }
    }

    // Collecting again fetches nothing; a damaged result folder is fetched again.
    let again = scientist.json(&["batch", "results", &batch, "--out", out.path().to_str().unwrap()]).await;
    assert_eq!(again["downloaded"], 0);
    std::fs::write(out.path().join("range-3/.sha256"), "garbage").unwrap();
    let repaired = scientist.json(&["batch", "results", &batch, "--out", out.path().to_str().unwrap()]).await;
    assert_eq!(repaired["downloaded"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_submission_resumes_without_duplicates() {
    let server = Server::start().await;
    let scientist = server.publisher("alice").await;
    app_running(&scientist, "probe", "probes/determinism.wat").await;

    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    let lines: Vec<String> = (0..2500).map(|i| format!("{{\"name\": \"job-{i:05}\", \"args\": [\"{i}\"]}}")).collect();
    // The first attempt stops after the first 1200 jobs, as if interrupted.
    std::fs::write(&jobs, lines[..1200].join("\n")).unwrap();
    let first = scientist.json(&["batch", "submit", "--app", "probe", "--jobs", jobs.to_str().unwrap()]).await;
    let batch = first["batch_id"].as_i64().unwrap();
    // Interrupted before its end, the batch would still be open: reopen it.
    sqlx::query("update batch set closed_at = null where id = $1").bind(batch).execute(&server.pool).await.unwrap();

    std::fs::write(&jobs, lines.join("\n")).unwrap();
    let resumed = scientist
        .json(&["batch", "submit", "--app", "probe", "--jobs", jobs.to_str().unwrap(), "--resume", &batch.to_string()])
        .await;
    assert_eq!(resumed["created"], 1300);
    assert_eq!(resumed["existing"], 1200);
    let status = scientist.json(&["batch", "status", &batch.to_string()]).await;
    assert_eq!(status["work_units"]["active"], 2500);
    assert_eq!(status["replicas"]["unsent"], 5000);
    assert_eq!(status["state"], "in_progress", "closed once everything is in");

    // Resuming a batch that is complete does nothing, and says so.
    let again = scientist
        .json(&["batch", "submit", "--app", "probe", "--jobs", jobs.to_str().unwrap(), "--resume", &batch.to_string()])
        .await;
    assert_eq!(again["created"], 0);
    assert_eq!(again["existing"], 2500);
}

#[tokio::test(flavor = "multi_thread")]
async fn names_that_cannot_be_folder_names_are_refused() {
    let server = Server::start().await;
    let scientist = server.publisher("alice").await;
    app_running(&scientist, "probe", "probes/determinism.wat").await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    for (line, reason) in [
        (r#"{"name": "../escape"}"#, "must not contain"),
        (r#"{"name": ".hidden"}"#, "must not start with '.'"),
        (r#"{"name": "C:drive"}"#, "must not contain"),
        (r#"{"name": "ok", "files": {"../etc/passwd": "jobs.jsonl"}}"#, "input file"),
    ] {
        std::fs::write(&jobs, line).unwrap();
        let error = scientist.failure(&["batch", "submit", "--app", "probe", "--jobs", jobs.to_str().unwrap()]).await;
        assert!(error.contains(reason), "{line}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publisher_sees_and_changes_only_its_own_apps_and_batches() {
    let server = Server::start().await;
    let (alice, bob) = (server.publisher("alice").await, server.publisher("bob").await);
    let module = app_running(&alice, "sim", "probes/determinism.wat").await;
    let inputs = tempfile::tempdir().unwrap();
    std::fs::write(inputs.path().join("one"), "1").unwrap();

    let batch =
        alice.json(&["batch", "submit", "--app", "sim", "--inputs", inputs.path().to_str().unwrap()]).await["batch_id"]
            .as_i64()
            .unwrap()
            .to_string();

    // Bob sees none of it, and cannot act on it: to him it does not exist.
    assert_eq!(bob.json(&["app", "list"]).await, serde_json::json!([]));
    assert_eq!(bob.json(&["batch", "list"]).await, serde_json::json!([]));
    for args in [
        vec!["batch", "status", &batch],
        vec!["batch", "cancel", &batch],
        vec!["batch", "results", &batch, "--out", "/tmp/never"],
        vec!["app", "publish", "sim", module.path().to_str().unwrap()],
        vec!["batch", "submit", "--app", "sim", "--inputs", inputs.path().to_str().unwrap()],
    ] {
        let error = bob.failure(&args).await;
        assert!(error.contains("404") || error.contains("you have no"), "{args:?}: {error}");
    }
    let client = bob.client();
    let chunk = wasmgrid_protocol::publish::AddWorkUnitsRequest {
        policy: wasmgrid_protocol::publish::SubmitPolicy {
            quorum: 1,
            replicas: 1,
            max_errors: 1,
            max_total: 2,
            deadline_seconds: 60,
            limits: wasmgrid_server::publishing::DEFAULT_LIMITS,
        },
        work_units: vec![],
    };
    let refused = client.add_work_units(batch.parse().unwrap(), &chunk).await.unwrap_err();
    assert_eq!(refused.status().map(|status| status.as_u16()), Some(404));

    // Names are per publisher: Bob may have his own "sim".
    bob.json(&["app", "create", "sim"]).await;
    // Alice's batch is untouched.
    let status = alice.json(&["batch", "status", &batch]).await;
    assert_eq!(status["state"], "in_progress");

    // A volunteer's account key is not a publisher token.
    let account = wasmgrid_client::api::ServerClient::new(&server.url).unwrap().create_account("vol").await.unwrap();
    let impostor = crate::harness::Publisher { server_url: server.url.clone(), token: account.account_key };
    let error = impostor.failure(&["app", "list"]).await;
    assert!(error.contains("403") && error.contains("cannot publish"), "{error}");
    let stranger = crate::harness::Publisher { server_url: server.url.clone(), token: "wgp_made_up".into() };
    let error = stranger.failure(&["app", "list"]).await;
    assert!(error.contains("401"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_that_cannot_be_work_units_are_refused_with_the_reason() {
    let server = Server::start().await;
    let scientist = server.publisher("alice").await;
    scientist.json(&["app", "create", "app"]).await;
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("script.wasm", b"#!/bin/sh\necho hi\n".to_vec(), "not a WebAssembly module"),
        ("library.wasm", workunit("hostile/not_a_command.wat"), "exports no `_start`"),
        ("sockets.wasm", workunit("hostile/unknown_import.wat"), "env::open_socket"),
        ("huge.wasm", vec![0u8; 64 * 1024 * 1024 + 1], "larger than the limit"),
    ];
    for (file, bytes, reason) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, bytes).unwrap();
        let error = scientist.failure(&["app", "publish", "app", path.to_str().unwrap()]).await;
        assert!(error.contains(reason), "{file}: {error}");
    }
    let app = scientist.json(&["app", "list"]).await;
    assert_eq!(app[0]["latest_version"], serde_json::Value::Null, "nothing was published");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_batch_hands_out_nothing_more() {
    let server = Server::start().await;
    let scientist = server.publisher("alice").await;
    app_running(&scientist, "app", "probes/determinism.wat").await;
    let inputs = tempfile::tempdir().unwrap();
    for i in 0..4 {
        std::fs::write(inputs.path().join(format!("in-{i}")), i.to_string()).unwrap();
    }
    let batch = scientist.json(&["batch", "submit", "--app", "app", "--inputs", inputs.path().to_str().unwrap()]).await
        ["batch_id"]
        .as_i64()
        .unwrap()
        .to_string();
    let cancelled = scientist.json(&["batch", "cancel", &batch]).await;
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["work_units"]["failed"], 4);
    assert_eq!(cancelled["replicas"]["unsent"], 0);
    assert_eq!(cancelled["failures"][0]["reason"], "cancelled by its publisher");

    let volunteer = Volunteer::attach(&server, "vol").await;
    volunteer.run_until_idle(RUN_TIMEOUT).await;
    assert_eq!(server.count("select count(*) from replica where host_id is not null").await, 0);
    let error = scientist
        .failure(&["batch", "submit", "--app", "app", "--inputs", inputs.path().to_str().unwrap(), "--resume", &batch])
        .await;
    assert!(error.contains("cancelled"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_aborts_the_replicas_volunteers_are_running() {
    let server = Server::start().await;
    let scientist = server.publisher("alice").await;
    // Works for ever: only the cancellation can end it.
    app_running(&scientist, "endless", "probes/progress.wat").await;
    let inputs = tempfile::tempdir().unwrap();
    std::fs::write(inputs.path().join("only"), "").unwrap();
    let batch = scientist
        .json(&["batch", "submit", "--app", "endless", "--inputs", inputs.path().to_str().unwrap(), "--quorum", "1"])
        .await["batch_id"]
        .as_i64()
        .unwrap()
        .to_string();
    let volunteer = Volunteer::attach(&server, "vol").await;
    let mut daemon = volunteer.start();
    volunteer.wait_for_task_state("running", RUN_TIMEOUT).await;

    let cancelled = scientist.json(&["batch", "cancel", &batch]).await;
    assert_eq!(cancelled["state"], "cancelled");
    // At its next scheduler request the host is told to abort, and does.
    server
        .wait_for_count(
            "select count(*) from replica where outcome = 'didnt_need' and host_id is not null",
            1,
            RUN_TIMEOUT,
        )
        .await;
    let give_up = std::time::Instant::now() + RUN_TIMEOUT;
    loop {
        let status = volunteer.status().await;
        if status["tasks"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < give_up, "the task still runs: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    crate::harness::signal(&daemon, libc::SIGTERM);
    daemon.wait().await.unwrap();
}
