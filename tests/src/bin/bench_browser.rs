//! `bench-browser`: the example apps in a browser tab against the native sandbox.
//!
//! Each heavy run of `bench-client` (primes, Mandelbrot, nbody) runs, round after round so
//! that the machine's drift falls on all alike:
//! - in the native client's sandbox (wasmtime, instrumented for it), and in plain wasmtime;
//! - in Debian's headless Chromium, in a Web Worker of the contribute page exactly as a tab
//!   runs a replica (`task-worker.js`: the pass in WebAssembly, V8, the page's WASI, the
//!   output packed and hashed), and the same module uninstrumented in the same worker.
//!
//! Each tab configuration runs two replicas, one after the other: the first from the module's
//! bytes, the second with the module the first compiled, as a tab does for later tasks of one
//! app (V8 starts a module in its baseline compiler and optimises what runs hot, and a call
//! that is already running stays in the code it started in).
//!
//! It prints the best time of each, the ratios, and where a tab's time goes: instrumenting,
//! compiling, running, packing and hashing. The tab's output archive and fuel must equal the
//! sandbox's. It is a measurement, not a test: nothing here fails on a timing.
//!
//! ```sh
//! cargo build --release --workspace && target/release/bench-browser
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Parser;
use serde_json::{Value, json};
use wasmgrid_e2e::bench::{BenchServer, LIMITS, WORKLOADS, Workload, build_workunits, ratio, run_plain, run_spec};
use wasmgrid_e2e::webdriver::{ChromeDriver, Session};
use wasmgrid_sandbox::{RunControl, RunOutcome, RunSpec, Sandbox, output};

#[derive(Parser)]
#[command(about = "Measures the example apps in a browser tab against the native sandbox")]
struct Args {
    /// Runs of each configuration; the best counts.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Measure only these workloads (primes, mandelbrot, nbody) [default: all].
    #[arg(long)]
    only: Vec<String>,
}

/// The best time of each way of running one workload, in seconds, and the tab's breakdown.
#[derive(Default)]
struct Best {
    sandbox: Option<Duration>,
    plain_wasmtime: Option<Duration>,
    /// The tab's whole replica, from handing it to the worker to its hashed archive.
    tab: Option<Duration>,
    tab_run: Option<Duration>,
    /// A later replica of the same app, whose module the first compiled (and V8 optimised).
    tab_later_run: Option<Duration>,
    tab_plain_run: Option<Duration>,
    tab_plain_later_run: Option<Duration>,
    instrument: Option<Duration>,
    compile: Option<Duration>,
    plain_compile: Option<Duration>,
    pack_and_hash: Option<Duration>,
}

fn keep_best(slot: &mut Option<Duration>, time: Duration) {
    if slot.is_none_or(|best| time < best) {
        *slot = Some(time);
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("building the example work units (wasm32-wasip1)...");
    let wasm_dir = build_workunits(Some("wasm32-wasip1"))?;
    let scratch = tempfile::tempdir()?;
    tokio::runtime::Runtime::new()?.block_on(async {
        // The server only serves the contribute page and its scripts here.
        let server = BenchServer::start(&[]).await?;
        let driver = ChromeDriver::start().await;
        let browser = driver.new_session().await;
        browser.goto(&format!("{}/contribute", server.url)).await;
        browser.set_script_timeout(Duration::from_secs(600)).await;
        let user_agent = browser.execute("return navigator.userAgent", json!([])).await;
        println!("browser: {}", user_agent.as_str().unwrap_or("?"));
        println!("best of {} rounds", args.repeat);
        for workload in WORKLOADS
            .iter()
            .filter(|workload| args.only.is_empty() || args.only.iter().any(|name| name == workload.program))
        {
            measure(&browser, workload, &wasm_dir, scratch.path(), args.repeat).await?;
        }
        browser.quit().await;
        server.stop().await
    })
}

async fn measure(
    browser: &Session,
    workload: &Workload,
    wasm_dir: &Path,
    scratch: &Path,
    repeat: usize,
) -> anyhow::Result<()> {
    let module_path = wasm_dir.join(format!("{}.wasm", workload.program));
    let wasm = std::fs::read(&module_path)?;
    println!();
    println!("{}: {}", workload.program, workload.what);
    let sandbox = Sandbox::new(&scratch.join(format!("cache-{}", workload.program)))?;
    let spec = run_spec(&module_path, &wasm, workload.args, scratch)?;
    sandbox.prepare(&spec.module_hash, &spec.module_path).map_err(|error| anyhow::anyhow!("{error}"))?;

    let mut best = Best::default();
    for round in 0..repeat.max(1) {
        // V8 keeps a module it compiled, optimised code and all, for the next compilation of
        // the same bytes in the process: each round's first replica gets bytes of its own, to
        // start cold as a tab's first task of an app does.
        let round_wasm = with_custom_section(&wasm, "wasmgrid-bench-round", &(round as u64).to_le_bytes());
        let (time, sha256, fuel) = run_sandboxed(&sandbox, &spec, scratch).await?;
        keep_best(&mut best.sandbox, time);
        // wasmtime-wasi's synchronous calls run an event loop of their own: not on this one.
        let (plain_wasm, args) = (wasm.clone(), workload.args);
        let plain = tokio::task::spawn_blocking(move || run_plain(&wasmtime::Config::default(), &plain_wasm, args));
        keep_best(&mut best.plain_wasmtime, plain.await??.1);

        let (tab, later) = in_tab(browser, &round_wasm, workload.args, false).await?;
        for run in [&tab, &later] {
            if run["outputHash"].as_str() != Some(&sha256) || run["fuel"].as_str() != Some(&fuel.to_string()) {
                bail!("{}: the tab's output or fuel differ from the sandbox's: {run}", workload.program);
            }
        }
        keep_best(&mut best.tab_later_run, millis(&later["timings"]["runMs"]));
        keep_best(&mut best.tab, millis(&tab["totalMs"]));
        keep_best(&mut best.tab_run, millis(&tab["timings"]["runMs"]));
        keep_best(&mut best.instrument, millis(&tab["prepared"]["instrumentMs"]));
        keep_best(&mut best.compile, millis(&tab["prepared"]["compileMs"]));
        keep_best(&mut best.pack_and_hash, millis(&tab["timings"]["packMs"]) + millis(&tab["timings"]["hashMs"]));

        let (plain, plain_later) = in_tab(browser, &round_wasm, workload.args, true).await?;
        keep_best(&mut best.tab_plain_run, millis(&plain["timings"]["runMs"]));
        keep_best(&mut best.tab_plain_later_run, millis(&plain_later["timings"]["runMs"]));
        keep_best(&mut best.plain_compile, millis(&plain["prepared"]["compileMs"]));
    }

    let seconds = |time: Option<Duration>| time.map_or(0.0, |time| time.as_secs_f64());
    let line = |label: &str, time: Option<Duration>| println!("  {label:<58} {:>9.3} s", seconds(time));
    let times = |label: &str, a: Option<Duration>, b: Option<Duration>| {
        println!("  {label:<58} {:>9.2}x", ratio(a.unwrap_or_default(), b.unwrap_or_default()))
    };
    line("native sandbox (wasmtime, instrumented)", best.sandbox);
    line("plain wasmtime", best.plain_wasmtime);
    line("tab: the whole replica (instrument, compile, run, pack, hash)", best.tab);
    line("tab: the run", best.tab_run);
    line("tab: a later replica's run (the module compiled by the first)", best.tab_later_run);
    line("tab: the same module uninstrumented, run", best.tab_plain_run);
    line("tab: the same module uninstrumented, a later replica's run", best.tab_plain_later_run);
    times("tab / native sandbox (whole replica)", best.tab, best.sandbox);
    times("tab / native sandbox (runs)", best.tab_run, best.sandbox);
    times("tab / native sandbox (a later replica's run)", best.tab_later_run, best.sandbox);
    times("V8 / wasmtime, both uninstrumented", best.tab_plain_run, best.plain_wasmtime);
    times("V8 / wasmtime, uninstrumented, a later run", best.tab_plain_later_run, best.plain_wasmtime);
    times("the pass in V8 (instrumented / uninstrumented run)", best.tab_run, best.tab_plain_run);
    times("the pass in V8, later runs", best.tab_later_run, best.tab_plain_later_run);
    times("the pass in wasmtime (sandbox / plain wasmtime)", best.sandbox, best.plain_wasmtime);
    println!("  where the tab's time goes:");
    for (label, time) in [
        ("instrumenting (the pass, in WebAssembly)", best.instrument),
        ("compiling the instrumented module (V8)", best.compile),
        ("compiling the uninstrumented module (V8), for comparison", best.plain_compile),
        ("running", best.tab_run),
        ("packing the output and hashing it", best.pack_and_hash),
    ] {
        println!("    {label:<56} {:>9.1} ms", seconds(time) * 1000.0);
    }
    println!("  {:<58} {:>10}", "tab's output archive and fuel as the sandbox's", "yes");
    Ok(())
}

/// `wasm` with a custom section appended, which changes its bytes and nothing it does.
fn with_custom_section(wasm: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    let mut section = leb128(name.len() as u64);
    section.extend_from_slice(name.as_bytes());
    section.extend_from_slice(payload);
    let mut out = wasm.to_vec();
    out.push(0);
    out.extend(leb128(section.len() as u64));
    out.extend(section);
    out
}

fn leb128(mut value: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            bytes.push(byte);
            return bytes;
        }
        bytes.push(byte | 0x80);
    }
}

fn millis(value: &Value) -> Duration {
    Duration::from_secs_f64(value.as_f64().unwrap_or(0.0) / 1000.0)
}

/// Two replicas of one module in Web Workers of the contribute page, as a tab runs them: the
/// first from the module's bytes, the second with the module the first compiled (a tab keeps
/// it for later tasks of the same app); what the workers said of each, times in milliseconds.
async fn in_tab(browser: &Session, wasm: &[u8], args: &[&str], plain: bool) -> anyhow::Result<(Value, Value)> {
    let script = r#"
        const [wasmBase64, args, plain] = arguments;
        const bytes = Uint8Array.from(atob(wasmBase64), (c) => c.charCodeAt(0));
        const task = { args, stdin: new Uint8Array(0), inputs: [], seed: 1n, scratchLimit: 2 ** 30,
                       limits: { fuel: 1n << 60n, memory_bytes: 1n << 30n, output_bytes: 256n << 20n } };
        const replica = (instrumenter, module) => new Promise((resolve, reject) => {
          const worker = new Worker('/static/contribute/task-worker.js', { type: 'module' });
          const started = performance.now();
          let prepared = null;
          worker.onmessage = ({ data }) => {
            if (data.type === 'prepared') prepared = data.prepared;
            if (data.type === 'failed') { worker.terminate(); reject(new Error(data.message)); }
            if (data.type !== 'done') return;
            const totalMs = performance.now() - started;
            worker.terminate();
            const report = data.report;
            resolve({ outcome: report.outcome, reason: report.reason ?? null, fuel: String(report.fuelUsed),
                      outputHash: report.outputHash, timings: report.timings ?? null,
                      prepared: prepared?.timings ?? null, compiled: prepared, totalMs });
          };
          worker.postMessage({ instrumenter, plain, module, task });
        });
        return (async () => {
          const instrumenter = await WebAssembly.compileStreaming(fetch('/static/contribute/instrument.wasm'));
          const first = await replica(instrumenter, { bytes });
          const later = await replica(instrumenter, { prepared: first.compiled });
          delete first.compiled;
          delete later.compiled;
          return [first, later];
        })();
    "#;
    let encoded = base64::engine::general_purpose::STANDARD.encode(wasm);
    let result = browser.execute(script, json!([encoded, args, plain])).await;
    for run in [&result[0], &result[1]] {
        if run["outcome"] != "success" {
            bail!("the tab's run failed: {result}");
        }
    }
    Ok((result[0].clone(), result[1].clone()))
}

/// A run in the native sandbox: its time, its output archive's SHA-256 and its fuel.
async fn run_sandboxed(
    sandbox: &Arc<Sandbox>,
    spec: &RunSpec,
    scratch: &Path,
) -> anyhow::Result<(Duration, String, u64)> {
    // An empty scratch directory every time: nbody would resume from its checkpoint.
    std::fs::remove_dir_all(&spec.scratch_dir)?;
    std::fs::create_dir_all(&spec.scratch_dir)?;
    let report = sandbox.spawn(spec.clone(), Arc::new(RunControl::default()))?.await?;
    if report.outcome != RunOutcome::Success {
        bail!("the sandboxed run failed: {:?} ({})", report.outcome, report.stderr);
    }
    let archive = scratch.join("output.tar");
    let (sha256, _) = output::pack(&report.stdout, &spec.scratch_dir, &archive, LIMITS.output_bytes)
        .context("cannot pack the sandbox's output")?;
    Ok((report.run_time, sha256.to_string(), report.fuel_used))
}
