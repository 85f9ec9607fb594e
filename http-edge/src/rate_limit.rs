//! Rate limits per client (peer IP, or the client a trusted proxy names in `X-Forwarded-For`)
//! or per key (a request header such as `x-api-key`), with `governor`'s GCRA: `burst` requests
//! at once, refilled at `per_second`. Over the limit: 429, `Retry-After` (seconds until the next
//! request would pass, at least 1) and the shared error body.
//!
//! Put a limit on the routes it guards with [`RateLimit::apply`] (a route layer). Requests that
//! did not come through [`crate::serve()`] (in-process `oneshot` calls in tests) carry no
//! peer address and are not limited per IP.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, FromFnLayer, Next};
use axum::response::Response;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, HeaderName, StatusCode};

use crate::error::error_response;
use crate::metrics::count_rejection;
use crate::serve::peer_addr;

/// How often idle clients are forgotten (their bucket is full again).
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// `burst` requests at once, then `per_second`. `per_second == 0` turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    pub const OFF: Rate = Rate {
        per_second: 0,
        burst: 0,
    };

    fn quota(self) -> Option<Quota> {
        let per_second = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Some(Quota::per_second(per_second).allow_burst(burst))
    }
}

/// Proxies whose `X-Forwarded-For` is believed: comma-separated IP addresses (empty entries
/// ignored), as read from a setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpAddr>);

impl std::str::FromStr for TrustedProxies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse()
                    .map_err(|_| format!("{entry:?} is not an IP address"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    Secret(u64),
}

#[derive(Clone)]
enum KeyedBy {
    /// The peer address, or the client named by a trusted proxy.
    Client { trusted_proxies: Arc<[IpAddr]> },
    /// A header's value, kept only as a keyed hash; requests without it share one bucket.
    Header {
        name: HeaderName,
        hasher: RandomState,
    },
}

type CheckFn =
    fn(State<RateLimit>, Request, Next) -> Pin<Box<dyn Future<Output = Response> + Send>>;

/// What [`RateLimit::layer`] returns.
pub type RateLimitLayer = FromFnLayer<CheckFn, RateLimit, (State<RateLimit>, Request)>;

/// A keyed rate limit, shared by every route it is applied to.
#[derive(Clone)]
pub struct RateLimit {
    service: &'static str,
    limiter: Option<Arc<DefaultKeyedRateLimiter<Key>>>,
    keyed_by: KeyedBy,
}

impl RateLimit {
    /// Per client IP. `X-Forwarded-For` is believed only when the peer is one of
    /// `trusted_proxies`, and then only up to the first address that is not. IPv6 clients are
    /// limited per /64, what one host is usually given.
    pub fn per_client(service: &'static str, rate: Rate, trusted_proxies: Vec<IpAddr>) -> Self {
        let trusted_proxies = trusted_proxies.into_iter().map(canonical).collect();
        Self::new(service, rate, KeyedBy::Client { trusted_proxies })
    }

    /// Per value of `header` (an API key).
    pub fn per_header(service: &'static str, rate: Rate, header: HeaderName) -> Self {
        Self::new(
            service,
            rate,
            KeyedBy::Header {
                name: header,
                hasher: RandomState::new(),
            },
        )
    }

    fn new(service: &'static str, rate: Rate, keyed_by: KeyedBy) -> Self {
        let limiter = rate
            .quota()
            .map(|quota| Arc::new(RateLimiter::keyed(quota)));
        crate::metrics::describe();
        if let Some(limiter) = &limiter {
            forget_idle_clients(Arc::downgrade(limiter));
        }
        Self {
            service,
            limiter,
            keyed_by,
        }
    }

    pub fn is_off(&self) -> bool {
        self.limiter.is_none()
    }

    /// Limits every route of `routes` (as a route layer: unmatched paths are not counted).
    pub fn apply<S>(&self, routes: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        if self.is_off() {
            return routes;
        }
        routes.route_layer(self.layer())
    }

    /// The limit as a layer, for single methods of a route:
    /// `get(list).merge(post(add).route_layer(limit.layer()))`.
    pub fn layer(&self) -> RateLimitLayer {
        let check: CheckFn = |state, request, next| Box::pin(check(state, request, next));
        middleware::from_fn_with_state(self.clone(), check)
    }

    fn key(&self, request: &Request) -> Option<Key> {
        match &self.keyed_by {
            KeyedBy::Client { trusted_proxies } => {
                let peer = peer_addr(request).map(|addr: SocketAddr| addr.ip())?;
                let client = client_ip(peer, request.headers(), trusted_proxies);
                Some(Key::Ip(bucket_of(client)))
            }
            KeyedBy::Header { name, hasher } => {
                let value = request.headers().get(name).map(|v| v.as_bytes());
                Some(Key::Secret(hasher.hash_one(value)))
            }
        }
    }
}

async fn check(State(limit): State<RateLimit>, request: Request, next: Next) -> Response {
    let (Some(limiter), Some(key)) = (&limit.limiter, limit.key(&request)) else {
        return next.run(request).await;
    };
    match limiter.check_key(&key) {
        Ok(()) => next.run(request).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(limiter.clock().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            count_rejection(limit.service, "rate_limited");
            error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; retry after the time in Retry-After",
                Some(secs),
            )
        }
    }
}

/// Drops the state of clients whose bucket is full again, so memory follows active clients.
/// Stops when the limiter is dropped; does nothing outside a Tokio runtime.
fn forget_idle_clients(limiter: Weak<DefaultKeyedRateLimiter<Key>>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(FORGET_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(limiter) = limiter.upgrade() else {
                return;
            };
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    });
}

/// The client a request comes from, as [`client_address`] resolved it (the peer, or the client a
/// trusted proxy names). A service that calls another on the shopper's behalf forwards it as
/// `X-Forwarded-For`, so the next service's per-client limits see the shopper, not the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

type RememberFn =
    fn(State<Arc<[IpAddr]>>, Request, Next) -> Pin<Box<dyn Future<Output = Response> + Send>>;

/// What [`client_address`] returns.
pub type ClientAddressLayer =
    FromFnLayer<RememberFn, Arc<[IpAddr]>, (State<Arc<[IpAddr]>>, Request)>;

/// Middleware: puts the request's [`ClientIp`] in its extensions (nothing when the request came
/// from no socket, as in-process calls do). `trusted_proxies` as for [`RateLimit::per_client`].
pub fn client_address(trusted_proxies: Vec<IpAddr>) -> ClientAddressLayer {
    let trusted: Arc<[IpAddr]> = trusted_proxies.into_iter().map(canonical).collect();
    middleware::from_fn_with_state(trusted, |State(trusted), mut request: Request, next| {
        if let Some(peer) = peer_addr(&request) {
            let client = client_ip(peer.ip(), request.headers(), &trusted);
            request.extensions_mut().insert(ClientIp(client));
        }
        Box::pin(next.run(request))
    })
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// IPv4 per address, IPv6 per /64.
fn bucket_of(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// The client a chain of trusted proxies reports: `X-Forwarded-For` read from the right,
/// skipping trusted proxies, up to the first other address. Anything unreadable stops the walk
/// at what is known so far.
fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(&peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for hop in text.rsplit(',') {
            let Some(ip) = parse_hop(hop.trim()) else {
                return client;
            };
            client = ip;
            if !trusted.contains(&ip) {
                return ip;
            }
        }
    }
    client
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().expect("header"));
        }
        headers
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy = ip("10.0.0.1");
        let headers = forwarded(&["203.0.113.9, 198.51.100.7"]);
        // Not a trusted peer: the header is ignored.
        assert_eq!(
            client_ip(ip("192.0.2.1"), &headers, &[proxy]),
            ip("192.0.2.1")
        );
        // A trusted peer: the nearest untrusted hop, not the (forgeable) leftmost one.
        assert_eq!(client_ip(proxy, &headers, &[proxy]), ip("198.51.100.7"));
        // Two trusted proxies in a row.
        let inner = ip("10.0.0.2");
        let headers = forwarded(&["203.0.113.9", "198.51.100.7, 10.0.0.2"]);
        assert_eq!(
            client_ip(proxy, &headers, &[proxy, inner]),
            ip("198.51.100.7")
        );
        // Garbage stops the walk at what is known.
        let headers = forwarded(&["nonsense"]);
        assert_eq!(client_ip(proxy, &headers, &[proxy]), proxy);
        // No header: the proxy itself.
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &[proxy]), proxy);
        // Ports and IPv4-mapped spellings.
        let headers = forwarded(&["[::ffff:198.51.100.7]:4711"]);
        assert_eq!(client_ip(proxy, &headers, &[proxy]), ip("198.51.100.7"));
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        assert_eq!(
            bucket_of(ip("2001:db8:1:2:aaaa::1")),
            bucket_of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            bucket_of(ip("2001:db8:1:2::1")),
            bucket_of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(bucket_of(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn trusted_proxies_parse_from_a_setting() {
        let parsed: TrustedProxies = " 10.0.0.1, ,::1".parse().expect("parses");
        assert_eq!(parsed.0, vec![ip("10.0.0.1"), ip("::1")]);
        assert_eq!("".parse::<TrustedProxies>(), Ok(TrustedProxies::default()));
        assert!("10.0.0.0/8".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn zero_per_second_is_off() {
        assert!(Rate::OFF.quota().is_none());
        assert!(
            Rate {
                per_second: 1,
                burst: 0
            }
            .quota()
            .is_some()
        );
    }
}
