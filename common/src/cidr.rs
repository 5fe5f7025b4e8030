//! An IP network in CIDR notation (IPv4 or IPv6), and the one-or-two list of them
//! (dual-stack) that `--cluster-cidr` and `--service-cidr` take.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A network address with a prefix length; host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError {
    input: String,
    reason: &'static str,
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid CIDR {:?}: {}", self.input, self.reason)
    }
}

impl std::error::Error for CidrError {}

fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn mask(prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        let all = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        // A /128 shifts the whole width out (an overflow for `>>`): every bit is network.
        all & !all.checked_shr(u32::from(prefix)).unwrap_or(0)
    }
}

impl Cidr {
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, width) = bits(self.addr);
        let (host, host_width) = bits(ip);
        width == host_width && host & mask(self.prefix, width) == net
    }

    /// The `n`th address of the network (0 is the network address), if it lies inside.
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        if n >= self.size() {
            return None;
        }
        let (net, _) = bits(self.addr);
        Some(match self.addr {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(u32::try_from(net + n).ok()?)),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(net.checked_add(n)?)),
        })
    }

    /// Where `ip` lies in the network (0 is the network address), if inside.
    pub fn offset(&self, ip: IpAddr) -> Option<u128> {
        if !self.contains(ip) {
            return None;
        }
        let (net, _) = bits(self.addr);
        let (host, _) = bits(ip);
        Some(host - net)
    }

    /// How many addresses the network holds, saturating at `u128::MAX`.
    pub fn size(&self) -> u128 {
        let (_, width) = bits(self.addr);
        1u128
            .checked_shl(u32::from(width - self.prefix))
            .unwrap_or(u128::MAX)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CidrError {
            input: s.to_string(),
            reason,
        };
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| err("expected ADDRESS/PREFIX"))?;
        let addr: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| err("prefix length is not a number"))?;
        let (value, width) = bits(addr);
        if prefix > width {
            return Err(err("prefix length is longer than the address"));
        }
        if value & !mask(prefix, width) != 0 {
            return Err(err("host bits are set (use the network address)"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One CIDR, or two of different families for a dual-stack cluster, written comma-separated
/// as k3s's `--cluster-cidr 10.42.0.0/16,fd00:42::/56`. The first is the primary family's
/// (`Node.spec.podCIDR`, a Service's default family).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CidrList {
    cidrs: Vec<Cidr>,
}

impl CidrList {
    /// A list of one.
    pub fn single(cidr: Cidr) -> Self {
        CidrList { cidrs: vec![cidr] }
    }

    pub fn cidrs(&self) -> &[Cidr] {
        &self.cidrs
    }

    /// The primary family's CIDR.
    pub fn primary(&self) -> Cidr {
        self.cidrs[0]
    }

    /// The other family's CIDR of a dual-stack list.
    pub fn secondary(&self) -> Option<Cidr> {
        self.cidrs.get(1).copied()
    }

    pub fn is_dual_stack(&self) -> bool {
        self.cidrs.len() == 2
    }

    /// The CIDR of IPv4 (`true`) or IPv6 (`false`), if the list has one.
    pub fn of_family(&self, ipv4: bool) -> Option<Cidr> {
        self.cidrs.iter().copied().find(|c| c.is_ipv4() == ipv4)
    }

    /// Whether both lists have the same families in the same order.
    pub fn same_families(&self, other: &CidrList) -> bool {
        self.cidrs.len() == other.cidrs.len()
            && self
                .cidrs
                .iter()
                .zip(&other.cidrs)
                .all(|(a, b)| a.is_ipv4() == b.is_ipv4())
    }
}

impl FromStr for CidrList {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CidrError {
            input: s.to_string(),
            reason,
        };
        let cidrs = s
            .split(',')
            .map(|part| part.trim().parse::<Cidr>())
            .collect::<Result<Vec<_>, _>>()?;
        match cidrs.as_slice() {
            [_] => {}
            [a, b] if a.is_ipv4() != b.is_ipv4() => {}
            [_, _] => {
                return Err(err(
                    "two CIDRs of one IP family (dual-stack needs one of each)",
                ))
            }
            _ => return Err(err("at most two CIDRs, one per IP family")),
        }
        Ok(CidrList { cidrs })
    }
}

impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, cidr) in self.cidrs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            cidr.fmt(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("valid cidr")
    }

    #[test]
    fn parses_and_contains() {
        let services = cidr(crate::DEFAULT_SERVICE_CIDR);
        assert!(services.contains(crate::DEFAULT_CLUSTER_DNS.parse().expect("ip")));
        assert!(!services.contains("10.42.0.1".parse().expect("ip")));
        assert!(!services.contains("::1".parse().expect("ip")));
        assert_eq!(services.size(), 65_536);
        assert_eq!(services.to_string(), "10.43.0.0/16");
        let v6 = cidr("fd00:42::/56");
        assert!(v6.contains("fd00:42::1".parse().expect("ip")));
        let host = cidr("fd00:42::1/128");
        assert!(host.contains("fd00:42::1".parse().expect("ip")));
        assert!(!host.contains("fd00:42::2".parse().expect("ip")));
        assert_eq!(host.size(), 1);
        assert!(cidr("10.0.0.1/32").contains("10.0.0.1".parse().expect("ip")));
        assert!(!v6.is_ipv4());
        assert!(cidr("0.0.0.0/0").contains("8.8.8.8".parse().expect("ip")));
        assert_eq!(services.nth(1), Some("10.43.0.1".parse().expect("ip")));
        assert_eq!(
            services.nth(65_535),
            Some("10.43.255.255".parse().expect("ip"))
        );
        assert_eq!(services.nth(65_536), None);
        assert_eq!(v6.nth(10), Some("fd00:42::a".parse().expect("ip")));
        assert_eq!(services.offset("10.43.1.2".parse().expect("ip")), Some(258));
        assert_eq!(services.offset("10.44.0.0".parse().expect("ip")), None);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "10.42.0.0",
            "10.42.0.0/33",
            "10.42.0.1/16",
            "ten/8",
            "10.0.0.0/x",
            "::1/129",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_of_one_or_two_families() {
        let single: CidrList = crate::DEFAULT_CLUSTER_CIDR.parse().expect("list");
        assert_eq!(single.cidrs(), [cidr("10.42.0.0/16")]);
        assert!(!single.is_dual_stack());
        assert_eq!(single.to_string(), "10.42.0.0/16");
        let dual: CidrList = "10.42.0.0/16, fd00:42::/56".parse().expect("list");
        assert_eq!(dual.primary(), cidr("10.42.0.0/16"));
        assert_eq!(dual.secondary(), Some(cidr("fd00:42::/56")));
        assert_eq!(dual.of_family(false), Some(cidr("fd00:42::/56")));
        assert_eq!(dual.to_string(), "10.42.0.0/16,fd00:42::/56");
        let v6_first: CidrList = "fd00:43::/112,10.43.0.0/16".parse().expect("list");
        assert!(!dual.same_families(&v6_first));
        assert!(dual.same_families(&"10.1.0.0/16,fd01::/48".parse().expect("list")));
        assert!(!dual.same_families(&single));
        let v6_only: CidrList = "fd00:42::/56".parse().expect("list");
        assert_eq!(v6_only.of_family(true), None);
        for (bad, reason) in [
            ("10.42.0.0/16,10.44.0.0/16", "two CIDRs of one IP family"),
            ("fd00::/56,fd01::/56", "two CIDRs of one IP family"),
            ("10.42.0.0/16,fd00::/56,10.44.0.0/16", "at most two CIDRs"),
            ("10.42.0.0/16,", "expected ADDRESS/PREFIX"),
            ("10.42.0.1/16,fd00::/56", "host bits are set"),
        ] {
            let err = bad.parse::<CidrList>().expect_err(bad).to_string();
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }
}
