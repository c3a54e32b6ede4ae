//! The operator's egress policy for proxy peers: which addresses a route
//! author may make the dataplane connect to. A route comes from a tenant; the
//! dataplane runs with the node's network view, so without this a route could
//! reach the cloud metadata service (credentials), loopback services, or the
//! dataplane's own admin port.
//!
//! In: operator rules (`--egress-allow`) and the dataplane's own sockets.
//! Out: `check(addr)` before every connect, with a refusal that says why and
//! how to allow it.
//!
//! Invariants:
//! - An IPv6 form that reaches an IPv4 host (IPv4-mapped `::ffff:a.b.c.d`,
//!   IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) is judged as that
//!   IPv4 address, so no refusal can be bypassed by spelling.
//! - A built-in refused range is opened only by a rule at least as specific
//!   as the range itself: `0.0.0.0/0` means "the internet", not "loopback
//!   too"; `127.0.0.1/32` is a deliberate choice.
//! - The dataplane's own sockets are refused whatever the rules: a route to
//!   itself is a request loop, and to its admin port a privilege escalation.
//!   The one exception is the operator's `--egress-allow-self`
//!   ([`EgressPolicy::allowing_own_listen`]): the *listen* sockets (never the
//!   admin socket) then stop being refused as own sockets, and are judged by
//!   the rules like any other address (loopback still needs a rule).
//!
//! Not covered: other NAT64 prefixes (`64:ff9b:1::/48`, operator-chosen),
//! 6to4 and Teredo, and the host's own non-loopback addresses — pass the
//! pod's IP sockets in `own_ports` to refuse those exactly.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An address block: an address with its host bits zero, and a prefix length
/// no longer than the family's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip`, of the same family, is in this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }

    /// The block of one address.
    fn host(ip: IpAddr) -> Cidr {
        Cidr {
            addr: ip,
            prefix: if ip.is_ipv4() { 32 } else { 128 },
        }
    }

    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    const fn v6(segments: [u16; 8], prefix: u8) -> Cidr {
        let [a, b, c, d, e, f, g, h] = segments;
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One `--egress-allow` rule: a block, and optionally the one port allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllowRule {
    pub net: Cidr,
    pub port: Option<u16>,
}

impl AllowRule {
    fn covers(&self, ip: IpAddr, port: u16) -> bool {
        self.net.contains(ip) && self.port.is_none_or(|p| p == port)
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.net.addr) {
            (None, _) => write!(f, "{}", self.net),
            (Some(p), IpAddr::V4(_)) => write!(f, "{}:{p}", self.net),
            (Some(p), IpAddr::V6(_)) => write!(f, "[{}]:{p}", self.net),
        }
    }
}

/// A rule that does not parse, with the text as given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad egress allow rule {text:?}: {reason} \
     (expected CIDR, CIDR:PORT or [IPv6-CIDR]:PORT, e.g. 10.0.0.0/8, 127.0.0.1/32:8080, [::1/128]:8080)"
)]
pub struct AllowRuleError {
    pub text: String,
    pub reason: String,
}

impl FromStr for AllowRule {
    type Err = AllowRuleError;

    /// `CIDR`, `CIDR:PORT` or `[IPv6-CIDR]:PORT`; a bare address is its own
    /// /32 or /128. An IPv6 block without brackets has no port, since its
    /// last `:` is part of the address.
    fn from_str(text: &str) -> Result<AllowRule, AllowRuleError> {
        let bad = |reason: String| AllowRuleError {
            text: text.to_owned(),
            reason,
        };
        let s = text.trim();
        let (net, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(|| bad("no closing ']'".into()))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad(format!("{after:?} after ']'")))?,
                ),
            };
            let net = parse_cidr(inner).map_err(bad)?;
            if net.addr.is_ipv4() {
                return Err(bad("brackets are for IPv6 blocks".into()));
            }
            (net, port)
        } else if s.matches(':').count() >= 2 {
            (parse_cidr(s).map_err(bad)?, None)
        } else {
            let (net, port) = s.split_once(':').map_or((s, None), |(n, p)| (n, Some(p)));
            (parse_cidr(net).map_err(bad)?, port)
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(bad(format!("port {p:?} is not 1-65535"))),
                Ok(p) => Some(p),
            },
        };
        Ok(AllowRule {
            net: canonical_net(net),
            port,
        })
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
    let addr: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|&p| p <= max)
            .ok_or_else(|| format!("prefix {p:?} is not 0-{max}"))?,
    };
    let masked = mask(addr, prefix);
    if masked != addr {
        // A typo in a security rule should not silently widen or move it.
        return Err(format!("host bits are set; did you mean {masked}/{prefix}?"));
    }
    Ok(Cidr { addr, prefix })
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(
            u32::from(a) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0),
        )),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(
            u128::from(a) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0),
        )),
    }
}

/// An IPv4-mapped block (`::ffff:0:0/96` or narrower) as the IPv4 block it
/// is, so that rules and addresses are compared in one family.
fn canonical_net(net: Cidr) -> Cidr {
    match net.addr {
        IpAddr::V6(a) if net.prefix >= 96 => match a.to_ipv4_mapped() {
            Some(v4) => Cidr {
                addr: IpAddr::V4(v4),
                prefix: net.prefix - 96,
            },
            None => net,
        },
        _ => net,
    }
}

/// The IPv4 host an IPv6 address reaches, if it embeds one; else itself.
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(a) = ip else { return ip };
    if let Some(v4) = a.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let bits = u128::from(a);
    let embedded = IpAddr::V4(Ipv4Addr::from(bits as u32));
    if NAT64.contains(ip) {
        return embedded;
    }
    // IPv4-compatible (RFC 4291, deprecated): `::a.b.c.d` but not `::` nor `::1`.
    if bits >> 32 == 0 && bits > 1 {
        return embedded;
    }
    ip
}

/// The NAT64 well-known prefix (RFC 6052).
const NAT64: Cidr = Cidr::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);

/// Why an address is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The dataplane's own listener or admin socket.
    OwnSocket(SocketAddr),
    Loopback,
    LinkLocal,
    /// An instance metadata service: cloud credentials.
    CloudMetadata,
    /// `0.0.0.0/8` or `::`, which a connect sends to this host.
    Unspecified,
    Multicast,
    Broadcast,
    /// `240.0.0.0/4`.
    Reserved,
    /// Rules were given and none covers the address.
    NotAllowed,
}

impl Reason {
    /// For the refusal metric's label.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::OwnSocket(_) => "own_socket",
            Reason::Loopback => "loopback",
            Reason::LinkLocal => "link_local",
            Reason::CloudMetadata => "cloud_metadata",
            Reason::Unspecified => "unspecified",
            Reason::Multicast => "multicast",
            Reason::Broadcast => "broadcast",
            Reason::Reserved => "reserved",
            Reason::NotAllowed => "not_allowed",
        }
    }
}

/// The built-in refusals, in the canonical family (IPv4 for every form that
/// embeds IPv4). Overlaps are intended: the metadata /32 inside link-local
/// stays refused when an operator opens link-local as a whole.
const REFUSED: &[(Cidr, Reason)] = &[
    (Cidr::v4(0, 0, 0, 0, 8), Reason::Unspecified),
    (Cidr::v4(127, 0, 0, 0, 8), Reason::Loopback),
    (Cidr::v4(169, 254, 0, 0, 16), Reason::LinkLocal),
    // AWS, GCP, Azure, Oracle, OpenStack.
    (Cidr::v4(169, 254, 169, 254, 32), Reason::CloudMetadata),
    // Alibaba Cloud.
    (Cidr::v4(100, 100, 100, 200, 32), Reason::CloudMetadata),
    (Cidr::v4(224, 0, 0, 0, 4), Reason::Multicast),
    (Cidr::v4(240, 0, 0, 0, 4), Reason::Reserved),
    (Cidr::v4(255, 255, 255, 255, 32), Reason::Broadcast),
    (Cidr::v6([0; 8], 128), Reason::Unspecified),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128), Reason::Loopback),
    (Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), Reason::LinkLocal),
    // AWS's IPv6 metadata endpoint.
    (
        Cidr::v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
        Reason::CloudMetadata,
    ),
    (Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), Reason::Multicast),
];

/// An address `check` refused, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// As the route gave it.
    pub addr: SocketAddr,
    pub reason: Reason,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = canonical(self.addr.ip());
        write!(f, "egress to {} refused: ", self.addr)?;
        match self.reason {
            Reason::OwnSocket(own) => {
                return write!(
                    f,
                    "the dataplane's own socket {own} (a request loop); this cannot be allowed"
                );
            }
            Reason::CloudMetadata if Cidr::v4(169, 254, 0, 0, 16).contains(ip) => {
                f.write_str("link-local address (cloud metadata)")?
            }
            Reason::CloudMetadata => f.write_str("cloud metadata address")?,
            Reason::Loopback => f.write_str("loopback address")?,
            Reason::LinkLocal => f.write_str("link-local address")?,
            Reason::Unspecified => f.write_str("unspecified address (connects to this host)")?,
            Reason::Multicast => f.write_str("multicast address")?,
            Reason::Broadcast => f.write_str("broadcast address")?,
            Reason::Reserved => f.write_str("reserved address")?,
            Reason::NotAllowed => f.write_str("not covered by any --egress-allow rule")?,
        }
        if ip != self.addr.ip() {
            write!(f, ", as IPv4 {ip}")?;
        }
        // A host rule overrides every built-in range, so the hint works.
        write!(f, "; allow it with --egress-allow {}", Cidr::host(ip))
    }
}

impl std::error::Error for Refusal {}

/// Where proxy peers may be.
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    /// Canonical; empty means "everything but the refusals".
    allow: Vec<AllowRule>,
    /// Canonical; the own sockets that are refused (admin, and listen unless allowed).
    own: Vec<SocketAddr>,
    /// Canonical; own listen sockets the operator allowed (`--egress-allow-self`).
    own_allowed: Vec<SocketAddr>,
    /// Whether listen sockets added by [`EgressPolicy::with_own`] go to `own_allowed`.
    allow_own_listen: bool,
}

impl EgressPolicy {
    /// `allow` empty allows `0.0.0.0/0` and `::/0` minus the built-in
    /// refusals; otherwise only what some rule covers. `own_ports` are the
    /// dataplane's listen and admin sockets; a wildcard one (`0.0.0.0:8080`)
    /// refuses every loopback and unspecified address with its port.
    pub fn new(allow: Vec<AllowRule>, own_ports: Vec<SocketAddr>) -> EgressPolicy {
        let allow = allow
            .into_iter()
            .map(|r| AllowRule {
                net: canonical_net(r.net),
                ..r
            })
            .collect();
        let own = own_ports
            .into_iter()
            .map(|s| SocketAddr::new(canonical(s.ip()), s.port()))
            .collect();
        EgressPolicy {
            allow,
            own,
            ..EgressPolicy::default()
        }
    }

    /// The operator's `--egress-allow-self`: the listen sockets added later
    /// with [`EgressPolicy::with_own`] are not refused as own sockets. Meant for
    /// standalone tests and single-tenant setups only: a route that connects to
    /// its own gateway can loop. Sockets given to `new` or
    /// [`EgressPolicy::with_refused_own`] (the admin socket) stay refused.
    pub fn allowing_own_listen(mut self, allow: bool) -> EgressPolicy {
        self.allow_own_listen = allow;
        self
    }

    /// The policy with one more of the dataplane's listen sockets: refused,
    /// unless [`EgressPolicy::allowing_own_listen`] allowed them.
    pub fn with_own(&self, socket: SocketAddr) -> EgressPolicy {
        let mut p = self.clone();
        let socket = SocketAddr::new(canonical(socket.ip()), socket.port());
        if p.allow_own_listen {
            p.own_allowed.push(socket);
        } else {
            p.own.push(socket);
        }
        p
    }

    /// The policy with one more own socket refused whatever the settings (the admin socket).
    pub fn with_refused_own(&self, socket: SocketAddr) -> EgressPolicy {
        let mut p = self.clone();
        p.own.push(SocketAddr::new(canonical(socket.ip()), socket.port()));
        p
    }

    /// The own listen sockets that `--egress-allow-self` lets routes connect to.
    pub fn allowed_own(&self) -> &[SocketAddr] {
        &self.own_allowed
    }

    pub fn check(&self, addr: SocketAddr) -> Result<(), Refusal> {
        let refuse = |reason| Err(Refusal { addr, reason });
        let ip = canonical(addr.ip());
        let port = addr.port();
        let this_host = ip.is_loopback() || ip.is_unspecified() || Cidr::v4(0, 0, 0, 0, 8).contains(ip);
        if let Some(&own) = self
            .own
            .iter()
            .find(|o| o.port() == port && (o.ip() == ip || this_host))
        {
            return refuse(Reason::OwnSocket(own));
        }
        // The most specific refusal not opened names the reason: for the
        // metadata address that is "cloud metadata", not "link-local".
        let refused = REFUSED
            .iter()
            .filter(|(net, _)| net.contains(ip))
            .filter(|(net, _)| {
                !self
                    .allow
                    .iter()
                    .any(|r| r.net.prefix >= net.prefix && r.covers(ip, port))
            })
            .max_by_key(|(net, _)| net.prefix);
        if let Some(&(_, reason)) = refused {
            return refuse(reason);
        }
        // The literal form counts too: a `64:ff9b::/96` rule covers NAT64.
        let covered = |r: &AllowRule| r.covers(ip, port) || r.covers(addr.ip(), port);
        if !self.allow.is_empty() && !self.allow.iter().any(covered) {
            return refuse(Reason::NotAllowed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str], own: &[&str]) -> EgressPolicy {
        EgressPolicy::new(
            rules.iter().map(|r| r.parse().unwrap()).collect(),
            own.iter().map(|o| o.parse().unwrap()).collect(),
        )
    }

    fn reason(p: &EgressPolicy, addr: &str) -> Option<Reason> {
        p.check(addr.parse().unwrap()).err().map(|r| r.reason)
    }

    #[test]
    fn by_default_the_internet_and_private_networks_are_allowed() {
        let p = policy(&[], &[]);
        for a in [
            "8.8.8.8:53",
            "10.1.2.3:80",
            "192.168.0.1:443",
            "100.64.0.1:80",
            "[2001:db8::1]:443",
            "[::ffff:8.8.8.8]:53",
        ] {
            assert_eq!(reason(&p, a), None, "{a}");
        }
    }

    #[test]
    fn by_default_each_built_in_category_is_refused() {
        let p = policy(&[], &[]);
        for (a, want) in [
            ("127.0.0.1:80", Reason::Loopback),
            ("127.3.2.1:80", Reason::Loopback),
            ("[::1]:80", Reason::Loopback),
            ("169.254.1.1:80", Reason::LinkLocal),
            ("[fe80::1]:80", Reason::LinkLocal),
            ("169.254.169.254:80", Reason::CloudMetadata),
            ("100.100.100.200:80", Reason::CloudMetadata),
            ("[fd00:ec2::254]:80", Reason::CloudMetadata),
            ("0.0.0.0:80", Reason::Unspecified),
            ("[::]:80", Reason::Unspecified),
            ("224.0.0.1:80", Reason::Multicast),
            ("[ff02::1]:80", Reason::Multicast),
            ("255.255.255.255:80", Reason::Broadcast),
            ("240.0.0.1:80", Reason::Reserved),
        ] {
            assert_eq!(reason(&p, a), Some(want), "{a}");
        }
    }

    #[test]
    fn ipv6_spellings_of_refused_ipv4_addresses_are_refused() {
        let p = policy(&[], &[]);
        for (a, want) in [
            ("[::ffff:169.254.169.254]:80", Reason::CloudMetadata),
            ("[::ffff:a9fe:a9fe]:80", Reason::CloudMetadata),
            ("[::ffff:127.0.0.1]:80", Reason::Loopback),
            ("[::ffff:0.0.0.0]:80", Reason::Unspecified),
            ("[::ffff:224.0.0.1]:80", Reason::Multicast),
            ("[64:ff9b::169.254.169.254]:80", Reason::CloudMetadata),
            ("[::127.0.0.1]:80", Reason::Loopback),
        ] {
            assert_eq!(reason(&p, a), Some(want), "{a}");
        }
    }

    #[test]
    fn the_metadata_refusal_says_what_and_how_to_allow_it() {
        let p = policy(&[], &[]);
        let r = p.check("169.254.169.254:80".parse().unwrap()).unwrap_err();
        assert_eq!(
            r.to_string(),
            "egress to 169.254.169.254:80 refused: link-local address (cloud metadata); \
             allow it with --egress-allow 169.254.169.254/32"
        );
        let r = p.check("[::ffff:127.0.0.1]:80".parse().unwrap()).unwrap_err();
        assert_eq!(
            r.to_string(),
            "egress to [::ffff:127.0.0.1]:80 refused: loopback address, as IPv4 127.0.0.1; \
             allow it with --egress-allow 127.0.0.1/32"
        );
        assert_eq!(r.reason.label(), "loopback");
    }

    #[test]
    fn the_suggested_rule_does_allow_the_address() {
        for a in [
            "169.254.169.254:80",
            "[::ffff:127.0.0.1]:80",
            "[fe80::1]:80",
            "[64:ff9b::7f00:1]:80",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            let r = policy(&[], &[]).check(addr).unwrap_err().to_string();
            let rule = r.rsplit(' ').next().unwrap();
            assert_eq!(policy(&[rule], &[]).check(addr), Ok(()), "{a} with {rule}");
        }
    }

    #[test]
    fn a_refused_range_opens_only_to_a_rule_as_specific_as_it() {
        let wide = policy(&["0.0.0.0/0", "::/0"], &[]);
        assert_eq!(reason(&wide, "127.0.0.1:80"), Some(Reason::Loopback));
        assert_eq!(reason(&wide, "[::1]:80"), Some(Reason::Loopback));
        assert_eq!(reason(&wide, "8.8.8.8:80"), None);

        let loopback = policy(&["127.0.0.0/8"], &[]);
        assert_eq!(reason(&loopback, "127.0.0.5:80"), None);

        let one = policy(&["127.0.0.1/32"], &[]);
        assert_eq!(reason(&one, "127.0.0.1:80"), None);
        assert_eq!(reason(&one, "[::ffff:127.0.0.1]:80"), None);
        assert_eq!(reason(&one, "127.0.0.2:80"), Some(Reason::Loopback));

        let link_local = policy(&["169.254.0.0/16"], &[]);
        assert_eq!(reason(&link_local, "169.254.1.1:80"), None);
        assert_eq!(reason(&link_local, "169.254.169.254:80"), Some(Reason::CloudMetadata));
        let metadata = policy(&["169.254.169.254/32"], &[]);
        assert_eq!(reason(&metadata, "169.254.169.254:80"), None);
    }

    #[test]
    fn a_rule_with_a_port_covers_that_port_only() {
        let p = policy(&["127.0.0.1/32:8080", "[fe80::/10]:9000"], &[]);
        assert_eq!(reason(&p, "127.0.0.1:8080"), None);
        assert_eq!(reason(&p, "127.0.0.1:8081"), Some(Reason::Loopback));
        assert_eq!(reason(&p, "[fe80::7]:9000"), None);
        assert_eq!(reason(&p, "[fe80::7]:9001"), Some(Reason::LinkLocal));
        // Rules given: nothing else is allowed.
        assert_eq!(reason(&p, "10.0.0.1:8080"), Some(Reason::NotAllowed));
    }

    #[test]
    fn with_rules_only_covered_addresses_are_allowed() {
        let p = policy(&["10.0.0.0/8", "[64:ff9b::/96]:443"], &[]);
        assert_eq!(reason(&p, "10.200.0.1:80"), None);
        assert_eq!(reason(&p, "[::ffff:10.200.0.1]:80"), None);
        assert_eq!(reason(&p, "11.0.0.1:80"), Some(Reason::NotAllowed));
        assert_eq!(reason(&p, "[2001:db8::1]:80"), Some(Reason::NotAllowed));
        assert_eq!(reason(&p, "[64:ff9b::808:808]:443"), None);
        assert_eq!(reason(&p, "[64:ff9b::808:808]:80"), Some(Reason::NotAllowed));
        // The NAT64 rule does not open what its embedded address refuses.
        assert_eq!(reason(&p, "[64:ff9b::a9fe:a9fe]:443"), Some(Reason::CloudMetadata));
    }

    #[test]
    fn own_sockets_are_refused_whatever_the_rules() {
        let p = policy(
            &["0.0.0.0/0", "127.0.0.1/32", "10.1.2.3/32", "[::1/128]:8080"],
            &["0.0.0.0:8080", "10.1.2.3:9000"],
        );
        let own = |s: &str| Some(Reason::OwnSocket(s.parse().unwrap()));
        for a in [
            "127.0.0.1:8080",
            "127.9.9.9:8080",
            "[::1]:8080",
            "0.0.0.0:8080",
            "[::ffff:127.0.0.1]:8080",
            "[::]:8080",
        ] {
            assert_eq!(reason(&p, a), own("0.0.0.0:8080"), "{a}");
        }
        assert_eq!(reason(&p, "10.1.2.3:9000"), own("10.1.2.3:9000"));
        assert_eq!(reason(&p, "127.0.0.1:9000"), own("10.1.2.3:9000"));
        assert_eq!(reason(&p, "127.0.0.1:8081"), None);
        assert_eq!(reason(&p, "10.1.2.3:9001"), None);
        assert_eq!(reason(&p, "10.1.2.4:9000"), None);
        let r = p.check("127.0.0.1:8080".parse().unwrap()).unwrap_err().to_string();
        assert!(
            r.ends_with("own socket 0.0.0.0:8080 (a request loop); this cannot be allowed"),
            "{r}"
        );
    }

    #[test]
    fn allow_self_opens_the_listen_socket_but_never_the_admin_socket() {
        let admin: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let base = policy(&["127.0.0.1/32"], &[]);
        // Default: both refused.
        let off = base.with_refused_own(admin).with_own(listen);
        assert_eq!(
            off.check(listen),
            Err(Refusal {
                addr: listen,
                reason: Reason::OwnSocket(listen)
            })
        );
        assert_eq!(
            off.check(admin),
            Err(Refusal {
                addr: admin,
                reason: Reason::OwnSocket(admin)
            })
        );
        assert!(off.allowed_own().is_empty());
        // --egress-allow-self: the listen socket is judged by the rules, the admin one stays refused.
        let on = base
            .clone()
            .allowing_own_listen(true)
            .with_refused_own(admin)
            .with_own(listen);
        assert_eq!(on.check(listen), Ok(()));
        assert_eq!(on.check("[::ffff:127.0.0.1]:8080".parse().unwrap()), Ok(()));
        assert_eq!(
            on.check(admin),
            Err(Refusal {
                addr: admin,
                reason: Reason::OwnSocket(admin)
            })
        );
        assert_eq!(on.allowed_own(), &[listen]);
        // Sockets given to `new` are refused even with the flag.
        let new_own = EgressPolicy::new(Vec::new(), vec![admin]).allowing_own_listen(true);
        assert_eq!(reason(&new_own, "127.0.0.1:9000"), Some(Reason::OwnSocket(admin)));
        // The flag does not open loopback by itself.
        let no_rule = policy(&[], &[]).allowing_own_listen(true).with_own(listen);
        assert_eq!(reason(&no_rule, "127.0.0.1:8080"), Some(Reason::Loopback));
    }

    #[test]
    fn rules_parse_in_every_documented_form() {
        for (text, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("127.0.0.1/32:8080", "127.0.0.1/32:8080"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("::/0", "::/0"),
            ("[::1/128]:8080", "[::1/128]:8080"),
            ("[fd00::/8]", "fd00::/8"),
            ("fe80::/10", "fe80::/10"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("10.1.2.3:80", "10.1.2.3/32:80"),
            (" 10.0.0.0/8 ", "10.0.0.0/8"),
            // IPv4-mapped rules become the IPv4 rule they mean.
            ("[::ffff:127.0.0.1/128]:8080", "127.0.0.1/32:8080"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ] {
            let rule: AllowRule = text.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(rule.to_string(), shown, "{text}");
        }
    }

    #[test]
    fn bad_rules_are_refused_naming_the_text() {
        for (text, why) in [
            ("10.0.0.0/33", "prefix \"33\" is not 0-32"),
            ("10.0.0.1/8", "did you mean 10.0.0.0/8?"),
            ("1.2.3.4/32:0", "port \"0\""),
            ("1.2.3.4/32:http", "port \"http\""),
            ("[10.0.0.0/8]:80", "brackets are for IPv6"),
            ("[::1/128:80", "no closing ']'"),
            ("[::1/128]80", "after ']'"),
            ("example.com", "not an IP address"),
            ("", "not an IP address"),
            ("::/129", "not 0-128"),
        ] {
            let e = text.parse::<AllowRule>().unwrap_err();
            assert_eq!(e.text, text);
            let msg = e.to_string();
            assert!(msg.contains(why) && msg.contains(&format!("{text:?}")), "{text}: {msg}");
        }
    }

    #[test]
    fn cidr_contains_respects_the_prefix_and_the_family() {
        let net = Cidr::v4(10, 0, 0, 0, 8);
        assert!(net.contains("10.255.255.255".parse().unwrap()));
        assert!(!net.contains("11.0.0.0".parse().unwrap()));
        assert!(!net.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(Cidr::v4(0, 0, 0, 0, 0).contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::v6([0; 8], 0).contains("2001:db8::1".parse().unwrap()));
        assert!(!Cidr::v6([0; 8], 128).contains("::1".parse().unwrap()));
    }
}
