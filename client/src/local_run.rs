//! Running a module on this machine exactly as a volunteer's daemon would, without a server
//! (`wasmgrid exec`), and writing the instrumented module for other engines
//! (`wasmgrid instrument`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::RunLimits;
use wasmgrid_sandbox::output::{self, PackError};
use wasmgrid_sandbox::{RunControl, RunOutcome, RunSpec, Sandbox};

/// What `wasmgrid exec` runs and with which limits.
pub struct ExecRequest {
    pub module: PathBuf,
    pub args: Vec<String>,
    pub stdin: Option<PathBuf>,
    pub input_dir: Option<PathBuf>,
    pub limits: RunLimits,
    pub scratch_limit_bytes: u64,
    pub seed: u64,
    /// The directory that receives the output archive and its unpacked files; a new
    /// temporary directory, kept, when absent.
    pub output: Option<PathBuf>,
}

/// What the run gave: the figures a volunteer's daemon would report, and what the server
/// would make of them.
#[derive(Debug, Serialize)]
pub struct ExecReport {
    /// `success`, `error` (the run failed: the error says why, as a volunteer would
    /// report it), or `refused` (the server would refuse to publish the module).
    pub outcome: String,
    pub error: Option<String>,
    pub fuel_used: u64,
    /// What a volunteer earns for the run once it validates.
    pub credit: f64,
    pub instrumentation_version: u32,
    /// The back end that ran the module: `cranelift`, or `pulley` where Cranelift cannot
    /// compile the module on this CPU.
    pub backend: Option<&'static str>,
    pub run_time_ms: u64,
    pub exit_status: Option<i32>,
    pub output_sha256: Option<String>,
    pub output_bytes: Option<u64>,
    pub output_archive: Option<PathBuf>,
    /// The archive's files, unpacked: `stdout` and what the module left in its scratch
    /// directory.
    pub output_dir: Option<PathBuf>,
    pub stderr: String,
}

impl ExecReport {
    pub fn is_success(&self) -> bool {
        self.outcome == "success"
    }

    pub fn render(&self) -> String {
        let mut text = format!("outcome: {}\n", self.outcome);
        if let Some(error) = &self.error {
            text += &format!("error: {error}\n");
        }
        if self.outcome == "refused" {
            return text;
        }
        text += &format!("fuel used: {}\n", self.fuel_used);
        if self.is_success() {
            text += &format!("credit once validated: {:.6}\n", self.credit);
        }
        text += &format!("instrumentation: v{}\n", self.instrumentation_version);
        if let Some(backend) = self.backend {
            text += &format!("back end: {backend}\n");
        }
        text += &format!("run time: {} ms\n", self.run_time_ms);
        if let (Some(hash), Some(bytes), Some(archive)) = (&self.output_sha256, self.output_bytes, &self.output_archive)
        {
            text += &format!("output: {hash} ({bytes} bytes) in {}\n", archive.display());
        }
        if let Some(dir) = &self.output_dir {
            text += &format!("unpacked in: {}\n", dir.display());
        }
        if !self.stderr.is_empty() {
            text += &format!("standard error (its end):\n{}\n", self.stderr.trim_end());
        }
        text
    }
}

/// The archive's name in the output directory.
pub const OUTPUT_ARCHIVE: &str = "output.tar";
/// The unpacked archive's directory in the output directory.
pub const UNPACKED_OUTPUT: &str = "output";

/// Runs `request` in the volunteer's sandbox, in a scratch directory of its own, after the
/// check the server makes of a module before publishing it (the same code).
pub fn exec(request: &ExecRequest) -> anyhow::Result<ExecReport> {
    let wasm = std::fs::read(&request.module).with_context(|| format!("cannot read {}", request.module.display()))?;
    let work = tempfile::tempdir()?;
    let sandbox = Sandbox::new(&work.path().join("compiled"))?;
    let mut report = ExecReport {
        outcome: "error".into(),
        error: None,
        fuel_used: 0,
        credit: 0.0,
        instrumentation_version: wasmgrid_instrument::VERSION,
        backend: None,
        run_time_ms: 0,
        exit_status: None,
        output_sha256: None,
        output_bytes: None,
        output_archive: None,
        output_dir: None,
        stderr: String::new(),
    };
    if let Err(rejection) = sandbox.check_command_module(&wasm) {
        report.outcome = "refused".into();
        report.error = Some(format!("the server would refuse it: not a usable work unit module: {rejection}"));
        return Ok(report);
    }
    let scratch_dir = work.path().join("scratch");
    std::fs::create_dir(&scratch_dir)?;
    let empty_input = work.path().join("input");
    std::fs::create_dir(&empty_input)?;
    let stdin = match &request.stdin {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => Vec::new(),
    };
    let spec = RunSpec {
        module_hash: Sha256Hash::of(&wasm),
        module_path: request.module.clone(),
        args: request.args.clone(),
        stdin,
        input_dir: request.input_dir.clone().unwrap_or(empty_input),
        scratch_dir: scratch_dir.clone(),
        limits: request.limits,
        scratch_limit_bytes: request.scratch_limit_bytes,
        seed: request.seed,
    };
    let run = sandbox.run(&spec, &Arc::new(RunControl::default()));
    report.fuel_used = run.fuel_used;
    report.backend = run.backend.map(|backend| backend.name());
    report.run_time_ms = run.run_time.as_millis() as u64;
    report.exit_status = run.exit_status;
    report.stderr = run.stderr.clone();
    match &run.outcome {
        RunOutcome::Success => {
            let output_dir = match &request.output {
                Some(dir) => {
                    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                    dir.clone()
                }
                None => tempfile::Builder::new().prefix("wasmgrid-exec-").tempdir()?.keep(),
            };
            let archive = output_dir.join(OUTPUT_ARCHIVE);
            match output::pack(&run.stdout, &scratch_dir, &archive, request.limits.output_bytes) {
                Ok((sha256, bytes)) => {
                    let unpacked = output_dir.join(UNPACKED_OUTPUT);
                    let _ = std::fs::remove_dir_all(&unpacked);
                    output::unpack(&archive, &unpacked).context("cannot unpack the output")?;
                    report.outcome = "success".into();
                    report.credit = wasmgrid_protocol::api::credit_for(run.fuel_used);
                    report.output_sha256 = Some(sha256.to_string());
                    report.output_bytes = Some(bytes);
                    report.output_archive = Some(archive);
                    report.output_dir = Some(unpacked);
                }
                Err(PackError::TooLarge) => report.error = Some(PackError::TooLarge.to_string()),
                Err(PackError::Io(error)) => return Err(error).context("cannot pack the output"),
            }
        }
        RunOutcome::Failed(error) => report.error = Some(error.to_string()),
        RunOutcome::Stopped(reason) => report.error = Some(format!("stopped: {reason:?}")),
    }
    Ok(report)
}

/// Writes `input` instrumented for `target` to `output`; returns the sizes before and after.
pub fn instrument(input: &Path, output: &Path, target: wasmgrid_instrument::Target) -> anyhow::Result<(usize, usize)> {
    let wasm = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let instrumented =
        wasmgrid_instrument::instrument(&wasm, target).map_err(|refusal| anyhow::anyhow!("{refusal}"))?;
    std::fs::write(output, &instrumented).with_context(|| format!("cannot write {}", output.display()))?;
    Ok((wasm.len(), instrumented.len()))
}
