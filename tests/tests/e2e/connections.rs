//! Floods of connections against the real server binary, started as a service manager
//! often starts it, with 1024 open files: connections that trickle their headers and never
//! finish them, from many addresses, must not keep anyone else out.

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

/// A connection from `from` that starts a request and will never finish its headers.
async fn trickler(server: SocketAddr, from: Ipv4Addr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::from((from, 0))).ok()?;
    let mut stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(server)).await.ok()?.ok()?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: grid\r\nX-Slow: ").await.ok()?;
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
async fn connections_that_trickle_their_headers_cannot_keep_healthz_out() {
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

    // The attack: keep 2000 connections open, one header byte at a time, reopening those
    // the server closes.
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
                    if let Some(stream) = trickler(address, from).await {
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
            Err(error) => failures.push(error.to_string()),
        }
        most_open_files = most_open_files.max(open_files_of(pid));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let still_open = attack.await.unwrap();

    assert!(failures.is_empty(), "{} of {probes} health checks failed during the attack: {failures:?}", failures.len());
    assert!(
        closed_by_server.load(Ordering::Relaxed) > ATTACK_CONNECTIONS,
        "the server closes connections that never finish their headers ({} closed, {still_open} open at the end)",
        closed_by_server.load(Ordering::Relaxed)
    );
    assert!(most_open_files < 1024, "the server stayed within its open files ({most_open_files})");
    assert!(is_alive(pid), "the server survived");
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
