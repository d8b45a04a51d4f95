//! Many hosts asking at once, and several server processes on one database, never hand out
//! one replica twice nor two replicas of one work unit to one account.

use std::collections::HashSet;

use futures::future::join_all;

use crate::helpers::{TestApp, Volunteer, policy};

/// Every replica in `assignments` is distinct, and no account got two replicas of one work unit.
fn assert_no_double_assignment(assignments: &[(i64, i64, i64)]) {
    let mut replicas = HashSet::new();
    let mut per_account = HashSet::new();
    for &(account, replica, work_unit) in assignments {
        assert!(replicas.insert(replica), "replica {replica} was handed out twice");
        assert!(per_account.insert((account, work_unit)), "account {account} got work unit {work_unit} twice");
    }
}

/// Every host asks for work at the same moment, round after round, until none is left.
async fn fetch_concurrently(hosts: &[Volunteer]) -> Vec<(i64, i64, i64)> {
    let mut all = Vec::new();
    for _round in 0..100 {
        let replies = join_all(hosts.iter().map(|host| async move {
            let assignments = host.fetch(8).await;
            assignments.into_iter().map(|a| (host.account_id, a.replica_id, a.work_unit_id)).collect::<Vec<_>>()
        }))
        .await;
        let before = all.len();
        all.extend(replies.into_iter().flatten());
        if all.len() == before {
            break;
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_scheduler_requests_never_hand_out_a_replica_twice() {
    let app = TestApp::spawn_with(|config| config.max_database_connections = 20).await;
    app.publish(300, policy(2, 3)).await;
    let mut hosts = Vec::new();
    for i in 0..10 {
        let volunteer = app.volunteer(&format!("v{i}")).await;
        // Several hosts per account race for the same work units.
        hosts.push(app.another_host(&volunteer).await);
        hosts.push(app.another_host(&volunteer).await);
        hosts.push(volunteer);
    }

    let assignments = fetch_concurrently(&hosts).await;

    assert_no_double_assignment(&assignments);
    assert_eq!(assignments.len(), 900, "all 900 replicas were handed out: 10 accounts, 3 per work unit");
    let in_progress = app.count("select count(*) from replica where state = 'in_progress'").await;
    assert_eq!(in_progress, 900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_database_never_hand_out_a_replica_twice() {
    let first = TestApp::spawn().await;
    let second = TestApp::spawn_on(first.database_url.clone(), |_| {}).await;
    first.publish(200, policy(2, 2)).await;
    let mut hosts = Vec::new();
    for i in 0..8 {
        // Each account's hosts are split across the two servers.
        let on_first = first.volunteer(&format!("v{i}")).await;
        let mut on_second = second.another_host(&on_first).await;
        on_second.client = second.client.clone();
        hosts.push(on_first);
        hosts.push(on_second);
    }

    let assignments = fetch_concurrently(&hosts).await;

    assert_no_double_assignment(&assignments);
    assert_eq!(assignments.len(), 400);
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_reports_validate_every_work_unit_exactly_once() {
    let app = TestApp::spawn_with(|config| config.max_database_connections = 20).await;
    let ids = app.publish(100, policy(2, 2)).await;
    let mut hosts = Vec::new();
    for i in 0..10 {
        hosts.push(app.volunteer(&format!("v{i}")).await);
    }
    loop {
        let finished = join_all(hosts.iter().map(|host| async move {
            let assignments = host.fetch(8).await;
            for assignment in &assignments {
                host.upload(assignment.replica_id, b"same").await.unwrap();
            }
            let reports = assignments.iter().map(|a| crate::helpers::success(a.replica_id, b"same")).collect();
            host.request(reports, 0).await.unwrap();
            assignments.is_empty()
        }))
        .await;
        if finished.into_iter().all(|done| done) {
            break;
        }
    }
    app.sweep().await;

    assert_eq!(app.count("select count(*) from work_unit where state = 'validated'").await, ids.len() as i64);
    assert_eq!(app.count("select count(*) from credit_grant").await, 200);
    let total: f64 = sqlx::query_scalar("select sum(total_credit) from host").fetch_one(&app.pool).await.unwrap();
    assert_eq!(total, 400.0, "200 valid replicas, 2 credits each, counted once");
}
