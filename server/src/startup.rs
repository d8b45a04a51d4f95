//! Building and running a server: `build(config)` opens the database, binds the listener
//! (port 0 works) and returns an [`App`] that runs until its shutdown future completes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::availability;
use crate::blobs::counted::CountedStore;
use crate::blobs::s3::S3Store;
use crate::blobs::{BlobStore, DirectoryStore};
use crate::config::ServerConfig;
use crate::database::Database;
use crate::http::{self, AppState, connections};
use crate::metrics::SharedMetrics;
use crate::sweeps;
use crate::validator::comparisons;
use crate::validator::wasm::ValidatorRunner;
use crate::work_unit::Rules;

/// Longest wait for background sweeps to finish after shutdown was asked for.
const SWEEP_STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct App {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    connection_limits: connections::Limits,
    state: AppState,
    database: Database,
    config: ServerConfig,
}

pub async fn build(config: ServerConfig) -> anyhow::Result<App> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    let database =
        Database::open_with(&config.database, &config.data_dir, config.max_database_connections, config.schema).await?;
    let metrics: SharedMetrics = Arc::default();
    let blobs: Arc<dyn BlobStore> = Arc::new(CountedStore::new(open_blob_store(&config).await?, metrics.clone()));
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let metrics_listener = match config.metrics_listen {
        Some(address) => {
            Some(TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address} for metrics"))?)
        }
        None => None,
    };
    let connection_limits = connection_limits(&config)?;
    let sandbox = wasmgrid_sandbox::Sandbox::new(&config.data_dir.join("compiled"))
        .context("cannot set up the sandbox for validator modules")?;
    tracing::info!(scheduler_transactions = config.scheduler_transactions(), "scheduler requests at once");
    let state = AppState {
        pool: database.pool.clone(),
        blobs,
        blob_redirect: config.blobs.redirect,
        scheduler: Arc::new(config.scheduler.clone()),
        registration: Arc::new(config.registration.clone()),
        sandbox,
        stats: Arc::default(),
        exports: Arc::default(),
        scheduler_turns: Arc::new(tokio::sync::Semaphore::new(config.scheduler_transactions() as usize)),
        password_hashing: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
        )),
        started_at: Instant::now(),
        site: Arc::new(config.site.clone()),
        availability: Arc::default(),
        metrics,
    };
    Ok(App { listener, metrics_listener, connection_limits, state, database, config })
}

async fn open_blob_store(config: &ServerConfig) -> anyhow::Result<Arc<dyn BlobStore>> {
    Ok(match &config.blobs.store {
        None => {
            anyhow::ensure!(
                config.blobs.redirect.is_none(),
                "download redirects need an object store to presign URLs: set --blob-store s3://bucket/prefix"
            );
            Arc::new(DirectoryStore::open(config.data_dir.join("blobs")).context("cannot open the blob store")?)
        }
        Some(url) => {
            Arc::new(S3Store::open(url, &config.blobs.s3_settings, config.data_dir.join("blob-staging")).await?)
        }
    })
}

/// The connection limits for `config`, after raising the open-file limit as far as it goes.
fn connection_limits(config: &ServerConfig) -> anyhow::Result<connections::Limits> {
    let open_files = connections::raise_open_file_limit().context("cannot read the open-file limit")?;
    let mut limits = connections::Limits::for_open_files(open_files, config.max_database_connections);
    let settings = &config.connections;
    limits.header_timeout = settings.header_timeout;
    limits.max_per_address = settings.max_per_address;
    if let Some(max) = settings.max_connections {
        limits.max_connections = max.min(limits.max_connections);
    }
    limits.trusted_proxies = config.site.trusted_proxies.clone();
    limits.tls = config.tls.clone();
    tracing::info!(open_files, max_connections = limits.max_connections, "connection limits");
    Ok(limits)
}

impl App {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Where the metrics are served, when they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|listener| listener.local_addr().expect("a bound listener has an address"))
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then drains in-flight requests, stops the sweeps
    /// and closes the database (stopping the embedded cluster, if any).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let App { listener, metrics_listener, connection_limits, state, database, config } = self;
        let (stop_sweeps, sweeps_stopped) = tokio::sync::watch::channel(false);
        let sweeper = sweeps::Sweeper {
            pool: state.pool.clone(),
            blobs: state.blobs.clone(),
            rules: Rules::from(&config.scheduler),
            retention: config.blobs.retention,
            metrics: state.metrics.clone(),
        };
        let sweeper = tokio::spawn(sweeps::run_periodically(sweeper, config.sweep_interval, sweeps_stopped));
        let supervisor = database.embedded.clone().map(|embedded| {
            let stop = stop_sweeps.subscribe();
            tokio::spawn(async move { embedded.supervise(stop).await })
        });
        let probe = tokio::spawn(availability::probe_database(
            (*state.pool.connect_options()).clone(),
            state.availability.clone(),
            stop_sweeps.subscribe(),
        ));
        let runner = ValidatorRunner::new(
            state.sandbox.clone(),
            state.blobs.clone(),
            config.data_dir.join("validators"),
            state.metrics.clone(),
        )?;
        let validator = tokio::spawn(comparisons::run_until_stopped(
            state.pool.clone(),
            runner,
            config.sweep_interval,
            Rules::from(&config.scheduler),
            stop_sweeps.subscribe(),
        ));
        let metrics = metrics_listener
            .map(|listener| tokio::spawn(crate::metrics::serve(listener, state.clone(), stop_sweeps.subscribe())));
        connections::serve(listener, http::router(state), connection_limits, shutdown).await;
        let _ = stop_sweeps.send(true);
        let background = async {
            let _ = sweeper.await;
            let _ = validator.await;
            let _ = probe.await;
            if let Some(metrics) = metrics {
                let _ = metrics.await;
            }
            if let Some(supervisor) = supervisor {
                let _ = supervisor.await;
            }
        };
        if tokio::time::timeout(SWEEP_STOP_TIMEOUT, background).await.is_err() {
            tracing::warn!("background sweeps did not stop within {SWEEP_STOP_TIMEOUT:?}");
        }
        database.close().await
    }
}
