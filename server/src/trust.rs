//! Host trust, as BOINC keeps it: each error or invalid result halves the host's daily
//! quota (down to 1 replica per core) and resets its run of consecutive valid results; each
//! valid result doubles the quota again, up to the configured maximum.
//!
//! Effects on hosts are collected during a transaction and applied at its end, in host-id
//! order, because one host's report can change other hosts' rows (validation marks their
//! replicas valid or invalid); a fixed order keeps such transactions from deadlocking.

use std::collections::BTreeMap;

use sqlx::PgConnection;

#[derive(Debug, Default, Clone, Copy)]
struct Effect {
    valid: i32,
    invalid: i32,
    errors: i32,
    sent: i32,
    contacted: bool,
}

/// What events and validations say about hosts, collected during a transaction and applied
/// at its end, once.
#[derive(Debug, Default)]
#[must_use = "effects on hosts change nothing until applied"]
pub struct HostEffects {
    by_host: BTreeMap<i64, Effect>,
}

impl HostEffects {
    pub fn valid(&mut self, host_id: i64) {
        self.by_host.entry(host_id).or_default().valid += 1;
    }

    pub fn invalid(&mut self, host_id: i64) {
        self.by_host.entry(host_id).or_default().invalid += 1;
    }

    pub fn error(&mut self, host_id: i64) {
        self.by_host.entry(host_id).or_default().errors += 1;
    }

    /// The host made a request and was sent `sent` replicas.
    pub fn contacted(&mut self, host_id: i64, sent: i32) {
        let effect = self.by_host.entry(host_id).or_default();
        effect.contacted = true;
        effect.sent += sent;
    }

    /// Adds `other`'s effects to these.
    pub fn merge(&mut self, other: HostEffects) {
        for (host_id, effect) in other.by_host {
            let mine = self.by_host.entry(host_id).or_default();
            mine.valid += effect.valid;
            mine.invalid += effect.invalid;
            mine.errors += effect.errors;
            mine.sent += effect.sent;
            mine.contacted |= effect.contacted;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    /// The per-core quota `host_id` will have once these effects are applied, given the one
    /// it has now: so a request whose reports are validated may take work by its new quota
    /// at once. The same rule as [`HostEffects::apply`] writes.
    pub fn quota_after(&self, host_id: i64, current: i32, max_daily_quota: u32) -> i64 {
        let Some(effect) = self.by_host.get(&host_id) else { return i64::from(current) };
        let exponent = f64::from(effect.valid - effect.invalid - effect.errors);
        let quota = (f64::from(current) * exponent.exp2()).floor();
        (quota.max(1.0) as i64).min(i64::from(max_daily_quota))
    }

    /// Writes the collected effects. `max_daily_quota` is the per-core quota of a fully
    /// trusted host.
    pub async fn apply(self, connection: &mut PgConnection, max_daily_quota: u32) -> sqlx::Result<()> {
        if self.by_host.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = self.by_host.keys().copied().collect();
        let effects: Vec<Effect> = self.by_host.values().copied().collect();
        let column = |f: fn(&Effect) -> i32| effects.iter().map(f).collect::<Vec<i32>>();
        sqlx::query("select id from host where id = any($1) order by id for no key update")
            .bind(&ids)
            .fetch_all(&mut *connection)
            .await?;
        sqlx::query(
            "update host h set
                 valid_count = h.valid_count + u.valid,
                 invalid_count = h.invalid_count + u.invalid,
                 error_count = h.error_count + u.errors,
                 consecutive_valid = case when u.invalid + u.errors > 0 then u.valid
                                          else h.consecutive_valid + u.valid end,
                 daily_quota = least($7::int, greatest(1,
                     floor(h.daily_quota * power(2.0, u.valid - u.invalid - u.errors))))::int,
                 replicas_today = case when h.quota_day = current_date then h.replicas_today + u.sent
                                       else u.sent end,
                 quota_day = current_date,
                 last_contact_at = case when u.contacted then now() else h.last_contact_at end
             from unnest($1::bigint[], $2::int[], $3::int[], $4::int[], $5::int[], $6::bool[])
                  as u(id, valid, invalid, errors, sent, contacted)
             where h.id = u.id",
        )
        .bind(&ids)
        .bind(column(|e| e.valid))
        .bind(column(|e| e.invalid))
        .bind(column(|e| e.errors))
        .bind(column(|e| e.sent))
        .bind(effects.iter().map(|e| e.contacted).collect::<Vec<bool>>())
        .bind(i32::try_from(max_daily_quota).unwrap_or(i32::MAX))
        .execute(connection)
        .await?;
        Ok(())
    }
}
