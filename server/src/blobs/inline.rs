//! Small outputs carried inside scheduler reports rather than uploaded on their own: one
//! HTTP request and its transaction fewer per replica, which was the largest share of the
//! server's load when most outputs are a few bytes. The server names the limit in every
//! scheduler reply; larger outputs are uploaded as before.
//!
//! An inline output is checked against its report (a success, its size, its hash) before
//! anything is stored, and stored in the report's transaction with its blob row held as an
//! upload holds it, so that the sweep of unreported outputs never deletes bytes a report is
//! about to name. Reported in the same transaction, it needs no upload log: nothing is left
//! unreported if the transaction commits, and nothing is recorded if it does not.

use std::collections::BTreeMap;

use bytes::Bytes;
use sqlx::PgConnection;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{ReplicaReport, ReportedOutcome};

use super::{BlobStore, SpooledContent};
use crate::http::error::{ApiError, ApiResult};

/// Outputs up to this size may travel inside reports, unless the operator says otherwise.
pub const DEFAULT_INLINE_OUTPUT_LIMIT: u64 = 64 << 10;

/// The inline outputs of `reports` by hash, each checked against the report that carries
/// it: a success that claims these bytes' size and hash, within `limit`. Any report that
/// fails the check refuses the whole request, as an upload under a wrong hash does.
pub fn checked(reports: &[ReplicaReport], limit: u64) -> ApiResult<BTreeMap<Sha256Hash, Bytes>> {
    let mut outputs = BTreeMap::new();
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
        outputs.entry(hash).or_insert_with(|| Bytes::copy_from_slice(&output.0));
    }
    Ok(outputs)
}

/// Stores `outputs` as blobs in the caller's transaction: their rows created or held (share
/// locked until it ends, which keeps the sweeps from deleting them), then their bytes put
/// in the store, which keeps what it has and puts back what a sweep deleted.
pub async fn store(
    connection: &mut PgConnection,
    store: &dyn BlobStore,
    outputs: &BTreeMap<Sha256Hash, Bytes>,
) -> ApiResult<()> {
    if outputs.is_empty() {
        return Ok(());
    }
    let hashes: Vec<String> = outputs.keys().map(Sha256Hash::to_hex).collect();
    let sizes: Vec<i64> = outputs.values().map(|bytes| bytes.len() as i64).collect();
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
    for (hash, bytes) in outputs {
        super::put_content(store, *hash, SpooledContent::Memory(bytes.clone())).await?;
    }
    Ok(())
}
