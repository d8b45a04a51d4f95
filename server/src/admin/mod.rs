//! The operator's commands on a running project's database (`wasmgrid-server token`,
//! `host`, `account`, `status`): each is a function here, and the binary only parses its
//! arguments and prints what comes back.
//!
//! - [`tokens`]: publisher tokens, listed and revoked.
//! - [`bans`]: banning and unbanning hosts and accounts.
//! - [`status`]: the state of the queue and of the volunteers, at a glance.

pub mod bans;
pub mod status;
pub mod tokens;
