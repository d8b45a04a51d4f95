//! Checking new work against the publishers' keys this volunteer pinned, before any of it is
//! downloaded or run (see [`crate::pinned_keys`]).

use std::collections::{HashMap, HashSet};

use wasmgrid_protocol::api::{Assignment, ReplicaReport, ReportedOutcome};
use wasmgrid_protocol::signing::{ProjectKeys, PublicKey};

use crate::api::ServerClient;
use crate::data_dir::DataDir;
use crate::pinned_keys::{Check, KeyStore, PinnedKeys, unendorsed_change};

/// What the check decided about a reply's new assignments.
#[derive(Debug, Default)]
pub struct Verdicts {
    /// Refused, with the reason the server is told.
    pub refused: HashMap<i64, String>,
    /// Not decided now (the project's keys could not be read, or the pins could not be):
    /// left out, so that the server sends them again with the next request, as replicas
    /// this host does not hold.
    pub deferred: HashSet<i64>,
}

impl Verdicts {
    /// Every assignment left for later.
    pub fn defer_all<'a>(assignments: impl Iterator<Item = &'a Assignment>) -> Self {
        Self { refused: HashMap::new(), deferred: assignments.map(|assignment| assignment.replica_id).collect() }
    }
}

/// A pin the check adds: `publisher`'s key becomes `key` if it is still `was`.
struct NewPin {
    publisher: String,
    was: Option<PublicKey>,
    key: PublicKey,
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
    let assignments: Vec<&Assignment> = assignments.collect();
    if assignments.is_empty() {
        return Ok(Verdicts::default());
    }
    // Read afresh: `wasmgrid trust` may have changed it while the daemon runs.
    let mut project_keys: Option<ProjectKeys> = None;
    let mut pinned = match KeyStore::load(data_dir)?.projects.remove(url) {
        Some(pinned) => pinned,
        None => {
            // Attached before this client pinned keys: trust on first use, now (unless
            // another writer pinned them meanwhile).
            let keys = match server.project_keys().await {
                Ok(keys) => keys,
                Err(error) => {
                    tracing::warn!(project = url, error = %error, "cannot read the project's keys; new work waits");
                    return Ok(Verdicts::defer_all(assignments.into_iter()));
                }
            };
            let first_use = PinnedKeys::first_use(&keys);
            project_keys = Some(keys);
            KeyStore::update(data_dir, |store| store.projects.entry(url.to_owned()).or_insert(first_use).clone())?
        }
    };
    let mut verdicts = Verdicts::default();
    let mut new_pins: Vec<NewPin> = Vec::new();
    for assignment in assignments {
        let replica_id = assignment.replica_id;
        match pinned.check(assignment) {
            Check::Run => {}
            Check::PinAndRun { publisher, key } => {
                tracing::info!(project = url, publisher, %key, "pinned a new publisher's key on first use");
                pinned.publishers.insert(publisher.clone(), key);
                new_pins.push(NewPin { publisher, was: None, key });
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
                match pinned.follow(keys, &publisher, &key) {
                    Some(followed) => {
                        if followed {
                            tracing::info!(project = url, publisher, from = %old, to = %key, "followed a signed key change");
                            new_pins.push(NewPin { publisher, was: Some(old), key });
                        }
                    }
                    None => {
                        verdicts.refused.insert(replica_id, unendorsed_change(&publisher, &old, &key));
                    }
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
    let require_signatures = pinned.require_signatures;
    if !new_pins.is_empty() || project_keys.is_some() {
        KeyStore::update(data_dir, |store| {
            let Some(stored) = store.projects.get_mut(url) else { return };
            // Only stricter: another writer's choice stands otherwise.
            stored.require_signatures |= require_signatures;
            for pin in new_pins {
                if stored.publishers.get(&pin.publisher) == pin.was.as_ref() {
                    stored.publishers.insert(pin.publisher, pin.key);
                }
            }
        })?;
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
        output: None,
    }
}
