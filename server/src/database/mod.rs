//! PostgreSQL: the only source of truth.
//!
//! - [`embedded`]: the private cluster the server starts when no `DATABASE_URL` is given.
//! - [`test_cluster`]: one throwaway cluster per test process, a fresh database per test.
//!
//! Queries are runtime-checked (`sqlx::query` with binds) and every one is exercised by
//! the test suite against a real PostgreSQL; query functions take `&mut PgConnection` so
//! callers own the transaction.

pub mod embedded;
pub mod test_cluster;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use embedded::{Durability, EmbeddedPostgres};

/// The schema migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Where the server's data lives.
#[derive(Debug, Clone)]
pub enum DatabaseLocation {
    /// A PostgreSQL server someone else runs (`DATABASE_URL`); the server starts nothing.
    Url(String),
    /// The embedded default: a private cluster under the data directory.
    Embedded,
}

/// What opening the database does about the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Schema {
    /// Applies the migrations this binary has and the database lacks.
    #[default]
    Migrate,
    /// Changes nothing, and refuses a database that lacks one of this binary's migrations:
    /// for a rolling upgrade, where `wasmgrid-server migrate` runs once, before the new
    /// binaries start, and the old ones go on serving meanwhile.
    Check,
}

/// A connection pool, plus the embedded cluster behind it when the server owns one.
pub struct Database {
    pub pool: PgPool,
    pub embedded: Option<std::sync::Arc<EmbeddedPostgres>>,
}

impl Database {
    /// Connects (starting the embedded cluster first when needed) and migrates.
    pub async fn open(location: &DatabaseLocation, data_dir: &Path, max_connections: u32) -> anyhow::Result<Self> {
        Self::open_with(location, data_dir, max_connections, Schema::Migrate).await
    }

    /// Connects (starting the embedded cluster first when needed), then migrates or checks
    /// the schema as `schema` says.
    pub async fn open_with(
        location: &DatabaseLocation,
        data_dir: &Path,
        max_connections: u32,
        schema: Schema,
    ) -> anyhow::Result<Self> {
        let (options, embedded) = match location {
            DatabaseLocation::Url(url) => {
                let options: PgConnectOptions = url.parse().context("DATABASE_URL is not a valid PostgreSQL URL")?;
                (options, None)
            }
            DatabaseLocation::Embedded => {
                let embedded = EmbeddedPostgres::start(data_dir, Durability::Durable).await?;
                (embedded.server_database(), Some(std::sync::Arc::new(embedded)))
            }
        };
        let pool = pool_options(max_connections).connect_with(options).await.context("cannot connect to PostgreSQL")?;
        match schema {
            Schema::Migrate => MIGRATOR.run(&pool).await.context("cannot apply database migrations")?,
            Schema::Check => check_schema(&pool).await?,
        }
        Ok(Self { pool, embedded })
    }

    /// Connects for a one-off administrative command (`wasmgrid-server token create`):
    /// through `DATABASE_URL`, or to the embedded cluster of a server that is running on
    /// `data_dir`, or else by starting that cluster for as long as the command needs it.
    /// It never stops a cluster that is running, and never creates one: a data directory
    /// without a cluster is most likely a mistyped path.
    pub async fn open_for_admin(location: &DatabaseLocation, data_dir: &Path) -> anyhow::Result<Self> {
        if let DatabaseLocation::Url(_) = location {
            return Self::open(location, data_dir, 2).await;
        }
        let cluster = data_dir.canonicalize().map(|dir| EmbeddedPostgres::cluster_dir(&dir)).ok();
        let Some(cluster) = cluster.filter(|cluster| cluster.join("PG_VERSION").exists()) else {
            anyhow::bail!(
                "{} holds no server database: pass the --data-dir the server uses (or set DATABASE_URL)",
                data_dir.display()
            );
        };
        let data_dir = data_dir.canonicalize()?;
        match pool_options(2).connect_with(embedded::server_database_in(&data_dir)).await {
            Ok(pool) => {
                MIGRATOR.run(&pool).await.context("cannot apply database migrations")?;
                Ok(Self { pool, embedded: None })
            }
            Err(error) if embedded::running_postmaster(&cluster).is_some() => Err(error)
                .context("the server's database is running but does not accept this connection; try again in a moment"),
            Err(_) => Self::open(location, &data_dir, 2).await,
        }
    }

    /// Closes the pool, then stops the embedded cluster if this process owns one.
    pub async fn close(self) -> anyhow::Result<()> {
        self.pool.close().await;
        if let Some(embedded) = self.embedded {
            embedded.stop().await?;
        }
        Ok(())
    }
}

/// Fails unless every migration of this binary is applied, unchanged. Migrations the
/// binary does not know (a newer binary applied them) are fine: each migration keeps the
/// schema usable by the release before it.
pub async fn check_schema(pool: &PgPool) -> anyhow::Result<()> {
    let applied: Vec<(i64, Vec<u8>)> =
        match sqlx::query_as("select version, checksum from _sqlx_migrations where success").fetch_all(pool).await {
            Ok(applied) => applied,
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P01") => Vec::new(),
            Err(error) => return Err(error).context("cannot read which migrations the database has"),
        };
    let missing: Vec<String> = MIGRATOR
        .iter()
        .filter(|migration| !migration.migration_type.is_down_migration())
        .filter_map(|migration| match applied.iter().find(|(version, _)| *version == migration.version) {
            None => Some(format!("{} ({}) is not applied", migration.version, migration.description)),
            Some((_, checksum)) if checksum.as_slice() != &*migration.checksum => {
                Some(format!("{} ({}) was applied with different contents", migration.version, migration.description))
            }
            Some(_) => None,
        })
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "the database's schema is not the one this server needs, and it was asked not to migrate: {}; \
             run `wasmgrid-server migrate` first",
            missing.join("; ")
        );
    }
    Ok(())
}

pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        // A request waiting longer than this for a connection gets a 503 with Retry-After
        // rather than piling up behind an overloaded database.
        .acquire_timeout(Duration::from_secs(5))
}

/// Is `error` a violation of the named unique constraint or index?
pub fn is_unique_violation(error: &sqlx::Error, constraint: &str) -> bool {
    match error {
        sqlx::Error::Database(db) => db.is_unique_violation() && db.constraint() == Some(constraint),
        _ => false,
    }
}
