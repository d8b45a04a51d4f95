//! PostgreSQL's own benchmark on the server's cluster, so that our replicas per second can
//! be quoted as a ratio to what the same cluster on the same machine does for pgbench: a
//! figure that travels between machines, where replicas per second alone do not.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;

/// Transactions per second pgbench measured, by script.
pub struct PgbenchFigures {
    /// `pgbench -N`, simple-update: three updates-or-inserts and a select per transaction.
    pub simple_update_tps: f64,
    /// Plain `pgbench`, TPC-B-like: five statements, two of them contended updates.
    pub tpcb_tps: f64,
    pub clients: u32,
    pub seconds: u64,
}

/// Initialises a pgbench database beside the server's (scale 10: a million accounts) and
/// runs both scripts for `seconds` each with `clients` connections.
pub async fn run(server_database: &PgConnectOptions, clients: u32, seconds: u64) -> anyhow::Result<PgbenchFigures> {
    let admin = sqlx::PgPool::connect_with(server_database.clone()).await?;
    sqlx::query("drop database if exists pgbench").execute(&admin).await?;
    sqlx::query("create database pgbench").execute(&admin).await?;
    admin.close().await;
    let pgbench = pgbench_binary()?;
    let socket = server_database.get_socket().context("the cluster is reached through its socket")?.clone();
    let connection = |command: &mut Command| {
        command
            .arg("-h")
            .arg(&socket)
            .arg("-p")
            .arg(server_database.get_port().to_string())
            .arg("-U")
            .arg(server_database.get_username());
    };
    let mut init = Command::new(&pgbench);
    connection(&mut init);
    init.args(["-i", "-q", "-s", "10", "pgbench"]);
    run_quietly(init).context("pgbench -i")?;
    let mut figures = Vec::new();
    for script in [&["-N"][..], &[][..]] {
        let mut command = Command::new(&pgbench);
        connection(&mut command);
        command.args(script).args(["-n", "-c", &clients.to_string(), "-j", "2", "-T", &seconds.to_string(), "pgbench"]);
        figures.push(tps(&run_quietly(command)?)?);
    }
    Ok(PgbenchFigures { simple_update_tps: figures[0], tpcb_tps: figures[1], clients, seconds })
}

fn pgbench_binary() -> anyhow::Result<PathBuf> {
    // The one of the server's PostgreSQL version, beside its `postgres` (where a link on
    // PATH to that leads).
    let binaries = wasmgrid_server::database::embedded::PostgresBinaries::find()?;
    let postgres = std::fs::canonicalize(&binaries.postgres)?;
    let pgbench = postgres.with_file_name("pgbench");
    if !pgbench.exists() {
        bail!("no pgbench beside {}: it comes with the PostgreSQL server package", postgres.display());
    }
    Ok(pgbench)
}

fn run_quietly(mut command: Command) -> anyhow::Result<String> {
    let output = command.output().with_context(|| format!("cannot run {command:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!("{command:?} failed: {}{}", stdout, String::from_utf8_lossy(&output.stderr));
    }
    Ok(stdout)
}

/// The `tps = N (without initial connection time)` of pgbench's summary.
fn tps(summary: &str) -> anyhow::Result<f64> {
    summary
        .lines()
        .find_map(|line| line.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no tps in pgbench's summary:\n{summary}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tps_line_is_found_in_a_summary() {
        let summary = "number of failed transactions: 0 (0.000%)\nlatency average = 1.032 ms\n\
                       initial connection time = 9.337 ms\ntps = 7750.123456 (without initial connection time)\n";
        assert_eq!(super::tps(summary).unwrap(), 7750.123456);
        assert!(super::tps("nothing here").is_err());
    }
}
