//! The life of a work unit and its replicas, in one place.
//!
//! - [`states`]: the typed states of work units and replicas.
//! - [`decide`]: what happens to one work unit, decided from its rows alone (unit-tested).
//! - [`changes`]: writing many work units' decisions at once.
//! - [`claim`]: handing replicas to hosts, resending the lost ones, aborting the unneeded.
//! - [`report`]: a host's reports of finished replicas.
//! - [`deadlines`]: replicas whose hosts missed their deadlines.
//! - [`cancel`]: a publisher cancelling a batch.
//! - [`ban`]: the operator banning hosts.
//! - [`lookback`]: rechecking the results a caught host had accepted on trust.
//! - [`error`]: what can go wrong, converted to the API's errors only at the HTTP edge.
//!
//! Every event that moves work units on (a report, a missed deadline, a comparison made by a
//! validator module, a cancellation, a recheck asked for) goes through [`advance`]: it locks the work units (in id
//! order, as every writer does), lets the event write what it knows, decides for each work
//! unit from its rows, and writes every decision in one go. The effects on the hosts' trust
//! come back as [`Advanced`], which must be applied, alone or with the caller's own; a
//! transaction applies them once, in host-id order, so that two cannot deadlock on host rows.

pub mod ban;
pub mod cancel;
pub mod changes;
pub mod claim;
pub mod deadlines;
pub mod decide;
pub mod error;
pub mod lookback;
pub mod report;
pub mod states;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use sqlx::PgConnection;
use wasmgrid_protocol::Sha256Hash;

use crate::config::{AdaptiveReplication, SchedulerConfig};
use crate::trust::HostEffects;
use crate::validator::Bitwise;
use crate::validator::comparisons::KnownComparisons;
use changes::Changes;
use decide::{Policy, Replica, WorkUnit};
pub use error::WorkUnitError;
use states::{Outcome, Recheck, ReplicaState, Validation, WorkUnitState};

/// Whether replica `r` (a SQL alias) still waits for its report: it runs, or it missed its
/// deadline while its work unit still needs an answer, or after the work unit was validated
/// but by no more than its deadline's length again, so that a late result counts (checked
/// against the canonical one, and credited if it agrees). Past that, once its work unit
/// failed or was cancelled, or once retention purged its batch (the canonical output is
/// gone; the purge ends the replicas still running too), a late report changes nothing and
/// what it uploaded is let go, so nothing waits on a volunteer who never returns and nothing
/// is stored for a batch whose files were deleted. Reports, uploads, the scheduler and the
/// sweeps all ask this one question.
pub const AWAITS_REPORT: &str = "(r.state = 'in_progress'
     or (r.outcome = 'no_reply'
         and exists (select 1 from work_unit aw
                     where aw.id = r.work_unit_id
                       and (aw.state = 'active'
                            or (aw.state = 'validated' and now() < r.deadline_at + aw.delay_bound
                                and not exists (select 1 from batch ab
                                                where ab.id = aw.batch_id and ab.purged_at is not null))))))";

/// Something that happened to work units, which [`advance`] moves on afterwards.
pub trait Event: Send {
    /// What the event tells its caller (the reports it recorded, say).
    type Output: Send;

    /// Writes what the event knows, with the work units locked, and notes what it says
    /// about hosts (an error, a missed deadline) in `effects`.
    fn record(
        self,
        connection: &mut PgConnection,
        effects: &mut HostEffects,
    ) -> impl Future<Output = Result<Self::Output, WorkUnitError>> + Send;

    /// Why the work units are cancelled, when this event cancels them.
    fn cancellation(&self) -> Option<String> {
        None
    }
}

/// What the server's settings say about the lives of work units.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// The per-core daily quota of a fully trusted host.
    pub max_daily_quota: u32,
    /// See [`SchedulerConfig::private_grid`].
    pub private_grid: bool,
    /// See [`SchedulerConfig::adaptive`].
    pub adaptive: AdaptiveReplication,
}

impl From<&SchedulerConfig> for Rules {
    fn from(scheduler: &SchedulerConfig) -> Self {
        Self {
            max_daily_quota: scheduler.daily_quota_per_core,
            private_grid: scheduler.private_grid,
            adaptive: scheduler.adaptive,
        }
    }
}

/// An event's output, and the effects of the event and of the decisions on the hosts' trust,
/// which must be applied before the transaction commits.
#[must_use = "the hosts' trust changes only once applied"]
pub struct Advanced<T> {
    output: T,
    trust: HostEffects,
    rules: Rules,
    judgements: Judgements,
}

/// How many replicas an event's decisions judged, by judgement (`valid`, `invalid`, ...):
/// for the metrics, counted by the caller once its transaction has committed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Judgements(BTreeMap<&'static str, u64>);

impl Judgements {
    pub fn add(&mut self, judgement: Validation) {
        *self.0.entry(judgement.as_str()).or_default() += 1;
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.0.iter().map(|(judgement, count)| (*judgement, *count))
    }
}

impl<T> Advanced<T> {
    /// The replicas the decisions judged.
    pub fn judgements(&self) -> &Judgements {
        &self.judgements
    }

    /// Applies the effects on the hosts' trust; returns the event's output.
    pub async fn apply(self, connection: &mut PgConnection) -> sqlx::Result<T> {
        self.trust.apply(connection, self.rules.max_daily_quota).await?;
        Ok(self.output)
    }

    /// Adds the effects on the hosts' trust to `effects`, for the caller to apply with its
    /// own; returns the event's output.
    pub fn merge_into(self, effects: &mut HostEffects) -> T {
        effects.merge(self.trust);
        self.output
    }
}

/// Locks work units, always in ascending id order (every writer does), so that concurrent
/// transactions cannot deadlock. Locking a work unit the transaction holds already is free.
///
/// Every explicit row lock in the server is `for no key update`: no key column ever
/// changes, and the weaker lock does not conflict with the key-share locks that foreign
/// keys take (a new replica locks its work unit, a credit grant its host), which would
/// otherwise create lock cycles outside any order we choose.
async fn lock(connection: &mut PgConnection, ids: &[i64]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("select id from work_unit where id = any($1) order by id for no key update")
        .bind(ids)
        .fetch_all(connection)
        .await?;
    Ok(())
}

/// Moves work units on after `event`: locks them, lets the event write what it knows,
/// decides for each from its rows, and writes every decision at once.
pub async fn advance<E: Event>(
    connection: &mut PgConnection,
    work_unit_ids: &[i64],
    event: E,
    rules: Rules,
) -> Result<Advanced<E::Output>, WorkUnitError> {
    let mut ids = work_unit_ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    lock(connection, &ids).await?;
    let cancellation = event.cancellation();
    let mut trust = HostEffects::default();
    let output = event.record(connection, &mut trust).await?;
    if ids.is_empty() {
        return Ok(Advanced { output, trust, rules, judgements: Judgements::default() });
    }

    let (work_units, mut replicas) = load(connection, &ids, rules).await?;
    let validators: Vec<Sha256Hash> = work_units.iter().filter_map(|(_, validator)| *validator).collect();
    let known = if validators.is_empty() || cancellation.is_some() {
        KnownComparisons::default()
    } else {
        let outputs: Vec<Sha256Hash> = replicas.values().flatten().filter_map(|r| r.output).collect();
        KnownComparisons::load(&mut *connection, &validators, &outputs).await?
    };
    let mut changes = Changes::default();
    for (work_unit, validator) in &work_units {
        let replicas = replicas.remove(&work_unit.id).unwrap_or_default();
        let decision = match validator {
            None => decide::decide(&Bitwise, work_unit, &replicas, cancellation.as_deref())?,
            Some(validator) => {
                decide::decide(&known.with_validator(*validator), work_unit, &replicas, cancellation.as_deref())?
            }
        };
        changes.add(work_unit.id, decision, &mut trust);
    }
    let judgements = changes.judgements();
    changes.write(connection).await?;
    Ok(Advanced { output, trust, rules, judgements })
}

#[derive(sqlx::FromRow)]
struct WorkUnitRow {
    id: i64,
    app_version_id: i64,
    state: WorkUnitState,
    min_quorum: i32,
    target_replicas: i32,
    max_error_replicas: i32,
    max_total_replicas: i32,
    canonical_replica_id: Option<i64>,
    credit: Option<f64>,
    validator_module_sha256: Option<String>,
    distinct_networks: bool,
    accepted_on_trust: bool,
    recheck: Option<Recheck>,
}

#[derive(sqlx::FromRow)]
struct ReplicaRow {
    id: i64,
    work_unit_id: i64,
    state: ReplicaState,
    outcome: Option<Outcome>,
    validate_state: Validation,
    host_id: Option<i64>,
    account_id: Option<i64>,
    output_sha256: Option<String>,
    fuel_used: Option<i64>,
    error_reason: Option<String>,
    instrumentation_version: i32,
    network: Option<String>,
    /// Whether the replica's account had a validated result before this transaction.
    account_has_history: bool,
    on_trust: bool,
    host_trusted: bool,
}

/// The work units `ids` (each with its app's validator module, if any) and their replicas.
async fn load(
    connection: &mut PgConnection,
    ids: &[i64],
    rules: Rules,
) -> Result<(Vec<(WorkUnit, Option<Sha256Hash>)>, HashMap<i64, Vec<Replica>>), WorkUnitError> {
    let rows: Vec<WorkUnitRow> = sqlx::query_as(
        "select w.id, w.app_version_id, w.state, w.min_quorum, w.target_replicas, w.max_error_replicas,
                w.max_total_replicas, w.canonical_replica_id, w.credit, a.validator_module_sha256,
                a.distinct_networks, w.accepted_on_trust, w.recheck
         from work_unit w
         join app_version v on v.id = w.app_version_id
         join app a on a.id = v.app_id
         where w.id = any($1) order by w.id",
    )
    .bind(ids)
    .fetch_all(&mut *connection)
    .await?;
    let count = |value: i32| usize::try_from(value).unwrap_or(0);
    let mut work_units = Vec::with_capacity(rows.len());
    for row in rows {
        let validator = row.validator_module_sha256.as_deref().map(parse_hash).transpose()?;
        let work_unit = WorkUnit {
            id: row.id,
            app_version_id: row.app_version_id,
            state: row.state,
            policy: Policy {
                min_quorum: count(row.min_quorum),
                target_replicas: count(row.target_replicas),
                max_error_replicas: count(row.max_error_replicas),
                max_total_replicas: count(row.max_total_replicas),
            },
            canonical_replica_id: row.canonical_replica_id,
            credit: row.credit,
            has_validator_module: validator.is_some(),
            distinct_networks: row.distinct_networks && !rules.private_grid,
            new_accounts_decide: rules.private_grid,
            accepted_on_trust: row.accepted_on_trust,
            recheck: row.recheck,
        };
        work_units.push((work_unit, validator));
    }

    // An account's history is its hosts' valid results, and a host's trust its run of them
    // for the app version, as counted before this transaction (trust is applied at its end).
    let rows: Vec<ReplicaRow> = sqlx::query_as(
        "select r.id, r.work_unit_id, r.state, r.outcome, r.validate_state, r.host_id, r.account_id, r.output_sha256,
                r.fuel_used, r.error_reason, r.instrumentation_version, r.network,
                coalesce((select sum(h.valid_count) > 0 from host h where h.account_id = r.account_id), false)
                    as account_has_history,
                r.on_trust,
                r.on_trust and coalesce((select t.consecutive_valid >= $2 and t.invalid_count = 0
                                         from host_app_version t
                                         join work_unit w on w.app_version_id = t.app_version_id
                                         where t.host_id = r.host_id and w.id = r.work_unit_id), false)
                    as host_trusted
         from replica r where r.work_unit_id = any($1) order by r.id",
    )
    .bind(ids)
    .bind(i32::try_from(rules.adaptive.trusted_after).unwrap_or(i32::MAX))
    .fetch_all(&mut *connection)
    .await?;
    let mut replicas: HashMap<i64, Vec<Replica>> = HashMap::new();
    for row in rows {
        let replica = Replica {
            id: row.id,
            state: row.state,
            outcome: row.outcome,
            validation: row.validate_state,
            host_id: row.host_id,
            account_id: row.account_id,
            output: row.output_sha256.as_deref().map(parse_hash).transpose()?,
            fuel_used: row.fuel_used,
            error_reason: row.error_reason,
            instrumentation_version: row.instrumentation_version,
            network: row.network,
            account_has_history: row.account_has_history,
            on_trust: row.on_trust,
            host_trusted: row.host_trusted,
        };
        replicas.entry(row.work_unit_id).or_default().push(replica);
    }
    Ok((work_units, replicas))
}

fn parse_hash(hash: &str) -> Result<Sha256Hash, WorkUnitError> {
    hash.parse().map_err(|_| WorkUnitError::Internal(anyhow::anyhow!("stored hash {hash:?} is malformed")))
}
