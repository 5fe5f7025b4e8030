//! A [`Transaction`] as nf_tables netlink messages: one nfnetlink batch (begin, the
//! messages, end), which the kernel applies as one transaction. Pure: bytes out, no IO.
//!
//! Why not `nft -f`: nft's parser costs ~5 µs per map element (0.6 s of CPU for the
//! 120,000 elements of 10,000 Services × 10 endpoints), more than the kernel's own work; here
//! an element is a few dozen bytes written in a few nanoseconds. Every message is encoded as
//! nft 1.0.6 encodes the same command (registers, attribute order, set user data), so
//! `nft list` shows the table exactly as if nft had written it; `tests/proxy_netns.rs` checks
//! that against nft itself.

use std::net::IpAddr;

use super::model::Protocol;
use super::ruleset::{
    Family, Key, Op, Selector, SetDecl, SetKind, Stmt, Transaction, Value, Verdict,
};

// Netlink and nfnetlink framing.
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// Header of a netlink message plus nfgenmsg.
pub const HEADER_LEN: usize = 20;

// nf_tables message types.
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

// Attributes, by object (include/uapi/linux/netfilter/nf_tables.h).
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NF_DROP: i32 = 0;

// nft's data type ids (src/datatype.h), 6 bits each in a concatenation.
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_MARK: u32 = 19;

fn concat_type(types: &[u32]) -> u32 {
    types.iter().fold(0, |acc, t| (acc << 6) | t)
}

/// The largest nested attribute (its length is 16 bits): element lists are split below it.
const MAX_NEST: usize = 60_000;

/// A batch ready to send, with which op each message came from (to name a failure).
#[derive(Debug)]
pub struct Batch {
    pub bytes: Vec<u8>,
    /// Sequence number of the batch-begin message; message `i` of the transaction has
    /// `first_seq + 1 + i`.
    pub first_seq: u32,
    /// For each message after batch-begin (batch-end excluded), the index of its op.
    pub op_of_message: Vec<usize>,
}

impl Batch {
    /// The op a reply's sequence number names, if it names one.
    pub fn op_index(&self, seq: u32) -> Option<usize> {
        let i = seq.checked_sub(self.first_seq)?.checked_sub(1)?;
        self.op_of_message.get(usize::try_from(i).ok()?).copied()
    }

    /// The sequence number of the last message that asks for an acknowledgement.
    pub fn last_seq(&self) -> u32 {
        self.first_seq + self.op_of_message.len() as u32
    }
}

/// Writes netlink messages and attributes (native-endian headers, 4-byte alignment).
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn begin_msg(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    fn end_msg(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        self.buf
            .extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn str(&mut self, ty: u16, s: &str) {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.attr(ty, &data);
    }

    fn be32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Writer)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        f(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// `NFTA_DATA_VALUE` inside a nest of type `ty`.
    fn data(&mut self, ty: u16, value: &[u8]) {
        self.nest(ty, |w| w.attr(NFTA_DATA_VALUE, value));
    }

    fn verdict(&mut self, ty: u16, verdict: &Verdict) {
        let (code, chain) = match verdict {
            Verdict::Jump(chain) => (NFT_JUMP, Some(chain)),
            Verdict::Goto(chain) => (NFT_GOTO, Some(chain)),
            Verdict::Drop => (NF_DROP, None),
        };
        self.nest(ty, |w| {
            w.nest(NFTA_DATA_VERDICT, |w| {
                w.attr(NFTA_VERDICT_CODE, &code.to_be_bytes());
                if let Some(chain) = chain {
                    w.str(NFTA_VERDICT_CHAIN, chain);
                }
            })
        });
    }

    fn expr(&mut self, name: &str, f: impl FnOnce(&mut Writer)) {
        self.nest(NFTA_LIST_ELEM, |w| {
            w.str(NFTA_EXPR_NAME, name);
            w.nest(NFTA_EXPR_DATA, f);
        });
    }
}

/// The register holding 32-bit slot `slot` of the register file, as nft names it: a 16-byte
/// register (`NFT_REG_1`…) when the slot starts one, else a 32-bit one (`NFT_REG32_00`+).
fn reg(slot: u32) -> u32 {
    if slot % 4 == 0 {
        1 + slot / 4
    } else {
        8 + slot
    }
}

fn addr_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

fn proto_number(proto: Protocol) -> u8 {
    match proto {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// A 16-bit port in a 32-bit register (network order, zero padded), as concatenations hold it.
fn port_slot(port: u16) -> [u8; 4] {
    let [hi, lo] = port.to_be_bytes();
    [hi, lo, 0, 0]
}

fn key_bytes(key: &Key) -> Vec<u8> {
    match key {
        Key::Address(ip, proto, port) => {
            let mut b = addr_bytes(ip);
            b.extend_from_slice(&[proto_number(*proto), 0, 0, 0]);
            b.extend_from_slice(&port_slot(*port));
            b
        }
        Key::Port(proto, port) => {
            let mut b = vec![proto_number(*proto), 0, 0, 0];
            b.extend_from_slice(&port_slot(*port));
            b
        }
        // Connection marks and numgen results are host-order integers.
        Key::Backend(block, index) => {
            let mut b = block.to_ne_bytes().to_vec();
            b.extend_from_slice(&index.to_ne_bytes());
            b
        }
        Key::Pair(ip) => {
            let mut b = addr_bytes(ip);
            b.extend_from_slice(&addr_bytes(ip));
            b
        }
    }
}

// Expression attributes.
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_STATUS: u32 = 2;
const IPS_DST_NAT: u32 = 0x20;
const NFT_CT_MARK: u32 = 3;
const NFT_CT_STATE_NEW: u32 = 8;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;
const NFT_REJECT_ICMP_UNREACH: u32 = 0;
const NFT_REJECT_TCP_RST: u32 = 1;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMPV6_PORT_UNREACH: u8 = 4;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 2;
const RTN_LOCAL: u32 = 2;
const NFT_NG_RANDOM: u32 = 1;
const NFT_DYNSET_OP_UPDATE: u32 = 1;
const NFPROTO_IPV4: u32 = 2;
const NFPROTO_IPV6: u32 = 10;
const IFNAMSIZ: usize = 16;

fn nfproto(family: Family) -> u32 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

fn payload(w: &mut Writer, base: u32, offset: u32, len: u32, slot: u32) {
    w.expr("payload", |w| {
        w.be32(1, reg(slot));
        w.be32(2, base);
        w.be32(3, offset);
        w.be32(4, len);
    });
}

fn meta(w: &mut Writer, key: u32, slot: u32) {
    w.expr("meta", |w| {
        w.be32(2, key);
        w.be32(1, reg(slot));
    });
}

fn cmp(w: &mut Writer, op: u32, data: &[u8]) {
    w.expr("cmp", |w| {
        w.be32(1, reg(0));
        w.be32(2, op);
        w.data(3, data);
    });
}

/// `reg = (reg & mask) ^ xor` on the first slot.
fn bitwise(w: &mut Writer, mask: &[u8], xor: &[u8]) {
    w.expr("bitwise", |w| {
        w.be32(1, reg(0));
        w.be32(2, reg(0));
        w.be32(6, 0);
        w.be32(3, mask.len() as u32);
        w.data(4, mask);
        w.data(5, xor);
    });
}

fn ct_load(w: &mut Writer, key: u32) {
    w.expr("ct", |w| {
        w.be32(2, key);
        w.be32(1, reg(0));
    });
}

fn ct_set_mark(w: &mut Writer) {
    w.expr("ct", |w| {
        w.be32(2, NFT_CT_MARK);
        w.be32(4, reg(0));
    });
}

/// Looks up the value in slot 0 onwards; `dreg`: where the mapped value goes (`Some(0)`
/// is the verdict register), `None` for a plain membership test.
fn lookup(w: &mut Writer, set: &str, dreg: Option<u32>) {
    w.expr("lookup", |w| {
        w.be32(2, reg(0));
        if let Some(dreg) = dreg {
            w.be32(3, dreg);
        }
        w.str(1, set);
    });
}

fn numgen(w: &mut Writer, modulus: u32, slot: u32) {
    w.expr("numgen", |w| {
        w.be32(1, reg(slot));
        w.be32(2, modulus);
        w.be32(3, NFT_NG_RANDOM);
        w.be32(4, 0);
    });
}

/// Loads the selector's fields from slot 0 on.
fn load_selector(w: &mut Writer, selector: Selector) {
    let mut slot = 0;
    if let Selector::Address(family) = selector {
        let (offset, len) = daddr(family);
        payload(w, NFT_PAYLOAD_NETWORK_HEADER, offset, len, 0);
        slot = len / 4;
    }
    meta(w, NFT_META_L4PROTO, slot);
    payload(w, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, slot + 1);
}

/// Offset and length of the destination address in the network header.
fn daddr(family: Family) -> (u32, u32) {
    match family {
        Family::V4 => (16, 4),
        Family::V6 => (24, 16),
    }
}

fn saddr(family: Family) -> (u32, u32) {
    match family {
        Family::V4 => (12, 4),
        Family::V6 => (8, 16),
    }
}

fn ifname(name: &str) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.resize(IFNAMSIZ.max(b.len()), 0);
    b
}

/// DNAT to the `address . port` a map lookup left from slot 0 on.
fn dnat_mapped(w: &mut Writer, family: Family) {
    // The port follows the address's slots.
    let port_slot = daddr(family).1 / 4;
    w.expr("nat", |w| {
        w.be32(1, NFT_NAT_DNAT);
        w.be32(2, nfproto(family));
        w.be32(3, reg(0));
        w.be32(5, reg(port_slot));
    });
}

fn stmt(w: &mut Writer, family: Family, s: &Stmt) {
    match s {
        Stmt::CtStateNew => {
            ct_load(w, NFT_CT_STATE);
            bitwise(w, &NFT_CT_STATE_NEW.to_ne_bytes(), &[0; 4]);
            cmp(w, NFT_CMP_NEQ, &[0; 4]);
        }
        Stmt::CtStatusDnat => {
            ct_load(w, NFT_CT_STATUS);
            bitwise(w, &IPS_DST_NAT.to_ne_bytes(), &[0; 4]);
            cmp(w, NFT_CMP_NEQ, &[0; 4]);
        }
        Stmt::CtMarkAny(bits) => {
            ct_load(w, NFT_CT_MARK);
            bitwise(w, &bits.to_ne_bytes(), &[0; 4]);
            cmp(w, NFT_CMP_NEQ, &[0; 4]);
        }
        Stmt::CtMarkOr(bits) => {
            ct_load(w, NFT_CT_MARK);
            bitwise(w, &(!bits).to_ne_bytes(), &bits.to_ne_bytes());
            ct_set_mark(w);
        }
        Stmt::CtMarkFromMap(selector, map) => {
            load_selector(w, *selector);
            lookup(w, map, Some(reg(0)));
            ct_set_mark(w);
        }
        Stmt::VerdictMap(selector, map) => {
            load_selector(w, *selector);
            lookup(w, map, Some(0));
        }
        Stmt::Iifname(name) => {
            meta(w, NFT_META_IIFNAME, 0);
            cmp(w, NFT_CMP_EQ, &ifname(name));
        }
        Stmt::Oifname(name) => {
            meta(w, NFT_META_OIFNAME, 0);
            cmp(w, NFT_CMP_EQ, &ifname(name));
        }
        Stmt::L4proto(proto) => {
            meta(w, NFT_META_L4PROTO, 0);
            cmp(w, NFT_CMP_EQ, &[proto_number(*proto)]);
        }
        Stmt::DaddrLocal => {
            w.expr("fib", |w| {
                w.be32(3, NFTA_FIB_F_DADDR);
                w.be32(2, NFT_FIB_RESULT_ADDRTYPE);
                w.be32(1, reg(0));
            });
            cmp(w, NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes());
        }
        Stmt::DaddrNotLoopback(family) => {
            let (offset, len) = daddr(*family);
            match family {
                // 127.0.0.0/8: the first byte.
                Family::V4 => {
                    payload(w, NFT_PAYLOAD_NETWORK_HEADER, offset, 1, 0);
                    cmp(w, NFT_CMP_NEQ, &[127]);
                }
                Family::V6 => {
                    payload(w, NFT_PAYLOAD_NETWORK_HEADER, offset, len, 0);
                    cmp(w, NFT_CMP_NEQ, &std::net::Ipv6Addr::LOCALHOST.octets());
                }
            }
        }
        Stmt::SaddrNotIn(net, prefix) => {
            let (offset, len) = saddr(Family::of(net));
            let bytes = addr_bytes(net);
            let prefix = u32::from(*prefix).min(len * 8);
            if prefix % 8 == 0 {
                // Whole bytes: compare only those, as nft does.
                let n = (prefix / 8).max(1);
                payload(w, NFT_PAYLOAD_NETWORK_HEADER, offset, n, 0);
                cmp(w, NFT_CMP_NEQ, &bytes[..n as usize]);
            } else {
                let mask: Vec<u8> = (0..len)
                    .map(|i| {
                        let bits = prefix.saturating_sub(i * 8).min(8);
                        (0xffu16 << (8 - bits)) as u8
                    })
                    .collect();
                let masked: Vec<u8> = bytes.iter().zip(&mask).map(|(b, m)| b & m).collect();
                payload(w, NFT_PAYLOAD_NETWORK_HEADER, offset, len, 0);
                bitwise(w, &mask, &vec![0; mask.len()]);
                cmp(w, NFT_CMP_NEQ, &masked);
            }
        }
        Stmt::SaddrInSet(family, set) => {
            let (offset, len) = saddr(*family);
            payload(w, NFT_PAYLOAD_NETWORK_HEADER, offset, len, 0);
            lookup(w, set, None);
        }
        Stmt::PairInSet(family, set) => {
            let (offset, len) = saddr(*family);
            payload(w, NFT_PAYLOAD_NETWORK_HEADER, offset, len, 0);
            let (offset, len) = daddr(*family);
            payload(w, NFT_PAYLOAD_NETWORK_HEADER, offset, len, len / 4);
            lookup(w, set, None);
        }
        Stmt::UpdateSaddr(family, set) => {
            let (offset, len) = saddr(*family);
            payload(w, NFT_PAYLOAD_NETWORK_HEADER, offset, len, 0);
            w.expr("dynset", |w| {
                w.be32(4, reg(0));
                w.be32(3, NFT_DYNSET_OP_UPDATE);
                w.str(1, set);
            });
        }
        Stmt::RandomIsZero(modulus) => {
            numgen(w, *modulus, 0);
            cmp(w, NFT_CMP_EQ, &[0; 4]);
        }
        Stmt::DnatBackends {
            family,
            mask,
            modulus,
            map,
        } => {
            ct_load(w, NFT_CT_MARK);
            bitwise(w, &mask.to_ne_bytes(), &[0; 4]);
            numgen(w, *modulus, 1);
            lookup(w, map, Some(reg(0)));
            dnat_mapped(w, *family);
        }
        Stmt::DnatFromMap(family, map) => {
            load_selector(w, Selector::Address(*family));
            lookup(w, map, Some(reg(0)));
            dnat_mapped(w, *family);
        }
        Stmt::DnatTo(ip, port) => {
            w.expr("immediate", |w| {
                w.be32(1, reg(0));
                w.data(2, &addr_bytes(ip));
            });
            w.expr("immediate", |w| {
                w.be32(1, reg(4));
                w.data(2, &port.to_be_bytes());
            });
            w.expr("nat", |w| {
                w.be32(1, NFT_NAT_DNAT);
                w.be32(2, nfproto(Family::of(ip)));
                w.be32(3, reg(0));
                w.be32(5, reg(4));
                w.be32(7, NF_NAT_RANGE_PROTO_SPECIFIED);
            });
        }
        Stmt::Masquerade => {
            w.expr("masq", |w| w.be32(1, NF_NAT_RANGE_PROTO_RANDOM_FULLY));
        }
        Stmt::RejectTcpReset => {
            w.expr("reject", |w| {
                w.be32(1, NFT_REJECT_TCP_RST);
                w.attr(2, &[0]);
            });
        }
        Stmt::RejectPortUnreachable => {
            let code = match family {
                Family::V4 => ICMP_PORT_UNREACH,
                Family::V6 => ICMPV6_PORT_UNREACH,
            };
            w.expr("reject", |w| {
                w.be32(1, NFT_REJECT_ICMP_UNREACH);
                w.attr(2, &[code]);
            });
        }
        Stmt::Verdict(verdict) => {
            w.expr("immediate", |w| {
                w.be32(1, 0);
                w.verdict(2, verdict);
            });
        }
    }
}

/// nft's set user data (libnftnl's `NFTNL_UDATA_SET_*`: 1-byte type, 1-byte length): how nft
/// prints keys and values back. The kernel only stores it.
struct Udata(Vec<u8>);

impl Udata {
    fn new() -> Self {
        Udata(Vec::new())
    }

    fn u32(mut self, ty: u8, v: u32) -> Self {
        self.0.extend_from_slice(&[ty, 4]);
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }

    fn nest(mut self, ty: u8, inner: Udata) -> Self {
        self.0.extend_from_slice(&[ty, inner.0.len() as u8]);
        self.0.extend_from_slice(&inner.0);
        self
    }

    /// A `typeof` expression: its nft expression type and its own data.
    fn expr(ty: u32, data: Udata) -> Udata {
        Udata::new().u32(0, ty).nest(1, data)
    }
}

const UDATA_KEYBYTEORDER: u8 = 0;
const UDATA_DATABYTEORDER: u8 = 1;
const UDATA_KEY_TYPEOF: u8 = 3;
const UDATA_DATA_TYPEOF: u8 = 4;
const UDATA_DATA_INTERVAL: u8 = 6;
const BYTEORDER_INVALID: u32 = 0;
const BYTEORDER_HOST: u32 = 1;
const BYTEORDER_BIG: u32 = 2;
// nft's expression types (src/expression.h) and protocol descriptions (src/proto.h).
const EXPR_PAYLOAD: u32 = 7;
const EXPR_CT: u32 = 12;
const EXPR_CONCAT: u32 = 13;
const EXPR_NUMGEN: u32 = 23;
const PROTO_DESC_TCP: u32 = 8;
const PROTO_DESC_IP: u32 = 12;
const PROTO_DESC_IP6: u32 = 13;
const IPHDR_DADDR: u32 = 12;
const IP6HDR_DADDR: u32 = 9;
const TCPHDR_DPORT: u32 = 2;

fn concat(items: Vec<Udata>) -> Udata {
    let mut list = Udata::new();
    for (i, item) in items.into_iter().enumerate() {
        list = list.nest(i as u8, item);
    }
    Udata::expr(EXPR_CONCAT, list)
}

fn payload_udata(desc: u32, field: u32) -> Udata {
    Udata::expr(EXPR_PAYLOAD, Udata::new().u32(0, desc).u32(1, field))
}

struct SetSpec {
    flags: u32,
    key_type: u32,
    key_len: u32,
    /// Data type and length, for maps.
    data: Option<(u32, u32)>,
    timeout_ms: Option<u64>,
    udata: Udata,
}

fn set_spec(family: Family, kind: SetKind) -> SetSpec {
    let (addr_type, addr_len) = match family {
        Family::V4 => (TYPE_IPADDR, 4),
        Family::V6 => (TYPE_IP6ADDR, 16),
    };
    // `type a . b . c` concatenations: nft notes a concatenation with no expressions.
    let typed = |data_order| {
        Udata::new()
            .u32(UDATA_KEYBYTEORDER, BYTEORDER_INVALID)
            .u32(UDATA_DATABYTEORDER, data_order)
            .nest(UDATA_KEY_TYPEOF, concat(Vec::new()))
            .u32(UDATA_DATA_INTERVAL, 0)
    };
    let address_key = concat_type(&[addr_type, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]);
    let port_key = concat_type(&[TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]);
    match kind {
        SetKind::Backends => {
            let (desc, field) = match family {
                Family::V4 => (PROTO_DESC_IP, IPHDR_DADDR),
                Family::V6 => (PROTO_DESC_IP6, IP6HDR_DADDR),
            };
            let key = concat(vec![
                Udata::expr(EXPR_CT, Udata::new().u32(0, NFT_CT_MARK).u32(1, u32::MAX)),
                Udata::expr(
                    EXPR_NUMGEN,
                    Udata::new().u32(0, NFT_NG_RANDOM).u32(1, 1).u32(2, 0),
                ),
            ]);
            let data = concat(vec![
                payload_udata(desc, field),
                payload_udata(PROTO_DESC_TCP, TCPHDR_DPORT),
            ]);
            SetSpec {
                flags: NFT_SET_MAP,
                key_type: concat_type(&[TYPE_MARK, TYPE_INTEGER]),
                key_len: 8,
                data: Some((concat_type(&[addr_type, TYPE_INET_SERVICE]), addr_len + 4)),
                timeout_ms: None,
                udata: Udata::new()
                    .u32(UDATA_KEYBYTEORDER, BYTEORDER_INVALID)
                    .u32(UDATA_DATABYTEORDER, BYTEORDER_INVALID)
                    .nest(UDATA_KEY_TYPEOF, key)
                    .nest(UDATA_DATA_TYPEOF, data)
                    .u32(UDATA_DATA_INTERVAL, 0),
            }
        }
        SetKind::AddressMarks | SetKind::PortMarks => SetSpec {
            flags: NFT_SET_MAP,
            key_type: if kind == SetKind::PortMarks {
                port_key
            } else {
                address_key
            },
            key_len: if kind == SetKind::PortMarks {
                8
            } else {
                addr_len + 8
            },
            data: Some((TYPE_MARK, 4)),
            timeout_ms: None,
            udata: typed(BYTEORDER_HOST),
        },
        // nft notes the `type` data as an empty concatenation too.
        SetKind::AddressEndpoints => SetSpec {
            flags: NFT_SET_MAP,
            key_type: address_key,
            key_len: addr_len + 8,
            data: Some((concat_type(&[addr_type, TYPE_INET_SERVICE]), addr_len + 4)),
            timeout_ms: None,
            udata: Udata::new()
                .u32(UDATA_KEYBYTEORDER, BYTEORDER_INVALID)
                .u32(UDATA_DATABYTEORDER, BYTEORDER_INVALID)
                .nest(UDATA_KEY_TYPEOF, concat(Vec::new()))
                .nest(UDATA_DATA_TYPEOF, concat(Vec::new()))
                .u32(UDATA_DATA_INTERVAL, 0),
        },
        SetKind::AddressVerdicts | SetKind::PortVerdicts => SetSpec {
            flags: NFT_SET_MAP,
            key_type: if kind == SetKind::PortVerdicts {
                port_key
            } else {
                address_key
            },
            key_len: if kind == SetKind::PortVerdicts {
                8
            } else {
                addr_len + 8
            },
            data: Some((NFT_DATA_VERDICT, 0)),
            timeout_ms: None,
            udata: typed(BYTEORDER_INVALID),
        },
        SetKind::Affinity { timeout_secs } => SetSpec {
            flags: NFT_SET_TIMEOUT | NFT_SET_EVAL,
            key_type: addr_type,
            key_len: addr_len,
            data: None,
            timeout_ms: Some(u64::from(timeout_secs) * 1000),
            udata: Udata::new().u32(UDATA_KEYBYTEORDER, BYTEORDER_BIG),
        },
        SetKind::Hairpin => SetSpec {
            flags: 0,
            key_type: concat_type(&[addr_type, addr_type]),
            key_len: addr_len * 2,
            data: None,
            timeout_ms: None,
            udata: Udata::new()
                .u32(UDATA_KEYBYTEORDER, BYTEORDER_INVALID)
                .nest(UDATA_KEY_TYPEOF, concat(Vec::new())),
        },
    }
}

fn hooknum(point: super::ruleset::HookPoint) -> u32 {
    use super::ruleset::HookPoint::*;
    match point {
        Prerouting => 0,
        Input => 1,
        Forward => 2,
        Output => 3,
        Postrouting => 4,
    }
}

fn family_byte(family: Family) -> u8 {
    nfproto(family) as u8
}

/// Encodes `tx` as one batch whose messages are numbered from `first_seq`.
pub fn encode(tx: &Transaction, first_seq: u32) -> Batch {
    let mut w = Writer {
        buf: Vec::with_capacity(4096 + tx.element_count() * 48),
    };
    let res_id = NFNL_SUBSYS_NFTABLES;
    let begin = w.begin_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first_seq, 0, res_id);
    w.end_msg(begin);
    let mut op_of_message = Vec::new();
    let mut seq = first_seq;
    let table = tx.table.as_str();
    let mut set_id = 0u32;
    for (index, (family, op)) in tx.ops.iter().enumerate() {
        let fam = family_byte(*family);
        let mut message = |w: &mut Writer, ty: u16, flags: u16, f: &mut dyn FnMut(&mut Writer)| {
            seq += 1;
            op_of_message.push(index);
            let start = w.begin_msg(
                (NFNL_SUBSYS_NFTABLES << 8) | ty,
                NLM_F_REQUEST | NLM_F_ACK | flags,
                seq,
                fam,
                0,
            );
            f(w);
            w.end_msg(start);
        };
        match op {
            Op::AddTable => message(&mut w, NFT_MSG_NEWTABLE, NLM_F_CREATE, &mut |w| {
                w.str(NFTA_TABLE_NAME, table);
                w.be32(NFTA_TABLE_FLAGS, 0);
            }),
            Op::DeleteTable => message(&mut w, NFT_MSG_DELTABLE, 0, &mut |w| {
                w.str(NFTA_TABLE_NAME, table);
            }),
            Op::AddChain(name, hook) => message(&mut w, NFT_MSG_NEWCHAIN, NLM_F_CREATE, &mut |w| {
                w.str(NFTA_CHAIN_TABLE, table);
                w.str(NFTA_CHAIN_NAME, name);
                if let Some(hook) = hook {
                    w.str(NFTA_CHAIN_TYPE, if hook.nat { "nat" } else { "filter" });
                    w.nest(NFTA_CHAIN_HOOK, |w| {
                        w.be32(NFTA_HOOK_HOOKNUM, hooknum(hook.point));
                        w.attr(NFTA_HOOK_PRIORITY, &hook.priority.to_be_bytes());
                    });
                }
            }),
            // Deleting a chain's rules without naming one deletes them all.
            Op::FlushChain(name) => message(&mut w, NFT_MSG_DELRULE, 0, &mut |w| {
                w.str(NFTA_RULE_TABLE, table);
                w.str(NFTA_RULE_CHAIN, name);
            }),
            Op::DeleteChain(name) => message(&mut w, NFT_MSG_DELCHAIN, 0, &mut |w| {
                w.str(NFTA_CHAIN_TABLE, table);
                w.str(NFTA_CHAIN_NAME, name);
            }),
            Op::AddSet(decl) => {
                set_id += 1;
                let id = set_id;
                message(&mut w, NFT_MSG_NEWSET, NLM_F_CREATE, &mut |w| {
                    add_set(w, table, *family, decl, id)
                });
            }
            Op::DeleteSet(name) => message(&mut w, NFT_MSG_DELSET, 0, &mut |w| {
                w.str(NFTA_SET_TABLE, table);
                w.str(NFTA_SET_NAME, name);
            }),
            Op::AddRule(chain, rule) => message(
                &mut w,
                NFT_MSG_NEWRULE,
                NLM_F_CREATE | NLM_F_APPEND,
                &mut |w| {
                    w.str(NFTA_RULE_TABLE, table);
                    w.str(NFTA_RULE_CHAIN, chain);
                    w.nest(NFTA_RULE_EXPRESSIONS, |w| {
                        for s in &rule.0 {
                            stmt(w, *family, s);
                        }
                    });
                },
            ),
            Op::AddElements(map, elements) => {
                let mut rest = elements.as_slice();
                while !rest.is_empty() {
                    let mut taken = 0;
                    message(&mut w, NFT_MSG_NEWSETELEM, NLM_F_CREATE, &mut |w| {
                        taken = element_list(w, table, map, rest, |w, (key, value)| {
                            w.data(NFTA_SET_ELEM_KEY, &key_bytes(key));
                            match value {
                                None => {}
                                Some(Value::Verdict(v)) => w.verdict(NFTA_SET_ELEM_DATA, v),
                                Some(Value::Mark(mark)) => {
                                    w.data(NFTA_SET_ELEM_DATA, &mark.to_ne_bytes())
                                }
                                Some(Value::Endpoint(ip, port)) => {
                                    let mut b = addr_bytes(ip);
                                    b.extend_from_slice(&port_slot(*port));
                                    w.data(NFTA_SET_ELEM_DATA, &b);
                                }
                            }
                        });
                    });
                    rest = &rest[taken..];
                }
            }
            Op::DeleteElements(map, keys) => {
                let mut rest = keys.as_slice();
                while !rest.is_empty() {
                    let mut taken = 0;
                    message(&mut w, NFT_MSG_DELSETELEM, 0, &mut |w| {
                        taken = element_list(w, table, map, rest, |w, key| {
                            w.data(NFTA_SET_ELEM_KEY, &key_bytes(key));
                        });
                    });
                    rest = &rest[taken..];
                }
            }
        }
    }
    let end = w.begin_msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1, 0, res_id);
    w.end_msg(end);
    Batch {
        bytes: w.buf,
        first_seq,
        op_of_message,
    }
}

/// Writes as many of `items` as fit one element list; returns how many.
fn element_list<T>(
    w: &mut Writer,
    table: &str,
    map: &str,
    items: &[T],
    mut element: impl FnMut(&mut Writer, &T),
) -> usize {
    w.str(NFTA_SET_ELEM_LIST_TABLE, table);
    w.str(NFTA_SET_ELEM_LIST_SET, map);
    let mut taken = 0;
    w.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |w| {
        let start = w.buf.len();
        for item in items {
            // At least one per message; an element is far below the limit.
            if taken > 0 && w.buf.len() - start > MAX_NEST {
                break;
            }
            w.nest(NFTA_LIST_ELEM, |w| element(w, item));
            taken += 1;
        }
    });
    taken
}

fn add_set(w: &mut Writer, table: &str, family: Family, decl: &SetDecl, id: u32) {
    let spec = set_spec(family, decl.kind);
    w.str(NFTA_SET_TABLE, table);
    w.str(NFTA_SET_NAME, &decl.name);
    w.be32(NFTA_SET_FLAGS, spec.flags);
    w.be32(NFTA_SET_KEY_TYPE, spec.key_type);
    w.be32(NFTA_SET_KEY_LEN, spec.key_len);
    if let Some((ty, len)) = spec.data {
        w.be32(NFTA_SET_DATA_TYPE, ty);
        w.be32(NFTA_SET_DATA_LEN, len);
    }
    w.be32(NFTA_SET_ID, id);
    if let Some(ms) = spec.timeout_ms {
        w.attr(NFTA_SET_TIMEOUT, &ms.to_be_bytes());
    }
    w.attr(NFTA_SET_USERDATA, &spec.udata.0);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::proxy::ruleset::{rule, Hook, HookPoint, Rule};

    fn hex(b: &[u8]) -> String {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The messages of `tx` after batch-begin, without their 20-byte headers.
    fn bodies(tx: &Transaction) -> Vec<Vec<u8>> {
        let batch = encode(tx, 0);
        let mut out = Vec::new();
        let mut rest = &batch.bytes[..];
        while rest.len() >= HEADER_LEN {
            let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
            out.push(rest[HEADER_LEN..len].to_vec());
            rest = &rest[len..];
        }
        // Drop batch begin and end.
        out.remove(0);
        out.pop();
        out
    }

    fn one(family: Family, op: Op) -> Vec<u8> {
        let mut tx = Transaction::new("shoal-proxy");
        tx.push(family, op);
        bodies(&tx).remove(0)
    }

    /// Attribute bytes as nft 1.0.6 sends them (`nft --debug=mnl`), for the same command.
    #[test]
    fn set_declarations_match_nft() {
        let backends = one(
            Family::V4,
            Op::AddSet(SetDecl {
                name: "backends".into(),
                kind: SetKind::Backends,
            }),
        );
        let udata = "00 04 00 00 00 00 01 04 00 00 00 00 03 3a 00 04 0d 00 00 00 01 32 00 14 \
                     00 04 0c 00 00 00 01 0c 00 04 03 00 00 00 01 04 ff ff ff ff 01 1a 00 04 \
                     17 00 00 00 01 12 00 04 01 00 00 00 01 04 01 00 00 00 02 04 00 00 00 00 \
                     04 34 00 04 0d 00 00 00 01 2c 00 14 00 04 07 00 00 00 01 0c 00 04 0c 00 \
                     00 00 01 04 0c 00 00 00 01 14 00 04 07 00 00 00 01 0c 00 04 08 00 00 00 \
                     01 04 02 00 00 00 06 04 00 00 00 00";
        let text = hex(&backends);
        assert!(
            text.ends_with(&udata.split_whitespace().collect::<Vec<_>>().join(" ")),
            "{text}"
        );
        // flags MAP, key mark . integer (8 bytes), data ipv4_addr . inet_service (8 bytes).
        assert!(text.contains(
            "08 00 03 00 00 00 00 08 08 00 04 00 00 00 04 c4 08 00 05 00 00 00 00 08 \
             08 00 06 00 00 00 01 cd 08 00 07 00 00 00 00 08"
        ));
        let marks = hex(&one(
            Family::V6,
            Op::AddSet(SetDecl {
                name: "service-marks".into(),
                kind: SetKind::AddressMarks,
            }),
        ));
        assert!(
            marks.contains("08 00 04 00 00 00 83 0d 08 00 05 00 00 00 00 18"),
            "{marks}"
        );
        assert!(marks.ends_with(
            "20 00 0d 00 00 04 00 00 00 00 01 04 01 00 00 00 03 08 00 04 0d 00 00 00 01 00 06 04 00 00 00 00"
        ), "{marks}");
        // `type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service`.
        let endpoints = hex(&one(
            Family::V4,
            Op::AddSet(SetDecl {
                name: "service-endpoints".into(),
                kind: SetKind::AddressEndpoints,
            }),
        ));
        assert!(
            endpoints.contains(
                "08 00 03 00 00 00 00 08 08 00 04 00 00 00 73 0d 08 00 05 00 00 00 00 0c \
                 08 00 06 00 00 00 01 cd 08 00 07 00 00 00 00 08"
            ),
            "{endpoints}"
        );
        assert!(
            endpoints.ends_with(
                "2a 00 0d 00 00 04 00 00 00 00 01 04 00 00 00 00 03 08 00 04 0d 00 00 00 01 00 \
                 04 08 00 04 0d 00 00 00 01 00 06 04 00 00 00 00 00 00"
            ),
            "{endpoints}"
        );
        let affinity = hex(&one(
            Family::V4,
            Op::AddSet(SetDecl {
                name: "affinity-X".into(),
                kind: SetKind::Affinity {
                    timeout_secs: 10_800,
                },
            }),
        ));
        assert!(
            affinity.ends_with(
                "0c 00 0b 00 00 00 00 00 00 a4 cb 80 0a 00 0d 00 00 04 02 00 00 00 00 00"
            ),
            "{affinity}"
        );
    }

    #[test]
    fn rules_match_nft() {
        let body = one(
            Family::V4,
            Op::AddRule(
                "services".into(),
                rule![Stmt::VerdictMap(
                    Selector::Address(Family::V4),
                    "services".into()
                )],
            ),
        );
        // payload ip daddr => reg 1; meta l4proto => reg 9; th dport => reg 10; lookup dreg 0.
        let text = hex(&body);
        assert!(
            text.contains(
                "0c 00 01 00 70 61 79 6c 6f 61 64 00 24 00 02 80 08 00 01 00 00 00 00 01 \
             08 00 02 00 00 00 00 01 08 00 03 00 00 00 00 10 08 00 04 00 00 00 00 04"
            ),
            "{text}"
        );
        assert!(
            text.contains("08 00 01 00 00 00 00 09"),
            "meta into reg 9: {text}"
        );
        assert!(
            text.ends_with(
                "0b 00 01 00 6c 6f 6f 6b 75 70 00 00 24 00 02 80 08 00 02 00 00 00 00 01 \
             08 00 03 00 00 00 00 00 0d 00 01 00 73 65 72 76 69 63 65 73 00 00 00 00"
            ),
            "{text}"
        );

        // `update @aff { ip saddr }`, as nft sends it less the set id.
        let body = one(
            Family::V4,
            Op::AddRule(
                "c".into(),
                rule![Stmt::UpdateSaddr(Family::V4, "aff".into())],
            ),
        );
        assert!(
            hex(&body).ends_with(
                "0b 00 01 00 64 79 6e 73 65 74 00 00 1c 00 02 80 08 00 04 00 00 00 00 01 \
             08 00 03 00 00 00 00 01 08 00 01 00 61 66 66 00"
            ),
            "{}",
            hex(&body)
        );

        // A /13 needs a mask; a /16 compares two bytes.
        let body = hex(&one(
            Family::V4,
            Op::AddRule(
                "c".into(),
                rule![Stmt::SaddrNotIn("10.40.0.0".parse().unwrap(), 13)],
            ),
        ));
        assert!(body.contains("08 00 01 00 ff f8 00 00"), "{body}");
        assert!(body.ends_with("08 00 01 00 0a 28 00 00"), "{body}");
        let body = hex(&one(
            Family::V4,
            Op::AddRule(
                "c".into(),
                rule![Stmt::SaddrNotIn("10.42.0.0".parse().unwrap(), 16)],
            ),
        ));
        assert!(
            body.contains("08 00 04 00 00 00 00 02"),
            "two bytes: {body}"
        );
        assert!(body.ends_with("06 00 01 00 0a 2a 00 00"), "{body}");
    }

    #[test]
    fn chains_and_elements() {
        let chain = hex(&one(
            Family::V4,
            Op::AddChain(
                "filter-input".into(),
                Some(Hook {
                    nat: false,
                    point: HookPoint::Input,
                    priority: -110,
                }),
            ),
        ));
        assert!(
            chain.ends_with(
                "0b 00 07 00 66 69 6c 74 65 72 00 00 14 00 04 80 08 00 01 00 00 00 00 01 \
             08 00 02 00 ff ff ff 92"
            ),
            "{chain}"
        );
        let elements = hex(&one(
            Family::V4,
            Op::AddElements(
                "backends",
                vec![(
                    Key::Backend(4096, 1),
                    Some(Value::Endpoint("10.42.0.6".parse().unwrap(), 8080)),
                )],
            ),
        ));
        assert!(
            elements.ends_with(
                "28 00 03 80 24 00 01 80 10 00 01 80 0c 00 01 00 00 10 00 00 01 00 00 00 \
             10 00 02 80 0c 00 01 00 0a 2a 00 06 1f 90 00 00"
            ),
            "{elements}"
        );
        let verdicts = hex(&one(
            Family::V4,
            Op::AddElements(
                "services",
                vec![(
                    Key::Address("10.43.0.20".parse().unwrap(), Protocol::Tcp, 80),
                    Some(Value::Verdict(Verdict::Goto("pick-internal-2".into()))),
                )],
            ),
        ));
        assert!(
            verdicts.ends_with(
                "10 00 01 00 0a 2b 00 14 06 00 00 00 00 50 00 00 24 00 02 80 20 00 02 80 \
             08 00 01 00 ff ff ff fc 14 00 02 00 70 69 63 6b 2d 69 6e 74 65 72 6e 61 \
             6c 2d 32 00"
            ),
            "{verdicts}"
        );
    }

    #[test]
    fn big_element_lists_are_split_and_numbered() {
        let mut tx = Transaction::new("t");
        tx.push(Family::V4, Op::AddTable);
        let elements: Vec<(Key, Option<Value>)> = (0..10_000)
            .map(|i| (Key::Backend(4096, i), Some(Value::Mark(i))))
            .collect();
        tx.push(Family::V4, Op::AddElements("m", elements));
        tx.push(
            Family::V4,
            Op::AddRule("c".into(), Rule(vec![Stmt::Masquerade])),
        );
        let batch = encode(&tx, 100);
        let messages = bodies(&tx);
        assert!(messages.len() > 3, "split into several messages");
        for m in &messages {
            assert!(m.len() < 65_536);
        }
        assert_eq!(batch.op_index(101), Some(0));
        assert_eq!(batch.op_index(102), Some(1));
        assert_eq!(batch.op_index(batch.last_seq()), Some(2));
        assert_eq!(batch.op_index(100), None, "batch begin");
        assert_eq!(batch.op_index(batch.last_seq() + 1), None, "batch end");
    }
}
