//! Downloading blobs by hash: strong ETags, immutable caching, ranges.

use reqwest::{Method, StatusCode, header};
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::blob_path;

use crate::helpers::{TestApp, policy};

/// An output uploaded and reported (outputs are served only once reported).
async fn stored_output(app: &TestApp, bytes: &[u8]) -> Sha256Hash {
    app.publish(1, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    let replica = alice.fetch(1).await[0].replica_id;
    alice.succeed(replica, bytes).await;
    Sha256Hash::of(bytes)
}

#[tokio::test]
async fn a_blob_is_served_with_a_strong_etag_and_immutable_caching() {
    let app = TestApp::spawn().await;
    let hash = stored_output(&app, b"0123456789").await;

    let response = app.client.request(Method::GET, &blob_path(&hash)).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers[header::ETAG], format!("\"{hash}\"").as_str());
    assert!(headers[header::CACHE_CONTROL].to_str().unwrap().contains("immutable"));
    assert_eq!(headers[header::ACCEPT_RANGES], "bytes");
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"0123456789");

    let revalidated = app
        .client
        .request(Method::GET, &blob_path(&hash))
        .header(header::IF_NONE_MATCH, format!("\"{hash}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn a_large_output_is_stored_whole_and_served_back() {
    let app = TestApp::spawn().await;
    // Larger than what uploads keep in memory, and not a multiple of any buffer size.
    let output: Vec<u8> = (0..(3 << 20) + 17).map(|i: u32| (i % 251) as u8).collect();
    let hash = stored_output(&app, &output).await;

    let response = app.client.request(Method::GET, &blob_path(&hash)).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let served = response.bytes().await.unwrap();
    assert_eq!(served.len(), output.len());
    assert_eq!(Sha256Hash::of(&served), hash);
}

#[tokio::test]
async fn range_requests_return_the_requested_bytes() {
    let app = TestApp::spawn().await;
    let hash = stored_output(&app, b"0123456789").await;
    let get_range =
        |range: &'static str| app.client.request(Method::GET, &blob_path(&hash)).header(header::RANGE, range).send();

    let partial = get_range("bytes=2-5").await.unwrap();
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(partial.headers()[header::CONTENT_RANGE], "bytes 2-5/10");
    assert_eq!(partial.bytes().await.unwrap().as_ref(), b"2345");

    let suffix = get_range("bytes=-3").await.unwrap();
    assert_eq!(suffix.bytes().await.unwrap().as_ref(), b"789");

    let beyond = get_range("bytes=10-").await.unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(beyond.headers()[header::CONTENT_RANGE], "bytes */10");
}

#[tokio::test]
async fn an_unknown_or_malformed_hash_is_a_4xx() {
    let app = TestApp::spawn().await;
    let missing = app.client.download_blob(&Sha256Hash::of(b"never stored")).await.unwrap_err();
    assert_eq!(missing.status(), Some(StatusCode::NOT_FOUND));
    for path in ["/api/v1/blobs/xyz", "/api/v1/blobs/..%2F..%2Fetc%2Fpasswd"] {
        let response = app.client.request(Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
    }
}
