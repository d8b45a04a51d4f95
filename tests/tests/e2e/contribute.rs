//! Volunteering from a browser tab (`/contribute`), in Debian's headless Chromium driven over
//! WebDriver, against the real server: the tab registers a host, fetches work through the
//! scheduler, runs each replica in a Web Worker on the module instrumented by the same pass as
//! the native client, uploads and reports. What is checked is what the server stores: the
//! tab's outputs and fuel agree bit for bit with a native client's, its errors are the
//! native client's words, a closed tab's replica goes to someone else after the tab's short
//! deadline, and a reload is the same host.
//!
//! When `chromedriver` or Chromium is missing, the tests fail and say how to install them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use wasmgrid_e2e::webdriver::{ChromeDriver, Session};
use wasmgrid_protocol::api::RunLimits;
use wasmgrid_server::publishing::{ReplicationPolicy, WorkUnitSpec};
use wasmgrid_server::web::format::credit;

use crate::browser_flow::{ADA, keep_screenshot, sign_up};
use crate::harness::{Server, Volunteer, example_module, workunit};

const TIMEOUT: Duration = Duration::from_secs(300);

/// Opens `/contribute` and starts computing; returns the id of the tab's host.
async fn start_computing(browser: &Session, server: &Server) -> i64 {
    browser.goto(&format!("{}/contribute", server.url)).await;
    browser.find("#start").await.click().await;
    tab_host(browser).await
}

/// The id of the host the tab computes as, once it has one.
async fn tab_host(browser: &Session) -> i64 {
    browser
        .wait_for("the tab's host", async || {
            let text = browser.find("#host").await.text().await;
            text.strip_prefix("host ").and_then(|id| id.parse().ok())
        })
        .await
}

/// The states of the tasks the tab holds, read at once (the table is redrawn as they move).
async fn task_states(browser: &Session) -> Vec<String> {
    let script = "return [...document.querySelectorAll('#tasks tbody tr[data-replica] td:nth-child(2)')]
                  .map(cell => cell.textContent)";
    serde_json::from_value(browser.execute(script, json!([])).await).unwrap()
}

/// A replica that ran to success, and where.
#[derive(Debug, sqlx::FromRow)]
struct SuccessfulReplica {
    work_unit: String,
    /// The kind of host that ran it: `browser` or `native`.
    kind: String,
    output_sha256: Option<String>,
    fuel_used: Option<i64>,
    validation: String,
}

fn quorum_of_two() -> ReplicationPolicy {
    ReplicationPolicy { min_quorum: 2, target_replicas: 2, ..ReplicationPolicy::default() }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

#[tokio::test]
async fn a_tab_and_a_native_volunteer_validate_every_example_together_and_the_tab_earns_credit() {
    let driver = ChromeDriver::start().await;
    // A new host may take 10 replicas per core a day: more than enough for a tab of one
    // worker, but the test's tab reports its cores, and CI machines may have one.
    let server = Server::start_with(&["--initial-daily-quota-per-core", "100"]).await;
    let nbody_stdin = server.store_blob(b"12 300 7\n").await;
    let spec = |name: &str, args: &[&str]| WorkUnitSpec {
        args: strings(args),
        policy: quorum_of_two(),
        ..WorkUnitSpec::new(name)
    };
    let mut work_units = Vec::new();
    for (app, specs) in [
        ("primes", vec![spec("primes-a", &["0", "300000"]), spec("primes-b", &["5000000", "5200000"])]),
        (
            "mandelbrot",
            vec![
                spec("tile-a", &["1024", "1024", "128", "3", "4", "400"]),
                spec("tile-b", &["512", "512", "64", "1", "2", "200"]),
            ],
        ),
        ("nbody", vec![WorkUnitSpec { stdin: Some(nbody_stdin), ..spec("nbody-a", &[]) }]),
    ] {
        let wasm = std::fs::read(example_module(app)).unwrap();
        work_units.extend(server.publish_app(app, &wasm, &specs).await);
    }

    // Ada signs up in her browser, so that her tab's host computes for her account.
    let browser = driver.new_session().await;
    sign_up(&browser, &server, &ADA).await;
    let host_id = start_computing(&browser, &server).await;
    let native = Volunteer::attach(&server, "native").await;
    native.run_until_idle(TIMEOUT).await;
    server
        .wait_for_count("select count(*) from work_unit where state = 'validated'", work_units.len() as i64, TIMEOUT)
        .await;

    // One replica of every work unit came from the tab and one from the native client, and
    // they agree exactly: the same output archive and the same fuel.
    let replicas: Vec<SuccessfulReplica> = sqlx::query_as(
        "select w.name as work_unit, h.kind, r.output_sha256, r.fuel_used, r.validate_state::text as validation
         from replica r join work_unit w on w.id = r.work_unit_id join host h on h.id = r.host_id
         where r.outcome = 'success' order by w.name, h.kind",
    )
    .fetch_all(&server.pool)
    .await
    .unwrap();
    let mut by_work_unit: BTreeMap<&str, Vec<&SuccessfulReplica>> = BTreeMap::new();
    for replica in &replicas {
        by_work_unit.entry(&replica.work_unit).or_default().push(replica);
    }
    assert_eq!(by_work_unit.len(), work_units.len(), "{by_work_unit:?}");
    for (name, replicas) in &by_work_unit {
        let [in_browser, native] = replicas.as_slice() else { panic!("{name}: {replicas:?}") };
        assert_eq!((in_browser.kind.as_str(), native.kind.as_str()), ("browser", "native"), "{name}");
        assert_eq!(in_browser.output_sha256, native.output_sha256, "{name}: the same output");
        assert_eq!(in_browser.fuel_used, native.fuel_used, "{name}: the same fuel");
        assert!(replicas.iter().all(|replica| replica.validation == "valid"), "{name}: both valid: {replicas:?}");
    }

    // The tab's host is Ada's, shows on her page with its credit, and says what it is.
    let (account_id, host_credit): (i64, f64) =
        sqlx::query_as("select account_id, total_credit from host where id = $1 and kind = 'browser'")
            .bind(host_id)
            .fetch_one(&server.pool)
            .await
            .unwrap();
    let ada: i64 = sqlx::query_scalar("select id from account where name = $1")
        .bind(ADA.name)
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(account_id, ada, "the signed-in volunteer's tab computes for her");
    assert_ne!(credit(host_credit), "0.00");
    browser
        .wait_for("the tab's own figures", async || {
            let validated = browser.find("#validated").await.text().await;
            (validated == by_work_unit.len().to_string()).then_some(())
        })
        .await;
    assert_eq!(browser.find("#credit").await.text().await, format!("{host_credit:.2}"));
    keep_screenshot(&browser, "contribute.png").await;
    browser.goto(&format!("{}/users/{ada}", server.url)).await;
    let row = browser.table_row_linking_to(&format!("/hosts/{host_id}")).await;
    assert_eq!(row["Total credit"], credit(host_credit), "Ada's page lists her tab's host: {row:?}");
    browser.goto(&format!("{}/hosts/{host_id}", server.url)).await;
    let host = browser.definitions("dl.totals").await;
    assert!(host["System"].starts_with("browser tab on "), "{host:?}");
    browser.quit().await;
}

/// The hostile corpus, each module with limits its attack breaks, and the error the native
/// client reports for it (sandbox/tests/sandbox/hostile.rs).
fn hostile_work_units() -> Vec<(&'static str, RunLimits, String)> {
    let limits = RunLimits { fuel: 1 << 40, memory_bytes: 64 << 20, output_bytes: 1 << 20, wall_time_seconds: 30 };
    let trap = |message: &str| format!("trap: wasm trap: {message}");
    vec![
        ("infinite_loop", RunLimits { fuel: 10_000_000, ..limits }, "fuel limit exceeded".into()),
        ("start_loop", RunLimits { fuel: 10_000_000, ..limits }, "fuel limit exceeded".into()),
        ("sleeper", RunLimits { wall_time_seconds: 2, ..limits }, "wall-clock time limit exceeded".into()),
        (
            "host_call_spinner",
            RunLimits { fuel: u64::MAX / 4, wall_time_seconds: 2, ..limits },
            "wall-clock time limit exceeded".into(),
        ),
        ("memory_bomb", RunLimits { memory_bytes: 16 << 20, ..limits }, "memory limit exceeded".into()),
        ("table_bomb", limits, "table limit exceeded".into()),
        ("recursion", limits, "stack depth limit exceeded".into()),
        ("huge_stdout", limits, "output size limit exceeded".into()),
        ("scratch_filler", limits, "scratch disk limit exceeded".into()),
        ("deep_scratch", limits, "scratch disk limit exceeded".into()),
        ("trap", limits, trap("wasm `unreachable` instruction executed")),
        ("nonzero_exit", limits, "exited with status 3".into()),
        ("unknown_import", limits, "the sandbox does not provide the import env::open_socket".into()),
        ("page_reach", limits, "the sandbox does not provide the import env::fetch".into()),
        (
            "not_a_command",
            limits,
            "not a valid WASI command module: the module exports no `_start` function: it is not a WASI command".into(),
        ),
    ]
}

#[tokio::test]
async fn the_hostile_corpus_in_a_tab_ends_with_the_native_clients_errors_and_the_page_stays_responsive() {
    let driver = ChromeDriver::start().await;
    // Each error halves a host's daily quota: the tab starts with room for them all.
    let server =
        Server::start_with(&["--initial-daily-quota-per-core", "1000000", "--daily-quota-per-core", "1000000"]).await;
    let corpus = hostile_work_units();
    for (module, limits, _) in &corpus {
        let policy = ReplicationPolicy {
            min_quorum: 1,
            target_replicas: 1,
            max_error_replicas: 1,
            ..ReplicationPolicy::default()
        };
        let spec = WorkUnitSpec { policy, limits: *limits, ..WorkUnitSpec::new(*module) };
        server.publish_app(module, &workunit(&format!("hostile/{module}.wat")), &[spec]).await;
    }

    let browser = driver.new_session().await;
    let host_id = start_computing(&browser, &server).await;

    // While the workers run the corpus, the page answers at once: a click's handler runs and
    // its result shows, within the one script that clicks.
    browser
        .wait_for("a task running", async || task_states(&browser).await.contains(&"running".to_owned()).then_some(()))
        .await;
    let clicked = browser
        .execute(
            "const more = document.getElementById('more'), fewer = document.getElementById('fewer');
             const shown = () => Number(document.getElementById('workers').textContent);
             const first = shown(); fewer.click(); const second = shown(); more.click();
             return [first, second, shown(), navigator.hardwareConcurrency];",
            json!([]),
        )
        .await;
    let [first, second, third, cores] = serde_json::from_value::<[u64; 4]>(clicked).unwrap();
    assert_eq!(second, first.saturating_sub(1).max(1), "one worker fewer, at least one");
    assert_eq!(third, (second + 1).min(cores.max(1)), "one more, at most a worker a core");
    let page_state = "return [document.cookie, JSON.stringify(Object.entries(localStorage).sort())]";
    let before = browser.execute(page_state, json!([])).await;

    server
        .wait_for_count(
            &format!("select count(*) from replica where host_id = {host_id} and received_at is not null"),
            corpus.len() as i64,
            TIMEOUT,
        )
        .await;
    let reasons: BTreeMap<String, Option<String>> = sqlx::query_as(
        "select w.name, r.error_reason from replica r join work_unit w on w.id = r.work_unit_id where r.host_id = $1",
    )
    .bind(host_id)
    .fetch_all(&server.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    for (module, _, expected) in &corpus {
        assert_eq!(reasons[*module].as_deref(), Some(expected.as_str()), "{module}");
    }

    // Nothing a module did reached the page: its cookies and storage are as they were, and the
    // workers' own policy gives them no network.
    assert_eq!(browser.execute(page_state, json!([])).await, before, "the page's cookies and storage");
    let worker_policy = browser
        .execute(
            "return fetch('/static/contribute/task-worker.js').then(r => r.headers.get('content-security-policy'))",
            json!([]),
        )
        .await;
    let worker_policy = worker_policy.as_str().unwrap();
    assert!(worker_policy.contains("default-src 'none'") && !worker_policy.contains("connect-src"), "{worker_policy}");
    browser.quit().await;
}

#[tokio::test]
async fn closing_the_tab_mid_task_sends_its_replica_to_someone_else_after_the_tabs_deadline() {
    let driver = ChromeDriver::start().await;
    // A browser host has the work unit's wall-clock limit and 2 s to report.
    let server = Server::start_with(&["--browser-grace", "2"]).await;
    let limits = RunLimits { wall_time_seconds: 20, ..RunLimits::DEFAULT };
    let policy = ReplicationPolicy { min_quorum: 1, target_replicas: 1, ..ReplicationPolicy::default() };
    // Long enough in a tab to be closed midway.
    let spec = WorkUnitSpec { args: strings(&["0", "30000000"]), policy, limits, ..WorkUnitSpec::new("primes-long") };
    let [work_unit] =
        server.publish_app("primes", &std::fs::read(example_module("primes")).unwrap(), &[spec]).await[..]
    else {
        panic!("one work unit")
    };

    // The page computes in a tab of its own, beside another the browser keeps open.
    let browser = driver.new_session().await;
    browser.goto(&format!("{}/", server.url)).await;
    let home_tab = browser.current_tab().await;
    browser.new_tab().await;
    let host_id = start_computing(&browser, &server).await;
    browser
        .wait_for("the task running in the tab", async || (task_states(&browser).await == ["running"]).then_some(()))
        .await;
    let (sent_to, grace): (i64, f64) = sqlx::query_as(
        "select host_id, extract(epoch from deadline_at - sent_at)::float8 from replica
         where work_unit_id = $1 and state = 'in_progress'",
    )
    .bind(work_unit)
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert_eq!(sent_to, host_id);
    assert!((grace - 22.0).abs() < 0.001, "the tab's deadline is the wall-clock limit and 2 s: {grace}");
    assert_eq!(browser.close_tab().await, std::slice::from_ref(&home_tab), "the other tab stays open");
    browser.switch_to(&home_tab).await;

    // Nothing is reported; after the deadline the replica is someone else's.
    server
        .wait_for_count(
            &format!("select count(*) from replica where work_unit_id = {work_unit} and outcome = 'no_reply'"),
            1,
            Duration::from_secs(60),
        )
        .await;
    let native = Volunteer::attach(&server, "native").await;
    native.run_until_idle(TIMEOUT).await;
    server
        .wait_for_count(
            &format!("select count(*) from work_unit where id = {work_unit} and state = 'validated'"),
            1,
            TIMEOUT,
        )
        .await;
    browser.quit().await;
}

#[tokio::test]
async fn a_reload_keeps_the_tabs_host_and_another_tab_gets_a_host_of_its_own_on_the_same_account() {
    let driver = ChromeDriver::start().await;
    let server = Server::start().await;
    let browser = driver.new_session().await;
    let host_id = start_computing(&browser, &server).await;
    browser.refresh().await;
    assert_eq!(tab_host(&browser).await, host_id, "a reload computes on as the same host");
    assert_eq!(server.count("select count(*) from host").await, 1);

    browser.new_tab().await;
    let second = start_computing(&browser, &server).await;
    assert_ne!(second, host_id, "two tabs at once are two hosts");
    assert_eq!(server.count("select count(*) from host where kind = 'browser'").await, 2);
    assert_eq!(
        server.count("select count(distinct account_id) from host").await,
        1,
        "of the browser's one anonymous account"
    );
    browser.quit().await;
}
