//! The outbound host allow-list (`[integrations] allow_hosts`), checked before any connection.
//!
//! Two checks, so neither a name nor a redirect can reach into the gateway's own network:
//! 1. the URL's host must be listed: a name (`api.example.com`, or `*.example.com` for its
//!    subdomains) or an IP address / CIDR range for literal addresses;
//! 2. a name is resolved by [`PolicyResolver`] and every address it yields must be either
//!    inside a listed IP / CIDR entry or a public address. A listed name that resolves to a
//!    loopback, private, link-local (cloud metadata), CGNAT, multicast or unspecified address
//!    is refused unless that address is listed itself. The connector only ever sees the
//!    addresses that passed, so there is no second look-up to race (DNS rebinding).
//!
//! Redirects go through the same checks (the redirect policy checks the host; the resolver
//! checks the addresses).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// Exactly this host name (lower case).
    Name(String),
    /// Any subdomain of this suffix (`*.example.com` holds `.example.com`).
    Suffix(String),
    /// An address or a range.
    Net(IpNet),
}

impl HostRule {
    pub fn parse(entry: &str) -> Result<HostRule, String> {
        let e = entry.trim();
        if e.is_empty() {
            return Err("an empty host entry".into());
        }
        if let Ok(ip) = e
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(HostRule::Net(IpNet::from(ip)));
        }
        if e.contains('/') {
            return e
                .parse::<IpNet>()
                .map(HostRule::Net)
                .map_err(|_| format!("`{e}` is not a CIDR range like 10.0.0.0/8"));
        }
        let (suffix, name) = match e.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, e),
        };
        let name = name.to_ascii_lowercase();
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !ok {
            return Err(format!(
                "`{e}` is not a host name, `*.domain`, IP address or CIDR range"
            ));
        }
        Ok(if suffix {
            HostRule::Suffix(format!(".{name}"))
        } else {
            HostRule::Name(name)
        })
    }
}

/// Why a host or address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("host `{0}` is not in [integrations] allow_hosts")]
    HostNotAllowed(String),
    #[error("`{host}` resolves only to addresses that are not allowed ({addrs})")]
    AddressNotAllowed { host: String, addrs: String },
    #[error("scheme `{0}` is not allowed (http and https only)")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
}

/// The parsed allow-list.
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    rules: Vec<HostRule>,
}

impl HostPolicy {
    pub fn new(entries: &[String]) -> Result<HostPolicy, String> {
        Ok(HostPolicy {
            rules: entries
                .iter()
                .map(|e| HostRule::parse(e))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn ip_listed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.rules
            .iter()
            .any(|r| matches!(r, HostRule::Net(n) if n.contains(&ip)))
    }

    fn name_listed(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.rules.iter().any(|r| match r {
            HostRule::Name(n) => *n == name,
            HostRule::Suffix(s) => name.ends_with(s.as_str()),
            HostRule::Net(_) => false,
        })
    }

    /// Check 1: the URL's scheme and host, before anything is sent.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused::Scheme(url.scheme().to_string()));
        }
        match url.host() {
            None => Err(Refused::NoHost),
            Some(url::Host::Ipv4(ip)) => self.check_literal(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_literal(IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => {
                // A name spelled as a number ("2130706433") is an address to some resolvers.
                if let Ok(ip) = name.parse::<IpAddr>() {
                    return self.check_literal(ip);
                }
                if self.name_listed(name) {
                    Ok(())
                } else {
                    Err(Refused::HostNotAllowed(name.to_string()))
                }
            }
        }
    }

    fn check_literal(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.ip_listed(ip) {
            Ok(())
        } else {
            Err(Refused::HostNotAllowed(ip.to_string()))
        }
    }

    /// Check 2: which resolved addresses of a listed name may be connected to.
    pub fn filter_addrs(
        &self,
        host: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refused> {
        if !self.name_listed(host) {
            return Err(Refused::HostNotAllowed(host.to_string()));
        }
        let (ok, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs
            .into_iter()
            .partition(|a| self.ip_listed(a.ip()) || is_public(a.ip()));
        if ok.is_empty() {
            return Err(Refused::AddressNotAllowed {
                host: host.to_string(),
                addrs: refused
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(ok)
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// A globally routable unicast address: not loopback, private, link-local, CGNAT, unique
/// local, documentation, benchmarking, multicast, broadcast or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x64 && s[1] == 0xff9b))
        }
    }
}

/// reqwest's resolver: resolves with the system resolver (on tokio's blocking pool) and
/// keeps only the addresses the policy allows.
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    pub policy: Arc<HostPolicy>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            if !policy.name_listed(&host) {
                return Err(Box::new(Refused::HostNotAllowed(host))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?
                .collect();
            let ok = policy
                .filter_addrs(&host, addrs)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Finds a [`Refused`] in an error's source chain (reqwest wraps resolver errors).
pub fn find_refused(err: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r.clone());
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> HostPolicy {
        HostPolicy::new(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn parses_entries() {
        assert_eq!(
            HostRule::parse("API.example.com").unwrap(),
            HostRule::Name("api.example.com".into())
        );
        assert_eq!(
            HostRule::parse("*.example.com").unwrap(),
            HostRule::Suffix(".example.com".into())
        );
        assert!(matches!(
            HostRule::parse("127.0.0.1").unwrap(),
            HostRule::Net(_)
        ));
        assert!(matches!(
            HostRule::parse("[::1]").unwrap(),
            HostRule::Net(_)
        ));
        assert!(matches!(
            HostRule::parse("10.0.0.0/8").unwrap(),
            HostRule::Net(_)
        ));
        for bad in ["", "10.0.0.0/99", "http://x", "a b", "x..y", "host:80"] {
            assert!(HostRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn url_check_names_and_literals() {
        let p = policy(&["api.example.com", "*.corp.example", "127.0.0.1"]);
        assert!(p.check_url(&url("https://api.example.com/x")).is_ok());
        assert!(p.check_url(&url("https://API.Example.com./x")).is_ok());
        assert!(p.check_url(&url("https://a.b.corp.example/x")).is_ok());
        assert!(p.check_url(&url("https://corp.example/x")).is_err());
        assert!(p.check_url(&url("http://127.0.0.1:8099/x")).is_ok());
        // A listed address does not make its names listed, nor other spellings of others.
        assert!(p.check_url(&url("http://localhost:8099/")).is_err());
        assert!(p.check_url(&url("http://127.0.0.2/")).is_err());
        assert!(p.check_url(&url("http://2130706434/")).is_err());
        assert!(p.check_url(&url("http://[::ffff:127.0.0.2]/")).is_err());
        assert!(p.check_url(&url("http://[::ffff:127.0.0.1]/")).is_ok());
        assert_eq!(
            p.check_url(&url("ftp://api.example.com/")),
            Err(Refused::Scheme("ftp".into()))
        );
        assert!(p.check_url(&url("file:///etc/passwd")).is_err());
        assert!(policy(&[])
            .check_url(&url("https://api.example.com/"))
            .is_err());
    }

    #[test]
    fn resolved_internal_addresses_need_their_own_entry() {
        let sa = |s: &str| -> SocketAddr { format!("{s}:0").parse().unwrap() };
        let p = policy(&["evil.example.com", "localhost", "127.0.0.1"]);
        // A listed name pointing at metadata / private space is refused...
        let e = p.filter_addrs(
            "evil.example.com",
            vec![sa("169.254.169.254"), sa("10.1.2.3")],
        );
        assert!(matches!(e, Err(Refused::AddressNotAllowed { .. })), "{e:?}");
        // ...public addresses pass, internal ones are dropped from a mixed answer...
        let ok = p
            .filter_addrs(
                "evil.example.com",
                vec![sa("10.1.2.3"), sa("93.184.216.34")],
            )
            .unwrap();
        assert_eq!(ok, vec![sa("93.184.216.34")]);
        // ...and a listed internal address is reachable through a listed name.
        let ok = p
            .filter_addrs("localhost", vec![sa("127.0.0.1"), sa("[::1]")])
            .unwrap();
        assert_eq!(ok, vec![sa("127.0.0.1")]);
        assert!(p
            .filter_addrs("other.example", vec![sa("93.184.216.34")])
            .is_err());
    }

    #[test]
    fn public_address_classes() {
        for internal in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(internal.parse().unwrap()), "{internal}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
