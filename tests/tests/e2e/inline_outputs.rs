//! The volunteer's client sends small outputs inside its reports when the server takes them,
//! and uploads them when it does not; either way the batch validates.

use std::time::Duration;

use crate::harness::{Server, Volunteer, single, workunit};

const TIMEOUT: Duration = Duration::from_secs(120);
const VALIDATED: &str = "select count(*) from work_unit where state = 'validated'";
/// Replicas whose output was uploaded on its own (an inline output is not).
const UPLOADED: &str = "select count(*) from replica where uploaded_sha256 is not null";

#[tokio::test]
async fn small_outputs_go_inside_the_reports_and_need_no_upload() {
    let server = Server::start().await;
    server.publish(&workunit("probes/determinism.wat"), 3, single()).await;
    let volunteer = Volunteer::attach(&server, "inline").await;

    volunteer.run_until_idle(TIMEOUT).await;

    assert_eq!(server.count(VALIDATED).await, 3);
    assert_eq!(server.count(UPLOADED).await, 0, "no output was uploaded on its own");
    assert_eq!(server.count("select count(*) from replica where output_sha256 is not null").await, 3);
}

#[tokio::test]
async fn outputs_are_uploaded_to_a_server_that_takes_none_inline() {
    let server = Server::start_with(&["--inline-output-limit", "0"]).await;
    server.publish(&workunit("probes/determinism.wat"), 3, single()).await;
    let volunteer = Volunteer::attach(&server, "uploads").await;

    volunteer.run_until_idle(TIMEOUT).await;

    assert_eq!(server.count(VALIDATED).await, 3);
    assert_eq!(server.count(UPLOADED).await, 3, "each output was uploaded before its report");
}
