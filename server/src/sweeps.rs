//! Background sweeps: missed deadlines, what banned hosts held, rechecks of caught hosts' results accepted on
//! trust, credit folding (grants and withdrawals), outputs uploaded but never reported, and
//! retention (see [`crate::blobs::retention`]).
//!
//! Every server process runs them; they coordinate through PostgreSQL (`SKIP LOCKED`), so
//! any number of replicas can sweep at once without doing anything twice. Each sweep loop
//! stops when its shutdown signal fires. Tests call [`Sweeper::run_once`] instead of waiting.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use crate::background;
use crate::blobs::{BlobStore, retention, unreported};
use crate::credit;
use crate::work_unit::Rules;
use crate::work_unit::ban::take_back_from_banned;
use crate::work_unit::deadlines::expire_deadlines;
use crate::work_unit::lookback::recheck_caught;

/// Uploads the sweep of unreported outputs decides about per round (and blobs retention does).
const UPLOAD_BATCH: usize = 500;
/// Batches retention purges per sweep round, at most.
const PURGES_PER_ROUND: usize = 20;
/// Rounds of [`UPLOAD_BATCH`] blobs retention releases per sweep round, at most.
const RELEASE_ROUNDS: usize = 10;

/// Everything the sweeps work on.
#[derive(Clone)]
pub struct Sweeper {
    pub pool: PgPool,
    pub blobs: Arc<dyn BlobStore>,
    /// The server's settings for the lives of work units.
    pub rules: Rules,
    /// How long a batch's files are kept after it ends.
    pub retention: Duration,
    /// Where the sweeps count their rounds and what their decisions judge.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Sweeper {
    /// Runs every sweep until there is nothing left to do (retention: up to its share of a
    /// round). For tests and for the loop below.
    pub async fn run_once(&self) -> anyhow::Result<()> {
        let mut connection = self.pool.acquire().await?;
        while expire_deadlines(&mut connection, self.rules, &self.metrics).await? > 0 {}
        while take_back_from_banned(&mut connection, self.rules).await? > 0 {}
        while recheck_caught(&mut connection, self.rules).await? {}
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
        // Retention takes a bounded share of each round, so that a backlog (the first start
        // of a version with retention, on a project with years of batches) never holds up
        // deadlines and credit; the rest waits for the next rounds.
        let mut connection = self.pool.acquire().await?;
        retention::note_ended_batches(&mut connection).await?;
        for _ in 0..PURGES_PER_ROUND {
            if !retention::purge_due_batches(&mut connection, self.retention).await? {
                break;
            }
        }
        drop(connection);
        for _ in 0..RELEASE_ROUNDS {
            if retention::release_blobs(&self.pool, self.blobs.as_ref(), UPLOAD_BATCH).await?.total() < UPLOAD_BATCH {
                break;
            }
        }
        Ok(())
    }
}

/// Runs the sweeps every `interval` until `shutdown` fires, which also cuts a sweep short
/// (its transaction rolls back). A failing sweep backs off (see [`crate::background`]);
/// missed ticks are skipped rather than run in a burst. Each round is counted in the
/// sweeper's metrics.
pub async fn run_periodically(sweeper: Sweeper, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failures = background::Failures::new("the background sweeps", interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        let started = std::time::Instant::now();
        let swept = tokio::select! {
            swept = sweeper.run_once() => swept,
            _ = shutdown.changed() => break,
        };
        sweeper.metrics.observe_sweep(swept.is_ok(), started.elapsed());
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
