//! `bench-trust`: what trust costs and what it catches.
//!
//! It simulates a volunteer population over the real HTTP API of the release server, run as
//! a public grid (quorums span networks): by default 1,000 hosts, each person in a network of
//! their own in 127.0.0.0/8 and each host sending its requests from its own address, of which
//! 5% cheat (see [`population`]): always wrong, wrong 1% of the time once trusted, colluding
//! pairs from one network, and Sybils with seven accounts in one network. No Wasm runs: a
//! host uploads its answer and reports it.
//!
//! It runs the same population twice, on a fresh server each time, with a fixed quorum of 2
//! and with adaptive replication, until every work unit is decided and every recheck done,
//! and prints side by side: replicas run per validated work unit; wrong results accepted at
//! any time, and still standing at the end (after looking back); and how long each kind of
//! cheater lasted before its first wrong result was caught. It is a measurement, not a
//! test: nothing here fails on a figure.
//!
//! ```sh
//! cargo build --release -p wasmgrid-server -p wasmgrid-e2e && target/release/bench-trust
//! ```

mod population;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use rand::SeedableRng;
use tokio::sync::{Semaphore, watch};
use wasmgrid_client::api::ServerClient;
use wasmgrid_e2e::bench::{BenchServer, load_bench_work_units, register_simulated_host};
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{ReplicaReport, ReportedOutcome, SchedulerRequest};
use wasmgrid_server::publishing::AppReplication;

use population::{Behaviour, Member, population, right_answer};

#[derive(Parser)]
#[command(about = "Simulates volunteers, some cheating, to measure what trust costs and catches")]
struct Args {
    /// Simulated hosts, each its own account (a Sybil's accounts are several hosts).
    #[arg(long, default_value_t = 1000)]
    hosts: usize,
    /// The share of hosts that cheat.
    #[arg(long, default_value_t = 0.05)]
    cheaters: f64,
    /// Work units per run (quorum 2).
    #[arg(long, default_value_t = 100_000)]
    work_units: usize,
    /// Replicas a host asks for per scheduler request.
    #[arg(long, default_value_t = 4)]
    batch: u32,
    /// Hosts talking to the server at once.
    #[arg(long, default_value_t = 48)]
    concurrency: usize,
    /// Only this run.
    #[arg(long, value_enum)]
    only: Option<Replication>,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Seed of the cheaters' coin flips.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Replication {
    Fixed,
    Adaptive,
}

/// Every replica reports this fuel: one credit.
const FUEL: u64 = 1_000_000_000;

/// What one run measured.
struct Figures {
    seconds: f64,
    finished: bool,
    validated: i64,
    failed: i64,
    /// Replicas handed to hosts (rechecks included).
    replicas_run: i64,
    /// Validated work units whose result was wrong at any time.
    wrong_ever: i64,
    /// ... and still is at the end.
    wrong_standing: i64,
    /// ... of those, the ones whose host was never caught (so never looked back at).
    wrong_standing_uncaught: i64,
    /// Replicas run per validated work unit, for each tenth of the queue in the order it was
    /// handed out: the cost of earning trust falls in the first tenths.
    replicas_per_tenth: Vec<f64>,
    on_trust: i64,
    confirmed: i64,
    corrected: i64,
    /// For each kind of cheater: how many, and for those caught, the results they had
    /// returned and the seconds since the start when caught.
    caught: BTreeMap<Behaviour, (usize, Vec<(u64, f64)>)>,
    /// Honest hosts ever found to have returned an invalid result (it should never happen).
    honest_caught: usize,
    failed_requests: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let members = population(args.hosts, args.cheaters);
    let runs: Vec<Replication> = match args.only {
        Some(only) => vec![only],
        None => vec![Replication::Fixed, Replication::Adaptive],
    };
    let mut results = Vec::new();
    for replication in runs {
        println!("{replication:?}: {} hosts, {} work units...", members.len(), args.work_units);
        let figures = run(replication, &args, &members).await?;
        println!("  done in {:.0} s", figures.seconds);
        results.push((replication, figures));
    }
    print_figures(&results, &members);
    Ok(())
}

async fn run(replication: Replication, args: &Args, members: &[Member]) -> anyhow::Result<Figures> {
    let server = BenchServer::start(&[
        "--private-grid",
        "false",
        "--sweep-interval",
        "1",
        "--idle-retry-after",
        "1",
        // The daily quotas are the server's own: a host's shrinks with each invalid result,
        // so a cheater once caught costs little more; the simulated day is the whole run.
        "--accounts-per-address",
        "100",
        "--hosts-per-address",
        "100",
        "--max-connections",
        "32",
    ])
    .await?;
    let pool = server.pool.clone();
    let adaptive =
        AppReplication { adaptive_replication: replication == Replication::Adaptive, ..AppReplication::default() };
    load_bench_work_units(&pool, &server.data_dir, args.work_units, adaptive).await?;
    let hosts = register(&server.url, members).await?;
    let host_index: HashMap<i64, usize> = hosts.iter().enumerate().map(|(index, host)| (host.host_id, index)).collect();

    let shared = Arc::new(Shared {
        permits: Semaphore::new(args.concurrency),
        returned: (0..members.len()).map(|_| AtomicU64::new(0)).collect(),
        failed_requests: AtomicU64::new(0),
    });
    let (finish, finished) = watch::channel(false);
    let started = Instant::now();
    let mut workers = Vec::new();
    for (index, host) in hosts.into_iter().enumerate() {
        let member = members[index].clone();
        let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(index as u64);
        workers.push(tokio::spawn(host_loop(index, host, member, args.batch, seed, shared.clone(), finished.clone())));
    }

    // Until every work unit is decided and every recheck done, note when each host is first
    // found to have returned an invalid result.
    let mut caught_at: HashMap<usize, (u64, f64)> = HashMap::new();
    let deadline = started + Duration::from_secs(args.timeout);
    let finished = loop {
        let invalid: Vec<i64> =
            sqlx::query_scalar("select id from host where invalid_count > 0").fetch_all(&pool).await?;
        for host_id in invalid {
            if let Some(&index) = host_index.get(&host_id) {
                caught_at.entry(index).or_insert_with(|| {
                    (shared.returned[index].load(Ordering::Relaxed), started.elapsed().as_secs_f64())
                });
            }
        }
        let open: i64 = sqlx::query_scalar(
            "select (select count(*) from work_unit where state = 'active' or recheck = 'pending')
                  + (select count(*) from lookback)",
        )
        .fetch_one(&pool)
        .await?;
        if open == 0 {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let _ = finish.send(true);
    for worker in workers {
        worker.await??;
    }

    let figures = measure(&pool, members, &caught_at, &host_index, seconds, finished, &shared).await?;
    server.stop().await?;
    Ok(figures)
}

/// What the host tasks share.
struct Shared {
    permits: Semaphore,
    /// Results each host has returned so far.
    returned: Vec<AtomicU64>,
    failed_requests: AtomicU64,
}

struct SimHost {
    client: ServerClient,
    token: String,
    host_id: i64,
}

async fn register(url: &str, members: &[Member]) -> anyhow::Result<Vec<SimHost>> {
    let registrations = members.iter().enumerate().map(|(index, member)| async move {
        let client = ServerClient::with_local_address(url, Some(member.address))?;
        let host = register_simulated_host(&client, index).await?;
        anyhow::Ok(SimHost { client, token: host.host_token, host_id: host.host_id })
    });
    // In order: the index of a host is the index of its member.
    let hosts: Vec<anyhow::Result<SimHost>> = futures::stream::iter(registrations).buffered(16).collect().await;
    hosts.into_iter().collect()
}

/// One simulated host: ask, answer as its behaviour says, upload, report in the next request;
/// stop once the run is over and nothing is left to report.
async fn host_loop(
    index: usize,
    host: SimHost,
    member: Member,
    batch: u32,
    seed: u64,
    shared: Arc<Shared>,
    finished: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut reports: Vec<ReplicaReport> = Vec::new();
    loop {
        let done = *finished.borrow();
        if done && reports.is_empty() {
            return Ok(());
        }
        let permit = shared.permits.acquire().await?;
        let request = SchedulerRequest {
            reports: std::mem::take(&mut reports),
            want_replicas: if done { 0 } else { batch },
            ..SchedulerRequest::default()
        };
        let reply = match host.client.scheduler(&host.token, &request).await {
            Ok(reply) => reply,
            Err(error) => {
                shared.failed_requests.fetch_add(1, Ordering::Relaxed);
                eprintln!("host {index}: scheduler request failed: {error}");
                reports = request.reports;
                drop(permit);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for assignment in &reply.assignments {
            let returned = shared.returned[index].load(Ordering::Relaxed);
            let answer = member.answer(&assignment.work_unit_name, assignment.replica_id, returned, &mut rng);
            let hash = Sha256Hash::of(&answer);
            let bytes = answer.len() as u64;
            if let Err(error) =
                host.client.upload_output_as(&host.token, assignment.replica_id, hash, Bytes::from(answer)).await
            {
                shared.failed_requests.fetch_add(1, Ordering::Relaxed);
                eprintln!("host {index}: upload failed: {error}");
                continue;
            }
            shared.returned[index].fetch_add(1, Ordering::Relaxed);
            reports.push(ReplicaReport {
                replica_id: assignment.replica_id,
                outcome: ReportedOutcome::Success { output_hash: hash, output_bytes: bytes },
                fuel_used: FUEL,
                run_time_ms: 0,
                exit_status: Some(0),
                stderr: String::new(),
                instrumentation_version: wasmgrid_sandbox::INSTRUMENTATION_VERSION,
                output: None,
            });
        }
        drop(permit);
        if reply.assignments.is_empty() && reports.is_empty() {
            // Idle hosts poll at the server's pace, spread out.
            let pause = Duration::from_secs(reply.retry_after_seconds.clamp(1, 5));
            tokio::time::sleep(pause + Duration::from_millis(rand::random_range(0..500))).await;
        }
    }
}

#[derive(sqlx::FromRow)]
struct Outcome {
    name: String,
    canonical_host: Option<i64>,
    validated: bool,
    canonical: Option<String>,
    replaced: Option<String>,
}

async fn measure(
    pool: &sqlx::PgPool,
    members: &[Member],
    caught_at: &HashMap<usize, (u64, f64)>,
    host_index: &HashMap<i64, usize>,
    seconds: f64,
    finished: bool,
    shared: &Shared,
) -> anyhow::Result<Figures> {
    let outcomes: Vec<Outcome> = sqlx::query_as(
        "select w.name, c.host_id as canonical_host, w.state = 'validated' as validated, c.output_sha256 as canonical, p.output_sha256 as replaced
         from work_unit w
         left join replica c on c.id = w.canonical_replica_id
         left join replica p on p.id = w.replaced_replica_id
         where w.state <> 'active'",
    )
    .fetch_all(pool)
    .await?;
    let (mut wrong_ever, mut wrong_standing, mut wrong_standing_uncaught) = (0, 0, 0);
    for outcome in &outcomes {
        let right = Sha256Hash::of(&right_answer(&outcome.name)).to_hex();
        let wrong_now = outcome.validated && outcome.canonical.as_deref() != Some(right.as_str());
        let wrong_before = outcome.replaced.as_deref().is_some_and(|replaced| replaced != right);
        wrong_standing += i64::from(wrong_now);
        let host = outcome.canonical_host.and_then(|host| host_index.get(&host));
        wrong_standing_uncaught += i64::from(wrong_now && host.is_none_or(|index| !caught_at.contains_key(index)));
        wrong_ever += i64::from(wrong_now || wrong_before);
    }
    let replicas_per_tenth: Vec<f64> = sqlx::query_as::<_, (i64, i64)>(
        "select count(r.id) filter (where r.host_id is not null),
                count(distinct w.id) filter (where w.state = 'validated')
         from (select id, state, ntile(10) over (order by id) as tenth from work_unit) w
         left join replica r on r.work_unit_id = w.id
         group by w.tenth order by w.tenth",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(runs, validated)| runs as f64 / validated.max(1) as f64)
    .collect();
    let count = |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await };
    let mut caught: BTreeMap<Behaviour, (usize, Vec<(u64, f64)>)> = BTreeMap::new();
    let mut honest_caught = 0;
    for (index, member) in members.iter().enumerate() {
        if member.behaviour == Behaviour::Honest {
            honest_caught += usize::from(caught_at.contains_key(&index));
            continue;
        }
        let entry = caught.entry(member.behaviour).or_default();
        entry.0 += 1;
        if let Some(&when) = caught_at.get(&index) {
            entry.1.push(when);
        }
    }
    Ok(Figures {
        seconds,
        finished,
        validated: outcomes.iter().filter(|o| o.validated).count() as i64,
        failed: outcomes.iter().filter(|o| !o.validated).count() as i64,
        replicas_run: count("select count(*) from replica where host_id is not null").await?,
        wrong_ever,
        wrong_standing,
        wrong_standing_uncaught,
        replicas_per_tenth,
        on_trust: count("select count(*) from work_unit where accepted_on_trust").await?,
        confirmed: count("select count(*) from work_unit where recheck = 'confirmed'").await?,
        corrected: count("select count(*) from work_unit where recheck = 'corrected'").await?,
        caught,
        honest_caught,
        failed_requests: shared.failed_requests.load(Ordering::Relaxed),
    })
}

fn print_figures(results: &[(Replication, Figures)], members: &[Member]) {
    let cheaters = members.iter().filter(|m| m.behaviour != Behaviour::Honest).count();
    println!();
    println!("{} hosts, {cheaters} of them cheating", members.len());
    print!("{:<46}", "");
    for (replication, _) in results {
        print!(
            "{:>24}",
            match replication {
                Replication::Fixed => "fixed quorum of 2",
                Replication::Adaptive => "adaptive replication",
            }
        );
    }
    println!();
    let row = |label: &str, value: &dyn Fn(&Figures) -> String| {
        print!("{label:<46}");
        for (_, figures) in results {
            print!("{:>24}", value(figures));
        }
        println!();
    };
    row("finished", &|f| if f.finished { format!("in {:.0} s", f.seconds) } else { "NO (timed out)".into() });
    row("work units validated / failed", &|f| format!("{} / {}", f.validated, f.failed));
    row("replicas run", &|f| f.replicas_run.to_string());
    row("replicas per validated work unit", &|f| format!("{:.3}", f.replicas_run as f64 / f.validated.max(1) as f64));
    for tenth in 0..10 {
        row(&format!("  in tenth {} of the queue", tenth + 1), &|f| {
            f.replicas_per_tenth.get(tenth).map_or("-".into(), |ratio| format!("{ratio:.3}"))
        });
    }
    row("results accepted on trust", &|f| f.on_trust.to_string());
    row("  rechecked: confirmed / corrected", &|f| format!("{} / {}", f.confirmed, f.corrected));
    row("wrong results accepted, at any time", &|f| f.wrong_ever.to_string());
    row("wrong results standing at the end", &|f| f.wrong_standing.to_string());
    row("  from hosts never caught", &|f| f.wrong_standing_uncaught.to_string());
    let kinds: Vec<Behaviour> = results.first().map(|(_, f)| f.caught.keys().copied().collect()).unwrap_or_default();
    for kind in kinds {
        row(&format!("{} caught", kind.name()), &|f| {
            let (hosts, caught) = &f.caught[&kind];
            format!("{} of {hosts}", caught.len())
        });
        row("  results returned before, median / max", &|f| {
            let mut results: Vec<u64> = f.caught[&kind].1.iter().map(|(results, _)| *results).collect();
            results.sort_unstable();
            match (results.get(results.len().saturating_sub(1) / 2), results.last()) {
                (Some(median), Some(max)) => format!("{median} / {max}"),
                _ => "-".into(),
            }
        });
        row("  seconds into the run, median / max", &|f| {
            let mut seconds: Vec<f64> = f.caught[&kind].1.iter().map(|(_, seconds)| *seconds).collect();
            seconds.sort_by(f64::total_cmp);
            match (seconds.get(seconds.len().saturating_sub(1) / 2), seconds.last()) {
                (Some(median), Some(max)) => format!("{median:.0} / {max:.0}"),
                _ => "-".into(),
            }
        });
    }
    row("honest hosts ever found invalid", &|f| f.honest_caught.to_string());
    row("failed requests", &|f| f.failed_requests.to_string());
}
