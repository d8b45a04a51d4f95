//! Request and response bodies of the publishing API, used by scientists (`wasmgrid app`,
//! `wasmgrid batch`) with `Authorization: Bearer <publisher token>`.
//!
//! - `POST /apps`, `GET /apps`, `GET /apps/{name}`: apps.
//! - `POST /apps/{name}/versions` with the module as the body: a new version.
//! - `POST /files/missing`, `PUT /files/{sha256}`: inputs and validator modules, uploaded
//!   once by hash.
//! - `POST /batches`, `POST /batches/{id}/work-units` (in chunks, idempotent by work unit
//!   name), `POST /batches/{id}/close`: submitting.
//! - `GET /batches`, `GET /batches/{id}`, `GET /batches/{id}/results`,
//!   `POST /batches/{id}/cancel`: following a batch and collecting its outputs.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Sha256Hash;
use crate::api::{BlobRef, RunLimits};

/// The largest module `POST /apps/{name}/versions` accepts.
pub const MAX_MODULE_BYTES: u64 = 64 * 1024 * 1024;
/// The largest input file `PUT /files/{sha256}` accepts.
pub const MAX_INPUT_BYTES: u64 = 1024 * 1024 * 1024;
/// Most hashes one `POST /files/missing` may ask about.
pub const MAX_MISSING_QUERY: usize = 10_000;
/// Most work units one `POST /batches/{id}/work-units` may carry (the body limit of 1 MiB
/// may stop a chunk sooner).
pub const MAX_WORK_UNITS_PER_CHUNK: usize = 5_000;
/// Most failures listed in a batch status; the total is always given.
pub const MAX_LISTED_FAILURES: usize = 100;

/// How an app decides that two outputs agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ValidatorSpec {
    /// Byte-for-byte equal outputs (the sandbox is deterministic, so this is the default).
    Bitwise,
    /// A validator module, uploaded beforehand with `PUT /files/{sha256}`: a WASI command
    /// that finds the two outputs unpacked in `/input/a` and `/input/b` and exits with 0
    /// when they are equivalent, 1 when not.
    Wasm { module_sha256: Sha256Hash },
}

/// `POST /apps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateAppRequest {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"))]
    pub name: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::paragraph))]
    pub description: String,
    #[serde(default = "bitwise")]
    pub validator: ValidatorSpec,
    /// Whether the replicas of one work unit go to hosts in different networks (IPv4 /24,
    /// IPv6 /48), so that one person's accounts behind one address cannot fill a quorum.
    /// Only an app whose volunteers share a network turns it off; a server run as a private
    /// grid ignores it.
    #[serde(default = "yes")]
    pub distinct_networks: bool,
    /// Adaptive replication: a host with a long run of checked valid results for the app's
    /// version may be given a work unit alone, checked at random; once a host is caught
    /// returning a wrong result, the results it had accepted on trust are checked again.
    #[serde(default)]
    pub adaptive_replication: bool,
}

fn yes() -> bool {
    true
}

fn bitwise() -> ValidatorSpec {
    ValidatorSpec::Bitwise
}

/// An app as its publisher sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppInfo {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub validator: ValidatorSpec,
    /// See [`CreateAppRequest::distinct_networks`].
    pub distinct_networks: bool,
    /// See [`CreateAppRequest::adaptive_replication`].
    #[serde(default)]
    pub adaptive_replication: bool,
    /// The newest version; work units submitted now use it.
    pub latest_version: Option<AppVersionInfo>,
    pub created_at: DateTime<Utc>,
}

/// `POST /apps/{name}/versions` answers with this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppVersionInfo {
    pub version: i32,
    pub module_sha256: Sha256Hash,
    pub module_bytes: u64,
}

/// `POST /files/missing`: which of these blobs does the server lack?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MissingFilesRequest {
    #[cfg_attr(feature = "openapi", schema(max_items = 10000))]
    pub sha256: Vec<Sha256Hash>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MissingFilesResponse {
    pub missing: Vec<Sha256Hash>,
}

/// `PUT /files/{sha256}` answers with this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileStored {
    pub sha256: Sha256Hash,
    pub bytes: u64,
}

/// `POST /batches`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateBatchRequest {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"))]
    pub app: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::batch_name))]
    pub name: String,
    /// Show the name on the project's public status page; without it the page says
    /// "batch N".
    #[serde(default)]
    pub public: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchCreated {
    pub batch_id: i64,
}

/// How each work unit of a chunk is replicated, validated and limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubmitPolicy {
    /// Agreeing successful replicas needed (a strict majority of them must agree).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub quorum: u32,
    /// Replicas created at first.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub replicas: u32,
    /// Failed replicas at which a work unit fails.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub max_errors: u32,
    /// Replicas, of every outcome, that may ever be created for one work unit.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub max_total: u32,
    /// Time a volunteer has to return a replica.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 31536000))]
    pub deadline_seconds: u64,
    pub limits: RunLimits,
}

/// One work unit to create: its standard input and input files are uploaded blobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkUnitSubmission {
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::file_name))]
    pub name: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::arguments))]
    pub args: Vec<String>,
    #[serde(default)]
    pub stdin: Option<Sha256Hash>,
    /// Files of the read-only input directory, by name.
    #[serde(default)]
    pub files: BTreeMap<String, Sha256Hash>,
}

/// `POST /batches/{id}/work-units`: one chunk. Sending a chunk again is harmless: work units
/// whose names the batch already has are left as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddWorkUnitsRequest {
    pub policy: SubmitPolicy,
    #[cfg_attr(feature = "openapi", schema(max_items = 5000))]
    pub work_units: Vec<WorkUnitSubmission>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkUnitsAdded {
    pub created: u64,
    /// Already in the batch from an earlier attempt.
    pub existing: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Work units are still being submitted.
    Open,
    /// Submitted; some work units are not finished.
    InProgress,
    /// Every work unit is validated or failed.
    Done,
    Cancelled,
}

/// Work units per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkUnitCounts {
    pub active: u64,
    pub validated: u64,
    pub failed: u64,
}

impl WorkUnitCounts {
    pub fn total(&self) -> u64 {
        self.active + self.validated + self.failed
    }
}

/// How a batch's finished work units were checked (see adaptive replication in
/// [`CreateAppRequest::adaptive_replication`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckCounts {
    /// Validated by a quorum of hosts that agree.
    pub checked: u64,
    /// Accepted on one trusted host's word, unchecked.
    pub on_trust: u64,
    /// Accepted on trust, and being checked again since its host was caught cheating.
    pub rechecking: u64,
    /// Accepted on trust, then confirmed by other hosts.
    pub confirmed: u64,
    /// Accepted on trust, then found wrong and replaced (by other hosts' result, or by a
    /// failure when they could not reproduce it).
    pub corrected: u64,
}

/// Replicas of a batch per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaCounts {
    pub unsent: u64,
    pub in_progress: u64,
    pub over: u64,
}

/// A work unit that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkUnitFailure {
    pub name: String,
    pub reason: String,
}

/// `GET /batches/{id}` (and the answer to `close` and `cancel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchStatus {
    pub id: i64,
    pub app: String,
    pub name: String,
    pub state: BatchState,
    pub work_units: WorkUnitCounts,
    pub replicas: ReplicaCounts,
    /// How the finished work units were checked.
    #[serde(default)]
    pub checks: CheckCounts,
    /// Finished work units (validated or failed) over all work units; 0 for an empty batch.
    pub fraction_done: f64,
    /// The first [`MAX_LISTED_FAILURES`] failed work units, by name.
    pub failures: Vec<WorkUnitFailure>,
    /// Times the app's validator module failed (trapped, ran out of fuel...) on this batch's
    /// outputs; each failure counted the two outputs as different.
    pub validator_failures: u64,
    /// The newest validator failures, with the work unit they concern.
    pub recent_validator_failures: Vec<WorkUnitFailure>,
    pub created_at: DateTime<Utc>,
    /// When the batch's inputs and outputs were deleted (the project keeps them for a set
    /// time after the batch ends, or until its publisher deletes it); its results list
    /// stays, and downloads of its files answer 410 Gone.
    #[serde(default)]
    pub files_deleted_at: Option<DateTime<Utc>>,
}

/// One finished work unit in `GET /batches/{id}/results`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkUnitResult {
    pub name: String,
    /// The canonical output (a tar archive of `stdout` and `files/...`) of a validated work
    /// unit.
    pub output: Option<BlobRef>,
    /// Why a failed work unit failed.
    pub failure_reason: Option<String>,
    /// Whether the result rests on one trusted host's word, unchecked.
    #[serde(default)]
    pub on_trust: bool,
    /// When the result changed after it was first given: it had been accepted on trust, and
    /// other hosts found it wrong (collect it again).
    #[serde(default)]
    pub changed_at: Option<DateTime<Utc>>,
}

/// `GET /batches/{id}/results?after=NAME&limit=N`: finished work units in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultsPage {
    pub results: Vec<WorkUnitResult>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next_after: Option<String>,
}

/// Most results one page holds.
pub const MAX_RESULTS_PAGE: usize = 1000;

/// Longest work unit or input file name, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// Why `name` cannot name a work unit or an input file, if it cannot. Names become folder
/// and file names on volunteers' and publishers' machines (results are downloaded into a
/// folder per work unit), on any operating system, so they must be plain, portable names.
pub fn name_problem(name: &str) -> Option<&'static str> {
    const RESERVED: [&str; 4] = ["CON", "PRN", "AUX", "NUL"];
    let stem = name.split('.').next().unwrap_or_default().to_ascii_uppercase();
    let numbered_device =
        (stem.starts_with("COM") || stem.starts_with("LPT")) && stem.len() == 4 && stem.as_bytes()[3].is_ascii_digit();
    if name.is_empty() {
        Some("a name must not be empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("a name must be at most 200 bytes")
    } else if name.chars().any(|c| c.is_control() || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|'))
    {
        Some("a name must not contain control characters or any of / \\ : * ? \" < > |")
    } else if name.starts_with('.') || name.ends_with('.') || name.ends_with(' ') {
        Some("a name must not start with '.' or end with '.' or a space")
    } else if RESERVED.contains(&stem.as_str()) || numbered_device {
        Some("a name must not be a reserved device name (CON, NUL, COM1...)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::name_problem;

    #[test]
    fn plain_names_pass_and_unsafe_ones_do_not() {
        for good in ["range-0001", "tile 3", "sim.1", "données"] {
            assert_eq!(name_problem(good), None, "{good}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a\\b", "C:x", "x.", "x ", "nul", "COM1.txt", "a\nb"] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
        assert!(name_problem(&"x".repeat(201)).is_some());
    }
}
