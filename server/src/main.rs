//! `wasmgrid-server`: the project server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use wasmgrid_server::ServerConfig;
use wasmgrid_server::admin::{self, bans::Target};
use wasmgrid_server::config::{AdaptiveReplication, ConnectionSettings, RegistrationLimits};
use wasmgrid_server::database::{Database, DatabaseLocation, Schema};
use wasmgrid_server::http::tls::{Tls, TlsFiles};
use wasmgrid_server::http::visitor::{PublicUrl, SiteConfig, parse_network};
use wasmgrid_server::publishers;

#[derive(Parser)]
#[command(name = "wasmgrid-server", version, about = "The wasmgrid project server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to standard error: text for people, or JSON, one object
    /// per line, for a log collector.
    #[arg(long, global = true, value_enum, default_value = "text", env = "WASMGRID_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once per run: the size of the serve variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the project. Without DATABASE_URL, starts a private PostgreSQL cluster in the
    /// data directory and stops it on shutdown.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the blobs and the embedded database live.
        #[arg(long, default_value = "./wasmgrid-data")]
        data_dir: PathBuf,
        /// Use this PostgreSQL database instead of the embedded one.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Most database connections this process opens.
        #[arg(long, default_value_t = 32)]
        max_connections: u32,
        /// Scheduler requests whose transactions run at once; more wait for a turn [default:
        /// twice this machine's cores, at most half of --max-connections]. With an external
        /// database, aim for two or three per core of the database machine, summed over
        /// every server process.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max_scheduler_transactions: Option<u32>,
        /// Seconds between background sweeps (missed deadlines, credit).
        #[arg(long, default_value_t = 5)]
        sweep_interval: u64,
        /// Seconds a host that got no work is asked to wait before asking again.
        #[arg(long, default_value_t = 60)]
        idle_retry_after: u64,
        /// Seconds a host that got work is asked to wait before its next request.
        #[arg(long, default_value_t = 1)]
        busy_retry_after: u64,
        /// Replicas per core per day a fully trusted host may take.
        #[arg(long, default_value_t = 1000)]
        daily_quota_per_core: u32,
        /// Replicas per core per day a new host may take; each valid result doubles a
        /// host's quota, up to --daily-quota-per-core.
        #[arg(long, default_value_t = 10)]
        initial_daily_quota_per_core: u32,
        /// Replicas per core a host may hold at once, sent and not yet reported.
        #[arg(long, default_value_t = 50)]
        max_in_progress_per_core: u32,
        /// The most cores the server believes a host has, whatever it reports.
        #[arg(long, default_value_t = 256)]
        max_host_cores: u32,
        /// The most memory, in bytes, the server believes a host has.
        #[arg(long, default_value_t = 1 << 40)]
        max_host_memory: u64,
        /// Seconds a browser host (a tab of /contribute) has to report a replica beyond its
        /// work unit's wall-clock limit. A closed tab abandons its work, so its replicas go
        /// to someone else this soon rather than after the work unit's own deadline.
        #[arg(long, default_value_t = 600)]
        browser_grace: u64,
        /// A private grid, whose volunteers are one organisation in one network (a lab, a
        /// cluster): a work unit's replicas may go to hosts of one network, and accounts
        /// without validated results may make a quorum by themselves. Leave it off for a
        /// public project, where accounts and addresses cost nothing to make.
        #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
        private_grid: bool,
        /// Adaptive replication (for apps created with it): checked valid results in a row,
        /// for an app version, after which a host may be handed work units alone (never, on a
        /// version where it was once found invalid).
        #[arg(long, default_value_t = AdaptiveReplication::default().trusted_after)]
        trusted_after: u32,
        /// Adaptive replication: the least chance that a trusted host's work unit is
        /// replicated anyway, to check it (above 0, at most 1).
        #[arg(long, default_value_t = AdaptiveReplication::default().min_check_probability,
              value_parser = parse_probability)]
        min_check_probability: f64,
        /// Adaptive replication: once a host is caught returning a wrong result, the results
        /// it had accepted on trust this far back (30d, 12h) are sent out again and corrected.
        #[arg(long, default_value = "30d", value_parser = wasmgrid_protocol::units::parse_duration)]
        lookback: Duration,
        /// Outputs up to this many bytes may travel inside scheduler reports instead of being
        /// uploaded first, one request fewer per replica (0: every output is uploaded; at most
        /// 512 KiB, as a request and its base64 must stay under 1 MiB).
        #[arg(long, default_value_t = wasmgrid_server::blobs::inline::DEFAULT_INLINE_OUTPUT_LIMIT,
              value_parser = clap::value_parser!(u64).range(..=512 * 1024))]
        inline_output_limit: u64,
        /// Accept only modules signed by their publisher's key (`wasmgrid key register`).
        /// Volunteers' clients learn it when they attach, and then refuse unsigned modules.
        #[arg(long)]
        require_signatures: bool,
        /// Accounts one address may create (over the API or by signing up) per 15 minutes.
        #[arg(long, default_value_t = 5)]
        accounts_per_address: i64,
        /// Hosts one address may register per 15 minutes.
        #[arg(long, default_value_t = 20)]
        hosts_per_address: i64,
        /// Seconds a request's headers have to arrive, counted from the connection's start
        /// or the end of the previous response (so also how long a kept-alive connection
        /// may sit idle).
        #[arg(long, default_value_t = 10)]
        header_timeout: u64,
        /// HTTP connections held at once [default: as many as the open-file limit leaves
        /// room for]. Over the cap, the connection waiting longest for its request makes
        /// room.
        #[arg(long)]
        max_http_connections: Option<usize>,
        /// HTTP connections held at once from one address (trusted proxies excepted).
        #[arg(long, default_value_t = 256)]
        max_connections_per_address: usize,
        /// The URL volunteers and browsers reach the site at, such as
        /// https://grid.example.org: the attach command names it, and forms are accepted
        /// only from it. Without it, each request's Host header is believed.
        #[arg(long, env = "WASMGRID_PUBLIC_URL")]
        public_url: Option<PublicUrl>,
        /// A reverse proxy (address or network, repeatable) whose X-Forwarded-For and
        /// X-Forwarded-Proto are believed; from anyone else they are ignored.
        #[arg(long = "trusted-proxy", env = "WASMGRID_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_network)]
        trusted_proxies: Vec<IpNet>,
        /// Serve Prometheus metrics at /metrics on this address (keep it private: it is not
        /// the public site, and has no authentication).
        #[arg(long, env = "WASMGRID_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Serve HTTPS with this certificate chain, without a reverse proxy: a PEM file with
        /// the server's certificate first, then the intermediates up to its root. SIGHUP
        /// reads it and the key again (a renewed certificate). Needs --tls-key.
        #[arg(long, env = "WASMGRID_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert: a PEM file, PKCS#8, RSA or EC.
        #[arg(long, env = "WASMGRID_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Do not migrate the database: refuse to start unless it has every migration this
        /// binary has (for rolling upgrades, where `migrate` runs once, first).
        #[arg(long)]
        no_migrate: bool,
        /// Keep blobs (modules, inputs, outputs) in an S3-compatible object store,
        /// s3://bucket/prefix, instead of the data directory: what several server machines
        /// need. The endpoint and credentials come from the standard AWS_ENDPOINT_URL,
        /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (and AWS_ALLOW_HTTP=true for
        /// an endpoint without TLS).
        #[arg(long, env = "WASMGRID_BLOB_STORE")]
        blob_store: Option<url::Url>,
        /// Answer blob downloads with a presigned URL of the object store, valid this long
        /// (15m if no time is given), so that the bytes bypass the server. Browser volunteers
        /// then fetch from the store: its bucket must allow this site's origin (CORS).
        #[arg(long, env = "WASMGRID_BLOB_REDIRECT", num_args = 0..=1, default_missing_value = "15m",
              value_parser = wasmgrid_protocol::units::parse_duration)]
        blob_redirect: Option<Duration>,
        /// How long a batch's inputs and outputs are kept after it ends (its publisher may
        /// delete it sooner); outputs found invalid go an hour after.
        #[arg(long, env = "WASMGRID_RETENTION", default_value = "30d",
              value_parser = wasmgrid_protocol::units::parse_duration)]
        retention: Duration,
    },
    /// Apply the database migrations this binary has, then exit: the first step of an
    /// upgrade whose servers start with `serve --no-migrate`.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Manage API tokens. Like every command below, works on the data directory (or
    /// DATABASE_URL) of a running server without stopping it.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Ban or unban a volunteer's host.
    Host {
        #[command(subcommand)]
        command: BanCommand,
    },
    /// Ban or unban a volunteer's account, with every host of it.
    Account {
        #[command(subcommand)]
        command: BanCommand,
    },
    /// The queue by state, the active hosts, the validation rate and the oldest unsent work.
    Status {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where an administrative command finds the server's database.
#[derive(Args)]
struct DatabaseArgs {
    /// The server's data directory (for its embedded database).
    #[arg(long, default_value = "./wasmgrid-data")]
    data_dir: PathBuf,
    /// Use this PostgreSQL database instead of the embedded one.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

impl DatabaseArgs {
    async fn open(&self) -> anyhow::Result<Database> {
        let location = match &self.database_url {
            Some(url) => DatabaseLocation::Url(url.clone()),
            None => DatabaseLocation::Embedded,
        };
        Database::open_for_admin(&location, &self.data_dir).await
    }
}

#[derive(Subcommand)]
enum BanCommand {
    /// Refuse it work and reports from now on; what it holds and its results not yet
    /// validated go to other hosts, and its results accepted on trust are rechecked.
    Ban {
        /// Its id (the statistics pages and `status` name hosts and accounts by id).
        id: i64,
        /// Why, as the volunteer's client will be told.
        #[arg(long, default_value = "")]
        reason: String,
        /// Also withdraw every credit it was granted (recorded in the credit ledger).
        #[arg(long)]
        revoke_credit: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Lift a ban. Credit withdrawn during it stays withdrawn.
    Unban {
        id: i64,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it (only a hash is kept). `--scope publish` lets its holder
    /// publish apps and submit batches.
    Create {
        /// What the token may do.
        #[arg(long, value_enum)]
        scope: TokenScope,
        /// The publisher the token belongs to: created if new, given another token if not.
        /// A new publisher with a generated name by default.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        database: DatabaseArgs,
        /// Print the token and its publisher as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List publisher tokens (never the tokens themselves: only their hashes are kept).
    List {
        /// Only this publisher's.
        #[arg(long)]
        publisher: Option<String>,
        #[command(flatten)]
        database: DatabaseArgs,
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (see `token list`): it is refused from now on.
    Revoke {
        id: i64,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TokenScope {
    /// Publish apps, submit batches and collect their results.
    Publish,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        // Each line carries the spans it was written in: a request's id among them.
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
        LogFormat::Text => logs.init(),
    }
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the async runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wasmgrid-server: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            data_dir,
            database_url,
            max_connections,
            max_scheduler_transactions,
            sweep_interval,
            idle_retry_after,
            busy_retry_after,
            daily_quota_per_core,
            initial_daily_quota_per_core,
            max_in_progress_per_core,
            max_host_cores,
            max_host_memory,
            browser_grace,
            private_grid,
            trusted_after,
            min_check_probability,
            lookback,
            require_signatures,
            inline_output_limit,
            accounts_per_address,
            hosts_per_address,
            header_timeout,
            max_http_connections,
            max_connections_per_address,
            public_url,
            trusted_proxies,
            no_migrate,
            metrics_listen,
            tls_cert,
            tls_key,
            blob_store,
            blob_redirect,
            retention,
        } => {
            let database = match database_url {
                Some(url) => DatabaseLocation::Url(url),
                None => DatabaseLocation::Embedded,
            };
            let mut config = ServerConfig::new(listen, data_dir, database);
            config.max_database_connections = max_connections;
            config.max_scheduler_transactions = max_scheduler_transactions;
            config.sweep_interval = Duration::from_secs(sweep_interval.max(1));
            config.scheduler.idle_retry_after = Duration::from_secs(idle_retry_after);
            config.scheduler.busy_retry_after = Duration::from_secs(busy_retry_after);
            config.scheduler.daily_quota_per_core = daily_quota_per_core;
            config.scheduler.initial_daily_quota_per_core = initial_daily_quota_per_core;
            config.scheduler.max_in_progress_per_core = max_in_progress_per_core;
            config.scheduler.max_host_cores = max_host_cores;
            config.scheduler.max_host_memory_bytes = max_host_memory;
            config.scheduler.browser_grace = Duration::from_secs(browser_grace);
            config.scheduler.private_grid = private_grid;
            config.scheduler.adaptive = AdaptiveReplication { trusted_after, min_check_probability, lookback };
            config.scheduler.require_signatures = require_signatures;
            config.scheduler.inline_output_limit = inline_output_limit;
            config.registration = RegistrationLimits { accounts_per_address, hosts_per_address };
            config.connections = ConnectionSettings {
                header_timeout: Duration::from_secs(header_timeout.max(1)),
                max_connections: max_http_connections,
                max_per_address: max_connections_per_address.max(1),
            };
            config.site = SiteConfig { public_url, trusted_proxies };
            config.schema = if no_migrate { Schema::Check } else { Schema::Migrate };
            config.metrics_listen = metrics_listen;
            // Read before the database starts, so that a wrong file is named at once.
            if let (Some(certificate), Some(key)) = (tls_cert, tls_key) {
                config.tls = Some(Tls::load(TlsFiles { certificate, key })?);
            }
            let scheme = if config.tls.is_some() { "https" } else { "http" };
            config.blobs = wasmgrid_server::config::BlobSettings {
                store: blob_store,
                redirect: blob_redirect,
                s3_settings: Vec::new(),
                retention,
            };
            let app = wasmgrid_server::build(config).await?;
            // Before the line below: whoever reads it may send SIGTERM at once, and a signal
            // that arrives before its handler is installed kills the process outright.
            let shutdown = shutdown_signal()?;
            // Scripts and tests read this line to learn the port (useful with port 0).
            println!("wasmgrid-server listening on {scheme}://{}", app.local_addr());
            if let Some(metrics) = app.metrics_addr() {
                tracing::info!("metrics at http://{metrics}/metrics");
            }
            app.run_until_stopped(shutdown).await
        }
        Command::Migrate { database } => {
            let database = database.open().await?;
            let applied = wasmgrid_server::database::MIGRATOR.iter().filter(|m| !m.migration_type.is_down_migration());
            let latest = applied.map(|migration| migration.version).max().unwrap_or_default();
            database.close().await?;
            eprintln!("the database has every migration of this server, up to {latest}");
            Ok(())
        }
        Command::Token { command: TokenCommand::Create { scope: TokenScope::Publish, name, database, json } } => {
            let database = database.open().await?;
            let created = async {
                let mut connection = database.pool.acquire().await?;
                publishers::create_token(&mut connection, name.as_deref()).await
            }
            .await;
            database.close().await?;
            let created = created?;
            if json {
                let document = serde_json::json!({
                    "token": created.token,
                    "scope": "publish",
                    "publisher": { "id": created.publisher.id, "name": created.publisher.name },
                    "publisher_created": created.publisher_created,
                });
                println!("{document}");
            } else {
                let publisher = &created.publisher.name;
                if created.publisher_created {
                    eprintln!("created publisher {publisher:?}; this token lets its holder publish as {publisher:?}:");
                } else {
                    eprintln!("a new token for the existing publisher {publisher:?}:");
                }
                println!("{}", created.token);
                eprintln!("keep it secret; it is shown only once. Use it with: export WASMGRID_TOKEN=<token>");
            }
            Ok(())
        }
        Command::Token { command: TokenCommand::List { publisher, database, json } } => {
            let tokens = with_database(&database, async |connection| {
                admin::tokens::list(connection, publisher.as_deref()).await.map_err(Into::into)
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
                return Ok(());
            }
            println!("{:>6}  {:<24}  {:<20}  revoked", "id", "publisher", "created");
            for token in tokens {
                let revoked = token.revoked_at.map_or("-".to_owned(), |at| at.format("%Y-%m-%d %H:%M").to_string());
                let created = token.created_at.format("%Y-%m-%d %H:%M");
                println!("{:>6}  {:<24}  {created:<20}  {revoked}", token.id, token.publisher);
            }
            Ok(())
        }
        Command::Token { command: TokenCommand::Revoke { id, database } } => {
            let revoked = with_database(&database, async |connection| {
                admin::tokens::revoke(connection, id).await.map_err(Into::into)
            })
            .await?;
            match revoked {
                Some(token) => {
                    eprintln!("token {id} of publisher {:?} is revoked; requests with it are refused", token.publisher);
                    Ok(())
                }
                None => anyhow::bail!("there is no publisher token {id} (see `wasmgrid-server token list`)"),
            }
        }
        Command::Host { command } => ban_command(command, Target::Host).await,
        Command::Account { command } => ban_command(command, Target::Account).await,
        Command::Status { database, json } => {
            let summary = with_database(&database, async |connection| {
                admin::status::summary(connection).await.map_err(Into::into)
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{summary}");
            }
            Ok(())
        }
    }
}

/// Runs `work` on one connection to the database `database` names, then closes it (and
/// stops the embedded cluster if this command started it), whether `work` succeeded or not.
async fn with_database<T>(
    database: &DatabaseArgs,
    work: impl AsyncFnOnce(&mut sqlx::PgConnection) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let database = database.open().await?;
    let result = async {
        let mut connection = database.pool.acquire().await?;
        work(&mut connection).await
    }
    .await;
    database.close().await?;
    result
}

async fn ban_command(command: BanCommand, target: fn(i64) -> Target) -> anyhow::Result<()> {
    match command {
        BanCommand::Ban { id, reason, revoke_credit, database } => {
            let summary = with_database(&database, async |connection| {
                admin::bans::ban(connection, target(id), &reason, revoke_credit).await.map_err(Into::into)
            })
            .await?;
            let what = match target(id) {
                Target::Host(_) => format!("host {id}"),
                Target::Account(_) => format!("account {id} ({} hosts)", summary.hosts.len()),
            };
            eprintln!("{what} is banned: its requests are refused from now on");
            eprintln!(
                "{} replicas it holds or results not yet validated go to other hosts at the server's next sweep",
                summary.replicas_to_take_back
            );
            if revoke_credit {
                eprintln!(
                    "{} credit grants withdrawn (the totals drop at the next sweep)",
                    summary.credit_grants_withdrawn
                );
            }
            if summary.rechecking_results_on_trust {
                eprintln!("its recent results accepted on trust are sent out again to be rechecked");
            }
            Ok(())
        }
        BanCommand::Unban { id, database } => {
            let was_banned = with_database(&database, async |connection| {
                admin::bans::unban(connection, target(id)).await.map_err(Into::into)
            })
            .await?;
            let what = match target(id) {
                Target::Host(_) => "host",
                Target::Account(_) => "account",
            };
            if was_banned {
                eprintln!("{what} {id} may work again");
            } else {
                eprintln!("{what} {id} was not banned");
            }
            Ok(())
        }
    }
}

/// Parses a chance: a number above 0 and at most 1.
fn parse_probability(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if value > 0.0 && value <= 1.0 => Ok(value),
        _ => Err(format!("{text:?} is not a chance above 0 and at most 1, such as 0.05")),
    }
}

/// Completes on SIGTERM or Ctrl-C. The handlers are installed when this is called, not when
/// the future is first polled.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batchs_files_are_kept_thirty_days_unless_the_operator_says_otherwise() {
        let retention_of = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Serve { retention, .. } => retention,
            _ => unreachable!("the command is serve"),
        };
        let thirty_days = Duration::from_secs(30 * 24 * 3600);
        assert_eq!(retention_of(&["wasmgrid-server", "serve"]), thirty_days);
        assert_eq!(wasmgrid_server::blobs::retention::DEFAULT_RETENTION, thirty_days);
        assert_eq!(retention_of(&["wasmgrid-server", "serve", "--retention", "7d"]), thirty_days / 30 * 7);
    }
}
