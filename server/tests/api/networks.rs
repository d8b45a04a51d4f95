//! Quorums that one person's accounts cannot fill, on a public grid: the replicas of a work
//! unit go to distinct networks (IPv4 /24s; each volunteer here sends its requests from an
//! address of its own in 127.0.0.0/8), errors count once per network, and accounts without
//! a validated result are never a whole quorum. What is left is the documented limit:
//! colluders who control more networks than the honest volunteers of a work unit win.

use std::net::{IpAddr, Ipv4Addr};

use reqwest::{Method, StatusCode};
use serde_json::json;
use wasmgrid_server::publishing::ReplicationPolicy;

use crate::helpers::{TestApp, Volunteer, policy};

const RIGHT: &[u8] = b"the right answer";
const WRONG: &[u8] = b"the colluders' answer";

async fn public_grid() -> TestApp {
    TestApp::spawn_with(|config| config.scheduler.private_grid = false).await
}

/// An address in network 127.0.`network`.0/24.
fn in_network(network: u8, host: u8) -> IpAddr {
    Ipv4Addr::new(127, 0, network, host).into()
}

/// Fetches at most one replica and reports `output` for it; whether there was one.
async fn take_one(volunteer: &Volunteer, output: &[u8]) -> bool {
    match volunteer.fetch(1).await.first() {
        Some(assignment) => {
            volunteer.succeed(assignment.replica_id, output).await;
            true
        }
        None => false,
    }
}

#[tokio::test]
async fn a_work_unit_goes_to_one_host_per_network_whatever_the_accounts() {
    let app = public_grid().await;
    let work_unit = app.publish(1, ReplicationPolicy { max_error_replicas: 3, ..policy(2, 2) }).await[0];
    // One person's three accounts, on three addresses of one /24.
    let mut sybils = Vec::new();
    for host in 1..=3 {
        sybils.push(app.volunteer_at(&format!("sybil-{host}"), in_network(9, host)).await);
    }

    let first = sybils[0].fetch(1).await;
    assert_eq!(first.len(), 1);
    for sybil in &sybils[1..] {
        assert!(sybil.fetch(1).await.is_empty(), "the other replica is not for this network");
    }
    // Reporting an error frees no place for another account of the network: three errors
    // from one person cannot fail a work unit any more.
    sybils[0].fail(first[0].replica_id, "exit status 1").await;
    for sybil in &sybils[1..] {
        assert!(sybil.fetch(1).await.is_empty(), "not even the replica the error created");
    }
    let honest = app.volunteer_at("honest", in_network(1, 1)).await;
    let assignments = honest.fetch(2).await;
    assert_eq!(assignments.len(), 1, "one replica per work unit and host");
    assert_eq!(assignments[0].work_unit_id, work_unit);
    let networks: Vec<Option<String>> =
        sqlx::query_scalar("select network from replica where work_unit_id = $1 and host_id is not null order by id")
            .bind(work_unit)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(networks, [Some("127.0.9.0/24".to_owned()), Some("127.0.1.0/24".to_owned())]);
}

#[tokio::test]
async fn errors_from_one_network_count_once_towards_failing_a_work_unit() {
    let app = public_grid().await;
    let work_unit = app.publish(1, ReplicationPolicy { max_error_replicas: 2, ..policy(2, 2) }).await[0];
    let sybil = app.volunteer_at("sybil", in_network(9, 1)).await;
    let replica = sybil.fetch(1).await[0].replica_id;
    sybil.fail(replica, "exit status 1").await;
    // A second host of the same account would be refused by the account rule; a host on
    // another address of the same network by the network rule. Only a second network counts.
    let neighbour = app.volunteer_at("neighbour", in_network(9, 2)).await;
    assert!(neighbour.fetch(1).await.is_empty());
    assert_eq!(app.work_unit(work_unit).await.state, "active");
    let elsewhere = app.volunteer_at("elsewhere", in_network(2, 1)).await;
    let replica = elsewhere.fetch(1).await[0].replica_id;
    elsewhere.fail(replica, "exit status 2").await;
    let failed = app.work_unit(work_unit).await;
    assert_eq!(failed.state, "failed");
    assert_eq!(failed.failure_reason.as_deref(), Some("too many errors (2 replicas failed; last: exit status 2)"));
}

/// One work unit with a quorum of 2 on a fresh public grid: colluding accounts on
/// `colluder_networks` (new accounts all, several per network) ask first and return one
/// wrong answer; then honest new accounts on `honest_networks`, one each, in turn. Rounds
/// go on until nobody gets a replica. Returns the canonical output, if the work unit was
/// validated, and the credit the colluders earned.
async fn contest(colluder_networks: &[u8], honest_networks: &[u8]) -> (Option<Vec<u8>>, f64) {
    let app = public_grid().await;
    let work_unit = app.publish(1, ReplicationPolicy { max_total_replicas: 12, ..policy(2, 2) }).await[0];
    let mut colluders = Vec::new();
    for &network in colluder_networks {
        for host in 1..=2 {
            colluders.push(app.volunteer_at(&format!("colluder-{network}-{host}"), in_network(network, host)).await);
        }
    }
    let mut honest = Vec::new();
    for &network in honest_networks {
        honest.push(app.volunteer_at(&format!("honest-{network}"), in_network(network, 1)).await);
    }
    loop {
        let mut handed_out = false;
        for colluder in &colluders {
            handed_out |= take_one(colluder, WRONG).await;
        }
        for volunteer in &honest {
            handed_out |= take_one(volunteer, RIGHT).await;
        }
        if !handed_out {
            break;
        }
    }
    let canonical: Option<Vec<u8>> =
        sqlx::query_scalar(
            "select r.output_sha256 from work_unit w
         join replica r on r.id = w.canonical_replica_id
         where w.id = $1 and w.state = 'validated'",
        )
        .bind(work_unit)
        .fetch_optional(&app.pool)
        .await
        .unwrap()
        .map(|hash: String| {
            if hash == wasmgrid_protocol::Sha256Hash::of(RIGHT).to_hex() { RIGHT.to_vec() } else { WRONG.to_vec() }
        });
    app.sweep().await;
    let mut colluder_credit = 0.0;
    for colluder in &colluders {
        colluder_credit += app.account_credit(colluder.account_id).await;
    }
    (canonical, colluder_credit)
}

#[tokio::test]
async fn colluding_accounts_from_one_address_cannot_validate_a_wrong_answer() {
    // Six accounts behind one address, and three honest volunteers.
    let (canonical, colluder_credit) = contest(&[9], &[1, 2, 3]).await;
    assert_eq!(canonical.as_deref(), Some(RIGHT));
    assert_eq!(colluder_credit, 0.0);
}

#[tokio::test]
async fn two_new_accounts_are_never_a_whole_quorum() {
    // Two colluders on two networks agree at once, but as the only new accounts that agree
    // they need a third; no honest volunteer is there to settle it, so nothing is accepted.
    let (canonical, _) = contest(&[8, 9], &[]).await;
    assert_eq!(canonical, None, "two free accounts decided a work unit");
    // With honest volunteers on as many networks (and one more to break the tie), the
    // right answer wins.
    let (canonical, colluder_credit) = contest(&[8, 9], &[1, 2, 3]).await;
    assert_eq!(canonical.as_deref(), Some(RIGHT));
    assert_eq!(colluder_credit, 0.0);
}

#[tokio::test]
async fn colluders_win_only_by_controlling_more_networks_than_the_honest_volunteers() {
    // The limit, as documented: three networks of colluders outvote two of honest
    // volunteers (each side is new, so each needs three agreeing networks).
    let (canonical, _) = contest(&[7, 8, 9], &[1, 2]).await;
    assert_eq!(canonical.as_deref(), Some(WRONG));
    // Two networks of colluders against two of honest volunteers decide nothing.
    let (canonical, _) = contest(&[8, 9], &[1, 2]).await;
    assert_eq!(canonical, None);
}

#[tokio::test]
async fn an_honest_account_with_a_validated_history_makes_a_quorum_with_one_new_account() {
    let app = public_grid().await;
    let ids = app.publish(2, policy(2, 2)).await;
    let veterans: Vec<Volunteer> = {
        let mut veterans = Vec::new();
        for network in 1..=3 {
            veterans.push(app.volunteer_at(&format!("veteran-{network}"), in_network(network, 1)).await);
        }
        veterans
    };
    // Three new accounts validate the first work unit between them, and gain a history.
    for veteran in &veterans {
        assert!(take_one(veteran, RIGHT).await);
    }
    assert_eq!(app.work_unit(ids[0]).await.state, "validated");
    let newcomer = app.volunteer_at("newcomer", in_network(4, 1)).await;
    assert!(take_one(&veterans[0], RIGHT).await);
    assert!(take_one(&newcomer, RIGHT).await);
    assert_eq!(app.work_unit(ids[1]).await.state, "validated", "a veteran and a newcomer are a quorum of 2");
    assert_eq!(app.replicas(ids[1]).await.len(), 2, "and no third replica was needed");
}

#[tokio::test]
async fn an_app_whose_volunteers_share_a_network_may_say_so() {
    let app = public_grid().await;
    let token = app.publisher_token("lab").await;
    let call = |method: Method, path: String, body: serde_json::Value| {
        app.client.request(method, &path).bearer_auth(&token).json(&body).send()
    };
    let created = call(Method::POST, "/api/v1/apps".into(), json!({ "name": "lab-app", "distinct_networks": false }));
    let created = created.await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.json::<serde_json::Value>().await.unwrap()["distinct_networks"], false);
    let default = call(Method::POST, "/api/v1/apps".into(), json!({ "name": "public-app" })).await.unwrap();
    assert_eq!(default.json::<serde_json::Value>().await.unwrap()["distinct_networks"], true);

    let module = wat::parse_str("(module (memory (export \"memory\") 1) (func (export \"_start\")))").unwrap();
    let published = app.client.request(Method::POST, "/api/v1/apps/lab-app/versions").bearer_auth(&token).body(module);
    assert_eq!(published.send().await.unwrap().status(), StatusCode::CREATED);
    let batch = call(Method::POST, "/api/v1/batches".into(), json!({ "app": "lab-app", "name": "b" })).await.unwrap();
    let batch = batch.json::<serde_json::Value>().await.unwrap()["batch_id"].as_i64().unwrap();
    let body = json!({
        "work_units": [{ "name": "wu" }],
        "policy": {
            "quorum": 2, "replicas": 2, "max_errors": 3, "max_total": 4, "deadline_seconds": 3600,
            "limits": { "fuel": 1000, "memory_bytes": 65536, "output_bytes": 1024, "wall_time_seconds": 10 }
        }
    });
    let added = call(Method::POST, format!("/api/v1/batches/{batch}/work-units"), body).await.unwrap();
    assert_eq!(added.status(), StatusCode::OK, "{}", added.text().await.unwrap());

    // Two colleagues behind the lab's one address both get a replica.
    let first = app.volunteer_at("colleague-1", in_network(5, 1)).await;
    let second = app.volunteer_at("colleague-2", in_network(5, 1)).await;
    assert_eq!(first.fetch(1).await.len(), 1);
    assert_eq!(second.fetch(1).await.len(), 1);
}
