//! Banning a host, or an account with all its hosts. A banned host is refused work and
//! reports (403, saying why) from the ban's commit on; what it holds and its results not yet
//! validated stop counting and go to other hosts at the servers' next sweep (see
//! [`crate::work_unit::ban`]); the results it had accepted on trust are rechecked. With `revoke_credit`, every credit it was granted is withdrawn, on
//! record in the ledger. Unbanning lets it work again; withdrawn credit stays withdrawn.

use serde::Serialize;
use sqlx::PgConnection;

/// What is banned: one host, or an account and every host of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Host(i64),
    Account(i64),
}

impl Target {
    fn table(self) -> &'static str {
        match self {
            Self::Host(_) => "host",
            Self::Account(_) => "account",
        }
    }

    fn id(self) -> i64 {
        match self {
            Self::Host(id) | Self::Account(id) => id,
        }
    }
}

/// What a ban did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BanSummary {
    /// The hosts it concerns (an account's are all of them).
    pub hosts: Vec<i64>,
    /// Replicas the servers' next sweep takes back: running ones, and results not yet
    /// validated.
    pub replicas_to_take_back: i64,
    /// Credit grants withdrawn (with `revoke_credit`).
    pub credit_grants_withdrawn: u64,
    /// Whether this ban sent the results the hosts had accepted on trust to be rechecked.
    pub rechecking_results_on_trust: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BanError {
    #[error("there is no {0} {1}")]
    NotFound(&'static str, i64),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Bans `target` for `reason`. Banning again updates the reason and finishes anything an
/// interruption left undone.
pub async fn ban(
    connection: &mut PgConnection,
    target: Target,
    reason: &str,
    revoke_credit: bool,
) -> Result<BanSummary, BanError> {
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    let table = target.table();
    let marked = sqlx::query(&format!(
        "update {table} set banned_at = coalesce(banned_at, now()), ban_reason = nullif($2, '') where id = $1"
    ))
    .bind(target.id())
    .bind(reason)
    .execute(&mut *transaction)
    .await?;
    if marked.rows_affected() == 0 {
        return Err(BanError::NotFound(table, target.id()));
    }
    let hosts = hosts_of(&mut transaction, target).await?;
    let replicas_to_take_back: i64 = sqlx::query_scalar(
        "select count(*) from replica r join work_unit w on w.id = r.work_unit_id
         where r.host_id = any($1)
           and (r.state = 'in_progress'
                or (r.outcome = 'success' and r.validate_state = 'pending' and w.state = 'active'))",
    )
    .bind(&hosts)
    .fetch_one(&mut *transaction)
    .await?;
    let credit_grants_withdrawn = if revoke_credit {
        sqlx::query(
            "insert into credit_withdrawal (replica_id, reason)
             select replica_id, $2 from credit_grant where host_id = any($1)
             on conflict (replica_id) do nothing",
        )
        .bind(&hosts)
        .bind(format!("revoked by the operator: {}", if reason.is_empty() { "banned" } else { reason }))
        .execute(&mut *transaction)
        .await?
        .rows_affected()
    } else {
        0
    };
    // As if caught: what they had accepted on trust within the look-back window is run again.
    let rechecking_results_on_trust = sqlx::query(
        "insert into lookback (host_id, caught_at)
         select banned.id, now() from unnest($1::bigint[]) as banned(id)
         where exists (select 1 from replica where host_id = banned.id and on_trust)
         on conflict do nothing",
    )
    .bind(&hosts)
    .execute(&mut *transaction)
    .await?
    .rows_affected()
        > 0;
    transaction.commit().await?;
    tracing::info!(target = table, id = target.id(), replicas_to_take_back, credit_grants_withdrawn, "banned");
    Ok(BanSummary { hosts, replicas_to_take_back, credit_grants_withdrawn, rechecking_results_on_trust })
}

/// Lifts the ban on `target`. Returns whether it was banned.
pub async fn unban(connection: &mut PgConnection, target: Target) -> Result<bool, BanError> {
    let table = target.table();
    let was_banned: Option<bool> = sqlx::query_scalar(&format!(
        "update {table} t set banned_at = null, ban_reason = null
         from (select id, banned_at is not null as was_banned from {table} where id = $1 for no key update) before
         where t.id = before.id
         returning before.was_banned"
    ))
    .bind(target.id())
    .fetch_optional(&mut *connection)
    .await?;
    let was_banned = was_banned.ok_or(BanError::NotFound(table, target.id()))?;
    tracing::info!(target = table, id = target.id(), was_banned, "unbanned");
    Ok(was_banned)
}

async fn hosts_of(connection: &mut PgConnection, target: Target) -> sqlx::Result<Vec<i64>> {
    match target {
        Target::Host(id) => Ok(vec![id]),
        Target::Account(id) => {
            sqlx::query_scalar("select id from host where account_id = $1 order by id")
                .bind(id)
                .fetch_all(connection)
                .await
        }
    }
}
