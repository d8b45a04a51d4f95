//! Blobs in an S3-compatible object store, so that several server processes on several
//! machines serve each other's files. Objects are `<prefix>/ab/abcdef…`, the directory
//! store's layout; the endpoint, region and credentials come from the standard `AWS_*`
//! variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, and `AWS_ALLOW_HTTP=true` for an endpoint without TLS).
//!
//! A PUT makes an object visible whole or not at all, which is the directory store's
//! rename: a crash leaves either nothing or the whole blob under its name.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, MultipartUpload, ObjectStore, PutPayload};
use tokio::io::AsyncReadExt;
use tokio_util::io::StreamReader;
use url::Url;
use wasmgrid_protocol::Sha256Hash;

use super::store::{BlobReader, BlobStore, Space};

/// Files up to this size go up in one PUT; larger ones as a multipart upload of parts this
/// large, so a big output never has to sit in memory whole.
const PART_BYTES: usize = 8 << 20;

/// Parts of one multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

pub struct S3Store {
    store: Arc<AmazonS3>,
    prefix: ObjectPath,
    staging: PathBuf,
    description: String,
}

impl S3Store {
    /// Opens `s3://bucket/prefix`, with settings from the `AWS_*` variables, staging
    /// incoming bytes in `staging` (a local directory, emptied here: anything in it was
    /// interrupted before it was verified). Checks that the bucket answers, so that a wrong
    /// endpoint or credentials stop the server at startup rather than fail every upload.
    /// `settings` (object_store's names: `aws_endpoint`, `aws_region`…) override the
    /// variables.
    pub async fn open(url: &Url, settings: &[(String, String)], staging: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let location = S3Location::parse(url)?;
        let mut builder = AmazonS3Builder::from_env();
        for (key, value) in settings {
            let key: AmazonS3ConfigKey =
                key.parse().map_err(|error| anyhow::anyhow!("unknown S3 setting {key}: {error}"))?;
            builder = builder.with_config(key, value);
        }
        let store = builder
            .with_bucket_name(&location.bucket)
            .build()
            .map_err(|error| anyhow::anyhow!("cannot set up the S3 blob store {url}: {error}"))?;
        let staging = staging.into();
        std::fs::create_dir_all(&staging)?;
        for entry in std::fs::read_dir(&staging)?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        let this = Self {
            store: Arc::new(store),
            prefix: ObjectPath::from(location.prefix.as_str()),
            staging,
            description: url.to_string(),
        };
        this.check_reachable().await?;
        Ok(this)
    }

    async fn check_reachable(&self) -> anyhow::Result<()> {
        // Listing one page under the prefix needs the bucket to exist and the credentials
        // to be good; an empty store lists nothing and that is fine.
        let mut listing = self.store.list(Some(&self.prefix));
        match listing.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(error)) => {
                anyhow::bail!("the S3 blob store {} does not answer as it should: {error}", self.description)
            }
        }
    }

    fn path_of(&self, hash: &Sha256Hash) -> ObjectPath {
        let hex = hash.to_hex();
        self.prefix.child(&hex[..2]).child(hex)
    }

    async fn exists(&self, path: &ObjectPath) -> io::Result<bool> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(to_io(error)),
        }
    }

    async fn upload_file(&self, path: &ObjectPath, staged: &Path) -> io::Result<()> {
        let mut file = tokio::fs::File::open(staged).await?;
        let size = file.metadata().await?.len();
        if size <= PART_BYTES as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).await?;
            self.store.put(path, PutPayload::from(bytes)).await.map_err(to_io)?;
            return Ok(());
        }
        let mut upload = self.store.put_multipart(path).await.map_err(to_io)?;
        let sent = match send_parts(upload.as_mut(), &mut file).await {
            Ok(()) => upload.complete().await.map(drop).map_err(to_io),
            Err(error) => Err(error),
        };
        if sent.is_err() {
            // An upload left open keeps its parts in the bucket, unseen but paid for.
            let _ = upload.abort().await;
        }
        sent
    }
}

/// Sends `file` as the parts of `upload`, [`PARTS_IN_FLIGHT`] at a time, and waits until
/// every part is stored. Every part but the last is [`PART_BYTES`] long, as S3 requires.
async fn send_parts(upload: &mut dyn MultipartUpload, file: &mut tokio::fs::File) -> io::Result<()> {
    let mut in_flight: FuturesUnordered<object_store::UploadPart> = FuturesUnordered::new();
    loop {
        let mut part = Vec::with_capacity(PART_BYTES);
        (&mut *file).take(PART_BYTES as u64).read_to_end(&mut part).await?;
        if part.is_empty() {
            break;
        }
        if in_flight.len() == PARTS_IN_FLIGHT
            && let Some(stored) = in_flight.next().await
        {
            stored.map_err(to_io)?;
        }
        let last = part.len() < PART_BYTES;
        in_flight.push(upload.put_part(PutPayload::from(part)));
        if last {
            break;
        }
    }
    while let Some(stored) = in_flight.next().await {
        stored.map_err(to_io)?;
    }
    Ok(())
}

impl BlobStore for S3Store {
    fn staging_dir(&self) -> &Path {
        &self.staging
    }

    fn put_file(&self, hash: Sha256Hash, staged: tempfile::TempPath) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let path = self.path_of(&hash);
            if self.exists(&path).await? {
                return Ok(());
            }
            self.upload_file(&path, &staged).await
        })
    }

    fn put_bytes(&self, hash: Sha256Hash, bytes: Bytes) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let path = self.path_of(&hash);
            if self.exists(&path).await? {
                return Ok(());
            }
            self.store.put(&path, PutPayload::from(bytes)).await.map_err(to_io)?;
            Ok(())
        })
    }

    fn read(&self, hash: Sha256Hash, start: u64, len: Option<u64>) -> BoxFuture<'_, io::Result<Option<BlobReader>>> {
        Box::pin(async move {
            let path = self.path_of(&hash);
            // S3 refuses an empty range, and a range from the end of the object: those
            // reads are answered from the object's size alone.
            if len == Some(0) {
                return Ok(self
                    .size(hash)
                    .await?
                    .map(|total_bytes| BlobReader { total_bytes, body: Box::pin(tokio::io::empty()) }));
            }
            let range = match (start, len) {
                (0, None) => None,
                (start, None) => Some(GetRange::Offset(start)),
                (start, Some(len)) => Some(GetRange::Bounded(start..start.saturating_add(len))),
            };
            let options = GetOptions { range, ..GetOptions::default() };
            let result = match self.store.get_opts(&path, options).await {
                Ok(result) => result,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(error) => return Err(to_io(error)),
            };
            let total_bytes = result.meta.size;
            let stream = result.into_stream().map_err(to_io);
            Ok(Some(BlobReader { total_bytes, body: Box::pin(StreamReader::new(stream)) }))
        })
    }

    fn size(&self, hash: Sha256Hash) -> BoxFuture<'_, io::Result<Option<u64>>> {
        Box::pin(async move {
            match self.store.head(&self.path_of(&hash)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(error) => Err(to_io(error)),
            }
        })
    }

    fn delete(&self, hash: Sha256Hash) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            match self.store.delete(&self.path_of(&hash)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(error) => Err(to_io(error)),
            }
        })
    }

    fn space(&self) -> io::Result<Option<Space>> {
        // A bucket has no size to run out of; its quota, if any, shows as failed uploads.
        Ok(None)
    }

    fn download_url(&self, hash: Sha256Hash, valid_for: Duration) -> BoxFuture<'_, io::Result<Option<Url>>> {
        Box::pin(async move {
            let url =
                self.store.signed_url(axum::http::Method::GET, &self.path_of(&hash), valid_for).await.map_err(to_io)?;
            Ok(Some(url))
        })
    }
}

/// The bucket and key prefix of an `s3://bucket/prefix` URL.
#[derive(Debug, PartialEq, Eq)]
struct S3Location {
    bucket: String,
    prefix: String,
}

impl S3Location {
    fn parse(url: &Url) -> anyhow::Result<Self> {
        anyhow::ensure!(url.scheme() == "s3", "a blob store URL is s3://bucket/prefix, not {url}");
        let bucket = url.host_str().filter(|bucket| !bucket.is_empty());
        let Some(bucket) = bucket else { anyhow::bail!("the blob store URL {url} names no bucket") };
        anyhow::ensure!(
            url.query().is_none() && url.fragment().is_none() && url.username().is_empty(),
            "the blob store URL {url} has parts an s3://bucket/prefix URL does not; credentials go in AWS_* variables"
        );
        let prefix = url.path().trim_matches('/').to_owned();
        Ok(Self { bucket: bucket.to_owned(), prefix })
    }
}

/// Object-store failures as I/O errors, which is what the rest of the blob code speaks: a
/// missing object is `NotFound`, and everything else keeps its message.
fn to_io(error: object_store::Error) -> io::Error {
    match error {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, error),
        error => io::Error::other(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> anyhow::Result<S3Location> {
        S3Location::parse(&Url::parse(url).unwrap())
    }

    #[test]
    fn an_s3_url_names_a_bucket_and_a_prefix() {
        let location = parse("s3://grid-blobs/project/one/").unwrap();
        assert_eq!(location, S3Location { bucket: "grid-blobs".into(), prefix: "project/one".into() });
        assert_eq!(parse("s3://grid-blobs").unwrap().prefix, "");
    }

    #[test]
    fn other_urls_are_refused_with_a_reason() {
        assert!(parse("https://grid-blobs/x").unwrap_err().to_string().contains("s3://bucket/prefix"));
        assert!(parse("s3:///prefix").unwrap_err().to_string().contains("no bucket"));
        assert!(parse("s3://key:secret@bucket/x").unwrap_err().to_string().contains("AWS_"));
        assert!(parse("s3://bucket/x?region=eu").is_err());
    }
}
