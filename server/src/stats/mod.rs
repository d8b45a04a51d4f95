//! The project's public statistics: totals, leaderboards, users, teams, hosts and the
//! project's status. The web pages render them; `/api/v1/stats/...` serves them as JSON,
//! and [`export`] as a daily dump of everyone's credit.
//!
//! Every query reads through an index: leaderboards page in index order, detail pages look
//! up one row and its few neighbours, and the totals and status that need counting whole
//! tables come from a cache refreshed every ten seconds ([`StatsCache`]).

pub mod export;

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use sqlx::PgConnection;
use wasmgrid_protocol::API_PREFIX;
use wasmgrid_protocol::stats::{
    CREDIT_HISTORY_DAYS, DayCredit, HostStats, HostSummary, HourCount, Leaderboard, Named, Order, Progress,
    ProjectStatus, Ranked, RecentResult, StateCount, TeamStats, Totals, UserStats,
};

use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiPath, ApiQuery};

/// Rows per leaderboard page: the top 100 on the first.
pub const PER_PAGE: i64 = 100;
/// Deepest page served (the first 100,000 ranks): past it, a page would skip too much of the
/// index to stay fast.
pub const MAX_PAGE: i64 = 1_000;
/// A host counts as active if it asked for work within this long.
const ACTIVE_WITHIN: &str = "1 day";
/// Tables smaller than this (by the planner's estimate) are counted exactly for paging.
const EXACT_COUNT_BELOW: i64 = 50_000;
/// How long counted totals and status are served before they are counted again.
const CACHED_FOR: Duration = Duration::from_secs(10);

/// The recent average credit as of now: stored values decay from their last update.
const RECENT: &str = "decayed_average(expavg_credit, expavg_time, 0, now())";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{API_PREFIX}/stats/totals"), get(totals_handler))
        .route(&format!("{API_PREFIX}/stats/users"), get(users_handler))
        .route(&format!("{API_PREFIX}/stats/teams"), get(teams_handler))
        .route(&format!("{API_PREFIX}/stats/hosts"), get(hosts_handler))
        .route(&format!("{API_PREFIX}/stats/users/{{id}}"), get(user_handler))
        .route(&format!("{API_PREFIX}/stats/teams/{{id}}"), get(team_handler))
        .route(&format!("{API_PREFIX}/stats/hosts/{{id}}"), get(host_handler))
        .route(&format!("{API_PREFIX}/stats/status"), get(status_handler))
        .route(&format!("{API_PREFIX}/stats/export/{{file}}"), get(export::export_handler))
}

/// `?order=total|recent&page=N`.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// By total credit (the default) or by recent average credit.
    #[serde(default)]
    #[param(inline)]
    pub order: Order,
    /// The page, from 1 (the default); 100 rows a page.
    #[param(minimum = 1, maximum = 1000)]
    pub page: Option<i64>,
}

impl PageQuery {
    fn page(&self) -> ApiResult<i64> {
        let page = self.page.unwrap_or(1);
        if !(1..=MAX_PAGE).contains(&page) {
            return Err(ApiError::bad_request(format!("page must be between 1 and {MAX_PAGE}")));
        }
        Ok(page)
    }
}

/// Which leaderboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Board {
    Users,
    Teams,
    Hosts,
}

/// A value computed at most every [`CACHED_FOR`]: the totals and the project's status
/// count whole tables, which no page view should do each time. When it is out of date,
/// one request computes it again while the others are served the old value.
pub struct Cached<T> {
    value: Mutex<Option<(Instant, T)>>,
    refreshing: AtomicBool,
}

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Self { value: Mutex::new(None), refreshing: AtomicBool::new(false) }
    }
}

impl<T: Clone> Cached<T> {
    /// The cached value, or a fresh one from `compute` when it is older than [`CACHED_FOR`]
    /// and no other request is computing one already.
    pub async fn get_or<F: Future<Output = ApiResult<T>>>(&self, compute: impl FnOnce() -> F) -> ApiResult<T> {
        let stale = match self.value.lock().expect("cache poisoned").as_ref() {
            Some((at, value)) if at.elapsed() < CACHED_FOR => return Ok(value.clone()),
            Some((_, value)) => Some(value.clone()),
            None => None,
        };
        if let Some(stale) = stale
            && self.refreshing.swap(true, Ordering::AcqRel)
        {
            return Ok(stale);
        }
        self.refreshing.store(true, Ordering::Release);
        // Cleared however this ends, a request given up half-way included.
        let _refreshing = ClearOnDrop(&self.refreshing);
        let computed = compute().await;
        if let Ok(value) = &computed {
            *self.value.lock().expect("cache poisoned") = Some((Instant::now(), value.clone()));
        }
        computed
    }
}

struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What the statistics keep between requests.
#[derive(Default)]
pub struct StatsCache {
    pub totals: Cached<Totals>,
    pub status: Cached<ProjectStatus>,
}

impl StatsCache {
    pub async fn totals(&self, connection: &mut PgConnection) -> ApiResult<Totals> {
        self.totals.get_or(|| count_totals(connection)).await
    }

    /// The status with the uptime of now, whenever its counts were taken.
    pub async fn status(&self, connection: &mut PgConnection, uptime: Duration) -> ApiResult<ProjectStatus> {
        let mut status = self.status.get_or(|| status(connection, uptime)).await?;
        status.uptime_seconds = uptime.as_secs();
        Ok(status)
    }
}

async fn count_totals(connection: &mut PgConnection) -> ApiResult<Totals> {
    let (volunteers, hosts, active_hosts, work_units_validated, total_credit, credit_last_hour): (
        i64,
        i64,
        i64,
        i64,
        f64,
        f64,
    ) = sqlx::query_as(&format!(
        "select (select count(*) from account),
                (select count(*) from host),
                (select count(*) from host where last_contact_at > now() - interval '{ACTIVE_WITHIN}'),
                (select count(*) from work_unit where state = 'validated'),
                (select coalesce(sum(total_credit), 0) from account),
                (select coalesce(sum(credit), 0) from credit_grant where granted_at > now() - interval '1 hour')"
    ))
    .fetch_one(connection)
    .await?;
    Ok(Totals {
        volunteers,
        hosts,
        active_hosts,
        work_units_validated,
        total_credit,
        credit_per_day: credit_last_hour * 24.0,
    })
}

#[derive(sqlx::FromRow)]
struct RankedRow {
    id: i64,
    name: String,
    total_credit: f64,
    recent: f64,
    group_id: Option<i64>,
    group_name: Option<String>,
}

pub async fn leaderboard(connection: &mut PgConnection, board: Board, query: PageQuery) -> ApiResult<Leaderboard> {
    let page = query.page()?;
    let order = match query.order {
        Order::Total => "t.total_credit desc, t.id",
        // The stored averages decay from different moments; this key orders them as they
        // are now (see the migration that indexes it).
        Order::Recent => "t.recent_rank desc, t.id",
    };
    // The rows skipped to reach a page are read from the index alone (ids only), and only
    // the page's own rows from the table.
    let (table, group) = match board {
        Board::Users => ("account", "left join team g on g.id = t.team_id"),
        Board::Teams => ("team", "left join (select null::bigint as id, null::text as name) g on false"),
        Board::Hosts => ("host", "left join account g on g.id = t.account_id"),
    };
    let rows: Vec<RankedRow> = sqlx::query_as(&format!(
        "select t.id, t.name, t.total_credit, decayed_average(t.expavg_credit, t.expavg_time, 0, now()) as recent,
                g.id as group_id, g.name as group_name
         from (select t.id from {table} t order by {order} limit $1 offset $2) page
         join {table} t on t.id = page.id
         {group}
         order by {order}"
    ))
    .bind(PER_PAGE)
    .bind((page - 1) * PER_PAGE)
    .fetch_all(&mut *connection)
    .await?;
    // How many pages there are: the planner's estimate for a large table (counting would
    // read all of it on every page view), an exact count for a small one, whose estimate
    // may not exist yet.
    let estimate: f64 =
        sqlx::query_scalar("select greatest(reltuples, 0)::float8 from pg_class where oid = to_regclass($1)")
            .bind(table)
            .fetch_one(&mut *connection)
            .await?;
    let total = if estimate >= EXACT_COUNT_BELOW as f64 {
        estimate.round() as i64
    } else {
        sqlx::query_scalar(&format!("select count(*) from {table}")).fetch_one(&mut *connection).await?
    };
    let first_rank = (page - 1) * PER_PAGE + 1;
    let entries = rows
        .into_iter()
        .enumerate()
        .map(|(i, row)| Ranked {
            rank: first_rank + i as i64,
            id: row.id,
            name: row.name,
            total_credit: row.total_credit,
            recent_average_credit: row.recent,
            group: row.group_id.zip(row.group_name).map(|(id, name)| Named { id, name }),
        })
        .collect::<Vec<_>>();
    // An estimate may lag behind; never say there are fewer rows than shown.
    let total = total.max(first_rank - 1 + entries.len() as i64);
    Ok(Leaderboard { order: query.order, page, per_page: PER_PAGE, total, entries })
}

#[derive(sqlx::FromRow)]
struct UserRow {
    name: String,
    total_credit: f64,
    recent: f64,
    team_id: Option<i64>,
    team_name: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(sqlx::FromRow)]
struct HostSummaryRow {
    id: i64,
    name: String,
    kind: String,
    os: String,
    arch: String,
    cores: i32,
    total_credit: f64,
    recent: f64,
    last_contact_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A user's own figures, without their hosts or history: what the account page shows.
pub struct UserSummary {
    pub name: String,
    pub total_credit: f64,
    pub recent_average_credit: f64,
    pub team: Option<Named>,
    pub joined_at: chrono::DateTime<chrono::Utc>,
}

pub async fn user_summary(connection: &mut PgConnection, id: i64) -> ApiResult<UserSummary> {
    let row: Option<UserRow> = sqlx::query_as(
        "select a.name, a.total_credit, decayed_average(a.expavg_credit, a.expavg_time, 0, now()) as recent,
                t.id as team_id, t.name as team_name, a.created_at
         from account a left join team t on t.id = a.team_id where a.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *connection)
    .await?;
    let user = row.ok_or_else(|| ApiError::not_found(format!("no user {id}")))?;
    Ok(UserSummary {
        name: user.name,
        total_credit: user.total_credit,
        recent_average_credit: user.recent,
        team: user.team_id.zip(user.team_name).map(|(id, name)| Named { id, name }),
        joined_at: user.created_at,
    })
}

pub async fn user(connection: &mut PgConnection, id: i64) -> ApiResult<UserStats> {
    let user = user_summary(connection, id).await?;
    let hosts: Vec<HostSummaryRow> = sqlx::query_as(&format!(
        "select id, name, kind, os, arch, cores, total_credit, {RECENT} as recent, last_contact_at
         from host where account_id = $1 order by total_credit desc, id limit 100"
    ))
    .bind(id)
    .fetch_all(&mut *connection)
    .await?;
    Ok(UserStats {
        id,
        name: user.name,
        total_credit: user.total_credit,
        recent_average_credit: user.recent_average_credit,
        team: user.team,
        hosts: hosts
            .into_iter()
            .map(|host| HostSummary {
                id: host.id,
                name: host.name,
                kind: host.kind,
                os: host.os,
                arch: host.arch,
                cores: host.cores,
                total_credit: host.total_credit,
                recent_average_credit: host.recent,
                last_contact_at: host.last_contact_at,
            })
            .collect(),
        joined_at: user.joined_at,
        credit_per_day: credit_per_day(connection, "account_daily_credit", "account_id", id).await?,
    })
}

/// The credit per day of one account or team over the last [`CREDIT_HISTORY_DAYS`], today
/// by this server's clock (as the pages' charts count them) in UTC.
async fn credit_per_day(
    connection: &mut PgConnection,
    table: &str,
    owner: &str,
    id: i64,
) -> sqlx::Result<Vec<DayCredit>> {
    let first_day = chrono::Utc::now().date_naive() - chrono::TimeDelta::days(CREDIT_HISTORY_DAYS - 1);
    let days: Vec<(chrono::NaiveDate, f64)> =
        sqlx::query_as(&format!("select day, credit from {table} where {owner} = $1 and day >= $2 order by day"))
            .bind(id)
            .bind(first_day)
            .fetch_all(connection)
            .await?;
    Ok(days.into_iter().map(|(day, credit)| DayCredit { day, credit }).collect())
}

/// `?page=N` of a team's members.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MembersQuery {
    /// The page of members, from 1 (the default); 100 a page.
    #[param(minimum = 1, maximum = 1000)]
    pub page: Option<i64>,
}

pub async fn team(connection: &mut PgConnection, id: i64, query: MembersQuery) -> ApiResult<TeamStats> {
    let page = PageQuery { order: Order::Total, page: query.page }.page()?;
    let row: Option<(String, String, f64, f64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(&format!(
        "select name, description, total_credit, {RECENT}, created_at from team where id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *connection)
    .await?;
    let (name, description, total_credit, recent_average_credit, founded_at) =
        row.ok_or_else(|| ApiError::not_found(format!("no team {id}")))?;
    let members: Vec<(i64, String, f64, f64)> = sqlx::query_as(&format!(
        "select id, name, total_credit, {RECENT} from account where team_id = $1
         order by total_credit desc, id limit $2 offset $3"
    ))
    .bind(id)
    .bind(PER_PAGE)
    .bind((page - 1) * PER_PAGE)
    .fetch_all(&mut *connection)
    .await?;
    let member_count: i64 = sqlx::query_scalar("select count(*) from account where team_id = $1")
        .bind(id)
        .fetch_one(&mut *connection)
        .await?;
    if members.is_empty() && page > 1 {
        return Err(ApiError::not_found(format!("team {id} has {member_count} members: there is no page {page}")));
    }
    Ok(TeamStats {
        id,
        name,
        description,
        total_credit,
        recent_average_credit,
        members: members
            .into_iter()
            .enumerate()
            .map(|(i, (id, name, total_credit, recent_average_credit))| Ranked {
                rank: (page - 1) * PER_PAGE + i as i64 + 1,
                id,
                name,
                total_credit,
                recent_average_credit,
                group: None,
            })
            .collect(),
        members_page: page,
        member_count,
        founded_at,
        credit_per_day: credit_per_day(connection, "team_daily_credit", "team_id", id).await?,
    })
}

#[derive(sqlx::FromRow)]
struct HostRow {
    name: String,
    account_id: i64,
    owner: String,
    kind: String,
    os: String,
    arch: String,
    cores: i32,
    memory_bytes: i64,
    client_version: String,
    total_credit: f64,
    recent: f64,
    valid_count: i64,
    invalid_count: i64,
    error_count: i64,
    last_contact_at: Option<chrono::DateTime<chrono::Utc>>,
    created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(sqlx::FromRow)]
struct ResultRow {
    id: i64,
    work_unit: String,
    app: String,
    outcome: Option<String>,
    validation: String,
    credit: Option<f64>,
    run_time_ms: Option<i64>,
    received_at: Option<chrono::DateTime<chrono::Utc>>,
    error_reason: Option<String>,
}

pub async fn host(connection: &mut PgConnection, id: i64) -> ApiResult<HostStats> {
    let row: Option<HostRow> = sqlx::query_as(
        "select h.name, h.account_id, a.name as owner, h.kind, h.os, h.arch, h.cores, h.memory_bytes, h.client_version,
                h.total_credit, decayed_average(h.expavg_credit, h.expavg_time, 0, now()) as recent,
                h.valid_count, h.invalid_count, h.error_count, h.last_contact_at, h.created_at
         from host h join account a on a.id = h.account_id where h.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *connection)
    .await?;
    let host = row.ok_or_else(|| ApiError::not_found(format!("no host {id}")))?;
    let results: Vec<ResultRow> = sqlx::query_as(
        "select r.id, w.name as work_unit, a.name as app, r.outcome::text as outcome,
                r.validate_state::text as validation, r.credit, r.run_time_ms, r.received_at, r.error_reason
         from replica r
         join work_unit w on w.id = r.work_unit_id
         join app_version v on v.id = w.app_version_id
         join app a on a.id = v.app_id
         where r.host_id = $1 and r.received_at is not null
         order by r.received_at desc limit 20",
    )
    .bind(id)
    .fetch_all(&mut *connection)
    .await?;
    Ok(HostStats {
        id,
        name: host.name,
        owner: Named { id: host.account_id, name: host.owner },
        kind: host.kind,
        os: host.os,
        arch: host.arch,
        cores: host.cores,
        memory_bytes: host.memory_bytes,
        client_version: host.client_version,
        total_credit: host.total_credit,
        recent_average_credit: host.recent,
        valid_results: host.valid_count,
        invalid_results: host.invalid_count,
        error_results: host.error_count,
        last_contact_at: host.last_contact_at,
        registered_at: host.created_at,
        recent_results: results
            .into_iter()
            .map(|result| RecentResult {
                replica_id: result.id,
                work_unit: result.work_unit,
                app: result.app,
                outcome: result.outcome.unwrap_or_else(|| "pending".into()),
                validation: result.validation,
                credit: result.credit,
                run_time_ms: result.run_time_ms,
                received_at: result.received_at,
                error: result.error_reason,
            })
            .collect(),
    })
}

/// Days of history in the replicas-per-hour series.
const HISTORY_DAYS: i64 = 3;

pub async fn status(connection: &mut PgConnection, uptime: Duration) -> ApiResult<ProjectStatus> {
    let counts = |rows: Vec<(String, i64)>| {
        rows.into_iter().map(|(state, count)| StateCount { state, count }).collect::<Vec<_>>()
    };
    let work_units: Vec<(String, i64)> =
        sqlx::query_as("select state::text, count(*) from work_unit group by state order by state")
            .fetch_all(&mut *connection)
            .await?;
    let replicas: Vec<(String, i64)> =
        sqlx::query_as("select state::text, count(*) from replica group by state order by state")
            .fetch_all(&mut *connection)
            .await?;
    let active_hosts: i64 = sqlx::query_scalar(&format!(
        "select count(*) from host where last_contact_at > now() - interval '{ACTIVE_WITHIN}'"
    ))
    .fetch_one(&mut *connection)
    .await?;
    let hours: Vec<(chrono::DateTime<chrono::Utc>, i64)> = sqlx::query_as(
        "select date_trunc('hour', received_at, 'UTC'), count(*) from replica
         where received_at > now() - make_interval(days => $1)
         group by 1 order by 1",
    )
    .bind(HISTORY_DAYS as i32)
    .fetch_all(&mut *connection)
    .await?;
    let apps: Vec<ProgressRow> = sqlx::query_as(&format!(
        "select a.id, a.name, null as app, {PROGRESS_COUNTS}
         from app a
         left join app_version v on v.app_id = a.id
         left join work_unit w on w.app_version_id = v.id
         group by a.id order by a.name, a.id"
    ))
    .fetch_all(&mut *connection)
    .await?;
    let batches: Vec<ProgressRow> = sqlx::query_as(&format!(
        "select b.id, case when b.public then b.name else 'batch ' || b.id end as name, a.name as app,
                {PROGRESS_COUNTS}
         from (select * from batch order by id desc limit 20) b
         join app a on a.id = b.app_id
         left join work_unit w on w.batch_id = b.id
         group by b.id, b.name, b.public, a.name order by b.id desc"
    ))
    .fetch_all(&mut *connection)
    .await?;
    Ok(ProjectStatus {
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: uptime.as_secs(),
        work_units: counts(work_units),
        replicas: counts(replicas),
        active_hosts,
        replicas_per_hour: hours.into_iter().map(|(hour, count)| HourCount { hour, count }).collect(),
        apps: apps.into_iter().map(ProgressRow::into_progress).collect(),
        batches: batches.into_iter().map(ProgressRow::into_progress).collect(),
    })
}

/// The counts of [`Progress`], over the work units `w` of an app or batch.
const PROGRESS_COUNTS: &str = "count(w.id) filter (where w.state = 'active') as active,
     count(w.id) filter (where w.state = 'validated') as validated,
     count(w.id) filter (where w.state = 'failed') as failed,
     count(w.id) filter (where w.state = 'validated'
                           and (not w.accepted_on_trust or w.recheck in ('confirmed', 'corrected'))) as checked,
     count(w.id) filter (where w.state = 'validated' and w.accepted_on_trust
                           and (w.recheck is null or w.recheck = 'pending')) as on_trust,
     count(w.id) filter (where w.recheck = 'corrected') as corrected";

#[derive(sqlx::FromRow)]
struct ProgressRow {
    id: i64,
    name: String,
    app: Option<String>,
    active: i64,
    validated: i64,
    failed: i64,
    checked: i64,
    on_trust: i64,
    corrected: i64,
}

impl ProgressRow {
    fn into_progress(self) -> Progress {
        Progress {
            id: self.id,
            name: self.name,
            app: self.app,
            active: self.active,
            validated: self.validated,
            failed: self.failed,
            checked: self.checked,
            on_trust: self.on_trust,
            corrected: self.corrected,
        }
    }
}

/// The project at a glance.
#[utoipa::path(
    get,
    path = "/api/v1/stats/totals",
    tag = "statistics",
    responses((status = 200, description = "The totals, counted at most every ten seconds.", body = Totals)),
)]
async fn totals_handler(State(state): State<AppState>) -> ApiResult<Json<Totals>> {
    let mut connection = state.pool.acquire().await?;
    Ok(Json(state.stats.totals(&mut connection).await?))
}

async fn board(state: &AppState, board: Board, query: PageQuery) -> ApiResult<Json<Leaderboard>> {
    let mut connection = state.pool.acquire().await?;
    Ok(Json(leaderboard(&mut connection, board, query).await?))
}

/// A page of the leaderboard of users.
#[utoipa::path(
    get,
    path = "/api/v1/stats/users",
    tag = "statistics",
    params(PageQuery),
    responses((status = 200, description = "The page.", body = Leaderboard)),
)]
async fn users_handler(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Leaderboard>> {
    board(&state, Board::Users, query).await
}

/// A page of the leaderboard of teams.
#[utoipa::path(
    get,
    path = "/api/v1/stats/teams",
    tag = "statistics",
    params(PageQuery),
    responses((status = 200, description = "The page.", body = Leaderboard)),
)]
async fn teams_handler(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Leaderboard>> {
    board(&state, Board::Teams, query).await
}

/// A page of the leaderboard of hosts.
#[utoipa::path(
    get,
    path = "/api/v1/stats/hosts",
    tag = "statistics",
    params(PageQuery),
    responses((status = 200, description = "The page.", body = Leaderboard)),
)]
async fn hosts_handler(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Leaderboard>> {
    board(&state, Board::Hosts, query).await
}

/// One user's statistics.
#[utoipa::path(
    get,
    path = "/api/v1/stats/users/{id}",
    tag = "statistics",
    params(("id" = i64, Path, description = "The user's id."),),
    responses(
        (status = 200, description = "The user.", body = UserStats),
        (status = 404, description = "There is no such user.", body = wasmgrid_protocol::api::ErrorBody),
    ),
)]
async fn user_handler(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> ApiResult<Json<UserStats>> {
    let mut connection = state.pool.acquire().await?;
    Ok(Json(user(&mut connection, id).await?))
}

/// One team's statistics.
#[utoipa::path(
    get,
    path = "/api/v1/stats/teams/{id}",
    tag = "statistics",
    params(("id" = i64, Path, description = "The team's id."), MembersQuery,),
    responses(
        (status = 200, description = "The team.", body = TeamStats),
        (status = 404, description = "There is no such team.", body = wasmgrid_protocol::api::ErrorBody),
    ),
)]
async fn team_handler(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<MembersQuery>,
) -> ApiResult<Json<TeamStats>> {
    let mut connection = state.pool.acquire().await?;
    Ok(Json(team(&mut connection, id, query).await?))
}

/// One host's statistics.
#[utoipa::path(
    get,
    path = "/api/v1/stats/hosts/{id}",
    tag = "statistics",
    params(("id" = i64, Path, description = "The host's id."),),
    responses(
        (status = 200, description = "The host.", body = HostStats),
        (status = 404, description = "There is no such host.", body = wasmgrid_protocol::api::ErrorBody),
    ),
)]
async fn host_handler(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> ApiResult<Json<HostStats>> {
    let mut connection = state.pool.acquire().await?;
    Ok(Json(host(&mut connection, id).await?))
}

/// The project's state: work units and replicas per state, progress per app and batch.
#[utoipa::path(
    get,
    path = "/api/v1/stats/status",
    tag = "statistics",
    responses((status = 200, description = "The status, counted at most every ten seconds.", body = ProjectStatus)),
)]
async fn status_handler(State(state): State<AppState>) -> ApiResult<Json<ProjectStatus>> {
    let mut connection = state.pool.acquire().await?;
    Ok(Json(state.stats.status(&mut connection, state.started_at.elapsed()).await?))
}
