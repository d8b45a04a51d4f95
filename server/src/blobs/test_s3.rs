//! A real S3 API server for tests and benchmarks: one `s3s-fs` process per test process
//! (the `s3s-fs` crate's binary, `cargo install s3s-fs --features binary`), and a fresh
//! bucket for every caller, as [`crate::database::test_cluster`] gives a fresh database.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

const ACCESS_KEY: &str = "wasmgrid-test";
const SECRET_KEY: &str = "wasmgrid-test-secret";
const REGION: &str = "us-east-1";

struct TestS3 {
    endpoint: String,
    root: PathBuf,
}

static SERVER: OnceLock<TestS3> = OnceLock::new();
static NEXT_BUCKET: AtomicU64 = AtomicU64::new(0);

/// A bucket of its own on the test S3 server.
#[derive(Debug, Clone)]
pub struct TestBucket {
    /// `s3://bucket/prefix`, for `--blob-store`.
    pub url: url::Url,
    /// The server's `http://address:port`.
    pub endpoint: String,
    /// Where the bucket's objects are files (to look at, or damage, from a test).
    pub directory: PathBuf,
}

impl TestBucket {
    /// The `AWS_*` variables a server process needs to reach the bucket.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// The same settings as object store options, for a server built in this process
    /// (whose environment tests should not change).
    pub fn settings(&self) -> Vec<(String, String)> {
        self.env().into_iter().map(|(key, value)| (key.to_ascii_lowercase(), value)).collect()
    }
}

/// A fresh, empty bucket (starting the server on first use). Panics if `s3s-fs` cannot
/// be found or started, saying how to install it.
pub fn fresh_bucket() -> TestBucket {
    let server = SERVER.get_or_init(start);
    let name = format!("test-{}-{}", std::process::id(), NEXT_BUCKET.fetch_add(1, Ordering::Relaxed));
    // s3s-fs keeps a bucket as a directory of its root.
    let directory = server.root.join(&name);
    std::fs::create_dir_all(&directory).expect("cannot create a test bucket");
    let url = url::Url::parse(&format!("s3://{name}/blobs")).expect("a bucket name makes a URL");
    TestBucket { url, endpoint: server.endpoint.clone(), directory }
}

/// Starts `s3s-fs` on a free port, owned by a thread that lives as long as the process: the
/// child is killed when that thread ends (the process exits), so no server outlives its
/// tests.
fn start() -> TestS3 {
    let binary = std::env::var_os("WASMGRID_S3S_FS").map_or_else(|| PathBuf::from("s3s-fs"), PathBuf::from);
    let root = tempfile::Builder::new().prefix("wasmgrid-s3-").tempdir().expect("cannot create the S3 root").keep();
    let (started, endpoint) = std::sync::mpsc::channel();
    let child_root = root.clone();
    std::thread::Builder::new()
        .name("test-s3".into())
        .spawn(move || {
            let mut command = Command::new(&binary);
            command
                .args(["--host", "127.0.0.1", "--port", "0", "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(&child_root)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            // SAFETY: prctl is async-signal-safe, and nothing else runs in the child here.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(error) => {
                    let _ = started.send(Err(format!(
                        "cannot start {} ({error}): the S3 tests need the s3s-fs binary, \
                         `cargo install s3s-fs --features binary` (or WASMGRID_S3S_FS=path)",
                        binary.display()
                    )));
                    return;
                }
            };
            let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
            let mut lines = stdout.lines();
            let mut announced = false;
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(address) = line.split("server is running at ").nth(1) {
                    let _ = started.send(Ok(address.trim().to_owned()));
                    announced = true;
                    break;
                }
            }
            if !announced {
                let _ = started.send(Err(format!("s3s-fs exited before it listened: {:?}", child.wait())));
                return;
            }
            // Keep draining its log so it never blocks on a full pipe; this thread (and so
            // the child) lives until the process ends.
            for _ in lines {}
            let _ = child.wait();
            std::thread::park();
        })
        .expect("cannot start the test S3 thread");
    let endpoint = endpoint.recv().expect("the test S3 thread reports").unwrap_or_else(|error| panic!("{error}"));
    TestS3 { endpoint, root }
}
