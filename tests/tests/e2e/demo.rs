//! The quick start's demo, run as `./quickstart --exit` would run it (smaller batches): it
//! must take a fresh directory to validated, downloaded outputs and a summary.

use std::time::Duration;

use tokio::process::Command;

use crate::harness::binary;

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_runs_the_whole_grid_to_validated_outputs() {
    let dir = tempfile::Builder::new().prefix("wg-demo-").tempdir_in("/tmp").unwrap();
    let data_dir = dir.path().join("demo");
    let run = Command::new(binary("demo"))
        .args(["--exit", "--work-units", "4", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run).await.expect("the demo finishes").unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("work units:    12 validated, 0 failed, in 3 batches"), "{stdout}");
    for volunteer in 1..=4 {
        assert!(stdout.contains(&format!("volunteer-{volunteer}")), "{stdout}");
    }
    assert!(stdout.contains("leaderboard:   http://127.0.0.1:"), "{stdout}");
    let results = data_dir.join("results");
    assert_eq!(std::fs::read_dir(results.join("primes")).unwrap().count(), 4);
    assert_eq!(std::fs::read_dir(results.join("nbody")).unwrap().count(), 4);
    let image = std::fs::read(results.join("mandelbrot.png")).unwrap();
    assert_eq!(&image[..8], b"\x89PNG\r\n\x1a\n", "the tiles are stitched into a PNG");
}
