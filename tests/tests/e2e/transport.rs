//! Plain http is for servers on this machine only, unless the volunteer allows it.
//!
//! A server "on another machine" is a URL whose host is not loopback. Every command here
//! runs with `HTTP_PROXY` pointing at the real server on loopback: a request the client
//! makes reaches that server whatever the URL's host, so a refused command provably sent
//! nothing (no account appears), and an allowed one works without any traffic leaving
//! this machine.

use std::time::Duration;

use tokio::process::Command;

use crate::harness::{Server, Volunteer, single, workunit};

/// Not loopback; never contacted, since the proxy takes every request.
const REMOTE_ADDRESS: &str = "http://192.0.2.1:1";
/// Not loopback either, and a name that never resolves, should a request get past the proxy.
const REMOTE_NAME: &str = "http://grid.invalid:1";
const TIMEOUT: Duration = Duration::from_secs(120);

fn through_proxy(mut command: Command, server: &Server) -> Command {
    for variable in ["http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "REQUEST_METHOD"] {
        command.env_remove(variable);
    }
    command.env("HTTP_PROXY", &server.url);
    command
}

async fn accounts(server: &Server) -> i64 {
    server.count("select count(*) from account").await
}

#[tokio::test]
async fn attaching_over_plain_http_to_another_machine_is_refused_before_any_request() {
    let server = Server::start().await;
    let volunteer = Volunteer::unattached();

    for url in [REMOTE_ADDRESS, REMOTE_NAME] {
        let command = volunteer.command(&["attach", url, "--name", "careful"]);
        let output = tokio::time::timeout(Duration::from_secs(10), through_proxy(command, &server).output())
            .await
            .expect("refused at once, without waiting on a connection")
            .unwrap();

        assert!(!output.status.success());
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(error.contains(&format!("{url} uses plain http to another machine")), "{error}");
        assert!(error.contains("--allow-insecure"), "{error}");
    }
    assert_eq!(accounts(&server).await, 0, "nothing was sent");
    assert!(!volunteer.data_dir.path().join("projects.json").exists());
}

#[tokio::test]
async fn plain_http_to_another_machine_works_with_allow_insecure_and_only_with_it() {
    let server = Server::start().await;
    server.publish(&workunit("probes/determinism.wat"), 2, single()).await;
    let volunteer = Volunteer::unattached();

    let attach = volunteer.command(&["attach", REMOTE_NAME, "--name", "daring", "--allow-insecure"]);
    let output = through_proxy(attach, &server).output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(accounts(&server).await, 1);

    // The daemon checks again: the flag given to `attach` is not remembered.
    let run = volunteer.command(&["run", "--exit-when-idle"]);
    let output = tokio::time::timeout(TIMEOUT, through_proxy(run, &server).output()).await.unwrap().unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains(&format!("{REMOTE_NAME} uses plain http to another machine")), "{error}");
    assert_eq!(server.count("select count(*) from host where last_contact_at is not null").await, 0);

    let run = volunteer.command(&["run", "--exit-when-idle", "--allow-insecure"]);
    let output = tokio::time::timeout(TIMEOUT, through_proxy(run, &server).output()).await.unwrap().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(server.count("select count(*) from work_unit where state = 'validated'").await, 2);
}

#[tokio::test]
async fn allow_insecure_in_the_settings_file_counts_and_a_flag_overrides_it() {
    let server = Server::start().await;
    server.publish(&workunit("probes/determinism.wat"), 1, single()).await;
    let volunteer = Volunteer::unattached();
    let settings = volunteer.data_dir.path().join("client.toml");
    let mut text = std::fs::read_to_string(&settings).unwrap();
    text.push_str("allow_insecure = true\n");
    std::fs::write(&settings, text).unwrap();

    let attach = volunteer.command(&["attach", REMOTE_NAME, "--name", "configured"]);
    let output = through_proxy(attach, &server).output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let run = volunteer.command(&["run", "--exit-when-idle", "--allow-insecure=false"]);
    let output = tokio::time::timeout(TIMEOUT, through_proxy(run, &server).output()).await.unwrap().unwrap();
    assert!(!output.status.success(), "the flag wins over the file");
    assert!(String::from_utf8_lossy(&output.stderr).contains("uses plain http to another machine"));

    let run = volunteer.command(&["run", "--exit-when-idle"]);
    let output = tokio::time::timeout(TIMEOUT, through_proxy(run, &server).output()).await.unwrap().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(server.count("select count(*) from work_unit where state = 'validated'").await, 1);
}
