//! Durations and sizes as people type them on the command line (shared with the server).

pub use wasmgrid_protocol::units::{parse_bytes, parse_duration};
