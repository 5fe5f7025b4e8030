//! The cluster's DNS data, per the Kubernetes DNS specification (schema 1.1.0) and CoreDNS's
//! `kubernetes` plugin: an [`Index`] built from Services and EndpointSlices that answers one
//! question (name, type) with records, NODATA, NXDOMAIN or "not ours, forward it". Pure: no
//! sockets, no clock (the SOA serial is given).
//!
//! Names served under the cluster domain (`cluster.local` below):
//! - `<svc>.<ns>.svc.cluster.local`: A/AAAA of a ClusterIP Service's addresses; of a headless
//!   Service's ready endpoints; a CNAME to an ExternalName Service's name. SRV on this name
//!   lists every port.
//! - `<endpoint>.<svc>.<ns>.svc.cluster.local`: A/AAAA of one endpoint, named by its
//!   `hostname` (StatefulSet pods with `subdomain`) or its dashed address (`10-42-0-5`).
//! - `_<port>._<proto>.<svc>.<ns>.svc.cluster.local`: SRV for named ports, targeting the
//!   Service's name (ClusterIP) or each endpoint's name (headless), with their addresses in the
//!   additional section.
//! - `<a-b-c-d>.<ns>.pod.cluster.local`: the address written in the name (CoreDNS's
//!   `pods insecure`, k3s's default).
//! - `dns-version.cluster.local` TXT `1.1.0`; the apex's SOA and NS (`ns.dns.cluster.local`,
//!   the cluster DNS address).
//! - PTR for Service addresses and headless endpoints' addresses.
//!
//! Negative answers follow DNS's tree: a name that exists (it owns records, or has
//! descendants that do) but not with the asked type is NODATA; any other name in the domain is
//! NXDOMAIN; both carry the zone's SOA. Reverse names inside the configured service and pod
//! CIDRs are ours the same way; any other name goes to the node's upstream resolvers.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use shoal_common::Cidr;

/// Records' time to live, in seconds. CoreDNS's own default (k3s raises it to 30): Services
/// come and go quickly in a cluster and a stale address is worse than a few more queries.
pub const DEFAULT_TTL: u32 = 5;
/// The DNS specification version `dns-version.<domain>` answers.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// How many CNAMEs inside the domain are followed before giving up (ExternalName chains).
const MAX_CNAME_CHAIN: usize = 8;
/// The label EndpointSlices name their Service by.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the index serves and for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The cluster domain, without a trailing dot (`cluster.local`).
    pub domain: String,
    /// The cluster DNS address (the apex's name server).
    pub dns_ip: IpAddr,
    /// Networks whose reverse names are ours (the service and pod CIDRs).
    pub reverse_cidrs: Vec<Cidr>,
    pub ttl: u32,
}

/// The answer to one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// NOERROR with records. `chase` is set when the answer ends in a CNAME to a name outside
    /// the domain (an ExternalName Service): the server resolves it upstream and appends.
    Answer {
        answers: Vec<Record>,
        additionals: Vec<Record>,
        chase: Option<Name>,
    },
    /// The name exists without records of the asked type.
    NoData { soa: Record },
    /// The name does not exist.
    NxDomain { soa: Record },
    /// Not ours: ask the upstream resolvers.
    Forward,
}

/// The records of one owner name.
#[derive(Debug, Clone, Default)]
struct Node {
    records: Vec<Record>,
    /// Address records of SRV/NS targets, sent in the additional section.
    additionals: Vec<Record>,
}

/// The cluster's names, ready to answer questions.
#[derive(Debug, Clone)]
pub struct Index {
    config: ZoneConfig,
    /// The domain as a lowercase key (`cluster.local`).
    domain: String,
    soa: Record,
    /// Owner names (lowercase, no trailing dot) and their records.
    nodes: HashMap<String, Node>,
    /// Names that own nothing but have descendants that do (they answer NODATA).
    empty_nonterminals: HashSet<String>,
    /// While building: (owner, address) already in an additional section.
    additional_seen: HashSet<(String, IpAddr)>,
}

/// A name as an index key: lowercase, without the trailing dot.
fn key(name: &Name) -> String {
    let mut text = name.to_lowercase().to_ascii();
    if text.ends_with('.') {
        text.pop();
    }
    text
}

/// `text` (a key) as an absolute name.
fn fqdn(text: &str) -> Option<Name> {
    Name::from_ascii(format!("{text}.")).ok()
}

/// Whether key `name` is `zone` or below it.
fn in_zone(name: &str, zone: &str) -> bool {
    zone.is_empty()
        || name == zone
        || (name.len() > zone.len()
            && name.ends_with(zone)
            && name.as_bytes()[name.len() - zone.len() - 1] == b'.')
}

fn address_record(owner: Name, ttl: u32, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner, ttl, rdata)
}

/// An endpoint's name label: its hostname, else its address with dashes (CoreDNS's rule).
fn endpoint_label(hostname: Option<&str>, ip: IpAddr) -> String {
    match hostname {
        Some(h) if !h.is_empty() => h.to_ascii_lowercase(),
        _ => ip.to_string().replace(['.', ':'], "-"),
    }
}

/// The address a pod name's first label spells (`10-42-0-5`, `fd00--5`), if any.
fn pod_label_ip(label: &str) -> Option<IpAddr> {
    if label.contains('.') || label.contains(':') {
        return None;
    }
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The reverse name key of `ip` (`5.0.42.10.in-addr.arpa`).
pub fn reverse_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut labels: Vec<String> = v6
                .octets()
                .iter()
                .flat_map(|byte| [byte >> 4, byte & 0xf])
                .map(|nibble| format!("{nibble:x}"))
                .collect();
            labels.reverse();
            labels.push("ip6.arpa".into());
            labels.join(".")
        }
    }
}

/// A reverse name key as the network it stands for: its address (missing labels zero) and
/// how many leading bits the name fixes. `None` for a name that is not a reverse name.
fn parse_reverse(name: &str) -> Option<(IpAddr, u8)> {
    if let Some(rest) = name
        .strip_suffix("in-addr.arpa")
        .map(|r| r.strip_suffix('.').unwrap_or(r))
    {
        let labels: Vec<&str> = if rest.is_empty() {
            vec![]
        } else {
            rest.split('.').collect()
        };
        if labels.len() > 4 {
            return None;
        }
        let mut octets = [0u8; 4];
        for (i, label) in labels.iter().rev().enumerate() {
            if label.len() > 1 && label.starts_with('0') {
                return None;
            }
            octets[i] = label.parse().ok()?;
        }
        let bits = u8::try_from(labels.len() * 8).ok()?;
        return Some((IpAddr::V4(Ipv4Addr::from(octets)), bits));
    }
    let rest = name
        .strip_suffix("ip6.arpa")
        .map(|r| r.strip_suffix('.').unwrap_or(r))?;
    let labels: Vec<&str> = if rest.is_empty() {
        vec![]
    } else {
        rest.split('.').collect()
    };
    if labels.len() > 32 {
        return None;
    }
    let mut value: u128 = 0;
    for (i, label) in labels.iter().rev().enumerate() {
        if label.len() != 1 {
            return None;
        }
        let nibble = u128::from_str_radix(label, 16).ok()?;
        value |= nibble << (124 - 4 * i);
    }
    let bits = u8::try_from(labels.len() * 4).ok()?;
    Some((IpAddr::V6(Ipv6Addr::from(value)), bits))
}

/// The key of the reverse zone `cidr` lies in: its address cut to whole labels.
fn reverse_zone_key(cidr: &Cidr) -> String {
    let full = reverse_key(cidr.addr());
    let (per_label, total) = if cidr.is_ipv4() { (8, 4) } else { (4, 32) };
    let kept = usize::from(cidr.prefix()) / per_label;
    let labels: Vec<&str> = full.split('.').collect();
    // Drop the labels below the zone; the last two are the suffix (`in-addr.arpa`).
    labels[total - kept..].join(".")
}

/// A Service's port as DNS names it.
#[derive(Debug, Clone)]
struct Port {
    name: String,
    protocol: String,
    port: u16,
}

fn protocol_label(protocol: Option<&str>) -> String {
    protocol.unwrap_or("TCP").to_ascii_lowercase()
}

/// One endpoint of a Service, merged over its EndpointSlices.
#[derive(Debug, Clone)]
struct Endpoint {
    ip: IpAddr,
    hostname: Option<String>,
    ready: bool,
}

/// What an index is built from, per Service: its EndpointSlices' usable endpoints and ports.
#[derive(Debug, Default)]
struct Backends {
    endpoints: Vec<Endpoint>,
    ports: Vec<Port>,
}

impl Index {
    /// An index with only the domain's own names (apex, `dns-version`, name server).
    pub fn empty(config: ZoneConfig, serial: u32) -> Index {
        Index::build(config, serial, [], [])
    }

    /// Builds the index from every Service and EndpointSlice of the cluster.
    pub fn build<'a>(
        config: ZoneConfig,
        serial: u32,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Index {
        let domain = config.domain.trim_end_matches('.').to_ascii_lowercase();
        let apex = fqdn(&domain).unwrap_or_else(Name::root);
        let ns_name = fqdn(&format!("ns.dns.{domain}")).unwrap_or_else(Name::root);
        let hostmaster = fqdn(&format!("hostmaster.{domain}")).unwrap_or_else(Name::root);
        let ttl = config.ttl;
        let soa = Record::from_rdata(
            apex.clone(),
            ttl,
            RData::SOA(SOA::new(
                ns_name.clone(),
                hostmaster,
                serial,
                7200,
                1800,
                86400,
                ttl,
            )),
        );
        let mut index = Index {
            config,
            domain: domain.clone(),
            soa: soa.clone(),
            nodes: HashMap::new(),
            empty_nonterminals: HashSet::new(),
            additional_seen: HashSet::new(),
        };
        let dns_ip = index.config.dns_ip;
        index.add(&domain, soa);
        index.add(
            &domain,
            Record::from_rdata(apex.clone(), ttl, RData::NS(NS(ns_name.clone()))),
        );
        index.add_additional(&domain, &ns_name, dns_ip);
        index.add(
            &format!("ns.dns.{domain}"),
            address_record(ns_name, ttl, dns_ip),
        );
        if let Some(owner) = fqdn(&format!("dns-version.{domain}")) {
            index.add(
                &key(&owner),
                Record::from_rdata(
                    owner,
                    ttl,
                    RData::TXT(TXT::new(vec![SCHEMA_VERSION.into()])),
                ),
            );
        }
        // `svc` and `pod` exist even in an empty cluster.
        index.empty_nonterminals.insert(format!("svc.{domain}"));
        index.empty_nonterminals.insert(format!("pod.{domain}"));

        let mut backends: HashMap<(String, String), Backends> = HashMap::new();
        for slice in slices {
            let (Some(namespace), Some(service)) = (
                slice.metadata.namespace.as_deref(),
                slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) else {
                continue;
            };
            let entry = backends
                .entry((namespace.to_string(), service.clone()))
                .or_default();
            for port in slice.ports.iter().flatten() {
                let (Some(name), Some(number)) = (port.name.as_deref(), port.port) else {
                    continue;
                };
                let Ok(number) = u16::try_from(number) else {
                    continue;
                };
                entry.ports.push(Port {
                    name: name.to_ascii_lowercase(),
                    protocol: protocol_label(port.protocol.as_deref()),
                    port: number,
                });
            }
            for endpoint in &slice.endpoints {
                // Kubernetes: an unset `ready` is to be read as ready.
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                for address in &endpoint.addresses {
                    let Ok(ip) = address.parse::<IpAddr>() else {
                        continue;
                    };
                    entry.endpoints.push(Endpoint {
                        ip,
                        hostname: endpoint.hostname.clone(),
                        ready,
                    });
                }
            }
        }
        for service in services {
            let (Some(namespace), Some(name)) = (
                service.metadata.namespace.as_deref(),
                service.metadata.name.as_deref(),
            ) else {
                continue;
            };
            let found = backends.remove(&(namespace.to_string(), name.to_string()));
            index.add_service(service, namespace, name, found.unwrap_or_default());
        }
        index.additional_seen = HashSet::new();
        index
    }

    fn add(&mut self, owner: &str, record: Record) {
        if let Some(node) = self.nodes.get_mut(owner) {
            node.records.push(record);
            return;
        }
        self.nodes.insert(
            owner.to_string(),
            Node {
                records: vec![record],
                additionals: vec![],
            },
        );
        self.add_ancestors(owner);
    }

    /// Adds `target`'s address `ip` to the additional section of `owner`'s answers, once.
    fn add_additional(&mut self, owner: &str, target: &Name, ip: IpAddr) {
        // One address has one name per owner here (endpoints are unique by address within
        // a Service), so (owner, address) identifies the record.
        if !self.additional_seen.insert((owner.to_string(), ip)) {
            return;
        }
        let record = address_record(target.clone(), self.config.ttl, ip);
        self.nodes
            .entry(owner.to_string())
            .or_default()
            .additionals
            .push(record);
    }

    /// Marks every name between `owner` and its zone's apex as existing.
    fn add_ancestors(&mut self, owner: &str) {
        let mut rest = owner;
        while let Some((_, parent)) = rest.split_once('.') {
            if parent.len() <= self.domain.len() || parent.ends_with(".arpa") {
                break;
            }
            if !self.empty_nonterminals.insert(parent.to_string()) {
                // Its own ancestors are there already.
                break;
            }
            rest = parent;
        }
    }

    fn add_service(&mut self, service: &Service, namespace: &str, name: &str, found: Backends) {
        let Some(spec) = service.spec.as_ref() else {
            return;
        };
        let ttl = self.config.ttl;
        let svc_key = format!(
            "{}.{}.svc.{}",
            name.to_ascii_lowercase(),
            namespace.to_ascii_lowercase(),
            self.domain
        );
        let Some(svc_name) = fqdn(&svc_key) else {
            return;
        };
        self.empty_nonterminals.insert(format!(
            "{}.svc.{}",
            namespace.to_ascii_lowercase(),
            self.domain
        ));

        if spec.type_.as_deref() == Some("ExternalName") {
            let Some(target) = spec
                .external_name
                .as_deref()
                .map(|t| t.trim_end_matches('.').to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .and_then(|t| fqdn(&t))
            else {
                return;
            };
            self.add(
                &svc_key,
                Record::from_rdata(svc_name, ttl, RData::CNAME(CNAME(target))),
            );
            return;
        }

        let headless = spec.cluster_ip.as_deref() == Some("None");
        let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
        let mut usable: Vec<Endpoint> = found
            .endpoints
            .into_iter()
            .filter(|e| e.ready || publish_not_ready)
            .collect();
        // An address in several slices (during a move between slices) is one endpoint.
        usable.sort_by_key(|e| (e.ip, e.hostname.is_none()));
        usable.dedup_by_key(|e| e.ip);
        let endpoints = usable;

        // Each endpoint's own name, and (headless) its reverse name.
        let mut endpoint_names: Vec<(Name, IpAddr)> = Vec::new();
        for endpoint in &endpoints {
            let label = endpoint_label(endpoint.hostname.as_deref(), endpoint.ip);
            let endpoint_key = format!("{label}.{svc_key}");
            let Some(owner) = fqdn(&endpoint_key) else {
                continue;
            };
            self.add(
                &endpoint_key,
                address_record(owner.clone(), ttl, endpoint.ip),
            );
            if headless {
                self.add(
                    &reverse_key(endpoint.ip),
                    Record::from_rdata(Name::root(), ttl, RData::PTR(PTR(owner.clone()))),
                );
            }
            endpoint_names.push((owner, endpoint.ip));
        }

        if headless {
            for endpoint in &endpoints {
                self.add(&svc_key, address_record(svc_name.clone(), ttl, endpoint.ip));
            }
            // SRV: one record per (port, endpoint), the endpoint's port number.
            let weight = u16::try_from(100 / endpoint_names.len().max(1))
                .unwrap_or(1)
                .max(1);
            let mut ports = found.ports;
            ports.sort_by(|a, b| {
                (&a.name, &a.protocol, a.port).cmp(&(&b.name, &b.protocol, b.port))
            });
            ports.dedup_by(|a, b| a.name == b.name && a.protocol == b.protocol && a.port == b.port);
            for port in &ports {
                for (target, ip) in &endpoint_names {
                    let srv = SRV::new(0, weight, port.port, target.clone());
                    self.add_srv(&svc_key, &svc_name, port, srv, &[*ip]);
                }
            }
            return;
        }

        let ips: Vec<IpAddr> = if spec.cluster_ips.as_ref().is_some_and(|l| !l.is_empty()) {
            spec.cluster_ips
                .iter()
                .flatten()
                .filter_map(|ip| ip.parse().ok())
                .collect()
        } else {
            spec.cluster_ip
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect()
        };
        if ips.is_empty() {
            return;
        }
        for ip in &ips {
            self.add(&svc_key, address_record(svc_name.clone(), ttl, *ip));
            self.add(
                &reverse_key(*ip),
                Record::from_rdata(Name::root(), ttl, RData::PTR(PTR(svc_name.clone()))),
            );
        }
        for port in spec.ports.iter().flatten() {
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let port = Port {
                name: port.name.clone().unwrap_or_default().to_ascii_lowercase(),
                protocol: protocol_label(port.protocol.as_deref()),
                port: number,
            };
            let srv = SRV::new(0, 100, port.port, svc_name.clone());
            self.add_srv(&svc_key, &svc_name, &port, srv, &ips);
        }
    }

    /// An SRV record on the Service's name and, for a named port, on
    /// `_<port>._<proto>.<service>`; the target's addresses go in the additional section.
    fn add_srv(
        &mut self,
        svc_key: &str,
        svc_name: &Name,
        port: &Port,
        srv: SRV,
        target_ips: &[IpAddr],
    ) {
        let ttl = self.config.ttl;
        let target = srv.target.clone();
        self.add(
            svc_key,
            Record::from_rdata(svc_name.clone(), ttl, RData::SRV(srv.clone())),
        );
        for ip in target_ips {
            self.add_additional(svc_key, &target, *ip);
        }
        if port.name.is_empty() {
            return;
        }
        let srv_key = format!("_{}._{}.{svc_key}", port.name, port.protocol);
        let Some(owner) = fqdn(&srv_key) else {
            return;
        };
        self.add(&srv_key, Record::from_rdata(owner, ttl, RData::SRV(srv)));
        for ip in target_ips {
            self.add_additional(&srv_key, &target, *ip);
        }
    }

    /// The zone's SOA record (sent with negative answers).
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// How many names the index holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the index holds no names at all (never: the apex is always there).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Answers `qtype` for `name`.
    pub fn lookup(&self, name: &Name, qtype: RecordType) -> Outcome {
        let text = key(name);
        if in_zone(&text, &self.domain) {
            return self.lookup_in_zone(name, &text, qtype, 0);
        }
        if let Some((network, bits)) = parse_reverse(&text) {
            return self.lookup_reverse(name, &text, network, bits, qtype);
        }
        Outcome::Forward
    }

    fn lookup_in_zone(&self, name: &Name, text: &str, qtype: RecordType, depth: usize) -> Outcome {
        if let Some(node) = self.nodes.get(text) {
            return self.answer_from(node, name, qtype, depth, self.soa.clone());
        }
        if self.empty_nonterminals.contains(text) {
            return Outcome::NoData {
                soa: self.soa.clone(),
            };
        }
        if let Some(outcome) = self.lookup_pod(name, text, qtype) {
            return outcome;
        }
        Outcome::NxDomain {
            soa: self.soa.clone(),
        }
    }

    /// `<a-b-c-d>.<ns>.pod.<domain>` and `<ns>.pod.<domain>`.
    fn lookup_pod(&self, name: &Name, text: &str, qtype: RecordType) -> Option<Outcome> {
        let below = text.strip_suffix(&format!(".pod.{}", self.domain))?;
        let labels: Vec<&str> = below.split('.').collect();
        match labels.as_slice() {
            [_namespace] => Some(Outcome::NoData {
                soa: self.soa.clone(),
            }),
            [address, _namespace] => {
                let ip = pod_label_ip(address)?;
                let wanted = match ip {
                    IpAddr::V4(_) => RecordType::A,
                    IpAddr::V6(_) => RecordType::AAAA,
                };
                Some(if qtype == wanted || qtype == RecordType::ANY {
                    Outcome::Answer {
                        answers: vec![address_record(name.clone(), self.config.ttl, ip)],
                        additionals: vec![],
                        chase: None,
                    }
                } else {
                    Outcome::NoData {
                        soa: self.soa.clone(),
                    }
                })
            }
            _ => None,
        }
    }

    fn lookup_reverse(
        &self,
        name: &Name,
        text: &str,
        network: IpAddr,
        bits: u8,
        qtype: RecordType,
    ) -> Outcome {
        let zone = self
            .config
            .reverse_cidrs
            .iter()
            .find(|cidr| bits >= cidr.prefix() && cidr.contains(network));
        if let Some(node) = self.nodes.get(text) {
            let soa = zone.map_or_else(|| self.soa.clone(), |z| self.reverse_soa(z));
            return self.answer_from(node, name, qtype, 0, soa);
        }
        let Some(zone) = zone else {
            return Outcome::Forward;
        };
        let soa = self.reverse_soa(zone);
        let full = if network.is_ipv4() { 32 } else { 128 };
        if bits < full {
            Outcome::NoData { soa }
        } else {
            Outcome::NxDomain { soa }
        }
    }

    fn reverse_soa(&self, cidr: &Cidr) -> Record {
        let mut soa = self.soa.clone();
        if let Some(owner) = fqdn(&reverse_zone_key(cidr)) {
            soa.name = owner;
        }
        soa
    }

    fn answer_from(
        &self,
        node: &Node,
        name: &Name,
        qtype: RecordType,
        depth: usize,
        soa: Record,
    ) -> Outcome {
        let matching = |r: &&Record| qtype == RecordType::ANY || r.record_type() == qtype;
        let mut answers: Vec<Record> = node
            .records
            .iter()
            .filter(matching)
            .map(|r| with_owner(r, name))
            .collect();
        if !answers.is_empty() {
            let additionals = if matches!(qtype, RecordType::SRV | RecordType::NS | RecordType::ANY)
            {
                node.additionals.clone()
            } else {
                vec![]
            };
            return Outcome::Answer {
                answers,
                additionals,
                chase: None,
            };
        }
        let cname = node.records.iter().find_map(|r| match &r.data {
            RData::CNAME(target) => Some((r, target.0.clone())),
            _ => None,
        });
        let Some((record, target)) = cname else {
            return Outcome::NoData { soa };
        };
        answers.push(with_owner(record, name));
        let target_key = key(&target);
        if !in_zone(&target_key, &self.domain) {
            return Outcome::Answer {
                answers,
                additionals: vec![],
                chase: Some(target),
            };
        }
        if depth < MAX_CNAME_CHAIN {
            if let Outcome::Answer {
                answers: more,
                additionals,
                chase,
            } = self.lookup_in_zone(&target, &target_key, qtype, depth + 1)
            {
                answers.extend(more);
                return Outcome::Answer {
                    answers,
                    additionals,
                    chase,
                };
            }
        }
        Outcome::Answer {
            answers,
            additionals: vec![],
            chase: None,
        }
    }
}

/// `record` with the owner name as asked (the question's case; PTRs are stored ownerless).
fn with_owner(record: &Record, name: &Name) -> Record {
    let mut record = record.clone();
    record.name = name.clone();
    record
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).unwrap()
    }

    fn zone() -> ZoneConfig {
        ZoneConfig {
            domain: "cluster.local".into(),
            dns_ip: "10.43.0.10".parse().unwrap(),
            reverse_cidrs: vec![
                "10.43.0.0/16".parse().unwrap(),
                "10.42.0.0/16".parse().unwrap(),
            ],
            ttl: DEFAULT_TTL,
        }
    }

    /// `web` (ClusterIP, dual-stack, named and unnamed ports), `db` (headless, a StatefulSet's
    /// pods with hostnames, one not ready), `peers` (headless, publishing not-ready
    /// addresses), `empty` (headless, no endpoints), `ext` and `alias` (ExternalName, outside
    /// and inside the cluster), `dns` (UDP port) in kube-system.
    fn fixture() -> Index {
        let services = [
            service(json!({"metadata": {"name": "web", "namespace": "default"},
                "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20", "fd43::20"],
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                                   {"port": 8443}]}})),
            service(json!({"metadata": {"name": "db", "namespace": "default"},
                "spec": {"clusterIP": "None", "ports": [{"name": "sql", "port": 5432}]}})),
            service(
                json!({"metadata": {"name": "peers", "namespace": "default"},
                "spec": {"clusterIP": "None", "publishNotReadyAddresses": true}}),
            ),
            service(json!({"metadata": {"name": "empty", "namespace": "other"},
                "spec": {"clusterIP": "None"}})),
            service(json!({"metadata": {"name": "ext", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "Example.COM."}})),
            service(
                json!({"metadata": {"name": "alias", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}}),
            ),
            service(
                json!({"metadata": {"name": "kube-dns", "namespace": "kube-system"},
                "spec": {"clusterIP": "10.43.0.10",
                         "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                                   {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}),
            ),
        ];
        let slices = [
            slice(
                json!({"metadata": {"name": "web-abc", "namespace": "default",
                                      "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.42.0.7"], "conditions": {"ready": true}}],
                "ports": [{"name": "http", "port": 8080}]}),
            ),
            slice(json!({"metadata": {"name": "db-1", "namespace": "default",
                                      "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
                    {"addresses": ["10.42.0.6"], "hostname": "db-1"},
                    {"addresses": ["10.42.0.9"], "hostname": "db-2", "conditions": {"ready": false}}],
                "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]})),
            // The same address again in a second slice (a move between slices).
            slice(json!({"metadata": {"name": "db-2", "namespace": "default",
                                      "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.42.0.5"], "conditions": {"ready": true}}],
                "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]})),
            slice(
                json!({"metadata": {"name": "peers-1", "namespace": "default",
                                      "labels": {"kubernetes.io/service-name": "peers"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.42.0.11"], "conditions": {"ready": false}}]}),
            ),
            slice(
                json!({"metadata": {"name": "orphan", "namespace": "default"},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.42.0.99"]}]}),
            ),
        ];
        Index::build(zone(), 42, &services, &slices)
    }

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn ask(index: &Index, text: &str, qtype: RecordType) -> Outcome {
        index.lookup(&name(text), qtype)
    }

    /// The answer section as text (`owner type data`), sorted.
    fn answers(outcome: &Outcome) -> Vec<String> {
        let Outcome::Answer { answers, .. } = outcome else {
            panic!("not an answer: {outcome:?}");
        };
        render(answers)
    }

    fn additionals(outcome: &Outcome) -> Vec<String> {
        let Outcome::Answer { additionals, .. } = outcome else {
            panic!("not an answer: {outcome:?}");
        };
        render(additionals)
    }

    fn render(records: &[Record]) -> Vec<String> {
        let mut out: Vec<String> = records
            .iter()
            .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
            .collect();
        out.sort();
        out
    }

    fn assert_nxdomain(outcome: Outcome, zone: &str) {
        match outcome {
            Outcome::NxDomain { soa } => assert_eq!(soa.name.to_ascii(), zone),
            other => panic!("expected NXDOMAIN, got {other:?}"),
        }
    }

    fn assert_nodata(outcome: Outcome, zone: &str) {
        match outcome {
            Outcome::NoData { soa } => {
                assert_eq!(soa.name.to_ascii(), zone);
                assert_eq!(soa.record_type(), RecordType::SOA);
                assert_eq!(soa.ttl, DEFAULT_TTL);
            }
            other => panic!("expected NODATA, got {other:?}"),
        }
    }

    #[test]
    fn cluster_ip_service_addresses() {
        let index = fixture();
        let a = ask(&index, "web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(answers(&a), ["web.default.svc.cluster.local. A 10.43.0.20"]);
        let Outcome::Answer {
            answers: records, ..
        } = &a
        else {
            unreachable!()
        };
        assert_eq!(records[0].ttl, 5);
        assert_eq!(
            answers(&ask(
                &index,
                "web.default.svc.cluster.local.",
                RecordType::AAAA
            )),
            ["web.default.svc.cluster.local. AAAA fd43::20"]
        );
        // Case is ignored, the question's case is kept; the trailing dot is optional.
        assert_eq!(
            answers(&ask(
                &index,
                "WEB.Default.SVC.cluster.LOCAL.",
                RecordType::A
            )),
            ["WEB.Default.SVC.cluster.LOCAL. A 10.43.0.20"]
        );
        assert_eq!(
            answers(&ask(&index, "web.default.svc.cluster.local", RecordType::A)).len(),
            1
        );
        assert_nodata(
            ask(&index, "web.default.svc.cluster.local.", RecordType::MX),
            "cluster.local.",
        );
        // A ClusterIP Service's endpoints have names too (CoreDNS answers them).
        assert_eq!(
            answers(&ask(
                &index,
                "10-42-0-7.web.default.svc.cluster.local.",
                RecordType::A
            )),
            ["10-42-0-7.web.default.svc.cluster.local. A 10.42.0.7"]
        );
    }

    #[test]
    fn search_path_expansions_and_missing_names() {
        let index = fixture();
        for missing in [
            "web.default.svc.cluster.local.default.svc.cluster.local.",
            "web.default.svc.cluster.local.svc.cluster.local.",
            "web.default.svc.cluster.local.cluster.local.",
            "nothere.default.svc.cluster.local.",
            "web.nowhere.svc.cluster.local.",
            "nowhere.svc.cluster.local.",
            "web.cluster.local.",
            "x.web.default.svc.cluster.local.",
            "default.pod.cluster.local.x.cluster.local.",
            "not-an-ip.default.pod.cluster.local.",
        ] {
            assert_nxdomain(ask(&index, missing, RecordType::A), "cluster.local.");
        }
        // Names with descendants exist: NODATA, not NXDOMAIN.
        for existing in [
            "default.svc.cluster.local.",
            "svc.cluster.local.",
            "pod.cluster.local.",
            "other.svc.cluster.local.",
            "default.pod.cluster.local.",
            "_http._tcp.web.default.svc.cluster.local.",
            "_tcp.web.default.svc.cluster.local.",
            "dns.cluster.local.",
        ] {
            assert_nodata(ask(&index, existing, RecordType::A), "cluster.local.");
        }
        // A headless Service without ready endpoints has no name (CoreDNS: NXDOMAIN).
        assert_nxdomain(
            ask(&index, "empty.other.svc.cluster.local.", RecordType::A),
            "cluster.local.",
        );
    }

    #[test]
    fn headless_service_endpoints() {
        let index = fixture();
        // Ready endpoints only; an address in two slices once; unset `ready` counts as ready.
        assert_eq!(
            answers(&ask(&index, "db.default.svc.cluster.local.", RecordType::A)),
            [
                "db.default.svc.cluster.local. A 10.42.0.5",
                "db.default.svc.cluster.local. A 10.42.0.6"
            ]
        );
        // StatefulSet pods by hostname.
        assert_eq!(
            answers(&ask(
                &index,
                "db-0.db.default.svc.cluster.local.",
                RecordType::A
            )),
            ["db-0.db.default.svc.cluster.local. A 10.42.0.5"]
        );
        assert_nxdomain(
            ask(&index, "db-2.db.default.svc.cluster.local.", RecordType::A),
            "cluster.local.",
        );
        // publishNotReadyAddresses: not-ready endpoints too, named by address.
        assert_eq!(
            answers(&ask(
                &index,
                "peers.default.svc.cluster.local.",
                RecordType::A
            )),
            ["peers.default.svc.cluster.local. A 10.42.0.11"]
        );
        assert_eq!(
            answers(&ask(
                &index,
                "10-42-0-11.peers.default.svc.cluster.local.",
                RecordType::A
            )),
            ["10-42-0-11.peers.default.svc.cluster.local. A 10.42.0.11"]
        );
        assert_nodata(
            ask(&index, "db.default.svc.cluster.local.", RecordType::AAAA),
            "cluster.local.",
        );
    }

    #[test]
    fn srv_records_for_named_ports() {
        let index = fixture();
        let srv = ask(
            &index,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(
            answers(&srv),
            ["_http._tcp.web.default.svc.cluster.local. SRV 0 100 80 web.default.svc.cluster.local."]
        );
        assert_eq!(
            additionals(&srv),
            [
                "web.default.svc.cluster.local. A 10.43.0.20",
                "web.default.svc.cluster.local. AAAA fd43::20"
            ]
        );
        // Protocol labels follow the port's protocol; no SRV for another protocol.
        assert_eq!(
            answers(&ask(&index, "_dns._udp.kube-dns.kube-system.svc.cluster.local.", RecordType::SRV)),
            ["_dns._udp.kube-dns.kube-system.svc.cluster.local. SRV 0 100 53 kube-dns.kube-system.svc.cluster.local."]
        );
        assert_nxdomain(
            ask(
                &index,
                "_dns._tcp.kube-dns.kube-system.svc.cluster.local.",
                RecordType::SRV,
            ),
            "cluster.local.",
        );
        // SRV on the Service's own name lists every port, unnamed ones too.
        assert_eq!(
            answers(&ask(
                &index,
                "web.default.svc.cluster.local.",
                RecordType::SRV
            )),
            [
                "web.default.svc.cluster.local. SRV 0 100 80 web.default.svc.cluster.local.",
                "web.default.svc.cluster.local. SRV 0 100 8443 web.default.svc.cluster.local."
            ]
        );
        // Headless: one per endpoint, targeting the endpoint's name, with its address.
        let srv = ask(
            &index,
            "_sql._tcp.db.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(
            answers(&srv),
            [
                "_sql._tcp.db.default.svc.cluster.local. SRV 0 50 5432 db-0.db.default.svc.cluster.local.",
                "_sql._tcp.db.default.svc.cluster.local. SRV 0 50 5432 db-1.db.default.svc.cluster.local."
            ]
        );
        assert_eq!(
            additionals(&srv),
            [
                "db-0.db.default.svc.cluster.local. A 10.42.0.5",
                "db-1.db.default.svc.cluster.local. A 10.42.0.6"
            ]
        );
        // Address questions carry no additional records.
        assert!(additionals(&ask(
            &index,
            "web.default.svc.cluster.local.",
            RecordType::A
        ))
        .is_empty());
    }

    #[test]
    fn reverse_names() {
        let index = fixture();
        assert_eq!(
            answers(&ask(&index, "20.0.43.10.in-addr.arpa.", RecordType::PTR)),
            ["20.0.43.10.in-addr.arpa. PTR web.default.svc.cluster.local."]
        );
        assert_eq!(
            answers(&ask(
                &index,
                &format!("{}.", reverse_key("fd43::20".parse().unwrap())),
                RecordType::PTR
            )),
            [format!(
                "{}. PTR web.default.svc.cluster.local.",
                reverse_key("fd43::20".parse().unwrap())
            )]
        );
        // Headless endpoints by hostname or dashed address; ClusterIP Services' endpoints
        // have none.
        assert_eq!(
            answers(&ask(&index, "5.0.42.10.in-addr.arpa.", RecordType::PTR)),
            ["5.0.42.10.in-addr.arpa. PTR db-0.db.default.svc.cluster.local."]
        );
        assert_eq!(
            answers(&ask(&index, "11.0.42.10.in-addr.arpa.", RecordType::PTR)),
            ["11.0.42.10.in-addr.arpa. PTR 10-42-0-11.peers.default.svc.cluster.local."]
        );
        // Inside the service and pod ranges the zone is ours.
        assert_nxdomain(
            ask(&index, "7.0.42.10.in-addr.arpa.", RecordType::PTR),
            "42.10.in-addr.arpa.",
        );
        assert_nxdomain(
            ask(&index, "99.0.43.10.in-addr.arpa.", RecordType::PTR),
            "43.10.in-addr.arpa.",
        );
        assert_nodata(
            ask(&index, "0.43.10.in-addr.arpa.", RecordType::PTR),
            "43.10.in-addr.arpa.",
        );
        assert_nodata(
            ask(&index, "20.0.43.10.in-addr.arpa.", RecordType::A),
            "43.10.in-addr.arpa.",
        );
        // Outside them (and above them), it is the upstreams'.
        for other in [
            "1.2.0.192.in-addr.arpa.",
            "10.in-addr.arpa.",
            "in-addr.arpa.",
            "1.0.0.127.in-addr.arpa.",
            "b.a.ip6.arpa.",
            "x.20.0.43.10.in-addr.arpa.",
        ] {
            assert_eq!(
                ask(&index, other, RecordType::PTR),
                Outcome::Forward,
                "{other}"
            );
        }
    }

    #[test]
    fn external_names_are_cnames() {
        let index = fixture();
        let cname = ask(&index, "ext.default.svc.cluster.local.", RecordType::CNAME);
        assert_eq!(
            answers(&cname),
            ["ext.default.svc.cluster.local. CNAME example.com."]
        );
        let Outcome::Answer { chase, .. } = &cname else {
            unreachable!()
        };
        assert_eq!(
            *chase, None,
            "a CNAME question is answered by the CNAME alone"
        );
        let a = ask(&index, "ext.default.svc.cluster.local.", RecordType::A);
        assert_eq!(
            answers(&a),
            ["ext.default.svc.cluster.local. CNAME example.com."]
        );
        let Outcome::Answer { chase, .. } = &a else {
            unreachable!()
        };
        assert_eq!(
            *chase,
            Some(name("example.com.")),
            "the server asks upstream"
        );
        // A target inside the cluster is followed here.
        let alias = ask(&index, "alias.default.svc.cluster.local.", RecordType::A);
        assert_eq!(
            answers(&alias),
            [
                "alias.default.svc.cluster.local. CNAME web.default.svc.cluster.local.",
                "web.default.svc.cluster.local. A 10.43.0.20"
            ]
        );
        let Outcome::Answer { chase, .. } = &alias else {
            unreachable!()
        };
        assert_eq!(*chase, None);
    }

    #[test]
    fn pod_names_and_zone_names() {
        let index = fixture();
        assert_eq!(
            answers(&ask(
                &index,
                "10-42-0-5.default.pod.cluster.local.",
                RecordType::A
            )),
            ["10-42-0-5.default.pod.cluster.local. A 10.42.0.5"]
        );
        assert_eq!(
            answers(&ask(
                &index,
                "fd00--5.any.pod.cluster.local.",
                RecordType::AAAA
            )),
            ["fd00--5.any.pod.cluster.local. AAAA fd00::5"]
        );
        assert_nodata(
            ask(
                &index,
                "10-42-0-5.default.pod.cluster.local.",
                RecordType::AAAA,
            ),
            "cluster.local.",
        );
        assert_nxdomain(
            ask(
                &index,
                "10-42-0-5.x.default.pod.cluster.local.",
                RecordType::A,
            ),
            "cluster.local.",
        );

        assert_eq!(
            answers(&ask(&index, "dns-version.cluster.local.", RecordType::TXT)),
            ["dns-version.cluster.local. TXT 1.1.0"]
        );
        let soa = ask(&index, "cluster.local.", RecordType::SOA);
        assert_eq!(
            answers(&soa),
            ["cluster.local. SOA ns.dns.cluster.local. hostmaster.cluster.local. 42 7200 1800 86400 5"]
        );
        let ns = ask(&index, "cluster.local.", RecordType::NS);
        assert_eq!(answers(&ns), ["cluster.local. NS ns.dns.cluster.local."]);
        assert_eq!(additionals(&ns), ["ns.dns.cluster.local. A 10.43.0.10"]);
        assert_eq!(
            answers(&ask(&index, "ns.dns.cluster.local.", RecordType::A)),
            ["ns.dns.cluster.local. A 10.43.0.10"]
        );
        // ANY: everything the name owns.
        assert_eq!(
            answers(&ask(
                &index,
                "web.default.svc.cluster.local.",
                RecordType::ANY
            ))
            .len(),
            4
        );
    }

    #[test]
    fn other_names_are_forwarded() {
        let index = fixture();
        for other in [
            "example.com.",
            "cluster.local.example.com.",
            "xcluster.local.",
            "local.",
            ".",
            "kubernetes.default.",
        ] {
            assert_eq!(
                ask(&index, other, RecordType::A),
                Outcome::Forward,
                "{other}"
            );
        }
        // An empty cluster still owns its domain.
        let empty = Index::empty(zone(), 1);
        assert_nxdomain(
            ask(&empty, "web.default.svc.cluster.local.", RecordType::A),
            "cluster.local.",
        );
        assert!(!empty.is_empty());
    }

    #[test]
    fn reverse_name_parsing() {
        assert_eq!(
            parse_reverse("5.0.42.10.in-addr.arpa"),
            Some(("10.42.0.5".parse().unwrap(), 32))
        );
        assert_eq!(
            parse_reverse("42.10.in-addr.arpa"),
            Some(("10.42.0.0".parse().unwrap(), 16))
        );
        assert_eq!(
            parse_reverse("in-addr.arpa"),
            Some(("0.0.0.0".parse().unwrap(), 0))
        );
        assert_eq!(parse_reverse("256.0.42.10.in-addr.arpa"), None);
        assert_eq!(parse_reverse("05.0.42.10.in-addr.arpa"), None);
        assert_eq!(parse_reverse("1.5.0.42.10.in-addr.arpa"), None);
        assert_eq!(parse_reverse("example.com"), None);
        let v6: IpAddr = "fd00::1:2".parse().unwrap();
        assert_eq!(parse_reverse(&reverse_key(v6)), Some((v6, 128)));
        assert_eq!(
            parse_reverse("d.f.ip6.arpa"),
            Some(("fd00::".parse().unwrap(), 8))
        );
        assert_eq!(parse_reverse("dd.f.ip6.arpa"), None);
        assert_eq!(
            reverse_zone_key(&"10.43.0.0/16".parse().unwrap()),
            "43.10.in-addr.arpa"
        );
        assert_eq!(
            reverse_zone_key(&"10.40.0.0/13".parse().unwrap()),
            "10.in-addr.arpa"
        );
        assert_eq!(
            reverse_zone_key(&"fd43::/112".parse().unwrap()).len(),
            28 * 2 + 8
        );
        assert_eq!(
            pod_label_ip("10-42-0-5"),
            Some("10.42.0.5".parse().unwrap())
        );
        assert_eq!(pod_label_ip("fd00--5"), Some("fd00::5".parse().unwrap()));
        assert_eq!(pod_label_ip("web"), None);
        assert_eq!(
            endpoint_label(Some("DB-0"), "10.0.0.1".parse().unwrap()),
            "db-0"
        );
        assert_eq!(endpoint_label(None, "fd00::1".parse().unwrap()), "fd00--1");
    }
}
