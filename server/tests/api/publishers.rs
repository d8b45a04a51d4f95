//! What a publisher may learn about other publishers' work: not whether the server has
//! their files, and not the names of their batches unless they are made public.

use reqwest::{Method, StatusCode};
use serde_json::json;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::stats::ProjectStatus;

use crate::helpers::TestApp;

const MODULE: &str = "(module (memory (export \"memory\") 1) (func (export \"_start\")))";

struct Publisher<'a> {
    app: &'a TestApp,
    token: String,
}

impl<'a> Publisher<'a> {
    async fn new(app: &'a TestApp, name: &str) -> Self {
        Self { app, token: app.publisher_token(name).await }
    }

    async fn call(&self, method: Method, path: &str, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
        let response = self.app.client.request(method, path).bearer_auth(&self.token).json(&body).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or_default())
    }

    async fn put_file(&self, bytes: &[u8]) -> StatusCode {
        let path = format!("/api/v1/files/{}", Sha256Hash::of(bytes));
        let response =
            self.app.client.request(Method::PUT, &path).bearer_auth(&self.token).body(bytes.to_vec()).send().await;
        response.unwrap().status()
    }

    async fn missing(&self, files: &[&[u8]]) -> Vec<String> {
        let hashes: Vec<String> = files.iter().map(|bytes| Sha256Hash::of(bytes).to_hex()).collect();
        let (status, body) = self.call(Method::POST, "/api/v1/files/missing", json!({ "sha256": hashes })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value(body["missing"].clone()).unwrap()
    }

    /// Creates an app with a published version and opens a batch of it; returns the batch.
    async fn open_batch(&self, app_name: &str, batch_name: &str, public: bool) -> i64 {
        let (status, body) = self.call(Method::POST, "/api/v1/apps", json!({ "name": app_name })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let module = wat::parse_str(MODULE).unwrap();
        let path = format!("/api/v1/apps/{app_name}/versions");
        let published = self.app.client.request(Method::POST, &path).bearer_auth(&self.token).body(module).send();
        assert_eq!(published.await.unwrap().status(), StatusCode::CREATED);
        let (status, body) = self
            .call(Method::POST, "/api/v1/batches", json!({ "app": app_name, "name": batch_name, "public": public }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["batch_id"].as_i64().unwrap()
    }

    async fn add_work_unit_reading(&self, batch: i64, stdin: &[u8]) -> (StatusCode, serde_json::Value) {
        let body = json!({
            "work_units": [{ "name": "wu", "stdin": Sha256Hash::of(stdin).to_hex() }],
            "policy": {
                "quorum": 1, "replicas": 1, "max_errors": 1, "max_total": 1, "deadline_seconds": 3600,
                "limits": { "fuel": 1000, "memory_bytes": 65536, "output_bytes": 1024, "wall_time_seconds": 10 }
            }
        });
        self.call(Method::POST, &format!("/api/v1/batches/{batch}/work-units"), body).await
    }
}

#[tokio::test]
async fn a_publisher_learns_only_about_its_own_files_and_public_modules() {
    let app = TestApp::spawn().await;
    let alice = Publisher::new(&app, "alice").await;
    let mallory = Publisher::new(&app, "mallory").await;
    let secret = b"alice's unpublished data set".as_slice();
    assert_eq!(alice.put_file(secret).await, StatusCode::OK);
    alice.open_batch("alices-app", "b", false).await;
    let module = wat::parse_str(MODULE).unwrap();

    assert!(alice.missing(&[secret]).await.is_empty(), "alice stored it");
    assert_eq!(mallory.missing(&[secret, &module]).await, [Sha256Hash::of(secret).to_hex()], "modules are public");

    // Nor can mallory find out by naming it as an input...
    let batch = mallory.open_batch("mallorys-app", "m", false).await;
    let (status, body) = mallory.add_work_unit_reading(batch, secret).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("not uploaded"), "{body}");
    // ...unless mallory has the bytes, and uploads them.
    assert_eq!(mallory.put_file(secret).await, StatusCode::OK);
    assert!(mallory.missing(&[secret]).await.is_empty());
    assert_eq!(mallory.add_work_unit_reading(batch, secret).await.0, StatusCode::OK);
}

#[tokio::test]
async fn uploaded_outputs_are_not_files_a_publisher_has() {
    let app = TestApp::spawn().await;
    app.publish(1, crate::helpers::policy(1, 1)).await;
    let volunteer = app.volunteer("v").await;
    let replica = volunteer.fetch(1).await[0].replica_id;
    volunteer.succeed(replica, b"a volunteer's output").await;
    let alice = Publisher::new(&app, "alice").await;
    assert_eq!(alice.missing(&[b"a volunteer's output"]).await.len(), 1);
}

#[tokio::test]
async fn batch_names_are_public_only_when_their_publisher_says_so() {
    let app = TestApp::spawn().await;
    let alice = Publisher::new(&app, "alice").await;
    let private = alice.open_batch("quiet", "Project Nightingale", false).await;
    let public = alice.open_batch("loud", "Open Climate Run", true).await;

    let status = app.client.request(Method::GET, "/api/v1/stats/status").send().await.unwrap().text().await.unwrap();
    let status: ProjectStatus = serde_json::from_str(&status).unwrap_or_else(|error| panic!("{error}: {status}"));
    let names: Vec<(i64, String)> = status.batches.into_iter().map(|batch| (batch.id, batch.name)).collect();
    assert!(names.contains(&(private, format!("batch {private}"))), "{names:?}");
    assert!(names.contains(&(public, "Open Climate Run".to_owned())), "{names:?}");
    let page = app.client.request(Method::GET, "/status").send().await.unwrap().text().await.unwrap();
    assert!(!page.contains("Nightingale") && page.contains("Open Climate Run"), "{page}");
}
