//! `client.toml`: the same settings as the `run` flags, which override it.

use std::time::{Duration, Instant};

use crate::harness::{Server, Volunteer, signal, single, workunit};

const TIMEOUT: Duration = Duration::from_secs(120);

fn write_settings(volunteer: &Volunteer, text: &str) -> std::path::PathBuf {
    let path = volunteer.data_dir.path().join("client.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn a_malformed_settings_file_stops_the_client_with_an_error_naming_the_file_and_line() {
    let server = Server::start().await;
    let volunteer = Volunteer::attach(&server, "typo").await;
    let path = write_settings(&volunteer, "cores = 2\ndisk = \"a lot\"\n");

    for command in [vec!["run"], vec!["attach", server.url.as_str()]] {
        let output = tokio::time::timeout(TIMEOUT, volunteer.command(&command).output()).await.unwrap().unwrap();

        assert!(!output.status.success());
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("line 2"), "{error}");
    }
    assert_eq!(server.count("select count(*) from host where last_contact_at is not null").await, 0);
}

#[tokio::test]
async fn a_flag_overrides_the_settings_file() {
    let server = Server::start().await;
    // Runs until stopped, so that both tasks are seen running at once.
    let policy = single();
    server.publish(&workunit("hostile/infinite_loop.wat"), 2, policy).await;
    let volunteer = Volunteer::attach(&server, "overridden").await;
    write_settings(&volunteer, "cores = 1\nbackoff_min_seconds = 1\nbackoff_max_seconds = 2\n");

    let daemon = volunteer.command(&["run", "--cores", "2"]).spawn().unwrap();
    let give_up = Instant::now() + TIMEOUT;
    loop {
        let status = volunteer.status().await;
        let running = status["tasks"].as_array().unwrap().iter().filter(|task| task["state"] == "running").count();
        if running == 2 {
            break;
        }
        assert!(Instant::now() < give_up, "never two tasks at once: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&daemon, libc::SIGTERM);
    daemon.wait_with_output().await.unwrap();
}

/// How many tasks the daemon's status shows running.
async fn running(volunteer: &Volunteer) -> usize {
    let status = volunteer.status().await;
    status["tasks"].as_array().unwrap().iter().filter(|task| task["state"] == "running").count()
}

async fn wait_for_running(volunteer: &Volunteer, expected: usize) {
    let give_up = Instant::now() + TIMEOUT;
    while running(volunteer).await != expected {
        assert!(Instant::now() < give_up, "never {expected} tasks running: {}", volunteer.status().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sighup_reads_the_settings_file_again_and_a_broken_one_changes_nothing() {
    let server = Server::start().await;
    server.publish(&workunit("hostile/infinite_loop.wat"), 2, single()).await;
    let volunteer = Volunteer::attach(&server, "reloaded").await;
    write_settings(&volunteer, "cores = 1\n");
    let daemon = volunteer.command(&["run"]).spawn().unwrap();
    wait_for_running(&volunteer, 1).await;
    // Both tasks are here (one waits for a slot), and a second never starts by itself.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(running(&volunteer).await, 1);
    assert_eq!(volunteer.status().await["tasks"].as_array().unwrap().len(), 2);

    write_settings(&volunteer, "cores = 2\n");
    let mut daemon = daemon;
    signal(&daemon, libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(status) = daemon.try_wait().unwrap() {
        let output = daemon.wait_with_output().await.unwrap();
        panic!("the daemon exited on SIGHUP ({status}): {}", String::from_utf8_lossy(&output.stderr));
    }
    wait_for_running(&volunteer, 2).await;

    write_settings(&volunteer, "cores = \"many\"\n");
    signal(&daemon, libc::SIGHUP);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(running(&volunteer).await, 2, "a broken file leaves the settings in force");

    signal(&daemon, libc::SIGTERM);
    let output = daemon.wait_with_output().await.unwrap();
    assert!(output.status.success(), "the daemon survived the broken file and stopped cleanly");
}
