//! Writing the decisions for many work units at once, in a handful of set-based statements,
//! so that a report of 32 results costs a few round trips to the database, not a few hundred.

use sqlx::PgConnection;

use super::Judgements;
use super::decide::{Decision, End, RecheckEnd, Trust, Withdrawal};
use super::states::Validation;
use crate::credit::{self, CreditGrant};
use crate::trust::HostEffects;
use crate::validator::comparisons;

/// The decisions for a set of work units, as columns for the statements that write them.
#[derive(Default)]
pub struct Changes {
    /// (work unit, canonical replica, credit).
    validated: Vec<(i64, i64, f64)>,
    /// Work units of `validated` accepted on one trusted host's word.
    on_trust: Vec<i64>,
    /// Rechecks that confirmed the result accepted on trust.
    confirmed: Vec<i64>,
    /// (work unit, new canonical replica, credit): rechecks that replaced the result.
    corrected: Vec<(i64, i64, f64)>,
    /// (work unit, reason): rechecks that could not reproduce the result.
    not_reproduced: Vec<(i64, String)>,
    withdrawals: Vec<Withdrawal>,
    /// (work unit, reason).
    failed: Vec<(i64, String)>,
    /// (replica, new validation state, credit).
    judged: Vec<(i64, Validation, Option<f64>)>,
    grants: Vec<CreditGrant>,
    /// (work unit, priority, how many).
    new_replicas: Vec<(i64, i32, i32)>,
    /// Work units whose unsent replicas are no longer needed.
    finished: Vec<i64>,
    /// (work unit of an app with a validator module, whether it waits for comparisons).
    awaiting_comparison: Vec<(i64, bool)>,
}

impl Changes {
    /// Adds the decision for `work_unit_id`, and what it says about hosts to `effects`.
    pub fn add(&mut self, work_unit_id: i64, decision: Decision, effects: &mut HostEffects) {
        match decision.end {
            Some(End::Validated { canonical_replica_id, credit, on_trust }) => {
                self.validated.push((work_unit_id, canonical_replica_id, credit));
                if on_trust {
                    self.on_trust.push(work_unit_id);
                }
                self.finished.push(work_unit_id);
            }
            Some(End::Failed { reason }) => {
                self.failed.push((work_unit_id, reason));
                self.finished.push(work_unit_id);
            }
            None => {}
        }
        if decision.recheck.is_some() {
            self.finished.push(work_unit_id);
        }
        match decision.recheck {
            Some(RecheckEnd::Confirmed) => self.confirmed.push(work_unit_id),
            Some(RecheckEnd::Corrected { canonical_replica_id, credit }) => {
                self.corrected.push((work_unit_id, canonical_replica_id, credit))
            }
            Some(RecheckEnd::Failed { reason }) => self.not_reproduced.push((work_unit_id, reason)),
            None => {}
        }
        self.withdrawals.extend(decision.withdrawals);
        for judged in decision.judged {
            self.judged.push((judged.replica_id, judged.validation, judged.credit));
        }
        self.grants.extend(decision.grants);
        if let Some(new) = decision.new_replicas {
            self.new_replicas.push((work_unit_id, new.priority, new.count));
        }
        if let Some(awaiting) = decision.awaiting_comparison {
            self.awaiting_comparison.push((work_unit_id, awaiting));
        }
        for trust in decision.trust {
            match trust {
                Trust::Valid { host_id, app_version_id } => effects.valid(host_id, app_version_id),
                Trust::OnTrust { host_id, app_version_id } => effects.accepted_on_trust(host_id, app_version_id),
                Trust::Invalid { host_id, app_version_id } => effects.invalid(host_id, app_version_id),
            }
        }
    }

    /// The replicas judged, by judgement.
    pub fn judgements(&self) -> Judgements {
        let mut judgements = Judgements::default();
        for (_, validation, _) in &self.judged {
            judgements.add(*validation);
        }
        judgements
    }

    pub async fn write(self, connection: &mut PgConnection) -> sqlx::Result<()> {
        if !self.validated.is_empty() {
            let (ids, canonical, credit) = unzip3(&self.validated);
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
        if !self.on_trust.is_empty() {
            sqlx::query("update work_unit set accepted_on_trust = true where id = any($1)")
                .bind(&self.on_trust)
                .execute(&mut *connection)
                .await?;
        }
        self.write_rechecks(connection).await?;
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
        if !self.judged.is_empty() {
            let (ids, states, credit) = unzip3(&self.judged);
            let states: Vec<&str> = states.into_iter().map(Validation::as_str).collect();
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
            let invalid: Vec<i64> = self
                .judged
                .iter()
                .filter(|(_, state, _)| *state == Validation::Invalid)
                .map(|(replica_id, _, _)| *replica_id)
                .collect();
            if !invalid.is_empty() {
                crate::blobs::retention::release_invalid_outputs(connection, &invalid).await?;
            }
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
        credit::grant_all(&mut *connection, &self.grants).await?;
        credit::withdraw_all(connection, &self.withdrawals).await
    }

    /// The ends of rechecks: a result confirmed stays; a result corrected is replaced by the
    /// other hosts' (or the work unit fails), and the replaced replica and the time are kept.
    async fn write_rechecks(&self, connection: &mut PgConnection) -> sqlx::Result<()> {
        if !self.confirmed.is_empty() {
            sqlx::query("update work_unit set recheck = 'confirmed' where id = any($1) and recheck = 'pending'")
                .bind(&self.confirmed)
                .execute(&mut *connection)
                .await?;
        }
        if !self.corrected.is_empty() {
            let (ids, canonical, credit) = unzip3(&self.corrected);
            sqlx::query(
                "update work_unit w
                 set recheck = 'corrected', replaced_replica_id = w.canonical_replica_id,
                     canonical_replica_id = u.canonical, credit = u.credit, result_changed_at = now()
                 from unnest($1::bigint[], $2::bigint[], $3::float8[]) as u(id, canonical, credit)
                 where w.id = u.id and w.recheck = 'pending'",
            )
            .bind(ids)
            .bind(canonical)
            .bind(credit)
            .execute(&mut *connection)
            .await?;
        }
        if !self.not_reproduced.is_empty() {
            let (ids, reasons): (Vec<i64>, Vec<String>) = self.not_reproduced.iter().cloned().unzip();
            sqlx::query(
                "update work_unit w
                 set state = 'failed', failure_reason = u.reason, recheck = 'corrected',
                     replaced_replica_id = w.canonical_replica_id, canonical_replica_id = null, credit = null,
                     result_changed_at = now()
                 from unnest($1::bigint[], $2::text[]) as u(id, reason)
                 where w.id = u.id and w.recheck = 'pending'",
            )
            .bind(ids)
            .bind(reasons)
            .execute(&mut *connection)
            .await?;
        }
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
