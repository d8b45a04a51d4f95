//! Request and response bodies of the JSON API.
//!
//! Volunteer calls authenticate with `Authorization: Bearer <secret>`: the account key for
//! registering a host, the host token for everything a host does afterwards.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Sha256Hash;

/// The body of every error response: a stable machine-readable `code` and a sentence for
/// people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// "ok" when the server can reach its database and has room for uploads,
    /// "unavailable" otherwise (with a 503).
    pub status: String,
    pub version: String,
    /// "ok", or "unavailable" while the server cannot reach its database.
    #[serde(default)]
    pub database: String,
    /// "ok", or "full" while uploads find no room.
    #[serde(default)]
    pub blob_store: String,
}

/// `POST /api/v1/accounts`: create a volunteer account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateAccountRequest {
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::label))]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateAccountResponse {
    pub account_id: i64,
    /// The secret that attaches hosts to this account. Shown once; the server keeps only a
    /// hash of it.
    pub account_key: String,
}

/// `POST /api/v1/hosts`, authenticated by the account key: register one volunteer machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterHostRequest {
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::label))]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::label))]
    pub os: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::label))]
    pub arch: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65536))]
    pub cores: u32,
    #[cfg_attr(feature = "openapi", schema(maximum = 9223372036854775807_i64))]
    pub memory_bytes: u64,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::label))]
    pub client_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterHostResponse {
    pub host_id: i64,
    pub account_id: i64,
    /// The secret this host authenticates every later call with. Shown once.
    pub host_token: String,
}

/// `POST /api/v1/scheduler`, authenticated by the host token: report finished replicas and
/// ask for new ones, in one call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchedulerRequest {
    /// Finished replicas. Reporting one again is harmless: it is acknowledged and changes
    /// nothing.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 1000))]
    pub reports: Vec<ReplicaReport>,
    /// How many new replicas the host wants; 0 only reports.
    #[serde(default)]
    pub want_replicas: u32,
    /// Every replica of this project the host holds (waiting, running, or finished and not
    /// yet acknowledged), or `None` to say nothing about them. With the list, the server
    /// sends again any replica it handed this host that is not on it (a reply lost after
    /// the server committed it), and aborts any on it the host should not run.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 50000))]
    pub held_replicas: Option<Vec<i64>>,
}

/// The most replicas a scheduler request may list as held.
pub const MAX_HELD_REPLICAS: usize = 50_000;

/// What a host says about one replica it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaReport {
    pub replica_id: i64,
    pub outcome: ReportedOutcome,
    /// Fuel (deterministic instruction count) the run consumed.
    pub fuel_used: u64,
    /// Wall-clock run time, for the volunteer's and the scientist's information only.
    pub run_time_ms: u64,
    /// The module's exit status, when it exited.
    #[serde(default)]
    pub exit_status: Option<i32>,
    /// The end of the module's standard error; the server keeps at most
    /// [`MAX_STDERR_BYTES`] of it.
    #[serde(default)]
    pub stderr: String,
    /// The version of the instrumentation pass the module ran through (0 for clients from
    /// before the pass, whose engine settings made runs deterministic). Outputs and fuel are
    /// only compared between replicas of one version.
    #[serde(default)]
    pub instrumentation_version: u32,
    /// The output itself, for a success whose output is at most the server's
    /// [`SchedulerReply::inline_output_limit`]: the report then needs no upload before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Byte))]
    pub output: Option<InlineOutput>,
}

/// A replica's output carried inside its report, in base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineOutput(pub Vec<u8>);

impl Serialize for InlineOutput {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for InlineOutput {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD.decode(text.as_bytes()).map(Self).map_err(serde::de::Error::custom)
    }
}

/// How much of a replica's standard error the server keeps.
pub const MAX_STDERR_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReportedOutcome {
    /// The run finished and its output was uploaded under `output_hash` beforehand.
    Success { output_hash: Sha256Hash, output_bytes: u64 },
    /// The run failed on the host: a trap, a broken limit, a non-zero exit...
    Error { reason: String },
    /// This host cannot run the module (the engine's compiler failed or panicked on it).
    /// That says nothing about the work unit or the module: the replica goes to another host
    /// as if this one had never answered.
    HostError { reason: String },
    /// The host would not run the module: its signature does not verify under the keys the
    /// volunteer pinned (see [`crate::signing`]). The replica goes to another host; this
    /// one is sent no more work of the app version until its volunteer trusts its key.
    Refused { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchedulerReply {
    /// Replica ids whose reports are now safely stored; the host may forget them.
    pub acknowledged: Vec<i64>,
    /// New work, at most one replica per work unit, and replicas sent again because the
    /// host's list of what it holds lacked them.
    pub assignments: Vec<Assignment>,
    /// Replicas the host holds that are no longer needed and should be abandoned.
    pub abort: Vec<i64>,
    /// Seconds the host must wait before its next scheduler request.
    pub retry_after_seconds: u64,
    /// Outputs up to this many bytes may travel inside their reports
    /// ([`ReplicaReport::output`]) instead of being uploaded first; 0: none may.
    #[serde(default)]
    pub inline_output_limit: u64,
}

/// A link to a content-addressed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlobRef {
    pub sha256: Sha256Hash,
    pub bytes: u64,
    /// Where to download it: relative to the server's base URL.
    pub url: String,
}

impl BlobRef {
    pub fn new(sha256: Sha256Hash, bytes: u64) -> Self {
        let url = blob_path(&sha256);
        Self { sha256, bytes, url }
    }
}

/// The path a blob is served under.
pub fn blob_path(hash: &Sha256Hash) -> String {
    format!("{}/blobs/{hash}", crate::API_PREFIX)
}

/// A replica's output is a tar archive of its standard output and its output files, so the
/// uploaded blob may exceed the work unit's output limit (which bounds the content) by this
/// much, for the archive's headers.
pub const OUTPUT_ARCHIVE_ALLOWANCE: u64 = 64 * 1024;

/// The path a replica's output is uploaded to.
pub fn output_upload_path(replica_id: i64, hash: &Sha256Hash) -> String {
    format!("{}/replicas/{replica_id}/output/{hash}", crate::API_PREFIX)
}

/// A file placed in the run's read-only input directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InputFile {
    pub name: String,
    pub blob: BlobRef,
}

/// Per-run limits the client enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunLimits {
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 9223372036854775807_i64))]
    pub fuel: u64,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 9223372036854775807_i64))]
    pub memory_bytes: u64,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 9223372036854775807_i64))]
    pub output_bytes: u64,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 9223372036854775807_i64))]
    pub wall_time_seconds: u64,
}

impl RunLimits {
    /// The limits of a work unit whose publisher names none (and of `wasmgrid exec`).
    pub const DEFAULT: Self = Self {
        fuel: 1_000_000_000_000,
        memory_bytes: 256 * 1024 * 1024,
        output_bytes: 64 * 1024 * 1024,
        wall_time_seconds: 3600,
    };
}

/// Fuel per unit of credit: about a billion Wasm instructions. A validated replica earns
/// the fuel its work unit took, in these units (see the server's `credit` module).
pub const FUEL_PER_CREDIT: f64 = 1e9;

/// The credit a run that used `fuel` earns once validated.
pub fn credit_for(fuel: u64) -> f64 {
    fuel as f64 / FUEL_PER_CREDIT
}

/// One replica handed to a host: everything it needs to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignment {
    pub replica_id: i64,
    pub work_unit_id: i64,
    pub work_unit_name: String,
    pub module: BlobRef,
    pub args: Vec<String>,
    pub stdin: Option<BlobRef>,
    pub inputs: Vec<InputFile>,
    pub limits: RunLimits,
    /// Seeds the module's random numbers, identically on every replica of the work unit.
    pub seed: u64,
    /// Report by then, or the replica is given to someone else.
    pub deadline: DateTime<Utc>,
    /// The publisher of the module's app, whose pinned key must have signed it.
    #[serde(default)]
    pub publisher: String,
    /// The publisher's signature of the module, when it signs its modules.
    #[serde(default)]
    pub module_signature: Option<crate::signing::ModuleSignature>,
}

/// `PUT /api/v1/replicas/{id}/output/{sha256}` answers with this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutputUploaded {
    pub sha256: Sha256Hash,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_outcome_is_tagged_by_status() {
        let success = ReportedOutcome::Success { output_hash: Sha256Hash::of(b"out"), output_bytes: 3 };
        let json = serde_json::to_value(&success).unwrap();
        assert_eq!(json["status"], "success");
        assert_eq!(json["output_hash"], Sha256Hash::of(b"out").to_hex());
        let error: ReportedOutcome = serde_json::from_str(r#"{"status":"error","reason":"fuel exhausted"}"#).unwrap();
        assert_eq!(error, ReportedOutcome::Error { reason: "fuel exhausted".into() });
    }

    #[test]
    fn an_inline_output_travels_as_base64_and_is_left_out_when_absent() {
        let report = ReplicaReport {
            replica_id: 7,
            outcome: ReportedOutcome::Success { output_hash: Sha256Hash::of(b"\0out\xff"), output_bytes: 5 },
            fuel_used: 1,
            run_time_ms: 1,
            exit_status: Some(0),
            stderr: String::new(),
            instrumentation_version: 1,
            output: Some(InlineOutput(b"\0out\xff".to_vec())),
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["output"], "AG91dP8=");
        assert_eq!(serde_json::from_value::<ReplicaReport>(json).unwrap(), report);
        let without = serde_json::to_value(ReplicaReport { output: None, ..report }).unwrap();
        assert!(without.get("output").is_none(), "older servers never see the field");
        let malformed = r#"{"replica_id":1,"outcome":{"status":"error","reason":"x"},"fuel_used":0,"run_time_ms":0,"output":"not base64!"}"#;
        assert!(serde_json::from_str::<ReplicaReport>(malformed).is_err());
    }

    #[test]
    fn scheduler_request_fields_default_to_empty() {
        let request: SchedulerRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(request, SchedulerRequest::default());
    }
}
