//! A blob store that counts its failures in the metrics: wrapped around whichever store the
//! server opened, so that an error of the object store or of the disk is counted wherever it
//! happens (a download, an upload, a sweep) and not only where a handler notices it.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use url::Url;
use wasmgrid_protocol::Sha256Hash;

use super::{BlobReader, BlobStore, Space, is_out_of_space};
use crate::metrics::{BlobOperation, SharedMetrics};

pub struct CountedStore {
    inner: Arc<dyn BlobStore>,
    metrics: SharedMetrics,
}

impl CountedStore {
    pub fn new(inner: Arc<dyn BlobStore>, metrics: SharedMetrics) -> Self {
        Self { inner, metrics }
    }

    /// Counts `result`'s error under `operation`. A full store is left to the count of
    /// uploads refused for want of room, which every refused upload reaches once.
    fn counted<T>(&self, operation: BlobOperation, result: io::Result<T>) -> io::Result<T> {
        if let Err(error) = &result
            && !is_out_of_space(error)
        {
            self.metrics.blob_store_error(operation);
        }
        result
    }
}

impl BlobStore for CountedStore {
    fn staging_dir(&self) -> &Path {
        self.inner.staging_dir()
    }

    fn put_file(&self, hash: Sha256Hash, staged: tempfile::TempPath) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move { self.counted(BlobOperation::Put, self.inner.put_file(hash, staged).await) })
    }

    fn put_bytes(&self, hash: Sha256Hash, bytes: Bytes) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move { self.counted(BlobOperation::Put, self.inner.put_bytes(hash, bytes).await) })
    }

    fn read(&self, hash: Sha256Hash, start: u64, len: Option<u64>) -> BoxFuture<'_, io::Result<Option<BlobReader>>> {
        Box::pin(async move { self.counted(BlobOperation::Read, self.inner.read(hash, start, len).await) })
    }

    fn size(&self, hash: Sha256Hash) -> BoxFuture<'_, io::Result<Option<u64>>> {
        Box::pin(async move { self.counted(BlobOperation::Size, self.inner.size(hash).await) })
    }

    fn delete(&self, hash: Sha256Hash) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move { self.counted(BlobOperation::Delete, self.inner.delete(hash).await) })
    }

    fn space(&self) -> io::Result<Option<Space>> {
        self.counted(BlobOperation::Space, self.inner.space())
    }

    fn download_url(&self, hash: Sha256Hash, valid_for: Duration) -> BoxFuture<'_, io::Result<Option<Url>>> {
        Box::pin(async move { self.counted(BlobOperation::Presign, self.inner.download_url(hash, valid_for).await) })
    }
}
