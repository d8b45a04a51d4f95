//! Downloaded modules and inputs, by SHA-256: verified on arrival and again before each
//! use, stored under their hash, and evicted least-recently-used when the cache outgrows
//! its share of the disk limit.

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

    /// The local path of `blob`, verified, downloading it first if it is missing or damaged.
    pub async fn fetch(&self, server: &ServerClient, blob: &BlobRef) -> anyhow::Result<PathBuf> {
        let path = self.path_of(&blob.sha256);
        // A cached file can rot on disk or be changed by another program; a wrong byte would
        // give a wrong result, or run a module other than the one assigned.
        match hash_file(path.clone()).await {
            Ok(actual) if actual == blob.sha256 => {
                touch(&path);
                return Ok(path);
            }
            Ok(actual) => {
                tracing::warn!(blob = %blob.sha256, actual = %actual, "a cached file is damaged; downloading it again");
                std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
        }
        let response = async { crate::api::check(server.get(&blob.url).await?).await }
            .await
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

/// Hashes a file off the async runtime: inputs can be large.
async fn hash_file(path: PathBuf) -> std::io::Result<Sha256Hash> {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256Hasher::new();
        let mut buffer = vec![0; 1 << 16];
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                return Ok(hasher.finish());
            }
            hasher.update(&buffer[..read]);
        }
    })
    .await
    .map_err(std::io::Error::other)?
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Caches `bytes` as if last used `age` ago.
    fn cached(cache: &BlobCache, bytes: &[u8], age: Duration) -> Sha256Hash {
        let hash = Sha256Hash::of(bytes);
        let path = cache.path_of(&hash);
        std::fs::write(&path, bytes).unwrap();
        std::fs::File::options().append(true).open(&path).unwrap().set_modified(SystemTime::now() - age).unwrap();
        hash
    }

    fn minutes(minutes: u64) -> Duration {
        Duration::from_secs(60 * minutes)
    }

    #[test]
    fn eviction_removes_the_least_recently_used_until_the_cache_fits() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path().join("blobs"), 250).unwrap();
        let oldest = cached(&cache, &[1; 100], minutes(3));
        let middle = cached(&cache, &[2; 100], minutes(2));
        let newest = cached(&cache, &[3; 100], minutes(1));

        cache.evict(&HashSet::new()).unwrap();

        assert!(!cache.path_of(&oldest).exists());
        assert!(cache.path_of(&middle).exists());
        assert!(cache.path_of(&newest).exists());
    }

    #[test]
    fn using_a_blob_makes_it_the_most_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path().join("blobs"), 250).unwrap();
        let used_again = cached(&cache, &[1; 100], minutes(3));
        let middle = cached(&cache, &[2; 100], minutes(2));
        let newest = cached(&cache, &[3; 100], minutes(1));

        touch(&cache.path_of(&used_again));
        cache.evict(&HashSet::new()).unwrap();

        assert!(cache.path_of(&used_again).exists());
        assert!(!cache.path_of(&middle).exists());
        assert!(cache.path_of(&newest).exists());
    }

    #[test]
    fn a_blob_in_use_is_kept_even_when_it_is_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path().join("blobs"), 150).unwrap();
        let in_use = cached(&cache, &[1; 100], minutes(3));
        let middle = cached(&cache, &[2; 100], minutes(2));
        let newest = cached(&cache, &[3; 100], minutes(1));

        cache.evict(&HashSet::from([in_use])).unwrap();

        assert!(cache.path_of(&in_use).exists());
        assert!(!cache.path_of(&middle).exists());
        assert!(!cache.path_of(&newest).exists(), "the blob in use still counts against the limit");
    }
}
