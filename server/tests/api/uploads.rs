//! Output uploads: a replica holds at most one unreported output, nobody downloads an output
//! until a replica reports it, and the sweep deletes what is never reported.

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::blob_path;

use crate::helpers::{TestApp, Volunteer, policy, success};

async fn download_status(app: &TestApp, hash: Sha256Hash) -> StatusCode {
    app.client.request(Method::GET, &blob_path(&hash)).send().await.unwrap().status()
}

async fn stored(app: &TestApp, hash: Sha256Hash) -> bool {
    let row = app.count(&format!("select count(*) from blob where sha256 = '{hash}'")).await == 1;
    let bytes = app.blobs.size(hash).await.unwrap().is_some();
    assert_eq!(row, bytes, "a blob's row and its bytes go together ({hash})");
    row
}

/// A published work unit and the one replica `volunteer` took of it.
async fn one_replica(app: &TestApp, volunteer: &Volunteer) -> i64 {
    app.publish(1, policy(1, 1)).await;
    volunteer.fetch(1).await[0].replica_id
}

fn output(i: usize) -> Vec<u8> {
    format!("output number {i} ").repeat(5000).into_bytes()
}

#[tokio::test]
async fn a_new_upload_replaces_the_last_and_nothing_unreported_is_served() {
    let app = TestApp::spawn().await;
    let alice = app.volunteer("alice").await;
    let replica = one_replica(&app, &alice).await;

    let hashes: Vec<Sha256Hash> = (0..30).map(|i| Sha256Hash::of(&output(i))).collect();
    for i in 0..30 {
        alice.upload(replica, &output(i)).await.unwrap();
    }
    for hash in &hashes {
        assert_eq!(download_status(&app, *hash).await, StatusCode::NOT_FOUND, "unreported outputs are not served");
    }
    app.sweep().await;
    for hash in &hashes[..29] {
        assert!(!stored(&app, *hash).await, "a replaced upload is deleted");
    }
    assert!(stored(&app, hashes[29]).await, "the replica's own upload stays");
    assert_eq!(app.count("select count(*) from blob").await, 2, "the module and the last upload");

    alice.request(vec![success(replica, &output(29))], 0).await.unwrap();
    assert_eq!(download_status(&app, hashes[29]).await, StatusCode::OK, "a reported output is served");
    app.sweep().await;
    assert!(stored(&app, hashes[29]).await);
}

#[tokio::test]
async fn an_upload_its_replica_never_reports_is_deleted() {
    let app = TestApp::spawn().await;
    let alice = app.volunteer("alice").await;
    let replica = one_replica(&app, &alice).await;
    alice.upload(replica, b"uploaded, then the run is said to have failed").await.unwrap();
    let hash = Sha256Hash::of(b"uploaded, then the run is said to have failed");

    app.sweep().await;
    assert!(stored(&app, hash).await, "kept while its replica may still report it");
    alice.fail(replica, "trap").await;
    sqlx::query("update output_upload set check_after = now()").execute(&app.pool).await.unwrap();
    app.sweep().await;

    assert!(!stored(&app, hash).await);
    assert_eq!(app.count("select count(*) from output_upload").await, 0);
}

#[tokio::test]
async fn bytes_another_replica_holds_or_reported_stay() {
    let app = TestApp::spawn().await;
    app.publish(1, policy(2, 2)).await;
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    let a = alice.fetch(1).await[0].replica_id;
    let b = bob.fetch(1).await[0].replica_id;
    let shared = b"the same answer".as_slice();
    alice.upload(a, shared).await.unwrap();
    bob.upload(b, shared).await.unwrap();

    // Alice changes her mind; Bob still holds the bytes, then reports them.
    alice.upload(a, b"something else").await.unwrap();
    app.sweep().await;
    assert!(stored(&app, Sha256Hash::of(shared)).await);
    bob.request(vec![success(b, shared)], 0).await.unwrap();
    sqlx::query("update output_upload set check_after = now()").execute(&app.pool).await.unwrap();
    app.sweep().await;
    assert!(stored(&app, Sha256Hash::of(shared)).await);
    assert_eq!(download_status(&app, Sha256Hash::of(shared)).await, StatusCode::OK);
}

#[tokio::test]
async fn an_upload_racing_its_report_never_loses_or_mixes_them_up() {
    let app = TestApp::spawn().await;
    app.publish(40, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    let assignments = alice.fetch(40).await;
    for assignment in &assignments {
        alice.upload(assignment.replica_id, b"first").await.unwrap();
    }
    // For each replica, its report of the first output and an upload of a second race.
    let mut races = Vec::new();
    for assignment in &assignments {
        let (reporter, uploader) = (alice.clone(), alice.clone());
        let id = assignment.replica_id;
        races.push(tokio::spawn(async move {
            let report = reporter.request(vec![success(id, b"first")], 0);
            let upload = uploader.client.upload_output(&uploader.token, id, Bytes::from_static(b"second"));
            let (report, upload) = tokio::join!(report, upload);
            (id, report.map(|_| ()).map_err(|e| e.status()), upload.map(|_| ()).map_err(|e| e.status()))
        }));
    }
    for race in races {
        let (id, report, upload) = race.await.unwrap();
        let (outcome, output): (Option<String>, Option<String>) =
            sqlx::query_as("select outcome::text, output_sha256 from replica where id = $1")
                .bind(id)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        match report {
            // The report came first: the upload is refused, the first output recorded.
            Ok(()) => {
                assert_eq!(upload, Err(Some(StatusCode::CONFLICT)), "replica {id}");
                assert_eq!((outcome.as_deref(), output), (Some("success"), Some(Sha256Hash::of(b"first").to_hex())));
            }
            // The upload came first: the report names an output the replica no longer holds.
            Err(status) => {
                assert_eq!(status, Some(StatusCode::BAD_REQUEST), "replica {id}");
                assert_eq!(upload, Ok(()), "replica {id}");
                assert_eq!(outcome, None, "replica {id} is still waiting for its report");
            }
        }
    }
    sqlx::query("update output_upload set check_after = now()").execute(&app.pool).await.unwrap();
    app.sweep().await;
    // Whatever is recorded or held is stored, bytes and row.
    let referenced: Vec<String> = sqlx::query_scalar(
        "select distinct h from replica, lateral (values (output_sha256), (uploaded_sha256)) v(h) where h is not null",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for hash in referenced {
        assert!(stored(&app, hash.parse().unwrap()).await, "{hash}");
    }
}

#[tokio::test]
async fn blobs_are_never_sniffed_or_run_as_pages() {
    let app = TestApp::spawn().await;
    let alice = app.volunteer("alice").await;
    let replica = one_replica(&app, &alice).await;
    let html = b"<html><script>alert(document.cookie)</script></html>";
    alice.succeed(replica, html).await;

    let response = app.client.request(Method::GET, &blob_path(&Sha256Hash::of(html))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    let policy = response.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.split(';').any(|directive| directive.trim() == "sandbox"), "{policy}");
}

#[tokio::test]
async fn an_upload_left_by_a_replica_too_late_to_count_is_deleted() {
    let app = TestApp::spawn().await;
    app.publish(1, policy(1, 1)).await;
    let (late, punctual) = (app.volunteer("late").await, app.volunteer("punctual").await);
    let replica = late.fetch(1).await[0].replica_id;
    late.upload(replica, b"too late").await.unwrap();
    app.expire(replica).await;
    app.sweep().await;
    // The work unit is done by another volunteer meanwhile.
    let second = punctual.fetch(1).await[0].replica_id;
    punctual.succeed(second, b"on time").await;
    sqlx::query("update output_upload set check_after = now()").execute(&app.pool).await.unwrap();
    app.sweep().await;
    assert!(stored(&app, Sha256Hash::of(b"too late")).await, "a late result may still count for a while");

    // Late by more than its deadline's length again.
    sqlx::query(
        "update replica r set deadline_at = now() - w.delay_bound - interval '1 second'
         from work_unit w where w.id = r.work_unit_id and r.id = $1",
    )
    .bind(replica)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("update output_upload set check_after = now()").execute(&app.pool).await.unwrap();
    app.sweep().await;

    assert!(!stored(&app, Sha256Hash::of(b"too late")).await, "nobody can report it any more");
    let refused = late.upload(replica, b"too late, again").await.unwrap_err();
    assert_eq!(refused.status(), Some(StatusCode::CONFLICT));
    // A late report now changes nothing, and is acknowledged.
    let reply = late.request(vec![success(replica, b"too late")], 0).await.unwrap();
    assert_eq!(reply.acknowledged, [replica]);
    let outcome: Option<String> = sqlx::query_scalar("select outcome::text from replica where id = $1")
        .bind(replica)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(outcome.as_deref(), Some("no_reply"));
}

#[tokio::test]
async fn bytes_a_replica_still_holds_stay_while_another_sweeper_looks_at_its_upload() {
    let app = TestApp::spawn().await;
    app.publish(2, policy(1, 1)).await;
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    let (a, b) = (alice.fetch(1).await[0].replica_id, bob.fetch(1).await[0].replica_id);
    let shared = b"identical small output".as_slice();
    alice.upload(a, shared).await.unwrap();
    bob.upload(b, shared).await.unwrap();
    alice.fail(a, "gave up").await;
    sqlx::query("update output_upload set check_after = now() where replica_id = $1")
        .bind(a)
        .execute(&app.pool)
        .await
        .unwrap();

    // Another server's sweeper holds Bob's upload log (deciding to look again later).
    let mut other_sweeper = app.pool.begin().await.unwrap();
    sqlx::query("select id from output_upload where replica_id = $1 for update")
        .bind(b)
        .execute(&mut *other_sweeper)
        .await
        .unwrap();
    app.sweep().await;
    other_sweeper.rollback().await.unwrap();

    assert!(stored(&app, Sha256Hash::of(shared)).await, "Bob may still report these bytes");
    bob.request(vec![success(b, shared)], 0).await.expect("Bob's report is recorded");
}

/// What the two migrations that brought the upload log and blob visibility added, and those
/// after them, undone: a database as it was before them.
const BEFORE_THE_UPLOAD_LOG: &str = "
    alter table replica drop column instrumentation_version;
    drop table output_upload;
    drop table publisher_file;
    drop index replica_output_sha256;
    drop index replica_uploaded_sha256;
    drop index app_version_module_sha256;
    alter table blob drop column origin;
    alter table batch drop column public;
    delete from _sqlx_migrations where version >= 20261201000002;
";

#[tokio::test]
async fn outputs_stored_before_the_upload_log_are_hidden_and_swept_by_the_migrations() {
    let app = TestApp::spawn().await;
    let alice = app.volunteer("alice").await;
    let replica = one_replica(&app, &alice).await;
    // Before the log, a replaced upload stayed behind, unreferenced and served to anyone.
    let (replaced, held) = (output(1), output(2));
    alice.upload(replica, &replaced).await.unwrap();
    alice.upload(replica, &held).await.unwrap();
    assert!(stored(&app, Sha256Hash::of(&replaced)).await, "left for the sweep");
    sqlx::raw_sql(BEFORE_THE_UPLOAD_LOG).execute(&app.pool).await.unwrap();

    wasmgrid_server::database::MIGRATOR.run(&app.pool).await.expect("the migrations apply to an old database");

    let origins: Vec<(String, String)> =
        sqlx::query_as("select sha256, origin from blob order by origin, sha256").fetch_all(&app.pool).await.unwrap();
    assert_eq!(origins.iter().filter(|(_, origin)| origin == "published").count(), 1, "the module: {origins:?}");
    for bytes in [&replaced, &held] {
        assert_eq!(download_status(&app, Sha256Hash::of(bytes)).await, StatusCode::NOT_FOUND);
    }
    app.sweep().await;
    assert!(!stored(&app, Sha256Hash::of(&replaced)).await, "nobody holds the replaced upload");
    assert!(stored(&app, Sha256Hash::of(&held)).await, "its replica may still report this one");
    alice.request(vec![success(replica, &held)], 0).await.unwrap();
    assert_eq!(download_status(&app, Sha256Hash::of(&held)).await, StatusCode::OK);
}
