//! Handing replicas to hosts: claiming new ones, sending again those whose reply was lost,
//! and abandoning those no longer needed.
//!
//! Claiming is one statement over the queue of unsent replicas with `FOR UPDATE SKIP
//! LOCKED`, so any number of server processes can hand out work from one database without
//! giving a replica twice. The hosts of one account are serialised by an advisory lock, so
//! that they cannot be handed two replicas of one work unit at the same moment; a unique
//! index backs that rule up.
//!
//! A host lists the replicas it holds, so a reply lost after the server committed it
//! costs nothing: the replicas it carried go out again with the next one.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{Assignment, BlobRef, InputFile, RunLimits};
use wasmgrid_protocol::signing::ModuleSignature;

use super::{AWAITS_REPORT, WorkUnitError};
use crate::accounts::{Host, HostKind};
use crate::config::{AdaptiveReplication, SchedulerConfig};
use crate::trust::HostEffects;

#[derive(sqlx::FromRow)]
struct HostAllowance {
    daily_quota: i32,
    replicas_today: i32,
    quota_day_is_today: bool,
    in_progress: i64,
}

/// How many more replicas the host may take now: what is left of its daily quota, and of
/// what it may hold at once, both scaled by the cores the server believes it has.
///
/// The caller holds the account's claim lock, which every claim for this host takes until
/// its transaction commits (with the count of replicas sent), so the figures read here
/// include every claim before this one and none can slip in before this one commits.
async fn remaining_allowance(
    connection: &mut PgConnection,
    host: &Host,
    scheduler: &SchedulerConfig,
    effects: &HostEffects,
) -> sqlx::Result<i64> {
    let allowance: HostAllowance = sqlx::query_as(
        "select daily_quota, replicas_today, quota_day = current_date as quota_day_is_today,
                (select count(*) from replica where host_id = h.id and state = 'in_progress') as in_progress
         from host h where id = $1",
    )
    .bind(host.id)
    .fetch_one(connection)
    .await?;
    let cores = scheduler.believed_cores(host.cores);
    let used_today = if allowance.quota_day_is_today { allowance.replicas_today } else { 0 };
    let daily_quota = effects.quota_after(host.id, allowance.daily_quota, scheduler.daily_quota_per_core);
    let left_today = daily_quota * cores - i64::from(used_today);
    let room_to_hold = i64::from(scheduler.max_in_progress_per_core) * cores - allowance.in_progress;
    Ok(left_today.min(room_to_hold))
}

#[derive(sqlx::FromRow)]
struct Claimed {
    replica_id: i64,
    work_unit_id: i64,
    deadline_at: DateTime<Utc>,
    /// Whether its app asks for adaptive replication (read by a new claim only: a replica
    /// sent again was decided when first claimed).
    #[sqlx(default)]
    adaptive: bool,
}

#[derive(sqlx::FromRow)]
struct WorkUnitForRun {
    id: i64,
    name: String,
    args: serde_json::Value,
    module_sha256: String,
    module_bytes: i64,
    stdin_sha256: Option<String>,
    stdin_bytes: Option<i64>,
    seed: i64,
    fuel_limit: i64,
    memory_limit_bytes: i64,
    output_limit_bytes: i64,
    wall_time_limit_seconds: i64,
    publisher: String,
    public_key: Option<String>,
    module_signature: Option<String>,
}

#[derive(sqlx::FromRow)]
struct WorkUnitFileRow {
    work_unit_id: i64,
    name: String,
    sha256: String,
    bytes: i64,
}

/// Hands up to `want` unsent replicas to `host`, in `network`: at most one per work unit,
/// none of an app version the host refused to run (see [`crate::signing`]),
/// none of a work unit its account already holds, none of a work unit a host of its network
/// was handed (unless the grid is private or the app allows it), none that needs more memory
/// than the host has, no more than its daily quota (as `effects`, the request's reports so
/// far, will leave it) and no more than it may hold at once. A browser host's deadline is the
/// work unit's wall-clock limit and [`SchedulerConfig::browser_grace`], when that is sooner
/// than its own. The caller records the number sent (through [`HostEffects::contacted`])
/// before it commits.
pub async fn claim_replicas(
    connection: &mut PgConnection,
    host: &Host,
    network: &str,
    want: u32,
    scheduler: &SchedulerConfig,
    effects: &HostEffects,
) -> Result<Vec<Assignment>, WorkUnitError> {
    // Hosts of one account queue here, so the `not exists` below sees every replica the
    // account was handed before, and the allowance below every replica this host was sent:
    // checking it and counting what is taken are one step.
    sqlx::query("select pg_advisory_xact_lock($1)").bind(host.account_id).execute(&mut *connection).await?;
    // So do the hosts of one network, for the rule that a work unit's replicas go to
    // different networks (the two-key lock is another key space than the account's).
    if !scheduler.private_grid {
        sqlx::query("select pg_advisory_xact_lock(1, hashtext($1))").bind(network).execute(&mut *connection).await?;
    }
    let allowed = remaining_allowance(connection, host, scheduler, effects).await?.min(i64::from(want));
    if allowed <= 0 {
        return Ok(Vec::new());
    }
    // Twice as many candidates as wanted are locked, because the replicas of one work unit
    // sit next to each other in the queue and only one of them may be taken. The number is
    // written into the statement, rounded up to a power of two (a handful of statements in
    // all): a plan made once for a limit it cannot see walks the whole queue, and the
    // scheduler's transaction keeps its plans (see `crate::work_fetch`).
    let candidates = candidate_limit(allowed);
    let claimed: Vec<Claimed> = sqlx::query_as(&format!(
        "with candidate as (
             select r.id, r.work_unit_id, r.priority
             from replica r
             join work_unit w on w.id = r.work_unit_id
             join app_version v on v.id = w.app_version_id
             join app a on a.id = v.app_id
             where r.state = 'unsent'
               and w.memory_limit_bytes <= $3
               and not exists (
                   select 1 from replica mine
                   where mine.work_unit_id = r.work_unit_id and mine.account_id = $2)
               and ($7 or not a.distinct_networks or not exists (
                   select 1 from replica near
                   where near.work_unit_id = r.work_unit_id and near.network = $8))
               and not exists (
                   select 1 from module_refusal refused
                   where refused.host_id = $1 and refused.app_version_id = w.app_version_id)
             order by r.priority desc, r.id
             limit {candidates}
             for no key update of r skip locked
         ),
         chosen as (
             select id from (
                 select distinct on (work_unit_id) id, priority
                 from candidate
                 order by work_unit_id, priority desc, id
             ) one_per_work_unit
             order by priority desc, id
             limit $4
         )
         update replica r
         set state = 'in_progress', host_id = $1, account_id = $2, network = $8, sent_at = now(),
             deadline_at = now() + case
                 -- In seconds as a double, capped by the deadline: a wall-clock limit may be
                 -- far beyond what an interval (or a bigint sum) holds.
                 when $5 then make_interval(secs => least(w.wall_time_limit_seconds::float8 + $6::float8,
                                                          extract(epoch from w.delay_bound)::float8))
                 else w.delay_bound
             end
         from chosen, work_unit w
         where r.id = chosen.id and w.id = r.work_unit_id
         returning r.id as replica_id, r.work_unit_id, r.deadline_at,
                   exists (select 1 from app_version v join app a on a.id = v.app_id
                           where v.id = w.app_version_id and a.adaptive_replication) as adaptive"
    ))
    .bind(host.id)
    .bind(host.account_id)
    .bind(scheduler.believed_memory(host.memory_bytes))
    .bind(allowed)
    .bind(host.kind == HostKind::Browser)
    .bind(i64::try_from(scheduler.browser_grace.as_secs()).unwrap_or(i64::MAX))
    .bind(scheduler.private_grid)
    .bind(network)
    .fetch_all(&mut *connection)
    .await?;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    // Most apps replicate every work unit: their claims skip the query for trust.
    if claimed.iter().any(|claim| claim.adaptive) {
        send_alone_on_trust(connection, host, &claimed, &scheduler.adaptive).await?;
    }
    describe_assignments(connection, claimed).await
}

/// How many unsent replicas a claim for `allowed` of them locks and looks at: twice as many,
/// rounded up to a power of two.
fn candidate_limit(allowed: i64) -> u64 {
    (allowed.clamp(1, 1 << 20) as u64 * 2).next_power_of_two()
}

#[derive(sqlx::FromRow)]
struct TrustedClaim {
    replica_id: i64,
    work_unit_id: i64,
    consecutive_valid: i32,
    accepted_in_a_row: i32,
}

/// Adaptive replication: of the replicas just claimed, those of apps that ask for it, whose
/// host is trusted for the app version (a run of checked valid results, and never caught
/// with a wrong one for this version) and whose work unit no other host is running or has
/// run, go alone unless a check is drawn: their work units' unsent replicas are no longer
/// needed, and the result will be accepted on the host's word (see [`super::decide`]).
///
/// An unsent sibling that another claim holds locked is skipped, not waited for (two claims
/// doing this for one work unit would wait on each other): it goes out, and the work unit
/// is then replicated as usual.
async fn send_alone_on_trust(
    connection: &mut PgConnection,
    host: &Host,
    claimed: &[Claimed],
    adaptive: &AdaptiveReplication,
) -> Result<(), WorkUnitError> {
    let claimed_ids: Vec<i64> = claimed.iter().map(|c| c.replica_id).collect();
    let trusted: Vec<TrustedClaim> = sqlx::query_as(
        "select r.id as replica_id, r.work_unit_id, t.consecutive_valid, t.accepted_in_a_row
         from replica r
         join work_unit w on w.id = r.work_unit_id
         join app_version v on v.id = w.app_version_id
         join app a on a.id = v.app_id
         join host_app_version t on t.host_id = $2 and t.app_version_id = w.app_version_id
         where r.id = any($1) and a.adaptive_replication and w.min_quorum >= 2
           and t.consecutive_valid >= $3 and t.invalid_count = 0
           and not exists (select 1 from replica other
                           where other.work_unit_id = r.work_unit_id and other.id <> r.id
                             and (other.state = 'in_progress' or other.outcome = 'success'))",
    )
    .bind(&claimed_ids)
    .bind(host.id)
    .bind(i32::try_from(adaptive.trusted_after).unwrap_or(i32::MAX))
    .fetch_all(&mut *connection)
    .await?;
    let alone: Vec<&TrustedClaim> = trusted
        .iter()
        .filter(|claim| {
            let count = |run: i32| u32::try_from(run).unwrap_or(0);
            let checked = adaptive.check_probability(count(claim.consecutive_valid), count(claim.accepted_in_a_row));
            rand::random::<f64>() >= checked
        })
        .collect();
    if alone.is_empty() {
        return Ok(());
    }
    let replica_ids: Vec<i64> = alone.iter().map(|claim| claim.replica_id).collect();
    let work_unit_ids: Vec<i64> = alone.iter().map(|claim| claim.work_unit_id).collect();
    sqlx::query("update replica set on_trust = true where id = any($1)")
        .bind(&replica_ids)
        .execute(&mut *connection)
        .await?;
    sqlx::query(
        "update replica set state = 'over', outcome = 'didnt_need'
         where id in (select id from replica
                      where work_unit_id = any($1) and state = 'unsent'
                      order by id for no key update skip locked)",
    )
    .bind(&work_unit_ids)
    .execute(connection)
    .await?;
    tracing::debug!(host.id = host.id, replicas = replica_ids.len(), "replicas sent alone on trust");
    Ok(())
}

/// Everything the host needs to run each claimed replica.
async fn describe_assignments(
    connection: &mut PgConnection,
    claimed: Vec<Claimed>,
) -> Result<Vec<Assignment>, WorkUnitError> {
    let work_unit_ids: Vec<i64> = claimed.iter().map(|c| c.work_unit_id).collect();
    let work_units: Vec<WorkUnitForRun> = sqlx::query_as(
        "select w.id, w.name, w.args, v.module_sha256, mb.bytes as module_bytes,
                w.stdin_sha256, sb.bytes as stdin_bytes, w.seed,
                w.fuel_limit, w.memory_limit_bytes, w.output_limit_bytes, w.wall_time_limit_seconds,
                p.name as publisher, k.public_key, v.module_signature
         from work_unit w
         join app_version v on v.id = w.app_version_id
         join app a on a.id = v.app_id
         join publisher p on p.id = a.publisher_id
         left join publisher_key k on k.id = v.signing_key_id
         join blob mb on mb.sha256 = v.module_sha256
         left join blob sb on sb.sha256 = w.stdin_sha256
         where w.id = any($1)",
    )
    .bind(&work_unit_ids)
    .fetch_all(&mut *connection)
    .await?;
    let files: Vec<WorkUnitFileRow> = sqlx::query_as(
        "select f.work_unit_id, f.name, f.sha256, b.bytes
         from work_unit_file f join blob b on b.sha256 = f.sha256
         where f.work_unit_id = any($1)
         order by f.work_unit_id, f.name",
    )
    .bind(&work_unit_ids)
    .fetch_all(&mut *connection)
    .await?;

    let mut files_by_work_unit: HashMap<i64, Vec<InputFile>> = HashMap::new();
    for file in files {
        files_by_work_unit
            .entry(file.work_unit_id)
            .or_default()
            .push(InputFile { name: file.name, blob: blob_ref(&file.sha256, file.bytes)? });
    }
    let work_units: HashMap<i64, WorkUnitForRun> = work_units.into_iter().map(|w| (w.id, w)).collect();

    claimed
        .into_iter()
        .map(|claim| {
            let work_unit = work_units
                .get(&claim.work_unit_id)
                .ok_or_else(|| anyhow::anyhow!("claimed work unit {} vanished", claim.work_unit_id))?;
            let stdin = match (&work_unit.stdin_sha256, work_unit.stdin_bytes) {
                (Some(hash), Some(bytes)) => Some(blob_ref(hash, bytes)?),
                _ => None,
            };
            Ok(Assignment {
                replica_id: claim.replica_id,
                work_unit_id: work_unit.id,
                work_unit_name: work_unit.name.clone(),
                module: blob_ref(&work_unit.module_sha256, work_unit.module_bytes)?,
                args: serde_json::from_value(work_unit.args.clone())
                    .map_err(|error| anyhow::anyhow!("stored arguments are not strings: {error}"))?,
                stdin,
                inputs: files_by_work_unit.remove(&work_unit.id).unwrap_or_default(),
                limits: RunLimits {
                    fuel: work_unit.fuel_limit as u64,
                    memory_bytes: work_unit.memory_limit_bytes as u64,
                    output_bytes: work_unit.output_limit_bytes as u64,
                    wall_time_seconds: work_unit.wall_time_limit_seconds as u64,
                },
                seed: work_unit.seed as u64,
                deadline: claim.deadline_at,
                publisher: work_unit.publisher.clone(),
                module_signature: module_signature(work_unit)?,
            })
        })
        .collect()
}

/// The stored signature of the work unit's module, as the client checks it.
fn module_signature(work_unit: &WorkUnitForRun) -> Result<Option<ModuleSignature>, WorkUnitError> {
    let (Some(public_key), Some(signature)) = (&work_unit.public_key, &work_unit.module_signature) else {
        return Ok(None);
    };
    let stored = |error| anyhow::anyhow!("stored signature of work unit {}: {error}", work_unit.id);
    Ok(Some(ModuleSignature {
        public_key: public_key.parse().map_err(stored)?,
        signature: signature.parse().map_err(stored)?,
    }))
}

fn blob_ref(hash: &str, bytes: i64) -> Result<BlobRef, WorkUnitError> {
    let hash: Sha256Hash = hash.parse().map_err(|_| anyhow::anyhow!("stored hash {hash:?} is malformed"))?;
    Ok(BlobRef::new(hash, bytes as u64))
}

/// What comparing a host's list of the replicas it holds with what the server believes
/// found.
#[derive(Default)]
pub struct Reconciled {
    /// Replicas handed to the host that it does not list: the reply that carried them was
    /// lost after the server committed it. They go out again, with their deadlines.
    pub lost: Vec<Assignment>,
    /// Replicas the host lists that it should not run: never its own, or over (not needed,
    /// or given up after their deadline... unless a late result would still count).
    pub unwanted: Vec<i64>,
}

/// BOINC's "resend lost results": compares the replicas a host says it holds (with those it
/// reports in this request) with those the server handed it.
pub async fn reconcile_held(
    connection: &mut PgConnection,
    host: &Host,
    held: &[i64],
    reported: &HashSet<i64>,
) -> Result<Reconciled, WorkUnitError> {
    let held: HashSet<i64> = held.iter().copied().collect();
    let handed: Vec<Claimed> = sqlx::query_as(
        "select id as replica_id, work_unit_id, deadline_at from replica
         where host_id = $1 and state = 'in_progress' and deadline_at > now()
         order by id",
    )
    .bind(host.id)
    .fetch_all(&mut *connection)
    .await?;
    let handed_ids: HashSet<i64> = handed.iter().map(|claim| claim.replica_id).collect();
    let lost: Vec<Claimed> = handed
        .into_iter()
        .filter(|claim| !held.contains(&claim.replica_id) && !reported.contains(&claim.replica_id))
        .collect();
    let lost = if lost.is_empty() { Vec::new() } else { describe_assignments(connection, lost).await? };

    let unknown: Vec<i64> =
        held.iter().copied().filter(|id| !handed_ids.contains(id) && !reported.contains(id)).collect();
    let unwanted = if unknown.is_empty() {
        Vec::new()
    } else {
        // A replica past its deadline may still be reported (a late result counts), so the
        // host may finish it; anything else it lists is not its to run.
        let may_finish: HashSet<i64> = sqlx::query_scalar(&format!(
            "select r.id from replica r where r.id = any($1) and r.host_id = $2 and {AWAITS_REPORT}"
        ))
        .bind(&unknown)
        .bind(host.id)
        .fetch_all(&mut *connection)
        .await?
        .into_iter()
        .collect();
        let mut unwanted: Vec<i64> = unknown.into_iter().filter(|id| !may_finish.contains(id)).collect();
        unwanted.sort_unstable();
        unwanted
    };
    Ok(Reconciled { lost, unwanted })
}

/// Replicas the host still runs for work units that have failed: nobody needs them now.
/// They end as "didn't need" and the host is told to abort them.
pub async fn abandon_unneeded_replicas(connection: &mut PgConnection, host_id: i64) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "update replica r set state = 'over', outcome = 'didnt_need'
         from work_unit w
         where w.id = r.work_unit_id and r.host_id = $1 and r.state = 'in_progress' and w.state = 'failed'
         returning r.id",
    )
    .bind(host_id)
    .fetch_all(connection)
    .await
}

#[cfg(test)]
mod tests {
    use super::candidate_limit;

    #[test]
    fn a_claim_looks_at_twice_what_it_may_take_rounded_up_to_a_power_of_two() {
        assert_eq!(candidate_limit(0), 2);
        assert_eq!(candidate_limit(1), 2);
        assert_eq!(candidate_limit(3), 8);
        assert_eq!(candidate_limit(32), 64);
        assert_eq!(candidate_limit(33), 128);
        assert_eq!(candidate_limit(i64::MAX), 1 << 21);
    }
}
