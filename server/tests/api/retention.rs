//! Retention: a batch's inputs and outputs go a set time after it ends, or when its
//! publisher deletes it; what live batches share is kept; outputs that lost validation go
//! soon; several sweepers at once, and a sweep cut short, delete each blob once.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use wasmgrid_client::publish::client::PublisherClient;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{SchedulerRequest, blob_path};
use wasmgrid_server::blobs::{self, retention};
use wasmgrid_server::publishing::WorkUnitSpec;

use crate::helpers::{Published, TestApp, policy, success};

/// Stores `bytes` as a publisher's file.
async fn stored(app: &TestApp, bytes: &[u8]) -> Sha256Hash {
    let mut connection = app.pool.acquire().await.unwrap();
    blobs::store_bytes(&mut connection, app.blobs.as_ref(), bytes).await.unwrap()
}

/// A work unit reading `stdin` and the file `data`, replicated as `quorum` of `replicas`.
fn reading(name: &str, stdin: Sha256Hash, data: Sha256Hash, quorum: u32, replicas: u32) -> WorkUnitSpec {
    WorkUnitSpec {
        stdin: Some(stdin),
        files: vec![("data".into(), data)],
        policy: policy(quorum, replicas),
        ..WorkUnitSpec::new(name)
    }
}

/// A batch of one work unit named `tag`, with a stdin and a file of its own, replicated as
/// `quorum` of `replicas`.
async fn one_work_unit(app: &TestApp, tag: &str, quorum: u32, replicas: u32) -> Published {
    let stdin = stored(app, format!("stdin of {tag}").as_bytes()).await;
    let data = stored(app, format!("file of {tag}").as_bytes()).await;
    app.publish_app(vec![reading(tag, stdin, data, quorum, replicas)], Default::default()).await
}

async fn purged(app: &TestApp, batch_id: i64) -> bool {
    sqlx::query_scalar("select purged_at is not null from batch where id = $1")
        .bind(batch_id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// As if the batch had ended `days` ago (and its files were stored before that).
async fn age(app: &TestApp, batch_id: i64, days: u32) {
    sqlx::query("update batch set ended_at = now() - make_interval(days => $2) where id = $1")
        .bind(batch_id)
        .bind(days as i32)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("update blob set held_until = held_until - make_interval(days => $1)")
        .bind(days as i32)
        .execute(&app.pool)
        .await
        .unwrap();
}

/// A batch of one work unit, with a stdin and a file of its own, run and validated, and
/// ended `days` ago; returns it, and its stdin, file and output.
async fn ended_batch(app: &TestApp, tag: &str, days: u32) -> (Published, [Sha256Hash; 3]) {
    let stdin = stored(app, format!("stdin of {tag}").as_bytes()).await;
    let data = stored(app, format!("file of {tag}").as_bytes()).await;
    let published = app.publish_app(vec![reading(tag, stdin, data, 1, 1)], Default::default()).await;
    let volunteer = app.volunteer(&format!("volunteer of {tag}")).await;
    let replica = volunteer.fetch(1).await[0].replica_id;
    let output = format!("output of {tag}");
    volunteer.succeed(replica, output.as_bytes()).await;
    app.sweep().await;
    age(app, published.batch_id, days).await;
    (published, [stdin, data, Sha256Hash::of(output.as_bytes())])
}

/// What a sweep stopped between its two steps leaves: the ended batches purged and `blob`
/// marked deleted and still queued, its bytes still in the store.
async fn purge_and_mark_only(app: &TestApp, blob: Sha256Hash) {
    let mut connection = app.pool.acquire().await.unwrap();
    while retention::purge_due_batches(&mut connection, Duration::from_secs(30 * 24 * 3600)).await.unwrap() {}
    sqlx::query("update blob set deleted_at = now() where sha256 = $1")
        .bind(blob.to_hex())
        .execute(&app.pool)
        .await
        .unwrap();
}

async fn download_status(app: &TestApp, hash: &Sha256Hash) -> StatusCode {
    app.client.request(Method::GET, &blob_path(hash)).send().await.unwrap().status()
}

async fn in_store(app: &TestApp, hash: Sha256Hash) -> bool {
    app.blobs.size(hash).await.unwrap().is_some()
}

async fn deleted(app: &TestApp, hash: &Sha256Hash) -> bool {
    sqlx::query_scalar("select deleted_at is not null from blob where sha256 = $1")
        .bind(hash.to_hex())
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Batch `batch_id` deleted by its publisher (the tests' own), over the API.
async fn deleted_by_its_publisher(app: &TestApp, batch_id: i64) {
    let response = app
        .client
        .request(Method::DELETE, &format!("/api/v1/batches/{batch_id}"))
        .bearer_auth(app.publisher_token("tests").await)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

async fn with_retention(days: u64) -> TestApp {
    TestApp::spawn_with(|config| config.blobs.retention = Duration::from_secs(days * 24 * 3600)).await
}

#[tokio::test]
async fn a_batchs_inputs_and_outputs_are_deleted_once_its_retention_is_over() {
    let app = with_retention(30).await;
    let (stdin, data) = (stored(&app, b"stdin of one").await, stored(&app, b"file of one").await);
    let published = app.publish_app(vec![reading("one", stdin, data, 1, 1)], Default::default()).await;
    let alice = app.volunteer("alice").await;
    let assignment = alice.fetch(1).await.remove(0);
    alice.succeed(assignment.replica_id, b"the answer").await;
    let output = Sha256Hash::of(b"the answer");
    app.sweep().await;
    let credit_before = app.host(alice.host_id).await.total_credit;

    // Ended, and kept for the retention.
    age(&app, published.batch_id, 29).await;
    app.sweep().await;
    for hash in [stdin, data, output] {
        assert_eq!(download_status(&app, &hash).await, StatusCode::OK, "{hash} is kept within the retention");
    }

    age(&app, published.batch_id, 31).await;
    app.sweep().await;

    for hash in [stdin, data, output] {
        assert!(deleted(&app, &hash).await, "{hash} is marked deleted");
        assert!(!in_store(&app, hash).await, "{hash} is gone from the store");
        assert_eq!(download_status(&app, &hash).await, StatusCode::GONE);
    }
    // The module stays with its app version; the rows and the credit stay on record.
    assert_eq!(download_status(&app, &assignment.module.sha256).await, StatusCode::OK);
    assert_eq!(app.work_unit(assignment.work_unit_id).await.state, "validated");
    assert_eq!(app.host(alice.host_id).await.total_credit, credit_before);
    assert!(purged(&app, published.batch_id).await);
}

#[tokio::test]
async fn a_running_batch_keeps_its_files_however_old() {
    let app = with_retention(1).await;
    let (stdin, data) = (stored(&app, b"slow stdin").await, stored(&app, b"slow file").await);
    let published = app.publish_app(vec![reading("slow", stdin, data, 2, 2)], Default::default()).await;
    let alice = app.volunteer("alice").await;
    let replica = alice.fetch(1).await[0].replica_id;
    alice.succeed(replica, b"half a quorum").await;
    sqlx::query("update batch set created_at = now() - interval '90 days', closed_at = now() - interval '90 days' where id = $1")
        .bind(published.batch_id)
        .execute(&app.pool)
        .await
        .unwrap();

    app.sweep().await;

    for hash in [stdin, data, Sha256Hash::of(b"half a quorum")] {
        assert!(in_store(&app, hash).await && !deleted(&app, &hash).await, "{hash} is kept while the batch runs");
    }
    let ended: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar("select ended_at from batch where id = $1")
        .bind(published.batch_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(ended, None);
}

#[tokio::test]
async fn files_a_live_batch_shares_are_kept_until_it_ends_too() {
    let app = with_retention(30).await;
    let (stdin, data) = (stored(&app, b"shared stdin").await, stored(&app, b"shared file").await);
    let only_old = stored(&app, b"only the old batch's file").await;
    let old = app
        .publish_app(vec![reading("a", stdin, data, 1, 1), reading("b", stdin, only_old, 1, 1)], Default::default())
        .await;
    let alice = app.volunteer("alice").await;
    for assignment in alice.fetch(2).await {
        alice.succeed(assignment.replica_id, b"same answer").await;
    }
    let new = app.publish_version(old.app_id, vec![reading("c", stdin, data, 2, 2)]).await;
    let replica = alice.fetch(1).await[0].replica_id;
    alice.succeed(replica, b"same answer").await;
    app.sweep().await;

    age(&app, old.batch_id, 31).await;
    app.sweep().await;

    assert!(deleted(&app, &only_old).await && !in_store(&app, only_old).await, "the old batch's own file goes");
    for hash in [stdin, data, Sha256Hash::of(b"same answer")] {
        assert!(!deleted(&app, &hash).await && in_store(&app, hash).await, "{hash} is kept for the live batch");
        assert_eq!(download_status(&app, &hash).await, StatusCode::OK);
    }

    // The new batch ends; once its retention is over too, the shared files go.
    let bob = app.volunteer("bob").await;
    let replica = bob.fetch(1).await[0].replica_id;
    bob.succeed(replica, b"same answer").await;
    app.sweep().await;
    assert_eq!(app.work_unit(new.work_units[0]).await.state, "validated");
    age(&app, new.batch_id, 31).await;
    app.sweep().await;
    for hash in [stdin, data, Sha256Hash::of(b"same answer")] {
        assert!(deleted(&app, &hash).await && !in_store(&app, hash).await, "{hash} goes with the last batch");
    }
}

#[tokio::test]
async fn a_publisher_may_delete_a_batch_sooner_and_no_one_else_may() {
    let app = with_retention(30).await;
    let (stdin, data) = (stored(&app, b"stdin to delete").await, stored(&app, b"file to delete").await);
    let published = app.publish_app(vec![reading("x", stdin, data, 2, 2)], Default::default()).await;
    let alice = app.volunteer("alice").await;
    let replica = alice.fetch(1).await[0].replica_id;
    alice.succeed(replica, b"partial").await;
    let owner = app.publisher_token("tests").await;
    let stranger = app.publisher_token("someone else").await;
    let delete = |token: String| {
        app.client.request(Method::DELETE, &format!("/api/v1/batches/{}", published.batch_id)).bearer_auth(token).send()
    };

    assert_eq!(delete(stranger).await.unwrap().status(), StatusCode::NOT_FOUND);
    let deleted_status = delete(owner.clone()).await.unwrap();
    assert_eq!(deleted_status.status(), StatusCode::OK);
    let status: serde_json::Value = deleted_status.json().await.unwrap();
    assert_eq!(status["state"], "cancelled");
    app.sweep().await;

    for hash in [stdin, data, Sha256Hash::of(b"partial")] {
        assert_eq!(download_status(&app, &hash).await, StatusCode::GONE, "{hash} is deleted at the next sweep");
        assert!(!in_store(&app, hash).await);
    }
    let again = delete(owner.clone()).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK, "deleting twice changes nothing");
    let status: serde_json::Value = again.json().await.unwrap();
    assert!(status["files_deleted_at"].is_string(), "{status}");
}

/// A publisher deleting its batch cuts short the promises of the files only it stored; a
/// file another publisher uploaded too stays for that publisher's promise, then goes.
#[tokio::test]
async fn a_deleted_batch_keeps_the_promise_made_to_another_publisher_of_the_same_file() {
    let app = with_retention(30).await;
    let owner = PublisherClient::new(app.client.clone(), app.publisher_token("tests").await);
    let other = PublisherClient::new(app.client.clone(), app.publisher_token("someone else").await);
    let files = tempfile::tempdir().unwrap();
    let upload = async |publisher: &PublisherClient, bytes: &[u8]| {
        let hash = Sha256Hash::of(bytes);
        let path = files.path().join(hash.to_hex());
        std::fs::write(&path, bytes).unwrap();
        publisher.put_file(hash, &path).await.unwrap();
        hash
    };
    let shared = upload(&owner, b"a file both publishers uploaded").await;
    assert_eq!(upload(&other, b"a file both publishers uploaded").await, shared);
    let owners_only = upload(&owner, b"a file only its owner uploaded").await;
    let published = app.publish_app(vec![reading("x", shared, owners_only, 1, 1)], Default::default()).await;

    deleted_by_its_publisher(&app, published.batch_id).await;
    app.sweep().await;

    assert!(deleted(&app, &owners_only).await, "the owner's own file goes at once");
    assert!(!deleted(&app, &shared).await, "the other publisher was promised the shared file");
    assert!(in_store(&app, shared).await);
    assert_eq!(other.missing_files(vec![shared]).await.unwrap(), Vec::<Sha256Hash>::new());

    // Once that promise has lapsed, nothing keeps the shared file either.
    sqlx::query("update blob set held_until = now() - interval '1 second' where sha256 = $1")
        .bind(shared.to_hex())
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("update blob_release set check_after = now() where sha256 = $1")
        .bind(shared.to_hex())
        .execute(&app.pool)
        .await
        .unwrap();
    app.sweep().await;
    assert!(deleted(&app, &shared).await);
    assert!(!in_store(&app, shared).await);
    assert_eq!(other.missing_files(vec![shared]).await.unwrap(), vec![shared], "told to upload it again");
}

/// Once a batch is purged its canonical output is gone, so late results cannot be checked:
/// a replica still running ends with the purge, and neither it nor one that missed its
/// deadline may store an output any more (nothing would ever delete it).
#[tokio::test]
async fn no_late_result_is_stored_for_a_purged_batch() {
    let app = with_retention(30).await;
    let published = one_work_unit(&app, "late", 1, 3).await;
    let (alice, bob, carol) = (app.volunteer("alice").await, app.volunteer("bob").await, app.volunteer("carol").await);
    let (alices, bobs, carols) =
        (alice.fetch(1).await[0].replica_id, bob.fetch(1).await[0].replica_id, carol.fetch(1).await[0].replica_id);
    app.expire(carols).await;
    app.sweep().await;
    alice.succeed(alices, b"on time").await;
    app.sweep().await;
    assert_eq!(app.work_unit(published.work_units[0]).await.state, "validated");

    deleted_by_its_publisher(&app, published.batch_id).await;
    app.sweep().await;

    for (volunteer, replica, output) in [(&bob, bobs, &b"still running"[..]), (&carol, carols, &b"missed its time"[..])]
    {
        let refused = volunteer.upload(replica, output).await.unwrap_err();
        assert_eq!(refused.status(), Some(StatusCode::CONFLICT), "replica {replica}: {refused}");
        let reply = volunteer.request(vec![success(replica, output)], 0).await.unwrap();
        assert_eq!(reply.acknowledged, vec![replica], "a late report is acknowledged and changes nothing");
        let blobs = app.count(&format!("select count(*) from blob where sha256 = '{}'", Sha256Hash::of(output))).await;
        assert_eq!(blobs, 0, "nothing is stored for replica {replica}");
    }
    let bobs_state: (String, String) = sqlx::query_as("select state::text, outcome::text from replica where id = $1")
        .bind(bobs)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(bobs_state, ("over".to_owned(), "didnt_need".to_owned()));
    let reply = bob
        .client
        .scheduler(&bob.token, &SchedulerRequest { held_replicas: Some(vec![bobs]), ..SchedulerRequest::default() })
        .await
        .unwrap();
    assert_eq!(reply.abort, vec![bobs], "bob is told to stop running it");
}

/// A purge finds a replica of the batch locked (its output being stored right now): it
/// does not wait with the batch locked, and purges the batch at a later sweep.
#[tokio::test]
async fn a_purge_steps_aside_for_an_upload_in_progress() {
    let app = with_retention(30).await;
    let published = one_work_unit(&app, "busy", 1, 2).await;
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    let (alices, bobs) = (alice.fetch(1).await[0].replica_id, bob.fetch(1).await[0].replica_id);
    alice.succeed(alices, b"done").await;
    deleted_by_its_publisher(&app, published.batch_id).await;

    // Bob's upload, holding his replica's row as it stores the bytes.
    let mut upload = app.pool.begin().await.unwrap();
    sqlx::query("select id from replica where id = $1 for no key update")
        .bind(bobs)
        .execute(&mut *upload)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), app.sweep()).await.expect("the sweep does not wait for the upload");
    assert!(!purged(&app, published.batch_id).await, "not purged while the upload holds the replica");

    upload.rollback().await.unwrap();
    app.sweep().await;
    assert!(purged(&app, published.batch_id).await);
    assert!(deleted(&app, &Sha256Hash::of(b"done")).await);
}

/// An upload that raced the purge (it began while the batch still counted as live) stores
/// the canonical output's bytes again after retention deleted them: the upload sweep hands
/// them back to retention, which deletes them again, instead of keeping them for ever.
#[tokio::test]
async fn an_output_stored_again_by_an_upload_racing_the_purge_is_deleted_again() {
    let app = with_retention(30).await;
    let published = one_work_unit(&app, "raced", 1, 2).await;
    let (alice, carol) = (app.volunteer("alice").await, app.volunteer("carol").await);
    let (alices, carols) = (alice.fetch(1).await[0].replica_id, carol.fetch(1).await[0].replica_id);
    app.expire(carols).await;
    app.sweep().await;
    alice.succeed(alices, b"the answer").await;
    let output = Sha256Hash::of(b"the answer");
    deleted_by_its_publisher(&app, published.batch_id).await;
    app.sweep().await;
    assert!(deleted(&app, &output).await);

    // The race, replayed: carol's upload as it went while the batch was not yet purged.
    let set_purged = |purged: bool| {
        sqlx::query("update batch set purged_at = case when $2 then now() end where id = $1")
            .bind(published.batch_id)
            .bind(purged)
            .execute(&app.pool)
    };
    set_purged(false).await.unwrap();
    carol.upload(carols, b"the answer").await.unwrap();
    set_purged(true).await.unwrap();
    assert!(in_store(&app, output).await, "stored again");
    sqlx::query("update output_upload set check_after = now()").execute(&app.pool).await.unwrap();

    app.sweep().await;
    app.sweep().await;
    assert!(deleted(&app, &output).await, "marked deleted again");
    assert!(!in_store(&app, output).await, "its bytes are gone again");
}

#[tokio::test]
async fn an_output_that_lost_validation_is_deleted_soon_after() {
    let app = with_retention(30).await;
    app.publish(1, policy(2, 3)).await;
    let volunteers = [app.volunteer("a").await, app.volunteer("b").await, app.volunteer("c").await];
    let mut replicas = Vec::new();
    for volunteer in &volunteers {
        replicas.push(volunteer.fetch(1).await[0].replica_id);
    }
    // The odd one out reports first, so the quorum forms after it and judges it.
    volunteers[2].succeed(replicas[2], b"outvoted").await;
    volunteers[0].succeed(replicas[0], b"agreed").await;
    volunteers[1].succeed(replicas[1], b"agreed").await;
    app.sweep().await;
    let (agreed, outvoted) = (Sha256Hash::of(b"agreed"), Sha256Hash::of(b"outvoted"));
    assert!(in_store(&app, outvoted).await, "kept for a while, for whoever looks into the disagreement");

    sqlx::query("update blob_release set check_after = now()").execute(&app.pool).await.unwrap();
    app.sweep().await;

    assert!(deleted(&app, &outvoted).await && !in_store(&app, outvoted).await);
    assert_eq!(download_status(&app, &outvoted).await, StatusCode::GONE);
    assert!(!deleted(&app, &agreed).await && in_store(&app, agreed).await, "the valid output stays");
}

#[tokio::test]
async fn bytes_deleted_by_retention_come_back_when_stored_again() {
    let app = with_retention(30).await;
    let (stdin, data) = (stored(&app, b"reused stdin").await, stored(&app, b"reused file").await);
    let old = app.publish_app(vec![reading("old", stdin, data, 1, 1)], Default::default()).await;
    let alice = app.volunteer("alice").await;
    let replica = alice.fetch(1).await[0].replica_id;
    alice.succeed(replica, b"an answer").await;
    age(&app, old.batch_id, 31).await;
    app.sweep().await;
    assert!(deleted(&app, &stdin).await);

    // Named again without being uploaded again: refused, with what to do.
    let mut transaction = app.pool.begin().await.unwrap();
    let batch = wasmgrid_server::publishing::open_batch(&mut transaction, old.app_id, "again", false).await.unwrap();
    let refused =
        wasmgrid_server::publishing::add_work_units(&mut transaction, batch, &[reading("new", stdin, data, 1, 1)])
            .await
            .unwrap_err();
    assert!(refused.to_string().contains("upload it again"), "{refused}");
    drop(transaction);

    // Uploaded again: back, and a new batch runs on it.
    assert_eq!(stored(&app, b"reused stdin").await, stdin);
    assert_eq!(stored(&app, b"reused file").await, data);
    assert!(!deleted(&app, &stdin).await && in_store(&app, stdin).await);
    app.publish_version(old.app_id, vec![reading("new", stdin, data, 1, 1)]).await;
    let assignment = alice.fetch(1).await.remove(0);
    assert_eq!(assignment.stdin.as_ref().map(|blob| blob.sha256), Some(stdin));
    assert_eq!(app.client.download_blob(&stdin).await.unwrap().as_ref(), b"reused stdin");
    // The same output as the purged batch's is stored again too.
    alice.succeed(assignment.replica_id, b"an answer").await;
    assert!(!deleted(&app, &Sha256Hash::of(b"an answer")).await);
    assert_eq!(app.client.download_blob(&Sha256Hash::of(b"an answer")).await.unwrap().as_ref(), b"an answer");
}

#[tokio::test]
async fn a_batch_waiting_for_a_recheck_keeps_its_files_even_when_deleted_until_the_recheck_ends() {
    let app = with_retention(30).await;
    let (published, files) = ended_batch(&app, "a recheck", 31).await;
    // A host caught cheating had its result in this batch sent to be checked again.
    let recheck = "update work_unit set recheck = $2::recheck_state where batch_id = $1";
    sqlx::query(recheck).bind(published.batch_id).bind("pending").execute(&app.pool).await.unwrap();
    sqlx::query("update batch set deleted_at = now() where id = $1")
        .bind(published.batch_id)
        .execute(&app.pool)
        .await
        .unwrap();

    // The sweep finishes (it does not wait on the busy batch) and deletes nothing of it.
    tokio::time::timeout(Duration::from_secs(60), app.sweep()).await.expect("the sweep ends");
    for hash in files {
        assert!(!deleted(&app, &hash).await && in_store(&app, hash).await, "{hash} is kept for the recheck");
    }

    sqlx::query(recheck).bind(published.batch_id).bind("confirmed").execute(&app.pool).await.unwrap();
    app.sweep().await;
    for hash in files {
        assert!(deleted(&app, &hash).await && !in_store(&app, hash).await, "{hash} goes once the recheck ended");
    }
}

#[tokio::test]
async fn a_sweep_cut_short_between_the_mark_and_the_bytes_is_finished_by_the_next() {
    let app = with_retention(30).await;
    let (_, files) = ended_batch(&app, "a crash", 31).await;
    let stdin = files[0];
    // The batch is purged, and a sweeper marked one blob deleted and committed, then died
    // before it deleted the bytes: the blob is marked, still queued, its bytes still there.
    purge_and_mark_only(&app, stdin).await;
    assert!(in_store(&app, stdin).await);
    assert_eq!(download_status(&app, &stdin).await, StatusCode::GONE, "marked is never served");

    app.sweep().await;

    for hash in files {
        assert!(deleted(&app, &hash).await && !in_store(&app, hash).await, "{hash} is finished");
    }
    assert_eq!(app.count("select count(*) from blob_release").await, 0);
}

#[tokio::test]
async fn a_store_of_the_bytes_between_the_mark_and_the_bytes_keeps_them() {
    let app = with_retention(30).await;
    let (_, files) = ended_batch(&app, "a race", 31).await;
    let stdin = files[0];
    purge_and_mark_only(&app, stdin).await;
    // A publisher stores the same bytes again before the sweep gets to them.
    assert_eq!(stored(&app, b"stdin of a race").await, stdin);

    app.sweep().await;

    assert!(!deleted(&app, &stdin).await && in_store(&app, stdin).await, "the stored-again bytes stay");
    assert_eq!(download_status(&app, &stdin).await, StatusCode::OK);
}

#[tokio::test]
async fn a_purge_cut_short_leaves_the_batch_to_purge_again() {
    let app = with_retention(30).await;
    let (_, files) = ended_batch(&app, "a rollback", 31).await;

    // A purge whose transaction never commits (the process died mid-way) leaves nothing.
    let mut transaction = app.pool.begin().await.unwrap();
    assert!(retention::purge_due_batches(&mut transaction, Duration::from_secs(30 * 24 * 3600)).await.unwrap());
    drop(transaction);
    assert_eq!(app.count("select count(*) from blob_release").await, 0);
    assert_eq!(app.count("select count(*) from batch where purged_at is not null").await, 0);

    app.sweep().await;

    for hash in files {
        assert!(deleted(&app, &hash).await && !in_store(&app, hash).await, "{hash} is deleted the next time");
    }
}

#[tokio::test]
async fn two_servers_sweeping_at_once_delete_each_blob_once() {
    let bucket = wasmgrid_server::blobs::test_s3::fresh_bucket();
    let on_bucket = |config: &mut wasmgrid_server::ServerConfig| {
        config.blobs.store = Some(bucket.url.clone());
        config.blobs.s3_settings = bucket.settings();
    };
    let first = TestApp::spawn_with(on_bucket).await;
    let second = TestApp::spawn_on(first.database_url.clone(), on_bucket).await;
    let mut specs = Vec::new();
    let mut inputs = Vec::new();
    for i in 0..120 {
        let stdin = stored(&first, format!("stdin {i}").as_bytes()).await;
        let data = stored(&first, format!("file {i}").as_bytes()).await;
        inputs.extend([stdin, data]);
        specs.push(reading(&format!("wu-{i}"), stdin, data, 1, 1));
    }
    let published = first.publish_app(specs, Default::default()).await;
    sqlx::query("update batch set deleted_at = now() where id = $1")
        .bind(published.batch_id)
        .execute(&first.pool)
        .await
        .unwrap();
    wasmgrid_server::work_unit::cancel::cancel_batch(
        &mut first.pool.acquire().await.unwrap(),
        published.batch_id,
        wasmgrid_server::work_unit::Rules::from(&wasmgrid_server::config::SchedulerConfig::default()),
    )
    .await
    .unwrap();

    tokio::join!(first.sweep(), second.sweep());

    for hash in &inputs {
        assert!(deleted(&first, hash).await && !in_store(&first, *hash).await, "{hash} is deleted");
    }
    assert_eq!(first.count("select count(*) from blob_release").await, 0);
}
