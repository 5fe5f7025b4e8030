//! The vocabulary of the proxy's tables, typed, so that one description is written two ways:
//! as nftables' own syntax ([`Transaction`]'s `Display`: logs, errors, tests, `nft -c`) and
//! as nf_tables netlink messages ([`super::wire`]), which is how it is applied. Only what the
//! proxy writes is here: a handful of statement kinds, six kinds of sets, three kinds of map
//! elements. Pure: no IO.

use std::fmt;
use std::net::IpAddr;

use super::model::Protocol;

/// An address family, and so a table: `ip shoal-proxy` or `ip6 shoal-proxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The table family, which is also the keyword of its network header (`ip daddr`).
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
}

/// Where a chain hangs in the packet path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl HookPoint {
    pub fn nft(self) -> &'static str {
        match self {
            HookPoint::Prerouting => "prerouting",
            HookPoint::Input => "input",
            HookPoint::Forward => "forward",
            HookPoint::Output => "output",
            HookPoint::Postrouting => "postrouting",
        }
    }
}

/// A base chain's type, hook and priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// `true`: a `nat` chain, else `filter`.
    pub nat: bool,
    pub point: HookPoint,
    pub priority: i32,
}

/// A verdict: in a rule or as a verdict map's value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Jump(String),
    Goto(String),
    Drop,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Jump(chain) => write!(f, "jump {chain}"),
            Verdict::Goto(chain) => write!(f, "goto {chain}"),
            Verdict::Drop => f.write_str("drop"),
        }
    }
}

/// A map's key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// `address . protocol . port` (a ClusterIP or external address).
    Address(IpAddr, Protocol, u16),
    /// `protocol . port` (a NodePort).
    Port(Protocol, u16),
    /// `block . index` in `backends` (a connection mark's block and a random index).
    Backend(u32, u32),
    /// `address . address`: a pod reaching itself (`hairpin`).
    Pair(IpAddr),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Address(ip, proto, port) => write!(f, "{ip} . {} . {port}", proto.nft()),
            Key::Port(proto, port) => write!(f, "{} . {port}", proto.nft()),
            Key::Backend(block, index) => write!(f, "{block} . {index}"),
            Key::Pair(ip) => write!(f, "{ip} . {ip}"),
        }
    }
}

/// A map's value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    Verdict(Verdict),
    Mark(u32),
    /// `address . port`: where `backends` sends a connection.
    Endpoint(IpAddr, u16),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Verdict(v) => v.fmt(f),
            Value::Mark(mark) => write!(f, "{mark}"),
            Value::Endpoint(ip, port) => write!(f, "{ip} . {port}"),
        }
    }
}

/// What a set or map holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    /// `ct mark . numgen random mod 1 : <family> daddr . tcp dport`: endpoint lists.
    Backends,
    /// `address . inet_proto . inet_service : mark`.
    AddressMarks,
    /// `address . inet_proto . inet_service : address . inet_service`: Services with a
    /// single endpoint.
    AddressEndpoints,
    /// `inet_proto . inet_service : mark`.
    PortMarks,
    /// `address . inet_proto . inet_service : verdict`.
    AddressVerdicts,
    /// `inet_proto . inet_service : verdict`.
    PortVerdicts,
    /// Client addresses that used an endpoint lately (ClientIP affinity), timing out.
    Affinity { timeout_secs: u32 },
    /// `address . address`: source and destination of a pod reaching itself.
    Hairpin,
}

/// A named set or map of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDecl {
    pub name: String,
    pub kind: SetKind,
}

impl SetDecl {
    fn body(&self, family: Family) -> String {
        let addr = family.addr_type();
        match self.kind {
            SetKind::Backends => format!(
                "typeof ct mark . numgen random mod 1 : {} daddr . tcp dport ;",
                family.nft()
            ),
            SetKind::AddressMarks => {
                format!("type {addr} . inet_proto . inet_service : mark ;")
            }
            SetKind::PortMarks => "type inet_proto . inet_service : mark ;".into(),
            SetKind::AddressEndpoints => {
                format!("type {addr} . inet_proto . inet_service : {addr} . inet_service ;")
            }
            SetKind::AddressVerdicts => {
                format!("type {addr} . inet_proto . inet_service : verdict ;")
            }
            SetKind::PortVerdicts => "type inet_proto . inet_service : verdict ;".into(),
            SetKind::Affinity { timeout_secs } => {
                format!("type {addr} ; flags dynamic,timeout ; timeout {timeout_secs}s ;")
            }
            SetKind::Hairpin => format!("type {addr} . {addr} ;"),
        }
    }

    /// Whether it is a map (elements carry a value).
    pub fn is_map(&self) -> bool {
        !matches!(self.kind, SetKind::Affinity { .. } | SetKind::Hairpin)
    }
}

/// The packet fields a map is looked up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    /// `<family> daddr . meta l4proto . th dport`
    Address(Family),
    /// `meta l4proto . th dport`
    Port,
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Address(family) => {
                write!(f, "{} daddr . meta l4proto . th dport", family.nft())
            }
            Selector::Port => f.write_str("meta l4proto . th dport"),
        }
    }
}

/// One statement of a rule: a match, an action or a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    /// `ct state new`
    CtStateNew,
    /// `ct status dnat`
    CtStatusDnat,
    /// `ct mark and <bits> != 0`
    CtMarkAny(u32),
    /// `ct mark set ct mark or <bits>`
    CtMarkOr(u32),
    /// `ct mark set <selector> map @<map>`
    CtMarkFromMap(Selector, String),
    /// `<selector> vmap @<map>`
    VerdictMap(Selector, String),
    /// `iifname "<name>"`
    Iifname(String),
    /// `oifname "<name>"`
    Oifname(String),
    /// `meta l4proto <protocol>`
    L4proto(Protocol),
    /// `fib daddr type local`
    DaddrLocal,
    /// `ip daddr != 127.0.0.0/8` / `ip6 daddr != ::1`
    DaddrNotLoopback(Family),
    /// `ip saddr != <network>/<prefix>`
    SaddrNotIn(IpAddr, u8),
    /// `ip saddr @<set>`
    SaddrInSet(Family, String),
    /// `ip saddr . ip daddr @<set>`
    PairInSet(Family, String),
    /// `update @<set> { ip saddr }`
    UpdateSaddr(Family, String),
    /// `numgen random mod <n> 0`
    RandomIsZero(u32),
    /// `dnat ip to ct mark and <mask> . numgen random mod <n> map @<map>`
    DnatBackends {
        family: Family,
        mask: u32,
        modulus: u32,
        map: String,
    },
    /// `dnat ip to ip daddr . meta l4proto . th dport map @<map>` (after a protocol match).
    DnatFromMap(Family, String),
    /// `dnat to <address>:<port>` (after a protocol match).
    DnatTo(IpAddr, u16),
    /// `masquerade fully-random`
    Masquerade,
    /// `reject with tcp reset` (after `meta l4proto tcp`)
    RejectTcpReset,
    /// `reject`: ICMP port unreachable.
    RejectPortUnreachable,
    Verdict(Verdict),
}

impl fmt::Display for Stmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stmt::CtStateNew => f.write_str("ct state new"),
            Stmt::CtStatusDnat => f.write_str("ct status dnat"),
            Stmt::CtMarkAny(bits) => write!(f, "ct mark and {bits:#x} != 0"),
            Stmt::CtMarkOr(bits) => write!(f, "ct mark set ct mark or {bits:#x}"),
            Stmt::CtMarkFromMap(sel, map) => write!(f, "ct mark set {sel} map @{map}"),
            Stmt::VerdictMap(sel, map) => write!(f, "{sel} vmap @{map}"),
            Stmt::Iifname(name) => write!(f, "iifname \"{name}\""),
            Stmt::Oifname(name) => write!(f, "oifname \"{name}\""),
            Stmt::L4proto(proto) => write!(f, "meta l4proto {}", proto.nft()),
            Stmt::DaddrLocal => f.write_str("fib daddr type local"),
            Stmt::DaddrNotLoopback(Family::V4) => f.write_str("ip daddr != 127.0.0.0/8"),
            Stmt::DaddrNotLoopback(Family::V6) => f.write_str("ip6 daddr != ::1"),
            Stmt::SaddrNotIn(net, prefix) => {
                write!(f, "{} saddr != {net}/{prefix}", Family::of(net).nft())
            }
            Stmt::SaddrInSet(family, set) => write!(f, "{} saddr @{set}", family.nft()),
            Stmt::PairInSet(family, set) => {
                let ip = family.nft();
                write!(f, "{ip} saddr . {ip} daddr @{set}")
            }
            Stmt::UpdateSaddr(family, set) => {
                write!(f, "update @{set} {{ {} saddr }}", family.nft())
            }
            Stmt::RandomIsZero(n) => write!(f, "numgen random mod {n} 0"),
            Stmt::DnatBackends {
                family,
                mask,
                modulus,
                map,
            } => write!(
                f,
                "dnat {} to ct mark and {mask:#x} . numgen random mod {modulus} map @{map}",
                family.nft()
            ),
            Stmt::DnatFromMap(family, map) => {
                let ip = family.nft();
                write!(f, "dnat {ip} to {} map @{map}", Selector::Address(*family))
            }
            Stmt::DnatTo(IpAddr::V4(ip), port) => write!(f, "dnat to {ip}:{port}"),
            Stmt::DnatTo(IpAddr::V6(ip), port) => write!(f, "dnat to [{ip}]:{port}"),
            Stmt::Masquerade => f.write_str("masquerade fully-random"),
            Stmt::RejectTcpReset => f.write_str("reject with tcp reset"),
            Stmt::RejectPortUnreachable => f.write_str("reject"),
            Stmt::Verdict(v) => v.fmt(f),
        }
    }
}

/// A rule: statements evaluated in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule(pub Vec<Stmt>);

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, stmt) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            stmt.fmt(f)?;
        }
        Ok(())
    }
}

/// A rule from its statements: `rule![a, b]`.
macro_rules! rule {
    ($($stmt:expr),* $(,)?) => {
        $crate::proxy::ruleset::Rule(vec![$($stmt),*])
    };
}
pub(crate) use rule;

/// One step of a transaction, on the table of its family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddTable,
    DeleteTable,
    AddChain(String, Option<Hook>),
    /// Removes every rule of a chain.
    FlushChain(String),
    DeleteChain(String),
    AddSet(SetDecl),
    DeleteSet(String),
    AddRule(String, Rule),
    /// Elements of a map (with values) or a set (without).
    AddElements(&'static str, Vec<(Key, Option<Value>)>),
    DeleteElements(&'static str, Vec<Key>),
}

/// Elements per `add element` line of the text form.
const ELEMENTS_PER_LINE: usize = 1000;

/// Changes to the proxy's tables applied as one: all or nothing, and no packet sees half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The tables' name (the same in both families).
    pub table: String,
    pub ops: Vec<(Family, Op)>,
}

impl Transaction {
    pub fn new(table: impl Into<String>) -> Self {
        Transaction {
            table: table.into(),
            ops: Vec::new(),
        }
    }

    pub fn push(&mut self, family: Family, op: Op) {
        self.ops.push((family, op));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The map elements it adds.
    pub fn element_count(&self) -> usize {
        self.ops
            .iter()
            .map(|(_, op)| match op {
                Op::AddElements(_, elements) => elements.len(),
                _ => 0,
            })
            .sum()
    }

    /// One op in nft syntax (one or more lines, each ending in a newline).
    pub fn op_text(&self, family: Family, op: &Op) -> String {
        let t = format!("{} {}", family.nft(), self.table);
        match op {
            Op::AddTable => format!("add table {t}\n"),
            Op::DeleteTable => format!("delete table {t}\n"),
            Op::AddChain(name, None) => format!("add chain {t} {name}\n"),
            Op::AddChain(name, Some(hook)) => format!(
                "add chain {t} {name} {{ type {} hook {} priority {} ; }}\n",
                if hook.nat { "nat" } else { "filter" },
                hook.point.nft(),
                hook.priority
            ),
            Op::FlushChain(name) => format!("flush chain {t} {name}\n"),
            Op::DeleteChain(name) => format!("delete chain {t} {name}\n"),
            Op::AddSet(decl) => format!(
                "add {} {t} {} {{ {} }}\n",
                if decl.is_map() { "map" } else { "set" },
                decl.name,
                decl.body(family)
            ),
            Op::DeleteSet(name) => format!("delete set {t} {name}\n"),
            Op::AddRule(chain, rule) => format!("add rule {t} {chain} {rule}\n"),
            Op::AddElements(map, elements) => {
                let mut out = String::new();
                for chunk in elements.chunks(ELEMENTS_PER_LINE) {
                    let items: Vec<String> = chunk
                        .iter()
                        .map(|(k, v)| match v {
                            Some(v) => format!("{k} : {v}"),
                            None => k.to_string(),
                        })
                        .collect();
                    out.push_str(&format!(
                        "add element {t} {map} {{ {} }}\n",
                        items.join(", ")
                    ));
                }
                out
            }
            Op::DeleteElements(map, keys) => {
                let mut out = String::new();
                for chunk in keys.chunks(ELEMENTS_PER_LINE) {
                    let items: Vec<String> = chunk.iter().map(Key::to_string).collect();
                    out.push_str(&format!(
                        "delete element {t} {map} {{ {} }}\n",
                        items.join(", ")
                    ));
                }
                out
            }
        }
    }
}

/// The transaction as an `nft -f` script.
impl fmt::Display for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (family, op) in &self.ops {
            f.write_str(&self.op_text(*family, op))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn statements_in_nft_syntax() {
        let r = rule![
            Stmt::DaddrLocal,
            Stmt::DaddrNotLoopback(Family::V6),
            Stmt::CtMarkFromMap(Selector::Port, "nodeport-marks".into())
        ];
        assert_eq!(
            r.to_string(),
            "fib daddr type local ip6 daddr != ::1 ct mark set meta l4proto . th dport map @nodeport-marks"
        );
        assert_eq!(
            Stmt::SaddrNotIn("fd42::".parse().unwrap(), 48).to_string(),
            "ip6 saddr != fd42::/48"
        );
        assert_eq!(
            Stmt::DnatTo("fd42::5".parse().unwrap(), 8080).to_string(),
            "dnat to [fd42::5]:8080"
        );
        assert_eq!(
            Stmt::DnatBackends {
                family: Family::V6,
                mask: 0x3fff_ffff,
                modulus: 3,
                map: "backends".into()
            }
            .to_string(),
            "dnat ip6 to ct mark and 0x3fffffff . numgen random mod 3 map @backends"
        );
    }

    #[test]
    fn transaction_as_script() {
        let mut tx = Transaction::new("t");
        tx.push(
            Family::V6,
            Op::AddSet(SetDecl {
                name: "backends".into(),
                kind: SetKind::Backends,
            }),
        );
        tx.push(
            Family::V4,
            Op::AddChain(
                "nat-output".into(),
                Some(Hook {
                    nat: true,
                    point: HookPoint::Output,
                    priority: -100,
                }),
            ),
        );
        let elements: Vec<(Key, Option<Value>)> = (0..1001)
            .map(|i| (Key::Backend(4096, i), Some(Value::Mark(i))))
            .collect();
        tx.push(Family::V4, Op::AddElements("m", elements));
        let text = tx.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "add map ip6 t backends { typeof ct mark . numgen random mod 1 : ip6 daddr . tcp dport ; }"
        );
        assert_eq!(
            lines[1],
            "add chain ip t nat-output { type nat hook output priority -100 ; }"
        );
        assert_eq!(lines.len(), 4, "1001 elements on two lines");
        assert!(lines[3].starts_with("add element ip t m { 4096 . 1000 : 1000 }"));
        assert_eq!(tx.element_count(), 1001);
    }
}
