//! The scheduler request, at the HTTP edge: a host reports what it finished and asks for
//! more, in one call and one transaction. What happens to the replicas and their work units
//! is [`crate::work_unit`]'s.
//!
//! Scheduler transactions are the server's hot path, and two things keep them cheap:
//! - **Turns.** Only `--max-scheduler-transactions` of them run at once; other requests wait
//!   here, in memory. Each transaction locks rows its neighbours want (the head of the
//!   queue, work units, hosts), so past a few per database core they only queue in
//!   PostgreSQL, each claim scanning past the rows the others hold, and the database spends
//!   its CPU on waiting: 32 at once on two cores did two thirds of the work of 4.
//! - **Generic plans.** Every statement of the transaction has a plan that does not depend
//!   on its parameters' values (lookups by key, and a claim whose candidate limit is written
//!   into its text), so each is planned once per connection instead of on every call:
//!   planning was a third of the database's time.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use wasmgrid_protocol::API_PREFIX;
use wasmgrid_protocol::api::{MAX_HELD_REPLICAS, ReportedOutcome, SchedulerReply, SchedulerRequest};

use crate::blobs;
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, VolunteerHost};
use crate::http::visitor::ClientAddress;
use crate::trust::HostEffects;
use crate::work_unit::claim::{self, Reconciled};
use crate::work_unit::report;

/// The most reports one request may carry; a client with more sends several requests.
pub const MAX_REPORTS_PER_REQUEST: usize = 1000;
/// How long a request waits for a turn before it is answered 503 (with `Retry-After`): a
/// server this far behind sheds load rather than queueing without end.
const TURN_WAIT: Duration = Duration::from_secs(30);

/// One request counted in a gauge of those waiting, for as long as it lives: also when the
/// client goes away mid-wait and the request's future is dropped.
struct Waiting<'a>(&'a prometheus::IntGauge);

impl<'a> Waiting<'a> {
    fn counted(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route(&format!("{API_PREFIX}/scheduler"), post(scheduler_request))
}

/// Reports finished replicas and asks for new ones, in one transaction.
#[utoipa::path(
    post,
    path = "/api/v1/scheduler",
    tag = "volunteers",
    request_body = SchedulerRequest,
    security(("host_token" = [])),
    responses(
        (status = 200, description = "The reports stored, new and resent replicas, and replicas to abort.",
            body = SchedulerReply),
        (status = 400, description = "Too many reports or held replicas, a replica reported twice in one request, \
            a success whose output was neither uploaded first nor carried inline, or an inline output that does \
            not match its report.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 413, description = "An inline output over the server's inline_output_limit.",
            body = wasmgrid_protocol::api::ErrorBody),
        (status = 403, description = "A reported replica is not this host's.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 404, description = "A reported replica does not exist.", body = wasmgrid_protocol::api::ErrorBody),
    ),
)]
async fn scheduler_request(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    VolunteerHost(host): VolunteerHost,
    ApiJson(request): ApiJson<SchedulerRequest>,
) -> ApiResult<Json<SchedulerReply>> {
    if request.reports.len() > MAX_REPORTS_PER_REQUEST {
        return Err(ApiError::bad_request(format!("at most {MAX_REPORTS_PER_REQUEST} reports per request")));
    }
    if request.held_replicas.as_ref().is_some_and(|held| held.len() > MAX_HELD_REPLICAS) {
        return Err(ApiError::bad_request(format!("list at most {MAX_HELD_REPLICAS} held replicas")));
    }
    let want = request.want_replicas.min(state.scheduler.max_replicas_per_request);
    let inline_outputs = blobs::inline::checked(&request.reports, state.scheduler.inline_output_limit)?;

    let _turn = {
        let _waiting = Waiting::counted(&state.metrics.scheduler_waiting);
        let turn = tokio::time::timeout(TURN_WAIT, state.scheduler_turns.acquire()).await;
        turn.map_err(|_| ApiError::Unavailable)?.map_err(|_| ApiError::Unavailable)?
    };
    let mut transaction = state.pool.begin().await?;
    sqlx::query("set local plan_cache_mode = force_generic_plan").execute(&mut *transaction).await?;
    let stored_inline = blobs::inline::store(&mut transaction, state.blobs.as_ref(), host.id, &inline_outputs).await?;
    let mut effects = HostEffects::default();
    // The reports' effects on trust are applied with the request's own, once, at the end.
    let reported = report::report(&mut transaction, &host, &request.reports, (&*state.scheduler).into()).await?;
    let judgements = reported.judgements().clone();
    let report::Reported { acknowledged, recorded_running } = reported.merge_into(&mut effects);
    blobs::inline::log_unrecorded(&mut transaction, stored_inline, &recorded_running).await?;
    let mut reconciled = match &request.held_replicas {
        Some(held) => {
            let reported: HashSet<i64> = request.reports.iter().map(|report| report.replica_id).collect();
            claim::reconcile_held(&mut transaction, &host, held, &reported).await?
        }
        None => Reconciled::default(),
    };
    let mut assignments = if want > 0 {
        let network = ClientAddress(address).network();
        claim::claim_replicas(&mut transaction, &host, &network, want, &state.scheduler, &effects).await?
    } else {
        Vec::new()
    };
    let mut abort = claim::abandon_unneeded_replicas(&mut transaction, host.id).await?;
    if !reconciled.lost.is_empty() {
        tracing::info!(host.id = host.id, replicas = reconciled.lost.len(), "sending lost replicas again");
    }
    // Only new replicas count against the quota: the lost ones were counted when claimed.
    effects.contacted(host.id, assignments.len() as i32);
    let claimed = assignments.len() as u64;
    assignments.append(&mut reconciled.lost);
    abort.append(&mut reconciled.unwanted);
    abort.sort_unstable();
    abort.dedup();
    effects.apply(&mut transaction, state.scheduler.daily_quota_per_core).await?;
    transaction.commit().await?;
    state.metrics.replicas_claimed.inc_by(claimed);
    state.metrics.count_judgements(&judgements);
    for report in &request.reports {
        let outcome = match report.outcome {
            ReportedOutcome::Success { .. } => "success",
            ReportedOutcome::Error { .. } => "error",
            ReportedOutcome::HostError { .. } => "host_error",
            ReportedOutcome::Refused { .. } => "refused",
        };
        state.metrics.replicas_reported.with_label_values(&[outcome]).inc();
    }

    let retry_after = if want > 0 && assignments.is_empty() {
        state.scheduler.idle_retry_after
    } else {
        state.scheduler.busy_retry_after
    };
    tracing::debug!(
        host.id = host.id,
        reports = request.reports.len(),
        assigned = assignments.len(),
        "scheduler request"
    );
    Ok(Json(SchedulerReply {
        acknowledged,
        assignments,
        abort,
        retry_after_seconds: retry_after.as_secs(),
        inline_output_limit: state.scheduler.inline_output_limit,
    }))
}
