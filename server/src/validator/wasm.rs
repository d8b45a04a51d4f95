//! Running an app's validator module on two outputs, in the same sandbox volunteers use.
//!
//! The contract (also in `workunits/README.md`): the module is a WASI command run without
//! arguments; its read-only input directory holds the two outputs unpacked, as
//! `/input/a/stdout`, `/input/a/files/<path>` and the same under `/input/b`. Exit status 0
//! says "equivalent", 1 says "different". Anything else (another status, a trap, running out
//! of fuel or memory or time) is a failure of the validator: the outputs count as different
//! and the publisher is told. Outputs come from volunteers, so they are unpacked with
//! suspicion ([`output::unpack`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::RunLimits;
use wasmgrid_protocol::publish::MAX_MODULE_BYTES;
use wasmgrid_sandbox::{Limit, RunControl, RunError, RunOutcome, RunSpec, Sandbox, output};

use crate::blobs::{self, BlobStore};

/// The limits of one comparison: generous for comparing two outputs, strict enough that a
/// runaway validator costs the server little.
pub const VALIDATOR_LIMITS: RunLimits = RunLimits {
    fuel: 100_000_000_000,
    memory_bytes: 256 * 1024 * 1024,
    output_bytes: 64 * 1024,
    wall_time_seconds: 120,
};
/// Bytes a validator may write to its scratch directory.
const VALIDATOR_SCRATCH_BYTES: u64 = 16 * 1024 * 1024;

/// What a validator module said about two outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub equivalent: bool,
    /// Why the validator failed, when it did (the outputs then count as different).
    pub failure: Option<String>,
}

/// Runs validator modules; keeps their modules and compiled code under `work_dir`.
pub struct ValidatorRunner {
    sandbox: Arc<Sandbox>,
    blobs: Arc<dyn BlobStore>,
    work_dir: PathBuf,
    metrics: Arc<crate::metrics::Metrics>,
}

impl ValidatorRunner {
    pub fn new(
        sandbox: Arc<Sandbox>,
        blobs: Arc<dyn BlobStore>,
        work_dir: PathBuf,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(work_dir.join("modules"))
            .with_context(|| format!("cannot create {}", work_dir.display()))?;
        Ok(Self { sandbox, blobs, work_dir, metrics })
    }

    /// The server's metrics, which count what comparisons decide too.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Compares outputs `a` and `b` with the validator module `validator`. An error means the
    /// comparison could not be made at all (a missing blob, a full disk), not that the
    /// validator failed.
    pub async fn compare(&self, validator: Sha256Hash, a: Sha256Hash, b: Sha256Hash) -> anyhow::Result<Comparison> {
        let comparison = self.run_comparison(validator, a, b).await;
        let result = match &comparison {
            Ok(Comparison { failure: Some(_), .. }) => "validator_failed",
            Ok(Comparison { equivalent: true, .. }) => "equivalent",
            Ok(Comparison { equivalent: false, .. }) => "different",
            Err(_) => "not_made",
        };
        self.metrics.validator_runs.with_label_values(&[result]).inc();
        comparison
    }

    async fn run_comparison(&self, validator: Sha256Hash, a: Sha256Hash, b: Sha256Hash) -> anyhow::Result<Comparison> {
        let module_path = self.module_file(validator).await?;
        let dir = tempfile::tempdir_in(&self.work_dir)?;
        let archives = [("a", a), ("b", b)].map(|(side, hash)| (side, hash, dir.path().join(format!("{side}.tar"))));
        for (_, hash, path) in &archives {
            self.copy_blob(*hash, path).await?;
        }
        let sandbox = self.sandbox.clone();
        let dir_path = dir.path().to_owned();
        let report = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let input = dir_path.join("input");
            for (side, hash, archive) in &archives {
                if let Err(error) = output::unpack(archive, &input.join(side)) {
                    if is_the_servers_fault(&error) {
                        return Err(error).context("cannot unpack an output");
                    }
                    // A volunteer sent bytes that are not an output archive: that answer
                    // cannot equal any other, now or later.
                    return Ok(Err(format!("output {hash} is not a valid output archive: {}", printable(&error))));
                }
            }
            let scratch = dir_path.join("scratch");
            std::fs::create_dir(&scratch)?;
            let spec = RunSpec {
                module_hash: validator,
                module_path,
                args: Vec::new(),
                stdin: Vec::new(),
                input_dir: input,
                scratch_dir: scratch,
                limits: VALIDATOR_LIMITS,
                scratch_limit_bytes: VALIDATOR_SCRATCH_BYTES,
                seed: 0,
            };
            Ok(Ok(sandbox.run(&spec, &Arc::new(RunControl::default()))))
        })
        .await??;
        let report = match report {
            Ok(report) => report,
            Err(unusable) => return Ok(Comparison { equivalent: false, failure: Some(unusable) }),
        };
        drop(dir);
        // The module's own words, which may echo the outputs (a volunteer's bytes): kept
        // short, and free of control characters (PostgreSQL refuses NUL; a terminal would
        // obey escapes).
        let stderr = report
            .stderr
            .lines()
            .rev()
            .map(|line| printable_text(line).trim().to_owned())
            .find(|line| !line.is_empty())
            .unwrap_or_default();
        let with_stderr = |what: String| if stderr.is_empty() { what } else { format!("{what}: {stderr}") };
        Ok(match report.outcome {
            RunOutcome::Success => Comparison { equivalent: true, failure: None },
            RunOutcome::Failed(RunError::Exit(1)) => Comparison { equivalent: false, failure: None },
            // Time depends on how busy the server is, so it is not the validator's answer:
            // the comparison is tried again later rather than stored.
            RunOutcome::Failed(RunError::Limit(Limit::WallTime)) => {
                anyhow::bail!(
                    "the validator ran out of time ({} s); trying again later",
                    VALIDATOR_LIMITS.wall_time_seconds
                )
            }
            RunOutcome::Failed(error) => {
                Comparison { equivalent: false, failure: Some(with_stderr(format!("the validator failed: {error}"))) }
            }
            RunOutcome::Stopped(reason) => anyhow::bail!("the validator run was stopped ({reason:?})"),
        })
    }

    /// The validator module as a file, fetched from the blob store once.
    async fn module_file(&self, hash: Sha256Hash) -> anyhow::Result<PathBuf> {
        let path = self.work_dir.join("modules").join(format!("{hash}.wasm"));
        if !tokio::fs::try_exists(&path).await? {
            let module = blobs::read_all(self.blobs.as_ref(), hash, MAX_MODULE_BYTES)
                .await?
                .with_context(|| format!("the validator module {hash} is not stored"))?;
            let staging = tempfile::NamedTempFile::new_in(self.work_dir.join("modules"))?;
            tokio::fs::write(staging.path(), &module).await?;
            staging.persist(&path)?;
        }
        Ok(path)
    }

    async fn copy_blob(&self, hash: Sha256Hash, destination: &Path) -> anyhow::Result<()> {
        let mut reader =
            self.blobs.read(hash, 0, None).await?.with_context(|| format!("output {hash} is not stored"))?.body;
        let mut file = tokio::fs::File::create(destination).await?;
        tokio::io::copy(&mut reader, &mut file).await?;
        file.flush().await?;
        Ok(())
    }
}

/// An error about hostile bytes, fit to show the publisher: the tar reader may quote the
/// bytes themselves, so control characters go and the length is capped.
fn printable(error: &std::io::Error) -> String {
    printable_text(&error.to_string())
}

/// `text` without control characters, at most 120 characters of it.
fn printable_text(text: &str) -> String {
    const MAX_CHARS: usize = 120;
    let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// Whether unpacking failed because of the server (a full disk, say) rather than the
/// archive.
fn is_the_servers_fault(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::PermissionDenied | ErrorKind::OutOfMemory
    )
}
