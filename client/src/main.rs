//! `wasmgrid`: the volunteer client, and the publishing commands for scientists.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wasmgrid_client::api::ServerClient;
use wasmgrid_client::control::{self, Reply, Request};
use wasmgrid_client::daemon::{self, Daemon, RunOptions};
use wasmgrid_client::data_dir::DataDir;
use wasmgrid_client::failover::ServerUrls;
use wasmgrid_client::local_run::{self, ExecRequest};
use wasmgrid_client::pinned_keys::{KeyStore, PinnedKeys};
use wasmgrid_client::projects::{self, Project, Projects, check_transport, normalize_url};
use wasmgrid_client::publish::commands::{self, AppCommand, BatchCommand, Connection};
use wasmgrid_client::publish::keys::{self, KeyCommand};
use wasmgrid_client::settings::{Overrides, Settings};
use wasmgrid_client::state::ClientState;
use wasmgrid_client::{host_info, status};
use wasmgrid_protocol::api::RunLimits;

#[derive(Parser)]
#[command(name = "wasmgrid", version, about = "Give your spare CPU time to WebAssembly science projects")]
struct Cli {
    /// The client's data directory [default: $WASMGRID_DATA_DIR, else the platform's data directory].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach this machine to a project (creating an account unless a key is given).
    Attach {
        server_url: String,
        /// Another URL of the same project (another of its servers, on its database), tried
        /// when the one in use cannot be reached or fails; repeatable, tried in order.
        #[arg(long = "mirror", value_name = "URL")]
        mirrors: Vec<String>,
        /// Attach to an existing account.
        #[arg(long, env = "WASMGRID_ACCOUNT_KEY", hide_env_values = true)]
        account_key: Option<String>,
        /// Name of the new account (without --account-key) and of this host.
        #[arg(long)]
        name: Option<String>,
        /// This project's share of the machine, relative to other attached projects.
        #[arg(long, default_value_t = 100.0)]
        resource_share: f64,
        /// Allow plain http to a server that is not on this machine [default: from client.toml].
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        allow_insecure: Option<bool>,
        /// The local address to connect from [default: from client.toml, else the system's choice].
        #[arg(long)]
        bind: Option<std::net::IpAddr>,
        /// Trust this certificate authority (a PEM file) besides the system's, for a project
        /// with a private one [default: ca_cert from client.toml]. Give it to `run` too, or set
        /// ca_cert in client.toml.
        #[arg(long, value_name = "FILE")]
        ca_cert: Option<PathBuf>,
        /// Run only signed modules of this project, even if the project allows unsigned ones
        /// (a server broken into could otherwise hand out a module of a publisher with no key).
        #[arg(long)]
        require_signatures: bool,
    },
    /// Detach from a project, abandoning its tasks (through the daemon, if it runs).
    Detach { server_url: String },
    /// Trust a project's publisher keys as its server lists them now, after a key change
    /// that the old key did not sign (this client refuses their modules until then).
    Trust {
        server_url: String,
        /// Only show what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Suspend computing on the running daemon: tasks pause where they are.
    Suspend {
        /// Resume by itself after this long (90s, 15m, 2h, 1d) [default: until `wasmgrid resume`].
        #[arg(long = "for", value_parser = wasmgrid_client::publish::units::parse_duration)]
        duration: Option<std::time::Duration>,
    },
    /// End a suspension made by `wasmgrid suspend`.
    Resume,
    /// Change a setting of client.toml, at once if the daemon runs (`default` removes it).
    Set {
        /// A key of client.toml, such as cores, max_cpu_percent or compute_hours.
        key: String,
        /// A TOML value: 2, true, "text", ["mon-fri 18:00-08:00"]; else taken as text.
        value: String,
    },
    /// Run the volunteer daemon.
    Run {
        /// Tasks to run at once [default: every core].
        #[arg(long)]
        cores: Option<usize>,
        /// Linear memory all running tasks may use together, in bytes.
        #[arg(long)]
        memory: Option<u64>,
        /// Disk for cached files and task directories, in bytes.
        #[arg(long)]
        disk: Option<u64>,
        /// Exit once no project has work and every result is reported.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        exit_when_idle: Option<bool>,
        /// Allow plain http to servers that are not on this machine.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        allow_insecure: Option<bool>,
        /// The local address that connections to projects leave from (on a machine with several).
        #[arg(long)]
        bind: Option<std::net::IpAddr>,
        /// Trust this certificate authority (a PEM file) besides the system's, for projects
        /// with a private one [default: ca_cert from client.toml].
        #[arg(long, value_name = "FILE")]
        ca_cert: Option<PathBuf>,
        #[command(flatten)]
        preferences: PreferenceFlags,
    },
    /// Show the attached projects and the tasks.
    Status {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// For scientists: run a module here exactly as a volunteer's daemon would.
    ///
    /// The module goes through the server's publishing check first, then runs in the
    /// volunteer's sandbox with a work unit's default limits unless told otherwise. Exits
    /// with status 1 when the run fails or the module would be refused.
    Exec {
        module: PathBuf,
        /// A file whose contents are the module's standard input.
        #[arg(long)]
        stdin: Option<PathBuf>,
        /// The directory the module sees, read-only, as /input.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Fuel (operators executed) the run may use.
        #[arg(long, default_value_t = RunLimits::DEFAULT.fuel)]
        fuel: u64,
        /// Linear memory the run may use (bytes, or 64MiB, 1GiB).
        #[arg(long, default_value = "256MiB", value_parser = wasmgrid_client::publish::units::parse_bytes)]
        memory: u64,
        /// Wall-clock limit (90s, 15m, 1h).
        #[arg(long, default_value = "1h", value_parser = wasmgrid_client::publish::units::parse_duration)]
        timeout: std::time::Duration,
        /// Bytes the scratch directory may hold (a volunteer's daemon gives each task a share of its disk).
        #[arg(long, default_value = "1GiB", value_parser = wasmgrid_client::publish::units::parse_bytes)]
        scratch: u64,
        /// The seed of the module's random numbers (the server draws one per work unit).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The directory for the output: output.tar and, unpacked, output/ [default: a new temporary directory].
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// The module's arguments.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Write a module as the sandbox runs it: deterministic NaNs, fuel and stack depth as code.
    Instrument {
        module: PathBuf,
        #[arg(long, short)]
        output: PathBuf,
        /// `portable` runs in any engine (the fuel limit is the imported global
        /// `wasmgrid::fuel_limit`, the fuel used the exported global `wasmgrid_fuel_used`);
        /// `sandbox` is the form the client runs (the counters in the imported memory
        /// `wasmgrid::meter`).
        #[arg(long, value_enum, default_value_t = InstrumentTarget::Portable)]
        target: InstrumentTarget,
    },
    /// For scientists: create apps and publish their modules.
    App {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: AppCommand,
    },
    /// For scientists: submit batches of work units, follow them, collect their results.
    Batch {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: BatchCommand,
    },
    /// For scientists: the key that signs the modules you publish.
    Key {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: KeyCommand,
    },
}

/// The computing preferences, as flags of `run` (each wins over client.toml).
#[derive(clap::Args)]
struct PreferenceFlags {
    /// Suspend computing while other programs use more than this share of all CPUs, in percent.
    #[arg(long)]
    suspend_when_cpu_above: Option<f64>,
    /// Suspend computing while on battery [default: true].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    suspend_on_battery: Option<bool>,
    /// Stop tasks while less memory than this is free (bytes, or 512MiB, 2GiB).
    #[arg(long, value_parser = wasmgrid_client::publish::units::parse_bytes)]
    suspend_when_memory_below: Option<u64>,
    /// Compute only in this window of local time ("mon-fri 18:00-08:00"); may be repeated.
    #[arg(long)]
    compute_hours: Vec<wasmgrid_client::compute_hours::HoursWindow>,
    /// Let each task use at most this share of a core, in percent.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
    max_cpu_percent: Option<u8>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,wasmtime=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the async runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wasmgrid: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum InstrumentTarget {
    Portable,
    Sandbox,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Publishing needs no data directory; the volunteer's commands do.
    let data_dir = || DataDir::locate(cli.data_dir.clone());
    match cli.command {
        Command::App { connection, command } => commands::app(&connection, command).await,
        Command::Batch { connection, command } => commands::batch(&connection, command).await,
        Command::Key { connection, command } => keys::key(&connection, command).await,
        Command::Trust { server_url, dry_run } => trust(&data_dir()?, &server_url, dry_run).await,
        Command::Attach {
            server_url,
            mirrors,
            account_key,
            name,
            resource_share,
            allow_insecure,
            bind,
            ca_cert,
            require_signatures,
        } => {
            let connection = Overrides { allow_insecure, bind, ca_cert, ..Overrides::default() };
            let options = AttachOptions { mirrors, account_key, name, resource_share, connection, require_signatures };
            attach(&data_dir()?, &server_url, options).await
        }
        Command::Detach { server_url } => {
            let data_dir = data_dir()?;
            let request = Request::Detach { project_url: server_url.clone() };
            match control::send(&data_dir, &request).await? {
                Some(reply) => print_reply(reply),
                None => detach(&data_dir, &server_url),
            }
        }
        Command::Suspend { duration } => {
            let request = Request::Suspend { for_seconds: duration.map(|duration| duration.as_secs()) };
            daemon_request(&data_dir()?, request).await
        }
        Command::Resume => daemon_request(&data_dir()?, Request::Resume).await,
        Command::Set { key, value } => {
            let data_dir = data_dir()?;
            let request = Request::Set { key: key.clone(), value: value.clone() };
            match control::send(&data_dir, &request).await? {
                Some(reply) => print_reply(reply),
                None => {
                    Settings::set_in_file(&data_dir, &key, &value)?;
                    println!("{key} = {value} saved in {}", data_dir.settings_file().display());
                    Ok(())
                }
            }
        }
        Command::Run { cores, memory, disk, exit_when_idle, allow_insecure, bind, ca_cert, preferences } => {
            let data_dir = data_dir()?;
            let flags = Overrides {
                cores,
                memory,
                disk,
                exit_when_idle,
                allow_insecure,
                suspend_when_cpu_above: preferences.suspend_when_cpu_above,
                suspend_on_battery: preferences.suspend_on_battery,
                suspend_when_memory_below: preferences.suspend_when_memory_below,
                compute_hours: preferences.compute_hours,
                max_cpu_percent: preferences.max_cpu_percent,
                bind,
                ca_cert,
            };
            let settings = Settings::load(&data_dir)?.overridden_by(&flags);
            settings.check()?;
            let options =
                RunOptions { exit_when_idle: settings.exit_when_idle, allow_insecure: settings.allow_insecure };
            let _lock = daemon::lock(&data_dir)?;
            // Installed before anything else: a SIGTERM that came before its handler would
            // kill the daemon outright instead of stopping its tasks cleanly.
            let shutdown = shutdown_signal()?;
            let reloads = reload_on_hangup(data_dir.clone(), flags.clone())?;
            let daemon = Daemon::new(data_dir, settings, options, flags)?;
            daemon.run(shutdown, reloads).await
        }
        Command::Exec { module, stdin, input, fuel, memory, timeout, scratch, seed, output, json, args } => {
            let limits =
                RunLimits { fuel, memory_bytes: memory, wall_time_seconds: timeout.as_secs(), ..RunLimits::DEFAULT };
            let request = ExecRequest {
                module,
                args,
                stdin,
                input_dir: input,
                limits,
                scratch_limit_bytes: scratch,
                seed,
                output,
            };
            let report = tokio::task::spawn_blocking(move || local_run::exec(&request)).await??;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            if !report.is_success() {
                anyhow::bail!("the module did not run to success ({})", report.outcome);
            }
            Ok(())
        }
        Command::Instrument { module, output, target } => {
            let target = match target {
                InstrumentTarget::Portable => wasmgrid_instrument::Target::Portable,
                InstrumentTarget::Sandbox => wasmgrid_instrument::Target::Sandbox,
            };
            let (before, after) = local_run::instrument(&module, &output, target)?;
            println!(
                "wrote {} ({before} bytes -> {after} bytes, instrumentation v{})",
                output.display(),
                wasmgrid_instrument::VERSION
            );
            Ok(())
        }
        Command::Status { json } => {
            let report = status::query(&data_dir()?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(())
        }
    }
}

/// Sends a request that only a running daemon can carry out.
async fn daemon_request(data_dir: &DataDir, request: Request) -> anyhow::Result<()> {
    match control::send(data_dir, &request).await? {
        Some(reply) => print_reply(reply),
        None => anyhow::bail!("no daemon is running on {} (start it with `wasmgrid run`)", data_dir.root().display()),
    }
}

fn print_reply(reply: Reply) -> anyhow::Result<()> {
    match reply {
        Reply::Done { message } => {
            println!("{message}");
            Ok(())
        }
        Reply::Refused { error } => anyhow::bail!("{error}"),
        Reply::Status(_) => anyhow::bail!("the daemon answered with its status instead"),
    }
}

/// What `attach` was told besides the URL.
struct AttachOptions {
    mirrors: Vec<String>,
    account_key: Option<String>,
    name: Option<String>,
    resource_share: f64,
    /// How to connect, over client.toml: `allow_insecure`, `bind` and `ca_cert`.
    connection: Overrides,
    require_signatures: bool,
}

async fn attach(data_dir: &DataDir, server_url: &str, options: AttachOptions) -> anyhow::Result<()> {
    let AttachOptions { mirrors, account_key, name, resource_share, connection, require_signatures } = options;
    let url = normalize_url(server_url);
    let mut unique_mirrors: Vec<String> = Vec::new();
    for mirror in mirrors.iter().map(|mirror| normalize_url(mirror)) {
        if mirror != url && !unique_mirrors.contains(&mirror) {
            unique_mirrors.push(mirror);
        }
    }
    let mirrors = unique_mirrors;
    let settings = Settings::load(data_dir)?.overridden_by(&connection);
    // Before any connection: the account key would travel in the clear.
    for url in std::iter::once(&url).chain(&mirrors) {
        check_transport(url, settings.allow_insecure)?;
    }
    if resource_share.is_nan() || resource_share <= 0.0 {
        anyhow::bail!("--resource-share must be positive");
    }
    let server = ServerClient::connect(ServerUrls::new(url.clone(), mirrors.clone()), &settings.connect_options()?)?;
    let name = name.unwrap_or_else(host_info::hostname);
    let account_key = match account_key {
        Some(key) => key,
        None => {
            let account = server.create_account(&name).await.context("cannot create an account")?;
            println!(
                "created account {} — keep this account key to attach more machines: {}",
                account.account_id, account.account_key
            );
            account.account_key
        }
    };
    let host =
        server.register_host(&account_key, &host_info::describe(&name)).await.context("cannot register this host")?;
    // Trust on first use: the keys the project's publishers sign with now are the ones this
    // client will believe. Attaching again (another account, say) is no first use: the pins
    // stay, and only `wasmgrid trust` changes them.
    let keys = server.project_keys().await.context("cannot read the project's publisher keys")?;
    let mut first_use = PinnedKeys::first_use(&keys);
    first_use.require_signatures |= require_signatures;
    let (pinned, kept) = KeyStore::update(data_dir, |store| match store.projects.get_mut(&url) {
        Some(pinned) => {
            pinned.require_signatures |= require_signatures;
            (pinned.clone(), true)
        }
        None => {
            store.projects.insert(url.clone(), first_use.clone());
            (first_use, false)
        }
    })?;
    let mut projects = Projects::load(data_dir)?;
    projects.upsert(Project {
        url: url.clone(),
        mirrors: mirrors.clone(),
        account_id: host.account_id,
        account_key,
        host_id: host.host_id,
        host_token: host.host_token,
        resource_share,
    });
    projects.save(data_dir)?;
    println!("attached to {url} as host {}", host.host_id);
    for mirror in &mirrors {
        println!("mirror {mirror}: tried in turn when the URL in use fails");
    }
    let pinned_how = if kept { "kept the pinned key" } else { "pinned the key" };
    for (publisher, key) in &pinned.publishers {
        println!("{pinned_how} of publisher {publisher}: {key}");
    }
    if pinned.require_signatures {
        println!("only signed modules of this project will run here");
    }
    Ok(())
}

/// `wasmgrid trust`: pins the keys the project lists now, and tells the server that this
/// host may be sent the modules it refused.
async fn trust(data_dir: &DataDir, server_url: &str, dry_run: bool) -> anyhow::Result<()> {
    let url = normalize_url(server_url);
    let project = Projects::load(data_dir)?.find(&url).cloned().with_context(|| format!("not attached to {url}"))?;
    let settings = Settings::load(data_dir)?;
    let server = ServerClient::connect(project.server_urls(), &settings.connect_options()?)?;
    let keys = server.project_keys().await.context("cannot read the project's publisher keys")?;
    let changes = KeyStore::update(data_dir, |store| {
        let pinned = store.projects.entry(url.clone()).or_default();
        let trusted = pinned.trusting(&keys);
        let changes = pinned.changes_to(&trusted);
        if !dry_run {
            *pinned = trusted;
        }
        changes
    })?;
    if changes.is_empty() {
        println!("the keys pinned for {url} are the ones it lists; nothing to change");
    }
    for change in &changes {
        println!("{change}");
    }
    if dry_run {
        return Ok(());
    }
    server.clear_refusals(&project.host_token).await.context("cannot tell the server")?;
    println!("trusted the keys of {url}");
    Ok(())
}

/// Detaches from a project with no daemon running (see [`projects::detach`]).
fn detach(data_dir: &DataDir, server_url: &str) -> anyhow::Result<()> {
    // A running daemon holds its own copy of the projects and the tasks: it would go on
    // asking this project for work and write the tasks back.
    let _lock = daemon::lock(data_dir).context("stop the daemon before detaching")?;
    let url = normalize_url(server_url);
    match projects::detach(data_dir, &mut ClientState::load(data_dir)?, &url)? {
        Some(detached) => {
            println!("{detached}");
            Ok(())
        }
        None => anyhow::bail!("not attached to {url}"),
    }
}

/// Reads `client.toml` again (with the flags over it) on every SIGHUP, as service managers
/// expect of a daemon (`systemctl reload`).
#[cfg(unix)]
fn reload_on_hangup(data_dir: DataDir, flags: Overrides) -> std::io::Result<daemon::Reloads> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    let (send, receive) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reading {} again", data_dir.settings_file().display());
            if send.send(Settings::load(&data_dir).map(|settings| settings.overridden_by(&flags))).is_err() {
                break;
            }
        }
    });
    Ok(receive)
}

/// Windows has no SIGHUP: `wasmgrid set` changes settings while the daemon runs.
#[cfg(not(unix))]
fn reload_on_hangup(_data_dir: DataDir, _flags: Overrides) -> std::io::Result<daemon::Reloads> {
    let (_, no_reloads) = tokio::sync::mpsc::unbounded_channel();
    Ok(no_reloads)
}

/// Completes on Ctrl-C (or Ctrl-Break, or the console closing), Windows' stop signals.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close};
    let (mut interrupt, mut interrupt_break, mut close) = (ctrl_c()?, ctrl_break()?, ctrl_close()?);
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = interrupt_break.recv() => {}
            _ = close.recv() => {}
        }
        tracing::info!("stopping: running tasks are kept for the next start");
    })
}

/// Completes on SIGTERM or Ctrl-C. The handlers are installed when this is called, not when
/// the future is first polled.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("stopping: running tasks are kept for the next start");
    })
}
