//! Banned hosts (`wasmgrid-server host ban`, `account ban`): the replicas they hold and their
//! results not yet validated stop counting, as if the hosts had never replied, and their work
//! units move on, asking other hosts where they need to.
//!
//! The ban command only marks the host or account: every server process takes back what
//! banned hosts hold in its sweeps, with its own settings for deciding work units, the way it
//! handles missed deadlines. Results already validated stay (the operator may withdraw their
//! credit, and those accepted on trust are rechecked, see [`crate::admin::bans`]).

use sqlx::PgConnection;

use super::{Event, Rules, WorkUnitError, advance};
use crate::trust::HostEffects;

/// Work units moved on per transaction.
const BAN_BATCH: i64 = 500;

/// The reason recorded on the replicas a ban takes back.
pub const BANNED: &str = "its host was banned by the project";

/// What a banned host holds that still counts: a replica running, or a result reported
/// but not yet validated while its work unit needs an answer (`r` and `w` are SQL aliases).
const HELD: &str = "(r.state = 'in_progress'
     or (r.outcome = 'success' and r.validate_state = 'pending' and w.state = 'active'))";

/// Takes back up to a batch of what banned hosts hold and moves those work units on;
/// returns how many replicas it took back. Work units another process holds are skipped
/// and picked up next time.
pub async fn take_back_from_banned(connection: &mut PgConnection, rules: Rules) -> Result<u64, WorkUnitError> {
    let banned: Vec<i64> = sqlx::query_scalar(
        "select h.id from host h where h.banned_at is not null
         union select h.id from host h join account a on a.id = h.account_id where a.banned_at is not null",
    )
    .fetch_all(&mut *connection)
    .await?;
    if banned.is_empty() {
        return Ok(0);
    }
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    let work_unit_ids: Vec<i64> = sqlx::query_scalar(&format!(
        "select w.id from work_unit w
         where w.id in (select r.work_unit_id from replica r join work_unit w on w.id = r.work_unit_id
                        where r.host_id = any($1) and {HELD} limit $2)
         order by w.id
         for no key update of w skip locked"
    ))
    .bind(&banned)
    .bind(BAN_BATCH)
    .fetch_all(&mut *transaction)
    .await?;
    if work_unit_ids.is_empty() {
        return Ok(0);
    }
    let event = Banned { host_ids: banned, work_unit_ids: work_unit_ids.clone() };
    let taken_back = advance(&mut transaction, &work_unit_ids, event, rules).await?.apply(&mut transaction).await?;
    transaction.commit().await?;
    if taken_back > 0 {
        tracing::info!(replicas = taken_back, "took back what banned hosts held");
    }
    Ok(taken_back)
}

/// The banned hosts' replicas of these work units.
struct Banned {
    host_ids: Vec<i64>,
    work_unit_ids: Vec<i64>,
}

impl Event for Banned {
    type Output = u64;

    async fn record(self, connection: &mut PgConnection, _: &mut HostEffects) -> Result<u64, WorkUnitError> {
        let taken_back = sqlx::query(&format!(
            "update replica r set state = 'over', outcome = 'no_reply', error_reason = $3
             from work_unit w
             where w.id = r.work_unit_id and r.work_unit_id = any($1) and r.host_id = any($2) and {HELD}"
        ))
        .bind(&self.work_unit_ids)
        .bind(&self.host_ids)
        .bind(BANNED)
        .execute(connection)
        .await?;
        Ok(taken_back.rows_affected())
    }
}
