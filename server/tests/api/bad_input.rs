//! Malformed, oversized, unauthenticated and hostile requests: each a clear 4xx with a JSON
//! error, and nothing stored.

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{ErrorBody, OUTPUT_ARCHIVE_ALLOWANCE};

use crate::helpers::{TestApp, policy, success};

async fn error_of(response: reqwest::Response) -> (StatusCode, ErrorBody) {
    let status = response.status();
    let body = response.json::<ErrorBody>().await.expect("errors have a JSON body");
    (status, body)
}

#[tokio::test]
async fn malformed_json_is_a_400_with_a_json_error() {
    let app = TestApp::spawn().await;
    let volunteer = app.volunteer("v").await;
    for body in ["{not json", "42", r#"{"want_replicas": -1}"#, r#"{"reports": [{"replica_id": "x"}]}"#] {
        let response = app
            .client
            .request(Method::POST, "/api/v1/scheduler")
            .bearer_auth(&volunteer.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error.error.code, "bad_request");
    }
}

#[tokio::test]
async fn an_oversized_body_is_a_413() {
    let app = TestApp::spawn().await;
    let huge = format!(r#"{{"name": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let response = app
        .client
        .request(Method::POST, "/api/v1/accounts")
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error.error.code, "payload_too_large");
    assert_eq!(app.count("select count(*) from account").await, 0);
}

#[tokio::test]
async fn missing_or_wrong_credentials_are_a_401() {
    let app = TestApp::spawn().await;
    let volunteer = app.volunteer("v").await;
    let no_token = app.client.request(Method::POST, "/api/v1/scheduler").json(&serde_json::json!({})).send();
    assert_eq!(error_of(no_token.await.unwrap()).await.0, StatusCode::UNAUTHORIZED);
    for token in ["wgh_0000", volunteer.account_key.as_str(), ""] {
        let response = app
            .client
            .request(Method::POST, "/api/v1/scheduler")
            .bearer_auth(token)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(response).await.0, StatusCode::UNAUTHORIZED, "token {token:?}");
    }
    // A host token is not an account key either.
    let host = app.client.register_host(&volunteer.token, &sample_host()).await.unwrap_err();
    assert_eq!(host.status(), Some(StatusCode::UNAUTHORIZED));
}

fn sample_host() -> wasmgrid_protocol::api::RegisterHostRequest {
    wasmgrid_protocol::api::RegisterHostRequest {
        name: "h".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        cores: 1,
        memory_bytes: 1,
        client_version: "t".into(),
    }
}

#[tokio::test]
async fn invalid_names_and_host_descriptions_are_rejected() {
    let app = TestApp::spawn().await;
    for name in ["", "   ", "bell\u{7}", &"n".repeat(101)] {
        let error = app.client.create_account(name).await.unwrap_err();
        assert_eq!(error.status(), Some(StatusCode::BAD_REQUEST), "{name:?}");
    }
    let account = app.client.create_account("ok").await.unwrap();
    let zero_cores = wasmgrid_protocol::api::RegisterHostRequest { cores: 0, ..sample_host() };
    let error = app.client.register_host(&account.account_key, &zero_cores).await.unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(app.count("select count(*) from host").await, 0);
}

#[tokio::test]
async fn a_report_naming_an_unknown_replica_is_a_404_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, policy(1, 1)).await[..] else { panic!() };
    let alice = app.volunteer("alice").await;
    let a = alice.fetch(1).await[0].replica_id;
    alice.upload(a, b"ok").await.unwrap();

    let error = alice.request(vec![success(a, b"ok"), success(999_999, b"ok")], 0).await.unwrap_err();

    assert_eq!(error.status(), Some(StatusCode::NOT_FOUND));
    assert_eq!(app.replicas(wu).await[0].state, "in_progress", "the valid report in the same request was not stored");
}

#[tokio::test]
async fn a_report_for_another_hosts_replica_is_a_403_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, policy(1, 1)).await[..] else { panic!() };
    let (alice, mallory) = (app.volunteer("alice").await, app.volunteer("mallory").await);
    let a = alice.fetch(1).await[0].replica_id;

    let upload = mallory.upload(a, b"forged").await.unwrap_err();
    let report = mallory.request(vec![success(a, b"forged")], 0).await.unwrap_err();

    assert_eq!(upload.status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(report.status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(app.replicas(wu).await[0].state, "in_progress");
}

#[tokio::test]
async fn a_success_whose_output_was_not_uploaded_is_a_400() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, policy(1, 1)).await[..] else { panic!() };
    let alice = app.volunteer("alice").await;
    let a = alice.fetch(1).await[0].replica_id;
    alice.upload(a, b"real").await.unwrap();

    let error = alice.request(vec![success(a, b"claimed but never uploaded")], 0).await.unwrap_err();

    assert_eq!(error.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(app.replicas(wu).await[0].state, "in_progress");
}

#[tokio::test]
async fn an_upload_whose_bytes_do_not_match_its_hash_is_a_400_and_leaves_no_file() {
    let app = TestApp::spawn().await;
    app.publish(1, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    let a = alice.fetch(1).await[0].replica_id;
    let blobs_before = app.count("select count(*) from blob").await;

    let claimed = Sha256Hash::of(b"what I say");
    let error = app.client.upload_output_as(&alice.token, a, claimed, Bytes::from_static(b"what I send")).await;

    assert_eq!(error.unwrap_err().status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(app.count("select count(*) from blob").await, blobs_before);
    assert_no_stored_or_staged_file(&app, &Sha256Hash::of(b"what I send"));
}

#[tokio::test]
async fn a_large_upload_whose_bytes_do_not_match_its_hash_leaves_no_staged_file() {
    let app = TestApp::spawn().await;
    app.publish(1, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    let a = alice.fetch(1).await[0].replica_id;

    // Past the in-memory threshold, so the bytes go through a staging file.
    let sent = vec![3u8; 3 << 20];
    let claimed = Sha256Hash::of(b"something else");
    let error = app.client.upload_output_as(&alice.token, a, claimed, Bytes::from(sent.clone())).await;

    assert_eq!(error.unwrap_err().status(), Some(StatusCode::BAD_REQUEST));
    assert_no_stored_or_staged_file(&app, &Sha256Hash::of(&sent));
}

#[tokio::test]
async fn an_upload_over_the_work_units_output_limit_is_a_413_and_leaves_no_file() {
    let app = TestApp::spawn().await;
    let mut spec = wasmgrid_server::publishing::WorkUnitSpec::new("small output");
    spec.limits.output_bytes = 1000;
    app.publish_specs(vec![spec]).await;
    let alice = app.volunteer("alice").await;
    let a = alice.fetch(1).await[0].replica_id;

    let limit = 1000 + OUTPUT_ARCHIVE_ALLOWANCE as usize;
    let too_big = vec![7u8; limit + 1];
    let error = alice.upload(a, &too_big).await.unwrap_err();

    assert_eq!(error.status(), Some(StatusCode::PAYLOAD_TOO_LARGE));
    assert_no_stored_or_staged_file(&app, &Sha256Hash::of(&too_big));
    alice.upload(a, &vec![7u8; limit]).await.expect("exactly the limit is fine");
}

#[tokio::test]
async fn an_upload_with_a_malformed_hash_or_replica_id_is_a_400() {
    let app = TestApp::spawn().await;
    let alice = app.volunteer("alice").await;
    for path in ["/api/v1/replicas/1/output/NOTAHASH", "/api/v1/replicas/abc/output/00"] {
        let response = app.client.request(Method::PUT, path).bearer_auth(&alice.token).body("x").send().await.unwrap();
        assert_eq!(error_of(response).await.0, StatusCode::BAD_REQUEST, "{path}");
    }
}

#[tokio::test]
async fn too_many_reports_in_one_request_are_a_400() {
    let app = TestApp::spawn().await;
    let alice = app.volunteer("alice").await;
    let reports = (0..1001).map(|id| success(id, b"x")).collect();
    let error = alice.request(reports, 0).await.unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::BAD_REQUEST));
}

#[tokio::test]
async fn an_unknown_route_is_a_404_with_a_json_error() {
    let app = TestApp::spawn().await;
    let response = app.client.request(Method::GET, "/api/v1/nothing-here").send().await.unwrap();
    assert_eq!(error_of(response).await.0, StatusCode::NOT_FOUND);
}

fn assert_no_stored_or_staged_file(app: &TestApp, hash: &Sha256Hash) {
    let hex = hash.to_hex();
    let blobs = app.data_dir.path().join("blobs");
    assert!(!blobs.join(&hex[..2]).join(&hex).exists(), "a rejected upload must not be stored");
    let staged = std::fs::read_dir(blobs.join("staging")).unwrap().count();
    assert_eq!(staged, 0, "a rejected upload must not be left in staging");
}

/// The request's JSON error, with its status, for a publisher's call.
async fn publisher_call(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: serde_json::Value,
) -> (StatusCode, ErrorBody) {
    let response = app.client.request(method, path).bearer_auth(token).json(&body).send().await.unwrap();
    error_of(response).await
}

#[tokio::test]
async fn nul_characters_are_refused_with_the_field_they_are_in() {
    let app = TestApp::spawn().await;
    let token = app.publisher_token("nul tester").await;

    let (status, error) = publisher_call(
        &app,
        &token,
        Method::POST,
        "/api/v1/apps",
        serde_json::json!({"name": "nul", "description": "before\u{0}after"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error.error.message.contains("description"), "{}", error.error.message);

    let created = app
        .client
        .request(Method::POST, "/api/v1/apps")
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "nul", "description": "fine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    app.client
        .request(Method::POST, "/api/v1/apps/nul/versions")
        .bearer_auth(&token)
        .body(wat::parse_str("(module (memory (export \"memory\") 1) (func (export \"_start\")))").unwrap())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let (status, error) =
        publisher_call(&app, &token, Method::POST, "/api/v1/batches", serde_json::json!({"app": "nul", "name": "n\0"}))
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error.error.message.contains("batch name"), "{}", error.error.message);
    let created = app
        .client
        .request(Method::POST, "/api/v1/batches")
        .bearer_auth(&token)
        .json(&serde_json::json!({"app": "nul", "name": "fine"}))
        .send()
        .await
        .unwrap();
    let batch: serde_json::Value = created.json().await.unwrap();
    let batch_id = batch["batch_id"].as_i64().unwrap();
    let (status, error) = publisher_call(
        &app,
        &token,
        Method::POST,
        &format!("/api/v1/batches/{batch_id}/work-units"),
        serde_json::json!({
            "work_units": [{"name": "wu", "args": ["fine", "not\u{0}fine"]}],
            "policy": {
                "quorum": 1, "replicas": 1, "max_errors": 1, "max_total": 1, "deadline_seconds": 3600,
                "limits": {"fuel": 1000, "memory_bytes": 65536, "output_bytes": 1024, "wall_time_seconds": 10}
            }
        }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", error.error.message);
    assert!(error.error.message.contains("args[1]"), "{}", error.error.message);
    assert_eq!(app.count("select count(*) from work_unit").await, 0);

    // In the URL, as a path segment or a query value.
    for path in ["/api/v1/apps/nul%00", &format!("/api/v1/batches/{batch_id}/results?after=%00")] {
        let (status, error) = publisher_call(&app, &token, Method::GET, path, serde_json::json!({})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(error.error.message.contains("NUL"), "{path}: {}", error.error.message);
    }

    // In names and host labels.
    let (status, error) =
        publisher_call(&app, "", Method::POST, "/api/v1/accounts", serde_json::json!({"name": "a\u{0}b"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error.error.message.contains("name"), "{}", error.error.message);
}

#[tokio::test]
async fn names_on_the_leaderboards_cannot_hide_or_reorder_text() {
    let app = TestApp::spawn().await;
    for name in ["admin\u{202E}nimda", "zero\u{200B}width", "\u{2066}isolated"] {
        let refused = app.client.create_account(name).await.unwrap_err();
        assert_eq!(refused.status(), Some(StatusCode::BAD_REQUEST), "{name:?}");
    }
    let account = app.client.create_account("plain").await.unwrap();
    let mut host = sample_host();
    host.name = "laptop\u{200D}".into();
    let refused = app.client.register_host(&account.account_key, &host).await.unwrap_err();
    assert_eq!(refused.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(app.count("select count(*) from account").await, 1);
}
