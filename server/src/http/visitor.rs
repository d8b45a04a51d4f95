//! Who is on the other end of a request, and how they reached the site, when the server may
//! sit behind a reverse proxy.
//!
//! Behind a proxy every connection comes from the proxy, so the visitor's address (which
//! sign-in attempts are limited by) and the scheme they used (which decides `Secure`
//! cookies) come from the proxy's `X-Forwarded-For` and `X-Forwarded-Proto`. Anyone can
//! send those headers, so they are believed only from the addresses the operator names as
//! trusted proxies, and removed from every other request. A request that came over the
//! server's own TLS (`serve --tls-cert`) was made with https, whoever sent it.
//!
//! The site's public URL, when the operator sets one, is where volunteers are told to
//! attach and the only origin forms are accepted from, whatever `Host` a request names.
//!
//! [`resolve`] runs before every handler. After it, `Host` and `X-Forwarded-Proto` say how
//! the visitor reached the site, and the [`ClientAddress`] extractor says who they are.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

use super::AppState;
use super::error::ApiError;

const FORWARDED_FOR: &str = "x-forwarded-for";
const FORWARDED_PROTO: &str = "x-forwarded-proto";
/// RFC 7239's header; this server does not read it, and drops it so no handler trusts it.
const FORWARDED: &str = "forwarded";

/// Marks a request that arrived on a TLS connection to this server (see
/// [`super::connections`]).
#[derive(Debug, Clone, Copy)]
pub struct TlsConnection;

/// How the site is reached from outside.
#[derive(Debug, Clone, Default)]
pub struct SiteConfig {
    /// The URL volunteers and browsers use, such as `https://grid.example.org`; without one,
    /// the site is wherever each request says it reached (its `Host`).
    pub public_url: Option<PublicUrl>,
    /// Reverse proxies whose `X-Forwarded-For` and `X-Forwarded-Proto` are believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl SiteConfig {
    fn is_trusted_proxy(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.trusted_proxies.iter().any(|network| network.contains(&address))
    }
}

/// A site's public URL: a scheme and an authority, nothing after them (the site's own links
/// start at `/`, so it cannot live under a path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    pub https: bool,
    /// Host and port, as a browser sends them in `Host`.
    pub authority: String,
}

impl std::str::FromStr for PublicUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|error| format!("{text:?} is not a URL: {error}"))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("the public URL must be http or https, not {other}")),
        };
        let host = url.host_str().ok_or_else(|| format!("{text:?} names no host"))?;
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(format!("{text:?}: the public URL is a scheme and a host (and port), nothing more"));
        }
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Ok(Self { https, authority })
    }
}

/// Parses `--trusted-proxy`: an address (`10.0.0.5`) or a network (`10.0.0.0/8`).
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is neither an IP address nor a network such as 10.0.0.0/8"))
}

/// The visitor's address: the connection's peer, or, behind a trusted proxy, the address
/// the proxies say they forwarded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

impl ClientAddress {
    /// The network the visitor is in, as a quorum counts networks: an IPv4 /24 or an IPv6
    /// /48, what one site or subscriber usually holds whole, so that hosts one person runs
    /// count as one network however many addresses they have.
    pub fn network(&self) -> String {
        match self.0.to_canonical() {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                format!("{a}.{b}.{c}.0/24")
            }
            IpAddr::V6(v6) => {
                let network = u128::from(v6) & !((1u128 << 80) - 1);
                format!("{}/48", std::net::Ipv6Addr::from(network))
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<ClientAddress>()
            .copied()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the visitor layer did not run")))
    }
}

/// The middleware: resolves the client's address and rewrites the headers that say how the
/// site was reached (see the module's documentation).
pub async fn resolve(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let site = &state.site;
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |ConnectInfo(address)| address.ip().to_canonical());
    let over_tls = request.extensions().get::<TlsConnection>().is_some();
    let headers = request.headers_mut();
    let client = if site.is_trusted_proxy(peer) {
        let forwarded: Vec<&str> = headers
            .get_all(FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        client_behind_proxies(&forwarded, peer, |address| site.is_trusted_proxy(address))
    } else {
        headers.remove(FORWARDED_FOR);
        headers.remove(FORWARDED_PROTO);
        peer
    };
    headers.remove(FORWARDED);
    // A proxy that says how its own client came is believed over how the proxy came.
    if over_tls && !headers.contains_key(FORWARDED_PROTO) {
        headers.insert(FORWARDED_PROTO, HeaderValue::from_static("https"));
    }
    if let Some(public) = &site.public_url {
        let scheme = if public.https { "https" } else { "http" };
        headers.insert(FORWARDED_PROTO, HeaderValue::from_static(scheme));
        if let Ok(authority) = HeaderValue::from_str(&public.authority) {
            headers.insert(header::HOST, authority);
        }
    }
    request.extensions_mut().insert(ClientAddress(client));
    next.run(request).await
}

/// The client behind a chain of proxies: `X-Forwarded-For` lists the addresses each proxy
/// saw, the nearest last. Read from the right, the first address that is not a trusted
/// proxy is the client; addresses further left were written by the client itself and prove
/// nothing. If the chain is all trusted proxies, the leftmost is the client.
fn client_behind_proxies(forwarded: &[&str], peer: IpAddr, is_trusted: impl Fn(IpAddr) -> bool) -> IpAddr {
    let mut client = peer;
    for entry in forwarded.iter().rev() {
        let Some(address) = parse_forwarded_address(entry.trim()) else {
            // A hop we cannot read: the last one we could is as far as the chain is known.
            return client;
        };
        client = address;
        if !is_trusted(address) {
            break;
        }
    }
    client
}

/// An address as proxies write it: `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:443` or
/// `203.0.113.7:51234`.
fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|address| address.ip()))
        .ok()
        .map(|address| address.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_is_an_ipv4_24_or_an_ipv6_48() {
        let network = |address: &str| ClientAddress(address.parse().unwrap()).network();
        assert_eq!(network("203.0.113.77"), "203.0.113.0/24");
        assert_eq!(network("::ffff:203.0.113.77"), "203.0.113.0/24", "a mapped IPv4 address is IPv4");
        assert_eq!(network("2001:db8:1234:5678::1"), "2001:db8:1234::/48");
        assert_eq!(network("127.0.7.1"), "127.0.7.0/24");
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_rightmost_address_no_trusted_proxy_wrote() {
        let trusted = |address: IpAddr| address == ip("10.0.0.1") || address == ip("10.0.0.2");
        let proxy = ip("10.0.0.1");
        // The client claims to be 1.1.1.1; the outer proxy saw it come from 203.0.113.7.
        assert_eq!(client_behind_proxies(&["1.1.1.1", "203.0.113.7", "10.0.0.2"], proxy, trusted), ip("203.0.113.7"));
        assert_eq!(client_behind_proxies(&["203.0.113.7"], proxy, trusted), ip("203.0.113.7"));
        assert_eq!(client_behind_proxies(&[], proxy, trusted), proxy, "no header: the proxy itself");
        assert_eq!(client_behind_proxies(&["10.0.0.2"], proxy, trusted), ip("10.0.0.2"), "only proxies");
        assert_eq!(client_behind_proxies(&["203.0.113.7", "garbage"], proxy, trusted), proxy);
        assert_eq!(client_behind_proxies(&["[2001:db8::1]:443"], proxy, trusted), ip("2001:db8::1"));
        assert_eq!(client_behind_proxies(&["::ffff:203.0.113.9"], proxy, trusted), ip("203.0.113.9"));
    }

    #[test]
    fn public_urls_are_a_scheme_and_an_authority() {
        let url: PublicUrl = "https://grid.example.org".parse().unwrap();
        assert_eq!(url, PublicUrl { https: true, authority: "grid.example.org".into() });
        let url: PublicUrl = "http://127.0.0.1:8080/".parse().unwrap();
        assert_eq!(url, PublicUrl { https: false, authority: "127.0.0.1:8080".into() });
        assert_eq!("https://grid.example.org:443".parse::<PublicUrl>().unwrap().authority, "grid.example.org");
        for bad in ["grid.example.org", "ftp://grid.example.org", "https://grid.example.org/grid", "https://a@b.org"] {
            assert!(bad.parse::<PublicUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let site = SiteConfig {
            public_url: None,
            trusted_proxies: vec![parse_network("10.0.0.0/8").unwrap(), parse_network("::1").unwrap()],
        };
        assert!(site.is_trusted_proxy(ip("10.20.30.40")));
        assert!(site.is_trusted_proxy(ip("::ffff:10.0.0.1")), "IPv4 mapped into IPv6");
        assert!(site.is_trusted_proxy(ip("::1")));
        assert!(!site.is_trusted_proxy(ip("11.0.0.1")));
        assert!(parse_network("not an address").is_err());
    }
}
