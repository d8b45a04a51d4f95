//! End-to-end harness: the real server binary, real PostgreSQL and real clients, shared by
//! the end-to-end tests and the benchmark programs.

pub mod bench;
pub mod scientist;
pub mod webdriver;
