//! The operator's commands: revoking publisher tokens, banning hosts and accounts, the
//! project's status, and migrating explicitly. The functions behind them are tested here
//! against a running server; `the_commands_work_on_a_running_servers_database` runs the real
//! binary's commands on it.

use std::process::Output;

use reqwest::StatusCode;
use tokio::process::Command;
use wasmgrid_client::api::ApiError;
use wasmgrid_client::publish::client::PublisherClient;
use wasmgrid_server::admin::bans::{self, Target};
use wasmgrid_server::admin::{status, tokens};
use wasmgrid_server::work_unit::ban::BANNED;

use crate::helpers::{TestApp, policy};

const SERVER: &str = env!("CARGO_BIN_EXE_wasmgrid-server");
const RIGHT: &[u8] = b"the right answer";
const WRONG: &[u8] = b"a made-up answer";

fn refusal(error: &ApiError) -> (Option<StatusCode>, String) {
    let message = match error {
        ApiError::Server { body, .. } => body.as_ref().map(|b| b.error.message.clone()).unwrap_or_default(),
        other => other.to_string(),
    };
    (error.status(), message)
}

#[tokio::test]
async fn a_banned_host_gets_nothing_loses_what_it_held_and_can_lose_its_credit() {
    let app = TestApp::spawn().await;
    let work_units = app.publish(3, policy(2, 2)).await;
    let cheater = app.volunteer("cheater").await;
    let honest = app.volunteer("honest").await;
    let second = app.volunteer("second").await;

    // One result validated together with an honest host, credited.
    let first = cheater.fetch(1).await.pop().unwrap();
    let partner = honest.fetch(1).await.pop().unwrap();
    assert_eq!(first.work_unit_id, partner.work_unit_id);
    cheater.succeed(first.replica_id, RIGHT).await;
    honest.succeed(partner.replica_id, RIGHT).await;
    app.sweep().await;
    assert!(app.host(cheater.host_id).await.total_credit > 0.0);
    // One wrong result waiting for its quorum, and one replica running.
    let reported = cheater.fetch(1).await.pop().unwrap();
    cheater.succeed(reported.replica_id, WRONG).await;
    let running = cheater.fetch(1).await.pop().unwrap();

    let mut connection = app.pool.acquire().await.unwrap();
    let summary = bans::ban(&mut connection, Target::Host(cheater.host_id), "made-up answers", true).await.unwrap();
    assert_eq!(summary.hosts, [cheater.host_id]);
    assert_eq!(summary.replicas_to_take_back, 2);
    assert_eq!(summary.credit_grants_withdrawn, 1);

    // Its requests are refused, saying why; its report of the running replica too.
    let error = cheater.request(vec![crate::helpers::success(running.replica_id, RIGHT)], 1).await.unwrap_err();
    assert_eq!(
        refusal(&error),
        (Some(StatusCode::FORBIDDEN), "this host is banned from the project: made-up answers".into())
    );

    // The sweep takes back what it held; the other hosts finish the work without it.
    app.sweep().await;
    for replica_id in [reported.replica_id, running.replica_id] {
        let (outcome, reason): (String, Option<String>) =
            sqlx::query_as("select outcome::text, error_reason from replica where id = $1")
                .bind(replica_id)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert_eq!((outcome.as_str(), reason.as_deref()), ("no_reply", Some(BANNED)));
    }
    for volunteer in [&honest, &second] {
        for assignment in volunteer.fetch(4).await {
            volunteer.succeed(assignment.replica_id, RIGHT).await;
        }
    }
    for &id in &work_units {
        let work_unit = app.work_unit(id).await;
        assert_eq!(work_unit.state, "validated", "work unit {id}");
    }
    let wrong_canonical = app
        .count(&format!(
            "select count(*) from work_unit w join replica c on c.id = w.canonical_replica_id
             where c.output_sha256 = '{}'",
            wasmgrid_protocol::Sha256Hash::of(WRONG).to_hex()
        ))
        .await;
    assert_eq!(wrong_canonical, 0);

    // Its credit is withdrawn, on record, and the totals follow.
    app.sweep().await;
    assert_eq!(app.count("select count(*) from credit_withdrawal").await, 1);
    assert!(app.host(cheater.host_id).await.total_credit.abs() < 1e-9);
    assert!(app.account_credit(cheater.account_id).await.abs() < 1e-9);

    // Unbanned, it may ask again; the withdrawn credit stays withdrawn.
    assert!(bans::unban(&mut connection, Target::Host(cheater.host_id)).await.unwrap());
    assert!(!bans::unban(&mut connection, Target::Host(cheater.host_id)).await.unwrap());
    cheater.request(Vec::new(), 1).await.expect("work again");
    assert!(app.host(cheater.host_id).await.total_credit.abs() < 1e-9);
    let missing = bans::ban(&mut connection, Target::Host(999_999), "", false).await.unwrap_err();
    assert_eq!(missing.to_string(), "there is no host 999999");
}

#[tokio::test]
async fn a_banned_account_bans_all_its_hosts_and_cannot_add_one() {
    let app = TestApp::spawn().await;
    app.publish(2, policy(1, 1)).await;
    let volunteer = app.volunteer("sybil").await;
    let other_host = app.another_host(&volunteer).await;
    let bystander = app.volunteer("bystander").await;

    let mut connection = app.pool.acquire().await.unwrap();
    let summary = bans::ban(&mut connection, Target::Account(volunteer.account_id), "", false).await.unwrap();
    assert_eq!(summary.hosts, [volunteer.host_id, other_host.host_id]);
    for host in [&volunteer, &other_host] {
        let error = host.request(Vec::new(), 1).await.unwrap_err();
        assert_eq!(
            refusal(&error),
            (Some(StatusCode::FORBIDDEN), "this host's account is banned from the project".into())
        );
    }
    let request = wasmgrid_protocol::api::RegisterHostRequest {
        name: "a third".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        cores: 1,
        memory_bytes: 1 << 30,
        client_version: "test".into(),
    };
    let error = volunteer.client.register_host(&volunteer.account_key, &request).await.unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(bystander.fetch(1).await.len(), 1, "others are not touched");

    assert!(bans::unban(&mut connection, Target::Account(volunteer.account_id)).await.unwrap());
    assert_eq!(volunteer.fetch(1).await.len(), 1);
}

#[tokio::test]
async fn a_revoked_publisher_token_is_refused_and_stays_on_record() {
    let app = TestApp::spawn().await;
    let kept = app.publisher_token("alice").await;
    let revoked = app.publisher_token("alice").await;
    app.publisher_token("bob").await;
    let mut connection = app.pool.acquire().await.unwrap();
    let listed = tokens::list(&mut connection, Some("alice")).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|token| token.publisher == "alice" && token.revoked_at.is_none()));
    assert_eq!(tokens::list(&mut connection, None).await.unwrap().len(), 3);

    let publisher = |token: &str| PublisherClient::new(app.client.clone(), token.to_owned());
    publisher(&revoked).apps().await.expect("works before");
    let record = tokens::revoke(&mut connection, listed[1].id).await.unwrap().unwrap();
    assert!(record.revoked_at.is_some());
    let again = tokens::revoke(&mut connection, listed[1].id).await.unwrap().unwrap();
    assert_eq!(again.revoked_at, record.revoked_at, "revoking twice keeps the first time");
    assert_eq!(publisher(&revoked).apps().await.unwrap_err().status(), Some(StatusCode::UNAUTHORIZED));
    publisher(&kept).apps().await.expect("the other token still works");
    assert!(tokens::revoke(&mut connection, 999_999).await.unwrap().is_none());
    let listed = tokens::list(&mut connection, Some("alice")).await.unwrap();
    assert!(listed[1].revoked_at.is_some() && listed[0].revoked_at.is_none());
}

#[tokio::test]
async fn status_counts_the_queue_the_hosts_and_the_validation_rate() {
    let app = TestApp::spawn().await;
    app.publish(5, policy(2, 2)).await;
    let a = app.volunteer("a").await;
    let b = app.volunteer("b").await;
    let first = a.fetch(1).await.pop().unwrap();
    let second = b.fetch(1).await.pop().unwrap();
    a.succeed(first.replica_id, RIGHT).await;
    b.succeed(second.replica_id, RIGHT).await;
    let running = a.fetch(1).await.pop().unwrap();
    a.succeed(running.replica_id, RIGHT).await;
    let mut connection = app.pool.acquire().await.unwrap();
    bans::ban(&mut connection, Target::Host(b.host_id), "", false).await.unwrap();

    let summary = status::summary(&mut connection).await.unwrap();
    assert_eq!((summary.work_units.active, summary.work_units.validated, summary.work_units.failed), (4, 1, 0));
    assert_eq!(summary.replicas.unsent, 7);
    assert_eq!(summary.replicas.in_progress, 0);
    assert_eq!(summary.replicas.awaiting_validation, 1);
    assert_eq!(summary.validated_last_hour, 1);
    assert_eq!((summary.hosts_active_last_hour, summary.hosts_active_last_day, summary.hosts_banned), (2, 2, 1));
    assert!(summary.oldest_unsent_seconds.is_some_and(|seconds| (0.0..600.0).contains(&seconds)));
    let text = summary.to_string();
    assert!(text.contains("4 active, 1 validated, 0 failed"), "{text}");
    assert!(text.contains("7 unsent, 0 in progress, 1 awaiting validation"), "{text}");
}

async fn server_command(app: &TestApp, args: &[&str]) -> Output {
    Command::new(SERVER).args(args).env("DATABASE_URL", &app.database_url).output().await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn the_commands_work_on_a_running_servers_database() {
    let app = TestApp::spawn().await;
    app.publish(2, policy(1, 1)).await;
    let volunteer = app.volunteer("someone").await;
    app.publisher_token("carol").await;

    let listed = server_command(&app, &["token", "list", "--json"]).await;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["publisher"], "carol");
    let id = listed[0]["id"].as_i64().unwrap().to_string();
    let revoked = server_command(&app, &["token", "revoke", &id]).await;
    assert!(revoked.status.success() && text(&revoked.stderr).contains("is revoked"), "{}", text(&revoked.stderr));
    let missing = server_command(&app, &["token", "revoke", "424242"]).await;
    assert!(!missing.status.success() && text(&missing.stderr).contains("there is no publisher token 424242"));

    let host = volunteer.host_id.to_string();
    let banned = server_command(&app, &["host", "ban", &host, "--reason", "testing", "--revoke-credit"]).await;
    assert!(banned.status.success(), "{}", text(&banned.stderr));
    assert!(text(&banned.stderr).contains(&format!("host {host} is banned")), "{}", text(&banned.stderr));
    assert_eq!(volunteer.request(Vec::new(), 1).await.unwrap_err().status(), Some(StatusCode::FORBIDDEN));
    let unbanned = server_command(&app, &["host", "unban", &host]).await;
    assert!(text(&unbanned.stderr).contains("may work again"), "{}", text(&unbanned.stderr));
    let account = volunteer.account_id.to_string();
    let banned = server_command(&app, &["account", "ban", &account]).await;
    assert!(text(&banned.stderr).contains("(1 hosts) is banned"), "{}", text(&banned.stderr));
    let nobody = server_command(&app, &["account", "ban", "424242"]).await;
    assert!(!nobody.status.success() && text(&nobody.stderr).contains("there is no account 424242"));

    let status = server_command(&app, &["status", "--json"]).await;
    assert!(status.status.success(), "{}", text(&status.stderr));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["work_units"]["active"], 2);
    assert_eq!(status["hosts_banned"], 1);
    let table = server_command(&app, &["status"]).await;
    assert!(text(&table.stdout).contains("work units:  2 active"), "{}", text(&table.stdout));
}

#[tokio::test]
async fn serve_no_migrate_refuses_an_old_schema_until_migrate_runs() {
    let app = TestApp::spawn().await;
    // An empty database beside the test's own, on the same cluster.
    let name = format!("unmigrated_{}", std::process::id());
    sqlx::query(&format!("create database {name}")).execute(&app.pool).await.unwrap();
    let own = sqlx::query_scalar::<_, String>("select current_database()").fetch_one(&app.pool).await.unwrap();
    let url = app.database_url.replace(&format!("/{own}?"), &format!("/{name}?"));
    assert_ne!(url, app.database_url);
    let data_dir = tempfile::tempdir().unwrap();
    let serve = |extra: &'static [&'static str]| {
        let mut command = Command::new(SERVER);
        command.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir.path()).args(extra);
        command.env("DATABASE_URL", &url).kill_on_drop(true);
        command
    };

    let refused = tokio::time::timeout(std::time::Duration::from_secs(60), serve(&["--no-migrate"]).output())
        .await
        .expect("refuses at once")
        .unwrap();
    assert!(!refused.status.success());
    let message = text(&refused.stderr);
    assert!(message.contains("is not applied") && message.contains("run `wasmgrid-server migrate` first"), "{message}");

    let migrated = Command::new(SERVER).arg("migrate").env("DATABASE_URL", &url).output().await.unwrap();
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    assert!(text(&migrated.stderr).contains("has every migration"), "{}", text(&migrated.stderr));

    let mut started = serve(&["--no-migrate"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let stdout = started.stdout.take().unwrap();
    let line = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)).next_line(),
    )
    .await
    .expect("starts in time")
    .unwrap()
    .unwrap_or_default();
    assert!(line.starts_with("wasmgrid-server listening on "), "{line}");
    started.kill().await.unwrap();
}
