//! Fetching an image by URL (`POST /v1/images {"url": ...}`) without letting the URL reach
//! inside: only http(s), every hop's host resolved here and each address checked against
//! [`is_public`] (or the operator's allowlist), the connection pinned to exactly the addresses
//! that were checked, at most [`MAX_REDIRECTS`] redirects each checked the same way, proxy
//! variables ignored, bounded in time and size.
//!
//! Why a client per hop rather than one client with a filtering DNS resolver: reqwest's resolver
//! sees neither IP-literal hosts (they skip it) nor the port (allowlist rules may name one), and a
//! resolver that resolves again after our check would open a DNS-rebinding window. Pinning the
//! checked addresses into a one-shot client closes all three; a URL fetch is a rare, key-guarded
//! write, so the client's set-up cost does not matter.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt as _;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Redirect hops followed at most (each one checked like the first URL).
pub const MAX_REDIRECTS: usize = 3;
/// Addresses of one host considered at most.
const MAX_ADDRESSES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL itself is unusable; says nothing about the network, so it may be told as is.
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// Everything below is answered with one generic message (no port scanner); the detail is
    /// for the log.
    #[error("{addr} is not a public address and not allowlisted")]
    Refused { addr: SocketAddr },
    #[error("cannot resolve {host}: {message}")]
    Resolve { host: String, message: String },
    #[error("request failed: {0}")]
    Request(#[source] reqwest::Error),
    #[error("answered status {0}")]
    Status(u16),
    #[error("redirect without a usable location")]
    BadRedirect,
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// An allowlist entry of `BACKEND_FETCH_ALLOW`: an address or CIDR block (`10.0.0.0/8`,
/// `fd00::/8`, `192.168.1.5`), or one address and port (`127.0.0.1:8080`, `[::1]:8080`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    network: IpAddr,
    prefix: u8,
    port: Option<u16>,
}

impl AllowRule {
    pub fn matches(&self, addr: SocketAddr) -> bool {
        if self.port.is_some_and(|p| p != addr.port()) {
            return false;
        }
        match (self.network, addr.ip().to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn prefix_matches(net: u128, ip: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (net >> shift) == (ip >> shift)
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.network) {
            (Some(port), IpAddr::V6(ip)) => write!(f, "[{ip}]:{port}"),
            (Some(port), ip) => write!(f, "{ip}:{port}"),
            (None, ip) => write!(f, "{ip}/{}", self.prefix),
        }
    }
}

impl FromStr for AllowRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || format!("{s:?} is not an address, CIDR block or address:port");
        if let Ok(addr) = s.parse::<SocketAddr>() {
            let network = addr.ip().to_canonical();
            return Ok(Self {
                prefix: if network.is_ipv4() { 32 } else { 128 },
                network,
                port: Some(addr.port()),
            });
        }
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let network = ip.parse::<IpAddr>().map_err(|_| bad())?.to_canonical();
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(bits);
        if prefix > bits {
            return Err(bad());
        }
        Ok(Self {
            network,
            prefix,
            port: None,
        })
    }
}

/// `BACKEND_FETCH_ALLOW`: comma-separated [`AllowRule`]s, empty by default (only public
/// addresses can be fetched).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<AllowRule>);

impl FromStr for AllowList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .filter(|item| !item.trim().is_empty())
            .map(AllowRule::from_str)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&rules.join(","))
    }
}

impl AllowList {
    pub fn allows(&self, addr: SocketAddr) -> bool {
        self.0.iter().any(|rule| rule.matches(addr))
    }
}

/// Whether `ip` is a globally reachable unicast address. Refused: loopback, private, shared
/// (CGNAT), link-local (the cloud metadata address), multicast, unspecified, broadcast,
/// documentation, benchmarking and reserved ranges, unique-local and site-local IPv6, and any
/// IPv6 form that embeds an IPv4 address (mapped, compatible, NAT64, 6to4) unless the embedded
/// address is itself public. IPv6 outside global unicast (2000::/3) is refused outright.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0 // "this network", 0.0.0.0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast, reserved, broadcast
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // ::ffff:a.b.c.d (mapped): the socket talks IPv4 to the embedded address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // 64:ff9b::a.b.c.d (NAT64, RFC 6052): reaches the embedded address through the translator.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(segments[6], segments[7]));
    }
    // 2002:AABB:CCDD::/48 (6to4) carries a.b.c.d in bits 16..48.
    if segments[0] == 0x2002 {
        return is_public_v4(embedded(segments[1], segments[2]));
    }
    // Everything else outside global unicast (::1, ::, ::a.b.c.d compatible, 64:ff9b:1::/48,
    // 100::/64, fc00::/7, fe80::/10, fec0::/10, ff00::/8, ...) is refused.
    if segments[0] & 0xe000 != 0x2000 {
        return false;
    }
    let refused = segments[0] == 0x2001 && segments[1] < 0x0200 // IETF assignments, Teredo
        || segments[0] == 0x2001 && segments[1] == 0x0db8 // documentation
        || segments[0] & 0xfff0 == 0x3ff0; // 3fff::/20, documentation
    !refused
}

/// Fetch limits and the allowlist.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    pub allow: AllowList,
    pub max_bytes: usize,
    pub connect_timeout: Duration,
    /// For the whole fetch: resolution, every hop, the body.
    pub total_timeout: Duration,
    /// Only allowlisted addresses, given as IP literals, may be fetched: no name is resolved and
    /// no public address reached (contract fuzzing, or a deployment that fetches from its own
    /// mirror only).
    pub only_allowlisted: bool,
}

/// Downloads images by URL under the rules of this module.
#[derive(Debug, Clone)]
pub struct ImageFetcher {
    settings: FetchSettings,
}

/// Answers only for the host that was checked, with the addresses that were checked.
struct PinnedResolver {
    host: String,
    addrs: Vec<SocketAddr>,
}

impl Resolve for PinnedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let result = if name.as_str().eq_ignore_ascii_case(&self.host) {
            let addrs: Addrs = Box::new(self.addrs.clone().into_iter());
            Ok(addrs)
        } else {
            Err(format!("{} was not checked", name.as_str()).into())
        };
        Box::pin(std::future::ready(result))
    }
}

impl ImageFetcher {
    pub fn new(settings: FetchSettings) -> Self {
        if !settings.allow.0.is_empty() {
            tracing::info!(allow = %settings.allow, "url fetches may reach these inside addresses");
        }
        Self { settings }
    }

    pub fn settings(&self) -> &FetchSettings {
        &self.settings
    }

    /// The image bytes at `url`, following at most [`MAX_REDIRECTS`] checked redirects.
    #[tracing::instrument(skip_all)]
    pub async fn fetch(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let url = parse(url)?;
        let limit = self.settings.total_timeout;
        tokio::time::timeout(limit, self.follow(url))
            .await
            .map_err(|_| FetchError::Timeout(limit))?
    }

    async fn follow(&self, mut url: Url) -> Result<Vec<u8>, FetchError> {
        for hop in 0..=MAX_REDIRECTS {
            let response = self.send(&url).await?;
            let status = response.status();
            if status.is_redirection() {
                if hop == MAX_REDIRECTS {
                    return Err(FetchError::TooManyRedirects);
                }
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or(FetchError::BadRedirect)?;
                let next = url.join(location).map_err(|_| FetchError::BadRedirect)?;
                check_scheme(&next).map_err(|_| FetchError::BadRedirect)?;
                tracing::debug!(hop, host = ?next.host_str(), "following a redirect");
                url = next;
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::Status(status.as_u16()));
            }
            return self.read_body(response).await;
        }
        Err(FetchError::TooManyRedirects)
    }

    /// One request, to addresses checked here and nowhere else.
    async fn send(&self, url: &Url) -> Result<reqwest::Response, FetchError> {
        let port = url
            .port_or_known_default()
            .ok_or_else(|| FetchError::InvalidUrl("no port".into()))?;
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.settings.connect_timeout)
            .timeout(self.settings.total_timeout)
            .user_agent(concat!(
                "fashion-search-backend/",
                env!("CARGO_PKG_VERSION")
            ));
        match host_of(url)? {
            // IP literals (the url crate has already read decimal, hex and octal spellings such
            // as http://2130706433/ as 127.0.0.1): checked as they are; reqwest connects to them
            // without a resolver.
            Host::Ip(ip) => self.check(SocketAddr::new(ip, port))?,
            Host::Name(host) => {
                let addrs = self.resolve(host, port).await?;
                builder = builder.dns_resolver(PinnedResolver {
                    host: host.to_owned(),
                    addrs,
                });
            }
        }
        let client = builder.build().map_err(FetchError::Request)?;
        client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "image/*")
            .send()
            .await
            .map_err(FetchError::Request)
    }

    /// Resolves `host` and checks every address: one refused address refuses the host (a name
    /// that mixes public and inside addresses is not to be trusted).
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, FetchError> {
        let resolve_error = |message: String| FetchError::Resolve {
            host: host.to_owned(),
            message,
        };
        if self.settings.only_allowlisted {
            let ip: IpAddr = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| resolve_error("only allowlisted addresses may be fetched".into()))?;
            let addr = SocketAddr::new(ip, port);
            return if self.settings.allow.allows(addr) {
                Ok(vec![addr])
            } else {
                Err(FetchError::Refused { addr })
            };
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| resolve_error(e.to_string()))?
            .take(MAX_ADDRESSES)
            .collect();
        if addrs.is_empty() {
            return Err(resolve_error("no addresses".into()));
        }
        for addr in &addrs {
            self.check(*addr)?;
        }
        Ok(addrs)
    }

    fn check(&self, addr: SocketAddr) -> Result<(), FetchError> {
        if is_public(addr.ip()) || self.settings.allow.allows(addr) {
            Ok(())
        } else {
            Err(FetchError::Refused { addr })
        }
    }

    /// Reads in chunks and stops at the limit: a server may send no length, or lie about it.
    async fn read_body(&self, response: reqwest::Response) -> Result<Vec<u8>, FetchError> {
        let max = self.settings.max_bytes;
        if response.content_length().is_some_and(|n| n > max as u64) {
            return Err(FetchError::TooLarge(max));
        }
        let mut bytes = Vec::new();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(FetchError::Request)?;
            if bytes.len().saturating_add(chunk.len()) > max {
                return Err(FetchError::TooLarge(max));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

enum Host<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

/// The URL's host: the url crate writes IPv4 hosts in dotted decimal whatever the spelling, and
/// IPv6 ones in brackets; a domain never parses as an address.
fn host_of(url: &Url) -> Result<Host<'_>, FetchError> {
    let host = url
        .host_str()
        .ok_or_else(|| FetchError::InvalidUrl("the URL has no host".into()))?;
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Ok(match bare.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Name(host),
    })
}

fn parse(url: &str) -> Result<Url, FetchError> {
    let url = Url::parse(url.trim()).map_err(|e| FetchError::InvalidUrl(e.to_string()))?;
    check_scheme(&url)?;
    Ok(url)
}

fn check_scheme(url: &Url) -> Result<(), FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::InvalidUrl(
            "only http and https URLs can be fetched".into(),
        ));
    }
    host_of(url).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn inside_ipv4_addresses_are_refused() {
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_public(ip(s)), "{s} must be refused");
        }
    }

    #[test]
    fn public_ipv4_addresses_pass() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "192.169.0.1",
            "198.20.0.1",
            "223.255.255.254",
        ] {
            assert!(is_public(ip(s)), "{s} is public");
        }
    }

    #[test]
    fn inside_ipv6_addresses_and_embedded_ipv4_forms_are_refused() {
        for s in [
            "::",
            "::1",
            "::127.0.0.1",
            "::10.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::ffff:169.254.169.254",
            "::ffff:10.1.2.3",
            "::ffff:0.0.0.0",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::192.168.0.1",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:db8::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:101::1",
            "3fff::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
        ] {
            assert!(!is_public(ip(s)), "{s} must be refused");
        }
    }

    #[test]
    fn public_ipv6_addresses_pass() {
        for s in [
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ] {
            assert!(is_public(ip(s)), "{s} is public");
        }
    }

    #[test]
    fn the_url_parser_reads_every_ipv4_spelling_as_an_address() {
        for spelling in [
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://017700000001/",
            "http://127.1/",
            "http://127.0.1/",
            "http://127.000.000.001/",
            "HTTP://127.0.0.1./",
        ] {
            let url = parse(spelling).expect("parses");
            match host_of(&url) {
                Ok(Host::Ip(ip)) => {
                    assert_eq!(ip, IpAddr::V4(Ipv4Addr::LOCALHOST), "{spelling}");
                    assert!(!is_public(ip));
                }
                _ => panic!("{spelling} parsed as {:?}", url.host_str()),
            }
        }
        for spelling in ["http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/"] {
            let url = parse(spelling).expect("parses");
            match host_of(&url) {
                Ok(Host::Ip(ip)) => assert!(!is_public(ip), "{spelling}"),
                _ => panic!("{spelling} parsed as {:?}", url.host_str()),
            }
        }
        let url = parse("http://localhost:8080/a.png").expect("parses");
        assert!(matches!(host_of(&url), Ok(Host::Name("localhost"))));
    }

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        for bad in [
            "file:///etc/passwd",
            "gopher://127.0.0.1/",
            "ftp://example.com/x.png",
            "data:image/png;base64,AAAA",
            "not a url",
            "http://",
        ] {
            assert!(
                matches!(parse(bad), Err(FetchError::InvalidUrl(_))),
                "{bad}"
            );
        }
        assert!(parse("https://example.com/a.png").is_ok());
    }

    #[test]
    fn allowlist_rules_parse_and_match() {
        let list: AllowList = "10.0.0.0/8, 127.0.0.1:8080,[::1]:9000,fd00::/8,192.168.1.5"
            .parse()
            .expect("parses");
        assert_eq!(list.0.len(), 5);
        let addr = |s: &str| s.parse::<SocketAddr>().expect("socket address");
        assert!(list.allows(addr("10.2.3.4:80")));
        assert!(list.allows(addr("127.0.0.1:8080")));
        assert!(!list.allows(addr("127.0.0.1:8081")), "port-bound rule");
        assert!(list.allows(addr("[::1]:9000")));
        assert!(!list.allows(addr("[::1]:9001")));
        assert!(list.allows(addr("[fd12::1]:443")));
        assert!(list.allows(addr("192.168.1.5:1")));
        assert!(!list.allows(addr("192.168.1.6:1")));
        assert!(
            list.allows(addr("[::ffff:10.0.0.1]:80")),
            "mapped forms match their IPv4 rule"
        );
        assert!(!list.allows(addr("11.0.0.1:80")));
        assert_eq!("".parse::<AllowList>(), Ok(AllowList::default()));
        assert_eq!(" , ".parse::<AllowList>(), Ok(AllowList::default()));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "localhost",
            "10.0.0.0/x",
            "1.2.3.4:99999",
        ] {
            assert!(bad.parse::<AllowList>().is_err(), "{bad}");
        }
        let all: AllowList = "0.0.0.0/0".parse().expect("parses");
        assert!(all.allows(addr("127.0.0.1:1")));
        assert_eq!(
            list.to_string(),
            "10.0.0.0/8,127.0.0.1:8080,[::1]:9000,fd00::/8,192.168.1.5/32"
        );
    }

    #[tokio::test]
    async fn only_allowlisted_resolves_no_name_and_reaches_nothing_else() {
        let fetcher = ImageFetcher::new(FetchSettings {
            allow: "127.0.0.1:8080".parse().expect("allowlist"),
            max_bytes: 1024,
            connect_timeout: Duration::from_secs(1),
            total_timeout: Duration::from_secs(1),
            only_allowlisted: true,
        });
        assert_eq!(
            fetcher
                .resolve("127.0.0.1", 8080)
                .await
                .expect("allowlisted"),
            vec![SocketAddr::from(([127, 0, 0, 1], 8080))]
        );
        assert!(matches!(
            fetcher.resolve("localhost", 8080).await,
            Err(FetchError::Resolve { .. })
        ));
        assert!(matches!(
            fetcher.resolve("8.8.8.8", 80).await,
            Err(FetchError::Refused { .. })
        ));
        assert!(matches!(
            fetcher.resolve("127.0.0.1", 8081).await,
            Err(FetchError::Refused { .. })
        ));
    }
}
