//! Small outputs inside scheduler reports: accepted in place of an upload when they match
//! their report and fit the server's limit; refused whole, with nothing recorded, when not.

use reqwest::StatusCode;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{InlineOutput, ReplicaReport, ReportedOutcome};
use wasmgrid_server::blobs::inline::DEFAULT_INLINE_OUTPUT_LIMIT;

use crate::helpers::{TestApp, Volunteer, failure, policy, success, wait_until};

fn inline(replica_id: i64, output: &[u8]) -> ReplicaReport {
    ReplicaReport { output: Some(InlineOutput(output.to_vec())), ..success(replica_id, output) }
}

async fn state_of(app: &TestApp, replica_id: i64) -> String {
    sqlx::query_scalar("select state::text from replica where id = $1")
        .bind(replica_id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn one_replica(volunteer: &Volunteer) -> i64 {
    volunteer.fetch(1).await[0].replica_id
}

#[tokio::test]
async fn a_quorum_reported_with_outputs_inline_validates_without_uploads() {
    let app = TestApp::spawn().await;
    let work_unit = app.publish(1, policy(2, 2)).await[0];
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    let (a, b) = (one_replica(&alice).await, one_replica(&bob).await);

    let reply = alice.request(vec![inline(a, b"inline answer")], 0).await.unwrap();
    assert_eq!(reply.acknowledged, vec![a]);
    assert_eq!(reply.inline_output_limit, DEFAULT_INLINE_OUTPUT_LIMIT, "the server names its limit");
    bob.request(vec![inline(b, b"inline answer")], 0).await.unwrap();

    assert_eq!(app.work_unit(work_unit).await.state, "validated");
    assert_eq!(
        app.count("select count(*) from replica where uploaded_sha256 is not null").await,
        0,
        "nothing uploaded"
    );
    let served = app.client.download_blob(&Sha256Hash::of(b"inline answer")).await.unwrap();
    assert_eq!(served.as_ref(), b"inline answer");
}

#[tokio::test]
async fn inline_and_uploaded_outputs_mix_in_one_quorum_and_one_request() {
    let app = TestApp::spawn().await;
    let work_units = app.publish(2, policy(2, 2)).await;
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    let alices: Vec<i64> = alice.fetch(2).await.iter().map(|assignment| assignment.replica_id).collect();
    let bobs: Vec<i64> = bob.fetch(2).await.iter().map(|assignment| assignment.replica_id).collect();

    alice.upload(alices[0], b"same").await.unwrap();
    alice.request(vec![success(alices[0], b"same"), inline(alices[1], b"other")], 0).await.unwrap();
    bob.request(vec![inline(bobs[0], b"same"), inline(bobs[1], b"other")], 0).await.unwrap();

    for work_unit in work_units {
        assert_eq!(app.work_unit(work_unit).await.state, "validated");
    }
}

#[tokio::test]
async fn an_inline_output_that_does_not_match_its_report_refuses_the_request() {
    let app = TestApp::spawn().await;
    app.publish(2, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    let replicas: Vec<i64> = alice.fetch(2).await.iter().map(|assignment| assignment.replica_id).collect();
    let honest = inline(replicas[0], b"fine");
    let cases = [
        (
            "another hash",
            ReplicaReport { output: Some(InlineOutput(b"swapped".to_vec())), ..success(replicas[1], b"claimed") },
        ),
        (
            "another size",
            ReplicaReport {
                outcome: ReportedOutcome::Success { output_hash: Sha256Hash::of(b"sized"), output_bytes: 99 },
                ..inline(replicas[1], b"sized")
            },
        ),
        ("a failure", ReplicaReport { output: Some(InlineOutput(b"x".to_vec())), ..failure(replicas[1], "trap") }),
    ];
    for (what, bad) in cases {
        let refused = alice.request(vec![honest.clone(), bad], 0).await.unwrap_err();
        assert_eq!(refused.status(), Some(StatusCode::BAD_REQUEST), "{what}: {refused}");
        assert_eq!(state_of(&app, replicas[0]).await, "in_progress", "{what}: nothing of the request was recorded");
    }
    assert_eq!(app.count("select count(*) from blob where origin = 'output'").await, 0, "nothing was stored");
}

#[tokio::test]
async fn outputs_inline_for_replicas_not_awaiting_this_hosts_report_are_not_stored() {
    let app = TestApp::spawn().await;
    app.publish(2, policy(1, 1)).await;
    let (alice, mallory) = (app.volunteer("alice").await, app.volunteer("mallory").await);
    let alices = one_replica(&alice).await;
    let stored = |output: &'static [u8]| {
        let hash = Sha256Hash::of(output).to_hex();
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("select count(*) from blob where sha256 = $1")
                .bind(hash)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    // Another host's replica: refused, and its bytes never reach the store.
    let refused = mallory.request(vec![inline(alices, b"planted")], 0).await.unwrap_err();
    assert_eq!(refused.status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(stored(b"planted").await, 0);
    assert!(app.blobs.size(Sha256Hash::of(b"planted")).await.unwrap().is_none());

    // A replica already reported: acknowledged again, and the new bytes are not kept.
    alice.request(vec![inline(alices, b"the answer")], 0).await.unwrap();
    let again = alice.request(vec![inline(alices, b"second thoughts")], 0).await.unwrap();
    assert_eq!(again.acknowledged, vec![alices]);
    assert_eq!(stored(b"second thoughts").await, 0);
    assert_eq!(stored(b"the answer").await, 1);
}

#[tokio::test]
async fn an_inline_output_over_the_limit_is_refused_and_can_be_uploaded_instead() {
    let app = TestApp::spawn_with(|config| config.scheduler.inline_output_limit = 16).await;
    app.publish(1, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    let replica = one_replica(&alice).await;
    let output = b"seventeen bytes!!";

    let refused = alice.request(vec![inline(replica, output)], 0).await.unwrap_err();
    assert_eq!(refused.status(), Some(StatusCode::PAYLOAD_TOO_LARGE), "{refused}");
    assert!(refused.to_string().contains("upload it instead"), "{refused}");
    assert_eq!(state_of(&app, replica).await, "in_progress");

    let reply = alice.succeed(replica, output).await;
    assert_eq!(reply.acknowledged, vec![replica]);
    assert_eq!(reply.inline_output_limit, 16);
}

#[tokio::test]
async fn a_server_that_takes_no_inline_outputs_says_so_and_refuses_them() {
    let app = TestApp::spawn_with(|config| config.scheduler.inline_output_limit = 0).await;
    app.publish(1, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    let replica = one_replica(&alice).await;

    let refused = alice.request(vec![inline(replica, b"x")], 0).await.unwrap_err();
    assert_eq!(refused.status(), Some(StatusCode::PAYLOAD_TOO_LARGE));
    assert_eq!(alice.succeed(replica, b"x").await.inline_output_limit, 0);
}

#[tokio::test]
async fn an_inline_report_sent_again_is_acknowledged_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let work_unit = app.publish(1, policy(1, 1)).await[0];
    let alice = app.volunteer("alice").await;
    let replica = one_replica(&alice).await;

    alice.request(vec![inline(replica, b"once")], 0).await.unwrap();
    let again = alice.request(vec![inline(replica, b"once")], 0).await.unwrap();

    assert_eq!(again.acknowledged, vec![replica]);
    assert_eq!(app.work_unit(work_unit).await.state, "validated");
    assert_eq!(app.count("select count(*) from credit_grant").await, 1, "credited once");
}

/// An inline output whose report is recorded needs no upload log (nor the sweep's visit); one
/// stored by a retry that another request's report overtook is logged, and the sweep of
/// unreported outputs deletes it while the recorded output stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_inline_outputs_left_unreported_by_a_racing_retry_are_logged_for_the_sweep() {
    let app = TestApp::spawn().await;
    let work_unit = app.publish(1, policy(1, 1)).await[0];
    let alice = app.volunteer("alice").await;
    let replica = one_replica(&alice).await;
    let (recorded, overtaken) = (b"the answer recorded".as_slice(), b"a retry that says otherwise".as_slice());
    let blob_exists = |output: &[u8]| format!("select count(*) from blob where sha256 = '{}'", Sha256Hash::of(output));

    // Both requests store their output, then queue for the work unit's lock, which this
    // session holds; the first in the queue records its report.
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("select id from work_unit where id = $1 for update")
        .bind(work_unit)
        .execute(&mut *holder)
        .await
        .unwrap();
    // This test's database only: the other tests share the cluster.
    let lock_waits = "select count(*) from pg_stat_activity where datname = current_database() \
                      and wait_event_type = 'Lock' and wait_event in ('tuple', 'transactionid')";
    let first = tokio::spawn({
        let alice = alice.clone();
        async move { alice.request(vec![inline(replica, recorded)], 0).await }
    });
    wait_until(|| async { app.count(lock_waits).await == 1 }).await;
    let second = tokio::spawn({
        let alice = alice.clone();
        async move { alice.request(vec![inline(replica, overtaken)], 0).await }
    });
    wait_until(|| async { app.count(lock_waits).await == 2 }).await;
    holder.commit().await.unwrap();
    assert_eq!(first.await.unwrap().unwrap().acknowledged, vec![replica]);
    assert_eq!(second.await.unwrap().unwrap().acknowledged, vec![replica], "a retry is acknowledged");

    let output: String = sqlx::query_scalar("select output_sha256 from replica where id = $1")
        .bind(replica)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(output, Sha256Hash::of(recorded).to_hex());
    let logged: Vec<String> =
        sqlx::query_scalar("select sha256 from output_upload").fetch_all(&app.pool).await.unwrap();
    assert_eq!(logged, vec![Sha256Hash::of(overtaken).to_hex()], "only the output no report names is logged");

    sqlx::query("update output_upload set check_after = now()").execute(&app.pool).await.unwrap();
    app.sweep().await;
    assert_eq!(app.count(&blob_exists(overtaken)).await, 0);
    assert!(app.blobs.size(Sha256Hash::of(overtaken)).await.unwrap().is_none());
    assert_eq!(app.count(&blob_exists(recorded)).await, 1);
    assert_eq!(app.client.download_blob(&Sha256Hash::of(recorded)).await.unwrap().as_ref(), recorded);
}

/// A late report's inline output is logged even though it is recorded: the purge of its
/// batch does not lock replicas that are no longer running, so only the sweep of unreported
/// outputs is sure to look at what it stored.
#[tokio::test]
async fn a_late_reports_inline_output_is_logged_for_the_sweep() {
    let app = TestApp::spawn().await;
    let work_unit = app.publish(1, policy(1, 1)).await[0];
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    let late = one_replica(&alice).await;
    app.expire(late).await;
    app.sweep().await;
    let sent_again = one_replica(&bob).await;
    bob.request(vec![inline(sent_again, b"the answer")], 0).await.unwrap();
    assert_eq!(app.work_unit(work_unit).await.state, "validated");
    assert_eq!(app.count("select count(*) from output_upload").await, 0, "a running replica's output needs no log");

    let reply = alice.request(vec![inline(late, b"the answer")], 0).await.unwrap();
    assert_eq!(reply.acknowledged, vec![late]);
    assert_eq!(state_of(&app, late).await, "over");
    let logged: Vec<(i64, String)> =
        sqlx::query_as("select replica_id, sha256 from output_upload").fetch_all(&app.pool).await.unwrap();
    assert_eq!(logged, vec![(late, Sha256Hash::of(b"the answer").to_hex())]);
}
