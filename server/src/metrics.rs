//! Prometheus metrics, served on a listener of their own (`serve --metrics-listen`), so that
//! they are never exposed with the public site.
//!
//! Counters are counted where things happen: requests by route and status (by the router's
//! route template, never the raw path, so an attacker cannot make series without end),
//! replicas claimed, reported and judged, validator runs, failed blob-store operations,
//! sweeps. Gauges of the queue are read at scrape time from the status page's cached counts,
//! so a scraper costs the database no more than a visitor of that page. Each server has a
//! registry of its own: several servers in one process (the tests) do not mix their figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::net::TcpListener;

use crate::http::AppState;
use crate::work_unit::Judgements;
use crate::work_unit::states::Validation;

/// Every metric the server exports, registered in its own registry.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    pub replicas_claimed: IntCounter,
    pub replicas_reported: IntCounterVec,
    replicas_validated: IntCounterVec,
    pub validator_runs: IntCounterVec,
    blob_store_errors: IntCounterVec,
    pub database_busy: IntCounter,
    /// Scheduler requests waiting for a turn to run their transaction.
    pub scheduler_waiting: IntGauge,
    sweeps: IntCounterVec,
    sweep_duration: Histogram,
    last_sweep: std::sync::Mutex<Option<Instant>>,
    seconds_since_sweep: Gauge,
    work_units: IntGaugeVec,
    replicas: IntGaugeVec,
    active_hosts: IntGauge,
    pool_connections: IntGaugeVec,
    pool_max: IntGauge,
    database_up: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new().expect("the metrics are well-formed and registered once")
    }
}

/// Names under the `wasmgrid_` namespace.
fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("wasmgrid")
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        fn register<C: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            collector: C,
        ) -> prometheus::Result<C> {
            registry.register(Box::new(collector.clone()))?;
            Ok(collector)
        }
        let r = &registry;
        let latency_buckets = vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
        let metrics = Self {
            http_requests: register(
                r,
                IntCounterVec::new(
                    opts("http_requests_total", "HTTP requests answered, by route template, method and status"),
                    &["route", "method", "status"],
                )?,
            )?,
            http_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::from(opts(
                        "http_request_duration_seconds",
                        "Time to answer an HTTP request (to its response's head), by route template and method",
                    ))
                    .buckets(latency_buckets.clone()),
                    &["route", "method"],
                )?,
            )?,
            replicas_claimed: register(
                r,
                IntCounter::with_opts(opts("replicas_claimed_total", "Replicas handed to hosts, first sends only"))?,
            )?,
            replicas_reported: register(
                r,
                IntCounterVec::new(
                    opts("replicas_reported_total", "Replica reports received, by what the host says happened"),
                    &["outcome"],
                )?,
            )?,
            replicas_validated: register(
                r,
                IntCounterVec::new(
                    opts("replicas_validated_total", "Replicas the validation judged, by judgement"),
                    &["result"],
                )?,
            )?,
            validator_runs: register(
                r,
                IntCounterVec::new(
                    opts("validator_runs_total", "Comparisons made by validator modules, by result"),
                    &["result"],
                )?,
            )?,
            blob_store_errors: register(
                r,
                IntCounterVec::new(
                    opts(
                        "blob_store_errors_total",
                        "Blob-store operations that failed, by operation (no_room: an upload refused for want \
                         of space)",
                    ),
                    &["operation"],
                )?,
            )?,
            database_busy: register(
                r,
                IntCounter::with_opts(opts(
                    "database_pool_timeouts_total",
                    "Requests that waited for a database connection until the wait ran out (answered 503)",
                ))?,
            )?,
            scheduler_waiting: register(
                r,
                IntGauge::with_opts(opts(
                    "scheduler_requests_waiting",
                    "Scheduler requests waiting for a turn at the database (--max-scheduler-transactions run at once)",
                ))?,
            )?,
            sweeps: register(
                r,
                IntCounterVec::new(opts("sweeps_total", "Rounds of the background sweeps, by result"), &["result"])?,
            )?,
            sweep_duration: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::from(opts("sweep_duration_seconds", "Time a round of the background sweeps took"))
                        .buckets(latency_buckets),
                )?,
            )?,
            last_sweep: std::sync::Mutex::new(None),
            seconds_since_sweep: register(
                r,
                Gauge::with_opts(opts(
                    "seconds_since_last_sweep",
                    "Seconds since this process's background sweeps last completed a round (-1: none yet)",
                ))?,
            )?,
            work_units: register(
                r,
                IntGaugeVec::new(opts("work_units", "Work units by state (cached up to a few seconds)"), &["state"])?,
            )?,
            replicas: register(
                r,
                IntGaugeVec::new(opts("replicas", "Replicas by state (cached up to a few seconds)"), &["state"])?,
            )?,
            active_hosts: register(
                r,
                IntGauge::with_opts(opts("active_hosts", "Hosts that contacted the server in the last day"))?,
            )?,
            pool_connections: register(
                r,
                IntGaugeVec::new(
                    opts("database_pool_connections", "This process's database connections, in use or idle"),
                    &["state"],
                )?,
            )?,
            pool_max: register(
                r,
                IntGauge::with_opts(opts("database_pool_max_connections", "The most connections the pool opens"))?,
            )?,
            database_up: register(
                r,
                IntGauge::with_opts(opts(
                    "database_up",
                    "Whether the database answered this scrape's queries (0: the queue gauges are stale)",
                ))?,
            )?,
            registry,
        };
        // Every series a dashboard alerts on exists from the start, at zero.
        for operation in BlobOperation::ALL {
            metrics.blob_store_errors.with_label_values(&[operation.as_str()]);
        }
        for judgement in [Validation::Valid, Validation::Invalid] {
            metrics.replicas_validated.with_label_values(&[judgement.as_str()]);
        }
        Ok(metrics)
    }

    /// Counts the replicas a committed transaction judged.
    pub fn count_judgements(&self, judgements: &Judgements) {
        for (judgement, count) in judgements.iter() {
            self.replicas_validated.with_label_values(&[judgement]).inc_by(count);
        }
    }

    /// Counts one failed operation of the blob store.
    pub fn blob_store_error(&self, operation: BlobOperation) {
        self.blob_store_errors.with_label_values(&[operation.as_str()]).inc();
    }

    /// Counts one answered request.
    pub fn observe_request(&self, route: &str, method: &str, status: StatusCode, took: Duration) {
        self.http_requests.with_label_values(&[route, method, status.as_str()]).inc();
        self.http_duration.with_label_values(&[route, method]).observe(took.as_secs_f64());
    }

    /// Counts one round of the background sweeps.
    pub fn observe_sweep(&self, succeeded: bool, took: Duration) {
        self.sweeps.with_label_values(&[if succeeded { "ok" } else { "error" }]).inc();
        self.sweep_duration.observe(took.as_secs_f64());
        if succeeded {
            *self.last_sweep.lock().expect("not poisoned") = Some(Instant::now());
        }
    }

    /// The text a Prometheus server scrapes, after reading the gauges.
    async fn render(&self, state: &AppState) -> String {
        let since = *self.last_sweep.lock().expect("not poisoned");
        self.seconds_since_sweep.set(since.map_or(-1.0, |at| at.elapsed().as_secs_f64()));
        let pool = &state.pool;
        let idle = pool.num_idle() as i64;
        self.pool_connections.with_label_values(&["idle"]).set(idle);
        self.pool_connections.with_label_values(&["in_use"]).set(i64::from(pool.size()) - idle);
        self.pool_max.set(i64::from(pool.options().get_max_connections()));
        match self.read_queue(state).await {
            Ok(()) => self.database_up.set(1),
            Err(error) => {
                tracing::debug!(%error, "metrics: cannot read the queue");
                self.database_up.set(0);
            }
        }
        let mut text = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut text).expect("writing to a Vec cannot fail");
        String::from_utf8(text).expect("the text format is UTF-8")
    }

    async fn read_queue(&self, state: &AppState) -> anyhow::Result<()> {
        let mut connection = state.pool.acquire().await?;
        let status = state.stats.status(&mut connection, state.started_at.elapsed()).await?;
        for count in &status.work_units {
            self.work_units.with_label_values(&[count.state.as_str()]).set(count.count);
        }
        for count in &status.replicas {
            self.replicas.with_label_values(&[count.state.as_str()]).set(count.count);
        }
        self.active_hosts.set(status.active_hosts);
        Ok(())
    }
}

/// What a blob store was asked to do, as the errors metric labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOperation {
    Put,
    Read,
    Size,
    Delete,
    Presign,
    Space,
    /// Not an error of the store's: an upload refused because the store is full.
    NoRoom,
}

impl BlobOperation {
    const ALL: [Self; 7] = [Self::Put, Self::Read, Self::Size, Self::Delete, Self::Presign, Self::Space, Self::NoRoom];

    fn as_str(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Read => "read",
            Self::Size => "size",
            Self::Delete => "delete",
            Self::Presign => "presign",
            Self::Space => "space",
            Self::NoRoom => "no_room",
        }
    }
}

/// Counts every request the router answers, by its route template.
pub async fn count_requests(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = Instant::now();
    // Unmatched paths share one label, whatever they are. Parameters read `:name` rather
    // than axum's `{name}`: braces inside label values trip simple parsers of the format.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().replace('{', ":").replace('}', ""));
    let method = request.method().clone();
    let response = next.run(request).await;
    state.metrics.observe_request(&route, method.as_str(), response.status(), started.elapsed());
    response
}

/// Serves `/metrics` on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, state: AppState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let router = Router::new().route("/metrics", get(scrape)).with_state(state);
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(error) = axum::serve(listener, router).with_graceful_shutdown(stopped).await {
        tracing::error!(%error, "the metrics listener failed");
    }
}

async fn scrape(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(&state).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// The metrics of a server, shared by its parts.
pub type SharedMetrics = Arc<Metrics>;
