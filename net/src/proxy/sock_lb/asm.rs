//! The connect-time program, assembled by hand as eBPF instructions (there is no compiler for
//! BPF on the machines Shoal builds on, and the program is a few dozen instructions).
//!
//! For a TCP `connect()` (IPv4 or IPv6) it looks the destination up in the services map
//! (`{address, port, protocol, family}` → `{service id, endpoint count}`), picks a slot with
//! `bpf_get_prandom_u32() % count`, looks `{service id, slot}` up in the endpoints map and
//! rewrites the socket's destination address and port to the endpoint. Whatever is not found
//! leaves the connect untouched (nftables handles it). It always returns 1 (allow).

use super::layout::{PROTO_TCP, SERVICE_KEY_LEN};

/// One `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

// Instruction classes, sizes, modes and operations (include/uapi/linux/bpf_common.h, bpf.h).
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const ALU: u8 = 0x04;
const JMP: u8 = 0x05;
const ALU64: u8 = 0x07;
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const DW: u8 = 0x18;
const IMM: u8 = 0x00;
const MEM: u8 = 0x60;
const K: u8 = 0x00;
const X: u8 = 0x08;
const ADD: u8 = 0x00;
const MOD: u8 = 0x90;
const MOV: u8 = 0xb0;
const JEQ: u8 = 0x10;
const JNE: u8 = 0x50;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
/// `BPF_PSEUDO_MAP_FD`: a 64-bit immediate load whose value is a map's descriptor.
const PSEUDO_MAP_FD: u8 = 1;

const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_GET_PRANDOM_U32: i32 = 7;

// Registers.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R10: u8 = 10;

// `struct bpf_sock_addr` offsets.
const CTX_USER_IP4: i16 = 4;
const CTX_USER_IP6: i16 = 8;
const CTX_USER_PORT: i16 = 24;
const CTX_PROTOCOL: i16 = 36;

/// Where the two keys live on the stack.
const SERVICE_KEY: i16 = -24;
const ENDPOINT_KEY: i16 = -32;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

fn ldx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    insn(LDX | size | MEM, dst, src, off, 0)
}

fn stx(size: u8, dst: u8, off: i16, src: u8) -> Insn {
    insn(STX | size | MEM, dst, src, off, 0)
}

fn st(size: u8, dst: u8, off: i16, imm: i32) -> Insn {
    insn(ST | size | MEM, dst, 0, off, imm)
}

fn mov64_reg(dst: u8, src: u8) -> Insn {
    insn(ALU64 | MOV | X, dst, src, 0, 0)
}

fn mov64_imm(dst: u8, imm: i32) -> Insn {
    insn(ALU64 | MOV | K, dst, 0, 0, imm)
}

fn call(helper: i32) -> Insn {
    insn(JMP | CALL, 0, 0, 0, helper)
}

/// The two instructions loading a map's descriptor into `dst`.
fn ld_map_fd(dst: u8, fd: i32) -> [Insn; 2] {
    [
        insn(LD | DW | IMM, dst, PSEUDO_MAP_FD, 0, fd),
        insn(0, 0, 0, 0, 0),
    ]
}

/// Instructions with forward jumps to one exit label.
struct Program {
    insns: Vec<Insn>,
    to_exit: Vec<usize>,
}

impl Program {
    fn push(&mut self, i: Insn) {
        self.insns.push(i);
    }

    /// `if dst <op> imm goto exit` (64-bit compare).
    fn jump_out(&mut self, op: u8, dst: u8, imm: i32) {
        self.to_exit.push(self.insns.len());
        self.push(insn(JMP | op | K, dst, 0, 0, imm));
    }

    fn finish(mut self) -> Vec<Insn> {
        let exit = self.insns.len();
        for at in self.to_exit {
            // Offsets are relative to the next instruction; the program is far below i16.
            self.insns[at].off = (exit - at - 1) as i16;
        }
        self.insns.push(mov64_imm(R0, 1));
        self.insns.push(insn(JMP | EXIT, 0, 0, 0, 0));
        self.insns
    }
}

/// The connect program for one family (`ipv6` false: `connect4`), over the maps whose
/// descriptors are given.
pub fn connect_program(ipv6: bool, services_fd: i32, endpoints_fd: i32) -> Vec<Insn> {
    let mut p = Program {
        insns: Vec::with_capacity(64),
        to_exit: Vec::new(),
    };
    p.push(mov64_reg(R6, R1));
    p.push(ldx(W, R2, R6, CTX_PROTOCOL));
    p.jump_out(JNE, R2, i32::from(PROTO_TCP));
    // The service key {address[16], port (network order), protocol, family}, zeroed first
    // (the verifier wants every byte the lookup reads written).
    p.push(mov64_imm(R1, 0));
    for off in [SERVICE_KEY, SERVICE_KEY + 8, SERVICE_KEY + 16] {
        p.push(stx(DW, R10, off, R1));
    }
    if ipv6 {
        for word in 0..4 {
            p.push(ldx(W, R2, R6, CTX_USER_IP6 + 4 * word));
            p.push(stx(W, R10, SERVICE_KEY + 4 * word, R2));
        }
    } else {
        p.push(ldx(W, R2, R6, CTX_USER_IP4));
        p.push(stx(W, R10, SERVICE_KEY, R2));
    }
    // `user_port` holds the port as stored in the sockaddr, network order, in its low half.
    p.push(ldx(W, R2, R6, CTX_USER_PORT));
    p.push(stx(H, R10, SERVICE_KEY + 16, R2));
    p.push(st(B, R10, SERVICE_KEY + 18, i32::from(PROTO_TCP)));
    p.push(st(B, R10, SERVICE_KEY + 19, if ipv6 { 6 } else { 4 }));
    debug_assert_eq!(SERVICE_KEY_LEN, 20);
    p.insns.extend(ld_map_fd(R1, services_fd));
    p.push(mov64_reg(R2, R10));
    p.push(insn(ALU64 | ADD | K, R2, 0, 0, i32::from(SERVICE_KEY)));
    p.push(call(HELPER_MAP_LOOKUP_ELEM));
    p.jump_out(JEQ, R0, 0);
    p.push(ldx(W, R7, R0, 0)); // service id
    p.push(ldx(W, R8, R0, 4)); // endpoint count
    p.jump_out(JEQ, R8, 0);
    p.push(call(HELPER_GET_PRANDOM_U32));
    p.push(insn(ALU | MOD | X, R0, R8, 0, 0)); // w0 %= w8
    p.push(stx(W, R10, ENDPOINT_KEY, R7));
    p.push(stx(W, R10, ENDPOINT_KEY + 4, R0));
    p.insns.extend(ld_map_fd(R1, endpoints_fd));
    p.push(mov64_reg(R2, R10));
    p.push(insn(ALU64 | ADD | K, R2, 0, 0, i32::from(ENDPOINT_KEY)));
    p.push(call(HELPER_MAP_LOOKUP_ELEM));
    p.jump_out(JEQ, R0, 0);
    // The endpoint {address[16], port (network order), padding}.
    if ipv6 {
        for word in 0..4 {
            p.push(ldx(W, R2, R0, 4 * word));
            p.push(stx(W, R6, CTX_USER_IP6 + 4 * word, R2));
        }
    } else {
        p.push(ldx(W, R2, R0, 0));
        p.push(stx(W, R6, CTX_USER_IP4, R2));
    }
    p.push(ldx(H, R2, R0, 16));
    p.push(stx(W, R6, CTX_USER_PORT, R2));
    p.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_the_exit_and_the_program_ends_returning_one() {
        for ipv6 in [false, true] {
            let prog = connect_program(ipv6, 3, 4);
            let n = prog.len();
            assert_eq!(prog[n - 1], insn(JMP | EXIT, 0, 0, 0, 0));
            assert_eq!(prog[n - 2], mov64_imm(R0, 1));
            let jumps: Vec<usize> = (0..n)
                .filter(|&i| prog[i].code & 0x07 == JMP && prog[i].code & 0xf0 != CALL)
                .filter(|&i| prog[i].code != JMP | EXIT)
                .collect();
            assert_eq!(jumps.len(), 4);
            for i in jumps {
                assert_eq!(i as i64 + 1 + i64::from(prog[i].off), n as i64 - 2);
            }
            let maps: Vec<i32> = prog
                .iter()
                .filter(|i| i.code == LD | DW | IMM)
                .map(|i| i.imm)
                .collect();
            assert_eq!(maps, vec![3, 4]);
        }
    }
}
