//! Several projects on one volunteer: detaching one, sharing the machine between them.

use std::time::{Duration, Instant};

use crate::harness::{Server, Volunteer, signal, single, workunit};

const VALIDATED: &str = "select count(*) from work_unit where state = 'validated'";
const SUCCEEDED: &str = "select count(*) from replica where outcome = 'success'";
const TIMEOUT: Duration = Duration::from_secs(120);

fn attached_urls(volunteer: &Volunteer) -> Vec<String> {
    let projects: serde_json::Value =
        serde_json::from_slice(&std::fs::read(volunteer.data_dir.path().join("projects.json")).unwrap()).unwrap();
    projects["projects"].as_array().unwrap().iter().map(|p| p["url"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_detached_project_is_forgotten_and_never_asked_for_work_again() {
    let (left, kept) = tokio::join!(Server::start(), Server::start());
    left.publish(&workunit("probes/determinism.wat"), 3, single()).await;
    kept.publish(&workunit("probes/determinism.wat"), 3, single()).await;
    let volunteer = Volunteer::unattached();
    volunteer.attach_to(&left, "fickle", &[]).await;
    volunteer.attach_to(&kept, "fickle", &[]).await;

    let output = volunteer.command(&["detach", &format!("{}/", left.url)]).output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(attached_urls(&volunteer), [kept.url.as_str()]);
    volunteer.run_until_idle(TIMEOUT).await;

    assert_eq!(kept.count(VALIDATED).await, 3);
    assert_eq!(left.count("select count(*) from replica where state <> 'unsent'").await, 0);
    assert_eq!(left.count("select count(*) from host where last_contact_at is not null").await, 0, "never asked");
}

#[tokio::test]
async fn detaching_abandons_the_projects_tasks_so_that_the_daemon_still_goes_idle() {
    let (left, kept) = tokio::join!(Server::start(), Server::start());
    left.publish(&workunit("probes/spin.wat"), 1, single()).await;
    kept.publish(&workunit("probes/determinism.wat"), 2, single()).await;
    let volunteer = Volunteer::unattached();
    volunteer.attach_to(&left, "fickle", &[]).await;
    let daemon = volunteer.start();
    volunteer.wait_for_task_state("running", TIMEOUT).await;
    signal(&daemon, libc::SIGTERM);
    daemon.wait_with_output().await.unwrap();
    let task_dirs = volunteer.data_dir.path().join("tasks");
    assert_eq!(std::fs::read_dir(&task_dirs).unwrap().count(), 1, "the interrupted task is kept");
    volunteer.attach_to(&kept, "fickle", &[]).await;

    let output = volunteer.command(&["detach", &left.url]).output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("abandoning 1 tasks (0 finished but not reported)"), "{said}");
    assert_eq!(volunteer.status().await["tasks"].as_array().unwrap().len(), 0);
    assert_eq!(std::fs::read_dir(&task_dirs).unwrap().count(), 0, "its directory is gone too");
    volunteer.run_until_idle(TIMEOUT).await;

    assert_eq!(kept.count(VALIDATED).await, 2);
}

/// With the daemon running, `detach` goes through it: the daemon would otherwise keep the
/// project and write its tasks back.
#[tokio::test]
async fn detach_while_the_daemon_runs_abandons_the_projects_tasks_and_keeps_the_daemon() {
    let server = Server::start().await;
    server.publish(&workunit("hostile/infinite_loop.wat"), 1, single()).await;
    let volunteer = Volunteer::attach(&server, "leaving").await;
    let mut daemon = volunteer.start();
    volunteer.wait_for_task_state("running", TIMEOUT).await;

    let output = volunteer.command(&["detach", &server.url]).output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("abandoning 1 tasks"), "{said}");

    let give_up = Instant::now() + TIMEOUT;
    loop {
        let status = volunteer.status().await;
        if status["tasks"].as_array().unwrap().is_empty() && status["projects"] == serde_json::json!([]) {
            assert_eq!(status["daemon_running"], true);
            break;
        }
        assert!(Instant::now() < give_up, "the project's task and the project remain: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(attached_urls(&volunteer).is_empty());
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon goes on");
    let again = volunteer.command(&["detach", &server.url]).output().await.unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("not attached"));

    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait_with_output().await.unwrap().status.success());
    // Started again, it has nothing to do with the project.
    let restarted = volunteer.command(&["run", "--exit-when-idle"]).output().await.unwrap();
    assert!(!restarted.status.success());
    assert!(String::from_utf8_lossy(&restarted.stderr).contains("no project attached"));
}

#[tokio::test]
async fn detaching_a_project_that_is_not_attached_is_an_error() {
    let server = Server::start().await;
    let volunteer = Volunteer::attach(&server, "confused").await;

    let output = volunteer.command(&["detach", "http://127.0.0.1:1"]).output().await.unwrap();

    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not attached to http://127.0.0.1:1"));
    assert_eq!(attached_urls(&volunteer), [server.url.as_str()]);
}

/// Two servers on databases of their own number their replicas independently, so the same
/// replica id comes from both.
#[tokio::test]
async fn two_projects_that_hand_out_the_same_replica_ids_both_get_their_work_done() {
    let (first, second) = tokio::join!(Server::start(), Server::start());
    first.publish(&workunit("probes/determinism.wat"), 3, single()).await;
    second.publish(&workunit("probes/determinism.wat"), 3, single()).await;
    let volunteer = Volunteer::unattached();
    volunteer.attach_to(&first, "both", &[]).await;
    volunteer.attach_to(&second, "both", &[]).await;

    volunteer.run_until_idle(TIMEOUT).await;

    assert_eq!(first.count(VALIDATED).await, 3);
    assert_eq!(second.count(VALIDATED).await, 3);
}

/// Shares 300 and 100 on one core: three quarters of the work goes to the first project,
/// even when other programs starve the idle-priority tasks for a while (the share counts
/// fuel, not seconds).
#[tokio::test]
async fn work_is_done_for_each_project_in_proportion_to_its_resource_share() {
    let (large, small) = tokio::join!(Server::start(), Server::start());
    // Tasks of a second or more, longer than the server's `retry_after`, so that how the
    // daemon shares the core decides the split, not how often it may ask for work.
    large.publish(&workunit("probes/spin.wat"), 40, single()).await;
    small.publish(&workunit("probes/spin.wat"), 40, single()).await;
    let volunteer = Volunteer::unattached();
    volunteer.attach_to(&large, "sharing", &["--resource-share", "300"]).await;
    volunteer.attach_to(&small, "sharing", &["--resource-share", "100"]).await;

    let daemon = volunteer.start();
    let give_up = Instant::now() + Duration::from_secs(300);
    let (done_large, done_small) = loop {
        let done = (large.count(SUCCEEDED).await, small.count(SUCCEEDED).await);
        if done.0 + done.1 >= 16 {
            break done;
        }
        assert!(Instant::now() < give_up, "only {done:?} done");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    signal(&daemon, libc::SIGTERM);
    daemon.wait_with_output().await.unwrap();

    let large_fraction = done_large as f64 / (done_large + done_small) as f64;
    assert!(
        (0.6..=0.9).contains(&large_fraction),
        "{done_large} tasks for the share of 300, {done_small} for the share of 100"
    );
}
