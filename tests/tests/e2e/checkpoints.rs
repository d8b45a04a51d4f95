//! A long work unit that checkpoints (the nbody example) survives its volunteer being
//! killed: after the restart it resumes from its checkpoint, not from the start, and its
//! output is the same bytes as an uninterrupted run's.

use std::time::{Duration, Instant};

use wasmgrid_sandbox::output;
use wasmgrid_server::publishing::WorkUnitSpec;

use crate::harness::{Server, Volunteer, example_module, run_directly, signal, single};

const TIMEOUT: Duration = Duration::from_secs(300);
const ARGS: [&str; 3] = ["64", "60000", "3"];

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_volunteer_resumes_the_simulation_from_its_checkpoint() {
    let server = Server::start().await;
    let module = example_module("nbody");
    let spec = WorkUnitSpec {
        args: ARGS.iter().map(|arg| arg.to_string()).collect(),
        policy: single(),
        ..WorkUnitSpec::new("sim")
    };
    server.publish_app("nbody", &std::fs::read(&module).unwrap(), &[spec]).await;
    let volunteer = Volunteer::attach(&server, "crashy").await;
    let mut daemon = volunteer.start();

    // Killed once a few checkpoints (every 5% of the steps) are on disk.
    let give_up = Instant::now() + TIMEOUT;
    loop {
        let status = volunteer.status().await;
        if status["tasks"][0]["fraction_done"].as_f64().is_some_and(|done| done >= 0.3) {
            break;
        }
        assert!(Instant::now() < give_up, "the simulation made no progress: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&daemon, libc::SIGKILL);
    daemon.wait().await.unwrap();
    volunteer.run_until_idle(TIMEOUT).await;

    let (stderr, output): (String, String) =
        sqlx::query_as("select stderr, output_sha256 from replica where outcome = 'success'")
            .fetch_one(&server.pool)
            .await
            .unwrap();
    assert!(stderr.contains("resuming from the checkpoint"), "it started over: {stderr}");

    let (stdout, files) = tokio::task::spawn_blocking(move || run_directly(&module, &ARGS, b"")).await.unwrap();
    assert!(files.iter().all(|(name, _)| name == "checkpoint" || name == "progress"), "{files:?}");
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("scratch");
    std::fs::create_dir(&empty).unwrap();
    let (expected, _) = output::pack(&stdout, &empty, &dir.path().join("out.tar"), 1 << 30).unwrap();
    assert_eq!(output, expected.to_hex(), "the resumed run's output is an uninterrupted run's");
}
