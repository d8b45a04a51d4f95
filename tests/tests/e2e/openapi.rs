//! Schemathesis (from PyPI; `.ci/run` installs it) against the real server binary: it reads
//! `/api/v1/openapi.json`, generates requests for every operation from it (valid ones,
//! invalid ones, and sequences of them), sends them with a real publisher token, host token
//! and account key, and runs its default checks on every answer: no 5xx, every status, body,
//! content type and header as documented, invalid requests refused and valid ones accepted.
//!
//! `WASMGRID_SCHEMATHESIS_EXAMPLES` sets the examples per operation (30 by default, about
//! a minute and a half); the run's report is kept in `target/test-artifacts/schemathesis/`.

use std::time::Duration;

use tokio::process::Command;
use wasmgrid_client::api::ServerClient;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::RegisterHostRequest;
use wasmgrid_protocol::publish::{CreateAppRequest, ValidatorSpec};

use crate::harness::{Server, test_artifact_dir};

/// The Schemathesis this test was written against: `.ci/run` installs this version.
const SCHEMATHESIS_VERSION: &str = "4.32.5";

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_that_breaks_the_document() {
    let server = Server::start().await;
    let publisher = server.publisher("schemathesis").await;
    let api = format!("{}/api/v1", server.url);
    let volunteers = ServerClient::new(&server.url).unwrap();
    let account = volunteers.create_account("schemathesis").await.unwrap();
    let host = volunteers
        .register_host(
            &account.account_key,
            &RegisterHostRequest {
                name: "fuzzed".into(),
                os: "linux".into(),
                arch: "x86_64".into(),
                cores: 2,
                memory_bytes: 1 << 30,
                client_version: "schemathesis".into(),
            },
        )
        .await
        .unwrap();
    let (account_key, host_token) = (account.account_key.as_str(), host.host_token.as_str());

    // A published module, so that downloads are tried on a blob that exists (ranges,
    // conditions) as well as on hashes that do not.
    let module = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start")))"#).unwrap();
    let module_hash = Sha256Hash::of(&module);
    let publishing = publisher.client();
    let app = CreateAppRequest {
        name: "fuzzed".into(),
        description: String::new(),
        validator: ValidatorSpec::Bitwise,
        distinct_networks: true,
        adaptive_replication: false,
    };
    publishing.create_app(&app).await.unwrap();
    publishing.publish_version("fuzzed", module.into(), None).await.unwrap();

    let report_dir = test_artifact_dir().join("schemathesis");
    std::fs::create_dir_all(&report_dir).unwrap();
    let config = report_dir.join("schemathesis.toml");
    std::fs::write(&config, configuration(&publisher.token, host_token, account_key, &module_hash)).unwrap();
    let examples = std::env::var("WASMGRID_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "30".to_owned());

    let run = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .args(["run", &format!("{api}/openapi.json"), "--max-examples", &examples, "--no-color"])
        .args(["--seed", "20261207", "--report", "junit", "--report-dir"])
        .arg(&report_dir)
        // Its cache of examples goes beside the report, not into the source tree.
        .current_dir(&report_dir)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(900), run).await.expect("Schemathesis ends").unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named schemathesis"),
        "Schemathesis is missing: python3 -m pip install schemathesis=={SCHEMATHESIS_VERSION}"
    );
    std::fs::write(report_dir.join("output.txt"), stdout.as_bytes()).unwrap();
    assert!(output.status.success(), "Schemathesis found problems:\n{stdout}\n{stderr}");
    // A run that tested nothing would pass as well.
    let count = |label: &str| {
        let after = stdout.split(label).nth(1).unwrap_or_else(|| panic!("no {label:?} in:\n{stdout}"));
        after.trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse::<usize>().unwrap()
    };
    let operations = document_operations(&reqwest::Client::new(), &api).await;
    assert_eq!(count("Selected:"), operations, "{stdout}");
    assert_eq!(count("Tested:"), operations, "Schemathesis did not test every operation:\n{stdout}");
}

/// The secret of each security scheme, and the checks' expectations where a schema cannot
/// say what the server accepts.
fn configuration(publisher_token: &str, host_token: &str, account_key: &str, module: &Sha256Hash) -> String {
    // Each of these operations refuses requests that its schema allows, for reasons no JSON
    // Schema can state: a body must hash to the hash in the path, a module must pass the
    // sandbox's checks, a signature must verify, an input or a validator module must have
    // been uploaded first, a policy's numbers must agree with each other, a reported
    // replica must be the host's and its output uploaded. Schema-valid requests may get a
    // 400 (or a 422 for a module) there; every other check holds as by default.
    let refusing_what_schemas_cannot_state = [
        ("PUT /api/v1/files/{sha256}", ""),
        ("PUT /api/v1/replicas/{replica_id}/output/{sha256}", ""),
        ("POST /api/v1/apps/{name}/versions", ", \"422\""),
        ("PUT /api/v1/publisher/key", ""),
        ("POST /api/v1/apps", ""),
        ("POST /api/v1/batches/{id}/work-units", ""),
        ("POST /api/v1/scheduler", ""),
    ];
    let mut config = format!(
        "[auth.openapi.publisher_token]\nbearer = \"{publisher_token}\"\n\n\
         [auth.openapi.host_token]\nbearer = \"{host_token}\"\n\n\
         [auth.openapi.account_key]\nbearer = \"{account_key}\"\n\n\
         [[operations]]\ninclude-name = \"GET /api/v1/blobs/{{sha256}}\"\nparameters = {{ \"path.sha256\" = \"{module}\" }}\n"
    );
    for (operation, more) in refusing_what_schemas_cannot_state {
        config.push_str(&format!(
            "\n[[operations]]\ninclude-name = \"{operation}\"\n\
             checks.positive_data_acceptance.expected-statuses = \
             [\"2xx\", \"3xx\", \"400\", \"401\", \"403\", \"404\", \"409\"{more}, \"429\", \"5xx\"]\n"
        ));
    }
    config
}

/// How many operations the served document has, less the one that serves it, which
/// Schemathesis leaves out.
async fn document_operations(http: &reqwest::Client, api: &str) -> usize {
    let document: serde_json::Value =
        http.get(format!("{api}/openapi.json")).send().await.unwrap().json().await.unwrap();
    let paths = document["paths"].as_object().unwrap();
    let operations: usize =
        paths.values().map(|item| item.as_object().unwrap().keys().filter(|key| *key != "parameters").count()).sum();
    operations - 1
}
