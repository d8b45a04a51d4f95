//! The client's tasks, kept on disk so that no finished result is ever lost.
//!
//! Every change is on disk before anything depends on it: a new assignment before it runs,
//! a finished result before it is uploaded or reported, and a task is forgotten only after
//! the server acknowledged its report. A running task is stored as pending: after a crash it
//! simply runs again, from its scratch directory (where a module may keep checkpoints).
//!
//! Two files hold it, so that finishing a task does not rewrite every other one:
//! - the state file, a snapshot of every task, replaced atomically when tasks arrive or
//!   leave (once per exchange with a server, however many tasks it carries);
//! - the journal, one JSON line per task that finished since, appended and synced.
//!
//! Loading replays the journal over the snapshot. Saving a snapshot empties the journal
//! afterwards; a crash in between replays entries the snapshot already holds, which changes
//! nothing, and a torn last line (a crash mid-append) was never acknowledged and is skipped.
//! The daemon saves a snapshot as it starts, so nothing is ever appended after a torn line.

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{Assignment, ReplicaReport};

use anyhow::Context;

use crate::data_dir::{DataDir, write_atomically};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub project_url: String,
    pub assignment: Assignment,
    pub phase: Phase,
}

impl Task {
    pub fn id(&self) -> TaskId {
        TaskId { project_url: self.project_url.clone(), replica_id: self.assignment.replica_id }
    }
}

/// A task on this client: its project and the replica id its server gave it. Replica ids
/// are only unique within one server; two projects hand out the same ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId {
    pub project_url: String,
    pub replica_id: i64,
}

impl TaskId {
    pub fn new(project_url: &str, replica_id: i64) -> Self {
        Self { project_url: project_url.to_owned(), replica_id }
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "replica {} of {}", self.replica_id, self.project_url)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for a slot, or interrupted: runs (again) when a slot is free.
    Pending,
    /// Finished: the report waits to be sent, after the output (if any) is uploaded.
    Finished { report: ReplicaReport, output: Option<StoredOutput>, uploaded: bool },
}

/// A finished task's output archive, in its task directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredOutput {
    pub sha256: Sha256Hash,
    pub bytes: u64,
}

/// One line of the journal: a task's new phase.
#[derive(Debug, Serialize, Deserialize)]
struct JournalEntry {
    task: TaskId,
    phase: Phase,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientState {
    /// Stored as a list: JSON maps take only string keys.
    #[serde(with = "tasks_as_list")]
    pub tasks: BTreeMap<TaskId, Task>,
}

mod tasks_as_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Task, TaskId};

    pub fn serialize<S: Serializer>(tasks: &BTreeMap<TaskId, Task>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(tasks.values())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<TaskId, Task>, D::Error> {
        let tasks = Vec::<Task>::deserialize(deserializer)?;
        Ok(tasks.into_iter().map(|task| (task.id(), task)).collect())
    }
}

impl ClientState {
    pub fn load(data_dir: &DataDir) -> anyhow::Result<Self> {
        let mut state: Self = match std::fs::read(data_dir.state_file()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| anyhow::anyhow!("{} is damaged: {error}", data_dir.state_file().display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(error) => return Err(error.into()),
        };
        let journal = match std::fs::read(data_dir.state_journal()) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(state),
            Err(error) => return Err(error.into()),
        };
        // Bytes, not text: a torn line may end inside a character.
        for line in journal.split(|byte| *byte == b'\n').filter(|line| !line.is_empty()) {
            let Ok(entry) = serde_json::from_slice::<JournalEntry>(line) else {
                tracing::warn!("skipping a torn entry at the end of {}", data_dir.state_journal().display());
                break;
            };
            // A task the snapshot no longer has was acknowledged after it finished.
            if let Some(task) = state.tasks.get_mut(&entry.task) {
                task.phase = entry.phase;
            }
        }
        Ok(state)
    }

    /// Writes a snapshot of every task, then empties the journal it includes.
    pub fn save(&self, data_dir: &DataDir) -> anyhow::Result<()> {
        write_atomically(&data_dir.state_file(), &serde_json::to_vec(self)?)?;
        match std::fs::remove_file(data_dir.state_journal()) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
            _ => Ok(()),
        }
    }

    /// Sets a task's phase and appends the change to the journal, synced before returning.
    pub fn record_phase(&mut self, data_dir: &DataDir, id: &TaskId, phase: Phase) -> anyhow::Result<()> {
        let Some(task) = self.tasks.get_mut(id) else { return Ok(()) };
        let mut line = serde_json::to_vec(&JournalEntry { task: id.clone(), phase: phase.clone() })?;
        line.push(b'\n');
        let path = data_dir.state_journal();
        let mut journal = crate::data_dir::private_file()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if journal.metadata()?.len() == 0 {
            // A new journal: its name must survive a crash too.
            crate::data_dir::sync_directory(data_dir.root())?;
        }
        journal.write_all(&line)?;
        journal.sync_data()?;
        task.phase = phase;
        Ok(())
    }

    pub fn pending(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().filter(|task| task.phase == Phase::Pending)
    }

    pub fn finished_for<'a>(&'a self, project_url: &'a str) -> impl Iterator<Item = &'a Task> {
        self.tasks
            .values()
            .filter(move |task| task.project_url == project_url && matches!(task.phase, Phase::Finished { .. }))
    }

    pub fn count_for(&self, project_url: &str) -> usize {
        self.tasks.values().filter(|task| task.project_url == project_url).count()
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use wasmgrid_protocol::api::{BlobRef, ReportedOutcome, RunLimits};

    use super::*;

    fn task(replica_id: i64) -> Task {
        let blob = BlobRef { sha256: Sha256Hash::of(b"module"), bytes: 6, url: "/blobs/module".into() };
        Task {
            project_url: "http://127.0.0.1:1".into(),
            assignment: Assignment {
                replica_id,
                work_unit_id: replica_id,
                work_unit_name: format!("wu-{replica_id}"),
                module: blob,
                args: Vec::new(),
                stdin: None,
                inputs: Vec::new(),
                limits: RunLimits { fuel: 1, memory_bytes: 1, output_bytes: 1, wall_time_seconds: 1 },
                seed: 1,
                deadline: Utc::now(),
                publisher: "publisher".into(),
                module_signature: None,
            },
            phase: Phase::Pending,
        }
    }

    fn id(replica_id: i64) -> TaskId {
        TaskId::new("http://127.0.0.1:1", replica_id)
    }

    fn finished(replica_id: i64) -> Phase {
        let report = ReplicaReport {
            replica_id,
            outcome: ReportedOutcome::Error { reason: "trap".into() },
            fuel_used: 7,
            run_time_ms: 1,
            exit_status: None,
            stderr: String::new(),
            instrumentation_version: wasmgrid_sandbox::INSTRUMENTATION_VERSION,
            output: None,
        };
        Phase::Finished { report, output: None, uploaded: true }
    }

    fn data_dir() -> (tempfile::TempDir, DataDir) {
        let root = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open(root.path().to_path_buf()).unwrap();
        (root, data_dir)
    }

    #[test]
    fn finished_phases_survive_through_the_journal_and_a_snapshot_absorbs_them() {
        let (_root, data_dir) = data_dir();
        let mut state = ClientState::default();
        state.tasks.extend([task(1), task(2)].map(|task| (task.id(), task)));
        state.save(&data_dir).unwrap();
        state.record_phase(&data_dir, &id(2), finished(2)).unwrap();

        let loaded = ClientState::load(&data_dir).unwrap();
        assert_eq!(loaded.tasks[&id(1)].phase, Phase::Pending);
        assert_eq!(loaded.tasks[&id(2)].phase, finished(2));

        state.save(&data_dir).unwrap();
        assert!(!data_dir.state_journal().exists(), "the snapshot holds the journal's entries");
        assert_eq!(ClientState::load(&data_dir).unwrap().tasks[&id(2)].phase, finished(2));
    }

    #[test]
    fn a_torn_last_entry_and_entries_for_forgotten_tasks_are_skipped() {
        let (_root, data_dir) = data_dir();
        let mut state = ClientState::default();
        state.tasks.extend([task(1), task(2)].map(|task| (task.id(), task)));
        state.save(&data_dir).unwrap();
        state.record_phase(&data_dir, &id(1), finished(1)).unwrap();
        // Task 2 finished, then its acknowledgement was saved with the journal still there
        // (a crash between the snapshot and emptying the journal).
        state.record_phase(&data_dir, &id(2), finished(2)).unwrap();
        let journal = std::fs::read(data_dir.state_journal()).unwrap();
        state.tasks.remove(&id(2));
        write_atomically(&data_dir.state_file(), &serde_json::to_vec(&state).unwrap()).unwrap();
        // Torn inside a two-byte character of a module's standard error.
        let fragment = br#"{"task":{"project_url":"http://127.0.0.1:1","replica_id":1},"stderr":""#;
        let torn = [&journal[..], &fragment[..], &[0xC3][..]].concat();
        std::fs::write(data_dir.state_journal(), torn).unwrap();

        let loaded = ClientState::load(&data_dir).unwrap();
        assert_eq!(loaded.tasks.keys().cloned().collect::<Vec<_>>(), vec![id(1)]);
        assert_eq!(loaded.tasks[&id(1)].phase, finished(1));
    }
}
