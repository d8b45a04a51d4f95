//! Looking back, beyond BOINC: a host caught returning a wrong result may have had others
//! accepted on trust, unchecked. Every result it had accepted on trust in the look-back
//! window before it was caught is sent out again to other hosts and decided anew (see
//! [`super::decide`]): confirmed, or corrected with the credit withdrawn.
//!
//! Catching a host only records it (a row of `lookback`, written with the host's trust); this
//! sweep, which every server process runs, then marks its work units for a recheck in
//! batches, so that catching a host with thousands of results is never one huge transaction.

use sqlx::PgConnection;

use super::{Event, Rules, WorkUnitError, advance};
use crate::trust::HostEffects;

/// Work units marked for a recheck per transaction.
const RECHECK_BATCH: i64 = 500;

#[derive(sqlx::FromRow)]
struct Caught {
    host_id: i64,
    caught_at: chrono::DateTime<chrono::Utc>,
}

/// Marks up to a batch of one caught host's results accepted on trust for a recheck, and
/// forgets the host once none is left. Returns whether there was anything to do.
pub async fn recheck_caught(connection: &mut PgConnection, rules: Rules) -> Result<bool, WorkUnitError> {
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    let caught: Option<Caught> = sqlx::query_as(
        "select host_id, caught_at from lookback order by caught_at, host_id limit 1 for update skip locked",
    )
    .fetch_optional(&mut *transaction)
    .await?;
    let Some(caught) = caught else { return Ok(false) };
    // Locked in id order, as every writer of work units does; waiting is fine here. The
    // batch's share lock keeps retention from purging it while its work units are reopened
    // (a purged batch's files are gone, so its results can no longer be checked).
    let work_unit_ids: Vec<i64> = sqlx::query_scalar(
        "select w.id from replica r
         join work_unit w on w.canonical_replica_id = r.id
         join batch b on b.id = w.batch_id
         where r.host_id = $1 and r.on_trust and w.accepted_on_trust and w.recheck is null
           and w.state = 'validated' and w.finished_at >= $2 - make_interval(secs => $3)
           and b.purged_at is null
         order by w.id limit $4
         for no key update of w for key share of b",
    )
    .bind(caught.host_id)
    .bind(caught.caught_at)
    .bind(rules.adaptive.lookback.as_secs_f64())
    .bind(RECHECK_BATCH)
    .fetch_all(&mut *transaction)
    .await?;
    if !work_unit_ids.is_empty() {
        let event = RecheckAsked { work_unit_ids: work_unit_ids.clone() };
        advance(&mut transaction, &work_unit_ids, event, rules).await?.apply(&mut transaction).await?;
        tracing::info!(host.id = caught.host_id, work_units = work_unit_ids.len(), "results on trust sent to recheck");
    }
    if (work_unit_ids.len() as i64) < RECHECK_BATCH {
        sqlx::query("delete from lookback where host_id = $1 and caught_at = $2")
            .bind(caught.host_id)
            .bind(caught.caught_at)
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await?;
    Ok(true)
}

/// These work units' results, accepted on trust, are to be checked by other hosts.
struct RecheckAsked {
    work_unit_ids: Vec<i64>,
}

impl Event for RecheckAsked {
    type Output = ();

    async fn record(self, connection: &mut PgConnection, _: &mut HostEffects) -> Result<(), WorkUnitError> {
        sqlx::query("update work_unit set recheck = 'pending' where id = any($1) and recheck is null")
            .bind(&self.work_unit_ids)
            .execute(connection)
            .await?;
        Ok(())
    }
}
