//! Building and running a server: `build(config)` opens the database, binds the listener
//! (port 0 works) and returns an [`App`] that runs until its shutdown future completes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::availability;
use crate::blobs::DirectoryStore;
use crate::config::ServerConfig;
use crate::database::Database;
use crate::http::{self, AppState};
use crate::sweeps;
use crate::validator::comparisons;
use crate::validator::wasm::ValidatorRunner;

/// Longest wait for background sweeps to finish after shutdown was asked for.
const SWEEP_STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct App {
    listener: TcpListener,
    state: AppState,
    database: Database,
    config: ServerConfig,
}

pub async fn build(config: ServerConfig) -> anyhow::Result<App> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    let database = Database::open(&config.database, &config.data_dir, config.max_database_connections).await?;
    let blobs = DirectoryStore::open(config.data_dir.join("blobs")).context("cannot open the blob store")?;
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let sandbox = wasmgrid_sandbox::Sandbox::new(&config.data_dir.join("compiled"))
        .context("cannot set up the sandbox for validator modules")?;
    let state = AppState {
        pool: database.pool.clone(),
        blobs: Arc::new(blobs),
        scheduler: Arc::new(config.scheduler.clone()),
        registration: Arc::new(config.registration.clone()),
        sandbox,
        stats: Arc::default(),
        exports: Arc::default(),
        password_hashing: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
        )),
        started_at: Instant::now(),
        site: Arc::new(config.site.clone()),
        availability: Arc::default(),
    };
    Ok(App { listener, state, database, config })
}

impl App {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
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
        let App { listener, state, database, config } = self;
        let (stop_sweeps, sweeps_stopped) = tokio::sync::watch::channel(false);
        let sweeper = sweeps::Sweeper {
            pool: state.pool.clone(),
            blobs: state.blobs.clone(),
            max_daily_quota: config.scheduler.daily_quota_per_core,
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
        let runner =
            ValidatorRunner::new(state.sandbox.clone(), state.blobs.clone(), config.data_dir.join("validators"))?;
        let validator = tokio::spawn(comparisons::run_until_stopped(
            state.pool.clone(),
            runner,
            config.sweep_interval,
            config.scheduler.daily_quota_per_core,
            stop_sweeps.subscribe(),
        ));
        // Handlers may ask who connected (sign-in attempts are limited per address; see
        // `http::visitor`).
        let service = http::router(state).into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(listener, service).with_graceful_shutdown(shutdown).await;
        let _ = stop_sweeps.send(true);
        let background = async {
            let _ = sweeper.await;
            let _ = validator.await;
            let _ = probe.await;
            if let Some(supervisor) = supervisor {
                let _ = supervisor.await;
            }
        };
        if tokio::time::timeout(SWEEP_STOP_TIMEOUT, background).await.is_err() {
            tracing::warn!("background sweeps did not stop within {SWEEP_STOP_TIMEOUT:?}");
        }
        let closed = database.close().await;
        served.context("the HTTP server failed")?;
        closed
    }
}
