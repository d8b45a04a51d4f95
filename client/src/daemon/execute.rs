//! One task, from its inputs to its packed output. Staging is async (downloads); the run
//! is on a sandbox thread; packing the output is blocking file work.

use std::sync::Arc;

use tokio::sync::mpsc;
use wasmgrid_protocol::api::{ReplicaReport, ReportedOutcome};

use super::staging::{StagingError, stage};
use crate::api::ServerClient;
use crate::blob_cache::BlobCache;
use crate::data_dir::DataDir;
use crate::state::{Phase, StoredOutput, Task, TaskId};
use wasmgrid_sandbox::output::{self, PackError};
use wasmgrid_sandbox::{RunControl, RunOutcome, RunReport, RunSpec, Sandbox, StopReason};

/// The packed output's name in the task directory.
pub const OUTPUT_FILE: &str = "output.tar";

/// What every task shares.
pub struct ExecContext {
    pub sandbox: Arc<Sandbox>,
    pub cache: BlobCache,
    pub data_dir: DataDir,
    pub scratch_limit_bytes: u64,
}

/// How a task's run ended, sent back to the daemon's loop.
#[derive(Debug)]
pub struct Completion {
    pub task: TaskId,
    pub end: End,
}

#[derive(Debug)]
pub enum End {
    /// A result to keep and report.
    Finished(Phase),
    /// Interrupted from outside; not a result.
    Stopped(StopReason),
    /// Could not be prepared for a passing reason; stays pending.
    Retry(String),
}

pub async fn execute(
    task: Task,
    server: ServerClient,
    context: Arc<ExecContext>,
    control: Arc<RunControl>,
    done: mpsc::UnboundedSender<Completion>,
) {
    let end = run_task(&task, &server, &context, control).await;
    let end = end.unwrap_or_else(|error| End::Retry(format!("{error:#}")));
    let _ = done.send(Completion { task: task.id(), end });
}

async fn run_task(
    task: &Task,
    server: &ServerClient,
    context: &Arc<ExecContext>,
    control: Arc<RunControl>,
) -> anyhow::Result<End> {
    let assignment = &task.assignment;
    let replica_id = assignment.replica_id;
    let task_dir = context.data_dir.task(&task.id());
    let staged = match stage(server, &context.cache, assignment, &task_dir).await {
        Ok(staged) => staged,
        Err(StagingError::Transient(error)) => return Ok(End::Retry(format!("{error:#}"))),
        Err(StagingError::Invalid(reason)) => return Ok(End::Finished(failed(replica_id, reason, None))),
    };
    let spec = RunSpec {
        module_hash: assignment.module.sha256,
        module_path: staged.module_path,
        args: assignment.args.clone(),
        stdin: staged.stdin,
        input_dir: staged.input_dir,
        scratch_dir: staged.scratch_dir.clone(),
        limits: assignment.limits,
        scratch_limit_bytes: context.scratch_limit_bytes,
        seed: assignment.seed,
    };
    let report = context.sandbox.spawn_in_background(spec, control)?.await?;
    let phase = match &report.outcome {
        RunOutcome::Stopped(reason) => return Ok(End::Stopped(*reason)),
        RunOutcome::Failed(error) if !error.is_deterministic() => Phase::Finished {
            report: replica_report(replica_id, ReportedOutcome::HostError { reason: error.to_string() }, &report),
            output: None,
            uploaded: true,
        },
        RunOutcome::Failed(error) => failed(replica_id, error.to_string(), Some(&report)),
        RunOutcome::Success => {
            let stdout = report.stdout.clone();
            let archive = task_dir.join(OUTPUT_FILE);
            let limit = assignment.limits.output_bytes;
            let scratch = staged.scratch_dir;
            let packed = tokio::task::spawn_blocking(move || output::pack(&stdout, &scratch, &archive, limit)).await?;
            match packed {
                Ok((sha256, bytes)) => Phase::Finished {
                    report: replica_report(
                        replica_id,
                        ReportedOutcome::Success { output_hash: sha256, output_bytes: bytes },
                        &report,
                    ),
                    output: Some(StoredOutput { sha256, bytes }),
                    uploaded: false,
                },
                Err(PackError::TooLarge) => failed(replica_id, PackError::TooLarge.to_string(), Some(&report)),
                Err(PackError::Io(error)) => return Err(error.into()),
            }
        }
    };
    let backend = report.backend.map(|backend| backend.name());
    tracing::info!(replica.id = replica_id, outcome = ?report.outcome, fuel = report.fuel_used, backend, "task finished");
    Ok(End::Finished(phase))
}

fn failed(replica_id: i64, reason: String, run: Option<&RunReport>) -> Phase {
    let outcome = ReportedOutcome::Error { reason };
    let report = match run {
        Some(run) => replica_report(replica_id, outcome, run),
        None => ReplicaReport {
            replica_id,
            outcome,
            fuel_used: 0,
            run_time_ms: 0,
            exit_status: None,
            stderr: String::new(),
            instrumentation_version: wasmgrid_sandbox::INSTRUMENTATION_VERSION,
            output: None,
        },
    };
    Phase::Finished { report, output: None, uploaded: true }
}

fn replica_report(replica_id: i64, outcome: ReportedOutcome, run: &RunReport) -> ReplicaReport {
    ReplicaReport {
        replica_id,
        outcome,
        fuel_used: run.fuel_used,
        run_time_ms: run.run_time.as_millis() as u64,
        exit_status: run.exit_status,
        stderr: run.stderr.clone(),
        instrumentation_version: wasmgrid_sandbox::INSTRUMENTATION_VERSION,
        output: None,
    }
}
