//! Checking new work against the publishers' keys this volunteer pinned, before any of it is
//! downloaded or run (see [`crate::pinned_keys`]).

use std::collections::{HashMap, HashSet};

use wasmgrid_protocol::api::{Assignment, ReplicaReport, ReportedOutcome};
use wasmgrid_protocol::signing::ProjectKeys;

use crate::api::ServerClient;
use crate::data_dir::DataDir;
use crate::pinned_keys::{Check, KeyStore, PinnedKeys, unendorsed_change};

/// What the check decided about a reply's new assignments.
#[derive(Debug, Default)]
pub struct Verdicts {
    /// Refused, with the reason the server is told.
    pub refused: HashMap<i64, String>,
    /// Not decided now (the project's keys could not be read): left out, so that the server
    /// sends them again with the next request, as replicas this host does not hold.
    pub deferred: HashSet<i64>,
}

/// Checks `assignments` (those not held already) of the project at `url` against its pinned
/// keys: pins the keys of the project on first use, follows key changes the pinned keys
/// signed, and refuses the rest.
pub async fn check(
    data_dir: &DataDir,
    server: &ServerClient,
    url: &str,
    assignments: impl Iterator<Item = &Assignment>,
) -> anyhow::Result<Verdicts> {
    let mut verdicts = Verdicts::default();
    let assignments: Vec<&Assignment> = assignments.collect();
    if assignments.is_empty() {
        return Ok(verdicts);
    }
    // Read afresh: `wasmgrid trust` may have changed it while the daemon runs.
    let mut store = KeyStore::load(data_dir)?;
    let mut project_keys: Option<ProjectKeys> = None;
    let mut changed = false;
    if !store.projects.contains_key(url) {
        // Attached before this client pinned keys: trust on first use, now.
        match server.project_keys().await {
            Ok(keys) => {
                store.projects.insert(url.to_owned(), PinnedKeys::first_use(&keys));
                project_keys = Some(keys);
                changed = true;
                tracing::info!(project = url, "pinned the project's publisher keys");
            }
            Err(error) => {
                tracing::warn!(project = url, error = %error, "cannot read the project's keys; new work waits");
                verdicts.deferred.extend(assignments.iter().map(|assignment| assignment.replica_id));
                return Ok(verdicts);
            }
        }
    }
    let pinned = store.projects.get_mut(url).expect("inserted above");
    for assignment in assignments {
        let replica_id = assignment.replica_id;
        match pinned.check(assignment) {
            Check::Run => {}
            Check::PinAndRun { publisher, key } => {
                tracing::info!(project = url, publisher, %key, "pinned a new publisher's key on first use");
                pinned.publishers.insert(publisher, key);
                changed = true;
            }
            Check::KeyChanged { publisher, pinned: old, key } => {
                if project_keys.is_none() {
                    match server.project_keys().await {
                        Ok(keys) => project_keys = Some(keys),
                        Err(error) => {
                            tracing::warn!(project = url, error = %error, "cannot read the project's keys; new work waits");
                            verdicts.deferred.insert(replica_id);
                            continue;
                        }
                    }
                }
                let keys = project_keys.as_ref().expect("read above");
                if pinned.follow(keys, &publisher, &key) {
                    tracing::info!(project = url, publisher, from = %old, to = %key, "followed a signed key change");
                    changed = true;
                } else {
                    verdicts.refused.insert(replica_id, unendorsed_change(&publisher, &old, &key));
                }
            }
            Check::Refuse(reason) => {
                verdicts.refused.insert(replica_id, reason);
            }
        }
    }
    for (replica_id, reason) in &verdicts.refused {
        tracing::warn!(project = url, replica.id = replica_id, reason, "refused to run a module");
    }
    if changed {
        store.save(data_dir)?;
    }
    Ok(verdicts)
}

/// The report of a replica refused for `reason`: nothing ran.
pub fn refusal(replica_id: i64, reason: String) -> ReplicaReport {
    ReplicaReport {
        replica_id,
        outcome: ReportedOutcome::Refused { reason },
        fuel_used: 0,
        run_time_ms: 0,
        exit_status: None,
        stderr: String::new(),
        instrumentation_version: wasmgrid_sandbox::INSTRUMENTATION_VERSION,
    }
}
