//! The model as nftables scripts, with no IO: [`full`] writes the whole table (one
//! transaction that deletes and recreates it, so whatever an earlier run left is gone), and
//! [`incremental`] writes only what changed between two states of some Services.
//!
//! The table follows kube-proxy's nftables mode (`pkg/proxy/nftables/proxier.go`) where the
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
//! - masquerade: ClusterIP traffic from outside the pod network (in `pick-internal-N`) and
//!   external traffic under `externalTrafficPolicy: Cluster` (its mark carries the bit) set
//!   the masquerade bit of the connection mark; `masquerading` in nat `postrouting`
//!   masquerades those, and connections DNATed from the pod bridge back onto it (replies
//!   between two pods on one bridge are bridged, never routed, so without this they would
//!   skip conntrack's reverse NAT unless `br_netfilter` is on; this also covers hairpin).
//! - ClientIP affinity (rare, so sets are affordable): kube-proxy's scheme — a chain per port,
//!   one timeout set and one chain per endpoint, the set refreshed by the chain and checked
//!   before a random pick (`numgen random mod N-k 0` rules, uniform).
//! - `no-endpoint-services` / `no-endpoint-nodeports`: addresses of ports without endpoints,
//!   looked up for new connections in filter hooks that run before NAT: `reject` (TCP reset,
//!   ICMP port unreachable otherwise), or `drop` when a Local policy finds no endpoint here
//!   while other nodes have some.
//!
//! Every Service port renders to a [`Fragment`] (its elements, key blocks, the pick chains it
//! uses, its affinity chains and sets); the incremental script is the difference of two
//! fragments, in an order the kernel accepts in one transaction (elements go before the
//! chains they jump to disappear; chains are flushed before sets their rules name are
//! deleted).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::model::{Endpoint, ServicePort};

/// The connection mark bit that asks `masquerading` to masquerade.
pub const MASQUERADE_BIT: u32 = 0x8000_0000;
/// The connection mark bit saying the connection came from the pod bridge: it is
/// masqueraded if it goes back onto it.
pub const FROM_BRIDGE_BIT: u32 = 0x4000_0000;
/// The bits of the connection mark that name an endpoint list.
const BLOCK_MASK: u32 = FROM_BRIDGE_BIT - 1;

/// The verdict maps of the table.
const SERVICES: &str = "services";
const NODEPORTS: &str = "service-nodeports";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
/// Service address → the connection mark naming its endpoint list (and masquerade).
const SERVICE_MARKS: &str = "service-marks";
const NODEPORT_MARKS: &str = "nodeport-marks";
/// Connection mark (the list's block) . endpoint index → endpoint address and port.
const BACKENDS: &str = "backends";

/// How the table is named and what it needs to know about the cluster network.
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// The table's name (family `ip`).
    pub table: String,
    /// The pod network: ClusterIP traffic from outside it is masqueraded (kube-proxy's
    /// `--cluster-cidr`). `None`: only hairpin and external traffic are.
    pub cluster_cidr: Option<(Ipv4Addr, u8)>,
    /// The pod bridge: connections DNATed from it back onto it are masqueraded.
    pub pod_bridge: Option<String>,
}

impl TableConfig {
    pub fn new(table: impl Into<String>) -> Self {
        TableConfig {
            table: table.into(),
            cluster_cidr: None,
            pod_bridge: None,
        }
    }
}

/// The nft objects one Service port owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    /// Chain name → its rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Set name → its declaration body.
    pub sets: BTreeMap<String, String>,
    /// (map, key) → value.
    pub elements: BTreeMap<(&'static str, String), String>,
    /// The [`Blocks`] its endpoint lists hold.
    pub blocks: BTreeSet<String>,
    /// The shared pick chains it goes to: (external, endpoint count).
    pub picks: BTreeSet<(bool, usize)>,
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
    let id = format!("{key}__{}/{}", ep.ip, ep.port);
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

/// The `backends` map's key ranges handed to endpoint lists: list `name` owns the keys
/// `block << 12 ..` for as long as it exists, so an incremental change rewrites only its own
/// elements. Deterministic: the lowest free block first.
#[derive(Debug, Clone, Default)]
pub struct Blocks {
    by_name: BTreeMap<String, u32>,
    free: BTreeSet<u32>,
    next: u32,
    /// The shared pick chains the table has (created as needed, removed by a full sync).
    picks: BTreeSet<(bool, usize)>,
}

impl Blocks {
    fn get(&mut self, name: &str) -> Option<u32> {
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

    /// Forgets every block (before a full sync).
    pub fn clear(&mut self) {
        *self = Blocks::default();
    }
}

/// Where a port without usable endpoints sends new connections.
fn no_endpoint_verdict(port: &ServicePort) -> &'static str {
    if port.any_endpoints {
        "drop"
    } else {
        "goto reject-chain"
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
    verdict: String,
    /// The connection mark to set first (`service-marks` / `nodeport-marks`), if any.
    mark: Option<u32>,
}

/// Marks connections from the pod bridge. A pod reaching a pod on the same bridge through a
/// Service (itself included) must be masqueraded, or the reply would be bridged straight back
/// and never un-NATed: when routed, it would skip the IP hooks entirely; with `br_netfilter`,
/// a packet DNATed back onto its bridge is bridged, and postrouting then has no input device
/// to match — so the input is noted in the connection mark at DNAT time.
fn from_bridge(config: &TableConfig) -> Vec<String> {
    config
        .pod_bridge
        .iter()
        .map(|bridge| format!("iifname \"{bridge}\" ct mark set ct mark or {FROM_BRIDGE_BIT:#x}"))
        .collect()
}

fn pick_chain(external: bool, n: usize) -> String {
    let kind = if external { "external" } else { "internal" };
    format!("pick-{kind}-{n}")
}

/// The rules of a shared pick chain: a random key of the connection's block in `backends`.
/// ClusterIP traffic from outside the pod network is marked for masquerade here.
fn pick_rules(config: &TableConfig, external: bool, n: usize) -> Vec<String> {
    let mut rules = from_bridge(config);
    if let (false, Some((net, prefix))) = (external, config.cluster_cidr) {
        rules.push(format!(
            "ip saddr != {net}/{prefix} ct mark set ct mark or {MASQUERADE_BIT:#x}"
        ));
    }
    // One rule per protocol: a map typed by `tcp dport` cannot be bound behind an anonymous
    // protocol set (nft reports conflicting protocols).
    for proto in ["tcp", "udp", "sctp"] {
        rules.push(format!(
            "meta l4proto {proto} dnat ip to ct mark and {BLOCK_MASK:#x} . numgen random mod {n} map @{BACKENDS}"
        ));
    }
    rules
}

/// How new connections reach one of `list`'s endpoints. Without affinity: the list's block
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
    let endpoints = &list.endpoints[..list.endpoints.len().min(MAX_ENDPOINTS)];
    let masquerade = format!("ct mark set ct mark or {MASQUERADE_BIT:#x}");
    let Some(seconds) = port.affinity_seconds else {
        let Some(block) = blocks.get(list.block_name) else {
            // Out of blocks (half a million endpoint lists): unreachable rather than wrong.
            return Target {
                verdict: "goto reject-chain".into(),
                mark: None,
            };
        };
        f.blocks.insert(list.block_name.to_string());
        f.picks.insert((list.external, endpoints.len()));
        let base = block << INDEX_BITS;
        for (i, ep) in endpoints.iter().enumerate() {
            f.elements.insert(
                (BACKENDS, format!("{base} . {i}")),
                format!("{} . {}", ep.ip, ep.port),
            );
        }
        return Target {
            verdict: format!("goto {}", pick_chain(list.external, endpoints.len())),
            mark: Some(if list.masquerade {
                base | MASQUERADE_BIT
            } else {
                base
            }),
        };
    };
    let mut rules = from_bridge(config);
    if list.masquerade {
        rules.push(masquerade);
    } else if let (false, Some((net, prefix))) = (list.external, config.cluster_cidr) {
        rules.push(format!("ip saddr != {net}/{prefix} {masquerade}"));
    }
    for ep in endpoints {
        rules.push(format!(
            "ip saddr @{} goto {}",
            affinity_set(key, ep),
            endpoint_chain(key, ep)
        ));
    }
    for (k, ep) in endpoints.iter().enumerate() {
        let left = endpoints.len() - k;
        let chance = if left > 1 {
            format!("numgen random mod {left} 0 ")
        } else {
            String::new()
        };
        rules.push(format!("{chance}goto {}", endpoint_chain(key, ep)));
    }
    for ep in endpoints {
        let set = affinity_set(key, ep);
        f.sets.insert(
            set.clone(),
            format!("type ipv4_addr ; flags dynamic,timeout ; timeout {seconds}s ;"),
        );
        f.chains.insert(
            endpoint_chain(key, ep),
            vec![
                format!("update @{set} {{ ip saddr }}"),
                format!(
                    "meta l4proto {} dnat to {}:{}",
                    port.protocol.nft(),
                    ep.ip,
                    ep.port
                ),
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
        verdict: format!("goto {chain}"),
        mark: None,
    }
}

/// The objects `port` needs; endpoint lists get their `backends` keys from `blocks`.
pub fn fragment(port: &ServicePort, config: &TableConfig, blocks: &mut Blocks) -> Fragment {
    let key = port.key();
    let proto = port.protocol.nft();
    let mut f = Fragment::default();
    let address = |ip: &Ipv4Addr| format!("{ip} . {proto} . {}", port.port);
    if port.internal.is_empty() {
        for ip in &port.cluster_ips {
            f.elements.insert(
                (NO_ENDPOINT_SERVICES, address(ip)),
                no_endpoint_verdict(port).to_string(),
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
            f.elements
                .insert((SERVICES, address(ip)), target.verdict.clone());
            if let Some(mark) = target.mark {
                f.elements
                    .insert((SERVICE_MARKS, address(ip)), mark.to_string());
            }
        }
    }
    if !port.has_external() {
        return f;
    }
    let node_port = port.node_port.map(|p| format!("{proto} . {p}"));
    if port.external.is_empty() {
        let verdict = no_endpoint_verdict(port).to_string();
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
        f.elements
            .insert((SERVICES, address(ip)), target.verdict.clone());
        if let Some(mark) = target.mark {
            f.elements
                .insert((SERVICE_MARKS, address(ip)), mark.to_string());
        }
    }
    if let Some(node_port) = node_port {
        if let Some(mark) = target.mark {
            f.elements
                .insert((NODEPORT_MARKS, node_port.clone()), mark.to_string());
        }
        f.elements.insert((NODEPORTS, node_port), target.verdict);
    }
    f
}

/// The fixed part of the table: hooks, helper chains and the (empty) maps.
fn base(config: &TableConfig, out: &mut String) {
    let t = format!("ip {}", config.table);
    let _ = writeln!(out, "add chain {t} masquerading");
    if let Some(bridge) = &config.pod_bridge {
        let _ = writeln!(
            out,
            "add rule {t} masquerading ct mark and {FROM_BRIDGE_BIT:#x} != 0 oifname \"{bridge}\" masquerade fully-random"
        );
    }
    let _ = writeln!(
        out,
        "add rule {t} masquerading ct mark and {MASQUERADE_BIT:#x} != 0 masquerade fully-random"
    );
    let _ = writeln!(
        out,
        "add map {t} {BACKENDS} {{ typeof ct mark . numgen random mod 1 : ip daddr . tcp dport ; }}"
    );
    let _ = writeln!(
        out,
        "add map {t} {SERVICE_MARKS} {{ type ipv4_addr . inet_proto . inet_service : mark ; }}"
    );
    let _ = writeln!(
        out,
        "add map {t} {NODEPORT_MARKS} {{ type inet_proto . inet_service : mark ; }}"
    );
    for map in [SERVICES, NO_ENDPOINT_SERVICES] {
        let _ = writeln!(
            out,
            "add map {t} {map} {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}"
        );
    }
    for map in [NODEPORTS, NO_ENDPOINT_NODEPORTS] {
        let _ = writeln!(
            out,
            "add map {t} {map} {{ type inet_proto . inet_service : verdict ; }}"
        );
    }
    let local = "fib daddr type local ip daddr != 127.0.0.0/8";
    // The mark first (a miss leaves it alone), then the verdict.
    let _ = writeln!(out, "add chain {t} services");
    let _ = writeln!(
        out,
        "add rule {t} services ct mark set ip daddr . meta l4proto . th dport map @{SERVICE_MARKS}"
    );
    let _ = writeln!(
        out,
        "add rule {t} services ip daddr . meta l4proto . th dport vmap @{SERVICES}"
    );
    let _ = writeln!(
        out,
        "add rule {t} services {local} ct mark set meta l4proto . th dport map @{NODEPORT_MARKS}"
    );
    let _ = writeln!(
        out,
        "add rule {t} services {local} meta l4proto . th dport vmap @{NODEPORTS}"
    );
    let _ = writeln!(out, "add chain {t} reject-chain");
    let _ = writeln!(
        out,
        "add rule {t} reject-chain meta l4proto tcp reject with tcp reset"
    );
    let _ = writeln!(out, "add rule {t} reject-chain reject");
    let _ = writeln!(out, "add chain {t} endpoints-check");
    let _ = writeln!(
        out,
        "add rule {t} endpoints-check ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"
    );
    let _ = writeln!(
        out,
        "add rule {t} endpoints-check {local} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"
    );
    // Filter hooks run before NAT (-110 < -100), so they see the address the client used.
    for hook in ["input", "forward", "output"] {
        let _ = writeln!(
            out,
            "add chain {t} filter-{hook} {{ type filter hook {hook} priority -110 ; }}"
        );
        let _ = writeln!(
            out,
            "add rule {t} filter-{hook} ct state new jump endpoints-check"
        );
    }
    for hook in ["prerouting", "output"] {
        let _ = writeln!(
            out,
            "add chain {t} nat-{hook} {{ type nat hook {hook} priority -100 ; }}"
        );
        let _ = writeln!(out, "add rule {t} nat-{hook} jump services");
    }
    let _ = writeln!(
        out,
        "add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}"
    );
    let _ = writeln!(out, "add rule {t} nat-postrouting jump masquerading");
}

/// A script being built in the phases one transaction needs.
#[derive(Debug, Default)]
struct Phases {
    create: String,
    delete_elements: BTreeMap<&'static str, Vec<String>>,
    flush: String,
    delete_sets: String,
    create_sets: String,
    rules: String,
    add_elements: BTreeMap<&'static str, Vec<String>>,
    delete_chains: String,
}

impl Phases {
    fn finish(self, table: &str) -> String {
        let mut out = self.create;
        elements(&mut out, "delete", table, &self.delete_elements);
        out.push_str(&self.flush);
        out.push_str(&self.delete_sets);
        out.push_str(&self.create_sets);
        out.push_str(&self.rules);
        elements(&mut out, "add", table, &self.add_elements);
        out.push_str(&self.delete_chains);
        out
    }
}

/// `add element` / `delete element` lines, many elements to a command.
fn elements(out: &mut String, verb: &str, table: &str, by_map: &BTreeMap<&str, Vec<String>>) {
    for (map, items) in by_map {
        for chunk in items.chunks(1000) {
            let _ = writeln!(
                out,
                "{verb} element ip {table} {map} {{ {} }}",
                chunk.join(", ")
            );
        }
    }
}

fn add_rules(out: &mut String, table: &str, chain: &str, rules: &[String]) {
    for rule in rules {
        let _ = writeln!(out, "add rule ip {table} {chain} {rule}");
    }
}

/// The whole table for `ports`: one transaction replacing whatever table of that name exists.
/// `blocks` starts afresh.
pub fn full<'a>(
    config: &TableConfig,
    ports: impl IntoIterator<Item = &'a ServicePort>,
    blocks: &mut Blocks,
) -> String {
    blocks.clear();
    let t = &config.table;
    // `add` first so that `delete` cannot fail on a table that does not exist yet.
    let mut out = format!("add table ip {t}\ndelete table ip {t}\nadd table ip {t}\n");
    base(config, &mut out);
    let mut phases = Phases::default();
    for port in ports {
        let f = fragment(port, config, blocks);
        add_picks(&f, config, blocks, &mut phases);
        add_fragment(&f, t, &mut phases);
    }
    out.push_str(&phases.finish(t));
    out
}

/// Creates the pick chains `f` needs that the table does not have yet.
fn add_picks(f: &Fragment, config: &TableConfig, blocks: &mut Blocks, phases: &mut Phases) {
    for &(external, n) in &f.picks {
        if blocks.picks.insert((external, n)) {
            let chain = pick_chain(external, n);
            let _ = writeln!(phases.create, "add chain ip {} {chain}", config.table);
            add_rules(
                &mut phases.rules,
                &config.table,
                &chain,
                &pick_rules(config, external, n),
            );
        }
    }
}

fn add_fragment(f: &Fragment, table: &str, phases: &mut Phases) {
    for (name, body) in &f.sets {
        let _ = writeln!(phases.create, "add set ip {table} {name} {{ {body} }}");
    }
    for (name, rules) in &f.chains {
        let _ = writeln!(phases.create, "add chain ip {table} {name}");
        add_rules(&mut phases.rules, table, name, rules);
    }
    for ((map, key), verdict) in &f.elements {
        phases
            .add_elements
            .entry(map)
            .or_default()
            .push(format!("{key} : {verdict}"));
    }
}

/// One Service port's change: its objects before and after.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub old: &'a [ServicePort],
    pub new: &'a [ServicePort],
}

/// The script taking the table from the old to the new state of the changed Services (all of
/// them in one transaction), with `blocks` as the table's current ones. Empty when nothing
/// differs.
pub fn incremental(config: &TableConfig, changes: &[Change<'_>], blocks: &mut Blocks) -> String {
    let t = &config.table;
    let mut phases = Phases::default();
    for change in changes {
        let old = merge(change.old.iter().map(|p| fragment(p, config, blocks)));
        let new = merge(change.new.iter().map(|p| fragment(p, config, blocks)));
        for gone in old.blocks.difference(&new.blocks) {
            blocks.release(gone);
        }
        add_picks(&new, config, blocks, &mut phases);
        diff(&old, &new, t, &mut phases);
    }
    phases.finish(t)
}

fn merge(fragments: impl Iterator<Item = Fragment>) -> Fragment {
    let mut all = Fragment::default();
    for f in fragments {
        all.chains.extend(f.chains);
        all.sets.extend(f.sets);
        all.elements.extend(f.elements);
        all.blocks.extend(f.blocks);
        all.picks.extend(f.picks);
    }
    all
}

fn diff(old: &Fragment, new: &Fragment, table: &str, phases: &mut Phases) {
    // A set whose declaration changed is deleted and recreated, which needs every rule
    // naming it gone first: then every chain is rewritten.
    let sets_changed = old
        .sets
        .iter()
        .any(|(name, body)| new.sets.get(name).is_some_and(|b| b != body));
    for (name, body) in &new.sets {
        match old.sets.get(name) {
            None => {
                let _ = writeln!(phases.create, "add set ip {table} {name} {{ {body} }}");
            }
            Some(before) if before != body => {
                let _ = writeln!(phases.delete_sets, "delete set ip {table} {name}");
                let _ = writeln!(phases.create_sets, "add set ip {table} {name} {{ {body} }}");
            }
            Some(_) => {}
        }
    }
    for name in old.sets.keys().filter(|n| !new.sets.contains_key(*n)) {
        let _ = writeln!(phases.delete_sets, "delete set ip {table} {name}");
    }
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            None => {
                let _ = writeln!(phases.create, "add chain ip {table} {name}");
                add_rules(&mut phases.rules, table, name, rules);
            }
            Some(before) if sets_changed || before != rules => {
                let _ = writeln!(phases.flush, "flush chain ip {table} {name}");
                add_rules(&mut phases.rules, table, name, rules);
            }
            Some(_) => {}
        }
    }
    for name in old.chains.keys().filter(|n| !new.chains.contains_key(*n)) {
        let _ = writeln!(phases.flush, "flush chain ip {table} {name}");
        let _ = writeln!(phases.delete_chains, "delete chain ip {table} {name}");
    }
    for ((map, key), verdict) in &old.elements {
        if new.elements.get(&(*map, key.clone())) != Some(verdict) {
            phases
                .delete_elements
                .entry(map)
                .or_default()
                .push(key.clone());
        }
    }
    for ((map, key), verdict) in &new.elements {
        if old.elements.get(&(*map, key.clone())) != Some(verdict) {
            phases
                .add_elements
                .entry(map)
                .or_default()
                .push(format!("{key} : {verdict}"));
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
            table: "shoal-proxy".into(),
            cluster_cidr: Some(("10.42.0.0".parse().unwrap(), 16)),
            pod_bridge: Some("shoal0".into()),
        }
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
            .map(|((_, k), v)| (k.clone(), v.clone()))
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
        let address = "10.43.0.20 . tcp . 80".to_string();
        assert_eq!(
            f.elements.get(&(SERVICES, address.clone())),
            Some(&"goto pick-internal-2".to_string())
        );
        assert_eq!(
            f.elements.get(&(SERVICE_MARKS, address)),
            Some(&"4096".to_string())
        );
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
            pick_rules(&config(), false, 2)[..3],
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
    fn blocks_are_stable_and_reused() {
        let mut blocks = Blocks::default();
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
        assert_eq!(
            f.elements,
            [(
                (NO_ENDPOINT_SERVICES, "10.43.0.20 . tcp . 80".to_string()),
                "goto reject-chain".to_string()
            )]
            .into()
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
            f.elements.get(&(NODEPORTS, "tcp . 30080".to_string())),
            Some(&"goto pick-external-1".to_string())
        );
        assert_eq!(
            f.elements.get(&(NODEPORT_MARKS, "tcp . 30080".to_string())),
            Some(&masq_mark)
        );
        assert_eq!(
            f.elements
                .get(&(SERVICES, "192.0.2.7 . tcp . 80".to_string())),
            Some(&"goto pick-external-1".to_string())
        );
        assert_eq!(
            f.elements
                .get(&(SERVICE_MARKS, "192.0.2.7 . tcp . 80".to_string())),
            Some(&masq_mark)
        );
        // Same endpoints as the ClusterIP: same keys.
        assert_eq!(backends(&f).len(), 1);
        assert_eq!(f.picks, [(false, 1), (true, 1)].into());
        assert_eq!(pick_rules(&config(), true, 1).len(), 4, "no source check");

        // Local policy with no endpoint here: dropped, not rejected.
        let mut local = svc.clone();
        local.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let f = fragment(
            &service_ports(&local, [&s], &node())[0],
            &config(),
            &mut Blocks::default(),
        );
        assert_eq!(
            f.elements
                .get(&(NO_ENDPOINT_NODEPORTS, "tcp . 30080".to_string())),
            Some(&"drop".to_string())
        );
        assert_eq!(
            f.elements
                .get(&(NO_ENDPOINT_SERVICES, "192.0.2.7 . tcp . 80".to_string())),
            Some(&"drop".to_string())
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
            f.elements.get(&(NODEPORT_MARKS, "tcp . 30080".to_string())),
            Some(&"8192".to_string())
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
            "type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ;"
        );
        assert_eq!(
            f.chains[&service_chain(key)],
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
            f.chains[&endpoint_chain(key, &a)],
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
        );
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(
            lines,
            vec![
                "add chain ip shoal-proxy pick-internal-1",
                "delete element ip shoal-proxy backends { 4096 . 1 }",
                "delete element ip shoal-proxy services { 10.43.0.20 . tcp . 80 }",
                "add rule ip shoal-proxy pick-internal-1 iifname \"shoal0\" ct mark set ct mark or 0x40000000",
                "add rule ip shoal-proxy pick-internal-1 ip saddr != 10.42.0.0/16 ct mark set ct mark or 0x80000000",
                "add rule ip shoal-proxy pick-internal-1 meta l4proto tcp dnat ip to ct mark and 0x3fffffff . numgen random mod 1 map @backends",
                "add rule ip shoal-proxy pick-internal-1 meta l4proto udp dnat ip to ct mark and 0x3fffffff . numgen random mod 1 map @backends",
                "add rule ip shoal-proxy pick-internal-1 meta l4proto sctp dnat ip to ct mark and 0x3fffffff . numgen random mod 1 map @backends",
                "add element ip shoal-proxy services { 10.43.0.20 . tcp . 80 : goto pick-internal-1 }",
            ]
        );
        assert_eq!(
            incremental(
                &config(),
                &[Change {
                    old: &after,
                    new: &after
                }],
                &mut blocks,
            ),
            ""
        );
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
        );
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
        );
        assert!(back.contains("delete element ip shoal-proxy backends { 4096 . 0, 4096 . 1 }"));
        assert!(back.contains("delete element ip shoal-proxy services {"));
        assert!(back.contains(
            "add element ip shoal-proxy no-endpoint-services { 10.43.0.20 . tcp . 80 : goto reject-chain }"
        ));
        assert!(!back.contains("chain ip"), "pick chains stay: {back}");
        assert_eq!(blocks.get("other"), Some(1), "the block was freed");
    }

    #[test]
    fn full_script_shape() {
        let ports = two_ready();
        let script = full(&config(), &ports, &mut Blocks::default());
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
        nft.check(&script).unwrap();
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
