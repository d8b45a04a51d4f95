//! The wasmgrid volunteer client and publishing commands.
//!
//! - [`api`]: the typed HTTP client for the server's API.
//! - [`failover`]: a project's several server URLs, and which one requests go to.
//! - [`certificates`]: certificate authorities trusted besides the system's (`--ca-cert`).
//! - [`daemon`]: keeps the slots busy: fetch, stage, run (in `wasmgrid_sandbox`), upload,
//!   report.
//! - [`state`]: the tasks and unreported results, kept on disk across crashes.
//! - [`blob_cache`]: modules and inputs downloaded by hash, verified, evicted LRU.
//! - [`projects`]: attached projects and their secrets.
//! - [`pinned_keys`]: the publishers' keys a volunteer trusts, and which modules run.
//! - [`publish`]: the scientist's side: apps, batches and their results.
//! - [`local_run`]: `wasmgrid exec` and `wasmgrid instrument`, for trying a module locally.
//! - [`settings`]: `client.toml` and the resource limits it sets.
//! - [`status`]: what the daemon is doing, over a local socket.
//! - [`data_dir`]: where everything lives, and atomic file replacement.
//! - [`backoff`], [`host_info`]: retry timing; what this machine is.

pub mod api;
pub mod backoff;
pub mod blob_cache;
pub mod certificates;
pub mod compute_hours;
pub mod control;
pub mod daemon;
pub mod data_dir;
pub mod failover;
pub mod host_info;
pub mod local_run;
pub mod machine;
pub mod pinned_keys;
pub mod projects;
pub mod publish;
pub mod settings;
pub mod state;
pub mod status;
