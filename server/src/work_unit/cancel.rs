//! A publisher cancelling a batch: its active work units fail as cancelled, their unsent
//! replicas are no longer needed, and hosts running the others are told to abort them at
//! their next scheduler request.

use sqlx::PgConnection;

use super::{Event, Rules, WorkUnitError, advance};
use crate::trust::HostEffects;

/// What the publisher sees as the reason of a cancelled work unit.
pub const CANCELLED: &str = "cancelled by its publisher";

/// Work units cancelled per transaction, so that cancelling a huge batch holds few locks
/// at a time and never runs into the request timeout in one piece.
const CANCEL_CHUNK: i64 = 10_000;

/// Cancels batch `batch_id`; returns how many work units it cancelled. Cancelling twice, or
/// again after an interruption, finishes the job.
pub async fn cancel_batch(connection: &mut PgConnection, batch_id: i64, rules: Rules) -> Result<u64, WorkUnitError> {
    // First, on its own: the update locks the batch row, which a chunk of work units takes
    // too, so none can slip in afterwards.
    sqlx::query(
        "update batch set cancelled_at = coalesce(cancelled_at, now()), closed_at = coalesce(closed_at, now())
         where id = $1",
    )
    .bind(batch_id)
    .execute(&mut *connection)
    .await?;
    let mut cancelled = 0;
    loop {
        let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
        let ids: Vec<i64> = sqlx::query_scalar(
            "select id from work_unit where batch_id = $1 and state = 'active' order by id limit $2",
        )
        .bind(batch_id)
        .bind(CANCEL_CHUNK)
        .fetch_all(&mut *transaction)
        .await?;
        if ids.is_empty() {
            break;
        }
        advance(&mut transaction, &ids, Cancelled, rules).await?.apply(&mut transaction).await?;
        transaction.commit().await?;
        cancelled += ids.len() as u64;
    }
    tracing::info!(batch.id = batch_id, work_units = cancelled, "batch cancelled");
    Ok(cancelled)
}

/// The publisher cancelled the work units: deciding fails each that is still active.
struct Cancelled;

impl Event for Cancelled {
    type Output = ();

    async fn record(self, _: &mut PgConnection, _: &mut HostEffects) -> Result<(), WorkUnitError> {
        Ok(())
    }

    fn cancellation(&self) -> Option<String> {
        Some(CANCELLED.to_owned())
    }
}
