//! Outputs that were uploaded but are never reported: replaced by a newer upload for the
//! same replica, or left by a replica that ended (an error, a cancelled work unit) without
//! reporting them. Nobody may download them, and this sweep deletes them, so that uploads
//! are neither unbounded disk use nor anonymous file hosting.
//!
//! Every upload is logged in `output_upload`. The sweep takes each logged upload once it is
//! due and decides:
//! - a replica may still report the bytes (see [`AWAITS_REPORT`]): look again later;
//! - the bytes are published, or a replica reported them: they stay, the log is dropped
//!   (reported only in batches retention purged, they are queued for its sweep instead);
//! - otherwise the blob's bytes and row are deleted, with the log (other logs of the same
//!   bytes then find them gone).
//!
//! The sweep deletes a blob only while it holds the blob row's lock, which every upload
//! and every publisher's store of the same bytes takes before storing them: one of them
//! waits for the other, so no row is ever left naming deleted bytes. Each decision is a
//! transaction of its own, and any number of server processes can sweep at once.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use wasmgrid_protocol::Sha256Hash;

use super::BlobStore;
use crate::work_unit::AWAITS_REPORT;

/// When the sweep first looks at an upload, and again while a replica may still report
/// it. An upload replaced by another is looked at at once.
pub const RECHECK: Duration = Duration::from_secs(600);

/// Logs an upload of `hash` for `replica_id`, for the sweep to look at after [`RECHECK`].
pub async fn log_upload(connection: &mut PgConnection, replica_id: i64, hash: Sha256Hash) -> sqlx::Result<()> {
    sqlx::query(
        "insert into output_upload (replica_id, sha256, check_after)
         values ($1, $2, now() + make_interval(secs => $3))",
    )
    .bind(replica_id)
    .bind(hash.to_hex())
    .bind(RECHECK.as_secs_f64())
    .execute(connection)
    .await?;
    Ok(())
}

/// The replica took another output: the sweep looks at its upload of `replaced` next time.
pub async fn let_go(connection: &mut PgConnection, replica_id: i64, replaced: &str) -> sqlx::Result<()> {
    sqlx::query("update output_upload set check_after = now() where replica_id = $1 and sha256 = $2")
        .bind(replica_id)
        .bind(replaced)
        .execute(connection)
        .await?;
    Ok(())
}

/// What the sweep did with the uploads that were due.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Blobs deleted, bytes and row.
    pub deleted: usize,
    /// Uploads whose bytes stay (reported, published, or uploaded again), or are gone.
    pub kept: usize,
    /// Uploads looked at again later: their replica may still report them, or their blob
    /// was being stored again.
    pub waiting: usize,
}

impl Swept {
    pub fn total(&self) -> usize {
        self.deleted + self.kept + self.waiting
    }
}

/// What becomes of one due upload.
enum Decision {
    /// Look again after this long.
    LookAgain(Duration),
    /// Forget the upload; its bytes stay (or are gone already).
    Keep,
    /// Forget the upload, and queue its blob for retention's sweep (see
    /// [`super::retention`]).
    Release,
    /// Delete the blob, bytes and row, and forget the upload.
    Delete(Sha256Hash),
}

/// How soon to look again at an upload whose blob was locked by someone storing it.
const BUSY_RETRY: Duration = Duration::from_secs(5);

/// Decides about at most `limit` due uploads.
pub async fn sweep(pool: &PgPool, store: &dyn BlobStore, limit: usize) -> anyhow::Result<Swept> {
    let mut swept = Swept::default();
    while swept.total() < limit {
        let mut transaction = pool.begin().await?;
        let due: Option<(i64, String)> = sqlx::query_as(
            "select id, sha256 from output_upload
             where check_after <= now() order by check_after limit 1
             for update skip locked",
        )
        .fetch_optional(&mut *transaction)
        .await?;
        let Some((log_id, hash)) = due else { break };
        match decide(&mut transaction, &hash).await? {
            Decision::LookAgain(after) => {
                sqlx::query("update output_upload set check_after = now() + make_interval(secs => $2) where id = $1")
                    .bind(log_id)
                    .bind(after.as_secs_f64())
                    .execute(&mut *transaction)
                    .await?;
                swept.waiting += 1;
            }
            Decision::Keep => {
                sqlx::query("delete from output_upload where id = $1").bind(log_id).execute(&mut *transaction).await?;
                swept.kept += 1;
            }
            Decision::Release => {
                sqlx::query("insert into blob_release (sha256) values ($1) on conflict (sha256) do nothing")
                    .bind(&hash)
                    .execute(&mut *transaction)
                    .await?;
                sqlx::query("delete from output_upload where id = $1").bind(log_id).execute(&mut *transaction).await?;
                swept.kept += 1;
            }
            Decision::Delete(blob) => {
                // Bytes first, under the row's lock: a crash between leaves a row that names
                // no bytes, unreported and unpublished, so never served, and deleted by the
                // next sweep (its upload is still logged).
                store.delete(blob).await?;
                sqlx::query("delete from blob where sha256 = $1").bind(&hash).execute(&mut *transaction).await?;
                sqlx::query("delete from output_upload where id = $1").bind(log_id).execute(&mut *transaction).await?;
                swept.deleted += 1;
            }
        }
        transaction.commit().await?;
    }
    if swept.deleted > 0 {
        tracing::info!(deleted = swept.deleted, "deleted outputs that were uploaded and never reported");
    }
    Ok(swept)
}

async fn decide(connection: &mut PgConnection, hash: &str) -> anyhow::Result<Decision> {
    // The blob row's lock first: an upload or a store of these bytes holds it (shared, or
    // as the writer) until it commits, so once it is ours, the questions below see every
    // replica that names these bytes, and whoever comes next waits and finds the row gone.
    let blob: Option<String> = sqlx::query_scalar("select origin from blob where sha256 = $1 for update skip locked")
        .bind(hash)
        .fetch_optional(&mut *connection)
        .await?;
    let Some(origin) = blob else {
        let exists: bool = sqlx::query_scalar("select exists (select 1 from blob where sha256 = $1)")
            .bind(hash)
            .fetch_one(&mut *connection)
            .await?;
        // Locked: someone is storing these bytes right now.
        return Ok(if exists { Decision::LookAgain(BUSY_RETRY) } else { Decision::Keep });
    };
    // Any replica that may still report these bytes keeps them, whichever upload this log
    // is of: every sweeper sees the same holders, so none deletes what another waits on.
    let held: bool = sqlx::query_scalar(&format!(
        "select exists (select 1 from replica r where r.uploaded_sha256 = $1 and {AWAITS_REPORT})"
    ))
    .bind(hash)
    .fetch_one(&mut *connection)
    .await?;
    if held {
        return Ok(Decision::LookAgain(RECHECK));
    }
    if origin != "output" {
        return Ok(Decision::Keep);
    }
    // Reported only in batches retention purged (an upload that raced the purge stored the
    // bytes again): retention's sweep decides, and keeps the row the reports name.
    let (reported, reported_live): (bool, bool) = sqlx::query_as(
        "select exists (select 1 from replica where output_sha256 = $1),
                exists (select 1 from replica r join work_unit w on w.id = r.work_unit_id
                        join batch b on b.id = w.batch_id
                        where r.output_sha256 = $1 and b.purged_at is null)",
    )
    .bind(hash)
    .fetch_one(&mut *connection)
    .await?;
    if !reported {
        return Ok(Decision::Delete(hash.parse()?));
    }
    Ok(if reported_live { Decision::Keep } else { Decision::Release })
}
