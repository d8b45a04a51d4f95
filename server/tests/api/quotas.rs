//! What a host may take: its daily quota and what it may hold at once, however many
//! requests it sends at the same moment and however many cores it claims to have.

use super::helpers::{TestApp, Volunteer, policy, success};

/// Sends `requests` scheduler requests at once, each asking for `want`; returns how many
/// replicas they got in all.
async fn fetch_concurrently(volunteer: &Volunteer, requests: usize, want: u32) -> usize {
    let tasks: Vec<_> = (0..requests)
        .map(|_| {
            let volunteer = volunteer.clone();
            tokio::spawn(async move { volunteer.fetch(want).await.len() })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total
}

async fn set_cores(app: &TestApp, host_id: i64, cores: i32) {
    sqlx::query("update host set cores = $2 where id = $1").bind(host_id).bind(cores).execute(&app.pool).await.unwrap();
}

#[tokio::test]
async fn concurrent_requests_cannot_take_more_than_the_daily_quota() {
    let app = TestApp::spawn_with(|config| config.scheduler.max_in_progress_per_core = 100_000).await;
    app.publish(300, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    set_cores(&app, alice.host_id, 1).await;
    // 990 of its 1000 replicas for today are taken already.
    sqlx::query("update host set replicas_today = 990, quota_day = current_date where id = $1")
        .bind(alice.host_id)
        .execute(&app.pool)
        .await
        .unwrap();

    let taken = fetch_concurrently(&alice, 20, 10).await;

    assert_eq!(taken, 10, "only the 10 left of today's quota may be handed out");
    assert_eq!(app.count("select count(*) from replica where state = 'in_progress'").await, 10);
    assert_eq!(app.count("select replicas_today::bigint from host").await, 1000);
}

#[tokio::test]
async fn concurrent_requests_cannot_hold_more_than_the_cap() {
    let app = TestApp::spawn_with(|config| config.scheduler.max_in_progress_per_core = 15).await;
    app.publish(300, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    set_cores(&app, alice.host_id, 2).await;

    let taken = fetch_concurrently(&alice, 20, 10).await;

    assert_eq!(taken, 30, "a 2-core host holds at most 2 x 15 replicas");
    assert!(alice.fetch(10).await.is_empty());
}

#[tokio::test]
async fn a_host_holds_no_more_than_the_cap_whatever_it_asks() {
    let app = TestApp::spawn_with(|config| config.scheduler.max_in_progress_per_core = 3).await;
    app.publish(40, policy(1, 1)).await;
    let alice = app.volunteer("alice").await; // 4 cores: 12 at once

    let first = alice.fetch(64).await;
    assert_eq!(first.len(), 12);
    assert!(alice.fetch(64).await.is_empty(), "full");

    // Reporting two frees two places.
    alice.succeed(first[0].replica_id, b"out").await;
    alice.succeed(first[1].replica_id, b"out").await;
    assert_eq!(alice.fetch(64).await.len(), 2);
}

#[tokio::test]
async fn claimed_cores_beyond_the_cap_earn_no_quota() {
    let app = TestApp::spawn_with(|config| {
        config.scheduler.max_host_cores = 8;
        config.scheduler.daily_quota_per_core = 2;
        config.scheduler.max_in_progress_per_core = 100;
    })
    .await;
    app.publish(200, policy(1, 1)).await;
    let account = app.client.create_account("greedy").await.unwrap();
    let host = app
        .client
        .register_host(
            &account.account_key,
            &wasmgrid_protocol::api::RegisterHostRequest {
                name: "a very big machine".into(),
                os: "linux".into(),
                arch: "x86_64".into(),
                cores: 65_536,
                memory_bytes: u64::MAX >> 1,
                client_version: "test".into(),
            },
        )
        .await
        .unwrap();
    let greedy = Volunteer {
        client: app.client.clone(),
        account_key: account.account_key,
        account_id: host.account_id,
        host_id: host.host_id,
        token: host.host_token,
    };

    let mut taken = 0;
    for _ in 0..5 {
        taken += greedy.fetch(64).await.len();
    }

    assert_eq!(taken, 16, "8 believed cores x a quota of 2");
}

/// A server whose hosts start at 1 replica per core a day and may earn 100, with 100 work
/// units of quorum 1, and a new 4-core host: 4 replicas today.
async fn a_new_host_on_100_work_units() -> (TestApp, Volunteer) {
    let app = TestApp::spawn_with(|config| {
        config.scheduler.initial_daily_quota_per_core = 1;
        config.scheduler.daily_quota_per_core = 100;
    })
    .await;
    app.publish(100, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    (app, alice)
}

#[tokio::test]
async fn a_new_host_starts_with_a_small_quota_that_grows_with_valid_results() {
    let (app, alice) = a_new_host_on_100_work_units().await;
    assert_eq!(app.host(alice.host_id).await.daily_quota, 1);

    let first = alice.fetch(64).await;
    assert_eq!(first.len(), 4);
    assert!(alice.fetch(64).await.is_empty(), "the starting quota is used up");

    // Each valid result doubles the per-core quota: 1 -> 16 after four.
    for assignment in &first {
        alice.succeed(assignment.replica_id, b"valid").await;
    }
    assert_eq!(app.host(alice.host_id).await.daily_quota, 16);
    assert_eq!(alice.fetch(64).await.len(), 60, "16 x 4 cores, of which 4 were taken");
}

#[tokio::test]
async fn results_validated_by_a_request_raise_the_quota_it_claims_by() {
    let (_app, alice) = a_new_host_on_100_work_units().await;
    let first = alice.fetch(64).await;
    let mut reports = Vec::new();
    for assignment in &first {
        alice.upload(assignment.replica_id, b"valid").await.unwrap();
        reports.push(success(assignment.replica_id, b"valid"));
    }

    let reply = alice.request(reports, 64).await.unwrap();

    assert_eq!(reply.assignments.len(), 60, "four valid results make the quota 16 per core, in this very request");
}
