//! The wasmgrid volunteer client and publishing commands.
//!
//! - [`api`]: the typed HTTP client for the server's API, used by the daemon and by every
//!   command.
//! - [`sandbox`]: runs a work unit's Wasm module deterministically, within hard limits.

pub mod api;
pub mod sandbox;
