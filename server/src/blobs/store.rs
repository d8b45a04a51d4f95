//! Where blob bytes live. Handlers see only [`BlobStore`], so an S3-compatible object store
//! (for several server replicas, see [`super::s3`]) stands in for the directory without
//! touching them.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use url::Url;
use wasmgrid_protocol::Sha256Hash;

/// A readable part of a blob.
pub struct BlobReader {
    /// Size of the whole blob.
    pub total_bytes: u64,
    pub body: Pin<Box<dyn AsyncRead + Send>>,
}

pub trait BlobStore: Send + Sync + 'static {
    /// Where incoming bytes are spooled (and hashed) before they are known to be valid.
    /// Files there must be cheap to hand to [`BlobStore::put_file`].
    fn staging_dir(&self) -> &Path;

    /// Stores the verified file `staged` under `hash`. Storing a hash that exists already
    /// succeeds and changes nothing: blobs are immutable.
    fn put_file(&self, hash: Sha256Hash, staged: tempfile::TempPath) -> BoxFuture<'_, io::Result<()>>;

    /// Stores verified bytes held in memory under `hash`, with the same guarantees.
    fn put_bytes(&self, hash: Sha256Hash, bytes: Bytes) -> BoxFuture<'_, io::Result<()>>;

    /// The bytes `start..start + len` of a blob (`len` `None`: to the end); `None` if the blob
    /// is not stored.
    fn read(&self, hash: Sha256Hash, start: u64, len: Option<u64>) -> BoxFuture<'_, io::Result<Option<BlobReader>>>;

    /// The size of a stored blob, or `None`.
    fn size(&self, hash: Sha256Hash) -> BoxFuture<'_, io::Result<Option<u64>>>;

    /// Deletes a blob's bytes; deleting one that is not stored succeeds.
    fn delete(&self, hash: Sha256Hash) -> BoxFuture<'_, io::Result<()>>;

    /// How much room the store has, if it can tell.
    fn space(&self) -> io::Result<Option<Space>>;

    /// A URL anyone may download the blob from for `valid_for`, without the server in
    /// between (a presigned URL), if the store can make one.
    fn download_url(&self, hash: Sha256Hash, valid_for: Duration) -> BoxFuture<'_, io::Result<Option<Url>>> {
        let _ = (hash, valid_for);
        Box::pin(async { Ok(None) })
    }
}

/// A store's room, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub available: u64,
    pub total: u64,
}

impl Space {
    /// Too little left for uploads: less than 64 MiB (an upload may need its output limit's
    /// worth), or than a twentieth of a smaller disk.
    pub fn is_full(&self) -> bool {
        self.available < (64 << 20u64).min(self.total / 20)
    }
}

/// Blobs as files in a directory: `<root>/ab/abcdef…`, two hex digits of fan-out so no
/// directory grows to millions of entries.
pub struct DirectoryStore {
    root: PathBuf,
    staging: PathBuf,
}

impl DirectoryStore {
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        let staging = root.join("staging");
        std::fs::create_dir_all(&staging)?;
        // Anything left in staging was interrupted before it was verified.
        for entry in std::fs::read_dir(&staging)?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(Self { root, staging })
    }

    fn path_of(&self, hash: &Sha256Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }
}

impl BlobStore for DirectoryStore {
    fn staging_dir(&self) -> &Path {
        &self.staging
    }

    fn put_file(&self, hash: Sha256Hash, staged: tempfile::TempPath) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let target = self.path_of(&hash);
            if tokio::fs::try_exists(&target).await? {
                return Ok(());
            }
            tokio::fs::create_dir_all(target.parent().expect("blob paths have a parent")).await?;
            // The file is complete and synced before the rename makes it visible, so a
            // crash leaves either nothing or the whole blob under its name.
            let file = tokio::fs::File::open(&staged).await?;
            file.sync_all().await?;
            staged.persist(&target).map_err(|error| error.error)?;
            Ok(())
        })
    }

    fn put_bytes(&self, hash: Sha256Hash, bytes: Bytes) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            if tokio::fs::try_exists(self.path_of(&hash)).await? {
                return Ok(());
            }
            let staging = self.staging.clone();
            let staged = tokio::task::spawn_blocking(move || -> io::Result<tempfile::TempPath> {
                let mut file = tempfile::NamedTempFile::new_in(staging)?;
                file.write_all(&bytes)?;
                Ok(file.into_temp_path())
            })
            .await??;
            self.put_file(hash, staged).await
        })
    }

    fn read(&self, hash: Sha256Hash, start: u64, len: Option<u64>) -> BoxFuture<'_, io::Result<Option<BlobReader>>> {
        Box::pin(async move {
            let mut file = match tokio::fs::File::open(self.path_of(&hash)).await {
                Ok(file) => file,
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(error) => return Err(error),
            };
            let total_bytes = file.metadata().await?.len();
            file.seek(io::SeekFrom::Start(start)).await?;
            let body: Pin<Box<dyn AsyncRead + Send>> = match len {
                Some(len) => Box::pin(file.take(len)),
                None => Box::pin(file),
            };
            Ok(Some(BlobReader { total_bytes, body }))
        })
    }

    fn size(&self, hash: Sha256Hash) -> BoxFuture<'_, io::Result<Option<u64>>> {
        Box::pin(async move {
            match tokio::fs::metadata(self.path_of(&hash)).await {
                Ok(meta) => Ok(Some(meta.len())),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(error),
            }
        })
    }

    #[allow(clippy::useless_conversion, reason = "statvfs's field widths differ between platforms")]
    fn space(&self) -> io::Result<Option<Space>> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.root.as_os_str().as_bytes())?;
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid C string and `stats` is writable storage of the right type.
        if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let block = u64::from(stats.f_frsize);
        Ok(Some(Space {
            available: u64::from(stats.f_bavail).saturating_mul(block),
            total: u64::from(stats.f_blocks).saturating_mul(block),
        }))
    }

    fn delete(&self, hash: Sha256Hash) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            match tokio::fs::remove_file(self.path_of(&hash)).await {
                Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
                _ => Ok(()),
            }
        })
    }
}
