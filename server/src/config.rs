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
    /// Scheduler requests whose transactions run at once (see [`crate::work_fetch`]);
    /// `None`: [`default_scheduler_transactions`].
    pub max_scheduler_transactions: Option<u32>,
    pub scheduler: SchedulerConfig,
    /// How often the background sweeps (deadlines, credit) run.
    pub sweep_interval: Duration,
    /// The public URL and the reverse proxies in front of the server.
    pub site: SiteConfig,
    /// How many accounts and hosts one address may create.
    pub registration: RegistrationLimits,
    /// How HTTP connections are limited.
    pub connections: ConnectionSettings,
    /// Serve HTTPS with this certificate and key (`--tls-cert`, `--tls-key`), read and
    /// checked already; plain HTTP without.
    pub tls: Option<crate::http::tls::Tls>,
    /// Whether the server migrates the database when it starts, or only checks it.
    pub schema: crate::database::Schema,
    /// Where Prometheus metrics are served (`/metrics`), if anywhere: apart from the site.
    pub metrics_listen: Option<SocketAddr>,
    /// Where blobs live and how downloads are served.
    pub blobs: BlobSettings,
}

/// Where blobs live and how downloads are served.
#[derive(Debug, Clone)]
pub struct BlobSettings {
    /// An `s3://bucket/prefix` object store; `None`: the `blobs` directory of the data
    /// directory.
    pub store: Option<url::Url>,
    /// Downloads answer with a presigned URL of the object store, valid this long, so that
    /// the bytes bypass the server (needs an object store).
    pub redirect: Option<Duration>,
    /// Object store settings over the `AWS_*` variables, by object_store's names
    /// (`aws_endpoint`, `aws_access_key_id`…): for a server embedded in another program.
    pub s3_settings: Vec<(String, String)>,
    /// How long a batch's inputs and outputs are kept after it ends.
    pub retention: Duration,
}

impl Default for BlobSettings {
    fn default() -> Self {
        Self {
            store: None,
            redirect: None,
            s3_settings: Vec::new(),
            retention: crate::blobs::retention::DEFAULT_RETENTION,
        }
    }
}

/// How HTTP connections are limited (see [`crate::http::connections`]).
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// Time a request's headers have to arrive, from the connection's start or the end of
    /// the previous response (so also how long a kept-alive connection may sit idle).
    pub header_timeout: Duration,
    /// Connections held at once; `None`: as many as the open-file limit leaves room for.
    pub max_connections: Option<usize>,
    /// Connections held at once from one address (trusted proxies excepted).
    pub max_per_address: usize,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self { header_timeout: Duration::from_secs(10), max_connections: None, max_per_address: 256 }
    }
}

impl ServerConfig {
    /// Defaults for a server on `listen` with its data in `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf, database: DatabaseLocation) -> Self {
        Self {
            listen,
            data_dir,
            database,
            max_database_connections: 32,
            max_scheduler_transactions: None,
            scheduler: SchedulerConfig::default(),
            sweep_interval: Duration::from_secs(5),
            site: SiteConfig::default(),
            registration: RegistrationLimits::default(),
            connections: ConnectionSettings::default(),
            tls: None,
            schema: crate::database::Schema::default(),
            metrics_listen: None,
            blobs: BlobSettings::default(),
        }
    }
}

/// Scheduler transactions at once, unless the operator says otherwise: two per core of this
/// machine, which is the database's own when it is the embedded one, and no more than half
/// the `database_connections`, which every other request needs too. Each writes rows its
/// neighbours lock and scan past; beyond a few per database core they only wait on each
/// other, and throughput falls (see README, "Benchmarks").
pub fn default_scheduler_transactions(database_connections: u32) -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    u32::try_from(cores * 2).unwrap_or(u32::MAX).min(database_connections / 2).max(1)
}

impl ServerConfig {
    /// Scheduler transactions at once: the operator's number, or the default.
    pub fn scheduler_transactions(&self) -> u32 {
        self.max_scheduler_transactions
            .unwrap_or_else(|| default_scheduler_transactions(self.max_database_connections))
            .max(1)
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
    /// Replicas a fully trusted host may take per core per day; errors and invalid results
    /// shrink a host's quota, valid results grow it back (BOINC's daily quota).
    pub daily_quota_per_core: u32,
    /// The per-core daily quota of a new host: small, so that hosts made for free cannot
    /// hoard work; it doubles with each valid result, up to `daily_quota_per_core`.
    pub initial_daily_quota_per_core: u32,
    /// Replicas a host may hold at once (sent, not yet reported) per core, whatever it asks
    /// for.
    pub max_in_progress_per_core: u32,
    /// The most cores the server believes a host has, whatever it says: cores multiply its
    /// quota and the work it may hold.
    pub max_host_cores: u32,
    /// The most memory the server believes a host has.
    pub max_host_memory_bytes: u64,
    /// How long past a work unit's wall-clock limit a browser host has to report a replica
    /// (or its work unit's own deadline, if sooner): a closed tab never reports.
    pub browser_grace: Duration,
    /// A grid whose volunteers are one organisation, in one network: the replicas of a work
    /// unit may go to hosts of one network, and new accounts may make a quorum by
    /// themselves. Off, a quorum spans networks and accounts with a validated history, so
    /// that accounts one person makes for free cannot fill it (see [`crate::work_unit`]).
    pub private_grid: bool,
    /// Adaptive replication, for the apps that ask for it.
    pub adaptive: AdaptiveReplication,
    /// Whether every module published must be signed by its publisher's key (see
    /// [`crate::signing`]); volunteers' clients then refuse unsigned modules too.
    pub require_signatures: bool,
    /// Outputs up to this many bytes may travel inside scheduler reports instead of being
    /// uploaded first (0: none may).
    pub inline_output_limit: u64,
}

/// Adaptive replication (see [`crate::work_unit::claim`]): a host whose results for an app
/// version have been checked and found valid `trusted_after` times in a row may be handed a
/// work unit alone, and is then checked anyway with a chance that falls as its run of
/// accepted results (checked or not) grows, never below `min_check_probability`. Trust is
/// earned by checked results only; how often it is checked afterwards follows everything
/// the host returned since, since every one of them could have been the one checked.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveReplication {
    pub trusted_after: u32,
    pub min_check_probability: f64,
    /// How far back the results a host had accepted on trust are sent out again once it is
    /// caught returning a wrong one.
    pub lookback: Duration,
}

impl Default for AdaptiveReplication {
    fn default() -> Self {
        Self { trusted_after: 10, min_check_probability: 0.05, lookback: Duration::from_secs(30 * 86_400) }
    }
}

impl AdaptiveReplication {
    /// The chance that a work unit handed to a host is replicated anyway, to check it, when
    /// the host has `checked` checked valid results in a row and `accepted` results accepted
    /// in a row, checked or on trust: certain below `trusted_after` checked ones, a half
    /// there, and falling as `(trusted_after / n)² / 2` for a run of n accepted, to the
    /// floor. The square brings a proven host to the floor within a few times the threshold
    /// (about 3.2 times, at the defaults): from then on the floor alone decides how soon a
    /// cheater is caught, and the look-back what it costs the science.
    pub fn check_probability(&self, checked: u32, accepted: u32) -> f64 {
        let trusted_after = self.trusted_after.max(1);
        if checked < trusted_after {
            return 1.0;
        }
        let ratio = f64::from(trusted_after) / f64::from(accepted.max(checked));
        (ratio * ratio / 2.0).clamp(self.min_check_probability, 1.0)
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_replicas_per_request: 64,
            idle_retry_after: Duration::from_secs(60),
            busy_retry_after: Duration::from_secs(1),
            daily_quota_per_core: 1000,
            initial_daily_quota_per_core: 10,
            max_in_progress_per_core: 50,
            max_host_cores: 256,
            max_host_memory_bytes: 1 << 40,
            browser_grace: Duration::from_secs(600),
            private_grid: false,
            adaptive: AdaptiveReplication::default(),
            require_signatures: false,
            inline_output_limit: crate::blobs::inline::DEFAULT_INLINE_OUTPUT_LIMIT,
        }
    }
}

impl SchedulerConfig {
    /// The cores the server believes `reported` cores to be.
    pub fn believed_cores(&self, reported: i32) -> i64 {
        i64::from(reported).clamp(1, i64::from(self.max_host_cores.max(1)))
    }

    /// The memory the server believes `reported` bytes to be.
    pub fn believed_memory(&self, reported: i64) -> i64 {
        reported.clamp(0, i64::try_from(self.max_host_memory_bytes).unwrap_or(i64::MAX))
    }
}

/// Accounts and hosts are free to make, so each address may make only so many within the
/// rate limits' window (see [`crate::rate_limit`]). Web sign-ups and accounts created over
/// the API count together.
#[derive(Debug, Clone)]
pub struct RegistrationLimits {
    pub accounts_per_address: i64,
    pub hosts_per_address: i64,
}

impl Default for RegistrationLimits {
    fn default() -> Self {
        Self { accounts_per_address: 5, hosts_per_address: 20 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trusted_host_is_checked_less_the_longer_its_run_but_never_never() {
        let adaptive = AdaptiveReplication { trusted_after: 10, min_check_probability: 0.05, ..Default::default() };
        assert_eq!(adaptive.check_probability(0, 0), 1.0);
        assert_eq!(adaptive.check_probability(9, 9), 1.0, "not trusted yet");
        assert_eq!(adaptive.check_probability(9, 1000), 1.0, "results on trust earn no trust");
        assert_eq!(adaptive.check_probability(10, 10), 0.5);
        assert_eq!(adaptive.check_probability(10, 20), 0.125, "results on trust count towards the run");
        assert_eq!(adaptive.check_probability(10, 40), 0.05, "the floor, within a few times the threshold");
        assert_eq!(adaptive.check_probability(1_000_000, 1_000_000), 0.05, "the floor");
        let probabilities: Vec<f64> = (10..500).map(|n| adaptive.check_probability(10, n)).collect();
        assert!(probabilities.windows(2).all(|pair| pair[1] <= pair[0]));
    }

    #[test]
    fn scheduler_transactions_are_two_per_core_within_half_the_pool_unless_set() {
        let cores = std::thread::available_parallelism().unwrap().get() as u32;
        assert_eq!(default_scheduler_transactions(10_000), 2 * cores);
        assert_eq!(default_scheduler_transactions(4), 2.min(2 * cores));
        assert_eq!(default_scheduler_transactions(1), 1, "never none");
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), "data".into(), DatabaseLocation::Embedded);
        config.max_database_connections = 2;
        assert_eq!(config.scheduler_transactions(), 1);
        config.max_scheduler_transactions = Some(7);
        assert_eq!(config.scheduler_transactions(), 7, "the operator's number");
    }
}
