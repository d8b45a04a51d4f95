//! The wasmgrid volunteer client and publishing commands.
//!
//! - [`api`]: the typed HTTP client for the server's API, used by the daemon and by every
//!   command.

pub mod api;
