//! Stepping aside for the owner: `wasmgrid suspend`, `resume` and `set` on a
//! running daemon, and the computing preferences (a CPU hog, the compute hours on a clock the
//! test moves, low memory). Suspended tasks pause where they are and, once resumed, end
//! with the bytes an uninterrupted run gives.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use wasmgrid_sandbox::output;
use wasmgrid_server::publishing::WorkUnitSpec;

use crate::harness::{Server, Volunteer, example_module, run_directly, signal, single, workunit};

const TIMEOUT: Duration = Duration::from_secs(300);
/// About four seconds of work each.
const STEPS: &str = "60000";
/// About ten.
const LONG_STEPS: &str = "150000";

/// Publishes one nbody work unit per seed; returns the module's path.
async fn publish_simulations(server: &Server, seeds: &[u32]) -> PathBuf {
    publish_simulations_of(server, seeds, STEPS).await
}

async fn publish_simulations_of(server: &Server, seeds: &[u32], steps: &str) -> PathBuf {
    let module = example_module("nbody");
    let specs: Vec<WorkUnitSpec> = seeds
        .iter()
        .map(|seed| WorkUnitSpec {
            args: vec!["64".into(), steps.into(), seed.to_string()],
            policy: single(),
            ..WorkUnitSpec::new(format!("sim-{seed}"))
        })
        .collect();
    server.publish_app("nbody", &std::fs::read(&module).unwrap(), &specs).await;
    module
}

/// The output hash an uninterrupted run of the simulation with `seed` gives.
async fn uninterrupted_output(module: &Path, seed: u32, steps: &str) -> String {
    let (module, steps) = (module.to_owned(), steps.to_owned());
    tokio::task::spawn_blocking(move || {
        let seed = seed.to_string();
        let (stdout, _) = run_directly(&module, &["64", &steps, &seed], b"");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("scratch");
        std::fs::create_dir(&empty).unwrap();
        output::pack(&stdout, &empty, &dir.path().join("out.tar"), 1 << 30).unwrap().0.to_hex()
    })
    .await
    .unwrap()
}

/// Every work unit's output, by name, once all have validated.
async fn validated_outputs(server: &Server, count: i64) -> Vec<(String, String)> {
    server.wait_for_count("select count(*) from replica where outcome = 'success'", count, TIMEOUT).await;
    sqlx::query_as(
        "select w.name, r.output_sha256 from replica r join work_unit w on w.id = r.work_unit_id \
         where r.outcome = 'success' order by w.name",
    )
    .fetch_all(&server.pool)
    .await
    .unwrap()
}

async fn expect_outputs_of_uninterrupted_runs(server: &Server, module: &Path, seeds: &[u32]) {
    expect_outputs_of_uninterrupted_runs_of(server, module, seeds, STEPS).await;
}

async fn expect_outputs_of_uninterrupted_runs_of(server: &Server, module: &Path, seeds: &[u32], steps: &str) {
    let outputs = validated_outputs(server, seeds.len() as i64).await;
    for seed in seeds {
        let expected = uninterrupted_output(module, *seed, steps).await;
        let name = format!("sim-{seed}");
        let (_, got) = outputs.iter().find(|(unit, _)| *unit == name).unwrap();
        assert_eq!(*got, expected, "{name}: the paused run's output is an uninterrupted run's");
    }
}

fn tasks(status: &Value) -> &Vec<Value> {
    status["tasks"].as_array().unwrap()
}

fn count_in_state(status: &Value, state: &str) -> usize {
    tasks(status).iter().filter(|task| task["state"] == state).count()
}

/// Polls the status until `condition` holds; returns the status and how long it took.
async fn wait_for_status(
    volunteer: &Volunteer,
    what: &str,
    within: Duration,
    condition: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let status = volunteer.status().await;
        if condition(&status) {
            return (status, started.elapsed());
        }
        assert!(started.elapsed() < within, "never {what} within {within:?}: {status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a command of the volunteer's and returns its standard output; panics if it fails.
async fn succeeds(volunteer: &Volunteer, args: &[&str]) -> String {
    let output = volunteer.command(args).output().await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "wasmgrid {args:?} failed: {stderr}");
    stdout.into_owned()
}

fn fuel_of_tasks(status: &Value) -> Vec<u64> {
    tasks(status).iter().map(|task| task["fuel_used"].as_u64().unwrap_or(0)).collect()
}

fn all_running_with_fuel(status: &Value, count: usize) -> bool {
    count_in_state(status, "running") == count && fuel_of_tasks(status).iter().all(|fuel| *fuel > 0)
}

#[tokio::test(flavor = "multi_thread")]
async fn suspend_pauses_tasks_in_place_and_resume_lets_them_end_as_if_never_paused() {
    let server = Server::start().await;
    let seeds = [1, 2];
    let module = publish_simulations(&server, &seeds).await;
    let volunteer = Volunteer::attach(&server, "pausable").await;
    let daemon = volunteer.command(&["run", "--cores", "2"]).spawn().unwrap();
    wait_for_status(&volunteer, "two tasks running", TIMEOUT, |status| all_running_with_fuel(status, 2)).await;

    let said = succeeds(&volunteer, &["suspend"]).await;
    assert!(said.contains("computing suspended until `wasmgrid resume`"), "{said}");
    let (status, _) =
        wait_for_status(&volunteer, "both tasks paused", Duration::from_secs(2), |s| count_in_state(s, "paused") == 2)
            .await;
    let reasons = status["computing"]["suspended_because"].to_string();
    assert!(reasons.contains("suspended by the volunteer"), "{reasons}");
    // The status's fuel is read from the task every 50 ms: let it catch up first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fuel = fuel_of_tasks(&volunteer.status().await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let still = volunteer.status().await;
    assert_eq!(fuel_of_tasks(&still), fuel, "paused tasks burn no fuel: {still:#}");
    let table = succeeds(&volunteer, &["status"]).await;
    assert!(table.contains("computing: suspended: suspended by the volunteer"), "{table}");
    assert!(table.contains("paused"), "{table}");

    // A setting changes in the file and at once.
    let said = succeeds(&volunteer, &["set", "max_cpu_percent", "80"]).await;
    assert!(said.contains("in effect"), "{said}");
    let file = std::fs::read_to_string(volunteer.data_dir.path().join("client.toml")).unwrap();
    assert!(file.contains("max_cpu_percent = 80") && file.contains("backoff_min_seconds = 1"), "{file}");
    let status = volunteer.status().await;
    assert!(status["computing"]["preferences"].to_string().contains("max_cpu_percent = 80"), "{status:#}");
    let refused = volunteer.command(&["set", "max_cpu_percent", "0"]).output().await.unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("from 1 to 100"));

    let said = succeeds(&volunteer, &["resume"]).await;
    assert!(said.contains("computing resumed"), "{said}");
    wait_for_status(&volunteer, "the tasks running again", Duration::from_secs(2), |status| {
        count_in_state(status, "paused") == 0 && status["computing"]["suspended_because"] == serde_json::json!([])
    })
    .await;

    expect_outputs_of_uninterrupted_runs(&server, &module, &seeds).await;
    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait_with_output().await.unwrap().status.success());
}

#[tokio::test]
async fn a_suspension_for_a_while_ends_by_itself_and_needs_a_running_daemon() {
    let server = Server::start().await;
    server.publish(&workunit("hostile/infinite_loop.wat"), 1, single()).await;
    let volunteer = Volunteer::attach(&server, "snoozer").await;

    let refused = volunteer.command(&["suspend"]).output().await.unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no daemon is running"));

    let daemon = volunteer.command(&["run", "--cores", "1"]).spawn().unwrap();
    wait_for_status(&volunteer, "the task running", TIMEOUT, |status| all_running_with_fuel(status, 1)).await;
    let said = succeeds(&volunteer, &["suspend", "--for", "3s"]).await;
    assert!(said.contains("computing suspended until"), "{said}");
    let (status, _) =
        wait_for_status(&volunteer, "the task paused", Duration::from_secs(2), |s| count_in_state(s, "paused") == 1)
            .await;
    assert!(status["computing"]["suspended_because"].to_string().contains("until"), "{status:#}");
    wait_for_status(&volunteer, "the task running again", Duration::from_secs(10), |status| {
        count_in_state(status, "running") == 1
    })
    .await;
    let said = succeeds(&volunteer, &["resume"]).await;
    assert!(said.contains("was not suspended"), "{said}");
    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait_with_output().await.unwrap().status.success());
}

/// Busy loops on every core, at normal priority: the owner's own work.
struct CpuHog {
    children: Vec<std::process::Child>,
}

impl CpuHog {
    fn start() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let children = (0..cores)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        Self { children }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cpu_hog_suspends_computing_and_its_end_resumes_it() {
    let server = Server::start().await;
    let seeds = [3];
    let module = publish_simulations(&server, &seeds).await;
    let volunteer = Volunteer::attach(&server, "shared-desktop").await;
    // Other tests of this process load the machine too: the threshold is well above what
    // they use, and well below a hog on every core.
    let daemon = volunteer.command(&["run", "--cores", "1", "--suspend-when-cpu-above", "70"]).spawn().unwrap();
    wait_for_status(&volunteer, "the task running", TIMEOUT, |status| all_running_with_fuel(status, 1)).await;

    let hog = CpuHog::start();
    let (status, took) = wait_for_status(&volunteer, "the task paused", Duration::from_secs(30), |status| {
        count_in_state(status, "paused") == 1
    })
    .await;
    let reasons = status["computing"]["suspended_because"].to_string();
    assert!(reasons.contains("other programs use"), "{reasons}");
    eprintln!("paused {took:?} after the hog started");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fuel = fuel_of_tasks(&volunteer.status().await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fuel_of_tasks(&volunteer.status().await), fuel);

    drop(hog);
    wait_for_status(&volunteer, "the task running again", Duration::from_secs(60), |status| {
        count_in_state(status, "paused") == 0
    })
    .await;
    expect_outputs_of_uninterrupted_runs(&server, &module, &seeds).await;
    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait_with_output().await.unwrap().status.success());
}

/// libfaketime, from Debian's `faketime` package: the daemon's wall clock is the real one
/// plus the offset in a file the test rewrites (its monotonic clock stays real).
const FAKETIME_LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

#[tokio::test(flavor = "multi_thread")]
async fn the_compute_hours_window_opens_and_closes_as_the_clock_moves() {
    assert!(Path::new(FAKETIME_LIBRARY).exists(), "the test needs libfaketime: apt-get install faketime");
    let server = Server::start().await;
    let seeds = [4];
    let module = publish_simulations(&server, &seeds).await;
    let volunteer = Volunteer::attach(&server, "office-hours").await;
    let clock = volunteer.data_dir.path().join("clock-offset");
    let set_clock = |hours_ahead: u32| std::fs::write(&clock, format!("+{}\n", hours_ahead * 3600)).unwrap();
    set_clock(0);
    // Computing is allowed from one hour from now to three hours from now (UTC, as the
    // daemon's local time).
    let now = chrono::Utc::now();
    let window = format!(
        "{}-{}",
        (now + chrono::Duration::hours(1)).format("%H:00"),
        (now + chrono::Duration::hours(3)).format("%H:00")
    );
    let mut command = volunteer.command(&["run", "--cores", "1", "--compute-hours", &window]);
    command
        .env("LD_PRELOAD", FAKETIME_LIBRARY)
        .env("FAKETIME_TIMESTAMP_FILE", &clock)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("TZ", "UTC");
    let daemon = command.spawn().unwrap();

    // Now is before the window: the task waits.
    let (status, _) = wait_for_status(&volunteer, "the task waiting for the window", TIMEOUT, |status| {
        status["computing"]["suspended_because"].to_string().contains("outside the compute_hours")
            && count_in_state(status, "pending") == 1
    })
    .await;
    assert!(status["computing"]["preferences"].to_string().contains(&window), "{status:#}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count_in_state(&volunteer.status().await, "pending"), 1, "nothing starts outside the window");

    set_clock(2);
    wait_for_status(&volunteer, "the task running in the window", Duration::from_secs(30), |status| {
        all_running_with_fuel(status, 1)
    })
    .await;
    set_clock(4);
    let (_, took) = wait_for_status(&volunteer, "the task paused after the window", Duration::from_secs(5), |s| {
        count_in_state(s, "paused") == 1
    })
    .await;
    eprintln!("paused {took:?} after the window closed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fuel = fuel_of_tasks(&volunteer.status().await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fuel_of_tasks(&volunteer.status().await), fuel);

    // The next day, in the window again.
    set_clock(26);
    expect_outputs_of_uninterrupted_runs(&server, &module, &seeds).await;
    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait_with_output().await.unwrap().status.success());
}

/// A copy of this machine's `/proc/meminfo` whose `MemAvailable` the test sets, seen by the
/// daemon in place of the real one (a bind mount in a mount namespace of its own: the test
/// needs root, as CI has).
struct FakeMeminfo {
    path: PathBuf,
}

impl FakeMeminfo {
    fn new(dir: &Path) -> Self {
        let fake = Self { path: dir.join("meminfo") };
        fake.set_available(64 << 30);
        fake
    }

    fn set_available(&self, bytes: u64) {
        let real = std::fs::read_to_string("/proc/meminfo").unwrap();
        let text: String = real
            .lines()
            .map(|line| {
                if line.starts_with("MemAvailable:") {
                    format!("MemAvailable: {} kB", bytes >> 10)
                } else {
                    line.to_owned()
                }
            })
            .map(|line| line + "\n")
            .collect();
        // Rewritten in place: the bind mount follows the file, not its name.
        std::fs::write(&self.path, text).unwrap();
    }

    /// `wasmgrid` with `args`, run in a mount namespace where this file is /proc/meminfo.
    fn command(&self, volunteer: &Volunteer, args: &[&str]) -> tokio::process::Command {
        let wasmgrid = crate::harness::binary("wasmgrid");
        let mut script = format!(
            "mount --bind '{}' /proc/meminfo && exec '{}' --data-dir '{}'",
            self.path.display(),
            wasmgrid.display(),
            volunteer.data_dir.path().display()
        );
        for arg in args {
            script += &format!(" '{arg}'");
        }
        let mut command = tokio::process::Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn low_memory_stops_the_newest_tasks_and_they_run_again_when_memory_is_back() {
    let server = Server::start().await;
    let seeds = [5, 6];
    let module = publish_simulations_of(&server, &seeds, LONG_STEPS).await;
    let volunteer = Volunteer::attach(&server, "tight-memory").await;
    let meminfo = FakeMeminfo::new(volunteer.data_dir.path());
    const RESERVE: u64 = 1 << 30;
    let daemon = meminfo
        .command(&volunteer, &["run", "--cores", "2", "--suspend-when-memory-below", &RESERVE.to_string()])
        .spawn()
        .unwrap();
    wait_for_status(&volunteer, "two tasks running", TIMEOUT, |status| all_running_with_fuel(status, 2)).await;

    // Less free than the reserve: the tasks stop (a paused task would keep its memory).
    meminfo.set_available(RESERVE / 2);
    let (status, _) = wait_for_status(&volunteer, "both tasks stopped", Duration::from_secs(10), |status| {
        count_in_state(status, "pending") == 2
    })
    .await;
    assert!(status["computing"]["suspended_because"].to_string().contains("memory available"), "{status:#}");

    // Room for one task (each may grow to 256 MiB), not for two.
    meminfo.set_available(RESERVE + (400 << 20));
    wait_for_status(&volunteer, "one task running", Duration::from_secs(10), |status| {
        count_in_state(status, "running") == 1
    })
    .await;
    for _ in 0..20 {
        let status = volunteer.status().await;
        assert!(count_in_state(&status, "running") <= 1, "{status:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    meminfo.set_available(64 << 30);
    expect_outputs_of_uninterrupted_runs_of(&server, &module, &seeds, LONG_STEPS).await;
    signal(&daemon, libc::SIGTERM);
    let output = daemon.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("memory is short"), "{log}");
}

/// Connects to the socket named by its argument as user `nobody`, asks for a suspension and
/// prints the reply.
const SUSPEND_AS_NOBODY: &str = r#"
import os, socket, sys
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
connection = socket.socket(socket.AF_UNIX)
connection.connect(sys.argv[1])
connection.sendall(b'{"command": "suspend", "for_seconds": null}\n')
reply = b""
while chunk := connection.recv(65536):
    reply += chunk
print(reply.decode())
"#;

/// Another user cannot control the daemon, even with the socket opened up to everyone; a
/// malformed request gets an error; a flood of connections that never write leaves the
/// daemon answering.
#[tokio::test]
async fn the_control_socket_refuses_other_users_nonsense_and_floods() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start().await;
    let volunteer = Volunteer::attach(&server, "guarded").await;
    let daemon = volunteer.command(&["run", "--cores", "1"]).spawn().unwrap();
    let socket = volunteer.data_dir.path().join("daemon.sock");
    wait_for_status(&volunteer, "the daemon answering", TIMEOUT, |status| status["daemon_running"] == true).await;

    // Opened up to everyone, so that only the daemon's check of the peer stands in the way.
    std::fs::set_permissions(volunteer.data_dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let as_nobody =
        tokio::process::Command::new("python3").args(["-c", SUSPEND_AS_NOBODY]).arg(&socket).output().await.unwrap();
    let reply = String::from_utf8_lossy(&as_nobody.stdout);
    assert!(as_nobody.status.success(), "{}", String::from_utf8_lossy(&as_nobody.stderr));
    assert!(reply.contains("refused") && reply.contains("only the user the daemon runs as"), "{reply}");
    assert_eq!(volunteer.status().await["computing"]["suspended_because"], serde_json::json!([]));

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    stream.write_all(b"{\"command\": \"format_disk\"}\n").await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert!(reply.contains("refused") && reply.contains("not a request"), "{reply}");

    // Connections that never write: the daemon serves a bounded number (each for a
    // moment), closes the rest at once, and keeps its file descriptors for its tasks.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(tokio::net::UnixStream::connect(&socket).await.unwrap());
    }
    let mut last = idle.pop().unwrap();
    let mut nothing = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), last.read_to_end(&mut nothing)).await;
    assert!(matches!(closed, Ok(Ok(0))), "a connection past the cap is closed at once: {closed:?}");
    let started = Instant::now();
    loop {
        let status = volunteer.status().await;
        if status["daemon_running"] == true {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the daemon stopped answering: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(idle);

    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait_with_output().await.unwrap().status.success());
}
