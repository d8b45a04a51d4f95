//! Wire types shared by the wasmgrid server and its clients.
//!
//! Everything that crosses the network is defined here, once, so the two ends cannot drift:
//! - [`hash`]: content addresses (SHA-256 in lowercase hex) and the hashing helpers.
//! - [`api`]: request and response bodies of the JSON API under [`API_PREFIX`].
//! - [`publish`]: the publishing API that scientists use.
//! - [`stats`]: the public statistics behind the web pages.
//! - [`signing`]: publishers' keys and module signatures, which volunteers' clients pin.
//! - [`units`]: durations and sizes as people type them on the command line.
//!
//! With the `openapi` feature (the server's), every type also derives its OpenAPI schema,
//! from which the server generates its API document; the client leaves it out.
//!
//! Times are RFC 3339 in UTC; ids are 64-bit integers assigned by the server.

pub mod api;
pub mod hash;
#[cfg(feature = "openapi")]
mod openapi;
pub mod publish;
pub mod signing;
pub mod stats;
pub mod units;

pub use hash::Sha256Hash;

/// Version of the HTTP API; every route lives under [`API_PREFIX`].
pub const API_VERSION: u32 = 1;

/// Path prefix of every API route.
pub const API_PREFIX: &str = "/api/v1";
