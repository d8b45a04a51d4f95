//! `wasmgrid batch submit`: uploads what the jobs need (each distinct file once, only if the
//! server lacks it), opens a batch, sends its work units in chunks and closes it.
//!
//! Every step can be repeated: uploads are by hash, and the server skips work units whose
//! names the batch has already. So an interrupted submission is finished by running the same
//! command again with `--resume BATCH_ID`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::hash::Sha256Hasher;
use wasmgrid_protocol::publish::{
    AddWorkUnitsRequest, BatchState, CreateBatchRequest, MAX_MISSING_QUERY, MAX_WORK_UNITS_PER_CHUNK, SubmitPolicy,
    WorkUnitSubmission,
};

use super::client::PublisherClient;
use super::jobs::Job;
use super::progress::ProgressBar;

/// Work units per request at most; a chunk also stops at [`CHUNK_BYTES`] of JSON.
const CHUNK_WORK_UNITS: usize = 1000;
/// Below the server's 1 MiB body limit, with room for the policy.
const CHUNK_BYTES: usize = 768 * 1024;
/// Files uploaded at once.
const PARALLEL_UPLOADS: usize = 4;

/// What a submission did, for people and (as JSON) for scripts.
#[derive(Debug, Clone, Serialize)]
pub struct Submitted {
    pub batch_id: i64,
    pub app: String,
    pub work_units: u64,
    /// Created by this run; the rest were there from an interrupted earlier one.
    pub created: u64,
    pub existing: u64,
    pub files: u64,
    pub files_uploaded: u64,
    pub bytes_uploaded: u64,
}

pub struct Submission<'a> {
    pub app: &'a str,
    pub name: &'a str,
    /// Whether the name shows on the public status page.
    pub public_name: bool,
    pub jobs: &'a [Job],
    pub policy: SubmitPolicy,
    /// Continue this batch instead of opening a new one.
    pub resume: Option<i64>,
}

pub async fn submit(client: &PublisherClient, submission: Submission<'_>) -> anyhow::Result<Submitted> {
    let hashes = hash_files(submission.jobs).await?;
    let (files_uploaded, bytes_uploaded) = upload_missing(client, &hashes).await?;

    let batch_id = match submission.resume {
        Some(batch_id) => {
            let status = client.batch_status(batch_id).await?;
            if status.app != submission.app {
                bail!("batch {batch_id} belongs to app {:?}, not {:?}", status.app, submission.app);
            }
            match status.state {
                BatchState::Cancelled => bail!("batch {batch_id} was cancelled"),
                BatchState::Open => batch_id,
                // The earlier run got to the end (and perhaps failed only to say so).
                BatchState::InProgress | BatchState::Done => {
                    let work_units = status.work_units.total();
                    eprintln!("batch {batch_id} is fully submitted already: nothing to do");
                    return Ok(Submitted {
                        batch_id,
                        app: submission.app.to_owned(),
                        work_units,
                        created: 0,
                        existing: work_units,
                        files: hashes.len() as u64,
                        files_uploaded,
                        bytes_uploaded,
                    });
                }
            }
        }
        None => {
            let request = CreateBatchRequest {
                app: submission.app.to_owned(),
                name: submission.name.to_owned(),
                public: submission.public_name,
            };
            client.create_batch(&request).await?.batch_id
        }
    };
    eprintln!(
        "batch {batch_id}: submitting {} work units (if interrupted, run the same command with --resume {batch_id})",
        submission.jobs.len()
    );

    let mut bar = ProgressBar::new("submitting", submission.jobs.len() as u64);
    let (mut created, mut existing, mut sent) = (0u64, 0u64, 0u64);
    for chunk in chunks(submission.jobs, &hashes)? {
        let count = chunk.len() as u64;
        let request = AddWorkUnitsRequest { policy: submission.policy, work_units: chunk };
        let added = client
            .add_work_units(batch_id, &request)
            .await
            .with_context(|| format!("while submitting to batch {batch_id} (resume with --resume {batch_id})"))?;
        created += added.created;
        existing += added.existing;
        sent += count;
        bar.set(sent, "");
    }
    bar.finish();
    client.close_batch(batch_id).await?;
    Ok(Submitted {
        batch_id,
        app: submission.app.to_owned(),
        work_units: submission.jobs.len() as u64,
        created,
        existing,
        files: hashes.len() as u64,
        files_uploaded,
        bytes_uploaded,
    })
}

/// The hash and size of every distinct file the jobs name.
async fn hash_files(jobs: &[Job]) -> anyhow::Result<HashMap<PathBuf, (Sha256Hash, u64)>> {
    let mut paths: Vec<PathBuf> = jobs.iter().flat_map(Job::paths).map(Path::to_path_buf).collect();
    paths.sort();
    paths.dedup();
    let mut bar = ProgressBar::new("hashing inputs", paths.len() as u64);
    let mut hashes = HashMap::with_capacity(paths.len());
    for (done, path) in paths.into_iter().enumerate() {
        let hashed = tokio::task::spawn_blocking({
            let path = path.clone();
            move || hash_file(&path)
        })
        .await??;
        hashes.insert(path, hashed);
        bar.set(done as u64 + 1, "");
    }
    bar.finish();
    Ok(hashes)
}

fn hash_file(path: &Path) -> anyhow::Result<(Sha256Hash, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open the input {}", path.display()))?;
    let mut hasher = Sha256Hasher::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let read = file.read(&mut buffer).with_context(|| format!("cannot read the input {}", path.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        bytes += read as u64;
    }
    Ok((hasher.finish(), bytes))
}

/// Uploads the files the server does not have yet; returns how many and their bytes.
async fn upload_missing(
    client: &PublisherClient,
    hashes: &HashMap<PathBuf, (Sha256Hash, u64)>,
) -> anyhow::Result<(u64, u64)> {
    let mut by_hash: HashMap<Sha256Hash, (&Path, u64)> = HashMap::new();
    for (path, (hash, bytes)) in hashes {
        by_hash.entry(*hash).or_insert((path, *bytes));
    }
    let all: Vec<Sha256Hash> = by_hash.keys().copied().collect();
    let mut missing = Vec::new();
    for query in all.chunks(MAX_MISSING_QUERY) {
        missing.extend(client.missing_files(query.to_vec()).await?);
    }
    let total_bytes: u64 = missing.iter().map(|hash| by_hash[hash].1).sum();
    let mut bar = ProgressBar::new("uploading inputs", missing.len() as u64);
    let mut uploads =
        futures::stream::iter(
            missing.iter().map(|hash| {
                let (path, _) = by_hash[hash];
                async move {
                    client.put_file(*hash, path).await.with_context(|| format!("cannot upload {}", path.display()))
                }
            }),
        )
        .buffer_unordered(PARALLEL_UPLOADS);
    let mut done = 0u64;
    while uploads.try_next().await?.is_some() {
        done += 1;
        bar.set(done, "");
    }
    bar.finish();
    Ok((missing.len() as u64, total_bytes))
}

/// The jobs as submissions, cut into chunks the server accepts.
fn chunks(jobs: &[Job], hashes: &HashMap<PathBuf, (Sha256Hash, u64)>) -> anyhow::Result<Vec<Vec<WorkUnitSubmission>>> {
    let limit = CHUNK_WORK_UNITS.min(MAX_WORK_UNITS_PER_CHUNK);
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0;
    for job in jobs {
        let hash_of = |path: &PathBuf| hashes[path].0;
        let submission = WorkUnitSubmission {
            name: job.name.clone(),
            args: job.args.clone(),
            stdin: job.stdin.as_ref().map(hash_of),
            files: job.files.iter().map(|(name, path)| (name.clone(), hash_of(path))).collect(),
        };
        let bytes = serde_json::to_vec(&submission)?.len() + 1;
        if bytes > CHUNK_BYTES {
            bail!("work unit {:?} is too large to submit: its arguments take {bytes} bytes", job.name);
        }
        if chunk.len() == limit || chunk_bytes + bytes > CHUNK_BYTES {
            chunks.push(std::mem::take(&mut chunk));
            chunk_bytes = 0;
        }
        chunk.push(submission);
        chunk_bytes += bytes;
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    Ok(chunks)
}
