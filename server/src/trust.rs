//! Host trust, as BOINC keeps it: each error or invalid result halves the host's daily
//! quota (down to 1 replica per core) and resets its run of consecutive valid results; each
//! valid result doubles the quota again, up to the configured maximum.
//!
//! For adaptive replication each host also has, per app version (`host_app_version`), a run
//! of checked valid results, which earns trust, and a run of accepted results, checked or
//! on trust, which sets how often a trusted host is checked; an invalid result ends every
//! run of the host and asks for its results accepted on trust to be looked back at (see
//! [`crate::work_unit::lookback`]).
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
    by_app_version: BTreeMap<(i64, i64), Results>,
}

/// A host's results for an app version, as judged in one transaction.
#[derive(Debug, Default, Clone, Copy)]
struct Results {
    valid: i32,
    on_trust: i32,
    invalid: i32,
}

impl HostEffects {
    /// A result of the host for an app version was checked against others' and agrees.
    pub fn valid(&mut self, host_id: i64, app_version_id: i64) {
        self.by_host.entry(host_id).or_default().valid += 1;
        self.by_app_version.entry((host_id, app_version_id)).or_default().valid += 1;
    }

    /// A result of the host for an app version was accepted on its word: no evidence of
    /// trust, but one more result in its run.
    pub fn accepted_on_trust(&mut self, host_id: i64, app_version_id: i64) {
        self.by_app_version.entry((host_id, app_version_id)).or_default().on_trust += 1;
    }

    /// A result of the host was found wrong: it is caught.
    pub fn invalid(&mut self, host_id: i64, app_version_id: i64) {
        self.by_host.entry(host_id).or_default().invalid += 1;
        self.by_app_version.entry((host_id, app_version_id)).or_default().invalid += 1;
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
        for (key, results) in other.by_app_version {
            let mine = self.by_app_version.entry(key).or_default();
            mine.valid += results.valid;
            mine.on_trust += results.on_trust;
            mine.invalid += results.invalid;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty() && self.by_app_version.is_empty()
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
        .execute(&mut *connection)
        .await?;
        self.apply_app_versions(connection).await
    }

    /// The runs per app version (in (host, app version) order, after the hosts' rows); a
    /// caught host loses every run it has and has its recent results on trust looked back at.
    async fn apply_app_versions(&self, connection: &mut PgConnection) -> sqlx::Result<()> {
        if self.by_app_version.is_empty() {
            return Ok(());
        }
        let keys: Vec<&(i64, i64)> = self.by_app_version.keys().collect();
        let results: Vec<&Results> = self.by_app_version.values().collect();
        let column = |f: fn(&Results) -> i32| results.iter().map(|r| f(r)).collect::<Vec<i32>>();
        // `valid_count` and `invalid_count` count checked results; a caught host's runs are
        // reset below, for every version.
        sqlx::query(
            "insert into host_app_version as t
                 (host_id, app_version_id, consecutive_valid, accepted_in_a_row, valid_count, invalid_count)
             select u.host_id, u.app_version_id, case when u.invalid > 0 then 0 else u.valid end,
                    case when u.invalid > 0 then 0 else u.valid + u.on_trust end, u.valid, u.invalid
             from unnest($1::bigint[], $2::bigint[], $3::int[], $4::int[], $5::int[])
                  as u(host_id, app_version_id, valid, on_trust, invalid)
             on conflict (host_id, app_version_id) do update set
                 consecutive_valid = case when excluded.invalid_count > 0 then 0
                                          else t.consecutive_valid + excluded.valid_count end,
                 accepted_in_a_row = case when excluded.invalid_count > 0 then 0
                                          else t.accepted_in_a_row + excluded.accepted_in_a_row end,
                 valid_count = t.valid_count + excluded.valid_count,
                 invalid_count = t.invalid_count + excluded.invalid_count",
        )
        .bind(keys.iter().map(|(host, _)| *host).collect::<Vec<i64>>())
        .bind(keys.iter().map(|(_, version)| *version).collect::<Vec<i64>>())
        .bind(column(|r| r.valid))
        .bind(column(|r| r.on_trust))
        .bind(column(|r| r.invalid))
        .execute(&mut *connection)
        .await?;
        let mut caught: Vec<i64> =
            self.by_app_version.iter().filter(|(_, results)| results.invalid > 0).map(|((host, _), _)| *host).collect();
        caught.dedup();
        if caught.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "update host_app_version set consecutive_valid = 0, accepted_in_a_row = 0
             where (host_id, app_version_id) in (select host_id, app_version_id from host_app_version
                                                 where host_id = any($1)
                                                   and (consecutive_valid > 0 or accepted_in_a_row > 0)
                                                 order by host_id, app_version_id for no key update)",
        )
        .bind(&caught)
        .execute(&mut *connection)
        .await?;
        sqlx::query(
            "insert into lookback (host_id, caught_at)
             select caught.id, now() from unnest($1::bigint[]) as caught(id)
             where exists (select 1 from replica where host_id = caught.id and on_trust)
             on conflict do nothing",
        )
        .bind(&caught)
        .execute(connection)
        .await?;
        Ok(())
    }
}
