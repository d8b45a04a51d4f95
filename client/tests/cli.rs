//! The `wasmgrid` command line itself: what it says when something is missing. (Being an
//! integration test of this crate, it also makes cargo build the binary that the
//! end-to-end tests run.)

use std::process::Command;

fn wasmgrid(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wasmgrid"))
        .args(args)
        .env_remove("WASMGRID_SERVER")
        .env_remove("WASMGRID_TOKEN")
        .output()
        .expect("the binary runs")
}

#[test]
fn publishing_without_a_server_or_token_says_how_to_give_them() {
    let output = wasmgrid(&["batch", "status", "1"]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("--server URL or set WASMGRID_SERVER"), "{error}");

    let output = wasmgrid(&["app", "list", "--server", "http://127.0.0.1:9"]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("--token or set WASMGRID_TOKEN"), "{error}");
}

#[test]
fn the_token_is_not_sent_in_clear_to_another_machine() {
    let output = wasmgrid(&["app", "list", "--server", "http://grid.example.org", "--token", "wgp_x"]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("plain http") && error.contains("--allow-insecure"), "{error}");
}

#[test]
fn malformed_limits_are_refused_before_anything_is_sent() {
    let output = wasmgrid(&[
        "batch",
        "submit",
        "--app",
        "a",
        "--inputs",
        "/nonexistent",
        "--memory",
        "lots",
        "--server",
        "http://127.0.0.1:9",
        "--token",
        "t",
    ]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("not a size"), "{error}");
}
