//! `TestApp`: a real server on port 0 with a fresh database of its own, the real client
//! library talking to it, and helpers to publish work and to act as volunteers.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use reqwest::redirect::Policy;
use sqlx::PgPool;
use tokio::sync::oneshot;
use wasmgrid_client::api::{ApiResult, ServerClient};
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{
    Assignment, RegisterHostRequest, ReplicaReport, ReportedOutcome, SchedulerReply, SchedulerRequest,
};
use wasmgrid_protocol::publish::ValidatorSpec;
use wasmgrid_server::ServerConfig;
use wasmgrid_server::config::RegistrationLimits;
use wasmgrid_server::database::{DatabaseLocation, test_cluster};
use wasmgrid_server::publishers;
use wasmgrid_server::publishing::{self, AppReplication, ReplicationPolicy, WorkUnitSpec};

pub const FUEL: u64 = 2_000_000_000;
pub const HOST_MEMORY: u64 = 8 << 30;

pub struct TestApp {
    pub client: ServerClient,
    pub pool: PgPool,
    pub database_url: String,
    pub data_dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    rules: wasmgrid_server::work_unit::Rules,
    retention: Duration,
    /// The server's blob store.
    pub blobs: std::sync::Arc<dyn wasmgrid_server::blobs::BlobStore>,
    /// Where its metrics are scraped, when `metrics_listen` was set.
    pub metrics_url: Option<String>,
    metrics: std::sync::Arc<wasmgrid_server::metrics::Metrics>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A server with adjusted settings, on a fresh database.
    pub async fn spawn_with(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let database_url = test_cluster::fresh_database_url().await;
        Self::spawn_on(database_url, adjust).await
    }

    /// A server on an existing database (for several servers sharing one).
    pub async fn spawn_on(database_url: String, adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        init_logging();
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut config = ServerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            data_dir.path().to_path_buf(),
            DatabaseLocation::Url(database_url.clone()),
        );
        config.max_database_connections = 10;
        // Tests drain sweeps explicitly with `sweep()`.
        config.sweep_interval = Duration::from_secs(3600);
        // Every volunteer of a test registers from this machine, and most tests are about
        // established hosts; the tests of these limits set their own.
        config.registration = RegistrationLimits { accounts_per_address: 100_000, hosts_per_address: 100_000 };
        config.scheduler.initial_daily_quota_per_core = config.scheduler.daily_quota_per_core;
        // Every test volunteer connects from one address too; the tests of quorums across
        // networks turn this off and bind their volunteers to addresses of their own.
        config.scheduler.private_grid = true;
        adjust(&mut config);
        let rules = wasmgrid_server::work_unit::Rules::from(&config.scheduler);
        let retention = config.blobs.retention;
        let app = wasmgrid_server::build(config).await.expect("server starts");
        let address = format!("http://{}", app.local_addr());
        let pool = app.state().pool.clone();
        let blobs = app.state().blobs.clone();
        let metrics_url = app.metrics_addr().map(|address| format!("http://{address}/metrics"));
        let metrics = app.state().metrics.clone();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Self {
            client: ServerClient::new(&address).unwrap(),
            pool,
            database_url,
            data_dir,
            shutdown: Some(shutdown),
            server: Some(server),
            rules,
            retention,
            blobs,
            metrics_url,
            metrics,
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server stops cleanly");
        }
    }

    /// Runs the background sweeps (deadlines, credit) until they have nothing left to do.
    pub async fn sweep(&self) {
        let sweeper = wasmgrid_server::sweeps::Sweeper {
            pool: self.pool.clone(),
            blobs: self.blobs.clone(),
            rules: self.rules,
            retention: self.retention,
            metrics: self.metrics.clone(),
        };
        sweeper.run_once().await.expect("sweeps run");
    }

    /// A new account with one host.
    pub async fn volunteer(&self, name: &str) -> Volunteer {
        self.volunteer_with_memory(name, HOST_MEMORY).await
    }

    pub async fn volunteer_with_memory(&self, name: &str, memory_bytes: u64) -> Volunteer {
        let account = self.client.create_account(name).await.expect("account created");
        self.host_for(&self.client, &account.account_key, name, memory_bytes).await
    }

    /// A new account with one host, all of whose requests come from `address` (on this
    /// machine, any address in 127.0.0.0/8): to the server, a volunteer in that network.
    pub async fn volunteer_at(&self, name: &str, address: std::net::IpAddr) -> Volunteer {
        let client = ServerClient::with_local_address(self.client.base_url(), Some(address)).unwrap();
        let account = client.create_account(name).await.expect("account created");
        self.host_for(&client, &account.account_key, name, HOST_MEMORY).await
    }

    /// Another host on the same account as `volunteer`.
    pub async fn another_host(&self, volunteer: &Volunteer) -> Volunteer {
        self.host_for(&volunteer.client, &volunteer.account_key, "second host", HOST_MEMORY).await
    }

    async fn host_for(&self, client: &ServerClient, account_key: &str, name: &str, memory_bytes: u64) -> Volunteer {
        let host = client
            .register_host(
                account_key,
                &RegisterHostRequest {
                    name: name.into(),
                    os: "linux".into(),
                    arch: "x86_64".into(),
                    cores: 4,
                    memory_bytes,
                    client_version: "test".into(),
                },
            )
            .await
            .expect("host registered");
        Volunteer {
            client: client.clone(),
            account_key: account_key.to_owned(),
            account_id: host.account_id,
            host_id: host.host_id,
            token: host.host_token,
        }
    }

    /// Publishes an app and one batch of `count` work units with `policy`; returns their ids.
    pub async fn publish(&self, count: usize, policy: ReplicationPolicy) -> Vec<i64> {
        self.publish_specs(
            (0..count).map(|i| WorkUnitSpec { policy, ..WorkUnitSpec::new(format!("wu-{i}")) }).collect(),
        )
        .await
    }

    pub async fn publish_specs(&self, specs: Vec<WorkUnitSpec>) -> Vec<i64> {
        self.publish_app(specs, AppReplication::default()).await.work_units
    }

    /// Publishes an app replicated as `replication`, its first version, and a batch of
    /// `specs`.
    pub async fn publish_app(&self, specs: Vec<WorkUnitSpec>, replication: AppReplication) -> Published {
        let mut transaction = self.pool.begin().await.unwrap();
        let app_name = format!("app-{}", rand_suffix());
        let publisher = publishers::ensure(&mut transaction, "tests").await.unwrap();
        let app_id =
            publishing::create_app(&mut transaction, publisher, &app_name, "", &ValidatorSpec::Bitwise).await.unwrap();
        publishing::set_replication(&mut transaction, app_id, replication).await.unwrap();
        transaction.commit().await.unwrap();
        self.publish_module(app_id, b"\0asm\x01\0\0\0", specs).await
    }

    /// Publishes a new version of app `app_id` (a module of its own) and a batch of `specs`
    /// that run it.
    pub async fn publish_version(&self, app_id: i64, specs: Vec<WorkUnitSpec>) -> Published {
        // An empty module, with a custom section that tells the versions apart.
        let mut module = b"\0asm\x01\0\0\0\0\x09\x08".to_vec();
        module.extend_from_slice(format!("{:08}", rand_suffix()).as_bytes());
        self.publish_module(app_id, &module, specs).await
    }

    async fn publish_module(&self, app_id: i64, module: &[u8], specs: Vec<WorkUnitSpec>) -> Published {
        let mut transaction = self.pool.begin().await.unwrap();
        let module = wasmgrid_server::blobs::store_bytes(&mut transaction, self.blobs.as_ref(), module).await.unwrap();
        publishing::add_app_version(&mut transaction, app_id, module).await.unwrap();
        let batch_id = publishing::create_batch(&mut transaction, app_id, "batch", &specs).await.unwrap();
        transaction.commit().await.unwrap();
        let work_units = sqlx::query_scalar("select id from work_unit where batch_id = $1 order by id")
            .bind(batch_id)
            .fetch_all(&self.pool)
            .await
            .unwrap();
        Published { app_id, batch_id, work_units }
    }

    pub async fn work_unit(&self, id: i64) -> WorkUnitView {
        sqlx::query_as(
            "select state::text as state, failure_reason, canonical_replica_id, credit from work_unit where id = $1",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    pub async fn replicas(&self, work_unit_id: i64) -> Vec<ReplicaView> {
        sqlx::query_as(
            "select id, state::text as state, outcome::text as outcome, validate_state::text as validate_state,
                    credit
             from replica where work_unit_id = $1 order by id",
        )
        .bind(work_unit_id)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    pub async fn host(&self, host_id: i64) -> HostView {
        sqlx::query_as(
            "select total_credit, expavg_credit, daily_quota, consecutive_valid, error_count, invalid_count, valid_count
             from host where id = $1",
        )
        .bind(host_id)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    pub async fn account_credit(&self, account_id: i64) -> f64 {
        sqlx::query_scalar("select total_credit from account where id = $1")
            .bind(account_id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Moves a replica's deadline into the past, as if its time had run out.
    pub async fn expire(&self, replica_id: i64) {
        sqlx::query("update replica set deadline_at = now() - interval '1 second' where id = $1")
            .bind(replica_id)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// A publisher token for a new publisher called `name`.
    pub async fn publisher_token(&self, name: &str) -> String {
        let mut connection = self.pool.acquire().await.unwrap();
        publishers::create_token(&mut connection, Some(name)).await.unwrap().token
    }

    /// A team named `name` with the accounts `members` in it; returns its id.
    pub async fn team(&self, name: &str, members: &[i64]) -> i64 {
        let team_id = sqlx::query_scalar("insert into team (name) values ($1) returning id")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        sqlx::query("update account set team_id = $1 where id = any($2)")
            .bind(team_id)
            .bind(members)
            .execute(&self.pool)
            .await
            .unwrap();
        team_id
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Server warnings and errors appear in a failing test's output (`RUST_LOG` overrides).
fn init_logging() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One volunteer host, acting through the real client library.
#[derive(Clone)]
pub struct Volunteer {
    pub client: ServerClient,
    pub account_key: String,
    pub account_id: i64,
    pub host_id: i64,
    pub token: String,
}

impl Volunteer {
    pub async fn request(&self, reports: Vec<ReplicaReport>, want: u32) -> ApiResult<SchedulerReply> {
        self.client
            .scheduler(&self.token, &SchedulerRequest { reports, want_replicas: want, ..SchedulerRequest::default() })
            .await
    }

    pub async fn fetch(&self, want: u32) -> Vec<Assignment> {
        self.request(Vec::new(), want).await.expect("scheduler request").assignments
    }

    /// Uploads `output` and reports success.
    pub async fn succeed(&self, replica_id: i64, output: &[u8]) -> SchedulerReply {
        self.upload(replica_id, output).await.expect("upload");
        self.request(vec![success(replica_id, output)], 0).await.expect("report")
    }

    pub async fn upload(&self, replica_id: i64, output: &[u8]) -> ApiResult<()> {
        self.client.upload_output(&self.token, replica_id, Bytes::copy_from_slice(output)).await.map(|_| ())
    }

    pub async fn fail(&self, replica_id: i64, reason: &str) -> SchedulerReply {
        self.request(vec![failure(replica_id, reason)], 0).await.expect("report")
    }
}

pub fn success(replica_id: i64, output: &[u8]) -> ReplicaReport {
    ReplicaReport {
        replica_id,
        outcome: ReportedOutcome::Success { output_hash: Sha256Hash::of(output), output_bytes: output.len() as u64 },
        fuel_used: FUEL,
        run_time_ms: 10,
        exit_status: Some(0),
        stderr: String::new(),
        instrumentation_version: wasmgrid_sandbox::INSTRUMENTATION_VERSION,
        output: None,
    }
}

pub fn failure(replica_id: i64, reason: &str) -> ReplicaReport {
    ReplicaReport {
        replica_id,
        outcome: ReportedOutcome::Error { reason: reason.into() },
        fuel_used: 1000,
        run_time_ms: 10,
        exit_status: Some(1),
        stderr: "trap".into(),
        instrumentation_version: wasmgrid_sandbox::INSTRUMENTATION_VERSION,
        output: None,
    }
}

/// An app's batch, as published by [`TestApp::publish_app`].
pub struct Published {
    pub app_id: i64,
    pub batch_id: i64,
    pub work_units: Vec<i64>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct WorkUnitView {
    pub state: String,
    pub failure_reason: Option<String>,
    pub canonical_replica_id: Option<i64>,
    pub credit: Option<f64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReplicaView {
    pub id: i64,
    pub state: String,
    pub outcome: Option<String>,
    pub validate_state: String,
    pub credit: Option<f64>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct HostView {
    pub total_credit: f64,
    pub expavg_credit: f64,
    pub daily_quota: i32,
    pub consecutive_valid: i32,
    pub error_count: i64,
    pub invalid_count: i64,
    pub valid_count: i64,
}

/// A policy with the given quorum and target, and room for retries.
pub fn policy(min_quorum: u32, target_replicas: u32) -> ReplicationPolicy {
    ReplicationPolicy { min_quorum, target_replicas, ..ReplicationPolicy::default() }
}

/// A browser without JavaScript: keeps cookies, sends forms, follows no redirects on its own.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    pub cookies: HashMap<String, String>,
    /// Headers every request carries (a proxy's `X-Forwarded-Proto`, say).
    pub extra: Vec<(&'static str, String)>,
}

pub struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    /// The value of the form's hidden CSRF field.
    pub fn csrf(&self) -> String {
        let start = self.body.find(r#"name="csrf" value=""#).expect("a form with a CSRF field") + 19;
        self.body[start..].split('"').next().unwrap().to_owned()
    }

    pub fn location(&self) -> &str {
        self.headers.get("location").map_or("", |value| value.to_str().unwrap())
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all("set-cookie").iter().map(|value| value.to_str().unwrap().to_owned()).collect()
    }
}

impl Browser {
    pub fn new(app: &TestApp) -> Self {
        let http = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();
        Self { http, base: app.client.base_url().to_owned(), cookies: HashMap::new(), extra: Vec::new() }
    }

    /// A browser behind the trusted proxy, which says it forwards for `forwarded_for`.
    pub fn forwarded_for(app: &TestApp, forwarded_for: &str) -> Self {
        let mut browser = Self::new(app);
        browser.extra.push(("x-forwarded-for", forwarded_for.to_owned()));
        browser
    }

    /// The HTTP client, to build requests of other kinds for [`Self::send`].
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The server's URL, which paths are appended to.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let cookie: Vec<String> = self.cookies.iter().map(|(name, value)| format!("{name}={value}")).collect();
        let mut request = request.header("cookie", cookie.join("; "));
        for (name, value) in &self.extra {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        for set in headers.get_all("set-cookie") {
            let (pair, _) = set.to_str().unwrap().split_once(';').unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        Page { status, headers, body: response.text().await.unwrap() }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let request = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(request).await
    }

    /// Signs up `name` with `password`; returns the page shown afterwards.
    pub async fn sign_up(&mut self, name: &str, email: &str, password: &str) -> Page {
        let csrf = self.get("/signup").await.csrf();
        self.post("/signup", &[("csrf", &csrf), ("name", name), ("email", email), ("password", password)]).await
    }

    pub async fn log_in(&mut self, login: &str, password: &str) -> Page {
        let csrf = self.get("/login").await.csrf();
        self.post("/login", &[("csrf", &csrf), ("login", login), ("password", password)]).await
    }
}

/// Polls `condition` every 20 ms for up to ten seconds.
pub async fn wait_until<F: std::future::Future<Output = bool>>(condition: impl Fn() -> F) {
    for _ in 0..500 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the condition did not hold within ten seconds");
}
