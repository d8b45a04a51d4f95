//! When the daemon talks to a server: never sooner than the server's `retry_after`.

use std::time::{Duration, Instant};

use crate::harness::{Server, Volunteer, signal, single, workunit};

#[tokio::test]
async fn the_daemon_never_asks_again_before_the_servers_retry_after() {
    let retry_after = 2;
    let server = Server::start_with(&[
        "--busy-retry-after",
        &retry_after.to_string(),
        "--idle-retry-after",
        &retry_after.to_string(),
    ])
    .await;
    server.record_contacts().await;
    let policy = single();
    server.publish(&workunit("probes/determinism.wat"), 3, policy).await;
    let volunteer = Volunteer::attach(&server, "patient").await;

    // Requests that get work (busy), then ones that find none (idle).
    let daemon = volunteer.start();
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        let validated = server.count("select count(*) from work_unit where state = 'validated'").await;
        if validated == 3 && server.contacts().await.len() >= 6 {
            break;
        }
        assert!(Instant::now() < give_up, "{validated} validated, {:?}", server.contacts().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal(&daemon, libc::SIGTERM);
    daemon.wait_with_output().await.unwrap();

    let contacts = server.contacts().await;
    for pair in contacts.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= chrono::Duration::seconds(retry_after), "asked again after {gap}: {contacts:?}");
    }
}

/// Once the daemon knows how long a project's tasks take, it keeps a buffer of them: one
/// request fetches many and reports many, rather than one exchange per task.
#[tokio::test]
async fn one_request_serves_many_short_tasks() {
    let server = Server::start().await;
    server.record_contacts().await;
    let policy = single();
    let tasks = 100;
    server.publish(&workunit("probes/determinism.wat"), tasks, policy).await;
    let volunteer = Volunteer::attach(&server, "buffered").await;

    volunteer.run_until_idle_with(&["--cores", "1"], Duration::from_secs(120)).await;

    assert_eq!(server.count("select count(*) from work_unit where state = 'validated'").await, tasks as i64);
    let requests = server.contacts().await.len();
    assert!(requests <= 10, "{requests} scheduler requests for {tasks} tasks");
}
