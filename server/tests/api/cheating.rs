//! Volunteers that return wrong outputs: while the honest replicas of a work unit outnumber
//! its cheaters, no wrong output becomes canonical, and cheaters earn nothing for it.

use std::collections::HashMap;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_server::publishing::ReplicationPolicy;

use crate::helpers::{TestApp, Volunteer, policy, success};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Behaviour {
    Honest,
    /// Every colluder returns the same wrong output, so colluders agree with each other.
    Colluding,
    /// Returns a different wrong output every time.
    Random,
}

fn output(behaviour: Behaviour, work_unit_id: i64, replica_id: i64) -> Vec<u8> {
    match behaviour {
        Behaviour::Honest => format!("answer to {work_unit_id}").into_bytes(),
        Behaviour::Colluding => b"the colluders' answer".to_vec(),
        Behaviour::Random => format!("junk {replica_id}").into_bytes(),
    }
}

#[derive(sqlx::FromRow)]
struct Finished {
    id: i64,
    canonical_output: String,
}

#[tokio::test]
async fn cheaters_cannot_make_a_wrong_output_canonical_while_outnumbered() {
    let app = TestApp::spawn().await;
    app.publish(60, ReplicationPolicy { max_total_replicas: 6, ..policy(2, 2) }).await;
    let mut volunteers: Vec<(Volunteer, Behaviour)> = Vec::new();
    for i in 0..12 {
        volunteers.push((app.volunteer(&format!("honest-{i}")).await, Behaviour::Honest));
    }
    for i in 0..2 {
        volunteers.push((app.volunteer(&format!("colluder-{i}")).await, Behaviour::Colluding));
        volunteers.push((app.volunteer(&format!("random-{i}")).await, Behaviour::Random));
    }
    let behaviour_of_host: HashMap<i64, Behaviour> = volunteers.iter().map(|(v, b)| (v.host_id, *b)).collect();

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _round in 0..50 {
        volunteers.shuffle(&mut rng);
        let mut handed_out = 0;
        for (volunteer, behaviour) in &volunteers {
            for assignment in volunteer.fetch(2).await {
                handed_out += 1;
                let bytes = output(*behaviour, assignment.work_unit_id, assignment.replica_id);
                volunteer.succeed(assignment.replica_id, &bytes).await;
            }
        }
        if handed_out == 0 {
            break;
        }
    }
    app.sweep().await;

    assert_eq!(app.count("select count(*) from work_unit where state = 'active'").await, 0, "every work unit ended");
    let finished: Vec<Finished> = sqlx::query_as(
        "select w.id, r.output_sha256 as canonical_output
         from work_unit w join replica r on r.id = w.canonical_replica_id
         where w.state = 'validated'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut contested = 0;
    for work_unit in &finished {
        let successes: Vec<(i64, i64)> =
            sqlx::query_as("select id, host_id from replica where work_unit_id = $1 and outcome = 'success'")
                .bind(work_unit.id)
                .fetch_all(&app.pool)
                .await
                .unwrap();
        let honest = successes.iter().filter(|(_, host)| behaviour_of_host[host] == Behaviour::Honest).count();
        let cheating = successes.len() - honest;
        if cheating > 0 {
            contested += 1;
        }
        let correct = Sha256Hash::of(&output(Behaviour::Honest, work_unit.id, 0)).to_hex();
        if honest > cheating {
            assert_eq!(
                work_unit.canonical_output, correct,
                "work unit {} has {honest} honest and {cheating} cheating replicas, yet a wrong canonical output",
                work_unit.id
            );
        }
    }
    assert!(contested >= 5, "the test must actually pit cheaters against honest volunteers ({contested})");

    for (volunteer, behaviour) in &volunteers {
        let host = app.host(volunteer.host_id).await;
        if *behaviour == Behaviour::Random {
            assert_eq!(host.total_credit, 0.0, "random cheaters never agree with anyone");
            assert!(host.daily_quota < 1000, "invalid results cost trust");
        }
    }
    // Credit only ever goes to replicas marked valid.
    assert_eq!(
        app.count("select count(*) from credit_grant g join replica r on r.id = g.replica_id where r.validate_state <> 'valid'").await,
        0
    );
}

#[tokio::test]
async fn fuel_is_part_of_the_answer() {
    let app = TestApp::spawn().await;
    let work_unit = app.publish(1, policy(2, 2)).await[0];
    let honest = app.volunteer("honest").await;
    let lowballer = app.volunteer("lowballer").await;
    let second_honest = app.volunteer("second honest").await;
    let output = b"the right answer";

    // The right output, but fuel 0: with the lower median of the fuel, this would make the
    // work unit worth nothing to its honest co-worker too.
    let cheat = lowballer.fetch(1).await[0].replica_id;
    lowballer.upload(cheat, output).await.unwrap();
    let mut report = success(cheat, output);
    report.fuel_used = 0;
    lowballer.request(vec![report], 0).await.unwrap();
    let first = honest.fetch(1).await[0].replica_id;
    honest.succeed(first, output).await;
    assert_eq!(app.work_unit(work_unit).await.state, "active", "the two answers disagree, so a third is asked for");

    let third = second_honest.fetch(1).await[0].replica_id;
    second_honest.succeed(third, output).await;
    app.sweep().await;

    let validated = app.work_unit(work_unit).await;
    assert_eq!(validated.state, "validated");
    let credit = validated.credit.unwrap();
    assert!(credit > 0.0, "the honest fuel sets the credit");
    let states: HashMap<i64, String> =
        app.replicas(work_unit).await.into_iter().map(|r| (r.id, r.validate_state)).collect();
    assert_eq!(states[&cheat], "invalid");
    assert_eq!((states[&first].as_str(), states[&third].as_str()), ("valid", "valid"));
    assert_eq!(app.host(lowballer.host_id).await.total_credit, 0.0);
    assert_eq!(app.host(honest.host_id).await.total_credit, credit);
}
