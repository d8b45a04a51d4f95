//! The daily statistics export: every user, team and host with its credit, as gzipped
//! JSON, for third-party statistics sites (as BOINC's `db_dump` files feed them).
//!
//! `GET /api/v1/stats/export/{users,teams,hosts}.json.gz`. Each is made at most once per
//! UTC day per server process and then served from memory, so a crawler fetching it often
//! costs nothing. Nothing private is in it: no email addresses, no keys or tokens, and no
//! host names (people name machines after themselves or their workplace).

use std::io::Write;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use flate2::Compression;
use flate2::write::GzEncoder;
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::PgConnection;
use tokio::sync::Mutex;

use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ApiPath;

/// What can be exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    Users,
    Teams,
    Hosts,
}

impl Export {
    fn from_file_name(name: &str) -> Option<Self> {
        match name {
            "users.json.gz" => Some(Self::Users),
            "teams.json.gz" => Some(Self::Teams),
            "hosts.json.gz" => Some(Self::Hosts),
            _ => None,
        }
    }
}

#[derive(Serialize, sqlx::FromRow)]
struct UserLine {
    id: i64,
    name: String,
    team_id: Option<i64>,
    total_credit: f64,
    recent_average_credit: f64,
    created_at: DateTime<Utc>,
}

#[derive(Serialize, sqlx::FromRow)]
struct TeamLine {
    id: i64,
    name: String,
    description: String,
    total_credit: f64,
    recent_average_credit: f64,
    created_at: DateTime<Utc>,
}

#[derive(Serialize, sqlx::FromRow)]
struct HostLine {
    id: i64,
    user_id: i64,
    os: String,
    arch: String,
    cores: i32,
    memory_bytes: i64,
    total_credit: f64,
    recent_average_credit: f64,
    created_at: DateTime<Utc>,
}

/// One made export: its day and its gzipped bytes.
type Made = (NaiveDate, DateTime<Utc>, bytes::Bytes);

/// The exports made today, per kind. Each is behind an async lock, so that when a new day
/// begins one request makes it and the others wait for that one, rather than each making
/// its own.
#[derive(Default)]
pub struct Exports {
    users: Mutex<Option<Made>>,
    teams: Mutex<Option<Made>>,
    hosts: Mutex<Option<Made>>,
}

impl Exports {
    fn slot(&self, export: Export) -> &Mutex<Option<Made>> {
        match export {
            Export::Users => &self.users,
            Export::Teams => &self.teams,
            Export::Hosts => &self.hosts,
        }
    }

    /// Today's export, made now if it has not been yet today.
    pub async fn today(
        &self,
        connection: &mut PgConnection,
        export: Export,
    ) -> ApiResult<(DateTime<Utc>, bytes::Bytes)> {
        let mut slot = self.slot(export).lock().await;
        let now = Utc::now();
        if let Some((day, made, bytes)) = slot.as_ref()
            && *day == now.date_naive()
        {
            return Ok((*made, bytes.clone()));
        }
        let bytes = make(connection, export).await?;
        *slot = Some((now.date_naive(), now, bytes.clone()));
        Ok((now, bytes))
    }
}

/// Streams the rows into a JSON array, one object per line, then gzips it off the async
/// threads.
async fn make(connection: &mut PgConnection, export: Export) -> ApiResult<bytes::Bytes> {
    let mut json = Vec::new();
    let recent = "decayed_average(expavg_credit, expavg_time, 0, now()) as recent_average_credit";
    match export {
        Export::Users => {
            let query =
                format!("select id, name, team_id, total_credit, {recent}, created_at from account order by id");
            write_lines::<UserLine>(&mut json, sqlx::query_as(&query).fetch(connection)).await?
        }
        Export::Teams => {
            let query =
                format!("select id, name, description, total_credit, {recent}, created_at from team order by id");
            write_lines::<TeamLine>(&mut json, sqlx::query_as(&query).fetch(connection)).await?
        }
        Export::Hosts => {
            let query = format!(
                "select id, account_id as user_id, os, arch, cores, memory_bytes, total_credit, {recent}, created_at
                 from host order by id"
            );
            write_lines::<HostLine>(&mut json, sqlx::query_as(&query).fetch(connection)).await?
        }
    }
    let gzipped = tokio::task::spawn_blocking(move || {
        let mut encoder = GzEncoder::new(Vec::with_capacity(json.len() / 4), Compression::default());
        encoder.write_all(&json)?;
        encoder.finish()
    })
    .await
    .map_err(|error| ApiError::Internal(error.into()))?
    .map_err(internal)?;
    Ok(bytes::Bytes::from(gzipped))
}

async fn write_lines<T: Serialize>(
    out: &mut Vec<u8>,
    mut rows: impl futures::Stream<Item = sqlx::Result<T>> + Unpin,
) -> ApiResult<()> {
    out.write_all(b"[\n").map_err(internal)?;
    let mut first = true;
    while let Some(row) = rows.try_next().await? {
        if !first {
            out.write_all(b",\n").map_err(internal)?;
        }
        first = false;
        serde_json::to_writer(&mut *out, &row).map_err(|error| ApiError::Internal(error.into()))?;
    }
    out.write_all(b"\n]\n").map_err(internal)?;
    Ok(())
}

fn internal(error: std::io::Error) -> ApiError {
    ApiError::Internal(error.into())
}

/// Today's export of every user's, team's or host's credit, as a gzipped JSON array.
#[utoipa::path(
    get,
    path = "/api/v1/stats/export/{file}",
    tag = "statistics",
    params(("file" = String, Path, description = "Which export.",
        pattern = r"^(users|teams|hosts)\.json\.gz$")),
    responses(
        (status = 200, description = "The gzipped JSON array, made once a day.",
            content_type = "application/gzip", body = crate::openapi::Binary,
            headers(("Last-Modified" = String, description = "When it was made."))),
        (status = 404, description = "There is no such export.", body = wasmgrid_protocol::api::ErrorBody),
    ),
)]
pub async fn export_handler(State(state): State<AppState>, ApiPath(file): ApiPath<String>) -> ApiResult<Response> {
    let export = Export::from_file_name(&file).ok_or_else(|| {
        ApiError::not_found(format!("no export {file:?}: users.json.gz, teams.json.gz or hosts.json.gz"))
    })?;
    let mut connection = state.pool.acquire().await?;
    let (made, bytes) = state.exports.today(&mut connection, export).await?;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    if let Ok(value) = HeaderValue::from_str(&made.format("%a, %d %b %Y %H:%M:%S GMT").to_string()) {
        headers.insert(header::LAST_MODIFIED, value);
    }
    Ok(response)
}
