//! Credit: how much a validated work unit is worth, granting it once per valid replica, and
//! folding grants into host, account and team totals.
//!
//! Credit comes from fuel, the sandbox's deterministic count of executed Wasm instructions,
//! so a fast machine earns more by doing more, never by reporting more. One credit is
//! [`FUEL_PER_CREDIT`] units of fuel.
//!
//! Grants are rows in `credit_grant`, written in the validating transaction (its primary key
//! makes a second grant for one replica impossible). Credit for a result found wrong later
//! (see [`crate::work_unit::lookback`]) is withdrawn by a row in `credit_withdrawal`, once,
//! beside the grant it cancels: the ledger keeps both. A sweep folds them into the totals and
//! into BOINC's recent average credit (exponential decay, 7-day half-life), in batches and in
//! host-id order, which keeps hot host rows out of every report's transaction. The same
//! transaction adds them to each account's and team's credit per day, the history the web
//! pages chart.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgConnection;

/// Fuel per credit: about a billion Wasm instructions (shared with `wasmgrid exec`, which
/// tells a scientist what a run would earn).
pub use wasmgrid_protocol::api::FUEL_PER_CREDIT;
/// Grants folded per sweep transaction.
const FOLD_BATCH: i64 = 5000;

/// The credit of a validated work unit from the fuel its agreeing replicas reported: the
/// lower median. Honest replicas of one work unit report the very same fuel; with the lower
/// median, a cheater can never raise the credit above what an honest replica reported.
pub fn credit_for_fuel(fuels: &[i64]) -> f64 {
    if fuels.is_empty() {
        return 0.0;
    }
    let mut sorted = fuels.to_vec();
    sorted.sort_unstable();
    sorted[(sorted.len() - 1) / 2].max(0) as f64 / FUEL_PER_CREDIT
}

/// The credit one valid replica earns.
#[derive(Debug, Clone, PartialEq)]
pub struct CreditGrant {
    pub replica_id: i64,
    pub host_id: i64,
    pub account_id: i64,
    pub credit: f64,
}

/// Records grants; a second grant for one replica changes nothing.
pub async fn grant_all(connection: &mut PgConnection, grants: &[CreditGrant]) -> sqlx::Result<()> {
    if grants.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&CreditGrant) -> i64| grants.iter().map(f).collect::<Vec<i64>>();
    sqlx::query(
        "insert into credit_grant (replica_id, host_id, account_id, credit)
         select * from unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::float8[])
         on conflict (replica_id) do nothing",
    )
    .bind(column(|g| g.replica_id))
    .bind(column(|g| g.host_id))
    .bind(column(|g| g.account_id))
    .bind(grants.iter().map(|g| g.credit).collect::<Vec<f64>>())
    .execute(connection)
    .await?;
    Ok(())
}

/// Withdraws the credit granted to these replicas, once each; a replica never credited has
/// nothing to withdraw.
pub async fn withdraw_all(
    connection: &mut PgConnection,
    withdrawals: &[crate::work_unit::decide::Withdrawal],
) -> sqlx::Result<()> {
    if withdrawals.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into credit_withdrawal (replica_id, reason)
         select u.replica_id, u.reason
         from unnest($1::bigint[], $2::text[]) as u(replica_id, reason)
         join credit_grant g on g.replica_id = u.replica_id
         on conflict (replica_id) do nothing",
    )
    .bind(withdrawals.iter().map(|w| w.replica_id).collect::<Vec<i64>>())
    .bind(withdrawals.iter().map(|w| w.reason.clone()).collect::<Vec<String>>())
    .execute(connection)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Grant {
    host_id: i64,
    account_id: i64,
    credit: f64,
    granted_at: DateTime<Utc>,
}

/// Folds up to one batch of unapplied grants, and of withdrawals of grants already folded,
/// into the totals; returns how many. Several server processes may run this at once: each
/// takes its own rows (`SKIP LOCKED`). A withdrawal takes off what its grant added, on the
/// day it was granted.
pub async fn fold_grants(connection: &mut PgConnection) -> sqlx::Result<usize> {
    let mut grants: Vec<Grant> = sqlx::query_as(
        "with batch as (
             select replica_id from credit_grant where not applied
             order by replica_id limit $1 for no key update skip locked
         )
         update credit_grant c set applied = true
         from batch where c.replica_id = batch.replica_id
         returning c.host_id, c.account_id, c.credit, c.granted_at",
    )
    .bind(FOLD_BATCH)
    .fetch_all(&mut *connection)
    .await?;
    let withdrawn: Vec<Grant> = sqlx::query_as(
        "with batch as (
             select w.replica_id from credit_withdrawal w
             join credit_grant g on g.replica_id = w.replica_id
             where not w.applied and g.applied
             order by w.replica_id limit $1 for no key update of w skip locked
         )
         update credit_withdrawal w set applied = true
         from batch, credit_grant g
         where w.replica_id = batch.replica_id and g.replica_id = w.replica_id
         returning g.host_id, g.account_id, -g.credit as credit, g.granted_at",
    )
    .bind(FOLD_BATCH)
    .fetch_all(&mut *connection)
    .await?;
    grants.extend(withdrawn);
    if grants.is_empty() {
        return Ok(0);
    }
    let mut per_host: BTreeMap<i64, f64> = BTreeMap::new();
    let mut per_account: BTreeMap<i64, f64> = BTreeMap::new();
    let mut per_account_day: BTreeMap<(i64, NaiveDate), f64> = BTreeMap::new();
    for grant in &grants {
        *per_host.entry(grant.host_id).or_default() += grant.credit;
        *per_account.entry(grant.account_id).or_default() += grant.credit;
        *per_account_day.entry((grant.account_id, grant.granted_at.date_naive())).or_default() += grant.credit;
    }
    add_credit(connection, "host", &per_host).await?;
    add_credit(connection, "account", &per_account).await?;

    let account_ids: Vec<i64> = per_account.keys().copied().collect();
    let teams: Vec<(i64, i64)> =
        sqlx::query_as("select id, team_id from account where id = any($1) and team_id is not null")
            .bind(&account_ids)
            .fetch_all(&mut *connection)
            .await?;
    let team_of: BTreeMap<i64, i64> = teams.into_iter().collect();
    let mut per_team: BTreeMap<i64, f64> = BTreeMap::new();
    let mut per_team_day: BTreeMap<(i64, NaiveDate), f64> = BTreeMap::new();
    for (&(account_id, day), &credit) in &per_account_day {
        if let Some(&team_id) = team_of.get(&account_id) {
            *per_team.entry(team_id).or_default() += credit;
            *per_team_day.entry((team_id, day)).or_default() += credit;
        }
    }
    add_credit(connection, "team", &per_team).await?;
    add_daily_credit(connection, "account_daily_credit", "account_id", &per_account_day).await?;
    add_daily_credit(connection, "team_daily_credit", "team_id", &per_team_day).await?;
    Ok(grants.len())
}

/// Adds credit to the days of accounts or teams in `table`, or takes withdrawn credit off
/// (never below zero: a withdrawal's day has its grant's credit already, folded first). The
/// keys come in (id, day) order, so concurrent sweeps lock the rows in one order and cannot
/// deadlock.
async fn add_daily_credit(
    connection: &mut PgConnection,
    table: &str,
    owner: &str,
    credit: &BTreeMap<(i64, NaiveDate), f64>,
) -> sqlx::Result<()> {
    let (added, taken): (Vec<_>, Vec<_>) = credit.iter().partition(|(_, credit)| **credit >= 0.0);
    let columns = |rows: &[(&(i64, NaiveDate), &f64)]| {
        (
            rows.iter().map(|((id, _), _)| *id).collect::<Vec<i64>>(),
            rows.iter().map(|((_, day), _)| *day).collect::<Vec<NaiveDate>>(),
            rows.iter().map(|(_, credit)| **credit).collect::<Vec<f64>>(),
        )
    };
    if !added.is_empty() {
        let (ids, days, credit) = columns(&added);
        sqlx::query(&format!(
            "insert into {table} ({owner}, day, credit)
             select * from unnest($1::bigint[], $2::date[], $3::float8[])
             on conflict ({owner}, day) do update set credit = {table}.credit + excluded.credit"
        ))
        .bind(ids)
        .bind(days)
        .bind(credit)
        .execute(&mut *connection)
        .await?;
    }
    if !taken.is_empty() {
        let (ids, days, credit) = columns(&taken);
        sqlx::query(&format!(
            "update {table} t set credit = greatest(0, t.credit + u.credit)
             from unnest($1::bigint[], $2::date[], $3::float8[]) as u(id, day, credit)
             where t.{owner} = u.id and t.day = u.day"
        ))
        .bind(ids)
        .bind(days)
        .bind(credit)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// Adds credit to rows of `table` (or takes withdrawn credit off, never below zero), locking them in id order so that concurrent writers
/// cannot deadlock.
async fn add_credit(connection: &mut PgConnection, table: &str, credit: &BTreeMap<i64, f64>) -> sqlx::Result<()> {
    if credit.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = credit.keys().copied().collect();
    let amounts: Vec<f64> = credit.values().copied().collect();
    sqlx::query(&format!("select id from {table} where id = any($1) order by id for no key update"))
        .bind(&ids)
        .fetch_all(&mut *connection)
        .await?;
    sqlx::query(&format!(
        "update {table} t
         set total_credit = greatest(0, t.total_credit + u.credit),
             expavg_credit = greatest(0, decayed_average(t.expavg_credit, t.expavg_time, u.credit, now())),
             expavg_time = now()
         from unnest($1::bigint[], $2::float8[]) as u(id, credit)
         where t.id = u.id"
    ))
    .bind(&ids)
    .bind(&amounts)
    .execute(connection)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_is_the_lower_median_of_the_reported_fuel() {
        assert_eq!(credit_for_fuel(&[3_000_000_000]), 3.0);
        assert_eq!(credit_for_fuel(&[2_000_000_000, 9_000_000_000]), 2.0);
        assert_eq!(credit_for_fuel(&[5_000_000_000, 1_000_000_000, 2_000_000_000]), 2.0);
        assert_eq!(credit_for_fuel(&[]), 0.0);
    }
}
