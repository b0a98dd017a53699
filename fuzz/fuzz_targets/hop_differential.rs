//! The fast hop step against the `sphinx-packet` crate's `process()` on the same bytes, through
//! `sphinx::crosscheck::compare`: both must give the same next-hop packet, address, delay and
//! replay tag (or final-hop destination, identifier and payload), or both reject.
//!
//! Input layout: `[mode][rest]`.
//! - Mode 0: `rest` is the packet.
//! - Modes 1 and 2: `rest` is a list of `(offset u16 LE, xor mask)` triples applied to a valid
//!   ack (1) or regular (2) packet built for the fixed key (flips in alpha, header and payload).
//! - Mode 3: `rest` is `[alpha 32][routing information in the clear 300][payload]`, made into
//!   a packet whose header MAC verifies for any alpha (twist points included), so that both
//!   implementations get past the MAC.

#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nym_mixnode::framing::SizeTag;
use nym_mixnode::sphinx::crosscheck::{compare, craft_packet};
use nym_mixnode::sphinx::{build_packet, RouteHop};
use x25519_dalek::{PublicKey, StaticSecret};

const NODE_KEY: [u8; 32] = [7u8; 32];
const ALPHA_LEN: usize = 32;
const ROUTING_LEN: usize = 300;

fn node_secret() -> &'static StaticSecret {
    static SECRET: OnceLock<StaticSecret> = OnceLock::new();
    SECRET.get_or_init(|| StaticSecret::from(NODE_KEY))
}

fn valid_packets() -> &'static [Vec<u8>; 2] {
    static PACKETS: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    PACKETS.get_or_init(|| {
        let keys = [NODE_KEY, [8u8; 32], [9u8; 32]];
        let route: Vec<RouteHop> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| RouteHop {
                address: SocketAddr::from(([10, 0, 0, i as u8 + 1], 1789)),
                public_key: PublicKey::from(&StaticSecret::from(*key)),
                delay: Duration::from_millis(30),
            })
            .collect();
        let initial = StaticSecret::from([1u8; 32]);
        let build = |size_tag| {
            build_packet(&route, [2u8; 32], size_tag, b"fuzz", &initial).expect("valid route")
        };
        [build(SizeTag::Ack), build(SizeTag::Regular)]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let packet = match mode % 4 {
        0 => rest.to_vec(),
        3 => {
            if rest.len() < ALPHA_LEN + ROUTING_LEN {
                return;
            }
            let mut alpha = [0u8; ALPHA_LEN];
            alpha.copy_from_slice(&rest[..ALPHA_LEN]);
            let mut routing = [0u8; ROUTING_LEN];
            routing.copy_from_slice(&rest[ALPHA_LEN..ALPHA_LEN + ROUTING_LEN]);
            // The crate debug-asserts that the first version byte is zero.
            routing[1] = 0;
            craft_packet(node_secret(), alpha, &routing, &rest[ALPHA_LEN + ROUTING_LEN..])
        }
        kind => {
            let mut packet = valid_packets()[kind as usize - 1].clone();
            for flip in rest.chunks_exact(3) {
                let offset = u16::from_le_bytes([flip[0], flip[1]]) as usize % packet.len();
                packet[offset] ^= flip[2];
            }
            packet
        }
    };
    if let Err(difference) = compare(node_secret(), &packet) {
        panic!("fast and crate disagree: {difference}");
    }
});
