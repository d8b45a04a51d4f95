//! The life of a work unit and its replicas, in one place.
//!
//! - [`states`]: the typed states of work units and replicas.
//! - [`decide`]: what happens to one work unit, decided from its rows alone (unit-tested).
//! - [`changes`]: writing many work units' decisions at once.
//! - [`claim`]: handing replicas to hosts, resending the lost ones, aborting the unneeded.
//! - [`report`]: a host's reports of finished replicas.
//! - [`deadlines`]: replicas whose hosts missed their deadlines.
//! - [`cancel`]: a publisher cancelling a batch.
//! - [`error`]: what can go wrong, converted to the API's errors only at the HTTP edge.
//!
//! Every event that moves work units on (a report, a missed deadline, a comparison made by a
//! validator module, a cancellation) goes through [`advance`]: it locks the work units (in id
//! order, as every writer does), lets the event write what it knows, decides for each work
//! unit from its rows, and writes every decision in one go. The effects on the hosts' trust
//! come back as [`Advanced`], which must be applied, alone or with the caller's own; a
//! transaction applies them once, in host-id order, so that two cannot deadlock on host rows.

pub mod cancel;
pub mod changes;
pub mod claim;
pub mod deadlines;
pub mod decide;
pub mod error;
pub mod report;
pub mod states;

use std::collections::HashMap;
use std::future::Future;

use sqlx::PgConnection;
use wasmgrid_protocol::Sha256Hash;

use crate::trust::HostEffects;
use crate::validator::Bitwise;
use crate::validator::comparisons::KnownComparisons;
use changes::Changes;
use decide::{Policy, Replica, WorkUnit};
pub use error::WorkUnitError;
use states::{Outcome, ReplicaState, Validation, WorkUnitState};

/// Whether replica `r` (a SQL alias) still waits for its report: it runs, or it missed its
/// deadline while its work unit still needs an answer, or after the work unit was validated
/// but by no more than its deadline's length again, so that a late result counts (checked
/// against the canonical one, and credited if it agrees). Past that, or once its work unit
/// failed or was cancelled, a late report changes nothing and what it uploaded is let go,
/// so nothing waits on a volunteer who never returns. Reports, uploads, the scheduler and
/// the sweeps all ask this one question.
pub const AWAITS_REPORT: &str = "(r.state = 'in_progress'
     or (r.outcome = 'no_reply'
         and exists (select 1 from work_unit aw
                     where aw.id = r.work_unit_id
                       and (aw.state = 'active'
                            or (aw.state = 'validated' and now() < r.deadline_at + aw.delay_bound)))))";

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

/// An event's output, and the effects of the event and of the decisions on the hosts' trust,
/// which must be applied before the transaction commits.
#[must_use = "the hosts' trust changes only once applied"]
pub struct Advanced<T> {
    output: T,
    trust: HostEffects,
}

impl<T> Advanced<T> {
    /// Applies the effects on the hosts' trust; returns the event's output.
    pub async fn apply(self, connection: &mut PgConnection, max_daily_quota: u32) -> sqlx::Result<T> {
        self.trust.apply(connection, max_daily_quota).await?;
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
) -> Result<Advanced<E::Output>, WorkUnitError> {
    let mut ids = work_unit_ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    lock(connection, &ids).await?;
    let cancellation = event.cancellation();
    let mut trust = HostEffects::default();
    let output = event.record(connection, &mut trust).await?;
    if ids.is_empty() {
        return Ok(Advanced { output, trust });
    }

    let (work_units, mut replicas) = load(connection, &ids).await?;
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
    changes.write(connection).await?;
    Ok(Advanced { output, trust })
}

#[derive(sqlx::FromRow)]
struct WorkUnitRow {
    id: i64,
    state: WorkUnitState,
    min_quorum: i32,
    target_replicas: i32,
    max_error_replicas: i32,
    max_total_replicas: i32,
    canonical_replica_id: Option<i64>,
    credit: Option<f64>,
    validator_module_sha256: Option<String>,
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
}

/// The work units `ids` (each with its app's validator module, if any) and their replicas.
async fn load(
    connection: &mut PgConnection,
    ids: &[i64],
) -> Result<(Vec<(WorkUnit, Option<Sha256Hash>)>, HashMap<i64, Vec<Replica>>), WorkUnitError> {
    let rows: Vec<WorkUnitRow> = sqlx::query_as(
        "select w.id, w.state, w.min_quorum, w.target_replicas, w.max_error_replicas, w.max_total_replicas,
                w.canonical_replica_id, w.credit, a.validator_module_sha256
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
        };
        work_units.push((work_unit, validator));
    }

    let rows: Vec<ReplicaRow> = sqlx::query_as(
        "select id, work_unit_id, state, outcome, validate_state, host_id, account_id, output_sha256, fuel_used,
                error_reason, instrumentation_version
         from replica where work_unit_id = any($1) order by id",
    )
    .bind(ids)
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
        };
        replicas.entry(row.work_unit_id).or_default().push(replica);
    }
    Ok((work_units, replicas))
}

fn parse_hash(hash: &str) -> Result<Sha256Hash, WorkUnitError> {
    hash.parse().map_err(|_| WorkUnitError::Internal(anyhow::anyhow!("stored hash {hash:?} is malformed")))
}
