//! Floods of connections against the real server binary, started as a service manager
//! often starts it, with 1024 open files: connections that trickle their headers or their
//! bodies and never finish them, from many addresses, must not keep anyone else out; and
//! a connection that stops sending, or sits idle, is closed.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::Server;

/// Connections the attack keeps open, from this many loopback addresses.
const ATTACK_CONNECTIONS: usize = 2000;
const ATTACK_ADDRESSES: u8 = 20;

/// Lets this test process open enough sockets for the attack.
fn raise_own_open_files(needed: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is writable storage of the right type.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    if limit.rlim_cur < needed {
        let raised = libc::rlimit { rlim_cur: needed.min(limit.rlim_max), rlim_max: limit.rlim_max };
        // SAFETY: a limit no higher than the hard one.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) }, 0);
        assert!(raised.rlim_cur >= needed, "the tests need {needed} open files; the hard limit is {}", limit.rlim_max);
    }
}

/// A connection from `from` that starts a request and will never finish it: its headers,
/// or (`body`) the body of a request that needs no credentials.
async fn trickler(server: SocketAddr, from: Ipv4Addr, body: bool) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::from((from, 0))).ok()?;
    let mut stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(server)).await.ok()?.ok()?;
    let start: &[u8] = if body {
        b"POST /api/v1/accounts HTTP/1.1\r\nHost: grid\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    } else {
        b"GET /healthz HTTP/1.1\r\nHost: grid\r\nX-Slow: "
    };
    stream.write_all(start).await.ok()?;
    Some(stream)
}

fn open_files_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|entries| entries.count()).unwrap_or(0)
}

fn limits_of(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    limits.lines().find(|line| line.starts_with("Max open files")).unwrap().to_owned()
}

#[tokio::test]
async fn connections_that_trickle_their_headers_or_bodies_cannot_keep_healthz_out() {
    raise_own_open_files(ATTACK_CONNECTIONS as u64 + 512);
    let database_url = wasmgrid_server::database::test_cluster::fresh_database_url().await;
    let server = Server::start_limited(
        tempfile::tempdir().unwrap(),
        database_url,
        &["--header-timeout", "3"],
        Some((1024, 1024)),
    )
    .await;
    let pid = server.pid().unwrap();
    let address: SocketAddr = server.url.strip_prefix("http://").unwrap().parse().unwrap();

    // The attack: keep 2000 connections open, one byte of headers or body at a time,
    // reopening those the server closes.
    let stop = Arc::new(AtomicBool::new(false));
    let closed_by_server = Arc::new(AtomicUsize::new(0));
    let attack = {
        let (stop, closed_by_server) = (stop.clone(), closed_by_server.clone());
        tokio::spawn(async move {
            let mut open: Vec<(Ipv4Addr, TcpStream)> = Vec::new();
            let mut next = 0usize;
            while !stop.load(Ordering::Relaxed) {
                while open.len() < ATTACK_CONNECTIONS && !stop.load(Ordering::Relaxed) {
                    let from = Ipv4Addr::new(127, 0, 0, 10 + (next % usize::from(ATTACK_ADDRESSES)) as u8);
                    next += 1;
                    if let Some(stream) = trickler(address, from, next.is_multiple_of(2)).await {
                        open.push((from, stream));
                    }
                }
                let mut still_open = Vec::with_capacity(open.len());
                for (from, mut stream) in open.drain(..) {
                    match tokio::time::timeout(Duration::from_millis(50), stream.write_all(b"x")).await {
                        Ok(Ok(())) => still_open.push((from, stream)),
                        _ => {
                            closed_by_server.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                open = still_open;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            open.len()
        })
    };

    // Meanwhile, a monitor asks for /healthz on a fresh connection three times a second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let monitor = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(3)).build().unwrap();
    let health = format!("{}/healthz", server.url);
    let (mut probes, mut failures) = (0, Vec::new());
    let mut most_open_files = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        probes += 1;
        match monitor.get(&health).send().await {
            Ok(response) if response.status() == 200 => {}
            Ok(response) => failures.push(format!("status {}", response.status())),
            Err(error) => failures.push(format!("{:#}", anyhow::Error::new(error))),
        }
        most_open_files = most_open_files.max(open_files_of(pid));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let still_open = attack.await.unwrap();

    assert!(failures.is_empty(), "{} of {probes} health checks failed during the attack: {failures:?}", failures.len());
    // A server without header deadlines closes none. How many more than half the attack it
    // closes in the time depends on how fast this machine lets the attack reconnect.
    assert!(
        closed_by_server.load(Ordering::Relaxed) > ATTACK_CONNECTIONS / 2,
        "the server closes connections that never finish their headers ({} closed, {still_open} open at the end)",
        closed_by_server.load(Ordering::Relaxed)
    );
    assert!(most_open_files <= 1024 - 64, "the server kept room for its files ({most_open_files} open)");
    assert!(is_alive(pid), "the server survived");
}

/// Waits until the server closes `stream` (a read sees the end or an error); how long that
/// took, or `None` if it stayed open for `patience`.
pub async fn closed_by_server(stream: &mut TcpStream, patience: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + patience).into(), stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_request_that_stops_coming_and_an_idle_keep_alive_are_closed() {
    let database_url = wasmgrid_server::database::test_cluster::fresh_database_url().await;
    let server = Server::start_in(tempfile::tempdir().unwrap(), database_url, &["--header-timeout", "2"]).await;
    let address: SocketAddr = server.url.strip_prefix("http://").unwrap().parse().unwrap();

    let mut stalled = trickler(address, Ipv4Addr::LOCALHOST, false).await.unwrap();
    let mut idle = TcpStream::connect(address).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: grid\r\n\r\n").await.unwrap();
    // Read the whole answer of the first request; the connection stays open for another.
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).contains("\"blob_store\"") {
        let mut buffer = [0u8; 4096];
        let read = tokio::io::AsyncReadExt::read(&mut idle, &mut buffer).await.unwrap();
        assert!(read > 0, "the server answered: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buffer[..read]);
    }

    let patience = Duration::from_secs(30);
    let stalled_after = closed_by_server(&mut stalled, patience).await;
    let idle_after = closed_by_server(&mut idle, patience).await;
    assert!(stalled_after.is_some(), "a request whose headers stopped coming stayed open {patience:?}");
    assert!(idle_after.is_some(), "an idle kept-alive connection stayed open {patience:?}");
}

fn is_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn the_server_raises_its_soft_open_file_limit_to_the_hard_one() {
    let database_url = wasmgrid_server::database::test_cluster::fresh_database_url().await;
    let server = Server::start_limited(tempfile::tempdir().unwrap(), database_url, &[], Some((1024, 4096))).await;
    let limits = limits_of(server.pid().unwrap());
    let numbers: Vec<&str> = limits.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{limits}");
}
