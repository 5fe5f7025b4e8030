//! The byte layout of the two maps, shared by the program ([`super::asm`]) and the code
//! writing them: addresses and ports in network order (as the program reads them from the
//! socket address), ids and counts in the machine's order (as the program compares them).
//!
//! - services: `{address[16], port[2], protocol, family}` → `{service id: u32, count: u32}`
//!   (an IPv4 address in the first four bytes, the rest zero);
//! - endpoints: `{service id: u32, slot: u32}` → `{address[16], port[2], 0, 0}`.

use std::net::IpAddr;

use crate::proxy::model::Endpoint;

pub const PROTO_TCP: u8 = 6;
pub const SERVICE_KEY_LEN: usize = 20;
pub const SERVICE_VALUE_LEN: usize = 8;
pub const ENDPOINT_KEY_LEN: usize = 8;
pub const ENDPOINT_VALUE_LEN: usize = 20;

/// A TCP Service address the program translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub ip: IpAddr,
    pub port: u16,
}

fn address(ip: IpAddr, out: &mut [u8]) -> u8 {
    match ip {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            out[..16].copy_from_slice(&v6.octets());
            6
        }
    }
}

pub fn service_key(frontend: Frontend) -> [u8; SERVICE_KEY_LEN] {
    let mut key = [0u8; SERVICE_KEY_LEN];
    key[19] = address(frontend.ip, &mut key);
    key[16..18].copy_from_slice(&frontend.port.to_be_bytes());
    key[18] = PROTO_TCP;
    key
}

pub fn service_value(id: u32, count: u32) -> [u8; SERVICE_VALUE_LEN] {
    let mut value = [0u8; SERVICE_VALUE_LEN];
    value[..4].copy_from_slice(&id.to_ne_bytes());
    value[4..].copy_from_slice(&count.to_ne_bytes());
    value
}

pub fn endpoint_key(id: u32, slot: u32) -> [u8; ENDPOINT_KEY_LEN] {
    let mut key = [0u8; ENDPOINT_KEY_LEN];
    key[..4].copy_from_slice(&id.to_ne_bytes());
    key[4..].copy_from_slice(&slot.to_ne_bytes());
    key
}

pub fn endpoint_value(endpoint: Endpoint) -> [u8; ENDPOINT_VALUE_LEN] {
    let mut value = [0u8; ENDPOINT_VALUE_LEN];
    address(endpoint.ip, &mut value);
    value[16..18].copy_from_slice(&endpoint.port.to_be_bytes());
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_addresses_and_ports_in_network_order() {
        let key = service_key(Frontend {
            ip: "10.43.0.10".parse().unwrap_or(IpAddr::from([0; 4])),
            port: 0x1f90,
        });
        assert_eq!(&key[..4], &[10, 43, 0, 10]);
        assert_eq!(&key[4..16], &[0; 12]);
        assert_eq!(&key[16..], &[0x1f, 0x90, 6, 4]);
        let v6 = service_key(Frontend {
            ip: "fd00::1".parse().unwrap_or(IpAddr::from([0; 4])),
            port: 80,
        });
        assert_eq!((v6[0], v6[1], v6[15], v6[19]), (0xfd, 0, 1, 6));
        let value = endpoint_value(Endpoint {
            ip: IpAddr::from([10, 42, 1, 5]),
            port: 8080,
        });
        assert_eq!(&value[..4], &[10, 42, 1, 5]);
        assert_eq!(&value[16..], &[0x1f, 0x90, 0, 0]);
    }
}
