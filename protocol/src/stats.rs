//! The project's public statistics: what the web pages show, as JSON under
//! `/api/v1/stats/...` for scripts and third-party statistics sites. Nothing here is secret:
//! no email addresses, no keys.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// `GET /stats/totals`: the project at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Totals {
    pub volunteers: i64,
    pub hosts: i64,
    /// Hosts that contacted the server in the last day.
    pub active_hosts: i64,
    pub work_units_validated: i64,
    pub total_credit: f64,
    /// Credit granted over the last hour, per day: the project's current speed.
    pub credit_per_day: f64,
}

/// Which leaderboard ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// By total credit.
    #[default]
    Total,
    /// By recent average credit (credit per day, decaying with a 7-day half-life).
    Recent,
}

/// One row of a leaderboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ranked {
    pub rank: i64,
    pub id: i64,
    pub name: String,
    pub total_credit: f64,
    pub recent_average_credit: f64,
    /// For users: their team. For hosts: their owner. For teams: none.
    pub group: Option<Named>,
}

/// A link to a user, a team or a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Named {
    pub id: i64,
    pub name: String,
}

/// `GET /stats/{users,teams,hosts}?order=total|recent&page=N`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Leaderboard {
    pub order: Order,
    /// From 1.
    pub page: i64,
    pub per_page: i64,
    /// Rows in the whole leaderboard.
    pub total: i64,
    pub entries: Vec<Ranked>,
}

/// A host as its owner's page lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostSummary {
    pub id: i64,
    pub name: String,
    /// `native` (the `wasmgrid` client) or `browser` (a tab of the contribute page).
    #[serde(default = "native")]
    pub kind: String,
    pub os: String,
    pub arch: String,
    pub cores: i32,
    pub total_credit: f64,
    pub recent_average_credit: f64,
    pub last_contact_at: Option<DateTime<Utc>>,
}

/// `GET /stats/users/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserStats {
    pub id: i64,
    pub name: String,
    pub total_credit: f64,
    pub recent_average_credit: f64,
    pub team: Option<Named>,
    pub hosts: Vec<HostSummary>,
    pub joined_at: DateTime<Utc>,
    /// Credit earned per UTC day over the last [`CREDIT_HISTORY_DAYS`], oldest first; days
    /// without credit are left out.
    pub credit_per_day: Vec<DayCredit>,
}

/// `GET /stats/teams/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TeamStats {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub total_credit: f64,
    pub recent_average_credit: f64,
    /// One page of members by total credit (`?page=N`, 100 a page).
    pub members: Vec<Ranked>,
    pub members_page: i64,
    pub member_count: i64,
    pub founded_at: DateTime<Utc>,
    /// Credit the members earned per UTC day while in the team, over the last
    /// [`CREDIT_HISTORY_DAYS`], oldest first; days without credit are left out.
    pub credit_per_day: Vec<DayCredit>,
}

/// Days of credit history on user and team pages.
pub const CREDIT_HISTORY_DAYS: i64 = 90;

/// The credit earned on one UTC day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DayCredit {
    pub day: NaiveDate,
    pub credit: f64,
}

/// One of a host's recent results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecentResult {
    pub replica_id: i64,
    pub work_unit: String,
    pub app: String,
    /// success, client_error, no_reply, didnt_need or validate_error.
    pub outcome: String,
    /// pending, valid, invalid or inconclusive.
    pub validation: String,
    pub credit: Option<f64>,
    pub run_time_ms: Option<i64>,
    pub received_at: Option<DateTime<Utc>>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// `GET /stats/hosts/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostStats {
    pub id: i64,
    pub name: String,
    pub owner: Named,
    /// `native` (the `wasmgrid` client) or `browser` (a tab of the contribute page).
    #[serde(default = "native")]
    pub kind: String,
    /// The operating system (a browser host: the platform its browser names).
    pub os: String,
    pub arch: String,
    pub cores: i32,
    pub memory_bytes: i64,
    pub client_version: String,
    pub total_credit: f64,
    pub recent_average_credit: f64,
    pub valid_results: i64,
    pub invalid_results: i64,
    pub error_results: i64,
    pub last_contact_at: Option<DateTime<Utc>>,
    pub registered_at: DateTime<Utc>,
    /// The newest 20.
    pub recent_results: Vec<RecentResult>,
}

/// Counts by state, in a fixed order for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StateCount {
    pub state: String,
    pub count: i64,
}

/// Progress of one app or batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    pub id: i64,
    pub name: String,
    /// For batches: their app.
    pub app: Option<String>,
    pub active: i64,
    pub validated: i64,
    pub failed: i64,
    /// Of the validated: checked by a quorum of hosts (or rechecked since)...
    #[serde(default)]
    pub checked: i64,
    /// ... or resting on one trusted host's word (adaptive replication).
    #[serde(default)]
    pub on_trust: i64,
    /// Results accepted on trust that other hosts later found wrong, and corrected.
    #[serde(default)]
    pub corrected: i64,
}

/// `GET /stats/status`: the project's state, for operators and the curious.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectStatus {
    pub server_version: String,
    pub uptime_seconds: u64,
    pub work_units: Vec<StateCount>,
    pub replicas: Vec<StateCount>,
    pub active_hosts: i64,
    /// Replicas reported per hour, oldest first, over the last days (hours without any are
    /// absent).
    pub replicas_per_hour: Vec<HourCount>,
    pub apps: Vec<Progress>,
    /// The newest batches.
    pub batches: Vec<Progress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HourCount {
    pub hour: DateTime<Utc>,
    pub count: i64,
}

fn native() -> String {
    "native".to_owned()
}
