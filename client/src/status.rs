//! `wasmgrid status`: what the daemon is doing. A running daemon answers over its control
//! socket (see [`crate::control`]) with one JSON document; without a daemon, the same
//! document is built from the state on disk.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::control::{self, Reply, Request};
use crate::data_dir::DataDir;
use crate::projects::Projects;
use crate::state::{ClientState, Phase, TaskId};
use wasmgrid_sandbox::Progress;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub daemon_running: bool,
    pub computing: ComputingStatus,
    pub projects: Vec<ProjectStatus>,
    pub tasks: Vec<TaskStatus>,
}

/// Whether the daemon computes, and the preferences that decide it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComputingStatus {
    /// Why computing is suspended; empty while it goes on.
    pub suspended_because: Vec<String>,
    /// The computing preferences in force, as `key = value`.
    pub preferences: Vec<String>,
    /// What this platform cannot do, and what happens instead.
    pub unsupported_here: Vec<String>,
    /// Other programs' share of all CPUs at the latest reading, in percent.
    pub other_programs_cpu_percent: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectStatus {
    pub url: String,
    /// The project's other URLs, tried in turn when the one in use fails.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// The URL requests go to now (the daemon moves on from one that fails); `None` when no
    /// daemon runs.
    #[serde(default)]
    pub url_in_use: Option<String>,
    pub host_id: i64,
    pub resource_share: f64,
    pub failed_contacts: u32,
    pub next_contact_in_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub replica_id: i64,
    pub work_unit: String,
    pub project: String,
    /// pending, preparing (it has a slot, and its files are being fetched), running, pausing
    /// (asked to pause, not yet held), paused, or finished (waiting to be uploaded and
    /// reported).
    pub state: String,
    /// So far while running (as of the module's latest function call), final once ended.
    pub fuel_used: Option<u64>,
    pub fuel_limit: u64,
    /// The fraction done the module reports while running (see `sandbox::PROGRESS_FILE`);
    /// 1 once finished.
    pub fraction_done: Option<f64>,
    pub elapsed_seconds: f64,
    pub deadline: chrono::DateTime<chrono::Utc>,
    /// For finished tasks: success, or the error.
    pub outcome: Option<String>,
    /// For running tasks: the CPU and I/O priority of the thread that runs it.
    #[serde(default)]
    pub priority: Option<String>,
}

/// A task the daemon is running right now (paused ones included).
#[derive(Debug, Clone)]
pub struct RunningTask {
    pub elapsed: Duration,
    pub progress: Progress,
    pub priority: Option<String>,
    pub pause_requested: bool,
    pub paused: bool,
    /// Its files are staged and the sandbox has it; before, it is still being prepared.
    pub started: bool,
}

impl RunningTask {
    /// What the volunteer sees of a task that holds a slot.
    fn state(&self) -> &'static str {
        match (self.started, self.pause_requested, self.paused) {
            (_, _, true) => "paused",
            (_, true, false) => "pausing",
            (false, false, false) => "preparing",
            (true, false, false) => "running",
        }
    }
}

impl StatusReport {
    /// `running` maps the running tasks to how far they have got.
    pub fn new(
        daemon_running: bool,
        computing: ComputingStatus,
        projects: Vec<ProjectStatus>,
        state: &ClientState,
        running: &HashMap<TaskId, RunningTask>,
    ) -> Self {
        let tasks = state
            .tasks
            .values()
            .map(|task| {
                let run = running.get(&task.id());
                let (state, fuel_used, fraction_done, elapsed, outcome) = match (&task.phase, run) {
                    (Phase::Pending, Some(run)) => (
                        run.state(),
                        Some(run.progress.fuel_used),
                        run.progress.fraction_done,
                        run.elapsed.as_secs_f64(),
                        None,
                    ),
                    (Phase::Pending, None) => ("pending", None, None, 0.0, None),
                    (Phase::Finished { report, .. }, _) => {
                        let outcome = match &report.outcome {
                            wasmgrid_protocol::api::ReportedOutcome::Success { .. } => "success".to_owned(),
                            wasmgrid_protocol::api::ReportedOutcome::Error { reason } => format!("error: {reason}"),
                            wasmgrid_protocol::api::ReportedOutcome::HostError { reason } => {
                                format!("this host cannot run it: {reason}")
                            }
                            wasmgrid_protocol::api::ReportedOutcome::Refused { reason } => {
                                format!("refused: {reason}")
                            }
                        };
                        let elapsed = report.run_time_ms as f64 / 1000.0;
                        ("finished", Some(report.fuel_used), Some(1.0), elapsed, Some(outcome))
                    }
                };
                TaskStatus {
                    replica_id: task.assignment.replica_id,
                    work_unit: task.assignment.work_unit_name.clone(),
                    project: task.project_url.clone(),
                    state: state.to_owned(),
                    fuel_used,
                    fuel_limit: task.assignment.limits.fuel,
                    fraction_done,
                    elapsed_seconds: elapsed,
                    deadline: task.assignment.deadline,
                    outcome,
                    priority: run.and_then(|run| run.priority.clone()),
                }
            })
            .collect();
        Self { daemon_running, computing, projects, tasks }
    }

    /// The status from disk, for when no daemon answers.
    pub fn from_disk(data_dir: &DataDir) -> anyhow::Result<Self> {
        let projects = Projects::load(data_dir)?
            .projects
            .into_iter()
            .map(|project| ProjectStatus {
                url: project.url,
                mirrors: project.mirrors,
                url_in_use: None,
                host_id: project.host_id,
                resource_share: project.resource_share,
                failed_contacts: 0,
                next_contact_in_seconds: 0,
            })
            .collect();
        let computing = ComputingStatus {
            preferences: crate::daemon::suspension::preferences_in_force(&crate::settings::Settings::load(data_dir)?),
            unsupported_here: crate::daemon::suspension::unsupported_here(),
            ..ComputingStatus::default()
        };
        Ok(Self::new(false, computing, projects, &ClientState::load(data_dir)?, &HashMap::new()))
    }

    /// A table for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let daemon = if self.daemon_running { "running" } else { "not running" };
        out.push_str(&format!("daemon: {daemon}\n"));
        if self.daemon_running {
            match self.computing.suspended_because.as_slice() {
                [] => out.push_str("computing: yes\n"),
                reasons => out.push_str(&format!("computing: suspended: {}\n", reasons.join("; "))),
            }
        }
        if !self.computing.preferences.is_empty() {
            out.push_str(&format!("preferences: {}\n", self.computing.preferences.join(", ")));
        }
        for missing in &self.computing.unsupported_here {
            out.push_str(&format!("not on this platform: {missing}\n"));
        }
        if self.projects.is_empty() {
            out.push_str("no project attached (wasmgrid attach <SERVER_URL>)\n");
        }
        for project in &self.projects {
            let mut urls = String::new();
            if !project.mirrors.is_empty() {
                urls += &format!("  mirrors {}", project.mirrors.join(", "));
                if let Some(in_use) = &project.url_in_use {
                    urls += &format!("  using {in_use}");
                }
            }
            out.push_str(&format!(
                "project {}  host {}  share {}{urls}{}\n",
                project.url,
                project.host_id,
                project.resource_share,
                if project.failed_contacts > 0 {
                    format!(
                        "  {} failed contacts, next in {} s",
                        project.failed_contacts, project.next_contact_in_seconds
                    )
                } else {
                    String::new()
                }
            ));
        }
        if self.tasks.is_empty() {
            out.push_str("no tasks\n");
            return out;
        }
        out.push_str(&format!(
            "{:>10}  {:<24} {:<9} {:>8} {:>16} {:>9}  {}\n",
            "replica", "work unit", "state", "progress", "fuel", "time (s)", "outcome"
        ));
        for task in &self.tasks {
            out.push_str(&format!(
                "{:>10}  {:<24} {:<9} {:>8} {:>16} {:>9.1}  {}\n",
                task.replica_id,
                truncate(&task.work_unit, 24),
                task.state,
                task.fraction_done.map_or_else(|| "-".to_owned(), |fraction| format!("{:.1}%", fraction * 100.0)),
                task.fuel_used.map_or_else(|| "-".to_owned(), |fuel| fuel.to_string()),
                task.elapsed_seconds,
                task.outcome.as_deref().unwrap_or("")
            ));
        }
        // Every task runs at the same priority; a refused step shows here.
        if let Some(priority) = self.tasks.iter().find_map(|task| task.priority.as_deref()) {
            out.push_str(&format!("tasks run at {priority}\n"));
        }
        out
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max { text.to_owned() } else { text.chars().take(max - 1).chain(['…']).collect() }
}

/// Asks the running daemon, or reads the state from disk when none answers.
pub async fn query(data_dir: &DataDir) -> anyhow::Result<StatusReport> {
    match control::send(data_dir, &Request::Status).await {
        Ok(Some(Reply::Status(report))) => Ok(*report),
        Ok(Some(Reply::Refused { error })) => anyhow::bail!("the daemon refused: {error}"),
        Ok(Some(Reply::Done { .. })) => anyhow::bail!("the daemon answered something else than its status"),
        // No daemon, or one that does not answer (stopping, or stuck): the state on disk.
        Ok(None) | Err(_) => StatusReport::from_disk(data_dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(started: bool, pause_requested: bool, paused: bool) -> RunningTask {
        let progress = Progress { fuel_used: 0, fraction_done: None };
        RunningTask { elapsed: Duration::ZERO, progress, priority: None, pause_requested, paused, started }
    }

    fn project(mirrors: &[&str], url_in_use: Option<&str>) -> ProjectStatus {
        ProjectStatus {
            url: "https://a.example.org".into(),
            mirrors: mirrors.iter().map(|url| url.to_string()).collect(),
            url_in_use: url_in_use.map(str::to_owned),
            host_id: 7,
            resource_share: 100.0,
            failed_contacts: 0,
            next_contact_in_seconds: 0,
        }
    }

    fn rendered(project: ProjectStatus) -> String {
        let report = StatusReport::new(
            true,
            ComputingStatus::default(),
            vec![project],
            &ClientState::default(),
            &HashMap::new(),
        );
        report.render().lines().find(|line| line.starts_with("project ")).unwrap().to_owned()
    }

    #[test]
    fn a_project_with_mirrors_shows_them_and_the_url_in_use() {
        let line = rendered(project(&["https://b.example.org"], Some("https://b.example.org")));
        assert_eq!(
            line,
            "project https://a.example.org  host 7  share 100  mirrors https://b.example.org  using https://b.example.org"
        );
        let line = rendered(project(&[], Some("https://a.example.org")));
        assert_eq!(line, "project https://a.example.org  host 7  share 100", "one URL: nothing to say");
        let line = rendered(project(&["https://b.example.org"], None));
        assert!(line.ends_with("mirrors https://b.example.org"), "no daemon, no URL in use: {line}");
    }

    #[test]
    fn a_status_from_a_daemon_without_mirrors_still_reads() {
        let json = r#"{"url":"https://a.example.org","host_id":7,"resource_share":100.0,"failed_contacts":0,"next_contact_in_seconds":0}"#;
        let project: ProjectStatus = serde_json::from_str(json).unwrap();
        assert_eq!(project, self::project(&[], None));
    }

    #[test]
    fn a_task_runs_only_once_its_files_are_staged_and_a_pause_shows_either_way() {
        assert_eq!(run(false, false, false).state(), "preparing");
        assert_eq!(run(true, false, false).state(), "running");
        assert_eq!(run(false, true, false).state(), "pausing");
        assert_eq!(run(true, true, false).state(), "pausing");
        assert_eq!(run(true, true, true).state(), "paused");
    }
}
