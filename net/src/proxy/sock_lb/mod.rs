//! Socket-level load balancing (Cilium's kube-proxy replacement for ClusterIPs): a program on
//! the cgroup `connect()` hooks (`BPF_CGROUP_INET4_CONNECT`, `…INET6_CONNECT`) rewrites a TCP
//! connect to a ClusterIP:port into a connect to one of its endpoints, so the packets go from
//! pod to pod with no NAT and no conntrack entry of the Service's, and the nftables rules are
//! not hit for those sockets. Everything else — UDP, other Services, hosts' own processes,
//! connects while no program is attached — goes through nftables, programmed as without it.
//!
//! The program is attached to one cgroup (v2): the one holding this node's pods, never a
//! hierarchy's root, since cgroup hooks are not per network namespace and other nodes' or the
//! host's processes share the machine. It is attached through a BPF link held open by the
//! agent: it leaves with the agent, crash included, and connects fall back to nftables.
//!
//! - [`plan`] (pure): which Service ports go in the maps, and the map writes for a change.
//! - [`layout`] (pure): the maps' key and value bytes.
//! - [`asm`] (pure): the program, as eBPF instructions.
//! - [`sys`]: the `bpf(2)` calls (the only `unsafe` code).
//! - [`cgroup`]: finding the cgroup v2 hierarchy and the node's pod cgroup in it.

pub mod asm;
pub mod cgroup;
pub mod layout;
pub mod plan;
pub mod sys;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

pub use layout::Frontend;
use layout::{
    endpoint_key, endpoint_value, service_key, service_value, ENDPOINT_KEY_LEN, ENDPOINT_VALUE_LEN,
    SERVICE_KEY_LEN, SERVICE_VALUE_LEN,
};
use plan::{Desired, Op, Programmed};
use sys::Map;

/// Most Service addresses translated (TCP ClusterIP ports).
const MAX_SERVICES: u32 = 65_536;
/// Most endpoint slots over all of them.
const MAX_ENDPOINTS: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SockLbError {
    #[error("creating the {map} map: {source}")]
    CreateMap {
        map: &'static str,
        source: io::Error,
    },
    #[error("loading the connect{family} program: {source}; verifier log:\n{log}")]
    Load {
        family: u8,
        source: io::Error,
        log: String,
    },
    #[error("opening the cgroup {}: {source}", path.display())]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("attaching to the cgroup {}: {source}", path.display())]
    Attach { path: PathBuf, source: io::Error },
    #[error("the maps are in an unknown state after a failed write: a full sync is needed")]
    NeedsFull,
    #[error("writing the {map} map: {source}")]
    Write {
        map: &'static str,
        source: io::Error,
    },
}

/// The maps, the programs and their attachment to one cgroup. Dropping it detaches.
#[derive(Debug)]
pub struct SockLb {
    services: Map,
    endpoints: Map,
    /// The links; closing them detaches the programs.
    links: Vec<OwnedFd>,
    programmed: Programmed,
    /// A write failed: what the maps hold is unknown until the next full sync.
    dirty: bool,
}

impl SockLb {
    /// Creates the maps, loads the programs (IPv6's too with `ipv6`) and attaches them to the
    /// cgroup v2 directory `cgroup`.
    pub fn attach(cgroup: &Path, ipv6: bool) -> Result<SockLb, SockLbError> {
        let services = Map::create(
            sys::MAP_TYPE_HASH,
            "shoal_lb_svc",
            SERVICE_KEY_LEN,
            SERVICE_VALUE_LEN,
            MAX_SERVICES,
            sys::MAP_F_NO_PREALLOC,
        )
        .map_err(|source| SockLbError::CreateMap {
            map: "services",
            source,
        })?;
        let endpoints = Map::create(
            sys::MAP_TYPE_HASH,
            "shoal_lb_ep",
            ENDPOINT_KEY_LEN,
            ENDPOINT_VALUE_LEN,
            MAX_ENDPOINTS,
            sys::MAP_F_NO_PREALLOC,
        )
        .map_err(|source| SockLbError::CreateMap {
            map: "endpoints",
            source,
        })?;
        let dir = File::open(cgroup).map_err(|source| SockLbError::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        let mut links = Vec::new();
        let families: &[bool] = if ipv6 { &[false, true] } else { &[false] };
        for &v6 in families {
            let (family, attach_type, name) = if v6 {
                (6, sys::ATTACH_INET6_CONNECT, "shoal_connect6")
            } else {
                (4, sys::ATTACH_INET4_CONNECT, "shoal_connect4")
            };
            let insns = asm::connect_program(v6, services.raw_fd(), endpoints.raw_fd());
            let prog = sys::prog_load(sys::PROG_TYPE_CGROUP_SOCK_ADDR, attach_type, name, &insns)
                .map_err(|(source, log)| SockLbError::Load {
                family,
                source,
                log,
            })?;
            // The link holds the program; its own descriptor can go.
            let link =
                sys::link_create(prog.as_fd(), dir.as_fd(), attach_type).map_err(|source| {
                    SockLbError::Attach {
                        path: cgroup.to_owned(),
                        source,
                    }
                })?;
            links.push(link);
        }
        Ok(SockLb {
            services,
            endpoints,
            links,
            programmed: Programmed::default(),
            dirty: false,
        })
    }

    /// Makes the maps hold exactly `desired` (emptying them first after a failed write).
    pub fn sync_all(&mut self, desired: &Desired) -> Result<(), SockLbError> {
        if self.dirty {
            self.clear()?;
        }
        let scope = self.programmed.full_scope(desired);
        self.sync(desired, &scope)
    }

    /// Whether a write failed since the last full sync: only [`SockLb::sync_all`] then knows
    /// what the maps must hold.
    pub fn needs_full(&self) -> bool {
        self.dirty
    }

    /// Makes the frontends in `scope` hold what `desired` says, writing only what changed.
    /// After a failure (see [`SockLb::needs_full`]) it refuses until a full sync.
    pub fn sync<'a>(
        &mut self,
        desired: &Desired,
        scope: impl IntoIterator<Item = &'a Frontend>,
    ) -> Result<(), SockLbError> {
        if self.dirty {
            return Err(SockLbError::NeedsFull);
        }
        let ops = self.programmed.plan(desired, scope);
        for op in &ops {
            if let Err(err) = self.write(op) {
                self.dirty = true;
                return Err(err);
            }
        }
        Ok(())
    }

    fn write(&self, op: &Op) -> Result<(), SockLbError> {
        let (map, result) = match *op {
            Op::PutEndpoint { id, slot, endpoint } => (
                "endpoints",
                self.endpoints
                    .update(&endpoint_key(id, slot), &endpoint_value(endpoint)),
            ),
            Op::DeleteEndpoint { id, slot } => (
                "endpoints",
                self.endpoints.delete(&endpoint_key(id, slot)).map(drop),
            ),
            Op::PutService {
                frontend,
                id,
                count,
            } => (
                "services",
                self.services
                    .update(&service_key(frontend), &service_value(id, count)),
            ),
            Op::DeleteService { frontend } => (
                "services",
                self.services.delete(&service_key(frontend)).map(drop),
            ),
        };
        result.map_err(|source| SockLbError::Write { map, source })
    }

    /// Empties both maps (services first, so no pick finds a missing slot).
    fn clear(&mut self) -> Result<(), SockLbError> {
        for (name, map) in [("services", &self.services), ("endpoints", &self.endpoints)] {
            let write = |source| SockLbError::Write { map: name, source };
            for key in map.keys().map_err(write)? {
                map.delete(&key).map_err(write)?;
            }
        }
        self.programmed.clear();
        self.dirty = false;
        Ok(())
    }

    /// How many links are attached (one per family).
    pub fn attached(&self) -> usize {
        self.links.len()
    }
}
