//! Settings of a server process, gathered from the command line and the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::database::DatabaseLocation;
use crate::http::visitor::SiteConfig;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database: DatabaseLocation,
    pub max_database_connections: u32,
    pub scheduler: SchedulerConfig,
    /// How often the background sweeps (deadlines, credit) run.
    pub sweep_interval: Duration,
    /// The public URL and the reverse proxies in front of the server.
    pub site: SiteConfig,
}

impl ServerConfig {
    /// Defaults for a server on `listen` with its data in `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf, database: DatabaseLocation) -> Self {
        Self {
            listen,
            data_dir,
            database,
            max_database_connections: 32,
            scheduler: SchedulerConfig::default(),
            sweep_interval: Duration::from_secs(5),
            site: SiteConfig::default(),
        }
    }
}

/// How work is handed out.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The most replicas one scheduler request can get.
    pub max_replicas_per_request: u32,
    /// Wait asked of a host that got no work: it should not poll an empty queue often.
    pub idle_retry_after: Duration,
    /// Wait asked of a host that got work.
    pub busy_retry_after: Duration,
    /// Replicas a new or fully trusted host may take per core per day; errors and invalid
    /// results shrink it, valid results grow it back (BOINC's daily quota).
    pub daily_quota_per_core: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_replicas_per_request: 64,
            idle_retry_after: Duration::from_secs(60),
            busy_retry_after: Duration::from_secs(1),
            daily_quota_per_core: 1000,
        }
    }
}
