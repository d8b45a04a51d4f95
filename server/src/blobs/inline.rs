//! Small outputs carried inside scheduler reports rather than uploaded on their own: one
//! HTTP request and its transaction fewer per replica, which was the largest share of the
//! server's load when most outputs are a few bytes. The server names the limit in every
//! scheduler reply; larger outputs are uploaded as before.
//!
//! An inline output is checked against its report (a success, its size, its hash) before
//! anything is stored, and stored in the report's transaction with its blob row held as an
//! upload holds it, so that the sweep of unreported outputs never deletes bytes a report is
//! about to name. Only the outputs of the host's own replicas that still await a report are
//! stored. Once the reports are recorded, in the same transaction, an output whose report
//! was acknowledged without being recorded (a retry racing another) is logged as an upload
//! is, so that the sweep of unreported outputs misses nothing, and so is one a late report
//! recorded (its batch's purge does not lock it, and may have missed it). The others, the
//! reports of running replicas recorded, are reported outputs from the moment the
//! transaction commits, and need no log (nor the sweep's visit that would delete it: a
//! write and a delete per replica, and a statement per request).

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use sqlx::PgConnection;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{ReplicaReport, ReportedOutcome};

use super::{BlobStore, SpooledContent};
use crate::http::error::{ApiError, ApiResult};
use crate::work_unit::AWAITS_REPORT;

/// Outputs up to this size may travel inside reports, unless the operator says otherwise.
pub const DEFAULT_INLINE_OUTPUT_LIMIT: u64 = 64 << 10;

/// Inline outputs of one request, checked against their reports.
#[derive(Default)]
pub struct InlineOutputs {
    /// The bytes, by hash.
    bytes: BTreeMap<Sha256Hash, Bytes>,
    /// Which replica carried which output.
    replicas: Vec<(i64, Sha256Hash)>,
}

/// The inline outputs of `reports`, each checked against the report that carries it: a
/// success that claims these bytes' size and hash, within `limit`. Any report that fails
/// the check refuses the whole request, as an upload under a wrong hash does.
pub fn checked(reports: &[ReplicaReport], limit: u64) -> ApiResult<InlineOutputs> {
    let mut outputs = InlineOutputs::default();
    for report in reports {
        let Some(output) = &report.output else { continue };
        let ReportedOutcome::Success { output_hash, output_bytes } = &report.outcome else {
            return Err(ApiError::bad_request(format!(
                "replica {} carries an output but did not succeed",
                report.replica_id
            )));
        };
        let size = output.0.len() as u64;
        if size > limit {
            return Err(ApiError::PayloadTooLarge(format!(
                "replica {}'s output of {size} bytes is over the {limit} bytes an output may have inside a report: \
                 upload it instead",
                report.replica_id
            )));
        }
        if size != *output_bytes {
            return Err(ApiError::bad_request(format!(
                "replica {}'s output holds {size} bytes, not the {output_bytes} its report says",
                report.replica_id
            )));
        }
        let hash = Sha256Hash::of(&output.0);
        if hash != *output_hash {
            return Err(ApiError::bad_request(format!(
                "replica {}'s output hashes to {hash}, not the {output_hash} its report says",
                report.replica_id
            )));
        }
        outputs.bytes.entry(hash).or_insert_with(|| Bytes::copy_from_slice(&output.0));
        outputs.replicas.push((report.replica_id, hash));
    }
    Ok(outputs)
}

/// Inline outputs stored, by replica, for [`log_unrecorded`] once the reports are recorded.
#[must_use = "outputs whose reports were not recorded must be logged"]
pub struct Stored(Vec<(i64, Sha256Hash)>);

/// Stores the outputs of `host_id`'s replicas that still await their report as blobs, in
/// the caller's transaction: their rows created or held (share locked until it ends, which
/// keeps the sweeps from deleting them), then their bytes put in the store, which keeps
/// what it has and puts back what a sweep deleted. The outputs of other replicas are not
/// stored: their reports are refused, or acknowledged and ignored. The caller records the
/// reports, then passes what this returns to [`log_unrecorded`].
pub async fn store(
    connection: &mut PgConnection,
    store: &dyn BlobStore,
    host_id: i64,
    outputs: &InlineOutputs,
) -> ApiResult<Stored> {
    if outputs.replicas.is_empty() {
        return Ok(Stored(Vec::new()));
    }
    let replica_ids: Vec<i64> = outputs.replicas.iter().map(|(id, _)| *id).collect();
    let awaiting: Vec<i64> = sqlx::query_scalar(&format!(
        "select r.id from replica r where r.id = any($1) and r.host_id = $2 and {AWAITS_REPORT}"
    ))
    .bind(&replica_ids)
    .bind(host_id)
    .fetch_all(&mut *connection)
    .await?;
    let accepted: Vec<(i64, Sha256Hash)> =
        outputs.replicas.iter().filter(|(id, _)| awaiting.contains(id)).copied().collect();
    if accepted.is_empty() {
        return Ok(Stored(accepted));
    }
    let to_store: BTreeMap<Sha256Hash, Bytes> =
        accepted.iter().map(|(_, hash)| (*hash, outputs.bytes[hash].clone())).collect();
    let hashes: Vec<String> = to_store.keys().map(Sha256Hash::to_hex).collect();
    let sizes: Vec<i64> = to_store.values().map(|bytes| bytes.len() as i64).collect();
    // A row can vanish between the statements (a sweep deleted it) or appear (an upload
    // committed it); each turn sees them settle, as an upload's hold does.
    let mut held = false;
    for _ in 0..3 {
        sqlx::query(
            "insert into blob (sha256, bytes, origin)
             select h.sha256, h.bytes, 'output' from unnest($1::text[], $2::int8[]) as h(sha256, bytes)
             where not exists (select 1 from blob b where b.sha256 = h.sha256)
             on conflict (sha256) do nothing",
        )
        .bind(&hashes)
        .bind(&sizes)
        .execute(&mut *connection)
        .await?;
        let rows: Vec<(String, bool)> = sqlx::query_as(
            "select sha256, deleted_at is not null from blob where sha256 = any($1) order by sha256 for key share",
        )
        .bind(&hashes)
        .fetch_all(&mut *connection)
        .await?;
        if rows.len() == hashes.len() {
            let deleted: Vec<&String> = rows.iter().filter(|(_, deleted)| *deleted).map(|(hash, _)| hash).collect();
            if !deleted.is_empty() {
                // Retention deleted these bytes (another batch's output); they are stored again.
                sqlx::query("update blob set deleted_at = null where sha256 = any($1)")
                    .bind(deleted)
                    .execute(&mut *connection)
                    .await?;
            }
            held = true;
            break;
        }
    }
    if !held {
        return Err(ApiError::Unavailable);
    }
    // At once: with an object store, one after the other would hold the transaction (and its
    // turn) for a round trip per output.
    futures::future::try_join_all(
        to_store.iter().map(|(hash, bytes)| super::put_content(store, *hash, SpooledContent::Memory(bytes.clone()))),
    )
    .await?;
    Ok(Stored(accepted))
}

/// Logs, as uploads, the outputs [`store`] stored but for those of running replicas whose
/// reports were `recorded_running` in this transaction: the sweep of unreported outputs
/// then decides about them, as about any upload (keeping those a replica reported in a batch
/// still kept, as a late report or an earlier retry may have). Still in the caller's
/// transaction, so nothing commits unlogged.
pub async fn log_unrecorded(
    connection: &mut PgConnection,
    stored: Stored,
    recorded_running: &HashSet<i64>,
) -> sqlx::Result<()> {
    let (replicas, hashes): (Vec<i64>, Vec<String>) =
        stored.0.iter().filter(|(id, _)| !recorded_running.contains(id)).map(|(id, hash)| (*id, hash.to_hex())).unzip();
    if replicas.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into output_upload (replica_id, sha256, check_after)
         select u.replica_id, u.sha256, now() + make_interval(secs => $3)
         from unnest($1::int8[], $2::text[]) as u(replica_id, sha256)",
    )
    .bind(&replicas)
    .bind(&hashes)
    .bind(super::unreported::RECHECK.as_secs_f64())
    .execute(connection)
    .await?;
    Ok(())
}
