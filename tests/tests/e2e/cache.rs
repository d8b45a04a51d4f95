//! The volunteer's cache of modules and inputs: verified before use, evicted
//! least-recently-used within the disk limit, never while in use.

use std::time::{Duration, Instant, SystemTime};

use wasmgrid_protocol::Sha256Hash;
use wasmgrid_server::publishing::WorkUnitSpec;

use crate::harness::{Server, Volunteer, signal, single, workunit};

const VALIDATED: &str = "select count(*) from work_unit where state = 'validated'";
const TIMEOUT: Duration = Duration::from_secs(120);
const INPUT_BYTES: usize = 100_000;

/// Copies its standard input to its standard output.
const ECHO: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; iovec at 0 (buffer at 1024, 64 KiB), bytes read at 16, bytes written at 20.
  (func (export "_start")
    (loop $copy
      (i32.store (i32.const 0) (i32.const 1024))
      (i32.store (i32.const 4) (i32.const 65536))
      (i32.store (i32.const 16) (i32.const 0))
      (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
      (if (i32.eqz (i32.load (i32.const 16))) (then (return)))
      (i32.store (i32.const 4) (i32.load (i32.const 16)))
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 20)))
      (br $copy))))
"#;

/// `wasm` made `bytes` larger by a custom section, which does not change what it does.
fn padded(mut wasm: Vec<u8>, bytes: usize) -> Vec<u8> {
    let name = b"padding";
    let mut section = vec![name.len() as u8];
    section.extend(name);
    section.resize(section.len() + bytes, 0);
    wasm.push(0);
    let mut size = section.len();
    loop {
        let low = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            wasm.push(low);
            break;
        }
        wasm.push(low | 0x80);
    }
    wasm.extend(section);
    wasm
}

fn cache_bytes(volunteer: &Volunteer) -> u64 {
    std::fs::read_dir(volunteer.data_dir.path().join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

async fn wait_until<F: AsyncFnMut() -> bool>(what: &str, mut done: F) {
    let give_up = Instant::now() + TIMEOUT;
    while !done().await {
        assert!(Instant::now() < give_up, "gave up waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_cache_evicts_the_least_recently_used_blobs_to_stay_within_its_share_of_the_disk() {
    let server = Server::start().await;
    let mut inputs = Vec::new();
    let mut specs = Vec::new();
    for i in 0..6u8 {
        let input = server.store_blob(&vec![i; INPUT_BYTES]).await;
        inputs.push(input.to_hex());
        specs.push(WorkUnitSpec {
            policy: single(),
            files: vec![("data".into(), input)],
            ..WorkUnitSpec::new(format!("wu-{i}"))
        });
    }
    server.publish_app("inputs", &workunit("probes/determinism.wat"), &specs).await;
    let volunteer = Volunteer::attach(&server, "thrifty").await;

    // Half the disk is for the cache: room for two of the six inputs. One core runs the
    // work units one after the other, in the order they were published.
    let disk = (5 * INPUT_BYTES).to_string();
    volunteer.run_until_idle_with(&["--cores", "1", "--disk", &disk], TIMEOUT).await;

    assert_eq!(server.count(VALIDATED).await, 6);
    assert!(cache_bytes(&volunteer) <= (5 * INPUT_BYTES / 2) as u64, "{} bytes cached", cache_bytes(&volunteer));
    let cached = volunteer.cached_blobs();
    let kept: Vec<bool> = inputs.iter().map(|input| cached.contains(input)).collect();
    assert_eq!(kept, [false, false, false, false, true, true], "the last two used are kept");
}

#[tokio::test]
async fn a_module_in_use_is_not_evicted_even_when_the_cache_is_over_its_limit() {
    let server = Server::start().await;
    server.record_contacts().await;
    // Runs until stopped, and is alone three times the cache's limit.
    let module = padded(workunit("hostile/infinite_loop.wat"), 3 * INPUT_BYTES);
    let module_hash = Sha256Hash::of(&module).to_hex();
    server.publish(&module, 1, single()).await;
    let volunteer = Volunteer::attach(&server, "busy").await;
    // A blob left from earlier work, used an hour ago: eviction may take it.
    let stale = vec![7u8; INPUT_BYTES];
    let stale_path = volunteer.data_dir.path().join("blobs").join(Sha256Hash::of(&stale).to_hex());
    std::fs::create_dir_all(stale_path.parent().unwrap()).unwrap();
    std::fs::write(&stale_path, &stale).unwrap();
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().append(true).open(&stale_path).unwrap().set_modified(an_hour_ago).unwrap();

    // Two cores and one work unit: the daemon keeps asking for more, and evicts after
    // every reply.
    let disk = (2 * INPUT_BYTES).to_string();
    let daemon = volunteer.command(&["run", "--cores", "2", "--disk", &disk]).spawn().unwrap();
    wait_until("the module is cached", async || volunteer.cached_blobs().contains(&module_hash)).await;
    let seen = server.contacts().await.len();
    wait_until("two more replies", async || server.contacts().await.len() >= seen + 2).await;

    assert!(!stale_path.exists(), "eviction ran");
    assert!(volunteer.cached_blobs().contains(&module_hash), "the running task's module is kept");
    let status = volunteer.status().await;
    assert_eq!(status["tasks"][0]["state"], "running", "{status}");
    signal(&daemon, libc::SIGTERM);
    daemon.wait_with_output().await.unwrap();
}

#[tokio::test]
async fn a_damaged_cached_file_is_detected_and_downloaded_again() {
    let server = Server::start().await;
    let input = server.store_blob(&b"every byte of this input matters\n".repeat(100)).await;
    let echo = wat::parse_str(ECHO).unwrap();
    let spec = |name: &str| WorkUnitSpec { policy: single(), stdin: Some(input), ..WorkUnitSpec::new(name) };
    server.publish_app("echo", &echo, &[spec("before")]).await;
    let volunteer = Volunteer::attach(&server, "unlucky").await;
    volunteer.run_until_idle(TIMEOUT).await;
    let blobs = volunteer.data_dir.path().join("blobs");
    let module = Sha256Hash::of(&echo);
    for hash in [input, module] {
        let path = blobs.join(hash.to_hex());
        let mut bytes = std::fs::read(&path).expect("cached by the first run");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }

    server.publish_app("echo-again", &echo, &[spec("after")]).await;
    volunteer.run_until_idle(TIMEOUT).await;

    assert_eq!(server.count(VALIDATED).await, 2);
    let outputs: Vec<String> =
        sqlx::query_scalar("select output_sha256 from replica where outcome = 'success' order by id")
            .fetch_all(&server.pool)
            .await
            .unwrap();
    assert_eq!(outputs.len(), 2);
    assert_eq!(outputs[0], outputs[1], "the second run read the input as published");
    for hash in [input, module] {
        let bytes = std::fs::read(blobs.join(hash.to_hex())).unwrap();
        assert_eq!(Sha256Hash::of(&bytes), hash, "downloaded again");
    }
}
