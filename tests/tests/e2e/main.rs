//! End to end: the real `wasmgrid-server` binary on a real PostgreSQL, real `wasmgrid`
//! volunteer daemons, real Wasm modules.

mod browser;
mod browser_flow;
mod cache;
mod checkpoints;
mod connections;
mod contact;
mod contribute;
mod daemon;
mod demo;
mod exec;
mod failover;
mod faults;
mod harness;
mod inline_outputs;
mod networks;
mod openapi;
mod packaging;
mod projects;
mod publishing;
mod settings;
mod several_servers;
mod signing;
mod suspension;
mod tls;
mod transport;
mod validators;
