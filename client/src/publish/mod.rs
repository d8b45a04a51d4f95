//! Publishing, for scientists: apps, module versions, batches and their results.
//!
//! - [`commands`]: `wasmgrid app ...` and `wasmgrid batch ...`.
//! - [`client`]: the publishing API, typed.
//! - [`keys`]: `wasmgrid key ...`: the signing key that signs the modules published.
//! - [`jobs`]: a batch described by a folder of inputs or a jobs file.
//! - [`submit`]: uploading inputs and submitting work units in resumable chunks.
//! - [`results`]: downloading validated outputs, verified and resumable.
//! - [`progress`], [`units`]: the progress bar; durations and sizes on the command line.

pub mod client;
pub mod commands;
pub mod jobs;
pub mod keys;
pub mod progress;
pub mod results;
pub mod submit;
pub mod units;
