//! Watching a server: the Prometheus metrics on their own listener, scraped and parsed as a
//! Prometheus server would; JSON logs from the real binary, with a request id on each line
//! written for a request and in its response.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use wasmgrid_server::database::test_cluster;

use crate::helpers::{TestApp, policy, wait_until};

const SERVER: &str = env!("CARGO_BIN_EXE_wasmgrid-server");

async fn scrape(app: &TestApp) -> Scrape {
    let url = app.metrics_url.as_deref().expect("metrics are served");
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("the Prometheus text format")
}

/// The value of the sample `name` whose labels include `labels`, if there is one.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matches = |sample: &&Sample| {
        sample.metric == name && labels.iter().all(|(key, wanted)| sample.labels.get(key) == Some(*wanted))
    };
    scrape.samples.iter().find(matches).map(|sample| match &sample.value {
        Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value) => *value,
        Value::Histogram(buckets) => buckets.iter().map(|bucket| bucket.count).fold(0.0, f64::max),
        Value::Summary(_) => f64::NAN,
    })
}

#[tokio::test]
async fn the_metrics_listener_counts_requests_replicas_and_the_queue() {
    let app = TestApp::spawn_with(|config| config.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    app.publish(3, policy(2, 2)).await;
    let first = app.volunteer("first").await;
    let second = app.volunteer("second").await;
    let a = first.fetch(1).await.pop().unwrap();
    let b = second.fetch(1).await.pop().unwrap();
    first.succeed(a.replica_id, b"same").await;
    second.succeed(b.replica_id, b"same").await;
    let module = app.client.request(reqwest::Method::GET, &a.module.url).send().await.unwrap();
    assert_eq!(module.status(), 200, "{}", a.module.url);
    let missing = app.client.request(reqwest::Method::GET, "/no/such/page/12345").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // The site has no /metrics: they are only on their own listener.
    let on_site = app.client.request(reqwest::Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(on_site.status(), 404);

    let scrape = scrape(&app).await;
    let scheduler = [("route", "/api/v1/scheduler"), ("method", "POST"), ("status", "200")];
    assert_eq!(value(&scrape, "wasmgrid_http_requests_total", &scheduler), Some(4.0));
    // Paths that match no route share one label, so they cannot make series without end.
    let unmatched = [("route", "unmatched"), ("method", "GET"), ("status", "404")];
    assert_eq!(value(&scrape, "wasmgrid_http_requests_total", &unmatched), Some(2.0));
    assert!(scrape.samples.iter().all(|sample| !sample.labels.values().any(|label| label.contains("12345"))));
    let blob = [("route", "/api/v1/blobs/:sha256"), ("method", "GET"), ("status", "200")];
    assert_eq!(value(&scrape, "wasmgrid_http_requests_total", &blob), Some(1.0), "by template, not by hash");
    let latency = [("route", "/api/v1/scheduler"), ("method", "POST")];
    assert_eq!(value(&scrape, "wasmgrid_http_request_duration_seconds_count", &latency), Some(4.0));
    assert_eq!(value(&scrape, "wasmgrid_replicas_claimed_total", &[]), Some(2.0));
    assert_eq!(value(&scrape, "wasmgrid_replicas_reported_total", &[("outcome", "success")]), Some(2.0));
    assert_eq!(value(&scrape, "wasmgrid_replicas_validated_total", &[("result", "valid")]), Some(2.0));
    assert_eq!(value(&scrape, "wasmgrid_replicas_validated_total", &[("result", "invalid")]), Some(0.0));

    let work_units: HashMap<String, f64> = ["active", "validated"]
        .iter()
        .map(|state| (state.to_string(), value(&scrape, "wasmgrid_work_units", &[("state", state)]).unwrap()))
        .collect();
    assert_eq!(work_units["validated"], 1.0);
    assert_eq!(work_units["active"], 2.0);
    assert_eq!(value(&scrape, "wasmgrid_replicas", &[("state", "unsent")]), Some(4.0));
    assert_eq!(value(&scrape, "wasmgrid_active_hosts", &[]), Some(2.0));
    assert_eq!(value(&scrape, "wasmgrid_database_up", &[]), Some(1.0));
    assert_eq!(value(&scrape, "wasmgrid_database_pool_max_connections", &[]), Some(10.0));
    assert!(value(&scrape, "wasmgrid_database_pool_connections", &[("state", "in_use")]).is_some());
    for name in ["wasmgrid_database_pool_timeouts_total", "wasmgrid_blob_store_errors_total"] {
        assert_eq!(value(&scrape, name, &[]), Some(0.0), "{name}");
    }
    for operation in ["put", "read", "size", "delete", "presign", "space", "no_room"] {
        let errors = value(&scrape, "wasmgrid_blob_store_errors_total", &[("operation", operation)]);
        assert_eq!(errors, Some(0.0), "{operation}");
    }
    // The periodic sweep runs once as the server starts (then hourly, in the tests).
    let since_sweep = value(&scrape, "wasmgrid_seconds_since_last_sweep", &[]).unwrap();
    assert!((0.0..120.0).contains(&since_sweep), "{since_sweep}");
    assert_eq!(value(&scrape, "wasmgrid_sweeps_total", &[("result", "ok")]), Some(1.0));
}

/// Scheduler requests beyond `--max-scheduler-transactions` wait for a turn in the server,
/// not in the database, and the metrics count them; each is served once a turn is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_requests_beyond_the_turns_wait_in_the_server_and_are_counted() {
    let app = TestApp::spawn_with(|config| {
        config.max_scheduler_transactions = Some(1);
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    app.publish(3, policy(1, 1)).await;
    let volunteers = [app.volunteer("first").await, app.volunteer("second").await, app.volunteer("third").await];
    let waiting = |scrape: &Scrape| value(scrape, "wasmgrid_scheduler_requests_waiting", &[]);
    assert_eq!(waiting(&scrape(&app).await), Some(0.0));

    // The first host's claim waits, inside its transaction and its turn, for its account's
    // claim lock, which this session holds.
    let mut blocker = app.pool.acquire().await.unwrap();
    sqlx::query("select pg_advisory_lock($1)").bind(volunteers[0].account_id).execute(&mut *blocker).await.unwrap();
    let first = tokio::spawn({
        let volunteer = volunteers[0].clone();
        async move { volunteer.fetch(1).await }
    });
    // This test's database only: the other tests share the cluster.
    let lock_waits = "select count(*) from pg_stat_activity where datname = current_database() \
                      and wait_event_type = 'Lock' and wait_event = 'advisory'";
    wait_until(|| async { app.count(lock_waits).await == 1 }).await;
    let others: Vec<_> = volunteers[1..]
        .iter()
        .cloned()
        .map(|volunteer| tokio::spawn(async move { volunteer.fetch(1).await }))
        .collect();
    wait_until(|| async { waiting(&scrape(&app).await) == Some(2.0) }).await;
    // Still waiting, and for the turn: no second scheduler transaction reached the database.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(others.iter().all(|request| !request.is_finished()));
    assert_eq!(app.count(lock_waits).await, 1);
    assert_eq!(app.count("select count(*) from replica where state = 'in_progress'").await, 0);

    sqlx::query("select pg_advisory_unlock($1)").bind(volunteers[0].account_id).execute(&mut *blocker).await.unwrap();
    assert_eq!(first.await.unwrap().len(), 1);
    for request in others {
        assert_eq!(request.await.unwrap().len(), 1);
    }
    assert_eq!(waiting(&scrape(&app).await), Some(0.0));
    assert_eq!(app.count("select count(*) from replica where state = 'in_progress'").await, 3);
}

/// A store that fails (here the blob directory turned into a file, as a disk gone bad or a
/// bucket gone would) is counted by operation, wherever the failure happens.
#[tokio::test]
async fn a_failing_blob_store_is_counted_by_operation() {
    let app = TestApp::spawn_with(|config| config.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    app.publish(1, policy(1, 1)).await;
    let volunteer = app.volunteer("volunteer").await;
    let assignment = volunteer.fetch(1).await.pop().unwrap();
    let blobs = app.data_dir.path().join("blobs");
    std::fs::rename(&blobs, app.data_dir.path().join("blobs-gone")).unwrap();
    std::fs::write(&blobs, b"not a directory").unwrap();

    let module = app.client.request(reqwest::Method::GET, &assignment.module.url).send().await.unwrap();
    assert_eq!(module.status(), 500, "{}", assignment.module.url);
    let upload = volunteer
        .client
        .upload_output(&volunteer.token, assignment.replica_id, bytes::Bytes::from_static(b"result"))
        .await;
    assert!(upload.is_err(), "an upload cannot be stored");

    let scrape = scrape(&app).await;
    let errors = |operation| value(&scrape, "wasmgrid_blob_store_errors_total", &[("operation", operation)]);
    // The download asks the store for the blob's size first, and fails there.
    assert_eq!(errors("size"), Some(1.0));
    assert_eq!(errors("put"), Some(1.0));
    assert_eq!(errors("no_room"), Some(0.0), "a broken store is not a full one");
}

#[tokio::test]
async fn json_logs_carry_the_request_id_that_the_response_returns() {
    let database_url = test_cluster::fresh_database_url().await;
    let data_dir = tempfile::tempdir().unwrap();
    let mut server = Command::new(SERVER)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--data-dir"])
        .arg(data_dir.path())
        .env("DATABASE_URL", &database_url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(server.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), stdout.next_line()).await.unwrap().unwrap().unwrap();
    let url = line.strip_prefix("wasmgrid-server listening on ").unwrap().to_owned();
    let mut stderr = BufReader::new(server.stderr.take().unwrap()).lines();

    let http = reqwest::Client::new();
    let given = http
        .post(format!("{url}/api/v1/accounts"))
        .header("x-request-id", "volunteer-report-17")
        .json(&serde_json::json!({ "name": "traced" }))
        .send()
        .await
        .unwrap();
    assert_eq!(given.status(), 201);
    assert_eq!(given.headers()["x-request-id"], "volunteer-report-17");
    // An id that could garble the log is replaced by one of the server's.
    let made = http.get(format!("{url}/healthz")).header("x-request-id", "two words").send().await.unwrap();
    let made_id = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made_id.len(), 16, "{made_id}");

    // Every line is one JSON object; the account's creation is logged inside its request.
    let logged = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = stderr.next_line().await.unwrap().expect("the log goes on");
            let entry: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
            if entry["fields"]["message"] == "account created" {
                return entry;
            }
        }
    })
    .await
    .expect("the account's creation is logged");
    assert_eq!(logged["span"]["id"], "volunteer-report-17", "{logged}");
    assert_eq!(logged["span"]["path"], "/api/v1/accounts", "{logged}");
    assert_eq!(logged["level"], "INFO");
    server.kill().await.unwrap();
}
