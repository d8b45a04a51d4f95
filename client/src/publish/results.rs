//! `wasmgrid batch results`: downloads each validated work unit's canonical output into
//! `OUT/<work unit name>/` (`stdout` and `files/...`), verified against its hash.
//!
//! Resumable: a finished download is unpacked next to the others and moved into place in
//! one rename, with its hash in `OUT/<name>/.sha256`, so running the command again fetches
//! only what is missing or changed, and never leaves half an output behind. A result that
//! changed after it was first given (it had been accepted on one host's word, and other
//! hosts found it wrong) is fetched again, or its folder removed if the work unit failed.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::Serialize;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::BlobRef;
use wasmgrid_protocol::publish::{WorkUnitFailure, name_problem};
use wasmgrid_sandbox::output;

use super::client::PublisherClient;
use super::progress::ProgressBar;

/// The file in each result folder that says which output it holds.
pub const HASH_FILE: &str = ".sha256";
/// Where downloads are staged, inside the output folder (so the final rename stays on one
/// file system).
const STAGING: &str = ".partial";
const PARALLEL_DOWNLOADS: usize = 4;

#[derive(Debug, Clone, Serialize)]
pub struct Collected {
    pub batch_id: i64,
    pub out: PathBuf,
    /// Validated work units whose outputs are now in `out`.
    pub validated: u64,
    /// Of those, fetched by this run (the rest were there already).
    pub downloaded: u64,
    pub bytes_downloaded: u64,
    /// Work units still running: run the command again later for them.
    pub unfinished: u64,
    pub failed: Vec<WorkUnitFailure>,
    /// Outputs that could not be put in place this time, and why; the others were.
    pub errors: Vec<WorkUnitFailure>,
    /// Of the validated outputs, those resting on one trusted host's word, unchecked.
    pub on_trust: u64,
    /// Work units whose result changed after it was first given, by name.
    pub changed: Vec<String>,
}

pub async fn collect(client: &PublisherClient, batch_id: i64, out: &Path) -> anyhow::Result<Collected> {
    let status = client.batch_status(batch_id).await?;
    let staging = out.join(STAGING);
    tokio::fs::create_dir_all(&staging).await.with_context(|| format!("cannot create {}", staging.display()))?;

    let mut validated = Vec::new();
    let mut failed = Vec::new();
    let mut changed = Vec::new();
    let mut on_trust = 0;
    let mut after: Option<String> = None;
    loop {
        let page = client.results(batch_id, after.as_deref()).await?;
        for result in page.results {
            if result.changed_at.is_some() {
                changed.push(result.name.clone());
            }
            on_trust += u64::from(result.on_trust);
            match (result.output, result.failure_reason) {
                (Some(output), _) => validated.push((result.name, output)),
                (None, reason) => failed.push(WorkUnitFailure {
                    name: result.name,
                    reason: reason.unwrap_or_else(|| "no reason given".into()),
                }),
            }
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }

    // A folder this command made for a result that has since become a failure goes.
    for failure in &failed {
        let folder = out.join(&failure.name);
        if name_problem(&failure.name).is_none() && folder.join(HASH_FILE).exists() {
            tokio::fs::remove_dir_all(&folder).await.with_context(|| format!("cannot remove {}", folder.display()))?;
        }
    }

    let mut bar = ProgressBar::new("downloading", validated.len() as u64);
    let mut fetches = futures::stream::iter(
        validated
            .iter()
            .enumerate()
            .map(|(index, (name, output))| async move { (name, fetch(client, out, index, name, output).await) }),
    )
    .buffer_unordered(PARALLEL_DOWNLOADS);
    let (mut done, mut downloaded, mut bytes_downloaded) = (0u64, 0u64, 0u64);
    let mut errors = Vec::new();
    while let Some((name, fetched)) = fetches.next().await {
        match fetched {
            Ok(Some(bytes)) => {
                downloaded += 1;
                bytes_downloaded += bytes;
            }
            Ok(None) => {}
            // One bad output must not keep the others from the scientist.
            Err(error) => errors.push(WorkUnitFailure { name: name.clone(), reason: format!("{error:#}") }),
        }
        done += 1;
        bar.set(done, "");
    }
    bar.finish();
    let _ = tokio::fs::remove_dir(&staging).await;
    Ok(Collected {
        batch_id,
        out: out.to_owned(),
        validated: validated.len() as u64,
        downloaded,
        bytes_downloaded,
        unfinished: status.work_units.active,
        failed,
        errors,
        on_trust,
        changed,
    })
}

/// Puts one output in place unless it is there already; returns the bytes fetched, if any.
/// Staging entries are named by `index`, so no two work units' names can collide there.
async fn fetch(
    client: &PublisherClient,
    out: &Path,
    index: usize,
    name: &str,
    output: &BlobRef,
) -> anyhow::Result<Option<u64>> {
    if let Some(problem) = name_problem(name) {
        bail!("the server named a work unit {name:?}, which cannot be a folder name: {problem}");
    }
    let destination = out.join(name);
    if recorded_hash(&destination) == Some(output.sha256) {
        return Ok(None);
    }
    // Only a folder this command made is ever replaced; anything else is the scientist's.
    if tokio::fs::try_exists(&destination).await? && !destination.join(HASH_FILE).exists() {
        bail!("{} exists and is not a downloaded result: move it away", destination.display());
    }
    let staging = out.join(STAGING);
    let archive = staging.join(format!("{index}.tar"));
    client.download_to(&output.sha256, &archive).await.context("cannot download it")?;
    let unpacked = staging.join(index.to_string());
    let expected = output.sha256;
    let (archive_for_check, unpacked_for_job) = (archive.clone(), unpacked.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let actual = output::hash_file(&archive_for_check)?;
        if actual != expected {
            bail!("the download hashes to {actual}, not {expected}: try again");
        }
        if unpacked_for_job.exists() {
            std::fs::remove_dir_all(&unpacked_for_job)?;
        }
        output::unpack(&archive_for_check, &unpacked_for_job).context("not a valid output archive")?;
        std::fs::write(unpacked_for_job.join(HASH_FILE), format!("{expected}\n"))?;
        Ok(())
    })
    .await??;
    if tokio::fs::try_exists(&destination).await? {
        tokio::fs::remove_dir_all(&destination).await?;
    }
    tokio::fs::rename(&unpacked, &destination).await?;
    tokio::fs::remove_file(&archive).await?;
    Ok(Some(output.bytes))
}

/// Hash of the output a result folder holds, if complete.
fn recorded_hash(result_dir: &Path) -> Option<Sha256Hash> {
    std::fs::read_to_string(result_dir.join(HASH_FILE)).ok()?.trim().parse().ok()
}
