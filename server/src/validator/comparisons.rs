//! Validation with an app's validator module, outside the report's transaction.
//!
//! Running a module takes time, and a report's transaction holds locks, so deciding a work
//! unit never runs one. It decides with the comparisons already stored in
//! `output_comparison`; when one it needs is missing, it marks the work unit
//! `awaiting_comparison` and notifies [`CHANNEL`]. [`run_until_stopped`] wakes up (in any
//! server process listening), compares the missing pairs, stores the answers, and moves the
//! work unit on in a transaction of its own. Each pair is compared once per validator.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use wasmgrid_protocol::Sha256Hash;

use super::wasm::{Comparison, ValidatorRunner};
use super::{Candidate, Validator};
use crate::background;
use crate::trust::HostEffects;
use crate::work_unit::{self, Event, Rules, WorkUnitError};

/// The PostgreSQL notification channel that says "outputs are waiting for a validator".
pub const CHANNEL: &str = "wasmgrid_comparisons";

/// The comparisons stored for some outputs, for several validators.
#[derive(Debug, Default)]
pub struct KnownComparisons {
    equivalent: HashMap<(Sha256Hash, Sha256Hash, Sha256Hash), bool>,
    /// Pairs on which the validator itself failed (and which count as different).
    failed: std::collections::HashSet<(Sha256Hash, Sha256Hash, Sha256Hash)>,
}

/// One validator's view of [`KnownComparisons`].
pub struct WithValidator<'a> {
    known: &'a KnownComparisons,
    validator: Sha256Hash,
}

/// Pairs are stored in hash order: validators are symmetric.
fn ordered(a: Sha256Hash, b: Sha256Hash) -> (Sha256Hash, Sha256Hash) {
    if a.to_hex() <= b.to_hex() { (a, b) } else { (b, a) }
}

impl KnownComparisons {
    /// Loads what `validators` said about any two of `outputs`.
    pub async fn load(
        connection: &mut PgConnection,
        validators: &[Sha256Hash],
        outputs: &[Sha256Hash],
    ) -> anyhow::Result<Self> {
        if validators.is_empty() || outputs.len() < 2 {
            return Ok(Self::default());
        }
        let validators: Vec<String> = validators.iter().map(Sha256Hash::to_hex).collect();
        let outputs: Vec<String> = outputs.iter().map(Sha256Hash::to_hex).collect();
        let rows: Vec<(String, String, String, bool, bool)> = sqlx::query_as(
            "select validator_sha256, a_sha256, b_sha256, equivalent, error is not null from output_comparison
             where validator_sha256 = any($1) and a_sha256 = any($2) and b_sha256 = any($2)",
        )
        .bind(&validators)
        .bind(&outputs)
        .fetch_all(connection)
        .await?;
        let mut known = Self::default();
        for (validator, a, b, same, failed) in rows {
            let key = (validator.parse()?, a.parse()?, b.parse()?);
            if failed {
                known.failed.insert(key);
            }
            known.equivalent.insert(key, same);
        }
        Ok(known)
    }

    pub fn with_validator(&self, validator: Sha256Hash) -> WithValidator<'_> {
        WithValidator { known: self, validator }
    }
}

impl WithValidator<'_> {
    /// The stored answer for two outputs; identical outputs need no comparison.
    pub fn lookup(&self, a: Sha256Hash, b: Sha256Hash) -> Option<bool> {
        if a == b {
            return Some(true);
        }
        let (a, b) = ordered(a, b);
        self.known.equivalent.get(&(self.validator, a, b)).copied()
    }
}

impl Validator for WithValidator<'_> {
    fn equivalent(&self, a: &Candidate, b: &Candidate) -> anyhow::Result<bool> {
        self.lookup(a.output, b.output).ok_or_else(|| {
            anyhow::anyhow!("outputs {} and {} were not compared; deciding checks first", a.output, b.output)
        })
    }

    fn compared(&self, a: Sha256Hash, b: Sha256Hash) -> bool {
        self.lookup(a, b).is_some()
    }

    fn failed_on(&self, a: Sha256Hash, b: Sha256Hash) -> bool {
        let (a, b) = ordered(a, b);
        self.known.failed.contains(&(self.validator, a, b))
    }
}

/// Work units claimed per round; a round ends early when none is left.
const ROUND: i64 = 32;
/// How long a claim on a work unit lasts: longer than comparing its outputs takes, so that
/// another process takes it over only from a process that died.
const CLAIM: &str = "10 minutes";

/// Compares what every waiting work unit needs and moves each on. Returns how many work
/// units it handled. Each work unit is visited once per call, so one whose comparisons keep
/// failing cannot keep the loop busy; work units another process is comparing are skipped.
pub async fn compare_waiting(pool: &PgPool, runner: &ValidatorRunner, rules: Rules) -> anyhow::Result<usize> {
    let mut handled = 0;
    let mut after = 0i64;
    loop {
        // Never waits on a lock (skip locked), so it cannot take part in a deadlock.
        let mut ids: Vec<i64> = sqlx::query_scalar(&format!(
            "update work_unit set comparing_until = now() + interval '{CLAIM}'
             where id in (select id from work_unit
                          where awaiting_comparison and id > $1
                            and (comparing_until is null or comparing_until < now())
                          order by id limit $2
                          for no key update skip locked)
             returning id"
        ))
        .bind(after)
        .bind(ROUND)
        .fetch_all(pool)
        .await?;
        ids.sort_unstable();
        let Some(&last) = ids.last() else { return Ok(handled) };
        after = last;
        for id in ids {
            // A comparison that cannot be made now (an output blob unreadable, say) leaves
            // this work unit waiting for the next call; the others go on.
            let moved_on = async {
                compare_work_unit(pool, runner, id).await?;
                let mut transaction = pool.begin().await?;
                let compared = Compared { work_unit_id: id };
                let advanced = work_unit::advance(&mut transaction, &[id], compared, rules).await?;
                let judgements = advanced.judgements().clone();
                advanced.apply(&mut transaction).await?;
                transaction.commit().await?;
                runner.metrics().count_judgements(&judgements);
                anyhow::Ok(())
            };
            match moved_on.await {
                Ok(()) => handled += 1,
                Err(error) => {
                    tracing::warn!(workunit.id = id, error = format!("{error:#}"), "cannot compare outputs yet");
                    // Let any process try again at its next round.
                    sqlx::query("update work_unit set comparing_until = null where id = $1")
                        .bind(id)
                        .execute(pool)
                        .await?;
                }
            }
        }
    }
}

/// The comparisons a work unit waited for are made: it is free for any process to claim
/// again, and moves on.
struct Compared {
    work_unit_id: i64,
}

impl Event for Compared {
    type Output = ();

    async fn record(self, connection: &mut PgConnection, _: &mut HostEffects) -> Result<(), WorkUnitError> {
        sqlx::query("update work_unit set comparing_until = null where id = $1")
            .bind(self.work_unit_id)
            .execute(connection)
            .await?;
        Ok(())
    }
}

/// Runs the validator on every pair of this work unit's candidate outputs not compared yet.
async fn compare_work_unit(pool: &PgPool, runner: &ValidatorRunner, work_unit_id: i64) -> anyhow::Result<()> {
    let rows: Vec<(Option<String>, String)> = sqlx::query_as(
        "select a.validator_module_sha256, r.output_sha256
         from work_unit w
         join app_version v on v.id = w.app_version_id
         join app a on a.id = v.app_id
         join replica r on r.work_unit_id = w.id
         where w.id = $1 and r.outcome = 'success' and r.output_sha256 is not null
           and (r.validate_state in ('pending', 'inconclusive') or r.id = w.canonical_replica_id)",
    )
    .bind(work_unit_id)
    .fetch_all(pool)
    .await?;
    let Some(validator) = rows.iter().find_map(|(validator, _)| validator.as_deref()) else { return Ok(()) };
    let validator: Sha256Hash = validator.parse()?;
    let outputs: BTreeSet<Sha256Hash> = rows.iter().map(|(_, output)| output.parse()).collect::<Result<_, _>>()?;
    let outputs: Vec<Sha256Hash> = outputs.into_iter().collect();
    let known = {
        let mut connection = pool.acquire().await?;
        KnownComparisons::load(&mut connection, &[validator], &outputs).await?
    };
    let known = known.with_validator(validator);
    for (i, a) in outputs.iter().enumerate() {
        for b in &outputs[i + 1..] {
            if known.lookup(*a, *b).is_some() {
                continue;
            }
            let comparison = runner.compare(validator, *a, *b).await?;
            store(pool, work_unit_id, validator, *a, *b, &comparison).await?;
        }
    }
    Ok(())
}

async fn store(
    pool: &PgPool,
    work_unit_id: i64,
    validator: Sha256Hash,
    a: Sha256Hash,
    b: Sha256Hash,
    comparison: &Comparison,
) -> anyhow::Result<()> {
    let (a, b) = ordered(a, b);
    let mut transaction = pool.begin().await?;
    let stored = sqlx::query(
        "insert into output_comparison (validator_sha256, a_sha256, b_sha256, equivalent, error)
         values ($1, $2, $3, $4, $5) on conflict do nothing",
    )
    .bind(validator.to_hex())
    .bind(a.to_hex())
    .bind(b.to_hex())
    .bind(comparison.equivalent)
    .bind(&comparison.failure)
    .execute(&mut *transaction)
    .await?
    .rows_affected();
    // Reported once, by whoever stored the answer.
    if let Some(failure) = comparison.failure.as_ref().filter(|_| stored == 1) {
        tracing::warn!(workunit.id = work_unit_id, failure, "validator module failed");
        sqlx::query("insert into validator_failure (work_unit_id, message) values ($1, $2)")
            .bind(work_unit_id)
            .bind(failure)
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await?;
    Ok(())
}

/// Compares waiting outputs whenever [`CHANNEL`] is notified, and every `interval` in case a
/// notification was missed (while reconnecting), until `shutdown` fires.
pub async fn run_until_stopped(
    pool: PgPool,
    runner: ValidatorRunner,
    interval: Duration,
    rules: Rules,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut listener = match PgListener::connect_with(&pool).await {
        Ok(mut listener) => match listener.listen(CHANNEL).await {
            Ok(()) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for validation work; polling instead");
                None
            }
        },
        Err(error) => {
            tracing::warn!(%error, "cannot listen for validation work; polling instead");
            None
        }
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failures = background::Failures::new("validation with validator modules", interval);
    loop {
        // A listener that cannot reconnect fails at once, every time: that is a failure to
        // back off from, not a notification.
        let notified = async {
            match listener.as_mut() {
                Some(listener) => listener.recv().await.map(drop).map_err(anyhow::Error::from),
                None => std::future::pending().await,
            }
        };
        let woken = tokio::select! {
            _ = ticker.tick() => Ok(()),
            notified = notified => notified,
            _ = shutdown.changed() => break,
        };
        let compared = match woken {
            Ok(()) => tokio::select! {
                compared = compare_waiting(&pool, &runner, rules) => compared.map(drop),
                _ = shutdown.changed() => break,
            },
            Err(error) => Err(error),
        };
        match compared {
            Ok(()) => failures.succeeded(),
            Err(error) => {
                if !background::pause(failures.failed(&error), &mut shutdown).await {
                    break;
                }
            }
        }
    }
}
