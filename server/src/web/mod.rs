//! The public web site: home, leaderboards, user, team and host pages, and the project's
//! status. Server-rendered from the templates in `web/templates/` (compiled in, escaped
//! by default), one stylesheet, no scripts: every page works without JavaScript, and the
//! Content-Security-Policy allows none. The one exception is `/contribute`, where a tab
//! computes work units, with a policy of its own.
//!
//! - [`account`]: signing up and in, the account page, teams.
//! - [`contribute`]: computing in a browser tab, and the scripts that do it.
//! - [`session`]: sessions and protection against cross-site request forgery.
//! - [`format`]: numbers, dates and sizes as people read them.
//! - [`chart`]: the charts of replicas per hour and of credit over time, drawn as SVG on
//!   the server.

pub mod account;
pub mod chart;
pub mod contribute;
pub mod format;
pub mod session;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Router, middleware};
use wasmgrid_protocol::stats::{Leaderboard, Order};

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::ApiPath;
use crate::stats::{self, Board, PageQuery};
use format::{credit, date_time, duration, memory};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/users", get(users))
        .route("/teams", get(teams))
        .route("/hosts", get(hosts))
        .route("/users/{id}", get(user))
        .route("/teams/{id}", get(team))
        .route("/hosts/{id}", get(host))
        .route("/status", get(status))
        .route("/static/style.css", get(stylesheet))
        .merge(account::router())
        .merge(contribute::router())
        .layer(middleware::map_response(security_headers))
}

/// What every page may do: load this site's stylesheet and images, nothing else; no
/// scripts, no framing, no plugins. Only [`contribute`] sets a policy of its own.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")],
        include_str!("../../../web/static/style.css"),
    )
}

/// A page that could not be shown: the API's error, as HTML.
pub struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl From<sqlx::Error> for PageError {
    fn from(error: sqlx::Error) -> Self {
        Self(error.into())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    heading: String,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let message = match &self.0 {
            ApiError::NotFound(message)
            | ApiError::BadRequest(message)
            | ApiError::Forbidden(message)
            | ApiError::Conflict(message) => message.clone(),
            // Logged, and not shown: the API's own answer does both.
            _ => return self.0.into_response(),
        };
        let heading = status.canonical_reason().unwrap_or("Error").to_owned();
        match (ErrorPage { heading, message }).render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(error) => ApiError::Internal(error.into()).into_response(),
        }
    }
}

pub type PageResult = Result<Response, PageError>;

fn page(template: impl Template) -> PageResult {
    let html = template.render().map_err(|error| ApiError::Internal(error.into()))?;
    Ok(Html(html).into_response())
}

struct AppLine {
    name: String,
    description: String,
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    apps: Vec<AppLine>,
    server_url: String,
    volunteers: i64,
    hosts: i64,
    active_hosts: i64,
    work_units_validated: i64,
    total_credit: String,
    credit_per_day: String,
}

/// The URL volunteers attach to: the public URL, or this server as the browser reached it
/// (`http::visitor` has rewritten the headers that say so).
pub fn server_url(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or("localhost");
    let scheme = match headers.get("x-forwarded-proto").and_then(|value| value.to_str().ok()) {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

async fn home(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    let mut connection = state.pool.acquire().await?;
    let totals = state.stats.totals(&mut connection).await?;
    let apps: Vec<(String, String)> =
        sqlx::query_as("select name, description from app where exists (select 1 from app_version v where v.app_id = app.id) order by name limit 50")
            .fetch_all(&mut *connection)
            .await?;
    page(HomePage {
        apps: apps.into_iter().map(|(name, description)| AppLine { name, description }).collect(),
        server_url: server_url(&headers),
        volunteers: totals.volunteers,
        hosts: totals.hosts,
        active_hosts: totals.active_hosts,
        work_units_validated: totals.work_units_validated,
        total_credit: credit(totals.total_credit),
        credit_per_day: credit(totals.credit_per_day),
    })
}

pub struct Link {
    pub name: String,
    pub link: String,
}

struct BoardRow {
    rank: i64,
    name: String,
    link: String,
    group: Option<Link>,
    total_credit: String,
    recent_average_credit: String,
}

#[derive(Template)]
#[template(path = "leaderboard.html")]
struct BoardPage {
    title: &'static str,
    path: &'static str,
    group_heading: &'static str,
    by_recent: bool,
    rows: Vec<BoardRow>,
    page: i64,
    pages: i64,
    previous: Option<String>,
    next: Option<String>,
}

async fn board_page(state: &AppState, board: Board, query: PageQuery) -> PageResult {
    let mut connection = state.pool.acquire().await?;
    let Leaderboard { order, page: number, per_page, total, entries } =
        stats::leaderboard(&mut connection, board, query).await?;
    let (title, path, group_heading, group_path) = match board {
        Board::Users => ("Top users", "/users", "Team", "/teams"),
        Board::Teams => ("Top teams", "/teams", "", ""),
        Board::Hosts => ("Top hosts", "/hosts", "Owner", "/users"),
    };
    let order_name = match order {
        Order::Total => "total",
        Order::Recent => "recent",
    };
    let pages = ((total + per_page - 1) / per_page).clamp(1, stats::MAX_PAGE);
    let link_to = |page: i64| format!("{path}?order={order_name}&page={page}");
    page(BoardPage {
        title,
        path,
        group_heading,
        by_recent: order == Order::Recent,
        rows: entries
            .into_iter()
            .map(|entry| BoardRow {
                rank: entry.rank,
                link: format!("{path}/{}", entry.id),
                name: entry.name,
                group: entry.group.map(|group| Link { link: format!("{group_path}/{}", group.id), name: group.name }),
                total_credit: credit(entry.total_credit),
                recent_average_credit: credit(entry.recent_average_credit),
            })
            .collect(),
        page: number,
        pages,
        previous: (number > 1).then(|| link_to(number - 1)),
        next: (number < pages).then(|| link_to(number + 1)),
    })
}

async fn users(State(state): State<AppState>, Query(query): Query<PageQuery>) -> PageResult {
    board_page(&state, Board::Users, query).await
}

async fn teams(State(state): State<AppState>, Query(query): Query<PageQuery>) -> PageResult {
    board_page(&state, Board::Teams, query).await
}

async fn hosts(State(state): State<AppState>, Query(query): Query<PageQuery>) -> PageResult {
    board_page(&state, Board::Hosts, query).await
}

/// What a host runs on, as its pages say it.
fn system(kind: &str, os: &str, arch: &str) -> String {
    match kind {
        "browser" => format!("browser tab on {os} {arch}"),
        _ => format!("{os} {arch}"),
    }
}

struct HostLine {
    name: String,
    link: String,
    system: String,
    cores: i32,
    total_credit: String,
    recent_average_credit: String,
    last_contact: String,
}

#[derive(Template)]
#[template(path = "user.html")]
struct UserPage {
    name: String,
    total_credit: String,
    recent_average_credit: String,
    team: Option<Link>,
    joined: String,
    hosts: Vec<HostLine>,
    chart: String,
    chart_caption: String,
}

/// The chart of credit over time on user and team pages, and its caption.
fn credit_chart(days: &[wasmgrid_protocol::stats::DayCredit], total_credit: f64) -> (String, String) {
    let today = chrono::Utc::now().date_naive();
    let chart = chart::credit_history(days, total_credit, today);
    let caption = format!(
        "From {} to {today} (UTC). Bars: credit per day, best day {}. Line: total credit, {} of it earned in these days.",
        chart.first_day,
        credit(chart.best_day),
        credit(chart.earned),
    );
    (chart.svg, caption)
}

async fn user(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> PageResult {
    let mut connection = state.pool.acquire().await?;
    let user = stats::user(&mut connection, id).await?;
    let (chart, chart_caption) = credit_chart(&user.credit_per_day, user.total_credit);
    page(UserPage {
        chart,
        chart_caption,
        name: user.name,
        total_credit: credit(user.total_credit),
        recent_average_credit: credit(user.recent_average_credit),
        team: user.team.map(|team| Link { link: format!("/teams/{}", team.id), name: team.name }),
        joined: date_time(&user.joined_at),
        hosts: user
            .hosts
            .into_iter()
            .map(|host| HostLine {
                link: format!("/hosts/{}", host.id),
                name: host.name,
                system: system(&host.kind, &host.os, &host.arch),
                cores: host.cores,
                total_credit: credit(host.total_credit),
                recent_average_credit: credit(host.recent_average_credit),
                last_contact: host.last_contact_at.as_ref().map_or("never".into(), date_time),
            })
            .collect(),
    })
}

struct MemberLine {
    rank: i64,
    name: String,
    link: String,
    total_credit: String,
    recent_average_credit: String,
}

#[derive(Template)]
#[template(path = "team.html")]
struct TeamPage {
    id: i64,
    /// For a signed-in volunteer who is not a member: the join form's token.
    join_csrf: Option<String>,
    /// The team a join would leave.
    leaving: Option<String>,
    name: String,
    description: String,
    total_credit: String,
    recent_average_credit: String,
    member_count: i64,
    founded: String,
    members: Vec<MemberLine>,
    /// Which page of the members, of how many.
    page: i64,
    pages: i64,
    previous: Option<String>,
    next: Option<String>,
    chart: String,
    chart_caption: String,
}

async fn team(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<i64>,
    Query(query): Query<stats::MembersQuery>,
) -> PageResult {
    let mut connection = state.pool.acquire().await?;
    let team = stats::team(&mut connection, id, query).await?;
    let viewer = session::signed_in(&mut connection, &headers).await?;
    // The viewer's team, if any: joining this one leaves it.
    let current_team: Option<(i64, String)> = match &viewer {
        Some(viewer) => {
            sqlx::query_as("select t.id, t.name from account a join team t on t.id = a.team_id where a.id = $1")
                .bind(viewer.id)
                .fetch_optional(&mut *connection)
                .await?
        }
        None => None,
    };
    let member = current_team.as_ref().map(|(team_id, _)| *team_id);
    let leaving = current_team.map(|(_, name)| name);
    let (csrf, set_csrf) = session::csrf_token(&headers);
    let join_csrf = (viewer.is_some() && member != Some(id)).then_some(csrf);
    let (chart, chart_caption) = credit_chart(&team.credit_per_day, team.total_credit);
    let pages = ((team.member_count + stats::PER_PAGE - 1) / stats::PER_PAGE).clamp(1, stats::MAX_PAGE);
    let link_to = |page: i64| format!("/teams/{id}?page={page}#members");
    let page_number = team.members_page;
    let mut response = page(TeamPage {
        chart,
        chart_caption,
        page: page_number,
        pages,
        previous: (page_number > 1).then(|| link_to(page_number - 1)),
        next: (page_number < pages).then(|| link_to(page_number + 1)),
        id,
        join_csrf,
        leaving,
        name: team.name,
        description: team.description,
        total_credit: credit(team.total_credit),
        recent_average_credit: credit(team.recent_average_credit),
        member_count: team.member_count,
        founded: date_time(&team.founded_at),
        members: team
            .members
            .into_iter()
            .map(|member| MemberLine {
                rank: member.rank,
                link: format!("/users/{}", member.id),
                name: member.name,
                total_credit: credit(member.total_credit),
                recent_average_credit: credit(member.recent_average_credit),
            })
            .collect(),
    })?;
    if let Some(set) = set_csrf {
        response.headers_mut().append(header::SET_COOKIE, set);
    }
    Ok(response)
}

struct ResultLine {
    work_unit: String,
    app: String,
    outcome: String,
    outcome_class: &'static str,
    validation: String,
    credit: String,
    run_time: String,
    received: String,
}

#[derive(Template)]
#[template(path = "host.html")]
struct HostPage {
    name: String,
    owner: Link,
    system: String,
    cores: i32,
    memory: String,
    client_version: String,
    total_credit: String,
    recent_average_credit: String,
    valid_results: i64,
    invalid_results: i64,
    error_results: i64,
    last_contact: String,
    registered: String,
    results: Vec<ResultLine>,
}

async fn host(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> PageResult {
    let mut connection = state.pool.acquire().await?;
    let host = stats::host(&mut connection, id).await?;
    page(HostPage {
        name: host.name,
        owner: Link { link: format!("/users/{}", host.owner.id), name: host.owner.name },
        system: system(&host.kind, &host.os, &host.arch),
        cores: host.cores,
        memory: memory(host.memory_bytes),
        client_version: host.client_version,
        total_credit: credit(host.total_credit),
        recent_average_credit: credit(host.recent_average_credit),
        valid_results: host.valid_results,
        invalid_results: host.invalid_results,
        error_results: host.error_results,
        last_contact: host.last_contact_at.as_ref().map_or("never".into(), date_time),
        registered: date_time(&host.registered_at),
        results: host
            .recent_results
            .into_iter()
            .map(|result| ResultLine {
                outcome_class: if matches!(result.outcome.as_str(), "client_error" | "validate_error") {
                    "error"
                } else {
                    "ok"
                },
                outcome: match &result.error {
                    Some(error) => format!("{}: {error}", result.outcome),
                    None => result.outcome,
                },
                work_unit: result.work_unit,
                app: result.app,
                validation: result.validation,
                credit: result.credit.map_or(String::new(), credit),
                run_time: result.run_time_ms.map_or(String::new(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
                received: result.received_at.as_ref().map_or(String::new(), date_time),
            })
            .collect(),
    })
}

struct ProgressLine {
    name: String,
    app: String,
    percent: u32,
    validated: i64,
    failed: i64,
    active: i64,
    checked: i64,
    on_trust: i64,
    corrected: i64,
}

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage {
    version: String,
    uptime: String,
    active_hosts: i64,
    chart: String,
    chart_caption: String,
    work_units: Vec<wasmgrid_protocol::stats::StateCount>,
    replicas: Vec<wasmgrid_protocol::stats::StateCount>,
    apps: Vec<ProgressLine>,
    batches: Vec<ProgressLine>,
}

async fn status(State(state): State<AppState>) -> PageResult {
    let mut connection = state.pool.acquire().await?;
    let status = state.stats.status(&mut connection, state.started_at.elapsed()).await?;
    let progress = |progress: wasmgrid_protocol::stats::Progress| {
        let total = progress.active + progress.validated + progress.failed;
        let finished = progress.validated + progress.failed;
        ProgressLine {
            name: progress.name,
            app: progress.app.unwrap_or_default(),
            percent: if total == 0 { 0 } else { (finished * 100 / total) as u32 },
            validated: progress.validated,
            failed: progress.failed,
            active: progress.active,
            checked: progress.checked,
            on_trust: progress.on_trust,
            corrected: progress.corrected,
        }
    };
    let reported: i64 = status.replicas_per_hour.iter().map(|hour| hour.count).sum();
    page(StatusPage {
        version: status.server_version,
        uptime: duration(std::time::Duration::from_secs(status.uptime_seconds)),
        active_hosts: status.active_hosts,
        chart: chart::replicas_per_hour(&status.replicas_per_hour, chrono::Utc::now()),
        chart_caption: format!("{reported} replicas reported over the last three days, by hour (UTC)"),
        work_units: status.work_units,
        replicas: status.replicas,
        apps: status.apps.into_iter().map(progress).collect(),
        batches: status.batches.into_iter().map(progress).collect(),
    })
}
