//! `bench-publish`: what publishing a large batch costs, through the real commands.
//!
//! A release server on its embedded PostgreSQL; `wasmgrid batch submit` of a jobs file of
//! `--work-units` work units (each with its own small input file, so every one is hashed,
//! checked and uploaded), then `wasmgrid batch status`, `batch list` and a page of
//! `batch results`, timed over repeated requests. It is a measurement, not a test.
//!
//! ```sh
//! cargo build --release --workspace && target/release/bench-publish
//! ```

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use wasmgrid_e2e::bench::{BenchServer, ms, percentile};
use wasmgrid_e2e::scientist::{Scientist, create_token};

#[derive(Parser)]
#[command(about = "Times submitting a large batch and asking about it, through the wasmgrid commands")]
struct Args {
    /// Work units in the batch.
    #[arg(long, default_value_t = 100_000)]
    work_units: usize,
    /// Distinct input files among them (each work unit's standard input is one of these).
    #[arg(long, default_value_t = 10_000)]
    inputs: usize,
    /// Requests per timed command.
    #[arg(long, default_value_t = 20)]
    repeat: usize,
}

/// A module that passes the publication check: a WASI command doing nothing.
const MODULE: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")))"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = BenchServer::start(&["--max-connections", "16"]).await?;
    let token = create_token(&server.data_dir, "bench").await?;
    let scientist = Scientist { url: server.url.clone(), token, log: None };
    let dir = tempfile::tempdir()?;

    let module = dir.path().join("noop.wasm");
    std::fs::write(&module, wat::parse_str(MODULE)?)?;
    scientist.run(&["app", "create", "bench"]).await?;
    scientist.run(&["app", "publish", "bench", &module.to_string_lossy()]).await?;

    let inputs = dir.path().join("inputs");
    std::fs::create_dir(&inputs)?;
    for i in 0..args.inputs {
        std::fs::write(inputs.join(format!("{i}")), format!("input {i}\n"))?;
    }
    let jobs = dir.path().join("jobs.jsonl");
    let lines: String = (0..args.work_units)
        .map(|i| {
            format!("{{\"name\": \"wu-{i:07}\", \"args\": [\"{i}\"], \"stdin\": \"inputs/{}\"}}\n", i % args.inputs)
        })
        .collect();
    std::fs::write(&jobs, lines)?;

    println!("submitting {} work units with {} distinct input files...", args.work_units, args.inputs);
    let started = Instant::now();
    let submitted = scientist.run(&["batch", "submit", "--app", "bench", "--jobs", &jobs.to_string_lossy()]).await?;
    let submit_time = started.elapsed();
    let batch = submitted["batch_id"].as_i64().context("a batch id")?.to_string();

    let mut status = time(&scientist, &["batch", "status", &batch], args.repeat).await?;
    let mut list = time(&scientist, &["batch", "list"], args.repeat).await?;
    let empty = dir.path().join("results");
    let mut results =
        time(&scientist, &["batch", "results", &batch, "--out", &empty.to_string_lossy()], args.repeat).await?;

    println!();
    println!(
        "batch submit                    {:>9.1} s  ({:.0} work units/s, {} files uploaded)",
        submit_time.as_secs_f64(),
        args.work_units as f64 / submit_time.as_secs_f64(),
        submitted["files_uploaded"]
    );
    for (what, samples) in
        [("batch status", &mut status), ("batch list", &mut list), ("batch results (none yet)", &mut results)]
    {
        println!(
            "{what:<31} p50 {}  p99 {}  (the whole command, {} runs)",
            ms(percentile(samples, 0.50)),
            ms(percentile(samples, 0.99)),
            samples.len()
        );
    }
    server.stop().await
}

/// Runs the command `repeat` times; returns how long each took.
async fn time(scientist: &Scientist, args: &[&str], repeat: usize) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let started = Instant::now();
        scientist.run(args).await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}
