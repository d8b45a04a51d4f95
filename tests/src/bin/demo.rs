//! `demo`: the whole grid on this machine, in one command (`./quickstart` builds and runs it).
//!
//! It builds the example work units, starts the server on its embedded PostgreSQL, creates
//! a publisher token, publishes the three example apps with the `wasmgrid` commands a
//! scientist would type (printing each), submits a batch of each, starts local volunteers,
//! shows live progress until every work unit is finished, downloads the outputs (and
//! stitches the Mandelbrot tiles into one PNG), prints a summary, and keeps serving until
//! Ctrl-C (or exits at once with `--exit`).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tokio::process::{Child, Command};
use wasmgrid_client::publish::progress::render;
use wasmgrid_e2e::bench::{build_workunits, sibling_binary, start_announced_server};
use wasmgrid_e2e::scientist::{Scientist, create_token};
use wasmgrid_server::database::embedded::connect_options_for;

#[derive(Parser)]
#[command(about = "Runs a whole wasmgrid on this machine: server, publisher, three example apps and volunteers")]
struct Args {
    /// Where the server, the volunteers and the results live (emptied first).
    #[arg(long, default_value = "./wasmgrid-demo")]
    data_dir: PathBuf,
    /// Where the server listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Local volunteers, each with its own account and one core.
    #[arg(long, default_value_t = 4)]
    volunteers: usize,
    /// Work units per batch.
    #[arg(long, default_value_t = 50)]
    work_units: usize,
    /// Stop everything and exit once the batches are done, instead of serving until Ctrl-C.
    #[arg(long)]
    exit: bool,
}

/// One example app and how to make its batch.
struct Example {
    app: &'static str,
    description: &'static str,
    /// The validator module, if the app has one.
    validator: Option<&'static str>,
}

const EXAMPLES: [Example; 3] = [
    Example { app: "primes", description: "counts and lists the primes in a range", validator: None },
    Example { app: "mandelbrot", description: "renders a Mandelbrot image, one tile per work unit", validator: None },
    Example {
        app: "nbody",
        description: "a gravitational N-body simulation, checkpointed",
        validator: Some("nbody-validator"),
    },
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    if args.work_units == 0 || args.volunteers < 2 {
        bail!("the demo needs at least one work unit per batch and two volunteers (a quorum of 2)");
    }

    step("building the example work units (Rust, wasm32-wasip1) and their input generators");
    let (wasm, native) = tokio::task::spawn_blocking(|| -> anyhow::Result<_> {
        Ok((build_workunits(Some("wasm32-wasip1"))?, build_workunits(None)?))
    })
    .await??;

    let dir = fresh_data_dir(&args.data_dir)?;
    step(&format!("starting the server on its embedded PostgreSQL in {}", dir.join("server").display()));
    let mut server = start_server(&dir, args.listen).await?;
    println!("  listening on {}", server.url);

    step("creating a publisher token (wasmgrid-server token create --scope publish)");
    let token = create_token(&dir.join("server"), "demo-scientist").await?;
    let scientist = Scientist { url: server.url.clone(), token, log: Some(dir.join("commands.log")) };

    let inputs = dir.join("inputs");
    std::fs::create_dir_all(&inputs)?;
    let mut batches = Vec::new();
    for example in &EXAMPLES {
        step(&format!("publishing {}: {}", example.app, example.description));
        let mut create = vec!["app", "create", example.app, "--description", example.description];
        let validator;
        if let Some(module) = example.validator {
            validator = format!("--validator=wasm:{}", wasm.join(format!("{module}.wasm")).display());
            create.push(&validator);
        }
        announce(&scientist, &create).await?;
        let module = wasm.join(format!("{}.wasm", example.app));
        announce(&scientist, &["app", "publish", example.app, &module.to_string_lossy()]).await?;
        let source = generate_inputs(&native, example.app, &inputs, args.work_units).await?;
        let source_flag = if source.is_dir() { "--inputs" } else { "--jobs" };
        let submitted = announce(
            &scientist,
            &["batch", "submit", "--app", example.app, source_flag, &source.to_string_lossy(), "--quorum", "2"],
        )
        .await?;
        let batch = submitted["batch_id"].as_i64().context("a batch id")?;
        batches.push((example.app, batch));
    }

    step(&format!("starting {} volunteers, one core each", args.volunteers));
    let mut volunteers = Vec::new();
    for number in 1..=args.volunteers {
        volunteers.push(start_volunteer(&dir, &server.url, number).await?);
    }

    step("computing: every work unit runs on two volunteers, whose outputs must agree");
    let statuses = show_progress(&scientist, &batches).await?;

    step("downloading the validated outputs");
    let results = dir.join("results");
    for (app, batch) in &batches {
        let out = results.join(app);
        announce(&scientist, &["batch", "results", &batch.to_string(), "--out", &out.to_string_lossy()]).await?;
    }
    let image = results.join("mandelbrot.png");
    let stitched = Command::new(native.join("mandelbrot-stitch"))
        .arg(results.join("mandelbrot"))
        .arg(&image)
        .status()
        .await?
        .success();

    summary(&dir, &statuses, started.elapsed()).await?;
    println!("  outputs:       {}/<app>/<work unit>/stdout (and files/)", results.display());
    if stitched {
        println!("  image:         {}", image.display());
    }
    println!("  logs:          {}", dir.display());
    println!("  leaderboard:   {}/users   (project status: {}/status)", server.url, server.url);

    for volunteer in &mut volunteers {
        stop(volunteer).await;
    }
    if !args.exit {
        println!("\nThe server keeps serving; press Ctrl-C to stop it.");
        tokio::signal::ctrl_c().await?;
    }
    stop(&mut server.child).await;
    Ok(())
}

fn step(what: &str) {
    println!("\n==> {what}");
}

/// Empties the demo's directory, refusing one that looks like something else.
fn fresh_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let marker = dir.join(".wasmgrid-demo");
    if dir.exists() {
        if !marker.exists() && std::fs::read_dir(dir)?.next().is_some() {
            bail!("{} exists and is not a demo directory: choose another --data-dir", dir.display());
        }
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(&marker, "made by the wasmgrid demo; emptied by the next run\n")?;
    // When run as root, the embedded PostgreSQL runs as another user, who must get in.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir.canonicalize()?)
}

struct RunningServer {
    child: Child,
    url: String,
}

async fn start_server(dir: &Path, listen: SocketAddr) -> anyhow::Result<RunningServer> {
    let mut command = Command::new(sibling_binary("wasmgrid-server")?);
    command
        .args(["serve", "--listen", &listen.to_string(), "--sweep-interval", "1", "--idle-retry-after", "2"])
        // Every volunteer of the demo creates its account and connects from this one
        // machine: a private grid, whose quorums need not span networks.
        .args(["--accounts-per-address", "10000", "--hosts-per-address", "10000", "--private-grid", "true"])
        .arg("--data-dir")
        .arg(dir.join("server"))
        .env_remove("DATABASE_URL");
    let (child, url) = start_announced_server(command, &dir.join("server.log")).await?;
    Ok(RunningServer { child, url })
}

/// Prints a publishing command as a scientist would type it, then runs it.
async fn announce(scientist: &Scientist, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    println!("  $ wasmgrid {}", args.iter().map(|arg| shell_word(arg)).collect::<Vec<_>>().join(" "));
    scientist.run(args).await
}

fn shell_word(word: &str) -> String {
    if word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=".contains(c)) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Writes `count` work units' inputs for `app` with its generator; returns the folder or
/// jobs file to submit.
async fn generate_inputs(native: &Path, app: &str, inputs: &Path, count: usize) -> anyhow::Result<PathBuf> {
    let count = count.to_string();
    let (target, generator_args): (PathBuf, Vec<String>) = match app {
        "primes" => {
            let out = inputs.join("primes");
            (out.clone(), vec!["--count".into(), count, "--span".into(), "2000000".into()])
        }
        "mandelbrot" => {
            // The smallest square number of tiles that is at least `count`, 128 pixels each.
            let side = (1..).find(|side: &usize| side * side >= count.parse().unwrap_or(1)).unwrap_or(1);
            let size = (side * 128).to_string();
            let args = vec!["--width".into(), size.clone(), "--height".into(), size, "--tile".into(), "128".into()];
            (inputs.join("mandelbrot.jsonl"), args)
        }
        _ => {
            let args = vec!["--count".into(), count, "--bodies".into(), "32".into(), "--steps".into(), "4000".into()];
            (inputs.join("nbody.jsonl"), args)
        }
    };
    let status = Command::new(native.join(format!("{app}-inputs")))
        .arg("--out")
        .arg(&target)
        .args(&generator_args)
        .status()
        .await
        .with_context(|| format!("cannot run {app}-inputs"))?;
    if !status.success() {
        bail!("{app}-inputs failed");
    }
    Ok(target)
}

async fn start_volunteer(dir: &Path, url: &str, number: usize) -> anyhow::Result<Child> {
    let data_dir = dir.join(format!("volunteer-{number}"));
    std::fs::create_dir_all(&data_dir)?;
    // Retry quickly and keep a small buffer, so that work spreads over every volunteer at
    // once; real volunteers back off for minutes and buffer ten minutes of work.
    std::fs::write(
        data_dir.join("client.toml"),
        "backoff_min_seconds = 1\nbackoff_max_seconds = 5\nwork_buffer_seconds = 1\n",
    )?;
    let name = format!("volunteer-{number}");
    let wasmgrid = sibling_binary("wasmgrid")?;
    let attached = Command::new(&wasmgrid)
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["attach", url, "--name", &name])
        .output()
        .await?;
    if !attached.status.success() {
        bail!("{name} cannot attach: {}", String::from_utf8_lossy(&attached.stderr));
    }
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = Command::new(&wasmgrid)
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["run", "--cores", "1"])
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    println!("  {name}: an account of its own, {}", data_dir.display());
    Ok(child)
}

/// Redraws one progress bar per batch until all are done; returns their last statuses.
async fn show_progress(scientist: &Scientist, batches: &[(&str, i64)]) -> anyhow::Result<Vec<serde_json::Value>> {
    // Polled twice a second: not echoed, not logged.
    let quiet = Scientist { url: scientist.url.clone(), token: scientist.token.clone(), log: None };
    let terminal = std::io::stdout().is_terminal();
    let mut drawn = false;
    let mut last_line = Instant::now();
    loop {
        let mut statuses = Vec::new();
        for (_, batch) in batches {
            statuses.push(quiet.run(&["batch", "status", &batch.to_string()]).await?);
        }
        let lines: Vec<String> = batches
            .iter()
            .zip(&statuses)
            .map(|((app, _), status)| {
                let counts = &status["work_units"];
                let (validated, failed, active) =
                    (number(&counts["validated"]), number(&counts["failed"]), number(&counts["active"]));
                let note = format!(
                    "validated {validated}, failed {failed}, running {}",
                    number(&status["replicas"]["in_progress"])
                );
                render(&format!("  {app:<10}"), validated + failed, validated + failed + active, &note)
            })
            .collect();
        let done = statuses.iter().all(|status| status["state"] == "done");
        if terminal {
            if drawn {
                print!("\x1b[{}A", lines.len());
            }
            for line in &lines {
                print!("\r\x1b[2K{line}\n");
            }
            drawn = true;
        } else if done || last_line.elapsed() > Duration::from_secs(10) {
            println!("{}", lines.join("\n"));
            last_line = Instant::now();
        }
        std::io::stdout().flush()?;
        if done {
            return Ok(statuses);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn number(value: &serde_json::Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// Work units, replicas and credit per volunteer, from the statuses and the server's
/// database.
async fn summary(dir: &Path, statuses: &[serde_json::Value], elapsed: Duration) -> anyhow::Result<()> {
    step("summary");
    let validated: u64 = statuses.iter().map(|status| number(&status["work_units"]["validated"])).sum();
    let failed: u64 = statuses.iter().map(|status| number(&status["work_units"]["failed"])).sum();
    let replicas: u64 = statuses.iter().map(|status| number(&status["replicas"]["over"])).sum();
    println!("  work units:    {validated} validated, {failed} failed, in {} batches", statuses.len());
    println!("  replicas:      {replicas} finished");
    println!("  time taken:    {:.0} s", elapsed.as_secs_f64());

    let options = connect_options_for(&dir.join("server/postgres"), "wasmgrid");
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(options).await?;
    // Credit is folded into the totals by the server's sweep, every second here.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>("select count(*) from credit_grant where not applied").fetch_one(&pool).await?
        > 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let credit: Vec<(String, f64, i64)> = sqlx::query_as(
        "select a.name, a.total_credit,
                (select count(*) from replica r where r.account_id = a.id and r.validate_state = 'valid')
         from account a order by a.name",
    )
    .fetch_all(&pool)
    .await?;
    println!("  credit granted (1 credit = 10^9 units of fuel):");
    for (name, total, valid) in credit {
        println!("    {name:<14} {total:>10.3} credit for {valid} valid results");
    }
    pool.close().await;
    Ok(())
}

async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
}
