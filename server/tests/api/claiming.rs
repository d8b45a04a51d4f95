//! Which replicas a host is handed, and what it is told about them.

use std::collections::HashSet;

use crate::helpers::{TestApp, policy};
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::RunLimits;
use wasmgrid_server::publishing::WorkUnitSpec;

#[tokio::test]
async fn an_assignment_carries_everything_needed_to_run_it() {
    let app = TestApp::spawn().await;
    let mut spec = WorkUnitSpec::new("render-tile-7");
    spec.args = vec!["--tile".into(), "7".into()];
    spec.limits = RunLimits { fuel: 5_000, memory_bytes: 1 << 20, output_bytes: 4096, wall_time_seconds: 60 };
    let [wu] = app.publish_specs(vec![spec]).await[..] else { panic!() };
    let alice = app.volunteer("alice").await;

    let reply = alice.request(Vec::new(), 5).await.unwrap();

    assert_eq!(reply.assignments.len(), 1, "one replica per work unit per reply");
    let assignment = &reply.assignments[0];
    assert_eq!(assignment.work_unit_id, wu);
    assert_eq!(assignment.work_unit_name, "render-tile-7");
    assert_eq!(assignment.args, ["--tile", "7"]);
    assert_eq!(assignment.limits.fuel, 5_000);
    assert_eq!(assignment.limits.memory_bytes, 1 << 20);
    assert_eq!(assignment.module.sha256, Sha256Hash::of(b"\0asm\x01\0\0\0"));
    assert_eq!(assignment.module.bytes, 8);
    assert!(assignment.deadline > chrono::Utc::now());
    let module = app.client.download_blob(&assignment.module.sha256).await.unwrap();
    assert_eq!(Sha256Hash::of(&module), assignment.module.sha256);
    assert_eq!(reply.retry_after_seconds, 1);
}

#[tokio::test]
async fn every_replica_of_a_work_unit_gets_the_same_seed() {
    let app = TestApp::spawn().await;
    app.publish(1, policy(2, 2)).await;
    let seed_a = app.volunteer("a").await.fetch(1).await[0].seed;
    let seed_b = app.volunteer("b").await.fetch(1).await[0].seed;
    assert_eq!(seed_a, seed_b);
}

#[tokio::test]
async fn a_host_without_work_is_told_to_wait_longer() {
    let app = TestApp::spawn().await;
    let reply = app.volunteer("idle").await.request(Vec::new(), 4).await.unwrap();
    assert!(reply.assignments.is_empty());
    assert_eq!(reply.retry_after_seconds, 60);
}

#[tokio::test]
async fn one_account_never_holds_two_replicas_of_one_work_unit() {
    let app = TestApp::spawn().await;
    app.publish(10, policy(2, 3)).await;
    let first = app.volunteer("alice").await;
    let second = app.another_host(&first).await;

    let mut work_units = Vec::new();
    for host in [&first, &second] {
        for assignment in host.fetch(64).await {
            work_units.push(assignment.work_unit_id);
        }
    }

    let distinct: HashSet<_> = work_units.iter().collect();
    assert_eq!(work_units.len(), 10, "each work unit once for the whole account");
    assert_eq!(distinct.len(), 10);
}

#[tokio::test]
async fn a_host_with_too_little_memory_gets_no_work_that_needs_more() {
    let app = TestApp::spawn().await;
    let mut big = WorkUnitSpec::new("big");
    big.limits.memory_bytes = 4 << 30;
    let mut small = WorkUnitSpec::new("small");
    small.limits.memory_bytes = 64 << 20;
    app.publish_specs(vec![big, small]).await;
    let little = app.volunteer_with_memory("little", 1 << 30).await;

    let names: Vec<_> = little.fetch(10).await.into_iter().map(|a| a.work_unit_name).collect();

    assert_eq!(names, ["small"]);
}

#[tokio::test]
async fn the_daily_quota_limits_how_much_a_host_takes() {
    let app = TestApp::spawn_with(|config| config.scheduler.daily_quota_per_core = 2).await;
    app.publish(20, policy(1, 1)).await;
    let alice = app.volunteer("alice").await; // 4 cores: 8 replicas a day

    assert_eq!(alice.fetch(5).await.len(), 5);
    assert_eq!(alice.fetch(5).await.len(), 3);
    assert!(alice.fetch(5).await.is_empty());
}
