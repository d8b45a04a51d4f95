//! Content-addressed files (modules, inputs, outputs): the storage interface, downloads
//! by hash, and verified output uploads.
//!
//! A blob's bytes are stored before its `blob` row is written, so a row always names bytes
//! that exist. Incoming bytes are spooled and hashed in a staging file and only become a
//! blob once their size and hash are checked: a rejected upload leaves nothing behind.

mod download;
mod store;
mod upload;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, put};
use futures::StreamExt;
use sqlx::PgConnection;
use tokio::io::AsyncWriteExt;
use wasmgrid_protocol::hash::Sha256Hasher;
use wasmgrid_protocol::{API_PREFIX, Sha256Hash};

pub use store::{BlobReader, BlobStore, DirectoryStore};

use crate::http::AppState;
use crate::http::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{API_PREFIX}/blobs/{{sha256}}"), get(download::get_blob))
        .route(&format!("{API_PREFIX}/replicas/{{replica_id}}/output/{{sha256}}"), put(upload::put_output))
}

/// Bytes that arrived, were spooled to staging and hashed, but are not stored yet.
pub struct Spooled {
    pub hash: Sha256Hash,
    pub bytes: u64,
    pub file: tempfile::TempPath,
}

/// Streams `body` into a staging file, hashing it, and refuses it as soon as it exceeds
/// `limit` bytes.
pub async fn spool(store: &dyn BlobStore, body: Body, limit: u64) -> Result<Spooled, ApiError> {
    let (file, path) = tempfile::NamedTempFile::new_in(store.staging_dir())
        .map_err(|error| ApiError::Internal(error.into()))?
        .into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let mut hasher = Sha256Hasher::new();
    let mut bytes = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| ApiError::bad_request(format!("the upload was interrupted: {error}")))?;
        bytes += chunk.len() as u64;
        if bytes > limit {
            return Err(ApiError::PayloadTooLarge(format!("the upload exceeds its limit of {limit} bytes")));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(|error| ApiError::Internal(error.into()))?;
    }
    file.flush().await.map_err(|error| ApiError::Internal(error.into()))?;
    Ok(Spooled { hash: hasher.finish(), bytes, file: path })
}

/// Stores spooled bytes as a blob and records it.
pub async fn store_spooled(
    connection: &mut PgConnection,
    store: &dyn BlobStore,
    spooled: Spooled,
) -> Result<Sha256Hash, ApiError> {
    let Spooled { hash, bytes, file } = spooled;
    store.put_file(hash, file).await.map_err(|error| ApiError::Internal(error.into()))?;
    record_blob(connection, hash, bytes).await?;
    Ok(hash)
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

async fn record_blob(connection: &mut PgConnection, hash: Sha256Hash, bytes: u64) -> sqlx::Result<()> {
    sqlx::query("insert into blob (sha256, bytes) values ($1, $2) on conflict (sha256) do nothing")
        .bind(hash.to_hex())
        .bind(bytes as i64)
        .execute(connection)
        .await?;
    Ok(())
}
