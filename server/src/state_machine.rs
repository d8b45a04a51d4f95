//! The life of a work unit, decided in the same transaction as the event that moves it (a
//! report, or a missed deadline found by the sweep), with the work unit's row locked.
//!
//! - An error or a missed deadline asks for another replica, until `max_error_replicas`
//!   errors make the work unit fail.
//! - Once `min_quorum` successes are in, validation looks for a canonical result. Found: the
//!   agreeing replicas are valid and earn credit, the others are invalid, unsent replicas are
//!   no longer needed. Not found: one more replica.
//! - `max_total_replicas` caps everything: a work unit that needs more fails.
//! - After validation, late results are checked against the canonical one.
//!
//! - Apps with a validator module are validated only with comparisons already made: a
//!   work unit that needs a new one waits (see [`crate::validator::comparisons`]).
//!
//! Deciding is separate from writing: [`decide`] looks at one work unit and its replicas and
//! records what must change in [`Changes`]; [`transition_all`] decides for every work unit an
//! event touched and then writes all their changes in a handful of set-based statements, so
//! a report of 32 results costs a few round trips to the database, not a few hundred.

use std::collections::HashMap;

use sqlx::PgConnection;
use wasmgrid_protocol::Sha256Hash;

use crate::credit::{self, CreditGrant};
use crate::trust::HostEffects;
use crate::validator::comparisons::{self, KnownComparisons};
use crate::validator::{self, Bitwise, Candidate, Validator, Verdict};

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

/// Retries go ahead of first copies in the queue so that work units finish.
const RETRY_PRIORITY: i32 = 1;

/// Locks work units, always in ascending id order (every writer does), so that concurrent
/// transactions cannot deadlock.
///
/// Every explicit row lock in the server is `for no key update`: no key column ever
/// changes, and the weaker lock does not conflict with the key-share locks that foreign
/// keys take (a new replica locks its work unit, a credit grant its host), which would
/// otherwise create lock cycles outside any order we choose.
pub async fn lock_work_units(connection: &mut PgConnection, ids: &[i64]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("select id from work_unit where id = any($1) order by id for no key update")
        .bind(ids)
        .fetch_all(connection)
        .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct WorkUnitRow {
    id: i64,
    state: String,
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
    state: String,
    outcome: Option<String>,
    validate_state: String,
    host_id: Option<i64>,
    account_id: Option<i64>,
    output_sha256: Option<String>,
    fuel_used: Option<i64>,
    error_reason: Option<String>,
    instrumentation_version: i32,
}

impl ReplicaRow {
    fn is_success(&self) -> bool {
        self.outcome.as_deref() == Some("success")
    }

    /// Failed runs count towards `max_error_replicas`; missed deadlines only towards
    /// `max_total_replicas`, as in BOINC (a host that vanished says nothing about the work).
    fn is_error(&self) -> bool {
        matches!(self.outcome.as_deref(), Some("client_error" | "validate_error"))
    }

    /// A success not yet judged (or judged inconclusive): a candidate for the canonical
    /// result.
    fn is_candidate(&self) -> bool {
        self.is_success() && matches!(self.validate_state.as_str(), "pending" | "inconclusive")
    }

    fn is_outstanding(&self) -> bool {
        self.state != "over"
    }

    fn candidate(&self) -> anyhow::Result<Candidate> {
        let output: Sha256Hash = self
            .output_sha256
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("successful replica {} has no output", self.id))?
            .parse()?;
        Ok(Candidate { replica_id: self.id, output, fuel: self.fuel_used.unwrap_or(0) })
    }
}

/// The candidates that may be compared with each other: those of the one instrumentation
/// version with the most candidates (the newest on a tie). Outputs and fuel from different
/// versions of the client's instrumentation pass are not comparable, so a quorum is only ever
/// made of one version.
fn comparable_candidates(replicas: &[ReplicaRow]) -> Vec<&ReplicaRow> {
    let mut per_version: HashMap<i32, usize> = HashMap::new();
    for replica in replicas.iter().filter(|r| r.is_candidate()) {
        *per_version.entry(replica.instrumentation_version).or_default() += 1;
    }
    let Some((version, _)) = per_version.into_iter().max_by_key(|&(version, count)| (count, version)) else {
        return Vec::new();
    };
    replicas.iter().filter(|r| r.is_candidate() && r.instrumentation_version == version).collect()
}

/// Moves the work units on after an event touched them. The caller holds their locks.
pub async fn transition_all(
    connection: &mut PgConnection,
    work_unit_ids: &[i64],
    effects: &mut HostEffects,
) -> anyhow::Result<()> {
    if work_unit_ids.is_empty() {
        return Ok(());
    }
    let work_units: Vec<WorkUnitRow> = sqlx::query_as(
        "select w.id, w.state::text as state, w.min_quorum, w.target_replicas, w.max_error_replicas,
                w.max_total_replicas, w.canonical_replica_id, w.credit, a.validator_module_sha256
         from work_unit w
         join app_version v on v.id = w.app_version_id
         join app a on a.id = v.app_id
         where w.id = any($1) order by w.id",
    )
    .bind(work_unit_ids)
    .fetch_all(&mut *connection)
    .await?;
    let replicas: Vec<ReplicaRow> = sqlx::query_as(
        "select id, work_unit_id, state::text as state, outcome::text as outcome,
                validate_state::text as validate_state, host_id, account_id, output_sha256, fuel_used, error_reason,
                instrumentation_version
         from replica where work_unit_id = any($1) order by id",
    )
    .bind(work_unit_ids)
    .fetch_all(&mut *connection)
    .await?;
    let mut replicas_by_work_unit: HashMap<i64, Vec<ReplicaRow>> = HashMap::new();
    for replica in replicas {
        replicas_by_work_unit.entry(replica.work_unit_id).or_default().push(replica);
    }

    let validators: Vec<Sha256Hash> = work_units
        .iter()
        .filter_map(|w| w.validator_module_sha256.as_deref())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let known = if validators.is_empty() {
        KnownComparisons::default()
    } else {
        let outputs: Vec<Sha256Hash> =
            replicas_by_work_unit.values().flatten().filter_map(|r| r.candidate().ok()).map(|c| c.output).collect();
        KnownComparisons::load(&mut *connection, &validators, &outputs).await?
    };

    let mut changes = Changes::default();
    for work_unit in &work_units {
        let replicas = replicas_by_work_unit.remove(&work_unit.id).unwrap_or_default();
        match work_unit.validator_module_sha256.as_deref() {
            None => decide(&Bitwise, work_unit, &replicas, &mut changes, effects)?,
            Some(validator) => {
                let validator = known.with_validator(validator.parse()?);
                let needed = comparisons_needed(work_unit, &replicas)?;
                let ready = needed.iter().all(|(a, b)| validator.lookup(*a, *b).is_some());
                changes.awaiting_comparison.push((work_unit.id, !ready));
                if ready {
                    decide(&validator, work_unit, &replicas, &mut changes, effects)?;
                    if needed.iter().any(|(a, b)| validator.failed_on(*a, *b)) {
                        changes.blame_validator(work_unit.id);
                    }
                }
            }
        }
    }
    changes.write(connection).await
}

/// The pairs of outputs that deciding this work unit may compare: every pair of candidates
/// once a quorum is in, or each late result against the canonical one.
fn comparisons_needed(
    work_unit: &WorkUnitRow,
    replicas: &[ReplicaRow],
) -> anyhow::Result<Vec<(Sha256Hash, Sha256Hash)>> {
    let mut pairs = Vec::new();
    match work_unit.state.as_str() {
        "active" => {
            let errors = replicas.iter().filter(|r| r.is_error()).count();
            let candidates: Vec<Sha256Hash> = comparable_candidates(replicas)
                .iter()
                .map(|r| r.candidate().map(|c| c.output))
                .collect::<anyhow::Result<_>>()?;
            if errors < work_unit.max_error_replicas as usize && candidates.len() >= work_unit.min_quorum as usize {
                for (i, a) in candidates.iter().enumerate() {
                    pairs.extend(candidates[i + 1..].iter().map(|b| (*a, *b)));
                }
            }
        }
        "validated" => {
            if let Some(canonical) = replicas.iter().find(|r| Some(r.id) == work_unit.canonical_replica_id) {
                for late in late_results(replicas, canonical) {
                    pairs.push((canonical.candidate()?.output, late.candidate()?.output));
                }
            }
        }
        _ => {}
    }
    Ok(pairs)
}

/// Everything the state machine decided for a set of work units, written at once.
#[derive(Default)]
struct Changes {
    /// (work unit, canonical replica, credit).
    validated: Vec<(i64, i64, f64)>,
    /// (work unit, reason).
    failed: Vec<(i64, String)>,
    /// (replica, new validation state, credit).
    validations: Vec<(i64, &'static str, Option<f64>)>,
    grants: Vec<CreditGrant>,
    /// (work unit, priority, how many).
    new_replicas: Vec<(i64, i32, i32)>,
    /// Work units whose unsent replicas are no longer needed.
    finished: Vec<i64>,
    /// (work unit of an app with a validator module, whether it waits for comparisons).
    awaiting_comparison: Vec<(i64, bool)>,
}

impl Changes {
    fn valid(&mut self, replica: &ReplicaRow, credit: f64, effects: &mut HostEffects) -> anyhow::Result<()> {
        let (Some(host_id), Some(account_id)) = (replica.host_id, replica.account_id) else {
            anyhow::bail!("valid replica {} has no host", replica.id);
        };
        self.validations.push((replica.id, "valid", Some(credit)));
        self.grants.push(CreditGrant { replica_id: replica.id, host_id, account_id, credit });
        effects.valid(host_id);
        Ok(())
    }

    fn invalid(&mut self, replica: &ReplicaRow, effects: &mut HostEffects) {
        self.validations.push((replica.id, "invalid", Some(0.0)));
        if let Some(host_id) = replica.host_id {
            effects.invalid(host_id);
        }
    }

    /// A work unit that fails for want of agreement, after the app's validator module failed
    /// on some of its outputs, says so: the outputs may well have agreed.
    fn blame_validator(&mut self, work_unit_id: i64) {
        if let Some((_, reason)) = self.failed.iter_mut().find(|(id, _)| *id == work_unit_id) {
            reason.push_str("; the app's validator module failed on some of them (see the batch status)");
        }
    }

    fn fail(&mut self, work_unit_id: i64, reason: String) {
        tracing::info!(workunit.id = work_unit_id, reason, "work unit failed");
        self.failed.push((work_unit_id, reason));
        self.finished.push(work_unit_id);
    }

    async fn write(self, connection: &mut PgConnection) -> anyhow::Result<()> {
        if !self.validated.is_empty() {
            let (ids, canonical, credit): (Vec<i64>, Vec<i64>, Vec<f64>) = unzip3(&self.validated);
            sqlx::query(
                "update work_unit w
                 set state = 'validated', canonical_replica_id = u.canonical, credit = u.credit, finished_at = now()
                 from unnest($1::bigint[], $2::bigint[], $3::float8[]) as u(id, canonical, credit)
                 where w.id = u.id and w.state = 'active'",
            )
            .bind(ids)
            .bind(canonical)
            .bind(credit)
            .execute(&mut *connection)
            .await?;
        }
        if !self.failed.is_empty() {
            let (ids, reasons): (Vec<i64>, Vec<String>) = self.failed.into_iter().unzip();
            sqlx::query(
                "update work_unit w
                 set state = 'failed', failure_reason = u.reason, finished_at = now()
                 from unnest($1::bigint[], $2::text[]) as u(id, reason)
                 where w.id = u.id and w.state = 'active'",
            )
            .bind(ids)
            .bind(reasons)
            .execute(&mut *connection)
            .await?;
        }
        if !self.validations.is_empty() {
            let (ids, states, credit) = unzip3(&self.validations);
            sqlx::query(
                "update replica r
                 set validate_state = u.state::validate_state, credit = coalesce(u.credit, r.credit)
                 from unnest($1::bigint[], $2::text[], $3::float8[]) as u(id, state, credit)
                 where r.id = u.id",
            )
            .bind(ids)
            .bind(states)
            .bind(credit)
            .execute(&mut *connection)
            .await?;
        }
        if !self.new_replicas.is_empty() {
            let (work_units, priorities, counts) = unzip3(&self.new_replicas);
            sqlx::query(
                "insert into replica (work_unit_id, priority)
                 select u.work_unit_id, u.priority
                 from unnest($1::bigint[], $2::int[], $3::int[]) as u(work_unit_id, priority, count),
                      generate_series(1, u.count)",
            )
            .bind(work_units)
            .bind(priorities)
            .bind(counts)
            .execute(&mut *connection)
            .await?;
        }
        if !self.finished.is_empty() {
            sqlx::query(
                "update replica set state = 'over', outcome = 'didnt_need'
                 where work_unit_id = any($1) and state = 'unsent'",
            )
            .bind(&self.finished)
            .execute(&mut *connection)
            .await?;
        }
        if !self.awaiting_comparison.is_empty() {
            let (ids, awaiting): (Vec<i64>, Vec<bool>) = self.awaiting_comparison.into_iter().unzip();
            let newly_waiting: i64 = sqlx::query_scalar(
                "with changed as (
                     update work_unit w set awaiting_comparison = u.awaiting
                     from unnest($1::bigint[], $2::bool[]) as u(id, awaiting)
                     where w.id = u.id and w.awaiting_comparison <> u.awaiting
                     returning w.awaiting_comparison
                 )
                 select count(*) from changed where awaiting_comparison",
            )
            .bind(ids)
            .bind(awaiting)
            .fetch_one(&mut *connection)
            .await?;
            if newly_waiting > 0 {
                // Delivered at commit, to every server process listening.
                sqlx::query("select pg_notify($1, '')").bind(comparisons::CHANNEL).execute(&mut *connection).await?;
            }
        }
        credit::grant_all(connection, &self.grants).await?;
        Ok(())
    }
}

fn unzip3<A: Clone, B: Clone, C: Clone>(rows: &[(A, B, C)]) -> (Vec<A>, Vec<B>, Vec<C>) {
    let mut columns = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
    for (a, b, c) in rows {
        columns.0.push(a.clone());
        columns.1.push(b.clone());
        columns.2.push(c.clone());
    }
    columns
}

/// Decides what happens to one work unit, given all its replicas.
fn decide(
    validator: &dyn Validator,
    work_unit: &WorkUnitRow,
    replicas: &[ReplicaRow],
    changes: &mut Changes,
    effects: &mut HostEffects,
) -> anyhow::Result<()> {
    match work_unit.state.as_str() {
        "validated" => check_late_results(validator, work_unit, replicas, changes, effects),
        "failed" => Ok(()),
        _ => advance_active(validator, work_unit, replicas, changes, effects),
    }
}

fn advance_active(
    validator: &dyn Validator,
    work_unit: &WorkUnitRow,
    replicas: &[ReplicaRow],
    changes: &mut Changes,
    effects: &mut HostEffects,
) -> anyhow::Result<()> {
    let errors: Vec<&ReplicaRow> = replicas.iter().filter(|r| r.is_error()).collect();
    if errors.len() >= work_unit.max_error_replicas as usize {
        let last_reason = errors.iter().rev().find_map(|r| r.error_reason.as_deref()).unwrap_or("no reason given");
        let reason = format!("too many errors ({} replicas failed; last: {last_reason})", errors.len());
        changes.fail(work_unit.id, reason);
        return Ok(());
    }

    let successes = comparable_candidates(replicas);
    let mut inconclusive = false;
    if successes.len() >= work_unit.min_quorum as usize {
        let candidates = successes.iter().map(|r| r.candidate()).collect::<anyhow::Result<Vec<_>>>()?;
        match validator::find_canonical(validator, &candidates, work_unit.min_quorum as usize)? {
            Verdict::Canonical(agreeing) => {
                let version = successes[0].instrumentation_version;
                for other in replicas.iter().filter(|r| r.is_candidate() && r.instrumentation_version != version) {
                    changes.validations.push((other.id, "incomparable", None));
                }
                return accept(work_unit, &successes, &agreeing, changes, effects);
            }
            Verdict::NoConsensus => {
                inconclusive = true;
                for replica in &successes {
                    changes.validations.push((replica.id, "inconclusive", None));
                }
            }
        }
    }

    // Keep enough replicas on the way: the target, or one more than the successes when they
    // disagree.
    let outstanding = replicas.iter().filter(|r| r.is_outstanding()).count() as i64;
    let wanted = if inconclusive { successes.len() as i64 + 1 } else { i64::from(work_unit.target_replicas) };
    let missing = wanted - successes.len() as i64 - outstanding;
    let room = i64::from(work_unit.max_total_replicas) - replicas.len() as i64;
    let to_create = missing.min(room).max(0);
    if to_create > 0 {
        let priority = if replicas.is_empty() { 0 } else { RETRY_PRIORITY };
        changes.new_replicas.push((work_unit.id, priority, to_create as i32));
    }
    if outstanding + to_create == 0 {
        let reason = if inconclusive {
            format!("no consensus among {} successful replicas", successes.len())
        } else {
            format!("needs more than the maximum of {} replicas", work_unit.max_total_replicas)
        };
        changes.fail(work_unit.id, reason);
    }
    Ok(())
}

/// A canonical result is found: the work unit is validated, once.
fn accept(
    work_unit: &WorkUnitRow,
    successes: &[&ReplicaRow],
    agreeing: &[i64],
    changes: &mut Changes,
    effects: &mut HostEffects,
) -> anyhow::Result<()> {
    let fuels: Vec<i64> =
        successes.iter().filter(|r| agreeing.contains(&r.id)).map(|r| r.fuel_used.unwrap_or(0)).collect();
    let credit = credit::credit_for_fuel(&fuels);
    let canonical = agreeing[0];
    changes.validated.push((work_unit.id, canonical, credit));
    changes.finished.push(work_unit.id);
    for replica in successes {
        if agreeing.contains(&replica.id) {
            changes.valid(replica, credit, effects)?;
        } else {
            changes.invalid(replica, effects);
        }
    }
    tracing::debug!(workunit.id = work_unit.id, replica.id = canonical, credit, "work unit validated");
    Ok(())
}

/// The successes that arrived after validation and can be compared with the canonical one
/// (they ran through the same instrumentation version).
fn late_results<'r>(replicas: &'r [ReplicaRow], canonical: &ReplicaRow) -> impl Iterator<Item = &'r ReplicaRow> {
    let version = canonical.instrumentation_version;
    replicas
        .iter()
        .filter(move |r| r.is_success() && r.validate_state == "pending" && r.instrumentation_version == version)
}

/// After validation, successes that arrive late are compared with the canonical output.
fn check_late_results(
    validator: &dyn Validator,
    work_unit: &WorkUnitRow,
    replicas: &[ReplicaRow],
    changes: &mut Changes,
    effects: &mut HostEffects,
) -> anyhow::Result<()> {
    let canonical_id = work_unit
        .canonical_replica_id
        .ok_or_else(|| anyhow::anyhow!("validated work unit without a canonical replica"))?;
    let canonical = replicas
        .iter()
        .find(|r| r.id == canonical_id)
        .ok_or_else(|| anyhow::anyhow!("canonical replica {canonical_id} is missing"))?
        .candidate()?;
    let canonical_row = replicas.iter().find(|r| r.id == canonical_id).expect("found above");
    for other in replicas.iter().filter(|r| {
        r.is_success()
            && r.validate_state == "pending"
            && r.instrumentation_version != canonical_row.instrumentation_version
    }) {
        changes.validations.push((other.id, "incomparable", None));
    }
    let credit = work_unit.credit.unwrap_or(0.0);
    for replica in late_results(replicas, canonical_row) {
        if validator.equivalent(&canonical, &replica.candidate()?)? {
            changes.valid(replica, credit, effects)?;
        } else {
            changes.invalid(replica, effects);
        }
    }
    Ok(())
}
