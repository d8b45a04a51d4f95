//! The S3-compatible blob store, against a real S3 API server (`s3s-fs`): the whole loop
//! stores and serves its bytes there, ranges and strong ETags still work, and with
//! `--blob-redirect` downloads go to presigned URLs of the store.

use std::time::Duration;

use reqwest::redirect::Policy;
use reqwest::{Method, StatusCode, header};
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::blob_path;
use wasmgrid_server::ServerConfig;
use wasmgrid_server::blobs::test_s3::{TestBucket, fresh_bucket};
use wasmgrid_server::database::DatabaseLocation;

use crate::helpers::{TestApp, policy};

fn on_bucket(bucket: &TestBucket, redirect: Option<Duration>) -> impl FnOnce(&mut ServerConfig) {
    let (store, settings) = (bucket.url.clone(), bucket.settings());
    move |config| {
        config.blobs.store = Some(store);
        config.blobs.s3_settings = settings;
        config.blobs.redirect = redirect;
    }
}

/// The files `s3s-fs` keeps for a bucket's objects (it stores each object as a file
/// named by its key, beside files of its own metadata).
fn objects_in(bucket: &TestBucket) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![bucket.directory.clone()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(key) = path.strip_prefix(&bucket.directory) {
                found.push(key.to_string_lossy().into_owned());
            }
        }
    }
    found
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(Policy::none()).build().unwrap()
}

#[tokio::test]
async fn a_work_unit_runs_with_its_blobs_in_the_object_store() {
    let bucket = fresh_bucket();
    let app = TestApp::spawn_with(on_bucket(&bucket, None)).await;
    app.publish(1, policy(2, 2)).await;
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    // Past what uploads keep in memory, so it goes up from a staging file.
    let output: Vec<u8> = (0..(2 << 20) + 5).map(|i: u32| (i % 253) as u8).collect();
    let hash = Sha256Hash::of(&output);

    let module = alice.fetch(1).await.remove(0);
    let module_bytes = app.client.download_blob(&module.module.sha256).await.unwrap();
    assert_eq!(Sha256Hash::of(&module_bytes), module.module.sha256, "the module is served from the bucket");
    alice.succeed(module.replica_id, &output).await;
    let replica = bob.fetch(1).await[0].replica_id;
    bob.succeed(replica, &output).await;
    app.sweep().await;

    let hex = hash.to_hex();
    let key = format!("blobs/{}/{hex}", &hex[..2]);
    assert!(
        objects_in(&bucket).contains(&key),
        "the output is an object {key} of the bucket: {:?}",
        objects_in(&bucket)
    );
    let served = app.client.download_blob(&hash).await.unwrap();
    assert_eq!(served.len(), output.len());
    assert_eq!(Sha256Hash::of(&served), hash);
    assert_eq!(app.work_unit(module.work_unit_id).await.state, "validated");
}

#[tokio::test]
async fn an_output_larger_than_a_part_goes_up_in_parts_and_comes_back_whole() {
    let bucket = fresh_bucket();
    let app = TestApp::spawn_with(on_bucket(&bucket, None)).await;
    app.publish(2, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    let replicas = alice.fetch(2).await;
    // Two whole parts of 8 MiB and nothing more: no empty last part is sent.
    let whole_parts: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 239) as u8).collect();
    alice.succeed(replicas[1].replica_id, &whole_parts).await;
    let served = app.client.download_blob(&Sha256Hash::of(&whole_parts)).await.unwrap();
    assert!(served == whole_parts, "the output of two whole parts comes back whole");

    // Two whole parts and a short last one.
    let output: Vec<u8> = (0..(16 << 20) + 12_345).map(|i: u32| (i % 241) as u8).collect();
    let hash = Sha256Hash::of(&output);
    alice.succeed(replicas[0].replica_id, &output).await;

    let served = app.client.download_blob(&hash).await.unwrap();
    assert_eq!(served.len(), output.len());
    assert_eq!(Sha256Hash::of(&served), hash);
    let range = format!("bytes={}-{}", (8 << 20) - 2, (8 << 20) + 1);
    let across_parts =
        app.client.request(Method::GET, &blob_path(&hash)).header(header::RANGE, range).send().await.unwrap();
    assert_eq!(across_parts.bytes().await.unwrap().as_ref(), &output[(8 << 20) - 2..(8 << 20) + 2]);
}

#[tokio::test]
async fn ranges_and_strong_etags_work_on_the_object_store() {
    let bucket = fresh_bucket();
    let app = TestApp::spawn_with(on_bucket(&bucket, None)).await;
    app.publish(1, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    let replica = alice.fetch(1).await[0].replica_id;
    alice.succeed(replica, b"0123456789").await;
    let hash = Sha256Hash::of(b"0123456789");
    let get = || app.client.request(Method::GET, &blob_path(&hash));

    let whole = get().send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.headers()[header::ETAG], format!("\"{hash}\"").as_str());
    assert_eq!(whole.bytes().await.unwrap().as_ref(), b"0123456789");

    let partial = get().header(header::RANGE, "bytes=2-5").send().await.unwrap();
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(partial.headers()[header::CONTENT_RANGE], "bytes 2-5/10");
    assert_eq!(partial.bytes().await.unwrap().as_ref(), b"2345");
    let tail = get().header(header::RANGE, "bytes=7-").send().await.unwrap();
    assert_eq!(tail.bytes().await.unwrap().as_ref(), b"789");
    let beyond = get().header(header::RANGE, "bytes=10-").send().await.unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    let revalidated = get().header(header::IF_NONE_MATCH, format!("\"{hash}\"")).send().await.unwrap();
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
    let missing = app.client.download_blob(&Sha256Hash::of(b"never stored")).await.unwrap_err();
    assert_eq!(missing.status(), Some(StatusCode::NOT_FOUND));
}

#[tokio::test]
async fn with_redirects_a_download_goes_to_a_presigned_url_of_the_store() {
    let bucket = fresh_bucket();
    let app = TestApp::spawn_with(on_bucket(&bucket, Some(Duration::from_secs(300)))).await;
    app.publish(1, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    let replica = alice.fetch(1).await[0].replica_id;
    alice.succeed(replica, b"0123456789").await;
    let hash = Sha256Hash::of(b"0123456789");
    let http = no_redirects();
    let url = format!("{}{}", app.client.base_url(), blob_path(&hash));

    let redirect = http.get(&url).send().await.unwrap();
    assert_eq!(redirect.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(redirect.headers()[header::CACHE_CONTROL], "no-store");
    let location = redirect.headers()[header::LOCATION].to_str().unwrap().to_owned();
    assert!(location.starts_with(&bucket.endpoint), "{location} is on the store");
    assert!(location.contains("X-Amz-Signature="), "{location} is presigned");

    // The store serves it, ranges included, with no credentials but the URL's.
    let direct = http.get(&location).send().await.unwrap();
    assert_eq!(direct.status(), StatusCode::OK);
    assert_eq!(direct.bytes().await.unwrap().as_ref(), b"0123456789");
    let partial = http.get(&location).header(header::RANGE, "bytes=2-5").send().await.unwrap();
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(partial.bytes().await.unwrap().as_ref(), b"2345");
    // The volunteer's client follows the redirect and checks the hash as ever.
    assert_eq!(app.client.download_blob(&hash).await.unwrap().as_ref(), b"0123456789");

    // A URL whose signature was changed is refused by the store.
    let (unsigned, signature) = location.split_once("X-Amz-Signature=").unwrap();
    let flipped = if signature.starts_with('0') { "1" } else { "0" };
    let forged = format!("{unsigned}X-Amz-Signature={flipped}{}", &signature[1..]);
    assert_eq!(http.get(&forged).send().await.unwrap().status(), StatusCode::FORBIDDEN);
    // A conditional request is answered by the server itself.
    let revalidated = http.get(&url).header(header::IF_NONE_MATCH, format!("\"{hash}\"")).send().await.unwrap();
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
    // Nobody is sent to the store for what the server would not serve.
    let unreported = Sha256Hash::of(b"never reported");
    let refused = http.get(format!("{}{}", app.client.base_url(), blob_path(&unreported))).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_presigned_url_expires() {
    let bucket = fresh_bucket();
    let app = TestApp::spawn_with(on_bucket(&bucket, Some(Duration::from_secs(1)))).await;
    app.publish(1, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    let replica = alice.fetch(1).await[0].replica_id;
    alice.succeed(replica, b"short-lived").await;
    let http = no_redirects();
    let url = format!("{}{}", app.client.base_url(), blob_path(&Sha256Hash::of(b"short-lived")));
    let redirect = http.get(&url).send().await.unwrap();
    let location = redirect.headers()[header::LOCATION].to_str().unwrap().to_owned();

    // Presigned URLs count whole seconds from the second they were signed in.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    assert_eq!(http.get(&location).send().await.unwrap().status(), StatusCode::FORBIDDEN);
    // The server hands out a fresh one.
    let fresh = http.get(&url).send().await.unwrap().headers()[header::LOCATION].to_str().unwrap().to_owned();
    assert_eq!(http.get(&fresh).send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_store_with_wrong_credentials_stops_the_server_at_startup() {
    let bucket = fresh_bucket();
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        data_dir.path().to_path_buf(),
        DatabaseLocation::Url(wasmgrid_server::database::test_cluster::fresh_database_url().await),
    );
    on_bucket(&bucket, None)(&mut config);
    config.blobs.s3_settings.push(("aws_secret_access_key".into(), "not-the-secret".into()));

    let error = wasmgrid_server::build(config).await.err().expect("the server refuses to start");

    let message = format!("{error:#}");
    assert!(message.contains(bucket.url.as_str()) && message.contains("does not answer"), "{message}");
}

#[tokio::test]
async fn redirects_without_an_object_store_are_refused_at_startup() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        data_dir.path().to_path_buf(),
        DatabaseLocation::Url(wasmgrid_server::database::test_cluster::fresh_database_url().await),
    );
    config.blobs.redirect = Some(Duration::from_secs(60));

    let error = wasmgrid_server::build(config).await.err().expect("the server refuses to start");

    assert!(format!("{error:#}").contains("--blob-store"), "{error:#}");
}
