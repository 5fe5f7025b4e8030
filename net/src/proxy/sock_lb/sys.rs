//! The `bpf(2)` system call, the one place of the socket load balancer that needs `unsafe`:
//! creating and editing maps, loading a program (with the verifier's log), and attaching it to
//! a cgroup through a BPF link. Everything here is a thin, length-checked wrapper; the callers
//! above see only safe functions and owned file descriptors.

#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::libc;

use super::asm::Insn;

const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_MAP_GET_NEXT_KEY: u32 = 4;
const BPF_PROG_LOAD: u32 = 5;
const BPF_LINK_CREATE: u32 = 28;

/// `BPF_MAP_TYPE_HASH`.
pub const MAP_TYPE_HASH: u32 = 1;
/// `BPF_F_NO_PREALLOC`: hash entries are allocated when written, not all at creation.
pub const MAP_F_NO_PREALLOC: u32 = 1;
/// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`.
pub const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
/// `BPF_CGROUP_INET4_CONNECT`.
pub const ATTACH_INET4_CONNECT: u32 = 10;
/// `BPF_CGROUP_INET6_CONNECT`.
pub const ATTACH_INET6_CONNECT: u32 = 11;

/// `union bpf_attr` for `BPF_MAP_CREATE` (the fields up to `map_extra`).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    btf_vmlinux_value_type_id: u32,
    map_extra: u64,
}

/// `union bpf_attr` for the `BPF_MAP_*_ELEM` commands and `BPF_MAP_GET_NEXT_KEY`.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value`, or `next_key` for `BPF_MAP_GET_NEXT_KEY`.
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for `BPF_PROG_LOAD` (the fields up to `expected_attach_type`).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_LINK_CREATE` (no attach-type specific part).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

/// Runs one `bpf(2)` command on `attr`.
///
/// Every caller passes one of the `#[repr(C)]` attribute structs above, whose pointer fields
/// point into buffers borrowed for the whole call and sized as the command requires.
fn bpf<T>(cmd: u32, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed `#[repr(C)]` struct of `size_of::<T>()`
    // bytes; the kernel reads (and for some commands writes) only within that size. Pointers
    // inside it were built by the safe wrappers below from slices whose lengths they checked
    // against what the kernel will access, and those slices outlive this call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            libc::c_long::from(cmd),
            attr as *mut T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Takes ownership of a descriptor a `bpf(2)` command just returned.
fn owned_fd(ret: libc::c_long) -> io::Result<OwnedFd> {
    let raw = i32::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel returned `raw` as a new descriptor (opened close-on-exec) that
    // nothing else in this process refers to, so owning and later closing it is sound.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    // The kernel takes at most 15 characters of [A-Za-z0-9_.], NUL-terminated.
    for (o, c) in out.iter_mut().take(15).zip(name.bytes()) {
        *o = if c.is_ascii_alphanumeric() || c == b'.' {
            c
        } else {
            b'_'
        };
    }
    out
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// A BPF map with fixed key and value sizes, checked on every access.
#[derive(Debug)]
pub struct Map {
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
}

impl Map {
    pub fn create(
        map_type: u32,
        name: &str,
        key_size: usize,
        value_size: usize,
        max_entries: u32,
        flags: u32,
    ) -> io::Result<Map> {
        let mut attr = MapCreateAttr {
            map_type,
            key_size: u32::try_from(key_size).map_err(|_| einval())?,
            value_size: u32::try_from(value_size).map_err(|_| einval())?,
            max_entries,
            map_flags: flags,
            map_name: name16(name),
            ..Default::default()
        };
        let fd = owned_fd(bpf(BPF_MAP_CREATE, &mut attr)?)?;
        Ok(Map {
            fd,
            key_size,
            value_size,
        })
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    fn elem_attr(&self, key: &[u8]) -> io::Result<MapElemAttr> {
        if key.len() != self.key_size {
            return Err(einval());
        }
        Ok(MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            ..Default::default()
        })
    }

    /// Writes `key` → `value` (`BPF_ANY`: created or replaced).
    pub fn update(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if value.len() != self.value_size {
            return Err(einval());
        }
        let mut attr = self.elem_attr(key)?;
        attr.value = value.as_ptr() as u64;
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }

    /// Deletes `key`; `Ok(false)` when it was not there.
    pub fn delete(&self, key: &[u8]) -> io::Result<bool> {
        let mut attr = self.elem_attr(key)?;
        match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
            Ok(_) => Ok(true),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Every key in the map (in the map's own order).
    pub fn keys(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut next = vec![0u8; self.key_size];
            let mut attr = MapElemAttr {
                map_fd: self.fd.as_raw_fd() as u32,
                // A null key asks for the first one.
                key: keys.last().map_or(0, |k| k.as_ptr() as u64),
                value: next.as_mut_ptr() as u64,
                ..Default::default()
            };
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
                Ok(_) => keys.push(next),
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
                Err(err) => return Err(err),
            }
        }
    }
}

/// Loads a program. On failure, the verifier's log (when it wrote one) comes with the error.
pub fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    name: &str,
    insns: &[Insn],
) -> Result<OwnedFd, (io::Error, String)> {
    const _: () = assert!(size_of::<Insn>() == 8);
    let license = c"GPL";
    let load = |log: &mut [u8], level: u32| {
        let mut attr = ProgLoadAttr {
            prog_type,
            insn_cnt: u32::try_from(insns.len()).map_err(|_| einval())?,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: level,
            log_size: u32::try_from(log.len()).map_err(|_| einval())?,
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            prog_name: name16(name),
            expected_attach_type,
            ..Default::default()
        };
        bpf(BPF_PROG_LOAD, &mut attr).and_then(owned_fd)
    };
    match load(&mut [], 0) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            // Again with a log, for the error message.
            let mut log = vec![0u8; 64 * 1024];
            match load(&mut log, 1) {
                Ok(fd) => Ok(fd),
                Err(_) => {
                    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                    Err((first, String::from_utf8_lossy(&log[..end]).into_owned()))
                }
            }
        }
    }
}

/// Attaches `prog` to the cgroup `cgroup` (an open directory of the cgroup v2 hierarchy) at
/// `attach_type` through a BPF link: the program stays attached while the returned descriptor
/// is open — so it goes away with the process that made it, crash included — and beside any
/// other program attached there.
pub fn link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    owned_fd(bpf(BPF_LINK_CREATE, &mut attr)?)
}
