//! The volunteer daemon against the real server: work flows, and no finished result is
//! lost whenever the daemon or the server stops.

use std::time::Duration;

use wasmgrid_server::publishing::ReplicationPolicy;

use crate::harness::{Server, Volunteer, signal, workunit};

fn policy(min_quorum: u32, target_replicas: u32) -> ReplicationPolicy {
    ReplicationPolicy { min_quorum, target_replicas, ..ReplicationPolicy::default() }
}

const VALIDATED: &str = "select count(*) from work_unit where state = 'validated'";
const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn volunteers_run_published_work_until_it_is_validated() {
    let server = Server::start().await;
    let ids = server.publish(&workunit("probes/determinism.wat"), 12, policy(2, 2)).await;
    let alice = Volunteer::attach(&server, "alice").await;
    let bob = Volunteer::attach(&server, "bob").await;

    tokio::join!(alice.run_until_idle(TIMEOUT), bob.run_until_idle(TIMEOUT));

    assert_eq!(server.count(VALIDATED).await, ids.len() as i64);
    assert_eq!(server.count("select count(*) from replica where validate_state = 'valid'").await, 24);
    server.wait_for_count("select count(*) from credit_grant where applied", 24, TIMEOUT).await;
    let credit_per_host: Vec<f64> =
        sqlx::query_scalar("select total_credit from host order by id").fetch_all(&server.pool).await.unwrap();
    assert_eq!(credit_per_host.len(), 2);
    assert!(credit_per_host.iter().all(|credit| *credit > 0.0), "{credit_per_host:?}");
    assert_eq!(credit_per_host[0], credit_per_host[1], "each host ran one replica of every work unit");
    let status = alice.status().await;
    assert_eq!(status["tasks"].as_array().unwrap().len(), 0, "nothing left unreported: {status}");
}

#[tokio::test]
async fn a_daemon_killed_in_the_middle_of_a_task_finishes_it_after_a_restart() {
    let server = Server::start().await;
    server.publish(&workunit("probes/spin.wat"), 1, policy(1, 1)).await;
    let volunteer = Volunteer::attach(&server, "crashy").await;
    let mut daemon = volunteer.start();
    volunteer.wait_for_task_state("running", TIMEOUT).await;

    signal(&daemon, libc::SIGKILL);
    daemon.wait().await.unwrap();
    volunteer.run_until_idle(TIMEOUT).await;

    assert_eq!(server.count(VALIDATED).await, 1);
    assert_eq!(server.count("select count(*) from replica").await, 1, "the same replica was finished, not a new one");
}

#[tokio::test]
async fn sigterm_stops_the_daemon_and_keeps_the_running_task_for_the_next_start() {
    let server = Server::start().await;
    server.publish(&workunit("probes/spin.wat"), 1, policy(1, 1)).await;
    let volunteer = Volunteer::attach(&server, "polite").await;
    let daemon = volunteer.start();
    volunteer.wait_for_task_state("running", TIMEOUT).await;

    signal(&daemon, libc::SIGTERM);
    let output = tokio::time::timeout(Duration::from_secs(30), daemon.wait_with_output()).await.unwrap().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let status = volunteer.status().await;
    assert_eq!(status["daemon_running"], false);
    assert_eq!(status["tasks"][0]["state"], "pending", "{status}");

    volunteer.run_until_idle(TIMEOUT).await;
    assert_eq!(server.count(VALIDATED).await, 1);
}

#[tokio::test]
async fn a_result_finished_while_the_server_is_down_is_reported_once_both_are_back() {
    let mut server = Server::start().await;
    server.publish(&workunit("probes/spin.wat"), 1, policy(1, 1)).await;
    let volunteer = Volunteer::attach(&server, "patient").await;
    let mut daemon = volunteer.start();
    volunteer.wait_for_task_state("running", TIMEOUT).await;

    // The result finishes with nobody to take it, and the daemon dies before reporting.
    server.stop().await;
    volunteer.wait_for_task_state("finished", TIMEOUT).await;
    signal(&daemon, libc::SIGKILL);
    daemon.wait().await.unwrap();

    server.restart().await;
    volunteer.run_until_idle(TIMEOUT).await;

    assert_eq!(server.count(VALIDATED).await, 1);
    assert_eq!(server.count("select count(*) from replica where outcome = 'success'").await, 1);
    server.wait_for_count("select count(*) from credit_grant where applied", 1, TIMEOUT).await;
}

#[tokio::test]
async fn status_shows_the_running_task_with_its_progress_fuel_and_time_so_far() {
    let server = Server::start().await;
    // Writes 0.5 to its progress file, then works forever.
    server.publish(&workunit("probes/progress.wat"), 1, policy(1, 1)).await;
    let volunteer = Volunteer::attach(&server, "curious").await;
    let mut daemon = volunteer.start();
    volunteer.wait_for_task_state("running", TIMEOUT).await;

    let give_up = std::time::Instant::now() + TIMEOUT;
    let status = loop {
        let status = volunteer.status().await;
        let task = &status["tasks"][0];
        let reported = task["fraction_done"] == 0.5 && task["fuel_used"].as_u64().is_some_and(|fuel| fuel > 0);
        if reported || std::time::Instant::now() > give_up {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let task = &status["tasks"][0];
    assert_eq!(status["daemon_running"], true);
    assert_eq!(task["work_unit"], "wu-0");
    assert_eq!(task["state"], "running");
    assert_eq!(task["fraction_done"], 0.5, "{status}");
    assert!(task["fuel_used"].as_u64().unwrap() > 0, "{status}");
    assert!(task["elapsed_seconds"].as_f64().unwrap() > 0.0, "{status}");
    assert_eq!(task["fuel_limit"], 1_000_000_000_000u64);
    assert_eq!(status["projects"][0]["url"], server.url.as_str());
    let table = volunteer.command(&["status"]).output().await.unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("wu-0") && table.contains("daemon: running") && table.contains("50.0%"), "{table}");

    signal(&daemon, libc::SIGTERM);
    daemon.wait().await.unwrap();
}

#[tokio::test]
async fn a_daemon_that_lost_the_reply_with_its_tasks_gets_them_back() {
    let server = Server::start().await;
    server.publish(&workunit("probes/spin.wat"), 3, policy(1, 1)).await;
    let volunteer = Volunteer::attach(&server, "forgetful").await;
    let mut daemon = volunteer.start();
    volunteer.wait_for_task_state("running", TIMEOUT).await;

    // As if the reply that handed out the tasks never reached the disk: the server has
    // them down as this host's, the host knows nothing of them.
    signal(&daemon, libc::SIGKILL);
    daemon.wait().await.unwrap();
    let in_progress = "select count(*) from replica where state = 'in_progress'";
    assert!(server.count(in_progress).await > 0);
    for state in ["state.json", "state.journal"] {
        let _ = std::fs::remove_file(volunteer.data_dir.path().join(state));
    }
    let _ = std::fs::remove_dir_all(volunteer.data_dir.path().join("tasks"));
    volunteer.run_until_idle(TIMEOUT).await;

    assert_eq!(server.count(VALIDATED).await, 3, "the lost tasks came back, long before their deadline");
    assert_eq!(server.count("select count(*) from replica").await, 3, "the same replicas, not new ones");
}
