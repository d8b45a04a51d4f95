//! Where a run's time goes: CPU seconds of the server process, of its PostgreSQL cluster and
//! of the simulated volunteers (this process), from `/proc`; and the queries that took the
//! database's time, from `pg_stat_statements`.

use std::path::Path;

/// CPU seconds used so far by each side.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSeconds {
    pub server: f64,
    pub postgres: f64,
    pub volunteers: f64,
}

impl CpuSeconds {
    /// Reads the server's (`server_pid`) and its cluster's (in `cluster_dir`) CPU time, and
    /// this process's.
    pub fn now(server_pid: u32, cluster_dir: &Path) -> Self {
        Self {
            server: own_seconds(server_pid),
            postgres: cluster_seconds(cluster_dir),
            volunteers: own_seconds(std::process::id()),
        }
    }

    pub fn since(self, before: Self) -> Self {
        Self {
            server: self.server - before.server,
            postgres: self.postgres - before.postgres,
            volunteers: self.volunteers - before.volunteers,
        }
    }
}

/// Ticks of user and system time in `/proc/<pid>/stat`: fields 14 and 15, and with
/// `children`, 16 and 17 (the reaped children's), counted after the command's parentheses.
fn ticks(pid: u32, children: bool) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let Some((_, after_command)) = stat.rsplit_once(')') else { return 0 };
    let fields: Vec<u64> = after_command.split_whitespace().map(|field| field.parse().unwrap_or(0)).collect();
    // `after_command` starts at field 3 (the state), so field N is at index N - 3.
    let own = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    let reaped = if children { fields.get(13).copied().unwrap_or(0) + fields.get(14).copied().unwrap_or(0) } else { 0 };
    own + reaped
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn own_seconds(pid: u32) -> f64 {
    ticks(pid, false) as f64 / ticks_per_second()
}

/// Every process of the cluster, live (backends, background workers) and reaped (backends
/// that ended: the postmaster's children time).
fn cluster_seconds(cluster_dir: &Path) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    let mut total = 0;
    for pid in entries.flatten().filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok()) {
        let in_cluster = std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == cluster_dir)
            && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "postgres");
        if in_cluster {
            let is_postmaster = std::fs::read_to_string(cluster_dir.join("postmaster.pid"))
                .is_ok_and(|file| file.lines().next().and_then(|line| line.trim().parse::<u32>().ok()) == Some(pid));
            total += ticks(pid, is_postmaster);
        }
    }
    total as f64 / ticks_per_second()
}

/// One statement's share of the database's time.
#[derive(Debug, sqlx::FromRow)]
pub struct StatementTime {
    pub query: String,
    pub calls: i64,
    pub total_ms: f64,
    pub mean_ms: f64,
    /// Planning time per call: a custom plan is made again on every call, a generic one
    /// once per connection.
    pub plan_ms_per_call: f64,
    /// How many times the statement was planned.
    pub plans: i64,
    /// Shared buffers read or hit per call: the work done, where the time also counts waits.
    pub blocks_per_call: f64,
}

/// The statements that took the most execution time since the statistics were reset.
pub async fn top_statements(pool: &sqlx::PgPool, limit: i64) -> sqlx::Result<Vec<StatementTime>> {
    sqlx::query_as(
        "select regexp_replace(query, '\\s+', ' ', 'g') as query, calls,
                total_exec_time as total_ms, mean_exec_time as mean_ms,
                total_plan_time / greatest(calls, 1) as plan_ms_per_call, plans,
                (shared_blks_hit + shared_blks_read)::float8 / greatest(calls, 1) as blocks_per_call
         from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database())
         order by total_exec_time desc limit $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Execution and planning time of every statement of the server's database, in
/// milliseconds.
pub async fn total_statement_ms(pool: &sqlx::PgPool) -> sqlx::Result<(f64, f64)> {
    sqlx::query_as(
        "select coalesce(sum(total_exec_time), 0)::float8, coalesce(sum(total_plan_time), 0)::float8
         from pg_stat_statements
         where dbid = (select oid from pg_database where datname = current_database())",
    )
    .fetch_one(pool)
    .await
}
