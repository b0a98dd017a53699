//! The next-hop address codec: `[4|6][port u16 big-endian][4 or 16 IP octets]`, zero-padded to
//! 32 bytes (Sphinx's `NodeAddressBytes`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Length of an encoded node address.
pub const NODE_ADDRESS_LEN: usize = sphinx_packet::constants::NODE_ADDRESS_LENGTH;

const _: () = assert!(NODE_ADDRESS_LEN == 32);

const FAMILY_IPV4: u8 = 4;
const FAMILY_IPV6: u8 = 6;
const OFFSET_PORT: usize = 1;
const OFFSET_IP: usize = 3;
const IPV4_END: usize = OFFSET_IP + 4;
const IPV6_END: usize = OFFSET_IP + 16;

const _: () = assert!(IPV6_END <= NODE_ADDRESS_LEN);

/// The socket address `bytes` encode, or `None` for anything else: an unknown family byte,
/// nonzero padding, port 0 or an unspecified IP address.
pub fn parse_node_address(bytes: &[u8; NODE_ADDRESS_LEN]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([bytes[OFFSET_PORT], bytes[OFFSET_PORT + 1]]);
    let (ip, end) = match bytes[0] {
        FAMILY_IPV4 => {
            let mut octets = [0u8; 4];
            octets.copy_from_slice(&bytes[OFFSET_IP..IPV4_END]);
            (IpAddr::V4(Ipv4Addr::from(octets)), IPV4_END)
        }
        FAMILY_IPV6 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&bytes[OFFSET_IP..IPV6_END]);
            (IpAddr::V6(Ipv6Addr::from(octets)), IPV6_END)
        }
        _ => return None,
    };
    if bytes[end..].iter().any(|&b| b != 0) || port == 0 || ip.is_unspecified() {
        return None;
    }
    Some(SocketAddr::new(ip, port))
}

/// Encodes `address` the way [`parse_node_address`] reads it.
pub fn encode_node_address(address: SocketAddr) -> [u8; NODE_ADDRESS_LEN] {
    let mut out = [0u8; NODE_ADDRESS_LEN];
    out[OFFSET_PORT..OFFSET_IP].copy_from_slice(&address.port().to_be_bytes());
    match address.ip() {
        IpAddr::V4(ip) => {
            out[0] = FAMILY_IPV4;
            out[OFFSET_IP..IPV4_END].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out[0] = FAMILY_IPV6;
            out[OFFSET_IP..IPV6_END].copy_from_slice(&ip.octets());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for text in [
            "127.0.0.1:1789",
            "10.1.2.3:65535",
            "[::1]:1",
            "[2001:db8::7]:1789",
        ] {
            let address: SocketAddr = text.parse().expect("valid literal");
            assert_eq!(
                parse_node_address(&encode_node_address(address)),
                Some(address)
            );
        }
    }

    #[test]
    fn the_layout_is_family_port_octets_padding() {
        let address: SocketAddr = "1.2.3.4:258".parse().expect("valid literal");
        let bytes = encode_node_address(address);
        assert_eq!(&bytes[..7], &[4, 1, 2, 1, 2, 3, 4]);
        assert!(bytes[7..].iter().all(|&b| b == 0));
    }

    #[test]
    fn malformed_addresses_are_rejected() {
        let good = encode_node_address("1.2.3.4:1789".parse().expect("valid literal"));
        let mut bad_family = good;
        bad_family[0] = 5;
        assert_eq!(parse_node_address(&bad_family), None);
        for i in IPV4_END..NODE_ADDRESS_LEN {
            let mut bad_padding = good;
            bad_padding[i] = 1;
            assert_eq!(parse_node_address(&bad_padding), None, "padding byte {i}");
        }
        let mut port_zero = good;
        port_zero[1] = 0;
        port_zero[2] = 0;
        assert_eq!(parse_node_address(&port_zero), None);
        let unspecified4 = encode_node_address("0.0.0.0:1789".parse().expect("valid literal"));
        assert_eq!(parse_node_address(&unspecified4), None);
        let unspecified6 = encode_node_address("[::]:1789".parse().expect("valid literal"));
        assert_eq!(parse_node_address(&unspecified6), None);
        let mut v6_padding = encode_node_address("[::1]:1789".parse().expect("valid literal"));
        v6_padding[IPV6_END] = 9;
        assert_eq!(parse_node_address(&v6_padding), None);
        assert_eq!(parse_node_address(&[0u8; NODE_ADDRESS_LEN]), None);
        assert_eq!(parse_node_address(&[0xffu8; NODE_ADDRESS_LEN]), None);
    }
}
