//! Pod addresses on one node, handed out from the node's /24 as a CNI's host-local IPAM does:
//! round-robin, so an address just freed is not at once reused by another pod (watchers that
//! saw the old pod's address would otherwise confuse the two).

use std::collections::BTreeSet;
use std::net::IpAddr;

use shoal_common::Cidr;

/// The free and used pod addresses of one node.
#[derive(Debug, Clone)]
pub struct PodIpPool {
    range: Cidr,
    used: BTreeSet<u128>,
    /// Where the next search starts (an offset into `range`).
    next: u128,
}

/// The first usable offset: the network address and the gateway (`.1`, a bridge's) are not
/// pods'.
const FIRST_POD_OFFSET: u128 = 2;

impl PodIpPool {
    pub fn new(range: Cidr) -> PodIpPool {
        PodIpPool {
            range,
            used: BTreeSet::new(),
            next: FIRST_POD_OFFSET,
        }
    }

    /// A free address, the one after the last handed out if free; `None` when all are used.
    pub fn allocate(&mut self) -> Option<IpAddr> {
        let last = self.range.size().checked_sub(2)?;
        if last < FIRST_POD_OFFSET {
            return None;
        }
        let span = last - FIRST_POD_OFFSET + 1;
        for step in 0..span {
            let offset = FIRST_POD_OFFSET + (self.next - FIRST_POD_OFFSET + step) % span;
            if self.used.insert(offset) {
                self.next = if offset == last {
                    FIRST_POD_OFFSET
                } else {
                    offset + 1
                };
                return self.range.nth(offset);
            }
        }
        None
    }

    /// Marks `ip` used (a pod that already runs, seen after a restart); false if it lies
    /// outside the range or is used already.
    pub fn reserve(&mut self, ip: IpAddr) -> bool {
        match self.range.offset(ip) {
            Some(offset) if offset >= FIRST_POD_OFFSET && offset + 1 < self.range.size() => {
                self.used.insert(offset)
            }
            _ => false,
        }
    }

    pub fn release(&mut self, ip: IpAddr) {
        if let Some(offset) = self.range.offset(ip) {
            self.used.remove(&offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> PodIpPool {
        PodIpPool::new("10.128.3.0/24".parse().expect("cidr"))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn addresses_are_unique_round_robin_and_run_out() {
        let mut pool = pool();
        assert_eq!(pool.allocate(), Some(ip("10.128.3.2")));
        assert_eq!(pool.allocate(), Some(ip("10.128.3.3")));
        pool.release(ip("10.128.3.2"));
        // The freed address waits until the range wraps around.
        assert_eq!(pool.allocate(), Some(ip("10.128.3.4")));
        let mut seen: std::collections::HashSet<IpAddr> =
            [ip("10.128.3.3"), ip("10.128.3.4")].into();
        while let Some(next) = pool.allocate() {
            assert!(seen.insert(next), "{next} handed out twice");
        }
        assert_eq!(seen.len(), 253);
        assert!(seen.contains(&ip("10.128.3.2")));
        assert!(seen.contains(&ip("10.128.3.254")));
        assert!(!seen.contains(&ip("10.128.3.255")) && !seen.contains(&ip("10.128.3.1")));
        assert_eq!(pool.allocate(), None, "all 253 are in use");
    }

    #[test]
    fn running_pods_addresses_are_reserved() {
        let mut pool = pool();
        assert!(pool.reserve(ip("10.128.3.2")));
        assert!(!pool.reserve(ip("10.128.3.2")), "already used");
        assert!(!pool.reserve(ip("10.128.4.2")), "outside");
        assert!(!pool.reserve(ip("10.128.3.255")), "broadcast");
        assert_eq!(pool.allocate(), Some(ip("10.128.3.3")));
    }
}
