//! Two server processes as two machines would run them: each with a data directory of its
//! own, sharing nothing but PostgreSQL and an S3 blob store (a real S3 API server), behind a
//! load balancer that the volunteers reach (a small TCP proxy here, spreading connections
//! over the servers that accept them). One server dies mid-batch: every work unit
//! validates, nothing is lost, and nothing is handed out twice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use wasmgrid_server::blobs::test_s3::{TestBucket, fresh_bucket};
use wasmgrid_server::database::test_cluster;

use crate::harness::{Publisher, Volunteer, announced_url, binary, example_module, port_of, publisher_token, signal};

const WORK_UNITS: i64 = 24;
const TIMEOUT: Duration = Duration::from_secs(180);

/// How a server is told where its blobs go.
enum BlobStoreGiven {
    Flag,
    /// `WASMGRID_BLOB_STORE`, as a service unit's environment file would set it.
    Environment,
}

/// A server process with a data directory of its own, its blobs in `bucket`.
async fn start_server(
    database_url: &str,
    bucket: &TestBucket,
    given: BlobStoreGiven,
) -> (Child, String, tempfile::TempDir) {
    let data_dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(binary("wasmgrid-server"));
    command.args(["serve", "--listen", "127.0.0.1:0", "--private-grid", "true", "--idle-retry-after", "1"]).args([
        "--sweep-interval",
        "1",
        "--accounts-per-address",
        "100000",
        "--hosts-per-address",
        "100000",
    ]);
    match given {
        BlobStoreGiven::Flag => command.args(["--blob-store", bucket.url.as_str()]),
        BlobStoreGiven::Environment => command.env("WASMGRID_BLOB_STORE", bucket.url.as_str()),
    };
    command
        .arg("--data-dir")
        .arg(data_dir.path())
        .envs(bucket.env())
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("the server binary starts");
    let url = announced_url(&mut child).await;
    (child, url, data_dir)
}

/// Spreads connections over `backends` in turn, skipping one that refuses them.
async fn load_balancer(backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else { continue };
            let (backends, next) = (backends.clone(), next.clone());
            tokio::spawn(async move {
                let first = next.fetch_add(1, Ordering::Relaxed);
                for offset in 0..backends.len() {
                    let backend = backends[(first + offset) % backends.len()];
                    if let Ok(mut outbound) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    address
}

fn socket_address(url: &str) -> SocketAddr {
    format!("127.0.0.1:{}", port_of(url)).parse().unwrap()
}

#[tokio::test]
async fn two_servers_sharing_only_the_database_and_object_store_survive_one_dying() {
    let bucket = fresh_bucket();
    let database_url = test_cluster::fresh_database_url().await;
    let (mut first, first_url, first_dir) = start_server(&database_url, &bucket, BlobStoreGiven::Flag).await;
    // The survivor, told by its environment: every output must reach the bucket through it.
    let (mut second, second_url, second_dir) = start_server(&database_url, &bucket, BlobStoreGiven::Environment).await;
    assert_ne!(first_dir.path(), second_dir.path());
    let balancer = load_balancer(vec![socket_address(&first_url), socket_address(&second_url)]).await;
    let balancer_url = format!("http://{balancer}");

    // Published through the balancer with the real publishing commands: the module and the
    // inputs land in the bucket, whichever server stored them.
    let scientist =
        Publisher { server_url: balancer_url.clone(), token: publisher_token(&database_url, "scientist").await };
    let primes = example_module("primes");
    scientist.json(&["app", "create", "primes"]).await;
    scientist.json(&["app", "publish", "primes", primes.to_str().unwrap()]).await;
    let inputs = tempfile::tempdir().unwrap();
    for i in 0..WORK_UNITS {
        std::fs::write(inputs.path().join(format!("range-{i:02}")), format!("{} {}", i * 20_000, (i + 1) * 20_000))
            .unwrap();
    }
    let submitted = scientist
        .json(&["batch", "submit", "--app", "primes", "--inputs", inputs.path().to_str().unwrap(), "--quorum", "2"])
        .await;
    let batch = submitted["batch_id"].as_i64().unwrap().to_string();

    let volunteers: Vec<Volunteer> = (0..3).map(|_| Volunteer::unattached()).collect();
    let mut daemons = Vec::new();
    for (i, volunteer) in volunteers.iter().enumerate() {
        let output =
            volunteer.command(&["attach", &balancer_url, "--name", &format!("volunteer-{i}")]).output().await.unwrap();
        assert!(output.status.success(), "attach failed: {}", String::from_utf8_lossy(&output.stderr));
        daemons.push(volunteer.start());
    }

    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
    };
    let give_up = Instant::now() + TIMEOUT;
    while count("select count(*) from work_unit where state = 'validated'").await < WORK_UNITS / 4 {
        assert!(Instant::now() < give_up, "the batch did not get under way");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&first, libc::SIGKILL);
    first.wait().await.unwrap();
    let validated_at_the_kill = count("select count(*) from work_unit where state = 'validated'").await;
    assert!(validated_at_the_kill < WORK_UNITS, "the batch was still under way when the first server died");

    while count("select count(*) from work_unit where state = 'validated'").await < WORK_UNITS {
        assert!(Instant::now() < give_up, "the batch did not finish after the first server died");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Nothing handed out twice: no host got two replicas of one work unit, and every
    // replica was handed to one host.
    assert_eq!(
        count("select count(*) from (select 1 from replica where host_id is not null group by work_unit_id, host_id having count(*) > 1) twice")
            .await,
        0
    );
    // Nor handed out again: the quorum's two replicas of each work unit are all there are (a
    // reply lost with the dying server goes out again as the same replicas), and each ran
    // to success: none was given up on and replaced.
    assert_eq!(count("select count(*) from replica").await, 2 * WORK_UNITS);
    assert_eq!(count("select count(*) from replica where outcome is distinct from 'success'").await, 0);
    // Nothing lost: every canonical output is in the bucket, and the scientist downloads
    // each through the balancer, which only the survivor answers now.
    let out = tempfile::tempdir().unwrap();
    let collected = scientist.json(&["batch", "results", &batch, "--out", out.path().to_str().unwrap()]).await;
    assert_eq!(collected["validated"], WORK_UNITS, "{collected}");
    assert_eq!(collected["downloaded"], WORK_UNITS, "{collected}");
    let outputs: Vec<String> = sqlx::query_scalar(
        "select distinct r.output_sha256 from work_unit w join replica r on r.id = w.canonical_replica_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for hash in &outputs {
        assert!(bucket.directory.join("blobs").join(&hash[..2]).join(hash).exists(), "{hash} is in the bucket");
    }
    // Credit for every valid replica, once.
    let unapplied = "select count(*) from credit_grant where not applied";
    while count(unapplied).await > 0 {
        assert!(Instant::now() < give_up, "credit was not folded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        count("select count(*) from replica where validate_state = 'valid'").await,
        count("select count(*) from credit_grant").await
    );

    for daemon in &daemons {
        signal(daemon, libc::SIGTERM);
    }
    for mut daemon in daemons {
        daemon.wait().await.unwrap();
    }
    signal(&second, libc::SIGTERM);
    second.wait().await.unwrap();
}
