//! Adaptive replication, over the real HTTP API: a host with a run of checked valid results
//! for an app version gets work units alone, checked at random; once it is caught returning
//! a wrong result, everything it had accepted on trust is rechecked by other hosts and
//! corrected, and the credit for the wrong results is withdrawn, on record.

use reqwest::Method;
use wasmgrid_client::publish::client::PublisherClient;
use wasmgrid_server::publishing::{AppReplication, ReplicationPolicy, WorkUnitSpec};

use crate::helpers::{Published, TestApp, Volunteer, policy};

const RIGHT: &[u8] = b"the right answer";
const WRONG: &[u8] = b"a made-up answer";
/// Checked valid results in a row that make a host trusted, in these tests.
const TRUSTED_AFTER: u32 = 3;

async fn adaptive_grid() -> TestApp {
    TestApp::spawn_with(|config| config.scheduler.adaptive.trusted_after = TRUSTED_AFTER).await
}

fn specs(count: usize, policy: ReplicationPolicy) -> Vec<WorkUnitSpec> {
    (0..count).map(|i| WorkUnitSpec { policy, ..WorkUnitSpec::new(format!("wu-{i:03}")) }).collect()
}

async fn publish_adaptive(app: &TestApp, count: usize) -> Published {
    let replication = AppReplication { adaptive_replication: true, ..AppReplication::default() };
    app.publish_app(specs(count, policy(2, 2)), replication).await
}

/// Whether replica `replica_id` went alone: handed on trust, its work unit's other replicas
/// no longer needed.
async fn went_alone(app: &TestApp, replica_id: i64) -> bool {
    let on_trust: bool = sqlx::query_scalar("select on_trust from replica where id = $1")
        .bind(replica_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    if on_trust {
        let work_unit: i64 = sqlx::query_scalar("select work_unit_id from replica where id = $1")
            .bind(replica_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        let unsent = app
            .count(&format!("select count(*) from replica where work_unit_id = {work_unit} and state = 'unsent'"))
            .await;
        assert_eq!(unsent, 0, "a replica on trust leaves no sibling in the queue");
    }
    on_trust
}

/// Where the recheck of work unit `id` is, if one was asked for.
async fn recheck_of(app: &TestApp, id: i64) -> Option<String> {
    sqlx::query_scalar("select recheck::text from work_unit where id = $1").bind(id).fetch_one(&app.pool).await.unwrap()
}

/// The host's run of checked valid results for the app's newest version.
async fn run_of(app: &TestApp, volunteer: &Volunteer, app_id: i64) -> i64 {
    app.count(&format!(
        "select coalesce(max(t.consecutive_valid), 0)::bigint from host_app_version t
         join app_version v on v.id = t.app_version_id
         where t.host_id = {} and v.app_id = {app_id}
           and v.version = (select max(version) from app_version where app_id = {app_id})",
        volunteer.host_id
    ))
    .await
}

/// One work unit for `veteran`, with `checker` taking the sibling when there is one: the
/// veteran answers `alone_answer` when it went alone, else the right answer. Returns whether
/// it went alone, and the work unit.
async fn one_round(app: &TestApp, veteran: &Volunteer, checker: &Volunteer, alone_answer: &[u8]) -> (bool, i64) {
    let assignment = veteran.fetch(1).await.pop().expect("work for the veteran");
    let alone = went_alone(app, assignment.replica_id).await;
    if alone {
        veteran.succeed(assignment.replica_id, alone_answer).await;
    } else {
        let sibling = checker.fetch(1).await.pop().expect("the sibling for the checker");
        assert_eq!(sibling.work_unit_id, assignment.work_unit_id);
        veteran.succeed(assignment.replica_id, RIGHT).await;
        checker.succeed(sibling.replica_id, RIGHT).await;
    }
    (alone, assignment.work_unit_id)
}

/// Runs rounds until the veteran has gone alone `times` times, answering `alone_answer`
/// then; returns those work units. The chance of a check falls from a half as the run
/// grows, so a few dozen rounds are plenty.
async fn until_alone(
    app: &TestApp,
    veteran: &Volunteer,
    checker: &Volunteer,
    alone_answer: &[u8],
    times: usize,
) -> Vec<i64> {
    let mut alone = Vec::new();
    for _ in 0..200 {
        let (went_alone, work_unit) = one_round(app, veteran, checker, alone_answer).await;
        if went_alone {
            alone.push(work_unit);
            if alone.len() == times {
                return alone;
            }
        }
    }
    panic!("the veteran went alone only {} times in 200 rounds", alone.len());
}

/// The veteran answers right when alone and wrong when checked, until it is caught: its
/// wrong answer loses to the two checkers' right ones. Returns the work unit it was caught
/// in, and those it answered alone (rightly) meanwhile.
async fn get_caught(
    app: &TestApp,
    veteran: &Volunteer,
    checker: &Volunteer,
    second_checker: &Volunteer,
) -> (i64, Vec<i64>) {
    let mut alone = Vec::new();
    loop {
        let assignment = veteran.fetch(1).await.pop().unwrap();
        if went_alone(app, assignment.replica_id).await {
            veteran.succeed(assignment.replica_id, RIGHT).await;
            alone.push(assignment.work_unit_id);
            continue;
        }
        veteran.succeed(assignment.replica_id, WRONG).await;
        let sibling = checker.fetch(1).await.pop().unwrap();
        checker.succeed(sibling.replica_id, RIGHT).await;
        let third = second_checker.fetch(1).await.pop().unwrap();
        assert_eq!(third.work_unit_id, assignment.work_unit_id, "the disagreement is settled first");
        second_checker.succeed(third.replica_id, RIGHT).await;
        return (assignment.work_unit_id, alone);
    }
}

#[tokio::test]
async fn a_host_earns_trust_per_app_version_then_gets_work_units_alone_accepted_on_its_word() {
    let app = adaptive_grid().await;
    let published = publish_adaptive(&app, 120).await;
    let veteran = app.volunteer("veteran").await;
    let checker = app.volunteer("checker").await;

    // Until its run reaches the threshold, every work unit is replicated.
    for round in 0..TRUSTED_AFTER {
        let (alone, _) = one_round(&app, &veteran, &checker, RIGHT).await;
        assert!(!alone, "alone after {round} checked results");
    }
    assert_eq!(run_of(&app, &veteran, published.app_id).await, i64::from(TRUSTED_AFTER));

    let alone = until_alone(&app, &veteran, &checker, RIGHT, 1).await[0];
    let run_before = run_of(&app, &veteran, published.app_id).await;
    let work_unit = app.work_unit(alone).await;
    assert_eq!(work_unit.state, "validated", "accepted on the host's word alone");
    let replicas = app.replicas(alone).await;
    let outcomes: Vec<(&str, Option<&str>)> =
        replicas.iter().map(|r| (r.state.as_str(), r.outcome.as_deref())).collect();
    assert_eq!(outcomes, [("over", Some("success")), ("over", Some("didnt_need"))]);
    assert!(replicas[0].credit.unwrap() > 0.0, "credited as if validated");
    let accepted_on_trust: bool = sqlx::query_scalar("select accepted_on_trust from work_unit where id = $1")
        .bind(alone)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(accepted_on_trust);
    assert_eq!(run_of(&app, &veteran, published.app_id).await, run_before, "an unchecked result proves nothing");
    let accepted_in_a_row = app
        .count(&format!(
            "select accepted_in_a_row::bigint from host_app_version t join app_version v on v.id = t.app_version_id
             where t.host_id = {} and v.app_id = {}",
            veteran.host_id, published.app_id
        ))
        .await;
    assert_eq!(accepted_in_a_row, run_before + 1, "but it lengthens the run that makes checks rarer");

    // The status page counts results on trust apart from checked ones.
    let status: wasmgrid_protocol::stats::ProjectStatus =
        app.client.request(Method::GET, "/api/v1/stats/status").send().await.unwrap().json().await.unwrap();
    let batch = status.batches.iter().find(|b| b.id == published.batch_id).unwrap();
    assert_eq!(batch.on_trust, 1);
    assert_eq!(batch.checked, batch.validated - 1);

    // A new version of the app starts trust again (the old version's batch is cancelled,
    // so that the new one's work comes next).
    let publisher = PublisherClient::new(app.client.clone(), app.publisher_token("tests").await);
    publisher.cancel_batch(published.batch_id).await.unwrap();
    let newer = app.publish_version(published.app_id, specs(5, policy(2, 2))).await;
    for _ in 0..3 {
        let assignment = veteran.fetch(1).await.pop().unwrap();
        assert!(newer.work_units.contains(&assignment.work_unit_id));
        assert!(!went_alone(&app, assignment.replica_id).await, "no run yet for the new version");
        let sibling = checker.fetch(1).await.pop().unwrap();
        veteran.succeed(assignment.replica_id, RIGHT).await;
        checker.succeed(sibling.replica_id, RIGHT).await;
    }
    assert_eq!(run_of(&app, &veteran, published.app_id).await, 3);
}

#[tokio::test]
async fn a_caught_host_has_its_results_on_trust_rechecked_corrected_and_its_credit_withdrawn() {
    let app = adaptive_grid().await;
    let published = publish_adaptive(&app, 150).await;
    let veteran = app.volunteer("veteran").await;
    let checker = app.volunteer("checker").await;
    let second_checker = app.volunteer("second checker").await;
    for _ in 0..TRUSTED_AFTER {
        one_round(&app, &veteran, &checker, RIGHT).await;
    }
    // Trusted, it answers one work unit alone honestly, then cheats on two.
    let honest = until_alone(&app, &veteran, &checker, RIGHT, 1).await;
    let cheated = until_alone(&app, &veteran, &checker, WRONG, 2).await;
    // And one result it had accepted on trust is older than the look-back window.
    let old = until_alone(&app, &veteran, &checker, WRONG, 1).await[0];
    sqlx::query("update work_unit set finished_at = now() - interval '40 days' where id = $1")
        .bind(old)
        .execute(&app.pool)
        .await
        .unwrap();
    // It holds one more replica alone when it is caught: that one is no longer believed.
    let held = loop {
        let assignment = veteran.fetch(1).await.pop().unwrap();
        if went_alone(&app, assignment.replica_id).await {
            break assignment;
        }
        let sibling = checker.fetch(1).await.pop().unwrap();
        veteran.succeed(assignment.replica_id, RIGHT).await;
        checker.succeed(sibling.replica_id, RIGHT).await;
    };

    // Caught: a checked work unit where its answer loses.
    let (caught_in, honest_alone) = get_caught(&app, &veteran, &checker, &second_checker).await;
    let honest: Vec<i64> = honest.into_iter().chain(honest_alone).collect();
    assert_eq!(app.work_unit(caught_in).await.state, "validated");
    assert_eq!(run_of(&app, &veteran, published.app_id).await, 0, "caught: its run is over");
    let longest_run = app
        .count(&format!(
            "select max(accepted_in_a_row)::bigint from host_app_version where host_id = {}",
            veteran.host_id
        ))
        .await;
    assert_eq!(longest_run, 0, "both runs");

    veteran.succeed(held.replica_id, RIGHT).await;
    assert_eq!(app.work_unit(held.work_unit_id).await.state, "active", "a caught host's word is not enough");
    // The rest of the batch is cancelled, so that only the rechecks are left to hand out
    // (validated work units stay validated, and their rechecks go on).
    let publisher = PublisherClient::new(app.client.clone(), app.publisher_token("tests").await);
    publisher.cancel_batch(published.batch_id).await.unwrap();

    // The look-back sends its recent results on trust out again, and not the old one.
    app.sweep().await;
    let credit_before = app.host(veteran.host_id).await.total_credit;
    let rechecking: Vec<i64> = sqlx::query_scalar("select id from work_unit where recheck = 'pending' order by id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let mut expected: Vec<i64> = honest.iter().chain(&cheated).copied().collect();
    expected.sort_unstable();
    assert_eq!(rechecking, expected);
    for volunteer in [&checker, &second_checker] {
        let assignments = volunteer.fetch(64).await;
        assert_eq!(assignments.len(), expected.len(), "one replica of each recheck each");
        for assignment in assignments {
            volunteer.succeed(assignment.replica_id, RIGHT).await;
        }
    }
    for &id in &honest {
        assert_eq!(recheck_of(&app, id).await.as_deref(), Some("confirmed"));
    }
    for &id in &cheated {
        assert_eq!(recheck_of(&app, id).await.as_deref(), Some("corrected"));
        let replicas = app.replicas(id).await;
        assert_eq!(replicas[0].validate_state, "invalid", "the veteran's wrong result");
        assert_eq!(replicas[0].credit, Some(0.0));
    }
    assert_eq!(recheck_of(&app, old).await, None, "beyond the look-back window");

    // The credit for the two wrong results is withdrawn, on record beside the grants.
    let withdrawn: f64 = sqlx::query_scalar(
        "select coalesce(sum(g.credit), 0) from credit_withdrawal w join credit_grant g on g.replica_id = w.replica_id
         where g.host_id = $1",
    )
    .bind(veteran.host_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(app.count("select count(*) from credit_withdrawal").await, 2);
    assert!(withdrawn > 0.0);
    app.sweep().await;
    let credit_after = app.host(veteran.host_id).await.total_credit;
    assert!((credit_before - withdrawn - credit_after).abs() < 1e-9, "{credit_before} - {withdrawn} != {credit_after}");

    // The batch says so: the status counts, and each changed result in the results.
    let status = publisher.batch_status(published.batch_id).await.unwrap();
    assert_eq!((status.checks.confirmed, status.checks.corrected), (honest.len() as u64, 2));
    assert_eq!(status.checks.on_trust, 1, "the old one still rests on trust");
    let page = publisher.results(published.batch_id, None).await.unwrap();
    let right = wasmgrid_protocol::Sha256Hash::of(RIGHT);
    let names: std::collections::HashMap<i64, String> =
        sqlx::query_as::<_, (i64, String)>("select id, name from work_unit")
            .fetch_all(&app.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    for &id in &cheated {
        let result = page.results.iter().find(|r| r.name == names[&id]).unwrap();
        assert!(result.changed_at.is_some(), "{result:?}");
        assert_eq!(result.output.as_ref().unwrap().sha256, right);
        assert!(!result.on_trust);
    }
    for &id in &honest {
        let result = page.results.iter().find(|r| r.name == names[&id]).unwrap();
        assert!(result.changed_at.is_none() && !result.on_trust, "{result:?}");
    }
}

#[tokio::test]
async fn a_host_caught_once_never_works_alone_again_on_that_app_version() {
    let app = adaptive_grid().await;
    let published = publish_adaptive(&app, 150).await;
    let veteran = app.volunteer("veteran").await;
    let checker = app.volunteer("checker").await;
    let second_checker = app.volunteer("second checker").await;
    for _ in 0..TRUSTED_AFTER {
        one_round(&app, &veteran, &checker, RIGHT).await;
    }
    until_alone(&app, &veteran, &checker, RIGHT, 1).await;

    // Caught on a checked work unit: its wrong answer loses to two right ones.
    get_caught(&app, &veteran, &checker, &second_checker).await;

    // A run of right answers several times the threshold earns it nothing alone: a host
    // that was wrong once, cheating or faulty, is checked on every result of this version.
    for round in 0..4 * TRUSTED_AFTER {
        let (alone, _) = one_round(&app, &veteran, &checker, RIGHT).await;
        assert!(!alone, "alone again after {round} checked results");
    }
    assert_eq!(run_of(&app, &veteran, published.app_id).await, i64::from(4 * TRUSTED_AFTER));

    // A new version of the app is a fresh start.
    let publisher = PublisherClient::new(app.client.clone(), app.publisher_token("tests").await);
    publisher.cancel_batch(published.batch_id).await.unwrap();
    app.publish_version(published.app_id, specs(60, policy(2, 2))).await;
    for _ in 0..TRUSTED_AFTER {
        one_round(&app, &veteran, &checker, RIGHT).await;
    }
    until_alone(&app, &veteran, &checker, RIGHT, 1).await;
}
