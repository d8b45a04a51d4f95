//! `bench-web`: how fast the public pages are with a large project behind them.
//!
//! The release server on its embedded database, filled with `--users` accounts (two in three
//! in one of `--teams` teams), `--hosts` hosts and `--work-units` validated work units whose
//! replicas are spread over the hosts, all with credit, and every user and team with credit
//! on each of the last `--history-days` days (the charts); then every page is requested
//! `--requests` times in a row and the p50 and p99 of the whole request (as a client sees
//! it) are printed. It is a measurement, not a test.
//!
//! ```sh
//! cargo build --release --workspace && target/release/bench-web
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rand::Rng;
use wasmgrid_client::api::{Method, ServerClient};
use wasmgrid_e2e::bench::{BenchServer, ms, percentile};
use wasmgrid_protocol::publish::ValidatorSpec;
use wasmgrid_server::blobs::{DirectoryStore, store_bytes};
use wasmgrid_server::publishers;
use wasmgrid_server::publishing::{self, WorkUnitSpec};

#[derive(Parser)]
#[command(about = "Times the leaderboard, user, team, host and status pages of a large project")]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    users: i64,
    #[arg(long, default_value_t = 20_000)]
    teams: i64,
    #[arg(long, default_value_t = 200_000)]
    hosts: i64,
    #[arg(long, default_value_t = 50_000)]
    work_units: usize,
    /// Days of credit history of every user and team.
    #[arg(long, default_value_t = 90)]
    history_days: i32,
    /// Requests per page.
    #[arg(long, default_value_t = 500)]
    requests: usize,
}

/// The path of the next request for a page: fixed, or a random user, team or host.
type PathFor = Box<dyn Fn(&mut rand::rngs::ThreadRng) -> String>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = BenchServer::start(&[]).await?;
    let started = Instant::now();
    fill(&server, &args).await?;
    println!("filled in {:.1} s; requesting each page {} times...", started.elapsed().as_secs_f64(), args.requests);

    let client = ServerClient::new(&server.url)?;
    let mut rng = rand::rng();
    let pages: Vec<(&str, PathFor)> = vec![
        ("top 100 users (/users)", Box::new(|_| "/users".into())),
        ("users by recent average, page 500", Box::new(|_| "/users?order=recent&page=500".into())),
        ("top 100 teams (/teams)", Box::new(|_| "/teams".into())),
        ("top 100 hosts (/hosts)", Box::new(|_| "/hosts".into())),
        ("a user's page", Box::new(move |rng| format!("/users/{}", rng.random_range(1..=args.users)))),
        ("a team's page", Box::new(move |rng| format!("/teams/{}", rng.random_range(1..=args.teams)))),
        ("a host's page", Box::new(move |rng| format!("/hosts/{}", rng.random_range(1..=args.hosts)))),
        ("the status page", Box::new(|_| "/status".into())),
        ("the home page", Box::new(|_| "/".into())),
        ("JSON: top 100 users", Box::new(|_| "/api/v1/stats/users".into())),
    ];
    println!();
    for (what, path) in &pages {
        let mut samples = Vec::with_capacity(args.requests);
        for _ in 0..args.requests {
            let path = path(&mut rng);
            let started = Instant::now();
            let response = client.request(Method::GET, &path).send().await?;
            let status = response.status();
            response.bytes().await?;
            samples.push(started.elapsed());
            if !status.is_success() {
                bail!("{path} answered {status}");
            }
        }
        let slowest = samples.iter().max().copied().unwrap_or(Duration::ZERO);
        println!(
            "{what:<36} p50 {:>9}  p99 {:>9}  max {:>9}",
            ms(percentile(&mut samples, 0.50)),
            ms(percentile(&mut samples, 0.99)),
            ms(slowest)
        );
    }
    server.stop().await
}

/// Teams, users, hosts and validated work spread over them, with credit as the sweeps would
/// leave it.
async fn fill(server: &BenchServer, args: &Args) -> anyhow::Result<()> {
    let pool = &server.pool;
    sqlx::query(
        "insert into team (name, description, total_credit, expavg_credit, expavg_time)
         select 'team-' || g, 'team number ' || g, random() * 1e6, random() * 1e3, now()
         from generate_series(1, $1) g",
    )
    .bind(args.teams)
    .execute(pool)
    .await?;
    sqlx::query(
        "insert into account (name, key_hash, team_id, total_credit, expavg_credit, expavg_time)
         select 'user-' || g, sha256(('key-' || g)::bytea),
                case when g % 3 = 0 then null else 1 + g % $2 end,
                random() * 1e5, random() * 1e2, now() - random() * interval '3 days'
         from generate_series(1, $1) g",
    )
    .bind(args.users)
    .bind(args.teams)
    .execute(pool)
    .await?;
    sqlx::query(
        "insert into host (account_id, token_hash, name, os, arch, cores, memory_bytes, client_version,
                           daily_quota, total_credit, expavg_credit, expavg_time, last_contact_at)
         select 1 + g % $2, sha256(('token-' || g)::bytea), 'host-' || g, 'linux', 'x86_64', 8, 17179869184,
                '0.1.0', 8000, random() * 1e4, random() * 10, now(), now() - random() * interval '3 days'
         from generate_series(1, $1) g",
    )
    .bind(args.hosts)
    .bind(args.users)
    .execute(pool)
    .await?;

    // Every user and team earned credit on every day of the charts: the most rows a page's
    // chart can read.
    for (table, owner, count) in
        [("account_daily_credit", "account_id", args.users), ("team_daily_credit", "team_id", args.teams)]
    {
        sqlx::query(&format!(
            "insert into {table} ({owner}, day, credit)
             select id, current_date - d, random() * 1e3
             from generate_series(1, $1) id, generate_series(0, $2 - 1) d"
        ))
        .bind(count)
        .bind(args.history_days)
        .execute(pool)
        .await?;
    }

    // Validated work, for the hosts' recent results and the status page.
    let store = DirectoryStore::open(server.data_dir.join("blobs"))?;
    let mut transaction = pool.begin().await?;
    let module = store_bytes(&mut transaction, &store, b"\0asm\x01\0\0\0").await.map_err(api_error)?;
    let output = store_bytes(&mut transaction, &store, b"output").await.map_err(api_error)?;
    let publisher = publishers::ensure(&mut transaction, "bench").await?;
    let app = publishing::create_app(&mut transaction, publisher, "bench", "", &ValidatorSpec::Bitwise)
        .await
        .map_err(api_error)?;
    publishing::add_app_version(&mut transaction, app, module).await.map_err(api_error)?;
    let specs: Vec<WorkUnitSpec> = (0..args.work_units).map(|i| WorkUnitSpec::new(format!("wu-{i}"))).collect();
    publishing::create_batch(&mut transaction, app, "bench", &specs).await.map_err(api_error)?;
    // Each replica to its own host (consecutive replicas of a work unit go to different
    // accounts), reported over the last three days, valid.
    sqlx::query(
        "update replica r set state = 'over', outcome = 'success', validate_state = 'valid', credit = 1,
                host_id = 1 + r.id % $1, account_id = 1 + (1 + r.id % $1) % $2,
                sent_at = now() - interval '3 days', deadline_at = now() + interval '4 days',
                received_at = now() - random() * interval '3 days', output_sha256 = $3, output_bytes = 6,
                fuel_used = 1000000000, run_time_ms = 1000",
    )
    .bind(args.hosts)
    .bind(args.users)
    .bind(output.to_hex())
    .execute(&mut *transaction)
    .await
    .context("cannot spread the replicas over the hosts")?;
    sqlx::query(
        "update work_unit w set state = 'validated', finished_at = now(), credit = 1,
                canonical_replica_id = (select min(id) from replica where work_unit_id = w.id)",
    )
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    sqlx::query("analyze").execute(pool).await?;
    Ok(())
}

fn api_error(error: wasmgrid_server::http::error::ApiError) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}
