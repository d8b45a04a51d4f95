//! The publishing API, typed: one method per route of `wasmgrid_protocol::publish`, each
//! authenticated with the publisher's token.

use bytes::Bytes;
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wasmgrid_protocol::publish::{
    AddWorkUnitsRequest, AppInfo, AppVersionInfo, BatchCreated, BatchStatus, CreateAppRequest, CreateBatchRequest,
    FileStored, MissingFilesRequest, MissingFilesResponse, ResultsPage, WorkUnitsAdded,
};
use wasmgrid_protocol::signing::{MODULE_SIGNATURE_HEADER, PublisherKeys, RegisterKeyRequest, Signature};
use wasmgrid_protocol::{API_PREFIX, Sha256Hash};

use crate::api::{ApiResult, ServerClient, check, decode};

#[derive(Clone)]
pub struct PublisherClient {
    server: ServerClient,
    token: String,
}

impl PublisherClient {
    pub fn new(server: ServerClient, token: impl Into<String>) -> Self {
        Self { server, token: token.into() }
    }

    pub fn server(&self) -> &ServerClient {
        &self.server
    }

    pub async fn create_app(&self, request: &CreateAppRequest) -> ApiResult<AppInfo> {
        self.json(Method::POST, "/apps", Some(request)).await
    }

    pub async fn apps(&self) -> ApiResult<Vec<AppInfo>> {
        self.json::<(), _>(Method::GET, "/apps", None).await
    }

    /// Publishes a module, with the publisher's signature of it when it signs its modules.
    pub async fn publish_version(
        &self,
        app: &str,
        module: Bytes,
        signature: Option<&Signature>,
    ) -> ApiResult<AppVersionInfo> {
        let mut request = self.request(Method::POST, &format!("/apps/{app}/versions")).body(module);
        if let Some(signature) = signature {
            request = request.header(MODULE_SIGNATURE_HEADER, signature.to_string());
        }
        decode(request.send().await?).await
    }

    /// This publisher's name and keys.
    pub async fn own_keys(&self) -> ApiResult<PublisherKeys> {
        self.json::<(), _>(Method::GET, "/publisher/key", None).await
    }

    pub async fn register_key(&self, request: &RegisterKeyRequest) -> ApiResult<PublisherKeys> {
        self.json(Method::PUT, "/publisher/key", Some(request)).await
    }

    /// Which of these blobs the server lacks.
    pub async fn missing_files(&self, hashes: Vec<Sha256Hash>) -> ApiResult<Vec<Sha256Hash>> {
        let response: MissingFilesResponse =
            self.json(Method::POST, "/files/missing", Some(&MissingFilesRequest { sha256: hashes })).await?;
        Ok(response.missing)
    }

    /// Uploads a file's bytes, streamed from disk; the server checks them against `hash`.
    pub async fn put_file(&self, hash: Sha256Hash, path: &std::path::Path) -> anyhow::Result<FileStored> {
        let file = tokio::fs::File::open(path).await?;
        let length = file.metadata().await?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let request = self
            .request(Method::PUT, &format!("/files/{hash}"))
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(body);
        Ok(decode(request.send().await?).await?)
    }

    pub async fn create_batch(&self, request: &CreateBatchRequest) -> ApiResult<BatchCreated> {
        self.json(Method::POST, "/batches", Some(request)).await
    }

    pub async fn add_work_units(&self, batch_id: i64, request: &AddWorkUnitsRequest) -> ApiResult<WorkUnitsAdded> {
        self.json(Method::POST, &format!("/batches/{batch_id}/work-units"), Some(request)).await
    }

    pub async fn close_batch(&self, batch_id: i64) -> ApiResult<BatchStatus> {
        self.json::<(), _>(Method::POST, &format!("/batches/{batch_id}/close"), None).await
    }

    pub async fn batches(&self) -> ApiResult<Vec<BatchStatus>> {
        self.json::<(), _>(Method::GET, "/batches", None).await
    }

    pub async fn batch_status(&self, batch_id: i64) -> ApiResult<BatchStatus> {
        self.json::<(), _>(Method::GET, &format!("/batches/{batch_id}"), None).await
    }

    pub async fn results(&self, batch_id: i64, after: Option<&str>) -> ApiResult<ResultsPage> {
        let mut request = self.request(Method::GET, &format!("/batches/{batch_id}/results"));
        if let Some(after) = after {
            request = request.query(&[("after", after)]);
        }
        decode(request.send().await?).await
    }

    pub async fn cancel_batch(&self, batch_id: i64) -> ApiResult<BatchStatus> {
        self.json::<(), _>(Method::POST, &format!("/batches/{batch_id}/cancel"), None).await
    }

    /// Downloads a blob (a canonical output) into `destination`, streaming.
    pub async fn download_to(&self, hash: &Sha256Hash, destination: &std::path::Path) -> anyhow::Result<()> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let response = self.server.request(Method::GET, &wasmgrid_protocol::api::blob_path(hash)).send().await?;
        let mut stream = check(response).await?.bytes_stream();
        let mut file = tokio::fs::File::create(destination).await?;
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk?).await?;
        }
        file.flush().await?;
        Ok(())
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.server.request(method, &format!("{API_PREFIX}{path}")).bearer_auth(&self.token)
    }

    async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> ApiResult<T> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        decode(request.send().await?).await
    }
}
