//! Retried requests change nothing: a client that lost an answer simply tries again.

use crate::helpers::{TestApp, policy, success};

#[tokio::test]
async fn a_retried_report_is_acknowledged_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, policy(2, 2)).await[..] else { panic!() };
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    let a = alice.fetch(1).await[0].replica_id;
    let b = bob.fetch(1).await[0].replica_id;
    alice.succeed(a, b"out").await;
    bob.succeed(b, b"out").await;
    app.sweep().await;
    let before = app.replicas(wu).await;

    for _ in 0..3 {
        let reply = alice.request(vec![success(a, b"out")], 0).await.unwrap();
        assert_eq!(reply.acknowledged, vec![a]);
    }
    app.sweep().await;

    let after = app.replicas(wu).await;
    assert_eq!(format!("{before:?}"), format!("{after:?}"));
    assert_eq!(app.host(alice.host_id).await.total_credit, 2.0, "credit is granted once");
    assert_eq!(app.count("select count(*) from credit_grant").await, 2);
}

#[tokio::test]
async fn a_retried_report_with_a_different_outcome_keeps_the_first() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, policy(1, 1)).await[..] else { panic!() };
    let alice = app.volunteer("alice").await;
    let a = alice.fetch(1).await[0].replica_id;
    alice.fail(a, "first answer").await;

    alice.upload(a, b"second answer").await.unwrap_err();
    let reply = alice.request(vec![success(a, b"second answer")], 0).await.unwrap();

    assert_eq!(reply.acknowledged, vec![a]);
    assert_eq!(app.replicas(wu).await[0].outcome.as_deref(), Some("client_error"));
}

#[tokio::test]
async fn a_retried_upload_is_accepted_and_stores_one_blob() {
    let app = TestApp::spawn().await;
    app.publish(1, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    let a = alice.fetch(1).await[0].replica_id;
    let blobs_before = app.count("select count(*) from blob").await;

    alice.upload(a, b"result").await.unwrap();
    alice.upload(a, b"result").await.unwrap();
    alice.succeed(a, b"result").await;
    alice.upload(a, b"result").await.expect("an upload retried after the report is still fine");

    assert_eq!(app.count("select count(*) from blob").await, blobs_before + 1);
}

#[tokio::test]
async fn the_same_replica_twice_in_one_request_counts_once() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, policy(1, 1)).await[..] else { panic!() };
    let alice = app.volunteer("alice").await;
    let a = alice.fetch(1).await[0].replica_id;
    alice.upload(a, b"r").await.unwrap();

    let reply = alice.request(vec![success(a, b"r"), success(a, b"r")], 0).await.unwrap();

    assert_eq!(reply.acknowledged, vec![a]);
    assert_eq!(app.work_unit(wu).await.state, "validated");
}
