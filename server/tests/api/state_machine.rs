//! Every transition of a work unit's life.

use crate::helpers::{TestApp, policy};
use wasmgrid_server::publishing::ReplicationPolicy;

#[tokio::test]
async fn two_agreeing_replicas_validate_the_work_unit_and_earn_credit_once() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, policy(2, 2)).await[..] else { panic!() };
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    let a = alice.fetch(1).await[0].replica_id;
    let b = bob.fetch(1).await[0].replica_id;

    alice.succeed(a, b"42").await;
    assert_eq!(app.work_unit(wu).await.state, "active", "one success is not a quorum");
    bob.succeed(b, b"42").await;
    app.sweep().await;

    let work_unit = app.work_unit(wu).await;
    assert_eq!(work_unit.state, "validated");
    assert_eq!(work_unit.canonical_replica_id, Some(a));
    assert_eq!(work_unit.credit, Some(2.0), "credit is the agreed fuel, 2e9, in units of 1e9");
    for replica in app.replicas(wu).await {
        assert_eq!((replica.outcome.as_deref(), replica.validate_state.as_str()), (Some("success"), "valid"));
        assert_eq!(replica.credit, Some(2.0));
    }
    for volunteer in [&alice, &bob] {
        let host = app.host(volunteer.host_id).await;
        assert_eq!(host.total_credit, 2.0);
        assert!(host.expavg_credit > 0.0, "recent average credit grows with new credit");
        assert_eq!(host.valid_count, 1);
        assert_eq!(app.account_credit(volunteer.account_id).await, 2.0);
    }
    // Folding again must not add the same grants twice.
    app.sweep().await;
    assert_eq!(app.host(alice.host_id).await.total_credit, 2.0);
}

#[tokio::test]
async fn disagreement_asks_for_one_more_replica_and_the_majority_wins() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, policy(2, 2)).await[..] else { panic!() };
    let (honest, cheat, tiebreak) = (app.volunteer("h").await, app.volunteer("c").await, app.volunteer("t").await);
    let h = honest.fetch(1).await[0].replica_id;
    let c = cheat.fetch(1).await[0].replica_id;
    honest.succeed(h, b"right").await;
    cheat.succeed(c, b"wrong").await;

    let replicas = app.replicas(wu).await;
    assert_eq!(replicas.len(), 3, "no consensus creates exactly one more replica");
    assert!(replicas[..2].iter().all(|r| r.validate_state == "inconclusive"));
    assert_eq!(app.work_unit(wu).await.state, "active");

    let t = tiebreak.fetch(1).await[0].replica_id;
    tiebreak.succeed(t, b"right").await;
    app.sweep().await;

    let work_unit = app.work_unit(wu).await;
    assert_eq!(work_unit.state, "validated");
    assert_eq!(work_unit.canonical_replica_id, Some(h));
    let states: Vec<_> = app.replicas(wu).await.into_iter().map(|r| (r.id, r.validate_state)).collect();
    assert_eq!(states, vec![(h, "valid".into()), (c, "invalid".into()), (t, "valid".into())]);
    assert_eq!(app.host(cheat.host_id).await.total_credit, 0.0);
    assert_eq!(app.host(cheat.host_id).await.invalid_count, 1);
    assert_eq!(app.host(tiebreak.host_id).await.total_credit, 2.0);
}

#[tokio::test]
async fn an_error_creates_a_new_replica_that_goes_first() {
    let app = TestApp::spawn().await;
    let ids = app.publish(3, policy(2, 2)).await;
    let alice = app.volunteer("alice").await;
    let first = alice.fetch(1).await[0].clone();
    assert_eq!(first.work_unit_id, ids[0]);

    alice.fail(first.replica_id, "trap: unreachable").await;

    let replicas = app.replicas(ids[0]).await;
    assert_eq!(replicas.len(), 3);
    assert_eq!(replicas[0].outcome.as_deref(), Some("client_error"));
    assert_eq!(replicas[2].state, "unsent");
    // The retry jumps the queue: a new volunteer gets the first work unit's replicas first.
    let bob = app.volunteer("bob").await;
    assert_eq!(bob.fetch(1).await[0].replica_id, replicas[2].id);
    let host = app.host(alice.host_id).await;
    assert_eq!(host.error_count, 1);
    assert_eq!(host.daily_quota, 500, "an error halves the daily quota");
}

#[tokio::test]
async fn too_many_errors_fail_the_work_unit_with_the_reason() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, ReplicationPolicy { max_error_replicas: 2, ..policy(2, 2) }).await[..] else { panic!() };
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    let a = alice.fetch(1).await[0].replica_id;
    let b = bob.fetch(1).await[0].replica_id;
    alice.fail(a, "out of fuel").await;
    bob.fail(b, "memory limit").await;

    let work_unit = app.work_unit(wu).await;
    assert_eq!(work_unit.state, "failed");
    let reason = work_unit.failure_reason.unwrap();
    assert!(reason.contains("too many errors") && reason.contains("memory limit"), "{reason}");
    assert_eq!(app.replicas(wu).await.len(), 3, "no replica is created after the work unit failed");
    assert!(app.volunteer("carol").await.fetch(1).await.is_empty());
}

/// A run is deterministic, so the same error from a quorum is the module's answer: the work
/// unit fails at once, where it used to wait for `max_error_replicas` errors from as many
/// accounts (which a project with few volunteers may never have).
#[tokio::test]
async fn the_same_error_from_a_quorum_fails_the_work_unit_at_once() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, ReplicationPolicy { max_error_replicas: 5, ..policy(2, 2) }).await[..] else { panic!() };
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    let a = alice.fetch(1).await[0].replica_id;
    let b = bob.fetch(1).await[0].replica_id;
    let trap = "trap: wasm trap: integer divide by zero";
    alice.fail(a, trap).await;
    assert_eq!(app.work_unit(wu).await.state, "active", "one error is not yet an answer");
    bob.fail(b, trap).await;

    let work_unit = app.work_unit(wu).await;
    assert_eq!(work_unit.state, "failed");
    assert_eq!(work_unit.failure_reason.unwrap(), format!("2 replicas failed the same way, after 1000 fuel: {trap}"));
    assert!(app.volunteer("carol").await.fetch(1).await.is_empty(), "nobody runs it again");
}

#[tokio::test]
async fn a_missed_deadline_makes_the_replica_no_reply_and_creates_another() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, policy(1, 1)).await[..] else { panic!() };
    let alice = app.volunteer("alice").await;
    let a = alice.fetch(1).await[0].replica_id;

    app.expire(a).await;
    app.sweep().await;

    let replicas = app.replicas(wu).await;
    assert_eq!((replicas[0].state.as_str(), replicas[0].outcome.as_deref()), ("over", Some("no_reply")));
    assert_eq!(replicas[1].state, "unsent");
    assert_eq!(app.host(alice.host_id).await.daily_quota, 500, "missing a deadline costs trust");
    // Alice's account had this work unit already, so the retry goes to someone else.
    assert!(alice.fetch(1).await.is_empty());
    let bob = app.volunteer("bob").await;
    let b = bob.fetch(1).await[0].replica_id;
    bob.succeed(b, b"done").await;
    assert_eq!(app.work_unit(wu).await.state, "validated");
}

#[tokio::test]
async fn a_late_result_is_checked_against_the_canonical_one() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, policy(2, 2)).await[..] else { panic!() };
    let (late, bob, carol) = (app.volunteer("late").await, app.volunteer("bob").await, app.volunteer("carol").await);
    let l = late.fetch(1).await[0].replica_id;
    let b = bob.fetch(1).await[0].replica_id;
    app.expire(l).await;
    app.sweep().await;
    let c = carol.fetch(1).await[0].replica_id;
    bob.succeed(b, b"answer").await;
    carol.succeed(c, b"answer").await;
    assert_eq!(app.work_unit(wu).await.state, "validated");

    late.succeed(l, b"answer").await;
    app.sweep().await;

    let late_replica = app.replicas(wu).await.into_iter().find(|r| r.id == l).unwrap();
    assert_eq!((late_replica.outcome.as_deref(), late_replica.validate_state.as_str()), (Some("success"), "valid"));
    assert_eq!(app.host(late.host_id).await.total_credit, 2.0, "a valid late result earns credit");
    assert_eq!(app.work_unit(wu).await.canonical_replica_id, Some(b), "the canonical result does not change");
}

#[tokio::test]
async fn a_wrong_late_result_is_invalid_and_earns_nothing() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, policy(2, 3)).await[..] else { panic!() };
    let volunteers = [app.volunteer("a").await, app.volunteer("b").await, app.volunteer("c").await];
    let mut ids = Vec::new();
    for volunteer in &volunteers {
        ids.push(volunteer.fetch(1).await[0].replica_id);
    }
    volunteers[0].succeed(ids[0], b"yes").await;
    volunteers[1].succeed(ids[1], b"yes").await;
    volunteers[2].succeed(ids[2], b"no").await;
    app.sweep().await;

    let third = app.replicas(wu).await.into_iter().find(|r| r.id == ids[2]).unwrap();
    assert_eq!(third.validate_state, "invalid");
    assert_eq!(app.host(volunteers[2].host_id).await.total_credit, 0.0);
}

#[tokio::test]
async fn unsent_replicas_are_not_needed_once_a_canonical_result_exists() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, policy(2, 3)).await[..] else { panic!() };
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    let a = alice.fetch(1).await[0].replica_id;
    let b = bob.fetch(1).await[0].replica_id;
    alice.succeed(a, b"x").await;
    bob.succeed(b, b"x").await;

    let third = app.replicas(wu).await.pop().unwrap();
    assert_eq!((third.state.as_str(), third.outcome.as_deref()), ("over", Some("didnt_need")));
    assert!(app.volunteer("carol").await.fetch(1).await.is_empty());
}

#[tokio::test]
async fn without_consensus_within_max_total_replicas_the_work_unit_fails() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, ReplicationPolicy { max_total_replicas: 3, ..policy(2, 2) }).await[..] else { panic!() };
    for (name, output) in [("a", b"1"), ("b", b"2"), ("c", b"3")] {
        let volunteer = app.volunteer(name).await;
        let replica = volunteer.fetch(1).await[0].replica_id;
        volunteer.succeed(replica, output).await;
    }
    let work_unit = app.work_unit(wu).await;
    assert_eq!(work_unit.state, "failed");
    assert!(work_unit.failure_reason.unwrap().contains("no consensus"));
    assert_eq!(app.replicas(wu).await.len(), 3);
}

#[tokio::test]
async fn replicas_still_running_when_the_work_unit_fails_are_aborted() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, ReplicationPolicy { max_error_replicas: 1, ..policy(2, 2) }).await[..] else { panic!() };
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    let a = alice.fetch(1).await[0].replica_id;
    let b = bob.fetch(1).await[0].replica_id;
    alice.fail(a, "bad input").await;
    assert_eq!(app.work_unit(wu).await.state, "failed");

    let reply = bob.request(Vec::new(), 0).await.unwrap();
    assert_eq!(reply.abort, vec![b]);
    let replica = app.replicas(wu).await.into_iter().find(|r| r.id == b).unwrap();
    assert_eq!(replica.outcome.as_deref(), Some("didnt_need"));
}

#[tokio::test]
async fn valid_results_restore_the_quota_that_errors_took() {
    let app = TestApp::spawn().await;
    app.publish(4, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    let assignments = alice.fetch(4).await;
    alice.fail(assignments[0].replica_id, "oops").await;
    alice.fail(assignments[1].replica_id, "oops").await;
    assert_eq!(app.host(alice.host_id).await.daily_quota, 250);
    assert_eq!(app.host(alice.host_id).await.consecutive_valid, 0);

    alice.succeed(assignments[2].replica_id, b"ok").await;
    alice.succeed(assignments[3].replica_id, b"ok").await;
    let host = app.host(alice.host_id).await;
    assert_eq!(host.daily_quota, 1000, "valid results double the quota, up to the maximum");
    assert_eq!(host.consecutive_valid, 2);
}

#[tokio::test]
async fn only_results_of_one_instrumentation_version_are_compared() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, policy(2, 2)).await[..] else { panic!() };
    let (old, new, newer) = (app.volunteer("old").await, app.volunteer("new").await, app.volunteer("third").await);
    let o = old.fetch(1).await[0].replica_id;
    let n = new.fetch(1).await[0].replica_id;
    // The same output from a client whose pass is another version: not a quorum.
    old.upload(o, b"42").await.unwrap();
    let mut report = crate::helpers::success(o, b"42");
    report.instrumentation_version = wasmgrid_sandbox::INSTRUMENTATION_VERSION - 1;
    old.request(vec![report], 0).await.unwrap();
    new.succeed(n, b"42").await;
    app.sweep().await;
    assert_eq!(app.work_unit(wu).await.state, "active", "two versions never make a quorum");
    assert_eq!(app.replicas(wu).await.len(), 3, "one more replica, for a second result of one version");

    let t = newer.fetch(1).await[0].replica_id;
    newer.succeed(t, b"42").await;
    app.sweep().await;
    let work_unit = app.work_unit(wu).await;
    assert_eq!(work_unit.state, "validated");
    assert_eq!(work_unit.canonical_replica_id, Some(n));
    let states: Vec<_> = app.replicas(wu).await.into_iter().map(|r| (r.id, r.validate_state)).collect();
    assert_eq!(states, vec![(o, "incomparable".into()), (n, "valid".into()), (t, "valid".into())]);
    assert_eq!(app.host(old.host_id).await.total_credit, 0.0, "an uncompared result earns nothing");
    assert_eq!(app.host(old.host_id).await.invalid_count, 0, "and is not held against its host");
}

#[tokio::test]
async fn a_host_that_cannot_run_the_module_costs_the_work_unit_no_error() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, policy(1, 1)).await[..] else { panic!() };
    let (riscv, other) = (app.volunteer("riscv").await, app.volunteer("other").await);
    let r = riscv.fetch(1).await[0].replica_id;
    let mut report = crate::helpers::failure(r, "");
    report.outcome = wasmgrid_protocol::api::ReportedOutcome::HostError {
        reason: "this host cannot run this module: the compiler panicked".into(),
    };
    riscv.request(vec![report], 0).await.unwrap();

    let replicas = app.replicas(wu).await;
    assert_eq!(replicas.len(), 2, "the work unit goes to another host");
    assert_eq!(replicas[0].outcome.as_deref(), Some("no_reply"), "not an error of the work unit");
    assert_eq!(app.host(riscv.host_id).await.error_count, 0, "nor of the host");
    assert!(riscv.fetch(1).await.is_empty(), "and the host that cannot run it is not asked again");
    let o = other.fetch(1).await[0].replica_id;
    other.succeed(o, b"42").await;
    app.sweep().await;
    assert_eq!(app.work_unit(wu).await.state, "validated");
}
