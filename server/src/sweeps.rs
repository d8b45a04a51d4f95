//! Background sweeps: missed deadlines, credit folding, and outputs uploaded but never
//! reported.
//!
//! Every server process runs them; they coordinate through PostgreSQL (`SKIP LOCKED`), so
//! any number of replicas can sweep at once without doing anything twice. Each sweep loop
//! stops when its shutdown signal fires. Tests call [`Sweeper::run_once`] instead of waiting.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use crate::background;
use crate::blobs::{BlobStore, unreported};
use crate::credit;
use crate::state_machine;
use crate::trust::HostEffects;

/// Work units whose deadlines are handled per transaction.
const DEADLINE_BATCH: i64 = 500;

/// Marks replicas past their deadline as "no reply" and moves their work units on (which
/// asks for new replicas). Returns how many replicas timed out.
pub async fn expire_deadlines(connection: &mut PgConnection, max_daily_quota: u32) -> anyhow::Result<usize> {
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    // Work units someone else is working on right now are skipped, and picked up next time.
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
    let expired: Vec<(i64, i64)> = sqlx::query_as(
        "update replica set state = 'over', outcome = 'no_reply'
         where work_unit_id = any($1) and state = 'in_progress' and deadline_at < now()
         returning work_unit_id, host_id",
    )
    .bind(&work_unit_ids)
    .fetch_all(&mut *transaction)
    .await?;
    let mut effects = HostEffects::default();
    for (_, host_id) in &expired {
        effects.error(*host_id);
    }
    state_machine::transition_all(&mut transaction, &work_unit_ids, &mut effects).await?;
    effects.apply(&mut transaction, max_daily_quota).await?;
    transaction.commit().await?;
    if !expired.is_empty() {
        tracing::info!(replicas = expired.len(), "replicas missed their deadline");
    }
    Ok(expired.len())
}

/// Uploads the sweep of unreported outputs decides about per round.
const UPLOAD_BATCH: usize = 500;

/// Everything the sweeps work on.
#[derive(Clone)]
pub struct Sweeper {
    pub pool: PgPool,
    pub blobs: Arc<dyn BlobStore>,
    /// The per-core quota of a fully trusted host.
    pub max_daily_quota: u32,
}

impl Sweeper {
    /// Runs every sweep until there is nothing left to do. For tests and for the loop below.
    pub async fn run_once(&self) -> anyhow::Result<()> {
        let mut connection = self.pool.acquire().await?;
        while expire_deadlines(&mut connection, self.max_daily_quota).await? > 0 {}
        loop {
            let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
            let folded = credit::fold_grants(&mut transaction).await?;
            transaction.commit().await?;
            if folded == 0 {
                break;
            }
        }
        drop(connection);
        while unreported::sweep(&self.pool, self.blobs.as_ref(), UPLOAD_BATCH).await?.total() == UPLOAD_BATCH {}
        Ok(())
    }
}

/// Runs the sweeps every `interval` until `shutdown` fires, which also cuts a sweep short
/// (its transaction rolls back). A failing sweep backs off (see [`crate::background`]);
/// missed ticks are skipped rather than run in a burst.
pub async fn run_periodically(sweeper: Sweeper, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failures = background::Failures::new("the background sweeps", interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        let swept = tokio::select! {
            swept = sweeper.run_once() => swept,
            _ = shutdown.changed() => break,
        };
        match swept {
            Ok(()) => failures.succeeded(),
            Err(error) => {
                if !background::pause(failures.failed(&error), &mut shutdown).await {
                    break;
                }
                ticker.reset();
            }
        }
    }
}
