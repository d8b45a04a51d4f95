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
