//! The volunteer daemon: keeps every slot busy with work from the attached projects,
//! runs it in the sandbox, uploads the outputs and reports the results.
//!
//! - [`staging`]: downloading and laying out a task's inputs.
//! - [`execute`]: one task from staging to uploaded output, off the async runtime.
//! - [`shares`]: which project's task gets the next free slot.
//! - [`suspension`]: when computing is suspended, and why.
//!
//! One loop owns the state. It starts tasks in free slots, contacts each project when the
//! server's `retry_after` (or the backoff after a failure) allows, applies finished runs,
//! pauses and resumes tasks as the computing preferences say, answers requests on the
//! control socket, and stops on SIGTERM or Ctrl-C, interrupting running tasks so they run
//! again next time. Every change to the state is on disk before it is acted on.

mod execute;
mod shares;
mod signatures;
pub mod staging;
pub mod suspension;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use wasmgrid_protocol::api::{InlineOutput, OutputUploaded, ReplicaReport, SchedulerReply, SchedulerRequest};

use crate::api::{ApiError, ApiResult, ServerClient};
use crate::backoff::Backoff;
use crate::blob_cache::BlobCache;
use crate::control::{self, Reply, Request};
use crate::data_dir::DataDir;
use crate::projects::{self, Project, Projects, check_transport, normalize_url};
use crate::settings::{Overrides, Settings};
use crate::state::{ClientState, Phase, Task, TaskId};
use crate::status::{self, StatusReport};
use execute::{Completion, End, ExecContext};
use shares::RecentUse;
use suspension::{Reason, Suspension};
use wasmgrid_sandbox::{RunControl, Sandbox, StopReason};

/// How long a task asked to pause may take to reach a point where it can be held, when it
/// cannot be held anywhere, before it is stopped instead.
const PAUSE_GRACE: Duration = Duration::from_secs(2);
/// Control connections served at once (each waits at most two seconds for its request):
/// enough for any volunteer, and a flood cannot take the file descriptors tasks need.
const MAX_CONTROL_CONNECTIONS: usize = 128;
/// Longest wait for running tasks to stop at shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Reports per scheduler request, as the server allows.
const MAX_REPORTS: usize = 1000;
/// Most bytes of reports per scheduler request, well within the server's 1 MiB limit on a
/// request body (each report may carry 4 KiB of standard error).
const MAX_REPORT_BYTES: usize = 512 << 10;
/// The loop wakes at least this often (deadlines, retries of failed staging).
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Most tasks kept waiting here per project, whatever the work buffer asks for: tasks held
/// here are tasks other volunteers cannot run.
const MAX_BUFFERED_TASKS: usize = 500;
/// Finished results wait at most this long for an exchange with their server that happens
/// anyway (a request for work), so that one exchange carries many reports.
const REPORT_DELAY: Duration = Duration::from_secs(60);
/// Weight of the newest run in a project's average run time.
const RUN_TIME_SMOOTHING: f64 = 0.2;

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Exit once no project has work and every result is reported.
    pub exit_when_idle: bool,
    /// Allow plain HTTP to servers that are not on this machine.
    pub allow_insecure: bool,
}

/// What the daemon knows about talking to one project.
struct Contact {
    project: Project,
    server: ServerClient,
    next_contact: Instant,
    backoff: Backoff,
    /// The last request asked for work and got none.
    out_of_work: bool,
    /// How long this project's tasks run, on average (smoothed): sizes the work buffer.
    average_run_time: Option<Duration>,
    /// When the oldest result not yet reported finished, if it finished in this run.
    reports_waiting_since: Option<Instant>,
    /// This project's recent use of the slots, against its resource share.
    recent_use: RecentUse,
    /// Downloading a task's inputs failed: none of the project's tasks start before then,
    /// so that a failing server is not asked for every buffered task's files in turn.
    staging_held_until: Option<Instant>,
    staging_backoff: Backoff,
    /// Outputs up to this size go inside their reports, as the server's last reply allowed;
    /// 0 (before the first reply, or from a server that takes none) uploads every one.
    inline_output_limit: u64,
}

impl Contact {
    /// Whether `output` travels inside its report rather than being uploaded first.
    fn carries_inline(&self, output: &crate::state::StoredOutput) -> bool {
        output.bytes <= self.inline_output_limit
    }
}

impl Contact {
    fn record_run_time(&mut self, run_time: Duration) {
        self.average_run_time = Some(match self.average_run_time {
            Some(average) => average.mul_f64(1.0 - RUN_TIME_SMOOTHING) + run_time.mul_f64(RUN_TIME_SMOOTHING),
            None => run_time,
        });
    }
}

/// Settings read again while the daemon runs (on SIGHUP), or why they could not be.
pub type Reloads = mpsc::UnboundedReceiver<anyhow::Result<Settings>>;

/// An upload started right after a run: the task, and whether its output arrived.
type UploadDone = (TaskId, bool);

/// A request from the control socket, and where its reply goes.
type ControlRequest = (Request, tokio::sync::oneshot::Sender<Reply>);

struct Running {
    control: Arc<RunControl>,
    started: Instant,
    memory_bytes: u64,
    /// Asked to stop (to free memory, or because it could not pause); not counted again
    /// while it winds down.
    stopping: bool,
    /// When the current pause was asked for.
    pause_asked: Option<Instant>,
}

pub struct Daemon {
    data_dir: DataDir,
    settings: Settings,
    options: RunOptions,
    state: ClientState,
    contacts: Vec<Contact>,
    running: HashMap<TaskId, Running>,
    /// Outputs being uploaded right after their run, off the loop.
    uploading: HashSet<TaskId>,
    uploads: (mpsc::UnboundedSender<UploadDone>, mpsc::UnboundedReceiver<UploadDone>),
    exec: Arc<ExecContext>,
    completions: (mpsc::UnboundedSender<Completion>, mpsc::UnboundedReceiver<Completion>),
    requests: (mpsc::UnboundedSender<ControlRequest>, mpsc::UnboundedReceiver<ControlRequest>),
    /// The flags the daemon was started with: they win over `client.toml` when it changes.
    flags: Overrides,
    suspension: Suspension,
    /// Why computing is suspended, as of the latest look.
    suspended_because: Vec<Reason>,
}

impl Daemon {
    pub fn new(data_dir: DataDir, settings: Settings, options: RunOptions, flags: Overrides) -> anyhow::Result<Self> {
        let projects = Projects::load(&data_dir)?;
        if projects.projects.is_empty() {
            anyhow::bail!("no project attached: run `wasmgrid attach <SERVER_URL>` first");
        }
        let (min, max) = settings.backoff();
        let connect = settings.connect_options()?;
        let mut contacts = Vec::new();
        for project in projects.projects {
            for url in project.urls() {
                check_transport(url, options.allow_insecure)?;
            }
            let server = ServerClient::connect(project.server_urls(), &connect)?;
            contacts.push(Contact {
                project,
                server,
                next_contact: Instant::now(),
                backoff: Backoff::new(min, max),
                out_of_work: false,
                average_run_time: None,
                reports_waiting_since: None,
                recent_use: RecentUse::default(),
                staging_held_until: None,
                staging_backoff: Backoff::new(min, max),
                inline_output_limit: 0,
            });
        }
        let mut state = ClientState::load(&data_dir)?;
        drop_detached_tasks(&mut state, &data_dir, &contacts)?;
        // A fresh snapshot: the journal starts empty, never after a torn line.
        state.save(&data_dir)?;
        let sandbox = Sandbox::new(&data_dir.compiled())?;
        let cache = BlobCache::open(data_dir.blobs(), settings.disk / 2)?;
        let scratch_limit_bytes = settings.disk / (2 * settings.cores() as u64);
        let exec = Arc::new(ExecContext { sandbox, cache, data_dir: data_dir.clone(), scratch_limit_bytes });
        Ok(Self {
            data_dir,
            settings,
            options,
            state,
            contacts,
            running: HashMap::new(),
            uploading: HashSet::new(),
            uploads: mpsc::unbounded_channel(),
            exec,
            completions: mpsc::unbounded_channel(),
            requests: mpsc::unbounded_channel(),
            flags,
            suspension: Suspension::default(),
            suspended_because: Vec::new(),
        })
    }

    /// Runs until shutdown (or, with `exit_when_idle`, until there is nothing left to do),
    /// taking the settings that arrive on `reloads`.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
        mut reloads: Reloads,
    ) -> anyhow::Result<()> {
        let control_socket = control::Listener::bind(&self.data_dir)?;
        let control_slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CONNECTIONS));
        let mut refused_connections: u64 = 0;
        tokio::pin!(shutdown);
        loop {
            self.follow_preferences();
            self.start_tasks()?;
            self.contact_due_projects().await?;
            if self.options.exit_when_idle && self.is_idle() {
                tracing::info!("no work left and every result reported; exiting");
                break;
            }
            let wake = self
                .contacts
                .iter()
                .map(|contact| contact.next_contact)
                .min()
                .unwrap_or_else(Instant::now)
                .max(Instant::now())
                .min(Instant::now() + IDLE_TICK)
                // The computing preferences are read this often.
                .min(Instant::now() + suspension::READING_INTERVAL);
            tokio::select! {
                Some(completion) = self.completions.1.recv() => self.apply(completion)?,
                Some((id, uploaded)) = self.uploads.1.recv() => self.uploaded(id, uploaded),
                Some(reloaded) = reloads.recv() => match reloaded {
                    Ok(settings) => {
                        self.take_settings(settings);
                    }
                    Err(error) => tracing::error!("keeping the settings in force: {error:#}"),
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
                accepted = control_socket.accept() => match accepted {
                    // Off the loop: a peer that never writes or never reads must not stall
                    // the daemon. Past the cap, connections are closed at once.
                    Ok(connection) => match control_slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            tokio::spawn(serve_control(connection, self.requests.0.clone(), slot));
                        }
                        Err(_) => {
                            // Logged now and then, not per connection: a flood must not
                            // become a flood of the log.
                            refused_connections += 1;
                            if refused_connections.is_power_of_two() {
                                tracing::warn!(refused_connections, "too many control connections at once; closing the extra ones");
                            }
                        }
                    },
                    Err(error) => {
                        // Out of file descriptors, say: wait a little rather than spin.
                        tracing::warn!(%error, "cannot accept a control connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some((request, reply_to)) = self.requests.1.recv() => {
                    let reply = self.handle(request)?;
                    let _ = reply_to.send(reply);
                }
                () = &mut shutdown => {
                    self.stop_running_tasks().await?;
                    break;
                }
            }
        }
        control_socket.remove(&self.data_dir);
        Ok(())
    }

    /// A request from the control socket.
    fn handle(&mut self, request: Request) -> anyhow::Result<Reply> {
        let done = |message: String| Reply::Done { message };
        let reply = match request {
            Request::Status => Reply::Status(Box::new(self.status_report())),
            Request::Suspend { for_seconds } => {
                let until = self.suspension.suspend_by_user(for_seconds.map(Duration::from_secs));
                self.follow_preferences();
                match until {
                    Some(until) => done(format!(
                        "computing suspended until {}",
                        until.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S")
                    )),
                    None => done("computing suspended until `wasmgrid resume`".to_owned()),
                }
            }
            Request::Resume => {
                let was_suspended = self.suspension.resume_by_user();
                self.follow_preferences();
                let still: Vec<String> = self.suspended_because.iter().map(ToString::to_string).collect();
                match (was_suspended, still.is_empty()) {
                    (_, false) => done(format!("computing stays suspended: {}", still.join("; "))),
                    (true, true) => done("computing resumed".to_owned()),
                    (false, true) => done("computing was not suspended".to_owned()),
                }
            }
            Request::Set { key, value } => match Settings::set_in_file(&self.data_dir, &key, &value) {
                Ok(from_file) => {
                    let settings = from_file.overridden_by(&self.flags);
                    let pinned = self.flags.pins(&key);
                    let at_next_start = self.take_settings(settings);
                    self.follow_preferences();
                    let mut message = format!("{key} = {value} saved in {}", self.data_dir.settings_file().display());
                    if at_next_start.contains(&key.as_str()) {
                        message += "; it takes effect when the daemon next starts";
                    } else if pinned {
                        message += "; the flag given to `wasmgrid run` for it still wins over the file";
                    } else {
                        message += " and in effect";
                    }
                    done(message)
                }
                Err(error) => Reply::Refused { error: format!("{error:#}") },
            },
            Request::Detach { project_url } => match self.detach(&normalize_url(&project_url))? {
                Some(message) => done(message),
                None => Reply::Refused { error: format!("not attached to {project_url}") },
            },
        };
        Ok(reply)
    }

    /// Detaches from a project while running: its running tasks stop, and it and its tasks
    /// are forgotten, on disk too. `None` when not attached to it.
    fn detach(&mut self, url: &str) -> anyhow::Result<Option<String>> {
        let Some(position) = self.contacts.iter().position(|contact| contact.project.url == url) else {
            return Ok(None);
        };
        for (id, running) in &self.running {
            if id.project_url == url {
                running.control.stop(StopReason::Aborted);
            }
        }
        let detached = projects::detach(&self.data_dir, &mut self.state, url)?;
        self.contacts.remove(position);
        tracing::info!(project = %url, tasks = detached.as_ref().map_or(0, |d| d.tasks), "detached");
        Ok(Some(detached.map_or_else(|| format!("detached from {url}"), |detached| detached.to_string())))
    }

    /// Reads the machine and the preferences, and pauses or resumes the running tasks to
    /// match: every task pauses while any reason holds. Low memory stops tasks instead, one
    /// at each reading, newest first, until enough memory is free.
    fn follow_preferences(&mut self) {
        let now = Instant::now();
        self.suspension.read_machine(&self.settings, now);
        let reasons = self.suspension.reasons(&self.settings, chrono::Local::now().naive_local());
        if reasons != self.suspended_because {
            match reasons.as_slice() {
                [] => tracing::info!("computing resumes"),
                reasons => {
                    let reasons: Vec<String> = reasons.iter().map(ToString::to_string).collect();
                    tracing::info!(reasons = %reasons.join("; "), "computing suspended");
                }
            }
        }
        let pause = reasons.iter().any(|reason| !reason.frees_memory());
        for (id, running) in self.running.iter_mut() {
            if !pause {
                running.control.resume();
                running.pause_asked = None;
                continue;
            }
            running.control.pause();
            let asked = *running.pause_asked.get_or_insert(now);
            // A task that cannot be held where it is (on a platform without pausing in
            // place, or one that only Pulley runs) and has not reached a host call soon
            // stops instead, and runs again from its checkpoint.
            // (Before it reaches Wasm, a task is held at its first instruction.)
            let not_held = !running.control.is_paused() && now.duration_since(asked) >= PAUSE_GRACE;
            let cannot_hold = running.control.is_in_wasm() && !running.control.pauses_anywhere();
            if not_held && cannot_hold && !running.stopping {
                tracing::info!(replica.id = id.replica_id, "the task cannot pause where it is: stopping it");
                running.stopping = true;
                running.control.stop(StopReason::Shutdown);
            }
        }
        let memory_low = reasons.iter().any(Reason::frees_memory);
        let newly_low = memory_low && self.suspended_because.iter().all(|reason| !reason.frees_memory());
        if memory_low && (newly_low || self.suspension.just_read(now)) {
            let newest = self
                .running
                .iter()
                .filter(|(_, running)| !running.stopping)
                .max_by_key(|(_, running)| running.started)
                .map(|(id, _)| id.clone());
            if let Some(id) = newest
                && let Some(running) = self.running.get_mut(&id)
            {
                tracing::info!(
                    replica.id = id.replica_id,
                    "memory is short: stopping the newest task; it runs again later"
                );
                running.stopping = true;
                running.control.stop(StopReason::Shutdown);
            }
        }
        self.suspended_because = reasons;
    }

    /// New settings, while running. The slots, the memory budget, the work buffer and
    /// `exit_when_idle` change at once (running tasks over a smaller slot count finish first);
    /// the rest was used to set the daemon up and waits for the next start.
    fn take_settings(&mut self, new: Settings) -> Vec<&'static str> {
        let old = &self.settings;
        let at_next_start: Vec<&'static str> = [
            ("disk", new.disk != old.disk),
            ("allow_insecure", new.allow_insecure != old.allow_insecure),
            ("backoff_min_seconds", new.backoff_min_seconds != old.backoff_min_seconds),
            ("backoff_max_seconds", new.backoff_max_seconds != old.backoff_max_seconds),
            ("bind", new.bind != old.bind),
            ("ca_cert", new.ca_cert != old.ca_cert),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect();
        if !at_next_start.is_empty() {
            tracing::warn!(settings = ?at_next_start, "these settings take effect when the daemon next starts");
        }
        let settings = Settings {
            disk: old.disk,
            allow_insecure: old.allow_insecure,
            backoff_min_seconds: old.backoff_min_seconds,
            backoff_max_seconds: old.backoff_max_seconds,
            bind: old.bind,
            ca_cert: old.ca_cert.clone(),
            ..new
        };
        self.options.exit_when_idle = settings.exit_when_idle;
        tracing::info!(cores = settings.cores(), memory = settings.memory(), "settings reloaded");
        for running in self.running.values() {
            running.control.limit_cpu(settings.max_cpu_percent.unwrap_or(100));
        }
        self.settings = settings;
        at_next_start
    }

    fn is_idle(&self) -> bool {
        self.running.is_empty() && self.state.tasks.is_empty() && self.contacts.iter().all(|c| c.out_of_work)
    }

    /// Starts pending tasks while slots and memory allow: each free slot goes to the project
    /// furthest below its resource share, and within a project to the earliest deadline.
    /// Tasks that waited past their deadline are someone else's by now and are dropped;
    /// finished ones are kept, since a late result is still checked and may earn credit.
    fn start_tasks(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let expired: Vec<TaskId> = self
            .state
            .pending()
            .filter(|task| !self.running.contains_key(&task.id()) && task.assignment.deadline < chrono::Utc::now())
            .map(Task::id)
            .collect();
        if !expired.is_empty() {
            tracing::info!(tasks = expired.len(), "dropping tasks that waited past their deadline");
            self.forget(&expired)?;
        }
        let mut candidates: Vec<Task> = self
            .state
            .pending()
            .filter(|task| !self.running.contains_key(&task.id()))
            .filter(|task| {
                let contact = self.contacts.iter().find(|contact| contact.project.url == task.project_url);
                contact.is_some_and(|contact| contact.staging_held_until.is_none_or(|until| until <= now))
            })
            .cloned()
            .collect();
        candidates.sort_by_key(|task| task.assignment.deadline);
        if !self.suspended_because.is_empty() {
            return Ok(());
        }
        let memory_budget = self.settings.memory();
        let may_still_grow: u64 = self
            .running
            .values()
            .map(|running| running.memory_bytes.saturating_sub(running.control.memory_in_use()))
            .sum();
        let mut memory_headroom =
            self.suspension.memory_headroom(&self.settings).map(|headroom| headroom.saturating_sub(may_still_grow));
        while self.running.len() < self.settings.cores() {
            let use_and_share: Vec<(f64, f64)> = self
                .contacts
                .iter()
                .map(|contact| {
                    let running: f64 = self
                        .running
                        .iter()
                        .filter(|(id, _)| id.project_url == contact.project.url)
                        .map(|(_, running)| running.control.progress().fuel_used as f64)
                        .sum();
                    (contact.recent_use.at(now) + running, contact.project.resource_share)
                })
                .collect();
            let ready =
                |index: usize| candidates.iter().any(|task| task.project_url == self.contacts[index].project.url);
            let Some(index) = shares::next_project(&use_and_share, ready) else { break };
            let position = candidates
                .iter()
                .position(|task| task.project_url == self.contacts[index].project.url)
                .expect("the project has a task ready");
            let task = candidates.remove(position);
            let memory_bytes = task.assignment.limits.memory_bytes;
            let memory_in_use: u64 = self.running.values().map(|r| r.memory_bytes).sum();
            // A task larger than the whole budget still runs, alone, rather than never.
            if !self.running.is_empty() && memory_in_use + memory_bytes > memory_budget {
                continue;
            }
            // Nor more than the machine has free, above what the preferences keep for the
            // owner, and above what the running tasks may still grow into.
            // Not even alone: memory would soon be short, and the task stopped again.
            if let Some(headroom) = memory_headroom.as_mut() {
                if memory_bytes > *headroom {
                    continue;
                }
                *headroom = headroom.saturating_sub(memory_bytes);
            }
            let server = self.contacts[index].server.clone();
            let control = Arc::new(RunControl::default());
            let id = task.id();
            tracing::info!(replica.id = id.replica_id, project = %id.project_url, workunit = %task.assignment.work_unit_name, "starting task");
            tokio::spawn(execute::execute(
                task,
                server,
                self.exec.clone(),
                control.clone(),
                self.completions.0.clone(),
            ));
            if let Some(percent) = self.settings.max_cpu_percent {
                control.limit_cpu(percent);
            }
            self.running.insert(
                id,
                Running { control, started: Instant::now(), memory_bytes, stopping: false, pause_asked: None },
            );
        }
        Ok(())
    }

    /// Applies the end of a task's run.
    fn apply(&mut self, completion: Completion) -> anyhow::Result<()> {
        let Completion { task: id, end } = completion;
        let fuel_so_far = self.running.remove(&id).map(|running| running.control.progress().fuel_used);
        let contact = self.contacts.iter_mut().find(|contact| contact.project.url == id.project_url);
        match end {
            End::Finished(phase) => {
                if !self.state.tasks.contains_key(&id) {
                    return Ok(());
                }
                let Some(contact) = contact else { return Ok(()) };
                let fuel = match &phase {
                    Phase::Finished { report, .. } => {
                        contact.record_run_time(Duration::from_millis(report.run_time_ms));
                        report.fuel_used
                    }
                    _ => fuel_so_far.unwrap_or_default(),
                };
                contact.recent_use.add(fuel);
                contact.reports_waiting_since.get_or_insert_with(Instant::now);
                contact.staging_backoff.succeeded();
                // Upload at once unless the server is failing (then the next exchange does,
                // after the backoff): on disk first, then off the loop, so the slot is free.
                let upload_now = contact.backoff.failures() == 0;
                let destination = (contact.server.clone(), contact.project.host_token.clone());
                let output = match &phase {
                    Phase::Finished { output: Some(output), uploaded: false, .. }
                        if !contact.carries_inline(output) =>
                    {
                        Some(output.sha256)
                    }
                    _ => None,
                };
                self.state.record_phase(&self.data_dir, &id, phase)?;
                if let (true, Some(sha256)) = (upload_now, output) {
                    self.uploading.insert(id.clone());
                    let path = self.data_dir.task(&id).join(execute::OUTPUT_FILE);
                    let done = self.uploads.0.clone();
                    tokio::spawn(async move {
                        let uploaded =
                            upload_output(&destination.0, &destination.1, id.replica_id, sha256, &path).await;
                        let _ = done.send((id, matches!(uploaded, Ok(Ok(_)))));
                    });
                }
            }
            End::Stopped(StopReason::Aborted) => self.forget(&[id])?,
            End::Stopped(StopReason::Shutdown) => {}
            End::Retry(error) => {
                let Some(contact) = contact else { return Ok(()) };
                let wait = contact.staging_backoff.failed();
                contact.staging_held_until = Some(Instant::now() + wait);
                tracing::warn!(replica.id = id.replica_id, project = %id.project_url, error = %error, wait_seconds = wait.as_secs(), "cannot prepare task; retrying later");
            }
        }
        Ok(())
    }

    /// An upload started right after a run ended: if it arrived, the next report may say so.
    fn uploaded(&mut self, id: TaskId, uploaded: bool) {
        self.uploading.remove(&id);
        if uploaded {
            self.mark_uploaded(&id);
        }
    }

    fn mark_uploaded(&mut self, id: &TaskId) {
        if let Some(Task { phase: Phase::Finished { uploaded, .. }, .. }) = self.state.tasks.get_mut(id) {
            // Not saved on its own: the next snapshot carries it, and should the client die
            // first, uploading the same output again is harmless.
            *uploaded = true;
        }
    }

    async fn contact_due_projects(&mut self) -> anyhow::Result<()> {
        for index in 0..self.contacts.len() {
            if self.contacts[index].next_contact > Instant::now() {
                continue;
            }
            let want = self.wanted_from(index);
            if want > 0 || self.reports_due(index) {
                self.contact(index, want).await?;
            }
        }
        Ok(())
    }

    /// How many new tasks to ask project `index` for. Each project gets its resource share
    /// of the slots, and keeps enough tasks waiting to fill its slots for the work buffer's
    /// length, going by how long its tasks have been running; at least one per slot, so none
    /// idles while the next request is under way. It asks when the buffer is half empty, for
    /// enough to fill it, so that one exchange serves many tasks.
    fn wanted_from(&self, index: usize) -> u32 {
        // Projects without work leave their share to the others.
        let total_share: f64 = self
            .contacts
            .iter()
            .enumerate()
            .filter(|(other, contact)| *other == index || !contact.out_of_work)
            .map(|(_, contact)| contact.project.resource_share.max(0.0))
            .sum();
        let contact = &self.contacts[index];
        if total_share <= 0.0 || contact.project.resource_share <= 0.0 {
            return 0;
        }
        let slots = self.settings.cores() as f64 * contact.project.resource_share / total_share;
        let one_per_slot = slots.ceil() as usize;
        let target = match contact.average_run_time {
            Some(run_time) => {
                let buffered = slots * self.settings.work_buffer_seconds as f64 / run_time.as_secs_f64().max(1e-3);
                (buffered.ceil() as usize).clamp(one_per_slot, MAX_BUFFERED_TASKS.max(one_per_slot))
            }
            None => one_per_slot,
        };
        let waiting = self
            .state
            .pending()
            .filter(|task| task.project_url == contact.project.url && !self.running.contains_key(&task.id()))
            .count();
        if waiting >= (target / 2).max(one_per_slot) { 0 } else { (target - waiting) as u32 }
    }

    /// Whether project `index` should hear about its finished results now rather than with
    /// the next request for work: when the oldest has waited long enough, or when nothing
    /// else of the project's is left to run here.
    fn reports_due(&self, index: usize) -> bool {
        let contact = &self.contacts[index];
        let url = &contact.project.url;
        if self.state.finished_for(url).next().is_none() {
            return false;
        }
        let nothing_else = self.state.pending().all(|task| task.project_url != *url);
        nothing_else || contact.reports_waiting_since.is_none_or(|since| since.elapsed() >= REPORT_DELAY)
    }

    /// One exchange with a project: upload finished outputs, then report and ask for work.
    async fn contact(&mut self, index: usize, want: u32) -> anyhow::Result<()> {
        if !self.upload_outputs(index).await? {
            return Ok(());
        }
        let url = self.contacts[index].project.url.clone();
        let contact = &self.contacts[index];
        let ready = self.state.finished_for(&url).filter_map(|task| match &task.phase {
            Phase::Finished { report, uploaded: true, .. } => Some(report.clone()),
            Phase::Finished { report, output: None, .. } => Some(report.clone()),
            Phase::Finished { report, output: Some(output), uploaded: false }
                if contact.carries_inline(output) && !self.uploading.contains(&task.id()) =>
            {
                // Small: read back (the run left it on disk) and sent inside the report. A
                // file that cannot be read waits, as an upload that cannot would.
                let path = self.data_dir.task(&task.id()).join(execute::OUTPUT_FILE);
                let bytes = std::fs::read(&path)
                    .inspect_err(
                        |error| tracing::warn!(path = %path.display(), %error, "cannot read an output to report"),
                    )
                    .ok()?;
                Some(ReplicaReport { output: Some(InlineOutput(bytes)), ..report.clone() })
            }
            _ => None,
        });
        let reports = report_batch(ready, MAX_REPORTS, MAX_REPORT_BYTES);
        // Every task of this project, so that the server sends again what a lost reply
        // carried, and says which of them to abort.
        let held =
            self.state.tasks.values().filter(|task| task.project_url == url).map(|task| task.assignment.replica_id);
        let request =
            SchedulerRequest { reports: reports.clone(), want_replicas: want, held_replicas: Some(held.collect()) };
        let contact = &self.contacts[index];
        match contact.server.scheduler(&contact.project.host_token, &request).await {
            Ok(reply) => self.take_reply(index, want, reply).await,
            Err(error) if error.is_transient() => {
                self.back_off(index, &error);
                Ok(())
            }
            Err(error) if error.refuses_the_content() && reports.iter().any(|report| report.output.is_some()) => {
                // The server may now take less inside a report than its last reply said (its
                // operator lowered the limit): the outputs are uploaded instead, from the
                // next exchange on, and nothing is dropped.
                tracing::warn!(project = %url, error = %error, "the server refused outputs inside reports; uploading them instead");
                self.contacts[index].inline_output_limit = 0;
                Ok(())
            }
            Err(error) if !reports.is_empty() && error.refuses_the_content() => {
                tracing::warn!(project = %url, error = %error, "the server refused a batch of reports; sending them one by one");
                self.report_one_by_one(index, reports).await
            }
            Err(error) => {
                self.back_off(index, &error);
                Ok(())
            }
        }
    }

    /// Uploads outputs not yet uploaded; `false` if the server is unreachable (back off).
    async fn upload_outputs(&mut self, index: usize) -> anyhow::Result<bool> {
        let url = self.contacts[index].project.url.clone();
        let contact = &self.contacts[index];
        let waiting: Vec<(TaskId, crate::state::StoredOutput)> = self
            .state
            .finished_for(&url)
            .filter(|task| !self.uploading.contains(&task.id()))
            .filter_map(|task| match &task.phase {
                Phase::Finished { output: Some(output), uploaded: false, .. } if !contact.carries_inline(output) => {
                    Some((task.id(), output.clone()))
                }
                _ => None,
            })
            .collect();
        for (id, output) in waiting {
            let replica_id = id.replica_id;
            let path = self.data_dir.task(&id).join(execute::OUTPUT_FILE);
            let contact = &self.contacts[index];
            match upload_output(&contact.server, &contact.project.host_token, replica_id, output.sha256, &path).await? {
                Ok(_) => self.mark_uploaded(&id),
                Err(error) if error.is_transient() => {
                    self.back_off(index, &error);
                    return Ok(false);
                }
                Err(error) => {
                    // Reported as a failed run rather than dropped: the server learns it, and
                    // does not send the replica again as one this host lost.
                    tracing::error!(replica.id = replica_id, error = %error, "the server refused the output; reporting the task as failed");
                    self.refused_output(&id, &error)?;
                }
            }
        }
        Ok(true)
    }

    /// Turns a finished task whose output the server refused into a failed run's report.
    fn refused_output(&mut self, id: &TaskId, error: &ApiError) -> anyhow::Result<()> {
        let Some(Task { phase: Phase::Finished { report, .. }, .. }) = self.state.tasks.get(id) else {
            return Ok(());
        };
        let report = ReplicaReport {
            outcome: wasmgrid_protocol::api::ReportedOutcome::Error {
                reason: format!("the server refused the output: {error}"),
            },
            ..report.clone()
        };
        self.state.record_phase(&self.data_dir, id, Phase::Finished { report, output: None, uploaded: false })
    }

    /// Checks the reply's new work against the pinned keys, then applies it.
    async fn take_reply(&mut self, index: usize, want: u32, reply: SchedulerReply) -> anyhow::Result<()> {
        let contact = &self.contacts[index];
        let url = &contact.project.url;
        let new_work = reply
            .assignments
            .iter()
            .filter(|assignment| !self.state.tasks.contains_key(&TaskId::new(url, assignment.replica_id)));
        let verdicts = match signatures::check(&self.data_dir, &contact.server, url, new_work.clone()).await {
            Ok(verdicts) => verdicts,
            Err(error) => {
                // Nothing unchecked runs, and the daemon goes on: the server sends this work
                // again later, as replicas this host does not hold.
                tracing::error!(project = %url, error = %format!("{error:#}"), "cannot check new work against the pinned keys");
                signatures::Verdicts::defer_all(new_work)
            }
        };
        self.apply_reply(index, want, reply, verdicts)
    }

    fn apply_reply(
        &mut self,
        index: usize,
        want: u32,
        reply: SchedulerReply,
        mut verdicts: signatures::Verdicts,
    ) -> anyhow::Result<()> {
        let url = self.contacts[index].project.url.clone();
        // New work is on disk before anything else happens to it; a module refused is
        // reported as such, with nothing downloaded.
        for assignment in reply.assignments.iter().cloned() {
            let replica_id = assignment.replica_id;
            if verdicts.deferred.contains(&replica_id) {
                continue;
            }
            let phase = match verdicts.refused.remove(&replica_id) {
                Some(reason) => {
                    Phase::Finished { report: signatures::refusal(replica_id, reason), output: None, uploaded: true }
                }
                None => Phase::Pending,
            };
            let task = Task { project_url: url.clone(), assignment, phase };
            self.state.tasks.entry(task.id()).or_insert(task);
        }
        let mut gone: Vec<TaskId> =
            reply.acknowledged.iter().map(|replica_id| TaskId::new(&url, *replica_id)).collect();
        for id in reply.abort.iter().map(|replica_id| TaskId::new(&url, *replica_id)) {
            match self.running.get(&id) {
                Some(running) => running.control.stop(StopReason::Aborted),
                None => gone.push(id),
            }
        }
        for id in &gone {
            self.state.tasks.remove(id);
        }
        self.state.save(&self.data_dir)?;
        for id in &gone {
            let _ = std::fs::remove_dir_all(self.data_dir.task(id));
        }
        if !reply.assignments.is_empty() || !reply.acknowledged.is_empty() {
            tracing::info!(
                project = %url,
                reported = reply.acknowledged.len(),
                received = reply.assignments.len(),
                "scheduler request done"
            );
        }
        let any_left = self.state.finished_for(&url).next().is_some();
        let contact = &mut self.contacts[index];
        if !any_left {
            contact.reports_waiting_since = None;
        }
        contact.backoff.succeeded();
        contact.out_of_work = want > 0 && reply.assignments.is_empty();
        contact.inline_output_limit = reply.inline_output_limit;
        contact.next_contact = Instant::now() + Duration::from_secs(reply.retry_after_seconds);
        let keep: HashSet<_> = self
            .state
            .tasks
            .values()
            .flat_map(|task| {
                let assignment = &task.assignment;
                let inputs = assignment.inputs.iter().map(|input| input.blob.sha256);
                [assignment.module.sha256]
                    .into_iter()
                    .chain(assignment.stdin.as_ref().map(|blob| blob.sha256))
                    .chain(inputs)
            })
            .collect();
        let _ = self.exec.cache.evict(&keep);
        Ok(())
    }

    /// Finds which reports the server refuses, so that one bad result cannot block the
    /// others forever: the refused ones are dropped, with an error in the log.
    async fn report_one_by_one(&mut self, index: usize, reports: Vec<ReplicaReport>) -> anyhow::Result<()> {
        let url = self.contacts[index].project.url.clone();
        for report in reports {
            let replica_id = report.replica_id;
            let request = SchedulerRequest { reports: vec![report], ..SchedulerRequest::default() };
            let contact = &self.contacts[index];
            match contact.server.scheduler(&contact.project.host_token, &request).await {
                Ok(reply) => {
                    let retry_after = reply.retry_after_seconds;
                    self.take_reply(index, 0, reply).await?;
                    if retry_after > 0 {
                        // The rest wait for the server's retry_after, like any request.
                        return Ok(());
                    }
                }
                Err(error) if !error.refuses_the_content() => {
                    self.back_off(index, &error);
                    return Ok(());
                }
                Err(error) => {
                    tracing::error!(replica.id = replica_id, error = %error, "the server refused this report; dropping it");
                    self.forget(&[TaskId::new(&url, replica_id)])?;
                }
            }
        }
        Ok(())
    }

    /// Waits before contacting project `index` again after `error`: as long as the server
    /// advised (its `Retry-After` follows the outage: a blip asks for a second), spread
    /// with jitter, and longer as failures go on (see [`crate::backoff::after_advice`]); or,
    /// with no advice (unreachable, say), the exponential backoff.
    fn back_off(&mut self, index: usize, error: &ApiError) {
        let contact = &mut self.contacts[index];
        let backoff = contact.backoff.failed();
        let wait = match error {
            ApiError::Server { retry_after: Some(advised), .. } => {
                crate::backoff::after_advice(*advised, contact.backoff.failures())
            }
            _ => backoff,
        };
        tracing::warn!(project = %contact.project.url, server = contact.server.base_url(), error = %error, wait_seconds = wait.as_secs(), "backing off");
        contact.next_contact = Instant::now() + wait;
    }

    fn forget(&mut self, ids: &[TaskId]) -> anyhow::Result<()> {
        for id in ids {
            self.state.tasks.remove(id);
        }
        self.state.save(&self.data_dir)?;
        for id in ids {
            let _ = std::fs::remove_dir_all(self.data_dir.task(id));
        }
        Ok(())
    }

    /// Interrupts every running task; each stays pending and runs again next start.
    async fn stop_running_tasks(&mut self) -> anyhow::Result<()> {
        for running in self.running.values() {
            running.control.stop(StopReason::Shutdown);
        }
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.completions.1.recv()).await {
                Ok(Some(completion)) => self.apply(completion)?,
                _ => break,
            }
        }
        Ok(())
    }

    fn status_report(&self) -> StatusReport {
        let running = self
            .running
            .iter()
            .map(|(id, running)| {
                let task = status::RunningTask {
                    elapsed: running.started.elapsed(),
                    progress: running.control.progress(),
                    priority: running.control.background().map(ToString::to_string),
                    pause_requested: running.control.is_pause_requested(),
                    paused: running.control.is_paused(),
                    started: running.control.has_started(),
                };
                (id.clone(), task)
            })
            .collect();
        let projects = self
            .contacts
            .iter()
            .map(|contact| status::ProjectStatus {
                url: contact.project.url.clone(),
                mirrors: contact.project.mirrors.clone(),
                url_in_use: Some(contact.server.base_url().to_owned()),
                host_id: contact.project.host_id,
                resource_share: contact.project.resource_share,
                failed_contacts: contact.backoff.failures(),
                next_contact_in_seconds: contact.next_contact.saturating_duration_since(Instant::now()).as_secs(),
            })
            .collect();
        let computing = status::ComputingStatus {
            suspended_because: self.suspended_because.iter().map(ToString::to_string).collect(),
            preferences: suspension::preferences_in_force(&self.settings),
            unsupported_here: suspension::unsupported_here(),
            other_programs_cpu_percent: self.suspension.others_cpu(),
        };
        status::StatusReport::new(true, computing, projects, &self.state, &running)
    }
}

/// Reads one request from the control socket, has the daemon's loop answer it, and sends
/// the answer back.
async fn serve_control(
    mut connection: control::Connection,
    requests: mpsc::UnboundedSender<ControlRequest>,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let reply = match connection.read_request().await {
        Ok(request) => {
            let (reply_to, reply) = tokio::sync::oneshot::channel();
            if requests.send((request, reply_to)).is_err() {
                return;
            }
            match reply.await {
                Ok(reply) => reply,
                Err(_) => return,
            }
        }
        Err(error) => Reply::Refused { error },
    };
    connection.reply(&reply).await;
}

/// The reports to send in one request: the first ones, up to `max_count` and `max_bytes`
/// of JSON, but always at least one.
fn report_batch(
    reports: impl Iterator<Item = ReplicaReport>,
    max_count: usize,
    max_bytes: usize,
) -> Vec<ReplicaReport> {
    let mut bytes = 0;
    let mut batch = Vec::new();
    for report in reports.take(max_count) {
        bytes += serde_json::to_vec(&report).map_or(0, |json| json.len());
        if !batch.is_empty() && bytes > max_bytes {
            break;
        }
        batch.push(report);
    }
    batch
}

/// Uploads a finished task's output archive: the outer error is this machine failing to
/// read it, the inner one the server's answer.
async fn upload_output(
    server: &ServerClient,
    host_token: &str,
    replica_id: i64,
    sha256: wasmgrid_protocol::Sha256Hash,
    path: &std::path::Path,
) -> anyhow::Result<ApiResult<OutputUploaded>> {
    let bytes = tokio::fs::read(path).await.with_context(|| format!("cannot read {}", path.display()))?;
    Ok(server.upload_output_as(host_token, replica_id, sha256, bytes.into()).await)
}

/// Drops, at start, the tasks of projects no longer attached: nobody would run or report
/// them. (Tasks past their deadline are dropped by [`Daemon::start_tasks`], at start too.)
fn drop_detached_tasks(state: &mut ClientState, data_dir: &DataDir, contacts: &[Contact]) -> anyhow::Result<()> {
    let attached = |task: &Task| contacts.iter().any(|contact| contact.project.url == task.project_url);
    let dropped: Vec<TaskId> = state.tasks.values().filter(|task| !attached(task)).map(Task::id).collect();
    if dropped.is_empty() {
        return Ok(());
    }
    for id in &dropped {
        tracing::info!(replica.id = id.replica_id, project = %id.project_url, "dropping a task of a detached project");
        state.tasks.remove(id);
    }
    state.save(data_dir)?;
    for id in dropped {
        let _ = std::fs::remove_dir_all(data_dir.task(&id));
    }
    Ok(())
}

/// Holds the data directory's lock for the daemon's lifetime: one daemon per directory.
pub fn lock(data_dir: &DataDir) -> anyhow::Result<std::fs::File> {
    let file = crate::data_dir::open_lock_file(&data_dir.lock_file())?;
    file.try_lock()
        .map_err(|_| anyhow::anyhow!("another wasmgrid daemon is running on {}", data_dir.root().display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use wasmgrid_protocol::api::ReportedOutcome;

    use super::*;

    fn report(replica_id: i64, stderr_bytes: usize) -> ReplicaReport {
        ReplicaReport {
            replica_id,
            outcome: ReportedOutcome::Error { reason: "trap".into() },
            fuel_used: 1,
            run_time_ms: 1,
            exit_status: None,
            stderr: "e".repeat(stderr_bytes),
            instrumentation_version: wasmgrid_sandbox::INSTRUMENTATION_VERSION,
            output: None,
        }
    }

    #[test]
    fn a_report_batch_stays_within_its_bytes_and_count_but_holds_at_least_one() {
        let reports = || (0..100).map(|id| report(id, 4096));
        let by_bytes = report_batch(reports(), 1000, 64 << 10);
        assert!((14..=15).contains(&by_bytes.len()), "{} reports of 4 KiB in 64 KiB", by_bytes.len());
        assert_eq!(report_batch(reports(), 10, usize::MAX).len(), 10);
        assert_eq!(report_batch(reports(), 1000, 1).len(), 1, "one report larger than the limit still goes");
    }
}
