//! The model as nftables transactions, with no IO: [`full`] writes the whole tables (one
//! transaction that deletes and recreates them, so whatever an earlier run left is gone), and
//! [`incremental`] writes only what changed between two states of some Services. The result
//! is a typed [`Transaction`] (`super::ruleset`), applied over netlink (`super::netlink`) and
//! printable as an nft script.
//!
//! Two tables, `ip shoal-proxy` and `ip6 shoal-proxy`, of the same shape, written in the same
//! transactions: kube-proxy's choice for dual-stack (a proxier, and a table, per family).
//! An `inet` table would share the hooks and helper chains, but every rule matching an
//! address would then need its family checked and every map would exist twice anyway (keys
//! are typed by family), and IPv4 packets would walk IPv6 rules; per-family tables keep each
//! packet on rules of its family, and keep the IPv4 table exactly as it is on single-stack
//! nodes. Connection marks, `backends` key blocks and pick chains are per table.
//!
//! Each table follows kube-proxy's nftables mode (`pkg/proxy/nftables/proxier.go`) where the
//! kernel allows it at scale:
//! - `services`: a verdict map `daddr . l4proto . dport` → where the connection goes, looked
//!   up from the nat `prerouting` and `output` hooks; `service-nodeports` (`l4proto . dport`)
//!   is looked up for addresses of this node (`fib daddr type local`).
//! - endpoint choice: kube-proxy jumps through `numgen random mod N vmap { … }` to one chain
//!   per endpoint. Every such vmap is an anonymous set, and the kernel's cost of adding a set
//!   grows with the sets already in the table (10,000 Services × 10 endpoints took 15 s of
//!   kernel time here; named sets 11 s; one rule per endpoint, as iptables does, 4 s). So a
//!   Service port owns no chain: `service-marks` (`nodeport-marks`) gives the connection a
//!   mark naming the port's endpoint list — a block of keys in one map, `backends` — and the
//!   verdict map sends it to a pick chain shared by all lists of its size, `pick-internal-N`
//!   (`pick-external-N`), whose rule DNATs to `backends[mark . numgen random mod N]`. A map
//!   bound by many rules costs a check per binding per element, so only pick chains bind it.
//!   A change is then element updates only (plus a pick chain for a new size). The
//!   connection mark of a Service connection is ours.
//! - one endpoint (ClusterIP traffic, no affinity; the common case): no mark and no pick —
//!   `services` sends the connection to `direct-internal`, whose rule DNATs to
//!   `service-endpoints[daddr . l4proto . dport]`, as a one-endpoint Service in kube-proxy
//!   is a plain `dnat`. It sets a mark only where masquerading needs one (traffic from
//!   outside the pod network; the bridge bit without `br_netfilter`). External traffic keeps
//!   the pick chains: its mark carries its masquerade choice.
//! - masquerade: ClusterIP traffic from outside the pod network (in `pick-internal-N`) and
//!   external traffic under `externalTrafficPolicy: Cluster` (its mark carries the bit) set
//!   the masquerade bit of the connection mark; `masquerading` in nat `postrouting`
//!   masquerades those, and connections DNATed from the pod bridge back onto it: replies
//!   between two pods on one bridge are bridged, never routed, so without `br_netfilter`
//!   they would skip conntrack's reverse NAT. With it on (`bridge-nf-call-iptables`, as
//!   k3s and kube-proxy require) they do not, and only a pod reaching itself needs it (its
//!   own address as the source would be dropped): `hairpin` holds `ip . ip` for this node's
//!   endpoints, counted across ports, matched for DNATed connections (`ct status dnat`), so
//!   the bridge bit is not set at all then. Masquerading is a second NAT per connection — it was
//!   half of a ClusterIP connection's extra cost in `shoal-bench proxy`.
//! - ClientIP affinity (rare, so sets are affordable): kube-proxy's scheme — a chain per port,
//!   one timeout set and one chain per endpoint, the set refreshed by the chain and checked
//!   before a random pick (`numgen random mod N-k 0` rules, uniform).
//! - `no-endpoint-services` / `no-endpoint-nodeports`: addresses of ports without endpoints,
//!   looked up for new connections in filter hooks that run before NAT: `reject` (TCP reset,
//!   ICMP port unreachable otherwise), or `drop` when a Local policy finds no endpoint here
//!   while other nodes have some.
//!
//! Every Service port renders to a [`Fragment`] (its elements, key blocks, the pick chains it
//! uses, its affinity chains and sets); the incremental transaction is the difference of two
//! fragments, in an order the kernel accepts in one transaction (elements go before the
//! chains they jump to disappear; chains are flushed before sets their rules name are
//! deleted).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::model::{Endpoint, Protocol, ServicePort};
use super::ruleset::{
    rule, Family, Hook, HookPoint, Key, Op, Rule, Selector, SetDecl, SetKind, Stmt, Transaction,
    Value, Verdict,
};

/// The connection mark bit that asks `masquerading` to masquerade.
pub const MASQUERADE_BIT: u32 = 0x8000_0000;
/// The connection mark bit saying the connection came from the pod bridge: it is
/// masqueraded if it goes back onto it.
pub const FROM_BRIDGE_BIT: u32 = 0x4000_0000;
/// The bits of the connection mark that name an endpoint list.
const BLOCK_MASK: u32 = FROM_BRIDGE_BIT - 1;

/// The verdict maps of each table.
const SERVICES: &str = "services";
const NODEPORTS: &str = "service-nodeports";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
/// Service address → the connection mark naming its endpoint list (and masquerade).
const SERVICE_MARKS: &str = "service-marks";
const NODEPORT_MARKS: &str = "nodeport-marks";
/// Connection mark (the list's block) . endpoint index → endpoint address and port.
const BACKENDS: &str = "backends";
/// Service address → its only endpoint (ClusterIP traffic to a one-endpoint list).
const SERVICE_ENDPOINTS: &str = "service-endpoints";
/// Where `services` sends ClusterIP traffic to a one-endpoint list: a DNAT from
/// `service-endpoints`, without a connection mark (unless masquerading needs one).
const DIRECT_CHAIN: &str = "direct-internal";
/// `address . address` of this node's endpoints: a connection with such source and
/// destination is a pod reaching itself through a Service.
const HAIRPIN: &str = "hairpin";
const REJECT_CHAIN: &str = "reject-chain";

/// How the tables are named and what they need to know about the cluster network.
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// The tables' name (families `ip` and `ip6`).
    pub table: String,
    /// The IPv4 pod network: ClusterIP traffic from outside it is masqueraded (kube-proxy's
    /// `--cluster-cidr`). `None`: only hairpin and external traffic are.
    pub cluster_cidr: Option<(Ipv4Addr, u8)>,
    /// The same for IPv6.
    pub cluster_cidr6: Option<(Ipv6Addr, u8)>,
    /// The pod bridge: connections DNATed from it back onto it are masqueraded.
    pub pod_bridge: Option<String>,
    /// Whether the `ip6` table is written; IPv6 ports are left out when not (a kernel without
    /// IPv6 would refuse the table, and with it the whole transaction).
    pub ipv6: bool,
    /// `br_netfilter`'s `bridge-nf-call-iptables` is on: bridged IPv4 packets go through
    /// conntrack, so a reply bridged from one pod to another is un-NATed without help, and
    /// connections DNATed back onto the pod bridge are masqueraded only when a pod reaches
    /// itself (kube-proxy's requirement and behaviour); off, all of them are.
    pub bridge_calls_iptables: bool,
    /// The same for IPv6 (`bridge-nf-call-ip6tables`).
    pub bridge_calls_ip6tables: bool,
}

impl TableConfig {
    pub fn new(table: impl Into<String>) -> Self {
        TableConfig {
            table: table.into(),
            cluster_cidr: None,
            cluster_cidr6: None,
            pod_bridge: None,
            ipv6: true,
            bridge_calls_iptables: false,
            bridge_calls_ip6tables: false,
        }
    }

    /// Whether same-bridge traffic of `family` is masqueraded only for hairpin.
    fn bridge_netfilter(&self, family: Family) -> bool {
        match family {
            Family::V4 => self.bridge_calls_iptables,
            Family::V6 => self.bridge_calls_ip6tables,
        }
    }

    fn families(&self) -> impl Iterator<Item = Family> + '_ {
        Family::ALL
            .into_iter()
            .filter(|f| *f == Family::V4 || self.ipv6)
    }

    /// The pod network of `family`; a /0 is everything, so nothing is from outside it.
    fn cluster_cidr(&self, family: Family) -> Option<(IpAddr, u8)> {
        match family {
            Family::V4 => self.cluster_cidr.map(|(net, p)| (IpAddr::V4(net), p)),
            Family::V6 => self.cluster_cidr6.map(|(net, p)| (IpAddr::V6(net), p)),
        }
        .filter(|(_, prefix)| *prefix > 0)
    }
}

/// The nft objects one Service port owns, all in the table of its family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub family: Family,
    /// Chain name → its rules.
    pub chains: BTreeMap<String, Vec<Rule>>,
    /// Set name → what it holds.
    pub sets: BTreeMap<String, SetKind>,
    /// (map, key) → value.
    pub elements: BTreeMap<(&'static str, Key), Value>,
    /// The [`Blocks`] its endpoint lists hold.
    pub blocks: BTreeSet<String>,
    /// The shared pick chains it goes to: (external, endpoint count).
    pub picks: BTreeSet<(bool, usize)>,
    /// Its endpoints that may reach themselves through it (shared with other ports, so
    /// counted in [`Blocks`]).
    pub hairpin: BTreeSet<IpAddr>,
}

impl Fragment {
    fn new(family: Family) -> Self {
        Fragment {
            family,
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
            elements: BTreeMap::new(),
            blocks: BTreeSet::new(),
            picks: BTreeSet::new(),
            hairpin: BTreeSet::new(),
        }
    }
}

/// A short, stable hash of `text` (FNV-1a, 40 bits, base32): chain names stay unique and
/// identical across restarts.
fn hash(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (0..8)
        .map(|i| char::from(ALPHABET[((h >> (i * 5)) & 31) as usize]))
        .collect()
}

fn service_chain(key: &str) -> String {
    format!("service-{}-{key}", hash(key))
}

fn external_chain(key: &str) -> String {
    format!("external-{}-{key}", hash(key))
}

fn endpoint_id(key: &str, ep: &Endpoint) -> String {
    // nft's names cannot hold ':' (IPv6 addresses); the hash keeps them unique anyway.
    let id = format!("{key}__{}/{}", ep.ip, ep.port).replace(':', "-");
    format!("{}-{id}", hash(&id))
}

fn endpoint_chain(key: &str, ep: &Endpoint) -> String {
    format!("endpoint-{}", endpoint_id(key, ep))
}

fn affinity_set(key: &str, ep: &Endpoint) -> String {
    format!("affinity-{}", endpoint_id(key, ep))
}

/// Bits of a connection mark below the masquerade bit: a block number and an endpoint index.
const INDEX_BITS: u32 = 12;
/// Endpoints one list can hold (more are left out, with the rest still balanced over).
pub const MAX_ENDPOINTS: usize = 1 << INDEX_BITS;
const MAX_BLOCK: u32 = (FROM_BRIDGE_BIT >> INDEX_BITS) - 1;

/// The `backends` key ranges of one table handed to endpoint lists: list `name` owns the
/// keys `block << 12 ..` for as long as it exists, so an incremental change rewrites only its
/// own elements. Deterministic: the lowest free block first.
#[derive(Debug, Clone, Default)]
pub struct BlockAllocator {
    by_name: BTreeMap<String, u32>,
    free: BTreeSet<u32>,
    next: u32,
    /// The shared pick chains the table has (created as needed, removed by a full sync).
    picks: BTreeSet<(bool, usize)>,
    /// How many ports name each address of `hairpin`.
    hairpin: BTreeMap<IpAddr, usize>,
}

impl BlockAllocator {
    pub fn get(&mut self, name: &str) -> Option<u32> {
        if let Some(block) = self.by_name.get(name) {
            return Some(*block);
        }
        let block = match self.free.pop_first() {
            Some(block) => block,
            None if self.next < MAX_BLOCK => {
                self.next += 1;
                self.next
            }
            None => return None,
        };
        self.by_name.insert(name.to_string(), block);
        Some(block)
    }

    fn release(&mut self, name: &str) {
        if let Some(block) = self.by_name.remove(name) {
            self.free.insert(block);
        }
    }

    /// Counts a port naming `ip`; true when it is the first (its element is to be added).
    fn hold_hairpin(&mut self, ip: IpAddr) -> bool {
        let count = self.hairpin.entry(ip).or_insert(0);
        *count += 1;
        *count == 1
    }

    /// Uncounts one; true when it was the last (its element is to be deleted).
    fn drop_hairpin(&mut self, ip: IpAddr) -> bool {
        match self.hairpin.get_mut(&ip) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                self.hairpin.remove(&ip);
                true
            }
            None => false,
        }
    }
}

/// The key blocks and pick chains of both tables (their marks never meet: a connection
/// is of one family).
#[derive(Debug, Clone, Default)]
pub struct Blocks {
    families: [BlockAllocator; 2],
}

impl Blocks {
    pub fn of(&mut self, family: Family) -> &mut BlockAllocator {
        &mut self.families[family.index()]
    }

    /// Forgets every block (before a full sync).
    pub fn clear(&mut self) {
        *self = Blocks::default();
    }
}

/// Where a port without usable endpoints sends new connections.
fn no_endpoint_verdict(port: &ServicePort) -> Verdict {
    if port.any_endpoints {
        Verdict::Drop
    } else {
        Verdict::Goto(REJECT_CHAIN.into())
    }
}

/// One list of endpoints new connections are spread over.
#[derive(Clone, Copy)]
struct List<'a> {
    endpoints: &'a [Endpoint],
    /// The name of its block of `backends` keys.
    block_name: &'a str,
    /// NodePort or external-address traffic (else ClusterIP traffic).
    external: bool,
    /// Whether the connection is marked for masquerade (external traffic, policy Cluster).
    masquerade: bool,
}

/// Where the lookup of a Service address sends a new connection.
struct Target {
    /// The `services` / `service-nodeports` verdict.
    verdict: Verdict,
    /// The connection mark to set first (`service-marks` / `nodeport-marks`), if any.
    mark: Option<u32>,
    /// The only endpoint, DNATed to from `service-endpoints` (ClusterIP traffic only).
    endpoint: Option<Endpoint>,
}

/// Marks connections from the pod bridge. A pod reaching a pod on the same bridge through a
/// Service (itself included) must be masqueraded, or the reply would be bridged straight back
/// and never un-NATed: when routed, it would skip the IP hooks entirely; with `br_netfilter`,
/// a packet DNATed back onto its bridge is bridged, and postrouting then has no input device
/// to match — so the input is noted in the connection mark at DNAT time. With `br_netfilter`
/// only a pod reaching itself is masqueraded, which needs no mark (`hairpin`).
fn from_bridge(config: &TableConfig, family: Family) -> Vec<Rule> {
    config
        .pod_bridge
        .iter()
        .filter(|_| !config.bridge_netfilter(family))
        .map(|bridge| {
            rule![
                Stmt::Iifname(bridge.clone()),
                Stmt::CtMarkOr(FROM_BRIDGE_BIT)
            ]
        })
        .collect()
}

/// ClusterIP traffic from outside the pod network is marked for masquerade.
fn masquerade_outsiders(config: &TableConfig, family: Family) -> Option<Rule> {
    let (net, prefix) = config.cluster_cidr(family)?;
    Some(rule![
        Stmt::SaddrNotIn(net, prefix),
        Stmt::CtMarkOr(MASQUERADE_BIT)
    ])
}

fn pick_chain(external: bool, n: usize) -> String {
    let kind = if external { "external" } else { "internal" };
    format!("pick-{kind}-{n}")
}

/// The rules of a shared pick chain: a random key of the connection's block in `backends`.
fn pick_rules(config: &TableConfig, family: Family, external: bool, n: usize) -> Vec<Rule> {
    let mut rules = from_bridge(config, family);
    if !external {
        rules.extend(masquerade_outsiders(config, family));
    }
    // One rule per protocol: a map typed by `tcp dport` cannot be bound behind an anonymous
    // protocol set (nft reports conflicting protocols).
    for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        rules.push(rule![
            Stmt::L4proto(proto),
            Stmt::DnatBackends {
                family,
                mask: BLOCK_MASK,
                modulus: n as u32,
                map: BACKENDS.into(),
            }
        ]);
    }
    rules
}

/// The rules of `direct-internal`: what a pick chain does for ClusterIP traffic, with the
/// endpoint looked up by the Service address instead of picked from a block.
fn direct_rules(config: &TableConfig, family: Family) -> Vec<Rule> {
    let mut rules = from_bridge(config, family);
    rules.extend(masquerade_outsiders(config, family));
    // Per protocol, as in the pick chains; TCP first, the common case.
    for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        rules.push(rule![
            Stmt::L4proto(proto),
            Stmt::DnatFromMap(family, SERVICE_ENDPOINTS.into())
        ]);
    }
    rules
}

/// How new connections reach one of `list`'s endpoints. ClusterIP traffic to a single
/// endpoint without affinity: `direct-internal`, which DNATs by the Service address (no
/// block, no mark, no random pick). Else without affinity: the list's block
/// of `backends` keys, a connection mark naming it and a shared pick chain for its size.
/// With ClientIP affinity (kube-proxy's scheme): a chain of the port that sends a client to
/// the endpoint it used recently, else to a random one (rule k takes 1/(N-k) of what reaches
/// it: uniform), each endpoint through its own chain that refreshes its set.
fn target(
    port: &ServicePort,
    list: &List<'_>,
    config: &TableConfig,
    f: &mut Fragment,
    blocks: &mut Blocks,
) -> Target {
    let key = &port.key();
    let family = port.family;
    let endpoints = &list.endpoints[..list.endpoints.len().min(MAX_ENDPOINTS)];
    let Some(seconds) = port.affinity_seconds else {
        if let [only] = endpoints {
            if !list.external {
                return Target {
                    verdict: Verdict::Goto(DIRECT_CHAIN.into()),
                    mark: None,
                    endpoint: Some(*only),
                };
            }
        }
        let Some(block) = blocks.of(family).get(list.block_name) else {
            // Out of blocks (half a million endpoint lists): unreachable rather than wrong.
            return Target {
                verdict: Verdict::Goto(REJECT_CHAIN.into()),
                mark: None,
                endpoint: None,
            };
        };
        f.blocks.insert(list.block_name.to_string());
        f.picks.insert((list.external, endpoints.len()));
        let base = block << INDEX_BITS;
        for (i, ep) in endpoints.iter().enumerate() {
            f.elements.insert(
                (BACKENDS, Key::Backend(base, i as u32)),
                Value::Endpoint(ep.ip, ep.port),
            );
        }
        return Target {
            verdict: Verdict::Goto(pick_chain(list.external, endpoints.len())),
            mark: Some(if list.masquerade {
                base | MASQUERADE_BIT
            } else {
                base
            }),
            endpoint: None,
        };
    };
    let mut rules = from_bridge(config, family);
    if list.masquerade {
        rules.push(rule![Stmt::CtMarkOr(MASQUERADE_BIT)]);
    } else if !list.external {
        rules.extend(masquerade_outsiders(config, family));
    }
    for ep in endpoints {
        rules.push(rule![
            Stmt::SaddrInSet(family, affinity_set(key, ep)),
            Stmt::Verdict(Verdict::Goto(endpoint_chain(key, ep)))
        ]);
    }
    for (k, ep) in endpoints.iter().enumerate() {
        let left = endpoints.len() - k;
        let goto = Stmt::Verdict(Verdict::Goto(endpoint_chain(key, ep)));
        rules.push(if left > 1 {
            rule![Stmt::RandomIsZero(left as u32), goto]
        } else {
            rule![goto]
        });
    }
    for ep in endpoints {
        let set = affinity_set(key, ep);
        f.sets.insert(
            set.clone(),
            SetKind::Affinity {
                timeout_secs: seconds,
            },
        );
        f.chains.insert(
            endpoint_chain(key, ep),
            vec![
                rule![Stmt::UpdateSaddr(family, set)],
                rule![Stmt::L4proto(port.protocol), Stmt::DnatTo(ep.ip, ep.port)],
            ],
        );
    }
    let chain = if list.external {
        external_chain(key)
    } else {
        service_chain(key)
    };
    f.chains.insert(chain.clone(), rules);
    Target {
        verdict: Verdict::Goto(chain),
        mark: None,
        endpoint: None,
    }
}

/// The objects `port` needs; endpoint lists get their `backends` keys from `blocks`.
pub fn fragment(port: &ServicePort, config: &TableConfig, blocks: &mut Blocks) -> Fragment {
    let key = port.key();
    let mut f = Fragment::new(port.family);
    if config.bridge_netfilter(port.family) && config.pod_bridge.is_some() {
        f.hairpin.extend(port.local_ips.iter().copied());
    }
    let address = |ip: &IpAddr| Key::Address(*ip, port.protocol, port.port);
    if port.internal.is_empty() {
        for ip in &port.cluster_ips {
            f.elements.insert(
                (NO_ENDPOINT_SERVICES, address(ip)),
                Value::Verdict(no_endpoint_verdict(port)),
            );
        }
    } else {
        let list = List {
            endpoints: &port.internal,
            block_name: &key,
            external: false,
            masquerade: false,
        };
        let target = target(port, &list, config, &mut f, blocks);
        for ip in &port.cluster_ips {
            f.elements.insert(
                (SERVICES, address(ip)),
                Value::Verdict(target.verdict.clone()),
            );
            if let Some(mark) = target.mark {
                f.elements
                    .insert((SERVICE_MARKS, address(ip)), Value::Mark(mark));
            }
            if let Some(ep) = target.endpoint {
                f.elements.insert(
                    (SERVICE_ENDPOINTS, address(ip)),
                    Value::Endpoint(ep.ip, ep.port),
                );
            }
        }
    }
    if !port.has_external() {
        return f;
    }
    let node_port = port.node_port.map(|p| Key::Port(port.protocol, p));
    if port.external.is_empty() {
        let verdict = Value::Verdict(no_endpoint_verdict(port));
        for ip in &port.external_ips {
            f.elements
                .insert((NO_ENDPOINT_SERVICES, address(ip)), verdict.clone());
        }
        if let Some(node_port) = node_port {
            f.elements
                .insert((NO_ENDPOINT_NODEPORTS, node_port), verdict);
        }
        return f;
    }
    // The same endpoints as ClusterIP traffic share its keys.
    let block_name = if port.external == port.internal {
        key.clone()
    } else {
        format!("{key}/external")
    };
    let list = List {
        endpoints: &port.external,
        block_name: &block_name,
        external: true,
        masquerade: !port.external_local,
    };
    let target = target(port, &list, config, &mut f, blocks);
    for ip in &port.external_ips {
        f.elements.insert(
            (SERVICES, address(ip)),
            Value::Verdict(target.verdict.clone()),
        );
        if let Some(mark) = target.mark {
            f.elements
                .insert((SERVICE_MARKS, address(ip)), Value::Mark(mark));
        }
    }
    if let Some(node_port) = node_port {
        if let Some(mark) = target.mark {
            f.elements
                .insert((NODEPORT_MARKS, node_port.clone()), Value::Mark(mark));
        }
        f.elements
            .insert((NODEPORTS, node_port), Value::Verdict(target.verdict));
    }
    f
}

/// The fixed part of `family`'s table: hooks, helper chains and the (empty) maps.
fn base(config: &TableConfig, family: Family, tx: &mut Transaction) {
    let chain = |tx: &mut Transaction, name: &str, hook: Option<Hook>, rules: Vec<Rule>| {
        tx.push(family, Op::AddChain(name.into(), hook));
        for rule in rules {
            tx.push(family, Op::AddRule(name.into(), rule));
        }
    };
    let mut masquerading = Vec::new();
    if let Some(bridge) = &config.pod_bridge {
        if config.bridge_netfilter(family) {
            // Only a pod reaching itself: its own address as the source would be dropped.
            // Its address pair is this node's endpoint twice, so any DNATed connection
            // qualifies (no mark needed).
            masquerading.push(rule![
                Stmt::CtStatusDnat,
                Stmt::PairInSet(family, HAIRPIN.into()),
                Stmt::Masquerade
            ]);
        } else {
            masquerading.push(rule![
                Stmt::CtMarkAny(FROM_BRIDGE_BIT),
                Stmt::Oifname(bridge.clone()),
                Stmt::Masquerade
            ]);
        }
    }
    masquerading.push(rule![Stmt::CtMarkAny(MASQUERADE_BIT), Stmt::Masquerade]);
    tx.push(
        family,
        Op::AddSet(SetDecl {
            name: HAIRPIN.into(),
            kind: SetKind::Hairpin,
        }),
    );
    chain(tx, "masquerading", None, masquerading);
    for (name, kind) in [
        (BACKENDS, SetKind::Backends),
        (SERVICE_ENDPOINTS, SetKind::AddressEndpoints),
        (SERVICE_MARKS, SetKind::AddressMarks),
        (NODEPORT_MARKS, SetKind::PortMarks),
        (SERVICES, SetKind::AddressVerdicts),
        (NO_ENDPOINT_SERVICES, SetKind::AddressVerdicts),
        (NODEPORTS, SetKind::PortVerdicts),
        (NO_ENDPOINT_NODEPORTS, SetKind::PortVerdicts),
    ] {
        tx.push(
            family,
            Op::AddSet(SetDecl {
                name: name.into(),
                kind,
            }),
        );
    }
    chain(tx, DIRECT_CHAIN, None, direct_rules(config, family));
    let address = Selector::Address(family);
    let local = || [Stmt::DaddrLocal, Stmt::DaddrNotLoopback(family)];
    let with_local = |last: Stmt| {
        let mut stmts = local().to_vec();
        stmts.push(last);
        Rule(stmts)
    };
    // The mark first (a miss leaves it alone), then the verdict.
    chain(
        tx,
        "services",
        None,
        vec![
            rule![Stmt::CtMarkFromMap(address, SERVICE_MARKS.into())],
            rule![Stmt::VerdictMap(address, SERVICES.into())],
            with_local(Stmt::CtMarkFromMap(Selector::Port, NODEPORT_MARKS.into())),
            with_local(Stmt::VerdictMap(Selector::Port, NODEPORTS.into())),
        ],
    );
    chain(
        tx,
        REJECT_CHAIN,
        None,
        vec![
            rule![Stmt::L4proto(Protocol::Tcp), Stmt::RejectTcpReset],
            rule![Stmt::RejectPortUnreachable],
        ],
    );
    chain(
        tx,
        "endpoints-check",
        None,
        vec![
            rule![Stmt::VerdictMap(address, NO_ENDPOINT_SERVICES.into())],
            with_local(Stmt::VerdictMap(
                Selector::Port,
                NO_ENDPOINT_NODEPORTS.into(),
            )),
        ],
    );
    // Filter hooks run before NAT (-110 < -100), so they see the address the client used.
    for (name, point) in [
        ("filter-input", HookPoint::Input),
        ("filter-forward", HookPoint::Forward),
        ("filter-output", HookPoint::Output),
    ] {
        let hook = Hook {
            nat: false,
            point,
            priority: -110,
        };
        chain(
            tx,
            name,
            Some(hook),
            vec![rule![
                Stmt::CtStateNew,
                Stmt::Verdict(Verdict::Jump("endpoints-check".into()))
            ]],
        );
    }
    for (name, point, priority, to) in [
        ("nat-prerouting", HookPoint::Prerouting, -100, "services"),
        ("nat-output", HookPoint::Output, -100, "services"),
        (
            "nat-postrouting",
            HookPoint::Postrouting,
            100,
            "masquerading",
        ),
    ] {
        let hook = Hook {
            nat: true,
            point,
            priority,
        };
        chain(
            tx,
            name,
            Some(hook),
            vec![rule![Stmt::Verdict(Verdict::Jump(to.into()))]],
        );
    }
}

type ElementsByMap<T> = BTreeMap<(Family, &'static str), Vec<T>>;

/// `ip . ip`, in the hairpin set.
fn hairpin_element(ip: IpAddr) -> (Key, Option<Value>) {
    (Key::Pair(ip), None)
}

/// A transaction being built in the phases one transaction needs.
#[derive(Debug, Default)]
struct Phases {
    create: Vec<(Family, Op)>,
    delete_elements: ElementsByMap<Key>,
    flush: Vec<(Family, Op)>,
    delete_sets: Vec<(Family, Op)>,
    create_sets: Vec<(Family, Op)>,
    rules: Vec<(Family, Op)>,
    add_elements: ElementsByMap<(Key, Option<Value>)>,
    delete_chains: Vec<(Family, Op)>,
}

impl Phases {
    fn finish(self, tx: &mut Transaction) {
        tx.ops.extend(self.create);
        for ((family, map), keys) in self.delete_elements {
            tx.push(family, Op::DeleteElements(map, keys));
        }
        tx.ops.extend(self.flush);
        tx.ops.extend(self.delete_sets);
        tx.ops.extend(self.create_sets);
        tx.ops.extend(self.rules);
        for ((family, map), elements) in self.add_elements {
            if !elements.is_empty() {
                tx.push(family, Op::AddElements(map, elements));
            }
        }
        tx.ops.extend(self.delete_chains);
    }

    fn add_rules(&mut self, family: Family, chain: &str, rules: &[Rule]) {
        for rule in rules {
            self.rules
                .push((family, Op::AddRule(chain.to_string(), rule.clone())));
        }
    }

    fn add_set(&mut self, family: Family, name: &str, kind: SetKind) {
        self.create.push((
            family,
            Op::AddSet(SetDecl {
                name: name.to_string(),
                kind,
            }),
        ));
    }
}

/// The whole tables for `ports`: one transaction replacing whatever tables of that name
/// exist. `blocks` starts afresh.
pub fn full<'a>(
    config: &TableConfig,
    ports: impl IntoIterator<Item = &'a ServicePort>,
    blocks: &mut Blocks,
) -> Transaction {
    blocks.clear();
    let mut tx = Transaction::new(config.table.clone());
    for family in config.families() {
        // `add` first so that `delete` cannot fail on a table that does not exist yet.
        tx.push(family, Op::AddTable);
        tx.push(family, Op::DeleteTable);
        tx.push(family, Op::AddTable);
        base(config, family, &mut tx);
    }
    let mut phases = Phases::default();
    for port in ports {
        if port.family == Family::V6 && !config.ipv6 {
            continue;
        }
        let f = fragment(port, config, blocks);
        add_picks(&f, config, blocks, &mut phases);
        for ip in &f.hairpin {
            if blocks.of(f.family).hold_hairpin(*ip) {
                phases
                    .add_elements
                    .entry((f.family, HAIRPIN))
                    .or_default()
                    .push(hairpin_element(*ip));
            }
        }
        add_fragment(f, &mut phases);
    }
    phases.finish(&mut tx);
    tx
}

/// Creates the pick chains `f` needs that its table does not have yet.
fn add_picks(f: &Fragment, config: &TableConfig, blocks: &mut Blocks, phases: &mut Phases) {
    for &(external, n) in &f.picks {
        if blocks.of(f.family).picks.insert((external, n)) {
            let chain = pick_chain(external, n);
            phases
                .create
                .push((f.family, Op::AddChain(chain.clone(), None)));
            phases.add_rules(f.family, &chain, &pick_rules(config, f.family, external, n));
        }
    }
}

fn add_fragment(f: Fragment, phases: &mut Phases) {
    for (name, kind) in &f.sets {
        phases.add_set(f.family, name, *kind);
    }
    for (name, rules) in &f.chains {
        phases
            .create
            .push((f.family, Op::AddChain(name.clone(), None)));
        phases.add_rules(f.family, name, rules);
    }
    for ((map, key), value) in f.elements {
        phases
            .add_elements
            .entry((f.family, map))
            .or_default()
            .push((key, Some(value)));
    }
}

/// One Service's change: its ports before and after.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub old: &'a [ServicePort],
    pub new: &'a [ServicePort],
}

/// The transaction taking the tables from the old to the new state of the changed Services
/// (all of them at once), with `blocks` as the tables' current ones. Empty when nothing
/// differs.
pub fn incremental(
    config: &TableConfig,
    changes: &[Change<'_>],
    blocks: &mut Blocks,
) -> Transaction {
    let mut phases = Phases::default();
    for change in changes {
        for family in config.families() {
            let of_family = |ports: &'_ [ServicePort]| {
                ports
                    .iter()
                    .filter(|p| p.family == family)
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let (old, new) = (of_family(change.old), of_family(change.new));
            if old.is_empty() && new.is_empty() {
                continue;
            }
            let old = merge(family, old.iter().map(|p| fragment(p, config, blocks)));
            let new = merge(family, new.iter().map(|p| fragment(p, config, blocks)));
            for gone in old.blocks.difference(&new.blocks) {
                blocks.of(family).release(gone);
            }
            for ip in old.hairpin.difference(&new.hairpin) {
                if blocks.of(family).drop_hairpin(*ip) {
                    // Added by an earlier change of this transaction: not added after all
                    // (deletions go first, so deleting it would fail).
                    let added = phases.add_elements.entry((family, HAIRPIN)).or_default();
                    let before = added.len();
                    added.retain(|(key, _)| *key != Key::Pair(*ip));
                    if added.len() == before {
                        phases
                            .delete_elements
                            .entry((family, HAIRPIN))
                            .or_default()
                            .push(Key::Pair(*ip));
                    }
                }
            }
            for ip in new.hairpin.difference(&old.hairpin) {
                if blocks.of(family).hold_hairpin(*ip) {
                    phases
                        .add_elements
                        .entry((family, HAIRPIN))
                        .or_default()
                        .push(hairpin_element(*ip));
                }
            }
            add_picks(&new, config, blocks, &mut phases);
            diff(&old, &new, &mut phases);
        }
    }
    let mut tx = Transaction::new(config.table.clone());
    phases.finish(&mut tx);
    tx
}

fn merge(family: Family, fragments: impl Iterator<Item = Fragment>) -> Fragment {
    let mut all = Fragment::new(family);
    for f in fragments {
        all.chains.extend(f.chains);
        all.sets.extend(f.sets);
        all.elements.extend(f.elements);
        all.blocks.extend(f.blocks);
        all.picks.extend(f.picks);
        all.hairpin.extend(f.hairpin);
    }
    all
}

fn diff(old: &Fragment, new: &Fragment, phases: &mut Phases) {
    let family = new.family;
    // A set whose declaration changed is deleted and recreated, which needs every rule
    // naming it gone first: then every chain is rewritten.
    let sets_changed = old
        .sets
        .iter()
        .any(|(name, kind)| new.sets.get(name).is_some_and(|k| k != kind));
    for (name, kind) in &new.sets {
        match old.sets.get(name) {
            None => phases.add_set(family, name, *kind),
            Some(before) if before != kind => {
                phases
                    .delete_sets
                    .push((family, Op::DeleteSet(name.clone())));
                phases.create_sets.push((
                    family,
                    Op::AddSet(SetDecl {
                        name: name.clone(),
                        kind: *kind,
                    }),
                ));
            }
            Some(_) => {}
        }
    }
    for name in old.sets.keys().filter(|n| !new.sets.contains_key(*n)) {
        phases
            .delete_sets
            .push((family, Op::DeleteSet(name.clone())));
    }
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            None => {
                phases
                    .create
                    .push((family, Op::AddChain(name.clone(), None)));
                phases.add_rules(family, name, rules);
            }
            Some(before) if sets_changed || before != rules => {
                phases.flush.push((family, Op::FlushChain(name.clone())));
                phases.add_rules(family, name, rules);
            }
            Some(_) => {}
        }
    }
    for name in old.chains.keys().filter(|n| !new.chains.contains_key(*n)) {
        phases.flush.push((family, Op::FlushChain(name.clone())));
        phases
            .delete_chains
            .push((family, Op::DeleteChain(name.clone())));
    }
    for ((map, key), value) in &old.elements {
        if new.elements.get(&(*map, key.clone())) != Some(value) {
            phases
                .delete_elements
                .entry((family, map))
                .or_default()
                .push(key.clone());
        }
    }
    for ((map, key), value) in &new.elements {
        if old.elements.get(&(*map, key.clone())) != Some(value) {
            phases
                .add_elements
                .entry((family, map))
                .or_default()
                .push((key.clone(), Some(value.clone())));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::proxy::model::service_ports;
    use crate::proxy::model::tests::{node, service, web, web_slice};
    use serde_json::json;

    fn config() -> TableConfig {
        TableConfig {
            cluster_cidr: Some(("10.42.0.0".parse().unwrap(), 16)),
            cluster_cidr6: Some(("fd42::".parse().unwrap(), 48)),
            pod_bridge: Some("shoal0".into()),
            ..TableConfig::new("shoal-proxy")
        }
    }

    /// The value of `map`'s element whose key reads `key`, in nft syntax.
    fn element(f: &Fragment, map: &str, key: &str) -> Option<String> {
        f.elements
            .iter()
            .find(|((m, k), _)| *m == map && k.to_string() == key)
            .map(|(_, v)| v.to_string())
    }

    fn texts(rules: &[Rule]) -> Vec<String> {
        rules.iter().map(Rule::to_string).collect()
    }

    fn two_ready() -> Vec<ServicePort> {
        let s = web_slice(&[
            ("10.42.0.5", "n1", true, true, false),
            ("10.42.0.6", "n1", true, true, false),
        ]);
        service_ports(&web(), [&s], &node())
    }

    fn backends(f: &Fragment) -> Vec<(String, String)> {
        f.elements
            .iter()
            .filter(|((m, _), _)| *m == BACKENDS)
            .map(|((_, k), v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hash_is_stable_and_short() {
        assert_eq!(hash("default/web/tcp/http"), hash("default/web/tcp/http"));
        assert_ne!(hash("default/web/tcp/http"), hash("default/web/tcp/https"));
        assert_eq!(hash("x").len(), 8);
    }

    #[test]
    fn cluster_ip_with_endpoints() {
        let ports = two_ready();
        let f = fragment(&ports[0], &config(), &mut Blocks::default());
        let address = "10.43.0.20 . tcp . 80";
        assert_eq!(
            element(&f, SERVICES, address).as_deref(),
            Some("goto pick-internal-2")
        );
        assert_eq!(element(&f, SERVICE_MARKS, address).as_deref(), Some("4096"));
        assert_eq!(
            backends(&f),
            vec![
                ("4096 . 0".to_string(), "10.42.0.5 . 8080".to_string()),
                ("4096 . 1".to_string(), "10.42.0.6 . 8080".to_string())
            ]
        );
        assert!(f.chains.is_empty(), "no chain of its own");
        assert!(f.sets.is_empty());
        assert_eq!(f.picks, [(false, 2)].into());
        assert_eq!(
            texts(&pick_rules(&config(), Family::V4, false, 2))[..3],
            [
                "iifname \"shoal0\" ct mark set ct mark or 0x40000000".to_string(),
                "ip saddr != 10.42.0.0/16 ct mark set ct mark or 0x80000000".to_string(),
                "meta l4proto tcp dnat ip to ct mark and 0x3fffffff . numgen random mod 2 map @backends".to_string()
            ]
        );
        assert!(!f
            .elements
            .keys()
            .any(|(m, _)| *m == NO_ENDPOINT_SERVICES || *m == NODEPORTS));
    }

    #[test]
    fn one_endpoint_goes_direct() {
        let s = web_slice(&[
            ("10.42.0.5", "n1", true, true, false),
            ("10.42.0.6", "n1", false, false, false),
        ]);
        let ports = service_ports(&web(), [&s], &node());
        let mut blocks = Blocks::default();
        let f = fragment(&ports[0], &config(), &mut blocks);
        let address = "10.43.0.20 . tcp . 80";
        assert_eq!(
            element(&f, SERVICES, address).as_deref(),
            Some("goto direct-internal")
        );
        assert_eq!(
            element(&f, SERVICE_ENDPOINTS, address).as_deref(),
            Some("10.42.0.5 . 8080")
        );
        assert_eq!(element(&f, SERVICE_MARKS, address), None, "no mark");
        assert!(backends(&f).is_empty() && f.blocks.is_empty() && f.picks.is_empty());
        assert_eq!(blocks.of(Family::V4).get("x"), Some(1), "no block taken");
        // Without br_netfilter the bridge is still noted; outsiders are masqueraded.
        assert_eq!(
            texts(&direct_rules(&config(), Family::V4)),
            [
                "iifname \"shoal0\" ct mark set ct mark or 0x40000000",
                "ip saddr != 10.42.0.0/16 ct mark set ct mark or 0x80000000",
                "meta l4proto tcp dnat ip to ip daddr . meta l4proto . th dport map @service-endpoints",
                "meta l4proto udp dnat ip to ip daddr . meta l4proto . th dport map @service-endpoints",
                "meta l4proto sctp dnat ip to ip daddr . meta l4proto . th dport map @service-endpoints",
            ]
        );
        let bridged = TableConfig {
            bridge_calls_iptables: true,
            ..config()
        };
        assert_eq!(
            texts(&direct_rules(&bridged, Family::V4))[..2],
            [
                "ip saddr != 10.42.0.0/16 ct mark set ct mark or 0x80000000",
                "meta l4proto tcp dnat ip to ip daddr . meta l4proto . th dport map @service-endpoints",
            ]
        );
        // Affinity keeps its chains, even with one endpoint.
        let mut sticky = web();
        sticky.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
        let f = fragment(
            &service_ports(&sticky, [&s], &node())[0],
            &config(),
            &mut Blocks::default(),
        );
        assert!(element(&f, SERVICE_ENDPOINTS, address).is_none());
        assert!(element(&f, SERVICES, address)
            .unwrap()
            .starts_with("goto service-"));
    }

    #[test]
    fn blocks_are_stable_and_reused() {
        let mut blocks = BlockAllocator::default();
        assert_eq!(blocks.get("a"), Some(1));
        assert_eq!(blocks.get("b"), Some(2));
        assert_eq!(blocks.get("a"), Some(1));
        blocks.release("a");
        assert_eq!(blocks.get("c"), Some(1), "lowest free block first");
        assert_eq!(blocks.get("d"), Some(3));
    }

    #[test]
    fn no_endpoints_reject() {
        let ports = service_ports(&web(), [], &node());
        let f = fragment(&ports[0], &config(), &mut Blocks::default());
        assert!(f.chains.is_empty());
        assert_eq!(f.elements.len(), 1);
        assert_eq!(
            element(&f, NO_ENDPOINT_SERVICES, "10.43.0.20 . tcp . 80").as_deref(),
            Some("goto reject-chain")
        );
    }

    #[test]
    fn node_port_and_external_ips() {
        let svc = service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.20", "externalIPs": ["192.0.2.7"],
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}
        }));
        let s = web_slice(&[("10.42.0.5", "n2", true, true, false)]);
        let f = fragment(
            &service_ports(&svc, [&s], &node())[0],
            &config(),
            &mut Blocks::default(),
        );
        let masq_mark = (4096 | MASQUERADE_BIT).to_string();
        assert_eq!(
            element(&f, NODEPORTS, "tcp . 30080").as_deref(),
            Some("goto pick-external-1")
        );
        assert_eq!(
            element(&f, NODEPORT_MARKS, "tcp . 30080"),
            Some(masq_mark.clone())
        );
        assert_eq!(
            element(&f, SERVICES, "192.0.2.7 . tcp . 80").as_deref(),
            Some("goto pick-external-1")
        );
        assert_eq!(
            element(&f, SERVICE_MARKS, "192.0.2.7 . tcp . 80"),
            Some(masq_mark)
        );
        // The ClusterIP's one endpoint goes direct; external traffic needs its mark.
        assert_eq!(
            element(&f, SERVICES, "10.43.0.20 . tcp . 80").as_deref(),
            Some("goto direct-internal")
        );
        assert_eq!(backends(&f).len(), 1);
        assert_eq!(f.picks, [(true, 1)].into());
        assert_eq!(
            pick_rules(&config(), Family::V4, true, 1).len(),
            4,
            "no source check"
        );

        // Local policy with no endpoint here: dropped, not rejected.
        let mut local = svc.clone();
        local.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let f = fragment(
            &service_ports(&local, [&s], &node())[0],
            &config(),
            &mut Blocks::default(),
        );
        assert_eq!(
            element(&f, NO_ENDPOINT_NODEPORTS, "tcp . 30080").as_deref(),
            Some("drop")
        );
        assert_eq!(
            element(&f, NO_ENDPOINT_SERVICES, "192.0.2.7 . tcp . 80").as_deref(),
            Some("drop")
        );
        // Local policy with a local endpoint among remote ones: its own keys, no masquerade.
        let mixed = web_slice(&[
            ("10.42.0.5", "n1", true, true, false),
            ("10.42.1.5", "n2", true, true, false),
        ]);
        let f = fragment(
            &service_ports(&local, [&mixed], &node())[0],
            &config(),
            &mut Blocks::default(),
        );
        assert_eq!(
            element(&f, NODEPORT_MARKS, "tcp . 30080").as_deref(),
            Some("8192")
        );
        assert_eq!(backends(&f).len(), 3);
    }

    #[test]
    fn affinity_sets_per_endpoint() {
        let mut svc = web();
        svc.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
        let s = web_slice(&[
            ("10.42.0.5", "n1", true, true, false),
            ("10.42.0.6", "n1", true, true, false),
        ]);
        let f = fragment(
            &service_ports(&svc, [&s], &node())[0],
            &config(),
            &mut Blocks::default(),
        );
        let key = "default/web/tcp/http";
        let ep = |ip: &str| Endpoint {
            ip: ip.parse().unwrap(),
            port: 8080,
        };
        let (a, b) = (ep("10.42.0.5"), ep("10.42.0.6"));
        assert_eq!(
            f.sets[&affinity_set(key, &a)],
            SetKind::Affinity {
                timeout_secs: 10_800
            }
        );
        assert_eq!(
            texts(&f.chains[&service_chain(key)]),
            vec![
                "iifname \"shoal0\" ct mark set ct mark or 0x40000000".to_string(),
                "ip saddr != 10.42.0.0/16 ct mark set ct mark or 0x80000000".to_string(),
                format!(
                    "ip saddr @{} goto {}",
                    affinity_set(key, &a),
                    endpoint_chain(key, &a)
                ),
                format!(
                    "ip saddr @{} goto {}",
                    affinity_set(key, &b),
                    endpoint_chain(key, &b)
                ),
                format!("numgen random mod 2 0 goto {}", endpoint_chain(key, &a)),
                format!("goto {}", endpoint_chain(key, &b)),
            ]
        );
        assert_eq!(
            texts(&f.chains[&endpoint_chain(key, &a)]),
            vec![
                format!("update @{} {{ ip saddr }}", affinity_set(key, &a)),
                "meta l4proto tcp dnat to 10.42.0.5:8080".to_string()
            ]
        );
        assert!(backends(&f).is_empty());
    }

    #[test]
    fn incremental_touches_only_what_changed() {
        let before = two_ready();
        let s = web_slice(&[
            ("10.42.0.5", "n1", true, true, false),
            ("10.42.0.6", "n1", false, false, false),
        ]);
        let after = service_ports(&web(), [&s], &node());
        let mut blocks = Blocks::default();
        let _ = full(&config(), &before, &mut blocks);
        let script = incremental(
            &config(),
            &[Change {
                old: &before,
                new: &after,
            }],
            &mut blocks,
        )
        .to_string();
        let lines: Vec<&str> = script.lines().collect();
        // Down to one endpoint: the list's keys and mark go, the address goes direct.
        assert_eq!(
            lines,
            vec![
                "delete element ip shoal-proxy backends { 4096 . 0, 4096 . 1 }",
                "delete element ip shoal-proxy service-marks { 10.43.0.20 . tcp . 80 }",
                "delete element ip shoal-proxy services { 10.43.0.20 . tcp . 80 }",
                "add element ip shoal-proxy service-endpoints { 10.43.0.20 . tcp . 80 : 10.42.0.5 . 8080 }",
                "add element ip shoal-proxy services { 10.43.0.20 . tcp . 80 : goto direct-internal }",
            ]
        );
        assert_eq!(
            blocks.of(Family::V4).get("other"),
            Some(1),
            "the block was freed"
        );
        // And back to two: a block again (the one `other` took is not its old one).
        let script = incremental(
            &config(),
            &[Change {
                old: &after,
                new: &before,
            }],
            &mut blocks,
        )
        .to_string();
        // (pick-internal-2 is still there.)
        assert!(script.starts_with("delete element ip shoal-proxy service-endpoints { 10.43.0.20 . tcp . 80 }\ndelete element ip shoal-proxy services { 10.43.0.20 . tcp . 80 }\n"), "{script}");
        assert!(script.ends_with("add element ip shoal-proxy backends { 8192 . 0 : 10.42.0.5 . 8080, 8192 . 1 : 10.42.0.6 . 8080 }\nadd element ip shoal-proxy service-marks { 10.43.0.20 . tcp . 80 : 8192 }\nadd element ip shoal-proxy services { 10.43.0.20 . tcp . 80 : goto pick-internal-2 }\n"), "{script}");
        assert!(incremental(
            &config(),
            &[Change {
                old: &after,
                new: &after
            }],
            &mut blocks,
        )
        .is_empty());
    }

    #[test]
    fn incremental_swaps_reject_for_service_and_frees_blocks() {
        let empty = service_ports(&web(), [], &node());
        let ready = two_ready();
        let mut blocks = Blocks::default();
        let _ = full(&config(), &empty, &mut blocks);
        let script = incremental(
            &config(),
            &[Change {
                old: &empty,
                new: &ready,
            }],
            &mut blocks,
        )
        .to_string();
        let first_rule = script.find("add rule").unwrap();
        let delete = script
            .find("delete element ip shoal-proxy no-endpoint-services { 10.43.0.20 . tcp . 80 }")
            .unwrap();
        let add = script
            .find("add element ip shoal-proxy services { 10.43.0.20 . tcp . 80 : goto pick-internal-2 }")
            .unwrap();
        assert!(delete < first_rule && first_rule < add, "{script}");
        assert!(script.contains("add element ip shoal-proxy backends { 4096 . 0 : 10.42.0.5 . 8080, 4096 . 1 : 10.42.0.6 . 8080 }"), "{script}");
        let back = incremental(
            &config(),
            &[Change {
                old: &ready,
                new: &empty,
            }],
            &mut blocks,
        )
        .to_string();
        assert!(back.contains("delete element ip shoal-proxy backends { 4096 . 0, 4096 . 1 }"));
        assert!(back.contains("delete element ip shoal-proxy services {"));
        assert!(back.contains(
            "add element ip shoal-proxy no-endpoint-services { 10.43.0.20 . tcp . 80 : goto reject-chain }"
        ));
        assert!(!back.contains("chain ip"), "pick chains stay: {back}");
        assert_eq!(
            blocks.of(Family::V4).get("other"),
            Some(1),
            "the block was freed"
        );
    }

    #[test]
    fn full_script_shape() {
        let ports = two_ready();
        let script = full(&config(), &ports, &mut Blocks::default()).to_string();
        assert!(script.starts_with(
            "add table ip shoal-proxy\ndelete table ip shoal-proxy\nadd table ip shoal-proxy\n"
        ));
        assert!(script.contains(
            "add rule ip shoal-proxy masquerading ct mark and 0x40000000 != 0 oifname \"shoal0\" masquerade fully-random"
        ));
        // Chains exist before any rule jumps to them; elements come after both.
        let last_chain = script.rfind("add chain ip shoal-proxy pick-").unwrap();
        let first_rule = script.find("add rule ip shoal-proxy pick-").unwrap();
        let element = script.find("add element").unwrap();
        assert!(last_chain < first_rule && first_rule < element);
    }

    #[test]
    fn hairpin_only_masquerade_with_br_netfilter() {
        let config = TableConfig {
            bridge_calls_iptables: true,
            ..config()
        };
        let web_ports = two_ready();
        let mut other = web();
        other.metadata.name = Some("other".into());
        let spec = other.spec.as_mut().unwrap();
        spec.cluster_ip = Some("10.43.0.21".into());
        spec.cluster_ips = None;
        let s = web_slice(&[("10.42.0.5", "n1", true, true, false)]);
        let other_ports = service_ports(&other, [&s], &node());
        let mut blocks = Blocks::default();
        let script = full(&config, web_ports.iter().chain(&other_ports), &mut blocks).to_string();
        assert!(script.contains(
            "add rule ip shoal-proxy masquerading ct status dnat ip saddr . ip daddr @hairpin masquerade fully-random"
        ), "{script}");
        assert!(
            !script.contains("ip shoal-proxy pick-internal-2 iifname")
                && !script.contains("ip shoal-proxy direct-internal iifname"),
            "no bridge mark needed: {script}"
        );
        assert!(
            script.contains("add rule ip6 shoal-proxy direct-internal iifname \"shoal0\""),
            "{script}"
        );
        assert!(
            !script.contains("ip shoal-proxy masquerading ct mark and 0x40000000 != 0 oifname"),
            "{script}"
        );
        assert!(script.contains(
            "add element ip shoal-proxy hairpin { 10.42.0.5 . 10.42.0.5, 10.42.0.6 . 10.42.0.6 }"
        ), "each address once, though two Services name 10.42.0.5: {script}");
        assert!(
            script.contains("add rule ip6 shoal-proxy masquerading ct mark and 0x40000000 != 0 oifname \"shoal0\" masquerade"),
            "IPv6 still masquerades same-bridge traffic: {script}"
        );

        // `other` goes: 10.42.0.5 stays, web still names it.
        let gone = incremental(
            &config,
            &[Change {
                old: &other_ports,
                new: &[],
            }],
            &mut blocks,
        )
        .to_string();
        assert!(!gone.contains("hairpin"), "{gone}");
        // web goes too, and `other` comes back in the same transaction: 10.42.0.6's element
        // goes, 10.42.0.5's stays (dropped and held again).
        let swap = incremental(
            &config,
            &[
                Change {
                    old: &web_ports,
                    new: &[],
                },
                Change {
                    old: &[],
                    new: &other_ports,
                },
            ],
            &mut blocks,
        )
        .to_string();
        assert!(swap.contains("delete element ip shoal-proxy hairpin { 10.42.0.5 . 10.42.0.5, 10.42.0.6 . 10.42.0.6 }") && swap.contains("add element ip shoal-proxy hairpin { 10.42.0.5 . 10.42.0.5 }"), "{swap}");
        // Held by a change, dropped by a later one of the same transaction: neither added
        // nor deleted.
        let mut third = other.clone();
        third.metadata.name = Some("third".into());
        third.spec.as_mut().unwrap().cluster_ip = Some("10.43.0.22".into());
        let s7 = web_slice(&[("10.42.0.7", "n1", true, true, false)]);
        let third_ports = service_ports(&third, [&s7], &node());
        let mut third_gone = third_ports.clone();
        third_gone[0].local_ips.clear();
        let noop = incremental(
            &config,
            &[
                Change {
                    old: &[],
                    new: &third_ports,
                },
                Change {
                    old: &third_ports,
                    new: &third_gone,
                },
            ],
            &mut blocks,
        )
        .to_string();
        assert!(!noop.contains("hairpin"), "{noop}");
    }

    /// The scripts are accepted by nft itself (check mode: nothing is applied).
    #[test]
    fn nft_accepts_scripts() {
        crate::proxy::nft::tests::assert_root();
        let nft = crate::proxy::nft::Nft::default();
        let ready = two_ready();
        let mut lb = web();
        lb.metadata.name = Some("lb".into());
        let spec = lb.spec.as_mut().unwrap();
        spec.cluster_ip = Some("10.43.0.21".into());
        spec.cluster_ips = None;
        spec.session_affinity = Some("ClientIP".into());
        spec.type_ = Some("LoadBalancer".into());
        spec.ports.as_mut().unwrap()[0].node_port = Some(30080);
        let s = web_slice(&[("10.42.0.5", "n1", true, true, false)]);
        let lb = service_ports(&lb, [&s], &node());
        let mut udp = web();
        udp.metadata.name = Some("dns".into());
        let spec = udp.spec.as_mut().unwrap();
        spec.cluster_ip = Some("10.43.0.22".into());
        spec.cluster_ips = None;
        spec.type_ = Some("NodePort".into());
        spec.external_traffic_policy = Some("Local".into());
        let port = &mut spec.ports.as_mut().unwrap()[0];
        port.protocol = Some("UDP".into());
        port.node_port = Some(30053);
        let udp_slice: EndpointSliceFixture = crate::proxy::model::tests::slice(json!({
            "metadata": {"namespace": "default", "name": "dns-x"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.0.9"], "nodeName": "n1"},
                          {"addresses": ["10.42.1.9"], "nodeName": "n2"}],
            "ports": [{"name": "http", "port": 53, "protocol": "UDP"}]
        }));
        let udp = service_ports(&udp, [&udp_slice], &node());
        let empty = service_ports(&web(), [], &node());
        let mut blocks = Blocks::default();
        let script = full(&config(), ready.iter().chain(&lb).chain(&udp), &mut blocks);
        nft.check(&script.to_string()).unwrap();
        let update = incremental(
            &config(),
            &[Change {
                old: &ready,
                new: &empty,
            }],
            &mut blocks,
        );
        nft.check(&format!("{script}{update}")).unwrap();
    }

    type EndpointSliceFixture = k8s_openapi::api::discovery::v1::EndpointSlice;
}
