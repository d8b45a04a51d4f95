//! Replicas whose hosts missed their deadlines: "no reply", and their work units move on
//! (which asks for new replicas). Every server process runs this sweep; work units another
//! process is handling are skipped, and picked up next time.

use sqlx::PgConnection;

use super::{Event, Rules, WorkUnitError, advance};
use crate::metrics::Metrics;
use crate::trust::HostEffects;

/// Work units whose deadlines are handled per transaction.
const DEADLINE_BATCH: i64 = 500;

/// Marks up to a batch of replicas past their deadline as "no reply" and moves their work
/// units on, counting in `metrics` the replicas their decisions judged. Returns how many
/// replicas timed out.
pub async fn expire_deadlines(
    connection: &mut PgConnection,
    rules: Rules,
    metrics: &Metrics,
) -> Result<usize, WorkUnitError> {
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    // Locked here, skipping those locked elsewhere; `advance` locking them again is free.
    let work_unit_ids: Vec<i64> = sqlx::query_scalar(
        "select w.id from work_unit w
         where w.id in (select work_unit_id from replica
                        where state = 'in_progress' and deadline_at < now() limit $1)
         order by w.id
         for no key update of w skip locked",
    )
    .bind(DEADLINE_BATCH)
    .fetch_all(&mut *transaction)
    .await?;
    if work_unit_ids.is_empty() {
        return Ok(0);
    }
    let event = MissedDeadlines { work_unit_ids: work_unit_ids.clone() };
    let advanced = advance(&mut transaction, &work_unit_ids, event, rules).await?;
    let judgements = advanced.judgements().clone();
    let expired = advanced.apply(&mut transaction).await?;
    transaction.commit().await?;
    metrics.count_judgements(&judgements);
    if expired > 0 {
        tracing::info!(replicas = expired, "replicas missed their deadline");
    }
    Ok(expired)
}

/// The replicas of these work units whose deadlines have passed.
struct MissedDeadlines {
    work_unit_ids: Vec<i64>,
}

impl Event for MissedDeadlines {
    type Output = usize;

    async fn record(self, connection: &mut PgConnection, effects: &mut HostEffects) -> Result<usize, WorkUnitError> {
        let hosts: Vec<i64> = sqlx::query_scalar(
            "update replica set state = 'over', outcome = 'no_reply'
             where work_unit_id = any($1) and state = 'in_progress' and deadline_at < now()
             returning host_id",
        )
        .bind(&self.work_unit_ids)
        .fetch_all(connection)
        .await?;
        for host_id in &hosts {
            effects.error(*host_id);
        }
        Ok(hosts.len())
    }
}
