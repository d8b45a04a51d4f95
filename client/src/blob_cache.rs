//! Downloaded modules and inputs, by SHA-256: verified on arrival, stored under their hash,
//! and evicted least-recently-used when the cache outgrows its share of the disk limit.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::BlobRef;
use wasmgrid_protocol::hash::Sha256Hasher;

use crate::api::ServerClient;

pub struct BlobCache {
    dir: PathBuf,
    limit_bytes: u64,
}

impl BlobCache {
    pub fn open(dir: PathBuf, limit_bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, limit_bytes })
    }

    pub fn path_of(&self, hash: &Sha256Hash) -> PathBuf {
        self.dir.join(hash.to_hex())
    }

    /// The local path of `blob`, downloading and verifying it first if needed.
    pub async fn fetch(&self, server: &ServerClient, blob: &BlobRef) -> anyhow::Result<PathBuf> {
        let path = self.path_of(&blob.sha256);
        if path.exists() {
            touch(&path);
            return Ok(path);
        }
        let response = server
            .request(reqwest::Method::GET, &blob.url)
            .send()
            .await
            .and_then(|response| response.error_for_status())
            .with_context(|| format!("cannot download {}", blob.sha256))?;
        let temporary = tempfile::NamedTempFile::new_in(&self.dir)?;
        let mut file = tokio::fs::File::create(temporary.path()).await?;
        let mut hasher = Sha256Hasher::new();
        let mut received = 0u64;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.with_context(|| format!("download of {} broke off", blob.sha256))?;
            received += chunk.len() as u64;
            if received > blob.bytes {
                anyhow::bail!("{} is larger than the {} bytes announced", blob.sha256, blob.bytes);
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        let actual = hasher.finish();
        if actual != blob.sha256 {
            anyhow::bail!("downloaded bytes hash to {actual}, not {}: refusing them", blob.sha256);
        }
        temporary.persist(&path)?;
        Ok(path)
    }

    /// Deletes the least recently used blobs until the cache fits its limit, sparing the
    /// ones in `keep`.
    pub fn evict(&self, keep: &HashSet<Sha256Hash>) -> std::io::Result<()> {
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = std::fs::read_dir(&self.dir)?
            .flatten()
            .filter_map(|entry| {
                let meta = entry.metadata().ok()?;
                let hash: Sha256Hash = entry.file_name().to_str()?.parse().ok()?;
                let evictable = !keep.contains(&hash) && meta.is_file();
                evictable.then_some((meta.modified().ok()?, meta.len(), entry.path()))
            })
            .collect();
        let mut total: u64 = total_bytes(&self.dir);
        entries.sort();
        for (_, bytes, path) in entries {
            if total <= self.limit_bytes {
                break;
            }
            std::fs::remove_file(&path)?;
            total = total.saturating_sub(bytes);
        }
        Ok(())
    }
}

fn total_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// Marks a blob as just used.
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}
