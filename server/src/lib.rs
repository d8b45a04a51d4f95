//! The wasmgrid project server.
//!
//! It hands WebAssembly work units to volunteer hosts, accepts an answer only when enough
//! unrelated volunteers agree, and grants credit for it. Its only state is PostgreSQL and
//! the blob store, so several server processes can share one database.
//!
//! - [`startup`]: `build(config) -> App`, and running it until shutdown.
//! - [`config`]: settings of a server process.
//! - [`database`]: the pool, migrations, the embedded PostgreSQL and test databases.
//! - [`availability`]: whether the database and the blob store are usable, for `/healthz`
//!   and the `Retry-After` of every 503.
//! - [`http`]: shared state, the router, the error type and the extractors.
//! - [`accounts`]: volunteer accounts and hosts, their secrets and authentication.
//! - [`publishers`]: the scientists who own apps and batches, and their tokens.
//! - [`secrets`]: the bearer secrets of the API, stored hashed.
//! - [`signing`]: publishers' signing keys and module signatures, which clients pin.
//! - [`rate_limit`]: attempts counted per key (an address, a name) over a window.
//! - [`text`]: text from outside, checked before it is stored or shown.
//! - [`work_fetch`]: the scheduler request at the HTTP edge: reports in, replicas out.
//! - [`work_unit`]: a work unit's life: claims, reports, deadlines, cancellation, and the
//!   decisions each event leads to.
//! - [`validator`]: which outputs agree, and when a canonical result exists.
//! - [`credit`]: what a valid result earns, and the running totals.
//! - [`trust`]: per-host quotas that shrink on errors and grow on valid results.
//! - [`blobs`]: content-addressed modules, inputs and outputs.
//! - [`publishing`]: apps, versions, batches and work units, and the publishing API.
//! - [`sweeps`]: background work: missed deadlines, credit folding, unreported uploads.
//! - [`background`]: what every background loop shares: backoff and quiet failures.
//! - [`stats`]: the public statistics (leaderboards, users, teams, hosts, status), as JSON.
//! - [`web`]: the public web pages built on them.
//! - [`openapi`]: the OpenAPI document of the JSON API, generated from the handlers.
//! - [`metrics`]: Prometheus metrics, on a listener of their own.
//! - [`admin`]: the operator's commands: tokens, bans, the project's status.

pub mod accounts;
pub mod admin;
pub mod availability;
pub mod background;
pub mod blobs;
pub mod config;
pub mod credit;
pub mod database;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod publishers;
pub mod publishing;
pub mod rate_limit;
pub mod secrets;
pub mod signing;
pub mod startup;
pub mod stats;
pub mod sweeps;
pub mod text;
pub mod trust;
pub mod validator;
pub mod web;
pub mod work_fetch;
pub mod work_unit;

pub use config::{SchedulerConfig, ServerConfig};
pub use startup::{App, build};
