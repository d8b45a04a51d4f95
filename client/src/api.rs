//! A typed client for the server's JSON API. Every error the server sends comes back as
//! [`ApiError::Server`] with its status and JSON body, so callers can tell a rejected
//! request (4xx: do not retry as is) from an unavailable server (5xx, network: retry later).

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
pub use reqwest::Method;
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{
    CreateAccountRequest, CreateAccountResponse, ErrorBody, OutputUploaded, RegisterHostRequest, RegisterHostResponse,
    SchedulerReply, SchedulerRequest, blob_path, output_upload_path,
};
use wasmgrid_protocol::signing::ProjectKeys;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server answered with an error status.
    #[error("the server answered {status}: {}", .body.as_ref().map_or("(no JSON body)", |b| b.error.message.as_str()))]
    Server { status: StatusCode, body: Option<ErrorBody>, retry_after: Option<Duration> },
    /// The server could not be reached, or the connection broke.
    #[error("cannot reach the server: {0}")]
    Transport(#[from] reqwest::Error),
}

impl ApiError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Server { status, .. } => Some(*status),
            Self::Transport(_) => None,
        }
    }

    /// The server's machine-readable error code, if it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Server { body: Some(body), .. } => Some(&body.error.code),
            _ => None,
        }
    }

    /// The server read the request and refused what it says (malformed, conflicting or too
    /// large), as opposed to refusing the client (a bad key) or failing: sending the same
    /// thing again cannot help, but sending less of it may.
    pub fn refuses_the_content(&self) -> bool {
        matches!(
            self.status(),
            Some(
                StatusCode::BAD_REQUEST
                    | StatusCode::CONFLICT
                    | StatusCode::PAYLOAD_TOO_LARGE
                    | StatusCode::UNPROCESSABLE_ENTITY
            )
        )
    }

    /// Worth retrying later, unchanged: the server is unreachable, overloaded or failing.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Server { status, .. } => status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A connection to one project server.
#[derive(Clone)]
pub struct ServerClient {
    http: reqwest::Client,
    base_url: String,
}

impl ServerClient {
    /// `base_url` is the server's root, such as `https://grid.example.org`.
    pub fn new(base_url: &str) -> ApiResult<Self> {
        Self::with_local_address(base_url, None)
    }

    /// A connection whose requests leave from `local_address`, when given: the server
    /// sees the network it is in (and hands no two replicas of a work unit to one network).
    pub fn with_local_address(base_url: &str, local_address: Option<IpAddr>) -> ApiResult<Self> {
        let http = reqwest::Client::builder()
            .local_address(local_address)
            .user_agent(concat!("wasmgrid/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(600))
            // Servers close kept-alive connections that sit idle (wasmgrid's after its
            // header timeout, 10 s by default); reusing one just as it closes fails the
            // request, so idle connections are given up first.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self { http, base_url: base_url.trim_end_matches('/').to_owned() })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub async fn create_account(&self, name: &str) -> ApiResult<CreateAccountResponse> {
        self.json(Method::POST, "/api/v1/accounts", None, &CreateAccountRequest { name: name.into() }).await
    }

    pub async fn register_host(
        &self,
        account_key: &str,
        host: &RegisterHostRequest,
    ) -> ApiResult<RegisterHostResponse> {
        self.json(Method::POST, "/api/v1/hosts", Some(account_key), host).await
    }

    /// Reports finished replicas and asks for new ones.
    pub async fn scheduler(&self, host_token: &str, request: &SchedulerRequest) -> ApiResult<SchedulerReply> {
        self.json(Method::POST, "/api/v1/scheduler", Some(host_token), request).await
    }

    /// Uploads a replica's output; the server checks its hash and size.
    pub async fn upload_output(&self, host_token: &str, replica_id: i64, output: Bytes) -> ApiResult<OutputUploaded> {
        let hash = Sha256Hash::of(&output);
        self.upload_output_as(host_token, replica_id, hash, output).await
    }

    /// Uploads bytes under a claimed hash (which the server verifies).
    pub async fn upload_output_as(
        &self,
        host_token: &str,
        replica_id: i64,
        claimed: Sha256Hash,
        output: Bytes,
    ) -> ApiResult<OutputUploaded> {
        let request =
            self.http.put(self.url(&output_upload_path(replica_id, &claimed))).bearer_auth(host_token).body(output);
        decode(request.send().await?).await
    }

    /// Every publisher's signing keys, and whether the project requires signatures.
    pub async fn project_keys(&self) -> ApiResult<ProjectKeys> {
        decode(self.http.get(self.url("/api/v1/keys")).send().await?).await
    }

    /// Tells the server that this host may be sent the app versions it refused again (its
    /// volunteer trusted new keys).
    pub async fn clear_refusals(&self, host_token: &str) -> ApiResult<()> {
        let request = self.http.delete(self.url("/api/v1/hosts/me/refusals")).bearer_auth(host_token);
        check(request.send().await?).await.map(drop)
    }

    /// Downloads a whole blob. The caller verifies its hash before trusting it.
    pub async fn download_blob(&self, hash: &Sha256Hash) -> ApiResult<Bytes> {
        let response = self.http.get(self.url(&blob_path(hash))).send().await?;
        let response = check(response).await?;
        Ok(response.bytes().await?)
    }

    /// A raw request, for callers that need headers (ranges, caching).
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: &B,
    ) -> ApiResult<T> {
        let mut request = self.http.request(method, self.url(path)).json(body);
        if let Some(secret) = bearer {
            request = request.bearer_auth(secret);
        }
        decode(request.send().await?).await
    }
}

pub(crate) async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> ApiResult<T> {
    Ok(check(response).await?.json().await?)
}

/// Turns an error status into [`ApiError::Server`], keeping the JSON body and Retry-After.
pub(crate) async fn check(response: reqwest::Response) -> ApiResult<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.json::<ErrorBody>().await.ok();
    Err(ApiError::Server { status, body, retry_after })
}
