//! Address management: one file per allocated address in the network's `dataDir`.
//!
//! A file named by the address (`10.42.0.7`, `fd00:42::7`) holds the container id and
//! interface name on two lines. A dual-stack node's two subnets share the directory: each
//! [`Ipam`] hands out addresses of its own subnet, and a container's addresses of both
//! families are released together. A file appears complete or not at all: its content is written and synced to a
//! temporary file first, which is then hard-linked to the address's name — `link(2)` fails
//! if the name exists, so the link is the create-exclusive reservation, and two plugins
//! racing for one address cannot both win. A crash leaves at worst a temporary file
//! (`.tmp-…`, never read as an allocation; [`reconcile`] removes it). A file that cannot be
//! read as a holder still keeps its address from being handed out, until [`reconcile`]
//! releases it.
//!
//! The gateway (the subnet's first address), the network and broadcast addresses are never
//! handed out. Scanning starts after the last address handed out (`last_reserved_ip`, and
//! `last_reserved_ip6` for IPv6; a hint only), so a released address is not reused at once.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::config::Subnet;

const LAST_RESERVED: &str = "last_reserved_ip";
const LAST_RESERVED_V6: &str = "last_reserved_ip6";
const TMP_PREFIX: &str = ".tmp-";

/// Why an address could not be allocated or released.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {subnet}")]
    Exhausted { subnet: Subnet },
    #[error("IPAM state {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who holds an address, as its file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Container {
        container_id: String,
        ifname: String,
    },
    /// The file exists but does not name a holder: the address stays taken until
    /// [`reconcile`] releases it.
    Unreadable,
}

/// One allocated address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ip: IpAddr,
    pub holder: Holder,
}

impl Entry {
    fn held_by(&self, container_id: &str, ifname: &str) -> bool {
        matches!(&self.holder, Holder::Container { container_id: c, ifname: i }
            if c == container_id && i == ifname)
    }
}

/// The outcome of [`Ipam::allocate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocated {
    pub ip: IpAddr,
    /// False when the container already held this address (a repeated ADD).
    pub fresh: bool,
}

/// The allocator of one subnet, over its state directory.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
    subnet: Subnet,
}

impl Ipam {
    pub fn new(dir: impl Into<PathBuf>, subnet: Subnet) -> Self {
        Ipam {
            dir: dir.into(),
            subnet,
        }
    }

    /// Every allocated address, in address order.
    pub fn entries(&self) -> Result<Vec<Entry>, IpamError> {
        read_entries(&self.dir)
    }

    /// The address of this subnet `container_id`'s `ifname` holds, if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<IpAddr>, IpamError> {
        Ok(self
            .entries()?
            .into_iter()
            .find(|e| self.subnet.contains(e.ip) && e.held_by(container_id, ifname))
            .map(|e| e.ip))
    }

    /// Gives `container_id`'s `ifname` an address: the one it holds already, or the next free
    /// one after the last handed out.
    pub fn allocate(&self, container_id: &str, ifname: &str) -> Result<Allocated, IpamError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let entries = self.entries()?;
        if let Some(held) = entries
            .iter()
            .find(|e| self.subnet.contains(e.ip) && e.held_by(container_id, ifname))
        {
            return Ok(Allocated {
                ip: held.ip,
                fresh: false,
            });
        }
        let taken: HashSet<IpAddr> = entries.iter().map(|e| e.ip).collect();
        // Offsets into the subnet: the network address and the gateway come first, the
        // IPv4 broadcast address last.
        let (first, last) = self.subnet.host_offsets();
        if first > last {
            return Err(IpamError::Exhausted {
                subnet: self.subnet,
            });
        }
        let count = last - first + 1;
        let start = match self.last_reserved().and_then(|ip| self.subnet.offset(ip)) {
            Some(offset) if (first..last).contains(&offset) => offset + 1,
            _ => first,
        };
        let tmp = self.write_temp(&format!("{container_id}\n{ifname}\n"))?;
        let mut found = None;
        for i in 0..count {
            let Some(ip) = self.subnet.nth(first + (start - first + i) % count) else {
                continue;
            };
            if taken.contains(&ip) {
                continue;
            }
            let path = self.dir.join(ip.to_string());
            match fs::hard_link(&tmp, &path) {
                Ok(()) => {
                    found = Some(ip);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(io_err(&path)(e));
                }
            }
        }
        let _ = fs::remove_file(&tmp);
        let ip = found.ok_or(IpamError::Exhausted {
            subnet: self.subnet,
        })?;
        sync_dir(&self.dir)?;
        self.set_last_reserved(ip)?;
        Ok(Allocated { ip, fresh: true })
    }

    /// Releases every address `container_id`'s `ifname` holds in the directory, of either
    /// family; releasing nothing is not an error.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let held: Vec<IpAddr> = self
            .entries()?
            .into_iter()
            .filter(|e| e.held_by(container_id, ifname))
            .map(|e| e.ip)
            .collect();
        remove_addresses(&self.dir, &held)?;
        Ok(held)
    }

    /// Frees exactly `ips` (an ADD undoing the allocations it made itself).
    pub fn free(&self, ips: &[IpAddr]) -> Result<(), IpamError> {
        remove_addresses(&self.dir, ips)
    }

    fn last_reserved_path(&self) -> PathBuf {
        self.dir.join(if self.subnet.is_ipv4() {
            LAST_RESERVED
        } else {
            LAST_RESERVED_V6
        })
    }

    fn last_reserved(&self) -> Option<IpAddr> {
        let text = fs::read_to_string(self.last_reserved_path()).ok()?;
        text.trim().parse().ok()
    }

    fn set_last_reserved(&self, ip: IpAddr) -> Result<(), IpamError> {
        let tmp = self.write_temp(&format!("{ip}\n"))?;
        let path = self.last_reserved_path();
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err(&path)(e)
        })
    }

    /// Writes and syncs a new temporary file in the state directory.
    fn write_temp(&self, content: &str) -> Result<PathBuf, IpamError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{TMP_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.dir.join(name);
        let write = || -> io::Result<()> {
            let mut file = File::options().write(true).create_new(true).open(&path)?;
            file.write_all(content.as_bytes())?;
            file.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&path);
            io_err(&path)(e)
        })?;
        Ok(path)
    }
}

fn parse_holder(text: &str) -> Holder {
    let mut lines = text.lines().map(str::trim);
    match (lines.next(), lines.next()) {
        (Some(container_id), Some(ifname)) if !container_id.is_empty() && !ifname.is_empty() => {
            Holder::Container {
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
            }
        }
        _ => Holder::Unreadable,
    }
}

fn read_entries(dir: &Path) -> Result<Vec<Entry>, IpamError> {
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut entries = Vec::new();
    for item in listing {
        let item = item.map_err(io_err(dir))?;
        let Some(ip) = item
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let holder = match fs::read_to_string(item.path()) {
            Ok(text) => parse_holder(&text),
            // Released while we listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Holder::Unreadable,
            Err(e) => return Err(io_err(&item.path())(e)),
        };
        entries.push(Entry { ip, holder });
    }
    entries.sort_by_key(|e| e.ip);
    Ok(entries)
}

fn remove_addresses(dir: &Path, ips: &[IpAddr]) -> Result<(), IpamError> {
    if ips.is_empty() {
        return Ok(());
    }
    for ip in ips {
        let path = dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), IpamError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The addresses to release because no live container holds them: those whose holder is
/// not in `live`, and those whose file names no holder. Pure.
pub fn stale(entries: &[Entry], live: &HashSet<String>) -> Vec<IpAddr> {
    entries
        .iter()
        .filter(|e| match &e.holder {
            Holder::Container { container_id, .. } => !live.contains(container_id),
            Holder::Unreadable => true,
        })
        .map(|e| e.ip)
        .collect()
}

/// Releases every address in `data_dir` whose container id is not in `live` (the sandboxes
/// the runtime still has), and removes temporary files a crash left. For the agent to call
/// at start, before it runs any ADD. Returns the released addresses.
pub fn reconcile(data_dir: &Path, live: &HashSet<String>) -> Result<Vec<IpAddr>, IpamError> {
    let released = stale(&read_entries(data_dir)?, live);
    remove_addresses(data_dir, &released)?;
    if let Ok(listing) = fs::read_dir(data_dir) {
        for item in listing.flatten() {
            if item.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = fs::remove_file(item.path());
            }
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn net(s: &str) -> Subnet {
        Subnet::new(s.parse().expect("cidr")).expect("pod subnet")
    }

    /// A /29: .0 network, .1 gateway, .2–.6 for pods, .7 broadcast.
    fn ipam(dir: &Path) -> Ipam {
        Ipam::new(dir, net("10.9.0.0/29"))
    }

    fn alloc(ipam: &Ipam, id: &str) -> IpAddr {
        ipam.allocate(id, "eth0").expect("allocate").ip
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn allocates_in_order_skipping_the_gateway_and_writes_the_holder() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ipam = ipam(tmp.path());
        assert_eq!(alloc(&ipam, "a"), ip("10.9.0.2"));
        assert_eq!(alloc(&ipam, "b"), ip("10.9.0.3"));
        assert_eq!(
            fs::read_to_string(tmp.path().join("10.9.0.3")).expect("file"),
            "b\neth0\n"
        );
        assert_eq!(
            names(tmp.path()),
            ["10.9.0.2", "10.9.0.3", "last_reserved_ip"]
        );
        // The same container and interface keep their address.
        assert_eq!(
            ipam.allocate("a", "eth0").expect("again"),
            Allocated {
                ip: ip("10.9.0.2"),
                fresh: false
            }
        );
        // Another interface of the same container is another holder.
        assert_eq!(ipam.allocate("a", "net1").expect("net1").ip, ip("10.9.0.4"));
        assert_eq!(ipam.find("a", "net1").expect("find"), Some(ip("10.9.0.4")));
        assert_eq!(ipam.find("zz", "eth0").expect("find"), None);
    }

    #[test]
    fn released_addresses_are_not_reused_at_once_and_exhaustion_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ipam = ipam(tmp.path());
        for id in ["a", "b", "c"] {
            alloc(&ipam, id);
        }
        assert_eq!(
            ipam.release("b", "eth0").expect("release"),
            [ip("10.9.0.3")]
        );
        assert_eq!(
            ipam.release("b", "eth0").expect("again"),
            Vec::<IpAddr>::new()
        );
        assert_eq!(
            ipam.release("a", "net9").expect("other ifname"),
            Vec::<IpAddr>::new()
        );
        assert_eq!(alloc(&ipam, "d"), ip("10.9.0.5"));
        assert_eq!(alloc(&ipam, "e"), ip("10.9.0.6"));
        // Wraps around to the released address.
        assert_eq!(alloc(&ipam, "f"), ip("10.9.0.3"));
        let err = ipam.allocate("g", "eth0").expect_err("full");
        assert!(matches!(err, IpamError::Exhausted { .. }), "{err}");
        assert_eq!(err.to_string(), "no free address left in 10.9.0.0/29");
        // Nothing is left behind by the failed allocation.
        assert!(!names(tmp.path()).iter().any(|n| n.starts_with(TMP_PREFIX)));
    }

    #[test]
    fn smallest_subnet_has_one_address() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::new(tmp.path(), net("10.9.0.4/30"));
        assert_eq!(alloc(&ipam, "a"), ip("10.9.0.6"));
        assert!(ipam.allocate("b", "eth0").is_err());
    }

    #[test]
    fn half_written_state_never_hands_out_a_taken_address() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        // A crash mid-allocation leaves a temporary file; a damaged file names no holder;
        // the scan hint is garbage.
        fs::write(dir.join(".tmp-4242-0"), "dead\neth0\n").expect("write");
        fs::write(dir.join("10.9.0.2"), "").expect("write");
        fs::write(dir.join("10.9.0.3"), "only-one-line").expect("write");
        fs::write(dir.join(LAST_RESERVED), "not an ip").expect("write");
        fs::write(dir.join("10.9.0.99.bak"), "ignored").expect("write");
        let ipam = ipam(dir);
        assert_eq!(alloc(&ipam, "a"), ip("10.9.0.4"));
        let entries = ipam.entries().expect("entries");
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].holder, Holder::Unreadable);
        assert_eq!(entries[1].holder, Holder::Unreadable);
        // Reconcile frees what no live container holds, and the crash's leftovers.
        let live: HashSet<String> = ["a".to_string()].into();
        let released = reconcile(dir, &live).expect("reconcile");
        assert_eq!(released, [ip("10.9.0.2"), ip("10.9.0.3")]);
        assert_eq!(names(dir), ["10.9.0.4", "10.9.0.99.bak", LAST_RESERVED]);
    }

    #[test]
    fn reconcile_releases_containers_not_live() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ipam = ipam(tmp.path());
        for id in ["a", "b", "c"] {
            alloc(&ipam, id);
        }
        let entries = ipam.entries().expect("entries");
        let live: HashSet<String> = ["b".to_string(), "unrelated".to_string()].into();
        assert_eq!(stale(&entries, &live), [ip("10.9.0.2"), ip("10.9.0.4")]);
        assert_eq!(
            reconcile(tmp.path(), &live).expect("reconcile"),
            [ip("10.9.0.2"), ip("10.9.0.4")]
        );
        assert_eq!(ipam.find("b", "eth0").expect("find"), Some(ip("10.9.0.3")));
        assert_eq!(ipam.entries().expect("entries").len(), 1);
        // A directory that does not exist yet holds nothing.
        assert_eq!(
            reconcile(&tmp.path().join("none"), &live).expect("empty"),
            Vec::<IpAddr>::new()
        );
    }

    #[test]
    fn concurrent_allocations_get_distinct_addresses() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let net = net("10.9.0.0/28");
        let ips: Vec<IpAddr> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..12)
                .map(|i| {
                    let ipam = Ipam::new(tmp.path(), net);
                    s.spawn(move || ipam.allocate(&format!("c{i}"), "eth0").expect("alloc").ip)
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("join"))
                .collect()
        });
        let distinct: HashSet<IpAddr> = ips.iter().copied().collect();
        assert_eq!(distinct.len(), 12);
        assert_eq!(
            Ipam::new(tmp.path(), net).entries().expect("entries").len(),
            12
        );
    }

    #[test]
    fn dual_stack_subnets_share_the_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let v4 = ipam(tmp.path());
        // A /125: ::0 network, ::1 gateway, ::2–::7 for pods (no broadcast address).
        let v6 = Ipam::new(tmp.path(), net("fd00:9::/125"));
        assert_eq!(alloc(&v4, "a"), ip("10.9.0.2"));
        assert_eq!(alloc(&v6, "a"), ip("fd00:9::2"));
        assert_eq!(alloc(&v6, "b"), ip("fd00:9::3"));
        assert_eq!(alloc(&v4, "b"), ip("10.9.0.3"));
        // Each family finds its own address; a repeated ADD keeps both.
        assert_eq!(v4.find("a", "eth0").expect("find"), Some(ip("10.9.0.2")));
        assert_eq!(v6.find("a", "eth0").expect("find"), Some(ip("fd00:9::2")));
        assert!(!v6.allocate("a", "eth0").expect("again").fresh);
        assert_eq!(
            names(tmp.path()),
            [
                "10.9.0.2",
                "10.9.0.3",
                "fd00:9::2",
                "fd00:9::3",
                "last_reserved_ip",
                "last_reserved_ip6"
            ]
        );
        // Releasing frees both families at once; the v6 scan resumes after its last.
        assert_eq!(
            v6.release("a", "eth0").expect("release"),
            [ip("10.9.0.2"), ip("fd00:9::2")]
        );
        assert_eq!(alloc(&v6, "c"), ip("fd00:9::4"));
        for id in ["d", "e", "f"] {
            alloc(&v6, id);
        }
        // The last address is a pod's in IPv6; then the scan wraps to the released one.
        assert_eq!(alloc(&v6, "g"), ip("fd00:9::2"));
        assert!(matches!(
            v6.allocate("h", "eth0"),
            Err(IpamError::Exhausted { .. })
        ));
        // Reconcile treats both families alike.
        let live: HashSet<String> = ["b".to_string()].into();
        let released = reconcile(tmp.path(), &live).expect("reconcile");
        assert_eq!(released.len(), 5, "{released:?}");
        assert_eq!(v4.entries().expect("entries").len(), 2);
    }

    #[test]
    fn a_slash_64_allocates_without_scanning_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let v6 = Ipam::new(tmp.path(), net("fd00:42:0:3::/64"));
        assert_eq!(alloc(&v6, "a"), ip("fd00:42:0:3::2"));
        assert_eq!(alloc(&v6, "b"), ip("fd00:42:0:3::3"));
    }
}
