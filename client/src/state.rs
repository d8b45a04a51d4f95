//! The client's tasks, kept on disk so that no finished result is ever lost.
//!
//! Every change is written atomically before anything depends on it: a new assignment
//! before it runs, a finished result before it is uploaded or reported, and a task is
//! forgotten only after the server acknowledged its report. A running task is stored as
//! pending: after a crash it simply runs again, from its scratch directory (where a module
//! may keep checkpoints).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{Assignment, ReplicaReport};

use crate::data_dir::{DataDir, write_atomically};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub project_url: String,
    pub assignment: Assignment,
    pub phase: Phase,
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientState {
    /// Keyed by replica id.
    pub tasks: BTreeMap<i64, Task>,
}

impl ClientState {
    pub fn load(data_dir: &DataDir) -> anyhow::Result<Self> {
        match std::fs::read(data_dir.state_file()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| anyhow::anyhow!("{} is damaged: {error}", data_dir.state_file().display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(error) => Err(error.into()),
        }
    }

    pub fn save(&self, data_dir: &DataDir) -> anyhow::Result<()> {
        write_atomically(&data_dir.state_file(), &serde_json::to_vec(self)?)
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
