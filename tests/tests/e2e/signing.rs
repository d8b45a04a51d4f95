//! Signed modules end to end, with the real binaries: a publisher makes and registers a key
//! and publishes signed modules; a volunteer's client pins the project's keys when it
//! attaches, runs what they signed, follows a key change the old key signed, and refuses
//! what a server broken into hands out (an unsigned module, a module under another module's
//! signature, a key swapped in without the old key's signature), telling the server why.
//! Only `wasmgrid trust`, the volunteer's own word, takes a key the pinned one did not sign.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{Publisher, Server, Volunteer};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A module that prints `text`.
fn module(text: &str) -> Vec<u8> {
    let wat = format!(
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (data (i32.const 0) "\10\00\00\00{length:02x}\00\00\00")
             (data (i32.const 16) "{text}")
             (func (export "_start") (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        length = text.len()
    );
    wat::parse_str(wat).unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Submits one work unit (quorum 1) of `app`'s newest version; returns the batch id.
async fn submit(scientist: &Publisher, app: &str, dir: &Path) -> String {
    let inputs = dir.join(format!("inputs-{}", rand::random::<u32>()));
    std::fs::create_dir(&inputs).unwrap();
    std::fs::write(inputs.join("only"), "").unwrap();
    let submitted =
        scientist.json(&["batch", "submit", "--app", app, "--inputs", inputs.to_str().unwrap(), "--quorum", "1"]).await;
    submitted["batch_id"].as_i64().unwrap().to_string()
}

async fn batch_state(scientist: &Publisher, batch: &str) -> String {
    scientist.json(&["batch", "status", batch]).await["state"].as_str().unwrap().to_owned()
}

fn pinned(volunteer: &Volunteer, server: &Server) -> serde_json::Value {
    let keys: serde_json::Value =
        serde_json::from_slice(&std::fs::read(volunteer.data_dir.path().join("keys.json")).unwrap()).unwrap();
    keys["projects"][&server.url].clone()
}

async fn succeed(command: &mut tokio::process::Command) -> String {
    let output = command.output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// Refusals the server recorded, by the start of their reason.
async fn refusals(server: &Server, reason: &str) -> i64 {
    server
        .count(&format!(
            "select count(*) from replica where error_reason like 'refused by the host: {}%'",
            reason.replace('\'', "''")
        ))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volunteer_runs_only_what_the_keys_it_pinned_signed() {
    let server = Server::start().await;
    let scientist = server.publisher("alice").await;
    let dir = tempfile::tempdir().unwrap();
    let (first_key, second_key) = (dir.path().join("first.pem"), dir.path().join("second.pem"));

    // The publisher's side: a key, registered, signing every version.
    let generated = succeed(&mut scientist.command(&["key", "generate", "--out", first_key.to_str().unwrap()])).await;
    let first_public = generated.split_whitespace().find(|word| word.starts_with("ed25519:")).unwrap().to_owned();
    let again = scientist.failure(&["key", "generate", "--out", first_key.to_str().unwrap()]).await;
    assert!(again.contains("cannot create"), "a key file is never written over: {again}");
    scientist.json(&["key", "register", "--signing-key", first_key.to_str().unwrap()]).await;
    scientist.json(&["app", "create", "sim"]).await;
    let v1 = write(dir.path(), "v1.wasm", &module("version one"));
    let unsigned = scientist.failure(&["app", "publish", "sim", v1.to_str().unwrap()]).await;
    assert!(unsigned.contains("--signing-key"), "{unsigned}");
    scientist
        .json(&["app", "publish", "sim", v1.to_str().unwrap(), "--signing-key", first_key.to_str().unwrap()])
        .await;

    // The volunteer pins the key on attaching, and runs what it signed.
    let volunteer = Volunteer::unattached();
    let attached = succeed(&mut volunteer.command(&["attach", &server.url, "--name", "careful"])).await;
    assert!(attached.contains(&format!("pinned the key of publisher alice: {first_public}")), "{attached}");
    assert_eq!(pinned(&volunteer, &server)["publishers"]["alice"], first_public);
    let batch = submit(&scientist, "sim", dir.path()).await;
    volunteer.run_until_idle(TIMEOUT).await;
    assert_eq!(batch_state(&scientist, &batch).await, "done");

    // A key change signed by the old key: the client follows it by itself.
    succeed(&mut scientist.command(&["key", "generate", "--out", second_key.to_str().unwrap()])).await;
    scientist
        .json(&[
            "key",
            "register",
            "--signing-key",
            second_key.to_str().unwrap(),
            "--old-key",
            first_key.to_str().unwrap(),
        ])
        .await;
    // A volunteer who attaches now pins the new key, and still runs the version the retired
    // key signed before the change.
    let newcomer = Volunteer::unattached();
    let attached = succeed(&mut newcomer.command(&["attach", &server.url, "--name", "newcomer"])).await;
    assert!(!attached.contains(&first_public), "{attached}");
    let batch = submit(&scientist, "sim", dir.path()).await;
    newcomer.run_until_idle(TIMEOUT).await;
    assert_eq!(batch_state(&scientist, &batch).await, "done");
    assert_ne!(pinned(&newcomer, &server)["publishers"]["alice"], first_public);

    let v2 = write(dir.path(), "v2.wasm", &module("version two"));
    scientist
        .json(&["app", "publish", "sim", v2.to_str().unwrap(), "--signing-key", second_key.to_str().unwrap()])
        .await;
    let batch = submit(&scientist, "sim", dir.path()).await;
    volunteer.run_until_idle(TIMEOUT).await;
    assert_eq!(batch_state(&scientist, &batch).await, "done");
    let second_public = pinned(&volunteer, &server)["publishers"]["alice"].as_str().unwrap().to_owned();
    assert_ne!(second_public, first_public, "the pin followed the signed change");
    // Attaching again (another account) is no first use: the pins stay.
    let again = succeed(&mut volunteer.command(&["attach", &server.url, "--name", "careful-too"])).await;
    assert!(again.contains(&format!("kept the pinned key of publisher alice: {second_public}")), "{again}");

    // Now the server is broken into. First: a module of the attacker's, stored as a new
    // version under the signature of version two.
    let evil = write(dir.path(), "evil.wasm", &module("all your base"));
    let evil_hash = server.store_blob(&std::fs::read(&evil).unwrap()).await.to_hex();
    sqlx::query(
        "insert into app_version (app_id, version, module_sha256, signing_key_id, module_signature)
         select app_id, version + 1, $1, signing_key_id, module_signature from app_version
         where version = (select max(version) from app_version)",
    )
    .bind(&evil_hash)
    .execute(&server.pool)
    .await
    .unwrap();
    let stolen_signature = submit(&scientist, "sim", dir.path()).await;
    volunteer.run_until_idle(TIMEOUT).await;
    assert_eq!(refusals(&server, "the module's signature does not verify").await, 1);
    // Second: the same module, unsigned.
    sqlx::query(
        "insert into app_version (app_id, version, module_sha256)
         select app_id, version + 1, $1 from app_version where version = (select max(version) from app_version)",
    )
    .bind(&evil_hash)
    .execute(&server.pool)
    .await
    .unwrap();
    let unsigned_batch = submit(&scientist, "sim", dir.path()).await;
    volunteer.run_until_idle(TIMEOUT).await;
    assert_eq!(refusals(&server, "the module is not signed").await, 1);
    // Third: the attacker's own key, put in place without the pinned key's signature.
    let attacker_key = dir.path().join("attacker.pem");
    succeed(&mut scientist.command(&["key", "generate", "--out", attacker_key.to_str().unwrap()])).await;
    scientist.json(&["key", "register", "--signing-key", attacker_key.to_str().unwrap(), "--unendorsed"]).await;
    scientist
        .json(&["app", "publish", "sim", evil.to_str().unwrap(), "--signing-key", attacker_key.to_str().unwrap()])
        .await;
    let swapped_key = submit(&scientist, "sim", dir.path()).await;
    volunteer.run_until_idle(TIMEOUT).await;
    assert_eq!(refusals(&server, "publisher \"alice\" signs with key").await, 1);
    for batch in [&stolen_signature, &unsigned_batch, &swapped_key] {
        assert_eq!(batch_state(&scientist, batch).await, "in_progress", "nothing refused ran");
    }
    assert_eq!(server.count("select count(*) from module_refusal").await, 3);
    assert_eq!(
        server.count(&format!("select count(*) from replica where output_sha256 is not null and host_id is not null and work_unit_id in (select id from work_unit where batch_id in ({stolen_signature}, {unsigned_batch}, {swapped_key}))")).await,
        0
    );
    assert_eq!(pinned(&volunteer, &server)["publishers"]["alice"], second_public, "the pin did not move");

    // The volunteer looks, then decides to trust the new key after all: that key's modules
    // run from then on. (The work units refused stay with other volunteers: an account
    // gets one replica of a work unit, and this one has had its.)
    let preview = succeed(&mut volunteer.command(&["trust", &server.url, "--dry-run"])).await;
    assert!(preview.contains("replaced by"), "{preview}");
    assert_eq!(pinned(&volunteer, &server)["publishers"]["alice"], second_public, "a dry run changes nothing");
    let trusted = succeed(&mut volunteer.command(&["trust", &server.url])).await;
    assert!(trusted.contains("trusted the keys"), "{trusted}");
    assert_eq!(server.count("select count(*) from module_refusal").await, 0);
    assert_eq!(pinned(&volunteer, &server)["publishers"]["alice"].as_str(), public_key_of(&attacker_key).as_deref());
    let after_trust = submit(&scientist, "sim", dir.path()).await;
    volunteer.run_until_idle(TIMEOUT).await;
    assert_eq!(batch_state(&scientist, &after_trust).await, "done");
    assert_eq!(server.count("select count(*) from module_refusal").await, 0);
}

/// The public key of the key file at `path`.
fn public_key_of(path: &Path) -> Option<String> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&std::fs::read_to_string(path).ok()?).ok()?;
    Some(wasmgrid_protocol::signing::PublicKey::of(&key).to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_attached_before_pinning_pins_at_its_next_contact_and_a_strict_project_stays_strict() {
    let server = Server::start_with(&["--require-signatures"]).await;
    let scientist = server.publisher("alice").await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    succeed(&mut scientist.command(&["key", "generate", "--out", key.to_str().unwrap()])).await;
    scientist.json(&["app", "create", "sim"]).await;
    let v1 = write(dir.path(), "v1.wasm", &module("version one"));
    let refused = scientist.failure(&["app", "publish", "sim", v1.to_str().unwrap()]).await;
    assert!(refused.contains("signed modules only"), "{refused}");
    scientist.json(&["key", "register", "--signing-key", key.to_str().unwrap()]).await;
    scientist.json(&["app", "publish", "sim", v1.to_str().unwrap(), "--signing-key", key.to_str().unwrap()]).await;

    // An attachment from before keys were pinned: no keys.json.
    let volunteer = Volunteer::attach(&server, "old-timer").await;
    std::fs::remove_file(volunteer.data_dir.path().join("keys.json")).unwrap();
    let batch = submit(&scientist, "sim", dir.path()).await;
    volunteer.run_until_idle(TIMEOUT).await;
    assert_eq!(batch_state(&scientist, &batch).await, "done");
    let pins = pinned(&volunteer, &server);
    assert_eq!(pins["require_signatures"], true);
    assert!(pins["publishers"]["alice"].as_str().unwrap().starts_with("ed25519:"));

    // A server that stops requiring signatures (restarted without the flag, as an attacker
    // would) and serves an unsigned module of a new publisher: the client holds to what it
    // pinned and refuses.
    let mut server = server;
    server.restart_with(&[]).await;
    let mallory = server.publisher("mallory").await;
    mallory.json(&["app", "create", "innocent"]).await;
    let unsigned = write(dir.path(), "innocent.wasm", &module("nothing to see"));
    mallory.json(&["app", "publish", "innocent", unsigned.to_str().unwrap()]).await;
    let batch = submit(&mallory, "innocent", dir.path()).await;
    volunteer.run_until_idle(TIMEOUT).await;
    assert_eq!(batch_state(&mallory, &batch).await, "in_progress");
    assert_eq!(refusals(&server, "the module is not signed, and this project runs signed modules only").await, 1);

    // A volunteer attaching now sees a project that allows unsigned modules: one who asks
    // for signatures anyway refuses mallory's module; one who does not runs it (the limit
    // of trust on first use, in a project that does not require signatures).
    let strict = Volunteer::unattached();
    succeed(&mut strict.command(&["attach", &server.url, "--name", "strict", "--require-signatures"])).await;
    assert_eq!(pinned(&strict, &server)["require_signatures"], true);
    strict.run_until_idle(TIMEOUT).await;
    assert_eq!(refusals(&server, "the module is not signed, and this project runs signed modules only").await, 2);
    let lax = Volunteer::attach(&server, "lax").await;
    lax.run_until_idle(TIMEOUT).await;
    assert_eq!(batch_state(&mallory, &batch).await, "done");
}
