//! The scientist's commands, `wasmgrid app ...` and `wasmgrid batch ...`: arguments, and
//! what each prints. Every command that prints a result takes `--json` and then prints one
//! JSON document on standard output instead of text.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use serde::Serialize;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::RunLimits;
use wasmgrid_protocol::publish::{BatchState, BatchStatus, CreateAppRequest, SubmitPolicy, ValidatorSpec};
use wasmgrid_protocol::signing::sign_module;

use super::client::PublisherClient;
use super::jobs::{self, Job};
use super::progress::{ProgressBar, render};
use super::{results, submit, units};
use crate::api::{ConnectOptions, ServerClient};
use crate::failover::ServerUrls;
use crate::projects::{check_transport, normalize_url};

/// Where to publish, and as whom.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The project server's URL [env: WASMGRID_SERVER].
    #[arg(long, global = true, env = "WASMGRID_SERVER")]
    server: Option<String>,
    /// A publisher token from `wasmgrid-server token create --scope publish` [env: WASMGRID_TOKEN].
    #[arg(long, global = true, env = "WASMGRID_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Allow plain http to a server that is not on this machine (the token travels in clear).
    #[arg(long, global = true)]
    allow_insecure: bool,
    /// Trust this certificate authority (a PEM file) besides the system's, for a server
    /// with a private one [env: WASMGRID_CA_CERT].
    #[arg(long, global = true, env = "WASMGRID_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
}

impl Connection {
    pub(crate) fn client(&self) -> anyhow::Result<PublisherClient> {
        let server = self.server.as_deref().context("no server: pass --server URL or set WASMGRID_SERVER")?;
        let token = self.token.as_deref().context("no publisher token: pass --token or set WASMGRID_TOKEN")?;
        let url = normalize_url(server);
        check_transport(&url, self.allow_insecure)?;
        let options = ConnectOptions::new(None, self.ca_cert.as_deref())?;
        Ok(PublisherClient::new(ServerClient::connect(ServerUrls::single(url), &options)?, token.trim()))
    }
}

#[derive(Subcommand, Debug)]
pub enum AppCommand {
    /// Create an app: a name that module versions and batches are published under.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// How outputs are compared: `bitwise`, or `wasm:FILE` for a validator module.
        #[arg(long, default_value = "bitwise")]
        validator: String,
        /// Whether a work unit's replicas go to hosts in different networks (/24, /48), so
        /// that one person's accounts cannot agree among themselves. Turn it off only when
        /// the app's volunteers share a network.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        distinct_networks: bool,
        /// Give work units alone to hosts with a long run of checked valid results for the
        /// app's version, checked at random; a host caught cheating has its results accepted
        /// on trust checked again. For work units with a quorum of 2 or more.
        #[arg(long)]
        adaptive_replication: bool,
        #[arg(long)]
        json: bool,
    },
    /// Upload a new version of an app's module; work units submitted afterwards use it.
    Publish {
        name: String,
        module: PathBuf,
        /// Sign the module with this key (`wasmgrid key generate`); needed once you have
        /// registered a key, or when the project runs signed modules only.
        #[arg(long)]
        signing_key: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// List your apps.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BatchCommand {
    /// Submit a batch: one work unit per input file, or per line of a jobs file.
    Submit(SubmitArgs),
    /// Show a batch's progress and failures.
    Status {
        id: i64,
        /// Redraw a progress bar until the batch is done.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Download the validated outputs into OUT/<work unit name>/; run again to resume.
    Results {
        id: i64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a batch: unsent work is dropped, running work is aborted.
    Cancel {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// List your batches, newest first.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[arg(long)]
    app: String,
    /// A folder: one work unit per file, the file as its standard input.
    #[arg(long, conflicts_with = "jobs", required_unless_present = "jobs")]
    inputs: Option<PathBuf>,
    /// A jobs file: one JSON object per line (name, args, stdin, files).
    #[arg(long)]
    jobs: Option<PathBuf>,
    /// A name for the batch.
    #[arg(long, default_value = "")]
    name: String,
    /// Show the batch's name on the project's public status page (otherwise it is shown as
    /// "batch N" there).
    #[arg(long)]
    public_name: bool,
    /// Agreeing results needed for a work unit to be validated.
    #[arg(long, default_value_t = 2)]
    quorum: u32,
    /// Replicas sent at first [default: the quorum].
    #[arg(long)]
    replicas: Option<u32>,
    /// Failed replicas at which a work unit fails.
    #[arg(long, default_value_t = 3)]
    max_errors: u32,
    /// Replicas of all outcomes a work unit may ever have [default: twice the replicas plus --max-errors].
    #[arg(long)]
    max_total: Option<u32>,
    /// Time a volunteer has to return a replica (such as 7d, 12h, 90m).
    #[arg(long, default_value = "7d", value_parser = units::parse_duration)]
    deadline: Duration,
    /// Fuel (Wasm instructions) one run may burn.
    #[arg(long, default_value_t = 1_000_000_000_000)]
    fuel: u64,
    /// Linear memory one run may use (such as 256MiB).
    #[arg(long, default_value = "256MiB", value_parser = units::parse_bytes)]
    memory: u64,
    /// Wall-clock time one run may take.
    #[arg(long, default_value = "1h", value_parser = units::parse_duration)]
    timeout: Duration,
    /// Standard output plus output files one run may produce.
    #[arg(long, default_value = "64MiB", value_parser = units::parse_bytes)]
    output_limit: u64,
    /// Finish an interrupted submission of this batch.
    #[arg(long)]
    resume: Option<i64>,
    #[arg(long)]
    json: bool,
}

impl SubmitArgs {
    fn policy(&self) -> anyhow::Result<SubmitPolicy> {
        let replicas = self.replicas.unwrap_or(self.quorum);
        let policy = SubmitPolicy {
            quorum: self.quorum,
            replicas,
            max_errors: self.max_errors,
            max_total: self.max_total.unwrap_or(2 * replicas + self.max_errors),
            deadline_seconds: self.deadline.as_secs(),
            limits: RunLimits {
                fuel: self.fuel,
                memory_bytes: self.memory,
                output_bytes: self.output_limit,
                wall_time_seconds: self.timeout.as_secs().max(1),
            },
        };
        if policy.quorum == 0 {
            bail!("--quorum must be at least 1");
        }
        if policy.replicas < policy.quorum {
            bail!("--replicas must be at least --quorum");
        }
        Ok(policy)
    }
}

/// Prints `value` as JSON, or `text` for people.
pub(crate) fn print(json: bool, value: &impl Serialize, text: impl FnOnce() -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", text());
    }
    Ok(())
}

pub async fn app(connection: &Connection, command: AppCommand) -> anyhow::Result<()> {
    let client = connection.client()?;
    match command {
        AppCommand::Create { name, description, validator, distinct_networks, adaptive_replication, json } => {
            let validator = match validator.as_str() {
                "bitwise" => ValidatorSpec::Bitwise,
                other => {
                    let Some(path) = other.strip_prefix("wasm:") else {
                        bail!("--validator is `bitwise` or `wasm:FILE`, not {other:?}");
                    };
                    let bytes = std::fs::read(path).with_context(|| format!("cannot read the validator {path}"))?;
                    let hash = Sha256Hash::of(&bytes);
                    if !client.missing_files(vec![hash]).await?.is_empty() {
                        client.put_file(hash, std::path::Path::new(path)).await?;
                    }
                    ValidatorSpec::Wasm { module_sha256: hash }
                }
            };
            let app = client
                .create_app(&CreateAppRequest { name, description, validator, distinct_networks, adaptive_replication })
                .await?;
            print(json, &app, || format!("created app {} (id {})\n", app.name, app.id))
        }
        AppCommand::Publish { name, module, signing_key, json } => {
            let bytes = std::fs::read(&module).with_context(|| format!("cannot read {}", module.display()))?;
            // The server refuses it too, but may close the connection before the upload
            // ends, and then the client sees a broken pipe instead of the reason.
            let limit = wasmgrid_protocol::publish::MAX_MODULE_BYTES;
            if bytes.len() as u64 > limit {
                bail!("{} is larger than the limit of {limit} bytes for a module", module.display());
            }
            let signature = signing_key
                .map(|path| super::keys::load(&path))
                .transpose()?
                .map(|key| sign_module(&key, &Sha256Hash::of(&bytes)));
            let version = client.publish_version(&name, Bytes::from(bytes), signature.as_ref()).await?;
            #[derive(Serialize)]
            struct Published<'a> {
                app: &'a str,
                #[serde(flatten)]
                version: &'a wasmgrid_protocol::publish::AppVersionInfo,
            }
            print(json, &Published { app: &name, version: &version }, || {
                format!(
                    "published {name} version {} ({} bytes, sha256 {})\n",
                    version.version, version.module_bytes, version.module_sha256
                )
            })
        }
        AppCommand::List { json } => {
            let apps = client.apps().await?;
            print(json, &apps, || {
                let mut text = String::new();
                for app in &apps {
                    let version =
                        app.latest_version.as_ref().map_or("no version".into(), |v| format!("v{}", v.version));
                    let validator = match app.validator {
                        ValidatorSpec::Bitwise => "bitwise",
                        ValidatorSpec::Wasm { .. } => "wasm validator",
                    };
                    let replication = if app.adaptive_replication { "adaptive" } else { "fixed" };
                    text.push_str(&format!(
                        "{}\t{version}\t{validator}\t{replication}\t{}\n",
                        app.name, app.description
                    ));
                }
                text
            })
        }
    }
}

pub async fn batch(connection: &Connection, command: BatchCommand) -> anyhow::Result<()> {
    let client = connection.client()?;
    match command {
        BatchCommand::Submit(args) => {
            let policy = args.policy()?;
            let jobs: Vec<Job> = match (&args.inputs, &args.jobs) {
                (Some(dir), _) => jobs::from_inputs_dir(dir)?,
                (None, Some(file)) => jobs::from_jobs_file(file)?,
                (None, None) => bail!("pass --inputs DIR or --jobs FILE"),
            };
            let submission = submit::Submission {
                app: &args.app,
                name: &args.name,
                public_name: args.public_name,
                jobs: &jobs,
                policy,
                resume: args.resume,
            };
            let submitted = submit::submit(&client, submission).await?;
            print(args.json, &submitted, || {
                format!(
                    "batch {}: {} work units submitted ({} new), {} input files ({} uploaded)\n",
                    submitted.batch_id,
                    submitted.work_units,
                    submitted.created,
                    submitted.files,
                    submitted.files_uploaded
                )
            })
        }
        BatchCommand::Status { id, watch, json } => {
            let status = if watch { watch_until_done(&client, id).await? } else { client.batch_status(id).await? };
            print(json, &status, || describe(&status))
        }
        BatchCommand::Results { id, out, json } => {
            let collected = results::collect(&client, id, &out).await?;
            print(json, &collected, || {
                let mut text = format!(
                    "{} validated outputs in {} ({} downloaded now)\n",
                    collected.validated,
                    collected.out.display(),
                    collected.downloaded
                );
                if collected.unfinished > 0 {
                    text.push_str(&format!("{} work units are not finished yet\n", collected.unfinished));
                }
                if collected.on_trust > 0 {
                    text.push_str(&format!(
                        "{} of the outputs rest on one trusted host's word, unchecked\n",
                        collected.on_trust
                    ));
                }
                for name in &collected.changed {
                    text.push_str(&format!("changed after it was first given (its host was caught): {name}\n"));
                }
                for failure in &collected.failed {
                    text.push_str(&format!("failed: {}: {}\n", failure.name, failure.reason));
                }
                for error in &collected.errors {
                    text.push_str(&format!("not downloaded: {}: {}\n", error.name, error.reason));
                }
                text
            })?;
            if !collected.errors.is_empty() {
                bail!(
                    "{} outputs could not be downloaded; run the command again to retry them",
                    collected.errors.len()
                );
            }
            Ok(())
        }
        BatchCommand::Cancel { id, json } => {
            let status = client.cancel_batch(id).await?;
            print(json, &status, || describe(&status))
        }
        BatchCommand::List { json } => {
            let batches = client.batches().await?;
            print(json, &batches, || {
                batches
                    .iter()
                    .map(|b| {
                        format!("{}\t{}\t{}\t{:?}\t{:.0}%\n", b.id, b.app, b.name, b.state, b.fraction_done * 100.0)
                    })
                    .collect()
            })
        }
    }
}

/// How often `--watch` asks the server.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

async fn watch_until_done(client: &PublisherClient, id: i64) -> anyhow::Result<BatchStatus> {
    loop {
        let status = client.batch_status(id).await?;
        let total = status.work_units.total();
        let finished = status.work_units.validated + status.work_units.failed;
        let mut note = format!(
            "validated {}, failed {}, running {}",
            status.work_units.validated, status.work_units.failed, status.replicas.in_progress
        );
        if status.state == BatchState::Open {
            note.push_str(&format!(" (still open: finish the submission with --resume {id})"));
        }
        let mut bar = ProgressBar::new(format!("batch {id}"), total);
        bar.set(finished, &note);
        if matches!(status.state, BatchState::Done | BatchState::Cancelled) {
            bar.finish();
            return Ok(status);
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

fn describe(status: &BatchStatus) -> String {
    let counts = &status.work_units;
    let mut text = format!(
        "batch {} ({}{}): {:?}\n{}\n",
        status.id,
        status.app,
        if status.name.is_empty() { String::new() } else { format!(", {}", status.name) },
        status.state,
        render("  work units", counts.validated + counts.failed, counts.total(), ""),
    );
    text.push_str(&format!(
        "  validated {}, failed {}, active {}; replicas: unsent {}, running {}, finished {}\n",
        counts.validated,
        counts.failed,
        counts.active,
        status.replicas.unsent,
        status.replicas.in_progress,
        status.replicas.over
    ));
    let checks = &status.checks;
    if checks.on_trust + checks.rechecking + checks.confirmed + checks.corrected > 0 {
        text.push_str(&format!(
            "  checked by a quorum {}, accepted on trust {} (being rechecked {}, confirmed {}, corrected {})\n",
            checks.checked,
            checks.on_trust + checks.rechecking + checks.confirmed + checks.corrected,
            checks.rechecking,
            checks.confirmed,
            checks.corrected,
        ));
    }
    for failure in &status.failures {
        text.push_str(&format!("  failed: {}: {}\n", failure.name, failure.reason));
    }
    if (status.failures.len() as u64) < counts.failed {
        text.push_str(&format!("  ... and {} more failures\n", counts.failed - status.failures.len() as u64));
    }
    if status.validator_failures > 0 {
        text.push_str(&format!("  the validator module failed {} times; latest:\n", status.validator_failures));
        for failure in &status.recent_validator_failures {
            text.push_str(&format!("    {}: {}\n", failure.name, failure.reason));
        }
    }
    text
}
