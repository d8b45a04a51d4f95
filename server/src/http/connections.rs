//! Serving HTTP connections so that idle or slow ones cannot take the server down.
//!
//! `axum::serve` reads headers without a deadline and accepts connections until the
//! process runs out of file descriptors, after which it cannot even answer `/healthz`. This
//! serves each connection with hyper directly, and:
//!
//! - gives every request's headers [`Limits::header_timeout`] to arrive, counted from the
//!   connection's start or the end of the previous response, so the same deadline closes a
//!   kept-alive connection that sits idle that long;
//! - holds at most [`Limits::max_connections`] connections (by default as many as the
//!   open-file limit leaves room for). A new connection over the cap takes the place of one
//!   waiting for its request's headers or, failing that, of one whose request is receiving
//!   its body (a body can be trickled as well as headers): of the address that holds the
//!   most, the longest at it. A connection whose request has arrived whole is never closed this way; only
//!   when every one is is the new connection refused;
//! - holds at most [`Limits::max_per_address`] connections from one address (trusted
//!   proxies excepted), so that one client filling its share only closes its own;
//! - raises the soft open-file limit to the hard one at start ([`raise_open_file_limit`]);
//! - with [`Limits::tls`], does the TLS handshake in each connection's own task, within the
//!   header timeout, so that a client that never finishes it holds up neither the accept
//!   loop nor anyone else (see [`super::tls`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, header};
use http_body::Body as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

use super::tls::Tls;
use super::visitor::TlsConnection;

/// How connections are served and limited.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time a request's headers have to arrive, from the connection's start or the end of
    /// the previous response. A TLS handshake has as long again, before the first request.
    pub header_timeout: Duration,
    /// Connections held at once.
    pub max_connections: usize,
    /// Connections held at once from one address (an IPv6 /64 counts as one).
    pub max_per_address: usize,
    /// Addresses exempt from `max_per_address`: reverse proxies, through which everyone
    /// comes.
    pub trusted_proxies: Vec<IpNet>,
    /// How long a shutdown waits for requests in flight before closing their connections.
    pub shutdown_grace: Duration,
    /// Serve HTTPS with this certificate; plain HTTP without.
    pub tls: Option<Tls>,
}

/// Descriptors kept free for everything but connections: files being uploaded and served,
/// the blob store, the log.
const RESERVED_DESCRIPTORS: u64 = 128;

impl Limits {
    /// Defaults for a process that may open `open_files` descriptors and keeps
    /// `database_connections` of them for PostgreSQL.
    pub fn for_open_files(open_files: u64, database_connections: u32) -> Self {
        let reserved = RESERVED_DESCRIPTORS + u64::from(database_connections);
        let max_connections = open_files.saturating_sub(reserved).max(16);
        Self {
            header_timeout: Duration::from_secs(10),
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            max_per_address: 256,
            trusted_proxies: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit, and returns the limit
/// now in force. Most systems start processes at a soft limit of 1024, far below what a
/// server with thousands of volunteers needs, and far below the hard limit they allow.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is writable storage of the right type.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: `raised` is a valid limit no higher than the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}

/// Every open connection, as the cap and the eviction rule see it.
struct Registry {
    limits: Limits,
    next_id: u64,
    open: HashMap<u64, Entry>,
    per_address: HashMap<IpAddr, usize>,
}

struct Entry {
    /// The address as counted for `max_per_address` (`None` for a trusted proxy).
    counted_as: Option<IpAddr>,
    /// Requests whose headers arrived and whose response is not sent yet.
    in_flight: u32,
    /// Of those, requests whose body is still arriving.
    receiving: u32,
    /// When it began waiting for a request: its start, or the end of its last response.
    waiting_since: Instant,
    /// When its oldest request still receiving its body began.
    receiving_since: Instant,
    close: Arc<Notify>,
}

impl Entry {
    /// How much room it would make, and how soon: waiting for a request comes before
    /// receiving a body, then the longest at it first. `None`: a request arrived whole and
    /// is being answered.
    fn eviction_rank(&self) -> Option<(u8, Instant)> {
        if self.in_flight == 0 {
            Some((0, self.waiting_since))
        } else if self.receiving == self.in_flight {
            Some((1, self.receiving_since))
        } else {
            None
        }
    }
}

/// What a connection that was let in holds: its entry leaves the registry when it drops.
struct Admitted {
    registry: Arc<Mutex<Registry>>,
    id: u64,
    close: Arc<Notify>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut registry = self.registry.lock().expect("connection registry poisoned");
        if let Some(entry) = registry.open.remove(&self.id)
            && let Some(address) = entry.counted_as
        {
            registry.release_address(address);
        }
    }
}

impl Registry {
    fn release_address(&mut self, address: IpAddr) {
        if let Some(count) = self.per_address.get_mut(&address) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&address);
            }
        }
    }

    /// Closes one connection, among those `among` accepts, to make room; whether there was
    /// one. Connections waiting for a request go before those receiving a body; within
    /// each, one of the address holding the most connections, so that a flood from a few
    /// addresses displaces its own connections rather than everyone else's (a connection
    /// cannot be pushed out by others' churn before its headers are read); and of those,
    /// the one that has waited (or received) longest.
    fn evict_longest_waiting(&mut self, among: impl Fn(&Entry) -> bool) -> bool {
        let share = |entry: &Entry| entry.counted_as.and_then(|address| self.per_address.get(&address)).copied();
        let victim = self
            .open
            .iter()
            .filter(|(_, entry)| among(entry))
            .filter_map(|(id, entry)| {
                let held = share(entry).unwrap_or(1);
                entry.eviction_rank().map(|(class, since)| (class, std::cmp::Reverse(held), since, *id))
            })
            .min()
            .map(|(.., id)| id);
        let Some(victim) = victim else { return false };
        if let Some(entry) = self.open.remove(&victim) {
            entry.close.notify_one();
            if let Some(address) = entry.counted_as {
                self.release_address(address);
            }
        }
        true
    }
}

/// The address connections from `peer` count under: an IPv6 address's /64, which one
/// subscriber usually holds whole.
fn counted_address(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// Lets a connection from `peer` in, closing others to make room if it must; `None` if it
/// is refused (every connection in its way has a request in flight).
fn admit(registry: &Arc<Mutex<Registry>>, peer: IpAddr) -> Option<Admitted> {
    let mut guard = registry.lock().expect("connection registry poisoned");
    let trusted = guard.limits.trusted_proxies.iter().any(|network| network.contains(&peer.to_canonical()));
    let counted_as = (!trusted).then(|| counted_address(peer));
    if let Some(address) = counted_as
        && guard.per_address.get(&address).copied().unwrap_or(0) >= guard.limits.max_per_address
        && !guard.evict_longest_waiting(|entry| entry.counted_as == Some(address))
    {
        return None;
    }
    if guard.open.len() >= guard.limits.max_connections && !guard.evict_longest_waiting(|_| true) {
        return None;
    }
    let id = guard.next_id;
    guard.next_id += 1;
    let close = Arc::new(Notify::new());
    let now = Instant::now();
    let entry = Entry {
        counted_as,
        in_flight: 0,
        receiving: 0,
        waiting_since: now,
        receiving_since: now,
        close: close.clone(),
    };
    guard.open.insert(id, entry);
    if let Some(address) = counted_as {
        *guard.per_address.entry(address).or_default() += 1;
    }
    drop(guard);
    Some(Admitted { registry: registry.clone(), id, close })
}

/// Marks a request in flight on a connection until it drops (with the response's body).
struct InFlight {
    registry: Arc<Mutex<Registry>>,
    id: u64,
}

impl InFlight {
    fn start(registry: &Arc<Mutex<Registry>>, id: u64) -> Self {
        if let Some(entry) = registry.lock().expect("connection registry poisoned").open.get_mut(&id) {
            entry.in_flight += 1;
        }
        Self { registry: registry.clone(), id }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(entry) = self.registry.lock().expect("connection registry poisoned").open.get_mut(&self.id) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.waiting_since = Instant::now();
        }
    }
}

/// Marks a request as still receiving its body until the body has arrived whole (or is
/// dropped unread).
struct Receiving {
    registry: Arc<Mutex<Registry>>,
    id: u64,
    done: bool,
}

impl Receiving {
    fn start(registry: &Arc<Mutex<Registry>>, id: u64) -> Self {
        if let Some(entry) = registry.lock().expect("connection registry poisoned").open.get_mut(&id) {
            if entry.receiving == 0 {
                entry.receiving_since = Instant::now();
            }
            entry.receiving += 1;
        }
        Self { registry: registry.clone(), id, done: false }
    }

    fn finish(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if let Some(entry) = self.registry.lock().expect("connection registry poisoned").open.get_mut(&self.id) {
            entry.receiving = entry.receiving.saturating_sub(1);
        }
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A request body that says when it has arrived whole.
struct ReceivingBody {
    inner: hyper::body::Incoming,
    receiving: Receiving,
    /// Set once the last of it has been read (not when it is dropped unread).
    arrived_whole: Arc<AtomicBool>,
}

impl http_body::Body for ReceivingBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = matches!(frame, Poll::Ready(None)) || self.inner.is_end_stream();
        if ended {
            self.arrived_whole.store(true, Ordering::Relaxed);
        }
        if ended || matches!(frame, Poll::Ready(Some(Err(_)))) {
            self.receiving.finish();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request counted in flight until it is sent (or dropped).
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, lets
/// requests in flight finish (for up to [`Limits::shutdown_grace`]) and returns. With TLS,
/// SIGHUP reads the certificate and key again.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let grace = limits.shutdown_grace;
    let header_timeout = limits.header_timeout;
    let tls = limits.tls.clone();
    let mut reload_signal = tls.as_ref().and_then(Tls::take_reload_signal);
    let registry =
        Arc::new(Mutex::new(Registry { limits, next_id: 0, open: HashMap::new(), per_address: HashMap::new() }));
    let (stop, stopping) = watch::channel(false);
    let (all_closed, closed) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    let mut accept_failing = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
            Some(()) = async { reload_signal.as_mut()?.recv().await }, if reload_signal.is_some() => {
                if let Some(tls) = &tls {
                    reload_certificate(tls);
                }
                continue;
            }
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                if std::mem::take(&mut accept_failing) {
                    tracing::info!("accepting connections again");
                }
                accepted
            }
            Err(error) => {
                // Out of descriptors, most likely: wait for some to close, quietly.
                if !std::mem::replace(&mut accept_failing, true) {
                    tracing::warn!(%error, "cannot accept connections; retrying");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admitted) = admit(&registry, peer.ip()) else {
            tracing::debug!(%peer, "connection refused: every connection in the way is busy");
            drop(stream);
            continue;
        };
        let connection = Connection {
            peer,
            router: router.clone(),
            registry: registry.clone(),
            admitted,
            header_timeout,
            stopping: stopping.clone(),
            closed: closed.clone(),
        };
        match &tls {
            Some(tls) => tokio::spawn(connection.serve_tls(stream, tls.clone())),
            None => tokio::spawn(connection.serve(stream, false)),
        };
    }
    drop(listener);
    let _ = stop.send(true);
    drop(closed);
    if tokio::time::timeout(grace, all_closed.closed()).await.is_err() {
        tracing::warn!("requests still in flight after {grace:?}; closing their connections");
    }
}

/// Reads the certificate and key again (on SIGHUP), keeping the ones in force if the new
/// files do not work.
fn reload_certificate(tls: &Tls) {
    let files = tls.files();
    match tls.reload() {
        Ok(()) => tracing::info!(certificate = %files.certificate.display(), "SIGHUP: TLS certificate reloaded"),
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "SIGHUP: keeping the TLS certificate in force");
        }
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    peer: SocketAddr,
    router: Router,
    registry: Arc<Mutex<Registry>>,
    admitted: Admitted,
    header_timeout: Duration,
    stopping: watch::Receiver<bool>,
    /// Dropped when the connection is: the shutdown waits for every one.
    closed: watch::Receiver<()>,
}

impl Connection {
    /// Completes the TLS handshake, within the header timeout, then serves HTTP over it. A
    /// connection closed to make room, or a shutdown, ends a handshake under way.
    async fn serve_tls(self, stream: TcpStream, tls: Tls) {
        let peer = self.peer;
        let close = self.admitted.close.clone();
        let mut stopping = self.stopping.clone();
        let handshake = tokio::time::timeout(self.header_timeout, tls.accept(stream));
        let stream = tokio::select! {
            accepted = handshake => match accepted {
                Ok(Ok(Some(stream))) => stream,
                Ok(Ok(None)) => {
                    tracing::debug!(%peer, "plain HTTP on the TLS port: told to use https");
                    return;
                }
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake not finished within the header timeout");
                    return;
                }
            },
            () = close.notified() => {
                tracing::debug!(%peer, "connection closed during its handshake to make room for another");
                return;
            }
            _ = stopping.wait_for(|stop| *stop) => return,
        };
        self.serve(stream, true).await;
    }

    /// Serves HTTP on `io`, the connection's stream or the TLS session over it (`tls`).
    async fn serve<I>(mut self, io: I, tls: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (peer, registry, id) = (self.peer, self.registry.clone(), self.admitted.id);
        let router = self.router.clone();
        let service = tower::service_fn(move |mut request: axum::http::Request<hyper::body::Incoming>| {
            let in_flight = InFlight::start(&registry, id);
            request.extensions_mut().insert(ConnectInfo(peer));
            if tls {
                request.extensions_mut().insert(TlsConnection);
            }
            let arrived_whole = Arc::new(AtomicBool::new(true));
            let request = request.map(|inner| {
                if inner.is_end_stream() {
                    Body::new(inner)
                } else {
                    arrived_whole.store(false, Ordering::Relaxed);
                    let receiving = Receiving::start(&registry, id);
                    Body::new(ReceivingBody { inner, receiving, arrived_whole: arrived_whole.clone() })
                }
            });
            let response = router.clone().oneshot(request);
            async move {
                let mut response = response.await?;
                // Answered before its body was read (a refused upload, say): hyper closes
                // the connection rather than read the rest, so the client is told not to
                // send its next request on it.
                if !arrived_whole.load(Ordering::Relaxed) {
                    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response.map(|inner| Body::new(TrackedBody { inner, _in_flight: in_flight })))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(self.header_timeout);
        let served = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        let mut served = std::pin::pin!(served);
        let close = self.admitted.close.clone();
        let mut graceful = false;
        loop {
            tokio::select! {
                result = served.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                    break;
                }
                () = close.notified() => {
                    tracing::debug!(%peer, "connection closed to make room for another");
                    break;
                }
                changed = self.stopping.changed(), if !graceful => {
                    if changed.is_err() || *self.stopping.borrow() {
                        served.as_mut().graceful_shutdown();
                        graceful = true;
                    }
                }
            }
        }
        drop(self.closed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max_connections: usize, max_per_address: usize) -> Arc<Mutex<Registry>> {
        let mut limits = Limits::for_open_files(1 << 20, 0);
        limits.max_connections = max_connections;
        limits.max_per_address = max_per_address;
        limits.trusted_proxies = vec!["10.0.0.1/32".parse().unwrap()];
        Arc::new(Mutex::new(Registry { limits, next_id: 0, open: HashMap::new(), per_address: HashMap::new() }))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn is_open(registry: &Arc<Mutex<Registry>>, connection: &Admitted) -> bool {
        registry.lock().unwrap().open.contains_key(&connection.id)
    }

    #[test]
    fn over_the_cap_the_longest_waiting_connection_makes_room() {
        let registry = registry(2, 10);
        let first = admit(&registry, ip("192.0.2.1")).unwrap();
        let second = admit(&registry, ip("192.0.2.2")).unwrap();
        let third = admit(&registry, ip("192.0.2.3")).unwrap();
        assert!(!is_open(&registry, &first), "the oldest waiting one was closed");
        assert!(is_open(&registry, &second) && is_open(&registry, &third));
    }

    #[test]
    fn connections_with_a_request_in_flight_are_never_closed_to_make_room() {
        let registry = registry(2, 10);
        let first = admit(&registry, ip("192.0.2.1")).unwrap();
        let second = admit(&registry, ip("192.0.2.2")).unwrap();
        let busy = (InFlight::start(&registry, first.id), InFlight::start(&registry, second.id));
        assert!(admit(&registry, ip("192.0.2.3")).is_none(), "all busy: the new one is refused");
        drop(busy);
        assert!(admit(&registry, ip("192.0.2.3")).is_some());
    }

    #[test]
    fn a_request_still_receiving_its_body_makes_room_after_those_waiting_for_one() {
        let registry = registry(3, 10);
        let trickling = admit(&registry, ip("192.0.2.1")).unwrap();
        let _trickled = (InFlight::start(&registry, trickling.id), Receiving::start(&registry, trickling.id));
        let answering = admit(&registry, ip("192.0.2.2")).unwrap();
        let _answered = InFlight::start(&registry, answering.id);
        let idle = admit(&registry, ip("192.0.2.3")).unwrap();

        let fourth = admit(&registry, ip("192.0.2.4")).unwrap();
        assert!(!is_open(&registry, &idle), "the idle one goes first, though it is the youngest");
        let _answering_too = InFlight::start(&registry, fourth.id);
        let _fifth = admit(&registry, ip("192.0.2.5")).unwrap();
        assert!(!is_open(&registry, &trickling), "then the one still receiving its body");
        assert!(is_open(&registry, &answering), "a request that arrived whole is never cut");
    }

    #[test]
    fn one_address_over_its_share_closes_only_its_own() {
        let registry = registry(100, 2);
        let other = admit(&registry, ip("198.51.100.9")).unwrap();
        let first = admit(&registry, ip("2001:db8::1")).unwrap();
        let _second = admit(&registry, ip("2001:db8::2")).unwrap();
        let _third = admit(&registry, ip("2001:db8::3")).unwrap();
        assert!(!is_open(&registry, &first), "same /64: its oldest made room");
        assert!(is_open(&registry, &other));
        assert_eq!(registry.lock().unwrap().per_address[&ip("2001:db8::")], 2);
        // A trusted proxy carries everyone and is not held to one address's share.
        let proxied: Vec<_> = (0..5).map(|_| admit(&registry, ip("10.0.0.1")).unwrap()).collect();
        assert!(proxied.iter().all(|connection| is_open(&registry, connection)));
    }

    #[test]
    fn over_the_cap_the_address_holding_most_makes_room_first() {
        let registry = registry(4, 10);
        let lone = admit(&registry, ip("192.0.2.1")).unwrap();
        let flood: Vec<_> = (0..3).map(|_| admit(&registry, ip("203.0.113.7")).unwrap()).collect();
        let newcomer = admit(&registry, ip("192.0.2.2")).unwrap();
        assert!(is_open(&registry, &lone), "the oldest, but its address holds one connection");
        assert!(!is_open(&registry, &flood[0]) && is_open(&registry, &flood[1]), "the flood's oldest made room");
        assert!(is_open(&registry, &newcomer));
    }

    #[test]
    fn an_idle_connection_goes_before_a_body_whatever_its_address_holds() {
        let registry = registry(3, 10);
        let idle = admit(&registry, ip("192.0.2.1")).unwrap();
        let uploading: Vec<_> = (0..2).map(|_| admit(&registry, ip("203.0.113.7")).unwrap()).collect();
        let _bodies: Vec<_> = uploading
            .iter()
            .map(|connection| (InFlight::start(&registry, connection.id), Receiving::start(&registry, connection.id)))
            .collect();
        let _newcomer = admit(&registry, ip("198.51.100.1")).unwrap();
        assert!(!is_open(&registry, &idle), "waiting for a request, so the first to go");
        assert!(uploading.iter().all(|connection| is_open(&registry, connection)));
    }

    #[test]
    fn a_closed_connection_gives_its_place_back() {
        let registry = registry(100, 1);
        let first = admit(&registry, ip("192.0.2.1")).unwrap();
        drop(first);
        assert!(registry.lock().unwrap().per_address.is_empty());
        assert!(admit(&registry, ip("192.0.2.1")).is_some());
    }

    #[test]
    fn the_default_cap_leaves_room_for_the_database_and_files() {
        assert_eq!(Limits::for_open_files(1024, 32).max_connections, 1024 - 128 - 32);
    }
}
