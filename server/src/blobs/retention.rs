//! Retention, so that storage does not grow forever: a batch's inputs and outputs are
//! deleted a set time after it ends (`--retention`, 30 days by default), or as soon as its
//! publisher deletes it; outputs found invalid go soon after they lost. Rows stay (the
//! batch, its work units, everyone's credit); only the bytes go, and their blob rows say
//! when.
//!
//! It is a mark and sweep, in three steps that each server process runs:
//! 1. [`note_ended_batches`] stamps a batch's `ended_at` once it is closed and nothing in it
//!    is active or waiting for a recheck.
//! 2. [`purge_due_batches`] takes a batch whose retention is over (or that was deleted),
//!    ends its replicas still running, queues every blob its rows name in `blob_release`,
//!    and marks it purged: from then on its rows keep nothing, and no late result is
//!    stored for it.
//! 3. [`release_blobs`] takes each queued blob and deletes its bytes unless something live
//!    still needs them: a module, an input or a valid output of a batch not purged, an
//!    upload a replica may still report, or a promise to a publisher that it is stored.
//!
//! A blob is marked deleted, and its bytes deleted, only while the sweep holds its row's
//! lock, which every store of the same bytes and every work unit naming them (through its
//! foreign key) takes too: whoever comes second sees what the first did. The mark is
//! committed before the bytes go, so no row that is not marked ever names missing bytes; a
//! crash in between leaves the blob marked and still queued, and the next sweep deletes its
//! bytes. Storing the bytes again clears the mark.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use wasmgrid_protocol::Sha256Hash;

use super::BlobStore;
use crate::work_unit::AWAITS_REPORT;

/// How long a batch's files are kept after it ends, unless the operator says otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long an output found invalid is kept, for whoever looks into the disagreement.
pub const INVALID_OUTPUT_GRACE: Duration = Duration::from_secs(3600);

/// How long a blob is kept after a publisher was told it is stored, or stored it: the time
/// it has to name the blob in work units without uploading it again.
pub const PROMISED_FOR: Duration = Duration::from_secs(24 * 3600);

/// How soon to look again at a blob whose row was locked by someone storing or naming it.
const BUSY_RETRY: Duration = Duration::from_secs(5);

/// PostgreSQL's error for a row lock that `nowait` did not wait for.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Whether batch `b` has work still to do: a work unit active or waiting for a recheck.
const BATCH_BUSY: &str = "(exists (select 1 from work_unit w where w.batch_id = b.id and w.state = 'active')
     or exists (select 1 from work_unit w where w.batch_id = b.id and w.recheck = 'pending'))";

/// Stamps `ended_at` on batches that ended, and clears it on batches a recheck reopened.
/// Returns how many batches it stamped.
pub async fn note_ended_batches(connection: &mut PgConnection) -> sqlx::Result<u64> {
    sqlx::query(&format!(
        "update batch b set ended_at = null
         where b.ended_at is not null and b.purged_at is null and {BATCH_BUSY}"
    ))
    .execute(&mut *connection)
    .await?;
    let stamped = sqlx::query(&format!(
        "update batch b
         set ended_at = greatest(b.closed_at, b.cancelled_at,
                                 (select max(w.finished_at) from work_unit w where w.batch_id = b.id))
         where b.ended_at is null and b.purged_at is null and b.closed_at is not null and not {BATCH_BUSY}"
    ))
    .execute(connection)
    .await?;
    Ok(stamped.rows_affected())
}

/// Every blob the rows of batch `$1` name: inputs, files, outputs reported or uploaded.
const NAMED_BY_BATCH: &str = "
    select w.stdin_sha256 as sha256 from work_unit w where w.batch_id = $1 and w.stdin_sha256 is not null
    union select f.sha256 from work_unit_file f join work_unit w on w.id = f.work_unit_id where w.batch_id = $1
    union select r.output_sha256 from replica r join work_unit w on w.id = r.work_unit_id
          where w.batch_id = $1 and r.output_sha256 is not null
    union select r.uploaded_sha256 from replica r join work_unit w on w.id = r.work_unit_id
          where w.batch_id = $1 and r.uploaded_sha256 is not null";

/// Purges one batch whose retention is over, or that its publisher deleted, and that has
/// nothing left to do: queues the blobs it names and marks it purged. Returns whether it
/// purged one (a deleted batch still busy waits for a later sweep).
pub async fn purge_due_batches(connection: &mut PgConnection, retention: Duration) -> sqlx::Result<bool> {
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    // The batch row's lock keeps a recheck (which takes it too) from reopening the batch
    // while its files are queued; a recheck that came first shows in the question below.
    let due: Option<(i64, bool)> = sqlx::query_as(&format!(
        "select b.id, b.deleted_at is not null from batch b
         where b.purged_at is null
           and (b.deleted_at is not null or b.ended_at < now() - make_interval(secs => $1))
           and not {BATCH_BUSY}
         order by b.id limit 1
         for update skip locked"
    ))
    .bind(retention.as_secs_f64())
    .fetch_optional(&mut *transaction)
    .await?;
    let Some((batch_id, deleted_by_publisher)) = due else { return Ok(false) };
    let busy: bool = sqlx::query_scalar(&format!("select {BATCH_BUSY} from batch b where b.id = $1"))
        .bind(batch_id)
        .fetch_one(&mut *transaction)
        .await?;
    if busy {
        // Reopened by a recheck between the two questions: it ends again later.
        sqlx::query("update batch set ended_at = null where id = $1").bind(batch_id).execute(&mut *transaction).await?;
        transaction.commit().await?;
        return Ok(false);
    }
    // Replicas still running (of work units validated without them) can no longer be
    // checked: they end here, before anything they uploaded is queued below, and their
    // hosts are told to abort them. Uploads lock the replica too, so none slips in after;
    // one storing its output now holds the lock, and the batch is purged at a later sweep
    // rather than holding the batch's lock (which a recheck waits for) until it ends.
    let running = sqlx::query(
        "select r.id from replica r join work_unit w on w.id = r.work_unit_id
         where w.batch_id = $1 and r.state = 'in_progress'
         order by r.id for no key update of r nowait",
    )
    .bind(batch_id)
    .execute(&mut *transaction)
    .await;
    if let Err(sqlx::Error::Database(error)) = &running
        && error.code().as_deref() == Some(LOCK_NOT_AVAILABLE)
    {
        tracing::debug!(batch.id = batch_id, "a replica of a batch to purge is busy; purging it later");
        return Ok(false);
    }
    running?;
    sqlx::query(
        "update replica r set state = 'over', outcome = 'didnt_need'
         from work_unit w
         where w.id = r.work_unit_id and w.batch_id = $1 and r.state = 'in_progress'",
    )
    .bind(batch_id)
    .execute(&mut *transaction)
    .await?;
    let queued = sqlx::query(&format!(
        "insert into blob_release (sha256)
         select named.sha256 from ({NAMED_BY_BATCH}) named
         where exists (select 1 from blob b where b.sha256 = named.sha256 and b.deleted_at is null)
         order by named.sha256
         on conflict (sha256) do update set check_after = least(blob_release.check_after, excluded.check_after)"
    ))
    .bind(batch_id)
    .execute(&mut *transaction)
    .await?
    .rows_affected();
    if deleted_by_publisher {
        // Its publisher wants the files gone now, its own promises notwithstanding (a
        // submission that still names one is refused, saying to upload it again). A file
        // another publisher stored too is that publisher's as well: its promise stands.
        sqlx::query(&format!(
            "update blob b set held_until = null from ({NAMED_BY_BATCH}) named
             where b.sha256 = named.sha256 and b.held_until is not null
               and not exists (select 1 from publisher_file f, batch deleted, app a
                               where deleted.id = $1 and a.id = deleted.app_id
                                 and f.sha256 = b.sha256 and f.publisher_id <> a.publisher_id)"
        ))
        .bind(batch_id)
        .execute(&mut *transaction)
        .await?;
    }
    sqlx::query("update batch set purged_at = now() where id = $1").bind(batch_id).execute(&mut *transaction).await?;
    transaction.commit().await?;
    tracing::info!(batch.id = batch_id, blobs = queued, "batch purged: its files are released");
    Ok(true)
}

/// Queues the outputs of replicas just found invalid, for deletion after
/// [`INVALID_OUTPUT_GRACE`] (if nothing else names the same bytes by then).
pub async fn release_invalid_outputs(connection: &mut PgConnection, replica_ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query(
        "insert into blob_release (sha256, check_after)
         select distinct r.output_sha256, now() + make_interval(secs => $2)
         from replica r where r.id = any($1) and r.output_sha256 is not null
         on conflict (sha256) do nothing",
    )
    .bind(replica_ids)
    .bind(INVALID_OUTPUT_GRACE.as_secs_f64())
    .execute(connection)
    .await?;
    Ok(())
}

/// What the release sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Blobs whose bytes were deleted.
    pub deleted: usize,
    /// Blobs something live still needs, or that were gone already.
    pub kept: usize,
    /// Blobs to look at again later (locked, or promised to a publisher).
    pub waiting: usize,
}

impl Released {
    pub fn total(&self) -> usize {
        self.deleted + self.kept + self.waiting
    }
}

enum Decision {
    LookAgain(Duration),
    Keep,
    /// Mark the blob deleted, then delete its bytes.
    Delete(Sha256Hash),
    /// Marked already (a sweep stopped between the two): delete its bytes.
    DeleteBytes(Sha256Hash),
}

/// Decides about at most `limit` queued blobs that are due.
pub async fn release_blobs(pool: &PgPool, store: &dyn BlobStore, limit: usize) -> anyhow::Result<Released> {
    let mut released = Released::default();
    while released.total() < limit {
        let mut transaction = pool.begin().await?;
        let due: Option<String> = sqlx::query_scalar(
            "select sha256 from blob_release where check_after <= now()
             order by check_after limit 1 for update skip locked",
        )
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(hash) = due else { break };
        match decide(&mut transaction, &hash).await? {
            Decision::LookAgain(after) => {
                sqlx::query(
                    "update blob_release set check_after = now() + make_interval(secs => $2) where sha256 = $1",
                )
                .bind(&hash)
                .bind(after.as_secs_f64())
                .execute(&mut *transaction)
                .await?;
                released.waiting += 1;
            }
            Decision::Keep => {
                sqlx::query("delete from blob_release where sha256 = $1")
                    .bind(&hash)
                    .execute(&mut *transaction)
                    .await?;
                released.kept += 1;
            }
            Decision::Delete(blob) => {
                // The mark first, committed: from then on nobody is told the blob is there
                // (downloads, a publisher's missing files, new work units all see it), and
                // a crash before the bytes go leaves it marked and queued for the next sweep.
                sqlx::query("update blob set deleted_at = now(), held_until = null where sha256 = $1")
                    .bind(&hash)
                    .execute(&mut *transaction)
                    .await?;
                // Publishers who stored it are told it is missing, and upload it again if
                // they name it in work units again.
                sqlx::query("delete from publisher_file where sha256 = $1")
                    .bind(&hash)
                    .execute(&mut *transaction)
                    .await?;
                transaction.commit().await?;
                delete_marked_bytes(pool, store, blob).await?;
                released.deleted += 1;
                continue;
            }
            Decision::DeleteBytes(blob) => {
                // Marked by a sweep that stopped before the bytes went; the row is locked.
                store.delete(blob).await?;
                sqlx::query("delete from blob_release where sha256 = $1")
                    .bind(&hash)
                    .execute(&mut *transaction)
                    .await?;
                released.deleted += 1;
            }
        }
        transaction.commit().await?;
    }
    if released.deleted > 0 {
        tracing::info!(deleted = released.deleted, "deleted the files of purged batches and invalid outputs");
    }
    Ok(released)
}

/// Deletes the bytes of a blob marked deleted, under its row's lock, and takes it off the
/// queue. A store that brought the blob back meanwhile cleared the mark: its bytes stay.
async fn delete_marked_bytes(pool: &PgPool, store: &dyn BlobStore, blob: Sha256Hash) -> anyhow::Result<()> {
    let mut transaction = pool.begin().await?;
    let still_deleted: Option<bool> =
        sqlx::query_scalar("select deleted_at is not null from blob where sha256 = $1 for update")
            .bind(blob.to_hex())
            .fetch_optional(&mut *transaction)
            .await?;
    if still_deleted == Some(true) {
        store.delete(blob).await?;
    }
    sqlx::query("delete from blob_release where sha256 = $1").bind(blob.to_hex()).execute(&mut *transaction).await?;
    transaction.commit().await?;
    Ok(())
}

async fn decide(connection: &mut PgConnection, hash: &str) -> anyhow::Result<Decision> {
    #[derive(sqlx::FromRow)]
    struct Blob {
        deleted: bool,
        promised_for: Option<f64>,
    }
    let blob: Option<Blob> = sqlx::query_as(
        "select deleted_at is not null as deleted,
                extract(epoch from held_until - now())::float8 as promised_for
         from blob where sha256 = $1 for update skip locked",
    )
    .bind(hash)
    .fetch_optional(&mut *connection)
    .await?;
    let Some(blob) = blob else {
        let exists: bool = sqlx::query_scalar("select exists (select 1 from blob where sha256 = $1)")
            .bind(hash)
            .fetch_one(&mut *connection)
            .await?;
        return Ok(if exists { Decision::LookAgain(BUSY_RETRY) } else { Decision::Keep });
    };
    if blob.deleted {
        return Ok(Decision::DeleteBytes(hash.parse()?));
    }
    if let Some(seconds) = blob.promised_for.filter(|seconds| *seconds > 0.0) {
        return Ok(Decision::LookAgain(Duration::from_secs_f64(seconds) + BUSY_RETRY));
    }
    let needed: bool = sqlx::query_scalar(&format!(
        "select exists (select 1 from app_version v where v.module_sha256 = $1)
             or exists (select 1 from app a where a.validator_module_sha256 = $1)
             or exists (select 1 from work_unit w join batch b on b.id = w.batch_id
                        where w.stdin_sha256 = $1 and b.purged_at is null)
             or exists (select 1 from work_unit_file f join work_unit w on w.id = f.work_unit_id
                        join batch b on b.id = w.batch_id
                        where f.sha256 = $1 and b.purged_at is null)
             or exists (select 1 from replica r join work_unit w on w.id = r.work_unit_id
                        join batch b on b.id = w.batch_id
                        where r.output_sha256 = $1 and b.purged_at is null and r.validate_state <> 'invalid')
             or exists (select 1 from replica r where r.uploaded_sha256 = $1 and {AWAITS_REPORT})"
    ))
    .bind(hash)
    .fetch_one(&mut *connection)
    .await?;
    if needed { Ok(Decision::Keep) } else { Ok(Decision::Delete(hash.parse()?)) }
}

/// Promises a publisher that blobs it was told are stored stay for [`PROMISED_FOR`], and
/// brings back (as rows to store again) none that were deleted: those it is told are missing.
pub async fn promise(connection: &mut PgConnection, hashes: &[String]) -> sqlx::Result<()> {
    if hashes.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "update blob set held_until = now() + make_interval(secs => $2)
         where sha256 = any($1) and deleted_at is null
           and (held_until is null or held_until < now() + make_interval(secs => $2 / 2))",
    )
    .bind(hashes)
    .bind(PROMISED_FOR.as_secs_f64())
    .execute(connection)
    .await?;
    Ok(())
}

/// Of `hashes`, the first one whose bytes retention deleted, if any: for refusing work
/// units that name it (they would never run). Called after the work units' rows were
/// written, so their foreign keys hold the blobs' rows against the sweep.
pub async fn first_deleted(connection: &mut PgConnection, hashes: &[String]) -> sqlx::Result<Option<String>> {
    if hashes.is_empty() {
        return Ok(None);
    }
    sqlx::query_scalar("select sha256 from blob where sha256 = any($1) and deleted_at is not null limit 1")
        .bind(hashes)
        .fetch_optional(connection)
        .await
}
