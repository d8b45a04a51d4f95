//! Whether the server's two dependencies, PostgreSQL and the blob store, are usable, as the
//! server last saw them, and since when they are not.
//!
//! - A background probe checks the database every second on a connection of its own, so
//!   `/healthz` answers at once, and requests that need the database are refused with a
//!   503 at once while it is down, instead of each waiting out the pool's timeout.
//! - A 503 or 507 advises `Retry-After` from how long the outage has lasted so far: a blip
//!   asks for a second, an outage of an hour for a minute (at most [`MAX_RETRY_AFTER`]).
//!   Clients spread their retries with jitter of their own.
//! - Each change of state is logged once, not each failure.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::watch;

/// The shortest and the longest wait a 503 or 507 asks for.
pub const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How often the database is probed, and how long one probe may take.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One dependency's state: up, or down since some moment.
#[derive(Debug)]
pub struct Outage {
    what: &'static str,
    down_since: Mutex<Option<Instant>>,
}

impl Outage {
    pub fn new(what: &'static str) -> Self {
        Self { what, down_since: Mutex::new(None) }
    }

    /// Records a failure; logs the outage's start once.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        let mut down_since = self.down_since.lock().expect("outage state poisoned");
        if down_since.is_none() {
            tracing::warn!(%error, "{} unavailable; answering 503 until it is back", self.what);
            *down_since = Some(Instant::now());
        }
    }

    /// Records a success; logs the outage's end once, with how long it lasted.
    pub fn recovered(&self) {
        let mut down_since = self.down_since.lock().expect("outage state poisoned");
        if let Some(since) = down_since.take() {
            tracing::info!(outage_ms = since.elapsed().as_millis() as u64, "{} available again", self.what);
        }
    }

    pub fn is_down(&self) -> bool {
        self.down_since.lock().expect("outage state poisoned").is_some()
    }

    /// The wait to advise: as long as the outage has lasted, within the bounds.
    pub fn retry_after(&self) -> Duration {
        let down_for = self.down_since.lock().expect("outage state poisoned").map_or(Duration::ZERO, |s| s.elapsed());
        down_for.clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER)
    }
}

/// The state of the database and of the blob store, shared by every handler.
#[derive(Debug)]
pub struct Availability {
    pub database: Outage,
    pub blob_store: Outage,
    /// When a request was last refused for want of a database connection or a turn.
    busy_logged: Mutex<Option<Instant>>,
}

/// At most one line a minute says the server is turning requests away for being busy.
const BUSY_LOG_INTERVAL: Duration = Duration::from_secs(60);

impl Default for Availability {
    fn default() -> Self {
        Self {
            database: Outage::new("the database"),
            blob_store: Outage::new("the blob store (disk full)"),
            busy_logged: Mutex::new(None),
        }
    }
}

impl Availability {
    /// A request was refused with a 503 because the server is busy (no database connection
    /// free, no turn to hash a password); logged at most once a minute.
    pub fn note_busy(&self) {
        let mut logged = self.busy_logged.lock().expect("busy state poisoned");
        if logged.is_none_or(|at| at.elapsed() >= BUSY_LOG_INTERVAL) {
            tracing::warn!("the server is busy: answering some requests 503 (no database connection or turn free)");
            *logged = Some(Instant::now());
        }
    }
}

/// Probes the database every second until `shutdown`, on a connection of its own (so a
/// busy pool does not look like an outage), and records what it finds.
pub async fn probe_database(
    options: PgConnectOptions,
    availability: std::sync::Arc<Availability>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connection: Option<PgConnection> = None;
    let mut ticker = tokio::time::interval(PROBE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        let probe = async {
            let mut open = match connection.take() {
                Some(open) => open,
                None => options.connect().await?,
            };
            sqlx::query("select 1").execute(&mut open).await?;
            anyhow::Ok(open)
        };
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(PROBE_TIMEOUT, probe) => outcome,
            _ = shutdown.changed() => break,
        };
        match outcome {
            Ok(Ok(open)) => {
                connection = Some(open);
                availability.database.recovered();
            }
            Ok(Err(error)) => availability.database.failed(&format!("{error:#}")),
            Err(_) => availability.database.failed(&"the database did not answer within 2 s"),
        }
    }
    if let Some(open) = connection {
        let _ = tokio::time::timeout(Duration::from_secs(1), open.close()).await;
    }
}

/// Whether a database error means the database cannot be reached or is not accepting work
/// now (as opposed to a query it refused): a 503, and an outage.
pub fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exceptions; 57P01-57P03: shut down, crashed, starting up;
        // 53300: too many connections.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advice_grows_with_the_outage_within_bounds() {
        let outage = Outage::new("the test dependency");
        assert!(!outage.is_down());
        assert_eq!(outage.retry_after(), MIN_RETRY_AFTER);
        outage.failed(&"down");
        *outage.down_since.lock().unwrap() = Some(Instant::now() - Duration::from_secs(20));
        outage.failed(&"still down");
        assert!(outage.is_down());
        assert!((Duration::from_secs(20)..Duration::from_secs(21)).contains(&outage.retry_after()));
        *outage.down_since.lock().unwrap() = Some(Instant::now() - Duration::from_secs(3600));
        assert_eq!(outage.retry_after(), MAX_RETRY_AFTER);
        outage.recovered();
        assert!(!outage.is_down());
        assert_eq!(outage.retry_after(), MIN_RETRY_AFTER);
    }

    #[test]
    fn connection_failures_are_unreachable_and_refusals_are_not() {
        assert!(is_unreachable(&sqlx::Error::PoolTimedOut));
        assert!(is_unreachable(&sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))));
        assert!(!is_unreachable(&sqlx::Error::RowNotFound));
    }
}
