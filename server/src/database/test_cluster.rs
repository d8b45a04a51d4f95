//! Databases for tests and benchmarks: one throwaway cluster per process, started by the
//! same code as the embedded default, and a fresh database for every caller.
//!
//! Each fresh database is a copy of a template that was migrated once, which takes a few
//! milliseconds instead of running every migration again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::postgres::PgConnectOptions;
use tokio::sync::OnceCell;

use super::{Durability, EmbeddedPostgres, MIGRATOR};

const TEMPLATE: &str = "wasmgrid_template";

struct TestCluster {
    postgres: EmbeddedPostgres,
    // Kept so the directory lives as long as the cluster; removed when the process ends.
    _dir: tempfile::TempDir,
}

// The cluster is started from whichever runtime asks first, but the postmaster is owned by
// a dedicated thread (see `embedded`), so it outlives that runtime and stops with the
// process.
static CLUSTER: OnceCell<TestCluster> = OnceCell::const_new();
static NEXT_DATABASE: AtomicU64 = AtomicU64::new(0);

async fn cluster() -> &'static TestCluster {
    CLUSTER
        .get_or_init(|| async {
            remove_clusters_of_finished_processes();
            let dir = tempfile::Builder::new()
                .prefix(&format!("{CLUSTER_PREFIX}{}-", std::process::id()))
                .tempdir_in(short_temp_root())
                .expect("cannot create a directory for the test cluster");
            // When tests run as root, the cluster runs as an unprivileged user who must be
            // able to enter this directory.
            std::fs::set_permissions(
                dir.path(),
                <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
            )
            .expect("cannot open up the test cluster directory");
            let postgres = EmbeddedPostgres::start(dir.path(), Durability::Throwaway)
                .await
                .unwrap_or_else(|error| panic!("cannot start the test PostgreSQL cluster: {error:#}"));
            postgres.create_database(TEMPLATE, None, false).await.expect("cannot create the template database");
            let pool = sqlx::PgPool::connect_with(postgres.connect_options(TEMPLATE))
                .await
                .expect("cannot connect to the template database");
            MIGRATOR.run(&pool).await.expect("migrations failed on the template database");
            pool.close().await;
            TestCluster { postgres, _dir: dir }
        })
        .await
}

const CLUSTER_PREFIX: &str = "wasmgrid-test-";

/// Statics are never dropped, so a test process cannot remove its own cluster directory;
/// the next one removes those whose process has ended.
fn remove_clusters_of_finished_processes() {
    let Ok(entries) = std::fs::read_dir(short_temp_root()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|name| name.strip_prefix(CLUSTER_PREFIX)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|pid| pid.parse::<u32>().ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `/tmp` keeps the socket path short, whatever `TMPDIR` says.
fn short_temp_root() -> PathBuf {
    let tmp = PathBuf::from("/tmp");
    if tmp.is_dir() { tmp } else { std::env::temp_dir() }
}

/// A new, migrated, empty database of its own for the caller.
pub async fn fresh_database() -> PgConnectOptions {
    let cluster = cluster().await;
    let name = format!("test_{}_{}", std::process::id(), NEXT_DATABASE.fetch_add(1, Ordering::Relaxed));
    cluster.postgres.create_database(&name, Some(TEMPLATE), false).await.expect("cannot create a test database");
    cluster.postgres.connect_options(&name)
}

/// The URL of a fresh database, for handing to another process (`DATABASE_URL`).
pub async fn fresh_database_url() -> String {
    let options = fresh_database().await;
    let database = options.get_database().expect("test databases are named").to_owned();
    let base = cluster().await.postgres.database_url();
    let (before, after) = base.split_once("/wasmgrid?").expect("embedded URLs name the database");
    format!("{before}/{database}?{after}")
}
