//! Signed modules over the real HTTP API: a publisher registers its key and then publishes
//! signed modules only; a key change needs the old key's signature (or is marked as lacking
//! it); hosts get each module with its signature; a host that refuses a module is sent no
//! more of its version until its volunteer trusts again.

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use reqwest::StatusCode;
use wasmgrid_client::publish::client::PublisherClient;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{ReplicaReport, ReportedOutcome};
use wasmgrid_protocol::publish::{CreateAppRequest, ValidatorSpec};
use wasmgrid_protocol::signing::{
    ProjectKeys, PublicKey, RegisterKeyRequest, sign_key_change, sign_module, sign_ownership,
};
use wasmgrid_server::publishing::{self, WorkUnitSpec};

use crate::helpers::{TestApp, policy};

const MODULE: &str = "(module (memory (export \"memory\") 1) (func (export \"_start\")))";

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn module(variant: u32) -> Vec<u8> {
    wat::parse_str(MODULE.replace("_start\")))", &format!("_start\") (drop (i32.const {variant}))))"))).unwrap()
}

async fn publisher(app: &TestApp, name: &str) -> PublisherClient {
    PublisherClient::new(app.client.clone(), app.publisher_token(name).await)
}

async fn create_app(publisher: &PublisherClient, name: &str) {
    let request = CreateAppRequest {
        name: name.into(),
        description: String::new(),
        validator: ValidatorSpec::Bitwise,
        distinct_networks: true,
        adaptive_replication: false,
    };
    publisher.create_app(&request).await.unwrap();
}

fn registration(key: &SigningKey, publisher: &str, endorsed_by: Option<&SigningKey>) -> RegisterKeyRequest {
    let public_key = PublicKey::of(key);
    RegisterKeyRequest {
        public_key,
        ownership: sign_ownership(key, publisher),
        endorsement: endorsed_by.map(|old| sign_key_change(old, &public_key)),
        unendorsed: false,
    }
}

fn status_of(error: wasmgrid_client::api::ApiError) -> (StatusCode, String) {
    (error.status().expect("an HTTP error"), error.to_string())
}

async fn project_keys(app: &TestApp) -> ProjectKeys {
    app.client.project_keys().await.unwrap()
}

/// A batch of `count` work units of app `name`'s newest version, quorum 1.
async fn batch(app: &TestApp, name: &str, count: usize) -> Vec<i64> {
    let app_id: i64 =
        sqlx::query_scalar("select id from app where name = $1").bind(name).fetch_one(&app.pool).await.unwrap();
    let specs: Vec<WorkUnitSpec> =
        (0..count).map(|i| WorkUnitSpec { policy: policy(1, 1), ..WorkUnitSpec::new(format!("{name}-{i}")) }).collect();
    let mut transaction = app.pool.begin().await.unwrap();
    let batch_id = publishing::create_batch(&mut transaction, app_id, "batch", &specs).await.unwrap();
    transaction.commit().await.unwrap();
    sqlx::query_scalar("select id from work_unit where batch_id = $1 order by id")
        .bind(batch_id)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_publisher_with_a_key_publishes_signed_modules_only_and_hosts_get_the_signature() {
    let app = TestApp::spawn().await;
    let alice = publisher(&app, "alice").await;
    create_app(&alice, "sim").await;
    assert_eq!(alice.own_keys().await.unwrap().keys, []);
    // Before a key, unsigned modules are fine (the project does not require signatures)...
    alice.publish_version("sim", Bytes::from(module(1)), None).await.unwrap();
    // ...and a signature without a registered key is a mistake.
    let signed_by_nobody = sign_module(&key(1), &Sha256Hash::of(&module(2)));
    let (status, message) =
        status_of(alice.publish_version("sim", Bytes::from(module(2)), Some(&signed_by_nobody)).await.unwrap_err());
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("no key registered"), "{message}");

    let registered = alice.register_key(&registration(&key(1), "alice", None)).await.unwrap();
    assert_eq!(registered.publisher, "alice");
    assert_eq!(registered.current(), Some(&PublicKey::of(&key(1))));
    let keys = project_keys(&app).await;
    assert!(!keys.require_signatures);
    assert_eq!(keys.publisher("alice").and_then(|keys| keys.current()), Some(&PublicKey::of(&key(1))));

    // Now unsigned, signed by another key, or signed for another module: refused.
    let (status, message) = status_of(alice.publish_version("sim", Bytes::from(module(3)), None).await.unwrap_err());
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("--signing-key"), "{message}");
    let by_another_key = sign_module(&key(2), &Sha256Hash::of(&module(3)));
    let error = alice.publish_version("sim", Bytes::from(module(3)), Some(&by_another_key)).await.unwrap_err();
    assert!(status_of(error).1.contains("does not verify"));
    let for_another_module = sign_module(&key(1), &Sha256Hash::of(&module(4)));
    let error = alice.publish_version("sim", Bytes::from(module(3)), Some(&for_another_module)).await.unwrap_err();
    assert!(status_of(error).1.contains("does not verify"));
    let garbage = app
        .client
        .request(reqwest::Method::POST, "/api/v1/apps/sim/versions")
        .bearer_auth(app.publisher_token("alice").await)
        .header("wasmgrid-module-signature", "not base64!")
        .body(module(3))
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.count("select count(*) from app_version").await, 1, "nothing refused was stored");

    let signature = sign_module(&key(1), &Sha256Hash::of(&module(3)));
    let version = alice.publish_version("sim", Bytes::from(module(3)), Some(&signature)).await.unwrap();
    assert_eq!(version.version, 2);
    batch(&app, "sim", 1).await;
    let volunteer = app.volunteer("volunteer").await;
    let assignment = volunteer.fetch(1).await.pop().expect("work");
    assert_eq!(assignment.publisher, "alice");
    let signed = assignment.module_signature.expect("a signed module comes with its signature");
    assert_eq!(signed.public_key, PublicKey::of(&key(1)));
    assert_eq!(signed.public_key.verify_module(&assignment.module.sha256, &signed.signature), Ok(()));
    app.stop().await;
}

#[tokio::test]
async fn a_key_is_registered_with_proof_and_changed_only_with_the_old_keys_signature_or_openly_without() {
    let app = TestApp::spawn().await;
    let alice = publisher(&app, "alice").await;
    // A proof made for another publisher, or by another key, proves nothing.
    let error = alice.register_key(&registration(&key(1), "mallory", None)).await.unwrap_err();
    assert_eq!(status_of(error).0, StatusCode::BAD_REQUEST);
    let mut stolen = registration(&key(1), "alice", None);
    stolen.ownership = sign_ownership(&key(2), "alice");
    assert_eq!(status_of(alice.register_key(&stolen).await.unwrap_err()).0, StatusCode::BAD_REQUEST);
    alice.register_key(&registration(&key(1), "alice", None)).await.unwrap();
    let error = alice.register_key(&registration(&key(1), "alice", None)).await.unwrap_err();
    assert_eq!(status_of(error).0, StatusCode::CONFLICT);

    // A new key without the old key's word, or with another key's, is not a change.
    let (status, message) = status_of(alice.register_key(&registration(&key(2), "alice", None)).await.unwrap_err());
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(message.contains("--unendorsed"), "{message}");
    let error = alice.register_key(&registration(&key(2), "alice", Some(&key(9)))).await.unwrap_err();
    assert_eq!(status_of(error).0, StatusCode::BAD_REQUEST);
    assert_eq!(project_keys(&app).await.publisher("alice").unwrap().keys.len(), 1);

    let changed = alice.register_key(&registration(&key(2), "alice", Some(&key(1)))).await.unwrap();
    assert_eq!(changed.keys.len(), 2);
    assert!(changed.endorsed_from(&PublicKey::of(&key(1)), &PublicKey::of(&key(2))));
    // The old key is retired for good: signing with it no longer publishes.
    create_app(&alice, "sim").await;
    let old = sign_module(&key(1), &Sha256Hash::of(&module(1)));
    assert!(alice.publish_version("sim", Bytes::from(module(1)), Some(&old)).await.is_err());
    let error = alice.register_key(&registration(&key(1), "alice", Some(&key(2)))).await.unwrap_err();
    assert_eq!(status_of(error).0, StatusCode::CONFLICT, "going back to a retired key would undo a change");

    // A lost key: replaced openly, and clients see that nobody signed the change.
    let lost = RegisterKeyRequest { unendorsed: true, ..registration(&key(3), "alice", None) };
    alice.register_key(&lost).await.unwrap();
    let keys = project_keys(&app).await;
    let chain = keys.publisher("alice").unwrap();
    assert_eq!(chain.current(), Some(&PublicKey::of(&key(3))));
    assert!(!chain.endorsed_from(&PublicKey::of(&key(1)), &PublicKey::of(&key(3))));
    assert!(!chain.endorsed_from(&PublicKey::of(&key(2)), &PublicKey::of(&key(3))));

    // Another publisher's keys are its own affair.
    let bob = publisher(&app, "bob").await;
    assert_eq!(bob.own_keys().await.unwrap().keys, []);
    let error = bob.register_key(&registration(&key(3), "bob", None)).await.unwrap_err();
    assert_eq!(status_of(error).0, StatusCode::CONFLICT, "a key belongs to one publisher");
    app.stop().await;
}

#[tokio::test]
async fn a_project_that_requires_signatures_refuses_unsigned_modules() {
    let app = TestApp::spawn_with(|config| config.scheduler.require_signatures = true).await;
    assert!(project_keys(&app).await.require_signatures);
    let alice = publisher(&app, "alice").await;
    create_app(&alice, "sim").await;
    let (status, message) = status_of(alice.publish_version("sim", Bytes::from(module(1)), None).await.unwrap_err());
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("signed modules only"), "{message}");
    alice.register_key(&registration(&key(1), "alice", None)).await.unwrap();
    let signature = sign_module(&key(1), &Sha256Hash::of(&module(1)));
    alice.publish_version("sim", Bytes::from(module(1)), Some(&signature)).await.unwrap();
    app.stop().await;
}

fn refusal(replica_id: i64) -> ReplicaReport {
    ReplicaReport {
        replica_id,
        outcome: ReportedOutcome::Refused { reason: "the module's signature does not verify".into() },
        fuel_used: 0,
        run_time_ms: 0,
        exit_status: None,
        stderr: String::new(),
        instrumentation_version: wasmgrid_sandbox::INSTRUMENTATION_VERSION,
        output: None,
    }
}

#[tokio::test]
async fn a_refused_module_goes_to_another_host_and_its_version_no_more_to_this_one_until_it_trusts_again() {
    let app = TestApp::spawn().await;
    let alice = publisher(&app, "alice").await;
    create_app(&alice, "refused").await;
    alice.publish_version("refused", Bytes::from(module(1)), None).await.unwrap();
    let refused_units = batch(&app, "refused", 3).await;
    let volunteer = app.volunteer("careful").await;
    let assignment = volunteer.fetch(1).await.pop().expect("work");
    assert_eq!(assignment.work_unit_id, refused_units[0]);
    volunteer.request(vec![refusal(assignment.replica_id)], 0).await.unwrap();

    // Like a host that never answered: the work unit waits for another host, with no error
    // counted, and the reason is kept.
    let replicas = app.replicas(refused_units[0]).await;
    let refused = replicas.iter().find(|r| r.id == assignment.replica_id).unwrap();
    assert_eq!(refused.outcome.as_deref(), Some("no_reply"));
    let reason: String = sqlx::query_scalar("select error_reason from replica where id = $1")
        .bind(assignment.replica_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(reason.starts_with("refused by the host: "), "{reason}");
    assert_eq!(app.work_unit(refused_units[0]).await.state, "active");
    assert_eq!(app.count("select count(*) from module_refusal").await, 1);

    // No more of that version for this host, though it has two more work units; work of
    // another app still comes.
    assert_eq!(volunteer.fetch(5).await.len(), 0);
    create_app(&alice, "other").await;
    alice.publish_version("other", Bytes::from(module(2)), None).await.unwrap();
    let other_units = batch(&app, "other", 1).await;
    let other = volunteer.fetch(5).await;
    assert_eq!(other.iter().map(|a| a.work_unit_id).collect::<Vec<_>>(), other_units);
    // Another host runs the refused work units.
    let second = app.volunteer("second").await;
    let theirs = second.fetch(5).await;
    assert_eq!(theirs.len(), 3, "the refused replica's work unit and its two siblings");

    // Only the host itself can clear its refusals; once it has, the version comes again.
    let anonymous = app.client.request(reqwest::Method::DELETE, "/api/v1/hosts/me/refusals").send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    app.client.clear_refusals(&second.token).await.unwrap();
    assert_eq!(app.count("select count(*) from module_refusal").await, 1);
    app.client.clear_refusals(&volunteer.token).await.unwrap();
    assert_eq!(app.count("select count(*) from module_refusal").await, 0);
    app.stop().await;
}
