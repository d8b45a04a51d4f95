//! `bench-server`: how fast one server moves work through the whole loop.
//!
//! It starts the release `wasmgrid-server` on its embedded PostgreSQL, loads work units
//! with quorum 2 straight into the database, and drives simulated volunteers over real HTTP
//! with the real client library: each asks for work, uploads a fixed output for every
//! replica it got (no Wasm runs) and reports them in its next request, until every work
//! unit is validated. It prints throughput, request latencies and peak memory, and where
//! the time went: CPU seconds of the server, of PostgreSQL and of the volunteers, and the
//! statements that took the database's time (`pg_stat_statements`). Before and after the
//! loop it runs pgbench on the same cluster, and quotes replicas per second as a ratio to
//! pgbench's mean transactions per second, a figure that travels between machines. It is a
//! measurement, not a test: nothing here fails on a timing.
//!
//! ```sh
//! cargo build --release -p wasmgrid-server -p wasmgrid-e2e && target/release/bench-server
//! ```

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use tokio::sync::{Mutex, watch};
use wasmgrid_client::api::ServerClient;
use wasmgrid_e2e::bench::{BenchServer, load_bench_work_units, ms, peak_rss_kib, percentile, register_simulated_host};
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{InlineOutput, ReplicaReport, ReportedOutcome, SchedulerRequest};
use wasmgrid_server::publishing::AppReplication;

#[derive(Parser)]
#[command(about = "Measures the server's replica throughput over real HTTP")]
struct Args {
    /// Work units to load (quorum 2, so twice as many replicas).
    #[arg(long, default_value_t = 100_000)]
    work_units: usize,
    /// Simulated volunteers, each its own account and host.
    #[arg(long, default_value_t = 64)]
    volunteers: usize,
    /// Replicas each volunteer asks for per scheduler request.
    #[arg(long, default_value_t = 32)]
    batch: u32,
    /// Keep the blobs in an S3 API server (the `s3s-fs` binary, started here) instead of
    /// the data directory.
    #[arg(long)]
    s3: bool,
    /// Seconds each pgbench script runs (0: no pgbench).
    #[arg(long, default_value_t = 20)]
    pgbench_seconds: u64,
    /// pgbench's client connections.
    #[arg(long, default_value_t = 8)]
    pgbench_clients: u32,
    /// The server's --inline-output-limit: 0 has every output uploaded before its report,
    /// as before outputs could travel inside reports.
    #[arg(long, default_value_t = wasmgrid_server::blobs::inline::DEFAULT_INLINE_OUTPUT_LIMIT)]
    inline_output_limit: u64,
    /// The server's --max-connections: the database connections it opens.
    #[arg(long, default_value_t = 32)]
    database_connections: u32,
    /// The server's --max-scheduler-transactions [default: the server's own].
    #[arg(long)]
    scheduler_transactions: Option<u32>,
    /// How many of the statements that took the most time to list.
    #[arg(long, default_value_t = 12)]
    statements: i64,
}

/// Every replica returns this output, so every quorum agrees.
const OUTPUT: &[u8] = b"42\n";
/// Every replica reports this fuel: one credit.
const FUEL: u64 = 1_000_000_000;

#[derive(Default)]
struct Latencies {
    scheduler: Mutex<Vec<Duration>>,
    upload: Mutex<Vec<Duration>>,
}

#[derive(Default)]
struct Counters {
    dispatched: AtomicU64,
    reported: AtomicU64,
    failed_requests: AtomicU64,
}

mod breakdown;
mod pgbench;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bucket = args.s3.then(wasmgrid_server::blobs::test_s3::fresh_bucket);
    let inline_limit = args.inline_output_limit.to_string();
    let database_connections = args.database_connections.to_string();
    let scheduler_transactions = args.scheduler_transactions.map(|turns| turns.to_string());
    let mut store_args: Vec<&str> =
        vec!["--inline-output-limit", &inline_limit, "--max-connections", &database_connections];
    if let Some(turns) = &scheduler_transactions {
        store_args.extend(["--max-scheduler-transactions", turns.as_str()]);
    }
    let bucket_url = bucket.as_ref().map(|bucket| bucket.url.to_string());
    if let Some(url) = &bucket_url {
        store_args.extend(["--blob-store", url.as_str()]);
    }
    let store_env = bucket.as_ref().map(|bucket| bucket.env()).unwrap_or_default();
    let mut server = BenchServer::start_with_env(
        &[
            "--sweep-interval",
            "1",
            "--idle-retry-after",
            "1",
            "--daily-quota-per-core",
            "1000000",
            // The simulated volunteers are established hosts, all on this one address.
            "--initial-daily-quota-per-core",
            "1000000",
            "--accounts-per-address",
            "100000",
            "--hosts-per-address",
            "100000",
        ]
        .into_iter()
        .chain(store_args)
        .collect::<Vec<_>>(),
        &store_env,
    )
    .await?;
    // The per-statement figures need the extension loaded as the cluster starts.
    sqlx::query("alter system set shared_preload_libraries = 'pg_stat_statements'").execute(&server.pool).await?;
    server.restart().await?;
    sqlx::query("create extension if not exists pg_stat_statements").execute(&server.pool).await?;
    // Planning counts apart: a custom plan is made again on every call.
    sqlx::query("alter system set pg_stat_statements.track_planning = on").execute(&server.pool).await?;
    sqlx::query("select pg_reload_conf()").execute(&server.pool).await?;
    let (pool, url, data_path, server_pid) =
        (server.pool.clone(), server.url.clone(), server.data_dir.clone(), server.pid);
    let cluster_dir = data_path.join("postgres");

    let pgbench = if args.pgbench_seconds > 0 {
        println!("pgbench -N and pgbench on the same cluster, {} s each...", args.pgbench_seconds);
        let options = wasmgrid_server::database::embedded::connect_options_for(&cluster_dir, "wasmgrid");
        Some(pgbench::run(&options, args.pgbench_clients, args.pgbench_seconds).await?)
    } else {
        None
    };

    println!("loading {} work units (quorum 2)...", args.work_units);
    let load_started = Instant::now();
    load_bench_work_units(&pool, &data_path, args.work_units, AppReplication::default()).await?;
    let load_time = load_started.elapsed();

    let volunteers = register_volunteers(&url, args.volunteers).await?;
    println!("{} volunteers registered; running...", volunteers.len());
    sqlx::query("select pg_stat_statements_reset()").execute(&pool).await?;
    let cpu_before = breakdown::CpuSeconds::now(server_pid, &cluster_dir);

    let latencies = Arc::new(Latencies::default());
    let counters = Arc::new(Counters::default());
    let (finish, finished) = watch::channel(false);
    let started = Instant::now();
    let mut workers = Vec::new();
    for (client, token) in volunteers {
        workers.push(tokio::spawn(volunteer_loop(
            client,
            token,
            args.batch,
            latencies.clone(),
            counters.clone(),
            finished.clone(),
        )));
    }
    let all_validated_after = wait_until_all_validated(&pool, started).await?;
    let _ = finish.send(true);
    for worker in workers {
        worker.await??;
    }
    let run_time = started.elapsed();
    let cpu = breakdown::CpuSeconds::now(server_pid, &cluster_dir).since(cpu_before);
    let statements = breakdown::top_statements(&pool, args.statements).await?;
    let (statement_ms, planning_ms) = breakdown::total_statement_ms(&pool).await?;

    let valid_replicas: i64 =
        sqlx::query_scalar("select count(*) from replica where validate_state = 'valid'").fetch_one(&pool).await?;
    let credit = wait_for_credit(&pool).await?;
    // pgbench again, so that the ratio is to this machine's speed around the loop, not only
    // before it: its speed drifts on the scale of a run here.
    let pgbench_after = match &pgbench {
        Some(before) => {
            println!("pgbench -N and pgbench again...");
            let options = wasmgrid_server::database::embedded::connect_options_for(&cluster_dir, "wasmgrid");
            Some(pgbench::run(&options, before.clients, before.seconds).await?)
        }
        None => None,
    };
    let server_peak = peak_rss_kib(server_pid);
    let postgres_peak = postgres_peak_rss_kib(&data_path);

    let mut scheduler = latencies.scheduler.lock().await.clone();
    let mut upload = latencies.upload.lock().await.clone();
    let dispatched = counters.dispatched.load(Ordering::Relaxed);
    let reported = counters.reported.load(Ordering::Relaxed);
    let seconds = all_validated_after.as_secs_f64();
    println!();
    println!("work units                      {:>12}", args.work_units);
    println!("volunteers x replicas/request   {:>12}", format!("{} x {}", args.volunteers, args.batch));
    println!(
        "load time                       {:>11.1}s  ({:.0} work units/s)",
        load_time.as_secs_f64(),
        args.work_units as f64 / load_time.as_secs_f64()
    );
    println!("time until all validated        {:>11.1}s", seconds);
    println!("replicas dispatched             {:>12}  ({:.0}/s)", dispatched, dispatched as f64 / seconds);
    println!(
        "replicas reported               {:>12}  ({:.0}/s over the whole run of {:.1}s)",
        reported,
        reported as f64 / run_time.as_secs_f64(),
        run_time.as_secs_f64()
    );
    println!("replicas validated              {:>12}  ({:.0}/s)", valid_replicas, valid_replicas as f64 / seconds);
    println!("work units validated per second {:>12.0}", args.work_units as f64 / seconds);
    println!(
        "scheduler requests              {:>12}  p50 {}  p99 {}  max {}",
        scheduler.len(),
        ms(percentile(&mut scheduler, 0.50)),
        ms(percentile(&mut scheduler, 0.99)),
        ms(percentile(&mut scheduler, 1.0))
    );
    println!(
        "output uploads                  {:>12}  p50 {}  p99 {}  max {}",
        upload.len(),
        ms(percentile(&mut upload, 0.50)),
        ms(percentile(&mut upload, 0.99)),
        ms(percentile(&mut upload, 1.0))
    );
    println!("failed requests                 {:>12}", counters.failed_requests.load(Ordering::Relaxed));
    println!("server peak memory (VmHWM)      {:>9} MiB", server_peak / 1024);
    println!("PostgreSQL peak memory (sum)    {:>9} MiB", postgres_peak / 1024);
    println!("credit granted                  {:>12.1}  (expected {valid_replicas}.0: one per valid replica)", credit);
    println!("blob store                      {:>12}", if args.s3 { "S3 (s3s-fs)" } else { "directory" });
    println!("inline output limit             {:>12}  (outputs of {} bytes)", args.inline_output_limit, OUTPUT.len());

    let replicas_per_second = valid_replicas as f64 / seconds;
    if let (Some(before), Some(after)) = (&pgbench, &pgbench_after) {
        println!();
        println!(
            "pgbench -N (simple-update)      {:>12.0} TPS before the loop, {:.0} after  ({} clients, {} s each)",
            before.simple_update_tps, after.simple_update_tps, before.clients, before.seconds
        );
        println!(
            "pgbench (TPC-B-like)            {:>12.0} TPS before the loop, {:.0} after",
            before.tpcb_tps, after.tpcb_tps
        );
        let simple_update_tps = (before.simple_update_tps + after.simple_update_tps) / 2.0;
        let tpcb_tps = (before.tpcb_tps + after.tpcb_tps) / 2.0;
        println!(
            "replicas/s over pgbench -N TPS  {:>12.3}  (over plain pgbench TPS: {:.3}; both the mean of before and after)",
            replicas_per_second / simple_update_tps,
            replicas_per_second / tpcb_tps
        );
    }

    let cpu_total = cpu.server + cpu.postgres + cpu.volunteers;
    println!();
    println!("CPU seconds over the run ({:.1} s of wall time on this machine's cores):", run_time.as_secs_f64());
    for (side, seconds) in
        [("server", cpu.server), ("PostgreSQL", cpu.postgres), ("volunteers (this process)", cpu.volunteers)]
    {
        println!(
            "  {side:<28}{seconds:>8.1} s  {:>5.1}%  {:>7.1} µs per validated replica",
            100.0 * seconds / cpu_total.max(f64::EPSILON),
            1e6 * seconds / (valid_replicas.max(1) as f64)
        );
    }
    let requests = (scheduler.len() + upload.len()) as f64;
    println!(
        "  per request: {:.0} µs of server CPU and {:.0} µs of PostgreSQL CPU ({} requests)",
        1e6 * cpu.server / requests.max(1.0),
        1e6 * cpu.postgres / requests.max(1.0),
        requests
    );
    println!();
    println!(
        "statements by execution time ({:.1} s in all, {:.0} µs per validated replica; planning {:.1} s, {:.0} µs):",
        statement_ms / 1000.0,
        1000.0 * statement_ms / valid_replicas.max(1) as f64,
        planning_ms / 1000.0,
        1000.0 * planning_ms / valid_replicas.max(1) as f64
    );
    for statement in &statements {
        let mut query: String = statement.query.chars().take(110).collect();
        if statement.query.chars().count() > 110 {
            query.push('…');
        }
        println!(
            "  {:>5.1}%  {:>7} calls  {:>7.3} ms mean  {:>6.3} ms planning ({:>5} plans)  {:>6.0} blocks  {:>5.2} per replica  {query}",
            100.0 * statement.total_ms / statement_ms.max(f64::EPSILON),
            statement.calls,
            statement.mean_ms,
            statement.plan_ms_per_call,
            statement.plans,
            statement.blocks_per_call,
            statement.calls as f64 / valid_replicas.max(1) as f64,
        );
    }

    server.stop().await
}

async fn register_volunteers(url: &str, count: usize) -> anyhow::Result<Vec<(ServerClient, String)>> {
    let mut volunteers = Vec::new();
    for i in 0..count {
        let client = ServerClient::new(url)?;
        let host = register_simulated_host(&client, i).await?;
        volunteers.push((client, host.host_token));
    }
    Ok(volunteers)
}

/// One simulated volunteer: ask, upload, report in the next request; stop when the
/// coordinator says all is validated and nothing is left to report.
async fn volunteer_loop(
    client: ServerClient,
    token: String,
    batch: u32,
    latencies: Arc<Latencies>,
    counters: Arc<Counters>,
    finished: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let output = Bytes::from_static(OUTPUT);
    let output_hash = Sha256Hash::of(OUTPUT);
    let mut reports: Vec<ReplicaReport> = Vec::new();
    loop {
        let done = *finished.borrow();
        let want = if done { 0 } else { batch };
        if done && reports.is_empty() {
            return Ok(());
        }
        let request = SchedulerRequest {
            reports: std::mem::take(&mut reports),
            want_replicas: want,
            ..SchedulerRequest::default()
        };
        let sent = Instant::now();
        let reply = match client.scheduler(&token, &request).await {
            Ok(reply) => reply,
            Err(error) => {
                counters.failed_requests.fetch_add(1, Ordering::Relaxed);
                eprintln!("scheduler request failed: {error}");
                reports = request.reports;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        latencies.scheduler.lock().await.push(sent.elapsed());
        // What may travel inside a report, as this reply says.
        let inline_limit = reply.inline_output_limit;
        counters.reported.fetch_add(reply.acknowledged.len() as u64, Ordering::Relaxed);
        counters.dispatched.fetch_add(reply.assignments.len() as u64, Ordering::Relaxed);
        for assignment in &reply.assignments {
            let inline = OUTPUT.len() as u64 <= inline_limit;
            if !inline {
                let sent = Instant::now();
                if let Err(error) =
                    client.upload_output_as(&token, assignment.replica_id, output_hash, output.clone()).await
                {
                    counters.failed_requests.fetch_add(1, Ordering::Relaxed);
                    eprintln!("upload failed: {error}");
                    continue;
                }
                latencies.upload.lock().await.push(sent.elapsed());
            }
            reports.push(ReplicaReport {
                replica_id: assignment.replica_id,
                outcome: ReportedOutcome::Success { output_hash, output_bytes: OUTPUT.len() as u64 },
                fuel_used: FUEL,
                run_time_ms: 0,
                exit_status: Some(0),
                stderr: String::new(),
                instrumentation_version: wasmgrid_sandbox::INSTRUMENTATION_VERSION,
                output: inline.then(|| InlineOutput(OUTPUT.to_vec())),
            });
        }
        if reply.assignments.is_empty() && reports.is_empty() {
            tokio::time::sleep(Duration::from_millis(200).min(Duration::from_secs(reply.retry_after_seconds))).await;
        }
    }
}

async fn wait_until_all_validated(pool: &sqlx::PgPool, started: Instant) -> anyhow::Result<Duration> {
    loop {
        let active: i64 =
            sqlx::query_scalar("select count(*) from work_unit where state <> 'validated'").fetch_one(pool).await?;
        if active == 0 {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Total credit once the server's credit sweep has folded every grant.
async fn wait_for_credit(pool: &sqlx::PgPool) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let unapplied: i64 =
            sqlx::query_scalar("select count(*) from credit_grant where not applied").fetch_one(pool).await?;
        if unapplied == 0 || Instant::now() > deadline {
            return Ok(sqlx::query_scalar("select coalesce(sum(total_credit), 0) from host").fetch_one(pool).await?);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sum of the peaks of the PostgreSQL processes serving `data_dir` (an upper bound: shared
/// buffers are counted in every process that touched them).
fn postgres_peak_rss_kib(data_dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let cluster = data_dir.join("postgres");
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == cluster)
                && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "postgres")
        })
        .map(peak_rss_kib)
        .sum()
}
