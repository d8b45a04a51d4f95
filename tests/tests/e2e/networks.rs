//! A public grid on one machine: real daemons that send their requests from addresses of
//! their own in 127.0.0.0/8 (`--bind`, or `bind` in client.toml) are volunteers in distinct
//! networks, and the server hands a work unit's replicas to one host per network.

use std::time::Duration;

use wasmgrid_server::publishing::ReplicationPolicy;

use crate::harness::{Server, Volunteer, workunit};

const TIMEOUT: Duration = Duration::from_secs(120);
const VALIDATED: &str = "select count(*) from work_unit where state = 'validated'";

/// Attaches a new volunteer whose connections leave from `address`.
async fn volunteer_at(server: &Server, name: &str, address: &str) -> Volunteer {
    let volunteer = Volunteer::unattached();
    volunteer.attach_to(server, name, &["--bind", address]).await;
    volunteer
}

#[tokio::test]
async fn daemons_bound_to_distinct_networks_make_a_quorum_that_one_network_cannot() {
    let server = Server::start_with(&["--private-grid", "false"]).await;
    let quorum_of_two = ReplicationPolicy { min_quorum: 2, target_replicas: 2, ..ReplicationPolicy::default() };
    server.publish(&workunit("probes/determinism.wat"), 2, quorum_of_two).await;

    // Two accounts on one /24: only one of them gets each work unit.
    let (first, neighbour) =
        tokio::join!(volunteer_at(&server, "first", "127.0.1.1"), volunteer_at(&server, "neighbour", "127.0.1.2"),);
    tokio::join!(
        first.run_until_idle_with(&["--cores", "1", "--bind", "127.0.1.1"], TIMEOUT),
        neighbour.run_until_idle_with(&["--cores", "1", "--bind", "127.0.1.2"], TIMEOUT),
    );
    assert_eq!(server.count("select count(*) from replica where network = '127.0.1.0/24'").await, 2);
    assert_eq!(server.count("select count(*) from replica where outcome = 'success'").await, 2);

    // A second network agrees, but two new accounts are never a whole quorum. This one
    // binds through client.toml.
    let second = Volunteer::unattached();
    let set = second.command(&["set", "bind", "127.0.2.1"]).output().await.unwrap();
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    second.attach_to(&server, "second", &[]).await;
    second.run_until_idle_with(&["--cores", "1"], TIMEOUT).await;
    assert_eq!(server.count("select count(*) from replica where network = '127.0.2.0/24'").await, 2);
    assert_eq!(server.count(VALIDATED).await, 0, "two new accounts decided a work unit");

    // A third network confirms the answer.
    let third = volunteer_at(&server, "third", "127.0.3.1").await;
    third.run_until_idle_with(&["--cores", "1", "--bind", "127.0.3.1"], TIMEOUT).await;
    assert_eq!(server.count(VALIDATED).await, 2);
    assert_eq!(
        server
            .count(
                "select count(*) from (select work_unit_id from replica where outcome = 'success'
                                       group by work_unit_id having count(distinct network) = 3) spanned"
            )
            .await,
        2,
        "each work unit's answers came from three networks"
    );
    assert_eq!(server.count("select count(*) from replica where network = '127.0.0.0/24'").await, 0);
}
