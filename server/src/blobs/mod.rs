//! Content-addressed files (modules, inputs, outputs): the storage interface, downloads
//! by hash, verified output uploads, and the sweep of outputs nobody reported.
//!
//! Incoming bytes are spooled and hashed in a staging file and only become a blob once
//! their size and hash are checked: a rejected upload leaves nothing behind. A blob's row
//! is written (and locked) in the transaction that stores its bytes, and the sweep deletes
//! bytes only while it holds that lock, so a committed row always names bytes that exist.
//!
//! Published blobs (modules, inputs) are served to anyone with their hash; an uploaded
//! output only once a replica reported it (see [`unreported`]).

pub mod counted;
pub(crate) mod download;
pub mod inline;
pub mod retention;
pub mod s3;
mod store;
pub mod test_s3;
pub mod unreported;
pub(crate) mod upload;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, put};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sqlx::PgConnection;
use tokio::io::AsyncWriteExt;
use wasmgrid_protocol::hash::Sha256Hasher;
use wasmgrid_protocol::{API_PREFIX, Sha256Hash};

pub use store::{BlobReader, BlobStore, DirectoryStore, Space};

use crate::http::AppState;
use crate::http::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{API_PREFIX}/blobs/{{sha256}}"), get(download::get_blob))
        .route(&format!("{API_PREFIX}/replicas/{{replica_id}}/output/{{sha256}}"), put(upload::put_output))
}

/// Uploads up to this size are checked in memory; larger ones are spooled to a staging file.
/// Most outputs are small, and most uploads of them store nothing new (a retry, or an output
/// that another replica already sent), so they should not cost a file.
const IN_MEMORY_BYTES: usize = 1 << 20;

/// Bytes that arrived and were hashed, but are not stored yet.
pub struct Spooled {
    pub hash: Sha256Hash,
    pub bytes: u64,
    pub content: SpooledContent,
}

pub enum SpooledContent {
    Memory(Bytes),
    File(tempfile::TempPath),
}

/// Reads `body`, hashing it, and refuses it as soon as it exceeds `limit` bytes; past
/// [`IN_MEMORY_BYTES`] it continues into a staging file.
pub async fn spool(store: &dyn BlobStore, body: Body, limit: u64) -> Result<Spooled, ApiError> {
    let mut hasher = Sha256Hasher::new();
    let mut bytes = 0u64;
    let mut memory = BytesMut::new();
    let mut file: Option<(tokio::fs::File, tempfile::TempPath)> = None;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| ApiError::bad_request(format!("the upload was interrupted: {error}")))?;
        bytes += chunk.len() as u64;
        if bytes > limit {
            return Err(ApiError::PayloadTooLarge(format!("the upload exceeds its limit of {limit} bytes")));
        }
        hasher.update(&chunk);
        if file.is_none() && memory.len() + chunk.len() <= IN_MEMORY_BYTES {
            memory.extend_from_slice(&chunk);
            continue;
        }
        let (staging, _) = match &mut file {
            Some(open) => open,
            None => {
                let (staging, path) =
                    tempfile::NamedTempFile::new_in(store.staging_dir()).map_err(storage_error)?.into_parts();
                let mut staging = tokio::fs::File::from_std(staging);
                staging.write_all(&memory).await.map_err(storage_error)?;
                memory = BytesMut::new();
                file.insert((staging, path))
            }
        };
        staging.write_all(&chunk).await.map_err(storage_error)?;
    }
    let content = match file {
        Some((mut staging, path)) => {
            staging.flush().await.map_err(storage_error)?;
            SpooledContent::File(path)
        }
        None => SpooledContent::Memory(memory.freeze()),
    };
    Ok(Spooled { hash: hasher.finish(), bytes, content })
}

/// A failure to store bytes: a full disk (or quota) is the server's, and temporary, so the
/// client is asked to come back later; anything else is an internal error.
fn storage_error(error: std::io::Error) -> ApiError {
    if is_out_of_space(&error) {
        tracing::warn!(%error, "the blob store is full; refusing uploads until there is room");
        ApiError::InsufficientStorage
    } else {
        ApiError::Internal(error.into())
    }
}

/// Whether `error` says the disk (or the user's quota) is full.
pub fn is_out_of_space(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
        || matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Stores spooled bytes as a published blob and records it (in a transaction of its own,
/// or a savepoint of the caller's).
///
/// Bytes that retention deleted come back: the row is no longer marked deleted, and the
/// store puts the bytes back.
pub async fn store_spooled(
    connection: &mut PgConnection,
    store: &dyn BlobStore,
    spooled: Spooled,
) -> Result<Sha256Hash, ApiError> {
    let Spooled { hash, bytes, content } = spooled;
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    // The row first: its lock keeps the sweep of unreported outputs from deleting these
    // bytes (if they were an output) between the store's "already there" and the commit.
    sqlx::query(
        "insert into blob (sha256, bytes, origin, held_until)
         values ($1, $2, 'published', now() + make_interval(secs => $3))
         on conflict (sha256) do update set origin = 'published', deleted_at = null, held_until = excluded.held_until",
    )
    .bind(hash.to_hex())
    .bind(bytes as i64)
    // Stored for work units to come: retention keeps it for them a while, and brings back
    // bytes it had deleted (put back just below).
    .bind(retention::PROMISED_FOR.as_secs_f64())
    .execute(&mut *transaction)
    .await?;
    put_content(store, hash, content).await?;
    transaction.commit().await?;
    Ok(hash)
}

/// Hands spooled bytes to the store (which keeps what it has already).
pub async fn put_content(store: &dyn BlobStore, hash: Sha256Hash, content: SpooledContent) -> Result<(), ApiError> {
    match content {
        SpooledContent::Memory(bytes) => store.put_bytes(hash, bytes).await.map_err(storage_error),
        SpooledContent::File(path) => store.put_file(hash, path).await.map_err(storage_error),
    }
}

/// Stores `bytes` as a blob (for small things: modules and inputs from publishers, tests).
pub async fn store_bytes(
    connection: &mut PgConnection,
    store: &dyn BlobStore,
    bytes: &[u8],
) -> Result<Sha256Hash, ApiError> {
    let spooled = spool(store, Body::from(bytes.to_vec()), u64::MAX).await?;
    store_spooled(connection, store, spooled).await
}

/// Whether a blob is served to anyone who asks for it by hash: published, or an output that
/// a replica reported, and not deleted by retention.
pub async fn is_public(connection: &mut PgConnection, hash: Sha256Hash) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select exists (select 1 from blob b where b.sha256 = $1 and b.deleted_at is null
                        and (b.origin = 'published'
                             or exists (select 1 from replica r where r.output_sha256 = $1)))",
    )
    .bind(hash.to_hex())
    .fetch_one(connection)
    .await
}

/// A whole blob in memory (modules, validator inputs); `None` if it is not stored. Refuses
/// blobs larger than `limit`.
pub async fn read_all(store: &dyn BlobStore, hash: Sha256Hash, limit: u64) -> anyhow::Result<Option<Vec<u8>>> {
    use tokio::io::AsyncReadExt;
    let Some(reader) = store.read(hash, 0, None).await? else { return Ok(None) };
    if reader.total_bytes > limit {
        anyhow::bail!("blob {hash} holds {} bytes, more than the {limit} expected", reader.total_bytes);
    }
    let mut bytes = Vec::with_capacity(reader.total_bytes as usize);
    reader.body.take(limit + 1).read_to_end(&mut bytes).await?;
    if Sha256Hash::of(&bytes) != hash {
        anyhow::bail!("blob {hash} is damaged: its bytes no longer match their hash");
    }
    Ok(Some(bytes))
}
