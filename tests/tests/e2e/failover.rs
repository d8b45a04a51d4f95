//! One project at two URLs: two server processes on one database and one blob store, and a
//! volunteer attached to both (`attach --mirror`). The first dies in the middle of a batch;
//! the volunteer carries on through the second, as the same host, and the batch completes.

use std::time::{Duration, Instant};

use crate::harness::{Server, Volunteer, signal, single, workunit};

const WORK_UNITS: i64 = 8;
const VALIDATED: &str = "select count(*) from work_unit where state = 'validated'";
const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn when_the_first_server_dies_mid_batch_the_volunteer_finishes_it_through_the_second() {
    let mut first = Server::start().await;
    let (mut second, second_url) = first.start_twin().await;
    first.publish(&workunit("probes/spin.wat"), WORK_UNITS as usize, single()).await;
    let volunteer = Volunteer::unattached();
    // A short work buffer: the daemon holds a task running and one waiting, and asks for
    // another (at most once a second, the server's retry_after) as one starts, so that
    // most of the batch is still to be handed out when the first server dies.
    let settings = volunteer.data_dir.path().join("client.toml");
    let text = std::fs::read_to_string(&settings).unwrap() + "work_buffer_seconds = 1\n";
    std::fs::write(&settings, text).unwrap();
    volunteer.attach_to(&first, "steadfast", &["--mirror", &second_url]).await;
    let mut daemon = volunteer.start();

    let give_up = Instant::now() + TIMEOUT;
    while first.count("select count(*) from replica where state <> 'unsent'").await < 2 {
        assert!(Instant::now() < give_up, "no work handed out by the first server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.stop_with(libc::SIGKILL, TIMEOUT).await;
    let killed_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select now()").fetch_one(&first.pool).await.unwrap();
    let unsent = first.count("select count(*) from replica where state = 'unsent'").await;
    assert!(unsent > 0, "the batch was under way when the first server died");

    first.wait_for_count(VALIDATED, WORK_UNITS, TIMEOUT).await;
    let after_the_kill =
        |column: &str| format!("select count(*) from replica where {column} > '{}'", killed_at.to_rfc3339());
    assert!(first.count(&after_the_kill("sent_at")).await >= unsent, "the rest was handed out by the second");
    assert!(first.count(&after_the_kill("received_at")).await >= unsent, "and reported to it");
    assert_eq!(first.count("select count(*) from host").await, 1, "one host, known to both servers");
    assert_eq!(first.count("select count(*) from replica").await, WORK_UNITS, "nothing was handed out twice");

    let status = volunteer.status().await;
    assert_eq!(status["projects"][0]["url"], first.url.as_str(), "{status}");
    assert_eq!(status["projects"][0]["url_in_use"], second_url.as_str(), "{status}");
    let table = volunteer.command(&["status"]).output().await.unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&format!("mirrors {second_url}  using {second_url}")), "{table}");

    signal(&daemon, libc::SIGTERM);
    daemon.wait().await.unwrap();
    signal(&second, libc::SIGTERM);
    second.wait().await.unwrap();
}
