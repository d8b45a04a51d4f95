//! Apps, app versions, batches and work units: what a scientist publishes.
//!
//! - this module: creating them in the database, scoped by publisher;
//! - [`http`]: the publishing API under `/api/v1` (`wasmgrid app` and `wasmgrid batch`);
//! - [`batches`]: following a batch (counts, failures, results) and cancelling it.
//!
//! Everything a publisher asks about is looked up together with its publisher id, so
//! another publisher's app or batch is simply not found.

pub mod batches;
pub mod http;

use std::time::Duration;

use sqlx::PgConnection;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::RunLimits;

use wasmgrid_protocol::publish::{ValidatorSpec, name_problem};

use crate::http::error::{ApiError, ApiResult};

/// How a work unit is replicated and validated.
#[derive(Debug, Clone, Copy)]
pub struct ReplicationPolicy {
    /// Successful replicas needed before validation; a canonical result needs more than half
    /// of them to agree.
    pub min_quorum: u32,
    /// Replicas created at first.
    pub target_replicas: u32,
    /// Failed replicas at which the work unit fails.
    pub max_error_replicas: u32,
    /// Replicas, of every outcome, that may ever be created.
    pub max_total_replicas: u32,
    /// Time a host has to report a replica.
    pub delay_bound: Duration,
}

impl Default for ReplicationPolicy {
    fn default() -> Self {
        Self {
            min_quorum: 2,
            target_replicas: 2,
            max_error_replicas: 3,
            max_total_replicas: 8,
            delay_bound: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

pub const DEFAULT_LIMITS: RunLimits = RunLimits::DEFAULT;

/// One work unit to create. Its module is the newest version of the batch's app.
#[derive(Debug, Clone)]
pub struct WorkUnitSpec {
    pub name: String,
    pub args: Vec<String>,
    pub stdin: Option<Sha256Hash>,
    pub files: Vec<(String, Sha256Hash)>,
    pub policy: ReplicationPolicy,
    pub limits: RunLimits,
}

impl WorkUnitSpec {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            args: Vec::new(),
            stdin: None,
            files: Vec::new(),
            policy: ReplicationPolicy::default(),
            limits: DEFAULT_LIMITS,
        }
    }
}

/// Longest app name; names appear in URLs, so they are short and plain.
const MAX_APP_NAME_CHARS: usize = 64;

/// Checks an app name: 1 to 64 letters, digits, `-`, `_` or `.`, not starting with `.`.
pub fn check_app_name(name: &str) -> ApiResult<()> {
    let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > MAX_APP_NAME_CHARS || !plain || name.starts_with('.') {
        return Err(ApiError::bad_request(format!(
            "app names are 1 to {MAX_APP_NAME_CHARS} letters, digits, '-', '_' or '.' (not starting with '.'): {name:?}"
        )));
    }
    Ok(())
}

/// How an app's work units are replicated (see [`wasmgrid_protocol::publish::CreateAppRequest`]).
#[derive(Debug, Clone, Copy)]
pub struct AppReplication {
    pub distinct_networks: bool,
    pub adaptive_replication: bool,
}

impl Default for AppReplication {
    fn default() -> Self {
        Self { distinct_networks: true, adaptive_replication: false }
    }
}

/// Sets how app `app_id`'s work units are replicated.
pub async fn set_replication(
    connection: &mut PgConnection,
    app_id: i64,
    replication: AppReplication,
) -> sqlx::Result<()> {
    sqlx::query("update app set distinct_networks = $2, adaptive_replication = $3 where id = $1")
        .bind(app_id)
        .bind(replication.distinct_networks)
        .bind(replication.adaptive_replication)
        .execute(connection)
        .await?;
    Ok(())
}

/// Creates an app owned by `publisher_id`; its replicas go to distinct networks. A validator module must be stored already (and
/// checked by the caller).
pub async fn create_app(
    connection: &mut PgConnection,
    publisher_id: i64,
    name: &str,
    description: &str,
    validator: &ValidatorSpec,
) -> ApiResult<i64> {
    check_app_name(name)?;
    let (kind, module) = match validator {
        ValidatorSpec::Bitwise => ("bitwise", None),
        ValidatorSpec::Wasm { module_sha256 } => ("wasm", Some(module_sha256.to_hex())),
    };
    sqlx::query_scalar(
        "insert into app (publisher_id, name, description, validator, validator_module_sha256)
         values ($1, $2, $3, $4, $5) returning id",
    )
    .bind(publisher_id)
    .bind(name)
    .bind(description)
    .bind(kind)
    .bind(module)
    .fetch_one(connection)
    .await
    .map_err(|error| {
        if crate::database::is_unique_violation(&error, "app_publisher_name_key") {
            ApiError::Conflict(format!("you have an app named {name:?} already"))
        } else if is_foreign_key_violation(&error) {
            ApiError::bad_request("the validator module was not uploaded")
        } else {
            error.into()
        }
    })
}

/// Adds a version whose module is the stored blob `module`; returns its version number.
pub async fn add_app_version(connection: &mut PgConnection, app_id: i64, module: Sha256Hash) -> ApiResult<i32> {
    add_signed_app_version(connection, app_id, module, None).await
}

/// Adds a version with its module's signature, checked by the caller (see
/// [`crate::signing::check_module_signature`]).
pub async fn add_signed_app_version(
    connection: &mut PgConnection,
    app_id: i64,
    module: Sha256Hash,
    signature: Option<&crate::signing::CheckedSignature>,
) -> ApiResult<i32> {
    // Two versions published at once must not both take the next number.
    sqlx::query("select id from app where id = $1 for no key update").bind(app_id).execute(&mut *connection).await?;
    Ok(sqlx::query_scalar(
        "insert into app_version (app_id, version, module_sha256, signing_key_id, module_signature)
         select $1, coalesce(max(version), 0) + 1, $2, $3, $4 from app_version where app_id = $1
         returning version",
    )
    .bind(app_id)
    .bind(module.to_hex())
    .bind(signature.map(|signature| signature.key_id))
    .bind(signature.map(|signature| signature.signature.to_string()))
    .fetch_one(connection)
    .await?)
}

/// Creates a batch of work units, each with its first replicas, in the caller's
/// transaction, and closes it. Every referenced blob must be stored already.
pub async fn create_batch(
    connection: &mut PgConnection,
    app_id: i64,
    name: &str,
    work_units: &[WorkUnitSpec],
) -> ApiResult<i64> {
    let batch_id = open_batch(connection, app_id, name, false).await?;
    add_work_units(connection, batch_id, work_units).await?;
    sqlx::query("update batch set closed_at = now() where id = $1").bind(batch_id).execute(&mut *connection).await?;
    if work_units.len() >= ANALYZE_AFTER_WORK_UNITS {
        refresh_queue_statistics(connection).await?;
    }
    Ok(batch_id)
}

/// Creates an empty batch, open for work units, running the app's newest version (for
/// all its work units, whatever is published while it is submitted). Its name shows on the
/// public status page only if `public`.
pub async fn open_batch(connection: &mut PgConnection, app_id: i64, name: &str, public: bool) -> ApiResult<i64> {
    sqlx::query_scalar(
        "insert into batch (app_id, name, app_version_id, public)
         select $1, $2, v.id, $3 from app_version v where v.app_id = $1 order by v.version desc limit 1
         returning id",
    )
    .bind(app_id)
    .bind(name)
    .bind(public)
    .fetch_optional(&mut *connection)
    .await?
    .ok_or_else(|| ApiError::Conflict("the app has no published version yet: run `wasmgrid app publish` first".into()))
}

/// Of `hashes`, those the publisher did not store itself and that are not public modules,
/// in the order asked.
pub async fn files_unknown_to(
    connection: &mut PgConnection,
    publisher_id: i64,
    hashes: &[String],
) -> sqlx::Result<Vec<String>> {
    if hashes.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "select h.sha256 from unnest($2::text[]) with ordinality as h(sha256, position)
         where not exists (select 1 from publisher_file f where f.publisher_id = $1 and f.sha256 = h.sha256)
           and not exists (select 1 from app_version v where v.module_sha256 = h.sha256)
         order by h.position",
    )
    .bind(publisher_id)
    .bind(hashes)
    .fetch_all(connection)
    .await
}

/// Notes that the publisher stored the (stored) blob `hash`.
pub async fn record_publisher_file(
    connection: &mut PgConnection,
    publisher_id: i64,
    hash: Sha256Hash,
) -> sqlx::Result<()> {
    sqlx::query("insert into publisher_file (publisher_id, sha256) values ($1, $2) on conflict do nothing")
        .bind(publisher_id)
        .bind(hash.to_hex())
        .execute(connection)
        .await?;
    Ok(())
}

/// Batches at least this large refresh the planner's statistics of the queue when they are
/// closed.
pub const ANALYZE_AFTER_WORK_UNITS: usize = 1000;

/// Refreshes the planner's statistics of the queue. The scheduler's claim walks the queue
/// index only while the planner knows the queue is long; with statistics from before a
/// large submission it would sort the whole queue on every request until autovacuum
/// catches up. Run it after committing a large submission, not inside it: it takes a lock
/// that would queue every other submission behind it.
pub async fn refresh_queue_statistics(connection: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("analyze work_unit, replica").execute(connection).await?;
    Ok(())
}

/// What adding work units did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Added {
    pub created: u64,
    /// Work units whose names the batch had already, left as they were: a chunk sent again
    /// after an interruption.
    pub existing: u64,
}

/// Adds work units to a batch: a few statements whatever their number, so that batches of
/// hundreds of thousands load quickly. Idempotent by name: a work unit whose name the batch
/// has already is skipped, so a chunk may be sent again.
pub async fn add_work_units(
    connection: &mut PgConnection,
    batch_id: i64,
    work_units: &[WorkUnitSpec],
) -> ApiResult<Added> {
    let mut names = std::collections::HashSet::new();
    for spec in work_units {
        validate_spec(spec)?;
        if !names.insert(spec.name.as_str()) {
            return Err(ApiError::bad_request(format!("work unit {:?} appears twice", spec.name)));
        }
    }
    let app_version_id: i64 = sqlx::query_scalar("select app_version_id from batch where id = $1")
        .bind(batch_id)
        .fetch_optional(&mut *connection)
        .await?
        .flatten()
        .ok_or_else(|| ApiError::not_found(format!("no batch {batch_id}")))?;

    let column = |f: &dyn Fn(&WorkUnitSpec) -> i64| work_units.iter().map(f).collect::<Vec<i64>>();
    let names: Vec<&str> = work_units.iter().map(|w| w.name.as_str()).collect();
    let args: Vec<serde_json::Value> = work_units.iter().map(|w| serde_json::json!(w.args)).collect();
    let stdin: Vec<Option<String>> = work_units.iter().map(|w| w.stdin.map(|h| h.to_hex())).collect();
    let created: Vec<(i64, String)> = sqlx::query_as(
        "insert into work_unit (batch_id, app_version_id, name, args, stdin_sha256, seed,
                                min_quorum, target_replicas, max_error_replicas, max_total_replicas, delay_bound,
                                fuel_limit, memory_limit_bytes, output_limit_bytes, wall_time_limit_seconds)
         select $1, $2, u.name, u.args, u.stdin, (random() * 9.2e18)::bigint,
                u.min_quorum, u.target_replicas, u.max_error_replicas, u.max_total_replicas,
                make_interval(secs => u.delay_bound_seconds),
                u.fuel, u.memory, u.output, u.wall_time
         from unnest($3::text[], $4::jsonb[], $5::text[], $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[],
                     $11::int8[], $12::int8[], $13::int8[], $14::int8[])
              with ordinality as u(name, args, stdin, min_quorum, target_replicas, max_error_replicas,
                                   max_total_replicas, delay_bound_seconds, fuel, memory, output, wall_time, position)
         order by u.position
         on conflict (batch_id, name) do nothing
         returning id, name",
    )
    .bind(batch_id)
    .bind(app_version_id)
    .bind(&names)
    .bind(&args)
    .bind(&stdin)
    .bind(column(&|w| i64::from(w.policy.min_quorum)))
    .bind(column(&|w| i64::from(w.policy.target_replicas)))
    .bind(column(&|w| i64::from(w.policy.max_error_replicas)))
    .bind(column(&|w| i64::from(w.policy.max_total_replicas)))
    .bind(column(&|w| w.policy.delay_bound.as_secs() as i64))
    .bind(column(&|w| w.limits.fuel as i64))
    .bind(column(&|w| w.limits.memory_bytes as i64))
    .bind(column(&|w| w.limits.output_bytes as i64))
    .bind(column(&|w| w.limits.wall_time_seconds as i64))
    .fetch_all(&mut *connection)
    .await
    .map_err(|error| {
        if is_foreign_key_violation(&error) {
            ApiError::bad_request("a work unit names an input that was not uploaded")
        } else {
            error.into()
        }
    })?;

    let by_name: std::collections::HashMap<&str, &WorkUnitSpec> =
        work_units.iter().map(|spec| (spec.name.as_str(), spec)).collect();
    let ids: Vec<i64> = created.iter().map(|(id, _)| *id).collect();
    let mut file_work_units = Vec::new();
    let mut file_names = Vec::new();
    let mut file_hashes = Vec::new();
    for (id, name) in &created {
        for (file_name, hash) in &by_name[name.as_str()].files {
            file_work_units.push(*id);
            file_names.push(file_name.as_str());
            file_hashes.push(hash.to_hex());
        }
    }
    if !file_work_units.is_empty() {
        sqlx::query(
            "insert into work_unit_file (work_unit_id, name, sha256)
             select * from unnest($1::int8[], $2::text[], $3::text[])",
        )
        .bind(&file_work_units)
        .bind(&file_names)
        .bind(&file_hashes)
        .execute(&mut *connection)
        .await
        .map_err(|error| {
            if is_foreign_key_violation(&error) {
                ApiError::bad_request("a work unit names an input file that was not uploaded")
            } else if crate::database::is_unique_violation(&error, "work_unit_file_pkey") {
                ApiError::bad_request("input file names must be unique within a work unit")
            } else {
                error.into()
            }
        })?;
    }
    let mut named: Vec<String> = stdin.iter().flatten().cloned().collect();
    named.extend(file_hashes);
    if let Some(deleted) = crate::blobs::retention::first_deleted(&mut *connection, &named).await? {
        return Err(ApiError::Conflict(format!(
            "input {deleted} was deleted under the project's retention: upload it again"
        )));
    }
    sqlx::query(
        "insert into replica (work_unit_id)
         select w.id from work_unit w, generate_series(1, w.target_replicas)
         where w.id = any($1)
         order by w.id",
    )
    .bind(&ids)
    .execute(&mut *connection)
    .await?;
    let created = ids.len() as u64;
    Ok(Added { created, existing: work_units.len() as u64 - created })
}

fn is_foreign_key_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// Most replicas a work unit starts with, and may ever have: far above any sensible policy,
/// low enough that a typo cannot create millions of rows.
const MAX_REPLICAS: u32 = 100;
const MAX_TOTAL_REPLICAS: u32 = 1000;
const MAX_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

fn validate_spec(spec: &WorkUnitSpec) -> ApiResult<()> {
    let policy = &spec.policy;
    let problem = if spec.name.trim().is_empty() {
        Some("a work unit needs a name".to_owned())
    } else if let Some(problem) = name_problem(&spec.name) {
        Some(problem.to_owned())
    } else if let Some((file, problem)) =
        spec.files.iter().find_map(|(file, _)| name_problem(file).map(|problem| (file, problem)))
    {
        Some(format!("input file {file:?}: {problem}"))
    } else if let Some(index) = spec.args.iter().position(|arg| arg.contains('\0')) {
        // Arguments reach the module as C strings, and PostgreSQL's jsonb cannot hold NUL.
        Some(format!("args[{index}] must not contain NUL characters"))
    } else if policy.min_quorum == 0 {
        Some("min_quorum must be at least 1".to_owned())
    } else if policy.target_replicas < policy.min_quorum {
        Some("target_replicas must be at least min_quorum".to_owned())
    } else if policy.max_total_replicas < policy.target_replicas {
        Some("max_total_replicas must be at least target_replicas".to_owned())
    } else if policy.max_error_replicas == 0 {
        Some("max_error_replicas must be at least 1".to_owned())
    } else if policy.target_replicas > MAX_REPLICAS || policy.max_total_replicas > MAX_TOTAL_REPLICAS {
        Some(format!("at most {MAX_REPLICAS} replicas at first and {MAX_TOTAL_REPLICAS} in all"))
    } else if policy.max_error_replicas > MAX_TOTAL_REPLICAS {
        Some(format!("max_error_replicas must be at most {MAX_TOTAL_REPLICAS}"))
    } else if policy.delay_bound.as_secs() == 0 || policy.delay_bound > MAX_DEADLINE {
        Some("the deadline must be between one second and a year".to_owned())
    } else if [spec.limits.fuel, spec.limits.memory_bytes, spec.limits.output_bytes, spec.limits.wall_time_seconds]
        .iter()
        .any(|&limit| limit == 0 || limit > i64::MAX as u64)
    {
        Some("limits must be positive".to_owned())
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ApiError::bad_request(format!("work unit {:?}: {problem}", spec.name))),
        None => Ok(()),
    }
}
