//! The model as nftables scripts, with no IO: [`full`] writes the whole table (one
//! transaction that deletes and recreates it, so whatever an earlier run left is gone), and
//! [`incremental`] writes only what changed between two states of some Services.
//!
//! The table follows kube-proxy's nftables mode (`pkg/proxy/nftables/proxier.go`):
//! - `services`: a verdict map `daddr . l4proto . dport` → `goto` a per-port chain, looked up
//!   from the nat `prerouting` and `output` hooks; `service-nodeports` (`l4proto . dport`)
//!   is looked up for addresses of this node (`fib daddr type local`).
//! - a ClusterIP's chain picks an endpoint with `numgen random mod N vmap`; an `external-…`
//!   chain does the same for NodePort and external addresses (and marks for masquerade
//!   unless `externalTrafficPolicy: Local`); each endpoint's chain marks hairpin traffic for
//!   masquerade and DNATs. ClientIP affinity: one timeout set per endpoint, refreshed by its
//!   chain and checked before the random pick.
//! - `no-endpoint-services` / `no-endpoint-nodeports`: addresses of ports without endpoints,
//!   looked up for new connections in filter hooks that run before NAT: `reject` (TCP reset,
//!   ICMP port unreachable otherwise), or `drop` when a Local policy finds no endpoint here
//!   while other nodes have some.
//! - `masquerading` in nat `postrouting`: marked packets, and connections DNATed from the pod
//!   bridge back onto it (replies between two pods on one bridge are bridged, never routed,
//!   so without this they would skip conntrack's reverse NAT unless `br_netfilter` is on).
//!
//! Every Service port renders to a [`Fragment`] (its chains, sets and map elements); the
//! incremental script is the difference of two fragments, in an order the kernel accepts in
//! one transaction (elements go before the chains they jump to disappear; chains are flushed
//! before sets their rules name are deleted).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::model::{Endpoint, ServicePort};

/// The packet mark bit that asks `masquerading` to masquerade (kube-proxy's).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// The verdict maps of the table.
const SERVICES: &str = "services";
const NODEPORTS: &str = "service-nodeports";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";

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
    /// (map, key) → verdict.
    pub elements: BTreeMap<(&'static str, String), String>,
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

/// The rules that pick one of `endpoints` (affinity first, then at random).
fn pick_rules(port: &ServicePort, key: &str, endpoints: &[Endpoint], rules: &mut Vec<String>) {
    if port.affinity_seconds.is_some() {
        for ep in endpoints {
            rules.push(format!(
                "ip saddr @{} goto {}",
                affinity_set(key, ep),
                endpoint_chain(key, ep)
            ));
        }
    }
    let mut vmap = String::new();
    for (i, ep) in endpoints.iter().enumerate() {
        if i > 0 {
            vmap.push_str(", ");
        }
        let _ = write!(vmap, "{i} : goto {}", endpoint_chain(key, ep));
    }
    rules.push(format!(
        "numgen random mod {} vmap {{ {vmap} }}",
        endpoints.len()
    ));
}

/// Where a port without usable endpoints sends new connections.
fn no_endpoint_verdict(port: &ServicePort) -> &'static str {
    if port.any_endpoints {
        "drop"
    } else {
        "goto reject-chain"
    }
}

/// The objects `port` needs.
pub fn fragment(port: &ServicePort, config: &TableConfig) -> Fragment {
    let key = port.key();
    let proto = port.protocol.nft();
    let mut f = Fragment::default();
    let service = service_chain(&key);
    if port.internal.is_empty() {
        for ip in &port.cluster_ips {
            f.elements.insert(
                (
                    NO_ENDPOINT_SERVICES,
                    format!("{ip} . {proto} . {}", port.port),
                ),
                no_endpoint_verdict(port).to_string(),
            );
        }
    } else {
        let mut rules = Vec::new();
        if let Some((net, prefix)) = config.cluster_cidr {
            rules.push(format!(
                "ip saddr != {net}/{prefix} jump mark-for-masquerade"
            ));
        }
        pick_rules(port, &key, &port.internal, &mut rules);
        f.chains.insert(service.clone(), rules);
        for ip in &port.cluster_ips {
            f.elements.insert(
                (SERVICES, format!("{ip} . {proto} . {}", port.port)),
                format!("goto {service}"),
            );
        }
    }
    if port.has_external() {
        let mut verdict = no_endpoint_verdict(port).to_string();
        let (services_map, nodeports_map) = if port.external.is_empty() {
            (NO_ENDPOINT_SERVICES, NO_ENDPOINT_NODEPORTS)
        } else {
            let external = external_chain(&key);
            let mut rules = Vec::new();
            if !port.external_local {
                rules.push("jump mark-for-masquerade".to_string());
            }
            pick_rules(port, &key, &port.external, &mut rules);
            f.chains.insert(external.clone(), rules);
            verdict = format!("goto {external}");
            (SERVICES, NODEPORTS)
        };
        for ip in &port.external_ips {
            f.elements.insert(
                (services_map, format!("{ip} . {proto} . {}", port.port)),
                verdict.clone(),
            );
        }
        if let Some(node_port) = port.node_port {
            f.elements
                .insert((nodeports_map, format!("{proto} . {node_port}")), verdict);
        }
    }
    for ep in port.internal.iter().chain(&port.external) {
        let chain = endpoint_chain(&key, ep);
        if f.chains.contains_key(&chain) {
            continue;
        }
        let mut rules = vec![format!("ip saddr {} jump mark-for-masquerade", ep.ip)];
        if let Some(seconds) = port.affinity_seconds {
            let set = affinity_set(&key, ep);
            rules.push(format!("update @{set} {{ ip saddr }}"));
            f.sets.insert(
                set,
                format!("type ipv4_addr ; flags dynamic,timeout ; timeout {seconds}s ;"),
            );
        }
        rules.push(format!(
            "meta l4proto {proto} dnat to {}:{}",
            ep.ip, ep.port
        ));
        f.chains.insert(chain, rules);
    }
    f
}

/// The fixed part of the table: hooks, helper chains and the (empty) maps.
fn base(config: &TableConfig, out: &mut String) {
    let t = format!("ip {}", config.table);
    let _ = writeln!(out, "add chain {t} mark-for-masquerade");
    let _ = writeln!(
        out,
        "add rule {t} mark-for-masquerade meta mark set meta mark or {MASQUERADE_MARK:#x}"
    );
    let _ = writeln!(out, "add chain {t} masquerading");
    if let Some(bridge) = &config.pod_bridge {
        let _ = writeln!(
            out,
            "add rule {t} masquerading iifname \"{bridge}\" oifname \"{bridge}\" ct status dnat masquerade fully-random"
        );
    }
    let _ = writeln!(
        out,
        "add rule {t} masquerading meta mark and {MASQUERADE_MARK:#x} == 0 return"
    );
    let _ = writeln!(
        out,
        "add rule {t} masquerading meta mark set meta mark xor {MASQUERADE_MARK:#x}"
    );
    let _ = writeln!(out, "add rule {t} masquerading masquerade fully-random");
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
    let _ = writeln!(out, "add chain {t} services");
    let _ = writeln!(
        out,
        "add rule {t} services ip daddr . meta l4proto . th dport vmap @{SERVICES}"
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
pub fn full<'a>(config: &TableConfig, ports: impl IntoIterator<Item = &'a ServicePort>) -> String {
    let t = &config.table;
    // `add` first so that `delete` cannot fail on a table that does not exist yet.
    let mut out = format!("add table ip {t}\ndelete table ip {t}\nadd table ip {t}\n");
    base(config, &mut out);
    let mut phases = Phases::default();
    for port in ports {
        let f = fragment(port, config);
        add_fragment(&f, t, &mut phases);
    }
    out.push_str(&phases.finish(t));
    out
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
/// them in one transaction). Empty when nothing differs.
pub fn incremental(config: &TableConfig, changes: &[Change<'_>]) -> String {
    let t = &config.table;
    let mut phases = Phases::default();
    for change in changes {
        let old = merge(change.old.iter().map(|p| fragment(p, config)));
        let new = merge(change.new.iter().map(|p| fragment(p, config)));
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
    use crate::proxy::model::tests::{node, service, web, web_slice};
    use crate::proxy::model::{service_ports, Protocol};
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

    #[test]
    fn hash_is_stable_and_short() {
        assert_eq!(hash("default/web/tcp/http"), hash("default/web/tcp/http"));
        assert_ne!(hash("default/web/tcp/http"), hash("default/web/tcp/https"));
        assert_eq!(hash("x").len(), 8);
    }

    #[test]
    fn cluster_ip_with_endpoints() {
        let ports = two_ready();
        let f = fragment(&ports[0], &config());
        let svc = service_chain("default/web/tcp/http");
        assert_eq!(
            f.elements
                .get(&(SERVICES, "10.43.0.20 . tcp . 80".to_string())),
            Some(&format!("goto {svc}"))
        );
        let rules = &f.chains[&svc];
        assert_eq!(
            rules[0],
            "ip saddr != 10.42.0.0/16 jump mark-for-masquerade"
        );
        assert!(rules[1].starts_with("numgen random mod 2 vmap { 0 : goto endpoint-"));
        let ep = Endpoint {
            ip: "10.42.0.5".parse().unwrap(),
            port: 8080,
        };
        assert_eq!(
            f.chains[&endpoint_chain("default/web/tcp/http", &ep)],
            vec![
                "ip saddr 10.42.0.5 jump mark-for-masquerade".to_string(),
                "meta l4proto tcp dnat to 10.42.0.5:8080".to_string()
            ]
        );
        assert_eq!(f.chains.len(), 3);
        assert!(f.sets.is_empty());
        assert!(!f
            .elements
            .keys()
            .any(|(m, _)| *m == NO_ENDPOINT_SERVICES || *m == NODEPORTS));
    }

    #[test]
    fn no_endpoints_reject() {
        let ports = service_ports(&web(), [], &node());
        let f = fragment(&ports[0], &config());
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
        let f = fragment(&service_ports(&svc, [&s], &node())[0], &config());
        let ext = external_chain("default/web/tcp/http");
        assert_eq!(
            f.elements.get(&(NODEPORTS, "tcp . 30080".to_string())),
            Some(&format!("goto {ext}"))
        );
        assert_eq!(
            f.elements
                .get(&(SERVICES, "192.0.2.7 . tcp . 80".to_string())),
            Some(&format!("goto {ext}"))
        );
        assert_eq!(f.chains[&ext][0], "jump mark-for-masquerade");

        // Local policy with no endpoint here: dropped, not rejected, and not masqueraded.
        let mut local = svc.clone();
        local.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let f = fragment(&service_ports(&local, [&s], &node())[0], &config());
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
        let here = web_slice(&[("10.42.0.5", "n1", true, true, false)]);
        let f = fragment(&service_ports(&local, [&here], &node())[0], &config());
        assert!(f.chains[&external_chain("default/web/tcp/http")][0].starts_with("numgen"));
    }

    #[test]
    fn affinity_sets_per_endpoint() {
        let mut svc = web();
        svc.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
        let s = web_slice(&[("10.42.0.5", "n1", true, true, false)]);
        let f = fragment(&service_ports(&svc, [&s], &node())[0], &config());
        let ep = Endpoint {
            ip: "10.42.0.5".parse().unwrap(),
            port: 8080,
        };
        let set = affinity_set("default/web/tcp/http", &ep);
        assert_eq!(
            f.sets[&set],
            "type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ;"
        );
        let svc_rules = &f.chains[&service_chain("default/web/tcp/http")];
        assert_eq!(
            svc_rules[1],
            format!(
                "ip saddr @{set} goto {}",
                endpoint_chain("default/web/tcp/http", &ep)
            )
        );
        assert_eq!(
            f.chains[&endpoint_chain("default/web/tcp/http", &ep)][1],
            format!("update @{set} {{ ip saddr }}")
        );
    }

    #[test]
    fn incremental_touches_only_what_changed() {
        let before = two_ready();
        let s = web_slice(&[
            ("10.42.0.5", "n1", true, true, false),
            ("10.42.0.6", "n1", false, false, false),
        ]);
        let after = service_ports(&web(), [&s], &node());
        let script = incremental(
            &config(),
            &[Change {
                old: &before,
                new: &after,
            }],
        );
        let gone = endpoint_chain(
            "default/web/tcp/http",
            &Endpoint {
                ip: "10.42.0.6".parse().unwrap(),
                port: 8080,
            },
        );
        let svc = service_chain("default/web/tcp/http");
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(
            lines,
            vec![
                format!("flush chain ip shoal-proxy {svc}"),
                format!("flush chain ip shoal-proxy {gone}"),
                format!("add rule ip shoal-proxy {svc} ip saddr != 10.42.0.0/16 jump mark-for-masquerade"),
                format!(
                    "add rule ip shoal-proxy {svc} numgen random mod 1 vmap {{ 0 : goto {} }}",
                    endpoint_chain(
                        "default/web/tcp/http",
                        &Endpoint { ip: "10.42.0.5".parse().unwrap(), port: 8080 }
                    )
                ),
                format!("delete chain ip shoal-proxy {gone}"),
            ]
        );
        assert_eq!(
            incremental(
                &config(),
                &[Change {
                    old: &after,
                    new: &after
                }]
            ),
            ""
        );
    }

    #[test]
    fn incremental_swaps_reject_for_service() {
        let empty = service_ports(&web(), [], &node());
        let ready = two_ready();
        let script = incremental(
            &config(),
            &[Change {
                old: &empty,
                new: &ready,
            }],
        );
        let first_rule = script.find("add rule").unwrap();
        let delete = script
            .find("delete element ip shoal-proxy no-endpoint-services { 10.43.0.20 . tcp . 80 }")
            .unwrap();
        let add = script
            .find("add element ip shoal-proxy services { 10.43.0.20 . tcp . 80 : goto service-")
            .unwrap();
        assert!(delete < first_rule && first_rule < add, "{script}");
        let back = incremental(
            &config(),
            &[Change {
                old: &ready,
                new: &empty,
            }],
        );
        assert!(back.contains("delete element ip shoal-proxy services {"));
        assert!(back.contains(
            "add element ip shoal-proxy no-endpoint-services { 10.43.0.20 . tcp . 80 : goto reject-chain }"
        ));
        assert_eq!(back.matches("delete chain").count(), 3, "{back}");
    }

    #[test]
    fn full_script_shape() {
        let ports = two_ready();
        let script = full(&config(), &ports);
        assert!(script.starts_with(
            "add table ip shoal-proxy\ndelete table ip shoal-proxy\nadd table ip shoal-proxy\n"
        ));
        assert!(script.contains(
            "add rule ip shoal-proxy masquerading iifname \"shoal0\" oifname \"shoal0\" ct status dnat masquerade fully-random"
        ));
        assert_eq!(ports[0].protocol, Protocol::Tcp);
        // Chains exist before any rule jumps to them; elements come after both.
        let last_chain = script.rfind("add chain ip shoal-proxy endpoint-").unwrap();
        let first_rule = script.find("add rule ip shoal-proxy service-").unwrap();
        let element = script.find("add element").unwrap();
        assert!(last_chain < first_rule && first_rule < element);
    }

    /// The scripts are accepted by nft itself (check mode: nothing is applied).
    #[test]
    fn nft_accepts_scripts() {
        let nft = crate::proxy::nft::Nft::default();
        let ready = two_ready();
        let mut affinity = web();
        affinity.metadata.name = Some("lb".into());
        affinity.spec.as_mut().unwrap().cluster_ip = Some("10.43.0.21".into());
        affinity.spec.as_mut().unwrap().cluster_ips = None;
        affinity.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
        affinity.spec.as_mut().unwrap().type_ = Some("LoadBalancer".into());
        affinity.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = Some(30080);
        let s = web_slice(&[("10.42.0.5", "n1", true, true, false)]);
        let affinity = service_ports(&affinity, [&s], &node());
        let empty = service_ports(&web(), [], &node());
        let script = full(&config(), ready.iter().chain(&affinity));
        nft.check(&script).unwrap();
        let update = incremental(
            &config(),
            &[Change {
                old: &ready,
                new: &empty,
            }],
        );
        nft.check(&format!("{script}{update}")).unwrap();
    }
}
