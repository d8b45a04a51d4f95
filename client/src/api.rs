//! A typed client for the server's JSON API. Every error the server sends comes back as
//! [`ApiError::Server`] with its status and JSON body, so callers can tell a rejected
//! request (4xx: do not retry as is) from an unavailable server (5xx, network: retry later).
//! A project with several URLs is one client: requests fail over between them (see
//! [`crate::failover`]).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
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

use crate::failover::ServerUrls;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server answered with an error status.
    #[error("the server answered {status}: {}", .body.as_ref().map_or("(no JSON body)", |b| b.error.message.as_str()))]
    Server { status: StatusCode, body: Option<ErrorBody>, retry_after: Option<Duration> },
    /// The server could not be reached, or the connection broke.
    #[error("cannot reach the server: {0}")]
    Transport(#[source] reqwest::Error),
    /// The server's certificate is not one this client trusts.
    #[error(
        "the certificate of {server} is not trusted ({reason}); if the project has a certificate authority \
         of its own, give its certificate with --ca-cert FILE (or ca_cert in client.toml)"
    )]
    UntrustedCertificate { server: String, reason: String },
}

impl From<reqwest::Error> for ApiError {
    fn from(error: reqwest::Error) -> Self {
        match crate::certificates::untrusted_certificate(&error) {
            Some(reason) => {
                let server = error.url().map_or_else(String::new, |url| url.origin().ascii_serialization());
                Self::UntrustedCertificate { server, reason }
            }
            None => Self::Transport(error),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Server { status, .. } => Some(*status),
            Self::Transport(_) | Self::UntrustedCertificate { .. } => None,
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
    /// A certificate refused counts too: its owner may fix it, or the volunteer add its
    /// authority, and a finished result must wait for that rather than be dropped.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport(_) | Self::UntrustedCertificate { .. } => true,
            Self::Server { status, .. } => status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// How this client connects, beyond what the system decides.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// The local address requests leave from: the server sees the network it is in (and
    /// hands no two replicas of a work unit to one network).
    pub local_address: Option<IpAddr>,
    /// Certificate authorities trusted besides the system's (see [`crate::certificates`]).
    pub extra_roots: Vec<reqwest::Certificate>,
}

impl ConnectOptions {
    /// Options leaving from `local_address`, trusting the certificate authorities in the
    /// PEM file `ca_cert` too (an error naming the file if it is unusable).
    pub fn new(local_address: Option<IpAddr>, ca_cert: Option<&Path>) -> anyhow::Result<Self> {
        let extra_roots = match ca_cert {
            Some(path) => crate::certificates::load_ca_file(path)?,
            None => Vec::new(),
        };
        Ok(Self { local_address, extra_roots })
    }
}

/// A connection to one project's server, at one URL or several.
#[derive(Clone)]
pub struct ServerClient {
    http: reqwest::Client,
    urls: Arc<ServerUrls>,
}

impl ServerClient {
    /// `base_url` is the server's root, such as `https://grid.example.org`.
    pub fn new(base_url: &str) -> ApiResult<Self> {
        Self::with_local_address(base_url, None)
    }

    /// A connection whose requests leave from `local_address`, when given.
    pub fn with_local_address(base_url: &str, local_address: Option<IpAddr>) -> ApiResult<Self> {
        let options = ConnectOptions { local_address, ..ConnectOptions::default() };
        Self::connect(ServerUrls::single(normalized(base_url)), &options)
    }

    /// A connection to the project at `urls`, failing over between them.
    pub fn connect(urls: ServerUrls, options: &ConnectOptions) -> ApiResult<Self> {
        let mut builder = reqwest::Client::builder()
            .local_address(options.local_address)
            .user_agent(concat!("wasmgrid/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(600))
            // Servers close kept-alive connections that sit idle (wasmgrid's after its
            // header timeout, 10 s by default); reusing one just as it closes fails the
            // request, so idle connections are given up first.
            .pool_idle_timeout(Duration::from_secs(5));
        // Added to the system's roots, which stay in force.
        for root in &options.extra_roots {
            builder = builder.add_root_certificate(root.clone());
        }
        Ok(Self { http: builder.build()?, urls: Arc::new(urls) })
    }

    /// The URL requests go to now.
    pub fn base_url(&self) -> &str {
        self.urls.in_use()
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
        let path = output_upload_path(replica_id, &claimed);
        let response = self
            .send(|base| self.http.put(format!("{base}{path}")).bearer_auth(host_token).body(output.clone()))
            .await?;
        decode(response).await
    }

    /// Every publisher's signing keys, and whether the project requires signatures.
    pub async fn project_keys(&self) -> ApiResult<ProjectKeys> {
        decode(self.send(|base| self.http.get(format!("{base}/api/v1/keys"))).await?).await
    }

    /// Tells the server that this host may be sent the app versions it refused again (its
    /// volunteer trusted new keys).
    pub async fn clear_refusals(&self, host_token: &str) -> ApiResult<()> {
        let response = self
            .send(|base| self.http.delete(format!("{base}/api/v1/hosts/me/refusals")).bearer_auth(host_token))
            .await?;
        check(response).await.map(drop)
    }

    /// Downloads a whole blob. The caller verifies its hash before trusting it.
    pub async fn download_blob(&self, hash: &Sha256Hash) -> ApiResult<Bytes> {
        let response = check(self.get(&blob_path(hash)).await?).await?;
        Ok(response.bytes().await?)
    }

    /// `GET path`, at whichever of the project's URLs answers; any status.
    pub async fn get(&self, path: &str) -> ApiResult<reqwest::Response> {
        self.send(|base| self.http.get(format!("{base}{path}"))).await
    }

    /// A raw request to the URL in use, for callers that need headers (ranges, caching);
    /// it does not fail over.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base_url()))
    }

    /// Sends the request `build` makes for a base URL: to the URL in use, and on to the
    /// project's next URLs while the server cannot be reached or answers with a 5xx (see
    /// [`crate::failover`]). The last URL's answer or error is returned as it is.
    async fn send(&self, build: impl Fn(&str) -> reqwest::RequestBuilder) -> ApiResult<reqwest::Response> {
        let attempts = self.urls.attempts();
        let last = attempts.len() - 1;
        for (attempt, (index, base)) in attempts.enumerate() {
            let result = build(base).send().await;
            let failed = match &result {
                Ok(response) => response.status().is_server_error(),
                Err(_) => true,
            };
            if failed {
                self.urls.failed(index);
            }
            if !failed || attempt == last {
                return Ok(result?);
            }
            let failure = match result {
                Ok(response) => format!("it answered {}", response.status()),
                Err(error) => ApiError::from(error).to_string(),
            };
            tracing::warn!(server = base, error = %failure, "trying the project's next URL");
        }
        unreachable!("a project has at least one URL")
    }

    async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: &B,
    ) -> ApiResult<T> {
        let response = self
            .send(|base| {
                let request = self.http.request(method.clone(), format!("{base}{path}")).json(body);
                match bearer {
                    Some(secret) => request.bearer_auth(secret),
                    None => request,
                }
            })
            .await?;
        decode(response).await
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

fn normalized(base_url: &str) -> String {
    base_url.trim_end_matches('/').to_owned()
}
