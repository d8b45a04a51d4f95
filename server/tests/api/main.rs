//! Integration tests of the server: a real server and a real PostgreSQL (a fresh database
//! per test), driven through the real client library.

mod adaptive;
mod administration;
mod bad_input;
mod blobs;
mod cheating;
mod claiming;
mod concurrency;
mod contribute;
mod credit;
mod embedded;
mod helpers;
mod idempotency;
mod inline_outputs;
mod lost_replies;
mod networks;
mod object_store;
mod observability;
mod openapi;
mod publishers;
mod quotas;
mod registration;
mod retention;
mod signing;
mod state_machine;
mod uploads;
mod web;
mod web_accounts;
